//! roomcast control plane: the HTTP API a live platform's backend publishes through, the
//! dispatcher that hands clients edge addresses, the router that sends each message only to the
//! edges holding its audience, and per-room rate levels with backoff.
//!
//! Layout: `config` (options), `levels` (the pure room-level state machine), `router` (shared
//! routing state, sequence numbers, encode-once publishing, recovery), `history` (the channels'
//! recent messages, epochs and publish ids behind a store interface), `linkserver` (the edge link's
//! tasks), `userquery` (user lookups across edges), `publish` (request body parsing and
//! validation), `dispatch` (address choice), `api` (axum routes) and `server` (wiring, including
//! the embedded edge).

pub mod api;
pub mod config;
pub mod demo;
pub mod dispatch;
pub mod history;
pub mod levels;
pub mod linkserver;
pub mod merge;
pub mod metrics;
pub mod proxy;
pub mod proxyqueue;
pub mod publish;
pub mod receipts;
pub mod router;
pub mod server;
pub mod upstream;
pub mod userquery;

pub use config::ControlConfig;
