//! The results of a run: the delivery section built from the clients' merged report (per group,
//! per priority: completeness and latency), the readable table printed at the end, and the
//! one-line summary. The full result is one JSON document; the table is printed from it.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use roomcast_proto::message::PRIORITIES;
use serde_json::{json, Value};

use crate::api::Metrics;
use crate::dist::Group;
use crate::floor::FloorResult;
use crate::kernel_tcp::Counters;
use crate::merge::{RoomExpect, Traffic, KINDS, LIKE_KEY, PK_KEY};
use crate::msgs::{
    add_counts, add_pairs, histogram_of, new_latency_histogram, Connected, MergeReport,
    RecoveryReport, Report,
};
use crate::progress::{rate, Sample};
use crate::scenario::{ramp_text, rate_text, RunArgs};
use crate::sys::{KernelMem, ProcMem};
use crate::system::{self, EdgeLoad, Measured};
use crate::upstream;

/// What changed over the measured window (or the hold) between two snapshots the coordinator
/// took: the raw measurements the CPU figures are made of.
pub struct Window {
    pub secs: f64,
    /// Messages the API (or the links) accepted, merge traffic included.
    pub published: u64,
    /// Of them, merge traffic per kind ([`crate::merge::Kind`] order).
    pub merge_published: [u64; 3],
    pub edge_cpu: Option<f64>,
    pub control_cpu: Option<f64>,
    /// The sample platform backend's (`--send-proxy`).
    pub backend_cpu: Option<f64>,
    pub clients_cpu: f64,
    /// The coordinator's own.
    pub me_cpu: f64,
    pub host_busy: f64,
    pub host_total: f64,
    /// Of the busy time, interrupts and softirqs (charged to no process: on loopback much of
    /// the network stack's receive work) and time stolen by the hypervisor.
    pub host_irq: f64,
    pub host_steal: f64,
    /// The kernel's TCP counters over the window.
    pub tcp: Option<Counters>,
}

/// `v / n`, 0 when `n` is 0.
pub fn per(v: f64, n: u64) -> f64 {
    if n == 0 {
        0.0
    } else {
        v / n as f64
    }
}

/// Count and percentiles of a µs histogram, in ms (null when empty).
pub fn latency_json(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return Value::Null;
    }
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    json!({
        "count": h.len(),
        "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p999": ms(0.999),
        "max": h.max() as f64 / 1000.0, "mean": h.mean() / 1000.0,
    })
}

/// Per group and priority: what was published to the group's rooms, what its open connections
/// received (once, twice, out of order), and how late. Churners rejoin with gaps by design, so
/// their completeness is not judged (null).
fn delivery_groups(total: &Report, published: &[[u64; PRIORITIES]], planned: [u64; 3]) -> Value {
    let mut groups = Vec::new();
    for group in Group::ALL {
        let g = &total.groups[group.index()];
        if planned[group.index()] == 0 {
            continue;
        }
        let mut all = new_latency_histogram();
        let (mut expected, mut unique, mut duplicates, mut out_of_order) = (0, 0, 0, 0);
        let mut priorities = Vec::new();
        for (p, r) in g.priorities.iter().enumerate() {
            let sent: u64 = published.iter().map(|room| room[p]).sum();
            if sent == 0 && r.received == 0 {
                continue;
            }
            let h = histogram_of(&r.latency_us);
            all.add(&h).expect("same histogram bounds");
            expected += r.expected;
            unique += r.unique;
            duplicates += r.duplicates;
            out_of_order += r.out_of_order;
            priorities.push(json!({
                "priority": p,
                "published": sent,
                "received": r.received,
                "unique": r.unique,
                "duplicates": r.duplicates,
                "out_of_order": r.out_of_order,
                "latency_ms": latency_json(&h),
            }));
            judge(
                group,
                priorities.last_mut().expect("just pushed"),
                r.expected,
                r.unique,
            );
        }
        let mut g = json!({
            "group": group.name(),
            "connections": planned[group.index()],
            "open": g.open,
            "unrecovered": g.unrecovered,
            "unique": unique,
            "duplicates": duplicates,
            "out_of_order": out_of_order,
            "latency_ms": latency_json(&all),
            "priorities": priorities,
        });
        judge(group, &mut g, expected, unique);
        groups.push(g);
    }
    Value::Array(groups)
}

/// Adds expected, missing and completeness (null for churners).
fn judge(group: Group, v: &mut Value, expected: u64, unique: u64) {
    let judged = group != Group::Churn;
    v["expected"] = json!(judged.then_some(expected));
    v["missing"] = json!(judged.then(|| expected.saturating_sub(unique)));
    v["completeness"] = json!(judged.then(|| {
        if expected == 0 {
            1.0
        } else {
            unique as f64 / expected as f64
        }
    }));
}

/// Delivered rates in the window, and per group and priority completeness and latency.
pub fn delivery_json(
    total: &Report,
    published: &[[u64; PRIORITIES]],
    group_sizes: [u64; 3],
    secs: f64,
) -> Value {
    let mut delivery = json!({
        "msgs_per_s": total.window_msgs as f64 / secs,
        "frames_per_s": total.window_frames as f64 / secs,
        "msgs_per_frame": per(total.window_msgs as f64, total.window_frames),
        "online_counts_per_s": total.window_online_counts as f64 / secs,
        "received_msgs": total.msgs,
        "foreign_batches": total.foreign,
        "decode_errors": total.decode_errors,
        "no_ts": total.no_ts,
        "groups": delivery_groups(total, published, group_sizes),
    });
    if group_sizes[Group::Slow.index()] > 0 {
        let warmup = histogram_of(&total.warmup_latency_us);
        delivery["slow_reader_effect"] = json!({
            "slow_connections": group_sizes[Group::Slow.index()],
            "warmup_p99_ms": latency_json(&warmup)["p99"],
            "window_p99_ms": delivery["groups"][0]["latency_ms"]["p99"],
            "warmup_latency_ms": latency_json(&warmup),
        });
    }
    delivery
}

/// The reconnect storm (`--drop-all-at`) from the clients' merged [`RecoveryReport`] and the
/// delivery section (whose groups leave the unrecovered viewers out): how many resumed and how,
/// how long until every dropped viewer had its reply and its replay, the reply latency, the
/// replay, and the verdict — every viewer's stream complete and gap-free across the reconnect.
pub fn recovery_json(rec: &RecoveryReport, delivery: &Value) -> Value {
    let after_drop = |at: u64| {
        (rec.drop_at_us > 0 && at >= rec.drop_at_us).then(|| (at - rec.drop_at_us) as f64 / 1e6)
    };
    let all_answered = rec.answered == rec.dropped && rec.dropped > 0;
    let all_caught_up = rec.recovered == rec.dropped && rec.replaying_at_end == 0;
    let mut why_not: Vec<String> = Vec::new();
    if rec.dropped == 0 {
        why_not.push("no connection was dropped".into());
    }
    if !all_answered {
        why_not.push(format!(
            "{} of {} dropped viewers got no join reply ({} gave up, {} still reconnecting)",
            rec.dropped.saturating_sub(rec.answered),
            rec.dropped,
            rec.gave_up,
            rec.waiting
        ));
    }
    let not_recovered = rec.answered.saturating_sub(rec.recovered);
    if not_recovered > 0 {
        why_not.push(format!("{not_recovered} not recovered"));
    }
    if rec.replayed != rec.missed || rec.replaying_at_end > 0 {
        why_not.push(format!(
            "{} of {} missed messages replayed ({} viewers still replaying)",
            rec.replayed, rec.missed, rec.replaying_at_end
        ));
    }
    for g in delivery["groups"].as_array().into_iter().flatten() {
        // Churners rejoin as new viewers, with gaps by design.
        if g["completeness"].is_null() {
            continue;
        }
        let name = g["group"].as_str().unwrap_or("?");
        for (what, key) in [
            ("missing", "missing"),
            ("duplicated", "duplicates"),
            ("out of order", "out_of_order"),
        ] {
            let n = g[key].as_u64().unwrap_or(0);
            if n > 0 {
                why_not.push(format!("{n} {what} in group {name}"));
            }
        }
    }
    let unrecovered_missing = rec
        .unrecovered_expected
        .saturating_sub(rec.unrecovered_unique + rec.unrecovered_skipped);
    json!({
        "dropped": rec.dropped,
        "answered": rec.answered,
        "resumed_with_since": rec.resumed,
        "recovered": rec.recovered,
        "not_recovered": rec.refused,
        "not_recovered_total": rec.refused_total(),
        "rejoined_without_since": rec.rejoined_fresh,
        "unexpected_replies": rec.unexpected,
        "attempt_failures": rec.attempt_failures,
        "gave_up": rec.gave_up,
        "still_reconnecting": rec.waiting,
        "secs_to_all_answered": all_answered.then(|| after_drop(rec.last_reply_at_us)).flatten(),
        "secs_to_last_answer": after_drop(rec.last_reply_at_us),
        "secs_to_all_caught_up": all_caught_up
            .then(|| after_drop(rec.last_caught_up_at_us.max(rec.last_reply_at_us)))
            .flatten(),
        "reply_ms": latency_json(&histogram_of(&rec.reply_us)),
        "since_drop_ms": latency_json(&histogram_of(&rec.since_drop_us)),
        "caught_up_ms": latency_json(&histogram_of(&rec.caught_up_us)),
        "missed_msgs": rec.missed,
        "replayed_msgs": rec.replayed,
        "replaying_at_end": rec.replaying_at_end,
        "replay_latency_ms": latency_json(&histogram_of(&rec.replay_latency_us)),
        "unrecovered": {
            "open": rec.unrecovered_open,
            "expected": rec.unrecovered_expected,
            "unique": rec.unrecovered_unique,
            "skipped": rec.unrecovered_skipped,
            "missing_besides_skipped": unrecovered_missing,
        },
        "complete_and_gap_free": why_not.is_empty(),
        "not_gap_free_because": why_not,
    })
}

/// The control plane's busiest second after the drop, inside the measured window (cores).
pub fn peak_control_cores(timeline: &[Sample], drop_t: f64) -> Option<f64> {
    timeline
        .iter()
        .filter(|s| s.phase == "window" && s.t > drop_t)
        .filter_map(|s| s.control_cores)
        .reduce(f64::max)
}

/// The control plane's history and recoveries from its `/metrics` at idle (after the clients
/// joined) and at the end, with its RSS at both: stored messages, bytes as the history counts
/// them, and the RSS growth per stored message (what a message really costs, allocator
/// included; other growth counts too, so compare with a run with `--history-max-bytes=0`).
pub fn control_json(
    idle: Option<&Metrics>,
    end: Option<&Metrics>,
    rss: (Option<u64>, Option<u64>),
) -> Value {
    let Some(end) = end else {
        return Value::Null;
    };
    let at = |m: Option<&Metrics>, name: &str| m.and_then(|m| m.get(name));
    // Every figure read here is a count: shown as an integer.
    let int = |v: Option<f64>| v.map(|v| v.round() as i64);
    let messages = at(Some(end), "roomcast_control_history_messages");
    let bytes = at(Some(end), "roomcast_control_history_bytes");
    let grew = |name: &str| Some(at(Some(end), name)? - at(idle, name).unwrap_or(0.0));
    let delta = |name: &str, label: &str| -> BTreeMap<String, i64> {
        let before = idle.map(|m| m.by_label(name, label)).unwrap_or_default();
        end.by_label(name, label)
            .into_iter()
            .map(|(k, v)| {
                let b = before.get(&k).copied().unwrap_or(0.0);
                (k, (v - b).round() as i64)
            })
            .collect()
    };
    let stored_since_idle = grew("roomcast_control_history_messages");
    let rss_growth = rss.0.zip(rss.1).map(|(a, b)| b as f64 - a as f64);
    json!({
        "source": "the control plane's /metrics at idle (clients joined) and at the end; its RSS from /proc",
        "history": {
            "messages": int(messages),
            "bytes": int(bytes),
            "channels": int(at(Some(end), "roomcast_control_history_channels")),
            "bytes_per_message": messages.zip(bytes).filter(|(m, _)| *m > 0.0).map(|(m, b)| b / m),
            "messages_since_idle": int(stored_since_idle),
            "evictions_since_idle": delta("roomcast_control_history_evictions_total", "reason"),
        },
        "recoveries_since_idle": delta("roomcast_control_recoveries_total", "result"),
        "online_pushes_since_idle": int(grew("roomcast_control_online_pushes_total")),
        "online_frames_since_idle": int(grew("roomcast_control_online_frames_total")),
        // Merge rules: messages merged into others, published unmerged at the byte cap, and
        // what still waits at the end (nothing, once the windows have ended).
        "merge": {
            "merged_since_idle": int(grew("roomcast_control_merge_merged_total")),
            "bypassed_since_idle": int(grew("roomcast_control_merge_bypassed_total")),
            "windows_at_end": int(at(Some(end), "roomcast_control_merge_windows")),
            "waiting_bytes_at_end": int(at(Some(end), "roomcast_control_merge_waiting_bytes")),
        },
        "rss_idle": rss.0,
        "rss_end": rss.1,
        "rss_growth": rss_growth,
        "rss_growth_per_stored_message": rss_growth
            .zip(stored_since_idle)
            .filter(|(_, m)| *m > 0.0)
            .map(|(g, m)| g / m),
    })
}

