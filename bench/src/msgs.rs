//! What a client process and the coordinator say to each other, and the counters they add up.
//!
//! Coordinator → client: one command per line on the client's stdin (`warmup`, `start`, `end`,
//! `snap <tag>`, `drop`, `expect <json>` (merge traffic, before `final`), `final <json>`, `exit`;
//! EOF means exit). Client → coordinator: one JSON object per
//! line on its stdout ([`ClientMsg`]). The client's stderr passes through.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use roomcast_proto::message::PRIORITIES;
use serde::{Deserialize, Serialize};

use crate::merge::Check;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    /// Every connection of the process is joined or has failed for good.
    Connected(Connected),
    /// Once a second: running totals and the latency of the last second.
    Tick(Tick),
    /// Answer to `snap <tag>`.
    Snap(Snap),
    /// Answer to `final`: everything.
    Report(Box<Report>),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Connected {
    pub index: usize,
    pub pid: u32,
    pub fd_soft: u64,
    pub fd_hard: u64,
    pub target: usize,
    /// Connections that completed connect, handshake, auth and join.
    pub ready: u64,
    /// Connections that gave up after all retries.
    pub failed: u64,
    /// Attempts that failed (retried or not), by reason.
    pub failures: BTreeMap<String, u64>,
    /// Seconds from process start until the last connection was ready or failed.
    pub connect_secs: f64,
    /// Per-connection setup time (connect → join reply) of successful attempts, ms.
    pub setup_ms: Vec<(u64, u64)>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Tick {
    pub index: usize,
    /// When the process put this tick together (unix µs): rates are taken between ticks.
    pub at_us: u64,
    /// Connections joined now.
    pub open: u64,
    /// Running totals.
    pub frames: u64,
    pub msgs: u64,
    pub reconnects: u64,
    /// Upstream (`--senders`): sends written and replies read, running totals.
    #[serde(default)]
    pub sends: u64,
    #[serde(default)]
    pub send_replies: u64,
    /// Latency of the normal group's messages received during the last second (µs, 2 digits).
    pub latency_us: Vec<(u64, u64)>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snap {
    pub index: usize,
    pub tag: String,
    pub frames: u64,
    pub msgs: u64,
    pub open: u64,
}

/// What one group of connections received in one priority.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PriorityReport {
    /// Messages published to the rooms of this group's open connections, summed over them.
    pub expected: u64,
    /// Messages received (with duplicates), and received for the first time.
    pub received: u64,
    pub unique: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Publish → receive latency inside the measured window: (µs, count).
    pub latency_us: Vec<(u64, u64)>,
}

impl PriorityReport {
    fn merge(&mut self, o: &PriorityReport) {
        self.expected += o.expected;
        self.received += o.received;
        self.unique += o.unique;
        self.duplicates += o.duplicates;
        self.out_of_order += o.out_of_order;
        self.latency_us = merge_pairs(&self.latency_us, &o.latency_us);
    }
}

/// One group's connections (see [`crate::dist::Group`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GroupReport {
    /// Connections of this group joined at the end (the unrecovered ones of a reconnect storm
    /// apart).
    pub open: u64,
    /// Connections of this group joined at the end that were not recovered after a drop:
    /// judged in the [`RecoveryReport`] instead.
    #[serde(default)]
    pub unrecovered: u64,
    pub priorities: [PriorityReport; PRIORITIES],
}

impl GroupReport {
    fn merge(&mut self, o: &GroupReport) {
        self.open += o.open;
        self.unrecovered += o.unrecovered;
        for (a, b) in self.priorities.iter_mut().zip(&o.priorities) {
            a.merge(b);
        }
    }
}

