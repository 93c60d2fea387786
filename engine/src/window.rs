//! A channel's merge window and per-priority budget: pure, with time passed in.
//!
//! A channel sends at most one batch per tick. A publish to a channel that sent nothing during the
//! last tick goes out at once (a quiet room gets no added delay); publishes that follow within the
//! tick collect in a window that closes one tick after the previous batch, and go out together.
//! A priority-0 message closes the window at once (keeping what was already waiting, so order
//! holds). A tick of zero sends every publish on its own.
//!
//! **Windows follow the fan-out.** While the channel's previous batch is still being written by
//! the edge (handed to the workers and not yet written to most of its members, see
//! [`Window::handed_over`] and [`Window::written`]), the next window does not close, whatever
//! its tick or priority: it stretches until that fan-out is done, so under load each batch
//! carries more messages and the edge never queues a second batch behind one it has not
//! written. The tick is the window's minimum; the stretch is capped at `max_window` after the
//! previous batch (never below the tick), and at [`MAX_WINDOW_BYTES`] of messages — beyond those
//! the batch goes out anyway and the connections' queue bounds (shedding) apply.
//!
//! Per-priority budgets cap how many messages of priorities 1–3 a window carries per tick of its
//! length (a window stretched over three ticks carries three ticks' budget); the rest are dropped
//! and counted. A merge key's final message counts as priority 0 here (PROTOCOL.md §5).

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

/// The most bytes of messages a window holds while it waits for the previous fan-out: past this
/// it closes at once (see the module documentation).
pub const MAX_WINDOW_BYTES: usize = 4 * 1024 * 1024;

/// What `push` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Queued; ask [`Window::poll`] when the window closes.
    Queued,
    /// Over this window's budget for its priority: dropped.
    OverBudget,
}

/// When the window closes, from [`Window::poll`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing waits.
    Idle,
    /// Close it now ([`Window::take`]).
    CloseNow,
    /// Poll again at this instant (or when the previous batch is written).
    At(Instant),
}

/// What the open window holds: its first and last `seq` and how many messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpan {
    pub first: u64,
    pub last: u64,
    pub len: usize,
}

impl WindowSpan {
    /// Whether the window holds every `seq` from its first to `to` (its messages are in `seq`
    /// order without repeats, so counting them is enough).
    pub fn holds_every_seq_to(&self, to: u64) -> bool {
        self.last == to && (self.len as u64) == to.saturating_sub(self.first) + 1
    }
}

/// A closed window's contents.
#[derive(Debug)]
pub struct Batch {
    pub msgs: Vec<PushMessage>,
    pub first_received: Instant,
    /// The effective window: from the previous batch (or, for a channel that was quiet, from the
    /// first message) to this close.
    pub window: Duration,
    /// The window stayed open past its tick because the previous batch was still being written.
    pub stretched: bool,
    /// It closed while the previous batch was still being written: at `max_window` or at
    /// [`MAX_WINDOW_BYTES`].
    pub capped: bool,
}

#[derive(Debug)]
pub struct Window {
    pub pacing: Pacing,
    /// The longest a window stretches after the previous batch while that batch is being
    /// written (the tick, when it is longer).
    pub max_window: Duration,
    msgs: Vec<PushMessage>,
    bytes: usize,
    used: [u32; PRIORITIES],
    /// When the first waiting message arrived.
    opened: Option<Instant>,
    /// When the last batch went out.
    last_flush: Option<Instant>,
    /// A priority-0 message or a full batch waits: close as soon as the fan-out allows.
    urgent: bool,
    /// The last batch was handed to the workers and is not written yet.
    in_flight: bool,
    /// The tick has passed, and the window waits for `in_flight` to end.
    held: bool,
}

