//! The kernel's TCP bookkeeping, system-wide: the counters that say whether the kernel ran out
//! of TCP memory or dropped segments (`/proc/net/netstat` TcpExt, `/proc/net/snmp` Tcp), the
//! socket buffer pages in use (`/proc/net/sockstat`, sampled once a second for the peak) and the
//! limits they are judged against (`net.ipv4.tcp_mem`).
//!
//! Both ends of every connection are on this host, so a run with big frames to many viewers can
//! push the kernel into TCP memory pressure; from then on the figures measure the kernel's drops
//! and retransmits rather than the gateway, and the report says so.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::sys;
use crate::term::say;

/// The TcpExt counters of `/proc/net/netstat` a run reports.
pub const NETSTAT: [&str; 10] = [
    "TCPMemoryPressures",
    "TCPMemoryPressuresChrono",
    "TCPRcvQDrop",
    "PruneCalled",
    "RcvPruned",
    "TCPOFODrop",
    "TCPBacklogDrop",
    "ListenOverflows",
    "ListenDrops",
    "TCPAbortOnMemory",
];
/// The Tcp counters of `/proc/net/snmp` a run reports.
pub const SNMP: [&str; 1] = ["RetransSegs"];

/// The pre-flight's rule of thumb, the tuning profile's pressure threshold: queued data per
/// socket that level-4 frames (~16-21 KB) need before the kernel enters TCP memory pressure.
/// A run holds two sockets per connection on this host (the edge's and the client's).
pub const PREFLIGHT_BYTES_PER_CONN: u64 = 32 * 1024;

/// Counter name → value (or → difference between two readings).
pub type Counters = BTreeMap<String, u64>;

/// Parses the two-line format of `/proc/net/netstat` and `/proc/net/snmp`: a line
/// `Header: name name …` followed by `Header: value value …`, repeated per header. Returns
/// header → name → value; values that are not unsigned integers (`MaxConn -1`) are left out,
/// and a line that does not pair with the next one is skipped.
pub fn parse_pairs(text: &str) -> BTreeMap<String, Counters> {
    let lines: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(h, rest)| (h.trim(), rest))
        .collect();
    let mut out: BTreeMap<String, Counters> = BTreeMap::new();
    let mut i = 0;
    while i + 1 < lines.len() {
        let (header, names) = lines[i];
        let (header2, values) = lines[i + 1];
        let names_are_names = names
            .split_whitespace()
            .next()
            .is_some_and(|n| n.parse::<i64>().is_err());
        if header != header2 || !names_are_names {
            i += 1;
            continue;
        }
        let table = out.entry(header.to_string()).or_default();
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(v) = value.parse::<u64>() {
                table.insert(name.to_string(), v);
            }
        }
        i += 2;
    }
    out
}

/// The reported counters out of parsed `/proc/net/netstat` and `/proc/net/snmp` (absent ones,
/// e.g. on an older kernel, are left out).
pub fn select(netstat: &BTreeMap<String, Counters>, snmp: &BTreeMap<String, Counters>) -> Counters {
    let mut out = Counters::new();
    for (tables, header, names) in [(netstat, "TcpExt", &NETSTAT[..]), (snmp, "Tcp", &SNMP[..])] {
        if let Some(t) = tables.get(header) {
            for &n in names {
                if let Some(&v) = t.get(n) {
                    out.insert(n.to_string(), v);
                }
            }
        }
    }
    out
}

/// Reads the counters now; None when `/proc/net/netstat` cannot be read.
pub fn read() -> Option<Counters> {
    let netstat = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    Some(select(&parse_pairs(&netstat), &parse_pairs(&snmp)))
}

/// `b - a` for every counter present in both (0 if one went backwards).
pub fn delta(a: &Counters, b: &Counters) -> Counters {
    b.iter()
        .filter_map(|(k, vb)| Some((k.clone(), vb.saturating_sub(*a.get(k)?))))
        .collect()
}

/// Bytes of TCP socket buffers in use now (system-wide).
pub fn sockstat_tcp_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    Some(sys::sockstat_tcp_field(&text, "mem")? * sys::page_size())
}

/// `net.ipv4.tcp_mem` in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpMem {
    pub low: u64,
    pub pressure: u64,
    pub high: u64,
}

/// Parses `/proc/sys/net/ipv4/tcp_mem` (three page counts) into bytes.
pub fn parse_tcp_mem(text: &str, page: u64) -> Option<TcpMem> {
    let v: Vec<u64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    match v[..] {
        [low, pressure, high] => Some(TcpMem {
            low: low * page,
            pressure: pressure * page,
            high: high * page,
        }),
        _ => None,
    }
}

