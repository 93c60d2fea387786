//! Channel history: each channel's recent messages, its epoch, and the ids that make publishing
//! idempotent, behind a small store interface ([`HistoryStore`]) so that a store shared by
//! several control planes can replace the in-memory one ([`MemoryStore`], the default).
//!
//! A channel (room, user, broadcast) is a stream: the router numbers its messages (`seq`) and
//! the store names the numbering with an **epoch**, a short random string chosen when the store
//! creates the channel's state. A client holding `(epoch, seq)` can be told exactly what it
//! missed ([`recover`]) or that it cannot be (a new store, a control plane restart, gives every
//! channel a new epoch).
//!
//! Everything here is pure: time is passed in, randomness comes from the seed given to
//! [`MemoryStore::new`], and nothing does I/O. The router calls the store under its lock, so the
//! store's view is always consistent with the numbering.
//!
//! ## The in-memory store
//! - Each channel keeps its stored messages in `seq` order, bounded by count, age and bytes per
//!   its room level's policy ([`LevelHistory`]; users and broadcast use level 1's): a 32-byte
//!   index entry each, their kind and data copied into one byte ring per channel (no allocation
//!   per message; the ring is compacted to 1.5× its contents when full and halved below a
//!   quarter).
//! - All channels together are bounded by a global byte cap, oldest message first across
//!   channels: one global append-order queue, whose entries for messages their channel already
//!   dropped are skipped when reached and compacted away once they outnumber the live ones, so
//!   eviction is O(1) amortised.
//! - A message below its level's lowest stored priority costs nothing: it takes a `seq` the store
//!   was told about (`last_appended`) but holds no entry, and a read over it reports it as not
//!   stored. Everything at or below the channel's `floor` (the newest message dropped for age,
//!   count, bytes or the global cap, or a gap in the numbering) is gone.
//! - A channel with no stored message keeps its epoch and numbering for at least
//!   [`HistoryConfig::meta_ttl`] after it was last published to or asked for its position; after
//!   that, or when more than [`HistoryConfig::max_channels`] channels are tracked (the one idle
//!   longest goes first), it is forgotten and comes back with a new epoch.
//! - Dedupe remembers `(channel, id) → seq` for [`HistoryConfig::dedupe_window`], at most
//!   [`HistoryConfig::dedupe_max_ids`] ids (oldest forgotten first), as a 128-bit hash of the
//!   pair (two SipHash-1-3 values behind secret 128-bit prefixes): ~70 bytes per id whatever
//!   the lengths; two different ids would match by chance only among ~2^64 of them.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::Hasher;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Serialize, Serializer};
use slab::Slab;

use crate::router::TargetRef;

/// Characters in an epoch.
pub const EPOCH_LEN: usize = 8;

const EPOCH_ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A channel's epoch: 8 characters of `[0-9A-Za-z]`, shown and sent as a string.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Epoch([u8; EPOCH_LEN]);

impl Epoch {
    /// The epoch spelled by a random number (62^8 ≈ 2·10^14 values).
    pub fn from_random(mut x: u64) -> Epoch {
        let mut out = [0u8; EPOCH_LEN];
        for b in &mut out {
            *b = EPOCH_ALPHABET[(x % 62) as usize];
            x /= 62;
        }
        Epoch(out)
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("an epoch is ASCII")
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Epoch({:?})", self.as_str())
    }
}

impl Serialize for Epoch {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl PartialEq<str> for Epoch {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

/// Where a channel stands: its epoch and the last `seq` the router assigned in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Position {
    pub epoch: Epoch,
    /// The router's counter for the channel (0 = never published). After a control plane
    /// restart it continues from the edges' reports, so it may be above 0 with nothing stored.
    pub last_seq: u64,
}

/// History bounds of one rate level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LevelHistory {
    /// Most messages a channel keeps.
    pub max_messages: usize,
    /// Messages older than this are dropped.
    pub max_age: Duration,
    /// The lowest priority kept (largest number): 3 keeps everything, 2 drops chat (P3).
    pub lowest_priority: u8,
}

/// The store's settings (`--history-*`, `--dedupe-*` and `--recover-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryConfig {
    /// Per rate level 1..=4; users and broadcast use level 1's.
    pub levels: [LevelHistory; 4],
    /// Most bytes one channel keeps.
    pub channel_max_bytes: usize,
    /// Most bytes all channels keep together; 0 keeps no message (history off).
    pub max_bytes: usize,
    /// How long a channel's epoch and numbering outlive its last publish (or position read).
    pub meta_ttl: Duration,
    /// Most channels tracked; beyond it the one with no stored message idle longest is forgotten.
    pub max_channels: usize,
    /// How long a publish id is remembered; zero turns dedupe off.
    pub dedupe_window: Duration,
    /// Most ids remembered (oldest forgotten first).
    pub dedupe_max_ids: usize,
    /// A recovery missing more messages than this fails with `too_many`.
    pub recover_max_messages: usize,
    /// A recovery whose messages (kind + data) exceed this fails with `too_many`.
    pub recover_max_bytes: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        crate::config::ControlConfig::default()
            .history()
            .expect("default history options parse")
    }
}

impl HistoryConfig {
    /// The bounds of rate level `level` (1..=4; anything else is clamped).
    pub fn level(&self, level: u8) -> &LevelHistory {
        &self.levels[usize::from(level.clamp(1, 4) - 1)]
    }
}

/// A message just numbered by the router, as the store is given it.
#[derive(Debug, Clone, Copy)]
pub struct Append<'a> {
    pub seq: u64,
    pub priority: u8,
    pub kind: &'a str,
    /// The message's JSON; copied when kept (never kept as a slice of the request body).
    pub data: &'a [u8],
    /// Messages a merge rule combined into it (0: none).
    pub merged: u32,
    /// Its merge key's final message: stored whatever the level's lowest stored priority.
    pub is_final: bool,
    /// The viewer who sent it (a client `send`); at most 255 bytes (ids are at most 128).
    pub from: Option<&'a str>,
    /// It asks viewers for an `ack`.
    pub ack: bool,
}

/// One message of a publish request for [`HistoryStore::append_all`].
#[derive(Debug, Clone, Copy)]
pub struct AppendTo<'a> {
    pub channel: TargetRef<'a>,
    pub level: u8,
    pub msg: Append<'a>,
}

/// A stored message as read back: `kind` and `data` share one buffer (a single allocation per
/// stored message).
#[derive(Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub seq: u64,
    pub priority: u8,
    pub merged: u32,
    pub is_final: bool,
    pub ack: bool,
    /// `kind`, then `from` (`from_len` bytes, 0 when none), then `data`.
    buf: Bytes,
    kind_len: u8,
    from_len: u8,
}

impl StoredMessage {
    pub fn kind(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.kind_len as usize]).unwrap_or("")
    }

    /// The sender of a client `send`.
    pub fn from(&self) -> Option<&str> {
        let start = self.kind_len as usize;
        let end = start + self.from_len as usize;
        (self.from_len > 0)
            .then(|| std::str::from_utf8(&self.buf[start..end]).ok())
            .flatten()
    }

    /// The message's JSON, verbatim (a cheap slice of the stored buffer).
    pub fn data(&self) -> Bytes {
        self.buf
            .slice(self.kind_len as usize + self.from_len as usize..)
    }

    /// `kind` plus `data` bytes: what recovery's byte cap counts.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

impl fmt::Debug for StoredMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredMessage")
            .field("seq", &self.seq)
            .field("priority", &self.priority)
            .field("kind", &self.kind())
            .field("data", &String::from_utf8_lossy(&self.data()))
            .finish()
    }
}

/// What a [`HistoryStore::read`] of `(since, last_seq]` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Read {
    /// Stored messages after `since`, oldest first, at most the asked number.
    pub msgs: Vec<StoredMessage>,
    /// The span read is `(since, through]`: `last_seq`, or the last message returned when the
    /// read stopped at its limit.
    pub through: u64,
    /// Messages of the span no longer (or never) kept: evicted, expired, or numbered while the
    /// store did not see them.
    pub gone: u64,
    /// Messages of the span below their level's lowest stored priority.
    pub not_stored: u64,
}

/// Counters and sizes for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryStats {
    pub messages: u64,
    /// Bytes accounted to stored messages (kind + data + [`ENTRY_OVERHEAD`] each).
    pub bytes: u64,
    pub channels: u64,
    /// Messages dropped, by reason: [`Evicted`] as index.
    pub evictions: [u64; 4],
    pub dedupe_ids: u64,
    pub dedupe_hits: u64,
}

