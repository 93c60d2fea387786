//! Metrics: what the admin server's `/metrics` shows, in the Prometheus text format.
//!
//! Nothing here is on the hot path. Workers keep plain per-worker counters and fixed-bucket
//! histograms ([`WorkerStats`]) and send a copy to the hub every report interval, as they always
//! did; the hub stores the latest copies, its own counters, rooms by level and the capacity
//! watermarks as one [`Snapshot`] once per report interval ([`Shared::store`]). A scrape clones
//! that snapshot under a mutex the hub takes once a second and [`EdgeCollector`] sums it into
//! `prometheus` metric families (the exposition helpers are `roomcast_ops::metrics`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use roomcast_ops::metrics::{Collector, Desc, Families, Family, MetricFamily};

use crate::stats::{
    AuthFailure, CloseReason, Hist, HubStats, SendAnswer, WorkerStats, BATCH_BOUNDS, IOVEC_BOUNDS,
    LATENCY_BOUNDS, WINDOW_BOUNDS,
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
}

/// Shared between the hub (writer), the admin server (reader) and [`crate::Edge`].
pub struct Shared {
    snapshot: Mutex<Snapshot>,
    pub driver: &'static str,
    /// Every worker started and none has been told to stop.
    pub workers_running: AtomicBool,
    /// The link to the control plane is up.
    pub link_up: AtomicBool,
}

