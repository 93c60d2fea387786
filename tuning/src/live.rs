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

/// The page size used when neither `/proc/self/auxv` nor `getconf PAGESIZE` can be read (x86-64's).
pub const FALLBACK_PAGE_BYTES: u64 = 4096;

/// This host's page size in bytes, the unit `net.ipv4.tcp_mem` counts in (4 KiB on x86-64, often
/// 16 or 64 KiB on arm64 and ppc64). Read at run time, without `unsafe`: the kernel's `AT_PAGESZ`
/// entry in `/proc/self/auxv` (what libc's `sysconf(_SC_PAGESIZE)` returns), else
/// `getconf PAGESIZE`, else [`FALLBACK_PAGE_BYTES`] with a warning on stderr. Read once.
pub fn page_bytes() -> u64 {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        let from_auxv = fs::read("/proc/self/auxv")
            .ok()
            .and_then(|auxv| parse_auxv_page_size(&auxv));
        from_auxv.or_else(getconf_page_size).unwrap_or_else(|| {
            eprintln!(
                "roomcast-tune: cannot read the page size (/proc/self/auxv, getconf PAGESIZE); \
                 assuming {FALLBACK_PAGE_BYTES} bytes"
            );
            FALLBACK_PAGE_BYTES
        })
    })
}

/// `AT_PAGESZ` of an auxiliary vector (`/proc/self/auxv`: native-endian `(type, value)` word
/// pairs up to `AT_NULL`), when it holds a plausible page size (a power of two, at least 1 KiB).
pub fn parse_auxv_page_size(auxv: &[u8]) -> Option<u64> {
    const AT_NULL: usize = 0;
    const AT_PAGESZ: usize = 6;
    const WORD: usize = std::mem::size_of::<usize>();
    let word = |chunk: &[u8]| usize::from_ne_bytes(chunk.try_into().expect("one word"));
    for pair in auxv.chunks_exact(2 * WORD) {
        match word(&pair[..WORD]) {
            AT_NULL => break,
            AT_PAGESZ => {
                let size = word(&pair[WORD..]) as u64;
                return (size >= 1024 && size.is_power_of_two()).then_some(size);
            }
            _ => {}
        }
    }
    None
}

/// `getconf PAGESIZE`, if it runs and prints a plausible page size.
fn getconf_page_size() -> Option<u64> {
    let out = std::process::Command::new("getconf")
        .arg("PAGESIZE")
        .output()
        .ok()?;
    let size: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    (out.status.success() && size >= 1024 && size.is_power_of_two()).then_some(size)
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

    fn auxv(pairs: &[(usize, usize)]) -> Vec<u8> {
        pairs
            .iter()
            .flat_map(|&(t, v)| [t.to_ne_bytes(), v.to_ne_bytes()].concat())
            .collect()
    }

    #[test]
    fn the_page_size_is_the_auxv_entry() {
        // AT_HWCAP (16), AT_PAGESZ (6), AT_NULL.
        assert_eq!(
            parse_auxv_page_size(&auxv(&[(16, 0xff), (6, 65_536), (0, 0)])),
            Some(65_536)
        );
        assert_eq!(parse_auxv_page_size(&auxv(&[(6, 4096)])), Some(4096));
        // After AT_NULL, or implausible, or absent: none.
        assert_eq!(parse_auxv_page_size(&auxv(&[(0, 0), (6, 4096)])), None);
        assert_eq!(parse_auxv_page_size(&auxv(&[(6, 3000), (0, 0)])), None);
        assert_eq!(parse_auxv_page_size(&auxv(&[(16, 1), (0, 0)])), None);
        assert_eq!(parse_auxv_page_size(&[1, 2, 3]), None);
    }

    #[test]
    fn this_hosts_page_size_is_read() {
        let page = page_bytes();
        assert!(page >= 4096 && page.is_power_of_two(), "{page}");
        let auxv = fs::read("/proc/self/auxv").expect("read /proc/self/auxv");
        assert_eq!(parse_auxv_page_size(&auxv), Some(page));
        if let Some(getconf) = getconf_page_size() {
            assert_eq!(getconf, page, "getconf PAGESIZE agrees");
        }
    }

    #[test]
    fn mem_total_is_read_in_bytes() {
        let meminfo = "MemTotal:       24684084 kB\nMemFree:        22000000 kB\n";
        assert_eq!(parse_mem_total(meminfo), Some(24_684_084 * 1024));
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: lots kB\n"), None);
    }
}
