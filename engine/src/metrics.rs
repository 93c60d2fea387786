//! Metrics: what the admin server's `/metrics` shows, in the Prometheus text format.
//!
//! Nothing here is on the hot path. Workers keep plain per-worker counters and fixed-bucket
//! histograms ([`WorkerStats`]) and send a copy to the hub every report interval, as they always
//! did; the hub stores the latest copies, its own counters, rooms by level and the capacity
//! watermarks as one [`Snapshot`] once per report interval ([`Shared::store`]). A scrape clones
//! that snapshot under a mutex the hub takes once a second, sums it and renders it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use crate::stats::{
    AuthFailure, CloseReason, Hist, HubStats, WorkerStats, BATCH_BOUNDS, IOVEC_BOUNDS,
    LATENCY_BOUNDS,
};
use roomcast_proto::message::PRIORITIES;

/// The capacity resources, in `roomcast_capacity_ratio{resource=…}` order.
pub const RESOURCES: [&str; 5] = ["connections", "fds", "egress", "memory", "cpu"];

/// Use and limit of each of [`RESOURCES`] at one sample.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Capacity {
    pub used: [f64; 5],
    pub limit: [f64; 5],
    /// Busy ratio per worker (the `cpu` resource is the highest of them).
    pub busiest_worker: f64,
}

impl Capacity {
    pub fn ratio(&self, i: usize) -> f64 {
        if self.limit[i] > 0.0 {
            self.used[i] / self.limit[i]
        } else {
            0.0
        }
    }

    /// The highest ratio: the watermark the control plane dispatches by.
    pub fn max_ratio(&self) -> f64 {
        (0..RESOURCES.len())
            .map(|i| self.ratio(i))
            .fold(0.0, f64::max)
    }
}

/// One report interval's worth of everything `/metrics` shows.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub workers: Vec<WorkerStats>,
    pub hub: HubStats,
    /// Rate level → (rooms, members) for rooms with members on this edge.
    pub levels: BTreeMap<u8, (u64, u64)>,
    /// Users with at least one authenticated connection here.
    pub users: u64,
    pub capacity: Capacity,
    /// Per worker busy ratio over the last interval.
    pub busy: Vec<f64>,
    /// False until the hub stored its first snapshot.
    pub taken: bool,
}

/// Shared between the hub (writer), the admin server (reader) and [`crate::Edge`].
pub struct Shared {
    snapshot: Mutex<Snapshot>,
    pub driver: &'static str,
    pub edge_id: String,
    /// Every worker started and none has been told to stop.
    pub workers_running: AtomicBool,
    /// The link to the control plane is up.
    pub link_up: AtomicBool,
}

impl Shared {
    pub fn new(driver: &'static str, edge_id: String) -> Shared {
        Shared {
            snapshot: Mutex::new(Snapshot::default()),
            driver,
            edge_id,
            workers_running: AtomicBool::new(false),
            link_up: AtomicBool::new(false),
        }
    }

    pub fn store(&self, snapshot: Snapshot) {
        *self.snapshot.lock().unwrap_or_else(PoisonError::into_inner) = snapshot;
    }

    pub fn load(&self) -> Snapshot {
        self.snapshot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Ready: the workers run and the control link is up.
    pub fn ready(&self) -> bool {
        self.workers_running.load(Ordering::Acquire) && self.link_up.load(Ordering::Acquire)
    }
}

/// Configured capacity of an edge.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: u64,
    /// The soft `RLIMIT_NOFILE`.
    pub fd_limit: u64,
    /// Descriptors the process held besides client connections when the edge started.
    pub fd_baseline: u64,
    pub egress_bytes_per_second: f64,
    pub memory_bytes: u64,
}

/// The previous sample: when, bytes written, and per worker (busy ns, poll ns).
type PreviousSample = (Instant, u64, Vec<(u64, u64)>);

/// Turns successive worker counters into use-vs-capacity figures (rates need two samples).
pub struct CapacitySampler {
    limits: Limits,
    last: Option<PreviousSample>,
    latest: Capacity,
    latest_busy: Vec<f64>,
}

impl CapacitySampler {
    pub fn new(limits: Limits) -> CapacitySampler {
        CapacitySampler {
            limits,
            last: None,
            latest: Capacity::default(),
            latest_busy: Vec::new(),
        }
    }

