//! The driver contract (see the module documentation of [`super`]) as tests. Every test is a
//! generic function over a driver factory, instantiated for both drivers by
//! `contract_tests!`, so the epoll and io_uring drivers cannot drift apart.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::socket::reuseport_listener;
use super::{
    epoll, syscall, uring, Accepted, ConnId, Driver, Event, Payload, SocketOptions, WriteBuf,
    WriteBufs, WriteStatus,
};

type Factory = fn(SocketOptions) -> Option<Box<dyn Driver>>;

fn epoll_driver(options: SocketOptions) -> Option<Box<dyn Driver>> {
    Some(Box::new(
        epoll::EpollDriver::new(options).expect("epoll driver"),
    ))
}

fn uring_driver(options: SocketOptions) -> Option<Box<dyn Driver>> {
    if let Err(why) = uring::probe() {
        eprintln!("skipping io_uring contract test: {why}");
        return None;
    }
    let cfg = uring::UringConfig {
        socket: options,
        ..uring::UringConfig::default()
    };
    Some(Box::new(
        uring::UringDriver::new(cfg).expect("uring driver"),
    ))
}

/// io_uring with a tiny SQ (full all the time: submit-to-make-room and the SQE backlog), a tiny
/// CQ (overflow) and four 64-byte read buffers (the ring runs dry: ENOBUFS and re-arm).
fn uring_tiny_driver(options: SocketOptions) -> Option<Box<dyn Driver>> {
    if let Err(why) = uring::probe() {
        eprintln!("skipping io_uring contract test: {why}");
        return None;
    }
    let cfg = uring::UringConfig {
        entries: 4,
        buf_count: 4,
        buf_size: 64,
        socket: options,
    };
    Some(Box::new(
        uring::UringDriver::new(cfg).expect("uring driver"),
    ))
}

const LONG: Duration = Duration::from_secs(10);
/// A kernel send buffer small enough that a 4 MiB write cannot fit (no autotuning).
const SMALL_SEND_BUFFER: SocketOptions = SocketOptions {
    send_buffer_bytes: 64 * 1024,
};

/// An owned copy of an [`Event`], so tests can queue and inspect events after the callback.
#[derive(Debug)]
enum Ev {
    Accepted(usize, Accepted),
    Data(ConnId, Vec<u8>),
    ReadClosed(ConnId, Option<io::ErrorKind>),
    WriteDone(ConnId, Result<usize, io::ErrorKind>, WriteBuf),
    Writable(ConnId),
    Released(ConnId),
    Woken,
}

impl Ev {
    fn conn(&self) -> Option<ConnId> {
        match self {
            Ev::Data(c, _)
            | Ev::ReadClosed(c, _)
            | Ev::WriteDone(c, ..)
            | Ev::Writable(c)
            | Ev::Released(c) => Some(*c),
            Ev::Accepted(..) | Ev::Woken => None,
        }
    }
}

fn own(ev: Event<'_>) -> Ev {
    match ev {
        Event::Accepted { listener, socket } => Ev::Accepted(listener, socket),
        Event::Data { conn, bytes } => Ev::Data(conn, bytes.to_vec()),
        Event::ReadClosed { conn, error } => Ev::ReadClosed(conn, error.map(|e| e.kind())),
        Event::WriteDone { conn, result, buf } => {
            Ev::WriteDone(conn, result.map_err(|e| e.kind()), buf)
        }
        Event::Writable { conn } => Ev::Writable(conn),
        Event::Released { conn } => Ev::Released(conn),
        Event::Woken => Ev::Woken,
    }
}

/// A driver with one listener on 127.0.0.1 and a queue of not-yet-consumed events.
struct Harness {
    d: Box<dyn Driver>,
    addr: SocketAddr,
    queue: VecDeque<Ev>,
    bufs: WriteBufs,
}

impl Harness {
    fn new(make: Factory) -> Option<Harness> {
        Harness::with_options(make, SocketOptions::default())
    }

