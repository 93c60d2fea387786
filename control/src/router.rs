//! The router: which edges are registered, which of them hold each room and user, every
//! channel's sequence numbers and every room's rate level. It is also the one place publishes
//! are numbered, encoded (once) and queued to edges, so that all edges see one channel's
//! messages in the same order with the same `seq`.
//!
//! All state sits behind one mutex. Lock sections are short and never span an `.await`: the
//! publish path locks once per request, numbers and encodes every message in it, and queues the
//! encoded bytes to the edges' writer tasks (an unbounded channel send) before unlocking —
//! queuing under the lock is what keeps two concurrent requests from reaching an edge in the
//! opposite order of their sequence numbers.
//!
//! Membership comes only from the edges' load reports (PROTOCOL.md §6), so a restarted control
//! plane rebuilds it from the edges' first (full) reports, and their `seqs` continue each
//! channel's numbering.
//!
//! The channels' history ([`crate::history`]) sits under the same lock: a publish appends each
//! message to it right after numbering it, and recoveries read it and queue their answer to the
//! asking edge under the lock too ([`Router::recover_to_edge`]), so an edge sees a recovery's
//! messages exactly before the publishes numbered after them.
//!
//! Rooms' online counts are pushed to the edges holding them ([`Router::push_online`]): a room
//! whose members or users an edge reported is scheduled once, at its previous push plus its
//! level's interval (`--online-interval-ms`), in a heap of due rooms; when it is due its count is
//! pushed only if it differs from the last one pushed, in one `room online` frame per edge with
//! every room due for that edge. Only rooms that changed are ever looked at.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use roomcast_proto::link::{
    self, LinkError, LinkFrame, LoadReport, Publish, Register, RoomCount, RoomOnline,
};
use roomcast_proto::message::{PushMessage, Target};
use roomcast_proto::sketch::UserSketch;
use serde::Serialize;
use slab::Slab;
use tokio::sync::{mpsc, watch, Notify};

use crate::config::Levels;
use crate::history::{
    self, Append, AppendTo, HistoryPage, HistoryStats, HistoryStore, MemoryStore, RecoverCaps,
    RecoverFailure, RecoverOutcome,
};
pub use crate::history::{Epoch, Position, StoredMessage};
use crate::levels::RoomLevel;
use crate::merge::{Amount, MergeRule, MergeStats, Merger, Offer, Release};
use crate::upstream::SendWindow;

/// The control plane's end of one edge link, shared by the router (which queues frames) and the
/// link's writer task (which writes them).
#[derive(Debug)]
pub struct LinkHandle {
    tx: mpsc::UnboundedSender<Bytes>,
    /// Bytes queued and not yet written to the socket; bounds the queue by what matters.
    queued: AtomicUsize,
    closed: watch::Sender<bool>,
    /// Wakes publishers waiting for a backlog to drain ([`Router::wait_for_backlog`]).
    drained: Arc<Notify>,
    soft_limit: usize,
}

impl LinkHandle {
    /// A handle and the queue its writer task drains.
    pub fn new(
        drained: Arc<Notify>,
        soft_limit: usize,
    ) -> (Arc<LinkHandle>, mpsc::UnboundedReceiver<Bytes>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (closed, _) = watch::channel(false);
        let handle = LinkHandle {
            tx,
            queued: AtomicUsize::new(0),
            closed,
            drained,
            soft_limit,
        };
        (Arc::new(handle), rx)
    }

    /// Queues encoded frames for the writer. Returns false when the writer is gone.
    pub fn send(&self, frames: Bytes) -> bool {
        let len = frames.len();
        self.queued.fetch_add(len, Ordering::Relaxed);
        if self.tx.send(frames).is_err() {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Bytes queued and not yet written.
    pub fn backlog(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Called by the writer after writing `n` queued bytes.
    pub fn written(&self, n: usize) {
        let before = self.queued.fetch_sub(n, Ordering::Relaxed);
        if before > self.soft_limit && before - n <= self.soft_limit {
            self.drained.notify_waiters();
        }
    }

    /// Asks the link's tasks to close the connection (the edge will re-dial and re-register).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Resolves (via `changed()` / `borrow()`) once [`LinkHandle::close`] was called.
    pub fn closed(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }
}

/// Identifies one registration of an edge; stale after the edge re-registers or is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeKey {
    slot: usize,
    generation: u64,
}

/// Where a publish goes, borrowed from the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TargetRef<'a> {
    Room(&'a str),
    User(&'a str),
    Broadcast,
}

impl<'a> From<&'a Target> for TargetRef<'a> {
    fn from(target: &'a Target) -> TargetRef<'a> {
        match target {
            Target::Room(id) => TargetRef::Room(id),
            Target::User(id) => TargetRef::User(id),
            Target::Broadcast => TargetRef::Broadcast,
        }
    }
}

/// One validated message to publish. `data` is valid JSON (usually a slice of the request body).
#[derive(Debug, Clone)]
pub struct PublishReq<'a> {
    pub target: TargetRef<'a>,
    pub priority: u8,
    pub kind: &'a str,
    pub data: Bytes,
    /// The viewer who sent it (a client `send` published into its room); a valid id.
    pub from: Option<&'a str>,
    /// It asks viewers for an `ack` (receipts).
    pub ack: bool,
}

/// What a successful publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Published {
    /// The channel's sequence number assigned to the message (for a duplicate, the first
    /// publish's); not serialized for a held message, which has none yet.
    #[serde(skip_serializing_if = "is_held_seq")]
    pub seq: u64,
    /// Edges the message was queued to (0 for a duplicate or a held message).
    pub delivered_edges: u32,
    /// The message's id was already published on this channel within the dedupe window: it was
    /// not published again. Serialized only when true.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    /// The message has a merge rule and waits in its key's merge window: it has no `seq` yet
    /// (`seq` is 0 and not serialized) and is published merged when the window ends.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
}

fn is_held_seq(seq: &u64) -> bool {
    *seq == HELD_SEQ
}

impl Published {
    /// The answer to a message that waits in a merge window.
    pub fn held() -> Published {
        Published {
            seq: HELD_SEQ,
            delivered_edges: 0,
            duplicate: false,
            held: true,
        }
    }

    /// The answer to a repeated id: the first publish's `seq`, or held when the first waits
    /// (or waited) in a merge window.
    fn duplicate_of(seq: u64) -> Published {
        Published {
            seq,
            delivered_edges: 0,
            duplicate: true,
            held: seq == HELD_SEQ,
        }
    }
}

/// Last load figures an edge reported.
#[derive(Debug, Clone, Copy, Default)]
struct EdgeLoad {
    connections: u32,
    bytes_out: u64,
    frames_out: u64,
    msgs_dropped: u64,
    slow_closes: u64,
    /// The edge's highest capacity watermark, thousandths.
    capacity_ratio_permille: u16,
}

struct EdgeState {
    generation: u64,
    register: Register,
    link: Arc<LinkHandle>,
    registered_at: Instant,
    last_report: Option<Instant>,
    load: EdgeLoad,
    /// This edge's share of the global maps, so it can be taken back when the edge goes.
    rooms: HashMap<Box<str>, u32>,
    users: HashMap<Box<str>, u32>,
    /// Publishes not queued to this edge because its link backlog was over the hard limit.
    link_drops: u64,
}

impl EdgeState {
    fn last_heard(&self) -> Instant {
        self.last_report.unwrap_or(self.registered_at)
    }

    /// At its connection limit: new clients would be refused.
    fn at_capacity(&self) -> bool {
        self.load.connections >= self.register.capacity
    }

    /// Above the dispatch watermark: kept serving, but no longer handed out to new clients.
    fn over_watermark(&self, watermark_permille: u16) -> bool {
        self.load.capacity_ratio_permille > watermark_permille
    }

    fn healthy(&self, now: Instant, timeout: Duration) -> bool {
        self.last_report
            .is_some_and(|at| now.saturating_duration_since(at) <= timeout)
    }
}

struct Room {
    /// (edge slot, members there); an edge is listed only while it has members.
    members: Vec<(usize, u32)>,
    /// (edge slot, the distinct users that edge reported here): merged into `users` when the
    /// count is pushed or shown.
    user_sketches: Vec<(usize, UserSketch)>,
    online: u32,
    seq: u64,
    level: RoomLevel,
    /// The room has been at a level other than 1, so edges may hold a non-default pacing for
    /// it: tell every edge it newly appears on, even at level 1.
    leveled: bool,
    /// The `(online, users)` last pushed to the edges; None before the first push and when an
    /// edge the room newly appeared on must get the count even if it did not change.
    pushed: Option<(u32, u32)>,
    pushed_at: Option<Instant>,
    /// When the room's next push is due (its entry in `State::online_due` that counts).
    push_due: Option<Instant>,
    /// Viewers' sends broadcast in the room's current tick (its upstream budget).
    sends: SendWindow,
}

impl Room {
    fn new() -> Room {
        Room {
            members: Vec::new(),
            user_sketches: Vec::new(),
            online: 0,
            seq: 0,
            level: RoomLevel::new(),
            leveled: false,
            pushed: None,
            pushed_at: None,
            push_due: None,
            sends: SendWindow::default(),
        }
    }

    /// Distinct users over every edge: the union of the edges' sketches (a user on two edges
    /// counts once), exact up to 512 users and within about 1.6 % beyond (see
    /// `roomcast_proto::sketch`). Never above `online`, and at least 1 while anyone is online
    /// (an edge's sketch follows its member count by up to a report interval).
    fn users(&self) -> u32 {
        let estimate = match &self.user_sketches[..] {
            [] => 0,
            [(_, only)] => only.estimate(),
            [(_, first), rest @ ..] => {
                let mut all = first.clone();
                for (_, sketch) in rest {
                    all.merge(sketch);
                }
                all.estimate()
            }
        };
        let users = estimate.min(u64::from(self.online)) as u32;
        if self.online > 0 {
            users.max(1)
        } else {
            0
        }
    }

    /// Nothing worth remembering: no members, no numbering, default level never left.
    fn is_dead(&self) -> bool {
        self.members.is_empty() && self.seq == 0 && !self.leveled && self.level.level() == 1
    }
}

#[derive(Default)]
struct User {
    /// (edge slot, connections there).
    edges: Vec<(usize, u32)>,
    seq: u64,
}

/// Sets `slot`'s count in a (slot, count) list; 0 removes it. Returns the list's new total.
fn set_count(list: &mut Vec<(usize, u32)>, slot: usize, n: u32) -> u32 {
    match list.iter().position(|&(s, _)| s == slot) {
        Some(i) if n == 0 => {
            list.swap_remove(i);
        }
        Some(i) => list[i].1 = n,
        None if n > 0 => list.push((slot, n)),
        None => {}
    }
    list.iter().fold(0u32, |sum, &(_, n)| sum.saturating_add(n))
}

struct State {
    edges: Slab<EdgeState>,
    by_id: HashMap<String, usize>,
    rooms: HashMap<Box<str>, Room>,
    /// Rooms whose online count may need a push, by when it is due (a room's entry counts only
    /// while it equals its `push_due`).
    online_due: BinaryHeap<Reverse<(Instant, Box<str>)>>,
    users: HashMap<Box<str>, User>,
    broadcast_seq: u64,
    next_generation: u64,
    /// Every channel's recent messages, epoch and publish ids.
    history: Box<dyn HistoryStore>,
    /// Messages with merge rules waiting in their keys' windows.
    merger: Merger,
}

impl State {
    fn new(history: Box<dyn HistoryStore>, merge_max_bytes: usize) -> State {
        State {
            edges: Slab::new(),
            by_id: HashMap::new(),
            rooms: HashMap::new(),
            online_due: BinaryHeap::new(),
            users: HashMap::new(),
            broadcast_seq: 0,
            next_generation: 0,
            history,
            merger: Merger::new(merge_max_bytes),
        }
    }

    /// The channel's counter, without creating an entry.
    fn last_seq(&self, target: TargetRef<'_>) -> u64 {
        match target {
            TargetRef::Room(name) => self.rooms.get(name).map_or(0, |r| r.seq),
            TargetRef::User(name) => self.users.get(name).map_or(0, |u| u.seq),
            TargetRef::Broadcast => self.broadcast_seq,
        }
    }

    fn position(&mut self, target: TargetRef<'_>, now: Instant) -> Position {
        Position {
            epoch: self.history.epoch(target, now),
            last_seq: self.last_seq(target),
        }
    }

    fn slot_of(&self, key: EdgeKey) -> Option<usize> {
        self.edges
            .get(key.slot)
            .filter(|e| e.generation == key.generation)
            .map(|_| key.slot)
    }

    fn room_mut(&mut self, name: &str) -> &mut Room {
        entry(&mut self.rooms, name, Room::new)
    }

    fn user_mut(&mut self, name: &str) -> &mut User {
        entry(&mut self.users, name, User::default)
    }

