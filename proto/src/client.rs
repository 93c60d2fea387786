//! The client protocol (PROTOCOL.md sections 2–4): decoding the ops viewers send, encoding the
//! frames the edge pushes to them, and the mirror-image client side used by the load generator
//! and the tests, so that the project has exactly one parser per direction.
//!
//! Everything here is pure and total: malformed input becomes an [`OpError`], never a panic.
//!
//! Server frames are encoded once per batch and then shared by every recipient, so each encoder
//! first computes the exact size of the finished frame (framing included) and fills a single
//! allocation of exactly that size, without intermediate strings or serde. The hot encoders
//! (batches, plain replies, closes) compute that size in closed form; the rarer frames with
//! optional parts (ops, replies with extras, room counts) are written by one function over an
//! `Out` that first only measures, then writes, so size and bytes cannot disagree.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::ids::is_valid_epoch;
use super::message::{
    split_priority_byte, PushMessage, RecoveryFailure, Since, Target, PRIORITIES,
};
use super::wire::{Reader, WireError};
use super::ws::{put_server_header, server_header_len, OpCode};

/// The most messages one binary batch frame can carry: its `count` field is a `u16`.
///
/// Callers should cut batches to at most this many messages so that one batch is one frame; see
/// [`encode_batch`] for what happens when they do not.
pub const MAX_MSGS_PER_BATCH: usize = u16::MAX as usize;

/// The largest `seq` a JSON op may carry: 2^53, the largest integer every JSON implementation
/// (JavaScript's numbers in particular) represents exactly.
pub const MAX_JSON_SEQ: u64 = 1 << 53;

/// Longest close reason a WebSocket close frame can carry: control frames hold at most 125
/// payload bytes, two of which are the close code.
const MAX_WS_CLOSE_REASON: usize = 123;

// Binary op bytes (section 3).
const OP_AUTH: u8 = 0x01;
const OP_JOIN: u8 = 0x02;
const OP_LEAVE: u8 = 0x03;
const OP_PING: u8 = 0x04;
const OP_HISTORY: u8 = 0x05;
const OP_SEND: u8 = 0x06;
const OP_ACK: u8 = 0x07;
const OP_REPLY: u8 = 0x81;
const OP_BATCH: u8 = 0x82;
const OP_CLOSE: u8 = 0x83;
const OP_ROOM: u8 = 0x84;

/// Messages a `history` op asks for when it names no `limit`.
pub const DEFAULT_HISTORY_LIMIT: u32 = 100;

/// The largest `limit` a `history` op may carry; larger (and 0) is `bad_request`.
pub const MAX_HISTORY_LIMIT: u32 = 1000;

/// Bits of the binary reply's `flags` byte: which extras follow, in this order.
const FLAG_POSITION: u8 = 0x01;
const FLAG_RECOVERED: u8 = 0x02;
const FLAG_MSGS: u8 = 0x04;
const FLAG_MSG_SEQ: u8 = 0x08;
const FLAG_NOT_BROADCAST: u8 = 0x10;
/// Flags of an error reply's optional details (section 3).
const FLAG_RETRY_AFTER: u8 = 0x01;
const FLAG_PLATFORM_CODE: u8 = 0x02;

/// Length of the `u32` prefix of every raw TCP frame.
const TCP_PREFIX_LEN: usize = 4;

/// How a connection's frames are encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WireFormat {
    /// WebSocket text frames carrying JSON (section 2).
    WsJson,
    /// WebSocket binary frames carrying the binary encoding (section 3).
    WsBinary,
    /// Raw TCP: a `u32` length prefix, then the binary encoding (section 3).
    Tcp,
}

impl WireFormat {
    /// Every format, in [`WireFormat::index`] order, for per-format caches and tables.
    pub const ALL: [WireFormat; 3] = [WireFormat::WsJson, WireFormat::WsBinary, WireFormat::Tcp];

    /// Position of this format in [`WireFormat::ALL`]: 0, 1 or 2.
    pub fn index(self) -> usize {
        match self {
            WireFormat::WsJson => 0,
            WireFormat::WsBinary => 1,
            WireFormat::Tcp => 2,
        }
    }
}

/// One op sent by a client; each gets exactly one reply carrying its `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOp {
    /// Authenticate with a JWT; must be the connection's first op. `since` asks to resume the
    /// user's channel from a position (its epoch is valid when decoded).
    Auth {
        seq: u64,
        token: String,
        since: Option<Since>,
    },
    /// Join a room, resuming from `since` when given (its epoch is valid when decoded). The id
    /// is kept as sent: the session layer validates it.
    Join {
        seq: u64,
        room: String,
        since: Option<Since>,
    },
    /// Leave a room. The id is kept as sent: the session layer validates it.
    Leave { seq: u64, room: String },
    /// Heartbeat.
    Ping { seq: u64 },
    /// Stored messages of a room after `since` (at most `limit`, which is
    /// 1 ..= [`MAX_HISTORY_LIMIT`] when decoded). The id is kept as sent.
    History {
        seq: u64,
        room: String,
        since: u64,
        limit: u32,
    },
    /// An upstream message into a room (a danmaku line, a like). `data` is the client's bytes
    /// as sent: JSON text when decoded from JSON, unchecked bytes from binary (the edge checks
    /// size and JSON, in that order). The id and kind are kept as sent.
    Send {
        seq: u64,
        room: String,
        kind: String,
        data: Bytes,
    },
    /// A receipt for message `msg_seq` of the user's channel. `user` is the user the client
    /// names (must be its own); `None` when left out.
    Ack {
        seq: u64,
        user: Option<String>,
        msg_seq: u64,
    },
}

impl ClientOp {
    /// The client's sequence number, echoed in the reply.
    pub fn seq(&self) -> u64 {
        match self {
            ClientOp::Auth { seq, .. }
            | ClientOp::Join { seq, .. }
            | ClientOp::Leave { seq, .. }
            | ClientOp::Ping { seq }
            | ClientOp::History { seq, .. }
            | ClientOp::Send { seq, .. }
            | ClientOp::Ack { seq, .. } => *seq,
        }
    }
}

/// The error codes of replies (PROTOCOL.md, "Error codes in replies").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The op could not be decoded (malformed JSON/binary, missing field).
    BadRequest,
    /// The op name/byte is not one of the client ops.
    UnknownOp,
    /// An op other than `auth` before a successful `auth`.
    NotAuthenticated,
    /// A second `auth` on the same connection.
    AlreadyAuthenticated,
    /// Signature, algorithm, or claims are wrong.
    InvalidToken,
    /// `exp` is in the past.
    TokenExpired,
    /// A room id outside the id rules.
    InvalidId,
    /// The token's `rooms` claim does not include this room.
    RoomForbidden,
    /// The connection is already in `max_rooms_per_conn` rooms.
    TooManyRooms,
    /// `leave`, `history` or `send` of a room this connection is not in.
    NotJoined,
    /// The edge could not confirm the subscription with the control plane in time (the link is
    /// down or slow): nothing was subscribed; retry the op. For a `send`: the platform did not
    /// answer in time.
    Unavailable,
    /// A `send` over the connection's or the user's rate limit; the reply says when to retry.
    RateLimited,
    /// A `send` whose `data` is over `max_send_bytes`.
    TooBig,
    /// The token forbids sending (a `"send":false` claim), sends are off, or an `ack` names
    /// another user.
    Forbidden,
    /// The platform's backend refused the `send`; the reply carries its code and message.
    Rejected,
}

impl ErrorCode {
    /// Every code, in the order of the protocol's table.
    pub const ALL: [ErrorCode; 15] = [
        ErrorCode::BadRequest,
        ErrorCode::UnknownOp,
        ErrorCode::NotAuthenticated,
        ErrorCode::AlreadyAuthenticated,
        ErrorCode::InvalidToken,
        ErrorCode::TokenExpired,
        ErrorCode::InvalidId,
        ErrorCode::RoomForbidden,
        ErrorCode::TooManyRooms,
        ErrorCode::NotJoined,
        ErrorCode::Unavailable,
        ErrorCode::RateLimited,
        ErrorCode::TooBig,
        ErrorCode::Forbidden,
        ErrorCode::Rejected,
    ];

    /// The code as it appears on the wire, e.g. `bad_request`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::NotAuthenticated => "not_authenticated",
            ErrorCode::AlreadyAuthenticated => "already_authenticated",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::InvalidId => "invalid_id",
            ErrorCode::RoomForbidden => "room_forbidden",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooBig => "too_big",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Rejected => "rejected",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed op, ready to be sent back as an error reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} (seq {seq}): {message}")]
pub struct OpError {
    /// The op's `seq`; 0 when it could not be read.
    pub seq: u64,
    /// What went wrong, as a protocol error code.
    pub code: ErrorCode,
    /// Human-readable detail for the reply's `message`.
    pub message: String,
}

impl OpError {
    /// An error reply for the op numbered `seq`.
    pub fn new(seq: u64, code: ErrorCode, message: impl Into<String>) -> Self {
        OpError {
            seq,
            code,
            message: message.into(),
        }
    }

    fn bad_request(seq: u64, message: impl Into<String>) -> Self {
        OpError::new(seq, ErrorCode::BadRequest, message)
    }

    fn wire(seq: u64, error: WireError) -> Self {
        OpError::bad_request(seq, error.to_string())
    }
}

// ---------------------------------------------------------------------------------------------
// Client → server: decoding ops
// ---------------------------------------------------------------------------------------------

/// Any JSON value of a client op, read without ever failing, so that a badly typed field is
/// reported by name and never hides a good `seq` (which the error reply must echo).
enum JsonField<'a> {
    Str(Cow<'a, str>),
    UInt(u64),
    /// An object, of which only `epoch` and `seq` are kept, unchecked (the one object a client
    /// op carries is `since`).
    Object {
        epoch: Option<Box<JsonField<'a>>>,
        seq: Option<Box<JsonField<'a>>>,
        /// A key appeared twice, which the top level refuses too.
        duplicate: bool,
    },
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for JsonField<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonFieldVisitor(PhantomData))
    }
}

struct JsonFieldVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for JsonFieldVisitor<'a> {
    type Value = JsonField<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(JsonField::Str(Cow::Borrowed(v)))
    }

    // Strings with escapes cannot be borrowed from the input.
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(JsonField::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(JsonField::Str(Cow::Owned(v)))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(JsonField::UInt(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(u64::try_from(v).map_or(JsonField::Other, JsonField::UInt))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(JsonField::Other)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(JsonField::Other)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(JsonField::Other)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(JsonField::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut epoch = None;
        let mut seq = None;
        let mut duplicate = false;
        while let Some(key) = map.next_key::<JsonField<'a>>()? {
            let slot = match &key {
                JsonField::Str(k) if k == "epoch" => &mut epoch,
                JsonField::Str(k) if k == "seq" => &mut seq,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            duplicate |= slot.is_some();
            *slot = Some(Box::new(map.next_value::<JsonField<'a>>()?));
        }
        Ok(JsonField::Object {
            epoch,
            seq,
            duplicate,
        })
    }
}

/// A field that may be left out. Unlike `Option`, whose `null` reads as "absent", a `null` here
/// is a present (and badly typed) value, so an optional field cannot be silently nulled.
#[derive(Default)]
enum Optional<T> {
    #[default]
    Absent,
    Present(T),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Optional<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Optional::Present)
    }
}

/// A JSON client op with every field still unchecked; unknown fields are ignored.
#[derive(Deserialize)]
struct RawClientOp<'a> {
    #[serde(borrow)]
    op: Option<JsonField<'a>>,
    #[serde(borrow)]
    seq: Option<JsonField<'a>>,
    #[serde(borrow)]
    token: Option<JsonField<'a>>,
    #[serde(borrow)]
    room: Option<JsonField<'a>>,
    #[serde(borrow, default)]
    since: Optional<JsonField<'a>>,
    #[serde(borrow, default)]
    limit: Optional<JsonField<'a>>,
    #[serde(borrow)]
    kind: Option<JsonField<'a>>,
    /// Kept as raw text: a `send`'s payload is passed on byte for byte.
    #[serde(borrow, default)]
    data: Optional<&'a RawValue>,
    #[serde(borrow, default)]
    user: Optional<JsonField<'a>>,
    #[serde(borrow)]
    msg_seq: Option<JsonField<'a>>,
}

/// True when `text` starts (after JSON whitespace) with `{`. serde's derived structs also accept
/// JSON arrays, positionally; the protocol only allows objects.
fn starts_json_object(text: &[u8]) -> bool {
    text.iter()
        .find(|&&b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .is_some_and(|&b| b == b'{')
}

/// The string value of a required field of the op numbered `seq`.
fn required_string(field: Option<JsonField<'_>>, seq: u64, name: &str) -> Result<String, OpError> {
    match field {
        Some(JsonField::Str(s)) => Ok(s.into_owned()),
        _ => Err(OpError::bad_request(
            seq,
            format!("`{name}` must be a string"),
        )),
    }
}

const BAD_SINCE_EPOCH: &str = "`since.epoch` must be 1 to 32 bytes of [A-Za-z0-9_-]";

/// The resume position of a `join` or `auth` numbered `seq`: absent, or an object with a valid
/// string `epoch` and an integer `seq` (0 ..= 2^53).
fn optional_since(field: Optional<JsonField<'_>>, seq: u64) -> Result<Option<Since>, OpError> {
    let (epoch, since_seq) = match field {
        Optional::Absent => return Ok(None),
        Optional::Present(JsonField::Object {
            epoch,
            seq: since_seq,
            duplicate: false,
        }) => (epoch, since_seq),
        Optional::Present(_) => {
            return Err(OpError::bad_request(
                seq,
                "`since` must be an object with `epoch` and `seq`",
            ))
        }
    };
    let epoch = match epoch.map(|e| *e) {
        Some(JsonField::Str(epoch)) if is_valid_epoch(epoch.as_bytes()) => epoch.into_owned(),
        _ => return Err(OpError::bad_request(seq, BAD_SINCE_EPOCH)),
    };
    match since_seq.map(|s| *s) {
        Some(JsonField::UInt(since)) if since <= MAX_JSON_SEQ => {
            Ok(Some(Since { epoch, seq: since }))
        }
        _ => Err(OpError::bad_request(
            seq,
            "`since.seq` must be an integer from 0 to 2^53",
        )),
    }
}

/// The `since` of a `history` op numbered `seq`: a required integer (0 ..= 2^53).
fn history_since(field: Optional<JsonField<'_>>, seq: u64) -> Result<u64, OpError> {
    match field {
        Optional::Present(JsonField::UInt(since)) if since <= MAX_JSON_SEQ => Ok(since),
        _ => Err(OpError::bad_request(
            seq,
            "`since` must be an integer from 0 to 2^53",
        )),
    }
}

const BAD_LIMIT: &str = "`limit` must be an integer from 1 to 1000";

/// The `limit` of a `history` op numbered `seq`: [`DEFAULT_HISTORY_LIMIT`] when absent, else
/// an integer in 1 ..= [`MAX_HISTORY_LIMIT`].
fn history_limit(field: Optional<JsonField<'_>>, seq: u64) -> Result<u32, OpError> {
    match field {
        Optional::Absent => Ok(DEFAULT_HISTORY_LIMIT),
        Optional::Present(JsonField::UInt(limit))
            if (1..=u64::from(MAX_HISTORY_LIMIT)).contains(&limit) =>
        {
            // At most MAX_HISTORY_LIMIT, a u32.
            Ok(limit as u32)
        }
        Optional::Present(_) => Err(OpError::bad_request(seq, BAD_LIMIT)),
    }
}

/// Decodes a client op from the JSON text of a WebSocket text message (section 2).
///
/// Errors follow the protocol: anything that is not an object with a string `op` and an integer
/// `seq` (0 ..= 2^53) is `bad_request`, an unknown `op` name is `unknown_op`, and a missing or
/// badly typed field of the op (`token`, `room`, `since`, `since.epoch`, `since.seq`, `limit`)
/// is `bad_request` naming it; the error carries the `seq` whenever one could be read. Fields
/// the op does not use are ignored whatever they hold. Room ids are returned as sent:
/// validating them is the session layer's job.
pub fn decode_json(text: &[u8]) -> Result<ClientOp, OpError> {
    if !starts_json_object(text) {
        return Err(OpError::bad_request(0, "an op must be a JSON object"));
    }
    let raw: RawClientOp<'_> = serde_json::from_slice(text)
        .map_err(|e| OpError::bad_request(0, format!("malformed JSON: {e}")))?;
    let seq = match raw.seq {
        Some(JsonField::UInt(seq)) if seq <= MAX_JSON_SEQ => seq,
        _ => {
            return Err(OpError::bad_request(
                0,
                "`seq` must be an integer from 0 to 2^53",
            ))
        }
    };
    let Some(JsonField::Str(op)) = raw.op else {
        return Err(OpError::bad_request(seq, "`op` must be a string"));
    };
    match &*op {
        "auth" => Ok(ClientOp::Auth {
            seq,
            token: required_string(raw.token, seq, "token")?,
            since: optional_since(raw.since, seq)?,
        }),
        "join" => Ok(ClientOp::Join {
            seq,
            room: required_string(raw.room, seq, "room")?,
            since: optional_since(raw.since, seq)?,
        }),
        "leave" => Ok(ClientOp::Leave {
            seq,
            room: required_string(raw.room, seq, "room")?,
        }),
        "ping" => Ok(ClientOp::Ping { seq }),
        "history" => Ok(ClientOp::History {
            seq,
            room: required_string(raw.room, seq, "room")?,
            since: history_since(raw.since, seq)?,
            limit: history_limit(raw.limit, seq)?,
        }),
        "send" => Ok(ClientOp::Send {
            seq,
            room: required_string(raw.room, seq, "room")?,
            kind: required_string(raw.kind, seq, "kind")?,
            data: match raw.data {
                Optional::Present(data) => Bytes::copy_from_slice(data.get().as_bytes()),
                Optional::Absent => return Err(OpError::bad_request(seq, "`data` is required")),
            },
        }),
        "ack" => Ok(ClientOp::Ack {
            seq,
            user: match raw.user {
                Optional::Absent => None,
                // Empty means the connection's own, as in binary (`user str8` of length 0).
                Optional::Present(JsonField::Str(user)) if user.is_empty() => None,
                Optional::Present(JsonField::Str(user)) => Some(user.into_owned()),
                Optional::Present(_) => {
                    return Err(OpError::bad_request(seq, "`user` must be a string"))
                }
            },
            msg_seq: match raw.msg_seq {
                Some(JsonField::UInt(n)) if n <= MAX_JSON_SEQ => n,
                _ => {
                    return Err(OpError::bad_request(
                        seq,
                        "`msg_seq` must be an integer from 0 to 2^53",
                    ))
                }
            },
        }),
        // The unknown name is not echoed: it is untrusted and may be huge.
        _ => Err(OpError::new(
            seq,
            ErrorCode::UnknownOp,
            "`op` must be one of auth, join, leave, ping, history, send, ack",
        )),
    }
}

/// Decodes a client op from a binary payload (a WebSocket binary message or the bytes after a
/// TCP length prefix; section 3).
///
/// An op byte other than 0x01–0x07 is `unknown_op` (with `seq` 0, since an unknown body has no
/// known layout); truncated fields, invalid UTF-8, trailing bytes, an invalid `since` epoch and
/// a `limit` outside 1 ..= 1000 are `bad_request`, with the `seq` once it has been read.
pub fn decode_binary(payload: &[u8]) -> Result<ClientOp, OpError> {
    let mut r = Reader::new(payload);
    let op = r.u8("op").map_err(|e| OpError::wire(0, e))?;
    if !(OP_AUTH..=OP_ACK).contains(&op) {
        return Err(OpError::new(
            0,
            ErrorCode::UnknownOp,
            format!("unknown op byte 0x{op:02x}"),
        ));
    }
    let seq = r.u64("seq").map_err(|e| OpError::wire(0, e))?;
    let decoded = decode_binary_body(op, seq, &mut r)?;
    r.finish().map_err(|e| OpError::wire(seq, e))?;
    Ok(decoded)
}

/// The body of a binary op after its `seq`; `op` is one of the known op bytes.
fn decode_binary_body(op: u8, seq: u64, r: &mut Reader<'_>) -> Result<ClientOp, OpError> {
    let wire = |e| OpError::wire(seq, e);
    Ok(match op {
        OP_AUTH => ClientOp::Auth {
            seq,
            token: r.str16("token").map_err(wire)?.to_owned(),
            since: binary_since(r, seq)?,
        },
        OP_JOIN => ClientOp::Join {
            seq,
            room: r.str8("room").map_err(wire)?.to_owned(),
            since: binary_since(r, seq)?,
        },
        OP_LEAVE => ClientOp::Leave {
            seq,
            room: r.str8("room").map_err(wire)?.to_owned(),
        },
        OP_HISTORY => {
            let room = r.str8("room").map_err(wire)?.to_owned();
            let since = r.u64("since").map_err(wire)?;
            let limit = u32::from(r.u16("limit").map_err(wire)?);
            if !(1..=MAX_HISTORY_LIMIT).contains(&limit) {
                return Err(OpError::bad_request(seq, BAD_LIMIT));
            }
            ClientOp::History {
                seq,
                room,
                since,
                limit,
            }
        }
        OP_SEND => {
            let room = r.str8("room").map_err(wire)?.to_owned();
            let kind = r.str8("kind").map_err(wire)?.to_owned();
            let len = r.u32("data").map_err(wire)? as usize;
            let data = r.bytes(len, "data").map_err(wire)?;
            ClientOp::Send {
                seq,
                room,
                kind,
                data: Bytes::copy_from_slice(data),
            }
        }
        OP_ACK => {
            let user = r.str8("user").map_err(wire)?;
            let msg_seq = r.u64("msg_seq").map_err(wire)?;
            ClientOp::Ack {
                seq,
                user: (!user.is_empty()).then(|| user.to_owned()),
                msg_seq,
            }
        }
        // OP_PING: the only byte left after the caller's range check.
        _ => ClientOp::Ping { seq },
    })
}

/// The optional `epoch str8, since u64` ending a binary `auth` or `join`: present exactly when
/// bytes remain.
fn binary_since(r: &mut Reader<'_>, seq: u64) -> Result<Option<Since>, OpError> {
    if r.remaining() == 0 {
        return Ok(None);
    }
    let wire = |e| OpError::wire(seq, e);
    let epoch = r.str8("since.epoch").map_err(wire)?;
    if !is_valid_epoch(epoch.as_bytes()) {
        return Err(OpError::bad_request(seq, BAD_SINCE_EPOCH));
    }
    let since = r.u64("since.seq").map_err(wire)?;
    Ok(Some(Since {
        epoch: epoch.to_owned(),
        seq: since,
    }))
}

/// The `u32` length prefix of a raw TCP frame, once its 4 bytes are in `buf`. Callers check it
/// against their limits before waiting for that many bytes.
pub fn tcp_frame_len(buf: &[u8]) -> Option<usize> {
    match buf {
        [a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d]) as usize),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Shared encoding helpers
// ---------------------------------------------------------------------------------------------

/// How many bytes each byte takes inside a JSON string: 1 (as is), 2 (`\"`, `\\`, `\n`, ...) or
/// 6 (`\u00XX`, the other control characters). Bytes ≥ 0x80 are parts of UTF-8 sequences and
/// stay as they are.
static JSON_ESCAPED_LEN: [u8; 256] = {
    let mut table = [1u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = 6;
        b += 1;
    }
    table[0x08] = 2;
    table[0x0c] = 2;
    table[b'\n' as usize] = 2;
    table[b'\r' as usize] = 2;
    table[b'\t' as usize] = 2;
    table[b'"' as usize] = 2;
    table[b'\\' as usize] = 2;
    table
};

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Length of `s` once escaped as the contents of a JSON string.
fn json_escaped_len(s: &str) -> usize {
    s.bytes()
        .map(|b| JSON_ESCAPED_LEN[b as usize] as usize)
        .sum()
}

/// Writes `s` escaped as the contents of a JSON string (without the quotes), copying runs that
/// need no escaping in one go.
fn put_json_escaped(out: &mut BytesMut, s: &str) {
    let bytes = s.as_bytes();
    let mut run_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if JSON_ESCAPED_LEN[b as usize] == 1 {
            continue;
        }
        out.put_slice(&bytes[run_start..i]);
        match b {
            b'"' => out.put_slice(b"\\\""),
            b'\\' => out.put_slice(b"\\\\"),
            b'\n' => out.put_slice(b"\\n"),
            b'\r' => out.put_slice(b"\\r"),
            b'\t' => out.put_slice(b"\\t"),
            0x08 => out.put_slice(b"\\b"),
            0x0c => out.put_slice(b"\\f"),
            _ => {
                out.put_slice(b"\\u00");
                out.put_u8(HEX_DIGITS[usize::from(b >> 4)]);
                out.put_u8(HEX_DIGITS[usize::from(b & 0xf)]);
            }
        }
        run_start = i + 1;
    }
    out.put_slice(&bytes[run_start..]);
}

/// Number of decimal digits of `n`.
fn decimal_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |log| log as usize + 1)
}

