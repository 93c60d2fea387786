//! Session ops (PROTOCOL.md §2–4): auth, join, leave, ping and their error replies, over
//! WebSocket JSON, WebSocket binary and raw TCP.

use std::collections::HashMap;
use std::time::Duration;

use roomcast_proto::client::{decode_server_binary, decode_server_json, ReplyDetails, ServerMsg};
use roomcast_tests::client::{binary_op, json_op};
use roomcast_tests::raw::{masked_frame, opcode, RawConn, ServerFrame};
use roomcast_tests::tokens::{
    alg_none_token, expired_token, token, token_for_rooms, token_signed_with_wrong_secret,
};
use roomcast_tests::{
    assert_error, for_each_driver, Client, ClientOp, Edge, Incoming, Target, WireFormat, WAIT,
};

/// How long a test watches for a reply that must not come.
const QUIET: Duration = Duration::from_millis(300);

/// Close code after a failed or missing auth.
const UNAUTHENTICATED: u16 = 4001;

#[test]
fn every_op_gets_exactly_one_reply_with_its_seq() {
    for_each_driver(|io| async move {
        let edge = Edge::start(io, &[]).await;
        for format in WireFormat::ALL {
            let mut client = Client::connect(&edge, format).await;
            // Pipelined: all ops go out before any reply is read. Unusual seqs (not 1, 2, 3, and
            // the largest JSON-safe one) show the edge echoes them rather than counting.
            let ops = [
                ClientOp::Auth {
                    seq: 7,
                    token: token("alice"),
                    since: None,
                },
                ClientOp::Join {
                    seq: 1 << 53,
                    room: "r1".into(),
                    since: None,
                },
                ClientOp::Join {
                    seq: 3,
                    room: "r2".into(),
                    since: None,
                },
                ClientOp::Join {
                    seq: 0,
                    room: "room:10000".into(),
                    since: None,
                },
                ClientOp::Leave {
                    seq: 42,
                    room: "r2".into(),
                },
                ClientOp::Ping { seq: 9_007 },
            ];
            for op in &ops {
                client.send(op).await;
            }
            let mut replies: HashMap<u64, usize> = HashMap::new();
            for _ in &ops {
                match client.next(WAIT).await {
                    Incoming::Reply { seq, result, .. } => {
                        assert_eq!(result, Ok(()), "{format:?}: op {seq} failed");
                        *replies.entry(seq).or_default() += 1;
                    }
                    other => panic!("{format:?}: expected a reply, got {other:?}"),
                }
            }
            let expected: HashMap<u64, usize> = ops.iter().map(|op| (op.seq(), 1)).collect();
            assert_eq!(
                replies, expected,
                "{format:?}: one reply per op, with the op's seq"
            );
            client.expect_silence(QUIET).await;
        }
    });
}

#[test]
fn replies_use_the_encoding_chosen_by_auth_whatever_frame_type_the_op_came_in() {
    for_each_driver(|io| async move {
        let edge = Edge::start(io, &[]).await;
        // The link peer acknowledges every channel at the start of its one epoch.
        let ok_reply = |seq: u64| ServerMsg::Reply {
            seq,
            result: Ok(()),
            details: ReplyDetails {
                epoch: Some("peer".into()),
                last_seq: Some(0),
                ..ReplyDetails::default()
            },
        };

        // Authenticated with a text frame: JSON text replies, also to an op in a binary frame.
        let mut json = RawConn::upgraded(edge.ws_addr).await;
        let auth = ClientOp::Auth {
            seq: 1,
            token: token("alice"),
            since: None,
        };
        json.send(&masked_frame(opcode::TEXT, json_op(&auth).as_bytes()))
            .await;
        assert_eq!(read_reply(&mut json, opcode::TEXT).await, ok_reply(1));
        let join = ClientOp::Join {
            seq: 2,
            room: "r1".into(),
            since: None,
        };
        json.send(&masked_frame(opcode::BINARY, &binary_op(&join)))
            .await;
        assert_eq!(read_reply(&mut json, opcode::TEXT).await, ok_reply(2));

        // Authenticated with a binary frame: binary replies, also to an op in a text frame.
        let mut binary = RawConn::upgraded(edge.ws_addr).await;
        binary
            .send(&masked_frame(opcode::BINARY, &binary_op(&auth)))
            .await;
        assert_eq!(read_reply(&mut binary, opcode::BINARY).await, ok_reply(1));
        binary
            .send(&masked_frame(opcode::TEXT, json_op(&join).as_bytes()))
            .await;
        assert_eq!(read_reply(&mut binary, opcode::BINARY).await, ok_reply(2));
    });
}

