//! roomcast edge engine: holds viewers' WebSocket and raw TCP connections on one pinned worker per
//! core and fans out each room's merged batch, encoded once, to every member.
//!
//! The crate exports the edge ([`Edge`]) and its configuration ([`EdgeConfig`]), nothing more.
//! Inside: `session`, `outqueue`, `members` and `window` are pure per-connection and per-channel
//! logic; `worker` and `hub` are the two kinds of thread; `metrics` turns the hub's snapshot into
//! the `/metrics` page and `admin` serves it on `roomcast-ops`' admin server; `sys` is the OS seam
//! (the I/O drivers, sockets and descriptors, and the only `unsafe` in the crate). The wire codecs
//! live in `roomcast-proto`; layered configuration, logging, `/proc` readers, Prometheus
//! exposition and the admin server in `roomcast-ops`.

mod admin;
mod config;
mod edge;
mod fanout;
mod hub;
mod members;
mod metrics;
mod outqueue;
mod session;
mod stats;
mod sys;
mod window;
mod worker;

pub use config::{ConfigError, EdgeConfig};
pub use edge::{Edge, StartError};
pub use sys::DriverKind;
