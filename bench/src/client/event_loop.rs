//! One client thread: a mio event loop over its share of nonblocking connections.
//!
//! Per connection: bind a 127.0.0.x source address, connect, (WebSocket handshake), `auth` with
//! a token (minted here, or read from the coordinator's token file) and `join` its room (both
//! pipelined), then read forever, pinging every `--ping-secs`. Idle, a connection costs its socket
//! plus one small `Conn` (no buffers: reads land in one scratch buffer per thread and only a
//! partial frame is ever kept per connection).
//!
//! During the measured window, slow readers stop reading (and catch up after it) and churners
//! close and reopen their connections at the requested rate.
//!
//! Every connection keeps its room's position (epoch and last `seq`, [`Position`]) from the join
//! reply and the batches. On the coordinator's `drop` (`--drop-all-at`) every joined connection
//! is closed at once (an abortive close: the edge sees a reset, as after a network flap) and
//! reconnects after its jitter, joining with `since`; the reply and the replay are counted in a
//! [`RecoveryReport`].
//!
//! Upstream (`--senders`): the sender connections each `send` a chat line into their room at
//! `--sends-per-sender-per-s`, paced by a [`Schedule`] per thread from the warm-up to the end of
//! the window; each send's reply is matched to it by `seq` (from [`SEND_SEQ_BASE`] up) and
//! counted by outcome, with its latency (send written → reply read). Messages with a `from` are
//! published sends: counted apart from the load (their own completeness and latency), but they
//! move the connection's position like any message of the room.
//!
//! Every frame is parsed by the engine's codecs. The latency timestamp is read out of each
//! message's `data` (the publisher's JSON, `{"ts":<unix µs>,...}`): payload, not protocol.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use roomcast_proto::auth::{mint, Claims};
use roomcast_proto::client::{
    decode_server_json, encode_op, tcp_frame_len, view_server_binary, ClientOp, PushRef,
    ReplyDetails, ServerMsg, ServerMsgView, TargetRef,
};
use roomcast_proto::handshake::{client_key, client_request, parse_client_response};
use roomcast_proto::message::PRIORITIES;
use roomcast_proto::ws::{parse_server_frame, put_client_frame, OpCode, ServerFrame};
use socket2::{Domain, Protocol, Socket, Type};

use super::position::{Epochs, Joined, Position, Seen};
use super::upstream::{send_data, InFlight, Schedule, SEND_SEQ_BASE};
use super::{ip_add, ClientArgs, Cmd, Input, ThreadHistograms, Transport, WAKE};
use crate::dist::{reconnect_delay, room_name, Group, Population, SenderPick};
use crate::merge::{self, Expect, Kind, View};
use crate::msgs::{
    new_tick_histogram, Connected, GroupReport, MergeReport, RecoveryReport, Report, SendCounts,
    Snap, Tick, UpstreamReport,
};
use crate::natsproto::{self, Op};
use crate::sys;

/// The subscription id of a `nats-ws` connection's one `SUB`.
const NATS_SID: u32 = 1;
/// A connection still setting up after this long is abandoned (and retried).
const SETUP_TIMEOUT: Duration = Duration::from_secs(15);
/// A single server frame larger than this is treated as a protocol error.
const MAX_FRAME: usize = 16 << 20;
/// The loop's housekeeping period (pings, churn).
const TICK: Duration = Duration::from_millis(100);
/// How often a loop reports its running totals.
const REPORT_EVERY: Duration = Duration::from_secs(1);

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

/// The run's phases, as the coordinator announces them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    /// Publishing has started; the normal group's latency goes to the warm-up histogram.
    Warmup,
    /// The measured window: slow readers pause, churners churn.
    Window,
    /// After the window.
    Drain,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not started, or waiting for a (re)try.
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

/// Where a connection is in the reconnect storm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Storm {
    /// Not dropped (or churned since: a churner starts over).
    Untouched,
    /// Dropped; its recovery reply has not come yet.
    Reconnecting,
    /// `recovered: true` (its replay may still be arriving: see its position).
    Recovered,
    /// Not recovered (`recovered: false`, rejoined without `since`, or a reply that broke the
    /// protocol): judged apart from its group.
    Unrecovered,
}

struct Conn {
    sock: Option<TcpStream>,
    state: State,
    group: Group,
    attempts: u8,
    /// Closed on purpose (churn): the next join counts as a reconnect.
    rejoin: bool,
    room: u32,
    /// Milliseconds since the loop started, when the current attempt began.
    setup_start_ms: u32,
    /// The room's epoch and the last `seq` processed.
    pos: Position,
    storm: Storm,
    /// When the current attempt's `join` was sent (unix µs).
    join_sent_us: u64,
    /// Seqs skipped by a resume that was not recovered.
    skipped: u64,
    /// Messages received for the first time since this connection joined, per priority.
    unique: [u32; PRIORITIES],
    /// Published sends (messages with `from`) received for the first time since it joined.
    up_unique: u32,
    /// A partial frame (only between reads that split one).
    rbuf: Vec<u8>,
    /// Bytes not yet accepted by the socket (only during setup, realistically).
    wbuf: Vec<u8>,
    /// `nats-ws`: the NATS protocol stream inside the websocket frames (an op split across
    /// frames waits here).
    nats: natsproto::Stream,
}

/// Counters of one thread.
#[derive(Default)]
struct Counters {
    ready: u64,
    failed: u64,
    failures: BTreeMap<String, u64>,
    closed: BTreeMap<String, u64>,
    /// Joined connections now.
    open: u64,
    churn_closes: u64,
    reconnects: u64,
    frames: u64,
    msgs: u64,
    bytes: u64,
    /// [group][priority]: (received, duplicates, out of order).
    received: [[(u64, u64, u64); PRIORITIES]; 3],
    foreign: u64,
    decode_errors: u64,
    no_ts: u64,
    pings_sent: u64,
    pongs: u64,
    ping_errors: u64,
    /// Room online counts received (`room` pushes, PROTOCOL.md §5).
    online_counts: u64,
    /// Merge traffic received (the per-viewer checks are added at the end).
    merge: MergeReport,
    /// The reconnect storm's counts (its histograms are in [`ThreadHistograms`]).
    rec: RecoveryReport,
    /// Upstream: sends, replies, and published sends received (histograms in
    /// [`ThreadHistograms`]; the per-room lists are filled in at the end).
    up: UpstreamReport,
    /// Sends answered `published`, by room index.
    up_published: BTreeMap<usize, u64>,
}

