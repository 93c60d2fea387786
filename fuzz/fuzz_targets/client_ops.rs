//! Feeds arbitrary bytes to both client-op decoders, as a WebSocket text message (JSON) and as a
//! binary payload. Every input must decode or yield an error reply without panicking, and what
//! decodes must survive re-encoding: the binary encoding is canonical, so re-encoding a decoded
//! binary op must reproduce the input exactly.
//!
//! Every op is reached, `join`/`auth` with and without a `since` position and `history`
//! included; each decoded op is also answered with a reply carrying the extras its real reply
//! would (position, recovery result, history messages), which must decode back to them.

#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast_proto::client::{
    decode_binary, decode_json, decode_server_binary, decode_server_json, encode_op, encode_reply,
    encode_reply_ok, ClientOp, ErrorCode, ReplyExtra, ServerMsg, WireFormat, MAX_HISTORY_LIMIT,
    MAX_JSON_SEQ,
};
use roomcast_proto::ids::is_valid_epoch;
use roomcast_proto::message::{PushMessage, RecoveryFailure};

fuzz_target!(|data: &[u8]| {
    match decode_json(data) {
        Ok(op) => {
            check_op(&op);
            assert!(fits_json(&op), "JSON integers stop at 2^53");
            assert_eq!(decode_json(&unmasked_json(&op)).as_ref(), Ok(&op));
            if fits_binary(&op) {
                let tcp = encode_op(WireFormat::Tcp, &op, [0; 4]);
                assert_eq!(decode_binary(&tcp[4..]).as_ref(), Ok(&op));
            }
            check_reply(&op);
        }
        Err(error) => check_error_reply(error.code, error.seq, &error.message),
    }
    match decode_binary(data) {
        Ok(op) => {
            check_op(&op);
            let tcp = encode_op(WireFormat::Tcp, &op, [0; 4]);
            assert_eq!(&tcp[4..], data, "binary ops re-encode byte for byte");
            // Binary integers use all 64 bits; JSON ones stop at 2^53.
            if fits_json(&op) {
                assert_eq!(decode_json(&unmasked_json(&op)).as_ref(), Ok(&op));
            }
            check_reply(&op);
        }
        Err(error) => check_error_reply(error.code, error.seq, &error.message),
    }
});

/// What every decoder promises about the ops it returns.
fn check_op(op: &ClientOp) {
    match op {
        ClientOp::Auth { since, .. } | ClientOp::Join { since, .. } => {
            if let Some(since) = since {
                assert!(is_valid_epoch(since.epoch.as_bytes()));
            }
        }
        ClientOp::History { limit, .. } => assert!((1..=MAX_HISTORY_LIMIT).contains(limit)),
        ClientOp::Leave { .. }
        | ClientOp::Ping { .. }
        | ClientOp::Send { .. }
        | ClientOp::Ack { .. } => {}
    }
}

/// True when every integer of the op fits JSON's 0 ..= 2^53.
fn fits_json(op: &ClientOp) -> bool {
    let extra = match op {
        ClientOp::Auth { since, .. } | ClientOp::Join { since, .. } => {
            since.as_ref().map_or(0, |s| s.seq)
        }
        ClientOp::History { since, .. } => *since,
        ClientOp::Ack { msg_seq, .. } => *msg_seq,
        // A binary send's data is not checked by the decoder (the edge answers it), and only
        // JSON data can ride in a JSON op.
        ClientOp::Send { data, .. } => {
            if !is_json(data) {
                return false;
            }
            0
        }
        ClientOp::Leave { .. } | ClientOp::Ping { .. } => 0,
    };
    op.seq() <= MAX_JSON_SEQ && extra <= MAX_JSON_SEQ
}

/// True when `data` is one JSON value with nothing around it (what a JSON op keeps as raw
/// text): a quick check by decoding it as the `data` of a JSON op.
fn is_json(data: &[u8]) -> bool {
    let mut text = br#"{"op":"send","seq":0,"room":"r","kind":"k","data":"#.to_vec();
    text.extend_from_slice(data);
    text.push(b'}');
    matches!(decode_json(&text), Ok(ClientOp::Send { data: got, .. }) if &got[..] == data)
}

