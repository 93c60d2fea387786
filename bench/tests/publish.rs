//! The control plane's publish path, measured as the README measures it: the `control-publish`
//! scenario (replayed batches through `POST /v1/messages`), scaled down, run by `roomcast-bench
//! run --no-spawn` against a running `roomcast-control` whose embedded edge holds the viewers,
//! with `--control-pid` for its CPU, and `--probe-rate` for the control hop's latency under that
//! load. The report must show the messages published and delivered to every viewer, the request
//! round trips (the load's and the probe's apart) and the control plane's CPU per message.

use std::time::Duration;

use roomcast_tests::control::API_KEY;
use roomcast_tests::{drivers, Control};

mod common;

use common::{run_bench, scenario};

/// The run takes about 15 s.
const RUN_LIMIT: Duration = Duration::from_secs(90);
const CONNS: u64 = 40;

#[tokio::test]
async fn the_publish_scenario_delivers_through_a_running_control_plane() {
    let io = drivers()[0];
    let mut control = Control::start_embedded(io, &[]).await;
    let pid = control.process().pid();
    #[rustfmt::skip]
    let args: Vec<String> = [
        scenario("control-publish.toml").display().to_string(),
        "--no-spawn".into(),
        "--control-url".into(), format!("http://{}", control.api_addr()),
        "--api-key".into(), API_KEY.into(),
        "--control-pid".into(), pid.to_string(),
        // Tokens from POST /v1/tokens: the test control plane has its own JWT secret.
        "--tokens".into(), "control".into(),
        "--conns".into(), CONNS.to_string(),
        "--rooms".into(), "20".into(),
        "--publishers".into(), "2".into(),
        "--publish-batch".into(), "50".into(),
        // Paced, so that a debug build on a busy host keeps up and everything arrives.
        "--rate".into(), "2000".into(),
        "--warmup".into(), "1".into(),
        "--duration".into(), "2".into(),
        "--drain".into(), "1".into(),
        // And the control hop's latency under that load, on a connection of its own.
        "--probe-rate".into(), "20".into(),
    ]
    .into();
    let run = tokio::task::spawn_blocking(move || run_bench("publish", &args, RUN_LIMIT))
        .await
        .expect("the bench run");
    control.assert_running();
    let r = &run.result;

    let publishing = &r["publishing"];
    assert_eq!(publishing["replay_batches"], true, "{publishing}");
    assert_eq!(publishing["errors"], 0, "{publishing}");
    assert!(
        publishing["in_window"].as_u64() > Some(1000),
        "published in the window: {publishing}"
    );
    let calls = &publishing["window_call_ms"];
    assert!(
        publishing["window_calls"].as_u64() > Some(0) && calls["p99"].as_f64() > Some(0.0),
        "the request round trip is measured: {publishing}"
    );

    let probe = &publishing["probe"];
    assert!(
        probe["window_calls"].as_u64() > Some(0)
            && probe["window_call_ms"]["p99"].as_f64() > Some(0.0),
        "the probe's round trip is measured apart: {publishing}"
    );

    assert_eq!(r["connections"]["joined"], CONNS, "{}", r["connections"]);
    let normal = &r["delivery"]["groups"][0];
    assert_eq!(normal["group"], "normal");
    assert!(normal["unique"].as_u64() > Some(0), "delivered: {normal}");
    assert_eq!(
        normal["completeness"], 1.0,
        "every message arrives: {normal}"
    );
    assert_eq!(normal["duplicates"], 0, "{normal}");
    assert_eq!(normal["out_of_order"], 0, "{normal}");
    let priorities = normal["priorities"].as_array().expect("priorities");
    let priority = |p: u64| priorities.iter().find(|row| row["priority"] == p);
    for (p, what) in [(0, "the probes"), (3, "the load")] {
        let row = priority(p).unwrap_or_else(|| panic!("a P{p} row for {what}: {normal}"));
        assert!(row["published"].as_u64() > Some(0), "{what}: {row}");
        assert_eq!(row["completeness"], 1.0, "{what} all arrive: {row}");
        let p99 = row["latency_ms"]["p99"].as_f64().expect("a latency p99");
        assert!(p99 > 0.0 && p99 < 5000.0, "{what}: p99 of {p99} ms: {row}");
    }
    assert!(
        r["cpu"]["control_us_per_published"].as_f64() > Some(0.0),
        "the control plane's CPU per message: {}",
        r["cpu"]
    );

    // The history the control plane keeps, from its /metrics (issue 12's cost of history).
    let history = &r["control"]["history"];
    assert!(history["messages"].as_u64() > Some(0), "{}", r["control"]);
    assert!(
        history["bytes_per_message"].as_f64() > Some(100.0),
        "100-byte payloads: {history}"
    );

    for line in [
        "publishing ",
        "publish calls ",
        "probe calls ",
        "control CPU ",
        "control store ",
    ] {
        assert!(
            run.output.lines().any(|l| l.starts_with(line)),
            "the table has a {line:?} line:\n{}",
            run.output
        );
    }
    assert!(
        run.summary().contains("100.000% complete"),
        "{}",
        run.summary()
    );
}
