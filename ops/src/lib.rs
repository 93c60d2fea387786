//! Operational pieces the edge and the control plane share: layered configuration
//! ([`config`]), logging ([`logging`]) and the open-file limit ([`limits`]).

pub mod config;
pub mod limits;
pub mod logging;

pub use logging::init_logging;