fn put_decimal(out: &mut BytesMut, n: u64) {
    out.put_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `s` cut to at most `max` bytes at a char boundary, so a length-limited field stays valid
/// UTF-8 and the frame stays well-formed.
fn clamp_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn put_str8_clamped(out: &mut BytesMut, s: &str) {
    let s = clamp_str(s, u8::MAX as usize);
    out.put_u8(s.len() as u8);
    out.put_slice(s.as_bytes());
}

fn put_str16_clamped(out: &mut BytesMut, s: &str) {
    let s = clamp_str(s, u16::MAX as usize);
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
}

/// Where the measured encoders write: a buffer, or a [`Measure`] that only counts the bytes, so
/// one function gives both the exact size to allocate and the bytes to fill it with.
///
/// Method names differ from [`BufMut`]'s so that both traits can be in scope for a `BytesMut`.
trait Out {
    /// Bytes as they are.
    fn raw(&mut self, bytes: &[u8]);
    /// `s` escaped as the contents of a JSON string (without the quotes).
    fn escaped(&mut self, s: &str);
    /// `n` in decimal.
    fn decimal(&mut self, n: u64);

    fn be_u8(&mut self, n: u8) {
        self.raw(&[n]);
    }

    fn be_u16(&mut self, n: u16) {
        self.raw(&n.to_be_bytes());
    }

    fn be_u32(&mut self, n: u32) {
        self.raw(&n.to_be_bytes());
    }

    fn be_u64(&mut self, n: u64) {
        self.raw(&n.to_be_bytes());
    }

    /// A `str8`, cut at a char boundary to fit.
    fn str8(&mut self, s: &str) {
        let s = clamp_str(s, u8::MAX as usize);
        self.be_u8(s.len() as u8);
        self.raw(s.as_bytes());
    }

    /// A `str16`, cut at a char boundary to fit.
    fn str16(&mut self, s: &str) {
        let s = clamp_str(s, u16::MAX as usize);
        self.be_u16(s.len() as u16);
        self.raw(s.as_bytes());
    }
}

impl Out for BytesMut {
    fn raw(&mut self, bytes: &[u8]) {
        self.put_slice(bytes);
    }

    fn escaped(&mut self, s: &str) {
        put_json_escaped(self, s);
    }

    fn decimal(&mut self, n: u64) {
        put_decimal(self, n);
    }
}

/// An [`Out`] that counts what would be written.
#[derive(Default)]
struct Measure(usize);

impl Out for Measure {
    fn raw(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }

    fn escaped(&mut self, s: &str) {
        self.0 += json_escaped_len(s);
    }

    fn decimal(&mut self, n: u64) {
        self.0 += decimal_len(n);
    }
}

/// How many bytes `write` writes.
fn measure(write: impl FnOnce(&mut Measure)) -> usize {
    let mut m = Measure::default();
    write(&mut m);
    m.0
}

/// A complete server frame (framing included) whose payload `write` produces, in one
/// allocation of exactly its size.
fn measured_server_frame(format: WireFormat, write: impl Fn(&mut dyn Out)) -> BytesMut {
    let payload_len = measure(|m| write(m));
    let size = server_frame_header_len(format, payload_len) + payload_len;
    let mut out = BytesMut::with_capacity(size);
    put_server_frame_header(&mut out, format, payload_len);
    write(&mut out);
    debug_assert_eq!(out.len(), size, "server frame size mis-computed");
    out
}

/// Bytes of the framing in front of a server payload of `payload_len` bytes.
fn server_frame_header_len(format: WireFormat, payload_len: usize) -> usize {
    match format {
        WireFormat::WsJson | WireFormat::WsBinary => server_header_len(payload_len),
        WireFormat::Tcp => TCP_PREFIX_LEN,
    }
}

/// Writes the framing in front of a server payload: a final, unmasked WebSocket text or binary
/// frame header, or the TCP length prefix.
fn put_server_frame_header(out: &mut BytesMut, format: WireFormat, payload_len: usize) {
    match format {
        WireFormat::WsJson => put_server_header(out, OpCode::Text, payload_len),
        WireFormat::WsBinary => put_server_header(out, OpCode::Binary, payload_len),
        // Payloads come from messages bounded by the link's 16 MiB frames and by
        // MAX_MSGS_PER_BATCH, far below the 4 GiB a u32 prefix can describe.
        WireFormat::Tcp => out.put_u32(payload_len as u32),
    }
}

// ---------------------------------------------------------------------------------------------
// Server → client: encoding
// ---------------------------------------------------------------------------------------------

const REPLY_HEAD: &str = r#"{"op":"reply","seq":"#;
const REPLY_OK_TAIL: &str = r#","ok":true}"#;
const REPLY_ERR_CODE: &str = r#","ok":false,"error":{"code":""#;
const REPLY_ERR_MESSAGE: &str = r#"","message":""#;
const REPLY_ERR_TAIL: &str = r#""}}"#;

/// Encodes the reply to the op numbered `seq` as a complete frame: `Ok(())` for success or the
/// error code and message.
///
/// In binary formats the message is cut (at a char boundary) to the 65,535 bytes of its `str16`.
pub fn encode_reply(format: WireFormat, seq: u64, result: Result<(), (ErrorCode, &str)>) -> Bytes {
    build_reply(format, seq, result).freeze()
}

fn build_reply(format: WireFormat, seq: u64, result: Result<(), (ErrorCode, &str)>) -> BytesMut {
    let result = match (format, result) {
        (WireFormat::WsJson, result) => result,
        (_, Ok(())) => Ok(()),
        (_, Err((code, message))) => Err((code, clamp_str(message, u16::MAX as usize))),
    };
    let payload_len = match (format, result) {
        (WireFormat::WsJson, Ok(())) => REPLY_HEAD.len() + decimal_len(seq) + REPLY_OK_TAIL.len(),
        (WireFormat::WsJson, Err((code, message))) => {
            REPLY_HEAD.len()
                + decimal_len(seq)
                + REPLY_ERR_CODE.len()
                + code.as_str().len()
                + REPLY_ERR_MESSAGE.len()
                + json_escaped_len(message)
                + REPLY_ERR_TAIL.len()
        }
        (_, Ok(())) => 1 + 8 + 1,
        (_, Err((code, message))) => 1 + 8 + 1 + 1 + code.as_str().len() + 2 + message.len(),
    };
    let size = server_frame_header_len(format, payload_len) + payload_len;
    let mut out = BytesMut::with_capacity(size);
    put_server_frame_header(&mut out, format, payload_len);
    match (format, result) {
        (WireFormat::WsJson, result) => {
            out.put_slice(REPLY_HEAD.as_bytes());
            put_decimal(&mut out, seq);
            match result {
                Ok(()) => out.put_slice(REPLY_OK_TAIL.as_bytes()),
                Err((code, message)) => {
                    out.put_slice(REPLY_ERR_CODE.as_bytes());
                    // Codes are plain `[a-z_]`: nothing to escape.
                    out.put_slice(code.as_str().as_bytes());
                    out.put_slice(REPLY_ERR_MESSAGE.as_bytes());
                    put_json_escaped(&mut out, message);
                    out.put_slice(REPLY_ERR_TAIL.as_bytes());
                }
            }
        }
        (_, result) => {
            out.put_u8(OP_REPLY);
            out.put_u64(seq);
            match result {
                Ok(()) => out.put_u8(1),
                Err((code, message)) => {
                    out.put_u8(0);
                    put_str8_clamped(&mut out, code.as_str());
                    put_str16_clamped(&mut out, message);
                }
            }
        }
    }
    debug_assert_eq!(out.len(), size, "reply frame size mis-computed");
    out
}

/// Extra fields of a successful reply (section 2 shows their JSON, section 3 their binary
/// layout). Each part is written only when it is `Some`; with none of them the reply is exactly
/// [`encode_reply`]'s `Ok`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplyExtra<'a> {
    /// The channel's `epoch` and `last_seq` (join, auth and history replies).
    pub position: Option<(&'a str, u64)>,
    /// A join/auth that carried `since`: `Ok` is `"recovered":true`, `Err(f)` is
    /// `"recovered":false,"reason":f`.
    pub recovered: Option<Result<(), RecoveryFailure>>,
    /// A history reply's messages, laid out like a batch's. At most [`MAX_MSGS_PER_BATCH`] are
    /// sent (in every format, so that all formats carry the same reply); the edge's
    /// [`MAX_HISTORY_LIMIT`] keeps far below that.
    pub msgs: Option<&'a [PushMessage]>,
    /// A history reply: `false` when the messages after `since` are no longer all stored.
    /// Sent with `msgs` (and only with them: it is ignored when `msgs` is `None`), as `true`
    /// when left `None`, so a history reply always says whether it is complete.
    pub complete: Option<bool>,
    /// A `send` that was published: the room `seq` it got (`"msg_seq":n`).
    pub msg_seq: Option<u64>,
    /// A `send` that was accepted but not broadcast (`"broadcast":false`).
    pub not_broadcast: bool,
}

impl ReplyExtra<'_> {
    /// The history part: `complete` and the messages that are sent.
    fn history(&self) -> Option<(bool, &[PushMessage])> {
        self.msgs.map(|msgs| {
            let sent = &msgs[..msgs.len().min(MAX_MSGS_PER_BATCH)];
            (self.complete.unwrap_or(true), sent)
        })
    }

    /// The binary `flags` byte: which extras follow.
    fn flags(&self) -> u8 {
        let mut flags = 0;
        if self.position.is_some() {
            flags |= FLAG_POSITION;
        }
        if self.recovered.is_some() {
            flags |= FLAG_RECOVERED;
        }
        if self.msgs.is_some() {
            flags |= FLAG_MSGS;
        }
        if self.msg_seq.is_some() {
            flags |= FLAG_MSG_SEQ;
        }
        if self.not_broadcast {
            flags |= FLAG_NOT_BROADCAST;
        }
        flags
    }
}

/// The optional details of an error reply (section 2: inside `error`; section 3: a `flags` byte
/// after `message`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorDetail<'a> {
    /// `rate_limited`: how long until a send would be admitted.
    pub retry_after_ms: Option<u32>,
    /// `rejected`: the platform's own code (at most 255 bytes in binary formats).
    pub platform_code: Option<&'a str>,
}

impl ErrorDetail<'_> {
    fn flags(&self) -> u8 {
        let mut flags = 0;
        if self.retry_after_ms.is_some() {
            flags |= FLAG_RETRY_AFTER;
        }
        if self.platform_code.is_some() {
            flags |= FLAG_PLATFORM_CODE;
        }
        flags
    }
}

const REPLY_ERR_RETRY: &str = r#"","retry_after_ms":"#;
const REPLY_ERR_PLATFORM_CODE: &str = r#"","platform_code":""#;

/// Encodes an error reply to the op numbered `seq` with its details as a complete frame. With
/// [`ErrorDetail::default()`] the bytes are [`encode_reply`]'s for the same error.
pub fn encode_reply_error(
    format: WireFormat,
    seq: u64,
    code: ErrorCode,
    message: &str,
    detail: &ErrorDetail<'_>,
) -> Bytes {
    measured_server_frame(format, |out| match format {
        WireFormat::WsJson => {
            out.raw(REPLY_HEAD.as_bytes());
            out.decimal(seq);
            out.raw(REPLY_ERR_CODE.as_bytes());
            out.raw(code.as_str().as_bytes());
            out.raw(REPLY_ERR_MESSAGE.as_bytes());
            out.escaped(message);
            // Each detail closes the string before it; the tail closes the last one.
            let mut open_string = true;
            if let Some(ms) = detail.retry_after_ms {
                out.raw(REPLY_ERR_RETRY.as_bytes());
                out.decimal(ms.into());
                open_string = false;
            }
            if let Some(platform_code) = detail.platform_code {
                if open_string {
                    out.raw(REPLY_ERR_PLATFORM_CODE.as_bytes());
                } else {
                    out.raw(&REPLY_ERR_PLATFORM_CODE.as_bytes()[1..]);
                }
                out.escaped(platform_code);
                open_string = true;
            }
            if open_string {
                out.raw(REPLY_ERR_TAIL.as_bytes());
            } else {
                out.raw(b"}}");
            }
        }
        WireFormat::WsBinary | WireFormat::Tcp => {
            out.be_u8(OP_REPLY);
            out.be_u64(seq);
            out.be_u8(0);
            out.str8(code.as_str());
            out.str16(message);
            let flags = detail.flags();
            if flags != 0 {
                out.be_u8(flags);
                if let Some(ms) = detail.retry_after_ms {
                    out.be_u32(ms);
                }
                if let Some(platform_code) = detail.platform_code {
                    out.str8(platform_code);
                }
            }
        }
    })
    .freeze()
}

