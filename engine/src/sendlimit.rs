//! Upstream limits (PROTOCOL.md §5 "Upstream"): the token buckets that pace a connection's and a
//! user's `send`s, and the refusal counter that closes a client hammering past them. Pure: the
//! caller passes the time as milliseconds of its own clock (wrapping `u32`), so tests drive it
//! with plain numbers.

/// How fast sends are admitted: `rate` per second on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SendLimit {
    /// Tokens added per millisecond.
    per_ms: f64,
    burst: f64,
}

impl SendLimit {
    /// `rate` sends per second (0 admits nothing), at most `burst` at once.
    pub fn new(rate: f64, burst: u32) -> SendLimit {
        SendLimit {
            per_ms: rate.max(0.0) / 1000.0,
            burst: f64::from(burst),
        }
    }

    /// A bucket that starts full.
    pub fn full_bucket(&self, now_ms: u32) -> Bucket {
        Bucket {
            tokens: self.burst as f32,
            at_ms: now_ms,
        }
    }

    /// Takes one token from `bucket`: `Ok` when the send is admitted, else how many
    /// milliseconds until one will be (at least 1; `u32::MAX` when the rate is 0).
    pub fn take(&self, bucket: &mut Bucket, now_ms: u32) -> Result<(), u32> {
        self.refill(bucket, now_ms);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        if self.per_ms <= 0.0 {
            return Err(u32::MAX);
        }
        let wait = ((1.0 - f64::from(bucket.tokens)) / self.per_ms).ceil();
        Err((wait as u32).max(1))
    }

    /// Whether `bucket` is full again by `now_ms`: it then says nothing a new bucket would not,
    /// and can be forgotten.
    pub fn is_full(&self, bucket: &Bucket, now_ms: u32) -> bool {
        let mut b = *bucket;
        self.refill(&mut b, now_ms);
        f64::from(b.tokens) >= self.burst
    }

    fn refill(&self, bucket: &mut Bucket, now_ms: u32) {
        let elapsed = now_ms.wrapping_sub(bucket.at_ms);
        // A clock that went backwards (or a wrap past half the range) adds nothing.
        if elapsed < u32::MAX / 2 {
            let tokens = f64::from(bucket.tokens) + f64::from(elapsed) * self.per_ms;
            bucket.tokens = tokens.min(self.burst) as f32;
            bucket.at_ms = now_ms;
        }
    }
}

/// A token bucket's state: 8 bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    tokens: f32,
    at_ms: u32,
}

/// Counts a connection's refused sends in a fixed window: a client that keeps sending past its
/// limits (or sends what is never admitted) is closed instead of costing the edge forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusals {
    window_start_ms: u32,
    count: u32,
}

impl Refusals {
    pub fn new(now_ms: u32) -> Refusals {
        Refusals {
            window_start_ms: now_ms,
            count: 0,
        }
    }

    /// Counts one refusal; true when it makes `limit` within `window_ms` (limit 0: never).
    pub fn refused(&mut self, now_ms: u32, limit: u32, window_ms: u32) -> bool {
        if now_ms.wrapping_sub(self.window_start_ms) >= window_ms {
            self.window_start_ms = now_ms;
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        limit > 0 && self.count >= limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_admits_the_burst_then_paces_at_the_rate() {
        let limit = SendLimit::new(2.0, 5);
        let mut b = limit.full_bucket(1_000);
        for _ in 0..5 {
            assert_eq!(limit.take(&mut b, 1_000), Ok(()));
        }
        // Empty: the next token comes after 1 / 2 per second = 500 ms.
        assert_eq!(limit.take(&mut b, 1_000), Err(500));
        assert_eq!(limit.take(&mut b, 1_200), Err(300));
        assert_eq!(limit.take(&mut b, 1_500), Ok(()));
        assert_eq!(limit.take(&mut b, 1_500), Err(500));
        // A long pause refills only up to the burst.
        for _ in 0..5 {
            assert_eq!(limit.take(&mut b, 60_000), Ok(()));
        }
        assert!(limit.take(&mut b, 60_000).is_err());
    }

    #[test]
    fn a_zero_rate_admits_nothing_and_says_never() {
        let limit = SendLimit::new(0.0, 0);
        let mut b = limit.full_bucket(0);
        assert_eq!(limit.take(&mut b, 0), Err(u32::MAX));
        assert_eq!(limit.take(&mut b, 1_000_000), Err(u32::MAX));
    }

    #[test]
    fn the_clock_may_wrap_and_a_backwards_clock_adds_nothing() {
        let limit = SendLimit::new(1.0, 1);
        let mut b = limit.full_bucket(u32::MAX - 100);
        assert_eq!(limit.take(&mut b, u32::MAX - 100), Ok(()));
        // 1,000 ms later, across the wrap.
        assert_eq!(limit.take(&mut b, 899), Ok(()));
        // Backwards: nothing added, nothing lost.
        assert_eq!(limit.take(&mut b, 500), Err(1_000));
    }

    #[test]
    fn a_refilled_bucket_is_full_and_can_be_forgotten() {
        let limit = SendLimit::new(2.0, 2);
        let mut b = limit.full_bucket(0);
        assert!(limit.is_full(&b, 0));
        limit.take(&mut b, 0).unwrap();
        assert!(!limit.is_full(&b, 100));
        assert!(limit.is_full(&b, 500));
    }

    #[test]
    fn refusals_close_at_the_limit_within_the_window_only() {
        let mut r = Refusals::new(0);
        for i in 0..99 {
            assert!(!r.refused(i * 100, 100, 10_000), "refusal {i}");
        }
        assert!(r.refused(9_950, 100, 10_000));
        // A new window starts the count again.
        let mut r = Refusals::new(0);
        for _ in 0..99 {
            assert!(!r.refused(5_000, 100, 10_000));
        }
        assert!(!r.refused(10_000, 100, 10_000));
        // Limit 0 never closes.
        let mut r = Refusals::new(0);
        assert!((0..1000).all(|_| !r.refused(0, 0, 10_000)));
    }
}
