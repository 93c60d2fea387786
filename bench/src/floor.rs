//! `roomcast-bench floor`: the physical floor the edge is compared to. One pre-encoded batch frame
//! (the engine's own encoding) is written with one vectored syscall to each of N loopback TCP
//! connections, round after round, while a reader thread drains the other ends. Reported: CPU
//! nanoseconds (getrusage of the writing thread) per write — on loopback that includes the
//! kernel's delivery to the receiving socket, exactly as it does for the edge.

use std::io::{self, Read};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use mio::{Events, Interest, Poll, Token};
use roomcast_proto::client::encode_batch;
use roomcast_proto::message::{PushMessage, Target};
use std::path::PathBuf;

use crate::client::Transport;
use crate::dist::room_name;
use crate::publish::message_data;
use crate::sys;

/// `roomcast-bench floor`.
#[derive(Args, Debug, Clone)]
pub struct FloorArgs {
    /// Loopback TCP connections (each takes two fds in this process).
    #[arg(long, default_value_t = 5000)]
    pub conns: usize,
    /// Payload of the frame's one message, bytes (the frame adds the batch header).
    #[arg(long, default_value_t = 128)]
    pub payload: usize,
    /// Rounds: each round writes the frame once to every connection (more while the writer has
    /// used under 0.1 s of CPU, which the thread clock's 4 ms ticks could not measure well).
    #[arg(long, default_value_t = 200)]
    pub iters: usize,
    /// Syscall used for the writes: writev, or sendmsg with MSG_NOSIGNAL (what the edge's epoll
    /// driver uses).
    #[arg(long, value_enum, default_value_t = Syscall::Writev)]
    pub syscall: Syscall,
    /// Wire format of the frame.
    #[arg(long, value_enum, default_value_t = Transport::Tcp)]
    pub transport: Transport,
    /// Split the frame into this many iovecs (the edge writes a header and a shared body).
    #[arg(long, default_value_t = 1)]
    pub iovecs: usize,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Syscall {
    Writev,
    Sendmsg,
}

/// What one floor measurement found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FloorResult {
    pub conns: usize,
    pub iters: usize,
    pub payload: usize,
    pub frame_bytes: usize,
    pub iovecs: usize,
    pub syscall: String,
    pub writes: u64,
    pub would_block: u64,
    pub partial: u64,
    pub bytes_written: u64,
    pub bytes_read: u64,
    pub writer_cpu_secs: f64,
    pub wall_secs: f64,
    pub cpu_ns_per_write: f64,
    pub wall_ns_per_write: f64,
    pub reader_cpu_ns_per_write: f64,
}

pub fn run(args: FloorArgs) -> i32 {
    let (soft, hard) = sys::raise_nofile();
    eprintln!("floor: fd limit soft {soft} hard {hard}");
    let r = match measure(&args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("floor: {e}");
            return 1;
        }
    };
    println!(
        "floor: {} conns x {} rounds, {}-byte frame ({} payload), {} iovec(s), {}",
        r.conns, r.iters, r.frame_bytes, r.payload, r.iovecs, r.syscall
    );
    println!(
        "  writes completed        {} ({} would-block skipped, {} partial)",
        r.writes, r.would_block, r.partial
    );
    println!(
        "  writer CPU              {:.3} s over {:.3} s wall",
        r.writer_cpu_secs, r.wall_secs
    );
    println!(
        "  CPU per write           {:.0} ns   (wall {:.0} ns)",
        r.cpu_ns_per_write, r.wall_ns_per_write
    );
    println!(
        "  reader CPU per write    {:.0} ns",
        r.reader_cpu_ns_per_write
    );
    println!(
        "  bytes written / read    {} / {}",
        r.bytes_written, r.bytes_read
    );
    println!("summary: {}", r.summary());
    if let Some(path) = &args.json_out {
        let json = serde_json::to_string_pretty(&r).expect("json");
        if let Err(e) = std::fs::write(path, json) {
            eprintln!("floor: {}: {e}", path.display());
            return 1;
        }
        eprintln!("floor: wrote {}", path.display());
    }
    0
}

impl FloorResult {
    pub fn summary(&self) -> String {
        format!(
            "floor {} conns, {} B frame, {}: {:.0} ns CPU per write ({:.2} M writes/s on one core)",
            self.conns,
            self.frame_bytes,
            self.syscall,
            self.cpu_ns_per_write,
            1e3 / self.cpu_ns_per_write
        )
    }
}

/// The least writer CPU a floor measures: twenty-five 4 ms ticks, so the clock's granularity costs
/// at most 4 % of the figure.
const MIN_FLOOR_CPU_SECS: f64 = 0.1;

