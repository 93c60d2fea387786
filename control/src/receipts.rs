//! Receipts (PROTOCOL.md §5 "Receipts"): viewers' `ack`s of messages published with
//! `"ack":true`, remembered (bounded) for `GET /v1/users/{user}/messages/{seq}` and reported to
//! the platform in batches at `--receipt-url`, at most one request per [`REPORT_EVERY`].
//!
//! [`ReceiptStore`] is pure; [`Receipts`] wraps it in a mutex and [`Receipts::spawn_reporter`]
//! runs the batching task.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use hyper::Uri;
use roomcast_proto::link::Ack;
use serde::Serialize;

use crate::proxy::JsonPoster;

/// At most one report request per this interval.
pub const REPORT_EVERY: Duration = Duration::from_millis(100);

/// One receipt as the platform gets it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Receipt {
    pub user: String,
    pub msg_seq: u64,
    pub edge: Arc<str>,
    pub at_ms: u64,
}

/// What is known about one acknowledged message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acknowledged {
    pub edge: Arc<str>,
    pub at_ms: u64,
}

/// The receipts remembered (the newest `capacity`, oldest forgotten first) and those waiting
/// to be reported (at most `capacity`; beyond it the oldest waiting are dropped and counted).
pub struct ReceiptStore {
    capacity: usize,
    kept: HashMap<(Box<str>, u64), Acknowledged>,
    order: VecDeque<(Box<str>, u64)>,
    pending: VecDeque<Receipt>,
    /// Whether receipts are queued for a report at all (a receipt URL is set).
    reporting: bool,
}

/// What recording a batch of acks did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recorded {
    /// First acks of their message: remembered and queued for the platform.
    pub new: u64,
    /// Acks of a message already acknowledged (another connection of the user, a retry).
    pub repeated: u64,
    /// Waiting receipts dropped because the queue was full (the platform is not taking them).
    pub dropped: u64,
}

impl ReceiptStore {
    /// A store remembering `capacity` receipts; `reporting` queues them for the platform too.
    pub fn new(capacity: usize, reporting: bool) -> ReceiptStore {
        ReceiptStore {
            capacity: capacity.max(1),
            kept: HashMap::new(),
            order: VecDeque::new(),
            pending: VecDeque::new(),
            reporting,
        }
    }

    /// Records acks received from `edge`. A message's first ack counts; later ones of the same
    /// (user, seq) are repeats, neither remembered again nor reported again.
    pub fn record(&mut self, edge: &Arc<str>, acks: Vec<Ack>) -> Recorded {
        let mut recorded = Recorded::default();
        for ack in acks {
            let key: (Box<str>, u64) = (ack.user.as_str().into(), ack.msg_seq);
            if self.kept.contains_key(&key) {
                recorded.repeated += 1;
                continue;
            }
            if self.order.len() >= self.capacity {
                if let Some(oldest) = self.order.pop_front() {
                    self.kept.remove(&oldest);
                }
            }
            self.kept.insert(
                key.clone(),
                Acknowledged {
                    edge: Arc::clone(edge),
                    at_ms: ack.at_ms,
                },
            );
            self.order.push_back(key);
            recorded.new += 1;
            if !self.reporting {
                continue;
            }
            if self.pending.len() >= self.capacity {
                self.pending.pop_front();
                recorded.dropped += 1;
            }
            self.pending.push_back(Receipt {
                user: ack.user,
                msg_seq: ack.msg_seq,
                edge: Arc::clone(edge),
                at_ms: ack.at_ms,
            });
        }
        recorded
    }

    /// Whether (and where and when) message `seq` of `user` was acknowledged, while remembered.
    pub fn lookup(&self, user: &str, seq: u64) -> Option<&Acknowledged> {
        self.kept.get(&(Box::from(user), seq))
    }

    /// The receipts waiting to be reported, oldest first (at most `max`).
    pub fn take_pending(&mut self, max: usize) -> Vec<Receipt> {
        let n = self.pending.len().min(max);
        self.pending.drain(..n).collect()
    }

