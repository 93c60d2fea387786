//! Socket and process helpers shared by both drivers and the worker setup code.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use super::{syscall, SocketOptions};

/// Creates a nonblocking TCP listener bound to `addr` with `SO_REUSEADDR` and `SO_REUSEPORT`, so
/// several edge processes and several workers per process can listen on the same port and the
/// kernel spreads incoming connections between them.
pub fn reuseport_listener(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    // socket2 creates the socket with SOCK_CLOEXEC on Linux.
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// Turns on `TCP_NODELAY` (pushes are latency-sensitive and already batched by the worker) and
/// makes the socket nonblocking.
pub fn set_nodelay_nonblocking(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_nonblocking(true)
}

/// Whether an `accept` error means the process or the system ran out of file descriptors.
pub(crate) fn is_fd_exhaustion(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// One spare file descriptor (open on `/dev/null`) kept for the "reserve fd" trick: when `accept`
/// fails with `EMFILE`/`ENFILE`, the pending connection would stay in the backlog and the
/// listener would report readiness forever. Closing the spare frees one descriptor, which lets us
/// accept that connection and close it at once (the client sees a clean close instead of a hang),
/// after which the spare is reopened.
#[derive(Debug)]
pub(crate) struct ReserveFd {
    spare: Option<File>,
}

impl ReserveFd {
    /// Opens the spare descriptor (best effort: without it the trick is skipped).
    pub(crate) fn new() -> Self {
        ReserveFd {
            spare: File::open("/dev/null").ok(),
        }
    }

    /// Refuses one pending connection on `listener` (a nonblocking listening socket) using the
    /// spare descriptor: frees the spare, accepts one connection, closes it at once, reopens
    /// the spare.
    pub(crate) fn refuse_one(&mut self, listener: RawFd) -> Refusal {
        let had_spare = self.spare.take().is_some(); // dropping the File closes the spare
        let mut outcome = Refusal::Failed;
        if had_spare {
            // SAFETY: accept4 with null address pointers is valid; `listener` is a socket fd
            // owned by the caller and open for the duration of the call.
            let accepted = syscall(unsafe {
                libc::accept4(
                    listener,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            });
            match accepted {
                Ok(fd) => {
                    // SAFETY: `fd` was just returned by accept4, is owned by nobody else and is
                    // closed exactly once here.
                    unsafe { libc::close(fd) };
                    outcome = Refusal::Refused;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => outcome = Refusal::BacklogEmpty,
                Err(_) => {}
            }
        }
        self.spare = File::open("/dev/null").ok();
        outcome
    }
}

/// Outcome of [`ReserveFd::refuse_one`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// One connection was taken off the backlog and closed: accepting may go on.
    Refused,
    /// Nothing was pending (Linux reports `EMFILE` before looking at the backlog): the next
    /// connection will signal readiness again.
    BacklogEmpty,
    /// No spare descriptor, or the accept failed again: back off and retry later.
    Failed,
}

/// Caps the kernel send buffer of an accepted socket (`SO_SNDBUF`; the kernel doubles it for
/// bookkeeping). A bounded kernel buffer keeps a stalled reader's backlog in the edge's own send
/// queue, where it is bounded and shed by priority, instead of in up to `tcp_wmem` max of kernel
/// memory per socket.
pub fn set_send_buffer(stream: &TcpStream, bytes: usize) -> io::Result<()> {
    socket2::SockRef::from(stream).set_send_buffer_size(bytes)
}

/// Applies the per-connection options to a socket being registered (best effort: the kernel's
/// default send buffer still works, only less tightly bounded).
pub(crate) fn apply(stream: &TcpStream, options: SocketOptions) {
    if options.send_buffer_bytes > 0 {
        let _ = set_send_buffer(stream, options.send_buffer_bytes);
    }
}

/// How long a refused socket stays half-open so the client can read why it was refused.
const REFUSE_LINGER: Duration = Duration::from_secs(1);
/// Refused sockets kept lingering at most (the oldest is closed early beyond this).
const MAX_LINGERING: usize = 256;

/// Refused sockets: sent their notice, write side shut, closed after [`REFUSE_LINGER`].
#[derive(Debug, Default)]
pub(crate) struct Lingering {
    queue: VecDeque<(Instant, TcpStream)>,
}

impl Lingering {
    /// Sends `notice` (best effort, on a fresh socket whose send buffer is empty: a failure only
    /// loses the notice), shuts the write side and keeps the socket for a moment.
    pub(crate) fn refuse(&mut self, stream: TcpStream, notice: &[u8]) {
        let _ = (&stream).write(notice);
        let _ = stream.shutdown(Shutdown::Write);
        if self.queue.len() >= MAX_LINGERING {
            self.queue.pop_front();
        }
        self.queue.push_back((Instant::now(), stream));
    }

    /// Closes the sockets that lingered long enough.
    pub(crate) fn expire(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        let now = Instant::now();
        while let Some((since, _)) = self.queue.front() {
            if now.duration_since(*since) < REFUSE_LINGER {
                break;
            }
            self.queue.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_listeners_share_a_port() {
        let a = reuseport_listener("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = a.local_addr().unwrap();
        let b = reuseport_listener(addr, 16).unwrap();
        assert_eq!(b.local_addr().unwrap(), addr);
    }

    #[test]
    fn reserve_fd_refuses_a_pending_connection() {
        let l = reuseport_listener("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = l.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).unwrap();
        let mut reserve = ReserveFd::new();
        use std::os::fd::AsRawFd;
        assert_eq!(reserve.refuse_one(l.as_raw_fd()), Refusal::Refused);
        assert!(reserve.spare.is_some());
        let mut buf = [0u8; 1];
        use std::io::Read;
        // The server side was closed at once: EOF (or a reset) and no hang.
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        match client.read(&mut buf) {
            Ok(n) => assert_eq!(n, 0),
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
        }
        // Backlog now empty: nothing to refuse.
        assert_eq!(reserve.refuse_one(l.as_raw_fd()), Refusal::BacklogEmpty);
    }
}
