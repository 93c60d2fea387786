//! The OS seam: every socket syscall and every `unsafe` block of the engine lives below this module.
//!
//! A worker owns one [`Driver`]. Above this line nothing knows which driver runs; both drivers
//! implement the same contract (tested for both by `contract_tests`):
//!
//! * **Descriptors.** `add_listener` starts accepting on a (SO_REUSEPORT, nonblocking) listener;
//!   each accepted socket is reported as [`Event::Accepted`] carrying an [`Accepted`] — an owned
//!   socket the worker cannot read, write or close itself. It hands it back either to `register`
//!   (under a [`ConnId`] of its choosing; from then on the driver owns the descriptor and closes
//!   it when it releases the connection, and the worker names the connection by its id only) or
//!   to `refuse` (the driver sends a short notice, shuts the socket and closes it a moment later).
//! * **Reads** are driver-owned: bytes arrive as [`Event::Data`] borrowing a driver buffer that is
//!   valid only during the callback (io_uring: a provided-buffer ring slot; epoll: one scratch
//!   buffer per worker), so an idle connection holds no read buffer. End of stream or a read error
//!   arrives as [`Event::ReadClosed`]; after it no more `Data` comes for that connection.
//! * **Writes hand owned buffers over.** `write` takes a [`WriteBuf`] (reference-counted handles
//!   to the bytes, no copy, plus the driver's iovec/`msghdr` scratch, in a slot of the worker's
//!   [`WriteBufs`] arena) and starts one vectored write. It returns [`WriteStatus::Done`] with the
//!   buffer when the write finished at once (possibly short, or failed),
//!   [`WriteStatus::WouldBlock`] with the buffer when nothing could be written yet
//!   ([`Event::Writable`] follows once it can), or [`WriteStatus::Pending`] when it was submitted:
//!   the driver keeps the buffer, and with it every byte the kernel reads, until the write
//!   completes, and gives it back in [`Event::WriteDone`]. The caller may do anything with its own
//!   data meanwhile; nothing it does can free memory the kernel still reads, and the soundness of
//!   a write rests on no caller discipline. At most one write per connection is outstanding (a
//!   second one fails with the buffer returned). Dropping a buffer frees its slot; the arena maps
//!   memory for the writes in flight at once and gives it back to the OS when they no longer
//!   need it (`WriteBufs::trim`).
//! * **Closing.** `close` stops all I/O on a connection; [`Event::Released`] follows (on a later
//!   `poll`) once no operation on it is in flight, and by then the driver has closed the
//!   descriptor and dropped the buffer of a write that was in flight (no `WriteDone` comes for it).
//!   No other event for that connection comes after `close`.
//! * **Dropping** a driver with operations in flight is safe: it cancels them and waits briefly
//!   for the kernel to finish; whatever the kernel may still touch after that (write buffers, the
//!   read buffer ring) is leaked rather than freed.
//! * `poll` waits up to `timeout` for completions/readiness (submitting queued operations first)
//!   and calls `on_event` for each. [`Waker::wake`] from any thread makes a blocked `poll` return
//!   with [`Event::Woken`].
//!
//! Every raw libc call goes through [`syscall`], which turns `-1` into the `errno` as an
//! `io::Error`; every `unsafe` block says why it is sound in a `// SAFETY:` comment.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

pub mod buf;
pub mod epoll;
mod mem;
pub mod socket;
pub mod uring;

#[cfg(test)]
mod contract_tests;

pub use buf::{Payload, WriteBuf, WriteBufs};

