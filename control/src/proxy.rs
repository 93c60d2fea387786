//! The publish proxy's HTTP side (control/README.md "Upstream and receipts"): the request the platform's
//! backend gets for each viewer's send, the answers it may give, and a client that POSTs JSON
//! over pooled HTTP/1.1 keep-alive connections with a bounded response size.
//!
//! Parsing the backend's answer is pure ([`parse_decision`]) and tested here; the client is a
//! thin wrapper over hyper-util's pooled client.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONTENT_TYPE, USER_AGENT};
use hyper::{Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use roomcast_proto::link::PLATFORM_CLOSE_CODES;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::publish::is_valid_kind;

/// Largest answer body read from the backend.
const MAX_ANSWER_BYTES: usize = 64 << 10;
/// Longest `message` of a `reject` passed to the client; longer ones are cut.
const MAX_REJECT_MESSAGE: usize = 1024;
/// Longest `code` of a `reject` (a binary reply's `str8`).
const MAX_REJECT_CODE: usize = 255;
/// Longest `reason` of a `disconnect` (a WebSocket close frame leaves 123 bytes).
const MAX_CLOSE_REASON: usize = 123;

/// What the backend is asked about one send.
#[derive(Debug, Serialize)]
pub struct SendQuestion<'a> {
    pub user: &'a str,
    pub room: &'a str,
    pub kind: &'a str,
    pub data: &'a RawValue,
    pub conn: ConnDescription<'a>,
}

/// The sender's connection, as the backend sees it.
#[derive(Debug, Serialize)]
pub struct ConnDescription<'a> {
    pub edge: &'a str,
    /// `ws-json`, `ws-binary` or `tcp`.
    pub transport: &'static str,
    pub peer: &'a str,
}

/// The backend's decision about one send, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Publish into the room; each `Some` replaces what the viewer sent.
    Publish {
        data: Option<Bytes>,
        priority: Option<u8>,
        kind: Option<String>,
    },
    /// Accepted, not broadcast.
    Accept,
    /// Refused: the client gets `rejected` with these.
    Reject { code: String, message: String },
    /// Close the sender's connection with this code (4000–4999) and reason.
    Disconnect { code: u16, reason: String },
}

