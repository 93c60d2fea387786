//! Compares live values with the table. Pure: the caller passes in what it read, so tests can
//! feed fake values.

use std::fmt;
use std::io;

use crate::profile::{join, nofile_wanted, Bound, Field, Sysctl};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Live value is fine for N.
    Ok,
    /// Live value should change.
    Change,
    /// An optional setting this kernel does not have (e.g. conntrack not loaded): nothing to do.
    Absent,
    /// Could not be read; needs a look, so it counts like a change.
    Unreadable,
}

impl Status {
    pub fn needs_action(self) -> bool {
        matches!(self, Status::Change | Status::Unreadable)
    }
}

/// One line of `check` output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub name: String,
    pub status: Status,
    pub current: String,
    /// What `apply` would write: failing fields replaced, passing ones kept.
    pub target: String,
    /// The rule, e.g. `>=4096` or `<=10000 >=65535`.
    pub rule: String,
    pub why: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Status::Ok => write!(
                f,
                "OK      {} = {} (wanted {})",
                self.name, self.current, self.rule
            ),
            Status::Absent => write!(f, "OK      {}: {}", self.name, self.why),
            Status::Change => write!(
                f,
                "CHANGE  {}: {} -> {} (wanted {}): {}",
                self.name, self.current, self.target, self.rule, self.why
            ),
            Status::Unreadable => write!(
                f,
                "CHANGE  {}: cannot read ({}): {}",
                self.name, self.current, self.why
            ),
        }
    }
}

