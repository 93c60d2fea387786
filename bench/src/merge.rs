//! Merge traffic (PROTOCOL.md §5 "Merged messages"): what the `pk` and `like-storm` scenarios
//! publish besides the load, with merge rules, and how one viewer checks what it received. Pure:
//! no sockets, no clocks (times are passed in), so the generator and the checks are unit-tested.
//!
//! Three streams, each its own `kind` (the load's messages are `bench`):
//!
//! * `pk` (priority 1): a PK battle's bar. Gift `n` goes to the left or the right side (from a
//!   hash of `n`) with a value, and the bar's new state `{"ts":…,"n":n,"left":L,"right":R}` is
//!   published to every PK room with `{"key":"pk:1","op":"latest","interval_ms":I}`. When
//!   publishing stops, each room gets a `final` (`"final":true`) with the last state.
//! * `like` (priority 3): `{"ts":…,"count":c}` with `{"key":"like","op":"sum","fields":["count"]}`,
//!   one key per room (rooms round-robin).
//! * `combo` (priority 2): a user sending one gift again and again:
//!   `{"ts":…,"count":c,"k":j,"user":"u…","gift":"gift…"}` with a `sum` rule keyed
//!   `combo:u<U>:gift<G>` — key `j` of `--combo-keys` per room, drawn from a hash of `n`.
//!
//! A viewer keeps a [`View`] (a few words, updated in O(1) per message without allocating): the
//! sums of the `count`s it received per stream, a checksum Σ count·w(key) over the combo keys
//! (a 64-bit weight per key, so a count landing on the wrong key is caught too), and for the PK
//! bar the last value, the final, and the spacing of the updates ([`PkView`]). At the end
//! [`check`] compares it with what was published to its room ([`RoomExpect`], counted by the
//! publisher from the API's answers).

use bytes::Bytes;
use roomcast_proto::client::PushRef;
use serde::{Deserialize, Serialize};

/// The merge traffic's kinds, in [`Kind`] order.
pub const KINDS: [Kind; 3] = [Kind::Pk, Kind::Like, Kind::Combo];

/// A stream of merge traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Pk = 0,
    Like = 1,
    Combo = 2,
}

impl Kind {
    /// The stream a delivered message's `kind` names, if any.
    pub fn of(kind: &str) -> Option<Kind> {
        match kind {
            "pk" => Some(Kind::Pk),
            "like" => Some(Kind::Like),
            "combo" => Some(Kind::Combo),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Pk => "pk",
            Kind::Like => "like",
            Kind::Combo => "combo",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// The priority its messages are published with: the PK bar matters like a big gift, a
    /// combo like a small one, a like like chat.
    pub fn priority(self) -> u8 {
        match self {
            Kind::Pk => 1,
            Kind::Combo => 2,
            Kind::Like => 3,
        }
    }
}

/// The PK key (one per room: the rule's key is scoped to the channel).
pub const PK_KEY: &str = "pk:1";
/// The likes' key, one per room.
pub const LIKE_KEY: &str = "like";

/// What merge traffic a run publishes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Traffic {
    /// PK gifts per second; each is one message to every PK room.
    pub pk_rate: f64,
    /// The PK key's `interval_ms`.
    pub pk_interval_ms: u64,
    /// Likes per second, over the rooms.
    pub like_rate: f64,
    /// Combo gifts per second, over the rooms.
    pub combo_rate: f64,
    /// Combo keys (user × gift) per room.
    pub combo_keys: u32,
    /// Publish with merge rules (false: the same messages as plain ones).
    pub rules: bool,
}

impl Traffic {
    pub fn any(&self) -> bool {
        self.pk_rate > 0.0 || self.like_rate > 0.0 || self.combo_rate > 0.0
    }

