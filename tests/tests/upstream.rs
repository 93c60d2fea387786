//! Upstream (viewers sending over their own connection) and receipts: a client's `send` of
//! `{room, kind, data}` into a room it has joined gets exactly one reply — ok with the room
//! `msg_seq` it was published under, ok with `"broadcast":false` (taken, not broadcast), or an
//! error — and a published send reaches every member of the room, on every edge and in every
//! wire format, with `from` = the sender, priority 3 and `data` byte for byte, and a
//! connection's sends in the order it sent them.
//!
//! The edge checks each send in this order and refuses it at once: the token may send
//! (`forbidden`), the room is joined (`not_joined`), `--max-send-bytes` (`too_big`), `data` is
//! JSON and `kind` one of `--send-kinds` (`bad_request`), the connection's and the user's token
//! buckets on this edge (`rate_limited` with a `retry_after_ms` that holds);
//! `--send-flood-refusals` refusals within the window close the connection with 4030 `send
//! flood`, and at most 16 sends wait for their replies per connection. The control plane then
//! publishes (`--send-mode direct`), refuses (`off`: `forbidden`) or asks the platform
//! (`proxy`): publish as sent or replaced, accept (`broadcast:false`), reject (`rejected` with
//! the platform's code and message), disconnect (the platform's 4xxx close); a platform that is
//! slow, failing, full or answering outside the contract makes the send `unavailable`, as does
//! a link to a control plane that is gone. A room's `--send-budgets` per tick turn further
//! sends into `broadcast:false`, with no gap in the room's numbering.
//!
//! Receipts: a message published to a user with `"ack":true` arrives with `ack`; the user's
//! `ack` op is answered at once (`forbidden` for another user's), and the control plane answers
//! `GET /v1/users/{user}/messages/{seq}` with whether it was acknowledged, where and when, and
//! reports each receipt once to `--receipt-url` (retrying what the platform failed to take, at
//! most one request per 100 ms). The binary layout of the new fields (`from` 0x20, `ack` 0x10,
//! reply flags 0x08/0x10, error details 0x01/0x02) is checked byte for byte by a hand-written
//! TCP client.
//!
//! Everything end to end: the real control plane, edges and sample backend
//! (`roomcast-example-backend`), or a platform played by the test over hand-written HTTP/1.1;
//! every wire format, both drivers. Timings are only ever checked loosely.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use roomcast_proto::client::{encode_op, ReplyDetails};
use roomcast_tests::backend::backend_binary;
use roomcast_tests::client::{binary_op, OpResult};
use roomcast_tests::control::{build_binaries, ApiKeyFrom};
use roomcast_tests::http::poll;
use roomcast_tests::metrics::{scrape, Scrape};
use roomcast_tests::process::free_local_addrs;
use roomcast_tests::tokens::token_with_send_claim;
use roomcast_tests::{
    assert_error, for_each_driver, Api, Backend, Client, Control, Incoming, PushMessage, Target,
    WireFormat, WAIT,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// Long enough for a message that should not come to show.
const QUIET: Duration = Duration::from_millis(400);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The wire format's name in the platform's `conn.transport`.
fn transport_name(format: WireFormat) -> &'static str {
    match format {
        WireFormat::WsJson => "ws-json",
        WireFormat::WsBinary => "ws-binary",
        WireFormat::Tcp => "tcp",
    }
}

/// Asserts that a send was answered ok with a `msg_seq` (and not `broadcast:false`), and
/// returns the seq.
#[track_caller]
fn published_seq(client: &Client, result: OpResult) -> u64 {
    assert_eq!(result, Ok(()), "{}: the send was refused", client.label);
    let details = client.last_details();
    assert!(
        !details.not_broadcast,
        "{}: published sends are not `broadcast:false`: {details:?}",
        client.label
    );
    details.msg_seq.unwrap_or_else(|| {
        panic!(
            "{}: an ok send reply without msg_seq: {details:?}",
            client.label
        )
    })
}

/// Asserts that a send was answered ok with `"broadcast":false` and no `msg_seq`.
#[track_caller]
fn assert_not_broadcast(client: &Client, result: OpResult) {
    assert_eq!(result, Ok(()), "{}: the send was refused", client.label);
    let details = client.last_details();
    assert!(
        details.not_broadcast && details.msg_seq.is_none(),
        "{}: expected ok with broadcast:false and no msg_seq: {details:?}",
        client.label
    );
}

/// Asserts an error reply `code` with a non-empty message and returns the reply's details.
#[track_caller]
fn assert_refused(client: &Client, result: OpResult, code: &str) -> ReplyDetails {
    match &result {
        Err((got, message)) if got == code => assert!(
            !message.is_empty(),
            "{}: a `{code}` error without a message",
            client.label
        ),
        other => panic!("{}: expected a `{code}` error, got {other:?}", client.label),
    }
    client.last_details().clone()
}

/// Sends `data` and asserts it was published; returns its `msg_seq`.
async fn send_published(client: &mut Client, room: &str, kind: &str, data: &str) -> u64 {
    let result = client.send_msg(room, kind, data.as_bytes()).await;
    published_seq(client, result)
}

/// Asserts that `msg` is a viewer's send as published: seq, priority, kind, `from`, no `ack`,
/// and `data` byte for byte.
#[track_caller]
fn assert_sent_message(msg: &PushMessage, seq: u64, from: &str, kind: &str, data: &[u8]) {
    assert_eq!(msg.seq, seq, "{msg:?}");
    assert_eq!(
        msg.priority, 3,
        "a send is published at priority 3: {msg:?}"
    );
    assert_eq!(msg.kind, kind, "{msg:?}");
    assert_eq!(msg.from.as_deref(), Some(from), "{msg:?}");
    assert!(!msg.ack, "{msg:?}");
    assert_eq!(
        &msg.data[..],
        data,
        "data must arrive byte for byte: got {:?}, sent {:?}",
        String::from_utf8_lossy(&msg.data),
        String::from_utf8_lossy(data)
    );
}

/// `msg.data` as JSON.
#[track_caller]
fn data_json(msg: &PushMessage) -> Value {
    serde_json::from_slice(&msg.data)
        .unwrap_or_else(|e| panic!("message data is not JSON ({e}): {msg:?}"))
}

/// The next `n` messages of `room` for `client` (anything else arriving first fails).
async fn room_msgs(client: &mut Client, room: &str, n: usize) -> Vec<PushMessage> {
    client
        .recv_messages(&Target::Room(room.to_owned()), n, WAIT)
        .await
}

/// The next `n` messages of `target` for `client`, with the raw text (or bytes) of the
/// batches that held them.
async fn recv_with_raw(
    client: &mut Client,
    target: &Target,
    n: usize,
) -> (Vec<PushMessage>, Vec<String>) {
    let mut msgs = Vec::new();
    let mut raws = Vec::new();
    while msgs.len() < n {
        match client.next(WAIT).await {
            Incoming::Batch {
                target: t,
                msgs: batch,
                raw,
            } if t == *target => {
                msgs.extend(batch);
                raws.push(String::from_utf8_lossy(&raw).into_owned());
            }
            other => panic!("{}: waiting for {n} messages, got {other:?}", client.label),
        }
    }
    (msgs, raws)
}

/// Reads until `n` replies came, in whatever order; messages read meanwhile are returned
/// beside them. Anything else, or `wait` passing first, fails.
async fn read_replies(
    client: &mut Client,
    n: usize,
    wait: Duration,
) -> (Vec<(u64, OpResult, ReplyDetails)>, Vec<PushMessage>) {
    let deadline = Instant::now() + wait;
    let mut replies = Vec::new();
    let mut msgs = Vec::new();
    while replies.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.next_within(left).await {
            Some(Incoming::Reply {
                seq,
                result,
                details,
            }) => replies.push((seq, result, *details)),
            Some(Incoming::Batch { msgs: batch, .. }) => msgs.extend(batch),
            other => panic!(
                "{}: waiting for {n} replies ({} so far: {replies:?}), got {other:?}",
                client.label,
                replies.len()
            ),
        }
    }
    (replies, msgs)
}

/// Connects as `user` in `format` and joins `room`.
async fn member(
    edge: &impl roomcast_tests::edge::EdgeAddrs,
    format: WireFormat,
    user: &str,
    room: &str,
) -> Client {
    let mut client = Client::connect_authed(edge, format, user).await;
    client
        .join(room)
        .await
        .unwrap_or_else(|e| panic!("{user} ({format:?}) joins {room}: {e:?}"));
    client
}

/// The value of `name{result="<result>"}` on a scrape (0 when absent).
fn by_result(page: &Scrape, name: &str, result: &str) -> f64 {
    page.get(&format!("{name}{{result=\"{result}\"}}"))
        .unwrap_or(0.0)
}

/// Polls the control plane's `/metrics` until `roomcast_control_sends_total` shows `want`
/// (`result → count`) exactly, and returns the page.
async fn await_control_sends(api_addr: SocketAddr, want: &[(&str, f64)]) -> Scrape {
    await_counts(api_addr, "roomcast_control_sends_total", want).await
}

/// Polls `/metrics` at `addr` until metric `name` shows `want` (`result → count`) exactly for
/// each listed result, and returns the page.
async fn await_counts(addr: SocketAddr, name: &str, want: &[(&str, f64)]) -> Scrape {
    poll(
        &format!("{name} at {addr} = {want:?}"),
        WAIT,
        || async move {
            let page = scrape(addr).await;
            let got: Vec<(&str, f64)> = want
                .iter()
                .map(|(result, _)| (*result, by_result(&page, name, result)))
                .collect();
            if got == want {
                Ok(page)
            } else {
                Err(format!("{got:?}"))
            }
        },
    )
    .await
}

/// The id of the one edge `GET /v1/edges` lists (once it lists one: an embedded edge may
/// still be registering when the API is up).
async fn only_edge_id(api: &Api) -> String {
    poll("GET /v1/edges lists the edge", WAIT, || async {
        let edges = api.edges().await;
        match &edges[..] {
            [] => Err("no edge yet".to_owned()),
            [edge] => Ok(edge["edge_id"]
                .as_str()
                .unwrap_or_else(|| panic!("no edge_id: {edges:?}"))
                .to_owned()),
            _ => panic!("more than one edge: {edges:?}"),
        }
    })
    .await
}

/// Milliseconds since the Unix epoch.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

// ---------------------------------------------------------------------------------------------
// A platform played by the test: the send proxy's other end, over hand-written HTTP/1.1
// ---------------------------------------------------------------------------------------------

