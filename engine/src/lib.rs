//! roomcast edge engine: holds viewers' WebSocket and raw TCP connections on one pinned worker per
//! core and fans out each room's merged batch, encoded once, to every member.
//!
//! Layout: `proto` holds the pure wire codecs (shared with the control plane and the load
//! generator); `session`, `outqueue`, `members` and `window` are pure per-connection and
//! per-channel logic; `worker` and `hub` are the two kinds of thread; `sys` is the only place that
//! talks to the OS (and the only place with `unsafe`).

pub mod admin;
pub mod auth;
pub mod config;
pub mod edge;
pub mod fanout;
pub mod hub;
pub mod members;
pub mod metrics;
pub mod outqueue;
pub mod proto;
pub mod session;
pub mod stats;
pub mod sys;
pub mod window;
pub mod worker;

pub use config::EdgeConfig;
pub use edge::Edge;

/// Logs to stderr (`RUST_LOG` filters, default `info`), in colour only on a terminal. Shared by
/// every roomcast binary so their logs look and filter alike.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
}