    /// Messages per second in all, with `pk_rooms` PK rooms.
    pub fn msgs_per_s(&self, pk_rooms: usize) -> f64 {
        self.pk_rate * pk_rooms as f64 + self.like_rate + self.combo_rate
    }
}

/// SplitMix64's finalizer: a well-mixed 64-bit hash of `x`.
pub fn mix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const GIFT_SALT: u64 = 0x6B1F_7A3C_0D9E_2245;
const LIKE_SALT: u64 = 0x2C4D_9E11_A7F3_5B08;
const COMBO_SALT: u64 = 0x51E7_3D2B_C8A9_0F64;

/// Gift values of the PK (most gifts are small).
const GIFT_VALUES: [u64; 8] = [1, 1, 1, 1, 5, 10, 52, 520];
/// A like's `count`: mostly 1, sometimes a burst of taps.
const LIKE_COUNTS: [u64; 8] = [1, 1, 1, 1, 1, 2, 3, 5];
/// A combo message's `count`: one gift, or a pack.
const COMBO_COUNTS: [u64; 8] = [1, 1, 1, 1, 2, 5, 10, 66];

/// Gift `n` of the PK: (goes to the left side, value).
pub fn gift(n: u64) -> (bool, u64) {
    let h = mix64(n ^ GIFT_SALT);
    (
        h & 1 == 0,
        GIFT_VALUES[(h >> 8) as usize % GIFT_VALUES.len()],
    )
}

/// Like `n`'s count.
pub fn like_count(n: u64) -> u64 {
    LIKE_COUNTS[(mix64(n ^ LIKE_SALT) >> 8) as usize % LIKE_COUNTS.len()]
}

/// Combo message `n` of `keys`: (key, count).
pub fn combo(n: u64, keys: u32) -> (u32, u64) {
    let h = mix64(n ^ COMBO_SALT);
    let key = (h % u64::from(keys.max(1))) as u32;
    (key, COMBO_COUNTS[(h >> 40) as usize % COMBO_COUNTS.len()])
}

/// Combo key `j`'s user and gift: user `j / 4` sends up to four different gifts.
pub fn combo_parts(key: u32) -> (u32, u32) {
    (key / 4, key % 4 + 1)
}

/// Combo key `j`'s merge key: `combo:u<U>:gift<G>`.
pub fn combo_key(key: u32) -> String {
    let (user, gift) = combo_parts(key);
    format!("combo:u{user}:gift{gift}")
}

/// The weight of combo key `j` in a viewer's checksum.
pub fn key_weight(key: u32) -> u64 {
    mix64(u64::from(key) ^ COMBO_SALT) | 1
}

/// The PK rule (`final`: the key's last message).
pub fn pk_rule(interval_ms: u64, is_final: bool) -> String {
    if is_final {
        format!(r#"{{"key":"{PK_KEY}","op":"latest","interval_ms":{interval_ms},"final":true}}"#)
    } else {
        format!(r#"{{"key":"{PK_KEY}","op":"latest","interval_ms":{interval_ms}}}"#)
    }
}

/// A `sum` rule on `count`.
pub fn sum_rule(key: &str) -> String {
    format!(r#"{{"key":"{key}","op":"sum","fields":["count"]}}"#)
}

/// The PK bar's state as published.
pub fn pk_data(ts: u64, n: u64, left: u64, right: u64) -> String {
    format!(r#"{{"ts":{ts},"n":{n},"left":{left},"right":{right}}}"#)
}

pub fn like_data(ts: u64, count: u64) -> String {
    format!(r#"{{"ts":{ts},"count":{count}}}"#)
}

pub fn combo_data(ts: u64, count: u64, key: u32) -> String {
    let (user, gift) = combo_parts(key);
    format!(r#"{{"ts":{ts},"count":{count},"k":{key},"user":"u{user}","gift":"gift{gift}"}}"#)
}

/// The unsigned integer of field `"key":` in a flat JSON object (the first one; None when absent
/// or not digits). No allocation: a scan of the bytes.
pub fn field_u64(data: &[u8], key: &str) -> Option<u64> {
    let key = key.as_bytes();
    let mut i = 0;
    while i + key.len() + 3 <= data.len() {
        if data[i] == b'"'
            && data[i + 1..].starts_with(key)
            && data[i + 1 + key.len()..].starts_with(b"\":")
        {
            let digits = &data[i + key.len() + 3..];
            let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
            if n == 0 || n > 19 {
                return None;
            }
            return Some(
                digits[..n]
                    .iter()
                    .fold(0u64, |v, d| v * 10 + u64::from(d - b'0')),
            );
        }
        i += 1;
    }
    None
}

/// One message of merge traffic, ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Msg {
    pub kind: Kind,
    pub room: usize,
    pub data: Bytes,
    /// The `merge` object's JSON; None without rules.
    pub rule: Option<Bytes>,
    /// What the publisher counts once the API accepted it.
    pub sent: Sent,
}

/// What one accepted message adds to its room's [`RoomExpect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// PK gift `n` (the bar's state after it), or the final with the last state.
    Pk {
        n: u64,
        is_final: bool,
    },
    Like {
        count: u64,
    },
    Combo {
        key: u32,
        count: u64,
    },
}

/// What was published to one room (messages the API accepted: numbered, or held in a merge
/// window), to judge its viewers by.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomExpect {
    pub like_msgs: u64,
    pub like_sum: u64,
    pub combo_msgs: u64,
    pub combo_sum: u64,
    /// Σ count · [`key_weight`], wrapping.
    pub combo_check: u64,
    /// PK updates (not counting finals), the last one's `n`, and finals.
    pub pk_msgs: u64,
    pub pk_last_n: Option<u64>,
    pub pk_finals: u64,
}

impl RoomExpect {
    pub fn add(&mut self, sent: Sent) {
        match sent {
            Sent::Pk { is_final: true, .. } => self.pk_finals += 1,
            Sent::Pk { n, .. } => {
                self.pk_msgs += 1;
                self.pk_last_n = Some(n);
            }
            Sent::Like { count } => {
                self.like_msgs += 1;
                self.like_sum += count;
            }
            Sent::Combo { key, count } => {
                self.combo_msgs += 1;
                self.combo_sum += count;
                self.combo_check = self
                    .combo_check
                    .wrapping_add(count.wrapping_mul(key_weight(key)));
            }
        }
    }
}

/// What the coordinator tells the clients before their final reports (`expect <json>`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Expect {
    /// Whether the traffic carried merge rules: without, the checks are reported, not judged.
    pub rules: bool,
    pub pk_interval_ms: u64,
    /// By room index.
    pub rooms: Vec<RoomExpect>,
}

/// The merge traffic of one publisher thread, generated in order: message `k` of a stream of
/// rate `r` is due at `k / r` seconds after publishing began (the first at once).
#[derive(Debug)]
pub struct Generator {
    traffic: Traffic,
    /// Rooms the likes and combos go to, round-robin; the PK goes to all of them.
    rooms: Vec<usize>,
    /// Gifts, likes and combos generated so far.
    sent: [u64; 3],
    left: u64,
    right: u64,
    pk_rule: Option<Bytes>,
    like_rule: Option<Bytes>,
    combo_rules: Vec<Bytes>,
}

impl Generator {
    pub fn new(traffic: Traffic, rooms: Vec<usize>) -> Generator {
        let rules = traffic.rules;
        Generator {
            rooms: if rooms.is_empty() { vec![0] } else { rooms },
            sent: [0; 3],
            left: 0,
            right: 0,
            pk_rule: rules.then(|| Bytes::from(pk_rule(traffic.pk_interval_ms, false))),
            like_rule: rules.then(|| Bytes::from(sum_rule(LIKE_KEY))),
            combo_rules: if rules && traffic.combo_rate > 0.0 {
                (0..traffic.combo_keys)
                    .map(|j| Bytes::from(sum_rule(&combo_key(j))))
                    .collect()
            } else {
                Vec::new()
            },
            traffic,
        }
    }

    fn rates(&self) -> [f64; 3] {
        [
            self.traffic.pk_rate,
            self.traffic.like_rate,
            self.traffic.combo_rate,
        ]
    }

    /// Items of each stream due by `t` seconds.
    fn due(&self, t: f64) -> [u64; 3] {
        self.rates().map(|r| {
            if r > 0.0 {
                (r * t).floor() as u64 + 1
            } else {
                0
            }
        })
    }

    /// Seconds from `t` until the next item is due (0 when one is due now); None when no stream
    /// has a rate.
    pub fn wait(&self, t: f64) -> Option<f64> {
        let due = self.due(t);
        self.rates()
            .iter()
            .zip(self.sent.iter().zip(due))
            .filter(|(r, _)| **r > 0.0)
            .map(|(r, (&sent, due))| {
                if due > sent {
                    0.0
                } else {
                    (sent as f64 / r - t).max(0.0)
                }
            })
            .reduce(f64::min)
    }

    /// Appends the messages due by `t` (stamped `ts`, unix µs) to `out`, at most about `max`
    /// (whole gifts: one message per PK room); the rest come with the next call.
    pub fn take_due(&mut self, t: f64, ts: u64, max: usize, out: &mut Vec<Msg>) {
        let due = self.due(t);
        let limit = out.len() + max.max(1);
        while self.sent[0] < due[0] && out.len() < limit {
            let n = self.sent[0];
            self.sent[0] += 1;
            let (left, value) = gift(n);
            if left {
                self.left += value;
            } else {
                self.right += value;
            }
            let data = Bytes::from(pk_data(ts, n, self.left, self.right));
            for &room in &self.rooms {
                out.push(Msg {
                    kind: Kind::Pk,
                    room,
                    data: data.clone(),
                    rule: self.pk_rule.clone(),
                    sent: Sent::Pk { n, is_final: false },
                });
            }
        }
        while self.sent[1] < due[1] && out.len() < limit {
            let n = self.sent[1];
            self.sent[1] += 1;
            let count = like_count(n);
            out.push(Msg {
                kind: Kind::Like,
                room: self.rooms[(n % self.rooms.len() as u64) as usize],
                data: Bytes::from(like_data(ts, count)),
                rule: self.like_rule.clone(),
                sent: Sent::Like { count },
            });
        }
        while self.sent[2] < due[2] && out.len() < limit {
            let n = self.sent[2];
            self.sent[2] += 1;
            let (key, count) = combo(n, self.traffic.combo_keys);
            out.push(Msg {
                kind: Kind::Combo,
                room: self.rooms[(n % self.rooms.len() as u64) as usize],
                data: Bytes::from(combo_data(ts, count, key)),
                rule: self.combo_rules.get(key as usize).cloned(),
                sent: Sent::Combo { key, count },
            });
        }
    }

    /// Gifts, likes and combos generated so far.
    #[cfg(test)]
    pub fn generated(&self) -> [u64; 3] {
        self.sent
    }

    /// The PK's last word: one `final` per PK room with the bar's last state (none when no gift
    /// was sent).
    pub fn finals(&self, ts: u64) -> Vec<Msg> {
        if self.sent[0] == 0 {
            return Vec::new();
        }
        let n = self.sent[0] - 1;
        let data = Bytes::from(pk_data(ts, n, self.left, self.right));
        let rule = self
            .traffic
            .rules
            .then(|| Bytes::from(pk_rule(self.traffic.pk_interval_ms, true)));
        self.rooms
            .iter()
            .map(|&room| Msg {
                kind: Kind::Pk,
                room,
                data: data.clone(),
                rule: rule.clone(),
                sent: Sent::Pk { n, is_final: true },
            })
            .collect()
    }
}

/// Data a viewer could not read (a merge-traffic message without its `count`, `k` or `n`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadData;

/// One viewer's PK bar: the last value, the finals, and the spacing of the updates. Times are
/// milliseconds on the viewer's clock.
///
/// The newest update is counted into the spacing figures only when the next one (or the end)
/// comes: a `final` publishes the key's waiting value right before itself (PROTOCOL.md §5), so
/// an update whose `seq` is the final's minus one was flushed by the final, whatever its distance
/// to the one before, and is left out of the spacing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PkView {
    /// The newest non-final update, not yet counted: (at, seq).
    pending: Option<(u32, u64)>,
    /// The `n` of the newest non-final update.
    last_n: Option<u64>,
    /// Σ `merged` over the updates and finals received: the published messages they stand for.
    stands_for: u64,
    updates: u32,
    first_ms: u32,
    last_ms: u32,
    /// The `interval`-long slot (at / interval) of the last counted update, how many fell in it,
    /// and the most in any slot.
    slot: u32,
    in_slot: u32,
    max_in_slot: u32,
    min_gap_ms: u32,
    finals: u32,
    flushed_by_final: u32,
}

impl Default for PkView {
    fn default() -> PkView {
        PkView {
            pending: None,
            last_n: None,
            stands_for: 0,
            updates: 0,
            first_ms: 0,
            last_ms: 0,
            slot: 0,
            in_slot: 0,
            max_in_slot: 0,
            min_gap_ms: u32::MAX,
            finals: 0,
            flushed_by_final: 0,
        }
    }
}

impl PkView {
    /// An update (`n`, the bar's state) received at `at` ms.
    pub fn on_update(&mut self, at: u32, seq: u64, n: u64, merged: u32, interval_ms: u32) {
        if let Some((t, _)) = self.pending.take() {
            self.count(t, interval_ms);
        }
        self.pending = Some((at, seq));
        self.last_n = Some(n);
        self.stands_for += u64::from(merged);
    }

    /// The final, received at `at` ms.
    pub fn on_final(&mut self, seq: u64, merged: u32, interval_ms: u32) {
        self.finals += 1;
        self.stands_for += u64::from(merged);
        match self.pending.take() {
            Some((_, s)) if s + 1 == seq => self.flushed_by_final += 1,
            Some((t, _)) => self.count(t, interval_ms),
            None => {}
        }
    }

    fn count(&mut self, at: u32, interval_ms: u32) {
        let slot = at / interval_ms.max(1);
        if self.updates == 0 {
            self.first_ms = at;
            self.in_slot = 1;
        } else {
            self.min_gap_ms = self.min_gap_ms.min(at.saturating_sub(self.last_ms));
            self.in_slot = if slot == self.slot {
                self.in_slot + 1
            } else {
                1
            };
        }
        self.slot = slot;
        self.max_in_slot = self.max_in_slot.max(self.in_slot);
        self.last_ms = at;
        self.updates += 1;
    }

    /// The figures at the end (the pending update counted).
    pub fn figures(&self, interval_ms: u32) -> PkFigures {
        let mut v = *self;
        if let Some((t, _)) = v.pending.take() {
            v.count(t, interval_ms);
        }
        PkFigures {
            updates: v.updates,
            span_ms: v.last_ms.saturating_sub(v.first_ms),
            max_per_interval: v.max_in_slot,
            min_gap_ms: (v.min_gap_ms != u32::MAX).then_some(v.min_gap_ms),
            finals: v.finals,
            flushed_by_final: v.flushed_by_final,
            last_n: v.last_n,
            stands_for: v.stands_for,
        }
    }
}

/// A viewer's PK figures at the end ([`PkView::figures`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PkFigures {
    /// Updates counted in the spacing (the one a final flushed left out), the time from the
    /// first to the last, the most in one `interval`-long slot, the closest two.
    pub updates: u32,
    pub span_ms: u32,
    pub max_per_interval: u32,
    pub min_gap_ms: Option<u32>,
    pub finals: u32,
    pub flushed_by_final: u32,
    pub last_n: Option<u64>,
    pub stands_for: u64,
}

/// One viewer's merge traffic: the `count` sums, the combo checksum, the PK bar.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct View {
    like_sum: u64,
    combo_sum: u64,
    combo_check: u64,
    pk: PkView,
}

