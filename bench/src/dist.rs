//! Who is where and what is sent, decided deterministically from indexes, so that the coordinator
//! and every client process agree without talking: which room connection `i` joins (one room,
//! uniform over K, or Zipf over K), which group it belongs to (normal, slow reader, churner), which
//! room the n-th published message goes to, and its priority (a weighted mix).

use std::fmt;
use std::str::FromStr;

use clap::ValueEnum;
use roomcast_proto::message::PRIORITIES;
use serde::{Deserialize, Serialize};

/// How connections spread over `--rooms` rooms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RoomDist {
    /// Connection i joins room i mod K: K rooms of equal size.
    Uniform,
    /// Room r (0-based) gets a share proportional to 1/(r+1)^s: one giant room and a long tail.
    Zipf,
}

/// Which rooms the published messages go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PublishSpread {
    /// Round-robin over the rooms that have members: every room gets the same message rate.
    Even,
    /// Each message picks a room with probability proportional to its members (a big room is
    /// busier, as on a real platform).
    Members,
}

/// What a connection does besides reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Group {
    /// Reads everything; completeness and latency are judged on this group.
    Normal,
    /// Stops reading during the measured window, resumes after it.
    Slow,
    /// Closes and reopens its connection during the measured window.
    Churn,
}

impl Group {
    pub const ALL: [Group; 3] = [Group::Normal, Group::Slow, Group::Churn];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Group::Normal => "normal",
            Group::Slow => "slow",
            Group::Churn => "churn",
        }
    }
}

/// The id of room `r` (the coordinator publishes to the same names).
pub fn room_name(r: usize) -> String {
    format!("room-{r}")
}

/// How long connection `i` waits before its `round`-th reconnect after a drop: uniform in
/// [0, `max_secs`), from a hash of both (an SDK's full jitter, repeatable from run to run).
pub fn reconnect_delay(i: usize, round: u64, max_secs: f64) -> std::time::Duration {
    let u = unit(i as u64 ^ JITTER_SALT ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    std::time::Duration::from_secs_f64(u * max_secs.max(0.0))
}

/// Which connections send upstream (`--senders`): exactly `min(senders, conns)` of the global
/// indexes `0..conns`, spread evenly over them — so over rooms (`i mod K`), client processes
/// (ranges of `i`) and threads alike. Connection `i` is a sender when `a·i mod conns < senders`,
/// with `a` coprime to `conns` near the golden ratio of it: a permutation of the indexes whose
/// first `senders` values fall evenly (a Kronecker sequence), with no stride for the room
/// assignment to alias with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderPick {
    senders: u64,
    conns: u64,
    a: u64,
}

impl SenderPick {
    pub fn new(senders: usize, conns: usize) -> SenderPick {
        let conns = conns as u64;
        let mut a = ((conns as f64 * 0.618_033_988_75).round() as u64).max(1);
        while gcd(a, conns.max(1)) != 1 {
            a += 1;
        }
        SenderPick {
            senders: senders as u64,
            conns,
            a,
        }
    }

    pub fn is_sender(&self, i: usize) -> bool {
        if self.senders == 0 || self.conns == 0 {
            return false;
        }
        if self.senders >= self.conns {
            return true;
        }
        (u128::from(self.a) * i as u128 % u128::from(self.conns)) < u128::from(self.senders)
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// How many viewers send (`--senders`): a count (`5000`), a percentage of the connections
/// (`25%`), or `all`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Senders {
    Count(usize),
    Percent(f64),
}

impl Senders {
    /// Of `conns` connections.
    pub fn of(self, conns: usize) -> usize {
        match self {
            Senders::Count(n) => n.min(conns),
            Senders::Percent(p) => ((conns as f64 * p / 100.0).round() as usize).min(conns),
        }
    }
}

impl Default for Senders {
    fn default() -> Senders {
        Senders::Count(0)
    }
}

impl FromStr for Senders {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "all" {
            return Ok(Senders::Percent(100.0));
        }
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("`{s}` is not a percentage like 25%"))?;
            if !(0.0..=100.0).contains(&p) {
                return Err(format!("`{s}`: a percentage is 0% to 100%"));
            }
            return Ok(Senders::Percent(p));
        }
        s.parse::<usize>()
            .map(Senders::Count)
            .map_err(|_| format!("`{s}` is not a count of senders, a percentage (25%) or `all`"))
    }
}

