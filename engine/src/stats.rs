//! Per-worker counters: plain integers owned by one worker (no atomics on the hot path), copied
//! to the hub every report interval and summed there.

use crate::sys::DriverStats;
use roomcast_proto::message::PRIORITIES;

/// Most buckets a [`Hist`] holds (plus the implicit `+Inf`).
pub const HIST_BUCKETS: usize = 16;

/// Upper bounds of the iovecs-per-write-call histogram.
pub const IOVEC_BOUNDS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];
/// Upper bounds of the latency histograms (publish→flush, tick lag), seconds.
pub const LATENCY_BOUNDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Upper bounds of the effective-window histogram, seconds (0: a quiet channel's publish went
/// out at once).
pub const WINDOW_BOUNDS: &[f64] = &[
    0.0, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0,
];
/// Rate levels a window is labelled with: 0 (none set: user and broadcast channels, rooms the
/// control plane has not levelled) to 4.
pub const LEVELS: usize = 5;
/// Upper bounds of the messages-per-batch histogram.
pub const BATCH_BOUNDS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

/// A fixed-bucket histogram as plain integers (one owner, no atomics). Buckets are not
/// cumulative here; the exposition makes them so. The bounds live with the caller (one of the
/// `*_BOUNDS` constants), so recording is a short scan and two adds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hist {
    /// `counts[i]` = observations ≤ `bounds[i]` and > `bounds[i-1]`; `counts[bounds.len()]` = above all.
    pub counts: [u64; HIST_BUCKETS + 1],
    pub sum: f64,
    pub count: u64,
}

impl Default for Hist {
    fn default() -> Self {
        Hist {
            counts: [0; HIST_BUCKETS + 1],
            sum: 0.0,
            count: 0,
        }
    }
}

impl Hist {
    #[inline]
    pub fn record(&mut self, bounds: &[f64], value: f64) {
        let bucket = bounds
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(bounds.len());
        self.counts[bucket] += 1;
        self.sum += value;
        self.count += 1;
    }

    /// Records a count against power-of-two bounds `1, 2, 4, …` (such as [`IOVEC_BOUNDS`]):
    /// the bucket comes from a leading-zero count, no scan.
    #[inline]
    pub fn record_pow2(&mut self, bounds: usize, value: u64) {
        let bucket = (u64::BITS - value.saturating_sub(1).leading_zeros()) as usize;
        self.counts[bucket.min(bounds)] += 1;
        self.sum += value as f64;
        self.count += 1;
    }

    pub fn add(&mut self, other: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
        self.sum += other.sum;
        self.count += other.count;
    }
}

/// Why a client failed authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// The token did not verify (bad signature, malformed, wrong claims).
    InvalidToken,
    TokenExpired,
    /// Another op, or an unparsable one, came before `auth`.
    NotAuthenticated,
    /// No `auth` within `--auth-timeout-ms`.
    Timeout,
}

impl AuthFailure {
    pub const ALL: [AuthFailure; 4] = [
        AuthFailure::InvalidToken,
        AuthFailure::TokenExpired,
        AuthFailure::NotAuthenticated,
        AuthFailure::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::InvalidToken => "invalid_token",
            AuthFailure::TokenExpired => "token_expired",
            AuthFailure::NotAuthenticated => "not_authenticated",
            AuthFailure::Timeout => "timeout",
        }
    }
}

/// Why a connection was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed (EOF, reset, or a WebSocket close).
    Peer,
    Heartbeat,
    Unauthenticated,
    ProtocolError,
    Slow,
    WriteError,
    Shutdown,
    /// `auth` could not be confirmed with the control plane in time (closed with 1013).
    Unconfirmed,
    /// Too many refused sends in the flood window (4030).
    SendFlood,
    /// The platform's backend answered a send with `disconnect` (its 4xxx code).
    Platform,
}

impl CloseReason {
    pub const ALL: [CloseReason; 10] = [
        CloseReason::Peer,
        CloseReason::Heartbeat,
        CloseReason::Unauthenticated,
        CloseReason::ProtocolError,
        CloseReason::Slow,
        CloseReason::WriteError,
        CloseReason::Shutdown,
        CloseReason::Unconfirmed,
        CloseReason::SendFlood,
        CloseReason::Platform,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Peer => "peer",
            CloseReason::Heartbeat => "heartbeat",
            CloseReason::Unauthenticated => "unauthenticated",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::Slow => "slow",
            CloseReason::WriteError => "write_error",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Unconfirmed => "unconfirmed",
            CloseReason::SendFlood => "send_flood",
            CloseReason::Platform => "platform",
        }
    }
}