/// Reads one frame, checks its type, and decodes it with the codec for that type.
async fn read_reply(conn: &mut RawConn, expected_opcode: u8) -> ServerMsg {
    match conn.read_frame(WAIT).await {
        ServerFrame::Frame {
            opcode, payload, ..
        } => {
            assert_eq!(
                opcode, expected_opcode,
                "reply frame type; payload {payload:02x?}"
            );
            if opcode == opcode::TEXT {
                decode_server_json(&payload).expect("a JSON reply")
            } else {
                decode_server_binary(&payload).expect("a binary reply")
            }
        }
        other => panic!("expected a reply frame, got {other:?}"),
    }
}

#[test]
fn an_op_before_auth_is_refused_and_the_connection_closed_with_4001() {
    for_each_driver(|io| async move {
        let edge = Edge::start(io, &[]).await;
        for format in WireFormat::ALL {
            let mut client = Client::connect(&edge, format).await;
            assert_error(client.join("r1").await, "not_authenticated");
            let (code, _) = client.expect_close(WAIT).await;
            assert_eq!(code, UNAUTHENTICATED, "{format:?}");
            client.expect_end(WAIT).await;

            let mut client = Client::connect(&edge, format).await;
            assert_error(client.ping().await, "not_authenticated");
            assert_eq!(
                client.expect_close(WAIT).await.0,
                UNAUTHENTICATED,
                "{format:?}"
            );
        }
    });
}

/// Sends `token` as the first op on a new connection of every format and checks the error
/// reply and the 4001 close.
async fn assert_auth_refused(edge: &Edge, token: &str, code: &str) {
    for format in WireFormat::ALL {
        let mut client = Client::connect(edge, format).await;
        assert_error(client.auth(token).await, code);
        let (close, _) = client.expect_close(WAIT).await;
        assert_eq!(
            close, UNAUTHENTICATED,
            "{format:?}: close code after `{code}`"
        );
        client.expect_end(WAIT).await;
    }
}

#[test]
fn a_token_with_a_bad_signature_is_refused_as_invalid_token() {
    for_each_driver(|io| async move {
        let edge = Edge::start(io, &[]).await;
        assert_auth_refused(
            &edge,
            &token_signed_with_wrong_secret("alice"),
            "invalid_token",
        )
        .await;
        assert_auth_refused(&edge, "not.a.jwt", "invalid_token").await;
    });
}

#[test]
fn an_expired_token_is_refused_as_token_expired() {
    for_each_driver(|io| async move {
        let edge = Edge::start(io, &[]).await;
        assert_auth_refused(&edge, &expired_token("alice"), "token_expired").await;
    });
}

#[test]
fn an_unsigned_alg_none_token_is_refused() {
    for_each_driver(|io| async move {
        let edge = Edge::start(io, &[]).await;
        assert_auth_refused(&edge, &alg_none_token("alice"), "invalid_token").await;
    });
}