impl fmt::Display for Senders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Senders::Count(n) => write!(f, "{n}"),
            Senders::Percent(p) if *p == 100.0 => f.write_str("all"),
            Senders::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for Senders {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Senders {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // `senders = 20000` as well as `senders = "all"` or `"25%"`.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(usize),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(Senders::Count(n)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// The assignment of every connection (by its global index) to a room and a group.
#[derive(Debug, Clone)]
pub struct Population {
    rooms: usize,
    /// Cumulative room shares for Zipf (`None` = uniform).
    zipf_cdf: Option<Vec<f64>>,
    slow_fraction: f64,
    churn_fraction: f64,
}

impl Population {
    pub fn new(
        rooms: usize,
        dist: RoomDist,
        zipf_exponent: f64,
        slow_fraction: f64,
        churn_fraction: f64,
    ) -> Population {
        let rooms = rooms.max(1);
        let zipf_cdf = (dist == RoomDist::Zipf && rooms > 1)
            .then(|| cumulative((0..rooms).map(|r| 1.0 / ((r + 1) as f64).powf(zipf_exponent))));
        Population {
            rooms,
            zipf_cdf,
            slow_fraction,
            churn_fraction,
        }
    }

    pub fn rooms(&self) -> usize {
        self.rooms
    }

    /// The room connection `i` joins.
    pub fn room_of(&self, i: usize) -> usize {
        match &self.zipf_cdf {
            None => i % self.rooms,
            Some(cdf) => pick(cdf, unit(i as u64 ^ ROOM_SALT)),
        }
    }

    /// The group connection `i` belongs to.
    pub fn group_of(&self, i: usize) -> Group {
        let u = unit(i as u64 ^ GROUP_SALT);
        if u < self.slow_fraction {
            Group::Slow
        } else if u < self.slow_fraction + self.churn_fraction {
            Group::Churn
        } else {
            Group::Normal
        }
    }

    /// Members of every room when `conns` connections are all joined.
    pub fn members(&self, conns: usize) -> Vec<u64> {
        let mut members = vec![0u64; self.rooms];
        for i in 0..conns {
            members[self.room_of(i)] += 1;
        }
        members
    }

    /// Connections per group when `conns` connections are all joined.
    pub fn group_sizes(&self, conns: usize) -> [u64; 3] {
        let mut sizes = [0u64; 3];
        for i in 0..conns {
            sizes[self.group_of(i).index()] += 1;
        }
        sizes
    }
}

/// Picks the room of each published message.
#[derive(Debug, Clone)]
pub struct RoomPicker {
    /// Rooms with at least one member, in room order.
    occupied: Vec<usize>,
    /// Cumulative member shares of `occupied` (for [`PublishSpread::Members`]).
    member_cdf: Option<Vec<f64>>,
}

impl RoomPicker {
    pub fn new(members: &[u64], spread: PublishSpread) -> RoomPicker {
        let mut occupied: Vec<usize> = (0..members.len()).filter(|&r| members[r] > 0).collect();
        if occupied.is_empty() {
            occupied.push(0);
        }
        let member_cdf = (spread == PublishSpread::Members)
            .then(|| cumulative(occupied.iter().map(|&r| members[r].max(1) as f64)));
        RoomPicker {
            occupied,
            member_cdf,
        }
    }

    pub fn occupied(&self) -> &[usize] {
        &self.occupied
    }

    /// The room of the n-th published message.
    pub fn room(&self, n: u64) -> usize {
        match &self.member_cdf {
            None => self.occupied[(n % self.occupied.len() as u64) as usize],
            Some(cdf) => self.occupied[pick(cdf, unit(n ^ PUBLISH_SALT))],
        }
    }
}

/// Relative weights of the four priorities among published messages, written
/// `priority:weight,...` (`0:1,1:4,2:20,3:75`); a bare priority (`3`) means only that one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PriorityMix {
    weights: [u32; PRIORITIES],
}

impl PriorityMix {
    pub fn only(priority: u8) -> PriorityMix {
        let mut weights = [0; PRIORITIES];
        weights[usize::from(priority)] = 1;
        PriorityMix { weights }
    }

    /// The priority of the n-th published message: drawn at random with these weights, from a
    /// hash of `n` (reproducible). Random rather than evenly interleaved, as on a live platform:
    /// an even interleaving would put, say, exactly one gift in every merged batch.
    pub fn priority(&self, n: u64) -> u8 {
        let total: u32 = self.weights.iter().sum();
        let mut x = unit(n ^ PRIORITY_SALT) * f64::from(total);
        for (p, &w) in self.weights.iter().enumerate() {
            if x < f64::from(w) {
                return p as u8;
            }
            x -= f64::from(w);
        }
        // Rounding at the very top: the last priority with any weight.
        (0..PRIORITIES)
            .rev()
            .find(|&p| self.weights[p] > 0)
            .unwrap_or(0) as u8
    }
}

impl FromStr for PriorityMix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(p) = s.parse::<u8>() {
            if usize::from(p) >= PRIORITIES {
                return Err(format!("priority {p} is not 0..=3"));
            }
            return Ok(PriorityMix::only(p));
        }
        let mut weights = [0u32; PRIORITIES];
        for part in s.split(',') {
            let (p, w) = part
                .split_once(':')
                .ok_or_else(|| format!("`{part}` is not priority:weight (like 0:1,3:99)"))?;
            let p: usize = p
                .trim()
                .parse()
                .ok()
                .filter(|&p| p < PRIORITIES)
                .ok_or_else(|| format!("`{p}` is not a priority 0..=3"))?;
            weights[p] = w
                .trim()
                .parse()
                .map_err(|_| format!("`{w}` is not a whole-number weight"))?;
        }
        if weights.iter().all(|&w| w == 0) {
            return Err("every weight is 0".into());
        }
        Ok(PriorityMix { weights })
    }
}

