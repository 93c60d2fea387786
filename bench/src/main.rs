//! `roomcast-bench`: the load generator.
//!
//! * `roomcast-bench run` is the coordinator: it plays the control plane (it listens for the edges'
//!   links and publishes over them), optionally starts the edge processes itself, starts client
//!   processes (copies of itself running the hidden `client` subcommand) that hold the viewer
//!   connections, and measures the edges from the outside (`/proc`, the link's load reports,
//!   optionally `strace -c`).
//! * `roomcast-bench floor` measures the cost of the bare syscall the edge is built around: one
//!   pre-encoded frame written to many loopback sockets.
//!
//! Every byte on the wire is produced and parsed by the engine's own codecs
//! (`roomcast_engine::proto`); this crate only adds sockets, clocks and bookkeeping.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use roomcast_engine::proto::client::WireFormat;

mod client;
mod coord;
mod floor;
mod linksrv;
mod msgs;
mod sys;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "roomcast-bench",
    version,
    about = "roomcast load generator: plays the control plane, holds viewer connections, measures edges",
    long_about = "roomcast load generator.\n\n\
        `run` starts (or uses) roomcast-edge processes, listens for their control links like the \
        control plane would, starts client processes that hold the requested number of \
        connections from several 127.0.0.x source addresses, publishes to rooms at a fixed rate \
        and reports delivered messages/s, publish->receive latency, completeness, edge CPU per \
        delivered frame, edge and kernel memory per connection, and (with --strace) write \
        syscalls per delivered frame.\n\n\
        `floor` measures the physical floor: one pre-encoded frame written to N loopback sockets."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Coordinate a benchmark run (edges, client processes, publishing, measurements).
    Run(Box<RunArgs>),
    /// Measure the syscall floor: write one pre-encoded frame to N loopback sockets in a loop.
    Floor(FloorArgs),
    /// (internal) A client process started by `run`; talks to the coordinator over stdin/stdout.
    #[command(hide = true)]
    Client(ClientArgs),
}

/// How the clients talk to the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
pub enum Transport {
    /// WebSocket, JSON text frames.
    WsJson,
    /// WebSocket, binary frames.
    WsBinary,
    /// Raw TCP, length-prefixed binary frames (cheapest for the client).
    Tcp,
}

impl Transport {
    pub fn format(self) -> WireFormat {
        match self {
            Transport::WsJson => WireFormat::WsJson,
            Transport::WsBinary => WireFormat::WsBinary,
            Transport::Tcp => WireFormat::Tcp,
        }
    }

    pub fn is_ws(self) -> bool {
        self != Transport::Tcp
    }

