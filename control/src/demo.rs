//! The development demo (`/demo/`): the H5 live-room page of `examples/h5-room` and the
//! JavaScript SDK it runs on (`sdk/js`), served from the source tree, and a token endpoint for
//! the page, so that it never needs the API key.
//!
//! It exists only in development mode — the built-in development API key in use and `--demo`
//! left on — because `/demo/token` mints a token for anyone who asks. A control plane with its
//! own API key answers `/demo/*` with 404.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use roomcast_proto::auth::{mint, Claims};
use roomcast_proto::ids::is_valid_id;
use serde::{Deserialize, Serialize};

/// Where the demo's files are and what its tokens are signed with.
#[derive(Debug, Clone)]
pub struct Demo {
    /// The page (`examples/h5-room`).
    pub page_dir: PathBuf,
    /// The SDK's browser build (`sdk/js/dist`).
    pub sdk_dir: PathBuf,
    pub jwt_secret: String,
}

/// How long a demo token lives.
const DEMO_TOKEN_TTL_S: u64 = 3600;

/// The page's directory in this source tree (what `cargo run` serves).
pub fn default_page_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/h5-room")
}

/// The SDK build's directory in this source tree.
pub fn default_sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/js/dist")
}

/// The demo's routes, to merge into the API's router.
pub fn routes(demo: Demo) -> axum::Router {
    axum::Router::new()
        .route("/demo", get(redirect))
        .route("/demo/", get(index))
        .route("/demo/token", post(token))
        .route("/demo/sdk/{*path}", get(sdk_file))
        .route("/demo/{*path}", get(page_file))
        .with_state(Arc::new(demo))
}

async fn redirect() -> Response {
    (StatusCode::PERMANENT_REDIRECT, [(LOCATION, "/demo/")]).into_response()
}

async fn index(State(demo): State<Arc<Demo>>) -> Response {
    serve(&demo.page_dir, "index.html").await
}

async fn page_file(State(demo): State<Arc<Demo>>, UrlPath(path): UrlPath<String>) -> Response {
    serve(&demo.page_dir, &path).await
}

async fn sdk_file(State(demo): State<Arc<Demo>>, UrlPath(path): UrlPath<String>) -> Response {
    let response = serve(&demo.sdk_dir, &path).await;
    if response.status() == StatusCode::NOT_FOUND && !demo.sdk_dir.exists() {
        return not_found(&format!(
            "the SDK is not built: run `npm ci && npm run build` in sdk/js (looked in {})",
            demo.sdk_dir.display()
        ));
    }
    response
}

/// A file under `dir`, by a relative path of plain names (no `..`, no absolute paths).
async fn serve(dir: &Path, path: &str) -> Response {
    let relative = Path::new(path);
    let plain = relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)));
    if path.is_empty() || !plain {
        return not_found("no such demo file");
    }
    match tokio::fs::read(dir.join(relative)).await {
        Ok(bytes) => (
            [
                (CONTENT_TYPE, content_type(path)),
                (CACHE_CONTROL, "no-cache"),
            ],
            Bytes::from(bytes),
        )
            .into_response(),
        Err(_) => not_found("no such demo file"),
    }
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    }
}

fn not_found(message: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({"error": {"code": "not_found", "message": message}})),
    )
        .into_response()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    user: Option<String>,
}

#[derive(Serialize)]
struct DemoToken {
    user: String,
    token: String,
    expires_at: u64,
}

