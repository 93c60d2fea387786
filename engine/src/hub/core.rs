//! The hub's logic as a state machine without I/O: channels and their merge windows, the
//! encode-once step, membership and load reports (with each room's distinct users, merged from
//! the workers' sketches), rooms' online counts, the join acknowledgement's `sync` barriers, user
//! queries and the link's dial backoff.
//!
//! It takes events — a message from a worker, a link frame, the link coming up or going down,
//! time passing — each with an explicit `now`, and leaves what to do in outboxes the loop
//! ([`super::Hub`]) empties: link frames to send ([`HubCore::poll_transmit`]), messages for each
//! worker ([`HubCore::drain_to_workers`]), whether to dial ([`HubCore::take_dial`]), and when to
//! call again ([`HubCore::poll_timeout`]). It never reads the clock, touches a socket or blocks,
//! so every rule here is tested in memory with fake time (see `tests.rs`).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::recovery::{self, Stitch};
use crate::fanout::{
    ChannelKind, Delivery, DeliveryFrame, HistoryRequest, RecoverRequest, RoomPush, SendOutcome,
    SendRequest, StreamPosition, ToHub, ToWorker,
};
use crate::sendlimit::{Bucket, SendLimit};
use crate::stats::{
    CloseReason, HubStats, WorkerStats, BATCH_BOUNDS, LATENCY_BOUNDS, LEVELS, WINDOW_BOUNDS,
};
use crate::window::{frame_ranges, Admit, Next, Pacing, Window, MAX_FRAME_MESSAGE_BYTES};
use roomcast_proto::client::{self, ReplyExtra, WireFormat};
use roomcast_proto::link::{
    self, ChannelPosition, ConnInfo, HistoryPage, LinkFrame, LoadReport, Publish, QueryUser,
    Recover, Recovered, Register, RoomOnline, SetLevel, SyncAck, UserConns,
};
use roomcast_proto::message::{PushMessage, Target, PRIORITIES};
use roomcast_proto::sketch::UserSketch;

/// The first re-dial waits this long; each failed dial doubles it.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// At most this between re-dials: the control plane holds publishes for `--startup-grace-ms`
/// (2 s) after a start so edges can re-register first.
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How soon after a channel appears on (or leaves) this edge the control plane hears of it, so a
/// publish right after a first join is routed here without waiting for the next regular report.
pub const MEMBERSHIP_REPORT_DELAY: Duration = Duration::from_millis(20);

/// What the hub is configured with.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Who this edge is and where clients reach it (sent in the link's `register` frame).
    pub advertised: Advertised,
    /// The merge window of a channel no rate level was set for.
    pub default_tick: Duration,
    /// How long a window may stretch after its previous batch while that batch is still being
    /// written (`--max-window-ms`; never below the channel's tick).
    pub max_window: Duration,
    /// How often a load report goes to the control plane (and a metrics snapshot is taken).
    pub report_interval: Duration,
    /// How often to log the summed counters (None = never).
    pub stats_log_interval: Option<Duration>,
    pub workers: usize,
    /// The pace of one user's sends on this edge (`--send-rate`, `--send-burst`), over all its
    /// connections here.
    pub send_limit: SendLimit,
}

/// Most acks one round passes to the control plane; more are dropped and counted.
const MAX_ACKS_PER_ROUND: usize = 65_536;

/// The edge's identity and addresses as the control plane hands them to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertised {
    pub edge_id: String,
    /// `--advertise-host`; when `None`, the local address of the link connection (the address
    /// this host uses to reach the control plane, so routable from where the control plane is).
    pub host: Option<String>,
    pub ws_port: u16,
    pub tcp_port: u16,
    /// The admin listener; an unspecified IP is advertised under the advertised host.
    pub admin: Option<SocketAddr>,
    pub workers: u16,
    pub capacity: u32,
}

impl Advertised {
    /// The `register` frame for a link whose local end is `link_ip`.
    pub fn register(&self, link_ip: IpAddr) -> Register {
        let host = match &self.host {
            Some(host) => host.clone(),
            None => link_ip.to_string(),
        };
        let join = |host: &str, port: u16| {
            if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]:{port}") // an IPv6 literal
            } else {
                format!("{host}:{port}")
            }
        };
        Register {
            edge_id: self.edge_id.clone(),
            ws_addr: join(&host, self.ws_port),
            tcp_addr: join(&host, self.tcp_port),
            admin_addr: self.admin.map_or_else(String::new, |a| {
                if a.ip().is_unspecified() {
                    join(&host, a.port())
                } else {
                    a.to_string()
                }
            }),
            workers: self.workers,
            capacity: self.capacity,
        }
    }
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

/// Channels by name. Boxed: an edge holds a user channel per connected user, and a map of
/// inline 300-byte channels is mostly empty buckets of that size (a hash table runs at 44-87 %
/// load), which made the hub's table most of an idle connection's memory.
type Channels = HashMap<String, Box<Channel>>;

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
    /// The last batch handed to the workers (its `Delivery::ticket`) and the workers that have
    /// not written it yet: the window waits for them (see `window`).
    ticket: u64,
    writing: u64,
    /// The instant of the window timer that counts (earlier ones left in the heap are stale).
    armed: Option<Instant>,
    /// Recoveries finished when the open window's batch is taken (see `recovery`).
    deferred: Vec<Deferred>,
    /// The channel's epoch, as the control plane last said (with `routed`).
    epoch: Option<Arc<str>>,
    /// A room's latest online count from the control plane, for workers its members appear on
    /// later (dropped with the channel).
    online: Option<Arc<RoomPush>>,
}

/// A recovery whose client had already seen part of the open window.
struct Deferred {
    request: RecoverRequest,
    epoch: Arc<str>,
    answer_last: u64,
    msgs: Vec<PushMessage>,
}

