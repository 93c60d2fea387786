//! Upstream (`--senders`, PROTOCOL.md §5 "Upstream"): what the bench reads from outside about
//! the viewers' sends — the edges' and the control plane's `/metrics` at both ends of the
//! measured window ([`MetricsProbe`]), the sample backend's `/stats` — and the run's `upstream` section
//! built from them, the window's CPU and the clients' merged [`UpstreamReport`]: the JSON, the
//! table's lines and the `summary:` part.
//!
//! What a send's figures mean:
//! * **attempted / answered**: sends the clients wrote in the window, and of those the ones
//!   whose reply they read (whenever it came); `unanswered` at the end are the difference,
//!   apart by whether the sender's connection was still open.
//! * **outcomes**: `published` (the reply carries `msg_seq`), `not_broadcast` (`"broadcast":
//!   false`: the platform accepted it, or the room's per-tick upstream budget was spent), and
//!   every error code (`rate_limited`, `unavailable`, `rejected`, ...).
//! * **reply latency**: the send written → its reply read, on the client's clock; the edges'
//!   own view (`roomcast_send_seconds`: worker → control plane → answer) and the control
//!   plane's proxy round trip (`roomcast_control_send_proxy_seconds`) are shown next to it, from
//!   their histograms (bucket bounds, so "≤").
//! * **CPU per send**: each process's CPU over the window ÷ the sends answered in it. The edges
//!   and the control plane also carry the downstream load meanwhile: the marginal cost of a
//!   send is the difference to a run without senders (bench/README.md, "Upstream").
//! * **delivered**: the published sends as the room's viewers got them (messages with `from`):
//!   each judged viewer (open at the end, not a churner, never dropped) should have every send
//!   published in its room — the sender's own too.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::api::{Api, Metrics};
use crate::msgs::{histogram_of, SendCounts, UpstreamReport};
use crate::progress::rate;
use crate::scenario::RunArgs;
use crate::term::say;

/// The upstream series of the control plane's and every edge's `/metrics` at one moment.
pub struct MetricsProbe {
    control: Option<Metrics>,
    edges: Vec<Option<Metrics>>,
}

impl MetricsProbe {
    /// Reads the control plane's `/metrics` and each edge's (at its admin address, when known).
    pub fn take(args: &RunArgs, edge_admins: &[Option<SocketAddr>]) -> MetricsProbe {
        let control = Api::new(&args.control_url, &args.api_key)
            .and_then(|mut api| api.metrics())
            .map_err(|e| say(&format!("bench: upstream: control /metrics: {e}")))
            .ok();
        let edges = edge_admins
            .iter()
            .map(|admin| {
                let addr = (*admin)?;
                Api::new(&format!("http://{addr}"), "")
                    .and_then(|mut api| api.metrics())
                    .map_err(|e| say(&format!("bench: upstream: edge /metrics at {addr}: {e}")))
                    .ok()
            })
            .collect();
        MetricsProbe { control, edges }
    }
}

/// The sample backend's `GET /stats` (`{"publish":..,"accept":..,...}`), or null.
pub fn backend_stats(args: &RunArgs) -> Value {
    if !args.send_proxy {
        return Value::Null;
    }
    Api::new(&format!("http://{}", args.backend_listen), "")
        .and_then(|mut api| api.get_json::<Value>("/stats"))
        .unwrap_or_else(|e| {
            say(&format!("bench: upstream: backend /stats: {e}"));
            Value::Null
        })
}

/// Growth of a labelled counter family between two readings, by label value (zeros kept out).
fn counter_delta(
    a: Option<&Metrics>,
    b: &Metrics,
    name: &str,
    label: &str,
) -> BTreeMap<String, i64> {
    let before = a.map(|m| m.by_label(name, label)).unwrap_or_default();
    b.by_label(name, label)
        .into_iter()
        .map(|(k, v)| {
            let d = (v - before.get(&k).copied().unwrap_or(0.0)).round() as i64;
            (k, d)
        })
        .filter(|(_, d)| *d != 0)
        .collect()
}

/// A Prometheus histogram's growth between two readings: count, sum, cumulative buckets.
#[derive(Debug, Default, Clone, PartialEq)]
struct HistDelta {
    count: f64,
    sum: f64,
    /// (upper bound in seconds, cumulative count), ascending; +Inf last.
    buckets: Vec<(f64, f64)>,
}

