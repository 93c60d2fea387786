//! The configuration of `roomcast-bench run`: one struct for the command line and the scenario
//! files in `bench/scenarios/`. `roomcast-bench run big-room.toml --conns 5000` takes every field
//! from the file (keys are the flag names with `_` for `-`) and every flag given on the command
//! line over it; the layering is the engine's own [`load_layered`].

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use roomcast_ops::config::load_layered;
use serde::{Deserialize, Serialize};

use crate::client::Transport;
use crate::dist::{Population, PriorityMix, PublishSpread, RoomDist, Senders};
use crate::merge::Traffic;

/// The control plane's development API key (what `roomcast-control` accepts when none is set).
pub const DEV_API_KEY: &str = "roomcast-dev-api-key";

/// How published messages reach the edges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PublishVia {
    /// `POST /v1/messages` batches to `roomcast-control`, which routes them to the edges.
    Control,
    /// The bench plays the control plane: edges dial it and it writes `publish` frames itself.
    Link,
}

/// The system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerKind {
    /// roomcast: its edges (and control plane, or the bench on the edge link).
    Roomcast,
    /// A NATS server (`nats-server`, started with a generated config) as the peer to compare
    /// with: viewers subscribe over its websocket, the bench publishes with `PUB` over its client
    /// port. The clients' transport is `nats-ws`.
    Nats,
}

/// What the started control plane does with viewers' sends (its `--send-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SendMode {
    /// Each send is published into its room at priority 3 (within the room's upstream budget).
    Direct,
    /// Each send is POSTed to the platform's backend first (--send-proxy starts the sample one).
    Proxy,
}

impl SendMode {
    pub fn name(self) -> &'static str {
        match self {
            SendMode::Direct => "direct",
            SendMode::Proxy => "proxy",
        }
    }
}

/// Where client tokens come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenSource {
    /// Signed by the client processes with --jwt-secret (what a platform backend does).
    Local,
    /// One `POST /v1/tokens` per connection, before connecting (--publish-via control only).
    Control,
}

#[derive(Parser, Debug, Clone, Serialize, Deserialize)]
#[command(
    name = "roomcast-bench run",
    about = "Run one benchmark: start the system (or use a running one), connect clients, publish, measure",
    long_about = "Run one benchmark: start the system (or use a running one), connect clients, \
        publish, measure.\n\n\
        A scenario file (TOML, see bench/scenarios/) sets any of the options below; its keys are \
        the flag names with `_` for `-` (`conns = 100000`, `edge_args = [\"--io=epoll\"]`). Flags \
        given on the command line override the file."
)]
pub struct RunArgs {
    /// Scenario file (TOML).
    #[arg(value_name = "SCENARIO")]
    pub scenario: Option<PathBuf>,

    // ---- the system under test ----
    /// What to measure: roomcast, or a NATS server doing the same fan-out for comparison
    /// (`nats`: starts --nats-bin with a generated config in the log dir, viewers subscribe to
    /// the room's subject over NATS's websocket on --ws-port, the bench publishes with `PUB`
    /// over --nats-port; the report's edge figures are then the NATS server's).
    #[arg(long, value_enum, default_value_t = ServerKind::Roomcast)]
    pub server: ServerKind,

    /// The nats-server binary (--server nats): a path, or a name looked up on PATH
    /// (`bench/scripts/install-peers.sh` installs Debian's).
    #[arg(long, default_value = "nats-server")]
    pub nats_bin: PathBuf,

    /// NATS's client port, where the bench publishes (--server nats).
    #[arg(long, default_value_t = 4222)]
    pub nats_port: u16,

    /// NATS's monitoring port (--server nats): `/varz` for its connections, messages and slow
    /// consumers, `/connz` for the subscriptions per subject.
    #[arg(long, default_value_t = 8222)]
    pub nats_monitor_port: u16,

    /// NATS's `max_pending` per connection, bytes (--server nats): what it buffers for a client
    /// before calling it a slow consumer and closing it.
    #[arg(long, default_value_t = 128 << 20)]
    pub nats_max_pending: u64,

    /// NATS's `write_deadline`, seconds (--server nats): a flush to one client blocked longer is
    /// a slow consumer too.
    #[arg(long, default_value_t = 60)]
    pub nats_write_deadline: u64,

    /// How messages are published: through roomcast-control's HTTP API, or by the bench
    /// playing the control plane over the edge link.
    #[arg(long, value_enum, default_value_t = PublishVia::Control)]
    pub publish_via: PublishVia,

    /// Use a running system instead of starting one: with --publish-via link, running edges
    /// dial --link-listen; with --publish-via control, the control plane at --control-url and
    /// its edges.
    #[arg(long, alias = "no-spawn-edges")]
    pub no_spawn: bool,

