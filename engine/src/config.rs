//! Edge configuration: one struct, three sources. A flag wins over its `ROOMCAST_*` environment
//! variable, which wins over the TOML file given with `--config`, which wins over the default.
//! The TOML keys are the flag names with `_` for `-` (`tick_ms = 250`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, Parser};
pub use roomcast_ops::config::ConfigError;
use roomcast_ops::config::{load_layered, unknown_env_vars};
use serde::{Deserialize, Serialize};

use roomcast_proto::auth::DEV_JWT_SECRET;

use crate::sys::DriverKind;

#[derive(Debug, Clone, Parser, Serialize, Deserialize)]
#[command(
    name = "roomcast-edge",
    version,
    about = "roomcast edge: holds viewers' WebSocket/TCP connections and fans out room batches",
    long_about = "roomcast edge: holds viewers' WebSocket and raw TCP connections on one pinned \
                  worker per core and fans out each room's merged batch, encoded once, to every \
                  member. It dials the control plane's link address to receive publishes.\n\n\
                  Every option can also be set as an environment variable ROOMCAST_<NAME> (for \
                  example ROOMCAST_TICK_MS=250) or as a key in the TOML file given with --config \
                  (tick_ms = 250). Flags win over the environment, which wins over the file. A \
                  ROOMCAST_* variable that no option reads is warned about at start (for example \
                  ROOMCAST_EDGE_WORKERS, which is roomcast-control's name for its embedded \
                  edge's --workers)."
)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    /// TOML file with any of these options (keys use `_`, e.g. `max_connections = 50000`).
    #[arg(long, env = "ROOMCAST_CONFIG")]
    pub config: Option<PathBuf>,

    /// This edge's id in the control plane (default: <hostname>-<pid>).
    #[arg(long, env = "ROOMCAST_EDGE_ID", default_value = "")]
    pub edge_id: String,

    /// Worker threads, one pinned per core (0 = every online core).
    #[arg(long, env = "ROOMCAST_WORKERS", default_value_t = 0)]
    pub workers: usize,

    /// The core worker 0 is pinned to; worker i goes to core (first-core + i) mod cores. Several
    /// edge processes on one host (each capped at its fd limit) should run fewer workers each
    /// and start on different cores, so their workers spread instead of piling onto core 0.
    #[arg(long, env = "ROOMCAST_FIRST_CORE", default_value_t = 0)]
    pub first_core: usize,

    /// I/O driver: io_uring when the kernel allows it (auto), or force one.
    #[arg(long, env = "ROOMCAST_IO", value_enum, default_value_t = DriverKind::Auto)]
    pub io: DriverKind,

    /// WebSocket listen address (path /ws). Port 0 picks a free port, shared by all workers.
    #[arg(long, env = "ROOMCAST_WS_LISTEN", default_value = "0.0.0.0:8080")]
    pub ws_listen: SocketAddr,

    /// Raw TCP listen address (length-prefixed binary frames).
    #[arg(long, env = "ROOMCAST_TCP_LISTEN", default_value = "0.0.0.0:8081")]
    pub tcp_listen: SocketAddr,

    /// Host or IP advertised to the control plane for clients to dial (default: the listen IP;
    /// when listening on a wildcard address, the local address of the link to the control plane).
    #[arg(long, env = "ROOMCAST_ADVERTISE_HOST", default_value = "")]
    pub advertise_host: String,

    /// The control plane's link address; the edge dials it and re-dials with backoff.
    #[arg(long, env = "ROOMCAST_CONTROL", default_value = "127.0.0.1:9091")]
    pub control: String,

    /// HS256 secret that client tokens are signed with.
    #[arg(long, env = "ROOMCAST_JWT_SECRET", default_value = DEV_JWT_SECRET, hide_default_value = true)]
    pub jwt_secret: String,

    /// Most client connections this edge holds; further ones are refused (HTTP 503 / close 4029).
    #[arg(long, env = "ROOMCAST_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: u32,

    /// Most rooms one connection may be in at once.
    #[arg(long, env = "ROOMCAST_MAX_ROOMS_PER_CONN", default_value_t = 16)]
    pub max_rooms_per_conn: u16,

    /// Largest client message (after reassembling WebSocket fragments), in bytes.
    #[arg(long, env = "ROOMCAST_MAX_MESSAGE_BYTES", default_value_t = 65_536)]
    pub max_message_bytes: usize,

    /// A connection silent for longer than this is closed (4000).
    #[arg(long, env = "ROOMCAST_HEARTBEAT_TIMEOUT_MS", default_value_t = 90_000)]
    pub heartbeat_timeout_ms: u64,

    /// A connection must complete the handshake and `auth` within this time (4001).
    #[arg(long, env = "ROOMCAST_AUTH_TIMEOUT_MS", default_value_t = 10_000)]
    pub auth_timeout_ms: u64,

    /// Default merge window of a room, until the control plane sets its level (0 = send each
    /// publish at once, no merging).
    #[arg(long, env = "ROOMCAST_TICK_MS", default_value_t = 100)]
    pub tick_ms: u32,

    /// Longest a merge window may stretch past the previous batch while the edge is still
    /// writing that batch to most of its members (a room's tick is the minimum; windows stretch
    /// with the fan-out under load, up to this, then the queue bounds shed). Never below the
    /// room's tick.
    #[arg(long, env = "ROOMCAST_MAX_WINDOW_MS", default_value_t = 2_000)]
    pub max_window_ms: u32,

    /// Send-queue soft bound per connection: above it the oldest lowest-priority batches drop.
    #[arg(long, env = "ROOMCAST_QUEUE_SOFT_BYTES", default_value_t = 256 * 1024)]
    pub queue_soft_bytes: usize,

    /// Send-queue hard bound per connection: above it the connection is closed as slow (4008).
    #[arg(long, env = "ROOMCAST_QUEUE_HARD_BYTES", default_value_t = 1024 * 1024)]
    pub queue_hard_bytes: usize,

    /// A connection with data waiting whose socket has accepted no byte for this long is closed
    /// as slow (4008): a stalled reader, even one whose queue shedding keeps under the hard bound.
    #[arg(
        long,
        env = "ROOMCAST_WRITE_STALL_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub write_stall_timeout_ms: u64,

    /// Kernel send buffer per client socket (SO_SNDBUF; 0 = the kernel's autotuned default).
    /// Small keeps a slow reader's backlog in the edge's queue, where it is shed by priority.
    #[arg(long, env = "ROOMCAST_SOCKET_SEND_BUFFER_BYTES", default_value_t = 64 * 1024)]
    pub socket_send_buffer_bytes: usize,

    /// Admin HTTP endpoint: /metrics (Prometheus), /healthz, /readyz. Port 0 picks a free port
    /// (advertised to the control plane). Edges sharing a host need distinct ports; when the
    /// address is taken the edge warns and runs without it.
    #[arg(long, env = "ROOMCAST_ADMIN_LISTEN", default_value = "0.0.0.0:9101")]
    pub admin_listen: SocketAddr,

    /// Egress bandwidth this edge may use, bytes per second (the `egress` capacity watermark;
    /// default 10 Gbit/s).
    #[arg(
        long,
        env = "ROOMCAST_EGRESS_BANDWIDTH_BYTES",
        default_value_t = 1_250_000_000
    )]
    pub egress_bandwidth_bytes: u64,

    /// Memory this edge may use, bytes (the `memory` capacity watermark; 0 = the cgroup's
    /// memory.max when set, else the machine's MemTotal).
    #[arg(long, env = "ROOMCAST_MEMORY_LIMIT_BYTES", default_value_t = 0)]
    pub memory_limit_bytes: u64,

    /// How often the edge logs its summed counters (connections, frames, write calls per flush,
    /// drops) as one `edge stats` line; 0 = never. The admin endpoint's /metrics has them all.
    #[arg(long, env = "ROOMCAST_STATS_LOG_INTERVAL_MS", default_value_t = 10_000)]
    pub stats_log_interval_ms: u64,

    /// How long a join (or `auth`) of a channel new to a worker waits for the control plane to
    /// confirm that it routes the channel here (the reply is a subscription in place); past it
    /// the join is refused `unavailable` (an `auth` also closes with 1013) and may be retried.
    #[arg(
        long,
        env = "ROOMCAST_JOIN_CONFIRM_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    pub join_confirm_timeout_ms: u64,

    /// How often the edge sends a load report to the control plane.
    #[arg(long, env = "ROOMCAST_REPORT_INTERVAL_MS", default_value_t = 1_000)]
    pub report_interval_ms: u64,

    /// Largest `data` of a client `send` (a danmaku line), in bytes; larger ones are refused
    /// `too_big` at the edge.
    #[arg(long, env = "ROOMCAST_MAX_SEND_BYTES", default_value_t = 2_048)]
    pub max_send_bytes: usize,

    /// Sends a connection may make per second, on average (a token bucket; a user's
    /// connections on this edge also share one bucket of the same size). 0 refuses every send
    /// `rate_limited`.
    #[arg(long, env = "ROOMCAST_SEND_RATE", default_value_t = 2.0)]
    pub send_rate: f64,

    /// Sends a connection (and a user) may make at once before `--send-rate` paces them.
    #[arg(long, env = "ROOMCAST_SEND_BURST", default_value_t = 5)]
    pub send_burst: u32,

    /// The `kind`s a client may send, comma-separated; others are refused `bad_request`.
    #[arg(long, env = "ROOMCAST_SEND_KINDS", default_value = "chat,like")]
    pub send_kinds: String,

    /// A connection whose sends are refused this many times within --send-flood-window-ms is
    /// closed with 4030 (a client hammering past its limits); 0 never closes.
    #[arg(long, env = "ROOMCAST_SEND_FLOOD_REFUSALS", default_value_t = 100)]
    pub send_flood_refusals: u32,

    /// The window of --send-flood-refusals.
    #[arg(long, env = "ROOMCAST_SEND_FLOOD_WINDOW_MS", default_value_t = 10_000)]
    pub send_flood_window_ms: u32,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig::parse_from(["roomcast-edge"])
    }
}