    /// Sets `room`'s member count on edge `slot`. Returns true when the room newly appeared on
    /// that edge. The caller refreshes the room's level.
    fn set_room_members(&mut self, slot: usize, room: &str, n: u32) -> bool {
        let edge = &mut self.edges[slot];
        let appeared = if n == 0 {
            if edge.rooms.remove(room).is_none() {
                return false;
            }
            false
        } else if let Some(count) = edge.rooms.get_mut(room) {
            *count = n;
            false
        } else {
            edge.rooms.insert(room.into(), n);
            true
        };
        let entry = self.room_mut(room);
        entry.online = set_count(&mut entry.members, slot, n);
        if n == 0 {
            entry.user_sketches.retain(|&(s, _)| s != slot);
        }
        if appeared {
            // The edge's viewers have no count yet: push it even if it did not change.
            entry.pushed = None;
        }
        appeared
    }

    /// Sets the distinct users edge `slot` reported in `room`; ignored unless the edge holds
    /// members there.
    fn set_room_users(&mut self, slot: usize, room: &str, sketch: UserSketch) {
        let Some(entry) = self.rooms.get_mut(room) else {
            return;
        };
        if !entry.members.iter().any(|&(s, _)| s == slot) {
            return;
        }
        match entry.user_sketches.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, held)) => *held = sketch,
            None => entry.user_sketches.push((slot, sketch)),
        }
    }

    /// The room's count may have changed: schedule its push, unless one is scheduled already or
    /// its level pushes none. Due at once, or one interval after the previous push.
    fn online_changed(&mut self, levels: &Levels, name: &str, now: Instant) {
        let Some(room) = self.rooms.get_mut(name) else {
            return;
        };
        if room.push_due.is_some() {
            return;
        }
        let Some(interval) = levels.online_interval(room.level.level()) else {
            return;
        };
        let due = room.pushed_at.map_or(now, |at| (at + interval).max(now));
        room.push_due = Some(due);
        self.online_due.push(Reverse((due, name.into())));
    }

    fn set_user_conns(&mut self, slot: usize, user: &str, n: u32) {
        let edge = &mut self.edges[slot];
        if n == 0 {
            if edge.users.remove(user).is_none() {
                return;
            }
        } else if let Some(count) = edge.users.get_mut(user) {
            *count = n;
        } else {
            edge.users.insert(user.into(), n);
        }
        let entry = self.user_mut(user);
        set_count(&mut entry.edges, slot, n);
        if entry.edges.is_empty() && entry.seq == 0 {
            self.users.remove(user);
        }
    }
}

/// The entry for `name`, inserted when missing; the key is allocated only then.
fn entry<'a, V>(
    map: &'a mut HashMap<Box<str>, V>,
    name: &str,
    new: impl FnOnce() -> V,
) -> &'a mut V {
    if !map.contains_key(name) {
        map.insert(name.into(), new());
    }
    map.get_mut(name).expect("inserted above")
}

/// Encodes one link frame into its own buffer.
fn encode_frame(frame: &LinkFrame) -> Option<Bytes> {
    let mut out = BytesMut::new();
    match link::encode(frame, &mut out) {
        Ok(()) => Some(out.freeze()),
        Err(error) => {
            tracing::error!(%error, "cannot encode a link frame");
            None
        }
    }
}

/// Recomputes one room's level from its online count; pushes a change to every edge holding the
/// room, or the current level to an edge the room just appeared on. Returns false when the room
/// entry can be forgotten.
fn refresh_level(
    levels: &Levels,
    edges: &Slab<EdgeState>,
    name: &str,
    room: &mut Room,
    now: Instant,
    appeared_on: Option<usize>,
) -> bool {
    let tell: Vec<usize> = match room.level.update(room.online, now, &levels.policy) {
        Some(level) => {
            room.leveled = true;
            LEVEL_CHANGES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(
                room = name,
                level,
                online = room.online,
                dwell_ms = room.level.current_dwell().as_millis() as u64,
                "room level changed"
            );
            room.members.iter().map(|&(slot, _)| slot).collect()
        }
        None => appeared_on
            .filter(|_| room.leveled || room.level.level() != 1 || !levels.level1_is_edge_default())
            .into_iter()
            .collect(),
    };
    if !tell.is_empty() {
        let frame = LinkFrame::SetLevel(levels.set_level(name, room.level.level()));
        if let Some(bytes) = encode_frame(&frame) {
            for slot in tell {
                if let Some(edge) = edges.get(slot) {
                    edge.link.send(bytes.clone());
                }
            }
        }
    }
    !room.is_dead()
}

/// Room level changes since the process started (for `/metrics`).
pub static LEVEL_CHANGES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// What [`Router::room`] shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoomView {
    pub room: String,
    /// Members summed over every edge.
    pub online: u32,
    /// Distinct users among them (see [`Router::push_online`] and `roomcast_proto::sketch`).
    pub users: u32,
    pub level: u8,
    pub tick_ms: u32,
    /// The last sequence number assigned in this room (0 = never published).
    pub last_seq: u64,
    /// The epoch naming this room's numbering (changes when the history is lost, e.g. on a
    /// control plane restart).
    pub epoch: Epoch,
    pub edges: Vec<RoomEdgeView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoomEdgeView {
    pub edge_id: String,
    pub members: u32,
}

/// What [`Router::edges`] shows per edge.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EdgeView {
    pub edge_id: String,
    pub ws_url: String,
    pub tcp_addr: String,
    pub workers: u16,
    pub capacity: u32,
    pub connections: u32,
    pub bytes_out: u64,
    pub frames_out: u64,
    pub msgs_dropped: u64,
    pub slow_closes: u64,
    /// The edge is at its connection limit (connections ≥ capacity).
    pub full: bool,
    /// Bytes queued on the link to this edge, not yet written.
    pub link_backlog_bytes: usize,
    /// Publishes not sent to this edge because that backlog was over its limit.
    pub link_drops: u64,
    /// Milliseconds since the last load report (null before the first).
    pub last_report_ms_ago: Option<u64>,
    pub healthy: bool,
    /// The edge's highest capacity watermark (its `roomcast_capacity_ratio_max`, 1.0 = full).
    pub capacity_ratio: f64,
    /// The dispatcher hands this edge out: healthy, not full, and at or below the watermark.
    pub dispatchable: bool,
}

/// A healthy edge that can take clients, for the dispatcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub ws_url: String,
    pub tcp_addr: String,
    /// Capacity minus connections.
    pub spare: u32,
}

/// An edge to ask in a user query.
#[derive(Debug, Clone)]
pub struct QueryTarget {
    pub edge_id: String,
    pub link: Arc<LinkHandle>,
}

/// The router; shared (`Arc`) by the link server, the API and the periodic tasks.
pub struct Router {
    state: Mutex<State>,
    levels: Levels,
    report_timeout: Duration,
    /// Link backlog above which publishers wait a little ([`Router::wait_for_backlog`]).
    backlog_soft: usize,
    /// Link backlog above which publishes to that edge are dropped.
    backlog_hard: usize,
    drained: Arc<Notify>,
    /// Edges whose capacity ratio is above this (thousandths) are not dispatched.
    dispatch_watermark_permille: u16,
    /// Publish frames queued to edge links (one per message per edge it went to).
    fanout_messages: std::sync::atomic::AtomicU64,
    /// Recoveries by result: recovered, then [`RecoverFailure`] in [`RECOVER_RESULTS`] order.
    recoveries: [std::sync::atomic::AtomicU64; 5],
    /// Rooms' online counts queued to edges (one per room per edge), and the `room online`
    /// frames that carried them.
    online_pushes: std::sync::atomic::AtomicU64,
    online_frames: std::sync::atomic::AtomicU64,
    /// Notified when a publish opened a merge window (the flusher may need to wake earlier).
    merges_waiting: Notify,
}

/// Most rooms in one `room online` frame: 65,536 counts of the longest room id are 9 MB, well
/// within a link frame (16 MiB). More rooms due at once for one edge go in several frames.
const MAX_ROOMS_PER_ONLINE_FRAME: usize = 1 << 16;

/// Recovery results as `/metrics` labels them, in [`Router::recoveries`] order.
pub const RECOVER_RESULTS: [&str; 5] = [
    "recovered",
    "epoch_changed",
    "too_old",
    "too_many",
    "not_stored",
];

fn recover_result_index(result: &Result<Vec<StoredMessage>, RecoverFailure>) -> usize {
    match result {
        Ok(_) => 0,
        Err(RecoverFailure::EpochChanged) => 1,
        Err(RecoverFailure::TooOld) => 2,
        Err(RecoverFailure::TooMany) => 3,
        Err(RecoverFailure::NotStored) => 4,
    }
}

/// Longest a publisher waits for a congested link before publishing anyway.
const BACKLOG_WAIT: Duration = Duration::from_secs(1);

impl Router {
    /// `backlog_hard` bounds each edge link's queue; publishers start waiting at an eighth of it.
    /// The history is a new in-memory store configured by `levels.history`, with a random seed:
    /// every channel gets a new epoch.
    pub fn new(levels: Levels, report_timeout: Duration, backlog_hard: usize) -> Router {
        let store = MemoryStore::new(levels.history.clone(), rand::random(), Instant::now());
        Router {
            state: Mutex::new(State::new(Box::new(store), levels.merge_max_bytes)),
            levels,
            report_timeout,
            backlog_soft: backlog_hard / 8,
            backlog_hard,
            drained: Arc::new(Notify::new()),
            dispatch_watermark_permille: 850,
            fanout_messages: std::sync::atomic::AtomicU64::new(0),
            recoveries: Default::default(),
            online_pushes: std::sync::atomic::AtomicU64::new(0),
            online_frames: std::sync::atomic::AtomicU64::new(0),
            merges_waiting: Notify::new(),
        }
    }