    /// roomcast-edge processes to start (default: one per 15,000 connections). They share the
    /// client ports (SO_REUSEPORT spreads connections between them). With --no-spawn: how many
    /// registered edges to wait for (default 1).
    #[arg(long)]
    pub edges: Option<usize>,

    /// PIDs of running edges (with --no-spawn), to measure their CPU and memory.
    #[arg(long, value_delimiter = ',')]
    pub edge_pids: Vec<u32>,

    /// PID of a running control plane (with --no-spawn), to measure its CPU.
    #[arg(long)]
    pub control_pid: Option<u32>,

    /// The roomcast-edge binary (default: next to this executable).
    #[arg(long)]
    pub edge_bin: Option<PathBuf>,

    /// The roomcast-control binary (default: next to this executable).
    #[arg(long)]
    pub control_bin: Option<PathBuf>,

    /// Extra argument for every started edge, e.g. --edge-arg=--tick-ms=0 (repeatable).
    #[arg(long = "edge-arg", allow_hyphen_values = true)]
    pub edge_args: Vec<String>,

    /// Extra argument for the started control plane, e.g. --control-arg=--level-dwell-ms=0
    /// (repeatable).
    #[arg(long = "control-arg", allow_hyphen_values = true)]
    pub control_args: Vec<String>,

    /// The edge link's address: where the bench (--publish-via link) or the started control
    /// plane listens for edges.
    #[arg(long, default_value = "127.0.0.1:9091")]
    pub link_listen: SocketAddr,

    /// The control plane's HTTP API (--publish-via control).
    #[arg(long, default_value = "http://127.0.0.1:9090")]
    pub control_url: String,

    /// The control plane's API key (its development key by default).
    #[arg(long, default_value = DEV_API_KEY, hide_default_value = true)]
    pub api_key: String,

    /// Ask the control plane's dispatcher (`GET /v1/dispatch`) where to connect, instead of
    /// dialling the edges' shared ports directly.
    #[arg(long)]
    pub use_dispatch: bool,

    /// Where client tokens come from.
    #[arg(long, value_enum, default_value_t = TokenSource::Local)]
    pub tokens: TokenSource,

    /// HS256 secret of client tokens (the edge's development secret by default).
    #[arg(long, default_value = roomcast_proto::auth::DEV_JWT_SECRET, hide_default_value = true)]
    pub jwt_secret: String,

    /// Edge WebSocket port (every started edge listens on it).
    #[arg(long, default_value_t = 8080)]
    pub ws_port: u16,

    /// Edge raw TCP port (every started edge listens on it).
    #[arg(long, default_value_t = 8081)]
    pub tcp_port: u16,

    /// The edges' IP address.
    #[arg(long, default_value = "127.0.0.1")]
    pub edge_ip: Ipv4Addr,

    // ---- clients ----
    /// Client connections.
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,

    /// Client processes (default: one per 15,000 connections, so each stays under 20,000 fds).
    #[arg(long)]
    pub procs: Option<usize>,

    /// Event-loop threads per client process.
    #[arg(long, default_value_t = 2)]
    pub client_threads: usize,

    /// Client transport.
    #[arg(long, value_enum, default_value_t = Transport::Tcp)]
    pub transport: Transport,

    /// Connection attempts in flight at once, across all client processes.
    #[arg(long, default_value_t = 2000)]
    pub connect_inflight: usize,

    /// Connections per source address (127.0.0.2, .3, ...): one address has about 28k
    /// ephemeral ports towards one edge port.
    #[arg(long, default_value_t = 10_000)]
    pub conns_per_ip: usize,

    /// Client heartbeat (`ping` op) interval, seconds.
    #[arg(long, default_value_t = 20)]
    pub ping_secs: u64,

    /// SO_RCVBUF of every client socket (0: the host's tcp_rmem default). Viewers' devices do
    /// not run on the edge host, whose tuning profile shrinks tcp_rmem's default to 16 KiB for
    /// the edge's own sockets; a level-4 frame is 16-64 KiB, so clients set their own.
    #[arg(long, default_value_t = 128 * 1024)]
    pub client_recv_buffer: usize,

    /// After a busy poll, a client thread sleeps this long before waiting again (0: wait at
    /// once). Like a NIC's interrupt moderation: readiness piles up meanwhile, so a 100k fan-out
    /// wakes each client thread about once per interval instead of once per frame — on loopback
    /// the edge pays for every wakeup inside its write. Adds at most this much to latency.
    #[arg(long, default_value_t = 1000)]
    pub client_poll_interval_us: u64,

    /// Give up connecting after this many seconds.
    #[arg(long, default_value_t = 180)]
    pub connect_timeout: u64,

    // ---- rooms and groups ----
    /// Rooms (1 = everybody in one room).
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,

