//! `roomcast-bench`: the load generator.
//!
//! * `roomcast-bench run [SCENARIO.toml] [flags]` is the coordinator: it starts the system under
//!   test (the control plane and edges, or only edges when it plays the control plane on the edge
//!   link itself), starts client processes (copies of itself running the hidden `client`
//!   subcommand) that hold the viewer connections, publishes, and measures from the outside
//!   (`/proc`, load reports, the edges' own counters, optionally `strace`).
//! * `roomcast-bench floor` measures the cost of the bare syscall the edge is built around: one
//!   pre-encoded frame written to many loopback sockets.
//!
//! Modules by job: [`scenario`] (the run's configuration), [`dist`] (who joins which room, which
//! group, which priority), [`coord`] (the phases of a run), [`system`] (the processes and their
//! view of themselves), [`publish`] with its sinks [`api`] (HTTP API) and [`linksrv`] (edge link),
//! [`client`] (a client process) and [`msgs`] (what it tells the coordinator), [`progress`],
//! [`report`], [`plot`], [`strace`], [`floor`], [`sys`].
//!
//! Every byte on the wire is produced and parsed by the engine's own codecs
//! (`roomcast_proto`); this crate only adds sockets, clocks and bookkeeping.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use roomcast_proto::client::WireFormat;

use crate::dist::RoomDist;
use crate::scenario::RunArgs;

mod api;
mod client;
mod coord;
mod dist;
mod floor;
mod kernel_tcp;
mod linksrv;
mod msgs;
mod plot;
mod progress;
mod publish;
mod report;
mod scenario;
mod strace;
mod sys;
mod system;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "roomcast-bench",
    version,
    about = "roomcast load generator: holds viewer connections, publishes, measures the system",
    long_about = "roomcast load generator.\n\n\
        `run` starts (or uses) roomcast-control and roomcast-edge processes, starts client \
        processes that hold the requested connections from several 127.0.0.x source addresses \
        and join rooms by a distribution, publishes at a rate and priority mix, and reports \
        delivered messages/s, completeness and publish->receive latency per priority, edge CPU \
        per delivered frame (also as a ratio to the floor measured in the same run), control \
        plane CPU, edge and kernel memory per connection. Scenarios are TOML files \
        (bench/scenarios/); flags override them.\n\n\
        `floor` measures the physical floor: one pre-encoded frame written to N loopback sockets."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one benchmark, from a scenario file and/or flags (edges, control plane, client
    /// processes, publishing, measurements).
    Run(Box<RunArgs>),
    /// Measure the syscall floor: write one pre-encoded frame to N loopback sockets in a loop.
    Floor(FloorArgs),
    /// (internal) A client process started by `run`; talks to the coordinator over stdin/stdout.
    #[command(hide = true)]
    Client(ClientArgs),
}

/// How the clients talk to the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
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

/// The hidden `client` subcommand: one client process, started by `run`.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    #[arg(long)]
    pub index: usize,
    #[arg(long)]
    pub conns: usize,
    /// Global index of this process's first connection (rooms, groups and user ids derive from it).
    #[arg(long)]
    pub first: usize,
    #[arg(long, value_enum)]
    pub transport: Transport,
    /// Edge addresses; connection i dials address i mod N.
    #[arg(long, value_delimiter = ',', required = true)]
    pub addrs: Vec<SocketAddr>,
    #[arg(long)]
    pub rooms: usize,
    #[arg(long, value_enum)]
    pub room_dist: RoomDist,
    #[arg(long)]
    pub zipf_exponent: f64,
    #[arg(long)]
    pub slow_readers: f64,
    #[arg(long)]
    pub churn: f64,
    /// Reconnects per second of this process's churners.
    #[arg(long)]
    pub churn_rate: f64,
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
    /// Tokens to use instead of minting them, one per line, line i for global connection i.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    #[arg(long, default_value_t = 20)]
    pub ping_secs: u64,
    /// SO_RCVBUF of each socket (0: the host default).
    #[arg(long, default_value_t = 0)]
    pub recv_buffer: usize,
    /// Sleep after a busy poll, microseconds (0: none).
    #[arg(long, default_value_t = 0)]
    pub poll_interval_us: u64,
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
    /// Wire format of the frame.
    #[arg(long, value_enum, default_value_t = Transport::Tcp)]
    pub transport: Transport,
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
        // Parsed again, in layers over the scenario file it names (flags win).
        Command::Run(_) => match RunArgs::load(std::env::args_os().skip(2)) {
            Ok(args) => coord::run(&args),
            Err(e) => {
                eprintln!("roomcast-bench run: {e}");
                2
            }
        },
        Command::Client(args) => client::run(args),
        Command::Floor(args) => floor::run(args),
    };
    std::process::exit(code);
}