impl EdgeConfig {
    /// Parses the command line (and environment), fills every option left at its default from the
    /// `--config` file, and validates the result.
    pub fn load_from<I, T>(args: I) -> Result<EdgeConfig, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let config: EdgeConfig = load_layered(args, |c: &EdgeConfig| c.config.clone())?;
        config.validate()?;
        for advice in unknown_env_advice(&unknown_env_vars(&EdgeConfig::command())) {
            tracing::warn!("{advice}");
        }
        Ok(config)
    }

    /// Checks values that would make the edge misbehave.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.workers > 64 {
            return bad("--workers must be at most 64");
        }
        if self.queue_soft_bytes == 0 || self.queue_hard_bytes < self.queue_soft_bytes {
            return bad("--queue-hard-bytes must be >= --queue-soft-bytes > 0");
        }
        if self.max_message_bytes < 128 {
            return bad("--max-message-bytes must be at least 128");
        }
        if self.heartbeat_timeout_ms == 0
            || self.auth_timeout_ms == 0
            || self.join_confirm_timeout_ms == 0
            || self.write_stall_timeout_ms == 0
        {
            return bad(
                "--heartbeat-timeout-ms, --auth-timeout-ms, --join-confirm-timeout-ms and \
                 --write-stall-timeout-ms must be positive",
            );
        }
        if self.report_interval_ms == 0 {
            return bad("--report-interval-ms must be positive");
        }
        if self.jwt_secret.is_empty() {
            return bad("--jwt-secret must not be empty");
        }
        if self.max_rooms_per_conn == 0 {
            return bad("--max-rooms-per-conn must be positive");
        }
        if !(self.send_rate.is_finite() && self.send_rate >= 0.0) {
            return bad("--send-rate must be a number of sends per second, 0 or more");
        }
        if self.send_burst == 0 && self.send_rate > 0.0 {
            return bad("--send-burst must be at least 1 when --send-rate is above 0");
        }
        // Above --max-message-bytes it changes nothing (no bigger op can arrive); not an error,
        // so lowering --max-message-bytes alone keeps working.
        if self.max_send_bytes == 0 {
            return bad("--max-send-bytes must be positive");
        }
        if self.send_kind_list().any(|k| k.is_empty() || k.len() > 64) {
            return bad("--send-kinds must be a comma-separated list of kinds of 1-64 bytes");
        }
        if self.send_flood_window_ms == 0 {
            return bad("--send-flood-window-ms must be positive");
        }
        Ok(())
    }

    /// Number of worker threads to run.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(64)
        }
    }

    /// The edge id, defaulting to `<hostname>-<pid>`.
    pub fn resolved_edge_id(&self) -> String {
        if !self.edge_id.is_empty() {
            return self.edge_id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "edge".to_string());
        format!("{host}-{}", std::process::id())
    }

    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_millis(self.heartbeat_timeout_ms)
    }

    pub fn auth_timeout(&self) -> Duration {
        Duration::from_millis(self.auth_timeout_ms)
    }

    pub fn join_confirm_timeout(&self) -> Duration {
        Duration::from_millis(self.join_confirm_timeout_ms)
    }

    pub fn report_interval(&self) -> Duration {
        Duration::from_millis(self.report_interval_ms)
    }

    /// The kinds of `--send-kinds`.
    pub fn send_kind_list(&self) -> impl Iterator<Item = &str> {
        self.send_kinds.split(',').map(str::trim)
    }
}