const REPLY_OK: &str = r#","ok":true"#;
const REPLY_EPOCH: &str = r#","epoch":""#;
const REPLY_LAST_SEQ: &str = r#"","last_seq":"#;
const REPLY_RECOVERED: &str = r#","recovered":true"#;
const REPLY_NOT_RECOVERED: &str = r#","recovered":false,"reason":""#;
const REPLY_COMPLETE: &str = r#","complete":true,"msgs":["#;
const REPLY_INCOMPLETE: &str = r#","complete":false,"msgs":["#;
const REPLY_MSG_SEQ: &str = r#","msg_seq":"#;
const REPLY_NOT_BROADCAST: &str = r#","broadcast":false"#;

/// Encodes the successful reply to the op numbered `seq` with its extras as a complete frame.
///
/// JSON writes the extras after `"ok":true` in the order `epoch`, `last_seq`, `recovered`,
/// `reason`, `complete`, `msgs`; binary formats add a `flags` byte and the parts it announces
/// (section 3) and cut an epoch or kind over 255 bytes at a char boundary, like batches.
/// With [`ReplyExtra::default()`] the bytes are [`encode_reply`]'s for `Ok(())`.
pub fn encode_reply_ok(format: WireFormat, seq: u64, extra: &ReplyExtra<'_>) -> Bytes {
    measured_server_frame(format, |out| match format {
        WireFormat::WsJson => write_json_reply_ok(out, seq, extra),
        WireFormat::WsBinary | WireFormat::Tcp => write_binary_reply_ok(out, seq, extra),
    })
    .freeze()
}

fn write_json_reply_ok(out: &mut dyn Out, seq: u64, extra: &ReplyExtra<'_>) {
    out.raw(REPLY_HEAD.as_bytes());
    out.decimal(seq);
    out.raw(REPLY_OK.as_bytes());
    if let Some((epoch, last_seq)) = extra.position {
        out.raw(REPLY_EPOCH.as_bytes());
        out.escaped(epoch);
        out.raw(REPLY_LAST_SEQ.as_bytes());
        out.decimal(last_seq);
    }
    match extra.recovered {
        None => {}
        Some(Ok(())) => out.raw(REPLY_RECOVERED.as_bytes()),
        Some(Err(failure)) => {
            out.raw(REPLY_NOT_RECOVERED.as_bytes());
            // Reasons are plain `[a-z_]`: nothing to escape.
            out.raw(failure.as_str().as_bytes());
            out.raw(b"\"");
        }
    }
    if let Some((complete, msgs)) = extra.history() {
        out.raw(
            if complete {
                REPLY_COMPLETE
            } else {
                REPLY_INCOMPLETE
            }
            .as_bytes(),
        );
        for (i, msg) in msgs.iter().enumerate() {
            if i > 0 {
                out.raw(b",");
            }
            write_json_msg(out, msg);
        }
        out.raw(b"]");
    }
    if let Some(msg_seq) = extra.msg_seq {
        out.raw(REPLY_MSG_SEQ.as_bytes());
        out.decimal(msg_seq);
    }
    if extra.not_broadcast {
        out.raw(REPLY_NOT_BROADCAST.as_bytes());
    }
    out.raw(b"}");
}

fn write_binary_reply_ok(out: &mut dyn Out, seq: u64, extra: &ReplyExtra<'_>) {
    out.be_u8(OP_REPLY);
    out.be_u64(seq);
    out.be_u8(1);
    let flags = extra.flags();
    if flags == 0 {
        return;
    }
    out.be_u8(flags);
    if let Some((epoch, last_seq)) = extra.position {
        out.str8(epoch);
        out.be_u64(last_seq);
    }
    if let Some(recovered) = extra.recovered {
        out.be_u8(recovered.err().map_or(0, RecoveryFailure::code));
    }
    if let Some((complete, msgs)) = extra.history() {
        out.be_u8(u8::from(complete));
        // `history` keeps at most MAX_MSGS_PER_BATCH (= u16::MAX) messages.
        out.be_u16(msgs.len() as u16);
        for msg in msgs {
            write_binary_msg(out, msg);
        }
    }
    if let Some(msg_seq) = extra.msg_seq {
        out.be_u64(msg_seq);
    }
}

const ROOM_HEAD: &str = r#"{"op":"room","room":""#;
const ROOM_ONLINE: &str = r#"","online":"#;
const ROOM_USERS: &str = r#","users":"#;

/// Encodes a room's online count as a complete frame (JSON `{"op":"room",…}`, binary `0x84`):
/// `online` connections and `users` distinct users in `room`. A binary format cuts a room id
/// over 255 bytes at a char boundary.
pub fn encode_room_online(format: WireFormat, room: &str, online: u32, users: u32) -> Bytes {
    measured_server_frame(format, |out| match format {
        WireFormat::WsJson => {
            out.raw(ROOM_HEAD.as_bytes());
            out.escaped(room);
            out.raw(ROOM_ONLINE.as_bytes());
            out.decimal(online.into());
            out.raw(ROOM_USERS.as_bytes());
            out.decimal(users.into());
            out.raw(b"}");
        }
        WireFormat::WsBinary | WireFormat::Tcp => {
            out.be_u8(OP_ROOM);
            out.str8(room);
            out.be_u32(online);
            out.be_u32(users);
        }
    })
    .freeze()
}

const BATCH_ROOM_HEAD: &str = r#"{"op":"batch","room":""#;
const BATCH_USER_HEAD: &str = r#"{"op":"batch","user":""#;
const BATCH_ID_TAIL: &str = r#"","msgs":["#;
const BATCH_BROADCAST_HEAD: &str = r#"{"op":"batch","broadcast":true,"msgs":["#;
const BATCH_TAIL: &str = "]}";
const MSG_SEQ: &str = r#"{"seq":"#;
const MSG_PRIORITY: &str = r#","p":"#;
const MSG_KIND: &str = r#","kind":""#;
const MSG_MERGED: &str = r#"","merged":"#;
const MSG_FINAL: &str = r#","final":true"#;
const MSG_FROM: &str = r#","from":""#;
const MSG_ACK: &str = r#","ack":true"#;
const MSG_DATA: &str = r#","data":"#;
const MSG_TAIL: &str = "}";

/// Bytes of the fixed part of one message in a binary batch: `seq u64`, `p u8`, the length byte
/// of `kind` and the length of `data`.
const BINARY_MSG_FIXED_LEN: usize = 8 + 1 + 1 + 4;

/// The bytes one message adds to a batch frame's payload in its largest wire format (JSON: the
/// message object and its separating comma; binary: its fixed fields, `kind` and `data`).
pub fn batch_message_len(msg: &PushMessage) -> usize {
    let json = json_msg_len(msg) + 1;
    json.max(binary_msg_len(msg))
}

/// Bytes of one message in a binary batch or history reply.
fn binary_msg_len(msg: &PushMessage) -> usize {
    let merged = if msg.merged > 0 { 4 } else { 0 };
    let from = msg
        .from
        .as_deref()
        .map_or(0, |from| 1 + clamp_str(from, u8::MAX as usize).len());
    BINARY_MSG_FIXED_LEN
        + merged
        + from
        + clamp_str(&msg.kind, u8::MAX as usize).len()
        + msg.data.len()
}

/// Encodes one batch of pushes for `target` as complete wire bytes, in the order given.
///
/// `data` of every message must already be valid JSON text (the control plane guarantees it):
/// JSON frames splice it in byte for byte. Kinds and ids are escaped as needed. Binary formats
/// cut a `kind` or id over 255 bytes (impossible for messages that came over the link, where
/// they are `str8` too) at a char boundary to keep the frame well-formed.
///
/// Callers should pass at most [`MAX_MSGS_PER_BATCH`] messages. If they pass more, JSON still
/// makes one frame (it has no count field), while binary formats return consecutive frames of
/// at most that many messages each, in order, in the same buffer: nothing is dropped and the
/// bytes remain a valid frame stream.
pub fn encode_batch(format: WireFormat, target: &Target, msgs: &[PushMessage]) -> Bytes {
    build_batch(format, target, msgs).freeze()
}

fn build_batch(format: WireFormat, target: &Target, msgs: &[PushMessage]) -> BytesMut {
    match format {
        WireFormat::WsJson => build_json_batch(target, msgs),
        WireFormat::WsBinary | WireFormat::Tcp => build_binary_batches(format, target, msgs),
    }
}

fn json_msg_len(msg: &PushMessage) -> usize {
    MSG_SEQ.len()
        + decimal_len(msg.seq)
        + MSG_PRIORITY.len()
        + decimal_len(msg.priority.into())
        + MSG_KIND.len()
        + json_escaped_len(&msg.kind)
        + if msg.merged > 0 {
            MSG_MERGED.len() + decimal_len(msg.merged.into())
        } else {
            1 // the closing quote of `kind`
        }
        + if msg.is_final { MSG_FINAL.len() } else { 0 }
        + msg
            .from
            .as_deref()
            .map_or(0, |from| MSG_FROM.len() + json_escaped_len(from) + 1)
        + if msg.ack { MSG_ACK.len() } else { 0 }
        + MSG_DATA.len()
        + msg.data.len()
        + MSG_TAIL.len()
}

/// One message of a JSON batch or history reply:
/// `{"seq":…,"p":…,"kind":"…"[,"merged":…][,"final":true][,"from":"…"][,"ack":true],"data":…}`,
/// exactly [`json_msg_len`] bytes.
fn write_json_msg<O: Out + ?Sized>(out: &mut O, msg: &PushMessage) {
    out.raw(MSG_SEQ.as_bytes());
    out.decimal(msg.seq);
    out.raw(MSG_PRIORITY.as_bytes());
    out.decimal(msg.priority.into());
    out.raw(MSG_KIND.as_bytes());
    out.escaped(&msg.kind);
    if msg.merged > 0 {
        out.raw(MSG_MERGED.as_bytes());
        out.decimal(msg.merged.into());
    } else {
        out.raw(b"\"");
    }
    if msg.is_final {
        out.raw(MSG_FINAL.as_bytes());
    }
    if let Some(from) = msg.from.as_deref() {
        out.raw(MSG_FROM.as_bytes());
        out.escaped(from);
        out.raw(b"\"");
    }
    if msg.ack {
        out.raw(MSG_ACK.as_bytes());
    }
    out.raw(MSG_DATA.as_bytes());
    out.raw(&msg.data);
    out.raw(MSG_TAIL.as_bytes());
}

/// One message of a binary batch or history reply: `seq u64`, `p u8` with the flags, `merged
/// u32` when merged, `from str8` when sent by a viewer, `kind str8`, `data bytes32`.
fn write_binary_msg<O: Out + ?Sized>(out: &mut O, msg: &PushMessage) {
    out.be_u64(msg.seq);
    out.be_u8(msg.priority_byte());
    if msg.merged > 0 {
        out.be_u32(msg.merged);
    }
    if let Some(from) = msg.from.as_deref() {
        out.str8(from);
    }
    out.str8(&msg.kind);
    // `data` came over the link inside a frame of at most 16 MiB.
    out.be_u32(msg.data.len() as u32);
    out.raw(&msg.data);
}

fn build_json_batch(target: &Target, msgs: &[PushMessage]) -> BytesMut {
    // Up to the opening `[` of `msgs`: a fixed head, plus the escaped id and BATCH_ID_TAIL for
    // rooms and users.
    let (head, id) = match target {
        Target::Room(id) => (BATCH_ROOM_HEAD, Some(id)),
        Target::User(id) => (BATCH_USER_HEAD, Some(id)),
        Target::Broadcast => (BATCH_BROADCAST_HEAD, None),
    };
    let head_len = head.len() + id.map_or(0, |id| json_escaped_len(id) + BATCH_ID_TAIL.len());
    let separators = msgs.len().saturating_sub(1);
    let payload_len =
        head_len + msgs.iter().map(json_msg_len).sum::<usize>() + separators + BATCH_TAIL.len();
    let size = server_header_len(payload_len) + payload_len;
    let mut out = BytesMut::with_capacity(size);
    put_server_header(&mut out, OpCode::Text, payload_len);
    out.put_slice(head.as_bytes());
    if let Some(id) = id {
        put_json_escaped(&mut out, id);
        out.put_slice(BATCH_ID_TAIL.as_bytes());
    }
    for (i, msg) in msgs.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        write_json_msg(&mut out, msg);
    }
    out.put_slice(BATCH_TAIL.as_bytes());
    debug_assert_eq!(out.len(), size, "JSON batch size mis-computed");
    out
}

/// The message groups that become binary frames: one frame per [`MAX_MSGS_PER_BATCH`]
/// messages, and a single empty frame for an empty batch.
fn binary_batch_chunks(msgs: &[PushMessage]) -> impl Iterator<Item = &[PushMessage]> + '_ {
    let empty = msgs.is_empty().then_some(msgs);
    empty.into_iter().chain(msgs.chunks(MAX_MSGS_PER_BATCH))
}

fn binary_batch_payload_len(id: &str, msgs: &[PushMessage]) -> usize {
    let msgs_len: usize = msgs.iter().map(binary_msg_len).sum();
    // op, target, id str8, count u16, messages
    1 + 1 + 1 + id.len() + 2 + msgs_len
}

fn build_binary_batches(format: WireFormat, target: &Target, msgs: &[PushMessage]) -> BytesMut {
    let id = clamp_str(target.id(), u8::MAX as usize);
    let size: usize = binary_batch_chunks(msgs)
        .map(|chunk| {
            let payload_len = binary_batch_payload_len(id, chunk);
            server_frame_header_len(format, payload_len) + payload_len
        })
        .sum();
    let mut out = BytesMut::with_capacity(size);
    for chunk in binary_batch_chunks(msgs) {
        put_server_frame_header(&mut out, format, binary_batch_payload_len(id, chunk));
        out.put_u8(OP_BATCH);
        out.put_u8(target.tag());
        put_str8_clamped(&mut out, id);
        // Chunks hold at most MAX_MSGS_PER_BATCH (= u16::MAX) messages.
        out.put_u16(chunk.len() as u16);
        for msg in chunk {
            write_binary_msg(&mut out, msg);
        }
    }
    debug_assert_eq!(out.len(), size, "binary batch size mis-computed");
    out
}

/// Encodes what the server sends just before closing a connection: for WebSocket formats a
/// close frame carrying `code` and `reason` (cut at a char boundary to the 123 bytes a control
/// frame leaves), for raw TCP a `0x83` close frame (reason cut to 255 bytes).
pub fn encode_close(format: WireFormat, code: u16, reason: &str) -> Bytes {
    build_close(format, code, reason).freeze()
}

