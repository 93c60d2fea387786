//! A channel's merge window and per-priority budget: pure, with time passed in.
//!
//! Messages published to a channel during its window (its tick) are collected and flushed as one
//! batch when the window closes. A priority-0 message closes the window at once (keeping what was
//! already waiting, so order holds). A tick of zero sends every publish on its own. Per-tick budgets
//! cap how many messages of priorities 1–3 one window carries; the rest are dropped and counted.

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
    /// Queued, and the window must be flushed now (priority 0, tick 0, or the batch is full).
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
}

impl Window {
    pub fn new(pacing: Pacing) -> Window {
        Window {
            pacing,
            msgs: Vec::new(),
            used: [0; PRIORITIES],
            opened: None,
            deadline: None,
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
        if p == 0 || self.pacing.tick.is_zero() || self.msgs.len() >= MAX_BATCH_MESSAGES {
            return Admit::FlushNow;
        }
        match self.deadline {
            Some(_) => Admit::Queued,
            None => {
                let deadline = now + self.pacing.tick;
                self.opened = Some(now);
                self.deadline = Some(deadline);
                Admit::Opened(deadline)
            }
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

    fn msg(seq: u64, priority: u8) -> PushMessage {
        PushMessage {
            seq,
            priority,
            kind: "chat".into(),
            data: Bytes::from_static(b"1"),
        }
    }

    #[test]
    fn first_message_opens_the_window_and_later_ones_join_it() {
        let t0 = Instant::now();
        let mut w = Window::new(Pacing::unlimited(Duration::from_millis(100)));
        assert_eq!(
            w.push(msg(1, 3), t0),
            Admit::Opened(t0 + Duration::from_millis(100))
        );
        assert_eq!(
            w.push(msg(2, 2), t0 + Duration::from_millis(50)),
            Admit::Queued
        );
        let batch = w.take(t0 + Duration::from_millis(100)).unwrap();
        assert_eq!(
            batch.msgs.iter().map(|m| m.seq).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(batch.counts, [0, 0, 1, 1]);
        assert_eq!(batch.min_priority, 2);
        assert_eq!(batch.first_received, t0);
        assert!(w.deadline().is_none());
    }

    #[test]
    fn priority_zero_flushes_at_once_keeping_order() {
        let t0 = Instant::now();
        let mut w = Window::new(Pacing::unlimited(Duration::from_secs(5)));
        w.push(msg(1, 3), t0);
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
        let mut w = Window::new(Pacing::unlimited(Duration::ZERO));
        assert_eq!(w.push(msg(1, 3), t0), Admit::FlushNow);
    }

    #[test]
    fn budgets_cap_each_priority_per_window_but_never_priority_zero() {
        let t0 = Instant::now();
        let mut pacing = Pacing::unlimited(Duration::from_millis(100));
        pacing.budgets = [0, 1, 2, 0];
        let mut w = Window::new(pacing);
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
