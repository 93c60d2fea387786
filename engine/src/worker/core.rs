//! One worker's logic as a deterministic state machine: no driver, no clock, no channel.
//!
//! [`WorkerCore`] holds a worker's connections (sessions, identities, memberships, send queues),
//! its room and user tables, the joins waiting for the control plane's confirmation and the
//! worker's stats. The loop in [`super`] feeds it events, each stamped with an explicit `now`:
//!
//! * a socket accepted ([`WorkerCore::admit`]: an id to register it under, or a refusal notice),
//!   bytes read ([`WorkerCore::on_data`]), the read side closed
//!   ([`WorkerCore::on_read_closed`]), a write's outcome ([`WorkerCore::on_write_status`] when
//!   the driver answered at once, [`WorkerCore::on_write_done`] on completion), the socket
//!   writable again ([`WorkerCore::on_writable`]), a connection released
//!   ([`WorkerCore::on_released`]);
//! * a message from the hub ([`WorkerCore::on_message`]) or its inbox closing;
//! * a timer ([`WorkerCore::on_timeout`], due at [`WorkerCore::poll_timeout`]).
//!
//! and carries out what the core asks for:
//!
//! * [`WorkerCore::poll_action`] until `None`: start a write (the [`WriteBuf`] comes from the
//!   core's [`WriteBufs`] and is dropped when it comes back with the outcome), close a
//!   connection, look up peers for a user query;
//! * [`WorkerCore::poll_to_hub`] until `None`: messages for the hub, in order. The hub's inbox is
//!   bounded: a message it has no room for is handed back with [`WorkerCore::hub_full`], stays at
//!   the head of the queue (order is kept: a channel's `Confirm` must follow its `Presence`) and
//!   is sent again after [`HUB_RETRY`]; meanwhile a newer report replaces an unsent one (merging
//!   their member-count changes) and joins waiting for confirmation time out as usual. The core
//!   never blocks and never drops a message for the hub.
//!
//! A room's online count ([`ToWorker::RoomOnline`]) is wrapped once per core too and queued on
//! each member whose join was answered, replacing an unsent older count of the room (see
//! `outqueue`); the latest one is kept per room, so a connection joining later gets it right
//! after its join reply. Every report carries, for each room whose members changed, a sketch of
//! its distinct users here, built from the members' user ids (nothing is stored per connection
//! for it).
//!
//! Hot path: a batch is queued on every member by `Rc` clones of frames wrapped once per core; a
//! flush builds one [`WriteBuf`] per connection in a slot of the write-buffer arena (no
//! allocation) holding one more `Rc` clone per frame. Nothing here allocates, locks or copies per
//! recipient.

use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use slab::Slab;

use crate::config::EdgeConfig;
use crate::fanout::{
    ChannelKind, Delivery, HistoryRequest, RecoverRequest, RoomPush, SendOutcome, SendRequest,
    StreamPosition, ToHub, ToWorker,
};
use crate::members::{ChannelSlot, MemberTable, Moved};
use crate::outqueue::{OutQueue, SharedFrame};
use crate::progress::{WriteProgress, STALLED_AFTER_MS};
use crate::sendlimit::{Bucket, Refusals, SendLimit};
use crate::session::{self, Session, Transport};
use crate::stats::{
    AuthFailure, CloseReason, SendAnswer, WorkerStats, IOVEC_BOUNDS, LATENCY_BOUNDS,
};
use crate::sys::{ConnId, DriverStats, WriteBuf, WriteBufs, WriteStatus, MAX_IOVECS};
use roomcast_proto::auth::Verifier;
use roomcast_proto::client::{self, ClientOp, ErrorCode, ErrorDetail, ReplyExtra, WireFormat};
use roomcast_proto::handshake;
use roomcast_proto::ids::is_valid_id;
use roomcast_proto::link::{ConnInfo, SendOutcome as LinkSendOutcome, SendRefusal};
use roomcast_proto::message::{RecoveryFailure, Since, Target};
use roomcast_proto::sketch::{user_hash, UserSketch};

/// How long after its last send a worker counts as having upstream traffic.
const UPSTREAM_ACTIVE_FOR: Duration = Duration::from_secs(1);

/// How long a closing connection may take to flush its last frames before it is cut.
pub const CLOSE_FLUSH_GRACE: Duration = Duration::from_secs(2);
/// How often members that stalled with batches in flight are looked for.
const STALL_CHECK_EVERY: Duration = Duration::from_millis(STALLED_AFTER_MS as u64 / 2);
/// How soon a message the hub's inbox had no room for is offered again.
pub const HUB_RETRY: Duration = Duration::from_millis(1);
/// How often the write-buffer arena gives back what the last two periods did not use.
pub const POOL_TRIM_EVERY: Duration = Duration::from_secs(2);

/// Everything a core needs, handed over when the worker starts.
pub struct CoreSetup {
    pub index: usize,
    pub config: Arc<EdgeConfig>,
    pub verifier: Arc<Verifier>,
    /// Connections open on every worker of this edge, against `max_connections`. Touched once
    /// per accept and once per close, never per message.
    pub open_connections: Arc<AtomicUsize>,
    /// The worker's start.
    pub now: Instant,
    /// The wall clock at `now` (token expiry is checked against it).
    pub wall: SystemTime,
}

/// What the loop must do for the core (see the module documentation).
#[derive(Debug)]
pub enum Action {
    /// Start this write (`Driver::write`) and give the outcome to
    /// [`WorkerCore::on_write_status`] at once.
    Write { conn: ConnId, buf: WriteBuf },
    /// Stop all I/O on the connection (`Driver::close`); [`WorkerCore::on_released`] follows.
    Close { conn: ConnId },
    /// Answer a user query: fill in each connection's peer address (`Driver::peer_addr`) and
    /// give the list to [`WorkerCore::user_conns_ready`].
    UserConns {
        request: u32,
        conns: Vec<(ConnId, ConnInfo)>,
    },
    /// A client's send, checked: fill in the sender's peer address (`Driver::peer_addr`) and
    /// give it to [`WorkerCore::send_ready`].
    Send(Box<SendRequest>),
}