fn build_close(format: WireFormat, code: u16, reason: &str) -> BytesMut {
    match format {
        WireFormat::WsJson | WireFormat::WsBinary => {
            let reason = clamp_str(reason, MAX_WS_CLOSE_REASON);
            let payload_len = 2 + reason.len();
            let size = server_header_len(payload_len) + payload_len;
            let mut out = BytesMut::with_capacity(size);
            put_server_header(&mut out, OpCode::Close, payload_len);
            out.put_u16(code);
            out.put_slice(reason.as_bytes());
            debug_assert_eq!(out.len(), size, "close frame size mis-computed");
            out
        }
        WireFormat::Tcp => {
            let reason = clamp_str(reason, u8::MAX as usize);
            let payload_len = 1 + 2 + 1 + reason.len();
            let size = TCP_PREFIX_LEN + payload_len;
            let mut out = BytesMut::with_capacity(size);
            out.put_u32(payload_len as u32);
            out.put_u8(OP_CLOSE);
            out.put_u16(code);
            put_str8_clamped(&mut out, reason);
            debug_assert_eq!(out.len(), size, "close frame size mis-computed");
            out
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Client side: encoding ops (load generator, tests)
// ---------------------------------------------------------------------------------------------

// `{"op":"<name>","seq":<seq>[,"<field>":"<value>"][,"since":…][,"limit":<n>]}`
const OP_HEAD: &str = r#"{"op":""#;
const OP_SEQ: &str = r#"","seq":"#;
const OP_SINCE_EPOCH: &str = r#","since":{"epoch":""#;
const OP_SINCE_SEQ: &str = r#"","seq":"#;
const OP_SINCE: &str = r#","since":"#;
const OP_LIMIT: &str = r#","limit":"#;

/// Writes `,"key":"value"` with `value` escaped.
fn write_json_string_field(out: &mut dyn Out, key: &str, value: &str) {
    out.raw(b",\"");
    out.raw(key.as_bytes());
    out.raw(b"\":\"");
    out.escaped(value);
    out.raw(b"\"");
}

/// Writes `,"since":{"epoch":"…","seq":…}` when there is a position.
fn write_json_since(out: &mut dyn Out, since: &Option<Since>) {
    if let Some(since) = since {
        out.raw(OP_SINCE_EPOCH.as_bytes());
        out.escaped(&since.epoch);
        out.raw(OP_SINCE_SEQ.as_bytes());
        out.decimal(since.seq);
        out.raw(b"}");
    }
}

fn write_json_op(out: &mut dyn Out, op: &ClientOp) {
    let name = match op {
        ClientOp::Auth { .. } => "auth",
        ClientOp::Join { .. } => "join",
        ClientOp::Leave { .. } => "leave",
        ClientOp::Ping { .. } => "ping",
        ClientOp::History { .. } => "history",
        ClientOp::Send { .. } => "send",
        ClientOp::Ack { .. } => "ack",
    };
    out.raw(OP_HEAD.as_bytes());
    out.raw(name.as_bytes());
    out.raw(OP_SEQ.as_bytes());
    out.decimal(op.seq());
    match op {
        ClientOp::Auth { token, since, .. } => {
            write_json_string_field(out, "token", token);
            write_json_since(out, since);
        }
        ClientOp::Join { room, since, .. } => {
            write_json_string_field(out, "room", room);
            write_json_since(out, since);
        }
        ClientOp::Leave { room, .. } => write_json_string_field(out, "room", room),
        ClientOp::Ping { .. } => {}
        ClientOp::History {
            room, since, limit, ..
        } => {
            write_json_string_field(out, "room", room);
            out.raw(OP_SINCE.as_bytes());
            out.decimal(*since);
            out.raw(OP_LIMIT.as_bytes());
            out.decimal((*limit).into());
        }
        ClientOp::Send {
            room, kind, data, ..
        } => {
            write_json_string_field(out, "room", room);
            write_json_string_field(out, "kind", kind);
            // The client's JSON, spliced as it is (a client that sends non-JSON here breaks
            // its own op, which is then answered `bad_request`).
            out.raw(b",\"data\":");
            out.raw(data);
        }
        ClientOp::Ack { user, msg_seq, .. } => {
            if let Some(user) = user {
                write_json_string_field(out, "user", user);
            }
            out.raw(b",\"msg_seq\":");
            out.decimal(*msg_seq);
        }
    }
    out.raw(b"}");
}

/// Writes the optional `epoch str8, since u64` that ends a binary `auth` or `join`.
fn write_binary_since(out: &mut dyn Out, since: &Option<Since>) {
    if let Some(since) = since {
        out.str8(&since.epoch);
        out.be_u64(since.seq);
    }
}

fn write_binary_op(out: &mut dyn Out, op: &ClientOp) {
    match op {
        ClientOp::Auth { seq, token, since } => {
            out.be_u8(OP_AUTH);
            out.be_u64(*seq);
            out.str16(token);
            write_binary_since(out, since);
        }
        ClientOp::Join { seq, room, since } => {
            out.be_u8(OP_JOIN);
            out.be_u64(*seq);
            out.str8(room);
            write_binary_since(out, since);
        }
        ClientOp::Leave { seq, room } => {
            out.be_u8(OP_LEAVE);
            out.be_u64(*seq);
            out.str8(room);
        }
        ClientOp::Ping { seq } => {
            out.be_u8(OP_PING);
            out.be_u64(*seq);
        }
        ClientOp::History {
            seq,
            room,
            since,
            limit,
        } => {
            out.be_u8(OP_HISTORY);
            out.be_u64(*seq);
            out.str8(room);
            out.be_u64(*since);
            out.be_u16(u16::try_from(*limit).unwrap_or(u16::MAX));
        }
        ClientOp::Send {
            seq,
            room,
            kind,
            data,
        } => {
            out.be_u8(OP_SEND);
            out.be_u64(*seq);
            out.str8(room);
            out.str8(kind);
            out.be_u32(u32::try_from(data.len()).unwrap_or(u32::MAX));
            out.raw(data);
        }
        ClientOp::Ack { seq, user, msg_seq } => {
            out.be_u8(OP_ACK);
            out.be_u64(*seq);
            out.str8(user.as_deref().unwrap_or(""));
            out.be_u64(*msg_seq);
        }
    }
}

/// Bytes of the header of a masked client frame carrying `payload_len` bytes: the server
/// header plus the 4-byte masking key.
fn client_header_len(payload_len: usize) -> usize {
    server_header_len(payload_len) + 4
}

/// Builds a final, masked client frame (RFC 6455 §5.2–5.3) whose payload `write` produces;
/// `payload_len` must be what `write` writes.
fn masked_frame(
    opcode: OpCode,
    payload_len: usize,
    mask: [u8; 4],
    write: impl FnOnce(&mut BytesMut),
) -> BytesMut {
    let size = client_header_len(payload_len) + payload_len;
    let mut out = BytesMut::with_capacity(size);
    out.put_u8(0x80 | opcode as u8);
    if payload_len < 126 {
        out.put_u8(0x80 | payload_len as u8);
    } else if payload_len <= u16::MAX as usize {
        out.put_u8(0x80 | 126);
        out.put_u16(payload_len as u16);
    } else {
        out.put_u8(0x80 | 127);
        out.put_u64(payload_len as u64);
    }
    out.put_slice(&mask);
    let payload_start = out.len();
    write(&mut out);
    for (i, b) in out[payload_start..].iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
    debug_assert_eq!(out.len(), size, "client frame size mis-computed");
    out
}

/// Encodes a client op as a complete wire frame, as a client sends it: a masked WebSocket text
/// frame with JSON (`WsJson`), a masked binary frame (`WsBinary`, masked with `mask`), or a
/// length-prefixed binary op (`Tcp`, `mask` unused).
///
/// Binary formats cut a token over 65,535 bytes, or a room or epoch over 255 bytes, at a char
/// boundary, as their `str16`/`str8` fields cannot hold more, and a history `limit` over
/// 65,535 to that (the decoder refuses anything over [`MAX_HISTORY_LIMIT`] anyway). Nothing is
/// validated: tests send invalid ops on purpose.
pub fn encode_op(format: WireFormat, op: &ClientOp, mask: [u8; 4]) -> Bytes {
    build_op(format, op, mask).freeze()
}

fn build_op(format: WireFormat, op: &ClientOp, mask: [u8; 4]) -> BytesMut {
    match format {
        WireFormat::WsJson => {
            let len = measure(|m| write_json_op(m, op));
            masked_frame(OpCode::Text, len, mask, |out| write_json_op(out, op))
        }
        WireFormat::WsBinary => {
            let len = measure(|m| write_binary_op(m, op));
            masked_frame(OpCode::Binary, len, mask, |out| write_binary_op(out, op))
        }
        WireFormat::Tcp => {
            let payload_len = measure(|m| write_binary_op(m, op));
            let size = TCP_PREFIX_LEN + payload_len;
            let mut out = BytesMut::with_capacity(size);
            out.put_u32(payload_len as u32);
            write_binary_op(&mut out, op);
            debug_assert_eq!(out.len(), size, "TCP op size mis-computed");
            out
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Client side: decoding server messages (load generator, tests)
// ---------------------------------------------------------------------------------------------

/// A message from the server, as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMsg {
    /// The reply to the op numbered `seq`: `Ok(())` or `Err((code, message))`; a successful
    /// reply's extras are in `details` (all `None` for an error reply).
    Reply {
        seq: u64,
        result: Result<(), (String, String)>,
        details: ReplyDetails,
    },
    /// Pushed messages for one channel; each `data` is the verbatim JSON text.
    Batch {
        target: Target,
        msgs: Vec<PushMessage>,
    },
    /// The server is closing the connection (raw TCP's `0x83` frame; WebSocket uses close
    /// frames, which are not JSON).
    Close { code: u16, reason: String },
    /// A room's online count: `online` connections, `users` distinct users.
    Room {
        room: String,
        online: u32,
        users: u32,
    },
}

/// The extras of a successful reply as a client reads them (see [`ReplyExtra`]). `epoch` and
/// `last_seq` come together, and so do `complete` and `msgs`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplyDetails {
    pub epoch: Option<String>,
    pub last_seq: Option<u64>,
    pub recovered: Option<Result<(), RecoveryFailure>>,
    pub complete: Option<bool>,
    pub msgs: Option<Vec<PushMessage>>,
    pub msg_seq: Option<u64>,
    pub not_broadcast: bool,
    /// An error reply's `retry_after_ms`.
    pub retry_after_ms: Option<u32>,
    /// An error reply's `platform_code`.
    pub platform_code: Option<String>,
}

impl ReplyDetails {
    /// The extras that encode these details: [`encode_reply_ok`] of them gives back the reply
    /// they were decoded from.
    pub fn as_extra(&self) -> ReplyExtra<'_> {
        ReplyExtra {
            position: self.epoch.as_deref().zip(self.last_seq),
            recovered: self.recovered,
            msgs: self.msgs.as_deref(),
            complete: self.complete,
            msg_seq: self.msg_seq,
            not_broadcast: self.not_broadcast,
        }
    }

    /// The details of an error reply that encode these details.
    pub fn as_error_detail(&self) -> ErrorDetail<'_> {
        ErrorDetail {
            retry_after_ms: self.retry_after_ms,
            platform_code: self.platform_code.as_deref(),
        }
    }
}

#[derive(Deserialize)]
struct RawServerMsg<'a> {
    #[serde(borrow)]
    op: Cow<'a, str>,
    seq: Option<u64>,
    ok: Option<bool>,
    error: Option<RawReplyError>,
    room: Option<String>,
    user: Option<String>,
    broadcast: Option<bool>,
    #[serde(borrow)]
    msgs: Option<Vec<RawPush<'a>>>,
    epoch: Option<String>,
    last_seq: Option<u64>,
    recovered: Option<bool>,
    reason: Option<String>,
    complete: Option<bool>,
    online: Option<u32>,
    users: Option<u32>,
    msg_seq: Option<u64>,
}

#[derive(Deserialize)]
struct RawReplyError {
    code: String,
    message: String,
    retry_after_ms: Option<u32>,
    platform_code: Option<String>,
}

#[derive(Deserialize)]
struct RawPush<'a> {
    seq: u64,
    p: u8,
    kind: String,
    #[serde(default)]
    merged: Option<u32>,
    #[serde(default, rename = "final")]
    is_final: Option<bool>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    ack: Option<bool>,
    /// Borrowed so the publisher's JSON comes back byte for byte, exactly as it was spliced in.
    #[serde(borrow)]
    data: &'a RawValue,
}

fn check_priority(p: u8) -> Result<u8, OpError> {
    if usize::from(p) < PRIORITIES {
        Ok(p)
    } else {
        Err(OpError::bad_request(
            0,
            format!("priority {p} out of range"),
        ))
    }
}

/// The messages of a JSON batch or history reply, with their `data` copied verbatim.
fn json_msgs(raw: Vec<RawPush<'_>>) -> Result<Vec<PushMessage>, OpError> {
    raw.into_iter()
        .map(|m| {
            // What `write_json_msg` writes: `merged` only when above 0, `final` only when true.
            if m.merged == Some(0) || m.is_final == Some(false) || m.ack == Some(false) {
                return Err(OpError::bad_request(
                    0,
                    "a message has `merged` above 0 and `final` and `ack` true, or leaves them out",
                ));
            }
            Ok(PushMessage {
                seq: m.seq,
                priority: check_priority(m.p)?,
                kind: m.kind,
                data: Bytes::copy_from_slice(m.data.get().as_bytes()),
                merged: m.merged.unwrap_or(0),
                is_final: m.is_final.unwrap_or(false),
                from: m.from.map(String::into_boxed_str),
                ack: m.ack.unwrap_or(false),
            })
        })
        .collect()
}

/// The extras of a JSON reply numbered `seq`, checked to be what [`encode_reply_ok`] writes.
fn json_reply_details(raw: &mut RawServerMsg<'_>, seq: u64) -> Result<ReplyDetails, OpError> {
    let bad = |message: &str| OpError::bad_request(seq, message);
    if raw.epoch.is_some() != raw.last_seq.is_some() {
        return Err(bad("reply needs `epoch` and `last_seq` together"));
    }
    let recovered = match (raw.recovered, raw.reason.take()) {
        (None, None) => None,
        (Some(true), None) => Some(Ok(())),
        (Some(false), Some(reason)) => Some(Err(RecoveryFailure::from_str(&reason)
            .ok_or_else(|| bad("reply has an unknown `reason`"))?)),
        _ => {
            return Err(bad(
                "reply needs `reason` exactly when `recovered` is false",
            ))
        }
    };
    let (complete, msgs) = match (raw.complete, raw.msgs.take()) {
        (None, None) => (None, None),
        (Some(complete), Some(msgs)) => (Some(complete), Some(json_msgs(msgs)?)),
        _ => return Err(bad("reply needs `complete` and `msgs` together")),
    };
    let not_broadcast = match raw.broadcast.take() {
        None => false,
        Some(false) => true,
        Some(true) => return Err(bad("a reply's `broadcast` is only ever false")),
    };
    Ok(ReplyDetails {
        epoch: raw.epoch.take(),
        last_seq: raw.last_seq,
        recovered,
        complete,
        msgs,
        msg_seq: raw.msg_seq,
        not_broadcast,
        retry_after_ms: None,
        platform_code: None,
    })
}

/// Decodes a server message from the JSON text of a WebSocket text frame: a `reply` (with its
/// extras), a `batch` (whose `data` values come back as their verbatim JSON text) or a `room`
/// count.
pub fn decode_server_json(text: &[u8]) -> Result<ServerMsg, OpError> {
    if !starts_json_object(text) {
        return Err(OpError::bad_request(
            0,
            "a server message must be a JSON object",
        ));
    }
    let mut raw: RawServerMsg<'_> = serde_json::from_slice(text)
        .map_err(|e| OpError::bad_request(0, format!("malformed JSON: {e}")))?;
    match &*raw.op {
        "reply" => {
            let seq = raw
                .seq
                .ok_or_else(|| OpError::bad_request(0, "reply without `seq`"))?;
            let (result, details) = match (raw.ok, raw.error.take()) {
                (Some(true), None) => (Ok(()), json_reply_details(&mut raw, seq)?),
                (Some(false), Some(error)) => {
                    let mut details = json_reply_details(&mut raw, seq)?;
                    if details != ReplyDetails::default() {
                        return Err(OpError::bad_request(
                            seq,
                            "an error reply carries no extras",
                        ));
                    }
                    details.retry_after_ms = error.retry_after_ms;
                    details.platform_code = error.platform_code;
                    (Err((error.code, error.message)), details)
                }
                _ => {
                    return Err(OpError::bad_request(
                        seq,
                        "reply needs `ok`, and `error` exactly when it is false",
                    ))
                }
            };
            Ok(ServerMsg::Reply {
                seq,
                result,
                details,
            })
        }
        "batch" => {
            let target = match (raw.room, raw.user, raw.broadcast) {
                (Some(room), None, None) => Target::Room(room),
                (None, Some(user), None) => Target::User(user),
                (None, None, Some(true)) => Target::Broadcast,
                _ => {
                    return Err(OpError::bad_request(
                        0,
                        "batch needs exactly one of `room`, `user`, `broadcast: true`",
                    ))
                }
            };
            let msgs = json_msgs(
                raw.msgs
                    .ok_or_else(|| OpError::bad_request(0, "batch without `msgs`"))?,
            )?;
            Ok(ServerMsg::Batch { target, msgs })
        }
        "room" => match (raw.room, raw.online, raw.users) {
            (Some(room), Some(online), Some(users)) => Ok(ServerMsg::Room {
                room,
                online,
                users,
            }),
            _ => Err(OpError::bad_request(
                0,
                "room needs `room`, `online` and `users`",
            )),
        },
        _ => Err(OpError::new(
            0,
            ErrorCode::UnknownOp,
            "`op` must be reply, batch or room",
        )),
    }
}

/// One pushed message borrowed from a binary batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushRef<'a> {
    pub seq: u64,
    pub priority: u8,
    pub kind: &'a str,
    /// The publisher's JSON text.
    pub data: &'a [u8],
    /// Messages a merge rule combined into this one (0: no merge rule).
    pub merged: u32,
    pub is_final: bool,
    /// The viewer who sent it, for a client `send` published into the room.
    pub from: Option<&'a str>,
    /// The message asks for an `ack`.
    pub ack: bool,
}

/// A batch's target, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetRef<'a> {
    Room(&'a str),
    User(&'a str),
    Broadcast,
}

impl<'a> From<&'a Target> for TargetRef<'a> {
    fn from(target: &'a Target) -> TargetRef<'a> {
        match target {
            Target::Room(id) => TargetRef::Room(id),
            Target::User(id) => TargetRef::User(id),
            Target::Broadcast => TargetRef::Broadcast,
        }
    }
}

impl TargetRef<'_> {
    pub fn to_target(self) -> Target {
        match self {
            TargetRef::Room(id) => Target::Room(id.to_owned()),
            TargetRef::User(id) => Target::User(id.to_owned()),
            TargetRef::Broadcast => Target::Broadcast,
        }
    }
}

/// A binary batch borrowed from its payload, validated whole when it was made: a client that
/// only counts and times messages (the load generator) reads 100-message frames without
/// allocating.
#[derive(Debug, Clone, Copy)]
pub struct BatchView<'a> {
    pub target: TargetRef<'a>,
    count: u16,
    /// The messages: `count` × (`seq u64`, `p u8`, `kind str8`, `data bytes32`).
    body: &'a [u8],
}

impl<'a> BatchView<'a> {
    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn iter(&self) -> BatchIter<'a> {
        BatchIter {
            reader: Reader::new(self.body),
            left: self.count,
        }
    }

    /// Reads one message; `view_server_binary` ran this over the whole body before handing the
    /// view out, so on a view it cannot fail.
    fn read_push(r: &mut Reader<'a>) -> Result<PushRef<'a>, OpError> {
        let wire = |e| OpError::wire(0, e);
        let seq = r.u64("seq").map_err(wire)?;
        let byte = r.u8("p").map_err(wire)?;
        let bad_byte = || {
            OpError::bad_request(
                0,
                format!("priority byte {byte} is not a priority 0..3 with merge flags"),
            )
        };
        let flags = split_priority_byte(byte).ok_or_else(bad_byte)?;
        let merged = if flags.merged_follows {
            match r.u32("merged").map_err(wire)? {
                0 => return Err(bad_byte()),
                n => n,
            }
        } else {
            0
        };
        let from = if flags.from_follows {
            Some(r.str8("from").map_err(wire)?)
        } else {
            None
        };
        let kind = r.str8("kind").map_err(wire)?;
        let n = r.u32("data").map_err(wire)? as usize;
        let data = r.bytes(n, "data").map_err(wire)?;
        Ok(PushRef {
            seq,
            priority: flags.priority,
            kind,
            data,
            merged,
            is_final: flags.is_final,
            from,
            ack: flags.ack,
        })
    }
}

/// The messages of a [`BatchView`], in order.
pub struct BatchIter<'a> {
    reader: Reader<'a>,
    left: u16,
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = PushRef<'a>;

    fn next(&mut self) -> Option<PushRef<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        BatchView::read_push(&mut self.reader).ok()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = usize::from(self.left);
        (left, Some(left))
    }
}

impl PushRef<'_> {
    /// The message, copied.
    pub fn to_message(self) -> PushMessage {
        PushMessage {
            seq: self.seq,
            priority: self.priority,
            kind: self.kind.to_owned(),
            data: Bytes::copy_from_slice(self.data),
            merged: self.merged,
            is_final: self.is_final,
            from: self.from.map(Box::from),
            ack: self.ack,
        }
    }
}

/// A binary server message as [`view_server_binary`] reads it: batches borrowed, the rare
/// replies, closes and room counts owned.
#[derive(Debug, Clone)]
pub enum ServerMsgView<'a> {
    Batch(BatchView<'a>),
    /// A reply, a close or a room count.
    Other(ServerMsg),
}

/// Decodes a binary server message: the payload of a WebSocket binary frame or the bytes after
/// a raw TCP length prefix (section 3: `0x81` reply, `0x82` batch, `0x83` close, `0x84` room).
pub fn decode_server_binary(payload: &[u8]) -> Result<ServerMsg, OpError> {
    Ok(match view_server_binary(payload)? {
        ServerMsgView::Batch(batch) => ServerMsg::Batch {
            target: batch.target.to_target(),
            msgs: batch.iter().map(PushRef::to_message).collect(),
        },
        ServerMsgView::Other(msg) => msg,
    })
}