/// What became of a client `send`, as the edge answered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendAnswer {
    Published,
    NotBroadcast,
    Forbidden,
    NotJoined,
    TooBig,
    BadRequest,
    RateLimited,
    Rejected,
    Unavailable,
    /// The platform closed the sender's connection.
    Disconnected,
}

impl SendAnswer {
    pub const ALL: [SendAnswer; 10] = [
        SendAnswer::Published,
        SendAnswer::NotBroadcast,
        SendAnswer::Forbidden,
        SendAnswer::NotJoined,
        SendAnswer::TooBig,
        SendAnswer::BadRequest,
        SendAnswer::RateLimited,
        SendAnswer::Rejected,
        SendAnswer::Unavailable,
        SendAnswer::Disconnected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SendAnswer::Published => "published",
            SendAnswer::NotBroadcast => "not_broadcast",
            SendAnswer::Forbidden => "forbidden",
            SendAnswer::NotJoined => "not_joined",
            SendAnswer::TooBig => "too_big",
            SendAnswer::BadRequest => "bad_request",
            SendAnswer::RateLimited => "rate_limited",
            SendAnswer::Rejected => "rejected",
            SendAnswer::Unavailable => "unavailable",
            SendAnswer::Disconnected => "disconnected",
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct WorkerStats {
    /// Connections currently held.
    pub connections: u64,
    pub accepted: u64,
    /// Refused because the edge was at its connection limit.
    pub refused_full: u64,
    pub closed: [u64; CloseReason::ALL.len()],
    pub auth_failures: u64,
    /// `auth_failures` by [`AuthFailure`].
    pub auth_failures_by: [u64; AuthFailure::ALL.len()],
    /// WebSocket upgrade requests refused (bad HTTP, missing headers, wrong path…).
    pub handshake_failures: u64,
    /// Batches handed to this worker and frames queued to members from them.
    pub deliveries: u64,
    pub frames_queued: u64,
    /// A member whose wire format the batch was not encoded in (joined while it was encoded).
    pub frames_missing_format: u64,
    /// Rooms' online counts queued to connections, and how many of them took the place of an
    /// unsent older count of the same room.
    pub online_queued: u64,
    pub online_replaced: u64,
    /// Messages dropped from send queues over the soft bound, per priority.
    pub dropped_queue: [u64; PRIORITIES],
    /// Messages still queued when their connection closed, per priority.
    pub dropped_closed: [u64; PRIORITIES],
    pub bytes_out: u64,
    /// Vectored write calls, iovecs they carried, and flushes (one per connection per round).
    pub write_calls: u64,
    pub write_iovecs: u64,
    pub flushes: u64,
    /// Highest send-queue size seen on any connection, bytes.
    pub queue_high_water: u64,
    /// Bytes queued on this worker's connections at the last report (summed at report time).
    pub queued_bytes: u64,
    /// Highest `queued_bytes` seen at a report.
    pub queued_bytes_high_water: u64,
    /// iovecs per vectored write call.
    pub iovecs_per_write: Hist,
    /// From the hub receiving a batch's first message to this worker's flush of it, seconds
    /// (one observation per batch per worker).
    pub publish_to_flush: Hist,
    /// Nanoseconds spent outside the driver's poll (working) and in it (waiting).
    pub busy_ns: u64,
    pub poll_ns: u64,
    /// Joins and `auth`s whose reply waited for the control plane to confirm a channel new to
    /// this worker, and those refused because the confirmation did not come in time.
    pub confirm_waits: u64,
    pub confirm_timeouts: u64,
    /// From a worker asking for a channel's confirmation to getting it, seconds.
    pub confirm_latency: Hist,
    /// Client `send`s by how they were answered ([`SendAnswer`]).
    pub sends: [u64; SendAnswer::ALL.len()],
    /// From a send leaving this worker to its answer from the control plane, seconds.
    pub send_latency: Hist,
    /// Client `ack`s passed on to the control plane.
    pub acks: u64,
    /// The driver's own counters at the last report.
    pub driver: DriverStats,
}

impl WorkerStats {
    pub fn close_count(&self, reason: CloseReason) -> u64 {
        self.closed[reason as usize]
    }

    /// Adds another worker's counters into this one.
    pub fn add(&mut self, other: &WorkerStats) {
        self.connections += other.connections;
        self.accepted += other.accepted;
        self.refused_full += other.refused_full;
        for (a, b) in self.closed.iter_mut().zip(other.closed) {
            *a += b;
        }
        self.auth_failures += other.auth_failures;
        for (a, b) in self.auth_failures_by.iter_mut().zip(other.auth_failures_by) {
            *a += b;
        }
        self.handshake_failures += other.handshake_failures;
        self.deliveries += other.deliveries;
        self.frames_queued += other.frames_queued;
        self.frames_missing_format += other.frames_missing_format;
        self.online_queued += other.online_queued;
        self.online_replaced += other.online_replaced;
        for (a, b) in self.dropped_queue.iter_mut().zip(other.dropped_queue) {
            *a += b;
        }
        for (a, b) in self.dropped_closed.iter_mut().zip(other.dropped_closed) {
            *a += b;
        }
        self.bytes_out += other.bytes_out;
        self.write_calls += other.write_calls;
        self.write_iovecs += other.write_iovecs;
        self.flushes += other.flushes;
        self.queue_high_water = self.queue_high_water.max(other.queue_high_water);
        self.queued_bytes += other.queued_bytes;
        self.queued_bytes_high_water += other.queued_bytes_high_water;
        self.iovecs_per_write.add(&other.iovecs_per_write);
        self.publish_to_flush.add(&other.publish_to_flush);
        self.busy_ns += other.busy_ns;
        self.poll_ns += other.poll_ns;
        self.confirm_waits += other.confirm_waits;
        self.confirm_timeouts += other.confirm_timeouts;
        self.confirm_latency.add(&other.confirm_latency);
        for (a, b) in self.sends.iter_mut().zip(other.sends) {
            *a += b;
        }
        self.send_latency.add(&other.send_latency);
        self.acks += other.acks;
        self.driver.submissions += other.driver.submissions;
        self.driver.completions += other.driver.completions;
        self.driver.accept_fd_exhausted += other.driver.accept_fd_exhausted;
        self.driver.recv_no_buffers += other.driver.recv_no_buffers;
    }

    pub fn auth_failed(&mut self, why: AuthFailure) {
        self.auth_failures += 1;
        self.auth_failures_by[why as usize] += 1;
    }

    /// Messages dropped for any reason on this worker.
    pub fn messages_dropped(&self) -> u64 {
        self.dropped_queue.iter().sum::<u64>() + self.dropped_closed.iter().sum::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pow2_recording_matches_the_bound_scan() {
        for value in [0u64, 1, 2, 3, 4, 5, 8, 9, 64, 65, 1024, 1025, 1 << 20] {
            let mut scanned = Hist::default();
            scanned.record(IOVEC_BOUNDS, value as f64);
            let mut shifted = Hist::default();
            shifted.record_pow2(IOVEC_BOUNDS.len(), value);
            assert_eq!(scanned, shifted, "{value}");
        }
    }
}

/// Counters the hub keeps about itself.
#[derive(Debug, Default, Clone)]
pub struct HubStats {
    /// Client acks passed to the control plane, and those dropped because the link was down
    /// (or a round held more than the hub batches).
    pub acks_sent: u64,
    pub acks_dropped: u64,
    pub publishes: u64,
    /// `publishes` by message priority.
    pub publishes_by_priority: [u64; PRIORITIES],
    /// Publishes for a channel with no member on this edge (nothing to do).
    pub publishes_without_members: u64,
    pub dropped_budget: [u64; PRIORITIES],
    /// Deliveries a worker's full inbox refused (that worker is far behind).
    pub dropped_worker_backlog: u64,
    /// Messages in those refused deliveries, per priority.
    pub dropped_worker_backlog_msgs: [u64; PRIORITIES],
    pub batches: u64,
    pub link_connects: u64,
    /// Messages per batch handed to the workers.
    pub batch_messages: Hist,
    /// How late a window's timer fired against its deadline, seconds.
    pub tick_lag: Hist,
    /// Effective window of each batch (from the channel's previous batch to its close), by the
    /// channel's rate level, seconds.
    pub windows: [Hist; LEVELS],
    /// Batches whose window stretched past its tick while the previous batch was written.
    pub windows_stretched: u64,
    /// Batches that closed with the previous one still being written (at `--max-window-ms` or
    /// the window byte bound).
    pub windows_capped: u64,
    /// Channels whose window is stretched right now (gauge).
    pub channels_stretched: u64,
    /// Recoveries answered with a replay (`recovered:true`), and the messages replayed.
    pub recoveries: u64,
    pub recovered_messages: u64,
    /// Recoveries the control plane refused, by reason (`RecoveryFailure::code() - 1`).
    pub recoveries_failed: [u64; 4],
    /// Rooms' online counts from the control plane encoded and handed to the workers holding
    /// the room (one per room per `room online` frame, however many formats and workers).
    pub online_pushes: u64,
    /// Online counts a worker's full inbox refused (that worker is far behind; the next count
    /// replaces them).
    pub online_dropped: u64,
}
