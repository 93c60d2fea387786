//! The edge's admin endpoint (`--admin-listen`): `GET /metrics` (Prometheus text format),
//! `GET /healthz` (the process serves) and `GET /readyz` (workers run and the control link is up).
//!
//! The server is the shared one ([`roomcast_ops::admin`]: hyper on its own thread, bounded request
//! heads, a head-read timeout, every connection its own task); this module only wires it to the
//! hub's snapshot ([`Shared`], through [`EdgeCollector`]). It never touches a worker.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use roomcast_ops::admin::{AdminServer, Endpoints};

use crate::metrics::{EdgeCollector, Shared};

/// Binds `addr` and serves the edge's admin endpoint until the server is stopped or dropped.
pub fn start(addr: SocketAddr, shared: Arc<Shared>) -> std::io::Result<AdminServer> {
    let pages = EdgePages {
        collector: EdgeCollector::new(Arc::clone(&shared)),
        shared,
    };
    AdminServer::start(addr, "roomcast-admin", Arc::new(pages))
}

struct EdgePages {
    shared: Arc<Shared>,
    collector: EdgeCollector,
}

impl Endpoints for EdgePages {
    fn metrics(&self) -> String {
        roomcast_ops::metrics::render(&self.collector)
    }

    fn ready(&self) -> Result<(), String> {
        if self.shared.ready() {
            Ok(())
        } else if !self.shared.workers_running.load(Ordering::Acquire) {
            Err("workers not running".into())
        } else {
            Err("control link down".into())
        }
    }
}
