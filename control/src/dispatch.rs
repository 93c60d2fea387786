//! The dispatcher: which edge addresses a client should dial. Up to four healthy edges, in a
//! random order weighted by spare capacity (capacity − connections), so emptier edges are offered
//! first more often and equally loaded edges equally often.

use rand::Rng;

use crate::router::Candidate;

/// Most addresses one answer lists (the client tries them in order).
pub const MAX_ADDRESSES: usize = 4;

/// Which listener the client will dial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Ws,
    Tcp,
}

impl Transport {
    pub fn parse(s: &str) -> Option<Transport> {
        match s {
            "ws" => Some(Transport::Ws),
            "tcp" => Some(Transport::Tcp),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Tcp => "tcp",
        }
    }
}

/// Picks up to [`MAX_ADDRESSES`] candidates by weighted random sampling without replacement
/// (Efraimidis–Spirakis: each gets the key `u^(1/w)` with `u` uniform in (0, 1), and the largest
/// keys win), and returns their addresses for `transport` in that order.
pub fn choose(candidates: &[Candidate], transport: Transport, rng: &mut impl Rng) -> Vec<String> {
    let mut keyed: Vec<(f64, &Candidate)> = candidates
        .iter()
        .filter(|c| c.spare > 0)
        .map(|c| {
            let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
            // ln(u) / w orders like u^(1/w) without underflowing for large weights.
            (u.ln() / f64::from(c.spare), c)
        })
        .collect();
    keyed.sort_by(|a, b| b.0.total_cmp(&a.0));
    keyed
        .into_iter()
        .take(MAX_ADDRESSES)
        .map(|(_, c)| match transport {
            Transport::Ws => c.ws_url.clone(),
            Transport::Tcp => c.tcp_addr.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn candidate(n: u32, spare: u32) -> Candidate {
        Candidate {
            ws_url: format!("ws://10.0.0.{n}:8080/ws"),
            tcp_addr: format!("10.0.0.{n}:8081"),
            spare,
        }
    }

    #[test]
    fn lists_at_most_four_distinct_edges_for_the_transport() {
        let candidates: Vec<Candidate> = (1..=6).map(|n| candidate(n, 100)).collect();
        let mut rng = StdRng::seed_from_u64(7);
        let ws = choose(&candidates, Transport::Ws, &mut rng);
        assert_eq!(ws.len(), 4);
        let mut unique = ws.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 4);
        assert!(ws
            .iter()
            .all(|a| a.starts_with("ws://") && a.ends_with("/ws")));
        let tcp = choose(&candidates[..2], Transport::Tcp, &mut rng);
        assert_eq!(tcp.len(), 2);
        assert!(tcp.iter().all(|a| a.ends_with(":8081")));
    }

    #[test]
    fn full_edges_are_never_offered() {
        let candidates = vec![candidate(1, 0), candidate(2, 5)];
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..100 {
            assert_eq!(
                choose(&candidates, Transport::Tcp, &mut rng),
                vec!["10.0.0.2:8081".to_string()]
            );
        }
        assert!(choose(&[candidate(1, 0)], Transport::Ws, &mut rng).is_empty());
    }

    #[test]
    fn first_choice_follows_spare_capacity_and_equals_share_evenly() {
        let mut rng = StdRng::seed_from_u64(42);
        let trials = 20_000;
        // Spare 900 vs 100: the emptier edge comes first about 90 % of the time.
        let weighted = vec![candidate(1, 900), candidate(2, 100)];
        let first_is_emptier = (0..trials)
            .filter(|_| choose(&weighted, Transport::Tcp, &mut rng)[0] == "10.0.0.1:8081")
            .count();
        let share = first_is_emptier as f64 / trials as f64;
        assert!((0.87..0.93).contains(&share), "share {share}");
        // Equal spare: each of three edges comes first about a third of the time.
        let equal: Vec<Candidate> = (1..=3).map(|n| candidate(n, 50)).collect();
        let mut firsts = [0usize; 3];
        for _ in 0..trials {
            let first = choose(&equal, Transport::Tcp, &mut rng).remove(0);
            let n: usize = first[7..8].parse().unwrap();
            firsts[n - 1] += 1;
        }
        for count in firsts {
            let share = count as f64 / trials as f64;
            assert!((0.30..0.37).contains(&share), "share {share}");
        }
    }
}
