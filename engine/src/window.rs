//! A channel's merge window and per-priority budget: pure, with time passed in.
//!
//! A channel sends at most one batch per tick. A publish to a channel that sent nothing during the
//! last tick goes out at once (a quiet room gets no added delay); publishes that follow within the
//! tick collect in a window that closes one tick after the previous batch, and go out together.
//! A priority-0 message closes the window at once (keeping what was already waiting, so order
//! holds). A tick of zero sends every publish on its own. Per-window budgets cap how many messages
//! of priorities 1–3 one batch carries; the rest are dropped and counted.

use std::ops::Range;
use std::time::{Duration, Instant};

use roomcast_proto::client::batch_message_len;
use roomcast_proto::link::UNLIMITED;
use roomcast_proto::message::{PushMessage, PRIORITIES};

/// The most messages one batch frame may carry (the binary batch's count is a u16).
pub const MAX_BATCH_MESSAGES: usize = roomcast_proto::client::MAX_MSGS_PER_BATCH;

/// The most bytes the messages of one batch frame may take (see [`frame_ranges`]). A window's
/// batch over this is sent as several frames, so a queue sheds and a write pins a bounded amount
/// at a time; a single message over it is a frame of its own.
pub const MAX_FRAME_MESSAGE_BYTES: usize = 64 * 1024;

/// Splits a window's messages, in order, into the runs that become one frame each: every run
/// holds at least one message, at most [`MAX_BATCH_MESSAGES`], and messages taking at most
/// `max_bytes` in the largest wire format ([`batch_message_len`]) unless it is a single message.
pub fn frame_ranges(
    msgs: &[PushMessage],
    max_bytes: usize,
) -> impl Iterator<Item = Range<usize>> + '_ {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= msgs.len() {
            return None;
        }
        let mut end = start;
        let mut bytes = 0;
        while end < msgs.len() && end - start < MAX_BATCH_MESSAGES {
            let len = batch_message_len(&msgs[end]);
            if end > start && bytes + len > max_bytes {
                break;
            }
            bytes += len;
            end += 1;
        }
        let run = start..end;
        start = end;
        Some(run)
    })
}

/// A channel's pacing, as set by the control plane's rate level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    pub level: u8,
    pub tick: Duration,
    /// Messages per priority per window (`UNLIMITED` = no cap); priority 0 is never capped.
    pub budgets: [u32; PRIORITIES],
}

impl Pacing {
    pub fn unlimited(tick: Duration) -> Pacing {
        Pacing {
            level: 0,
            tick,
            budgets: [UNLIMITED; PRIORITIES],
        }
    }
}

/// What `push` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Queued; the window closes at this instant (it was just opened — arm a timer).
    Opened(Instant),
    /// Queued into an already open window.
    Queued,
    /// Queued, and the window must be flushed now (the channel was quiet for a tick, priority 0,
    /// tick 0, or the batch is full).
    FlushNow,
    /// Over this window's budget for its priority: dropped.
    OverBudget,
}

/// A closed window's contents.
#[derive(Debug)]
pub struct Batch {
    pub msgs: Vec<PushMessage>,
    pub first_received: Instant,
}

#[derive(Debug)]
pub struct Window {
    pub pacing: Pacing,
    msgs: Vec<PushMessage>,
    used: [u32; PRIORITIES],
    opened: Option<Instant>,
    deadline: Option<Instant>,
    /// When the last batch went out.
    last_flush: Option<Instant>,
}

