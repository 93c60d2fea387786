//! The workspace's binaries as child processes: built once per test process, started with a log
//! file, killed by PID when dropped.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// A running child process and its log file (stdout and stderr).
///
/// Dropping it kills the child (by its PID, nothing else) and waits for it; when that happens
/// because the test panicked, the end of the log is printed, otherwise the log is deleted.
pub struct ChildProcess {
    child: Child,
    /// Names the process in failure messages (`edge`, `control`).
    name: String,
    log_path: PathBuf,
    exited: Option<ExitStatus>,
}

impl ChildProcess {
    /// Starts `binary` with `args`; `name` and `tag` (such as the I/O driver) name its log file.
    ///
    /// Only the arguments configure it: `ROOMCAST_*` variables of the test's environment are not
    /// passed on.
    pub fn spawn(binary: &Path, name: &str, tag: &str, args: &[String]) -> ChildProcess {
        ChildProcess::spawn_with_env(binary, name, tag, args, &[])
    }

    /// [`spawn`](Self::spawn) with `env` set in the child's environment (after the test's own
    /// `ROOMCAST_*` variables are removed), for tests of what a binary does with its variables.
    pub fn spawn_with_env(
        binary: &Path,
        name: &str,
        tag: &str,
        args: &[String],
        env: &[(String, String)],
    ) -> ChildProcess {
        let log_path = new_log_path(name, tag);
        let log = File::create(&log_path)
            .unwrap_or_else(|e| panic!("create {name} log {}: {e}", log_path.display()));
        let mut command = Command::new(binary);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file handle"))
            .stderr(log);
        // Plain text in the log file.
        command.env("NO_COLOR", "1");
        for (var, _) in std::env::vars_os() {
            if var.to_string_lossy().starts_with("ROOMCAST_") {
                command.env_remove(var);
            }
        }
        command.envs(env.iter().map(|(k, v)| (k, v)));
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        ChildProcess {
            child,
            name: name.to_owned(),
            log_path,
            exited: None,
        }
    }

    /// The child's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the process has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self
                .child
                .try_wait()
                .unwrap_or_else(|e| panic!("poll the {} process: {e}", self.name));
        }
        self.exited
    }

    /// Resolves when the process exits.
    pub async fn exited(&mut self) -> ExitStatus {
        loop {
            if let Some(status) = self.try_status() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Panics (with the end of the log) if the process has exited.
    #[track_caller]
    pub fn assert_running(&mut self) {
        if let Some(status) = self.try_status() {
            panic!(
                "the {} exited with {status}\n{}",
                self.name,
                self.log_tail()
            );
        }
    }

    /// Kills the process with SIGKILL (as a crash would end it) and reaps it.
    pub fn kill(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }

    /// Sends `signal` (such as `STOP` or `CONT`) to this process, by its PID.
    pub fn signal(&mut self, signal: &str) {
        self.assert_running();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap_or_else(|e| panic!("run kill -{signal}: {e}"));
        assert!(
            status.success(),
            "kill -{signal} {} failed: {status}",
            self.pid()
        );
    }

    /// The last lines of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        const LINES: usize = 60;
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(LINES)..].join("\n");
        format!(
            "--- last {LINES} lines of {} ({}) ---\n{tail}",
            self.log_path.display(),
            self.name
        )
    }

    /// The whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if self.exited.is_none() {
            // A stopped process dies of SIGKILL too.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        } else {
            let _ = std::fs::remove_file(&self.log_path);
        }
    }
}

/// `n` distinct free loopback addresses (`127.0.0.1:<port>`): each port was bound and released,
/// so a child process can listen there.
pub fn free_local_addrs(n: usize) -> Vec<SocketAddr> {
    // Hold every listener until all are bound, so the ports differ.
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("listener address"))
        .collect()
}

/// `<target>/roomcast-test-logs/<test binary>-<pid>-<n>-<name>-<tag>.log`; kept only when a test
/// fails.
fn new_log_path(name: &str, tag: &str) -> PathBuf {
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
    dir.join(format!(
        "{stem}-{}-{n}-{name}-{tag}.log",
        std::process::id()
    ))
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

/// One binary of the workspace that the tests start.
pub struct WorkspaceBinary {
    /// The package that holds it (`cargo build -p <package>`).
    pub package: &'static str,
    /// The binary's name (`--bin <bin>`).
    pub bin: &'static str,
    /// An environment variable that, when set, names a prebuilt binary to use instead.
    pub override_var: &'static str,
}

/// The `roomcast-edge` binary.
pub const EDGE_BINARY: WorkspaceBinary = WorkspaceBinary {
    package: "roomcast-engine",
    bin: "roomcast-edge",
    override_var: "ROOMCAST_TEST_EDGE_BIN",
};

/// The `roomcast-control` binary.
pub const CONTROL_BINARY: WorkspaceBinary = WorkspaceBinary {
    package: "roomcast-control",
    bin: "roomcast-control",
    override_var: "ROOMCAST_TEST_CONTROL_BIN",
};

/// The sample platform backend, `roomcast-example-backend` (examples/backend).
pub const BACKEND_BINARY: WorkspaceBinary = WorkspaceBinary {
    package: "roomcast-example-backend",
    bin: "roomcast-example-backend",
    override_var: "ROOMCAST_TEST_BACKEND_BIN",
};

impl WorkspaceBinary {
    /// The binary's path, built once per test process by the caller's `cell`.
    ///
    /// Cargo does not build a dependency's binaries for a test, so this runs
    /// `cargo build -p <package> --bin <bin>` with the test binary's profile (cargo releases its
    /// build lock before it runs tests, so the nested build does not deadlock). Set
    /// `override_var` to use a prebuilt binary instead. A failed build fails every test of the
    /// process with the same message, without building again.
    pub fn path(&'static self, cell: &'static OnceLock<Result<PathBuf, String>>) -> &'static Path {
        match cell.get_or_init(|| self.build()) {
            Ok(bin) => bin,
            Err(why) => panic!("{why}"),
        }
    }

    fn build(&self) -> Result<PathBuf, String> {
        if let Some(bin) = std::env::var_os(self.override_var) {
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
            self.package,
            "--bin",
            self.bin,
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
        let bin = profile_dir.join(self.bin);
        if !bin.is_file() {
            return Err(format!(
                "cargo built {} but {} does not exist; build it yourself and set {} to its path",
                self.bin,
                bin.display(),
                self.override_var
            ));
        }
        Ok(bin)
    }
}
