//! The hub: one thread per edge that owns the control link, every channel's merge window, and
//! the encode-once step.
//!
//! Publishes arrive from the control plane over the link. Each channel (room, user, broadcast)
//! collects them in its window; when the window closes the batch is encoded once per wire format
//! in use and the same `Arc<Delivery>` goes to each core holding members — one handoff per batch
//! per core, followed by one wake-up per core per round. Workers tell the hub which channels and
//! formats they hold (on 0↔1 transitions) and send their counters every report interval; the hub
//! sums them into the link's load report.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::fanout::{ChannelKind, Delivery, DeliveryFrame, ToHub, ToWorker};
use crate::metrics::{CapacitySampler, Shared};
use crate::stats::{CloseReason, HubStats, WorkerStats, BATCH_BOUNDS, LATENCY_BOUNDS};
use crate::sys::Waker;
use crate::window::{frame_ranges, Admit, Pacing, Window, MAX_FRAME_MESSAGE_BYTES};
use roomcast_proto::client::{self, WireFormat};
use roomcast_proto::link::{
    self, ConnInfo, LinkFrame, LoadReport, Publish, QueryUser, Register, SetLevel, UserConns,
};
use roomcast_proto::message::{Target, PRIORITIES};

const LINK: Token = Token(0);
const WAKE: Token = Token(1);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// At most this between re-dials: the control plane holds publishes for `--startup-grace-ms`
/// (2 s) after a start so edges can re-register first.
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Link bytes read per `service_link` call: under a publish flood the hub must still get back to
/// its windows, wake-ups and load reports.
const LINK_READ_BUDGET: usize = 1 << 20;
/// How soon after a channel appears on (or leaves) this edge the control plane hears of it, so a
/// publish right after a first join is routed here without waiting for the next regular report.
const MEMBERSHIP_REPORT_DELAY: Duration = Duration::from_millis(20);
/// A link write buffer beyond this means the control plane stopped reading: drop the link.
const MAX_LINK_BACKLOG: usize = 64 << 20;

/// A worker as the hub sees it.
pub struct WorkerHandle {
    pub inbox: Sender<ToWorker>,
    pub waker: Arc<dyn Waker>,
}

pub struct HubSetup {
    pub register: Register,
    pub control: String,
    pub default_tick: Duration,
    pub report_interval: Duration,
    /// How often to log the summed counters (None = never).
    pub stats_log_interval: Option<Duration>,
    pub workers: Vec<WorkerHandle>,
    pub inbox: Receiver<ToHub>,
    pub shutdown: Arc<AtomicBool>,
    /// Where the hub leaves a metrics snapshot every report interval (read by the admin server).
    pub metrics: Arc<Shared>,
    /// Measures use against configured capacity at each snapshot.
    pub capacity: CapacitySampler,
}

/// Whether the control plane is known to route a channel to this edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Routed {
    /// Not confirmed since the channel appeared here or since the link came up.
    No,
    /// Reported, and a `sync` barrier with this id is on its way.
    Syncing(u64),
    /// The control plane acknowledged a `sync` sent after the channel was reported.
    Yes,
}

struct Channel {
    window: Window,
    routed: Routed,
    /// Workers waiting for `routed` to become `Yes`, with the token each asked with.
    waiters: Vec<(usize, u64)>,
    /// The last sequence number published to this channel (reported so a restarted control
    /// plane continues the numbering).
    last_seq: u64,
    /// Per wire format: bitmask of workers holding members of that format.
    workers_by_format: [u64; 3],
}

impl Channel {
    fn new(pacing: Pacing) -> Channel {
        Channel {
            window: Window::new(pacing),
            routed: Routed::No,
            waiters: Vec::new(),
            last_seq: 0,
            workers_by_format: [0; 3],
        }
    }

    fn has_members(&self) -> bool {
        self.workers_by_format.iter().any(|&m| m != 0)
    }
}

enum LinkState {
    Down {
        retry_at: Instant,
        backoff: Duration,
    },
    Connecting {
        stream: TcpStream,
        backoff: Duration,
    },
    Up(Box<LinkConn>),
}

struct LinkConn {
    stream: TcpStream,
    read: BytesMut,
    write: BytesMut,
}

