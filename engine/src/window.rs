//! A channel's merge window and per-priority budget: pure, with time passed in.
//!
//! A channel sends at most one batch per tick. A publish to a channel that sent nothing during the
//! last tick goes out at once (a quiet room gets no added delay); publishes that follow within the
//! tick collect in a window that closes one tick after the previous batch, and go out together.
//! A priority-0 message closes the window at once (keeping what was already waiting, so order
//! holds). A tick of zero sends every publish on its own. Per-window budgets cap how many messages
//! of priorities 1–3 one batch carries; the rest are dropped and counted.

use std::time::{Duration, Instant};

use crate::proto::link::UNLIMITED;
use crate::proto::message::{PushMessage, PRIORITIES};

/// The most messages one batch frame may carry (the binary batch's count is a u16).
pub const MAX_BATCH_MESSAGES: usize = crate::proto::client::MAX_MSGS_PER_BATCH;

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
    pub min_priority: u8,
    pub counts: [u32; PRIORITIES],
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
        let mut counts = [0u32; PRIORITIES];
        for m in &msgs {
            counts[(m.priority as usize).min(PRIORITIES - 1)] += 1;
        }
        let min_priority = counts.iter().position(|&n| n > 0).unwrap_or(0) as u8;
        Some(Batch {
            msgs,
            min_priority,
            counts,
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
        assert_eq!(batch.counts, [0, 0, 1, 1]);
        assert_eq!(batch.min_priority, 2);
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
        assert_eq!(batch.min_priority, 0);
    }

    #[test]
    fn zero_tick_sends_each_publish_alone() {
        let t0 = Instant::now();
        let mut w = busy_window(Pacing::unlimited(Duration::ZERO), t0);
        assert_eq!(w.push(msg(1, 3), t0), Admit::FlushNow);
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