/// One warning per `ROOMCAST_*` variable of the environment (`unknown`) that no option of the
/// edge reads, naming it and saying what the edge reads instead, if anything.
fn unknown_env_advice(unknown: &[String]) -> Vec<String> {
    let command = EdgeConfig::command();
    let flag_of = |var: &str| {
        command
            .get_arguments()
            .find(|arg| arg.get_env().is_some_and(|env| env == var))
            .and_then(|arg| arg.get_long())
            .map(str::to_owned)
    };
    unknown
        .iter()
        .map(|name| {
            // `ROOMCAST_EDGE_*`: roomcast-control's names for its embedded edge's options.
            let edge_name = name
                .strip_prefix("ROOMCAST_EDGE_")
                .map(|rest| format!("ROOMCAST_{rest}"));
            match edge_name.and_then(|n| flag_of(&n).map(|flag| (n, flag))) {
                Some((edge_name, flag)) => format!(
                    "roomcast-edge ignores the environment variable {name}: ROOMCAST_EDGE_* \
                     names are roomcast-control's options for its embedded edge; set \
                     {edge_name} (--{flag}) instead"
                ),
                None => format!(
                    "roomcast-edge ignores the environment variable {name}: none of its options \
                     reads it (roomcast-edge --help lists them; rate levels and the API are \
                     roomcast-control's)"
                ),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_variables_are_named_with_what_to_set_instead() {
        let advice = unknown_env_advice(&[
            "ROOMCAST_EDGE_WORKERS".to_owned(),
            "ROOMCAST_TICKS_MS".to_owned(),
        ]);
        assert_eq!(advice.len(), 2);
        assert!(
            advice[0].contains("ROOMCAST_EDGE_WORKERS")
                && advice[0].contains("set ROOMCAST_WORKERS (--workers) instead"),
            "{}",
            advice[0]
        );
        assert!(
            advice[1].contains("ROOMCAST_TICKS_MS") && advice[1].contains("none of its options"),
            "{}",
            advice[1]
        );
        // ROOMCAST_EDGE_ID is the edge's own option, so never unknown; an `EDGE_` name with no
        // edge counterpart gets the plain advice.
        let plain = unknown_env_advice(&["ROOMCAST_EDGE_REPORT_TIMEOUT_MS".to_owned()]);
        assert!(plain[0].contains("none of its options"), "{}", plain[0]);
    }

    #[test]
    fn defaults_match_the_documented_ports() {
        let c = EdgeConfig::default();
        assert_eq!(c.ws_listen.port(), 8080);
        assert_eq!(c.tcp_listen.port(), 8081);
        assert_eq!(c.control, "127.0.0.1:9091");
        assert_eq!(c.tick_ms, 100);
        c.validate().unwrap();
    }

    #[test]
    fn file_fills_defaults_but_flags_win() {
        let dir = std::env::temp_dir().join(format!("roomcast-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("edge.toml");
        std::fs::write(
            &path,
            "tick_ms = 250\nmax_connections = 7\nio = \"epoll\"\n",
        )
        .unwrap();
        let c = EdgeConfig::load_from([
            "roomcast-edge",
            "--config",
            path.to_str().unwrap(),
            "--max-connections",
            "9",
        ])
        .unwrap();
        assert_eq!(c.tick_ms, 250, "file value used where no flag was given");
        assert_eq!(c.max_connections, 9, "flag wins over file");
        assert_eq!(c.io, DriverKind::Epoll);
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        let dir = std::env::temp_dir().join(format!("roomcast-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("edge.toml");
        std::fs::write(&path, "tick_mss = 250\n").unwrap();
        let err = EdgeConfig::load_from(["roomcast-edge", "--config", path.to_str().unwrap()])
            .unwrap_err();
        assert!(err.to_string().contains("tick_mss"), "{err}");
    }

    #[test]
    fn the_write_stall_timeout_is_a_positive_flag_and_variable() {
        let c =
            EdgeConfig::load_from(["roomcast-edge", "--write-stall-timeout-ms", "1500"]).unwrap();
        assert_eq!(c.write_stall_timeout_ms, 1500);
        assert_eq!(EdgeConfig::default().write_stall_timeout_ms, 10_000);
        let zero = EdgeConfig {
            write_stall_timeout_ms: 0,
            ..EdgeConfig::default()
        };
        assert!(zero.validate().is_err());
    }

    #[test]
    fn rejects_hard_bound_below_soft_bound() {
        let c = EdgeConfig {
            queue_soft_bytes: 10,
            queue_hard_bytes: 5,
            ..EdgeConfig::default()
        };
        assert!(c.validate().is_err());
    }
}
