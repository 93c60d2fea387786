//! A client process (`roomcast-bench client`, started by the coordinator): a few threads, each
//! running a mio event loop over its share of nonblocking connections.
//!
//! Per connection: bind a 127.0.0.x source address, connect, (WebSocket handshake), `auth` with
//! a locally minted token and `join` its room (both pipelined), then read forever, pinging every
//! `--ping-secs`. Idle, a connection costs its socket plus one small `Conn` (no buffers: reads
//! land in one scratch buffer per thread and only a partial frame is ever kept per connection).
//!
//! Every frame is parsed by the engine's codecs. The latency timestamp is read out of each
//! message's `data` (the publisher's JSON, `{"ts":<unix µs>,...}`): payload, not protocol.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, BufRead, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use roomcast_engine::auth::{mint, Claims};
use roomcast_engine::proto::client::{
    decode_server_binary, decode_server_json, encode_op, tcp_frame_len, ClientOp, ServerMsg,
};
use roomcast_engine::proto::handshake::{client_key, client_request, parse_client_response};
use roomcast_engine::proto::message::Target;
use roomcast_engine::proto::ws::{parse_server_frame, put_client_frame, OpCode};
use socket2::{Domain, Protocol, Socket, Type};

use crate::msgs::{histogram_pairs, new_latency_histogram, ClientMsg, Connected, Report, Snap};
use crate::{sys, ClientArgs, Transport};

const WAKE: Token = Token(usize::MAX);
/// A connection still setting up after this long is abandoned (and retried).
const SETUP_TIMEOUT: Duration = Duration::from_secs(15);
/// A single server frame larger than this is treated as a protocol error.
const MAX_FRAME: usize = 16 << 20;
const TICK: Duration = Duration::from_millis(100);

/// Room `r`'s id (the coordinator publishes to the same names).
pub fn room_name(r: usize) -> String {
    format!("room-{r}")
}

/// `base` + `n` as an IPv4 address (127.0.0.254 + 1 = 127.0.1.0 — all of 127/8 is loopback).
pub fn ip_add(base: Ipv4Addr, n: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base).wrapping_add(n as u32))
}

/// Reads `"ts":<digits>` out of a message's data (the publisher puts it first).
fn scan_ts(data: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"ts\":";
    let start = if data.starts_with(b"{\"ts\":") {
        6
    } else {
        data.windows(KEY.len()).position(|w| w == KEY)? + KEY.len()
    };
    let mut v: u64 = 0;
    let mut any = false;
    for &b in &data[start..] {
        if b.is_ascii_digit() {
            v = v.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
            any = true;
        } else {
            break;
        }
    }
    any.then_some(v)
}

enum Cmd {
    Start,
    End,
    Snap(String),
    Final(Arc<Vec<u64>>),
}

enum Input {
    Line(String),
    Eof,
    Connected(Box<Connected>),
    Snap(Snap),
    Final(Box<Report>, Box<Histogram<u64>>),
}