pub(super) struct Loop {
    t: usize,
    threads: usize,
    args: Arc<ClientArgs>,
    tokens: Option<Arc<Vec<String>>>,
    hosts: Vec<String>,
    room_names: Vec<String>,
    poll: Poll,
    conns: Vec<Conn>,
    pending: VecDeque<usize>,
    /// Failed attempts waiting to be retried, soonest first.
    retry: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Dropped connections waiting out their jitter, soonest first: started when due, whatever
    /// --inflight says (a storm is every app at once, spread only by its jitter).
    resumes: BinaryHeap<Reverse<(Instant, usize)>>,
    epochs: Epochs,
    /// The last drop (unix µs), and how many so far.
    drop_at: Option<u64>,
    drops: u64,
    inflight: usize,
    inflight_limit: usize,
    scratch: Vec<u8>,
    c: Counters,
    hists: ThreadHistograms,
    setup_ms: Histogram<u64>,
    tick_latency: Histogram<u64>,
    phase: Phase,
    /// Batch frames, messages and online counts received when the window opened, and in it.
    window_start: (u64, u64, u64),
    window: (u64, u64, u64),
    /// Merge traffic per kind received when the window opened.
    merge_window_start: [u64; 3],
    /// Per connection (empty without --merge-checks): its merge traffic.
    merge_views: Vec<View>,
    /// What the merge traffic published per room, once the coordinator says.
    expect: Option<Arc<Expect>>,
    /// Unix ms when the loop started: merge-traffic times are ms since then.
    base_ms: u64,
    /// This thread's churners, and the next one to churn.
    churners: Vec<usize>,
    churn_cursor: usize,
    /// Churns due but not yet done (fractional).
    churn_due: f64,
    /// Upstream: this thread's sender slots, their pacing, the sends waiting for replies (by
    /// `seq`), the next send's `seq`, and a scratch list of the senders due.
    senders: Vec<usize>,
    schedule: Schedule,
    in_flight: HashMap<u64, InFlight>,
    send_seq: u64,
    due: Vec<usize>,
    cmds: Receiver<Cmd>,
    out: Sender<Input>,
    started: Instant,
    connected_sent: bool,
    ping_slot: usize,
    ping_seq: u64,
}