/// The answer as sent: one flat object (an internally tagged enum would lose `data`'s raw
/// text), judged by [`parse_decision`].
#[derive(Deserialize)]
struct RawDecision {
    result: String,
    /// `Some` whenever the field is present, `null` included: a backend replacing the data
    /// with `null` must not get the viewer's data published as sent.
    #[serde(default, deserialize_with = "present")]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    priority: Option<u8>,
    #[serde(default)]
    kind: Option<String>,
    /// A string for `reject`, a close code for `disconnect`.
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

/// A field that is present, whatever its value (`null` too), as `Some`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// Reads and checks the backend's answer body; the error says what is wrong with it (the
/// client then hears `unavailable`, and the error is counted and logged).
pub fn parse_decision(body: &[u8]) -> Result<Decision, String> {
    let raw: RawDecision = serde_json::from_slice(body).map_err(|e| {
        format!("the answer is not {{\"result\": publish|accept|reject|disconnect, ...}}: {e}")
    })?;
    Ok(match raw.result.as_str() {
        "publish" => {
            if raw.priority.is_some_and(|p| p > 3) {
                return Err("`priority` must be 0 to 3".into());
            }
            if let Some(kind) = &raw.kind {
                if !is_valid_kind(kind) {
                    return Err("`kind` must be 1-64 bytes of [A-Za-z0-9_.:-]".into());
                }
            }
            Decision::Publish {
                data: raw.data.map(|d| Bytes::copy_from_slice(d.get().as_bytes())),
                priority: raw.priority,
                kind: raw.kind,
            }
        }
        "accept" => Decision::Accept,
        "reject" => {
            let code = match raw.code {
                None => "rejected".to_owned(),
                Some(serde_json::Value::String(code)) => code,
                Some(_) => return Err("a reject's `code` must be a string".into()),
            };
            Decision::Reject {
                code: clamp(code, MAX_REJECT_CODE),
                message: clamp(
                    raw.message
                        .unwrap_or_else(|| "the platform refused this message".into()),
                    MAX_REJECT_MESSAGE,
                ),
            }
        }
        "disconnect" => {
            let code = raw
                .code
                .as_ref()
                .and_then(serde_json::Value::as_u64)
                .and_then(|c| u16::try_from(c).ok())
                .filter(|c| PLATFORM_CLOSE_CODES.contains(c))
                .ok_or("a disconnect's `code` must be a close code from 4000 to 4999")?;
            Decision::Disconnect {
                code,
                reason: clamp(raw.reason.unwrap_or_default(), MAX_CLOSE_REASON),
            }
        }
        other => {
            return Err(format!(
                "`result` must be publish, accept, reject or disconnect, not {other:?}"
            ))
        }
    })
}

/// The body of a batched request (`--send-proxy-batch` above 1): `{"sends":[…]}` around the
/// sends' questions, each as [`SendQuestion`] serializes it.
pub fn batch_body(questions: &[Bytes]) -> Bytes {
    let len = questions.iter().map(|q| q.len() + 1).sum::<usize>();
    let mut body = Vec::with_capacity(len + 12);
    body.extend_from_slice(br#"{"sends":["#);
    for (i, question) in questions.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(question);
    }
    body.extend_from_slice(b"]}");
    Bytes::from(body)
}

/// The answer to a batched request: `{"results":[…]}` with one decision per send, in order.
/// The outer error (a body that is not that list, or a list of another length) fails every
/// send of the batch; an inner one fails its send alone.
pub fn parse_batch_decisions(
    body: &[u8],
    sends: usize,
) -> Result<Vec<Result<Decision, String>>, String> {
    #[derive(Deserialize)]
    struct Results<'a> {
        #[serde(borrow)]
        results: Vec<&'a RawValue>,
    }
    let answer: Results = serde_json::from_slice(body)
        .map_err(|e| format!("the answer is not {{\"results\": [decision, ...]}}: {e}"))?;
    if answer.results.len() != sends {
        return Err(format!(
            "the answer has {} results for {sends} sends",
            answer.results.len()
        ));
    }
    Ok(answer
        .results
        .iter()
        .map(|raw| parse_decision(raw.get().as_bytes()))
        .collect())
}

/// `s` cut at a char boundary to at most `max` bytes.
fn clamp(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// POSTs JSON to the platform over pooled keep-alive HTTP/1.1 connections.
#[derive(Clone)]
pub struct JsonPoster {
    client: Client<HttpConnector, Full<Bytes>>,
}

/// Why a POST did not produce an answer body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostError {
    /// Connecting, writing or reading failed.
    Transport(String),
    /// The backend answered with a status other than 2xx.
    Status(u16),
}

impl std::fmt::Display for PostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PostError::Transport(e) => write!(f, "{e}"),
            PostError::Status(s) => write!(f, "HTTP status {s}"),
        }
    }
}

impl JsonPoster {
    /// A client keeping up to `idle_per_host` idle connections open.
    pub fn new(idle_per_host: usize) -> JsonPoster {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(idle_per_host)
            .build(connector);
        JsonPoster { client }
    }