    fn with_options(make: Factory, options: SocketOptions) -> Option<Harness> {
        let mut d = make(options)?;
        let listener = reuseport_listener("127.0.0.1:0".parse().unwrap(), 4096).unwrap();
        let addr = listener.local_addr().unwrap();
        assert_eq!(d.add_listener(listener).unwrap(), 0);
        Some(Harness {
            d,
            addr,
            queue: VecDeque::new(),
            bufs: WriteBufs::new(),
        })
    }

    fn poll(&mut self, timeout: Duration) {
        let queue = &mut self.queue;
        self.d
            .poll(Some(timeout), &mut |ev| queue.push_back(own(ev)))
            .expect("poll");
    }

    /// Polls until an event matching `pred` is queued and takes it out; other events stay.
    fn try_wait_for(&mut self, timeout: Duration, mut pred: impl FnMut(&Ev) -> bool) -> Option<Ev> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.queue.iter().position(&mut pred) {
                return self.queue.remove(i);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            self.poll((deadline - now).min(Duration::from_millis(50)));
        }
    }

    fn wait_for(&mut self, what: &str, pred: impl FnMut(&Ev) -> bool) -> Ev {
        match self.try_wait_for(LONG, pred) {
            Some(ev) => ev,
            None => panic!(
                "{}: timed out waiting for {what}; queued: {:?}",
                self.d.name(),
                self.queue
            ),
        }
    }

    /// Polls for `dur` and returns (and removes) every queued event.
    fn collect(&mut self, dur: Duration) -> Vec<Ev> {
        let deadline = Instant::now() + dur;
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            self.poll((deadline - now).min(Duration::from_millis(50)));
        }
        self.queue.drain(..).collect()
    }

    fn accept(&mut self) -> Accepted {
        match self.wait_for("Accepted", |e| matches!(e, Ev::Accepted(..))) {
            Ev::Accepted(listener, socket) => {
                assert_eq!(listener, 0);
                socket
            }
            _ => unreachable!(),
        }
    }

    /// Connects a blocking client, accepts it and registers the server side as `conn`.
    fn connect(&mut self, conn: ConnId) -> TcpStream {
        let client = TcpStream::connect(self.addr).unwrap();
        let server = self.accept();
        self.d.register(conn, server).unwrap();
        client
    }

    /// Collects `n` bytes of `Data` for `conn`.
    fn read_data(&mut self, conn: ConnId, n: usize) -> Vec<u8> {
        let mut got = Vec::new();
        while got.len() < n {
            match self.wait_for(
                "Data",
                |e| matches!(e, Ev::Data(c, _) | Ev::ReadClosed(c, _) if *c == conn),
            ) {
                Ev::Data(_, bytes) => got.extend_from_slice(&bytes),
                other => panic!("{}: expected data, got {other:?}", self.d.name()),
            }
        }
        assert_eq!(got.len(), n, "{}: more data than sent", self.d.name());
        got
    }

    /// Closes `conn` and waits for its `Released`.
    fn close(&mut self, conn: ConnId) {
        self.d.close(conn);
        self.wait_for("Released", |e| matches!(e, Ev::Released(c) if *c == conn));
    }

    /// Writes all of `parts` (as one vectored write, resumed after partial writes), handling
    /// `Done`, `WouldBlock` + `Writable` and `Pending` + `WriteDone` alike.
    fn write_all(&mut self, conn: ConnId, parts: &[&[u8]]) {
        let parts = shared(parts);
        let total: usize = parts.iter().map(|p| p.bytes().len()).sum();
        let mut pos = 0;
        while pos < total {
            match self.d.write(conn, remaining(&self.bufs, &parts, pos)) {
                WriteStatus::Done(Ok(n), _) => pos += n,
                WriteStatus::Done(Err(e), _) => panic!("{}: write failed: {e}", self.d.name()),
                WriteStatus::WouldBlock(_) => {
                    self.wait_for("Writable", |e| matches!(e, Ev::Writable(c) if *c == conn));
                }
                WriteStatus::Pending => pos += self.wait_write_done(conn),
            }
        }
        assert_eq!(pos, total);
    }

    fn wait_write_done(&mut self, conn: ConnId) -> usize {
        match self.wait_for(
            "WriteDone",
            |e| matches!(e, Ev::WriteDone(c, ..) if *c == conn),
        ) {
            Ev::WriteDone(_, Ok(n), _) => n,
            other => panic!("{}: write failed: {other:?}", self.d.name()),
        }
    }
}

