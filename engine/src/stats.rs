//! Per-worker counters: plain integers owned by one worker (no atomics on the hot path), copied
//! to the hub every report interval and summed there.

use crate::proto::message::PRIORITIES;

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
}

impl CloseReason {
    pub const ALL: [CloseReason; 7] = [
        CloseReason::Peer,
        CloseReason::Heartbeat,
        CloseReason::Unauthenticated,
        CloseReason::ProtocolError,
        CloseReason::Slow,
        CloseReason::WriteError,
        CloseReason::Shutdown,
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
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WorkerStats {
    /// Connections currently held.
    pub connections: u64,
    pub accepted: u64,
    /// Refused because the edge was at its connection limit.
    pub refused_full: u64,
    pub closed: [u64; CloseReason::ALL.len()],
    pub auth_failures: u64,
    /// Batches handed to this worker and frames queued to members from them.
    pub deliveries: u64,
    pub frames_queued: u64,
    /// A member whose wire format the batch was not encoded in (joined while it was encoded).
    pub frames_missing_format: u64,
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
        self.deliveries += other.deliveries;
        self.frames_queued += other.frames_queued;
        self.frames_missing_format += other.frames_missing_format;
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
    }

    /// Messages dropped for any reason on this worker.
    pub fn messages_dropped(&self) -> u64 {
        self.dropped_queue.iter().sum::<u64>() + self.dropped_closed.iter().sum::<u64>()
    }
}
