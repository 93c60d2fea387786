//! The epoll fallback driver, on `mio` (edge-triggered).
//!
//! Readiness-based: `poll` waits in `epoll_wait`, then reads readable connections into one
//! per-driver scratch buffer and reports `Data`; `write` is a synchronous `sendmsg` that returns
//! `Done` or `WouldBlock` (never `Pending`), so every write buffer comes straight back. See the
//! contract in [`super`].

use std::io;
use std::mem;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::socket::{
    self, is_fd_exhaustion, set_nodelay_nonblocking, Lingering, Refusal, ReserveFd,
};
use super::{
    claim_slot, syscall, Accepted, ConnId, Driver, DriverStats, Event, SocketOptions, Waker,
    WriteBuf, WriteStatus,
};

// Tokens are `usize`; connection tokens carry the 64-bit `ConnId`, so this driver needs 64 bits.
const _: () = assert!(usize::BITS == 64, "the epoll driver needs a 64-bit target");

/// Listener tokens have the top bit set; connection tokens never do (see [`conn_token`]).
const LISTENER_BIT: usize = 1 << 63;
/// The waker's token (top bit set, but no listener index gets this large).
const WAKER_TOKEN: Token = Token(usize::MAX);
/// Size of the single read buffer shared by all connections of this driver.
const SCRATCH_SIZE: usize = 64 * 1024;
/// Reads per connection per poll round; a firehose client must not starve the others.
const READ_BUDGET: usize = 4;
/// Accepts per listener per poll round, for the same reason.
const ACCEPT_BUDGET: usize = 256;
/// How long to back off before accepting again after the process ran out of descriptors.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);
/// How many readiness events one `epoll_wait` may return.
const EVENTS_CAPACITY: usize = 1024;

/// The epoll token of a connection: its `ConnId` with the top bit cleared, so it can never be
/// mistaken for a listener (the top bit is the highest generation bit; the full id is kept in
/// the connection table and compared on every event).
fn conn_token(conn: ConnId) -> usize {
    conn.0 as usize & !LISTENER_BIT
}

/// Per-connection state. Only what is needed to route readiness: no buffers.
#[derive(Debug)]
struct ConnState {
    id: ConnId,
    /// The connection's socket, owned from `register` until `close`.
    stream: TcpStream,
    /// `write` returned `WouldBlock`: report `Writable` on the next writable edge.
    want_writable: bool,
    /// `ReadClosed` was reported: no more reads.
    read_closed: bool,
    /// The poll round in which the connection was last read (read at most once per round).
    read_round: u64,
}

/// What one readiness event asked for (copied out of `mio::Events` so `self` is free).
#[derive(Debug, Clone, Copy)]
struct Ready {
    token: usize,
    readable: bool,
    writable: bool,
}

/// The worker's waker: mio's eventfd waker.
struct EpollWaker(mio::Waker);

impl Waker for EpollWaker {
    fn wake(&self) {
        // A failure (eventfd counter overflow) means a wake-up is already pending anyway.
        let _ = self.0.wake();
    }
}

/// The epoll driver. Create one per worker thread with [`EpollDriver::new`].
pub struct EpollDriver {
    poll: Poll,
    events: Events,
    ready: Vec<Ready>,
    waker: Arc<EpollWaker>,
    listeners: Vec<mio::net::TcpListener>,
    /// Listeners that used up their accept budget: accept again next round without waiting.
    accept_again: Vec<usize>,
    /// Listeners that stopped on descriptor exhaustion (or another resource error). Their
    /// readiness edge is spent, so they are retried after `accept_retry_at`.
    accept_retry: Vec<usize>,
    accept_retry_at: Option<Instant>,
    reserve: ReserveFd,
    /// Indexed by `ConnId::key()`.
    conns: Vec<Option<ConnState>>,
    /// Connections that used up their read budget and may still have data.
    readable_backlog: Vec<ConnId>,
    /// Closed connections whose `Released` is delivered at the start of the next `poll`.
    released: Vec<ConnId>,
    lingering: Lingering,
    options: SocketOptions,
    scratch: Box<[u8]>,
    round: u64,
    stats: DriverStats,
}