    /// Takes a sample: connections and fds from the counters (tracked, not counted in /proc:
    /// listing 100k descriptors every second would stall the hub), egress and busy ratio as
    /// rates since the previous sample, RSS from `/proc/self/status`.
    pub fn sample(
        &mut self,
        now: Instant,
        workers: &[WorkerStats],
        total: &WorkerStats,
    ) -> Capacity {
        let l = self.limits;
        let busy_now: Vec<(u64, u64)> = workers.iter().map(|w| (w.busy_ns, w.poll_ns)).collect();
        let (egress, busy) = match &self.last {
            Some((at, bytes, prev)) => {
                let secs = now.saturating_duration_since(*at).as_secs_f64();
                let egress = if secs > 0.0 {
                    total.bytes_out.saturating_sub(*bytes) as f64 / secs
                } else {
                    0.0
                };
                let busy: Vec<f64> = busy_now
                    .iter()
                    .zip(prev.iter().chain(std::iter::repeat(&(0, 0))))
                    .map(|(&(b, p), &(pb, pp))| {
                        let busy = b.saturating_sub(pb) as f64;
                        let wall = busy + p.saturating_sub(pp) as f64;
                        if wall > 0.0 {
                            busy / wall
                        } else {
                            0.0
                        }
                    })
                    .collect();
                (egress, busy)
            }
            None => (0.0, vec![0.0; workers.len()]),
        };
        self.last = Some((now, total.bytes_out, busy_now));
        let busiest = busy.iter().copied().fold(0.0, f64::max);
        let capacity = Capacity {
            used: [
                total.connections as f64,
                (l.fd_baseline + total.connections) as f64,
                egress,
                resident_bytes().unwrap_or(0) as f64,
                busiest,
            ],
            limit: [
                l.max_connections as f64,
                l.fd_limit as f64,
                l.egress_bytes_per_second,
                l.memory_bytes as f64,
                1.0,
            ],
            busiest_worker: busiest,
        };
        self.latest = capacity;
        self.latest_busy = busy;
        capacity
    }

    pub fn busy(&self) -> &[f64] {
        &self.latest_busy
    }

    /// The latest highest ratio in thousandths (for the link load report).
    pub fn max_permille(&self) -> u16 {
        (self.latest.max_ratio() * 1000.0)
            .round()
            .clamp(0.0, 65535.0) as u16
    }
}

/// The process's resident set, bytes (`VmRSS` of `/proc/self/status`).
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    kib_field(&status, "VmRSS:")
}

fn kib_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The memory an edge may use when `--memory-limit-bytes` is 0: the cgroup's `memory.max` when
/// it is set (cgroup v2, then v1), else the machine's `MemTotal`.
pub fn default_memory_limit() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| kib_field(&m, "MemTotal:"))
        .unwrap_or(0);
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|p| std::fs::read_to_string(p).ok())
    .filter_map(|v| v.trim().parse::<u64>().ok())
    .find(|&v| v > 0 && (total == 0 || v < total));
    cgroup.unwrap_or(total)
}

/// Open descriptors of this process (counted once at start for the fd baseline).
pub fn count_open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

/// Writes the Prometheus text exposition format (version 0.0.4).
pub struct TextWriter {
    out: String,
}

impl Default for TextWriter {
    fn default() -> Self {
        TextWriter::new()
    }
}

impl TextWriter {
    pub fn new() -> TextWriter {
        TextWriter {
            out: String::with_capacity(16 * 1024),
        }
    }