pub fn tcp_mem() -> Option<TcpMem> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_mem").ok()?;
    parse_tcp_mem(&text, sys::page_size())
}

fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
}

/// The pre-flight line when tcp_mem's pressure threshold is below
/// [`PREFLIGHT_BYTES_PER_CONN`] per connection (None when it is not, or unknown).
pub fn preflight(conns: u64, limits: Option<TcpMem>) -> Option<String> {
    let limits = limits?;
    let sockets = 2 * conns;
    let wanted = sockets * PREFLIGHT_BYTES_PER_CONN;
    (limits.pressure < wanted).then(|| {
        format!(
            "bench: net.ipv4.tcp_mem pressure at {} is below {} KiB per socket ({} for the {sockets} \
             sockets of {conns} connections, both ends on this host); level-4 frames may hit TCP \
             memory pressure — tune the host: roomcast-tune apply --connections {sockets}",
            gib(limits.pressure),
            PREFLIGHT_BYTES_PER_CONN / 1024,
            gib(wanted),
        )
    })
}

/// Samples sockstat's TCP `mem` once a second on its own thread and keeps the peaks: over the
/// whole time it runs, and since the last [`Sampler::mark`]. Says once on stderr when the pages
/// in use reach tcp_mem's pressure threshold. Stops when dropped.
pub struct Sampler {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    stop: AtomicBool,
    pressure: Option<u64>,
    peaks: Mutex<Peaks>,
}

#[derive(Default)]
struct Peaks {
    run: Option<u64>,
    since_mark: Option<u64>,
    warned: bool,
}

impl Shared {
    fn sample(&self) {
        let Some(now) = sockstat_tcp_bytes() else {
            return;
        };
        let mut p = self.peaks.lock().unwrap_or_else(|e| e.into_inner());
        p.run = p.run.max(Some(now));
        p.since_mark = p.since_mark.max(Some(now));
        if let Some(pressure) = self.pressure.filter(|&x| now >= x && !p.warned) {
            p.warned = true;
            say(&format!(
                "bench: kernel TCP buffers in use ({}) reached net.ipv4.tcp_mem's pressure threshold ({}): \
                 the kernel is under TCP memory pressure (buffers shrink, segments get dropped)",
                gib(now),
                gib(pressure)
            ));
        }
    }
}