/// Parts to write, each shared with the write buffers built from it.
fn shared(parts: &[&[u8]]) -> Vec<Rc<dyn Payload>> {
    parts
        .iter()
        .map(|p| Rc::new(p.to_vec()) as Rc<dyn Payload>)
        .collect()
}

/// A write buffer with the unwritten rest of `parts` after `pos` bytes.
fn remaining(bufs: &WriteBufs, parts: &[Rc<dyn Payload>], mut pos: usize) -> WriteBuf {
    let mut buf = bufs.take();
    for part in parts {
        let len = part.bytes().len();
        if pos >= len {
            pos -= len;
            continue;
        }
        buf.push(Rc::clone(part), pos);
        pos = 0;
    }
    buf
}

fn is_nonblocking(fd: RawFd) -> bool {
    // SAFETY: F_GETFL only reads the flags of an open descriptor.
    let flags = syscall(unsafe { libc::fcntl(fd, libc::F_GETFL) });
    flags.is_ok_and(|flags| flags & libc::O_NONBLOCK != 0)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

// ---------------------------------------------------------------------------------------------

/// Accept, register, client → driver `Data`, driver → client with a 3-iovec write.
fn round_trip(make: Factory) {
    let Some(mut h) = Harness::new(make) else {
        return;
    };
    let conn = ConnId::new(1, 7);
    let mut client = TcpStream::connect(h.addr).unwrap();
    let server = h.accept();
    assert!(
        server.stream.nodelay().unwrap(),
        "accepted stream must have TCP_NODELAY"
    );
    assert!(
        is_nonblocking(server.stream.as_raw_fd()),
        "accepted stream must be nonblocking"
    );
    h.d.register(conn, server).unwrap();
    assert_eq!(
        h.d.peer_addr(conn),
        Some(client.local_addr().unwrap()),
        "{}: peer address",
        h.d.name()
    );

    client.write_all(b"hello driver").unwrap();
    assert_eq!(h.read_data(conn, 12), b"hello driver");

    h.write_all(conn, &[b"abc", b"defg", b"hi"]);
    let mut buf = [0u8; 9];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"abcdefghi");

    // A few more exchanges on the same connection.
    for i in 0..5u8 {
        client.write_all(&[i; 100]).unwrap();
        assert_eq!(h.read_data(conn, 100), vec![i; 100]);
        h.write_all(conn, &[&[i; 10], &[i + 1; 20], &[i + 2; 30]]);
        let mut buf = [0u8; 60];
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf[..10], &[i; 10]);
        assert_eq!(&buf[10..30], &[i + 1; 20]);
        assert_eq!(&buf[30..], &[i + 2; 30]);
    }
    assert!(h.d.stats().submissions > 0 && h.d.stats().completions > 0);
    h.close(conn);
    assert_eq!(
        h.d.peer_addr(conn),
        None,
        "{}: peer after release",
        h.d.name()
    );
    // The driver closed the socket on release: the client reads the end of the stream.
    client.set_read_timeout(Some(LONG)).unwrap();
    let mut rest = Vec::new();
    match client.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty()),
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
    }
}

