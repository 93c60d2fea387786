//! The one table: every kernel setting and limit the kit advises, computed for N connections.
//!
//! `check`, `apply`, `profile` and the committed files under `tuning/profile/` all read this table,
//! so the advice and the profile cannot drift apart (a test compares the committed files).

use crate::costs::{EDGE_LISTEN_BACKLOG, SOCKET_SEND_BUFFER_BYTES};
use crate::live::page_bytes;

/// The connection count the committed files in `tuning/profile/` are rendered for.
pub const PROFILE_CONNECTIONS: u64 = 1_000_000;

/// File descriptors an edge needs besides its client sockets: listeners per worker, eventfds,
/// io_uring rings, the control link, the reserve fd, logs, and sockets still closing.
pub const FD_SLACK: u64 = 4096;

/// Which side of the wanted value a live field may sit on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    /// The live value must be at least the wanted one (a capacity).
    AtLeast,
    /// The live value must be at most the wanted one (a default or timeout kept small).
    AtMost,
    /// The live value must equal the wanted one (a switch).
    Exactly,
}

impl Bound {
    pub fn accepts(self, current: u64, wanted: u64) -> bool {
        match self {
            Bound::AtLeast => current >= wanted,
            Bound::AtMost => current <= wanted,
            Bound::Exactly => current == wanted,
        }
    }

    /// The value to write for this field: keep a live value that already passes, so `apply`
    /// never makes a passing field worse (e.g. never lowers a larger fs.file-max).
    pub fn merge(self, current: u64, wanted: u64) -> u64 {
        if self.accepts(current, wanted) {
            current
        } else {
            wanted
        }
    }
}

/// One field of a sysctl (most have one; tcp_mem, tcp_rmem, tcp_wmem have three, the port range two).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub wanted: u64,
    pub bound: Bound,
}

/// One sysctl the kit manages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sysctl {
    /// Dotted name, e.g. `net.core.somaxconn`.
    pub key: &'static str,
    pub fields: Vec<Field>,
    /// One line: why this setting matters for a push edge.
    pub reason: &'static str,
    /// One line: how the wanted value follows from the connection count.
    pub scaling: String,
    /// Absent on some hosts (e.g. conntrack when the module is not loaded); absent is then fine.
    pub optional: bool,
}

impl Sysctl {
    /// The wanted value as sysctl writes it (fields separated by a space).
    pub fn wanted_text(&self) -> String {
        join(self.fields.iter().map(|f| f.wanted))
    }

    /// Path under `/proc/sys`.
    pub fn proc_path(&self) -> String {
        self.key.replace('.', "/")
    }
}

pub fn join(values: impl Iterator<Item = u64>) -> String {
    values.map(|v| v.to_string()).collect::<Vec<_>>().join(" ")
}

fn at_least(wanted: u64) -> Field {
    Field {
        wanted,
        bound: Bound::AtLeast,
    }
}

fn at_most(wanted: u64) -> Field {
    Field {
        wanted,
        bound: Bound::AtMost,
    }
}

fn exactly(wanted: u64) -> Field {
    Field {
        wanted,
        bound: Bound::Exactly,
    }
}

/// Open files one edge process needs to hold `connections` clients (the nofile limit).
pub fn nofile_wanted(connections: u64) -> u64 {
    connections + FD_SLACK
}

/// Pages of `page_bytes` that hold `bytes`, rounded up.
fn pages(bytes: u64, page_bytes: u64) -> u64 {
    bytes.div_ceil(page_bytes)
}

/// tcp_mem per connection below which the kernel does not moderate buffers: one level-4 frame
/// in flight (100 messages of ~161 B merged per 1 s tick is ~16 KB per viewer per tick).
pub const TCP_MEM_LOW_BYTES_PER_CONNECTION: u64 = 16 * 1024;

