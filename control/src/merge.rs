//! Merge rules (PROTOCOL.md §5 "Merged messages"): of the messages a channel gets with the same
//! merge key in one window, only the newest (`latest`) or their sum (`sum`) is published. Pure,
//! with time passed in; the router numbers what it releases, so merged messages take one `seq`
//! each and a client's `seq` continuity holds.
//!
//! Each key throttles with a leading and a trailing edge: a message to a key with no open window
//! is released at once and opens a window of the key's interval (its `interval_ms`, else the
//! room's tick); messages inside the window wait, merged into one; when the window ends the
//! merged message is released and a new window opens, or, when nothing waited, the key is
//! forgotten. So a key is released at most once per interval, and the last state before a quiet
//! spell is never lost to the throttle. A `final` message releases the key's waiting message,
//! then itself, and ends the key's window.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use roomcast_proto::message::Target;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// The most fields one `sum` rule lists.
pub const MAX_SUM_FIELDS: usize = 16;

/// The longest `interval_ms` accepted: one hour.
pub const MAX_INTERVAL_MS: u64 = 3_600_000;

/// What a key's window keeps of its messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeOp {
    /// Only the newest.
    Latest,
    /// The newest, with these top-level numeric fields of `data` summed over the window.
    Sum(Vec<String>),
}

/// A message's merge rule, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeRule {
    /// 1–128 bytes of the id alphabet, scoped to the channel.
    pub key: String,
    pub op: MergeOp,
    /// The key's own window instead of the room's tick.
    pub interval: Option<Duration>,
    /// The key's last message: released after the waiting one, never dropped by budgets or
    /// shedding.
    pub is_final: bool,
}

/// A summed field's value. Integers add exactly; a fraction (or an integer sum leaving `i64`)
/// makes the sum a float from then on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Amount {
    Int(i64),
    Float(f64),
}

impl Amount {
    /// A JSON number's value; None for anything else.
    pub fn parse(raw: &str) -> Option<Amount> {
        let number: serde_json::Number = serde_json::from_str(raw).ok()?;
        match number.as_i64() {
            Some(i) => Some(Amount::Int(i)),
            None => number.as_f64().filter(|f| f.is_finite()).map(Amount::Float),
        }
    }

    fn add(self, other: Amount) -> Amount {
        match (self, other) {
            (Amount::Int(a), Amount::Int(b)) => match a.checked_add(b) {
                Some(sum) => Amount::Int(sum),
                None => Amount::Float(a as f64 + b as f64),
            },
            (a, b) => Amount::Float(a.as_f64() + b.as_f64()),
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            Amount::Int(i) => i as f64,
            Amount::Float(f) => f,
        }
    }

    fn write(self, out: &mut String) {
        use std::fmt::Write;
        match self {
            Amount::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Amount::Float(f) => {
                // serde_json writes the shortest text that reads back as the same f64.
                out.push_str(
                    &serde_json::Number::from_f64(f).map_or("0".into(), |n| n.to_string()),
                );
            }
        }
    }
}

/// The top-level fields of a JSON object in their order, each value as raw JSON.
struct ObjectFields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for ObjectFields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = ObjectFields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::new();
                while let Some(name) = map.next_key::<Cow<'de, str>>()? {
                    fields.push((name, map.next_value::<&'de RawValue>()?));
                }
                Ok(ObjectFields(fields))
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

/// The amounts of a `sum` rule's `fields` in `data`, in the rule's order; the error says which
/// field is missing or not a number.
pub fn sum_amounts(data: &str, fields: &[String]) -> Result<Vec<Amount>, String> {
    let object: ObjectFields<'_> = serde_json::from_str(data)
        .map_err(|_| "data must be a JSON object for a sum merge".to_string())?;
    fields
        .iter()
        .map(|field| {
            let raw = object
                .0
                .iter()
                .rev() // a repeated name: JSON readers keep the last
                .find(|(name, _)| name == field)
                .map(|(_, raw)| raw.get())
                .ok_or_else(|| format!("data has no field `{field}` to sum"))?;
            Amount::parse(raw).ok_or_else(|| format!("data.{field} must be a number to sum"))
        })
        .collect()
}

/// `data` with the summed fields replaced by `amounts`: every other field is copied byte for
/// byte, in its order.
fn with_sums(data: &[u8], fields: &[String], amounts: &[Amount]) -> Bytes {
    let text = std::str::from_utf8(data).expect("data was checked as JSON");
    let object: ObjectFields<'_> =
        serde_json::from_str(text).expect("data was checked as an object");
    let mut out = String::with_capacity(data.len() + 16);
    out.push('{');
    for (i, (name, raw)) in object.0.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(name).expect("a string serializes"));
        out.push(':');
        match fields.iter().position(|f| f == name) {
            Some(at) => amounts[at].write(&mut out),
            None => out.push_str(raw.get()),
        }
    }
    out.push('}');
    Bytes::from(out)
}

