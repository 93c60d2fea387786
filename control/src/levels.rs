//! Room rate levels: how a room's global online count picks its pacing level (1–4), with
//! hysteresis on the way down and an exponential backoff for rooms whose level flaps.
//!
//! This module is pure: no I/O and no clock reads. Callers pass the current time as an
//! [`Instant`], so tests drive it with a fake clock (`t0 + Duration`).
//!
//! # Levels
//!
//! With thresholds `[a0, a1, a2]` (defaults 1,000 / 10,000 / 50,000) the *target* level of a
//! count is `[0, a0) → 1`, `[a0, a1) → 2`, `[a1, a2) → 3`, `[a2, ∞) → 4`; a count exactly at a
//! threshold belongs to the higher level. (Formally: 1 + the number of thresholds `≤ count`,
//! which is also well defined if a configuration lists thresholds out of order.)
//!
//! # Raising
//!
//! If the target level of a reported count is above the current level, the room moves to the
//! target level in that same [`RoomLevel::update`] call, skipping levels if need be (1 → 4).
//!
//! # Lowering (hysteresis + dwell)
//!
//! Each threshold `a_i` has a *lowering margin* `a_i × (1 − hysteresis)` (default 900 / 9,000 /
//! 45,000). The room holds a per-threshold "below since" timestamp: the time of the first report
//! in the current unbroken run of reports strictly below that margin. Any report at or above the
//! margin clears it, so a count coming back into the hysteresis band restarts the wait.
//!
//! The room at level `L` drops to the lowest level `k < L` such that every threshold between
//! them (`a_{k-1} … a_{L-2}`) has had its count below its margin for at least the current dwell
//! (`now − below_since ≥ dwell`, so exactly one dwell is enough). A collapse from 60,000 to 0
//! therefore drops 4 → 1 after one dwell, while a count that sat under 45,000 for the whole dwell
//! but under 9,000 only for the last few seconds drops to 3 now and to 2 when its own wait ends.
//! A count inside the band `[margin, threshold)` never lowers the level, however long it stays.
//!
//! # Backoff (the exact flap rule)
//!
//! The current dwell is `min(dwell × 2^steps, max(max_dwell, dwell))`, where `steps` is the
//! room's backoff exponent (0 for a new room).
//!
//! * **Flap:** a *raise* that happens less than `2 × current dwell` after the room's most recent
//!   *lowering* is a flap (the lower level did not hold even twice as long as it took to earn
//!   it). A flap adds one step, doubling the dwell, unless the dwell is already at the cap. The
//!   comparison uses the dwell in force before the doubling. A raise with no earlier lowering
//!   (e.g. a room filling up) is never a flap, and a lowering is never a flap by itself.
//! * **Stability:** every full `4 × current dwell` without a level change removes one step
//!   (halving the dwell, back toward the base). The stability clock starts at the room's first
//!   update, restarts at every level change (raise or lower), and after each step-down it
//!   advances by exactly the window it just completed, so the next step-down needs another
//!   `4 ×` the now-shorter dwell. Step-downs are computed from the passed-in time, so sparse
//!   updates catch up in one call. They are applied before the report is judged, so the shorter
//!   dwell already governs a lowering decided in that same call.
//!
//! With the defaults (10 s base, 300 s cap) successive flaps give dwells 10, 20, 40, 80, 160,
//! 300, 300 … s; a room then left alone returns 300 → 160 after 1,200 s, → 80 after another
//! 640 s, and so on down to 10 s.
//!
//! # Edge cases
//!
//! * `hysteresis` is clamped to `[0, 1]` (NaN counts as 0). At 1 the margins are 0, so a room
//!   never lowers; at 0 it lowers as soon as the count is below the threshold itself.
//! * A `max_dwell` below `dwell` is treated as `dwell` (no backoff possible). A zero dwell lowers
//!   on the first report below the margin and can never flap.
//! * A clock that goes backwards is tolerated (elapsed times saturate at zero); it never panics.
//! * [`RoomLevel::current_dwell`] reflects the policy of the last `update`; before the first
//!   update it is the default policy's base dwell, since [`RoomLevel::new`] takes no policy.

