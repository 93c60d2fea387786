//! The system under test: the processes the bench starts (edges, control plane, client
//! processes) and a run's hold on them ([`Ctx`]), their logs, the edges under measurement, and
//! what the edges say about their load ([`EdgeLoad`]; read by [`crate::observer`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::msgs::{ClientMsg, Snap};
use crate::scenario::{RunArgs, SendMode};
use crate::sys;
use crate::term::say;

/// The edges to start.
pub struct EdgePlan {
    pub count: usize,
    /// The control plane's (or the bench's) link address.
    pub link: SocketAddr,
    /// Client listeners, shared by every edge.
    pub ws: SocketAddr,
    pub tcp: SocketAddr,
    pub max_connections: usize,
}

/// A started edge or control plane, with its log file.
pub struct Server {
    pub id: String,
    pub child: Child,
    pub log: PathBuf,
}

pub struct ClientProc {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
}

/// What a running benchmark holds: its stop flag (Ctrl-C), its children, and what its client
/// processes say (one line each, by process index; `None` when one ended).
pub struct Ctx {
    stop: Arc<AtomicBool>,
    pub kids: Kids,
    pub from_clients: Option<Receiver<(usize, Option<ClientMsg>)>>,
}

impl Ctx {
    pub fn new(stop: Arc<AtomicBool>) -> Ctx {
        Ctx {
            stop,
            kids: Kids::default(),
            from_clients: None,
        }
    }

    /// Sleeps, checking for Ctrl-C and dead children every 100 ms.
    pub fn sleep(&mut self, d: Duration) -> Result<(), String> {
        let until = Instant::now() + d;
        loop {
            self.check()?;
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            std::thread::sleep((until - now).min(Duration::from_millis(100)));
        }
    }

    /// Fails on Ctrl-C, or when a started process has exited.
    pub fn check(&mut self) -> Result<(), String> {
        if self.stop.load(Ordering::Relaxed) {
            return Err("interrupted".into());
        }
        self.kids.check_alive()
    }

    /// Sends one command line to every client process.
    pub fn tell_clients(&mut self, line: &str) -> Result<(), String> {
        for (i, c) in self.kids.clients.iter_mut().enumerate() {
            let stdin = c.stdin.as_mut().ok_or("client stdin closed")?;
            writeln!(stdin, "{line}")
                .and_then(|()| stdin.flush())
                .map_err(|e| format!("cannot talk to client process {i}: {e}"))?;
        }
        Ok(())
    }

    /// Waits for one message per client process that `pick` accepts.
    pub fn collect<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pick: impl FnMut(ClientMsg) -> Option<T>,
    ) -> Result<Vec<T>, String> {
        let n = self.kids.clients.len();
        let mut got: Vec<Option<T>> = (0..n).map(|_| None).collect();
        let deadline = Instant::now() + timeout;
        while got.iter().any(Option::is_none) {
            self.check()?;
            if Instant::now() >= deadline {
                let missing: Vec<usize> = (0..n).filter(|&i| got[i].is_none()).collect();
                return Err(format!(
                    "timed out after {timeout:?} waiting for {what} from client processes {missing:?}"
                ));
            }
            let rx = self.from_clients.as_ref().ok_or("no clients")?;
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok((i, Some(msg))) => {
                    if let Some(v) = pick(msg) {
                        got[i] = Some(v);
                    }
                }
                Ok((i, None)) => {
                    return Err(format!("client process {i} ended while waiting for {what}"))
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err("client output closed".into()),
            }
        }
        Ok(got.into_iter().map(|g| g.expect("all present")).collect())
    }

    /// Asks every client process for its counters now (`snap <tag>`) and adds them up.
    pub fn snap(&mut self, tag: &str) -> Result<Snap, String> {
        self.tell_clients(&format!("snap {tag}"))?;
        let snaps = self.collect("snapshot", Duration::from_secs(20), |m| match m {
            ClientMsg::Snap(s) => Some(s),
            _ => None,
        })?;
        let mut all = Snap {
            tag: tag.into(),
            ..Snap::default()
        };
        for s in snaps {
            all.frames += s.frames;
            all.msgs += s.msgs;
            all.open += s.open;
        }
        Ok(all)
    }
}

/// One edge under measurement.
pub struct Measured {
    pub id: String,
    pub pid: Option<u32>,
    pub driver: String,
    /// Its log, when the bench started it.
    pub log: Option<PathBuf>,
}

