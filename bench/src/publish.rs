//! The publisher: a thread that sends messages at a fixed rate, each to the room and with the
//! priority the plan picks, through a [`Sink`] (the control plane's HTTP API or the edge links),
//! and counts what was accepted per room and priority, which is what the clients should receive.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use roomcast_proto::message::PRIORITIES;

use crate::dist::{PriorityMix, RoomPicker};
use crate::sys;

/// One message to publish.
pub struct Outgoing {
    pub room: usize,
    pub priority: u8,
    /// `{"ts":<unix µs>,"pad":"…"}`.
    pub data: Bytes,
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted and sent towards the edges.
    Routed,
    /// Accepted (it has a sequence number), but the control plane knew no edge holding the room.
    Unrouted,
    Rejected(String),
}

/// Where messages go.
pub trait Sink: Send {
    /// Publishes `msgs` in order; one outcome per message.
    fn send(&mut self, msgs: &[Outgoing]) -> Vec<Outcome>;
}

/// What to publish.
pub struct Plan {
    pub rooms: usize,
    pub rate: f64,
    pub payload: usize,
    pub mix: PriorityMix,
    pub picker: RoomPicker,
    /// Most messages handed to the sink at once.
    pub max_batch: usize,
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
}

/// A running publisher: one thread per sink.
pub struct Publisher {
    stop: Arc<AtomicBool>,
    state: Arc<PubState>,
    threads: Vec<JoinHandle<()>>,
}

impl Publisher {
    /// Starts one thread per sink; thread `j` of `n` publishes messages `j`, `j + n`, … at
    /// `rate / n`, so rooms and priorities follow the plan whatever `n` is.
    pub fn start(sinks: Vec<Box<dyn Sink>>, plan: Plan) -> Publisher {
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(PubState {
            per_room: Mutex::new(vec![[0; PRIORITIES]; plan.rooms.max(1)]),
            ..PubState::default()
        });
        let plan = Arc::new(plan);
        let lanes = sinks.len() as u64;
        let threads = sinks
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
                    .spawn(move || publish_loop(sink, &plan, lane, &s, &st))
                    .expect("spawn publisher")
            })
            .collect();
        Publisher {
            stop,
            state,
            threads,
        }
    }

    pub fn state(&self) -> &Arc<PubState> {
        &self.state
    }

    /// Stops publishing; returns what was accepted per room and priority.
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
    let head = format!("{{\"ts\":{ts}");
    let bare = head.len() + 1;
    let with_pad = head.len() + ",\"pad\":\"\"}".len();
    if size <= bare || size < with_pad {
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
    stop: &AtomicBool,
    state: &PubState,
) {
    let rate = plan.rate / lane.of as f64;
    let interval = Duration::from_secs_f64(1.0 / rate.max(1e-6));
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut batch: Vec<Outgoing> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let due = (now.duration_since(start).as_secs_f64() * rate) as u64 + 1;
        if due <= sent {
            let next = start + interval.mul_f64(sent as f64);
            std::thread::sleep(
                next.saturating_duration_since(now)
                    .min(Duration::from_millis(50)),
            );
            continue;
        }
        if due - sent > (rate / 10.0).max(1.0) as u64 + 1 {
            state.late_rounds.fetch_add(1, Ordering::Relaxed);
        }
        batch.clear();
        let until = due.min(sent + plan.max_batch as u64);
        while sent < until {
            let n = sent * lane.of + lane.index;
            batch.push(Outgoing {
                room: plan.picker.room(n),
                priority: plan.mix.priority(n),
                data: message_data(sys::unix_micros(), plan.payload),
            });
            sent += 1;
        }
        let t0 = Instant::now();
        let results = sink.send(&batch);
        state
            .send_us
            .fetch_add(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
        state.send_calls.fetch_add(1, Ordering::Relaxed);
        let mut accepted = 0;
        {
            let mut per_room = state.per_room.lock().expect("per-room lock");
            let mut errors = state.errors.lock().expect("errors lock");
            for (m, outcome) in batch.iter().zip(results) {
                match outcome {
                    Outcome::Routed | Outcome::Unrouted => {
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
