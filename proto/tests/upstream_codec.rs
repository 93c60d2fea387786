//! The upstream parts of the protocol (PROTOCOL.md §2, §3, §6): the `send` and `ack` ops in both
//! encodings, the reply extras and error details they are answered with, the `from` and `ack`
//! marks on pushed messages, and the link's `send`, `send result` and `acks` frames — round trips
//! and the exact bytes the document shows.

use bytes::{Bytes, BytesMut};
use roomcast_proto::client::{
    decode_binary, decode_json, decode_server_binary, decode_server_json, encode_batch,
    encode_reply_error, encode_reply_ok, ClientOp, ErrorCode, ErrorDetail, ReplyDetails,
    ReplyExtra, ServerMsg, WireFormat,
};
use roomcast_proto::link::{
    self, Ack, Acks, LinkError, LinkFrame, SendOutcome, SendRefusal, SendRequest, SendResult,
};
use roomcast_proto::message::{PushMessage, Target};

/// The payload of a raw TCP frame (without its length prefix).
fn tcp_payload(frame: &[u8]) -> &[u8] {
    &frame[4..]
}

/// The text of a WebSocket JSON frame (a short one: a 2-byte header).
fn ws_text(frame: &[u8]) -> &str {
    std::str::from_utf8(&frame[2..]).unwrap()
}

