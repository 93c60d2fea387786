//! `roomcast-example-backend`: a sample live-platform backend for roomcast's publish proxy.
//! roomcast-control POSTs each viewer's send to `/roomcast/send` and receipts to
//! `/roomcast/receipts`; this answers with moderation decisions. Runs until SIGINT/SIGTERM.

mod config;
mod contract;
mod moderation;
mod server;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use crate::config::{items, Args, Config};
use crate::moderation::MuteList;
use crate::server::{App, Runtime};

// As roomcast-control: glibc's malloc was a quarter of this service's CPU under a 20k sends/s
// load (short-lived JSON values per send).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    let args = Args::parse();
    let runtime = Runtime {
        muted: MuteList::new(items(&args.muted)),
        ..Runtime::default()
    };
    let config = Config::from_args(&args);
    let listener = match TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!(
                "roomcast-example-backend: cannot listen on {}: {error}",
                args.listen
            );
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(args.listen);
    tracing::info!(
        %addr,
        send_proxy_url = %format!("http://{addr}/roomcast/send"),
        receipt_url = %format!("http://{addr}/roomcast/receipts"),
        "roomcast-example-backend listening"
    );
    match server::serve(listener, App::new(config, runtime), shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("roomcast-example-backend: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on Ctrl-C (SIGINT) or, on Unix, SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot install the SIGTERM handler");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down");
}