/// A 4 MiB write against a client that does not read: the write cannot finish, progress stops
/// (WouldBlock without Writable, or a Pending write without WriteDone); once the client reads,
/// the writes resume from every partial write and all bytes arrive in order.
fn large_write_resumes(make: Factory) {
    let Some(mut h) = Harness::with_options(make, SMALL_SEND_BUFFER) else {
        return;
    };
    let conn = ConnId::new(2, 1);
    let client = h.connect(conn);
    // Small fixed buffers (no autotuning) so 4 MiB cannot fit into the kernel.
    socket2::SockRef::from(&client)
        .set_recv_buffer_size(64 * 1024)
        .unwrap();

    const TOTAL: usize = 4 << 20;
    let data = pattern(TOTAL);
    let parts: Vec<&[u8]> = data.chunks(1 << 20).collect();
    let parts = shared(&parts);

    let (go_tx, go_rx) = mpsc::channel::<()>();
    let reader = thread::spawn(move || {
        let mut client = client;
        go_rx.recv().unwrap();
        let mut got = vec![0u8; TOTAL];
        client.read_exact(&mut got).unwrap();
        got
    });
    let mut go = Some(go_tx);

    // Waits for the outstanding `Writable` / `WriteDone`; while the client has not been told to
    // read, a quiet 300 ms means progress has stalled, and the client is released.
    let mut pos = 0;
    let mut stalled = false;
    let mut first = true;
    while pos < TOTAL {
        let status = h.d.write(conn, remaining(&h.bufs, &parts, pos));
        if first {
            assert!(
                !matches!(status, WriteStatus::Done(Ok(TOTAL), _)),
                "4 MiB cannot fit"
            );
            first = false;
        }
        let pending = match status {
            WriteStatus::Done(Ok(n), _) => {
                assert!(n > 0 && pos + n <= TOTAL);
                pos += n;
                continue;
            }
            WriteStatus::Done(Err(e), _) => panic!("{}: write failed: {e}", h.d.name()),
            WriteStatus::WouldBlock(_) => false,
            WriteStatus::Pending => true,
        };
        loop {
            let timeout = if go.is_some() {
                Duration::from_millis(300)
            } else {
                LONG
            };
            match h.try_wait_for(timeout, |e| e.conn() == Some(conn)) {
                Some(Ev::Writable(_)) if !pending => break,
                Some(Ev::WriteDone(_, Ok(n), _)) if pending => {
                    assert!(n > 0 && pos + n <= TOTAL);
                    pos += n;
                    break;
                }
                Some(other) => panic!(
                    "{}: unexpected {other:?} (write pending: {pending})",
                    h.d.name()
                ),
                None => {
                    let Some(go) = go.take() else {
                        panic!("{}: no progress (write pending: {pending})", h.d.name());
                    };
                    stalled = true;
                    go.send(()).unwrap();
                }
            }
        }
    }
    assert!(stalled, "{}: the write never had to wait", h.d.name());
    let got = reader.join().unwrap();
    assert!(got == data, "{}: bytes arrived out of order", h.d.name());
    h.close(conn);
}

/// The client closing its side gives `ReadClosed { error: None }` after the data.
fn read_closed_on_client_close(make: Factory) {
    let Some(mut h) = Harness::new(make) else {
        return;
    };
    let conn = ConnId::new(3, 1);
    let mut client = h.connect(conn);
    client.write_all(b"bye").unwrap();
    drop(client);
    assert_eq!(h.read_data(conn, 3), b"bye");
    match h.wait_for("ReadClosed", |e| e.conn() == Some(conn)) {
        Ev::ReadClosed(_, None) => {}
        other => panic!("{}: expected ReadClosed(None), got {other:?}", h.d.name()),
    }
    let later: Vec<_> = h
        .collect(Duration::from_millis(200))
        .into_iter()
        .filter(|e| e.conn() == Some(conn))
        .collect();
    assert!(
        later.is_empty(),
        "{}: events after ReadClosed: {later:?}",
        h.d.name()
    );
    h.close(conn);
}

/// `close` gives exactly one `Released` and no other event for the connection afterwards, even
/// with unread data, more data arriving and the peer closing.
fn close_releases_once(make: Factory) {
    let Some(mut h) = Harness::new(make) else {
        return;
    };
    let conn = ConnId::new(4, 1);
    let mut client = h.connect(conn);
    client.write_all(b"unread").unwrap();
    thread::sleep(Duration::from_millis(50));
    h.d.close(conn);
    // Writing may fail once the driver has closed the socket (a reset): that is fine.
    let _ = client.write_all(b"more");
    drop(client);
    let events: Vec<_> = h
        .collect(Duration::from_millis(500))
        .into_iter()
        .filter(|e| e.conn() == Some(conn))
        .collect();
    assert!(
        matches!(events.as_slice(), [Ev::Released(c)] if *c == conn),
        "{}: expected exactly one Released, got {events:?}",
        h.d.name()
    );
}