/// Mints a token for the demo page's viewer: the user it names, or a new `viewer-<n>`.
async fn token(State(demo): State<Arc<Demo>>, body: Bytes) -> Response {
    let request: TokenRequest = if body.is_empty() {
        TokenRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(request) => request,
            Err(error) => {
                return (
                    StatusCode::BAD_REQUEST,
                    axum::Json(serde_json::json!({"error": {"code": "bad_request", "message": format!("invalid JSON body: {error}")}})),
                )
                    .into_response()
            }
        }
    };
    let user = match request.user {
        Some(user) if is_valid_id(user.as_bytes()) => user,
        Some(_) => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(serde_json::json!({"error": {"code": "bad_request", "message": "user id must be 1-128 bytes of [A-Za-z0-9_.:-]"}})),
            )
                .into_response()
        }
        None => format!("viewer-{}", rand::random::<u32>() % 1_000_000),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let expires_at = now + DEMO_TOKEN_TTL_S;
    let token = mint(
        demo.jwt_secret.as_bytes(),
        &Claims {
            sub: user.clone(),
            exp: expires_at,
            rooms: None,
            send: None,
        },
    );
    axum::Json(DemoToken {
        user,
        token,
        expires_at,
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use roomcast_proto::auth::Verifier;
    use tower::ServiceExt;

    fn demo() -> (axum::Router, PathBuf) {
        let dir = std::env::temp_dir().join(format!("roomcast-demo-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("page/js")).unwrap();
        std::fs::create_dir_all(dir.join("sdk")).unwrap();
        std::fs::write(dir.join("page/index.html"), "<h1>room</h1>").unwrap();
        std::fs::write(dir.join("page/js/app.js"), "export {}").unwrap();
        std::fs::write(dir.join("sdk/index.js"), "export class Client {}").unwrap();
        std::fs::write(dir.join("secret.txt"), "no").unwrap();
        let router = routes(Demo {
            page_dir: dir.join("page"),
            sdk_dir: dir.join("sdk"),
            jwt_secret: "s".into(),
        });
        (router, dir)
    }

    async fn get(router: &axum::Router, path: &str) -> (StatusCode, String, String) {
        let response = router
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, content_type, String::from_utf8_lossy(&body).into())
    }

    #[tokio::test]
    async fn the_page_and_the_sdk_are_served_and_nothing_outside_them() {
        let (router, _dir) = demo();
        let (status, kind, body) = get(&router, "/demo/").await;
        assert_eq!(
            (status, kind.as_str(), body.as_str()),
            (StatusCode::OK, "text/html; charset=utf-8", "<h1>room</h1>")
        );
        let (status, kind, _) = get(&router, "/demo/js/app.js").await;
        assert_eq!(
            (status, kind.as_str()),
            (StatusCode::OK, "text/javascript; charset=utf-8")
        );
        let (status, _, body) = get(&router, "/demo/sdk/index.js").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "export class Client {}")
        );
        assert_eq!(
            get(&router, "/demo").await.0,
            StatusCode::PERMANENT_REDIRECT
        );
        for path in [
            "/demo/../secret.txt",
            "/demo/%2e%2e/secret.txt",
            "/demo/js/../../secret.txt",
            "/demo/sdk/../../secret.txt",
            "/demo//etc/passwd",
            "/demo/missing.js",
        ] {
            assert_eq!(get(&router, path).await.0, StatusCode::NOT_FOUND, "{path}");
        }
    }

    #[tokio::test]
    async fn a_demo_token_is_valid_for_the_user_it_names_or_a_new_viewer() {
        let (router, _dir) = demo();
        let verifier = Verifier::new(b"s");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        for (body, user) in [("", None), (r#"{"user":"alice"}"#, Some("alice"))] {
            let response = router
                .clone()
                .oneshot(Request::post("/demo/token").body(Body::from(body)).unwrap())
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            let answer: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            let claims = verifier
                .verify(answer["token"].as_str().unwrap(), now)
                .unwrap();
            assert_eq!(claims.sub, answer["user"].as_str().unwrap());
            match user {
                Some(user) => assert_eq!(claims.sub, user),
                None => assert!(claims.sub.starts_with("viewer-"), "{}", claims.sub),
            }
        }
        let response = router
            .clone()
            .oneshot(
                Request::post("/demo/token")
                    .body(Body::from(r#"{"user":"a b"}"#))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }
}