    /// How connections spread over the rooms.
    #[arg(long, value_enum, default_value_t = RoomDist::Uniform)]
    pub room_dist: RoomDist,

    /// Exponent s of --room-dist zipf (room r gets a share proportional to 1/(r+1)^s).
    #[arg(long, default_value_t = 1.0)]
    pub zipf_exponent: f64,

    /// Fraction of connections that stop reading during the measured window (slow readers);
    /// they are reported apart from the others.
    #[arg(long, default_value_t = 0.0)]
    pub slow_readers: f64,

    /// Fraction of connections that churn (close and reconnect) during the measured window.
    #[arg(long, default_value_t = 0.0)]
    pub churn: f64,

    /// Reconnects per second across all churning connections.
    #[arg(long, default_value_t = 100.0)]
    pub churn_rate: f64,

    /// A reconnect storm: this many seconds into the measured window every client process
    /// drops all its joined connections at once (an abortive close, as a network flap looks to
    /// the edge), and each reconnects after --reconnect-jitter and joins its room with `since`
    /// (the epoch and last seq it processed). Reports the recovery replies (recovered or why
    /// not), the time until every viewer has its reply and its replay, the reply latency, the
    /// messages replayed, the control plane's CPU before and after the drop, and whether every
    /// viewer's stream stayed complete and gap-free (--publish-via control: the control plane
    /// answers the recoveries).
    #[arg(long, value_name = "S")]
    pub drop_all_at: Option<f64>,

    /// After --drop-all-at, each connection waits a delay drawn uniformly from [0, this)
    /// seconds before it reconnects (an SDK's full jitter; from a hash of its index, so runs
    /// repeat). 0 reconnects everyone at once.
    #[arg(long, default_value_t = 1.0, value_name = "S")]
    pub reconnect_jitter: f64,

    // ---- publishing ----
    /// Published messages per second, across all rooms (0: as fast as the control plane or the
    /// edge links take them).
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,

    /// Ramp the load in one run: the publish rate rises (or falls) linearly from --rate to this
    /// many msg/s over the measured window (the warm-up stays at --rate; after the window, if
    /// publishing goes on, it stays at this), every publisher thread its share, paced exactly:
    /// message k is due when the integral of the rate reaches k. Needs a paced --rate (not 0).
    #[arg(long, value_name = "R")]
    pub ramp_to: Option<f64>,

    /// Size of each message's data (JSON {"ts":...,"pad":"xxx..."}), bytes.
    #[arg(long, default_value_t = 128)]
    pub payload: usize,

    /// Priorities of published messages, as weights: `0:1,1:4,2:20,3:75`, or one priority (`3`).
    #[arg(long, default_value = "3")]
    pub priority_mix: PriorityMix,

    /// Which rooms get the messages: the same rate for every occupied room, or a rate
    /// proportional to its members.
    #[arg(long, value_enum, default_value_t = PublishSpread::Even)]
    pub publish_spread: PublishSpread,

    /// Most messages in one `POST /v1/messages` (--publish-via control).
    #[arg(long, default_value_t = 1000)]
    pub publish_batch: usize,

    /// Publisher threads, each with its own HTTP connection and an equal share of --rate
    /// (--publish-via control): one connection's request round trips cap a single publisher
    /// near 0.7M msg/s, below what the control plane takes.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,

    /// Each publisher thread encodes one batch of --publish-batch messages once and POSTs the same
    /// bytes again and again, only the messages' timestamps stamped in place (--publish-via
    /// control): the publisher then takes a fraction of the CPU, and the host is left to the
    /// system under test. Every request carries the same rooms and priorities; with --rate it
    /// waits until a whole batch is due.
    #[arg(long)]
    pub replay_batches: bool,

    /// Also publish this many priority-0 messages per second, one per request, from a publisher
    /// thread with an HTTP connection of its own, round-robin over the occupied rooms
    /// (--publish-via control; 0: none). Their publish -> receive latency is the P0 row when the
    /// load has no priority 0, and their request round trip is reported apart: the control hop's
    /// latency under the load.
    #[arg(long, default_value_t = 0.0)]
    pub probe_rate: f64,

    // ---- merge traffic (PROTOCOL.md §5 "Merged messages"; bench/src/merge.rs) ----
    /// PK battle gifts per second, on top of the load (0: none). Each gift moves the PK bar, whose
    /// new state {"ts","n","left","right"} goes to every occupied room (kind `pk`, priority 1)
    /// with a `latest` merge rule on key `pk:1` (--pk-interval-ms); when publishing stops, each
    /// room gets a `final`. Every viewer is checked: at most one update per interval, the final
    /// received, the last value before it the last one published. --publish-via control.
    #[arg(long, default_value_t = 0.0, value_name = "GIFTS_PER_S")]
    pub pk_rate: f64,

