//! The control plane's `/metrics` (Prometheus text format, on the API port): edges, publishes and
//! requests by endpoint and status, fan-out, level changes and dispatch answers.
//!
//! Counters are per request, not per recipient: a mutex-guarded map for the (bounded) endpoint ×
//! status pairs and atomics for the rest.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use roomcast_engine::metrics::TextWriter;

use crate::router::{Router, LEVEL_CHANGES};

/// The routes that publish (their requests are also counted as publishes).
const PUBLISH_ENDPOINTS: [&str; 4] = [
    "/v1/rooms/{room}/messages",
    "/v1/users/{user}/messages",
    "/v1/broadcast",
    "/v1/messages",
];

#[derive(Default)]
pub struct ControlMetrics {
    /// (endpoint template, status) → requests.
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    /// (transport, result) → dispatch answers.
    dispatch: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    publish_messages: AtomicU64,
}

impl ControlMetrics {
    /// Counts one answered request; `endpoint` is the matched route template (bounded).
    pub fn request(&self, endpoint: &'static str, status: u16) {
        *self
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((endpoint, status))
            .or_default() += 1;
    }

    /// Counts one dispatch answer (`ok` or `unavailable`).
    pub fn dispatch(&self, transport: &'static str, result: &'static str) {
        *self
            .dispatch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((transport, result))
            .or_default() += 1;
    }

    /// Counts messages accepted for publishing (one per message in a batch).
    pub fn published(&self, messages: u64) {
        self.publish_messages.fetch_add(messages, Ordering::Relaxed);
    }

    pub fn render(&self, router: &Router) -> String {
        let mut w = TextWriter::new();
        let edges = router.edges(Instant::now());
        w.family(
            "roomcast_control_edges",
            "gauge",
            "Registered edges by state (registered, healthy: reporting; dispatchable: healthy, not full, under the watermark).",
        );
        let healthy = edges.iter().filter(|e| e.healthy).count();
        let dispatchable = edges.iter().filter(|e| e.dispatchable).count();
        for (state, n) in [
            ("registered", edges.len()),
            ("healthy", healthy),
            ("dispatchable", dispatchable),
        ] {
            w.sample("roomcast_control_edges", &[("state", state)], n as f64);
        }
        w.single(
            "roomcast_control_edges_up",
            "gauge",
            "Edges registered and reporting.",
            healthy as f64,
        );
        w.single(
            "roomcast_control_edge_connections",
            "gauge",
            "Client connections summed over all edges' last load reports.",
            edges.iter().map(|e| f64::from(e.connections)).sum(),
        );
        w.single(
            "roomcast_control_edge_capacity_ratio_max",
            "gauge",
            "The highest capacity ratio any edge reported.",
            edges.iter().map(|e| e.capacity_ratio).fold(0.0, f64::max),
        );
        w.single(
            "roomcast_control_edge_link_drops_total",
            "counter",
            "Publishes not sent to an edge because its link backlog was over the limit (summed over current edges).",
            edges.iter().map(|e| e.link_drops as f64).sum(),
        );

        let requests = self
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        w.family(
            "roomcast_control_http_requests_total",
            "counter",
            "API requests by route and status.",
        );
        for ((endpoint, status), n) in &requests {
            w.sample(
                "roomcast_control_http_requests_total",
                &[("endpoint", endpoint), ("status", &status.to_string())],
                *n as f64,
            );
        }
        w.family(
            "roomcast_control_publishes_total",
            "counter",
            "Publish requests by endpoint and status.",
        );
        for endpoint in PUBLISH_ENDPOINTS {
            let mut any = false;
            for ((e, status), n) in requests.iter().filter(|((e, _), _)| *e == endpoint) {
                any = true;
                w.sample(
                    "roomcast_control_publishes_total",
                    &[("endpoint", e), ("status", &status.to_string())],
                    *n as f64,
                );
            }
            if !any {
                w.sample(
                    "roomcast_control_publishes_total",
                    &[("endpoint", endpoint), ("status", "200")],
                    0.0,
                );
            }
        }
        w.single(
            "roomcast_control_published_messages_total",
            "counter",
            "Messages accepted for publishing (a batch counts each entry).",
            self.publish_messages.load(Ordering::Relaxed) as f64,
        );
        w.single(
            "roomcast_control_fanout_messages_total",
            "counter",
            "Publish frames queued to edge links (one per message per edge it went to).",
            router.fanout_messages() as f64,
        );
        w.single(
            "roomcast_control_level_changes_total",
            "counter",
            "Room rate-level changes.",
            LEVEL_CHANGES.load(Ordering::Relaxed) as f64,
        );
        w.family(
            "roomcast_control_dispatch_answers_total",
            "counter",
            "GET /v1/dispatch answers by transport and result (ok, unavailable).",
        );
        let dispatch = self
            .dispatch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for transport in ["ws", "tcp"] {
            for result in ["ok", "unavailable"] {
                let n = dispatch.get(&(transport, result)).copied().unwrap_or(0);
                w.sample(
                    "roomcast_control_dispatch_answers_total",
                    &[("transport", transport), ("result", result)],
                    n as f64,
                );
            }
        }
        w.finish()
    }
}