impl View {
    /// A merge-traffic message of `kind` received for the first time at `at` ms: O(1), no
    /// allocation.
    pub fn on_message(
        &mut self,
        kind: Kind,
        m: &PushRef<'_>,
        at: u32,
        interval_ms: u32,
    ) -> Result<(), BadData> {
        let (data, seq, merged) = (m.data, m.seq, m.merged);
        match kind {
            Kind::Like => {
                self.like_sum += field_u64(data, "count").ok_or(BadData)?;
            }
            Kind::Combo => {
                let count = field_u64(data, "count").ok_or(BadData)?;
                let key = field_u64(data, "k").ok_or(BadData)?;
                self.combo_sum += count;
                self.combo_check = self
                    .combo_check
                    .wrapping_add(count.wrapping_mul(key_weight(key as u32)));
            }
            Kind::Pk if m.is_final => self.pk.on_final(seq, merged, interval_ms),
            Kind::Pk => {
                let n = field_u64(data, "n").ok_or(BadData)?;
                self.pk.on_update(at, seq, n, merged, interval_ms);
            }
        }
        Ok(())
    }
}

/// One viewer judged against what its room was published ([`check`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Check {
    pub like_got: u64,
    pub like_want: u64,
    pub combo_got: u64,
    pub combo_want: u64,
    /// The combo sums and the per-key checksum both match.
    pub combo_ok: bool,
    /// The room had PK traffic.
    pub pk: Option<PkCheck>,
}