    /// The PK key's merge interval (`interval_ms` of its rule).
    #[arg(long, default_value_t = 2000, value_name = "MS")]
    pub pk_interval_ms: u64,

    /// Likes per second over the occupied rooms, on top of the load (0: none): kind `like`,
    /// priority 3, data {"count":1 or a few}, a `sum` merge rule on `count` keyed `like` in each
    /// room. Every viewer's sum of the counts it received must equal its room's published sum.
    /// --publish-via control.
    #[arg(long, default_value_t = 0.0, value_name = "PER_S")]
    pub like_rate: f64,

    /// Combo gifts per second over the occupied rooms (0: none): kind `combo`, priority 2, a
    /// `sum` rule on `count` keyed `combo:u<U>:gift<G>`, one of --combo-keys per room. Every
    /// viewer's sums must match per key. --publish-via control.
    #[arg(long, default_value_t = 0.0, value_name = "PER_S")]
    pub combo_rate: f64,

    /// Combo keys (user x gift) per room the combos are spread over.
    #[arg(long, default_value_t = 40)]
    pub combo_keys: u32,

    /// Publish the merge traffic as plain messages, without merge rules: the load the rules
    /// save. The checks are reported, not judged.
    #[arg(long)]
    pub no_merge_rules: bool,

    /// Run twice back to back, with the merge traffic's rules and then without them (a fresh
    /// system and fresh viewers each time), print both reports and a comparison (published and
    /// delivered msg/s, frames/s, edge and control CPU); --json-out gets both, --plot draws each
    /// (the second as FILE.without-merge.svg). `--merge-compare=false` turns a scenario's off.
    #[arg(
        long,
        num_args = 0..=1,
        require_equals = true,
        default_value_t = false,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub merge_compare: bool,

    // ---- upstream (PROTOCOL.md §5 "Upstream") ----
    /// Viewers that also send (danmaku through their own connection): a count (`20000`), a
    /// percentage of --conns (`25%`) or `all`; 0 (the default) sends nothing. Senders are spread
    /// evenly over the connections (so over rooms and client processes); each sends
    /// --sends-per-sender-per-s chat lines {"ts":..,"text":".."} of kind --send-kind into its
    /// room from the warm-up to the end of the window, spread evenly in time. Reported: sends/s
    /// attempted and answered, per outcome (published, not broadcast, rate_limited,
    /// unavailable, other), the reply's latency, the CPU per send of the edges, the control
    /// plane and the backend, and the published sends as the room's viewers received them.
    /// Needs --publish-via control.
    #[arg(long, default_value = "0", value_name = "N|P%|all")]
    pub senders: Senders,

    /// Sends per second of each sender. Above the edges' default --send-rate (2/s) the started
    /// edges get --send-rate and --send-burst that allow it (unless --edge-arg sets them).
    #[arg(long, default_value_t = 1.0, value_name = "PER_S")]
    pub sends_per_sender_per_s: f64,

    /// The `kind` of the sends (one of the edges' --send-kinds: chat, like by default).
    #[arg(long, default_value = "chat")]
    pub send_kind: String,

    /// The started control plane's --send-mode: `direct` publishes each send into its room
    /// (within the room's --send-budgets), `proxy` asks the platform's backend first (needs
    /// --send-proxy, or --control-arg=--send-proxy-url=...). Default: proxy with --send-proxy,
    /// else the control plane's own default (direct).
    #[arg(long, value_enum)]
    pub send_mode: Option<SendMode>,

    /// Start the sample platform backend (roomcast-example-backend, --backend-bin) on
    /// --backend-listen and point the control plane's --send-proxy-url at its /roomcast/send
    /// (implies --send-mode proxy). Its CPU is measured with the others'.
    #[arg(long)]
    pub send_proxy: bool,

    /// Where the started sample backend listens (--send-proxy).
    #[arg(long, default_value = "127.0.0.1:9300")]
    pub backend_listen: SocketAddr,

    /// The roomcast-example-backend binary (default: next to this executable; build it with
    /// cargo build --release -p roomcast-example-backend).
    #[arg(long)]
    pub backend_bin: Option<PathBuf>,

    /// Extra argument for the started backend, e.g. --backend-arg=--banned-words= (repeatable).
    #[arg(long = "backend-arg", allow_hyphen_values = true)]
    pub backend_args: Vec<String>,

    // ---- timing ----
    /// Length of the measured window, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,

    /// Publishing before the measured window starts, seconds.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,

    /// Seconds to wait after publishing stops, at least; then until the clients have received
    /// nothing new for 2 s (at most 60 s in all).
    #[arg(long, default_value_t = 2.0)]
    pub drain: f64,

    /// Connect and hold the connections (with heartbeats) for --duration; no publishing.
    #[arg(long)]
    pub hold_only: bool,