    /// Replaces the history store (before use: whatever the old one held is dropped).
    pub fn with_history_store(self, store: Box<dyn HistoryStore>) -> Router {
        self.lock().history = store;
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic under the lock leaves consistent-enough maps; keep serving.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A link handle whose backlog this router watches.
    pub fn new_link(&self) -> (Arc<LinkHandle>, mpsc::UnboundedReceiver<Bytes>) {
        LinkHandle::new(Arc::clone(&self.drained), self.backlog_soft)
    }

    /// Stops dispatching an edge whose capacity ratio is above `watermark` (0.85 = 85 %).
    pub fn with_dispatch_watermark(mut self, watermark: f64) -> Router {
        self.dispatch_watermark_permille = (watermark * 1000.0).round().clamp(0.0, 65535.0) as u16;
        self
    }

    fn dispatchable(&self, e: &EdgeState, now: Instant) -> bool {
        e.healthy(now, self.report_timeout)
            && !e.at_capacity()
            && !e.over_watermark(self.dispatch_watermark_permille)
    }

    pub fn report_timeout(&self) -> Duration {
        self.report_timeout
    }

    /// Registers an edge. An edge already registered under the same id is replaced: its
    /// memberships are withdrawn and its old link closed.
    pub fn add_edge(&self, register: Register, link: Arc<LinkHandle>, now: Instant) -> EdgeKey {
        let mut state = self.lock();
        if let Some(&old) = state.by_id.get(&register.edge_id) {
            tracing::info!(edge_id = %register.edge_id, "edge re-registered; replacing the old link");
            self.remove_slot(&mut state, old, now);
        }
        let generation = state.next_generation;
        state.next_generation += 1;
        let edge_id = register.edge_id.clone();
        let slot = state.edges.insert(EdgeState {
            generation,
            register,
            link,
            registered_at: now,
            last_report: None,
            load: EdgeLoad::default(),
            rooms: HashMap::new(),
            users: HashMap::new(),
            link_drops: 0,
        });
        state.by_id.insert(edge_id, slot);
        EdgeKey { slot, generation }
    }

    /// Drops an edge (its link closed). Returns false when `key` was already stale.
    pub fn remove_edge(&self, key: EdgeKey, now: Instant) -> bool {
        let mut state = self.lock();
        match state.slot_of(key) {
            Some(slot) => {
                self.remove_slot(&mut state, slot, now);
                true
            }
            None => false,
        }
    }

    fn remove_slot(&self, state: &mut State, slot: usize, now: Instant) {
        let rooms: Vec<Box<str>> = state.edges[slot].rooms.keys().cloned().collect();
        for room in rooms {
            state.set_room_members(slot, &room, 0);
            self.refresh_room(state, &room, now, None);
            state.online_changed(&self.levels, &room, now);
        }
        let users: Vec<Box<str>> = state.edges[slot].users.keys().cloned().collect();
        for user in users {
            state.set_user_conns(slot, &user, 0);
        }
        let edge = state.edges.remove(slot);
        edge.link.close();
        if state.by_id.get(&edge.register.edge_id) == Some(&slot) {
            state.by_id.remove(&edge.register.edge_id);
        }
        tracing::info!(edge_id = %edge.register.edge_id, "edge removed from routing");
    }

    fn refresh_room(
        &self,
        state: &mut State,
        name: &str,
        now: Instant,
        appeared_on: Option<usize>,
    ) {
        let State { rooms, edges, .. } = state;
        let Some(room) = rooms.get_mut(name) else {
            return;
        };
        if !refresh_level(&self.levels, edges, name, room, now, appeared_on) {
            rooms.remove(name);
        }
    }

    /// Applies a load report. A full report replaces the edge's rooms and users; an incremental
    /// one applies the listed changes (0 = gone). Sequence numbers only ever rise. Returns false
    /// when `key` is stale (the link should close).
    pub fn apply_report(&self, key: EdgeKey, report: LoadReport, now: Instant) -> bool {
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(slot) = state.slot_of(key) else {
            return false;
        };
        let edge = &mut state.edges[slot];
        edge.last_report = Some(now);
        edge.load = EdgeLoad {
            connections: report.connections,
            bytes_out: report.bytes_out,
            frames_out: report.frames_out,
            msgs_dropped: report.msgs_dropped,
            slow_closes: report.slow_closes,
            capacity_ratio_permille: report.capacity_ratio_permille,
        };
        if report.full {
            let listed: HashSet<&str> = report.rooms.iter().map(|(r, _)| r.as_str()).collect();
            let gone: Vec<Box<str>> = edge
                .rooms
                .keys()
                .filter(|r| !listed.contains(&***r))
                .cloned()
                .collect();
            let listed_users: HashSet<&str> =
                report.users.iter().map(|(u, _)| u.as_str()).collect();
            let gone_users: Vec<Box<str>> = edge
                .users
                .keys()
                .filter(|u| !listed_users.contains(&***u))
                .cloned()
                .collect();
            for room in gone {
                state.set_room_members(slot, &room, 0);
                self.refresh_room(state, &room, now, None);
                state.online_changed(&self.levels, &room, now);
            }
            for user in gone_users {
                state.set_user_conns(slot, &user, 0);
            }
        }
        for (room, members) in &report.rooms {
            let appeared = state.set_room_members(slot, room, *members);
            self.refresh_room(state, room, now, appeared.then_some(slot));
            state.online_changed(&self.levels, room, now);
        }
        for (room, sketch) in report.room_users {
            state.set_room_users(slot, &room, sketch);
            state.online_changed(&self.levels, &room, now);
        }
        for (user, conns) in &report.users {
            state.set_user_conns(slot, user, *conns);
        }
        for (target, seq) in &report.seqs {
            let counter = match target {
                Target::Room(room) => &mut state.room_mut(room).seq,
                Target::User(user) => &mut state.user_mut(user).seq,
                Target::Broadcast => &mut state.broadcast_seq,
            };
            *counter = (*counter).max(*seq);
        }
        true
    }

    /// Drops edges that missed reports for the report timeout; returns their ids.
    pub fn sweep(&self, now: Instant) -> Vec<String> {
        let mut state = self.lock();
        self.drop_silent_edges(&mut state, now)
    }

    /// The sweep itself, also run under the publish lock so routing never uses an edge that
    /// dispatch and `/v1/edges` already show as unhealthy.
    fn drop_silent_edges(&self, state: &mut State, now: Instant) -> Vec<String> {
        let stale: Vec<usize> = state
            .edges
            .iter()
            .filter(|(_, e)| now.saturating_duration_since(e.last_heard()) > self.report_timeout)
            .map(|(slot, _)| slot)
            .collect();
        let mut ids = Vec::with_capacity(stale.len());
        for slot in stale {
            let id = state.edges[slot].register.edge_id.clone();
            tracing::warn!(edge_id = %id, timeout_ms = self.report_timeout.as_millis() as u64,
                "edge missed its load reports; dropping it");
            self.remove_slot(state, slot, now);
            ids.push(id);
        }
        ids
    }

    /// Re-evaluates every room's level (lowering needs time to pass, not just new counts), and
    /// drops the history that time expired.
    pub fn tick_levels(&self, now: Instant) {
        let mut guard = self.lock();
        let State {
            rooms,
            edges,
            history,
            ..
        } = &mut *guard;
        rooms.retain(|name, room| refresh_level(&self.levels, edges, name, room, now, None));
        history.expire(now);
    }

    /// Numbers, encodes and queues `reqs` in order, under one lock. Each message is encoded once;
    /// each target edge gets slices of the same buffer (consecutive messages for the same edge
    /// coalesced into one slice). A room publish goes to the edges holding members of the room,
    /// a user publish to the edges holding the user, a broadcast to every edge; with none, the
    /// message still gets its `seq` and `delivered_edges` is 0. Each numbered message is
    /// appended to the history once.
    pub fn publish(&self, reqs: &[PublishReq<'_>]) -> Vec<Result<Published, LinkError>> {
        self.publish_ids(reqs, &[])
    }

    /// [`Router::publish`] with idempotency ids: `ids[i]` (when present and `Some`) is the id of
    /// `reqs[i]`. A message whose id was published on the same channel within the dedupe window
    /// (including earlier in `reqs`) is not published again: its result is the first publish's
    /// `seq` with `duplicate: true` and no edge.
    pub fn publish_ids(
        &self,
        reqs: &[PublishReq<'_>],
        ids: &[Option<&str>],
    ) -> Vec<Result<Published, LinkError>> {
        self.publish_merged(reqs, ids, &[])
    }

    /// [`Router::publish_ids`] with merge rules: `merges[i]` (when present and `Some`) is the
    /// rule of `reqs[i]`. Such a message goes through its key's merge window ([`Merger`]): it is
    /// published at once (opening the window, or as a `final`, after the key's waiting message)
    /// or waits in the window (`held: true`, no `seq`), to be published merged when the window
    /// ends ([`Router::flush_merges`]). Everything published is numbered in order, so merged
    /// messages take one `seq` each and leave no gap.
    pub fn publish_merged(
        &self,
        reqs: &[PublishReq<'_>],
        ids: &[Option<&str>],
        merges: &[Option<MergeReq<'_>>],
    ) -> Vec<Result<Published, LinkError>> {
        let mut results: Vec<Option<Result<Published, LinkError>>> = vec![None; reqs.len()];
        // Repeats of an id earlier in `reqs`: (repeat, first); answered once the first is.
        let mut repeats: Vec<(usize, usize)> = Vec::new();
        let mut firsts: HashMap<(TargetRef<'_>, &str), usize> = HashMap::new();
        let mut items: Vec<Item> = Vec::with_capacity(reqs.len());

        let mut guard = self.lock();
        let now = Instant::now();
        self.drop_silent_edges(&mut guard, now);
        let state = &mut *guard;
        let next_merge = state.merger.next_deadline();
        for (i, req) in reqs.iter().enumerate() {
            let id = ids.get(i).copied().flatten();
            if let Some(id) = id {
                if let Some(&first) = firsts.get(&(req.target, id)) {
                    state.history.count_repeat();
                    repeats.push((i, first));
                    continue;
                }
                if let Some(seq) = state.history.seen(req.target, id, now) {
                    results[i] = Some(Ok(Published::duplicate_of(seq)));
                    continue;
                }
                firsts.insert((req.target, id), i);
            }
            let Some(merge) = merges.get(i).and_then(Option::as_ref) else {
                items.push(Item::Request(i));
                continue;
            };
            let tick = self.merge_tick(state, req.target);
            let target = to_target(req.target);
            let offer = Offer {
                priority: req.priority,
                kind: req.kind.to_owned(),
                data: req.data.clone(),
                amounts: merge.amounts.clone(),
            };
            let offered = state.merger.offer(&target, merge.rule, offer, tick, now);
            // Released before it: its key's waiting message (of a window that has ended).
            let answers = (!offered.held).then_some(i);
            let last = offered.released.len().saturating_sub(1);
            items.extend(
                offered
                    .released
                    .into_iter()
                    .enumerate()
                    .map(|(k, r)| Item::Released(r, answers.filter(|_| k == last))),
            );
            if offered.held {
                if let Some(id) = id {
                    state.history.remember(req.target, id, HELD_SEQ, now);
                }
                results[i] = Some(Ok(Published::held()));
            }
        }
        let sooner = match (state.merger.next_deadline(), next_merge) {
            (Some(now_next), Some(before)) => now_next < before,
            (next, _) => next.is_some(),
        };
        if sooner {
            self.merges_waiting.notify_one();
        }
        let bytes = reqs
            .iter()
            .map(|r| 32 + r.data.len() + r.kind.len() + target_id(r.target).len())
            .sum();
        let mut round = PublishRound::new(items.len(), bytes);
        for item in &items {
            let (answers, result) = match item {
                Item::Request(i) => {
                    let req = &reqs[*i];
                    let msg = Numbered::of_request(req);
                    (Some(*i), round.publish(self, state, req.target, msg))
                }
                Item::Released(release, answers) => {
                    let msg = Numbered::of_release(release);
                    let result = round.publish(self, state, TargetRef::from(&release.target), msg);
                    if let (Err(error), None) = (&result, answers) {
                        tracing::warn!(%error, "a merged message could not be encoded; dropped");
                    }
                    (*answers, result)
                }
            };
            if let Some(i) = answers {
                if let (Ok(published), Some(id)) = (&result, ids.get(i).copied().flatten()) {
                    state
                        .history
                        .remember(reqs[i].target, id, published.seq, now);
                }
                results[i] = Some(result);
            }
        }
        round.finish(self, state, now);
        for (repeat, first) in repeats {
            results[repeat] = Some(match &results[first] {
                Some(Ok(first)) if first.held => Ok(Published::duplicate_of(HELD_SEQ)),
                Some(Ok(first)) => Ok(Published::duplicate_of(first.seq)),
                Some(Err(error)) => Err(error.clone()),
                None => unreachable!("every first occurrence is answered"),
            });
        }
        results
            .into_iter()
            .map(|r| r.expect("every message is answered"))
            .collect()
    }

    /// Whether a viewer's send may be broadcast into `room` now: within the room's level's
    /// budget of sends per tick (`--send-budgets`), which it then counts.
    pub fn admit_send(&self, room: &str, now: Instant) -> bool {
        let mut guard = self.lock();
        let room = entry(&mut guard.rooms, room, Room::new);
        let level = room.level.level();
        let tick = Duration::from_millis(u64::from(self.levels.tick_ms(level)));
        room.sends.admit(self.levels.send_budget(level), tick, now)
    }

    /// Publishes the merged messages whose windows ended by `now`; returns how many.
    pub fn flush_merges(&self, now: Instant) -> usize {
        let mut guard = self.lock();
        let state = &mut *guard;
        let released = state.merger.due(now);
        self.publish_released(state, &released);
        released.len()
    }

    /// Numbers and queues what the merger released.
    fn publish_released(&self, state: &mut State, released: &[Release]) {
        if released.is_empty() {
            return;
        }
        let bytes = released
            .iter()
            .map(|r| 32 + r.data.len() + r.kind.len() + r.target.id().len())
            .sum();
        let mut round = PublishRound::new(released.len(), bytes);
        for release in released {
            let msg = Numbered::of_release(release);
            let target = TargetRef::from(&release.target);
            if let Err(error) = round.publish(self, state, target, msg) {
                tracing::warn!(%error, "a merged message could not be encoded; dropped");
            }
        }
        round.finish(self, state, Instant::now());
    }

    /// Publishes every message waiting in a merge window now (at shutdown, so that nothing
    /// accepted is lost); returns how many.
    pub fn flush_all_merges(&self) -> usize {
        let mut guard = self.lock();
        let state = &mut *guard;
        let released = state.merger.drain();
        self.publish_released(state, &released);
        released.len()
    }

    /// When [`Router::flush_merges`] next has work, and a notification for when that may have
    /// become earlier.
    pub fn next_merge(&self) -> Option<Instant> {
        self.lock().merger.next_deadline()
    }

    /// Wakes the merge flusher after a publish opened a merge window.
    pub fn merges_waiting(&self) -> &Notify {
        &self.merges_waiting
    }

    /// The merger's counters, and its open windows and waiting bytes.
    pub fn merge_stats(&self) -> (MergeStats, usize, usize) {
        let state = self.lock();
        let (keys, bytes) = state.merger.held();
        (state.merger.stats(), keys, bytes)
    }

    /// The window of a merge key without its own interval: the channel's tick (a room's at its
    /// level; users and broadcast at level 1).
    fn merge_tick(&self, state: &State, target: TargetRef<'_>) -> Duration {
        let level = match target {
            TargetRef::Room(name) => state.rooms.get(name).map_or(1, |r| r.level.level()),
            TargetRef::User(_) | TargetRef::Broadcast => 1,
        };
        Duration::from_millis(u64::from(self.levels.tick_ms(level)))
    }

    /// Pushes the online count of every room due by `now` whose `(online, users)` changed since
    /// its last push: one `room online` frame per edge, holding every such room the edge has
    /// members in. A room is due once its count may have changed (an edge reported it) and its
    /// level's interval has passed since its previous push (`--online-interval-ms`; a level
    /// with 0 pushes none). The due rooms are taken from a heap under the lock; the frames are
    /// encoded and queued after it. An edge whose link backlog is over its limit misses the
    /// counts (the next change brings newer ones). Returns the rooms pushed.
    pub fn push_online(&self, now: Instant) -> usize {
        let mut per_edge: HashMap<usize, Vec<RoomCount>> = HashMap::new();
        let mut pushed = 0;
        let links: Vec<(Arc<LinkHandle>, Vec<RoomCount>)> = {
            let mut guard = self.lock();
            let State {
                rooms,
                edges,
                online_due,
                ..
            } = &mut *guard;
            while let Some(Reverse((at, _))) = online_due.peek() {
                if *at > now {
                    break;
                }
                let Some(Reverse((at, name))) = online_due.pop() else {
                    break;
                };
                let Some(room) = rooms.get_mut(&name).filter(|r| r.push_due == Some(at)) else {
                    continue; // stale: the room was forgotten (and maybe made anew) since
                };
                room.push_due = None;
                if self.levels.online_interval(room.level.level()).is_none() {
                    continue;
                }
                let values = (room.online, room.users());
                if room.members.is_empty() || room.pushed == Some(values) {
                    continue;
                }
                room.pushed = Some(values);
                room.pushed_at = Some(now);
                pushed += 1;
                // Most rooms are on one edge: the popped name becomes its count's, uncopied.
                let mut name = Some(String::from(name));
                for (i, &(slot, _)) in room.members.iter().enumerate() {
                    let room_name = if i + 1 == room.members.len() {
                        name.take().unwrap_or_default()
                    } else {
                        name.clone().unwrap_or_default()
                    };
                    per_edge.entry(slot).or_default().push(RoomCount {
                        room: room_name,
                        online: values.0,
                        users: values.1,
                    });
                }
            }
            per_edge
                .into_iter()
                .filter_map(|(slot, counts)| {
                    let edge = edges.get(slot)?;
                    (edge.link.backlog() <= self.backlog_hard)
                        .then(|| (Arc::clone(&edge.link), counts))
                })
                .collect()
        };
        for (link, mut counts) in links {
            while !counts.is_empty() {
                let rest = counts.split_off(counts.len().min(MAX_ROOMS_PER_ONLINE_FRAME));
                let sent = counts.len() as u64;
                let frame = LinkFrame::RoomOnline(RoomOnline { rooms: counts });
                if let Some(bytes) = encode_frame(&frame) {
                    link.send(bytes);
                    self.online_pushes
                        .fetch_add(sent, std::sync::atomic::Ordering::Relaxed);
                    self.online_frames
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                counts = rest;
            }
        }
        pushed
    }

    /// How often [`Router::push_online`] should run: a quarter of the shortest push interval
    /// (so a push is at most that late), between 25 and 250 ms; None when no level pushes.
    pub fn online_tick(&self) -> Option<Duration> {
        (1..=crate::config::LEVELS as u8)
            .filter_map(|level| self.levels.online_interval(level))
            .min()
            .map(|shortest| {
                (shortest / 4).clamp(Duration::from_millis(25), Duration::from_millis(250))
            })
    }

    /// Rooms' online counts queued to edges since start (one per room per edge), and the
    /// `room online` frames that carried them (for `/metrics`).
    pub fn online_pushes(&self) -> (u64, u64) {
        (
            self.online_pushes
                .load(std::sync::atomic::Ordering::Relaxed),
            self.online_frames
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Waits (up to a second) while any edge's link backlog is above the soft limit, so a
    /// publisher outrunning an edge is slowed down instead of losing messages at the hard limit.
    pub async fn wait_for_backlog(&self) {
        let deadline = tokio::time::Instant::now() + BACKLOG_WAIT;
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            // Registered before checking, so a drain between the check and the wait is not lost.
            notified.as_mut().enable();
            let congested = self
                .lock()
                .edges
                .iter()
                .any(|(_, e)| e.link.backlog() > self.backlog_soft);
            if !congested {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    /// A room's online count, level, position and edges. Unknown rooms show as empty at level 1.
    pub fn room(&self, name: &str) -> RoomView {
        let mut state = self.lock();
        let epoch = state.history.epoch(TargetRef::Room(name), Instant::now());
        let Some(room) = state.rooms.get(name) else {
            return RoomView {
                room: name.to_owned(),
                online: 0,
                users: 0,
                level: 1,
                tick_ms: self.levels.tick_ms(1),
                last_seq: 0,
                epoch,
                edges: Vec::new(),
            };
        };
        let level = room.level.level();
        let mut edges: Vec<RoomEdgeView> = room
            .members
            .iter()
            .map(|&(slot, members)| RoomEdgeView {
                edge_id: state.edges[slot].register.edge_id.clone(),
                members,
            })
            .collect();
        edges.sort_by(|a, b| a.edge_id.cmp(&b.edge_id));
        RoomView {
            room: name.to_owned(),
            online: room.online,
            users: room.users(),
            level,
            tick_ms: self.levels.tick_ms(level),
            last_seq: room.seq,
            epoch,
            edges,
        }
    }

    /// Where a channel stands: its epoch (created with the channel's history state when the
    /// store has none) and last `seq`.
    pub fn position(&self, target: TargetRef<'_>) -> Position {
        self.lock().position(target, Instant::now())
    }

    /// What a client resuming `target` from `(since_epoch, since_seq)` missed, all or nothing
    /// ([`history::recover`]: epoch, then the count cap, then any message gone, then any not
    /// stored, then the byte cap). Consistent with the numbering: taken under the publish lock.
    pub fn recover(
        &self,
        target: TargetRef<'_>,
        since_epoch: &str,
        since_seq: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> RecoverOutcome {
        let caps = RecoverCaps {
            max_messages: max_count,
            max_bytes,
        };
        self.recover_locked(&mut self.lock(), target, (since_epoch, since_seq), caps)
    }

    fn recover_locked(
        &self,
        state: &mut State,
        target: TargetRef<'_>,
        since: (&str, u64),
        caps: RecoverCaps,
    ) -> RecoverOutcome {
        let last_seq = state.last_seq(target);
        let outcome = history::recover(
            &mut *state.history,
            target,
            last_seq,
            since,
            caps,
            Instant::now(),
        );
        self.recoveries[recover_result_index(&outcome.result)]
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        outcome
    }

    /// Recovers `target` for a client of edge `key` (caps `--recover-max-messages` and
    /// `--recover-max-bytes`) and queues `encode`'s bytes on that edge's link, all under the
    /// publish lock: the edge receives the answer after every publish numbered up to the
    /// outcome's `last_seq` and before any later one. `encode` runs under the lock, so it must
    /// only encode; returning `None` queues nothing. The answer is queued even when the link's
    /// backlog is over its limit (it answers a request the edge is waiting on). Returns false
    /// when `key` is stale (the edge re-registered or left) or its link's writer is gone.
    pub fn recover_to_edge(
        &self,
        key: EdgeKey,
        target: TargetRef<'_>,
        since_epoch: &str,
        since_seq: u64,
        encode: impl FnOnce(&RecoverOutcome) -> Option<Bytes>,
    ) -> bool {
        let mut guard = self.lock();
        let Some(slot) = guard.slot_of(key) else {
            return false;
        };
        let caps = RecoverCaps {
            max_messages: self.levels.history.recover_max_messages,
            max_bytes: self.levels.history.recover_max_bytes,
        };
        let outcome = self.recover_locked(&mut guard, target, (since_epoch, since_seq), caps);
        match encode(&outcome) {
            Some(bytes) => guard.edges[slot].link.send(bytes),
            None => true,
        }
    }

    /// The positions of `targets` for edge `key` (for join and auth replies), queued on that
    /// edge's link as `encode` makes them, under the publish lock (so each position's
    /// `last_seq` is exactly the last publish queued to the edge before the answer). Same
    /// contract as [`Router::recover_to_edge`].
    pub fn positions_to_edge(
        &self,
        key: EdgeKey,
        targets: &[Target],
        encode: impl FnOnce(&[(Target, Position)]) -> Option<Bytes>,
    ) -> bool {
        let mut guard = self.lock();
        let Some(slot) = guard.slot_of(key) else {
            return false;
        };
        let now = Instant::now();
        let positions: Vec<(Target, Position)> = targets
            .iter()
            .map(|t| (t.clone(), guard.position(t.into(), now)))
            .collect();
        match encode(&positions) {
            Some(bytes) => guard.edges[slot].link.send(bytes),
            None => true,
        }
    }

    /// Up to `limit` stored messages of `target` after `since_seq`, with the channel's position
    /// and whether every message numbered in the page's span is in it
    /// ([`history::history_page`]).
    pub fn history(&self, target: TargetRef<'_>, since_seq: u64, limit: usize) -> HistoryPage {
        let mut state = self.lock();
        let last_seq = state.last_seq(target);
        history::history_page(
            &mut *state.history,
            target,
            last_seq,
            since_seq,
            limit,
            Instant::now(),
        )
    }

    /// Whether message `seq` of `user`'s channel may be acknowledged: `Some(true)` when it is
    /// stored and asked for an ack, `Some(false)` when it was never published or is stored
    /// without asking, `None` when it is no longer stored (nothing says it did not ask).
    pub fn ackable(&self, user: &str, seq: u64) -> Option<bool> {
        let target = TargetRef::User(user);
        let page = self.history(target, seq.saturating_sub(1), 1);
        if seq == 0 || seq > page.position.last_seq {
            return Some(false);
        }
        match page.msgs.first() {
            Some(msg) if msg.seq == seq => Some(msg.ack),
            _ => None,
        }
    }

    /// The history's sizes and counters (for `/metrics`).
    pub fn history_stats(&self) -> HistoryStats {
        self.lock().history.stats()
    }

    /// Recoveries since start, by result in [`RECOVER_RESULTS`] order.
    pub fn recoveries(&self) -> [u64; 5] {
        std::array::from_fn(|i| self.recoveries[i].load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Every registered edge with its last reported load, sorted by id.
    pub fn edges(&self, now: Instant) -> Vec<EdgeView> {
        let state = self.lock();
        let mut views: Vec<EdgeView> = state
            .edges
            .iter()
            .map(|(_, e)| EdgeView {
                edge_id: e.register.edge_id.clone(),
                ws_url: ws_url(&e.register.ws_addr),
                tcp_addr: e.register.tcp_addr.clone(),
                workers: e.register.workers,
                capacity: e.register.capacity,
                connections: e.load.connections,
                bytes_out: e.load.bytes_out,
                frames_out: e.load.frames_out,
                msgs_dropped: e.load.msgs_dropped,
                slow_closes: e.load.slow_closes,
                full: e.at_capacity(),
                link_backlog_bytes: e.link.backlog(),
                link_drops: e.link_drops,
                last_report_ms_ago: e
                    .last_report
                    .map(|at| now.saturating_duration_since(at).as_millis() as u64),
                healthy: e.healthy(now, self.report_timeout),
                capacity_ratio: f64::from(e.load.capacity_ratio_permille) / 1000.0,
                dispatchable: self.dispatchable(e, now),
            })
            .collect();
        views.sort_by(|a, b| a.edge_id.cmp(&b.edge_id));
        views
    }

    /// Healthy edges with room for more clients.
    pub fn dispatch_candidates(&self, now: Instant) -> Vec<Candidate> {
        let state = self.lock();
        state
            .edges
            .iter()
            .filter(|(_, e)| self.dispatchable(e, now))
            .map(|(_, e)| Candidate {
                ws_url: ws_url(&e.register.ws_addr),
                tcp_addr: e.register.tcp_addr.clone(),
                spare: e.register.capacity.saturating_sub(e.load.connections),
            })
            .collect()
    }

    /// Every registered edge, for a user query. All of them are asked, not only those whose
    /// last report lists the user: reports lag by up to a report interval, and a lookup should
    /// find a connection opened a moment ago.
    pub fn query_targets(&self) -> Vec<QueryTarget> {
        let state = self.lock();
        let mut targets: Vec<QueryTarget> = state
            .edges
            .iter()
            .map(|(_, e)| QueryTarget {
                edge_id: e.register.edge_id.clone(),
                link: Arc::clone(&e.link),
            })
            .collect();
        targets.sort_by(|a, b| a.edge_id.cmp(&b.edge_id));
        targets
    }

    /// Number of registered edges.
    /// Publish frames queued to edge links since start.
    pub fn fanout_messages(&self) -> u64 {
        self.fanout_messages
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn edge_count(&self) -> usize {
        self.lock().edges.len()
    }
}

/// The WebSocket URL clients dial for an edge's advertised `host:port`.
fn ws_url(ws_addr: &str) -> String {
    format!("ws://{ws_addr}/ws")
}

fn target_id<'a>(target: TargetRef<'a>) -> &'a str {
    match target {
        TargetRef::Room(id) | TargetRef::User(id) => id,
        TargetRef::Broadcast => "",
    }
}

/// Points the scratch frame's target at `target`, reusing its string when the kind matches.
fn set_target(slot: &mut Target, target: TargetRef<'_>) {
    match (slot, target) {
        (Target::Room(s), TargetRef::Room(id)) | (Target::User(s), TargetRef::User(id)) => {
            s.clear();
            s.push_str(id);
        }
        (Target::Broadcast, TargetRef::Broadcast) => {}
        (slot, TargetRef::Room(id)) => *slot = Target::Room(id.to_owned()),
        (slot, TargetRef::User(id)) => *slot = Target::User(id.to_owned()),
        (slot, TargetRef::Broadcast) => *slot = Target::Broadcast,
    }
}

enum Members<'a> {
    List(&'a [(usize, u32)]),
    All,
}

/// One edge's share of a publish request: byte ranges of the encoded buffer.
/// The `seq` a dedupe entry remembers for a message that waits in a merge window: it has none
/// yet (real ones start at 1).
const HELD_SEQ: u64 = 0;

/// A message's merge rule, with the amounts of a `sum` rule's fields in its `data`.
#[derive(Debug, Clone)]
pub struct MergeReq<'a> {
    pub rule: &'a MergeRule,
    pub amounts: Vec<Amount>,
}

/// What a publish call numbers, in order.
enum Item {
    /// `reqs[i]`, published as it is.
    Request(usize),
    /// A message the merger released, and the request it answers (None for a key's waiting
    /// message, whose requests were answered `held`).
    Released(Release, Option<usize>),
}

/// A message about to be numbered, borrowed from a request or a release.
struct Numbered<'a> {
    priority: u8,
    kind: &'a str,
    data: &'a Bytes,
    merged: u32,
    is_final: bool,
    from: Option<&'a str>,
    ack: bool,
}

impl<'a> Numbered<'a> {
    fn of_request(req: &'a PublishReq<'a>) -> Numbered<'a> {
        Numbered {
            priority: req.priority,
            kind: req.kind,
            data: &req.data,
            merged: 0,
            is_final: false,
            from: req.from,
            ack: req.ack,
        }
    }

    fn of_release(release: &'a Release) -> Numbered<'a> {
        Numbered {
            priority: release.priority,
            kind: &release.kind,
            data: &release.data,
            merged: release.merged,
            is_final: release.is_final,
            from: None,
            ack: false,
        }
    }
}

/// The messages of one publish call under the lock: numbered, encoded once into one buffer,
/// routed as slices of it per edge, and appended to the history at the end.
struct PublishRound<'a> {
    out: BytesMut,
    /// One scratch frame reused for every message: its strings keep their allocations.
    frame: LinkFrame,
    batches: Vec<EdgeBatch>,
    /// Counted once per call: an atomic add per message would wait for every store the loop
    /// made to drain.
    fanout: u64,
    numbered: Vec<AppendTo<'a>>,
}

impl<'a> PublishRound<'a> {
    fn new(messages: usize, bytes: usize) -> PublishRound<'a> {
        PublishRound {
            out: BytesMut::with_capacity(bytes),
            frame: LinkFrame::Publish(Publish {
                target: Target::Broadcast,
                msg: PushMessage::new(0, 0, String::with_capacity(64), Bytes::new()),
            }),
            batches: Vec::new(),
            fanout: 0,
            numbered: Vec::with_capacity(messages),
        }
    }

    /// Numbers, encodes and routes one message.
    fn publish(
        &mut self,
        router: &Router,
        state: &mut State,
        target: TargetRef<'a>,
        msg: Numbered<'a>,
    ) -> Result<Published, LinkError> {
        let State {
            edges,
            rooms,
            users,
            broadcast_seq,
            ..
        } = state;
        let (counter, members, level) = match target {
            TargetRef::Room(name) => {
                let room = entry(rooms, name, Room::new);
                let level = room.level.level();
                (&mut room.seq, Members::List(&room.members), level)
            }
            TargetRef::User(name) => {
                // A user never seen gets an entry on first publish: its numbering must
                // continue even while it has no connection.
                let user = entry(users, name, User::default);
                (&mut user.seq, Members::List(&user.edges), 1)
            }
            TargetRef::Broadcast => (&mut *broadcast_seq, Members::All, 1),
        };
        let seq = *counter + 1;
        let LinkFrame::Publish(publish) = &mut self.frame else {
            unreachable!("the scratch frame is a publish")
        };
        set_target(&mut publish.target, target);
        publish.msg.seq = seq;
        publish.msg.priority = msg.priority;
        publish.msg.kind.clear();
        publish.msg.kind.push_str(msg.kind);
        publish.msg.data = msg.data.clone();
        publish.msg.merged = msg.merged;
        publish.msg.is_final = msg.is_final;
        publish.msg.from = msg.from.map(Box::from);
        publish.msg.ack = msg.ack;
        let start = self.out.len();
        link::encode(&self.frame, &mut self.out)?;
        *counter = seq;
        self.numbered.push(AppendTo {
            channel: target,
            level,
            msg: Append {
                seq,
                priority: msg.priority,
                kind: msg.kind,
                data: msg.data,
                merged: msg.merged,
                is_final: msg.is_final,
                from: msg.from,
                ack: msg.ack,
            },
        });
        let range = start..self.out.len();
        let mut delivered = 0;
        let batches = &mut self.batches;
        let mut route = |slot: usize, edge: &EdgeState| {
            if batches.len() <= slot {
                batches.resize_with(slot + 1, EdgeBatch::default);
            }
            let batch = &mut batches[slot];
            let open = *batch
                .open
                .get_or_insert_with(|| edge.link.backlog() <= router.backlog_hard);
            if open {
                batch.push(range.clone());
                delivered += 1;
            } else {
                batch.dropped += 1;
            }
        };
        match members {
            Members::List(list) => {
                for &(slot, _) in list {
                    route(slot, &edges[slot]);
                }
            }
            Members::All => {
                for (slot, edge) in edges.iter() {
                    route(slot, edge);
                }
            }
        }
        self.fanout += u64::from(delivered);
        Ok(Published {
            seq,
            delivered_edges: delivered,
            duplicate: false,
            held: false,
        })
    }

    /// Queues each edge's slices and appends the numbered messages to the history.
    fn finish(self, router: &Router, state: &mut State, now: Instant) {
        router
            .fanout_messages
            .fetch_add(self.fanout, std::sync::atomic::Ordering::Relaxed);
        let frames = self.out.freeze();
        for (slot, batch) in self.batches.into_iter().enumerate() {
            let Some(edge) = state.edges.get_mut(slot) else {
                continue;
            };
            for range in batch.ranges {
                edge.link.send(frames.slice(range));
            }
            if batch.dropped > 0 {
                edge.link_drops += batch.dropped;
                tracing::warn!(
                    edge_id = %edge.register.edge_id,
                    dropped = batch.dropped,
                    backlog = edge.link.backlog(),
                    "edge link backlog over its limit; publishes to it dropped"
                );
            }
        }
        // Into the history after the loop: its copies land in memory not touched for minutes,
        // and apart from the loop's atomics (the scratch frame's `Bytes` clones) those stores
        // overlap instead of each waiting in turn.
        state.history.append_all(&self.numbered, now);
    }
}

fn to_target(target: TargetRef<'_>) -> Target {
    match target {
        TargetRef::Room(id) => Target::Room(id.to_owned()),
        TargetRef::User(id) => Target::User(id.to_owned()),
        TargetRef::Broadcast => Target::Broadcast,
    }
}

#[derive(Default)]
struct EdgeBatch {
    ranges: Vec<Range<usize>>,
    /// Whether the edge's link accepts this request (decided once, on first use).
    open: Option<bool>,
    dropped: u64,
}

impl EdgeBatch {
    /// Appends a frame's range, merging it with the previous one when they touch.
    fn push(&mut self, range: Range<usize>) {
        match self.ranges.last_mut() {
            Some(last) if last.end == range.start => last.end = range.end,
            _ => self.ranges.push(range),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use roomcast_proto::link::{SetLevel, UNLIMITED};

    pub(crate) fn register(id: &str, capacity: u32) -> Register {
        Register {
            edge_id: id.into(),
            ws_addr: format!("127.0.0.1:{}", 8000 + id.len()),
            tcp_addr: format!("127.0.0.1:{}", 9000 + id.len()),
            admin_addr: String::new(),
            workers: 2,
            capacity,
        }
    }

    pub(crate) fn report(full: bool, rooms: &[(&str, u32)], users: &[(&str, u32)]) -> LoadReport {
        LoadReport {
            connections: 0,
            bytes_out: 0,
            frames_out: 0,
            msgs_dropped: 0,
            slow_closes: 0,
            full,
            rooms: rooms.iter().map(|&(r, n)| (r.to_owned(), n)).collect(),
            users: users.iter().map(|&(u, n)| (u.to_owned(), n)).collect(),
            seqs: Vec::new(),
            capacity_ratio_permille: 0,
            room_users: Vec::new(),
        }
    }

    /// An edge registered exactly as the link server registers one, with the receiving end of
    /// its link queue in place of a socket.
    pub(crate) struct FakeEdge {
        pub key: EdgeKey,
        pub rx: mpsc::UnboundedReceiver<Bytes>,
        pub link: Arc<LinkHandle>,
    }

    impl FakeEdge {
        pub(crate) fn register(router: &Router, id: &str, capacity: u32) -> FakeEdge {
            let (link, rx) = router.new_link();
            let key = router.add_edge(register(id, capacity), Arc::clone(&link), Instant::now());
            FakeEdge { key, rx, link }
        }

        /// Every frame queued to this edge so far, decoded with the engine's codec.
        pub(crate) fn frames(&mut self) -> Vec<LinkFrame> {
            let mut buf = BytesMut::new();
            while let Ok(bytes) = self.rx.try_recv() {
                self.link.written(bytes.len());
                buf.extend_from_slice(&bytes);
            }
            let mut frames = Vec::new();
            while let Some(frame) = link::decode(&mut buf).expect("valid link frames") {
                frames.push(frame);
            }
            assert!(buf.is_empty(), "a partial frame was queued");
            frames
        }

        pub(crate) fn publishes(&mut self) -> Vec<(Target, u64)> {
            self.frames()
                .into_iter()
                .filter_map(|f| match f {
                    LinkFrame::Publish(p) => Some((p.target, p.msg.seq)),
                    _ => None,
                })
                .collect()
        }
    }

    pub(crate) fn router() -> Router {
        Router::new(Levels::default(), Duration::from_secs(3), 64 << 20)
    }

    fn req(target: TargetRef<'_>) -> PublishReq<'_> {
        PublishReq {
            target,
            priority: 2,
            kind: "gift",
            data: Bytes::from_static(br#"{"n":1}"#),
            from: None,
            ack: false,
        }
    }

    fn publish_one(router: &Router, target: TargetRef<'_>) -> Published {
        router.publish(&[req(target)]).remove(0).unwrap()
    }

    #[test]
    fn room_publish_goes_only_to_member_edges() {
        let r = router();
        let mut e1 = FakeEdge::register(&r, "e1", 100);
        let mut e2 = FakeEdge::register(&r, "e2", 100);
        let mut e3 = FakeEdge::register(&r, "e3", 100);
        let now = Instant::now();
        assert!(r.apply_report(e1.key, report(true, &[("r1", 3)], &[]), now));
        assert!(r.apply_report(e2.key, report(true, &[("r1", 2), ("r2", 1)], &[]), now));
        assert!(r.apply_report(e3.key, report(true, &[("r2", 5)], &[]), now));

        let out = publish_one(&r, TargetRef::Room("r1"));
        assert_eq!(
            out,
            Published {
                seq: 1,
                delivered_edges: 2,
                duplicate: false,
                held: false,
            }
        );
        assert_eq!(e1.publishes(), vec![(Target::Room("r1".into()), 1)]);
        assert_eq!(e2.publishes(), vec![(Target::Room("r1".into()), 1)]);
        assert!(
            e3.publishes().is_empty(),
            "an edge without members got the publish"
        );

        let view = r.room("r1");
        assert_eq!(view.online, 5);
        assert_eq!(view.last_seq, 1);
        assert_eq!(
            view.edges
                .iter()
                .map(|e| (e.edge_id.as_str(), e.members))
                .collect::<Vec<_>>(),
            vec![("e1", 3), ("e2", 2)]
        );
    }

    #[test]
    fn publish_without_members_still_gets_a_seq() {
        let r = router();
        let mut e1 = FakeEdge::register(&r, "e1", 100);
        assert_eq!(
            publish_one(&r, TargetRef::Room("empty")),
            Published {
                seq: 1,
                delivered_edges: 0,
                duplicate: false,
                held: false,
            }
        );
        assert_eq!(
            publish_one(&r, TargetRef::Room("empty")),
            Published {
                seq: 2,
                delivered_edges: 0,
                duplicate: false,
                held: false,
            }
        );
        assert_eq!(
            publish_one(&r, TargetRef::User("nobody")),
            Published {
                seq: 1,
                delivered_edges: 0,
                duplicate: false,
                held: false,
            }
        );
        assert!(e1.publishes().is_empty());
        assert_eq!(r.room("empty").last_seq, 2);
    }

    #[test]
    fn user_publish_reaches_every_edge_holding_the_user_and_broadcast_reaches_all() {
        let r = router();
        let mut e1 = FakeEdge::register(&r, "e1", 100);
        let mut e2 = FakeEdge::register(&r, "e2", 100);
        let now = Instant::now();
        r.apply_report(e1.key, report(true, &[], &[("u1", 1)]), now);
        r.apply_report(e2.key, report(true, &[], &[("u1", 2), ("u2", 1)]), now);
        assert_eq!(publish_one(&r, TargetRef::User("u1")).delivered_edges, 2);
        assert_eq!(
            publish_one(&r, TargetRef::User("u2")),
            Published {
                seq: 1,
                delivered_edges: 1,
                duplicate: false,
                held: false,
            }
        );
        assert_eq!(
            publish_one(&r, TargetRef::Broadcast),
            Published {
                seq: 1,
                delivered_edges: 2,
                duplicate: false,
                held: false,
            }
        );
        assert_eq!(
            e1.publishes(),
            vec![(Target::User("u1".into()), 1), (Target::Broadcast, 1)]
        );
        assert_eq!(
            e2.publishes(),
            vec![
                (Target::User("u1".into()), 1),
                (Target::User("u2".into()), 1),
                (Target::Broadcast, 1)
            ]
        );
    }

    #[test]
    fn sequences_are_per_channel_and_consecutive_within_a_batch() {
        let r = router();
        let mut e1 = FakeEdge::register(&r, "e1", 100);
        r.apply_report(
            e1.key,
            report(true, &[("a", 1), ("b", 1)], &[("u", 1)]),
            Instant::now(),
        );
        let reqs = [
            req(TargetRef::Room("a")),
            req(TargetRef::Room("b")),
            req(TargetRef::Room("a")),
            req(TargetRef::User("u")),
            req(TargetRef::Room("a")),
            req(TargetRef::Broadcast),
        ];
        let seqs: Vec<u64> = r
            .publish(&reqs)
            .into_iter()
            .map(|o| o.unwrap().seq)
            .collect();
        assert_eq!(seqs, vec![1, 1, 2, 1, 3, 1]);
        let got = e1.publishes();
        assert_eq!(got.len(), 6, "each message queued once, in order");
        assert_eq!(got[4], (Target::Room("a".into()), 3));
    }

    #[test]
    fn consecutive_messages_for_an_edge_share_one_buffer_slice() {
        let r = router();
        let mut e1 = FakeEdge::register(&r, "e1", 100);
        let mut e2 = FakeEdge::register(&r, "e2", 100);
        let now = Instant::now();
        r.apply_report(e1.key, report(true, &[("a", 1), ("b", 1)], &[]), now);
        r.apply_report(e2.key, report(true, &[("b", 1)], &[]), now);
        let reqs: Vec<PublishReq<'_>> = (0..10)
            .map(|i| req(TargetRef::Room(if i == 5 { "b" } else { "a" })))
            .collect();
        r.publish(&reqs);
        // e1 gets every message: one contiguous slice. e2 gets just the one for b.
        let mut chunks = 0;
        while e1.rx.try_recv().is_ok() {
            chunks += 1;
        }
        assert_eq!(chunks, 1);
        assert_eq!(e2.publishes(), vec![(Target::Room("b".into()), 1)]);
    }

    #[test]
    fn full_reports_replace_and_incremental_reports_apply_changes() {
        let r = router();
        let e1 = FakeEdge::register(&r, "e1", 100);
        let now = Instant::now();
        r.apply_report(
            e1.key,
            report(true, &[("a", 2), ("b", 4)], &[("u1", 1)]),
            now,
        );
        assert_eq!(r.room("a").online, 2);
        assert_eq!(r.room("b").online, 4);
        // Incremental: a changes, b leaves (0), c appears; u1 leaves.
        r.apply_report(
            e1.key,
            report(false, &[("a", 7), ("b", 0), ("c", 1)], &[("u1", 0)]),
            now,
        );
        assert_eq!(r.room("a").online, 7);
        assert_eq!(r.room("b").online, 0);
        assert!(r.room("b").edges.is_empty());
        assert_eq!(r.room("c").online, 1);
        assert_eq!(publish_one(&r, TargetRef::User("u1")).delivered_edges, 0);
        // Full: only what is listed remains.
        r.apply_report(e1.key, report(true, &[("c", 3)], &[]), now);
        assert_eq!(r.room("a").online, 0);
        assert_eq!(r.room("c").online, 3);
        assert_eq!(publish_one(&r, TargetRef::Room("a")).delivered_edges, 0);
        assert_eq!(publish_one(&r, TargetRef::Room("c")).delivered_edges, 1);
    }

    #[test]
    fn sequence_numbers_resume_from_reported_seqs() {
        let r = router();
        let e1 = FakeEdge::register(&r, "e1", 100);
        let mut full = report(true, &[("a", 1)], &[]);
        full.seqs = vec![
            (Target::Room("a".into()), 41),
            (Target::User("u1".into()), 6),
            (Target::Broadcast, 2),
        ];
        r.apply_report(e1.key, full, Instant::now());
        assert_eq!(publish_one(&r, TargetRef::Room("a")).seq, 42);
        assert_eq!(publish_one(&r, TargetRef::User("u1")).seq, 7);
        assert_eq!(publish_one(&r, TargetRef::Broadcast).seq, 3);
        // A lower reported seq never moves a counter back.
        let mut older = report(true, &[("a", 1)], &[]);
        older.seqs = vec![(Target::Room("a".into()), 10)];
        r.apply_report(e1.key, older, Instant::now());
        assert_eq!(publish_one(&r, TargetRef::Room("a")).seq, 43);
    }

    #[test]
    fn dropped_and_replaced_edges_leave_routing() {
        let r = router();
        let e1 = FakeEdge::register(&r, "e1", 100);
        let e2 = FakeEdge::register(&r, "e2", 100);
        let now = Instant::now();
        r.apply_report(e1.key, report(true, &[("a", 1)], &[]), now);
        r.apply_report(e2.key, report(true, &[("a", 1)], &[]), now);
        assert_eq!(r.room("a").online, 2);

        assert!(r.remove_edge(e1.key, now));
        assert!(!r.remove_edge(e1.key, now), "second removal is a no-op");
        assert!(*e1.link.closed().borrow(), "removal closes the link");
        assert_eq!(r.room("a").online, 1);
        assert_eq!(publish_one(&r, TargetRef::Room("a")).delivered_edges, 1);

        // e2 re-registers: the old registration's state is gone and its key is stale.
        let e2b = FakeEdge::register(&r, "e2", 100);
        assert!(*e2.link.closed().borrow());
        assert_eq!(r.room("a").online, 0);
        assert!(!r.apply_report(e2.key, report(true, &[("a", 1)], &[]), now));
        assert!(r.apply_report(e2b.key, report(true, &[("a", 9)], &[]), now));
        assert_eq!(r.room("a").online, 9);
        assert_eq!(r.edge_count(), 1);
    }

    #[test]
    fn sweep_drops_edges_that_stop_reporting() {
        let r = router();
        let e1 = FakeEdge::register(&r, "e1", 100);
        let e2 = FakeEdge::register(&r, "e2", 100);
        let t0 = Instant::now();
        r.apply_report(e1.key, report(true, &[("a", 1)], &[]), t0);
        r.apply_report(e2.key, report(true, &[("a", 1)], &[]), t0);
        r.apply_report(e2.key, report(false, &[], &[]), t0 + Duration::from_secs(2));
        assert!(r.sweep(t0 + Duration::from_secs(3)).is_empty());
        assert_eq!(
            r.sweep(t0 + Duration::from_millis(3_500)),
            vec!["e1".to_string()]
        );
        assert_eq!(r.room("a").online, 1);
        assert_eq!(
            r.dispatch_candidates(t0 + Duration::from_millis(3_500))
                .len(),
            1
        );
    }

    fn set_levels(edge: &mut FakeEdge) -> Vec<SetLevel> {
        edge.frames()
            .into_iter()
            .filter_map(|f| match f {
                LinkFrame::SetLevel(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn level_changes_reach_the_edges_holding_the_room() {
        let r = router();
        let mut e1 = FakeEdge::register(&r, "e1", 100_000);
        let mut e2 = FakeEdge::register(&r, "e2", 100_000);
        let t0 = Instant::now();
        r.apply_report(e1.key, report(true, &[("big", 600)], &[]), t0);
        r.apply_report(e2.key, report(true, &[("big", 300)], &[]), t0);
        assert!(
            set_levels(&mut e1).is_empty(),
            "level 1 is the edges' default"
        );
        assert_eq!(r.room("big").level, 1);

        // 600 + 500 = 1100 ≥ 1000: level 2 at once, sent to both edges.
        r.apply_report(
            e2.key,
            report(false, &[("big", 500)], &[]),
            t0 + Duration::from_secs(1),
        );
        let expected = SetLevel {
            room: "big".into(),
            level: 2,
            tick_ms: 250,
            budgets: [UNLIMITED, 200, 100, 50],
        };
        assert_eq!(set_levels(&mut e1), vec![expected.clone()]);
        assert_eq!(set_levels(&mut e2), vec![expected.clone()]);
        let view = r.room("big");
        assert_eq!((view.online, view.level, view.tick_ms), (1_100, 2, 250));

        // A third edge the room appears on gets the current level.
        let mut e3 = FakeEdge::register(&r, "e3", 100_000);
        r.apply_report(
            e3.key,
            report(true, &[("big", 1)], &[]),
            t0 + Duration::from_secs(2),
        );
        assert_eq!(set_levels(&mut e3), vec![expected]);
        assert!(set_levels(&mut e1).is_empty());

        // Down below the margin (900): only after the dwell (10 s), driven by the level tick.
        r.apply_report(
            e2.key,
            report(false, &[("big", 0)], &[]),
            t0 + Duration::from_secs(3),
        );
        r.tick_levels(t0 + Duration::from_secs(8));
        assert_eq!(r.room("big").level, 2);
        r.tick_levels(t0 + Duration::from_secs(14));
        assert_eq!(r.room("big").level, 1);
        let back = set_levels(&mut e1);
        assert_eq!(back.len(), 1);
        assert_eq!(
            (back[0].level, back[0].tick_ms, back[0].budgets),
            (1, 100, [UNLIMITED; 4])
        );
        assert!(
            set_levels(&mut e2).is_empty(),
            "e2 no longer holds the room"
        );

        // Once a room has been leveled, an edge it appears on is told even level 1, since it
        // may remember an older level.
        r.apply_report(
            e2.key,
            report(false, &[("big", 1)], &[]),
            t0 + Duration::from_secs(15),
        );
        assert_eq!(
            set_levels(&mut e2)
                .iter()
                .map(|s| s.level)
                .collect::<Vec<_>>(),
            vec![1]
        );
    }

    #[test]
    fn level_one_pacing_other_than_the_edges_default_is_told_when_a_room_appears() {
        let config = crate::config::ControlConfig::load_from([
            "roomcast-control",
            "--level1-budgets",
            "1,2,3",
        ])
        .expect("valid");
        let r = Router::new(config.levels().unwrap(), Duration::from_secs(3), 64 << 20);
        let mut e1 = FakeEdge::register(&r, "e1", 100);
        r.apply_report(e1.key, report(true, &[("small", 1)], &[]), Instant::now());
        let told = set_levels(&mut e1);
        assert_eq!(told.len(), 1, "{told:?}");
        assert_eq!((told[0].level, told[0].budgets), (1, [UNLIMITED, 1, 2, 3]));
        // With the defaults a level-1 room goes untold (the edge's own pacing is the same).
        let r = router();
        let mut e1 = FakeEdge::register(&r, "e1", 100);
        r.apply_report(e1.key, report(true, &[("small", 1)], &[]), Instant::now());
        assert!(set_levels(&mut e1).is_empty());
    }

    fn gift<'a>(target: TargetRef<'a>, priority: u8, data: &'static str) -> PublishReq<'a> {
        PublishReq {
            target,
            priority,
            kind: "gift",
            data: Bytes::from_static(data.as_bytes()),
            from: None,
            ack: false,
        }
    }

    /// Everything queued to the edge, in order: raw chunks, publishes split into their frames.
    enum Queued {
        Publish(u64),
        Marker(Bytes),
    }

    const MARKER: &[u8] = b"\xffmarker";

    fn queued(edge: &mut FakeEdge) -> Vec<Queued> {
        let mut out = Vec::new();
        while let Ok(chunk) = edge.rx.try_recv() {
            edge.link.written(chunk.len());
            if chunk.starts_with(MARKER) {
                out.push(Queued::Marker(chunk));
                continue;
            }
            let mut buf = BytesMut::from(&chunk[..]);
            while let Some(frame) = link::decode(&mut buf).expect("valid link frames") {
                match frame {
                    LinkFrame::Publish(p) => out.push(Queued::Publish(p.msg.seq)),
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert!(buf.is_empty());
        }
        out
    }

    fn marker(last_seq: u64) -> Bytes {
        let mut b = BytesMut::from(MARKER);
        b.extend_from_slice(&last_seq.to_be_bytes());
        b.freeze()
    }

    fn marker_seq(bytes: &Bytes) -> u64 {
        u64::from_be_bytes(bytes[MARKER.len()..].try_into().unwrap())
    }

    #[test]
    fn recovery_is_queued_between_the_publishes_around_it() {
        let r = router();
        let mut e1 = FakeEdge::register(&r, "e1", 100);
        r.apply_report(e1.key, report(true, &[("r1", 1)], &[]), Instant::now());
        let room = TargetRef::Room("r1");
        for _ in 0..5 {
            publish_one(&r, room);
        }
        let epoch = r.position(room).epoch;
        let mut seen = None;
        let queued_it = r.recover_to_edge(e1.key, room, epoch.as_str(), 2, |outcome| {
            seen = Some(outcome.clone());
            Some(marker(outcome.position.last_seq))
        });
        assert!(queued_it);
        publish_one(&r, room);
        let outcome = seen.expect("encode was called");
        assert_eq!(outcome.position, Position { epoch, last_seq: 5 });
        let msgs = outcome.result.unwrap();
        assert_eq!(
            msgs.iter().map(|m| m.seq).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        assert_eq!(
            (msgs[0].kind(), &msgs[0].data()[..]),
            ("gift", &br#"{"n":1}"#[..])
        );
        let order: Vec<String> = queued(&mut e1)
            .into_iter()
            .map(|q| match q {
                Queued::Publish(seq) => format!("p{seq}"),
                Queued::Marker(b) => format!("recovered to {}", marker_seq(&b)),
            })
            .collect();
        assert_eq!(
            order,
            ["p1", "p2", "p3", "p4", "p5", "recovered to 5", "p6"],
        );

        // A stale key: nothing computed, nothing queued.
        let e1b = FakeEdge::register(&r, "e1", 100);
        assert!(!r.recover_to_edge(e1.key, room, epoch.as_str(), 2, |_| panic!("called")));
        assert!(!r.positions_to_edge(e1.key, &[], |_| panic!("called")));
        // Encoding nothing queues nothing.
        assert!(r.recover_to_edge(e1b.key, room, "", 0, |_| None));
    }

    #[test]
    fn recovery_while_publishing_never_overlaps_or_misses_a_live_message() {
        let r = Arc::new(router());
        let mut e1 = FakeEdge::register(&r, "e1", 100);
        r.apply_report(e1.key, report(true, &[("r1", 1)], &[]), Instant::now());
        let room = TargetRef::Room("r1");
        let epoch = r.position(room).epoch;
        let publisher = {
            let r = Arc::clone(&r);
            std::thread::spawn(move || {
                for _ in 0..3_000 {
                    r.publish(&[gift(TargetRef::Room("r1"), 2, "{}")]);
                }
            })
        };
        let key = e1.key;
        let mut since = 0;
        let mut recovered = 0;
        for _ in 0..300 {
            r.recover_to_edge(key, room, epoch.as_str(), since, |outcome| {
                let last = outcome.position.last_seq;
                if let Ok(msgs) = &outcome.result {
                    let seqs: Vec<u64> = msgs.iter().map(|m| m.seq).collect();
                    assert_eq!(seqs, (since + 1..=last).collect::<Vec<_>>());
                    recovered += 1;
                } else {
                    assert_eq!(outcome.result, Err(RecoverFailure::TooMany));
                }
                since = last;
                Some(marker(last))
            });
            std::thread::yield_now();
        }
        publisher.join().unwrap();
        assert!(recovered > 0);
        // Every answer sits exactly after the publishes up to its last_seq.
        let mut publishes = 0;
        for q in queued(&mut e1) {
            match q {
                Queued::Publish(seq) => {
                    publishes += 1;
                    assert_eq!(seq, publishes, "publishes in order, no gap");
                }
                Queued::Marker(b) => assert_eq!(marker_seq(&b), publishes),
            }
        }
        assert_eq!(publishes, 3_000);
    }

    #[test]
    fn positions_are_queued_in_order_with_publishes() {
        let r = router();
        let mut e1 = FakeEdge::register(&r, "e1", 100);
        r.apply_report(
            e1.key,
            report(true, &[("r1", 1)], &[("u1", 1)]),
            Instant::now(),
        );
        publish_one(&r, TargetRef::Room("r1"));
        publish_one(&r, TargetRef::Room("r1"));
        publish_one(&r, TargetRef::User("u1"));
        let targets = [
            Target::Room("r1".into()),
            Target::User("u1".into()),
            Target::Room("quiet".into()),
            Target::Broadcast,
        ];
        let mut seen = Vec::new();
        assert!(r.positions_to_edge(e1.key, &targets, |positions| {
            seen = positions.to_vec();
            Some(marker(positions.len() as u64))
        }));
        publish_one(&r, TargetRef::Room("r1"));
        let got: Vec<(Target, u64)> = seen.iter().map(|(t, p)| (t.clone(), p.last_seq)).collect();
        assert_eq!(
            got,
            vec![
                (Target::Room("r1".into()), 2),
                (Target::User("u1".into()), 1),
                (Target::Room("quiet".into()), 0),
                (Target::Broadcast, 0)
            ]
        );
        assert_eq!(seen[0].1.epoch, r.position(TargetRef::Room("r1")).epoch);
        assert_eq!(seen[2].1.epoch, r.position(TargetRef::Room("quiet")).epoch);
        let kinds: Vec<String> = queued(&mut e1)
            .into_iter()
            .map(|q| match q {
                Queued::Publish(seq) => format!("p{seq}"),
                Queued::Marker(_) => "positions".into(),
            })
            .collect();
        assert_eq!(kinds, ["p1", "p2", "p1", "positions", "p3"]);
    }

    fn latest_rule(key: &str, interval_ms: Option<u64>, is_final: bool) -> MergeRule {
        MergeRule {
            key: key.into(),
            op: crate::merge::MergeOp::Latest,
            interval: interval_ms.map(Duration::from_millis),
            is_final,
        }
    }

    /// Each publish edge `e` received: (seq, data, merged, final).
    fn merged_publishes(e: &mut FakeEdge) -> Vec<(u64, String, u32, bool)> {
        e.frames()
            .into_iter()
            .filter_map(|f| match f {
                LinkFrame::Publish(p) => Some((
                    p.msg.seq,
                    String::from_utf8(p.msg.data.to_vec()).unwrap(),
                    p.msg.merged,
                    p.msg.is_final,
                )),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn merged_messages_are_numbered_in_order_with_no_gap_and_a_final_follows_its_waiting_value() {
        let r = router();
        let mut e1 = FakeEdge::register(&r, "e1", 100);
        r.apply_report(e1.key, report(true, &[("r1", 1)], &[]), Instant::now());
        let room = TargetRef::Room("r1");
        let pk = latest_rule("pk:7", Some(60_000), false);
        let fin = latest_rule("pk:7", None, true);
        let merge = |rule| {
            Some(MergeReq {
                rule,
                amounts: Vec::new(),
            })
        };
        let one = |data, rule| {
            r.publish_merged(&[gift(room, 1, data)], &[], &[merge(rule)])
                .remove(0)
                .unwrap()
        };
        assert_eq!(one("1", &pk).seq, 1, "a key's first message goes at once");
        assert_eq!(one("2", &pk), Published::held());
        assert_eq!(one("3", &pk), Published::held());
        // A message without a rule is numbered next: held ones took no seq.
        assert_eq!(r.publish(&[gift(room, 1, "4")]).remove(0).unwrap().seq, 2);
        let last = one("5", &fin);
        assert_eq!(
            (last.seq, last.held),
            (4, false),
            "the final after the waiting value"
        );
        assert_eq!(r.flush_merges(Instant::now() + Duration::from_secs(120)), 0);
        assert_eq!(
            merged_publishes(&mut e1),
            [
                (1, "1".into(), 1, false),
                (2, "4".into(), 0, false),
                (3, "3".into(), 2, false),
                (4, "5".into(), 1, true),
            ]
        );
        // The history keeps them as published, merge marks included.
        let page = r.history(room, 0, 10);
        let stored: Vec<(u64, u32, bool)> = page
            .msgs
            .iter()
            .map(|m| (m.seq, m.merged, m.is_final))
            .collect();
        assert_eq!(
            stored,
            [(1, 1, false), (2, 0, false), (3, 2, false), (4, 1, true)]
        );
        assert!(page.complete);
        assert_eq!(
            serde_json::to_string(&Published::held()).unwrap(),
            r#"{"delivered_edges":0,"held":true}"#
        );
    }

    #[test]
    fn a_window_without_its_own_interval_ends_at_the_rooms_tick_and_sums_what_waited() {
        let r = router();
        let mut e1 = FakeEdge::register(&r, "e1", 100);
        r.apply_report(e1.key, report(true, &[("r1", 1)], &[]), Instant::now());
        let room = TargetRef::Room("r1");
        let rule = MergeRule {
            key: "like".into(),
            op: crate::merge::MergeOp::Sum(vec!["count".into()]),
            interval: None,
            is_final: false,
        };
        let t0 = Instant::now();
        let datas = [
            r#"{"count":1}"#,
            r#"{"count":2}"#,
            r#"{"count":3}"#,
            r#"{"count":4}"#,
        ];
        let reqs: Vec<PublishReq<'_>> = datas.iter().map(|d| gift(room, 2, d)).collect();
        let merges: Vec<Option<MergeReq<'_>>> = datas
            .iter()
            .map(|d| {
                Some(MergeReq {
                    rule: &rule,
                    amounts: crate::merge::sum_amounts(d, &["count".to_string()]).unwrap(),
                })
            })
            .collect();
        let out = r.publish_merged(&reqs, &[], &merges);
        assert_eq!(out[0].as_ref().unwrap().seq, 1);
        assert!(out[1..].iter().all(|o| o.as_ref().unwrap().held));
        let tick = Duration::from_millis(u64::from(Levels::default().tick_ms(1)));
        let deadline = r.next_merge().expect("a window is open");
        assert!(deadline >= t0 + tick && deadline <= Instant::now() + tick);
        assert_eq!(r.flush_merges(deadline - Duration::from_millis(1)), 0);
        assert_eq!(r.flush_merges(deadline), 1);
        assert_eq!(
            merged_publishes(&mut e1),
            [
                (1, r#"{"count":1}"#.into(), 1, false),
                (2, r#"{"count":9}"#.into(), 3, false)
            ]
        );
        // The next window closes with nothing waiting: the key is forgotten.
        let next = r.next_merge().expect("the next window");
        assert_eq!(r.flush_merges(next), 0);
        assert_eq!(r.next_merge(), None);
        let (stats, keys, bytes) = r.merge_stats();
        assert_eq!((stats.merged, keys, bytes), (3, 0, 0));
    }

    #[test]
    fn a_repeated_id_of_a_held_message_is_a_duplicate_and_held() {
        let r = router();
        let _e1 = FakeEdge::register(&r, "e1", 100);
        let room = TargetRef::Room("r1");
        let rule = latest_rule("k", Some(60_000), false);
        let merge = Some(MergeReq {
            rule: &rule,
            amounts: Vec::new(),
        });
        let reqs = [gift(room, 1, "1"), gift(room, 1, "2"), gift(room, 1, "2")];
        let out: Vec<Published> = r
            .publish_merged(
                &reqs,
                &[Some("a"), Some("b"), Some("b")],
                &[merge.clone(), merge.clone(), merge.clone()],
            )
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(out[0].seq, 1);
        assert_eq!(out[1], Published::held());
        assert_eq!(out[2], Published::duplicate_of(HELD_SEQ));
        // A retry later: still a duplicate, for the published one with its seq.
        let again = r.publish_merged(&reqs[..2], &[Some("a"), Some("b")], &[merge.clone(), merge]);
        assert_eq!(again[0].as_ref().unwrap(), &Published::duplicate_of(1));
        assert!(again[1].as_ref().unwrap().held && again[1].as_ref().unwrap().duplicate);
        assert_eq!(
            r.merge_stats().0.merged,
            1,
            "the repeats were not merged in"
        );
    }

    #[test]
    fn publishes_are_stored_once_and_read_back() {
        let r = router();
        let _e1 = FakeEdge::register(&r, "e1", 100);
        let _e2 = FakeEdge::register(&r, "e2", 100);
        let now = Instant::now();
        r.apply_report(_e1.key, report(true, &[("r1", 1)], &[]), now);
        r.apply_report(_e2.key, report(true, &[("r1", 1)], &[]), now);
        for data in [r#"{"a":1}"#, r#"{"a":2}"#, r#"{"a":3}"#] {
            r.publish(&[gift(TargetRef::Room("r1"), 1, data)]);
        }
        r.publish(&[gift(TargetRef::Broadcast, 0, "null")]);
        let stats = r.history_stats();
        assert_eq!(stats.messages, 4, "one copy per message, not per edge");
        let page = r.history(TargetRef::Room("r1"), 1, 10);
        assert!(page.complete);
        assert_eq!(page.position.last_seq, 3);
        assert_eq!(
            page.msgs
                .iter()
                .map(|m| (
                    m.seq,
                    m.priority,
                    String::from_utf8(m.data().to_vec()).unwrap()
                ))
                .collect::<Vec<_>>(),
            vec![(2, 1, r#"{"a":2}"#.into()), (3, 1, r#"{"a":3}"#.into())]
        );
        assert_eq!(r.room("r1").epoch, page.position.epoch);
        assert_eq!(r.history(TargetRef::Broadcast, 0, 10).msgs.len(), 1);
        assert!(r.history(TargetRef::User("u1"), 0, 10).msgs.is_empty());
        assert_ne!(
            router().position(TargetRef::Room("r1")).epoch,
            page.position.epoch,
            "a new router (a restart) gives a new epoch"
        );
    }

    #[test]
    fn recovery_after_a_restart_continues_from_the_reported_numbering() {
        let r = router();
        let e1 = FakeEdge::register(&r, "e1", 100);
        let mut full = report(true, &[("r1", 1)], &[]);
        full.seqs = vec![(Target::Room("r1".into()), 41)];
        r.apply_report(e1.key, full, Instant::now());
        let room = TargetRef::Room("r1");
        let position = r.position(room);
        assert_eq!(position.last_seq, 41);
        let epoch = position.epoch.as_str().to_owned();
        assert_eq!(
            r.recover(room, &epoch, 30, 300, 1 << 20).result,
            Err(RecoverFailure::TooOld)
        );
        assert_eq!(r.recover(room, &epoch, 41, 300, 1 << 20).result, Ok(vec![]));
        assert_eq!(publish_one(&r, room).seq, 42);
        let got = r.recover(room, &epoch, 41, 300, 1 << 20).result.unwrap();
        assert_eq!(got.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![42]);
        // A client of the previous instance holds another epoch.
        assert_eq!(
            r.recover(room, "previous", 41, 300, 1 << 20).result,
            Err(RecoverFailure::EpochChanged)
        );
        assert_eq!(r.recoveries(), [2, 1, 1, 0, 0]);
    }

    #[test]
    fn a_level_4_room_does_not_store_chat() {
        let r = router();
        let e1 = FakeEdge::register(&r, "e1", 100_000);
        r.apply_report(
            e1.key,
            report(true, &[("big", 60_000)], &[]),
            Instant::now(),
        );
        assert_eq!(r.room("big").level, 4);
        let room = TargetRef::Room("big");
        r.publish(&[
            gift(room, 1, "1"),
            gift(room, 3, r#""chat""#),
            gift(room, 2, "3"),
        ]);
        let epoch = r.position(room).epoch;
        let missed = |since| r.recover(room, epoch.as_str(), since, 300, 1 << 20).result;
        assert_eq!(missed(1), Err(RecoverFailure::NotStored));
        assert_eq!(missed(2).unwrap().len(), 1);
        let page = r.history(room, 0, 10);
        assert!(!page.complete);
        assert_eq!(
            page.msgs.iter().map(|m| m.seq).collect::<Vec<_>>(),
            vec![1, 3]
        );
    }

    #[test]
    fn a_repeated_id_is_published_once_per_channel() {
        let r = router();
        let mut e1 = FakeEdge::register(&r, "e1", 100);
        r.apply_report(
            e1.key,
            report(true, &[("r1", 1), ("r2", 1)], &[]),
            Instant::now(),
        );
        let reqs = [
            gift(TargetRef::Room("r1"), 1, "1"),
            gift(TargetRef::Room("r1"), 1, "1"),
            gift(TargetRef::Room("r2"), 1, "1"),
            gift(TargetRef::Room("r1"), 1, "2"),
        ];
        let out: Vec<Published> = r
            .publish_ids(&reqs, &[Some("g1"), Some("g1"), Some("g1"), None])
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let dup = |seq| Published {
            seq,
            delivered_edges: 0,
            duplicate: true,
            held: false,
        };
        let new = |seq| Published {
            seq,
            delivered_edges: 1,
            duplicate: false,
            held: false,
        };
        assert_eq!(out, vec![new(1), dup(1), new(1), new(2)]);
        // A retry later: still the first seq, nothing sent.
        assert_eq!(
            r.publish_ids(&reqs[..1], &[Some("g1")]).remove(0).unwrap(),
            dup(1)
        );
        assert_eq!(
            e1.publishes(),
            vec![
                (Target::Room("r1".into()), 1),
                (Target::Room("r2".into()), 1),
                (Target::Room("r1".into()), 2)
            ]
        );
        assert_eq!(r.history_stats().dedupe_hits, 2);
        assert_eq!(r.history_stats().messages, 3);
        assert_eq!(
            serde_json::to_string(&dup(1)).unwrap(),
            r#"{"seq":1,"delivered_edges":0,"duplicate":true}"#
        );
        assert_eq!(
            serde_json::to_string(&new(1)).unwrap(),
            r#"{"seq":1,"delivered_edges":1}"#
        );
    }

    #[test]
    fn full_link_backlog_drops_publishes_for_that_edge_only() {
        let r = Router::new(Levels::default(), Duration::from_secs(3), 1 << 20);
        let mut slow = FakeEdge::register(&r, "slow", 100);
        let mut fine = FakeEdge::register(&r, "fine", 100);
        let now = Instant::now();
        r.apply_report(slow.key, report(true, &[("a", 1)], &[]), now);
        r.apply_report(fine.key, report(true, &[("a", 1)], &[]), now);
        slow.link.send(Bytes::from(vec![0u8; 2 << 20]));
        let out = publish_one(&r, TargetRef::Room("a"));
        assert_eq!(
            out,
            Published {
                seq: 1,
                delivered_edges: 1,
                duplicate: false,
                held: false,
            }
        );
        assert_eq!(fine.publishes().len(), 1);
        let views = r.edges(now);
        let slow_view = views.iter().find(|v| v.edge_id == "slow").unwrap();
        assert_eq!(slow_view.link_drops, 1);
        // Drain the filler without decoding it.
        while slow.rx.try_recv().is_ok() {}
    }

    // ---- rooms' online counts ------------------------------------------------------------------

    /// A report of rooms with their members and the user ids among them (sketched).
    pub(crate) fn report_users(full: bool, rooms: &[(&str, u32, &[&str])]) -> LoadReport {
        let counts: Vec<(&str, u32)> = rooms.iter().map(|&(r, n, _)| (r, n)).collect();
        let mut report = report(full, &counts, &[]);
        report.room_users = rooms
            .iter()
            .map(|&(r, _, users)| {
                let hashes = users.iter().map(|u| roomcast_proto::sketch::user_hash(u));
                (r.to_owned(), UserSketch::from_hashes(hashes))
            })
            .collect();
        report
    }

    /// The `room online` frames queued to the edge: per frame, its (room, online, users).
    fn online_frames(edge: &mut FakeEdge) -> Vec<Vec<(String, u32, u32)>> {
        edge.frames()
            .into_iter()
            .filter_map(|f| match f {
                LinkFrame::RoomOnline(o) => {
                    let mut rooms: Vec<(String, u32, u32)> = o
                        .rooms
                        .into_iter()
                        .map(|c| (c.room, c.online, c.users))
                        .collect();
                    rooms.sort();
                    Some(rooms)
                }
                _ => None,
            })
            .collect()
    }

    fn count(room: &str, online: u32, users: u32) -> (String, u32, u32) {
        (room.to_owned(), online, users)
    }

    fn router_with_intervals(intervals: &str) -> Router {
        let config = crate::config::ControlConfig {
            online_interval_ms: intervals.into(),
            ..crate::config::ControlConfig::default()
        };
        Router::new(config.levels().unwrap(), Duration::from_secs(3), 64 << 20)
    }

    #[test]
    fn online_counts_go_in_one_frame_per_edge_holding_the_rooms() {
        let r = router();
        let mut e1 = FakeEdge::register(&r, "e1", 100);
        let mut e2 = FakeEdge::register(&r, "e2", 100);
        let mut e3 = FakeEdge::register(&r, "e3", 100);
        let t0 = Instant::now();
        r.apply_report(
            e1.key,
            report_users(true, &[("r1", 2, &["alice", "bob"]), ("r2", 1, &["carol"])]),
            t0,
        );
        // Alice also watches r1 from another device on e2: she counts once in `users`.
        r.apply_report(e2.key, report_users(true, &[("r1", 1, &["alice"])]), t0);
        r.apply_report(e3.key, report_users(true, &[("r3", 1, &["dave"])]), t0);
        assert_eq!(r.push_online(t0), 3, "r1, r2 and r3");
        assert_eq!(
            online_frames(&mut e1),
            vec![vec![count("r1", 3, 2), count("r2", 1, 1)]],
            "both rooms of e1 in one frame"
        );
        assert_eq!(online_frames(&mut e2), vec![vec![count("r1", 3, 2)]]);
        assert_eq!(
            online_frames(&mut e3),
            vec![vec![count("r3", 1, 1)]],
            "only its own room"
        );
        assert_eq!(r.room("r1").users, 2);
        assert_eq!(r.online_pushes(), (4, 3));
        // Nothing changed: nothing more, however often it runs.
        for ms in [0, 10, 2_000, 60_000] {
            assert_eq!(r.push_online(t0 + Duration::from_millis(ms)), 0);
        }
        assert!(online_frames(&mut e1).is_empty());
    }

    #[test]
    fn a_room_is_pushed_at_most_once_per_level_interval_and_only_when_changed() {
        let r = router();
        let mut e1 = FakeEdge::register(&r, "e1", 100_000);
        let t0 = Instant::now();
        r.apply_report(e1.key, report_users(true, &[("r1", 1, &["a"])]), t0);
        assert_eq!(r.push_online(t0), 1);
        assert_eq!(online_frames(&mut e1), vec![vec![count("r1", 1, 1)]]);
        // A change 100 ms later waits for level 1's interval (1 s) after the last push...
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        r.apply_report(
            e1.key,
            report_users(false, &[("r1", 2, &["a", "b"])]),
            at(100),
        );
        assert_eq!(r.push_online(at(500)), 0);
        assert_eq!(r.push_online(at(999)), 0);
        // ... and changes meanwhile ride along with the latest values.
        r.apply_report(
            e1.key,
            report_users(false, &[("r1", 3, &["a", "b", "c"])]),
            at(600),
        );
        assert_eq!(r.push_online(at(1_000)), 1);
        assert_eq!(online_frames(&mut e1), vec![vec![count("r1", 3, 3)]]);
        // A report that changes nothing (same count, same users) pushes nothing.
        r.apply_report(
            e1.key,
            report_users(false, &[("r1", 3, &["c", "b", "a"])]),
            at(1_500),
        );
        assert_eq!(r.push_online(at(2_000)), 0);
        // A change after a quiet spell goes out at once.
        r.apply_report(
            e1.key,
            report_users(false, &[("r1", 2, &["a", "b"])]),
            at(9_000),
        );
        assert_eq!(r.push_online(at(9_000)), 1);
        assert_eq!(online_frames(&mut e1), vec![vec![count("r1", 2, 2)]]);

        // A level-4 room (60,000 members) is pushed at most every 5 s.
        let many: Vec<String> = (0..600).map(|i| format!("u{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        r.apply_report(
            e1.key,
            report_users(false, &[("big", 60_000, &many)]),
            at(10_000),
        );
        assert_eq!(r.room("big").level, 4);
        assert_eq!(r.push_online(at(10_000)), 1);
        let first = online_frames(&mut e1);
        assert_eq!(first[0][0].1, 60_000);
        let users = first[0][0].2;
        assert!(
            (570..=630).contains(&users),
            "600 users estimated as {users}"
        );
        r.apply_report(
            e1.key,
            report_users(false, &[("big", 60_001, &many)]),
            at(11_000),
        );
        assert_eq!(r.push_online(at(14_999)), 0);
        assert_eq!(r.push_online(at(15_000)), 1);
        assert_eq!(
            online_frames(&mut e1),
            vec![vec![count("big", 60_001, users)]]
        );
    }

    #[test]
    fn a_level_with_interval_zero_pushes_nothing() {
        let r = router_with_intervals("0,200,200,200");
        let mut e1 = FakeEdge::register(&r, "e1", 100);
        let t0 = Instant::now();
        r.apply_report(e1.key, report_users(true, &[("r1", 2, &["a", "b"])]), t0);
        assert_eq!(r.push_online(t0 + Duration::from_secs(10)), 0);
        assert!(online_frames(&mut e1).is_empty());
        assert_eq!(r.online_tick(), Some(Duration::from_millis(50)));
        assert_eq!(router_with_intervals("0,0,0,0").online_tick(), None);
    }

    #[test]
    fn an_edge_a_room_appears_on_gets_its_count_even_when_it_did_not_change() {
        let r = router();
        let mut e1 = FakeEdge::register(&r, "e1", 100);
        let mut e2 = FakeEdge::register(&r, "e2", 100);
        let t0 = Instant::now();
        r.apply_report(e1.key, report_users(true, &[("r1", 2, &["a", "b"])]), t0);
        r.push_online(t0);
        online_frames(&mut e1);
        // Bob moves to e2: still 2 online, 2 users, but e2's viewers have no count yet.
        let later = t0 + Duration::from_secs(2);
        r.apply_report(e1.key, report_users(false, &[("r1", 1, &["a"])]), later);
        r.apply_report(e2.key, report_users(true, &[("r1", 1, &["b"])]), later);
        assert_eq!(r.push_online(later), 1);
        assert_eq!(online_frames(&mut e2), vec![vec![count("r1", 2, 2)]]);
        assert_eq!(online_frames(&mut e1), vec![vec![count("r1", 2, 2)]]);
        // e2 goes away: e1's viewers learn the room shrank.
        let gone = later + Duration::from_secs(2);
        assert!(r.remove_edge(e2.key, gone));
        assert_eq!(r.push_online(gone), 1);
        assert_eq!(online_frames(&mut e1), vec![vec![count("r1", 1, 1)]]);
    }

    #[test]
    fn users_are_never_above_online_and_at_least_one_while_anyone_is_there() {
        let r = router();
        let e1 = FakeEdge::register(&r, "e1", 100);
        let t0 = Instant::now();
        // Members reported before the edge's first sketch of them.
        r.apply_report(e1.key, report(true, &[("r1", 3)], &[]), t0);
        assert_eq!((r.room("r1").online, r.room("r1").users), (3, 1));
        // A sketch with more users than connections (it lags the count): capped.
        r.apply_report(
            e1.key,
            report_users(false, &[("r1", 2, &["a", "b", "c"])]),
            t0,
        );
        assert_eq!((r.room("r1").online, r.room("r1").users), (2, 2));
        assert_eq!(r.room("nobody").users, 0);
    }
}