/// Totals of one client process (or, merged, of all of them).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub ready: u64,
    /// Joined connections still open now.
    pub open: u64,
    /// Joined connections the server closed, by close code / reason.
    pub closed: BTreeMap<String, u64>,
    /// Churn: connections closed on purpose, and joined again.
    pub churn_closes: u64,
    pub reconnects: u64,
    /// Setup time (connect → join reply) of the reconnects: (ms, count).
    pub reconnect_setup_ms: Vec<(u64, u64)>,
    /// Batch frames and logical messages received over the whole run.
    pub frames: u64,
    pub msgs: u64,
    pub bytes: u64,
    /// Inside the measured window (between `start` and `end`).
    pub window_frames: u64,
    pub window_msgs: u64,
    /// Room online counts (`room` pushes) received in the window.
    #[serde(default)]
    pub window_online_counts: u64,
    /// Per group ([`crate::dist::Group::index`]).
    pub groups: [GroupReport; 3],
    /// The normal group's latency during the warm-up, every priority: (µs, count).
    pub warmup_latency_us: Vec<(u64, u64)>,
    /// Open connections per room index at the end: (room, connections), by room.
    pub open_per_room: Vec<(usize, u64)>,
    /// Batches for another channel than the connection's room, undecodable frames.
    pub foreign: u64,
    pub decode_errors: u64,
    /// Messages whose data had no "ts" field.
    pub no_ts: u64,
    pub pings_sent: u64,
    pub pongs: u64,
    pub ping_errors: u64,
    pub cpu_secs: f64,
    pub rss: u64,
    /// The reconnect storm (`--drop-all-at`); all zero without one.
    #[serde(default)]
    pub recovery: RecoveryReport,
    /// Merge traffic (`--pk-rate`, `--like-rate`, `--combo-rate`); all zero without it.
    #[serde(default)]
    pub merge: MergeReport,
    /// Upstream (`--senders`): the sends and their replies, and the published ones as the
    /// viewers got them; all zero without senders.
    #[serde(default)]
    pub upstream: UpstreamReport,
}

/// What became of a set of sends (`--senders`), by their reply: published (`msg_seq`), accepted
/// but not broadcast (`"broadcast":false`), or an error code.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SendCounts {
    /// Sends written to the socket.
    pub attempted: u64,
    /// Of them, replies read (each send's first; a second would be an unexpected reply).
    pub answered: u64,
    pub published: u64,
    pub not_broadcast: u64,
    /// A successful reply with neither `msg_seq` nor `broadcast:false` (off protocol).
    pub ok_without_details: u64,
    /// Error replies by code (`rate_limited`, `unavailable`, `rejected`, ...).
    pub errors: BTreeMap<String, u64>,
}

impl SendCounts {
    pub fn merge(&mut self, o: &SendCounts) {
        self.attempted += o.attempted;
        self.answered += o.answered;
        self.published += o.published;
        self.not_broadcast += o.not_broadcast;
        self.ok_without_details += o.ok_without_details;
        add_counts(&mut self.errors, &o.errors);
    }

    /// Error replies of one code.
    pub fn error(&self, code: &str) -> u64 {
        self.errors.get(code).copied().unwrap_or(0)
    }
}

/// Upstream (`--senders`, PROTOCOL.md §5 "Upstream"): the sender connections' sends and replies,
/// and what the viewers received of the published ones (messages with `from`). Histograms are
/// (µs, count) pairs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UpstreamReport {
    /// Sender connections.
    pub senders: u64,
    /// Sends written in the measured window (by when they were written, whenever answered),
    /// and over the whole run.
    pub window: SendCounts,
    pub run: SendCounts,
    /// Sends without a reply at the end: their connection still open, or closed since.
    pub unanswered_open: u64,
    pub unanswered_closed: u64,
    /// Replies whose `seq` names no send waiting for one (a second reply, or a stranger's).
    pub unexpected_replies: u64,
    /// Error replies over the whole run by `code: message` (which limit said `rate_limited`,
    /// which hop said `unavailable`).
    #[serde(default)]
    pub error_messages: BTreeMap<String, u64>,
    /// Sends the schedule skipped: the connection was not joined then; the loop was more than
    /// one round (1 / rate) behind.
    pub skipped_not_ready: u64,
    pub skipped_behind: u64,
    /// Sends answered `published`, by room index: what each room's viewers should receive.
    pub published_per_room: Vec<(usize, u64)>,
    /// Viewers judged at the end (open, not churners, never dropped), by room index.
    pub judged_per_room: Vec<(usize, u64)>,
    /// Published sends received for the first time by the judged viewers.
    pub judged_unique: u64,
    /// Every viewer: messages with `from` received (duplicates included), duplicates, out of
    /// order, without a `ts`; received in the measured window.
    pub received: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub no_ts: u64,
    pub window_received: u64,
    /// Send written → its reply read, sends written in the window.
    pub reply_us: Vec<(u64, u64)>,
    /// Send written (the `ts` in its data) → a viewer read the published message, normal
    /// group, in the window.
    pub delivery_us: Vec<(u64, u64)>,
}

