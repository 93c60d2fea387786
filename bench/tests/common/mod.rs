//! Runs `roomcast-bench run` as a child process, bounded in time, and reads its results.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// One finished `roomcast-bench run`: its JSON result and its output (table and messages).
pub struct Run {
    pub result: Value,
    pub output: String,
}

impl Run {
    /// The run's `summary:` line.
    pub fn summary(&self) -> &str {
        self.output
            .lines()
            .find(|l| l.starts_with("summary:"))
            .unwrap_or("(no summary line)")
    }
}

/// `roomcast-bench run <args> --json-out <dir>/result.json --log-dir <dir>` in a fresh directory
/// named after `name`; panics (with the output) if it fails or takes longer than `limit`.
pub fn run_bench(name: &str, args: &[String], limit: Duration) -> Run {
    let dir = std::env::temp_dir().join(format!("roomcast-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the run directory");
    let json = dir.join("result.json");
    let output = dir.join("bench-output.txt");
    let out = std::fs::File::create(&output).expect("create the output file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_roomcast-bench"))
        .arg("run")
        .args(args)
        .arg("--json-out")
        .arg(&json)
        .arg("--log-dir")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone the output file"))
        .stderr(out)
        .spawn()
        .expect("start roomcast-bench");
    let deadline = Instant::now() + limit;
    let failed = |why: String| -> ! {
        let text = std::fs::read_to_string(&output).unwrap_or_default();
        panic!("{why}; its output:\n{text}\n(logs in {})", dir.display())
    };
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll roomcast-bench") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            failed(format!("roomcast-bench took longer than {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !status.success() {
        failed(format!("roomcast-bench failed: {status}"));
    }
    let text = std::fs::read_to_string(&json).expect("read the JSON result");
    let run = Run {
        result: serde_json::from_str(&text).expect("parse the JSON result"),
        output: std::fs::read_to_string(&output).unwrap_or_default(),
    };
    eprintln!("{}", run.summary());
    let _ = std::fs::remove_dir_all(&dir);
    run
}

/// A scenario shipped in `bench/scenarios/`.
pub fn scenario(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(file)
}

/// The arguments that make `roomcast-bench run` start its own system from this workspace's
/// binaries (built once per test process) on free loopback ports, with the edge on driver `io`.
// publish.rs starts its own control plane and does not use it.
#[allow(dead_code)]
pub fn spawned_system_args(io: &str) -> Vec<String> {
    use roomcast_tests::process::{free_local_addrs, CONTROL_BINARY, EDGE_BINARY};
    use std::sync::OnceLock;
    static EDGE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    static CONTROL: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let ports = free_local_addrs(4);
    vec![
        "--edge-bin".into(),
        EDGE_BINARY.path(&EDGE).display().to_string(),
        "--control-bin".into(),
        CONTROL_BINARY.path(&CONTROL).display().to_string(),
        format!("--edge-arg=--io={io}"),
        "--link-listen".into(),
        ports[2].to_string(),
        "--control-url".into(),
        format!("http://{}", ports[3]),
        "--ws-port".into(),
        ports[0].port().to_string(),
        "--tcp-port".into(),
        ports[1].port().to_string(),
    ]
}

/// The arguments that make `roomcast-bench run --send-proxy` start this workspace's sample
/// backend (built once per test process) on a free loopback port.
#[allow(dead_code)]
pub fn backend_args() -> Vec<String> {
    use roomcast_tests::process::{free_local_addrs, BACKEND_BINARY};
    use std::sync::OnceLock;
    static BACKEND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    vec![
        "--backend-bin".into(),
        BACKEND_BINARY.path(&BACKEND).display().to_string(),
        "--backend-listen".into(),
        free_local_addrs(1)[0].to_string(),
    ]
}
