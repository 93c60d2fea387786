//! Control-plane configuration: one struct, three sources, loaded by the engine's shared layered
//! loader. A flag wins over its `ROOMCAST_*` environment variable, which wins over the TOML file
//! given with `--config`, which wins over the default. TOML keys are the flag names with `_` for
//! `-` (`level_dwell_ms = 20000`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use roomcast_engine::DriverKind;
use roomcast_engine::EdgeConfig;
use roomcast_ops::config::{load_layered, unknown_env_vars, ConfigError};
use roomcast_proto::auth::DEV_JWT_SECRET;
use roomcast_proto::link::{SetLevel, UNLIMITED};
use roomcast_proto::message::PRIORITIES;
use serde::{Deserialize, Serialize};

use crate::history::{HistoryConfig, LevelHistory};
use crate::levels::LevelPolicy;

/// The development API key used when none is configured; the control plane warns when it is in
/// use.
pub const DEV_API_KEY: &str = "roomcast-dev-api-key";

/// The most sends in one request to the platform's backend (`--send-proxy-batch`).
pub const MAX_SEND_PROXY_BATCH: usize = 1000;
/// The longest `--send-proxy-timeout-ms`: under the edges' default `--join-confirm-timeout-ms`
/// (5 s), after which an edge answers a send `unavailable` itself.
const MAX_SEND_PROXY_TIMEOUT_MS: u64 = 4_000;

/// roomcast-edge's default `--tick-ms`: the window of a room it was told no level for.
const EDGE_DEFAULT_TICK_MS: u32 = 100;

/// Number of rate levels (1..=4).
pub const LEVELS: usize = 4;

/// What viewers' sends become (`--send-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SendMode {
    /// Published into the room at priority 3 with the sender's id.
    Direct,
    /// Decided by the platform's backend (--send-proxy-url).
    Proxy,
    /// Refused (`forbidden`).
    Off,
}

#[derive(Debug, Clone, Parser, Serialize, Deserialize)]
#[command(
    name = "roomcast-control",
    version,
    args_override_self = true,
    about = "roomcast control plane: publish API, dispatcher, router and rate levels",
    long_about = "roomcast control plane: the HTTP API a live platform's backend publishes through \
                  (rooms, users, broadcast), the dispatcher that hands clients edge addresses, the \
                  router that sends each message only to the edges holding its audience, and the \
                  per-room rate levels that pace big rooms.\n\n\
                  With no flags it runs the whole system on this machine: the control plane plus \
                  an embedded edge (WebSocket :8080, TCP :8081), the API on :9090 and the edge \
                  link on :9091. --no-embedded-edge runs the control plane alone; edges join with \
                  `roomcast-edge --control HOST:9091`.\n\n\
                  Every option can also be set as an environment variable ROOMCAST_<NAME> (for \
                  example ROOMCAST_API_KEY=...) or as a key in the TOML file given with --config \
                  (api_key = \"...\"). Flags win over the environment, which wins over the file.\n\n\
                  The embedded edge takes --edge-ws-listen, --edge-tcp-listen, \
                  --edge-admin-listen, --edge-workers, --edge-io, --edge-advertise-host and \
                  --edge-max-connections, shares --jwt-secret, dials this process's link, and \
                  merges each room in the window of its rate level: --level-ticks-ms (levels 1-4; \
                  a room starts at level 1, so the first value is the window of every room below \
                  the first threshold, e.g. --level-ticks-ms 50,250,500,1000). The edge's other \
                  options (queue bounds, timeouts, socket buffer, capacities, stats interval) are \
                  read only from roomcast-edge's own variables, such as \
                  ROOMCAST_QUEUE_SOFT_BYTES=262144 (not flags or --config keys here). A ROOMCAST_* \
                  variable that nothing reads, such as roomcast-edge's ROOMCAST_TICK_MS or \
                  ROOMCAST_WORKERS, is warned about at start with what to set instead.\n\n\
                  History: every channel (room, user, broadcast) keeps its recent messages in \
                  memory, bounded per rate level (--history-levels), per channel \
                  (--history-channel-max-bytes) and in total (--history-max-bytes, oldest \
                  first), so that a client resuming from its last (epoch, seq) gets exactly what \
                  it missed, or is told why not (--recover-max-messages, --recover-max-bytes). \
                  A publish carrying an \"id\" is published once per channel within \
                  --dedupe-window-s.\n\n\
                  Upstream: viewers' sends (danmaku) are published into their room (--send-mode \
                  direct), decided by the platform's backend first (--send-mode proxy, \
                  --send-proxy-url) or refused (--send-mode off), within the room's budget \
                  (--send-budgets). The embedded edge's send limits are roomcast-edge's \
                  ROOMCAST_SEND_RATE, ROOMCAST_SEND_BURST, ROOMCAST_MAX_SEND_BYTES and \
                  ROOMCAST_SEND_KINDS. Receipts of messages published with \"ack\":true are \
                  answered by GET /v1/users/{user}/messages/{seq} and reported to --receipt-url."
)]
#[serde(default, deny_unknown_fields)]
pub struct ControlConfig {
    /// TOML file with any of these options (keys use `_`, e.g. `max_body_bytes = 2097152`).
    #[arg(long, env = "ROOMCAST_CONFIG")]
    pub config: Option<PathBuf>,

    /// HTTP API listen address (publish, dispatch, tokens, status).
    #[arg(long, env = "ROOMCAST_API_LISTEN", default_value = "0.0.0.0:9090")]
    pub api_listen: SocketAddr,

    /// Edge link listen address; edges dial it (`roomcast-edge --control HOST:PORT`).
    #[arg(long, env = "ROOMCAST_LINK_LISTEN", default_value = "0.0.0.0:9091")]
    pub link_listen: SocketAddr,

    /// Bearer key required on every /v1 route except /v1/dispatch (default: a development key,
    /// warned about at start).
    #[arg(long, env = "ROOMCAST_API_KEY", default_value = DEV_API_KEY, hide_default_value = true)]
    pub api_key: String,

    /// HS256 secret client tokens are signed with; minted by POST /v1/tokens and shared with the
    /// embedded edge (default: the development secret, warned about).
    #[arg(long, env = "ROOMCAST_JWT_SECRET", default_value = DEV_JWT_SECRET, hide_default_value = true)]
    pub jwt_secret: String,

