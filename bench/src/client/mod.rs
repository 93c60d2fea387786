//! A client process (`roomcast-bench client`, started by the coordinator): a few threads, each
//! running an [`event_loop`] over its share of the connections, and the main thread, which relays
//! the coordinator's commands (stdin) to them and merges what they report into one line per
//! answer (stdout, [`ClientMsg`]): per-thread counters are added, per-thread HDR histograms merged
//! with `add`.

use std::io::{self, BufRead, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use mio::{Poll, Token, Waker};
use roomcast_proto::client::WireFormat;
use roomcast_proto::message::PRIORITIES;

use crate::dist::RoomDist;
use crate::merge::Expect;
use crate::msgs::{
    add_counts, histogram_pairs, new_latency_histogram, new_tick_histogram, ClientMsg, Connected,
    Report, Snap, Tick,
};
use crate::sys;

mod event_loop;
mod position;
mod upstream;

use event_loop::Loop;

/// How the clients talk to the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// WebSocket, JSON text frames.
    WsJson,
    /// WebSocket, binary frames.
    WsBinary,
    /// Raw TCP, length-prefixed binary frames (cheapest for the client).
    Tcp,
    /// NATS's text protocol in binary WebSocket frames (`--server nats`: subscribe to the
    /// room's subject, count `MSG`s).
    NatsWs,
}

impl Transport {
    pub fn format(self) -> WireFormat {
        match self {
            Transport::WsJson => WireFormat::WsJson,
            // NATS frames are not roomcast's; the nearest for the floor's frame.
            Transport::WsBinary | Transport::NatsWs => WireFormat::WsBinary,
            Transport::Tcp => WireFormat::Tcp,
        }
    }

    pub fn is_ws(self) -> bool {
        self != Transport::Tcp
    }

    pub fn name(self) -> &'static str {
        match self {
            Transport::WsJson => "ws-json",
            Transport::WsBinary => "ws-binary",
            Transport::Tcp => "tcp",
            Transport::NatsWs => "nats-ws",
        }
    }
}

/// The hidden `client` subcommand: one client process, started by `run`.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    #[arg(long)]
    pub index: usize,
    #[arg(long)]
    pub conns: usize,
    /// Global index of this process's first connection (rooms, groups and user ids derive from it).
    #[arg(long)]
    pub first: usize,
    #[arg(long, value_enum)]
    pub transport: Transport,
    /// Edge addresses; connection i dials address i mod N.
    #[arg(long, value_delimiter = ',', required = true)]
    pub addrs: Vec<SocketAddr>,
    #[arg(long)]
    pub rooms: usize,
    #[arg(long, value_enum)]
    pub room_dist: RoomDist,
    #[arg(long)]
    pub zipf_exponent: f64,
    #[arg(long)]
    pub slow_readers: f64,
    #[arg(long)]
    pub churn: f64,
    /// Reconnects per second of this process's churners.
    #[arg(long)]
    pub churn_rate: f64,
    /// First source address; connection j of this process uses src_first + j / conns_per_ip.
    #[arg(long)]
    pub src_first: Ipv4Addr,
    #[arg(long)]
    pub conns_per_ip: usize,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    #[arg(long, default_value_t = 500)]
    pub inflight: usize,
    #[arg(long)]
    pub jwt_secret: String,
    /// Tokens to use instead of minting them, one per line, line i for global connection i.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    #[arg(long, default_value_t = 20)]
    pub ping_secs: u64,
    /// SO_RCVBUF of each socket (0: the host default).
    #[arg(long, default_value_t = 0)]
    pub recv_buffer: usize,
    /// Sleep after a busy poll, microseconds (0: none).
    #[arg(long, default_value_t = 0)]
    pub poll_interval_us: u64,
    #[arg(long, default_value_t = 5)]
    pub retries: u8,
    /// After the `drop` command each dropped connection reconnects after a delay drawn
    /// uniformly from [0, this) seconds (from a hash of its index: runs repeat).
    #[arg(long, default_value_t = 1.0)]
    pub reconnect_jitter: f64,
    /// Merge traffic is published: keep every connection's [`crate::merge::View`] and judge it
    /// against the coordinator's `expect` before the final report.
    #[arg(long)]
    pub merge_checks: bool,
    /// The PK key's merge interval (ms), for the spacing of the updates.
    #[arg(long, default_value_t = 2000)]
    pub pk_interval_ms: u64,
    /// Upstream: this many of the run's --conns-total connections send (global connection i is
    /// a sender when `dist::is_sender(i, senders, conns_total)`: spread evenly over the indexes).
    #[arg(long, default_value_t = 0)]
    pub senders: usize,
    /// Connections of the whole run (all client processes), for choosing the senders.
    #[arg(long, default_value_t = 0)]
    pub conns_total: usize,
    /// Sends per second of each sender, from the warm-up to the end of the measured window.
    #[arg(long, default_value_t = 1.0)]
    pub sends_per_sender_per_s: f64,
    /// The `kind` of the sends.
    #[arg(long, default_value = "chat")]
    pub send_kind: String,
}

