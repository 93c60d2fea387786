//! The real control plane under test: the `roomcast-control` binary as a child process
//! ([`Control`]), its HTTP API ([`Api`]), and edges linked to it ([`Control::start_edge`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use roomcast_proto::message::{PushMessage, Target};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::client::{Client, Incoming};
use crate::edge::{edge_binary, EdgeAddresses, LinkedEdge, WORKERS};
use crate::http::{self, poll, Request, Response};
use crate::process::{free_local_addrs, ChildProcess, CONTROL_BINARY};
use crate::tokens::SECRET;
use crate::WAIT;

/// The `--api-key` every test control plane runs with.
pub const API_KEY: &str = "test-key";

/// roomcast-control's built-in development API key, used when none is configured.
pub const DEV_API_KEY: &str = "roomcast-dev-api-key";

/// How a test control plane is given its API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKeyFrom {
    /// `--api-key test-key` (what [`Control::start`] and [`Control::start_embedded`] do).
    Flag,
    /// `ROOMCAST_API_KEY=test-key` in its environment.
    Env,
    /// None: the built-in development key ([`DEV_API_KEY`]).
    Default,
}

impl ApiKeyFrom {
    /// The key the control plane then requires.
    pub fn key(self) -> &'static str {
        match self {
            ApiKeyFrom::Flag | ApiKeyFrom::Env => API_KEY,
            ApiKeyFrom::Default => DEV_API_KEY,
        }
    }
}

/// The `roomcast-control` binary, built once per test process (see
/// [`WorkspaceBinary::path`](crate::process::WorkspaceBinary::path);
/// `ROOMCAST_TEST_CONTROL_BIN` names a prebuilt one).
pub fn control_binary() -> &'static Path {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    CONTROL_BINARY.path(&BIN)
}

/// Builds (once per process) the binaries a control-plane test starts. Call it before
/// [`for_each_driver`](crate::for_each_driver), so that a cold nested build does not count
/// against a scenario's time limit.
pub fn build_binaries() {
    edge_binary();
    control_binary();
}

/// The publish path of a channel: `/v1/rooms/{room}/messages`, `/v1/users/{user}/messages` or
/// `/v1/broadcast`. Ids are put in the path as they are (tests that need percent-encoding build
/// their paths themselves).
pub fn publish_path(target: &Target) -> String {
    match target {
        Target::Room(room) => format!("/v1/rooms/{room}/messages"),
        Target::User(user) => format!("/v1/users/{user}/messages"),
        Target::Broadcast => "/v1/broadcast".to_owned(),
    }
}

/// A message the API accepted: what was published and what the API answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    pub seq: u64,
    pub delivered_edges: u64,
    pub priority: u8,
    pub kind: String,
    pub data: Value,
}

impl Published {
    /// What the API answered (which must be 200) to the publish of this message.
    fn from_answer(response: &Response, priority: u8, kind: &str, data: Value) -> Published {
        let answer = response.ok();
        Published {
            seq: field_u64(&answer, "seq", response),
            delivered_edges: field_u64(&answer, "delivered_edges", response),
            priority,
            kind: kind.to_owned(),
            data,
        }
    }

    /// Whether `got` (as a client received it) is this message: same seq, priority and kind, and
    /// `data` equal as JSON.
    pub fn matches(&self, got: &PushMessage) -> bool {
        got.seq == self.seq
            && got.priority == self.priority
            && got.kind == self.kind
            && serde_json::from_slice::<Value>(&got.data).ok().as_ref() == Some(&self.data)
    }
}

/// Waits for `client` to receive exactly `expected` on `target` (in order) and asserts them;
/// anything else arriving first fails.
pub async fn assert_receives(client: &mut Client, target: &Target, expected: &[&Published]) {
    assert_receives_all(client, &[(target, expected)]).await;
}

