//! `roomcast-publish-bench`: load for the control plane's publish API.
//!
//! * `--mode throughput` (default): `--concurrency` keep-alive connections each POST
//!   `/v1/messages` batches of `--batch` messages (`--data-bytes` of JSON each, spread over
//!   `--rooms` rooms) as fast as the API answers, for `--seconds`. Each room has
//!   `--subscribers-per-room` raw-TCP viewers on an edge (so every message really travels control
//!   → link → edge → viewer); they count what arrives and any sequence gaps.
//! * `--mode latency`: one viewer in one room; one message every `--interval-ms` through
//!   `POST /v1/rooms/{room}/messages`, carrying its send time; reports publish → receive latency
//!   (same clock) and the HTTP round trip.
//!
//! Run both at once (two processes) to see latency under publish load. `--watch-pid` reports
//! the CPU the control-plane process used during the run.

mod api;
mod subscriber;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use hyper::Method;
use serde::Deserialize;

use api::{Endpoint, Error};
use subscriber::{Received, Subscriber};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Throughput,
    Latency,
}

#[derive(Debug, Parser)]
#[command(
    name = "roomcast-publish-bench",
    about = "Publish load and publish→receive latency through the control plane's API"
)]
struct Args {
    /// The control plane's API.
    #[arg(long, default_value = "http://127.0.0.1:9090")]
    url: String,
    /// API key (bearer).
    #[arg(long, env = "ROOMCAST_API_KEY", default_value = roomcast_control::config::DEV_API_KEY)]
    api_key: String,
    #[arg(long, value_enum, default_value_t = Mode::Throughput)]
    mode: Mode,
    /// How long to publish, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Throughput: messages per POST /v1/messages.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Throughput: concurrent publisher connections.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Throughput: rooms the messages are spread over.
    #[arg(long, default_value_t = 10)]
    rooms: usize,
    /// Size of each message's `data` JSON, in bytes.
    #[arg(long, default_value_t = 100)]
    data_bytes: usize,
    /// Throughput: target messages per second over all connections (0 = as fast as the API
    /// answers).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Throughput: raw-TCP viewers per room (0 = none: the control plane then sends nothing on).
    #[arg(long, default_value_t = 1)]
    subscribers_per_room: usize,
    /// Message priority (default: 3 for throughput, 0 for latency — priority 0 is flushed by the
    /// edge at once instead of waiting for the room's tick).
    #[arg(long)]
    priority: Option<u8>,
    /// Latency: interval between probes, in milliseconds.
    #[arg(long, default_value_t = 10)]
    interval_ms: u64,
    /// The edge's raw TCP address for viewers (default: the first from /v1/dispatch).
    #[arg(long)]
    edge_tcp: Option<SocketAddr>,
    /// Prefix of the room names used.
    #[arg(long, default_value = "bench")]
    room_prefix: String,
    /// PID of the control-plane process: report its CPU time during the run.
    #[arg(long)]
    watch_pid: Option<u32>,
    /// Threads of this tool's runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(error) = runtime.block_on(run(args)) {
        eprintln!("roomcast-publish-bench: {error}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), Error> {
    let endpoint = Endpoint::parse(&args.url, &args.api_key)?;
    match args.mode {
        Mode::Throughput => throughput(&args, &endpoint).await,
        Mode::Latency => latency(&args, &endpoint).await,
    }
}

/// Connects `per_room` viewers to each room and waits until the control plane counts them.
async fn subscribe(
    args: &Args,
    endpoint: &Endpoint,
    rooms: &[String],
    per_room: usize,
) -> Result<Vec<Subscriber>, Error> {
    let mut api = endpoint.connect().await?;
    let edge = match args.edge_tcp {
        Some(addr) => addr,
        None => {
            let dispatch = api
                .json(Method::GET, "/v1/dispatch?transport=tcp", None)
                .await?;
            dispatch["addresses"][0]
                .as_str()
                .ok_or("dispatch listed no edge")?
                .parse()?
        }
    };
    let mut subs = Vec::new();
    for (r, room) in rooms.iter().enumerate() {
        for i in 0..per_room {
            let request =
                serde_json::json!({"user": format!("{}-viewer-{r}-{i}", args.room_prefix)});
            let token = api
                .json(
                    Method::POST,
                    "/v1/tokens",
                    Some(Bytes::from(request.to_string())),
                )
                .await?;
            let token = token["token"].as_str().ok_or("no token")?;
            subs.push(Subscriber::join(edge, token, room).await?);
        }
    }
    // Membership reaches the control plane with the edge's next load report (≤ 1 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    for room in rooms {
        loop {
            let view = api
                .json(Method::GET, &format!("/v1/rooms/{room}"), None)
                .await?;
            if view["online"].as_u64().unwrap_or(0) >= per_room as u64 {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("the control plane never saw the viewers of {room}").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(subs)
}

/// JSON text of exactly `len` bytes (at least 12), shaped `{"pad":"xxx…"}`.
fn padded_data(len: usize) -> String {
    let pad = len.saturating_sub(10).max(1);
    format!("{{\"pad\":\"{}\"}}", "x".repeat(pad))
}

#[derive(Deserialize)]
struct BatchResults {
    results: Vec<Outcome>,
}

#[derive(Deserialize)]
struct Outcome {
    seq: Option<u64>,
    delivered_edges: Option<u64>,
}

#[derive(Default)]
struct Published {
    requests: AtomicU64,
    messages: AtomicU64,
    rejected: AtomicU64,
    deliveries: AtomicU64,
    http_errors: AtomicU64,
}

async fn throughput(args: &Args, endpoint: &Endpoint) -> Result<(), Error> {
    let rooms: Vec<String> = (0..args.rooms.max(1))
        .map(|r| format!("{}-{r}", args.room_prefix))
        .collect();
    let subs = subscribe(args, endpoint, &rooms, args.subscribers_per_room).await?;
    let priority = args.priority.unwrap_or(3);
    let data = padded_data(args.data_bytes);
    let messages: Vec<String> = (0..args.batch)
        .map(|i| {
            format!(
                r#"{{"room":"{}","priority":{priority},"kind":"bench","data":{data}}}"#,
                rooms[i % rooms.len()]
            )
        })
        .collect();
    let body = Bytes::from(format!(r#"{{"messages":[{}]}}"#, messages.join(",")));
    println!(
        "publishing: {} connections × batches of {} messages ({} B data, {} B per request) to {} rooms × {} viewers for {} s",
        args.concurrency,
        args.batch,
        data.len(),
        body.len(),
        rooms.len(),
        args.subscribers_per_room,
        args.seconds
    );

    let received = Arc::new(Received::default());
    let start = Instant::now();
    let until = start + Duration::from_secs(args.seconds);
    // Viewers keep reading a little longer, for the last ticks to arrive.
    let drain = until + Duration::from_millis(1_500);
    let readers: Vec<_> = subs
        .into_iter()
        .map(|s| tokio::spawn(s.run(Arc::clone(&received), drain, None)))
        .collect();
    let cpu_before = args.watch_pid.and_then(cpu_ticks);
    let published = Arc::new(Published::default());
    let mut publishers = Vec::new();
    let connections = args.concurrency.max(1);
    // Paced: each connection sends one batch per period, so together they make `rate`.
    let period = (args.rate > 0).then(|| {
        Duration::from_secs_f64(args.batch as f64 * connections as f64 / args.rate as f64)
    });
    for c in 0..connections {
        let mut conn = endpoint.connect().await?;
        let body = body.clone();
        let published = Arc::clone(&published);
        let mut pace = period.map(|p| {
            // Staggered starts spread the connections' batches over the period.
            let first = tokio::time::Instant::now() + p.mul_f64(c as f64 / connections as f64);
            let mut tick = tokio::time::interval_at(first, p);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        });
        publishers.push(tokio::spawn(async move {
            let mut rtt = Histogram::<u64>::new(3).expect("histogram");
            while Instant::now() < until {
                if let Some(pace) = pace.as_mut() {
                    pace.tick().await;
                    if Instant::now() >= until {
                        break;
                    }
                }
                let sent = Instant::now();
                match conn
                    .call(Method::POST, "/v1/messages", Some(body.clone()))
                    .await
                {
                    Ok((status, bytes)) if status.is_success() => {
                        let _ = rtt.record(sent.elapsed().as_micros() as u64);
                        let results: BatchResults = match serde_json::from_slice(&bytes) {
                            Ok(r) => r,
                            Err(_) => {
                                published.http_errors.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                        };
                        let mut ok = 0;
                        let mut deliveries = 0;
                        for outcome in &results.results {
                            if outcome.seq.is_some() {
                                ok += 1;
                                deliveries += outcome.delivered_edges.unwrap_or(0);
                            }
                        }
                        published.requests.fetch_add(1, Ordering::Relaxed);
                        published.messages.fetch_add(ok, Ordering::Relaxed);
                        published
                            .rejected
                            .fetch_add(results.results.len() as u64 - ok, Ordering::Relaxed);
                        published
                            .deliveries
                            .fetch_add(deliveries, Ordering::Relaxed);
                    }
                    Ok((status, bytes)) => {
                        eprintln!("HTTP {status}: {}", String::from_utf8_lossy(&bytes));
                        published.http_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) => {
                        eprintln!("request failed: {error}");
                        published.http_errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
            rtt
        }));
    }
    let mut rtt = Histogram::<u64>::new(3).expect("histogram");
    for p in publishers {
        rtt.add(p.await?)?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_before.zip(args.watch_pid.and_then(cpu_ticks));
    for r in readers {
        r.await?;
    }
    let msgs = published.messages.load(Ordering::Relaxed);
    let requests = published.requests.load(Ordering::Relaxed);
    let got = received.messages.load(Ordering::Relaxed);
    println!(
        "published {msgs} messages in {requests} requests over {elapsed:.2} s: {:.0} msg/s, {:.0} requests/s",
        msgs as f64 / elapsed,
        requests as f64 / elapsed
    );
    println!(
        "request round trip (µs): p50 {} p90 {} p99 {} max {}",
        rtt.value_at_quantile(0.5),
        rtt.value_at_quantile(0.9),
        rtt.value_at_quantile(0.99),
        rtt.max()
    );
    println!(
        "edge deliveries (sum of delivered_edges) {}, rejected entries {}, HTTP errors {}",
        published.deliveries.load(Ordering::Relaxed),
        published.rejected.load(Ordering::Relaxed),
        published.http_errors.load(Ordering::Relaxed)
    );
    if args.subscribers_per_room > 0 {
        let expected = msgs * args.subscribers_per_room as u64;
        println!(
            "viewers received {got} of {expected} messages ({:.3} %) in {} frames; sequence gaps {}",
            100.0 * got as f64 / expected.max(1) as f64,
            received.frames.load(Ordering::Relaxed),
            received.gaps.load(Ordering::Relaxed)
        );
    }
    if let (Some((before, after)), Some(pid)) = (cpu, args.watch_pid) {
        let seconds = (after - before) as f64 / clock_ticks_per_second();
        println!(
            "process {pid} used {seconds:.2} CPU s ({:.2} cores); {:.2} µs of CPU per published message",
            seconds / elapsed,
            seconds * 1e6 / msgs.max(1) as f64
        );
    }
    Ok(())
}

async fn latency(args: &Args, endpoint: &Endpoint) -> Result<(), Error> {
    let room = format!("{}-latency", args.room_prefix);
    let mut subs = subscribe(args, endpoint, std::slice::from_ref(&room), 1).await?;
    let viewer = subs.pop().expect("one viewer");
    let priority = args.priority.unwrap_or(0);
    let clock = Instant::now();
    let received = Arc::new(Received::default());
    let until = clock + Duration::from_secs(args.seconds);
    let reader = tokio::spawn(viewer.run(
        Arc::clone(&received),
        until + Duration::from_secs(2),
        Some(clock),
    ));
    let mut conn = endpoint.connect().await?;
    let path = format!("/v1/rooms/{room}/messages");
    let pad = "x".repeat(args.data_bytes.saturating_sub(30));
    let mut rtt = Histogram::<u64>::new(3).expect("histogram");
    let mut tick = tokio::time::interval(Duration::from_millis(args.interval_ms.max(1)));
    let mut sent = 0u64;
    println!(
        "probing: one message every {} ms for {} s to {room}, priority {priority}",
        args.interval_ms, args.seconds
    );
    while Instant::now() < until {
        tick.tick().await;
        let t_us = clock.elapsed().as_micros() as u64;
        let body = format!(
            r#"{{"priority":{priority},"kind":"probe","data":{{"t_us":{t_us},"pad":"{pad}"}}}}"#
        );
        let start = Instant::now();
        let (status, bytes) = conn
            .call(Method::POST, &path, Some(Bytes::from(body)))
            .await?;
        if !status.is_success() {
            return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes)).into());
        }
        let _ = rtt.record(start.elapsed().as_micros() as u64);
        sent += 1;
    }
    reader.await?;
    let latency = received
        .latency_us
        .lock()
        .await
        .take()
        .unwrap_or_else(|| Histogram::new(3).expect("histogram"));
    println!(
        "received {} of {sent} probes; sequence gaps {}",
        latency.len(),
        received.gaps.load(Ordering::Relaxed)
    );
    let row = |name: &str, h: &Histogram<u64>| {
        println!(
            "{name} (µs): p50 {} p90 {} p99 {} p99.9 {} max {}",
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max()
        );
    };
    row("publish → viewer received", &latency);
    row("HTTP publish round trip   ", &rtt);
    Ok(())
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// `/proc/<pid>/stat` counts in USER_HZ, which Linux fixes at 100 for user space.
fn clock_ticks_per_second() -> f64 {
    100.0
}