/// tcp_mem per connection at which the kernel enters memory pressure: twice a level-4 frame. A
/// host that also runs the load generator holds two sockets per viewer (the edge's send queue
/// *and* the client's receive queue count against the same tcp_mem): size it for 2N.
pub const TCP_MEM_PRESSURE_BYTES_PER_CONNECTION: u64 = 32 * 1024;

/// tcp_mem's hard cap per connection: every socket's whole send cap (`--socket-send-buffer-bytes`).
pub const TCP_MEM_CAP_BYTES_PER_CONNECTION: u64 = SOCKET_SEND_BUFFER_BYTES;

/// tcp_mem's pressure threshold for `connections`, in bytes.
pub fn tcp_mem_pressure_bytes(connections: u64) -> u64 {
    connections * TCP_MEM_PRESSURE_BYTES_PER_CONNECTION
}

/// tcp_mem's hard cap for `connections`, in bytes.
pub fn tcp_mem_cap_bytes(connections: u64) -> u64 {
    connections * TCP_MEM_CAP_BYTES_PER_CONNECTION
}

/// A warning when the profile's tcp_mem hard cap (`cap_bytes`) exceeds half of the host's RAM
/// (`mem_total_bytes`, MemTotal): the kernel could then pin most memory in socket buffers.
/// Advice, not a failure: `check` and `plan` print it as an extra line.
pub fn tcp_mem_ram_warning(mem_total_bytes: u64, cap_bytes: u64) -> Option<String> {
    if cap_bytes <= mem_total_bytes / 2 {
        return None;
    }
    let gib = |bytes: u64| bytes as f64 / (1u64 << 30) as f64;
    Some(format!(
        "the profile's net.ipv4.tcp_mem hard cap ({:.2} GiB) exceeds half of this host's RAM \
         (MemTotal {:.2} GiB): this box needs more RAM for that many connections, or a smaller \
         level-4 budget (smaller frames) with a lower tcp_mem",
        gib(cap_bytes),
        gib(mem_total_bytes)
    ))
}

/// The table, computed for `n` connections on this host (its page size read at run time).
pub fn sysctls(n: u64) -> Vec<Sysctl> {
    sysctls_for(n, page_bytes())
}

