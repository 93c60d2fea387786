//! HTTP routes: the two roomcast endpoints and the admin/inspection routes.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::contract::{parse_send_body, Decision, Receipt, SendBody, SendRequest};
use crate::moderation::{decide, MuteList};

/// Counts of answers, for `GET /stats`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub publish: u64,
    pub accept: u64,
    pub reject: u64,
    pub disconnect: u64,
    /// Send or receipt bodies answered 400.
    pub bad_request: u64,
    /// Receipts received (all of them, including those no longer kept).
    pub receipts: u64,
}

/// What changes while the backend runs.
#[derive(Debug, Default)]
pub struct Runtime {
    pub muted: MuteList,
    pub stats: Stats,
    /// The newest receipts, oldest first, at most `Config::max_receipts`.
    pub receipts: VecDeque<Receipt>,
}

impl Runtime {
    /// Keeps `batch`, dropping the oldest receipts beyond `max`.
    pub fn add_receipts(&mut self, batch: Vec<Receipt>, max: usize) {
        self.stats.receipts += batch.len() as u64;
        self.receipts.extend(batch);
        let excess = self.receipts.len().saturating_sub(max);
        self.receipts.drain(..excess);
    }
}

#[derive(Clone)]
pub struct App {
    config: Arc<Config>,
    runtime: Arc<Mutex<Runtime>>,
}

