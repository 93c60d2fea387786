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
    roomcast_engine::sys::socket::nofile_limit()
}

/// Raises this process's soft limit to its hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    roomcast_engine::sys::socket::raise_nofile_limit()
}
