//! `--publish-via control`: a small blocking client of the control plane's HTTP API (hyper over
//! one kept-alive connection, driven by a current-thread tokio runtime), and the publishing
//! [`Sink`] built on it (`POST /v1/messages` batches, also encoded once and replayed).

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{header, Method, Request};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::dist::room_name;
use crate::publish::{ts_digits_at, Encoded, Outcome, Outgoing, Sink};
use crate::system::EdgeLoad;

/// Longest wait for one request, connect included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Api {
    runtime: tokio::runtime::Runtime,
    addr: SocketAddr,
    /// `host:port`, for the Host header.
    authority: String,
    bearer: String,
    conn: Option<SendRequest<Full<Bytes>>>,
}

/// The control plane's view of one edge (`GET /v1/edges`), the fields the bench uses.
#[derive(Debug, Deserialize)]
struct EdgeView {
    edge_id: String,
    connections: u64,
    frames_out: u64,
    bytes_out: u64,
    msgs_dropped: u64,
    slow_closes: u64,
    healthy: bool,
}

/// `GET /v1/rooms/{room}`, the fields the bench uses.
#[derive(Debug, Deserialize)]
pub struct RoomView {
    pub online: u64,
    pub level: u8,
    pub tick_ms: u32,
}

impl Api {
    /// A client of the API at `url` (`http://host:port`); connects on first use.
    pub fn new(url: &str, api_key: &str) -> Result<Api, String> {
        let authority = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("--control-url {url}: only http://host:port is supported"))?
            .trim_end_matches('/')
            .to_string();
        let addr = authority
            .to_socket_addrs()
            .map_err(|e| format!("--control-url {url}: {e}"))?
            .next()
            .ok_or_else(|| format!("--control-url {url}: no address"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        Ok(Api {
            runtime,
            addr,
            authority,
            bearer: format!("Bearer {api_key}"),
            conn: None,
        })
    }

    /// The API's socket address (what `--api-listen` of a started control plane is).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends one request; returns the status and the body. Reconnects once if the kept-alive
    /// connection is gone.
    fn request(&mut self, method: Method, path: &str, body: Bytes) -> Result<(u16, Bytes), String> {
        let mut last_error = String::new();
        for _ in 0..2 {
            let request = Request::builder()
                .method(method.clone())
                .uri(path)
                .header(header::HOST, &self.authority)
                .header(header::AUTHORIZATION, &self.bearer)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(body.clone()))
                .map_err(|e| e.to_string())?;
            let conn = self.conn.take();
            let addr = self.addr;
            let outcome = self.runtime.block_on(async move {
                tokio::time::timeout(REQUEST_TIMEOUT, async move {
                    let mut sender = match conn {
                        Some(c) if !c.is_closed() => c,
                        _ => connect(addr).await?,
                    };
                    sender.ready().await.map_err(|e| e.to_string())?;
                    let response = sender
                        .send_request(request)
                        .await
                        .map_err(|e| e.to_string())?;
                    let status = response.status().as_u16();
                    let body = response
                        .into_body()
                        .collect()
                        .await
                        .map_err(|e| e.to_string())?
                        .to_bytes();
                    Ok::<_, String>((sender, status, body))
                })
                .await
                .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))?
            });
            match outcome {
                Ok((sender, status, body)) => {
                    self.conn = Some(sender);
                    return Ok((status, body));
                }
                Err(e) => last_error = e,
            }
        }
        Err(format!(
            "{method} http://{}{path}: {last_error}",
            self.authority
        ))
    }

    fn call<T: DeserializeOwned>(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<T, String> {
        let (status, body) = self.request(method.clone(), path, body)?;
        if status != 200 {
            return Err(format!(
                "{method} {path}: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        serde_json::from_slice(&body)
            .map_err(|e| format!("{method} {path}: unexpected answer ({e})"))
    }

    /// `GET path`, its JSON answer.
    pub fn get_json<T: DeserializeOwned>(&mut self, path: &str) -> Result<T, String> {
        self.call(Method::GET, path, Bytes::new())
    }

    /// True when `GET /healthz` answers 200.
    pub fn healthy(&mut self) -> bool {
        matches!(
            self.request(Method::GET, "/healthz", Bytes::new()),
            Ok((200, _))
        )
    }

    /// The control plane's `GET /metrics` (Prometheus text).
    pub fn metrics(&mut self) -> Result<Metrics, String> {
        let (status, body) = self.request(Method::GET, "/metrics", Bytes::new())?;
        if status != 200 {
            return Err(format!("GET /metrics: HTTP {status}"));
        }
        Ok(Metrics::parse(&String::from_utf8_lossy(&body)))
    }

    /// The registered edges' load (`GET /v1/edges`), healthy ones only.
    pub fn edges(&mut self) -> Result<Vec<EdgeLoad>, String> {
        #[derive(Deserialize)]
        struct Edges {
            edges: Vec<EdgeView>,
        }
        let edges: Edges = self.call(Method::GET, "/v1/edges", Bytes::new())?;
        Ok(edges
            .edges
            .into_iter()
            .filter(|e| e.healthy)
            .map(|e| EdgeLoad {
                id: e.edge_id,
                connections: e.connections,
                frames_out: e.frames_out,
                bytes_out: e.bytes_out,
                msgs_dropped: e.msgs_dropped,
                slow_closes: e.slow_closes,
            })
            .collect())
    }

    pub fn room(&mut self, room: &str) -> Result<RoomView, String> {
        self.call(Method::GET, &format!("/v1/rooms/{room}"), Bytes::new())
    }

    /// Where the dispatcher sends clients of `transport` (`ws` or `tcp`), as socket addresses.
    pub fn dispatch(&mut self, transport: &str) -> Result<Vec<SocketAddr>, String> {
        #[derive(Deserialize)]
        struct Dispatch {
            addresses: Vec<String>,
        }
        let path = format!("/v1/dispatch?transport={transport}");
        let d: Dispatch = self.call(Method::GET, &path, Bytes::new())?;
        d.addresses
            .iter()
            .map(|a| dial_addr(a).ok_or_else(|| format!("dispatch returned {a:?}: not host:port")))
            .collect()
    }

    /// A client token from `POST /v1/tokens`.
    pub fn token(&mut self, user: &str, ttl_s: u64, room: &str) -> Result<String, String> {
        #[derive(Deserialize)]
        struct Token {
            token: String,
        }
        let body = serde_json::json!({"user": user, "ttl_s": ttl_s, "rooms": [room]});
        let t: Token = self.call(Method::POST, "/v1/tokens", Bytes::from(body.to_string()))?;
        Ok(t.token)
    }
}

/// The samples of a Prometheus text page, by series (`name` or `name{labels}` as written).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics(BTreeMap<String, f64>);

impl Metrics {
    /// Reads `series value` lines; comments, blank lines and lines it cannot read are skipped.
    pub fn parse(text: &str) -> Metrics {
        let mut samples = BTreeMap::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // Label values may hold spaces: the value follows the closing brace, if any.
            let split_from = line.rfind('}').unwrap_or(0);
            let Some(space) = line[split_from..].find(' ').map(|i| i + split_from) else {
                continue;
            };
            let (series, rest) = line.split_at(space);
            let Some(value) = rest.split_whitespace().next() else {
                continue;
            };
            if let Ok(v) = value.parse::<f64>() {
                samples.insert(series.to_string(), v);
            }
        }
        Metrics(samples)
    }

    /// The sample of an unlabelled series.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.0.get(name).copied()
    }

    /// The samples of a family with one label, by that label's value: `{reason="count"}` →
    /// `count`.
    pub fn by_label(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let prefix = format!("{name}{{");
        let key = format!("{label}=\"");
        self.0
            .range(prefix.clone()..)
            .take_while(|(series, _)| series.starts_with(&prefix))
            .filter_map(|(series, &v)| {
                let labels = &series[prefix.len()..];
                let start = labels.find(&key)? + key.len();
                let end = labels[start..].find('"')? + start;
                Some((labels[start..end].to_string(), v))
            })
            .collect()
    }
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// `ws://host:port/ws` or `host:port` → `host:port` as a socket address.
fn dial_addr(address: &str) -> Option<SocketAddr> {
    let rest = address
        .strip_prefix("ws://")
        .or_else(|| address.strip_prefix("tcp://"))
        .unwrap_or(address);
    let authority = rest.split('/').next()?;
    authority.to_socket_addrs().ok()?.next()
}

/// Publishes with `POST /v1/messages`, one request per batch.
pub struct ControlSink {
    api: Api,
    room_names: Vec<String>,
}

impl ControlSink {
    pub fn new(api: Api, rooms: usize) -> ControlSink {
        ControlSink {
            api,
            room_names: (0..rooms).map(room_name).collect(),
        }
    }

    fn body(&self, msgs: &[Outgoing]) -> Bytes {
        Bytes::from(self.encode_with(msgs, |_, _| {}))
    }

    /// The `POST /v1/messages` body for `msgs`; `data` is told where each message's data starts.
    fn encode_with(&self, msgs: &[Outgoing], mut data: impl FnMut(usize, &[u8])) -> Vec<u8> {
        let mut body = Vec::with_capacity(
            32 + msgs
                .iter()
                .map(|m| m.data.len() + m.merge.as_ref().map_or(0, Bytes::len) + 80)
                .sum::<usize>(),
        );
        body.extend_from_slice(b"{\"messages\":[");
        for (i, m) in msgs.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(b"{\"room\":\"");
            body.extend_from_slice(self.room_names[m.room].as_bytes());
            body.extend_from_slice(b"\",\"priority\":");
            body.push(b'0' + m.priority);
            body.extend_from_slice(b",\"kind\":\"");
            body.extend_from_slice(m.kind.as_bytes());
            body.extend_from_slice(b"\",\"data\":");
            data(body.len(), &m.data);
            body.extend_from_slice(&m.data);
            if let Some(rule) = &m.merge {
                body.extend_from_slice(b",\"merge\":");
                body.extend_from_slice(rule);
            }
            body.push(b'}');
        }
        body.extend_from_slice(b"]}");
        body
    }

    /// POSTs one batch body of `n` messages; one outcome per message.
    fn publish(&mut self, body: Bytes, n: usize) -> Vec<Outcome> {
        outcomes(self.api.call(Method::POST, "/v1/messages", body), n)
    }
}

/// `POST /v1/messages`'s answer: one result per message, in order.
#[derive(Deserialize)]
struct Results {
    results: Vec<PublishResult>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PublishResult {
    Published {
        delivered_edges: u64,
        /// Waiting in its merge window (no `seq` yet).
        #[serde(default)]
        held: bool,
    },
    Failed {
        error: serde_json::Value,
    },
}

/// One outcome per message of a batch of `n` from the API's answer (or the request's error).
fn outcomes(answer: Result<Results, String>, n: usize) -> Vec<Outcome> {
    match answer {
        Err(e) => vec![Outcome::Rejected(e); n],
        Ok(r) if r.results.len() != n => {
            let e = format!("{} results for {n} messages", r.results.len());
            vec![Outcome::Rejected(e); n]
        }
        Ok(r) => r
            .results
            .into_iter()
            .map(|result| match result {
                PublishResult::Published { held: true, .. } => Outcome::Held,
                PublishResult::Published {
                    delivered_edges: 0, ..
                } => Outcome::Unrouted,
                PublishResult::Published { .. } => Outcome::Routed,
                PublishResult::Failed { error } => Outcome::Rejected(match &error["code"] {
                    serde_json::Value::String(code) => code.clone(),
                    _ => error.to_string(),
                }),
            })
            .collect(),
    }
}

impl Sink for ControlSink {
    fn send(&mut self, msgs: &[Outgoing]) -> Vec<Outcome> {
        let body = self.body(msgs);
        self.publish(body, msgs.len())
    }

    fn encode(&self, msgs: &[Outgoing]) -> Option<Encoded> {
        let mut ts_at = Vec::with_capacity(msgs.len());
        let body = self.encode_with(msgs, |at, data| {
            if let Some(ts) = ts_digits_at(data) {
                ts_at.push(at + ts);
            }
        });
        Some(Encoded { body, ts_at })
    }

    fn send_encoded(&mut self, batch: &Encoded, n: usize) -> Vec<Outcome> {
        self.publish(Bytes::copy_from_slice(&batch.body), n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispatch_addresses_become_socket_addresses() {
        let want: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(dial_addr("ws://127.0.0.1:8080/ws"), Some(want));
        assert_eq!(dial_addr("127.0.0.1:8080"), Some(want));
        assert_eq!(dial_addr("nonsense"), None);
    }

    #[test]
    fn reads_the_control_planes_metrics_page() {
        let page = "# HELP roomcast_control_history_messages Messages kept.\n\
            # TYPE roomcast_control_history_messages gauge\n\
            roomcast_control_history_messages 300000\n\
            roomcast_control_history_bytes 6.12e7\n\
            roomcast_control_history_evictions_total{reason=\"count\"} 12\n\
            roomcast_control_history_evictions_total{reason=\"global\"} 0\n\
            roomcast_control_recoveries_total{result=\"too old\"} 3\n\
            roomcast_control_recoveries_totalx{result=\"no\"} 9\n\
            garbage\n";
        let m = Metrics::parse(page);
        assert_eq!(m.get("roomcast_control_history_messages"), Some(300_000.0));
        assert_eq!(m.get("roomcast_control_history_bytes"), Some(61_200_000.0));
        assert_eq!(m.get("missing"), None);
        let evictions = m.by_label("roomcast_control_history_evictions_total", "reason");
        assert_eq!(evictions.len(), 2);
        assert_eq!(evictions["count"], 12.0);
        let recoveries = m.by_label("roomcast_control_recoveries_total", "result");
        assert_eq!(recoveries.len(), 1, "another family's samples stay out");
        assert_eq!(recoveries["too old"], 3.0, "a label value with a space");
    }

    #[test]
    fn batch_bodies_are_the_documented_json() {
        let api = Api::new("http://127.0.0.1:9", "k").unwrap();
        let sink = ControlSink::new(api, 2);
        let body = sink.body(&[
            Outgoing::load(1, 2, Bytes::from_static(br#"{"ts":5,"pad":"x"}"#)),
            Outgoing {
                room: 0,
                priority: 3,
                kind: "like",
                data: Bytes::from_static(br#"{"ts":6,"count":2}"#),
                merge: Some(Bytes::from(crate::merge::sum_rule("like"))),
            },
        ]);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"messages": [
                {"room": "room-1", "priority": 2, "kind": "bench", "data": {"ts": 5, "pad": "x"}},
                {"room": "room-0", "priority": 3, "kind": "like", "data": {"ts": 6, "count": 2},
                 "merge": {"key": "like", "op": "sum", "fields": ["count"]}},
            ]})
        );
    }

    #[test]
    fn answers_held_in_a_merge_window_are_accepted() {
        let answer = r#"{"results":[{"seq":7,"delivered_edges":2},{"held":true,"delivered_edges":0},
            {"seq":8,"delivered_edges":0},{"error":{"code":"bad_request","message":"merge.op"}},
            {"seq":9,"delivered_edges":1,"duplicate":true}]}"#;
        let parsed: Results = serde_json::from_str(answer).unwrap();
        assert_eq!(
            outcomes(Ok(parsed), 5),
            [
                Outcome::Routed,
                Outcome::Held,
                Outcome::Unrouted,
                Outcome::Rejected("bad_request".into()),
                Outcome::Routed,
            ]
        );
        let parsed: Results = serde_json::from_str(r#"{"results":[]}"#).unwrap();
        assert!(matches!(
            &outcomes(Ok(parsed), 1)[..],
            [Outcome::Rejected(_)]
        ));
    }

    #[test]
    fn a_replayed_batch_is_the_same_body_with_fresh_timestamps() {
        let api = Api::new("http://127.0.0.1:9", "k").unwrap();
        let sink = ControlSink::new(api, 3);
        let msgs: Vec<Outgoing> = (0..3)
            .map(|i| {
                Outgoing::load(
                    i,
                    3,
                    crate::publish::message_data(1_700_000_000_000_000, 100),
                )
            })
            .collect();
        let mut encoded = sink.encode(&msgs).expect("the API sink replays");
        assert_eq!(encoded.body, sink.body(&msgs), "encoded once, as sent");
        assert_eq!(encoded.ts_at.len(), 3);
        encoded.stamp(1_700_000_000_999_999);
        let v: serde_json::Value = serde_json::from_slice(&encoded.body).unwrap();
        for (i, m) in v["messages"].as_array().unwrap().iter().enumerate() {
            assert_eq!(m["room"], format!("room-{i}"));
            assert_eq!(m["data"]["ts"], 1_700_000_000_999_999u64);
        }
    }
}