    /// Starts a metric family.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample; label values are escaped.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"");
                for c in v.chars() {
                    match c {
                        '\\' => self.out.push_str("\\\\"),
                        '"' => self.out.push_str("\\\""),
                        '\n' => self.out.push_str("\\n"),
                        c => self.out.push(c),
                    }
                }
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        push_value(&mut self.out, value);
        self.out.push('\n');
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// A whole histogram family from a [`Hist`] and its bounds.
    pub fn histogram(&mut self, name: &str, help: &str, bounds: &[f64], hist: &Hist) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0u64;
        for (i, bound) in bounds.iter().enumerate() {
            cumulative += hist.counts[i];
            let le = format_value(*bound);
            self.sample(&bucket, &[("le", &le)], cumulative as f64);
        }
        self.sample(&bucket, &[("le", "+Inf")], hist.count as f64);
        self.sample(&format!("{name}_sum"), &[], hist.sum);
        self.sample(&format!("{name}_count"), &[], hist.count as f64);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn push_value(out: &mut String, value: f64) {
    out.push_str(&format_value(value));
}

fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

const PRIORITY_LABELS: [&str; PRIORITIES] = ["0", "1", "2", "3"];

/// Renders an edge's `/metrics` page from its latest snapshot.
pub fn render(shared: &Shared) -> String {
    let snap = shared.load();
    let mut w = TextWriter::new();
    let mut total = WorkerStats::default();
    for stats in &snap.workers {
        total.add(stats);
    }
    let cores: Vec<String> = (0..snap.workers.len()).map(|i| i.to_string()).collect();
    let per_core = |w: &mut TextWriter,
                    name: &str,
                    kind: &str,
                    help: &str,
                    f: &dyn Fn(&WorkerStats) -> u64| {
        w.family(name, kind, help);
        for (i, stats) in snap.workers.iter().enumerate() {
            w.sample(name, &[("core", &cores[i])], f(stats) as f64);
        }
    };

    w.family(
        "roomcast_driver_info",
        "gauge",
        "The I/O driver this edge runs (value is always 1).",
    );
    w.sample("roomcast_driver_info", &[("driver", shared.driver)], 1.0);
    w.single(
        "roomcast_workers",
        "gauge",
        "Worker threads (one pinned per core).",
        snap.workers.len() as f64,
    );
    w.single(
        "roomcast_link_up",
        "gauge",
        "1 while the link to the control plane is up.",
        f64::from(u8::from(shared.link_up.load(Ordering::Acquire))),
    );
    w.single(
        "roomcast_link_connects_total",
        "counter",
        "Times the link to the control plane was established.",
        snap.hub.link_connects as f64,
    );

    // Capacity watermarks first: what on-call looks at.
    w.family(
        "roomcast_capacity_ratio",
        "gauge",
        "Use against configured capacity per resource (1 = at capacity).",
    );
    for (i, resource) in RESOURCES.iter().enumerate() {
        w.sample(
            "roomcast_capacity_ratio",
            &[("resource", resource)],
            snap.capacity.ratio(i),
        );
    }
    w.single(
        "roomcast_capacity_ratio_max",
        "gauge",
        "The highest roomcast_capacity_ratio (reported to the control plane, which stops dispatching above its watermark).",
        snap.capacity.max_ratio(),
    );
    let c = &snap.capacity;
    w.single(
        "roomcast_connections_limit",
        "gauge",
        "Configured --max-connections.",
        c.limit[0],
    );
    w.single(
        "roomcast_open_fds",
        "gauge",
        "File descriptors in use (start-up baseline plus client connections).",
        c.used[1],
    );
    w.single(
        "roomcast_max_fds",
        "gauge",
        "The soft open-file limit.",
        c.limit[1],
    );
    w.single(
        "roomcast_egress_rate_bytes",
        "gauge",
        "Bytes per second written to clients over the last report interval.",
        c.used[2],
    );
    w.single(
        "roomcast_egress_limit_bytes",
        "gauge",
        "Configured egress bandwidth, bytes per second (--egress-bandwidth-bytes).",
        c.limit[2],
    );
    w.single(
        "roomcast_resident_memory_bytes",
        "gauge",
        "Resident set size.",
        c.used[3],
    );
    w.single(
        "roomcast_memory_limit_bytes",
        "gauge",
        "Memory the edge may use (--memory-limit-bytes, else cgroup memory.max, else MemTotal).",
        c.limit[3],
    );
    w.family(
        "roomcast_worker_busy_ratio",
        "gauge",
        "Share of wall time a worker spent outside its poll over the last report interval.",
    );
    for (i, busy) in snap.busy.iter().enumerate() {
        w.sample("roomcast_worker_busy_ratio", &[("core", &cores[i])], *busy);
    }

    // Connections.
    per_core(
        &mut w,
        "roomcast_connections",
        "gauge",
        "Client connections open.",
        &|s| s.connections,
    );
    per_core(
        &mut w,
        "roomcast_connections_accepted_total",
        "counter",
        "Client connections accepted.",
        &|s| s.accepted,
    );
    w.family(
        "roomcast_connections_refused_total",
        "counter",
        "Client connections refused, by reason.",
    );
    w.sample(
        "roomcast_connections_refused_total",
        &[("reason", "full")],
        total.refused_full as f64,
    );
    w.family(
        "roomcast_connections_closed_total",
        "counter",
        "Client connections closed, by reason.",
    );
    for reason in CloseReason::ALL {
        w.sample(
            "roomcast_connections_closed_total",
            &[("reason", reason.as_str())],
            total.close_count(reason) as f64,
        );
    }
    w.single(
        "roomcast_slow_consumer_closes_total",
        "counter",
        "Connections closed because their send queue went over --queue-hard-bytes (4008).",
        total.close_count(CloseReason::Slow) as f64,
    );
    w.family(
        "roomcast_handshake_failures_total",
        "counter",
        "WebSocket upgrade requests refused, by reason.",
    );
    w.sample(
        "roomcast_handshake_failures_total",
        &[("reason", "bad_upgrade")],
        total.handshake_failures as f64,
    );
    w.family(
        "roomcast_auth_failures_total",
        "counter",
        "Connections that failed to authenticate, by reason.",
    );
    for why in AuthFailure::ALL {
        w.sample(
            "roomcast_auth_failures_total",
            &[("reason", why.as_str())],
            total.auth_failures_by[why as usize] as f64,
        );
    }
    w.single(
        "roomcast_confirm_waits_total",
        "counter",
        "Joins and auths whose reply waited for the control plane to confirm a channel new to a worker (the join acknowledgement).",
        total.confirm_waits as f64,
    );
    w.single(
        "roomcast_confirm_timeouts_total",
        "counter",
        "Joins and auths refused `unavailable` because that confirmation took longer than --join-confirm-timeout-ms.",
        total.confirm_timeouts as f64,
    );

    // Rooms.
    w.family(
        "roomcast_rooms",
        "gauge",
        "Rooms with members on this edge, by rate level.",
    );
    for (level, (rooms, _)) in &snap.levels {
        w.sample(
            "roomcast_rooms",
            &[("level", &level.to_string())],
            *rooms as f64,
        );
    }
    w.family(
        "roomcast_room_members",
        "gauge",
        "Room memberships on this edge, by the room's rate level.",
    );
    for (level, (_, members)) in &snap.levels {
        w.sample(
            "roomcast_room_members",
            &[("level", &level.to_string())],
            *members as f64,
        );
    }
    w.single(
        "roomcast_users",
        "gauge",
        "Users with at least one authenticated connection on this edge.",
        snap.users as f64,
    );

    // Traffic.
    w.family(
        "roomcast_messages_in_total",
        "counter",
        "Messages published to this edge by the control plane, by priority.",
    );
    for (p, label) in PRIORITY_LABELS.iter().enumerate() {
        w.sample(
            "roomcast_messages_in_total",
            &[("priority", label)],
            snap.hub.publishes_by_priority[p] as f64,
        );
    }
    w.single(
        "roomcast_messages_without_members_total",
        "counter",
        "Published messages for a channel with no member on this edge.",
        snap.hub.publishes_without_members as f64,
    );
    w.single(
        "roomcast_batches_total",
        "counter",
        "Batches (closed merge windows) handed to the workers.",
        snap.hub.batches as f64,
    );
    w.histogram(
        "roomcast_batch_messages",
        "Messages per batch.",
        BATCH_BOUNDS,
        &snap.hub.batch_messages,
    );
    per_core(
        &mut w,
        "roomcast_deliveries_total",
        "counter",
        "Batches received by each worker.",
        &|s| s.deliveries,
    );
    per_core(
        &mut w,
        "roomcast_frames_queued_total",
        "counter",
        "Batch frames queued to connections for writing.",
        &|s| s.frames_queued,
    );
    per_core(
        &mut w,
        "roomcast_written_bytes_total",
        "counter",
        "Bytes written to client sockets.",
        &|s| s.bytes_out,
    );
    per_core(
        &mut w,
        "roomcast_flushes_total",
        "counter",
        "Connection flushes (one per connection with something to send per poll round).",
        &|s| s.flushes,
    );
    per_core(
        &mut w,
        "roomcast_write_calls_total",
        "counter",
        "Vectored write calls (writev / io_uring writev).",
        &|s| s.write_calls,
    );
    w.histogram(
        "roomcast_write_iovecs",
        "iovecs per vectored write call.",
        IOVEC_BOUNDS,
        &total.iovecs_per_write,
    );

    // Latency.
    w.histogram(
        "roomcast_tick_lag_seconds",
        "How late a merge window's timer fired against its deadline.",
        LATENCY_BOUNDS,
        &snap.hub.tick_lag,
    );
    w.histogram(
        "roomcast_confirm_seconds",
        "From a worker asking the control plane to confirm a channel to the confirmation (one observation per channel per worker).",
        LATENCY_BOUNDS,
        &total.confirm_latency,
    );
    w.histogram(
        "roomcast_publish_to_flush_seconds",
        "From the edge receiving a batch's first message to a worker flushing it (per batch per worker).",
        LATENCY_BOUNDS,
        &total.publish_to_flush,
    );

    // Drops and queues.
    w.family(
        "roomcast_messages_dropped_total",
        "counter",
        "Messages dropped, by priority and reason (queue: shed over --queue-soft-bytes; closed: queued when the connection closed; budget: over the room level's budget; worker_backlog: a worker's inbox was full).",
    );
    for (p, label) in PRIORITY_LABELS.iter().enumerate() {
        for (reason, n) in [
            ("queue", total.dropped_queue[p]),
            ("closed", total.dropped_closed[p]),
            ("budget", snap.hub.dropped_budget[p]),
            ("worker_backlog", snap.hub.dropped_worker_backlog_msgs[p]),
        ] {
            w.sample(
                "roomcast_messages_dropped_total",
                &[("priority", label), ("reason", reason)],
                n as f64,
            );
        }
    }
    w.single(
        "roomcast_queued_bytes",
        "gauge",
        "Bytes waiting in connections' send queues.",
        total.queued_bytes as f64,
    );
    w.single(
        "roomcast_queued_high_water_bytes",
        "gauge",
        "Highest roomcast_queued_bytes seen (summed over workers' own highs).",
        total.queued_bytes_high_water as f64,
    );
    w.single(
        "roomcast_connection_queue_high_water_bytes",
        "gauge",
        "Largest send queue seen on any one connection.",
        total.queue_high_water as f64,
    );

    // Driver.
    per_core(
        &mut w,
        "roomcast_driver_submissions_total",
        "counter",
        "io_uring: submission queue entries pushed; epoll: wait calls.",
        &|s| s.driver.submissions,
    );
    per_core(
        &mut w,
        "roomcast_driver_completions_total",
        "counter",
        "io_uring: completions reaped; epoll: readiness events.",
        &|s| s.driver.completions,
    );
    w.single(
        "roomcast_driver_accept_fd_exhausted_total",
        "counter",
        "Accepts that failed because the process ran out of file descriptors.",
        total.driver.accept_fd_exhausted as f64,
    );
    w.single(
        "roomcast_driver_recv_no_buffers_total",
        "counter",
        "io_uring: multishot recv re-armed after the provided-buffer ring ran empty.",
        total.driver.recv_no_buffers as f64,
    );
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Hist::default();
        for v in [1.0, 2.0, 3.0, 100.0, 5000.0] {
            h.record(IOVEC_BOUNDS, v);
        }
        let mut w = TextWriter::new();
        w.histogram("x", "help", IOVEC_BOUNDS, &h);
        let text = w.finish();
        assert!(text.contains("x_bucket{le=\"1\"} 1\n"), "{text}");
        assert!(text.contains("x_bucket{le=\"4\"} 3\n"), "{text}");
        assert!(text.contains("x_bucket{le=\"128\"} 4\n"), "{text}");
        assert!(text.contains("x_bucket{le=\"+Inf\"} 5\n"), "{text}");
        assert!(text.contains("x_count 5\n"), "{text}");
    }

    #[test]
    fn labels_are_escaped_and_values_formatted() {
        let mut w = TextWriter::new();
        w.family("m", "gauge", "h");
        w.sample("m", &[("a", "q\"\\\n")], 0.25);
        w.sample("m", &[], 3.0);
        assert_eq!(
            w.finish(),
            "# HELP m h\n# TYPE m gauge\nm{a=\"q\\\"\\\\\\n\"} 0.25\nm 3\n"
        );
    }

    #[test]
    fn capacity_ratio_max_is_the_highest() {
        let c = Capacity {
            used: [50.0, 60.0, 0.0, 10.0, 0.9],
            limit: [100.0, 1000.0, 1e9, 100.0, 1.0],
            busiest_worker: 0.9,
        };
        assert!((c.max_ratio() - 0.9).abs() < 1e-9);
        assert_eq!(Capacity::default().max_ratio(), 0.0);
    }

    #[test]
    fn a_fresh_edge_renders() {
        let shared = Shared::new("epoll", "e".into());
        let text = render(&shared);
        assert!(text.contains("roomcast_driver_info{driver=\"epoll\"} 1\n"));
        assert!(text.contains("roomcast_capacity_ratio_max 0\n"));
    }
}
