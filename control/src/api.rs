//! The HTTP API (axum): publish, room/user/edge status, channel history, dispatch, tokens,
//! health, and the OpenAPI document. Every route is listed once in [`ROUTES`]; the router is built from that
//! table and a test checks the table against `openapi.json`.
//!
//! Errors are always `{"error":{"code":"...","message":"..."}}` with a matching status.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Path, Query, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use roomcast_proto::auth::{mint, Claims};
use roomcast_proto::ids::is_valid_id;
use roomcast_proto::link::LinkError;
use serde::{Deserialize, Serialize};

use crate::config::ControlConfig;
use crate::dispatch::{self, Transport};
use crate::metrics::ControlMetrics;
use crate::publish::{BatchBody, Context, Message, RawMessage};
use crate::router::{MergeReq, PublishReq, Published, Router, TargetRef};
use crate::upstream::Upstream;
use crate::userquery::UserQueries;

/// The OpenAPI 3 document describing this API, kept in the repository next to the crate.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Default and largest `limit` of a history read.
const DEFAULT_HISTORY_LIMIT: usize = 100;
const MAX_HISTORY_LIMIT: usize = 1_000;

/// Default and largest token lifetimes.
const DEFAULT_TTL_S: u64 = 3_600;
const MAX_TTL_S: u64 = 7 * 24 * 3_600;

/// API settings taken from the configuration.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub api_key: String,
    pub jwt_secret: String,
    pub tokens_enabled: bool,
    pub max_body_bytes: usize,
    pub max_batch_messages: usize,
    pub user_query_timeout: Duration,
    /// Publishes wait until then after a start (`--startup-grace-ms`).
    pub publish_opens_at: tokio::time::Instant,
}

impl ApiSettings {
    pub fn from_config(config: &ControlConfig) -> ApiSettings {
        ApiSettings {
            api_key: config.api_key.clone(),
            jwt_secret: config.jwt_secret.clone(),
            tokens_enabled: config.tokens_enabled,
            max_body_bytes: config.max_body_bytes,
            max_batch_messages: config.max_batch_messages,
            user_query_timeout: config.user_query_timeout(),
            publish_opens_at: tokio::time::Instant::now() + config.startup_grace(),
        }
    }
}

/// Everything a handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub router: Arc<Router>,
    pub queries: Arc<UserQueries>,
    pub settings: Arc<ApiSettings>,
    /// Set once the link listener accepts edges (for /readyz).
    pub link_listening: Arc<AtomicBool>,
    /// Request, publish and dispatch counters for /metrics.
    pub metrics: Arc<ControlMetrics>,
    /// Viewers' sends and receipts.
    pub upstream: Arc<Upstream>,
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// An API error: status, stable code, human message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong API key (send Authorization: Bearer <key>)",
        )
    }

    fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    fn payload_too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body exceeds {limit} bytes"),
        )
    }

    fn from_link(error: &LinkError) -> ApiError {
        match error {
            LinkError::FrameTooLarge(_) => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("message too large for the edge link: {error}"),
            ),
            other => ApiError::bad_request(other.to_string()),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: &self.message,
            },
        })
        .expect("error body serialises");
        let mut response = json_response(self.status, body);
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn json_ok<T: Serialize>(value: &T) -> Response {
    json_response(
        StatusCode::OK,
        serde_json::to_vec(value).expect("response serialises"),
    )
}

// ---------------------------------------------------------------------------------------------
// Extractors
// ---------------------------------------------------------------------------------------------

/// A request body that claims to be JSON, read whole up to `--max-body-bytes`.
pub struct JsonBody(pub Bytes);

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<JsonBody, ApiError> {
        // A missing Content-Type is taken as JSON; a different one is refused.
        if let Some(content_type) = req.headers().get(CONTENT_TYPE) {
            let essence = content_type
                .to_str()
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if essence != "application/json" && !essence.ends_with("+json") {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "Content-Type must be application/json",
                ));
            }
        }
        let limit = state.settings.max_body_bytes;
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(ApiError::payload_too_large(limit));
        }
        match Limited::new(req.into_body(), limit).collect().await {
            Ok(collected) => Ok(JsonBody(collected.to_bytes())),
            Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
                Err(ApiError::payload_too_large(limit))
            }
            Err(error) => Err(ApiError::bad_request(format!(
                "cannot read the request body: {error}"
            ))),
        }
    }
}

/// The single `{param}` of a route, as text.
struct PathParam(String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<PathParam, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| PathParam(value))
            .map_err(|rejection| ApiError::bad_request(rejection.body_text()))
    }
}

fn valid_id<'a>(id: &'a str, what: &str) -> Result<&'a str, ApiError> {
    if is_valid_id(id.as_bytes()) {
        Ok(id)
    } else {
        Err(ApiError::bad_request(format!(
            "{what} id must be 1-128 bytes of [A-Za-z0-9_.:-]"
        )))
    }
}

fn invalid_json(error: serde_json::Error) -> ApiError {
    ApiError::bad_request(format!("invalid JSON body: {error}"))
}

// ---------------------------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------------------------

/// One route of the API.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    /// Needs the bearer API key.
    pub auth: bool,
    pub handler: fn() -> MethodRouter<AppState>,
}

/// Every route the API serves; `openapi.json` documents exactly these.
pub const ROUTES: &[Route] = &[
    Route {
        method: Method::POST,
        path: "/v1/rooms/{room}/messages",
        auth: true,
        handler: || post(publish_room),
    },
    Route {
        method: Method::POST,
        path: "/v1/users/{user}/messages",
        auth: true,
        handler: || post(publish_user),
    },
    Route {
        method: Method::POST,
        path: "/v1/broadcast",
        auth: true,
        handler: || post(publish_broadcast),
    },
    Route {
        method: Method::POST,
        path: "/v1/messages",
        auth: true,
        handler: || post(publish_batch),
    },
    Route {
        method: Method::GET,
        path: "/v1/rooms/{room}",
        auth: true,
        handler: || get(get_room),
    },
    Route {
        method: Method::GET,
        path: "/v1/rooms/{room}/history",
        auth: true,
        handler: || get(get_room_history),
    },
    Route {
        method: Method::GET,
        path: "/v1/users/{user}",
        auth: true,
        handler: || get(get_user),
    },
    Route {
        method: Method::GET,
        path: "/v1/users/{user}/messages/{seq}",
        auth: true,
        handler: || get(get_user_message),
    },
    Route {
        method: Method::GET,
        path: "/v1/users/{user}/history",
        auth: true,
        handler: || get(get_user_history),
    },
    Route {
        method: Method::GET,
        path: "/v1/edges",
        auth: true,
        handler: || get(get_edges),
    },
    Route {
        method: Method::GET,
        path: "/v1/dispatch",
        auth: false,
        handler: || get(get_dispatch),
    },
    Route {
        method: Method::POST,
        path: "/v1/tokens",
        auth: true,
        handler: || post(post_token),
    },
    Route {
        method: Method::GET,
        path: "/healthz",
        auth: false,
        handler: || get(healthz),
    },
    Route {
        method: Method::GET,
        path: "/readyz",
        auth: false,
        handler: || get(readyz),
    },
    Route {
        method: Method::GET,
        path: "/metrics",
        auth: false,
        handler: || get(metrics),
    },
    Route {
        method: Method::GET,
        path: "/openapi.json",
        auth: false,
        handler: || get(openapi),
    },
];

