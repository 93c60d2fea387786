//! What crosses between the hub (ingress) thread and the workers. The hub encodes a channel's batch
//! once per wire format in use and hands the same `Arc<Delivery>` to every core holding members:
//! one handoff per batch per core. Workers report membership transitions and periodic stats back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::proto::client::WireFormat;
use crate::proto::link::ConnInfo;
use crate::proto::message::{Target, PRIORITIES};
use crate::stats::WorkerStats;

/// One window's batch for one channel: one or more frames (a batch over the frame bound is
/// split), each encoded once per wire format in use.
#[derive(Debug)]
pub struct Delivery {
    pub target: Target,
    /// The batch's frames, in message order; queued together on each member so the queue bounds
    /// judge the window as one arrival.
    pub frames: Vec<DeliveryFrame>,
    /// When the hub received the batch's first message (publish→flush latency).
    pub first_received: Instant,
}

/// One frame of a batch.
#[derive(Debug)]
pub struct DeliveryFrame {
    /// The whole wire frame per format (`WireFormat::index()`), for the formats in use.
    pub encoded: [Option<Bytes>; 3],
    /// Priority of the most important message in the frame.
    pub min_priority: u8,
    /// Messages per priority in the frame.
    pub counts: [u32; PRIORITIES],
}

/// Hub → worker.
#[derive(Debug)]
pub enum ToWorker {
    Deliver(Arc<Delivery>),
    /// List the connections of one user on this worker (answered with `ToHub::UserConns`).
    QueryUser {
        request: u32,
        user: Box<str>,
    },
    /// Close every connection with 1001 and stop.
    Shutdown,
}

/// Kinds of channel a worker reports presence for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    Room,
    User,
    /// Every authenticated connection (the broadcast channel); `name` is empty.
    All,
}

/// Worker → hub.
#[derive(Debug)]
pub enum ToHub {
    /// The first member of `format` appeared on this worker (`present`) or the last one left.
    Presence {
        worker: usize,
        kind: ChannelKind,
        name: Box<str>,
        format: WireFormat,
        present: bool,
    },
    /// The answer to `ToWorker::QueryUser`.
    UserConns { request: u32, conns: Vec<ConnInfo> },
    /// Sent every report interval: member counts that changed since the last report
    /// (0 = gone from this worker) and the worker's cumulative counters.
    Report {
        worker: usize,
        rooms: HashMap<Box<str>, u32>,
        users: HashMap<Box<str>, u32>,
        stats: Box<WorkerStats>,
    },
}
