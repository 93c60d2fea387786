//! Metrics (issue 5): the edge's admin endpoint (`/metrics`, `/healthz`, `/readyz` on
//! `--admin-listen`, advertised in the register frame) and the control plane's `/metrics` on its
//! API port. Key series move with real traffic, `promtool check metrics` accepts both pages when
//! promtool is installed, and every series the Grafana dashboard queries exists.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use roomcast_tests::control::build_binaries;
use roomcast_tests::http::{self, poll, Request};
use roomcast_tests::metrics::{promtool_check, scrape, Scrape};
use roomcast_tests::process::free_local_addrs;
use roomcast_tests::tokens::token;
use roomcast_tests::{for_each_driver, Client, Control, Edge, Target, WireFormat, WAIT};
use serde_json::{json, Value};

/// Scrapes `addr` until `check` accepts the page; returns it.
async fn scrape_until(
    addr: SocketAddr,
    what: &str,
    check: impl Fn(&Scrape) -> Result<(), String>,
) -> Scrape {
    let check = &check;
    poll(what, WAIT, || async move {
        let page = scrape(addr).await;
        check(&page).map(|()| page)
    })
    .await
}

fn at_least(page: &Scrape, name: &str, min: f64) -> Result<(), String> {
    match page.sum(name) {
        Some(v) if v >= min => Ok(()),
        other => Err(format!("{name} = {other:?}, want ≥ {min}")),
    }
}

async fn get_status(addr: SocketAddr, path: &str) -> u16 {
    http::send(addr, &Request::new("GET", path), WAIT)
        .await
        .unwrap_or_else(|why| panic!("GET {path}: {why}"))
        .status
}