impl UpstreamReport {
    pub fn merge(&mut self, o: &UpstreamReport) {
        self.senders += o.senders;
        self.window.merge(&o.window);
        self.run.merge(&o.run);
        self.unanswered_open += o.unanswered_open;
        self.unanswered_closed += o.unanswered_closed;
        self.unexpected_replies += o.unexpected_replies;
        add_counts(&mut self.error_messages, &o.error_messages);
        self.skipped_not_ready += o.skipped_not_ready;
        self.skipped_behind += o.skipped_behind;
        self.published_per_room = add_by_key(&self.published_per_room, &o.published_per_room);
        self.judged_per_room = add_by_key(&self.judged_per_room, &o.judged_per_room);
        self.judged_unique += o.judged_unique;
        self.received += o.received;
        self.duplicates += o.duplicates;
        self.out_of_order += o.out_of_order;
        self.no_ts += o.no_ts;
        self.window_received += o.window_received;
        self.reply_us = merge_pairs(&self.reply_us, &o.reply_us);
        self.delivery_us = merge_pairs(&self.delivery_us, &o.delivery_us);
    }

    /// Deliveries the judged viewers should have had: each room's published sends times its
    /// judged viewers (every viewer, the sender too, gets every message of its room).
    pub fn expected_deliveries(&self) -> u64 {
        self.published_per_room
            .iter()
            .map(|&(room, n)| {
                let viewers = self
                    .judged_per_room
                    .iter()
                    .find(|(r, _)| *r == room)
                    .map_or(0, |(_, v)| *v);
                n * viewers
            })
            .sum()
    }
}

/// (key, count) pairs added by key, sorted by key.
fn add_by_key(a: &[(usize, u64)], b: &[(usize, u64)]) -> Vec<(usize, u64)> {
    let mut sum: BTreeMap<usize, u64> = a.iter().copied().collect();
    for &(k, n) in b {
        *sum.entry(k).or_default() += n;
    }
    sum.into_iter().collect()
}

