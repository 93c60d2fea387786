//! Feeds arbitrary bytes to both client-op decoders, as a WebSocket text message (JSON) and as a
//! binary payload. Every input must decode or yield an error reply without panicking, and what
//! decodes must survive re-encoding: the binary encoding is canonical, so re-encoding a decoded
//! binary op must reproduce the input exactly.

#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast_proto::client::{
    decode_binary, decode_json, encode_op, encode_reply, ClientOp, ErrorCode, WireFormat,
    MAX_JSON_SEQ,
};

fuzz_target!(|data: &[u8]| {
    match decode_json(data) {
        Ok(op) => {
            assert!(op.seq() <= MAX_JSON_SEQ);
            assert_eq!(decode_json(&unmasked_json(&op)).as_ref(), Ok(&op));
            if fits_binary(&op) {
                let tcp = encode_op(WireFormat::Tcp, &op, [0; 4]);
                assert_eq!(decode_binary(&tcp[4..]).as_ref(), Ok(&op));
            }
        }
        Err(error) => check_error_reply(error.code, error.seq, &error.message),
    }
    match decode_binary(data) {
        Ok(op) => {
            let tcp = encode_op(WireFormat::Tcp, &op, [0; 4]);
            assert_eq!(&tcp[4..], data, "binary ops re-encode byte for byte");
            // Binary seqs use all 64 bits; JSON ones stop at 2^53.
            if op.seq() <= MAX_JSON_SEQ {
                assert_eq!(decode_json(&unmasked_json(&op)).as_ref(), Ok(&op));
            }
        }
        Err(error) => check_error_reply(error.code, error.seq, &error.message),
    }
});

/// True when the op's strings fit the binary `str8`/`str16` fields without being cut.
fn fits_binary(op: &ClientOp) -> bool {
    match op {
        ClientOp::Auth { token, .. } => token.len() <= usize::from(u16::MAX),
        ClientOp::Join { room, .. } | ClientOp::Leave { room, .. } => {
            room.len() <= usize::from(u8::MAX)
        }
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

/// Every error must become a reply in every format.
fn check_error_reply(code: ErrorCode, seq: u64, message: &str) {
    assert!(matches!(code, ErrorCode::BadRequest | ErrorCode::UnknownOp));
    for format in WireFormat::ALL {
        let _ = encode_reply(format, seq, Err((code, message)));
    }
}
