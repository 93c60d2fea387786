//! Upstream (`bench/scenarios/upstream.toml` and `upstream-direct.toml`, scaled down): 200
//! viewers of one room, 50 of them sending one chat line a second, through the sample backend
//! and directly. Every send must be answered exactly once, the outcomes must add up to the
//! sends, and every published send must reach every viewer of the room with its `from`.

use std::time::Duration;

use roomcast_tests::drivers;
use serde_json::Value;

mod common;

use common::{backend_args, run_bench, scenario, spawned_system_args, Run};

const RUN_LIMIT: Duration = Duration::from_secs(90);
const VIEWERS: u64 = 200;
const SENDERS: u64 = 50;

/// `file` with 200 viewers, 50 senders, a 0.5 s warm-up and a 2 s window, on free ports.
fn run_scenario(name: &str, file: &str, extra: &[&str]) -> Run {
    let mut args: Vec<String> = vec![scenario(file).display().to_string()];
    #[rustfmt::skip]
    args.extend([
        "--conns", "200", "--senders", "50", "--procs", "1", "--rate", "10",
        "--warmup", "0.5", "--duration", "2", "--drain", "0.5",
        "--no-floor",
    ].map(String::from));
    args.extend(extra.iter().map(|a| a.to_string()));
    args.extend(spawned_system_args(drivers()[0]));
    run_bench(name, &args, RUN_LIMIT)
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// What holds whatever the mode: every send answered once, the outcomes add up, the published
/// ones delivered to every viewer, the load untouched.
fn check_the_counts(run: &Run) -> &Value {
    let r = &run.result;
    let u = &r["upstream"];
    assert_eq!(n(&u["senders"]), SENDERS, "{u}");
    let all = &u["run"];
    assert!(n(&all["attempted"]) > 0, "{u}");
    assert_eq!(
        all["attempted"], all["answered"],
        "every send answered: {u}"
    );
    assert_eq!(u["unexpected_replies"], 0, "none answered twice: {u}");
    assert_eq!(u["every_send_answered_once"], true, "{u}");
    assert_eq!(
        n(&u["unanswered_open_at_end"]) + n(&u["unanswered_closed_at_end"]),
        0
    );
    for span in ["window", "run"] {
        let c = &u[span];
        let outcomes = n(&c["published"])
            + n(&c["not_broadcast"])
            + n(&c["rate_limited"])
            + n(&c["unavailable"])
            + n(&c["other"]);
        assert_eq!(outcomes, n(&c["answered"]), "{span}: {c}");
    }
    // 50 senders x 1/s over the 2 s window, evenly paced (a slow CI host may skip a few).
    let in_window = n(&u["window"]["attempted"]);
    assert!(
        (80..=110).contains(&in_window),
        "{in_window} sends in the window: {u}"
    );
    assert!(u["reply_ms"]["p99"].is_number(), "{u}");
    assert_eq!(u["skipped_behind"], 0, "{u}");

    let d = &u["delivered"];
    assert!(n(&d["published_sends"]) > 0, "{d}");
    assert_eq!(n(&d["viewers_judged"]), VIEWERS, "{d}");
    assert_eq!(n(&d["expected"]), n(&d["published_sends"]) * VIEWERS, "{d}");
    assert_eq!(
        d["received"], d["expected"],
        "each viewer got every published send: {d}"
    );
    assert_eq!((n(&d["duplicates"]), n(&d["out_of_order"])), (0, 0), "{d}");
    assert_eq!(d["without_ts"], 0, "{d}");
    assert!(d["latency_ms"]["p99"].is_number(), "{d}");
    // The edges and the control plane counted the window's sends too.
    assert!(n(&u["edge_sends_window"]["published"]) > 0, "{u}");
    assert!(n(&u["control_sends_window"]["published"]) > 0, "{u}");
    // The load is judged apart from the published sends (they are no load message).
    let normal = &r["delivery"]["groups"][0];
    assert_eq!(normal["group"], "normal");
    assert_eq!(normal["completeness"], 1.0, "{normal}");
    assert_eq!(normal["duplicates"], 0);
    assert!(
        run.summary().contains("; upstream 50 senders x 1/s"),
        "{}",
        run.summary()
    );
    u
}

/// Both modes, one after the other (one system at a time on the host).
#[test]
fn every_send_is_answered_once_and_the_published_ones_reach_every_viewer() {
    // Through the sample backend: the room is at level 1 (no upstream budget), so every chat
    // line is published, enriched by the backend.
    let mut extra = vec!["--send-proxy".to_string()];
    extra.extend(backend_args());
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let proxy = run_scenario("upstream-proxy", "upstream.toml", &extra);
    let u = check_the_counts(&proxy);
    assert_eq!(u["send_mode"], "proxy");
    let w = &u["window"];
    assert_eq!(w["published"], w["answered"], "{u}");
    assert!(
        n(&u["backend_stats"]["publish"]) >= n(&u["run"]["published"]),
        "the backend decided them: {u}"
    );
    assert!(
        u["control_proxy_seconds"]["count"].as_i64().unwrap() > 0,
        "{u}"
    );
    assert!(u["cpu"]["backend_us_per_send"].is_number(), "{u}");

    // Directly, with an upstream budget of 2 per 100 ms tick at level 1: 20 of the 50 sends a
    // second are published, the rest answered broadcast:false.
    let direct = run_scenario(
        "upstream-direct",
        "upstream-direct.toml",
        &["--control-arg=--send-budgets=2,25,25,30"],
    );
    let u = check_the_counts(&direct);
    assert_eq!(u["send_mode"], "direct");
    let w = &u["window"];
    assert!(n(&w["published"]) > 0 && n(&w["not_broadcast"]) > 0, "{u}");
    assert!(n(&w["published"]) < n(&w["not_broadcast"]), "{u}");
    assert_eq!(u["backend_stats"], Value::Null);
}
