//! The sends waiting for the platform's backend (`--send-proxy-queue`), each with the deadline
//! by which it must be answered (`--send-proxy-timeout-ms` from its arrival). Pure: the proxy's
//! dispatcher ([`crate::upstream`]) feeds it the time.
//!
//! Sends leave in arrival order, so the ones past their deadline are always at the head: taking
//! a batch or expiring looks at the head only.

use std::collections::VecDeque;
use std::time::Instant;

/// One waiting send.
#[derive(Debug)]
pub struct Waiting<T> {
    pub item: T,
    /// When it arrived (the proxy latency is measured from here).
    pub arrived: Instant,
    /// When it must have been answered.
    pub deadline: Instant,
}

/// A bounded FIFO of sends with deadlines.
#[derive(Debug)]
pub struct ProxyQueue<T> {
    waiting: VecDeque<Waiting<T>>,
    capacity: usize,
}

impl<T> ProxyQueue<T> {
    /// A queue holding at most `capacity` waiting sends.
    pub fn new(capacity: usize) -> ProxyQueue<T> {
        ProxyQueue {
            waiting: VecDeque::new(),
            capacity,
        }
    }

    /// Queues `item` (arrived at `now`, due at `deadline`), or gives it back when the queue is
    /// full.
    pub fn push(&mut self, item: T, now: Instant, deadline: Instant) -> Result<(), T> {
        if self.waiting.len() >= self.capacity {
            return Err(item);
        }
        self.waiting.push_back(Waiting {
            item,
            arrived: now,
            deadline,
        });
        Ok(())
    }

    /// The sends past their deadline at `now`, oldest first.
    pub fn expire(&mut self, now: Instant) -> Vec<Waiting<T>> {
        let due = self
            .waiting
            .iter()
            .position(|w| w.deadline > now)
            .unwrap_or(self.waiting.len());
        self.waiting.drain(..due).collect()
    }

    /// Up to `max` of the waiting sends, oldest first, for one request (after [`Self::expire`]
    /// took those out of time).
    pub fn take_batch(&mut self, max: usize) -> Vec<Waiting<T>> {
        let n = self.waiting.len().min(max);
        self.waiting.drain(..n).collect()
    }

    /// The earliest deadline of a waiting send.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.waiting.front().map(|w| w.deadline)
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const TIMEOUT: Duration = Duration::from_millis(1000);

    fn items(batch: Vec<Waiting<u32>>) -> Vec<u32> {
        batch.into_iter().map(|w| w.item).collect()
    }

    #[test]
    fn full_queue_gives_the_send_back() {
        let t0 = Instant::now();
        let mut q = ProxyQueue::new(2);
        assert!(q.push(1, t0, t0 + TIMEOUT).is_ok());
        assert!(q.push(2, t0, t0 + TIMEOUT).is_ok());
        assert_eq!(q.push(3, t0, t0 + TIMEOUT), Err(3));
        assert_eq!(items(q.take_batch(1)), [1]);
        assert!(q.push(3, t0, t0 + TIMEOUT).is_ok());
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn batches_are_oldest_first_and_at_most_max() {
        let t0 = Instant::now();
        let mut q = ProxyQueue::new(100);
        for i in 0..10 {
            q.push(i, t0, t0 + TIMEOUT).unwrap();
        }
        assert_eq!(items(q.take_batch(4)), [0, 1, 2, 3]);
        assert_eq!(items(q.take_batch(100)), [4, 5, 6, 7, 8, 9]);
        assert!(q.take_batch(4).is_empty());
        assert_eq!(q.next_deadline(), None);
    }

    #[test]
    fn sends_past_their_deadline_expire_and_the_rest_wait() {
        let t0 = Instant::now();
        let mut q = ProxyQueue::new(100);
        for i in 0..5u32 {
            let at = t0 + Duration::from_millis(100 * u64::from(i));
            q.push(i, at, at + TIMEOUT).unwrap();
        }
        assert_eq!(q.next_deadline(), Some(t0 + TIMEOUT));
        assert!(q.expire(t0 + TIMEOUT - Duration::from_millis(1)).is_empty());
        // Exactly at its deadline a send is out of time.
        let expired = q.expire(t0 + TIMEOUT + Duration::from_millis(150));
        assert_eq!(expired.iter().map(|w| w.item).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(expired[1].arrived, t0 + Duration::from_millis(100));
        assert_eq!(
            q.next_deadline(),
            Some(t0 + Duration::from_millis(200) + TIMEOUT)
        );
        assert_eq!(items(q.take_batch(10)), [2, 3, 4]);
    }
}
