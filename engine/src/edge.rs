//! Starting and stopping an edge: listeners, one pinned worker per core, and the hub.
//!
//! Used by the `roomcast-edge` binary and, embedded, by the control plane.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use roomcast_ops::admin::AdminServer;

use crate::config::EdgeConfig;
use crate::fanout::{ToHub, ToWorker};
use crate::hub::{Advertised, Hub, HubConfig, HubPoll, HubSetup, WorkerHandle};
use crate::metrics::{CapacitySampler, Limits, Shared};
use crate::sendlimit::SendLimit;
use crate::session::Transport;
use crate::sys::{self, socket, DriverKind};
use crate::worker::{Worker, WorkerSetup};
use roomcast_proto::auth::Verifier;
use roomcast_proto::auth::DEV_JWT_SECRET;

/// Batches a worker may have waiting before the hub counts further ones as dropped.
const WORKER_INBOX: usize = 1 << 16;
/// Messages the workers may have waiting for the hub (presence, confirmations, reports). A
/// bounded channel's slots are allocated (and touched) up front: 4096 of them take about 0.5 MiB.
const HUB_INBOX: usize = 4096;
/// File descriptors an edge needs beyond its client connections (listeners, rings, logs, link).
const FD_OVERHEAD: u64 = 64;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("worker {worker} could not start its {driver} driver: {source}")]
    Driver {
        worker: usize,
        driver: &'static str,
        source: std::io::Error,
    },
    #[error("cannot start the hub: {0}")]
    Hub(std::io::Error),
}

/// A running edge.
pub struct Edge {
    /// The bound addresses (the real ports when the configuration said port 0).
    pub ws_addr: SocketAddr,
    pub tcp_addr: SocketAddr,
    pub driver: &'static str,
    pub edge_id: String,
    /// The admin endpoint (/metrics, /healthz, /readyz), when it could bind.
    pub admin_addr: Option<SocketAddr>,
    admin: Option<AdminServer>,
    metrics: Arc<Shared>,
    shutdown: Arc<AtomicBool>,
    hub_waker: Arc<mio::Waker>,
    threads: Vec<JoinHandle<()>>,
}

