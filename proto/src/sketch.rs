//! Distinct users of a room, counted in a sketch that edges build and the control plane merges
//! (PROTOCOL.md §5 and §6).
//!
//! One user may hold several connections in a room (app and H5, possibly on two edges), so
//! distinct users cannot be summed over edges the way connections are. Each edge describes the
//! users it holds in a room by a [`UserSketch`] in its load report; the control plane merges the
//! edges' sketches (a union: a user on two edges counts once) and estimates the count.
//!
//! - Up to [`EXACT_MAX`] distinct users a sketch is **exact**: the ascending list of the users'
//!   64-bit hashes ([`user_hash`]). Only a hash collision can miscount (probability about
//!   n²/2⁶⁵, below 10⁻¹³ at 512 users).
//! - Beyond, it is a **HyperLogLog** of [`REGISTERS`] one-byte registers (4 KiB, the size of the
//!   longest exact list), estimated with Ertl's improved raw estimator ("New cardinality
//!   estimation algorithms for HyperLogLog sketches", 2017, algorithm 6): a relative standard
//!   error of about 1.04/√4096 ≈ 1.6 % over the whole range, without the bias of the classic
//!   estimator where it hands over to linear counting. The unit tests measure it.
//!
//! Merging is order-independent and deterministic (exact ∪ exact stays exact while the union
//! holds at most [`EXACT_MAX`] hashes; anything else is the register-wise maximum), so merging
//! the same reports in any order gives the same count. The hash is part of the protocol: edges
//! of different builds must hash a user id alike for their sketches to merge.

use std::fmt;

/// Index bits of a dense sketch: 2^12 registers.
pub const PRECISION: u32 = 12;
/// Registers of a dense sketch.
pub const REGISTERS: usize = 1 << PRECISION;
/// The largest register value: hash bits left after the index, plus one.
pub const MAX_RANK: u8 = (64 - PRECISION + 1) as u8;
/// The most hashes an exact sketch holds; one more distinct user makes it dense.
pub const EXACT_MAX: usize = 512;

/// The stable 64-bit hash of a user id that sketches count: FNV-1a over the id's bytes, then
/// MurmurHash3's 64-bit finalizer (FNV-1a alone mixes the high bits of short ids poorly, and the
/// dense form indexes by the high bits).
pub fn user_hash(user: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in user.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The distinct users of a room on one edge (or, merged, over several): see the module
/// documentation.
#[derive(Clone, PartialEq, Eq)]
pub enum UserSketch {
    /// The users' hashes, strictly ascending, at most [`EXACT_MAX`].
    Exact(Vec<u64>),
    /// HyperLogLog registers, each at most [`MAX_RANK`].
    Dense(Box<[u8; REGISTERS]>),
}

impl Default for UserSketch {
    fn default() -> UserSketch {
        UserSketch::Exact(Vec::new())
    }
}

impl fmt::Debug for UserSketch {
    // 4,096 registers say nothing in a failure message; the estimate does.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserSketch::Exact(hashes) => f.debug_tuple("Exact").field(hashes).finish(),
            UserSketch::Dense(_) => write!(f, "Dense(~{})", self.estimate()),
        }
    }
}

impl UserSketch {
    /// The sketch of these users' hashes (duplicates count once). Holds at most
    /// 2 × [`EXACT_MAX`] hashes at a time, so a room of 100,000 members costs one pass and no
    /// big allocation.
    pub fn from_hashes(hashes: impl IntoIterator<Item = u64>) -> UserSketch {
        let mut hashes = hashes.into_iter();
        let mut exact: Vec<u64> = Vec::new();
        for hash in hashes.by_ref() {
            exact.push(hash);
            if exact.len() > 2 * EXACT_MAX {
                exact.sort_unstable();
                exact.dedup();
                if exact.len() > EXACT_MAX {
                    let mut registers = empty_registers();
                    for hash in exact.into_iter().chain(hashes) {
                        observe(&mut registers, hash);
                    }
                    return UserSketch::Dense(registers);
                }
            }
        }
        exact.sort_unstable();
        exact.dedup();
        UserSketch::exact_or_dense(exact)
    }

    /// An exact sketch of sorted, distinct `hashes`, or a dense one when there are too many.
    fn exact_or_dense(hashes: Vec<u64>) -> UserSketch {
        if hashes.len() <= EXACT_MAX {
            return UserSketch::Exact(hashes);
        }
        let mut registers = empty_registers();
        for hash in hashes {
            observe(&mut registers, hash);
        }
        UserSketch::Dense(registers)
    }