impl Loop {
    pub(super) fn new(
        t: usize,
        threads: usize,
        args: Arc<ClientArgs>,
        tokens: Option<Arc<Vec<String>>>,
        poll: Poll,
        cmds: Receiver<Cmd>,
        out: Sender<Input>,
    ) -> Loop {
        let population = Population::new(
            args.rooms,
            args.room_dist,
            args.zipf_exponent,
            args.slow_readers,
            args.churn,
        );
        // This thread's connections: process-local j = t, t + threads, t + 2*threads, ...
        let n = (args.conns + threads - 1 - t) / threads;
        let conns: Vec<Conn> = (0..n)
            .map(|k| {
                let global = args.first + t + k * threads;
                Conn {
                    sock: None,
                    state: State::Idle,
                    group: population.group_of(global),
                    attempts: 0,
                    rejoin: false,
                    room: population.room_of(global) as u32,
                    setup_start_ms: 0,
                    pos: Position::default(),
                    storm: Storm::Untouched,
                    join_sent_us: 0,
                    skipped: 0,
                    unique: [0; PRIORITIES],
                    up_unique: 0,
                    rbuf: Vec::new(),
                    wbuf: Vec::new(),
                    nats: natsproto::Stream::default(),
                }
            })
            .collect();
        let churners = (0..n).filter(|&k| conns[k].group == Group::Churn).collect();
        let pick = SenderPick::new(args.senders, args.conns_total);
        let senders: Vec<usize> = (0..n)
            .filter(|&k| pick.is_sender(args.first + t + k * threads))
            .collect();
        let schedule = Schedule::new(senders.len(), args.sends_per_sender_per_s);
        let merge_views = if args.merge_checks {
            vec![View::default(); n]
        } else {
            Vec::new()
        };
        Loop {
            t,
            threads,
            tokens,
            hosts: args.addrs.iter().map(ToString::to_string).collect(),
            room_names: (0..population.rooms()).map(room_name).collect(),
            poll,
            conns,
            pending: (0..n).collect(),
            retry: BinaryHeap::new(),
            resumes: BinaryHeap::new(),
            epochs: Epochs::default(),
            drop_at: None,
            drops: 0,
            inflight: 0,
            inflight_limit: (args.inflight / threads).max(1),
            scratch: vec![0; 256 * 1024],
            c: Counters::default(),
            hists: ThreadHistograms::new(),
            setup_ms: Histogram::new_with_bounds(1, 3_600_000, 3).expect("histogram bounds"),
            tick_latency: new_tick_histogram(),
            phase: Phase::Connecting,
            window_start: (0, 0, 0),
            window: (0, 0, 0),
            merge_window_start: [0; 3],
            merge_views,
            expect: None,
            base_ms: sys::unix_micros() / 1000,
            churners,
            churn_cursor: 0,
            churn_due: 0.0,
            senders,
            schedule,
            in_flight: HashMap::new(),
            send_seq: SEND_SEQ_BASE,
            due: Vec::new(),
            cmds,
            out,
            started: Instant::now(),
            connected_sent: false,
            ping_slot: 0,
            ping_seq: 3,
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

    /// The edge address connection `k` dials (spread over the addresses given).
    fn addr_index(&self, k: usize) -> usize {
        self.global(k) % self.args.addrs.len()
    }

    fn now_ms(&self) -> u32 {
        self.started.elapsed().as_millis() as u32
    }

    pub(super) fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut next_tick = Instant::now() + TICK;
        let mut next_report = Instant::now() + REPORT_EVERY;
        let mut next_scan = Instant::now() + Duration::from_secs(1);
        let poll_interval = Duration::from_micros(self.args.poll_interval_us);
        loop {
            self.start_more();
            // Wake for the next resume or send when it is due, not at the next tick.
            let mut wake_at = match self.resumes.peek() {
                Some(Reverse((due, _))) => next_tick.min(*due),
                None => next_tick,
            };
            if let Some(due) = self.schedule.next_due() {
                wake_at = wake_at.min(due);
            }
            let timeout = wake_at.saturating_duration_since(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    eprintln!("client {} thread {}: poll: {e}", self.args.index, self.t);
                    return;
                }
            }
            for event in events.iter() {
                let k = event.token().0;
                if event.token() == WAKE || k >= self.conns.len() {
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
            self.send_due();
            if !events.is_empty() && !poll_interval.is_zero() {
                std::thread::sleep(poll_interval);
            }
            let now = Instant::now();
            if now >= next_tick {
                next_tick = now + TICK;
                self.ping_tick();
                if self.phase == Phase::Window {
                    self.churn_tick();
                }
            }
            if now >= next_report {
                next_report += REPORT_EVERY;
                self.send_tick();
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
                let connected = Connected {
                    ready: self.c.ready,
                    failed: self.c.failed,
                    failures: self.c.failures.clone(),
                    connect_secs: self.started.elapsed().as_secs_f64(),
                    ..Connected::default()
                };
                let _ = self
                    .out
                    .send(Input::Connected(Box::new(connected), self.setup_ms.clone()));
            }
        }
    }

    fn send_tick(&mut self) {
        let tick = Tick {
            open: self.c.open,
            frames: self.c.frames,
            msgs: self.c.msgs,
            reconnects: self.c.reconnects,
            sends: self.c.up.run.attempted,
            send_replies: self.c.up.run.answered,
            ..Tick::default()
        };
        let latency = self.tick_latency.clone();
        self.tick_latency.reset();
        let _ = self.out.send(Input::Tick(self.t, tick, latency));
    }

    fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Warmup => {
                self.phase = Phase::Warmup;
                // Upstream runs from the warm-up to the end of the window.
                self.schedule.start(Instant::now());
            }
            Cmd::Start => {
                self.phase = Phase::Window;
                self.window_start = (self.c.frames, self.c.msgs, self.c.online_counts);
                self.merge_window_start = self.c.merge.received;
                self.pause_slow_readers(true);
            }
            Cmd::End => {
                if self.phase == Phase::Window {
                    self.window = (
                        self.c.frames - self.window_start.0,
                        self.c.msgs - self.window_start.1,
                        self.c.online_counts - self.window_start.2,
                    );
                    for (w, (now, start)) in self
                        .c
                        .merge
                        .window_received
                        .iter_mut()
                        .zip(self.c.merge.received.iter().zip(&self.merge_window_start))
                    {
                        *w = now - start;
                    }
                }
                self.phase = Phase::Drain;
                self.schedule.stop();
                self.pause_slow_readers(false);
            }
            Cmd::DropAll => self.drop_all(),
            Cmd::Expect(expect) => self.expect = Some(expect),
            Cmd::Snap(tag) => {
                let _ = self.out.send(Input::Snap(Snap {
                    index: self.args.index,
                    tag,
                    frames: self.c.frames,
                    msgs: self.c.msgs,
                    open: self.c.open,
                }));
            }
            Cmd::Final(published) => {
                let report = self.final_report(&published);
                let hists = std::mem::replace(&mut self.hists, ThreadHistograms::new());
                let _ = self
                    .out
                    .send(Input::Final(Box::new(report), Box::new(hists)));
            }
        }
    }

    /// Slow readers stop reading (no readable interest, so they cost no wake-ups) or catch up.
    fn pause_slow_readers(&mut self, pause: bool) {
        let interest = if pause {
            Interest::WRITABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        };
        for k in 0..self.conns.len() {
            if self.conns[k].group != Group::Slow || self.conns[k].state != State::Ready {
                continue;
            }
            if let Some(sock) = self.conns[k].sock.as_mut() {
                let _ = self.poll.registry().reregister(sock, Token(k), interest);
            }
            if !pause {
                self.read(k);
            }
        }
    }

    /// What this thread's connections received, judged against what was published.
    fn final_report(&self, published: &[[u64; PRIORITIES]]) -> Report {
        let c = &self.c;
        let mut groups: [GroupReport; 3] = Default::default();
        let mut open_per_room: BTreeMap<usize, u64> = BTreeMap::new();
        let mut rec = c.rec.clone();
        for conn in &self.conns {
            if conn.storm == Storm::Reconnecting {
                if conn.state == State::Failed {
                    rec.gave_up += 1;
                } else {
                    rec.waiting += 1;
                }
            }
        }
        for conn in self.conns.iter().filter(|c| c.state == State::Ready) {
            *open_per_room.entry(conn.room as usize).or_default() += 1;
            let room = published
                .get(conn.room as usize)
                .copied()
                .unwrap_or_default();
            if conn.pos.replaying() {
                rec.replaying_at_end += 1;
            }
            if conn.storm == Storm::Unrecovered {
                // Reloads by design: reported apart, not as silent loss in its group.
                rec.unrecovered_open += 1;
                rec.unrecovered_expected += room.iter().sum::<u64>();
                rec.unrecovered_unique += conn.unique.iter().map(|&n| u64::from(n)).sum::<u64>();
                rec.unrecovered_skipped += conn.skipped;
                groups[conn.group.index()].unrecovered += 1;
                continue;
            }
            let group = &mut groups[conn.group.index()];
            group.open += 1;
            for (p, report) in group.priorities.iter_mut().enumerate() {
                report.expected += room[p];
                report.unique += u64::from(conn.unique[p]);
            }
        }
        let merge = self.merge_report();
        let upstream = self.upstream_report();
        for (group, received) in groups.iter_mut().zip(&c.received) {
            for (report, &(all, duplicates, out_of_order)) in
                group.priorities.iter_mut().zip(received)
            {
                report.received = all;
                report.duplicates = duplicates;
                report.out_of_order = out_of_order;
            }
        }
        Report {
            ready: c.ready,
            open: c.open,
            closed: c.closed.clone(),
            churn_closes: c.churn_closes,
            reconnects: c.reconnects,
            frames: c.frames,
            msgs: c.msgs,
            bytes: c.bytes,
            window_frames: self.window.0,
            window_msgs: self.window.1,
            window_online_counts: self.window.2,
            groups,
            open_per_room: open_per_room.into_iter().collect(),
            foreign: c.foreign,
            decode_errors: c.decode_errors,
            no_ts: c.no_ts,
            pings_sent: c.pings_sent,
            pongs: c.pongs,
            ping_errors: c.ping_errors,
            recovery: rec,
            merge,
            upstream,
            ..Report::default()
        }
    }