/// The extras after `ok = 1` of a binary reply numbered `seq`: nothing, or a non-zero `flags`
/// byte and the parts it announces, each checked to be what [`encode_reply_ok`] writes.
fn binary_reply_details(r: &mut Reader<'_>, seq: u64) -> Result<ReplyDetails, OpError> {
    let wire = |e| OpError::wire(seq, e);
    let mut details = ReplyDetails::default();
    if r.remaining() == 0 {
        return Ok(details);
    }
    let flags = r.u8("flags").map_err(wire)?;
    let known = FLAG_POSITION | FLAG_RECOVERED | FLAG_MSGS | FLAG_MSG_SEQ | FLAG_NOT_BROADCAST;
    if flags == 0 || flags & !known != 0 {
        return Err(OpError::bad_request(
            seq,
            format!("reply flags 0x{flags:02x}"),
        ));
    }
    if flags & FLAG_POSITION != 0 {
        details.epoch = Some(r.str8("epoch").map_err(wire)?.to_owned());
        details.last_seq = Some(r.u64("last_seq").map_err(wire)?);
    }
    if flags & FLAG_RECOVERED != 0 {
        details.recovered = Some(match r.u8("recovered").map_err(wire)? {
            0 => Ok(()),
            code => Err(RecoveryFailure::from_code(code).ok_or_else(|| {
                OpError::bad_request(seq, format!("unknown recovery result {code}"))
            })?),
        });
    }
    if flags & FLAG_MSGS != 0 {
        details.complete = Some(match r.u8("complete").map_err(wire)? {
            0 => false,
            1 => true,
            other => return Err(OpError::bad_request(seq, format!("`complete` is {other}"))),
        });
        let count = r.u16("count").map_err(wire)?;
        let mut msgs =
            Vec::with_capacity(usize::from(count).min(r.remaining() / BINARY_MSG_FIXED_LEN));
        for _ in 0..count {
            msgs.push(BatchView::read_push(r)?.to_message());
        }
        details.msgs = Some(msgs);
    }
    if flags & FLAG_MSG_SEQ != 0 {
        details.msg_seq = Some(r.u64("msg_seq").map_err(wire)?);
    }
    details.not_broadcast = flags & FLAG_NOT_BROADCAST != 0;
    Ok(details)
}

/// The details after `message` of a binary error reply numbered `seq`: nothing, or a non-zero
/// `flags` byte and the parts it announces.
fn binary_error_details(r: &mut Reader<'_>, seq: u64) -> Result<ReplyDetails, OpError> {
    let wire = |e| OpError::wire(seq, e);
    let mut details = ReplyDetails::default();
    if r.remaining() == 0 {
        return Ok(details);
    }
    let flags = r.u8("flags").map_err(wire)?;
    if flags == 0 || flags & !(FLAG_RETRY_AFTER | FLAG_PLATFORM_CODE) != 0 {
        return Err(OpError::bad_request(
            seq,
            format!("error reply flags 0x{flags:02x}"),
        ));
    }
    if flags & FLAG_RETRY_AFTER != 0 {
        details.retry_after_ms = Some(r.u32("retry_after_ms").map_err(wire)?);
    }
    if flags & FLAG_PLATFORM_CODE != 0 {
        details.platform_code = Some(r.str8("platform_code").map_err(wire)?.to_owned());
    }
    Ok(details)
}