/// Merge traffic (the `pk` and `like-storm` scenarios, [`crate::merge`]) as the viewers got it:
/// what arrived per kind ([`crate::merge::Kind`] order: pk, like, combo), and every judged viewer's checks
/// against what its room was published. Judged: normal-group viewers open at the end that never
/// lost their connection.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MergeReport {
    /// Merge-traffic messages received for the first time, per kind (whole run, every viewer).
    pub received: [u64; 3],
    /// Σ `merged` of them: the published messages they stand for.
    pub stands_for: [u64; 3],
    /// Of them, received without a merge rule (`merged` 0).
    pub unmerged: [u64; 3],
    /// Received in the measured window, per kind.
    pub window_received: [u64; 3],
    /// `final` messages received.
    pub finals: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Merge-traffic messages whose data lacked `count`, `k` or `n`.
    pub bad_data: u64,
    /// Viewers judged.
    pub judged: u64,
    /// Viewers whose like (combo) sums differ from what their room was published, and the sums
    /// over every judged viewer (got, published).
    pub like_mismatches: u64,
    pub like_got: u64,
    pub like_want: u64,
    pub combo_mismatches: u64,
    pub combo_got: u64,
    pub combo_want: u64,
    /// Judged viewers of rooms with PK traffic.
    pub pk_judged: u64,
    /// Of them: no final although the room got one; the last value seen is not the last
    /// published; two updates closer than half the interval; not every published PK message
    /// accounted for (Σ `merged`).
    pub pk_final_missing: u64,
    pub pk_last_mismatches: u64,
    pub pk_too_close: u64,
    pub pk_unaccounted: u64,
    /// Updates counted in the spacing, summed; Σ (updates − 1) and Σ of each viewer's first →
    /// last update time (the mean gap is their ratio); updates a final flushed (left out).
    pub pk_updates: u64,
    pub pk_gaps: u64,
    pub pk_span_ms: u64,
    pub pk_flushed_by_final: u64,
    /// The most updates one viewer got in one interval-long slot, and the closest two any viewer
    /// got (ms).
    pub pk_max_per_interval: u64,
    pub pk_min_gap_ms: Option<u64>,
    /// A few mismatching viewers, described.
    pub examples: Vec<String>,
    /// Publish (the newest merged message's `ts`) → received, per kind, normal group, measured
    /// window: how stale a delivered value is. (µs, count).
    pub latency_us: [Vec<(u64, u64)>; 3],
}

/// Mismatching viewers described in a report, at most.
const MERGE_EXAMPLES: usize = 5;

impl MergeReport {
    /// Adds one judged viewer; `who` describes it when something is off.
    pub fn add_viewer(&mut self, c: &Check, who: impl FnOnce() -> String) {
        self.judged += 1;
        let mut wrong: Vec<String> = Vec::new();
        self.like_got += c.like_got;
        self.like_want += c.like_want;
        if !c.like_ok() {
            self.like_mismatches += 1;
            wrong.push(format!("like sum {} of {}", c.like_got, c.like_want));
        }
        self.combo_got += c.combo_got;
        self.combo_want += c.combo_want;
        if !c.combo_ok {
            self.combo_mismatches += 1;
            wrong.push(format!(
                "combo sum {} of {}{}",
                c.combo_got,
                c.combo_want,
                if c.combo_got == c.combo_want {
                    " (on the wrong keys)"
                } else {
                    ""
                }
            ));
        }
        if let Some(pk) = &c.pk {
            let f = &pk.figures;
            self.pk_judged += 1;
            self.pk_updates += u64::from(f.updates);
            self.pk_gaps += u64::from(f.updates.saturating_sub(1));
            self.pk_span_ms += u64::from(f.span_ms);
            self.pk_flushed_by_final += u64::from(f.flushed_by_final);
            self.pk_max_per_interval = self.pk_max_per_interval.max(f.max_per_interval.into());
            if let Some(gap) = f.min_gap_ms {
                let gap = u64::from(gap);
                self.pk_min_gap_ms = Some(self.pk_min_gap_ms.map_or(gap, |m| m.min(gap)));
            }
            if pk.final_missing {
                self.pk_final_missing += 1;
                wrong.push("no final".into());
            }
            if !pk.last_ok {
                self.pk_last_mismatches += 1;
                wrong.push(format!("last value n={:?}", f.last_n));
            }
            if pk.too_close {
                self.pk_too_close += 1;
                wrong.push(format!(
                    "two PK updates {} ms apart",
                    f.min_gap_ms.unwrap_or(0)
                ));
            }
            if !pk.all_accounted {
                self.pk_unaccounted += 1;
                wrong.push(format!("PK updates stand for {} messages", f.stands_for));
            }
        }
        if !wrong.is_empty() && self.examples.len() < MERGE_EXAMPLES {
            self.examples
                .push(format!("{}: {}", who(), wrong.join(", ")));
        }
    }