impl Window {
    pub fn new(pacing: Pacing) -> Window {
        Window {
            pacing,
            msgs: Vec::new(),
            used: [0; PRIORITIES],
            opened: None,
            deadline: None,
            last_flush: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// When the open window closes, if one is open.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    pub fn push(&mut self, msg: PushMessage, now: Instant) -> Admit {
        let p = (msg.priority as usize).min(PRIORITIES - 1);
        if p > 0 {
            let budget = self.pacing.budgets[p];
            if budget != UNLIMITED && self.used[p] >= budget {
                return Admit::OverBudget;
            }
        }
        self.used[p] += 1;
        self.msgs.push(msg);
        if self.opened.is_none() {
            self.opened = Some(now);
        }
        let tick = self.pacing.tick;
        let quiet = self
            .last_flush
            .is_none_or(|at| now.duration_since(at) >= tick);
        if p == 0 || tick.is_zero() || self.msgs.len() >= MAX_BATCH_MESSAGES {
            return Admit::FlushNow;
        }
        match (self.deadline, self.last_flush) {
            (Some(_), _) => Admit::Queued,
            (None, Some(last)) if !quiet => {
                let deadline = last + tick;
                self.deadline = Some(deadline);
                Admit::Opened(deadline)
            }
            (None, _) => Admit::FlushNow,
        }
    }

    /// Closes the window and returns its batch (None when empty). The budget starts afresh.
    pub fn take(&mut self, now: Instant) -> Option<Batch> {
        self.used = [0; PRIORITIES];
        self.deadline = None;
        let first_received = self.opened.take().unwrap_or(now);
        if self.msgs.is_empty() {
            return None;
        }
        self.last_flush = Some(now);
        let msgs = std::mem::take(&mut self.msgs);
        Some(Batch {
            msgs,
            first_received,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    const TICK: Duration = Duration::from_millis(100);

    fn msg(seq: u64, priority: u8) -> PushMessage {
        PushMessage {
            seq,
            priority,
            kind: "chat".into(),
            data: Bytes::from_static(b"1"),
        }
    }

    /// A window whose channel sent a batch at `t0`, so the next publishes are merged.
    fn busy_window(pacing: Pacing, t0: Instant) -> Window {
        let mut w = Window::new(pacing);
        assert_eq!(w.push(msg(0, 0), t0), Admit::FlushNow);
        w.take(t0).unwrap();
        w
    }

    #[test]
    fn a_quiet_channel_sends_at_once_and_a_busy_one_merges_until_a_tick_after_its_last_batch() {
        let t0 = Instant::now();
        let mut w = busy_window(Pacing::unlimited(TICK), t0);
        let t1 = t0 + Duration::from_millis(30);
        assert_eq!(w.push(msg(1, 3), t1), Admit::Opened(t0 + TICK));
        assert_eq!(
            w.push(msg(2, 2), t0 + Duration::from_millis(50)),
            Admit::Queued
        );
        let batch = w.take(t0 + TICK).unwrap();
        assert_eq!(
            batch.msgs.iter().map(|m| m.seq).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(
            batch.msgs.iter().map(|m| m.priority).collect::<Vec<_>>(),
            vec![3, 2]
        );
        assert_eq!(batch.first_received, t1);
        assert!(w.deadline().is_none());
        // Quiet for a whole tick after that batch: the next publish goes out alone, at once.
        assert_eq!(w.push(msg(3, 3), t0 + TICK * 2), Admit::FlushNow);
    }

    #[test]
    fn the_first_publish_to_a_quiet_channel_goes_out_at_once() {
        let mut w = Window::new(Pacing::unlimited(TICK));
        assert_eq!(w.push(msg(1, 3), Instant::now()), Admit::FlushNow);
    }

    #[test]
    fn priority_zero_flushes_at_once_keeping_order() {
        let t0 = Instant::now();
        let mut w = busy_window(Pacing::unlimited(Duration::from_secs(5)), t0);
        assert!(matches!(w.push(msg(1, 3), t0), Admit::Opened(_)));
        assert_eq!(w.push(msg(2, 0), t0), Admit::FlushNow);
        let batch = w.take(t0).unwrap();
        assert_eq!(
            batch.msgs.iter().map(|m| m.seq).collect::<Vec<_>>(),
            vec![1, 2]
        );
    }

    #[test]
    fn zero_tick_sends_each_publish_alone() {
        let t0 = Instant::now();
        let mut w = busy_window(Pacing::unlimited(Duration::ZERO), t0);
        assert_eq!(w.push(msg(1, 3), t0), Admit::FlushNow);
    }

    fn sized(seq: u64, data_len: usize) -> PushMessage {
        PushMessage {
            seq,
            priority: 3,
            kind: "k".into(),
            data: Bytes::from(vec![b'1'; data_len]),
        }
    }

    #[test]
    fn frame_ranges_cover_every_message_once_in_order_within_the_byte_bound() {
        // 10 messages of the same size (two-digit seqs), 3 per frame (a fourth would pass the
        // bound).
        let msgs: Vec<PushMessage> = (10..20).map(|seq| sized(seq, 1000)).collect();
        let per = batch_message_len(&msgs[0]);
        let runs: Vec<Range<usize>> = frame_ranges(&msgs, per * 3 + per / 2).collect();
        assert_eq!(runs, vec![0..3, 3..6, 6..9, 9..10]);
        // Exactly at the bound still fits.
        let runs: Vec<Range<usize>> = frame_ranges(&msgs, per * 5).collect();
        assert_eq!(runs, vec![0..5, 5..10]);
        // Under the bound altogether: one frame.
        assert_eq!(
            frame_ranges(&msgs, 1 << 20).collect::<Vec<_>>(),
            vec![0..10]
        );
        assert_eq!(frame_ranges(&[], 100).count(), 0);
    }

    #[test]
    fn a_message_over_the_bound_is_a_frame_of_its_own() {
        let msgs = vec![sized(1, 10), sized(2, 10), sized(3, 5000), sized(4, 10)];
        let runs: Vec<Range<usize>> = frame_ranges(&msgs, 1000).collect();
        assert_eq!(runs, vec![0..2, 2..3, 3..4]);
        // Even a zero bound makes progress, one message per frame.
        assert_eq!(frame_ranges(&msgs, 0).count(), 4);
    }

    #[test]
    fn frame_ranges_keep_the_message_count_limit() {
        let msgs: Vec<PushMessage> = (0..MAX_BATCH_MESSAGES as u64 + 5)
            .map(|s| sized(s, 0))
            .collect();
        let runs: Vec<Range<usize>> = frame_ranges(&msgs, usize::MAX).collect();
        assert_eq!(
            runs,
            vec![
                0..MAX_BATCH_MESSAGES,
                MAX_BATCH_MESSAGES..MAX_BATCH_MESSAGES + 5
            ]
        );
    }

    #[test]
    fn the_byte_bound_holds_for_the_encoded_frames_of_every_format() {
        use roomcast_proto::client::{encode_batch, WireFormat};
        let msgs: Vec<PushMessage> = (1..=40).map(|seq| sized(seq, 3000)).collect();
        let target = roomcast_proto::message::Target::Room("r1".into());
        for run in frame_ranges(&msgs, MAX_FRAME_MESSAGE_BYTES) {
            assert!(run.len() > 1);
            for format in WireFormat::ALL {
                let frame = encode_batch(format, &target, &msgs[run.clone()]);
                // Frame header and batch head take well under 64 bytes for this room.
                assert!(
                    frame.len() <= MAX_FRAME_MESSAGE_BYTES + 64,
                    "{format:?}: {} bytes",
                    frame.len()
                );
            }
        }
    }

    #[test]
    fn budgets_cap_each_priority_per_window_but_never_priority_zero() {
        let t0 = Instant::now();
        let mut pacing = Pacing::unlimited(TICK);
        pacing.budgets = [0, 1, 2, 0];
        let mut w = busy_window(pacing, t0);
        assert!(matches!(w.push(msg(1, 1), t0), Admit::Opened(_)));
        assert_eq!(w.push(msg(2, 1), t0), Admit::OverBudget);
        assert_eq!(w.push(msg(3, 2), t0), Admit::Queued);
        assert_eq!(w.push(msg(4, 2), t0), Admit::Queued);
        assert_eq!(w.push(msg(5, 2), t0), Admit::OverBudget);
        assert_eq!(w.push(msg(6, 3), t0), Admit::OverBudget);
        w.take(t0);
        assert!(
            matches!(w.push(msg(7, 1), t0), Admit::Opened(_)),
            "budget renews per window"
        );
        assert_eq!(
            w.push(msg(8, 0), t0),
            Admit::FlushNow,
            "P0 is never over budget"
        );
    }
}