    // ---- measurements and output ----
    /// Skip the floor measurement at the start of the run (edge CPU per frame is then not
    /// reported as a ratio to it).
    #[arg(long)]
    pub no_floor: bool,

    /// Loopback sockets of the in-run floor measurement.
    #[arg(long, default_value_t = 2000)]
    pub floor_conns: usize,

    /// Rounds of the in-run floor measurement (at least; more while it has used under 0.1 s of
    /// CPU).
    #[arg(long, default_value_t = 50)]
    pub floor_iters: usize,

    /// After the measured window, trace every edge with `strace -f` for this many seconds
    /// (publishing continues) to count write syscalls per delivered frame.
    #[arg(long)]
    pub strace: Option<f64>,

    /// Write the full results as JSON here.
    #[arg(long)]
    pub json_out: Option<PathBuf>,

    /// Draw latency percentiles, throughput and connections over time as an SVG here.
    #[arg(long)]
    pub plot: Option<PathBuf>,

    /// Directory for the started processes' logs (default /tmp/roomcast-bench-<pid>).
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
}

impl RunArgs {
    /// Parses `roomcast-bench run` arguments (those after `run`) over the scenario file they name.
    pub fn load(args: impl IntoIterator<Item = OsString>) -> Result<RunArgs, String> {
        let argv = std::iter::once(OsString::from("roomcast-bench run")).chain(args);
        let run: RunArgs =
            load_layered(argv, |a: &RunArgs| a.scenario.clone()).map_err(|e| e.to_string())?;
        let mut run = run;
        if run.server == ServerKind::Nats {
            // NATS speaks its own protocol over its websocket.
            run.transport = Transport::NatsWs;
        }
        run.validate()?;
        Ok(run)
    }