    pub fn merge(&mut self, o: &MergeReport) {
        for i in 0..3 {
            self.received[i] += o.received[i];
            self.stands_for[i] += o.stands_for[i];
            self.unmerged[i] += o.unmerged[i];
            self.window_received[i] += o.window_received[i];
            self.latency_us[i] = merge_pairs(&self.latency_us[i], &o.latency_us[i]);
        }
        self.finals += o.finals;
        self.duplicates += o.duplicates;
        self.out_of_order += o.out_of_order;
        self.bad_data += o.bad_data;
        self.judged += o.judged;
        self.like_mismatches += o.like_mismatches;
        self.like_got += o.like_got;
        self.like_want += o.like_want;
        self.combo_mismatches += o.combo_mismatches;
        self.combo_got += o.combo_got;
        self.combo_want += o.combo_want;
        self.pk_judged += o.pk_judged;
        self.pk_final_missing += o.pk_final_missing;
        self.pk_last_mismatches += o.pk_last_mismatches;
        self.pk_too_close += o.pk_too_close;
        self.pk_unaccounted += o.pk_unaccounted;
        self.pk_updates += o.pk_updates;
        self.pk_gaps += o.pk_gaps;
        self.pk_span_ms += o.pk_span_ms;
        self.pk_flushed_by_final += o.pk_flushed_by_final;
        self.pk_max_per_interval = self.pk_max_per_interval.max(o.pk_max_per_interval);
        self.pk_min_gap_ms = match (self.pk_min_gap_ms, o.pk_min_gap_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        for e in &o.examples {
            if self.examples.len() < MERGE_EXAMPLES {
                self.examples.push(e.clone());
            }
        }
    }
}

/// The reconnect storm (`--drop-all-at`): every joined connection is dropped at once and
/// reconnects with `since` (PROTOCOL.md §5). What the resumes came to, per client thread and,
/// merged, for the run. Histograms are (µs, count) pairs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RecoveryReport {
    /// Joined connections dropped by the `drop` command.
    pub dropped: u64,
    /// When the first of them was dropped (unix µs; 0 when none was).
    pub drop_at_us: u64,
    /// Dropped viewers whose join was answered again (with or without `since`, recovered or not).
    pub answered: u64,
    /// Replies to the dropped viewers' joins with `since` (recovered or not).
    pub resumed: u64,
    /// `recovered: true`.
    pub recovered: u64,
    /// `recovered: false`, by reason (`too_old`, ...).
    pub refused: BTreeMap<String, u64>,
    /// Dropped viewers that had no position to resume from and joined without `since`.
    pub rejoined_fresh: u64,
    /// Join replies of dropped viewers that break the protocol, by what was wrong.
    pub unexpected: BTreeMap<String, u64>,
    /// Failed reconnect attempts (retried while attempts last), by reason.
    pub attempt_failures: BTreeMap<String, u64>,
    /// Dropped viewers that gave up after every retry, and those still reconnecting at the end.
    pub gave_up: u64,
    pub waiting: u64,
    /// Messages the recovered viewers missed (`last_seq` − `since.seq` of each reply), and how
    /// many of them arrived as the replay.
    pub missed: u64,
    pub replayed: u64,
    /// Recovered viewers whose replay had not all arrived at the end.
    pub replaying_at_end: u64,
    /// The last recovery reply and the last completed replay (unix µs).
    pub last_reply_at_us: u64,
    pub last_caught_up_at_us: u64,
    /// Join sent (pipelined behind `auth`) → its reply, for each resume.
    pub reply_us: Vec<(u64, u64)>,
    /// The drop → the recovery reply (includes the reconnect jitter and the setup).
    pub since_drop_us: Vec<(u64, u64)>,
    /// The drop → the last missed message received (the reply, when nothing was missed).
    pub caught_up_us: Vec<(u64, u64)>,
    /// Publish → receive of the replayed messages (kept out of the groups' latency: it is the
    /// outage, not the fan-out).
    pub replay_latency_us: Vec<(u64, u64)>,
    /// Viewers not recovered (refused, or rejoined without `since`) and open at the end: reported
    /// apart from their group. What their rooms published, what they received for the first
    /// time, and the seqs they skipped when they resumed at the reply's `last_seq`.
    pub unrecovered_open: u64,
    pub unrecovered_expected: u64,
    pub unrecovered_unique: u64,
    pub unrecovered_skipped: u64,
}

