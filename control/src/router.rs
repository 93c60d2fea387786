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

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use roomcast_proto::link::{self, LinkError, LinkFrame, LoadReport, Publish, Register};
use roomcast_proto::message::{PushMessage, Target};
use serde::Serialize;
use slab::Slab;
use tokio::sync::{mpsc, watch, Notify};

use crate::config::Levels;
use crate::levels::RoomLevel;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetRef<'a> {
    Room(&'a str),
    User(&'a str),
    Broadcast,
}

/// One validated message to publish. `data` is valid JSON (usually a slice of the request body).
#[derive(Debug, Clone)]
pub struct PublishReq<'a> {
    pub target: TargetRef<'a>,
    pub priority: u8,
    pub kind: &'a str,
    pub data: Bytes,
}

/// What a successful publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Published {
    /// The channel's sequence number assigned to the message.
    pub seq: u64,
    /// Edges the message was queued to.
    pub delivered_edges: u32,
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
    online: u32,
    seq: u64,
    level: RoomLevel,
    /// The room has been at a level other than 1, so edges may hold a non-default pacing for
    /// it: tell every edge it newly appears on, even at level 1.
    leveled: bool,
}

impl Room {
    fn new() -> Room {
        Room {
            members: Vec::new(),
            online: 0,
            seq: 0,
            level: RoomLevel::new(),
            leveled: false,
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

#[derive(Default)]
struct State {
    edges: Slab<EdgeState>,
    by_id: HashMap<String, usize>,
    rooms: HashMap<Box<str>, Room>,
    users: HashMap<Box<str>, User>,
    broadcast_seq: u64,
    next_generation: u64,
}

impl State {
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
        appeared
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
            .filter(|_| room.leveled || room.level.level() != 1)
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
    pub level: u8,
    pub tick_ms: u32,
    /// The last sequence number assigned in this room (0 = never published).
    pub last_seq: u64,
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
}

/// Longest a publisher waits for a congested link before publishing anyway.
const BACKLOG_WAIT: Duration = Duration::from_secs(1);

impl Router {
    /// `backlog_hard` bounds each edge link's queue; publishers start waiting at an eighth of it.
    pub fn new(levels: Levels, report_timeout: Duration, backlog_hard: usize) -> Router {
        Router {
            state: Mutex::new(State::default()),
            levels,
            report_timeout,
            backlog_soft: backlog_hard / 8,
            backlog_hard,
            drained: Arc::new(Notify::new()),
            dispatch_watermark_permille: 850,
            fanout_messages: std::sync::atomic::AtomicU64::new(0),
        }
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
            }
            for user in gone_users {
                state.set_user_conns(slot, &user, 0);
            }
        }
        for (room, members) in &report.rooms {
            let appeared = state.set_room_members(slot, room, *members);
            self.refresh_room(state, room, now, appeared.then_some(slot));
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

    /// Re-evaluates every room's level (lowering needs time to pass, not just new counts).
    pub fn tick_levels(&self, now: Instant) {
        let mut guard = self.lock();
        let State { rooms, edges, .. } = &mut *guard;
        rooms.retain(|name, room| refresh_level(&self.levels, edges, name, room, now, None));
    }

    /// Numbers, encodes and queues `reqs` in order, under one lock. Each message is encoded once;
    /// each target edge gets slices of the same buffer (consecutive messages for the same edge
    /// coalesced into one slice). A room publish goes to the edges holding members of the room,
    /// a user publish to the edges holding the user, a broadcast to every edge; with none, the
    /// message still gets its `seq` and `delivered_edges` is 0.
    pub fn publish(&self, reqs: &[PublishReq<'_>]) -> Vec<Result<Published, LinkError>> {
        let estimate: usize = reqs
            .iter()
            .map(|r| 32 + r.data.len() + r.kind.len() + target_id(r.target).len())
            .sum();
        let mut out = BytesMut::with_capacity(estimate);
        // One scratch frame reused for every message: its strings keep their allocations.
        let mut frame = LinkFrame::Publish(Publish {
            target: Target::Broadcast,
            msg: PushMessage {
                seq: 0,
                priority: 0,
                kind: String::with_capacity(64),
                data: Bytes::new(),
            },
        });
        let mut batches: Vec<EdgeBatch> = Vec::new();
        let mut results = Vec::with_capacity(reqs.len());

        let mut guard = self.lock();
        self.drop_silent_edges(&mut guard, Instant::now());
        let State {
            edges,
            rooms,
            users,
            broadcast_seq,
            ..
        } = &mut *guard;
        for req in reqs {
            let (counter, members) = match req.target {
                TargetRef::Room(name) => {
                    let room = entry(rooms, name, Room::new);
                    (&mut room.seq, Members::List(&room.members))
                }
                TargetRef::User(name) => {
                    // A user never seen gets an entry on first publish: its numbering must
                    // continue even while it has no connection.
                    let user = entry(users, name, User::default);
                    (&mut user.seq, Members::List(&user.edges))
                }
                TargetRef::Broadcast => (&mut *broadcast_seq, Members::All),
            };
            let seq = *counter + 1;
            let LinkFrame::Publish(publish) = &mut frame else {
                unreachable!("the scratch frame is a publish")
            };
            set_target(&mut publish.target, req.target);
            publish.msg.seq = seq;
            publish.msg.priority = req.priority;
            publish.msg.kind.clear();
            publish.msg.kind.push_str(req.kind);
            publish.msg.data = req.data.clone();
            let start = out.len();
            if let Err(error) = link::encode(&frame, &mut out) {
                results.push(Err(error));
                continue;
            }
            *counter = seq;
            let range = start..out.len();
            let mut delivered = 0;
            let mut route = |slot: usize, edge: &EdgeState| {
                if batches.len() <= slot {
                    batches.resize_with(slot + 1, EdgeBatch::default);
                }
                let batch = &mut batches[slot];
                let open = *batch
                    .open
                    .get_or_insert_with(|| edge.link.backlog() <= self.backlog_hard);
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
            self.fanout_messages
                .fetch_add(u64::from(delivered), std::sync::atomic::Ordering::Relaxed);
            results.push(Ok(Published {
                seq,
                delivered_edges: delivered,
            }));
        }
        let frames = out.freeze();
        for (slot, batch) in batches.into_iter().enumerate() {
            let Some(edge) = edges.get_mut(slot) else {
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
        results
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

    /// A room's online count, level and edges. Unknown rooms show as empty at level 1.
    pub fn room(&self, name: &str) -> RoomView {
        let state = self.lock();
        let Some(room) = state.rooms.get(name) else {
            return RoomView {
                room: name.to_owned(),
                online: 0,
                level: 1,
                tick_ms: self.levels.tick_ms(1),
                last_seq: 0,
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
            level,
            tick_ms: self.levels.tick_ms(level),
            last_seq: room.seq,
            edges,
        }
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
                delivered_edges: 2
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
                delivered_edges: 0
            }
        );
        assert_eq!(
            publish_one(&r, TargetRef::Room("empty")),
            Published {
                seq: 2,
                delivered_edges: 0
            }
        );
        assert_eq!(
            publish_one(&r, TargetRef::User("nobody")),
            Published {
                seq: 1,
                delivered_edges: 0
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
                delivered_edges: 1
            }
        );
        assert_eq!(
            publish_one(&r, TargetRef::Broadcast),
            Published {
                seq: 1,
                delivered_edges: 2
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
                delivered_edges: 1
            }
        );
        assert_eq!(fine.publishes().len(), 1);
        let views = r.edges(now);
        let slow_view = views.iter().find(|v| v.edge_id == "slow").unwrap();
        assert_eq!(slow_view.link_drops, 1);
        // Drain the filler without decoding it.
        while slow.rx.try_recv().is_ok() {}
    }
}
