//! The edge under test: the real `roomcast-edge` binary as a child process.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use roomcast_engine::proto::link::Register;

use crate::link::LinkPeer;
use crate::tokens::SECRET;
use crate::WAIT;

/// The `--edge-id` every test edge runs with.
pub const EDGE_ID: &str = "test-edge";

/// Workers every test edge runs with, so that connections really spread over several cores.
pub const WORKERS: u16 = 2;

/// A running `roomcast-edge`, linked to a [`LinkPeer`] that plays its control plane.
///
/// Started with `--control <peer> --ws-listen 127.0.0.1:0 --tcp-listen 127.0.0.1:0 --workers 2
/// --io <driver> --jwt-secret test-secret` plus the test's own arguments; the listening addresses
/// come from its `register` frame. The process is killed when this value is dropped; when that
/// happens because the test panicked, the end of the edge's log is printed.
pub struct Edge {
    /// The I/O driver this edge runs (`uring` or `epoll`).
    pub io: &'static str,
    /// The fake control plane at the other end of the edge's link.
    pub link: LinkPeer,
    /// The `register` frame the edge sent on its first link.
    pub register: Register,
    /// Where viewers connect over WebSocket.
    pub ws_addr: SocketAddr,
    /// Where viewers connect over raw TCP.
    pub tcp_addr: SocketAddr,
    process: EdgeProcess,
}

impl Edge {
    /// Starts an edge on driver `io` with the standard test arguments plus `extra_args`
    /// (such as `["--tick-ms", "200"]`), and waits for its `register` frame.
    pub async fn start(io: &'static str, extra_args: &[&str]) -> Edge {
        let mut link = LinkPeer::bind().await;
        let control = link.addr().to_string();
        #[rustfmt::skip]
        let mut args = vec![
            "--edge-id", EDGE_ID,
            "--control", &control,
            "--ws-listen", "127.0.0.1:0",
            "--tcp-listen", "127.0.0.1:0",
            "--workers", "2",
            "--io", io,
            "--jwt-secret", SECRET,
        ];
        args.extend_from_slice(extra_args);
        let mut process = EdgeProcess::spawn(io, &args);

        let register = tokio::select! {
            register = tokio::time::timeout(WAIT, link.accept_register()) => match register {
                Ok(register) => register,
                Err(_) => panic!(
                    "the edge sent no register frame within {WAIT:?}\n{}",
                    process.log_tail()
                ),
            },
            status = process.exited() => panic!(
                "the edge exited with {status} before registering (args {args:?})\n{}",
                process.log_tail()
            ),
        };
        let ws_addr = parse_addr("ws_addr", &register.ws_addr);
        let tcp_addr = parse_addr("tcp_addr", &register.tcp_addr);
        Edge {
            io,
            link,
            register,
            ws_addr,
            tcp_addr,
            process,
        }
    }

    /// `ws://<addr>/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.ws_addr)
    }

    /// Asserts that the edge process is still running.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.process.try_status() {
            panic!("the edge exited with {status}\n{}", self.process.log_tail());
        }
    }
}

fn parse_addr(field: &str, text: &str) -> SocketAddr {
    text.parse()
        .unwrap_or_else(|e| panic!("register.{field} {text:?} is not an ip:port address: {e}"))
}

/// The child process and its log file; kills the child (by its PID, nothing else) on drop.
struct EdgeProcess {
    child: Child,
    log_path: PathBuf,
}

impl EdgeProcess {
    fn spawn(io: &str, args: &[&str]) -> EdgeProcess {
        let log_path = new_log_path(io);
        let log = File::create(&log_path)
            .unwrap_or_else(|e| panic!("create edge log {}: {e}", log_path.display()));
        let mut command = Command::new(edge_binary());
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file handle"))
            .stderr(log);
        // Plain text in the log file.
        command.env("NO_COLOR", "1");
        // Only the arguments configure the edge: drop ROOMCAST_* settings from our environment.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ROOMCAST_") {
                command.env_remove(name);
            }
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", edge_binary().display()));
        EdgeProcess { child, log_path }
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("poll the edge process")
    }

    /// Resolves when the process exits.
    async fn exited(&mut self) -> ExitStatus {
        loop {
            if let Some(status) = self.try_status() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_tail(&self) -> String {
        const LINES: usize = 60;
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(LINES)..].join("\n");
        format!(
            "--- last {LINES} lines of {} ---\n{tail}",
            self.log_path.display()
        )
    }
}

impl Drop for EdgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        } else {
            let _ = std::fs::remove_file(&self.log_path);
        }
    }
}

/// `<target>/roomcast-test-logs/<test binary>-<pid>-<n>-<io>.log`; kept only when a test fails.
fn new_log_path(io: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = profile_dir()
        .parent()
        .unwrap_or(profile_dir())
        .join("roomcast-test-logs");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let exe = std::env::current_exe().expect("current_exe");
    let stem = exe
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{stem}-{}-{n}-{io}.log", std::process::id()))
}

/// `target/<profile>`, the directory holding the running test binary's `deps/`.
fn profile_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        // target/<profile>/deps/<test>-<hash>
        exe.parent()
            .and_then(Path::parent)
            .unwrap_or_else(|| {
                panic!(
                    "test binary {} is not in target/<profile>/deps",
                    exe.display()
                )
            })
            .to_path_buf()
    })
}

/// The `roomcast-edge` binary, built once per test process.
///
/// Cargo does not build a dependency's binaries for a test, so this runs
/// `cargo build -p roomcast-engine --bin roomcast-edge` with the test binary's profile (cargo
/// releases its build lock before it runs tests, so the nested build does not deadlock). Set
/// `ROOMCAST_TEST_EDGE_BIN` to use a prebuilt binary instead. A failed build fails every test of
/// the process with the same message, without building again.
pub fn edge_binary() -> &'static Path {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BIN.get_or_init(build_edge_binary) {
        Ok(bin) => bin,
        Err(why) => panic!("{why}"),
    }
}

fn build_edge_binary() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("ROOMCAST_TEST_EDGE_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let profile_dir = profile_dir();
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let args = [
        "build",
        "-p",
        "roomcast-engine",
        "--bin",
        "roomcast-edge",
        "--profile",
        profile,
    ];
    let output = Command::new(&cargo)
        .args(args)
        .current_dir(workspace)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run {cargo:?}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "`cargo {}` failed ({}):\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let bin = profile_dir.join("roomcast-edge");
    if !bin.is_file() {
        return Err(format!(
            "cargo built roomcast-edge but {} does not exist; build it yourself and set \
             ROOMCAST_TEST_EDGE_BIN to its path",
            bin.display()
        ));
    }
    Ok(bin)
}