#[test]
fn send_and_ack_ops_decode_from_json_with_data_kept_byte_for_byte() {
    let op = decode_json(
        br#"{"op":"send","seq":7,"room":"r1","kind":"chat","data":{"text":"666", "n":1}}"#,
    )
    .unwrap();
    assert_eq!(
        op,
        ClientOp::Send {
            seq: 7,
            room: "r1".into(),
            kind: "chat".into(),
            data: Bytes::from_static(br#"{"text":"666", "n":1}"#),
        }
    );
    assert_eq!(
        decode_json(br#"{"op":"ack","seq":12,"user":"u42","msg_seq":88}"#).unwrap(),
        ClientOp::Ack {
            seq: 12,
            user: Some("u42".into()),
            msg_seq: 88
        }
    );
    // An empty user is the connection's own, as in binary.
    assert_eq!(
        decode_json(br#"{"op":"ack","seq":12,"user":"","msg_seq":88}"#).unwrap(),
        ClientOp::Ack {
            seq: 12,
            user: None,
            msg_seq: 88
        }
    );
    assert_eq!(
        decode_json(br#"{"op":"ack","seq":12,"msg_seq":88}"#).unwrap(),
        ClientOp::Ack {
            seq: 12,
            user: None,
            msg_seq: 88
        }
    );
}

#[test]
fn a_send_or_ack_missing_a_field_is_a_bad_request_naming_it() {
    for (text, field) in [
        (
            &br#"{"op":"send","seq":7,"kind":"chat","data":1}"#[..],
            "room",
        ),
        (br#"{"op":"send","seq":7,"room":"r1","data":1}"#, "kind"),
        (
            br#"{"op":"send","seq":7,"room":"r1","kind":"chat"}"#,
            "data",
        ),
        (br#"{"op":"ack","seq":7}"#, "msg_seq"),
        (br#"{"op":"ack","seq":7,"msg_seq":-1}"#, "msg_seq"),
        (br#"{"op":"ack","seq":7,"msg_seq":1,"user":5}"#, "user"),
    ] {
        let error = decode_json(text).unwrap_err();
        assert_eq!(error.code, ErrorCode::BadRequest);
        assert_eq!(error.seq, 7);
        assert!(
            error.message.contains(field),
            "{}: {}",
            String::from_utf8_lossy(text),
            error.message
        );
    }
}

#[test]
fn binary_send_and_ack_have_the_documented_layout() {
    // send: 0x06, seq u64, room str8, kind str8, data bytes32.
    let mut payload = vec![0x06, 0, 0, 0, 0, 0, 0, 0, 7, 2, b'r', b'1', 4];
    payload.extend_from_slice(b"chat");
    payload.extend_from_slice(&[0, 0, 0, 2]);
    payload.extend_from_slice(b"{}");
    let op = decode_binary(&payload).unwrap();
    assert_eq!(
        op,
        ClientOp::Send {
            seq: 7,
            room: "r1".into(),
            kind: "chat".into(),
            data: Bytes::from_static(b"{}"),
        }
    );
    let encoded = roomcast_proto::client::encode_op(WireFormat::Tcp, &op, [0; 4]);
    assert_eq!(tcp_payload(&encoded), &payload[..]);
    // Binary data is not checked here: the edge answers it (size, then JSON).
    let mut not_json = payload.clone();
    let n = not_json.len();
    not_json[n - 2..].copy_from_slice(b"{x");
    assert!(matches!(
        decode_binary(&not_json),
        Ok(ClientOp::Send { .. })
    ));
    // ack: 0x07, seq u64, user str8 (empty: the connection's own), msg_seq u64.
    let payload = [0x07, 0, 0, 0, 0, 0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0, 88];
    assert_eq!(
        decode_binary(&payload).unwrap(),
        ClientOp::Ack {
            seq: 12,
            user: None,
            msg_seq: 88
        }
    );
    let truncated = &payload[..payload.len() - 1];
    assert_eq!(
        decode_binary(truncated).unwrap_err().code,
        ErrorCode::BadRequest
    );
}

#[test]
fn send_replies_carry_msg_seq_or_broadcast_false_in_every_format() {
    let published = ReplyExtra {
        msg_seq: Some(1043),
        ..ReplyExtra::default()
    };
    let not_broadcast = ReplyExtra {
        not_broadcast: true,
        ..ReplyExtra::default()
    };
    let json = encode_reply_ok(WireFormat::WsJson, 7, &published);
    assert_eq!(
        ws_text(&json),
        r#"{"op":"reply","seq":7,"ok":true,"msg_seq":1043}"#
    );
    let json = encode_reply_ok(WireFormat::WsJson, 8, &not_broadcast);
    assert_eq!(
        ws_text(&json),
        r#"{"op":"reply","seq":8,"ok":true,"broadcast":false}"#
    );
    // Binary: flags 0x08 then msg_seq u64; flags 0x10 alone.
    let tcp = encode_reply_ok(WireFormat::Tcp, 7, &published);
    let mut want = vec![0x81, 0, 0, 0, 0, 0, 0, 0, 7, 1, 0x08];
    want.extend_from_slice(&1043u64.to_be_bytes());
    assert_eq!(tcp_payload(&tcp), &want[..]);
    let tcp = encode_reply_ok(WireFormat::Tcp, 8, &not_broadcast);
    assert_eq!(tcp_payload(&tcp), &[0x81, 0, 0, 0, 0, 0, 0, 0, 8, 1, 0x10]);
    for (extra, seq) in [(published, 7), (not_broadcast, 8)] {
        let want = ServerMsg::Reply {
            seq,
            result: Ok(()),
            details: ReplyDetails {
                msg_seq: extra.msg_seq,
                not_broadcast: extra.not_broadcast,
                ..ReplyDetails::default()
            },
        };
        let json = encode_reply_ok(WireFormat::WsJson, seq, &extra);
        assert_eq!(decode_server_json(ws_text(&json).as_bytes()).unwrap(), want);
        let tcp = encode_reply_ok(WireFormat::Tcp, seq, &extra);
        assert_eq!(decode_server_binary(tcp_payload(&tcp)).unwrap(), want);
    }
}

#[test]
fn error_details_ride_inside_the_error_object_and_after_the_binary_message() {
    let limited = ErrorDetail {
        retry_after_ms: Some(400),
        platform_code: None,
    };
    let rejected = ErrorDetail {
        retry_after_ms: None,
        platform_code: Some("muted"),
    };
    let both = ErrorDetail {
        retry_after_ms: Some(1),
        platform_code: Some("x\"y"),
    };
    let json = encode_reply_error(
        WireFormat::WsJson,
        7,
        ErrorCode::RateLimited,
        "slow down",
        &limited,
    );
    assert_eq!(
        ws_text(&json),
        r#"{"op":"reply","seq":7,"ok":false,"error":{"code":"rate_limited","message":"slow down","retry_after_ms":400}}"#
    );
    let json = encode_reply_error(
        WireFormat::WsJson,
        7,
        ErrorCode::Rejected,
        "you are muted",
        &rejected,
    );
    assert_eq!(
        ws_text(&json),
        r#"{"op":"reply","seq":7,"ok":false,"error":{"code":"rejected","message":"you are muted","platform_code":"muted"}}"#
    );
    // Binary: code str8, message str16, then flags (0x01 retry u32, 0x02 platform code str8).
    let tcp = encode_reply_error(WireFormat::Tcp, 7, ErrorCode::RateLimited, "m", &limited);
    let mut want = vec![0x81, 0, 0, 0, 0, 0, 0, 0, 7, 0, 12];
    want.extend_from_slice(b"rate_limited");
    want.extend_from_slice(&[0, 1, b'm', 0x01, 0, 0, 1, 0x90]);
    assert_eq!(tcp_payload(&tcp), &want[..]);
    // Without details the bytes are the plain error reply's.
    let plain = encode_reply_error(
        WireFormat::Tcp,
        7,
        ErrorCode::TooBig,
        "m",
        &ErrorDetail::default(),
    );
    let old =
        roomcast_proto::client::encode_reply(WireFormat::Tcp, 7, Err((ErrorCode::TooBig, "m")));
    assert_eq!(plain, old);
    for detail in [limited, rejected, both] {
        for format in [WireFormat::WsJson, WireFormat::Tcp] {
            let frame = encode_reply_error(format, 9, ErrorCode::Rejected, "no", &detail);
            let decoded = match format {
                WireFormat::WsJson => decode_server_json(ws_text(&frame).as_bytes()),
                _ => decode_server_binary(tcp_payload(&frame)),
            }
            .unwrap();
            let ServerMsg::Reply {
                result: Err((code, message)),
                details,
                ..
            } = decoded
            else {
                panic!("an error reply")
            };
            assert_eq!((code.as_str(), message.as_str()), ("rejected", "no"));
            assert_eq!(details.as_error_detail(), detail, "{format:?}");
        }
    }
}

fn sent_message() -> PushMessage {
    PushMessage {
        from: Some("u42".into()),
        ..PushMessage::new(58, 3, "chat", Bytes::from_static(br#"{"text":"666"}"#))
    }
}

#[test]
fn pushed_messages_carry_from_and_ack_in_json_and_in_the_priority_byte() {
    let msg = sent_message();
    let ack = PushMessage {
        ack: true,
        ..PushMessage::new(7, 1, "reward", Bytes::from_static(b"{}"))
    };
    let json = encode_batch(
        WireFormat::WsJson,
        &Target::Room("r1".into()),
        std::slice::from_ref(&msg),
    );
    assert_eq!(
        ws_text(&json),
        r#"{"op":"batch","room":"r1","msgs":[{"seq":58,"p":3,"kind":"chat","from":"u42","data":{"text":"666"}}]}"#
    );
    let json = encode_batch(
        WireFormat::WsJson,
        &Target::User("u1".into()),
        std::slice::from_ref(&ack),
    );
    assert_eq!(
        ws_text(&json),
        r#"{"op":"batch","user":"u1","msgs":[{"seq":7,"p":1,"kind":"reward","ack":true,"data":{}}]}"#
    );
    // Binary: p 0x23 (from, priority 3) then from str8 before kind; p 0x11 (ack, priority 1).
    let tcp = encode_batch(
        WireFormat::Tcp,
        &Target::Room("r1".into()),
        std::slice::from_ref(&msg),
    );
    let payload = tcp_payload(&tcp);
    let at = 1 + 1 + 3 + 2 + 8;
    assert_eq!(payload[at], 0x23);
    assert_eq!(&payload[at + 1..at + 5], b"\x03u42");
    for (target, m) in [
        (Target::Room("r1".into()), msg),
        (Target::User("u1".into()), ack),
    ] {
        for format in [WireFormat::WsJson, WireFormat::Tcp] {
            let frame = encode_batch(format, &target, std::slice::from_ref(&m));
            let decoded = match format {
                WireFormat::WsJson => decode_server_json(ws_text(&frame).as_bytes()),
                _ => decode_server_binary(tcp_payload(&frame)),
            };
            assert_eq!(
                decoded.unwrap(),
                ServerMsg::Batch {
                    target: target.clone(),
                    msgs: vec![m.clone()]
                }
            );
        }
    }
}

fn round_trip(frame: LinkFrame) -> LinkFrame {
    let mut buf = BytesMut::new();
    link::encode(&frame, &mut buf).unwrap();
    link::decode(&mut buf).unwrap().expect("a whole frame")
}

#[test]
fn link_send_frames_round_trip_and_publishes_keep_from_and_ack() {
    let send = LinkFrame::Send(SendRequest {
        id: 5,
        user: "u42".into(),
        room: "r1".into(),
        kind: "chat".into(),
        data: Bytes::from_static(br#"{"text":"666"}"#),
        format: WireFormat::WsBinary,
        peer: "10.0.0.7:5123".into(),
    });
    assert_eq!(round_trip(send.clone()), send);
    for outcome in [
        SendOutcome::Published { msg_seq: 1043 },
        SendOutcome::NotBroadcast,
        SendOutcome::Refused {
            code: SendRefusal::Rejected,
            message: "you are muted".into(),
            platform_code: "muted".into(),
        },
        SendOutcome::Refused {
            code: SendRefusal::Unavailable,
            message: "timeout".into(),
            platform_code: String::new(),
        },
        SendOutcome::Refused {
            code: SendRefusal::Forbidden,
            message: "off".into(),
            platform_code: String::new(),
        },
        SendOutcome::Disconnect {
            code: 4403,
            reason: "banned".into(),
        },
    ] {
        let frame = LinkFrame::SendResult(SendResult { id: 5, outcome });
        assert_eq!(round_trip(frame.clone()), frame);
    }
    let acks = LinkFrame::Acks(Acks {
        acks: vec![Ack {
            user: "u42".into(),
            msg_seq: 88,
            at_ms: 1_764_860_000_123,
        }],
    });
    assert_eq!(round_trip(acks.clone()), acks);
    let publish = LinkFrame::Publish(link::Publish {
        target: Target::Room("r1".into()),
        msg: PushMessage {
            ack: true,
            ..sent_message()
        },
    });
    assert_eq!(round_trip(publish.clone()), publish);
}

#[test]
fn a_disconnect_outside_the_platform_codes_or_a_bad_sender_breaks_the_link() {
    let mut buf = BytesMut::new();
    let bad = LinkFrame::SendResult(SendResult {
        id: 1,
        outcome: SendOutcome::Disconnect {
            code: 1000,
            reason: String::new(),
        },
    });
    assert!(matches!(
        link::encode(&bad, &mut buf),
        Err(LinkError::BadSendResult(_))
    ));
    let bad_from = LinkFrame::Publish(link::Publish {
        target: Target::Room("r1".into()),
        msg: PushMessage {
            from: Some("not an id".into()),
            ..sent_message()
        },
    });
    assert!(matches!(
        link::encode(&bad_from, &mut buf),
        Err(LinkError::InvalidId("from"))
    ));
    assert!(buf.is_empty());
}