    /// Upstream at the end: the thread's counts, the sends still unanswered, what each room's
    /// senders got published, and the viewers judged for it with the published sends they
    /// received (open at the end, not churners, never dropped: each has been in its room since
    /// before the first send).
    fn upstream_report(&self) -> UpstreamReport {
        let mut up = self.c.up.clone();
        up.senders = self.senders.len() as u64;
        for f in self.in_flight.values() {
            if self.conns[f.k as usize].state == State::Ready {
                up.unanswered_open += 1;
            } else {
                up.unanswered_closed += 1;
            }
        }
        up.published_per_room = self.c.up_published.iter().map(|(&r, &n)| (r, n)).collect();
        let mut judged: BTreeMap<usize, u64> = BTreeMap::new();
        for conn in &self.conns {
            if conn.state == State::Ready
                && conn.group != Group::Churn
                && conn.storm == Storm::Untouched
            {
                *judged.entry(conn.room as usize).or_default() += 1;
                up.judged_unique += u64::from(conn.up_unique);
            }
        }
        up.judged_per_room = judged.into_iter().collect();
        up
    }

    /// Writes the sends that are due, each sender in its turn (see [`Schedule`]).
    fn send_due(&mut self) {
        let mut due = std::mem::take(&mut self.due);
        self.c.up.skipped_behind += self.schedule.due(Instant::now(), &mut due);
        for &i in &due {
            let k = self.senders[i];
            if self.conns[k].state != State::Ready {
                self.c.up.skipped_not_ready += 1;
                continue;
            }
            self.send_one(k);
        }
        due.clear();
        self.due = due;
    }

    /// One `send` of a chat line into connection `k`'s room.
    fn send_one(&mut self, k: usize) {
        let seq = self.send_seq;
        self.send_seq += 1;
        let now_us = sys::unix_micros();
        let op = ClientOp::Send {
            seq,
            room: self.room_names[self.conns[k].room as usize].clone(),
            kind: self.args.send_kind.clone(),
            data: send_data(now_us, seq - SEND_SEQ_BASE).into(),
        };
        let bytes = encode_op(self.args.transport.format(), &op, self.mask(k));
        if !self.send(k, &bytes) {
            return;
        }
        let in_window = self.phase == Phase::Window;
        self.in_flight.insert(
            seq,
            InFlight {
                k: k as u32,
                sent_us: now_us,
                in_window,
            },
        );
        self.c.up.run.attempted += 1;
        if in_window {
            self.c.up.window.attempted += 1;
        }
    }

    /// The reply to a send: matched to it by `seq`, counted by outcome, timed.
    fn on_send_reply(
        &mut self,
        k: usize,
        seq: u64,
        result: &Result<(), (String, String)>,
        details: &ReplyDetails,
    ) {
        let now_us = sys::unix_micros();
        let Some(sent) = self.in_flight.remove(&seq).filter(|f| f.k as usize == k) else {
            self.c.up.unexpected_replies += 1;
            return;
        };
        let published = result.is_ok() && details.msg_seq.is_some();
        let count = |c: &mut SendCounts| {
            c.answered += 1;
            match result {
                Ok(()) if details.msg_seq.is_some() => c.published += 1,
                Ok(()) if details.not_broadcast => c.not_broadcast += 1,
                Ok(()) => c.ok_without_details += 1,
                Err((code, _)) => *c.errors.entry(code.clone()).or_default() += 1,
            }
        };
        count(&mut self.c.up.run);
        if let Err((code, message)) = result {
            let key = format!("{code}: {message}");
            *self.c.up.error_messages.entry(key).or_default() += 1;
        }
        if sent.in_window {
            count(&mut self.c.up.window);
            self.hists
                .send_reply
                .saturating_record(now_us.saturating_sub(sent.sent_us).max(1));
        }
        if published {
            *self
                .c
                .up_published
                .entry(self.conns[k].room as usize)
                .or_default() += 1;
        }
    }

    /// The merge traffic received, and every judged viewer's checks (normal-group viewers open
    /// at the end that never lost their connection) against what its room was published.
    fn merge_report(&self) -> MergeReport {
        let mut report = self.c.merge.clone();
        let Some(expect) = &self.expect else {
            return report;
        };
        for (k, (conn, view)) in self.conns.iter().zip(&self.merge_views).enumerate() {
            if conn.state != State::Ready
                || conn.group != Group::Normal
                || conn.storm != Storm::Untouched
            {
                continue;
            }
            let want = expect
                .rooms
                .get(conn.room as usize)
                .cloned()
                .unwrap_or_default();
            let check = merge::check(view, &want, expect.pk_interval_ms);
            report.add_viewer(&check, || {
                format!(
                    "viewer {} ({})",
                    self.global(k),
                    self.room_names[conn.room as usize]
                )
            });
        }
        report
    }

