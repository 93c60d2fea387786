//! Capacity watermarks (issue 5): an edge reports its highest capacity ratio in every load
//! report; above `--dispatch-watermark` the control plane stops handing it out and
//! `GET /v1/edges` says `"dispatchable": false`, and hands it out again once it is below.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use roomcast_tests::control::{build_binaries, dispatch_addrs};
use roomcast_tests::http::poll;
use roomcast_tests::{for_each_driver, Api, Client, Control, WireFormat, WAIT};
use serde_json::Value;

/// Polls until `GET /v1/edges` shows `edge` with `dispatchable == want` and `/v1/dispatch`
/// agrees (lists it, or answers 503 when it was the only one); returns the edge's entry.
async fn wait_dispatchable(api: &Api, edge: &str, ws: SocketAddr, want: bool) -> Value {
    poll(
        &format!("edge {edge} dispatchable = {want}"),
        WAIT,
        || async move {
            let edges = api.edges().await;
            let entry = edges
                .iter()
                .find(|e| e["edge_id"] == edge)
                .ok_or_else(|| format!("{edge} not listed: {edges:?}"))?
                .clone();
            if entry["dispatchable"] != Value::Bool(want) {
                return Err(format!("{entry}"));
            }
            let response = api.dispatch("ws").await;
            let listed: BTreeSet<SocketAddr> = match response.status {
                503 => {
                    response.error(503, "unavailable");
                    BTreeSet::new()
                }
                _ => dispatch_addrs("ws", &response),
            };
            if listed.contains(&ws) == want {
                Ok(entry)
            } else {
                Err(format!("dispatch: {response:?}; edges: {entry}"))
            }
        },
    )
    .await
}

#[test]
fn an_edge_above_the_watermark_is_not_dispatched() {
    build_binaries();
    for_each_driver(|io| async move {
        let control = Control::start(&["--dispatch-watermark", "0.5"]).await;
        let mut edge = control
            .start_edge(io, "edge-w", &["--max-connections", "4"])
            .await;
        let api = &control.api;
        let entry = wait_dispatchable(api, "edge-w", edge.ws_addr, true).await;
        assert!(entry["capacity_ratio"].as_f64().unwrap() < 0.5, "{entry}");

        // 3 of 4 connections: 0.75 > 0.5.
        let mut clients = Vec::new();
        for i in 0..3 {
            clients.push(Client::connect_authed(&edge, WireFormat::Tcp, &format!("v{i}")).await);
        }
        let entry = wait_dispatchable(api, "edge-w", edge.ws_addr, false).await;
        let ratio = entry["capacity_ratio"].as_f64().unwrap();
        assert!((0.74..=1.0).contains(&ratio), "{entry}");
        assert_eq!(entry["healthy"], Value::Bool(true), "{entry}");
        assert_eq!(entry["full"], Value::Bool(false), "{entry}");
        let response = api.dispatch("tcp").await;
        response.error(503, "unavailable");

        // Two leave: 1 of 4 is under the watermark, and the edge is offered again.
        clients.pop().unwrap().close().await;
        clients.pop().unwrap().close().await;
        let entry = wait_dispatchable(api, "edge-w", edge.ws_addr, true).await;
        assert!(entry["capacity_ratio"].as_f64().unwrap() <= 0.5, "{entry}");
        edge.assert_running();
    });
}
