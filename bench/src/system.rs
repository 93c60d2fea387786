//! The system under test: the processes the bench starts (edges, control plane, client
//! processes), their logs, and what the edges say about their load — over the link, or through
//! the control plane's API.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::api::Api;
use crate::dist::room_name;
use crate::linksrv::LinkServer;
use crate::progress::say;
use crate::scenario::RunArgs;
use crate::sys;

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

/// Every child process the bench started; stopped (by PID) on shutdown and when dropped.
#[derive(Default)]
pub struct Kids {
    pub control: Option<Server>,
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
                use std::io::Write;
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
            edge_args.extend(args.edge_args.iter().cloned());
            let log = log_dir.join(format!("{id}.log"));
            self.edges.push(start_server(&id, &bin, &edge_args, log)?);
        }
        Ok(())
    }

    /// Fails when a started process has exited.
    pub fn check_alive(&mut self) -> Result<(), String> {
        for s in self.edges.iter_mut().chain(self.control.as_mut()) {
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
            if name == "roomcast-edge" {
                "roomcast-engine"
            } else {
                "roomcast-control"
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

/// Where the edges' load reports are read: the bench's own link server, or the control plane.
pub enum Observer {
    Link(Arc<LinkServer>),
    Control(Mutex<Api>),
}

impl Observer {
    /// Every live edge's newest load report (empty when it cannot be read).
    pub fn edges(&self) -> Vec<EdgeLoad> {
        match self {
            Observer::Link(server) => server
                .live()
                .iter()
                .filter_map(|e| e.load())
                .map(|(_, load)| load)
                .collect(),
            Observer::Control(api) => api.lock().expect("api lock").edges().unwrap_or_default(),
        }
    }

    /// Members of each room in `rooms`, summed over the edges.
    pub fn room_members(&self, rooms: &[usize]) -> Result<BTreeMap<usize, u64>, String> {
        let mut members = BTreeMap::new();
        match self {
            Observer::Link(server) => {
                let edges = server.live();
                for &r in rooms {
                    let name = room_name(r);
                    members.insert(r, edges.iter().map(|e| e.members(&name)).sum());
                }
            }
            Observer::Control(api) => {
                let mut api = api.lock().expect("api lock");
                for &r in rooms {
                    members.insert(r, api.room(&room_name(r))?.online);
                }
            }
        }
        Ok(members)
    }

    /// The control plane's rate level and tick of `room` (through the API only).
    pub fn room_level(&self, room: usize) -> Option<(u8, u32)> {
        match self {
            Observer::Link(_) => None,
            Observer::Control(api) => {
                let view = api.lock().expect("api lock").room(&room_name(room)).ok()?;
                Some((view.level, view.tick_ms))
            }
        }
    }

    /// Waits until a load report newer than now has come from every edge (about one report
    /// interval), so that what it says covers everything done before the call.
    pub fn wait_fresh(&self) {
        match self {
            Observer::Link(server) => {
                let since = Instant::now();
                let deadline = since + Duration::from_secs(3);
                while Instant::now() < deadline
                    && !server
                        .live()
                        .iter()
                        .all(|e| e.load().is_some_and(|(at, _)| at > since))
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            // The control plane answers from reports that arrive every second.
            Observer::Control(_) => std::thread::sleep(Duration::from_millis(2200)),
        }
    }
}

/// The end of a log file, without colour codes.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = strip_ansi(&std::fs::read_to_string(path).unwrap_or_default());
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The counters of the newest `edge stats` line in an edge's log (numeric fields only).
pub fn edge_stats(log: &Path) -> Option<BTreeMap<String, u64>> {
    let text = strip_ansi(&std::fs::read_to_string(log).ok()?);
    let line = text.lines().rev().find(|l| l.contains("edge stats"))?;
    let mut out = BTreeMap::new();
    for token in line.split_whitespace() {
        if let Some((k, v)) = token.split_once('=') {
            if let Ok(v) = v.trim_matches('"').parse::<u64>() {
                out.insert(k.to_string(), v);
            }
        }
    }
    (!out.is_empty()).then_some(out)
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

/// Warning and error lines of a log (the development-secret warnings left out).
pub fn log_warnings(log: &Path) -> Vec<String> {
    strip_ansi(&std::fs::read_to_string(log).unwrap_or_default())
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("panicked") || l.contains("WARN"))
        .filter(|l| !l.contains("development JWT secret") && !l.contains("development API key"))
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