/// Why stored messages were dropped (index into [`HistoryStats::evictions`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evicted {
    /// The channel's message count cap.
    Count = 0,
    /// The channel's maximum age.
    Age = 1,
    /// The channel's byte cap (or a message larger than a cap).
    Bytes = 2,
    /// The global byte cap.
    Global = 3,
}

impl Evicted {
    pub const ALL: [Evicted; 4] = [
        Evicted::Count,
        Evicted::Age,
        Evicted::Bytes,
        Evicted::Global,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Evicted::Count => "count",
            Evicted::Age => "age",
            Evicted::Bytes => "bytes",
            Evicted::Global => "global",
        }
    }
}

/// The store interface: what the router needs from a history, called under its lock.
pub trait HistoryStore: Send {
    /// The channel's epoch. Creates the channel's state (with a new epoch) when the store has
    /// none, and keeps it for at least the meta TTL from now.
    fn epoch(&mut self, channel: TargetRef<'_>, now: Instant) -> Epoch;

    /// Records message `msg.seq` of `channel`, just numbered at rate level `level`: kept (its
    /// data copied) when its priority is stored at that level, else only marked as not stored.
    fn append(&mut self, channel: TargetRef<'_>, level: u8, msg: Append<'_>, now: Instant);

    /// [`HistoryStore::append`] of each message in turn (a store may prepare them together).
    fn append_all(&mut self, msgs: &[AppendTo<'_>], now: Instant) {
        for m in msgs {
            self.append(m.channel, m.level, m.msg, now);
        }
    }

    /// The stored messages of `(since, last_seq]`, at most `max_msgs`, and what is missing.
    /// `last_seq` is the router's counter for the channel.
    fn read(
        &mut self,
        channel: TargetRef<'_>,
        since: u64,
        last_seq: u64,
        max_msgs: usize,
        now: Instant,
    ) -> Read;

    /// The `seq` an earlier publish with this id got on this channel within the dedupe window.
    fn seen(&mut self, channel: TargetRef<'_>, id: &str, now: Instant) -> Option<u64>;

    /// Remembers that the publish with this id got `seq`.
    fn remember(&mut self, channel: TargetRef<'_>, id: &str, seq: u64, now: Instant);

    /// Counts a repeat of an id earlier in the same publish request (the router answers it; it
    /// is a dedupe hit all the same).
    fn count_repeat(&mut self);

    /// Drops what time has expired (run about once a second).
    fn expire(&mut self, now: Instant);

    fn stats(&self) -> HistoryStats;
}

/// Why a recovery returns no messages (the client reloads the channel's state instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoverFailure {
    /// The position is not from this stream: another epoch, or a `seq` beyond the last one.
    EpochChanged,
    /// Any missed message is no longer (or was never) in the history.
    TooOld,
    /// More messages, or more bytes, are missing than the recovery caps allow.
    TooMany,
    /// A missed message was below its level's lowest stored priority.
    NotStored,
}

impl RecoverFailure {
    /// The reason as the client protocol spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            RecoverFailure::EpochChanged => "epoch_changed",
            RecoverFailure::TooOld => "too_old",
            RecoverFailure::TooMany => "too_many",
            RecoverFailure::NotStored => "not_stored",
        }
    }
}

/// A recovery's answer: where the channel stands and, all or nothing, every missed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoverOutcome {
    pub position: Position,
    /// The messages `since_seq + 1 ..= last_seq`, in order, with no hole (empty when nothing was
    /// missed).
    pub result: Result<Vec<StoredMessage>, RecoverFailure>,
}

/// How much one recovery may return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoverCaps {
    /// Most messages missed.
    pub max_messages: usize,
    /// Most bytes (kind + data) of the messages missed.
    pub max_bytes: usize,
}

/// Recovers the messages after `(since_epoch, since_seq)` of a channel whose last `seq` is
/// `last_seq`. Checked in this order: the epoch (and `since_seq ≤ last_seq`), the count cap, any
/// message gone (`too_old`), any message not stored, the byte cap.
pub fn recover(
    store: &mut dyn HistoryStore,
    channel: TargetRef<'_>,
    last_seq: u64,
    (since_epoch, since_seq): (&str, u64),
    caps: RecoverCaps,
    now: Instant,
) -> RecoverOutcome {
    let RecoverCaps {
        max_messages,
        max_bytes,
    } = caps;
    let position = Position {
        epoch: store.epoch(channel, now),
        last_seq,
    };
    let result = if position.epoch != *since_epoch || since_seq > last_seq {
        Err(RecoverFailure::EpochChanged)
    } else if since_seq == last_seq {
        Ok(Vec::new())
    } else if last_seq - since_seq > max_messages as u64 {
        Err(RecoverFailure::TooMany)
    } else {
        let missing = (last_seq - since_seq) as usize;
        let read = store.read(channel, since_seq, last_seq, missing, now);
        if read.gone > 0 {
            Err(RecoverFailure::TooOld)
        } else if read.not_stored > 0 {
            Err(RecoverFailure::NotStored)
        } else if read.msgs.iter().map(StoredMessage::len).sum::<usize>() > max_bytes {
            Err(RecoverFailure::TooMany)
        } else {
            Ok(read.msgs)
        }
    };
    RecoverOutcome { position, result }
}

/// A page of a channel's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    pub position: Position,
    /// Stored messages after `since`, oldest first, at most `limit`. When it holds `limit`
    /// messages there may be more: ask again from the last one's `seq`.
    pub msgs: Vec<StoredMessage>,
    /// Every message numbered in the span the page covers (after `since`, up to the last message
    /// returned when the page is full, else up to `last_seq`) is in `msgs`. False when any is no
    /// longer stored (evicted, expired, never kept) or was below the stored priority.
    pub complete: bool,
}

/// Reads up to `limit` stored messages after `since`. A `since` at or beyond `last_seq` gives
/// an empty, complete page.
pub fn history_page(
    store: &mut dyn HistoryStore,
    channel: TargetRef<'_>,
    last_seq: u64,
    since: u64,
    limit: usize,
    now: Instant,
) -> HistoryPage {
    let position = Position {
        epoch: store.epoch(channel, now),
        last_seq,
    };
    if since >= last_seq || limit == 0 {
        return HistoryPage {
            position,
            msgs: Vec::new(),
            complete: true,
        };
    }
    let read = store.read(channel, since, last_seq, limit, now);
    HistoryPage {
        position,
        complete: read.gone == 0 && read.not_stored == 0,
        msgs: read.msgs,
    }
}

// ---------------------------------------------------------------------------------------------
// The in-memory store
// ---------------------------------------------------------------------------------------------

/// One stored message in its channel's index; its bytes (`kind` then `data`) are
/// `ring[off..off + len]`.
struct Entry {
    seq: u64,
    /// Milliseconds since the store's start.
    at_ms: u64,
    off: u32,
    len: u32,
    /// Fits the padding: an entry stays 32 bytes.
    merged: u32,
    kind_len: u8,
    priority: u8,
    /// [`ENTRY_FINAL`] | [`ENTRY_ACK`].
    flags: u8,
    /// Bytes of `from` after `kind` (0: none).
    from_len: u8,
}

const ENTRY_FINAL: u8 = 0x01;
const ENTRY_ACK: u8 = 0x02;

impl Entry {
    fn size(&self) -> usize {
        self.len as usize + ENTRY_OVERHEAD
    }

    fn range(&self) -> std::ops::Range<usize> {
        self.off as usize..(self.off + self.len) as usize
    }
}

/// One stored message in the global append-order queue.
#[derive(Clone, Copy)]
struct OrderEntry {
    slot: u32,
    generation: u32,
    seq: u64,
}

/// A channel with no stored message, waiting for its meta TTL.
#[derive(Clone, Copy)]
struct IdleEntry {
    slot: u32,
    generation: u32,
    touched_ms: u64,
}

/// Bytes accounted to a stored message beyond its kind and data: its channel index entry and
/// its global queue entry (48). The rings' and queues' spare capacity is not counted: a ring is
/// compacted to 1.5× what it holds when full and halved below a quarter, so it is 1-4× (about
/// 1.5× in steady state) the bytes it holds.
pub const ENTRY_OVERHEAD: usize = std::mem::size_of::<Entry>() + std::mem::size_of::<OrderEntry>();

