//! Viewers' sends (PROTOCOL.md §5 "Upstream"): what the control plane does with a `send` frame
//! from an edge, by `--send-mode`, and the answer it sends back.
//!
//! - `direct`: published into the room at priority 3, with the sender's id as `from`;
//! - `proxy`: the platform's backend decides first ([`crate::proxy`]): publish (as sent or
//!   replaced), accept, reject or disconnect. At most `--send-proxy-concurrency` requests run at
//!   once and `--send-proxy-queue` more wait; a send that finds the queue full, or gets no
//!   answer within `--send-proxy-timeout-ms`, is answered `unavailable`;
//! - `off`: refused `forbidden`.
//!
//! Either way a send to be broadcast passes the room's upstream budget first ([`SendWindow`],
//! per level and tick): past it the send is answered `"broadcast":false` instead of published.
//! Receipts (`acks` frames) go to [`Receipts`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Uri;
use roomcast_ops::metrics::Families;
use roomcast_proto::client::WireFormat;
use roomcast_proto::link::{self, LinkFrame, SendOutcome, SendRefusal, SendRequest, SendResult};
use serde_json::value::RawValue;
use tokio::sync::{Notify, Semaphore};

use crate::config::{ControlConfig, SendMode};
use crate::proxy::{ConnDescription, Decision, JsonPoster, SendQuestion};
use crate::proxyqueue::{ProxyQueue, Waiting};
use crate::receipts::Receipts;
use crate::router::{LinkHandle, PublishReq, Router, TargetRef};

/// The priority of a send published as it came (`direct`, or a `publish` answer that keeps it).
pub const SEND_PRIORITY: u8 = 3;

/// Sends broadcast into one room within the last tick: the room's upstream budget. Pure.
///
/// A sliding window (the admission times of the sends still inside it, at most the budget): no
/// interval of one tick holds more than the budget. Consecutive fixed windows would let twice
/// the budget through across a boundary, more than an edge's merge window allows priority 3
/// beside the room's own traffic, and the edge would drop published sends (bench/README.md
/// "Upstream").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendWindow {
    admitted: VecDeque<Instant>,
}

impl SendWindow {
    /// Whether one more send may be broadcast at `now` under `budget` per `tick` (counting it
    /// if so).
    pub fn admit(&mut self, budget: u32, tick: Duration, now: Instant) -> bool {
        if budget == link::UNLIMITED {
            return true;
        }
        let tick = tick.max(Duration::from_millis(1));
        while self
            .admitted
            .front()
            .is_some_and(|&at| now.saturating_duration_since(at) >= tick)
        {
            self.admitted.pop_front();
        }
        // A budget lowered by a level change holds once the sends above it age out.
        if self.admitted.len() < budget as usize {
            self.admitted.push_back(now);
            true
        } else {
            false
        }
    }
}

/// The platform's backend for `proxy` mode.
struct Proxy {
    uri: Uri,
    poster: JsonPoster,
    timeout: Duration,
    /// Most sends per request (`--send-proxy-batch`); 1 asks about each send on its own.
    batch: usize,
    /// Sends waiting for a request slot.
    queue: Mutex<ProxyQueue<Pending>>,
    /// Rings when a send is queued (the dispatcher waits for one).
    queued: Notify,
    /// Requests in flight at once (`--send-proxy-concurrency`).
    slots: Arc<Semaphore>,
    /// Sends waiting or in a request, not yet answered; at most `max_admitted`.
    admitted: AtomicUsize,
    /// `--send-proxy-concurrency` × `--send-proxy-batch` in flight + `--send-proxy-queue`
    /// waiting: a burst never finds the queue full while slots are free.
    max_admitted: usize,
    /// Whether the dispatcher task runs (started with the first send).
    started: AtomicBool,
}

/// A send waiting for the backend, and where its answer goes.
struct Pending {
    send: SendRequest,
    edge_id: Arc<str>,
    link: Arc<LinkHandle>,
}

