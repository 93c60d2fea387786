//! One pinned worker thread: a loop around a [`WorkerCore`].
//!
//! The core ([`core`]) is the worker's logic — connections, sessions, rooms and users, send
//! queues, the join acknowledgement, timeouts, stats — with no I/O: it takes events with an
//! explicit time and returns what to do. This loop is the only place that touches the world: it
//! reads the clock, polls the [`Driver`] and feeds its events to the core, takes the hub's
//! messages from the inbox, and carries out the core's actions — writes and closes on the driver,
//! messages to the hub's (bounded) channel, waking the hub. Nothing here locks or touches another
//! core's memory; batches arrive as one `Arc` per core and are shared between members through a
//! per-core `Rc`.
//!
//! A round: poll the driver (reads, accepts, write completions), register or refuse what was
//! accepted, take the hub's messages, run due timers, then the core's actions — one flush per
//! connection that got something, one vectored write each — and its messages for the hub. A
//! long flush (a big room's fan-out) is cut every 256 writes (32 while viewers send) by a short
//! round without timers, so reads and replies do not wait for the whole of it.

pub mod core;

use std::net::TcpListener;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};

use crate::config::EdgeConfig;
use crate::fanout::{ToHub, ToWorker};
use crate::session::Transport;
use crate::sys::{Accepted, Driver, Event, Waker};
use roomcast_proto::auth::Verifier;

use self::core::{Action, Admission, CoreSetup, WorkerCore};

/// Everything a worker needs, handed over when it starts.
pub struct WorkerSetup {
    pub index: usize,
    pub config: Arc<EdgeConfig>,
    pub verifier: Arc<Verifier>,
    pub driver: Box<dyn Driver>,
    pub listeners: Vec<(TcpListener, Transport)>,
    pub inbox: Receiver<ToWorker>,
    pub hub: Sender<ToHub>,
    /// Wakes the hub when an answer must not wait for its next timer.
    pub hub_waker: Arc<dyn Waker>,
    /// Connections open on every worker of this edge, against `max_connections`.
    pub open_connections: Arc<AtomicUsize>,
}

pub struct Worker {
    index: usize,
    core: WorkerCore,
    driver: Box<dyn Driver>,
    listener_transports: Vec<Transport>,
    /// Sockets accepted during a poll, registered (or refused) after it: the driver is busy
    /// while it reports events.
    accepted: Vec<(usize, Accepted)>,
    inbox: Receiver<ToWorker>,
    hub: Sender<ToHub>,
    hub_waker: Arc<dyn Waker>,
}

impl Worker {
    pub fn new(setup: WorkerSetup) -> std::io::Result<Worker> {
        let WorkerSetup {
            index,
            config,
            verifier,
            mut driver,
            listeners,
            inbox,
            hub,
            hub_waker,
            open_connections,
        } = setup;
        let mut listener_transports = Vec::new();
        for (listener, transport) in listeners {
            let at = driver.add_listener(listener)?;
            if listener_transports.len() <= at {
                listener_transports.resize(at + 1, transport);
            }
            listener_transports[at] = transport;
        }
        let core = WorkerCore::new(CoreSetup {
            index,
            config,
            verifier,
            open_connections,
            now: Instant::now(),
            wall: SystemTime::now(),
        });
        Ok(Worker {
            index,
            core,
            driver,
            listener_transports,
            accepted: Vec::new(),
            inbox,
            hub,
            hub_waker,
        })
    }

    /// A handle that wakes this worker's poll from another thread.
    pub fn waker(&self) -> Arc<dyn Waker> {
        self.driver.waker()
    }

    /// Runs until the hub says to shut down (or its channel closes) and the connections are
    /// closed or out of time.
    pub fn run(mut self) {
        let mut waited_until: Option<Instant> = None;
        loop {
            // Busy ratio: waiting is from the read at the top of the round to the first event
            // (events are handled inside the poll call, which is work) or, with none, to the
            // read after the poll; the rest of the wall time is busy. One extra clock read per
            // round that has events, none per event.
            let poll_started = Instant::now();
            let busy =
                waited_until.map_or(0, |at| nanos(poll_started.saturating_duration_since(at)));
            let timeout = if !self.inbox.is_empty() {
                Duration::ZERO
            } else {
                self.core
                    .poll_timeout()
                    .saturating_duration_since(poll_started)
            };
            let woke = self.poll(timeout);
            let now = Instant::now();
            let wait_end = woke.unwrap_or(now);
            self.core.add_loop_time(
                nanos(wait_end.saturating_duration_since(poll_started)),
                busy,
            );
            waited_until = Some(wait_end);

            self.register_accepted(now);
            self.drain_inbox(now);
            if now >= self.core.poll_timeout() {
                self.core
                    .on_timeout(now, SystemTime::now(), self.driver.stats());
            }
            self.run_actions(now);
            self.core.on_flushed(Instant::now());
            self.send_to_hub(now);
            if self.core.is_finished(now) {
                self.core.finish();
                self.send_to_hub(now);
                return;
            }
        }
    }

