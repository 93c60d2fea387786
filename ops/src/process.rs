//! Facts about this process and its machine from `/proc` and the cgroup files (no `unsafe`):
//! resident memory, open descriptors, and the memory it may use.

/// The process's resident set, bytes (`VmRSS` of `/proc/self/status`).
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    kib_field(&status, "VmRSS:")
}

/// Open descriptors of this process (an entry per descriptor in `/proc/self/fd`; listing them
/// costs time per descriptor, so count once, not per connection).
pub fn count_open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

/// The memory this process may use: the cgroup's `memory.max` when it is set (cgroup v2, then
/// v1) and below the machine's `MemTotal`, else `MemTotal`; 0 when neither can be read.
pub fn default_memory_limit() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| kib_field(&m, "MemTotal:"))
        .unwrap_or(0);
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|p| std::fs::read_to_string(p).ok())
    .filter_map(|v| v.trim().parse::<u64>().ok())
    .find(|&v| v > 0 && (total == 0 || v < total));
    cgroup.unwrap_or(total)
}

/// A `Key:   1234 kB` line of a `/proc` status file, in bytes.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kib_fields_are_read_in_bytes() {
        let status = "Name:\tx\nVmRSS:\t    2048 kB\nVmSwap:\t0 kB\n";
        assert_eq!(kib_field(status, "VmRSS:"), Some(2048 * 1024));
        assert_eq!(kib_field(status, "VmHWM:"), None);
        assert_eq!(kib_field("VmRSS: lots kB\n", "VmRSS:"), None);
    }

    #[test]
    fn this_process_has_memory_and_descriptors() {
        assert!(resident_bytes().unwrap_or(0) > 0);
        assert!(count_open_fds() >= 3);
        assert!(default_memory_limit() > 0);
    }
}