    /// Whether POST /v1/tokens mints client tokens (true/false). Production backends usually
    /// mint the same JWT themselves and turn this off.
    #[arg(long, env = "ROOMCAST_TOKENS_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub tokens_enabled: bool,

    /// In development mode (the built-in development API key in use), serve the H5 live-room
    /// demo at /demo/ (examples/h5-room on the SDK of sdk/js) with a token endpoint for it
    /// (/demo/token); false turns it off. A control plane with its own --api-key never serves it.
    #[arg(long, env = "ROOMCAST_DEMO", default_value_t = true, action = clap::ArgAction::Set)]
    pub demo: bool,

    /// Run the control plane alone, without the embedded edge.
    #[arg(long, env = "ROOMCAST_NO_EMBEDDED_EDGE")]
    pub no_embedded_edge: bool,

    /// Embedded edge: WebSocket listen address (path /ws).
    #[arg(long, env = "ROOMCAST_EDGE_WS_LISTEN", default_value = "0.0.0.0:8080")]
    pub edge_ws_listen: SocketAddr,

    /// Embedded edge: raw TCP listen address.
    #[arg(long, env = "ROOMCAST_EDGE_TCP_LISTEN", default_value = "0.0.0.0:8081")]
    pub edge_tcp_listen: SocketAddr,