/// What to do with an accepted socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Register it under this id (and call [`WorkerCore::registration_failed`] if that fails).
    Admit(ConnId),
    /// Refuse it with this notice: the edge is full or shutting down.
    Refuse(Bytes),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteState {
    Idle,
    /// The socket was full; waiting for `on_writable`.
    Blocked,
    /// A write was handed to the loop (its buffer is out); waiting for its outcome.
    InFlight,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifecycle {
    Open,
    /// Close frame queued; the driver is closed once the queue drains (or the grace runs out).
    Flushing {
        since: Instant,
    },
    /// `Action::Close` was issued; waiting for `on_released`.
    Releasing,
}

/// An op whose reply waits until the control plane confirms the channel it subscribed to.
#[derive(Debug, Clone, Copy)]
struct WaitingOp {
    conn: ConnId,
    seq: u64,
    format: WireFormat,
    /// `auth` (the user channel) rather than `join` (a room).
    auth: bool,
}

/// A channel of this worker waiting for the hub's `Confirmed`.
#[derive(Debug)]
struct Awaiting {
    /// Sent with the request; a `Confirmed` with another token is stale and ignored.
    token: u64,
    since: Instant,
    ops: Vec<WaitingOp>,
}

/// How a join or auth is answered.
enum Answer {
    Now(Result<(), (ErrorCode, &'static str)>),
    /// At once, with where the channel's stream stands.
    At(Option<StreamPosition>),
    /// Once the channel is confirmed (or its confirmation times out), or recovered.
    Later,
}

/// A join (or `auth`) with a resume position, waiting for the hub's `Recovered`. The connection
/// is a member of the channel but takes none of its batches meanwhile (`recovering_members`).
#[derive(Debug, Clone)]
struct PendingRecovery {
    conn: ConnId,
    seq: u64,
    kind: ChannelKind,
    slot: ChannelSlot,
    since: Instant,
}

/// A `history` op waiting for the hub's `Reply`.
#[derive(Debug, Clone, Copy)]
struct PendingHistory {
    conn: ConnId,
    seq: u64,
    since: Instant,
}

/// What a join found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Joining {
    /// The connection became a member.
    New,
    /// It already was one: nothing changes, the reply is the same.
    Again,
}

/// History reads one connection may have in flight; more are answered `unavailable`.
const MAX_HISTORY_IN_FLIGHT: u8 = 4;

/// Sends one connection may have waiting for the control plane; more are answered
/// `rate_limited` (whatever the bucket says, this bounds what one client holds in flight).
const MAX_SENDS_IN_FLIGHT: u8 = 16;

/// A `send` waiting for the hub's `SendDone`.
#[derive(Debug, Clone, Copy)]
struct PendingSend {
    conn: ConnId,
    seq: u64,
    since: Instant,
}

/// A connection's upstream state, made at its first `send` (most viewers never send).
#[derive(Debug, Clone, Copy)]
struct Sender {
    bucket: Bucket,
    /// Acks have their own, looser pace ([`ACK_LIMIT`]): one per message that asked.
    acks: Bucket,
    refusals: Refusals,
    in_flight: u8,
}

impl Sender {
    fn new(limit: SendLimit, now_ms: u32) -> Sender {
        Sender {
            bucket: limit.full_bucket(now_ms),
            acks: SendLimit::new(ACK_RATE, ACK_BURST).full_bucket(now_ms),
            refusals: Refusals::new(now_ms),
            in_flight: 0,
        }
    }
}

/// How fast one connection may `ack`: far more than any platform asks for receipts, far less
/// than would flood the control plane's receipt store and the platform's receipt URL.
const ACK_RATE: f64 = 20.0;
const ACK_BURST: u32 = 100;

/// An authenticated connection's identity and channel memberships.
struct Identity {
    user_slot: ChannelSlot,
    user_index: u32,
    allowed_rooms: Option<Box<[Box<str>]>>,
    /// The token lets it `send` (no `"send":false` claim).
    may_send: bool,
    sender: Option<Sender>,
}

struct Conn {
    id: ConnId,
    session: Session,
    /// The encoding of replies and pushes (decided by `auth` on WebSocket).
    format: WireFormat,
    identity: Option<Box<Identity>>,
    rooms: Vec<(ChannelSlot, u32)>,
    out: OutQueue,
    write: WriteState,
    life: Lifecycle,
    close_reason: CloseReason,
    opened: Instant,
    last_heard: Instant,
    /// Core clock (ms since the worker started, wrapping) when the socket last accepted a byte
    /// or data was queued on an empty queue: with data waiting, its age is how long the writes
    /// have stalled. A u32 rather than an `Instant` keeps `Conn` small.
    write_progress_ms: u32,
    dirty: bool,
    /// A reply waits, to be written before the rest of a fan-out: the connection is in
    /// `urgent`, or its write is in flight and its completion puts it there.
    urgent: bool,
    /// Channels this connection is recovering (its entries in `recovering_members`).
    recovering: u8,
    /// `history` ops in flight.
    histories: u8,
    /// The socket stalled with data waiting, and the batches queued here stopped being waited
    /// for (`WriteProgress::exclude`); cleared when it takes a byte again.
    stall_excluded: bool,
}

impl Conn {
    fn is_open(&self) -> bool {
        self.life == Lifecycle::Open
    }
}

/// One worker's state machine. See the module documentation.
pub struct WorkerCore {
    index: usize,
    config: Arc<EdgeConfig>,
    verifier: Arc<Verifier>,
    open_connections: Arc<AtomicUsize>,
    conns: Slab<Conn>,
    rooms: MemberTable,
    users: MemberTable,
    authed_per_format: [u32; 3],
    next_generation: u32,
    /// Connections with something new to send, flushed by `poll_action` from `dirty_next` on.
    dirty: Vec<usize>,
    dirty_next: usize,
    /// Connections with a reply (or a close) queued: flushed before the rest of `dirty`, so a
    /// reply that arrives while a fan-out is being written (the loop reads between its
    /// chunks) waits for one write, not for the thousands of members left.
    urgent: Vec<usize>,
    /// A connection whose write went out in full at once with more queued: written again in the
    /// same flush.
    again: Option<usize>,
    /// Connections to hand to `Driver::close`.
    to_close: Vec<ConnId>,
    /// User queries to answer (peer addresses to fill in).
    user_answers: Vec<(u32, Vec<(ConnId, ConnInfo)>)>,
    /// Messages for the hub, in order.
    outbox: VecDeque<ToHub>,
    /// Something the hub should see this round went into the outbox: wake it (once).
    wake_hub: bool,
    /// When to offer the head of the outbox again after the hub's inbox was full.
    hub_retry_at: Option<Instant>,
    /// Storage for the writes in flight; trimmed every [`POOL_TRIM_EVERY`].
    bufs: WriteBufs,
    next_trim: Instant,
    /// When to look for members that stalled with batches in flight.
    next_stall_check: Instant,
    actions: Vec<session::Action>,
    stats: WorkerStats,
    driver_stats: DriverStats,
    /// Channels waiting for the control plane's confirmation, with the ops to answer then.
    awaiting: HashMap<(ChannelKind, Box<str>), Awaiting>,
    next_token: u64,
    /// Recoveries and history reads waiting for the hub, by token.
    recoveries: HashMap<u64, PendingRecovery>,
    /// (connection, channel) pairs whose batches the connection skips until its replay.
    recovering_members: HashSet<(ConnId, ChannelKind, ChannelSlot)>,
    histories: HashMap<u64, PendingHistory>,
    /// Sends waiting for the hub's answer, by token.
    sends: HashMap<u64, PendingSend>,
    /// When the last send was passed on (see [`WorkerCore::upstream_active`]).
    last_send_at: Option<Instant>,
    /// Checked sends waiting for the loop to add the peer address. Boxed once here and moved
    /// as a pointer through `Action::Send` and `ToHub::Send`, which stay small.
    sends_out: VecDeque<Box<SendRequest>>,
    send_limit: SendLimit,
    send_kinds: Box<[Box<str>]>,
    /// When the hub received the first message of each batch delivered this round (for the
    /// publish→flush histogram, recorded once per batch after the round's flush).
    delivered_at: Vec<Instant>,
    /// The origin of the core clock (`clock_ms`).
    started: Instant,
    /// The wall clock at an instant (updated by every `on_timeout`).
    wall: (Instant, SystemTime),
    /// Per wire format: the frames of the delivery being queued, wrapped once per core.
    delivery_frames: [Vec<Rc<SharedFrame>>; 3],
    /// The latest online count of each room here, per wire format, wrapped once per core: what a
    /// member whose join is answered after it arrived is sent. Dropped with the room.
    room_online: HashMap<ChannelSlot, [Option<Rc<SharedFrame>>; 3]>,
    /// How far each batch queued here has been written (reported to the hub, which holds the
    /// channel's next window until it is).
    progress: WriteProgress,
    sweep_every: Duration,
    next_sweep: Instant,
    next_report: Instant,
    /// Set by `Shutdown`: connections closing, and the deadline for the last of them.
    shutdown: Option<Instant>,
}

impl WorkerCore {
    pub fn new(setup: CoreSetup) -> WorkerCore {
        let CoreSetup {
            index,
            config,
            verifier,
            open_connections,
            now,
            wall,
        } = setup;
        let sweep_every = Duration::from_millis(
            (config
                .heartbeat_timeout_ms
                .min(config.auth_timeout_ms)
                .min(config.join_confirm_timeout_ms)
                .min(config.write_stall_timeout_ms)
                / 4)
            .clamp(10, 1000),
        );
        let next_report = now + config.report_interval();
        let send_limit = SendLimit::new(config.send_rate, config.send_burst);
        let send_kinds = config.send_kind_list().map(Box::from).collect();
        WorkerCore {
            index,
            config,
            verifier,
            open_connections,
            conns: Slab::new(),
            rooms: MemberTable::default(),
            users: MemberTable::default(),
            authed_per_format: [0; 3],
            next_generation: 1,
            dirty: Vec::new(),
            dirty_next: 0,
            urgent: Vec::new(),
            again: None,
            to_close: Vec::new(),
            user_answers: Vec::new(),
            outbox: VecDeque::new(),
            wake_hub: false,
            hub_retry_at: None,
            bufs: WriteBufs::new(),
            next_trim: now + POOL_TRIM_EVERY,
            next_stall_check: now + STALL_CHECK_EVERY,
            actions: Vec::new(),
            stats: WorkerStats::default(),
            driver_stats: DriverStats::default(),
            awaiting: HashMap::new(),
            next_token: 1,
            recoveries: HashMap::new(),
            recovering_members: HashSet::new(),
            histories: HashMap::new(),
            sends: HashMap::new(),
            last_send_at: None,
            sends_out: VecDeque::new(),
            send_limit,
            send_kinds,
            delivered_at: Vec::new(),
            started: now,
            wall: (now, wall),
            delivery_frames: Default::default(),
            room_online: HashMap::new(),
            progress: WriteProgress::default(),
            sweep_every,
            next_sweep: now + sweep_every,
            next_report,
            shutdown: None,
        }
    }

    #[cfg(test)]
    pub fn stats(&self) -> &WorkerStats {
        &self.stats
    }

    // ---- events: connections -----------------------------------------------------------------

    /// A socket was accepted on a listener of `transport`: admit it (the caller registers it
    /// with the driver under the returned id) or refuse it (the edge is full or shutting down).
    pub fn admit(&mut self, now: Instant, transport: Transport) -> Admission {
        let max = self.config.max_connections as usize;
        let shutting_down = self.shutdown.is_some();
        if shutting_down || self.open_connections.fetch_add(1, Ordering::Relaxed) >= max {
            if !shutting_down {
                self.open_connections.fetch_sub(1, Ordering::Relaxed);
            }
            self.stats.refused_full += 1;
            return Admission::Refuse(match transport {
                Transport::WebSocket => Bytes::from(handshake::full_response()),
                Transport::Tcp => {
                    client::encode_close(WireFormat::Tcp, session::CLOSE_FULL, "full")
                }
            });
        }
        let entry = self.conns.vacant_entry();
        let id = ConnId::new(entry.key(), self.next_generation);
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        entry.insert(Conn {
            id,
            session: Session::new(transport, self.config.max_message_bytes),
            format: match transport {
                Transport::WebSocket => WireFormat::WsJson,
                Transport::Tcp => WireFormat::Tcp,
            },
            identity: None,
            rooms: Vec::new(),
            out: OutQueue::default(),
            write: WriteState::Idle,
            life: Lifecycle::Open,
            close_reason: CloseReason::Peer,
            opened: now,
            last_heard: now,
            write_progress_ms: 0,
            dirty: false,
            urgent: false,
            recovering: 0,
            histories: 0,
            stall_excluded: false,
        });
        self.stats.accepted += 1;
        self.stats.connections = self.conns.len() as u64;
        Admission::Admit(id)
    }

    /// The driver could not register an admitted connection: forget it.
    pub fn registration_failed(&mut self, id: ConnId) {
        if self.conns.get(id.key()).is_some_and(|c| c.id == id) {
            self.conns.remove(id.key());
            self.open_connections.fetch_sub(1, Ordering::Relaxed);
            self.stats.accepted -= 1;
            self.stats.connections = self.conns.len() as u64;
        }
    }

    /// Processes input for one connection.
    pub fn on_data(&mut self, now: Instant, id: ConnId, bytes: &mut [u8]) {
        let mut actions = std::mem::take(&mut self.actions);
        if let Some(conn) = self
            .conns
            .get_mut(id.key())
            .filter(|c| c.id == id && c.is_open())
        {
            conn.last_heard = now;
            conn.session.on_bytes(bytes, &mut actions);
        }
        self.run_actions(now, id, &mut actions);
        self.actions = actions;
    }

    /// The peer closed its side, or the read failed.
    pub fn on_read_closed(&mut self, id: ConnId, error: Option<std::io::Error>) {
        if let Some(error) = error {
            tracing::debug!(conn = id.0, %error, "read failed");
        }
        self.close_now(id, CloseReason::Peer);
    }

    /// The loop started an `Action::Write`; this is what the driver answered.
    pub fn on_write_status(&mut self, now: Instant, id: ConnId, status: WriteStatus) {
        match status {
            WriteStatus::Done(result, buf) => {
                drop(buf);
                self.write_finished(now, id, result, true);
            }
            WriteStatus::WouldBlock(buf) => {
                drop(buf);
                if let Some(conn) = self.conns.get_mut(id.key()).filter(|c| c.id == id) {
                    conn.out.unpin();
                    conn.write = WriteState::Blocked;
                }
            }
            // The buffer stays with the driver until `on_write_done`.
            WriteStatus::Pending => {}
        }
    }

    /// A write that was `Pending` completed.
    pub fn on_write_done(
        &mut self,
        now: Instant,
        id: ConnId,
        result: std::io::Result<usize>,
        buf: WriteBuf,
    ) {
        drop(buf);
        self.write_finished(now, id, result, false);
    }

    /// The socket can take data again after a write would have blocked.
    pub fn on_writable(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.get_mut(id.key()).filter(|c| c.id == id) {
            if conn.write == WriteState::Blocked {
                conn.write = WriteState::Idle;
                self.mark_dirty(id.key());
            }
        }
    }

    /// The driver has nothing in flight for a closed connection any more: free its slot.
    pub fn on_released(&mut self, id: ConnId) {
        if !self.conns.get(id.key()).is_some_and(|c| c.id == id) {
            return;
        }
        let mut conn = self.conns.remove(id.key());
        self.open_connections.fetch_sub(1, Ordering::Relaxed);
        self.stats.closed[conn.close_reason as usize] += 1;
        for (total, n) in self
            .stats
            .dropped_closed
            .iter_mut()
            .zip(conn.out.undelivered())
        {
            *total += n;
        }
        conn.out.abandon(&mut self.progress);
        self.stats.connections = self.conns.len() as u64;
    }

    // ---- events: the hub and time ------------------------------------------------------------

    /// A message from the hub.
    pub fn on_message(&mut self, now: Instant, message: ToWorker) {
        match message {
            ToWorker::Deliver(delivery) => {
                self.delivered_at.push(delivery.first_received);
                self.deliver(now, &delivery);
            }
            ToWorker::RoomOnline(pushes) => {
                for push in &pushes {
                    self.room_online(now, push);
                }
            }
            ToWorker::QueryUser { request, user } => self.answer_user_query(request, &user),
            ToWorker::Confirmed {
                kind,
                name,
                token,
                position,
            } => self.confirmed(now, kind, name, token, position),
            ToWorker::Recovered {
                token,
                conn,
                position,
                result,
            } => self.recovered(now, token, conn, position, result),
            ToWorker::Reply { token, conn, bytes } => {
                if let Some(pending) = self.histories.remove(&token) {
                    if let Some(c) = self.conns.get_mut(conn.key()).filter(|c| c.id == conn) {
                        c.histories = c.histories.saturating_sub(1);
                        if c.is_open() && pending.conn == conn {
                            self.queue_owned(now, conn, bytes);
                        }
                    }
                }
            }
            ToWorker::SendDone {
                token,
                conn,
                outcome,
            } => self.send_done(now, token, conn, outcome),
            ToWorker::LinkLost => {
                self.rooms.unconfirm_all();
                self.users.unconfirm_all();
            }
            ToWorker::Shutdown => self.begin_shutdown(now),
        }
    }

    /// The hub's channel closed (the hub is gone): shut down as if told to.
    pub fn on_inbox_closed(&mut self, now: Instant) {
        self.begin_shutdown(now);
    }

    /// When the core wants `on_timeout` next.
    pub fn poll_timeout(&self) -> Instant {
        let mut at = self.next_sweep.min(self.next_report).min(self.next_trim);
        if self.progress.in_flight() > 0 {
            at = at.min(self.next_stall_check);
        }
        if let Some(deadline) = self.shutdown {
            at = at.min(deadline);
        }
        if let Some(retry) = self.hub_retry_at.filter(|_| !self.outbox.is_empty()) {
            at = at.min(retry);
        }
        at
    }

    /// Runs the timers that are due: the sweep (auth, heartbeat, write-stall and close-grace
    /// deadlines, join confirmations), the report to the hub, the write-buffer trim. `wall` is the wall
    /// clock at `now`; `driver` the driver's counters, for the report.
    pub fn on_timeout(&mut self, now: Instant, wall: SystemTime, driver: DriverStats) {
        self.wall = (now, wall);
        self.driver_stats = driver;
        if now >= self.next_sweep {
            self.sweep(now);
            self.next_sweep = now + self.sweep_every;
        }
        if now >= self.next_report {
            self.report();
            self.next_report = now + self.config.report_interval();
        }
        if now >= self.next_stall_check {
            self.exclude_stalled(now);
            self.next_stall_check = now + STALL_CHECK_EVERY;
        }
        if now >= self.next_trim {
            self.bufs.trim();
            self.next_trim = now + POOL_TRIM_EVERY;
        }
    }

    /// Whether the worker is done: shut down, and every connection gone or out of time.
    pub fn is_finished(&self, now: Instant) -> bool {
        self.shutdown
            .is_some_and(|deadline| self.conns.is_empty() || now >= deadline)
    }

    /// Queues the last report (the loop sends it on its way out).
    pub fn finish(&mut self) {
        self.report();
    }

    /// The round's writes were started: records publish→flush for the batches delivered in it.
    pub fn on_flushed(&mut self, now: Instant) {
        for at in self.delivered_at.drain(..) {
            self.stats.publish_to_flush.record(
                LATENCY_BOUNDS,
                now.saturating_duration_since(at).as_secs_f64(),
            );
        }
    }

    /// Time the loop spent waiting in the driver's poll and working, since the last call.
    pub fn add_loop_time(&mut self, poll_ns: u64, busy_ns: u64) {
        self.stats.poll_ns += poll_ns;
        self.stats.busy_ns += busy_ns;
    }

    // ---- outputs -----------------------------------------------------------------------------

    /// The next thing the loop must do, or `None` when the round's work is done: viewers'
    /// sends for the hub first (they wait for a round trip), then writes — one flush per
    /// connection with something new, those with a reply queued before the rest of a fan-out —
    /// then closes, then user queries. The loop may feed events in between (it reads between
    /// the chunks of a big fan-out); what they queue is taken in this order too.
    pub fn poll_action(&mut self) -> Option<Action> {
        if let Some(send) = self.sends_out.pop_front() {
            return Some(Action::Send(send));
        }
        if let Some(key) = self.again.take() {
            if let Some(action) = self.next_write(key, true) {
                return Some(action);
            }
        }
        while let Some(key) = self.urgent.pop() {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if conn.write == WriteState::InFlight {
                // Stays marked: the write's completion puts it back here, not behind the rest
                // of the fan-out (a completion driver's fan-out writes are in flight until the
                // next poll).
                continue;
            }
            conn.urgent = false;
            if let Some(action) = self.next_write(key, false) {
                return Some(action);
            }
        }
        while self.dirty_next < self.dirty.len() {
            let key = self.dirty[self.dirty_next];
            self.dirty_next += 1;
            if let Some(conn) = self.conns.get_mut(key) {
                conn.dirty = false;
            }
            if let Some(action) = self.next_write(key, false) {
                return Some(action);
            }
        }
        self.dirty.clear();
        self.dirty_next = 0;
        if let Some(conn) = self.to_close.pop() {
            return Some(Action::Close { conn });
        }
        self.user_answers
            .pop()
            .map(|(request, conns)| Action::UserConns { request, conns })
    }

    /// Whether viewers are sending here: a send waits for the hub's answer or one was passed
    /// on within [`UPSTREAM_ACTIVE_FOR`] (the loop then reads more often during a fan-out, so
    /// that the next sends are read and answered promptly too).
    pub fn upstream_active(&self, now: Instant) -> bool {
        !self.sends.is_empty()
            || self
                .last_send_at
                .is_some_and(|at| now.saturating_duration_since(at) < UPSTREAM_ACTIVE_FOR)
    }

    /// A checked send with its peer address filled in by the loop: on to the hub.
    pub fn send_ready(&mut self, send: Box<SendRequest>) {
        self.outbox.push_back(ToHub::Send(send));
        self.wake_hub = true;
    }

    /// The answer to a user query, with peer addresses filled in by the loop.
    pub fn user_conns_ready(&mut self, request: u32, conns: Vec<ConnInfo>) {
        self.outbox.push_back(ToHub::UserConns { request, conns });
        self.wake_hub = true;
    }

    /// Batches written to enough of their members since the last call go to the hub (they let
    /// a stretched window close, so the hub is woken for them). Run at the head of every
    /// `poll_to_hub`, so whatever settled them — a write, a shed, a release — is reported the
    /// same round.
    fn report_written(&mut self) {
        let worker = self.index;
        let mut any = false;
        for delivery in self.progress.take_written() {
            self.outbox.push_back(ToHub::Written { worker, delivery });
            any = true;
        }
        self.wake_hub |= any;
    }

    /// The next message for the hub, unless the hub's inbox was full a moment ago.
    pub fn poll_to_hub(&mut self, now: Instant) -> Option<ToHub> {
        self.report_written();
        if self.hub_retry_at.is_some_and(|at| now < at) {
            return None;
        }
        self.hub_retry_at = None;
        self.outbox.pop_front()
    }

    /// The hub's inbox had no room for `message`: it goes back to the head of the queue and is
    /// offered again after [`HUB_RETRY`].
    pub fn hub_full(&mut self, now: Instant, message: ToHub) {
        self.outbox.push_front(message);
        self.hub_retry_at = Some(now + HUB_RETRY);
    }

    /// Whether the hub should be woken for what was sent this round (once per round, however
    /// many members joined or left in it).
    pub fn take_hub_wake(&mut self) -> bool {
        std::mem::take(&mut self.wake_hub)
    }

    // ---- writes ------------------------------------------------------------------------------

    fn mark_dirty(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(key);
        }
    }

    /// Like [`Self::mark_dirty`], ahead of the round's fan-out.
    fn mark_urgent(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if !conn.urgent {
            conn.urgent = true;
            self.urgent.push(key);
        }
    }

    /// Builds the connection's next write, if it can take one; closes a flushed closing one.
    fn next_write(&mut self, key: usize, continued: bool) -> Option<Action> {
        let conn = self.conns.get_mut(key)?;
        if conn.write != WriteState::Idle || conn.life == Lifecycle::Releasing {
            return None;
        }
        if conn.out.is_empty() {
            if matches!(conn.life, Lifecycle::Flushing { .. }) {
                let (id, reason) = (conn.id, conn.close_reason);
                self.close_now(id, reason);
            }
            return None;
        }
        if !continued {
            self.stats.flushes += 1;
        }
        let mut buf = self.bufs.take();
        conn.out.fill(&mut buf, MAX_IOVECS);
        conn.write = WriteState::InFlight;
        let parts = buf.parts() as u64;
        self.stats.write_calls += 1;
        self.stats.write_iovecs += parts;
        self.stats
            .iovecs_per_write
            .record_pow2(IOVEC_BOUNDS.len(), parts);
        Some(Action::Write { conn: conn.id, buf })
    }

    /// A write's outcome: consume what was written; write again, close, or wait.
    fn write_finished(
        &mut self,
        now: Instant,
        id: ConnId,
        result: std::io::Result<usize>,
        at_once: bool,
    ) {
        let Some(conn) = self.conns.get_mut(id.key()).filter(|c| c.id == id) else {
            return;
        };
        conn.write = WriteState::Idle;
        match result {
            Ok(n) => {
                if n > 0 {
                    conn.write_progress_ms = clock_ms(self.started, now);
                    conn.stall_excluded = false;
                }
                conn.out.advance(n, &mut self.progress);
                self.stats.bytes_out += n as u64;
                if !conn.out.is_empty() {
                    if !at_once {
                        if conn.urgent {
                            self.urgent.push(id.key());
                        } else {
                            self.mark_dirty(id.key());
                        }
                    } else if n > 0 {
                        // All of it went (more remains past MAX_IOVECS), or a short write: try
                        // once more in this flush, so that the driver either takes more or says
                        // WouldBlock (and arms the writable notification).
                        self.again = Some(id.key());
                    }
                } else {
                    conn.urgent = false;
                    if matches!(conn.life, Lifecycle::Flushing { .. }) {
                        let reason = conn.close_reason;
                        self.close_now(id, reason);
                    }
                }
            }
            Err(_) => {
                conn.out.unpin();
                self.close_now(id, CloseReason::WriteError);
            }
        }
    }

    /// Write-buffer slots mapped, and buffers out (for tests of the arena's bounds).
    #[cfg(test)]
    pub fn write_bufs(&self) -> (usize, usize) {
        self.bufs.slots()
    }

    // ---- deliveries --------------------------------------------------------------------------

    /// Queues one batch on every member on this core: an `Rc` clone per frame per member,
    /// nothing more.
    fn deliver(&mut self, now: Instant, delivery: &Arc<Delivery>) {
        self.stats.deliveries += 1;
        let slot = self.progress.begin(delivery);
        let last = delivery.frames.len().saturating_sub(1);
        for (format, frames) in self.delivery_frames.iter_mut().enumerate() {
            frames.clear();
            frames.extend(delivery.frames.iter().enumerate().filter_map(|(i, frame)| {
                frame.encoded[format].as_ref().map(|bytes| {
                    Rc::new(SharedFrame {
                        bytes: bytes.clone(),
                        min_priority: frame.min_priority,
                        counts: frame.counts,
                        progress: (i == last).then_some(slot),
                        online_count_of: None,
                    })
                })
            }));
        }
        let soft = self.config.queue_soft_bytes;
        let hard = self.config.queue_hard_bytes;
        let now_ms = clock_ms(self.started, now);
        let WorkerCore {
            conns,
            rooms,
            users,
            dirty,
            stats,
            delivery_frames,
            progress,
            recovering_members,
            ..
        } = self;
        let mut slow: Vec<ConnId> = Vec::new();
        let mut members = 0u32;
        let mut stalled = 0u32;
        let mut advanced: Option<(ChannelKind, ChannelSlot)> = None;
        let mut enqueue =
            |conn: &mut Conn, key: usize, channel: Option<(ChannelKind, ChannelSlot)>| {
                // A connection recovering this channel gets these messages in its replay.
                if conn.recovering > 0 {
                    if let Some((kind, slot)) = channel {
                        if recovering_members.contains(&(conn.id, kind, slot)) {
                            return;
                        }
                    }
                }
                let frames = &delivery_frames[conn.format.index()];
                if frames.is_empty() {
                    stats.frames_missing_format += 1;
                    return;
                }
                if conn.out.is_empty() {
                    conn.write_progress_ms = now_ms;
                } else if conn.stall_excluded {
                    stalled += 1;
                }
                members += 1;
                let outcome = conn.out.push_batch(frames, soft, hard, progress);
                stats.frames_queued += frames.len() as u64;
                if outcome.dropped_frames > 0 {
                    for (total, n) in stats.dropped_queue.iter_mut().zip(outcome.dropped) {
                        *total += n;
                    }
                }
                let queued = conn.out.queued_bytes() as u64;
                if queued > stats.queue_high_water {
                    stats.queue_high_water = queued;
                }
                if outcome.over_hard {
                    slow.push(conn.id);
                } else if !conn.dirty {
                    conn.dirty = true;
                    dirty.push(key);
                }
            };
        match &delivery.target {
            Target::Room(name) | Target::User(name) => {
                let (table, kind) = if matches!(delivery.target, Target::Room(_)) {
                    (&*rooms, ChannelKind::Room)
                } else {
                    (&*users, ChannelKind::User)
                };
                if let Some((channel_slot, channel)) = table
                    .slot_of(name)
                    .and_then(|slot| table.channel(slot).map(|c| (slot, c)))
                {
                    advanced = Some((kind, channel_slot));
                    for member in &channel.members {
                        let conn = &mut conns[member.key()];
                        enqueue(conn, member.key(), Some((kind, channel_slot)));
                    }
                }
            }
            Target::Broadcast => {
                for (key, conn) in conns.iter_mut() {
                    if conn.identity.is_some() && conn.is_open() {
                        enqueue(conn, key, None);
                    }
                }
            }
        }
        progress.queued(slot, members, stalled);
        match advanced {
            Some((ChannelKind::Room, channel_slot)) => {
                self.rooms.advance(channel_slot, delivery.last_seq)
            }
            Some((ChannelKind::User, channel_slot)) => {
                self.users.advance(channel_slot, delivery.last_seq)
            }
            _ => {}
        }
        for id in slow {
            self.begin_close(now, id, session::CLOSE_SLOW, CloseReason::Slow);
        }
    }

    /// A room's online count: kept as the room's latest, and queued on every member here whose
    /// join has been answered (one waiting for its reply, or recovering the room, gets it after
    /// the reply and the replay). An `Rc` clone per member, replacing an unsent older count.
    fn room_online(&mut self, now: Instant, push: &RoomPush) {
        let Some(slot) = self.rooms.slot_of(&push.room) else {
            return; // its members left since the hub sent it
        };
        let frames: [Option<Rc<SharedFrame>>; 3] = std::array::from_fn(|format| {
            push.encoded[format].as_ref().map(|bytes| {
                Rc::new(SharedFrame::online_count(
                    Arc::clone(&push.room),
                    bytes.clone(),
                ))
            })
        });
        let now_ms = clock_ms(self.started, now);
        let WorkerCore {
            conns,
            rooms,
            dirty,
            stats,
            awaiting,
            recovering_members,
            ..
        } = self;
        // The members whose join of the room still waits for its reply, looked up once per push
        // (not once per member per waiting op).
        let waiting: HashSet<ConnId> = if awaiting.is_empty() {
            HashSet::new()
        } else {
            awaiting
                .get(&(ChannelKind::Room, push.room.as_ref().into()))
                .map(|w| w.ops.iter().map(|op| op.conn).collect())
                .unwrap_or_default()
        };
        let Some(channel) = rooms.channel(slot) else {
            return;
        };
        for member in &channel.members {
            let conn = &mut conns[member.key()];
            if !conn.is_open()
                || waiting.contains(&conn.id)
                || (conn.recovering > 0
                    && recovering_members.contains(&(conn.id, ChannelKind::Room, slot)))
            {
                continue;
            }
            let Some(frame) = &frames[conn.format.index()] else {
                continue; // a format the hub did not encode: it sends the count again with it
            };
            queue_online_count(conn, frame, now_ms, stats);
            if !conn.dirty {
                conn.dirty = true;
                dirty.push(member.key());
            }
        }
        self.room_online.insert(slot, frames);
    }

    /// Queues the room's latest online count (if one came) on a connection whose join of it was
    /// just answered.
    fn send_latest_online(&mut self, now: Instant, id: ConnId, room: &str) {
        let Some(frames) = self
            .rooms
            .slot_of(room)
            .and_then(|slot| self.room_online.get(&slot))
        else {
            return;
        };
        let Some(conn) = self
            .conns
            .get_mut(id.key())
            .filter(|c| c.id == id && c.is_open())
        else {
            return;
        };
        if let Some(frame) = &frames[conn.format.index()] {
            queue_online_count(conn, frame, clock_ms(self.started, now), &mut self.stats);
            self.mark_dirty(id.key());
        }
    }

    // ---- client ops --------------------------------------------------------------------------

    /// Runs the actions a connection's input produced.
    fn run_actions(&mut self, now: Instant, id: ConnId, actions: &mut Vec<session::Action>) {
        for action in actions.drain(..) {
            let Some(conn) = self
                .conns
                .get_mut(id.key())
                .filter(|c| c.id == id && c.is_open())
            else {
                return;
            };
            match action {
                session::Action::Send(bytes) => self.queue_owned(now, id, bytes),
                session::Action::Upgraded => {}
                session::Action::Op { op, format } => self.handle_op(now, id, op, format),
                session::Action::BadOp { error, format } => {
                    let authed = conn.identity.is_some();
                    self.reply(
                        now,
                        id,
                        format,
                        error.seq,
                        Err((error.code, &error.message)),
                    );
                    if !authed {
                        self.stats.auth_failed(AuthFailure::NotAuthenticated);
                        self.begin_close(
                            now,
                            id,
                            session::CLOSE_UNAUTHENTICATED,
                            CloseReason::Unauthenticated,
                        );
                    }
                }
                session::Action::Close { code, http, .. } => {
                    let reason = if code == session::CLOSE_NORMAL {
                        CloseReason::Peer
                    } else {
                        CloseReason::ProtocolError
                    };
                    match http {
                        Some(response) => {
                            self.stats.handshake_failures += 1;
                            self.queue_owned(now, id, response);
                            self.start_flushing(now, id, reason);
                        }
                        None => self.begin_close(now, id, code, reason),
                    }
                }
            }
        }
    }

    fn handle_op(&mut self, now: Instant, id: ConnId, op: ClientOp, arrived_as: WireFormat) {
        let conn = &mut self.conns[id.key()];
        let seq = op.seq();
        if conn.identity.is_none() {
            let ClientOp::Auth { token, since, .. } = op else {
                self.stats.auth_failed(AuthFailure::NotAuthenticated);
                self.reply(
                    now,
                    id,
                    arrived_as,
                    seq,
                    Err((ErrorCode::NotAuthenticated, "auth must be the first op")),
                );
                self.begin_close(
                    now,
                    id,
                    session::CLOSE_UNAUTHENTICATED,
                    CloseReason::Unauthenticated,
                );
                return;
            };
            match self.verifier.verify(&token, unix_secs(self.wall, now)) {
                Ok(claims) => {
                    // The auth op's frame type picks the connection's encoding on WebSocket.
                    conn.format = arrived_as;
                    let user: Box<str> = claims.sub.as_str().into();
                    let confirmed = self.authenticate(id, claims);
                    if let Some(since) = since {
                        self.recover(now, id, seq, ChannelKind::User, &user, since);
                    } else if confirmed {
                        let position = self.position(ChannelKind::User, &user);
                        self.reply_at(now, id, arrived_as, seq, position);
                    } else {
                        let op = WaitingOp {
                            conn: id,
                            seq,
                            format: arrived_as,
                            auth: true,
                        };
                        self.await_confirmation(now, ChannelKind::User, user, op);
                    }
                }
                Err(error) => {
                    let code = if error.code() == "token_expired" {
                        self.stats.auth_failed(AuthFailure::TokenExpired);
                        ErrorCode::TokenExpired
                    } else {
                        self.stats.auth_failed(AuthFailure::InvalidToken);
                        ErrorCode::InvalidToken
                    };
                    self.reply(now, id, arrived_as, seq, Err((code, &error.to_string())));
                    self.begin_close(
                        now,
                        id,
                        session::CLOSE_UNAUTHENTICATED,
                        CloseReason::Unauthenticated,
                    );
                }
            }
            return;
        }
        let format = conn.format;
        let mut joined = None;
        let answer = match op {
            ClientOp::Auth { .. } => Answer::Now(Err((
                ErrorCode::AlreadyAuthenticated,
                "already authenticated",
            ))),
            ClientOp::Ping { .. } => Answer::Now(Ok(())),
            ClientOp::Join { room, since, .. } => {
                let answer = self.join(now, id, seq, &room, since);
                joined = Some(room);
                answer
            }
            ClientOp::Leave { room, .. } => Answer::Now(self.leave(now, id, &room)),
            ClientOp::History {
                room, since, limit, ..
            } => self.history(now, id, seq, &room, since, limit),
            ClientOp::Send {
                room, kind, data, ..
            } => {
                self.send(now, id, seq, room, kind, data);
                Answer::Later
            }
            ClientOp::Ack { user, msg_seq, .. } => self.ack(now, id, seq, user, msg_seq),
        };
        match answer {
            Answer::Now(result) => self.reply(now, id, format, seq, result),
            Answer::At(position) => {
                self.reply_at(now, id, format, seq, position);
                if let Some(room) = joined {
                    self.send_latest_online(now, id, &room);
                }
            }
            Answer::Later => {}
        }
    }

    /// Where a channel's stream stands on this core, for a reply.
    fn position(&self, kind: ChannelKind, name: &str) -> Option<StreamPosition> {
        let table = match kind {
            ChannelKind::User => &self.users,
            _ => &self.rooms,
        };
        table
            .slot_of(name)
            .and_then(|slot| table.channel(slot))
            .and_then(|c| c.position())
    }

    /// Asks the hub for what the connection missed of a channel it just joined; its batches are
    /// skipped until the replay arrives.
    fn recover(
        &mut self,
        now: Instant,
        id: ConnId,
        seq: u64,
        kind: ChannelKind,
        name: &str,
        since: Since,
    ) {
        let table = match kind {
            ChannelKind::User => &self.users,
            _ => &self.rooms,
        };
        let Some(slot) = table.slot_of(name) else {
            return;
        };
        let conn = &mut self.conns[id.key()];
        if !self.recovering_members.insert((id, kind, slot)) {
            // Already recovering this channel: answer this op like a join that changes nothing.
            let format = conn.format;
            self.reply(now, id, format, seq, Ok(()));
            return;
        }
        conn.recovering = conn.recovering.saturating_add(1);
        let format = conn.format;
        let token = self.take_token();
        self.recoveries.insert(
            token,
            PendingRecovery {
                conn: id,
                seq,
                kind,
                slot,
                since: now,
            },
        );
        // After the channel's `Presence` on the same queue, so the hub reports it first.
        self.outbox.push_back(ToHub::Recover(RecoverRequest {
            worker: self.index,
            token,
            conn: id,
            kind,
            name: name.into(),
            since,
            format,
        }));
        self.wake_hub = true;
    }

    /// The hub's answer to a recovery: the reply, the replay, then the live batches.
    fn recovered(
        &mut self,
        now: Instant,
        token: u64,
        conn: ConnId,
        position: StreamPosition,
        result: Result<Vec<Bytes>, RecoveryFailure>,
    ) {
        let Some(pending) = self.recoveries.remove(&token).filter(|p| p.conn == conn) else {
            return; // timed out, left or closed since
        };
        self.end_recovery(&pending);
        let Some(c) = self
            .conns
            .get(conn.key())
            .filter(|c| c.id == conn && c.is_open())
        else {
            return;
        };
        let format = c.format;
        let outcome = result.as_ref().map(|_| ()).map_err(|f| *f);
        let extra = ReplyExtra {
            position: Some((&position.epoch, position.last_seq)),
            recovered: Some(outcome),
            msgs: None,
            complete: None,
            msg_seq: None,
            not_broadcast: false,
        };
        self.queue_owned(
            now,
            conn,
            client::encode_reply_ok(format, pending.seq, &extra),
        );
        for frame in result.unwrap_or_default() {
            self.queue_owned(now, conn, frame);
        }
        if pending.kind == ChannelKind::Room {
            if let Some(room) = self.rooms.channel(pending.slot).map(|c| c.name.clone()) {
                self.send_latest_online(now, conn, &room);
            }
        }
    }

    /// The connection takes the channel's batches again.
    fn end_recovery(&mut self, pending: &PendingRecovery) {
        if self
            .recovering_members
            .remove(&(pending.conn, pending.kind, pending.slot))
        {
            if let Some(c) = self
                .conns
                .get_mut(pending.conn.key())
                .filter(|c| c.id == pending.conn)
            {
                c.recovering = c.recovering.saturating_sub(1);
            }
        }
    }

    /// A `history` op: the hub asks the control plane and encodes the reply.
    fn history(
        &mut self,
        now: Instant,
        id: ConnId,
        seq: u64,
        room: &str,
        since: u64,
        limit: u32,
    ) -> Answer {
        if !is_valid_id(room.as_bytes()) {
            return Answer::Now(Err((
                ErrorCode::InvalidId,
                "room ids are 1-128 bytes of [A-Za-z0-9_.:-]",
            )));
        }
        let conn = &mut self.conns[id.key()];
        let joined = self
            .rooms
            .slot_of(room)
            .is_some_and(|slot| conn.rooms.iter().any(|&(s, _)| s == slot));
        if !joined {
            return Answer::Now(Err((
                ErrorCode::NotJoined,
                "join the room to read its history",
            )));
        }
        if conn.histories >= MAX_HISTORY_IN_FLIGHT {
            return Answer::Now(Err((
                ErrorCode::Unavailable,
                "too many history reads in flight on this connection; wait for their replies",
            )));
        }
        conn.histories += 1;
        let format = conn.format;
        let token = self.take_token();
        self.histories.insert(
            token,
            PendingHistory {
                conn: id,
                seq,
                since: now,
            },
        );
        self.outbox.push_back(ToHub::History(HistoryRequest {
            worker: self.index,
            token,
            conn: id,
            room: room.into(),
            op_seq: seq,
            since,
            limit,
            format,
        }));
        self.wake_hub = true;
        Answer::Later
    }

    /// A client's `send`: checked here in the protocol's order (allowed, joined, size, JSON,
    /// kind, the connection's bucket), then handed to the loop for the peer address and on to
    /// the hub (the user's bucket) and the control plane. A refusal is answered at once and
    /// counted towards the flood close.
    fn send(
        &mut self,
        now: Instant,
        id: ConnId,
        seq: u64,
        room: String,
        kind: String,
        data: Bytes,
    ) {
        let now_ms = clock_ms(self.started, now);
        let conn = &self.conns[id.key()];
        let Some(identity) = conn.identity.as_deref() else {
            return;
        };
        let joined = self
            .rooms
            .slot_of(&room)
            .is_some_and(|slot| conn.rooms.iter().any(|&(s, _)| s == slot));
        let refusal = if !identity.may_send {
            Some((
                SendAnswer::Forbidden,
                ErrorCode::Forbidden,
                "this token may not send",
            ))
        } else if !joined {
            Some((
                SendAnswer::NotJoined,
                ErrorCode::NotJoined,
                "join the room to send to it",
            ))
        } else if data.len() > self.config.max_send_bytes {
            Some((
                SendAnswer::TooBig,
                ErrorCode::TooBig,
                "`data` is over the edge's max_send_bytes",
            ))
        } else if serde_json::from_slice::<serde::de::IgnoredAny>(&data).is_err() {
            Some((
                SendAnswer::BadRequest,
                ErrorCode::BadRequest,
                "`data` must be JSON",
            ))
        } else if !self.send_kinds.iter().any(|k| **k == *kind) {
            Some((
                SendAnswer::BadRequest,
                ErrorCode::BadRequest,
                "`kind` is not one clients may send here",
            ))
        } else {
            None
        };
        if let Some((answer, code, message)) = refusal {
            self.refuse_send(now, id, seq, answer, code, message, None);
            return;
        }
        let limit = self.send_limit;
        let conn = &mut self.conns[id.key()];
        let format = conn.format;
        let Some(identity) = conn.identity.as_deref_mut() else {
            return;
        };
        let sender = identity
            .sender
            .get_or_insert_with(|| Sender::new(limit, now_ms));
        if sender.in_flight >= MAX_SENDS_IN_FLIGHT {
            let message = "too many sends waiting for their replies on this connection";
            self.refuse_rate(now, id, seq, message, 100);
            return;
        }
        if let Err(retry_after_ms) = limit.take(&mut sender.bucket, now_ms) {
            let message = "over this connection's send rate";
            self.refuse_rate(now, id, seq, message, retry_after_ms);
            return;
        }
        sender.in_flight += 1;
        let user_slot = identity.user_slot;
        let Some(user) = self.users.channel(user_slot).map(|c| c.name.clone()) else {
            return;
        };
        let token = self.take_token();
        self.last_send_at = Some(now);
        self.sends.insert(
            token,
            PendingSend {
                conn: id,
                seq,
                since: now,
            },
        );
        // In order: a connection's sends reach the hub (and the control plane numbers them) in
        // the order the client sent them, also when several arrive in one round.
        self.sends_out.push_back(Box::new(SendRequest {
            worker: self.index,
            token,
            conn: id,
            user,
            room: room.into(),
            kind: kind.into(),
            data,
            format,
            peer: String::new(),
        }));
    }

    /// [`WorkerCore::refuse_send`] with `rate_limited` and when to retry.
    fn refuse_rate(
        &mut self,
        now: Instant,
        id: ConnId,
        seq: u64,
        message: &str,
        retry_after_ms: u32,
    ) {
        let (answer, code) = (SendAnswer::RateLimited, ErrorCode::RateLimited);
        self.refuse_send(now, id, seq, answer, code, message, Some(retry_after_ms));
    }

    /// Answers a send with an error (with its details) and counts it; a connection refused
    /// too often within the flood window is closed.
    #[allow(clippy::too_many_arguments)]
    fn refuse_send(
        &mut self,
        now: Instant,
        id: ConnId,
        seq: u64,
        answer: SendAnswer,
        code: ErrorCode,
        message: &str,
        retry_after_ms: Option<u32>,
    ) {
        self.stats.sends[answer as usize] += 1;
        let now_ms = clock_ms(self.started, now);
        let Some(conn) = self
            .conns
            .get_mut(id.key())
            .filter(|c| c.id == id && c.is_open())
        else {
            return;
        };
        let format = conn.format;
        let flood = conn.identity.as_deref_mut().is_some_and(|identity| {
            let limit = self.send_limit;
            let sender = identity
                .sender
                .get_or_insert_with(|| Sender::new(limit, now_ms));
            sender.refusals.refused(
                now_ms,
                self.config.send_flood_refusals,
                self.config.send_flood_window_ms,
            )
        });
        let detail = ErrorDetail {
            retry_after_ms,
            platform_code: None,
        };
        self.queue_owned(
            now,
            id,
            client::encode_reply_error(format, seq, code, message, &detail),
        );
        if flood {
            self.begin_close(now, id, session::CLOSE_SEND_FLOOD, CloseReason::SendFlood);
        }
    }

    /// The hub's answer to a send: the client's reply (or the platform's close).
    fn send_done(&mut self, now: Instant, token: u64, id: ConnId, outcome: SendOutcome) {
        let Some(pending) = self.sends.remove(&token) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(id.key()).filter(|c| c.id == id) else {
            return;
        };
        if let Some(sender) = conn.identity.as_deref_mut().and_then(|i| i.sender.as_mut()) {
            sender.in_flight = sender.in_flight.saturating_sub(1);
        }
        if !conn.is_open() || pending.conn != id {
            return;
        }
        self.stats.send_latency.record(
            LATENCY_BOUNDS,
            now.saturating_duration_since(pending.since).as_secs_f64(),
        );
        let format = conn.format;
        let seq = pending.seq;
        let ok = |extra: ReplyExtra<'_>| client::encode_reply_ok(format, seq, &extra);
        let (answer, bytes) = match outcome {
            SendOutcome::Link(LinkSendOutcome::Published { msg_seq }) => (
                SendAnswer::Published,
                ok(ReplyExtra {
                    msg_seq: Some(msg_seq),
                    ..ReplyExtra::default()
                }),
            ),
            SendOutcome::Link(LinkSendOutcome::NotBroadcast) => (
                SendAnswer::NotBroadcast,
                ok(ReplyExtra {
                    not_broadcast: true,
                    ..ReplyExtra::default()
                }),
            ),
            SendOutcome::Link(LinkSendOutcome::Refused {
                code,
                message,
                platform_code,
            }) => {
                let (answer, code) = match code {
                    SendRefusal::Rejected => (SendAnswer::Rejected, ErrorCode::Rejected),
                    SendRefusal::Unavailable => (SendAnswer::Unavailable, ErrorCode::Unavailable),
                    SendRefusal::Forbidden => (SendAnswer::Forbidden, ErrorCode::Forbidden),
                };
                let detail = ErrorDetail {
                    retry_after_ms: None,
                    platform_code: (code == ErrorCode::Rejected).then_some(&*platform_code),
                };
                (
                    answer,
                    client::encode_reply_error(format, seq, code, &message, &detail),
                )
            }
            SendOutcome::Link(LinkSendOutcome::Disconnect { code, reason }) => {
                self.stats.sends[SendAnswer::Disconnected as usize] += 1;
                self.begin_close_with(now, id, code, &reason, CloseReason::Platform);
                return;
            }
            SendOutcome::RateLimited { retry_after_ms } => {
                let message = "over this user's send rate";
                self.refuse_rate(now, id, seq, message, retry_after_ms);
                return;
            }
            SendOutcome::Unavailable => {
                let message =
                    "the control plane is not reachable; the send may not have been published";
                (
                    SendAnswer::Unavailable,
                    client::encode_reply_error(
                        format,
                        seq,
                        ErrorCode::Unavailable,
                        message,
                        &ErrorDetail::default(),
                    ),
                )
            }
        };
        self.stats.sends[answer as usize] += 1;
        self.queue_owned(now, id, bytes);
    }

    /// A client's `ack` of a message on its own user channel: passed on to the hub (which
    /// batches acks to the control plane) and answered at once.
    fn ack(
        &mut self,
        now: Instant,
        id: ConnId,
        seq: u64,
        user: Option<String>,
        msg_seq: u64,
    ) -> Answer {
        let conn = &self.conns[id.key()];
        let Some(own) = conn
            .identity
            .as_deref()
            .and_then(|i| self.users.channel(i.user_slot))
            .map(|c| c.name.clone())
        else {
            return Answer::Later;
        };
        if user.is_some_and(|u| *u != *own) {
            return Answer::Now(Err((
                ErrorCode::Forbidden,
                "a client acknowledges only its own user's messages",
            )));
        }
        let now_ms = clock_ms(self.started, now);
        let send_limit = self.send_limit;
        let ack_limit = SendLimit::new(ACK_RATE, ACK_BURST);
        let Some(identity) = self.conns[id.key()].identity.as_deref_mut() else {
            return Answer::Later;
        };
        let sender = identity
            .sender
            .get_or_insert_with(|| Sender::new(send_limit, now_ms));
        if let Err(retry_after_ms) = ack_limit.take(&mut sender.acks, now_ms) {
            let format = self.conns[id.key()].format;
            let detail = ErrorDetail {
                retry_after_ms: Some(retry_after_ms),
                platform_code: None,
            };
            let message = "over this connection's ack rate";
            let reply =
                client::encode_reply_error(format, seq, ErrorCode::RateLimited, message, &detail);
            self.queue_owned(now, id, reply);
            return Answer::Later;
        }
        let at = self.wall.1 + now.saturating_duration_since(self.wall.0);
        let at_ms = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.stats.acks += 1;
        self.outbox.push_back(ToHub::Ack {
            user: own,
            msg_seq,
            at_ms,
        });
        self.wake_hub = true;
        Answer::Now(Ok(()))
    }

    /// Joins the connection to its user channel (and the broadcast). Returns whether the user
    /// channel is confirmed, so `auth` can be answered at once.
    fn authenticate(&mut self, id: ConnId, claims: roomcast_proto::auth::Claims) -> bool {
        let conn = &mut self.conns[id.key()];
        let format = conn.format;
        let joined = self.users.join(&claims.sub, id, format);
        conn.identity = Some(Box::new(Identity {
            user_slot: joined.slot,
            user_index: joined.index,
            allowed_rooms: claims
                .rooms
                .map(|rooms| rooms.into_iter().map(String::into_boxed_str).collect()),
            may_send: claims.send != Some(false),
            sender: None,
        }));
        if joined.format_appeared {
            self.presence(ChannelKind::User, &claims.sub, format, true);
        }
        self.authed_per_format[format.index()] += 1;
        let broadcast_format_appeared = self.authed_per_format[format.index()] == 1;
        if broadcast_format_appeared {
            self.presence(ChannelKind::All, "", format, true);
        }
        // A format new on this core (for the user channel or the broadcast) must reach the hub
        // before the reply, or a publish right after it is encoded without that format: the
        // reply then waits for the hub's answer to a `Confirm` queued behind the `Presence`.
        self.users.is_confirmed(joined.slot)
            && !joined.format_appeared
            && !broadcast_format_appeared
    }

    fn join(
        &mut self,
        now: Instant,
        id: ConnId,
        seq: u64,
        room: &str,
        since: Option<Since>,
    ) -> Answer {
        let result = self.join_room(id, room);
        let format = self.conns[id.key()].format;
        match result {
            Ok((Joining::New, _)) if since.is_some() => {
                let since = since.expect("checked");
                self.recover(now, id, seq, ChannelKind::Room, room, since);
                Answer::Later
            }
            Ok((_, true)) => Answer::At(self.position(ChannelKind::Room, room)),
            Ok((_, false)) => {
                let op = WaitingOp {
                    conn: id,
                    seq,
                    format,
                    auth: false,
                };
                self.await_confirmation(now, ChannelKind::Room, room.into(), op);
                Answer::Later
            }
            Err(error) => Answer::Now(Err(error)),
        }
    }

    /// Makes the connection a member of `room` (or finds it one already).
    /// Returns whether the room is confirmed here too.
    fn join_room(
        &mut self,
        id: ConnId,
        room: &str,
    ) -> Result<(Joining, bool), (ErrorCode, &'static str)> {
        if !is_valid_id(room.as_bytes()) {
            return Err((
                ErrorCode::InvalidId,
                "room ids are 1-128 bytes of [A-Za-z0-9_.:-]",
            ));
        }
        let conn = &mut self.conns[id.key()];
        let identity = conn
            .identity
            .as_ref()
            .expect("join is only handled after auth");
        if let Some(allowed) = &identity.allowed_rooms {
            if !allowed.iter().any(|r| &**r == room) {
                return Err((
                    ErrorCode::RoomForbidden,
                    "the token does not allow this room",
                ));
            }
        }
        let slot = self.rooms.slot_of(room);
        if let Some(slot) = slot.filter(|&slot| conn.rooms.iter().any(|&(s, _)| s == slot)) {
            // Already a member: joining again changes nothing, but answers like the first join.
            return Ok((Joining::Again, self.rooms.is_confirmed(slot)));
        }
        if conn.rooms.len() >= self.config.max_rooms_per_conn as usize {
            return Err((
                ErrorCode::TooManyRooms,
                "this connection is in too many rooms",
            ));
        }
        let format = conn.format;
        let joined = self.rooms.join(room, id, format);
        conn.rooms.push((joined.slot, joined.index));
        if joined.format_appeared {
            self.presence(ChannelKind::Room, room, format, true);
        }
        // A format new to the room on this core must reach the hub before the reply (see
        // `authenticate`).
        let confirmed = self.rooms.is_confirmed(joined.slot) && !joined.format_appeared;
        Ok((Joining::New, confirmed))
    }

    /// Holds `op`'s reply until the hub confirms the channel; the first waiter asks the hub.
    fn await_confirmation(
        &mut self,
        now: Instant,
        kind: ChannelKind,
        name: Box<str>,
        op: WaitingOp,
    ) {
        let entry = self
            .awaiting
            .entry((kind, name))
            .or_insert_with_key(|(kind, name)| {
                let token = self.next_token;
                self.next_token += 1;
                // After the channel's `Presence` on the same queue, so the hub knows the members.
                self.outbox.push_back(ToHub::Confirm {
                    worker: self.index,
                    kind: *kind,
                    name: name.clone(),
                    token,
                });
                self.wake_hub = true;
                Awaiting {
                    token,
                    since: now,
                    ops: Vec::new(),
                }
            });
        entry.ops.push(op);
        self.stats.confirm_waits += 1;
    }

    /// The hub's answer to `ToHub::Confirm`: the waiting joins (or `auth`) succeed.
    fn confirmed(
        &mut self,
        now: Instant,
        kind: ChannelKind,
        name: Box<str>,
        token: u64,
        position: Option<StreamPosition>,
    ) {
        let key = (kind, name);
        if self.awaiting.get(&key).is_none_or(|a| a.token != token) {
            return; // the channel emptied (or timed out) since it asked: a stale answer
        }
        let Some(awaiting) = self.awaiting.remove(&key) else {
            return;
        };
        let (kind, name) = key;
        let table = match kind {
            ChannelKind::User => &mut self.users,
            _ => &mut self.rooms,
        };
        table.confirm(&name, position);
        let position = self.position(kind, &name);
        self.stats.confirm_latency.record(
            LATENCY_BOUNDS,
            now.saturating_duration_since(awaiting.since).as_secs_f64(),
        );
        for op in awaiting.ops {
            if self
                .conns
                .get(op.conn.key())
                .is_some_and(|c| c.id == op.conn && c.is_open())
            {
                self.reply_at(now, op.conn, op.format, op.seq, position.clone());
                if kind == ChannelKind::Room {
                    self.send_latest_online(now, op.conn, &name);
                }
            }
        }
    }

    /// Fails the ops of channels whose confirmation took longer than the timeout: a join is
    /// undone and answered `unavailable`; an `auth` is answered so and the connection closed
    /// with 1013 (try again later).
    fn expire_confirmations(&mut self, now: Instant) {
        let timeout = self.config.join_confirm_timeout();
        let expired: Vec<(ChannelKind, Box<str>)> = self
            .awaiting
            .iter()
            .filter(|(_, a)| now.saturating_duration_since(a.since) > timeout)
            .map(|(key, _)| key.clone())
            .collect();
        for key in expired {
            let Some(awaiting) = self.awaiting.remove(&key) else {
                continue;
            };
            let (kind, name) = key;
            self.stats.confirm_timeouts += awaiting.ops.len() as u64;
            tracing::warn!(worker = self.index, ?kind, channel = %name, waiting = awaiting.ops.len(),
                "the control plane did not confirm a channel in time; its joins are refused");
            for op in awaiting.ops {
                if !self
                    .conns
                    .get(op.conn.key())
                    .is_some_and(|c| c.id == op.conn && c.is_open())
                {
                    continue;
                }
                let why = "the control plane did not confirm the subscription in time; retry";
                self.reply(
                    now,
                    op.conn,
                    op.format,
                    op.seq,
                    Err((ErrorCode::Unavailable, why)),
                );
                if op.auth {
                    self.begin_close(
                        now,
                        op.conn,
                        session::CLOSE_TRY_AGAIN,
                        CloseReason::Unconfirmed,
                    );
                } else {
                    let _ = self.leave(now, op.conn, &name);
                }
            }
        }
    }

    fn leave(
        &mut self,
        now: Instant,
        id: ConnId,
        room: &str,
    ) -> Result<(), (ErrorCode, &'static str)> {
        let conn = &mut self.conns[id.key()];
        let position = self
            .rooms
            .slot_of(room)
            .and_then(|slot| conn.rooms.iter().position(|&(s, _)| s == slot));
        let Some(position) = position else {
            return Err((ErrorCode::NotJoined, "this connection is not in that room"));
        };
        // A join still waiting for confirmation gets its (ok) reply before the leave's.
        if let Some(awaiting) = self.awaiting.get_mut(&(ChannelKind::Room, room.into())) {
            let mine: Vec<WaitingOp> = awaiting
                .ops
                .iter()
                .filter(|op| op.conn == id)
                .copied()
                .collect();
            awaiting.ops.retain(|op| op.conn != id);
            for op in mine {
                self.reply(now, op.conn, op.format, op.seq, Ok(()));
            }
        }
        let conn = &mut self.conns[id.key()];
        let (slot, index) = conn.rooms[position];
        if conn.recovering > 0 {
            // A join still recovering gets its reply (without a replay) before the leave's.
            let pending: Vec<(u64, PendingRecovery)> = self
                .recoveries
                .iter()
                .filter(|(_, p)| p.conn == id && p.kind == ChannelKind::Room && p.slot == slot)
                .map(|(token, p)| (*token, p.clone()))
                .collect();
            for (token, p) in pending {
                self.recoveries.remove(&token);
                self.end_recovery(&p);
                let format = self.conns[id.key()].format;
                self.reply(now, id, format, p.seq, Ok(()));
            }
        }
        let conn = &mut self.conns[id.key()];
        conn.rooms.swap_remove(position);
        let format = conn.format;
        self.leave_slot(slot, index, format, ChannelKind::Room);
        Ok(())
    }

    /// Removes a membership and fixes up the member that moved into its place.
    fn leave_slot(&mut self, slot: ChannelSlot, index: u32, format: WireFormat, kind: ChannelKind) {
        let table = match kind {
            ChannelKind::User => &mut self.users,
            _ => &mut self.rooms,
        };
        let name: Option<Box<str>> = table.channel(slot).map(|c| c.name.clone());
        let left = table.leave(slot, index, format);
        let emptied = table.channel(slot).is_none();
        if let Some(Moved { conn, new_index }) = left.moved {
            let moved = &mut self.conns[conn.key()];
            match kind {
                ChannelKind::User => {
                    if let Some(identity) = moved.identity.as_mut() {
                        identity.user_index = new_index;
                    }
                }
                _ => {
                    if let Some(entry) = moved.rooms.iter_mut().find(|(s, _)| *s == slot) {
                        entry.1 = new_index;
                    }
                }
            }
        }
        if emptied && kind == ChannelKind::Room {
            // The slot may go to another room next.
            self.room_online.remove(&slot);
        }
        if let Some(name) = name {
            if emptied {
                // Nobody left to answer; a later `Confirmed` for it is stale.
                self.awaiting.remove(&(kind, name.clone()));
            }
            if left.format_vanished {
                self.presence(kind, &name, format, false);
            }
        }
    }

    fn presence(&mut self, kind: ChannelKind, name: &str, format: WireFormat, present: bool) {
        // The hub hears of it when it next wakes; `wake_hub` makes that this round, so the
        // control plane hears of a new room or user within a few milliseconds.
        self.wake_hub = true;
        self.outbox.push_back(ToHub::Presence {
            worker: self.index,
            kind,
            name: name.into(),
            format,
            present,
        });
    }

    fn reply(
        &mut self,
        now: Instant,
        id: ConnId,
        format: WireFormat,
        seq: u64,
        result: Result<(), (ErrorCode, &str)>,
    ) {
        self.queue_owned(now, id, client::encode_reply(format, seq, result));
    }

    /// A fresh token naming a request to the hub in its answer.
    fn take_token(&mut self) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        token
    }

    /// A successful join (or auth) reply with where the channel's stream stands.
    fn reply_at(
        &mut self,
        now: Instant,
        id: ConnId,
        format: WireFormat,
        seq: u64,
        position: Option<StreamPosition>,
    ) {
        let extra = ReplyExtra {
            position: position.as_ref().map(|p| (&*p.epoch, p.last_seq)),
            ..ReplyExtra::default()
        };
        self.queue_owned(now, id, client::encode_reply_ok(format, seq, &extra));
    }

    fn queue_owned(&mut self, now: Instant, id: ConnId, bytes: Bytes) {
        let conn = &mut self.conns[id.key()];
        if conn.out.is_empty() {
            conn.write_progress_ms = clock_ms(self.started, now);
        }
        conn.out.push_owned(bytes);
        self.mark_urgent(id.key());
    }

    // ---- closing -----------------------------------------------------------------------------

    /// Leaves every channel (so nothing more is delivered), queues a close frame, and closes the
    /// socket once it is flushed.
    fn begin_close(&mut self, now: Instant, id: ConnId, code: u16, reason: CloseReason) {
        self.begin_close_with(now, id, code, session::close_reason(code), reason);
    }

    /// [`WorkerCore::begin_close`] with the close frame's reason text given (the platform's).
    fn begin_close_with(
        &mut self,
        now: Instant,
        id: ConnId,
        code: u16,
        text: &str,
        reason: CloseReason,
    ) {
        let Some(conn) = self
            .conns
            .get(id.key())
            .filter(|c| c.id == id && c.is_open())
        else {
            return;
        };
        let notice = if conn.session.is_framing() {
            Some(client::encode_close(conn.format, code, text))
        } else {
            None
        };
        self.leave_all(id);
        if let Some(notice) = notice {
            self.queue_owned(now, id, notice);
        }
        self.start_flushing(now, id, reason);
    }

    fn start_flushing(&mut self, now: Instant, id: ConnId, reason: CloseReason) {
        let conn = &mut self.conns[id.key()];
        if !conn.is_open() {
            return;
        }
        conn.close_reason = reason;
        conn.life = Lifecycle::Flushing { since: now };
        self.mark_dirty(id.key());
    }

    /// Stops all I/O now; the slot is freed when the driver releases it.
    fn close_now(&mut self, id: ConnId, reason: CloseReason) {
        let Some(conn) = self.conns.get_mut(id.key()).filter(|c| c.id == id) else {
            return;
        };
        if conn.life == Lifecycle::Releasing {
            return;
        }
        if conn.is_open() {
            conn.close_reason = reason;
        }
        conn.life = Lifecycle::Releasing;
        self.leave_all(id);
        self.to_close.push(id);
    }

    fn leave_all(&mut self, id: ConnId) {
        let conn = &mut self.conns[id.key()];
        let format = conn.format;
        let rooms = std::mem::take(&mut conn.rooms);
        let identity = conn.identity.take();
        for (slot, index) in rooms {
            self.leave_slot(slot, index, format, ChannelKind::Room);
        }
        if let Some(identity) = identity {
            self.leave_slot(
                identity.user_slot,
                identity.user_index,
                format,
                ChannelKind::User,
            );
            self.authed_per_format[format.index()] -= 1;
            if self.authed_per_format[format.index()] == 0 {
                self.presence(ChannelKind::All, "", format, false);
            }
        }
    }

    fn begin_shutdown(&mut self, now: Instant) {
        if self.shutdown.is_some() {
            return;
        }
        self.shutdown = Some(now + CLOSE_FLUSH_GRACE);
        let ids: Vec<ConnId> = self.conns.iter().map(|(_, c)| c.id).collect();
        for id in ids {
            self.begin_close(now, id, session::CLOSE_SHUTDOWN, CloseReason::Shutdown);
        }
    }

    // ---- timers ------------------------------------------------------------------------------

    /// Members whose socket has taken no byte for [`STALLED_AFTER_MS`] with data waiting stop
    /// holding back the batches they have queued: in a room of a few members one stalled reader
    /// would otherwise keep the channel's next window shut until `--max-window-ms`.
    fn exclude_stalled(&mut self, now: Instant) {
        if self.progress.in_flight() == 0 {
            return;
        }
        let now_ms = clock_ms(self.started, now);
        for (_, conn) in &mut self.conns {
            if conn.stall_excluded
                || conn.out.is_empty()
                || now_ms.wrapping_sub(conn.write_progress_ms) <= STALLED_AFTER_MS
            {
                continue;
            }
            conn.stall_excluded = true;
            for slot in conn.out.slots() {
                self.progress.exclude(slot);
            }
        }
    }

    /// Closes connections that missed the auth deadline, went silent or stopped taking data
    /// (slow), and cuts closing ones that could not flush in time.
    fn sweep(&mut self, now: Instant) {
        let auth_timeout = self.config.auth_timeout();
        let heartbeat = self.config.heartbeat_timeout();
        let now_ms = clock_ms(self.started, now);
        let stall_ms = self.config.write_stall_timeout_ms;
        let mut expired: Vec<(ConnId, Option<u16>, CloseReason)> = Vec::new();
        for (_, conn) in &self.conns {
            let write_stalled = !conn.out.is_empty()
                && u64::from(now_ms.wrapping_sub(conn.write_progress_ms)) > stall_ms;
            match conn.life {
                Lifecycle::Open if write_stalled => {
                    expired.push((conn.id, Some(session::CLOSE_SLOW), CloseReason::Slow));
                }
                Lifecycle::Open if conn.identity.is_none() => {
                    if now.saturating_duration_since(conn.opened) > auth_timeout {
                        // Counted by reason only: `auth_failures` keeps its meaning (failed
                        // auth attempts), a timeout is the absence of one.
                        self.stats.auth_failures_by[AuthFailure::Timeout as usize] += 1;
                        expired.push((
                            conn.id,
                            Some(session::CLOSE_UNAUTHENTICATED),
                            CloseReason::Unauthenticated,
                        ));
                    }
                }
                Lifecycle::Open => {
                    if now.saturating_duration_since(conn.last_heard) > heartbeat {
                        expired.push((
                            conn.id,
                            Some(session::CLOSE_HEARTBEAT),
                            CloseReason::Heartbeat,
                        ));
                    }
                }
                Lifecycle::Flushing { since } => {
                    if now.saturating_duration_since(since) > CLOSE_FLUSH_GRACE {
                        expired.push((conn.id, None, conn.close_reason));
                    }
                }
                Lifecycle::Releasing => {}
            }
        }
        for (id, code, reason) in expired {
            match code {
                Some(code) => self.begin_close(now, id, code, reason),
                None => self.close_now(id, reason),
            }
        }
        if !self.awaiting.is_empty() {
            self.expire_confirmations(now);
        }
        if !self.recoveries.is_empty() || !self.histories.is_empty() {
            self.expire_requests(now);
        }
        if !self.sends.is_empty() {
            self.expire_sends(now);
        }
    }

    /// Answers recoveries and history reads the control plane did not answer in time with
    /// `unavailable`: a recovering join is undone, a recovering `auth` closes with 1013 (as an
    /// unconfirmed one does).
    fn expire_requests(&mut self, now: Instant) {
        let timeout = self.config.join_confirm_timeout();
        let recoveries = late_tokens(&self.recoveries, |p| p.since, now, timeout);
        let why = "the control plane did not answer in time; retry";
        for token in recoveries {
            let Some(p) = self.recoveries.remove(&token) else {
                continue;
            };
            self.end_recovery(&p);
            let Some(conn) = self
                .conns
                .get(p.conn.key())
                .filter(|c| c.id == p.conn && c.is_open())
            else {
                continue;
            };
            let format = conn.format;
            self.stats.confirm_timeouts += 1;
            self.reply(
                now,
                p.conn,
                format,
                p.seq,
                Err((ErrorCode::Unavailable, why)),
            );
            match p.kind {
                ChannelKind::User => self.begin_close(
                    now,
                    p.conn,
                    session::CLOSE_TRY_AGAIN,
                    CloseReason::Unconfirmed,
                ),
                _ => {
                    if let Some(name) = self.rooms.channel(p.slot).map(|c| c.name.clone()) {
                        let _ = self.leave(now, p.conn, &name);
                    }
                }
            }
        }
        for token in late_tokens(&self.histories, |h| h.since, now, timeout) {
            let Some(h) = self.histories.remove(&token) else {
                continue;
            };
            let Some(conn) = self
                .conns
                .get_mut(h.conn.key())
                .filter(|c| c.id == h.conn && c.is_open())
            else {
                continue;
            };
            conn.histories = conn.histories.saturating_sub(1);
            let format = conn.format;
            self.reply(
                now,
                h.conn,
                format,
                h.seq,
                Err((ErrorCode::Unavailable, why)),
            );
        }
    }

    /// Sends the control plane did not answer within the confirm timeout: `unavailable`.
    fn expire_sends(&mut self, now: Instant) {
        let timeout = self.config.join_confirm_timeout();
        for token in late_tokens(&self.sends, |s| s.since, now, timeout) {
            let Some(p) = self.sends.get(&token).copied() else {
                continue;
            };
            self.send_done(now, token, p.conn, SendOutcome::Unavailable);
        }
    }

    /// Describes this worker's connections of one user (rare: an operator's lookup); the loop
    /// adds their peer addresses.
    fn answer_user_query(&mut self, request: u32, user: &str) {
        let mut conns = Vec::new();
        if let Some(channel) = self.users.slot_of(user).and_then(|s| self.users.channel(s)) {
            for member in &channel.members {
                let conn = &self.conns[member.key()];
                let rooms = conn
                    .rooms
                    .iter()
                    .filter_map(|&(slot, _)| self.rooms.channel(slot))
                    .map(|room| room.name.to_string())
                    .collect();
                let info = ConnInfo {
                    format: conn.format,
                    peer: String::new(),
                    rooms,
                };
                conns.push((conn.id, info));
            }
        }
        self.user_answers.push((request, conns));
    }

    /// Queues the report for the hub: member counts changed since the last one and the counters.
    /// If the previous report is still waiting (the hub's inbox was full), this one replaces it,
    /// carrying its changes too.
    fn report(&mut self) {
        self.stats.connections = self.conns.len() as u64;
        // Once per report interval, not per message: the hot path keeps no running total.
        let queued: u64 = self
            .conns
            .iter()
            .map(|(_, c)| c.out.queued_bytes() as u64)
            .sum();
        self.stats.queued_bytes = queued;
        self.stats.queued_bytes_high_water = self.stats.queued_bytes_high_water.max(queued);
        self.stats.driver = self.driver_stats;
        let mut rooms = self.rooms.take_changes();
        let mut room_users = self.room_sketches(&rooms);
        let mut users = self.users.take_changes();
        let unsent = self
            .outbox
            .iter()
            .position(|m| matches!(m, ToHub::Report { .. }));
        if let Some(ToHub::Report {
            rooms: older_rooms,
            room_users: older_room_users,
            users: older_users,
            ..
        }) = unsent.and_then(|at| self.outbox.remove(at))
        {
            rooms = merge_changes(older_rooms, rooms);
            room_users = merge_sketches(older_room_users, room_users, &rooms);
            users = merge_changes(older_users, users);
        }
        self.outbox.push_back(ToHub::Report {
            worker: self.index,
            rooms,
            room_users,
            users,
            stats: Box::new(self.stats.clone()),
        });
    }

    /// The distinct users of each room in `changed` that still has members here, from the
    /// members' user ids: one pass over those rooms' members per report interval, and nothing
    /// kept per connection (see `UserSketch::from_hashes` for the bounded scratch).
    fn room_sketches(&self, changed: &HashMap<Box<str>, u32>) -> HashMap<Box<str>, UserSketch> {
        changed
            .iter()
            .filter(|&(_, &members)| members > 0)
            .filter_map(|(name, _)| {
                let channel = self
                    .rooms
                    .slot_of(name)
                    .and_then(|s| self.rooms.channel(s))?;
                let hashes = channel.members.iter().filter_map(|member| {
                    let identity = self.conns.get(member.key())?.identity.as_ref()?;
                    let user = self.users.channel(identity.user_slot)?;
                    Some(user_hash(&user.name))
                });
                Some((name.clone(), UserSketch::from_hashes(hashes)))
            })
            .collect()
    }
}