    /// Puts receipts whose report failed back at the head of the queue, as far as it has room
    /// (returns how many did not fit and are dropped).
    pub fn put_back(&mut self, receipts: Vec<Receipt>) -> u64 {
        let room = self.capacity.saturating_sub(self.pending.len());
        let dropped = receipts.len().saturating_sub(room) as u64;
        for receipt in receipts.into_iter().take(room).rev() {
            self.pending.push_front(receipt);
        }
        dropped
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

/// Most receipts in one report request.
const MAX_PER_REPORT: usize = 10_000;

/// The receipt store shared by the link tasks, the API and the reporter, with its counters.
pub struct Receipts {
    store: Mutex<ReceiptStore>,
    url: Option<Uri>,
    /// Receipts received (first acks), repeated acks, reported to the platform, dropped, and
    /// acks of messages that never asked for one (or were never published), ignored.
    pub received: AtomicU64,
    pub invalid: AtomicU64,
    pub repeated: AtomicU64,
    pub reported: AtomicU64,
    pub dropped: AtomicU64,
    /// Report requests that failed (their receipts are retried while there is room).
    pub report_failures: AtomicU64,
}

impl Receipts {
    pub fn new(capacity: usize, url: Option<Uri>) -> Receipts {
        Receipts {
            store: Mutex::new(ReceiptStore::new(capacity, url.is_some())),
            url,
            received: AtomicU64::new(0),
            invalid: AtomicU64::new(0),
            repeated: AtomicU64::new(0),
            reported: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            report_failures: AtomicU64::new(0),
        }
    }

    fn store(&self) -> std::sync::MutexGuard<'_, ReceiptStore> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records an edge's `acks` frame.
    pub fn record(&self, edge: &Arc<str>, acks: Vec<Ack>) {
        let recorded = self.store().record(edge, acks);
        self.received.fetch_add(recorded.new, Ordering::Relaxed);
        self.repeated
            .fetch_add(recorded.repeated, Ordering::Relaxed);
        self.dropped.fetch_add(recorded.dropped, Ordering::Relaxed);
    }

    pub fn lookup(&self, user: &str, seq: u64) -> Option<Acknowledged> {
        self.store().lookup(user, seq).cloned()
    }

    pub fn pending(&self) -> usize {
        self.store().pending()
    }

    /// Starts the task that reports waiting receipts to `--receipt-url`: one request at a time,
    /// at most one per [`REPORT_EVERY`].
    pub fn spawn_reporter(self: &Arc<Self>, poster: JsonPoster) {
        let Some(url) = self.url.clone() else {
            return;
        };
        let receipts = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REPORT_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let batch = receipts.store().take_pending(MAX_PER_REPORT);
                if batch.is_empty() {
                    continue;
                }
                let body = match serde_json::to_vec(&batch) {
                    Ok(body) => Bytes::from(body),
                    Err(_) => continue,
                };
                let n = batch.len() as u64;
                match tokio::time::timeout(Duration::from_secs(5), poster.post(&url, body)).await {
                    Ok(Ok(_)) => {
                        receipts.reported.fetch_add(n, Ordering::Relaxed);
                    }
                    failed => {
                        let why = match failed {
                            Ok(Err(e)) => e.to_string(),
                            _ => "no answer within 5 s".into(),
                        };
                        tracing::warn!(%url, why, receipts = n, "reporting receipts failed; retrying");
                        receipts.report_failures.fetch_add(1, Ordering::Relaxed);
                        let dropped = receipts.store().put_back(batch);
                        receipts.dropped.fetch_add(dropped, Ordering::Relaxed);
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(user: &str, msg_seq: u64, at_ms: u64) -> Ack {
        Ack {
            user: user.into(),
            msg_seq,
            at_ms,
        }
    }

    #[test]
    fn the_first_ack_of_a_message_counts_and_is_reported_once() {
        let e1: Arc<str> = "e1".into();
        let e2: Arc<str> = "e2".into();
        let mut store = ReceiptStore::new(10, true);
        let r = store.record(&e1, vec![ack("u1", 7, 100), ack("u1", 8, 101)]);
        assert_eq!((r.new, r.repeated, r.dropped), (2, 0, 0));
        // The user's other connection acks 7 too.
        let r = store.record(&e2, vec![ack("u1", 7, 150)]);
        assert_eq!((r.new, r.repeated), (0, 1));
        assert_eq!(
            store.lookup("u1", 7),
            Some(&Acknowledged {
                edge: e1.clone(),
                at_ms: 100
            })
        );
        assert_eq!(store.lookup("u1", 9), None);
        assert_eq!(store.lookup("u2", 7), None);
        let pending = store.take_pending(usize::MAX);
        assert_eq!(
            pending.iter().map(|r| r.msg_seq).collect::<Vec<_>>(),
            [7, 8]
        );
        assert!(store.take_pending(usize::MAX).is_empty());
    }

    #[test]
    fn memory_is_bounded_oldest_first_and_overflow_is_counted() {
        let e: Arc<str> = "e".into();
        let mut store = ReceiptStore::new(3, true);
        let r = store.record(&e, (1..=5).map(|s| ack("u", s, s)).collect());
        assert_eq!((r.new, r.dropped), (5, 2));
        assert_eq!(store.lookup("u", 2), None, "forgotten");
        assert!(store.lookup("u", 3).is_some());
        let pending = store.take_pending(2);
        assert_eq!(
            pending.iter().map(|r| r.msg_seq).collect::<Vec<_>>(),
            [3, 4]
        );
        // A failed report goes back to the head, as far as there is room.
        assert_eq!(store.put_back(pending), 0);
        // 6 pushes the oldest waiting (3) out.
        let r = store.record(&e, vec![ack("u", 6, 6)]);
        assert_eq!(r.dropped, 1);
        assert_eq!(store.pending(), 3);
        let late = Receipt {
            user: "u".into(),
            msg_seq: 1,
            edge: e.clone(),
            at_ms: 1,
        };
        assert_eq!(store.put_back(vec![late]), 1, "no room: dropped");
        let seqs: Vec<u64> = store.take_pending(10).iter().map(|r| r.msg_seq).collect();
        assert_eq!(seqs, [4, 5, 6]);
    }
}
