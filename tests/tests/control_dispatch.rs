//! The dispatcher and edge health (issue 3, "Router"): `GET /v1/dispatch` lists the healthy
//! edges' addresses, ready to dial, and stops listing an edge within 3 s of it dying (link
//! closed) or going silent (no load reports).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use roomcast_tests::control::{build_binaries, dispatch_addrs, healthy_edge_ids};
use roomcast_tests::http::{poll, Request};
use roomcast_tests::{for_each_driver, Api, Client, Control, Target, WireFormat, WAIT};
use serde_json::{json, Value};
use tokio::time::Instant;

/// The bound: a dead edge leaves dispatch within 3 s.
const DEAD_EDGE_BOUND: Duration = Duration::from_secs(3);

/// The dispatch addresses for `transport`, polled until they are exactly `want` (an empty `want`
/// means a `503 unavailable`); returns how long that took. Panics after `wait`.
async fn wait_dispatch(
    api: &Api,
    transport: &str,
    want: &[SocketAddr],
    wait: Duration,
) -> Duration {
    let start = Instant::now();
    let want: BTreeSet<SocketAddr> = want.iter().copied().collect();
    let want = &want;
    poll(
        &format!("dispatch?transport={transport} listing {want:?}"),
        wait,
        || async move {
            let response = api.dispatch(transport).await;
            let listed = match response.status {
                503 => {
                    response.error(503, "unavailable");
                    BTreeSet::new()
                }
                _ => dispatch_addrs(transport, &response),
            };
            if listed == *want {
                Ok(())
            } else {
                Err(format!("{response:?}"))
            }
        },
    )
    .await;
    start.elapsed()
}

#[test]
fn dispatch_lists_every_healthy_edge_for_each_transport_without_an_api_key() {
    build_binaries();
    for_each_driver(|io| async move {
        let control = Control::start(&[]).await;
        let public = control.api.without_key();

        // No edge yet: nothing to dispatch to, and not ready.
        public.dispatch("ws").await.error(503, "unavailable");
        let readyz = public.get("/readyz").await;
        assert_ne!(readyz.status, 200, "ready without any edge: {readyz:?}");

        let a = control.start_edge(io, "edge-a", &[]).await;
        let b = control.start_edge(io, "edge-b", &[]).await;
        control.wait_ready().await;

        let ws = dispatch_addrs("ws", &public.dispatch("ws").await);
        assert_eq!(ws, [a.ws_addr, b.ws_addr].into());
        let tcp = dispatch_addrs("tcp", &public.dispatch("tcp").await);
        assert_eq!(tcp, [a.tcp_addr, b.tcp_addr].into());

        let response = public.dispatch("udp").await;
        response.error(400, "bad_request");

        // The dispatched addresses are dialable: a viewer connects through each.
        for addr in ws {
            let ws = roomcast_tests::WsClient::connect(addr)
                .await
                .unwrap_or_else(|e| panic!("dial dispatched {addr}: {e}"));
            let mut client = Client::over_ws(WireFormat::WsJson, ws);
            client.authenticate("dialer").await;
        }

        let edges = control.api.edges().await;
        assert_eq!(
            healthy_edge_ids(&edges),
            ["edge-a".to_owned(), "edge-b".to_owned()].into(),
            "{edges:?}"
        );
        for edge in &edges {
            assert_eq!(edge["workers"], 2, "{edge}");
            assert!(edge["capacity"].as_u64().is_some_and(|c| c > 0), "{edge}");
            assert!(edge["connections"].is_u64(), "{edge}");
        }
    });
}

#[test]
fn dispatch_stops_listing_a_killed_edge_within_3_s() {
    build_binaries();
    for_each_driver(|io| async move {
        let control = Control::start(&[]).await;
        let mut a = control.start_edge(io, "edge-a", &[]).await;
        let mut b = control.start_edge(io, "edge-b", &[]).await;
        let api = control.api.without_key();
        wait_dispatch(&api, "ws", &[a.ws_addr, b.ws_addr], WAIT).await;

        b.kill();
        let took = wait_dispatch(&api, "ws", &[a.ws_addr], DEAD_EDGE_BOUND).await;
        eprintln!("the killed edge left dispatch after {took:?}");
        wait_dispatch(&api, "tcp", &[a.tcp_addr], Duration::ZERO).await;
        let edges = control.api.edges().await;
        assert_eq!(
            healthy_edge_ids(&edges),
            ["edge-a".to_owned()].into(),
            "{edges:?}"
        );
        a.assert_running();

        // With the last edge gone there is nothing to dispatch to.
        a.kill();
        wait_dispatch(&api, "ws", &[], DEAD_EDGE_BOUND).await;
        wait_dispatch(&api, "tcp", &[], Duration::ZERO).await;
    });
}