/// Writes to a client that does not read until a write cannot complete: `WouldBlock` (its
/// buffer returned) or a `Pending` write still in flight after 300 ms. Returns whether a write is
/// in flight, and the payload every write was built from.
fn write_until_stuck(h: &mut Harness, conn: ConnId) -> (bool, Rc<dyn Payload>) {
    let data: Rc<dyn Payload> = Rc::new(pattern(4 << 20));
    let mut pos = 0;
    loop {
        let mut buf = h.bufs.take();
        buf.push(Rc::clone(&data), pos);
        match h.d.write(conn, buf) {
            WriteStatus::Done(Ok(n), buf) => {
                drop(buf);
                pos += n;
            }
            WriteStatus::Done(Err(e), _) => panic!("{}: write failed: {e}", h.d.name()),
            WriteStatus::WouldBlock(buf) => {
                drop(buf);
                assert_eq!(Rc::strong_count(&data), 1, "{}", h.d.name());
                return (false, data);
            }
            WriteStatus::Pending => {
                // The driver holds the buffer, and through it the bytes, until completion.
                assert_eq!(Rc::strong_count(&data), 2, "{}", h.d.name());
                match h.try_wait_for(Duration::from_millis(300), |e| e.conn() == Some(conn)) {
                    Some(Ev::WriteDone(_, Ok(n), buf)) => {
                        drop(buf);
                        pos += n;
                    }
                    Some(other) => panic!("{}: unexpected {other:?}", h.d.name()),
                    None => return (true, data), // stuck in flight
                }
            }
        }
        assert!(pos < data.bytes().len());
    }
}

/// A write's buffer comes back exactly once: at once with `Done`/`WouldBlock`, or with its
/// `WriteDone`, and not before — until then the driver holds the bytes. A second write while
/// one is in flight is refused with its buffer returned.
fn write_buffers_come_back_only_on_completion(make: Factory) {
    let Some(mut h) = Harness::with_options(make, SMALL_SEND_BUFFER) else {
        return;
    };
    let conn = ConnId::new(8, 1);
    let client = h.connect(conn);
    socket2::SockRef::from(&client)
        .set_recv_buffer_size(64 * 1024)
        .unwrap();
    let (in_flight, data) = write_until_stuck(&mut h, conn);
    if in_flight {
        // Nothing completes while the client does not read: the driver still holds the buffer.
        assert!(h.collect(Duration::from_millis(200)).is_empty());
        assert_eq!(Rc::strong_count(&data), 2, "{}", h.d.name());
        let mut second = h.bufs.take();
        second.push(Rc::clone(&data), 0);
        match h.d.write(conn, second) {
            WriteStatus::Done(Err(_), buf) => drop(buf),
            other => panic!("{}: second write in flight: {other:?}", h.d.name()),
        }
        assert_eq!(Rc::strong_count(&data), 2, "{}", h.d.name());
        // The client reads: the write completes and the buffer comes back with it.
        let reader = thread::spawn(move || {
            let mut client = client;
            let mut sink = Vec::new();
            let _ = client.read_to_end(&mut sink);
        });
        match h.wait_for("WriteDone", |e| e.conn() == Some(conn)) {
            Ev::WriteDone(_, Ok(n), buf) => {
                assert!(n > 0);
                assert_eq!(Rc::strong_count(&data), 2, "{}", h.d.name());
                drop(buf);
                assert_eq!(Rc::strong_count(&data), 1, "{}", h.d.name());
            }
            other => panic!("{}: expected WriteDone, got {other:?}", h.d.name()),
        }
        h.close(conn);
        reader.join().unwrap();
    } else {
        // A readiness driver never holds a buffer past `write`.
        assert_eq!(Rc::strong_count(&data), 1, "{}", h.d.name());
        h.close(conn);
    }
}

