//! `roomcast-bench run`: the coordinator.
//!
//! Phases: the floor measurement → start the system (the control plane and edges, the edges
//! alone when the bench plays the control plane itself, or find a running one) → baseline memory
//! → client processes connect and join → idle memory → hold, or publish (warm-up, measured
//! window, optional strace) → drain → the clients' final reports → the edges' own connection and
//! room counts checked against the clients' → results (table, JSON, plot). Every wait is
//! bounded; every child is stopped on the way out (also on Ctrl-C), and children die with the
//! coordinator if it is killed.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use roomcast_proto::message::PRIORITIES;
use serde_json::{json, Value};

use crate::api::{Api, ControlSink, Metrics};
use crate::client::ip_add;
use crate::dist::{room_name, PublishSpread, RoomPicker};
use crate::floor::{self, FloorArgs, FloorResult, Syscall};
use crate::kernel_tcp::{self, Counters};
use crate::linksrv::{LinkServer, LinkSink};
use crate::merge::Expect;
use crate::msgs::{new_latency_histogram, ClientMsg, Report};
use crate::nats::{self, Monitor, NatsSink};
use crate::observer::Observer;
use crate::progress::Live;
use crate::publish::{MergeLane, Plan, Probe, PubState, Publisher, Ramp, Sink};
use crate::report::{self, per, Window};
use crate::scenario::{PublishVia, RunArgs, ServerKind, TokenSource};
use crate::sys::{self, ProcMem};
use crate::system::{self, ClientProc, Ctx, EdgeLoad, EdgePlan, EdgeStats, Measured, WindowDelta};
use crate::term::say;
use crate::upstream::{self, MetricsProbe};
use crate::{plot, strace};

type Res<T> = Result<T, String>;

/// Connections one client process or one edge should hold at most (20,000 fds here).
const PER_PROCESS: usize = 15_000;
/// The longest drain after publishing stops.
const MAX_DRAIN: Duration = Duration::from_secs(60);
/// The drain ends once the clients have received nothing for this long (they tick every second).
const QUIET_BEFORE_FINAL: Duration = Duration::from_secs(2);
/// Rooms whose member counts are checked through the control plane's API (one request each).
const ROOMS_CHECKED_VIA_API: usize = 50;

/// How many processes of each kind, and how big.
struct Layout {
    edges: usize,
    procs: usize,
    max_conns_per_edge: usize,
    fd_hard: u64,
}

/// The system once it is up.
struct System {
    observer: Arc<Observer>,
    edges: Vec<Measured>,
    control_pid: Option<u32>,
    /// Where the clients connect.
    dial: Vec<SocketAddr>,
    link: Option<Arc<LinkServer>>,
    /// The sample platform backend (`--send-proxy`).
    backend_pid: Option<u32>,
    /// Each edge's admin (`/metrics`) address, when the bench started it and it logged one.
    edge_admins: Vec<Option<SocketAddr>>,
}

/// CPU and counters at one instant, to take differences over a window.
struct Snapshot {
    at: Instant,
    edges: Vec<Option<f64>>,
    control: Option<f64>,
    backend: Option<f64>,
    clients: Vec<Option<f64>>,
    me: f64,
    host: (f64, f64),
    /// Host interrupt + softirq and steal time.
    host_irq_steal: (f64, f64),
    loads: Vec<EdgeLoad>,
    counters: Vec<Option<EdgeStats>>,
    published: u64,
    /// Of them, merge traffic per kind.
    merge_published: [u64; 3],
    /// The kernel's TCP counters (system-wide).
    tcp: Option<Counters>,
}

impl Snapshot {
    fn take(running: &System, client_pids: &[u32], publisher: Option<&PubState>) -> Snapshot {
        Snapshot {
            at: Instant::now(),
            edges: running
                .edges
                .iter()
                .map(|m| m.pid.and_then(sys::proc_cpu_secs))
                .collect(),
            control: running.control_pid.and_then(sys::proc_cpu_secs),
            backend: running.backend_pid.and_then(sys::proc_cpu_secs),
            clients: client_pids.iter().map(|&p| sys::proc_cpu_secs(p)).collect(),
            me: sys::self_cpu_secs(),
            host: sys::system_cpu_secs(),
            host_irq_steal: sys::system_irq_steal_secs(),
            loads: running.observer.edges(),
            counters: running
                .edges
                .iter()
                .map(|m| m.log.as_deref().and_then(system::edge_stats))
                .collect(),
            published: publisher.map_or(0, |p| p.published.load(Ordering::Relaxed)),
            merge_published: publisher.map_or([0; 3], PubState::merge_published),
            tcp: kernel_tcp::read(),
        }
    }
}

/// What changed between two snapshots; adds each edge's CPU and report rates to `edges_json`.
fn window_between(a: &Snapshot, b: &Snapshot, edges_json: &mut [Value]) -> Window {
    let secs = b.at.duration_since(a.at).as_secs_f64();
    let mut edge_cpu = None;
    for (i, e) in edges_json.iter_mut().enumerate() {
        if let (Some(x), Some(y)) = (a.edges[i], b.edges[i]) {
            *edge_cpu.get_or_insert(0.0) += y - x;
            e["cpu_secs_window"] = json!(y - x);
        }
        let id = e["id"].as_str().unwrap_or_default().to_string();
        let load = |s: &Snapshot| s.loads.iter().find(|l| l.id == id).cloned();
        if let (Some(x), Some(y)) = (load(a), load(b)) {
            e["report_frames_out_per_s"] =
                json!(y.frames_out.saturating_sub(x.frames_out) as f64 / secs);
            e["report_bytes_out_per_s"] =
                json!(y.bytes_out.saturating_sub(x.bytes_out) as f64 / secs);
            e["report_msgs_dropped"] = json!(y.msgs_dropped.saturating_sub(x.msgs_dropped));
            e["report_slow_closes"] = json!(y.slow_closes.saturating_sub(x.slow_closes));
        }
    }
    Window {
        secs,
        published: b.published - a.published,
        merge_published: [0, 1, 2].map(|i| b.merge_published[i] - a.merge_published[i]),
        edge_cpu,
        control_cpu: b.control.zip(a.control).map(|(y, x)| y - x),
        backend_cpu: b.backend.zip(a.backend).map(|(y, x)| y - x),
        clients_cpu: a
            .clients
            .iter()
            .zip(&b.clients)
            .filter_map(|(x, y)| Some((*y)? - (*x)?))
            .sum(),
        me_cpu: b.me - a.me,
        host_busy: b.host.0 - a.host.0,
        host_total: b.host.1 - a.host.1,
        host_irq: b.host_irq_steal.0 - a.host_irq_steal.0,
        host_steal: b.host_irq_steal.1 - a.host_irq_steal.1,
        tcp: a
            .tcp
            .as_ref()
            .zip(b.tcp.as_ref())
            .map(|(x, y)| kernel_tcp::delta(x, y)),
    }
}

