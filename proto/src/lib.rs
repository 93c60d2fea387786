//! roomcast's wire codecs, shared by the edge, the control plane, the load generator, the tests and
//! the fuzz targets.
//!
//! Everything here is pure: bytes in, frames out, no sockets and no clocks, so each codec can be
//! unit-tested and fuzzed on its own. PROTOCOL.md at the repository root is the specification.

pub mod auth;
pub mod client;
pub mod handshake;
pub mod ids;
pub mod link;
pub mod message;
pub mod sketch;
pub mod wire;
pub mod ws;