use std::time::{Duration, Instant};

/// A raise less than this many current dwells after the last lowering is a flap.
const FLAP_WINDOW_DWELLS: u32 = 2;
/// This many current dwells without a level change undo one backoff step.
const STABLE_DWELLS: u32 = 4;
/// Hard bound on the backoff exponent, so a pathological policy can't grow it forever.
const MAX_BACKOFF_STEPS: u32 = 64;

/// How a room's online count maps to a rate level, and how eagerly the level may fall.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LevelPolicy {
    /// `[a0, a1, a2]`: the counts at which a room enters levels 2, 3 and 4.
    pub thresholds: [u32; 3],
    /// Fraction below a threshold the count must fall before lowering is considered
    /// (margin = threshold × (1 − hysteresis)); clamped to `[0, 1]`.
    pub hysteresis: f64,
    /// Base time the count must stay below a margin before the level is lowered.
    pub dwell: Duration,
    /// Cap on the backed-off dwell of a flapping room.
    pub max_dwell: Duration,
}

impl Default for LevelPolicy {
    /// Thresholds 1,000 / 10,000 / 50,000, 10 % hysteresis, 10 s dwell, 300 s cap.
    fn default() -> Self {
        LevelPolicy {
            thresholds: [1_000, 10_000, 50_000],
            hysteresis: 0.1,
            dwell: Duration::from_secs(10),
            max_dwell: Duration::from_secs(300),
        }
    }
}

impl LevelPolicy {
    /// The level (1..=4) a room with `online` members belongs to, ignoring hysteresis and dwell:
    /// `[0, a0) → 1`, `[a0, a1) → 2`, `[a1, a2) → 3`, `[a2, ∞) → 4`.
    pub fn target_level(&self, online: u32) -> u8 {
        // Counting thresholds reached keeps the result in 1..=4 even for unsorted configs.
        1 + self.thresholds.iter().filter(|&&t| online >= t).count() as u8
    }

    /// Whether `online` is strictly below the lowering margin of threshold `i`.
    fn is_below_margin(&self, i: usize, online: u32) -> bool {
        let h = if self.hysteresis.is_nan() {
            0.0
        } else {
            self.hysteresis.clamp(0.0, 1.0)
        };
        // f64 represents every u32 exactly, so only the margin itself is rounded.
        f64::from(online) < f64::from(self.thresholds[i]) * (1.0 - h)
    }

    /// The dwell after `steps` doublings, capped.
    fn backed_off_dwell(&self, steps: u32) -> Duration {
        let cap = self.max_dwell.max(self.dwell);
        let mut d = self.dwell;
        for _ in 0..steps {
            if d >= cap {
                break;
            }
            d = d.saturating_mul(2);
        }
        d.min(cap)
    }
}

/// One room's rate-level state machine; feed it the room's global online count.
#[derive(Debug, Clone)]
pub struct RoomLevel {
    level: u8,
    /// Backoff exponent: the dwell is the base dwell doubled this many times (capped).
    backoff: u32,
    /// Dwell under the policy of the last update (cached for `current_dwell`).
    dwell: Duration,
    /// Per threshold: first report of the current unbroken run below its lowering margin.
    below_since: [Option<Instant>; 3],
    /// When the level was last lowered; a quick raise after it is a flap.
    last_lowered: Option<Instant>,
    /// Start of the current stability window (set on first update, reset on every change).
    stable_since: Option<Instant>,
}

impl Default for RoomLevel {
    /// Same as [`RoomLevel::new`].
    fn default() -> Self {
        Self::new()
    }
}

impl RoomLevel {
    /// A new room: level 1, no backoff (the default policy's base dwell).
    pub fn new() -> RoomLevel {
        RoomLevel {
            level: 1,
            backoff: 0,
            dwell: LevelPolicy::default().dwell,
            below_since: [None; 3],
            last_lowered: None,
            stable_since: None,
        }
    }

    /// The room's current level, 1..=4.
    pub fn level(&self) -> u8 {
        self.level
    }