/// The table for `n` connections on a host whose pages are `page_bytes` long (the unit of
/// `net.ipv4.tcp_mem`).
pub fn sysctls_for(n: u64, page_bytes: u64) -> Vec<Sysctl> {
    let nofile = nofile_wanted(n);
    let file_max = (n + n / 10 + 65_536).next_multiple_of(1024);
    let syn_backlog = (n / 100).clamp(4096, 262_144);
    let netdev_backlog = (n / 64).clamp(1000, 65_536);
    let conntrack = (n + n / 4).max(262_144);
    // tcp_mem counts queued data (skb truesize) in pages; the ~5 KiB of socket slab per
    // connection is outside it. Per connection: 16 KiB low (one level-4 frame in flight), 32 KiB
    // pressure, 64 KiB hard cap = the whole send cap on every socket. Measured with edges and
    // viewers on one host: 100k viewers at level 4 collapsed on the stock tcp_mem and on this
    // table for N = 100k, and were clean on the table for N = 200k (two sockets per viewer).
    let mem_low = pages(n * TCP_MEM_LOW_BYTES_PER_CONNECTION, page_bytes);
    let mem_pressure = pages(tcp_mem_pressure_bytes(n), page_bytes);
    let mem_high = pages(tcp_mem_cap_bytes(n), page_bytes);
    vec![
        Sysctl {
            key: "fs.file-max",
            fields: vec![at_least(file_max)],
            reason: "system-wide open files; every client socket is one, beyond it accept() fails with ENFILE",
            scaling: format!("N + 10% + 65536 for the rest of the system = {file_max}"),
            optional: false,
        },
        Sysctl {
            key: "fs.nr_open",
            fields: vec![at_least(nofile.max(1 << 20))],
            reason: "ceiling for any process's nofile limit; limits.conf/LimitNOFILE above it is silently refused",
            scaling: format!("at least the per-process nofile N + {FD_SLACK} = {nofile} (never below the 1048576 default)"),
            optional: false,
        },
        Sysctl {
            key: "net.core.somaxconn",
            fields: vec![at_least(EDGE_LISTEN_BACKLOG)],
            reason: "caps every listen() backlog; the edge asks 4096 per worker listener and gets min(4096, somaxconn)",
            scaling: format!("independent of N: the edge's listen backlog {EDGE_LISTEN_BACKLOG}; accept capacity grows with workers (SO_REUSEPORT)"),
            optional: false,
        },
        Sysctl {
            key: "net.ipv4.tcp_max_syn_backlog",
            fields: vec![at_least(syn_backlog)],
            reason: "half-open handshakes kept per listener; an edge restart brings all N clients back at once",
            scaling: format!("1% of N in flight, clamped to 4096..262144 = {syn_backlog}"),
            optional: false,
        },
        Sysctl {
            key: "net.ipv4.tcp_syncookies",
            fields: vec![exactly(1)],
            reason: "keeps accepting when a reconnect storm overflows the SYN queue instead of dropping SYNs",
            scaling: "independent of N: a switch".to_string(),
            optional: false,
        },
        Sysctl {
            key: "net.ipv4.ip_local_port_range",
            fields: vec![at_most(10_000), at_least(65_535)],
            reason: "ports for outgoing connects (control link, load generator); kept above 9101 so it never takes the edge's ports",
            scaling: "independent of N on an edge (clients arrive on fixed ports); a client box needs N / 55536 source addresses".to_string(),
            optional: false,
        },
        Sysctl {
            key: "net.ipv4.tcp_mem",
            fields: vec![at_least(mem_low), at_least(mem_pressure), at_least(mem_high)],
            reason: "pages all TCP buffers may use (no pressure / pressure / hard cap); level 4 puts a ~16 KB frame into every viewer's socket each tick; under pressure the kernel prunes, drops and retransmits, above the cap writes stall",
            scaling: format!("N x 16 KiB (one level-4 frame) / 32 KiB (2 frames; a host that also runs the viewers needs the table for 2N) / 64 KiB (every socket's send cap) = {mem_low} {mem_pressure} {mem_high} pages of {page_bytes} B (this host's page size)"),
            optional: false,
        },
        Sysctl {
            key: "net.ipv4.tcp_rmem",
            fields: vec![at_most(4096), at_most(16_384), at_least(4 << 20)],
            reason: "clients send only small control ops: a 16 KiB initial receive buffer bounds what N clients can pin; max for the control link",
            scaling: "per socket; x N is the worst case a flood of client input can pin (~15 GiB at 1M)".to_string(),
            optional: false,
        },
        Sysctl {
            key: "net.ipv4.tcp_wmem",
            fields: vec![at_most(4096), at_most(16_384), at_least(4 << 20)],
            reason: "default send buffer of sockets without SO_SNDBUF (the control link); client sockets get --socket-send-buffer-bytes",
            scaling: "per socket; client sockets are capped at 64 KiB by the edge, not by this".to_string(),
            optional: false,
        },
        Sysctl {
            key: "net.core.wmem_max",
            fields: vec![at_least(4 << 20)],
            reason: "caps SO_SNDBUF; below --socket-send-buffer-bytes (64 KiB) the kernel silently clamps the edge's request",
            scaling: "independent of N: must exceed the per-socket send cap; 4 MiB leaves room for the control link".to_string(),
            optional: false,
        },
        Sysctl {
            key: "net.core.rmem_max",
            fields: vec![at_least(4 << 20)],
            reason: "caps SO_RCVBUF for the control link and tools that set it explicitly",
            scaling: "independent of N".to_string(),
            optional: false,
        },
        Sysctl {
            key: "net.core.netdev_max_backlog",
            fields: vec![at_least(netdev_backlog)],
            reason: "packets queued per CPU before the stack runs; a tick pushes to all N viewers and their ACKs return as one burst",
            scaling: format!("N / 64, clamped to 1000..65536 = {netdev_backlog}"),
            optional: false,
        },
        Sysctl {
            key: "net.ipv4.tcp_max_tw_buckets",
            fields: vec![at_least(n.max(65_536))],
            reason: "TIME_WAIT sockets kept; a drain or restart closes all N at once and overflow only logs and skips TIME_WAIT",
            scaling: format!("N (at least 65536) = {}", n.max(65_536)),
            optional: false,
        },
        Sysctl {
            key: "net.ipv4.tcp_tw_reuse",
            fields: vec![exactly(1)],
            reason: "lets outgoing connects reuse TIME_WAIT ports (control link redials, load generator); no effect on accepted sockets",
            scaling: "independent of N: a switch".to_string(),
            optional: false,
        },
        Sysctl {
            key: "net.ipv4.tcp_fin_timeout",
            fields: vec![at_most(15)],
            reason: "how long a socket the edge closed waits in FIN_WAIT_2 for a vanished client (default 60 s)",
            scaling: "independent of N, but x N is how many half-closed sockets a mass close leaves for this long".to_string(),
            optional: false,
        },
        Sysctl {
            key: "net.ipv4.tcp_max_orphans",
            fields: vec![at_least((n / 2).max(65_536))],
            reason: "closed sockets still flushing; beyond it the kernel resets them and slow clients miss their close frame",
            scaling: format!("N / 2 (at least 65536) = {}", (n / 2).max(65_536)),
            optional: false,
        },
        Sysctl {
            key: "net.netfilter.nf_conntrack_max",
            fields: vec![at_least(conntrack)],
            reason: "with conntrack loaded every client is a tracked flow; a full table drops new SYNs (dmesg: table full)",
            scaling: format!("N + 25% (at least 262144) = {conntrack}; absent when conntrack is not loaded"),
            optional: true,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A setting of the table on a host with 4 KiB pages.
    fn setting(n: u64, key: &str) -> Sysctl {
        sysctls_for(n, 4096)
            .into_iter()
            .find(|s| s.key == key)
            .unwrap()
    }

    #[test]
    fn values_for_one_million_follow_the_stated_formulas() {
        let n = 1_000_000;
        assert_eq!(nofile_wanted(n), 1_004_096);
        assert_eq!(setting(n, "fs.file-max").wanted_text(), "1166336");
        assert_eq!(setting(n, "fs.nr_open").wanted_text(), "1048576");
        // 16 / 32 / 64 KiB per connection in 4 KiB pages.
        assert_eq!(
            setting(n, "net.ipv4.tcp_mem").wanted_text(),
            "4000000 8000000 16000000"
        );
        assert_eq!(
            setting(n, "net.ipv4.tcp_max_syn_backlog").wanted_text(),
            "10000"
        );
        assert_eq!(
            setting(n, "net.core.netdev_max_backlog").wanted_text(),
            "15625"
        );
        assert_eq!(
            setting(n, "net.ipv4.tcp_max_tw_buckets").wanted_text(),
            "1000000"
        );
        assert_eq!(setting(n, "net.core.somaxconn").wanted_text(), "4096");
    }

    #[test]
    fn tcp_mem_holds_level_four_frames_for_100k() {
        // The level-4 benchmark: 100k viewers, one ~16-21 KB frame each per second. The stock
        // 287898 383867 575796 collapsed; these stay at least one frame / two frames / the
        // whole send cap per connection.
        assert_eq!(
            setting(100_000, "net.ipv4.tcp_mem").wanted_text(),
            "400000 800000 1600000"
        );
        assert_eq!(tcp_mem_cap_bytes(100_000), 100_000 * 65_536);
    }

    #[test]
    fn tcp_mem_is_counted_in_this_hosts_pages() {
        // The same bytes in 64 KiB pages (arm64, ppc64 kernels): a sixteenth of the pages.
        let tcp_mem = |page: u64| {
            sysctls_for(100_000, page)
                .into_iter()
                .find(|s| s.key == "net.ipv4.tcp_mem")
                .unwrap()
        };
        assert_eq!(tcp_mem(65_536).wanted_text(), "25000 50000 100000");
        assert!(tcp_mem(65_536)
            .scaling
            .ends_with("pages of 65536 B (this host's page size)"));
        // `sysctls` uses the page size of the host it runs on.
        let here = sysctls(100_000)
            .into_iter()
            .find(|s| s.key == "net.ipv4.tcp_mem")
            .unwrap();
        assert_eq!(here.wanted_text(), tcp_mem(page_bytes()).wanted_text());
    }

    #[test]
    fn tcp_mem_warning_only_above_half_the_ram() {
        let gib = 1u64 << 30;
        // 100k on a 24 GiB host: 6.25 GiB cap, fine.
        assert_eq!(tcp_mem_ram_warning(24 * gib, 100_000 * 65_536), None);
        // Exactly half is still fine.
        assert_eq!(tcp_mem_ram_warning(24 * gib, 12 * gib), None);
        // 1M on the same host: 61 GiB cap.
        let warning = tcp_mem_ram_warning(24 * gib, 1_000_000 * 65_536).unwrap();
        assert!(warning.contains("(61.04 GiB)"), "{warning}");
        assert!(warning.contains("MemTotal 24.00 GiB"), "{warning}");
        assert!(warning.contains("more RAM"), "{warning}");
        assert!(!warning.contains('\n'));
    }

    #[test]
    fn nr_open_always_admits_the_nofile_limit() {
        for n in [1_000, 100_000, 1_000_000, 2_000_000, 10_000_000] {
            let nr_open: u64 = setting(n, "fs.nr_open").wanted_text().parse().unwrap();
            let file_max: u64 = setting(n, "fs.file-max").wanted_text().parse().unwrap();
            assert!(nr_open >= nofile_wanted(n), "n={n}");
            assert!(file_max > nofile_wanted(n), "n={n}");
        }
    }

    #[test]
    fn capacities_never_shrink_as_connections_grow() {
        let counts = [0, 1_000, 50_000, 100_000, 1_000_000, 5_000_000];
        for pair in counts.windows(2) {
            let (small, large) = (sysctls(pair[0]), sysctls(pair[1]));
            for (a, b) in small.iter().zip(&large) {
                for (fa, fb) in a.fields.iter().zip(&b.fields) {
                    if fa.bound == Bound::AtLeast {
                        assert!(
                            fb.wanted >= fa.wanted,
                            "{} shrinks from {} to {}",
                            a.key,
                            pair[0],
                            pair[1]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn triples_are_ordered_and_keys_unique() {
        let table = sysctls(1_000_000);
        let mut keys: Vec<_> = table.iter().map(|s| s.key).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), table.len());
        for s in &table {
            assert!(!s.reason.is_empty() && !s.scaling.is_empty() && !s.reason.contains('\n'));
            let values: Vec<u64> = s.fields.iter().map(|f| f.wanted).collect();
            assert!(
                values.windows(2).all(|w| w[0] <= w[1]),
                "{} not ordered",
                s.key
            );
        }
    }

    #[test]
    fn send_buffer_cap_fits_under_wmem_max() {
        let wmem_max: u64 = setting(1, "net.core.wmem_max")
            .wanted_text()
            .parse()
            .unwrap();
        assert!(wmem_max >= SOCKET_SEND_BUFFER_BYTES);
    }

    #[test]
    fn merge_keeps_passing_values() {
        assert_eq!(Bound::AtLeast.merge(5_000_000, 1_000), 5_000_000);
        assert_eq!(Bound::AtLeast.merge(10, 1_000), 1_000);
        assert_eq!(Bound::AtMost.merge(60, 15), 15);
        assert_eq!(Bound::AtMost.merge(10, 15), 10);
        assert_eq!(Bound::Exactly.merge(2, 1), 1);
    }
}