/// Queues a room's online count on one connection and counts it.
fn queue_online_count(
    conn: &mut Conn,
    frame: &Rc<SharedFrame>,
    now_ms: u32,
    stats: &mut WorkerStats,
) {
    if conn.out.is_empty() {
        conn.write_progress_ms = now_ms;
    }
    stats.online_queued += 1;
    if conn.out.push_online_count(frame) {
        stats.online_replaced += 1;
    }
}

/// The room sketches of two reports, the newer winning; a room gone since (its merged count is
/// 0) has none.
fn merge_sketches(
    mut older: HashMap<Box<str>, UserSketch>,
    newer: HashMap<Box<str>, UserSketch>,
    rooms: &HashMap<Box<str>, u32>,
) -> HashMap<Box<str>, UserSketch> {
    older.extend(newer);
    older.retain(|name, _| rooms.get(name).is_none_or(|&members| members > 0));
    older
}

/// Member-count changes of two reports, the newer count winning.
fn merge_changes(
    mut older: HashMap<Box<str>, u32>,
    newer: HashMap<Box<str>, u32>,
) -> HashMap<Box<str>, u32> {
    older.extend(newer);
    older
}

/// The core clock: milliseconds from `started` to `now`, wrapping after 49 days (compared with
/// `wrapping_sub`, and only over the few seconds a stall may last).
/// The tokens of the requests asked longer than `timeout` ago, in token order (so their replies
/// go out in the order the ops came).
fn late_tokens<T>(
    requests: &HashMap<u64, T>,
    asked: impl Fn(&T) -> Instant,
    now: Instant,
    timeout: Duration,
) -> Vec<u64> {
    let mut late: Vec<u64> = requests
        .iter()
        .filter(|(_, r)| now.saturating_duration_since(asked(r)) > timeout)
        .map(|(token, _)| *token)
        .collect();
    late.sort_unstable();
    late
}

fn clock_ms(started: Instant, now: Instant) -> u32 {
    now.saturating_duration_since(started).as_millis() as u32
}

/// Seconds since the Unix epoch at `now`, from the wall clock read at a nearby instant.
fn unix_secs(wall: (Instant, SystemTime), now: Instant) -> u64 {
    let (at, time) = wall;
    let time = if now >= at {
        time + (now - at)
    } else {
        time - (at - now)
    };
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