impl Channel {
    fn new(pacing: Pacing, max_window: Duration) -> Channel {
        Channel {
            window: Window::new(pacing, max_window),
            routed: Routed::No,
            waiters: Vec::new(),
            last_seq: 0,
            workers_by_format: [0; 3],
            ticket: 0,
            writing: 0,
            armed: None,
            deferred: Vec::new(),
            epoch: None,
            online: None,
        }
    }

    fn has_members(&self) -> bool {
        self.workers_by_format.iter().any(|&m| m != 0)
    }

    fn workers(&self) -> u64 {
        self.workers_by_format.iter().fold(0, |all, m| all | m)
    }
}

/// The link as the hub sees it; the loop owns the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Dial at `retry_at`; a failure then waits `backoff`.
    Down {
        retry_at: Instant,
        backoff: Duration,
    },
    /// The loop is dialling; a failure waits `backoff`.
    Dialing {
        backoff: Duration,
    },
    Up,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKey {
    Room(String),
    User(String),
    Broadcast,
}

impl TimerKey {
    fn of(target: &Target) -> TimerKey {
        match target {
            Target::Room(name) => TimerKey::Room(name.clone()),
            Target::User(name) => TimerKey::User(name.clone()),
            Target::Broadcast => TimerKey::Broadcast,
        }
    }

