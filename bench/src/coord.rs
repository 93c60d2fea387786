//! `roomcast-bench run`: the coordinator.
//!
//! Phases: start the link listener → start the edges (or wait for running ones to register) →
//! baseline memory → start the client processes and wait until every connection is joined →
//! idle memory → publish (warm-up, measured window, optional strace window) → drain → collect the
//! clients' reports → print and save the results. Every wait is bounded; every child is stopped
//! on the way out (also on Ctrl-C), and children die with the coordinator if it is killed.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use roomcast_engine::proto::link::LoadReport;
use serde_json::{json, Value};

use crate::client::ip_add;
use crate::linksrv::{EdgeLink, LinkServer, Plan, Publisher};
use crate::msgs::{add_pairs, new_latency_histogram, ClientMsg, Connected, Report, Snap};
use crate::sys::{self, ProcMem};
use crate::RunArgs;

type Res<T> = Result<T, String>;

/// Connections one client process or one edge should hold at most (20,000 fds here).
const PER_PROCESS: usize = 15_000;

struct EdgeProc {
    id: String,
    child: Child,
    log: PathBuf,
}

struct ClientProc {
    child: Child,
    stdin: Option<ChildStdin>,
}

/// Every child process we started; stopped (by PID) when dropped.
#[derive(Default)]
struct Kids {
    edges: Vec<EdgeProc>,
    clients: Vec<ClientProc>,
    straces: Vec<Child>,
}

impl Kids {
    fn shutdown(&mut self) {
        for s in &mut self.straces {
            sys::signal(s.id(), libc::SIGKILL);
            let _ = s.wait();
        }
        self.straces.clear();
        // Clients: closing stdin makes them exit; kill whatever is left after a grace period.
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
        for e in &mut self.edges {
            if matches!(e.child.try_wait(), Ok(None)) {
                sys::signal(e.child.id(), libc::SIGTERM);
            }
        }
        wait_all(
            self.edges.iter_mut().map(|e| &mut e.child),
            Duration::from_secs(8),
        );
        self.edges.clear();
    }

