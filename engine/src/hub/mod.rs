//! The hub: one thread per edge that owns the control link, every channel's merge window, and
//! the encode-once step.
//!
//! Publishes arrive from the control plane over the link. Each channel (room, user, broadcast)
//! collects them in its window; when the window closes the batch is encoded once per wire format
//! in use and the same `Arc<Delivery>` goes to each core holding members — one handoff per batch
//! per core, followed by one wake-up per core per round. Workers tell the hub which channels and
//! formats they hold (on 0↔1 transitions) and send their counters every report interval; the hub
//! sums them into the link's load report.
//!
//! All of that is decided by [`HubCore`], a state machine without I/O. This module is the loop
//! around it: the link socket (mio, dial, read budget, write buffer), the workers' inboxes and
//! wakers, the clock, and the metrics snapshot. The link socket is one of the engine's named
//! exceptions to "only `sys` talks to the OS" (see `lib.rs`).

mod core;
mod recovery;
#[cfg(test)]
mod tests;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

pub use self::core::{Advertised, HubConfig, HubCore};
use crate::fanout::{ToHub, ToWorker};
use crate::metrics::{log_edge_stats, CapacitySampler, Shared, Snapshot};
use crate::sys::Waker;
use roomcast_proto::link;

const LINK: Token = Token(0);
const WAKE: Token = Token(1);
/// Link bytes read per round: under a publish flood the hub must still get back to its windows,
/// wake-ups and load reports.
const LINK_READ_BUDGET: usize = 1 << 20;
/// A link write buffer beyond this means the control plane stopped reading: drop the link.
const MAX_LINK_BACKLOG: usize = 64 << 20;

/// A worker as the hub sees it.
pub struct WorkerHandle {
    pub inbox: Sender<ToWorker>,
    pub waker: Arc<dyn Waker>,
}

pub struct HubSetup {
    pub config: HubConfig,
    /// The control plane's link address (`host:port`), resolved at each dial.
    pub control: String,
    pub workers: Vec<WorkerHandle>,
    pub inbox: Receiver<ToHub>,
    pub shutdown: Arc<AtomicBool>,
    /// Where the hub leaves a metrics snapshot every report interval (read by the admin server).
    pub metrics: Arc<Shared>,
    /// Measures use against configured capacity at each snapshot.
    pub capacity: CapacitySampler,
}

/// The hub's poller, made before the workers so they can wake the hub (for query answers).
pub struct HubPoll {
    poll: Poll,
    waker: Arc<mio::Waker>,
}

impl HubPoll {
    pub fn new() -> io::Result<HubPoll> {
        let poll = Poll::new()?;
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKE)?);
        Ok(HubPoll { poll, waker })
    }

    /// Interrupts the hub's poll (shutdown, worker answers).
    pub fn waker(&self) -> Arc<mio::Waker> {
        Arc::clone(&self.waker)
    }
}

/// The link socket and its buffers.
enum LinkSocket {
    Closed,
    Connecting(TcpStream),
    Up {
        stream: TcpStream,
        read: BytesMut,
        write: BytesMut,
    },
}

pub struct Hub {
    core: HubCore,
    control: String,
    workers: Vec<WorkerHandle>,
    inbox: Receiver<ToHub>,
    shutdown: Arc<AtomicBool>,
    metrics: Arc<Shared>,
    capacity: CapacitySampler,
    poll: Poll,
    link: LinkSocket,
    /// Link reads land here before joining the frame buffer.
    scratch: Box<[u8]>,
    /// The link read budget ran out with bytes possibly left in the socket (mio is
    /// edge-triggered, so no new event would say so): read again without waiting.
    link_unread: bool,
}

impl Hub {
    pub fn new(setup: HubSetup, hub_poll: HubPoll) -> Hub {
        Hub {
            core: HubCore::new(setup.config, Instant::now()),
            control: setup.control,
            workers: setup.workers,
            inbox: setup.inbox,
            shutdown: setup.shutdown,
            metrics: setup.metrics,
            capacity: setup.capacity,
            poll: hub_poll.poll,
            link: LinkSocket::Closed,
            scratch: vec![0; 64 * 1024].into_boxed_slice(),
            link_unread: false,
        }
    }

