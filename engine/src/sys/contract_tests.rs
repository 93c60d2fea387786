//! The driver contract (see the module documentation of [`super`]) as tests. Every test is a
//! generic function over a driver factory, instantiated for both drivers by
//! `contract_tests!`, so the epoll and io_uring drivers cannot drift apart.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::socket::reuseport_listener;
use super::{epoll, uring, ConnId, Driver, Event, WriteStatus};

type Factory = fn() -> Option<Box<dyn Driver>>;

fn epoll_driver() -> Option<Box<dyn Driver>> {
    Some(Box::new(epoll::EpollDriver::new().expect("epoll driver")))
}

fn uring_driver() -> Option<Box<dyn Driver>> {
    if let Err(why) = uring::probe() {
        eprintln!("skipping io_uring contract test: {why}");
        return None;
    }
    Some(Box::new(
        uring::UringDriver::new(uring::UringConfig::default()).expect("uring driver"),
    ))
}

/// io_uring with a tiny SQ (full all the time: submit-to-make-room and the SQE backlog), a tiny
/// CQ (overflow) and four 64-byte read buffers (the ring runs dry: ENOBUFS and re-arm).
fn uring_tiny_driver() -> Option<Box<dyn Driver>> {
    if let Err(why) = uring::probe() {
        eprintln!("skipping io_uring contract test: {why}");
        return None;
    }
    let cfg = uring::UringConfig {
        entries: 4,
        buf_count: 4,
        buf_size: 64,
    };
    Some(Box::new(
        uring::UringDriver::new(cfg).expect("uring driver"),
    ))
}

const LONG: Duration = Duration::from_secs(10);

/// An owned copy of an [`Event`], so tests can queue and inspect events after the callback.
#[derive(Debug)]
enum Ev {
    Accepted(usize, TcpStream),
    Data(ConnId, Vec<u8>),
    ReadClosed(ConnId, Option<io::ErrorKind>),
    WriteDone(ConnId, Result<usize, io::ErrorKind>),
    Writable(ConnId),
    Released(ConnId),
    Woken,
}

impl Ev {
    fn conn(&self) -> Option<ConnId> {
        match self {
            Ev::Data(c, _)
            | Ev::ReadClosed(c, _)
            | Ev::WriteDone(c, _)
            | Ev::Writable(c)
            | Ev::Released(c) => Some(*c),
            Ev::Accepted(..) | Ev::Woken => None,
        }
    }
}