/// Builds the axum router from [`ROUTES`].
pub fn app(state: AppState) -> axum::Router {
    let mut router = axum::Router::new();
    for route in ROUTES {
        let mut methods = (route.handler)();
        if route.auth {
            methods = methods.route_layer(middleware::from_fn_with_state(
                state.clone(),
                require_api_key,
            ));
        }
        router = router.route(route.path, methods);
    }
    router
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), count_request))
        .with_state(state)
}

/// Counts every answered request by its route template (bounded: the [`ROUTES`] paths, or
/// `other` for no route) and status.
async fn count_request(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .and_then(|m| ROUTES.iter().find(|r| r.path == m.as_str()))
        .map_or("other", |r| r.path);
    let response = next.run(req).await;
    state.metrics.request(endpoint, response.status().as_u16());
    response
}

async fn require_api_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim());
    match presented {
        Some(key) if constant_time_eq(key.as_bytes(), state.settings.api_key.as_bytes()) => {
            next.run(req).await
        }
        _ => ApiError::unauthorized().into_response(),
    }
}

/// Compares without returning early on the first differing byte, so response time says
/// nothing about how much of a guessed key was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

// ---------------------------------------------------------------------------------------------
// Publishing
// ---------------------------------------------------------------------------------------------

/// The router's view of a validated message; `data` becomes a slice of the body (no copy).
fn to_req<'a>(message: &'a Message<'a>, body: &Bytes) -> PublishReq<'a> {
    PublishReq {
        target: message.target,
        priority: message.priority,
        kind: &message.kind,
        data: body.slice_ref(message.data.get().as_bytes()),
        from: None,
        ack: message.ack,
    }
}

/// The router's view of a message's merge rule.
fn merge_req<'a>(message: &'a Message<'a>) -> Option<MergeReq<'a>> {
    message.merge.as_ref().map(|(rule, amounts)| MergeReq {
        rule,
        amounts: amounts.clone(),
    })
}

/// Holds a publish through the startup grace (edges re-registering) and while an edge link is
/// congested.
async fn admit(state: &AppState) {
    tokio::time::sleep_until(state.settings.publish_opens_at).await;
    state.router.wait_for_backlog().await;
}

async fn publish_single(
    state: &AppState,
    target: TargetRef<'_>,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let raw: RawMessage<'_> = serde_json::from_slice(body).map_err(invalid_json)?;
    let message = raw
        .check(Context::Url(target))
        .map_err(ApiError::bad_request)?;
    let req = to_req(&message, body);
    admit(state).await;
    let mut outcome = state.router.publish_merged(
        std::slice::from_ref(&req),
        &[message.id],
        &[merge_req(&message)],
    );
    state.metrics.published(1);
    match outcome.pop() {
        Some(Ok(published)) => Ok(json_ok(&published)),
        Some(Err(error)) => Err(ApiError::from_link(&error)),
        None => Err(ApiError::unavailable("publish produced no result")),
    }
}

async fn publish_room(
    State(state): State<AppState>,
    PathParam(room): PathParam,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let room = valid_id(&room, "room")?;
    publish_single(&state, TargetRef::Room(room), &body).await
}

async fn publish_user(
    State(state): State<AppState>,
    PathParam(user): PathParam,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let user = valid_id(&user, "user")?;
    publish_single(&state, TargetRef::User(user), &body).await
}

async fn publish_broadcast(
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    publish_single(&state, TargetRef::Broadcast, &body).await
}

/// `POST /v1/messages`: parse once, validate each entry, publish the valid ones under one router
/// lock, and answer per entry in order. The response is written by hand: it is the hot path.
async fn publish_batch(
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let batch: BatchBody<'_> = serde_json::from_slice(&body).map_err(invalid_json)?;
    let max = state.settings.max_batch_messages;
    if batch.messages.len() > max {
        return Err(ApiError::bad_request(format!(
            "messages holds {} entries; at most {max} per request",
            batch.messages.len()
        )));
    }
    let checked: Vec<Result<Message<'_>, String>> = batch
        .messages
        .iter()
        .map(|m| m.check(Context::Batch))
        .collect();
    let valid = || checked.iter().filter_map(|c| c.as_ref().ok());
    let reqs: Vec<PublishReq<'_>> = valid().map(|m| to_req(m, &body)).collect();
    let ids: Vec<Option<&str>> = valid().map(|m| m.id).collect();
    let merges: Vec<Option<MergeReq<'_>>> = valid().map(merge_req).collect();
    admit(&state).await;
    let mut outcomes = state
        .router
        .publish_merged(&reqs, &ids, &merges)
        .into_iter();
    state.metrics.published(reqs.len() as u64);

    let mut out = Vec::with_capacity(16 + checked.len() * 40);
    out.extend_from_slice(b"{\"results\":[");
    for (i, entry) in checked.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let outcome = match entry {
            Ok(_) => outcomes
                .next()
                .expect("one outcome per valid message")
                .map_err(|e| ApiError::from_link(&e)),
            Err(message) => Err(ApiError::bad_request(message.as_str())),
        };
        match outcome {
            Ok(published) => write_published(&mut out, published),
            Err(error) => {
                let body = ErrorBody {
                    error: ErrorDetail {
                        code: error.code,
                        message: &error.message,
                    },
                };
                serde_json::to_writer(&mut out, &body).expect("error body serialises");
            }
        }
    }
    out.extend_from_slice(b"]}");
    Ok(json_response(StatusCode::OK, out))
}