/// The control plane's and the edges' CPU in the window before the drop and after it.
fn storm_cpu(a: &Snapshot, drop: &Snapshot, b: &Snapshot) -> Value {
    let cores = |x: &Snapshot, y: &Snapshot, cpu: fn(&Snapshot) -> Option<f64>| {
        let secs = y.at.duration_since(x.at).as_secs_f64();
        Some((cpu(y)? - cpu(x)?) / secs.max(1e-3))
    };
    let control = |s: &Snapshot| s.control;
    let edges = |s: &Snapshot| -> Option<f64> {
        let v: Vec<f64> = s.edges.iter().flatten().copied().collect();
        (!v.is_empty()).then(|| v.iter().sum())
    };
    json!({
        "secs_before": drop.at.duration_since(a.at).as_secs_f64(),
        "secs_after": b.at.duration_since(drop.at).as_secs_f64(),
        "control_cores_before": cores(a, drop, control),
        "control_cores_after": cores(drop, b, control),
        "control_cpu_secs_after": drop.control.zip(b.control).map(|(x, y)| y - x),
        "edge_cores_before": cores(a, drop, edges),
        "edge_cores_after": cores(drop, b, edges),
    })
}

/// The edges' own counters (from their `edge stats` log lines) over the window.
fn edge_counters(a: &Snapshot, b: &Snapshot) -> Option<Value> {
    let mut delta: BTreeMap<String, u64> = BTreeMap::new();
    let mut any = false;
    for (x, y) in a.counters.iter().zip(&b.counters) {
        if let (Some(x), Some(y)) = (x, y) {
            any = true;
            for (k, vy) in &y.counters {
                *delta.entry(k.clone()).or_default() +=
                    vy.saturating_sub(x.counters.get(k).copied().unwrap_or(0));
            }
        }
    }
    let g = |k: &str| delta.get(k).copied().unwrap_or(0);
    any.then(|| {
        json!({
            "source": "the edges' own `edge stats` log lines (1 s granularity) across the measured window",
            "write_calls_per_flush": per(g("write_calls") as f64, g("flushes")),
            "iovecs_per_write": per(g("write_iovecs_sum") as f64, g("write_calls")),
            "frames_per_flush": per(g("frames_queued") as f64, g("flushes")),
            "delta": delta,
        })
    })
}

/// The edges' merge windows over the window, from their `edge stats` lines: the mean effective
/// window and how many stretched or hit the cap; `None` when no edge logs them (older edges).
fn window_totals(a: &Snapshot, b: &Snapshot) -> Option<Value> {
    let mut total = WindowDelta::default();
    let mut edges = 0;
    let mut channels_stretched = 0;
    for (x, y) in a.counters.iter().zip(&b.counters) {
        let (Some(x), Some(y)) = (
            x.as_ref().and_then(EdgeStats::windows),
            y.as_ref().and_then(EdgeStats::windows),
        ) else {
            continue;
        };
        edges += 1;
        total.add(&WindowDelta::between(&x, &y));
        channels_stretched += y.channels_stretched;
    }
    (edges > 0).then(|| {
        json!({
            "source": "the edges' `edge stats` lines (window_seconds_sum/count, windows_stretched/capped) across the measured window",
            "edges": edges,
            "mean_ms": total.mean_ms(),
            "windows": total.count,
            "stretched": total.stretched,
            "capped": total.capped,
            "channels_stretched_at_end": channels_stretched,
        })
    })
}

pub fn run(args: &RunArgs) -> i32 {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&stop)) {
            say(&format!("bench: cannot install a signal handler: {e}"));
        }
    }
    let result = if args.merge_compare {
        run_merge_compare(args, &stop)
    } else {
        run_once(args, &stop).map(drop)
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            say(&format!("roomcast-bench: {e}"));
            1
        }
    }
}

/// One run from start to end, its children stopped after it; its results.
fn run_once(args: &RunArgs, stop: &Arc<AtomicBool>) -> Res<Value> {
    let mut ctx = Ctx::new(Arc::clone(stop));
    let result = run_inner(args, &mut ctx);
    ctx.kids.shutdown();
    result
}

/// `--merge-compare`: the run with the merge traffic's rules, then the same without them, each
/// with a fresh system and fresh viewers (logs in `with-merge-rules/` and `without-merge-rules/`
/// of the log directory); both reports, then the comparison. `--json-out` gets
/// `{"with_rules": …, "without_rules": …, "comparison": …}`; `--plot FILE.svg` draws the first,
/// `FILE.without-merge.svg` the second.
fn run_merge_compare(args: &RunArgs, stop: &Arc<AtomicBool>) -> Res<()> {
    let log_dir = args.log_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("roomcast-bench-{}", std::process::id()))
    });
    let leg = |rules: bool| {
        let mut leg = args.clone();
        leg.merge_compare = false;
        leg.no_merge_rules = !rules;
        leg.json_out = None;
        let name = if rules {
            "with-merge-rules"
        } else {
            "without-merge-rules"
        };
        leg.log_dir = Some(log_dir.join(name));
        if !rules {
            leg.plot = args
                .plot
                .as_ref()
                .map(|p| p.with_extension("without-merge.svg"));
        }
        leg
    };
    say("bench: --merge-compare: run 1 of 2, the merge traffic with its merge rules");
    let with = run_once(&leg(true), stop)?;
    // The first run's sockets and processes are gone; let the ports settle.
    std::thread::sleep(Duration::from_secs(2));
    say("bench: --merge-compare: run 2 of 2, the same traffic without merge rules");
    let without = run_once(&leg(false), stop)?;
    let comparison = report::merge_comparison(&with, &without);
    report::print_merge_comparison(&comparison);
    if let Some(path) = &args.json_out {
        let all = json!({
            "version": 2,
            "merge_compare": true,
            "with_rules": with,
            "without_rules": without,
            "comparison": comparison,
        });
        let text = serde_json::to_string_pretty(&all).expect("json");
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        say(&format!("bench: wrote {}", path.display()));
    }
    Ok(())
}