impl Check {
    pub fn like_ok(&self) -> bool {
        self.like_got == self.like_want
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PkCheck {
    pub figures: PkFigures,
    /// The room got a final and this viewer did not.
    pub final_missing: bool,
    /// The last non-final value seen is the last one published.
    pub last_ok: bool,
    /// Two updates closer than half the interval: more than one per interval (half, to leave
    /// room for the edge's batching, which delays a message by up to a window).
    pub too_close: bool,
    /// Every published PK message is accounted for: Σ `merged` = updates + finals published.
    pub all_accounted: bool,
}

/// Judges `view` against `want`, its room's published traffic.
pub fn check(view: &View, want: &RoomExpect, interval_ms: u64) -> Check {
    let interval = interval_ms.min(u64::from(u32::MAX)) as u32;
    let pk = (want.pk_msgs + want.pk_finals > 0).then(|| {
        let figures = view.pk.figures(interval);
        PkCheck {
            figures,
            final_missing: want.pk_finals > 0 && figures.finals == 0,
            last_ok: figures.last_n == want.pk_last_n,
            too_close: figures
                .min_gap_ms
                .is_some_and(|gap| u64::from(gap) * 2 < interval_ms),
            all_accounted: figures.stands_for == want.pk_msgs + want.pk_finals,
        }
    });
    Check {
        like_got: view.like_sum,
        like_want: want.like_sum,
        combo_got: view.combo_sum,
        combo_want: want.combo_sum,
        combo_ok: view.combo_sum == want.combo_sum && view.combo_check == want.combo_check,
        pk,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A delivered message of `kind` with `data`.
    pub(crate) fn push<'a>(
        kind: Kind,
        data: &'a [u8],
        seq: u64,
        merged: u32,
        is_final: bool,
    ) -> PushRef<'a> {
        PushRef {
            seq,
            priority: kind.priority(),
            kind: kind.name(),
            data,
            merged,
            is_final,
            from: None,
            ack: false,
        }
    }

    fn traffic(pk: f64, likes: f64, combos: f64) -> Traffic {
        Traffic {
            pk_rate: pk,
            pk_interval_ms: 2000,
            like_rate: likes,
            combo_rate: combos,
            combo_keys: 40,
            rules: true,
        }
    }

    #[test]
    fn kinds_round_trip_and_other_kinds_are_the_loads() {
        for k in KINDS {
            assert_eq!(Kind::of(k.name()), Some(k));
            assert_eq!(KINDS[k.index()], k);
        }
        assert_eq!(Kind::of("bench"), None);
        assert_eq!(Kind::of("pkx"), None);
    }

    #[test]
    fn fields_are_read_without_parsing() {
        let d = combo_data(1_700_000_000_000_000, 66, 17);
        assert_eq!(field_u64(d.as_bytes(), "count"), Some(66));
        assert_eq!(field_u64(d.as_bytes(), "k"), Some(17));
        assert_eq!(field_u64(d.as_bytes(), "ts"), Some(1_700_000_000_000_000));
        assert_eq!(field_u64(d.as_bytes(), "user"), None, "a string");
        assert_eq!(field_u64(br#"{"counter":5,"count":7}"#, "count"), Some(7));
        assert_eq!(field_u64(br#"{"count":-1}"#, "count"), None);
        assert_eq!(field_u64(br#"{"count":"#, "count"), None);
        assert_eq!(field_u64(b"", "n"), None);
        // What the data look like, as JSON.
        let v: serde_json::Value = serde_json::from_str(&d).unwrap();
        assert_eq!(v["user"], "u4");
        assert_eq!(v["gift"], "gift2");
        let v: serde_json::Value = serde_json::from_str(&pk_data(5, 9, 100, 7)).unwrap();
        assert_eq!((v["n"].as_u64(), v["left"].as_u64()), (Some(9), Some(100)));
    }

    #[test]
    fn rules_are_the_documented_json() {
        let v: serde_json::Value = serde_json::from_str(&pk_rule(2000, false)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"key": "pk:1", "op": "latest", "interval_ms": 2000})
        );
        let v: serde_json::Value = serde_json::from_str(&pk_rule(2000, true)).unwrap();
        assert_eq!(v["final"], true);
        let v: serde_json::Value = serde_json::from_str(&sum_rule(&combo_key(9))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"key": "combo:u2:gift2", "op": "sum", "fields": ["count"]})
        );
    }

    #[test]
    fn the_generator_paces_every_stream_and_counts_whole_gifts() {
        let mut g = Generator::new(traffic(10.0, 100.0, 4.0), vec![0, 1]);
        let mut out = Vec::new();
        g.take_due(0.0, 1, 10_000, &mut out);
        assert_eq!(g.generated(), [1, 1, 1], "the first of each at once");
        assert_eq!(out.len(), 4, "one gift to both rooms, a like, a combo");
        assert_eq!(g.wait(0.0), Some(0.01), "the next like");
        g.take_due(1.0, 2, 10_000, &mut out);
        assert_eq!(g.generated(), [11, 101, 5]);
        assert_eq!(out.len(), 2 * 11 + 101 + 5);
        // A cap leaves the rest for the next call, never half a gift.
        let mut capped = Vec::new();
        g.take_due(2.0, 3, 5, &mut capped);
        assert_eq!(capped.len(), 6, "three gifts to two rooms");
        assert_eq!(g.generated()[0], 14);
        // The rooms alternate; PK updates carry the bar's running state.
        let likes: Vec<usize> = out
            .iter()
            .filter(|m| m.kind == Kind::Like)
            .map(|m| m.room)
            .take(4)
            .collect();
        assert_eq!(likes, [0, 1, 0, 1]);
        let pk: Vec<&Msg> = out.iter().filter(|m| m.kind == Kind::Pk).collect();
        let last: serde_json::Value = serde_json::from_slice(&pk.last().unwrap().data).unwrap();
        let (l, r) = (0..11).map(gift).fold(
            (0, 0),
            |(l, r), (left, v)| {
                if left {
                    (l + v, r)
                } else {
                    (l, r + v)
                }
            },
        );
        assert_eq!(
            (last["left"].as_u64(), last["right"].as_u64()),
            (Some(l), Some(r))
        );
        assert_eq!(last["n"], 10);
        assert!(pk.iter().all(|m| m.rule.is_some()));
        // Finals: one per room with the last gift's number and the final rule.
        let finals = g.finals(9);
        assert_eq!(finals.len(), 2);
        assert!(finals.iter().all(|m| m.sent
            == Sent::Pk {
                n: 13,
                is_final: true
            }));
        let rule: serde_json::Value =
            serde_json::from_slice(finals[0].rule.as_ref().unwrap()).unwrap();
        assert_eq!(rule["final"], true);
        // Without rules: the same messages, no merge object.
        let mut plain = Generator::new(
            Traffic {
                rules: false,
                ..traffic(1.0, 1.0, 1.0)
            },
            vec![3],
        );
        let mut out = Vec::new();
        plain.take_due(0.0, 1, 100, &mut out);
        assert!(out.iter().all(|m| m.rule.is_none() && m.room == 3));
        assert!(plain.finals(2).iter().all(|m| m.rule.is_none()));
        assert!(Generator::new(traffic(1.0, 0.0, 0.0), vec![0])
            .finals(1)
            .is_empty());
        assert_eq!(
            Generator::new(traffic(0.0, 0.0, 0.0), vec![0]).wait(1.0),
            None
        );
    }

    #[test]
    fn combo_keys_spread_and_their_rules_match_the_data() {
        let mut g = Generator::new(traffic(0.0, 0.0, 1000.0), vec![0]);
        let mut out = Vec::new();
        g.take_due(4.0, 1, 10_000, &mut out);
        let mut seen = [0u32; 40];
        for m in &out {
            let Sent::Combo { key, count } = m.sent else {
                panic!("a combo")
            };
            seen[key as usize] += 1;
            assert_eq!(field_u64(&m.data, "k"), Some(u64::from(key)));
            assert_eq!(field_u64(&m.data, "count"), Some(count));
            let rule: serde_json::Value = serde_json::from_slice(m.rule.as_ref().unwrap()).unwrap();
            assert_eq!(rule["key"], combo_key(key));
        }
        assert!(seen.iter().all(|&n| n > 50), "every key used: {seen:?}");
    }

    /// A viewer that receives `msgs` (each the first time), in order.
    fn viewer(msgs: &[Msg], expect: &mut RoomExpect) -> View {
        let mut v = View::default();
        for (i, m) in msgs.iter().enumerate() {
            expect.add(m.sent);
            let seq = i as u64 + 1;
            let is_final = matches!(m.sent, Sent::Pk { is_final: true, .. });
            v.on_message(
                m.kind,
                &push(m.kind, &m.data, seq, 1, is_final),
                i as u32,
                2000,
            )
            .unwrap();
        }
        v
    }

    #[test]
    fn sums_match_exactly_and_a_count_on_the_wrong_key_is_caught() {
        let mut g = Generator::new(traffic(0.0, 500.0, 50.0), vec![0]);
        let mut out = Vec::new();
        g.take_due(3.0, 1, 100_000, &mut out);
        let mut want = RoomExpect::default();
        let v = viewer(&out, &mut want);
        let c = check(&v, &want, 2000);
        assert!(c.like_ok() && c.combo_ok, "{c:?}");
        assert_eq!(c.pk, None, "no PK in this room");
        assert_eq!(want.like_msgs, 1501);
        assert!(want.like_sum > want.like_msgs, "some bursts");

        // Merged: a sum of the counts in one message stands for them all.
        let mut merged = View::default();
        merged
            .on_message(
                Kind::Like,
                &push(
                    Kind::Like,
                    like_data(1, want.like_sum).as_bytes(),
                    1,
                    1501,
                    false,
                ),
                0,
                2000,
            )
            .unwrap();
        assert_eq!(check(&merged, &want, 2000).like_got, want.like_sum);

        // One lost like: the sum is short.
        let mut short = View::default();
        for m in out.iter().filter(|m| m.kind == Kind::Like).skip(1) {
            short
                .on_message(m.kind, &push(m.kind, &m.data, 1, 1, false), 0, 2000)
                .unwrap();
        }
        assert!(!check(&short, &want, 2000).like_ok());

        // The right total on the wrong keys: the checksum differs.
        let mut moved = View::default();
        for m in out.iter().filter(|m| m.kind == Kind::Combo) {
            let Sent::Combo { key, count } = m.sent else {
                unreachable!()
            };
            let data = combo_data(1, count, (key + 1) % 40);
            moved
                .on_message(
                    Kind::Combo,
                    &push(Kind::Combo, data.as_bytes(), 1, 1, false),
                    0,
                    2000,
                )
                .unwrap();
        }
        let c = check(&moved, &want, 2000);
        assert_eq!(c.combo_got, c.combo_want);
        assert!(!c.combo_ok);

        assert_eq!(
            View::default().on_message(
                Kind::Like,
                &push(Kind::Like, b"{\"ts\":1}", 1, 1, false),
                0,
                2000
            ),
            Err(BadData)
        );
    }

    /// PK updates received at `times` (ms), seq i + 1 with n = i, then a final (seq).
    fn pk_viewer(times: &[u32], final_seq: Option<u64>) -> PkView {
        let mut v = PkView::default();
        for (i, &t) in times.iter().enumerate() {
            v.on_update(t, i as u64 + 1, i as u64, 1, 2000);
        }
        if let Some(seq) = final_seq {
            v.on_final(seq, 1, 2000);
        }
        v
    }

    #[test]
    fn pk_updates_once_per_interval_pass() {
        // Leading edge at once, then one per interval with the edge's batching jitter; the final
        // flushes the waiting value 300 ms after the last trailing edge.
        let times = [100, 2_050, 4_400, 6_100, 8_300, 8_600];
        let v = pk_viewer(&times, Some(7));
        let f = v.figures(2000);
        assert_eq!(f.flushed_by_final, 1);
        assert_eq!(f.updates, 5, "the flushed one is left out of the spacing");
        assert_eq!(f.min_gap_ms, Some(1_700));
        assert_eq!(f.span_ms, 8_200);
        assert_eq!(f.max_per_interval, 1);
        assert_eq!((f.finals, f.last_n), (1, Some(5)));
        let want = RoomExpect {
            pk_msgs: 6,
            pk_last_n: Some(5),
            pk_finals: 1,
            ..RoomExpect::default()
        };
        let c = check(
            &View {
                pk: v,
                ..View::default()
            },
            &want,
            2000,
        )
        .pk
        .unwrap();
        assert!(
            c.last_ok && !c.final_missing && !c.too_close && c.all_accounted,
            "{c:?}"
        );
    }

    #[test]
    fn pk_updates_too_close_or_a_missing_final_fail() {
        // A trailing edge and a new leading edge published together: two 5 ms apart.
        let v = pk_viewer(&[0, 2_000, 2_005, 4_000], None);
        let f = v.figures(2000);
        assert_eq!(f.updates, 4, "no final: the last one counts");
        assert_eq!(f.min_gap_ms, Some(5));
        assert_eq!(f.max_per_interval, 2);
        let want = RoomExpect {
            pk_msgs: 9,
            pk_last_n: Some(8),
            pk_finals: 1,
            ..RoomExpect::default()
        };
        let view = View {
            pk: v,
            ..View::default()
        };
        let c = check(&view, &want, 2000).pk.unwrap();
        assert!(c.too_close && c.final_missing && !c.last_ok && !c.all_accounted);
        // An update right before a final that did not flush it (another seq between) counts.
        let v = pk_viewer(&[0, 2_000, 2_100], Some(9));
        assert_eq!(v.figures(2000).flushed_by_final, 0);
        assert_eq!(v.figures(2000).min_gap_ms, Some(100));
        // A viewer that saw nothing.
        let f = PkView::default().figures(2000);
        assert_eq!((f.updates, f.min_gap_ms, f.last_n), (0, None, None));
    }
}
