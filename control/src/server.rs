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
use crate::demo;
use crate::linkserver;
use crate::router::Router;
use crate::upstream::Upstream;
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
    let upstream = Arc::new(Upstream::from_config(&config).map_err(ConfigError::Invalid)?);
    tokio::spawn(linkserver::serve(
        link_listener,
        Arc::clone(&router),
        Arc::clone(&queries),
        Arc::clone(&upstream),
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
    let key_source = KeySource::of(&config);
    println!(
        "{}",
        banner(&config, key_source, api_addr, link_addr, edge.as_ref())
    );

    let merges = Arc::clone(&router);
    let state = AppState {
        router,
        queries,
        settings: Arc::new(ApiSettings::from_config(&config)),
        link_listening: Arc::new(AtomicBool::new(true)),
        metrics: Arc::default(),
        upstream,
    };
    let mut app = api::app(state);
    if config.serves_demo() {
        app = app.merge(demo::routes(demo::Demo {
            page_dir: demo::default_page_dir(),
            sdk_dir: demo::default_sdk_dir(),
            jwt_secret: config.jwt_secret.clone(),
        }));
    }
    let served = axum::serve(api_listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    // What waits in merge windows was accepted: publish it while the edges are still linked.
    let flushed = merges.flush_all_merges();
    if flushed > 0 {
        tracing::info!(flushed, "published the messages waiting in merge windows");
    }
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

/// Where the API key came from, for the banner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeySource {
    /// The built-in development key (no key configured).
    Development,
    /// `ROOMCAST_API_KEY` of this process's environment.
    Environment,
    /// `--api-key` or the `--config` file.
    FlagOrFile,
}

impl KeySource {
    fn of(config: &ControlConfig) -> KeySource {
        if config.uses_dev_api_key() {
            KeySource::Development
        } else if std::env::var("ROOMCAST_API_KEY").is_ok_and(|k| k == config.api_key) {
            KeySource::Environment
        } else {
            KeySource::FlagOrFile
        }
    }
}

/// The placeholder of the banner's `export ROOMCAST_API_KEY=...` line.
const KEY_PLACEHOLDER: &str = "<the API key>";

/// What is running and a first session to copy: mint a token, connect and join, publish. Each
/// command is on a line of its own and works as printed in a POSIX shell: the development key is
/// printed (it is public); a configured key never is, and the commands read it from
/// `$ROOMCAST_API_KEY` (in double quotes, so the shell expands it) after a line saying to set it.
fn banner(
    config: &ControlConfig,
    key_source: KeySource,
    api: SocketAddr,
    link: SocketAddr,
    edge: Option<&Edge>,
) -> String {
    let api = local(api);
    let (auth, key_steps) = match key_source {
        KeySource::Development => (
            format!("-H 'Authorization: Bearer {}'", config.api_key),
            "Try it (with the built-in development API key; set --api-key before exposing this \
             control plane):\n"
                .to_string(),
        ),
        source => {
            let from = if source == KeySource::Environment {
                "came from ROOMCAST_API_KEY; set it in the shell you run these commands from too"
            } else {
                "came from --api-key or the --config file; set it in the shell you run these \
                 commands from"
            };
            (
                "-H \"Authorization: Bearer $ROOMCAST_API_KEY\"".to_string(),
                format!(
                    "Try it (the API key is not printed: it {from}):\n  \
                     0. the API key:\n     \
                     export ROOMCAST_API_KEY='{KEY_PLACEHOLDER}'\n"
                ),
            )
        }
    };
    let curl = format!("curl -sS {auth} -H 'Content-Type: application/json'");
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
    text += &key_steps;
    text += &format!(
        "  1. mint a token:\n     \
         {curl} -d '{{\"user\":\"u1\",\"rooms\":[\"r1\"]}}' http://{api}/v1/tokens\n  \
         2. connect and join:\n     \
         websocat {ws}\n     \
         then send  {{\"op\":\"auth\",\"seq\":1,\"token\":\"<token>\"}}  and  {{\"op\":\"join\",\"seq\":2,\"room\":\"r1\"}}\n  \
         3. publish:\n     \
         {curl} -d '{{\"priority\":2,\"kind\":\"chat\",\"data\":{{\"text\":\"hello\"}}}}' http://{api}/v1/rooms/r1/messages"
    );
    if config.serves_demo() && edge.is_some() {
        text += &format!(
            "\nOr open the live-room demo in a browser: http://{api}/demo/\n  \
             (and drive its room: node examples/h5-room/publisher.mjs --api http://{api})"
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> (SocketAddr, SocketAddr) {
        (
            "0.0.0.0:9090".parse().unwrap(),
            "0.0.0.0:9091".parse().unwrap(),
        )
    }

    fn commands(text: &str) -> Vec<&str> {
        text.lines()
            .map(str::trim)
            .filter(|l| l.starts_with("curl ") || l.starts_with("export "))
            .collect()
    }

    #[test]
    fn the_development_key_is_printed_in_the_commands() {
        let (api, link) = addrs();
        let text = banner(
            &ControlConfig::default(),
            KeySource::Development,
            api,
            link,
            None,
        );
        let commands = commands(&text);
        assert_eq!(commands.len(), 2, "{text}");
        for command in commands {
            assert!(
                command.starts_with(
                    "curl -sS -H 'Authorization: Bearer roomcast-dev-api-key' \
                     -H 'Content-Type: application/json' -d '"
                ),
                "{command}"
            );
            assert!(command.contains("http://127.0.0.1:9090/v1/"), "{command}");
        }
        assert!(!text.contains("ROOMCAST_API_KEY"), "{text}");
    }

    #[test]
    fn a_configured_key_is_read_from_the_shell_never_printed() {
        let (api, link) = addrs();
        let config = ControlConfig {
            api_key: "s3cret-key".into(),
            ..ControlConfig::default()
        };
        for (source, from) in [
            (KeySource::FlagOrFile, "--api-key or the --config file"),
            (KeySource::Environment, "came from ROOMCAST_API_KEY"),
        ] {
            let text = banner(&config, source, api, link, None);
            assert!(!text.contains("s3cret-key"), "{text}");
            assert!(text.contains(from), "{text}");
            let commands = commands(&text);
            assert_eq!(commands.len(), 3, "{text}");
            assert_eq!(commands[0], "export ROOMCAST_API_KEY='<the API key>'");
            for curl in &commands[1..] {
                // Double quotes: the shell expands the variable.
                assert!(
                    curl.starts_with("curl -sS -H \"Authorization: Bearer $ROOMCAST_API_KEY\" "),
                    "{curl}"
                );
                assert!(!curl.contains("'Authorization"), "{curl}");
            }
        }
    }
}