/// Every child process the bench started; stopped (by PID) on shutdown and when dropped.
#[derive(Default)]
pub struct Kids {
    pub control: Option<Server>,
    /// The sample platform backend (`--send-proxy`).
    pub backend: Option<Server>,
    pub edges: Vec<Server>,
    pub clients: Vec<ClientProc>,
    pub straces: Vec<Child>,
}

impl Kids {
    pub fn shutdown(&mut self) {
        for s in &mut self.straces {
            sys::signal(s.id(), libc::SIGKILL);
            let _ = s.wait();
        }
        self.straces.clear();
        // Clients exit on `exit` (or when their stdin closes); kill what is left after a while.
        for c in &mut self.clients {
            if let Some(mut stdin) = c.stdin.take() {
                let _ = writeln!(stdin, "exit");
            }
        }
        wait_all(
            self.clients.iter_mut().map(|c| &mut c.child),
            Duration::from_secs(5),
        );
        self.clients.clear();
        stop_servers(&mut self.edges);
        stop_servers(&mut self.control.take().into_iter().collect());
        stop_servers(&mut self.backend.take().into_iter().collect());
    }

    /// Starts the sample platform backend (`roomcast-example-backend --listen
    /// <--backend-listen>`, plus --backend-arg).
    pub fn start_backend(&mut self, args: &RunArgs, log_dir: &Path) -> Result<(), String> {
        let bin = binary(args.backend_bin.as_deref(), BACKEND_BIN, "--backend-bin")?;
        let mut backend_args = vec![format!("--listen={}", args.backend_listen)];
        backend_args.extend(args.backend_args.iter().cloned());
        let log = log_dir.join("backend.log");
        self.backend = Some(start_server("backend", &bin, &backend_args, log)?);
        Ok(())
    }

    /// Starts `roomcast-control --no-embedded-edge` with its API on `api` and the edge link on
    /// --link-listen.
    pub fn start_control(
        &mut self,
        args: &RunArgs,
        api: SocketAddr,
        log_dir: &Path,
    ) -> Result<(), String> {
        let bin = binary(
            args.control_bin.as_deref(),
            "roomcast-control",
            "--control-bin",
        )?;
        let mut control_args: Vec<String> = vec![
            "--no-embedded-edge".into(),
            format!("--api-listen={api}"),
            format!("--link-listen={}", args.link_listen),
            format!("--api-key={}", args.api_key),
            format!("--jwt-secret={}", args.jwt_secret),
        ];
        // Upstream: what viewers' sends become, unless --control-arg says.
        let given = |flag: &str| args.control_args.iter().any(|a| a.starts_with(flag));
        if let Some(mode) = args.send_mode().filter(|_| !given("--send-mode")) {
            control_args.push(format!("--send-mode={}", mode.name()));
        }
        if args.send_proxy && !given("--send-proxy-url") {
            control_args.push(format!(
                "--send-proxy-url=http://{}/roomcast/send",
                args.backend_listen
            ));
        }
        debug_assert!(args.send_mode() != Some(SendMode::Direct) || !args.send_proxy);
        control_args.extend(args.control_args.iter().cloned());
        let log = log_dir.join("control.log");
        self.control = Some(start_server("control", &bin, &control_args, log)?);
        Ok(())
    }

