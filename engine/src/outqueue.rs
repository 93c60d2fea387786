//! A connection's bounded send queue.
//!
//! Room batches are shared: one `Rc<SharedFrame>` per core points at the batch's `Bytes`, and each
//! member's queue holds a clone of that `Rc` (a plain, non-atomic increment, and an 8-byte queue
//! entry). Replies and control frames get an `Rc` of their own. A flush puts the queued frames
//! into a [`WriteBuf`] for one vectored write (one more `Rc` clone per frame: the buffer keeps
//! what the kernel reads alive on its own); `advance` consumes what the kernel took, resuming
//! mid-frame after a partial write.
//!
//! Bounds apply when a window's batch (one or more frames) arrives. A queue holding at most `soft`
//! bytes before it takes the whole batch, whatever its size: a reader that keeps up loses nothing.
//! A queue already over `soft` belongs to a reader that fell behind: its oldest frames of the
//! lowest priority are dropped until it is back within `soft` (never a frame holding a priority-0
//! message, never a reply, never a frame the kernel has partly taken or a write in flight carries
//! — the queue's front must stay what that write sent, for `advance`). When what was waiting before the batch is still over `hard` after that, the caller
//! closes the connection as slow. A reader that stops reading altogether is caught by the
//! worker's write-stall timeout instead, since shedding alone keeps its queue under `hard`.
//!
//! A batch's last frame carries its [`WriteProgress`] slot: whichever way that frame leaves a
//! queue (written, shed, or the connection gone — [`OutQueue::abandon`]) the slot is settled once
//! for this member, so the hub learns when the batch is written (see `progress`).
//!
//! A room's online count ([`OutQueue::push_online_count`]) is not a message of any stream: only
//! its latest value matters. A newer count of a room takes the place of an unsent older one in the
//! queue instead of queueing behind it, so a connection holds at most one unsent count per room
//! (plus one a write has started), and it is never shed: bounded that way, it costs a slow reader
//! nothing worth shedding, and chat goes first.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

use crate::progress::{ProgressSlot, WriteProgress};
use crate::sys::{Payload, WriteBuf};
use roomcast_proto::message::PRIORITIES;

/// A batch frame shared by every member of a channel on one core.
#[derive(Debug)]
pub struct SharedFrame {
    pub bytes: Bytes,
    /// Priority of the batch's most important message.
    pub min_priority: u8,
    /// Messages per priority in the batch (for drop accounting).
    pub counts: [u32; PRIORITIES],
    /// On the last frame of a batch: the batch's write-progress slot on this core.
    pub progress: Option<ProgressSlot>,
    /// On a room's online count: the room. A newer count of the same room replaces this one
    /// while it is unsent.
    pub online_count_of: Option<Arc<str>>,
}

impl Payload for SharedFrame {
    fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl SharedFrame {
    /// A reply, pong, handshake response or close frame: it counts no message and, like a batch
    /// holding priority 0, is never dropped.
    fn control(bytes: Bytes) -> SharedFrame {
        SharedFrame {
            bytes,
            min_priority: 0,
            counts: [0; PRIORITIES],
            progress: None,
            online_count_of: None,
        }
    }

    /// A room's online count: it counts no message and, like a reply, is never dropped (a newer
    /// count replaces it instead, see [`OutQueue::push_online_count`]).
    pub fn online_count(room: Arc<str>, bytes: Bytes) -> SharedFrame {
        SharedFrame {
            online_count_of: Some(room),
            ..SharedFrame::control(bytes)
        }
    }

    fn is_online_count_of(&self, room: &Arc<str>) -> bool {
        self.online_count_of
            .as_ref()
            .is_some_and(|mine| Arc::ptr_eq(mine, room) || **mine == **room)
    }
}

/// Entries kept allocated in an idle queue: enough for a batch and a reply without allocating on
/// the fan-out path.
const IDLE_CAPACITY: usize = 4;

/// Messages dropped from a queue, per priority.
pub type DropCounts = [u64; PRIORITIES];

/// What happened when a frame was queued.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PushOutcome {
    /// Messages dropped to get back under the soft bound, per priority.
    pub dropped: DropCounts,
    /// Batches dropped.
    pub dropped_frames: u32,
    /// What was waiting before the batch is still over the hard bound after dropping: close the
    /// connection as slow.
    pub over_hard: bool,
}

