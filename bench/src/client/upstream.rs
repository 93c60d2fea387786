//! Upstream load (`--senders`): when one client thread's sender connections send, and the sends
//! waiting for their replies.
//!
//! A thread's senders take turns in a fixed order at `senders × rate` sends per second in all,
//! paced exactly from the moment sending starts (the warm-up): send *n* of the thread is due
//! when `n / (senders × rate)` seconds have passed, and goes to sender `n mod senders`. So every
//! sender sends once per `1 / rate` seconds, the senders' phases are spread evenly over that
//! period, and nothing bunches up at second boundaries. A loop that falls more than one round
//! behind (a whole `1 / rate`) skips the excess instead of bursting it out, so that no sender
//! goes over its rate because the bench was late (the skipped sends are counted).
//!
//! Pure bookkeeping with explicit time; the event loop writes the ops and reads the replies.

use std::time::{Duration, Instant};

/// `seq`s of sends start here, far above the pings' (which count up from 3 per thread): a reply
/// at or above it answers a send. Below 2^53, the largest `seq` a JSON op may carry.
pub const SEND_SEQ_BASE: u64 = 1 << 44;

/// The pacing of one thread's senders.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Sender connections of the thread.
    senders: usize,
    /// Sends per second of each.
    rate: f64,
    /// When sending began (`None`: not yet, or stopped).
    start: Option<Instant>,
    /// Sends issued (or skipped) since `start`.
    issued: u64,
    /// The sender whose turn is next.
    cursor: usize,
}

impl Schedule {
    pub fn new(senders: usize, rate: f64) -> Schedule {
        Schedule {
            senders,
            rate,
            start: None,
            issued: 0,
            cursor: 0,
        }
    }

    /// Begins sending at `now` (the schedule's zero). Nothing happens without senders or rate.
    pub fn start(&mut self, now: Instant) {
        if self.senders > 0 && self.rate > 0.0 && self.start.is_none() {
            self.start = Some(now);
            self.issued = 0;
        }
    }

    pub fn stop(&mut self) {
        self.start = None;
    }

    /// Sends per second of the whole thread.
    fn thread_rate(&self) -> f64 {
        self.senders as f64 * self.rate
    }

    /// Appends to `out` the sender positions (0..senders) whose sends are due by `now`, in
    /// order; returns how many were skipped because the loop was over one round behind.
    pub fn due(&mut self, now: Instant, out: &mut Vec<usize>) -> u64 {
        let Some(start) = self.start else {
            return 0;
        };
        let elapsed = now.saturating_duration_since(start).as_secs_f64();
        let due = (elapsed * self.thread_rate()).floor() as u64;
        let round = self.senders as u64;
        let mut skipped = 0;
        if due > self.issued + round {
            skipped = due - round - self.issued;
            self.issued += skipped;
            self.cursor = ((self.cursor as u64 + skipped) % round) as usize;
        }
        while self.issued < due {
            out.push(self.cursor);
            self.cursor = (self.cursor + 1) % self.senders;
            self.issued += 1;
        }
        skipped
    }

    /// When the next send is due (`None` when not sending).
    pub fn next_due(&self) -> Option<Instant> {
        let start = self.start?;
        let secs = (self.issued + 1) as f64 / self.thread_rate();
        Some(start + Duration::from_secs_f64(secs))
    }
}

/// A send waiting for its reply.
#[derive(Debug, Clone, Copy)]
pub struct InFlight {
    /// The connection's slot in its thread.
    pub k: u32,
    /// When it was written (unix µs).
    pub sent_us: u64,
    /// Written inside the measured window.
    pub in_window: bool,
}

/// The data of a send: a chat line that carries its send time, so that the viewers can time
/// its delivery (the sample backend keeps the field when it enriches the object).
pub fn send_data(ts_us: u64, n: u64) -> String {
    format!(r#"{{"ts":{ts_us},"text":"666 #{n}"}}"#)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn senders_take_turns_evenly_from_the_start() {
        let t0 = Instant::now();
        let mut s = Schedule::new(4, 2.0);
        let mut out = Vec::new();
        assert_eq!(s.due(t0, &mut out), 0);
        assert!(out.is_empty(), "not started");
        assert_eq!(s.next_due(), None);
        s.start(t0);
        // 8 sends/s in all: one every 125 ms.
        assert_eq!(s.next_due(), Some(t0 + Duration::from_millis(125)));
        s.due(t0 + Duration::from_millis(124), &mut out);
        assert!(out.is_empty());
        s.due(t0 + Duration::from_millis(380), &mut out);
        assert_eq!(out, [0, 1, 2]);
        out.clear();
        assert_eq!(s.due(t0 + Duration::from_millis(880), &mut out), 0);
        assert_eq!(out, [3, 0, 1, 2], "in turn");
        assert_eq!(s.next_due(), Some(t0 + Duration::from_millis(1_000)));
        // Polled every 10 ms for 2 s: each sender every 500 ms, the four 125 ms apart.
        let mut s = Schedule::new(4, 2.0);
        s.start(t0);
        let mut times: Vec<Vec<u64>> = vec![Vec::new(); 4];
        for ms in (0..=2_000).step_by(10) {
            out.clear();
            assert_eq!(s.due(t0 + Duration::from_millis(ms), &mut out), 0);
            for &i in &out {
                times[i].push(ms);
            }
        }
        for (i, t) in times.iter().enumerate() {
            assert_eq!(t.len(), 4, "sender {i}: {t:?}");
            assert!(
                t.windows(2).all(|w| w[1] - w[0] == 500),
                "sender {i}: {t:?}"
            );
        }
        assert_eq!(
            times[0][0], 130,
            "the first send at 125 ms, seen at the 130 ms poll"
        );
        assert_eq!(times[3][0], 500);
    }

    #[test]
    fn a_late_loop_skips_what_is_over_one_round_behind() {
        let t0 = Instant::now();
        let mut s = Schedule::new(3, 1.0);
        s.start(t0);
        let mut out = Vec::new();
        // 10 s late: 30 due, one round (3) is sent, 27 skipped.
        assert_eq!(s.due(t0 + Duration::from_secs(10), &mut out), 27);
        assert_eq!(out, [0, 1, 2], "each sender once, in turn");
        out.clear();
        assert_eq!(s.due(t0 + Duration::from_millis(11_100), &mut out), 0);
        assert_eq!(out, [0, 1, 2]);
        s.stop();
        out.clear();
        s.due(t0 + Duration::from_secs(20), &mut out);
        assert!(out.is_empty(), "stopped");
    }

    #[test]
    fn no_senders_never_send() {
        let t0 = Instant::now();
        let mut s = Schedule::new(0, 1.0);
        s.start(t0);
        assert_eq!(s.next_due(), None);
        let mut out = Vec::new();
        s.due(t0 + Duration::from_secs(5), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn send_data_is_json_with_its_timestamp() {
        let data = send_data(1_700_000_000_123_456, 7);
        let v: serde_json::Value = serde_json::from_str(&data).unwrap();
        assert_eq!(v["ts"], 1_700_000_000_123_456u64);
        assert_eq!(v["text"], "666 #7");
        const { assert!(SEND_SEQ_BASE < 1 << 53) };
    }
}
