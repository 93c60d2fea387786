//! The process's open-file limit: every connection is a file, and the limit (not memory) is what
//! usually caps an edge.

use std::io;

/// The process's `RLIMIT_NOFILE` as `(soft, hard)`.
pub fn nofile_limit() -> io::Result<(u64, u64)> {
    rlimit::Resource::NOFILE.get()
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the new soft limit.
///
/// An unlimited hard limit is not a valid value for the soft nofile limit on Linux, so it is
/// capped at `/proc/sys/fs/nr_open` in that case.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let (soft, hard) = nofile_limit()?;
    let target = if hard == rlimit::INFINITY {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(1 << 20)
    } else {
        hard
    };
    if soft >= target {
        return Ok(soft);
    }
    rlimit::Resource::NOFILE.set(target, hard)?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_reaches_the_hard_limit_and_sticks() {
        let (soft, hard) = nofile_limit().unwrap();
        assert!(soft <= hard);
        let raised = raise_nofile_limit().unwrap();
        assert!(raised >= soft);
        assert_eq!(nofile_limit().unwrap().0, raised);
    }
}
