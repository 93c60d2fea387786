//! The live system: /proc/sys values and this process's nofile limit (through the engine's
//! helpers, so this crate holds no `unsafe`).

use std::fs;
use std::io;
use std::path::PathBuf;

use crate::profile::Sysctl;

/// A /proc/sys tree; tests point it at a temporary directory.
#[derive(Clone, Debug)]
pub struct ProcSys {
    pub root: PathBuf,
}

impl ProcSys {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ProcSys { root: root.into() }
    }

    pub fn read(&self, setting: &Sysctl) -> io::Result<String> {
        fs::read_to_string(self.root.join(setting.proc_path()))
    }

    pub fn write(&self, setting: &Sysctl, value: &str) -> io::Result<()> {
        // Plain write, no create: a key the kernel lacks must fail, not appear as a file.
        let mut file = fs::OpenOptions::new()
            .write(true)
            .open(self.root.join(setting.proc_path()))?;
        io::Write::write_all(&mut file, format!("{value}\n").as_bytes())
    }
}

/// `(soft, hard)` RLIMIT_NOFILE of this process.
pub fn nofile_limit() -> io::Result<(u64, u64)> {
    roomcast_ops::limits::nofile_limit()
}

/// Raises this process's soft limit to its hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    roomcast_ops::limits::raise_nofile_limit()
}

/// This host's MemTotal in bytes, from /proc/meminfo.
pub fn mem_total_bytes() -> io::Result<u64> {
    let text = fs::read_to_string("/proc/meminfo")?;
    parse_mem_total(&text)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no MemTotal in /proc/meminfo"))
}

/// MemTotal in bytes from the text of /proc/meminfo (`MemTotal:   24684084 kB`).
pub fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line["MemTotal:".len()..].split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => Some(value * 1024),
        None => Some(value),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_total_is_read_in_bytes() {
        let meminfo = "MemTotal:       24684084 kB\nMemFree:        22000000 kB\n";
        assert_eq!(parse_mem_total(meminfo), Some(24_684_084 * 1024));
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: lots kB\n"), None);
    }
}
