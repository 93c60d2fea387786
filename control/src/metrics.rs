//! The control plane's `/metrics` (Prometheus text format, on the API port): edges, publishes and
//! requests by endpoint and status, fan-out, level changes, online-count pushes, dispatch
//! answers, and the history (stored messages and bytes, evictions by reason, channels, dedupe,
//! recoveries by result).
//!
//! Counters are per request, not per recipient: a mutex-guarded map for the (bounded) endpoint ×
//! status pairs and atomics for the rest. A scrape turns them and the router's edge table into
//! metric families ([`ControlCollector`]) rendered by `roomcast_ops::metrics`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Instant;

use roomcast_ops::metrics::{Collector, Desc, Families, MetricFamily};

use crate::history::Evicted;
use crate::router::{Router, LEVEL_CHANGES, RECOVER_RESULTS};
use crate::upstream::Upstream;

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

    /// The `/metrics` page.
    pub fn render(&self, router: &Router, upstream: Option<&Upstream>) -> String {
        let mut collector = ControlCollector::new(self, router);
        collector.upstream = upstream;
        roomcast_ops::metrics::render(&collector)
    }
}

/// The control plane's collector for one scrape: the counters here and the router's edges, read
/// when collected.
pub struct ControlCollector<'a> {
    metrics: &'a ControlMetrics,
    router: &'a Router,
    /// The upstream (sends, receipts) families, when there is one.
    pub upstream: Option<&'a Upstream>,
    descs: OnceLock<Vec<Desc>>,
}

impl<'a> ControlCollector<'a> {
    pub fn new(metrics: &'a ControlMetrics, router: &'a Router) -> ControlCollector<'a> {
        ControlCollector {
            metrics,
            router,
            upstream: None,
            descs: OnceLock::new(),
        }
    }

    /// The families in page order; every family is written even without samples, so that they
    /// describe the collector too.
    fn families(&self) -> Families {
        let mut f = Families::new();
        let edges = self.router.edges(Instant::now());
        let healthy = edges.iter().filter(|e| e.healthy).count();
        let dispatchable = edges.iter().filter(|e| e.dispatchable).count();
        let states = f.gauge(
            "roomcast_control_edges",
            "Registered edges by state (registered, healthy: reporting; dispatchable: healthy, not full, under the watermark).",
            &["state"],
        );
        for (state, n) in [
            ("registered", edges.len()),
            ("healthy", healthy),
            ("dispatchable", dispatchable),
        ] {
            states.sample(&[state], n as f64);
        }
        f.gauge(
            "roomcast_control_edges_up",
            "Edges registered and reporting.",
            &[],
        )
        .sample(&[], healthy as f64);
        f.gauge(
            "roomcast_control_edge_connections",
            "Client connections summed over all edges' last load reports.",
            &[],
        )
        .sample(&[], edges.iter().map(|e| f64::from(e.connections)).sum());
        f.gauge(
            "roomcast_control_edge_capacity_ratio_max",
            "The highest capacity ratio any edge reported.",
            &[],
        )
        .sample(
            &[],
            edges.iter().map(|e| e.capacity_ratio).fold(0.0, f64::max),
        );
        f.counter(
            "roomcast_control_edge_link_drops_total",
            "Publishes not sent to an edge because its link backlog was over the limit (summed over current edges).",
            &[],
        )
        .sample(&[], edges.iter().map(|e| e.link_drops as f64).sum());

        let requests = self
            .metrics
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let by_route = f.counter(
            "roomcast_control_http_requests_total",
            "API requests by route and status.",
            &["endpoint", "status"],
        );
        for ((endpoint, status), n) in &requests {
            by_route.sample(&[endpoint, &status.to_string()], *n as f64);
        }
        let publishes = f.counter(
            "roomcast_control_publishes_total",
            "Publish requests by endpoint and status.",
            &["endpoint", "status"],
        );
        for endpoint in PUBLISH_ENDPOINTS {
            let mut any = false;
            for ((e, status), n) in requests.iter().filter(|((e, _), _)| *e == endpoint) {
                any = true;
                publishes.sample(&[e, &status.to_string()], *n as f64);
            }
            if !any {
                publishes.sample(&[endpoint, "200"], 0.0);
            }
        }
        f.counter(
            "roomcast_control_published_messages_total",
            "Messages accepted for publishing (a batch counts each entry).",
            &[],
        )
        .sample(
            &[],
            self.metrics.publish_messages.load(Ordering::Relaxed) as f64,
        );
        f.counter(
            "roomcast_control_fanout_messages_total",
            "Publish frames queued to edge links (one per message per edge it went to).",
            &[],
        )
        .sample(&[], self.router.fanout_messages() as f64);
        f.counter(
            "roomcast_control_level_changes_total",
            "Room rate-level changes.",
            &[],
        )
        .sample(&[], LEVEL_CHANGES.load(Ordering::Relaxed) as f64);
        let (online_pushes, online_frames) = self.router.online_pushes();
        f.counter(
            "roomcast_control_online_pushes_total",
            "Rooms' online counts queued to edge links (one per room per edge holding it), pushed at the room's level interval when the count changed.",
            &[],
        )
        .sample(&[], online_pushes as f64);
        f.counter(
            "roomcast_control_online_frames_total",
            "Room online link frames queued (one per edge per push round, carrying every room due for it).",
            &[],
        )
        .sample(&[], online_frames as f64);
        let (merge, merge_keys, merge_bytes) = self.router.merge_stats();
        f.counter(
            "roomcast_control_merge_merged_total",
            "Published messages with a merge rule that waited and were merged into another (not published on their own).",
            &[],
        )
        .sample(&[], merge.merged as f64);
        f.counter(
            "roomcast_control_merge_bypassed_total",
            "Messages with a merge rule published at once, unmerged, because --merge-max-bytes of data was waiting.",
            &[],
        )
        .sample(&[], merge.bypassed as f64);
        f.gauge(
            "roomcast_control_merge_windows",
            "Merge keys with an open window.",
            &[],
        )
        .sample(&[], merge_keys as f64);
        f.gauge(
            "roomcast_control_merge_waiting_bytes",
            "Bytes of message data waiting in merge windows (bounded by --merge-max-bytes).",
            &[],
        )
        .sample(&[], merge_bytes as f64);
        let history = self.router.history_stats();
        f.gauge(
            "roomcast_control_history_messages",
            "Messages kept in the channels' history.",
            &[],
        )
        .sample(&[], history.messages as f64);
        f.gauge(
            "roomcast_control_history_bytes",
            "Bytes of history, as bounded by --history-max-bytes (kind + data + per-message bookkeeping).",
            &[],
        )
        .sample(&[], history.bytes as f64);
        f.gauge(
            "roomcast_control_history_channels",
            "Channels whose epoch and numbering the history tracks.",
            &[],
        )
        .sample(&[], history.channels as f64);
        let evictions = f.counter(
            "roomcast_control_history_evictions_total",
            "Messages dropped from the history, by reason: count, age, bytes (the channel's caps) or global (--history-max-bytes).",
            &["reason"],
        );
        for reason in Evicted::ALL {
            evictions.sample(
                &[reason.as_str()],
                history.evictions[reason as usize] as f64,
            );
        }
        f.gauge(
            "roomcast_control_dedupe_ids",
            "Publish ids remembered for dedupe.",
            &[],
        )
        .sample(&[], history.dedupe_ids as f64);
        f.counter(
            "roomcast_control_dedupe_hits_total",
            "Publishes not published again because their id was seen on the channel within --dedupe-window-s.",
            &[],
        )
        .sample(&[], history.dedupe_hits as f64);
        let recoveries = f.counter(
            "roomcast_control_recoveries_total",
            "Recoveries asked for, by result: recovered, or why not (epoch_changed, too_old, too_many, not_stored).",
            &["result"],
        );
        for (result, n) in RECOVER_RESULTS.iter().zip(self.router.recoveries()) {
            recoveries.sample(&[result], n as f64);
        }
        let answers = f.counter(
            "roomcast_control_dispatch_answers_total",
            "GET /v1/dispatch answers by transport and result (ok, unavailable).",
            &["transport", "result"],
        );
        let dispatch = self
            .metrics
            .dispatch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for transport in ["ws", "tcp"] {
            for result in ["ok", "unavailable"] {
                let n = dispatch.get(&(transport, result)).copied().unwrap_or(0);
                answers.sample(&[transport, result], n as f64);
            }
        }
        if let Some(upstream) = self.upstream {
            upstream.families(&mut f);
        }
        f
    }
}