    /// The dwell a lowering must currently wait (base dwell plus any backoff), as of the last
    /// update.
    pub fn current_dwell(&self) -> Duration {
        self.dwell
    }

    /// Feeds the room's current global online count; returns Some(new level) when the level changes.
    ///
    /// Raises take effect in this call; lowers only once the count has stayed under the lowering
    /// margin for the current dwell (see the module docs for the exact rules).
    pub fn update(&mut self, online: u32, now: Instant, policy: &LevelPolicy) -> Option<u8> {
        self.relax_backoff(now, policy);

        for (i, since) in self.below_since.iter_mut().enumerate() {
            if policy.is_below_margin(i, online) {
                since.get_or_insert(now);
            } else {
                // Back in (or above) the hysteresis band: the lowering wait starts over.
                *since = None;
            }
        }

        let dwell = policy.backed_off_dwell(self.backoff);
        let target = policy.target_level(online);
        let new_level = if target > self.level {
            let flapped = self.last_lowered.is_some_and(|lowered| {
                now.saturating_duration_since(lowered) < dwell.saturating_mul(FLAP_WINDOW_DWELLS)
            });
            // Only step up while doubling still lengthens the dwell, so the exponent stays at
            // the cap and the first stability step-down is felt at once.
            if flapped
                && self.backoff < MAX_BACKOFF_STEPS
                && policy.backed_off_dwell(self.backoff + 1) > dwell
            {
                self.backoff += 1;
            }
            target
        } else {
            let settled = self.lowest_settled_level(now, dwell);
            if settled < self.level {
                self.last_lowered = Some(now);
            }
            settled
        };

        self.dwell = policy.backed_off_dwell(self.backoff);
        if new_level == self.level {
            return None;
        }
        self.level = new_level;
        self.stable_since = Some(now);
        Some(new_level)
    }

    /// Undo one backoff step per full stability window that has passed by `now`.
    fn relax_backoff(&mut self, now: Instant, policy: &LevelPolicy) {
        let mut since = *self.stable_since.get_or_insert(now);
        while self.backoff > 0 {
            let window = policy
                .backed_off_dwell(self.backoff)
                .saturating_mul(STABLE_DWELLS);
            if now.saturating_duration_since(since) < window {
                break;
            }
            // Advance by the completed window (not to `now`) so the result doesn't depend on
            // how often updates arrive.
            since = since.checked_add(window).unwrap_or(now);
            self.backoff -= 1;
        }
        self.stable_since = Some(since);
    }

