//! `roomcast-control`: the control plane, with an embedded edge unless `--no-embedded-edge`;
//! runs until SIGINT/SIGTERM.

use std::process::ExitCode;

use roomcast_control::{server, ControlConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    roomcast_ops::init_logging();
    let config = match ControlConfig::load_from(std::env::args_os()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("roomcast-control: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("roomcast-control")
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("roomcast-control: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(server::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("roomcast-control: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
