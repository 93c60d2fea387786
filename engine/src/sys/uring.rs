//! The io_uring driver, built directly on the `io-uring` crate.
//!
//! Completion-based: one multishot accept per listener, one multishot recv per connection that
//! picks its buffers from a single provided-buffer ring (so an idle connection holds no read
//! buffer), `SendMsg` for writes (queued by `write`, submitted by the next `poll`: one
//! `io_uring_enter` per loop for all writes of a flush), cancel-by-fd on close, and an eventfd
//! with a multishot poll as the cross-thread waker. See the contract in [`super`].
//!
//! Memory the kernel reads or writes is owned here until the operation's final completion is
//! reaped: the provided-buffer ring, and each in-flight send's [`WriteBuf`] (its `msghdr`, its
//! iovecs and the bytes they point at), kept in the connection's entry — at most one per
//! connection, so nothing is pooled here and nothing stays behind after a fan-out. Operations
//! are named in `user_data` by kind and index (connection key or listener index); an entry is
//! freed only after its last operation's final completion, so a completion always finds its own
//! entry.
//!
//! The driver is deliberately `!Send`: with `IORING_SETUP_SINGLE_ISSUER` only the creating thread
//! may submit, so a worker must build its driver on its own thread.

use std::collections::VecDeque;
use std::io;
use std::mem;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::types::{BufRingEntry, CancelBuilder, Fd, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring, Probe};

use super::mem::Mmap;
use super::socket::{self, is_fd_exhaustion, Lingering, Refusal, ReserveFd};
use super::{
    claim_slot, syscall, Accepted, ConnId, Driver, DriverStats, Event, SocketOptions, Waker,
    WriteBuf, WriteStatus,
};

/// Sends queued before the driver submits them without waiting for `poll` (see `write`).
const SUBMIT_SLICE: usize = 256;

/// The buffer group id of the driver's one provided-buffer ring.
const BGID: u16 = 0;
/// user_data of the waker's multishot poll.
const WAKER_UD: u64 = u64::MAX;
/// user_data of cancel requests (their completions carry no information we need).
const CANCEL_UD: u64 = u64::MAX - 1;
/// user_data of the other operations: the kind in the top byte, an index below.
const KIND_SHIFT: u32 = 56;
const INDEX_MASK: u64 = (1 << KIND_SHIFT) - 1;

/// What an operation is; its index is a connection key or a listener index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    /// A listener's multishot accept.
    Accept = 1,
    /// A one-shot poll for a pending connection, armed instead of the accept while the process
    /// is out of descriptors and the backlog is empty (an accept would fail at once).
    AcceptWait = 2,
    /// A connection's multishot recv.
    Recv = 3,
    /// A connection's send.
    Send = 4,
}

fn user_data(kind: Kind, index: usize) -> u64 {
    ((kind as u64) << KIND_SHIFT) | index as u64
}

fn decode(ud: u64) -> Option<(Kind, usize)> {
    let index = (ud & INDEX_MASK) as usize;
    let kind = match ud >> KIND_SHIFT {
        1 => Kind::Accept,
        2 => Kind::AcceptWait,
        3 => Kind::Recv,
        4 => Kind::Send,
        _ => return None,
    };
    Some((kind, index))
}
/// How long to back off before re-arming an accept after descriptor exhaustion.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);
/// CQ drain passes per `poll` (each pass takes everything currently in the CQ).
const DRAIN_PASSES: usize = 4;
/// Completions copied out of the CQ at a time.
const CQE_BATCH: usize = 1024;
/// Flags for accepted sockets: the worker expects nonblocking, close-on-exec streams.
const ACCEPT_FLAGS: i32 = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;

/// Sizes of the ring and of the provided-buffer pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UringConfig {
    /// Submission queue size (the completion queue is 8 times larger, clamped by the kernel).
    pub entries: u32,
    /// Number of provided read buffers shared by all connections; a power of two ≤ 32768.
    pub buf_count: u16,
    /// Size of each provided read buffer in bytes.
    pub buf_size: u32,
    /// Applied to every registered connection.
    pub socket: SocketOptions,
}

impl Default for UringConfig {
    fn default() -> Self {
        UringConfig {
            entries: 4096,
            buf_count: 1024,
            buf_size: 4096,
            socket: SocketOptions::default(),
        }
    }
}

