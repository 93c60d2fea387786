//! Writes the table to /proc/sys (or prints `sysctl -w` lines) and reports what it could not change.

use std::io;

use crate::check::{judge_nofile, judge_sysctl, Status};
use crate::live::ProcSys;
use crate::profile::{nofile_wanted, sysctls};

/// What `apply` did; `unchanged` lists what still needs a human.
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub lines: Vec<String>,
    pub unchanged: usize,
}

/// Applies the sysctls for N. `nofile` reads the limits after trying to raise the soft limit
/// (`raise_soft_nofile`), since a process cannot raise its own hard limit without privileges and a
/// persistent limit belongs in limits.conf / LimitNOFILE anyway.
pub fn apply(
    connections: u64,
    proc_sys: &ProcSys,
    dry_run: bool,
    raise_soft_nofile: impl FnOnce() -> io::Result<u64>,
    nofile: impl FnOnce() -> io::Result<(u64, u64)>,
) -> ApplyReport {
    let mut report = ApplyReport::default();
    for setting in sysctls(connections) {
        let finding = judge_sysctl(&setting, &proc_sys.read(&setting));
        match finding.status {
            Status::Ok | Status::Absent => {}
            Status::Unreadable => {
                report.unchanged += 1;
                report.lines.push(format!(
                    "CANNOT  {}: cannot read it ({})",
                    setting.key, finding.current
                ));
            }
            Status::Change if dry_run => {
                report
                    .lines
                    .push(format!("sysctl -w {}=\"{}\"", setting.key, finding.target));
            }
            Status::Change => match proc_sys.write(&setting, &finding.target) {
                Ok(()) => report.lines.push(format!(
                    "SET     {}: {} -> {}",
                    setting.key, finding.current, finding.target
                )),
                Err(err) => {
                    report.unchanged += 1;
                    report.lines.push(format!(
                        "CANNOT  {}: writing {} failed: {err} (needs root in the host network namespace)",
                        setting.key, finding.target
                    ));
                }
            },
        }
    }
    let wanted = nofile_wanted(connections);
    if dry_run {
        report.lines.push(format!(
            "# nofile {wanted}: install `roomcast-tune profile --format limits` or `--format systemd`"
        ));
        return report;
    }
    let raised = raise_soft_nofile();
    let finding = judge_nofile(connections, &nofile());
    if finding.status.needs_action() {
        report.unchanged += 1;
        let soft = match raised {
            Ok(soft) => format!("soft raised to {soft}"),
            Err(err) => format!("raising soft failed: {err}"),
        };
        report.lines.push(format!(
            "CANNOT  nofile: {} < {wanted} wanted ({soft}); a hard limit cannot be raised from here: \
             install limits.conf / LimitNOFILE (roomcast-tune profile --format limits|systemd) and start a new \
             session or service",
            finding.current
        ));
    }
    if report.lines.is_empty() {
        report
            .lines
            .push(format!("nothing to change for {connections} connections"));
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::PathBuf;

    /// A fake /proc/sys holding every key of the table at a stock value.
    fn fake_proc_sys(name: &str) -> (ProcSys, PathBuf) {
        let root =
            std::env::temp_dir().join(format!("roomcast-tune-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for setting in sysctls(1_000_000) {
            if setting.optional {
                continue; // like a host without conntrack
            }
            let path = root.join(setting.proc_path());
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            let stock = match setting.fields.len() {
                3 => "4096\t131072\t6291456",
                2 => "32768\t60999",
                _ => "60",
            };
            fs::write(path, format!("{stock}\n")).unwrap();
        }
        (ProcSys::new(&root), root)
    }

    fn read(root: &std::path::Path, key: &str) -> String {
        fs::read_to_string(root.join(key.replace('.', "/")))
            .unwrap()
            .trim()
            .to_string()
    }

    #[test]
    fn dry_run_prints_sysctl_lines_and_writes_nothing() {
        let (proc_sys, root) = fake_proc_sys("dry");
        let report = apply(
            1_000_000,
            &proc_sys,
            true,
            || unreachable!(),
            || unreachable!(),
        );
        assert!(report
            .lines
            .contains(&"sysctl -w net.core.somaxconn=\"4096\"".to_string()));
        assert!(report
            .lines
            .contains(&"sysctl -w net.ipv4.tcp_fin_timeout=\"15\"".to_string()));
        assert_eq!(read(&root, "net.core.somaxconn"), "60");
        assert_eq!(report.unchanged, 0);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn apply_writes_merged_values_then_check_passes() {
        let (proc_sys, root) = fake_proc_sys("write");
        let report = apply(
            1_000_000,
            &proc_sys,
            false,
            || Ok(2_000_000),
            || Ok((2_000_000, 2_000_000)),
        );
        assert_eq!(report.unchanged, 0, "{:#?}", report.lines);
        assert_eq!(read(&root, "net.ipv4.ip_local_port_range"), "10000 65535");
        // tcp_rmem keeps its passing 6 MiB max, lowers the default.
        assert_eq!(read(&root, "net.ipv4.tcp_rmem"), "4096 16384 6291456");
        let again = apply(
            1_000_000,
            &proc_sys,
            false,
            || Ok(2_000_000),
            || Ok((2_000_000, 2_000_000)),
        );
        assert_eq!(again.lines, ["nothing to change for 1000000 connections"]);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn apply_reports_what_it_could_not_change() {
        let (proc_sys, root) = fake_proc_sys("cannot");
        // A directory where the value should be: the write fails like a read-only sysctl would.
        let somaxconn = root.join("net/core/somaxconn");
        fs::remove_file(&somaxconn).unwrap();
        fs::create_dir(&somaxconn).unwrap();
        let report = apply(
            1_000_000,
            &proc_sys,
            false,
            || Ok(20_000),
            || Ok((20_000, 20_000)),
        );
        assert_eq!(report.unchanged, 2, "{:#?}", report.lines);
        assert!(report
            .lines
            .iter()
            .any(|l| l.starts_with("CANNOT  net.core.somaxconn")));
        let nofile = report
            .lines
            .iter()
            .find(|l| l.starts_with("CANNOT  nofile"))
            .unwrap();
        assert!(
            nofile.contains("hard 20000")
                && nofile.contains("1004096")
                && nofile.contains("limits.conf")
        );
        fs::remove_dir_all(root).unwrap();
    }
}
