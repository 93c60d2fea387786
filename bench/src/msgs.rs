//! What a client process and the coordinator say to each other, and the counters they add up.
//!
//! Coordinator → client: one command per line on the client's stdin (`warmup`, `start`, `end`,
//! `snap <tag>`, `final <json>`, `exit`; EOF means exit). Client → coordinator: one JSON object per
//! line on its stdout ([`ClientMsg`]). The client's stderr passes through.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use roomcast_proto::message::PRIORITIES;
use serde::{Deserialize, Serialize};

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
    /// Connections of this group joined at the end.
    pub open: u64,
    pub priorities: [PriorityReport; PRIORITIES],
}

impl GroupReport {
    fn merge(&mut self, o: &GroupReport) {
        self.open += o.open;
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
        self.window_msgs += o.window_msgs;
        for (a, b) in self.groups.iter_mut().zip(&o.groups) {
            a.merge(b);
        }
        self.warmup_latency_us = merge_pairs(&self.warmup_latency_us, &o.warmup_latency_us);
        let mut rooms: BTreeMap<usize, u64> = self.open_per_room.iter().copied().collect();
        for &(room, n) in &o.open_per_room {
            *rooms.entry(room).or_default() += n;
        }
        self.open_per_room = rooms.into_iter().collect();
        self.foreign += o.foreign;
        self.decode_errors += o.decode_errors;
        self.no_ts += o.no_ts;
        self.pings_sent += o.pings_sent;
        self.pongs += o.pongs;
        self.ping_errors += o.ping_errors;
        self.cpu_secs += o.cpu_secs;
        self.rss += o.rss;
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
}