fn write_published(out: &mut Vec<u8>, published: Published) {
    let mut n = itoa::Buffer::new();
    if published.held {
        // No `seq` yet: it waits in its merge window (PROTOCOL.md §5).
        out.extend_from_slice(b"{\"held\":true");
    } else {
        out.extend_from_slice(b"{\"seq\":");
        out.extend_from_slice(n.format(published.seq).as_bytes());
    }
    out.extend_from_slice(b",\"delivered_edges\":");
    out.extend_from_slice(n.format(published.delivered_edges).as_bytes());
    if published.duplicate {
        out.extend_from_slice(b",\"duplicate\":true");
    }
    out.push(b'}');
}

// ---------------------------------------------------------------------------------------------
// Status, dispatch, tokens, health
// ---------------------------------------------------------------------------------------------

async fn get_room(
    State(state): State<AppState>,
    PathParam(room): PathParam,
) -> Result<Response, ApiError> {
    let room = valid_id(&room, "room")?;
    Ok(json_ok(&state.router.room(room)))
}

/// `since` and `limit` of a history read, as text so that a bad value's error names its field.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryParams {
    since: Option<String>,
    limit: Option<String>,
}

impl HistoryParams {
    fn parse(&self) -> Result<(u64, usize), ApiError> {
        let since = match self.since.as_deref() {
            None => 0,
            Some(text) => text.parse::<u64>().map_err(|_| {
                ApiError::bad_request("since must be a sequence number (an integer >= 0)")
            })?,
        };
        let limit = match self.limit.as_deref() {
            None => DEFAULT_HISTORY_LIMIT,
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_HISTORY_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_request(format!("limit must be 1..{MAX_HISTORY_LIMIT}"))
                })?,
        };
        Ok((since, limit))
    }
}

async fn get_room_history(
    State(state): State<AppState>,
    PathParam(room): PathParam,
    params: Result<Query<HistoryParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let room = valid_id(&room, "room")?;
    history(&state, TargetRef::Room(room), params)
}

async fn get_user_history(
    State(state): State<AppState>,
    PathParam(user): PathParam,
    params: Result<Query<HistoryParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let user = valid_id(&user, "user")?;
    history(&state, TargetRef::User(user), params)
}

/// `{"epoch":"…","last_seq":N,"complete":bool,"msgs":[{"seq","p","kind","data"},…]}`, written
/// by hand: `data` goes out verbatim, as clients receive it.
fn history(
    state: &AppState,
    target: TargetRef<'_>,
    params: Result<Query<HistoryParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|r| ApiError::bad_request(r.body_text()))?;
    let (since, limit) = params.parse()?;
    let page = state.router.history(target, since, limit);
    let data_len: usize = page.msgs.iter().map(|m| m.len() + 48).sum();
    let mut out = Vec::with_capacity(64 + data_len);
    let mut n = itoa::Buffer::new();
    out.extend_from_slice(b"{\"epoch\":\"");
    out.extend_from_slice(page.position.epoch.as_str().as_bytes());
    out.extend_from_slice(b"\",\"last_seq\":");
    out.extend_from_slice(n.format(page.position.last_seq).as_bytes());
    out.extend_from_slice(if page.complete {
        b",\"complete\":true,\"msgs\":["
    } else {
        b",\"complete\":false,\"msgs\":["
    });
    for (i, msg) in page.msgs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"seq\":");
        out.extend_from_slice(n.format(msg.seq).as_bytes());
        out.extend_from_slice(b",\"p\":");
        out.extend_from_slice(n.format(msg.priority).as_bytes());
        out.extend_from_slice(b",\"kind\":");
        serde_json::to_writer(&mut out, msg.kind()).expect("a string serialises");
        if let Some(from) = msg.from() {
            out.extend_from_slice(b",\"from\":");
            serde_json::to_writer(&mut out, from).expect("a string serialises");
        }
        if msg.ack {
            out.extend_from_slice(b",\"ack\":true");
        }
        out.extend_from_slice(b",\"data\":");
        out.extend_from_slice(&msg.data());
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    Ok(json_response(StatusCode::OK, out))
}

async fn get_user(
    State(state): State<AppState>,
    PathParam(user): PathParam,
) -> Result<Response, ApiError> {
    let user = valid_id(&user, "user")?;
    let targets = state.router.query_targets();
    let view = state
        .queries
        .ask(user, targets, state.settings.user_query_timeout)
        .await;
    Ok(json_ok(&view))
}

/// Whether message `seq` of a user's channel was acknowledged by one of the user's
/// connections (a receipt, for messages published with `"ack":true`).
async fn get_user_message(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((user, seq)) = path.map_err(|r| ApiError::bad_request(r.body_text()))?;
    let user = valid_id(&user, "user")?;
    let seq: u64 = seq
        .parse()
        .map_err(|_| ApiError::bad_request("seq must be a message's seq, an integer"))?;
    let last = state.router.position(TargetRef::User(user)).last_seq;
    if seq == 0 || seq > last {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_such_message",
            format!("user {user}'s channel has no message {seq} (its last is {last})"),
        ));
    }
    #[derive(Serialize)]
    struct Receipt<'a> {
        user: &'a str,
        seq: u64,
        acknowledged: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        edge: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        at_ms: Option<u64>,
    }
    let acked = state.upstream.receipts.lookup(user, seq);
    Ok(json_ok(&Receipt {
        user,
        seq,
        acknowledged: acked.is_some(),
        edge: acked.as_ref().map(|a| &*a.edge),
        at_ms: acked.as_ref().map(|a| a.at_ms),
    }))
}