/// `close` while a write is stuck (peer not reading): `Released` once, no `WriteDone` or
/// `Writable` for it, and by then the driver has let go of the write's buffer.
fn close_with_write_in_flight(make: Factory) {
    let Some(mut h) = Harness::with_options(make, SMALL_SEND_BUFFER) else {
        return;
    };
    let conn = ConnId::new(5, 3);
    let client = h.connect(conn);
    socket2::SockRef::from(&client)
        .set_recv_buffer_size(64 * 1024)
        .unwrap();
    let (_, data) = write_until_stuck(&mut h, conn);
    h.d.close(conn);
    let events: Vec<_> = h
        .collect(Duration::from_millis(500))
        .into_iter()
        .filter(|e| e.conn() == Some(conn))
        .collect();
    assert!(
        matches!(events.as_slice(), [Ev::Released(c)] if *c == conn),
        "{}: expected exactly one Released, got {events:?}",
        h.d.name()
    );
    assert_eq!(
        Rc::strong_count(&data),
        1,
        "{}: the write's buffer outlived Released",
        h.d.name()
    );
    assert_eq!(h.bufs.slots().1, 0, "{}: a buffer still taken", h.d.name());
    drop(client);
}

/// Dropping the driver with a write in flight (and a connection registered) is safe: it cancels
/// the write and lets go of its buffer, and closes the sockets it owns.
fn drop_with_write_in_flight(make: Factory) {
    let Some(mut h) = Harness::with_options(make, SMALL_SEND_BUFFER) else {
        return;
    };
    let conn = ConnId::new(9, 1);
    let mut client = h.connect(conn);
    socket2::SockRef::from(&client)
        .set_recv_buffer_size(64 * 1024)
        .unwrap();
    let (_, data) = write_until_stuck(&mut h, conn);
    let name = h.d.name();
    drop(h);
    assert_eq!(
        Rc::strong_count(&data),
        1,
        "{name}: the write's buffer outlived the driver"
    );
    // The socket is closed: after what was sent, the client reads the end (or a reset).
    client.set_read_timeout(Some(LONG)).unwrap();
    let mut sink = Vec::new();
    match client.read_to_end(&mut sink) {
        Ok(_) => {}
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{name}"),
    }
}

/// `refuse` sends the notice, then the end of the stream; the socket is never registered.
fn refuse_sends_the_notice_and_closes(make: Factory) {
    let Some(mut h) = Harness::new(make) else {
        return;
    };
    let mut client = TcpStream::connect(h.addr).unwrap();
    let socket = h.accept();
    h.d.refuse(socket, b"full, sorry");
    client.set_read_timeout(Some(LONG)).unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"full, sorry", "{}", h.d.name());
    assert!(h.collect(Duration::from_millis(100)).is_empty());
}

/// `Waker::wake` from another thread ends a blocked `poll` with `Woken`.
fn waker_wakes_blocked_poll(make: Factory) {
    let Some(mut h) = Harness::new(make) else {
        return;
    };
    let waker = h.d.waker();
    let t0 = Instant::now();
    let t = thread::spawn(move || {
        thread::sleep(Duration::from_millis(200));
        waker.wake();
    });
    let mut woken = false;
    while !woken && t0.elapsed() < LONG {
        let mut seen = Vec::new();
        h.d.poll(None, &mut |ev| seen.push(own(ev))).unwrap();
        woken = seen.iter().any(|e| matches!(e, Ev::Woken));
    }
    let elapsed = t0.elapsed();
    t.join().unwrap();
    assert!(woken);
    assert!(
        elapsed >= Duration::from_millis(150),
        "{}: poll(None) returned early ({elapsed:?})",
        h.d.name()
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "{}: woke too late",
        h.d.name()
    );

    // A wake before the poll is not lost, and several wakes need not give several events.
    let waker = h.d.waker();
    waker.wake();
    waker.wake();
    h.wait_for("Woken", |e| matches!(e, Ev::Woken));
    // The waker is quiet again afterwards.
    let rest = h.collect(Duration::from_millis(100));
    assert!(rest.iter().all(|e| matches!(e, Ev::Woken)), "{rest:?}");
    let rest = h.collect(Duration::from_millis(100));
    assert!(
        rest.is_empty(),
        "{}: waker keeps firing: {rest:?}",
        h.d.name()
    );
}