#[test]
fn the_edge_serves_metrics_health_and_readiness() {
    for_each_driver(|io| async move {
        let mut edge = Edge::start(
            io,
            &[
                "--admin-listen",
                "127.0.0.1:0",
                "--report-interval-ms",
                "200",
            ],
        )
        .await;
        let admin: SocketAddr =
            edge.register.admin_addr.parse().unwrap_or_else(|e| {
                panic!("register.admin_addr {:?}: {e}", edge.register.admin_addr)
            });
        assert_ne!(admin.port(), 0);
        assert_eq!(get_status(admin, "/healthz").await, 200);
        // Ready once the workers run and the link is up (the fake control plane accepted it).
        poll("/readyz 200", WAIT, || async move {
            match get_status(admin, "/readyz").await {
                200 => Ok(()),
                s => Err(format!("status {s}")),
            }
        })
        .await;
        assert_eq!(get_status(admin, "/nope").await, 404);

        let mut viewers = vec![
            Client::connect_authed(&edge, WireFormat::WsJson, "v1").await,
            Client::connect_authed(&edge, WireFormat::Tcp, "v2").await,
        ];
        for viewer in &mut viewers {
            viewer.join("r1").await.unwrap();
        }
        let mut intruder = Client::connect(&edge, WireFormat::WsJson).await;
        assert!(intruder.auth("not-a-token").await.is_err());
        let sent = edge
            .link
            .publish_room("r1", 2, "gift", r#"{"gift":"rocket"}"#)
            .await;
        for viewer in &mut viewers {
            let got = viewer
                .recv_messages(&Target::Room("r1".into()), 1, WAIT)
                .await;
            assert_eq!(got, vec![sent.clone()]);
        }

        let page = scrape_until(admin, "edge counters moving", |p| {
            at_least(p, "roomcast_connections_accepted_total", 3.0)?;
            at_least(p, "roomcast_frames_queued_total", 2.0)?;
            at_least(p, "roomcast_written_bytes_total", 1.0)?;
            at_least(p, "roomcast_write_calls_total", 2.0)?;
            at_least(p, "roomcast_write_iovecs_count", 2.0)?;
            at_least(p, "roomcast_batches_total", 1.0)?;
            at_least(p, "roomcast_batch_messages_count", 1.0)?;
            at_least(p, "roomcast_window_seconds_count", 1.0)?;
            at_least(p, "roomcast_publish_to_flush_seconds_count", 1.0)?;
            at_least(p, "roomcast_room_members", 2.0)?;
            at_least(p, "roomcast_rooms", 1.0)?;
            match p.get(r#"roomcast_messages_in_total{priority="2"}"#) {
                Some(v) if v >= 1.0 => {}
                other => return Err(format!("messages_in p2 = {other:?}")),
            }
            match p.get(r#"roomcast_auth_failures_total{reason="invalid_token"}"#) {
                Some(v) if v >= 1.0 => {}
                other => return Err(format!("auth failures = {other:?}")),
            }
            Ok(())
        })
        .await;
        assert_eq!(
            page.get(&format!(r#"roomcast_driver_info{{driver="{io}"}}"#)),
            Some(1.0),
            "{}",
            page.text
        );
        assert_eq!(page.total("roomcast_workers"), 2.0);
        assert_eq!(page.total("roomcast_link_up"), 1.0);
        for resource in ["connections", "fds", "egress", "memory", "cpu"] {
            let ratio = page
                .get(&format!(
                    r#"roomcast_capacity_ratio{{resource="{resource}"}}"#
                ))
                .unwrap_or_else(|| panic!("no capacity ratio for {resource}"));
            assert!((0.0..1.0).contains(&ratio), "{resource}: {ratio}");
        }
        assert!(page.total("roomcast_capacity_ratio_max") > 0.0);
        assert!(page.total("roomcast_driver_submissions_total") > 0.0);
        // Per-core series carry only low-cardinality labels: never a room or user id.
        assert!(!page.text.contains("r1") && !page.text.contains("\"v1\""));
        promtool_check(&format!("the {io} edge's /metrics"), &page.text);
        edge.assert_running();
    });
}

#[test]
fn control_metrics_move_and_the_dashboard_queries_existing_series() {
    build_binaries();
    for_each_driver(|io| async move {
        let [edge_admin] = free_local_addrs(1)[..] else {
            unreachable!()
        };
        let admin_arg = edge_admin.to_string();
        let control = Control::start_embedded(
            io,
            &[
                "--edge-admin-listen",
                &admin_arg,
                "--edge-report-timeout-ms",
                "3000",
            ],
        )
        .await;
        control.wait_ready().await;
        let embedded = control.embedded_edge.as_ref().expect("embedded edge");
        let mut viewer = Client::connect(embedded, WireFormat::WsJson).await;
        assert_eq!(viewer.auth(&token("v1")).await, Ok(()));
        viewer.join("r1").await.unwrap();
        let api = &control.api;
        poll("r1 online at control", WAIT, || async move {
            let room = api.room("r1").await;
            if room["online"] == json!(1) {
                Ok(())
            } else {
                Err(room.to_string())
            }
        })
        .await;
        let published = api
            .publish(&Target::Room("r1".into()), 1, "chat", json!({"t": "hi"}))
            .await;
        assert_eq!(published.delivered_edges, 1);
        let got = viewer
            .recv_messages(&Target::Room("r1".into()), 1, WAIT)
            .await;
        assert_eq!(got.len(), 1);
        assert_eq!(api.dispatch("ws").await.status, 200);
        // A refused publish shows up by status too.
        let bad = api
            .post("/v1/rooms/r1/messages", &json!({"priority": 9}))
            .await;
        assert_eq!(bad.status, 400);

        let page = scrape_until(control.api_addr(), "control counters moving", |p| {
            at_least(p, "roomcast_control_edges_up", 1.0)?;
            at_least(p, "roomcast_control_fanout_messages_total", 1.0)?;
            at_least(p, "roomcast_control_published_messages_total", 1.0)?;
            let ok = p.get(
                r#"roomcast_control_publishes_total{endpoint="/v1/rooms/{room}/messages",status="200"}"#,
            );
            let bad = p.get(
                r#"roomcast_control_publishes_total{endpoint="/v1/rooms/{room}/messages",status="400"}"#,
            );
            let dispatched =
                p.get(r#"roomcast_control_dispatch_answers_total{transport="ws",result="ok"}"#);
            match (ok, bad, dispatched) {
                (Some(a), Some(b), Some(d)) if a >= 1.0 && b >= 1.0 && d >= 1.0 => Ok(()),
                other => Err(format!("publishes ok/400, dispatch ok = {other:?}")),
            }
        })
        .await;
        promtool_check("the control plane's /metrics", &page.text);

        let edge_page = scrape_until(edge_admin, "embedded edge delivered", |p| {
            at_least(p, "roomcast_frames_queued_total", 1.0)
        })
        .await;
        promtool_check("the embedded edge's /metrics", &edge_page.text);

        // Every series the dashboard queries is exposed by one of the two.
        let exposed: BTreeSet<String> = page.names().union(&edge_page.names()).cloned().collect();
        let queried = dashboard_metric_names();
        assert!(queried.len() > 20, "{queried:?}");
        let missing: Vec<&String> = queried.difference(&exposed).collect();
        assert!(
            missing.is_empty(),
            "dashboards/roomcast.json queries series nobody exposes: {missing:?}"
        );
    });
}

/// Every `roomcast_*` metric name in the expressions of dashboards/roomcast.json, after checking
/// the file is an importable dashboard: JSON, a `${DS_PROMETHEUS}` datasource input, panels with
/// targets, the capacity watermark row first.
fn dashboard_metric_names() -> BTreeSet<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../dashboards/roomcast.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let doc: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(doc["__inputs"][0]["name"], "DS_PROMETHEUS");
    assert!(doc["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["type"] == "datasource"));
    let panels = doc["panels"].as_array().expect("panels");
    assert_eq!(panels[0]["type"], "row");
    assert_eq!(panels[0]["title"], "Capacity watermarks");
    let mut names = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for panel in panels {
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "duplicate id"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{}", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().expect("expr");
            let mut rest = expr;
            while let Some(at) = rest.find("roomcast_") {
                let tail = &rest[at..];
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                names.insert(tail[..end].to_owned());
                rest = &tail[end..];
            }
        }
    }
    names
}