    /// Starts the edges `bench-edge-0`, `bench-edge-1`, … on shared client ports.
    pub fn start_edges(
        &mut self,
        args: &RunArgs,
        plan: &EdgePlan,
        log_dir: &Path,
    ) -> Result<(), String> {
        let bin = binary(args.edge_bin.as_deref(), "roomcast-edge", "--edge-bin")?;
        // The edge logs its own counters (write calls, flushes, ...) as an `edge stats` line;
        // ask for one per second when this edge build supports it and the user did not set it.
        let help = Command::new(&bin)
            .arg("--help")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let unless_given =
            |flag: &str| help.contains(flag) && !args.edge_args.iter().any(|a| a.starts_with(flag));
        let stats_every_second = unless_given("--stats-log-interval-ms");
        // Several edges on one host cannot share the admin (metrics) port: any free one each.
        let admin_on_any_port = unless_given("--admin-listen");
        // Several edges on one host share its cores: unless told otherwise, each runs
        // cores / edges workers (at least one), pinned from its own first core, so the pinned
        // workers spread over the cores instead of several per core (7 edges × 2 workers on 2
        // cores doubled the big room's p99).
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers_each =
            (plan.count > 1 && unless_given("--workers")).then(|| (cores / plan.count).max(1));
        let spread_cores = plan.count > 1 && unless_given("--first-core");
        // Upstream above the edge's default send rate (2/s, burst 5): a bucket that lets every
        // sender send at its rate, with room for a late loop's catch-up.
        let rate = args.sends_per_sender_per_s;
        let send_limits = (args.senders() > 0 && rate > 2.0)
            .then(|| (rate * 1.5, (rate * 2.0).ceil().max(5.0) as u32));
        let set_send_rate = send_limits.is_some() && unless_given("--send-rate");
        let set_send_burst = send_limits.is_some() && unless_given("--send-burst");
        for i in 0..plan.count {
            let id = format!("bench-edge-{i}");
            let mut edge_args: Vec<String> = vec![
                format!("--edge-id={id}"),
                format!("--control={}", plan.link),
                format!("--ws-listen={}", plan.ws),
                format!("--tcp-listen={}", plan.tcp),
                format!("--max-connections={}", plan.max_connections),
                format!("--jwt-secret={}", args.jwt_secret),
            ];
            if stats_every_second {
                edge_args.push("--stats-log-interval-ms=1000".into());
            }
            if admin_on_any_port {
                edge_args.push("--admin-listen=127.0.0.1:0".into());
            }
            if let Some(workers) = workers_each {
                edge_args.push(format!("--workers={workers}"));
            }
            if spread_cores {
                edge_args.push(format!("--first-core={}", i * workers_each.unwrap_or(1)));
            }
            if let Some((rate, burst)) = send_limits {
                if set_send_rate {
                    edge_args.push(format!("--send-rate={rate}"));
                }
                if set_send_burst {
                    edge_args.push(format!("--send-burst={burst}"));
                }
            }
            edge_args.extend(args.edge_args.iter().cloned());
            let log = log_dir.join(format!("{id}.log"));
            self.edges.push(start_server(&id, &bin, &edge_args, log)?);
        }
        Ok(())
    }

    /// Starts a peer server to compare with (`--server nats`), measured where the edges are.
    pub fn start_peer(
        &mut self,
        id: &str,
        bin: &Path,
        args: &[String],
        log: PathBuf,
    ) -> Result<u32, String> {
        let server = start_server(id, bin, args, log)?;
        let pid = server.child.id();
        self.edges.push(server);
        Ok(pid)
    }

    /// Fails when a started process has exited.
    pub fn check_alive(&mut self) -> Result<(), String> {
        for s in self
            .edges
            .iter_mut()
            .chain(self.control.as_mut())
            .chain(self.backend.as_mut())
        {
            if let Ok(Some(status)) = s.child.try_wait() {
                return Err(format!(
                    "{} (pid {}) exited with {status}; end of its log {}:\n{}",
                    s.id,
                    s.child.id(),
                    s.log.display(),
                    log_tail(&s.log, 30)
                ));
            }
        }
        for (i, c) in self.clients.iter_mut().enumerate() {
            if let Ok(Some(status)) = c.child.try_wait() {
                return Err(format!("client process {i} exited with {status}"));
            }
        }
        Ok(())
    }
}

impl Drop for Kids {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn stop_servers(servers: &mut Vec<Server>) {
    for s in servers.iter_mut() {
        if matches!(s.child.try_wait(), Ok(None)) {
            sys::signal(s.child.id(), libc::SIGTERM);
        }
    }
    wait_all(
        servers.iter_mut().map(|s| &mut s.child),
        Duration::from_secs(8),
    );
    servers.clear();
}

pub fn wait_all<'a>(children: impl Iterator<Item = &'a mut Child>, grace: Duration) {
    let mut children: Vec<&mut Child> = children.collect();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if children
            .iter_mut()
            .all(|c| !matches!(c.try_wait(), Ok(None)))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for c in children {
        if matches!(c.try_wait(), Ok(None)) {
            say(&format!(
                "bench: pid {} did not exit in {grace:?}; killing it",
                c.id()
            ));
            sys::signal(c.id(), libc::SIGKILL);
            let _ = c.wait();
        }
    }
}

/// The sample platform backend's binary (`--send-proxy`).
pub const BACKEND_BIN: &str = "roomcast-example-backend";

