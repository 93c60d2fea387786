//! The live view of a run. Client processes tick once a second; a progress thread folds their
//! ticks, the publisher's counter, the edges' load reports and the processes' CPU into one
//! [`Sample`] per second — the timeline behind `--plot` and the JSON — and shows the newest on
//! stderr: redrawn in place on a terminal, one line every five seconds otherwise.

use std::io::IsTerminal;
use std::path::PathBuf;
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
use crate::system::{self, WindowDelta, WindowStats};
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
    /// Upstream (`--senders`): sends written and replies read per second.
    pub sends_per_s: f64,
    pub send_replies_per_s: f64,
    /// Latency of the normal group's messages received during this second, ms.
    pub latency_ms: Option<Percentiles>,
    pub edge_cores: Option<f64>,
    pub control_cores: Option<f64>,
    /// The mean effective merge window, ms, over the newest interval every edge logged
    /// (Δ`window_seconds_sum` / Δ`window_seconds_count` summed over the edges); `None` when no
    /// window closed then, or the edges do not log windows.
    pub window_ms: Option<f64>,
    /// Channels whose window is stretched past their tick now, summed over the edges.
    pub channels_stretched: Option<u64>,
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
    /// The edges' logs, for their `edge stats` lines.
    edge_logs: Vec<PathBuf>,
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
    windows: WindowTracker,
}

/// Each edge's two newest `edge stats` lines, as far as their merge windows go: a sample shows
/// the newest interval every edge logged (the edges log once a second, on their own clocks).
#[derive(Default)]
pub struct WindowTracker {
    edges: Vec<EdgeWindows>,
}

#[derive(Default, Clone)]
struct EdgeWindows {
    line: Option<String>,
    previous: Option<WindowStats>,
    latest: Option<WindowStats>,
}

impl WindowTracker {
    /// Takes every edge's newest `edge stats` line (`None`: none yet, or no log); returns the
    /// mean effective window (ms) over the newest logged interval of all edges, and the channels
    /// stretched now summed over them — both `None` when no edge logs windows.
    pub fn update(&mut self, lines: &[Option<String>]) -> (Option<f64>, Option<u64>) {
        if self.edges.len() < lines.len() {
            self.edges.resize(lines.len(), EdgeWindows::default());
        }
        let mut total = WindowDelta::default();
        let mut channels = None;
        for (edge, line) in self.edges.iter_mut().zip(lines) {
            let Some(line) = line else { continue };
            if edge.line.as_deref() != Some(line.as_str()) {
                let windows = system::parse_edge_stats(line).windows();
                edge.previous = std::mem::replace(&mut edge.latest, windows);
                edge.line = Some(line.clone());
            }
            if let Some(latest) = &edge.latest {
                *channels.get_or_insert(0) += latest.channels_stretched;
                if let Some(previous) = &edge.previous {
                    total.add(&WindowDelta::between(previous, latest));
                }
            }
        }
        (total.mean_ms(), channels)
    }
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

    /// Seconds since the run started (the timeline's `t`).
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
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

    pub fn set_edge_logs(&self, logs: Vec<PathBuf>) {
        self.lock().edge_logs = logs;
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
        let logs = self.lock().edge_logs.clone();
        let lines: Vec<Option<String>> = logs.iter().map(|l| system::edge_stats_line(l)).collect();
        let (window_ms, channels_stretched) = totals.windows.update(&lines);
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
            sends_per_s: per_process(|t| t.sends),
            send_replies_per_s: per_process(|t| t.send_replies),
            latency_ms: s.latency.take().as_ref().and_then(Percentiles::of),
            edge_cores: cores(edge_cpu, totals.edge_cpu),
            control_cores: cores(control_cpu, totals.control_cpu),
            window_ms,
            channels_stretched,
        };
        totals.at = Some(now);
        totals.published = published;
        totals.edge_cpu = edge_cpu;
        totals.control_cpu = control_cpu;
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
        if x.sends_per_s > 0.0 || x.send_replies_per_s > 0.0 {
            line += &format!(
                " | sends {}/s ({} answered/s)",
                rate(x.sends_per_s),
                rate(x.send_replies_per_s)
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
        if let Some(w) = x.window_ms {
            line += &format!(" | window {w:.0} ms");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn line(t: u32, sum: f64, count: u64, channels: u64) -> Option<String> {
        Some(format!(
            "t{t} INFO edge stats connections=1 window_seconds_sum=\"{sum:.3}\" \
             window_seconds_count={count} windows_stretched=0 windows_capped=0 \
             channels_stretched={channels}"
        ))
    }

    #[test]
    fn the_window_of_a_second_is_the_newest_interval_of_every_edge() {
        let mut w = WindowTracker::default();
        // One line per edge: no interval yet, but the gauge.
        assert_eq!(
            w.update(&[line(0, 1.0, 10, 1), line(0, 0.0, 0, 0)]),
            (None, Some(1))
        );
        // Edge 0: 2 s over 20 windows; edge 1: 1 s over 5.
        let (ms, channels) = w.update(&[line(1, 3.0, 30, 1), line(1, 1.0, 5, 2)]);
        assert!((ms.unwrap() - 3000.0 / 25.0).abs() < 1e-9, "{ms:?}");
        assert_eq!(channels, Some(3));
        // No new line from edge 1 yet: its newest interval stands.
        let (ms, _) = w.update(&[line(2, 4.0, 40, 0), line(1, 1.0, 5, 2)]);
        assert!((ms.unwrap() - 2000.0 / 15.0).abs() < 1e-9, "{ms:?}");
        // Idle: new lines, nothing closed.
        w.update(&[line(3, 4.0, 40, 0), line(2, 1.0, 5, 0)]);
        assert_eq!(
            w.update(&[line(4, 4.0, 40, 0), line(3, 1.0, 5, 0)]),
            (None, Some(0))
        );
    }

    #[test]
    fn edges_without_windows_show_nothing() {
        let mut w = WindowTracker::default();
        let old = Some("t0 INFO edge stats connections=1 flushes=2".to_string());
        assert_eq!(w.update(&[old.clone(), None]), (None, None));
        let old = Some("t1 INFO edge stats connections=1 flushes=3".to_string());
        assert_eq!(w.update(&[old, None]), (None, None));
    }
}