/// A message offered to the merger.
#[derive(Debug, Clone)]
pub struct Offer {
    pub priority: u8,
    pub kind: String,
    pub data: Bytes,
    /// For a `sum` rule: the amounts of its fields ([`sum_amounts`]).
    pub amounts: Vec<Amount>,
}

/// What [`Merger::offer`] did with a message.
#[derive(Debug, Clone, PartialEq)]
pub struct Offered {
    /// To publish now, in order.
    pub released: Vec<Release>,
    /// The message waits in its key's window; else it is the last of `released`.
    pub held: bool,
}

/// A message to number and publish now.
#[derive(Debug, Clone, PartialEq)]
pub struct Release {
    pub target: Target,
    pub priority: u8,
    pub kind: String,
    pub data: Bytes,
    /// How many published messages it stands for (1 when it merged nothing).
    pub merged: u32,
    pub is_final: bool,
}

/// The merger's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MergeStats {
    /// Messages taken into a waiting merged message (not released on their own).
    pub merged: u64,
    /// Messages released at once because the held bytes were at the cap (their key's waiting
    /// message went first).
    pub bypassed: u64,
}

/// A message waiting for its key's window to end.
#[derive(Debug)]
struct Waiting {
    priority: u8,
    kind: String,
    data: Bytes,
    amounts: Vec<Amount>,
    merged: u32,
}

#[derive(Debug)]
struct KeyWindow {
    op: MergeOp,
    interval: Duration,
    /// When the open window ends.
    until: Instant,
    waiting: Option<Waiting>,
}

type KeyId = (Target, String);

/// Every open key window of every channel.
#[derive(Debug)]
pub struct Merger {
    keys: HashMap<KeyId, KeyWindow>,
    /// Window ends, possibly stale (a key's `until` moved or the key was forgotten).
    deadlines: BinaryHeap<Reverse<(Instant, KeyId)>>,
    /// Bytes of `data` waiting, and the cap past which messages are released unmerged.
    held_bytes: usize,
    max_held_bytes: usize,
    stats: MergeStats,
}

impl Merger {
    pub fn new(max_held_bytes: usize) -> Merger {
        Merger {
            keys: HashMap::new(),
            deadlines: BinaryHeap::new(),
            held_bytes: 0,
            max_held_bytes,
            stats: MergeStats::default(),
        }
    }

    /// Takes a message with a merge rule; returns what to publish now, in order, and whether the
    /// message itself waits (else it is the last released). `tick` is the channel's window when
    /// the rule has no `interval`.
    pub fn offer(
        &mut self,
        target: &Target,
        rule: &MergeRule,
        msg: Offer,
        tick: Duration,
        now: Instant,
    ) -> Offered {
        let id: KeyId = (target.clone(), rule.key.clone());
        let release = |m: Offer, merged, is_final| Release {
            target: target.clone(),
            priority: m.priority,
            kind: m.kind,
            data: m.data,
            merged,
            is_final,
        };
        let over_cap = self.held_bytes + msg.data.len() > self.max_held_bytes;
        if rule.is_final || over_cap {
            let mut out = Vec::with_capacity(2);
            if let Some(window) = self.keys.remove(&id) {
                out.extend(self.release_waiting(target, window));
            }
            if over_cap && !rule.is_final {
                self.stats.bypassed += 1;
            }
            out.push(release(msg, 1, rule.is_final));
            return Offered {
                released: out,
                held: false,
            };
        }
        let interval = rule.interval.unwrap_or(tick);
        // The flusher may not have run yet for a window that has ended: end it now, as it
        // would have, so the message lands in the window it arrived in.
        let mut out: Vec<Release> = self.catch_up(&id, now).into_iter().collect();
        match self.keys.get_mut(&id) {
            // An open window of the same op: the message waits, merged.
            Some(window) if window.op == rule.op => {
                self.stats.merged += 1;
                window.interval = interval;
                match &mut window.waiting {
                    Some(waiting) => {
                        self.held_bytes = self.held_bytes - waiting.data.len() + msg.data.len();
                        for (sum, amount) in waiting.amounts.iter_mut().zip(&msg.amounts) {
                            *sum = sum.add(*amount);
                        }
                        waiting.priority = msg.priority;
                        waiting.kind = msg.kind;
                        waiting.data = msg.data;
                        waiting.merged += 1;
                    }
                    None => {
                        self.held_bytes += msg.data.len();
                        window.waiting = Some(Waiting {
                            priority: msg.priority,
                            kind: msg.kind,
                            data: msg.data,
                            amounts: msg.amounts,
                            merged: 1,
                        });
                    }
                }
                Offered {
                    released: out,
                    held: true,
                }
            }
            // No open window (or the rule changed op): release at once and open one.
            _ => {
                if let Some(window) = self.keys.remove(&id) {
                    out.extend(self.release_waiting(target, window));
                }
                out.push(release(msg, 1, false));
                if !interval.is_zero() {
                    let until = now + interval;
                    self.deadlines.push(Reverse((until, id.clone())));
                    self.keys.insert(
                        id,
                        KeyWindow {
                            op: rule.op.clone(),
                            interval,
                            until,
                            waiting: None,
                        },
                    );
                }
                Offered {
                    released: out,
                    held: false,
                }
            }
        }
    }