impl HistDelta {
    fn between(a: Option<&Metrics>, b: &Metrics, name: &str) -> Option<HistDelta> {
        let get = |m: Option<&Metrics>, suffix: &str| {
            m.and_then(|m| m.get(&format!("{name}{suffix}")))
                .unwrap_or(0.0)
        };
        b.get(&format!("{name}_count"))?;
        let before = a
            .map(|m| m.by_label(&format!("{name}_bucket"), "le"))
            .unwrap_or_default();
        let mut buckets: Vec<(f64, f64)> = b
            .by_label(&format!("{name}_bucket"), "le")
            .into_iter()
            .map(|(le, v)| {
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(f64::INFINITY)
                };
                (bound, v - before.get(&le).copied().unwrap_or(0.0))
            })
            .collect();
        buckets.sort_by(|x, y| x.0.total_cmp(&y.0));
        Some(HistDelta {
            count: get(Some(b), "_count") - get(a, "_count"),
            sum: get(Some(b), "_sum") - get(a, "_sum"),
            buckets,
        })
    }

    fn add(&mut self, o: &HistDelta) {
        self.count += o.count;
        self.sum += o.sum;
        if self.buckets.is_empty() {
            self.buckets = o.buckets.clone();
        } else {
            for (mine, theirs) in self.buckets.iter_mut().zip(&o.buckets) {
                mine.1 += theirs.1;
            }
        }
    }

    /// The bucket bound (ms) under which the quantile `q` falls (null past the last finite
    /// bound or without samples).
    fn quantile_ms(&self, q: f64) -> Value {
        if self.count <= 0.0 {
            return Value::Null;
        }
        let want = q * self.count;
        self.buckets
            .iter()
            .find(|(_, cum)| *cum >= want)
            .filter(|(le, _)| le.is_finite())
            .map_or(Value::Null, |(le, _)| json!(le * 1000.0))
    }

    fn json(&self) -> Value {
        json!({
            "count": self.count.round() as i64,
            "mean_ms": (self.count > 0.0).then(|| self.sum / self.count * 1000.0),
            "p50_le_ms": self.quantile_ms(0.5),
            "p99_le_ms": self.quantile_ms(0.99),
        })
    }
}

/// Count and percentiles of a µs histogram, in ms (null when empty).
fn ms_json(h: &Histogram<u64>) -> Value {
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

/// A [`SendCounts`] as JSON, per second of `secs` too, with the outcomes the report names.
fn counts_json(c: &SendCounts, secs: f64) -> Value {
    let named = ["rate_limited", "unavailable"];
    let other: u64 = c
        .errors
        .iter()
        .filter(|(code, _)| !named.contains(&code.as_str()))
        .map(|(_, n)| n)
        .sum::<u64>()
        + c.ok_without_details;
    json!({
        "attempted": c.attempted,
        "answered": c.answered,
        "attempted_per_s": c.attempted as f64 / secs,
        "answered_per_s": c.answered as f64 / secs,
        "published": c.published,
        "not_broadcast": c.not_broadcast,
        "rate_limited": c.error("rate_limited"),
        "unavailable": c.error("unavailable"),
        "other": other,
        "errors": c.errors,
        "ok_without_details": c.ok_without_details,
        "published_per_s": c.published as f64 / secs,
        "not_broadcast_per_s": c.not_broadcast as f64 / secs,
        "rate_limited_per_s": c.error("rate_limited") as f64 / secs,
        "unavailable_per_s": c.error("unavailable") as f64 / secs,
        "other_per_s": other as f64 / secs,
    })
}

/// What the upstream section is made of.
pub struct Inputs<'a> {
    pub args: &'a RunArgs,
    pub report: &'a UpstreamReport,
    pub secs: f64,
    pub edge_cpu: Option<f64>,
    pub control_cpu: Option<f64>,
    pub backend_cpu: Option<f64>,
    pub clients_cpu: f64,
    /// `/metrics` at the window's start and end.
    pub probes: Option<(&'a MetricsProbe, &'a MetricsProbe)>,
    pub backend_stats: Value,
    /// The run's `delivery` section (the downstream figures of the same run).
    pub delivery: &'a Value,
}

