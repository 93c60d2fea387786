//! The `roomcast-tune` binary end to end, against a fake /proc/sys tree.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use roomcast_tuning::profile::sysctls;

fn tune(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_roomcast-tune"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
    )
}

/// A fake /proc/sys already holding the profile's values for `n`.
fn tuned_tree(name: &str, n: u64) -> PathBuf {
    let root =
        std::env::temp_dir().join(format!("roomcast-tune-cli-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    for setting in sysctls(n) {
        let path = root.join(setting.proc_path());
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, format!("{}\n", setting.wanted_text())).unwrap();
    }
    root
}

#[test]
fn check_exit_code_follows_the_findings() {
    // 1000 connections fit this process's nofile limit on any sane host.
    let root = tuned_tree("ok", 1000);
    let (code, out) = tune(&[
        "check",
        "--connections",
        "1000",
        "--proc-sys",
        root.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("all fine for 1000 connections"));

    fs::write(root.join("net/core/somaxconn"), "128\n").unwrap();
    let (code, out) = tune(&[
        "check",
        "--connections",
        "1000",
        "--proc-sys",
        root.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("CHANGE  net.core.somaxconn: 128 -> 4096"),
        "{out}"
    );

    let (code, out) = tune(&[
        "apply",
        "--dry-run",
        "--connections",
        "1000",
        "--proc-sys",
        root.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("sysctl -w net.core.somaxconn=\"4096\"\n"),
        "{out}"
    );
    assert_eq!(
        fs::read_to_string(root.join("net/core/somaxconn")).unwrap(),
        "128\n"
    );
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn profile_subcommand_prints_the_committed_file() {
    let (code, out) = tune(&["profile", "--connections", "1000000"]);
    assert_eq!(code, 0);
    let committed = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/profile/99-roomcast.conf"
    ))
    .unwrap();
    assert_eq!(out, committed);
}

#[test]
fn plan_prints_the_arithmetic() {
    let (code, out) = tune(&[
        "plan",
        "--connections",
        "100000",
        "--rooms",
        "1",
        "--msgs-per-sec",
        "100",
        "--tick-ms",
        "1000",
        "--payload",
        "128",
    ]);
    assert_eq!(code, 0);
    assert!(
        out.contains("100000 frames/s, 100.0 msg per frame, 16100 B per frame"),
        "{out}"
    );
}
