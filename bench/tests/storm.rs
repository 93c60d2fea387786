//! The reconnect storm (`bench/scenarios/reconnect-storm.toml`, scaled down): every viewer is
//! dropped at once inside the measured window and resumes with `since`. With the control plane's
//! history every viewer must be recovered and its stream complete and gap-free across the
//! reconnect, the replay counted towards completeness; with the history off (`--history-max-bytes
//! 0`) the refused viewers must be reported apart, by reason, not as silent loss in their group.

use std::time::Duration;

use roomcast_tests::drivers;
use serde_json::Value;

mod common;

use common::{run_bench, scenario, spawned_system_args, Run};

/// One run takes about 12 s.
const RUN_LIMIT: Duration = Duration::from_secs(60);
const CONNS: u64 = 300;

/// The scenario with 300 viewers, dropped 1.5 s into a 4 s window, reconnecting within 0.5 s.
fn run_storm(name: &str, control_args: &[&str]) -> Run {
    let mut args: Vec<String> = vec![scenario("reconnect-storm.toml").display().to_string()];
    #[rustfmt::skip]
    args.extend([
        "--conns", "300", "--procs", "1",
        "--warmup", "1", "--duration", "4", "--drain", "1",
        "--drop-all-at", "1.5", "--reconnect-jitter", "0.5",
        "--no-floor",
    ].map(String::from));
    args.extend(spawned_system_args(drivers()[0]));
    args.extend(control_args.iter().map(|a| format!("--control-arg={a}")));
    run_bench(name, &args, RUN_LIMIT)
}

fn normal_group(r: &Value) -> &Value {
    let normal = &r["delivery"]["groups"][0];
    assert_eq!(normal["group"], "normal");
    normal
}

/// Both runs, one after the other (one system at a time on the host).
#[test]
fn a_reconnect_storm_resumes_every_viewer_or_says_why_not() {
    every_dropped_viewer_resumes_exactly_where_it_stopped();
    viewers_refused_recovery_are_reported_apart_not_as_loss();
}

fn every_dropped_viewer_resumes_exactly_where_it_stopped() {
    let run = run_storm("storm", &[]);
    let r = &run.result;
    let s = &r["recovery"];
    assert_eq!(s["dropped"], CONNS, "everyone is dropped: {s}");
    assert_eq!(s["answered"], CONNS, "{s}");
    assert_eq!(s["resumed_with_since"], CONNS, "{s}");
    assert_eq!(s["recovered"], CONNS, "{s}");
    assert_eq!(s["not_recovered_total"], 0, "{s}");
    let missed = s["missed_msgs"].as_u64().expect("missed messages");
    assert!(missed > 0, "the viewers missed messages while away: {s}");
    assert_eq!(
        s["replayed_msgs"], missed,
        "every missed message is replayed: {s}"
    );
    assert_eq!(s["replaying_at_end"], 0, "{s}");
    let all = s["secs_to_all_answered"]
        .as_f64()
        .expect("everyone answered");
    assert!(all > 0.0 && all < 5.0, "{all} s from the drop: {s}");
    assert!(s["reply_ms"]["p99"].as_f64() > Some(0.0), "{s}");
    assert!(s["caught_up_ms"]["count"] == CONNS, "{s}");
    assert!(
        s["cpu"]["control_cores_after"].is_number(),
        "the control plane's CPU after the drop: {s}"
    );
    assert_eq!(s["complete_and_gap_free"], true, "{s}");

    // The replay counts towards completeness: nothing missing, nothing twice, in order.
    let normal = normal_group(r);
    assert_eq!(normal["open"], CONNS, "{normal}");
    assert_eq!(normal["completeness"], 1.0, "{normal}");
    assert_eq!(normal["duplicates"], 0, "{normal}");
    assert_eq!(normal["out_of_order"], 0, "{normal}");

    // The control plane agrees: it answered that many recoveries, from its history.
    let control = &r["control"];
    assert_eq!(
        control["recoveries_since_idle"]["recovered"], CONNS,
        "{control}"
    );
    assert!(
        control["history"]["messages"].as_u64() > Some(0),
        "{control}"
    );
    assert!(
        control["history"]["bytes_per_message"].as_f64() > Some(0.0),
        "{control}"
    );

    for line in [
        "storm ",
        "recovery time ",
        "replay ",
        "storm CPU ",
        "storm verdict  every viewer",
        "control store ",
    ] {
        assert!(
            run.output.lines().any(|l| l.starts_with(line)),
            "the table has a {line:?} line:\n{}",
            run.output
        );
    }
    assert!(run.summary().contains("gap-free"), "{}", run.summary());
}

fn viewers_refused_recovery_are_reported_apart_not_as_loss() {
    // No history: every viewer that missed a message is told too_old.
    let run = run_storm("storm-no-history", &["--history-max-bytes=0"]);
    let r = &run.result;
    let s = &r["recovery"];
    assert_eq!(s["dropped"], CONNS, "{s}");
    assert_eq!(s["answered"], CONNS, "{s}");
    let refused = s["not_recovered"]["too_old"].as_u64().unwrap_or(0);
    assert!(refused > 0, "too_old without history: {s}");
    assert_eq!(s["not_recovered_total"], refused, "{s}");
    assert_eq!(s["unrecovered"]["open"], refused, "{s}");
    assert!(s["unrecovered"]["skipped"].as_u64() > Some(0), "{s}");
    assert_eq!(
        s["unrecovered"]["missing_besides_skipped"], 0,
        "all they lack is what they skipped: {s}"
    );
    assert_eq!(s["complete_and_gap_free"], false, "{s}");

    // The rest of the group is judged without them, and is whole.
    let normal = normal_group(r);
    assert_eq!(normal["unrecovered"], refused, "{normal}");
    assert_eq!(normal["open"].as_u64(), Some(CONNS - refused), "{normal}");
    assert_eq!(normal["completeness"], 1.0, "{normal}");
    assert_eq!(r["control"]["history"]["messages"], 0, "{}", r["control"]);
    assert!(
        run.output
            .lines()
            .any(|l| l.starts_with("storm verdict  NOT complete")),
        "{}",
        run.output
    );
}