impl Shared {
    pub fn new(driver: &'static str) -> Shared {
        Shared {
            snapshot: Mutex::new(Snapshot::default()),
            driver,
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

/// Logs a snapshot's counters, every worker's summed with the hub's, as one `edge stats` line.
/// Field names are the `/metrics` series they match, without the `roomcast_` prefix and `_total`.
pub fn log_edge_stats(snap: &Snapshot) {
    let mut total = WorkerStats::default();
    for stats in &snap.workers {
        total.add(stats);
    }
    let hub = &snap.hub;
    let windows_sum: f64 = hub.windows.iter().map(|h| h.sum).sum();
    let windows_count: u64 = hub.windows.iter().map(|h| h.count).sum();
    let per_flush = if total.flushes > 0 {
        total.write_calls as f64 / total.flushes as f64
    } else {
        0.0
    };
    tracing::info!(
        connections = total.connections,
        connections_accepted = total.accepted,
        connections_refused_full = total.refused_full,
        slow_consumer_closes = total.close_count(CloseReason::Slow),
        messages_in = hub.publishes,
        batches = hub.batches,
        worker_batches = total.deliveries,
        frames_queued = total.frames_queued,
        written_bytes = total.bytes_out,
        flushes = total.flushes,
        write_calls = total.write_calls,
        write_iovecs_sum = total.write_iovecs,
        write_calls_per_flush = format!("{per_flush:.3}"),
        messages_dropped_queue = total.dropped_queue.iter().sum::<u64>(),
        messages_dropped_closed = total.dropped_closed.iter().sum::<u64>(),
        messages_dropped_budget = hub.dropped_budget.iter().sum::<u64>(),
        messages_dropped_worker_backlog = hub.dropped_worker_backlog_msgs.iter().sum::<u64>(),
        connection_queue_high_water_bytes = total.queue_high_water,
        window_seconds_sum = format!("{windows_sum:.3}"),
        window_seconds_count = windows_count,
        windows_stretched = hub.windows_stretched,
        windows_capped = hub.windows_capped,
        channels_stretched = hub.channels_stretched,
        "edge stats"
    );
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
                roomcast_ops::process::resident_bytes().unwrap_or(0) as f64,
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

const PRIORITY_LABELS: [&str; PRIORITIES] = ["0", "1", "2", "3"];

/// The edge's `/metrics` collector: at each scrape, the hub's latest [`Snapshot`] summed over the
/// workers and turned into metric families (registered nowhere: the admin server renders it with
/// [`roomcast_ops::metrics::render`]).
pub struct EdgeCollector {
    shared: Arc<Shared>,
    descs: Vec<Desc>,
}

impl EdgeCollector {
    pub fn new(shared: Arc<Shared>) -> EdgeCollector {
        // Every family is written whatever the snapshot holds, so an empty one describes them all.
        let descs = families(&shared, &Snapshot::default()).descs();
        EdgeCollector { shared, descs }
    }
}

impl Collector for EdgeCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        families(&self.shared, &self.shared.load()).into_families()
    }
}

/// One histogram sample (no labels) from a [`Hist`] recorded against `bounds`.
fn observe(family: &mut Family, bounds: &[f64], hist: &Hist) {
    family.histogram(
        &[],
        bounds,
        &hist.counts[..bounds.len()],
        hist.count,
        hist.sum,
    );
}

/// The families of an edge's `/metrics` page from one snapshot, in page order (capacity
/// watermarks first: what on-call looks at). Every family is written even when it has no sample,
/// so that [`EdgeCollector::new`] can describe them all.
fn families(shared: &Shared, snap: &Snapshot) -> Families {
    let mut f = Families::new();
    let mut total = WorkerStats::default();
    for stats in &snap.workers {
        total.add(stats);
    }
    let cores: Vec<String> = (0..snap.workers.len()).map(|i| i.to_string()).collect();
    let per_core = |family: &mut Family, value: &dyn Fn(&WorkerStats) -> u64| {
        for (core, stats) in cores.iter().zip(&snap.workers) {
            family.sample(&[core], value(stats) as f64);
        }
    };

    f.gauge(
        "roomcast_driver_info",
        "The I/O driver this edge runs (value is always 1).",
        &["driver"],
    )
    .sample(&[shared.driver], 1.0);
    f.gauge(
        "roomcast_workers",
        "Worker threads (one pinned per core).",
        &[],
    )
    .sample(&[], snap.workers.len() as f64);
    f.gauge(
        "roomcast_link_up",
        "1 while the link to the control plane is up.",
        &[],
    )
    .sample(
        &[],
        f64::from(u8::from(shared.link_up.load(Ordering::Acquire))),
    );
    f.counter(
        "roomcast_link_connects_total",
        "Times the link to the control plane was established.",
        &[],
    )
    .sample(&[], snap.hub.link_connects as f64);

    // Capacity watermarks first: what on-call looks at.
    let ratio = f.gauge(
        "roomcast_capacity_ratio",
        "Use against configured capacity per resource (1 = at capacity).",
        &["resource"],
    );
    for (i, resource) in RESOURCES.iter().enumerate() {
        ratio.sample(&[resource], snap.capacity.ratio(i));
    }
    f.gauge(
        "roomcast_capacity_ratio_max",
        "The highest roomcast_capacity_ratio (reported to the control plane, which stops dispatching above its watermark).",
        &[],
    )
    .sample(&[], snap.capacity.max_ratio());
    let c = &snap.capacity;
    f.gauge(
        "roomcast_connections_limit",
        "Configured --max-connections.",
        &[],
    )
    .sample(&[], c.limit[0]);
    f.gauge(
        "roomcast_open_fds",
        "File descriptors in use (start-up baseline plus client connections).",
        &[],
    )
    .sample(&[], c.used[1]);
    f.gauge("roomcast_max_fds", "The soft open-file limit.", &[])
        .sample(&[], c.limit[1]);
    f.gauge(
        "roomcast_egress_rate_bytes",
        "Bytes per second written to clients over the last report interval.",
        &[],
    )
    .sample(&[], c.used[2]);
    f.gauge(
        "roomcast_egress_limit_bytes",
        "Configured egress bandwidth, bytes per second (--egress-bandwidth-bytes).",
        &[],
    )
    .sample(&[], c.limit[2]);
    f.gauge("roomcast_resident_memory_bytes", "Resident set size.", &[])
        .sample(&[], c.used[3]);
    f.gauge(
        "roomcast_memory_limit_bytes",
        "Memory the edge may use (--memory-limit-bytes, else cgroup memory.max, else MemTotal).",
        &[],
    )
    .sample(&[], c.limit[3]);
    let busy = f.gauge(
        "roomcast_worker_busy_ratio",
        "Share of wall time a worker spent outside its poll over the last report interval.",
        &["core"],
    );
    for (core, ratio) in cores.iter().zip(&snap.busy) {
        busy.sample(&[core], *ratio);
    }

    // Connections.
    per_core(
        f.gauge(
            "roomcast_connections",
            "Client connections open.",
            &["core"],
        ),
        &|s| s.connections,
    );
    per_core(
        f.counter(
            "roomcast_connections_accepted_total",
            "Client connections accepted.",
            &["core"],
        ),
        &|s| s.accepted,
    );
    f.counter(
        "roomcast_connections_refused_total",
        "Client connections refused, by reason.",
        &["reason"],
    )
    .sample(&["full"], total.refused_full as f64);
    let closed = f.counter(
        "roomcast_connections_closed_total",
        "Client connections closed, by reason.",
        &["reason"],
    );
    for reason in CloseReason::ALL {
        closed.sample(&[reason.as_str()], total.close_count(reason) as f64);
    }
    f.counter(
        "roomcast_slow_consumer_closes_total",
        "Connections closed because their send queue went over --queue-hard-bytes (4008).",
        &[],
    )
    .sample(&[], total.close_count(CloseReason::Slow) as f64);
    f.counter(
        "roomcast_handshake_failures_total",
        "WebSocket upgrade requests refused, by reason.",
        &["reason"],
    )
    .sample(&["bad_upgrade"], total.handshake_failures as f64);
    let auth = f.counter(
        "roomcast_auth_failures_total",
        "Connections that failed to authenticate, by reason.",
        &["reason"],
    );
    for why in AuthFailure::ALL {
        auth.sample(&[why.as_str()], total.auth_failures_by[why as usize] as f64);
    }
    f.counter(
        "roomcast_confirm_waits_total",
        "Joins and auths whose reply waited for the control plane to confirm a channel new to a worker (the join acknowledgement).",
        &[],
    )
    .sample(&[], total.confirm_waits as f64);
    f.counter(
        "roomcast_confirm_timeouts_total",
        "Joins and auths refused `unavailable` because that confirmation took longer than --join-confirm-timeout-ms.",
        &[],
    )
    .sample(&[], total.confirm_timeouts as f64);
    let sends = f.counter(
        "roomcast_sends_total",
        "Client sends (upstream messages), by how they were answered: published, not_broadcast, or the refusal's code (at the edge or by the control plane); disconnected when the platform closed the sender.",
        &["result"],
    );
    for answer in SendAnswer::ALL {
        sends.sample(&[answer.as_str()], total.sends[answer as usize] as f64);
    }
    let acks = f.counter(
        "roomcast_acks_total",
        "Client acks (receipts): received from clients, sent to the control plane, dropped (the link was down).",
        &["result"],
    );
    acks.sample(&["received"], total.acks as f64);
    acks.sample(&["sent"], snap.hub.acks_sent as f64);
    acks.sample(&["dropped"], snap.hub.acks_dropped as f64);

    // Rooms.
    let levels: Vec<String> = snap.levels.keys().map(|l| l.to_string()).collect();
    let rooms = f.gauge(
        "roomcast_rooms",
        "Rooms with members on this edge, by rate level.",
        &["level"],
    );
    for (level, (n, _)) in levels.iter().zip(snap.levels.values()) {
        rooms.sample(&[level], *n as f64);
    }
    let members = f.gauge(
        "roomcast_room_members",
        "Room memberships on this edge, by the room's rate level.",
        &["level"],
    );
    for (level, (_, n)) in levels.iter().zip(snap.levels.values()) {
        members.sample(&[level], *n as f64);
    }
    f.gauge(
        "roomcast_users",
        "Users with at least one authenticated connection on this edge.",
        &[],
    )
    .sample(&[], snap.users as f64);

    // Traffic.
    let messages_in = f.counter(
        "roomcast_messages_in_total",
        "Messages published to this edge by the control plane, by priority.",
        &["priority"],
    );
    for (label, n) in PRIORITY_LABELS.iter().zip(snap.hub.publishes_by_priority) {
        messages_in.sample(&[label], n as f64);
    }
    f.counter(
        "roomcast_messages_without_members_total",
        "Published messages for a channel with no member on this edge.",
        &[],
    )
    .sample(&[], snap.hub.publishes_without_members as f64);
    f.counter(
        "roomcast_batches_total",
        "Batches (closed merge windows) handed to the workers.",
        &[],
    )
    .sample(&[], snap.hub.batches as f64);
    observe(
        f.histogram("roomcast_batch_messages", "Messages per batch.", &[]),
        BATCH_BOUNDS,
        &snap.hub.batch_messages,
    );
    per_core(
        f.counter(
            "roomcast_worker_batches_total",
            "Batches (one per closed window and core, shared by its members) handed to each worker.",
            &["core"],
        ),
        &|s| s.deliveries,
    );
    per_core(
        f.counter(
            "roomcast_frames_queued_total",
            "Batch frames queued to connections for writing.",
            &["core"],
        ),
        &|s| s.frames_queued,
    );
    per_core(
        f.counter(
            "roomcast_written_bytes_total",
            "Bytes written to client sockets.",
            &["core"],
        ),
        &|s| s.bytes_out,
    );
    per_core(
        f.counter(
            "roomcast_flushes_total",
            "Connection flushes (one per connection with something to send per poll round).",
            &["core"],
        ),
        &|s| s.flushes,
    );
    per_core(
        f.counter(
            "roomcast_write_calls_total",
            "Vectored write calls (writev / io_uring writev).",
            &["core"],
        ),
        &|s| s.write_calls,
    );
    observe(
        f.histogram(
            "roomcast_write_iovecs",
            "iovecs per vectored write call.",
            &[],
        ),
        IOVEC_BOUNDS,
        &total.iovecs_per_write,
    );

    // Merge windows that follow the fan-out.
    let windows = f.histogram(
        "roomcast_window_seconds",
        "Effective merge window of each batch, by the channel's rate level (0: none set): from the channel's previous batch (or a quiet channel's first message) to the close. Above the level's tick when the window stretched while the previous batch was still being written.",
        &["level"],
    );
    for (level, hist) in snap.hub.windows.iter().enumerate() {
        windows.histogram(
            &[&level.to_string()],
            WINDOW_BOUNDS,
            &hist.counts[..WINDOW_BOUNDS.len()],
            hist.count,
            hist.sum,
        );
    }
    f.gauge(
        "roomcast_channels_stretched",
        "Channels whose merge window is past its tick, waiting for the edge to write the previous batch.",
        &[],
    )
    .sample(&[], snap.hub.channels_stretched as f64);
    f.counter(
        "roomcast_windows_stretched_total",
        "Batches whose window stretched past its tick while the previous batch was written.",
        &[],
    )
    .sample(&[], snap.hub.windows_stretched as f64);
    f.counter(
        "roomcast_windows_capped_total",
        "Batches that closed with the previous batch still being written (at --max-window-ms or the window byte bound); the connections' queue bounds apply to them.",
        &[],
    )
    .sample(&[], snap.hub.windows_capped as f64);

    // Rooms' online counts.
    f.counter(
        "roomcast_online_pushes_total",
        "Rooms' online counts from the control plane, encoded once per wire format in use and handed to the workers holding the room.",
        &[],
    )
    .sample(&[], snap.hub.online_pushes as f64);
    f.counter(
        "roomcast_online_pushes_dropped_total",
        "Rooms' online counts a worker's full inbox refused (the next count replaces them).",
        &[],
    )
    .sample(&[], snap.hub.online_dropped as f64);
    per_core(
        f.counter(
            "roomcast_online_counts_queued_total",
            "Rooms' online counts queued to connections.",
            &["core"],
        ),
        &|s| s.online_queued,
    );
    per_core(
        f.counter(
            "roomcast_online_counts_replaced_total",
            "Rooms' online counts that took the place of an unsent older count of the same room in a connection's queue.",
            &["core"],
        ),
        &|s| s.online_replaced,
    );

    // Recovery.
    f.counter(
        "roomcast_recoveries_total",
        "Joins (or auths) with a resume position, by outcome: recovered (the missed messages replayed) or the reason there was no replay.",
        &["outcome"],
    )
    .sample(&["recovered"], snap.hub.recoveries as f64)
    .sample(&["epoch_changed"], snap.hub.recoveries_failed[0] as f64)
    .sample(&["too_old"], snap.hub.recoveries_failed[1] as f64)
    .sample(&["too_many"], snap.hub.recoveries_failed[2] as f64)
    .sample(&["not_stored"], snap.hub.recoveries_failed[3] as f64);
    f.counter(
        "roomcast_recovered_messages_total",
        "Messages replayed to connections that resumed with a position.",
        &[],
    )
    .sample(&[], snap.hub.recovered_messages as f64);

    // Latency.
    observe(
        f.histogram(
            "roomcast_tick_lag_seconds",
            "How late a merge window's timer fired against its deadline.",
            &[],
        ),
        LATENCY_BOUNDS,
        &snap.hub.tick_lag,
    );
    observe(
        f.histogram(
            "roomcast_confirm_seconds",
            "From a worker asking the control plane to confirm a channel to the confirmation (one observation per channel per worker).",
            &[],
        ),
        LATENCY_BOUNDS,
        &total.confirm_latency,
    );
    observe(
        f.histogram(
            "roomcast_send_seconds",
            "From a worker passing a client send to the control plane to its answer.",
            &[],
        ),
        LATENCY_BOUNDS,
        &total.send_latency,
    );
    observe(
        f.histogram(
            "roomcast_publish_to_flush_seconds",
            "From the edge receiving a batch's first message to a worker flushing it (per batch per worker).",
            &[],
        ),
        LATENCY_BOUNDS,
        &total.publish_to_flush,
    );

    // Drops and queues.
    let dropped = f.counter(
        "roomcast_messages_dropped_total",
        "Messages dropped, by priority and reason (queue: shed over --queue-soft-bytes; closed: queued when the connection closed; budget: over the room level's budget; worker_backlog: a worker's inbox was full).",
        &["priority", "reason"],
    );
    for (p, label) in PRIORITY_LABELS.iter().enumerate() {
        for (reason, n) in [
            ("queue", total.dropped_queue[p]),
            ("closed", total.dropped_closed[p]),
            ("budget", snap.hub.dropped_budget[p]),
            ("worker_backlog", snap.hub.dropped_worker_backlog_msgs[p]),
        ] {
            dropped.sample(&[label, reason], n as f64);
        }
    }
    f.gauge(
        "roomcast_queued_bytes",
        "Bytes waiting in connections' send queues.",
        &[],
    )
    .sample(&[], total.queued_bytes as f64);
    f.gauge(
        "roomcast_queued_high_water_bytes",
        "Highest roomcast_queued_bytes seen (summed over workers' own highs).",
        &[],
    )
    .sample(&[], total.queued_bytes_high_water as f64);
    f.gauge(
        "roomcast_connection_queue_high_water_bytes",
        "Largest send queue seen on any one connection.",
        &[],
    )
    .sample(&[], total.queue_high_water as f64);

    // Driver.
    per_core(
        f.counter(
            "roomcast_driver_submissions_total",
            "io_uring: submission queue entries pushed; epoll: wait calls.",
            &["core"],
        ),
        &|s| s.driver.submissions,
    );
    per_core(
        f.counter(
            "roomcast_driver_completions_total",
            "io_uring: completions reaped; epoll: readiness events.",
            &["core"],
        ),
        &|s| s.driver.completions,
    );
    f.counter(
        "roomcast_driver_accept_fd_exhausted_total",
        "Accepts that failed because the process ran out of file descriptors.",
        &[],
    )
    .sample(&[], total.driver.accept_fd_exhausted as f64);
    f.counter(
        "roomcast_driver_recv_no_buffers_total",
        "io_uring: multishot recv re-armed after the provided-buffer ring ran empty.",
        &[],
    )
    .sample(&[], total.driver.recv_no_buffers as f64);
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomcast_ops::metrics::{check_described, render};

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

    /// Three workers and the hub with something in every counter and histogram.
    fn busy_snapshot() -> Snapshot {
        let mut workers = Vec::new();
        for i in 0..3u64 {
            let mut w = WorkerStats {
                connections: 10 + i,
                accepted: 20 + i,
                refused_full: i,
                handshake_failures: 1,
                deliveries: 5,
                frames_queued: 7 * (i + 1),
                bytes_out: 1000,
                write_calls: 9,
                flushes: 4,
                queue_high_water: 100 + i,
                queued_bytes: 50,
                queued_bytes_high_water: 70,
                busy_ns: 10,
                poll_ns: 30,
                confirm_waits: 2,
                confirm_timeouts: 1,
                ..WorkerStats::default()
            };
            w.closed[CloseReason::Slow as usize] = 3;
            w.auth_failures_by[1] = 2;
            w.dropped_queue[2] = 4;
            w.dropped_closed[0] = 1;
            w.driver.submissions = 11;
            w.driver.completions = 12;
            w.driver.accept_fd_exhausted = 1;
            w.driver.recv_no_buffers = 2;
            for v in [1.0, 3.0, 100.0, 5000.0] {
                w.iovecs_per_write.record(IOVEC_BOUNDS, v);
            }
            for v in [0.0001, 0.003, 0.7, 9.0] {
                w.publish_to_flush.record(LATENCY_BOUNDS, v);
                w.confirm_latency.record(LATENCY_BOUNDS, v / 2.0);
            }
            workers.push(w);
        }
        let mut hub = HubStats {
            publishes_by_priority: [1, 2, 3, 4],
            publishes_without_members: 5,
            dropped_budget: [0, 1, 0, 2],
            dropped_worker_backlog_msgs: [3, 0, 0, 1],
            batches: 8,
            link_connects: 1,
            ..HubStats::default()
        };
        let mut bm = Hist::default();
        for v in [1.0, 7.0, 60.0, 2000.0] {
            bm.record(BATCH_BOUNDS, v);
        }
        hub.batch_messages = bm;
        hub.tick_lag.record(LATENCY_BOUNDS, 0.002);
        Snapshot {
            workers,
            hub,
            levels: [(0u8, (3u64, 10u64)), (2, (1, 4))].into_iter().collect(),
            users: 12,
            capacity: Capacity {
                used: [33.0, 97.0, 1234.5, 1e8, 0.4],
                limit: [1000.0, 4096.0, 1e9, 4e9, 1.0],
                busiest_worker: 0.4,
            },
            busy: vec![0.25, 0.4, 0.1],
        }
    }

    fn busy_edge() -> EdgeCollector {
        let shared = Arc::new(Shared::new("uring"));
        shared.store(busy_snapshot());
        shared.link_up.store(true, Ordering::Release);
        EdgeCollector::new(shared)
    }

    #[test]
    fn a_fresh_edge_renders() {
        let collector = EdgeCollector::new(Arc::new(Shared::new("epoll")));
        check_described(&collector).unwrap();
        let text = render(&collector);
        assert!(text.contains("roomcast_driver_info{driver=\"epoll\"} 1\n"));
        assert!(text.contains("roomcast_capacity_ratio_max 0\n"));
        // Nothing sampled yet: no rooms, no per-core series, no empty family headers.
        assert!(!text.contains("roomcast_rooms"), "{text}");
    }

    #[test]
    fn every_family_of_a_busy_edge_is_described() {
        let collector = busy_edge();
        check_described(&collector).unwrap();
        let described: Vec<&str> = collector
            .desc()
            .iter()
            .map(|d| d.fq_name.as_str())
            .collect();
        let collected: Vec<String> = collector
            .collect()
            .iter()
            .filter(|f| !f.get_metric().is_empty())
            .map(|f| f.name().to_owned())
            .collect();
        assert_eq!(described, collected, "a busy edge samples every family");
    }

    #[test]
    fn a_busy_edge_sums_workers_and_keeps_per_core_series() {
        let text = render(&busy_edge());
        for line in [
            "roomcast_frames_queued_total{core=\"2\"} 21\n",
            "roomcast_connections_refused_total{reason=\"full\"} 3\n",
            "roomcast_slow_consumer_closes_total 9\n",
            "roomcast_messages_dropped_total{priority=\"2\",reason=\"queue\"} 12\n",
            "roomcast_messages_dropped_total{priority=\"3\",reason=\"worker_backlog\"} 1\n",
            "roomcast_rooms{level=\"2\"} 1\n",
            "roomcast_room_members{level=\"0\"} 10\n",
            "roomcast_write_iovecs_bucket{le=\"4\"} 6\n",
            "roomcast_write_iovecs_bucket{le=\"1024\"} 9\n",
            "roomcast_write_iovecs_bucket{le=\"+Inf\"} 12\n",
            "roomcast_write_iovecs_count 12\n",
            "roomcast_publish_to_flush_seconds_bucket{le=\"0.0005\"} 3\n",
            "roomcast_worker_busy_ratio{core=\"1\"} 0.4\n",
            "roomcast_link_up 1\n",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
    }
}