    /// Embedded edge: admin endpoint (/metrics, /healthz, /readyz; port 0 picks one).
    #[arg(
        long,
        env = "ROOMCAST_EDGE_ADMIN_LISTEN",
        default_value = "0.0.0.0:9101"
    )]
    pub edge_admin_listen: SocketAddr,

    /// Embedded edge: pinned worker threads (0 = every online core).
    #[arg(long, env = "ROOMCAST_EDGE_WORKERS", default_value_t = 0)]
    pub edge_workers: usize,

    /// Embedded edge: I/O driver (auto probes io_uring and falls back to epoll).
    #[arg(long, env = "ROOMCAST_EDGE_IO", value_enum, default_value_t = DriverKind::Auto)]
    pub edge_io: DriverKind,

    /// Embedded edge: host or IP advertised to clients by /v1/dispatch (default: the listen IP;
    /// on a wildcard address, the address the edge reaches the control plane's link from).
    #[arg(long, env = "ROOMCAST_EDGE_ADVERTISE_HOST", default_value = "")]
    pub edge_advertise_host: String,

    /// Embedded edge: most client connections it holds.
    #[arg(long, env = "ROOMCAST_EDGE_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub edge_max_connections: u32,

    /// Online counts a0,a1,a2 at which a room enters levels 2, 3 and 4.
    #[arg(
        long,
        env = "ROOMCAST_LEVEL_THRESHOLDS",
        default_value = "1000,10000,50000"
    )]
    pub level_thresholds: String,

    /// Merge window (tick) of levels 1,2,3,4 in milliseconds: a room sends at most one batch per
    /// tick. Rooms start at level 1, so the first value is the embedded edge's merge window for
    /// every room below the first threshold (roomcast-edge's --tick-ms / ROOMCAST_TICK_MS is not
    /// read here).
    #[arg(
        long,
        env = "ROOMCAST_LEVEL_TICKS_MS",
        default_value = "100,250,500,1000"
    )]
    pub level_ticks_ms: String,

    /// Level 1 budgets per tick for priorities 1,2,3 (a number or `unlimited`; priority 0 is
    /// never limited).
    #[arg(
        long,
        env = "ROOMCAST_LEVEL1_BUDGETS",
        default_value = "unlimited,unlimited,unlimited"
    )]
    pub level1_budgets: String,

    /// Level 2 budgets per tick for priorities 1,2,3.
    #[arg(long, env = "ROOMCAST_LEVEL2_BUDGETS", default_value = "200,100,50")]
    pub level2_budgets: String,

    /// Level 3 budgets per tick for priorities 1,2,3.
    #[arg(long, env = "ROOMCAST_LEVEL3_BUDGETS", default_value = "150,75,60")]
    pub level3_budgets: String,

    /// Level 4 budgets per tick for priorities 1,2,3 (per second the defaults fall with every
    /// level; level 4 still passes 100 msg/s of a live room's mix).
    #[arg(long, env = "ROOMCAST_LEVEL4_BUDGETS", default_value = "200,100,100")]
    pub level4_budgets: String,

    /// Lowering margin: a level falls only once the count is below threshold × (1 − this).
    #[arg(long, env = "ROOMCAST_LEVEL_HYSTERESIS", default_value_t = 0.1)]
    pub level_hysteresis: f64,

    /// How long the count must stay below the margin before a level falls (doubles for a room
    /// whose level flaps).
    #[arg(long, env = "ROOMCAST_LEVEL_DWELL_MS", default_value_t = 10_000)]
    pub level_dwell_ms: u64,

    /// Cap of the backed-off dwell of a flapping room.
    #[arg(long, env = "ROOMCAST_LEVEL_MAX_DWELL_MS", default_value_t = 300_000)]
    pub level_max_dwell_ms: u64,

    /// How often a room's online count (connections and distinct users over every edge) is
    /// pushed to its members at levels 1,2,3,4, in milliseconds: at most once per interval, and
    /// only when it changed since the last push. 0 turns the push off for that level; otherwise
    /// at least 100.
    #[arg(
        long,
        env = "ROOMCAST_ONLINE_INTERVAL_MS",
        default_value = "1000,2000,3000,5000"
    )]
    pub online_interval_ms: String,

    /// Publishes that arrive this soon after start are held (not refused) until it has passed,
    /// so edges that were linked to a previous instance can re-register first: a message
    /// accepted after a restart then reaches every viewer whose join was already answered.
    /// Edges re-dial at least once a second. 0 = publish at once.
    #[arg(long, env = "ROOMCAST_STARTUP_GRACE_MS", default_value_t = 2_000)]
    pub startup_grace_ms: u64,

    /// An edge without a load report for this long is dropped from routing and dispatch (edges
    /// report every second).
    #[arg(long, env = "ROOMCAST_EDGE_REPORT_TIMEOUT_MS", default_value_t = 3_000)]
    pub edge_report_timeout_ms: u64,

    /// An edge whose highest capacity ratio (connections, fds, egress, memory, cpu; from its
    /// load reports) is above this is no longer handed out by the dispatcher.
    #[arg(long, env = "ROOMCAST_DISPATCH_WATERMARK", default_value_t = 0.85)]
    pub dispatch_watermark: f64,

    /// Bytes queued to one edge's link beyond which its publishes are dropped (and counted);
    /// publishers wait while any edge is above an eighth of it.
    #[arg(long, env = "ROOMCAST_EDGE_LINK_BACKLOG_BYTES", default_value_t = 64 << 20)]
    pub edge_link_backlog_bytes: usize,

    /// How long GET /v1/users/{user} waits for the edges' answers.
    #[arg(long, env = "ROOMCAST_USER_QUERY_TIMEOUT_MS", default_value_t = 1_000)]
    pub user_query_timeout_ms: u64,

    /// Largest accepted request body, in bytes (413 beyond).
    #[arg(long, env = "ROOMCAST_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,

    /// Most messages one POST /v1/messages may carry.
    #[arg(long, env = "ROOMCAST_MAX_BATCH_MESSAGES", default_value_t = 10_000)]
    pub max_batch_messages: usize,

    /// History kept per channel at rate levels 1,2,3,4, as MESSAGES:AGE_S:LOWEST_PRIORITY each:
    /// a channel keeps at most MESSAGES messages, none older than AGE_S seconds, and only
    /// priorities 0..=LOWEST_PRIORITY (3 keeps chat, 2 does not: a message below it takes its seq
    /// but only a "not stored" mark, so a recovery over it answers not_stored). Users and
    /// broadcast use level 1's.
    #[arg(
        long,
        env = "ROOMCAST_HISTORY_LEVELS",
        default_value = "300:300:3,500:300:3,1000:180:3,1000:120:2"
    )]
    pub history_levels: String,

    /// Most bytes of history one channel keeps (kind + data + 48 bytes of bookkeeping per
    /// message); the oldest go first.
    #[arg(long, env = "ROOMCAST_HISTORY_CHANNEL_MAX_BYTES", default_value_t = 1 << 20)]
    pub history_channel_max_bytes: usize,

    /// Most bytes of history all channels keep together (counted as for
    /// --history-channel-max-bytes); beyond it the oldest message of any channel goes first.
    /// 0 keeps no message: history off (epochs, positions and dedupe still work; every recovery
    /// that misses a message answers too_old).
    #[arg(long, env = "ROOMCAST_HISTORY_MAX_BYTES", default_value_t = 256 << 20)]
    pub history_max_bytes: usize,

    /// A channel's epoch and last seq are kept at least this long (seconds) after it was last
    /// published to or asked for its position, even once its messages have expired; after that
    /// it is forgotten and comes back with a new epoch.
    #[arg(long, env = "ROOMCAST_HISTORY_META_TTL_S", default_value_t = 86_400)]
    pub history_meta_ttl_s: u64,

    /// Most channels whose epoch is tracked (~250 bytes each); beyond it the channel with no
    /// stored message idle longest is forgotten early (a client resuming it is told
    /// epoch_changed).
    #[arg(
        long,
        env = "ROOMCAST_HISTORY_MAX_CHANNELS",
        default_value_t = 1_000_000
    )]
    pub history_max_channels: usize,

    /// A publish carrying an "id" already published on the same channel within this many
    /// seconds is not published again: it answers the first publish's seq with
    /// "duplicate":true. 0 turns dedupe off.
    #[arg(long, env = "ROOMCAST_DEDUPE_WINDOW_S", default_value_t = 300)]
    pub dedupe_window_s: u64,

    /// Most publish ids remembered for dedupe (~70 bytes each); beyond it the oldest is
    /// forgotten first, even inside the window.
    #[arg(long, env = "ROOMCAST_DEDUPE_MAX_IDS", default_value_t = 1_000_000)]
    pub dedupe_max_ids: usize,

    /// A client resuming a channel that missed more messages than this is told too_many and
    /// reloads instead.
    #[arg(long, env = "ROOMCAST_RECOVER_MAX_MESSAGES", default_value_t = 300)]
    pub recover_max_messages: usize,

    /// A client resuming a channel whose missed messages (kind + data) exceed this many bytes
    /// is told too_many and reloads instead.
    #[arg(long, env = "ROOMCAST_RECOVER_MAX_BYTES", default_value_t = 256 << 10)]
    pub recover_max_bytes: usize,

    /// Most bytes of message data waiting in merge windows (messages with a "merge" rule,
    /// PROTOCOL.md §5); at the cap a new message with a rule is published at once, unmerged,
    /// after its key's waiting one (counted in roomcast_control_merge_bypassed_total).
    #[arg(long, env = "ROOMCAST_MERGE_MAX_BYTES", default_value_t = 64 << 20)]
    pub merge_max_bytes: usize,

    /// What viewers' `send`s (danmaku, PROTOCOL.md §5 "Upstream") become: `direct` publishes
    /// each into its room at priority 3 with the sender's id (`from`); `proxy` asks the
    /// platform's backend at --send-proxy-url first; `off` refuses them (`forbidden`). Default:
    /// `proxy` when --send-proxy-url is set, else `direct`.
    #[arg(long, env = "ROOMCAST_SEND_MODE", value_enum)]
    pub send_mode: Option<SendMode>,

    /// The platform's backend that decides each send (an `http://` URL; POST, JSON): it
    /// answers publish (optionally replacing data, priority or kind), accept, reject or
    /// disconnect (control/README.md "Upstream and receipts").
    #[arg(long, env = "ROOMCAST_SEND_PROXY_URL", default_value = "")]
    pub send_proxy_url: String,

    /// How long a send may wait for the backend's answer (queueing included); past it the
    /// client is answered `unavailable`. At most 4000: edges give up on a send after their
    /// --join-confirm-timeout-ms (5 s).
    #[arg(long, env = "ROOMCAST_SEND_PROXY_TIMEOUT_MS", default_value_t = 1_000)]
    pub send_proxy_timeout_ms: u64,

    /// Requests to the backend in flight at once (over pooled keep-alive connections).
    #[arg(long, env = "ROOMCAST_SEND_PROXY_CONCURRENCY", default_value_t = 256)]
    pub send_proxy_concurrency: usize,

    /// Sends that may wait for a free request slot; beyond it a send is answered `unavailable`
    /// at once (never an unbounded pile-up).
    #[arg(long, env = "ROOMCAST_SEND_PROXY_QUEUE", default_value_t = 4_096)]
    pub send_proxy_queue: usize,

    /// Most sends per request to the backend (1–1000). 1: one send per request, as the
    /// contract shows. Above 1 every request is a batch, `{"sends":[…]}` answered
    /// `{"results":[…]}` in order, holding whatever waits when a request slot frees (one send
    /// under light load: batching adds no wait).
    #[arg(long, env = "ROOMCAST_SEND_PROXY_BATCH", default_value_t = 1)]
    pub send_proxy_batch: usize,

    /// Sends broadcast per room within any one tick (a sliding window) at levels 1,2,3,4 (a
    /// number or `unlimited`); past it a send is still passed to the platform but not
    /// published (reply "broadcast":false), so a big room cannot be flooded by its own viewers.
    #[arg(
        long,
        env = "ROOMCAST_SEND_BUDGETS",
        default_value = "unlimited,25,25,30"
    )]
    pub send_budgets: String,

    /// Where viewers' receipts (`ack`s of messages published with "ack":true) are POSTed, as a
    /// JSON list of {user, msg_seq, edge, at_ms}, at most one request per 100 ms; empty = not
    /// reported (GET /v1/users/{user}/messages/{seq} still answers).
    #[arg(long, env = "ROOMCAST_RECEIPT_URL", default_value = "")]
    pub receipt_url: String,

    /// Receipts remembered for GET /v1/users/{user}/messages/{seq} (the oldest are forgotten
    /// first), and the most waiting to be POSTed to --receipt-url (more are dropped and
    /// counted).
    #[arg(long, env = "ROOMCAST_RECEIPTS_KEPT", default_value_t = 100_000)]
    pub receipts_kept: usize,
}