fn own(ev: Event<'_>) -> Ev {
    match ev {
        Event::Accepted { listener, stream } => Ev::Accepted(listener, stream),
        Event::Data { conn, bytes } => Ev::Data(conn, bytes.to_vec()),
        Event::ReadClosed { conn, error } => Ev::ReadClosed(conn, error.map(|e| e.kind())),
        Event::WriteDone { conn, result } => Ev::WriteDone(conn, result.map_err(|e| e.kind())),
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
}

impl Harness {
    fn new(make: Factory) -> Option<Harness> {
        let mut d = make()?;
        let listener = reuseport_listener("127.0.0.1:0".parse().unwrap(), 4096).unwrap();
        let addr = listener.local_addr().unwrap();
        assert_eq!(d.add_listener(listener).unwrap(), 0);
        Some(Harness {
            d,
            addr,
            queue: VecDeque::new(),
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

    fn accept(&mut self) -> TcpStream {
        match self.wait_for("Accepted", |e| matches!(e, Ev::Accepted(..))) {
            Ev::Accepted(listener, stream) => {
                assert_eq!(listener, 0);
                stream
            }
            _ => unreachable!(),
        }
    }

    /// Connects a blocking client, accepts it and registers the server side as `conn`.
    fn connect(&mut self, conn: ConnId) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(self.addr).unwrap();
        let server = self.accept();
        self.d.register(conn, server.as_raw_fd()).unwrap();
        (client, server)
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
    fn close(&mut self, conn: ConnId, fd: RawFd) {
        self.d.close(conn, fd);
        self.wait_for("Released", |e| matches!(e, Ev::Released(c) if *c == conn));
    }

    /// Writes all of `parts` (as one vectored write, resumed after partial writes), handling
    /// `Done`, `WouldBlock` + `Writable` and `Pending` + `WriteDone` alike.
    fn write_all(&mut self, conn: ConnId, fd: RawFd, parts: &[&[u8]]) {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut pos = 0;
        while pos < total {
            let bufs = remaining(parts, pos);
            match self.d.write(conn, fd, &bufs).expect("write") {
                WriteStatus::Done(n) => pos += n,
                WriteStatus::WouldBlock => {
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
            |e| matches!(e, Ev::WriteDone(c, _) if *c == conn),
        ) {
            Ev::WriteDone(_, Ok(n)) => n,
            other => panic!("{}: write failed: {other:?}", self.d.name()),
        }
    }
}

/// The unwritten rest of `parts` after `pos` bytes, as iovecs.
fn remaining<'a>(parts: &[&'a [u8]], mut pos: usize) -> Vec<IoSlice<'a>> {
    let mut out = Vec::new();
    for part in parts {
        if pos >= part.len() {
            pos -= part.len();
            continue;
        }
        out.push(IoSlice::new(&part[pos..]));
        pos = 0;
    }
    out
}

fn is_nonblocking(fd: RawFd) -> bool {
    // SAFETY: F_GETFL only reads the flags of an open descriptor.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    flags >= 0 && flags & libc::O_NONBLOCK != 0
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
    let (mut client, server) = h.connect(conn);
    assert!(
        server.nodelay().unwrap(),
        "accepted stream must have TCP_NODELAY"
    );
    assert!(
        is_nonblocking(server.as_raw_fd()),
        "accepted stream must be nonblocking"
    );

    client.write_all(b"hello driver").unwrap();
    assert_eq!(h.read_data(conn, 12), b"hello driver");

    h.write_all(conn, server.as_raw_fd(), &[b"abc", b"defg", b"hi"]);
    let mut buf = [0u8; 9];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"abcdefghi");

    // A few more exchanges on the same connection.
    for i in 0..5u8 {
        client.write_all(&[i; 100]).unwrap();
        assert_eq!(h.read_data(conn, 100), vec![i; 100]);
        h.write_all(
            conn,
            server.as_raw_fd(),
            &[&[i; 10], &[i + 1; 20], &[i + 2; 30]],
        );
        let mut buf = [0u8; 60];
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf[..10], &[i; 10]);
        assert_eq!(&buf[10..30], &[i + 1; 20]);
        assert_eq!(&buf[30..], &[i + 2; 30]);
    }
    assert!(h.d.stats().submissions > 0 && h.d.stats().completions > 0);
    h.close(conn, server.as_raw_fd());
}

/// A 4 MiB write against a client that does not read: the write cannot finish, progress stops
/// (WouldBlock without Writable, or a Pending write without WriteDone); once the client reads,
/// the writes resume from every partial write and all bytes arrive in order.
fn large_write_resumes(make: Factory) {
    let Some(mut h) = Harness::new(make) else {
        return;
    };
    let conn = ConnId::new(2, 1);
    let (client, server) = h.connect(conn);
    // Small fixed buffers (no autotuning) so 4 MiB cannot fit into the kernel.
    socket2::SockRef::from(&server)
        .set_send_buffer_size(64 * 1024)
        .unwrap();
    socket2::SockRef::from(&client)
        .set_recv_buffer_size(64 * 1024)
        .unwrap();

    const TOTAL: usize = 4 << 20;
    let data = pattern(TOTAL);
    let parts: Vec<&[u8]> = data.chunks(1 << 20).collect();
    let fd = server.as_raw_fd();

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
        let status = h.d.write(conn, fd, &remaining(&parts, pos)).expect("write");
        if first {
            assert_ne!(status, WriteStatus::Done(TOTAL), "4 MiB cannot fit");
            first = false;
        }
        if let WriteStatus::Done(n) = status {
            assert!(n > 0 && pos + n <= TOTAL);
            pos += n;
            continue;
        }
        loop {
            let timeout = if go.is_some() {
                Duration::from_millis(300)
            } else {
                LONG
            };
            match h.try_wait_for(timeout, |e| e.conn() == Some(conn)) {
                Some(Ev::Writable(_)) if status == WriteStatus::WouldBlock => break,
                Some(Ev::WriteDone(_, Ok(n))) if status == WriteStatus::Pending => {
                    assert!(n > 0 && pos + n <= TOTAL);
                    pos += n;
                    break;
                }
                Some(other) => panic!("{}: unexpected {other:?} after {status:?}", h.d.name()),
                None => {
                    let Some(go) = go.take() else {
                        panic!("{}: no progress after {status:?}", h.d.name());
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
    h.close(conn, fd);
}

/// The client closing its side gives `ReadClosed { error: None }` after the data.
fn read_closed_on_client_close(make: Factory) {
    let Some(mut h) = Harness::new(make) else {
        return;
    };
    let conn = ConnId::new(3, 1);
    let (mut client, server) = h.connect(conn);
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
    h.close(conn, server.as_raw_fd());
}

/// `close` gives exactly one `Released` and no other event for the connection afterwards, even
/// with unread data, more data arriving and the peer closing.
fn close_releases_once(make: Factory) {
    let Some(mut h) = Harness::new(make) else {
        return;
    };
    let conn = ConnId::new(4, 1);
    let (mut client, server) = h.connect(conn);
    client.write_all(b"unread").unwrap();
    thread::sleep(Duration::from_millis(50));
    h.d.close(conn, server.as_raw_fd());
    client.write_all(b"more").unwrap();
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
    drop(server);
}

/// `close` while a write is stuck (peer not reading): `Released` once, no `WriteDone` or
/// `Writable` for it.
fn close_with_write_in_flight(make: Factory) {
    let Some(mut h) = Harness::new(make) else {
        return;
    };
    let conn = ConnId::new(5, 3);
    let (client, server) = h.connect(conn);
    socket2::SockRef::from(&server)
        .set_send_buffer_size(64 * 1024)
        .unwrap();
    socket2::SockRef::from(&client)
        .set_recv_buffer_size(64 * 1024)
        .unwrap();
    let data = pattern(4 << 20);
    let fd = server.as_raw_fd();
    let mut pos = 0;
    // Write until a write cannot complete.
    loop {
        match h.d.write(conn, fd, &[IoSlice::new(&data[pos..])]).unwrap() {
            WriteStatus::Done(n) => pos += n,
            WriteStatus::WouldBlock => break,
            WriteStatus::Pending => {
                match h.try_wait_for(Duration::from_millis(300), |e| e.conn() == Some(conn)) {
                    Some(Ev::WriteDone(_, Ok(n))) => pos += n,
                    Some(other) => panic!("{}: unexpected {other:?}", h.d.name()),
                    None => break, // stuck in flight
                }
            }
        }
        assert!(pos < data.len());
    }
    h.d.close(conn, fd);
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
    // Only now may the fd be closed and the buffers freed.
    drop(server);
    drop(data);
    drop(client);
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
    let (mut old_client, old_server) = h.connect(old);
    h.close(old, old_server.as_raw_fd());
    // The worker keeps the old socket open a while (slow teardown); its peer keeps talking.
    let (mut new_client, new_server) = h.connect(new);
    old_client.write_all(b"stale").unwrap();
    new_client.write_all(b"fresh").unwrap();
    assert_eq!(h.read_data(new, 5), b"fresh");
    let err =
        h.d.write(old, old_server.as_raw_fd(), &[IoSlice::new(b"x")]);
    assert!(
        err.is_err(),
        "{}: write on a stale id succeeded",
        h.d.name()
    );
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
    h.write_all(new, new_server.as_raw_fd(), &[b"ok"]);
    let mut buf = [0u8; 2];
    new_client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ok");
    h.close(new, new_server.as_raw_fd());
    drop(old_server);
}

/// 2000 idle connections registered (no buffer each, no events), a few of them used, and all
/// closed again with one `Released` each.
fn many_idle_connections(make: Factory) {
    let Some(mut h) = Harness::new(make) else {
        return;
    };
    const N: usize = 2000;
    let mut clients = Vec::with_capacity(N);
    let mut servers = Vec::with_capacity(N);
    while clients.len() < N {
        for _ in 0..100 {
            clients.push(TcpStream::connect(h.addr).unwrap());
        }
        while servers.len() < clients.len() {
            let stream = h.accept();
            let key = servers.len();
            h.d.register(ConnId::new(key, 9), stream.as_raw_fd())
                .unwrap();
            servers.push(stream);
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

    for (key, server) in servers.iter().enumerate() {
        h.d.close(ConnId::new(key, 9), server.as_raw_fd());
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
    let mut servers = Vec::new();
    let mut senders = Vec::new();
    for key in 0..CLIENTS {
        let (mut client, server) = h.connect(ConnId::new(key, 1));
        servers.push(server);
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
    for (key, server) in servers.iter().enumerate() {
        h.close(ConnId::new(key, 1), server.as_raw_fd());
    }
    drop(servers);
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
    waker_wakes_blocked_poll,
    stale_generation_gets_no_events,
    many_idle_connections,
    firehose,
    poll_timeout_when_idle,
);