    /// Ends a key's window that ended by `now` as [`Merger::due`] would have: its waiting
    /// message is released now and the next window opens now; one that ended with nothing
    /// waiting forgets the key.
    fn catch_up(&mut self, id: &KeyId, now: Instant) -> Option<Release> {
        let window = self.keys.get_mut(id).filter(|w| now >= w.until)?;
        let Some(waiting) = window.waiting.take() else {
            self.keys.remove(id);
            return None;
        };
        // The old deadline in the heap goes stale (`until` moved).
        window.until = now + window.interval;
        self.deadlines.push(Reverse((window.until, id.clone())));
        self.held_bytes -= waiting.data.len();
        Some(to_release(&id.0, &window.op, waiting))
    }

    /// Ends the windows due by `now`: releases their waiting messages (opening the next window)
    /// and forgets keys with nothing waiting.
    pub fn due(&mut self, now: Instant) -> Vec<Release> {
        let mut out = Vec::new();
        while let Some(Reverse((at, _))) = self.deadlines.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, id))) = self.deadlines.pop() else {
                break;
            };
            let Some(window) = self.keys.get_mut(&id) else {
                continue; // forgotten since
            };
            if window.until != at {
                continue; // a stale deadline
            }
            match window.waiting.take() {
                Some(waiting) => {
                    // From the release, not from `at`: a late flush must not shorten the next
                    // window (at most one delivery per interval).
                    window.until = now + window.interval;
                    self.deadlines.push(Reverse((window.until, id.clone())));
                    self.held_bytes -= waiting.data.len();
                    out.push(to_release(&id.0, &window.op, waiting));
                }
                None => {
                    self.keys.remove(&id);
                }
            }
        }
        out
    }

    /// Ends every window now (a shutdown): returns their waiting messages, oldest window end
    /// first, and forgets every key.
    pub fn drain(&mut self) -> Vec<Release> {
        let mut windows: Vec<(KeyId, KeyWindow)> = self.keys.drain().collect();
        windows.sort_by_key(|(_, w)| w.until);
        self.deadlines.clear();
        self.held_bytes = 0;
        windows
            .into_iter()
            .filter_map(|((target, _), w)| {
                let waiting = w.waiting?;
                Some(to_release(&target, &w.op, waiting))
            })
            .collect()
    }

    /// When [`Merger::due`] next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((at, _))| *at)
    }

    /// Open key windows, and bytes of `data` waiting in them.
    pub fn held(&self) -> (usize, usize) {
        (self.keys.len(), self.held_bytes)
    }

    pub fn stats(&self) -> MergeStats {
        self.stats
    }

    fn release_waiting(&mut self, target: &Target, window: KeyWindow) -> Option<Release> {
        let waiting = window.waiting?;
        self.held_bytes -= waiting.data.len();
        Some(to_release(target, &window.op, waiting))
    }
}