/// The token of each loop's waker.
const WAKE: Token = Token(usize::MAX);

/// `base` + `n` as an IPv4 address (127.0.0.255 + 1 = 127.0.1.0 — all of 127/8 is loopback).
pub fn ip_add(base: Ipv4Addr, n: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base).wrapping_add(n as u32))
}

/// What the main thread tells the loops.
enum Cmd {
    Warmup,
    Start,
    End,
    Snap(String),
    /// Drop every joined connection at once; each reconnects after its jitter and resumes with
    /// `since`.
    DropAll,
    /// What the merge traffic published per room (before `Final`).
    Expect(Arc<Expect>),
    /// Messages published per room and priority.
    Final(Arc<Vec<[u64; PRIORITIES]>>),
}

/// What the threads and the stdin reader tell the process's main thread.
enum Input {
    Line(String),
    Eof,
    Connected(Box<Connected>, Histogram<u64>),
    Tick(usize, Tick, Histogram<u64>),
    Snap(Snap),
    Final(Box<Report>, Box<ThreadHistograms>),
}

/// The histograms of one thread, merged with `add` in the process.
struct ThreadHistograms {
    /// [group][priority], inside the measured window.
    window: [[Histogram<u64>; PRIORITIES]; 3],
    warmup: Histogram<u64>,
    reconnect_setup_ms: Histogram<u64>,
    /// The reconnect storm's: join → reply, drop → reply, drop → caught up, replayed messages'
    /// latency (µs).
    resume_reply: Histogram<u64>,
    since_drop: Histogram<u64>,
    caught_up: Histogram<u64>,
    replay_latency: Histogram<u64>,
    /// Merge traffic per kind: publish (the newest merged message's `ts`) → received, normal
    /// group, in the window.
    merge: [Histogram<u64>; 3],
    /// Upstream: send written → reply read (sends written in the window); send written → a
    /// viewer read the published message (normal group, in the window).
    send_reply: Histogram<u64>,
    send_delivery: Histogram<u64>,
}

impl ThreadHistograms {
    fn new() -> ThreadHistograms {
        ThreadHistograms {
            window: std::array::from_fn(|_| std::array::from_fn(|_| new_latency_histogram())),
            warmup: new_latency_histogram(),
            reconnect_setup_ms: new_latency_histogram(),
            resume_reply: new_latency_histogram(),
            since_drop: new_latency_histogram(),
            caught_up: new_latency_histogram(),
            replay_latency: new_latency_histogram(),
            merge: std::array::from_fn(|_| new_latency_histogram()),
            send_reply: new_latency_histogram(),
            send_delivery: new_latency_histogram(),
        }
    }

    /// The storm's histograms, in [`ThreadHistograms::add`]'s order.
    fn storm(&self) -> [&Histogram<u64>; 4] {
        [
            &self.resume_reply,
            &self.since_drop,
            &self.caught_up,
            &self.replay_latency,
        ]
    }

    fn add(&mut self, o: &ThreadHistograms) {
        for (a, b) in self
            .window
            .iter_mut()
            .flatten()
            .zip(o.window.iter().flatten())
        {
            a.add(b).expect("same histogram bounds");
        }
        self.warmup.add(&o.warmup).expect("same histogram bounds");
        self.reconnect_setup_ms
            .add(&o.reconnect_setup_ms)
            .expect("same histogram bounds");
        let [a, b, c, d] = o.storm();
        for (mine, theirs) in [
            (&mut self.resume_reply, a),
            (&mut self.since_drop, b),
            (&mut self.caught_up, c),
            (&mut self.replay_latency, d),
        ] {
            mine.add(theirs).expect("same histogram bounds");
        }
        for (mine, theirs) in self.merge.iter_mut().zip(&o.merge) {
            mine.add(theirs).expect("same histogram bounds");
        }
        self.send_reply
            .add(&o.send_reply)
            .expect("same histogram bounds");
        self.send_delivery
            .add(&o.send_delivery)
            .expect("same histogram bounds");
    }