/// Checks that io_uring is usable here with every feature this driver needs; the error is a
/// human-readable reason for falling back to epoll.
pub fn probe() -> Result<(), String> {
    // Buffers first: locals drop in reverse order, so the ring (and its pending recv) goes
    // before the memory it points into.
    let mut bufs = BufRing::new(2, 64).map_err(|e| format!("cannot map buffer ring: {e}"))?;
    let ring = IoUring::new(8).map_err(|e| match e.raw_os_error() {
        Some(libc::EPERM) => {
            format!("io_uring_setup failed: {e} (containers often forbid io_uring)")
        }
        Some(libc::ENOSYS) => format!("io_uring_setup failed: {e} (kernel without io_uring)"),
        _ => format!("io_uring_setup failed: {e}"),
    })?;
    if !ring.params().is_feature_ext_arg() {
        return Err("kernel lacks IORING_FEAT_EXT_ARG (wait with timeout; Linux 5.11+)".into());
    }
    let mut p = Probe::new();
    ring.submitter()
        .register_probe(&mut p)
        .map_err(|e| format!("io_uring probe failed: {e}"))?;
    for (code, name) in [
        (opcode::AcceptMulti::CODE, "accept"),
        (opcode::RecvMulti::CODE, "recv"),
        (opcode::SendMsg::CODE, "sendmsg"),
        (opcode::AsyncCancel2::CODE, "async cancel"),
        (opcode::PollAdd::CODE, "poll add"),
    ] {
        if !p.is_supported(code) {
            return Err(format!("kernel lacks io_uring opcode {name}"));
        }
    }
    bufs.register(&ring).map_err(|e| {
        format!("kernel lacks provided-buffer rings (register_buf_ring: {e}; Linux 5.19+)")
    })?;
    let (result, finished) = probe_multishot_recv(ring);
    if !finished {
        // The test recv may still pick a buffer: the kernel must never write into freed memory.
        mem::forget(bufs);
    }
    result
}

/// Multishot recv (Linux 6.0) shares its opcode with plain recv, so the opcode probe cannot see
/// it: try it on a socketpair. Also says whether the recv is known to be over (else the caller
/// must not free the buffer ring).
fn probe_multishot_recv(mut ring: IoUring) -> (Result<(), String>, bool) {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a valid array of two ints for socketpair to fill.
    let pair = syscall(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    });
    if let Err(e) = pair {
        return (Err(format!("socketpair failed: {e}")), true);
    }
    // SAFETY: socketpair succeeded, so both fds are fresh and owned by nobody else.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let recv = opcode::RecvMulti::new(Fd(a.as_raw_fd()), BGID)
        .build()
        .user_data(1);
    // SAFETY: the recv only references the registered buffer ring, which the caller frees only
    // when this returns that the recv is over, and the fd `a`, which outlives the ring.
    if unsafe { ring.submission().push(&recv) }.is_err() {
        return (
            Err("io_uring submission queue unexpectedly full".into()),
            true,
        );
    }
    // SAFETY: writes one byte from a valid static buffer to our own socket.
    let _ = syscall(unsafe { libc::write(b.as_raw_fd(), b"x".as_ptr().cast(), 1) });
    let ts = Timespec::from(Duration::from_secs(1));
    let args = SubmitArgs::new().timespec(&ts);
    let _ = ring.submitter().submit_with_args(1, &args);
    let mut finished = false;
    let first = ring.completion().next();
    let result = match &first {
        Some(cqe) if cqe.result() == 1 && cqueue::more(cqe.flags()) => Ok(()),
        Some(cqe) if cqe.result() < 0 => Err(format!(
            "kernel lacks multishot recv ({}; Linux 6.0+)",
            io::Error::from_raw_os_error(-cqe.result())
        )),
        Some(_) => Err("kernel lacks multishot recv (no MORE flag; Linux 6.0+)".into()),
        None => Err("multishot recv did not complete".into()),
    };
    if first.as_ref().is_some_and(|cqe| !cqueue::more(cqe.flags())) {
        finished = true;
    }
    // Cancel everything and wait for it, so nothing is in flight when the buffers go away.
    let cancel = opcode::AsyncCancel2::new(CancelBuilder::any())
        .build()
        .user_data(CANCEL_UD);
    // SAFETY: a cancel request references no memory.
    let _ = unsafe { ring.submission().push(&cancel) };
    let deadline = Instant::now() + Duration::from_secs(1);
    while !finished && Instant::now() < deadline {
        let ts = Timespec::from(Duration::from_millis(50));
        let args = SubmitArgs::new().timespec(&ts);
        let _ = ring.submitter().submit_with_args(1, &args);
        for cqe in ring.completion() {
            if cqe.user_data() == 1 && !cqueue::more(cqe.flags()) {
                finished = true;
            }
        }
    }
    drop(ring);
    drop((a, b));
    (result, finished)
}