impl Default for ControlConfig {
    fn default() -> Self {
        // Defaults only: neither the process's arguments nor its environment.
        let command = <ControlConfig as clap::CommandFactory>::command();
        let matches = command
            .mut_args(|arg| arg.env(None::<&str>))
            .get_matches_from(["roomcast-control"]);
        <ControlConfig as clap::FromArgMatches>::from_arg_matches(&matches).expect("defaults parse")
    }
}

/// The parsed rate-level table: policy for the level state machine plus what each level means
/// to an edge and to the history. The history's global settings ride along, so that the router
/// is built from this one value.
#[derive(Debug, Clone, PartialEq)]
pub struct Levels {
    pub policy: LevelPolicy,
    /// Tick of levels 1..=4, in milliseconds.
    pub ticks_ms: [u32; LEVELS],
    /// Budgets per tick of levels 1..=4 for priorities 0..=3 (priority 0 always unlimited).
    pub budgets: [[u32; PRIORITIES]; LEVELS],
    /// Online-count push interval of levels 1..=4, in milliseconds (0 = no push).
    pub online_intervals_ms: [u32; LEVELS],
    /// History bounds per level, and the store's, dedupe's and recovery's settings.
    pub history: HistoryConfig,
    /// Most bytes of data waiting in merge windows.
    pub merge_max_bytes: usize,
    /// Sends broadcast per room per tick at levels 1..=4 ([`UNLIMITED`] = no budget).
    pub send_budgets: [u32; LEVELS],
}

impl Default for Levels {
    fn default() -> Self {
        ControlConfig::default()
            .levels()
            .expect("default levels parse")
    }
}

impl Levels {
    /// The tick of `level` (1..=4) in milliseconds.
    pub fn tick_ms(&self, level: u8) -> u32 {
        self.ticks_ms[level_index(level)]
    }

    /// Whether level 1's pacing is what an edge applies to a room it was told nothing about
    /// (roomcast-edge's default `--tick-ms` 100 and no budgets): only then can a room that never
    /// left level 1 go untold.
    pub fn level1_is_edge_default(&self) -> bool {
        self.ticks_ms[0] == EDGE_DEFAULT_TICK_MS && self.budgets[0].iter().all(|&b| b == UNLIMITED)
    }

    /// Sends a room at `level` broadcasts per tick.
    pub fn send_budget(&self, level: u8) -> u32 {
        self.send_budgets[level_index(level)]
    }

    /// How often a room at `level` may have its online count pushed; None when it is not pushed.
    pub fn online_interval(&self, level: u8) -> Option<Duration> {
        match self.online_intervals_ms[level_index(level)] {
            0 => None,
            ms => Some(Duration::from_millis(u64::from(ms))),
        }
    }

    /// The link frame that sets `room` to `level` on an edge.
    pub fn set_level(&self, room: &str, level: u8) -> SetLevel {
        SetLevel {
            room: room.to_owned(),
            level,
            tick_ms: self.tick_ms(level),
            budgets: self.budgets[level_index(level)],
        }
    }
}

fn level_index(level: u8) -> usize {
    usize::from(level.clamp(1, LEVELS as u8) - 1)
}