pub fn run(args: ClientArgs) -> i32 {
    let (fd_soft, fd_hard) = sys::raise_nofile();
    let threads = args.threads.max(1);
    let ips = args.conns.div_ceil(args.conns_per_ip.max(1)).max(1);
    eprintln!(
        "client {}: pid {}, fd limit soft {fd_soft} hard {fd_hard}; {} connections to {} ({}) over \
         {threads} threads, source addresses {}..={}",
        args.index,
        std::process::id(),
        args.conns,
        args.addr,
        args.transport.name(),
        args.src_first,
        ip_add(args.src_first, ips - 1),
    );
    if args.conns as u64 + 64 > fd_soft {
        eprintln!(
            "client {}: {} connections need more than the fd limit {fd_soft}; use more --procs",
            args.index, args.conns
        );
        return 2;
    }
    let args = Arc::new(args);
    let (in_tx, in_rx) = mpsc::channel::<Input>();
    let mut workers: Vec<(Sender<Cmd>, Arc<Waker>)> = Vec::new();
    for t in 0..threads {
        let poll = match Poll::new() {
            Ok(p) => p,
            Err(e) => {
                eprintln!("client {}: epoll: {e}", args.index);
                return 1;
            }
        };
        let waker = Arc::new(Waker::new(poll.registry(), WAKE).expect("mio waker"));
        let (cmd_tx, cmd_rx) = mpsc::channel();
        let out = in_tx.clone();
        let a = Arc::clone(&args);
        std::thread::Builder::new()
            .name(format!("client-{t}"))
            .spawn(move || Loop::new(t, threads, a, poll, cmd_rx, out).run())
            .expect("spawn client thread");
        workers.push((cmd_tx, waker));
    }
    {
        let tx = in_tx.clone();
        std::thread::spawn(move || {
            let stdin = io::stdin();
            for line in stdin.lock().lines() {
                match line {
                    Ok(l) => {
                        if tx.send(Input::Line(l)).is_err() {
                            return;
                        }
                    }
                    Err(_) => break,
                }
            }
            let _ = tx.send(Input::Eof);
        });
    }
    drop(in_tx);

    let broadcast = |cmd: &dyn Fn() -> Cmd| {
        for (tx, waker) in &workers {
            let _ = tx.send(cmd());
            let _ = waker.wake();
        }
    };
    let emit = |msg: &ClientMsg| {
        let line = serde_json::to_string(msg).expect("serialise client message");
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };

    let mut connected: Vec<Connected> = Vec::new();
    let mut snaps: Vec<Snap> = Vec::new();
    let mut finals: Vec<(Report, Histogram<u64>)> = Vec::new();
    while let Ok(input) = in_rx.recv() {
        match input {
            Input::Eof => std::process::exit(0),
            Input::Line(line) => {
                let (cmd, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
                match cmd {
                    "start" => broadcast(&|| Cmd::Start),
                    "end" => broadcast(&|| Cmd::End),
                    "snap" => {
                        let tag = rest.to_string();
                        broadcast(&|| Cmd::Snap(tag.clone()));
                    }
                    "final" => {
                        let seqs: Vec<u64> = serde_json::from_str(rest).unwrap_or_default();
                        let seqs = Arc::new(seqs);
                        broadcast(&|| Cmd::Final(Arc::clone(&seqs)));
                    }
                    "exit" => std::process::exit(0),
                    "" => {}
                    other => eprintln!("client {}: unknown command {other:?}", args.index),
                }
            }
            Input::Connected(c) => {
                connected.push(*c);
                if connected.len() == threads {
                    let mut all = Connected {
                        index: args.index,
                        pid: std::process::id(),
                        fd_soft,
                        fd_hard,
                        target: args.conns,
                        ..Connected::default()
                    };
                    for c in connected.drain(..) {
                        all.ready += c.ready;
                        all.failed += c.failed;
                        for (k, v) in c.failures {
                            *all.failures.entry(k).or_default() += v;
                        }
                        all.connect_secs = all.connect_secs.max(c.connect_secs);
                        // Percentiles of threads: take the worst (threads are symmetric).
                        all.setup_ms_p50 = all.setup_ms_p50.max(c.setup_ms_p50);
                        all.setup_ms_p99 = all.setup_ms_p99.max(c.setup_ms_p99);
                        all.setup_ms_max = all.setup_ms_max.max(c.setup_ms_max);
                    }
                    emit(&ClientMsg::Connected(all));
                }
            }
            Input::Snap(s) => {
                snaps.push(s);
                if snaps.len() == threads {
                    let mut all = Snap {
                        index: args.index,
                        tag: snaps[0].tag.clone(),
                        ..Snap::default()
                    };
                    for s in snaps.drain(..) {
                        all.frames += s.frames;
                        all.msgs += s.msgs;
                        all.open += s.open;
                    }
                    emit(&ClientMsg::Snap(all));
                }
            }
            Input::Final(r, h) => {
                finals.push((*r, *h));
                if finals.len() == threads {
                    let mut all = Report {
                        index: args.index,
                        ..Report::default()
                    };
                    let mut hist = new_latency_histogram();
                    for (r, h) in finals.drain(..) {
                        let _ = hist.add(&h);
                        merge_report(&mut all, r);
                    }
                    all.latency_us = histogram_pairs(&hist);
                    all.cpu_secs = sys::self_cpu_secs();
                    all.rss = sys::proc_mem(std::process::id()).map_or(0, |m| m.rss);
                    emit(&ClientMsg::Report(Box::new(all)));
                }
            }
        }
    }
    0
}

fn merge_report(all: &mut Report, r: Report) {
    all.ready += r.ready;
    all.open += r.open;
    for (k, v) in r.closed {
        *all.closed.entry(k).or_default() += v;
    }
    all.frames += r.frames;
    all.msgs += r.msgs;
    all.bytes += r.bytes;
    all.window_frames += r.window_frames;
    all.window_msgs += r.window_msgs;
    all.expected += r.expected;
    all.unique += r.unique;
    all.missing += r.missing;
    all.duplicates += r.duplicates;
    all.out_of_order += r.out_of_order;
    all.foreign += r.foreign;
    all.decode_errors += r.decode_errors;
    all.no_ts += r.no_ts;
    all.pings_sent += r.pings_sent;
    all.pongs += r.pongs;
    all.ping_errors += r.ping_errors;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not started, or waiting for a retry.
    Idle,
    Connecting,
    Handshake,
    /// `auth` and `join` sent; waiting for both replies.
    Joining,
    Ready,
    /// A ready connection the server closed.
    Closed,
    /// Gave up.
    Failed,
}

impl State {
    fn in_flight(self) -> bool {
        matches!(self, State::Connecting | State::Handshake | State::Joining)
    }
}

struct Conn {
    sock: Option<TcpStream>,
    state: State,
    attempts: u8,
    /// Milliseconds since the loop started, when the current attempt began.
    setup_start_ms: u32,
    last_seq: u64,
    /// A partial frame (only between reads that split one).
    rbuf: Vec<u8>,
    /// Bytes not yet accepted by the socket (only during setup, realistically).
    wbuf: Vec<u8>,
}

/// Counters of one thread.
#[derive(Default)]
struct Counters {
    ready: u64,
    failed: u64,
    failures: BTreeMap<String, u64>,
    closed: BTreeMap<String, u64>,
    frames: u64,
    msgs: u64,
    bytes: u64,
    unique: u64,
    missing: u64,
    duplicates: u64,
    out_of_order: u64,
    foreign: u64,
    decode_errors: u64,
    no_ts: u64,
    pings_sent: u64,
    pongs: u64,
    ping_errors: u64,
}

struct Loop {
    t: usize,
    threads: usize,
    args: Arc<ClientArgs>,
    poll: Poll,
    conns: Vec<Conn>,
    rooms: Vec<String>,
    pending: VecDeque<usize>,
    retry: VecDeque<(Instant, usize)>,
    inflight: usize,
    inflight_limit: usize,
    scratch: Vec<u8>,
    c: Counters,
    latency: Histogram<u64>,
    setup_ms: Histogram<u64>,
    measuring: bool,
    window_start: (u64, u64),
    window: (u64, u64),
    cmds: Receiver<Cmd>,
    out: Sender<Input>,
    started: Instant,
    connected_sent: bool,
    ping_slot: usize,
    ping_seq: u64,
    host: String,
}

impl Loop {
    fn new(
        t: usize,
        threads: usize,
        args: Arc<ClientArgs>,
        poll: Poll,
        cmds: Receiver<Cmd>,
        out: Sender<Input>,
    ) -> Loop {
        // This thread's connections: process-local j = t, t + threads, t + 2*threads, ...
        let n = (args.conns + threads - 1 - t) / threads;
        let conns = (0..n)
            .map(|_| Conn {
                sock: None,
                state: State::Idle,
                attempts: 0,
                setup_start_ms: 0,
                last_seq: 0,
                rbuf: Vec::new(),
                wbuf: Vec::new(),
            })
            .collect();
        let rooms = (0..args.rooms.max(1)).map(room_name).collect();
        let inflight_limit = (args.inflight / threads).max(1);
        let host = args.addr.to_string();
        Loop {
            t,
            threads,
            poll,
            conns,
            rooms,
            pending: (0..n).collect(),
            retry: VecDeque::new(),
            inflight: 0,
            inflight_limit,
            scratch: vec![0; 256 * 1024],
            c: Counters::default(),
            latency: new_latency_histogram(),
            setup_ms: Histogram::new_with_bounds(1, 3_600_000, 3).expect("histogram bounds"),
            measuring: false,
            window_start: (0, 0),
            window: (0, 0),
            cmds,
            out,
            started: Instant::now(),
            connected_sent: false,
            ping_slot: 0,
            ping_seq: 3,
            host,
            args,
        }
    }

    /// Process-local index of slot `k`.
    fn local(&self, k: usize) -> usize {
        self.t + k * self.threads
    }

    fn global(&self, k: usize) -> usize {
        self.args.first + self.local(k)
    }

    fn room_of(&self, k: usize) -> usize {
        self.global(k) % self.rooms.len()
    }

    fn mask(&self, k: usize) -> [u8; 4] {
        let g = self.global(k) as u32;
        (g.wrapping_mul(0x9E37_79B1) | 1).to_le_bytes()
    }

    fn ws_key(&self, k: usize) -> String {
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(&(self.global(k) as u64).to_le_bytes());
        nonce[8] = self.conns[k].attempts;
        nonce[9..13].copy_from_slice(b"rcbn");
        client_key(nonce)
    }

    fn now_ms(&self) -> u32 {
        self.started.elapsed().as_millis() as u32
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut next_tick = Instant::now() + TICK;
        let mut next_scan = Instant::now() + Duration::from_secs(1);
        loop {
            self.start_more();
            let timeout = next_tick.saturating_duration_since(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    eprintln!("client {} thread {}: poll: {e}", self.args.index, self.t);
                    return;
                }
            }
            for event in events.iter() {
                if event.token() == WAKE {
                    continue;
                }
                let k = event.token().0;
                if k >= self.conns.len() {
                    continue;
                }
                self.on_event(
                    k,
                    event.is_readable() || event.is_read_closed() || event.is_error(),
                    event.is_writable(),
                );
            }
            while let Ok(cmd) = self.cmds.try_recv() {
                self.on_cmd(cmd);
            }
            let now = Instant::now();
            if now >= next_tick {
                next_tick = now + TICK;
                self.ping_tick();
            }
            if now >= next_scan {
                next_scan = now + Duration::from_secs(1);
                self.timeout_scan();
            }
            if !self.connected_sent
                && self.pending.is_empty()
                && self.retry.is_empty()
                && self.inflight == 0
            {
                self.connected_sent = true;
                let q = |h: &Histogram<u64>, q: f64| {
                    if h.is_empty() {
                        0.0
                    } else {
                        h.value_at_quantile(q) as f64
                    }
                };
                let _ = self.out.send(Input::Connected(Box::new(Connected {
                    ready: self.c.ready,
                    failed: self.c.failed,
                    failures: self.c.failures.clone(),
                    connect_secs: self.started.elapsed().as_secs_f64(),
                    setup_ms_p50: q(&self.setup_ms, 0.5),
                    setup_ms_p99: q(&self.setup_ms, 0.99),
                    setup_ms_max: self.setup_ms.max() as f64,
                    ..Connected::default()
                })));
            }
        }
    }

    fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Start => {
                self.latency.reset();
                self.measuring = true;
                self.window_start = (self.c.frames, self.c.msgs);
            }
            Cmd::End => {
                if self.measuring {
                    self.measuring = false;
                    self.window = (
                        self.c.frames - self.window_start.0,
                        self.c.msgs - self.window_start.1,
                    );
                }
            }
            Cmd::Snap(tag) => {
                let open = self
                    .conns
                    .iter()
                    .filter(|c| c.state == State::Ready)
                    .count() as u64;
                let _ = self.out.send(Input::Snap(Snap {
                    index: self.args.index,
                    tag,
                    frames: self.c.frames,
                    msgs: self.c.msgs,
                    open,
                }));
            }
            Cmd::Final(seqs) => {
                let mut expected = 0;
                let mut missing_tail = 0;
                let mut open = 0;
                for k in 0..self.conns.len() {
                    if self.conns[k].state != State::Ready {
                        continue;
                    }
                    open += 1;
                    let last = seqs.get(self.room_of(k)).copied().unwrap_or(0);
                    expected += last;
                    missing_tail += last.saturating_sub(self.conns[k].last_seq);
                }
                let c = &self.c;
                let report = Report {
                    index: self.args.index,
                    ready: c.ready,
                    open,
                    closed: c.closed.clone(),
                    frames: c.frames,
                    msgs: c.msgs,
                    bytes: c.bytes,
                    window_frames: self.window.0,
                    window_msgs: self.window.1,
                    expected,
                    unique: c.unique,
                    missing: c.missing + missing_tail,
                    duplicates: c.duplicates,
                    out_of_order: c.out_of_order,
                    foreign: c.foreign,
                    decode_errors: c.decode_errors,
                    no_ts: c.no_ts,
                    pings_sent: c.pings_sent,
                    pongs: c.pongs,
                    ping_errors: c.ping_errors,
                    ..Report::default()
                };
                let _ = self.out.send(Input::Final(
                    Box::new(report),
                    Box::new(self.latency.clone()),
                ));
            }
        }
    }

    fn start_more(&mut self) {
        let now = Instant::now();
        while self.inflight < self.inflight_limit {
            if let Some(&(due, k)) = self.retry.front() {
                if due <= now {
                    self.retry.pop_front();
                    self.start(k);
                    continue;
                }
            }
            match self.pending.pop_front() {
                Some(k) => self.start(k),
                None => break,
            }
        }
    }

    fn start(&mut self, k: usize) {
        let src = ip_add(
            self.args.src_first,
            self.local(k) / self.args.conns_per_ip.max(1),
        );
        self.conns[k].setup_start_ms = self.now_ms();
        self.conns[k].state = State::Connecting;
        self.inflight += 1;
        match self.open_socket(src, self.args.addr) {
            Ok(mut stream) => {
                if let Err(e) = self.poll.registry().register(
                    &mut stream,
                    Token(k),
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    self.fail(k, format!("register: {e}"), true);
                    return;
                }
                self.conns[k].sock = Some(stream);
            }
            Err(e) => self.fail(k, format!("connect: {}", short_err(&e)), true),
        }
    }

    fn open_socket(&self, src: Ipv4Addr, dst: SocketAddr) -> io::Result<TcpStream> {
        let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        sock.set_nonblocking(true)?;
        // Let connect() pick the port per 4-tuple instead of reserving one per address at bind.
        sys::setsockopt_int(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            1,
        )?;
        sock.bind(&SocketAddrV4::new(src, 0).into())?;
        sock.set_tcp_nodelay(true)?;
        match sock.connect(&dst.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        Ok(TcpStream::from_std(sock.into()))
    }

    fn on_event(&mut self, k: usize, readable: bool, writable: bool) {
        if self.conns[k].sock.is_none() {
            return;
        }
        if self.conns[k].state == State::Connecting {
            let sock = self.conns[k].sock.as_ref().expect("socket");
            match sock.take_error() {
                Ok(Some(e)) | Err(e) => {
                    self.fail(k, format!("connect: {}", short_err(&e)), true);
                    return;
                }
                Ok(None) => {}
            }
            match sock.peer_addr() {
                Ok(_) => self.on_connected(k),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => {
                    self.fail(k, format!("connect: {}", short_err(&e)), true);
                    return;
                }
            }
        }
        if writable && !self.conns[k].wbuf.is_empty() && !self.flush(k) {
            return;
        }
        if readable {
            self.read(k);
        }
    }

    fn on_connected(&mut self, k: usize) {
        if self.args.transport.is_ws() {
            self.conns[k].state = State::Handshake;
            let req = client_request(&self.host, "/ws", &self.ws_key(k));
            self.send(k, &req);
        } else {
            self.send_auth_join(k);
        }
    }

    fn send_auth_join(&mut self, k: usize) {
        self.conns[k].state = State::Joining;
        let g = self.global(k);
        let exp = sys::unix_micros() / 1_000_000 + 86_400;
        let token = mint(
            self.args.jwt_secret.as_bytes(),
            &Claims {
                sub: format!("u{g}"),
                exp,
                rooms: None,
            },
        );
        let format = self.args.transport.format();
        let mask = self.mask(k);
        let mut bytes = encode_op(format, &ClientOp::Auth { seq: 1, token }, mask).to_vec();
        let room = self.rooms[self.room_of(k)].clone();
        bytes.extend_from_slice(&encode_op(format, &ClientOp::Join { seq: 2, room }, mask));
        self.send(k, &bytes);
    }

    /// Writes (or queues) bytes; false when the connection failed.
    fn send(&mut self, k: usize, bytes: &[u8]) -> bool {
        let conn = &mut self.conns[k];
        if !conn.wbuf.is_empty() {
            conn.wbuf.extend_from_slice(bytes);
            return true;
        }
        let Some(sock) = conn.sock.as_mut() else {
            return false;
        };
        let mut off = 0;
        while off < bytes.len() {
            match sock.write(&bytes[off..]) {
                Ok(0) => break,
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.lost(k, format!("write: {}", short_err(&e)));
                    return false;
                }
            }
        }
        if off < bytes.len() {
            conn.wbuf.extend_from_slice(&bytes[off..]);
        }
        true
    }

    fn flush(&mut self, k: usize) -> bool {
        let conn = &mut self.conns[k];
        let Some(sock) = conn.sock.as_mut() else {
            return false;
        };
        while !conn.wbuf.is_empty() {
            match sock.write(&conn.wbuf) {
                Ok(0) => break,
                Ok(n) => {
                    conn.wbuf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.lost(k, format!("write: {}", short_err(&e)));
                    return false;
                }
            }
        }
        if conn.wbuf.is_empty() {
            conn.wbuf = Vec::new();
        }
        true
    }

    fn read(&mut self, k: usize) {
        let mut scratch = std::mem::take(&mut self.scratch);
        while let Some(sock) = self.conns[k].sock.as_mut() {
            let n = match sock.read(&mut scratch) {
                Ok(0) => {
                    self.lost(k, "eof".into());
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.lost(k, format!("read: {}", short_err(&e)));
                    break;
                }
            };
            self.c.bytes += n as u64;
            let now_us = sys::unix_micros();
            let ok = if self.conns[k].rbuf.is_empty() {
                match self.process(k, &scratch[..n], now_us) {
                    Some(used) => {
                        if used < n {
                            self.conns[k].rbuf.extend_from_slice(&scratch[used..n]);
                        }
                        true
                    }
                    None => false,
                }
            } else {
                let mut buf = std::mem::take(&mut self.conns[k].rbuf);
                buf.extend_from_slice(&scratch[..n]);
                match self.process(k, &buf, now_us) {
                    Some(used) => {
                        if used < buf.len() {
                            buf.drain(..used);
                            self.conns[k].rbuf = buf;
                        }
                        true
                    }
                    None => false,
                }
            };
            if !ok {
                break;
            }
        }
        self.scratch = scratch;
    }

    /// Handles every complete frame at the start of `buf`; returns the bytes used, or None when
    /// the connection is gone.
    fn process(&mut self, k: usize, buf: &[u8], now_us: u64) -> Option<usize> {
        let mut pos = 0;
        loop {
            let rest = &buf[pos..];
            if rest.is_empty() {
                return Some(pos);
            }
            if self.conns[k].state == State::Handshake {
                match parse_client_response(rest, &self.ws_key(k)) {
                    Ok(None) => {
                        if rest.len() > 16 * 1024 {
                            self.fail(k, "handshake: response head too long".into(), false);
                            return None;
                        }
                        return Some(pos);
                    }
                    Ok(Some(len)) => {
                        pos += len;
                        self.send_auth_join(k);
                        self.conns[k].sock.as_ref()?;
                        continue;
                    }
                    Err(e) => {
                        // 503 = edge full: retry (a new source port may hash to another edge).
                        self.fail(k, format!("handshake: {e}"), true);
                        return None;
                    }
                }
            }
            match self.args.transport {
                Transport::Tcp => {
                    let Some(len) = tcp_frame_len(rest) else {
                        return Some(pos);
                    };
                    if len > MAX_FRAME {
                        self.lost(k, format!("frame of {len} bytes"));
                        return None;
                    }
                    if rest.len() < 4 + len {
                        return Some(pos);
                    }
                    self.on_payload(k, false, &rest[4..4 + len], now_us)?;
                    pos += 4 + len;
                }
                Transport::WsJson | Transport::WsBinary => {
                    let frame = match parse_server_frame(rest) {
                        Ok(None) => return Some(pos),
                        Ok(Some(f)) => f,
                        Err(e) => {
                            self.lost(k, format!("ws: {e}"));
                            return None;
                        }
                    };
                    if frame.len > MAX_FRAME {
                        self.lost(k, format!("frame of {} bytes", frame.len));
                        return None;
                    }
                    let payload = &rest[frame.payload.clone()];
                    if !frame.fin {
                        // The edge never fragments; count and skip.
                        self.c.decode_errors += 1;
                    } else {
                        match frame.opcode {
                            OpCode::Text => self.on_payload(k, true, payload, now_us)?,
                            OpCode::Binary => self.on_payload(k, false, payload, now_us)?,
                            OpCode::Close => {
                                let code = match payload {
                                    [a, b, ..] => u16::from_be_bytes([*a, *b]),
                                    _ => 1005,
                                };
                                let reason =
                                    String::from_utf8_lossy(payload.get(2..).unwrap_or_default())
                                        .into_owned();
                                self.lost(k, format!("close {code} {reason}"));
                                return None;
                            }
                            OpCode::Ping => {
                                let mut pong = Vec::with_capacity(payload.len() + 8);
                                put_client_frame(&mut pong, OpCode::Pong, payload, self.mask(k));
                                if !self.send(k, &pong) {
                                    return None;
                                }
                            }
                            OpCode::Pong => {}
                            OpCode::Continuation => self.c.decode_errors += 1,
                        }
                    }
                    pos += frame.len;
                }
            }
        }
    }

    fn on_payload(&mut self, k: usize, json: bool, payload: &[u8], now_us: u64) -> Option<()> {
        let msg = if json {
            decode_server_json(payload)
        } else {
            decode_server_binary(payload)
        };
        let msg = match msg {
            Ok(m) => m,
            Err(_) => {
                self.c.decode_errors += 1;
                return Some(());
            }
        };
        match msg {
            ServerMsg::Reply { seq, result } => {
                if self.conns[k].state == State::Joining && seq <= 2 {
                    match result {
                        Err((code, _)) => {
                            let what = if seq == 1 { "auth" } else { "join" };
                            self.fail(k, format!("{what}: {code}"), false);
                            return None;
                        }
                        Ok(()) if seq == 2 => self.on_ready(k),
                        Ok(()) => {}
                    }
                } else if result.is_ok() {
                    self.c.pongs += 1;
                } else {
                    self.c.ping_errors += 1;
                }
            }
            ServerMsg::Batch { target, msgs } => {
                self.c.frames += 1;
                let room = self.room_of(k);
                match &target {
                    Target::Room(r) if *r == self.rooms[room] => {}
                    _ => {
                        self.c.foreign += 1;
                        return Some(());
                    }
                }
                let conn = &mut self.conns[k];
                for m in &msgs {
                    self.c.msgs += 1;
                    let last = conn.last_seq;
                    if m.seq > last {
                        self.c.missing += m.seq - last - 1;
                        self.c.unique += 1;
                        conn.last_seq = m.seq;
                    } else if m.seq == last {
                        self.c.duplicates += 1;
                    } else {
                        self.c.out_of_order += 1;
                    }
                    if self.measuring {
                        match scan_ts(&m.data) {
                            Some(ts) => self
                                .latency
                                .saturating_record(now_us.saturating_sub(ts).max(1)),
                            None => self.c.no_ts += 1,
                        }
                    }
                }
            }
            ServerMsg::Close { code, reason } => {
                if self.conns[k].state == State::Joining && code == 4029 {
                    self.fail(k, "full (4029)".into(), true);
                } else {
                    self.lost(k, format!("close {code} {reason}"));
                }
                return None;
            }
        }
        Some(())
    }

    fn on_ready(&mut self, k: usize) {
        let ms = self.now_ms().saturating_sub(self.conns[k].setup_start_ms);
        self.setup_ms.saturating_record(u64::from(ms).max(1));
        let conn = &mut self.conns[k];
        conn.state = State::Ready;
        if conn.wbuf.is_empty() {
            conn.wbuf = Vec::new();
        }
        self.inflight -= 1;
        self.c.ready += 1;
    }

    /// The connection ended: a ready one is counted as closed, one in setup as a failed attempt.
    fn lost(&mut self, k: usize, reason: String) {
        if self.conns[k].state == State::Ready {
            self.drop_socket(k);
            self.conns[k].state = State::Closed;
            // Keep the reason coarse: the close code and text, or the error kind.
            *self.c.closed.entry(reason).or_default() += 1;
        } else {
            self.fail(k, reason, true);
        }
    }

    fn fail(&mut self, k: usize, reason: String, retryable: bool) {
        self.drop_socket(k);
        let conn = &mut self.conns[k];
        if conn.state.in_flight() {
            self.inflight -= 1;
        }
        *self.c.failures.entry(reason).or_default() += 1;
        conn.rbuf = Vec::new();
        conn.wbuf = Vec::new();
        if retryable && conn.attempts < self.args.retries {
            conn.attempts += 1;
            conn.state = State::Idle;
            let delay = Duration::from_millis(100 * u64::from(conn.attempts));
            self.retry.push_back((Instant::now() + delay, k));
        } else {
            conn.state = State::Failed;
            self.c.failed += 1;
        }
    }

    fn drop_socket(&mut self, k: usize) {
        if let Some(mut sock) = self.conns[k].sock.take() {
            let _ = self.poll.registry().deregister(&mut sock);
        }
    }

    /// Every tick pings the ready connections of one slot: each connection once per --ping-secs.
    fn ping_tick(&mut self) {
        let slots = ((self.args.ping_secs.max(1) * 1000) / TICK.as_millis() as u64) as usize;
        self.ping_slot = (self.ping_slot + 1) % slots;
        let format = self.args.transport.format();
        let mut k = self.ping_slot;
        while k < self.conns.len() {
            if self.conns[k].state == State::Ready {
                self.ping_seq += 1;
                let frame = encode_op(format, &ClientOp::Ping { seq: self.ping_seq }, self.mask(k));
                if self.send(k, &frame) {
                    self.c.pings_sent += 1;
                }
            }
            k += slots;
        }
    }

    fn timeout_scan(&mut self) {
        let now = self.now_ms();
        let limit = SETUP_TIMEOUT.as_millis() as u32;
        for k in 0..self.conns.len() {
            if self.conns[k].state.in_flight()
                && now.saturating_sub(self.conns[k].setup_start_ms) > limit
            {
                let what = match self.conns[k].state {
                    State::Connecting => "connect",
                    State::Handshake => "handshake",
                    _ => "auth/join",
                };
                self.fail(k, format!("{what}: timeout"), true);
            }
        }
    }
}

fn short_err(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => format!("{:?} (errno {code})", e.kind()),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_the_timestamp() {
        assert_eq!(
            scan_ts(br#"{"ts":1700000000123456,"pad":"xx"}"#),
            Some(1_700_000_000_123_456)
        );
        assert_eq!(scan_ts(br#"{"a":1,"ts":42}"#), Some(42));
        assert_eq!(scan_ts(br#"{"a":1}"#), None);
    }

    #[test]
    fn source_addresses_continue_past_255() {
        assert_eq!(
            ip_add(Ipv4Addr::new(127, 0, 0, 254), 3),
            Ipv4Addr::new(127, 0, 1, 1)
        );
    }
}
