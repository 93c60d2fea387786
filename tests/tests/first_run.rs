//! What a new user meets first (issue 10, item 6): the start-up banner's commands work as printed,
//! and `ROOMCAST_*` variables that a binary does not read are warned about instead of ignored.

use std::process::Stdio;
use std::time::Duration;

use roomcast_tests::control::{build_binaries, ApiKeyFrom, API_KEY};
use roomcast_tests::edge::{edge_args, edge_binary};
use roomcast_tests::process::{free_local_addrs, ChildProcess};
use roomcast_tests::{for_each_driver, Client, Control, Target, WireFormat, WAIT};
use serde_json::{json, Value};

/// The banner's `export ROOMCAST_API_KEY='<the API key>'` placeholder.
const KEY_PLACEHOLDER: &str = "<the API key>";

/// The banner of a control plane's log: its command lines (`export ...` and `curl ...`), trimmed.
fn banner_commands(log: &str) -> (Option<String>, Vec<String>) {
    let start = log
        .find("roomcast control plane is up")
        .unwrap_or_else(|| panic!("no banner in the log:\n{log}"));
    let lines: Vec<&str> = log[start..].lines().map(str::trim).collect();
    let export = lines
        .iter()
        .find(|l| l.starts_with("export ROOMCAST_API_KEY="))
        .map(|l| l.to_string());
    let curls = lines
        .iter()
        .filter(|l| l.starts_with("curl "))
        .map(|l| l.to_string())
        .collect();
    (export, curls)
}

/// Runs `script` with `sh -c`, without the test's `ROOMCAST_API_KEY`, and returns its stdout;
/// panics unless it exits 0.
async fn sh(script: &str) -> String {
    let output = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .env_remove("ROOMCAST_API_KEY")
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("sh -c {script:?} took longer than {WAIT:?}"))
    .unwrap_or_else(|e| panic!("run sh -c {script:?}: {e}"));
    assert!(
        output.status.success(),
        "sh -c {script:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The JSON object a banner command printed.
#[track_caller]
fn json_of(script: &str, out: &str) -> Value {
    serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("sh -c {script:?} printed no JSON ({e}): {out:?}"))
}

#[test]
fn the_banner_commands_work_as_printed_with_every_kind_of_api_key() {
    build_binaries();
    for_each_driver(|io| async move {
        for key in [ApiKeyFrom::Flag, ApiKeyFrom::Env, ApiKeyFrom::Default] {
            let control = Control::start_embedded_with(io, &[], &[], key).await;
            let embedded = control.embedded_edge.expect("an embedded edge");
            control.wait_ready().await;
            let log = control.log();
            let (export, curls) = banner_commands(&log);
            assert_eq!(curls.len(), 2, "{key:?}: mint and publish:\n{log}");
            assert!(curls[0].ends_with("/v1/tokens"), "{}", curls[0]);
            assert!(curls[1].ends_with("/v1/rooms/r1/messages"), "{}", curls[1]);

            // The shell lines to run before each command, as the banner says.
            let prelude = match key {
                ApiKeyFrom::Default => {
                    // The development key is public: printed in the commands themselves.
                    assert_eq!(export, None, "{log}");
                    assert!(curls.iter().all(|c| c.contains(key.key())), "{curls:?}");
                    String::new()
                }
                ApiKeyFrom::Flag | ApiKeyFrom::Env => {
                    // A configured key is never printed; the commands read it from the shell.
                    let banner = &log[log.find("roomcast control plane is up").unwrap()..];
                    assert!(!banner.contains(API_KEY), "the key is printed:\n{banner}");
                    let export = export
                        .unwrap_or_else(|| panic!("{key:?}: no export line in the banner:\n{log}"));
                    assert!(export.contains(KEY_PLACEHOLDER), "{export}");
                    // Without it set, the printed command is refused: the key really comes
                    // from the shell.
                    let refused = sh(&curls[0]).await;
                    assert_eq!(
                        json_of(&curls[0], &refused)["error"]["code"],
                        "unauthorized",
                        "{refused}"
                    );
                    format!("{}\n", export.replace(KEY_PLACEHOLDER, API_KEY))
                }
            };

            // 1. Mint a token.
            let mint = format!("{prelude}{}", curls[0]);
            let minted = json_of(&mint, &sh(&mint).await);
            let token = minted["token"]
                .as_str()
                .unwrap_or_else(|| panic!("{key:?}: no token from {mint:?}: {minted}"))
                .to_owned();

            // 2. Connect and join with it.
            let mut viewer = Client::connect(&embedded, WireFormat::WsJson).await;
            assert_eq!(
                viewer.auth(&token).await,
                Ok(()),
                "{key:?}: the minted token"
            );
            assert_eq!(viewer.join("r1").await, Ok(()));

            // 3. Publish; the viewer gets it.
            let publish = format!("{prelude}{}", curls[1]);
            let accepted = json_of(&publish, &sh(&publish).await);
            assert_eq!(
                (&accepted["seq"], &accepted["delivered_edges"]),
                (&json!(1), &json!(1)),
                "{key:?}: {accepted}"
            );
            let got = viewer
                .recv_messages(&Target::Room("r1".into()), 1, WAIT)
                .await;
            assert_eq!(got.len(), 1, "{got:?}");
            assert_eq!((got[0].seq, got[0].priority), (1, 2));
            assert_eq!(got[0].kind, "chat");
            assert_eq!(
                serde_json::from_slice::<Value>(&got[0].data).unwrap(),
                json!({"text": "hello"})
            );
        }
    });
}

