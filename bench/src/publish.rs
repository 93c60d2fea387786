//! The publisher: a thread that sends messages at a fixed rate (or as fast as the sink takes
//! them), each to the room and with the priority the plan picks, through a [`Sink`] (the control
//! plane's HTTP API or the edge links), and counts what was accepted per room and priority, which
//! is what the clients should receive.
//!
//! With `--replay-batches` each thread encodes its batch once ([`Sink::encode`]) and sends the
//! same bytes again and again, only the messages' timestamps stamped in place ([`Encoded`]): the
//! publisher then costs next to nothing, and the host is left to the system under test.
//!
//! Merge traffic (`--pk-rate`, `--like-rate`, `--combo-rate`; [`crate::merge`]) has a thread of
//! its own ([`MergeLane`]): every [`MERGE_ROUND`] it sends what is due in one request and counts
//! what the API accepted per room ([`RoomExpect`]) apart from the load's counts, and when
//! publishing stops it sends the PK's finals.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use roomcast_proto::message::PRIORITIES;

use crate::dist::{PriorityMix, RoomPicker};
use crate::merge::{self, Generator, RoomExpect, Sent, Traffic};
use crate::msgs::new_latency_histogram;
use crate::sys;

/// The `kind` of the load's messages.
pub const LOAD_KIND: &str = "bench";

/// One message to publish.
pub struct Outgoing {
    pub room: usize,
    pub priority: u8,
    /// `bench` for the load; merge traffic has its own kinds.
    pub kind: &'static str,
    /// `{"ts":<unix µs>,"pad":"…"}` (the load's).
    pub data: Bytes,
    /// The `merge` object (JSON) of merge traffic with rules; only the control plane's API
    /// takes one.
    pub merge: Option<Bytes>,
}

impl Outgoing {
    /// One of the load's messages.
    pub fn load(room: usize, priority: u8, data: Bytes) -> Outgoing {
        Outgoing {
            room,
            priority,
            kind: LOAD_KIND,
            data,
            merge: None,
        }
    }
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted and sent towards the edges.
    Routed,
    /// Accepted (it has a sequence number), but the control plane knew no edge holding the room.
    Unrouted,
    /// Accepted with a merge rule, waiting in its key's merge window (`"held":true`, no `seq`
    /// yet): it is published merged when the window ends.
    Held,
    Rejected(String),
}

/// Where messages go.
pub trait Sink: Send {
    /// Publishes `msgs` in order; one outcome per message.
    fn send(&mut self, msgs: &[Outgoing]) -> Vec<Outcome>;

    /// Encodes `msgs` once, for [`Sink::send_encoded`] to send again and again; `None` when this
    /// sink cannot (the edge link numbers every message itself).
    fn encode(&self, _msgs: &[Outgoing]) -> Option<Encoded> {
        None
    }

    /// Publishes a batch of `n` messages that [`Sink::encode`] made; one outcome per message.
    fn send_encoded(&mut self, _batch: &Encoded, n: usize) -> Vec<Outcome> {
        vec![Outcome::Rejected("this sink cannot replay a batch".into()); n]
    }
}

/// A batch a sink encoded once, sent again and again with fresh timestamps (`--replay-batches`).
pub struct Encoded {
    pub body: Vec<u8>,
    /// Where each message's [`TS_DIGITS`] `ts` digits start in `body`.
    pub ts_at: Vec<usize>,
}

impl Encoded {
    /// Sets every message's `ts` to `ts` (unix µs), in place.
    pub fn stamp(&mut self, ts: u64) {
        let mut digits = [b'0'; TS_DIGITS];
        let mut v = ts;
        for d in digits.iter_mut().rev() {
            *d = b'0' + (v % 10) as u8;
            v /= 10;
        }
        for &at in &self.ts_at {
            self.body[at..at + TS_DIGITS].copy_from_slice(&digits);
        }
    }
}

/// Digits of a `ts` in [`message_data`]: unix microseconds have 16 from 2001 to 2286.
pub const TS_DIGITS: usize = 16;

/// Where the `ts` digits of [`message_data`] start in `data`, when there are [`TS_DIGITS`].
pub fn ts_digits_at(data: &[u8]) -> Option<usize> {
    const HEAD: &[u8] = b"{\"ts\":";
    let digits = data.strip_prefix(HEAD)?;
    let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    (n == TS_DIGITS).then_some(HEAD.len())
}