impl Edge {
    /// Binds the listeners and starts the workers and the hub.
    pub fn start(config: EdgeConfig) -> Result<Edge, StartError> {
        let config = Arc::new(config);
        let workers = config.worker_count();
        let edge_id = config.resolved_edge_id();
        if config.jwt_secret == DEV_JWT_SECRET {
            tracing::warn!(
                "using the built-in development JWT secret; set --jwt-secret (ROOMCAST_JWT_SECRET) \
                 before exposing this edge"
            );
        }
        check_fd_limit(config.max_connections);

        let kind = match config.io {
            DriverKind::Auto => match sys::uring::probe() {
                Ok(()) => DriverKind::Uring,
                Err(why) => {
                    tracing::warn!(%why, "io_uring unavailable; using the epoll driver");
                    DriverKind::Epoll
                }
            },
            forced => forced,
        };
        let driver_name = if kind == DriverKind::Uring {
            "uring"
        } else {
            "epoll"
        };

        // Every worker gets its own listener on the same port (SO_REUSEPORT): the kernel spreads
        // accepts. Port 0 is resolved by the first bind and reused by the rest.
        let mut ws_addr = config.ws_listen;
        let mut tcp_addr = config.tcp_listen;
        let mut listeners = Vec::with_capacity(workers);
        for _ in 0..workers {
            let ws = bind(&mut ws_addr)?;
            let tcp = bind(&mut tcp_addr)?;
            listeners.push(vec![(ws, Transport::WebSocket), (tcp, Transport::Tcp)]);
        }

        let verifier = Arc::new(Verifier::new(config.jwt_secret.as_bytes()));
        // Bounded: a worker whose message finds it full keeps it and offers it again shortly
        // (see `worker::core`), so a stalled hub cannot make the workers grow it without limit.
        let (hub_tx, hub_rx) = crossbeam_channel::bounded::<ToHub>(HUB_INBOX);
        let hub_poll = HubPoll::new().map_err(StartError::Hub)?;
        let open_connections = Arc::new(AtomicUsize::new(0));
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let mut threads = Vec::new();
        let mut handles = Vec::new();
        for (index, worker_listeners) in listeners.into_iter().enumerate() {
            let (tx, rx) = crossbeam_channel::bounded::<ToWorker>(WORKER_INBOX);
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let config = Arc::clone(&config);
            let verifier = Arc::clone(&verifier);
            let hub = hub_tx.clone();
            let hub_waker: Arc<dyn sys::Waker> = Arc::new(sys::MioWaker(hub_poll.waker()));
            let open_connections = Arc::clone(&open_connections);
            let core =
                (!cores.is_empty()).then(|| cores[(config.first_core + index) % cores.len()]);
            let thread = std::thread::Builder::new()
                .name(format!("roomcast-worker-{index}"))
                .spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    // The ring is built on its own thread (io_uring single-issuer rings must be).
                    let options = sys::SocketOptions {
                        send_buffer_bytes: config.socket_send_buffer_bytes,
                    };
                    let driver = match sys::new_driver(kind, options) {
                        Ok((driver, _)) => driver,
                        Err(error) => {
                            let _ = ready_tx.send(Err(error));
                            return;
                        }
                    };
                    let worker = Worker::new(WorkerSetup {
                        index,
                        config,
                        verifier,
                        driver,
                        listeners: worker_listeners,
                        inbox: rx,
                        hub,
                        hub_waker,
                        open_connections,
                    });
                    match worker {
                        Ok(worker) => {
                            let _ = ready_tx.send(Ok(worker.waker()));
                            worker.run();
                        }
                        Err(error) => {
                            let _ = ready_tx.send(Err(error));
                        }
                    }
                })
                .expect("spawn worker thread");
            let waker = ready_rx
                .recv()
                .unwrap_or_else(|_| Err(std::io::Error::other("worker thread died while starting")))
                .map_err(|source| StartError::Driver {
                    worker: index,
                    driver: driver_name,
                    source,
                })?;
            handles.push(WorkerHandle { inbox: tx, waker });
            threads.push(thread);
        }
        drop(hub_tx);

        let shutdown = Arc::new(AtomicBool::new(false));
        let metrics = Arc::new(Shared::new(driver_name));
        let admin = match crate::admin::start(config.admin_listen, Arc::clone(&metrics)) {
            Ok(server) => Some(server),
            Err(error) => {
                tracing::warn!(
                    addr = %config.admin_listen,
                    %error,
                    "cannot listen on the admin address; running without /metrics (set \
                     --admin-listen, port 0 picks a free one)"
                );
                None
            }
        };
        let admin_addr = admin.as_ref().map(AdminServer::local_addr);
        let fd_limit = roomcast_ops::limits::nofile_limit().map_or(0, |(soft, _)| soft);
        let limits = Limits {
            max_connections: u64::from(config.max_connections),
            fd_limit,
            fd_baseline: roomcast_ops::process::count_open_fds(),
            egress_bytes_per_second: config.egress_bandwidth_bytes as f64,
            memory_bytes: if config.memory_limit_bytes > 0 {
                config.memory_limit_bytes
            } else {
                roomcast_ops::process::default_memory_limit()
            },
        };
        let hub_waker = hub_poll.waker();
        let hub = Hub::new(
            HubSetup {
                config: HubConfig {
                    advertised: Advertised {
                        edge_id: edge_id.clone(),
                        host: advertise_host(&config, ws_addr),
                        ws_port: ws_addr.port(),
                        tcp_port: tcp_addr.port(),
                        admin: admin_addr,
                        workers: workers as u16,
                        capacity: config.max_connections,
                    },
                    default_tick: Duration::from_millis(config.tick_ms as u64),
                    max_window: Duration::from_millis(config.max_window_ms as u64),
                    report_interval: config.report_interval(),
                    send_limit: SendLimit::new(config.send_rate, config.send_burst),
                    stats_log_interval: (config.stats_log_interval_ms > 0)
                        .then(|| Duration::from_millis(config.stats_log_interval_ms)),
                    workers,
                },
                control: config.control.clone(),
                workers: handles,
                inbox: hub_rx,
                shutdown: Arc::clone(&shutdown),
                metrics: Arc::clone(&metrics),
                capacity: CapacitySampler::new(limits),
            },
            hub_poll,
        );
        threads.push(
            std::thread::Builder::new()
                .name("roomcast-hub".into())
                .spawn(move || hub.run())
                .expect("spawn hub thread"),
        );
        metrics.workers_running.store(true, Ordering::Release);
        tracing::info!(
            edge_id,
            admin = ?admin_addr,
            driver = driver_name,
            workers,
            ws = %ws_addr,
            tcp = %tcp_addr,
            control = %config.control,
            "edge started"
        );
        Ok(Edge {
            ws_addr,
            tcp_addr,
            driver: driver_name,
            edge_id,
            admin_addr,
            admin,
            metrics,
            shutdown,
            hub_waker,
            threads,
        })
    }

    /// Closes every connection (1001) and stops the threads. The admin endpoint stops last, so
    /// `/readyz` answers 503 while the connections close.
    pub fn shutdown(self) {
        self.metrics.workers_running.store(false, Ordering::Release);
        self.shutdown.store(true, Ordering::Release);
        let _ = self.hub_waker.wake();
        for thread in self.threads {
            let _ = thread.join();
        }
        if let Some(admin) = self.admin {
            admin.stop();
        }
    }
}

fn bind(addr: &mut SocketAddr) -> Result<TcpListener, StartError> {
    let listener =
        socket::reuseport_listener(*addr, 4096).map_err(|source| StartError::Listen {
            addr: *addr,
            source,
        })?;
    if addr.port() == 0 {
        if let Ok(bound) = listener.local_addr() {
            addr.set_port(bound.port());
        }
    }
    Ok(listener)
}

/// The host clients are told to dial: `--advertise-host`, else the listen IP, else (listening on
/// a wildcard address) `None`: the hub advertises the local address of its link connection, the
/// address this host uses to reach the control plane.
fn advertise_host(config: &EdgeConfig, ws_addr: SocketAddr) -> Option<String> {
    if !config.advertise_host.is_empty() {
        Some(config.advertise_host.clone())
    } else if ws_addr.ip().is_unspecified() {
        None
    } else {
        Some(ws_addr.ip().to_string())
    }
}

/// Raises the soft fd limit to the hard one and warns when that is still below capacity.
fn check_fd_limit(max_connections: u32) {
    let soft = match roomcast_ops::limits::raise_nofile_limit() {
        Ok(soft) => soft,
        Err(error) => {
            tracing::warn!(%error, "cannot read or raise the open-file limit");
            return;
        }
    };
    let needed = max_connections as u64 + FD_OVERHEAD;
    if soft < needed {
        tracing::warn!(
            limit = soft,
            max_connections,
            "the open-file limit is below --max-connections; connections beyond about {} will be \
             refused (raise `ulimit -n`, see tuning/, or run several edges side by side)",
            soft.saturating_sub(FD_OVERHEAD)
        );
    }
}