/// The platform's backend as the test plays it: a keep-alive HTTP/1.1 server that records each
/// question (the request's JSON body) and answers as the question's `data.do` says:
///
/// - absent or `publish`: `{"result":"publish"}`;
/// - `modify`: publish with `{"x":1}`, priority 1, kind `vip`;
/// - `reject`: `{"result":"reject","code":"slow_down","message":"not now"}`;
/// - `disconnect`: close code `data.code` (default 4999), reason `go away`;
/// - `status`: HTTP `data.status` (default 503);
/// - `garbage`: 200 with a body that is not JSON; `maybe`: 200 `{"result":"maybe"}`;
/// - `hang_up`: closes the connection without an answer;
/// - `sleep`: publish after `data.ms` milliseconds;
/// - `hold`: publish once [`release`](Self::release) is called;
/// - `accept`: `{"result":"accept"}`.
///
/// A body `{"sends":[…]}` is a batch (`--send-proxy-batch`): each send is recorded and
/// answered as above inside `{"results":[…]}` (a failing status fails the batch; a send with
/// `short` makes the list one result short); the batch's size is recorded.
/// A body that is a JSON array is a receipt report: it is recorded with when it came and the
/// status it got, 503 for the first `fail_reports` of them, then 204.
struct Platform {
    addr: SocketAddr,
    asked: Arc<Mutex<Vec<Value>>>,
    batches: Arc<Mutex<Vec<usize>>>,
    reports: Arc<Mutex<Vec<Report>>>,
    release: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

/// One receipt report request as the platform got it.
#[derive(Debug, Clone)]
struct Report {
    at: Instant,
    status: u16,
    receipts: Vec<Value>,
}

/// What every connection of a [`Platform`] shares.
#[derive(Clone)]
struct PlatformState {
    asked: Arc<Mutex<Vec<Value>>>,
    batches: Arc<Mutex<Vec<usize>>>,
    reports: Arc<Mutex<Vec<Report>>>,
    fail_reports: Arc<AtomicUsize>,
    released: watch::Receiver<bool>,
}

impl Platform {
    async fn start() -> Platform {
        Platform::start_failing_reports(0).await
    }

    /// A platform that answers its first `failures` receipt reports 503.
    async fn start_failing_reports(failures: usize) -> Platform {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the platform");
        let addr = listener.local_addr().expect("platform address");
        let (release, released) = watch::channel(false);
        let state = PlatformState {
            asked: Arc::default(),
            batches: Arc::default(),
            reports: Arc::default(),
            fail_reports: Arc::new(AtomicUsize::new(failures)),
            released,
        };
        let (asked, reports) = (Arc::clone(&state.asked), Arc::clone(&state.reports));
        let batches = Arc::clone(&state.batches);
        let accept = tokio::spawn(async move {
            // Dropped with this task: aborts every connection's task.
            let mut conns = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                conns.spawn(serve_platform_conn(stream, state.clone()));
                while conns.try_join_next().is_some() {}
            }
        });
        Platform {
            addr,
            asked,
            batches,
            reports,
            release,
            accept,
        }
    }

    fn receipt_url(&self) -> String {
        format!("http://{}/platform/receipts", self.addr)
    }

    /// The receipt reports received so far, oldest first.
    fn reports(&self) -> Vec<Report> {
        self.reports.lock().expect("platform lock").clone()
    }

    fn url(&self) -> String {
        format!("http://{}/platform/send", self.addr)
    }

    /// The questions asked so far, oldest first.
    fn asked(&self) -> Vec<Value> {
        self.asked.lock().expect("platform lock").clone()
    }

    /// The sizes of the batched requests so far, oldest first.
    fn batches(&self) -> Vec<usize> {
        self.batches.lock().expect("platform lock").clone()
    }