    /// Adds `other`'s users (a union: users in both count once).
    pub fn merge(&mut self, other: &UserSketch) {
        match (&mut *self, other) {
            (UserSketch::Exact(mine), UserSketch::Exact(theirs)) => {
                let union = sorted_union(mine, theirs);
                *self = UserSketch::exact_or_dense(union);
            }
            (UserSketch::Exact(mine), UserSketch::Dense(theirs)) => {
                let mut registers = theirs.clone();
                for &hash in mine.iter() {
                    observe(&mut registers, hash);
                }
                *self = UserSketch::Dense(registers);
            }
            (UserSketch::Dense(mine), UserSketch::Exact(theirs)) => {
                for &hash in theirs {
                    observe(mine, hash);
                }
            }
            (UserSketch::Dense(mine), UserSketch::Dense(theirs)) => {
                for (a, &b) in mine.iter_mut().zip(theirs.iter()) {
                    *a = (*a).max(b);
                }
            }
        }
    }

    /// How many distinct users: exact up to [`EXACT_MAX`], estimated beyond (see the module
    /// documentation).
    pub fn estimate(&self) -> u64 {
        match self {
            UserSketch::Exact(hashes) => hashes.len() as u64,
            UserSketch::Dense(registers) => estimate_registers(registers).round() as u64,
        }
    }

    /// Whether the sketch keeps its form's rules (what the link codec checks): exact hashes
    /// strictly ascending and at most [`EXACT_MAX`] of them; registers at most [`MAX_RANK`].
    pub fn check(&self) -> Result<(), &'static str> {
        match self {
            UserSketch::Exact(hashes) if hashes.len() > EXACT_MAX => {
                Err("an exact sketch holds more than 512 hashes")
            }
            UserSketch::Exact(hashes) if !hashes.windows(2).all(|w| w[0] < w[1]) => {
                Err("exact sketch hashes are not strictly ascending")
            }
            UserSketch::Dense(registers) if registers.iter().any(|&r| r > MAX_RANK) => {
                Err("a dense sketch register is above 53")
            }
            _ => Ok(()),
        }
    }
}

fn empty_registers() -> Box<[u8; REGISTERS]> {
    Box::new([0; REGISTERS])
}

/// Records one hash: the high bits pick the register, which keeps the largest rank seen (the
/// position of the first set bit in the rest of the hash).
fn observe(registers: &mut [u8; REGISTERS], hash: u64) {
    let index = (hash >> (64 - PRECISION)) as usize;
    let rest = hash << PRECISION;
    let rank = (rest.leading_zeros().min(64 - PRECISION) + 1) as u8;
    if registers[index] < rank {
        registers[index] = rank;
    }
}

/// Merges two strictly ascending lists into one.
fn sorted_union(a: &[u64], b: &[u64]) -> Vec<u64> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

/// Ertl's improved raw estimator (algorithm 6 of the paper) over the register histogram.
fn estimate_registers(registers: &[u8; REGISTERS]) -> f64 {
    let q = (64 - PRECISION) as usize;
    let mut histogram = [0u32; 64 - PRECISION as usize + 2];
    for &r in registers.iter() {
        histogram[usize::from(r).min(q + 1)] += 1;
    }
    let m = REGISTERS as f64;
    let mut z = m * tau((m - f64::from(histogram[q + 1])) / m);
    for k in (1..=q).rev() {
        z = 0.5 * (z + f64::from(histogram[k]));
    }
    z += m * sigma(f64::from(histogram[0]) / m);
    if !z.is_finite() {
        return 0.0; // every register empty
    }
    m * m / (2.0 * std::f64::consts::LN_2) / z
}

fn sigma(mut x: f64) -> f64 {
    if x == 1.0 {
        return f64::INFINITY;
    }
    let mut y = 1.0;
    let mut z = x;
    loop {
        x *= x;
        let before = z;
        z += x * y;
        y += y;
        if z == before {
            return z;
        }
    }
}