impl RecoveryReport {
    pub fn merge(&mut self, o: &RecoveryReport) {
        self.dropped += o.dropped;
        self.drop_at_us = match (self.drop_at_us, o.drop_at_us) {
            (0, b) => b,
            (a, 0) => a,
            (a, b) => a.min(b),
        };
        self.answered += o.answered;
        self.resumed += o.resumed;
        self.recovered += o.recovered;
        add_counts(&mut self.refused, &o.refused);
        self.rejoined_fresh += o.rejoined_fresh;
        add_counts(&mut self.unexpected, &o.unexpected);
        add_counts(&mut self.attempt_failures, &o.attempt_failures);
        self.gave_up += o.gave_up;
        self.waiting += o.waiting;
        self.missed += o.missed;
        self.replayed += o.replayed;
        self.replaying_at_end += o.replaying_at_end;
        self.last_reply_at_us = self.last_reply_at_us.max(o.last_reply_at_us);
        self.last_caught_up_at_us = self.last_caught_up_at_us.max(o.last_caught_up_at_us);
        self.reply_us = merge_pairs(&self.reply_us, &o.reply_us);
        self.since_drop_us = merge_pairs(&self.since_drop_us, &o.since_drop_us);
        self.caught_up_us = merge_pairs(&self.caught_up_us, &o.caught_up_us);
        self.replay_latency_us = merge_pairs(&self.replay_latency_us, &o.replay_latency_us);
        self.unrecovered_open += o.unrecovered_open;
        self.unrecovered_expected += o.unrecovered_expected;
        self.unrecovered_unique += o.unrecovered_unique;
        self.unrecovered_skipped += o.unrecovered_skipped;
    }

    /// Refused viewers in all, whatever the reason.
    pub fn refused_total(&self) -> u64 {
        self.refused.values().sum()
    }
}

impl Report {
    pub fn merge(&mut self, o: &Report) {
        self.ready += o.ready;
        self.open += o.open;
        add_counts(&mut self.closed, &o.closed);
        self.churn_closes += o.churn_closes;
        self.reconnects += o.reconnects;
        self.reconnect_setup_ms = merge_pairs(&self.reconnect_setup_ms, &o.reconnect_setup_ms);
        self.frames += o.frames;
        self.msgs += o.msgs;
        self.bytes += o.bytes;
        self.window_frames += o.window_frames;
        self.window_online_counts += o.window_online_counts;
        self.window_msgs += o.window_msgs;
        for (a, b) in self.groups.iter_mut().zip(&o.groups) {
            a.merge(b);
        }
        self.warmup_latency_us = merge_pairs(&self.warmup_latency_us, &o.warmup_latency_us);
        self.open_per_room = add_by_key(&self.open_per_room, &o.open_per_room);
        self.foreign += o.foreign;
        self.decode_errors += o.decode_errors;
        self.no_ts += o.no_ts;
        self.pings_sent += o.pings_sent;
        self.pongs += o.pongs;
        self.ping_errors += o.ping_errors;
        self.cpu_secs += o.cpu_secs;
        self.rss += o.rss;
        self.recovery.merge(&o.recovery);
        self.merge.merge(&o.merge);
        self.upstream.merge(&o.upstream);
    }
}

pub fn add_counts<K: Ord + Clone>(into: &mut BTreeMap<K, u64>, from: &BTreeMap<K, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

/// A latency histogram in µs: 1 µs .. 1 hour, 3 significant digits.
pub fn new_latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// A coarse latency histogram for the once-a-second ticks: 2 significant digits.
pub fn new_tick_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid histogram bounds")
}