fn run_inner(args: &RunArgs, ctx: &mut Ctx) -> Res<Value> {
    let layout = layout(args)?;
    let log_dir = args.log_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("roomcast-bench-{}", std::process::id()))
    });
    std::fs::create_dir_all(&log_dir).map_err(|e| format!("{}: {e}", log_dir.display()))?;
    let population = args.population();
    let members = population.members(args.conns);
    let group_sizes = population.group_sizes(args.conns);

    // The floor first, while the machine is quiet (holding publishes nothing to compare).
    let floor = (!args.no_floor && !args.hold_only)
        .then(|| measure_floor(args))
        .flatten();
    let kernel_start = sys::kernel_mem();
    let mut system = match args.server {
        ServerKind::Roomcast => start_system(args, ctx, &layout, &log_dir)?,
        ServerKind::Nats => start_nats(args, ctx, &log_dir)?,
    };

    // Baselines before any connection.
    ctx.sleep(Duration::from_secs(1))?;
    for m in system
        .edges
        .iter_mut()
        .filter(|_| args.server == ServerKind::Roomcast)
    {
        if let Some(log) = &m.log {
            m.driver = system::edge_driver(log);
        }
    }
    let mem_before = edge_memory(&system.edges);
    let kernel_before = sys::kernel_mem();

    let token_file = match args.tokens {
        TokenSource::Local => None,
        TokenSource::Control => Some(fetch_tokens(args, &log_dir)?),
    };
    // The kernel's TCP counters from here to the end, and its socket buffers once a second.
    let tcp_limits = kernel_tcp::tcp_mem();
    let tcp_run_start = kernel_tcp::read();
    let tcp_sampler = kernel_tcp::Sampler::start(tcp_limits);
    let live = Live::new(layout.procs);
    live.set_processes(
        system.edges.iter().filter_map(|m| m.pid).collect(),
        system.control_pid,
    );
    live.set_edge_logs(system.edges.iter().filter_map(|m| m.log.clone()).collect());
    let client_pids = start_clients(
        args,
        ctx,
        &layout,
        &system.dial,
        token_file.as_deref(),
        &live,
    )?;
    let progress = live.start(Arc::clone(&system.observer), args.conns);
    live.set_phase("connect");
    let t_connect = Instant::now();
    let connected = ctx.collect(
        "connections",
        Duration::from_secs(args.connect_timeout),
        |m| match m {
            ClientMsg::Connected(c) => Some(c),
            _ => None,
        },
    )?;
    let connect_secs = t_connect.elapsed().as_secs_f64();
    let ready: u64 = connected.iter().map(|c| c.ready).sum();
    say(&format!(
        "bench: {ready} connections joined, {} failed, in {connect_secs:.2} s",
        connected.iter().map(|c| c.failed).sum::<u64>()
    ));

    // Idle memory: give the edges two report intervals to settle and report.
    live.set_phase("idle");
    ctx.sleep(Duration::from_secs(3))?;
    let mem_idle = edge_memory(&system.edges);
    let kernel_idle = sys::kernel_mem();
    let control_idle = control_probe(args, system.control_pid);
    let loads_idle = system.observer.edges();
    let clients_rss: u64 = client_pids
        .iter()
        .filter_map(|&p| sys::proc_mem(p))
        .map(|m| m.rss)
        .sum();
    let mut edges_json: Vec<Value> = system
        .edges
        .iter()
        .map(|m| json!({"id": m.id, "pid": m.pid, "driver": m.driver}))
        .collect();
    let memory = report::memory_json(
        &mut edges_json,
        &loads_idle,
        (&mem_before, &mem_idle),
        (kernel_start, kernel_before, kernel_idle),
        ready,
        clients_rss,
    );
    let results = json!({
        "version": 2,
        "scenario": args.name(),
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "config": args,
        "host": report::host_json(),
        "floor": floor,
        "system": {
            "server": args.server,
            "publish_via": publish_via_text(args),
            "edges": system.edges.iter().map(|m| json!({"id": m.id, "pid": m.pid, "driver": m.driver})).collect::<Vec<_>>(),
            "drivers": drivers(&system.edges),
            "control_pid": system.control_pid,
            "dial": system.dial.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "client_procs": layout.procs,
            "max_connections_per_edge": layout.max_conns_per_edge,
            "log_dir": log_dir,
        },
        "connections": report::connections_json(args, &connected, connect_secs),
        "memory": memory,
    });
    let mut run = Run {
        args,
        ctx,
        system,
        live,
        client_pids,
        log_dir,
        results,
        edges_json,
        control_idle,
        tcp: TcpWatch {
            limits: tcp_limits,
            run_start: tcp_run_start,
            sampler: tcp_sampler,
            window: None,
            peak_window: None,
        },
        merge: None,
        upstream_probes: None,
    };
    let (published, window) = if args.hold_only {
        run.hold(ready)?;
        (vec![[0; PRIORITIES]; args.rooms], None)
    } else {
        let (published, window) = run.publish(&members)?;
        (published, Some(window))
    };
    let total = run.final_reports(&published)?;
    run.judge(
        &total,
        &members,
        &published,
        group_sizes,
        window.as_ref(),
        floor.as_ref(),
    );
    drop(progress);
    run.write_outputs()?;
    Ok(run.results)
}

/// A run once the clients are connected: what the phases after that share.
struct Run<'a> {
    args: &'a RunArgs,
    ctx: &'a mut Ctx,
    system: System,
    live: Arc<Live>,
    client_pids: Vec<u32>,
    log_dir: PathBuf,
    results: Value,
    /// Per edge: identity, memory, CPU and report rates.
    edges_json: Vec<Value>,
    /// The control plane's /metrics and RSS once the clients had joined.
    control_idle: ControlProbe,
    tcp: TcpWatch,
    /// What the merge traffic published (with merge traffic only).
    merge: Option<report::MergePublished>,
    /// Upstream (`--senders`): the edges' and the control plane's `/metrics` at the window's
    /// start and end.
    upstream_probes: Option<(MetricsProbe, MetricsProbe)>,
}

/// The control plane's `/metrics` and RSS at one moment (either may be missing).
type ControlProbe = (Option<Metrics>, Option<u64>);

/// Reads the control plane's `/metrics` and RSS (roomcast through its control plane only).
fn control_probe(args: &RunArgs, pid: Option<u32>) -> ControlProbe {
    if args.server != ServerKind::Roomcast || args.publish_via != PublishVia::Control {
        return (None, None);
    }
    let metrics = Api::new(&args.control_url, &args.api_key)
        .and_then(|mut api| api.metrics())
        .map_err(|e| {
            say(&format!(
                "bench: cannot read the control plane's /metrics: {e}"
            ))
        })
        .ok();
    (metrics, pid.and_then(sys::proc_mem).map(|m| m.rss))
}

/// The kernel's TCP counters and socket buffer peaks, watched from before the clients start.
struct TcpWatch {
    limits: Option<kernel_tcp::TcpMem>,
    run_start: Option<Counters>,
    sampler: kernel_tcp::Sampler,
    /// Counter deltas and the sockstat peak over the measured window (or the hold).
    window: Option<Counters>,
    peak_window: Option<u64>,
}