/// An idle `poll` honours its timeout: it neither returns at once nor oversleeps, and reports
/// nothing; a zero timeout does not block.
fn poll_timeout_when_idle(make: Factory) {
    let Some(mut h) = Harness::new(make) else {
        return;
    };
    // Settle anything from setup (none expected).
    h.poll(Duration::ZERO);
    for _ in 0..3 {
        let t0 = Instant::now();
        h.poll(Duration::from_millis(100));
        let elapsed = t0.elapsed();
        assert!(
            elapsed >= Duration::from_millis(90) && elapsed < Duration::from_secs(2),
            "{}: poll(100ms) took {elapsed:?}",
            h.d.name()
        );
    }
    let t0 = Instant::now();
    h.poll(Duration::ZERO);
    assert!(t0.elapsed() < Duration::from_millis(50), "{}", h.d.name());
    assert!(h.queue.is_empty(), "{}: {:?}", h.d.name(), h.queue);
}

/// After a connection is closed and released, its key reused with a new generation gets only
/// its own events; the old id gets none and cannot be written to.
fn stale_generation_gets_no_events(make: Factory) {
    let Some(mut h) = Harness::new(make) else {
        return;
    };
    let old = ConnId::new(6, 1);
    let new = ConnId::new(6, 2);
    let mut old_client = h.connect(old);
    h.close(old);
    // The old peer keeps talking to a socket the driver has closed.
    let mut new_client = h.connect(new);
    let _ = old_client.write_all(b"stale");
    new_client.write_all(b"fresh").unwrap();
    assert_eq!(h.read_data(new, 5), b"fresh");
    let mut stale = h.bufs.take();
    stale.push(Rc::new(b"x".to_vec()), 0);
    match h.d.write(old, stale) {
        WriteStatus::Done(Err(_), buf) => assert_eq!(buf.len(), 1),
        other => panic!("{}: write on a stale id: {other:?}", h.d.name()),
    }
    drop(old_client);
    let events = h.collect(Duration::from_millis(300));
    assert!(
        events.iter().all(|e| e.conn() != Some(old)),
        "{}: events for the stale id: {events:?}",
        h.d.name()
    );
    assert!(
        events.iter().all(|e| e.conn().is_none()),
        "{}: unexpected events: {events:?}",
        h.d.name()
    );
    h.write_all(new, &[b"ok"]);
    let mut buf = [0u8; 2];
    new_client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ok");
    h.close(new);
}

/// 2000 idle connections registered (no buffer each, no events), a few of them used, and all
/// closed again with one `Released` each.
fn many_idle_connections(make: Factory) {
    let Some(mut h) = Harness::new(make) else {
        return;
    };
    const N: usize = 2000;
    let mut clients = Vec::with_capacity(N);
    let mut registered = 0;
    while clients.len() < N {
        for _ in 0..100 {
            clients.push(TcpStream::connect(h.addr).unwrap());
        }
        while registered < clients.len() {
            let socket = h.accept();
            h.d.register(ConnId::new(registered, 9), socket).unwrap();
            registered += 1;
        }
    }
    let idle = h.collect(Duration::from_millis(200));
    assert!(
        idle.is_empty(),
        "{}: idle connections produced {idle:?}",
        h.d.name()
    );

    // Data still goes to the right connection.
    for key in (0..N).step_by(97) {
        clients[key].write_all(&(key as u32).to_le_bytes()).unwrap();
    }
    for key in (0..N).step_by(97) {
        let conn = ConnId::new(key, 9);
        assert_eq!(h.read_data(conn, 4), (key as u32).to_le_bytes());
    }

    for key in 0..N {
        h.d.close(ConnId::new(key, 9));
    }
    let mut released = vec![0u32; N];
    let deadline = Instant::now() + LONG;
    while released.contains(&0) && Instant::now() < deadline {
        h.poll(Duration::from_millis(50));
        for ev in h.queue.drain(..) {
            match ev {
                Ev::Released(c) => {
                    assert_eq!(c.generation(), 9);
                    released[c.key()] += 1;
                }
                other => panic!("{}: unexpected {other:?}", h.d.name()),
            }
        }
    }
    let late = h.collect(Duration::from_millis(200));
    assert!(
        late.is_empty(),
        "{}: events after release: {late:?}",
        h.d.name()
    );
    assert!(
        released.iter().all(|&n| n == 1),
        "{}: not every connection released exactly once",
        h.d.name()
    );
}