/// Smallest ring a channel holding messages gets.
const MIN_RING: usize = 256;

#[derive(Clone, PartialEq, Eq)]
enum ChannelKey {
    Room(Box<str>),
    User(Box<str>),
    Broadcast,
}

struct Channel {
    key: ChannelKey,
    generation: u32,
    epoch: Epoch,
    /// Stored messages, `seq` increasing; exactly the kept messages with `seq > floor`.
    msgs: VecDeque<Entry>,
    /// The stored messages' bytes, in `msgs` order around a ring: appending writes after the
    /// newest record (or at 0 when it does not fit before the end), dropping the oldest only
    /// moves `head` past it. No allocation per message, and a publish reads no stored bytes.
    ring: Box<[u8]>,
    /// Start of the oldest record in `ring` and end of the newest.
    head: u32,
    tail: u32,
    /// While the newest records start again at 0: the end of the records before the end of the
    /// ring.
    wrap_end: Option<u32>,
    /// Every message at or below this is gone.
    floor: u64,
    /// The last `seq` appended (0 = none since the state was created).
    last_appended: u64,
    /// Accounted bytes of the stored messages (their `len` + [`ENTRY_OVERHEAD`] each).
    bytes: usize,
    /// Last publish or position read, ms since the store's start.
    touched_ms: u64,
    /// The room level of the last append (its policy bounds the channel).
    level: u8,
    /// Has an entry in the idle queue.
    queued_idle: bool,
}

impl Channel {
    /// Bytes of the stored records.
    fn used(&self) -> usize {
        self.bytes - self.msgs.len() * ENTRY_OVERHEAD
    }

    /// Where a record of `n` bytes goes (growing the ring when it fits nowhere); the ring's
    /// `tail` moves past it. Reads only the channel's own fields, never the (cold) index.
    fn place(&mut self, n: usize) -> usize {
        let cap = self.ring.len();
        let (head, tail) = (self.head as usize, self.tail as usize);
        let off = match self.wrap_end {
            _ if self.msgs.is_empty() && cap >= n => Some(0),
            // Records in [head, tail): after them, or from 0 when that is free.
            None if cap - tail >= n => Some(tail),
            None if head >= n => {
                self.wrap_end = Some(self.tail);
                Some(0)
            }
            // Records in [head, wrap_end) and [0, tail).
            Some(_) if head - tail >= n => Some(tail),
            _ => None,
        };
        let off = off.unwrap_or_else(|| {
            // Compact into a ring a half larger than the records: appends then fit again for a
            // while (for good, once evictions keep pace), so the copies cost O(1) per byte.
            let used = self.used();
            self.relayout((3 * (used + n) / 2).max(MIN_RING));
            used
        });
        self.tail = (off + n) as u32;
        off
    }

    /// Forgets the oldest record (just popped from `msgs`): the ring's `head` moves past it.
    fn release(&mut self, e: &Entry) {
        debug_assert_eq!(e.off, self.head);
        self.head = e.off + e.len;
        if self.wrap_end == Some(self.head) {
            self.head = 0;
            self.wrap_end = None;
        }
    }

    /// Copies the records, in order, to the start of a new ring of `cap` bytes.
    fn relayout(&mut self, cap: usize) {
        let mut ring = vec![0u8; cap].into_boxed_slice();
        let mut pos = 0;
        for e in self.msgs.iter_mut() {
            let len = e.len as usize;
            ring[pos..pos + len].copy_from_slice(&self.ring[e.range()]);
            e.off = pos as u32;
            pos += len;
        }
        self.ring = ring;
        self.head = 0;
        self.tail = pos as u32;
        self.wrap_end = None;
    }

    /// Halves the ring and the index when a quarter of them is in use.
    fn shrink(&mut self) {
        let used = self.used();
        if self.ring.len() > MIN_RING && used * 4 <= self.ring.len() {
            self.relayout((self.ring.len() / 2).max(MIN_RING));
        }
        if self.msgs.capacity() > 16 && self.msgs.len() * 4 <= self.msgs.capacity() {
            self.msgs.shrink_to(self.msgs.len() * 2);
        }
    }

    fn stored(&self, e: &Entry, buf: &Bytes, at: usize) -> StoredMessage {
        StoredMessage {
            seq: e.seq,
            priority: e.priority,
            merged: e.merged,
            is_final: e.flags & ENTRY_FINAL != 0,
            ack: e.flags & ENTRY_ACK != 0,
            buf: buf.slice(at..at + e.len as usize),
            kind_len: e.kind_len,
            from_len: e.from_len,
        }
    }
}