/// A load ramp (`--ramp-to`): from `start` seconds after publishing began the rate rises (or
/// falls) linearly from the plan's rate to `to` over `secs` seconds, and stays at `to` after.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ramp {
    pub start: f64,
    pub secs: f64,
    pub to: f64,
}

/// A paced publisher's rate over time, in seconds since publishing began: `rate` until the
/// ramp (if any), then the ramp's line, then its end rate. Message `k` (from 0) is due when the
/// integral of the rate reaches `k`, so the first is due at once and the count due by `t` is
/// `floor(∫₀ᵗ rate) + 1`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub rate: f64,
    pub ramp: Option<Ramp>,
}

impl Schedule {
    /// The same schedule for one of `lanes` threads: every rate divided by `lanes`.
    pub fn share(self, lanes: u64) -> Schedule {
        let n = lanes.max(1) as f64;
        Schedule {
            rate: self.rate / n,
            ramp: self.ramp.map(|r| Ramp { to: r.to / n, ..r }),
        }
    }

    /// The ramp's start, length (> 0) and slope (msg/s²), if any.
    fn line(&self) -> Option<(f64, f64, f64)> {
        let r = self.ramp?;
        let secs = r.secs.max(1e-9);
        Some((r.start, secs, (r.to - self.rate) / secs))
    }

    /// Messages per second at `t`.
    pub fn rate_at(&self, t: f64) -> f64 {
        match self.line() {
            Some((start, _, _)) if t < start => self.rate,
            Some((start, secs, slope)) => self.rate + slope * (t - start).min(secs),
            None => self.rate,
        }
    }

    /// ∫₀ᵗ rate: the messages due by `t`, as a real number.
    pub fn integral(&self, t: f64) -> f64 {
        let t = t.max(0.0);
        let Some((start, secs, slope)) = self.line() else {
            return self.rate * t;
        };
        if t <= start {
            return self.rate * t;
        }
        let s = (t - start).min(secs);
        let ramped = self.rate * start + self.rate * s + slope * s * s / 2.0;
        ramped + self.rate_at(t) * (t - start - s)
    }

    /// Messages due by `t`: message `k` is due once the integral reaches `k`.
    pub fn due(&self, t: f64) -> u64 {
        self.integral(t).floor() as u64 + 1
    }

    /// When message `k` is due (the integral reaches `k`), seconds since the start; `None` if
    /// never (the rate falls to 0 first).
    pub fn time_of(&self, k: u64) -> Option<f64> {
        let k = k as f64;
        let Some((start, secs, slope)) = self.line() else {
            return (self.rate > 0.0).then(|| k / self.rate);
        };
        let before = self.rate * start;
        if k <= before {
            return Some(k / self.rate);
        }
        let ramp_total = self.rate * secs + slope * secs * secs / 2.0;
        let m = k - before;
        if m <= ramp_total {
            // slope s²/2 + rate s = m, in the form that stays exact for a flat ramp.
            let root = (self.rate * self.rate + 2.0 * slope * m).max(0.0).sqrt();
            let s = 2.0 * m / (self.rate + root).max(1e-12);
            return Some(start + s.min(secs));
        }
        let end = self.rate + slope * secs;
        (end > 0.0).then(|| start + secs + (m - ramp_total) / end)
    }
}

/// What to publish.
pub struct Plan {
    pub rooms: usize,
    /// Messages per second over all threads; 0: as fast as the sinks take them.
    pub rate: f64,
    /// `--ramp-to`: the rate (over all threads) changes linearly from `rate` to the ramp's.
    pub ramp: Option<Ramp>,
    pub payload: usize,
    pub mix: PriorityMix,
    pub picker: RoomPicker,
    /// Most messages handed to the sink at once.
    pub max_batch: usize,
    /// Each thread sends one batch of `max_batch` messages, encoded once, again and again.
    pub replay: bool,
    /// The data also carries the message's number and priority (`--server nats`, whose
    /// messages have neither a sequence number nor a priority): [`numbered_message_data`].
    pub numbered: bool,
}