    fn validate(&self) -> Result<(), String> {
        let fraction = |name: &str, v: f64| {
            if (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("--{name} must be a fraction in [0, 1), not {v}"))
            }
        };
        if self.conns == 0 || self.rooms == 0 {
            return Err("--conns and --rooms must be positive".into());
        }
        if self.rate.is_nan() || self.rate < 0.0 {
            return Err("--rate must be positive, or 0 for as fast as they are taken".into());
        }
        if let Some(to) = self.ramp_to {
            if !to.is_finite() || to < 0.0 {
                return Err(format!("--ramp-to must be 0 or more msg/s, not {to}"));
            }
            if self.rate == 0.0 {
                return Err(
                    "--ramp-to needs a paced --rate to start from (--rate 0 is unpaced)".into(),
                );
            }
            if self.hold_only {
                return Err("--ramp-to publishes; --hold-only does not".into());
            }
        }
        if self.probe_rate.is_nan() || self.probe_rate < 0.0 {
            return Err("--probe-rate must be positive, or 0 for no probe".into());
        }
        if self.zipf_exponent <= 0.0 {
            return Err("--zipf-exponent must be positive".into());
        }
        fraction("slow-readers", self.slow_readers)?;
        fraction("churn", self.churn)?;
        if self.slow_readers + self.churn >= 1.0 {
            return Err("--slow-readers + --churn must leave some normal connections".into());
        }
        if self.churn > 0.0 && self.churn_rate <= 0.0 {
            return Err("--churn-rate must be positive".into());
        }
        if self.reconnect_jitter.is_nan() || self.reconnect_jitter < 0.0 {
            return Err("--reconnect-jitter must be 0 or more seconds".into());
        }
        if let Some(at) = self.drop_all_at {
            if !(0.0..self.duration).contains(&at) {
                return Err(format!(
                    "--drop-all-at {at} must fall inside the {} s measured window",
                    self.duration
                ));
            }
            if self.hold_only {
                return Err("--drop-all-at needs publishing; --hold-only does not".into());
            }
            if self.server == ServerKind::Nats || self.publish_via == PublishVia::Link {
                return Err(
                    "--drop-all-at needs roomcast's control plane (--publish-via control): it \
                     answers the recoveries"
                        .into(),
                );
            }
        }
        self.validate_merge()?;
        self.validate_upstream()?;
        if self.publish_batch == 0 || self.client_threads == 0 || self.publishers == 0 {
            return Err(
                "--publish-batch, --client-threads and --publishers must be positive".into(),
            );
        }
        match self.server {
            ServerKind::Roomcast if self.transport == Transport::NatsWs => {
                return Err("--transport nats-ws is for --server nats".into());
            }
            ServerKind::Nats => return self.validate_nats(),
            ServerKind::Roomcast => {}
        }
        if self.publishers > 1 && self.publish_via == PublishVia::Link {
            return Err("--publishers above 1 needs --publish-via control".into());
        }
        if self.publish_via == PublishVia::Link {
            if self.replay_batches || self.probe_rate > 0.0 {
                return Err("--replay-batches and --probe-rate need --publish-via control".into());
            }
            if self.use_dispatch {
                return Err("--use-dispatch needs --publish-via control".into());
            }
            if self.tokens == TokenSource::Control {
                return Err("--tokens control needs --publish-via control".into());
            }
        }
        Ok(())
    }

    /// Merge traffic: rates, the interval, and what it needs (the control plane merges).
    fn validate_merge(&self) -> Result<(), String> {
        for (name, rate) in [
            ("pk-rate", self.pk_rate),
            ("like-rate", self.like_rate),
            ("combo-rate", self.combo_rate),
        ] {
            if !rate.is_finite() || rate < 0.0 {
                return Err(format!("--{name} must be 0 or more per second, not {rate}"));
            }
        }
        if !(1..=3_600_000).contains(&self.pk_interval_ms) {
            return Err("--pk-interval-ms must be 1-3600000 (the API's interval_ms)".into());
        }
        if self.combo_rate > 0.0 && self.combo_keys == 0 {
            return Err("--combo-keys must be positive".into());
        }
        let traffic = self.merge_traffic();
        if self.merge_compare && !traffic.any() {
            return Err(
                "--merge-compare needs merge traffic (--pk-rate, --like-rate or --combo-rate)"
                    .into(),
            );
        }
        if self.merge_compare && self.no_merge_rules {
            return Err(
                "--merge-compare runs with the rules, then without: no --no-merge-rules".into(),
            );
        }
        if traffic.any() {
            if self.server != ServerKind::Roomcast || self.publish_via != PublishVia::Control {
                return Err(
                    "merge traffic needs roomcast's control plane (--publish-via control): it \
                     merges"
                        .into(),
                );
            }
            if self.hold_only {
                return Err("merge traffic publishes; --hold-only does not".into());
            }
        }
        Ok(())
    }

    /// Upstream: senders need the control plane (it answers them) and a publishing run (they
    /// send from the warm-up to the end of the window); the send mode and the backend configure
    /// a control plane the bench starts.
    fn validate_upstream(&self) -> Result<(), String> {
        if !(self.sends_per_sender_per_s.is_finite() && self.sends_per_sender_per_s > 0.0) {
            return Err(format!(
                "--sends-per-sender-per-s must be above 0, not {}",
                self.sends_per_sender_per_s
            ));
        }
        if self.send_kind.is_empty() {
            return Err("--send-kind must not be empty".into());
        }
        if self.senders() > 0 {
            if self.server != ServerKind::Roomcast || self.publish_via != PublishVia::Control {
                return Err(
                    "--senders needs roomcast's control plane (--publish-via control): it answers \
                     the sends"
                        .into(),
                );
            }
            if self.hold_only {
                return Err(
                    "--senders send from the warm-up to the end of the window; --hold-only has \
                     neither"
                        .into(),
                );
            }
        }
        if self.send_mode.is_some() || self.send_proxy {
            if self.no_spawn || self.server != ServerKind::Roomcast {
                return Err(
                    "--send-mode and --send-proxy configure the control plane the bench starts \
                     (not with --no-spawn or --server nats)"
                        .into(),
                );
            }
            if self.publish_via != PublishVia::Control {
                return Err("--send-mode and --send-proxy need --publish-via control".into());
            }
        }
        let url_given = self
            .control_args
            .iter()
            .any(|a| a.starts_with("--send-proxy-url"));
        match (self.send_mode, self.send_proxy) {
            (Some(SendMode::Direct), true) => {
                Err("--send-proxy starts a backend for --send-mode proxy, not direct".into())
            }
            (Some(SendMode::Proxy), false) if !url_given => Err(
                "--send-mode proxy needs a backend: --send-proxy starts the sample one, or give \
                 --control-arg=--send-proxy-url=http://..."
                    .into(),
            ),
            _ => Ok(()),
        }
    }

    /// Sender connections of the run.
    pub fn senders(&self) -> usize {
        self.senders.of(self.conns)
    }

    /// The send mode given to the started control plane (`None`: its default).
    pub fn send_mode(&self) -> Option<SendMode> {
        self.send_mode
            .or(self.send_proxy.then_some(SendMode::Proxy))
    }

    /// The merge traffic this run publishes.
    pub fn merge_traffic(&self) -> Traffic {
        Traffic {
            pk_rate: self.pk_rate,
            pk_interval_ms: self.pk_interval_ms,
            like_rate: self.like_rate,
            combo_rate: self.combo_rate,
            combo_keys: self.combo_keys,
            rules: !self.no_merge_rules,
        }
    }

    /// What `--server nats` supports: one publisher connection (NATS orders messages per
    /// publishing connection only, and the subscribers judge order and loss from one number
    /// sequence), a server it starts itself, no roomcast-only features.
    fn validate_nats(&self) -> Result<(), String> {
        if self.publishers != 1 {
            return Err("--server nats publishes from one connection: --publishers 1".into());
        }
        if self.no_spawn {
            return Err("--server nats starts its own nats-server: no --no-spawn".into());
        }
        if self.replay_batches || self.probe_rate > 0.0 || self.use_dispatch {
            return Err(
                "--replay-batches, --probe-rate and --use-dispatch are roomcast's (--server roomcast)"
                    .into(),
            );
        }
        if self.tokens == TokenSource::Control {
            return Err("--tokens control needs roomcast's control plane".into());
        }
        if self.edges.is_some_and(|n| n != 1) {
            return Err("--server nats runs one nats-server".into());
        }
        Ok(())
    }

    /// Where the connections go and what they do.
    pub fn population(&self) -> Population {
        Population::new(
            self.rooms,
            self.room_dist,
            self.zipf_exponent,
            self.slow_readers,
            self.churn,
        )
    }

    /// `100 msg/s`, `unpaced` for --rate 0, or `10 -> 150 msg/s ramp` with --ramp-to.
    pub fn rate_text(&self) -> String {
        match self.ramp_to {
            Some(to) => ramp_text(self.rate, to),
            None => rate_text(self.rate),
        }
    }

    /// The scenario's name: its file stem, or `custom`.
    pub fn name(&self) -> String {
        self.scenario
            .as_ref()
            .and_then(|p| p.file_stem())
            .map_or_else(|| "custom".into(), |s| s.to_string_lossy().into_owned())
    }
}

