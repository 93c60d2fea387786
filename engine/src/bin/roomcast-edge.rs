//! `roomcast-edge`: runs one edge until SIGINT/SIGTERM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use roomcast_engine::{Edge, EdgeConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    roomcast_ops::init_logging();
    let config = match EdgeConfig::load_from(std::env::args_os()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("roomcast-edge: {error}");
            std::process::exit(2);
        }
    };
    let edge = match Edge::start(config) {
        Ok(edge) => edge,
        Err(error) => {
            eprintln!("roomcast-edge: {error}");
            std::process::exit(1);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).expect("install signal handler");
    }
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    tracing::info!("shutting down: closing connections with 1001");
    edge.shutdown();
}
