//! Heartbeats (PROTOCOL.md §4 rule 4): a connection silent for longer than
//! `heartbeat_timeout` is closed with 4000; any op or WebSocket ping keeps it open.

use std::time::{Duration, Instant};

use roomcast_tests::{for_each_driver, Client, Edge, PushMessage, Target, WireFormat, WAIT};

const HEARTBEAT_TIMEOUT: u16 = 4000;

#[test]
fn a_silent_client_is_closed_with_4000_while_pinging_clients_stay_and_keep_receiving() {
    for_each_driver(|io| async move {
        let mut edge = Edge::start(io, &["--heartbeat-timeout-ms", "800"]).await;
        let room = Target::Room("r1".into());

        let mut silent = Vec::new();
        for format in [WireFormat::WsJson, WireFormat::Tcp] {
            let mut client = Client::connect_authed(&edge, format, "silent").await;
            client.join("r1").await.unwrap();
            silent.push(client);
        }
        // Heartbeats by `ping` op on each transport, and by WebSocket ping frame.
        let mut by_op = Vec::new();
        for format in WireFormat::ALL {
            let mut client = Client::connect_authed(&edge, format, "pinger").await;
            client.join("r1").await.unwrap();
            by_op.push(client);
        }
        let mut by_ws_ping = Client::connect_authed(&edge, WireFormat::WsBinary, "ws-pinger").await;
        by_ws_ping.join("r1").await.unwrap();

        // 2.4 s, three heartbeat timeouts: ping every 200 ms, publish every 400 ms.
        let start = Instant::now();
        let mut sent: Vec<PushMessage> = Vec::new();
        for round in 0..12 {
            if round % 2 == 0 {
                let data = format!(r#"{{"round":{round}}}"#);
                sent.push(edge.link.publish_room("r1", 3, "chat", &data).await);
            }
            for client in &mut by_op {
                client.ping().await.unwrap();
            }
            by_ws_ping.send_ws_ping().await;
            tokio::time::sleep_until((start + Duration::from_millis(200 * (round + 1))).into())
                .await;
        }

        for client in by_op.iter_mut().chain([&mut by_ws_ping]) {
            let got = client.recv_messages(&room, sent.len(), WAIT).await;
            assert_eq!(got, sent, "{} (kept alive)", client.label);
            client.ping().await.unwrap();
        }
        for client in &mut silent {
            // It may have received some batches before the timeout; then comes the close.
            let (code, reason) = client.expect_close(WAIT).await;
            assert_eq!(code, HEARTBEAT_TIMEOUT, "{} ({reason:?})", client.label);
            client.expect_end(WAIT).await;
        }
    });
}
