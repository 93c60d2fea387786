//! Wiring: bind the link and API listeners, start the link server, the periodic tasks and (unless
//! disabled) the embedded edge, print how to try the system, and serve the API until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use roomcast_engine::Edge;
use roomcast_engine::StartError;
use roomcast_ops::config::ConfigError;
use tokio::net::TcpListener;

use crate::api::{self, ApiSettings, AppState};
use crate::config::ControlConfig;
use crate::linkserver;
use crate::router::Router;
use crate::userquery::UserQueries;

/// Why the control plane could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Listen {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the embedded edge: {0}")]
    Edge(#[from] StartError),
    #[error("the HTTP API failed: {0}")]
    Serve(std::io::Error),
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Listen { what, addr, source })
}

/// Runs the control plane (and its embedded edge) until `shutdown` resolves.
pub async fn run(
    config: ControlConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let levels = config.levels()?;
    if config.uses_dev_api_key() {
        tracing::warn!(
            "using the built-in development API key; set --api-key (ROOMCAST_API_KEY) before \
             exposing this control plane"
        );
    }
    let link_listener = bind("edge link", config.link_listen).await?;
    let link_addr = link_listener.local_addr().unwrap_or(config.link_listen);
    let api_listener = bind("HTTP API", config.api_listen).await?;
    let api_addr = api_listener.local_addr().unwrap_or(config.api_listen);

    let router = Arc::new(
        Router::new(
            levels,
            config.edge_report_timeout(),
            config.edge_link_backlog_bytes,
        )
        .with_dispatch_watermark(config.dispatch_watermark),
    );
    let queries = Arc::new(UserQueries::new());
    tokio::spawn(linkserver::serve(
        link_listener,
        Arc::clone(&router),
        Arc::clone(&queries),
    ));
    linkserver::spawn_maintenance(Arc::clone(&router));
    tracing::info!(api = %api_addr, link = %link_addr, "control plane listening");

    let edge = if config.no_embedded_edge {
        None
    } else {
        let edge_config = config.embedded_edge(link_addr);
        edge_config.validate()?;
        let edge = tokio::task::spawn_blocking(move || Edge::start(edge_config))
            .await
            .expect("edge start does not panic")?;
        Some(edge)
    };
    println!("{}", banner(&config, api_addr, link_addr, edge.as_ref()));

    let state = AppState {
        router,
        queries,
        settings: Arc::new(ApiSettings::from_config(&config)),
        link_listening: Arc::new(AtomicBool::new(true)),
        metrics: Arc::default(),
    };
    let served = axum::serve(api_listener, api::app(state))
        .with_graceful_shutdown(shutdown)
        .await;
    if let Some(edge) = edge {
        tracing::info!("shutting down the embedded edge: closing connections with 1001");
        let _ = tokio::task::spawn_blocking(move || edge.shutdown()).await;
    }
    served.map_err(ServerError::Serve)
}

/// Loopback when the address is unspecified, so printed commands work as they are.
fn local(addr: SocketAddr) -> SocketAddr {
    ControlConfig::link_dial_addr(addr)
}

/// What is running and a first session to copy: mint a token, connect and join, publish.
fn banner(
    config: &ControlConfig,
    api: SocketAddr,
    link: SocketAddr,
    edge: Option<&Edge>,
) -> String {
    let api = local(api);
    let key = if config.uses_dev_api_key() {
        config.api_key.clone()
    } else {
        "$ROOMCAST_API_KEY".to_string()
    };
    let auth = format!("-H 'Authorization: Bearer {key}' -H 'Content-Type: application/json'");
    let mut text = format!(
        "roomcast control plane is up\n  \
         HTTP API   http://{api}  (OpenAPI document: http://{api}/openapi.json)\n  \
         edge link  {link}  (add edges: roomcast-edge --control <this-host>:{port})\n",
        port = link.port()
    );
    let ws = match edge {
        Some(edge) => {
            let ws = format!("ws://{}/ws", local(edge.ws_addr));
            text += &format!(
                "  embedded edge {}: WebSocket {ws}, TCP {}\n",
                edge.edge_id,
                local(edge.tcp_addr)
            );
            ws
        }
        None => {
            text += "  no embedded edge (--no-embedded-edge): clients need a registered edge\n";
            "<ws address from /v1/dispatch>".to_string()
        }
    };
    text += &format!(
        "Try it:\n  \
         1. mint a token:  curl -s {auth} -d '{{\"user\":\"u1\",\"rooms\":[\"r1\"]}}' http://{api}/v1/tokens\n  \
         2. connect, join: websocat {ws}   then send  {{\"op\":\"auth\",\"seq\":1,\"token\":\"<token>\"}}  and  {{\"op\":\"join\",\"seq\":2,\"room\":\"r1\"}}\n  \
         3. publish:       curl -s {auth} -d '{{\"priority\":2,\"kind\":\"chat\",\"data\":{{\"text\":\"hello\"}}}}' http://{api}/v1/rooms/r1/messages"
    );
    text
}