    fn into_target(self) -> Target {
        match self {
            TimerKey::Room(name) => Target::Room(name),
            TimerKey::User(name) => Target::User(name),
            TimerKey::Broadcast => Target::Broadcast,
        }
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

/// A link frame the control plane may not send (it is edge → control only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeOnlyFrame;

/// Messages waiting for one worker's inbox, in order.
#[derive(Default)]
struct Outbox {
    queue: VecDeque<ToWorker>,
    /// The inbox refused a message that must not be dropped (it waits at the head of `queue`):
    /// deliveries for this worker are dropped at once instead of piling up behind it.
    blocked: bool,
}

pub struct HubCore {
    config: HubConfig,
    link: Link,
    rooms: Channels,
    users: Channels,
    broadcast: Channel,
    /// Level settings for rooms, kept while the room has no member here.
    room_pacing: HashMap<String, Pacing>,
    timers: BinaryHeap<Reverse<(Instant, TimerKey)>>,
    /// Per worker: last reported counters, and member counts per channel.
    worker_stats: Vec<WorkerStats>,
    room_members: HashMap<Box<str>, Vec<u32>>,
    user_conns: HashMap<Box<str>, Vec<u32>>,
    changed_rooms: HashMap<Box<str>, u32>,
    changed_users: HashMap<Box<str>, u32>,
    /// Per room, each worker's sketch of the room's distinct users there (from its reports), and
    /// the rooms whose sketch changed since the last load report.
    room_sketches: HashMap<Box<str>, Vec<UserSketch>>,
    changed_room_users: HashSet<Box<str>>,
    stats: HubStats,
    /// `query user` requests being answered by workers, by the hub's own query id.
    queries: HashMap<u32, PendingQuery>,
    next_query: u32,
    next_report: Instant,
    next_stats_log: Option<Instant>,
    /// An early incremental load report is due (a channel appeared on or left this edge).
    membership_report_at: Option<Instant>,
    /// Channels a worker waits on that need a `sync` barrier (sent at the end of the round).
    syncs_due: Vec<(ChannelKind, String)>,
    /// `sync` barriers sent and not yet acknowledged, oldest first, with their channels.
    syncs_in_flight: VecDeque<(u64, Vec<(ChannelKind, String)>)>,
    next_sync: u64,
    /// The highest use/capacity ratio, ‰, reported to the control plane's dispatcher.
    capacity_permille: u16,
    transmit: VecDeque<LinkFrame>,
    outboxes: Vec<Outbox>,
    dial: bool,
    /// The ticket of the next batch handed to the workers.
    next_ticket: u64,
    /// Recoveries and history reads asked of the control plane, by link request id; the ids
    /// not sent yet (they follow the membership report, and are sent again after a re-dial).
    recoveries: HashMap<u64, RecoverRequest>,
    recoveries_due: Vec<u64>,
    histories: HashMap<u64, HistoryRequest>,
    histories_due: Vec<u64>,
    next_request: u64,
    /// Sends passed to the control plane and not answered yet, by link request id.
    sends: HashMap<u64, Box<SendRequest>>,
    /// Per user with a recent send on this edge, its bucket (forgotten once full again).
    user_buckets: HashMap<Box<str>, Bucket>,
    /// The origin of the buckets' millisecond clock.
    started: Instant,
    /// Acks to pass to the control plane at the end of the round.
    acks: Vec<link::Ack>,
}

impl HubCore {
    pub fn new(config: HubConfig, now: Instant) -> HubCore {
        let workers = config.workers;
        assert!(workers <= 64, "worker sets are 64-bit masks");
        HubCore {
            link: Link::Down {
                retry_at: now,
                backoff: BACKOFF_MIN,
            },
            rooms: HashMap::new(),
            users: HashMap::new(),
            broadcast: Channel::new(Pacing::unlimited(config.default_tick), config.max_window),
            room_pacing: HashMap::new(),
            timers: BinaryHeap::new(),
            worker_stats: vec![WorkerStats::default(); workers],
            room_members: HashMap::new(),
            user_conns: HashMap::new(),
            changed_rooms: HashMap::new(),
            changed_users: HashMap::new(),
            room_sketches: HashMap::new(),
            changed_room_users: HashSet::new(),
            stats: HubStats::default(),
            queries: HashMap::new(),
            next_query: 0,
            next_report: now + config.report_interval,
            next_stats_log: config.stats_log_interval.map(|every| now + every),
            membership_report_at: None,
            syncs_due: Vec::new(),
            syncs_in_flight: VecDeque::new(),
            next_sync: 1,
            capacity_permille: 0,
            transmit: VecDeque::new(),
            outboxes: (0..workers).map(|_| Outbox::default()).collect(),
            dial: false,
            next_ticket: 1,
            recoveries: HashMap::new(),
            recoveries_due: Vec::new(),
            histories: HashMap::new(),
            histories_due: Vec::new(),
            next_request: 1,
            sends: HashMap::new(),
            user_buckets: HashMap::new(),
            started: now,
            acks: Vec::new(),
            config,
        }
    }

    // ---- events -------------------------------------------------------------------------------

    /// A message from a worker.
    pub fn handle_worker(&mut self, message: ToHub, now: Instant) {
        match message {
            ToHub::Presence {
                worker,
                kind,
                name,
                format,
                present,
            } => self.presence(worker, kind, &name, format, present, now),
            ToHub::Confirm {
                worker,
                kind,
                name,
                token,
            } => self.confirm_request(worker, kind, &name, token),
            ToHub::Recover(request) => {
                let id = self.next_request;
                self.next_request += 1;
                self.recoveries.insert(id, request);
                self.recoveries_due.push(id);
            }
            ToHub::History(request) => {
                let id = self.next_request;
                self.next_request += 1;
                self.histories.insert(id, request);
                self.histories_due.push(id);
            }
            ToHub::Send(send) => self.send(send, now),
            ToHub::Ack {
                user,
                msg_seq,
                at_ms,
            } => {
                if self.link != Link::Up || self.acks.len() >= MAX_ACKS_PER_ROUND {
                    self.stats.acks_dropped += 1;
                } else {
                    self.acks.push(link::Ack {
                        user: user.into(),
                        msg_seq,
                        at_ms,
                    });
                }
            }
            ToHub::UserConns { request, conns } => self.user_conns_answered(request, conns),
            ToHub::Written { worker, delivery } => {
                self.fanout_written(worker, &delivery.target, delivery.ticket, now)
            }
            ToHub::Report {
                worker,
                rooms,
                room_users,
                users,
                stats,
            } => {
                let workers = self.worker_stats.len();
                let gone: Vec<Box<str>> = rooms
                    .iter()
                    .filter(|&(_, &members)| members == 0)
                    .map(|(name, _)| name.clone())
                    .collect();
                for (name, sketch) in room_users {
                    let per_worker = self
                        .room_sketches
                        .entry(name.clone())
                        .or_insert_with(|| vec![UserSketch::default(); workers]);
                    per_worker[worker] = sketch;
                    self.changed_room_users.insert(name);
                }
                merge_counts(
                    &mut self.room_members,
                    &mut self.changed_rooms,
                    worker,
                    rooms,
                    workers,
                );
                merge_counts(
                    &mut self.user_conns,
                    &mut self.changed_users,
                    worker,
                    users,
                    workers,
                );
                for name in gone {
                    // Left this worker: its users there are gone too; left the edge: forget it.
                    if let Some(per_worker) = self.room_sketches.get_mut(&name) {
                        per_worker[worker] = UserSketch::default();
                        if !self.room_members.contains_key(&name) {
                            self.room_sketches.remove(&name);
                        }
                        self.changed_room_users.insert(name);
                    }
                }
                self.worker_stats[worker] = *stats;
            }
        }
    }

    /// A frame from the control plane. An edge-only frame is a protocol error: drop the link.
    pub fn handle_link_frame(
        &mut self,
        frame: LinkFrame,
        now: Instant,
    ) -> Result<(), EdgeOnlyFrame> {
        match frame {
            LinkFrame::Publish(publish) => self.publish(publish, now),
            LinkFrame::SetLevel(level) => self.set_level(level),
            LinkFrame::QueryUser(query) => self.query_user(query),
            LinkFrame::SyncAck(ack) => self.sync_acked(ack),
            LinkFrame::Recovered(answer) => self.recovered(answer),
            LinkFrame::HistoryPage(page) => self.history_answered(page),
            LinkFrame::RoomOnline(online) => self.room_online(online),
            LinkFrame::SendResult(result) => self.send_answered(result),
            LinkFrame::Register(_)
            | LinkFrame::Send(_)
            | LinkFrame::Acks(_)
            | LinkFrame::LoadReport(_)
            | LinkFrame::UserConns(_)
            | LinkFrame::Sync(_)
            | LinkFrame::Recover(_)
            | LinkFrame::History(_) => return Err(EdgeOnlyFrame),
        }
        Ok(())
    }

    /// The loop's dial connected; `local_ip` is this end's address on the link. Registers and
    /// sends a full load report.
    pub fn link_connected(&mut self, local_ip: IpAddr) {
        self.link = Link::Up;
        self.stats.link_connects += 1;
        self.transmit.clear();
        self.transmit.push_back(LinkFrame::Register(
            self.config.advertised.register(local_ip),
        ));
        self.send_report(true);
    }

    /// The dial failed, or the link broke (bad frame, closed, write error, backlog). Everything
    /// the control plane confirmed is forgotten; the loop dials again after the backoff.
    pub fn link_failed(&mut self, why: &str, now: Instant) {
        let backoff = match self.link {
            Link::Up => {
                tracing::warn!(why, "link to the control plane lost; re-dialling");
                self.forget_link();
                BACKOFF_MIN
            }
            Link::Dialing { backoff } | Link::Down { backoff, .. } => {
                tracing::debug!(why, "link dial failed");
                backoff
            }
        };
        // Nobody waits for answers on a link that is gone.
        self.queries.clear();
        self.transmit.clear();
        self.acks.clear();
        self.link = Link::Down {
            retry_at: now + backoff,
            backoff: (backoff * 2).min(BACKOFF_MAX),
        };
    }

    /// Time passed: closes due windows, sends `sync` barriers, reports and the stats log line.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.fire_timers(now);
        self.send_syncs();
        if now >= self.next_report {
            self.send_report(false);
            self.next_report = now + self.config.report_interval;
            let now_ms = self.clock_ms(now);
            let limit = self.config.send_limit;
            self.user_buckets
                .retain(|_, bucket| !limit.is_full(bucket, now_ms));
        }
        if self.membership_report_at.is_some_and(|at| now >= at) {
            self.send_report(false);
        }
        if let Link::Down { retry_at, backoff } = self.link {
            if now >= retry_at {
                self.link = Link::Dialing { backoff };
                self.dial = true;
            }
        }
    }

    /// The edge is stopping: every worker closes its connections (1001) and stops.
    pub fn shutdown(&mut self) {
        for outbox in &mut self.outboxes {
            outbox.queue.push_back(ToWorker::Shutdown);
        }
    }

    /// The capacity sampler's latest highest ratio, ‰, for the next load reports.
    pub fn set_capacity_permille(&mut self, permille: u16) {
        self.capacity_permille = permille;
    }

    // ---- outputs ------------------------------------------------------------------------------

    /// When [`handle_timeout`](Self::handle_timeout) has something to do next.
    pub fn poll_timeout(&self) -> Instant {
        let mut at = self.next_report;
        if let Some(log) = self.next_stats_log {
            at = at.min(log);
        }
        if let Some(Reverse((timer, _))) = self.timers.peek() {
            at = at.min(*timer);
        }
        if let Link::Down { retry_at, .. } = self.link {
            at = at.min(retry_at);
        }
        if let Some(report) = self.membership_report_at {
            at = at.min(report);
        }
        at
    }

    /// Whether the loop should dial the control plane now (then report with
    /// [`link_connected`](Self::link_connected) or [`link_failed`](Self::link_failed)).
    pub fn take_dial(&mut self) -> bool {
        std::mem::take(&mut self.dial)
    }

    /// The next frame to write on the link, in order.
    pub fn poll_transmit(&mut self) -> Option<LinkFrame> {
        self.transmit.pop_front()
    }

    /// Hands each worker its messages, in order, through `send` (a non-blocking send that gives
    /// the message back when the inbox is full). A refused delivery is dropped and counted (that
    /// worker is far behind); any other refused message waits for the next call. Returns the
    /// workers that were sent something (to wake).
    pub fn drain_to_workers(
        &mut self,
        now: Instant,
        mut send: impl FnMut(usize, ToWorker) -> Result<(), ToWorker>,
    ) -> u64 {
        let mut sent = 0u64;
        let mut refused = Vec::new();
        for (worker, outbox) in self.outboxes.iter_mut().enumerate() {
            outbox.blocked = false;
            while let Some(message) = outbox.queue.pop_front() {
                match send(worker, message) {
                    Ok(()) => sent |= 1 << worker,
                    Err(ToWorker::Deliver(delivery)) => {
                        count_backlog_drop(&mut self.stats, &delivery);
                        refused.push((worker, delivery));
                    }
                    // Superseded by the next count anyway: never worth blocking the inbox for.
                    Err(ToWorker::RoomOnline(pushes)) => {
                        self.stats.online_dropped += pushes.len() as u64;
                    }
                    Err(message) => {
                        outbox.queue.push_front(message);
                        outbox.blocked = true;
                        break;
                    }
                }
            }
        }
        // A dropped batch is not being written: the channel's next window need not wait for it.
        for (worker, delivery) in refused {
            self.fanout_written(worker, &delivery.target, delivery.ticket, now);
        }
        sent
    }

    /// When the next load report is due (the loop samples capacity and stores a metrics snapshot
    /// just before it).
    pub fn report_due(&self, now: Instant) -> bool {
        now >= self.next_report
    }

    pub fn worker_stats(&self) -> &[WorkerStats] {
        &self.worker_stats
    }

    pub fn stats(&self) -> &HubStats {
        &self.stats
    }

    /// Rooms with members here and their members, by rate level.
    pub fn rooms_by_level(&self) -> BTreeMap<u8, (u64, u64)> {
        let mut levels = BTreeMap::<u8, (u64, u64)>::new();
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
        levels
    }

    /// Users with at least one connection here.
    pub fn users_connected(&self) -> u64 {
        self.user_conns
            .values()
            .filter(|c| c.iter().any(|&n| n > 0))
            .count() as u64
    }

    /// Whether the `edge stats` line is due (the loop logs it from the snapshot it stores, so the
    /// line shows what `/metrics` shows).
    pub fn stats_log_due(&self, now: Instant) -> bool {
        self.next_stats_log.is_some_and(|at| now >= at)
    }

    pub fn stats_logged(&mut self, now: Instant) {
        self.next_stats_log = self.config.stats_log_interval.map(|every| now + every);
    }

    // ---- membership and the join acknowledgement ----------------------------------------------

    fn presence(
        &mut self,
        worker: usize,
        kind: ChannelKind,
        name: &str,
        format: WireFormat,
        present: bool,
        now: Instant,
    ) {
        let default_tick = self.config.default_tick;
        let max_window = self.config.max_window;
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
                    .or_insert_with(|| Box::new(Channel::new(pacing, max_window)))
            }
            ChannelKind::User => self.users.entry(name.to_string()).or_insert_with(|| {
                Box::new(Channel::new(Pacing::unlimited(default_tick), max_window))
            }),
        };
        let had_members = channel.has_members();
        let bit = 1u64 << worker;
        if present {
            channel.workers_by_format[format.index()] |= bit;
        } else {
            channel.workers_by_format[format.index()] &= !bit;
        }
        let has_members = channel.has_members();
        // A worker whose members all left writes nothing more of the last batch.
        let released = channel.writing != 0 && channel.writing & !channel.workers() != 0;
        channel.writing &= channel.workers();
        if !has_members {
            // Gone from this edge: a later first member must be confirmed afresh, after the
            // report that says it is back.
            channel.routed = Routed::No;
            channel.epoch = None;
            channel.waiters.clear();
            channel.deferred.clear();
        }
        if had_members != has_members {
            self.membership_changed(kind, name, has_members, now);
        }
        if present && kind == ChannelKind::Room {
            self.send_latest_online(worker, name, format);
        }
        if released {
            let target = match kind {
                ChannelKind::Room => Target::Room(name.to_string()),
                ChannelKind::User => Target::User(name.to_string()),
                ChannelKind::All => Target::Broadcast,
            };
            self.maybe_written(&target, now);
        }
        self.forget_if_idle(kind, name);
    }

    /// A worker waits for a channel to be routed here (a join or `auth` reply depends on it).
    fn confirm_request(&mut self, worker: usize, kind: ChannelKind, name: &str, token: u64) {
        let link_up = self.link == Link::Up;
        let channel = self.named_channel_mut(kind, name);
        let Some(channel) = channel.filter(|c| c.has_members()) else {
            // Its members left before the hub read this: nobody waits any more.
            return;
        };
        if channel.routed == Routed::Yes && link_up {
            // Routed here since the barrier that told the epoch: every publish since reached
            // this hub, so its last `seq` is where the stream stands.
            let position = channel.epoch.as_ref().map(|epoch| StreamPosition {
                epoch: Arc::clone(epoch),
                last_seq: recovery::live_after(channel.last_seq, channel.window.first_seq()),
            });
            self.confirm_worker(worker, kind, name, token, position);
            return;
        }
        channel.waiters.push((worker, token));
        if channel.routed == Routed::No && channel.waiters.len() == 1 {
            self.syncs_due.push((kind, name.to_string()));
        }
    }

    fn confirm_worker(
        &mut self,
        worker: usize,
        kind: ChannelKind,
        name: &str,
        token: u64,
        position: Option<StreamPosition>,
    ) {
        self.outboxes[worker].queue.push_back(ToWorker::Confirmed {
            kind,
            name: name.into(),
            token,
            position,
        });
    }

    /// Reports the channels workers wait on and sends one `sync` barrier behind the report; the
    /// control plane's `sync ack` confirms them all. Waits for the link when it is down.
    fn send_syncs(&mut self) {
        if self.link != Link::Up {
            return;
        }
        self.send_requests();
        if !self.acks.is_empty() {
            let acks = std::mem::take(&mut self.acks);
            self.stats.acks_sent += acks.len() as u64;
            self.transmit
                .push_back(LinkFrame::Acks(link::Acks { acks }));
        }
        if self.syncs_due.is_empty() {
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
        let channels = syncing
            .iter()
            .map(|(kind, name)| target_of(*kind, name))
            .collect();
        self.transmit
            .push_back(LinkFrame::Sync(link::Sync { id, channels }));
        self.syncs_in_flight.push_back((id, syncing));
    }

    /// Sends the recoveries and history reads workers asked for. A recovery follows the report
    /// that announces its channel, so the control plane routes the channel here before it reads
    /// where the stream stands.
    fn send_requests(&mut self) {
        if self.recoveries_due.is_empty() && self.histories_due.is_empty() {
            return;
        }
        if !self.recoveries_due.is_empty() {
            self.send_report(false);
        }
        for id in std::mem::take(&mut self.recoveries_due) {
            if let Some(r) = self.recoveries.get(&id) {
                self.transmit.push_back(LinkFrame::Recover(Recover {
                    id,
                    target: target_of(r.kind, &r.name),
                    since: r.since.clone(),
                }));
            }
        }
        for id in std::mem::take(&mut self.histories_due) {
            if let Some(h) = self.histories.get(&id) {
                self.transmit
                    .push_back(LinkFrame::History(link::HistoryRequest {
                        id,
                        target: Target::Room(h.room.to_string()),
                        since: h.since,
                        limit: h.limit,
                    }));
            }
        }
    }

    /// The control plane's answer to a recovery: stitched to the live stream and handed to the
    /// connection's worker, now or when the open window's batch is taken.
    fn recovered(&mut self, answer: Recovered) {
        let Some(request) = self.recoveries.remove(&answer.id) else {
            return; // a stale answer: asked before a re-dial and answered twice
        };
        let Some(channel) = self
            .named_channel_mut(request.kind, &request.name)
            .filter(|c| c.has_members())
        else {
            return; // the connection left (its worker forgot the request)
        };
        let epoch: Arc<str> = answer.position.epoch.as_str().into();
        let answer_last = answer.position.last_seq;
        let window_first = channel.window.first_seq();
        let msgs = match answer.result {
            Err(failure) => {
                let reason = usize::from(failure.code().saturating_sub(1)).min(3);
                self.stats.recoveries_failed[reason] += 1;
                let position = StreamPosition {
                    epoch,
                    last_seq: recovery::live_after(answer_last, window_first),
                };
                self.outboxes[request.worker]
                    .queue
                    .push_back(ToWorker::Recovered {
                        token: request.token,
                        conn: request.conn,
                        position,
                        result: Err(failure),
                    });
                return;
            }
            Ok(msgs) => msgs,
        };
        let span = channel.window.span();
        match recovery::stitch(request.since.seq, answer_last, &msgs, span) {
            Stitch::Now { replay, last_seq } => {
                self.send_replay(&request, StreamPosition { epoch, last_seq }, &msgs[replay])
            }
            Stitch::AfterBatch => channel.deferred.push(Deferred {
                request,
                epoch,
                answer_last,
                msgs,
            }),
        }
    }

    /// Encodes a replay for one connection and queues it to its worker.
    fn send_replay(
        &mut self,
        request: &RecoverRequest,
        position: StreamPosition,
        replay: &[PushMessage],
    ) {
        let target = target_of(request.kind, &request.name);
        let frames = frame_ranges(replay, MAX_FRAME_MESSAGE_BYTES)
            .map(|run| client::encode_batch(request.format, &target, &replay[run]))
            .collect();
        self.stats.recoveries += 1;
        self.stats.recovered_messages += replay.len() as u64;
        self.outboxes[request.worker]
            .queue
            .push_back(ToWorker::Recovered {
                token: request.token,
                conn: request.conn,
                position,
                result: Ok(frames),
            });
    }

    /// A client's send from a worker: the user's bucket on this edge first, then on to the
    /// control plane (answered at once `unavailable` while the link is down).
    fn send(&mut self, send: Box<SendRequest>, now: Instant) {
        if self.link != Link::Up {
            // Answered before the user's bucket: a retry after the outage finds its tokens.
            self.answer_send(&send, SendOutcome::Unavailable);
            return;
        }
        let now_ms = self.clock_ms(now);
        let limit = self.config.send_limit;
        // Looked up before inserting: a user who sends often has a bucket, and the key's copy
        // is made only for a new one.
        if !self.user_buckets.contains_key(&send.user) {
            self.user_buckets
                .insert(send.user.clone(), limit.full_bucket(now_ms));
        }
        let bucket = self
            .user_buckets
            .get_mut(&send.user)
            .expect("inserted above");
        if let Err(retry_after_ms) = limit.take(bucket, now_ms) {
            let outcome = SendOutcome::RateLimited { retry_after_ms };
            self.answer_send(&send, outcome);
            return;
        }
        let id = self.next_request;
        self.next_request += 1;
        self.transmit.push_back(LinkFrame::Send(link::SendRequest {
            id,
            user: send.user.to_string(),
            room: send.room.to_string(),
            kind: send.kind.to_string(),
            data: send.data.clone(),
            format: send.format,
            peer: send.peer.clone(),
        }));
        self.sends.insert(id, send);
    }

    /// The control plane's answer to a send, to the sender's worker.
    fn send_answered(&mut self, result: link::SendResult) {
        let Some(send) = self.sends.remove(&result.id) else {
            return; // answered after the link dropped and came back: already answered
        };
        self.answer_send(&send, SendOutcome::Link(result.outcome));
    }

    /// Hands a send's answer to its worker.
    fn answer_send(&mut self, send: &SendRequest, outcome: SendOutcome) {
        self.outboxes[send.worker]
            .queue
            .push_back(ToWorker::SendDone {
                token: send.token,
                conn: send.conn,
                outcome,
            });
    }

    /// Milliseconds since the hub started (wrapping), the buckets' clock.
    fn clock_ms(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.started).as_millis() as u32
    }

    /// The control plane's answer to a `history` op: the reply, encoded for the connection.
    fn history_answered(&mut self, page: HistoryPage) {
        let Some(request) = self.histories.remove(&page.id) else {
            return;
        };
        let extra = ReplyExtra {
            position: Some((&page.position.epoch, page.position.last_seq)),
            recovered: None,
            msgs: Some(&page.msgs),
            complete: Some(page.complete),
            msg_seq: None,
            not_broadcast: false,
        };
        let bytes = client::encode_reply_ok(request.format, request.op_seq, &extra);
        self.outboxes[request.worker]
            .queue
            .push_back(ToWorker::Reply {
                token: request.token,
                conn: request.conn,
                bytes,
            });
    }

    /// The control plane applied everything up to `sync` `id`: confirm those channels, with
    /// where each one's stream stands.
    fn sync_acked(&mut self, ack: SyncAck) {
        let SyncAck { id, positions } = ack;
        let positions: HashMap<Target, ChannelPosition> = positions
            .into_iter()
            .map(|p| (p.target.clone(), p))
            .collect();
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
                let window_first = channel.window.first_seq();
                let position = positions
                    .get(&target_of(kind, &name))
                    .map(|p| StreamPosition {
                        epoch: p.epoch.as_str().into(),
                        last_seq: recovery::live_after(p.last_seq, window_first),
                    });
                channel.epoch = position.as_ref().map(|p| Arc::clone(&p.epoch));
                channel.last_seq = channel.last_seq.max(
                    positions
                        .get(&target_of(kind, &name))
                        .map_or(0, |p| p.last_seq),
                );
                for (worker, token) in waiters {
                    self.confirm_worker(worker, kind, &name, token, position.clone());
                }
            }
        }
    }

    /// The link is gone: nothing is confirmed any more. Workers answer new joins only after the
    /// next registration's full report and a `sync` behind it; waiters keep waiting for that.
    fn forget_link(&mut self) {
        // A send in flight may or may not have been published: its client hears `unavailable`.
        for (_, send) in std::mem::take(&mut self.sends) {
            self.answer_send(&send, SendOutcome::Unavailable);
        }
        self.syncs_in_flight.clear();
        self.syncs_due.clear();
        // Reads are asked again on the next link; an answer to the old ask is then ignored.
        self.recoveries_due = self.recoveries.keys().copied().collect();
        self.recoveries_due.sort_unstable();
        self.histories_due = self.histories.keys().copied().collect();
        self.histories_due.sort_unstable();
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
            channel.epoch = None;
            if !channel.waiters.is_empty() {
                self.syncs_due.push((kind, name.clone()));
            }
        }
        for outbox in &mut self.outboxes {
            outbox.queue.push_back(ToWorker::LinkLost);
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
    fn membership_changed(&mut self, kind: ChannelKind, name: &str, present: bool, now: Instant) {
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
        let at = now + MEMBERSHIP_REPORT_DELAY;
        self.membership_report_at = Some(self.membership_report_at.map_or(at, |t| t.min(at)));
    }

    // ---- publishes, windows and the encode-once step ------------------------------------------

    fn publish(&mut self, publish: Publish, now: Instant) {
        self.stats.publishes += 1;
        let Publish { target, msg } = publish;
        let priority = (msg.priority as usize).min(PRIORITIES - 1);
        self.stats.publishes_by_priority[priority] += 1;
        let Some(channel) = self.channel_mut(&target).filter(|c| c.has_members()) else {
            self.stats.publishes_without_members += 1;
            return;
        };
        channel.last_seq = channel.last_seq.max(msg.seq);
        match channel.window.push(msg, now) {
            Admit::Queued => self.schedule(&target, now),
            Admit::OverBudget => self.stats.dropped_budget[priority] += 1,
        }
    }

    fn set_level(&mut self, level: SetLevel) {
        let pacing = Pacing {
            level: level.level,
            tick: Duration::from_millis(level.tick_ms as u64),
            budgets: level.budgets,
        };
        let room = level.room;
        if let Some(channel) = self.rooms.get_mut(&room) {
            channel.window.pacing = pacing;
        }
        self.room_pacing.insert(room, pacing);
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, key))) = self.timers.pop() else {
                break;
            };
            let target = key.into_target();
            // A window closed or rescheduled since leaves a stale timer: only the armed one counts.
            let Some(channel) = self.channel_mut(&target).filter(|c| c.armed == Some(at)) else {
                continue;
            };
            channel.armed = None;
            self.stats.tick_lag.record(
                LATENCY_BOUNDS,
                now.saturating_duration_since(at).as_secs_f64(),
            );
            self.schedule(&target, now);
        }
    }

    /// Asks the channel's window when it closes: closes it now, or arms its timer.
    fn schedule(&mut self, target: &Target, now: Instant) {
        let Some(channel) = self.channel_mut(target) else {
            return;
        };
        let was_held = channel.window.is_held();
        let next = channel.window.poll(now);
        let held = channel.window.is_held();
        let arm = match next {
            Next::At(at) if channel.armed != Some(at) => Some(at),
            _ => None,
        };
        if let Some(at) = arm {
            channel.armed = Some(at);
            self.timers.push(Reverse((at, TimerKey::of(target))));
        }
        if held && !was_held {
            self.stats.channels_stretched += 1;
        }
        if next == Next::CloseNow {
            self.flush_channel(target, now);
        }
    }

    /// Worker `worker` has written the batch `ticket` of `target` to most of its members there
    /// (or will not write it: its members left, its inbox refused it).
    fn fanout_written(&mut self, worker: usize, target: &Target, ticket: u64, now: Instant) {
        let Some(channel) = self.channel_mut(target) else {
            return;
        };
        if channel.ticket != ticket {
            return; // an older batch (the window closed at its cap meanwhile)
        }
        channel.writing &= !(1u64 << worker);
        self.maybe_written(target, now);
    }

    /// When no worker is still writing the channel's last batch, its window may close.
    fn maybe_written(&mut self, target: &Target, now: Instant) {
        let Some(channel) = self.channel_mut(target) else {
            return;
        };
        if channel.writing == 0 && channel.window.in_flight() {
            channel.window.written();
            self.schedule(target, now);
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
        channel.armed = None;
        let level = channel.window.pacing.level;
        let masks = channel.workers_by_format;
        let workers = channel.workers();
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        if batch.stretched {
            self.stats.channels_stretched -= 1;
            self.stats.windows_stretched += 1;
        }
        if batch.capped {
            self.stats.windows_capped += 1;
        }
        self.stats.windows[usize::from(level).min(LEVELS - 1)]
            .record(WINDOW_BOUNDS, batch.window.as_secs_f64());
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
                    // A final message (of a merge key) is never shed, like priority 0.
                    min_priority: chunk
                        .iter()
                        .map(PushMessage::shed_priority)
                        .min()
                        .unwrap_or(0),
                    counts,
                }
            })
            .collect();
        let last_seq = batch.msgs.iter().map(|m| m.seq).max().unwrap_or(0);
        let delivery = Arc::new(Delivery {
            target: target.clone(),
            frames,
            first_received: batch.first_received,
            ticket,
            last_seq,
        });
        let mut writing = 0u64;
        for (worker, outbox) in self.outboxes.iter_mut().enumerate() {
            if workers & (1 << worker) == 0 {
                continue;
            }
            if outbox.blocked {
                count_backlog_drop(&mut self.stats, &delivery);
            } else {
                outbox
                    .queue
                    .push_back(ToWorker::Deliver(Arc::clone(&delivery)));
                writing |= 1 << worker;
            }
        }
        let mut deferred = Vec::new();
        if let Some(channel) = self.channel_mut(target) {
            if writing != 0 {
                channel.ticket = ticket;
                channel.writing = writing;
                channel.window.handed_over();
            }
            deferred = std::mem::take(&mut channel.deferred);
        }
        // Recoveries waiting for this batch: their connections skip it and get it in the
        // replay, queued right behind it.
        for d in deferred {
            let (replay, last_seq) =
                recovery::after_batch(d.request.since.seq, d.answer_last, &d.msgs, &batch.msgs);
            let position = StreamPosition {
                epoch: d.epoch,
                last_seq,
            };
            self.send_replay(&d.request, position, &replay);
        }
        match target {
            Target::Room(name) => self.forget_if_idle(ChannelKind::Room, name),
            Target::User(name) => self.forget_if_idle(ChannelKind::User, name),
            Target::Broadcast => {}
        }
    }

    // ---- rooms' online counts -------------------------------------------------------------------

    /// Rooms' online counts from the control plane: each encoded once per wire format in use
    /// here and handed, in one message per worker, to the workers holding the room. A room no
    /// member of which is here any more is skipped.
    fn room_online(&mut self, frame: RoomOnline) {
        let mut per_worker: Vec<Vec<Arc<RoomPush>>> = vec![Vec::new(); self.outboxes.len()];
        for count in frame.rooms {
            let Some(channel) = self.rooms.get_mut(&count.room).filter(|c| c.has_members()) else {
                continue;
            };
            let masks = channel.workers_by_format;
            let encoded = std::array::from_fn(|i| {
                (masks[i] != 0).then(|| {
                    let format = WireFormat::ALL[i];
                    client::encode_room_online(format, &count.room, count.online, count.users)
                })
            });
            let push = Arc::new(RoomPush {
                room: count.room.into(),
                online: count.online,
                users: count.users,
                encoded,
            });
            channel.online = Some(Arc::clone(&push));
            self.stats.online_pushes += 1;
            let workers = channel.workers();
            for (worker, pushes) in per_worker.iter_mut().enumerate() {
                if workers & (1 << worker) != 0 {
                    pushes.push(Arc::clone(&push));
                }
            }
        }
        for (worker, pushes) in per_worker.into_iter().enumerate() {
            if !pushes.is_empty() {
                self.queue_room_online(worker, pushes);
            }
        }
    }

    /// Members of `format` appeared in a room on `worker`: hand that worker the room's latest
    /// count, so they need not wait for the count to change. A format no member used when the
    /// count came is encoded now, once.
    fn send_latest_online(&mut self, worker: usize, room: &str, format: WireFormat) {
        let Some(channel) = self.rooms.get_mut(room) else {
            return;
        };
        let Some(latest) = channel.online.as_ref() else {
            return;
        };
        let push = if latest.encoded[format.index()].is_some() {
            Arc::clone(latest)
        } else {
            let mut encoded = latest.encoded.clone();
            encoded[format.index()] = Some(client::encode_room_online(
                format,
                &latest.room,
                latest.online,
                latest.users,
            ));
            let push = Arc::new(RoomPush {
                room: Arc::clone(&latest.room),
                online: latest.online,
                users: latest.users,
                encoded,
            });
            channel.online = Some(Arc::clone(&push));
            push
        };
        self.queue_room_online(worker, vec![push]);
    }

    /// Queues counts for a worker; one whose inbox refused a message that must wait (see
    /// [`Outbox::blocked`]) is far behind and loses them, like batches.
    fn queue_room_online(&mut self, worker: usize, pushes: Vec<Arc<RoomPush>>) {
        let outbox = &mut self.outboxes[worker];
        if outbox.blocked {
            self.stats.online_dropped += pushes.len() as u64;
        } else {
            outbox.queue.push_back(ToWorker::RoomOnline(pushes));
        }
    }

    // ---- reports and queries ------------------------------------------------------------------

    fn total(&self) -> WorkerStats {
        let mut total = WorkerStats::default();
        for stats in &self.worker_stats {
            total.add(stats);
        }
        total
    }

    fn send_report(&mut self, full: bool) {
        self.membership_report_at = None;
        if self.link != Link::Up {
            return;
        }
        let total = self.total();
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
        // A room's users here: the union of its workers' sketches (a user on two workers
        // counts once), for the rooms whose sketch changed (all of them in a full report).
        let room_users: Vec<(String, UserSketch)> = if full {
            self.changed_room_users.clear();
            self.room_sketches
                .iter()
                .map(|(name, per_worker)| (name.to_string(), union(per_worker)))
                .collect()
        } else {
            let sketches = &self.room_sketches;
            self.changed_room_users
                .drain()
                .filter_map(|name| {
                    let per_worker = sketches.get(&name)?;
                    Some((name.into_string(), union(per_worker)))
                })
                .collect()
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
            capacity_ratio_permille: self.capacity_permille,
            room_users,
        });
        self.transmit.push_back(report);
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
        let holders = self.users.get(&query.user).map_or(0, |c| c.workers());
        let id = self.next_query;
        self.next_query = self.next_query.wrapping_add(1);
        let mut asked = 0;
        for (worker, outbox) in self.outboxes.iter_mut().enumerate() {
            if holders & (1 << worker) == 0 {
                continue;
            }
            outbox.queue.push_back(ToWorker::QueryUser {
                request: id,
                user: query.user.as_str().into(),
            });
            asked += 1;
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
        if self.link != Link::Up {
            return;
        }
        self.transmit.push_back(LinkFrame::UserConns(UserConns {
            request: pending.request,
            user: pending.user,
            conns: pending.conns,
        }));
    }

    // ---- lookups ------------------------------------------------------------------------------

    /// A room's or user's channel (the broadcast channel has no name and needs no confirmation).
    fn named_channel_mut(&mut self, kind: ChannelKind, name: &str) -> Option<&mut Channel> {
        match kind {
            ChannelKind::Room => self.rooms.get_mut(name).map(|c| &mut **c),
            ChannelKind::User => self.users.get_mut(name).map(|c| &mut **c),
            ChannelKind::All => None,
        }
    }

    fn channel_mut(&mut self, target: &Target) -> Option<&mut Channel> {
        match target {
            Target::Room(name) => self.rooms.get_mut(name).map(|c| &mut **c),
            Target::User(name) => self.users.get_mut(name).map(|c| &mut **c),
            Target::Broadcast => Some(&mut self.broadcast),
        }
    }
}