/// Several clients sending as fast as they can at once: every byte arrives, in order, on the
/// right connection, followed by `ReadClosed`. (Exercises the epoll read budget / backlog and,
/// with small rings, the io_uring buffer ring running dry.)
fn firehose(make: Factory) -> Option<super::DriverStats> {
    let mut h = Harness::new(make)?;
    const CLIENTS: usize = 8;
    const BYTES: usize = 512 << 10;
    let mut senders = Vec::new();
    for key in 0..CLIENTS {
        let mut client = h.connect(ConnId::new(key, 1));
        senders.push(thread::spawn(move || {
            let data: Vec<u8> = pattern(BYTES + key)[key..].to_vec();
            client.write_all(&data).unwrap();
            client.shutdown(std::net::Shutdown::Write).unwrap();
            // Keep the socket open until the server is done reading.
            let mut rest = Vec::new();
            let _ = client.read_to_end(&mut rest);
        }));
    }
    let mut got = vec![Vec::new(); CLIENTS];
    let mut closed = 0;
    let deadline = Instant::now() + LONG;
    while closed < CLIENTS {
        assert!(
            Instant::now() < deadline,
            "{}: firehose timed out",
            h.d.name()
        );
        h.poll(Duration::from_millis(50));
        for ev in h.queue.drain(..) {
            match ev {
                Ev::Data(c, bytes) => got[c.key()].extend_from_slice(&bytes),
                Ev::ReadClosed(c, None) => {
                    assert_eq!(got[c.key()].len(), BYTES, "{}: short stream", h.d.name());
                    closed += 1;
                }
                other => panic!("{}: unexpected {other:?}", h.d.name()),
            }
        }
    }
    for (key, bytes) in got.iter().enumerate() {
        assert!(
            bytes[..] == pattern(BYTES + key)[key..],
            "{}: connection {key} got wrong bytes",
            h.d.name()
        );
    }
    for key in 0..CLIENTS {
        h.close(ConnId::new(key, 1));
    }
    for s in senders {
        s.join().unwrap();
    }
    Some(h.d.stats())
}

/// With four 64-byte provided buffers, multishot recv must run the ring dry and recover.
#[test]
fn uring_tiny_buffer_ring_runs_dry() {
    if let Some(stats) = firehose(uring_tiny_driver) {
        assert!(stats.recv_no_buffers > 0, "{stats:?}");
    }
}

macro_rules! contract_tests {
    ($($name:ident),* $(,)?) => {
        mod epoll_driver {
            $( #[test] fn $name() { super::$name(super::epoll_driver); } )*
        }
        mod uring_driver {
            $( #[test] fn $name() { super::$name(super::uring_driver); } )*
        }
        mod uring_tiny_driver {
            $( #[test] fn $name() { super::$name(super::uring_tiny_driver); } )*
        }
    };
}

contract_tests!(
    round_trip,
    large_write_resumes,
    read_closed_on_client_close,
    close_releases_once,
    close_with_write_in_flight,
    write_buffers_come_back_only_on_completion,
    drop_with_write_in_flight,
    refuse_sends_the_notice_and_closes,
    waker_wakes_blocked_poll,
    stale_generation_gets_no_events,
    many_idle_connections,
    firehose,
    poll_timeout_when_idle,
);
