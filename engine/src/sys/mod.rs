//! The OS seam: every socket syscall and every `unsafe` block of the engine lives below this module.
//!
//! A worker owns one [`Driver`]. Above this line nothing knows which driver runs; both drivers
//! implement the same contract:
//!
//! * `add_listener` starts accepting on a (SO_REUSEPORT, nonblocking) listener; each accepted
//!   socket is reported as [`Event::Accepted`] and is *not* read until the worker `register`s it
//!   under a [`ConnId`] of its choosing.
//! * Reads are driver-owned: bytes arrive as [`Event::Data`] borrowing a driver buffer that is valid
//!   only during the callback (io_uring: a provided-buffer ring slot; epoll: one scratch buffer per
//!   worker), so an idle connection holds no read buffer. End of stream or a read error arrives as
//!   [`Event::ReadClosed`]; after it no more `Data` comes for that connection.
//! * `write` starts one vectored write. It returns [`WriteStatus::Done`] when the write completed
//!   synchronously (possibly short), [`WriteStatus::WouldBlock`] when nothing could be written yet
//!   ([`Event::Writable`] follows once it can), or [`WriteStatus::Pending`] when it was submitted
//!   and [`Event::WriteDone`] will follow. With `Pending` the memory behind `bufs` must stay valid
//!   and unmoved until that event. At most one write per connection is outstanding.
//! * `close` stops all I/O on a connection; [`Event::Released`] follows (on a later `poll`) once no
//!   operation on it is in flight. Only then may the worker close the fd and free the memory of a
//!   pending write. No other event for that connection comes after `close`.
//! * `poll` waits up to `timeout` for completions/readiness (submitting queued operations first) and
//!   calls `on_event` for each. [`Waker::wake`] from any thread makes a blocked `poll` return with
//!   [`Event::Woken`].

use std::io::{self, IoSlice};
use std::net::{TcpListener, TcpStream};
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

pub mod epoll;
pub mod socket;
pub mod uring;

#[cfg(test)]
mod contract_tests;

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

/// What a driver reports from `poll`.
#[derive(Debug)]
pub enum Event<'a> {
    /// A new connection on the listener with this index (as returned by `add_listener`).
    Accepted { listener: usize, stream: TcpStream },
    /// Bytes read from a registered connection; the worker may unmask/parse in place.
    Data { conn: ConnId, bytes: &'a mut [u8] },
    /// The peer closed its side (`error: None`) or the read failed.
    ReadClosed {
        conn: ConnId,
        error: Option<io::Error>,
    },
    /// A write that returned `Pending` finished: bytes written, or the error.
    WriteDone {
        conn: ConnId,
        result: io::Result<usize>,
    },
    /// The socket can take data again after `write` returned `WouldBlock`.
    Writable { conn: ConnId },
    /// After `close`: nothing is in flight for this connection any more.
    Released { conn: ConnId },
    /// The worker's [`Waker`] was triggered.
    Woken,
}

/// Outcome of starting a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteStatus {
    /// Completed now: this many bytes were written (may be fewer than offered).
    Done(usize),
    /// The socket buffer is full; [`Event::Writable`] follows.
    WouldBlock,
    /// Submitted; [`Event::WriteDone`] follows. Keep the buffers alive until then.
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

/// Wakes a worker blocked in [`Driver::poll`] from another thread.
pub trait Waker: Send + Sync {
    fn wake(&self);
}

/// One worker's I/O driver. See the module documentation for the contract.
pub trait Driver {
    /// "uring" or "epoll".
    #[cfg(test)]
    fn name(&self) -> &'static str;
    fn add_listener(&mut self, listener: TcpListener) -> io::Result<usize>;
    fn register(&mut self, conn: ConnId, fd: RawFd) -> io::Result<()>;
    fn write(&mut self, conn: ConnId, fd: RawFd, bufs: &[IoSlice<'_>]) -> io::Result<WriteStatus>;
    fn close(&mut self, conn: ConnId, fd: RawFd);
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
pub fn new_driver(kind: DriverKind) -> io::Result<(Box<dyn Driver>, Option<String>)> {
    match kind {
        DriverKind::Epoll => Ok((Box::new(epoll::EpollDriver::new()?), None)),
        DriverKind::Uring => Ok((
            Box::new(uring::UringDriver::new(uring::UringConfig::default())?),
            None,
        )),
        DriverKind::Auto => match uring::probe() {
            Ok(()) => Ok((
                Box::new(uring::UringDriver::new(uring::UringConfig::default())?),
                None,
            )),
            Err(why) => Ok((Box::new(epoll::EpollDriver::new()?), Some(why))),
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
