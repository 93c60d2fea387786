//! Command-line flags (each also read from `ROOMCAST_BACKEND_<NAME>`) and the moderation
//! settings derived from them.

use std::collections::HashSet;
use std::net::SocketAddr;

use clap::Parser;

/// Sample live-platform backend for roomcast's publish proxy: filters words, mutes and bans
/// users, enriches chat, accepts likes, and records receipts.
#[derive(Debug, Clone, Parser)]
#[command(name = "roomcast-example-backend", version)]
pub struct Args {
    /// Address to listen on.
    #[arg(
        long,
        env = "ROOMCAST_BACKEND_LISTEN",
        default_value = "127.0.0.1:9300"
    )]
    pub listen: SocketAddr,

    /// Words masked with asterisks in chat text (comma-separated, case-insensitive; `""` for none).
    #[arg(
        long,
        env = "ROOMCAST_BACKEND_BANNED_WORDS",
        value_delimiter = ',',
        default_value = "spam,scam"
    )]
    pub banned_words: Vec<String>,

    /// Users muted from the start (comma-separated); their sends are rejected with `muted`.
    #[arg(long, env = "ROOMCAST_BACKEND_MUTED", value_delimiter = ',')]
    pub muted: Vec<String>,

    /// Banned users (comma-separated); a send disconnects them with close code 4403.
    #[arg(long, env = "ROOMCAST_BACKEND_BANNED_USERS", value_delimiter = ',')]
    pub banned_users: Vec<String>,

    /// Users whose chat carries the badge `vip` (comma-separated).
    #[arg(long, env = "ROOMCAST_BACKEND_VIP", value_delimiter = ',')]
    pub vip: Vec<String>,

    /// Kinds answered `accept` (taken by the platform, not broadcast; comma-separated).
    #[arg(
        long,
        env = "ROOMCAST_BACKEND_ACCEPT_KINDS",
        value_delimiter = ',',
        default_value = "like"
    )]
    pub accept_kinds: Vec<String>,

    /// Receipts kept for `GET /receipts`; older ones are dropped (the total still counts them).
    #[arg(long, env = "ROOMCAST_BACKEND_MAX_RECEIPTS", default_value_t = 100_000)]
    pub max_receipts: usize,
}

/// What the rules need, fixed for the process's life (the runtime mute list lives in the state).
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Each banned word as its characters (matched case-insensitively, char by char).
    pub banned_words: Vec<Vec<char>>,
    pub banned_users: HashSet<String>,
    pub vip: HashSet<String>,
    pub accept_kinds: HashSet<String>,
    pub max_receipts: usize,
}

impl Config {
    pub fn from_args(args: &Args) -> Config {
        Config {
            banned_words: items(&args.banned_words)
                .map(|w| w.chars().collect())
                .collect(),
            banned_users: items(&args.banned_users).map(str::to_owned).collect(),
            vip: items(&args.vip).map(str::to_owned).collect(),
            accept_kinds: items(&args.accept_kinds).map(str::to_owned).collect(),
            max_receipts: args.max_receipts,
        }
    }
}

/// The non-empty, trimmed items of a comma-separated list (`"a, b,"` is `a`, `b`).
pub fn items(list: &[String]) -> impl Iterator<Item = &str> {
    list.iter().map(|s| s.trim()).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let args = Args::try_parse_from(["roomcast-example-backend"]).unwrap();
        assert_eq!(args.listen, "127.0.0.1:9300".parse().unwrap());
        let config = Config::from_args(&args);
        let words: Vec<String> = config
            .banned_words
            .iter()
            .map(|w| w.iter().collect())
            .collect();
        assert_eq!(words, ["spam", "scam"]);
        assert_eq!(config.accept_kinds, HashSet::from(["like".to_owned()]));
        assert!(config.banned_users.is_empty() && config.vip.is_empty());
        assert_eq!(config.max_receipts, 100_000);
    }

    #[test]
    fn lists_are_trimmed_and_empty_items_dropped() {
        let args = Args::try_parse_from([
            "x",
            "--banned-words",
            " Foo, ,bar,",
            "--banned-users",
            "u1,u2",
            "--accept-kinds",
            "",
        ])
        .unwrap();
        let config = Config::from_args(&args);
        let words: Vec<String> = config
            .banned_words
            .iter()
            .map(|w| w.iter().collect())
            .collect();
        assert_eq!(words, ["Foo", "bar"]);
        assert_eq!(config.banned_users.len(), 2);
        assert!(config.accept_kinds.is_empty());
    }
}