fn to_release(target: &Target, op: &MergeOp, waiting: Waiting) -> Release {
    let data = match op {
        MergeOp::Sum(fields) if waiting.merged > 1 => {
            with_sums(&waiting.data, fields, &waiting.amounts)
        }
        _ => waiting.data,
    };
    Release {
        target: target.clone(),
        priority: waiting.priority,
        kind: waiting.kind,
        data,
        merged: waiting.merged,
        is_final: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(100);

    fn room() -> Target {
        Target::Room("r1".into())
    }

    fn latest(key: &str, interval_ms: Option<u64>) -> MergeRule {
        MergeRule {
            key: key.into(),
            op: MergeOp::Latest,
            interval: interval_ms.map(Duration::from_millis),
            is_final: false,
        }
    }

    fn sum(key: &str, fields: &[&str]) -> MergeRule {
        MergeRule {
            key: key.into(),
            op: MergeOp::Sum(fields.iter().map(|f| f.to_string()).collect()),
            interval: None,
            is_final: false,
        }
    }

    fn offer(rule: &MergeRule, data: &str) -> Offer {
        let amounts = match &rule.op {
            MergeOp::Sum(fields) => sum_amounts(data, fields).expect("valid amounts"),
            MergeOp::Latest => Vec::new(),
        };
        Offer {
            priority: 2,
            kind: "k".into(),
            data: Bytes::copy_from_slice(data.as_bytes()),
            amounts,
        }
    }

    fn datas(releases: &[Release]) -> Vec<(String, u32, bool)> {
        releases
            .iter()
            .map(|r| {
                (
                    String::from_utf8(r.data.to_vec()).expect("utf-8"),
                    r.merged,
                    r.is_final,
                )
            })
            .collect()
    }

    /// What an offer released, empty when the message waits (checked against `held`).
    fn offer_now(
        m: &mut Merger,
        target: &Target,
        rule: &MergeRule,
        msg: Offer,
        tick: Duration,
        now: Instant,
    ) -> Vec<Release> {
        let offered = m.offer(target, rule, msg, tick, now);
        assert_eq!(offered.held, offered.released.is_empty(), "{offered:?}");
        offered.released
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn latest_releases_the_first_at_once_and_the_newest_at_the_window_end() {
        let mut m = Merger::new(1 << 20);
        let t0 = Instant::now();
        let rule = latest("pk:7", None);
        let first = offer_now(&mut m, &room(), &rule, offer(&rule, "1"), TICK, t0);
        assert_eq!(datas(&first), [("1".into(), 1, false)]);
        for (i, v) in ["2", "3", "4"].iter().enumerate() {
            let out = offer_now(
                &mut m,
                &room(),
                &rule,
                offer(&rule, v),
                TICK,
                t0 + ms(10 * i as u64 + 10),
            );
            assert!(out.is_empty(), "inside the window the message waits");
        }
        assert!(m.due(t0 + ms(99)).is_empty());
        assert_eq!(m.next_deadline(), Some(t0 + TICK));
        assert_eq!(datas(&m.due(t0 + TICK)), [("4".into(), 3, false)]);
        // The next window is open: a message now waits for its end.
        assert!(offer_now(
            &mut m,
            &room(),
            &rule,
            offer(&rule, "5"),
            TICK,
            t0 + ms(150)
        )
        .is_empty());
        assert_eq!(datas(&m.due(t0 + ms(200))), [("5".into(), 1, false)]);
        // A window that ends with nothing waiting forgets the key; the next message goes at once.
        assert!(m.due(t0 + ms(300)).is_empty());
        assert_eq!(m.held(), (0, 0));
        let again = offer_now(
            &mut m,
            &room(),
            &rule,
            offer(&rule, "6"),
            TICK,
            t0 + ms(301),
        );
        assert_eq!(datas(&again), [("6".into(), 1, false)]);
    }

    #[test]
    fn an_interval_releases_at_most_once_per_interval_and_always_the_last_value() {
        let mut m = Merger::new(1 << 20);
        let t0 = Instant::now();
        let rule = latest("pk:7", Some(2000));
        let mut released = Vec::new();
        // 1,000 updates a second for 5 s.
        for i in 0..5000u64 {
            let now = t0 + ms(i);
            released.extend(m.due(now).into_iter().map(|r| (now, r)));
            let out = offer_now(
                &mut m,
                &room(),
                &rule,
                offer(&rule, &i.to_string()),
                TICK,
                now,
            );
            released.extend(out.into_iter().map(|r| (now, r)));
        }
        let end = t0 + ms(10_000);
        while let Some(at) = m.next_deadline().filter(|&at| at <= end) {
            released.extend(m.due(at).into_iter().map(|r| (at, r)));
        }
        let times: Vec<u64> = released
            .iter()
            .map(|(at, _)| at.duration_since(t0).as_millis() as u64)
            .collect();
        assert_eq!(times, [0, 2000, 4000, 6000]);
        let values: Vec<String> = released
            .iter()
            .map(|(_, r)| String::from_utf8(r.data.to_vec()).expect("utf-8"))
            .collect();
        assert_eq!(
            values,
            ["0", "1999", "3999", "4999"],
            "trailing edge keeps the last"
        );
        let merged: u32 = released.iter().map(|(_, r)| r.merged).sum();
        assert_eq!(merged, 5000, "every message is accounted for");
    }

    #[test]
    fn sum_adds_the_listed_fields_and_keeps_the_newest_others_in_order() {
        let mut m = Merger::new(1 << 20);
        let t0 = Instant::now();
        let rule = sum("combo:u42:rocket", &["count", "value"]);
        let msgs = [
            r#"{"user":"u42","count":1,"value":2.5,"gift":"rocket"}"#,
            r#"{"user":"u42","count":2,"value":1,"gift":"rocket","n":1}"#,
            r#"{"count":3,"user":"u42","value":0.5,"gift":"rocket2","n":2}"#,
        ];
        let first = offer_now(&mut m, &room(), &rule, offer(&rule, msgs[0]), TICK, t0);
        assert_eq!(datas(&first), [(msgs[0].into(), 1, false)]);
        for msg in &msgs[1..] {
            assert!(
                offer_now(&mut m, &room(), &rule, offer(&rule, msg), TICK, t0 + ms(5)).is_empty()
            );
        }
        assert_eq!(
            datas(&m.due(t0 + TICK)),
            [(
                r#"{"count":5,"user":"u42","value":1.5,"gift":"rocket2","n":2}"#.into(),
                2,
                false
            )]
        );
    }

    #[test]
    fn integer_sums_stay_exact_and_overflow_to_a_float() {
        let big = i64::MAX - 1;
        assert_eq!(Amount::Int(big).add(Amount::Int(1)), Amount::Int(i64::MAX));
        assert_eq!(
            Amount::Int(i64::MAX).add(Amount::Int(1)),
            Amount::Float(i64::MAX as f64 + 1.0)
        );
        assert_eq!(Amount::Int(3).add(Amount::Float(0.5)), Amount::Float(3.5));
        assert_eq!(
            Amount::parse("9007199254740993"),
            Some(Amount::Int(9007199254740993))
        );
        assert_eq!(Amount::parse("1e3"), Some(Amount::Float(1000.0)));
        assert_eq!(Amount::parse("\"1\""), None);
        assert_eq!(Amount::parse("null"), None);
    }

    #[test]
    fn sum_amounts_name_the_field_at_fault() {
        let fields = vec!["count".to_string()];
        assert_eq!(
            sum_amounts(r#"{"count":7}"#, &fields),
            Ok(vec![Amount::Int(7)])
        );
        assert_eq!(
            sum_amounts(r#"{"n":7}"#, &fields),
            Err("data has no field `count` to sum".into())
        );
        assert_eq!(
            sum_amounts(r#"{"count":"7"}"#, &fields),
            Err("data.count must be a number to sum".into())
        );
        assert_eq!(
            sum_amounts("[1]", &fields),
            Err("data must be a JSON object for a sum merge".into())
        );
    }

    #[test]
    fn a_final_releases_the_waiting_value_then_itself_and_ends_the_window() {
        let mut m = Merger::new(1 << 20);
        let t0 = Instant::now();
        let rule = latest("pk:7", Some(2000));
        offer_now(&mut m, &room(), &rule, offer(&rule, "1"), TICK, t0);
        offer_now(&mut m, &room(), &rule, offer(&rule, "2"), TICK, t0 + ms(10));
        offer_now(&mut m, &room(), &rule, offer(&rule, "3"), TICK, t0 + ms(20));
        let mut fin = rule.clone();
        fin.is_final = true;
        let out = offer_now(&mut m, &room(), &fin, offer(&fin, "9"), TICK, t0 + ms(30));
        assert_eq!(datas(&out), [("3".into(), 2, false), ("9".into(), 1, true)]);
        assert_eq!(m.held(), (0, 0));
        assert!(
            m.due(t0 + ms(5000)).is_empty(),
            "the ended window releases nothing"
        );
        // A final with nothing waiting is released alone.
        let out = offer_now(
            &mut m,
            &room(),
            &fin,
            offer(&fin, "10"),
            TICK,
            t0 + ms(6000),
        );
        assert_eq!(datas(&out), [("10".into(), 1, true)]);
    }

    #[test]
    fn keys_are_scoped_to_their_channel() {
        let mut m = Merger::new(1 << 20);
        let t0 = Instant::now();
        let rule = latest("pk:7", None);
        let other = Target::Room("r2".into());
        assert_eq!(
            offer_now(&mut m, &room(), &rule, offer(&rule, "1"), TICK, t0).len(),
            1
        );
        assert_eq!(
            offer_now(&mut m, &other, &rule, offer(&rule, "2"), TICK, t0).len(),
            1
        );
        assert!(offer_now(&mut m, &room(), &rule, offer(&rule, "3"), TICK, t0).is_empty());
        let due = m.due(t0 + TICK);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].target, room());
    }

    #[test]
    fn at_the_byte_cap_a_message_goes_out_unmerged_after_its_waiting_one() {
        let mut m = Merger::new(4);
        let t0 = Instant::now();
        let rule = latest("k", None);
        offer_now(&mut m, &room(), &rule, offer(&rule, "1"), TICK, t0);
        assert!(offer_now(&mut m, &room(), &rule, offer(&rule, "22"), TICK, t0).is_empty());
        assert_eq!(m.held(), (1, 2));
        let out = offer_now(&mut m, &room(), &rule, offer(&rule, "333"), TICK, t0);
        assert_eq!(
            datas(&out),
            [("22".into(), 1, false), ("333".into(), 1, false)]
        );
        assert_eq!(m.stats().bypassed, 1);
        assert_eq!(m.held(), (0, 0));
    }

    #[test]
    fn a_message_after_a_windows_end_the_flusher_missed_waits_for_the_next_window() {
        let mut m = Merger::new(1 << 20);
        let t0 = Instant::now();
        let rule = latest("k", Some(100));
        m.offer(&room(), &rule, offer(&rule, "1"), TICK, t0);
        m.offer(&room(), &rule, offer(&rule, "2"), TICK, t0 + ms(50));
        // The window ended at 100 and `due` has not run: "2" goes now (110), and "3" waits a
        // whole interval after that release.
        let late = m.offer(&room(), &rule, offer(&rule, "3"), TICK, t0 + ms(110));
        assert!(late.held);
        assert_eq!(datas(&late.released), [("2".into(), 1, false)]);
        assert!(
            m.due(t0 + ms(209)).is_empty(),
            "the stale deadline at 100 is skipped"
        );
        assert_eq!(datas(&m.due(t0 + ms(210))), [("3".into(), 1, false)]);
        // A late flush too starts the next window at the release, not at the missed deadline.
        m.offer(&room(), &rule, offer(&rule, "4"), TICK, t0 + ms(250));
        assert_eq!(datas(&m.due(t0 + ms(390))), [("4".into(), 1, false)]);
        assert_eq!(m.next_deadline(), Some(t0 + ms(490)));
        // A window that ended with nothing waiting forgets the key: the next message goes at
        // once, even before the flusher noticed.
        let after = m.offer(&room(), &rule, offer(&rule, "5"), TICK, t0 + ms(600));
        assert!(!after.held);
        assert_eq!(datas(&after.released), [("5".into(), 1, false)]);
    }

    #[test]
    fn a_drain_releases_every_waiting_message_and_forgets_every_key() {
        let mut m = Merger::new(1 << 20);
        let t0 = Instant::now();
        let a = latest("a", Some(1000));
        let b = latest("b", Some(500));
        let c = latest("c", Some(500));
        for rule in [&a, &b, &c] {
            offer_now(&mut m, &room(), rule, offer(rule, "1"), TICK, t0);
        }
        offer_now(&mut m, &room(), &a, offer(&a, "2"), TICK, t0);
        offer_now(&mut m, &room(), &b, offer(&b, "3"), TICK, t0);
        assert_eq!(
            datas(&m.drain()),
            [("3".into(), 1, false), ("2".into(), 1, false)]
        );
        assert_eq!(m.held(), (0, 0));
        assert_eq!(m.next_deadline(), None);
    }

    #[test]
    fn a_zero_window_releases_every_message() {
        let mut m = Merger::new(1 << 20);
        let t0 = Instant::now();
        let rule = latest("k", None);
        for v in ["1", "2", "3"] {
            assert_eq!(
                offer_now(&mut m, &room(), &rule, offer(&rule, v), Duration::ZERO, t0).len(),
                1
            );
        }
        assert_eq!(m.held(), (0, 0));
        assert_eq!(m.next_deadline(), None);
    }
}
