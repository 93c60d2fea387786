//! CI smoke test of the load generator: a small scenario run end to end — control plane (or the
//! bench on the edge link), edge process, client processes, publishing with a priority mix, the
//! final reports — on each I/O driver, asserting that every message arrived exactly once, in
//! order, in sane time, and that the edge's own connection count matches the clients'.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use roomcast_tests::drivers;
use roomcast_tests::process::{free_local_addrs, CONTROL_BINARY, EDGE_BINARY};
use serde_json::Value;

/// One run may take this long (it takes about 12 s).
const RUN_LIMIT: Duration = Duration::from_secs(60);
const CONNS: u64 = 300;

fn edge_binary() -> &'static Path {
    static EDGE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    EDGE_BINARY.path(&EDGE)
}

fn control_binary() -> &'static Path {
    static CONTROL: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    CONTROL_BINARY.path(&CONTROL)
}

/// `roomcast-bench run <big-room scenario, scaled down> --publish-via <via>
/// --edge-arg=--io=<io>`; its JSON result.
fn run_small_scenario(via: &str, io: &str) -> Value {
    let dir = std::env::temp_dir().join(format!(
        "roomcast-bench-smoke-{}-{via}-{io}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("create the run directory");
    let json = dir.join("result.json");
    let output = dir.join("bench-output.txt");
    let ports = free_local_addrs(4);
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/big-room.toml");
    let mut bench = Command::new(env!("CARGO_BIN_EXE_roomcast-bench"));
    bench
        .arg("run")
        .arg(&scenario)
        .args(["--conns", &CONNS.to_string(), "--procs", "1"])
        .args([
            "--rate",
            "20",
            "--warmup",
            "1",
            "--duration",
            "3",
            "--drain",
            "1",
        ])
        .args(["--floor-conns", "200", "--floor-iters", "10"])
        .args(["--publish-via", via])
        .arg("--edge-bin")
        .arg(edge_binary())
        .arg("--control-bin")
        .arg(control_binary())
        .arg(format!("--edge-arg=--io={io}"))
        .args(["--link-listen", &ports[2].to_string()])
        .args(["--control-url", &format!("http://{}", ports[3])])
        .args(["--ws-port", &ports[0].port().to_string()])
        .args(["--tcp-port", &ports[1].port().to_string()])
        .arg("--json-out")
        .arg(&json)
        .arg("--log-dir")
        .arg(&dir)
        .stdin(Stdio::null());
    let out = std::fs::File::create(&output).expect("create the output file");
    bench
        .stdout(out.try_clone().expect("clone the output file"))
        .stderr(out);
    let mut child = bench.spawn().expect("start roomcast-bench");
    let deadline = Instant::now() + RUN_LIMIT;
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
            failed(format!("roomcast-bench took longer than {RUN_LIMIT:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !status.success() {
        failed(format!("roomcast-bench failed: {status}"));
    }
    eprintln!("{}", summary_line(&output));
    let text = std::fs::read_to_string(&json).expect("read the JSON result");
    let result = serde_json::from_str(&text).expect("parse the JSON result");
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The run's `summary:` line.
fn summary_line(output: &Path) -> String {
    let text = std::fs::read_to_string(output).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("summary:"))
        .unwrap_or("(no summary line)")
        .to_string()
}

#[test]
fn a_small_scenario_delivers_everything_on_every_driver() {
    // Through the control plane on every driver, and once with the bench playing it.
    let mut runs: Vec<(&str, &str)> = drivers().into_iter().map(|io| ("control", io)).collect();
    runs.push(("link", runs[0].1));
    for (via, io) in runs {
        eprintln!("--- small scenario via {via} on the {io} driver");
        let r = run_small_scenario(via, io);
        let io = format!("{io} via {via}");
        let io = io.as_str();
        let conn = &r["connections"];
        assert_eq!(conn["joined"], CONNS, "{io}: every connection joins");
        assert_eq!(conn["failed"], 0, "{io}");
        assert_eq!(
            conn["edge_check"]["connections_match"], true,
            "{io}: the edge counts the clients' connections: {}",
            conn["edge_check"]
        );
        assert!(
            io.starts_with(r["system"]["drivers"].as_str().unwrap_or("?")),
            "{io}: the edge runs the driver asked for: {}",
            r["system"]["drivers"]
        );
        assert_eq!(r["publishing"]["errors"], 0, "{io}");
        let normal = &r["delivery"]["groups"][0];
        assert_eq!(normal["group"], "normal");
        let priorities = normal["priorities"].as_array().expect("priorities");
        assert_eq!(
            priorities.len(),
            4,
            "{io}: the scenario's mix has all four priorities"
        );
        for p in priorities {
            assert!(p["published"].as_u64() > Some(0), "{io}: {p}");
            assert_eq!(p["completeness"], 1.0, "{io}: every message arrives: {p}");
            assert_eq!(p["duplicates"], 0, "{io}: {p}");
            assert_eq!(p["out_of_order"], 0, "{io}: {p}");
            let p99 = p["latency_ms"]["p99"].as_f64().expect("a latency p99");
            assert!(p99 > 0.0 && p99 < 2000.0, "{io}: p99 of {p99} ms: {p}");
        }
        assert!(
            r["cpu"]["edge_frame_vs_floor"]
                .as_f64()
                .is_some_and(|x| x > 0.0),
            "{io}: edge CPU per frame is compared with the floor: {}",
            r["cpu"]
        );
    }
}