/// The default store: everything in this process's memory, lost on restart (a new store gives
/// every channel a new epoch).
pub struct MemoryStore {
    config: HistoryConfig,
    /// Time origin of the stored millisecond stamps.
    base: Instant,
    /// Splitmix64 state: epochs.
    rng: u64,
    channels: Slab<Channel>,
    rooms: HashMap<Box<str>, u32>,
    users: HashMap<Box<str>, u32>,
    broadcast: Option<u32>,
    next_generation: u32,
    /// Every stored message in append order (some already dropped by their channel).
    order: VecDeque<OrderEntry>,
    /// Channels that became empty, roughly oldest first.
    idle: VecDeque<IdleEntry>,
    messages: usize,
    bytes: usize,
    evictions: [u64; 4],
    dedupe: Dedupe,
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl MemoryStore {
    /// A store whose epochs and dedupe hash keys derive from `seed` (pass a random one;
    /// tests pass fixed ones). `now` is its time origin.
    pub fn new(config: HistoryConfig, seed: u64, now: Instant) -> MemoryStore {
        let mut rng = seed;
        let keys = [
            splitmix64(&mut rng),
            splitmix64(&mut rng),
            splitmix64(&mut rng),
            splitmix64(&mut rng),
        ];
        let dedupe = Dedupe {
            window_ms: config.dedupe_window.as_millis() as u64,
            max_ids: config.dedupe_max_ids,
            keys,
            ids: HashMap::new(),
            order: VecDeque::new(),
            hits: 0,
        };
        MemoryStore {
            config,
            base: now,
            rng,
            channels: Slab::new(),
            rooms: HashMap::new(),
            users: HashMap::new(),
            broadcast: None,
            next_generation: 0,
            order: VecDeque::new(),
            idle: VecDeque::new(),
            messages: 0,
            bytes: 0,
            evictions: [0; 4],
            dedupe,
        }
    }

    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.base).as_millis() as u64
    }

    fn lookup(&self, channel: TargetRef<'_>) -> Option<u32> {
        match channel {
            TargetRef::Room(id) => self.rooms.get(id).copied(),
            TargetRef::User(id) => self.users.get(id).copied(),
            TargetRef::Broadcast => self.broadcast,
        }
    }

    /// The channel's slot, its state created (new epoch) when missing; touched either way.
    fn channel(&mut self, channel: TargetRef<'_>, now_ms: u64) -> u32 {
        if let Some(slot) = self.lookup(channel) {
            self.channels[slot as usize].touched_ms = now_ms;
            return slot;
        }
        // Room for one more: forget channels with nothing stored, idle longest first.
        while self.channels.len() >= self.config.max_channels.max(1) {
            if !self.forget_idle(now_ms, true) {
                break;
            }
        }
        let key = match channel {
            TargetRef::Room(id) => ChannelKey::Room(id.into()),
            TargetRef::User(id) => ChannelKey::User(id.into()),
            TargetRef::Broadcast => ChannelKey::Broadcast,
        };
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let epoch = Epoch::from_random(splitmix64(&mut self.rng));
        let slot = self.channels.insert(Channel {
            key: key.clone(),
            generation,
            epoch,
            msgs: VecDeque::new(),
            ring: Box::default(),
            head: 0,
            tail: 0,
            wrap_end: None,
            floor: 0,
            last_appended: 0,
            bytes: 0,
            touched_ms: now_ms,
            level: 1,
            queued_idle: false,
        }) as u32;
        match key {
            ChannelKey::Room(id) => {
                self.rooms.insert(id, slot);
            }
            ChannelKey::User(id) => {
                self.users.insert(id, slot);
            }
            ChannelKey::Broadcast => self.broadcast = Some(slot),
        }
        self.mark_idle(slot);
        slot
    }

    fn mark_idle(&mut self, slot: u32) {
        let ch = &mut self.channels[slot as usize];
        if !ch.queued_idle {
            ch.queued_idle = true;
            self.idle.push_back(IdleEntry {
                slot,
                generation: ch.generation,
                touched_ms: ch.touched_ms,
            });
        }
    }

    /// Looks at the idle queue's front: forgets that channel when it still has nothing stored and
    /// its meta TTL has passed (or at once with `force`). Returns false when there was nothing
    /// left to forget.
    fn forget_idle(&mut self, now_ms: u64, force: bool) -> bool {
        let ttl_ms = self.config.meta_ttl.as_millis() as u64;
        // Each entry is looked at most twice per call: once stale, once re-queued.
        let mut budget = 2 * self.idle.len() + 1;
        while let Some(front) = self.idle.pop_front() {
            budget -= 1;
            if budget == 0 {
                self.idle.push_front(front);
                return false;
            }
            let Some(ch) = self
                .channels
                .get_mut(front.slot as usize)
                .filter(|c| c.generation == front.generation)
            else {
                continue; // forgotten already
            };
            if !ch.msgs.is_empty() {
                ch.queued_idle = false; // queued again when it empties
                continue;
            }
            if ch.touched_ms != front.touched_ms {
                // Touched since it was queued: back in line with its new time.
                self.idle.push_back(IdleEntry {
                    touched_ms: ch.touched_ms,
                    ..front
                });
                continue;
            }
            if !force && now_ms < ch.touched_ms.saturating_add(ttl_ms) {
                self.idle.push_front(front);
                return false;
            }
            self.remove_channel(front.slot);
            return true;
        }
        false
    }

    fn remove_channel(&mut self, slot: u32) {
        let ch = self.channels.remove(slot as usize);
        debug_assert!(ch.msgs.is_empty());
        match ch.key {
            ChannelKey::Room(id) => {
                self.rooms.remove(&id);
            }
            ChannelKey::User(id) => {
                self.users.remove(&id);
            }
            ChannelKey::Broadcast => self.broadcast = None,
        }
    }

    /// Drops the channel's oldest stored message.
    fn pop_front(&mut self, slot: u32, reason: Evicted) {
        self.drop_front(slot, Some(reason));
    }

    /// Drops every stored message of the channel (counted as evictions for `reason`, if any).
    fn drop_all(&mut self, slot: u32, reason: Option<Evicted>) {
        while !self.channels[slot as usize].msgs.is_empty() {
            self.drop_front(slot, reason);
        }
    }

    fn drop_front(&mut self, slot: u32, reason: Option<Evicted>) {
        let ch = &mut self.channels[slot as usize];
        let Some(entry) = ch.msgs.pop_front() else {
            return;
        };
        ch.floor = entry.seq;
        ch.release(&entry);
        let size = entry.size();
        ch.bytes -= size;
        self.bytes -= size;
        self.messages -= 1;
        if let Some(reason) = reason {
            self.evictions[reason as usize] += 1;
        }
        if ch.msgs.is_empty() {
            // Give the buffers back.
            ch.msgs = VecDeque::new();
            ch.ring = Box::default();
            (ch.head, ch.tail, ch.wrap_end) = (0, 0, None);
            self.mark_idle(slot);
        } else {
            ch.shrink();
        }
    }

    /// Drops the channel's messages older than its level's maximum age.
    fn expire_channel(&mut self, slot: u32, now_ms: u64) {
        loop {
            let ch = &self.channels[slot as usize];
            let max_age_ms = self.config.level(ch.level).max_age.as_millis() as u64;
            match ch.msgs.front() {
                Some(e) if now_ms.saturating_sub(e.at_ms) > max_age_ms => {
                    self.pop_front(slot, Evicted::Age)
                }
                _ => return,
            }
        }
    }

    fn is_live(channels: &Slab<Channel>, e: &OrderEntry) -> bool {
        channels
            .get(e.slot as usize)
            .is_some_and(|c| c.generation == e.generation && e.seq > c.floor)
    }

    /// Drops the globally oldest messages until the store is under its byte cap.
    fn enforce_global_cap(&mut self) {
        while self.bytes > self.config.max_bytes {
            let Some(front) = self.order.pop_front() else {
                return;
            };
            if Self::is_live(&self.channels, &front) {
                // A live entry is its channel's oldest message.
                self.pop_front(front.slot, Evicted::Global);
            }
        }
    }

    /// Drops queue entries of messages their channels already dropped, once they are the
    /// majority: O(1) amortised per append.
    fn compact_order(&mut self) {
        if self.order.len() > 2 * self.messages + 1024 {
            let channels = &self.channels;
            self.order.retain(|e| Self::is_live(channels, e));
        }
    }

    /// Appends to the channel in `slot` (see [`HistoryStore::append`]).
    fn append_at(&mut self, slot: u32, level: u8, msg: Append<'_>, now_ms: u64) {
        let policy = *self.config.level(level);
        let ch = &mut self.channels[slot as usize];
        if msg.seq <= ch.last_appended {
            debug_assert!(false, "seq {} appended after {}", msg.seq, ch.last_appended);
            return;
        }
        ch.level = level;
        if msg.seq != ch.last_appended + 1 {
            // A hole in the numbering (the router's counter continued from the edges' reports):
            // what came before is unknown, and what is stored belongs before the hole.
            self.drop_all(slot, None);
            self.channels[slot as usize].floor = msg.seq - 1;
        }
        self.channels[slot as usize].last_appended = msg.seq;
        self.expire_channel(slot, now_ms);
        if msg.priority > policy.lowest_priority && !msg.is_final {
            return; // not stored: a hole above the floor
        }
        let from = msg.from.unwrap_or("");
        let len = msg.kind.len() + from.len() + msg.data.len();
        let size = len + ENTRY_OVERHEAD;
        if size > self.config.channel_max_bytes
            || size > self.config.max_bytes
            || msg.kind.len() > usize::from(u8::MAX)
            || from.len() > usize::from(u8::MAX)
            || len == 0
        {
            // Cannot be kept: everything up to it is gone.
            self.drop_all(slot, Some(Evicted::Bytes));
            self.channels[slot as usize].floor = msg.seq;
            if self.config.max_bytes > 0 {
                self.evictions[Evicted::Bytes as usize] += 1;
            }
            return;
        }
        // Room in the channel first, so that its ring never outgrows its cap.
        loop {
            let ch = &self.channels[slot as usize];
            let reason = if ch.msgs.len() >= policy.max_messages {
                Evicted::Count
            } else if ch.bytes + size > self.config.channel_max_bytes {
                Evicted::Bytes
            } else {
                break;
            };
            self.pop_front(slot, reason);
        }
        // The one copy: out of the request body into the channel's ring.
        let ch = &mut self.channels[slot as usize];
        let off = ch.place(len);
        let kind_end = off + msg.kind.len();
        let from_end = kind_end + from.len();
        ch.ring[off..kind_end].copy_from_slice(msg.kind.as_bytes());
        ch.ring[kind_end..from_end].copy_from_slice(from.as_bytes());
        ch.ring[from_end..off + len].copy_from_slice(msg.data);
        ch.msgs.push_back(Entry {
            seq: msg.seq,
            at_ms: now_ms,
            off: off as u32,
            len: len as u32,
            merged: msg.merged,
            kind_len: msg.kind.len() as u8,
            priority: msg.priority,
            flags: if msg.is_final { ENTRY_FINAL } else { 0 } | if msg.ack { ENTRY_ACK } else { 0 },
            from_len: from.len() as u8,
        });
        ch.bytes += size;
        let generation = ch.generation;
        self.bytes += size;
        self.messages += 1;
        self.order.push_back(OrderEntry {
            slot,
            generation,
            seq: msg.seq,
        });
        self.enforce_global_cap();
        self.compact_order();
    }

    /// Entries in the global queue (for tests of its bound).
    #[cfg(test)]
    fn order_len(&self) -> usize {
        self.order.len()
    }
}

impl HistoryStore for MemoryStore {
    fn epoch(&mut self, channel: TargetRef<'_>, now: Instant) -> Epoch {
        let now_ms = self.ms(now);
        let slot = self.channel(channel, now_ms);
        self.channels[slot as usize].epoch
    }

    fn append(&mut self, channel: TargetRef<'_>, level: u8, msg: Append<'_>, now: Instant) {
        let now_ms = self.ms(now);
        let slot = self.channel(channel, now_ms);
        self.append_at(slot, level, msg, now_ms);
    }

