//! Operational pieces the edge and the control plane share: layered configuration
//! ([`config`]), logging ([`logging`]), the open-file limit ([`limits`]), facts about the process
//! from `/proc` ([`process`]), Prometheus exposition ([`metrics`]) and the admin HTTP server
//! ([`admin`]: `/metrics`, `/healthz`, `/readyz`).

pub mod admin;
pub mod config;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod process;

pub use logging::init_logging;