async fn get_edges(State(state): State<AppState>) -> Response {
    #[derive(Serialize)]
    struct Edges {
        edges: Vec<crate::router::EdgeView>,
    }
    json_ok(&Edges {
        edges: state.router.edges(Instant::now()),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DispatchParams {
    transport: Option<String>,
}

async fn get_dispatch(
    State(state): State<AppState>,
    params: Result<Query<DispatchParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|r| ApiError::bad_request(r.body_text()))?;
    let transport = match params.transport.as_deref() {
        None => Transport::Ws,
        Some(t) => Transport::parse(t)
            .ok_or_else(|| ApiError::bad_request("transport must be ws or tcp"))?,
    };
    let candidates = state.router.dispatch_candidates(Instant::now());
    let addresses = dispatch::choose(&candidates, transport, &mut rand::rng());
    let result = if addresses.is_empty() {
        "unavailable"
    } else {
        "ok"
    };
    state.metrics.dispatch(transport.as_str(), result);
    if addresses.is_empty() {
        return Err(ApiError::unavailable(
            "no healthy edge with spare capacity is registered",
        ));
    }
    #[derive(Serialize)]
    struct Dispatch {
        transport: &'static str,
        addresses: Vec<String>,
    }
    Ok(json_ok(&Dispatch {
        transport: transport.as_str(),
        addresses,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    user: String,
    ttl_s: Option<u64>,
    rooms: Option<Vec<String>>,
    /// `false` mints a token that may not send (a muted viewer).
    send: Option<bool>,
}

async fn post_token(
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    if !state.settings.tokens_enabled {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "tokens_disabled",
            "token minting is disabled on this control plane (--tokens-enabled false)",
        ));
    }
    let request: TokenRequest = serde_json::from_slice(&body).map_err(invalid_json)?;
    valid_id(&request.user, "user")?;
    let ttl_s = request.ttl_s.unwrap_or(DEFAULT_TTL_S);
    if !(1..=MAX_TTL_S).contains(&ttl_s) {
        return Err(ApiError::bad_request(format!(
            "ttl_s must be 1..{MAX_TTL_S} (7 days)"
        )));
    }
    if let Some(rooms) = &request.rooms {
        for room in rooms {
            valid_id(room, "every rooms entry: room")?;
        }
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let expires_at = now + ttl_s;
    let token = mint(
        state.settings.jwt_secret.as_bytes(),
        &Claims {
            sub: request.user,
            exp: expires_at,
            rooms: request.rooms,
            send: request.send,
        },
    );
    #[derive(Serialize)]
    struct Token {
        token: String,
        expires_at: u64,
    }
    Ok(json_ok(&Token { token, expires_at }))
}

async fn healthz() -> Response {
    json_ok(&serde_json::json!({"status": "ok"}))
}

async fn readyz(State(state): State<AppState>) -> Result<Response, ApiError> {
    if !state.link_listening.load(Ordering::Acquire) {
        return Err(ApiError::unavailable("the edge link listener is not up"));
    }
    let edges = state.router.edge_count();
    if edges == 0 {
        return Err(ApiError::unavailable("no edge has registered yet"));
    }
    Ok(json_ok(
        &serde_json::json!({"status": "ready", "edges": edges}),
    ))
}

async fn metrics(State(state): State<AppState>) -> Response {
    let body = state.metrics.render(&state.router, Some(&state.upstream));
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn openapi() -> Response {
    json_response(StatusCode::OK, OPENAPI.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Levels;
    use crate::router::tests::{report, FakeEdge};
    use axum::http::Request as HttpRequest;
    use roomcast_proto::auth::Verifier;
    use roomcast_proto::link::{LinkFrame, UserConns};
    use roomcast_proto::message::Target;
    use serde_json::{json, Value};
    use tower::ServiceExt;

    const KEY: &str = "test-key";

    struct Harness {
        state: AppState,
        app: axum::Router,
    }

    fn harness_with(settings: impl FnOnce(&mut ApiSettings)) -> Harness {
        let mut s = ApiSettings {
            api_key: KEY.into(),
            jwt_secret: "test-secret".into(),
            tokens_enabled: true,
            max_body_bytes: 4096,
            max_batch_messages: 5,
            user_query_timeout: Duration::from_millis(200),
            publish_opens_at: tokio::time::Instant::now(),
        };
        settings(&mut s);
        let state = AppState {
            router: Arc::new(Router::new(
                Levels::default(),
                Duration::from_secs(3),
                64 << 20,
            )),
            queries: Arc::new(UserQueries::new()),
            settings: Arc::new(s),
            link_listening: Arc::new(AtomicBool::new(true)),
            metrics: Arc::default(),
            upstream: Arc::new(
                Upstream::from_config(&crate::config::ControlConfig::default())
                    .expect("the default upstream"),
            ),
        };
        Harness {
            app: app(state.clone()),
            state,
        }
    }

    fn harness() -> Harness {
        harness_with(|_| {})
    }

    impl Harness {
        async fn send(&self, req: HttpRequest<Body>) -> (StatusCode, Value) {
            let response = self.app.clone().oneshot(req).await.unwrap();
            let status = response.status();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            let value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| panic!("non-JSON body: {}", String::from_utf8_lossy(&bytes)));
            (status, value)
        }

        async fn call(&self, method: &str, path: &str, body: Option<&str>) -> (StatusCode, Value) {
            let mut req = HttpRequest::builder()
                .method(method)
                .uri(path)
                .header(AUTHORIZATION, format!("Bearer {KEY}"));
            if body.is_some() {
                req = req.header(CONTENT_TYPE, "application/json");
            }
            let body = body.map_or_else(Body::empty, |b| Body::from(b.to_owned()));
            self.send(req.body(body).unwrap()).await
        }

        fn edge(&self, id: &str, rooms: &[(&str, u32)], users: &[(&str, u32)]) -> FakeEdge {
            let edge = FakeEdge::register(&self.state.router, id, 1_000);
            self.state.router.apply_report(
                edge.key,
                report(true, rooms, users),
                std::time::Instant::now(),
            );
            edge
        }
    }

    fn error_code(body: &Value) -> &str {
        body["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("not an error: {body}"))
    }

    #[tokio::test]
    async fn every_v1_route_but_dispatch_needs_the_api_key() {
        let h = harness();
        for route in ROUTES.iter().filter(|r| r.path.starts_with("/v1/")) {
            let path = route.path.replace("{room}", "r1").replace("{user}", "u1");
            for auth in [
                None,
                Some("Bearer wrong-key"),
                Some("Basic dGVzdC1rZXk="),
                Some(KEY),
            ] {
                let mut req = HttpRequest::builder()
                    .method(route.method.clone())
                    .uri(&path);
                if let Some(auth) = auth {
                    req = req.header(AUTHORIZATION, auth);
                }
                let response = h
                    .app
                    .clone()
                    .oneshot(req.body(Body::empty()).unwrap())
                    .await
                    .unwrap();
                let status = response.status();
                assert_eq!(
                    status == StatusCode::UNAUTHORIZED,
                    route.auth,
                    "{} {path} with {auth:?}: {status}",
                    route.method
                );
                if route.auth {
                    let body = response.into_body().collect().await.unwrap().to_bytes();
                    let value: Value = serde_json::from_slice(&body).unwrap();
                    assert_eq!(error_code(&value), "unauthorized");
                }
            }
        }
        let (status, _) = h
            .send(
                HttpRequest::get("/v1/edges")
                    .header(AUTHORIZATION, format!("bearer {KEY}"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "the scheme is case-insensitive");
    }

    #[tokio::test]
    async fn room_publish_returns_seq_and_delivered_edges() {
        let h = harness();
        let mut e1 = h.edge("e1", &[("r1", 2)], &[]);
        let mut e2 = h.edge("e2", &[("r2", 1)], &[]);
        let body = r#"{"priority":1,"kind":"gift","data":{"gift":"rocket"}}"#;
        let (status, value) = h.call("POST", "/v1/rooms/r1/messages", Some(body)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(value, json!({"seq": 1, "delivered_edges": 1}));
        let (_, value) = h.call("POST", "/v1/rooms/r1/messages", Some(body)).await;
        assert_eq!(value, json!({"seq": 2, "delivered_edges": 1}));
        let frames = e1.frames();
        assert_eq!(frames.len(), 2);
        let LinkFrame::Publish(p) = &frames[0] else {
            panic!("{frames:?}")
        };
        assert_eq!(p.target, Target::Room("r1".into()));
        assert_eq!(
            (p.msg.seq, p.msg.priority, p.msg.kind.as_str()),
            (1, 1, "gift")
        );
        assert_eq!(
            &p.msg.data[..],
            br#"{"gift":"rocket"}"#,
            "data passes through verbatim"
        );
        assert!(e2.frames().is_empty());

        let (_, value) = h
            .call("POST", "/v1/rooms/nobody-here/messages", Some(body))
            .await;
        assert_eq!(value, json!({"seq": 1, "delivered_edges": 0}));
    }

    #[tokio::test]
    async fn user_and_broadcast_publishes() {
        let h = harness();
        let mut e1 = h.edge("e1", &[], &[("u1", 1)]);
        let mut e2 = h.edge("e2", &[], &[]);
        let body = r#"{"priority":0,"kind":"notice","data":"hi"}"#;
        let (_, value) = h.call("POST", "/v1/users/u1/messages", Some(body)).await;
        assert_eq!(value, json!({"seq": 1, "delivered_edges": 1}));
        let (_, value) = h.call("POST", "/v1/broadcast", Some(body)).await;
        assert_eq!(value, json!({"seq": 1, "delivered_edges": 2}));
        assert_eq!(e1.publishes().len(), 2);
        assert_eq!(e2.publishes(), vec![(Target::Broadcast, 1)]);
    }

    #[tokio::test]
    async fn batch_answers_per_entry_in_order() {
        let h = harness();
        let mut e1 = h.edge("e1", &[("r1", 1)], &[("u1", 1)]);
        let body = r#"{"messages":[
            {"room":"r1","priority":2,"kind":"gift","data":{"n":1}},
            {"room":"r1","priority":7,"kind":"gift","data":1},
            {"user":"u1","priority":1,"kind":"notice","data":[]},
            {"broadcast":true,"priority":0,"kind":"system","data":null},
            {"room":"r1","priority":3,"kind":"chat","data":"x"}
        ]}"#;
        let (status, value) = h.call("POST", "/v1/messages", Some(body)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            value,
            json!({"results": [
                {"seq": 1, "delivered_edges": 1},
                {"error": {"code": "bad_request", "message": "priority must be 0..3"}},
                {"seq": 1, "delivered_edges": 1},
                {"seq": 1, "delivered_edges": 1},
                {"seq": 2, "delivered_edges": 1}
            ]})
        );
        assert_eq!(e1.publishes().len(), 4);

        let six: Vec<String> = (0..6)
            .map(|_| r#"{"broadcast":true,"priority":0,"kind":"k","data":1}"#.to_owned())
            .collect();
        let too_many = format!(r#"{{"messages":[{}]}}"#, six.join(","));
        let (status, value) = h.call("POST", "/v1/messages", Some(&too_many)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(value["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 5"));
    }

    #[tokio::test]
    async fn a_repeated_id_answers_the_first_seq_as_a_duplicate() {
        let h = harness();
        let mut e1 = h.edge("e1", &[("r1", 1)], &[("u1", 1)]);
        let body = r#"{"priority":1,"kind":"gift","data":{"gift":"rocket"},"id":"order-1"}"#;
        let (status, value) = h.call("POST", "/v1/rooms/r1/messages", Some(body)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(value, json!({"seq": 1, "delivered_edges": 1}));
        let (status, value) = h.call("POST", "/v1/rooms/r1/messages", Some(body)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            value,
            json!({"seq": 1, "delivered_edges": 0, "duplicate": true})
        );
        // Same id, other channel: a publish of its own.
        let (_, value) = h.call("POST", "/v1/users/u1/messages", Some(body)).await;
        assert_eq!(value, json!({"seq": 1, "delivered_edges": 1}));
        // In a batch: against earlier requests and within the batch itself.
        let batch = r#"{"messages":[
            {"room":"r1","priority":1,"kind":"gift","data":1,"id":"order-1"},
            {"room":"r1","priority":1,"kind":"gift","data":2,"id":"order-2"},
            {"room":"r1","priority":1,"kind":"gift","data":2,"id":"order-2"},
            {"room":"r1","priority":1,"kind":"gift","data":3,"id":"bad id"},
            {"room":"r1","priority":1,"kind":"gift","data":4}
        ]}"#;
        let (status, value) = h.call("POST", "/v1/messages", Some(batch)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            value,
            json!({"results": [
                {"seq": 1, "delivered_edges": 0, "duplicate": true},
                {"seq": 2, "delivered_edges": 1},
                {"seq": 2, "delivered_edges": 0, "duplicate": true},
                {"error": {"code": "bad_request",
                           "message": "id must be a string of 1-128 bytes of [A-Za-z0-9_.:-]"}},
                {"seq": 3, "delivered_edges": 1}
            ]})
        );
        assert_eq!(
            e1.publishes(),
            vec![
                (Target::Room("r1".into()), 1),
                (Target::User("u1".into()), 1),
                (Target::Room("r1".into()), 2),
                (Target::Room("r1".into()), 3)
            ]
        );
    }

    #[tokio::test]
    async fn history_returns_stored_messages_verbatim_with_the_position() {
        let h = harness();
        let _e1 = h.edge("e1", &[("r1", 1)], &[]);
        for data in [r#"{"n":1}"#, r#"{ "n" : 2.50 }"#, r#""three""#] {
            let body = format!(r#"{{"priority":2,"kind":"gift","data":{data}}}"#);
            h.call("POST", "/v1/rooms/r1/messages", Some(&body)).await;
        }
        let epoch = h.state.router.position(TargetRef::Room("r1")).epoch;
        let req = HttpRequest::get("/v1/rooms/r1/history?since=1")
            .header(AUTHORIZATION, format!("Bearer {KEY}"))
            .body(Body::empty())
            .unwrap();
        let response = h.app.clone().oneshot(req).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            format!(
                r#"{{"epoch":"{epoch}","last_seq":3,"complete":true,"msgs":[{{"seq":2,"p":2,"kind":"gift","data":{{ "n" : 2.50 }}}},{{"seq":3,"p":2,"kind":"gift","data":"three"}}]}}"#
            ),
            "data verbatim"
        );
        let (_, value) = h.call("GET", "/v1/rooms/r1/history?limit=1", None).await;
        assert_eq!(value["msgs"].as_array().unwrap().len(), 1);
        assert_eq!(value["msgs"][0]["seq"], 1);
        assert_eq!(value["complete"], true);
        let (_, value) = h.call("GET", "/v1/rooms/r1/history?since=3", None).await;
        assert_eq!(
            value,
            json!({"epoch": epoch.as_str(), "last_seq": 3, "complete": true, "msgs": []})
        );
        // A user channel; nothing published yet.
        let (status, value) = h.call("GET", "/v1/users/u1/history", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(value["last_seq"], 0);
        assert_eq!(value["epoch"].as_str().unwrap().len(), 8);
        let body = r#"{"priority":0,"kind":"notice","data":[1]}"#;
        h.call("POST", "/v1/users/u1/messages", Some(body)).await;
        let (_, value) = h.call("GET", "/v1/users/u1/history?since=0", None).await;
        assert_eq!(
            value["msgs"],
            json!([{"seq": 1, "p": 0, "kind": "notice", "data": [1]}])
        );

        for (query, message) in [
            ("since=-1", "since must be a sequence number"),
            ("since=x", "since must be a sequence number"),
            ("limit=0", "limit must be 1..1000"),
            ("limit=1001", "limit must be 1..1000"),
            ("limit=ten", "limit must be 1..1000"),
            ("sinse=1", "unknown field"),
        ] {
            let (status, value) = h
                .call("GET", &format!("/v1/rooms/r1/history?{query}"), None)
                .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
            let text = value["error"]["message"].as_str().unwrap();
            assert!(text.contains(message), "{query}: {text}");
        }
        let (status, _) = h.call("GET", "/v1/rooms/r%20x/history", None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn history_says_when_it_is_no_longer_complete() {
        let h = harness();
        // Level 1 keeps 300 messages: publish 305 in one batch (5 at a time: max batch 5).
        for _ in 0..61 {
            let one = r#"{"room":"r1","priority":2,"kind":"gift","data":1}"#;
            let batch = format!(r#"{{"messages":[{one},{one},{one},{one},{one}]}}"#);
            h.call("POST", "/v1/messages", Some(&batch)).await;
        }
        let (_, value) = h.call("GET", "/v1/rooms/r1/history?limit=10", None).await;
        assert_eq!(value["last_seq"], 305);
        assert_eq!(value["complete"], false, "1..=5 were evicted");
        assert_eq!(value["msgs"][0]["seq"], 6);
        let (_, value) = h
            .call("GET", "/v1/rooms/r1/history?since=5&limit=1000", None)
            .await;
        assert_eq!(value["complete"], true);
        assert_eq!(value["msgs"].as_array().unwrap().len(), 300);
    }

    #[tokio::test]
    async fn request_errors_have_the_documented_shape_and_status() {
        let h = harness();
        // (method, path, body, status, code, part of the message)
        type Case<'a> = (
            &'a str,
            &'a str,
            Option<&'a str>,
            StatusCode,
            &'a str,
            &'a str,
        );
        let cases: [Case<'_>; 9] = [
            (
                "POST",
                "/v1/rooms/r1/messages",
                Some("{not json"),
                StatusCode::BAD_REQUEST,
                "bad_request",
                "invalid JSON body",
            ),
            (
                "POST",
                "/v1/rooms/r1/messages",
                Some(r#"{"priority":9,"kind":"gift","data":1}"#),
                StatusCode::BAD_REQUEST,
                "bad_request",
                "priority must be 0..3",
            ),
            (
                "POST",
                "/v1/rooms/r1/messages",
                Some(r#"{"kind":"gift","data":1}"#),
                StatusCode::BAD_REQUEST,
                "bad_request",
                "priority is required",
            ),
            (
                "POST",
                "/v1/rooms/r%20x/messages",
                Some(r#"{"priority":1,"kind":"gift","data":1}"#),
                StatusCode::BAD_REQUEST,
                "bad_request",
                "room id must be",
            ),
            (
                "POST",
                "/v1/messages",
                Some(r#"{"msgs":[]}"#),
                StatusCode::BAD_REQUEST,
                "bad_request",
                "unknown field",
            ),
            (
                "GET",
                "/v1/nothing",
                None,
                StatusCode::NOT_FOUND,
                "not_found",
                "no route",
            ),
            (
                "DELETE",
                "/v1/edges",
                None,
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "not allowed",
            ),
            (
                "GET",
                "/v1/dispatch?transport=udp",
                None,
                StatusCode::BAD_REQUEST,
                "bad_request",
                "transport must be ws or tcp",
            ),
            (
                "GET",
                "/v1/dispatch",
                None,
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "no healthy edge",
            ),
        ];
        for (method, path, body, status, code, message) in cases {
            let (got_status, value) = h.call(method, path, body).await;
            assert_eq!(got_status, status, "{method} {path}: {value}");
            assert_eq!(error_code(&value), code, "{method} {path}");
            let text = value["error"]["message"].as_str().unwrap();
            assert!(text.contains(message), "{method} {path}: {text:?}");
        }
    }

    #[tokio::test]
    async fn oversize_and_non_json_bodies_are_refused() {
        let h = harness();
        let big = format!(
            r#"{{"priority":1,"kind":"gift","data":"{}"}}"#,
            "x".repeat(5000)
        );
        // Refused from the declared Content-Length, before reading...
        let req = HttpRequest::post("/v1/rooms/r1/messages")
            .header(AUTHORIZATION, format!("Bearer {KEY}"))
            .header(CONTENT_LENGTH, big.len())
            .body(Body::from(big.clone()))
            .unwrap();
        let (status, value) = h.send(req).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(error_code(&value), "payload_too_large");
        // ...and while reading when no length is declared.
        let (status, value) = h.call("POST", "/v1/rooms/r1/messages", Some(&big)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(error_code(&value), "payload_too_large");

        let req = HttpRequest::post("/v1/rooms/r1/messages")
            .header(AUTHORIZATION, format!("Bearer {KEY}"))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(r#"{"priority":1,"kind":"gift","data":1}"#))
            .unwrap();
        let (status, value) = h.send(req).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(error_code(&value), "unsupported_media_type");

        // No Content-Type at all is taken as JSON.
        let req = HttpRequest::post("/v1/rooms/r1/messages")
            .header(AUTHORIZATION, format!("Bearer {KEY}"))
            .body(Body::from(r#"{"priority":1,"kind":"gift","data":1}"#))
            .unwrap();
        assert_eq!(h.send(req).await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn room_view_shows_online_level_and_edges() {
        let h = harness();
        let _e1 = h.edge("e1", &[("r1", 700)], &[]);
        let _e2 = h.edge("e2", &[("r1", 400)], &[]);
        let (status, value) = h.call("GET", "/v1/rooms/r1", None).await;
        assert_eq!(status, StatusCode::OK);
        let epoch = h.state.router.position(TargetRef::Room("r1")).epoch;
        // These edges reported no user sketch: `users` is then at least 1 while anyone is online.
        assert_eq!(
            value,
            json!({"room": "r1", "online": 1100, "users": 1, "level": 2, "tick_ms": 250,
                   "last_seq": 0, "epoch": epoch.as_str(),
                   "edges": [{"edge_id": "e1", "members": 700}, {"edge_id": "e2", "members": 400}]})
        );
        // Distinct users over both edges: alice, on both, counts once.
        for (edge, users) in [(&_e1, &["alice", "bob"][..]), (&_e2, &["alice"][..])] {
            h.state.router.apply_report(
                edge.key,
                crate::router::tests::report_users(false, &[("r2", users.len() as u32, users)]),
                std::time::Instant::now(),
            );
        }
        let (_, value) = h.call("GET", "/v1/rooms/r2", None).await;
        assert_eq!((&value["online"], &value["users"]), (&json!(3), &json!(2)));
        let (status, value) = h.call("GET", "/v1/rooms/unknown", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(value["online"], 0);
        assert_eq!(value["level"], 1);
    }

    #[tokio::test]
    async fn user_lookup_asks_the_edges() {
        let h = harness();
        let mut e1 = h.edge("e1", &[], &[("u1", 1)]);
        let queries = Arc::clone(&h.state.queries);
        let answer = tokio::spawn(async move {
            loop {
                for frame in e1.frames() {
                    if let LinkFrame::QueryUser(q) = frame {
                        queries.answer(UserConns {
                            request: q.request,
                            user: q.user,
                            conns: vec![roomcast_proto::link::ConnInfo {
                                format: roomcast_proto::client::WireFormat::WsJson,
                                peer: "127.0.0.1:5555".into(),
                                rooms: vec!["r1".into()],
                            }],
                        });
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let (status, value) = h.call("GET", "/v1/users/u1", None).await;
        answer.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            value,
            json!({"user": "u1", "connections": [{"edge_id": "e1", "transport": "ws",
                   "encoding": "json", "peer": "127.0.0.1:5555", "rooms": ["r1"]}],
                   "unanswered_edges": []})
        );
    }

    #[tokio::test]
    async fn edges_dispatch_and_readiness() {
        let h = harness();
        let (status, value) = h.call("GET", "/readyz", None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error_code(&value), "unavailable");
        let _e1 = h.edge("e1", &[], &[]);
        let (status, _) = h.call("GET", "/readyz", None).await;
        assert_eq!(status, StatusCode::OK);

        let (_, value) = h.call("GET", "/v1/edges", None).await;
        let edge = &value["edges"][0];
        assert_eq!(edge["edge_id"], "e1");
        assert_eq!(edge["ws_url"], "ws://127.0.0.1:8002/ws");
        assert_eq!(edge["tcp_addr"], "127.0.0.1:9002");
        assert_eq!(edge["capacity"], 1000);
        assert_eq!(edge["healthy"], true);
        for field in [
            "workers",
            "connections",
            "bytes_out",
            "frames_out",
            "msgs_dropped",
            "slow_closes",
            "last_report_ms_ago",
        ] {
            assert!(edge[field].is_u64(), "{field}: {edge}");
        }

        let (status, value) = h.call("GET", "/v1/dispatch?transport=tcp", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            value,
            json!({"transport": "tcp", "addresses": ["127.0.0.1:9002"]})
        );
        let (_, value) = h.call("GET", "/v1/dispatch", None).await;
        assert_eq!(
            value,
            json!({"transport": "ws", "addresses": ["ws://127.0.0.1:8002/ws"]})
        );
        let (status, value) = h.call("GET", "/healthz", None).await;
        assert_eq!((status, value), (StatusCode::OK, json!({"status": "ok"})));
    }

    #[tokio::test]
    async fn tokens_are_minted_and_verify_on_the_edge() {
        let h = harness();
        let (status, value) = h
            .call(
                "POST",
                "/v1/tokens",
                Some(r#"{"user":"u1","ttl_s":60,"rooms":["r1"]}"#),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let token = value["token"].as_str().unwrap();
        let expires_at = value["expires_at"].as_u64().unwrap();
        let claims = Verifier::new(b"test-secret")
            .verify(token, expires_at - 30)
            .unwrap();
        assert_eq!(claims.sub, "u1");
        assert_eq!(claims.rooms, Some(vec!["r1".to_string()]));

        for (body, message) in [
            (r#"{"user":"u 1"}"#, "user id must be"),
            (r#"{"user":"u1","ttl_s":0}"#, "ttl_s must be"),
            (r#"{"user":"u1","ttl_s":999999999}"#, "ttl_s must be"),
            (
                r#"{"user":"u1","rooms":["ok","not ok"]}"#,
                "room id must be",
            ),
            (r#"{"ttl_s":60}"#, "missing field `user`"),
        ] {
            let (status, value) = h.call("POST", "/v1/tokens", Some(body)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            assert!(
                value["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains(message),
                "{value}"
            );
        }

        let off = harness_with(|s| s.tokens_enabled = false);
        let (status, value) = off
            .call("POST", "/v1/tokens", Some(r#"{"user":"u1"}"#))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(error_code(&value), "tokens_disabled");
    }

    #[tokio::test]
    async fn metrics_are_prometheus_text_counting_requests_by_route() {
        let h = harness();
        let (status, _) = h.call("GET", "/v1/rooms/r1", None).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = h.call("GET", "/nowhere", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let req = HttpRequest::builder()
            .uri("/metrics")
            .body(Body::empty())
            .unwrap();
        let response = h.app.clone().oneshot(req).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"));
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(text.contains(
            "roomcast_control_http_requests_total{endpoint=\"/v1/rooms/{room}\",status=\"200\"} 1\n"
        ), "{text}");
        assert!(
            text.contains(
                "roomcast_control_http_requests_total{endpoint=\"other\",status=\"404\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("# TYPE roomcast_control_edges_up gauge\n"),
            "{text}"
        );
    }

    /// Every route in [`ROUTES`] is in openapi.json with the same method, and nothing else is.
    #[tokio::test]
    async fn openapi_document_matches_the_routes() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.0"));
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                if ["get", "post", "put", "delete", "patch", "head", "options"]
                    .contains(&method.as_str())
                {
                    documented.push((method.to_uppercase(), path.clone()));
                }
            }
        }
        let mut served: Vec<(String, String)> = ROUTES
            .iter()
            .map(|r| (r.method.to_string(), r.path.to_owned()))
            .collect();
        documented.sort();
        served.sort();
        assert_eq!(documented, served);

        // And the built router really answers each table entry with that method.
        let h = harness();
        for route in ROUTES {
            if route.path == "/metrics" {
                continue; // text, not JSON: metrics_are_prometheus_text
            }
            let path = route.path.replace("{room}", "r1").replace("{user}", "u1");
            let (status, value) = h.call(route.method.as_str(), &path, Some("{}")).await;
            assert_ne!(
                status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{} {path}",
                route.method
            );
            if status == StatusCode::NOT_FOUND {
                assert!(!value["error"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("no route"));
            }
        }
        // /openapi.json serves the same document.
        let (status, value) = h.call("GET", "/openapi.json", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(value, doc);
    }

    #[tokio::test]
    async fn a_user_message_says_whether_it_was_acknowledged() {
        let h = harness();
        let (status, body) = h
            .call(
                "POST",
                "/v1/users/u1/messages",
                Some(r#"{"priority":1,"kind":"reward","data":{"coins":5},"ack":true}"#),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let seq = body["seq"].as_u64().unwrap();
        let (status, body) = h
            .call("GET", &format!("/v1/users/u1/messages/{seq}"), None)
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            json!({"user": "u1", "seq": seq, "acknowledged": false})
        );
        let edge: Arc<str> = "e1".into();
        h.state.upstream.receipts.record(
            &edge,
            vec![roomcast_proto::link::Ack {
                user: "u1".into(),
                msg_seq: seq,
                at_ms: 1_764_860_000_123,
            }],
        );
        let (_, body) = h
            .call("GET", &format!("/v1/users/u1/messages/{seq}"), None)
            .await;
        assert_eq!(
            body,
            json!({"user": "u1", "seq": seq, "acknowledged": true, "edge": "e1", "at_ms": 1_764_860_000_123u64})
        );
        for (path, status) in [
            (
                format!("/v1/users/u1/messages/{}", seq + 1),
                StatusCode::NOT_FOUND,
            ),
            ("/v1/users/u1/messages/0".to_owned(), StatusCode::NOT_FOUND),
            (
                "/v1/users/u1/messages/x".to_owned(),
                StatusCode::BAD_REQUEST,
            ),
            (
                "/v1/users/u%201/messages/1".to_owned(),
                StatusCode::BAD_REQUEST,
            ),
        ] {
            let (got, body) = h.call("GET", &path, None).await;
            assert_eq!(got, status, "{path}: {body}");
        }
        let (_, body) = h.call("GET", "/v1/users/u1/messages/99", None).await;
        assert_eq!(error_code(&body), "no_such_message");
    }

    #[tokio::test]
    async fn ack_is_for_user_messages_only_and_not_with_merge() {
        let h = harness();
        for (path, body, says) in [
            (
                "/v1/rooms/r1/messages",
                r#"{"priority":1,"kind":"k","data":1,"ack":true}"#,
                "for messages to a user",
            ),
            (
                "/v1/broadcast",
                r#"{"priority":1,"kind":"k","data":1,"ack":true}"#,
                "for messages to a user",
            ),
            (
                "/v1/users/u1/messages",
                r#"{"priority":1,"kind":"k","data":1,"ack":"yes"}"#,
                "ack must be true or false",
            ),
            (
                "/v1/users/u1/messages",
                r#"{"priority":1,"kind":"k","data":{"n":1},"ack":true,"merge":{"key":"a","op":"latest"}}"#,
                "cannot be combined",
            ),
        ] {
            let (status, value) = h.call("POST", path, Some(body)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            let message = value["error"]["message"].as_str().unwrap();
            assert!(message.contains(says), "{body}: {message}");
        }
        let (status, _) = h
            .call(
                "POST",
                "/v1/users/u1/messages",
                Some(r#"{"priority":1,"kind":"k","data":1,"ack":false}"#),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_token_can_be_minted_for_a_viewer_who_may_not_send() {
        let h = harness();
        let (status, body) = h
            .call("POST", "/v1/tokens", Some(r#"{"user":"u1","send":false}"#))
            .await;
        assert_eq!(status, StatusCode::OK);
        let verifier = Verifier::new(b"test-secret");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = verifier
            .verify(body["token"].as_str().unwrap(), now)
            .unwrap();
        assert_eq!(claims.send, Some(false));
    }
}