    /// Lets every held (and every future `hold`) question be answered.
    fn release(&self) {
        let _ = self.release.send(true);
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Reads more bytes into `buf`; false at the end of the connection or on an error.
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// Serves one keep-alive connection of the control plane's proxy client.
async fn serve_platform_conn(mut stream: TcpStream, mut state: PlatformState) {
    let mut buf = Vec::new();
    loop {
        let (head_len, body_len) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut request = httparse::Request::new(&mut headers);
            match request.parse(&buf) {
                Ok(httparse::Status::Complete(head_len)) => {
                    let body_len = request
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .and_then(|h| std::str::from_utf8(h.value).ok())
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    break (head_len, body_len);
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return,
            }
            if !read_more(&mut stream, &mut buf).await {
                return;
            }
        };
        while buf.len() < head_len + body_len {
            if !read_more(&mut stream, &mut buf).await {
                return;
            }
        }
        let question: Value =
            serde_json::from_slice(&buf[head_len..head_len + body_len]).unwrap_or(Value::Null);
        buf.drain(..head_len + body_len);
        if let Value::Array(receipts) = question {
            let fail = state
                .fail_reports
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok();
            let status = if fail { 503 } else { 204 };
            state.reports.lock().expect("platform lock").push(Report {
                at: Instant::now(),
                status,
                receipts,
            });
            let response = format!("HTTP/1.1 {status} Whatever\r\nContent-Length: 0\r\n\r\n");
            if stream.write_all(response.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        let answer = match question.get("sends").and_then(Value::as_array) {
            Some(sends) => {
                state
                    .batches
                    .lock()
                    .expect("platform lock")
                    .push(sends.len());
                let mut results = Vec::new();
                let mut failed = None;
                for send in sends {
                    match platform_answer(&mut state, send).await {
                        None => return,
                        Some((200, body)) => results.push(body),
                        Some(other) => failed = Some(other),
                    }
                }
                if sends.iter().any(|s| s["data"]["do"] == "short") {
                    results.pop();
                }
                failed.unwrap_or_else(|| (200, format!(r#"{{"results":[{}]}}"#, results.join(","))))
            }
            None => match platform_answer(&mut state, &question).await {
                None => return,
                Some(answer) => answer,
            },
        };
        let (status, body) = answer;
        let response = format!(
            "HTTP/1.1 {status} Whatever\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Records one question and answers it as its `data.do` says: status and body, or `None` to
/// hang up.
async fn platform_answer(state: &mut PlatformState, question: &Value) -> Option<(u16, String)> {
    state
        .asked
        .lock()
        .expect("platform lock")
        .push(question.clone());
    let data = &question["data"];
    let publish = r#"{"result":"publish"}"#.to_owned();
    Some(match data["do"].as_str().unwrap_or("publish") {
        "modify" => (
            200,
            r#"{"result":"publish","data":{"x":1},"priority":1,"kind":"vip"}"#.to_owned(),
        ),
        "reject" => (
            200,
            r#"{"result":"reject","code":"slow_down","message":"not now"}"#.to_owned(),
        ),
        "accept" => (200, r#"{"result":"accept"}"#.to_owned()),
        "disconnect" => (
            200,
            format!(
                r#"{{"result":"disconnect","code":{},"reason":"go away"}}"#,
                data["code"].as_u64().unwrap_or(4999)
            ),
        ),
        "status" => (
            data["status"].as_u64().unwrap_or(503) as u16,
            r#"{"error":"down"}"#.to_owned(),
        ),
        "null_data" => (200, r#"{"result":"publish","data":null}"#.to_owned()),
        "garbage" => (200, "this is not json".to_owned()),
        "maybe" => (200, r#"{"result":"maybe"}"#.to_owned()),
        "hang_up" => return None,
        "sleep" => {
            let ms = data["ms"].as_u64().unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            (200, publish)
        }
        "hold" => {
            let _ = state.released.wait_for(|r| *r).await;
            (200, publish)
        }
        _ => (200, publish),
    })
}

// ---------------------------------------------------------------------------------------------
// 1. Direct mode: published to every member
// ---------------------------------------------------------------------------------------------

#[test]
fn a_direct_send_reaches_every_member_on_every_edge_with_its_msg_seq_and_sender() {
    build_binaries();
    for_each_driver(|io| async move {
        // Room for every send of the scenario in one burst: the limits are not the subject.
        let limits = [("ROOMCAST_SEND_RATE", "20"), ("ROOMCAST_SEND_BURST", "20")];
        let control = Control::start_embedded_with(io, &[], &limits, ApiKeyFrom::Flag).await;
        let embedded = control.embedded_edge.expect("an embedded edge");
        let edge_b = control.start_edge(io, "edge-b", &[]).await;
        let room = "show";
        // One viewer per format on the embedded edge, one more on edge-b; each sends once and
        // all of them (the sender too) receive every send.
        let mut viewers = Vec::new();
        for (i, format) in WireFormat::ALL.into_iter().enumerate() {
            viewers.push((
                format!("viewer-{i}"),
                member(&embedded, format, &format!("viewer-{i}"), room).await,
            ));
        }
        viewers.push((
            "viewer-b".to_owned(),
            member(&edge_b, WireFormat::WsBinary, "viewer-b", room).await,
        ));

        let mut last_seq = None;
        let mut sent = Vec::new();
        for i in 0..viewers.len() {
            // Odd spacing, escapes and non-ASCII: the data must come through byte for byte.
            let data =
                format!(r#"{{"text":"666 \"弹幕\" 🎉 \u00e9", "n":{i},  "z":[1, 2.50, null]}}"#);
            let (user, sender) = &mut viewers[i];
            let seq = send_published(sender, room, "chat", &data).await;
            if let Some(last) = last_seq {
                assert_eq!(seq, last + 1, "{user}: sends take the room's next seq");
            }
            last_seq = Some(seq);
            let user = user.clone();
            for (_, viewer) in viewers.iter_mut() {
                let got = room_msgs(viewer, room, 1).await;
                assert_sent_message(&got[0], seq, &user, "chat", data.as_bytes());
            }
            sent.push((seq, user, data));
        }

        // The JSON encoding names the sender between the kind and the data.
        let json_viewer = &mut viewers[0].1;
        let seq2 = send_published(json_viewer, room, "like", r#"{"n":1}"#).await;
        assert_eq!(seq2, sent.last().unwrap().0 + 1);
        match json_viewer.next(WAIT).await {
            Incoming::Batch { msgs, raw, .. } => {
                let text = String::from_utf8_lossy(&raw);
                assert!(
                    text.contains(r#""kind":"like","from":"viewer-0","data":{"n":1}"#),
                    "{text}"
                );
                assert_eq!(msgs.len(), 1);
            }
            other => panic!("expected the like, got {other:?}"),
        }
        for (_, viewer) in viewers.iter_mut().skip(1) {
            let got = room_msgs(viewer, room, 1).await;
            assert_sent_message(&got[0], seq2, "viewer-0", "like", br#"{"n":1}"#);
        }

        // A member that joins right before a send (its join answered, nothing else between)
        // receives it, on the sender's edge and on the other one.
        let mut late_a = member(&embedded, WireFormat::Tcp, "late-a", room).await;
        let mut late_b = member(&edge_b, WireFormat::WsJson, "late-b", room).await;
        let sender = &mut viewers[2].1;
        let seq3 = send_published(sender, room, "chat", r#""right after""#).await;
        for late in [&mut late_a, &mut late_b] {
            let got = room_msgs(late, room, 1).await;
            assert_sent_message(&got[0], seq3, "viewer-2", "chat", br#""right after""#);
        }

        // Sends of one connection are published in the order they were sent, even when they
        // arrive together (three TCP frames in one write).
        let tcp_sender = &mut viewers[2].1;
        let ops: Vec<_> = (0..3)
            .map(|n| tcp_sender.send_op(room, "chat", format!("{{\"order\":{n}}}").as_bytes()))
            .collect();
        let mut frames = Vec::new();
        for op in &ops {
            frames.extend_from_slice(&encode_op(WireFormat::Tcp, op, [0; 4]));
        }
        tcp_sender.send_raw_tcp(&frames).await;
        let (mut replies, _) = read_replies(tcp_sender, 3, WAIT).await;
        replies.sort_by_key(|r| r.0);
        let msg_seqs: Vec<Option<u64>> = replies.iter().map(|r| r.2.msg_seq).collect();
        let next = seq3 + 1;
        assert_eq!(
            msg_seqs,
            [Some(next), Some(next + 1), Some(next + 2)],
            "sends 1, 2, 3 of one connection must be published in that order: {replies:?}"
        );
        let got = room_msgs(&mut late_a, room, 3).await;
        let order: Vec<String> = got
            .iter()
            .map(|m| String::from_utf8_lossy(&m.data).into_owned())
            .collect();
        assert_eq!(
            order,
            [r#"{"order":0}"#, r#"{"order":1}"#, r#"{"order":2}"#]
        );

        // History keeps the senders.
        let (result, details) = viewers[3].1.history(room, 0, 100).await;
        assert_eq!(result, Ok(()));
        let history = details.msgs.expect("history msgs");
        for (seq, user, data) in &sent {
            let stored = history
                .iter()
                .find(|m| m.seq == *seq)
                .unwrap_or_else(|| panic!("seq {seq} not in history: {history:?}"));
            assert_sent_message(stored, *seq, user, "chat", data.as_bytes());
        }

        await_control_sends(control.api_addr(), &[("published", 9.0)]).await;
    });
}

// ---------------------------------------------------------------------------------------------
// 2. The edge's refusals
// ---------------------------------------------------------------------------------------------

/// A published send as the test expects members to see it.
struct Sent {
    seq: u64,
    from: String,
    kind: &'static str,
    data: String,
}

#[test]
fn the_edge_refuses_sends_in_the_protocols_order_in_every_format_and_the_connection_keeps_working()
{
    build_binaries();
    for_each_driver(|io| async move {
        let admin = free_local_addrs(1)[0];
        let admin_arg = admin.to_string();
        let control = Control::start_embedded_with(
            io,
            &["--edge-admin-listen", &admin_arg],
            &[
                ("ROOMCAST_MAX_SEND_BYTES", "64"),
                ("ROOMCAST_SEND_RATE", "100"),
                ("ROOMCAST_SEND_BURST", "100"),
                ("ROOMCAST_SEND_KINDS", "chat, like,vote"),
            ],
            ApiKeyFrom::Flag,
        )
        .await;
        let edge = control.embedded_edge.expect("an embedded edge");
        let room = "hall";
        let mut watcher = member(&edge, WireFormat::WsJson, "watcher", room).await;
        // `data` of exactly --max-send-bytes, and one byte more.
        let exactly_max = format!("\"{}\"", "a".repeat(62));
        let one_over = format!("\"{}\"", "a".repeat(63));
        assert_eq!((exactly_max.len(), one_over.len()), (64, 65));
        let mut refusals: BTreeMap<&'static str, f64> = BTreeMap::new();
        let mut published = 0.0;

        for (i, format) in WireFormat::ALL.into_iter().enumerate() {
            let user = format!("viewer-{i}");
            let mut c = Client::connect_authed(&edge, format, &user).await;
            let mut refused = |c: &Client, result: OpResult, code: &'static str| {
                assert_refused(c, result, code);
                *refusals.entry(code).or_default() += 1.0;
            };
            let mut sent = Vec::new();

            // Never joined; joined and left; not joined comes before too big.
            let r = c.send_msg(room, "chat", b"{}").await;
            refused(&c, r, "not_joined");
            c.join(room).await.expect("join");
            c.leave(room).await.expect("leave");
            let r = c.send_msg(room, "chat", b"{}").await;
            refused(&c, r, "not_joined");
            let r = c.send_msg(room, "chat", one_over.as_bytes()).await;
            refused(&c, r, "not_joined");
            c.join(room).await.expect("join again");

            // One byte over --max-send-bytes is too big, whatever else is wrong with it;
            // exactly the maximum is published.
            let r = c.send_msg(room, "chat", one_over.as_bytes()).await;
            refused(&c, r, "too_big");
            let r = c.send_msg(room, "gift", one_over.as_bytes()).await;
            refused(&c, r, "too_big");
            let seq = send_published(&mut c, room, "chat", &exactly_max).await;
            sent.push(Sent {
                seq,
                from: user.clone(),
                kind: "chat",
                data: exactly_max.clone(),
            });

            // Kinds outside --send-kinds (matched exactly); a configured one is published.
            for kind in ["gift", "CHAT", "chat ", ""] {
                let r = c.send_msg(room, kind, b"{}").await;
                refused(&c, r, "bad_request");
            }
            let seq = send_published(&mut c, room, "vote", r#"{"option":2}"#).await;
            sent.push(Sent {
                seq,
                from: user.clone(),
                kind: "vote",
                data: r#"{"option":2}"#.into(),
            });

            if format == WireFormat::WsJson {
                // Data that is not JSON makes the op itself malformed: bad_request, seq 0.
                let op = c.send_op(room, "chat", b"not json");
                c.send(&op).await;
                assert_error(c.reply_to(0).await, "bad_request");
                // A send without data: bad_request with its seq.
                let seq = c.next_op_seq();
                c.send_json_text(&format!(
                    r#"{{"op":"send","seq":{seq},"room":"{room}","kind":"chat"}}"#
                ))
                .await;
                assert_error(c.reply_to(seq).await, "bad_request");
            } else {
                // Binary ops carry any bytes: what is not JSON is refused at the edge.
                for data in [&b"not json"[..], b"\xff\xfe", br#"{"a":1} x"#, b""] {
                    let r = c.send_msg(room, "chat", data).await;
                    refused(&c, r, "bad_request");
                }
                // Size comes before JSON.
                let r = c.send_msg(room, "chat", "x".repeat(65).as_bytes()).await;
                refused(&c, r, "too_big");
                // A truncated send op: bad_request with its seq.
                let op = c.send_op(room, "chat", b"{}");
                let payload = binary_op(&op);
                c.send_binary_payload(&payload[..payload.len() - 3]).await;
                assert_error(c.reply_to(op.seq()).await, "bad_request");
                // An unknown op byte: unknown_op, seq 0.
                c.send_binary_payload(&[0x7f, 0, 0, 0, 0, 0, 0, 0, 9]).await;
                assert_error(c.reply_to(0).await, "unknown_op");
            }

            // A token with "send":false (minted by the API for the first format) may join and
            // read but not send: forbidden comes first, before not_joined and too_big.
            let muted_token = if i == 0 {
                let response = control
                    .api
                    .post(
                        "/v1/tokens",
                        &json!({ "user": format!("muted-{i}"), "ttl_s": 600, "send": false }),
                    )
                    .await;
                response.ok()["token"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no token: {response:?}"))
                    .to_owned()
            } else {
                token_with_send_claim(&format!("muted-{i}"), false)
            };
            let mut muted = Client::connect(&edge, format).await;
            muted
                .auth(&muted_token)
                .await
                .expect("a muted token authenticates");
            let r = muted.send_msg(room, "chat", b"{}").await;
            refused(&muted, r, "forbidden");
            muted.join(room).await.expect("a muted viewer joins");
            let r = muted.send_msg(room, "chat", b"{}").await;
            refused(&muted, r, "forbidden");
            let r = muted.send_msg(room, "chat", one_over.as_bytes()).await;
            refused(&muted, r, "forbidden");
            muted.ping().await.expect("a muted viewer stays connected");
            // An explicit "send":true may.
            let allowed_user = format!("allowed-{i}");
            let mut allowed = Client::connect(&edge, format).await;
            allowed
                .auth(&token_with_send_claim(&allowed_user, true))
                .await
                .expect("auth");
            allowed.join(room).await.expect("join");
            let seq = send_published(&mut allowed, room, "like", "1").await;
            sent.push(Sent {
                seq,
                from: allowed_user,
                kind: "like",
                data: "1".into(),
            });

            // After all that the connection still sends.
            let seq = send_published(&mut c, room, "chat", r#"{"text":"still here"}"#).await;
            sent.push(Sent {
                seq,
                from: user.clone(),
                kind: "chat",
                data: r#"{"text":"still here"}"#.into(),
            });

            // The room's members saw the published sends only, numbered without a gap.
            let got = room_msgs(&mut watcher, room, sent.len()).await;
            for (msg, want) in got.iter().zip(&sent) {
                assert_sent_message(msg, want.seq, &want.from, want.kind, want.data.as_bytes());
            }
            for pair in got.windows(2) {
                assert_eq!(pair[1].seq, pair[0].seq + 1, "{got:?}");
            }
            published += sent.len() as f64;
            c.ping().await.expect("still connected");
        }
        watcher.expect_silence(QUIET).await;

        // The edge counts each refusal by its code.
        let mut want: Vec<(&str, f64)> = refusals.into_iter().collect();
        want.push(("published", published));
        assert_eq!(
            want,
            [
                ("bad_request", 20.0),
                ("forbidden", 9.0),
                ("not_joined", 9.0),
                ("too_big", 8.0),
                ("published", 12.0)
            ]
        );
        await_counts(admin, "roomcast_sends_total", &want).await;
        await_control_sends(control.api_addr(), &[("published", published)]).await;
    });
}

// ---------------------------------------------------------------------------------------------
// 3. Rate limits and the flood close
// ---------------------------------------------------------------------------------------------

/// `--send-rate` and `--send-burst` of the rate-limit scenarios: a token every 250 ms.
const RATE: &str = "4";
const BURST: &str = "3";
const TOKEN_EVERY_MS: u32 = 250;

/// Asserts a `rate_limited` reply and returns its `retry_after_ms`, which must be above 0 and
/// at most the time one token takes.
#[track_caller]
fn retry_after(client: &Client, result: OpResult) -> u32 {
    let details = assert_refused(client, result, "rate_limited");
    let ms = details
        .retry_after_ms
        .unwrap_or_else(|| panic!("{}: rate_limited without retry_after_ms", client.label));
    assert!(
        ms > 0 && ms <= TOKEN_EVERY_MS,
        "{}: retry_after_ms {ms} outside 1..={TOKEN_EVERY_MS}",
        client.label
    );
    ms
}

#[test]
fn a_connections_burst_is_then_paced_and_its_retry_after_ms_holds() {
    build_binaries();
    for_each_driver(|io| async move {
        let control = Control::start_embedded_with(
            io,
            &[],
            &[("ROOMCAST_SEND_RATE", RATE), ("ROOMCAST_SEND_BURST", BURST)],
            ApiKeyFrom::Flag,
        )
        .await;
        let edge = control.embedded_edge.expect("an embedded edge");
        let room = "paced";
        let mut watcher = member(&edge, WireFormat::WsJson, "watcher", room).await;
        for (i, format) in WireFormat::ALL.into_iter().enumerate() {
            let user = format!("pacer-{i}");
            let mut c = member(&edge, format, &user, room).await;
            // Refusals before the bucket take no token from it.
            for _ in 0..3 {
                let r = c.send_msg(room, "gift", b"{}").await;
                assert_refused(&c, r, "bad_request");
            }
            // The burst passes, the next send is refused with a retry_after_ms...
            let mut seqs = Vec::new();
            for n in 0..3 {
                seqs.push(send_published(&mut c, room, "chat", &n.to_string()).await);
            }
            let r = c.send_msg(room, "chat", b"3").await;
            let first_wait = retry_after(&c, r);
            // ...that does not grow by asking again...
            let r = c.send_msg(room, "chat", b"3").await;
            let wait = retry_after(&c, r);
            assert!(wait <= first_wait, "{wait} > {first_wait}");
            // ...and holds: after waiting that long, one send passes (and only one).
            tokio::time::sleep(Duration::from_millis(u64::from(wait))).await;
            seqs.push(send_published(&mut c, room, "chat", "3").await);
            let r = c.send_msg(room, "chat", b"4").await;
            retry_after(&c, r);

            let got = room_msgs(&mut watcher, room, 4).await;
            for (n, (msg, seq)) in got.iter().zip(&seqs).enumerate() {
                assert_sent_message(msg, *seq, &user, "chat", n.to_string().as_bytes());
            }
        }
        watcher.expect_silence(QUIET).await;
    });
}

#[test]
fn a_users_connections_on_one_edge_share_one_bucket_and_other_users_and_edges_are_not_affected() {
    build_binaries();
    for_each_driver(|io| async move {
        let control = Control::start_embedded_with(
            io,
            &[],
            &[("ROOMCAST_SEND_RATE", RATE), ("ROOMCAST_SEND_BURST", BURST)],
            ApiKeyFrom::Flag,
        )
        .await;
        let edge = control.embedded_edge.expect("an embedded edge");
        let other_edge = control
            .start_edge(io, "edge-b", &["--send-rate", RATE, "--send-burst", BURST])
            .await;
        let room = "shared";
        // One user, two connections on the embedded edge (and one on edge-b).
        let mut web = member(&edge, WireFormat::WsJson, "fan", room).await;
        let mut app = member(&edge, WireFormat::Tcp, "fan", room).await;
        let mut elsewhere = member(&other_edge, WireFormat::WsBinary, "fan", room).await;
        let mut other = member(&edge, WireFormat::WsBinary, "other", room).await;

        // Three sends across both connections use up the user's burst on this edge, though
        // each connection's own bucket still has tokens: the next on either is refused.
        send_published(&mut web, room, "chat", "1").await;
        send_published(&mut app, room, "chat", "2").await;
        send_published(&mut web, room, "chat", "3").await;
        let r = web.send_msg(room, "chat", b"4").await;
        let web_wait = retry_after(&web, r);
        let r = app.send_msg(room, "chat", b"4").await;
        let app_wait = retry_after(&app, r);

        // Another user on the same edge, and the same user on another edge, have their own.
        for n in 0..3 {
            send_published(&mut other, room, "chat", &n.to_string()).await;
            send_published(&mut elsewhere, room, "chat", &n.to_string()).await;
        }

        // Once the user's bucket has a token again, one of its connections may send.
        tokio::time::sleep(Duration::from_millis(u64::from(web_wait.max(app_wait)))).await;
        send_published(&mut app, room, "chat", "5").await;
        let r = web.send_msg(room, "chat", b"6").await;
        retry_after(&web, r);
    });
}

#[test]
fn refused_sends_up_to_the_flood_limit_close_the_connection_with_4030_and_nothing_else() {
    build_binaries();
    for_each_driver(|io| async move {
        let control = Control::start_embedded_with(
            io,
            &[],
            // Slow refills: a rate-limited send stays refused however slow the host.
            &[
                ("ROOMCAST_SEND_FLOOD_REFUSALS", "20"),
                ("ROOMCAST_SEND_RATE", "0.5"),
            ],
            ApiKeyFrom::Flag,
        )
        .await;
        let edge = control.embedded_edge.expect("an embedded edge");
        let room = "calm";
        let mut watcher = member(&edge, WireFormat::WsBinary, "watcher", room).await;
        for (i, format) in WireFormat::ALL.into_iter().enumerate() {
            let user = format!("flooder-{i}");
            let mut flooder = member(&edge, format, &user, room).await;
            // The same user's other connection, in another format.
            let twin_format = WireFormat::ALL[(i + 1) % 3];
            let mut twin = member(&edge, twin_format, &user, room).await;

            // Refusals of every kind count: rate limits (past the default burst of 5), rooms
            // not joined, kinds not allowed.
            for n in 0..5 {
                send_published(&mut flooder, room, "chat", &n.to_string()).await;
            }
            let mut refusals = 0;
            while refusals < 19 {
                let (r, code) = match refusals % 3 {
                    0 => (flooder.send_msg(room, "chat", b"{}").await, "rate_limited"),
                    1 => (
                        flooder.send_msg("elsewhere", "chat", b"{}").await,
                        "not_joined",
                    ),
                    _ => (flooder.send_msg(room, "gift", b"{}").await, "bad_request"),
                };
                assert_refused(&flooder, r, code);
                refusals += 1;
            }
            // 19 refusals: still open.
            flooder.ping().await.expect("open after 19 refusals");
            // The 20th is answered, then the connection is closed.
            let r = flooder.send_msg("elsewhere", "chat", b"{}").await;
            assert_refused(&flooder, r, "not_joined");
            assert_eq!(
                flooder.expect_close(WAIT).await,
                (4030, "send flood".to_owned()),
                "{format:?}"
            );
            flooder.expect_end(WAIT).await;

            // The user's other connection and the room's members carry on.
            twin.ping().await.expect("the twin is still connected");
            let r = twin.send_msg(room, "chat", b"\"twin\"").await;
            // The user's bucket on this edge was emptied by the flooder.
            retry_after_any(&twin, r);
            for c in [&mut watcher, &mut twin] {
                let got = room_msgs(c, room, 5).await;
                assert!(got.iter().all(|m| m.from.as_deref() == Some(user.as_str())));
            }
            let mut probe = member(&edge, WireFormat::Tcp, &format!("prober-{i}"), room).await;
            let seq = send_published(&mut probe, room, "chat", "\"probe\"").await;
            for c in [&mut watcher, &mut twin, &mut probe] {
                let got = room_msgs(c, room, 1).await;
                assert_sent_message(&got[0], seq, &format!("prober-{i}"), "chat", b"\"probe\"");
            }
        }
    });
}

/// Asserts a `rate_limited` reply with some `retry_after_ms` above 0.
#[track_caller]
fn retry_after_any(client: &Client, result: OpResult) {
    let details = assert_refused(client, result, "rate_limited");
    assert!(
        details.retry_after_ms.is_some_and(|ms| ms > 0),
        "{}: {details:?}",
        client.label
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Proxy mode: the platform decides
// ---------------------------------------------------------------------------------------------

/// Asserts a `rejected` reply with the platform's `code` and `message`.
#[track_caller]
fn assert_rejected(client: &Client, result: OpResult, code: &str, message: &str) {
    assert_eq!(
        result,
        Err(("rejected".to_owned(), message.to_owned())),
        "{}",
        client.label
    );
    assert_eq!(
        client.last_details().platform_code.as_deref(),
        Some(code),
        "{}: {:?}",
        client.label,
        client.last_details()
    );
}

#[test]
fn the_sample_backend_publishes_enriched_filtered_chat_accepts_likes_rejects_the_muted_bans_trolls()
{
    build_binaries();
    backend_binary();
    for_each_driver(|io| async move {
        let backend = Backend::start(&[
            "--banned-users",
            "troll",
            "--muted",
            "mutey",
            "--vip",
            "star",
        ])
        .await;
        let url = backend.send_url();
        // --send-mode defaults to proxy when --send-proxy-url is set.
        let control = Control::start_embedded(io, &["--send-proxy-url", &url]).await;
        let edge = control.embedded_edge.expect("an embedded edge");
        let room = "hall";
        let mut watcher = member(&edge, WireFormat::WsBinary, "watcher", room).await;
        let mut u42 = member(&edge, WireFormat::WsJson, "u42", room).await;
        let mut star = member(&edge, WireFormat::WsBinary, "star", room).await;
        let mut u1 = member(&edge, WireFormat::Tcp, "u1", room).await;
        let mut published: Vec<(u64, &str, Value)> = Vec::new();

        // Chat is published with banned words masked (case-insensitively) and the sender's
        // level and badge set over whatever the viewer sent; other fields are kept.
        let seq = send_published(&mut u42, room, "chat", r#"{"text":"SCAM alert 666"}"#).await;
        published.push((
            seq,
            "u42",
            json!({"text": "**** alert 666", "level": 3, "badge": ""}),
        ));
        let seq = send_published(
            &mut star,
            room,
            "chat",
            r#"{"text":"hi Spam","badge":"admin"}"#,
        )
        .await;
        published.push((
            seq,
            "star",
            json!({"text": "hi ****", "level": 38, "badge": "vip"}),
        ));
        let seq = send_published(
            &mut u1,
            room,
            "chat",
            r#"{"text":"scampi","level":99,"extra":[1]}"#,
        )
        .await;
        published.push((
            seq,
            "u1",
            json!({"text": "****pi", "level": 48, "badge": "fan", "extra": [1]}),
        ));
        // A string is filtered, not enriched.
        let seq = send_published(&mut u1, room, "chat", r#""no spam please""#).await;
        published.push((seq, "u1", json!("no **** please")));

        // Likes are taken by the platform and not broadcast.
        for c in [&mut u42, &mut star, &mut u1] {
            let r = c.send_msg(room, "like", br#"{"n":1}"#).await;
            assert_not_broadcast(c, r);
        }

        // A muted user is rejected with the platform's code and message, in every format.
        for format in WireFormat::ALL {
            let mut mutey = member(&edge, format, "mutey", room).await;
            let r = mutey.send_msg(room, "chat", br#"{"text":"hello"}"#).await;
            assert_rejected(&mutey, r, "muted", "you are muted in this room");
            mutey
                .ping()
                .await
                .expect("a rejected sender stays connected");
        }
        // Muted and unmuted at run time through the backend.
        backend.mute("u42").await;
        let r = u42.send_msg(room, "chat", br#"{"text":"again"}"#).await;
        assert_rejected(&u42, r, "muted", "you are muted in this room");
        backend.unmute("u42").await;
        let seq = send_published(&mut u42, room, "chat", r#"{"text":"back"}"#).await;
        published.push((seq, "u42", json!({"text": "back", "level": 3, "badge": ""})));

        // A banned user's send closes its connection with the platform's 4403, and no reply.
        for format in WireFormat::ALL {
            let mut troll = member(&edge, format, "troll", room).await;
            let op = troll.send_op(room, "chat", br#"{"text":"hi"}"#);
            troll.send(&op).await;
            assert_eq!(
                troll.expect_close(WAIT).await,
                (4403, "banned".to_owned()),
                "{format:?}"
            );
            troll.expect_end(WAIT).await;
        }

        // The room saw exactly what was published, numbered without a gap.
        let got = room_msgs(&mut watcher, room, published.len()).await;
        for (msg, (seq, from, data)) in got.iter().zip(&published) {
            assert_eq!(
                (
                    msg.seq,
                    msg.from.as_deref(),
                    msg.priority,
                    msg.kind.as_str()
                ),
                (*seq, Some(*from), 3, "chat"),
                "{msg:?}"
            );
            assert_eq!(data_json(msg), *data, "{msg:?}");
        }
        for pair in got.windows(2) {
            assert_eq!(pair[1].seq, pair[0].seq + 1, "{got:?}");
        }
        watcher.expect_silence(QUIET).await;

        let stats = backend.stats().await;
        assert_eq!(
            [
                &stats["publish"],
                &stats["accept"],
                &stats["reject"],
                &stats["disconnect"]
            ],
            [&json!(5), &json!(3), &json!(4), &json!(3)],
            "{stats}"
        );
        let page = await_control_sends(
            control.api_addr(),
            &[
                ("published", 5.0),
                ("accepted", 3.0),
                ("rejected", 4.0),
                ("disconnected", 3.0),
            ],
        )
        .await;
        assert_eq!(
            page.get("roomcast_control_send_proxy_seconds_count"),
            Some(15.0),
            "{}",
            page.text
        );
    });
}

#[test]
fn the_platforms_answers_are_carried_out_and_its_failures_are_answered_unavailable() {
    build_binaries();
    for_each_driver(|io| async move {
        let platform = Platform::start().await;
        let url = platform.url();
        let control = Control::start_embedded_with(
            io,
            &[
                "--send-mode",
                "proxy",
                "--send-proxy-url",
                &url,
                "--send-proxy-timeout-ms",
                "300",
            ],
            &[("ROOMCAST_SEND_RATE", "40"), ("ROOMCAST_SEND_BURST", "40")],
            ApiKeyFrom::Flag,
        )
        .await;
        let edge = control.embedded_edge.expect("an embedded edge");
        let edge_id = only_edge_id(&control.api).await;
        let room = "stage";
        let mut watcher = member(&edge, WireFormat::WsJson, "watcher", room).await;
        // (seq, from, priority, kind, data) of what the room must see.
        let mut published: Vec<(u64, String, u8, &str, Vec<u8>)> = Vec::new();

        // The platform is asked about each send, with the sender's connection described, and
        // a plain publish answer publishes it as sent.
        let mut fans = Vec::new();
        for (i, format) in WireFormat::ALL.into_iter().enumerate() {
            let user = format!("fan-{i}");
            let mut fan = member(&edge, format, &user, room).await;
            let data = format!(r#"{{"do":"publish","n":{i}}}"#);
            let before = platform.asked().len();
            let seq = send_published(&mut fan, room, "chat", &data).await;
            let asked = platform.asked();
            assert_eq!(asked.len(), before + 1, "{asked:?}");
            let expected = json!({
                "user": user,
                "room": room,
                "kind": "chat",
                "data": serde_json::from_str::<Value>(&data).expect("JSON"),
                "conn": {
                    "edge": edge_id,
                    "transport": transport_name(format),
                    "peer": fan.local_addr().to_string(),
                },
            });
            assert_eq!(asked[before], expected);
            published.push((seq, user, 3, "chat", data.into_bytes()));
            fans.push(fan);
        }

        // A reject reaches the client with the platform's code and message, in every format.
        for fan in fans.iter_mut() {
            let r = fan.send_msg(room, "chat", br#"{"do":"reject"}"#).await;
            assert_rejected(fan, r, "slow_down", "not now");
        }
        // The platform may replace data, priority and kind.
        let seq = send_published(&mut fans[1], room, "chat", r#"{"do":"modify","text":"x"}"#).await;
        published.push((seq, "fan-1".into(), 1, "vip", br#"{"x":1}"#.to_vec()));

        // Replaced by null is replaced, not kept as sent.
        let seq = send_published(
            &mut fans[2],
            room,
            "chat",
            r#"{"do":"null_data","text":"bad words"}"#,
        )
        .await;
        published.push((seq, "fan-2".into(), 3, "chat", b"null".to_vec()));

        // No answer within --send-proxy-timeout-ms: unavailable, at the timeout and not when
        // the platform answers.
        let started = Instant::now();
        let r = fans[0]
            .send_msg(room, "chat", br#"{"do":"sleep","ms":1500}"#)
            .await;
        let took = started.elapsed();
        assert_refused(&fans[0], r, "unavailable");
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_millis(1300),
            "answered after {took:?} with a 300 ms timeout"
        );
        let late_publish_at = started + Duration::from_millis(1500);

        // Failures and answers outside the contract: unavailable, and the sender carries on.
        let failures = [
            r#"{"do":"status","status":503}"#,
            r#"{"do":"status","status":404}"#,
            r#"{"do":"garbage"}"#,
            r#"{"do":"maybe"}"#,
            r#"{"do":"disconnect","code":1008}"#,
            r#"{"do":"disconnect","code":5000}"#,
            r#"{"do":"hang_up"}"#,
        ];
        for (n, data) in failures.iter().enumerate() {
            let fan = &mut fans[n % 3];
            let r = fan.send_msg(room, "chat", data.as_bytes()).await;
            assert_refused(fan, r, "unavailable");
            fan.ping().await.expect("still connected");
        }

        // A disconnect answer closes the sender with the platform's code and reason.
        for (i, format) in WireFormat::ALL.into_iter().enumerate() {
            let mut leaver = member(&edge, format, &format!("leaver-{i}"), room).await;
            let op = leaver.send_op(room, "chat", br#"{"do":"disconnect","code":4999}"#);
            leaver.send(&op).await;
            assert_eq!(
                leaver.expect_close(WAIT).await,
                (4999, "go away".to_owned()),
                "{format:?}"
            );
        }

        // Once the platform has answered the timed-out send, it is still not published: the
        // room's next message is the next send, right after the last published one.
        tokio::time::sleep_until(late_publish_at + Duration::from_millis(200)).await;
        let seq = send_published(&mut fans[2], room, "chat", r#"{"do":"publish","last":1}"#).await;
        published.push((
            seq,
            "fan-2".into(),
            3,
            "chat",
            br#"{"do":"publish","last":1}"#.to_vec(),
        ));
        let got = room_msgs(&mut watcher, room, published.len()).await;
        for (msg, (seq, from, priority, kind, data)) in got.iter().zip(&published) {
            assert_eq!(
                (
                    msg.seq,
                    msg.from.as_deref(),
                    msg.priority,
                    msg.kind.as_str(),
                    &msg.data[..]
                ),
                (*seq, Some(from.as_str()), *priority, *kind, &data[..]),
                "{msg:?}"
            );
        }
        for pair in got.windows(2) {
            assert_eq!(pair[1].seq, pair[0].seq + 1, "{got:?}");
        }
        watcher.expect_silence(QUIET).await;

        // At most 16 sends of one connection wait for their replies: the 17th is refused at
        // once, before any of them is answered.
        let mut eager = member(&edge, WireFormat::WsBinary, "eager", room).await;
        let ops: Vec<_> = (0..17)
            .map(|_| eager.send_op(room, "chat", br#"{"do":"sleep","ms":1000}"#))
            .collect();
        for op in &ops {
            eager.send(op).await;
        }
        let (replies, msgs) = read_replies(&mut eager, 17, WAIT).await;
        assert!(msgs.is_empty(), "{msgs:?}");
        let (first_seq, first_result, first_details) = &replies[0];
        assert_eq!(*first_seq, ops[16].seq(), "{replies:?}");
        assert_eq!(
            first_result.as_ref().map_err(|e| e.0.as_str()),
            Err("rate_limited")
        );
        assert!(
            first_details.retry_after_ms.is_some_and(|ms| ms > 0),
            "{first_details:?}"
        );
        for (seq, result, _) in &replies[1..] {
            assert!(*seq < ops[16].seq(), "{replies:?}");
            assert_eq!(
                result.as_ref().map_err(|e| e.0.as_str()),
                Err("unavailable")
            );
        }

        let page = await_control_sends(
            control.api_addr(),
            &[
                ("published", 6.0),
                ("rejected", 3.0),
                ("disconnected", 3.0),
                ("timeout", 17.0),
                ("proxy_error", 7.0),
                ("overflow", 0.0),
                ("accepted", 0.0),
            ],
        )
        .await;
        assert_eq!(
            page.get("roomcast_control_send_proxy_seconds_count"),
            Some(36.0),
            "{}",
            page.text
        );
    });
}

#[test]
fn a_full_proxy_queue_answers_unavailable_at_once_while_the_queued_sends_wait() {
    build_binaries();
    for_each_driver(|io| async move {
        let platform = Platform::start().await;
        let url = platform.url();
        #[rustfmt::skip]
        let control = Control::start_embedded(io, &[
            "--send-proxy-url", &url,
            "--send-proxy-concurrency", "1",
            "--send-proxy-queue", "1",
            "--send-proxy-timeout-ms", "4000",
        ])
        .await;
        let edge = control.embedded_edge.expect("an embedded edge");
        let room = "queue";
        let mut watcher = member(&edge, WireFormat::Tcp, "watcher", room).await;
        let mut sender = member(&edge, WireFormat::WsJson, "sender", room).await;
        // One in flight (held by the platform), one waiting for the slot, and the third finds
        // the queue full.
        let ops: Vec<_> = (0..3)
            .map(|n| {
                sender.send_op(
                    room,
                    "chat",
                    format!(r#"{{"do":"hold","n":{n}}}"#).as_bytes(),
                )
            })
            .collect();
        let started = Instant::now();
        for op in &ops {
            sender.send(op).await;
        }
        let (replies, _) = read_replies(&mut sender, 1, WAIT).await;
        let took = started.elapsed();
        assert_eq!(replies[0].0, ops[2].seq(), "{replies:?}");
        assert_eq!(
            replies[0].1.as_ref().map_err(|e| e.0.as_str()),
            Err("unavailable")
        );
        assert!(
            took < Duration::from_millis(1000),
            "answered after {took:?}"
        );
        // Only one request at a time reaches the platform.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(platform.asked().len(), 1, "{:?}", platform.asked());
        platform.release();

        // The two queued sends are then published in turn.
        let (mut replies, msgs) = read_replies(&mut sender, 2, WAIT).await;
        replies.sort_by_key(|r| r.0);
        let seqs: Vec<u64> = replies
            .iter()
            .map(|(seq, result, details)| {
                assert_eq!(*result, Ok(()), "send {seq}");
                details
                    .msg_seq
                    .unwrap_or_else(|| panic!("send {seq}: no msg_seq"))
            })
            .collect();
        let mut msgs = msgs;
        if msgs.len() < 2 {
            msgs.extend(room_msgs(&mut sender, room, 2 - msgs.len()).await);
        }
        let got = room_msgs(&mut watcher, room, 2).await;
        let mut got_seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
        got_seqs.sort_unstable();
        let mut want = seqs.clone();
        want.sort_unstable();
        assert_eq!(got_seqs, want);
        assert_eq!(platform.asked().len(), 2);
        watcher.expect_silence(QUIET).await;
        await_control_sends(
            control.api_addr(),
            &[("published", 2.0), ("overflow", 1.0), ("timeout", 0.0)],
        )
        .await;
    });
}

#[test]
fn a_send_waiting_for_a_request_slot_is_answered_within_its_own_deadline_queueing_included() {
    build_binaries();
    for_each_driver(|io| async move {
        let platform = Platform::start().await;
        let url = platform.url();
        #[rustfmt::skip]
        let control = Control::start_embedded(io, &[
            "--send-proxy-url", &url,
            "--send-proxy-concurrency", "1",
            "--send-proxy-timeout-ms", "400",
        ])
        .await;
        let edge = control.embedded_edge.expect("an embedded edge");
        let room = "slot";
        let mut first = member(&edge, WireFormat::WsJson, "first", room).await;
        let mut second = member(&edge, WireFormat::Tcp, "second", room).await;
        let slow = br#"{"do":"sleep","ms":3000}"#;
        let op = first.send_op(room, "chat", slow);
        first.send(&op).await;
        poll("the first send reaches the platform", WAIT, || async {
            let asked = platform.asked().len();
            (asked == 1).then_some(()).ok_or(format!("{asked} asked"))
        })
        .await;
        // The second waits for the only slot until the first times out, then gets what is
        // left of its own 400 ms: both are answered by their deadlines, not the platform's.
        let started = Instant::now();
        let r = second.send_msg(room, "chat", slow).await;
        let took = started.elapsed();
        assert_refused(&second, r, "unavailable");
        // ~400 ms; 800 if its wait for the slot did not count.
        assert!(took < Duration::from_millis(750), "answered after {took:?}");
        let r = first.next_within(WAIT).await;
        assert!(
            matches!(&r, Some(Incoming::Reply { seq, result: Err((code, _)), .. })
                if *seq == op.seq() && code == "unavailable"),
            "{r:?}"
        );
        assert_eq!(platform.asked().len(), 2);
        await_control_sends(control.api_addr(), &[("timeout", 2.0)]).await;
    });
}

#[test]
fn a_batching_proxy_asks_about_what_waits_in_one_request_and_answers_each_send_by_its_decision() {
    build_binaries();
    for_each_driver(|io| async move {
        let platform = Platform::start().await;
        let url = platform.url();
        #[rustfmt::skip]
        let control = Control::start_embedded(io, &[
            "--send-proxy-url", &url,
            "--send-proxy-batch", "8",
            "--send-proxy-concurrency", "1",
            "--send-proxy-timeout-ms", "4000",
        ])
        .await;
        let edge = control.embedded_edge.expect("an embedded edge");
        let edge_id = only_edge_id(&control.api).await;
        let room = "batch";
        let mut watcher = member(&edge, WireFormat::WsBinary, "watcher", room).await;
        let mut ann = member(&edge, WireFormat::WsJson, "ann", room).await;
        let mut bob = member(&edge, WireFormat::Tcp, "bob", room).await;

        // Under light load a request carries the one send that waits: no wait for company.
        let first = send_published(&mut ann, room, "chat", r#"{"n":0}"#).await;
        assert_eq!(platform.batches(), [1]);
        assert_eq!(
            platform.asked()[0],
            json!({"user": "ann", "room": room, "kind": "chat", "data": {"n": 0},
                   "conn": {"edge": edge_id, "transport": "ws-json",
                            "peer": ann.local_addr().to_string()}})
        );

        // The only request slot is held by the platform; what arrives meanwhile waits and
        // then goes in one request, whichever connection it came from.
        let held = ann.send_op(room, "chat", br#"{"do":"hold"}"#);
        ann.send(&held).await;
        poll("the held send reaches the platform", WAIT, || async {
            let asked = platform.asked().len();
            (asked == 2).then_some(()).ok_or(format!("{asked} asked"))
        })
        .await;
        let ann_ops = [
            ann.send_op(room, "chat", br#"{"do":"publish","n":1}"#),
            ann.send_op(room, "chat", br#"{"do":"modify"}"#),
            ann.send_op(room, "chat", br#"{"do":"reject"}"#),
        ];
        let bob_ops = [
            bob.send_op(room, "like", br#"{"do":"accept"}"#),
            bob.send_op(room, "chat", br#"{"do":"publish","n":2}"#),
        ];
        for op in &ann_ops {
            ann.send(op).await;
        }
        for op in &bob_ops {
            bob.send(op).await;
        }
        let api_addr = control.api_addr();
        poll("six sends wait for the platform", WAIT, || async move {
            let waiting = scrape(api_addr)
                .await
                .get("roomcast_control_send_proxy_waiting");
            (waiting == Some(6.0))
                .then_some(())
                .ok_or(format!("{waiting:?}"))
        })
        .await;
        platform.release();

        let (mut ann_replies, _) = read_replies(&mut ann, 4, WAIT).await;
        ann_replies.sort_by_key(|r| r.0);
        let (mut bob_replies, _) = read_replies(&mut bob, 2, WAIT).await;
        bob_replies.sort_by_key(|r| r.0);
        assert_eq!(platform.batches(), [1, 1, 5], "{:?}", platform.asked());
        let msg_seq = |reply: &(u64, OpResult, ReplyDetails)| {
            assert_eq!(reply.1, Ok(()), "{reply:?}");
            reply
                .2
                .msg_seq
                .unwrap_or_else(|| panic!("no msg_seq: {reply:?}"))
        };
        assert_eq!(ann_replies[0].0, held.seq());
        let held_seq = msg_seq(&ann_replies[0]);
        let n1_seq = msg_seq(&ann_replies[1]);
        let modified_seq = msg_seq(&ann_replies[2]);
        assert_eq!(
            ann_replies[3].1.as_ref().map_err(|e| e.0.as_str()),
            Err("rejected")
        );
        assert_eq!(ann_replies[3].2.platform_code.as_deref(), Some("slow_down"));
        assert_eq!(bob_replies[0].1, Ok(()));
        assert!(
            bob_replies[0].2.not_broadcast && bob_replies[0].2.msg_seq.is_none(),
            "{bob_replies:?}"
        );
        let n2_seq = msg_seq(&bob_replies[1]);

        // The room sees what was published, as decided.
        let mut got = room_msgs(&mut watcher, room, 5).await;
        got.sort_by_key(|m| m.seq);
        let mut want = vec![first, held_seq, n1_seq, modified_seq, n2_seq];
        want.sort_unstable();
        assert_eq!(got.iter().map(|m| m.seq).collect::<Vec<_>>(), want);
        let by_seq = |seq: u64| got.iter().find(|m| m.seq == seq).expect("published");
        assert_sent_message(by_seq(first), first, "ann", "chat", br#"{"n":0}"#);
        assert_sent_message(
            by_seq(held_seq),
            held_seq,
            "ann",
            "chat",
            br#"{"do":"hold"}"#,
        );
        assert_sent_message(
            by_seq(n1_seq),
            n1_seq,
            "ann",
            "chat",
            br#"{"do":"publish","n":1}"#,
        );
        assert_sent_message(
            by_seq(n2_seq),
            n2_seq,
            "bob",
            "chat",
            br#"{"do":"publish","n":2}"#,
        );
        let modified = by_seq(modified_seq);
        assert_eq!((modified.kind.as_str(), modified.priority), ("vip", 1));
        assert_eq!(modified.data.as_ref(), br#"{"x":1}"#);
        // A connection's sends are published in the order it sent them.
        assert!(held_seq < n1_seq && n1_seq < modified_seq, "{want:?}");
        watcher.expect_silence(QUIET).await;

        // An answer with a result missing fails every send of its batch, and says so.
        let slow = ann.send_op(room, "chat", br#"{"do":"sleep","ms":300}"#);
        ann.send(&slow).await;
        poll("the slow send reaches the platform", WAIT, || async {
            let asked = platform.asked().len();
            (asked == 8).then_some(()).ok_or(format!("{asked} asked"))
        })
        .await;
        let short = bob.send_op(room, "chat", br#"{"do":"short"}"#);
        let fine = bob.send_op(room, "chat", br#"{"do":"publish","n":3}"#);
        bob.send(&short).await;
        bob.send(&fine).await;
        let (replies, _) = read_replies(&mut bob, 2, WAIT).await;
        for (seq, result, _) in &replies {
            match result {
                Err((code, message)) if code == "unavailable" => {
                    assert!(message.contains("not understood"), "send {seq}: {message}")
                }
                other => panic!("send {seq}: expected unavailable, got {other:?}"),
            }
        }
        assert_eq!(platform.batches(), [1, 1, 5, 1, 2]);
        await_control_sends(
            control.api_addr(),
            &[
                ("published", 6.0),
                ("accepted", 1.0),
                ("rejected", 1.0),
                ("proxy_error", 2.0),
            ],
        )
        .await;
    });
}

// ---------------------------------------------------------------------------------------------
// 5. Send mode off, upstream budgets
// ---------------------------------------------------------------------------------------------

#[test]
fn send_mode_off_forbids_every_send_in_every_format() {
    build_binaries();
    for_each_driver(|io| async move {
        let control = Control::start_embedded(io, &["--send-mode", "off"]).await;
        let edge = control.embedded_edge.expect("an embedded edge");
        let room = "quiet";
        let mut watcher = member(&edge, WireFormat::WsJson, "watcher", room).await;
        for (i, format) in WireFormat::ALL.into_iter().enumerate() {
            let mut c = member(&edge, format, &format!("viewer-{i}"), room).await;
            let r = c.send_msg(room, "chat", br#"{"text":"hi"}"#).await;
            assert_refused(&c, r, "forbidden");
            c.ping().await.expect("still connected");
        }
        watcher.expect_silence(QUIET).await;
        await_control_sends(
            control.api_addr(),
            &[("forbidden", 3.0), ("published", 0.0)],
        )
        .await;
    });
}

#[test]
fn sends_past_a_rooms_budget_in_one_tick_are_taken_but_not_broadcast_and_leave_no_gap() {
    build_binaries();
    for_each_driver(|io| async move {
        #[rustfmt::skip]
        let control = Control::start_embedded_with(
            io,
            &[
                "--send-budgets", "2,2,2,2",
                "--level-ticks-ms", "1000,1000,1000,1000",
            ],
            &[("ROOMCAST_SEND_RATE", "20"), ("ROOMCAST_SEND_BURST", "20")],
            ApiKeyFrom::Flag,
        )
        .await;
        let edge = control.embedded_edge.expect("an embedded edge");
        let room = "tiny";
        let mut watcher = member(&edge, WireFormat::Tcp, "watcher", room).await;
        let mut a = member(&edge, WireFormat::WsJson, "a", room).await;
        let mut b = member(&edge, WireFormat::WsBinary, "b", room).await;

        // The first two sends of the tick are published; the next ones are taken (ok) but not
        // broadcast, whoever sends them.
        let first = send_published(&mut a, room, "chat", r#""a1""#).await;
        let tick_start = Instant::now();
        let second = send_published(&mut b, room, "chat", r#""b1""#).await;
        assert_eq!(second, first + 1);
        let r = a.send_msg(room, "chat", br#""a2""#).await;
        assert_not_broadcast(&a, r);
        let r = b.send_msg(room, "chat", br#""b2""#).await;
        assert_not_broadcast(&b, r);

        // The next tick has a new budget.
        tokio::time::sleep_until(tick_start + Duration::from_millis(1050)).await;
        let third = send_published(&mut b, room, "chat", r#""b3""#).await;
        let fourth = send_published(&mut a, room, "chat", r#""a3""#).await;
        assert_eq!([third, fourth], [first + 2, first + 3]);
        let r = a.send_msg(room, "chat", br#""a4""#).await;
        assert_not_broadcast(&a, r);

        // Members see the admitted sends only, numbered without a gap.
        let got = room_msgs(&mut watcher, room, 4).await;
        let seen: Vec<(u64, String)> = got
            .iter()
            .map(|m| (m.seq, String::from_utf8_lossy(&m.data).into_owned()))
            .collect();
        assert_eq!(
            seen,
            [
                (first, r#""a1""#.to_owned()),
                (first + 1, r#""b1""#.to_owned()),
                (first + 2, r#""b3""#.to_owned()),
                (first + 3, r#""a3""#.to_owned()),
            ]
        );
        watcher.expect_silence(Duration::from_millis(1200)).await;
        await_control_sends(
            control.api_addr(),
            &[("published", 4.0), ("over_budget", 3.0)],
        )
        .await;
    });
}

// ---------------------------------------------------------------------------------------------
// 6. Receipts
// ---------------------------------------------------------------------------------------------

#[test]
fn acked_messages_are_receipted_queryable_and_reported_to_the_platform() {
    build_binaries();
    backend_binary();
    for_each_driver(|io| async move {
        let backend = Backend::start(&[]).await;
        let receipt_url = backend.receipt_url();
        let admin = free_local_addrs(1)[0].to_string();
        #[rustfmt::skip]
        let control = Control::start_embedded(io, &[
            "--receipt-url", &receipt_url,
            "--edge-admin-listen", &admin,
        ])
        .await;
        let edge = control.embedded_edge.expect("an embedded edge");
        let edge_id = only_edge_id(&control.api).await;
        let api = &control.api;
        let mut receipts = Vec::new();

        for (i, format) in WireFormat::ALL.into_iter().enumerate() {
            let user = format!("u{}", i + 1);
            let target = Target::User(user.clone());
            let mut c = Client::connect_authed(&edge, format, &user).await;
            // The first user has a second connection too.
            let mut twin = match i {
                0 => Some(Client::connect_authed(&edge, WireFormat::WsBinary, &user).await),
                _ => None,
            };
            // One message asking for an ack, one not.
            let reward = api
                .post(
                    &format!("/v1/users/{user}/messages"),
                    &json!({"priority": 1, "kind": "reward", "data": {"coins": 5}, "ack": true}),
                )
                .await
                .ok()["seq"]
                .as_u64()
                .expect("a seq");
            let plain = api
                .publish(&target, 1, "notice", json!({"text": "hello"}))
                .await
                .seq;
            let (got, raws) = recv_with_raw(&mut c, &target, 2).await;
            if format == WireFormat::WsJson {
                // `"ack":true` right before the data, only on the message that asks for it.
                let text = raws.concat();
                assert!(
                    text.contains(r#""kind":"reward","ack":true,"data":{"coins":5}"#),
                    "{text}"
                );
                assert_eq!(text.matches(r#""ack""#).count(), 1, "{text}");
            }
            assert_eq!(
                (
                    got[0].seq,
                    got[0].kind.as_str(),
                    got[0].ack,
                    got[0].from.as_deref()
                ),
                (reward, "reward", true, None),
                "{got:?}"
            );
            assert_eq!((got[1].seq, got[1].ack), (plain, false), "{got:?}");
            assert_eq!(data_json(&got[0]), json!({"coins": 5}));

            // Not acknowledged yet.
            let path = format!("/v1/users/{user}/messages/{reward}");
            assert_eq!(
                api.get(&path).await.ok(),
                json!({"user": user, "seq": reward, "acknowledged": false})
            );
            // The ack names the user (or leaves it out) and is answered at once; naming
            // another user is forbidden.
            let before = unix_ms();
            let r = c.ack_msg(Some("someone-else"), reward).await;
            assert_refused(&c, r, "forbidden");
            let own = if i == 1 { None } else { Some(user.as_str()) };
            c.ack_msg(own, reward).await.expect("ack answered ok");
            let after = unix_ms();

            // The control plane knows where and when.
            let answer = poll(&format!("{path} acknowledged"), WAIT, || async {
                let answer = api.get(&path).await.ok();
                if answer["acknowledged"] == true {
                    Ok(answer)
                } else {
                    Err(answer.to_string())
                }
            })
            .await;
            let at_ms = answer["at_ms"]
                .as_u64()
                .unwrap_or_else(|| panic!("{answer}"));
            assert_eq!(
                answer,
                json!({
                    "user": user,
                    "seq": reward,
                    "acknowledged": true,
                    "edge": edge_id,
                    "at_ms": at_ms,
                })
            );
            assert!(
                at_ms + 1000 >= before && at_ms <= after + 1000,
                "at_ms {at_ms} not around the ack ({before}..{after})"
            );
            // The other message was not acknowledged; one beyond the channel does not exist.
            let plain_path = format!("/v1/users/{user}/messages/{plain}");
            assert_eq!(api.get(&plain_path).await.ok()["acknowledged"], false);
            api.get(&format!("/v1/users/{user}/messages/{}", plain + 1))
                .await
                .error(404, "no_such_message");
            api.get(&format!("/v1/users/{user}/messages/0"))
                .await
                .error(404, "no_such_message");
            // A repeated ack, and the ack of the user's other connection, change nothing:
            // the first receipt counts.
            c.ack_msg(None, reward)
                .await
                .expect("a repeated ack is answered ok");
            if let Some(twin) = twin.as_mut() {
                let got = twin.recv_messages(&target, 2, WAIT).await;
                assert!(got[0].ack && got[0].seq == reward, "{got:?}");
                twin.ack_msg(None, reward).await.expect("the twin's ack");
                await_counts(
                    control.api_addr(),
                    "roomcast_control_receipts_total",
                    &[("repeated", 2.0)],
                )
                .await;
                assert_eq!(api.get(&path).await.ok(), answer);
            }
            receipts
                .push(json!({"user": user, "msg_seq": reward, "edge": edge_id, "at_ms": at_ms}));
        }

        // The platform gets each receipt once, as the control plane remembers it.
        let reported = poll("receipts at the backend", WAIT, || async {
            let list = backend.receipts().await;
            if list["total"].as_u64() >= Some(receipts.len() as u64) {
                Ok(list)
            } else {
                Err(list.to_string())
            }
        })
        .await;
        let mut got = reported["receipts"].as_array().cloned().unwrap_or_default();
        got.sort_by_key(|r| r["user"].as_str().map(str::to_owned));
        assert_eq!(got, receipts, "{reported}");
        let page = await_counts(
            control.api_addr(),
            "roomcast_control_receipts_total",
            &[
                ("received", 3.0),
                ("repeated", 4.0),
                ("reported", 3.0),
                ("dropped", 0.0),
            ],
        )
        .await;
        assert_eq!(reported["total"], 3, "{}", page.text);
        // The edge counts the acks it took and passed on (not the forbidden ones).
        let admin: SocketAddr = admin.parse().expect("admin address");
        await_counts(
            admin,
            "roomcast_acks_total",
            &[("received", 7.0), ("sent", 7.0), ("dropped", 0.0)],
        )
        .await;
    });
}

// ---------------------------------------------------------------------------------------------
// 7. The link to the control plane
// ---------------------------------------------------------------------------------------------

#[test]
fn sends_while_the_control_plane_is_gone_are_unavailable_at_once_and_work_again_when_it_is_back() {
    build_binaries();
    for_each_driver(|io| async move {
        let mut control = Control::start(&[]).await;
        let admin = free_local_addrs(1)[0];
        let admin_arg = admin.to_string();
        #[rustfmt::skip]
        let edge = control
            .start_edge(io, "edge-a", &[
                "--send-rate", "20",
                "--send-burst", "20",
                "--admin-listen", &admin_arg,
            ])
            .await;
        let room = "live";
        let mut viewers = Vec::new();
        for (i, format) in WireFormat::ALL.into_iter().enumerate() {
            viewers.push(member(&edge, format, &format!("viewer-{i}"), room).await);
        }
        let before = send_published(&mut viewers[0], room, "chat", r#""before""#).await;
        for v in viewers.iter_mut() {
            let got = room_msgs(v, room, 1).await;
            assert_sent_message(&got[0], before, "viewer-0", "chat", br#""before""#);
        }

        control.kill();
        for v in viewers.iter_mut() {
            let started = Instant::now();
            let r = v.send_msg(room, "chat", br#""while away""#).await;
            assert_refused(v, r, "unavailable");
            let took = started.elapsed();
            assert!(
                took < Duration::from_secs(2),
                "{}: unavailable after {took:?}",
                v.label
            );
            // Acks are still answered at once.
            v.ack_msg(None, 1).await.expect("ack while control is away");
        }

        control.restart().await;
        control.wait_healthy_edges(&["edge-a"], WAIT).await;
        control.wait_room_members(room, &[("edge-a", 3)]).await;
        for i in 0..viewers.len() {
            let data = format!(r#""back {i}""#);
            let seq = send_published(&mut viewers[i], room, "chat", &data).await;
            let from = format!("viewer-{i}");
            for v in viewers.iter_mut() {
                let got = room_msgs(v, room, 1).await;
                assert_sent_message(&got[0], seq, &from, "chat", data.as_bytes());
            }
        }
        for v in viewers.iter_mut() {
            v.expect_silence(QUIET).await;
        }
        // The edge answered the sends while away itself, and dropped the acks.
        let page = await_counts(
            admin,
            "roomcast_sends_total",
            &[("unavailable", 3.0), ("published", 4.0)],
        )
        .await;
        assert_eq!(
            page.get(r#"roomcast_acks_total{result="dropped"}"#),
            Some(3.0),
            "{}",
            page.text
        );
    });
}

// ---------------------------------------------------------------------------------------------
// 8. The binary layout, byte by byte
// ---------------------------------------------------------------------------------------------

/// A raw TCP client that writes ops built by hand and reads frames as bytes: an oracle for the
/// binary layout independent of the engine's codec.
struct RawTcp {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawTcp {
    async fn connect(addr: SocketAddr) -> RawTcp {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        RawTcp {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes `payload` with its `u32` length prefix.
    async fn write(&mut self, payload: &[u8]) {
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(payload);
        self.stream.write_all(&frame).await.expect("write");
    }

    /// The next frame's payload that is not a room count (`0x84`).
    async fn frame(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
                if self.buf.len() >= 4 + len {
                    let payload = self.buf[4..4 + len].to_vec();
                    self.buf.drain(..4 + len);
                    if payload.first() == Some(&0x84) {
                        continue;
                    }
                    return payload;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout(left, self.stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                other => panic!(
                    "no complete frame within {WAIT:?}: {other:?}, {:02x?}",
                    self.buf
                ),
            }
        }
    }

    /// The next two frames, in either order: the one starting with `first` byte, then the
    /// other.
    async fn two_frames(&mut self, first: u8) -> (Vec<u8>, Vec<u8>) {
        let a = self.frame().await;
        let b = self.frame().await;
        if a[0] == first {
            (a, b)
        } else {
            (b, a)
        }
    }
}

fn str8(s: &str) -> Vec<u8> {
    let mut out = vec![u8::try_from(s.len()).expect("str8")];
    out.extend_from_slice(s.as_bytes());
    out
}

fn str16(s: &str) -> Vec<u8> {
    let mut out = u16::try_from(s.len())
        .expect("str16")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(s.as_bytes());
    out
}

fn bytes32(b: &[u8]) -> Vec<u8> {
    let mut out = (b.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(b);
    out
}

/// A binary op: `op`, `seq u64`, then `body`.
fn raw_op(op: u8, seq: u64, body: &[&[u8]]) -> Vec<u8> {
    let mut out = vec![op];
    out.extend_from_slice(&seq.to_be_bytes());
    for part in body {
        out.extend_from_slice(part);
    }
    out
}

/// Splits an error reply `81 seq 00 code:str8 message:str16 rest` into (code, message, rest).
#[track_caller]
fn error_reply(frame: &[u8], seq: u64) -> (String, String, Vec<u8>) {
    assert_eq!(frame[0], 0x81, "{frame:02x?}");
    assert_eq!(frame[1..9], seq.to_be_bytes(), "{frame:02x?}");
    assert_eq!(frame[9], 0, "an error reply: {frame:02x?}");
    let code_len = usize::from(frame[10]);
    let code = String::from_utf8(frame[11..11 + code_len].to_vec()).expect("UTF-8 code");
    let at = 11 + code_len;
    let msg_len = usize::from(u16::from_be_bytes([frame[at], frame[at + 1]]));
    let message = String::from_utf8(frame[at + 2..at + 2 + msg_len].to_vec()).expect("UTF-8");
    (code, message, frame[at + 2 + msg_len..].to_vec())
}

#[test]
fn binary_send_replies_and_pushed_messages_are_laid_out_byte_for_byte_as_the_protocol_says() {
    build_binaries();
    for_each_driver(|io| async move {
        let platform = Platform::start().await;
        let url = platform.url();
        #[rustfmt::skip]
        let control = Control::start_embedded_with(
            io,
            &[
                "--send-proxy-url", &url,
                "--send-budgets", "1,1,1,1",
                "--level-ticks-ms", "1000,1000,1000,1000",
            ],
            &[("ROOMCAST_SEND_RATE", "1"), ("ROOMCAST_SEND_BURST", "3")],
            ApiKeyFrom::Flag,
        )
        .await;
        let edge = control.embedded_edge.expect("an embedded edge");
        let mut raw = RawTcp::connect(edge.tcp_addr).await;
        let user = "rawuser";
        raw.write(&raw_op(
            0x01,
            1,
            &[&str16(&token_with_send_claim(user, true))],
        ))
        .await;
        let auth = raw.frame().await;
        assert_eq!(auth[..10], raw_op(0x81, 1, &[&[1]])[..], "{auth:02x?}");
        raw.write(&raw_op(0x02, 2, &[&str8("bin")])).await;
        let join = raw.frame().await;
        assert_eq!(join[..10], raw_op(0x81, 2, &[&[1]])[..], "{join:02x?}");

        // Published: ok with flags 0x08 and msg_seq; the message has p 0x23 and `from` before
        // `kind`.
        let data = br#"{"t":1}"#;
        raw.write(&raw_op(
            0x06,
            3,
            &[&str8("bin"), &str8("chat"), &bytes32(data)],
        ))
        .await;
        let (reply, batch) = raw.two_frames(0x81).await;
        assert_eq!(
            reply,
            raw_op(0x81, 3, &[&[1, 0x08], &1u64.to_be_bytes()]),
            "{reply:02x?}"
        );
        let mut want = vec![0x82, 0];
        want.extend(str8("bin"));
        want.extend(1u16.to_be_bytes());
        want.extend(1u64.to_be_bytes());
        want.push(0x23);
        want.extend(str8(user));
        want.extend(str8("chat"));
        want.extend(bytes32(data));
        assert_eq!(batch, want, "{batch:02x?}");

        // Past the room's budget: ok with flags 0x10 and nothing else.
        raw.write(&raw_op(
            0x06,
            4,
            &[&str8("bin"), &str8("chat"), &bytes32(b"2")],
        ))
        .await;
        assert_eq!(raw.frame().await, raw_op(0x81, 4, &[&[1, 0x10]]));

        // Rejected: the platform's message, then flags 0x02 and its code.
        let reject = br#"{"do":"reject"}"#;
        raw.write(&raw_op(
            0x06,
            5,
            &[&str8("bin"), &str8("chat"), &bytes32(reject)],
        ))
        .await;
        let (code, message, rest) = error_reply(&raw.frame().await, 5);
        assert_eq!((code.as_str(), message.as_str()), ("rejected", "not now"));
        assert_eq!(rest, [&[0x02][..], &str8("slow_down")].concat());

        // Rate limited: flags 0x01 and retry_after_ms u32.
        raw.write(&raw_op(
            0x06,
            6,
            &[&str8("bin"), &str8("chat"), &bytes32(b"3")],
        ))
        .await;
        let (code, message, rest) = error_reply(&raw.frame().await, 6);
        assert_eq!(code, "rate_limited");
        assert!(!message.is_empty());
        assert_eq!((rest.len(), rest[0]), (5, 0x01), "{rest:02x?}");
        let retry = u32::from_be_bytes(rest[1..5].try_into().expect("u32"));
        assert!(retry > 0 && retry <= 1000, "retry_after_ms {retry}");

        // An error without details ends at its message.
        raw.write(&raw_op(
            0x06,
            7,
            &[&str8("elsewhere"), &str8("chat"), &bytes32(b"4")],
        ))
        .await;
        let (code, _, rest) = error_reply(&raw.frame().await, 7);
        assert_eq!((code.as_str(), rest.len()), ("not_joined", 0));

        // A message asking for an ack: p 0x11 (priority 1, ack), no from.
        let reward = control
            .api
            .post(
                &format!("/v1/users/{user}/messages"),
                &json!({"priority": 1, "kind": "reward", "data": {"c": 5}, "ack": true}),
            )
            .await
            .ok()["seq"]
            .as_u64()
            .expect("a seq");
        let batch = raw.frame().await;
        let mut want = vec![0x82, 1];
        want.extend(str8(user));
        want.extend(1u16.to_be_bytes());
        want.extend(reward.to_be_bytes());
        want.push(0x11);
        want.extend(str8("reward"));
        want.extend(bytes32(br#"{"c":5}"#));
        assert_eq!(batch, want, "{batch:02x?}");

        // ack with the user left empty (its own): ok, no flags; naming another: forbidden.
        raw.write(&raw_op(0x07, 8, &[&str8(""), &reward.to_be_bytes()]))
            .await;
        assert_eq!(raw.frame().await, raw_op(0x81, 8, &[&[1]]));
        raw.write(&raw_op(0x07, 9, &[&str8("other"), &reward.to_be_bytes()]))
            .await;
        let (code, _, rest) = error_reply(&raw.frame().await, 9);
        assert_eq!((code.as_str(), rest.len()), ("forbidden", 0));
        poll("the receipt", WAIT, || async {
            let answer = control
                .api
                .get(&format!("/v1/users/{user}/messages/{reward}"))
                .await
                .ok();
            if answer["acknowledged"] == true {
                Ok(())
            } else {
                Err(answer.to_string())
            }
        })
        .await;
    });
}

#[test]
fn receipts_the_platform_failed_to_take_are_reported_again_once_at_most_every_100_ms() {
    build_binaries();
    for_each_driver(|io| async move {
        let platform = Platform::start_failing_reports(2).await;
        let url = platform.receipt_url();
        let control = Control::start_embedded(io, &["--receipt-url", &url]).await;
        let edge = control.embedded_edge.expect("an embedded edge");
        let edge_id = only_edge_id(&control.api).await;
        let user = "collector";
        let target = Target::User(user.to_owned());
        let mut c = Client::connect_authed(&edge, WireFormat::Tcp, user).await;
        let mut want = Vec::new();
        for n in 0..3 {
            let seq = control
                .api
                .post(
                    &format!("/v1/users/{user}/messages"),
                    &json!({"priority": 1, "kind": "reward", "data": {"n": n}, "ack": true}),
                )
                .await
                .ok()["seq"]
                .as_u64()
                .expect("a seq");
            let got = c.recv_messages(&target, 1, WAIT).await;
            assert!(got[0].ack && got[0].seq == seq, "{got:?}");
            c.ack_msg(None, seq).await.expect("ack");
            want.push(seq);
            tokio::time::sleep(Duration::from_millis(30)).await;
        }

        // Every receipt is taken exactly once, after the two refused reports.
        let reports = poll("receipts reported", WAIT, || async {
            let reports = platform.reports();
            let taken: usize = reports
                .iter()
                .filter(|r| r.status == 204)
                .map(|r| r.receipts.len())
                .sum();
            if taken >= want.len() {
                Ok(reports)
            } else {
                Err(format!("{reports:?}"))
            }
        })
        .await;
        let statuses: Vec<u16> = reports.iter().map(|r| r.status).collect();
        assert_eq!(statuses[..2], [503, 503], "{reports:?}");
        let mut taken: Vec<u64> = reports
            .iter()
            .filter(|r| r.status == 204)
            .flat_map(|r| r.receipts.iter())
            .map(|r| {
                assert_eq!(
                    (r["user"].as_str(), r["edge"].as_str()),
                    (Some(user), Some(edge_id.as_str())),
                    "{r}"
                );
                assert!(r["at_ms"].as_u64().is_some(), "{r}");
                r["msg_seq"].as_u64().expect("msg_seq")
            })
            .collect();
        taken.sort_unstable();
        assert_eq!(taken, want, "{reports:?}");
        // A refused report's receipts come again, first.
        assert_eq!(reports[0].receipts[0]["msg_seq"], want[0], "{reports:?}");
        assert_eq!(reports[1].receipts[0]["msg_seq"], want[0], "{reports:?}");
        for pair in reports.windows(2) {
            let gap = pair[1].at.duration_since(pair[0].at);
            assert!(
                gap >= Duration::from_millis(90),
                "reports {gap:?} apart: {reports:?}"
            );
        }

        let page = await_counts(
            control.api_addr(),
            "roomcast_control_receipts_total",
            &[("received", 3.0), ("reported", 3.0), ("dropped", 0.0)],
        )
        .await;
        assert_eq!(
            page.get("roomcast_control_receipt_report_failures_total"),
            Some(2.0),
            "{}",
            page.text
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            platform.reports().len(),
            reports.len(),
            "nothing more to report"
        );
    });
}