impl ControlConfig {
    /// Parses the command line (and environment), fills every option left at its default from the
    /// `--config` file, and validates the result.
    pub fn load_from<I, T>(args: I) -> Result<ControlConfig, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let config: ControlConfig = load_layered(args, |c: &ControlConfig| c.config.clone())?;
        config.validate()?;
        let command = <ControlConfig as clap::CommandFactory>::command();
        for advice in unknown_env_advice(&unknown_env_vars(&command), !config.no_embedded_edge) {
            tracing::warn!("{advice}");
        }
        Ok(config)
    }

    /// Checks values that would make the control plane misbehave.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.api_key.is_empty() {
            return bad("--api-key must not be empty");
        }
        if self.jwt_secret.is_empty() {
            return bad("--jwt-secret must not be empty");
        }
        if self.edge_report_timeout_ms == 0 {
            return bad("--edge-report-timeout-ms must be positive");
        }
        if !(self.dispatch_watermark > 0.0 && self.dispatch_watermark <= 60.0) {
            return bad("--dispatch-watermark must be above 0 (1.0 = at capacity)");
        }
        if self.user_query_timeout_ms == 0 {
            return bad("--user-query-timeout-ms must be positive");
        }
        if self.max_body_bytes < 1024 {
            return bad("--max-body-bytes must be at least 1024");
        }
        if self.max_batch_messages == 0 {
            return bad("--max-batch-messages must be positive");
        }
        if self.edge_link_backlog_bytes < 1 << 20 {
            return bad("--edge-link-backlog-bytes must be at least 1 MiB");
        }
        if self.edge_workers > 64 {
            return bad("--edge-workers must be at most 64");
        }
        match (self.send_mode(), self.send_proxy_url.is_empty()) {
            (SendMode::Proxy, true) => return bad("--send-mode proxy needs --send-proxy-url"),
            (SendMode::Proxy, false) if !self.send_proxy_url.starts_with("http://") => {
                return bad("--send-proxy-url must be an http:// URL")
            }
            _ => {}
        }
        if !self.receipt_url.is_empty() && !self.receipt_url.starts_with("http://") {
            return bad("--receipt-url must be an http:// URL");
        }
        if self.send_proxy_timeout_ms == 0 || self.send_proxy_concurrency == 0 {
            return bad("--send-proxy-timeout-ms and --send-proxy-concurrency must be positive");
        }
        if !(1..=MAX_SEND_PROXY_BATCH).contains(&self.send_proxy_batch) {
            return bad("--send-proxy-batch must be 1 to 1000");
        }
        if self.send_proxy_timeout_ms > MAX_SEND_PROXY_TIMEOUT_MS {
            return bad(
                "--send-proxy-timeout-ms must be at most 4000: an edge answers a send it has no \
                 result for after its --join-confirm-timeout-ms (5 s), and a later publish would \
                 surprise a client that was told `unavailable`",
            );
        }
        if self.receipts_kept == 0 {
            return bad("--receipts-kept must be positive");
        }
        self.levels()?;
        Ok(())
    }

    /// `--send-mode`, or its default: proxy when a proxy URL is set, else direct.
    pub fn send_mode(&self) -> SendMode {
        self.send_mode.unwrap_or(if self.send_proxy_url.is_empty() {
            SendMode::Direct
        } else {
            SendMode::Proxy
        })
    }

    /// Parses the level options into the table the router uses.
    pub fn levels(&self) -> Result<Levels, ConfigError> {
        let invalid = |m: String| ConfigError::Invalid(m);
        let thresholds: [u32; 3] = parse_list(&self.level_thresholds, "--level-thresholds", |s| {
            s.parse::<u32>().ok()
        })?;
        if thresholds[0] == 0 || !thresholds.windows(2).all(|w| w[0] < w[1]) {
            return Err(invalid(
                "--level-thresholds must be three increasing positive counts".into(),
            ));
        }
        let ticks_ms: [u32; LEVELS] = parse_list(&self.level_ticks_ms, "--level-ticks-ms", |s| {
            s.parse::<u32>().ok()
        })?;
        let mut budgets = [[UNLIMITED; PRIORITIES]; LEVELS];
        let sources = [
            (&self.level1_budgets, "--level1-budgets"),
            (&self.level2_budgets, "--level2-budgets"),
            (&self.level3_budgets, "--level3-budgets"),
            (&self.level4_budgets, "--level4-budgets"),
        ];
        for (level, (text, flag)) in sources.into_iter().enumerate() {
            let per_priority: [u32; PRIORITIES - 1] = parse_list(text, flag, parse_budget)?;
            // Priority 0 (system messages) is never limited.
            budgets[level][1..].copy_from_slice(&per_priority);
        }
        let online_intervals_ms: [u32; LEVELS] =
            parse_list(&self.online_interval_ms, "--online-interval-ms", |s| {
                s.parse::<u32>().ok().filter(|&ms| ms == 0 || ms >= 100)
            })
            .map_err(|e| match e {
                ConfigError::Invalid(m) => ConfigError::Invalid(format!(
                    "{m}: each level's interval is 0 (no push) or at least 100 ms"
                )),
                other => other,
            })?;
        if !(0.0..1.0).contains(&self.level_hysteresis) {
            return Err(invalid("--level-hysteresis must be in [0, 1)".into()));
        }
        if self.level_max_dwell_ms < self.level_dwell_ms {
            return Err(invalid(
                "--level-max-dwell-ms must be >= --level-dwell-ms".into(),
            ));
        }
        Ok(Levels {
            policy: LevelPolicy {
                thresholds,
                hysteresis: self.level_hysteresis,
                dwell: Duration::from_millis(self.level_dwell_ms),
                max_dwell: Duration::from_millis(self.level_max_dwell_ms),
            },
            ticks_ms,
            budgets,
            online_intervals_ms,
            history: self.history()?,
            merge_max_bytes: self.merge_max_bytes,
            send_budgets: parse_list(&self.send_budgets, "--send-budgets", parse_budget)?,
        })
    }

    /// Parses the history, dedupe and recovery options.
    pub fn history(&self) -> Result<HistoryConfig, ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let levels: [LevelHistory; LEVELS] = parse_list(
            &self.history_levels,
            "--history-levels",
            parse_level_history,
        )
        .map_err(|e| match e {
            ConfigError::Invalid(m) => ConfigError::Invalid(format!(
                "{m}: each level is MESSAGES:AGE_S:LOWEST_PRIORITY, MESSAGES and AGE_S \
                         positive, LOWEST_PRIORITY 0-3 (e.g. 300:300:3)"
            )),
            other => other,
        })?;
        if self.history_channel_max_bytes > 1 << 30 {
            return invalid(
                "--history-channel-max-bytes must be at most 1073741824 (1 GiB)".into(),
            );
        }
        if self.history_meta_ttl_s == 0 {
            return invalid("--history-meta-ttl-s must be positive".into());
        }
        if self.history_max_channels == 0 {
            return invalid("--history-max-channels must be positive".into());
        }
        if self.recover_max_messages == 0 {
            return invalid("--recover-max-messages must be positive".into());
        }
        Ok(HistoryConfig {
            levels,
            channel_max_bytes: self.history_channel_max_bytes,
            max_bytes: self.history_max_bytes,
            meta_ttl: Duration::from_secs(self.history_meta_ttl_s),
            max_channels: self.history_max_channels,
            dedupe_window: Duration::from_secs(self.dedupe_window_s),
            dedupe_max_ids: self.dedupe_max_ids,
            recover_max_messages: self.recover_max_messages,
            recover_max_bytes: self.recover_max_bytes,
        })
    }

    /// True when the API key is the built-in development key.
    pub fn uses_dev_api_key(&self) -> bool {
        self.api_key == DEV_API_KEY
    }

    /// Whether `/demo/` is served: development mode and `--demo` on.
    pub fn serves_demo(&self) -> bool {
        self.demo && self.uses_dev_api_key()
    }

    pub fn startup_grace(&self) -> Duration {
        Duration::from_millis(self.startup_grace_ms)
    }

    pub fn edge_report_timeout(&self) -> Duration {
        Duration::from_millis(self.edge_report_timeout_ms)
    }

    pub fn user_query_timeout(&self) -> Duration {
        Duration::from_millis(self.user_query_timeout_ms)
    }

    /// The address the embedded edge dials for the link: the link's bound address, with an
    /// unspecified IP replaced by loopback.
    pub fn link_dial_addr(bound: SocketAddr) -> SocketAddr {
        let ip = match bound.ip() {
            ip if !ip.is_unspecified() => ip,
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        };
        SocketAddr::new(ip, bound.port())
    }

    /// The embedded edge's configuration: engine defaults (and `ROOMCAST_*` variables only the
    /// edge knows, such as `ROOMCAST_QUEUE_SOFT_BYTES`) with listeners, workers, driver, capacity
    /// and secret from here, the level-1 tick as its default tick, and the link pointed at this
    /// process. The edge options set here are [`EMBEDDED_EDGE_OPTIONS_SET_HERE`].
    pub fn embedded_edge(&self, link: SocketAddr) -> EdgeConfig {
        EdgeConfig {
            config: None,
            control: Self::link_dial_addr(link).to_string(),
            jwt_secret: self.jwt_secret.clone(),
            ws_listen: self.edge_ws_listen,
            tcp_listen: self.edge_tcp_listen,
            admin_listen: self.edge_admin_listen,
            workers: self.edge_workers,
            io: self.edge_io,
            advertise_host: self.edge_advertise_host.clone(),
            max_connections: self.edge_max_connections,
            tick_ms: self.levels().map_or(100, |l| l.tick_ms(1)),
            ..EdgeConfig::default()
        }
    }
}