impl Sampler {
    pub fn start(limits: Option<TcpMem>) -> Sampler {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            pressure: limits.map(|l| l.pressure),
            peaks: Mutex::new(Peaks::default()),
        });
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("sockstat".into())
            .spawn(move || {
                let mut next = Instant::now();
                while !s.stop.load(Ordering::Relaxed) {
                    if Instant::now() >= next {
                        s.sample();
                        next += Duration::from_secs(1);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
            .map_err(|e| say(&format!("bench: cannot start the sockstat sampler: {e}")))
            .ok();
        Sampler { shared, thread }
    }

    /// Samples now; returns the peak since the previous mark (or the start) in bytes, and starts
    /// a new one.
    pub fn mark(&self) -> Option<u64> {
        self.shared.sample();
        let mut p = self.shared.peaks.lock().unwrap_or_else(|e| e.into_inner());
        p.since_mark.take()
    }

    /// Samples now; the peak since the sampler started, in bytes.
    pub fn run_peak(&self) -> Option<u64> {
        self.shared.sample();
        self.shared
            .peaks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .run
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What went wrong in one span, from counter deltas.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Trouble {
    pub pressure_events: u64,
    pub pressure_ms: u64,
    pub aborts_on_memory: u64,
    pub rcvq_drops: u64,
    pub ofo_drops: u64,
    pub backlog_drops: u64,
    pub pruned: u64,
}

impl Trouble {
    pub fn of(d: &Counters) -> Trouble {
        let g = |k: &str| d.get(k).copied().unwrap_or(0);
        Trouble {
            pressure_events: g("TCPMemoryPressures"),
            pressure_ms: g("TCPMemoryPressuresChrono"),
            aborts_on_memory: g("TCPAbortOnMemory"),
            rcvq_drops: g("TCPRcvQDrop"),
            ofo_drops: g("TCPOFODrop"),
            backlog_drops: g("TCPBacklogDrop"),
            pruned: g("RcvPruned"),
        }
    }

    /// The kernel was under TCP memory pressure (entered it, spent time in it) or aborted
    /// connections for lack of memory.
    pub fn memory(&self) -> bool {
        self.pressure_events + self.pressure_ms + self.aborts_on_memory > 0
    }

    pub fn drops(&self) -> u64 {
        self.rcvq_drops + self.ofo_drops + self.backlog_drops + self.pruned
    }

    pub fn any(&self) -> bool {
        self.memory() || self.drops() > 0
    }
}

/// The long warning (table) and the short one (summary) when the kernel ran out of TCP memory
/// or dropped received segments: in the window if it did there, else elsewhere in the run.
pub fn warnings(
    window: Option<&Counters>,
    run: Option<&Counters>,
    limits: Option<TcpMem>,
    peak: Option<u64>,
    conns: u64,
) -> Option<(String, String)> {
    let (t, scope) = [
        (window, "in the measured window"),
        (run, "during the run (outside the measured window)"),
    ]
    .into_iter()
    .find_map(|(d, scope)| Some((Trouble::of(d?), scope)).filter(|(t, _)| t.any()))?;
    let short_scope = if scope.starts_with("in") {
        "in the window"
    } else {
        "outside the window"
    };
    let tune = format!(
        "`roomcast-tune apply --connections {}` (tuning/; two sockets per connection on this host)",
        2 * conns
    );
    let limits_text = match (limits, peak) {
        (Some(l), Some(p)) => format!(
            "net.ipv4.tcp_mem is {}/{} pressure/max and {} was in use at the peak",
            gib(l.pressure),
            gib(l.high),
            gib(p)
        ),
        (Some(l), None) => format!(
            "net.ipv4.tcp_mem is {}/{} pressure/max",
            gib(l.pressure),
            gib(l.high)
        ),
        _ => "net.ipv4.tcp_mem is unknown".into(),
    };
    Some(if t.memory() {
        (
            format!(
                "WARNING: the kernel ran out of TCP memory {scope}: {} memory-pressure events, {:.1} s under pressure, \
                 {} receive-queue drops, {} out-of-order drops, {} connections aborted on memory. The delivery, latency \
                 and CPU figures measure the kernel's packet drops and retransmits, not the gateway. {limits_text}; \
                 raise it: {tune}. (The counters are system-wide.)",
                t.pressure_events,
                t.pressure_ms as f64 / 1000.0,
                t.rcvq_drops,
                t.ofo_drops,
                t.aborts_on_memory,
            ),
            format!(
                "KERNEL OUT OF TCP MEMORY {short_scope} ({} pressure events, {} receive drops): figures measure kernel drops, see roomcast-tune check",
                t.pressure_events,
                t.drops()
            ),
        )
    } else {
        (
            format!(
                "WARNING: the kernel dropped {} received TCP segments {scope} ({} receive-queue, {} out-of-order, \
                 {} backlog, {} pruned) without entering TCP memory pressure: receive buffers overflowed, so the \
                 figures include the kernel's drops and retransmits, not only the gateway. {limits_text}; check the \
                 buffer settings: {tune}. (The counters are system-wide.)",
                t.drops(),
                t.rcvq_drops,
                t.ofo_drops,
                t.backlog_drops,
                t.pruned,
            ),
            format!(
                "KERNEL TCP DROPS {short_scope} ({} received segments): see roomcast-tune check",
                t.drops()
            ),
        )
    })
}

/// What a run reports under `kernel_tcp`.
pub struct Spans<'a> {
    /// Counter deltas over the measured window (publishing) or the hold.
    pub window: Option<&'a Counters>,
    /// Counter deltas from before the clients started to the end.
    pub run: Option<&'a Counters>,
    pub limits: Option<TcpMem>,
    /// Peak sockstat TCP mem in the window and since the clients started, bytes.
    pub peak_window: Option<u64>,
    pub peak_run: Option<u64>,
    pub conns: u64,
}

pub fn json(s: &Spans) -> Value {
    let warnings = warnings(s.window, s.run, s.limits, s.peak_run, s.conns);
    json!({
        "source": "system-wide: /proc/net/netstat TcpExt and /proc/net/snmp Tcp counter deltas over the measured \
                   window (`window`) and from before the clients started to the end (`run`); /proc/net/sockstat TCP \
                   mem sampled once a second (peaks); /proc/sys/net/ipv4/tcp_mem. TCPMemoryPressuresChrono is in ms.",
        "page_bytes": sys::page_size(),
        "tcp_mem_bytes": s.limits.map(|l| json!({"low": l.low, "pressure": l.pressure, "high": l.high})),
        "sockstat_mem_peak_bytes": s.peak_run,
        "sockstat_mem_peak_window_bytes": s.peak_window,
        "window": s.window,
        "run": s.run,
        "memory_pressure": s.window.is_some_and(|d| Trouble::of(d).memory()),
        "memory_pressure_in_run": s.run.is_some_and(|d| Trouble::of(d).memory()),
        "drops_window": s.window.map(|d| Trouble::of(d).drops()),
        "warning": warnings.as_ref().map(|w| &w.0),
        "warning_short": warnings.as_ref().map(|w| &w.1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NETSTAT_TEXT: &str = "TcpExt: SyncookiesSent PruneCalled RcvPruned TCPOFODrop ListenOverflows ListenDrops TCPRcvQDrop TCPBacklogDrop TCPAbortOnMemory TCPMemoryPressures TCPMemoryPressuresChrono\n\
TcpExt: 0 1456738 0 47209 3 3 1406341 0 0 4 76480\n\
IpExt: InNoRoutes InOctets\n\
IpExt: 0 123456789012\n\
MPTcpExt: MPCapableSYNRX\n\
MPTcpExt: 0\n";

    const SNMP_TEXT: &str = "Ip: Forwarding DefaultTTL\n\
Ip: 1 64\n\
IcmpMsg: InType3 OutType3\n\
IcmpMsg: 50 50\n\
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens RetransSegs\n\
Tcp: 1 200 120000 -1 1000 22\n\
Udp: InDatagrams\n\
Udp: 5\n";

    #[test]
    fn parses_header_pairs() {
        let t = parse_pairs(NETSTAT_TEXT);
        assert_eq!(t["TcpExt"]["PruneCalled"], 1_456_738);
        assert_eq!(t["TcpExt"]["TCPMemoryPressuresChrono"], 76_480);
        assert_eq!(t["IpExt"]["InOctets"], 123_456_789_012);
        assert_eq!(t["MPTcpExt"]["MPCapableSYNRX"], 0);
        let s = parse_pairs(SNMP_TEXT);
        assert_eq!(s["Tcp"]["RetransSegs"], 22);
        assert!(
            !s["Tcp"].contains_key("MaxConn"),
            "negative values are left out"
        );
        assert_eq!(s["IcmpMsg"]["OutType3"], 50);
    }

    #[test]
    fn skips_lines_that_do_not_pair() {
        let t = parse_pairs("Junk: a b\nTcpExt: X Y\nTcpExt: 1 2\nTcpExt: 3 4\nLonely: z\n");
        assert_eq!(t.len(), 1);
        assert_eq!(t["TcpExt"]["X"], 1);
        assert_eq!(t["TcpExt"]["Y"], 2);
        assert!(parse_pairs("").is_empty());
    }

    #[test]
    fn selects_and_differences() {
        let c = select(&parse_pairs(NETSTAT_TEXT), &parse_pairs(SNMP_TEXT));
        assert_eq!(c["TCPRcvQDrop"], 1_406_341);
        assert_eq!(c["RetransSegs"], 22);
        assert!(!c.contains_key("SyncookiesSent"));
        assert_eq!(c.len(), NETSTAT.len() + SNMP.len());
        let mut later = c.clone();
        *later.get_mut("RetransSegs").unwrap() += 5;
        later.insert("Extra".into(), 1);
        let d = delta(&c, &later);
        assert_eq!(d["RetransSegs"], 5);
        assert_eq!(d["TCPRcvQDrop"], 0);
        assert!(!d.contains_key("Extra"));
        assert_eq!(delta(&later, &c)["RetransSegs"], 0, "never negative");
    }

    #[test]
    fn parses_sockstat_and_tcp_mem() {
        let s = "sockets: used 11\nTCP: inuse 1 orphan 0 tw 87938 alloc 1 mem 235\nUDP: inuse 0 mem 7\n";
        assert_eq!(sys::sockstat_tcp_field(s, "mem"), Some(235));
        assert_eq!(sys::sockstat_tcp_field(s, "tw"), Some(87938));
        assert_eq!(sys::sockstat_tcp_field("UDP: inuse 0 mem 7\n", "mem"), None);
        assert_eq!(
            parse_tcp_mem("1048576\t1572864\t2097152\n", 4096),
            Some(TcpMem {
                low: 4 << 30,
                pressure: 6 << 30,
                high: 8 << 30
            })
        );
        assert_eq!(parse_tcp_mem("1 2\n", 4096), None);
        assert_eq!(parse_tcp_mem("a b c\n", 4096), None);
    }

    #[test]
    fn preflight_compares_32_kib_per_socket_both_ends() {
        let l = |pressure_pages: u64| {
            Some(TcpMem {
                low: 0,
                pressure: pressure_pages * 4096,
                high: 0,
            })
        };
        // 100k connections are 200k sockets here and want 6.1 GiB; 3 GiB is too little.
        let line = preflight(100_000, l(800_000)).expect("too small");
        assert!(line.contains("pressure at 3.1 GiB"), "{line}");
        assert!(line.contains("(6.1 GiB for the 200000 sockets"), "{line}");
        assert!(
            line.contains("roomcast-tune apply --connections 200000"),
            "{line}"
        );
        assert_eq!(preflight(100_000, l(1_600_000)), None);
        assert_eq!(preflight(100_000, None), None);
    }

    fn counters(pairs: &[(&str, u64)]) -> Counters {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn warns_on_memory_pressure_drops_or_nothing() {
        let limits = Some(TcpMem {
            low: 1 << 30,
            pressure: 3 << 29,
            high: 2 << 30,
        });
        let clean = counters(&[("TCPMemoryPressures", 0), ("RetransSegs", 22)]);
        assert!(warnings(Some(&clean), Some(&clean), limits, Some(1 << 20), 300).is_none());

        let bad = counters(&[
            ("TCPMemoryPressures", 4),
            ("TCPMemoryPressuresChrono", 76_480),
            ("TCPRcvQDrop", 1_406_341),
            ("TCPOFODrop", 47_209),
        ]);
        let (long, short) =
            warnings(Some(&bad), Some(&bad), limits, Some(3 << 29), 100_000).expect("warns");
        assert!(
            long.starts_with("WARNING: the kernel ran out of TCP memory in the measured window")
        );
        assert!(
            long.contains("4 memory-pressure events, 76.5 s under pressure"),
            "{long}"
        );
        assert!(
            long.contains("roomcast-tune apply --connections 200000"),
            "{long}"
        );
        assert!(long.contains("1.5 GiB/2.0 GiB pressure/max"), "{long}");
        assert!(
            short.contains("KERNEL OUT OF TCP MEMORY in the window"),
            "{short}"
        );

        // Pressure outside the window only.
        let (long, _) = warnings(Some(&clean), Some(&bad), limits, None, 10).expect("warns");
        assert!(
            long.contains("during the run (outside the measured window)"),
            "{long}"
        );

        // Already under pressure when the window began: time spent, no new event.
        let chrono = counters(&[("TCPMemoryPressuresChrono", 10)]);
        assert!(warnings(Some(&chrono), None, None, None, 10).is_some());

        // Drops without pressure.
        let drops = counters(&[("TCPBacklogDrop", 7)]);
        let (long, short) = warnings(Some(&drops), None, None, None, 10).expect("warns");
        assert!(long.contains("dropped 7 received TCP segments"), "{long}");
        assert!(
            long.contains("without entering TCP memory pressure"),
            "{long}"
        );
        assert!(
            short.starts_with("KERNEL TCP DROPS in the window"),
            "{short}"
        );
    }

    #[test]
    fn json_shape() {
        let w = counters(&[("TCPMemoryPressures", 1), ("TCPRcvQDrop", 2)]);
        let v = json(&Spans {
            window: Some(&w),
            run: Some(&w),
            limits: Some(TcpMem {
                low: 1,
                pressure: 2,
                high: 3,
            }),
            peak_window: Some(4096),
            peak_run: Some(8192),
            conns: 1,
        });
        assert_eq!(v["tcp_mem_bytes"]["pressure"], 2);
        assert_eq!(v["window"]["TCPRcvQDrop"], 2);
        assert_eq!(v["sockstat_mem_peak_bytes"], 8192);
        assert_eq!(v["memory_pressure"], true);
        assert_eq!(v["drops_window"], 2);
        assert!(v["warning"].as_str().unwrap().starts_with("WARNING"));
    }

    #[test]
    fn reads_this_host() {
        // /proc is there on Linux; the counters exist on every kernel the bench supports.
        let c = read().expect("/proc/net/netstat");
        assert!(
            c.contains_key("PruneCalled") && c.contains_key("RetransSegs"),
            "{c:?}"
        );
        assert!(tcp_mem().is_some_and(|l| l.low <= l.pressure && l.pressure <= l.high));
    }
}