/// A workspace binary: `explicit`, or `name` next to this executable.
fn binary(explicit: Option<&Path>, name: &str, flag: &str) -> Result<PathBuf, String> {
    let bin = match explicit {
        Some(b) => b.to_path_buf(),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name(name),
    };
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "{name} binary {} not found (build it: cargo build --release -p {} -j1; or pass {flag})",
            bin.display(),
            match name {
                "roomcast-edge" => "roomcast-engine",
                BACKEND_BIN => BACKEND_BIN,
                _ => "roomcast-control",
            }
        ))
    }
}

/// Starts `bin args` with its output in `log`; only the arguments configure it (`ROOMCAST_*`
/// variables are not passed on), and it dies with the bench.
fn start_server(id: &str, bin: &Path, args: &[String], log: PathBuf) -> Result<Server, String> {
    let file = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(file.try_clone().map_err(|e| e.to_string())?)
        .stderr(file);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ROOMCAST_") {
            cmd.env_remove(name);
        }
    }
    // Plain text logs (tracing-subscriber colours its output even into a file).
    cmd.env("NO_COLOR", "1");
    sys::die_with_parent(&mut cmd, libc::SIGKILL);
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    say(&format!(
        "bench: started {id} pid {} (log {})",
        child.id(),
        log.display()
    ));
    Ok(Server {
        id: id.to_string(),
        child,
        log,
    })
}

/// One edge's load as it last reported it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct EdgeLoad {
    pub id: String,
    pub connections: u64,
    pub frames_out: u64,
    pub bytes_out: u64,
    pub msgs_dropped: u64,
    pub slow_closes: u64,
}

/// The end of a log file, without colour codes.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = strip_ansi(&std::fs::read_to_string(path).unwrap_or_default());
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `edge stats` fields renamed to match the edges' `/metrics` series, old name first: an edge
/// built before the rename still reads the same. (`dropped_worker_backlog` is not here: it counted
/// batches, while `messages_dropped_worker_backlog` counts messages.)
const LEGACY_EDGE_STATS: [(&str, &str); 10] = [
    ("accepted", "connections_accepted"),
    ("refused_full", "connections_refused_full"),
    ("closed_slow", "slow_consumer_closes"),
    ("publishes", "messages_in"),
    ("deliveries", "worker_batches"),
    ("bytes_out", "written_bytes"),
    ("write_iovecs", "write_iovecs_sum"),
    ("dropped_queue", "messages_dropped_queue"),
    ("dropped_closed", "messages_dropped_closed"),
    ("dropped_budget", "messages_dropped_budget"),
];

/// One `edge stats` line's numeric fields: every integer under its current name in `counters`,
/// and every number (integers too, and `window_seconds_sum=12.345`, quoted or not) in `floats`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EdgeStats {
    pub counters: BTreeMap<String, u64>,
    pub floats: BTreeMap<String, f64>,
}

impl EdgeStats {
    /// The merge-window figures, when the edge logs them (edges built before windows stretched
    /// with the fan-out do not: `None`).
    pub fn windows(&self) -> Option<WindowStats> {
        Some(WindowStats {
            seconds_sum: *self.floats.get("window_seconds_sum")?,
            count: *self.counters.get("window_seconds_count")?,
            stretched: self.counters.get("windows_stretched").copied().unwrap_or(0),
            capped: self.counters.get("windows_capped").copied().unwrap_or(0),
            channels_stretched: self
                .counters
                .get("channels_stretched")
                .copied()
                .unwrap_or(0),
        })
    }
}

/// An edge's merge windows as one `edge stats` line has them: running totals over all levels
/// (`window_seconds_sum` / `_count`: the effective windows' lengths), the windows stretched past
/// the tick and capped at `--max-window-ms`, and the gauge of channels stretched now.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WindowStats {
    pub seconds_sum: f64,
    pub count: u64,
    pub stretched: u64,
    pub capped: u64,
    pub channels_stretched: u64,
}

/// What happened to the windows between two readings of the running totals.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WindowDelta {
    pub seconds_sum: f64,
    pub count: u64,
    pub stretched: u64,
    pub capped: u64,
}

impl WindowDelta {
    /// `later − earlier`; nothing when the totals went backwards (another process).
    pub fn between(earlier: &WindowStats, later: &WindowStats) -> WindowDelta {
        if later.count < earlier.count {
            return WindowDelta::default();
        }
        WindowDelta {
            seconds_sum: (later.seconds_sum - earlier.seconds_sum).max(0.0),
            count: later.count - earlier.count,
            stretched: later.stretched.saturating_sub(earlier.stretched),
            capped: later.capped.saturating_sub(earlier.capped),
        }
    }