/// The `roomcast-edge` options (their argument ids) that [`ControlConfig::embedded_edge`] sets
/// from this process's own options, with what to set here instead of the edge's `ROOMCAST_*`
/// variable, which the embedded edge does not read. Every other edge option the embedded edge
/// reads from its own variable (`ROOMCAST_QUEUE_SOFT_BYTES`, ...). `ROOMCAST_CONFIG` and
/// `ROOMCAST_JWT_SECRET` have the same names here and are this process's.
pub const EMBEDDED_EDGE_OPTIONS_SET_HERE: &[(&str, &str)] = &[
    (
        "control",
        "nothing: the embedded edge dials this process's own link (--link-listen)",
    ),
    ("ws_listen", "--edge-ws-listen (ROOMCAST_EDGE_WS_LISTEN)"),
    ("tcp_listen", "--edge-tcp-listen (ROOMCAST_EDGE_TCP_LISTEN)"),
    (
        "admin_listen",
        "--edge-admin-listen (ROOMCAST_EDGE_ADMIN_LISTEN)",
    ),
    ("workers", "--edge-workers (ROOMCAST_EDGE_WORKERS)"),
    ("io", "--edge-io (ROOMCAST_EDGE_IO)"),
    (
        "advertise_host",
        "--edge-advertise-host (ROOMCAST_EDGE_ADVERTISE_HOST)",
    ),
    (
        "max_connections",
        "--edge-max-connections (ROOMCAST_EDGE_MAX_CONNECTIONS)",
    ),
    (
        "tick_ms",
        "--level-ticks-ms (ROOMCAST_LEVEL_TICKS_MS): a room's merge window is its level's tick, \
         and rooms start at level 1, so the first value is the default window (for example \
         ROOMCAST_LEVEL_TICKS_MS=50,250,500,1000)",
    ),
    ("jwt_secret", "--jwt-secret (ROOMCAST_JWT_SECRET)"),
];

/// One warning per `ROOMCAST_*` variable that no option of the control plane reads (`unknown`),
/// naming it and saying what to set instead. A `roomcast-edge` variable that the embedded edge
/// reads is not warned about while the edge runs (`embedded`).
fn unknown_env_advice(unknown: &[String], embedded: bool) -> Vec<String> {
    let edge = <EdgeConfig as clap::CommandFactory>::command();
    let edge_arg = |var: &str| {
        edge.get_arguments()
            .find(|arg| arg.get_env().is_some_and(|env| env == var))
            .map(|arg| arg.get_id().as_str().to_owned())
    };
    unknown
        .iter()
        .filter_map(|name| {
            let Some(id) = edge_arg(name) else {
                return Some(format!(
                    "roomcast-control ignores the environment variable {name}: none of its \
                     options reads it (roomcast-control --help lists them)"
                ));
            };
            let set_here = EMBEDDED_EDGE_OPTIONS_SET_HERE
                .iter()
                .find(|(edge_id, _)| *edge_id == id)
                .map(|(_, instead)| *instead);
            match (set_here, embedded) {
                (Some(instead), _) => Some(format!(
                    "roomcast-control ignores the environment variable {name}: it is a \
                     roomcast-edge option, and the embedded edge takes it from \
                     roomcast-control's own options; set {instead}"
                )),
                // The embedded edge reads it.
                (None, true) => None,
                (None, false) => Some(format!(
                    "roomcast-control ignores the environment variable {name}: it is a \
                     roomcast-edge option, and --no-embedded-edge runs no edge here"
                )),
            }
        })
        .collect()
}

