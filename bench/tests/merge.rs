//! Merge traffic (`bench/scenarios/pk.toml` and `like-storm.toml`, scaled down): the publisher
//! sends its messages with merge rules, every viewer is judged against what its room was
//! published, and `--merge-compare` runs the same traffic without the rules after it.
//!
//! What is asserted is what the merge rules promise whatever the timing: exact sums per viewer,
//! the PK's final and its last value, every published PK message accounted for by `merged`. The
//! spacing of the PK updates (at most one per interval) is reported, not asserted here: it is the
//! unit tests' (`merge.rs`) to check the bench's arithmetic, and a run's to judge the control
//! plane.

use std::time::Duration;

use roomcast_tests::drivers;
use serde_json::Value;

mod common;

use common::{run_bench, scenario, spawned_system_args, Run};

/// The comparison is two runs of about 12 s each.
const RUN_LIMIT: Duration = Duration::from_secs(120);
const CONNS: u64 = 300;

/// `file` with 300 viewers, a 1 s warm-up and a 3 s window, on free ports, plus `extra`.
fn run_scenario(name: &str, file: &str, extra: &[&str]) -> Run {
    let mut args: Vec<String> = vec![scenario(file).display().to_string()];
    #[rustfmt::skip]
    args.extend([
        "--conns", "300", "--procs", "1",
        "--warmup", "1", "--duration", "3", "--drain", "1",
        "--no-floor",
    ].map(String::from));
    args.extend(extra.iter().map(|a| a.to_string()));
    args.extend(spawned_system_args(drivers()[0]));
    run_bench(name, &args, RUN_LIMIT)
}

fn normal_group(r: &Value) -> &Value {
    let normal = &r["delivery"]["groups"][0];
    assert_eq!(normal["group"], "normal");
    normal
}

/// Both scenarios, one after the other (one system at a time on the host).
#[test]
fn merge_traffic_is_judged_per_viewer() {
    likes_and_combos_sum_exactly_and_the_comparison_runs_both();
    the_pk_final_and_last_value_reach_every_viewer();
}

fn likes_and_combos_sum_exactly_and_the_comparison_runs_both() {
    let run = run_scenario(
        "like-storm",
        "like-storm.toml",
        &["--like-rate", "3000", "--combo-rate", "100"],
    );
    let all = &run.result;
    assert_eq!(all["merge_compare"], true, "{all}");
    let with = &all["with_rules"];
    let m = &with["merge"];
    assert_eq!(m["rules"], true);
    assert_eq!(m["ok"], true, "{}\n{}", m, run.output);
    assert_eq!(m["viewers_judged"], CONNS);
    for kind in ["like", "combo"] {
        let sums = &m["sums"][kind];
        assert_eq!(sums["mismatching_viewers"], 0, "{kind}: {sums}");
        assert_eq!(sums["fraction"], 1.0, "{kind}: {sums}");
        assert!(sums["published"].as_u64().unwrap() > 0, "{kind}: {sums}");
    }
    assert!(
        m["published"]["held"].as_u64().unwrap() > 0,
        "likes waited in their windows: {m}"
    );
    let likes = &m["received"]["like"];
    assert!(
        likes["stands_for_per_msg"].as_f64().unwrap() > 2.0,
        "a delivered like stands for several published: {likes}"
    );
    assert!(
        m["control"]["merged_since_idle"].as_u64().unwrap() > 0,
        "{m}"
    );
    assert_eq!(m["control"]["windows_at_end"], 0, "every window ended");
    // The load is judged as before, the merge traffic kept out of it.
    let normal = normal_group(with);
    assert_eq!(normal["completeness"], 1.0, "{normal}");
    assert!(run.output.contains("merge verdict  OK"), "{}", run.output);

    let without = &all["without_rules"]["merge"];
    assert_eq!(without["rules"], false);
    assert_eq!(without["ok"], Value::Null, "reported, not judged");
    assert_eq!(without["published"]["held"], 0);
    assert_eq!(
        without["received"]["like"]["stands_for"], 0,
        "no merge rule"
    );
    assert_eq!(without["control"]["merged_since_idle"], 0);

    let c = &all["comparison"];
    for side in ["with_rules", "without_rules"] {
        for key in [
            "published_per_s",
            "delivered_msgs_per_s",
            "frames_per_s",
            "edge_cores",
        ] {
            assert!(c[side][key].is_number(), "{side}.{key}: {c}");
        }
    }
    assert!(
        run.output
            .contains("compare: like-storm without merge rules vs with:"),
        "{}",
        run.output
    );
}

fn the_pk_final_and_last_value_reach_every_viewer() {
    let run = run_scenario(
        "pk",
        "pk.toml",
        &["--pk-rate", "200", "--pk-interval-ms", "1000"],
    );
    let r = &run.result;
    let m = &r["merge"];
    let pk = &m["pk"];
    assert_eq!(pk["judged"], CONNS, "{m}");
    assert_eq!(pk["final_missing"], 0, "{m}");
    assert_eq!(pk["last_value_mismatches"], 0, "{m}");
    assert_eq!(pk["unaccounted"], 0, "{m}");
    assert_eq!(m["finals_received"], CONNS);
    assert_eq!(m["published"]["finals"], 2, "one final per room");
    let received = &m["received"]["pk"];
    assert!(
        received["stands_for_per_msg"].as_f64().unwrap() > 10.0,
        "the updates were merged: {received}"
    );
    assert!(pk["mean_gap_ms"].is_number(), "{pk}");
    assert_eq!(m["duplicates"], 0);
    assert_eq!(m["out_of_order"], 0);
    assert_eq!(normal_group(r)["completeness"], 1.0);
    assert!(
        run.output.contains("pk check       300 viewers"),
        "{}",
        run.output
    );
}