impl fmt::Display for PriorityMix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = (0..PRIORITIES)
            .filter(|&p| self.weights[p] > 0)
            .map(|p| format!("{p}:{}", self.weights[p]))
            .collect();
        f.write_str(&parts.join(","))
    }
}

impl Serialize for PriorityMix {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PriorityMix {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A TOML file may say `priority_mix = 0` as well as `priority_mix = "0:1,3:9"`.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u8),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(p) => p.to_string().parse(),
            Raw::Text(s) => s.parse(),
        }
        .map_err(serde::de::Error::custom)
    }
}

const ROOM_SALT: u64 = 0x726f_6f6d;
const GROUP_SALT: u64 = 0x6772_6f75_7000;
const PUBLISH_SALT: u64 = 0x7075_626c_6973_6800;
const PRIORITY_SALT: u64 = 0x7072_696f_7269_7479;
const JITTER_SALT: u64 = 0x6a69_7474_6572;

/// A uniform number in [0, 1) derived from `x` (splitmix64).
fn unit(x: u64) -> f64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Normalised running sums of `weights`.
fn cumulative(weights: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut sum = 0.0;
    let mut cdf: Vec<f64> = weights
        .map(|w| {
            sum += w;
            sum
        })
        .collect();
    for c in &mut cdf {
        *c /= sum;
    }
    cdf
}

