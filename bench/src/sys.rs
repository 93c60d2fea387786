//! Everything that reads the OS: `/proc`, resource limits, clocks, and the few raw syscalls the
//! bench needs (every `unsafe` block of the crate is here or in `floor.rs`).

use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch (the publish timestamps use this clock on both sides).
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Raises the soft fd limit to the hard one (never above it) and returns (soft, hard), through
/// the engine's own limit helpers; (0, 0) when the limits cannot be read.
pub fn raise_nofile() -> (u64, u64) {
    use roomcast_ops::limits::{nofile_limit, raise_nofile_limit};
    let _ = raise_nofile_limit();
    nofile_limit().unwrap_or((0, 0))
}

/// Makes a child started from `cmd` receive `signal` when this process (its spawning thread,
/// which is always the main thread here) dies, so no child outlives a crashed coordinator.
pub fn die_with_parent(cmd: &mut Command, signal: libc::c_int) {
    // SAFETY: the closure runs in the forked child before exec and only calls prctl and getppid,
    // which are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() == 1 {
                return Err(io::Error::other("parent already exited"));
            }
            Ok(())
        });
    }
}

/// Sends `signal` to `pid` (a process this program started).
pub fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; pid is one of our own children.
    unsafe { libc::kill(pid as libc::pid_t, signal) };
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// The kernel's page size in bytes (the unit of `net.ipv4.tcp_mem` and sockstat's TCP `mem`).
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// CPU time (user + system, all threads) of a process, in seconds, from `/proc/<pid>/stat`.
pub fn proc_cpu_secs(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at field 3 (state).
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime is field 14, stime 15 (1-based) = index 11 and 12 after the state field.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks() as f64)
}

/// System-wide CPU seconds (busy, total) from `/proc/stat`, summed over all CPUs.
pub fn system_cpu_secs() -> (f64, f64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return (0.0, 0.0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    let hz = clock_ticks() as f64;
    ((total - idle) as f64 / hz, total as f64 / hz)
}

/// Host CPU time in interrupts and softirqs (irq + softirq: on loopback, much of the network
/// stack's receive work, charged to no process) and stolen by the hypervisor, seconds.
pub fn system_irq_steal_secs() -> (f64, f64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return (0.0, 0.0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    let hz = clock_ticks() as f64;
    ((at(5) + at(6)) as f64 / hz, at(7) as f64 / hz)
}

/// This process's CPU time (all threads), seconds.
pub fn self_cpu_secs() -> f64 {
    rusage_secs(libc::RUSAGE_SELF)
}

/// The calling thread's CPU time, seconds.
pub fn thread_cpu_secs() -> f64 {
    rusage_secs(libc::RUSAGE_THREAD)
}

fn rusage_secs(who: libc::c_int) -> f64 {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage that outlives the call.
    unsafe { libc::getrusage(who, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Memory of a process from `/proc/<pid>/status`, in bytes.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct ProcMem {
    pub rss: u64,
    pub rss_anon: u64,
    pub rss_file: u64,
    pub hwm: u64,
}

pub fn proc_mem(pid: u32) -> Option<ProcMem> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut m = ProcMem::default();
    for line in text.lines() {
        let kb = |l: &str| -> u64 {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        if line.starts_with("VmRSS:") {
            m.rss = kb(line);
        } else if line.starts_with("RssAnon:") {
            m.rss_anon = kb(line);
        } else if line.starts_with("RssFile:") {
            m.rss_file = kb(line);
        } else if line.starts_with("VmHWM:") {
            m.hwm = kb(line);
        }
    }
    Some(m)
}

/// System-wide kernel memory that grows with sockets, in bytes.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct KernelMem {
    /// `/proc/meminfo` Slab (reclaimable + unreclaimable).
    pub slab: u64,
    pub slab_unreclaim: u64,
    /// `/proc/net/sockstat` TCP mem (pages of socket buffers) in bytes.
    pub tcp_mem: u64,
    /// `/proc/net/sockstat` TCP inuse / tw.
    pub tcp_inuse: u64,
    pub tcp_tw: u64,
    /// `/proc/meminfo` MemAvailable.
    pub mem_available: u64,
}

pub fn kernel_mem() -> KernelMem {
    let mut k = KernelMem::default();
    if let Ok(text) = std::fs::read_to_string("/proc/meminfo") {
        for line in text.lines() {
            let mut it = line.split_whitespace();
            let (Some(name), Some(v)) = (it.next(), it.next()) else {
                continue;
            };
            let v = v.parse::<u64>().unwrap_or(0) * 1024;
            match name {
                "Slab:" => k.slab = v,
                "SUnreclaim:" => k.slab_unreclaim = v,
                "MemAvailable:" => k.mem_available = v,
                _ => {}
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string("/proc/net/sockstat") {
        let field = |name| sockstat_tcp_field(&text, name).unwrap_or(0);
        k.tcp_inuse = field("inuse");
        k.tcp_tw = field("tw");
        k.tcp_mem = field("mem") * page_size();
    }
    k
}

/// One field of sockstat's `TCP:` line (`inuse`, `orphan`, `tw`, `alloc`, `mem` in pages).
pub fn sockstat_tcp_field(sockstat: &str, name: &str) -> Option<u64> {
    let rest = sockstat.lines().find_map(|l| l.strip_prefix("TCP:"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields.chunks(2).find_map(|pair| match pair {
        [n, value] if *n == name => value.parse().ok(),
        _ => None,
    })
}

/// Finds an executable in `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Sets an integer socket option.
pub fn setsockopt_int(
    fd: i32,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` is a valid c_int that outlives the call and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