/// The warnings of a log about `variable` being ignored.
fn ignored<'a>(log: &'a str, variable: &str) -> Vec<&'a str> {
    let about = format!("ignores the environment variable {variable}:");
    log.lines()
        .filter(|l| l.contains("WARN") && l.contains(&about))
        .collect()
}

#[test]
fn the_control_plane_warns_about_variables_it_does_not_read() {
    build_binaries();
    for_each_driver(|io| async move {
        let env = [
            // roomcast-edge's merge window: the embedded edge takes it from the levels.
            ("ROOMCAST_TICK_MS", "50"),
            // ... which is how to set it.
            ("ROOMCAST_LEVEL_TICKS_MS", "50,250,500,1000"),
            // An edge option the embedded edge does read from its variable.
            ("ROOMCAST_QUEUE_SOFT_BYTES", "262144"),
            ("ROOMCAST_NO_SUCH_OPTION", "1"),
        ];
        let control = Control::start_embedded_with(io, &[], &env, ApiKeyFrom::Flag).await;
        let log = control.log();

        let tick = ignored(&log, "ROOMCAST_TICK_MS");
        assert_eq!(tick.len(), 1, "one warning about ROOMCAST_TICK_MS:\n{log}");
        assert!(
            tick[0].contains("set --level-ticks-ms (ROOMCAST_LEVEL_TICKS_MS)"),
            "says how to set the window instead: {}",
            tick[0]
        );
        assert_eq!(ignored(&log, "ROOMCAST_NO_SUCH_OPTION").len(), 1, "{log}");
        for read in ["ROOMCAST_QUEUE_SOFT_BYTES", "ROOMCAST_LEVEL_TICKS_MS"] {
            assert!(
                ignored(&log, read).is_empty(),
                "{read} is read, not ignored:\n{log}"
            );
        }
        // The way the warning names sets the window: level 1's tick is 50 ms.
        assert_eq!(control.api.room("r1").await["tick_ms"], 50);
    });
}

#[test]
fn the_edge_warns_about_variables_it_does_not_read() {
    build_binaries();
    for_each_driver(|io| async move {
        // No control plane: the warning comes while the configuration loads.
        let [control, ws, tcp] = free_local_addrs(3)[..] else {
            unreachable!()
        };
        let args = edge_args(
            io,
            &control.to_string(),
            "warned-edge",
            &ws.to_string(),
            &tcp.to_string(),
            &[],
        );
        let env = [
            ("ROOMCAST_EDGE_QUEUE_SOFT_BYTES", "262144"),
            ("ROOMCAST_TICK_MS", "50"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let mut edge = ChildProcess::spawn_with_env(edge_binary(), "edge", io, &args, &env);
        let deadline = tokio::time::Instant::now() + WAIT;
        let log = loop {
            edge.assert_running();
            let log = edge.log();
            if !ignored(&log, "ROOMCAST_EDGE_QUEUE_SOFT_BYTES").is_empty() {
                break log;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no warning about ROOMCAST_EDGE_QUEUE_SOFT_BYTES within {WAIT:?}:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let warning = ignored(&log, "ROOMCAST_EDGE_QUEUE_SOFT_BYTES");
        assert_eq!(warning.len(), 1, "{log}");
        assert!(
            warning[0].contains("set ROOMCAST_QUEUE_SOFT_BYTES (--queue-soft-bytes) instead"),
            "{}",
            warning[0]
        );
        assert!(
            ignored(&log, "ROOMCAST_TICK_MS").is_empty(),
            "the edge reads ROOMCAST_TICK_MS:\n{log}"
        );
    });
}
