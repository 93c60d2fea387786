//! The JavaScript side, run by `cargo test` against this build's binaries:
//!
//! - `sdk/js`'s `npm test`: the SDK's build and type check, its unit tests, and its integration
//!   tests against the real `roomcast-control` (dispatch, join, send, receipts, tokens, exact
//!   recovery through cut connections, a slow-consumer close, a restart and the reload event);
//!   then the committed `sdk/js/dist` (what `/demo/` serves) must be what that build produced;
//! - `examples/h5-room`'s `npm test`: the demo page in headless Chromium, against the real
//!   control plane and an edge that is killed and restarted.
//!
//! They need Node 20 and npm, and the browser test Debian's chromium: missing npm packages are
//! installed from the lock files (`npm ci`), and `scripts/install-test-deps.sh` installs chromium
//! when it is missing and this runs as root (CI); otherwise the test fails saying what to install.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use roomcast_tests::control::control_binary;
use roomcast_tests::edge::edge_binary;

/// One at a time: the SDK's tests rebuild `sdk/js/dist`, which the demo page loads.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn run(dir: &Path, program: &str, args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut command = Command::new(program);
    command.args(args).current_dir(dir);
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {program} in {}: {e} (Node 20 and npm are needed for the JavaScript tests)",
            dir.display()
        )
    })
}

/// Fails with everything the command printed when it did not succeed.
fn assert_success(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `npm ci` in `dir` unless its packages are installed.
fn npm_install(dir: &Path) {
    if dir.join("node_modules").is_dir() {
        return;
    }
    let output = run(
        dir,
        "npm",
        &["ci", "--no-audit", "--no-fund", "--loglevel=error"],
        &[],
    );
    assert_success(&format!("npm ci in {}", dir.display()), &output);
}

#[test]
fn the_sdk_passes_its_tests_against_this_build_and_its_committed_build_is_current() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = workspace().join("sdk/js");
    npm_install(&dir);
    let control = control_binary();
    let output = run(&dir, "npm", &["test"], &[("ROOMCAST_CONTROL_BIN", control)]);
    assert_success("npm test in sdk/js", &output);
    // /demo/ serves sdk/js/dist from the source tree: what is committed must be this build.
    let root = workspace();
    if root.join(".git").exists() {
        let status = run(
            &root,
            "git",
            &["status", "--porcelain", "--", "sdk/js/dist"],
            &[],
        );
        assert_success("git status", &status);
        let changed = String::from_utf8_lossy(&status.stdout);
        assert!(
            changed.trim().is_empty(),
            "sdk/js/dist differs from the build of sdk/js/src: run `npm run build` in sdk/js and \
             commit dist/\n{changed}"
        );
    }
}

#[test]
fn the_demo_page_works_in_a_real_browser() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let root = workspace();
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if !chromium.exists() {
        // The project installs what it needs where it may (root, CI).
        let output = run(&root, "scripts/install-test-deps.sh", &[], &[]);
        assert_success(
            "scripts/install-test-deps.sh (Debian's chromium for the browser test)",
            &output,
        );
    }
    let dir = root.join("examples/h5-room");
    npm_install(&dir);
    let control = control_binary();
    let edge = edge_binary();
    let output = run(
        &dir,
        "npm",
        &["test"],
        &[
            ("ROOMCAST_CONTROL_BIN", control),
            ("ROOMCAST_EDGE_BIN", edge),
            ("CHROMIUM", &chromium),
        ],
    );
    assert_success("npm test in examples/h5-room (headless Chromium)", &output);
}