impl Plan {
    /// The `n`-th message of the plan, stamped now.
    fn message(&self, n: u64) -> Outgoing {
        let priority = self.mix.priority(n);
        let ts = sys::unix_micros();
        let data = if self.numbered {
            numbered_message_data(ts, n, priority, self.payload)
        } else {
            message_data(ts, self.payload)
        };
        Outgoing::load(self.picker.room(n), priority, data)
    }
}

/// Counters shared with the coordinator.
#[derive(Default)]
pub struct PubState {
    /// Messages the sink accepted.
    pub published: AtomicU64,
    /// Per room and priority: messages accepted.
    pub per_room: Mutex<Vec<[u64; PRIORITIES]>>,
    /// Accepted messages that went to no edge.
    pub unrouted: AtomicU64,
    /// Rejected messages, by error.
    pub errors: Mutex<BTreeMap<String, u64>>,
    /// Send rounds that started more than 100 ms behind the schedule.
    pub late_rounds: AtomicU64,
    /// Wall time spent inside the sink, µs (the publish round trip).
    pub send_us: AtomicU64,
    pub send_calls: AtomicU64,
    /// Set by the coordinator for the measured window: sink calls are timed into `window_calls`.
    pub measuring: AtomicBool,
    /// The round trip (µs) of every sink call made while `measuring`, from every thread once the
    /// publisher has stopped.
    pub window_calls: Mutex<Option<Histogram<u64>>>,
    /// The probe's calls in the window, likewise.
    pub probe_calls: Mutex<Option<Histogram<u64>>>,
    /// Merge traffic: what the API accepted per room (not in `per_room`; in `published`), and
    /// per kind ([`merge::Kind`] order; finals apart).
    pub merge_expect: Mutex<Vec<RoomExpect>>,
    pub merge_published: [AtomicU64; 3],
    pub merge_finals: AtomicU64,
    /// Merge traffic the API answered `held` (waiting in a merge window).
    pub merge_held: AtomicU64,
    /// The merge traffic's requests.
    pub merge_calls: AtomicU64,
}

impl PubState {
    /// Merge traffic accepted so far, per kind.
    pub fn merge_published(&self) -> [u64; 3] {
        [0, 1, 2].map(|i| self.merge_published[i].load(Ordering::Relaxed))
    }
}

/// The merge traffic's thread: its own sink (HTTP connection), the traffic, and the rooms.
pub struct MergeLane {
    pub sink: Box<dyn Sink>,
    pub traffic: Traffic,
    /// The occupied rooms: likes and combos go round-robin, the PK to every one.
    pub rooms: Vec<usize>,
    /// Most messages in one request.
    pub max_batch: usize,
}

/// How often the merge traffic's thread sends what is due: one request per round (several when
/// more than a batch is due), so 20,000 msg/s take 100 requests a second.
pub const MERGE_ROUND: Duration = Duration::from_millis(10);

/// A publisher thread of its own beside the load (`--probe-rate`): its own sink (connection) and
/// plan, counted with the load's messages but timed apart.
pub struct Probe {
    pub sink: Box<dyn Sink>,
    pub plan: Plan,
}

/// A running publisher: one thread per sink.
pub struct Publisher {
    /// When publishing began: every thread's schedule counts from here.
    started: Instant,
    stop: Arc<AtomicBool>,
    state: Arc<PubState>,
    threads: Vec<JoinHandle<()>>,
}

