//! The edge's admin endpoint (`--admin-listen`) under clients that misbehave: a request head
//! that never finishes, and one far over the size bound. Neither may hold up a scrape by anyone
//! else (the admin server once served one connection at a time with a 5 s read timeout, so one
//! stalled client stalled `/metrics` and `/readyz` for everyone).

use std::net::SocketAddr;
use std::time::Duration;

use roomcast_tests::metrics::scrape;
use roomcast_tests::{for_each_driver, Edge, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A scrape beside a misbehaving client must take well under the old 5 s (the admin server's
/// request-head timeout is 5 s too: waiting that long would mean it waited for the other client).
const PROMPT: Duration = Duration::from_secs(2);

async fn start_edge(io: &'static str) -> (Edge, SocketAddr) {
    let edge = Edge::start(io, &["--admin-listen", "127.0.0.1:0"]).await;
    let admin = edge
        .register
        .admin_addr
        .parse()
        .unwrap_or_else(|e| panic!("register.admin_addr {:?}: {e}", edge.register.admin_addr));
    (edge, admin)
}

/// Scrapes `/metrics` and asserts it answered 200 within [`PROMPT`].
async fn prompt_scrape(admin: SocketAddr, beside: &str) {
    let started = Instant::now();
    let page = scrape(admin).await;
    let took = started.elapsed();
    assert!(took < PROMPT, "a scrape beside {beside} took {took:?}");
    assert!(page.sum("roomcast_workers").is_some(), "{}", page.text);
}

/// Reads until the server closes the connection (EOF or reset); returns what it sent.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return received,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
        }
    }
}

#[test]
fn a_half_sent_request_does_not_hold_up_a_scrape() {
    for_each_driver(|io| async move {
        let (mut edge, admin) = start_edge(io).await;
        let mut stalled = TcpStream::connect(admin).await.expect("connect to admin");
        stalled
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("send half a request head");
        let held_since = Instant::now();
        for _ in 0..3 {
            prompt_scrape(admin, "a half-sent request").await;
        }
        // The stalled client is dropped once its head is overdue (5 s), with nothing sent.
        let answer = tokio::time::timeout(WAIT, read_until_closed(&mut stalled))
            .await
            .expect("the server closes a stalled request in time");
        assert!(answer.is_empty() || answer.starts_with(b"HTTP/1.1 408"));
        let held = held_since.elapsed();
        assert!(held >= Duration::from_secs(4), "closed after only {held:?}");
        edge.assert_running();
    });
}

#[test]
fn an_oversized_request_head_is_refused_without_hurting_a_scrape() {
    for_each_driver(|io| async move {
        let (mut edge, admin) = start_edge(io).await;
        let mut oversized = TcpStream::connect(admin).await.expect("connect to admin");
        let refusal = tokio::spawn(async move {
            // 64 KiB of headers, sent in pieces with pauses so a scrape runs while it arrives.
            let _ = oversized
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                .await;
            let header = format!("X-Filler: {}\r\n", "y".repeat(1000));
            for _ in 0..64 {
                if oversized.write_all(header.as_bytes()).await.is_err() {
                    break; // the server has stopped reading: refused
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let _ = oversized.write_all(b"\r\n").await;
            read_until_closed(&mut oversized).await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        prompt_scrape(admin, "an oversized request head").await;
        let answer = tokio::time::timeout(WAIT, refusal)
            .await
            .expect("the oversized request is refused in time")
            .expect("the oversized client task");
        let head = String::from_utf8_lossy(&answer[..answer.len().min(64)]).into_owned();
        assert!(
            answer.is_empty() || head.starts_with("HTTP/1.1 431 "),
            "an oversized request head got {head:?}"
        );
        assert!(!head.starts_with("HTTP/1.1 200"));
        prompt_scrape(admin, "a refused request").await;
        edge.assert_running();
    });
}