pub struct Hub {
    setup: HubSetup,
    poll: Poll,
    link: LinkState,
    rooms: HashMap<String, Channel>,
    users: HashMap<String, Channel>,
    broadcast: Channel,
    /// Level settings for rooms, kept while the room has no member here.
    room_pacing: HashMap<String, Pacing>,
    timers: BinaryHeap<Reverse<(Instant, TimerKey)>>,
    /// Per worker: last reported counters and member counts.
    worker_stats: Vec<WorkerStats>,
    room_members: HashMap<Box<str>, Vec<u32>>,
    user_conns: HashMap<Box<str>, Vec<u32>>,
    changed_rooms: HashMap<Box<str>, u32>,
    changed_users: HashMap<Box<str>, u32>,
    stats: HubStats,
    woken: Vec<bool>,
    /// Link reads land here before joining the frame buffer.
    scratch: Box<[u8]>,
    /// `query user` requests being answered by workers, by the hub's own query id.
    queries: HashMap<u32, PendingQuery>,
    next_query: u32,
    /// The link read budget ran out with bytes possibly left in the socket (mio is
    /// edge-triggered, so no new event would say so): read again without waiting.
    link_unread: bool,
    /// An early incremental load report is due (a channel appeared on or left this edge).
    membership_report_at: Option<Instant>,
    /// Channels a worker waits on that need a `sync` barrier (sent at the end of the round).
    syncs_due: Vec<(ChannelKind, String)>,
    /// `sync` barriers sent and not yet acknowledged, oldest first, with their channels.
    syncs_in_flight: VecDeque<(u64, Vec<(ChannelKind, String)>)>,
    next_sync: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKey {
    Room(String),
    User(String),
    Broadcast,
}

/// The hub's poller, made before the workers so they can wake the hub (for query answers).
pub struct HubPoll {
    poll: Poll,
    waker: Arc<mio::Waker>,
}

impl HubPoll {
    pub fn new() -> io::Result<HubPoll> {
        let poll = Poll::new()?;
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKE)?);
        Ok(HubPoll { poll, waker })
    }

    /// Interrupts the hub's poll (shutdown, worker answers).
    pub fn waker(&self) -> Arc<mio::Waker> {
        Arc::clone(&self.waker)
    }
}

/// A `query user` the workers are still answering.
struct PendingQuery {
    /// The control plane's request id.
    request: u32,
    user: String,
    workers_left: usize,
    conns: Vec<ConnInfo>,
}

impl Hub {
    pub fn new(setup: HubSetup, hub_poll: HubPoll) -> Hub {
        let HubPoll { poll, .. } = hub_poll;
        let default_pacing = Pacing::unlimited(setup.default_tick);
        let workers = setup.workers.len();
        Hub {
            poll,
            link: LinkState::Down {
                retry_at: Instant::now(),
                backoff: BACKOFF_MIN,
            },
            rooms: HashMap::new(),
            users: HashMap::new(),
            broadcast: Channel::new(default_pacing),
            room_pacing: HashMap::new(),
            timers: BinaryHeap::new(),
            worker_stats: vec![WorkerStats::default(); workers],
            room_members: HashMap::new(),
            user_conns: HashMap::new(),
            changed_rooms: HashMap::new(),
            changed_users: HashMap::new(),
            stats: HubStats::default(),
            woken: vec![false; workers],
            scratch: vec![0; 64 * 1024].into_boxed_slice(),
            queries: HashMap::new(),
            next_query: 0,
            link_unread: false,
            membership_report_at: None,
            syncs_due: Vec::new(),
            syncs_in_flight: VecDeque::new(),
            next_sync: 1,
            setup,
        }
    }