/// Turns the `-1` a libc call returns on failure into the calling thread's `errno` as an
/// `io::Error` (mio's `syscall!`; the call itself stays in the caller's `unsafe` block, next to
/// its `// SAFETY:` comment).
pub(crate) fn syscall<T: MinusOne>(result: T) -> io::Result<T> {
    if result.is_minus_one() {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

/// Integer results of libc calls (`int`, `ssize_t`).
pub(crate) trait MinusOne: Copy {
    fn is_minus_one(self) -> bool;
}

impl MinusOne for i32 {
    fn is_minus_one(self) -> bool {
        self == -1
    }
}

impl MinusOne for isize {
    fn is_minus_one(self) -> bool {
        self == -1
    }
}

/// The worker's name for a connection: slab key in the low 32 bits, a generation in the high 32
/// bits, so a late completion for a reused slab slot is recognised as stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(pub u64);

impl ConnId {
    pub fn new(key: usize, generation: u32) -> Self {
        ConnId(((generation as u64) << 32) | key as u64)
    }
    pub fn key(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }
    #[cfg(test)]
    pub fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// An accepted socket, owned and not yet read: give it to [`Driver::register`] or
/// [`Driver::refuse`]. Dropping it closes it.
#[derive(Debug)]
pub struct Accepted {
    stream: TcpStream,
}

/// What a driver reports from `poll`.
#[derive(Debug)]
pub enum Event<'a> {
    /// A new connection on the listener with this index (as returned by `add_listener`).
    Accepted { listener: usize, socket: Accepted },
    /// Bytes read from a registered connection; the worker may unmask/parse in place.
    Data { conn: ConnId, bytes: &'a mut [u8] },
    /// The peer closed its side (`error: None`) or the read failed.
    ReadClosed {
        conn: ConnId,
        error: Option<io::Error>,
    },
    /// A write that returned `Pending` finished: bytes written, or the error; the buffer back.
    WriteDone {
        conn: ConnId,
        result: io::Result<usize>,
        buf: WriteBuf,
    },
    /// The socket can take data again after `write` returned `WouldBlock`.
    Writable { conn: ConnId },
    /// After `close`: nothing is in flight for this connection any more, its descriptor is closed.
    Released { conn: ConnId },
    /// The worker's [`Waker`] was triggered.
    Woken,
}

/// Outcome of starting a write.
#[derive(Debug)]
pub enum WriteStatus {
    /// Finished now: this many bytes were written (may be fewer than offered), or the write
    /// failed. The buffer comes back.
    Done(io::Result<usize>, WriteBuf),
    /// The socket buffer is full and nothing was written; [`Event::Writable`] follows. The buffer
    /// comes back.
    WouldBlock(WriteBuf),
    /// Submitted; the driver holds the buffer until [`Event::WriteDone`] gives it back (or drops
    /// it once the kernel is done, if the connection is closed first).
    Pending,
}

/// Counters a driver keeps about itself (read by the worker for stats).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DriverStats {
    /// io_uring: submission queue entries pushed / completions reaped. epoll: syscalls and events.
    pub submissions: u64,
    pub completions: u64,
    /// Times an accept failed because the process ran out of file descriptors.
    pub accept_fd_exhausted: u64,
    /// io_uring: multishot recv re-armed after the provided-buffer ring ran empty.
    pub recv_no_buffers: u64,
}

/// Wakes a worker blocked in [`Driver::poll`] (or another thread's poll) from another thread.
pub trait Waker: Send + Sync {
    fn wake(&self);
}

/// The hub's waker (a mio eventfd waker), as the workers use it.
pub struct MioWaker(pub Arc<mio::Waker>);

impl Waker for MioWaker {
    fn wake(&self) {
        // A failure (eventfd counter overflow) means a wake-up is already pending anyway.
        let _ = self.0.wake();
    }
}

/// Options every driver applies to the connections it registers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SocketOptions {
    /// `SO_SNDBUF` for registered connections (0 = the kernel's default); see
    /// [`socket::set_send_buffer`].
    pub send_buffer_bytes: usize,
}

/// One worker's I/O driver. See the module documentation for the contract.
pub trait Driver {
    /// "uring" or "epoll".
    #[cfg(test)]
    fn name(&self) -> &'static str;
    fn add_listener(&mut self, listener: TcpListener) -> io::Result<usize>;
    /// Starts reading `socket` as `conn`; the driver owns its descriptor from now on. On an error
    /// the socket is closed.
    fn register(&mut self, conn: ConnId, socket: Accepted) -> io::Result<()>;
    /// Sends `notice` (best effort) to a socket that will not be registered, shuts its write side
    /// and closes it about a second later, so that the client can read why it was refused.
    fn refuse(&mut self, socket: Accepted, notice: &[u8]);
    fn write(&mut self, conn: ConnId, buf: WriteBuf) -> WriteStatus;
    fn close(&mut self, conn: ConnId);
    /// The peer address of a registered connection (a syscall: for rare lookups only).
    fn peer_addr(&self, conn: ConnId) -> Option<SocketAddr>;
    fn poll(
        &mut self,
        timeout: Option<Duration>,
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> io::Result<()>;
    fn waker(&self) -> Arc<dyn Waker>;
    fn stats(&self) -> DriverStats;
}

/// Which driver to run.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// io_uring when the kernel allows it, epoll otherwise.
    Auto,
    Uring,
    Epoll,
}

/// Builds the driver for one worker. `Auto` probes io_uring and falls back to epoll; the returned
/// string says why when it fell back (the caller logs it once).
pub fn new_driver(
    kind: DriverKind,
    options: SocketOptions,
) -> io::Result<(Box<dyn Driver>, Option<String>)> {
    let uring = || -> io::Result<Box<dyn Driver>> {
        Ok(Box::new(uring::UringDriver::new(uring::UringConfig {
            socket: options,
            ..uring::UringConfig::default()
        })?))
    };
    match kind {
        DriverKind::Epoll => Ok((Box::new(epoll::EpollDriver::new(options)?), None)),
        DriverKind::Uring => Ok((uring()?, None)),
        DriverKind::Auto => match uring::probe() {
            Ok(()) => Ok((uring()?, None)),
            Err(why) => Ok((Box::new(epoll::EpollDriver::new(options)?), Some(why))),
        },
    }
}

/// The largest slab key a driver accepts (its per-connection table is indexed by key).
const MAX_KEY: usize = 1 << 24;

/// Makes sure a driver's per-connection table has a free slot at `key` for a new registration.
fn claim_slot<T>(table: &mut Vec<Option<T>>, key: usize) -> io::Result<()> {
    if key >= MAX_KEY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "connection key too large",
        ));
    }
    if table.len() <= key {
        table.resize_with(key + 1, || None);
    }
    if table[key].is_some() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "connection key already registered",
        ));
    }
    Ok(())
}

/// The maximum number of iovecs one vectored write may carry (Linux `IOV_MAX`).
pub const MAX_IOVECS: usize = 1024;