impl EpollDriver {
    /// Creates the epoll instance, its waker and the reserve descriptor.
    pub fn new(options: SocketOptions) -> io::Result<EpollDriver> {
        let poll = Poll::new()?;
        let waker = Arc::new(EpollWaker(mio::Waker::new(poll.registry(), WAKER_TOKEN)?));
        Ok(EpollDriver {
            poll,
            events: Events::with_capacity(EVENTS_CAPACITY),
            ready: Vec::with_capacity(EVENTS_CAPACITY),
            waker,
            listeners: Vec::new(),
            accept_again: Vec::new(),
            accept_retry: Vec::new(),
            accept_retry_at: None,
            reserve: ReserveFd::new(),
            conns: Vec::new(),
            readable_backlog: Vec::new(),
            released: Vec::new(),
            lingering: Lingering::default(),
            options,
            scratch: vec![0u8; SCRATCH_SIZE].into_boxed_slice(),
            round: 0,
            stats: DriverStats::default(),
        })
    }

    /// The registered state of exactly this connection (same key and generation).
    fn conn_mut(&mut self, conn: ConnId) -> Option<&mut ConnState> {
        self.conns
            .get_mut(conn.key())
            .and_then(Option::as_mut)
            .filter(|s| s.id == conn)
    }

    /// Accepts on listener `idx` until it would block, the budget is used up, or descriptors run
    /// out.
    fn accept_on(&mut self, idx: usize, on_event: &mut dyn FnMut(Event<'_>)) {
        let Some(listener) = self.listeners.get(idx) else {
            return;
        };
        for _ in 0..ACCEPT_BUDGET {
            match listener.accept() {
                Ok((stream, _)) => {
                    // mio accepts with accept4(SOCK_NONBLOCK | SOCK_CLOEXEC).
                    let stream: TcpStream = stream.into();
                    // A failure here means the socket is already dead: drop (close) it.
                    if set_nodelay_nonblocking(&stream).is_ok() {
                        on_event(Event::Accepted {
                            listener: idx,
                            socket: Accepted { stream },
                        });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if is_fd_exhaustion(&e) => {
                    self.stats.accept_fd_exhausted += 1;
                    match self.reserve.refuse_one(listener.as_raw_fd()) {
                        Refusal::Refused => {}
                        // The next connection brings a new edge.
                        Refusal::BacklogEmpty => return,
                        Refusal::Failed => {
                            // No progress possible now, and the edge is spent: retry later.
                            schedule_retry(&mut self.accept_retry, &mut self.accept_retry_at, idx);
                            return;
                        }
                    }
                }
                Err(e) if is_transient_accept_error(&e) => {}
                Err(_) => {
                    // ENOBUFS/ENOMEM or something unexpected: back off instead of spinning.
                    schedule_retry(&mut self.accept_retry, &mut self.accept_retry_at, idx);
                    return;
                }
            }
        }
        if !self.accept_again.contains(&idx) {
            self.accept_again.push(idx);
        }
    }
}

/// Errors that concern only the connection being accepted (Linux passes pending network errors
/// of the new socket to `accept`); the listener itself is fine.
fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EINTR
                | libc::ECONNABORTED
                | libc::EPROTO
                | libc::EPERM
                | libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH
        )
    )
}

fn schedule_retry(retry: &mut Vec<usize>, at: &mut Option<Instant>, idx: usize) {
    if !retry.contains(&idx) {
        retry.push(idx);
    }
    at.get_or_insert_with(|| Instant::now() + ACCEPT_RETRY);
}

