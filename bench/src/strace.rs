//! `--strace SECS`: after the measured window, trace every edge with `strace -f` while
//! publishing continues and relate its write syscalls to the frames the clients received
//! meanwhile — an outside cross-check of the edge's own write counters.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::report::per;
use crate::sys;
use crate::system::{wait_all, Ctx, Measured};
use crate::term::say;

/// Runs `strace -f` on every measured edge for `secs` seconds while publishing continues, and
/// relates its write syscalls to the frames the clients received meanwhile. Each worker's loop
/// iteration is delimited by its wait syscall (epoll_wait / io_uring_enter), so write calls on
/// the same fd within one iteration are the writes of one flush of one connection.
pub fn run(
    ctx: &mut Ctx,
    bin: &Path,
    measured: &[Measured],
    secs: f64,
    log_dir: &Path,
) -> Result<Value, String> {
    let pids: Vec<(String, u32, String)> = measured
        .iter()
        .filter_map(|m| Some((m.id.clone(), m.pid?, m.driver.clone())))
        .collect();
    if pids.is_empty() {
        return Ok(json!({"error": "no edge pids to trace"}));
    }
    std::fs::create_dir_all(log_dir).map_err(|e| e.to_string())?;
    let before = ctx.snap("strace-start")?;
    let mut outs = Vec::new();
    for (id, pid, _) in &pids {
        let out = log_dir.join(format!("strace-{id}.txt"));
        let mut cmd = Command::new(bin);
        cmd.args([
            "-f",
            "-qq",
            "-s",
            "0",
            "-e",
            &format!("trace={}", TRACED.join(",")),
            "-o",
        ])
        .arg(&out)
        .args(["-p", &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        sys::die_with_parent(&mut cmd, libc::SIGKILL);
        let child = cmd.spawn().map_err(|e| format!("cannot run strace: {e}"))?;
        ctx.kids.straces.push(child);
        outs.push(out);
    }
    say(&format!(
        "bench: strace -f on {} edge(s) for {secs:.0} s",
        pids.len()
    ));
    let t0 = Instant::now();
    ctx.sleep(Duration::from_secs_f64(secs))?;
    for s in &ctx.kids.straces {
        sys::signal(s.id(), libc::SIGINT);
    }
    let traced = t0.elapsed().as_secs_f64();
    let mut straces = std::mem::take(&mut ctx.kids.straces);
    wait_all(straces.iter_mut(), Duration::from_secs(20));
    let after = ctx.snap("strace-end")?;
    let frames = after.frames - before.frames;
    let msgs = after.msgs - before.msgs;
    let mut total = TraceStats::default();
    let mut per_edge = Vec::new();
    for ((id, pid, driver), out) in pids.iter().zip(&outs) {
        let text = std::fs::read_to_string(out).unwrap_or_default();
        let t = parse_strace(&text);
        per_edge.push(json!({
            "id": id, "pid": pid, "driver": driver, "calls": t.calls, "data_writes": t.data_writes,
            "flushes": t.flushes, "eagain": t.eagain, "output": out,
        }));
        total.add(&t);
    }
    let enters = total.calls.get("io_uring_enter").copied().unwrap_or(0);
    let waits: u64 = ["epoll_wait", "epoll_pwait", "epoll_pwait2"]
        .iter()
        .map(|n| total.calls.get(*n).copied().unwrap_or(0))
        .sum();
    Ok(json!({
        "secs": traced,
        "frames_received": frames,
        "msgs_received": msgs,
        "calls": total.calls,
        "data_writes": total.data_writes,
        "data_writes_eagain": total.eagain,
        "connection_flushes": total.flushes,
        "writes_per_connection_flush": per(total.data_writes as f64, total.flushes),
        "frames_per_connection_flush": per(frames as f64, total.flushes),
        "writes_per_frame": per(total.data_writes as f64, frames),
        "io_uring_enter_calls": enters,
        "io_uring_enter_per_frame": per(enters as f64, frames),
        "epoll_wait_calls": waits,
        "note": "strace slows the traced edge a lot (it stops at every traced syscall), so only ratios \
                 count. data writes = sendmsg + writev; a connection flush = the writes to one fd within \
                 one worker loop iteration (between two wait syscalls). With the io_uring driver writes \
                 are SQEs, not syscalls: see io_uring_enter per frame instead.",
        "per_edge": per_edge,
    }))
}

/// The syscalls traced by --strace.
const TRACED: &[&str] = &[
    "sendmsg",
    "writev",
    "write",
    "sendto",
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
    "io_uring_enter",
];

#[derive(Default)]
struct TraceStats {
    calls: BTreeMap<String, u64>,
    /// sendmsg + writev (the data path; `write` is used for wake-ups, `sendto` by the link).
    data_writes: u64,
    eagain: u64,
    /// Distinct (thread, loop iteration, fd) with at least one data write.
    flushes: u64,
}

impl TraceStats {
    fn add(&mut self, o: &TraceStats) {
        for (k, v) in &o.calls {
            *self.calls.entry(k.clone()).or_default() += v;
        }
        self.data_writes += o.data_writes;
        self.eagain += o.eagain;
        self.flushes += o.flushes;
    }
}

/// Parses `strace -f` output (`[pid N] call(...) = r`, or `N call(...)` when written with -o).
fn parse_strace(text: &str) -> TraceStats {
    let mut t = TraceStats::default();
    let mut iteration: HashMap<u64, u64> = HashMap::new();
    let mut seen: HashSet<(u64, u64, u64)> = HashSet::new();
    for line in text.lines() {
        let line = line.trim_start();
        let (tid, rest) = if let Some(r) = line.strip_prefix("[pid") {
            let r = r.trim_start();
            let end = r.find(']').unwrap_or(0);
            (
                r[..end].trim().parse::<u64>().unwrap_or(0),
                r[end + 1..].trim_start(),
            )
        } else {
            let end = line.find(|c: char| !c.is_ascii_digit()).unwrap_or(0);
            (
                line[..end].parse::<u64>().unwrap_or(0),
                line[end..].trim_start(),
            )
        };
        if let Some(r) = rest.strip_prefix("<... ") {
            let name = r.split_whitespace().next().unwrap_or("");
            if matches!(name, "sendmsg" | "writev") && r.contains("= -1 EAGAIN") {
                t.eagain += 1;
            }
            continue;
        }
        let Some(open) = rest.find('(') else { continue };
        let name = &rest[..open];
        if !TRACED.contains(&name) {
            continue;
        }
        *t.calls.entry(name.to_string()).or_default() += 1;
        match name {
            "epoll_wait" | "epoll_pwait" | "epoll_pwait2" | "io_uring_enter" => {
                *iteration.entry(tid).or_default() += 1;
            }
            "sendmsg" | "writev" => {
                t.data_writes += 1;
                if rest.contains("= -1 EAGAIN") {
                    t.eagain += 1;
                }
                let args = &rest[open + 1..];
                let fd_end = args.find(|c: char| !c.is_ascii_digit()).unwrap_or(0);
                let fd = args[..fd_end].parse::<u64>().unwrap_or(u64::MAX);
                let it = iteration.get(&tid).copied().unwrap_or(0);
                if seen.insert((tid, it, fd)) {
                    t.flushes += 1;
                }
            }
            _ => {}
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_strace_output_into_flushes() {
        let text = "\
            [pid  10] epoll_wait(7, [...], 1024, 5) = 3\n\
            [pid  10] sendmsg(20, {msg_name=NULL}, MSG_NOSIGNAL) = 100\n\
            [pid  10] sendmsg(20, {msg_name=NULL}, MSG_NOSIGNAL) = -1 EAGAIN (Resource temporarily unavailable)\n\
            [pid  10] sendmsg(21, {msg_name=NULL}, MSG_NOSIGNAL) = 100\n\
            [pid  11] sendmsg(20,  <unfinished ...>\n\
            [pid  10] epoll_wait(7, [...], 1024, 5) = 1\n\
            [pid  11] <... sendmsg resumed>) = -1 EAGAIN (Resource temporarily unavailable)\n\
            12 sendmsg(20, {msg_name=NULL}, MSG_NOSIGNAL) = 100\n\
            [pid  10] sendmsg(20, {msg_name=NULL}, MSG_NOSIGNAL) = 100\n\
            [pid  10] write(5, \"\", 8) = 8\n";
        let t = parse_strace(text);
        assert_eq!(t.data_writes, 6);
        assert_eq!(t.eagain, 2);
        // (10,1,20) (10,1,21) (11,0,20) (12,0,20) (10,2,20)
        assert_eq!(t.flushes, 5);
        assert_eq!(t.calls.get("epoll_wait"), Some(&2));
        assert_eq!(t.calls.get("write"), Some(&1));
    }
}