/// Parses exactly `N` comma-separated values.
fn parse_list<T: Copy + Default, const N: usize>(
    text: &str,
    flag: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<[T; N], ConfigError> {
    let mut out = [T::default(); N];
    let mut count = 0;
    for item in text.split(',') {
        let value = parse(item.trim()).ok_or_else(|| {
            ConfigError::Invalid(format!("{flag}: cannot read {:?} in {text:?}", item.trim()))
        })?;
        if count < N {
            out[count] = value;
        }
        count += 1;
    }
    if count != N {
        return Err(ConfigError::Invalid(format!(
            "{flag} needs {N} comma-separated values, got {count} in {text:?}"
        )));
    }
    Ok(out)
}

/// One level of `--history-levels`: `MESSAGES:AGE_S:LOWEST_PRIORITY`, each part positive (the
/// priority 0..=3).
fn parse_level_history(s: &str) -> Option<LevelHistory> {
    let mut parts = s.split(':').map(str::trim);
    let max_messages = parts.next()?.parse::<usize>().ok().filter(|&n| n > 0)?;
    let age_s = parts.next()?.parse::<u64>().ok().filter(|&n| n > 0)?;
    let lowest_priority = parts.next()?.parse::<u8>().ok().filter(|&p| p <= 3)?;
    if parts.next().is_some() {
        return None;
    }
    Some(LevelHistory {
        max_messages,
        max_age: Duration::from_secs(age_s),
        lowest_priority,
    })
}

fn parse_budget(s: &str) -> Option<u32> {
    if s.eq_ignore_ascii_case("unlimited") {
        Some(UNLIMITED)
    } else {
        s.parse::<u32>().ok().filter(|&n| n != UNLIMITED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_ports_and_levels() {
        let c = ControlConfig::default();
        c.validate().unwrap();
        assert_eq!(c.api_listen.port(), 9090);
        assert_eq!(c.link_listen.port(), 9091);
        assert_eq!(c.edge_ws_listen.port(), 8080);
        assert_eq!(c.edge_tcp_listen.port(), 8081);
        assert!(c.tokens_enabled);
        assert!(!c.no_embedded_edge);
        assert!(c.uses_dev_api_key());
        let levels = c.levels().unwrap();
        assert_eq!(levels.policy.thresholds, [1_000, 10_000, 50_000]);
        assert_eq!(levels.ticks_ms, [100, 250, 500, 1_000]);
        assert_eq!(levels.budgets[0], [UNLIMITED; 4]);
        assert_eq!(levels.budgets[1], [UNLIMITED, 200, 100, 50]);
        assert_eq!(levels.budgets[2], [UNLIMITED, 150, 75, 60]);
        assert_eq!(levels.budgets[3], [UNLIMITED, 200, 100, 100]);
        assert_eq!(levels.policy.dwell, Duration::from_secs(10));
        assert_eq!(levels.policy.max_dwell, Duration::from_secs(300));
        assert_eq!(levels.online_intervals_ms, [1_000, 2_000, 3_000, 5_000]);
        assert_eq!(levels.online_interval(1), Some(Duration::from_secs(1)));
        assert_eq!(levels.online_interval(4), Some(Duration::from_secs(5)));
    }

    #[test]
    fn online_intervals_are_per_level_and_zero_turns_a_level_off() {
        let c = ControlConfig::load_from([
            "roomcast-control",
            "--online-interval-ms",
            "200, 0, 3000, 100",
        ])
        .unwrap();
        let levels = c.levels().unwrap();
        assert_eq!(levels.online_interval(1), Some(Duration::from_millis(200)));
        assert_eq!(levels.online_interval(2), None);
        assert_eq!(levels.online_interval(4), Some(Duration::from_millis(100)));
        for bad in ["1000,2000,3000", "1000,2000,3000,50", "1000,x,3000,5000"] {
            let c = ControlConfig {
                online_interval_ms: bad.into(),
                ..ControlConfig::default()
            };
            let error = c.validate().unwrap_err().to_string();
            assert!(error.contains("--online-interval-ms"), "{bad}: {error}");
        }
    }

    #[test]
    fn set_level_frames_carry_the_level_tick_and_budgets() {
        let levels = Levels::default();
        let frame = levels.set_level("r1", 3);
        assert_eq!(frame.room, "r1");
        assert_eq!(frame.level, 3);
        assert_eq!(frame.tick_ms, 500);
        assert_eq!(frame.budgets, [UNLIMITED, 150, 75, 60]);
    }

    #[test]
    fn rejects_bad_level_lists() {
        for (field, value) in [
            ("thresholds", "1000,10000"),
            ("thresholds", "1000,500,50000"),
            ("thresholds", "0,10,20"),
            ("ticks", "100,250,500"),
            ("ticks", "100,x,500,1000"),
            ("budgets", "1,2"),
            ("budgets", "1,2,lots"),
        ] {
            let mut c = ControlConfig::default();
            match field {
                "thresholds" => c.level_thresholds = value.into(),
                "ticks" => c.level_ticks_ms = value.into(),
                _ => c.level2_budgets = value.into(),
            }
            assert!(c.validate().is_err(), "{field} = {value:?} accepted");
        }
    }

    #[test]
    fn history_defaults_and_flags() {
        let h = ControlConfig::default().history().unwrap();
        let level = |n: usize, age_s: u64, p: u8| LevelHistory {
            max_messages: n,
            max_age: Duration::from_secs(age_s),
            lowest_priority: p,
        };
        assert_eq!(
            h.levels,
            [
                level(300, 300, 3),
                level(500, 300, 3),
                level(1000, 180, 3),
                level(1000, 120, 2)
            ]
        );
        assert_eq!(h.channel_max_bytes, 1 << 20);
        assert_eq!(h.max_bytes, 256 << 20);
        assert_eq!(h.meta_ttl, Duration::from_secs(86_400));
        assert_eq!(h.dedupe_window, Duration::from_secs(300));
        assert_eq!(h.dedupe_max_ids, 1_000_000);
        assert_eq!(
            (h.recover_max_messages, h.recover_max_bytes),
            (300, 256 << 10)
        );
        assert_eq!(Levels::default().history, h);

        let c = ControlConfig::load_from([
            "roomcast-control",
            "--history-levels",
            "10:60:3, 20:60:3, 30:30:1, 40:10:0",
            "--history-max-bytes",
            "0",
            "--dedupe-window-s",
            "0",
        ])
        .unwrap();
        let h = c.history().unwrap();
        assert_eq!(h.levels[3], level(40, 10, 0));
        assert_eq!(h.max_bytes, 0, "history off is allowed");
        assert_eq!(h.dedupe_window, Duration::ZERO);
    }

    #[test]
    fn rejects_bad_history_options() {
        for levels in [
            "300:300:3,500:300:3,1000:180:3",
            "300:300:3,500:300:3,1000:180:3,1000:120:4",
            "300:300:3,500:300:3,1000:180:3,0:120:2",
            "300:300:3,500:300:3,1000:180:3,1000:0:2",
            "300:300:3,500:300:3,1000:180:3,1000:120",
            "300:300:3,500:300:3,1000:180:3,1000:120:2:1",
        ] {
            let c = ControlConfig {
                history_levels: levels.into(),
                ..ControlConfig::default()
            };
            let error = c.validate().unwrap_err().to_string();
            assert!(error.contains("--history-levels"), "{levels}: {error}");
        }
        let zero = |flag: &str| {
            let mut c = ControlConfig::default();
            match flag {
                "--history-meta-ttl-s" => c.history_meta_ttl_s = 0,
                "--history-max-channels" => c.history_max_channels = 0,
                _ => c.recover_max_messages = 0,
            }
            c
        };
        for flag in [
            "--history-meta-ttl-s",
            "--history-max-channels",
            "--recover-max-messages",
        ] {
            let error = zero(flag).validate().unwrap_err().to_string();
            assert!(error.contains(flag), "{error}");
        }
    }

    #[test]
    fn file_fills_defaults_but_flags_win() {
        let dir = std::env::temp_dir().join(format!("roomcast-control-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("control.toml");
        std::fs::write(
            &path,
            "api_key = \"from-file\"\nlevel_dwell_ms = 20000\nlevel3_budgets = \"7,8,9\"\n",
        )
        .unwrap();
        let c = ControlConfig::load_from([
            "roomcast-control",
            "--config",
            path.to_str().unwrap(),
            "--level-dwell-ms",
            "30000",
        ])
        .unwrap();
        assert_eq!(c.api_key, "from-file");
        assert_eq!(c.level_dwell_ms, 30_000, "flag wins over file");
        assert_eq!(c.levels().unwrap().budgets[2], [UNLIMITED, 7, 8, 9]);
    }

    #[test]
    fn edge_variables_are_read_by_the_embedded_edge_or_named_with_what_to_set() {
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let advice = unknown_env_advice(
            &names(&[
                "ROOMCAST_TICK_MS",
                "ROOMCAST_WORKERS",
                "ROOMCAST_QUEUE_SOFT_BYTES",
                "ROOMCAST_NO_SUCH_OPTION",
            ]),
            true,
        );
        assert_eq!(advice.len(), 3, "{advice:#?}");
        assert!(
            advice[0].contains("ROOMCAST_TICK_MS") && advice[0].contains("--level-ticks-ms"),
            "{}",
            advice[0]
        );
        assert!(
            advice[1].contains("ROOMCAST_WORKERS") && advice[1].contains("--edge-workers"),
            "{}",
            advice[1]
        );
        assert!(
            advice[2].contains("ROOMCAST_NO_SUCH_OPTION") && advice[2].contains("none of its"),
            "{}",
            advice[2]
        );
        // Without the embedded edge nothing reads the edge's variables.
        let alone = unknown_env_advice(&names(&["ROOMCAST_QUEUE_SOFT_BYTES"]), false);
        assert!(alone[0].contains("--no-embedded-edge"), "{}", alone[0]);
    }

    #[test]
    fn the_options_set_here_are_exactly_the_ones_the_embedded_edge_overrides() {
        // Every control option that feeds the edge differs from the edge's default, so the
        // fields embedded_edge() changes are the ones it sets.
        let c = ControlConfig {
            jwt_secret: "other-secret".into(),
            edge_ws_listen: "127.0.0.1:1".parse().unwrap(),
            edge_tcp_listen: "127.0.0.1:2".parse().unwrap(),
            edge_admin_listen: "127.0.0.1:3".parse().unwrap(),
            edge_workers: 3,
            edge_io: DriverKind::Epoll,
            edge_advertise_host: "edge.example".into(),
            edge_max_connections: 7,
            level_ticks_ms: "55,250,500,1000".into(),
            ..ControlConfig::default()
        };
        let defaults = serde_json::to_value(EdgeConfig::default()).unwrap();
        let embedded =
            serde_json::to_value(c.embedded_edge("127.0.0.1:9".parse().unwrap())).unwrap();
        let (defaults, embedded) = (defaults.as_object().unwrap(), embedded.as_object().unwrap());
        let mut changed: Vec<&str> = embedded
            .iter()
            .filter(|(key, value)| defaults.get(*key) != Some(*value))
            .map(|(key, _)| key.as_str())
            .collect();
        changed.sort();
        let mut listed: Vec<&str> = EMBEDDED_EDGE_OPTIONS_SET_HERE
            .iter()
            .map(|(id, _)| *id)
            .collect();
        listed.sort();
        assert_eq!(changed, listed);
        // Each listed id is an edge option with a variable of its own.
        let edge = <EdgeConfig as clap::CommandFactory>::command();
        for id in listed {
            assert!(
                edge.get_arguments()
                    .any(|arg| arg.get_id() == id && arg.get_env().is_some()),
                "{id}"
            );
        }
        assert_eq!(
            c.embedded_edge("127.0.0.1:9".parse().unwrap()).tick_ms,
            55,
            "the level-1 tick is the default window"
        );
    }

    #[test]
    fn embedded_edge_dials_loopback_and_shares_the_secret() {
        let c = ControlConfig {
            jwt_secret: "s3cret".into(),
            ..ControlConfig::default()
        };
        let edge = c.embedded_edge("0.0.0.0:9091".parse().unwrap());
        assert_eq!(edge.control, "127.0.0.1:9091");
        assert_eq!(edge.jwt_secret, "s3cret");
        assert_eq!(edge.ws_listen.port(), 8080);
        assert_eq!(edge.tick_ms, 100);
    }
}
