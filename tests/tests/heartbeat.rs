//! Heartbeats (PROTOCOL.md §4 rule 4), end to end: the real edge closes a connection that stays
//! silent for longer than `heartbeat_timeout` with 4000, on every transport and both I/O drivers.
//!
//! Which client traffic counts as a heartbeat (an op, a WebSocket ping frame) and exactly when
//! the close comes are worker logic, tested deterministically with explicit time in the worker
//! core (`engine/src/worker/core_tests.rs`: `a_silent_connection_is_closed_4000_while_pings_keep_
//! another_open`, `websocket_ping_frames_count_as_heartbeats`).

use roomcast_tests::{for_each_driver, Client, Edge, WireFormat, WAIT};

const HEARTBEAT_TIMEOUT: u16 = 4000;

#[test]
fn a_silent_client_is_closed_with_4000_on_every_transport() {
    for_each_driver(|io| async move {
        let mut edge = Edge::start(io, &["--heartbeat-timeout-ms", "800"]).await;
        let mut silent = Vec::new();
        for format in WireFormat::ALL {
            let mut client = Client::connect_authed(&edge, format, "silent").await;
            client.join("r1").await.unwrap();
            silent.push(client);
        }
        for client in &mut silent {
            let (code, reason) = client.expect_close(WAIT).await;
            assert_eq!(code, HEARTBEAT_TIMEOUT, "{} ({reason:?})", client.label);
            client.expect_end(WAIT).await;
        }
        edge.assert_running();
    });
}