/// Upstream counters, by outcome (the label of `roomcast_control_sends_total`).
#[derive(Default)]
struct Counters {
    published: AtomicU64,
    over_budget: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    disconnected: AtomicU64,
    forbidden: AtomicU64,
    timeout: AtomicU64,
    overflow: AtomicU64,
    proxy_error: AtomicU64,
    publish_error: AtomicU64,
    /// Requests to the backend (with `--send-proxy-batch` above 1, sends ÷ requests is the
    /// mean batch).
    proxy_requests: AtomicU64,
}

/// Upper bounds of the proxy latency histogram, seconds.
const PROXY_BOUNDS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The proxy's answer times (non-cumulative buckets, the last one above every bound).
#[derive(Default)]
struct Latency {
    buckets: [AtomicU64; PROXY_BOUNDS.len() + 1],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Latency {
    fn record(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let bucket = PROXY_BOUNDS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(PROXY_BOUNDS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }
}

/// What the control plane does with viewers' sends and receipts.
pub struct Upstream {
    mode: SendMode,
    proxy: Option<Proxy>,
    pub receipts: Arc<Receipts>,
    counters: Counters,
    latency: Latency,
}

impl Upstream {
    /// From the (validated) configuration; starts the receipt reporter when a receipt URL is
    /// set (so call it inside the runtime).
    pub fn from_config(config: &ControlConfig) -> Result<Upstream, String> {
        let parse = |url: &str, flag: &str| {
            url.parse::<Uri>()
                .map_err(|e| format!("{flag} {url:?} is not a URL: {e}"))
        };
        let mode = config.send_mode();
        let poster = JsonPoster::new(config.send_proxy_concurrency);
        let max_admitted =
            config.send_proxy_concurrency * config.send_proxy_batch + config.send_proxy_queue;
        let proxy = match mode {
            SendMode::Proxy => Some(Proxy {
                uri: parse(&config.send_proxy_url, "--send-proxy-url")?,
                poster: poster.clone(),
                timeout: Duration::from_millis(config.send_proxy_timeout_ms),
                batch: config.send_proxy_batch,
                queue: Mutex::new(ProxyQueue::new(max_admitted)),
                queued: Notify::new(),
                slots: Arc::new(Semaphore::new(config.send_proxy_concurrency)),
                admitted: AtomicUsize::new(0),
                max_admitted,
                started: AtomicBool::new(false),
            }),
            SendMode::Direct | SendMode::Off => None,
        };
        let receipt_url = if config.receipt_url.is_empty() {
            None
        } else {
            Some(parse(&config.receipt_url, "--receipt-url")?)
        };
        let receipts = Arc::new(Receipts::new(config.receipts_kept, receipt_url));
        receipts.spawn_reporter(poster);
        Ok(Upstream {
            mode,
            proxy,
            receipts,
            counters: Counters::default(),
            latency: Latency::default(),
        })
    }

    pub fn mode(&self) -> SendMode {
        self.mode
    }

    /// Handles one `send` frame from edge `edge_id` and sends the `send result` on `link`:
    /// at once in `direct` and `off` mode, from a task after the backend answers in `proxy`.
    pub fn handle_send(
        self: &Arc<Self>,
        router: &Arc<Router>,
        edge_id: &Arc<str>,
        link: &Arc<LinkHandle>,
        send: SendRequest,
    ) {
        let id = send.id;
        match self.mode {
            SendMode::Off => {
                self.counters.forbidden.fetch_add(1, Ordering::Relaxed);
                answer(
                    link,
                    id,
                    refused(SendRefusal::Forbidden, "sending is turned off here"),
                );
            }
            SendMode::Direct => {
                let outcome = self.publish(router, &send, SEND_PRIORITY, &send.kind, &send.data);
                answer(link, id, outcome);
            }
            SendMode::Proxy => {
                let Some(proxy) = &self.proxy else {
                    return;
                };
                if !proxy.started.swap(true, Ordering::Relaxed) {
                    tokio::spawn(Arc::clone(self).dispatch(Arc::clone(router)));
                }
                if proxy.admitted.fetch_add(1, Ordering::Relaxed) >= proxy.max_admitted {
                    proxy.admitted.fetch_sub(1, Ordering::Relaxed);
                    self.counters.overflow.fetch_add(1, Ordering::Relaxed);
                    let why =
                        "the platform's backend is overloaded (its queue is full); retry later";
                    answer(link, id, refused(SendRefusal::Unavailable, why));
                    return;
                }
                let now = Instant::now();
                let pending = Pending {
                    send,
                    edge_id: Arc::clone(edge_id),
                    link: Arc::clone(link),
                };
                // Never full: the queue holds `max_admitted`.
                if lock(&proxy.queue)
                    .push(pending, now, now + proxy.timeout)
                    .is_ok()
                {
                    proxy.queued.notify_one();
                }
            }
        }
    }

    /// `proxy` mode's dispatcher: whenever a request slot is free, takes what waits (up to
    /// `--send-proxy-batch` sends) into one request; answers `unavailable` every send whose
    /// deadline passes while it waits.
    async fn dispatch(self: Arc<Self>, router: Arc<Router>) {
        let Some(proxy) = &self.proxy else {
            return;
        };
        loop {
            let slot = loop {
                let deadline = lock(&proxy.queue).next_deadline();
                let expiry = async {
                    match deadline {
                        Some(at) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    slot = Arc::clone(&proxy.slots).acquire_owned() => match slot {
                        Ok(slot) => break slot,
                        Err(_) => return,
                    },
                    () = expiry => self.expire(),
                }
            };
            let batch = loop {
                self.expire();
                let batch = lock(&proxy.queue).take_batch(proxy.batch);
                if !batch.is_empty() {
                    break batch;
                }
                proxy.queued.notified().await;
            };
            let upstream = Arc::clone(&self);
            let router = Arc::clone(&router);
            tokio::spawn(async move {
                let n = batch.len();
                upstream.ask_platform(&router, batch).await;
                if let Some(proxy) = &upstream.proxy {
                    proxy.admitted.fetch_sub(n, Ordering::Relaxed);
                }
                drop(slot);
            });
        }
    }

    /// Answers `unavailable` the waiting sends out of time.
    fn expire(&self) {
        let Some(proxy) = &self.proxy else {
            return;
        };
        let now = Instant::now();
        let expired = lock(&proxy.queue).expire(now);
        if expired.is_empty() {
            return;
        }
        proxy.admitted.fetch_sub(expired.len(), Ordering::Relaxed);
        let mut answers = Answers::default();
        for waiting in expired {
            self.latency
                .record(now.saturating_duration_since(waiting.arrived));
            self.counters.timeout.fetch_add(1, Ordering::Relaxed);
            answers.add(&waiting.item, timed_out());
        }
        answers.send();
    }

    /// `proxy` mode: asks the backend about `batch` (one request, within the first send's
    /// deadline) and carries out its decisions.
    async fn ask_platform(&self, router: &Router, batch: Vec<Waiting<Pending>>) {
        let Some(proxy) = &self.proxy else {
            return;
        };
        let mut answers = Answers::default();
        let mut asked = Vec::with_capacity(batch.len());
        let mut bodies = Vec::with_capacity(batch.len());
        for waiting in batch {
            match question(&waiting.item.edge_id, &waiting.item.send) {
                Some(body) => {
                    bodies.push(body);
                    asked.push(waiting);
                }
                None => {
                    self.counters.proxy_error.fetch_add(1, Ordering::Relaxed);
                    let why = "the send could not be passed on";
                    answers.add(&waiting.item, refused(SendRefusal::Unavailable, why));
                }
            }
        }
        let Some(deadline) = asked.first().map(|w| w.deadline) else {
            answers.send();
            return;
        };
        let body = if proxy.batch > 1 {
            crate::proxy::batch_body(&bodies)
        } else {
            bodies.pop().unwrap_or_default()
        };
        self.counters.proxy_requests.fetch_add(1, Ordering::Relaxed);
        let posted =
            tokio::time::timeout_at(deadline.into(), proxy.poster.post(&proxy.uri, body)).await;
        let now = Instant::now();
        for waiting in &asked {
            self.latency
                .record(now.saturating_duration_since(waiting.arrived));
        }
        let decisions: Result<Vec<Result<Decision, String>>, SendOutcome> = match posted {
            Err(_) => {
                self.counters
                    .timeout
                    .fetch_add(asked.len() as u64, Ordering::Relaxed);
                Err(timed_out())
            }
            Ok(Err(error)) => {
                self.counters
                    .proxy_error
                    .fetch_add(asked.len() as u64, Ordering::Relaxed);
                tracing::warn!(uri = %proxy.uri, %error, "the send proxy request failed");
                Err(refused(
                    SendRefusal::Unavailable,
                    "the platform could not be reached",
                ))
            }
            Ok(Ok(body)) => {
                let parsed = if proxy.batch > 1 {
                    crate::proxy::parse_batch_decisions(&body, asked.len())
                } else {
                    Ok(vec![crate::proxy::parse_decision(&body)])
                };
                parsed.map_err(|error| {
                    self.counters
                        .proxy_error
                        .fetch_add(asked.len() as u64, Ordering::Relaxed);
                    tracing::warn!(uri = %proxy.uri, error, "the send proxy answered outside the contract");
                    not_understood()
                })
            }
        };
        match decisions {
            Err(outcome) => {
                for waiting in &asked {
                    answers.add(&waiting.item, outcome.clone());
                }
            }
            Ok(decisions) => {
                for (waiting, decision) in asked.iter().zip(decisions) {
                    let outcome = self.carry_out(router, &waiting.item.send, decision);
                    answers.add(&waiting.item, outcome);
                }
            }
        }
        answers.send();
    }

    /// What one of the backend's decisions about `send` does.
    fn carry_out(
        &self,
        router: &Router,
        send: &SendRequest,
        decision: Result<Decision, String>,
    ) -> SendOutcome {
        match decision {
            Err(error) => {
                self.counters.proxy_error.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error, "the send proxy answered outside the contract");
                not_understood()
            }
            Ok(Decision::Publish {
                data,
                priority,
                kind,
            }) => {
                let data = data.as_ref().unwrap_or(&send.data);
                let kind = kind.as_deref().unwrap_or(&send.kind);
                self.publish(router, send, priority.unwrap_or(SEND_PRIORITY), kind, data)
            }
            Ok(Decision::Accept) => {
                self.counters.accepted.fetch_add(1, Ordering::Relaxed);
                SendOutcome::NotBroadcast
            }
            Ok(Decision::Reject { code, message }) => {
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                SendOutcome::Refused {
                    code: SendRefusal::Rejected,
                    message,
                    platform_code: code,
                }
            }
            Ok(Decision::Disconnect { code, reason }) => {
                self.counters.disconnected.fetch_add(1, Ordering::Relaxed);
                SendOutcome::Disconnect { code, reason }
            }
        }
    }

    /// Publishes a send into its room, within the room's upstream budget.
    fn publish(
        &self,
        router: &Router,
        send: &SendRequest,
        priority: u8,
        kind: &str,
        data: &Bytes,
    ) -> SendOutcome {
        if !router.admit_send(&send.room, Instant::now()) {
            self.counters.over_budget.fetch_add(1, Ordering::Relaxed);
            return SendOutcome::NotBroadcast;
        }
        let req = PublishReq {
            target: TargetRef::Room(&send.room),
            priority,
            kind,
            data: data.clone(),
            from: Some(&send.user),
            ack: false,
        };
        match router.publish(&[req]).pop() {
            Some(Ok(published)) => {
                self.counters.published.fetch_add(1, Ordering::Relaxed);
                SendOutcome::Published {
                    msg_seq: published.seq,
                }
            }
            Some(Err(error)) => {
                self.counters.publish_error.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, room = %send.room, "a send could not be published");
                refused(
                    SendRefusal::Unavailable,
                    "the message could not be published",
                )
            }
            None => refused(
                SendRefusal::Unavailable,
                "the message could not be published",
            ),
        }
    }

    /// Records an edge's `acks` frame: acks of messages that were never published to the user
    /// or did not ask for one are ignored (counted `invalid`); a message no longer in the
    /// history is taken at its word.
    pub fn record_acks(&self, router: &Router, edge_id: &Arc<str>, acks: Vec<link::Ack>) {
        let total = acks.len();
        let valid: Vec<link::Ack> = acks
            .into_iter()
            .filter(|ack| router.ackable(&ack.user, ack.msg_seq) != Some(false))
            .collect();
        let invalid = (total - valid.len()) as u64;
        if invalid > 0 {
            self.receipts.invalid.fetch_add(invalid, Ordering::Relaxed);
        }
        self.receipts.record(edge_id, valid);
    }

    /// The upstream families of the control plane's `/metrics`.
    pub fn families(&self, f: &mut Families) {
        let c = &self.counters;
        let sends = f.counter(
            "roomcast_control_sends_total",
            "Viewers' sends the control plane answered, by result: published, over_budget (not broadcast: the room's --send-budgets), accepted (the platform's accept), rejected, disconnected, forbidden (--send-mode off), timeout, overflow (the proxy queue was full), proxy_error (the backend failed or answered outside the contract), publish_error.",
            &["result"],
        );
        for (result, counter) in [
            ("published", &c.published),
            ("over_budget", &c.over_budget),
            ("accepted", &c.accepted),
            ("rejected", &c.rejected),
            ("disconnected", &c.disconnected),
            ("forbidden", &c.forbidden),
            ("timeout", &c.timeout),
            ("overflow", &c.overflow),
            ("proxy_error", &c.proxy_error),
            ("publish_error", &c.publish_error),
        ] {
            sends.sample(&[result], counter.load(Ordering::Relaxed) as f64);
        }
        let buckets: Vec<u64> = self
            .latency
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        f.histogram(
            "roomcast_control_send_proxy_seconds",
            "Time the platform's backend (--send-proxy-url) took to answer a send, queueing for a request slot included (timeouts count at the timeout).",
            &[],
        )
        .histogram(
            &[],
            &PROXY_BOUNDS,
            &buckets[..PROXY_BOUNDS.len()],
            self.latency.count.load(Ordering::Relaxed),
            self.latency.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
        );
        f.counter(
            "roomcast_control_send_proxy_requests_total",
            "Requests to the platform's backend (--send-proxy-url); with --send-proxy-batch above 1, sends asked about ÷ requests is the mean batch.",
            &[],
        )
        .sample(&[], c.proxy_requests.load(Ordering::Relaxed) as f64);
        f.gauge(
            "roomcast_control_send_proxy_waiting",
            "Sends waiting for the platform's backend or in flight to it.",
            &[],
        )
        .sample(
            &[],
            self.proxy
                .as_ref()
                .map_or(0, |p| p.admitted.load(Ordering::Relaxed)) as f64,
        );
        let r = &self.receipts;
        let receipts = f.counter(
            "roomcast_control_receipts_total",
            "Viewers' receipts (acks of messages published with \"ack\":true): received (first ack of a message), repeated (a later ack of the same message), reported (POSTed to --receipt-url), dropped (the report queue was full), invalid (an ack of a message never published to the user or that did not ask for one: ignored).",
            &["result"],
        );
        for (result, counter) in [
            ("received", &r.received),
            ("repeated", &r.repeated),
            ("reported", &r.reported),
            ("dropped", &r.dropped),
            ("invalid", &r.invalid),
        ] {
            receipts.sample(&[result], counter.load(Ordering::Relaxed) as f64);
        }
        f.counter(
            "roomcast_control_receipt_report_failures_total",
            "Receipt reports to --receipt-url that failed (their receipts are retried while the queue has room).",
            &[],
        )
        .sample(&[], r.report_failures.load(Ordering::Relaxed) as f64);
    }
}

/// The backend's question about `send`, as JSON.
fn question(edge_id: &str, send: &SendRequest) -> Option<Bytes> {
    let text = std::str::from_utf8(&send.data).ok()?;
    let data: &RawValue = serde_json::from_str(text).ok()?;
    let question = SendQuestion {
        user: &send.user,
        room: &send.room,
        kind: &send.kind,
        data,
        conn: ConnDescription {
            edge: edge_id,
            transport: match send.format {
                WireFormat::WsJson => "ws-json",
                WireFormat::WsBinary => "ws-binary",
                WireFormat::Tcp => "tcp",
            },
            peer: &send.peer,
        },
    };
    serde_json::to_vec(&question).ok().map(Bytes::from)
}

fn refused(code: SendRefusal, message: &str) -> SendOutcome {
    SendOutcome::Refused {
        code,
        message: message.to_owned(),
        platform_code: String::new(),
    }
}

fn timed_out() -> SendOutcome {
    refused(
        SendRefusal::Unavailable,
        "the platform did not answer in time; retry later",
    )
}

fn not_understood() -> SendOutcome {
    refused(
        SendRefusal::Unavailable,
        "the platform's answer was not understood",
    )
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Send results gathered per edge link, sent as one write each.
#[derive(Default)]
struct Answers {
    links: Vec<(Arc<LinkHandle>, bytes::BytesMut)>,
}

impl Answers {
    fn add(&mut self, to: &Pending, outcome: SendOutcome) {
        let at = match self
            .links
            .iter()
            .position(|(link, _)| Arc::ptr_eq(link, &to.link))
        {
            Some(at) => at,
            None => {
                self.links
                    .push((Arc::clone(&to.link), bytes::BytesMut::new()));
                self.links.len() - 1
            }
        };
        let frame = LinkFrame::SendResult(SendResult {
            id: to.send.id,
            outcome,
        });
        if let Err(error) = link::encode(&frame, &mut self.links[at].1) {
            tracing::warn!(%error, "a send result did not encode");
        }
    }

    fn send(self) {
        for (link, out) in self.links {
            if !out.is_empty() {
                link.send(out.freeze());
            }
        }
    }
}

/// Sends the `send result` for send `id` on the edge's link.
fn answer(link: &LinkHandle, id: u64, outcome: SendOutcome) {
    let frame = LinkFrame::SendResult(SendResult { id, outcome });
    let mut out = bytes::BytesMut::new();
    match link::encode(&frame, &mut out) {
        Ok(()) => {
            link.send(out.freeze());
        }
        Err(error) => tracing::warn!(%error, "a send result did not encode"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::tests::{report, FakeEdge};

    fn upstream(args: &[&str]) -> (Arc<Upstream>, Arc<Router>) {
        let config = ControlConfig::load_from(
            std::iter::once("roomcast-control").chain(args.iter().copied()),
        )
        .expect("a valid configuration");
        let router = Router::new(config.levels().unwrap(), Duration::from_secs(3), 64 << 20);
        let upstream = Upstream::from_config(&config).expect("an upstream");
        (Arc::new(upstream), Arc::new(router))
    }

    fn member_edge(router: &Router) -> FakeEdge {
        let edge = FakeEdge::register(router, "e1", 1_000);
        router.apply_report(
            edge.key,
            report(true, &[("r1", 3)], &[("u1", 1)]),
            Instant::now(),
        );
        edge
    }

    fn chat(id: u64) -> SendRequest {
        SendRequest {
            id,
            user: "u1".into(),
            room: "r1".into(),
            kind: "chat".into(),
            data: Bytes::from_static(br#"{"text":"666"}"#),
            format: WireFormat::WsJson,
            peer: "127.0.0.1:5000".into(),
        }
    }

    fn results(frames: &[LinkFrame]) -> Vec<(u64, SendOutcome)> {
        frames
            .iter()
            .filter_map(|f| match f {
                LinkFrame::SendResult(r) => Some((r.id, r.outcome.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn direct_sends_are_published_with_the_sender_before_their_result() {
        let (upstream, router) = upstream(&["--send-mode", "direct"]);
        let mut edge = member_edge(&router);
        edge.frames();
        let edge_id: Arc<str> = "e1".into();
        upstream.handle_send(&router, &edge_id, &edge.link, chat(7));
        let frames = edge.frames();
        let [LinkFrame::Publish(publish), LinkFrame::SendResult(result)] = &frames[..] else {
            panic!("a publish, then the result: {frames:?}");
        };
        assert_eq!(
            publish.target,
            roomcast_proto::message::Target::Room("r1".into())
        );
        assert_eq!(publish.msg.from.as_deref(), Some("u1"));
        assert_eq!(publish.msg.priority, SEND_PRIORITY);
        assert_eq!(&publish.msg.data[..], br#"{"text":"666"}"#);
        assert_eq!(result.id, 7);
        assert_eq!(
            result.outcome,
            SendOutcome::Published {
                msg_seq: publish.msg.seq
            }
        );
        // The history keeps the sender.
        let page = router.history(TargetRef::Room("r1"), 0, 10);
        assert_eq!(page.msgs[0].from(), Some("u1"));
    }

    #[test]
    fn past_the_rooms_budget_a_send_is_answered_not_broadcast_and_not_published() {
        let (upstream, router) = upstream(&[
            "--send-budgets",
            "2,2,2,2",
            "--level-ticks-ms",
            "60000,60000,60000,60000",
        ]);
        let mut edge = member_edge(&router);
        edge.frames();
        let edge_id: Arc<str> = "e1".into();
        for id in 1..=3 {
            upstream.handle_send(&router, &edge_id, &edge.link, chat(id));
        }
        let frames = edge.frames();
        let publishes = frames
            .iter()
            .filter(|f| matches!(f, LinkFrame::Publish(_)))
            .count();
        assert_eq!(publishes, 2);
        assert_eq!(
            results(&frames),
            [
                (1, SendOutcome::Published { msg_seq: 1 }),
                (2, SendOutcome::Published { msg_seq: 2 }),
                (3, SendOutcome::NotBroadcast),
            ]
        );
    }

    #[test]
    fn with_sends_off_every_send_is_forbidden() {
        let (upstream, router) = upstream(&["--send-mode", "off"]);
        let mut edge = member_edge(&router);
        edge.frames();
        let edge_id: Arc<str> = "e1".into();
        upstream.handle_send(&router, &edge_id, &edge.link, chat(1));
        let results = results(&edge.frames());
        assert!(
            matches!(
                &results[..],
                [(
                    1,
                    SendOutcome::Refused {
                        code: SendRefusal::Forbidden,
                        ..
                    }
                )]
            ),
            "{results:?}"
        );
    }

    #[test]
    fn acks_of_messages_that_did_not_ask_or_never_were_are_ignored() {
        let (upstream, router) = upstream(&[]);
        let publish = |ack| PublishReq {
            target: TargetRef::User("u1"),
            priority: 1,
            kind: "reward",
            data: Bytes::from_static(b"{}"),
            from: None,
            ack,
        };
        router.publish(&[publish(true), publish(false)]);
        let edge: Arc<str> = "e1".into();
        let ack = |msg_seq| link::Ack {
            user: "u1".into(),
            msg_seq,
            at_ms: 1,
        };
        upstream.record_acks(&router, &edge, vec![ack(1), ack(2), ack(3), ack(0)]);
        assert!(upstream.receipts.lookup("u1", 1).is_some());
        for seq in [0, 2, 3] {
            assert!(upstream.receipts.lookup("u1", seq).is_none(), "{seq}");
        }
        assert_eq!(upstream.receipts.invalid.load(Ordering::Relaxed), 3);
        assert_eq!(upstream.receipts.received.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_proxy_mode_without_a_url_is_a_configuration_error() {
        let error =
            ControlConfig::load_from(["roomcast-control", "--send-mode", "proxy"]).unwrap_err();
        assert!(error.to_string().contains("--send-proxy-url"), "{error}");
        let error = ControlConfig::load_from([
            "roomcast-control",
            "--send-proxy-url",
            "https://example.com/x",
        ])
        .unwrap_err();
        assert!(error.to_string().contains("http://"), "{error}");
        let config =
            ControlConfig::load_from(["roomcast-control", "--send-proxy-url", "http://b:1/s"])
                .unwrap();
        assert_eq!(config.send_mode(), SendMode::Proxy);
        let error = ControlConfig::load_from([
            "roomcast-control",
            "--send-proxy-url",
            "http://b:1/s",
            "--send-proxy-timeout-ms",
            "5000",
        ])
        .unwrap_err();
        assert!(error.to_string().contains("at most 4000"), "{error}");
        assert_eq!(ControlConfig::default().send_mode(), SendMode::Direct);
    }

    #[test]
    fn a_window_admits_its_budget_in_any_interval_of_one_tick() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let tick = ms(500);
        let mut w = SendWindow::default();
        assert!((0..3).all(|_| w.admit(3, tick, t0)));
        assert!(!w.admit(3, tick, t0 + ms(499)));
        assert!(w.admit(3, tick, t0 + tick), "the first three aged out");
        assert!(w.admit(3, tick, t0 + tick));
        // Across what would be a tick boundary: three late in one tick, none early in the next.
        let mut w = SendWindow::default();
        assert!(w.admit(3, tick, t0));
        assert!(w.admit(3, tick, t0 + ms(400)));
        assert!(w.admit(3, tick, t0 + ms(450)));
        assert!(w.admit(3, tick, t0 + tick), "the one at t0 aged out");
        assert!(
            !w.admit(3, tick, t0 + tick),
            "not three more: 400, 450 and 500 are within one tick"
        );
        assert!(!w.admit(3, tick, t0 + ms(899)));
        assert!(w.admit(3, tick, t0 + ms(900)), "the one at 400 aged out");
        // Never more than the budget in any tick-long interval, whatever the arrivals.
        let mut w = SendWindow::default();
        let mut admitted = Vec::new();
        for i in 0..2_000u64 {
            // Uneven gaps of 0.5–2.5 ms, in order.
            let at = t0 + Duration::from_micros(i * 1_500 + i * 7_919 % 1_000);
            if w.admit(5, tick, at) {
                admitted.push(at);
            }
        }
        for (i, &a) in admitted.iter().enumerate() {
            let within = admitted[i..].iter().filter(|&&b| b < a + tick).count();
            assert!(within <= 5, "{within} sends within one tick of {i}");
        }
        assert!(
            admitted.len() >= 25,
            "5 a tick over 3 s: {}",
            admitted.len()
        );
        // Unlimited never counts; a zero budget admits nothing.
        let mut w = SendWindow::default();
        assert!((0..10_000).all(|_| w.admit(link::UNLIMITED, tick, t0)));
        assert!(w.admitted.is_empty());
        let mut w = SendWindow::default();
        assert!(!w.admit(0, tick, t0));
    }
}
