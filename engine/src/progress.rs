//! How far each batch handed to a worker has been written to its members there. The hub holds a
//! channel's next merge window until the previous batch is written to most of its members (see
//! `window`): this is where a worker finds out, without a per-recipient message, lock or atomic.
//!
//! A batch queued on `n` members of the core gets a slot here, and the last frame of the batch
//! (in each wire format) carries the slot's index. Each member's queue settles the slot once, when
//! that frame leaves the queue: written to the kernel, shed by the queue bounds, or dropped with
//! a closed connection (the frames before it left first: queues are FIFO, and shedding an earlier
//! frame only makes the member faster). When [`RELEASE_PERCENT`] of the `n` have settled the
//! batch is reported written, once; the slot is freed when all have.

use std::sync::Arc;

use slab::Slab;

use crate::fanout::Delivery;

/// Share of a batch's members on a core that must have it written before the core reports it
/// written: a few slow readers do not hold back the room, and the queue bounds deal with them.
pub const RELEASE_PERCENT: u64 = 90;

/// A member whose socket has taken no byte for this long while data waits for it is stalled, not
/// slow: a batch queued on it is not waited for (in a room of a few members one stalled reader
/// would otherwise hold every window to `--max-window-ms`). It still settles the batch.
pub const STALLED_AFTER_MS: u32 = 500;

/// A slot's index, carried by the batch's last frame.
pub type ProgressSlot = u32;

#[derive(Debug)]
struct Slot {
    delivery: Arc<Delivery>,
    /// Members the batch was queued on; `None` while it is being queued.
    members: Option<u32>,
    /// Of those, members that were stalled (not waited for).
    stalled: u32,
    settled: u32,
    reported: bool,
}

/// The batches being written on one core.
#[derive(Debug, Default)]
pub struct WriteProgress {
    slots: Slab<Slot>,
    /// Batches written to enough members since the last [`take_written`](Self::take_written).
    written: Vec<Arc<Delivery>>,
}

impl WriteProgress {
    /// A slot for a batch about to be queued; [`queued`](Self::queued) follows with the count.
    pub fn begin(&mut self, delivery: &Arc<Delivery>) -> ProgressSlot {
        let key = self.slots.insert(Slot {
            delivery: Arc::clone(delivery),
            members: None,
            stalled: 0,
            settled: 0,
            reported: false,
        });
        ProgressSlot::try_from(key).expect("fewer than 2^32 batches in flight")
    }

    /// The batch of `slot` was queued on `members` members (some may have settled already),
    /// `stalled` of them stalled.
    pub fn queued(&mut self, slot: ProgressSlot, members: u32, stalled: u32) {
        if let Some(s) = self.slots.get_mut(slot as usize) {
            s.members = Some(members);
            s.stalled = stalled.min(members);
        }
        self.check(slot);
    }

    /// One member of the batch of `slot` stalled: the batch is no longer waited for on its
    /// account (it still settles the slot when the frame leaves its queue).
    pub fn exclude(&mut self, slot: ProgressSlot) {
        if let Some(s) = self.slots.get_mut(slot as usize) {
            s.stalled = s.members.map_or(s.stalled + 1, |m| (s.stalled + 1).min(m));
        }
        self.check(slot);
    }

    /// One member is done with the batch of `slot`.
    pub fn settle(&mut self, slot: ProgressSlot) {
        if let Some(s) = self.slots.get_mut(slot as usize) {
            s.settled += 1;
        }
        self.check(slot);
    }

    fn check(&mut self, slot: ProgressSlot) {
        let Some(s) = self.slots.get_mut(slot as usize) else {
            return;
        };
        let Some(members) = s.members else {
            return;
        };
        let needed = (u64::from(members - s.stalled) * RELEASE_PERCENT).div_ceil(100);
        if !s.reported && u64::from(s.settled) >= needed {
            s.reported = true;
            self.written.push(Arc::clone(&s.delivery));
        }
        if s.settled >= members {
            self.slots.remove(slot as usize);
        }
    }

    /// Batches to report written to the hub.
    pub fn take_written(&mut self) -> std::vec::Drain<'_, Arc<Delivery>> {
        self.written.drain(..)
    }

    /// Batches some member on this core still holds.
    pub fn in_flight(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomcast_proto::message::Target;
    use std::time::Instant;

    fn delivery(ticket: u64) -> Arc<Delivery> {
        Arc::new(Delivery {
            target: Target::Room("r".into()),
            frames: Vec::new(),
            first_received: Instant::now(),
            ticket,
            last_seq: 0,
        })
    }

    fn written(p: &mut WriteProgress) -> Vec<u64> {
        p.take_written().map(|d| d.ticket).collect()
    }

    #[test]
    fn a_batch_is_reported_once_when_most_members_settled_and_freed_when_all_did() {
        let mut p = WriteProgress::default();
        let slot = p.begin(&delivery(7));
        p.queued(slot, 20, 0);
        for _ in 0..17 {
            p.settle(slot);
        }
        assert!(written(&mut p).is_empty(), "17 of 20 is under 90 %");
        p.settle(slot);
        assert_eq!(written(&mut p), vec![7]);
        p.settle(slot);
        assert_eq!(p.in_flight(), 1);
        p.settle(slot);
        assert!(written(&mut p).is_empty(), "reported once");
        assert_eq!(p.in_flight(), 0);
    }

    #[test]
    fn settles_while_queueing_count_and_no_member_means_written_at_once() {
        let mut p = WriteProgress::default();
        let slot = p.begin(&delivery(1));
        p.settle(slot); // shed on arrival by a member over its bound
        assert!(written(&mut p).is_empty(), "the count is not known yet");
        p.queued(slot, 1, 0);
        assert_eq!(written(&mut p), vec![1]);
        assert_eq!(p.in_flight(), 0);

        let empty = p.begin(&delivery(2));
        p.queued(empty, 0, 0);
        assert_eq!(written(&mut p), vec![2]);
        assert_eq!(p.in_flight(), 0);
    }

    #[test]
    fn a_single_member_must_be_written() {
        let mut p = WriteProgress::default();
        let slot = p.begin(&delivery(3));
        p.queued(slot, 1, 0);
        assert!(written(&mut p).is_empty());
        p.settle(slot);
        assert_eq!(written(&mut p), vec![3]);
    }
}