/// The `upstream` section of the results.
pub fn json(i: &Inputs<'_>) -> Value {
    let up = i.report;
    let args = i.args;
    let w = &up.window;
    let per_send = |cpu: Option<f64>| {
        cpu.filter(|_| w.answered > 0)
            .map(|c| c * 1e6 / w.answered as f64)
    };
    let expected = up.expected_deliveries();
    let published_run: u64 = up.published_per_room.iter().map(|(_, n)| n).sum();
    let mut edge_sends = BTreeMap::new();
    let mut edge_latency: Option<HistDelta> = None;
    let mut control_sends = BTreeMap::new();
    let mut proxy_latency = None;
    let mut proxy_waiting = None;
    let mut proxy_requests = None;
    if let Some((a, b)) = i.probes {
        for (x, y) in a.edges.iter().zip(&b.edges) {
            let Some(y) = y else { continue };
            for (k, v) in counter_delta(x.as_ref(), y, "roomcast_sends_total", "result") {
                *edge_sends.entry(k).or_insert(0) += v;
            }
            if let Some(h) = HistDelta::between(x.as_ref(), y, "roomcast_send_seconds") {
                edge_latency.get_or_insert_with(HistDelta::default).add(&h);
            }
        }
        if let Some(y) = &b.control {
            control_sends = counter_delta(
                a.control.as_ref(),
                y,
                "roomcast_control_sends_total",
                "result",
            );
            proxy_latency =
                HistDelta::between(a.control.as_ref(), y, "roomcast_control_send_proxy_seconds");
            proxy_waiting = y.get("roomcast_control_send_proxy_waiting");
            let requests = "roomcast_control_send_proxy_requests_total";
            proxy_requests = y.get(requests).map(|end| {
                end - a
                    .control
                    .as_ref()
                    .and_then(|a| a.get(requests))
                    .unwrap_or(0.0)
            });
        }
    }
    let delivery = i.delivery;
    let upstream_per_s = up.window_received as f64 / i.secs;
    let all_per_s = delivery["msgs_per_s"].as_f64().unwrap_or(0.0);
    let normal = delivery["groups"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["group"] == "normal"))
        .cloned()
        .unwrap_or(Value::Null);
    json!({
        "senders": up.senders,
        "per_sender_per_s": args.sends_per_sender_per_s,
        "offered_per_s": up.senders as f64 * args.sends_per_sender_per_s,
        "kind": args.send_kind,
        "send_mode": args.send_mode().map_or("control plane default (direct)", |m| m.name()),
        "backend": args.send_proxy.then(|| format!("roomcast-example-backend on {}", args.backend_listen)),
        "window": counts_json(w, i.secs),
        "run": counts_json(&up.run, i.secs),
        "unanswered_window": w.attempted.saturating_sub(w.answered),
        "unanswered_open_at_end": up.unanswered_open,
        "unanswered_closed_at_end": up.unanswered_closed,
        "unexpected_replies": up.unexpected_replies,
        "error_messages_run": up.error_messages,
        "skipped_not_joined": up.skipped_not_ready,
        "skipped_behind": up.skipped_behind,
        "every_send_answered_once": up.run.attempted == up.run.answered
            && up.unexpected_replies == 0,
        "reply_ms": ms_json(&histogram_of(&up.reply_us)),
        "edge_send_seconds": edge_latency.as_ref().map(HistDelta::json),
        "edge_sends_window": edge_sends,
        "control_sends_window": control_sends,
        "control_proxy_seconds": proxy_latency.as_ref().map(HistDelta::json),
        "control_proxy_waiting_at_end": proxy_waiting,
        "control_proxy_requests_window": proxy_requests,
        "backend_stats": i.backend_stats,
        "cpu": {
            "edge_us_per_send": per_send(i.edge_cpu),
            "control_us_per_send": per_send(i.control_cpu),
            "backend_us_per_send": per_send(i.backend_cpu),
            "clients_us_per_send": per_send(Some(i.clients_cpu)),
            "backend_cpu_secs": i.backend_cpu,
            "backend_cores": i.backend_cpu.map(|c| c / i.secs),
        },
        "delivered": {
            "published_sends": published_run,
            "viewers_judged": up.judged_per_room.iter().map(|(_, n)| n).sum::<u64>(),
            "expected": expected,
            "received": up.judged_unique,
            "missing": expected.saturating_sub(up.judged_unique),
            "completeness": if expected == 0 { 1.0 } else { up.judged_unique as f64 / expected as f64 },
            "received_all_viewers": up.received,
            "duplicates": up.duplicates,
            "out_of_order": up.out_of_order,
            "without_ts": up.no_ts,
            "window_msgs_per_s": upstream_per_s,
            "latency_ms": ms_json(&histogram_of(&up.delivery_us)),
        },
        "downstream": {
            "delivered_msgs_per_s": all_per_s,
            "delivered_load_msgs_per_s": (all_per_s - upstream_per_s).max(0.0),
            "frames_per_s": delivery["frames_per_s"],
            "normal_completeness": normal["completeness"],
            "normal_latency_ms": normal["latency_ms"],
        },
    })
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

