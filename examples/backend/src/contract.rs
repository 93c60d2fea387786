//! The wire types of roomcast's publish-proxy contract: what the control plane POSTs to the
//! backend (a viewer's send, a batch of receipts) and what the backend answers.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One viewer's upstream message, POSTed to the send-proxy URL.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SendRequest {
    pub user: String,
    pub room: String,
    pub kind: String,
    /// Whatever JSON value the viewer sent (`null` when absent).
    #[serde(default)]
    pub data: Value,
    /// Where the viewer is connected. Only logged here.
    #[serde(default)]
    pub conn: Option<Conn>,
}

/// The viewer's connection as roomcast reports it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Conn {
    pub edge: String,
    /// `ws-json`, `ws-binary` or `tcp`.
    pub transport: String,
    pub peer: String,
}

/// Parses a send body. Anything that is not a send with a non-empty `user` and `kind` is an error
/// (answered 400, which roomcast treats as "backend unavailable").
pub fn parse_send(body: &[u8]) -> Result<SendRequest, String> {
    let send: SendRequest = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if send.user.is_empty() {
        return Err("user must not be empty".to_owned());
    }
    if send.kind.is_empty() {
        return Err("kind must not be empty".to_owned());
    }
    Ok(send)
}

/// A send body: one send, or a batch of them (roomcast's `--send-proxy-batch` above 1).
#[derive(Debug, Clone, PartialEq)]
pub enum SendBody {
    One(SendRequest),
    /// `{"sends":[…]}`: answered `{"results":[…]}`, one decision per send, in order.
    Batch(Vec<SendRequest>),
}

/// Parses a send body, single or batched; a batch with any malformed send is an error as a
/// whole.
pub fn parse_send_body(body: &[u8]) -> Result<SendBody, String> {
    #[derive(Deserialize)]
    struct Batch {
        sends: Vec<Box<serde_json::value::RawValue>>,
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if value.get("sends").is_none() {
        return parse_send(body).map(SendBody::One);
    }
    let batch: Batch = serde_json::from_value(value).map_err(|e| e.to_string())?;
    if batch.sends.is_empty() {
        return Err("sends must not be empty".to_owned());
    }
    batch
        .sends
        .iter()
        .enumerate()
        .map(|(i, raw)| parse_send(raw.get().as_bytes()).map_err(|e| format!("sends[{i}]: {e}")))
        .collect::<Result<Vec<_>, _>>()
        .map(SendBody::Batch)
}

/// The answer to a send (always with status 200).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum Decision {
    /// Publish to the room; each `Some` field replaces what the viewer sent. This sample's rules
    /// only ever replace `data`; `priority` (0..3) and `kind` are part of the contract.
    Publish {
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        priority: Option<u8>,
        #[serde(skip_serializing_if = "Option::is_none")]
        kind: Option<String>,
    },
    /// Taken by the platform, not broadcast.
    Accept,
    /// The viewer gets an error `rejected` with this code and message.
    Reject { code: String, message: String },
    /// The viewer's connection is closed with this close code (4000..=4999) and reason.
    Disconnect { code: u16, reason: String },
}

impl Decision {
    /// Publish exactly what the viewer sent.
    pub fn publish_unchanged() -> Decision {
        Decision::Publish {
            data: None,
            priority: None,
            kind: None,
        }
    }

    /// Publish with `data` replaced.
    pub fn publish_data(data: Value) -> Decision {
        Decision::Publish {
            data: Some(data),
            priority: None,
            kind: None,
        }
    }

    /// The `result` field's value.
    pub fn result(&self) -> &'static str {
        match self {
            Decision::Publish { .. } => "publish",
            Decision::Accept => "accept",
            Decision::Reject { .. } => "reject",
            Decision::Disconnect { .. } => "disconnect",
        }
    }
}

/// One viewer's acknowledgement of a message; receipts arrive as a JSON array of these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub user: String,
    pub msg_seq: u64,
    pub edge: String,
    pub at_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_four_answers_serialize_as_the_contract_says() {
        let as_json = |d: &Decision| serde_json::to_value(d).unwrap();
        assert_eq!(
            as_json(&Decision::publish_unchanged()),
            json!({"result": "publish"})
        );
        let replaced = Decision::Publish {
            data: Some(json!({"text": "hi"})),
            priority: Some(2),
            kind: Some("notice".into()),
        };
        assert_eq!(
            as_json(&replaced),
            json!({"result": "publish", "data": {"text": "hi"}, "priority": 2, "kind": "notice"})
        );
        assert_eq!(as_json(&Decision::Accept), json!({"result": "accept"}));
        let reject = Decision::Reject {
            code: "muted".into(),
            message: "m".into(),
        };
        assert_eq!(
            as_json(&reject),
            json!({"result": "reject", "code": "muted", "message": "m"})
        );
        let disconnect = Decision::Disconnect {
            code: 4403,
            reason: "banned".into(),
        };
        assert_eq!(
            as_json(&disconnect),
            json!({"result": "disconnect", "code": 4403, "reason": "banned"})
        );
    }

    #[test]
    fn parses_the_documented_send_body() {
        let body = br#"{"user":"u42","room":"r1","kind":"chat","data":{"text":"666"},"conn":{"edge":"e1","transport":"ws-json","peer":"127.0.0.1:50312"}}"#;
        let send = parse_send(body).unwrap();
        assert_eq!(send.user, "u42");
        assert_eq!(send.room, "r1");
        assert_eq!(send.data, json!({"text": "666"}));
        assert_eq!(send.conn.unwrap().transport, "ws-json");
        // `data` and `conn` may be absent; unknown fields are ignored (forward compatible).
        let send = parse_send(br#"{"user":"u1","room":"r1","kind":"like","extra":1}"#).unwrap();
        assert_eq!(send.data, Value::Null);
        assert_eq!(send.conn, None);
    }

    #[test]
    fn a_batch_body_is_its_sends_in_order_and_a_bad_one_fails_it() {
        let body = br#"{"sends":[{"user":"u1","room":"r1","kind":"chat"},{"user":"u2","room":"r1","kind":"like"}]}"#;
        let SendBody::Batch(sends) = parse_send_body(body).unwrap() else {
            panic!("a batch");
        };
        assert_eq!(
            sends.iter().map(|s| s.user.as_str()).collect::<Vec<_>>(),
            ["u1", "u2"]
        );
        let one = br#"{"user":"u1","room":"r1","kind":"chat"}"#;
        assert!(matches!(parse_send_body(one), Ok(SendBody::One(_))));
        let bad = br#"{"sends":[{"user":"u1","room":"r1","kind":"chat"},{"user":""}]}"#;
        assert!(parse_send_body(bad).unwrap_err().starts_with("sends[1]"));
        assert!(parse_send_body(br#"{"sends":[]}"#).is_err());
        assert!(parse_send_body(br#"{"sends":3}"#).is_err());
    }

    #[test]
    fn malformed_send_bodies_are_errors() {
        for body in [
            &b""[..],
            b"not json",
            b"[1,2]",
            br#"{"room":"r1","kind":"chat"}"#,
            br#"{"user":42,"room":"r1","kind":"chat"}"#,
            br#"{"user":"","room":"r1","kind":"chat"}"#,
            br#"{"user":"u1","room":"r1","kind":""}"#,
            br#"{"user":"u1","room":"r1","kind":"chat","conn":{"edge":"e1"}}"#,
        ] {
            assert!(
                parse_send(body).is_err(),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