    /// Puts the histograms into `report` as (value, count) pairs.
    fn fill(&self, report: &mut Report) {
        for (group, hists) in report.groups.iter_mut().zip(&self.window) {
            for (p, h) in group.priorities.iter_mut().zip(hists) {
                p.latency_us = histogram_pairs(h);
            }
        }
        report.warmup_latency_us = histogram_pairs(&self.warmup);
        report.reconnect_setup_ms = histogram_pairs(&self.reconnect_setup_ms);
        let r = &mut report.recovery;
        r.reply_us = histogram_pairs(&self.resume_reply);
        r.since_drop_us = histogram_pairs(&self.since_drop);
        r.caught_up_us = histogram_pairs(&self.caught_up);
        r.replay_latency_us = histogram_pairs(&self.replay_latency);
        for (pairs, h) in report.merge.latency_us.iter_mut().zip(&self.merge) {
            *pairs = histogram_pairs(h);
        }
        report.upstream.reply_us = histogram_pairs(&self.send_reply);
        report.upstream.delivery_us = histogram_pairs(&self.send_delivery);
    }
}

pub fn run(args: ClientArgs) -> i32 {
    let (fd_soft, fd_hard) = sys::raise_nofile();
    let threads = args.threads.max(1);
    let ips = args.conns.div_ceil(args.conns_per_ip.max(1)).max(1);
    let addrs: Vec<String> = args.addrs.iter().map(ToString::to_string).collect();
    eprintln!(
        "client {}: pid {}, fd limit soft {fd_soft} hard {fd_hard}; {} connections to {} ({}) over \
         {threads} threads, source addresses {}..={}",
        args.index,
        std::process::id(),
        args.conns,
        addrs.join(","),
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
    if args.addrs.is_empty() {
        eprintln!("client {}: no address to connect to", args.index);
        return 2;
    }
    let tokens = match &args.token_file {
        None => None,
        Some(path) => match read_tokens(path, args.first, args.conns) {
            Ok(t) => Some(Arc::new(t)),
            Err(e) => {
                eprintln!("client {}: {e}", args.index);
                return 2;
            }
        },
    };
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
        let tokens = tokens.clone();
        std::thread::Builder::new()
            .name(format!("client-{t}"))
            .spawn(move || Loop::new(t, threads, a, tokens, poll, cmd_rx, out).run())
            .expect("spawn client thread");
        workers.push((cmd_tx, waker));
    }
    {
        let tx = in_tx.clone();
        std::thread::spawn(move || {
            for line in io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.send(Input::Line(line)).is_err() {
                    return;
                }
            }
            let _ = tx.send(Input::Eof);
        });
    }
    drop(in_tx);
    Process {
        args: &args,
        fd: (fd_soft, fd_hard),
        threads,
        workers,
        connected: Vec::new(),
        connected_setup: Histogram::new_with_bounds(1, 3_600_000, 3).expect("histogram bounds"),
        ticks: vec![(Tick::default(), false); threads],
        tick_latency: new_tick_histogram(),
        snaps: Vec::new(),
        finals: Vec::new(),
    }
    .serve(&in_rx)
}

/// Line `first + j` of the token file is the token of this process's connection j.
fn read_tokens(path: &std::path::Path, first: usize, n: usize) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let tokens: Vec<String> = text
        .lines()
        .skip(first)
        .take(n)
        .map(str::to_owned)
        .collect();
    if tokens.len() < n {
        return Err(format!(
            "{} holds {} tokens from line {first}; {n} needed",
            path.display(),
            tokens.len()
        ));
    }
    Ok(tokens)
}

/// The process's main thread: relays commands to the threads and merges what they send back.
struct Process<'a> {
    args: &'a ClientArgs,
    fd: (u64, u64),
    threads: usize,
    workers: Vec<(Sender<Cmd>, Arc<Waker>)>,
    connected: Vec<Connected>,
    connected_setup: Histogram<u64>,
    /// Each thread's newest tick, and whether it came since the last process tick.
    ticks: Vec<(Tick, bool)>,
    /// Latency of ticks received since the last one sent to the coordinator.
    tick_latency: Histogram<u64>,
    snaps: Vec<Snap>,
    finals: Vec<(Report, ThreadHistograms)>,
}