/// True when the op's strings fit the binary `str8`/`str16` fields without being cut.
fn fits_binary(op: &ClientOp) -> bool {
    match op {
        ClientOp::Auth { token, .. } => token.len() <= usize::from(u16::MAX),
        ClientOp::Join { room, .. }
        | ClientOp::Leave { room, .. }
        | ClientOp::History { room, .. } => room.len() <= usize::from(u8::MAX),
        ClientOp::Send {
            room, kind, data, ..
        } => {
            room.len() <= usize::from(u8::MAX)
                && kind.len() <= usize::from(u8::MAX)
                && u32::try_from(data.len()).is_ok()
        }
        // Binary spells "no user" as an empty one.
        ClientOp::Ack { user, .. } => user
            .as_ref()
            .is_none_or(|u| !u.is_empty() && u.len() <= usize::from(u8::MAX)),
        ClientOp::Ping { .. } => true,
    }
}

/// The JSON text of `op`, taken out of the client frame `encode_op` builds (mask all zero, so
/// the payload reads as is).
fn unmasked_json(op: &ClientOp) -> Vec<u8> {
    let frame = encode_op(WireFormat::WsJson, op, [0; 4]);
    let length_bytes = match frame[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    frame[2 + length_bytes + 4..].to_vec()
}

/// Answers `op` the way the edge does, with the extras its reply carries built from the op's
/// own fields, and checks that every format decodes them back.
fn check_reply(op: &ClientOp) {
    let seq = op.seq();
    // A recovery result chosen by the input, so every reason is reached.
    let recovered = |s: u64| match RecoveryFailure::from_code((s % 5) as u8) {
        None => Ok(()),
        Some(failure) => Err(failure),
    };
    let msgs: Vec<PushMessage>;
    let extra = match op {
        ClientOp::Auth { token, since, .. } => ReplyExtra {
            position: Some(("u", token.len() as u64)),
            recovered: since.as_ref().map(|s| recovered(s.seq)),
            ..ReplyExtra::default()
        },
        ClientOp::Join { room, since, .. } => ReplyExtra {
            position: Some((room, seq)),
            recovered: since.as_ref().map(|s| recovered(s.seq)),
            ..ReplyExtra::default()
        },
        ClientOp::History {
            room, since, limit, ..
        } => {
            msgs = (0..u64::from(*limit).min(4))
                .map(|i| PushMessage {
                    seq: since.wrapping_add(i + 1),
                    priority: (i % 4) as u8,
                    kind: room.clone(),
                    data: bytes::Bytes::from_static(b"{}"),
                    merged: 0,
                    is_final: false,
                    from: None,
                    ack: false,
                })
                .collect();
            ReplyExtra {
                position: Some(("k3x9", *since)),
                msgs: Some(&msgs),
                complete: Some(since % 2 == 0),
                ..ReplyExtra::default()
            }
        }
        ClientOp::Send { .. } => ReplyExtra {
            msg_seq: Some(seq),
            not_broadcast: seq % 2 == 0,
            ..ReplyExtra::default()
        },
        ClientOp::Leave { .. } | ClientOp::Ping { .. } | ClientOp::Ack { .. } => {
            ReplyExtra::default()
        }
    };
    for format in WireFormat::ALL {
        let frame = encode_reply_ok(format, seq, &extra);
        let payload = server_payload(format, &frame);
        let decoded = match format {
            WireFormat::WsJson => decode_server_json(payload),
            WireFormat::WsBinary | WireFormat::Tcp => decode_server_binary(payload),
        };
        let Ok(ServerMsg::Reply {
            seq: got,
            result: Ok(()),
            details,
        }) = decoded
        else {
            panic!("{format:?}: the reply to {op:?} does not decode: {decoded:?}");
        };
        assert_eq!(got, seq);
        // What a client reads encodes back to the same frame (binary formats cut an epoch or
        // kind over 255 bytes the same way both times).
        assert_eq!(encode_reply_ok(format, seq, &details.as_extra()), frame);
    }
}

/// The payload of a server frame `encode_reply_ok` built: after the TCP length prefix, or after
/// the unmasked WebSocket header.
fn server_payload(format: WireFormat, frame: &[u8]) -> &[u8] {
    match format {
        WireFormat::Tcp => &frame[4..],
        WireFormat::WsJson | WireFormat::WsBinary => match frame[1] {
            126 => &frame[4..],
            127 => &frame[10..],
            _ => &frame[2..],
        },
    }
}

/// Every error must become a reply in every format.
fn check_error_reply(code: ErrorCode, seq: u64, message: &str) {
    assert!(matches!(code, ErrorCode::BadRequest | ErrorCode::UnknownOp));
    for format in WireFormat::ALL {
        let _ = encode_reply(format, seq, Err((code, message)));
    }
}
