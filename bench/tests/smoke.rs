//! CI smoke test of the load generator: a small scenario run end to end — control plane (or the
//! bench on the edge link), edge process, client processes, publishing with a priority mix, the
//! final reports — on each I/O driver, asserting that every message arrived exactly once, in
//! order, in sane time, and that the edge's own connection count matches the clients'.

use std::time::Duration;

use roomcast_tests::drivers;
use serde_json::Value;

mod common;

use common::{run_bench, scenario, spawned_system_args};

/// One run may take this long (it takes about 12 s).
const RUN_LIMIT: Duration = Duration::from_secs(60);
const CONNS: u64 = 300;

/// `roomcast-bench run <big-room scenario, scaled down> --publish-via <via>
/// --edge-arg=--io=<io>`; its JSON result.
fn run_small_scenario(via: &str, io: &str) -> Value {
    let mut args: Vec<String> = vec![
        scenario("big-room.toml").display().to_string(),
        "--conns".into(),
        CONNS.to_string(),
        "--procs".into(),
        "1".into(),
    ];
    args.extend(
        [
            "--rate",
            "20",
            "--warmup",
            "1",
            "--duration",
            "3",
            "--drain",
            "1",
            "--floor-conns",
            "200",
            "--floor-iters",
            "10",
            "--publish-via",
            via,
        ]
        .map(String::from),
    );
    args.extend(spawned_system_args(io));
    if via == "link" {
        // The link run ramps the load: 20 -> 40 msg/s over the 3 s window.
        args.extend(["--ramp-to".into(), "40".into()]);
    }
    run_bench(&format!("smoke-{via}-{io}"), &args, RUN_LIMIT).result
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
        // The edges' merge windows, over the window and per second.
        let windows = &r["windows"];
        assert!(
            windows["mean_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
            "{io}: the mean effective window: {windows}"
        );
        assert!(windows["windows"].as_u64() > Some(0), "{io}: {windows}");
        assert!(
            r["timeline"]
                .as_array()
                .is_some_and(|t| t.iter().any(|s| s["window_ms"].is_number())),
            "{io}: the timeline has windows"
        );
        if via == "link" {
            let ramp = &r["publishing"]["ramp"];
            assert_eq!(ramp["planned_in_window"], 90.0, "{io}: {ramp}");
            let in_window = r["publishing"]["in_window"].as_u64().unwrap_or(0);
            assert!(
                (85..=95).contains(&in_window),
                "{io}: (20 + 40) / 2 x 3 s = 90 messages in the window, not {in_window}"
            );
            assert!(r["ramp"]["high"].is_object(), "{io}: {}", r["ramp"]);
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