impl Process<'_> {
    fn serve(mut self, inputs: &Receiver<Input>) -> i32 {
        while let Ok(input) = inputs.recv() {
            match input {
                Input::Eof => return 0,
                Input::Line(line) => {
                    if !self.command(&line) {
                        return 0;
                    }
                }
                Input::Connected(c, setup) => self.on_connected(*c, &setup),
                Input::Tick(t, tick, latency) => self.on_tick(t, tick, &latency),
                Input::Snap(s) => self.on_snap(s),
                Input::Final(r, h) => self.on_final(*r, *h),
            }
        }
        0
    }

    /// Handles one coordinator command; false on `exit`.
    fn command(&mut self, line: &str) -> bool {
        let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
        match cmd {
            "warmup" => self.broadcast(&|| Cmd::Warmup),
            "start" => self.broadcast(&|| Cmd::Start),
            "end" => self.broadcast(&|| Cmd::End),
            "drop" => self.broadcast(&|| Cmd::DropAll),
            "snap" => self.broadcast(&|| Cmd::Snap(rest.to_string())),
            "expect" => match serde_json::from_str::<Expect>(rest) {
                Ok(expect) => {
                    let expect = Arc::new(expect);
                    self.broadcast(&|| Cmd::Expect(Arc::clone(&expect)));
                }
                Err(e) => eprintln!("client {}: a bad expect ({e})", self.args.index),
            },
            "final" => {
                let published: Vec<[u64; PRIORITIES]> =
                    serde_json::from_str(rest).unwrap_or_default();
                let published = Arc::new(published);
                self.broadcast(&|| Cmd::Final(Arc::clone(&published)));
            }
            "exit" => return false,
            "" => {}
            other => eprintln!("client {}: unknown command {other:?}", self.args.index),
        }
        true
    }

    fn broadcast(&self, cmd: &dyn Fn() -> Cmd) {
        for (tx, waker) in &self.workers {
            let _ = tx.send(cmd());
            let _ = waker.wake();
        }
    }

    /// Once every thread has ticked, sends their sum: the counts of one instant.
    fn on_tick(&mut self, t: usize, tick: Tick, latency: &Histogram<u64>) {
        self.ticks[t] = (tick, true);
        self.tick_latency
            .add(latency)
            .expect("same histogram bounds");
        if !self.ticks.iter().all(|(_, fresh)| *fresh) {
            return;
        }
        let mut sum = Tick {
            index: self.args.index,
            at_us: sys::unix_micros(),
            latency_us: histogram_pairs(&self.tick_latency),
            ..Tick::default()
        };
        for (t, fresh) in &mut self.ticks {
            sum.open += t.open;
            sum.frames += t.frames;
            sum.msgs += t.msgs;
            sum.reconnects += t.reconnects;
            sum.sends += t.sends;
            sum.send_replies += t.send_replies;
            *fresh = false;
        }
        self.tick_latency.reset();
        emit(&ClientMsg::Tick(sum));
    }

    fn on_connected(&mut self, c: Connected, setup: &Histogram<u64>) {
        self.connected_setup
            .add(setup)
            .expect("same histogram bounds");
        self.connected.push(c);
        if self.connected.len() < self.threads {
            return;
        }
        let mut all = Connected {
            index: self.args.index,
            pid: std::process::id(),
            fd_soft: self.fd.0,
            fd_hard: self.fd.1,
            target: self.args.conns,
            setup_ms: histogram_pairs(&self.connected_setup),
            ..Connected::default()
        };
        for c in self.connected.drain(..) {
            all.ready += c.ready;
            all.failed += c.failed;
            add_counts(&mut all.failures, &c.failures);
            all.connect_secs = all.connect_secs.max(c.connect_secs);
        }
        emit(&ClientMsg::Connected(all));
    }

    fn on_snap(&mut self, s: Snap) {
        self.snaps.push(s);
        if self.snaps.len() < self.threads {
            return;
        }
        let mut all = Snap {
            index: self.args.index,
            tag: self.snaps[0].tag.clone(),
            ..Snap::default()
        };
        for s in self.snaps.drain(..) {
            all.frames += s.frames;
            all.msgs += s.msgs;
            all.open += s.open;
        }
        emit(&ClientMsg::Snap(all));
    }

    fn on_final(&mut self, r: Report, h: ThreadHistograms) {
        self.finals.push((r, h));
        if self.finals.len() < self.threads {
            return;
        }
        let mut all = Report::default();
        let mut hists = ThreadHistograms::new();
        for (r, h) in self.finals.drain(..) {
            hists.add(&h);
            all.merge(&r);
        }
        hists.fill(&mut all);
        all.cpu_secs = sys::self_cpu_secs();
        all.rss = sys::proc_mem(std::process::id()).map_or(0, |m| m.rss);
        emit(&ClientMsg::Report(Box::new(all)));
    }
}

fn emit(msg: &ClientMsg) {
    let line = serde_json::to_string(msg).expect("serialise client message");
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_continue_past_255() {
        assert_eq!(
            ip_add(Ipv4Addr::new(127, 0, 0, 254), 3),
            Ipv4Addr::new(127, 0, 1, 1)
        );
    }
}