/// What the merge traffic's publisher did (`--pk-rate`, `--like-rate`, `--combo-rate`).
#[derive(Debug, Clone)]
pub struct MergePublished {
    pub traffic: Traffic,
    /// The rooms the PK went to (every occupied room).
    pub pk_rooms: usize,
    /// Accepted by the API per kind (finals apart), over the run and in the window.
    pub total: [u64; 3],
    pub window: [u64; 3],
    pub finals: u64,
    /// Answered `held` (waiting in a merge window).
    pub held: u64,
    pub requests: u64,
    /// Per room, what the viewers are judged by.
    pub rooms: Vec<RoomExpect>,
}

/// The merge traffic in words: `1000 PK gifts/s to 2 room(s) (…), 20000 likes/s (…)`.
pub fn traffic_text(t: &Traffic, pk_rooms: usize) -> String {
    let mut parts = Vec::new();
    if t.pk_rate > 0.0 {
        parts.push(format!(
            "{} PK gifts/s, each to {pk_rooms} room(s) (kind pk, latest on {PK_KEY} every {} ms, then a final)",
            t.pk_rate, t.pk_interval_ms
        ));
    }
    if t.like_rate > 0.0 {
        parts.push(format!(
            "{} likes/s (kind like, sum of count on key {LIKE_KEY} per room)",
            t.like_rate
        ));
    }
    if t.combo_rate > 0.0 {
        parts.push(format!(
            "{} combos/s (kind combo, sum of count on {} keys combo:u<U>:gift<G> per room)",
            t.combo_rate, t.combo_keys
        ));
    }
    parts.join(", ")
}

/// The merge traffic: what was published, what the viewers received (per kind, and what it
/// stands for), every judged viewer's checks (sums, the PK's final, last value and spacing),
/// the control plane's merge counters, and the verdict (null without merge rules: reported, not
/// judged). `viewers` are the connections open at the end.
pub fn merge_json(
    p: &MergePublished,
    got: &MergeReport,
    viewers: u64,
    secs: f64,
    control: &Value,
) -> Value {
    let t = &p.traffic;
    let active = [t.pk_rate > 0.0, t.like_rate > 0.0, t.combo_rate > 0.0];
    let per_kind = |v: [u64; 3]| {
        let mut m = serde_json::Map::new();
        for k in KINDS.iter().filter(|k| active[k.index()]) {
            m.insert(k.name().into(), json!(v[k.index()]));
        }
        Value::Object(m)
    };
    let per_s = |v: [u64; 3]| {
        let mut m = serde_json::Map::new();
        for k in KINDS.iter().filter(|k| active[k.index()]) {
            m.insert(k.name().into(), json!(v[k.index()] as f64 / secs));
        }
        Value::Object(m)
    };
    let mut received = serde_json::Map::new();
    for k in KINDS.iter().filter(|k| active[k.index()]) {
        let i = k.index();
        received.insert(
            k.name().into(),
            json!({
                "msgs": got.received[i],
                "stands_for": got.stands_for[i],
                "unmerged": got.unmerged[i],
                "window_msgs": got.window_received[i],
                "per_viewer_per_s": per(got.window_received[i] as f64 / secs, viewers),
                "stands_for_per_msg": per(got.stands_for[i] as f64, got.received[i]),
                "stale_ms": latency_json(&histogram_of(&got.latency_us[i])),
            }),
        );
    }
    let sums = |mismatches: u64, got_sum: u64, want: u64| {
        json!({
            "mismatching_viewers": mismatches,
            "received": got_sum,
            "published": want,
            "fraction": (want > 0).then(|| got_sum as f64 / want as f64),
        })
    };
    let mut why: Vec<String> = Vec::new();
    if got.judged == 0 {
        why.push("no viewer was judged".into());
    }
    if active[1] && got.like_mismatches > 0 {
        why.push(format!(
            "{} viewers' like sums differ from their room's",
            got.like_mismatches
        ));
    }
    if active[2] && got.combo_mismatches > 0 {
        why.push(format!(
            "{} viewers' combo sums differ from their room's (per key)",
            got.combo_mismatches
        ));
    }
    if active[0] {
        for (n, what) in [
            (got.pk_final_missing, "missed the PK's final"),
            (
                got.pk_last_mismatches,
                "last PK value before the final is not the last one published",
            ),
            (
                got.pk_too_close,
                "got two PK updates closer than half the interval",
            ),
            (got.pk_unaccounted, "have PK messages unaccounted for"),
        ] {
            if n > 0 {
                why.push(format!("{n} viewers {what}"));
            }
        }
    }
    for (n, what) in [
        (got.duplicates, "duplicated"),
        (got.out_of_order, "out of order"),
        (got.bad_data, "unreadable"),
    ] {
        if n > 0 {
            why.push(format!("{n} merge-traffic messages {what}"));
        }
    }
    let pk = active[0].then(|| {
        let mean_gap = per(got.pk_span_ms as f64, got.pk_gaps);
        json!({
            "judged": got.pk_judged,
            "interval_ms": t.pk_interval_ms,
            "final_missing": got.pk_final_missing,
            "last_value_mismatches": got.pk_last_mismatches,
            "closer_than_half_interval": got.pk_too_close,
            "unaccounted": got.pk_unaccounted,
            "updates_per_viewer": per(got.pk_updates as f64, got.pk_judged),
            "mean_gap_ms": (got.pk_gaps > 0).then_some(mean_gap),
            "per_interval": (mean_gap > 0.0).then(|| t.pk_interval_ms as f64 / mean_gap),
            "max_per_interval": got.pk_max_per_interval,
            "min_gap_ms": got.pk_min_gap_ms,
            "flushed_by_final": got.pk_flushed_by_final,
        })
    });
    let sum_of = |f: fn(&RoomExpect) -> u64| p.rooms.iter().map(f).sum::<u64>();
    json!({
        "rules": t.rules,
        "traffic": {
            "pk_rate": t.pk_rate,
            "pk_interval_ms": t.pk_interval_ms,
            "pk_rooms": p.pk_rooms,
            "like_rate": t.like_rate,
            "combo_rate": t.combo_rate,
            "combo_keys": t.combo_keys,
        },
        "published": {
            "msgs": per_kind(p.total),
            "window_msgs": per_kind(p.window),
            "window_per_s": per_s(p.window),
            "window_total_per_s": p.window.iter().sum::<u64>() as f64 / secs,
            "finals": p.finals,
            "held": p.held,
            "requests": p.requests,
            "like_count_sum": sum_of(|r| r.like_sum),
            "combo_count_sum": sum_of(|r| r.combo_sum),
        },
        "received": received,
        "finals_received": got.finals,
        "duplicates": got.duplicates,
        "out_of_order": got.out_of_order,
        "bad_data": got.bad_data,
        "viewers_judged": got.judged,
        "sums": {
            "like": active[1].then(|| sums(got.like_mismatches, got.like_got, got.like_want)),
            "combo": active[2].then(|| sums(got.combo_mismatches, got.combo_got, got.combo_want)),
        },
        "pk": pk,
        "control": control["merge"].clone(),
        "examples": got.examples,
        "ok": t.rules.then_some(why.is_empty()),
        "not_ok_because": why,
    })
}

/// The table's lines for the merge traffic; none without it.
fn merge_lines(r: &Value) -> Vec<String> {
    let m = &r["merge"];
    if !m.is_object() {
        return Vec::new();
    }
    let t = &m["traffic"];
    let p = &m["published"];
    let n = |v: &Value| thousands(v.as_u64().unwrap_or(0));
    let traffic = Traffic {
        pk_rate: f(&t["pk_rate"]),
        pk_interval_ms: t["pk_interval_ms"].as_u64().unwrap_or(0),
        like_rate: f(&t["like_rate"]),
        combo_rate: f(&t["combo_rate"]),
        combo_keys: t["combo_keys"].as_u64().unwrap_or(0) as u32,
        rules: m["rules"] == true,
    };
    let kinds_text = |v: &Value, unit: &str| {
        let parts: Vec<String> = v
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, x)| format!("{k} {}{unit}", rate(f(x))))
            .collect();
        parts.join(", ")
    };
    let control = &m["control"];
    let pk_rooms = t["pk_rooms"].as_u64().unwrap_or(0) as usize;
    let mut lines = vec![format!(
        "merge traffic  {} merge rules: {}; the API accepted in the window {} msg/s of {} ({}), {} held in merge windows over the run, {} finals{}",
        if traffic.rules { "with" } else { "WITHOUT" },
        traffic_text(&traffic, pk_rooms),
        rate(f(&p["window_total_per_s"])),
        rate(traffic.msgs_per_s(pk_rooms)),
        kinds_text(&p["window_per_s"], ""),
        n(&p["held"]),
        p["finals"],
        if control.is_object() {
            format!(
                "; control merged {} into others, {} bypassed (byte cap), {} windows open at the end",
                n(&control["merged_since_idle"]),
                n(&control["bypassed_since_idle"]),
                n(&control["windows_at_end"]),
            )
        } else {
            String::new()
        },
    )];
    let received: Vec<String> = m["received"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, x)| {
            let stale = &x["stale_ms"];
            format!(
                "{k} {:.2}/s per viewer, each standing for {:.1} published (stale p50 {} p99 {} ms)",
                f(&x["per_viewer_per_s"]),
                f(&x["stands_for_per_msg"]),
                ms(&stale["p50"]),
                ms(&stale["p99"]),
            )
        })
        .collect();
    lines.push(format!(
        "merge received {}; {} finals; {} duplicated, {} out of order, {} unreadable",
        received.join("; "),
        n(&m["finals_received"]),
        m["duplicates"],
        m["out_of_order"],
        m["bad_data"],
    ));
    let pk = &m["pk"];
    if pk.is_object() {
        let interval = pk["interval_ms"].as_u64().unwrap_or(0);
        lines.push(format!(
            "pk check       {} viewers: {} missed the final, {} saw a last value before it other than the last published, {} have PK messages unaccounted for; one update every {} ms on average ({} per {interval} ms), at most {} in one {interval} ms slot, the closest two {} ms apart ({} viewers got two closer than {} ms; {} waiting values flushed by the final)",
            n(&pk["judged"]),
            n(&pk["final_missing"]),
            n(&pk["last_value_mismatches"]),
            n(&pk["unaccounted"]),
            if pk["mean_gap_ms"].is_number() {
                format!("{:.0}", f(&pk["mean_gap_ms"]))
            } else {
                "-".into()
            },
            if pk["per_interval"].is_number() {
                format!("{:.2}", f(&pk["per_interval"]))
            } else {
                "-".into()
            },
            pk["max_per_interval"],
            count(&pk["min_gap_ms"]),
            n(&pk["closer_than_half_interval"]),
            interval / 2,
            n(&pk["flushed_by_final"]),
        ));
    }
    let sums = &m["sums"];
    let sum_text = |name: &str, s: &Value, per_key: &str| {
        format!(
            "{name} sums{per_key} exact for {} ({} differ; {} of {} counts received, {})",
            n(&json!(m["viewers_judged"]
                .as_u64()
                .unwrap_or(0)
                .saturating_sub(
                    s["mismatching_viewers"].as_u64().unwrap_or(0)
                ))),
            n(&s["mismatching_viewers"]),
            n(&s["received"]),
            n(&s["published"]),
            pct(&s["fraction"]),
        )
    };
    let mut sum_parts = Vec::new();
    if sums["like"].is_object() {
        sum_parts.push(sum_text("like", &sums["like"], ""));
    }
    if sums["combo"].is_object() {
        sum_parts.push(sum_text("combo", &sums["combo"], " per key"));
    }
    if !sum_parts.is_empty() {
        lines.push(format!(
            "sum check      {} viewers: {}",
            n(&m["viewers_judged"]),
            sum_parts.join("; ")
        ));
    }
    lines.push(match m["ok"].as_bool() {
        None => "merge verdict  not judged: the merge traffic went without merge rules".into(),
        Some(true) => "merge verdict  OK: every judged viewer passed every check above".into(),
        Some(false) => {
            let why: Vec<&str> = m["not_ok_because"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            format!("merge verdict  NOT OK: {}", why.join("; "))
        }
    });
    for e in m["examples"].as_array().into_iter().flatten().take(5) {
        lines.push(format!("  e.g.         {}", e.as_str().unwrap_or("?")));
    }
    lines
}