/// The provided-buffer ring: `count` buffers of `size` bytes the kernel picks from for every
/// multishot recv, following the io-uring crate's own `register_buf_ring` test.
struct BufRing {
    /// The ring of `BufRingEntry`s shared with the kernel (its tail lives in entry 0).
    entries: Mmap,
    /// The buffers themselves, `count * size` bytes.
    bufs: Mmap,
    count: u16,
    size: u32,
    /// Our tail; published to the kernel by `sync`.
    local_tail: u16,
}

impl BufRing {
    fn new(count: u16, size: u32) -> io::Result<BufRing> {
        if count == 0 || !count.is_power_of_two() || count > 1 << 15 || size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buf_count must be a power of two in 1..=32768 and buf_size > 0",
            ));
        }
        Ok(BufRing {
            entries: Mmap::new(count as usize * mem::size_of::<BufRingEntry>(), true)?,
            bufs: Mmap::new(count as usize * size as usize, true)?,
            count,
            size,
            local_tail: 0,
        })
    }

    /// Registers the ring as buffer group [`BGID`] and hands every buffer to the kernel.
    fn register(&mut self, ring: &IoUring) -> io::Result<()> {
        // SAFETY: the entry memory is a page-aligned, zeroed mapping of `count` entries that
        // stays mapped until `self` drops, and every owner drops its ring before its BufRing.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                self.entries.as_ptr() as u64,
                self.count,
                BGID,
                0,
            )?;
        }
        for bid in 0..self.count {
            self.push(bid);
        }
        self.sync();
        Ok(())
    }

    /// Writes buffer `bid` into the next free ring slot (not yet visible to the kernel).
    fn push(&mut self, bid: u16) {
        let idx = (self.local_tail & (self.count - 1)) as usize;
        let base = self.entries.as_ptr().cast::<BufRingEntry>();
        // SAFETY: `idx < count`, so the entry lies inside the mapping. The slot at our tail is
        // not owned by the kernel (it only reads slots between its head and the published
        // tail, and at most `count - 1` buffers are out there while we hold `bid`), and the
        // setters write addr/len/bid only, never the tail word that shares entry 0.
        let entry = unsafe { &mut *base.add(idx) };
        entry.set_addr(self.bufs.as_ptr() as u64 + u64::from(bid) * u64::from(self.size));
        entry.set_len(self.size);
        entry.set_bid(bid);
        self.local_tail = self.local_tail.wrapping_add(1);
    }

    /// Publishes our tail to the kernel.
    fn sync(&self) {
        let base = self.entries.as_ptr().cast::<BufRingEntry>();
        // SAFETY: `base` is the start of a registered buffer ring; `tail` only computes the
        // address of its tail field.
        let tail = unsafe { BufRingEntry::tail(base) }.cast::<AtomicU16>();
        // SAFETY: the tail is an aligned u16 inside our mapping; the kernel reads it with
        // acquire semantics, we are its only writer.
        unsafe { (*tail).store(self.local_tail, Ordering::Release) };
    }

    /// Returns buffer `bid` to the kernel.
    fn recycle(&mut self, bid: u16) {
        if bid < self.count {
            self.push(bid);
            self.sync();
        }
    }

    /// The first `len` bytes of buffer `bid`, which the kernel just handed to us.
    fn get(&mut self, bid: u16, len: usize) -> Option<&mut [u8]> {
        if bid >= self.count || len > self.size as usize {
            return None;
        }
        let offset = bid as usize * self.size as usize;
        // SAFETY: the range lies inside the buffer mapping. The kernel selected buffer `bid`
        // for this completion and will not touch it until `recycle(bid)` puts it back, and
        // `&mut self` keeps us from handing out a second slice at the same time.
        Some(unsafe { std::slice::from_raw_parts_mut(self.bufs.as_ptr().add(offset), len) })
    }
}