/// Reads `state`'s socket into `scratch` until it would block, the stream ends, or the read
/// budget is used up (then the connection goes to `backlog` for the next round).
fn read_conn(
    state: &mut ConnState,
    scratch: &mut [u8],
    round: u64,
    backlog: &mut Vec<ConnId>,
    on_event: &mut dyn FnMut(Event<'_>),
) {
    state.read_round = round;
    let fd = state.stream.as_raw_fd();
    for _ in 0..READ_BUDGET {
        // SAFETY: `scratch` is a valid, writable buffer of `scratch.len()` bytes that nothing
        // else borrows during the call; `fd` is the connection's socket, owned by `state`.
        let read = syscall(unsafe { libc::read(fd, scratch.as_mut_ptr().cast(), scratch.len()) });
        match read {
            Ok(0) => {
                state.read_closed = true;
                on_event(Event::ReadClosed {
                    conn: state.id,
                    error: None,
                });
                return;
            }
            Ok(n) => on_event(Event::Data {
                conn: state.id,
                bytes: &mut scratch[..n as usize],
            }),
            Err(err) => match err.kind() {
                io::ErrorKind::WouldBlock => return,
                io::ErrorKind::Interrupted => {}
                _ => {
                    state.read_closed = true;
                    on_event(Event::ReadClosed {
                        conn: state.id,
                        error: Some(err),
                    });
                    return;
                }
            },
        }
    }
    // Budget used up without hitting WouldBlock: there may be more, and no new edge will say so.
    backlog.push(state.id);
}

impl Driver for EpollDriver {
    #[cfg(test)]
    fn name(&self) -> &'static str {
        "epoll"
    }

    fn add_listener(&mut self, listener: TcpListener) -> io::Result<usize> {
        listener.set_nonblocking(true)?;
        let idx = self.listeners.len();
        let mut listener = mio::net::TcpListener::from_std(listener);
        self.poll.registry().register(
            &mut listener,
            Token(LISTENER_BIT | idx),
            Interest::READABLE,
        )?;
        self.listeners.push(listener);
        Ok(idx)
    }

    fn register(&mut self, conn: ConnId, socket: Accepted) -> io::Result<()> {
        let key = conn.key();
        claim_slot(&mut self.conns, key)?;
        let stream = socket.stream;
        socket::apply(&stream, self.options);
        // Edge-triggered: EPOLL_CTL_ADD reports readiness that already exists (bytes that
        // arrived before registration), so nothing is lost.
        self.poll.registry().register(
            &mut SourceFd(&stream.as_raw_fd()),
            Token(conn_token(conn)),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.conns[key] = Some(ConnState {
            id: conn,
            stream,
            want_writable: false,
            read_closed: false,
            read_round: 0,
        });
        Ok(())
    }

    fn refuse(&mut self, socket: Accepted, notice: &[u8]) {
        self.lingering.refuse(socket.stream, notice);
    }

    fn write(&mut self, conn: ConnId, mut buf: WriteBuf) -> WriteStatus {
        let Some(state) = self.conn_mut(conn) else {
            let error = io::Error::new(
                io::ErrorKind::NotFound,
                "write on a connection that is not registered",
            );
            return WriteStatus::Done(Err(error), buf);
        };
        if buf.is_empty() {
            return WriteStatus::Done(Ok(0), buf);
        }
        let fd = state.stream.as_raw_fd();
        let iov = buf.iovecs();
        // SAFETY: an all-zero msghdr is valid (null name/control, no iovecs).
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = iov.len() as _;
        loop {
            // sendmsg rather than writev: MSG_NOSIGNAL turns a peer reset into EPIPE instead
            // of SIGPIPE whatever the process's signal disposition.
            // SAFETY: `msg` points at `msg_iovlen` valid iovecs in `buf`, which point at bytes
            // `buf` holds; sendmsg only reads them during the call. `fd` is the connection's
            // socket, owned by `state`.
            let sent = syscall(unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) });
            match sent {
                Ok(n) => return WriteStatus::Done(Ok(n as usize), buf),
                Err(err) => match err.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => {
                        state.want_writable = true;
                        return WriteStatus::WouldBlock(buf);
                    }
                    _ => return WriteStatus::Done(Err(err), buf),
                },
            }
        }
    }

    fn close(&mut self, conn: ConnId) {
        if let Some(slot) = self.conns.get_mut(conn.key()) {
            if slot.as_ref().is_some_and(|s| s.id == conn) {
                if let Some(state) = slot.take() {
                    // Failure means the fd is already gone from the epoll set: nothing to do.
                    let _ = self
                        .poll
                        .registry()
                        .deregister(&mut SourceFd(&state.stream.as_raw_fd()));
                    // Nothing is in flight with epoll: the socket closes here.
                    drop(state);
                }
            }
        }
        // Backlog entries are dropped lazily (they no longer match a registered connection).
        self.released.push(conn);
    }

    fn peer_addr(&self, conn: ConnId) -> Option<SocketAddr> {
        self.conns
            .get(conn.key())
            .and_then(Option::as_ref)
            .filter(|s| s.id == conn)
            .and_then(|s| s.stream.peer_addr().ok())
    }

    fn poll(
        &mut self,
        timeout: Option<Duration>,
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> io::Result<()> {
        self.round += 1;
        let round = self.round;
        self.lingering.expire();

        let mut delivered = false;
        for conn in self.released.drain(..) {
            on_event(Event::Released { conn });
            delivered = true;
        }

        let carried = mem::take(&mut self.readable_backlog);
        let accept_now = mem::take(&mut self.accept_again);
        let now = Instant::now();
        let wait = if delivered || !carried.is_empty() || !accept_now.is_empty() {
            Some(Duration::ZERO)
        } else if let Some(at) = self.accept_retry_at {
            let until_retry = at.saturating_duration_since(now);
            Some(timeout.map_or(until_retry, |t| t.min(until_retry)))
        } else {
            timeout
        };

        self.stats.submissions += 1;
        if let Err(e) = self.poll.poll(&mut self.events, wait) {
            if e.kind() != io::ErrorKind::Interrupted {
                self.readable_backlog = carried;
                self.accept_again = accept_now;
                return Err(e);
            }
            self.events.clear();
        }

        self.ready.clear();
        for ev in self.events.iter() {
            self.ready.push(Ready {
                token: ev.token().0,
                readable: ev.is_readable() || ev.is_read_closed() || ev.is_error(),
                writable: ev.is_writable() || ev.is_write_closed() || ev.is_error(),
            });
        }
        self.stats.completions += self.ready.len() as u64;

        let ready = mem::take(&mut self.ready);
        for r in &ready {
            if r.token == WAKER_TOKEN.0 {
                on_event(Event::Woken);
            } else if r.token & LISTENER_BIT != 0 {
                self.accept_on(r.token & !LISTENER_BIT, on_event);
            } else {
                let key = r.token & 0xffff_ffff;
                // Filters stale readiness: the slot must hold the connection the token names.
                let Some(state) = self
                    .conns
                    .get_mut(key)
                    .and_then(Option::as_mut)
                    .filter(|s| conn_token(s.id) == r.token)
                else {
                    continue;
                };
                if r.readable && !state.read_closed && state.read_round != round {
                    read_conn(
                        state,
                        &mut self.scratch,
                        round,
                        &mut self.readable_backlog,
                        on_event,
                    );
                }
                if r.writable && state.want_writable {
                    state.want_writable = false;
                    on_event(Event::Writable { conn: state.id });
                }
            }
        }
        self.ready = ready;

        for conn in carried {
            let Some(state) = self
                .conns
                .get_mut(conn.key())
                .and_then(Option::as_mut)
                .filter(|s| s.id == conn)
            else {
                continue;
            };
            if !state.read_closed && state.read_round != round {
                read_conn(
                    state,
                    &mut self.scratch,
                    round,
                    &mut self.readable_backlog,
                    on_event,
                );
            }
        }

        for idx in accept_now {
            self.accept_on(idx, on_event);
        }
        if self.accept_retry_at.is_some_and(|at| Instant::now() >= at) {
            self.accept_retry_at = None;
            for idx in mem::take(&mut self.accept_retry) {
                self.accept_on(idx, on_event);
            }
        }
        Ok(())
    }

    fn waker(&self) -> Arc<dyn Waker> {
        self.waker.clone()
    }

    fn stats(&self) -> DriverStats {
        self.stats
    }
}