/// The `summary:` part for the merge traffic; empty without it.
fn merge_summary(r: &Value) -> String {
    let m = &r["merge"];
    if !m.is_object() {
        return String::new();
    }
    let mut s = format!(
        "; merge traffic {} rules: {} msg/s published",
        if m["rules"] == true {
            "with"
        } else {
            "WITHOUT"
        },
        rate(f(&m["published"]["window_total_per_s"])),
    );
    if m["pk"].is_object() {
        s += &format!(
            ", PK update every {} ms (closest {} ms), {} missed the final",
            if m["pk"]["mean_gap_ms"].is_number() {
                format!("{:.0}", f(&m["pk"]["mean_gap_ms"]))
            } else {
                "-".into()
            },
            count(&m["pk"]["min_gap_ms"]),
            m["pk"]["final_missing"],
        );
    }
    for kind in ["like", "combo"] {
        let x = &m["sums"][kind];
        if x.is_object() {
            s += &format!(
                ", {kind} sums {} received ({} viewers off)",
                pct(&x["fraction"]),
                x["mismatching_viewers"]
            );
        }
    }
    s += match m["ok"].as_bool() {
        Some(true) => ", OK",
        Some(false) => ", NOT OK",
        None => "",
    };
    s
}

/// `--merge-compare`: the two runs side by side — published and delivered rates, frames, edge and
/// control CPU, the load's completeness and latency, the sums received.
pub fn merge_comparison(with: &Value, without: &Value) -> Value {
    let row = |r: &Value| {
        let normal = r["delivery"]["groups"]
            .as_array()
            .and_then(|g| g.iter().find(|g| g["group"] == "normal"))
            .cloned()
            .unwrap_or(Value::Null);
        let secs = r["window"]["secs"].as_f64().filter(|s| *s > 0.0);
        json!({
            "published_per_s": r["publishing"]["with_merge_traffic_in_window"]
                .as_f64()
                .zip(secs)
                .map(|(n, s)| n / s),
            "merge_published_per_s": r["merge"]["published"]["window_total_per_s"],
            "delivered_msgs_per_s": r["delivery"]["msgs_per_s"],
            "frames_per_s": r["delivery"]["frames_per_s"],
            "msgs_per_frame": r["delivery"]["msgs_per_frame"],
            "edge_cores": r["cpu"]["edge_cores"],
            "edge_us_per_frame": r["cpu"]["edge_us_per_frame"],
            "edge_us_per_msg": r["cpu"]["edge_us_per_msg"],
            "control_cores": r["cpu"]["control_cores"],
            "control_us_per_published": r["cpu"]["control_us_per_published"],
            "edge_dropped_budget": r["edge_counters"]["delta"]["messages_dropped_budget"],
            "load_completeness": normal["completeness"],
            "load_p99_ms": normal["latency_ms"]["p99"],
            "like_sum_fraction": r["merge"]["sums"]["like"]["fraction"],
            "combo_sum_fraction": r["merge"]["sums"]["combo"]["fraction"],
            "merge_ok": r["merge"]["ok"],
        })
    };
    let (a, b) = (row(with), row(without));
    let ratio = |key: &str| {
        let (x, y) = (a[key].as_f64(), b[key].as_f64());
        x.zip(y).filter(|(x, _)| *x > 0.0).map(|(x, y)| y / x)
    };
    json!({
        "scenario": with["scenario"],
        "with_rules": a,
        "without_rules": b,
        "without_over_with": {
            "delivered_msgs_per_s": ratio("delivered_msgs_per_s"),
            "frames_per_s": ratio("frames_per_s"),
            "edge_cores": ratio("edge_cores"),
            "control_cores": ratio("control_cores"),
        },
    })
}

/// Prints [`merge_comparison`]: a table and a `compare:` line.
pub fn print_merge_comparison(c: &Value) {
    let (a, b) = (&c["with_rules"], &c["without_rules"]);
    let num = |v: &Value, digits: usize| {
        if v.is_number() {
            format!("{:.digits$}", f(v))
        } else {
            "-".into()
        }
    };
    let rate_of = |v: &Value| {
        if v.is_number() {
            rate(f(v))
        } else {
            "-".into()
        }
    };
    let count_of = |v: &Value| match v.as_u64() {
        Some(n) => thousands(n),
        None => "-".into(),
    };
    println!();
    println!(
        "== roomcast-bench --merge-compare: {} with merge rules vs without ==",
        c["scenario"].as_str().unwrap_or("?")
    );
    println!("{:<34} {:>16} {:>16}", "", "with rules", "without");
    type Fmt<'a> = &'a dyn Fn(&Value) -> String;
    let rows: [(&str, &str, Fmt<'_>); 15] = [
        ("published (API) msg/s", "published_per_s", &rate_of),
        (
            "  of them merge traffic msg/s",
            "merge_published_per_s",
            &rate_of,
        ),
        ("delivered msg/s", "delivered_msgs_per_s", &rate_of),
        ("delivered frames/s", "frames_per_s", &rate_of),
        ("msgs/frame", "msgs_per_frame", &|v| num(v, 2)),
        ("edge cores", "edge_cores", &|v| num(v, 2)),
        ("edge us per frame", "edge_us_per_frame", &|v| num(v, 3)),
        ("edge us per message", "edge_us_per_msg", &|v| num(v, 3)),
        ("control cores", "control_cores", &|v| num(v, 2)),
        (
            "control us per published msg",
            "control_us_per_published",
            &|v| num(v, 2),
        ),
        (
            "edge budget drops in the window",
            "edge_dropped_budget",
            &count_of,
        ),
        ("load (bench) completeness", "load_completeness", &pct),
        ("load p99 ms", "load_p99_ms", &ms),
        ("like counts received", "like_sum_fraction", &pct),
        ("combo counts received", "combo_sum_fraction", &pct),
    ];
    for (label, key, fmt) in rows {
        if a[key].is_null() && b[key].is_null() {
            continue;
        }
        println!("{label:<34} {:>16} {:>16}", fmt(&a[key]), fmt(&b[key]));
    }
    let r = &c["without_over_with"];
    println!(
        "compare: {} without merge rules vs with: {} x the delivered msg/s, {} x the frames/s, {} x the edge cores, {} x the control cores; with rules the checks {}",
        c["scenario"].as_str().unwrap_or("?"),
        num(&r["delivered_msgs_per_s"], 2),
        num(&r["frames_per_s"], 2),
        num(&r["edge_cores"], 2),
        num(&r["control_cores"], 2),
        match a["merge_ok"].as_bool() {
            Some(true) => "passed",
            Some(false) => "FAILED",
            None => "were not judged",
        },
    );
}

/// The machine: cores, memory, kernel.
pub fn host_json() -> Value {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem_total = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024);
    json!({
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "mem_total": mem_total,
        "kernel": kernel.trim(),
    })
}

/// How the connections came up: counts, failures by reason, connect rate, setup times.
pub fn connections_json(args: &RunArgs, connected: &[Connected], connect_secs: f64) -> Value {
    let ready: u64 = connected.iter().map(|c| c.ready).sum();
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    let mut setup = new_latency_histogram();
    for c in connected {
        add_counts(&mut failures, &c.failures);
        add_pairs(&mut setup, &c.setup_ms);
    }
    json!({
        "target": args.conns,
        "joined": ready,
        "failed": connected.iter().map(|c| c.failed).sum::<u64>(),
        "failed_attempts": failures,
        "time_to_all_connected_secs": connect_secs,
        "connect_rate_per_s": ready as f64 / connect_secs.max(1e-9),
        "setup_ms": ms_percentiles(&setup),
        "per_process": connected.iter().map(|c| json!({
            "index": c.index, "pid": c.pid, "fd_soft": c.fd_soft, "fd_hard": c.fd_hard,
            "joined": c.ready, "failed": c.failed, "connect_secs": c.connect_secs,
        })).collect::<Vec<_>>(),
    })
}

/// p50, p99 and max of a histogram that holds milliseconds ([`latency_json`] reads µs).
fn ms_percentiles(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return Value::Null;
    }
    json!({
        "p50": h.value_at_quantile(0.5),
        "p99": h.value_at_quantile(0.99),
        "max": h.max(),
    })
}

/// What the clients held at the end, heartbeats, and the churn.
pub fn fill_connection_totals(conn: &mut Value, total: &Report, args: &RunArgs) {
    conn["held_at_end"] = json!(total.open);
    conn["closed_by_server"] = json!(total.closed);
    conn["pings_sent"] = json!(total.pings_sent);
    conn["pongs"] = json!(total.pongs);
    conn["ping_errors"] = json!(total.ping_errors);
    if args.churn > 0.0 {
        conn["churn"] = json!({
            "closes": total.churn_closes,
            "reconnects": total.reconnects,
            "reconnects_per_s": total.reconnects as f64 / args.duration,
            "setup_ms": ms_percentiles(&histogram_of(&total.reconnect_setup_ms)),
        });
    }
}