impl App {
    pub fn new(config: Config, runtime: Runtime) -> App {
        App {
            config: Arc::new(config),
            runtime: Arc::new(Mutex::new(runtime)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Runtime> {
        self.runtime.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub fn router(app: App) -> Router {
    Router::new()
        .route("/roomcast/send", post(send))
        .route("/roomcast/receipts", post(receipts))
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route("/receipts", get(list_receipts))
        .route("/stats", get(stats))
        .route("/mute", get(list_muted))
        .route("/mute/{user}", post(mute).delete(unmute))
        .with_state(app)
}

/// Serves until `shutdown` resolves, then finishes the requests in flight.
pub async fn serve(
    listener: TcpListener,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown)
        .await
}

/// `POST /roomcast/send`: one viewer's send → 200 with the decision; a batch `{"sends":[…]}` →
/// 200 `{"results":[…]}`; or 400.
async fn send(State(app): State<App>, body: Bytes) -> Response {
    let sends = match parse_send_body(&body) {
        Ok(sends) => sends,
        Err(error) => {
            app.lock().stats.bad_request += 1;
            tracing::warn!(%error, "bad send body");
            return bad_request(&error);
        }
    };
    match sends {
        SendBody::One(send) => Json(decide_and_count(&app, &[send]).remove(0)).into_response(),
        SendBody::Batch(sends) => {
            Json(json!({ "results": decide_and_count(&app, &sends) })).into_response()
        }
    }
}

/// The decisions about `sends` (under one lock), counted and, other than publish, logged.
fn decide_and_count(app: &App, sends: &[SendRequest]) -> Vec<Decision> {
    let decisions: Vec<Decision> = {
        let mut runtime = app.lock();
        let runtime = &mut *runtime;
        sends
            .iter()
            .map(|send| {
                let decision = decide(&app.config, &runtime.muted, send);
                let stats = &mut runtime.stats;
                match decision {
                    Decision::Publish { .. } => stats.publish += 1,
                    Decision::Accept => stats.accept += 1,
                    Decision::Reject { .. } => stats.reject += 1,
                    Decision::Disconnect { .. } => stats.disconnect += 1,
                }
                decision
            })
            .collect()
    };
    // One line per answer other than publish, with the answer as sent.
    for (send, decision) in sends.iter().zip(&decisions) {
        if matches!(decision, Decision::Publish { .. }) {
            continue;
        }
        let edge = send.conn.as_ref().map_or("", |c| c.edge.as_str());
        let answer = serde_json::to_string(decision).unwrap_or_default();
        tracing::info!(
            user = %send.user,
            room = %send.room,
            kind = %send.kind,
            edge,
            %answer,
            "{}",
            decision.result()
        );
    }
    decisions
}

/// `POST /roomcast/receipts`: a JSON array of receipts → 204, or 400.
async fn receipts(State(app): State<App>, body: Bytes) -> Response {
    match serde_json::from_slice::<Vec<Receipt>>(&body) {
        Ok(batch) => {
            app.lock().add_receipts(batch, app.config.max_receipts);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(error) => {
            app.lock().stats.bad_request += 1;
            tracing::warn!(%error, "bad receipts body");
            bad_request(&error.to_string())
        }
    }
}

/// `GET /receipts`: `{"total": n, "kept": k, "receipts": [...]}`, newest last.
async fn list_receipts(State(app): State<App>) -> Response {
    #[derive(Serialize)]
    struct Listing<'a> {
        total: u64,
        kept: usize,
        receipts: &'a VecDeque<Receipt>,
    }
    let body = {
        let runtime = app.lock();
        serde_json::to_vec(&Listing {
            total: runtime.stats.receipts,
            kept: runtime.receipts.len(),
            receipts: &runtime.receipts,
        })
    };
    match body {
        Ok(body) => ([(CONTENT_TYPE, "application/json")], body).into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

/// `GET /stats`: the answer counts.
async fn stats(State(app): State<App>) -> Json<Stats> {
    Json(app.lock().stats.clone())
}

/// `GET /mute`: the muted users, sorted.
async fn list_muted(State(app): State<App>) -> Json<serde_json::Value> {
    Json(json!({ "muted": app.lock().muted.users() }))
}

/// `POST /mute/{user}`: `{"user": .., "muted": true, "changed": bool}`.
async fn mute(State(app): State<App>, Path(user): Path<String>) -> Json<serde_json::Value> {
    let changed = app.lock().muted.mute(&user);
    tracing::info!(%user, changed, "muted");
    Json(json!({ "user": user, "muted": true, "changed": changed }))
}

/// `DELETE /mute/{user}`: `{"user": .., "muted": false, "changed": bool}`.
async fn unmute(State(app): State<App>, Path(user): Path<String>) -> Json<serde_json::Value> {
    let changed = app.lock().muted.unmute(&user);
    tracing::info!(%user, changed, "unmuted");
    Json(json!({ "user": user, "muted": false, "changed": changed }))
}

/// 400 `{"error":{"code":"bad_request","message":...}}` (roomcast-control's error shape).
fn bad_request(message: &str) -> Response {
    let body = json!({ "error": { "code": "bad_request", "message": message } });
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Starts the backend on an ephemeral port; it stops when the test's runtime ends.
    async fn start(config: Config) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = App::new(config, Runtime::default());
        tokio::spawn(serve(listener, app, std::future::pending()));
        addr
    }

    /// One HTTP/1.1 request over a fresh connection: (status, body as JSON or `null`).
    async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response
            .split_once("\r\n\r\n")
            .expect("a complete response");
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let json = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"))
        };
        (status, json)
    }

    fn config() -> Config {
        Config {
            banned_words: vec!["spam".chars().collect()],
            banned_users: ["troll".to_owned()].into(),
            accept_kinds: ["like".to_owned()].into(),
            max_receipts: 3,
            ..Config::default()
        }
    }

    #[tokio::test]
    async fn send_and_receipts_end_to_end() {
        let addr = start(config()).await;
        let chat = r#"{"user":"u42","room":"r1","kind":"chat","data":{"text":"Spam 666"},"conn":{"edge":"e1","transport":"ws-json","peer":"127.0.0.1:50312"}}"#;
        let (status, answer) = http(addr, "POST", "/roomcast/send", chat).await;
        assert_eq!(status, 200);
        assert_eq!(answer["result"], "publish");
        assert_eq!(answer["data"]["text"], "**** 666");
        assert_eq!(answer["data"]["level"], crate::moderation::level("u42"));

        let like = r#"{"user":"u42","room":"r1","kind":"like","data":null}"#;
        let (status, answer) = http(addr, "POST", "/roomcast/send", like).await;
        assert_eq!((status, answer), (200, json!({"result": "accept"})));

        let banned = r#"{"user":"troll","room":"r1","kind":"chat","data":"hi"}"#;
        let (_, answer) = http(addr, "POST", "/roomcast/send", banned).await;
        assert_eq!(
            answer,
            json!({"result": "disconnect", "code": 4403, "reason": "banned"})
        );

        // A batch gets one decision per send, in order, counted like single sends.
        let batch = format!(r#"{{"sends":[{like},{banned},{chat}]}}"#);
        let (status, answer) = http(addr, "POST", "/roomcast/send", &batch).await;
        assert_eq!(status, 200);
        let results = answer["results"].as_array().expect("results");
        let kinds: Vec<&str> = results
            .iter()
            .map(|r| r["result"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["accept", "disconnect", "publish"]);
        assert_eq!(results[2]["data"]["text"], "**** 666");
        let (_, stats) = http(addr, "GET", "/stats", "").await;
        assert_eq!(
            (&stats["publish"], &stats["accept"], &stats["disconnect"]),
            (&json!(2), &json!(2), &json!(2))
        );

        // Five receipts with max 3 kept: the oldest two are dropped, the total counts all.
        let batch: Vec<Value> = (1..=5)
            .map(|seq| json!({"user": "u42", "msg_seq": seq, "edge": "e1", "at_ms": 1_764_860_000_000u64 + seq}))
            .collect();
        let (status, body) = http(
            addr,
            "POST",
            "/roomcast/receipts",
            &json!(batch[..2]).to_string(),
        )
        .await;
        assert_eq!((status, body), (204, Value::Null));
        let (status, _) = http(
            addr,
            "POST",
            "/roomcast/receipts",
            &json!(batch[2..]).to_string(),
        )
        .await;
        assert_eq!(status, 204);
        let (status, listing) = http(addr, "GET", "/receipts", "").await;
        assert_eq!(status, 200);
        assert_eq!(listing["total"], 5);
        assert_eq!(listing["kept"], 3);
        assert_eq!(listing["receipts"], json!(batch[2..]));

        let (_, stats) = http(addr, "GET", "/stats", "").await;
        assert_eq!(
            stats,
            json!({"publish": 2, "accept": 2, "reject": 0, "disconnect": 2, "bad_request": 0, "receipts": 5})
        );
    }

    #[tokio::test]
    async fn runtime_mute_via_the_routes() {
        let addr = start(config()).await;
        let chat = r#"{"user":"u7","room":"r1","kind":"chat","data":"hello"}"#;
        assert_eq!(
            http(addr, "POST", "/roomcast/send", chat).await.1["result"],
            "publish"
        );

        let (status, body) = http(addr, "POST", "/mute/u7", "").await;
        assert_eq!(
            (status, body),
            (200, json!({"user": "u7", "muted": true, "changed": true}))
        );
        assert_eq!(
            http(addr, "GET", "/mute", "").await.1,
            json!({"muted": ["u7"]})
        );
        let (status, answer) = http(addr, "POST", "/roomcast/send", chat).await;
        assert_eq!(status, 200);
        assert_eq!(
            answer,
            json!({"result": "reject", "code": "muted", "message": "you are muted in this room"})
        );

        let (_, body) = http(addr, "DELETE", "/mute/u7", "").await;
        assert_eq!(body, json!({"user": "u7", "muted": false, "changed": true}));
        assert_eq!(
            http(addr, "POST", "/roomcast/send", chat).await.1["result"],
            "publish"
        );
    }

    #[tokio::test]
    async fn malformed_bodies_are_400_with_a_json_error() {
        let addr = start(config()).await;
        for body in ["", "{", r#"{"room":"r1","kind":"chat"}"#] {
            let (status, answer) = http(addr, "POST", "/roomcast/send", body).await;
            assert_eq!(status, 400, "{body:?}");
            assert_eq!(answer["error"]["code"], "bad_request");
            assert!(answer["error"]["message"].is_string());
        }
        let (status, _) = http(addr, "POST", "/roomcast/receipts", r#"{"user":"u1"}"#).await;
        assert_eq!(status, 400);
        let (status, _) = http(
            addr,
            "POST",
            "/roomcast/receipts",
            r#"[{"user":"u1","msg_seq":-1,"edge":"e1","at_ms":1}]"#,
        )
        .await;
        assert_eq!(status, 400);
        assert_eq!(http(addr, "GET", "/stats", "").await.1["bad_request"], 5);
        let (status, body) = http(addr, "GET", "/healthz", "").await;
        assert_eq!((status, body), (200, json!({"status": "ok"})));
    }
}