/// The recorded values of `h` as (value, count) pairs.
pub fn histogram_pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

pub fn add_pairs(h: &mut Histogram<u64>, pairs: &[(u64, u64)]) {
    for &(v, n) in pairs {
        h.saturating_record_n(v.max(1), n);
    }
}

/// A histogram rebuilt from (value, count) pairs.
pub fn histogram_of(pairs: &[(u64, u64)]) -> Histogram<u64> {
    let mut h = new_latency_histogram();
    add_pairs(&mut h, pairs);
    h
}

fn merge_pairs(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    if a.is_empty() {
        return b.to_vec();
    }
    if b.is_empty() {
        return a.to_vec();
    }
    let mut merged: BTreeMap<u64, u64> = a.iter().copied().collect();
    for &(v, n) in b {
        *merged.entry(v).or_default() += n;
    }
    merged.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_merge_counts_and_histograms() {
        let mut a = Report::default();
        a.groups[0].priorities[3] = PriorityReport {
            expected: 10,
            unique: 9,
            latency_us: vec![(100, 2), (200, 1)],
            ..PriorityReport::default()
        };
        a.open_per_room = vec![(0, 5)];
        let mut b = a.clone();
        b.groups[0].priorities[3].latency_us = vec![(200, 4)];
        a.merge(&b);
        let p = &a.groups[0].priorities[3];
        assert_eq!((p.expected, p.unique), (20, 18));
        assert_eq!(p.latency_us, vec![(100, 2), (200, 5)]);
        assert_eq!(a.open_per_room, vec![(0, 10)]);
        assert_eq!(histogram_of(&p.latency_us).len(), 7);
    }

    #[test]
    fn merge_reports_add_viewers_and_merge() {
        use crate::merge::tests::push;
        use crate::merge::{check, Kind, RoomExpect, Sent, View};
        let mut want = RoomExpect::default();
        for count in [1, 2, 3] {
            want.add(Sent::Like { count });
        }
        want.add(Sent::Pk {
            n: 7,
            is_final: false,
        });
        want.add(Sent::Pk {
            n: 7,
            is_final: true,
        });
        let mut good = View::default();
        good.on_message(
            Kind::Like,
            &push(Kind::Like, br#"{"count":6}"#, 1, 3, false),
            0,
            2000,
        )
        .unwrap();
        good.on_message(
            Kind::Pk,
            &push(Kind::Pk, br#"{"n":7}"#, 2, 1, false),
            10,
            2000,
        )
        .unwrap();
        good.on_message(
            Kind::Pk,
            &push(Kind::Pk, br#"{"n":7}"#, 3, 1, true),
            20,
            2000,
        )
        .unwrap();
        let mut short = View::default();
        short
            .on_message(
                Kind::Like,
                &push(Kind::Like, br#"{"count":5}"#, 1, 2, false),
                0,
                2000,
            )
            .unwrap();
        let mut a = MergeReport::default();
        a.add_viewer(&check(&good, &want, 2000), || {
            unreachable!("nothing to describe")
        });
        let mut b = MergeReport::default();
        b.add_viewer(&check(&short, &want, 2000), || "viewer 3 (room-0)".into());
        assert_eq!(b.examples.len(), 1);
        assert!(
            b.examples[0].starts_with("viewer 3 (room-0): like sum 5 of 6, no final, last value"),
            "{}",
            b.examples[0]
        );
        b.received = [2, 1, 0];
        b.latency_us[1] = vec![(100, 1)];
        a.merge(&b);
        assert_eq!((a.judged, a.pk_judged), (2, 2));
        assert_eq!((a.like_mismatches, a.like_got, a.like_want), (1, 11, 12));
        assert_eq!((a.pk_final_missing, a.pk_last_mismatches), (1, 1));
        assert_eq!(a.pk_unaccounted, 1, "the short viewer saw no PK");
        assert_eq!(
            a.pk_flushed_by_final, 1,
            "the good one's update came right before the final"
        );
        assert_eq!(a.received, [2, 1, 0]);
        assert_eq!(a.latency_us[1], vec![(100, 1)]);
        let mut total = Report::default();
        total.merge(&Report {
            merge: a,
            ..Report::default()
        });
        assert_eq!(total.merge.judged, 2);
    }

    #[test]
    fn upstream_reports_merge_and_expect_each_rooms_sends_at_each_viewer() {
        let thread = |room: usize, published: u64, viewers: u64, code: &str| UpstreamReport {
            senders: 2,
            window: SendCounts {
                attempted: 10,
                answered: 9,
                published,
                not_broadcast: 8 - published,
                errors: BTreeMap::from([(code.to_string(), 1)]),
                ..SendCounts::default()
            },
            unexpected_replies: 0,
            published_per_room: vec![(room, published)],
            judged_per_room: vec![(room, viewers)],
            judged_unique: published * viewers,
            reply_us: vec![(1_000, 9)],
            ..UpstreamReport::default()
        };
        let mut all = Report::default();
        for r in [
            thread(0, 3, 5, "rate_limited"),
            thread(0, 2, 5, "unavailable"),
            thread(1, 4, 1, "rate_limited"),
        ] {
            all.merge(&Report {
                upstream: r,
                ..Report::default()
            });
        }
        let up = &all.upstream;
        assert_eq!(up.senders, 6);
        assert_eq!((up.window.attempted, up.window.answered), (30, 27));
        assert_eq!(up.window.published + up.window.not_broadcast, 24);
        assert_eq!(up.window.error("rate_limited"), 2);
        assert_eq!(up.window.error("unavailable"), 1);
        assert_eq!(up.published_per_room, [(0, 5), (1, 4)]);
        assert_eq!(up.judged_per_room, [(0, 10), (1, 1)]);
        // Room 0: 5 sends x 10 viewers; room 1: 4 x 1.
        assert_eq!(up.expected_deliveries(), 54);
        assert_eq!(up.reply_us, [(1_000, 27)]);
    }

    #[test]
    fn recovery_reports_merge_into_the_storms_totals() {
        let thread = |drop_at_us, last_reply_at_us, reason: &str| RecoveryReport {
            dropped: 10,
            drop_at_us,
            answered: 10,
            resumed: 10,
            recovered: 9,
            refused: BTreeMap::from([(reason.to_string(), 1)]),
            missed: 40,
            replayed: 40,
            last_reply_at_us,
            last_caught_up_at_us: last_reply_at_us + 5,
            reply_us: vec![(1_000, 10)],
            unrecovered_open: 1,
            unrecovered_expected: 100,
            unrecovered_unique: 60,
            unrecovered_skipped: 40,
            ..RecoveryReport::default()
        };
        let mut all = Report::default();
        let mut a = Report {
            recovery: thread(2_000, 9_000, "too_old"),
            ..Report::default()
        };
        a.groups[0].unrecovered = 1;
        let mut b = a.clone();
        b.recovery = thread(1_000, 7_000, "too_many");
        let idle = Report::default();
        all.merge(&idle);
        all.merge(&a);
        all.merge(&b);
        let r = &all.recovery;
        assert_eq!((r.dropped, r.answered, r.recovered), (20, 20, 18));
        assert_eq!(
            r.drop_at_us, 1_000,
            "the first drop; a thread without one says 0"
        );
        assert_eq!(r.last_reply_at_us, 9_000, "the last reply");
        assert_eq!(r.last_caught_up_at_us, 9_005);
        assert_eq!(r.refused_total(), 2);
        assert_eq!(r.refused["too_old"], 1);
        assert_eq!((r.missed, r.replayed), (80, 80));
        assert_eq!(r.reply_us, vec![(1_000, 20)]);
        assert_eq!(r.unrecovered_skipped, 80);
        assert_eq!(all.groups[0].unrecovered, 2);
    }
}