/// The link target of a room or user channel (or the broadcast).
fn target_of(kind: ChannelKind, name: &str) -> Target {
    match kind {
        ChannelKind::Room => Target::Room(name.to_string()),
        ChannelKind::User => Target::User(name.to_string()),
        ChannelKind::All => Target::Broadcast,
    }
}

/// The union of the workers' sketches of one room.
fn union(per_worker: &[UserSketch]) -> UserSketch {
    let mut all = UserSketch::default();
    for sketch in per_worker {
        all.merge(sketch);
    }
    all
}

/// A worker's full inbox refused a delivery: count the batch and its messages.
fn count_backlog_drop(stats: &mut HubStats, delivery: &Delivery) {
    stats.dropped_worker_backlog += 1;
    for frame in &delivery.frames {
        for (total, n) in stats
            .dropped_worker_backlog_msgs
            .iter_mut()
            .zip(frame.counts)
        {
            *total += u64::from(n);
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
fn full_counts(reported: &HashMap<Box<str>, Vec<u32>>, channels: &Channels) -> Vec<(String, u32)> {
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
    channels: &Channels,
) -> Vec<(String, u32)> {
    changed
        .map(|(name, n)| {
            let present = channels.get(&*name).is_some_and(|c| c.has_members());
            let n = if present { n.max(1) } else { n };
            (name.into_string(), n)
        })
        .collect()
}