fn ms(v: &Value) -> String {
    if v.is_number() {
        format!("{:.2}", f(v))
    } else {
        "-".into()
    }
}

fn us(v: &Value) -> String {
    if v.is_number() {
        format!("{:.1} us", f(v))
    } else {
        "-".into()
    }
}

/// The table's upstream lines; none without senders.
pub fn lines(r: &Value) -> Vec<String> {
    let u = &r["upstream"];
    if !u.is_object() {
        return Vec::new();
    }
    let w = &u["window"];
    let l = &u["reply_ms"];
    let requests = match u["control_proxy_requests_window"].as_f64() {
        Some(r) if r > 0.0 => format!(
            "{r:.0} requests (mean batch {:.1})",
            f(&u["control_proxy_seconds"]["count"]) / r
        ),
        Some(r) => format!("{r:.0} requests"),
        None => "- requests".to_string(),
    };
    let other = match w["errors"].as_object() {
        Some(e) if f(&w["other"]) > 0.0 => {
            let codes: Vec<String> = e
                .iter()
                .filter(|(k, _)| !["rate_limited", "unavailable"].contains(&k.as_str()))
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            format!(" ({})", codes.join(", "))
        }
        _ => String::new(),
    };
    let mut lines = vec![
        format!(
            "upstream       {} senders x {}/s of `{}` (send mode {}{}): {} sends/s attempted, {} answered in the window",
            u["senders"],
            f(&u["per_sender_per_s"]),
            u["kind"].as_str().unwrap_or("?"),
            u["send_mode"].as_str().unwrap_or("?"),
            u["backend"].as_str().map(|b| format!(", {b}")).unwrap_or_default(),
            rate(f(&w["attempted_per_s"])),
            rate(f(&w["answered_per_s"])),
        ),
        format!(
            "send outcomes  window: {} published ({}/s), {} not broadcast ({}/s), {} rate_limited, {} unavailable, {} other{other}; {} unanswered at the end ({} on closed connections), {} unexpected replies, skipped {} (not joined) + {} (bench behind)",
            w["published"],
            rate(f(&w["published_per_s"])),
            w["not_broadcast"],
            rate(f(&w["not_broadcast_per_s"])),
            w["rate_limited"],
            w["unavailable"],
            w["other"],
            u["unanswered_open_at_end"].as_u64().unwrap_or(0) + u["unanswered_closed_at_end"].as_u64().unwrap_or(0),
            u["unanswered_closed_at_end"],
            u["unexpected_replies"],
            u["skipped_not_joined"],
            u["skipped_behind"],
        ),
        format!(
            "send replies   send written -> reply read p50 {} p90 {} p99 {} p99.9 {} max {} ms; edge worker -> answer mean {} ms (p99 <= {} ms){}",
            ms(&l["p50"]),
            ms(&l["p90"]),
            ms(&l["p99"]),
            ms(&l["p999"]),
            ms(&l["max"]),
            ms(&u["edge_send_seconds"]["mean_ms"]),
            ms(&u["edge_send_seconds"]["p99_le_ms"]),
            if f(&u["control_proxy_seconds"]["count"]) > 0.0 {
                format!(
                    "; control -> backend mean {} ms (p99 <= {} ms), {requests}",
                    ms(&u["control_proxy_seconds"]["mean_ms"]),
                    ms(&u["control_proxy_seconds"]["p99_le_ms"]),
                )
            } else {
                String::new()
            },
        ),
    ];
    let d = &u["delivered"];
    lines.push(format!(
        "sends received {} published sends reached {} judged viewers: {} of {} deliveries ({:.3}%, {} missing), {} duplicated, {} out of order; {}/s in the window; send -> viewer p50 {} p99 {} max {} ms",
        d["published_sends"],
        d["viewers_judged"],
        d["received"],
        d["expected"],
        100.0 * f(&d["completeness"]),
        d["missing"],
        d["duplicates"],
        d["out_of_order"],
        rate(f(&d["window_msgs_per_s"])),
        ms(&d["latency_ms"]["p50"]),
        ms(&d["latency_ms"]["p99"]),
        ms(&d["latency_ms"]["max"]),
    ));
    let c = &u["cpu"];
    lines.push(format!(
        "upstream CPU   per answered send: edges {}, control {}, backend {}, clients {} (all their CPU in the window, downstream included){}",
        us(&c["edge_us_per_send"]),
        us(&c["control_us_per_send"]),
        us(&c["backend_us_per_send"]),
        us(&c["clients_us_per_send"]),
        if c["backend_cores"].is_number() {
            format!("; backend {:.2} cores", f(&c["backend_cores"]))
        } else {
            String::new()
        },
    ));
    let counts = |v: &Value| -> String {
        let parts: Vec<String> = v
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    };
    lines.push(format!(
        "send counters  window: edges {}; control {}{}",
        counts(&u["edge_sends_window"]),
        counts(&u["control_sends_window"]),
        if u["backend_stats"].is_object() {
            format!("; backend since start {}", u["backend_stats"])
        } else {
            String::new()
        },
    ));
    if u["error_messages_run"]
        .as_object()
        .is_some_and(|m| !m.is_empty())
    {
        lines.push(format!(
            "send errors    whole run, by reply: {}",
            counts(&u["error_messages_run"])
        ));
    }
    let ds = &u["downstream"];
    lines.push(format!(
        "downstream     {} msg/s of the load delivered ({} with the published sends), {} frames/s; normal group {} complete, p50 {} p99 {} ms (compare with the same run without --senders)",
        rate(f(&ds["delivered_load_msgs_per_s"])),
        rate(f(&ds["delivered_msgs_per_s"])),
        rate(f(&ds["frames_per_s"])),
        if ds["normal_completeness"].is_number() {
            format!("{:.3}%", 100.0 * f(&ds["normal_completeness"]))
        } else {
            "-".into()
        },
        ms(&ds["normal_latency_ms"]["p50"]),
        ms(&ds["normal_latency_ms"]["p99"]),
    ));
    lines
}