    pub fn run(mut self) {
        let mut events = Events::with_capacity(64);
        loop {
            if self.shutdown.load(Ordering::Acquire) {
                self.store_snapshot(Instant::now(), true);
                self.core.shutdown();
                // Blocking: every worker must hear it (a dead worker's inbox fails at once).
                let workers = &self.workers;
                self.core.drain_to_workers(Instant::now(), |w, m| {
                    workers[w].inbox.send(m).map_err(|e| e.0)
                });
                for worker in &self.workers {
                    worker.waker.wake();
                }
                return;
            }
            let timeout = if self.link_unread {
                Duration::ZERO
            } else {
                self.core
                    .poll_timeout()
                    .saturating_duration_since(Instant::now())
            };
            if let Err(error) = self.poll.poll(&mut events, Some(timeout)) {
                if error.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(%error, "hub poll failed");
                }
            }
            self.drain_workers();
            let link_ready =
                std::mem::take(&mut self.link_unread) || events.iter().any(|e| e.token() == LINK);
            if link_ready {
                self.on_link_ready();
            }
            let now = Instant::now();
            let log = self.core.stats_log_due(now);
            if self.core.report_due(now) || log {
                self.store_snapshot(now, log);
            }
            self.core.handle_timeout(now);
            if self.core.take_dial() {
                self.dial();
            }
            self.write_link();
            let workers = &self.workers;
            let woken =
                self.core
                    .drain_to_workers(now, |w, m| match workers[w].inbox.try_send(m) {
                        Ok(()) => Ok(()),
                        Err(TrySendError::Full(m) | TrySendError::Disconnected(m)) => Err(m),
                    });
            for (index, worker) in self.workers.iter().enumerate() {
                if woken & (1 << index) != 0 {
                    worker.waker.wake();
                }
            }
        }
    }

    fn drain_workers(&mut self) {
        let now = Instant::now();
        while let Ok(message) = self.inbox.try_recv() {
            self.core.handle_worker(message, now);
        }
    }

    fn dial(&mut self) {
        let addr = match resolve(&self.control) {
            Ok(addr) => addr,
            Err(error) => {
                let why = format!("cannot resolve {}: {error}", self.control);
                self.core.link_failed(&why, Instant::now());
                return;
            }
        };
        let stream = TcpStream::connect(addr).and_then(|mut stream| {
            self.poll.registry().register(
                &mut stream,
                LINK,
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(stream)
        });
        match stream {
            Ok(stream) => self.link = LinkSocket::Connecting(stream),
            Err(error) => self.core.link_failed(&error.to_string(), Instant::now()),
        }
    }

    fn on_link_ready(&mut self) {
        match std::mem::replace(&mut self.link, LinkSocket::Closed) {
            LinkSocket::Connecting(stream) => self.finish_connect(stream),
            up @ LinkSocket::Up { .. } => {
                self.link = up;
                if let Err(error) = self.read_link() {
                    self.fail_link(&error.to_string());
                }
            }
            LinkSocket::Closed => {}
        }
    }

    fn finish_connect(&mut self, mut stream: TcpStream) {
        let connected = match stream.take_error() {
            Ok(None) => stream.peer_addr().map(|_| ()),
            Ok(Some(error)) | Err(error) => Err(error),
        };
        if let Err(error) = connected {
            if error.kind() == io::ErrorKind::NotConnected {
                self.link = LinkSocket::Connecting(stream); // not yet
            } else {
                let _ = self.poll.registry().deregister(&mut stream);
                self.core.link_failed(&error.to_string(), Instant::now());
            }
            return;
        }
        let _ = stream.set_nodelay(true);
        let local_ip = match stream.local_addr() {
            Ok(addr) => addr.ip(),
            Err(error) => {
                let _ = self.poll.registry().deregister(&mut stream);
                self.core.link_failed(&error.to_string(), Instant::now());
                return;
            }
        };
        tracing::info!(control = %self.control, %local_ip, "link to the control plane is up");
        self.link = LinkSocket::Up {
            stream,
            read: BytesMut::with_capacity(64 * 1024),
            write: BytesMut::new(),
        };
        self.core.link_connected(local_ip);
        self.metrics.link_up.store(true, Ordering::Release);
        self.write_link();
        if matches!(self.link, LinkSocket::Up { .. }) {
            if let Err(error) = self.read_link() {
                self.fail_link(&error.to_string());
            }
        }
    }

    /// Reads up to the budget, handing every complete frame to the core.
    fn read_link(&mut self) -> io::Result<()> {
        let mut budget = LINK_READ_BUDGET;
        loop {
            let LinkSocket::Up { stream, read, .. } = &mut self.link else {
                return Ok(());
            };
            if budget == 0 {
                self.link_unread = true;
                return Ok(());
            }
            let chunk = budget.min(self.scratch.len());
            match stream.read(&mut self.scratch[..chunk]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "control closed the link",
                    ));
                }
                Ok(n) => {
                    read.extend_from_slice(&self.scratch[..n]);
                    budget -= n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            // A publish read now may follow a join whose presence a worker sent after the last
            // drain (the client saw the join reply, then its backend published): drain again so
            // the hub knows every member that joined before the publish was sent.
            self.drain_workers();
            let now = Instant::now();
            loop {
                let LinkSocket::Up { read, .. } = &mut self.link else {
                    return Ok(());
                };
                let frame = match link::decode(read) {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(error) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("bad link frame: {error}"),
                        ))
                    }
                };
                if self.core.handle_link_frame(frame, now).is_err() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "control sent an edge-only frame",
                    ));
                }
            }
        }
    }

    /// Encodes what the core queued for the link and writes what the socket takes.
    fn write_link(&mut self) {
        let LinkSocket::Up { stream, write, .. } = &mut self.link else {
            while self.core.poll_transmit().is_some() {} // nowhere to send: the core re-sends
            return;
        };
        while let Some(frame) = self.core.poll_transmit() {
            if let Err(error) = link::encode(&frame, write) {
                tracing::error!(%error, "cannot encode a link frame");
            }
        }
        let result = flush(stream, write);
        if let Err(error) = result {
            self.fail_link(&error.to_string());
        }
    }

    fn fail_link(&mut self, why: &str) {
        if let LinkSocket::Up { mut stream, .. } | LinkSocket::Connecting(mut stream) =
            std::mem::replace(&mut self.link, LinkSocket::Closed)
        {
            let _ = self.poll.registry().deregister(&mut stream);
        }
        self.metrics.link_up.store(false, Ordering::Release);
        self.core.link_failed(why, Instant::now());
    }

    /// Samples capacity, hands the core the ratio for its report, and leaves the latest counters
    /// where the admin server reads them (once per report interval); with `log`, also logs them
    /// as the `edge stats` line, so the line shows what `/metrics` shows.
    fn store_snapshot(&mut self, now: Instant, log: bool) {
        let workers = self.core.worker_stats().to_vec();
        let mut total = crate::stats::WorkerStats::default();
        for stats in &workers {
            total.add(stats);
        }
        let capacity = self.capacity.sample(now, &workers, &total);
        self.core
            .set_capacity_permille(self.capacity.max_permille());
        let snapshot = Snapshot {
            workers,
            hub: self.core.stats().clone(),
            levels: self.core.rooms_by_level(),
            users: self.core.users_connected(),
            capacity,
            busy: self.capacity.busy().to_vec(),
        };
        if log {
            log_edge_stats(&snapshot);
            self.core.stats_logged(now);
        }
        self.metrics.store(snapshot);
    }
}

/// Writes what the socket takes; a backlog over the bound means the control plane stopped reading.
fn flush(stream: &mut TcpStream, write: &mut BytesMut) -> io::Result<()> {
    while !write.is_empty() {
        match stream.write(write) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "link write returned 0",
                ))
            }
            Ok(n) => {
                let _ = write.split_to(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if write.len() > MAX_LINK_BACKLOG {
        return Err(io::Error::other("control is not reading the link"));
    }
    Ok(())
}

fn resolve(addr: &str) -> io::Result<SocketAddr> {
    addr.to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))
}