#[derive(Debug, Default)]
pub struct OutQueue {
    frames: VecDeque<Rc<SharedFrame>>,
    /// Bytes of the front frame already written.
    head_offset: usize,
    /// Bytes queued and not yet written.
    queued: usize,
    /// Frames the write in flight carries (front of the queue); `advance` consumes them, so they
    /// must not be dropped meanwhile. (At most `MAX_IOVECS`; a u32 keeps the queue at 56 bytes
    /// with the counter below.)
    pinned: u32,
    /// Room online counts in `frames`: while 0, queueing one needs no search for an older one.
    online_counts: u32,
}

impl OutQueue {
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The write-progress slots of the batches waiting here.
    pub fn slots(&self) -> impl Iterator<Item = ProgressSlot> + '_ {
        self.frames.iter().filter_map(|f| f.progress)
    }

    pub fn queued_bytes(&self) -> usize {
        self.queued
    }

    /// Queues a reply or control frame. It is never dropped, so it does not apply the bounds.
    pub fn push_owned(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        self.queued += bytes.len();
        self.frames.push_back(Rc::new(SharedFrame::control(bytes)));
    }

    /// Queues a room's online count (`frame` from [`SharedFrame::online_count`]): in the place
    /// of an unsent older count of the same room when the queue holds one, else at the back.
    /// Returns whether it replaced one. Never drops anything and never applies the bounds (see
    /// the module documentation).
    pub fn push_online_count(&mut self, frame: &Rc<SharedFrame>) -> bool {
        let Some(room) = frame.online_count_of.as_ref() else {
            debug_assert!(false, "not an online count");
            return false;
        };
        if self.online_counts > 0 {
            let first_unsent = self.first_movable();
            let older = self
                .frames
                .iter()
                .skip(first_unsent)
                .position(|f| f.is_online_count_of(room))
                .map(|i| i + first_unsent);
            if let Some(index) = older {
                let old = std::mem::replace(&mut self.frames[index], Rc::clone(frame));
                self.queued = self.queued - old.bytes.len() + frame.bytes.len();
                return true;
            }
        }
        self.queued += frame.bytes.len();
        self.online_counts += 1;
        self.frames.push_back(Rc::clone(frame));
        false
    }

    /// The index of the first frame no write has started: frames before it are pinned by the
    /// write in flight, or partly written.
    fn first_movable(&self) -> usize {
        (self.pinned as usize).max(usize::from(self.head_offset > 0))
    }

    /// Queues the frames of one window's batch, in order, and enforces the bounds (see the
    /// module documentation).
    pub fn push_batch(
        &mut self,
        batch: &[Rc<SharedFrame>],
        soft: usize,
        hard: usize,
        progress: &mut WriteProgress,
    ) -> PushOutcome {
        let backlog = self.queued;
        let mut first_new = self.frames.len();
        let mut new_bytes = 0;
        for frame in batch {
            new_bytes += frame.bytes.len();
            self.frames.push_back(Rc::clone(frame));
        }
        self.queued += new_bytes;
        let mut outcome = PushOutcome::default();
        if backlog <= soft {
            // Within its bound before this batch: the reader keeps up, take the batch whole.
            return outcome;
        }
        while self.queued > soft {
            let Some(index) = self.lowest_priority_droppable() else {
                break;
            };
            let Some(f) = self.frames.remove(index) else {
                break;
            };
            self.queued -= f.bytes.len();
            if let Some(slot) = f.progress {
                progress.settle(slot);
            }
            if index >= first_new {
                new_bytes -= f.bytes.len();
            } else {
                first_new -= 1;
            }
            outcome.dropped_frames += 1;
            for (total, &n) in outcome.dropped.iter_mut().zip(f.counts.iter()) {
                *total += n as u64;
            }
        }
        outcome.over_hard = self.queued - new_bytes > hard;
        outcome
    }

    /// The oldest droppable frame of the least important priority present.
    fn lowest_priority_droppable(&self) -> Option<usize> {
        let first_movable = self.first_movable();
        let mut best: Option<(usize, u8)> = None;
        for (index, f) in self.frames.iter().enumerate().skip(first_movable) {
            if f.min_priority == 0 {
                continue;
            }
            if best.is_none_or(|(_, p)| f.min_priority > p) {
                best = Some((index, f.min_priority));
            }
        }
        best.map(|(index, _)| index)
    }

    /// Puts the queued frames (at most `max` of them) into `buf`, from where the last write
    /// stopped, and pins them until `advance`. Returns the number of bytes offered.
    pub fn fill(&mut self, buf: &mut WriteBuf, max: usize) -> usize {
        let mut skip = self.head_offset;
        let mut count = 0;
        for frame in self.frames.iter().take(max) {
            let part: Rc<dyn Payload> = Rc::<SharedFrame>::clone(frame);
            buf.push(part, skip);
            skip = 0;
            count += 1;
        }
        self.pinned = count as u32;
        buf.len()
    }

    /// Consumes `written` bytes from the front after a write finished, and unpins.
    pub fn advance(&mut self, mut written: usize, progress: &mut WriteProgress) {
        self.pinned = 0;
        self.queued -= written.min(self.queued);
        while written > 0 {
            let Some(front) = self.frames.front() else {
                break;
            };
            let left = front.bytes.len() - self.head_offset;
            if written >= left {
                written -= left;
                self.head_offset = 0;
                let Some(frame) = self.frames.pop_front() else {
                    break;
                };
                if frame.online_count_of.is_some() {
                    self.online_counts -= 1;
                }
                if let Some(slot) = frame.progress {
                    progress.settle(slot);
                }
            } else {
                self.head_offset += written;
                written = 0;
            }
        }
        if self.frames.is_empty() && self.frames.capacity() > 4 * IDLE_CAPACITY {
            // A burst grew the queue; give most of it back once it drained.
            self.frames.shrink_to(IDLE_CAPACITY);
        }
    }

    /// Releases the pin after a failed write (nothing was consumed).
    pub fn unpin(&mut self) {
        self.pinned = 0;
    }

    /// The connection is gone: settles the batches still queued.
    pub fn abandon(&mut self, progress: &mut WriteProgress) {
        for slot in self.frames.drain(..).filter_map(|f| f.progress) {
            progress.settle(slot);
        }
        self.queued = 0;
        self.head_offset = 0;
        self.pinned = 0;
        self.online_counts = 0;
    }

    /// Messages still queued, per priority (counted as dropped when a connection closes with them).
    pub fn undelivered(&self) -> DropCounts {
        let mut counts = [0u64; PRIORITIES];
        for f in &self.frames {
            for (total, &n) in counts.iter_mut().zip(f.counts.iter()) {
                *total += n as u64;
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(len: usize, priority: u8) -> Rc<SharedFrame> {
        let mut counts = [0; PRIORITIES];
        counts[priority as usize] = 1;
        Rc::new(SharedFrame {
            bytes: Bytes::from(vec![priority; len]),
            min_priority: priority,
            counts,
            progress: None,
            online_count_of: None,
        })
    }

    /// A room's online count whose bytes are `value` repeated `len` times.
    fn online(room: &Arc<str>, value: u8, len: usize) -> Rc<SharedFrame> {
        Rc::new(SharedFrame::online_count(
            Arc::clone(room),
            Bytes::from(vec![value; len]),
        ))
    }

    #[test]
    fn a_newer_online_count_replaces_an_unsent_older_one_in_place() {
        let r1: Arc<str> = "r1".into();
        let r2: Arc<str> = "r2".into();
        let mut q = OutQueue::default();
        push(&mut q, batch(4, 3), 1000, 2000);
        assert!(!q.push_online_count(&online(&r1, 10, 2)));
        push(&mut q, batch(4, 2), 1000, 2000);
        assert!(!q.push_online_count(&online(&r2, 20, 2)));
        // Newer counts of both rooms: each takes its older one's place, nothing queues behind.
        assert!(q.push_online_count(&online(&r1, 11, 3)));
        assert!(q.push_online_count(&online(&r2, 21, 1)));
        // A room name equal but not the same allocation is the same room.
        assert!(q.push_online_count(&online(&"r1".into(), 12, 3)));
        assert_eq!(q.queued_bytes(), 4 + 3 + 4 + 1);
        assert_eq!(
            drain(&mut q),
            [vec![3u8; 4], vec![12; 3], vec![2; 4], vec![21; 1]].concat()
        );
        // Written: the next count queues afresh.
        assert!(!q.push_online_count(&online(&r1, 13, 2)));
        assert_eq!(drain(&mut q), vec![13u8; 2]);
    }

    #[test]
    fn an_online_count_a_write_started_is_not_replaced() {
        let r1: Arc<str> = "r1".into();
        let mut q = OutQueue::default();
        q.push_online_count(&online(&r1, 1, 4));
        q.fill(&mut buf(), 1024);
        // In flight: the newer count queues behind it; the one after replaces the newer.
        assert!(!q.push_online_count(&online(&r1, 2, 4)));
        assert!(q.push_online_count(&online(&r1, 3, 4)));
        q.advance(2, &mut WriteProgress::default());
        // Partly written: still not replaceable.
        assert!(q.push_online_count(&online(&r1, 4, 4)));
        assert_eq!(drain(&mut q), [vec![1u8; 2], vec![4; 4]].concat());
        assert!(q.is_empty());
    }

    #[test]
    fn online_counts_are_never_shed_and_chat_goes_first() {
        let r1: Arc<str> = "r1".into();
        let mut q = OutQueue::default();
        push(&mut q, batch(10, 3), 1000, 1000);
        q.push_online_count(&online(&r1, 9, 10));
        push(&mut q, batch(10, 2), 1000, 1000);
        push(&mut q, batch(10, 3), 1000, 1000);
        // 40 waiting, over 15: every chat goes, then the gift; the count stays.
        let outcome = push(&mut q, batch(10, 3), 15, 1000);
        assert_eq!(outcome.dropped, [0, 0, 1, 3]);
        assert_eq!(drain(&mut q), vec![9u8; 10]);
        // A queue of nothing but counts sheds nothing, and reports what waits.
        let mut q = OutQueue::default();
        for i in 0..20u8 {
            let room: Arc<str> = format!("r{i}").into();
            q.push_online_count(&online(&room, i, 10));
        }
        let outcome = push(&mut q, batch(10, 3), 50, 150);
        assert_eq!(outcome.dropped, [0, 0, 0, 1]);
        assert!(outcome.over_hard);
        assert_eq!(q.queued_bytes(), 200);
    }

    fn buf() -> WriteBuf {
        crate::sys::WriteBufs::new().take()
    }

    fn drain(q: &mut OutQueue) -> Vec<u8> {
        let mut buf = buf();
        let n = q.fill(&mut buf, 1024);
        let out = buf.to_vec();
        assert_eq!(out.len(), n);
        q.advance(n, &mut WriteProgress::default());
        out
    }

    /// Queues one single-frame batch.
    fn push(q: &mut OutQueue, frame: Rc<SharedFrame>, soft: usize, hard: usize) -> PushOutcome {
        q.push_batch(&[frame], soft, hard, &mut WriteProgress::default())
    }

    #[test]
    fn partial_writes_resume_mid_frame() {
        let mut q = OutQueue::default();
        q.push_owned(Bytes::from_static(b"hello"));
        push(&mut q, batch(3, 2), 1000, 2000);
        assert_eq!(q.fill(&mut buf(), 1024), 8);
        q.advance(3, &mut WriteProgress::default());
        assert_eq!(q.queued_bytes(), 5);
        assert_eq!(drain(&mut q), b"lo\x02\x02\x02");
        assert!(q.is_empty());
        assert_eq!(q.queued_bytes(), 0);
    }

    #[test]
    fn a_batch_on_a_queue_within_its_bound_is_taken_whole_however_big() {
        let mut q = OutQueue::default();
        // Alone, and over both bounds: still queued, and not a reason to close.
        let outcome = push(&mut q, batch(100, 3), 10, 50);
        assert_eq!(outcome, PushOutcome::default());
        assert_eq!(q.queued_bytes(), 100);
        drain(&mut q);
        // A backlog within the soft bound, then a batch of several frames: nothing is shed.
        push(&mut q, batch(8, 3), 10, 50);
        let outcome = q.push_batch(
            &[batch(20, 3), batch(20, 2), batch(20, 3)],
            10,
            50,
            &mut WriteProgress::default(),
        );
        assert_eq!(outcome, PushOutcome::default());
        assert_eq!(
            drain(&mut q),
            [vec![3u8; 8], vec![3; 20], vec![2; 20], vec![3; 20]].concat()
        );
    }

    #[test]
    fn over_the_soft_bound_older_frames_go_first() {
        let mut q = OutQueue::default();
        push(&mut q, batch(10, 3), 15, 100); // A
        push(&mut q, batch(10, 3), 15, 100); // B: 10 waiting, within 15
        let outcome = push(&mut q, batch(10, 3), 15, 100); // C: 20 waiting, over 15
        assert_eq!(outcome.dropped, [0, 0, 0, 2]);
        assert_eq!(outcome.dropped_frames, 2);
        assert!(!outcome.over_hard);
        // A and B went, oldest first; C, the newest, stays.
        assert_eq!(q.queued_bytes(), 10);
        assert_eq!(drain(&mut q), vec![3u8; 10]);
    }

    #[test]
    fn over_the_soft_bound_the_lowest_priority_goes_first_oldest_first() {
        let mut q = OutQueue::default();
        push(&mut q, batch(10, 3), 25, 100); // oldest P3
        push(&mut q, batch(10, 1), 25, 100);
        push(&mut q, batch(10, 3), 25, 100); // newer P3
        let outcome = push(&mut q, batch(4, 2), 25, 100); // 30 waiting: over 25
        assert_eq!(outcome.dropped, [0, 0, 0, 1]);
        // The oldest P3 went, which was enough; order of the rest is kept.
        assert_eq!(
            drain(&mut q),
            [vec![1u8; 10], vec![3; 10], vec![2; 4]].concat()
        );
    }

    #[test]
    fn priority_zero_and_replies_are_never_dropped_and_hard_bound_reports() {
        let mut q = OutQueue::default();
        q.push_owned(Bytes::from(vec![9u8; 30]));
        let outcome = push(&mut q, batch(30, 0), 40, 50);
        assert_eq!(outcome, PushOutcome::default());
        // 60 waiting, nothing droppable: a newcomer of priority 3 is the one shed, and what
        // waits is over the hard bound.
        let outcome = push(&mut q, batch(30, 3), 40, 50);
        assert_eq!(outcome.dropped, [0, 0, 0, 1]);
        assert!(outcome.over_hard);
        let outcome = push(&mut q, batch(30, 0), 40, 50);
        assert_eq!(outcome.dropped, [0; 4]);
        assert!(outcome.over_hard);
        assert_eq!(q.queued_bytes(), 90);
    }

    #[test]
    fn the_hard_bound_counts_what_waited_before_the_batch() {
        let mut q = OutQueue::default();
        push(&mut q, batch(40, 0), 10, 50);
        // 40 waiting (over soft, within hard), 60 arriving: not slow.
        assert!(!push(&mut q, batch(60, 0), 10, 50).over_hard);
        // 100 waiting: slow.
        assert!(push(&mut q, batch(1, 0), 10, 50).over_hard);
    }

    #[test]
    fn frames_pinned_by_a_write_in_flight_are_not_dropped() {
        let mut q = OutQueue::default();
        push(&mut q, batch(10, 3), 15, 1000);
        q.fill(&mut buf(), 1024);
        // 10 waiting: taken.
        push(&mut q, batch(10, 3), 15, 1000);
        // 20 waiting: the write in flight points at the first frame, so the others go.
        let outcome = push(&mut q, batch(10, 3), 15, 1000);
        assert_eq!(outcome.dropped, [0, 0, 0, 2]);
        q.advance(10, &mut WriteProgress::default());
        assert!(q.is_empty());
    }

    #[test]
    fn partly_written_front_frame_is_not_dropped() {
        let mut q = OutQueue::default();
        push(&mut q, batch(10, 3), 10, 1000);
        q.fill(&mut buf(), 1024);
        q.advance(4, &mut WriteProgress::default());
        // 6 waiting: taken.
        push(&mut q, batch(10, 1), 10, 1000);
        // 16 waiting: the partly written P3 cannot go, so the P2 and then the P1 do.
        let outcome = push(&mut q, batch(10, 2), 10, 1000);
        assert_eq!(outcome.dropped, [0, 1, 1, 0]);
        assert_eq!(drain(&mut q), vec![3u8; 6]);
    }

    #[test]
    fn iovec_count_is_capped() {
        let mut q = OutQueue::default();
        for _ in 0..5 {
            q.push_owned(Bytes::from_static(b"ab"));
        }
        let mut b = buf();
        assert_eq!(q.fill(&mut b, 3), 6);
        assert_eq!(b.parts(), 3);
    }

    #[test]
    fn undelivered_counts_queued_messages() {
        let mut q = OutQueue::default();
        push(&mut q, batch(1, 1), 100, 100);
        push(&mut q, batch(1, 3), 100, 100);
        q.push_owned(Bytes::from_static(b"x"));
        assert_eq!(q.undelivered(), [0, 1, 0, 1]);
    }

    #[test]
    fn a_batch_settles_once_per_member_when_written_shed_or_abandoned() {
        use crate::fanout::Delivery;
        use roomcast_proto::message::Target;
        use std::sync::Arc;
        use std::time::Instant;

        let mut progress = WriteProgress::default();
        let delivery = Arc::new(Delivery {
            target: Target::Room("r".into()),
            frames: Vec::new(),
            first_received: Instant::now(),
            ticket: 5,
            last_seq: 0,
        });
        let slot = progress.begin(&delivery);
        // A two-frame batch: only the last frame carries the slot.
        let last = Rc::new(SharedFrame {
            progress: Some(slot),
            ..Rc::into_inner(batch(10, 3)).unwrap()
        });
        let frames = [batch(10, 3), last];
        let (mut written, mut shed, mut gone) = (
            OutQueue::default(),
            OutQueue::default(),
            OutQueue::default(),
        );
        for q in [&mut written, &mut shed, &mut gone] {
            q.push_batch(&frames, 1000, 1000, &mut progress);
        }
        progress.queued(slot, 3, 0);
        // Written: the first frame and part of the last do not settle; the rest does.
        written.advance(15, &mut progress);
        assert_eq!(progress.take_written().count(), 0);
        written.advance(5, &mut progress);
        // Shed: a later batch pushes the queue over its soft bound.
        shed.push_batch(&[batch(10, 3)], 5, 1000, &mut progress);
        assert_eq!(progress.take_written().count(), 0, "2 of 3 is under 90 %");
        gone.abandon(&mut progress);
        assert_eq!(
            progress
                .take_written()
                .map(|d| d.ticket)
                .collect::<Vec<_>>(),
            vec![5]
        );
        assert_eq!(progress.in_flight(), 0);
    }
}