    /// Looks every channel up first and reads the two places each append touches that were
    /// last used a whole ring ago (the oldest index entry, evicted once the channel is full,
    /// and the ring where the copy goes): these loads are independent, so their cache misses
    /// overlap here instead of stalling each append in turn (measured: the oldest entry's
    /// miss alone was a tenth of the control plane's publish CPU).
    fn append_all(&mut self, msgs: &[AppendTo<'_>], now: Instant) {
        let now_ms = self.ms(now);
        let mut touched = 0u64;
        let found: Vec<Option<(u32, u32)>> = msgs
            .iter()
            .map(|m| {
                let slot = self.lookup(m.channel)?;
                let ch = &self.channels[slot as usize];
                touched ^= ch.msgs.front().map_or(0, |e| e.at_ms);
                touched ^= ch.ring.get(ch.tail as usize).map_or(0, |&b| u64::from(b));
                Some((slot, ch.generation))
            })
            .collect();
        std::hint::black_box(touched);
        for (m, found) in msgs.iter().zip(found) {
            // A slot looked up above may have been forgotten (and reused) by an append since.
            let slot = match found {
                Some((slot, generation))
                    if self
                        .channels
                        .get(slot as usize)
                        .is_some_and(|c| c.generation == generation) =>
                {
                    self.channels[slot as usize].touched_ms = now_ms;
                    slot
                }
                _ => self.channel(m.channel, now_ms),
            };
            self.append_at(slot, m.level, m.msg, now_ms);
        }
    }

    fn read(
        &mut self,
        channel: TargetRef<'_>,
        since: u64,
        last_seq: u64,
        max_msgs: usize,
        now: Instant,
    ) -> Read {
        if since >= last_seq || max_msgs == 0 {
            return Read {
                through: since,
                ..Read::default()
            };
        }
        let Some(slot) = self.lookup(channel) else {
            return Read {
                msgs: Vec::new(),
                through: last_seq,
                gone: last_seq - since,
                not_stored: 0,
            };
        };
        self.expire_channel(slot, self.ms(now));
        let ch = &self.channels[slot as usize];
        let start = ch.msgs.partition_point(|e| e.seq <= since);
        let entries = || {
            ch.msgs
                .range(start..)
                .take_while(|e| e.seq <= last_seq)
                .take(max_msgs)
        };
        // One buffer for the whole read, each message a slice of it.
        let mut copy = Vec::with_capacity(entries().map(|e| e.len as usize).sum());
        for e in entries() {
            copy.extend_from_slice(&ch.ring[e.range()]);
        }
        let copy = Bytes::from(copy);
        let mut at = 0;
        let msgs: Vec<StoredMessage> = entries()
            .map(|e| {
                let m = ch.stored(e, &copy, at);
                at += e.len as usize;
                m
            })
            .collect();
        let through = match msgs.last() {
            Some(m) if msgs.len() == max_msgs => m.seq,
            _ => last_seq,
        };
        // (since, floor] and (last_appended, through] are gone; floor ≤ last_appended.
        let below = ch.floor.min(through).saturating_sub(since);
        let above = through.saturating_sub(ch.last_appended.max(since));
        let gone = below + above;
        let not_stored = (through - since)
            .saturating_sub(gone)
            .saturating_sub(msgs.len() as u64);
        Read {
            msgs,
            through,
            gone,
            not_stored,
        }
    }

    fn seen(&mut self, channel: TargetRef<'_>, id: &str, now: Instant) -> Option<u64> {
        let now_ms = self.ms(now);
        self.dedupe.seen(channel, id, now_ms)
    }

    fn remember(&mut self, channel: TargetRef<'_>, id: &str, seq: u64, now: Instant) {
        let now_ms = self.ms(now);
        self.dedupe.remember(channel, id, seq, now_ms);
    }

    fn count_repeat(&mut self) {
        self.dedupe.hits += 1;
    }

    fn expire(&mut self, now: Instant) {
        let now_ms = self.ms(now);
        // Messages past their channel's age, oldest first; a live front that is still young
        // for its channel stops the pass (younger-policy channels behind it are expired by
        // their next append or read, or by a later pass).
        while let Some(front) = self.order.front().copied() {
            if !Self::is_live(&self.channels, &front) {
                self.order.pop_front();
                continue;
            }
            let ch = &self.channels[front.slot as usize];
            let max_age_ms = self.config.level(ch.level).max_age.as_millis() as u64;
            let at_ms = ch.msgs.front().map_or(now_ms, |e| e.at_ms);
            if now_ms.saturating_sub(at_ms) <= max_age_ms {
                break;
            }
            self.order.pop_front();
            self.pop_front(front.slot, Evicted::Age);
        }
        while self.forget_idle(now_ms, false) {}
        self.dedupe.expire(now_ms);
    }

    fn stats(&self) -> HistoryStats {
        HistoryStats {
            messages: self.messages as u64,
            bytes: self.bytes as u64,
            channels: self.channels.len() as u64,
            evictions: self.evictions,
            dedupe_ids: self.dedupe.ids.len() as u64,
            dedupe_hits: self.dedupe.hits,
        }
    }
}

/// Publish ids seen recently: `(channel, id)` as a 128-bit keyed hash → `(seq, when)`.
struct Dedupe {
    window_ms: u64,
    max_ids: usize,
    keys: [u64; 4],
    ids: HashMap<u128, (u64, u64)>,
    /// (key, when) in insertion order; an entry whose id was remembered again later is stale.
    order: VecDeque<(u128, u64)>,
    hits: u64,
}

impl Dedupe {
    fn key(&self, channel: TargetRef<'_>, id: &str) -> u128 {
        let hash = |k0: u64, k1: u64| {
            let mut h = DefaultHasher::new();
            h.write_u64(k0);
            h.write_u64(k1);
            let (tag, name) = match channel {
                TargetRef::Room(name) => (0u8, name),
                TargetRef::User(name) => (1, name),
                TargetRef::Broadcast => (2, ""),
            };
            h.write_u8(tag);
            h.write(name.as_bytes());
            h.write_u8(0xff); // never in an id: the two strings cannot run together
            h.write(id.as_bytes());
            h.finish()
        };
        (u128::from(hash(self.keys[0], self.keys[1])) << 64)
            | u128::from(hash(self.keys[2], self.keys[3]))
    }

    fn expire(&mut self, now_ms: u64) {
        while let Some(&(key, at)) = self.order.front() {
            if now_ms.saturating_sub(at) < self.window_ms && self.order.len() <= self.max_ids {
                break;
            }
            self.order.pop_front();
            if self.ids.get(&key).is_some_and(|&(_, when)| when == at) {
                self.ids.remove(&key);
            }
        }
    }

    fn seen(&mut self, channel: TargetRef<'_>, id: &str, now_ms: u64) -> Option<u64> {
        if self.window_ms == 0 {
            return None;
        }
        self.expire(now_ms);
        let seq = self.ids.get(&self.key(channel, id)).map(|&(seq, _)| seq)?;
        self.hits += 1;
        Some(seq)
    }