fn rule_text(fields: &[Field]) -> String {
    fields
        .iter()
        .map(|field| {
            let op = match field.bound {
                Bound::AtLeast => ">=",
                Bound::AtMost => "<=",
                Bound::Exactly => "=",
            };
            format!("{op}{}", field.wanted)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Judges one sysctl given its live text (as read from /proc/sys) or the read error.
pub fn judge_sysctl(setting: &Sysctl, live: &io::Result<String>) -> Finding {
    let mut finding = Finding {
        name: setting.key.to_string(),
        status: Status::Ok,
        current: String::new(),
        target: setting.wanted_text(),
        rule: rule_text(&setting.fields),
        why: setting.reason.to_string(),
    };
    let text = match live {
        Ok(text) => text,
        Err(err) if setting.optional && err.kind() == io::ErrorKind::NotFound => {
            finding.status = Status::Absent;
            finding.why =
                "not present on this kernel (module not loaded); nothing to do".to_string();
            return finding;
        }
        Err(err) => {
            finding.status = Status::Unreadable;
            finding.current = err.to_string();
            return finding;
        }
    };
    let current: Vec<u64> = text
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    finding.current = join(current.iter().copied());
    if current.len() != setting.fields.len() {
        // Unexpected shape: replace it wholesale with the wanted value.
        finding.status = Status::Change;
        finding.current = text.trim().to_string();
        return finding;
    }
    let passes = setting
        .fields
        .iter()
        .zip(&current)
        .all(|(field, &value)| field.bound.accepts(value, field.wanted));
    if !passes {
        finding.status = Status::Change;
        finding.target = join(
            setting
                .fields
                .iter()
                .zip(&current)
                .map(|(field, &value)| field.bound.merge(value, field.wanted)),
        );
    }
    finding
}

/// Judges the nofile limit from `(soft, hard)` of a process started like the edge will be.
/// Only the hard limit counts: the edge raises its soft limit to the hard one at start.
pub fn judge_nofile(connections: u64, limits: &io::Result<(u64, u64)>) -> Finding {
    let wanted = nofile_wanted(connections);
    let mut finding = Finding {
        name: "nofile (RLIMIT_NOFILE of this process)".to_string(),
        status: Status::Ok,
        current: String::new(),
        target: wanted.to_string(),
        rule: format!("hard >={wanted}"),
        why: String::new(),
    };
    match limits {
        Err(err) => {
            finding.status = Status::Unreadable;
            finding.current = err.to_string();
            finding.why = "getrlimit failed".to_string();
        }
        Ok((soft, hard)) => {
            finding.current = format!("soft {soft}, hard {hard}");
            if *hard < wanted {
                finding.status = Status::Change;
                finding.current = format!("hard {hard} (soft {soft})");
                finding.target = format!("hard {wanted}");
                finding.why = format!(
                    "one fd per client: this process could hold only {} clients; set limits.conf / systemd \
                     LimitNOFILE (roomcast-tune profile --format limits|systemd), or run several edges \
                     on SO_REUSEPORT",
                    hard.saturating_sub(crate::profile::FD_SLACK)
                );
            }
        }
    }
    finding
}

/// All findings for N connections, reading live values through `read_sysctl`.
pub fn check(
    connections: u64,
    table: &[Sysctl],
    read_sysctl: impl Fn(&Sysctl) -> io::Result<String>,
    nofile: &io::Result<(u64, u64)>,
) -> Vec<Finding> {
    let mut findings: Vec<Finding> = table
        .iter()
        .map(|s| judge_sysctl(s, &read_sysctl(s)))
        .collect();
    findings.push(judge_nofile(connections, nofile));
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::sysctls;
    use std::collections::HashMap;

    /// This development machine's values (Linux 6.18 defaults, nofile 20000/20000).
    fn stock_kernel() -> HashMap<&'static str, &'static str> {
        HashMap::from([
            ("fs.file-max", "2466170"),
            ("fs.nr_open", "1048576"),
            ("net.core.somaxconn", "4096"),
            ("net.ipv4.tcp_max_syn_backlog", "1024"),
            ("net.ipv4.tcp_syncookies", "1"),
            ("net.ipv4.ip_local_port_range", "32768\t60999"),
            ("net.ipv4.tcp_mem", "287898\t383867\t575796"),
            ("net.ipv4.tcp_rmem", "4096\t131072\t33554432"),
            ("net.ipv4.tcp_wmem", "4096\t16384\t4194304"),
            ("net.core.wmem_max", "212992"),
            ("net.core.rmem_max", "212992"),
            ("net.core.netdev_max_backlog", "1000"),
            ("net.ipv4.tcp_max_tw_buckets", "131072"),
            ("net.ipv4.tcp_tw_reuse", "2"),
            ("net.ipv4.tcp_fin_timeout", "60"),
            ("net.ipv4.tcp_max_orphans", "131072"),
        ])
    }

    fn run(
        values: &HashMap<&'static str, &'static str>,
        n: u64,
        nofile: (u64, u64),
    ) -> Vec<Finding> {
        let read = |s: &Sysctl| {
            values
                .get(s.key)
                .map(|v| format!("{v}\n"))
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
        };
        check(n, &sysctls(n), read, &Ok(nofile))
    }

    fn find<'a>(findings: &'a [Finding], name: &str) -> &'a Finding {
        findings.iter().find(|f| f.name.starts_with(name)).unwrap()
    }

    #[test]
    fn stock_kernel_needs_changes_for_a_million() {
        let findings = run(&stock_kernel(), 1_000_000, (20_000, 20_000));
        let changed: Vec<&str> = findings
            .iter()
            .filter(|f| f.status.needs_action())
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(
            changed,
            [
                "net.ipv4.tcp_max_syn_backlog",
                "net.ipv4.ip_local_port_range",
                "net.ipv4.tcp_mem",
                "net.ipv4.tcp_rmem",
                "net.core.wmem_max",
                "net.core.rmem_max",
                "net.core.netdev_max_backlog",
                "net.ipv4.tcp_max_tw_buckets",
                "net.ipv4.tcp_tw_reuse",
                "net.ipv4.tcp_fin_timeout",
                "net.ipv4.tcp_max_orphans",
                "nofile (RLIMIT_NOFILE of this process)",
            ]
        );
        // A larger live value that passes is kept, not lowered.
        assert_eq!(find(&findings, "fs.file-max").status, Status::Ok);
        // Only the failing fields change; the passing ones keep their live value.
        let rmem = find(&findings, "net.ipv4.tcp_rmem");
        assert_eq!(rmem.target, "4096 16384 33554432");
        assert_eq!(
            find(&findings, "net.ipv4.ip_local_port_range").target,
            "10000 65535"
        );
        assert_eq!(
            find(&findings, "net.ipv4.tcp_mem").target,
            "4000000 8000000 16000000"
        );
        // conntrack is not loaded in the fake: fine, not a change.
        assert_eq!(
            find(&findings, "net.netfilter.nf_conntrack_max").status,
            Status::Absent
        );
        let nofile = find(&findings, "nofile");
        assert_eq!(nofile.status, Status::Change);
        assert!(nofile.why.contains("only 15904 clients"), "{}", nofile.why);
        assert!(nofile.to_string().starts_with("CHANGE  nofile"));
    }

    #[test]
    fn tuned_host_is_all_ok() {
        let n = 1_000_000;
        let mut values = stock_kernel();
        let tuned: Vec<(&'static str, String)> = sysctls(n)
            .iter()
            .map(|s| (s.key, s.wanted_text()))
            .collect();
        for (key, value) in tuned {
            values.insert(key, Box::leak(value.into_boxed_str()));
        }
        let findings = run(&values, n, (1_004_096, 1_004_096));
        assert!(
            findings.iter().all(|f| f.status == Status::Ok),
            "{findings:#?}"
        );
    }

    #[test]
    fn a_small_box_passes_on_stock_values_except_the_switches_and_buffers() {
        // 10k connections: capacities of a stock kernel suffice; nofile 20000 is enough.
        let findings = run(&stock_kernel(), 10_000, (1024, 20_000));
        for name in [
            "fs.file-max",
            "fs.nr_open",
            "net.ipv4.tcp_mem",
            "net.core.netdev_max_backlog",
            "nofile",
        ] {
            assert_eq!(find(&findings, name).status, Status::Ok, "{name}");
        }
    }

    #[test]
    fn wider_port_range_passes() {
        let mut values = stock_kernel();
        values.insert("net.ipv4.ip_local_port_range", "1024 65535");
        let findings = run(&values, 1_000_000, (2_000_000, 2_000_000));
        assert_eq!(
            find(&findings, "net.ipv4.ip_local_port_range").status,
            Status::Ok
        );
    }

    #[test]
    fn missing_required_key_and_malformed_values_count_as_changes() {
        let mut values = stock_kernel();
        values.remove("net.core.somaxconn");
        values.insert("net.ipv4.tcp_mem", "garbage");
        let findings = run(&values, 1_000_000, (2_000_000, 2_000_000));
        assert_eq!(
            find(&findings, "net.core.somaxconn").status,
            Status::Unreadable
        );
        let mem = find(&findings, "net.ipv4.tcp_mem");
        assert_eq!(
            (mem.status, mem.current.as_str()),
            (Status::Change, "garbage")
        );
    }

    #[test]
    fn nofile_judges_the_hard_limit_only() {
        assert_eq!(
            judge_nofile(100_000, &Ok((1024, 200_000))).status,
            Status::Ok
        );
        assert_eq!(
            judge_nofile(100_000, &Ok((200_000, 50_000))).status,
            Status::Change
        );
        let failed = judge_nofile(1, &Err(io::Error::other("boom")));
        assert_eq!(failed.status, Status::Unreadable);
    }
}