    /// POSTs `body` (JSON) to `uri`; the answer's body on a 2xx status (at most 64 KiB).
    pub async fn post(&self, uri: &Uri, body: Bytes) -> Result<Bytes, PostError> {
        let request = Request::post(uri.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, "roomcast-control")
            .body(Full::new(body))
            .map_err(|e| PostError::Transport(e.to_string()))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| PostError::Transport(e.to_string()))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| PostError::Transport(format!("reading the answer: {e}")))?
            .to_bytes();
        if !status.is_success() {
            return Err(PostError::Status(status.as_u16()));
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_answer_reads_as_its_decision() {
        assert_eq!(
            parse_decision(br#"{"result":"publish"}"#),
            Ok(Decision::Publish {
                data: None,
                priority: None,
                kind: None
            })
        );
        assert_eq!(
            parse_decision(
                br#"{"result":"publish","data":{"text":"***","level":7},"priority":2,"kind":"vip_chat"}"#
            ),
            Ok(Decision::Publish {
                data: Some(Bytes::from_static(br#"{"text":"***","level":7}"#)),
                priority: Some(2),
                kind: Some("vip_chat".into()),
            })
        );
        assert_eq!(
            parse_decision(br#"{"result":"publish","data":null}"#),
            Ok(Decision::Publish {
                data: Some(Bytes::from_static(b"null")),
                priority: None,
                kind: None,
            })
        );
        assert_eq!(
            parse_decision(br#"{"result":"accept"}"#),
            Ok(Decision::Accept)
        );
        assert_eq!(
            parse_decision(br#"{"result":"reject","code":"muted","message":"you are muted"}"#),
            Ok(Decision::Reject {
                code: "muted".into(),
                message: "you are muted".into()
            })
        );
        assert_eq!(
            parse_decision(br#"{"result":"disconnect","code":4403,"reason":"banned"}"#),
            Ok(Decision::Disconnect {
                code: 4403,
                reason: "banned".into()
            })
        );
    }

    #[test]
    fn answers_outside_the_contract_are_errors_that_say_why() {
        for (body, says) in [
            (&br#"{"result":"maybe"}"#[..], "result"),
            (br#"{"ok":true}"#, "result"),
            (br#"not json"#, "result"),
            (br#"{"result":"publish","priority":4}"#, "priority"),
            (br#"{"result":"publish","kind":"a b"}"#, "kind"),
            (br#"{"result":"disconnect","code":1000}"#, "4000 to 4999"),
            (br#"{"result":"disconnect","code":5000}"#, "4000 to 4999"),
            (br#"{"result":"disconnect"}"#, "code"),
        ] {
            let error = parse_decision(body).unwrap_err();
            assert!(
                error.contains(says),
                "{}: {error}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn a_batch_is_the_sends_in_order_and_its_answer_one_decision_each() {
        let body = batch_body(&[
            Bytes::from_static(br#"{"user":"u1"}"#),
            Bytes::from_static(br#"{"user":"u2"}"#),
        ]);
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"sends":[{"user":"u1"},{"user":"u2"}]})
        );
        let decisions = parse_batch_decisions(
            br#"{"results":[{"result":"accept"},{"result":"maybe"},{"result":"reject","code":"muted"}]}"#,
            3,
        )
        .unwrap();
        assert_eq!(decisions[0], Ok(Decision::Accept));
        assert!(decisions[1].as_ref().unwrap_err().contains("maybe"));
        assert!(matches!(&decisions[2], Ok(Decision::Reject { code, .. }) if code == "muted"));
        // A list of another length, or no list, fails the whole batch.
        let short = parse_batch_decisions(br#"{"results":[{"result":"accept"}]}"#, 2);
        assert!(short.unwrap_err().contains("1 results for 2 sends"));
        assert!(parse_batch_decisions(br#"{"result":"accept"}"#, 1)
            .unwrap_err()
            .contains("results"));
    }

    #[test]
    fn long_texts_are_cut_at_a_char_boundary() {
        let reason = "é".repeat(100);
        let body = format!(r#"{{"result":"disconnect","code":4001,"reason":"{reason}"}}"#);
        let Ok(Decision::Disconnect { reason, .. }) = parse_decision(body.as_bytes()) else {
            panic!("a disconnect");
        };
        assert!(reason.len() <= MAX_CLOSE_REASON && reason.chars().all(|c| c == 'é'));
        assert_eq!(reason.len(), 122);
        let Ok(Decision::Reject { code, message }) = parse_decision(br#"{"result":"reject"}"#)
        else {
            panic!("a reject");
        };
        assert_eq!(code, "rejected");
        assert!(!message.is_empty());
    }
}