/// Memory per idle connection: the edges' RSS growth, the kernel's slab and socket buffers, the
/// clients' RSS.
pub fn memory_json(
    edges_json: &mut [Value],
    loads_idle: &[EdgeLoad],
    (before, idle): (&[Option<ProcMem>], &[Option<ProcMem>]),
    (kernel_start, kernel_before, kernel_idle): (KernelMem, KernelMem, KernelMem),
    ready: u64,
    clients_rss: u64,
) -> Value {
    let mut rss_delta: i64 = 0;
    let mut anon_delta: i64 = 0;
    let mut edge_conns: u64 = 0;
    for (i, e) in edges_json.iter_mut().enumerate() {
        let id = e["id"].as_str().unwrap_or_default().to_string();
        let conns = loads_idle
            .iter()
            .find(|l| l.id == id)
            .map_or(0, |l| l.connections);
        edge_conns += conns;
        e["connections_idle"] = json!(conns);
        if let (Some(b), Some(a)) = (before[i], idle[i]) {
            let d = a.rss as i64 - b.rss as i64;
            let da = a.rss_anon as i64 - b.rss_anon as i64;
            rss_delta += d;
            anon_delta += da;
            e["rss_before"] = json!(b.rss);
            e["rss_idle"] = json!(a.rss);
            e["rss_per_conn"] = json!(per(d as f64, conns));
            e["rss_anon_per_conn"] = json!(per(da as f64, conns));
        }
    }
    let have = before.iter().any(Option::is_some);
    let slab = kernel_idle.slab as i64 - kernel_before.slab as i64;
    // Buffers other sockets held at the baseline (the floor's, the control link's) may be gone
    // by idle time: a drop is not a negative cost per connection.
    let tcp = (kernel_idle.tcp_mem as i64 - kernel_before.tcp_mem as i64).max(0);
    json!({
        "edge_connections": edge_conns,
        "edge_rss_delta": rss_delta,
        "edge_rss_per_conn": have.then(|| per(rss_delta as f64, edge_conns)),
        "edge_rss_anon_per_conn": have.then(|| per(anon_delta as f64, edge_conns)),
        "kernel_start": kernel_start,
        "kernel_before": kernel_before,
        "kernel_idle": kernel_idle,
        "kernel_slab_per_conn": per(slab as f64, ready),
        "kernel_tcp_mem_per_conn": per(tcp as f64, ready),
        "clients_rss": clients_rss,
        "client_rss_per_conn": per(clients_rss as f64, ready),
    })
}

/// CPU in the window: per delivered frame and message (edges, also as a ratio to the floor),
/// per published message (control plane), per received message (clients).
pub fn cpu_json(w: &Window, total: &Report, floor: Option<&FloorResult>) -> Value {
    let inside = w.edge_cpu.unwrap_or(0.0)
        + w.control_cpu.unwrap_or(0.0)
        + w.backend_cpu.unwrap_or(0.0)
        + w.clients_cpu
        + w.me_cpu;
    let (frames, msgs) = (total.window_frames, total.window_msgs);
    let edge_us_per_frame = w.edge_cpu.map(|c| per(c * 1e6, frames));
    json!({
        "edge_cpu_secs": w.edge_cpu,
        "edge_cores": w.edge_cpu.map(|c| c / w.secs),
        "edge_us_per_frame": edge_us_per_frame,
        "edge_us_per_msg": w.edge_cpu.map(|c| per(c * 1e6, msgs)),
        "edge_frame_vs_floor": edge_us_per_frame
            .zip(floor)
            .filter(|_| frames > 0)
            .map(|(us, fl)| us / (fl.cpu_ns_per_write / 1e3)),
        "control_cpu_secs": w.control_cpu,
        "control_cores": w.control_cpu.map(|c| c / w.secs),
        "control_us_per_published": w.control_cpu.map(|c| per(c * 1e6, w.published)),
        "backend_cpu_secs": w.backend_cpu,
        "backend_cores": w.backend_cpu.map(|c| c / w.secs),
        "clients_cpu_secs": w.clients_cpu,
        "clients_cores": w.clients_cpu / w.secs,
        "clients_us_per_msg": per(w.clients_cpu * 1e6, msgs),
        "coordinator_cores": w.me_cpu / w.secs,
        "system_busy_cores": w.host_busy / w.secs,
        "system_cores": w.host_total / w.secs,
        "other_busy_cores": ((w.host_busy - inside) / w.secs).max(0.0),
        "irq_softirq_cores": w.host_irq / w.secs,
        "steal_cores": w.host_steal / w.secs,
    })
}