    /// Fails when a spawned edge or client has exited.
    fn check_alive(&mut self) -> Res<()> {
        for e in &mut self.edges {
            if let Ok(Some(status)) = e.child.try_wait() {
                return Err(format!(
                    "edge {} (pid {}) exited with {status}; end of its log {}:\n{}",
                    e.id,
                    e.child.id(),
                    e.log.display(),
                    log_tail(&e.log, 30)
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

fn wait_all<'a>(children: impl Iterator<Item = &'a mut Child>, grace: Duration) {
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
            eprintln!(
                "bench: pid {} did not exit in {grace:?}; killing it",
                c.id()
            );
            sys::signal(c.id(), libc::SIGKILL);
            let _ = c.wait();
        }
    }
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = strip_ansi(&std::fs::read_to_string(path).unwrap_or_default());
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Shared state of a run: stop flag, children, client output.
struct Ctx {
    stop: Arc<AtomicBool>,
    kids: Kids,
    from_clients: Option<Receiver<(usize, Option<ClientMsg>)>>,
}

impl Ctx {
    /// Sleeps, checking for Ctrl-C and dead children every 100 ms.
    fn sleep(&mut self, d: Duration) -> Res<()> {
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

    fn check(&mut self) -> Res<()> {
        if self.stop.load(Ordering::Relaxed) {
            return Err("interrupted".into());
        }
        self.kids.check_alive()
    }

    fn tell_clients(&mut self, line: &str) -> Res<()> {
        for (i, c) in self.kids.clients.iter_mut().enumerate() {
            let stdin = c.stdin.as_mut().ok_or("client stdin closed")?;
            writeln!(stdin, "{line}")
                .and_then(|()| stdin.flush())
                .map_err(|e| format!("cannot talk to client process {i}: {e}"))?;
        }
        Ok(())
    }

    /// Waits for one message per client process that `pick` accepts.
    fn collect<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pick: impl FnMut(ClientMsg) -> Option<T>,
    ) -> Res<Vec<T>> {
        let n = self.kids.clients.len();
        let mut got: Vec<Option<T>> = (0..n).map(|_| None).collect();
        let deadline = Instant::now() + timeout;
        let mut last_note = Instant::now();
        while got.iter().any(Option::is_none) {
            if self.stop.load(Ordering::Relaxed) {
                return Err("interrupted".into());
            }
            let now = Instant::now();
            if now >= deadline {
                let missing: Vec<usize> = (0..n).filter(|&i| got[i].is_none()).collect();
                return Err(format!("timed out after {timeout:?} waiting for {what} from client processes {missing:?}"));
            }
            if now.duration_since(last_note) > Duration::from_secs(10) {
                last_note = now;
                let done = got.iter().filter(|g| g.is_some()).count();
                eprintln!("bench: waiting for {what}: {done}/{n} client processes so far");
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
                Err(RecvTimeoutError::Timeout) => self.kids.check_alive()?,
                Err(RecvTimeoutError::Disconnected) => return Err("client output closed".into()),
            }
        }
        Ok(got.into_iter().map(|g| g.expect("all present")).collect())
    }

    fn snap(&mut self, tag: &str) -> Res<Snap> {
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
struct Measured {
    id: String,
    pid: Option<u32>,
    link: Option<Arc<EdgeLink>>,
    driver: String,
}

pub fn run(args: RunArgs) -> i32 {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&stop)) {
            eprintln!("bench: cannot install a signal handler: {e}");
        }
    }
    let mut ctx = Ctx {
        stop,
        kids: Kids::default(),
        from_clients: None,
    };
    let result = run_inner(&args, &mut ctx);
    ctx.kids.shutdown();
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("roomcast-bench: {e}");
            1
        }
    }
}

fn run_inner(args: &RunArgs, ctx: &mut Ctx) -> Res<()> {
    if args.conns == 0 || args.rooms == 0 {
        return Err("--conns and --rooms must be positive".into());
    }
    if args.priority > 3 {
        return Err("--priority must be 0..=3".into());
    }
    if !args.hold_only && args.rate <= 0.0 {
        return Err("--rate must be positive (or use --hold-only)".into());
    }
    let spawn = !args.no_spawn_edges;
    let edge_count = args
        .edges
        .unwrap_or(if spawn {
            args.conns.div_ceil(PER_PROCESS)
        } else {
            1
        })
        .max(1);
    let procs = args
        .procs
        .unwrap_or(args.conns.div_ceil(PER_PROCESS))
        .clamp(1, args.conns);
    let (fd_soft, fd_hard) = sys::raise_nofile();
    eprintln!("bench: fd limit soft {fd_soft} hard {fd_hard} (children inherit it)");
    let per_proc = args.conns.div_ceil(procs);
    if per_proc as u64 + 100 > fd_hard {
        return Err(format!(
            "{per_proc} connections per client process exceed the fd limit {fd_hard}; use more --procs"
        ));
    }
    let strace_bin = match args.strace {
        Some(_) if !args.hold_only => match sys::which("strace") {
            Some(p) => Some(p),
            None => {
                eprintln!(
                    "bench: --strace needs strace, which is not installed; install it with \
                     `apt-get install -y strace` (continuing without the syscall count)"
                );
                None
            }
        },
        _ => None,
    };

    let kernel_start = sys::kernel_mem();
    let (server, link_addr) = LinkServer::start(args.link_listen).map_err(|e| {
        format!(
            "cannot listen for edge links on {}: {e} (another control plane or bench running? pick \
             --link-listen)",
            args.link_listen
        )
    })?;
    eprintln!("bench: listening for edge links on {link_addr}");

    let log_dir = args.log_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("roomcast-bench-{}", std::process::id()))
    });
    let ws_addr = SocketAddr::from((args.edge_ip, args.ws_port));
    let tcp_addr = SocketAddr::from((args.edge_ip, args.tcp_port));
    let max_conns_per_edge = {
        let even = args.conns.div_ceil(edge_count);
        let cap = fd_hard.saturating_sub(128) as usize;
        (even + even / 2 + 100).min(cap)
    };
    if spawn {
        if max_conns_per_edge * edge_count < args.conns {
            return Err(format!(
                "{edge_count} edges x {max_conns_per_edge} connections (fd limit {fd_hard}) cannot hold {}; use more --edges",
                args.conns
            ));
        }
        std::fs::create_dir_all(&log_dir).map_err(|e| format!("{}: {e}", log_dir.display()))?;
        for addr in [ws_addr, tcp_addr] {
            // Binding without SO_REUSEPORT fails if anything (even a reuseport edge) listens there.
            TcpListener::bind(addr).map_err(|e| {
                format!("port {addr} is taken ({e}): another edge is listening there; pick --ws-port/--tcp-port")
            })?;
        }
        let bin = match &args.edge_bin {
            Some(b) => b.clone(),
            None => std::env::current_exe()
                .map_err(|e| e.to_string())?
                .with_file_name("roomcast-edge"),
        };
        if !bin.is_file() {
            return Err(format!(
                "edge binary {} not found (build it, or pass --edge-bin)",
                bin.display()
            ));
        }
        // The edge logs its own counters (write calls, flushes, ...) as an `edge stats` line;
        // ask for one per second when this edge build supports it and the user did not set it.
        let mut extra_args: Vec<String> = Vec::new();
        let help = Command::new(&bin)
            .arg("--help")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if help.contains("--stats-log-interval-ms")
            && !args
                .edge_args
                .iter()
                .any(|a| a.contains("stats-log-interval"))
        {
            extra_args.push("--stats-log-interval-ms=1000".into());
        }
        for i in 0..edge_count {
            let id = format!("bench-edge-{i}");
            let log = log_dir.join(format!("{id}.log"));
            let file = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
            let mut cmd = Command::new(&bin);
            cmd.arg("--edge-id")
                .arg(&id)
                .arg("--control")
                .arg(link_addr.to_string())
                .arg("--ws-listen")
                .arg(ws_addr.to_string())
                .arg("--tcp-listen")
                .arg(tcp_addr.to_string())
                .arg("--max-connections")
                .arg(max_conns_per_edge.to_string())
                .arg("--jwt-secret")
                .arg(&args.jwt_secret)
                .args(&extra_args)
                .args(&args.edge_args)
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
            eprintln!(
                "bench: started edge {id} pid {} (log {})",
                child.id(),
                log.display()
            );
            ctx.kids.edges.push(EdgeProc { id, child, log });
        }
    }

    // Wait for the registrations.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        ctx.check()?;
        let n = server.live().len();
        if n >= edge_count {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {n} of {edge_count} edges registered on {link_addr} within 20 s"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let links = server.live();
    let mut measured: Vec<Measured> = Vec::new();
    if spawn {
        for e in &ctx.kids.edges {
            let link = links.iter().find(|l| l.register.edge_id == e.id).cloned();
            if link.is_none() {
                return Err(format!(
                    "edge {} did not register (another edge dialled {link_addr}?)",
                    e.id
                ));
            }
            measured.push(Measured {
                id: e.id.clone(),
                pid: Some(e.child.id()),
                link,
                driver: String::new(),
            });
        }
        if links.len() > edge_count {
            eprintln!("bench: warning: {} edges registered, {edge_count} started: a foreign edge is dialling {link_addr}", links.len());
        }
    } else {
        for (i, l) in links.iter().enumerate() {
            measured.push(Measured {
                id: l.register.edge_id.clone(),
                pid: args.edge_pids.get(i).copied(),
                link: Some(Arc::clone(l)),
                driver: "?".into(),
            });
        }
    }
    for l in &links {
        eprintln!(
            "bench: edge {} registered: ws {} tcp {} workers {} capacity {}",
            l.register.edge_id,
            l.register.ws_addr,
            l.register.tcp_addr,
            l.register.workers,
            l.register.capacity
        );
    }
    let dial_addr = if spawn {
        if args.transport.is_ws() {
            ws_addr
        } else {
            tcp_addr
        }
    } else {
        let r = &links[0].register;
        let a = if args.transport.is_ws() {
            &r.ws_addr
        } else {
            &r.tcp_addr
        };
        a.parse()
            .map_err(|e| format!("edge advertises {a:?}: {e}"))?
    };

    // Baselines before any connection.
    ctx.sleep(Duration::from_secs(1))?;
    for m in &mut measured {
        if let Some(e) = ctx.kids.edges.iter().find(|e| e.id == m.id) {
            m.driver = edge_driver(&e.log);
        }
    }
    let mem_before: Vec<Option<ProcMem>> = measured
        .iter()
        .map(|m| m.pid.and_then(sys::proc_mem))
        .collect();
    let kernel_before = sys::kernel_mem();

    // Client processes.
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel();
    let mut src_next = 0usize;
    let first_ip = Ipv4Addr::new(127, 0, 0, 2);
    let inflight = (args.connect_inflight / procs).max(1);
    let t_spawn = Instant::now();
    let mut first = 0usize;
    let mut client_pids = Vec::new();
    for p in 0..procs {
        let n = args.conns / procs + usize::from(p < args.conns % procs);
        let ips = n.div_ceil(args.conns_per_ip.max(1));
        let src = ip_add(first_ip, src_next);
        src_next += ips;
        let mut cmd = Command::new(&exe);
        cmd.arg("client")
            .args(["--index", &p.to_string()])
            .args(["--conns", &n.to_string()])
            .args(["--first", &first.to_string()])
            .args(["--transport", args.transport.name()])
            .args(["--addr", &dial_addr.to_string()])
            .args(["--rooms", &args.rooms.to_string()])
            .args(["--src-first", &src.to_string()])
            .args(["--conns-per-ip", &args.conns_per_ip.to_string()])
            .args(["--threads", &args.client_threads.to_string()])
            .args(["--inflight", &inflight.to_string()])
            .args(["--jwt-secret", &args.jwt_secret])
            .args(["--ping-secs", &args.ping_secs.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        sys::die_with_parent(&mut cmd, libc::SIGKILL);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start a client process: {e}"))?;
        client_pids.push(child.id());
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take();
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<ClientMsg>(&line) {
                    Ok(msg) => {
                        if tx.send((p, Some(msg))).is_err() {
                            return;
                        }
                    }
                    Err(e) => eprintln!("bench: client {p} said something odd ({e}): {line}"),
                }
            }
            let _ = tx.send((p, None));
        });
        ctx.kids.clients.push(ClientProc { child, stdin });
        first += n;
    }
    drop(tx);
    ctx.from_clients = Some(rx);
    eprintln!(
        "bench: {procs} client processes connecting {} connections ({}) to {dial_addr} from {}..={}",
        args.conns,
        args.transport.name(),
        first_ip,
        ip_add(first_ip, src_next.saturating_sub(1))
    );

    // Wait until every connection is joined (or failed for good), printing progress.
    let connected = {
        let server2 = Arc::clone(&server);
        let mut last_progress = Instant::now();
        let mut got: Vec<Option<Connected>> = (0..procs).map(|_| None).collect();
        let deadline = Instant::now() + Duration::from_secs(args.connect_timeout);
        while got.iter().any(Option::is_none) {
            ctx.check()?;
            if Instant::now() > deadline {
                return Err(format!(
                    "connections not all up within {} s (--connect-timeout)",
                    args.connect_timeout
                ));
            }
            if last_progress.elapsed() > Duration::from_secs(5) {
                last_progress = Instant::now();
                let held: u64 = server2
                    .live()
                    .iter()
                    .filter_map(|l| l.latest())
                    .map(|(_, r)| u64::from(r.connections))
                    .sum();
                eprintln!(
                    "bench: {:.0} s: edges report {held} connections",
                    t_spawn.elapsed().as_secs_f64()
                );
            }
            let rx = ctx.from_clients.as_ref().expect("clients");
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok((i, Some(ClientMsg::Connected(c)))) => got[i] = Some(c),
                Ok((_, Some(_))) => {}
                Ok((i, None)) => return Err(format!("client process {i} ended while connecting")),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err("client output closed".into()),
            }
        }
        got.into_iter()
            .map(|c| c.expect("all connected"))
            .collect::<Vec<_>>()
    };
    let connect_secs = t_spawn.elapsed().as_secs_f64();
    let ready: u64 = connected.iter().map(|c| c.ready).sum();
    let failed: u64 = connected.iter().map(|c| c.failed).sum();
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    for c in &connected {
        for (k, v) in &c.failures {
            *failures.entry(k.clone()).or_default() += v;
        }
    }
    eprintln!("bench: {ready} connections joined, {failed} failed, in {connect_secs:.2} s");
    for c in &connected {
        eprintln!(
            "bench:   client {} (pid {}): fd limit {}/{}, {} of {} joined in {:.2} s, setup p50 {:.0} ms p99 {:.0} ms max {:.0} ms",
            c.index, c.pid, c.fd_soft, c.fd_hard, c.ready, c.target, c.connect_secs, c.setup_ms_p50, c.setup_ms_p99, c.setup_ms_max
        );
    }
    if !failures.is_empty() {
        eprintln!("bench: failed attempts (including retried ones): {failures:?}");
    }

    // Idle memory: give the edges two report intervals to settle and report.
    ctx.sleep(Duration::from_secs(3))?;
    let mem_idle: Vec<Option<ProcMem>> = measured
        .iter()
        .map(|m| m.pid.and_then(sys::proc_mem))
        .collect();
    let kernel_idle = sys::kernel_mem();
    let reports_idle: Vec<Option<LoadReport>> = measured
        .iter()
        .map(|m| m.link.as_ref().and_then(|l| l.latest()).map(|(_, r)| r))
        .collect();
    let clients_rss: u64 = client_pids
        .iter()
        .filter_map(|&p| sys::proc_mem(p))
        .map(|m| m.rss)
        .sum();

    let mut results = json!({
        "version": 1,
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "config": {
            "edges": measured.len(),
            "spawned_edges": spawn,
            "edge_args": args.edge_args,
            "max_connections_per_edge": max_conns_per_edge,
            "conns": args.conns,
            "client_procs": procs,
            "client_threads": args.client_threads,
            "transport": args.transport.name(),
            "rooms": args.rooms,
            "rate": args.rate,
            "payload": args.payload,
            "priority": args.priority,
            "duration": args.duration,
            "warmup": args.warmup,
            "hold_only": args.hold_only,
            "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "drivers": measured.iter().map(|m| m.driver.clone()).collect::<Vec<_>>(),
        },
        "connections": {
            "target": args.conns,
            "joined": ready,
            "failed": failed,
            "failed_attempts": failures,
            "time_to_all_connected_secs": connect_secs,
            "per_process": connected.iter().map(|c| json!({
                "index": c.index, "pid": c.pid, "fd_soft": c.fd_soft, "fd_hard": c.fd_hard,
                "joined": c.ready, "failed": c.failed, "connect_secs": c.connect_secs,
                "setup_ms_p50": c.setup_ms_p50, "setup_ms_p99": c.setup_ms_p99, "setup_ms_max": c.setup_ms_max,
            })).collect::<Vec<_>>(),
        },
    });

    // Memory per idle connection.
    let mut edges_json = Vec::new();
    let mut rss_delta_sum: i64 = 0;
    let mut anon_delta_sum: i64 = 0;
    let mut edge_conns_sum: u64 = 0;
    for (i, m) in measured.iter().enumerate() {
        let conns = reports_idle[i]
            .as_ref()
            .map_or(0, |r| u64::from(r.connections));
        edge_conns_sum += conns;
        let (b, a) = (mem_before[i], mem_idle[i]);
        let mut e = json!({
            "id": m.id,
            "pid": m.pid,
            "driver": m.driver,
            "connections_idle": conns,
        });
        if let (Some(b), Some(a)) = (b, a) {
            let d = a.rss as i64 - b.rss as i64;
            let da = a.rss_anon as i64 - b.rss_anon as i64;
            rss_delta_sum += d;
            anon_delta_sum += da;
            e["rss_before"] = json!(b.rss);
            e["rss_idle"] = json!(a.rss);
            e["rss_anon_before"] = json!(b.rss_anon);
            e["rss_anon_idle"] = json!(a.rss_anon);
            e["rss_per_conn"] = json!(per(d as f64, conns));
            e["rss_anon_per_conn"] = json!(per(da as f64, conns));
        }
        edges_json.push(e);
    }
    let have_mem = mem_before.iter().any(Option::is_some);
    let slab_delta = kernel_idle.slab as i64 - kernel_before.slab as i64;
    let sock_delta = kernel_idle.tcp_mem as i64 - kernel_before.tcp_mem as i64;
    results["memory"] = json!({
        "edge_connections": edge_conns_sum,
        "edge_rss_delta": rss_delta_sum,
        "edge_rss_per_conn": have_mem.then(|| per(rss_delta_sum as f64, edge_conns_sum)),
        "edge_rss_anon_per_conn": have_mem.then(|| per(anon_delta_sum as f64, edge_conns_sum)),
        "kernel_before": kernel_before,
        "kernel_start": kernel_start,
        "kernel_idle": kernel_idle,
        "kernel_slab_per_conn": per(slab_delta as f64, ready),
        "kernel_tcp_mem_per_conn": per(sock_delta as f64, ready),
        "kernel_note": "system-wide; both ends of every connection (client and edge socket) live on this machine",
        "clients_rss": clients_rss,
        "client_rss_per_conn": per(clients_rss as f64, ready),
    });

    let mut window = None;
    let mut strace_result = None;
    let final_seqs: Vec<u64>;
    let mut publish_info = json!(null);
    if args.hold_only {
        eprintln!(
            "bench: holding {ready} connections for {:.0} s (pings every {} s)",
            args.duration, args.ping_secs
        );
        let cpu0: Vec<Option<f64>> = measured
            .iter()
            .map(|m| m.pid.and_then(sys::proc_cpu_secs))
            .collect();
        let t0 = Instant::now();
        ctx.sleep(Duration::from_secs_f64(args.duration))?;
        let secs = t0.elapsed().as_secs_f64();
        let cpu1: Vec<Option<f64>> = measured
            .iter()
            .map(|m| m.pid.and_then(sys::proc_cpu_secs))
            .collect();
        let mut idle_cpu = 0.0;
        for (i, e) in edges_json.iter_mut().enumerate() {
            if let (Some(a), Some(b)) = (cpu0[i], cpu1[i]) {
                idle_cpu += b - a;
                e["cpu_secs_hold"] = json!(b - a);
            }
        }
        results["hold"] = json!({
            "secs": secs,
            "edge_cpu_secs": idle_cpu,
            "edge_cores_busy": idle_cpu / secs,
            "edge_cpu_us_per_conn_per_s": per(idle_cpu * 1e6 / secs, ready),
        });
        final_seqs = vec![0; args.rooms];
    } else {
        let plan = Plan {
            rooms: args.rooms,
            rate: args.rate,
            payload: args.payload,
            priority: args.priority,
        };
        eprintln!(
            "bench: publishing {} msg/s ({} B, priority {}) to {} room(s) on {} edge(s); warm-up {:.0} s, window {:.0} s",
            args.rate,
            args.payload,
            args.priority,
            args.rooms,
            measured.len(),
            args.warmup,
            args.duration
        );
        let publisher = Publisher::start(Arc::clone(&server), plan);
        ctx.sleep(Duration::from_secs_f64(args.warmup))?;

        // The measured window.
        ctx.tell_clients("start")?;
        let t0 = Instant::now();
        let pub0 = publisher.state().published.load(Ordering::Relaxed);
        let cpu0: Vec<Option<f64>> = measured
            .iter()
            .map(|m| m.pid.and_then(sys::proc_cpu_secs))
            .collect();
        let ccpu0: Vec<Option<f64>> = client_pids.iter().map(|&p| sys::proc_cpu_secs(p)).collect();
        let self0 = sys::self_cpu_secs();
        let sys0 = sys::system_cpu_secs();
        let lr0: Vec<Option<(Instant, LoadReport)>> = measured
            .iter()
            .map(|m| m.link.as_ref().and_then(|l| l.latest()))
            .collect();
        let es0: Vec<Option<BTreeMap<String, u64>>> =
            ctx.kids.edges.iter().map(|e| edge_stats(&e.log)).collect();
        ctx.sleep(Duration::from_secs_f64(args.duration))?;
        ctx.tell_clients("end")?;
        let secs = t0.elapsed().as_secs_f64();
        let pub1 = publisher.state().published.load(Ordering::Relaxed);
        let cpu1: Vec<Option<f64>> = measured
            .iter()
            .map(|m| m.pid.and_then(sys::proc_cpu_secs))
            .collect();
        let ccpu1: Vec<Option<f64>> = client_pids.iter().map(|&p| sys::proc_cpu_secs(p)).collect();
        let self1 = sys::self_cpu_secs();
        let sys1 = sys::system_cpu_secs();
        let lr1: Vec<Option<(Instant, LoadReport)>> = measured
            .iter()
            .map(|m| m.link.as_ref().and_then(|l| l.latest()))
            .collect();
        let es1: Vec<Option<BTreeMap<String, u64>>> =
            ctx.kids.edges.iter().map(|e| edge_stats(&e.log)).collect();
        let mut counters: BTreeMap<String, u64> = BTreeMap::new();
        let mut have_counters = false;
        for (a, b) in es0.iter().zip(&es1) {
            if let (Some(a), Some(b)) = (a, b) {
                have_counters = true;
                for (k, vb) in b {
                    let va = a.get(k).copied().unwrap_or(0);
                    *counters.entry(k.clone()).or_default() += vb.saturating_sub(va);
                }
            }
        }
        if have_counters {
            let g = |k: &str| counters.get(k).copied().unwrap_or(0);
            results["edge_counters"] = json!({
                "source": "delta of the edges' own `edge stats` log lines (1 s granularity) across the measured window",
                "delta": counters,
                "write_calls_per_flush": per(g("write_calls") as f64, g("flushes")),
                "iovecs_per_write": per(g("write_iovecs") as f64, g("write_calls")),
                "frames_per_flush": per(g("frames_queued") as f64, g("flushes")),
            });
        }
        let mem_busy: Vec<Option<ProcMem>> = measured
            .iter()
            .map(|m| m.pid.and_then(sys::proc_mem))
            .collect();

        let mut edge_cpu = 0.0;
        let mut have_cpu = false;
        for (i, e) in edges_json.iter_mut().enumerate() {
            if let (Some(a), Some(b)) = (cpu0[i], cpu1[i]) {
                have_cpu = true;
                edge_cpu += b - a;
                e["cpu_secs_window"] = json!(b - a);
                e["cpu_pct_window"] = json!(100.0 * (b - a) / secs);
            }
            if let (Some((ta, a)), Some((tb, b))) = (&lr0[i], &lr1[i]) {
                let dt = tb.duration_since(*ta).as_secs_f64();
                e["report_frames_out_per_s"] =
                    json!(b.frames_out.saturating_sub(a.frames_out) as f64 / dt.max(1e-9));
                e["report_bytes_out_per_s"] =
                    json!(b.bytes_out.saturating_sub(a.bytes_out) as f64 / dt.max(1e-9));
                e["report_msgs_dropped"] = json!(b.msgs_dropped);
                e["report_slow_closes"] = json!(b.slow_closes);
                e["report_connections"] = json!(b.connections);
            }
            if let Some(m) = mem_busy[i] {
                e["rss_busy"] = json!(m.rss);
                e["rss_hwm"] = json!(m.hwm);
            }
        }
        let clients_cpu: f64 = ccpu0
            .iter()
            .zip(&ccpu1)
            .filter_map(|(a, b)| Some((*b)? - (*a)?))
            .sum();
        window = Some(Window {
            secs,
            published: pub1 - pub0,
            edge_cpu: have_cpu.then_some(edge_cpu),
            clients_cpu,
            coordinator_cpu: self1 - self0,
            system_busy: sys1.0 - sys0.0,
            system_total: sys1.1 - sys0.1,
        });

        // Optional syscall count, outside the measured window (strace slows the edge a lot).
        if let (Some(bin), Some(s)) = (&strace_bin, args.strace) {
            strace_result = Some(run_strace(ctx, bin, &measured, s, &log_dir)?);
        }

        let late = publisher.state().late.load(Ordering::Relaxed);
        let write_errors = publisher.state().write_errors.load(Ordering::Relaxed);
        final_seqs = publisher.stop();
        publish_info = json!({
            "published_total": final_seqs.iter().sum::<u64>(),
            "late_rounds": late,
            "link_write_errors": write_errors,
        });
        eprintln!(
            "bench: published {} messages; draining {:.1} s",
            final_seqs.iter().sum::<u64>(),
            args.drain
        );
        ctx.sleep(Duration::from_secs_f64(args.drain))?;
    }

    // Final reports.
    let reports_end: Vec<Option<LoadReport>> = measured
        .iter()
        .map(|m| m.link.as_ref().and_then(|l| l.latest()).map(|(_, r)| r))
        .collect();
    ctx.tell_clients(&format!(
        "final {}",
        serde_json::to_string(&final_seqs).expect("json")
    ))?;
    let reports: Vec<Report> =
        ctx.collect("final reports", Duration::from_secs(60), |m| match m {
            ClientMsg::Report(r) => Some(*r),
            _ => None,
        })?;
    let mut total = Report::default();
    let mut hist: Histogram<u64> = new_latency_histogram();
    for r in &reports {
        add_pairs(&mut hist, &r.latency_us);
        total.ready += r.ready;
        total.open += r.open;
        for (k, v) in &r.closed {
            *total.closed.entry(k.clone()).or_default() += v;
        }
        total.frames += r.frames;
        total.msgs += r.msgs;
        total.bytes += r.bytes;
        total.window_frames += r.window_frames;
        total.window_msgs += r.window_msgs;
        total.expected += r.expected;
        total.unique += r.unique;
        total.missing += r.missing;
        total.duplicates += r.duplicates;
        total.out_of_order += r.out_of_order;
        total.foreign += r.foreign;
        total.decode_errors += r.decode_errors;
        total.no_ts += r.no_ts;
        total.pings_sent += r.pings_sent;
        total.pongs += r.pongs;
        total.ping_errors += r.ping_errors;
        total.cpu_secs += r.cpu_secs;
    }
    let edges_held_end: u64 = reports_end
        .iter()
        .flatten()
        .map(|r| u64::from(r.connections))
        .sum();
    results["connections"]["held_at_end"] = json!(total.open);
    results["connections"]["closed_by_server"] = json!(total.closed);
    results["connections"]["edges_report_at_end"] = json!(edges_held_end);
    results["connections"]["pings_sent"] = json!(total.pings_sent);
    results["connections"]["pongs"] = json!(total.pongs);
    results["connections"]["ping_errors"] = json!(total.ping_errors);
    for (i, e) in edges_json.iter_mut().enumerate() {
        if let Some(r) = &reports_end[i] {
            e["report_end"] = json!({
                "connections": r.connections, "frames_out": r.frames_out, "bytes_out": r.bytes_out,
                "msgs_dropped": r.msgs_dropped, "slow_closes": r.slow_closes,
            });
        }
    }

    if let Some(w) = &window {
        let q = |p: f64| {
            if hist.is_empty() {
                0.0
            } else {
                hist.value_at_quantile(p) as f64 / 1000.0
            }
        };
        let frames_s = total.window_frames as f64 / w.secs;
        let msgs_s = total.window_msgs as f64 / w.secs;
        let completeness = if total.expected > 0 {
            total.unique as f64 / total.expected as f64
        } else {
            1.0
        };
        results["delivery"] = json!({
            "window_secs": w.secs,
            "published_in_window": w.published,
            "publish_rate": w.published as f64 / w.secs,
            "delivered_msgs_per_s": msgs_s,
            "delivered_frames_per_s": frames_s,
            "msgs_per_frame": per(total.window_msgs as f64, total.window_frames),
            "expected_msgs": total.expected,
            "received_msgs": total.msgs,
            "unique_msgs": total.unique,
            "completeness": completeness,
            "missing": total.missing,
            "duplicates": total.duplicates,
            "out_of_order": total.out_of_order,
            "foreign_batches": total.foreign,
            "decode_errors": total.decode_errors,
            "no_ts": total.no_ts,
            "latency_ms": {
                "count": hist.len(),
                "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999),
                "max": hist.max() as f64 / 1000.0, "mean": hist.mean() / 1000.0,
            },
            "publisher": publish_info,
        });
        results["cpu"] = json!({
            "edge_cpu_secs": w.edge_cpu,
            "edge_cores_busy": w.edge_cpu.map(|c| c / w.secs),
            "edge_us_per_frame": w.edge_cpu.map(|c| per(c * 1e6, total.window_frames)),
            "edge_us_per_msg": w.edge_cpu.map(|c| per(c * 1e6, total.window_msgs)),
            "clients_cpu_secs": w.clients_cpu,
            "clients_cores_busy": w.clients_cpu / w.secs,
            "clients_us_per_msg": per(w.clients_cpu * 1e6, total.window_msgs),
            "coordinator_cpu_secs": w.coordinator_cpu,
            "system_busy_cores": w.system_busy / w.secs,
            "system_cores": w.system_total / w.secs,
            "other_busy_cores": ((w.system_busy - w.edge_cpu.unwrap_or(0.0) - w.clients_cpu - w.coordinator_cpu) / w.secs).max(0.0),
        });
    }
    if let Some(s) = strace_result {
        results["strace"] = s;
    }
    results["edges"] = json!(edges_json);
    results["summary"] = json!(summary(args, &results));

    print_table(&results);
    if let Some(path) = &args.json_out {
        std::fs::write(path, serde_json::to_string_pretty(&results).expect("json"))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!("bench: wrote {}", path.display());
    }

    // Anything alarming in the edges' logs?
    for e in &ctx.kids.edges {
        let text = strip_ansi(&std::fs::read_to_string(&e.log).unwrap_or_default());
        let bad: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("ERROR") || l.contains("panicked") || l.contains("WARN"))
            .filter(|l| !l.contains("development JWT secret"))
            .collect();
        if !bad.is_empty() {
            eprintln!(
                "bench: edge {} logged {} warning/error line(s), e.g.:",
                e.id,
                bad.len()
            );
            for l in bad.iter().take(5) {
                eprintln!("    {l}");
            }
        }
    }
    if spawn {
        eprintln!("bench: edge logs in {}", log_dir.display());
    }
    Ok(())
}

