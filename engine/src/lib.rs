//! roomcast edge engine: holds viewers' WebSocket and raw TCP connections on one pinned worker per
//! core and fans out each room's merged batch, encoded once, to every member.
//!
//! The crate exports the edge ([`Edge`]) and its configuration ([`EdgeConfig`]), nothing more.
//! Inside: `session`, `outqueue`, `progress`, `members` and `window` are pure per-connection and
//! per-channel logic; `worker` and `hub` are the two kinds of thread, each a thin loop around a state machine
//! with no I/O and no clock (`worker::core::WorkerCore`, `hub::HubCore`); `metrics` turns the
//! hub's snapshot into the `/metrics` page and `admin` serves it on `roomcast-ops`' admin server;
//! `sys` is the OS seam (the I/O drivers, sockets and descriptors, and the only `unsafe` in the
//! crate). The wire codecs live in `roomcast-proto`; layered configuration, logging, `/proc`
//! readers, Prometheus exposition and the admin server in `roomcast-ops`.
//!
//! The client-facing I/O goes through `sys` only: the workers' sockets are owned by their
//! driver, and a worker makes no syscall of its own beyond reading the clock (and a 10 ms sleep
//! after a failed poll). The exceptions, all off the hot path: the hub's link socket to the
//! control plane and its wake-up (`mio`, in `hub`); the admin HTTP listener (`admin`, on
//! `roomcast-ops`); `/proc` reads for metrics and the host name (`metrics`, `config`, through
//! `roomcast-ops`); and, at start-up, thread pinning and the open-file limit (`edge`, through
//! `core_affinity` and `roomcast-ops`).

mod admin;
mod config;
mod edge;
mod fanout;
mod hub;
mod members;
mod metrics;
mod outqueue;
mod progress;
mod sendlimit;
mod session;
mod stats;
mod sys;
mod window;
mod worker;

pub use config::{ConfigError, EdgeConfig};
pub use edge::{Edge, StartError};
pub use sys::DriverKind;