impl Publisher {
    /// Starts one thread per sink; thread `j` of `n` publishes messages `j`, `j + n`, … at
    /// `rate / n`, so rooms and priorities follow the plan whatever `n` is. A probe runs its own
    /// plan on one more thread, merge traffic on another.
    pub fn start(
        sinks: Vec<Box<dyn Sink>>,
        plan: Plan,
        probe: Option<Probe>,
        merge: Option<MergeLane>,
    ) -> Publisher {
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(PubState {
            per_room: Mutex::new(vec![[0; PRIORITIES]; plan.rooms.max(1)]),
            merge_expect: Mutex::new(vec![RoomExpect::default(); plan.rooms.max(1)]),
            ..PubState::default()
        });
        let plan = Arc::new(plan);
        let lanes = sinks.len() as u64;
        let started = Instant::now();
        let mut threads: Vec<JoinHandle<()>> = sinks
            .into_iter()
            .enumerate()
            .map(|(j, sink)| {
                let (s, st, plan) = (Arc::clone(&stop), Arc::clone(&state), Arc::clone(&plan));
                let lane = Lane {
                    index: j as u64,
                    of: lanes,
                };
                std::thread::Builder::new()
                    .name(format!("publisher-{j}"))
                    .spawn(move || publish_loop(sink, &plan, lane, started, &s, &st, false))
                    .expect("spawn publisher")
            })
            .collect();
        if let Some(Probe { sink, plan }) = probe {
            let (s, st) = (Arc::clone(&stop), Arc::clone(&state));
            let lane = Lane { index: 0, of: 1 };
            let thread = std::thread::Builder::new()
                .name("publish-probe".into())
                .spawn(move || publish_loop(sink, &plan, lane, started, &s, &st, true))
                .expect("spawn the probe");
            threads.push(thread);
        }
        if let Some(lane) = merge {
            let (s, st) = (Arc::clone(&stop), Arc::clone(&state));
            let thread = std::thread::Builder::new()
                .name("publish-merge".into())
                .spawn(move || merge_loop(lane, started, &s, &st))
                .expect("spawn the merge traffic's publisher");
            threads.push(thread);
        }
        Publisher {
            started,
            stop,
            state,
            threads,
        }
    }

    /// When publishing began (the warm-up and any ramp count from here).
    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn state(&self) -> &Arc<PubState> {
        &self.state
    }

