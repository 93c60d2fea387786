//! The connection limit (PROTOCOL.md §1, close code 4029): over `max_connections` a WebSocket
//! gets HTTP 503 and a raw TCP connection a `4029 full` close frame; the edge stays up, serves
//! the connections it has, and accepts new ones once some close.

use std::time::{Duration, Instant};

use roomcast_tests::{
    for_each_driver, Client, Edge, Incoming, Target, TcpClient, WireFormat, WsClient, WAIT,
};
use tokio_tungstenite::tungstenite::Error as WsError;

const LIMIT: usize = 20;
const FULL: u16 = 4029;

#[test]
fn connections_over_the_limit_are_refused_until_some_close() {
    for_each_driver(|io| async move {
        let mut edge = Edge::start(io, &["--max-connections", "20"]).await;
        let mut clients = Vec::new();
        for i in 0..LIMIT {
            let format = if i % 2 == 0 {
                WireFormat::WsJson
            } else {
                WireFormat::Tcp
            };
            let mut client = Client::connect_authed(&edge, format, &format!("viewer-{i}")).await;
            client.join("r1").await.unwrap();
            clients.push(client);
        }

        assert_websocket_refused_as_full(&edge).await;
        assert_tcp_refused_as_full(&edge).await;
        edge.assert_running();

        // The connections it holds are still served.
        let sent = edge
            .link
            .publish_room("r1", 2, "gift", r#"{"gift":"rocket"}"#)
            .await;
        for client in &mut clients {
            let got = client
                .recv_messages(&Target::Room("r1".into()), 1, WAIT)
                .await;
            assert_eq!(got, vec![sent.clone()], "{}", client.label);
        }

        // Two leave (one of each transport); two new ones get in, and then it is full again.
        clients.pop().expect("a TCP client").close().await;
        clients.pop().expect("a WebSocket client").close().await;
        let ws = connect_websocket_when_room(&edge).await;
        let mut newcomer_ws = Client::over_ws(WireFormat::WsJson, ws);
        newcomer_ws.authenticate("newcomer-ws").await;
        let mut newcomer_tcp = authed_tcp_when_room(&edge).await;
        newcomer_ws.join("r1").await.unwrap();
        newcomer_tcp.join("r1").await.unwrap();
        assert_websocket_refused_as_full(&edge).await;
        assert_tcp_refused_as_full(&edge).await;

        let sent = edge
            .link
            .publish_room("r1", 3, "chat", r#""welcome""#)
            .await;
        for client in clients
            .iter_mut()
            .chain([&mut newcomer_ws, &mut newcomer_tcp])
        {
            let got = client
                .recv_messages(&Target::Room("r1".into()), 1, WAIT)
                .await;
            assert_eq!(got, vec![sent.clone()], "{}", client.label);
        }
        edge.assert_running();
    });
}

async fn assert_websocket_refused_as_full(edge: &Edge) {
    match WsClient::connect(edge.ws_addr).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 503, "{response:?}"),
        Err(other) => panic!("expected HTTP 503 when full, got {other}"),
        Ok(_) => panic!("a WebSocket over the connection limit was accepted"),
    }
}

async fn assert_tcp_refused_as_full(edge: &Edge) {
    let tcp = TcpClient::connect(edge.tcp_addr)
        .await
        .expect("TCP connect");
    let mut client = Client::over_tcp(tcp);
    let (code, reason) = client.expect_close(WAIT).await;
    assert_eq!(code, FULL, "close reason {reason:?}");
    client.expect_end(WAIT).await;
}

/// Retries a WebSocket connection until the edge has noticed that clients left.
async fn connect_websocket_when_room(edge: &Edge) -> WsClient {
    let deadline = Instant::now() + WAIT;
    loop {
        match WsClient::connect(edge.ws_addr).await {
            Ok(ws) => return ws,
            Err(WsError::Http(response))
                if response.status() == 503 && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no room for a WebSocket {WAIT:?} after two clients left: {e}"),
        }
    }
}

/// Retries a raw TCP connection until the edge has noticed that clients left, and
/// authenticates it.
async fn authed_tcp_when_room(edge: &Edge) -> Client {
    let deadline = Instant::now() + WAIT;
    loop {
        let tcp = TcpClient::connect(edge.tcp_addr)
            .await
            .expect("TCP connect");
        let mut client = Client::over_tcp(tcp);
        // A full edge answers at once; give it a moment before writing to a closed socket.
        match client.next_within(Duration::from_millis(200)).await {
            None => {
                client.authenticate("newcomer-tcp").await;
                return client;
            }
            Some(Incoming::Close { code: FULL, .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Some(other) => {
                panic!("no room for a TCP client {WAIT:?} after two clients left: {other:?}")
            }
        }
    }
}