#[derive(Debug)]
struct ConnEntry {
    id: ConnId,
    /// The connection's socket, owned from `register` until the entry is freed.
    stream: TcpStream,
    /// The multishot recv is armed (its final completion not reaped yet).
    recv_armed: bool,
    /// The in-flight send's buffer: the kernel reads its header, iovecs and bytes until the
    /// send's final completion.
    send: Option<WriteBuf>,
    /// `close` was called: suppress events, release once no op is left.
    closing: bool,
}

impl ConnEntry {
    fn idle(&self) -> bool {
        !self.recv_armed && self.send.is_none()
    }
}

/// The worker's waker: an eventfd watched by a multishot poll on the ring.
struct UringWaker {
    fd: OwnedFd,
}

impl Waker for UringWaker {
    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our own eventfd. EAGAIN (counter full)
        // means a wake-up is pending anyway.
        let _ =
            syscall(unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) });
    }
}

/// The io_uring driver. Create one per worker thread with [`UringDriver::new`].
pub struct UringDriver {
    // Dropped first (fields drop in order): the ring is closed before the memory it points into.
    ring: IoUring,
    /// `None` only while dropping, when it was leaked (see `Drop`).
    buf_ring: Option<BufRing>,
    /// Indexed by `ConnId::key()`.
    conns: Vec<Option<ConnEntry>>,
    listeners: Vec<TcpListener>,
    /// Listeners whose accept is re-armed at `accept_retry_at` (after descriptor exhaustion).
    accept_retry: Vec<usize>,
    accept_retry_at: Option<Instant>,
    reserve: ReserveFd,
    lingering: Lingering,
    options: SocketOptions,
    /// SQEs that did not fit into the SQ even after a submit; pushed first by the next `poll`.
    backlog: VecDeque<squeue::Entry>,
    /// Connections released without anything in flight, reported by the next `poll`.
    released: Vec<ConnId>,
    cqes: Vec<cqueue::Entry>,
    waker: Arc<UringWaker>,
    /// Operations submitted (or queued) whose final completion has not been reaped yet,
    /// waker poll included, cancel requests excluded.
    in_flight: usize,
    stats: DriverStats,
}

/// Builds the ring with the cheapest task-running mode the kernel accepts.
fn build_ring(entries: u32) -> io::Result<IoUring> {
    let cq_entries = entries.saturating_mul(8).min(1 << 16);
    let mut last_err = None;
    for mode in 0..3 {
        let mut b = IoUring::builder();
        b.setup_cqsize(cq_entries).setup_clamp();
        match mode {
            // Completions are only processed inside our own io_uring_enter: no IPIs, no
            // interruptions of the worker.
            0 => {
                b.setup_single_issuer()
                    .setup_defer_taskrun()
                    .setup_coop_taskrun();
            }
            1 => {
                b.setup_coop_taskrun();
            }
            _ => {}
        }
        match b.build(entries) {
            Ok(ring) => return Ok(ring),
            // Older kernel without this flag: try the next mode silently.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::other("io_uring setup failed")))
}

fn not_registered() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        "connection is not registered (or is closing)",
    )
}