    fn remember(&mut self, channel: TargetRef<'_>, id: &str, seq: u64, now_ms: u64) {
        if self.window_ms == 0 || self.max_ids == 0 {
            return;
        }
        let key = self.key(channel, id);
        self.ids.insert(key, (seq, now_ms));
        self.order.push_back((key, now_ms));
        self.expire(now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R1: TargetRef<'static> = TargetRef::Room("r1");
    const R2: TargetRef<'static> = TargetRef::Room("r2");

    fn config() -> HistoryConfig {
        HistoryConfig::default()
    }

    fn caps(max_messages: usize, max_bytes: usize) -> RecoverCaps {
        RecoverCaps {
            max_messages,
            max_bytes,
        }
    }

    struct Fixture {
        store: MemoryStore,
        t0: Instant,
    }

    impl Fixture {
        fn new(config: HistoryConfig) -> Fixture {
            let t0 = Instant::now();
            Fixture {
                store: MemoryStore::new(config, 7, t0),
                t0,
            }
        }

        fn at(&self, ms: u64) -> Instant {
            self.t0 + Duration::from_millis(ms)
        }

        /// Appends `seq` with priority `p` and data `{"n":seq}` at `ms`.
        fn append(&mut self, channel: TargetRef<'_>, level: u8, seq: u64, p: u8, ms: u64) {
            let data = format!(r#"{{"n":{seq}}}"#);
            let msg = Append {
                seq,
                priority: p,
                kind: "gift",
                data: data.as_bytes(),
                merged: 0,
                is_final: false,
                from: None,
                ack: false,
            };
            let now = self.at(ms);
            self.store.append(channel, level, msg, now);
        }

        fn seqs(&mut self, channel: TargetRef<'_>, since: u64, last: u64, ms: u64) -> Read {
            let now = self.at(ms);
            self.store.read(channel, since, last, usize::MAX, now)
        }

        fn recover(
            &mut self,
            channel: TargetRef<'_>,
            last: u64,
            epoch: &str,
            since: u64,
            ms: u64,
        ) -> Result<Vec<u64>, RecoverFailure> {
            let now = self.at(ms);
            recover(
                &mut self.store,
                channel,
                last,
                (epoch, since),
                caps(300, 256 << 10),
                now,
            )
            .result
            .map(|msgs| msgs.iter().map(|m| m.seq).collect())
        }

        fn epoch(&mut self, channel: TargetRef<'_>, ms: u64) -> String {
            let now = self.at(ms);
            self.store.epoch(channel, now).as_str().to_owned()
        }
    }

    fn seqs(read: &Read) -> Vec<u64> {
        read.msgs.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn epochs_are_eight_alphanumerics_stable_per_store_and_new_in_a_new_store() {
        let t0 = Instant::now();
        let mut a = MemoryStore::new(config(), 1, t0);
        let mut b = MemoryStore::new(config(), 2, t0);
        let e1 = a.epoch(R1, t0);
        assert_eq!(e1.as_str().len(), EPOCH_LEN);
        assert!(e1.as_str().bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(a.epoch(R1, t0), e1, "stable within a store");
        assert_ne!(a.epoch(R2, t0), e1, "per channel");
        assert_ne!(
            a.epoch(TargetRef::User("r1"), t0),
            e1,
            "a user is not the room of the same name"
        );
        assert_ne!(b.epoch(R1, t0), e1, "a new store, a new epoch");
        assert_eq!(serde_json::to_string(&e1).unwrap(), format!("\"{e1}\""));
    }

    #[test]
    fn count_bound_keeps_the_newest_and_reads_say_what_is_gone() {
        let mut f = Fixture::new(config());
        for seq in 1..=310 {
            f.append(R1, 1, seq, 2, seq);
        }
        let all = f.seqs(R1, 0, 310, 400);
        assert_eq!(seqs(&all), (11..=310).collect::<Vec<_>>());
        assert_eq!((all.gone, all.not_stored, all.through), (10, 0, 310));
        assert_eq!(f.store.stats().evictions[Evicted::Count as usize], 10);
        assert_eq!(f.store.stats().messages, 300);
        // Level 2 keeps 500.
        for seq in 1..=510 {
            f.append(R2, 2, seq, 2, 0);
        }
        assert_eq!(f.seqs(R2, 0, 510, 0).msgs.len(), 500);
        // A limited read stops at its limit and covers only up to its last message.
        let now = f.at(400);
        let page = f.store.read(R1, 100, 310, 5, now);
        assert_eq!(seqs(&page), vec![101, 102, 103, 104, 105]);
        assert_eq!((page.through, page.gone, page.not_stored), (105, 0, 0));
        // The stored message reads back intact.
        let m = &page.msgs[0];
        assert_eq!(
            (m.kind(), &m.data()[..], m.priority),
            ("gift", &b"{\"n\":101}"[..], 2)
        );
    }

    #[test]
    fn age_bound_per_level_on_append_read_and_expire() {
        let mut f = Fixture::new(config());
        // Level 4 keeps 120 s, level 1 300 s; expire() drops idle channels' old messages.
        f.append(R2, 4, 1, 1, 0);
        f.append(R1, 1, 1, 2, 0);
        f.store.expire(f.at(120_000));
        assert_eq!(f.store.stats().messages, 2);
        f.store.expire(f.at(120_001));
        assert_eq!(f.store.stats().messages, 1, "r2's message expired");
        assert_eq!(seqs(&f.seqs(R1, 0, 1, 120_001)), vec![1]);
        // Expired on append and on read too.
        f.append(R1, 1, 2, 2, 200_000);
        assert_eq!(seqs(&f.seqs(R1, 0, 2, 300_000)), vec![1, 2]);
        let read = f.seqs(R1, 0, 2, 300_001);
        assert_eq!((seqs(&read), read.gone), (vec![2], 1), "expired on read");
        f.append(R1, 1, 3, 2, 500_001);
        assert_eq!(seqs(&f.seqs(R1, 0, 3, 500_001)), vec![3]);
        assert_eq!(f.store.stats().evictions[Evicted::Age as usize], 3);
        let epoch = f.epoch(R1, 500_002);
        assert_eq!(
            f.recover(R1, 3, &epoch, 1, 500_002),
            Err(RecoverFailure::TooOld)
        );
    }

    #[test]
    fn channel_byte_cap_and_oversize_messages() {
        let mut f = Fixture::new(HistoryConfig {
            channel_max_bytes: 3 * (ENTRY_OVERHEAD + 20),
            ..config()
        });
        let big = vec![b'1'; 16];
        for seq in 1..=5 {
            let msg = Append {
                seq,
                priority: 1,
                kind: "gift",
                data: &big,
                merged: 0,
                is_final: false,
                from: None,
                ack: false,
            };
            f.store.append(R1, 1, msg, f.t0);
        }
        let read = f.seqs(R1, 0, 5, 0);
        assert_eq!((seqs(&read), read.gone), (vec![3, 4, 5], 2));
        assert_eq!(f.store.stats().evictions[Evicted::Bytes as usize], 2);
        // One message over the channel's cap cannot be kept: everything up to it is gone.
        let huge = vec![b'1'; 400];
        let msg = Append {
            seq: 6,
            priority: 1,
            kind: "gift",
            data: &huge,
            merged: 0,
            is_final: false,
            from: None,
            ack: false,
        };
        f.store.append(R1, 1, msg, f.t0);
        let read = f.seqs(R1, 0, 6, 0);
        assert!(read.msgs.is_empty());
        assert_eq!(read.gone, 6);
        f.append(R1, 1, 7, 1, 0);
        assert_eq!(seqs(&f.seqs(R1, 5, 7, 0)), vec![7]);
        assert_eq!(f.store.stats().bytes, (ENTRY_OVERHEAD + 4 + 7) as u64);
    }

    #[test]
    fn global_cap_evicts_the_oldest_across_channels() {
        let size = ENTRY_OVERHEAD + "gift".len() + r#"{"n":1}"#.len();
        let mut f = Fixture::new(HistoryConfig {
            max_bytes: 4 * size,
            ..config()
        });
        f.append(R1, 1, 1, 2, 0);
        f.append(R2, 1, 1, 2, 1);
        f.append(R1, 1, 2, 2, 2);
        f.append(R2, 1, 2, 2, 3);
        assert_eq!(f.store.stats().bytes, 4 * size as u64);
        f.append(R2, 1, 3, 2, 4); // r1's 1 is the oldest
        assert_eq!(seqs(&f.seqs(R1, 0, 2, 5)), vec![2]);
        assert_eq!(seqs(&f.seqs(R2, 0, 3, 5)), vec![1, 2, 3]);
        f.append(R2, 1, 4, 2, 5); // then r2's 1
        assert_eq!(seqs(&f.seqs(R2, 0, 4, 6)), vec![2, 3, 4]);
        f.append(R2, 1, 5, 2, 6); // then r1's 2, leaving r1 empty
        assert!(f.seqs(R1, 0, 2, 7).msgs.is_empty());
        assert_eq!(f.store.stats().evictions[Evicted::Global as usize], 3);
        assert_eq!(f.store.stats().messages, 4);
        assert!(f.store.stats().bytes <= 4 * size as u64);
    }

    #[test]
    fn the_global_queue_stays_bounded_by_the_live_messages() {
        let mut f = Fixture::new(config());
        for seq in 1..=100_000 {
            f.append(R1, 1, seq, 2, 0);
        }
        assert_eq!(f.store.stats().messages, 300);
        assert!(
            f.store.order_len() <= 2 * 300 + 1024,
            "{}",
            f.store.order_len()
        );
    }

    #[test]
    fn history_off_keeps_no_message_but_epochs_and_dedupe() {
        let mut f = Fixture::new(HistoryConfig {
            max_bytes: 0,
            ..config()
        });
        f.append(R1, 1, 1, 0, 0);
        f.append(R1, 1, 2, 0, 0);
        assert_eq!(f.store.stats().messages, 0);
        assert_eq!(f.store.stats().evictions, [0; 4]);
        let epoch = f.epoch(R1, 0);
        assert_eq!(f.recover(R1, 2, &epoch, 1, 0), Err(RecoverFailure::TooOld));
        assert_eq!(f.recover(R1, 2, &epoch, 2, 0), Ok(vec![]));
        f.store.remember(R1, "g1", 2, f.t0);
        assert_eq!(f.store.seen(R1, "g1", f.t0), Some(2));
    }

    #[test]
    fn not_stored_priorities_are_a_marker_not_data() {
        let mut f = Fixture::new(config());
        // Level 4 stores P0-P2: chat (P3) is numbered but not kept.
        f.append(R1, 4, 1, 1, 0);
        f.append(R1, 4, 2, 3, 0);
        f.append(R1, 4, 3, 3, 0);
        f.append(R1, 4, 4, 2, 0);
        assert_eq!(f.store.stats().messages, 2);
        let read = f.seqs(R1, 0, 4, 0);
        assert_eq!(
            (seqs(&read), read.gone, read.not_stored),
            (vec![1, 4], 0, 2)
        );
        let epoch = f.epoch(R1, 0);
        assert_eq!(
            f.recover(R1, 4, &epoch, 1, 0),
            Err(RecoverFailure::NotStored)
        );
        assert_eq!(f.recover(R1, 4, &epoch, 3, 0), Ok(vec![4]));
        // Level 3 stores chat.
        f.append(R1, 3, 5, 3, 0);
        assert_eq!(f.recover(R1, 5, &epoch, 4, 0), Ok(vec![5]));
        // Once the stored message before them goes, the markers are gone too: too_old.
        f.store.expire(f.at(200_000));
        assert_eq!(
            f.recover(R1, 5, &epoch, 1, 200_000),
            Err(RecoverFailure::TooOld)
        );
    }

    #[test]
    fn recovery_is_exact_or_names_why_not() {
        let mut f = Fixture::new(config());
        for seq in 1..=50 {
            f.append(R1, 1, seq, 2, 0);
        }
        let epoch = f.epoch(R1, 0);
        let now = f.at(0);
        let out = recover(&mut f.store, R1, 50, (&epoch, 41), caps(300, 1 << 20), now);
        assert_eq!(out.position.last_seq, 50);
        assert_eq!(out.position.epoch.as_str(), epoch);
        let msgs = out.result.unwrap();
        assert_eq!(
            msgs.iter().map(|m| m.seq).collect::<Vec<_>>(),
            (42..=50).collect::<Vec<_>>()
        );
        for m in &msgs {
            assert_eq!(m.kind(), "gift");
            assert_eq!(&m.data()[..], format!(r#"{{"n":{}}}"#, m.seq).as_bytes());
        }
        assert_eq!(
            f.recover(R1, 50, &epoch, 50, 0),
            Ok(vec![]),
            "nothing missed"
        );
        assert_eq!(
            f.recover(R1, 50, "other123", 41, 0),
            Err(RecoverFailure::EpochChanged)
        );
        assert_eq!(
            f.recover(R1, 50, &epoch, 51, 0),
            Err(RecoverFailure::EpochChanged),
            "a seq beyond the last is not from this stream"
        );
        // Caps: count, then bytes (each message is 4 + 8 bytes of kind and data).
        let r = recover(&mut f.store, R1, 50, (&epoch, 0), caps(49, 1 << 20), now);
        assert_eq!(r.result, Err(RecoverFailure::TooMany));
        let r = recover(
            &mut f.store,
            R1,
            50,
            (&epoch, 40),
            caps(300, 10 * 12 - 1),
            now,
        );
        assert_eq!(r.result, Err(RecoverFailure::TooMany));
        let r = recover(&mut f.store, R1, 50, (&epoch, 40), caps(300, 10 * 12), now);
        assert_eq!(r.result.unwrap().len(), 10);
    }

    #[test]
    fn numbering_restored_from_edges_is_too_old_below_what_was_appended() {
        let mut f = Fixture::new(config());
        // After a restart the router's counter is 41 with nothing stored.
        let epoch = f.epoch(R1, 0);
        assert_eq!(
            f.recover(R1, 41, &epoch, 30, 0),
            Err(RecoverFailure::TooOld)
        );
        assert_eq!(f.recover(R1, 41, &epoch, 41, 0), Ok(vec![]));
        f.append(R1, 1, 42, 2, 0);
        f.append(R1, 1, 43, 2, 0);
        assert_eq!(f.recover(R1, 43, &epoch, 41, 0), Ok(vec![42, 43]));
        assert_eq!(
            f.recover(R1, 43, &epoch, 40, 0),
            Err(RecoverFailure::TooOld)
        );
        // Numbered but never appended (a counter raised by a report): too_old too.
        assert_eq!(
            f.recover(R1, 45, &epoch, 43, 0),
            Err(RecoverFailure::TooOld)
        );
        // A hole in appends resets what is stored.
        f.append(R1, 1, 50, 2, 0);
        assert_eq!(f.recover(R1, 50, &epoch, 49, 0), Ok(vec![50]));
        assert_eq!(
            f.recover(R1, 50, &epoch, 41, 0),
            Err(RecoverFailure::TooOld)
        );
        assert_eq!(f.store.stats().messages, 1);
    }

    #[test]
    fn channel_meta_outlives_its_messages_for_the_ttl_then_gets_a_new_epoch() {
        let day = 86_400_000;
        let mut f = Fixture::new(config());
        let epoch = f.epoch(R1, 0);
        f.append(R1, 1, 1, 2, 1_000);
        f.store.expire(f.at(400_000));
        assert_eq!(f.store.stats().messages, 0);
        // Messages expired; epoch and numbering still known a day after the last publish.
        f.store.expire(f.at(1_000 + day - 1));
        assert_eq!(f.store.stats().channels, 1);
        assert_eq!(f.recover(R1, 1, &epoch, 1, 1_000 + day - 1), Ok(vec![]));
        // That read touched it: kept another day from then.
        f.store.expire(f.at(1_000 + day + 10));
        assert_eq!(f.store.stats().channels, 1);
        f.store.expire(f.at(1_000 + 2 * day));
        assert_eq!(f.store.stats().channels, 0, "forgotten after the TTL");
        let later = f.epoch(R1, 1_000 + 2 * day);
        assert_ne!(later, epoch);
        assert_eq!(
            f.recover(R1, 1, &epoch, 1, 1_000 + 2 * day),
            Err(RecoverFailure::EpochChanged)
        );
        // A channel holding messages is never forgotten, whatever the TTL.
        let mut short = Fixture::new(HistoryConfig {
            meta_ttl: Duration::from_secs(1),
            ..config()
        });
        short.append(R1, 1, 1, 2, 0);
        short.epoch(R2, 0);
        short.store.expire(short.at(10_000));
        assert_eq!(short.store.stats().channels, 1, "r2 forgotten, r1 kept");
        assert_eq!(short.store.stats().messages, 1);
    }

    #[test]
    fn append_all_is_each_append_in_turn_even_when_one_forgets_a_channel_looked_up() {
        let mut f = Fixture::new(HistoryConfig {
            max_channels: 2,
            ..config()
        });
        let e1 = f.epoch(R1, 0);
        f.epoch(R2, 1);
        let r3 = TargetRef::Room("r3");
        let msg = |seq| Append {
            seq,
            priority: 2,
            kind: "gift",
            data: b"{}",
            merged: 0,
            is_final: false,
            from: None,
            ack: false,
        };
        // r1 is found before the appends; creating r3 forgets r1 (idle longest) and reuses its
        // slot, so r1's message must not land in r3's channel.
        let batch = [
            AppendTo {
                channel: r3,
                level: 1,
                msg: msg(1),
            },
            AppendTo {
                channel: R1,
                level: 1,
                msg: msg(1),
            },
            AppendTo {
                channel: r3,
                level: 1,
                msg: msg(2),
            },
        ];
        f.store.append_all(&batch, f.at(2));
        assert_eq!(seqs(&f.seqs(r3, 0, 2, 3)), [1, 2]);
        assert_eq!(seqs(&f.seqs(R1, 0, 1, 3)), [1]);
        assert_ne!(f.epoch(R1, 3), e1, "r1 was forgotten, then created again");
        assert_eq!(f.store.stats().messages, 3);
    }

    #[test]
    fn channel_cap_forgets_the_idle_one_first() {
        let mut f = Fixture::new(HistoryConfig {
            max_channels: 3,
            ..config()
        });
        f.append(R1, 1, 1, 2, 0); // holds a message: kept
        let e2 = f.epoch(R2, 1);
        let e3 = f.epoch(TargetRef::User("u3"), 2);
        f.epoch(TargetRef::Broadcast, 3); // over the cap: r2, idle longest, goes
        assert_eq!(f.store.stats().channels, 3);
        assert_ne!(f.epoch(R2, 4), e2, "r2 was forgotten");
        assert_ne!(f.epoch(TargetRef::User("u3"), 5), e3, "then u3");
        assert_eq!(f.store.stats().messages, 1);
    }

    #[test]
    fn dedupe_within_and_after_the_window_and_bounded() {
        let mut f = Fixture::new(HistoryConfig {
            dedupe_max_ids: 3,
            ..config()
        });
        let t0 = f.t0;
        let at = move |ms| t0 + Duration::from_millis(ms);
        assert_eq!(f.store.seen(R1, "g1", at(0)), None);
        f.store.remember(R1, "g1", 7, at(0));
        assert_eq!(f.store.seen(R1, "g1", at(299_999)), Some(7));
        assert_eq!(f.store.seen(R2, "g1", at(1)), None, "per channel");
        assert_eq!(f.store.seen(TargetRef::User("r1"), "g1", at(1)), None);
        assert_eq!(f.store.seen(R1, "g1", at(300_000)), None, "window over");
        assert_eq!(f.store.stats().dedupe_hits, 1);
        // Bounded: the oldest id goes first.
        for (i, id) in ["a", "b", "c", "d"].into_iter().enumerate() {
            f.store.remember(R1, id, i as u64, at(400_000));
        }
        assert_eq!(f.store.stats().dedupe_ids, 3);
        assert_eq!(f.store.seen(R1, "a", at(400_000)), None);
        assert_eq!(f.store.seen(R1, "d", at(400_000)), Some(3));
        // Zero window: off.
        let mut off = Fixture::new(HistoryConfig {
            dedupe_window: Duration::ZERO,
            ..config()
        });
        off.store.remember(R1, "g1", 1, off.t0);
        assert_eq!(off.store.seen(R1, "g1", off.t0), None);
    }

    #[test]
    fn stored_data_is_a_copy() {
        let mut f = Fixture::new(config());
        let body = Bytes::from_static(br#"{"messages":[{"data":{"x":1}}]}"#);
        let at = std::str::from_utf8(&body).unwrap().find(r#"{"x""#).unwrap();
        let data = body.slice(at..at + 7);
        assert_eq!(&data[..], br#"{"x":1}"#);
        let msg = Append {
            seq: 1,
            priority: 1,
            kind: "k",
            data: &data,
            merged: 0,
            is_final: false,
            from: None,
            ack: false,
        };
        f.store.append(R1, 1, msg, f.t0);
        let read = f.seqs(R1, 0, 1, 0);
        let stored = read.msgs[0].data();
        assert_eq!(&stored[..], &data[..]);
        assert!(!body.as_ptr_range().contains(&stored.as_ptr()));
    }

    /// The rings against a plain model: random sizes wrap, grow, compact and shrink them; every
    /// read returns exactly the messages the model kept.
    #[test]
    fn rings_keep_exactly_what_a_simple_model_keeps() {
        let cap = 4_000;
        let mut config = config();
        config.levels[0].max_messages = 20;
        config.channel_max_bytes = cap;
        let mut f = Fixture::new(config);
        let mut rng = 99u64;
        // (seq, priority, kind, data) per channel.
        type Kept = (u64, u8, String, Vec<u8>);
        let mut model: Vec<VecDeque<Kept>> = vec![VecDeque::new(); 3];
        let names = ["a", "b", "c"];
        let size = |m: &Kept| m.2.len() + m.3.len() + ENTRY_OVERHEAD;
        let mut last = [0u64; 3];
        let (mut relayouts, mut wraps) = (0, 0);
        for _ in 0..3_000 {
            let c = (splitmix64(&mut rng) % 3) as usize;
            let r = splitmix64(&mut rng);
            // Consecutive numbering, with now and then a jump (as after a restart).
            let seq = last[c] + if r % 97 == 0 { 5 } else { 1 };
            last[c] = seq;
            let len = match r % 10 {
                0 => 1 + (r >> 8) as usize % 1_500,
                _ => 1 + (r >> 8) as usize % 120,
            };
            let kind = "k".repeat(1 + (r >> 20) as usize % 9);
            let data: Vec<u8> = (0..len).map(|i| (seq as usize + i) as u8).collect();
            let priority = (r >> 30) as u8 % 4;
            let channel = TargetRef::Room(names[c]);
            let last_before = f
                .store
                .lookup(channel)
                .map(|s| f.store.channels[s as usize].last_appended);
            let ring_before = f.store.lookup(channel).map(|s| {
                let ring = &f.store.channels[s as usize].ring;
                (ring.as_ptr(), ring.len())
            });
            let msg = Append {
                seq,
                priority,
                kind: &kind,
                data: &data,
                merged: 0,
                is_final: false,
                from: None,
                ack: false,
            };
            f.store.append(channel, 1, msg, f.t0);
            let ring_after = f.store.lookup(channel).map(|s| {
                let ring = &f.store.channels[s as usize].ring;
                (ring.as_ptr(), ring.len())
            });
            relayouts += usize::from(ring_before != ring_after);
            if let Some(s) = f.store.lookup(channel) {
                let msgs = &f.store.channels[s as usize].msgs;
                let wrapped = msgs.len() > 1 && msgs.back().is_some_and(|e| e.off == 0);
                wraps += usize::from(wrapped && ring_before == ring_after);
            }
            // The model: a jump in numbering forgets everything; evict, then keep if it fits.
            if last_before.is_some_and(|l| seq != l + 1) || (last_before.is_none() && seq != 1) {
                model[c].clear();
            }
            let m = (seq, priority, kind, data);
            if size(&m) > cap {
                model[c].clear();
            } else {
                while model[c].len() >= 20
                    || model[c].iter().map(size).sum::<usize>() + size(&m) > cap
                {
                    model[c].pop_front();
                }
                model[c].push_back(m);
            }
            for (c, name) in names.iter().enumerate() {
                let Some(last) = model[c].back().map(|m| m.0) else {
                    continue;
                };
                let now = f.t0;
                let read = f
                    .store
                    .read(TargetRef::Room(name), 0, last, usize::MAX, now);
                let got: Vec<Kept> = read
                    .msgs
                    .iter()
                    .map(|m| (m.seq, m.priority, m.kind().to_owned(), m.data().to_vec()))
                    .collect();
                assert_eq!(
                    got,
                    Vec::from(model[c].clone()),
                    "channel {name} after seq {seq}"
                );
            }
            let total: usize = model.iter().flatten().map(size).sum();
            assert_eq!(f.store.stats().bytes as usize, total);
        }
        assert!(
            f.store.stats().messages > 20,
            "channels hold several messages"
        );
        assert!(relayouts > 10, "rings grew and shrank: {relayouts}");
        assert!(wraps > 10, "appends wrapped around: {wraps}");
        assert!(f.store.stats().evictions[Evicted::Bytes as usize] > 100);
    }

    #[test]
    fn history_pages_say_whether_they_are_complete() {
        let mut f = Fixture::new(config());
        for seq in 1..=310 {
            f.append(R1, 1, seq, 2, 0);
        }
        let now = f.at(0);
        let page = history_page(&mut f.store, R1, 310, 300, 100, now);
        assert!(page.complete);
        assert_eq!(page.msgs.len(), 10);
        let page = history_page(&mut f.store, R1, 310, 0, 5, now);
        assert!(!page.complete, "1..=10 are gone");
        assert_eq!(page.msgs[0].seq, 11);
        let page = history_page(&mut f.store, R1, 310, 20, 5, now);
        assert!(page.complete);
        assert_eq!(page.msgs.last().unwrap().seq, 25);
        let page = history_page(&mut f.store, R1, 310, 310, 5, now);
        assert!(page.complete && page.msgs.is_empty());
        assert_eq!(page.position.last_seq, 310);
    }
}