    /// The lowest level reachable from the current one: each threshold crossed on the way down
    /// must have had the count under its margin for at least `dwell`.
    fn lowest_settled_level(&self, now: Instant, dwell: Duration) -> u8 {
        let mut level = self.level;
        while level > 1 {
            match self.below_since[usize::from(level - 2)] {
                Some(since) if now.saturating_duration_since(since) >= dwell => level -= 1,
                _ => break,
            }
        }
        level
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A room plus a fake clock, so tests read as a timeline.
    struct Sim {
        room: RoomLevel,
        policy: LevelPolicy,
        t0: Instant,
    }

    impl Sim {
        fn new(policy: LevelPolicy) -> Sim {
            Sim {
                room: RoomLevel::new(),
                policy,
                t0: Instant::now(),
            }
        }

        fn default() -> Sim {
            Sim::new(LevelPolicy::default())
        }

        /// Report `online` at `t0 + at`.
        fn at(&mut self, at: Duration, online: u32) -> Option<u8> {
            self.room.update(online, self.t0 + at, &self.policy)
        }

        /// Report `online` once a second for every second in `[from, to)` (seconds), returning
        /// every level change as (second, level).
        fn hold(&mut self, from: u64, to: u64, online: u32) -> Vec<(u64, u8)> {
            (from..to)
                .filter_map(|s| self.at(secs(s), online).map(|l| (s, l)))
                .collect()
        }

        fn level(&self) -> u8 {
            self.room.level()
        }

        fn dwell(&self) -> Duration {
            self.room.current_dwell()
        }
    }

    // ---- policy / target level ----

    #[test]
    fn default_policy_matches_the_issue() {
        let p = LevelPolicy::default();
        assert_eq!(p.thresholds, [1_000, 10_000, 50_000]);
        assert_eq!(p.hysteresis, 0.1);
        assert_eq!(p.dwell, secs(10));
        assert_eq!(p.max_dwell, secs(300));
    }

    #[test]
    fn target_level_counts_exactly_at_a_threshold_belong_to_the_higher_level() {
        let p = LevelPolicy::default();
        let cases = [
            (999, 1),
            (1_000, 2),
            (1_001, 2),
            (9_999, 2),
            (10_000, 3),
            (49_999, 3),
            (50_000, 4),
        ];
        for (online, level) in cases {
            assert_eq!(p.target_level(online), level, "online = {online}");
        }
    }

    #[test]
    fn target_level_of_zero_is_1_and_of_u32_max_is_4() {
        let p = LevelPolicy::default();
        assert_eq!(p.target_level(0), 1);
        assert_eq!(p.target_level(u32::MAX), 4);
    }

    #[test]
    fn target_level_stays_in_range_for_unsorted_thresholds() {
        let p = LevelPolicy {
            thresholds: [500, 100, 50],
            ..LevelPolicy::default()
        };
        assert_eq!(p.target_level(0), 1);
        assert_eq!(p.target_level(75), 2);
        assert_eq!(p.target_level(u32::MAX), 4);
    }

    // ---- new room ----

    #[test]
    fn new_room_is_level_1_with_base_dwell() {
        let room = RoomLevel::new();
        assert_eq!(room.level(), 1);
        assert_eq!(room.current_dwell(), LevelPolicy::default().dwell);
        assert_eq!(RoomLevel::default().level(), 1);
    }

    #[test]
    fn empty_room_stays_at_level_1_and_reports_no_change() {
        let mut sim = Sim::default();
        assert!(sim.hold(0, 100, 0).is_empty());
        assert_eq!(sim.level(), 1);
    }

    // ---- ramp up ----

    #[test]
    fn ramp_up_raises_immediately_at_each_threshold() {
        let mut sim = Sim::default();
        assert_eq!(sim.at(secs(0), 999), None);
        assert_eq!(sim.at(secs(1), 1_000), Some(2));
        assert_eq!(sim.at(secs(2), 9_999), None);
        assert_eq!(sim.at(secs(3), 10_000), Some(3));
        assert_eq!(sim.at(secs(4), 49_999), None);
        assert_eq!(sim.at(secs(5), 50_000), Some(4));
        assert_eq!(sim.at(secs(6), 1_000_000), None);
        assert_eq!(sim.level(), 4);
    }

    #[test]
    fn ramp_up_jumps_from_1_to_4_in_one_update() {
        let mut sim = Sim::default();
        assert_eq!(sim.at(secs(0), 10), None);
        assert_eq!(sim.at(secs(1), 80_000), Some(4));
        assert_eq!(sim.level(), 4);
    }

    #[test]
    fn raise_on_the_very_first_update() {
        let mut sim = Sim::default();
        assert_eq!(sim.at(secs(0), 12_000), Some(3));
    }

    #[test]
    fn u32_max_count_raises_to_4() {
        let mut sim = Sim::default();
        assert_eq!(sim.at(secs(0), u32::MAX), Some(4));
        assert_eq!(sim.at(secs(1), u32::MAX), None);
    }

    #[test]
    fn first_raise_of_a_filling_room_is_not_a_flap() {
        let mut sim = Sim::default();
        sim.at(secs(0), 1_000);
        sim.at(secs(1), 10_000);
        sim.at(secs(2), 50_000);
        assert_eq!(sim.dwell(), secs(10));
    }

    // ---- ramp down ----

    #[test]
    fn ramp_down_waits_the_full_dwell_then_lowers() {
        let mut sim = Sim::default();
        sim.at(secs(0), 2_000);
        assert_eq!(sim.at(secs(100), 500), None); // wait starts here
        assert_eq!(sim.at(secs(105), 500), None);
        assert_eq!(sim.at(secs(110) - ms(1), 500), None);
        assert_eq!(sim.at(secs(110), 500), Some(1)); // exactly one dwell later
        assert_eq!(sim.level(), 1);
    }

    #[test]
    fn ramp_down_through_every_level() {
        let mut sim = Sim::default();
        sim.at(secs(0), 60_000);
        assert_eq!(sim.hold(1, 30, 40_000), vec![(11, 3)]);
        assert_eq!(sim.hold(30, 60, 5_000), vec![(40, 2)]);
        assert_eq!(sim.hold(60, 90, 100), vec![(70, 1)]);
    }

    #[test]
    fn hysteresis_band_holds_the_level_indefinitely() {
        let mut sim = Sim::default();
        sim.at(secs(0), 1_500);
        // 900..=999 is below a0 but not below its margin (900).
        assert!(sim.hold(1, 2_000, 950).is_empty());
        assert_eq!(sim.at(secs(2_000), 900), None);
        assert_eq!(sim.level(), 2);
    }

    #[test]
    fn count_exactly_at_the_margin_holds_and_one_below_lowers() {
        let mut sim = Sim::default();
        sim.at(secs(0), 10_000);
        assert!(sim.hold(1, 100, 9_000).is_empty());
        assert_eq!(sim.level(), 3);
        assert_eq!(sim.hold(100, 120, 8_999), vec![(110, 2)]);
    }

    #[test]
    fn count_rising_into_the_band_restarts_the_wait() {
        let mut sim = Sim::default();
        sim.at(secs(0), 1_200);
        assert_eq!(sim.at(secs(10), 800), None); // wait starts
        assert_eq!(sim.at(secs(18), 800), None);
        assert_eq!(sim.at(secs(19), 950), None); // back in the band: wait cleared
        assert_eq!(sim.at(secs(20), 800), None); // wait restarts at 20
        assert_eq!(sim.at(secs(29), 800), None);
        assert_eq!(sim.at(secs(30), 800), Some(1));
    }

    #[test]
    fn count_going_back_above_the_threshold_restarts_the_wait() {
        let mut sim = Sim::default();
        sim.at(secs(0), 1_200);
        assert_eq!(sim.hold(1, 9, 100), vec![]);
        assert_eq!(sim.at(secs(9), 1_100), None);
        assert_eq!(sim.hold(10, 19, 100), vec![]);
        assert_eq!(sim.at(secs(20), 100), Some(1));
    }

    #[test]
    fn collapse_drops_several_levels_at_once() {
        let mut sim = Sim::default();
        sim.at(secs(0), 60_000);
        assert_eq!(sim.at(secs(1), 0), None);
        assert_eq!(sim.at(secs(11), 0), Some(1));
    }

    #[test]
    fn zero_count_lowers_to_1_only_after_the_dwell() {
        let mut sim = Sim::default();
        sim.at(secs(0), u32::MAX);
        assert_eq!(sim.hold(1, 11, 0), vec![]);
        assert_eq!(sim.at(secs(11), 0), Some(1));
    }

    #[test]
    fn multi_level_drop_stops_at_levels_whose_margin_wait_is_not_done() {
        let mut sim = Sim::default();
        sim.at(secs(0), 60_000);
        sim.at(secs(1), 20_000); // under 45,000 since 1
        sim.at(secs(6), 5_000); // under 9,000 since 6
        sim.at(secs(9), 500); // under 900 since 9
        assert_eq!(sim.at(secs(11), 500), Some(3));
        assert_eq!(sim.at(secs(16), 500), Some(2));
        assert_eq!(sim.at(secs(19), 500), Some(1));
    }

    #[test]
    fn multi_level_drop_goes_only_to_the_level_the_count_indicates() {
        let mut sim = Sim::default();
        sim.at(secs(0), 60_000);
        sim.at(secs(1), 5_000);
        // 5,000 is under the 9,000 and 45,000 margins but not the 900 one.
        assert_eq!(sim.at(secs(11), 5_000), Some(2));
        assert!(sim.hold(12, 1_000, 5_000).is_empty());
    }

    #[test]
    fn sparse_updates_lower_on_the_first_report_after_the_dwell() {
        let mut sim = Sim::default();
        sim.at(secs(0), 2_000);
        sim.at(secs(1), 100);
        assert_eq!(sim.at(secs(500), 100), Some(1));
    }

    #[test]
    fn raise_after_a_lowering_wait_is_immediate_and_clears_the_wait() {
        let mut sim = Sim::default();
        sim.at(secs(0), 2_000);
        sim.at(secs(1), 100);
        assert_eq!(sim.at(secs(5), 20_000), Some(3));
        assert_eq!(sim.at(secs(12), 100), None); // wait started afresh at 12
        assert_eq!(sim.at(secs(22), 100), Some(1));
    }

    // ---- flapping / backoff ----

    /// One flap cycle at the 1,000 threshold: low for exactly the current dwell (→ lowered),
    /// then straight back up (→ raised, a flap). Returns the time after the cycle.
    fn flap_once(sim: &mut Sim, start: Duration) -> Duration {
        let dwell = sim.dwell();
        assert_eq!(sim.at(start, 800), None);
        assert_eq!(sim.at(start + dwell, 800), Some(1));
        assert_eq!(sim.at(start + dwell + secs(1), 1_100), Some(2));
        start + dwell + secs(1)
    }

    #[test]
    fn flap_doubles_the_dwell_each_time_and_caps_at_max_dwell() {
        let mut sim = Sim::default();
        sim.at(secs(0), 1_100);
        let mut t = secs(1);
        let mut dwells = vec![];
        for _ in 0..7 {
            t = flap_once(&mut sim, t);
            dwells.push(sim.dwell().as_secs());
        }
        assert_eq!(dwells, vec![20, 40, 80, 160, 300, 300, 300]);
    }

    #[test]
    fn backed_off_dwell_delays_the_next_lowering() {
        let mut sim = Sim::default();
        sim.at(secs(0), 1_100);
        let t = flap_once(&mut sim, secs(1)); // dwell now 20 s
        assert_eq!(sim.dwell(), secs(20));
        let start = t + secs(1);
        assert_eq!(sim.at(start, 800), None);
        assert_eq!(sim.at(start + secs(10), 800), None); // the base dwell is no longer enough
        assert_eq!(sim.at(start + secs(20) - ms(1), 800), None);
        assert_eq!(sim.at(start + secs(20), 800), Some(1));
    }

    #[test]
    fn raise_at_exactly_twice_the_dwell_after_lowering_is_not_a_flap() {
        let mut sim = Sim::default();
        sim.at(secs(0), 1_100);
        sim.at(secs(1), 800);
        assert_eq!(sim.at(secs(11), 800), Some(1));
        assert_eq!(sim.at(secs(31), 1_100), Some(2)); // 20 s = 2 × 10 s later
        assert_eq!(sim.dwell(), secs(10));
    }

    #[test]
    fn raise_just_inside_the_flap_window_is_a_flap() {
        let mut sim = Sim::default();
        sim.at(secs(0), 1_100);
        sim.at(secs(1), 800);
        assert_eq!(sim.at(secs(11), 800), Some(1));
        assert_eq!(sim.at(secs(31) - ms(1), 1_100), Some(2));
        assert_eq!(sim.dwell(), secs(20));
    }

    #[test]
    fn lowering_alone_never_changes_the_dwell() {
        let mut sim = Sim::default();
        sim.at(secs(0), 60_000);
        sim.hold(1, 100, 0);
        assert_eq!(sim.level(), 1);
        assert_eq!(sim.dwell(), secs(10));
    }

    #[test]
    fn stability_halves_the_dwell_step_by_step_back_to_base() {
        let mut sim = Sim::default();
        sim.at(secs(0), 1_100);
        let mut t = secs(1);
        for _ in 0..5 {
            t = flap_once(&mut sim, t);
        }
        assert_eq!(sim.dwell(), secs(300));
        // Last change was the raise at `t`; hold the level steady from then on.
        let steps = [(1_200, 160), (640, 80), (320, 40), (160, 20), (80, 10)];
        for (window, dwell_after) in steps {
            let before = sim.dwell();
            assert_eq!(sim.at(t + secs(window) - ms(1), 1_100), None);
            assert_eq!(sim.dwell(), before, "stepped down too early");
            assert_eq!(sim.at(t + secs(window), 1_100), None);
            assert_eq!(sim.dwell(), secs(dwell_after));
            t += secs(window);
        }
        assert_eq!(sim.at(t + secs(100_000), 1_100), None);
        assert_eq!(sim.dwell(), secs(10), "never below the base dwell");
    }

    #[test]
    fn sparse_update_catches_up_on_several_stability_steps_at_once() {
        let mut sim = Sim::default();
        sim.at(secs(0), 1_100);
        let mut t = secs(1);
        for _ in 0..3 {
            t = flap_once(&mut sim, t);
        }
        assert_eq!(sim.dwell(), secs(80));
        // 4×80 + 4×40 = 480 s → two steps down.
        assert_eq!(sim.at(t + secs(480), 1_100), None);
        assert_eq!(sim.dwell(), secs(20));
    }

    #[test]
    fn level_changes_restart_the_stability_clock() {
        let mut sim = Sim::default();
        sim.at(secs(0), 1_100);
        // Dwell 20 after this, stability window 80 s from t.
        let t = flap_once(&mut sim, secs(1));
        // A non-flap change (2 → 3) 60 s in restarts the window.
        assert_eq!(sim.at(t + secs(60), 10_000), Some(3));
        assert_eq!(sim.at(t + secs(100), 10_000), None);
        assert_eq!(sim.dwell(), secs(20));
        assert_eq!(sim.at(t + secs(140), 10_000), None);
        assert_eq!(sim.dwell(), secs(10));
    }

    #[test]
    fn shortened_dwell_applies_to_a_lowering_decided_in_the_same_update() {
        let mut sim = Sim::default();
        sim.at(secs(0), 1_100);
        let t = flap_once(&mut sim, secs(1)); // dwell 20
                                              // Under the margin from t+65 on.
        sim.at(t + secs(65), 800);
        // At t+80 the stability step-down makes the dwell 10, and 15 s ≥ 10 s have passed.
        assert_eq!(sim.at(t + secs(80), 800), Some(1));
        assert_eq!(sim.dwell(), secs(10));
    }

    #[test]
    fn oscillating_count_changes_level_far_less_often_with_backoff() {
        // Count alternates 20 s at 1,100 and 20 s at 800, reported every second.
        let mut sim = Sim::default();
        let mut changes = vec![];
        for s in 0..400u64 {
            let online = if (s / 20) % 2 == 0 { 1_100 } else { 800 };
            if let Some(l) = sim.at(secs(s), online) {
                changes.push((s, l));
            }
        }
        // Without backoff every 40 s cycle would lower and raise (20 changes in 400 s). With
        // it: up at 0, down at 30, up at 40 (a flap: dwell 20, so 20 s lows no longer lower);
        // 80 s of stability restores the 10 s dwell, so one lower/raise pair per 120 s follows.
        let expected = [
            (0, 2),
            (30, 1),
            (40, 2),
            (150, 1),
            (160, 2),
            (270, 1),
            (280, 2),
            (390, 1),
        ];
        assert_eq!(changes, expected);
    }

    #[test]
    fn flapping_around_a_high_threshold_backs_off_too() {
        let mut sim = Sim::default();
        sim.at(secs(0), 55_000);
        sim.at(secs(1), 40_000);
        assert_eq!(sim.at(secs(11), 40_000), Some(3));
        assert_eq!(sim.at(secs(12), 55_000), Some(4));
        assert_eq!(sim.dwell(), secs(20));
    }

    // ---- custom policies ----

    #[test]
    fn custom_policy_thresholds_hysteresis_and_dwell() {
        let policy = LevelPolicy {
            thresholds: [10, 100, 1_000],
            hysteresis: 0.5,
            dwell: secs(2),
            max_dwell: secs(5),
        };
        let mut sim = Sim::new(policy);
        assert_eq!(sim.at(secs(0), 9), None);
        assert_eq!(sim.at(secs(1), 100), Some(3));
        assert_eq!(
            sim.room.current_dwell(),
            secs(2),
            "dwell follows the policy"
        );
        // Margin of 100 is 50: 50 holds, 49 lowers after 2 s.
        assert_eq!(sim.at(secs(2), 50), None);
        assert_eq!(sim.at(secs(10), 50), None);
        assert_eq!(sim.at(secs(11), 49), None);
        assert_eq!(sim.at(secs(13), 49), Some(2));
        // Flaps: 2 → 4 → 5 (capped, not 8).
        assert_eq!(sim.at(secs(14), 100), Some(3));
        assert_eq!(sim.dwell(), secs(4));
        sim.at(secs(15), 10);
        assert_eq!(sim.at(secs(19), 10), Some(2));
        assert_eq!(sim.at(secs(20), 100), Some(3));
        assert_eq!(sim.dwell(), secs(5));
    }

    #[test]
    fn zero_hysteresis_lowers_just_below_the_threshold() {
        let policy = LevelPolicy {
            hysteresis: 0.0,
            ..LevelPolicy::default()
        };
        let mut sim = Sim::new(policy);
        sim.at(secs(0), 1_000);
        assert!(sim.hold(1, 50, 1_000).is_empty());
        assert_eq!(sim.hold(50, 70, 999), vec![(60, 1)]);
    }

    #[test]
    fn full_hysteresis_never_lowers() {
        let policy = LevelPolicy {
            hysteresis: 1.0,
            ..LevelPolicy::default()
        };
        let mut sim = Sim::new(policy);
        sim.at(secs(0), 60_000);
        assert!(sim.hold(1, 1_000, 0).is_empty());
        assert_eq!(sim.level(), 4);
    }

    #[test]
    fn out_of_range_hysteresis_is_clamped() {
        for (h, lowers_at_999) in [(-3.0, true), (f64::NAN, true), (7.0, false)] {
            let policy = LevelPolicy {
                hysteresis: h,
                ..LevelPolicy::default()
            };
            let mut sim = Sim::new(policy);
            sim.at(secs(0), 1_000);
            let changes = sim.hold(1, 100, 999);
            assert_eq!(!changes.is_empty(), lowers_at_999, "hysteresis = {h}");
        }
    }

    #[test]
    fn zero_dwell_lowers_on_the_first_report_below_the_margin_and_never_backs_off() {
        let policy = LevelPolicy {
            dwell: Duration::ZERO,
            ..LevelPolicy::default()
        };
        let mut sim = Sim::new(policy);
        sim.at(secs(0), 1_000);
        assert_eq!(sim.at(secs(1), 899), Some(1));
        assert_eq!(sim.at(secs(1), 1_000), Some(2));
        assert_eq!(sim.at(secs(1), 899), Some(1));
        assert_eq!(sim.dwell(), Duration::ZERO);
    }

    #[test]
    fn max_dwell_below_dwell_disables_backoff() {
        let policy = LevelPolicy {
            dwell: secs(10),
            max_dwell: secs(1),
            ..LevelPolicy::default()
        };
        let mut sim = Sim::new(policy);
        sim.at(secs(0), 1_100);
        flap_once(&mut sim, secs(1));
        assert_eq!(sim.dwell(), secs(10));
    }

    #[test]
    fn huge_dwell_does_not_overflow() {
        let policy = LevelPolicy {
            dwell: Duration::MAX / 2,
            max_dwell: Duration::MAX,
            ..LevelPolicy::default()
        };
        let mut sim = Sim::new(policy);
        sim.at(secs(0), 1_100);
        sim.at(secs(1), 0);
        assert_eq!(sim.at(secs(1_000), 0), None);
        assert_eq!(sim.level(), 2);
    }

    #[test]
    fn clock_going_backwards_does_not_panic_or_lower() {
        let mut sim = Sim::default();
        sim.at(secs(100), 1_100);
        sim.at(secs(100), 800);
        assert_eq!(sim.at(secs(50), 800), None);
        assert_eq!(sim.at(secs(110), 800), Some(1));
    }
}