impl UringDriver {
    /// Sets up the ring, registers the provided-buffer ring and arms the waker.
    pub fn new(cfg: UringConfig) -> io::Result<UringDriver> {
        if cfg.entries == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "entries must be > 0",
            ));
        }
        let mut buf_ring = BufRing::new(cfg.buf_count, cfg.buf_size)?;
        let ring = build_ring(cfg.entries)?;
        if !ring.params().is_feature_ext_arg() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "kernel lacks IORING_FEAT_EXT_ARG",
            ));
        }
        buf_ring.register(&ring)?;
        // SAFETY: plain eventfd creation; the result is checked.
        let efd = syscall(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
        // SAFETY: `efd` is a fresh descriptor owned by nobody else.
        let efd = unsafe { OwnedFd::from_raw_fd(efd) };
        let mut driver = UringDriver {
            ring,
            buf_ring: Some(buf_ring),
            conns: Vec::new(),
            listeners: Vec::new(),
            accept_retry: Vec::new(),
            accept_retry_at: None,
            reserve: ReserveFd::new(),
            lingering: Lingering::default(),
            options: cfg.socket,
            backlog: VecDeque::new(),
            released: Vec::new(),
            cqes: Vec::with_capacity(CQE_BATCH),
            waker: Arc::new(UringWaker { fd: efd }),
            in_flight: 0,
            stats: DriverStats::default(),
        };
        driver.arm_waker();
        Ok(driver)
    }

    fn buf_ring(&mut self) -> &mut BufRing {
        self.buf_ring
            .as_mut()
            .expect("the buffer ring lives as long as the driver")
    }

    /// Queues one SQE: into the SQ if it has room (submitting once to make room if not), else
    /// into the backlog that the next `poll` pushes first. Never waits.
    fn push(&mut self, sqe: squeue::Entry) {
        self.stats.submissions += 1;
        if self.backlog.is_empty() {
            // SAFETY: every SQE built by this driver references only memory that lives until
            // its final completion is reaped (or is leaked): the buffer ring, and the send's
            // `WriteBuf` kept in its connection's entry. The fds it names are owned here.
            if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
                return;
            }
            if self.ring.submit().is_ok() {
                // SAFETY: as above.
                if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
                    return;
                }
            }
        }
        self.backlog.push_back(sqe);
    }

    /// Queues the SQE of an operation whose final completion is tracked by `in_flight`.
    fn push_op(&mut self, sqe: squeue::Entry) {
        self.in_flight += 1;
        self.push(sqe);
    }

    /// Moves backlogged SQEs into the SQ, submitting whenever it fills up.
    fn flush_backlog(&mut self) {
        while let Some(sqe) = self.backlog.front() {
            // SAFETY: see `push`.
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                self.backlog.pop_front();
            } else if self.ring.submit().is_err() {
                // EBUSY (CQ overflow) and friends: drain completions first, retry next poll.
                break;
            }
        }
    }

    fn arm_waker(&mut self) {
        let sqe = opcode::PollAdd::new(Fd(self.waker.fd.as_raw_fd()), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(WAKER_UD);
        self.push_op(sqe);
    }

    fn arm_recv(&mut self, key: usize, fd: RawFd) {
        let sqe = opcode::RecvMulti::new(Fd(fd), BGID)
            .build()
            .user_data(user_data(Kind::Recv, key));
        self.push_op(sqe);
    }

    fn arm_accept(&mut self, listener: usize) {
        let Some(l) = self.listeners.get(listener) else {
            return;
        };
        let sqe = opcode::AcceptMulti::new(Fd(l.as_raw_fd()))
            .flags(ACCEPT_FLAGS)
            .build()
            .user_data(user_data(Kind::Accept, listener));
        self.push_op(sqe);
    }

    fn arm_accept_wait(&mut self, listener: usize) {
        let Some(l) = self.listeners.get(listener) else {
            return;
        };
        let sqe = opcode::PollAdd::new(Fd(l.as_raw_fd()), libc::POLLIN as u32)
            .build()
            .user_data(user_data(Kind::AcceptWait, listener));
        self.push_op(sqe);
    }

    fn schedule_accept_retry(&mut self, listener: usize) {
        if !self.accept_retry.contains(&listener) {
            self.accept_retry.push(listener);
        }
        self.accept_retry_at
            .get_or_insert_with(|| Instant::now() + ACCEPT_RETRY);
    }

    fn conn_mut(&mut self, conn: ConnId) -> Option<&mut ConnEntry> {
        self.conns
            .get_mut(conn.key())
            .and_then(Option::as_mut)
            .filter(|e| e.id == conn)
    }

    /// Frees a closing connection's entry (closing its socket) once nothing is in flight on it,
    /// and reports `Released`.
    fn maybe_release(&mut self, key: usize, on_event: &mut dyn FnMut(Event<'_>)) {
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        if let Some(entry) = slot.take_if(|e| e.closing && e.idle()) {
            let conn = entry.id;
            drop(entry);
            on_event(Event::Released { conn });
        }
    }

    /// Enters the kernel: submits the SQ and waits for at least one completion (or the timeout).
    fn enter(&mut self, wait: Option<Duration>) -> io::Result<()> {
        let res = match wait {
            None => self.ring.submitter().submit_and_wait(1),
            Some(d) => {
                let ts = Timespec::from(d);
                let args = SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        match res {
            Ok(_) => Ok(()),
            // Timeout, signal, or a full CQ that we are about to drain.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Reaps and dispatches completions: each pass takes everything in the CQ, in batches of at
    /// most [`CQE_BATCH`] (so the scratch list stays small however full the CQ was).
    fn drain(&mut self, on_event: &mut dyn FnMut(Event<'_>)) {
        for _ in 0..DRAIN_PASSES {
            let mut reaped = false;
            loop {
                let mut cqes = mem::take(&mut self.cqes);
                cqes.clear();
                cqes.extend(self.ring.completion().take(CQE_BATCH));
                let full = cqes.len() == CQE_BATCH;
                reaped |= !cqes.is_empty();
                self.stats.completions += cqes.len() as u64;
                for cqe in &cqes {
                    self.dispatch(cqe, on_event);
                }
                self.cqes = cqes;
                if !full {
                    break;
                }
            }
            if !reaped {
                return;
            }
        }
    }

    fn dispatch(&mut self, cqe: &cqueue::Entry, on_event: &mut dyn FnMut(Event<'_>)) {
        let (ud, res, flags) = (cqe.user_data(), cqe.result(), cqe.flags());
        if ud != CANCEL_UD && !cqueue::more(flags) {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        match ud {
            WAKER_UD => return self.on_waker(flags, on_event),
            CANCEL_UD => return,
            _ => {}
        }
        match decode(ud) {
            Some((Kind::Accept, listener)) => self.on_accept(listener, res, flags, on_event),
            Some((Kind::AcceptWait, listener)) => {
                if res >= 0 {
                    self.arm_accept(listener);
                } else {
                    self.schedule_accept_retry(listener);
                }
            }
            Some((Kind::Recv, key)) => self.on_recv(key, res, flags, on_event),
            Some((Kind::Send, key)) => self.on_send(key, res, on_event),
            None => {
                // Unknown op (cannot happen: every SQE carries one of the kinds above): at
                // least do not leak a buffer.
                if let Some(bid) = cqueue::buffer_select(flags) {
                    self.buf_ring().recycle(bid);
                }
            }
        }
    }

    fn on_waker(&mut self, flags: u32, on_event: &mut dyn FnMut(Event<'_>)) {
        let mut counter: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64 from our own nonblocking eventfd (resetting
        // it; EAGAIN just means it was already reset).
        let _ = syscall(unsafe {
            libc::read(
                self.waker.fd.as_raw_fd(),
                (&mut counter as *mut u64).cast(),
                8,
            )
        });
        on_event(Event::Woken);
        if !cqueue::more(flags) {
            self.arm_waker();
        }
    }

    fn on_accept(
        &mut self,
        listener: usize,
        res: i32,
        flags: u32,
        on_event: &mut dyn FnMut(Event<'_>),
    ) {
        let more = cqueue::more(flags);
        if res >= 0 {
            // SAFETY: a successful accept CQE carries a new descriptor that nobody else owns.
            let stream = unsafe { TcpStream::from_raw_fd(res) };
            // Nonblocking came with the accept flags. A failing setsockopt means the socket
            // is already dead: drop (close) it.
            if stream.set_nodelay(true).is_ok() {
                on_event(Event::Accepted {
                    listener,
                    socket: Accepted { stream },
                });
            }
            if !more {
                self.arm_accept(listener);
            }
            return;
        }
        let err = io::Error::from_raw_os_error(-res);
        if is_fd_exhaustion(&err) {
            self.stats.accept_fd_exhausted += 1;
            let fd = self.listeners.get(listener).map(|l| l.as_raw_fd());
            let outcome = fd.map_or(Refusal::Failed, |fd| self.reserve.refuse_one(fd));
            if !more {
                match outcome {
                    Refusal::Refused => self.arm_accept(listener),
                    // An accept would fail again at once (the fd is allocated before the
                    // backlog is looked at): wait for the next connection instead.
                    Refusal::BacklogEmpty => self.arm_accept_wait(listener),
                    Refusal::Failed => self.schedule_accept_retry(listener),
                }
            }
        } else if !more {
            match -res {
                // Problems of the one connection being accepted: carry on.
                libc::EINTR | libc::ECONNABORTED | libc::EPROTO | libc::EPERM => {
                    self.arm_accept(listener)
                }
                _ => self.schedule_accept_retry(listener),
            }
        }
    }

    fn on_recv(&mut self, key: usize, res: i32, flags: u32, on_event: &mut dyn FnMut(Event<'_>)) {
        let (conn, live) = match self.conns.get(key).and_then(Option::as_ref) {
            Some(entry) => (entry.id, !entry.closing),
            None => (ConnId::new(key, 0), false),
        };
        if let Some(bid) = cqueue::buffer_select(flags) {
            let buf_ring = self.buf_ring();
            if res > 0 && live {
                if let Some(bytes) = buf_ring.get(bid, res as usize) {
                    on_event(Event::Data { conn, bytes });
                }
            }
            self.buf_ring().recycle(bid);
        }
        if cqueue::more(flags) {
            return;
        }
        // The multishot recv ended.
        if live && res == -libc::ENOBUFS {
            // The buffer ring ran dry; buffers are back now that the CQ was drained.
            self.stats.recv_no_buffers += 1;
        }
        if live && (res > 0 || res == -libc::ENOBUFS) {
            if let Some(fd) = self.conn_mut(conn).map(|e| e.stream.as_raw_fd()) {
                self.arm_recv(key, fd);
                return;
            }
        }
        if let Some(entry) = self.conns.get_mut(key).and_then(Option::as_mut) {
            entry.recv_armed = false;
        }
        if live {
            let error = match res {
                0 => None,
                r if r < 0 => Some(io::Error::from_raw_os_error(-r)),
                // Not reached: positive results were re-armed above.
                _ => None,
            };
            on_event(Event::ReadClosed { conn, error });
        } else {
            // ECANCELED after close (or EOF racing it) is swallowed.
            self.maybe_release(key, on_event);
        }
    }

    fn on_send(&mut self, key: usize, res: i32, on_event: &mut dyn FnMut(Event<'_>)) {
        let Some(entry) = self.conns.get_mut(key).and_then(Option::as_mut) else {
            return;
        };
        // The kernel is done with the buffer.
        let buf = entry.send.take();
        let (conn, live) = (entry.id, !entry.closing);
        match buf {
            Some(buf) if live => {
                let result = if res >= 0 {
                    Ok(res as usize)
                } else {
                    Err(io::Error::from_raw_os_error(-res))
                };
                on_event(Event::WriteDone { conn, result, buf });
            }
            // Closed meanwhile: the buffer is dropped, the entry released if nothing else runs.
            unsent => {
                drop(unsent);
                self.maybe_release(key, on_event);
            }
        }
    }
}

impl Driver for UringDriver {
    #[cfg(test)]
    fn name(&self) -> &'static str {
        "uring"
    }

    fn add_listener(&mut self, listener: TcpListener) -> io::Result<usize> {
        // Nonblocking so the reserve-fd trick's accept4 cannot block.
        listener.set_nonblocking(true)?;
        let idx = self.listeners.len();
        self.listeners.push(listener);
        self.arm_accept(idx);
        Ok(idx)
    }

    fn register(&mut self, conn: ConnId, socket: Accepted) -> io::Result<()> {
        let key = conn.key();
        claim_slot(&mut self.conns, key)?;
        let stream = socket.stream;
        socket::apply(&stream, self.options);
        let fd = stream.as_raw_fd();
        self.conns[key] = Some(ConnEntry {
            id: conn,
            stream,
            recv_armed: true,
            send: None,
            closing: false,
        });
        self.arm_recv(key, fd);
        Ok(())
    }

    fn refuse(&mut self, socket: Accepted, notice: &[u8]) {
        self.lingering.refuse(socket.stream, notice);
    }

    fn write(&mut self, conn: ConnId, mut buf: WriteBuf) -> WriteStatus {
        let Some(entry) = self.conn_mut(conn).filter(|e| !e.closing) else {
            return WriteStatus::Done(Err(not_registered()), buf);
        };
        if entry.send.is_some() {
            let error = io::Error::other("a write is already in flight on this connection");
            return WriteStatus::Done(Err(error), buf);
        }
        if buf.is_empty() {
            return WriteStatus::Done(Ok(0), buf);
        }
        let fd = entry.stream.as_raw_fd();
        // Points into `buf`'s box, which the entry keeps until the send's final completion.
        let msg = buf.msghdr();
        entry.send = Some(buf);
        // MSG_NOSIGNAL: a reset peer yields EPIPE, not SIGPIPE.
        let sqe = opcode::SendMsg::new(Fd(fd), msg)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
            .user_data(user_data(Kind::Send, conn.key()));
        self.push_op(sqe);
        // A fan-out round queues one send per member. Submitting them in slices rather than in
        // one enormous `io_uring_enter` returns to user space between slices, where the scheduler
        // can run the hub thread (which times every room's window) instead of starving it.
        if self.ring.submission().len() >= SUBMIT_SLICE {
            let _ = self.ring.submit();
        }
        WriteStatus::Pending
    }

    fn close(&mut self, conn: ConnId) {
        let Some(entry) = self.conn_mut(conn) else {
            // Never registered (or already released): nothing in flight.
            self.released.push(conn);
            return;
        };
        if entry.closing {
            return; // Released is already on its way.
        }
        entry.closing = true;
        if entry.idle() {
            self.conns[conn.key()] = None;
            self.released.push(conn);
            return;
        }
        let fd = entry.stream.as_raw_fd();
        // One request cancels the recv and the send; queued behind them in submission order.
        // The socket stays open (owned by the entry) until both have completed.
        let sqe = opcode::AsyncCancel2::new(CancelBuilder::fd(Fd(fd)).all())
            .build()
            .user_data(CANCEL_UD);
        self.push(sqe);
    }

    fn peer_addr(&self, conn: ConnId) -> Option<SocketAddr> {
        self.conns
            .get(conn.key())
            .and_then(Option::as_ref)
            .filter(|e| e.id == conn)
            .and_then(|e| e.stream.peer_addr().ok())
    }

    fn poll(
        &mut self,
        timeout: Option<Duration>,
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> io::Result<()> {
        self.flush_backlog();
        self.lingering.expire();

        let mut delivered = false;
        for conn in mem::take(&mut self.released) {
            on_event(Event::Released { conn });
            delivered = true;
        }

        if let Some(at) = self.accept_retry_at {
            if Instant::now() >= at {
                self.accept_retry_at = None;
                for idx in mem::take(&mut self.accept_retry) {
                    self.arm_accept(idx);
                }
            }
        }

        let wait = if delivered {
            Some(Duration::ZERO)
        } else if let Some(at) = self.accept_retry_at {
            let until_retry = at.saturating_duration_since(Instant::now());
            Some(timeout.map_or(until_retry, |t| t.min(until_retry)))
        } else {
            timeout
        };
        self.enter(wait)?;
        self.drain(on_event);
        Ok(())
    }

    fn waker(&self) -> Arc<dyn Waker> {
        self.waker.clone()
    }

    fn stats(&self) -> DriverStats {
        self.stats
    }
}

/// How long dropping a driver waits for the kernel to finish cancelled operations.
const DROP_WAIT: Duration = Duration::from_millis(500);

impl Drop for UringDriver {
    fn drop(&mut self) {
        // Cancel everything and give the kernel a moment to finish, so that no request is left
        // writing into the buffer ring or reading a send's buffer.
        self.flush_backlog();
        // Whatever still did not fit is never submitted.
        for sqe in mem::take(&mut self.backlog) {
            if sqe.get_user_data() != CANCEL_UD {
                self.in_flight = self.in_flight.saturating_sub(1);
            }
        }
        let cancel = opcode::AsyncCancel2::new(CancelBuilder::any())
            .build()
            .user_data(CANCEL_UD);
        self.push(cancel);
        let deadline = Instant::now() + DROP_WAIT;
        while self.in_flight > 0 && Instant::now() < deadline {
            if self.enter(Some(Duration::from_millis(10))).is_err() {
                break;
            }
            for cqe in self.ring.completion() {
                if cqe.user_data() != CANCEL_UD && !cqueue::more(cqe.flags()) {
                    self.in_flight = self.in_flight.saturating_sub(1);
                }
            }
        }
        if self.in_flight > 0 {
            // The kernel may still read send buffers or write into the buffer ring: leak them
            // rather than free memory it uses. (Soundness does not depend on the wait above.)
            tracing::warn!(
                in_flight = self.in_flight,
                "io_uring operations outlived the driver; leaking their buffers"
            );
            mem::forget(mem::take(&mut self.conns));
            mem::forget(self.buf_ring.take());
        }
    }
}