/// The `summary:` line's upstream part; empty without senders.
pub fn summary(r: &Value) -> String {
    let u = &r["upstream"];
    if !u.is_object() {
        return String::new();
    }
    let w = &u["window"];
    let c = &u["cpu"];
    format!(
        "; upstream {} senders x {}/s ({}): {} sends/s attempted, {} answered ({} published/s, {} not broadcast/s, {} rate_limited/s, {} unavailable/s, {} other/s), reply p50 {} p99 {} max {} ms, {} per send edge / {} control / {} backend, sends received {:.3}%",
        u["senders"],
        f(&u["per_sender_per_s"]),
        u["send_mode"].as_str().unwrap_or("?"),
        rate(f(&w["attempted_per_s"])),
        rate(f(&w["answered_per_s"])),
        rate(f(&w["published_per_s"])),
        rate(f(&w["not_broadcast_per_s"])),
        rate(f(&w["rate_limited_per_s"])),
        rate(f(&w["unavailable_per_s"])),
        rate(f(&w["other_per_s"])),
        ms(&u["reply_ms"]["p50"]),
        ms(&u["reply_ms"]["p99"]),
        ms(&u["reply_ms"]["max"]),
        us(&c["edge_us_per_send"]),
        us(&c["control_us_per_send"]),
        us(&c["backend_us_per_send"]),
        100.0 * f(&u["delivered"]["completeness"]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE_A: &str = "roomcast_sends_total{result=\"published\"} 10\n\
        roomcast_sends_total{result=\"not_broadcast\"} 5\n\
        roomcast_send_seconds_bucket{le=\"0.001\"} 10\n\
        roomcast_send_seconds_bucket{le=\"0.01\"} 14\n\
        roomcast_send_seconds_bucket{le=\"+Inf\"} 15\n\
        roomcast_send_seconds_sum 0.05\n\
        roomcast_send_seconds_count 15\n";
    const PAGE_B: &str = "roomcast_sends_total{result=\"published\"} 30\n\
        roomcast_sends_total{result=\"not_broadcast\"} 1005\n\
        roomcast_sends_total{result=\"rate_limited\"} 0\n\
        roomcast_send_seconds_bucket{le=\"0.001\"} 510\n\
        roomcast_send_seconds_bucket{le=\"0.01\"} 1034\n\
        roomcast_send_seconds_bucket{le=\"+Inf\"} 1035\n\
        roomcast_send_seconds_sum 2.05\n\
        roomcast_send_seconds_count 1035\n";

    #[test]
    fn metric_deltas_over_the_window() {
        let (a, b) = (Metrics::parse(PAGE_A), Metrics::parse(PAGE_B));
        let sends = counter_delta(Some(&a), &b, "roomcast_sends_total", "result");
        assert_eq!(
            sends,
            BTreeMap::from([("not_broadcast".into(), 1000), ("published".into(), 20)]),
            "zeros left out"
        );
        let h = HistDelta::between(Some(&a), &b, "roomcast_send_seconds").unwrap();
        assert_eq!(h.count, 1020.0);
        assert!((h.sum - 2.0).abs() < 1e-9);
        assert_eq!(
            h.buckets,
            [(0.001, 500.0), (0.01, 1020.0), (f64::INFINITY, 1020.0)]
        );
        let j = h.json();
        assert_eq!(
            j["p50_le_ms"], 10.0,
            "510 of 1020 is past the first bucket's 500"
        );
        assert_eq!(j["p99_le_ms"], 10.0);
        assert!((f(&j["mean_ms"]) - 2000.0 / 1020.0).abs() < 1e-9);
        // Two edges add up; no family, no histogram.
        let mut total = h.clone();
        total.add(&h);
        assert_eq!(total.count, 2040.0);
        assert_eq!(total.buckets[0].1, 1000.0);
        assert_eq!(HistDelta::between(None, &a, "roomcast_nothing"), None);
        assert_eq!(HistDelta::default().json()["p99_le_ms"], Value::Null);
    }

    #[test]
    fn the_section_adds_up_and_prints() {
        let mut report = UpstreamReport {
            senders: 4,
            published_per_room: vec![(0, 6)],
            judged_per_room: vec![(0, 10)],
            judged_unique: 59,
            window_received: 50,
            reply_us: vec![(900, 3), (2_000, 1)],
            ..UpstreamReport::default()
        };
        report.window = SendCounts {
            attempted: 40,
            answered: 39,
            published: 5,
            not_broadcast: 30,
            errors: BTreeMap::from([("rate_limited".into(), 2), ("rejected".into(), 2)]),
            ..SendCounts::default()
        };
        report.run = report.window.clone();
        let args = RunArgs::load(["--senders", "4"].map(std::ffi::OsString::from)).unwrap();
        let delivery = json!({"msgs_per_s": 150.0, "frames_per_s": 20.0,
            "groups": [{"group": "normal", "completeness": 1.0, "latency_ms": {"p50": 1.0, "p99": 2.0}}]});
        let u = json(&Inputs {
            args: &args,
            report: &report,
            secs: 10.0,
            edge_cpu: Some(0.39),
            control_cpu: None,
            backend_cpu: None,
            clients_cpu: 0.0,
            probes: None,
            backend_stats: Value::Null,
            delivery: &delivery,
        });
        assert_eq!(u["window"]["other"], 2, "rejected");
        assert_eq!(u["window"]["rate_limited"], 2);
        assert_eq!(u["unanswered_window"], 1);
        assert_eq!(u["every_send_answered_once"], false);
        assert_eq!(u["delivered"]["expected"], 60);
        assert_eq!(u["delivered"]["missing"], 1);
        assert!((f(&u["cpu"]["edge_us_per_send"]) - 10_000.0).abs() < 1e-6);
        assert_eq!(u["cpu"]["control_us_per_send"], Value::Null);
        assert_eq!(u["downstream"]["delivered_load_msgs_per_s"], 145.0);
        let r = json!({"upstream": u});
        let lines = lines(&r);
        assert!(
            lines[0].starts_with("upstream       4 senders x 1/s of `chat`"),
            "{}",
            lines[0]
        );
        assert!(lines[1].contains("2 other (rejected 2)"), "{}", lines[1]);
        assert!(lines[3].contains("59 of 60 deliveries"), "{}", lines[3]);
        assert!(
            summary(&r).contains("4 sends/s attempted, 4 answered"),
            "{}",
            summary(&r)
        );
        assert!(summary(&json!({})).is_empty());
    }
}