impl Collector for ControlCollector<'_> {
    fn desc(&self) -> Vec<&Desc> {
        self.descs
            .get_or_init(|| self.families().descs())
            .iter()
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.families().into_families()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Levels;
    use crate::router::TargetRef;
    use std::time::Duration;

    #[test]
    fn every_control_family_is_described_and_rendered() {
        let router = Router::new(Levels::default(), Duration::from_secs(3), 64 << 20);
        let metrics = ControlMetrics::default();
        metrics.request("/v1/rooms/{room}/messages", 200);
        metrics.request("/v1/rooms/{room}", 404);
        metrics.dispatch("ws", "ok");
        metrics.published(3);
        let gift = crate::router::PublishReq {
            target: TargetRef::Room("r1"),
            priority: 1,
            kind: "gift",
            data: bytes::Bytes::from_static(b"{}"),
            from: None,
            ack: false,
        };
        let twice = [gift.clone(), gift];
        router.publish_ids(&twice, &[Some("g1"), Some("g1")]);
        let epoch = router.position(TargetRef::Room("r1")).epoch;
        router.recover(TargetRef::Room("r1"), epoch.as_str(), 0, 300, 1 << 20);
        router.recover(TargetRef::Room("r1"), "elsewhere", 0, 300, 1 << 20);
        let collector = ControlCollector::new(&metrics, &router);
        roomcast_ops::metrics::check_described(&collector).unwrap();
        assert_eq!(collector.desc().len(), collector.collect().len());
        let text = metrics.render(&router, None);
        for line in [
            "# TYPE roomcast_control_edges gauge\n",
            "roomcast_control_edges{state=\"registered\"} 0\n",
            "roomcast_control_http_requests_total{endpoint=\"/v1/rooms/{room}\",status=\"404\"} 1\n",
            "roomcast_control_publishes_total{endpoint=\"/v1/rooms/{room}/messages\",status=\"200\"} 1\n",
            "roomcast_control_publishes_total{endpoint=\"/v1/broadcast\",status=\"200\"} 0\n",
            "roomcast_control_published_messages_total 3\n",
            "roomcast_control_dispatch_answers_total{transport=\"tcp\",result=\"unavailable\"} 0\n",
            "roomcast_control_history_messages 1\n",
            "roomcast_control_history_channels 1\n",
            "roomcast_control_history_evictions_total{reason=\"global\"} 0\n",
            "roomcast_control_dedupe_hits_total 1\n",
            "roomcast_control_dedupe_ids 1\n",
            "roomcast_control_recoveries_total{result=\"recovered\"} 1\n",
            "roomcast_control_recoveries_total{result=\"epoch_changed\"} 1\n",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
    }
}