    /// Stops publishing (the merge traffic's thread sends the PK's finals first); returns what
    /// was accepted per room and priority.
    pub fn stop(mut self) -> Vec<[u64; PRIORITIES]> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.state.per_room.lock().expect("per-room lock").clone()
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `{"ts":<unix µs>,"pad":"xxx…"}`, padded to `size` bytes when `size` allows.
pub fn message_data(ts: u64, size: usize) -> Bytes {
    padded(format!("{{\"ts\":{ts}"), size)
}

/// `{"ts":<unix µs>,"n":<message number>,"p":<priority>,"pad":"xxx…"}`, padded to `size` bytes
/// when `size` allows: what `--server nats` publishes, since NATS messages carry no sequence
/// number (the subscribers judge loss, duplicates and order from `n`) and no priority.
pub fn numbered_message_data(ts: u64, n: u64, priority: u8, size: usize) -> Bytes {
    padded(format!("{{\"ts\":{ts},\"n\":{n},\"p\":{priority}"), size)
}

/// Closes the JSON object `head` (its fields so far), with a `pad` field that brings it to `size`
/// bytes when it fits.
fn padded(head: String, size: usize) -> Bytes {
    let with_pad = head.len() + ",\"pad\":\"\"}".len();
    if size < with_pad {
        return Bytes::from(format!("{head}}}"));
    }
    let mut s = String::with_capacity(size);
    s.push_str(&head);
    s.push_str(",\"pad\":\"");
    s.extend(std::iter::repeat_n('x', size - with_pad));
    s.push_str("\"}");
    Bytes::from(s)
}

/// Which share of the messages one publisher thread sends.
#[derive(Debug, Clone, Copy)]
struct Lane {
    index: u64,
    of: u64,
}

fn publish_loop(
    mut sink: Box<dyn Sink>,
    plan: &Plan,
    lane: Lane,
    start: Instant,
    stop: &AtomicBool,
    state: &PubState,
    probe: bool,
) {
    // --replay-batches: this thread's one batch, encoded once.
    let mut replay = None;
    if plan.replay {
        let msgs: Vec<Outgoing> = (0..plan.max_batch as u64)
            .map(|j| plan.message(j * lane.of + lane.index))
            .collect();
        match sink.encode(&msgs) {
            Some(encoded) => replay = Some((msgs, encoded)),
            None => {
                let mut errors = state.errors.lock().expect("errors lock");
                *errors
                    .entry("this sink cannot replay a batch".into())
                    .or_default() += 1;
                return;
            }
        }
    }
    // A round sends everything due, or (replaying) one whole batch once it is due.
    let round = replay.as_ref().map_or(1, |(msgs, _)| msgs.len() as u64);
    let schedule = Schedule {
        rate: plan.rate,
        ramp: plan.ramp,
    }
    .share(lane.of);
    let paced = schedule.rate > 0.0;
    let mut sent: u64 = 0;
    let mut batch: Vec<Outgoing> = Vec::new();
    let mut calls = new_latency_histogram();
    while !stop.load(Ordering::Relaxed) {
        // Paced: message k is due when the schedule's integral reaches k. Unpaced: everything is.
        let due = if paced {
            let now = Instant::now();
            let t = now.duration_since(start).as_secs_f64();
            let due = schedule.due(t);
            if due < sent + round {
                // Until the round's last message is due (at most 50 ms, to notice a stop).
                let wait = schedule
                    .time_of(sent + round - 1)
                    .map_or(Duration::MAX, |at| {
                        (start + Duration::from_secs_f64(at)).saturating_duration_since(now)
                    });
                std::thread::sleep(wait.min(Duration::from_millis(50)));
                continue;
            }
            if due - (sent + round - 1) > (schedule.rate_at(t) / 10.0).max(1.0) as u64 + 1 {
                state.late_rounds.fetch_add(1, Ordering::Relaxed);
            }
            due
        } else {
            u64::MAX
        };
        match &mut replay {
            Some((_, encoded)) => encoded.stamp(sys::unix_micros()),
            None => {
                batch.clear();
                let until = due.min(sent + plan.max_batch as u64);
                batch.extend((sent..until).map(|k| plan.message(k * lane.of + lane.index)));
            }
        }
        let t0 = Instant::now();
        let (msgs, results) = match &replay {
            Some((msgs, encoded)) => (&msgs[..], sink.send_encoded(encoded, msgs.len())),
            None => (&batch[..], sink.send(&batch)),
        };
        let took = t0.elapsed().as_micros() as u64;
        sent += msgs.len() as u64;
        state.send_us.fetch_add(took, Ordering::Relaxed);
        state.send_calls.fetch_add(1, Ordering::Relaxed);
        if state.measuring.load(Ordering::Relaxed) {
            let _ = calls.record(took.max(1));
        }
        account(state, msgs, results);
    }
    let all_calls = if probe {
        &state.probe_calls
    } else {
        &state.window_calls
    };
    let mut window_calls = all_calls.lock().expect("window calls lock");
    match window_calls.as_mut() {
        Some(all) => all.add(&calls).expect("same histogram bounds"),
        None => *window_calls = Some(calls),
    }
}

/// Counts what the sink accepted (per room and priority) and rejected (by error).
fn account(state: &PubState, msgs: &[Outgoing], results: Vec<Outcome>) {
    let mut accepted = 0;
    {
        let mut per_room = state.per_room.lock().expect("per-room lock");
        let mut errors = state.errors.lock().expect("errors lock");
        for (m, outcome) in msgs.iter().zip(results) {
            match outcome {
                Outcome::Routed | Outcome::Unrouted | Outcome::Held => {
                    if outcome == Outcome::Unrouted {
                        state.unrouted.fetch_add(1, Ordering::Relaxed);
                    }
                    per_room[m.room][usize::from(m.priority)] += 1;
                    accepted += 1;
                }
                Outcome::Rejected(e) => *errors.entry(e).or_default() += 1,
            }
        }
    }
    state.published.fetch_add(accepted, Ordering::Relaxed);
}

/// The merge traffic's thread: every [`MERGE_ROUND`] the messages due ([`Generator`]) in one
/// request (more while more than a batch is due), counted per room once accepted; when stopped,
/// the PK's finals.
fn merge_loop(mut lane: MergeLane, start: Instant, stop: &AtomicBool, state: &PubState) {
    let mut gen = Generator::new(lane.traffic, lane.rooms.clone());
    let mut msgs: Vec<merge::Msg> = Vec::new();
    let mut batch: Vec<Outgoing> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let round = Instant::now();
        let t = round.duration_since(start).as_secs_f64();
        msgs.clear();
        gen.take_due(t, sys::unix_micros(), lane.max_batch, &mut msgs);
        if msgs.is_empty() {
            let wait = gen.wait(t).map_or(MERGE_ROUND, Duration::from_secs_f64);
            std::thread::sleep(wait.clamp(Duration::from_millis(1), MERGE_ROUND));
            continue;
        }
        send_merge(&mut *lane.sink, &msgs, &mut batch, state);
        // A full batch: more may be due, send on at once. Else the rest of the round waits (at
        // 20,000 msg/s something is always due again by now: batching is the point).
        if msgs.len() < lane.max_batch {
            std::thread::sleep(MERGE_ROUND.saturating_sub(round.elapsed()));
        }
    }
    let finals = gen.finals(sys::unix_micros());
    if !finals.is_empty() {
        send_merge(&mut *lane.sink, &finals, &mut batch, state);
    }
}