/// A requested publish rate: `100 msg/s`, or `unpaced` for 0.
pub fn rate_text(rate: f64) -> String {
    if rate == 0.0 {
        "unpaced".into()
    } else {
        format!("{rate} msg/s")
    }
}

/// A ramp: `10 -> 150 msg/s ramp`.
pub fn ramp_text(from: f64, to: f64) -> String {
    format!("{from} -> {to} msg/s ramp")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(args: &[&str]) -> Result<RunArgs, String> {
        RunArgs::load(args.iter().map(OsString::from))
    }

    #[test]
    fn flags_override_the_scenario_file() {
        let dir =
            std::env::temp_dir().join(format!("roomcast-bench-scenario-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.toml");
        std::fs::write(
            &path,
            "conns = 5000\nrooms = 7\nroom_dist = \"zipf\"\npriority_mix = \"0:1,3:9\"\n\
             edge_args = [\"--tick-ms=0\"]\ntransport = \"ws-json\"\nhold_only = true\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let a = load(&[p, "--conns", "300"]).unwrap();
        assert_eq!(a.conns, 300, "the flag wins");
        assert_eq!(a.rooms, 7, "the file fills what no flag gave");
        assert_eq!(a.room_dist, RoomDist::Zipf);
        assert_eq!(a.priority_mix.to_string(), "0:1,3:9");
        assert_eq!(a.edge_args, ["--tick-ms=0"]);
        assert_eq!(a.transport, Transport::WsJson);
        assert!(a.hold_only);
        assert_eq!(a.name(), "s");

        std::fs::write(&path, "connz = 5\n").unwrap();
        let err = load(&[p]).unwrap_err();
        assert!(err.contains("connz"), "{err}");
    }

    #[test]
    fn every_shipped_scenario_loads() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                load(&[path.to_str().unwrap()])
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
        }
        assert!(
            seen >= 13,
            "expected the thirteen scenarios in {}",
            dir.display()
        );
    }

    #[test]
    fn rejects_impossible_combinations() {
        assert!(load(&["--slow-readers", "0.6", "--churn", "0.5"]).is_err());
        assert!(load(&["--publish-via", "link", "--use-dispatch"]).is_err());
        assert!(load(&["--publish-via", "link", "--replay-batches"]).is_err());
        assert!(load(&["--publish-via", "link", "--probe-rate", "100"]).is_err());
        assert!(load(&["--rate=-1"]).is_err());
        assert!(
            load(&["--rate", "0", "--replay-batches"]).is_ok(),
            "0 is unpaced"
        );
        assert!(load(&["--use-dispatch"]).is_ok(), "control is the default");
        assert!(load(&["--transport", "nats-ws"]).is_err());
        assert!(load(&["--server", "nats", "--publishers", "2"]).is_err());
        assert!(load(&["--server", "nats", "--no-spawn"]).is_err());
        let nats = load(&["--server", "nats", "--transport", "ws-json"]).unwrap();
        assert_eq!(nats.transport, Transport::NatsWs, "NATS's own protocol");
        assert!(load(&["--rate", "10", "--ramp-to", "150"]).is_ok());
        assert!(
            load(&["--rate", "100", "--ramp-to", "0"]).is_ok(),
            "down to 0"
        );
        assert!(load(&["--rate", "10", "--ramp-to=-1"]).is_err());
        assert!(load(&["--rate", "10", "--ramp-to", "NaN"]).is_err());
        assert!(
            load(&["--rate", "0", "--ramp-to", "150"]).is_err(),
            "unpaced"
        );
        assert!(load(&["--hold-only", "--ramp-to", "150"]).is_err());
        assert!(load(&["--drop-all-at", "5"]).is_ok());
        assert!(
            load(&["--drop-all-at", "10"]).is_err(),
            "inside the 10 s window"
        );
        assert!(load(&["--drop-all-at", "5", "--publish-via", "link"]).is_err());
        assert!(load(&["--drop-all-at", "5", "--server", "nats"]).is_err());
        assert!(load(&["--drop-all-at", "5", "--hold-only"]).is_err());
        assert!(load(&["--reconnect-jitter=-1"]).is_err());
    }

    #[test]
    fn upstream_needs_the_control_plane_and_a_backend_for_proxy() {
        let a = load(&["--conns", "200", "--senders", "25%", "--send-proxy"]).unwrap();
        assert_eq!(a.senders(), 50);
        assert_eq!(a.send_mode(), Some(SendMode::Proxy), "implied");
        assert_eq!(load(&[]).unwrap().senders(), 0, "none by default");
        assert_eq!(load(&[]).unwrap().send_mode(), None);
        assert_eq!(
            load(&["--conns", "10", "--senders", "all"])
                .unwrap()
                .senders(),
            10
        );
        assert!(load(&["--senders", "5", "--publish-via", "link"]).is_err());
        assert!(load(&["--senders", "5", "--server", "nats"]).is_err());
        assert!(load(&["--senders", "5", "--hold-only"]).is_err());
        assert!(load(&["--senders", "5", "--sends-per-sender-per-s", "0"]).is_err());
        assert!(load(&["--send-mode", "proxy"]).is_err(), "no backend");
        assert!(load(&[
            "--send-mode",
            "proxy",
            "--control-arg=--send-proxy-url=http://127.0.0.1:1/x"
        ])
        .is_ok());
        assert!(load(&["--send-mode", "direct", "--send-proxy"]).is_err());
        assert!(load(&["--send-proxy", "--no-spawn"]).is_err());
        assert!(load(&["--senders", "5", "--send-mode", "direct"]).is_ok());

        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/upstream.toml");
        let up = load(&[file.to_str().unwrap()]).unwrap();
        assert_eq!(up.senders(), up.conns, "every viewer sends");
        assert_eq!(up.send_mode(), Some(SendMode::Proxy));
        let file = file.with_file_name("upstream-direct.toml");
        let direct = load(&[file.to_str().unwrap()]).unwrap();
        assert_eq!(direct.send_mode(), Some(SendMode::Direct));
        assert_eq!(direct.senders(), direct.conns);
    }

    #[test]
    fn merge_traffic_needs_the_control_plane_and_sane_figures() {
        let a = load(&["--pk-rate", "1000", "--rooms", "2"]).unwrap();
        let t = a.merge_traffic();
        assert!(t.any() && t.rules);
        assert_eq!((t.pk_interval_ms, t.combo_keys), (2000, 40));
        assert!(!load(&[]).unwrap().merge_traffic().any(), "none by default");
        assert!(
            !load(&["--like-rate", "5", "--no-merge-rules"])
                .unwrap()
                .merge_traffic()
                .rules
        );
        assert!(load(&["--like-rate", "5", "--merge-compare"]).is_ok());
        assert!(load(&["--merge-compare"]).is_err(), "nothing to compare");
        assert!(load(&["--like-rate", "5", "--merge-compare", "--no-merge-rules"]).is_err());
        assert!(load(&["--like-rate", "5", "--publish-via", "link"]).is_err());
        assert!(load(&["--like-rate", "5", "--server", "nats"]).is_err());
        assert!(load(&["--like-rate", "5", "--hold-only"]).is_err());
        assert!(load(&["--like-rate=-5"]).is_err());
        assert!(load(&["--combo-rate", "NaN"]).is_err());
        assert!(load(&["--pk-rate", "1", "--pk-interval-ms", "0"]).is_err());
        assert!(load(&["--combo-rate", "1", "--combo-keys", "0"]).is_err());

        // like-storm.toml compares; a flag turns it off, or on.
        let file =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/like-storm.toml");
        let file = file.to_str().unwrap();
        assert!(load(&[file]).unwrap().merge_compare);
        assert!(
            !load(&[file, "--merge-compare=false"])
                .unwrap()
                .merge_compare
        );
        assert!(
            load(&["--like-rate", "1", "--merge-compare=true"])
                .unwrap()
                .merge_compare
        );
        assert!(!load(&["--like-rate", "1"]).unwrap().merge_compare);
    }
}