    fn start_more(&mut self) {
        let now = Instant::now();
        while let Some(&Reverse((due, k))) = self.resumes.peek() {
            if due > now {
                break;
            }
            self.resumes.pop();
            // A connection the drop found mid-attempt may be on its way already.
            if self.conns[k].state == State::Idle {
                self.start(k);
            }
        }
        while self.inflight < self.inflight_limit {
            if let Some(&Reverse((due, k))) = self.retry.peek() {
                if due <= now {
                    self.retry.pop();
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
        let dst = self.args.addrs[self.addr_index(k)];
        let slow = self.conns[k].group == Group::Slow;
        let recv_buffer = if slow {
            SLOW_READER_RCVBUF
        } else {
            self.args.recv_buffer
        };
        match open_socket(src, dst, recv_buffer) {
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
            let req = client_request(&self.hosts[self.addr_index(k)], "/ws", &self.ws_key(k));
            self.send(k, &req);
        } else {
            self.send_auth_join(k);
        }
    }

    fn token(&self, k: usize) -> String {
        if let Some(tokens) = &self.tokens {
            return tokens[self.local(k)].clone();
        }
        let exp = sys::unix_micros() / 1_000_000 + 86_400;
        mint(
            self.args.jwt_secret.as_bytes(),
            &Claims {
                sub: format!("u{}", self.global(k)),
                exp,
                rooms: None,
                send: None,
            },
        )
    }

    fn send_auth_join(&mut self, k: usize) {
        self.conns[k].state = State::Joining;
        if self.args.transport == Transport::NatsWs {
            // CONNECT, SUB and a PING: its PONG is the join reply.
            let lines =
                natsproto::subscribe_lines(&self.room_names[self.conns[k].room as usize], NATS_SID);
            let mut frame = Vec::with_capacity(lines.len() + 16);
            put_client_frame(&mut frame, OpCode::Binary, &lines, self.mask(k));
            self.send(k, &frame);
            return;
        }
        let format = self.args.transport.format();
        let mask = self.mask(k);
        let token = self.token(k);
        let mut bytes = encode_op(
            format,
            &ClientOp::Auth {
                seq: 1,
                token,
                since: None,
            },
            mask,
        )
        .to_vec();
        let room = self.room_names[self.conns[k].room as usize].clone();
        // A dropped viewer resumes from where it stood, as an SDK would.
        let since = match self.conns[k].storm {
            Storm::Reconnecting => self.conns[k].pos.since(&self.epochs),
            _ => None,
        };
        bytes.extend_from_slice(&encode_op(
            format,
            &ClientOp::Join {
                seq: 2,
                room,
                since,
            },
            mask,
        ));
        self.conns[k].join_sent_us = sys::unix_micros();
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
            // A short read drained the socket: on Linux's edge-triggered epoll, data arriving
            // later raises a new edge, so the read that would only say WouldBlock is skipped
            // (one syscall fewer per frame at 100k frames/s).
            if !ok || n < scratch.len() {
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
                Transport::NatsWs => {
                    let Some(frame) = self.ws_frame(k, rest)? else {
                        return Some(pos);
                    };
                    let payload = &rest[frame.payload.clone()];
                    match frame.opcode {
                        // The protocol is a byte stream: fragments and frames alike.
                        OpCode::Binary | OpCode::Text | OpCode::Continuation => {
                            self.on_nats(k, payload, now_us)?;
                        }
                        OpCode::Close | OpCode::Ping | OpCode::Pong => {
                            self.on_ws_control(k, frame.opcode, payload)?;
                        }
                    }
                    pos += frame.len;
                }
                Transport::WsJson | Transport::WsBinary => {
                    let Some(frame) = self.ws_frame(k, rest)? else {
                        return Some(pos);
                    };
                    let payload = &rest[frame.payload.clone()];
                    if !frame.fin {
                        // The edge never fragments; count and skip.
                        self.c.decode_errors += 1;
                    } else {
                        match frame.opcode {
                            OpCode::Text => self.on_payload(k, true, payload, now_us)?,
                            OpCode::Binary => self.on_payload(k, false, payload, now_us)?,
                            OpCode::Close | OpCode::Ping | OpCode::Pong => {
                                self.on_ws_control(k, frame.opcode, payload)?;
                            }
                            OpCode::Continuation => self.c.decode_errors += 1,
                        }
                    }
                    pos += frame.len;
                }
            }
        }
    }

    /// The next whole WebSocket frame at the start of `rest`: `Some(None)` when it has not all
    /// arrived, `None` when the connection is lost (a malformed or oversized frame).
    fn ws_frame(&mut self, k: usize, rest: &[u8]) -> Option<Option<ServerFrame>> {
        match parse_server_frame(rest) {
            Ok(None) => Some(None),
            Ok(Some(frame)) if frame.len > MAX_FRAME => {
                self.lost(k, format!("frame of {} bytes", frame.len));
                None
            }
            Ok(Some(frame)) => Some(Some(frame)),
            Err(e) => {
                self.lost(k, format!("ws: {e}"));
                None
            }
        }
    }

    /// A WebSocket close (the connection is lost, with its code and reason), ping (answered)
    /// or pong frame. `None` when the connection is gone.
    fn on_ws_control(&mut self, k: usize, opcode: OpCode, payload: &[u8]) -> Option<()> {
        match opcode {
            OpCode::Close => {
                let code = match payload {
                    [a, b, ..] => u16::from_be_bytes([*a, *b]),
                    _ => 1005,
                };
                let reason =
                    String::from_utf8_lossy(payload.get(2..).unwrap_or_default()).into_owned();
                self.lost(k, format!("close {code} {reason}"));
                None
            }
            OpCode::Ping => {
                let mut pong = Vec::with_capacity(payload.len() + 8);
                put_client_frame(&mut pong, OpCode::Pong, payload, self.mask(k));
                self.send(k, &pong).then_some(())
            }
            _ => Some(()),
        }
    }

    fn on_payload(&mut self, k: usize, json: bool, payload: &[u8], now_us: u64) -> Option<()> {
        if !json {
            // Binary batches are read in place: 100-message frames without an allocation.
            return match view_server_binary(payload) {
                Ok(ServerMsgView::Batch(batch)) => {
                    self.on_batch(k, batch.target, batch.iter(), now_us);
                    Some(())
                }
                Ok(ServerMsgView::Other(msg)) => self.on_server_msg(k, msg),
                Err(_) => {
                    self.c.decode_errors += 1;
                    Some(())
                }
            };
        }
        match decode_server_json(payload) {
            Ok(ServerMsg::Batch { target, msgs }) => {
                let pushes = msgs.iter().map(|m| PushRef {
                    seq: m.seq,
                    priority: m.priority,
                    kind: &m.kind,
                    data: &m.data,
                    merged: m.merged,
                    is_final: m.is_final,
                    from: m.from.as_deref(),
                    ack: m.ack,
                });
                self.on_batch(k, TargetRef::from(&target), pushes, now_us);
                Some(())
            }
            Ok(msg) => self.on_server_msg(k, msg),
            Err(_) => {
                self.c.decode_errors += 1;
                Some(())
            }
        }
    }

    /// Counts a batch's messages (unique, duplicated, out of order) and records their latency.
    fn on_batch<'a>(
        &mut self,
        k: usize,
        target: TargetRef<'_>,
        msgs: impl Iterator<Item = PushRef<'a>>,
        now_us: u64,
    ) {
        self.c.frames += 1;
        match target {
            TargetRef::Room(r) if r == self.room_names[self.conns[k].room as usize] => {}
            _ => {
                self.c.foreign += 1;
                return;
            }
        }
        let merge_checks = !self.merge_views.is_empty();
        for m in msgs {
            if m.from.is_some() {
                // A viewer's published send: apart from the load.
                self.record_upstream(k, m.seq, m.data, now_us);
                continue;
            }
            match Kind::of(m.kind).filter(|_| merge_checks) {
                Some(kind) => self.record_merge(k, kind, &m, now_us),
                None => self.record(k, m.priority, m.seq, m.data, now_us),
            }
        }
    }

    /// Counts one merge-traffic message of connection `k` apart from the load: its kind, what it
    /// stands for, its order by `seq`, the connection's [`View`], and how stale its value is.
    fn record_merge(&mut self, k: usize, kind: Kind, m: &PushRef<'_>, now_us: u64) {
        self.c.msgs += 1;
        let i = kind.index();
        let counts = &mut self.c.merge;
        counts.received[i] += 1;
        counts.stands_for[i] += u64::from(m.merged);
        counts.unmerged[i] += u64::from(m.merged == 0);
        counts.finals += u64::from(m.is_final);
        let conn = &mut self.conns[k];
        let group = conn.group;
        let (seen, caught_up) = conn.pos.on_message(m.seq);
        match seen {
            Seen::Duplicate => counts.duplicates += 1,
            Seen::OutOfOrder => counts.out_of_order += 1,
            Seen::New | Seen::Replayed => {
                let at = (now_us / 1000).saturating_sub(self.base_ms) as u32;
                let interval = self.args.pk_interval_ms.min(u64::from(u32::MAX)) as u32;
                let fed = self.merge_views[k].on_message(kind, m, at, interval);
                if fed.is_err() {
                    counts.bad_data += 1;
                }
            }
        }
        if caught_up {
            self.on_caught_up(now_us);
        }
        if seen == Seen::New && group == Group::Normal && self.phase == Phase::Window {
            if let Some(ts) = scan_ts(m.data) {
                self.hists.merge[i].saturating_record(now_us.saturating_sub(ts).max(1));
            }
        }
    }

    /// Counts one published send (a message with `from`) received by connection `k`: unique,
    /// duplicated or out of order by `seq` (it moves the position like any message of the
    /// room), and its delivery latency from the send time in its data.
    fn record_upstream(&mut self, k: usize, seq: u64, data: &[u8], now_us: u64) {
        self.c.msgs += 1;
        let up = &mut self.c.up;
        up.received += 1;
        let conn = &mut self.conns[k];
        let group = conn.group;
        let (seen, caught_up) = conn.pos.on_message(seq);
        match seen {
            Seen::New | Seen::Replayed => conn.up_unique += 1,
            Seen::Duplicate => up.duplicates += 1,
            Seen::OutOfOrder => up.out_of_order += 1,
        }
        if self.phase == Phase::Window {
            up.window_received += 1;
        }
        if seen == Seen::New && group == Group::Normal && self.phase == Phase::Window {
            match scan_ts(data) {
                Some(ts) => self
                    .hists
                    .send_delivery
                    .saturating_record(now_us.saturating_sub(ts).max(1)),
                None => up.no_ts += 1,
            }
        }
        if caught_up {
            self.on_caught_up(now_us);
        }
    }

    /// Counts one message of connection `k` (unique, duplicated, out of order by `seq`; part of
    /// a replay) and records its latency from the `ts` in its data.
    fn record(&mut self, k: usize, priority: u8, seq: u64, data: &[u8], now_us: u64) {
        self.c.msgs += 1;
        let conn = &mut self.conns[k];
        let group = conn.group;
        let p = usize::from(priority).min(PRIORITIES - 1);
        let counts = &mut self.c.received[group.index()][p];
        counts.0 += 1;
        let (seen, caught_up) = conn.pos.on_message(seq);
        match seen {
            Seen::New | Seen::Replayed => conn.unique[p] += 1,
            Seen::Duplicate => counts.1 += 1,
            Seen::OutOfOrder => counts.2 += 1,
        }
        if caught_up {
            self.on_caught_up(now_us);
        }
        let ts = scan_ts(data);
        if seen == Seen::Replayed {
            // The outage's latency, not the fan-out's: kept apart from the groups'.
            self.c.rec.replayed += 1;
            if let Some(ts) = ts {
                self.hists
                    .replay_latency
                    .saturating_record(now_us.saturating_sub(ts).max(1));
            }
        }
        let Some(ts) = ts else {
            self.c.no_ts += 1;
            return;
        };
        if seen == Seen::Replayed {
            return;
        }
        let latency = now_us.saturating_sub(ts).max(1);
        if group == Group::Normal {
            self.tick_latency.saturating_record(latency);
        }
        match self.phase {
            Phase::Window => {
                self.hists.window[group.index()][p].saturating_record(latency);
            }
            Phase::Warmup if group == Group::Normal => {
                self.hists.warmup.saturating_record(latency);
            }
            _ => {}
        }
    }

    /// `nats-ws`: one websocket frame's worth of the NATS stream. Every data frame of a joined
    /// connection counts as a frame; each `MSG` is a message, numbered by the publisher (`"n"`,
    /// from 0: its sequence is n + 1) and with the priority it drew (`"p"`). None when the
    /// connection is gone.
    fn on_nats(&mut self, k: usize, payload: &[u8], now_us: u64) -> Option<()> {
        if self.conns[k].state == State::Ready {
            self.c.frames += 1;
        }
        let mut stream = std::mem::take(&mut self.conns[k].nats);
        let fed = stream.feed(payload, |op| self.on_nats_op(k, op, now_us));
        match fed {
            Ok(true) => {
                self.conns[k].nats = stream;
                Some(())
            }
            Ok(false) => None,
            Err(e) => {
                self.c.decode_errors += 1;
                self.lost(k, format!("nats: {e}"));
                None
            }
        }
    }

    /// One NATS op; false when the connection is gone.
    fn on_nats_op(&mut self, k: usize, op: Op<'_>, now_us: u64) -> bool {
        match op {
            Op::Msg {
                subject, payload, ..
            } => {
                if subject != self.room_names[self.conns[k].room as usize].as_bytes() {
                    self.c.foreign += 1;
                    return true;
                }
                let seq = natsproto::scan_u64(payload, b"n").map_or(0, |n| n + 1);
                let priority = natsproto::scan_u64(payload, b"p")
                    .map_or(PRIORITIES as u8 - 1, |p| p.min(PRIORITIES as u64 - 1) as u8);
                self.record(k, priority, seq, payload, now_us);
                true
            }
            Op::Ping => {
                let mut pong = Vec::with_capacity(16);
                put_client_frame(&mut pong, OpCode::Binary, b"PONG\r\n", self.mask(k));
                self.send(k, &pong)
            }
            Op::Pong => {
                if self.conns[k].state == State::Joining {
                    self.on_ready(k);
                } else {
                    self.c.pongs += 1;
                }
                true
            }
            Op::Ok | Op::Info(_) => true,
            Op::Err(text) => {
                let reason = format!("nats -ERR {}", String::from_utf8_lossy(text));
                if self.conns[k].state == State::Ready {
                    self.lost(k, reason);
                } else {
                    self.fail(k, reason, true);
                }
                false
            }
        }
    }

    /// A reply or a close (batches go to `on_batch`); None when the connection is gone.
    fn on_server_msg(&mut self, k: usize, msg: ServerMsg) -> Option<()> {
        match msg {
            ServerMsg::Reply {
                seq,
                result,
                details,
            } if seq >= SEND_SEQ_BASE => self.on_send_reply(k, seq, &result, &details),
            ServerMsg::Reply {
                seq,
                result,
                details,
            } => {
                if self.conns[k].state == State::Joining && seq <= 2 {
                    match result {
                        Err((code, _)) => {
                            let what = if seq == 1 { "auth" } else { "join" };
                            // `unavailable`: nothing was subscribed; retry (PROTOCOL.md §4).
                            let retry = code == "unavailable";
                            self.fail(k, format!("{what}: {code}"), retry);
                            return None;
                        }
                        Ok(()) if seq == 2 => {
                            self.on_join_reply(k, &details);
                            self.on_ready(k);
                        }
                        Ok(()) => {}
                    }
                } else if seq <= 2 {
                    // The `auth` reply after the `join` reply (the edge answers each when the
                    // control plane confirms its channel): not a heartbeat.
                } else if result.is_ok() {
                    self.c.pongs += 1;
                } else {
                    self.c.ping_errors += 1;
                }
            }
            ServerMsg::Batch { .. } => unreachable!("batches are handled by on_batch"),
            // A room's online count: counted, to measure what the pushes add.
            ServerMsg::Room { .. } => self.c.online_counts += 1,
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

    /// The join reply moves the connection's position; a dropped viewer's is its recovery
    /// reply.
    fn on_join_reply(&mut self, k: usize, details: &ReplyDetails) {
        let now_us = sys::unix_micros();
        let position = details
            .epoch
            .as_deref()
            .map(|e| self.epochs.intern(e))
            .zip(details.last_seq);
        let conn = &mut self.conns[k];
        let dropped = conn.storm == Storm::Reconnecting;
        let resumed = dropped && conn.pos.known();
        let before = conn.pos.seq();
        let joined = conn.pos.on_join_reply(resumed, position, details.recovered);
        if !dropped {
            if let Joined::Unexpected(what) = joined {
                *self.c.rec.unexpected.entry(what.into()).or_default() += 1;
            }
            return;
        }
        let rec = &mut self.c.rec;
        rec.answered += 1;
        if resumed {
            rec.resumed += 1;
            self.hists
                .resume_reply
                .saturating_record(now_us.saturating_sub(conn.join_sent_us).max(1));
        }
        let drop_us = self.drop_at.unwrap_or(now_us);
        self.hists
            .since_drop
            .saturating_record(now_us.saturating_sub(drop_us).max(1));
        rec.last_reply_at_us = rec.last_reply_at_us.max(now_us);
        conn.storm = Storm::Unrecovered;
        match joined {
            Joined::Recovered { missed } => {
                conn.storm = Storm::Recovered;
                rec.recovered += 1;
                rec.missed += missed;
                if missed == 0 {
                    self.on_caught_up(now_us);
                }
            }
            Joined::Refused { reason, skipped } => {
                *rec.refused.entry(reason.as_str().into()).or_default() += 1;
                conn.skipped += skipped;
            }
            Joined::Fresh => {
                rec.rejoined_fresh += 1;
                conn.skipped += conn.pos.seq().saturating_sub(before);
            }
            Joined::Unexpected(what) => {
                *rec.unexpected.entry(what.into()).or_default() += 1;
            }
        }
    }

    /// A recovered viewer has everything it missed.
    fn on_caught_up(&mut self, now_us: u64) {
        let drop_us = self.drop_at.unwrap_or(now_us);
        self.hists
            .caught_up
            .saturating_record(now_us.saturating_sub(drop_us).max(1));
        let rec = &mut self.c.rec;
        rec.last_caught_up_at_us = rec.last_caught_up_at_us.max(now_us);
    }

    /// Drops every joined connection at once (an abortive close, as a network flap looks to
    /// the edge); each reconnects after its jitter and resumes with `since`.
    fn drop_all(&mut self) {
        let now = Instant::now();
        let now_us = sys::unix_micros();
        self.drops += 1;
        self.drop_at = Some(now_us);
        if self.c.rec.drop_at_us == 0 {
            self.c.rec.drop_at_us = now_us;
        }
        for k in 0..self.conns.len() {
            if self.conns[k].state != State::Ready {
                continue;
            }
            if let Some(sock) = &self.conns[k].sock {
                // RST instead of FIN: no TIME_WAIT left on the client's ports.
                let _ = socket2::SockRef::from(sock).set_linger(Some(Duration::ZERO));
            }
            self.drop_socket(k);
            let delay = reconnect_delay(self.global(k), self.drops, self.args.reconnect_jitter);
            let conn = &mut self.conns[k];
            conn.state = State::Idle;
            conn.rejoin = true;
            conn.attempts = 0;
            conn.storm = Storm::Reconnecting;
            conn.rbuf = Vec::new();
            conn.wbuf = Vec::new();
            conn.nats = natsproto::Stream::default();
            self.c.open -= 1;
            self.c.rec.dropped += 1;
            self.resumes.push(Reverse((now + delay, k)));
        }
    }

    fn on_ready(&mut self, k: usize) {
        let ms = u64::from(self.now_ms().saturating_sub(self.conns[k].setup_start_ms)).max(1);
        let conn = &mut self.conns[k];
        conn.state = State::Ready;
        if conn.wbuf.is_empty() {
            conn.wbuf = Vec::new();
        }
        if std::mem::take(&mut conn.rejoin) {
            self.c.reconnects += 1;
            self.hists.reconnect_setup_ms.saturating_record(ms);
        } else {
            self.c.ready += 1;
            self.setup_ms.saturating_record(ms);
        }
        self.inflight -= 1;
        self.c.open += 1;
    }

    /// The connection ended: a ready one is counted as closed, one in setup as a failed attempt.
    fn lost(&mut self, k: usize, reason: String) {
        if self.conns[k].state == State::Ready {
            self.drop_socket(k);
            self.conns[k].state = State::Closed;
            self.c.open -= 1;
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
        if conn.storm == Storm::Reconnecting {
            *self
                .c
                .rec
                .attempt_failures
                .entry(reason.clone())
                .or_default() += 1;
        }
        *self.c.failures.entry(reason).or_default() += 1;
        conn.rbuf = Vec::new();
        conn.wbuf = Vec::new();
        conn.nats = natsproto::Stream::default();
        if retryable && conn.attempts < self.args.retries {
            conn.attempts += 1;
            conn.state = State::Idle;
            let delay = Duration::from_millis(100 * u64::from(conn.attempts));
            self.retry.push(Reverse((Instant::now() + delay, k)));
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

    /// Closes this tick's share of the churners and queues them to connect again.
    fn churn_tick(&mut self) {
        if self.churners.is_empty() {
            return;
        }
        let per_thread = self.args.churn_rate / self.threads as f64;
        self.churn_due = (self.churn_due + per_thread * TICK.as_secs_f64()).min(1e4);
        let mut looked = 0;
        while self.churn_due >= 1.0 && looked < self.churners.len() {
            let k = self.churners[self.churn_cursor];
            self.churn_cursor = (self.churn_cursor + 1) % self.churners.len();
            looked += 1;
            if self.conns[k].state != State::Ready {
                continue;
            }
            self.churn_due -= 1.0;
            self.drop_socket(k);
            if let Some(view) = self.merge_views.get_mut(k) {
                *view = View::default();
            }
            let conn = &mut self.conns[k];
            conn.state = State::Idle;
            conn.rejoin = true;
            conn.attempts = 0;
            conn.pos.reset();
            conn.storm = Storm::Untouched;
            conn.skipped = 0;
            conn.unique = [0; PRIORITIES];
            conn.up_unique = 0;
            conn.rbuf = Vec::new();
            conn.wbuf = Vec::new();
            conn.nats = natsproto::Stream::default();
            self.c.open -= 1;
            self.c.churn_closes += 1;
            self.pending.push_back(k);
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
                let frame = if self.args.transport == Transport::NatsWs {
                    let mut f = Vec::with_capacity(16);
                    put_client_frame(&mut f, OpCode::Binary, b"PING\r\n", self.mask(k));
                    f.into()
                } else {
                    encode_op(format, &ClientOp::Ping { seq: self.ping_seq }, self.mask(k))
                };
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

/// Receive buffer of a slow reader's socket (set before connecting, so the window stays small):
/// a phone on a bad network, not the megabytes Linux would autotune to on loopback.
const SLOW_READER_RCVBUF: usize = 32 * 1024;

/// A non-blocking socket from `src` connecting to `dst`; `recv_buffer` 0 keeps the host's
/// default receive buffer.
fn open_socket(src: Ipv4Addr, dst: SocketAddr, recv_buffer: usize) -> io::Result<TcpStream> {
    let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    sock.set_nonblocking(true)?;
    if recv_buffer > 0 {
        sock.set_recv_buffer_size(recv_buffer)?;
    }
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
}