/// Waits for `client` to receive exactly the expected messages of each channel (in order within
/// a channel, in any order across channels, since each channel has its own merge window) and
/// asserts them; a batch of another channel, or anything that is not a batch, fails.
pub async fn assert_receives_all(client: &mut Client, expected: &[(&Target, &[&Published])]) {
    let deadline = Instant::now() + WAIT;
    let mut got: HashMap<Target, Vec<PushMessage>> = HashMap::new();
    let complete = |got: &HashMap<Target, Vec<PushMessage>>| {
        expected
            .iter()
            .all(|(t, e)| got.get(*t).map_or(0, Vec::len) >= e.len())
    };
    while !complete(&got) {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.next_within(left).await {
            Some(Incoming::Batch { target, msgs, .. })
                if expected.iter().any(|(t, _)| **t == target) =>
            {
                got.entry(target).or_default().extend(msgs);
            }
            other => panic!(
                "{}: waiting for {expected:#?}\nhave {}\ngot {other:?}",
                client.label,
                describe(&got)
            ),
        }
    }
    for (target, want) in expected {
        let have = got.get(*target).map(Vec::as_slice).unwrap_or_default();
        let same =
            have.len() == want.len() && have.iter().zip(want.iter()).all(|(g, e)| e.matches(g));
        assert!(
            same,
            "{}: on {target:?} expected {want:#?}\ngot {}",
            client.label,
            describe(&got)
        );
    }
}

fn describe(got: &HashMap<Target, Vec<PushMessage>>) -> String {
    let mut lines = Vec::new();
    for (target, msgs) in got {
        for m in msgs {
            lines.push(format!(
                "{target:?} seq {} p{} {} {}",
                m.seq,
                m.priority,
                m.kind,
                String::from_utf8_lossy(&m.data)
            ));
        }
    }
    if lines.is_empty() {
        "nothing".to_owned()
    } else {
        lines.join("\n")
    }
}

/// The control plane's HTTP API at `addr`, with a Bearer API key (or none).
#[derive(Debug, Clone)]
pub struct Api {
    pub addr: SocketAddr,
    pub key: Option<String>,
}

impl Api {
    /// The same API without an `Authorization` header.
    pub fn without_key(&self) -> Api {
        Api {
            addr: self.addr,
            key: None,
        }
    }

    /// The same API with another key.
    pub fn with_key(&self, key: &str) -> Api {
        Api {
            addr: self.addr,
            key: Some(key.to_owned()),
        }
    }

    /// Sends `request` with this API's key, if any; `Err` when no complete response came within
    /// [`WAIT`].
    pub async fn try_send(&self, request: Request) -> Result<Response, String> {
        let request = match &self.key {
            Some(key) => request.header("Authorization", &format!("Bearer {key}")),
            None => request,
        };
        http::send(self.addr, &request, WAIT).await
    }

    /// [`try_send`](Self::try_send) that panics when no response comes.
    pub async fn send(&self, request: Request) -> Response {
        self.try_send(request)
            .await
            .unwrap_or_else(|why| panic!("{why}"))
    }

    /// `GET target`.
    pub async fn get(&self, target: &str) -> Response {
        self.send(Request::new("GET", target)).await
    }

    /// `POST target` with a JSON body.
    pub async fn post(&self, target: &str, body: &Value) -> Response {
        self.send(Request::new("POST", target).json(body)).await
    }

    /// Publishes one message to `target` and asserts that the API accepted it.
    pub async fn publish(
        &self,
        target: &Target,
        priority: u8,
        kind: &str,
        data: Value,
    ) -> Published {
        let body = json!({ "priority": priority, "kind": kind, "data": data });
        let response = self.post(&publish_path(target), &body).await;
        Published::from_answer(&response, priority, kind, data)
    }