impl Window {
    pub fn new(pacing: Pacing, max_window: Duration) -> Window {
        Window {
            pacing,
            max_window,
            msgs: Vec::new(),
            bytes: 0,
            used: [0; PRIORITIES],
            opened: None,
            last_flush: None,
            urgent: false,
            in_flight: false,
            held: false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// The `seq` of the oldest message waiting (the next batch starts with it).
    pub fn first_seq(&self) -> Option<u64> {
        self.msgs.first().map(|m| m.seq)
    }

    /// The first and last `seq` waiting, and how many messages (None when empty).
    pub fn span(&self) -> Option<WindowSpan> {
        let (first, last) = (self.msgs.first()?, self.msgs.last()?);
        Some(WindowSpan {
            first: first.seq,
            last: last.seq,
            len: self.msgs.len(),
        })
    }

    /// Whether the window is stretched: its tick has passed and it waits for the previous
    /// batch to be written.
    pub fn is_held(&self) -> bool {
        self.held
    }

    /// Whether the last batch is still being written.
    pub fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// The last batch was handed to at least one worker: the next window waits for
    /// [`written`](Self::written) (or its cap).
    pub fn handed_over(&mut self) {
        self.in_flight = true;
    }

    /// The last batch was written to most of its members (or dropped): the next window may close
    /// once its tick allows.
    pub fn written(&mut self) {
        self.in_flight = false;
    }

    /// Where the window started: the previous batch, or the first message for a channel that
    /// had been quiet for a tick.
    fn start(&self, opened: Instant) -> Instant {
        let tick = self.pacing.tick;
        match self.last_flush {
            Some(last) if !tick.is_zero() && opened < last + tick => last,
            _ => opened,
        }
    }

    /// How many ticks' budget a window open since `start` may carry at `now`.
    fn ticks(&self, start: Instant, now: Instant) -> u32 {
        let tick = self.pacing.tick.as_nanos();
        if tick == 0 {
            return 1;
        }
        let elapsed = now.saturating_duration_since(start).as_nanos();
        u32::try_from(elapsed.div_ceil(tick))
            .unwrap_or(u32::MAX)
            .max(1)
    }

    pub fn push(&mut self, msg: PushMessage, now: Instant) -> Admit {
        // A final message (of a merge key) is budgeted like priority 0: never.
        let p = usize::from(msg.shed_priority()).min(PRIORITIES - 1);
        let opened = *self.opened.get_or_insert(now);
        if p > 0 {
            let budget = self.pacing.budgets[p];
            if budget != UNLIMITED {
                let allowed = budget.saturating_mul(self.ticks(self.start(opened), now));
                if self.used[p] >= allowed {
                    if self.msgs.is_empty() {
                        self.opened = None;
                    }
                    return Admit::OverBudget;
                }
            }
        }
        self.used[p] += 1;
        self.bytes += batch_message_len(&msg);
        self.msgs.push(msg);
        if p == 0 || self.msgs.len() >= MAX_BATCH_MESSAGES {
            self.urgent = true;
        }
        Admit::Queued
    }

    /// When the window closes: at its tick after the previous batch (at once for a quiet
    /// channel, priority 0 or a tick of 0), but not while the previous batch is being written —
    /// then at the cap, unless [`written`](Self::written) comes first (poll again then).
    pub fn poll(&mut self, now: Instant) -> Next {
        let Some(opened) = self.opened.filter(|_| !self.msgs.is_empty()) else {
            return Next::Idle;
        };
        let tick = self.pacing.tick;
        let earliest = if self.urgent || tick.is_zero() {
            opened
        } else {
            self.last_flush
                .map_or(opened, |last| (last + tick).max(opened))
        };
        if now < earliest {
            return Next::At(earliest);
        }
        if !self.in_flight || self.bytes >= MAX_WINDOW_BYTES {
            return Next::CloseNow;
        }
        self.held = true;
        let last = self.last_flush.unwrap_or(opened);
        let cap = last + self.max_window.max(tick);
        if now >= cap {
            Next::CloseNow
        } else {
            Next::At(cap)
        }
    }

    /// Closes the window and returns its batch (None when empty). The budget starts afresh; the
    /// caller reports [`handed_over`](Self::handed_over) if a worker took the batch.
    pub fn take(&mut self, now: Instant) -> Option<Batch> {
        let opened = self.opened.take();
        let stretched = std::mem::take(&mut self.held);
        self.used = [0; PRIORITIES];
        self.urgent = false;
        self.bytes = 0;
        let opened = opened.filter(|_| !self.msgs.is_empty())?;
        let start = self.start(opened);
        let capped = std::mem::take(&mut self.in_flight);
        self.last_flush = Some(now);
        Some(Batch {
            msgs: std::mem::take(&mut self.msgs),
            first_received: opened,
            window: now.saturating_duration_since(start),
            stretched,
            capped,
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
            merged: 0,
            is_final: false,
            from: None,
            ack: false,
        }
    }

    const MAX: Duration = Duration::from_millis(1000);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Pushes and polls as the hub does; returns what `poll` said.
    fn publish(w: &mut Window, m: PushMessage, now: Instant) -> Next {
        assert_eq!(w.push(m, now), Admit::Queued);
        w.poll(now)
    }

    /// Closes the window and hands the batch over; returns its seqs.
    fn close(w: &mut Window, now: Instant) -> Vec<u64> {
        let batch = w.take(now).expect("a batch");
        w.handed_over();
        batch.msgs.iter().map(|m| m.seq).collect()
    }

    /// A window whose channel sent a batch at `t0` that was written at once, so the next
    /// publishes are merged.
    fn busy_window(pacing: Pacing, t0: Instant) -> Window {
        let mut w = Window::new(pacing, MAX);
        assert_eq!(publish(&mut w, msg(0, 0), t0), Next::CloseNow);
        close(&mut w, t0);
        w.written();
        w
    }

    #[test]
    fn a_quiet_channel_sends_at_once_and_a_busy_one_merges_until_a_tick_after_its_last_batch() {
        let t0 = Instant::now();
        let mut w = busy_window(Pacing::unlimited(TICK), t0);
        let t1 = t0 + ms(30);
        assert_eq!(publish(&mut w, msg(1, 3), t1), Next::At(t0 + TICK));
        assert_eq!(publish(&mut w, msg(2, 2), t0 + ms(50)), Next::At(t0 + TICK));
        assert_eq!(w.poll(t0 + TICK), Next::CloseNow);
        let batch = w.take(t0 + TICK).unwrap();
        assert_eq!(
            batch
                .msgs
                .iter()
                .map(|m| (m.seq, m.priority))
                .collect::<Vec<_>>(),
            vec![(1, 3), (2, 2)]
        );
        assert_eq!(batch.first_received, t1);
        assert_eq!(
            batch.window, TICK,
            "a busy window runs from the previous batch"
        );
        assert!(!batch.stretched && !batch.capped);
        assert_eq!(w.poll(t0 + TICK), Next::Idle);
        // Quiet for a whole tick after that batch: the next publish goes out alone, at once.
        let t2 = t0 + TICK * 2;
        assert_eq!(publish(&mut w, msg(3, 3), t2), Next::CloseNow);
        assert_eq!(w.take(t2).unwrap().window, Duration::ZERO);
    }

    #[test]
    fn the_first_publish_to_a_quiet_channel_goes_out_at_once() {
        let mut w = Window::new(Pacing::unlimited(TICK), MAX);
        assert_eq!(publish(&mut w, msg(1, 3), Instant::now()), Next::CloseNow);
    }

    #[test]
    fn priority_zero_flushes_at_once_keeping_order() {
        let t0 = Instant::now();
        let mut w = busy_window(Pacing::unlimited(Duration::from_secs(5)), t0);
        assert!(matches!(publish(&mut w, msg(1, 3), t0), Next::At(_)));
        assert_eq!(publish(&mut w, msg(2, 0), t0), Next::CloseNow);
        assert_eq!(close(&mut w, t0), vec![1, 2]);
    }

    #[test]
    fn zero_tick_sends_each_publish_alone_while_the_fan_out_keeps_up() {
        let t0 = Instant::now();
        let mut w = busy_window(Pacing::unlimited(Duration::ZERO), t0);
        assert_eq!(publish(&mut w, msg(1, 3), t0), Next::CloseNow);
        assert_eq!(close(&mut w, t0), vec![1]);
        w.written();
        assert_eq!(publish(&mut w, msg(2, 3), t0), Next::CloseNow);
    }

    #[test]
    fn a_window_stretches_while_the_previous_batch_is_written_and_closes_when_it_is() {
        let t0 = Instant::now();
        let mut w = Window::new(Pacing::unlimited(TICK), MAX);
        assert_eq!(publish(&mut w, msg(1, 3), t0), Next::CloseNow);
        close(&mut w, t0); // in flight from t0
        assert_eq!(publish(&mut w, msg(2, 3), t0 + ms(10)), Next::At(t0 + TICK));
        assert!(!w.is_held(), "not stretched before its tick");
        // The tick passes with the batch still being written: the window holds, up to the cap.
        assert_eq!(w.poll(t0 + TICK), Next::At(t0 + MAX));
        assert!(w.is_held());
        assert_eq!(publish(&mut w, msg(3, 3), t0 + ms(250)), Next::At(t0 + MAX));
        // Written at 300 ms: the stretched window closes at once, carrying both.
        w.written();
        let t1 = t0 + ms(300);
        assert_eq!(w.poll(t1), Next::CloseNow);
        let batch = w.take(t1).unwrap();
        assert_eq!(batch.msgs.len(), 2);
        assert_eq!(batch.window, ms(300));
        assert!(batch.stretched && !batch.capped);
        assert!(!w.is_held());
        w.handed_over();
        // Load passes: the next batch is written within its tick, and the window is the tick again.
        w.written();
        assert_eq!(publish(&mut w, msg(4, 3), t1 + ms(20)), Next::At(t1 + TICK));
        assert_eq!(w.poll(t1 + TICK), Next::CloseNow);
        let batch = w.take(t1 + TICK).unwrap();
        assert_eq!(batch.window, TICK);
        assert!(!batch.stretched);
    }

    #[test]
    fn priority_zero_and_tick_zero_obey_the_one_outstanding_rule_and_ride_together() {
        let t0 = Instant::now();
        for pacing in [Pacing::unlimited(TICK), Pacing::unlimited(Duration::ZERO)] {
            let mut w = Window::new(pacing, MAX);
            assert_eq!(publish(&mut w, msg(1, 0), t0), Next::CloseNow);
            close(&mut w, t0);
            // While it is written, the next priority-0 messages wait for it (up to the cap).
            let cap = t0 + MAX.max(pacing.tick);
            assert_eq!(publish(&mut w, msg(2, 0), t0 + ms(1)), Next::At(cap));
            assert_eq!(publish(&mut w, msg(3, 3), t0 + ms(2)), Next::At(cap));
            assert_eq!(publish(&mut w, msg(4, 0), t0 + ms(3)), Next::At(cap));
            w.written();
            assert_eq!(w.poll(t0 + ms(5)), Next::CloseNow);
            assert_eq!(close(&mut w, t0 + ms(5)), vec![2, 3, 4]);
        }
    }

    #[test]
    fn a_window_closes_at_the_cap_when_the_fan_out_never_finishes() {
        let t0 = Instant::now();
        let mut w = Window::new(Pacing::unlimited(TICK), ms(500));
        assert_eq!(publish(&mut w, msg(1, 3), t0), Next::CloseNow);
        close(&mut w, t0);
        assert_eq!(publish(&mut w, msg(2, 3), t0 + ms(50)), Next::At(t0 + TICK));
        assert_eq!(w.poll(t0 + TICK), Next::At(t0 + ms(500)));
        assert_eq!(w.poll(t0 + ms(500)), Next::CloseNow);
        let batch = w.take(t0 + ms(500)).unwrap();
        assert!(batch.stretched && batch.capped);
        assert_eq!(batch.window, ms(500));
        // The capped batch is the one in flight now; the next cap counts from it.
        w.handed_over();
        assert_eq!(
            publish(&mut w, msg(3, 3), t0 + ms(510)),
            Next::At(t0 + ms(600))
        );
        assert_eq!(w.poll(t0 + ms(600)), Next::At(t0 + ms(1000)));
    }

    #[test]
    fn the_cap_is_never_below_the_tick() {
        let t0 = Instant::now();
        let mut w = Window::new(Pacing::unlimited(Duration::from_secs(2)), ms(500));
        assert_eq!(publish(&mut w, msg(1, 3), t0), Next::CloseNow);
        close(&mut w, t0);
        let tick_end = t0 + Duration::from_secs(2);
        assert_eq!(publish(&mut w, msg(2, 3), t0 + ms(10)), Next::At(tick_end));
        assert_eq!(w.poll(tick_end), Next::CloseNow, "held 0 ms past the tick");
    }

    #[test]
    fn a_held_window_past_the_byte_bound_closes_at_once() {
        let t0 = Instant::now();
        let mut w = Window::new(Pacing::unlimited(TICK), MAX);
        assert_eq!(publish(&mut w, msg(1, 3), t0), Next::CloseNow);
        close(&mut w, t0);
        let big = |seq| sized(seq, MAX_WINDOW_BYTES / 4);
        let t1 = t0 + TICK;
        for seq in 2..5 {
            assert_eq!(publish(&mut w, big(seq), t1), Next::At(t0 + MAX));
        }
        assert_eq!(publish(&mut w, big(5), t1), Next::CloseNow);
        assert!(w.take(t1).unwrap().capped);
    }

    fn sized(seq: u64, data_len: usize) -> PushMessage {
        PushMessage {
            seq,
            priority: 3,
            kind: "k".into(),
            data: Bytes::from(vec![b'1'; data_len]),
            merged: 0,
            is_final: false,
            ack: false,
            from: None,
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
    fn budgets_cap_each_priority_per_tick_of_the_window_but_never_priority_zero() {
        let t0 = Instant::now();
        let mut pacing = Pacing::unlimited(TICK);
        pacing.budgets = [0, 1, 2, 0];
        let mut w = busy_window(pacing, t0);
        assert_eq!(w.push(msg(1, 1), t0), Admit::Queued);
        assert_eq!(w.push(msg(2, 1), t0), Admit::OverBudget);
        assert_eq!(w.push(msg(3, 2), t0), Admit::Queued);
        assert_eq!(w.push(msg(4, 2), t0), Admit::Queued);
        assert_eq!(w.push(msg(5, 2), t0), Admit::OverBudget);
        assert_eq!(w.push(msg(6, 3), t0), Admit::OverBudget);
        assert_eq!(
            w.push(msg(7, 0), t0),
            Admit::Queued,
            "P0 is never over budget"
        );
        close(&mut w, t0);
        assert_eq!(
            w.push(msg(8, 1), t0),
            Admit::Queued,
            "the budget renews per window"
        );
        // Stretched over a second tick, the window may carry a second tick's budget.
        assert_eq!(w.push(msg(9, 1), t0 + ms(50)), Admit::OverBudget);
        assert_eq!(w.push(msg(10, 1), t0 + ms(150)), Admit::Queued);
        assert_eq!(w.push(msg(11, 1), t0 + ms(160)), Admit::OverBudget);
    }

    #[test]
    fn a_final_message_is_never_over_budget_and_closes_the_window_like_priority_zero() {
        let t0 = Instant::now();
        let mut pacing = Pacing::unlimited(TICK);
        pacing.budgets = [0, 0, 0, 0];
        let mut w = busy_window(pacing, t0);
        let mut last = msg(1, 1);
        last.merged = 1;
        assert_eq!(w.push(msg(0, 1), t0 + ms(10)), Admit::OverBudget);
        last.is_final = true;
        assert_eq!(w.push(last, t0 + ms(10)), Admit::Queued);
        assert_eq!(w.poll(t0 + ms(10)), Next::CloseNow, "urgent, like P0");
    }

    #[test]
    fn an_over_budget_message_does_not_open_the_window() {
        let t0 = Instant::now();
        let mut pacing = Pacing::unlimited(TICK);
        pacing.budgets = [0, 0, 0, 0];
        let mut w = busy_window(pacing, t0);
        assert_eq!(w.push(msg(1, 3), t0 + ms(10)), Admit::OverBudget);
        assert_eq!(w.poll(t0 + ms(10)), Next::Idle);
        assert!(w.take(t0 + ms(10)).is_none());
    }
}