fn tau(mut x: f64) -> f64 {
    if x == 0.0 || x == 1.0 {
        return 0.0;
    }
    let mut y = 1.0;
    let mut z = 1.0 - x;
    loop {
        x = x.sqrt();
        let before = z;
        y *= 0.5;
        z -= (1.0 - x).powi(2) * y;
        if z == before {
            return z / 3.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(range: std::ops::Range<u64>) -> impl Iterator<Item = u64> {
        range.map(|i| user_hash(&format!("user:{i}")))
    }

    #[test]
    fn the_hash_is_stable_across_builds() {
        // Part of the protocol: these values must never change.
        assert_eq!(user_hash(""), 0xefd0_1f60_ba99_2926);
        assert_eq!(user_hash("u1"), 0x63b9_b7f5_2c45_b2b1);
        assert_eq!(user_hash("alice"), 0x3507_d047_a67c_08f4);
    }

    #[test]
    fn small_rooms_are_counted_exactly_and_a_user_counts_once() {
        let app = user_hash("alice");
        let h5 = user_hash("alice");
        let sketch = UserSketch::from_hashes([app, user_hash("bob"), h5]);
        assert_eq!(sketch.estimate(), 2);
        assert!(matches!(&sketch, UserSketch::Exact(h) if h.len() == 2));
        assert_eq!(sketch.check(), Ok(()));
        assert_eq!(UserSketch::default().estimate(), 0);
        let full = UserSketch::from_hashes(users(0..EXACT_MAX as u64));
        assert!(matches!(full, UserSketch::Exact(_)));
        assert_eq!(full.estimate(), 512);
        let over = UserSketch::from_hashes(users(0..EXACT_MAX as u64 + 1));
        assert!(matches!(over, UserSketch::Dense(_)));
        assert_eq!(over.check(), Ok(()));
    }

    #[test]
    fn merging_is_a_union_in_any_order() {
        // Two edges: users 0..300 on one, 200..450 on the other (200..300 on both).
        let a = UserSketch::from_hashes(users(0..300));
        let b = UserSketch::from_hashes(users(200..450));
        let mut ab = a.clone();
        ab.merge(&b);
        let mut ba = b.clone();
        ba.merge(&a);
        assert_eq!(ab, ba);
        assert_eq!(ab.estimate(), 450);
        // A union past the exact bound turns dense, and equals the sketch of all the users.
        let c = UserSketch::from_hashes(users(400..1_000));
        let mut abc = ab.clone();
        abc.merge(&c);
        let mut cab = c.clone();
        cab.merge(&ab);
        assert_eq!(abc, cab);
        assert_eq!(abc, UserSketch::from_hashes(users(0..1_000)));
        // Dense with dense: the same.
        let d = UserSketch::from_hashes(users(0..5_000));
        let e = UserSketch::from_hashes(users(2_500..10_000));
        let mut de = d.clone();
        de.merge(&e);
        assert_eq!(de, UserSketch::from_hashes(users(0..10_000)));
    }

    #[test]
    fn building_order_and_duplicates_do_not_matter() {
        let forward = UserSketch::from_hashes(users(0..3_000));
        let backward =
            UserSketch::from_hashes(users(0..3_000).collect::<Vec<_>>().into_iter().rev());
        let twice = UserSketch::from_hashes(users(0..3_000).chain(users(0..3_000)));
        assert_eq!(forward, backward);
        assert_eq!(forward, twice);
    }

    /// The error the docs state: within a few standard errors (1.6 %) everywhere, and about one
    /// standard error on average, from just past the exact bound up to a million users.
    #[test]
    fn dense_estimates_stay_within_the_stated_error() {
        let mut worst: f64 = 0.0;
        let mut squares = 0.0;
        let mut n_checked = 0;
        for (round, n) in [
            600u64, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 1_000_000,
        ]
        .into_iter()
        .enumerate()
        {
            for salt in 0..4u64 {
                let base = (round as u64 * 10 + salt) << 32;
                let sketch =
                    UserSketch::from_hashes((base..base + n).map(|i| user_hash(&i.to_string())));
                let error = (sketch.estimate() as f64 - n as f64) / n as f64;
                worst = worst.max(error.abs());
                squares += error * error;
                n_checked += 1;
            }
        }
        let rms = (squares / f64::from(n_checked)).sqrt();
        assert!(worst < 0.05, "worst relative error {worst}");
        assert!(rms < 0.025, "rms relative error {rms}");
    }

    #[test]
    fn check_rejects_what_the_codec_must_refuse() {
        assert!(UserSketch::Exact(vec![2, 1]).check().is_err());
        assert!(UserSketch::Exact(vec![1, 1]).check().is_err());
        assert!(UserSketch::Exact((0..513).collect()).check().is_err());
        let mut registers = empty_registers();
        registers[7] = MAX_RANK + 1;
        assert!(UserSketch::Dense(registers).check().is_err());
    }
}
