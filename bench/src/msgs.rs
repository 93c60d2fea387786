//! What a client process and the coordinator say to each other.
//!
//! Coordinator → client: one command per line on the client's stdin (`start`, `end`,
//! `snap <tag>`, `final <json seqs>`, `exit`; EOF means exit). Client → coordinator: one JSON
//! object per line on its stdout ([`ClientMsg`]). The client's stderr passes through.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    /// Every connection of the process is joined or has failed for good.
    Connected(Connected),
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
    pub setup_ms_p50: f64,
    pub setup_ms_p99: f64,
    pub setup_ms_max: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snap {
    pub index: usize,
    pub tag: String,
    pub frames: u64,
    pub msgs: u64,
    pub open: u64,
}

/// Totals of one client process.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub index: usize,
    pub ready: u64,
    /// Ready connections still open now.
    pub open: u64,
    /// Ready connections the server closed, by close code / reason.
    pub closed: BTreeMap<String, u64>,
    /// Batch frames and logical messages received over the whole run.
    pub frames: u64,
    pub msgs: u64,
    pub bytes: u64,
    /// Inside the measured window (between `start` and `end`).
    pub window_frames: u64,
    pub window_msgs: u64,
    /// Messages expected (final seq of each open connection's room, summed) and received once.
    pub expected: u64,
    pub unique: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Batches for another channel than the connection's room, undecodable frames.
    pub foreign: u64,
    pub decode_errors: u64,
    /// Messages whose data had no "ts" field.
    pub no_ts: u64,
    pub pings_sent: u64,
    pub pongs: u64,
    pub ping_errors: u64,
    /// Publish→receive latency of messages received inside the measured window: (µs, count).
    pub latency_us: Vec<(u64, u64)>,
    pub cpu_secs: f64,
    pub rss: u64,
}

pub fn new_latency_histogram() -> Histogram<u64> {
    // 1 µs .. 1 hour, 3 significant figures.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

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