/// Opens `args.conns` loopback connections and writes one pre-encoded frame to each of them,
/// `args.iters` times over (more rounds while the writer has used under
/// [`MIN_FLOOR_CPU_SECS`]), timing the writing thread's CPU.
pub fn measure(args: &FloorArgs) -> io::Result<FloorResult> {
    let (soft, _) = roomcast_ops::limits::nofile_limit()?;
    if (2 * args.conns + 64) as u64 > soft {
        return Err(io::Error::other(format!(
            "{} connections need {} fds (two per connection); the limit is {soft}",
            args.conns,
            2 * args.conns + 64
        )));
    }
    let frame = encode_batch(
        args.transport.format(),
        &Target::Room(room_name(0)),
        &[PushMessage {
            seq: 1,
            priority: 3,
            kind: "chat".into(),
            data: message_data(sys::unix_micros(), args.payload),
            merged: 0,
            is_final: false,
            from: None,
            ack: false,
        }],
    );
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut writers = Vec::with_capacity(args.conns);
    let mut readers = Vec::with_capacity(args.conns);
    let t_open = Instant::now();
    for _ in 0..args.conns {
        let r = TcpStream::connect(addr)?;
        let (w, _) = listener.accept()?;
        w.set_nodelay(true)?;
        w.set_nonblocking(true)?;
        r.set_nonblocking(true)?;
        writers.push(w);
        readers.push(r);
    }
    let open_secs = t_open.elapsed().as_secs_f64();

    let done = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let reader_cpu = Arc::new(AtomicU64::new(0));
    let reader = {
        let (done, received, reader_cpu) = (
            Arc::clone(&done),
            Arc::clone(&received),
            Arc::clone(&reader_cpu),
        );
        std::thread::spawn(move || -> io::Result<()> {
            let mut poll = Poll::new()?;
            let mut readers: Vec<mio::net::TcpStream> = readers
                .into_iter()
                .map(mio::net::TcpStream::from_std)
                .collect();
            for (i, r) in readers.iter_mut().enumerate() {
                poll.registry().register(r, Token(i), Interest::READABLE)?;
            }
            let cpu0 = sys::thread_cpu_secs();
            let mut events = Events::with_capacity(1024);
            let mut buf = vec![0u8; 256 * 1024];
            let mut idle_since: Option<Instant> = None;
            loop {
                poll.poll(&mut events, Some(Duration::from_millis(20)))?;
                if events.is_empty() {
                    if done.load(Ordering::Acquire) {
                        let since = *idle_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > Duration::from_millis(200) {
                            break;
                        }
                    }
                    continue;
                }
                idle_since = None;
                for e in events.iter() {
                    let r = &mut readers[e.token().0];
                    loop {
                        match r.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                received.fetch_add(n as u64, Ordering::Relaxed);
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
            }
            reader_cpu.store(
                ((sys::thread_cpu_secs() - cpu0) * 1e9) as u64,
                Ordering::Relaxed,
            );
            Ok(())
        })
    };

    // The frame split into the requested number of iovecs.
    let pieces = args.iovecs.clamp(1, frame.len().max(1));
    let chunk = frame.len().div_ceil(pieces);
    let iov: Vec<libc::iovec> = frame
        .chunks(chunk)
        .map(|c| libc::iovec {
            iov_base: c.as_ptr() as *mut libc::c_void,
            iov_len: c.len(),
        })
        .collect();
    let fds: Vec<i32> = writers.iter().map(|w| w.as_raw_fd()).collect();
    let mut ok: u64 = 0;
    let mut would_block: u64 = 0;
    let mut partial: u64 = 0;
    let mut bytes: u64 = 0;
    let cpu0 = sys::thread_cpu_secs();
    let wall0 = Instant::now();
    let mut rounds = 0;
    // The thread CPU clock advances in scheduler ticks (4 ms at 250 Hz): a short floor can read
    // 0 s, and a ratio to it would be meaningless. Keep writing until it is measurable.
    while rounds < args.iters || sys::thread_cpu_secs() - cpu0 < MIN_FLOOR_CPU_SECS {
        rounds += 1;
        for &fd in &fds {
            let n = vectored_write(fd, &iov, args.syscall);
            if n == frame.len() as isize {
                ok += 1;
                bytes += n as u64;
            } else if n < 0 {
                would_block += 1;
            } else {
                // Finish the frame so the stream stays well-formed.
                partial += 1;
                ok += 1;
                bytes += frame.len() as u64;
                let mut off = n as usize;
                while off < frame.len() {
                    let rest = &frame[off..];
                    // SAFETY: `rest` is a valid byte slice alive for the call; fd is ours.
                    let m = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
                    if m > 0 {
                        off += m as usize;
                    } else {
                        std::hint::spin_loop();
                    }
                }
            }
        }
    }
    let wall = wall0.elapsed().as_secs_f64();
    let cpu = sys::thread_cpu_secs() - cpu0;
    done.store(true, Ordering::Release);
    let read_ok = reader
        .join()
        .map_err(|_| io::Error::other("reader thread panicked"))?;
    read_ok?;
    let got = received.load(Ordering::Relaxed);
    let reader_ns = reader_cpu.load(Ordering::Relaxed) as f64;
    drop(writers);
    let writes = ok.max(1) as f64;
    eprintln!(
        "floor: {} loopback connections opened in {open_secs:.2} s, {ok} writes of {} bytes in {cpu:.3} s CPU",
        args.conns,
        frame.len()
    );
    Ok(FloorResult {
        conns: args.conns,
        iters: rounds,
        payload: args.payload,
        frame_bytes: frame.len(),
        iovecs: iov.len(),
        syscall: format!("{:?}", args.syscall).to_lowercase(),
        writes: ok,
        would_block,
        partial,
        bytes_written: bytes,
        bytes_read: got,
        writer_cpu_secs: cpu,
        wall_secs: wall,
        cpu_ns_per_write: cpu * 1e9 / writes,
        wall_ns_per_write: wall * 1e9 / writes,
        reader_cpu_ns_per_write: reader_ns / writes,
    })
}

fn vectored_write(fd: i32, iov: &[libc::iovec], syscall: Syscall) -> isize {
    match syscall {
        // SAFETY: `iov` points at `iov.len()` valid iovecs whose buffers (the frame) outlive the
        // call; the kernel only reads them.
        Syscall::Writev => unsafe { libc::writev(fd, iov.as_ptr(), iov.len() as libc::c_int) },
        Syscall::Sendmsg => {
            // SAFETY: an all-zero msghdr is valid (no name, no control data).
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
            msg.msg_iovlen = iov.len() as _;
            // SAFETY: `msg` references `iov`, valid for the call as above.
            unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) }
        }
    }
}