    /// [`publish`](Self::publish) that retries, for up to [`WAIT`], while the API is down or
    /// answers 5xx (a control plane restarting): what a platform's backend does.
    pub async fn publish_retrying(
        &self,
        target: &Target,
        priority: u8,
        kind: &str,
        data: Value,
    ) -> Published {
        let body = json!({ "priority": priority, "kind": kind, "data": data });
        let deadline = Instant::now() + WAIT;
        let response = loop {
            let request = Request::new("POST", &publish_path(target)).json(&body);
            match self.try_send(request).await {
                Ok(response) if response.status < 500 => break response,
                outcome => {
                    if Instant::now() >= deadline {
                        panic!("the publish API did not accept within {WAIT:?}: {outcome:?}");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        Published::from_answer(&response, priority, kind, data)
    }

    /// `GET /v1/rooms/{room}`, which must succeed.
    pub async fn room(&self, room: &str) -> Value {
        self.get(&format!("/v1/rooms/{room}")).await.ok()
    }

    /// `GET /v1/users/{user}`, which must succeed.
    pub async fn user(&self, user: &str) -> Value {
        self.get(&format!("/v1/users/{user}")).await.ok()
    }

    /// `GET /v1/edges`: the `edges` array.
    pub async fn edges(&self) -> Vec<Value> {
        let response = self.get("/v1/edges").await;
        edges_of(&response)
    }

    /// `GET /v1/dispatch?transport=<transport>`, as it is (it may be a 503).
    pub async fn dispatch(&self, transport: &str) -> Response {
        self.get(&format!("/v1/dispatch?transport={transport}"))
            .await
    }

    /// `POST /v1/tokens`, which must succeed: the token and its `expires_at`.
    pub async fn mint_token(&self, user: &str, ttl_s: u64, rooms: &[&str]) -> (String, u64) {
        let response = self
            .post(
                "/v1/tokens",
                &json!({ "user": user, "ttl_s": ttl_s, "rooms": rooms }),
            )
            .await;
        let answer = response.ok();
        let token = answer
            .get("token")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no string `token`: {response:?}"))
            .to_owned();
        (token, field_u64(&answer, "expires_at", &response))
    }
}

#[track_caller]
fn field_u64(value: &Value, field: &str, response: &Response) -> u64 {
    value
        .get(field)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no unsigned integer `{field}`: {response:?}"))
}

fn edges_of(response: &Response) -> Vec<Value> {
    response
        .ok()
        .get("edges")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_else(|| panic!("no `edges` array: {response:?}"))
}

/// The ids of the edges of a `GET /v1/edges` answer whose `healthy` is `true`.
pub fn healthy_edge_ids(edges: &[Value]) -> BTreeSet<String> {
    edges
        .iter()
        .filter(|e| e.get("healthy") == Some(&Value::Bool(true)))
        .filter_map(|e| e.get("edge_id").and_then(Value::as_str).map(str::to_owned))
        .collect()
}

/// The `edges` of a `GET /v1/rooms/{room}` answer as `edge_id → members`.
pub fn room_members(room: &Value) -> BTreeMap<String, u64> {
    room.get("edges")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("no `edges` array in {room}"))
        .iter()
        .map(|e| {
            let id = e.get("edge_id").and_then(Value::as_str);
            let members = e.get("members").and_then(Value::as_u64);
            match (id, members) {
                (Some(id), Some(members)) => (id.to_owned(), members),
                _ => panic!("a room edge without `edge_id` and `members`: {room}"),
            }
        })
        .collect()
}

/// The socket address a dispatch entry names: `ws://<ip:port>/ws` for WebSocket; `ip:port` (or
/// `tcp://ip:port`) for raw TCP.
pub fn dispatch_addr(transport: &str, entry: &str) -> SocketAddr {
    let hostport = match transport {
        "ws" => entry
            .strip_prefix("ws://")
            .and_then(|rest| rest.strip_suffix("/ws"))
            .unwrap_or_else(|| panic!("a ws dispatch address is ws://<host:port>/ws: {entry:?}")),
        _ => entry.strip_prefix("tcp://").unwrap_or(entry),
    };
    hostport
        .parse()
        .unwrap_or_else(|e| panic!("dispatch address {entry:?}: {hostport:?} is not ip:port ({e})"))
}

/// The addresses of a `GET /v1/dispatch` answer (which must be a 200), as socket addresses.
pub fn dispatch_addrs(transport: &str, response: &Response) -> BTreeSet<SocketAddr> {
    let answer = response.ok();
    assert_eq!(
        answer.get("transport").and_then(Value::as_str),
        Some(transport),
        "{response:?}"
    );
    answer
        .get("addresses")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("no `addresses` array: {response:?}"))
        .iter()
        .map(|a| {
            let text = a
                .as_str()
                .unwrap_or_else(|| panic!("a non-string address: {response:?}"));
            dispatch_addr(transport, text)
        })
        .collect()
}

/// A running `roomcast-control`.
///
/// Started with `--api-listen` and `--link-listen` on free loopback ports, `--api-key test-key`
/// (or the key as [`start_embedded_with`](Self::start_embedded_with) was told to give it),
/// `--jwt-secret test-secret` (the test edges' secret) and either `--no-embedded-edge`
/// ([`start`](Self::start)) or an embedded edge on free ports ([`start_embedded`]
/// (Self::start_embedded)). It can be killed and restarted on the same ports. The process is
/// killed when this value is dropped; when that happens because the test panicked, the end of
/// the log of every instance is printed.
pub struct Control {
    /// The HTTP API, with the test API key.
    pub api: Api,
    /// Where edges dial the link.
    pub link_addr: SocketAddr,
    /// The embedded edge, when it runs one.
    pub embedded_edge: Option<EdgeAddresses>,
    args: Vec<String>,
    /// Environment variables of the process (beyond the harness's).
    env: Vec<(String, String)>,
    process: Option<ChildProcess>,
    /// Instances killed by [`kill`](Self::kill), kept for their logs.
    retired: Vec<ChildProcess>,
}

impl Control {
    /// Starts a control plane without an embedded edge, plus `extra_args`, and waits for
    /// `/healthz`.
    pub async fn start(extra_args: &[&str]) -> Control {
        let [api, link] = free_local_addrs(2)[..] else {
            unreachable!()
        };
        let mut args = base_args(api, link, ApiKeyFrom::Flag);
        args.push("--no-embedded-edge".to_owned());
        args.extend(extra_args.iter().map(|a| a.to_string()));
        Control::launch(args, Vec::new(), ApiKeyFrom::Flag, api, link, None).await
    }

    /// Starts the whole system in one process: control plus its embedded edge on driver `io`
    /// (`--edge-io`, `--edge-workers 2`, `--edge-ws-listen` and `--edge-tcp-listen` on free
    /// ports), plus `extra_args`, and waits for `/healthz`.
    pub async fn start_embedded(io: &'static str, extra_args: &[&str]) -> Control {
        Control::start_embedded_with(io, extra_args, &[], ApiKeyFrom::Flag).await
    }

    /// [`start_embedded`](Self::start_embedded) with `env` in the process's environment and the
    /// API key given as `key` says.
    pub async fn start_embedded_with(
        io: &'static str,
        extra_args: &[&str],
        env: &[(&str, &str)],
        key: ApiKeyFrom,
    ) -> Control {
        let [api, link, ws, tcp] = free_local_addrs(4)[..] else {
            unreachable!()
        };
        let mut args = base_args(api, link, key);
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if key == ApiKeyFrom::Env {
            env.push(("ROOMCAST_API_KEY".to_owned(), API_KEY.to_owned()));
        }
        #[rustfmt::skip]
        args.extend([
            "--edge-ws-listen".to_owned(), ws.to_string(),
            "--edge-tcp-listen".to_owned(), tcp.to_string(),
            "--edge-io".to_owned(), io.to_owned(),
            "--edge-workers".to_owned(), WORKERS.to_string(),
        ]);
        if !extra_args.contains(&"--edge-admin-listen") {
            args.extend(["--edge-admin-listen".to_owned(), "127.0.0.1:0".to_owned()]);
        }
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let embedded = EdgeAddresses {
            ws_addr: ws,
            tcp_addr: tcp,
        };
        Control::launch(args, env, key, api, link, Some(embedded)).await
    }

    async fn launch(
        args: Vec<String>,
        env: Vec<(String, String)>,
        key: ApiKeyFrom,
        api: SocketAddr,
        link_addr: SocketAddr,
        embedded_edge: Option<EdgeAddresses>,
    ) -> Control {
        let mut control = Control {
            api: Api {
                addr: api,
                key: Some(key.key().to_owned()),
            },
            link_addr,
            embedded_edge,
            args,
            env,
            process: None,
            retired: Vec::new(),
        };
        control.spawn_healthy().await;
        control
    }

    /// Starts the process with the stored arguments and waits until `/healthz` answers 200.
    async fn spawn_healthy(&mut self) {
        let tag = match self.embedded_edge {
            Some(_) => "embedded-edge",
            None => "no-edge",
        };
        let process =
            ChildProcess::spawn_with_env(control_binary(), "control", tag, &self.args, &self.env);
        let process = self.process.insert(process);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = process.try_status() {
                panic!(
                    "roomcast-control exited with {status} before it was healthy (args {:?})\n{}",
                    self.args,
                    process.log_tail()
                );
            }
            let last = match http::send(
                self.api.addr,
                &Request::new("GET", "/healthz"),
                Duration::from_secs(1),
            )
            .await
            {
                Ok(response) if response.status == 200 => return,
                Ok(response) => format!("{response:?}"),
                Err(why) => why,
            };
            if Instant::now() >= deadline {
                panic!(
                    "roomcast-control was not healthy within {WAIT:?}; last: {last}\n{}",
                    process.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The API address.
    pub fn api_addr(&self) -> SocketAddr {
        self.api.addr
    }

    /// The running process; panics when it is not running.
    pub fn process(&mut self) -> &mut ChildProcess {
        let process = self
            .process
            .as_mut()
            .expect("roomcast-control is not running (killed)");
        process.assert_running();
        process
    }

    /// Asserts that the control process is still running.
    pub fn assert_running(&mut self) {
        self.process();
    }

    /// Kills the control process (SIGKILL, as a crash would end it) and reaps it.
    pub fn kill(&mut self) {
        let mut process = self
            .process
            .take()
            .expect("roomcast-control is not running");
        process.assert_running();
        process.kill();
        self.retired.push(process);
    }

    /// Starts control again with the same arguments (so on the same ports), killing the running
    /// instance first if there is one, and waits for `/healthz`.
    pub async fn restart(&mut self) {
        if self.process.is_some() {
            self.kill();
        }
        self.spawn_healthy().await;
    }

    /// The log of the running (or last) instance.
    pub fn log(&self) -> String {
        self.process
            .as_ref()
            .or(self.retired.last())
            .map(ChildProcess::log)
            .unwrap_or_default()
    }

    /// Starts an edge on driver `io` linked to this control plane as `edge_id`, and waits until
    /// `GET /v1/edges` lists it as healthy with the addresses it listens on.
    pub async fn start_edge(
        &self,
        io: &'static str,
        edge_id: &str,
        extra_args: &[&str],
    ) -> LinkedEdge {
        self.start_edge_via(io, edge_id, self.link_addr, extra_args)
            .await
    }

    /// [`start_edge`](Self::start_edge) with the edge dialling `link` (such as a proxy in front
    /// of this control plane's link address) instead.
    pub async fn start_edge_via(
        &self,
        io: &'static str,
        edge_id: &str,
        link: SocketAddr,
        extra_args: &[&str],
    ) -> LinkedEdge {
        let mut edge = LinkedEdge::spawn(io, &link.to_string(), edge_id, extra_args);
        let deadline = Instant::now() + WAIT;
        loop {
            edge.assert_running();
            let edges = self.api.edges().await;
            let listed = edges
                .iter()
                .find(|e| e.get("edge_id").and_then(Value::as_str) == Some(edge_id));
            if let Some(listed) = listed.filter(|e| e.get("healthy") == Some(&Value::Bool(true))) {
                assert_eq!(
                    listed.get("ws_url").and_then(Value::as_str),
                    Some(edge.ws_url().as_str()),
                    "GET /v1/edges: {listed}"
                );
                assert_eq!(
                    listed.get("tcp_addr").and_then(Value::as_str),
                    Some(edge.tcp_addr.to_string().as_str()),
                    "GET /v1/edges: {listed}"
                );
                return edge;
            }
            if Instant::now() >= deadline {
                panic!(
                    "edge {edge_id} was not listed as healthy within {WAIT:?}; GET /v1/edges: \
                     {edges:?}\n{}",
                    edge.process.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        let api = &self.api;
        poll("/readyz 200", WAIT, || async move {
            match api.try_send(Request::new("GET", "/readyz")).await {
                Ok(r) if r.status == 200 => Ok(()),
                Ok(r) => Err(format!("{r:?}")),
                Err(why) => Err(why),
            }
        })
        .await
    }

    /// Waits up to `wait` until the healthy edges of `GET /v1/edges` are exactly `ids`, and
    /// returns the `edges` array.
    pub async fn wait_healthy_edges(&self, ids: &[&str], wait: Duration) -> Vec<Value> {
        let want: BTreeSet<String> = ids.iter().map(|s| s.to_string()).collect();
        let api = &self.api;
        let want = &want;
        poll(&format!("healthy edges {ids:?}"), wait, || async move {
            let response = api.try_send(Request::new("GET", "/v1/edges")).await?;
            if response.status != 200 {
                return Err(format!("{response:?}"));
            }
            let edges = edges_of(&response);
            if healthy_edge_ids(&edges) == *want {
                Ok(edges)
            } else {
                Err(format!("{response:?}"))
            }
        })
        .await
    }

    /// Waits until `GET /v1/rooms/{room}` shows exactly `members` (`edge_id → members`) and an
    /// `online` count that is their sum, and returns the answer. Edges report member changes once
    /// a second, so this is how a test knows control has seen its joins.
    pub async fn wait_room_members(&self, room: &str, members: &[(&str, u64)]) -> Value {
        let want: BTreeMap<String, u64> =
            members.iter().map(|(e, n)| (e.to_string(), *n)).collect();
        let online: u64 = want.values().sum();
        let api = &self.api;
        let (want, target) = (&want, format!("/v1/rooms/{room}"));
        let target = &target;
        poll(
            &format!("room {room} with members {members:?}"),
            WAIT,
            || async move {
                let response = api.try_send(Request::new("GET", target)).await?;
                if response.status != 200 {
                    return Err(format!("{response:?}"));
                }
                let answer = response.json();
                let has_edges = answer.get("edges").is_some_and(Value::is_array);
                if has_edges
                    && room_members(&answer) == *want
                    && answer.get("online").and_then(Value::as_u64) == Some(online)
                {
                    Ok(answer)
                } else {
                    Err(format!("{response:?}"))
                }
            },
        )
        .await
    }
}

fn base_args(api: SocketAddr, link: SocketAddr, key: ApiKeyFrom) -> Vec<String> {
    #[rustfmt::skip]
    let args = [
        "--api-listen", &api.to_string(),
        "--link-listen", &link.to_string(),
        "--jwt-secret", SECRET,
        // Scenarios publish as soon as their edges are up; the restart scenarios that need the
        // grace set it themselves (the later flag wins).
        "--startup-grace-ms", "0",
    ]
    .map(str::to_owned);
    let mut args = args.to_vec();
    if key == ApiKeyFrom::Flag {
        args.extend(["--api-key".to_owned(), API_KEY.to_owned()]);
    }
    args
}
