//! One pinned worker thread: its listeners, its slab of connections, its room and user tables.
//!
//! The loop: poll the driver (reads, accepts, write completions), run what the events asked for
//! (registrations, closes), take batches from the hub and queue them on members, then flush every
//! connection that got something — one vectored write per connection per round. Nothing here
//! locks or touches another core's memory; batches arrive as one `Arc` per core and are shared
//! between members through a per-core `Rc`.

use std::collections::HashMap;
use std::io::{IoSlice, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use slab::Slab;

use crate::config::EdgeConfig;
use crate::fanout::{ChannelKind, Delivery, ToHub, ToWorker};
use crate::members::{ChannelSlot, MemberTable, Moved};
use crate::outqueue::{OutQueue, SharedFrame};
use crate::session::{self, Action, Session, Transport};
use crate::stats::{AuthFailure, CloseReason, WorkerStats, IOVEC_BOUNDS, LATENCY_BOUNDS};
use crate::sys::{socket, ConnId, Driver, Event, WriteStatus, MAX_IOVECS};
use roomcast_proto::auth::Verifier;
use roomcast_proto::client::{self, ClientOp, ErrorCode, WireFormat};
use roomcast_proto::handshake;
use roomcast_proto::ids::is_valid_id;
use roomcast_proto::link::ConnInfo;
use roomcast_proto::message::Target;

/// How long a closing connection may take to flush its last frames before it is cut.
const CLOSE_FLUSH_GRACE: Duration = Duration::from_secs(2);
/// How long a refused socket stays half-open so the client can read why it was refused.
const REFUSE_LINGER: Duration = Duration::from_secs(1);
const MAX_LINGERING: usize = 256;

/// Everything a worker needs, handed over when it starts.
pub struct WorkerSetup {
    pub index: usize,
    pub config: Arc<EdgeConfig>,
    pub verifier: Arc<Verifier>,
    pub driver: Box<dyn Driver>,
    pub listeners: Vec<(TcpListener, Transport)>,
    pub inbox: Receiver<ToWorker>,
    pub hub: Sender<ToHub>,
    /// Wakes the hub when an answer must not wait for its next timer.
    pub hub_waker: Arc<mio::Waker>,
    /// Connections open on every worker of this edge, against `max_connections`. Touched once
    /// per accept and once per close, never per message.
    pub open_connections: Arc<AtomicUsize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteState {
    Idle,
    /// The socket was full; waiting for `Event::Writable`.
    Blocked,
    /// A write was submitted; waiting for `Event::WriteDone`.
    InFlight,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifecycle {
    Open,
    /// Close frame queued; the driver is closed once the queue drains (or the grace runs out).
    Flushing {
        since: Instant,
    },
    /// `Driver::close` was called; waiting for `Event::Released`.
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
    /// Once the channel is confirmed (or its confirmation times out).
    Later,
}

/// An authenticated connection's identity and channel memberships.
struct Identity {
    user_slot: ChannelSlot,
    user_index: u32,
    allowed_rooms: Option<Box<[Box<str>]>>,
}

struct Conn {
    stream: TcpStream,
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
    /// Worker clock (ms since the worker started, wrapping) when the socket last accepted a byte
    /// or data was queued on an empty queue: with data waiting, its age is how long the writes
    /// have stalled. A u32 rather than an `Instant` keeps `Conn` small.
    write_progress_ms: u32,
    dirty: bool,
}

impl Conn {
    fn is_open(&self) -> bool {
        self.life == Lifecycle::Open
    }
}

pub struct Worker {
    index: usize,
    config: Arc<EdgeConfig>,
    verifier: Arc<Verifier>,
    /// Taken out while polling: events are handled with the driver busy, so every driver call
    /// they need (register, close) is deferred to `after_poll`.
    driver: Option<Box<dyn Driver>>,
    accepted: Vec<(usize, TcpStream)>,
    to_release: Vec<(ConnId, std::os::fd::RawFd)>,
    listener_transports: Vec<Transport>,
    inbox: Receiver<ToWorker>,
    hub: Sender<ToHub>,
    hub_waker: Arc<mio::Waker>,
    /// Presence changes went to the hub this round: wake it once at the end of the round.
    presence_sent: bool,
    open_connections: Arc<AtomicUsize>,
    conns: Slab<Conn>,
    rooms: MemberTable,
    users: MemberTable,
    authed_per_format: [u32; 3],
    next_generation: u32,
    dirty: Vec<usize>,
    actions: Vec<Action>,
    iov: Vec<IoSlice<'static>>,
    lingering: std::collections::VecDeque<(Instant, TcpStream)>,
    stats: WorkerStats,
    /// Channels waiting for the control plane's confirmation, with the ops to answer then.
    awaiting: HashMap<(ChannelKind, Box<str>), Awaiting>,
    next_token: u64,
    /// When the hub received the first message of each batch delivered this round (for the
    /// publish→flush histogram, recorded once per batch after the round's flush).
    delivered_at: Vec<Instant>,
    now: Instant,
    /// The origin of the worker clock (`clock_ms`).
    started: Instant,
    /// Per wire format: the frames of the delivery being queued, wrapped once per core.
    delivery_frames: [Vec<Rc<SharedFrame>>; 3],
    shutting_down: bool,
}

impl Worker {
    pub fn new(setup: WorkerSetup) -> std::io::Result<Worker> {
        let WorkerSetup {
            index,
            config,
            verifier,
            mut driver,
            listeners,
            inbox,
            hub,
            hub_waker,
            open_connections,
        } = setup;
        let mut listener_transports = Vec::new();
        for (listener, transport) in listeners {
            let at = driver.add_listener(listener)?;
            if listener_transports.len() <= at {
                listener_transports.resize(at + 1, transport);
            }
            listener_transports[at] = transport;
        }
        Ok(Worker {
            index,
            config,
            verifier,
            driver: Some(driver),
            accepted: Vec::new(),
            to_release: Vec::new(),
            listener_transports,
            inbox,
            hub,
            hub_waker,
            presence_sent: false,
            open_connections,
            conns: Slab::new(),
            rooms: MemberTable::default(),
            users: MemberTable::default(),
            authed_per_format: [0; 3],
            next_generation: 1,
            dirty: Vec::new(),
            actions: Vec::new(),
            iov: Vec::new(),
            lingering: Default::default(),
            stats: WorkerStats::default(),
            awaiting: HashMap::new(),
            next_token: 1,
            delivered_at: Vec::new(),
            now: Instant::now(),
            started: Instant::now(),
            delivery_frames: Default::default(),
            shutting_down: false,
        })
    }

    /// A handle that wakes this worker's poll from another thread.
    pub fn waker(&self) -> Arc<dyn crate::sys::Waker> {
        self.driver.as_ref().expect("not polling").waker()
    }

    /// Runs until the hub says to shut down (or its channel closes).
    pub fn run(mut self) {
        let sweep_every = Duration::from_millis(
            (self
                .config
                .heartbeat_timeout_ms
                .min(self.config.auth_timeout_ms)
                .min(self.config.join_confirm_timeout_ms)
                .min(self.config.write_stall_timeout_ms)
                / 4)
            .clamp(10, 1000),
        );
        let report_every = self.config.report_interval();
        let mut next_sweep = Instant::now() + sweep_every;
        let mut next_report = Instant::now() + report_every;
        let mut shutdown_deadline: Option<Instant> = None;
        let mut waited_until: Option<Instant> = None;
        loop {
            // Busy ratio: waiting is from the read at the top of the round to the first event
            // (events are handled inside the poll call, which is work) or, with none, to the
            // read after the poll; the rest of the wall time is busy. One extra clock read per
            // round that has events, none per event.
            self.now = Instant::now();
            if let Some(at) = waited_until {
                self.stats.busy_ns += self.now.saturating_duration_since(at).as_nanos() as u64;
            }
            let poll_started = self.now;
            let mut woke: Option<Instant> = None;
            let next_timer = next_sweep.min(next_report);
            let timeout = if !self.inbox.is_empty() {
                Duration::ZERO
            } else {
                next_timer.saturating_duration_since(self.now)
            };
            let mut driver = self.driver.take().expect("driver present between polls");
            let poll = driver.poll(Some(timeout), &mut |event| {
                if woke.is_none() {
                    // Events are stamped with this (write progress, heartbeats), not with the
                    // time before a poll that may have waited long.
                    let now = Instant::now();
                    woke = Some(now);
                    self.now = now;
                }
                self.on_event(event)
            });
            self.driver = Some(driver);
            if let Err(error) = poll {
                tracing::error!(worker = self.index, %error, "driver poll failed");
                std::thread::sleep(Duration::from_millis(10));
            }
            self.now = Instant::now();
            let wait_end = woke.unwrap_or(self.now);
            self.stats.poll_ns +=
                wait_end.saturating_duration_since(poll_started).as_nanos() as u64;
            waited_until = Some(wait_end);
            self.after_poll();
            if self.drain_inbox() {
                shutdown_deadline.get_or_insert(self.now + CLOSE_FLUSH_GRACE);
            }
            self.flush_dirty();
            if !self.delivered_at.is_empty() {
                let flushed = Instant::now();
                for at in self.delivered_at.drain(..) {
                    self.stats.publish_to_flush.record(
                        LATENCY_BOUNDS,
                        flushed.saturating_duration_since(at).as_secs_f64(),
                    );
                }
            }
            self.release_closed();
            if std::mem::take(&mut self.presence_sent) {
                // One wake-up per round however many members joined or left in it.
                let _ = self.hub_waker.wake();
            }
            if self.now >= next_sweep {
                self.sweep();
                next_sweep = self.now + sweep_every;
            }
            if self.now >= next_report {
                self.report();
                next_report = self.now + report_every;
            }
            if let Some(deadline) = shutdown_deadline {
                if self.conns.is_empty() || self.now >= deadline {
                    self.report();
                    return;
                }
            }
        }
    }

    fn driver(&mut self) -> &mut dyn Driver {
        self.driver
            .as_deref_mut()
            .expect("driver present between polls")
    }

    /// Handles one driver event. The driver is busy: anything needing it is deferred.
    fn on_event(&mut self, event: Event<'_>) {
        match event {
            Event::Accepted { listener, stream } => self.accepted.push((listener, stream)),
            Event::Data { conn, bytes } => self.on_data(conn, bytes),
            Event::ReadClosed { conn, error } => {
                if let Some(error) = error {
                    tracing::debug!(conn = conn.0, %error, "read failed");
                }
                self.close_now(conn, CloseReason::Peer)
            }
            Event::WriteDone { conn: id, result } => {
                let Some(conn) = self.conns.get_mut(id.key()).filter(|c| c.id == id) else {
                    return;
                };
                conn.write = WriteState::Idle;
                match result {
                    Ok(n) => {
                        if n > 0 {
                            conn.write_progress_ms = clock_ms(self.started, self.now);
                        }
                        conn.out.advance(n);
                        self.stats.bytes_out += n as u64;
                        // More to send, or a close waiting for the queue to drain.
                        if !conn.out.is_empty() || !conn.is_open() {
                            self.mark_dirty(id.key());
                        }
                    }
                    Err(_) => {
                        conn.out.unpin();
                        self.close_now(id, CloseReason::WriteError);
                    }
                }
            }
            Event::Writable { conn: id } => {
                if let Some(conn) = self.conns.get_mut(id.key()).filter(|c| c.id == id) {
                    if conn.write == WriteState::Blocked {
                        conn.write = WriteState::Idle;
                        self.mark_dirty(id.key());
                    }
                }
            }
            Event::Released { conn } => self.remove(conn),
            Event::Woken => {}
        }
    }

    /// Frees a connection's slot once the driver has nothing in flight for it.
    fn remove(&mut self, id: ConnId) {
        if !self.conns.get(id.key()).is_some_and(|c| c.id == id) {
            return;
        }
        let conn = self.conns.remove(id.key());
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
        self.stats.connections = self.conns.len() as u64;
    }

    fn mark_dirty(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(key);
        }
    }

    /// Runs the driver calls that events of the last poll round asked for.
    fn after_poll(&mut self) {
        let accepted = std::mem::take(&mut self.accepted);
        for (listener, stream) in accepted {
            self.accept(listener, stream);
        }
        self.release_closed();
        while let Some((since, _)) = self.lingering.front() {
            if self.now.duration_since(*since) < REFUSE_LINGER {
                break;
            }
            self.lingering.pop_front();
        }
    }

    fn accept(&mut self, listener: usize, stream: TcpStream) {
        let transport = self.listener_transports[listener];
        let max = self.config.max_connections as usize;
        if self.shutting_down || self.open_connections.fetch_add(1, Ordering::Relaxed) >= max {
            if !self.shutting_down {
                self.open_connections.fetch_sub(1, Ordering::Relaxed);
            }
            self.refuse_full(stream, transport);
            return;
        }
        if self.config.socket_send_buffer_bytes > 0 {
            // Best effort: the default buffer still works, only less tightly bounded.
            let _ = socket::set_send_buffer(&stream, self.config.socket_send_buffer_bytes);
        }
        let entry = self.conns.vacant_entry();
        let id = ConnId::new(entry.key(), self.next_generation);
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        if let Err(error) = self
            .driver
            .as_deref_mut()
            .expect("not polling")
            .register(id, stream.as_raw_fd())
        {
            tracing::warn!(worker = self.index, %error, "could not register a connection");
            self.open_connections.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        entry.insert(Conn {
            stream,
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
            opened: self.now,
            last_heard: self.now,
            write_progress_ms: 0,
            dirty: false,
        });
        self.stats.accepted += 1;
        self.stats.connections = self.conns.len() as u64;
    }

    /// Tells a client the edge is full, then lets the socket linger briefly so it can read why.
    fn refuse_full(&mut self, stream: TcpStream, transport: Transport) {
        self.stats.refused_full += 1;
        let notice = match transport {
            Transport::WebSocket => Bytes::from(handshake::full_response()),
            Transport::Tcp => client::encode_close(WireFormat::Tcp, session::CLOSE_FULL, "full"),
        };
        // Best effort on a fresh socket whose send buffer is empty; a failure only loses the notice.
        let _ = (&stream).write(&notice);
        let _ = stream.shutdown(Shutdown::Write);
        if self.lingering.len() >= MAX_LINGERING {
            self.lingering.pop_front();
        }
        self.lingering.push_back((self.now, stream));
    }

    /// Takes batches from the hub. Returns true when told to shut down.
    fn drain_inbox(&mut self) -> bool {
        let mut shutdown = false;
        while let Ok(message) = self.inbox.try_recv() {
            match message {
                ToWorker::Deliver(delivery) => {
                    self.delivered_at.push(delivery.first_received);
                    self.deliver(&delivery);
                }
                ToWorker::QueryUser { request, user } => self.answer_user_query(request, &user),
                ToWorker::Confirmed { kind, name, token } => self.confirmed(kind, name, token),
                ToWorker::LinkLost => {
                    self.rooms.unconfirm_all();
                    self.users.unconfirm_all();
                }
                ToWorker::Shutdown => shutdown = true,
            }
        }
        if shutdown && !self.shutting_down {
            self.shutting_down = true;
            let ids: Vec<ConnId> = self.conns.iter().map(|(_, c)| c.id).collect();
            for id in ids {
                self.begin_close(id, session::CLOSE_SHUTDOWN, CloseReason::Shutdown);
            }
        }
        self.shutting_down
    }

    /// Queues one batch on every member on this core: an `Rc` clone per frame per member,
    /// nothing more.
    fn deliver(&mut self, delivery: &Delivery) {
        self.stats.deliveries += 1;
        for (format, frames) in self.delivery_frames.iter_mut().enumerate() {
            frames.clear();
            frames.extend(delivery.frames.iter().filter_map(|frame| {
                frame.encoded[format].as_ref().map(|bytes| {
                    Rc::new(SharedFrame {
                        bytes: bytes.clone(),
                        min_priority: frame.min_priority,
                        counts: frame.counts,
                    })
                })
            }));
        }
        let soft = self.config.queue_soft_bytes;
        let hard = self.config.queue_hard_bytes;
        let now_ms = clock_ms(self.started, self.now);
        let Worker {
            conns,
            rooms,
            users,
            dirty,
            stats,
            delivery_frames,
            ..
        } = self;
        let mut slow: Vec<ConnId> = Vec::new();
        let mut enqueue = |conn: &mut Conn, key: usize| {
            let frames = &delivery_frames[conn.format.index()];
            if frames.is_empty() {
                stats.frames_missing_format += 1;
                return;
            }
            if conn.out.is_empty() {
                conn.write_progress_ms = now_ms;
            }
            let outcome = conn.out.push_batch(frames, soft, hard);
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
                let table = if matches!(delivery.target, Target::Room(_)) {
                    &*rooms
                } else {
                    &*users
                };
                let Some(channel) = table.slot_of(name).and_then(|slot| table.channel(slot)) else {
                    return;
                };
                for member in &channel.members {
                    let conn = &mut conns[member.key()];
                    enqueue(conn, member.key());
                }
            }
            Target::Broadcast => {
                for (key, conn) in conns.iter_mut() {
                    if conn.identity.is_some() && conn.is_open() {
                        enqueue(conn, key);
                    }
                }
            }
        }
        for id in slow {
            self.begin_close(id, session::CLOSE_SLOW, CloseReason::Slow);
        }
    }

    /// One vectored write per connection that has something new to send.
    fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &key in &dirty {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.dirty = false;
                let id = conn.id;
                self.flush(id);
            }
        }
        let mut dirty = dirty;
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    fn flush(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id.key()).filter(|c| c.id == id) else {
            return;
        };
        if conn.write != WriteState::Idle || matches!(conn.life, Lifecycle::Releasing) {
            return;
        }
        if !conn.out.is_empty() {
            self.stats.flushes += 1;
        }
        let fd = conn.stream.as_raw_fd();
        loop {
            if conn.out.is_empty() {
                break;
            }
            let mut iov = recycle(std::mem::take(&mut self.iov));
            let offered = conn.out.fill_iovecs(&mut iov, MAX_IOVECS);
            self.stats.write_calls += 1;
            self.stats.write_iovecs += iov.len() as u64;
            self.stats
                .iovecs_per_write
                .record_pow2(IOVEC_BOUNDS.len(), iov.len() as u64);
            let status = self
                .driver
                .as_deref_mut()
                .expect("not polling")
                .write(id, fd, &iov);
            self.iov = recycle(iov);
            match status {
                Ok(WriteStatus::Done(n)) => {
                    if n > 0 {
                        conn.write_progress_ms = clock_ms(self.started, self.now);
                    }
                    conn.out.advance(n);
                    self.stats.bytes_out += n as u64;
                    if n == offered {
                        // Everything offered went out (more may remain past MAX_IOVECS).
                        continue;
                    }
                    // A short write: the socket is full. Try once more so the driver either
                    // takes more or reports WouldBlock and arms the writable notification.
                }
                Ok(WriteStatus::WouldBlock) => {
                    conn.out.unpin();
                    conn.write = WriteState::Blocked;
                    break;
                }
                Ok(WriteStatus::Pending) => {
                    conn.write = WriteState::InFlight;
                    break;
                }
                Err(_) => {
                    conn.out.unpin();
                    self.close_now(id, CloseReason::WriteError);
                    return;
                }
            }
        }
        let conn = &self.conns[id.key()];
        if conn.out.is_empty()
            && conn.write == WriteState::Idle
            && matches!(conn.life, Lifecycle::Flushing { .. })
        {
            self.close_now(id, conn.close_reason);
        }
    }

    /// Runs the actions a connection's input produced.
    fn run_actions(&mut self, id: ConnId, actions: &mut Vec<Action>) {
        for action in actions.drain(..) {
            let Some(conn) = self
                .conns
                .get_mut(id.key())
                .filter(|c| c.id == id && c.is_open())
            else {
                return;
            };
            match action {
                Action::Send(bytes) => self.queue_owned(id, bytes),
                Action::Upgraded => {}
                Action::Op { op, format } => self.handle_op(id, op, format),
                Action::BadOp { error, format } => {
                    let authed = conn.identity.is_some();
                    self.reply(id, format, error.seq, Err((error.code, &error.message)));
                    if !authed {
                        self.stats.auth_failed(AuthFailure::NotAuthenticated);
                        self.begin_close(
                            id,
                            session::CLOSE_UNAUTHENTICATED,
                            CloseReason::Unauthenticated,
                        );
                    }
                }
                Action::Close { code, http, .. } => {
                    let reason = if code == session::CLOSE_NORMAL {
                        CloseReason::Peer
                    } else {
                        CloseReason::ProtocolError
                    };
                    match http {
                        Some(response) => {
                            self.stats.handshake_failures += 1;
                            self.queue_owned(id, response);
                            self.start_flushing(id, reason);
                        }
                        None => self.begin_close(id, code, reason),
                    }
                }
            }
        }
    }

    fn handle_op(&mut self, id: ConnId, op: ClientOp, arrived_as: WireFormat) {
        let conn = &mut self.conns[id.key()];
        let seq = op.seq();
        if conn.identity.is_none() {
            let ClientOp::Auth { token, .. } = op else {
                self.stats.auth_failed(AuthFailure::NotAuthenticated);
                self.reply(
                    id,
                    arrived_as,
                    seq,
                    Err((ErrorCode::NotAuthenticated, "auth must be the first op")),
                );
                self.begin_close(
                    id,
                    session::CLOSE_UNAUTHENTICATED,
                    CloseReason::Unauthenticated,
                );
                return;
            };
            let now_s = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            match self.verifier.verify(&token, now_s) {
                Ok(claims) => {
                    // The auth op's frame type picks the connection's encoding on WebSocket.
                    conn.format = arrived_as;
                    let user: Box<str> = claims.sub.as_str().into();
                    if self.authenticate(id, claims) {
                        self.reply(id, arrived_as, seq, Ok(()));
                    } else {
                        let op = WaitingOp {
                            conn: id,
                            seq,
                            format: arrived_as,
                            auth: true,
                        };
                        self.await_confirmation(ChannelKind::User, user, op);
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
                    self.reply(id, arrived_as, seq, Err((code, &error.to_string())));
                    self.begin_close(
                        id,
                        session::CLOSE_UNAUTHENTICATED,
                        CloseReason::Unauthenticated,
                    );
                }
            }
            return;
        }
        let format = conn.format;
        let answer = match op {
            ClientOp::Auth { .. } => Answer::Now(Err((
                ErrorCode::AlreadyAuthenticated,
                "already authenticated",
            ))),
            ClientOp::Ping { .. } => Answer::Now(Ok(())),
            ClientOp::Join { room, .. } => self.join(id, seq, &room),
            ClientOp::Leave { room, .. } => Answer::Now(self.leave(id, &room)),
        };
        if let Answer::Now(result) = answer {
            self.reply(id, format, seq, result);
        }
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
        }));
        if joined.format_appeared {
            self.presence(ChannelKind::User, &claims.sub, format, true);
        }
        self.authed_per_format[format.index()] += 1;
        if self.authed_per_format[format.index()] == 1 {
            self.presence(ChannelKind::All, "", format, true);
        }
        self.users.is_confirmed(joined.slot)
    }

    fn join(&mut self, id: ConnId, seq: u64, room: &str) -> Answer {
        let result = self.join_room(id, room);
        let format = self.conns[id.key()].format;
        match result {
            Ok(true) => Answer::Now(Ok(())),
            Ok(false) => {
                let op = WaitingOp {
                    conn: id,
                    seq,
                    format,
                    auth: false,
                };
                self.await_confirmation(ChannelKind::Room, room.into(), op);
                Answer::Later
            }
            Err(error) => Answer::Now(Err(error)),
        }
    }

    /// Makes the connection a member of `room`; returns whether the room is confirmed here.
    fn join_room(&mut self, id: ConnId, room: &str) -> Result<bool, (ErrorCode, &'static str)> {
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
            return Ok(self.rooms.is_confirmed(slot));
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
        Ok(self.rooms.is_confirmed(joined.slot))
    }

    /// Holds `op`'s reply until the hub confirms the channel; the first waiter asks the hub.
    fn await_confirmation(&mut self, kind: ChannelKind, name: Box<str>, op: WaitingOp) {
        let entry = self
            .awaiting
            .entry((kind, name))
            .or_insert_with_key(|(kind, name)| {
                let token = self.next_token;
                self.next_token += 1;
                // After the channel's `Presence` on the same queue, so the hub knows the members.
                let _ = self.hub.send(ToHub::Confirm {
                    worker: self.index,
                    kind: *kind,
                    name: name.clone(),
                    token,
                });
                self.presence_sent = true;
                Awaiting {
                    token,
                    since: self.now,
                    ops: Vec::new(),
                }
            });
        entry.ops.push(op);
        self.stats.confirm_waits += 1;
    }

    /// The hub's answer to `ToHub::Confirm`: the waiting joins (or `auth`) succeed.
    fn confirmed(&mut self, kind: ChannelKind, name: Box<str>, token: u64) {
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
        table.confirm(&name);
        self.stats.confirm_latency.record(
            LATENCY_BOUNDS,
            self.now
                .saturating_duration_since(awaiting.since)
                .as_secs_f64(),
        );
        for op in awaiting.ops {
            if self
                .conns
                .get(op.conn.key())
                .is_some_and(|c| c.id == op.conn && c.is_open())
            {
                self.reply(op.conn, op.format, op.seq, Ok(()));
            }
        }
    }

    /// Fails the ops of channels whose confirmation took longer than the timeout: a join is
    /// undone and answered `unavailable`; an `auth` is answered so and the connection closed
    /// with 1013 (try again later).
    fn expire_confirmations(&mut self) {
        let timeout = self.config.join_confirm_timeout();
        let now = self.now;
        let expired: Vec<(ChannelKind, Box<str>)> = self
            .awaiting
            .iter()
            .filter(|(_, a)| now.duration_since(a.since) > timeout)
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
                    op.conn,
                    op.format,
                    op.seq,
                    Err((ErrorCode::Unavailable, why)),
                );
                if op.auth {
                    self.begin_close(op.conn, session::CLOSE_TRY_AGAIN, CloseReason::Unconfirmed);
                } else {
                    let _ = self.leave(op.conn, &name);
                }
            }
        }
    }

    fn leave(&mut self, id: ConnId, room: &str) -> Result<(), (ErrorCode, &'static str)> {
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
                self.reply(op.conn, op.format, op.seq, Ok(()));
            }
        }
        let conn = &mut self.conns[id.key()];
        let (slot, index) = conn.rooms.swap_remove(position);
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
        // The hub learns of it when it next wakes; `wake_hub_if_needed` makes that this round,
        // so the control plane hears of a new room or user within a few milliseconds.
        self.presence_sent = true;
        let _ = self.hub.send(ToHub::Presence {
            worker: self.index,
            kind,
            name: name.into(),
            format,
            present,
        });
    }

    fn reply(
        &mut self,
        id: ConnId,
        format: WireFormat,
        seq: u64,
        result: Result<(), (ErrorCode, &str)>,
    ) {
        self.queue_owned(id, client::encode_reply(format, seq, result));
    }

    fn queue_owned(&mut self, id: ConnId, bytes: Bytes) {
        let conn = &mut self.conns[id.key()];
        if conn.out.is_empty() {
            conn.write_progress_ms = clock_ms(self.started, self.now);
        }
        conn.out.push_owned(bytes);
        self.mark_dirty(id.key());
    }

    /// Leaves every channel (so nothing more is delivered), queues a close frame, and closes the
    /// socket once it is flushed.
    fn begin_close(&mut self, id: ConnId, code: u16, reason: CloseReason) {
        let Some(conn) = self
            .conns
            .get(id.key())
            .filter(|c| c.id == id && c.is_open())
        else {
            return;
        };
        let notice = if conn.session.is_framing() {
            Some(client::encode_close(
                conn.format,
                code,
                session::close_reason(code),
            ))
        } else {
            None
        };
        self.leave_all(id);
        if let Some(notice) = notice {
            self.queue_owned(id, notice);
        }
        self.start_flushing(id, reason);
    }

    fn start_flushing(&mut self, id: ConnId, reason: CloseReason) {
        let conn = &mut self.conns[id.key()];
        if !conn.is_open() {
            return;
        }
        conn.close_reason = reason;
        conn.life = Lifecycle::Flushing { since: self.now };
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
        let fd = conn.stream.as_raw_fd();
        self.leave_all(id);
        self.to_release.push((id, fd));
    }

    /// Asks the driver to stop I/O on connections that were closed; they are freed on `Released`.
    fn release_closed(&mut self) {
        let closing = std::mem::take(&mut self.to_release);
        for &(id, fd) in &closing {
            self.driver().close(id, fd);
        }
        let mut closing = closing;
        closing.clear();
        if self.to_release.is_empty() {
            self.to_release = closing;
        }
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

    /// Closes connections that missed the auth deadline, went silent or stopped taking data
    /// (slow), and cuts closing ones that could not flush in time.
    fn sweep(&mut self) {
        let auth_timeout = self.config.auth_timeout();
        let heartbeat = self.config.heartbeat_timeout();
        let now_ms = clock_ms(self.started, self.now);
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
                    if self.now.duration_since(conn.opened) > auth_timeout {
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
                    if self.now.duration_since(conn.last_heard) > heartbeat {
                        expired.push((
                            conn.id,
                            Some(session::CLOSE_HEARTBEAT),
                            CloseReason::Heartbeat,
                        ));
                    }
                }
                Lifecycle::Flushing { since } => {
                    if self.now.duration_since(since) > CLOSE_FLUSH_GRACE {
                        expired.push((conn.id, None, conn.close_reason));
                    }
                }
                Lifecycle::Releasing => {}
            }
        }
        for (id, code, reason) in expired {
            match code {
                Some(code) => self.begin_close(id, code, reason),
                None => self.close_now(id, reason),
            }
        }
        if !self.awaiting.is_empty() {
            self.expire_confirmations();
        }
    }

    /// Describes this worker's connections of one user (rare: an operator's lookup).
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
                conns.push(ConnInfo {
                    format: conn.format,
                    peer: conn
                        .stream
                        .peer_addr()
                        .map_or_else(|_| String::new(), |addr| addr.to_string()),
                    rooms,
                });
            }
        }
        let _ = self.hub.send(ToHub::UserConns { request, conns });
        let _ = self.hub_waker.wake();
    }

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
        if let Some(driver) = self.driver.as_ref() {
            self.stats.driver = driver.stats();
        }
        let _ = self.hub.send(ToHub::Report {
            worker: self.index,
            rooms: self.rooms.take_changes(),
            users: self.users.take_changes(),
            stats: Box::new(self.stats.clone()),
        });
    }

    /// Processes input for one connection (called from the event handler via `WorkerEvents`).
    fn on_data(&mut self, id: ConnId, bytes: &mut [u8]) {
        let mut actions = std::mem::take(&mut self.actions);
        if let Some(conn) = self
            .conns
            .get_mut(id.key())
            .filter(|c| c.id == id && c.is_open())
        {
            conn.last_heard = self.now;
            conn.session.on_bytes(bytes, &mut actions);
        }
        self.run_actions(id, &mut actions);
        self.actions = actions;
    }
}

/// The worker clock: milliseconds from `started` to `now`, wrapping after 49 days (compared with
/// `wrapping_sub`, and only over the few seconds a stall may last).
fn clock_ms(started: Instant, now: Instant) -> u32 {
    now.saturating_duration_since(started).as_millis() as u32
}

/// Reuses a `Vec`'s allocation for slices of another lifetime (it is empty, so no slice outlives
/// its borrow; the in-place collect keeps the buffer).
fn recycle<'a, 'b>(mut v: Vec<IoSlice<'a>>) -> Vec<IoSlice<'b>> {
    v.clear();
    v.into_iter()
        .map(|_| unreachable!("the vector is empty"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_connection_stays_small() {
        // Every viewer costs one slab entry; the budget is 2 KiB of user memory per idle
        // connection, all included. Keep the fixed part far below it.
        let size = std::mem::size_of::<slab::Slab<Conn>>() + std::mem::size_of::<Conn>();
        println!("Conn = {} bytes", std::mem::size_of::<Conn>());
        assert!(size <= 320, "Conn grew to {size} bytes");
    }
}