/// Validates a binary server message whole, like [`decode_server_binary`], but borrows a batch
/// from `payload` instead of copying its messages.
pub fn view_server_binary(payload: &[u8]) -> Result<ServerMsgView<'_>, OpError> {
    let wire = |e| OpError::wire(0, e);
    let mut r = Reader::new(payload);
    let msg = match r.u8("op").map_err(wire)? {
        OP_REPLY => {
            let seq = r.u64("seq").map_err(wire)?;
            let (result, details) = match r.u8("ok").map_err(wire)? {
                1 => (Ok(()), binary_reply_details(&mut r, seq)?),
                0 => {
                    let code = r.str8("code").map_err(wire)?.to_owned();
                    let message = r.str16("message").map_err(wire)?.to_owned();
                    (Err((code, message)), binary_error_details(&mut r, seq)?)
                }
                other => {
                    return Err(OpError::bad_request(seq, format!("`ok` is {other}")));
                }
            };
            ServerMsgView::Other(ServerMsg::Reply {
                seq,
                result,
                details,
            })
        }
        OP_BATCH => {
            let tag = r.u8("target").map_err(wire)?;
            let id = r.str8("id").map_err(wire)?;
            let target = match tag {
                0 => TargetRef::Room(id),
                1 => TargetRef::User(id),
                2 if id.is_empty() => TargetRef::Broadcast,
                _ => {
                    return Err(OpError::bad_request(
                        0,
                        format!("bad target {tag} with id {id:?}"),
                    ))
                }
            };
            let count = r.u16("count").map_err(wire)?;
            let body_start = r.position();
            for _ in 0..count {
                BatchView::read_push(&mut r)?;
            }
            ServerMsgView::Batch(BatchView {
                target,
                count,
                body: &payload[body_start..r.position()],
            })
        }
        OP_CLOSE => {
            let code = r.u16("code").map_err(wire)?;
            let reason = r.str8("reason").map_err(wire)?.to_owned();
            ServerMsgView::Other(ServerMsg::Close { code, reason })
        }
        OP_ROOM => {
            let room = r.str8("room").map_err(wire)?.to_owned();
            let online = r.u32("online").map_err(wire)?;
            let users = r.u32("users").map_err(wire)?;
            ServerMsgView::Other(ServerMsg::Room {
                room,
                online,
                users,
            })
        }
        other => {
            return Err(OpError::new(
                0,
                ErrorCode::UnknownOp,
                format!("unknown server op byte 0x{other:02x}"),
            ))
        }
    };
    r.finish().map_err(wire)?;
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    // ---- helpers -----------------------------------------------------------------------------

    /// Splits one server frame off the front of `frame`: (WebSocket opcode or `None` for TCP,
    /// payload, rest). Checks that the header is final and unmasked.
    fn split_server_frame(format: WireFormat, frame: &[u8]) -> (Option<u8>, &[u8], &[u8]) {
        match format {
            WireFormat::Tcp => {
                let len = tcp_frame_len(frame).expect("length prefix");
                let end = TCP_PREFIX_LEN + len;
                (None, &frame[TCP_PREFIX_LEN..end], &frame[end..])
            }
            WireFormat::WsJson | WireFormat::WsBinary => {
                assert_eq!(frame[0] & 0xf0, 0x80, "FIN set, RSV clear");
                assert_eq!(frame[1] & 0x80, 0, "server frames are unmasked");
                let (len, header) = match frame[1] {
                    126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
                    127 => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&frame[2..10]);
                        (u64::from_be_bytes(b) as usize, 10)
                    }
                    n => (n as usize, 2),
                };
                // The shortest length encoding must be used (RFC 6455 §5.2).
                assert_eq!(header, server_header_len(len));
                let end = header + len;
                (Some(frame[0] & 0x0f), &frame[header..end], &frame[end..])
            }
        }
    }

    /// The only frame in `frame`, which must hold exactly one.
    fn server_payload(format: WireFormat, frame: &[u8]) -> (Option<u8>, Vec<u8>) {
        let (opcode, payload, rest) = split_server_frame(format, frame);
        assert!(rest.is_empty(), "{} bytes after the frame", rest.len());
        (opcode, payload.to_vec())
    }

    fn decode_server(format: WireFormat, payload: &[u8]) -> Result<ServerMsg, OpError> {
        match format {
            WireFormat::WsJson => decode_server_json(payload),
            _ => decode_server_binary(payload),
        }
    }

    /// Unmasks a whole client frame: (opcode, payload).
    fn unmask_client_frame(frame: &[u8]) -> (u8, Vec<u8>) {
        assert_eq!(frame[0] & 0xf0, 0x80, "FIN set, RSV clear");
        assert_eq!(frame[1] & 0x80, 0x80, "client frames are masked");
        let (len, at) = match frame[1] & 0x7f {
            126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&frame[2..10]);
                (u64::from_be_bytes(b) as usize, 10)
            }
            n => (n as usize, 2),
        };
        assert_eq!(at, server_header_len(len), "shortest length encoding");
        let mask = &frame[at..at + 4];
        let payload = &frame[at + 4..];
        assert_eq!(payload.len(), len);
        let unmasked = payload
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        (frame[0] & 0x0f, unmasked)
    }

    fn exact(buf: BytesMut) -> Bytes {
        assert_eq!(
            buf.capacity(),
            buf.len(),
            "one allocation of exactly the frame size"
        );
        buf.freeze()
    }

    fn msg(seq: u64, priority: u8, kind: &str, data: &str) -> PushMessage {
        PushMessage {
            seq,
            priority,
            kind: kind.to_owned(),
            data: Bytes::copy_from_slice(data.as_bytes()),
            merged: 0,
            is_final: false,
            from: None,
            ack: false,
        }
    }

    /// Kinds, ids and data chosen to exercise every escape and multi-byte UTF-8.
    fn nasty_messages() -> Vec<PushMessage> {
        vec![
            msg(0, 0, "system", r#"{"text":"maintenance at 02:00"}"#),
            msg(41, 2, "gift", r#"{"gift":"rocket","n":3}"#),
            msg(42, 3, "chat", r#""hi""#),
            msg(43, 1, "q\"uote\\back/slash", r#"{"t":"\"\\\n\u0000"}"#),
            msg(
                44,
                3,
                "ctl\u{0}\u{1}\u{8}\t\n\u{b}\u{c}\r\u{1f}\u{7f}",
                "null",
            ),
            msg(
                45,
                2,
                "ünïcødé-礼物-🚀",
                r#"{"msg":"你好 👋 ü","e":"\u00e9"}"#,
            ),
            msg(u64::MAX, 3, "", "[1,2.5e3,true,false,null,{}]"),
            msg(MAX_JSON_SEQ, 0, "k", "-0.0"),
            merged(msg(46, 2, "like", r#"{"count":7}"#), 7, false),
            merged(msg(47, 1, "pk", r#"{"left":5100}"#), 1, true),
            merged(msg(48, 3, "x", "0"), u32::MAX, false),
            merged(msg(49, 0, "y", "1"), 0, true),
        ]
    }

    fn merged(mut m: PushMessage, merged: u32, is_final: bool) -> PushMessage {
        m.merged = merged;
        m.is_final = is_final;
        m
    }

    #[test]
    fn merged_and_final_messages_match_the_protocol() {
        let msgs = [
            merged(msg(42, 2, "combo", r#"{"count":7}"#), 7, false),
            merged(msg(43, 1, "pk", "{}"), 1, true),
        ];
        let room = Target::Room("r1".to_owned());
        let frame = encode_batch(WireFormat::WsJson, &room, &msgs);
        let (_, payload) = server_payload(WireFormat::WsJson, &frame);
        assert_eq!(
            std::str::from_utf8(&payload).unwrap(),
            r#"{"op":"batch","room":"r1","msgs":[{"seq":42,"p":2,"kind":"combo","merged":7,"data":{"count":7}},{"seq":43,"p":1,"kind":"pk","merged":1,"final":true,"data":{}}]}"#
        );
        let frame = encode_batch(WireFormat::Tcp, &room, &msgs);
        let body = &frame[TCP_PREFIX_LEN..];
        // op, target, "r1", count 2, then seq 42, p 0x82, merged 7, "combo", data.
        let mut want = vec![OP_BATCH, 0, 2, b'r', b'1', 0, 2];
        want.extend_from_slice(&42u64.to_be_bytes());
        want.push(0x82);
        want.extend_from_slice(&7u32.to_be_bytes());
        want.extend_from_slice(b"\x05combo\x00\x00\x00\x0b{\"count\":7}");
        assert_eq!(&body[..want.len()], &want[..]);
        // seq 43, p 0xc1 (final, merged, priority 1), merged 1.
        assert_eq!(body[want.len() + 8], 0xc1);
        // Reserved bits and a merged flag with 0 are refused.
        for (byte, merged_count) in [(0x21u8, 1u32), (0x04, 1), (0x80, 0)] {
            let mut bad = vec![OP_BATCH, 0, 2, b'r', b'1', 0, 1];
            bad.extend_from_slice(&1u64.to_be_bytes());
            bad.push(byte);
            if byte & 0x80 != 0 {
                bad.extend_from_slice(&merged_count.to_be_bytes());
            }
            bad.extend_from_slice(b"\x01k\x00\x00\x00\x011");
            assert!(decode_server_binary(&bad).is_err(), "{byte:#x}");
        }
        // JSON spells them only when set: `merged` 0 or `final` false is not what we write.
        for text in [
            r#"{"op":"batch","room":"r","msgs":[{"seq":1,"p":0,"kind":"k","merged":0,"data":1}]}"#,
            r#"{"op":"batch","room":"r","msgs":[{"seq":1,"p":0,"kind":"k","final":false,"data":1}]}"#,
        ] {
            assert!(decode_server_json(text.as_bytes()).is_err(), "{text}");
        }
    }

    fn nasty_targets() -> Vec<Target> {
        vec![
            Target::Room("r1".to_owned()),
            Target::Room("room:10000_a.b-c".to_owned()),
            Target::Room("we\"ird\\ro\u{1}om ✓".to_owned()),
            Target::User("u1".to_owned()),
            Target::User("üser\n\"x\"".to_owned()),
            Target::Broadcast,
        ]
    }

    fn sample_ops() -> Vec<ClientOp> {
        vec![
            ClientOp::Auth {
                seq: 1,
                token: "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSJ9.sig".to_owned(),
                since: None,
            },
            ClientOp::Auth {
                seq: 0,
                token: String::new(),
                since: None,
            },
            ClientOp::Auth {
                seq: MAX_JSON_SEQ,
                token: "tök\"en\\\u{0}\u{1f}🚀".to_owned(),
                since: None,
            },
            ClientOp::Join {
                seq: 2,
                room: "r1".to_owned(),
                since: None,
            },
            ClientOp::Join {
                seq: 12345,
                room: "not a valid id ✗ \"\\".to_owned(),
                since: None,
            },
            ClientOp::Leave {
                seq: 3,
                room: "r1".to_owned(),
            },
            ClientOp::Leave {
                seq: 9,
                room: String::new(),
            },
            ClientOp::Ping { seq: 4 },
            ClientOp::Join {
                seq: 5,
                room: "r1".to_owned(),
                since: Some(since("k3x9", 41)),
            },
            ClientOp::Auth {
                seq: 6,
                token: "jwt".to_owned(),
                since: Some(since(&"A-z_09".repeat(6)[..32], MAX_JSON_SEQ)),
            },
            ClientOp::History {
                seq: 7,
                room: "r1".to_owned(),
                since: 41,
                limit: DEFAULT_HISTORY_LIMIT,
            },
            ClientOp::History {
                seq: 8,
                room: "we\"ird ü".to_owned(),
                since: 0,
                limit: MAX_HISTORY_LIMIT,
            },
            ClientOp::History {
                seq: 10,
                room: String::new(),
                since: MAX_JSON_SEQ,
                limit: 1,
            },
        ]
    }

    fn since(epoch: &str, seq: u64) -> Since {
        Since {
            epoch: epoch.to_owned(),
            seq,
        }
    }

    /// Asserts a `bad_request` for `seq` whose message names `field`.
    fn bad_field(seq: u64, field: &str, result: Result<ClientOp, OpError>) {
        let err = result.expect_err("should be rejected");
        assert_eq!(
            (err.seq, err.code),
            (seq, ErrorCode::BadRequest),
            "{}",
            err.message
        );
        assert!(
            err.message.contains(&format!("`{field}`")),
            "{:?} does not name `{field}`",
            err.message
        );
    }

    fn bad_request(seq: u64, result: Result<ClientOp, OpError>) {
        let err = result.expect_err("should be rejected");
        assert_eq!(
            (err.seq, err.code),
            (seq, ErrorCode::BadRequest),
            "{}",
            err.message
        );
    }

    /// xorshift64*: deterministic pseudo-random bytes for the no-panic tests.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    // ---- small types -------------------------------------------------------------------------

    #[test]
    fn wire_formats_index_their_position_in_all() {
        for (i, format) in WireFormat::ALL.into_iter().enumerate() {
            assert_eq!(format.index(), i);
        }
    }

    #[test]
    fn error_codes_spell_the_protocol_table() {
        let names: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            names,
            [
                "bad_request",
                "unknown_op",
                "not_authenticated",
                "already_authenticated",
                "invalid_token",
                "token_expired",
                "invalid_id",
                "room_forbidden",
                "too_many_rooms",
                "not_joined",
                "unavailable",
                "rate_limited",
                "too_big",
                "forbidden",
                "rejected",
            ]
        );
        assert_eq!(ErrorCode::NotJoined.to_string(), "not_joined");
        let err = OpError::new(7, ErrorCode::InvalidId, "bad room");
        assert_eq!(err.to_string(), "invalid_id (seq 7): bad room");
    }

    #[test]
    fn client_ops_report_their_seq() {
        let seqs: Vec<u64> = sample_ops().iter().map(ClientOp::seq).collect();
        assert_eq!(
            seqs,
            [1, 0, MAX_JSON_SEQ, 2, 12345, 3, 9, 4, 5, 6, 7, 8, 10]
        );
    }

    #[test]
    fn tcp_frame_len_needs_four_bytes() {
        assert_eq!(tcp_frame_len(&[]), None);
        assert_eq!(tcp_frame_len(&[0, 0, 0]), None);
        assert_eq!(tcp_frame_len(&[0, 0, 0, 12]), Some(12));
        assert_eq!(tcp_frame_len(&[0, 0, 1, 0, 0xff]), Some(256));
        assert_eq!(
            tcp_frame_len(&[0xff, 0xff, 0xff, 0xff]),
            Some(u32::MAX as usize)
        );
    }

    // ---- decode_json -------------------------------------------------------------------------

    #[test]
    fn json_decodes_the_documented_ops() {
        assert_eq!(
            decode_json(br#"{"op":"auth","seq":1,"token":"<JWT>"}"#),
            Ok(ClientOp::Auth {
                seq: 1,
                token: "<JWT>".to_owned(),
                since: None,
            })
        );
        assert_eq!(
            decode_json(br#"{"op":"join","seq":2,"room":"r1"}"#),
            Ok(ClientOp::Join {
                seq: 2,
                room: "r1".to_owned(),
                since: None,
            })
        );
        assert_eq!(
            decode_json(br#"{"op":"leave","seq":3,"room":"r1"}"#),
            Ok(ClientOp::Leave {
                seq: 3,
                room: "r1".to_owned()
            })
        );
        assert_eq!(
            decode_json(br#"{"op":"ping","seq":4}"#),
            Ok(ClientOp::Ping { seq: 4 })
        );
    }

    #[test]
    fn json_ignores_unknown_fields_order_and_whitespace() {
        let text = b" \r\n\t{ \"x\" : [1,{\"y\":null}], \"room\" : \"r9\" ,\"seq\":8,\n\"op\":\"join\",\"token\":5 } \n";
        assert_eq!(
            decode_json(text),
            Ok(ClientOp::Join {
                seq: 8,
                room: "r9".to_owned(),
                since: None,
            })
        );
        // A ping carrying an irrelevant, badly typed room is still a ping.
        assert_eq!(
            decode_json(br#"{"op":"ping","seq":4,"room":{}}"#),
            Ok(ClientOp::Ping { seq: 4 })
        );
    }

    #[test]
    fn json_unescapes_strings() {
        assert_eq!(
            decode_json(br#"{"op":"\u0061uth","seq":1,"token":"a\"b\\c\u00fc\ud83d\ude80"}"#),
            Ok(ClientOp::Auth {
                seq: 1,
                token: "a\"b\\cü🚀".to_owned(),
                since: None,
            })
        );
    }

    #[test]
    fn json_keeps_room_ids_as_given() {
        for room in ["", "r 1", "ü/*", &"x".repeat(300)] {
            let text = format!(r#"{{"op":"join","seq":5,"room":"{room}"}}"#);
            assert_eq!(
                decode_json(text.as_bytes()),
                Ok(ClientOp::Join {
                    seq: 5,
                    room: room.to_owned(),
                    since: None,
                })
            );
        }
    }

    #[test]
    fn json_seq_must_be_an_integer_up_to_2_pow_53() {
        assert_eq!(
            decode_json(br#"{"op":"ping","seq":0}"#),
            Ok(ClientOp::Ping { seq: 0 })
        );
        assert_eq!(
            decode_json(br#"{"op":"ping","seq":9007199254740992}"#),
            Ok(ClientOp::Ping { seq: MAX_JSON_SEQ })
        );
        for seq in [
            "9007199254740993",
            "18446744073709551615",
            "18446744073709551616",
            "-1",
            "1.0",
            "1e3",
            "\"1\"",
            "null",
            "true",
            "[1]",
            "{\"seq\":1}",
        ] {
            let text = format!(r#"{{"op":"ping","seq":{seq}}}"#);
            bad_request(0, decode_json(text.as_bytes()));
        }
        bad_request(0, decode_json(br#"{"op":"ping"}"#));
    }

    #[test]
    fn json_errors_echo_a_readable_seq() {
        // Bad or missing string fields.
        bad_request(7, decode_json(br#"{"op":"join","seq":7,"room":5}"#));
        bad_request(7, decode_json(br#"{"op":"join","seq":7,"room":null}"#));
        bad_request(7, decode_json(br#"{"op":"leave","seq":7}"#));
        bad_request(7, decode_json(br#"{"op":"leave","seq":7,"room":["r1"]}"#));
        bad_request(7, decode_json(br#"{"op":"auth","seq":7,"room":"r1"}"#));
        bad_request(7, decode_json(br#"{"op":"auth","seq":7,"token":{"a":1}}"#));
        // Missing or non-string op.
        bad_request(7, decode_json(br#"{"seq":7}"#));
        bad_request(7, decode_json(br#"{"op":1,"seq":7}"#));
        bad_request(7, decode_json(br#"{"op":null,"seq":7}"#));
        // An unknown op name.
        for op in ["PING", "reply", "", "join "] {
            let text = format!(r#"{{"op":"{op}","seq":7}}"#);
            let err = decode_json(text.as_bytes()).unwrap_err();
            assert_eq!((err.seq, err.code), (7, ErrorCode::UnknownOp));
        }
        // Without a seq, even an unknown op is a bad request.
        bad_request(0, decode_json(br#"{"op":"dance"}"#));
    }

    #[test]
    fn json_rejects_what_is_not_one_object() {
        for text in [
            &b""[..],
            b"   ",
            b"null",
            b"1",
            b"\"ping\"",
            br#"["ping",4]"#,
            br#"["auth",1,"t",null]"#,
            br#"{"op":"ping","seq":4"#,
            br#"{"op":"ping","seq":4}}"#,
            br#"{"op":"ping","seq":4} {"op":"ping","seq":5}"#,
            br#"{"op":"ping","seq":4,}"#,
            br#"{"op":"ping","seq":4,"seq":5}"#,
            br#"{"op":"join","seq":1,"room":"\ud800"}"#,
            b"{\"op\":\"join\",\"seq\":1,\"room\":\"\xff\"}",
            b"\xef\xbb\xbf{\"op\":\"ping\",\"seq\":4}",
        ] {
            bad_request(0, decode_json(text));
        }
    }

    // ---- decode_binary -----------------------------------------------------------------------

    #[test]
    fn binary_decodes_the_documented_example() {
        // `join` of room r1 with seq 2, after its TCP length prefix.
        let frame = [0, 0, 0, 0x0c, 2, 0, 0, 0, 0, 0, 0, 0, 2, 2, b'r', b'1'];
        assert_eq!(tcp_frame_len(&frame), Some(12));
        assert_eq!(
            decode_binary(&frame[4..]),
            Ok(ClientOp::Join {
                seq: 2,
                room: "r1".to_owned(),
                since: None,
            })
        );
        assert_eq!(
            encode_op(
                WireFormat::Tcp,
                &decode_binary(&frame[4..]).unwrap(),
                [0; 4]
            ),
            &frame[..]
        );
    }

    #[test]
    fn binary_decodes_every_op() {
        let mut auth = vec![1, 0, 0, 0, 0, 0, 0, 0, 9, 0, 3];
        auth.extend_from_slice(b"jwt");
        assert_eq!(
            decode_binary(&auth),
            Ok(ClientOp::Auth {
                seq: 9,
                token: "jwt".to_owned(),
                since: None,
            })
        );
        assert_eq!(
            decode_binary(&[3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0]),
            Ok(ClientOp::Leave {
                seq: u64::MAX,
                room: String::new()
            })
        );
        assert_eq!(
            decode_binary(&[4, 0, 0, 0, 0, 0, 0, 1, 0]),
            Ok(ClientOp::Ping { seq: 256 })
        );
    }

    #[test]
    fn binary_rejects_unknown_op_bytes() {
        for op in [0x00, 0x08, 0x7f, 0x81, 0x82, 0x83, 0x84, 0xff] {
            let err = decode_binary(&[op, 0, 0, 0, 0, 0, 0, 0, 1]).unwrap_err();
            assert_eq!((err.seq, err.code), (0, ErrorCode::UnknownOp), "op {op:#x}");
        }
    }

    #[test]
    fn binary_errors_echo_a_readable_seq() {
        // Nothing, or too little to hold a seq.
        bad_request(0, decode_binary(&[]));
        bad_request(0, decode_binary(&[4]));
        bad_request(0, decode_binary(&[2, 0, 0, 0, 0, 0, 0, 7]));
        // Truncated bodies, after the seq.
        bad_request(7, decode_binary(&[2, 0, 0, 0, 0, 0, 0, 0, 7]));
        bad_request(
            7,
            decode_binary(&[2, 0, 0, 0, 0, 0, 0, 0, 7, 3, b'r', b'1']),
        );
        bad_request(7, decode_binary(&[1, 0, 0, 0, 0, 0, 0, 0, 7, 0]));
        bad_request(7, decode_binary(&[1, 0, 0, 0, 0, 0, 0, 0, 7, 0, 2, b'x']));
        // Trailing bytes.
        bad_request(7, decode_binary(&[4, 0, 0, 0, 0, 0, 0, 0, 7, 0]));
        bad_request(
            7,
            decode_binary(&[3, 0, 0, 0, 0, 0, 0, 0, 7, 1, b'r', b'!']),
        );
        // Invalid UTF-8.
        bad_request(7, decode_binary(&[2, 0, 0, 0, 0, 0, 0, 0, 7, 1, 0xff]));
        bad_request(
            7,
            decode_binary(&[1, 0, 0, 0, 0, 0, 0, 0, 7, 0, 2, 0xc3, 0x28]),
        );
    }

    // ---- encode_op ---------------------------------------------------------------------------

    #[test]
    fn encoded_ops_round_trip_through_the_decoders() {
        let masks = [[0, 0, 0, 0], [0x37, 0xfa, 0x21, 0x3d], [0xff; 4]];
        for op in sample_ops() {
            for mask in masks {
                let (opcode, json) =
                    unmask_client_frame(&exact(build_op(WireFormat::WsJson, &op, mask)));
                assert_eq!(opcode, OpCode::Text as u8);
                assert!(std::str::from_utf8(&json).is_ok());
                assert_eq!(decode_json(&json), Ok(op.clone()));

                let (opcode, binary) =
                    unmask_client_frame(&exact(build_op(WireFormat::WsBinary, &op, mask)));
                assert_eq!(opcode, OpCode::Binary as u8);
                assert_eq!(decode_binary(&binary), Ok(op.clone()));
            }
            let tcp = exact(build_op(WireFormat::Tcp, &op, [1, 2, 3, 4]));
            assert_eq!(tcp_frame_len(&tcp), Some(tcp.len() - TCP_PREFIX_LEN));
            assert_eq!(decode_binary(&tcp[TCP_PREFIX_LEN..]), Ok(op));
        }
    }

    #[test]
    fn encoded_json_ops_are_canonical() {
        let ping = encode_op(WireFormat::WsJson, &ClientOp::Ping { seq: 4 }, [0; 4]);
        assert_eq!(&ping[..], b"\x81\x95\0\0\0\0{\"op\":\"ping\",\"seq\":4}");
        let (_, join) = unmask_client_frame(&encode_op(
            WireFormat::WsJson,
            &ClientOp::Join {
                seq: 2,
                room: "r\"1".to_owned(),
                since: None,
            },
            [9, 8, 7, 6],
        ));
        assert_eq!(join, br#"{"op":"join","seq":2,"room":"r\"1"}"#);
    }

    #[test]
    fn masked_frames_use_extended_lengths() {
        // Binary auth payload is 11 bytes + token; pick tokens on each side of each boundary.
        for (token_len, header_len) in [
            (114, 6),
            (115, 8),
            (65535 - 11, 8),
            (65536 - 11, 14),
            (65535, 14),
            (70000, 14),
        ] {
            let op = ClientOp::Auth {
                seq: 1,
                token: "t".repeat(token_len),
                since: None,
            };
            let frame = exact(build_op(WireFormat::WsBinary, &op, [1, 2, 3, 4]));
            let payload_len = 11 + token_len.min(u16::MAX as usize);
            assert_eq!(
                frame.len(),
                header_len + payload_len,
                "token of {token_len}"
            );
            let (_, payload) = unmask_client_frame(&frame);
            let decoded = decode_binary(&payload).unwrap();
            let ClientOp::Auth { token, .. } = &decoded else {
                panic!("not an auth: {decoded:?}");
            };
            assert_eq!(token.len(), token_len.min(u16::MAX as usize));
            // JSON has no length field, so nothing is cut there.
            let (_, json) = unmask_client_frame(&exact(build_op(WireFormat::WsJson, &op, [5; 4])));
            assert_eq!(decode_json(&json), Ok(op));
        }
    }

    #[test]
    fn binary_ops_cut_overlong_strings_at_char_boundaries() {
        let room = format!("{}ü", "r".repeat(254)); // 256 bytes; ü straddles byte 255
        let op = ClientOp::Join {
            seq: 1,
            room,
            since: None,
        };
        let tcp = exact(build_op(WireFormat::Tcp, &op, [0; 4]));
        assert_eq!(
            decode_binary(&tcp[TCP_PREFIX_LEN..]),
            Ok(ClientOp::Join {
                seq: 1,
                room: "r".repeat(254),
                since: None,
            })
        );
    }

    // ---- encode_reply ------------------------------------------------------------------------

    #[test]
    fn json_replies_match_the_protocol_text() {
        let (opcode, ok) = server_payload(
            WireFormat::WsJson,
            &exact(build_reply(WireFormat::WsJson, 2, Ok(()))),
        );
        assert_eq!(opcode, Some(OpCode::Text as u8));
        assert_eq!(ok, br#"{"op":"reply","seq":2,"ok":true}"#);

        let frame = exact(build_reply(
            WireFormat::WsJson,
            2,
            Err((ErrorCode::NotAuthenticated, "auth must be the first op")),
        ));
        let (_, err) = server_payload(WireFormat::WsJson, &frame);
        assert_eq!(
            err,
            &br#"{"op":"reply","seq":2,"ok":false,"error":{"code":"not_authenticated","message":"auth must be the first op"}}"#[..]
        );
    }

    #[test]
    fn binary_replies_match_the_protocol_layout() {
        let ok = exact(build_reply(WireFormat::Tcp, 2, Ok(())));
        assert_eq!(&ok[..], [0, 0, 0, 10, 0x81, 0, 0, 0, 0, 0, 0, 0, 2, 1]);
        let err = exact(build_reply(
            WireFormat::WsBinary,
            3,
            Err((ErrorCode::NotJoined, "no")),
        ));
        let mut expected = vec![0x82, 25, 0x81, 0, 0, 0, 0, 0, 0, 0, 3, 0, 10];
        expected.extend_from_slice(b"not_joined");
        expected.extend_from_slice(&[0, 2, b'n', b'o']);
        assert_eq!(&err[..], expected);
    }

    #[test]
    fn replies_round_trip_in_every_format() {
        let messages = [
            "",
            "plain",
            "quote \" backslash \\ slash / nul \u{0} bell \u{7} esc \u{1b} del \u{7f}",
            "\u{8}\u{c}\n\r\t ünïcødé 🚀 \u{2028}",
        ];
        for format in WireFormat::ALL {
            for seq in [0, 1, 9, 10, 99, 100, MAX_JSON_SEQ] {
                let frame = exact(build_reply(format, seq, Ok(())));
                let (_, payload) = server_payload(format, &frame);
                assert_eq!(
                    decode_server(format, &payload),
                    Ok(ServerMsg::Reply {
                        seq,
                        result: Ok(()),
                        details: ReplyDetails::default(),
                    })
                );
            }
            for code in ErrorCode::ALL {
                for message in messages {
                    let frame = exact(build_reply(format, 77, Err((code, message))));
                    let (_, payload) = server_payload(format, &frame);
                    assert_eq!(
                        decode_server(format, &payload),
                        Ok(ServerMsg::Reply {
                            seq: 77,
                            result: Err((code.as_str().to_owned(), message.to_owned())),
                            details: ReplyDetails::default(),
                        })
                    );
                }
            }
        }
    }

    #[test]
    fn binary_reply_messages_are_cut_to_their_str16() {
        let long = "é".repeat(40_000); // 80,000 bytes
        for format in [WireFormat::WsBinary, WireFormat::Tcp] {
            let frame = exact(build_reply(format, 1, Err((ErrorCode::BadRequest, &long))));
            let (_, payload) = server_payload(format, &frame);
            let Ok(ServerMsg::Reply {
                result: Err((_, message)),
                ..
            }) = decode_server_binary(&payload)
            else {
                panic!("not an error reply");
            };
            assert_eq!(message, "é".repeat(32_767));
        }
        let frame = exact(build_reply(
            WireFormat::WsJson,
            1,
            Err((ErrorCode::BadRequest, &long)),
        ));
        let (_, payload) = server_payload(WireFormat::WsJson, &frame);
        assert!(
            matches!(decode_server_json(&payload), Ok(ServerMsg::Reply { result: Err((_, m)), .. }) if m == long)
        );
    }

    // ---- JSON escaping -----------------------------------------------------------------------

    #[test]
    fn json_escaping_round_trips_every_ascii_char_and_unicode() {
        let mut all: String = (0u8..0x80).map(char::from).collect();
        all.push_str("ü€🚀\u{2028}\u{fffd}");
        let escaped_len = json_escaped_len(&all);
        let mut out = BytesMut::with_capacity(escaped_len + 2);
        out.put_u8(b'"');
        put_json_escaped(&mut out, &all);
        out.put_u8(b'"');
        assert_eq!(out.len(), escaped_len + 2);
        assert_eq!(serde_json::from_slice::<String>(&out).unwrap(), all);
        // Short escapes where JSON has them, \u00XX for the other control characters.
        let mut out = BytesMut::new();
        put_json_escaped(&mut out, "a\"\\\n\r\t\u{8}\u{c}\u{0}\u{1f}/\u{7f}b");
        assert_eq!(
            &out[..],
            br#"a\"\\\n\r\t\b\f\u0000\u001f/"#.iter().chain(b"\x7fb").copied().collect::<Vec<u8>>()
        );
    }

    #[test]
    fn decimal_len_counts_digits() {
        for n in [
            0,
            1,
            9,
            10,
            99,
            100,
            12345,
            MAX_JSON_SEQ,
            u64::MAX - 1,
            u64::MAX,
        ] {
            assert_eq!(decimal_len(n), n.to_string().len(), "{n}");
        }
    }

    // ---- encode_batch ------------------------------------------------------------------------

    #[test]
    fn json_batches_match_the_protocol_text() {
        let room = Target::Room("r1".to_owned());
        let msgs = [
            msg(41, 2, "gift", r#"{"gift":"rocket","n":3}"#),
            msg(42, 3, "chat", r#""hi""#),
        ];
        let (opcode, text) = server_payload(
            WireFormat::WsJson,
            &exact(build_batch(WireFormat::WsJson, &room, &msgs)),
        );
        assert_eq!(opcode, Some(OpCode::Text as u8));
        assert_eq!(
            text,
            &br#"{"op":"batch","room":"r1","msgs":[{"seq":41,"p":2,"kind":"gift","data":{"gift":"rocket","n":3}},{"seq":42,"p":3,"kind":"chat","data":"hi"}]}"#[..]
        );

        let user = Target::User("u1".to_owned());
        let msgs = [msg(7, 1, "notice", r#"{"text":"you won"}"#)];
        let (_, text) = server_payload(
            WireFormat::WsJson,
            &exact(build_batch(WireFormat::WsJson, &user, &msgs)),
        );
        assert_eq!(
            text,
            &br#"{"op":"batch","user":"u1","msgs":[{"seq":7,"p":1,"kind":"notice","data":{"text":"you won"}}]}"#[..]
        );

        let msgs = [msg(3, 0, "system", r#"{"text":"maintenance at 02:00"}"#)];
        let (_, text) = server_payload(
            WireFormat::WsJson,
            &exact(build_batch(WireFormat::WsJson, &Target::Broadcast, &msgs)),
        );
        assert_eq!(
            text,
            &br#"{"op":"batch","broadcast":true,"msgs":[{"seq":3,"p":0,"kind":"system","data":{"text":"maintenance at 02:00"}}]}"#[..]
        );
    }

    #[test]
    fn binary_batches_match_the_protocol_layout() {
        let frame = exact(build_batch(
            WireFormat::Tcp,
            &Target::User("u1".to_owned()),
            &[msg(7, 1, "n", "{}")],
        ));
        let expected = [
            0, 0, 0, 24, // length
            0x82, 1, 2, b'u', b'1', 0, 1, // op, target, id, count
            0, 0, 0, 0, 0, 0, 0, 7, 1, 1, b'n', 0, 0, 0, 2, b'{', b'}',
        ];
        assert_eq!(&frame[..], expected);
        let frame = exact(build_batch(WireFormat::WsBinary, &Target::Broadcast, &[]));
        assert_eq!(&frame[..], [0x82, 5, 0x82, 2, 0, 0, 0]);
    }

    #[test]
    fn batches_round_trip_in_every_format() {
        let all = nasty_messages();
        for format in WireFormat::ALL {
            for target in nasty_targets() {
                for msgs in [&all[..], &all[..1], &[]] {
                    let frame = exact(build_batch(format, &target, msgs));
                    assert_eq!(encode_batch(format, &target, msgs), frame);
                    let (opcode, payload) = server_payload(format, &frame);
                    let expected_opcode = match format {
                        WireFormat::WsJson => Some(OpCode::Text as u8),
                        WireFormat::WsBinary => Some(OpCode::Binary as u8),
                        WireFormat::Tcp => None,
                    };
                    assert_eq!(opcode, expected_opcode);
                    if format == WireFormat::WsJson {
                        // Valid JSON as a whole, whatever the escapes.
                        serde_json::from_slice::<serde_json::Value>(&payload).unwrap();
                    }
                    assert_eq!(
                        decode_server(format, &payload),
                        Ok(ServerMsg::Batch {
                            target: target.clone(),
                            msgs: msgs.to_vec()
                        }),
                        "{format:?} {target:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn large_batches_use_extended_frame_lengths() {
        for data_len in [100, 60_000, 70_000, 200_000] {
            let data = format!("\"{}\"", "x".repeat(data_len));
            let msgs = [msg(1, 3, "chat", &data)];
            let target = Target::Room("r1".to_owned());
            for format in WireFormat::ALL {
                let frame = exact(build_batch(format, &target, &msgs));
                let (_, payload) = server_payload(format, &frame);
                assert_eq!(
                    decode_server(format, &payload),
                    Ok(ServerMsg::Batch {
                        target: target.clone(),
                        msgs: msgs.to_vec()
                    })
                );
            }
        }
    }

    #[test]
    fn binary_batches_over_the_count_limit_split_into_frames() {
        let msgs: Vec<PushMessage> = (0..MAX_MSGS_PER_BATCH as u64 * 2 + 3)
            .map(|seq| msg(seq, (seq % 4) as u8, "c", "1"))
            .collect();
        let target = Target::Room("big".to_owned());
        for format in [WireFormat::WsBinary, WireFormat::Tcp] {
            let frames = exact(build_batch(format, &target, &msgs));
            let mut rest = &frames[..];
            let mut sizes = Vec::new();
            let mut decoded = Vec::new();
            while !rest.is_empty() {
                let (_, payload, tail) = split_server_frame(format, rest);
                let Ok(ServerMsg::Batch { target: t, msgs }) = decode_server_binary(payload) else {
                    panic!("not a batch");
                };
                assert_eq!(t, target);
                sizes.push(msgs.len());
                decoded.extend(msgs);
                rest = tail;
            }
            assert_eq!(sizes, [MAX_MSGS_PER_BATCH, MAX_MSGS_PER_BATCH, 3]);
            assert_eq!(decoded, msgs);
        }
        // JSON has no count field: one frame.
        let frame = exact(build_batch(WireFormat::WsJson, &target, &msgs));
        let (_, payload) = server_payload(WireFormat::WsJson, &frame);
        assert!(
            matches!(decode_server_json(&payload), Ok(ServerMsg::Batch { msgs: m, .. }) if m == msgs)
        );
    }

    #[test]
    fn batch_views_borrow_what_the_owned_decode_copies() {
        let msgs: Vec<PushMessage> = (0..5u64)
            .map(|seq| msg(100 + seq, (seq % 4) as u8, "gift", r#"{"n":1}"#))
            .collect();
        for target in [
            Target::Room("r1".to_owned()),
            Target::User("u9".to_owned()),
            Target::Broadcast,
        ] {
            let frame = exact(build_batch(WireFormat::Tcp, &target, &msgs));
            let payload = &frame[TCP_PREFIX_LEN..];
            let Ok(ServerMsgView::Batch(view)) = view_server_binary(payload) else {
                panic!("not a batch view");
            };
            assert_eq!(view.target.to_target(), target);
            assert_eq!(view.len(), msgs.len());
            assert_eq!(view.iter().size_hint(), (5, Some(5)));
            let borrowed: Vec<PushMessage> = view
                .iter()
                .map(|m| {
                    msg(
                        m.seq,
                        m.priority,
                        m.kind,
                        std::str::from_utf8(m.data).unwrap(),
                    )
                })
                .collect();
            assert_eq!(borrowed, msgs);
            // A view is only handed out for a payload that is whole: every cut fails.
            for end in 0..payload.len() {
                assert!(view_server_binary(&payload[..end]).is_err(), "cut at {end}");
            }
        }
        let close = encode_close(WireFormat::Tcp, 4000, "bye");
        assert!(matches!(
            view_server_binary(&close[TCP_PREFIX_LEN..]),
            Ok(ServerMsgView::Other(ServerMsg::Close { code: 4000, .. }))
        ));
    }

    #[test]
    fn binary_batches_cut_overlong_kinds_and_ids() {
        let kind = format!("{}🚀", "k".repeat(253)); // 257 bytes; 🚀 straddles byte 255
        let target = Target::User("u".repeat(300));
        let frame = exact(build_batch(
            WireFormat::Tcp,
            &target,
            &[msg(1, 0, &kind, "0")],
        ));
        assert_eq!(
            decode_server_binary(&frame[TCP_PREFIX_LEN..]),
            Ok(ServerMsg::Batch {
                target: Target::User("u".repeat(255)),
                msgs: vec![msg(1, 0, &"k".repeat(253), "0")],
            })
        );
    }

    // ---- encode_close ------------------------------------------------------------------------

    #[test]
    fn close_frames_match_the_protocol() {
        for format in [WireFormat::WsJson, WireFormat::WsBinary] {
            let frame = exact(build_close(format, 4001, "unauthenticated"));
            let mut expected = vec![0x88, 17, 0x0f, 0xa1];
            expected.extend_from_slice(b"unauthenticated");
            assert_eq!(&frame[..], expected);
        }
        let frame = exact(build_close(WireFormat::Tcp, 4008, "slow"));
        assert_eq!(
            &frame[..],
            [0, 0, 0, 8, 0x83, 0x0f, 0xa8, 4, b's', b'l', b'o', b'w']
        );
        assert_eq!(
            decode_server_binary(&frame[TCP_PREFIX_LEN..]),
            Ok(ServerMsg::Close {
                code: 4008,
                reason: "slow".to_owned()
            })
        );
    }

    #[test]
    fn close_reasons_fit_their_frames() {
        let reason = "ü".repeat(200); // 400 bytes
        let ws = exact(build_close(WireFormat::WsBinary, 1000, &reason));
        let (opcode, payload) = server_payload(WireFormat::WsBinary, &ws);
        assert_eq!(opcode, Some(OpCode::Close as u8));
        assert_eq!(
            payload.len(),
            2 + 122,
            "a control frame holds at most 125 bytes"
        );
        assert_eq!(&payload[2..], "ü".repeat(61).as_bytes());

        let tcp = exact(build_close(WireFormat::Tcp, 1001, &reason));
        assert_eq!(
            decode_server_binary(&tcp[TCP_PREFIX_LEN..]),
            Ok(ServerMsg::Close {
                code: 1001,
                reason: "ü".repeat(127)
            })
        );
        let empty = exact(build_close(WireFormat::WsJson, 1000, ""));
        assert_eq!(&empty[..], [0x88, 2, 0x03, 0xe8]);
    }

    // ---- decode_server_* errors --------------------------------------------------------------

    #[test]
    fn server_json_decoder_rejects_malformed_messages() {
        for text in [
            &br#"["reply",1,true]"#[..],
            br#"{"op":"reply","ok":true}"#,
            br#"{"op":"reply","seq":1}"#,
            br#"{"op":"reply","seq":1,"ok":false}"#,
            br#"{"op":"reply","seq":1,"ok":true,"error":{"code":"x","message":"y"}}"#,
            br#"{"op":"batch","msgs":[]}"#,
            br#"{"op":"batch","room":"r","user":"u","msgs":[]}"#,
            br#"{"op":"batch","broadcast":false,"msgs":[]}"#,
            br#"{"op":"batch","room":"r"}"#,
            br#"{"op":"batch","room":"r","msgs":[{"seq":1,"p":4,"kind":"k","data":1}]}"#,
            br#"{"op":"batch","room":"r","msgs":[{"seq":1,"p":0,"kind":"k"}]}"#,
            br#"{"op":"batch","room":"r","msgs":[{"seq":1,"p":0,"kind":"k","data":}]}"#,
        ] {
            let err = decode_server_json(text).unwrap_err();
            assert_eq!(
                err.code,
                ErrorCode::BadRequest,
                "{}",
                String::from_utf8_lossy(text)
            );
        }
        let err = decode_server_json(br#"{"op":"close","code":1000}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::UnknownOp);
    }

    #[test]
    fn server_binary_decoder_rejects_malformed_messages() {
        for payload in [
            &[][..],
            &[0x81, 0, 0, 0, 0, 0, 0, 0, 1, 2],    // ok is 2
            &[0x81, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0], // trailing byte
            &[0x81, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, b'x', 0, 5], // message overruns
            &[0x82, 3, 0, 0, 0],                   // target 3
            &[0x82, 2, 1, b'x', 0, 0],             // broadcast with an id
            &[0x82, 0, 1, b'r', 0xff, 0xff],       // count overruns
            &[
                0x82, 0, 1, b'r', 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 4, 0, 0, 0, 0, 0,
            ], // p 4
            &[0x83, 0x03],                         // truncated code
        ] {
            let err = decode_server_binary(payload).unwrap_err();
            assert_eq!(err.code, ErrorCode::BadRequest, "{payload:?}");
        }
        for op in [0x01, 0x05, 0x80, 0x85] {
            let err = decode_server_binary(&[op]).unwrap_err();
            assert_eq!(err.code, ErrorCode::UnknownOp);
        }
    }

    // ---- since, history ----------------------------------------------------------------------

    #[test]
    fn json_decodes_since_and_history_as_documented() {
        assert_eq!(
            decode_json(br#"{"op":"join","seq":5,"room":"r1","since":{"epoch":"k3x9","seq":41}}"#),
            Ok(ClientOp::Join {
                seq: 5,
                room: "r1".to_owned(),
                since: Some(since("k3x9", 41)),
            })
        );
        assert_eq!(
            decode_json(
                br#"{"op":"auth","seq":1,"token":"<JWT>","since":{"seq":7,"epoch":"u-E_1"}}"#
            ),
            Ok(ClientOp::Auth {
                seq: 1,
                token: "<JWT>".to_owned(),
                since: Some(since("u-E_1", 7)),
            })
        );
        assert_eq!(
            decode_json(br#"{"op":"history","seq":9,"room":"r1","since":41,"limit":100}"#),
            Ok(ClientOp::History {
                seq: 9,
                room: "r1".to_owned(),
                since: 41,
                limit: 100,
            })
        );
        // `limit` defaults; the bounds are accepted.
        for (limit, want) in [
            ("", DEFAULT_HISTORY_LIMIT),
            (r#","limit":1"#, 1),
            (r#","limit":1000"#, MAX_HISTORY_LIMIT),
        ] {
            let text = format!(r#"{{"op":"history","seq":9,"room":"r1","since":0{limit}}}"#);
            assert_eq!(
                decode_json(text.as_bytes()),
                Ok(ClientOp::History {
                    seq: 9,
                    room: "r1".to_owned(),
                    since: 0,
                    limit: want,
                })
            );
        }
        // Unknown keys inside `since` are ignored like unknown fields, and escapes are read.
        assert_eq!(
            decode_json(br#"{"op":"join","seq":5,"room":"r1","since":{"x":[{}],"\u0065poch":"k\u0033","seq":9007199254740992}}"#),
            Ok(ClientOp::Join {
                seq: 5,
                room: "r1".to_owned(),
                since: Some(since("k3", MAX_JSON_SEQ)),
            })
        );
    }

    #[test]
    fn json_ignores_since_and_limit_where_the_op_has_none() {
        assert_eq!(
            decode_json(br#"{"op":"leave","seq":3,"room":"r1","since":"x","limit":-1}"#),
            Ok(ClientOp::Leave {
                seq: 3,
                room: "r1".to_owned()
            })
        );
        assert_eq!(
            decode_json(br#"{"op":"ping","seq":4,"since":{"epoch":""},"limit":0}"#),
            Ok(ClientOp::Ping { seq: 4 })
        );
        assert_eq!(
            decode_json(br#"{"op":"join","seq":4,"room":"r1","limit":{}}"#),
            Ok(ClientOp::Join {
                seq: 4,
                room: "r1".to_owned(),
                since: None
            })
        );
    }

    #[test]
    fn json_since_errors_name_the_field_and_echo_the_seq() {
        for op in ["join", "auth"] {
            let field = if op == "join" { "room" } else { "token" };
            let with =
                |since: &str| format!(r#"{{"op":"{op}","seq":7,"{field}":"x","since":{since}}}"#);
            for since in ["null", "41", "\"k3x9:41\"", "[\"k3x9\",41]", "true"] {
                bad_field(7, "since", decode_json(with(since).as_bytes()));
            }
            // A key given twice inside `since`.
            bad_field(
                7,
                "since",
                decode_json(with(r#"{"epoch":"a","seq":1,"seq":2}"#).as_bytes()),
            );
            for since in [
                r#"{"seq":1}"#,
                r#"{"epoch":null,"seq":1}"#,
                r#"{"epoch":5,"seq":1}"#,
                r#"{"epoch":"","seq":1}"#,
                r#"{"epoch":"k.3","seq":1}"#,
                r#"{"epoch":"k 3","seq":1}"#,
                r#"{"epoch":"ü","seq":1}"#,
                r#"{"epoch":"123456789012345678901234567890123","seq":1}"#,
            ] {
                bad_field(7, "since.epoch", decode_json(with(since).as_bytes()));
            }
            for since in [
                r#"{"epoch":"k3x9"}"#,
                r#"{"epoch":"k3x9","seq":null}"#,
                r#"{"epoch":"k3x9","seq":"41"}"#,
                r#"{"epoch":"k3x9","seq":-1}"#,
                r#"{"epoch":"k3x9","seq":1.5}"#,
                r#"{"epoch":"k3x9","seq":9007199254740993}"#,
            ] {
                bad_field(7, "since.seq", decode_json(with(since).as_bytes()));
            }
        }
        // The op's own field is checked first.
        bad_field(
            7,
            "room",
            decode_json(br#"{"op":"join","seq":7,"since":{"epoch":"k","seq":1}}"#),
        );
    }

    #[test]
    fn json_history_errors_name_the_field_and_echo_the_seq() {
        bad_field(
            9,
            "room",
            decode_json(br#"{"op":"history","seq":9,"since":1}"#),
        );
        for since in [
            "",
            r#","since":null"#,
            r#","since":"41""#,
            r#","since":-1"#,
            r#","since":4.5"#,
            r#","since":9007199254740993"#,
            r#","since":{"epoch":"k3x9","seq":41}"#,
        ] {
            let text = format!(r#"{{"op":"history","seq":9,"room":"r1"{since}}}"#);
            bad_field(9, "since", decode_json(text.as_bytes()));
        }
        for limit in ["0", "1001", "-1", "null", "\"10\"", "1.0", "4294967397"] {
            let text =
                format!(r#"{{"op":"history","seq":9,"room":"r1","since":1,"limit":{limit}}}"#);
            bad_field(9, "limit", decode_json(text.as_bytes()));
        }
    }

    #[test]
    fn binary_decodes_the_documented_join_with_since() {
        // `join` of r1 with seq 5, resuming from epoch k3x9 at seq 41, over raw TCP.
        let frame = [
            0, 0, 0, 0x19, // length 25
            0x02, 0, 0, 0, 0, 0, 0, 0, 5, // op, seq
            2, b'r', b'1', // room
            4, b'k', b'3', b'x', b'9', // since.epoch
            0, 0, 0, 0, 0, 0, 0, 0x29, // since.seq
        ];
        assert_eq!(tcp_frame_len(&frame), Some(25));
        let op = ClientOp::Join {
            seq: 5,
            room: "r1".to_owned(),
            since: Some(since("k3x9", 41)),
        };
        assert_eq!(decode_binary(&frame[4..]), Ok(op.clone()));
        assert_eq!(encode_op(WireFormat::Tcp, &op, [0; 4]), &frame[..]);
    }

    #[test]
    fn binary_replies_match_the_documented_recovered_example() {
        let extra = ReplyExtra {
            position: Some(("k3x9", 57)),
            recovered: Some(Ok(())),
            ..ReplyExtra::default()
        };
        let frame = encode_reply_ok(WireFormat::Tcp, 5, &extra);
        let want = [
            0, 0, 0, 0x19, // length 25
            0x81, 0, 0, 0, 0, 0, 0, 0, 5, 1, 0x03, // op, seq, ok, flags
            4, b'k', b'3', b'x', b'9', 0, 0, 0, 0, 0, 0, 0, 0x39, // position
            0,    // recovered
        ];
        assert_eq!(&frame[..], want);
    }

    #[test]
    fn binary_decodes_auth_with_since_and_history() {
        let mut auth = vec![1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 3, b'j', b'w', b't', 1, b'u'];
        auth.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(
            decode_binary(&auth),
            Ok(ClientOp::Auth {
                seq: 1,
                token: "jwt".to_owned(),
                since: Some(since("u", u64::MAX)),
            })
        );
        let history = [
            5, 0, 0, 0, 0, 0, 0, 0, 9, 2, b'r', b'1', 0, 0, 0, 0, 0, 0, 0, 41, 0, 100,
        ];
        let op = ClientOp::History {
            seq: 9,
            room: "r1".to_owned(),
            since: 41,
            limit: 100,
        };
        assert_eq!(decode_binary(&history), Ok(op.clone()));
        assert_eq!(&encode_op(WireFormat::Tcp, &op, [0; 4])[4..], &history[..]);
    }

    #[test]
    fn binary_since_and_history_errors_echo_the_seq() {
        let join = [2, 0, 0, 0, 0, 0, 0, 0, 7, 2, b'r', b'1'];
        let with = |tail: &[u8]| [&join[..], tail].concat();
        // An epoch without its seq, a part of a seq, or a lone byte: truncated.
        bad_request(7, decode_binary(&with(&[1, b'k'])));
        bad_request(7, decode_binary(&with(&[1, b'k', 0, 0, 0, 0, 0, 0, 0])));
        bad_request(7, decode_binary(&with(&[4])));
        // Trailing after a whole since.
        bad_request(
            7,
            decode_binary(&with(&[1, b'k', 0, 0, 0, 0, 0, 0, 0, 1, 0])),
        );
        // Invalid epochs.
        for epoch in [&b""[..], b"k.3", b"k 3", &[b'e'; 33], &[0xff]] {
            let mut tail = vec![epoch.len() as u8];
            tail.extend_from_slice(epoch);
            tail.extend_from_slice(&[0; 8]);
            let err = decode_binary(&with(&tail)).unwrap_err();
            assert_eq!((err.seq, err.code), (7, ErrorCode::BadRequest));
            assert!(err.message.contains("since.epoch"), "{}", err.message);
        }
        // History: limits outside 1..=1000, and truncated bodies.
        let history = |limit: u16| {
            let mut b = vec![
                5, 0, 0, 0, 0, 0, 0, 0, 7, 2, b'r', b'1', 0, 0, 0, 0, 0, 0, 0, 1,
            ];
            b.extend_from_slice(&limit.to_be_bytes());
            b
        };
        for limit in [0, 1001, u16::MAX] {
            bad_field(7, "limit", decode_binary(&history(limit)));
        }
        let full = history(10);
        for end in 9..full.len() {
            bad_request(7, decode_binary(&full[..end]));
        }
        bad_request(7, decode_binary(&[&full[..], &[0]].concat()));
    }

    #[test]
    fn encoded_json_ops_with_since_and_history_are_canonical() {
        let ops = [
            (
                ClientOp::Join {
                    seq: 5,
                    room: "r1".to_owned(),
                    since: Some(since("k3x9", 41)),
                },
                &br#"{"op":"join","seq":5,"room":"r1","since":{"epoch":"k3x9","seq":41}}"#[..],
            ),
            (
                ClientOp::Auth {
                    seq: 1,
                    token: "t".to_owned(),
                    since: Some(since("e", 7)),
                },
                br#"{"op":"auth","seq":1,"token":"t","since":{"epoch":"e","seq":7}}"#,
            ),
            (
                ClientOp::History {
                    seq: 9,
                    room: "r1".to_owned(),
                    since: 41,
                    limit: 100,
                },
                br#"{"op":"history","seq":9,"room":"r1","since":41,"limit":100}"#,
            ),
        ];
        for (op, text) in ops {
            let (_, json) = unmask_client_frame(&exact(build_op(WireFormat::WsJson, &op, [3; 4])));
            assert_eq!(json, text);
        }
    }

    #[test]
    fn binary_history_limits_are_cut_to_their_u16() {
        let op = ClientOp::History {
            seq: 1,
            room: "r".to_owned(),
            since: 0,
            limit: 70_000,
        };
        let tcp = exact(build_op(WireFormat::Tcp, &op, [0; 4]));
        assert_eq!(&tcp[tcp.len() - 2..], [0xff, 0xff]);
        bad_field(1, "limit", decode_binary(&tcp[TCP_PREFIX_LEN..]));
    }

    // ---- encode_reply_ok, encode_room_online -------------------------------------------------

    /// Every combination of extras over a few values.
    fn sample_extras(msgs: &[PushMessage]) -> Vec<ReplyExtra<'_>> {
        let positions = [
            None,
            Some(("k3x9", 57)),
            Some(("e", u64::MAX)),
            Some(("x", 0)),
        ];
        let recovered = [
            None,
            Some(Ok(())),
            Some(Err(RecoveryFailure::EpochChanged)),
            Some(Err(RecoveryFailure::TooOld)),
            Some(Err(RecoveryFailure::TooMany)),
            Some(Err(RecoveryFailure::NotStored)),
        ];
        let histories = [
            (None, None),
            (Some(&msgs[..0]), Some(true)),
            (Some(&msgs[..1]), Some(false)),
            (Some(msgs), Some(true)),
        ];
        let mut extras = Vec::new();
        for position in positions {
            for recovered in recovered {
                for (msgs, complete) in histories {
                    extras.push(ReplyExtra {
                        position,
                        recovered,
                        msgs,
                        complete,
                        msg_seq: None,
                        not_broadcast: false,
                    });
                }
            }
        }
        extras
    }

    /// The details a client reads back from `extra`.
    fn details_of(extra: &ReplyExtra<'_>) -> ReplyDetails {
        ReplyDetails {
            epoch: extra.position.map(|(e, _)| e.to_owned()),
            last_seq: extra.position.map(|(_, s)| s),
            recovered: extra.recovered,
            complete: extra.msgs.map(|_| extra.complete.unwrap_or(true)),
            msgs: extra.msgs.map(<[PushMessage]>::to_vec),
            msg_seq: None,
            not_broadcast: false,
            retry_after_ms: None,
            platform_code: None,
        }
    }

    #[test]
    fn replies_without_extras_are_the_plain_ok_reply() {
        for format in WireFormat::ALL {
            for seq in [0, 7, 99, MAX_JSON_SEQ, u64::MAX] {
                assert_eq!(
                    encode_reply_ok(format, seq, &ReplyExtra::default()),
                    encode_reply(format, seq, Ok(()))
                );
            }
        }
        // `complete` alone is ignored: it only travels with messages.
        let extra = ReplyExtra {
            complete: Some(false),
            ..ReplyExtra::default()
        };
        for format in WireFormat::ALL {
            assert_eq!(
                encode_reply_ok(format, 2, &extra),
                encode_reply(format, 2, Ok(()))
            );
        }
    }

    #[test]
    fn json_replies_with_extras_match_the_protocol_text() {
        let text = |extra: &ReplyExtra<'_>| {
            let frame = encode_reply_ok(WireFormat::WsJson, 2, extra);
            let (opcode, payload) = server_payload(WireFormat::WsJson, &frame);
            assert_eq!(opcode, Some(OpCode::Text as u8));
            String::from_utf8(payload).unwrap()
        };
        assert_eq!(
            text(&ReplyExtra {
                position: Some(("k3x9", 57)),
                ..ReplyExtra::default()
            }),
            r#"{"op":"reply","seq":2,"ok":true,"epoch":"k3x9","last_seq":57}"#
        );
        assert_eq!(
            text(&ReplyExtra {
                position: Some(("k3x9", 57)),
                recovered: Some(Ok(())),
                ..ReplyExtra::default()
            }),
            r#"{"op":"reply","seq":2,"ok":true,"epoch":"k3x9","last_seq":57,"recovered":true}"#
        );
        assert_eq!(
            text(&ReplyExtra {
                position: Some(("k3x9", 57)),
                recovered: Some(Err(RecoveryFailure::TooOld)),
                ..ReplyExtra::default()
            }),
            r#"{"op":"reply","seq":2,"ok":true,"epoch":"k3x9","last_seq":57,"recovered":false,"reason":"too_old"}"#
        );
        let msgs = [msg(42, 2, "gift", r#"{"gift":"rocket","n":3}"#)];
        assert_eq!(
            text(&ReplyExtra {
                position: Some(("k3x9", 57)),
                msgs: Some(&msgs),
                complete: Some(true),
                ..ReplyExtra::default()
            }),
            r#"{"op":"reply","seq":2,"ok":true,"epoch":"k3x9","last_seq":57,"complete":true,"msgs":[{"seq":42,"p":2,"kind":"gift","data":{"gift":"rocket","n":3}}]}"#
        );
        // `complete` is always sent with the messages: true when left out.
        assert_eq!(
            text(&ReplyExtra {
                msgs: Some(&[]),
                ..ReplyExtra::default()
            }),
            r#"{"op":"reply","seq":2,"ok":true,"complete":true,"msgs":[]}"#
        );
    }

    #[test]
    fn binary_replies_with_extras_match_the_protocol_layout() {
        let position = ReplyExtra {
            position: Some(("k3x9", 57)),
            recovered: Some(Err(RecoveryFailure::TooOld)),
            ..ReplyExtra::default()
        };
        let frame = encode_reply_ok(WireFormat::Tcp, 2, &position);
        let mut want = vec![0, 0, 0, 25, 0x81, 0, 0, 0, 0, 0, 0, 0, 2, 1, 0x03];
        want.extend_from_slice(&[4, b'k', b'3', b'x', b'9', 0, 0, 0, 0, 0, 0, 0, 57, 2]);
        assert_eq!(&frame[..], want);

        let msgs = [msg(42, 2, "g", "{}")];
        let history = ReplyExtra {
            msgs: Some(&msgs),
            complete: Some(false),
            ..ReplyExtra::default()
        };
        let frame = encode_reply_ok(WireFormat::WsBinary, 9, &history);
        let mut want = vec![0x82, 31, 0x81, 0, 0, 0, 0, 0, 0, 0, 9, 1, 0x04, 0, 0, 1];
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 42, 2, 1, b'g', 0, 0, 0, 2, b'{', b'}']);
        assert_eq!(&frame[..], want);

        let recovered = ReplyExtra {
            recovered: Some(Ok(())),
            ..ReplyExtra::default()
        };
        let frame = encode_reply_ok(WireFormat::Tcp, 1, &recovered);
        assert_eq!(
            &frame[..],
            [0, 0, 0, 12, 0x81, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0x02, 0]
        );
    }

    #[test]
    fn replies_with_extras_round_trip_in_every_format() {
        let msgs = nasty_messages();
        for extra in sample_extras(&msgs) {
            let want = details_of(&extra);
            assert_eq!(want.as_extra().flags(), extra.flags());
            for format in WireFormat::ALL {
                let frame = encode_reply_ok(format, 77, &extra);
                let (_, payload) = server_payload(format, &frame);
                if format == WireFormat::WsJson {
                    serde_json::from_slice::<serde_json::Value>(&payload).unwrap();
                }
                let decoded = decode_server(format, &payload);
                assert_eq!(
                    decoded,
                    Ok(ServerMsg::Reply {
                        seq: 77,
                        result: Ok(()),
                        details: want.clone(),
                    }),
                    "{format:?} {extra:?}"
                );
                // What a client decodes encodes back to the same frame.
                assert_eq!(encode_reply_ok(format, 77, &want.as_extra()), frame);
            }
        }
    }

    #[test]
    fn reply_extras_are_exact_size_and_follow_the_frame_length_classes() {
        let big = format!("\"{}\"", "x".repeat(70_000));
        let msgs = [msg(1, 3, "chat", &big)];
        for n in [0, 1] {
            let extra = ReplyExtra {
                position: Some(("k3x9", 57)),
                msgs: Some(&msgs[..n]),
                ..ReplyExtra::default()
            };
            for format in WireFormat::ALL {
                let frame = encode_reply_ok(format, 3, &extra);
                let (_, payload) = server_payload(format, &frame);
                assert!(decode_server(format, &payload).is_ok());
            }
        }
    }

    #[test]
    fn reply_messages_are_capped_at_one_frame_count_in_every_format() {
        let msgs: Vec<PushMessage> = (0..MAX_MSGS_PER_BATCH as u64 + 2)
            .map(|seq| msg(seq, 3, "c", "1"))
            .collect();
        let extra = ReplyExtra {
            msgs: Some(&msgs),
            ..ReplyExtra::default()
        };
        for format in WireFormat::ALL {
            let frame = encode_reply_ok(format, 1, &extra);
            let (_, payload) = server_payload(format, &frame);
            let Ok(ServerMsg::Reply { details, .. }) = decode_server(format, &payload) else {
                panic!("not a reply");
            };
            assert_eq!(details.msgs.as_deref(), Some(&msgs[..MAX_MSGS_PER_BATCH]));
        }
    }

    #[test]
    fn binary_reply_epochs_and_kinds_are_cut_to_their_str8() {
        let epoch = format!("{}ü", "e".repeat(254));
        let msgs = [msg(1, 0, &format!("{}🚀", "k".repeat(253)), "0")];
        let extra = ReplyExtra {
            position: Some((&epoch, 1)),
            msgs: Some(&msgs),
            ..ReplyExtra::default()
        };
        let frame = encode_reply_ok(WireFormat::Tcp, 1, &extra);
        let Ok(ServerMsg::Reply { details, .. }) = decode_server_binary(&frame[TCP_PREFIX_LEN..])
        else {
            panic!("not a reply");
        };
        assert_eq!(details.epoch, Some("e".repeat(254)));
        assert_eq!(details.msgs.unwrap()[0].kind, "k".repeat(253));
    }

    #[test]
    fn measured_json_messages_match_their_closed_form_length() {
        for m in nasty_messages() {
            assert_eq!(measure(|out| write_json_msg(out, &m)), json_msg_len(&m));
        }
    }

    #[test]
    fn room_counts_match_the_protocol_and_round_trip() {
        let frame = encode_room_online(WireFormat::WsJson, "r1", 104_532, 98_000);
        let (opcode, text) = server_payload(WireFormat::WsJson, &frame);
        assert_eq!(opcode, Some(OpCode::Text as u8));
        assert_eq!(
            text,
            br#"{"op":"room","room":"r1","online":104532,"users":98000}"#
        );
        let frame = encode_room_online(WireFormat::Tcp, "r1", 104_532, 98_000);
        let mut want = vec![0, 0, 0, 12, 0x84, 2, b'r', b'1'];
        want.extend_from_slice(&104_532u32.to_be_bytes());
        want.extend_from_slice(&98_000u32.to_be_bytes());
        assert_eq!(&frame[..], want);
        for format in WireFormat::ALL {
            for room in ["r1", "we\"ird\\ro\u{1}om ✓", ""] {
                for (online, users) in [(0, 0), (104_532, 98_000), (u32::MAX, u32::MAX)] {
                    let frame = encode_room_online(format, room, online, users);
                    let (_, payload) = server_payload(format, &frame);
                    assert_eq!(
                        decode_server(format, &payload),
                        Ok(ServerMsg::Room {
                            room: room.to_owned(),
                            online,
                            users
                        })
                    );
                }
            }
        }
        let long = "r".repeat(300);
        let frame = encode_room_online(WireFormat::WsBinary, &long, 1, 1);
        let (_, payload) = server_payload(WireFormat::WsBinary, &frame);
        assert!(matches!(
            view_server_binary(&payload),
            Ok(ServerMsgView::Other(ServerMsg::Room { room, .. })) if room == long[..255]
        ));
    }

    #[test]
    fn server_decoders_reject_malformed_extras_and_room_counts() {
        for text in [
            &br#"{"op":"reply","seq":1,"ok":true,"epoch":"k"}"#[..],
            br#"{"op":"reply","seq":1,"ok":true,"last_seq":5}"#,
            br#"{"op":"reply","seq":1,"ok":true,"reason":"too_old"}"#,
            br#"{"op":"reply","seq":1,"ok":true,"recovered":true,"reason":"too_old"}"#,
            br#"{"op":"reply","seq":1,"ok":true,"recovered":false}"#,
            br#"{"op":"reply","seq":1,"ok":true,"recovered":false,"reason":"gone"}"#,
            br#"{"op":"reply","seq":1,"ok":true,"complete":true}"#,
            br#"{"op":"reply","seq":1,"ok":true,"msgs":[]}"#,
            br#"{"op":"reply","seq":1,"ok":false,"error":{"code":"x","message":"y"},"epoch":"k","last_seq":1}"#,
            br#"{"op":"room","room":"r1","online":1}"#,
            br#"{"op":"room","online":1,"users":1}"#,
            br#"{"op":"room","room":"r1","online":-1,"users":1}"#,
            br#"{"op":"room","room":"r1","online":4294967296,"users":1}"#,
        ] {
            let err = decode_server_json(text).unwrap_err();
            assert_eq!(
                err.code,
                ErrorCode::BadRequest,
                "{}",
                String::from_utf8_lossy(text)
            );
        }
        let ok = [0x81, 0, 0, 0, 0, 0, 0, 0, 1, 1];
        let with = |tail: &[u8]| [&ok[..], tail].concat();
        for payload in [
            with(&[0]),                                                // flags 0
            with(&[0x08]),                                             // unknown flag
            with(&[0x02]),                                             // recovered without its byte
            with(&[0x02, 5]),                                          // unknown recovery result
            with(&[0x02, 0, 0]),                                       // trailing
            with(&[0x01, 1, b'k']),                                    // position without last_seq
            with(&[0x04, 2, 0, 0]),                                    // complete 2
            with(&[0x04, 1, 0, 1]),                                    // count overruns
            with(&[0x04, 1, 0]),                                       // truncated count
            [0x81, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0x01].to_vec(), // extras on an error
            vec![0x84, 2, b'r', b'1', 0, 0, 0, 1, 0, 0, 0],            // truncated users
        ] {
            let err = decode_server_binary(&payload).unwrap_err();
            assert_eq!(err.code, ErrorCode::BadRequest, "{payload:?}");
        }
    }

    // ---- robustness --------------------------------------------------------------------------

    #[test]
    fn decoders_never_panic_on_prefixes_and_mutations() {
        let mut inputs: Vec<Vec<u8>> = Vec::new();
        for op in sample_ops() {
            inputs.push(encode_op(WireFormat::Tcp, &op, [0; 4])[TCP_PREFIX_LEN..].to_vec());
            inputs.push(unmask_client_frame(&encode_op(WireFormat::WsJson, &op, [0; 4])).1);
        }
        for format in [WireFormat::WsJson, WireFormat::Tcp] {
            for target in nasty_targets() {
                let frame = encode_batch(format, &target, &nasty_messages());
                inputs.push(server_payload(format, &frame).1);
            }
            let reply = encode_reply(format, 5, Err((ErrorCode::InvalidToken, "bad \"sig\"")));
            inputs.push(server_payload(format, &reply).1);
        }
        inputs.push(
            encode_close(WireFormat::Tcp, 4000, "heartbeat timeout")[TCP_PREFIX_LEN..].to_vec(),
        );
        let msgs = nasty_messages();
        let extras = sample_extras(&msgs);
        for format in [WireFormat::WsJson, WireFormat::Tcp] {
            // A spread of the combinations keeps the test quick.
            for extra in extras.iter().step_by(7) {
                inputs.push(server_payload(format, &encode_reply_ok(format, 5, extra)).1);
            }
            let room = encode_room_online(format, "r1", 104_532, 98_000);
            inputs.push(server_payload(format, &room).1);
        }

        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let check = |input: &[u8]| {
            let _ = decode_json(input);
            if let Ok(op) = decode_binary(input) {
                let tcp = encode_op(WireFormat::Tcp, &op, [0; 4]);
                assert_eq!(&tcp[TCP_PREFIX_LEN..], input, "binary ops are canonical");
            }
            let _ = decode_server_json(input);
            // Binary server messages are canonical too.
            match decode_server_binary(input) {
                Ok(ServerMsg::Reply {
                    seq,
                    result: Ok(()),
                    details,
                }) => {
                    let frame = encode_reply_ok(WireFormat::Tcp, seq, &details.as_extra());
                    assert_eq!(
                        &frame[TCP_PREFIX_LEN..],
                        input,
                        "binary replies are canonical"
                    );
                }
                Ok(ServerMsg::Room {
                    room,
                    online,
                    users,
                }) => {
                    let frame = encode_room_online(WireFormat::Tcp, &room, online, users);
                    assert_eq!(&frame[TCP_PREFIX_LEN..], input, "room counts are canonical");
                }
                _ => {}
            }
            if let Ok(ServerMsgView::Batch(view)) = view_server_binary(input) {
                assert_eq!(view.iter().count(), view.len());
            }
            let _ = tcp_frame_len(input);
        };
        for input in &inputs {
            for end in 0..=input.len() {
                check(&input[..end]);
            }
            for _ in 0..200 {
                let mut mutated = input.clone();
                for _ in 0..=rng.below(4) {
                    let at = rng.below(mutated.len());
                    mutated[at] = rng.next() as u8;
                }
                check(&mutated);
            }
        }
        for _ in 0..2000 {
            let len = rng.below(64);
            let random: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            check(&random);
        }
    }
}