    pub fn add(&mut self, other: &WindowDelta) {
        self.seconds_sum += other.seconds_sum;
        self.count += other.count;
        self.stretched += other.stretched;
        self.capped += other.capped;
    }

    /// The mean effective window, ms (Δsum / Δcount); `None` when no window closed.
    pub fn mean_ms(&self) -> Option<f64> {
        (self.count > 0).then(|| self.seconds_sum * 1000.0 / self.count as f64)
    }
}

/// Parses one `edge stats` log line (colour codes already stripped).
pub fn parse_edge_stats(line: &str) -> EdgeStats {
    let mut out = EdgeStats::default();
    for token in line.split_whitespace() {
        let Some((k, v)) = token.split_once('=') else {
            continue;
        };
        let v = v.trim_matches('"');
        let k = LEGACY_EDGE_STATS
            .iter()
            .find(|(old, _)| *old == k)
            .map_or(k, |(_, new)| new);
        if let Ok(n) = v.parse::<u64>() {
            out.counters.insert(k.to_string(), n);
        }
        if let Ok(x) = v.parse::<f64>() {
            if x.is_finite() {
                out.floats.insert(k.to_string(), x);
            }
        }
    }
    out
}

/// The newest `edge stats` line in an edge's log, without colour codes (read from the log's
/// last 64 KiB: it is read every second).
pub fn edge_stats_line(log: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    const TAIL: u64 = 64 * 1024;
    let mut file = File::open(log).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(TAIL))).ok()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    // Whole lines only: the edge may be writing the last one.
    let end = bytes.iter().rposition(|&b| b == b'\n')?;
    let text = strip_ansi(&String::from_utf8_lossy(&bytes[..end]));
    let line = text.lines().rev().find(|l| l.contains("edge stats"))?;
    Some(line.to_string())
}

/// The numbers of the newest `edge stats` line in an edge's log, under their current names.
pub fn edge_stats(log: &Path) -> Option<EdgeStats> {
    let stats = parse_edge_stats(&edge_stats_line(log)?);
    (!stats.counters.is_empty()).then_some(stats)
}

/// The I/O driver an edge chose, from its "edge started" log line.
pub fn edge_driver(log: &Path) -> String {
    let text = strip_ansi(&std::fs::read_to_string(log).unwrap_or_default());
    for line in text.lines() {
        if let Some(i) = line.find("driver=") {
            let v = &line[i + "driver=".len()..];
            let v = v.split_whitespace().next().unwrap_or("");
            return v.trim_matches('"').to_string();
        }
    }
    "?".into()
}

/// The admin (`/metrics`) address an edge logged in its "edge started" line
/// (`admin=Some(127.0.0.1:PORT)`), if any.
pub fn edge_admin(log: &Path) -> Option<SocketAddr> {
    let text = strip_ansi(&std::fs::read_to_string(log).unwrap_or_default());
    let line = text.lines().find(|l| l.contains("edge started"))?;
    let at = line.find("admin=Some(")? + "admin=Some(".len();
    let end = line[at..].find(')')? + at;
    line[at..end].parse().ok()
}