    pub fn run(mut self) {
        let mut events = Events::with_capacity(64);
        let mut next_report = Instant::now() + self.setup.report_interval;
        let mut next_stats_log = self
            .setup
            .stats_log_interval
            .map(|every| Instant::now() + every);
        loop {
            if self.setup.shutdown.load(Ordering::Acquire) {
                self.log_stats();
                for worker in &self.setup.workers {
                    let _ = worker.inbox.send(ToWorker::Shutdown);
                    worker.waker.wake();
                }
                return;
            }
            let now = Instant::now();
            let mut wake_at = next_report;
            if let Some(at) = next_stats_log {
                wake_at = wake_at.min(at);
            }
            if let Some(Reverse((at, _))) = self.timers.peek() {
                wake_at = wake_at.min(*at);
            }
            if let LinkState::Down { retry_at, .. } = &self.link {
                wake_at = wake_at.min(*retry_at);
            }
            if let Some(at) = self.membership_report_at {
                wake_at = wake_at.min(at);
            }
            let timeout = if self.link_unread {
                Duration::ZERO
            } else {
                wake_at.saturating_duration_since(now)
            };
            if let Err(error) = self.poll.poll(&mut events, Some(timeout)) {
                if error.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(%error, "hub poll failed");
                }
            }
            self.drain_workers();
            let link_ready =
                std::mem::take(&mut self.link_unread) || events.iter().any(|e| e.token() == LINK);
            if link_ready {
                self.on_link_ready();
            }
            if let LinkState::Down { retry_at, backoff } = self.link {
                if Instant::now() >= retry_at {
                    self.connect(backoff);
                }
            }
            self.fire_timers(Instant::now());
            self.send_syncs();
            if Instant::now() >= next_report {
                self.publish_snapshot();
                self.send_report(false);
                next_report = Instant::now() + self.setup.report_interval;
            }
            if self
                .membership_report_at
                .is_some_and(|at| Instant::now() >= at)
            {
                self.send_report(false);
            }
            if let (Some(at), Some(every)) = (next_stats_log, self.setup.stats_log_interval) {
                if Instant::now() >= at {
                    self.log_stats();
                    next_stats_log = Some(Instant::now() + every);
                }
            }
            self.wake_workers();
        }
    }

    fn drain_workers(&mut self) {
        while let Ok(message) = self.setup.inbox.try_recv() {
            match message {
                ToHub::Presence {
                    worker,
                    kind,
                    name,
                    format,
                    present,
                } => self.presence(worker, kind, &name, format, present),
                ToHub::Confirm {
                    worker,
                    kind,
                    name,
                    token,
                } => self.confirm_request(worker, kind, &name, token),
                ToHub::UserConns { request, conns } => self.user_conns_answered(request, conns),
                ToHub::Report {
                    worker,
                    rooms,
                    users,
                    stats,
                } => {
                    merge_counts(
                        &mut self.room_members,
                        &mut self.changed_rooms,
                        worker,
                        rooms,
                        self.worker_stats.len(),
                    );
                    merge_counts(
                        &mut self.user_conns,
                        &mut self.changed_users,
                        worker,
                        users,
                        self.worker_stats.len(),
                    );
                    self.worker_stats[worker] = *stats;
                }
            }
        }
    }

    fn presence(
        &mut self,
        worker: usize,
        kind: ChannelKind,
        name: &str,
        format: WireFormat,
        present: bool,
    ) {
        let default_tick = self.setup.default_tick;
        let channel = match kind {
            ChannelKind::All => &mut self.broadcast,
            ChannelKind::Room => {
                let pacing = self
                    .room_pacing
                    .get(name)
                    .copied()
                    .unwrap_or_else(|| Pacing::unlimited(default_tick));
                self.rooms
                    .entry(name.to_string())
                    .or_insert_with(|| Channel::new(pacing))
            }
            ChannelKind::User => self
                .users
                .entry(name.to_string())
                .or_insert_with(|| Channel::new(Pacing::unlimited(default_tick))),
        };
        let had_members = channel.has_members();
        let bit = 1u64 << worker;
        if present {
            channel.workers_by_format[format.index()] |= bit;
        } else {
            channel.workers_by_format[format.index()] &= !bit;
        }
        let has_members = channel.has_members();
        if !has_members {
            // Gone from this edge: a later first member must be confirmed afresh, after the
            // report that says it is back.
            channel.routed = Routed::No;
            channel.waiters.clear();
        }
        if had_members != has_members {
            self.membership_changed(kind, name, has_members);
        }
        self.forget_if_idle(kind, name);
    }

    /// A worker waits for a channel to be routed here (a join or `auth` reply depends on it).
    fn confirm_request(&mut self, worker: usize, kind: ChannelKind, name: &str, token: u64) {
        let link_up = matches!(self.link, LinkState::Up(_));
        let channel = self.named_channel_mut(kind, name);
        let Some(channel) = channel.filter(|c| c.has_members()) else {
            // Its members left before the hub read this: nobody waits any more.
            return;
        };
        if channel.routed == Routed::Yes && link_up {
            self.confirm_worker(worker, kind, name, token);
            return;
        }
        channel.waiters.push((worker, token));
        if channel.routed == Routed::No && channel.waiters.len() == 1 {
            self.syncs_due.push((kind, name.to_string()));
        }
    }

    fn confirm_worker(&mut self, worker: usize, kind: ChannelKind, name: &str, token: u64) {
        let confirmed = ToWorker::Confirmed {
            kind,
            name: name.into(),
            token,
        };
        // The inbox is bounded; a worker that far behind would time the join out anyway, but a
        // blocking send keeps the answer (the hub never waits on a worker otherwise, and a
        // confirmation is rare: once per channel per worker).
        if self.setup.workers[worker].inbox.send(confirmed).is_ok() {
            self.woken[worker] = true;
        }
    }

    /// Reports the channels workers wait on and sends one `sync` barrier behind the report; the
    /// control plane's `sync ack` confirms them all. Waits for the link when it is down.
    fn send_syncs(&mut self) {
        if self.syncs_due.is_empty() || !matches!(self.link, LinkState::Up(_)) {
            return;
        }
        let due = std::mem::take(&mut self.syncs_due);
        let id = self.next_sync;
        self.next_sync += 1;
        let mut syncing = Vec::with_capacity(due.len());
        for (kind, name) in due {
            let channel = self.named_channel_mut(kind, &name);
            if let Some(channel) =
                channel.filter(|c| c.routed == Routed::No && !c.waiters.is_empty())
            {
                channel.routed = Routed::Syncing(id);
                syncing.push((kind, name));
            }
        }
        if syncing.is_empty() {
            return;
        }
        // The membership changes (the channel's appearance) go first; the barrier follows them.
        self.send_report(false);
        self.send_frame(&LinkFrame::Sync(id));
        // If the link failed while sending, `link_lost` already queued every waiter again.
        if matches!(self.link, LinkState::Up(_)) {
            self.syncs_in_flight.push_back((id, syncing));
        }
    }

    /// The control plane applied everything up to `sync` `id`: confirm those channels.
    fn sync_acked(&mut self, id: u64) {
        while self
            .syncs_in_flight
            .front()
            .is_some_and(|(sent, _)| *sent <= id)
        {
            let Some((sent, channels)) = self.syncs_in_flight.pop_front() else {
                break;
            };
            for (kind, name) in channels {
                let channel = self.named_channel_mut(kind, &name);
                let Some(channel) = channel.filter(|c| c.routed == Routed::Syncing(sent)) else {
                    continue; // emptied (and maybe re-appeared) since: not this barrier's
                };
                channel.routed = Routed::Yes;
                let waiters = std::mem::take(&mut channel.waiters);
                for (worker, token) in waiters {
                    self.confirm_worker(worker, kind, &name, token);
                }
            }
        }
    }

    /// The link is gone: nothing is confirmed any more. Workers answer new joins only after the
    /// next registration's full report and a `sync` behind it; waiters keep waiting for that.
    fn link_lost(&mut self) {
        self.syncs_in_flight.clear();
        self.syncs_due.clear();
        let rooms = self
            .rooms
            .iter_mut()
            .map(|(n, c)| (ChannelKind::Room, n, c));
        let users = self
            .users
            .iter_mut()
            .map(|(n, c)| (ChannelKind::User, n, c));
        for (kind, name, channel) in rooms.chain(users) {
            channel.routed = Routed::No;
            if !channel.waiters.is_empty() {
                self.syncs_due.push((kind, name.clone()));
            }
        }
        for (index, worker) in self.setup.workers.iter().enumerate() {
            if worker.inbox.send(ToWorker::LinkLost).is_ok() {
                self.woken[index] = true;
            }
        }
    }

    /// Drops a room or user channel that has no member here and nothing waiting to be sent; its
    /// memory then stays bounded by the channels this edge actually holds.
    fn forget_if_idle(&mut self, kind: ChannelKind, name: &str) {
        let table = match kind {
            ChannelKind::Room => &mut self.rooms,
            ChannelKind::User => &mut self.users,
            ChannelKind::All => return,
        };
        if table
            .get(name)
            .is_some_and(|c| !c.has_members() && c.window.is_empty())
        {
            table.remove(name);
        }
    }

    /// A room or user appeared on this edge or left it: tell the control plane soon, so it routes
    /// publishes here (or stops) without waiting for the next regular report. The exact member
    /// count follows with the workers' next report; until then an appearance counts as at least 1.
    fn membership_changed(&mut self, kind: ChannelKind, name: &str, present: bool) {
        let (changed, known) = match kind {
            ChannelKind::Room => (&mut self.changed_rooms, &self.room_members),
            ChannelKind::User => (&mut self.changed_users, &self.user_conns),
            ChannelKind::All => return,
        };
        let total = known
            .get(name)
            .map_or(0, |per_worker| per_worker.iter().sum::<u32>());
        let count = if present { total.max(1) } else { 0 };
        changed.insert(name.into(), count);
        let at = Instant::now() + MEMBERSHIP_REPORT_DELAY;
        self.membership_report_at = Some(self.membership_report_at.map_or(at, |t| t.min(at)));
    }

    fn on_link_ready(&mut self) {
        match std::mem::replace(
            &mut self.link,
            LinkState::Down {
                retry_at: Instant::now(),
                backoff: BACKOFF_MIN,
            },
        ) {
            LinkState::Connecting { stream, backoff } => self.finish_connect(stream, backoff),
            LinkState::Up(conn) => {
                self.link = LinkState::Up(conn);
                if let Err(error) = self.service_link() {
                    self.link_failed(&error.to_string(), BACKOFF_MIN);
                }
            }
            down => self.link = down,
        }
    }

    fn connect(&mut self, backoff: Duration) {
        let addr = match resolve(&self.setup.control) {
            Ok(addr) => addr,
            Err(error) => {
                self.link_failed(
                    &format!("cannot resolve {}: {error}", self.setup.control),
                    backoff,
                );
                return;
            }
        };
        match TcpStream::connect(addr) {
            Ok(mut stream) => {
                if let Err(error) = self.poll.registry().register(
                    &mut stream,
                    LINK,
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    self.link_failed(&error.to_string(), backoff);
                    return;
                }
                self.link = LinkState::Connecting { stream, backoff };
            }
            Err(error) => self.link_failed(&error.to_string(), backoff),
        }
    }

    fn finish_connect(&mut self, stream: TcpStream, backoff: Duration) {
        match stream.take_error() {
            Ok(None) => {}
            Ok(Some(error)) | Err(error) => {
                self.link_failed(&error.to_string(), backoff);
                return;
            }
        }
        if let Err(error) = stream.peer_addr() {
            if error.kind() == io::ErrorKind::NotConnected {
                self.link = LinkState::Connecting { stream, backoff };
            } else {
                self.link_failed(&error.to_string(), backoff);
            }
            return;
        }
        let _ = stream.set_nodelay(true);
        self.stats.link_connects += 1;
        tracing::info!(control = %self.setup.control, "link to the control plane is up");
        let mut conn = Box::new(LinkConn {
            stream,
            read: BytesMut::with_capacity(64 * 1024),
            write: BytesMut::new(),
        });
        let register = LinkFrame::Register(self.setup.register.clone());
        if let Err(error) = link::encode(&register, &mut conn.write) {
            tracing::error!(%error, "cannot encode the register frame");
        }
        self.link = LinkState::Up(conn);
        self.setup.metrics.link_up.store(true, Ordering::Release);
        self.send_report(true);
        if let Err(error) = self.service_link() {
            self.link_failed(&error.to_string(), BACKOFF_MIN);
        }
    }

    fn link_failed(&mut self, why: &str, backoff: Duration) {
        self.setup.metrics.link_up.store(false, Ordering::Release);
        if let LinkState::Up(mut conn) = std::mem::replace(
            &mut self.link,
            LinkState::Down {
                retry_at: Instant::now(),
                backoff,
            },
        ) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
            tracing::warn!(why, "link to the control plane lost; re-dialling");
            self.link_lost();
        } else {
            tracing::debug!(why, "link dial failed");
        }
        // Nobody waits for answers on a link that is gone.
        self.queries.clear();
        let next = (backoff * 2).min(BACKOFF_MAX);
        self.link = LinkState::Down {
            retry_at: Instant::now() + backoff,
            backoff: next,
        };
    }

    /// Reads every complete frame, handles it, and writes what is buffered.
    fn service_link(&mut self) -> io::Result<()> {
        let mut budget = LINK_READ_BUDGET;
        loop {
            let LinkState::Up(conn) = &mut self.link else {
                return Ok(());
            };
            if budget == 0 {
                self.link_unread = true;
                break;
            }
            let chunk = budget.min(self.scratch.len());
            match conn.stream.read(&mut self.scratch[..chunk]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "control closed the link",
                    ));
                }
                Ok(n) => {
                    conn.read.extend_from_slice(&self.scratch[..n]);
                    budget -= n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            // A publish read now may follow a join whose presence a worker sent after the last
            // drain (the client saw the join reply, then its backend published): drain again so
            // the hub knows every member that joined before the publish was sent.
            self.drain_workers();
            self.handle_frames()?;
        }
        self.flush_link()
    }

    fn handle_frames(&mut self) -> io::Result<()> {
        loop {
            let LinkState::Up(conn) = &mut self.link else {
                return Ok(());
            };
            let frame = match link::decode(&mut conn.read) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(()),
                Err(error) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad link frame: {error}"),
                    ))
                }
            };
            match frame {
                LinkFrame::Publish(publish) => self.publish(publish),
                LinkFrame::SetLevel(level) => self.set_level(level),
                LinkFrame::QueryUser(query) => self.query_user(query),
                LinkFrame::SyncAck(id) => self.sync_acked(id),
                LinkFrame::Register(_)
                | LinkFrame::LoadReport(_)
                | LinkFrame::UserConns(_)
                | LinkFrame::Sync(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "control sent an edge-only frame",
                    ));
                }
            }
        }
    }

    fn flush_link(&mut self) -> io::Result<()> {
        let LinkState::Up(conn) = &mut self.link else {
            return Ok(());
        };
        while !conn.write.is_empty() {
            match conn.stream.write(&conn.write) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "link write returned 0",
                    ))
                }
                Ok(n) => {
                    let _ = conn.write.split_to(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if conn.write.len() > MAX_LINK_BACKLOG {
            return Err(io::Error::other("control is not reading the link"));
        }
        Ok(())
    }

    fn publish(&mut self, publish: Publish) {
        self.stats.publishes += 1;
        let now = Instant::now();
        let Publish { target, msg } = publish;
        let priority = (msg.priority as usize).min(PRIORITIES - 1);
        self.stats.publishes_by_priority[priority] += 1;
        let channel = match &target {
            Target::Room(name) => self.rooms.get_mut(name),
            Target::User(name) => self.users.get_mut(name),
            Target::Broadcast => Some(&mut self.broadcast),
        };
        let Some(channel) = channel.filter(|c| c.has_members()) else {
            self.stats.publishes_without_members += 1;
            return;
        };
        channel.last_seq = channel.last_seq.max(msg.seq);
        match channel.window.push(msg, now) {
            Admit::Opened(deadline) => {
                let key = match &target {
                    Target::Room(name) => TimerKey::Room(name.clone()),
                    Target::User(name) => TimerKey::User(name.clone()),
                    Target::Broadcast => TimerKey::Broadcast,
                };
                self.timers.push(Reverse((deadline, key)));
            }
            Admit::Queued => {}
            Admit::FlushNow => self.flush_channel(&target, now),
            Admit::OverBudget => self.stats.dropped_budget[priority] += 1,
        }
    }

    fn set_level(&mut self, level: SetLevel) {
        let pacing = Pacing {
            level: level.level,
            tick: Duration::from_millis(level.tick_ms as u64),
            budgets: level.budgets,
        };
        if let Some(channel) = self.rooms.get_mut(&level.room) {
            channel.window.pacing = pacing;
        }
        self.room_pacing.insert(level.room, pacing);
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, key))) = self.timers.pop() else {
                break;
            };
            let target = match key {
                TimerKey::Room(name) => Target::Room(name),
                TimerKey::User(name) => Target::User(name),
                TimerKey::Broadcast => Target::Broadcast,
            };
            // A window flushed early (priority 0) leaves a stale timer: only its own deadline fires.
            let due = self.channel_mut(&target).and_then(|c| c.window.deadline()) == Some(at);
            if due {
                self.stats.tick_lag.record(
                    LATENCY_BOUNDS,
                    now.saturating_duration_since(at).as_secs_f64(),
                );
                self.flush_channel(&target, now);
            }
        }
    }

    /// A room's or user's channel (the broadcast channel has no name and needs no confirmation).
    fn named_channel_mut(&mut self, kind: ChannelKind, name: &str) -> Option<&mut Channel> {
        match kind {
            ChannelKind::Room => self.rooms.get_mut(name),
            ChannelKind::User => self.users.get_mut(name),
            ChannelKind::All => None,
        }
    }

    fn channel_mut(&mut self, target: &Target) -> Option<&mut Channel> {
        match target {
            Target::Room(name) => self.rooms.get_mut(name),
            Target::User(name) => self.users.get_mut(name),
            Target::Broadcast => Some(&mut self.broadcast),
        }
    }

    /// Encodes the channel's window once per format in use and hands it to the cores holding it.
    fn flush_channel(&mut self, target: &Target, now: Instant) {
        let Some(channel) = self.channel_mut(target) else {
            return;
        };
        let Some(batch) = channel.window.take(now) else {
            return;
        };
        let masks = channel.workers_by_format;
        let workers = masks.iter().fold(0u64, |all, m| all | m);
        // Split once per batch; each frame is encoded once per format and shared by every member.
        let frames: Vec<DeliveryFrame> = frame_ranges(&batch.msgs, MAX_FRAME_MESSAGE_BYTES)
            .map(|run| {
                let chunk = &batch.msgs[run];
                let mut counts = [0u32; PRIORITIES];
                for m in chunk {
                    counts[(m.priority as usize).min(PRIORITIES - 1)] += 1;
                }
                self.stats.batches += 1;
                self.stats
                    .batch_messages
                    .record(BATCH_BOUNDS, chunk.len() as f64);
                DeliveryFrame {
                    encoded: std::array::from_fn(|i| {
                        (masks[i] != 0)
                            .then(|| client::encode_batch(WireFormat::ALL[i], target, chunk))
                    }),
                    min_priority: counts.iter().position(|&n| n > 0).unwrap_or(0) as u8,
                    counts,
                }
            })
            .collect();
        let delivery = Arc::new(Delivery {
            target: target.clone(),
            frames,
            first_received: batch.first_received,
        });
        for (index, worker) in self.setup.workers.iter().enumerate() {
            if workers & (1 << index) == 0 {
                continue;
            }
            match worker
                .inbox
                .try_send(ToWorker::Deliver(Arc::clone(&delivery)))
            {
                Ok(()) => self.woken[index] = true,
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    self.stats.dropped_worker_backlog += 1;
                    for frame in &delivery.frames {
                        for (total, n) in self
                            .stats
                            .dropped_worker_backlog_msgs
                            .iter_mut()
                            .zip(frame.counts)
                        {
                            *total += u64::from(n);
                        }
                    }
                }
            }
        }
        match target {
            Target::Room(name) => self.forget_if_idle(ChannelKind::Room, name),
            Target::User(name) => self.forget_if_idle(ChannelKind::User, name),
            Target::Broadcast => {}
        }
    }

    /// One wake-up per core that got deliveries this round.
    fn wake_workers(&mut self) {
        for (index, woken) in self.woken.iter_mut().enumerate() {
            if std::mem::take(woken) {
                self.setup.workers[index].waker.wake();
            }
        }
    }

    /// One log line with every worker's latest counters summed, and the hub's own.
    fn log_stats(&self) {
        let mut total = WorkerStats::default();
        for stats in &self.worker_stats {
            total.add(stats);
        }
        let per_flush = if total.flushes > 0 {
            total.write_calls as f64 / total.flushes as f64
        } else {
            0.0
        };
        tracing::info!(
            connections = total.connections,
            accepted = total.accepted,
            refused_full = total.refused_full,
            closed_slow = total.close_count(CloseReason::Slow),
            publishes = self.stats.publishes,
            batches = self.stats.batches,
            deliveries = total.deliveries,
            frames_queued = total.frames_queued,
            bytes_out = total.bytes_out,
            flushes = total.flushes,
            write_calls = total.write_calls,
            write_iovecs = total.write_iovecs,
            write_calls_per_flush = format!("{per_flush:.3}"),
            dropped_queue = total.dropped_queue.iter().sum::<u64>(),
            dropped_closed = total.dropped_closed.iter().sum::<u64>(),
            dropped_budget = self.stats.dropped_budget.iter().sum::<u64>(),
            dropped_worker_backlog = self.stats.dropped_worker_backlog,
            queue_high_water = total.queue_high_water,
            "edge stats"
        );
    }

    fn send_report(&mut self, full: bool) {
        self.membership_report_at = None;
        let LinkState::Up(_) = self.link else { return };
        let mut total = WorkerStats::default();
        for stats in &self.worker_stats {
            total.add(stats);
        }
        // Member counts come from the workers' periodic reports, which lag their presence
        // messages: a channel present here is reported with at least 1 member, never 0, so the
        // control plane routes to it from the moment a join can be answered.
        let (rooms, users) = if full {
            self.changed_rooms.clear();
            self.changed_users.clear();
            (
                full_counts(&self.room_members, &self.rooms),
                full_counts(&self.user_conns, &self.users),
            )
        } else {
            (
                present_counts(self.changed_rooms.drain(), &self.rooms),
                present_counts(self.changed_users.drain(), &self.users),
            )
        };
        let report = LinkFrame::LoadReport(LoadReport {
            connections: total.connections as u32,
            bytes_out: total.bytes_out,
            frames_out: total.frames_queued,
            msgs_dropped: total.messages_dropped()
                + self.stats.dropped_budget.iter().sum::<u64>()
                + self.stats.dropped_worker_backlog_msgs.iter().sum::<u64>(),
            slow_closes: total.close_count(CloseReason::Slow),
            full,
            rooms,
            users,
            seqs: if full { self.last_seqs() } else { Vec::new() },
            capacity_ratio_permille: self.setup.capacity.max_permille(),
        });
        self.send_frame(&report);
    }

    /// Leaves the latest per-worker counters, the hub's own, rooms by level and the capacity
    /// watermarks where the admin server reads them (once per report interval).
    fn publish_snapshot(&mut self) {
        let mut total = WorkerStats::default();
        for stats in &self.worker_stats {
            total.add(stats);
        }
        let capacity = self
            .setup
            .capacity
            .sample(Instant::now(), &self.worker_stats, &total);
        let mut levels = std::collections::BTreeMap::<u8, (u64, u64)>::new();
        for (room, counts) in &self.room_members {
            let members: u64 = counts.iter().map(|&n| u64::from(n)).sum();
            if members == 0 {
                continue;
            }
            let level = self.room_pacing.get(&**room).map_or(0, |p| p.level);
            let entry = levels.entry(level).or_default();
            entry.0 += 1;
            entry.1 += members;
        }
        let users = self
            .user_conns
            .values()
            .filter(|c| c.iter().any(|&n| n > 0))
            .count() as u64;
        self.setup.metrics.store(crate::metrics::Snapshot {
            workers: self.worker_stats.clone(),
            hub: self.stats.clone(),
            levels,
            users,
            capacity,
            busy: self.setup.capacity.busy().to_vec(),
        });
    }

    /// The last sequence number of every channel this edge holds.
    fn last_seqs(&self) -> Vec<(Target, u64)> {
        let rooms = self
            .rooms
            .iter()
            .map(|(name, c)| (Target::Room(name.clone()), c.last_seq));
        let users = self
            .users
            .iter()
            .map(|(name, c)| (Target::User(name.clone()), c.last_seq));
        rooms
            .chain(users)
            .chain(std::iter::once((
                Target::Broadcast,
                self.broadcast.last_seq,
            )))
            .filter(|&(_, seq)| seq > 0)
            .collect()
    }

    /// Asks the workers holding the user for its connections; answers at once when none does.
    fn query_user(&mut self, query: QueryUser) {
        let holders = self.users.get(&query.user).map_or(0, |c| {
            c.workers_by_format.iter().fold(0u64, |all, m| all | m)
        });
        let id = self.next_query;
        self.next_query = self.next_query.wrapping_add(1);
        let mut asked = 0;
        for (index, worker) in self.setup.workers.iter().enumerate() {
            if holders & (1 << index) == 0 {
                continue;
            }
            let ask = ToWorker::QueryUser {
                request: id,
                user: query.user.as_str().into(),
            };
            if worker.inbox.try_send(ask).is_ok() {
                self.woken[index] = true;
                asked += 1;
            }
        }
        let pending = PendingQuery {
            request: query.request,
            user: query.user,
            workers_left: asked,
            conns: Vec::new(),
        };
        if asked == 0 {
            self.answer_query(pending);
        } else {
            self.queries.insert(id, pending);
        }
    }

    fn user_conns_answered(&mut self, id: u32, conns: Vec<ConnInfo>) {
        let Some(pending) = self.queries.get_mut(&id) else {
            return; // asked before the link dropped; nobody waits for it any more
        };
        pending.conns.extend(conns);
        pending.workers_left -= 1;
        if pending.workers_left == 0 {
            let pending = self.queries.remove(&id).expect("present");
            self.answer_query(pending);
        }
    }

    fn answer_query(&mut self, pending: PendingQuery) {
        let answer = LinkFrame::UserConns(UserConns {
            request: pending.request,
            user: pending.user,
            conns: pending.conns,
        });
        self.send_frame(&answer);
    }

    /// Queues a frame on the link (if it is up) and writes what the socket takes.
    fn send_frame(&mut self, frame: &LinkFrame) {
        let LinkState::Up(conn) = &mut self.link else {
            return;
        };
        if let Err(error) = link::encode(frame, &mut conn.write) {
            tracing::error!(%error, "cannot encode a link frame");
            return;
        }
        if let Err(error) = self.flush_link() {
            self.link_failed(&error.to_string(), BACKOFF_MIN);
        }
    }
}