    pub fn name(self) -> &'static str {
        match self {
            Transport::WsJson => "ws-json",
            Transport::WsBinary => "ws-binary",
            Transport::Tcp => "tcp",
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Start this many roomcast-edge processes (default: one per 15,000 connections). They all
    /// listen on the same ports (SO_REUSEPORT spreads connections between them).
    #[arg(long)]
    pub edges: Option<usize>,

    /// Do not start edges: use edges that are already running and dial --link-listen. --edges
    /// then says how many registrations to wait for (default 1).
    #[arg(long)]
    pub no_spawn_edges: bool,

    /// PIDs of already running edges (with --no-spawn-edges), to measure their CPU and memory.
    #[arg(long, value_delimiter = ',')]
    pub edge_pids: Vec<u32>,

    /// The roomcast-edge binary (default: next to this executable).
    #[arg(long)]
    pub edge_bin: Option<PathBuf>,

    /// Extra argument passed to every spawned edge, e.g. --edge-arg=--tick-ms=0 (repeatable).
    #[arg(long = "edge-arg", allow_hyphen_values = true)]
    pub edge_args: Vec<String>,

    /// Where the coordinator listens for the edges' control links.
    #[arg(long, default_value = "127.0.0.1:9091")]
    pub link_listen: SocketAddr,

    /// Edge WebSocket port (all edges share it).
    #[arg(long, default_value_t = 8080)]
    pub ws_port: u16,

    /// Edge raw TCP port (all edges share it).
    #[arg(long, default_value_t = 8081)]
    pub tcp_port: u16,

    /// The edges' IP address (clients connect here; spawned edges listen here).
    #[arg(long, default_value = "127.0.0.1")]
    pub edge_ip: Ipv4Addr,

    /// Total client connections.
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,

    /// Client processes (default: ceil(conns / 15000), so each stays under 20,000 fds).
    #[arg(long)]
    pub procs: Option<usize>,

    /// Event-loop threads per client process.
    #[arg(long, default_value_t = 2)]
    pub client_threads: usize,

    /// Client transport.
    #[arg(long, value_enum, default_value_t = Transport::Tcp)]
    pub transport: Transport,

    /// Rooms; connection i joins room i mod K (1 = everybody in one room).
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,

    /// Published messages per second, across all rooms (round-robin).
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,

    /// Size of each message's data (JSON {"ts":...,"pad":"xxx..."}), bytes.
    #[arg(long, default_value_t = 128)]
    pub payload: usize,

    /// Priority of published messages (0 system .. 3 chat). Priority 0 bypasses merging.
    #[arg(long, default_value_t = 3)]
    pub priority: u8,

    /// Length of the measured window, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,

    /// Publishing before the measured window starts, seconds.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,

    /// Connect, hold the connections (with heartbeats) for --duration, measure memory; no publishing.
    #[arg(long)]
    pub hold_only: bool,

    /// After the measured window, trace every edge with `strace -c -f` for this many seconds
    /// (publishing continues) to count write syscalls per delivered frame.
    #[arg(long)]
    pub strace: Option<f64>,

    /// Write the full results as JSON here.
    #[arg(long)]
    pub json_out: Option<PathBuf>,

    /// HS256 secret the client tokens are signed with (the edge's dev secret by default).
    #[arg(long, default_value = roomcast_engine::config::DEV_JWT_SECRET, hide_default_value = true)]
    pub jwt_secret: String,

    /// Connection attempts in flight at once, across all client processes.
    #[arg(long, default_value_t = 2000)]
    pub connect_inflight: usize,

    /// Connections per source address (127.0.0.2, 127.0.0.3, ...); each address has about 28k
    /// ephemeral ports towards one edge port.
    #[arg(long, default_value_t = 10_000)]
    pub conns_per_ip: usize,

    /// Client heartbeat (`ping` op) interval, seconds.
    #[arg(long, default_value_t = 20)]
    pub ping_secs: u64,

    /// Give up connecting after this many seconds.
    #[arg(long, default_value_t = 180)]
    pub connect_timeout: u64,

    /// Seconds to wait after publishing stops, for the last batches to arrive.
    #[arg(long, default_value_t = 2.0)]
    pub drain: f64,

    /// Directory for the edges' logs (default /tmp/roomcast-bench-<pid>).
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    #[arg(long)]
    pub index: usize,
    #[arg(long)]
    pub conns: usize,
    /// Global index of this process's first connection (room and user ids derive from it).
    #[arg(long)]
    pub first: usize,
    #[arg(long, value_enum)]
    pub transport: Transport,
    #[arg(long)]
    pub addr: SocketAddr,
    #[arg(long)]
    pub rooms: usize,
    /// First source address; connection j of this process uses src_first + j / conns_per_ip.
    #[arg(long)]
    pub src_first: Ipv4Addr,
    #[arg(long)]
    pub conns_per_ip: usize,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    #[arg(long, default_value_t = 500)]
    pub inflight: usize,
    #[arg(long)]
    pub jwt_secret: String,
    #[arg(long, default_value_t = 20)]
    pub ping_secs: u64,
    #[arg(long, default_value_t = 5)]
    pub retries: u8,
}

#[derive(Args, Debug, Clone)]
pub struct FloorArgs {
    /// Loopback TCP connections (each takes two fds in this process).
    #[arg(long, default_value_t = 5000)]
    pub conns: usize,
    /// Payload of the frame's one message, bytes (the frame adds the batch header).
    #[arg(long, default_value_t = 128)]
    pub payload: usize,
    /// Rounds: each round writes the frame once to every connection.
    #[arg(long, default_value_t = 200)]
    pub iters: usize,
    /// Syscall used for the writes: writev, or sendmsg with MSG_NOSIGNAL (what the edge's epoll
    /// driver uses).
    #[arg(long, value_enum, default_value_t = floor::Syscall::Writev)]
    pub syscall: floor::Syscall,
    /// Split the frame into this many iovecs (the edge writes a header and a shared body).
    #[arg(long, default_value_t = 1)]
    pub iovecs: usize,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run(args) => coord::run(*args),
        Command::Client(args) => client::run(args),
        Command::Floor(args) => floor::run(args),
    };
    std::process::exit(code);
}