/// The first index whose cumulative share exceeds `u`.
fn pick(cdf: &[f64], u: f64) -> usize {
    cdf.partition_point(|&c| c <= u).min(cdf.len() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_rooms_are_equal() {
        let pop = Population::new(4, RoomDist::Uniform, 1.0, 0.0, 0.0);
        assert_eq!(pop.members(1000), vec![250; 4]);
    }

    #[test]
    fn zipf_has_one_giant_room_and_a_long_tail() {
        let pop = Population::new(100, RoomDist::Zipf, 1.0, 0.0, 0.0);
        let members = pop.members(100_000);
        assert_eq!(members.iter().sum::<u64>(), 100_000);
        // Harmonic number H(100) ≈ 5.19: room 0 holds ≈ 19 %, room 1 ≈ 9.6 %, room 99 ≈ 0.19 %.
        assert!((18_000..21_000).contains(&members[0]), "{members:?}");
        assert!((8_500..10_800).contains(&members[1]), "{members:?}");
        assert!(members[99] < 400, "{members:?}");
        assert!(members.windows(10).next().unwrap()[0] > members[50]);
    }

    #[test]
    fn groups_take_their_fractions() {
        let pop = Population::new(1, RoomDist::Uniform, 1.0, 0.1, 0.2);
        let sizes = pop.group_sizes(100_000);
        assert!(
            (9_500..10_500).contains(&sizes[Group::Slow.index()]),
            "{sizes:?}"
        );
        assert!(
            (19_300..20_700).contains(&sizes[Group::Churn.index()]),
            "{sizes:?}"
        );
        assert_eq!(sizes.iter().sum::<u64>(), 100_000);
    }

    #[test]
    fn priority_mix_parses_and_draws_in_proportion() {
        let mix: PriorityMix = "0:1,1:4,2:20,3:75".parse().unwrap();
        assert_eq!(mix.to_string(), "0:1,1:4,2:20,3:75");
        let mut counts = [0u32; 4];
        for n in 0..100_000 {
            counts[usize::from(mix.priority(n))] += 1;
        }
        for (got, want) in counts.into_iter().zip([1_000u32, 4_000, 20_000, 75_000]) {
            assert!(got.abs_diff(want) < want / 10 + 50, "{counts:?}");
        }
        let only = "2".parse::<PriorityMix>().unwrap();
        assert!((0..1000).all(|n| only.priority(n) == 2));
        assert_eq!(only, PriorityMix::only(2));
        assert!("4".parse::<PriorityMix>().is_err());
        assert!("0:0".parse::<PriorityMix>().is_err());
        assert!("1-3".parse::<PriorityMix>().is_err());
    }

    #[test]
    fn reconnect_delays_spread_over_the_jitter() {
        let delays: Vec<f64> = (0..10_000)
            .map(|i| reconnect_delay(i, 1, 1.0).as_secs_f64())
            .collect();
        assert!(delays.iter().all(|d| (0.0..1.0).contains(d)));
        // Ten buckets of 0.1 s hold about 1,000 each.
        let mut buckets = [0u32; 10];
        for d in &delays {
            buckets[(d * 10.0) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&n| (850..1150).contains(&n)),
            "{buckets:?}"
        );
        assert_eq!(reconnect_delay(7, 1, 1.0), reconnect_delay(7, 1, 1.0));
        assert_ne!(reconnect_delay(7, 1, 1.0), reconnect_delay(7, 2, 1.0));
        assert_eq!(reconnect_delay(7, 1, 0.0), std::time::Duration::ZERO);
    }

    #[test]
    fn senders_spread_evenly_over_the_connections() {
        for (n, conns) in [
            (0, 100),
            (1, 100),
            (37, 100),
            (100, 100),
            (250, 100),
            (50, 200),
            (1, 1),
        ] {
            let pick = SenderPick::new(n, conns);
            let count = (0..conns).filter(|&i| pick.is_sender(i)).count();
            assert_eq!(count, n.min(conns), "{n} of {conns}");
        }
        // Over rooms (i mod K), halves (two client processes) and threads (i mod 2) alike.
        let pick = SenderPick::new(100, 1000);
        for rooms in [2, 4, 5, 10] {
            for r in 0..rooms {
                let n = (0..1000)
                    .filter(|&i| i % rooms == r && pick.is_sender(i))
                    .count();
                let even = 100 / rooms;
                assert!(n.abs_diff(even) <= even / 4 + 2, "room {r} of {rooms}: {n}");
            }
        }
        let first_half = (0..500).filter(|&i| pick.is_sender(i)).count();
        assert!((45..=55).contains(&first_half), "{first_half}");

        assert_eq!("all".parse::<Senders>().unwrap().of(300), 300);
        assert_eq!("25%".parse::<Senders>().unwrap().of(300), 75);
        assert_eq!("50".parse::<Senders>().unwrap().of(30), 30, "at most all");
        assert_eq!(Senders::default().of(300), 0);
        assert!("-1".parse::<Senders>().is_err());
        assert!("120%".parse::<Senders>().is_err());
        assert!("some".parse::<Senders>().is_err());
        assert_eq!("all".parse::<Senders>().unwrap().to_string(), "all");
        assert_eq!("12.5%".parse::<Senders>().unwrap().to_string(), "12.5%");
    }

    #[test]
    fn publishing_by_members_follows_room_sizes() {
        let picker = RoomPicker::new(&[900, 0, 100], PublishSpread::Members);
        assert_eq!(picker.occupied(), &[0, 2]);
        let to_first = (0..10_000).filter(|&n| picker.room(n) == 0).count();
        assert!((8_800..9_200).contains(&to_first), "{to_first}");
        let even = RoomPicker::new(&[900, 0, 100], PublishSpread::Even);
        assert_eq!(
            (0..4).map(|n| even.room(n)).collect::<Vec<_>>(),
            [0, 2, 0, 2]
        );
    }
}