/// The edges' own counters summed, from their newest `edge stats` lines.
pub fn edge_totals(edges: &[Measured]) -> BTreeMap<String, u64> {
    let mut total = BTreeMap::new();
    for stats in edges
        .iter()
        .filter_map(|m| system::edge_stats(m.log.as_deref()?))
    {
        add_counts(&mut total, &stats.counters);
    }
    total
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

fn fmt_bytes(b: f64) -> String {
    if b.abs() >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / 1024.0 / 1024.0)
    } else if b.abs() >= 1024.0 {
        format!("{:.2} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

fn ms(v: &Value) -> String {
    if v.is_number() {
        format!("{:.2}", f(v))
    } else {
        "-".into()
    }
}

fn pct(v: &Value) -> String {
    if v.is_number() {
        format!("{:.3}%", 100.0 * f(v))
    } else {
        "-".into()
    }
}

/// A count, or "-" when it is not judged (null).
fn count(v: &Value) -> String {
    if v.is_null() {
        "-".into()
    } else {
        v.to_string()
    }
}

/// True when the run measured a NATS server (`--server nats`) instead of roomcast.
fn is_nats(r: &Value) -> bool {
    r["config"]["server"] == "nats"
}

/// Prints the readable table (stdout).
pub fn print_table(r: &Value) {
    let c = &r["config"];
    let conn = &r["connections"];
    let mem = &r["memory"];
    let nats = is_nats(r);
    // The server's rows: roomcast's edges, or the NATS server in their place.
    let edge = if nats { "NATS" } else { "edge" };
    println!();
    println!(
        "== roomcast-bench run: {}{} ==",
        r["scenario"].as_str().unwrap_or("?"),
        if nats {
            format!(
                " -- PEER: {} over its websocket, not roomcast",
                r["system"]["drivers"].as_str().unwrap_or("nats-server")
            )
        } else {
            String::new()
        }
    );
    println!(
        "setup          {} {}(s) [{}], publish via {}, {} client procs x {} threads, {} connections over {}, {} room(s) ({}); host {} cores",
        r["system"]["edges"].as_array().map_or(0, Vec::len),
        if nats { "NATS server" } else { "edge" },
        r["system"]["drivers"].as_str().unwrap_or("?"),
        r["system"]["publish_via"].as_str().unwrap_or("?"),
        r["system"]["client_procs"],
        c["client_threads"],
        c["conns"],
        c["transport"].as_str().unwrap_or("?"),
        c["rooms"],
        c["room_dist"].as_str().unwrap_or("?"),
        r["host"]["cores"],
    );
    if !c["edge_args"].as_array().is_none_or(Vec::is_empty) {
        println!("edge args      {}", c["edge_args"]);
    }
    if let Some(fl) = r.get("floor").filter(|v| v.is_object()) {
        println!(
            "floor          {:.2} us CPU per write ({} loopback sockets x {} rounds, {}-byte frame, {})",
            f(&fl["cpu_ns_per_write"]) / 1000.0,
            fl["conns"],
            fl["iters"],
            fl["frame_bytes"],
            fl["syscall"].as_str().unwrap_or("")
        );
    }
    println!(
        "connections    {} joined of {} ({} failed) in {:.2} s = {}/s, setup p50 {} ms p99 {} ms max {} ms",
        conn["joined"],
        conn["target"],
        conn["failed"],
        f(&conn["time_to_all_connected_secs"]),
        rate(f(&conn["connect_rate_per_s"])),
        ms(&conn["setup_ms"]["p50"]),
        ms(&conn["setup_ms"]["p99"]),
        ms(&conn["setup_ms"]["max"]),
    );
    let check = &conn["edge_check"];
    println!(
        "held at end    {} joined by the clients; the {} {} connections{}; room members {}",
        conn["held_at_end"],
        if nats {
            "NATS server (/varz) reports"
        } else {
            "edges report"
        },
        check["edges_report"],
        if check["connections_match"] == true {
            " (match)"
        } else {
            " (MISMATCH)"
        },
        if check["rooms_checked"].as_u64().unwrap_or(0) == 0 {
            "not checked".to_string()
        } else if check["room_mismatches"]
            .as_object()
            .is_some_and(|m| m.is_empty())
        {
            format!("match in all {} rooms checked", check["rooms_checked"])
        } else {
            format!(
                "MISMATCH in {} (room: [clients, edges])",
                check["room_mismatches"]
            )
        },
    );
    let biggest = &check["biggest_room"];
    if biggest["level"].is_number() {
        println!(
            "rate level     biggest room {} ({} members): level {}, tick {} ms (set by the control plane)",
            biggest["room"].as_str().unwrap_or("?"),
            biggest["members"],
            biggest["level"],
            biggest["tick_ms"]
        );
    }
    for (what, key) in [
        (
            if nats {
                "closed by NATS"
            } else {
                "closed by edge"
            },
            "closed_by_server",
        ),
        ("failed attempts", "failed_attempts"),
    ] {
        if conn[key].as_object().is_some_and(|o| !o.is_empty()) {
            println!("{what:<15}{}", conn[key]);
        }
    }
    if let Some(ch) = conn.get("churn") {
        println!(
            "churn          {} closed and {} rejoined in the window = {}/s; rejoin setup p50 {} ms p99 {} ms max {} ms",
            ch["closes"],
            ch["reconnects"],
            rate(f(&ch["reconnects_per_s"])),
            ms(&ch["setup_ms"]["p50"]),
            ms(&ch["setup_ms"]["p99"]),
            ms(&ch["setup_ms"]["max"]),
        );
    }
    println!(
        "heartbeats     {} pings sent, {} answered, {} errors",
        conn["pings_sent"], conn["pongs"], conn["ping_errors"]
    );
    if mem["edge_rss_per_conn"].is_number() {
        println!(
            "{:<15}RSS {} per idle connection (anon {}), {} connections on {}",
            format!("{edge} memory"),
            fmt_bytes(f(&mem["edge_rss_per_conn"])),
            fmt_bytes(f(&mem["edge_rss_anon_per_conn"])),
            mem["edge_connections"],
            if nats { "the NATS server" } else { "the edges" },
        );
    }
    println!(
        "kernel memory  slab {} + TCP buffers {} per connection (both socket ends are on this host); clients' RSS {} per connection",
        fmt_bytes(f(&mem["kernel_slab_per_conn"])),
        fmt_bytes(f(&mem["kernel_tcp_mem_per_conn"])),
        fmt_bytes(f(&mem["client_rss_per_conn"]))
    );
    if let Some(h) = r.get("hold") {
        println!(
            "holding        {:.0} s: {edge} server(s) used {:.3} cores ({:.3} us CPU per connection per second)",
            f(&h["secs"]),
            f(&h["edge_cores"]),
            f(&h["edge_cpu_us_per_conn_per_s"])
        );
    }
    if let Some(p) = r.get("publishing") {
        println!(
            "publishing     {:.1} msg/s achieved {} (mix {}, {} B) via {}: {} in the {:.1} s window, {} in all; errors {}{}",
            f(&p["rate_in_window"]),
            match requested_text(c).as_str() {
                "unpaced" => "unpaced".to_string(),
                requested => format!("of {requested}"),
            },
            c["priority_mix"].as_str().unwrap_or("?"),
            c["payload"],
            r["system"]["publish_via"].as_str().unwrap_or("?"),
            p["in_window"],
            f(&r["window"]["secs"]),
            p["total"],
            p["errors"],
            if p["unrouted"].as_u64().unwrap_or(0) > 0 {
                format!(", {} routed to no edge", p["unrouted"])
            } else {
                String::new()
            }
        );
        if p["window_calls"].as_u64().is_some_and(|n| n > 0) {
            let l = &p["window_call_ms"];
            println!(
                "publish calls  {} {} in the window = {}/s{}: round trip p50 {} p90 {} p99 {} p99.9 {} max {} ms",
                p["window_calls"],
                if nats {
                    "writes of PUB batches to NATS"
                } else if c["publish_via"] == "control" {
                    "POST /v1/messages"
                } else {
                    "writes to the edge links"
                },
                rate(f(&p["window_calls_per_s"])),
                if p["replay_batches"] == true {
                    format!(", each the same batch of {} replayed", c["publish_batch"])
                } else {
                    String::new()
                },
                ms(&l["p50"]),
                ms(&l["p90"]),
                ms(&l["p99"]),
                ms(&l["p999"]),
                ms(&l["max"]),
            );
        }
        if let Some(probe) = p.get("probe") {
            let l = &probe["window_call_ms"];
            println!(
                "probe calls    {} POST /v1/messages of one priority-0 message in the window = {}/s, on a connection of their own: round trip p50 {} p90 {} p99 {} p99.9 {} max {} ms",
                probe["window_calls"],
                rate(f(&probe["window_calls_per_s"])),
                ms(&l["p50"]),
                ms(&l["p90"]),
                ms(&l["p99"]),
                ms(&l["p999"]),
                ms(&l["max"]),
            );
        }
    }
    for line in window_lines(r) {
        println!("{line}");
    }
    if let Some(k) = r.get("kernel_tcp") {
        for line in kernel_tcp_lines(k) {
            println!("{line}");
        }
    }
    if let Some(d) = r.get("delivery") {
        println!(
            "delivered      {} msg/s in {} frames/s ({:.2} msgs/frame), {} online counts/s",
            rate(f(&d["msgs_per_s"])),
            rate(f(&d["frames_per_s"])),
            f(&d["msgs_per_frame"]),
            rate(f(&d["online_counts_per_s"]))
        );
        for g in d["groups"].as_array().into_iter().flatten() {
            print_group(g);
        }
        if let Some(s) = d.get("slow_reader_effect") {
            println!(
                "slow readers   normal group p99 {} ms in the warm-up (everyone reading) -> {} ms in the window ({} connections not reading)",
                ms(&s["warmup_p99_ms"]),
                ms(&s["window_p99_ms"]),
                s["slow_connections"],
            );
        }
    }
    for line in recovery_lines(r) {
        println!("{line}");
    }
    for line in merge_lines(r) {
        println!("{line}");
    }
    for line in upstream::lines(r) {
        println!("{line}");
    }
    if let Some(cpu) = r.get("cpu") {
        if cpu["edge_cpu_secs"].is_number() {
            let ratio = if cpu["edge_frame_vs_floor"].is_number() {
                format!(" = {:.2} x the floor", f(&cpu["edge_frame_vs_floor"]))
            } else {
                String::new()
            };
            println!(
                "{:<15}{:.2} s = {:.2} cores: {:.3} us per delivered frame{ratio}, {:.3} us per delivered message",
                format!("{edge} CPU"),
                f(&cpu["edge_cpu_secs"]),
                f(&cpu["edge_cores"]),
                f(&cpu["edge_us_per_frame"]),
                f(&cpu["edge_us_per_msg"])
            );
        }
        if cpu["control_cpu_secs"].is_number() {
            println!(
                "control CPU    {:.2} s = {:.2} cores: {:.2} us per published message",
                f(&cpu["control_cpu_secs"]),
                f(&cpu["control_cores"]),
                f(&cpu["control_us_per_published"])
            );
        }
        println!(
            "client CPU     {:.2} cores ({:.3} us per message); coordinator {:.2} cores",
            f(&cpu["clients_cores"]),
            f(&cpu["clients_us_per_msg"]),
            f(&cpu["coordinator_cores"])
        );
        println!(
            "host CPU       {:.2} of {:.0} cores busy in the window, {:.2} of them outside this benchmark{}",
            f(&cpu["system_busy_cores"]),
            f(&cpu["system_cores"]),
            f(&cpu["other_busy_cores"]),
            if cpu["irq_softirq_cores"].is_number() {
                format!(
                    "; host-wide {:.2} cores in interrupts and softirqs (the loopback network stack's, charged to no process or to whichever ran), {:.2} stolen by the hypervisor",
                    f(&cpu["irq_softirq_cores"]),
                    f(&cpu["steal_cores"])
                )
            } else {
                String::new()
            }
        );
    }
    for line in control_lines(&r["control"]) {
        println!("{line}");
    }
    if let Some(e) = r.get("edge_counters") {
        let d = &e["delta"];
        let t = &e["run_total"];
        println!(
            "edge counters  window: {} flushes, {} write calls = {:.3} vectored writes per connection per flush, {:.2} iovecs per write, {:.2} frames per flush; whole run: messages dropped queue {} budget {} worker backlog {}, slow-consumer closes {}",
            d["flushes"],
            d["write_calls"],
            f(&e["write_calls_per_flush"]),
            f(&e["iovecs_per_write"]),
            f(&e["frames_per_flush"]),
            t["messages_dropped_queue"],
            t["messages_dropped_budget"],
            t["messages_dropped_worker_backlog"],
            t["slow_consumer_closes"],
        );
    }
    if let Some(s) = r.get("strace").filter(|s| s["data_writes"].is_number()) {
        println!(
            "syscalls       {:.1} s traced: {} frames; {} sendmsg/writev ({} EAGAIN) in {} connection flushes = {:.3} writes per connection per flush; {} io_uring_enter ({:.4}/frame), {} epoll waits",
            f(&s["secs"]),
            s["frames_received"],
            s["data_writes"],
            s["data_writes_eagain"],
            s["connection_flushes"],
            f(&s["writes_per_connection_flush"]),
            s["io_uring_enter_calls"],
            f(&s["io_uring_enter_per_frame"]),
            s["epoll_wait_calls"]
        );
    }
    if let Some(n) = r.get("nats") {
        let w = &n["window"];
        println!(
            "NATS server    window: {} msg/s out ({}/s), {} slow consumers; whole run: {} slow consumers (/varz), {} slow-consumer log lines",
            rate(f(&w["out_msgs_per_s"])),
            fmt_bytes(f(&w["out_bytes_per_s"])),
            w["slow_consumers"],
            n["varz_at_end"]["slow_consumers"],
            n["slow_consumer_log_lines"],
        );
    }
    for e in r["edges"].as_array().into_iter().flatten() {
        println!(
            "  {} {} pid {} [{}]: {} conns idle, RSS {} -> {} ({} per conn), CPU in the window {:.2} s",
            if nats { "server" } else { "edge" },
            e["id"].as_str().unwrap_or("?"),
            e["pid"],
            e["driver"].as_str().unwrap_or("?"),
            e["connections_idle"],
            fmt_bytes(f(&e["rss_before"])),
            fmt_bytes(f(&e["rss_idle"])),
            fmt_bytes(f(&e["rss_per_conn"])),
            f(&e["cpu_secs_window"]),
        );
    }
    println!("summary: {}", r["summary"].as_str().unwrap_or(""));
}

/// Seconds, or `-`.
fn secs(v: &Value) -> String {
    if v.is_number() {
        format!("{:.2} s", f(v))
    } else {
        "-".into()
    }
}

/// `{"too_old": 3, "too_many": 0}` as `too_old 3` (zeros left out), or `none`.
fn counts_text(v: &Value) -> String {
    let parts: Vec<String> = v
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, n)| f(n) != 0.0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// The table's lines for the reconnect storm (`--drop-all-at`); none without one.
fn recovery_lines(r: &Value) -> Vec<String> {
    let s = &r["recovery"];
    if !s["dropped"].is_number() {
        return Vec::new();
    }
    let mut lines = vec![
        format!(
            "storm          {} dropped at once {:.1} s into the window, reconnecting within {} s: {} answered, {} with since: {} recovered, not recovered: {}; {} without since, {} replies off protocol; {} gave up, {} still reconnecting",
            s["dropped"],
            f(&s["drop_at_window_secs"]),
            s["reconnect_jitter_secs"],
            s["answered"],
            s["resumed_with_since"],
            s["recovered"],
            counts_text(&s["not_recovered"]),
            s["rejoined_without_since"],
            s["unexpected_replies"].as_object().map_or(0, |o| o.values().filter_map(Value::as_u64).sum::<u64>()),
            s["gave_up"],
            s["still_reconnecting"],
        ),
        format!(
            "recovery time  every dropped viewer answered {} after the drop (last answer {}), all caught up {}; reply (join sent -> reply) p50 {} p90 {} p99 {} max {} ms; drop -> reply p50 {} p99 {} ms; drop -> caught up p99 {} ms",
            secs(&s["secs_to_all_answered"]),
            secs(&s["secs_to_last_answer"]),
            secs(&s["secs_to_all_caught_up"]),
            ms(&s["reply_ms"]["p50"]),
            ms(&s["reply_ms"]["p90"]),
            ms(&s["reply_ms"]["p99"]),
            ms(&s["reply_ms"]["max"]),
            ms(&s["since_drop_ms"]["p50"]),
            ms(&s["since_drop_ms"]["p99"]),
            ms(&s["caught_up_ms"]["p99"]),
        ),
        format!(
            "replay         {} messages replayed of {} missed, {} viewers still replaying at the end; publish -> received p50 {} p99 {} max {} ms (kept out of the groups' latency)",
            s["replayed_msgs"],
            s["missed_msgs"],
            s["replaying_at_end"],
            ms(&s["replay_latency_ms"]["p50"]),
            ms(&s["replay_latency_ms"]["p99"]),
            ms(&s["replay_latency_ms"]["max"]),
        ),
    ];
    let u = &s["unrecovered"];
    if u["open"].as_u64().is_some_and(|n| n > 0) {
        lines.push(format!(
            "unrecovered    {} viewers reload instead (apart from their group): their rooms published {}, they received {}, skipped {} at the resume, {} missing besides",
            u["open"], u["expected"], u["unique"], u["skipped"], u["missing_besides_skipped"],
        ));
    }
    let cpu = &s["cpu"];
    let cores = |v: &Value| {
        if v.is_number() {
            format!("{:.2}", f(v))
        } else {
            "-".into()
        }
    };
    lines.push(format!(
        "storm CPU      control {} cores before the drop, {} after it (busiest second {}); edges {} -> {} cores",
        cores(&cpu["control_cores_before"]),
        cores(&cpu["control_cores_after"]),
        cores(&cpu["control_cores_peak_second_after"]),
        cores(&cpu["edge_cores_before"]),
        cores(&cpu["edge_cores_after"]),
    ));
    lines.push(if s["complete_and_gap_free"] == true {
        "storm verdict  every viewer's stream complete and gap-free across the reconnect".into()
    } else {
        let why: Vec<&str> = s["not_gap_free_because"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        format!(
            "storm verdict  NOT complete and gap-free across the reconnect: {}",
            why.join("; ")
        )
    });
    lines
}

/// The table's line for the control plane's history (from its /metrics); none without it.
fn control_lines(c: &Value) -> Vec<String> {
    let h = &c["history"];
    if !h.is_object() {
        return Vec::new();
    }
    let per_message = |v: &Value| {
        if v.is_number() {
            format!("{} per message", fmt_bytes(f(v)))
        } else {
            "-".into()
        }
    };
    let rss = if c["rss_growth"].is_number() {
        format!(
            "; control RSS {} -> {} ({} per message stored since idle)",
            fmt_bytes(f(&c["rss_idle"])),
            fmt_bytes(f(&c["rss_end"])),
            if c["rss_growth_per_stored_message"].is_number() {
                fmt_bytes(f(&c["rss_growth_per_stored_message"]))
            } else {
                "-".into()
            },
        )
    } else {
        String::new()
    };
    let recoveries = match counts_text(&c["recoveries_since_idle"]).as_str() {
        "none" => String::new(),
        counts => format!("; recoveries answered: {counts}"),
    };
    let online = match (
        c["online_pushes_since_idle"].as_i64(),
        c["online_frames_since_idle"].as_i64(),
    ) {
        (Some(pushes), Some(frames)) if pushes > 0 => {
            format!(
                "; online counts since idle: {pushes} room counts to edges in {frames} link frames"
            )
        }
        _ => String::new(),
    };
    vec![format!(
        "control store  history {} messages in {} channels, {} ({}), evictions since idle: {}{rss}{recoveries}{online}",
        count(&h["messages"]),
        count(&h["channels"]),
        fmt_bytes(f(&h["bytes"])),
        per_message(&h["bytes_per_message"]),
        counts_text(&h["evictions_since_idle"]),
    )]
}

/// The requested rate from the run's config: `100 msg/s`, `unpaced`, or a ramp with its mean.
fn requested_text(c: &Value) -> String {
    match c["ramp_to"].as_f64() {
        Some(to) => {
            let from = f(&c["rate"]);
            format!("{} (mean {} msg/s)", ramp_text(from, to), (from + to) / 2.0)
        }
        None => rate_text(f(&c["rate"])),
    }
}

/// 1234567 → "1,234,567".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(d);
    }
    out
}

/// The value of an edge flag given with --edge-arg (`--tick-ms=0` or `--tick-ms`, `0`).
pub fn edge_arg(edge_args: &[String], name: &str) -> Option<String> {
    let mut it = edge_args.iter();
    while let Some(a) = it.next() {
        if let Some(v) = a.strip_prefix(name) {
            if let Some(v) = v.strip_prefix('=') {
                return Some(v.to_string());
            }
            if v.is_empty() {
                return it.next().cloned();
            }
        }
    }
    None
}

/// The table's `windows` line (the edges' merge windows over the measured window) and, for a
/// ramp, its `ramp` line: nothing when the edges do not log windows.
fn window_lines(r: &Value) -> Vec<String> {
    let mut lines = Vec::new();
    let w = &r["windows"];
    if w.is_object() {
        let mean = if w["mean_ms"].is_number() {
            format!("mean {:.0} ms over the window", f(&w["mean_ms"]))
        } else {
            "none closed in the window".to_string()
        };
        let tick = match w["tick_ms"].as_u64() {
            Some(t) => format!(" (tick {t} ms"),
            None => " (tick ?".to_string(),
        };
        let cap = w["max_window_ms"]
            .as_u64()
            .map_or(String::new(), |m| format!(", cap {m} ms"));
        lines.push(format!(
            "windows        {mean}{tick}{cap}); {} of {} stretched, {} capped",
            thousands(w["stretched"].as_u64().unwrap_or(0)),
            thousands(w["windows"].as_u64().unwrap_or(0)),
            thousands(w["capped"].as_u64().unwrap_or(0)),
        ));
    }
    let ramp = &r["ramp"];
    if ramp["low"].is_object() {
        let end = |e: &Value| {
            let mut s = format!("{} msg/s published", rate(f(&e["published_per_s"])));
            if e["window_ms"].is_number() {
                s += &format!(", window {:.0} ms", f(&e["window_ms"]));
            }
            if e["p99_ms"].is_number() {
                s += &format!(", p99 {:.1} ms", f(&e["p99_ms"]));
            }
            if e["msgs_per_frame"].is_number() {
                s += &format!(", {:.2} msgs/frame", f(&e["msgs_per_frame"]));
            }
            s
        };
        lines.push(format!(
            "ramp           {} over the {:.0} s window; first {} s: {}; last {} s: {}",
            ramp_text(f(&ramp["from"]), f(&ramp["to"])),
            f(&ramp["secs"]),
            ramp["low"]["secs"],
            end(&ramp["low"]),
            ramp["high"]["secs"],
            end(&ramp["high"]),
        ));
    }
    lines
}

/// A ramp's two ends, from the timeline's seconds in the measured window: the first and the
/// last sixth (at least one second each) — the offered rate, the mean effective window, the
/// mean of the per-second p99s (and their max), and messages per frame.
pub fn ramp_ends(timeline: &[Sample]) -> Option<Value> {
    let window: Vec<&Sample> = timeline.iter().filter(|s| s.phase == "window").collect();
    if window.is_empty() {
        return None;
    }
    let n = (window.len() / 6).max(1);
    let end = |part: &[&Sample]| {
        let mean = |v: Vec<f64>| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
        let p99s: Vec<f64> = part
            .iter()
            .filter_map(|s| Some(s.latency_ms?.p99))
            .collect();
        let msgs: f64 = part.iter().map(|s| s.delivered_msgs_per_s).sum();
        let frames: f64 = part.iter().map(|s| s.frames_per_s).sum();
        json!({
            "secs": part.len(),
            "published_per_s": mean(part.iter().map(|s| s.published_per_s).collect()),
            "window_ms": mean(part.iter().filter_map(|s| s.window_ms).collect()),
            "p99_ms": mean(p99s.clone()),
            "p99_max_ms": p99s.iter().copied().reduce(f64::max),
            "msgs_per_frame": (frames > 0.0).then(|| msgs / frames),
        })
    };
    Some(json!({
        "low": end(&window[..n]),
        "high": end(&window[window.len() - n..]),
    }))
}

/// `1.5 GiB`, or smaller units below a GiB.
fn fmt_size(b: f64) -> String {
    if b.abs() >= (1u64 << 30) as f64 {
        format!("{:.1} GiB", b / (1u64 << 30) as f64)
    } else {
        fmt_bytes(b)
    }
}

/// The kernel's TCP memory and drops over the window, and the warning when it ran out or
/// dropped segments.
fn kernel_tcp_lines(k: &Value) -> Vec<String> {
    let w = &k["window"];
    let n = |v: &Value| {
        v.as_u64()
            .map_or_else(|| "?".to_string(), |x| x.to_string())
    };
    let limits = &k["tcp_mem_bytes"];
    let gib = (1u64 << 30) as f64;
    let mut line = if limits.is_object() {
        let (p, h) = (f(&limits["pressure"]), f(&limits["high"]));
        let pair = if p >= gib && h >= gib {
            format!("{:.1}/{:.1} GiB", p / gib, h / gib)
        } else {
            format!("{}/{}", fmt_size(p), fmt_size(h))
        };
        format!("tcp_mem {pair} pressure/max")
    } else {
        "tcp_mem unknown".to_string()
    };
    if k["sockstat_mem_peak_bytes"].is_number() {
        let peak = f(&k["sockstat_mem_peak_bytes"]);
        let peak_text = if peak >= 0.1 * gib {
            format!("{:.1} GiB", peak / gib)
        } else {
            fmt_bytes(peak)
        };
        line += &format!(", peak {peak_text} in use");
        if limits.is_object() && f(&limits["pressure"]) > 0.0 {
            let share = 100.0 * peak / f(&limits["pressure"]);
            let digits = usize::from(share < 10.0);
            line += &format!(" ({share:.digits$}% of pressure)");
        }
    }
    if w.is_object() {
        line += &format!(
            "; window: {} memory-pressure events, {} receive-queue drops, {} prunes, {} retransmits",
            n(&w["TCPMemoryPressures"]),
            n(&w["TCPRcvQDrop"]),
            n(&w["PruneCalled"]),
            n(&w["RetransSegs"]),
        );
        // The rest only when something happened.
        for (key, what) in [
            ("TCPMemoryPressuresChrono", "ms under pressure"),
            ("TCPOFODrop", "out-of-order drops"),
            ("TCPBacklogDrop", "backlog drops"),
            ("RcvPruned", "pruned"),
            ("TCPAbortOnMemory", "aborts on memory"),
            ("ListenOverflows", "listen overflows"),
            ("ListenDrops", "listen drops"),
        ] {
            if w[key].as_u64().is_some_and(|x| x > 0) {
                line += &format!(", {} {what}", w[key]);
            }
        }
    } else {
        line += "; window: counters not readable";
    }
    let run = &k["run"];
    let run_bad = |key: &str| run[key].as_u64().unwrap_or(0) > w[key].as_u64().unwrap_or(0);
    if ["TCPMemoryPressures", "TCPRcvQDrop", "TCPAbortOnMemory"]
        .iter()
        .any(|key| run_bad(key))
    {
        line += &format!(
            "; whole run: {} memory-pressure events, {} receive-queue drops, {} aborts on memory",
            n(&run["TCPMemoryPressures"]),
            n(&run["TCPRcvQDrop"]),
            n(&run["TCPAbortOnMemory"]),
        );
    }
    let mut lines = vec![format!("kernel TCP     {line}")];
    if let Some(warning) = k["warning"].as_str() {
        // At the start of its line, where nothing else in the table starts, to stand out.
        lines.push(warning.to_string());
    }
    lines
}

fn print_group(g: &Value) {
    let name = g["group"].as_str().unwrap_or("?");
    let judged = if g["completeness"].is_null() {
        "rejoin with gaps by design, completeness not judged".to_string()
    } else {
        format!(
            "{} complete ({} missing",
            pct(&g["completeness"]),
            g["missing"]
        )
    };
    let unrecovered = match g["unrecovered"].as_u64() {
        Some(n) if n > 0 => format!(" (and {n} not recovered: see unrecovered)"),
        _ => String::new(),
    };
    println!(
        "group {name:<8} {} connections, {} open at the end{unrecovered}: {judged}, {} duplicated, {} out of order{}",
        g["connections"],
        g["open"],
        g["duplicates"],
        g["out_of_order"],
        if g["completeness"].is_null() { "" } else { ")" },
    );
    println!(
        "  {:<4} {:>10} {:>12} {:>12} {:>10} {:>6} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "prio",
        "published",
        "expected",
        "unique",
        "missing",
        "dup",
        "ooo",
        "complete",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms"
    );
    let row = |label: String, p: &Value, published: String| {
        let l = &p["latency_ms"];
        println!(
            "  {label:<4} {published:>10} {:>12} {:>12} {:>10} {:>6} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            count(&p["expected"]),
            p["unique"].to_string(),
            count(&p["missing"]),
            p["duplicates"].to_string(),
            p["out_of_order"].to_string(),
            pct(&p["completeness"]),
            ms(&l["p50"]),
            ms(&l["p90"]),
            ms(&l["p99"]),
            ms(&l["p999"]),
            ms(&l["max"]),
        );
    };
    let priorities = g["priorities"].as_array().cloned().unwrap_or_default();
    for p in &priorities {
        row(format!("P{}", p["priority"]), p, p["published"].to_string());
    }
    if priorities.len() > 1 {
        let published: u64 = priorities
            .iter()
            .filter_map(|p| p["published"].as_u64())
            .sum();
        row("all".into(), g, published.to_string());
    }
}

/// One line with the numbers that matter most.
pub fn summary(r: &Value) -> String {
    let c = &r["config"];
    let conn = &r["connections"];
    let nats = is_nats(r);
    let edge = if nats { "NATS" } else { "edge" };
    let mut s = format!(
        "{}{}: {} {} conns on {} {}(s) ({}), {} room(s) {}: {}/{} joined in {:.1} s",
        if nats { "NATS PEER " } else { "" },
        r["scenario"].as_str().unwrap_or("?"),
        c["transport"].as_str().unwrap_or("?"),
        c["conns"],
        r["system"]["edges"].as_array().map_or(0, Vec::len),
        if nats { "server" } else { "edge" },
        r["system"]["drivers"].as_str().unwrap_or("?"),
        c["rooms"],
        c["room_dist"].as_str().unwrap_or("?"),
        conn["joined"],
        c["conns"],
        f(&conn["time_to_all_connected_secs"]),
    );
    if conn["edge_check"]["connections_match"] != true {
        s += " (EDGE COUNT MISMATCH)";
    }
    let biggest = &conn["edge_check"]["biggest_room"];
    if biggest["level"].is_number() {
        s += &format!(
            ", biggest room at level {} ({} ms tick)",
            biggest["level"], biggest["tick_ms"]
        );
    }
    if let Some(ch) = conn.get("churn") {
        s += &format!(", {}/s reconnects", rate(f(&ch["reconnects_per_s"])));
    }
    if let Some(w) = r["kernel_tcp"]["warning_short"].as_str() {
        s += &format!(" ({w})");
    }
    let mem = &r["memory"];
    if mem["edge_rss_per_conn"].is_number() {
        s += &format!(
            ", {edge} RSS {}/conn",
            fmt_bytes(f(&mem["edge_rss_per_conn"]))
        );
    }
    if let Some(h) = r.get("hold") {
        s += &format!(
            ", held {:.0} s at {:.3} {edge} cores",
            f(&h["secs"]),
            f(&h["edge_cores"])
        );
    }
    if let Some(d) = r.get("delivery") {
        s += &format!(
            "; {} ({}) via {}: {} msg/s published, {} msg/s delivered in {} frames/s",
            requested_text(c),
            c["priority_mix"].as_str().unwrap_or("?"),
            r["system"]["publish_via"].as_str().unwrap_or("?"),
            rate(f(&r["publishing"]["rate_in_window"])),
            rate(f(&d["msgs_per_s"])),
            rate(f(&d["frames_per_s"])),
        );
        for g in d["groups"].as_array().into_iter().flatten() {
            let name = g["group"].as_str().unwrap_or("?");
            let l = &g["latency_ms"];
            s += &format!("; {name} ");
            if g["completeness"].is_number() {
                s += &format!("{} complete, ", pct(&g["completeness"]));
            }
            s += &format!("p50 {} ms p99 {} ms", ms(&l["p50"]), ms(&l["p99"]));
            if name == "normal" {
                if let Some(p0) = g["priorities"]
                    .as_array()
                    .and_then(|ps| ps.iter().find(|p| p["priority"] == 0))
                    .filter(|_| g["priorities"].as_array().is_some_and(|ps| ps.len() > 1))
                {
                    s += &format!(" (P0 p99 {} ms)", ms(&p0["latency_ms"]["p99"]));
                }
            }
        }
        if r["windows"]["mean_ms"].is_number() {
            s += &format!(", windows mean {:.0} ms", f(&r["windows"]["mean_ms"]));
        }
        let cpu = &r["cpu"];
        if cpu["edge_us_per_frame"].is_number() {
            s += &format!(", {edge} {:.2} us CPU/frame", f(&cpu["edge_us_per_frame"]));
            if cpu["edge_frame_vs_floor"].is_number() {
                s += &format!(" = {:.2}x floor", f(&cpu["edge_frame_vs_floor"]));
            }
            s += &format!(", {:.3} us CPU/msg", f(&cpu["edge_us_per_msg"]));
        }
        if cpu["control_us_per_published"].is_number() {
            s += &format!(
                ", control {:.2} cores ({:.2} us/msg)",
                f(&cpu["control_cores"]),
                f(&cpu["control_us_per_published"])
            );
        }
    }
    let storm = &r["recovery"];
    if storm["dropped"].is_number() {
        s += &format!(
            "; storm: {} dropped, {} recovered ({} not), all answered in {}, reply p99 {} ms, control {} cores after the drop, {}",
            storm["dropped"],
            storm["recovered"],
            storm["not_recovered_total"],
            secs(&storm["secs_to_all_answered"]),
            ms(&storm["reply_ms"]["p99"]),
            if storm["cpu"]["control_cores_after"].is_number() {
                format!("{:.2}", f(&storm["cpu"]["control_cores_after"]))
            } else {
                "-".into()
            },
            if storm["complete_and_gap_free"] == true {
                "gap-free"
            } else {
                "NOT GAP-FREE"
            }
        );
    }
    s += &merge_summary(r);
    s += &upstream::summary(r);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_tcp::{self, Counters, Spans, TcpMem};

    fn counters(pairs: &[(&str, u64)]) -> Counters {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    const LIMITS: TcpMem = TcpMem {
        low: 1 << 30,
        pressure: 3 << 29,
        high: (22 << 30) / 10,
    };

    #[test]
    fn kernel_tcp_line_and_warning() {
        let clean = counters(&[
            ("TCPMemoryPressures", 0),
            ("TCPRcvQDrop", 0),
            ("PruneCalled", 0),
            ("RetransSegs", 22),
            ("ListenOverflows", 0),
        ]);
        let k = kernel_tcp::json(&Spans {
            window: Some(&clean),
            run: Some(&clean),
            limits: Some(LIMITS),
            peak_window: Some(900 << 20),
            peak_run: Some((9 << 30) / 10),
            conns: 300,
        });
        let lines = kernel_tcp_lines(&k);
        assert_eq!(
            lines,
            ["kernel TCP     tcp_mem 1.5/2.2 GiB pressure/max, peak 0.9 GiB in use (60% of pressure); \
              window: 0 memory-pressure events, 0 receive-queue drops, 0 prunes, 22 retransmits"]
        );

        let bad = counters(&[
            ("TCPMemoryPressures", 4),
            ("TCPMemoryPressuresChrono", 76_480),
            ("TCPRcvQDrop", 1_406_341),
            ("PruneCalled", 1_456_738),
            ("TCPOFODrop", 47_209),
            ("RetransSegs", 99),
        ]);
        let k = kernel_tcp::json(&Spans {
            window: Some(&bad),
            run: Some(&bad),
            limits: Some(LIMITS),
            peak_window: None,
            peak_run: Some(3 << 29),
            conns: 100_000,
        });
        let lines = kernel_tcp_lines(&k);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].contains("window: 4 memory-pressure events, 1406341 receive-queue drops, 1456738 prunes, 99 retransmits, 76480 ms under pressure, 47209 out-of-order drops"), "{}", lines[0]);
        assert!(
            lines[1].starts_with("WARNING: the kernel ran out of TCP memory"),
            "{}",
            lines[1]
        );
        let summary = summary(&json!({"kernel_tcp": k}));
        assert!(
            summary.contains("(KERNEL OUT OF TCP MEMORY in the window (4 pressure events"),
            "{summary}"
        );
    }

    fn second(t: f64, phase: &'static str, published: f64, window: Option<f64>) -> Sample {
        Sample {
            t,
            phase,
            conns: 10,
            edge_conns: Some(10),
            published_per_s: published,
            delivered_msgs_per_s: published * 10.0,
            frames_per_s: 10.0,
            reconnects_per_s: 0.0,
            sends_per_s: 0.0,
            send_replies_per_s: 0.0,
            latency_ms: Some(crate::progress::Percentiles {
                p50: 1.0,
                p90: 2.0,
                p99: 3.0 + t,
                p999: 4.0 + t,
                max: 5.0 + t,
            }),
            edge_cores: None,
            control_cores: None,
            window_ms: window,
            channels_stretched: None,
        }
    }

    #[test]
    fn ramp_ends_and_the_windows_line() {
        let mut timeline = vec![second(0.0, "warmup", 10.0, None)];
        timeline.extend((1..=12).map(|i| {
            let t = f64::from(i);
            second(t, "window", 10.0 * t, (i > 1).then_some(5.0 * t))
        }));
        timeline.push(second(13.0, "after", 0.0, None));
        let ends = ramp_ends(&timeline).unwrap();
        // 12 seconds in the window: the first and last 2.
        assert_eq!(ends["low"]["secs"], 2);
        assert_eq!(ends["low"]["published_per_s"], 15.0);
        assert_eq!(
            ends["low"]["window_ms"], 10.0,
            "only the second that had one"
        );
        assert_eq!(ends["low"]["p99_ms"], 4.5);
        assert_eq!(ends["high"]["published_per_s"], 115.0);
        assert_eq!(ends["high"]["window_ms"], 57.5);
        assert_eq!(ends["high"]["p99_max_ms"], 15.0);
        assert_eq!(ends["high"]["msgs_per_frame"], 115.0);
        assert_eq!(ramp_ends(&timeline[..1]), None, "no window");

        let mut ramp = ends;
        ramp["from"] = json!(10.0);
        ramp["to"] = json!(150.0);
        ramp["secs"] = json!(12.0);
        let r = json!({
            "windows": {"mean_ms": 312.4, "windows": 1300, "stretched": 1234, "capped": 0,
                        "tick_ms": 100, "max_window_ms": 2000},
            "ramp": ramp,
        });
        let lines = window_lines(&r);
        assert_eq!(
            lines[0],
            "windows        mean 312 ms over the window (tick 100 ms, cap 2000 ms); 1,234 of 1,300 stretched, 0 capped"
        );
        assert!(
            lines[1].starts_with("ramp           10 -> 150 msg/s ramp over the 12 s window; first 2 s: 15 msg/s published, window 10 ms, p99 4.5 ms, 15.00 msgs/frame; last 2 s: 115 msg/s"),
            "{}",
            lines[1]
        );
        // Edges that log no windows, no ramp: no lines.
        assert!(window_lines(&json!({})).is_empty());
        assert_eq!(
            requested_text(&json!({"rate": 10.0, "ramp_to": 150.0})),
            "10 -> 150 msg/s ramp (mean 80 msg/s)"
        );
        assert_eq!(
            requested_text(&json!({"rate": 10.0, "ramp_to": null})),
            "10 msg/s"
        );
    }

    #[test]
    fn thousands_and_edge_args() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1234), "1,234");
        assert_eq!(thousands(1_234_567), "1,234,567");
        let args: Vec<String> = ["--io=epoll", "--tick-ms=0", "--max-window-ms", "500"]
            .map(String::from)
            .to_vec();
        assert_eq!(edge_arg(&args, "--tick-ms").as_deref(), Some("0"));
        assert_eq!(edge_arg(&args, "--max-window-ms").as_deref(), Some("500"));
        assert_eq!(edge_arg(&args, "--tick"), None, "whole names only");
    }

    /// A storm's merged report: 2,000 dropped 5 s into the window, everyone recovered.
    fn storm(recovered: u64) -> RecoveryReport {
        RecoveryReport {
            dropped: 2000,
            drop_at_us: 10_000_000,
            answered: 2000,
            resumed: 2000,
            recovered,
            refused: if recovered < 2000 {
                BTreeMap::from([("too_many".to_string(), 2000 - recovered)])
            } else {
                BTreeMap::new()
            },
            missed: 41_601,
            replayed: 41_601,
            last_reply_at_us: 11_010_000,
            last_caught_up_at_us: 11_012_000,
            reply_us: vec![(1_170, 1970), (6_580, 30)],
            since_drop_us: vec![(490_000, 2000)],
            caught_up_us: vec![(997_000, 2000)],
            replay_latency_us: vec![(398_000, 41_601)],
            ..RecoveryReport::default()
        }
    }

    fn delivery(missing: u64, duplicates: u64) -> Value {
        json!({"groups": [
            {"group": "normal", "completeness": 1.0, "missing": missing,
             "duplicates": duplicates, "out_of_order": 0},
            {"group": "churn", "completeness": null, "missing": null,
             "duplicates": 3, "out_of_order": 0},
        ]})
    }

    #[test]
    fn a_storm_everyone_recovers_from_is_gap_free() {
        let r = recovery_json(&storm(2000), &delivery(0, 0));
        assert_eq!(r["complete_and_gap_free"], true, "{r}");
        assert_eq!(r["not_gap_free_because"], json!([]));
        assert_eq!(r["secs_to_all_answered"], 1.01);
        assert_eq!(r["secs_to_all_caught_up"], 1.012);
        assert_eq!(r["reply_ms"]["count"], 2000);
        assert_eq!(r["reply_ms"]["p50"], 1.17);
        assert_eq!(r["reply_ms"]["p99"].as_f64().map(|v| v.round()), Some(7.0));
        assert_eq!(r["replayed_msgs"], 41_601);
        assert_eq!(r["not_recovered_total"], 0);

        let mut full = json!({"recovery": r.clone()});
        full["recovery"]["drop_at_window_secs"] = json!(5.0);
        full["recovery"]["reconnect_jitter_secs"] = json!(1.0);
        full["recovery"]["cpu"] = json!({"control_cores_before": 0.01, "control_cores_after": 0.25,
            "control_cores_peak_second_after": 0.6, "edge_cores_before": 0.1, "edge_cores_after": 0.4});
        let lines = recovery_lines(&full);
        assert!(lines[0].starts_with("storm          2000 dropped at once 5.0 s into the window, reconnecting within 1.0 s: 2000 answered, 2000 with since: 2000 recovered, not recovered: none;"), "{}", lines[0]);
        assert!(
            lines[1].contains("answered 1.01 s after the drop"),
            "{}",
            lines[1]
        );
        assert!(lines.iter().any(|l| l.starts_with("storm CPU      control 0.01 cores before the drop, 0.25 after it (busiest second 0.60)")), "{lines:?}");
        assert_eq!(
            lines.last().unwrap(),
            "storm verdict  every viewer's stream complete and gap-free across the reconnect"
        );
        assert!(summary(&full)
            .contains("storm: 2000 dropped, 2000 recovered (0 not), all answered in 1.01 s"));
        assert!(recovery_lines(&json!({})).is_empty(), "no storm, no lines");
    }

    #[test]
    fn a_storm_with_refusals_or_holes_says_why_it_is_not_gap_free() {
        let mut rec = storm(1990);
        rec.unrecovered_open = 10;
        rec.unrecovered_expected = 5_000;
        rec.unrecovered_unique = 4_000;
        rec.unrecovered_skipped = 990;
        let r = recovery_json(&rec, &delivery(0, 0));
        assert_eq!(r["complete_and_gap_free"], false);
        assert_eq!(r["not_gap_free_because"], json!(["10 not recovered"]));
        assert_eq!(r["not_recovered"], json!({"too_many": 10}));
        assert_eq!(r["unrecovered"]["missing_besides_skipped"], 10);
        assert!(
            r["secs_to_all_answered"].is_number(),
            "refused viewers got answers"
        );
        assert!(
            r["secs_to_all_caught_up"].is_null(),
            "not everyone recovered"
        );
        let lines = recovery_lines(&json!({"recovery": r}));
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("unrecovered    10 viewers reload instead")),
            "{lines:?}"
        );

        // Holes in a judged group, a viewer still waiting, a short replay.
        let mut rec = storm(1999);
        rec.answered = 1999;
        rec.waiting = 1;
        rec.replayed = 41_600;
        rec.replaying_at_end = 1;
        let r = recovery_json(&rec, &delivery(3, 1));
        let why = r["not_gap_free_because"].to_string();
        for part in [
            "1 of 2000 dropped viewers got no join reply (0 gave up, 1 still reconnecting)",
            "41600 of 41601 missed messages replayed (1 viewers still replaying)",
            "3 missing in group normal",
            "1 duplicated in group normal",
        ] {
            assert!(why.contains(part), "{why}");
        }
        assert!(!why.contains("churn"), "churners are not judged: {why}");
        assert!(r["secs_to_all_answered"].is_null());
    }

    #[test]
    fn the_control_planes_history_and_rss_per_message() {
        let idle = Metrics::parse(
            "roomcast_control_history_messages 0\nroomcast_control_history_bytes 0\n\
             roomcast_control_recoveries_total{result=\"recovered\"} 5\n",
        );
        let end = Metrics::parse(
            "roomcast_control_history_messages 300000\nroomcast_control_history_bytes 66300000\n\
             roomcast_control_history_channels 1001\n\
             roomcast_control_history_evictions_total{reason=\"count\"} 700000\n\
             roomcast_control_recoveries_total{result=\"recovered\"} 2005\n\
             roomcast_control_recoveries_total{result=\"too_old\"} 0\n",
        );
        let c = control_json(Some(&idle), Some(&end), (Some(20 << 20), Some(100 << 20)));
        assert_eq!(c["history"]["messages"], 300_000);
        assert_eq!(c["history"]["bytes_per_message"], 221.0);
        assert_eq!(
            c["history"]["evictions_since_idle"],
            json!({"count": 700_000})
        );
        assert_eq!(
            c["recoveries_since_idle"],
            json!({"recovered": 2000, "too_old": 0})
        );
        let per = c["rss_growth_per_stored_message"].as_f64().unwrap();
        assert!(
            (per - (80u64 << 20) as f64 / 300_000.0).abs() < 1e-9,
            "{per}"
        );
        let lines = control_lines(&c);
        assert_eq!(
            lines,
            ["control store  history 300000 messages in 1001 channels, 63.2 MiB (221 B per message), evictions since idle: count 700000; control RSS 20.0 MiB -> 100.0 MiB (280 B per message stored since idle); recoveries answered: recovered 2000"]
        );
        assert_eq!(control_json(Some(&idle), None, (None, None)), Value::Null);
        assert!(control_lines(&Value::Null).is_empty());
    }

    fn merge_published(traffic: Traffic) -> MergePublished {
        MergePublished {
            traffic,
            pk_rooms: 2,
            total: [24_000, 0, 0],
            window: [20_000, 0, 0],
            finals: 2,
            held: 23_990,
            requests: 1_200,
            rooms: vec![RoomExpect::default(); 2],
        }
    }

    fn pk_traffic(rules: bool) -> Traffic {
        Traffic {
            pk_rate: 1000.0,
            pk_interval_ms: 2000,
            like_rate: 0.0,
            combo_rate: 0.0,
            combo_keys: 40,
            rules,
        }
    }

    #[test]
    fn the_merge_section_judges_the_pk_checks() {
        let got = MergeReport {
            received: [18_000, 0, 0],
            stands_for: [24_002, 0, 0],
            window_received: [12_000, 0, 0],
            finals: 2000,
            judged: 2000,
            pk_judged: 2000,
            pk_updates: 14_000,
            pk_gaps: 12_000,
            pk_span_ms: 24_000_000,
            pk_flushed_by_final: 2000,
            pk_max_per_interval: 1,
            pk_min_gap_ms: Some(1_750),
            ..MergeReport::default()
        };
        let control = json!({"merge": {"merged_since_idle": 23_990, "bypassed_since_idle": 0,
            "windows_at_end": 0, "waiting_bytes_at_end": 0}});
        let m = merge_json(
            &merge_published(pk_traffic(true)),
            &got,
            2000,
            10.0,
            &control,
        );
        assert_eq!(m["ok"], true, "{m}");
        assert_eq!(m["pk"]["mean_gap_ms"], 2000.0);
        assert_eq!(m["pk"]["per_interval"], 1.0);
        assert_eq!(m["received"]["pk"]["per_viewer_per_s"], 0.6);
        assert!(m["sums"]["like"].is_null(), "no likes published");
        let r = json!({"merge": m});
        let lines = merge_lines(&r);
        assert!(
            lines[0]
                .starts_with("merge traffic  with merge rules: 1000 PK gifts/s, each to 2 room(s)"),
            "{}",
            lines[0]
        );
        assert!(
            lines[0].contains("control merged 23,990 into others"),
            "{}",
            lines[0]
        );
        assert!(
            lines[2].starts_with("pk check       2,000 viewers: 0 missed the final"),
            "{}",
            lines[2]
        );
        assert!(lines[2].contains("one update every 2000 ms on average (1.00 per 2000 ms), at most 1 in one 2000 ms slot, the closest two 1750 ms apart (0 viewers got two closer than 1000 ms"), "{}", lines[2]);
        assert!(lines.last().unwrap().starts_with("merge verdict  OK"));
        assert!(merge_summary(&r).ends_with(", OK"), "{}", merge_summary(&r));

        // Two updates at once for every viewer: not OK, and said why.
        let bad = MergeReport {
            pk_too_close: 2000,
            pk_min_gap_ms: Some(0),
            examples: vec!["viewer 0 (room-0): two PK updates 0 ms apart".into()],
            ..got.clone()
        };
        let m = merge_json(
            &merge_published(pk_traffic(true)),
            &bad,
            2000,
            10.0,
            &control,
        );
        assert_eq!(m["ok"], false);
        assert_eq!(
            m["not_ok_because"],
            json!(["2000 viewers got two PK updates closer than half the interval"])
        );
        let lines = merge_lines(&json!({"merge": m}));
        assert_eq!(
            lines[lines.len() - 2],
            "merge verdict  NOT OK: 2000 viewers got two PK updates closer than half the interval"
        );
        assert_eq!(
            lines[lines.len() - 1],
            "  e.g.         viewer 0 (room-0): two PK updates 0 ms apart"
        );
        // Without rules: reported, not judged.
        let m = merge_json(
            &merge_published(pk_traffic(false)),
            &bad,
            2000,
            10.0,
            &Value::Null,
        );
        assert_eq!(m["ok"], Value::Null);
        assert!(merge_lines(&json!({"merge": m}))
            .iter()
            .any(|l| l == "merge verdict  not judged: the merge traffic went without merge rules"));
        assert!(merge_lines(&json!({})).is_empty());
        assert_eq!(merge_summary(&json!({})), "");
    }

    #[test]
    fn the_merge_section_judges_sums_and_the_comparison_reads_both_runs() {
        let traffic = Traffic {
            pk_rate: 0.0,
            like_rate: 20_000.0,
            combo_rate: 200.0,
            ..pk_traffic(true)
        };
        let got = MergeReport {
            judged: 100,
            like_got: 1_000,
            like_want: 1_000,
            combo_got: 50,
            combo_want: 50,
            ..MergeReport::default()
        };
        let m = merge_json(&merge_published(traffic), &got, 100, 10.0, &Value::Null);
        assert_eq!(m["ok"], true, "{m}");
        assert!(m["pk"].is_null());
        assert_eq!(m["sums"]["like"]["fraction"], 1.0);
        let lines = merge_lines(&json!({"merge": m.clone()}));
        assert!(lines.iter().any(|l| l == "sum check      100 viewers: like sums exact for 100 (0 differ; 1,000 of 1,000 counts received, 100.000%); combo sums per key exact for 100 (0 differ; 50 of 50 counts received, 100.000%)"), "{lines:?}");
        let off = MergeReport {
            combo_mismatches: 3,
            like_mismatches: 100,
            like_got: 10,
            ..got
        };
        let m2 = merge_json(&merge_published(traffic), &off, 100, 10.0, &Value::Null);
        assert_eq!(
            m2["not_ok_because"],
            json!([
                "100 viewers' like sums differ from their room's",
                "3 viewers' combo sums differ from their room's (per key)"
            ])
        );

        let run = |msgs: f64, edge: f64, merge: &Value| {
            json!({
                "scenario": "like-storm",
                "window": {"secs": 10.0},
                "publishing": {"rate_in_window": 100.0, "with_merge_traffic_in_window": 203_000},
                "delivery": {"msgs_per_s": msgs, "frames_per_s": 8_000.0, "msgs_per_frame": msgs / 8_000.0,
                    "groups": [{"group": "normal", "completeness": 1.0, "latency_ms": {"p99": 250.0}}]},
                "cpu": {"edge_cores": edge, "control_cores": 0.2, "edge_us_per_frame": 10.0},
                "merge": merge,
            })
        };
        let c = merge_comparison(&run(400_000.0, 0.1, &m), &run(800_000.0, 0.25, &m2));
        assert_eq!(c["with_rules"]["published_per_s"], 20_300.0);
        assert_eq!(c["without_over_with"]["delivered_msgs_per_s"], 2.0);
        assert_eq!(c["without_over_with"]["edge_cores"], 2.5);
        assert_eq!(c["without_rules"]["like_sum_fraction"], 0.01);
        assert_eq!(c["with_rules"]["merge_ok"], true);
        print_merge_comparison(&c);
    }

    #[test]
    fn the_busiest_control_second_after_the_drop() {
        let mut timeline: Vec<Sample> = (1..=6)
            .map(|i| second(f64::from(i), "window", 50.0, None))
            .collect();
        for (s, cores) in timeline.iter_mut().zip([0.9, 0.1, 0.2, 0.7, 0.3, 0.1]) {
            s.control_cores = Some(cores);
        }
        timeline[5].phase = "after";
        assert_eq!(peak_control_cores(&timeline, 2.5), Some(0.7));
        assert_eq!(peak_control_cores(&timeline, 9.0), None);
    }

    #[test]
    fn kernel_tcp_line_without_proc() {
        let k = kernel_tcp::json(&Spans {
            window: None,
            run: None,
            limits: None,
            peak_window: None,
            peak_run: None,
            conns: 1,
        });
        assert_eq!(
            kernel_tcp_lines(&k),
            ["kernel TCP     tcp_mem unknown; window: counters not readable"]
        );
        assert!(!summary(&json!({"kernel_tcp": k})).contains("KERNEL"));
    }
}