#[test]
fn a_silent_edge_leaves_dispatch_after_its_report_timeout_and_returns_when_it_resumes() {
    build_binaries();
    for_each_driver(|io| async move {
        const REPORT_TIMEOUT_MS: u64 = 1500;
        let timeout_arg = REPORT_TIMEOUT_MS.to_string();
        let control = Control::start(&["--edge-report-timeout-ms", &timeout_arg]).await;
        let a = control.start_edge(io, "edge-a", &[]).await;
        let mut b = control.start_edge(io, "edge-b", &[]).await;
        let mut viewer = Client::connect_authed(&b, WireFormat::Tcp, "viewer").await;
        viewer.join("r1").await.unwrap();
        control.wait_room_members("r1", &[("edge-b", 1)]).await;
        let api = control.api.clone();

        // A stopped process keeps its link open but sends no reports.
        b.process.signal("STOP");
        // The last report came at most 1 s before the stop.
        let bound = Duration::from_millis(REPORT_TIMEOUT_MS + 1500);
        let took = wait_dispatch(&api, "ws", &[a.ws_addr], bound).await;
        eprintln!("the silent edge left dispatch after {took:?}");
        // Routing drops it too (its periodic sweep may lag the dispatch filter a little): a
        // room publish no longer counts it.
        let r1 = Target::Room("r1".into());
        let mut routed_before_drop = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(1);
        let dropped = loop {
            let probe = api.publish(&r1, 2, "gift", json!({"probe": true})).await;
            match probe.delivered_edges {
                0 => break probe,
                1 if Instant::now() < deadline => routed_before_drop.push(probe.seq),
                _ => panic!(
                    "routing still counted the silent edge 1 s after dispatch dropped it \
                     ({took:?} after it stopped): {probe:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if !routed_before_drop.is_empty() {
            eprintln!(
                "routing counted the silent edge for {} publishes after dispatch dropped it",
                routed_before_drop.len()
            );
        }

        b.process.signal("CONT");
        wait_dispatch(&api, "ws", &[a.ws_addr, b.ws_addr], WAIT).await;
        // Its viewer stayed connected and is routed to again.
        control.wait_room_members("r1", &[("edge-b", 1)]).await;
        viewer.ping().await.expect("the viewer is still connected");
        let back = api.publish(&r1, 2, "gift", json!({"back": true})).await;
        assert_eq!(back.delivered_edges, 1, "{back:?}");
        // Whatever was routed to the edge before the drop may still arrive; what was published
        // after it must not.
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let got = viewer.recv_messages(&r1, 1, left).await;
            let last = got.last().expect("one message at least");
            for m in &got {
                assert!(
                    m.seq == back.seq || routed_before_drop.contains(&m.seq),
                    "the viewer got seq {} (published while its edge was dropped: {})",
                    m.seq,
                    dropped.seq
                );
            }
            if last.seq == back.seq {
                assert!(back.matches(last), "got {last:?}, expected {back:?}");
                break;
            }
        }
    });
}

/// `GET /v1/edges` answers only with the API key, and reports each edge's load.
#[test]
fn edges_report_their_connections() {
    build_binaries();
    for_each_driver(|io| async move {
        let control = Control::start(&[]).await;
        let a = control.start_edge(io, "edge-a", &[]).await;
        let mut viewers = Vec::new();
        for i in 0..3 {
            viewers.push(Client::connect_authed(&a, WireFormat::WsJson, &format!("v{i}")).await);
        }
        let api = &control.api;
        poll("edge-a reporting 3 connections", WAIT, || async move {
            let response = api.send(Request::new("GET", "/v1/edges")).await;
            let edges: Vec<Value> = response.ok()["edges"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            match edges.first() {
                Some(edge) if edge["connections"] == 3 => Ok(()),
                _ => Err(format!("{response:?}")),
            }
        })
        .await;
        control
            .api
            .without_key()
            .get("/v1/edges")
            .await
            .error(401, "unauthorized");
    });
}