#[test]
fn the_rooms_claim_forbids_other_rooms_and_the_connection_stays_open() {
    for_each_driver(|io| async move {
        let mut edge = Edge::start(io, &[]).await;
        for format in WireFormat::ALL {
            let mut client = Client::connect(&edge, format).await;
            client
                .auth(&token_for_rooms("alice", &["r-allowed", "r-too"]))
                .await
                .unwrap();
            client.join("r-allowed").await.unwrap();
            assert_error(client.join("r-other").await, "room_forbidden");
            client.join("r-too").await.unwrap();
            client.ping().await.unwrap();

            // The refused join left no membership behind.
            edge.link
                .publish_room("r-other", 3, "chat", r#""not for you""#)
                .await;
            let sent = edge
                .link
                .publish_room("r-allowed", 3, "chat", r#""hi""#)
                .await;
            let got = client
                .recv_messages(&Target::Room("r-allowed".into()), 1, WAIT)
                .await;
            assert_eq!(got, vec![sent], "{format:?}");
            client.expect_silence(QUIET).await;
        }
    });
}

#[test]
fn an_invalid_room_id_is_refused_and_the_connection_stays_open() {
    for_each_driver(|io| async move {
        let edge = Edge::start(io, &[]).await;
        let too_long = "a".repeat(129);
        for format in WireFormat::ALL {
            let mut client = Client::connect_authed(&edge, format, "alice").await;
            for bad in ["r 1", "r/1", "rü", "*", too_long.as_str()] {
                assert_error(client.join(bad).await, "invalid_id");
            }
            client.join(&"a".repeat(128)).await.unwrap();
            client.join("A-z_0.9:x").await.unwrap();
            client.ping().await.unwrap();
        }
    });
}

#[test]
fn joins_beyond_max_rooms_per_conn_are_refused_as_too_many_rooms() {
    for_each_driver(|io| async move {
        let edge = Edge::start(io, &["--max-rooms-per-conn", "3"]).await;
        for format in WireFormat::ALL {
            let mut client = Client::connect_authed(&edge, format, "alice").await;
            for room in ["r1", "r2", "r3"] {
                client.join(room).await.unwrap();
            }
            assert_error(client.join("r4").await, "too_many_rooms");
            // Leaving frees a place.
            client.leave("r2").await.unwrap();
            client.join("r4").await.unwrap();
            assert_error(client.join("r5").await, "too_many_rooms");
            client.ping().await.unwrap();
        }
    });
}

#[test]
fn leaving_a_room_not_joined_is_refused_as_not_joined() {
    for_each_driver(|io| async move {
        let edge = Edge::start(io, &[]).await;
        for format in WireFormat::ALL {
            let mut client = Client::connect_authed(&edge, format, "alice").await;
            assert_error(client.leave("r1").await, "not_joined");
            client.join("r1").await.unwrap();
            client.leave("r1").await.unwrap();
            assert_error(client.leave("r1").await, "not_joined");
            client.ping().await.unwrap();
        }
    });
}

#[test]
fn a_second_auth_is_refused_as_already_authenticated() {
    for_each_driver(|io| async move {
        let edge = Edge::start(io, &[]).await;
        for format in WireFormat::ALL {
            let mut client = Client::connect_authed(&edge, format, "alice").await;
            assert_error(client.auth(&token("alice")).await, "already_authenticated");
            assert_error(
                client.auth(&token("mallory")).await,
                "already_authenticated",
            );
            client.join("r1").await.unwrap();
            client.ping().await.unwrap();
        }
    });
}

#[test]
fn malformed_and_unknown_json_ops_get_error_replies() {
    for_each_driver(|io| async move {
        let edge = Edge::start(io, &[]).await;
        let mut raw = RawConn::upgraded_and_authed(edge.ws_addr, "alice").await;
        let cases: [(&str, serde_json::Value); 4] = [
            (
                r#"{"op":"dance","seq":5}"#,
                serde_json::json!({ "seq": 5, "code": "unknown_op" }),
            ),
            (
                "not json at all",
                serde_json::json!({ "seq": 0, "code": "bad_request" }),
            ),
            (
                r#"{"op":"join","seq":6}"#,
                serde_json::json!({ "seq": 6, "code": "bad_request" }),
            ),
            (
                r#"[1,2,3]"#,
                serde_json::json!({ "seq": 0, "code": "bad_request" }),
            ),
        ];
        for (text, expected) in cases {
            raw.send(&masked_frame(opcode::TEXT, text.as_bytes())).await;
            let reply = raw.read_json(WAIT).await;
            assert_eq!(reply["op"], "reply", "{text:?}: {reply}");
            assert_eq!(reply["ok"], false, "{text:?}: {reply}");
            assert_eq!(reply["seq"], expected["seq"], "{text:?}: {reply}");
            assert_eq!(
                reply["error"]["code"], expected["code"],
                "{text:?}: {reply}"
            );
            assert!(reply["error"]["message"].is_string(), "{text:?}: {reply}");
        }
        // Still open and serving.
        let ping = ClientOp::Ping { seq: 77 };
        raw.send(&masked_frame(opcode::TEXT, json_op(&ping).as_bytes()))
            .await;
        let reply = raw.read_json(WAIT).await;
        assert_eq!(
            reply,
            serde_json::json!({ "op": "reply", "seq": 77, "ok": true })
        );
    });
}

#[test]
fn malformed_and_unknown_binary_ops_get_error_replies() {
    for_each_driver(|io| async move {
        let edge = Edge::start(io, &[]).await;
        let mut client = Client::connect_authed(&edge, WireFormat::Tcp, "alice").await;
        let seq = |n: u64| n.to_be_bytes();
        let cases: [(Vec<u8>, Option<u64>, &str); 3] = [
            // An op byte no client op has.
            ([&[0x7f][..], &seq(5)].concat(), None, "unknown_op"),
            // A ping with a byte after its body.
            (
                [&[0x04][..], &seq(6), &[0]].concat(),
                Some(6),
                "bad_request",
            ),
            // A join whose room length overruns the payload.
            (
                [&[0x02][..], &seq(7), &[10, b'r']].concat(),
                Some(7),
                "bad_request",
            ),
        ];
        for (payload, expected_seq, code) in cases {
            let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(&payload);
            client.send_raw_tcp(&frame).await;
            match client.next(WAIT).await {
                Incoming::Reply { seq, result, .. } => {
                    if let Some(expected) = expected_seq {
                        assert_eq!(seq, expected, "{payload:02x?}");
                    }
                    assert_error(result, code);
                }
                other => panic!("{payload:02x?}: expected a `{code}` reply, got {other:?}"),
            }
        }
        client.ping().await.unwrap();
    });
}