    /// Polls the driver once and feeds its events to the core. Returns when the first event
    /// came (the events of one poll are stamped with that time, not with the time before a poll
    /// that may have waited long).
    fn poll(&mut self, timeout: Duration) -> Option<Instant> {
        let Worker {
            core,
            driver,
            accepted,
            ..
        } = self;
        let mut woke: Option<Instant> = None;
        let polled = driver.poll(Some(timeout), &mut |event| {
            let now = *woke.get_or_insert_with(Instant::now);
            match event {
                Event::Accepted { listener, socket } => accepted.push((listener, socket)),
                Event::Data { conn, bytes } => core.on_data(now, conn, bytes),
                Event::ReadClosed { conn, error } => core.on_read_closed(conn, error),
                Event::WriteDone { conn, result, buf } => {
                    core.on_write_done(now, conn, result, buf)
                }
                Event::Writable { conn } => core.on_writable(conn),
                Event::Released { conn } => core.on_released(conn),
                Event::Woken => {}
            }
        });
        if let Err(error) = polled {
            tracing::error!(worker = self.index, %error, "driver poll failed");
            std::thread::sleep(Duration::from_millis(10));
        }
        woke
    }

    /// Registers the sockets accepted in the last poll, or refuses them.
    fn register_accepted(&mut self, now: Instant) {
        for (listener, socket) in self.accepted.drain(..) {
            let transport = self.listener_transports[listener];
            match self.core.admit(now, transport) {
                Admission::Admit(id) => {
                    if let Err(error) = self.driver.register(id, socket) {
                        tracing::warn!(worker = self.index, %error, "could not register a connection");
                        self.core.registration_failed(id);
                    }
                }
                Admission::Refuse(notice) => self.driver.refuse(socket, &notice),
            }
        }
    }

    /// Hands the hub's messages to the core.
    fn drain_inbox(&mut self, now: Instant) {
        loop {
            match self.inbox.try_recv() {
                Ok(message) => self.core.on_message(now, message),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    self.core.on_inbox_closed(now);
                    return;
                }
            }
        }
    }

    /// Carries out the core's actions until it has none left. A fan-out to thousands of
    /// members takes a while (~10 µs per write on loopback): every [`WRITES_BETWEEN_READS`]
    /// writes ([`WRITES_BETWEEN_READS_WHILE_SENDING`] while viewers send) the loop reads,
    /// takes the hub's messages and sends what is due to the hub, so
    /// a viewer's `send` or `ping` that arrives meanwhile is passed on and answered within
    /// a few milliseconds rather than after the whole fan-out (the core writes replies ahead
    /// of the fan-out's remaining members).
    fn run_actions(&mut self, mut now: Instant) {
        let writes_between_reads = |core: &WorkerCore, now| {
            if core.upstream_active(now) {
                WRITES_BETWEEN_READS_WHILE_SENDING
            } else {
                WRITES_BETWEEN_READS
            }
        };
        let mut writes_left = writes_between_reads(&self.core, now);
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Write { conn, buf } => {
                    let status = self.driver.write(conn, buf);
                    self.core.on_write_status(now, conn, status);
                    writes_left -= 1;
                    if writes_left == 0 {
                        now = self.between_writes();
                        writes_left = writes_between_reads(&self.core, now);
                    }
                }
                Action::Close { conn } => self.driver.close(conn),
                Action::UserConns { request, conns } => {
                    let conns = conns
                        .into_iter()
                        .map(|(id, mut info)| {
                            if let Some(peer) = self.driver.peer_addr(id) {
                                info.peer = peer.to_string();
                            }
                            info
                        })
                        .collect();
                    self.core.user_conns_ready(request, conns);
                }
                Action::Send(mut send) => {
                    if let Some(peer) = self.driver.peer_addr(send.conn) {
                        send.peer = peer.to_string();
                    }
                    self.core.send_ready(send);
                }
            }
        }
    }

    /// A short round in the middle of a long flush: what the driver has (without waiting),
    /// the hub's messages, and the core's messages for the hub. Returns the time now.
    fn between_writes(&mut self) -> Instant {
        self.poll(Duration::ZERO);
        let now = Instant::now();
        self.register_accepted(now);
        self.drain_inbox(now);
        self.send_to_hub(now);
        now
    }

    /// Sends the core's messages to the hub until its inbox is full, and wakes it if needed.
    fn send_to_hub(&mut self, now: Instant) {
        while let Some(message) = self.core.poll_to_hub(now) {
            match self.hub.try_send(message) {
                Ok(()) => {}
                Err(TrySendError::Full(message)) => {
                    self.core.hub_full(now, message);
                    break;
                }
                // The hub is gone (shutting down): nobody is left to tell.
                Err(TrySendError::Disconnected(_)) => {}
            }
        }
        if self.core.take_hub_wake() {
            self.hub_waker.wake();
        }
    }
}

/// Writes of one flush between two looks at the driver and the inbox: a few milliseconds of a
/// fan-out on loopback, for one non-blocking poll (with io_uring, one `io_uring_enter` per this
/// many sends; fewer cost the fan-out CPU: 1.2-1.3x the writev floor at 256, 1.3-1.7x at 32, in
/// bench/README.md "Upstream"'s run without senders).
const WRITES_BETWEEN_READS: usize = 256;

/// The same while viewers send (see `WorkerCore::upstream_active`): replies then go out within a
/// fraction of a millisecond of the answer and the next sends are read as promptly (at 20k
/// sends/s into a 20k room the reply's p99 was ~110 ms at 256, ~40 ms at 32), for the CPU above.
const WRITES_BETWEEN_READS_WHILE_SENDING: usize = 32;

fn nanos(d: Duration) -> u64 {
    d.as_nanos() as u64
}