/// Warning and error lines of a log (the development-secret warnings left out).
pub fn log_warnings(log: &Path) -> Vec<String> {
    strip_ansi(&std::fs::read_to_string(log).unwrap_or_default())
        .lines()
        .filter(|l| {
            ["ERROR", "panicked", "WARN", "[ERR]", "[WRN]"]
                .iter()
                .any(|w| l.contains(w))
        })
        .filter(|l| !l.contains("development JWT secret") && !l.contains("development API key"))
        // NATS's websocket without TLS, as the bench configures it on loopback.
        .filter(|l| !l.contains("Websocket not configured with TLS"))
        .map(str::to_owned)
        .collect()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ ... final byte in @..~
            for d in chars.by_ref() {
                if ('@'..='~').contains(&d) && d != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `edge stats` line as the edge logs it (tracing's fmt: strings quoted).
    const LINE: &str = "2025-01-02T03:04:05.678901Z  INFO roomcast_engine::metrics: edge stats \
        connections=10000 connections_accepted=10000 messages_in=1234 batches=300 \
        write_calls=99 write_calls_per_flush=\"1.000\" deliveries=7 \
        window_seconds_sum=\"12.345\" window_seconds_count=300 windows_stretched=250 \
        windows_capped=3 channels_stretched=1";

    #[test]
    fn parses_integers_and_floats_of_an_edge_stats_line() {
        let s = parse_edge_stats(LINE);
        assert_eq!(s.counters["connections"], 10_000);
        assert_eq!(s.counters["worker_batches"], 7, "the legacy name renamed");
        assert!(
            !s.counters.contains_key("window_seconds_sum"),
            "not an integer"
        );
        assert!(!s.counters.contains_key("write_calls_per_flush"));
        assert_eq!(s.floats["window_seconds_sum"], 12.345);
        assert_eq!(s.floats["write_calls_per_flush"], 1.0);
        assert_eq!(
            s.floats["connections"], 10_000.0,
            "integers are numbers too"
        );
        let w = s.windows().expect("this edge logs windows");
        assert_eq!(
            w,
            WindowStats {
                seconds_sum: 12.345,
                count: 300,
                stretched: 250,
                capped: 3,
                channels_stretched: 1,
            }
        );
        // Unquoted (another formatter) reads the same.
        let bare = parse_edge_stats("edge stats window_seconds_sum=0.5 window_seconds_count=2");
        assert_eq!(bare.windows().unwrap().seconds_sum, 0.5);
        assert_eq!(
            bare.windows().unwrap().stretched,
            0,
            "absent counters are 0"
        );
    }

    #[test]
    fn finds_the_admin_address_in_the_start_line() {
        let dir = std::env::temp_dir().join(format!("roomcast-bench-admin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("edge.log");
        std::fs::write(
            &log,
            "2025-01-02T03:04:05Z  INFO roomcast_engine::edge: edge started edge_id=\"e0\" \
             admin=Some(127.0.0.1:40123) driver=\"uring\" workers=1\n",
        )
        .unwrap();
        assert_eq!(edge_admin(&log), Some("127.0.0.1:40123".parse().unwrap()));
        std::fs::write(
            &log,
            "INFO edge started edge_id=\"e0\" admin=None driver=\"epoll\"\n",
        )
        .unwrap();
        assert_eq!(edge_admin(&log), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_older_edge_has_no_windows() {
        let s = parse_edge_stats(
            "INFO edge stats connections=5 flushes=10 write_calls=12 write_calls_per_flush=\"1.200\"",
        );
        assert_eq!(s.counters["flushes"], 10);
        assert_eq!(s.windows(), None);
    }

    #[test]
    fn window_deltas_give_the_mean_effective_window() {
        let at = |sum: f64, count: u64, stretched: u64| WindowStats {
            seconds_sum: sum,
            count,
            stretched,
            capped: 0,
            channels_stretched: 0,
        };
        let d = WindowDelta::between(&at(12.345, 300, 250), &at(15.345, 310, 258));
        assert_eq!(d.count, 10);
        assert_eq!(d.stretched, 8);
        assert!(
            (d.mean_ms().unwrap() - 300.0).abs() < 1e-9,
            "3 s over 10 windows"
        );
        // Summed over edges: Δsum / Δcount of the total, not a mean of means.
        let mut total = d;
        total.add(&WindowDelta::between(&at(1.0, 10, 0), &at(1.1, 100, 0)));
        assert!((total.mean_ms().unwrap() - 3100.0 / 100.0).abs() < 1e-9);
        // No window closed: no mean.
        assert_eq!(
            WindowDelta::between(&at(1.0, 10, 0), &at(1.0, 10, 0)).mean_ms(),
            None
        );
        // A restarted edge (totals went back) counts nothing.
        assert_eq!(
            WindowDelta::between(&at(5.0, 50, 9), &at(0.1, 1, 0)),
            WindowDelta::default()
        );
    }

    #[test]
    fn reads_the_newest_whole_line_of_a_log() {
        let dir = std::env::temp_dir().join(format!("roomcast-bench-stats-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("edge.log");
        let old = "\x1b[2mt0\x1b[0m INFO edge stats connections=1 window_seconds_sum=\"0.100\" window_seconds_count=1";
        std::fs::write(
            &log,
            format!("{old}\n{LINE}\nINFO something else\nINFO edge stats connections=3 window_se"),
        )
        .unwrap();
        assert_eq!(
            edge_stats_line(&log).as_deref(),
            Some(LINE),
            "not the half-written one"
        );
        let stats = edge_stats(&log).unwrap();
        assert_eq!(stats.counters["connections"], 10_000);
        std::fs::write(&log, format!("{old}\n")).unwrap();
        let stats = edge_stats(&log).unwrap();
        assert_eq!(
            stats.windows().unwrap().seconds_sum,
            0.1,
            "colour codes stripped"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
