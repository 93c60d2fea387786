//! The live view of a run. Client processes tick once a second; a progress thread folds their
//! ticks, the publisher's counter, the edges' load reports and the processes' CPU into one
//! [`Sample`] per second — the timeline behind `--plot` and the JSON — and shows the newest on
//! stderr: redrawn in place on a terminal, one line every five seconds otherwise.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::msgs::{add_pairs, new_tick_histogram, Tick};
use crate::observer::Observer;
use crate::publish::PubState;
use crate::sys;
use crate::term;

/// One second of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the run started.
    pub t: f64,
    pub phase: &'static str,
    /// Joined connections as the clients count them, and as the edges report them.
    pub conns: u64,
    pub edge_conns: Option<u64>,
    pub published_per_s: f64,
    pub delivered_msgs_per_s: f64,
    pub frames_per_s: f64,
    pub reconnects_per_s: f64,
    /// Latency of the normal group's messages received during this second, ms.
    pub latency_ms: Option<Percentiles>,
    pub edge_cores: Option<f64>,
    pub control_cores: Option<f64>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Option<Percentiles> {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        (!h.is_empty()).then(|| Percentiles {
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            p999: ms(0.999),
            max: h.max() as f64 / 1000.0,
        })
    }
}

pub struct Live {
    started: Instant,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    phase: &'static str,
    /// (phase, seconds since start when it began).
    phases: Vec<(&'static str, f64)>,
    /// The newest ticks of each client process.
    ticks: Vec<ProcessTicks>,
    /// Latency received since the last sample.
    latency: Option<Histogram<u64>>,
    /// Latency since the current phase began (the "so far" of the progress line).
    phase_latency: Option<Histogram<u64>>,
    publisher: Option<Arc<PubState>>,
    edge_pids: Vec<u32>,
    control_pid: Option<u32>,
    timeline: Vec<Sample>,
}

/// The two newest ticks of one client process: rates are taken between them, on the process's
/// own clock, so a tick arriving just before or just after a sample does not skew them.
#[derive(Default, Clone)]
struct ProcessTicks {
    previous: Option<Tick>,
    latest: Option<Tick>,
}

impl ProcessTicks {
    fn push(&mut self, tick: Tick) {
        self.previous = self.latest.replace(tick);
    }

    fn rate(&self, count: impl Fn(&Tick) -> u64) -> f64 {
        match (&self.previous, &self.latest) {
            (Some(a), Some(b)) if b.at_us > a.at_us => {
                count(b).saturating_sub(count(a)) as f64 * 1e6 / (b.at_us - a.at_us) as f64
            }
            _ => 0.0,
        }
    }
}

/// Counters at the previous sample, for rates.
#[derive(Default)]
struct Totals {
    at: Option<Instant>,
    published: u64,
    edge_cpu: Option<f64>,
    control_cpu: Option<f64>,
}

impl Live {
    pub fn new(client_procs: usize) -> Arc<Live> {
        let live = Live {
            started: Instant::now(),
            state: Mutex::new(State {
                ticks: vec![ProcessTicks::default(); client_procs],
                ..State::default()
            }),
        };
        live.set_phase("setup");
        Arc::new(live)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("live state lock")
    }

    pub fn set_phase(&self, phase: &'static str) {
        let t = self.started.elapsed().as_secs_f64();
        let mut s = self.lock();
        s.phase = phase;
        s.phases.push((phase, t));
        s.phase_latency = None;
    }

    /// When each phase began, seconds since the start.
    pub fn phases(&self) -> Vec<(&'static str, f64)> {
        self.lock().phases.clone()
    }

    pub fn set_processes(&self, edge_pids: Vec<u32>, control_pid: Option<u32>) {
        let mut s = self.lock();
        s.edge_pids = edge_pids;
        s.control_pid = control_pid;
    }

    pub fn set_publisher(&self, publisher: Option<Arc<PubState>>) {
        self.lock().publisher = publisher;
    }

    pub fn on_tick(&self, mut tick: Tick) {
        let mut s = self.lock();
        add_pairs(
            s.latency.get_or_insert_with(new_tick_histogram),
            &tick.latency_us,
        );
        add_pairs(
            s.phase_latency.get_or_insert_with(new_tick_histogram),
            &tick.latency_us,
        );
        tick.latency_us = Vec::new();
        let index = tick.index;
        if let Some(process) = s.ticks.get_mut(index) {
            process.push(tick);
        }
    }

    /// Messages received so far, as the clients' newest ticks say.
    pub fn received(&self) -> u64 {
        self.lock()
            .ticks
            .iter()
            .filter_map(|p| p.latest.as_ref())
            .map(|t| t.msgs)
            .sum()
    }

