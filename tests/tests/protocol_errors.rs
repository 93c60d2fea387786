//! Protocol violations (PROTOCOL.md §1, §4 close codes): the offending connection is answered
//! and closed with the right code, and a healthy member of a room on the same edge keeps
//! receiving before and after.

use std::time::Duration;

use roomcast_tests::client::json_op;
use roomcast_tests::raw::{frame, masked_frame, opcode, upgrade_request, RawConn, FIN, RSV1};
use roomcast_tests::{for_each_driver, Client, ClientOp, Edge, HealthyMember, WireFormat, WAIT};

const PROTOCOL_ERROR: u16 = 1002;
const INVALID_UTF8: u16 = 1007;
const TOO_BIG: u16 = 1009;
const UNAUTHENTICATED: u16 = 4001;

/// The mask hand-built frames use.
const MASK: Option<[u8; 4]> = Some([0xa1, 0x5e, 0x03, 0x77]);

/// A JSON ping op, as text.
fn ping_json(seq: u64) -> String {
    json_op(&ClientOp::Ping { seq })
}

/// Starts an edge with `args`, runs `misbehave` against it between two checks that a healthy
/// room member is served.
async fn with_healthy_member<F>(io: &'static str, args: &[&str], misbehave: F)
where
    F: AsyncFnOnce(&mut Edge),
{
    let mut edge = Edge::start(io, args).await;
    let mut healthy = HealthyMember::join(&edge, "watch").await;
    healthy.assert_still_served(&mut edge).await;
    misbehave(&mut edge).await;
    healthy.assert_still_served(&mut edge).await;
    edge.assert_running();
}

/// Sends `bytes` on a fresh authenticated raw WebSocket connection and asserts the close code
/// and the end of the connection.
async fn assert_ws_closes_with(edge: &Edge, bytes: &[u8], code: u16, what: &str) {
    let mut bad = RawConn::upgraded_and_authed(edge.ws_addr, "bad").await;
    bad.send(bytes).await;
    let (got, reason) = bad.read_close(WAIT).await;
    assert_eq!(got, code, "{what}: close code (reason {reason:?})");
    bad.expect_end(WAIT).await;
}

#[test]
fn an_unmasked_client_frame_closes_with_1002() {
    for_each_driver(|io| async move {
        with_healthy_member(io, &[], async |edge: &mut Edge| {
            let unmasked = frame(FIN | opcode::TEXT, ping_json(2).as_bytes(), None);
            assert_ws_closes_with(edge, &unmasked, PROTOCOL_ERROR, "unmasked text frame").await;
        })
        .await;
    });
}

#[test]
fn reserved_bits_unknown_opcodes_and_stray_continuations_close_with_1002() {
    for_each_driver(|io| async move {
        with_healthy_member(io, &[], async |edge: &mut Edge| {
            let ping = ping_json(2);
            let rsv1 = frame(FIN | RSV1 | opcode::TEXT, ping.as_bytes(), MASK);
            assert_ws_closes_with(edge, &rsv1, PROTOCOL_ERROR, "RSV1 set").await;
            let unknown = frame(FIN | 0x3, ping.as_bytes(), MASK);
            assert_ws_closes_with(edge, &unknown, PROTOCOL_ERROR, "opcode 0x3").await;
            let stray = frame(FIN | opcode::CONTINUATION, ping.as_bytes(), MASK);
            assert_ws_closes_with(edge, &stray, PROTOCOL_ERROR, "continuation without start").await;
        })
        .await;
    });
}

#[test]
fn a_message_over_max_message_bytes_closes_with_1009() {
    for_each_driver(|io| async move {
        with_healthy_member(
            io,
            &["--max-message-bytes", "1024"],
            async |edge: &mut Edge| {
                // Exactly at the limit is fine: a ping padded with JSON whitespace to 1024 bytes.
                let mut at_limit = RawConn::upgraded_and_authed(edge.ws_addr, "fits").await;
                let padded = format!("{:<1024}", ping_json(2));
                assert_eq!(padded.len(), 1024);
                at_limit
                    .send(&masked_frame(opcode::TEXT, padded.as_bytes()))
                    .await;
                let reply = at_limit.read_json(WAIT).await;
                assert_eq!(
                    reply,
                    serde_json::json!({ "op": "reply", "seq": 2, "ok": true })
                );

                let one_frame =
                    masked_frame(opcode::TEXT, format!("{:<2000}", ping_json(2)).as_bytes());
                assert_ws_closes_with(edge, &one_frame, TOO_BIG, "one 2000-byte frame").await;

                // Two fragments that are each small but together too big.
                let text = format!("{:<1200}", ping_json(2));
                let mut fragments = frame(opcode::TEXT, &text.as_bytes()[..600], MASK);
                fragments.extend(frame(
                    FIN | opcode::CONTINUATION,
                    &text.as_bytes()[600..],
                    MASK,
                ));
                assert_ws_closes_with(edge, &fragments, TOO_BIG, "two 600-byte fragments").await;
            },
        )
        .await;
    });
}

#[test]
fn a_fragmented_or_oversized_control_frame_closes_with_1002() {
    for_each_driver(|io| async move {
        with_healthy_member(io, &[], async |edge: &mut Edge| {
            let fragmented_ping = frame(opcode::PING, b"hb", MASK);
            assert_ws_closes_with(edge, &fragmented_ping, PROTOCOL_ERROR, "ping without FIN").await;
            let long_ping = masked_frame(opcode::PING, &[b'x'; 126]);
            assert_ws_closes_with(edge, &long_ping, PROTOCOL_ERROR, "126-byte ping").await;
        })
        .await;
    });
}

#[test]
fn invalid_utf8_in_a_text_message_closes_with_1007() {
    for_each_driver(|io| async move {
        with_healthy_member(io, &[], async |edge: &mut Edge| {
            let invalid = masked_frame(
                opcode::TEXT,
                b"{\"op\":\"ping\",\"seq\":1,\"x\":\"\xff\xfe\"}",
            );
            assert_ws_closes_with(edge, &invalid, INVALID_UTF8, "0xff in a text frame").await;
            // A two-byte sequence whose second byte is not a continuation byte, split across
            // fragments.
            let mut split = frame(opcode::TEXT, b"\"\xc3", MASK);
            split.extend(frame(FIN | opcode::CONTINUATION, b"(\"", MASK));
            assert_ws_closes_with(edge, &split, INVALID_UTF8, "bad sequence over fragments").await;
        })
        .await;
    });
}

#[test]
fn garbage_instead_of_an_http_request_gets_400_and_is_closed() {
    for_each_driver(|io| async move {
        with_healthy_member(io, &[], async |edge: &mut Edge| {
            let mut bad = RawConn::connect(edge.ws_addr).await;
            bad.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 garbage\r\n\r\n")
                .await;
            let response = bad.read_http_response(WAIT).await;
            assert_eq!(response.status, 400, "{}", response.head);
            bad.expect_end(WAIT).await;
        })
        .await;
    });
}

#[test]
fn a_wrong_path_gets_404_and_is_closed_but_a_query_string_is_ignored() {
    for_each_driver(|io| async move {
        with_healthy_member(io, &[], async |edge: &mut Edge| {
            let mut bad = RawConn::connect(edge.ws_addr).await;
            bad.send(upgrade_request("/not-ws").as_bytes()).await;
            let response = bad.read_http_response(WAIT).await;
            assert_eq!(response.status, 404, "{}", response.head);
            bad.expect_end(WAIT).await;

            let mut with_query = RawConn::connect(edge.ws_addr).await;
            with_query
                .send(upgrade_request("/ws?device=app&v=2").as_bytes())
                .await;
            let response = with_query.read_http_response(WAIT).await;
            assert_eq!(response.status, 101, "{}", response.head);
        })
        .await;
    });
}

#[test]
fn a_truncated_handshake_or_a_missing_auth_is_closed_by_the_auth_timeout() {
    for_each_driver(|io| async move {
        with_healthy_member(
            io,
            &["--auth-timeout-ms", "500"],
            async |edge: &mut Edge| {
                let mut truncated = RawConn::connect(edge.ws_addr).await;
                let mut no_auth = RawConn::upgraded(edge.ws_addr).await;
                truncated
                    .send(b"GET /ws HTTP/1.1\r\nHost: roomcast.test\r\nUpgr")
                    .await;

                let took = truncated.expect_end(Duration::from_secs(5)).await;
                assert!(
                    took >= Duration::from_millis(250),
                    "closed after only {took:?}"
                );

                let (code, reason) = no_auth.read_close(Duration::from_secs(5)).await;
                assert_eq!(
                    code, UNAUTHENTICATED,
                    "upgraded but never authenticated ({reason:?})"
                );
                no_auth.expect_end(WAIT).await;
            },
        )
        .await;
    });
}

#[test]
fn a_raw_tcp_length_over_max_message_bytes_closes_with_1009() {
    for_each_driver(|io| async move {
        with_healthy_member(
            io,
            &["--max-message-bytes", "1024"],
            async |edge: &mut Edge| {
                for length in [u32::MAX >> 1, 1025] {
                    let mut bad = Client::connect_authed(edge, WireFormat::Tcp, "bad").await;
                    bad.send_raw_tcp(&length.to_be_bytes()).await;
                    let (code, reason) = bad.expect_close(WAIT).await;
                    assert_eq!(code, TOO_BIG, "length prefix {length} ({reason:?})");
                    bad.expect_end(WAIT).await;
                }
            },
        )
        .await;
    });
}