/// Sends merge traffic in one request and counts what was accepted.
fn send_merge(
    sink: &mut dyn Sink,
    msgs: &[merge::Msg],
    batch: &mut Vec<Outgoing>,
    state: &PubState,
) {
    batch.clear();
    batch.extend(msgs.iter().map(|m| Outgoing {
        room: m.room,
        priority: m.kind.priority(),
        kind: m.kind.name(),
        data: m.data.clone(),
        merge: m.rule.clone(),
    }));
    let t0 = Instant::now();
    let results = sink.send(batch);
    state
        .send_us
        .fetch_add(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
    state.merge_calls.fetch_add(1, Ordering::Relaxed);
    let mut accepted = 0;
    let mut expect = state.merge_expect.lock().expect("merge expect lock");
    let mut errors = state.errors.lock().expect("errors lock");
    for (m, outcome) in msgs.iter().zip(results) {
        match outcome {
            Outcome::Rejected(e) => {
                *errors.entry(format!("{}: {e}", m.kind.name())).or_default() += 1
            }
            accepted_as => {
                match accepted_as {
                    Outcome::Held => state.merge_held.fetch_add(1, Ordering::Relaxed),
                    Outcome::Unrouted => state.unrouted.fetch_add(1, Ordering::Relaxed),
                    _ => 0,
                };
                if let Some(room) = expect.get_mut(m.room) {
                    room.add(m.sent);
                }
                match m.sent {
                    Sent::Pk { is_final: true, .. } => {
                        state.merge_finals.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        state.merge_published[m.kind.index()].fetch_add(1, Ordering::Relaxed);
                    }
                }
                accepted += 1;
            }
        }
    }
    state.published.fetch_add(accepted, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 10 msg/s for a 3 s warm-up, then up to 150 msg/s over a 30 s window.
    fn ramp() -> Schedule {
        Schedule {
            rate: 10.0,
            ramp: Some(Ramp {
                start: 3.0,
                secs: 30.0,
                to: 150.0,
            }),
        }
    }

    #[test]
    fn a_steady_schedule_paces_as_before() {
        let s = Schedule {
            rate: 100.0,
            ramp: None,
        };
        assert_eq!(s.due(0.0), 1, "the first message at once");
        assert_eq!(s.due(0.0099), 1);
        assert_eq!(s.due(0.0101), 2);
        assert_eq!(s.due(10.0), 1001);
        assert_eq!(s.time_of(0), Some(0.0));
        assert!((s.time_of(250).unwrap() - 2.5).abs() < 1e-12);
        assert_eq!(s.rate_at(5.0), 100.0);
    }

    #[test]
    fn a_ramp_rises_linearly_over_the_window() {
        let s = ramp();
        // The warm-up at the starting rate.
        assert_eq!(s.rate_at(1.0), 10.0);
        assert_eq!(s.due(2.95), 30, "29.5 due by 2.95 s: messages 0..=29");
        assert!((s.integral(3.0) - 30.0).abs() < 1e-9);
        // Halfway: 80 msg/s; 30 + 15 * 10 + 140/30 * 15²/2 = 705 by then.
        assert!((s.rate_at(18.0) - 80.0).abs() < 1e-9);
        assert!((s.integral(18.0) - 705.0).abs() < 1e-9);
        assert_eq!(s.due(18.0), 706);
        // The whole window: (10 + 150) / 2 * 30 = 2400 messages.
        assert!((s.integral(33.0) - s.integral(3.0) - 2400.0).abs() < 1e-9);
        assert_eq!(s.due(33.0) - s.due(3.0), 2400);
        // After the window it stays at the end rate.
        assert!((s.rate_at(40.0) - 150.0).abs() < 1e-9);
        assert!((s.integral(35.0) - 2730.0).abs() < 1e-9);
    }

    #[test]
    fn a_ramp_says_when_each_message_is_due() {
        let s = ramp();
        for k in [0, 1, 29, 30, 31, 100, 705, 1500, 2429, 2430, 2431, 5000] {
            let t = s.time_of(k).unwrap();
            assert!(
                (s.integral(t) - k as f64).abs() < 1e-6,
                "message {k} at {t}: integral {}",
                s.integral(t)
            );
            assert_eq!(s.due(t + 1e-9), k + 1, "message {k} is due at {t}");
            assert_eq!(s.due((t - 1e-6).max(0.0)), k.max(1), "not before {t}");
        }
        assert!((s.time_of(705).unwrap() - 18.0).abs() < 1e-9);
        // A flat "ramp" is the steady rate.
        let flat = Schedule {
            rate: 10.0,
            ramp: Some(Ramp {
                start: 3.0,
                secs: 30.0,
                to: 10.0,
            }),
        };
        assert!((flat.time_of(305).unwrap() - 30.5).abs() < 1e-9);
    }

    #[test]
    fn a_ramp_down_to_zero_stops() {
        let s = Schedule {
            rate: 100.0,
            ramp: Some(Ramp {
                start: 0.0,
                secs: 10.0,
                to: 0.0,
            }),
        };
        assert!((s.integral(10.0) - 500.0).abs() < 1e-9);
        assert!((s.integral(100.0) - 500.0).abs() < 1e-9, "nothing after");
        assert!((s.time_of(500).unwrap() - 10.0).abs() < 1e-6);
        assert_eq!(s.time_of(501), None, "never due");
    }

    #[test]
    fn lanes_share_a_ramp() {
        let s = ramp().share(4);
        assert_eq!(s.rate, 2.5);
        assert_eq!(s.ramp.unwrap().to, 37.5);
        assert_eq!(s.ramp.unwrap().start, 3.0, "the same times");
        assert!((s.integral(33.0) * 4.0 - ramp().integral(33.0)).abs() < 1e-9);
    }

    #[test]
    fn data_is_padded_json_of_the_requested_size() {
        for size in [0, 10, 30, 33, 64, 128, 1024] {
            let d = message_data(1_700_000_000_000_000, size);
            let v: serde_json::Value = serde_json::from_slice(&d).unwrap();
            assert_eq!(v["ts"], 1_700_000_000_000_000u64);
            if size >= 40 {
                assert_eq!(d.len(), size);
            }
        }
    }

    #[test]
    fn numbered_data_is_padded_json_with_number_and_priority() {
        for size in [0, 50, 100, 1000] {
            let d = numbered_message_data(1_700_000_000_000_000, 123_456, 2, size);
            let v: serde_json::Value = serde_json::from_slice(&d).unwrap();
            assert_eq!(v["ts"], 1_700_000_000_000_000u64);
            assert_eq!((v["n"].as_u64(), v["p"].as_u64()), (Some(123_456), Some(2)));
            if size >= 60 {
                assert_eq!(d.len(), size);
            }
        }
    }

    #[test]
    fn a_stamp_rewrites_every_timestamp_in_place() {
        let data = message_data(1_700_000_000_000_000, 64);
        let at = ts_digits_at(&data).expect("a 16-digit ts");
        let mut body = b"[".to_vec();
        let mut ts_at = Vec::new();
        for i in 0..3 {
            if i > 0 {
                body.push(b',');
            }
            ts_at.push(body.len() + at);
            body.extend_from_slice(&data);
        }
        body.push(b']');
        let mut encoded = Encoded { body, ts_at };
        encoded.stamp(1_800_000_000_123_456);
        let v: serde_json::Value = serde_json::from_slice(&encoded.body).unwrap();
        for m in v.as_array().unwrap() {
            assert_eq!(m["ts"], 1_800_000_000_123_456u64);
            assert_eq!(m["pad"].as_str().unwrap().len(), 64 - 32, "the same size");
        }
        assert_eq!(ts_digits_at(&message_data(12, 64)), None, "not 16 digits");
    }
}