    pub fn timeline(&self) -> Vec<Sample> {
        self.lock().timeline.clone()
    }

    /// Starts the progress thread; it samples once a second until the handle is dropped.
    pub fn start(self: &Arc<Self>, observer: Arc<Observer>, target_conns: usize) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        let (live, stop2) = (Arc::clone(self), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || {
                let terminal = std::io::stderr().is_terminal();
                let mut totals = Totals::default();
                let mut n: u64 = 0;
                let mut next = Instant::now() + Duration::from_secs(1);
                while !stop2.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                    if Instant::now() < next {
                        continue;
                    }
                    next += Duration::from_secs(1);
                    let sample = live.sample(&observer, &mut totals);
                    n += 1;
                    if terminal || n % 5 == 0 {
                        term::show(&live.line(&sample, target_conns), terminal);
                    }
                }
                term::clear();
            })
            .expect("spawn progress thread");
        Progress {
            stop,
            thread: Some(thread),
        }
    }

    fn sample(&self, observer: &Observer, totals: &mut Totals) -> Sample {
        let edges = observer.edges();
        let now = Instant::now();
        let mut s = self.lock();
        let cpu = |pids: &[u32]| -> Option<f64> {
            let v: Vec<f64> = pids.iter().filter_map(|&p| sys::proc_cpu_secs(p)).collect();
            (!v.is_empty()).then(|| v.iter().sum())
        };
        let edge_cpu = cpu(&s.edge_pids);
        let control_cpu = cpu(&s.control_pid.into_iter().collect::<Vec<_>>());
        let per_process =
            |count: fn(&Tick) -> u64| -> f64 { s.ticks.iter().map(|p| p.rate(count)).sum() };
        let published = s
            .publisher
            .as_ref()
            .map_or(0, |p| p.published.load(Ordering::Relaxed));
        let secs = totals
            .at
            .map_or(1.0, |at| now.duration_since(at).as_secs_f64().max(1e-3));
        let rate = |now: u64, before: u64| now.saturating_sub(before) as f64 / secs;
        let cores = |now: Option<f64>, before: Option<f64>| Some((now? - before?) / secs);
        let sample = Sample {
            t: self.started.elapsed().as_secs_f64(),
            phase: s.phase,
            conns: s
                .ticks
                .iter()
                .filter_map(|p| p.latest.as_ref())
                .map(|t| t.open)
                .sum(),
            edge_conns: (!edges.is_empty()).then(|| edges.iter().map(|e| e.connections).sum()),
            // A fresh publisher (or none) starts from zero.
            published_per_s: rate(published, totals.published.min(published)),
            delivered_msgs_per_s: per_process(|t| t.msgs),
            frames_per_s: per_process(|t| t.frames),
            reconnects_per_s: per_process(|t| t.reconnects),
            latency_ms: s.latency.take().as_ref().and_then(Percentiles::of),
            edge_cores: cores(edge_cpu, totals.edge_cpu),
            control_cores: cores(control_cpu, totals.control_cpu),
        };
        *totals = Totals {
            at: Some(now),
            published,
            edge_cpu,
            control_cpu,
        };
        s.timeline.push(sample.clone());
        sample
    }

    fn line(&self, x: &Sample, target_conns: usize) -> String {
        let s = self.lock();
        let mut line = format!(
            "[{:>5.0} s {:<7}] conns {}/{target_conns}",
            x.t, x.phase, x.conns
        );
        if let Some(e) = x.edge_conns {
            line += &format!(" (edges {e})");
        }
        if x.reconnects_per_s > 0.0 {
            line += &format!(", {:.0} reconnects/s", x.reconnects_per_s);
        }
        if x.published_per_s > 0.0 || x.delivered_msgs_per_s > 0.0 {
            line += &format!(
                " | pub {}/s | recv {} msg/s in {} frames/s",
                rate(x.published_per_s),
                rate(x.delivered_msgs_per_s),
                rate(x.frames_per_s)
            );
        }
        if let Some(l) = x.latency_ms {
            line += &format!(" | p99 {:.1} ms", l.p99);
        }
        if let Some(so_far) = s.phase_latency.as_ref().and_then(Percentiles::of) {
            if matches!(s.phase, "warmup" | "window") {
                line += &format!(" ({} so far {:.1} ms)", s.phase, so_far.p99);
            }
        }
        if let Some(c) = x.edge_cores {
            line += &format!(" | edges {c:.2} cores");
        }
        if let Some(c) = x.control_cores {
            line += &format!(", control {c:.2}");
        }
        line
    }
}

/// The running progress thread; stopped when dropped.
pub struct Progress {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// 1234567 → "1.23M", 12345 → "12.3k".
pub fn rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}
