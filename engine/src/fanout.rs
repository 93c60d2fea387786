//! What crosses between the hub (ingress) thread and the workers. The hub encodes a channel's batch
//! once per wire format in use and hands the same `Arc<Delivery>` to every core holding members:
//! one handoff per batch per core. A room's online count from the control plane is encoded the
//! same way, once per format in use ([`RoomPush`]). Workers report membership transitions and
//! periodic stats back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::stats::WorkerStats;
use crate::sys::ConnId;
use roomcast_proto::client::WireFormat;
use roomcast_proto::link::{ConnInfo, SendOutcome as LinkSendOutcome};
use roomcast_proto::message::{RecoveryFailure, Since, Target, PRIORITIES};
use roomcast_proto::sketch::UserSketch;

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
    /// Names this batch of its channel in the worker's [`ToHub::Written`] (unique per hub).
    pub ticket: u64,
    /// The highest `seq` in the batch: where the channel's stream stands on the worker after it.
    pub last_seq: u64,
}

/// Where a channel's stream stands for a connection joining it: the channel's epoch and the
/// last `seq` before the connection's live stream (every later message reaches it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPosition {
    pub epoch: Arc<str>,
    pub last_seq: u64,
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

/// A room's online count (the `room` push), encoded once per wire format in use by the hub and
/// shared by every core holding the room. Not a message of the room's stream: no `seq`, and a
/// newer count replaces an unsent older one in a connection's queue.
#[derive(Debug)]
pub struct RoomPush {
    pub room: Arc<str>,
    pub online: u32,
    pub users: u32,
    /// The whole wire frame per format (`WireFormat::index()`), for the formats in use.
    pub encoded: [Option<Bytes>; 3],
}

/// Hub → worker.
#[derive(Debug)]
pub enum ToWorker {
    Deliver(Arc<Delivery>),
    /// Rooms' online counts for their members on this worker (one message for every room of a
    /// `room online` frame this worker holds).
    RoomOnline(Vec<Arc<RoomPush>>),
    /// List the connections of one user on this worker (answered with `ToHub::UserConns`).
    QueryUser {
        request: u32,
        user: Box<str>,
    },
    /// The control plane confirmed (with a link `sync` barrier) that it routes the channel to
    /// this edge: answer the joins (or `auth`) that waited on request `token`.
    Confirmed {
        kind: ChannelKind,
        name: Box<str>,
        token: u64,
        /// Where the channel's stream stands (the control plane's answer to the barrier).
        position: Option<StreamPosition>,
    },
    /// The answer to `ToHub::Recover` `token`: the replay (encoded in the connection's format),
    /// after which the connection takes the channel's live batches; or why there is none.
    Recovered {
        token: u64,
        conn: ConnId,
        position: StreamPosition,
        result: Result<Vec<Bytes>, RecoveryFailure>,
    },
    /// A reply the hub encoded for one connection (the answer to `ToHub::History` `token`).
    Reply {
        token: u64,
        conn: ConnId,
        bytes: Bytes,
    },
    /// The answer to `ToHub::Send` `token`: from the control plane, or the hub's own refusal
    /// (the user's rate limit, the link down).
    SendDone {
        token: u64,
        conn: ConnId,
        outcome: SendOutcome,
    },
    /// The link to the control plane was lost: no channel is confirmed any more.
    LinkLost,
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

/// A worker's recovery request (`ToHub::Recover`), answered with `ToWorker::Recovered` `token`.
#[derive(Debug, Clone)]
pub struct RecoverRequest {
    pub worker: usize,
    pub token: u64,
    pub conn: ConnId,
    pub kind: ChannelKind,
    pub name: Box<str>,
    pub since: Since,
    /// The connection's wire format: the replay is encoded in it.
    pub format: WireFormat,
}

/// A client's `history` op (`ToHub::History`), answered with `ToWorker::Reply` `token`.
#[derive(Debug, Clone)]
pub struct HistoryRequest {
    pub worker: usize,
    pub token: u64,
    pub conn: ConnId,
    pub room: Box<str>,
    /// The op's `seq`, which the reply echoes.
    pub op_seq: u64,
    pub since: u64,
    pub limit: u32,
    pub format: WireFormat,
}

/// A client's `send` that passed the worker's checks (`ToHub::Send`), answered with
/// `ToWorker::SendDone` `token`.
#[derive(Debug, Clone)]
pub struct SendRequest {
    pub worker: usize,
    pub token: u64,
    pub conn: ConnId,
    pub user: Box<str>,
    pub room: Box<str>,
    pub kind: Box<str>,
    pub data: Bytes,
    pub format: WireFormat,
    /// The client's `ip:port` (filled in by the worker's loop; empty when unknown).
    pub peer: String,
}

/// How a send ended, for the worker to answer: the control plane's [`LinkSendOutcome`] or the
/// hub's own refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    Link(LinkSendOutcome),
    /// Over the user's bucket on this edge: retry after this many milliseconds.
    RateLimited {
        retry_after_ms: u32,
    },
    /// The link to the control plane is down, or dropped with the send in flight.
    Unavailable,
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
    /// A channel on this worker is not confirmed yet and a join (or `auth`) waits on it: answer
    /// with `ToWorker::Confirmed` carrying `token` once the control plane routes it here. Sent
    /// after the channel's `Presence`, on the same queue.
    Confirm {
        worker: usize,
        kind: ChannelKind,
        name: Box<str>,
        token: u64,
    },
    /// A connection joined a channel (or authenticated) with a position to resume from: ask the
    /// control plane for what it missed. Sent after the channel's `Presence`, on the same queue;
    /// the connection takes none of the channel's batches until `ToWorker::Recovered`.
    Recover(RecoverRequest),
    /// A client's `history` op for a room: the reply comes back as `ToWorker::Reply`.
    History(HistoryRequest),
    /// A client's `send`: checked against the user's bucket, then passed to the control plane;
    /// answered with `ToWorker::SendDone`.
    Send(Box<SendRequest>),
    /// A client's `ack` of a message on its user channel, received at `at_ms` (Unix
    /// milliseconds): passed on to the control plane with the round's other acks.
    Ack {
        user: Box<str>,
        msg_seq: u64,
        at_ms: u64,
    },
    /// The worker has written this batch to most of its members here (or dropped it for them,
    /// or they left): the channel's next window need not wait for this worker.
    Written {
        worker: usize,
        delivery: Arc<Delivery>,
    },
    /// The answer to `ToWorker::QueryUser`.
    UserConns { request: u32, conns: Vec<ConnInfo> },
    /// Sent every report interval: member counts that changed since the last report
    /// (0 = gone from this worker), the distinct users of each of those rooms still here, and
    /// the worker's cumulative counters.
    Report {
        worker: usize,
        rooms: HashMap<Box<str>, u32>,
        room_users: HashMap<Box<str>, UserSketch>,
        users: HashMap<Box<str>, u32>,
        stats: Box<WorkerStats>,
    },
}