/// Applies one worker's changed counts and records the new totals as changed.
fn merge_counts(
    table: &mut HashMap<Box<str>, Vec<u32>>,
    changed: &mut HashMap<Box<str>, u32>,
    worker: usize,
    updates: HashMap<Box<str>, u32>,
    workers: usize,
) {
    for (name, count) in updates {
        let per_worker = table
            .entry(name.clone())
            .or_insert_with(|| vec![0; workers]);
        per_worker[worker] = count;
        let total: u32 = per_worker.iter().sum();
        if total == 0 {
            table.remove(&name);
        }
        changed.insert(name, total);
    }
}

/// Every channel's member count for a full report: the workers' last counts, and at least 1 for
/// a channel with members by presence.
fn full_counts(
    reported: &HashMap<Box<str>, Vec<u32>>,
    channels: &HashMap<String, Channel>,
) -> Vec<(String, u32)> {
    let mut counts: HashMap<&str, u32> = reported
        .iter()
        .map(|(name, per_worker)| (&**name, per_worker.iter().sum()))
        .collect();
    for (name, channel) in channels {
        if channel.has_members() {
            let count = counts.entry(name).or_insert(0);
            *count = (*count).max(1);
        }
    }
    counts
        .into_iter()
        .filter(|&(_, n)| n > 0)
        .map(|(name, n)| (name.to_string(), n))
        .collect()
}

/// Changed counts for an incremental report; a 0 for a channel still present by presence (the
/// workers' counts lag) is reported as 1.
fn present_counts(
    changed: impl Iterator<Item = (Box<str>, u32)>,
    channels: &HashMap<String, Channel>,
) -> Vec<(String, u32)> {
    changed
        .map(|(name, n)| {
            let present = channels.get(&*name).is_some_and(|c| c.has_members());
            let n = if present { n.max(1) } else { n };
            (name.into_string(), n)
        })
        .collect()
}

fn resolve(addr: &str) -> io::Result<SocketAddr> {
    addr.to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))
}