impl Run<'_> {
    /// Holds the connections for --duration, measuring the edges' CPU.
    fn hold(&mut self, ready: u64) -> Res<()> {
        self.live.set_phase("hold");
        say(&format!(
            "bench: holding {ready} connections for {:.0} s (pings every {} s)",
            self.args.duration, self.args.ping_secs
        ));
        self.tcp.sampler.mark();
        let a = Snapshot::take(&self.system, &self.client_pids, None);
        self.ctx
            .sleep(Duration::from_secs_f64(self.args.duration))?;
        let b = Snapshot::take(&self.system, &self.client_pids, None);
        self.tcp.peak_window = self.tcp.sampler.mark();
        let w = window_between(&a, &b, &mut self.edges_json);
        self.tcp.window = w.tcp.clone();
        let cpu = w.edge_cpu.unwrap_or(0.0);
        self.results["hold"] = json!({
            "secs": w.secs,
            "edge_cpu_secs": w.edge_cpu,
            "edge_cores": cpu / w.secs,
            "edge_cpu_us_per_conn_per_s": per(cpu * 1e6 / w.secs, ready),
        });
        Ok(())
    }

    /// Publishes through the warm-up, the measured window (and strace), then drains. Returns
    /// what was published per room and priority, and the window's measurements.
    fn publish(&mut self, members: &[u64]) -> Res<(Vec<[u64; PRIORITIES]>, Window)> {
        let args = self.args;
        let picker = RoomPicker::new(members, args.publish_spread);
        let sinks = (0..args.publishers)
            .map(|_| publish_sink(args, &self.system))
            .collect::<Res<Vec<_>>>()?;
        let nats = args.server == ServerKind::Nats;
        say(&format!(
            "bench: publishing {} ({} B, priorities {}) to {} room(s) via {} ({} publisher thread(s){}); warm-up {:.0} s, window {:.0} s",
            args.rate_text(),
            args.payload,
            args.priority_mix,
            picker.occupied().len(),
            publish_via_text(args),
            args.publishers,
            if args.replay_batches {
                format!(", each replaying one batch of {}", args.publish_batch)
            } else {
                String::new()
            },
            args.warmup,
            args.duration
        ));
        // --probe-rate: priority-0 messages one per request, on a connection of their own.
        let probe = if args.probe_rate > 0.0 {
            say(&format!(
                "bench: probing with {} priority-0 msg/s, one per request",
                args.probe_rate
            ));
            Some(Probe {
                sink: publish_sink(args, &self.system)?,
                plan: Plan {
                    rooms: args.rooms,
                    rate: args.probe_rate,
                    payload: args.payload,
                    mix: "0".parse().expect("priority 0 is a mix"),
                    picker: RoomPicker::new(members, PublishSpread::Even),
                    ramp: None,
                    max_batch: 1,
                    replay: false,
                    numbered: false,
                },
            })
        } else {
            None
        };
        // Merge traffic: a thread and a connection of its own.
        let traffic = args.merge_traffic();
        let occupied = picker.occupied().len();
        let merge_lane = if traffic.any() {
            let rooms = picker.occupied().to_vec();
            say(&format!(
                "bench: merge traffic {} merge rules: {}",
                if traffic.rules { "with" } else { "WITHOUT" },
                report::traffic_text(&traffic, rooms.len()),
            ));
            Some(MergeLane {
                sink: publish_sink(args, &self.system)?,
                traffic,
                rooms,
                max_batch: args.publish_batch,
            })
        } else {
            None
        };
        let publisher = Publisher::start(
            sinks,
            Plan {
                rooms: args.rooms,
                rate: args.rate,
                // Over the measured window, which starts `warmup` seconds after publishing.
                ramp: args.ramp_to.map(|to| Ramp {
                    start: args.warmup,
                    secs: args.duration,
                    to,
                }),
                payload: args.payload,
                mix: args.priority_mix,
                picker,
                max_batch: match args.publish_via {
                    PublishVia::Control if !nats => args.publish_batch,
                    _ => 10_000,
                },
                replay: args.replay_batches,
                numbered: nats,
            },
            probe,
            merge_lane,
        );
        let state = Arc::clone(publisher.state());
        self.live.set_publisher(Some(Arc::clone(&state)));
        let senders = args.senders();
        if senders > 0 {
            say(&format!(
                "bench: upstream: {senders} senders x {}/s of `{}` = {} sends/s from the warm-up to the end of the window (control plane send mode {})",
                args.sends_per_sender_per_s,
                args.send_kind,
                senders as f64 * args.sends_per_sender_per_s,
                args.send_mode().map_or("default", |m| m.name()),
            ));
        }
        self.live.set_phase("warmup");
        self.ctx.tell_clients("warmup")?;
        // The window starts and ends on the publisher's clock, where a ramp starts and ends.
        let window_start = publisher.started() + Duration::from_secs_f64(args.warmup);
        let window_end = window_start + Duration::from_secs_f64(args.duration);
        self.ctx
            .sleep(window_start.saturating_duration_since(Instant::now()))?;

        self.live.set_phase("window");
        self.ctx.tell_clients("start")?;
        self.tcp.sampler.mark();
        state.measuring.store(true, Ordering::Relaxed);
        let a = Snapshot::take(&self.system, &self.client_pids, Some(&state));
        let probe_a = (senders > 0).then(|| MetricsProbe::take(args, &self.system.edge_admins));
        // --drop-all-at: the reconnect storm, inside the window.
        let storm = match args.drop_all_at {
            Some(at) => {
                let at = window_start + Duration::from_secs_f64(at);
                self.ctx
                    .sleep(at.saturating_duration_since(Instant::now()))?;
                let before = Snapshot::take(&self.system, &self.client_pids, Some(&state));
                self.ctx.tell_clients("drop")?;
                let t = self.live.elapsed();
                say(&format!(
                    "bench: dropped every client connection at once, {:.1} s into the window; \
                     each reconnects within {} s and resumes with since",
                    before.at.duration_since(a.at).as_secs_f64(),
                    args.reconnect_jitter
                ));
                Some((before, t))
            }
            None => None,
        };
        self.ctx
            .sleep(window_end.saturating_duration_since(Instant::now()))?;
        self.ctx.tell_clients("end")?;
        let b = Snapshot::take(&self.system, &self.client_pids, Some(&state));
        if let Some(probe_a) = probe_a {
            self.upstream_probes =
                Some((probe_a, MetricsProbe::take(args, &self.system.edge_admins)));
        }
        if let Some((drop, t)) = &storm {
            self.results["recovery"] = json!({
                "drop_t": t,
                "drop_at_window_secs": drop.at.duration_since(a.at).as_secs_f64(),
                "reconnect_jitter_secs": args.reconnect_jitter,
                "cpu": storm_cpu(&a, drop, &b),
            });
        }
        state.measuring.store(false, Ordering::Relaxed);
        self.tcp.peak_window = self.tcp.sampler.mark();
        self.live.set_phase("after");
        let w = window_between(&a, &b, &mut self.edges_json);
        self.tcp.window = w.tcp.clone();
        if let Some(c) = edge_counters(&a, &b) {
            self.results["edge_counters"] = c;
        }
        if nats {
            self.results["nats"]["window"] = nats_window(&a, &b);
        }
        if let Some(windows) = window_totals(&a, &b) {
            self.results["windows"] = windows;
        }
        if let (Some(bin), Some(secs)) = (strace_binary(args), args.strace) {
            self.results["strace"] =
                strace::run(self.ctx, &bin, &self.system.edges, secs, &self.log_dir)?;
        }
        let published = publisher.stop();
        self.live.set_publisher(None);
        if traffic.any() {
            self.merge = Some(report::MergePublished {
                traffic,
                pk_rooms: occupied,
                total: state.merge_published(),
                window: w.merge_published,
                finals: state.merge_finals.load(Ordering::Relaxed),
                held: state.merge_held.load(Ordering::Relaxed),
                requests: state.merge_calls.load(Ordering::Relaxed),
                rooms: state
                    .merge_expect
                    .lock()
                    .expect("merge expect lock")
                    .clone(),
            });
        }
        let errors = state.errors.lock().expect("errors lock").clone();
        let calls = state.send_calls.load(Ordering::Relaxed);
        let window_calls = state
            .window_calls
            .lock()
            .expect("window calls lock")
            .take()
            .unwrap_or_else(new_latency_histogram);
        let probe_calls = state
            .probe_calls
            .lock()
            .expect("probe calls lock")
            .take()
            .unwrap_or_else(new_latency_histogram);
        // The load's own; merge traffic is reported apart (`merge`), but counts in `cpu`'s
        // control µs per published message: the control plane handled it all.
        let load_in_window = w.published - w.merge_published.iter().sum::<u64>();
        self.results["publishing"] = json!({
            "total": published.iter().flatten().sum::<u64>(),
            "in_window": load_in_window,
            "rate_in_window": load_in_window as f64 / w.secs,
            "with_merge_traffic_in_window": w.published,
            "late_rounds": state.late_rounds.load(Ordering::Relaxed),
            "errors": errors.values().sum::<u64>(),
            "error_kinds": errors,
            "unrouted": state.unrouted.load(Ordering::Relaxed),
            "send_calls": calls,
            "publishers": args.publishers,
            "send_ms_mean": per(state.send_us.load(Ordering::Relaxed) as f64 / 1000.0, calls),
            "replay_batches": args.replay_batches,
            // --ramp-to: the rate rose (or fell) linearly over the window.
            "ramp": args.ramp_to.map(|to| json!({
                "from": args.rate,
                "to": to,
                "secs": args.duration,
                "planned_in_window": (args.rate + to) / 2.0 * args.duration,
            })),
            // Each call is one POST /v1/messages (or one write to the edge links).
            "window_calls": window_calls.len(),
            "window_calls_per_s": window_calls.len() as f64 / w.secs,
            "window_call_ms": report::latency_json(&window_calls),
        });
        if args.probe_rate > 0.0 {
            self.results["publishing"]["probe"] = json!({
                "rate": args.probe_rate,
                "window_calls": probe_calls.len(),
                "window_calls_per_s": probe_calls.len() as f64 / w.secs,
                "window_call_ms": report::latency_json(&probe_calls),
            });
        }
        self.results["window"] = json!({"secs": w.secs});
        say(&format!(
            "bench: published {} messages; draining",
            published.iter().flatten().sum::<u64>(),
        ));
        self.live.set_phase("drain");
        let drained = self.drain()?;
        self.results["publishing"]["drain_secs"] = json!(drained);
        Ok((published, w))
    }

    /// Waits --drain seconds, then until the clients have received nothing new for a while
    /// (messages still on their way would count as missing), at most [`MAX_DRAIN`].
    fn drain(&mut self) -> Res<f64> {
        let t0 = Instant::now();
        self.ctx.sleep(Duration::from_secs_f64(self.args.drain))?;
        let (mut received, mut since) = (self.live.received(), Instant::now());
        while t0.elapsed() < MAX_DRAIN {
            self.ctx.sleep(Duration::from_millis(500))?;
            let now = self.live.received();
            if now != received {
                (received, since) = (now, Instant::now());
            } else if since.elapsed() >= QUIET_BEFORE_FINAL {
                break;
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        if t0.elapsed() >= MAX_DRAIN {
            say(&format!(
                "bench: messages were still arriving after {secs:.0} s of drain"
            ));
        }
        Ok(secs)
    }

    /// The clients' final reports, judged against what was published, merged.
    fn final_reports(&mut self, published: &[[u64; PRIORITIES]]) -> Res<Report> {
        if let Some(m) = &self.merge {
            let expect = Expect {
                rules: m.traffic.rules,
                pk_interval_ms: m.traffic.pk_interval_ms,
                rooms: m.rooms.clone(),
            };
            let line = serde_json::to_string(&expect).expect("json");
            self.ctx.tell_clients(&format!("expect {line}"))?;
        }
        let published = serde_json::to_string(published).expect("json");
        self.ctx.tell_clients(&format!("final {published}"))?;
        let reports = self
            .ctx
            .collect("final reports", Duration::from_secs(60), |m| match m {
                ClientMsg::Report(r) => Some(*r),
                _ => None,
            })?;
        let mut total = Report::default();
        for r in &reports {
            total.merge(r);
        }
        Ok(total)
    }

    /// Fills in what the clients and the edges say at the end.
    fn judge(
        &mut self,
        total: &Report,
        members: &[u64],
        published: &[[u64; PRIORITIES]],
        group_sizes: [u64; 3],
        window: Option<&Window>,
        floor: Option<&FloorResult>,
    ) {
        let tcp_run = self
            .tcp
            .run_start
            .as_ref()
            .zip(kernel_tcp::read())
            .map(|(a, b)| kernel_tcp::delta(a, &b));
        let r = &mut self.results;
        r["kernel_tcp"] = kernel_tcp::json(&kernel_tcp::Spans {
            window: self.tcp.window.as_ref(),
            run: tcp_run.as_ref(),
            limits: self.tcp.limits,
            peak_window: self.tcp.peak_window,
            peak_run: self.tcp.sampler.run_peak(),
            conns: self.args.conns as u64,
        });
        r["connections"]["edge_check"] = edge_check(&self.system.observer, total, members);
        let control_end = control_probe(self.args, self.system.control_pid);
        r["control"] = report::control_json(
            self.control_idle.0.as_ref(),
            control_end.0.as_ref(),
            (self.control_idle.1, control_end.1),
        );
        report::fill_connection_totals(&mut r["connections"], total, self.args);
        if let Some(w) = window {
            r["cpu"] = report::cpu_json(w, total, floor);
            r["delivery"] = report::delivery_json(total, published, group_sizes, w.secs);
            if let Some(m) = &self.merge {
                let merge = report::merge_json(m, &total.merge, total.open, w.secs, &r["control"]);
                r["merge"] = merge;
            }
            if self.args.senders() > 0 {
                r["upstream"] = upstream::json(&upstream::Inputs {
                    args: self.args,
                    report: &total.upstream,
                    secs: w.secs,
                    edge_cpu: w.edge_cpu,
                    control_cpu: w.control_cpu,
                    backend_cpu: w.backend_cpu,
                    clients_cpu: w.clients_cpu,
                    probes: self.upstream_probes.as_ref().map(|(a, b)| (a, b)),
                    backend_stats: upstream::backend_stats(self.args),
                    delivery: &r["delivery"],
                });
            }
        }
        let timeline = self.live.timeline();
        if r["recovery"].is_object() {
            let storm = report::recovery_json(&total.recovery, &r["delivery"]);
            let peak = report::peak_control_cores(
                &timeline,
                r["recovery"]["drop_t"].as_f64().unwrap_or(0.0),
            );
            let recovery = r["recovery"].as_object_mut().expect("an object");
            for (k, v) in storm.as_object().expect("an object") {
                recovery.insert(k.clone(), v.clone());
            }
            r["recovery"]["cpu"]["control_cores_peak_second_after"] = json!(peak);
        }
        if self.args.server == ServerKind::Nats {
            if let Observer::Nats(monitor) = &*self.system.observer {
                r["nats"]["varz_at_end"] = json!(monitor.varz().ok());
            }
            if let Some(log) = self.ctx.kids.edges.first().map(|s| &s.log) {
                r["nats"]["slow_consumer_log_lines"] = json!(nats::slow_consumer_lines(log));
            }
        }
        if let Some(counters) = r.get_mut("edge_counters") {
            counters["run_total"] = json!(report::edge_totals(&self.system.edges));
        }
        r["edges"] = json!(self.edges_json);
        if r["windows"].is_object() {
            // The tick the windows start from: the control plane's level of the biggest room, or
            // the edges' --tick-ms (100 ms by default); the cap likewise.
            let edge_ms = |name: &str, default: u64| {
                report::edge_arg(&self.args.edge_args, name)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(default)
            };
            let tick = r["connections"]["edge_check"]["biggest_room"]["tick_ms"]
                .as_u64()
                .unwrap_or_else(|| edge_ms("--tick-ms", 100));
            r["windows"]["tick_ms"] = json!(tick);
            r["windows"]["max_window_ms"] = json!(edge_ms("--max-window-ms", 2000));
        }
        if let Some(to) = self.args.ramp_to {
            let mut ramp = report::ramp_ends(&timeline).unwrap_or_else(|| json!({}));
            ramp["from"] = json!(self.args.rate);
            ramp["to"] = json!(to);
            ramp["secs"] = json!(self.args.duration);
            r["ramp"] = ramp;
        }
        r["timeline"] = json!(timeline);
        r["phases"] = json!(self.live.phases());
        r["summary"] = json!(report::summary(r));
    }

    /// The table, the JSON, the plot, and what the logs warn about.
    fn write_outputs(&self) -> Res<()> {
        let args = self.args;
        report::print_table(&self.results);
        if let Some(path) = &args.json_out {
            let json = serde_json::to_string_pretty(&self.results).expect("json");
            std::fs::write(path, json).map_err(|e| format!("{}: {e}", path.display()))?;
            say(&format!("bench: wrote {}", path.display()));
        }
        if let Some(path) = &args.plot {
            let title = format!(
                "roomcast-bench {}: {} {} conns, {} room(s) {}, {} (priorities {}) via {}, {} edge(s) [{}]",
                args.name(),
                args.conns,
                args.transport.name(),
                args.rooms,
                serde_name(&args.room_dist),
                if args.hold_only {
                    "0 msg/s".into()
                } else {
                    args.rate_text()
                },
                args.priority_mix,
                publish_via_text(args),
                self.system.edges.len(),
                drivers(&self.system.edges),
            );
            let window = phase_span(&self.live.phases(), "window");
            plot::draw(path, &title, &self.live.timeline(), window)?;
            say(&format!("bench: wrote {}", path.display()));
        }
        for s in self
            .ctx
            .kids
            .edges
            .iter()
            .chain(self.ctx.kids.control.as_ref())
            .chain(self.ctx.kids.backend.as_ref())
        {
            let bad = system::log_warnings(&s.log);
            if !bad.is_empty() {
                say(&format!(
                    "bench: {} logged {} warning/error line(s), e.g.:",
                    s.id,
                    bad.len()
                ));
                for l in bad.iter().take(5) {
                    say(&format!("    {l}"));
                }
            }
        }
        say(&format!("bench: logs in {}", self.log_dir.display()));
        Ok(())
    }
}

fn edge_memory(edges: &[Measured]) -> Vec<Option<ProcMem>> {
    edges
        .iter()
        .map(|m| m.pid.and_then(sys::proc_mem))
        .collect()
}

fn layout(args: &RunArgs) -> Res<Layout> {
    let spawn = !args.no_spawn;
    let edges = args
        .edges
        .filter(|_| args.server == ServerKind::Roomcast)
        .unwrap_or(if args.server == ServerKind::Nats {
            1
        } else if spawn {
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
    say(&format!(
        "bench: fd limit soft {fd_soft} hard {fd_hard} (children inherit it)"
    ));
    if !args.hold_only {
        if let Some(line) = kernel_tcp::preflight(args.conns as u64, kernel_tcp::tcp_mem()) {
            say(&line);
        }
    }
    let per_proc = args.conns.div_ceil(procs);
    if per_proc as u64 + 100 > fd_hard {
        return Err(format!(
            "{per_proc} connections per client process exceed the fd limit {fd_hard}; use more --procs"
        ));
    }
    let even = args.conns.div_ceil(edges);
    let max_conns_per_edge = (even + even / 2 + 100).min(fd_hard.saturating_sub(128) as usize);
    if spawn && max_conns_per_edge * edges < args.conns {
        return Err(format!(
            "{edges} edges x {max_conns_per_edge} connections (fd limit {fd_hard}) cannot hold {}; use more --edges",
            args.conns
        ));
    }
    Ok(Layout {
        edges,
        procs,
        max_conns_per_edge,
        fd_hard,
    })
}

fn strace_binary(args: &RunArgs) -> Option<PathBuf> {
    if args.strace.is_none() || args.hold_only {
        return None;
    }
    let bin = sys::which("strace");
    if bin.is_none() {
        say(
            "bench: --strace needs strace, which is not installed; install it with \
             `apt-get install -y strace` (continuing without the syscall count)",
        );
    }
    bin
}

fn measure_floor(args: &RunArgs) -> Option<FloorResult> {
    let floor_args = FloorArgs {
        conns: args.floor_conns,
        payload: args.payload,
        iters: args.floor_iters,
        syscall: Syscall::Writev,
        transport: args.transport,
        iovecs: 1,
        json_out: None,
    };
    match floor::measure(&floor_args) {
        Ok(r) => {
            say(&format!("bench: {}", r.summary()));
            Some(r)
        }
        Err(e) => {
            say(&format!(
                "bench: floor measurement failed ({e}); continuing without it"
            ));
            None
        }
    }
}

/// Starts (or finds) the control plane and the edges, and waits until every edge registered.
fn start_system(args: &RunArgs, ctx: &mut Ctx, layout: &Layout, log_dir: &Path) -> Res<System> {
    let spawn = !args.no_spawn;
    let ws_addr = SocketAddr::from((args.edge_ip, args.ws_port));
    let tcp_addr = SocketAddr::from((args.edge_ip, args.tcp_port));
    if spawn {
        for addr in [ws_addr, tcp_addr] {
            // Binding without SO_REUSEPORT fails if anything (even a reuseport edge) listens there.
            TcpListener::bind(addr).map_err(|e| {
                format!("port {addr} is taken ({e}): another edge is listening there; pick --ws-port/--tcp-port")
            })?;
        }
    }
    let (observer, link, link_addr) = match args.publish_via {
        PublishVia::Link => {
            let (server, addr) = LinkServer::start(args.link_listen).map_err(|e| {
                format!(
                    "cannot listen for edge links on {}: {e} (a control plane or another bench \
                     running? pick --link-listen)",
                    args.link_listen
                )
            })?;
            say(&format!("bench: listening for edge links on {addr}"));
            (Observer::Link(Arc::clone(&server)), Some(server), addr)
        }
        PublishVia::Control => {
            let mut api = Api::new(&args.control_url, &args.api_key)?;
            if spawn && args.send_proxy {
                start_backend(args, ctx, log_dir)?;
            }
            if spawn {
                start_control(args, ctx, &mut api, log_dir)?;
            } else if !api.healthy() {
                return Err(format!("no control plane answers at {}", args.control_url));
            }
            (Observer::Control(Mutex::new(api)), None, args.link_listen)
        }
    };
    let observer = Arc::new(observer);
    if spawn {
        let plan = EdgePlan {
            count: layout.edges,
            link: link_addr,
            ws: ws_addr,
            tcp: tcp_addr,
            max_connections: layout.max_conns_per_edge,
        };
        ctx.kids.start_edges(args, &plan, log_dir)?;
    }

    // Wait for the registrations.
    let deadline = Instant::now() + Duration::from_secs(20);
    let registered = loop {
        ctx.check()?;
        let loads = observer.edges();
        let ids: Vec<String> = match &link {
            Some(server) => server
                .live()
                .iter()
                .map(|e| e.register.edge_id.clone())
                .collect(),
            None => loads.iter().map(|l| l.id.clone()).collect(),
        };
        let wanted = ctx.kids.edges.iter().all(|e| ids.contains(&e.id));
        if ids.len() >= layout.edges && wanted {
            break ids;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {} edges registered within 20 s ({ids:?}); see the edges' logs in {} \
                 (edges and bench built from different sources speak different link versions)",
                ids.len(),
                layout.edges,
                log_dir.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let edges: Vec<Measured> = if spawn {
        ctx.kids
            .edges
            .iter()
            .map(|e| Measured {
                id: e.id.clone(),
                pid: Some(e.child.id()),
                driver: String::new(),
                log: Some(e.log.clone()),
            })
            .collect()
    } else {
        registered
            .iter()
            .enumerate()
            .map(|(i, id)| Measured {
                id: id.clone(),
                pid: args.edge_pids.get(i).copied(),
                driver: "?".into(),
                log: None,
            })
            .collect()
    };
    say(&format!(
        "bench: {} edge(s) registered: {registered:?}",
        registered.len()
    ));
    let control_pid = ctx
        .kids
        .control
        .as_ref()
        .map(|c| c.child.id())
        .or(args.control_pid);

    let transport = if args.transport.is_ws() { "ws" } else { "tcp" };
    let dial = if args.use_dispatch || (!spawn && args.publish_via == PublishVia::Control) {
        let mut api = Api::new(&args.control_url, &args.api_key)?;
        let addrs = api.dispatch(transport)?;
        say(&format!("bench: the dispatcher offers {addrs:?}"));
        addrs
    } else if spawn {
        vec![if args.transport.is_ws() {
            ws_addr
        } else {
            tcp_addr
        }]
    } else {
        let server = link.as_ref().expect("link mode");
        let edge = &server.live()[0];
        let a = if args.transport.is_ws() {
            &edge.register.ws_addr
        } else {
            &edge.register.tcp_addr
        };
        vec![a
            .parse()
            .map_err(|e| format!("edge advertises {a:?}: {e}"))?]
    };
    let edge_admins = edges
        .iter()
        .map(|m| m.log.as_deref().and_then(system::edge_admin))
        .collect();
    let backend_pid = ctx.kids.backend.as_ref().map(|b| b.child.id());
    Ok(System {
        observer,
        edges,
        control_pid,
        dial,
        link,
        backend_pid,
        edge_admins,
    })
}

/// Starts the sample platform backend (`--send-proxy`) and waits until it answers `/healthz`.
fn start_backend(args: &RunArgs, ctx: &mut Ctx, log_dir: &Path) -> Res<()> {
    TcpListener::bind(args.backend_listen).map_err(|e| {
        format!(
            "{} is taken ({e}): is a backend running? pick --backend-listen",
            args.backend_listen
        )
    })?;
    ctx.kids.start_backend(args, log_dir)?;
    let mut api = Api::new(&format!("http://{}", args.backend_listen), "")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !api.healthy() {
        ctx.check()?;
        if Instant::now() > deadline {
            return Err("the sample backend did not answer /healthz within 20 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn start_control(args: &RunArgs, ctx: &mut Ctx, api: &mut Api, log_dir: &Path) -> Res<()> {
    TcpListener::bind(api.addr()).map_err(|e| {
        format!(
            "{} is taken ({e}): is a control plane running? use --no-spawn, or pick --control-url",
            api.addr()
        )
    })?;
    ctx.kids.start_control(args, api.addr(), log_dir)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !api.healthy() {
        ctx.check()?;
        if Instant::now() > deadline {
            return Err("the control plane did not answer /healthz within 20 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// One `POST /v1/tokens` per connection, written one per line to a file the clients read.
fn fetch_tokens(args: &RunArgs, log_dir: &Path) -> Res<PathBuf> {
    let population = args.population();
    let mut api = Api::new(&args.control_url, &args.api_key)?;
    let t0 = Instant::now();
    let mut text = String::with_capacity(args.conns * 200);
    for i in 0..args.conns {
        let token = api.token(&format!("u{i}"), 86_400, &room_name(population.room_of(i)))?;
        text.push_str(&token);
        text.push('\n');
    }
    let path = log_dir.join("tokens.txt");
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    say(&format!(
        "bench: {} tokens from POST /v1/tokens in {:.2} s",
        args.conns,
        t0.elapsed().as_secs_f64()
    ));
    Ok(path)
}

/// Starts the client processes; their ticks go to `live`, everything else to `ctx`.
fn start_clients(
    args: &RunArgs,
    ctx: &mut Ctx,
    layout: &Layout,
    dial: &[SocketAddr],
    token_file: Option<&Path>,
    live: &Arc<Live>,
) -> Res<Vec<u32>> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel();
    let first_ip = Ipv4Addr::new(127, 0, 0, 2);
    let mut src_next = 0usize;
    let inflight = (args.connect_inflight / layout.procs).max(1);
    let dial: Vec<String> = dial.iter().map(ToString::to_string).collect();
    let mut first = 0usize;
    let mut pids = Vec::new();
    let procs = layout.procs;
    for p in 0..procs {
        let n = args.conns / procs + usize::from(p < args.conns % procs);
        let src = ip_add(first_ip, src_next);
        src_next += n.div_ceil(args.conns_per_ip.max(1));
        let mut cmd = Command::new(&exe);
        cmd.arg("client")
            .args(["--index", &p.to_string()])
            .args(["--conns", &n.to_string()])
            .args(["--first", &first.to_string()])
            .args(["--transport", args.transport.name()])
            .args(["--addrs", &dial.join(",")])
            .args(["--rooms", &args.rooms.to_string()])
            .arg(format!("--room-dist={}", serde_name(&args.room_dist)))
            .args(["--zipf-exponent", &args.zipf_exponent.to_string()])
            .args(["--slow-readers", &args.slow_readers.to_string()])
            .args(["--churn", &args.churn.to_string()])
            .args([
                "--churn-rate",
                &(args.churn_rate / procs as f64).to_string(),
            ])
            .args(["--src-first", &src.to_string()])
            .args(["--conns-per-ip", &args.conns_per_ip.to_string()])
            .args(["--threads", &args.client_threads.to_string()])
            .args(["--inflight", &inflight.to_string()])
            .args(["--jwt-secret", &args.jwt_secret])
            .args(["--ping-secs", &args.ping_secs.to_string()])
            .args(["--recv-buffer", &args.client_recv_buffer.to_string()])
            .args([
                "--poll-interval-us",
                &args.client_poll_interval_us.to_string(),
            ])
            .args(["--reconnect-jitter", &args.reconnect_jitter.to_string()])
            .args(["--pk-interval-ms", &args.pk_interval_ms.to_string()])
            .args(["--senders", &args.senders().to_string()])
            .args(["--conns-total", &args.conns.to_string()])
            .args([
                "--sends-per-sender-per-s",
                &args.sends_per_sender_per_s.to_string(),
            ])
            .args(["--send-kind", &args.send_kind])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(file) = token_file {
            cmd.arg("--token-file").arg(file);
        }
        if args.merge_traffic().any() {
            cmd.arg("--merge-checks");
        }
        sys::die_with_parent(&mut cmd, libc::SIGKILL);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start a client process: {e}"))?;
        pids.push(child.id());
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take();
        let (tx, live) = (tx.clone(), Arc::clone(live));
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<ClientMsg>(&line) {
                    Ok(ClientMsg::Tick(t)) => live.on_tick(t),
                    Ok(msg) => {
                        if tx.send((p, Some(msg))).is_err() {
                            return;
                        }
                    }
                    Err(e) => say(&format!(
                        "bench: client {p} said something odd ({e}): {line}"
                    )),
                }
            }
            let _ = tx.send((p, None));
        });
        ctx.kids.clients.push(ClientProc { child, stdin });
        first += n;
    }
    ctx.from_clients = Some(rx);
    say(&format!(
        "bench: {procs} client processes connecting {} connections ({}) to {} from {}..={} (fd limit {})",
        args.conns,
        args.transport.name(),
        dial.join(","),
        first_ip,
        ip_add(first_ip, src_next.saturating_sub(1)),
        layout.fd_hard,
    ));
    Ok(pids)
}

/// The clap/serde name of a value enum (`zipf`, `ws-json`).
fn serde_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn publish_sink(args: &RunArgs, system: &System) -> Res<Box<dyn Sink>> {
    if args.server == ServerKind::Nats {
        let addr = SocketAddr::from((args.edge_ip, args.nats_port));
        return Ok(Box::new(NatsSink::connect(addr, args.rooms)?));
    }
    Ok(match args.publish_via {
        PublishVia::Link => {
            let server = system.link.clone().expect("link mode has a link server");
            Box::new(LinkSink::new(server, args.rooms))
        }
        PublishVia::Control => Box::new(ControlSink::new(
            Api::new(&args.control_url, &args.api_key)?,
            args.rooms,
        )),
    })
}

/// How messages are published: `control`, `link`, or `nats` (PUB over NATS's client port).
fn publish_via_text(args: &RunArgs) -> String {
    match args.server {
        ServerKind::Nats => "nats".into(),
        ServerKind::Roomcast => serde_name(&args.publish_via),
    }
}

/// The NATS server's counters (`/varz`) over the measured window.
fn nats_window(a: &Snapshot, b: &Snapshot) -> Value {
    let (Some(x), Some(y)) = (a.loads.first(), b.loads.first()) else {
        return Value::Null;
    };
    let secs = b.at.duration_since(a.at).as_secs_f64();
    json!({
        "source": "the NATS server's /varz at the start and the end of the measured window",
        "out_msgs": y.frames_out.saturating_sub(x.frames_out),
        "out_msgs_per_s": y.frames_out.saturating_sub(x.frames_out) as f64 / secs,
        "out_bytes_per_s": y.bytes_out.saturating_sub(x.bytes_out) as f64 / secs,
        "slow_consumers": y.slow_closes.saturating_sub(x.slow_closes),
        "connections_at_end": y.connections,
    })
}

/// Starts `nats-server` with a generated config (`--server nats`) and waits until it answers.
fn start_nats(args: &RunArgs, ctx: &mut Ctx, log_dir: &Path) -> Res<System> {
    let ws_addr = SocketAddr::from((args.edge_ip, args.ws_port));
    let client_addr = SocketAddr::from((args.edge_ip, args.nats_port));
    let monitor_addr = SocketAddr::from((args.edge_ip, args.nats_monitor_port));
    for (addr, flag) in [
        (ws_addr, "--ws-port"),
        (client_addr, "--nats-port"),
        (monitor_addr, "--nats-monitor-port"),
    ] {
        TcpListener::bind(addr).map_err(|e| format!("port {addr} is taken ({e}); pick {flag}"))?;
    }
    let bin = if args.nats_bin.components().count() > 1 {
        Some(args.nats_bin.clone())
    } else {
        sys::which(&args.nats_bin.to_string_lossy())
    }
    .filter(|b| b.is_file())
    .ok_or_else(|| {
        format!(
            "{} not found: install it (bench/scripts/install-peers.sh) or pass --nats-bin",
            args.nats_bin.display()
        )
    })?;
    let version = nats::version(&bin).unwrap_or_else(|| "nats-server ?".into());
    let conf = log_dir.join("nats.conf");
    std::fs::write(&conf, nats::config(args)).map_err(|e| format!("{}: {e}", conf.display()))?;
    let log = log_dir.join("nats-server.log");
    let pid = ctx.kids.start_peer(
        nats::SERVER_ID,
        &bin,
        &["-c".into(), conf.display().to_string()],
        log.clone(),
    )?;
    let monitor = Monitor::new(monitor_addr)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !monitor.healthy() {
        ctx.check()?;
        if Instant::now() > deadline {
            return Err(format!(
                "{version} did not answer on {monitor_addr}/healthz within 20 s; see {}",
                log.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    say(&format!(
        "bench: {version} (pid {pid}) up: websocket {ws_addr}, clients {client_addr}, monitoring http://{monitor_addr}, config {}",
        conf.display()
    ));
    Ok(System {
        observer: Arc::new(Observer::Nats(monitor)),
        edges: vec![Measured {
            id: nats::SERVER_ID.into(),
            pid: Some(pid),
            driver: version,
            log: Some(log),
        }],
        control_pid: None,
        dial: vec![ws_addr],
        link: None,
        backend_pid: None,
        edge_admins: Vec::new(),
    })
}

fn drivers(edges: &[Measured]) -> String {
    let mut d: Vec<&str> = edges.iter().map(|m| m.driver.as_str()).collect();
    d.dedup();
    d.join(",")
}

/// The edges' own view (connections; members of the rooms) against the clients'.
fn edge_check(observer: &Observer, total: &Report, members: &[u64]) -> Value {
    observer.wait_fresh();
    let loads = observer.edges();
    let edges_report: u64 = loads.iter().map(|l| l.connections).sum();
    // The biggest rooms first: through the API each room is one request.
    let mut rooms: Vec<usize> = (0..members.len()).filter(|&r| members[r] > 0).collect();
    rooms.sort_by_key(|&r| std::cmp::Reverse(members[r]));
    if matches!(observer, Observer::Control(_)) {
        rooms.truncate(ROOMS_CHECKED_VIA_API);
    }
    let mut mismatches = serde_json::Map::new();
    let checked = match observer.room_members(&rooms) {
        Ok(on_edges) => {
            for (&r, &edges) in &on_edges {
                let clients = total
                    .open_per_room
                    .iter()
                    .find(|(room, _)| *room == r)
                    .map_or(0, |(_, n)| *n);
                if clients != edges {
                    mismatches.insert(room_name(r), json!([clients, edges]));
                }
            }
            on_edges.len()
        }
        Err(e) => {
            say(&format!("bench: cannot read room members: {e}"));
            0
        }
    };
    let biggest = rooms.first().copied().unwrap_or(0);
    let level = observer.room_level(biggest);
    json!({
        "biggest_room": {
            "room": room_name(biggest),
            "members": members.get(biggest),
            "level": level.map(|l| l.0),
            "tick_ms": level.map(|l| l.1),
        },
        "edges_report": edges_report,
        "clients_hold": total.open,
        "connections_match": edges_report == total.open,
        "per_edge": loads,
        "rooms_checked": checked,
        "room_mismatches": mismatches,
    })
}

/// When the phase `name` began and the next one began, in seconds since the start.
fn phase_span(phases: &[(&str, f64)], name: &str) -> Option<(f64, f64)> {
    let i = phases.iter().position(|(p, _)| *p == name)?;
    Some((phases[i].1, phases.get(i + 1)?.1))
}