struct Window {
    system_busy: f64,
    system_total: f64,
    secs: f64,
    published: u64,
    edge_cpu: Option<f64>,
    clients_cpu: f64,
    coordinator_cpu: f64,
}

fn per(v: f64, n: u64) -> f64 {
    if n == 0 {
        0.0
    } else {
        v / n as f64
    }
}

/// The counters of the newest `edge stats` line in an edge's log (numeric fields only).
fn edge_stats(log: &Path) -> Option<BTreeMap<String, u64>> {
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
fn edge_driver(log: &Path) -> String {
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

/// Runs `strace -f` on every measured edge for `secs` seconds while publishing continues, and
/// relates its write syscalls to the frames the clients received meanwhile. Each worker's loop
/// iteration is delimited by its wait syscall (epoll_wait / io_uring_enter), so write calls on
/// the same fd within one iteration are the writes of one flush of one connection.
fn run_strace(
    ctx: &mut Ctx,
    bin: &Path,
    measured: &[Measured],
    secs: f64,
    log_dir: &Path,
) -> Res<Value> {
    let pids: Vec<(String, u32, String)> = measured
        .iter()
        .filter_map(|m| Some((m.id.clone(), m.pid?, m.driver.clone())))
        .collect();
    if pids.is_empty() {
        return Ok(json!({"error": "no edge pids to trace"}));
    }
    std::fs::create_dir_all(log_dir).map_err(|e| e.to_string())?;
    let before = ctx.snap("strace-start")?;
    let mut outs = Vec::new();
    for (id, pid, _) in &pids {
        let out = log_dir.join(format!("strace-{id}.txt"));
        let mut cmd = Command::new(bin);
        cmd.args([
            "-f",
            "-qq",
            "-s",
            "0",
            "-e",
            &format!("trace={}", TRACED.join(",")),
            "-o",
        ])
        .arg(&out)
        .args(["-p", &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        sys::die_with_parent(&mut cmd, libc::SIGKILL);
        let child = cmd.spawn().map_err(|e| format!("cannot run strace: {e}"))?;
        ctx.kids.straces.push(child);
        outs.push(out);
    }
    eprintln!("bench: strace -f on {} edge(s) for {secs:.0} s", pids.len());
    let t0 = Instant::now();
    ctx.sleep(Duration::from_secs_f64(secs))?;
    for s in &ctx.kids.straces {
        sys::signal(s.id(), libc::SIGINT);
    }
    let traced = t0.elapsed().as_secs_f64();
    let mut straces = std::mem::take(&mut ctx.kids.straces);
    wait_all(straces.iter_mut(), Duration::from_secs(20));
    let after = ctx.snap("strace-end")?;
    let frames = after.frames - before.frames;
    let msgs = after.msgs - before.msgs;
    let mut total = TraceStats::default();
    let mut per_edge = Vec::new();
    for ((id, pid, driver), out) in pids.iter().zip(&outs) {
        let text = std::fs::read_to_string(out).unwrap_or_default();
        let t = parse_strace(&text);
        per_edge.push(json!({
            "id": id, "pid": pid, "driver": driver, "calls": t.calls, "data_writes": t.data_writes,
            "flushes": t.flushes, "eagain": t.eagain, "output": out,
        }));
        total.add(&t);
    }
    let enters = total.calls.get("io_uring_enter").copied().unwrap_or(0);
    let waits: u64 = ["epoll_wait", "epoll_pwait", "epoll_pwait2"]
        .iter()
        .map(|n| total.calls.get(*n).copied().unwrap_or(0))
        .sum();
    Ok(json!({
        "secs": traced,
        "frames_received": frames,
        "msgs_received": msgs,
        "calls": total.calls,
        "data_writes": total.data_writes,
        "data_writes_eagain": total.eagain,
        "connection_flushes": total.flushes,
        "writes_per_connection_flush": per(total.data_writes as f64, total.flushes),
        "frames_per_connection_flush": per(frames as f64, total.flushes),
        "writes_per_frame": per(total.data_writes as f64, frames),
        "io_uring_enter_calls": enters,
        "io_uring_enter_per_frame": per(enters as f64, frames),
        "epoll_wait_calls": waits,
        "note": "strace slows the traced edge a lot (it stops at every traced syscall), so only ratios \
                 count. data writes = sendmsg + writev; a connection flush = the writes to one fd within \
                 one worker loop iteration (between two wait syscalls). With the io_uring driver writes \
                 are SQEs, not syscalls: see io_uring_enter per frame instead.",
        "per_edge": per_edge,
    }))
}

/// The syscalls traced by --strace.
const TRACED: &[&str] = &[
    "sendmsg",
    "writev",
    "write",
    "sendto",
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
    "io_uring_enter",
];

#[derive(Default)]
struct TraceStats {
    calls: BTreeMap<String, u64>,
    /// sendmsg + writev (the data path; `write` is used for wake-ups, `sendto` by the link).
    data_writes: u64,
    eagain: u64,
    /// Distinct (thread, loop iteration, fd) with at least one data write.
    flushes: u64,
}

impl TraceStats {
    fn add(&mut self, o: &TraceStats) {
        for (k, v) in &o.calls {
            *self.calls.entry(k.clone()).or_default() += v;
        }
        self.data_writes += o.data_writes;
        self.eagain += o.eagain;
        self.flushes += o.flushes;
    }
}

/// Parses `strace -f` output (`[pid N] call(...) = r`, or `N call(...)` when written with -o).
fn parse_strace(text: &str) -> TraceStats {
    let mut t = TraceStats::default();
    let mut iteration: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    let mut seen: std::collections::HashSet<(u64, u64, u64)> = std::collections::HashSet::new();
    for line in text.lines() {
        let line = line.trim_start();
        let (tid, rest) = if let Some(r) = line.strip_prefix("[pid") {
            let r = r.trim_start();
            let end = r.find(']').unwrap_or(0);
            (
                r[..end].trim().parse::<u64>().unwrap_or(0),
                r[end + 1..].trim_start(),
            )
        } else {
            let end = line.find(|c: char| !c.is_ascii_digit()).unwrap_or(0);
            (
                line[..end].parse::<u64>().unwrap_or(0),
                line[end..].trim_start(),
            )
        };
        if let Some(r) = rest.strip_prefix("<... ") {
            let name = r.split_whitespace().next().unwrap_or("");
            if matches!(name, "sendmsg" | "writev") && r.contains("= -1 EAGAIN") {
                t.eagain += 1;
            }
            continue;
        }
        let Some(open) = rest.find('(') else { continue };
        let name = &rest[..open];
        if !TRACED.contains(&name) {
            continue;
        }
        *t.calls.entry(name.to_string()).or_default() += 1;
        match name {
            "epoll_wait" | "epoll_pwait" | "epoll_pwait2" | "io_uring_enter" => {
                *iteration.entry(tid).or_default() += 1;
            }
            "sendmsg" | "writev" => {
                t.data_writes += 1;
                if rest.contains("= -1 EAGAIN") {
                    t.eagain += 1;
                }
                let args = &rest[open + 1..];
                let fd_end = args.find(|c: char| !c.is_ascii_digit()).unwrap_or(0);
                let fd = args[..fd_end].parse::<u64>().unwrap_or(u64::MAX);
                let it = iteration.get(&tid).copied().unwrap_or(0);
                if seen.insert((tid, it, fd)) {
                    t.flushes += 1;
                }
            }
            _ => {}
        }
    }
    t
}

fn fmt_bytes(b: f64) -> String {
    if b.abs() >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / 1024.0 / 1024.0)
    } else if b.abs() >= 1024.0 {
        format!("{:.2} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

fn fmt_rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.1}")
    }
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

fn print_table(r: &Value) {
    let c = &r["config"];
    let conn = &r["connections"];
    let mem = &r["memory"];
    println!();
    println!("== roomcast-bench run ==");
    println!(
        "setup            {} edge(s) [{}], edge args {}, {} client procs x {} threads, transport {}",
        c["edges"],
        c["drivers"].as_array().map(|d| d.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(",")).unwrap_or_default(),
        c["edge_args"],
        c["client_procs"],
        c["client_threads"],
        c["transport"].as_str().unwrap_or("")
    );
    println!(
        "connections      {} joined of {} ({} failed) in {:.2} s; held at end {} (edges report {})",
        conn["joined"],
        conn["target"],
        conn["failed"],
        f(&conn["time_to_all_connected_secs"]),
        conn["held_at_end"],
        conn["edges_report_at_end"]
    );
    if conn["closed_by_server"]
        .as_object()
        .is_some_and(|o| !o.is_empty())
    {
        println!("closed by edge   {}", conn["closed_by_server"]);
    }
    if conn["failed_attempts"]
        .as_object()
        .is_some_and(|o| !o.is_empty())
    {
        println!("failed attempts  {}", conn["failed_attempts"]);
    }
    println!(
        "heartbeats       {} pings sent, {} answered, {} errors",
        conn["pings_sent"], conn["pongs"], conn["ping_errors"]
    );
    if let Some(h) = r.get("hold") {
        println!(
            "holding          {:.0} s: edges used {:.3} cores ({:.3} us CPU per connection per second)",
            f(&h["secs"]),
            f(&h["edge_cores_busy"]),
            f(&h["edge_cpu_us_per_conn_per_s"])
        );
    }
    if mem["edge_rss_per_conn"].is_number() {
        println!(
            "edge memory      RSS {} per idle connection (anon {}), {} connections on the edges",
            fmt_bytes(f(&mem["edge_rss_per_conn"])),
            fmt_bytes(f(&mem["edge_rss_anon_per_conn"])),
            mem["edge_connections"]
        );
    }
    println!(
        "kernel memory    slab {} + TCP buffers {} per connection (system-wide: client and edge socket both on this host)",
        fmt_bytes(f(&mem["kernel_slab_per_conn"])),
        fmt_bytes(f(&mem["kernel_tcp_mem_per_conn"]))
    );
    println!(
        "client memory    RSS {} per connection",
        fmt_bytes(f(&mem["client_rss_per_conn"]))
    );
    if let Some(d) = r.get("delivery") {
        let l = &d["latency_ms"];
        println!(
            "publishing       {:.1} msg/s achieved ({} in {:.1} s window)",
            f(&d["publish_rate"]),
            d["published_in_window"],
            f(&d["window_secs"])
        );
        println!(
            "delivered        {} msg/s in {} frames/s ({:.2} msgs/frame)",
            fmt_rate(f(&d["delivered_msgs_per_s"])),
            fmt_rate(f(&d["delivered_frames_per_s"])),
            f(&d["msgs_per_frame"])
        );
        println!(
            "completeness     {:.4}% ({} of {} expected; missing {}, duplicates {}, out of order {})",
            100.0 * f(&d["completeness"]),
            d["unique_msgs"],
            d["expected_msgs"],
            d["missing"],
            d["duplicates"],
            d["out_of_order"]
        );
        println!(
            "latency (ms)     p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  ({} samples)",
            f(&l["p50"]),
            f(&l["p90"]),
            f(&l["p99"]),
            f(&l["p999"]),
            f(&l["max"]),
            l["count"]
        );
        let cpu = &r["cpu"];
        if cpu["edge_cpu_secs"].is_number() {
            println!(
                "edge CPU         {:.2} s = {:.2} cores; {:.3} us per delivered frame, {:.3} us per delivered message",
                f(&cpu["edge_cpu_secs"]),
                f(&cpu["edge_cores_busy"]),
                f(&cpu["edge_us_per_frame"]),
                f(&cpu["edge_us_per_msg"])
            );
        }
        println!(
            "client CPU       {:.2} cores ({:.3} us per message); coordinator {:.2} s",
            f(&cpu["clients_cores_busy"]),
            f(&cpu["clients_us_per_msg"]),
            f(&cpu["coordinator_cpu_secs"])
        );
        println!(
            "host CPU         {:.2} of {:.0} cores busy during the window, {:.2} of them outside this benchmark",
            f(&cpu["system_busy_cores"]),
            f(&cpu["system_cores"]),
            f(&cpu["other_busy_cores"])
        );
    }
    if let Some(c) = r.get("edge_counters") {
        let d = &c["delta"];
        println!(
            "edge counters    window: {} flushes, {} write calls = {:.3} vectored writes per connection per flush, {:.2} iovecs per write, {:.2} frames per flush; drops queue {} budget {} backlog {}",
            d["flushes"],
            d["write_calls"],
            f(&c["write_calls_per_flush"]),
            f(&c["iovecs_per_write"]),
            f(&c["frames_per_flush"]),
            d["dropped_queue"],
            d["dropped_budget"],
            d["dropped_worker_backlog"],
        );
    }
    if let Some(s) = r.get("strace") {
        if s["data_writes"].is_number() {
            println!(
                "syscalls         {:.1} s traced: {} frames; {} sendmsg/writev ({} EAGAIN) in {} connection flushes = {:.3} writes per connection per flush, {:.2} frames per flush, {:.3} writes per frame",
                f(&s["secs"]),
                s["frames_received"],
                s["data_writes"],
                s["data_writes_eagain"],
                s["connection_flushes"],
                f(&s["writes_per_connection_flush"]),
                f(&s["frames_per_connection_flush"]),
                f(&s["writes_per_frame"]),
            );
            println!(
                "                 {} io_uring_enter ({:.4}/frame), {} epoll waits",
                s["io_uring_enter_calls"],
                f(&s["io_uring_enter_per_frame"]),
                s["epoll_wait_calls"]
            );
        }
    }
    for e in r["edges"].as_array().into_iter().flatten() {
        if r.get("delivery").is_none() {
            println!(
                "  edge {} pid {} [{}]: {} conns idle, RSS {} -> {} ({} per conn), CPU while holding {:.2} s",
                e["id"].as_str().unwrap_or("?"),
                e["pid"],
                e["driver"].as_str().unwrap_or("?"),
                e["connections_idle"],
                fmt_bytes(f(&e["rss_before"])),
                fmt_bytes(f(&e["rss_idle"])),
                fmt_bytes(f(&e["rss_per_conn"])),
                f(&e["cpu_secs_hold"]),
            );
            continue;
        }
        println!(
            "  edge {} pid {} [{}]: {} conns idle, RSS {} -> {} ({} per conn), CPU {:.2} s, report {} frames/s",
            e["id"].as_str().unwrap_or("?"),
            e["pid"],
            e["driver"].as_str().unwrap_or("?"),
            e["connections_idle"],
            fmt_bytes(f(&e["rss_before"])),
            fmt_bytes(f(&e["rss_idle"])),
            fmt_bytes(f(&e["rss_per_conn"])),
            f(&e["cpu_secs_window"]),
            fmt_rate(f(&e["report_frames_out_per_s"]))
        );
    }
    println!("summary: {}", r["summary"].as_str().unwrap_or(""));
}

fn summary(args: &RunArgs, r: &Value) -> String {
    let c = &r["config"];
    let conn = &r["connections"];
    let mem = &r["memory"];
    let drivers = c["drivers"]
        .as_array()
        .and_then(|d| d.first())
        .and_then(|d| d.as_str())
        .unwrap_or("?")
        .to_string();
    let tick = args
        .edge_args
        .iter()
        .find_map(|a| a.strip_prefix("--tick-ms=").map(|v| format!("tick {v} ms")))
        .unwrap_or_else(|| "tick default".into());
    let mut s = format!(
        "{} {} conns on {} edge(s) ({drivers}, {tick}), {} room(s): {}/{} joined in {:.1} s",
        args.transport.name(),
        args.conns,
        c["edges"],
        args.rooms,
        conn["joined"],
        args.conns,
        f(&conn["time_to_all_connected_secs"]),
    );
    if mem["edge_rss_per_conn"].is_number() {
        s += &format!(
            ", edge RSS {}/conn",
            fmt_bytes(f(&mem["edge_rss_per_conn"]))
        );
    }
    s += &format!(
        ", kernel slab {}/conn",
        fmt_bytes(f(&mem["kernel_slab_per_conn"]))
    );
    if let Some(d) = r.get("delivery") {
        let l = &d["latency_ms"];
        s += &format!(
            "; {} msg/s x {} B p{}: {} msg/s delivered in {} frames/s, {:.3}% complete, latency p50 {:.1} ms p99 {:.1} ms",
            args.rate,
            args.payload,
            args.priority,
            fmt_rate(f(&d["delivered_msgs_per_s"])),
            fmt_rate(f(&d["delivered_frames_per_s"])),
            100.0 * f(&d["completeness"]),
            f(&l["p50"]),
            f(&l["p99"]),
        );
        if r["cpu"]["edge_us_per_frame"].is_number() {
            s += &format!(
                ", edge {:.2} us CPU/frame ({:.3} us/msg)",
                f(&r["cpu"]["edge_us_per_frame"]),
                f(&r["cpu"]["edge_us_per_msg"])
            );
        }
    }
    if let Some(c) = r.get("edge_counters") {
        s += &format!(
            ", {:.3} writes per connection per flush ({:.2} frames/flush)",
            f(&c["write_calls_per_flush"]),
            f(&c["frames_per_flush"])
        );
    }
    if let Some(st) = r.get("strace") {
        if st["data_writes"].is_number() {
            if drivers == "uring" {
                s += &format!(
                    ", {:.4} io_uring_enter/frame",
                    f(&st["io_uring_enter_per_frame"])
                );
            } else {
                s += &format!(
                    ", {:.2} sendmsg per connection per flush ({:.2} frames/flush)",
                    f(&st["writes_per_connection_flush"]),
                    f(&st["frames_per_connection_flush"])
                );
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_strace_output_into_flushes() {
        let text = "\
            [pid  10] epoll_wait(7, [...], 1024, 5) = 3\n\
            [pid  10] sendmsg(20, {msg_name=NULL}, MSG_NOSIGNAL) = 100\n\
            [pid  10] sendmsg(20, {msg_name=NULL}, MSG_NOSIGNAL) = -1 EAGAIN (Resource temporarily unavailable)\n\
            [pid  10] sendmsg(21, {msg_name=NULL}, MSG_NOSIGNAL) = 100\n\
            [pid  11] sendmsg(20,  <unfinished ...>\n\
            [pid  10] epoll_wait(7, [...], 1024, 5) = 1\n\
            [pid  11] <... sendmsg resumed>) = -1 EAGAIN (Resource temporarily unavailable)\n\
            12 sendmsg(20, {msg_name=NULL}, MSG_NOSIGNAL) = 100\n\
            [pid  10] sendmsg(20, {msg_name=NULL}, MSG_NOSIGNAL) = 100\n\
            [pid  10] write(5, \"\", 8) = 8\n";
        let t = parse_strace(text);
        assert_eq!(t.data_writes, 6);
        assert_eq!(t.eagain, 2);
        // (10,1,20) (10,1,21) (11,0,20) (12,0,20) (10,2,20)
        assert_eq!(t.flushes, 5);
        assert_eq!(t.calls.get("epoll_wait"), Some(&2));
        assert_eq!(t.calls.get("write"), Some(&1));
    }
}
