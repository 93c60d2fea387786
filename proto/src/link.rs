//! The control ↔ edge link codec (PROTOCOL.md §6).
//!
//! One persistent TCP connection carries length-prefixed frames in both directions: `u32 length`
//! (of what follows), `type u8`, then the body. The edge registers, reports load, answers user
//! queries and asks for channel positions, recoveries and history pages; the control plane
//! publishes messages, sets per-room rate levels, asks which connections a user has on the edge
//! and pushes rooms' online counts.
//!
//! The codec is pure: [`encode`] appends bytes to a buffer and [`decode`] splits whole frames off
//! the front of one. Both check the same rules, so every frame [`encode`] accepts [`decode`]
//! accepts too, and the encoding is canonical (decoding then re-encoding gives the same bytes).
//!
//! **Errors are fatal to the link.** A [`LinkError`] from [`decode`] means the peer is speaking
//! something else (or the stream is corrupt) and frame boundaries can no longer be trusted; the
//! caller must drop the connection (the edge then re-dials with backoff).

use bytes::{BufMut, Bytes, BytesMut};

use super::client::WireFormat;
use super::ids::{is_valid_epoch, is_valid_id};
use super::message::{
    split_priority_byte, PushMessage, RecoveryFailure, Since, Target, PRIORITIES,
};
use super::sketch::{UserSketch, REGISTERS};
use super::wire::{put_bytes32, put_str16, put_str8, Reader, WireError};

/// Link protocol version carried by `register`; any other version is refused.
pub const LINK_VERSION: u16 = 6;

/// Largest accepted value of a frame's length prefix (type byte + body), in bytes.
pub const MAX_LINK_FRAME: usize = 16 << 20;

/// Budget value meaning "no limit" for a priority in [`SetLevel::budgets`].
pub const UNLIMITED: u32 = u32::MAX;

/// Size of the length prefix in front of every frame.
const LEN_PREFIX: usize = 4;

const TYPE_REGISTER: u8 = 0x01;
const TYPE_PUBLISH: u8 = 0x02;
const TYPE_SET_LEVEL: u8 = 0x03;
const TYPE_LOAD_REPORT: u8 = 0x04;
const TYPE_QUERY_USER: u8 = 0x05;
const TYPE_USER_CONNS: u8 = 0x06;
const TYPE_SYNC: u8 = 0x07;
const TYPE_SYNC_ACK: u8 = 0x08;
const TYPE_RECOVER: u8 = 0x09;
const TYPE_RECOVERED: u8 = 0x0a;
const TYPE_HISTORY: u8 = 0x0b;
const TYPE_HISTORY_PAGE: u8 = 0x0c;
const TYPE_ROOM_ONLINE: u8 = 0x0d;
const TYPE_SEND: u8 = 0x0e;
const TYPE_SEND_RESULT: u8 = 0x0f;
const TYPE_ACKS: u8 = 0x10;
/// Bytes of the smallest entry of an `acks` list: `user str8` (1 byte), `msg_seq u64`,
/// `at_ms u64`.
const MIN_ACK_LEN: usize = 1 + 1 + 8 + 8;

// Smallest encodings of the repeated items, used to bound pre-allocation by what the frame can
// really hold rather than by an untrusted count.

/// One load-report entry: a one-byte id (ids are never empty) plus its length byte and a `u32`
/// count.
const MIN_ENTRY_LEN: usize = 1 + 1 + 4;
/// One load-report sequence number: target tag, empty id (broadcast), `u64` seq.
const MIN_SEQ_LEN: usize = 1 + 1 + 8;
/// One user connection: format byte, empty peer, zero room count.
const MIN_CONN_LEN: usize = 1 + 1 + 1;
/// One room of a user connection: a one-byte id plus its length byte.
const MIN_ROOM_LEN: usize = 1 + 1;
/// One channel of a sync: target tag and an empty id (broadcast).
const MIN_TARGET_LEN: usize = 1 + 1;
/// One channel position: a target, a one-byte epoch (epochs are never empty) and `last_seq`.
const MIN_POSITION_LEN: usize = MIN_TARGET_LEN + 1 + 1 + 8;
/// One stored message: `seq u64`, `priority u8`, empty kind, empty data.
const MIN_MSG_LEN: usize = 8 + 1 + 1 + 4;
/// One room online count: a one-byte id plus its length byte, `online u32`, `users u32`.
const MIN_ROOM_COUNT_LEN: usize = 1 + 1 + 4 + 4;
/// One room's users in a load report: a one-byte id plus its length byte, the form byte and an
/// empty exact list (`count u16`).
const MIN_ROOM_USERS_LEN: usize = 1 + 1 + 1 + 2;

/// Form byte of a [`UserSketch::Exact`] on the link.
const SKETCH_EXACT: u8 = 0;
/// Form byte of a [`UserSketch::Dense`] on the link.
const SKETCH_DENSE: u8 = 1;

/// `register` (edge → control): the first frame on every (re)connected link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Register {
    /// The edge's id (room/user id rules: 1–128 bytes of `[A-Za-z0-9_.:-]`).
    pub edge_id: String,
    /// Address viewers use for WebSocket (non-empty).
    pub ws_addr: String,
    /// Address viewers use for raw TCP (non-empty).
    pub tcp_addr: String,
    /// The edge's admin/metrics address; empty when it has none.
    pub admin_addr: String,
    /// Worker threads the edge runs.
    pub workers: u16,
    /// Connections the edge accepts before it reports itself full.
    pub capacity: u32,
}

/// `publish` (control → edge): one message for a room, a user or everyone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Where the message goes.
    pub target: Target,
    /// The message; on decode its `data` is a zero-copy slice of the received frame.
    pub msg: PushMessage,
}

/// `set level` (control → edge): a room's rate level, tick and per-priority budgets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetLevel {
    /// The room the level applies to.
    pub room: String,
    /// The rate level (0 = normal); its meaning is the control plane's policy.
    pub level: u8,
    /// Batching window for the room, in milliseconds. Passed through as sent: the edge decides
    /// how to treat values it cannot honour (such as 0).
    pub tick_ms: u32,
    /// Messages per tick allowed for priorities 0..=3; [`UNLIMITED`] means no cap.
    pub budgets: [u32; PRIORITIES],
}

/// `load report` (edge → control), sent every second.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// Open client connections.
    pub connections: u32,
    /// Bytes written to clients since the edge started.
    pub bytes_out: u64,
    /// Frames written to clients since the edge started.
    pub frames_out: u64,
    /// Messages dropped (over budget or queue shedding) since the edge started.
    pub msgs_dropped: u64,
    /// Connections closed as slow consumers since the edge started.
    pub slow_closes: u64,
    /// True when `rooms` and `users` are complete lists; false when they hold only changes
    /// since the previous report (a count of 0 then means the room or user left this edge).
    pub full: bool,
    /// `(room, members)` pairs.
    pub rooms: Vec<(String, u32)>,
    /// `(user, connections)` pairs.
    pub users: Vec<(String, u32)>,
    /// The last sequence number this edge received per channel, so a restarted control plane
    /// continues each channel's numbering. Filled in full reports only (empty otherwise); the
    /// codec itself does not enforce that.
    pub seqs: Vec<(Target, u64)>,
    /// The edge's highest capacity watermark (connections, fds, egress, memory, cpu) in
    /// thousandths of its configured capacity (1000 = full; may exceed 1000).
    pub capacity_ratio_permille: u16,
    /// `(room, users)`: the distinct users this edge holds in a room, as a mergeable sketch
    /// (`crate::sketch`). Complete in full reports; otherwise only the rooms whose members
    /// changed since the previous report (a room that left this edge is not listed: its count
    /// of 0 in `rooms` says it).
    pub room_users: Vec<(String, UserSketch)>,
}

/// `query user` (control → edge): which connections does `user` have on this edge?
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryUser {
    /// Chosen by the control plane and echoed in the [`UserConns`] answer.
    pub request: u32,
    /// The user asked about (a valid id).
    pub user: String,
}

/// `user connections` (edge → control): the answer to one [`QueryUser`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserConns {
    /// The `request` of the query this answers.
    pub request: u32,
    /// The user asked about.
    pub user: String,
    /// The user's connections on this edge (empty when it has none); at most `u16::MAX`.
    pub conns: Vec<ConnInfo>,
}

/// One client connection in a [`UserConns`] answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// The connection's wire format; encoded as [`WireFormat::index`].
    pub format: WireFormat,
    /// The client's `ip:port` (at most 255 bytes).
    pub peer: String,
    /// Rooms the connection has joined (valid ids, at most 255).
    pub rooms: Vec<String>,
}

/// A channel's numbering as the control plane holds it: its epoch and the last `seq` it
/// assigned (0 when it has published nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelPosition {
    /// The channel.
    pub target: Target,
    /// The channel's epoch (1–32 bytes of `[A-Za-z0-9_-]`).
    pub epoch: String,
    /// The last `seq` published on the channel.
    pub last_seq: u64,
}

/// `sync` (edge → control): a barrier, and the channels whose positions the edge needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sync {
    /// Chosen by the edge and echoed in the [`SyncAck`].
    pub id: u64,
    /// The channels the barrier confirms (those joins and auths wait on; may be empty).
    pub channels: Vec<Target>,
}

/// `sync ack` (control → edge): the answer to a [`Sync`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncAck {
    /// The `id` of the sync this answers.
    pub id: u64,
    /// The position of each channel the sync listed.
    pub positions: Vec<ChannelPosition>,
}

/// `recover` (edge → control): the messages of `target` after `since`, for a join or auth
/// that carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recover {
    /// Chosen by the edge and echoed in the [`Recovered`] answer.
    pub id: u64,
    /// The channel to recover.
    pub target: Target,
    /// Where the client stands (a valid epoch).
    pub since: Since,
}

/// `recovered` (control → edge): the answer to one [`Recover`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// The `id` of the recover this answers.
    pub id: u64,
    /// The channel's position when the answer was made.
    pub position: ChannelPosition,
    /// The missed messages in `seq` order (their `data` zero-copy on decode), or why there are
    /// none.
    pub result: Result<Vec<PushMessage>, RecoveryFailure>,
}

/// `history` (edge → control): stored messages of a channel after a `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRequest {
    /// Chosen by the edge and echoed in the [`HistoryPage`] answer.
    pub id: u64,
    /// The channel asked about.
    pub target: Target,
    /// Messages after this `seq` are wanted.
    pub since: u64,
    /// At most this many; passed through as sent (the edge checks a client's limit, the control
    /// plane caps what it returns).
    pub limit: u32,
}

/// `history page` (control → edge): the answer to one [`HistoryRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// The `id` of the history request this answers.
    pub id: u64,
    /// The channel's position when the answer was made.
    pub position: ChannelPosition,
    /// False when the messages after `since` are no longer all stored.
    pub complete: bool,
    /// Stored messages after `since`, in `seq` order (their `data` zero-copy on decode).
    pub msgs: Vec<PushMessage>,
}

/// `room online` (control → edge): rooms' global online counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomOnline {
    /// One count per room.
    pub rooms: Vec<RoomCount>,
}

/// One room's count in a [`RoomOnline`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomCount {
    /// The room (a valid id).
    pub room: String,
    /// Connections in the room, over every edge.
    pub online: u32,
    /// Distinct users in the room, over every edge.
    pub users: u32,
}

/// `send` (edge → control): a viewer's upstream message, already checked by the edge (joined,
/// size, JSON, kind, rate limits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendRequest {
    /// Chosen by the edge and echoed in the [`SendResult`] answer.
    pub id: u64,
    /// The sender (the token's `sub`).
    pub user: String,
    /// The room it was sent to (the connection is a member).
    pub room: String,
    pub kind: String,
    /// The viewer's JSON, as sent (zero-copy on decode).
    pub data: Bytes,
    /// The sender's connection: its wire format and `ip:port`.
    pub format: WireFormat,
    pub peer: String,
}

/// `send result` (control → edge): the answer to one [`SendRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendResult {
    /// The `id` of the send this answers.
    pub id: u64,
    pub outcome: SendOutcome,
}

/// What became of a send (the `result u8` of a `send result` frame, in variant order from 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// Published into the room under this `seq`.
    Published { msg_seq: u64 },
    /// Accepted but not broadcast: the platform handles it itself, or the room's upstream budget
    /// for this tick was spent.
    NotBroadcast,
    /// Refused: the client gets an error reply with `code`.
    Refused {
        code: SendRefusal,
        message: String,
        /// The platform's own code for a `Rejected` send (empty otherwise).
        platform_code: String,
    },
    /// The platform asked to close the sender's connection with this code (4000–4999).
    Disconnect { code: u16, reason: String },
}

/// Why the control plane refused a send (the `code u8` of a refused `send result`, from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendRefusal {
    /// The platform's backend said no.
    Rejected,
    /// The platform's backend did not answer in time, failed, or its queue was full.
    Unavailable,
    /// Sends are off (`--send-mode off`).
    Forbidden,
}

impl SendRefusal {
    const ALL: [SendRefusal; 3] = [
        SendRefusal::Rejected,
        SendRefusal::Unavailable,
        SendRefusal::Forbidden,
    ];

    /// The wire code: 1 ..= 3.
    pub fn code(self) -> u8 {
        match self {
            SendRefusal::Rejected => 1,
            SendRefusal::Unavailable => 2,
            SendRefusal::Forbidden => 3,
        }
    }

    fn from_code(code: u8) -> Option<SendRefusal> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }
}

/// `acks` (edge → control): receipts viewers sent for messages that asked for one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acks {
    pub acks: Vec<Ack>,
}

/// One receipt in an [`Acks`] frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The user whose channel carried the message (a valid id).
    pub user: String,
    /// The message's `seq` on the user's channel.
    pub msg_seq: u64,
    /// When the edge received the `ack` op, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// The close codes a platform may ask a sender's connection to be closed with.
pub const PLATFORM_CLOSE_CODES: std::ops::RangeInclusive<u16> = 4000..=4999;

/// One frame on the control ↔ edge link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkFrame {
    /// `0x01`, edge → control.
    Register(Register),
    /// `0x02`, control → edge.
    Publish(Publish),
    /// `0x03`, control → edge.
    SetLevel(SetLevel),
    /// `0x04`, edge → control.
    LoadReport(LoadReport),
    /// `0x05`, control → edge.
    QueryUser(QueryUser),
    /// `0x06`, edge → control.
    UserConns(UserConns),
    /// `0x07`, edge → control: a barrier. The control plane answers [`LinkFrame::SyncAck`] with
    /// the same id once it has applied every frame the edge sent before it, so the edge knows its
    /// reported memberships are in the control plane's routing (the join acknowledgement), and
    /// with the positions of the channels the sync lists.
    Sync(Sync),
    /// `0x08`, control → edge: the answer to [`LinkFrame::Sync`].
    SyncAck(SyncAck),
    /// `0x09`, edge → control.
    Recover(Recover),
    /// `0x0a`, control → edge: the answer to [`LinkFrame::Recover`].
    Recovered(Recovered),
    /// `0x0b`, edge → control.
    History(HistoryRequest),
    /// `0x0c`, control → edge: the answer to [`LinkFrame::History`].
    HistoryPage(HistoryPage),
    /// `0x0d`, control → edge.
    RoomOnline(RoomOnline),
    /// `0x0e`, edge → control.
    Send(SendRequest),
    /// `0x0f`, control → edge: the answer to [`LinkFrame::Send`].
    SendResult(SendResult),
    /// `0x10`, edge → control.
    Acks(Acks),
}

/// Why a link frame could not be encoded or decoded. After a decode error the link is broken:
/// drop the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The length prefix (or, when encoding, the frame) exceeds [`MAX_LINK_FRAME`].
    #[error("frame length {0} exceeds the limit of {MAX_LINK_FRAME} bytes")]
    FrameTooLarge(usize),
    /// The length prefix is 0, so there is not even a type byte.
    #[error("zero-length frame")]
    EmptyFrame,
    /// The type byte is not one of the sixteen link frames.
    #[error("unknown link frame type {0:#04x}")]
    UnknownType(u8),
    /// `register` carries a version other than [`LINK_VERSION`].
    #[error("unsupported link version {0} (expected {LINK_VERSION})")]
    UnsupportedVersion(u16),
    /// A target tag (publish, load-report seq, sync, positions, recover, history) is not
    /// 0 (room), 1 (user) or 2 (broadcast).
    #[error("unknown target tag {0}")]
    BadTarget(u8),
    /// A user connection's format byte is not 0 (WebSocket JSON), 1 (WebSocket binary) or
    /// 2 (raw TCP).
    #[error("unknown wire format {0}")]
    BadFormat(u8),
    /// The priority byte is not a priority 0..=3 with the merge flags (a reserved bit is set,
    /// or the merged flag with a `merged` of 0).
    #[error("priority byte {0} is not a priority 0..=3 with merge flags")]
    BadPriority(u8),
    /// The named field is not a valid room/user/edge id.
    #[error("{0} is not a valid id")]
    InvalidId(&'static str),
    /// A broadcast target carries a non-empty id.
    #[error("broadcast target carries an id")]
    BroadcastWithId,
    /// The message kind contains a control character (it is spliced into client JSON).
    #[error("kind contains a control character")]
    InvalidKind,
    /// A required field is empty.
    #[error("{0} must not be empty")]
    EmptyField(&'static str),
    /// The named field is not a valid epoch (1–32 bytes of `[A-Za-z0-9_-]`).
    #[error("{0} is not a valid epoch")]
    InvalidEpoch(&'static str),
    /// The named flag byte (the load report's `full`, a history page's `complete`) is neither 0
    /// nor 1.
    #[error("{0} is {1}, expected 0 or 1")]
    BadFlag(&'static str, u8),
    /// A recovered frame's `result` is neither 0 (recovered) nor a recovery failure code (1–4).
    #[error("unknown recovery result {0}")]
    BadRecovery(u8),
    /// A load report's user sketch breaks its form's rules (an unknown form byte, exact hashes
    /// not strictly ascending or more than 512 of them, a register above 53).
    #[error("bad user sketch: {0}")]
    BadSketch(&'static str),
    /// A `send result` carries an unknown result or refusal code, or a disconnect code outside
    /// 4000–4999.
    #[error("bad send result: {0}")]
    BadSendResult(&'static str),
    /// A primitive field is truncated, not UTF-8, too long, or bytes trail the body.
    #[error("malformed frame: {0}")]
    Wire(#[from] WireError),
}

/// Appends `frame`, length prefix included, to `out`.
///
/// Validates the frame first against the same rules [`decode`] applies, then reserves the exact
/// encoded size once and writes it. On error nothing is appended.
pub fn encode(frame: &LinkFrame, out: &mut BytesMut) -> Result<(), LinkError> {
    let len = frame_len(frame)?;
    let start = out.len();
    out.reserve(LEN_PREFIX + len);
    let written = write_frame(frame, len, out);
    if written.is_err() {
        // Unreachable after `frame_len` succeeded, but keep the "nothing appended" promise.
        out.truncate(start);
    }
    written
}

/// Splits one whole frame off the front of `buf` and decodes it.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole frame; in that case it reserves room
/// for the rest of the frame so the next socket reads fill it without repeated reallocation.
/// Length errors are reported as soon as the 4-byte prefix has arrived. Message `data` (publish,
/// recovered, history page) is a zero-copy slice of the received bytes: it shares (and keeps
/// alive) `buf`'s allocation, so `buf` grows into a fresh allocation while pushes are still
/// queued.
///
/// Any error means the link is broken: the stream can no longer be framed reliably, and the
/// caller must drop the connection. `buf` is left in an unspecified state.
pub fn decode(buf: &mut BytesMut) -> Result<Option<LinkFrame>, LinkError> {
    let Some(prefix) = buf.get(..LEN_PREFIX) else {
        return Ok(None);
    };
    let mut be = [0u8; LEN_PREFIX];
    be.copy_from_slice(prefix);
    // u32 always fits in usize on the 32/64-bit targets we build for; saturate otherwise so the
    // over-limit check below still fires.
    let len = usize::try_from(u32::from_be_bytes(be)).unwrap_or(usize::MAX);
    if len == 0 {
        return Err(LinkError::EmptyFrame);
    }
    if len > MAX_LINK_FRAME {
        return Err(LinkError::FrameTooLarge(len));
    }
    let total = LEN_PREFIX + len;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let frame = buf.split_to(total).freeze();
    decode_body(frame.slice(LEN_PREFIX..)).map(Some)
}

/// Length of what follows the prefix (type byte + body); checks every rule on the way.
fn frame_len(frame: &LinkFrame) -> Result<usize, LinkError> {
    let body = match frame {
        LinkFrame::Register(r) => {
            check_register(r)?;
            2 + str8_len(&r.edge_id, "edge_id")?
                + str8_len(&r.ws_addr, "ws_addr")?
                + str8_len(&r.tcp_addr, "tcp_addr")?
                + str8_len(&r.admin_addr, "admin_addr")?
                + 2
                + 4
        }
        LinkFrame::Publish(p) => target_len(&p.target)? + msg_len(&p.msg)?,
        LinkFrame::SetLevel(s) => {
            check_id(&s.room, "room")?;
            str8_len(&s.room, "room")? + 1 + 4 + 4 * PRIORITIES
        }
        LinkFrame::LoadReport(l) => {
            let mut n = 4 + 4 * 8 + 1;
            n = add_entries(n, &l.rooms, "room")?;
            n = add_entries(n, &l.users, "user")?;
            n = add_seqs(n, &l.seqs)? + 2;
            add_list(n, &l.room_users, room_users_len)?
        }
        LinkFrame::QueryUser(q) => {
            check_id(&q.user, "user")?;
            4 + str8_len(&q.user, "user")?
        }
        LinkFrame::UserConns(u) => {
            check_id(&u.user, "user")?;
            add_conns(4 + str8_len(&u.user, "user")?, &u.conns)?
        }
        LinkFrame::Sync(s) => add_list(8, &s.channels, target_len)?,
        LinkFrame::SyncAck(a) => add_list(8, &a.positions, position_len)?,
        LinkFrame::Recover(r) => {
            check_epoch(&r.since.epoch, "epoch")?;
            8 + target_len(&r.target)? + str8_len(&r.since.epoch, "epoch")? + 8
        }
        LinkFrame::Recovered(r) => {
            let n = 8 + position_len(&r.position)? + 1;
            match &r.result {
                Ok(msgs) => add_list(n, msgs, msg_len)?,
                Err(_) => n,
            }
        }
        LinkFrame::History(h) => 8 + target_len(&h.target)? + 8 + 4,
        LinkFrame::HistoryPage(h) => {
            add_list(8 + position_len(&h.position)? + 1, &h.msgs, msg_len)?
        }
        LinkFrame::RoomOnline(o) => add_list(0, &o.rooms, room_count_len)?,
        LinkFrame::Send(s) => {
            check_id(&s.user, "user")?;
            check_id(&s.room, "room")?;
            check_kind(&s.kind)?;
            if s.data.len() > MAX_LINK_FRAME {
                return Err(LinkError::FrameTooLarge(s.data.len()));
            }
            8 + str8_len(&s.user, "user")?
                + str8_len(&s.room, "room")?
                + str8_len(&s.kind, "kind")?
                + 4
                + s.data.len()
                + 1
                + str8_len(&s.peer, "peer")?
        }
        LinkFrame::SendResult(r) => {
            8 + 1
                + match &r.outcome {
                    SendOutcome::Published { .. } => 8,
                    SendOutcome::NotBroadcast => 0,
                    SendOutcome::Refused {
                        message,
                        platform_code,
                        ..
                    } => {
                        if message.len() > usize::from(u16::MAX) {
                            return Err(WireError::TooLong("message").into());
                        }
                        1 + 2 + message.len() + str8_len(platform_code, "platform_code")?
                    }
                    SendOutcome::Disconnect { code, reason } => {
                        if !PLATFORM_CLOSE_CODES.contains(code) {
                            return Err(LinkError::BadSendResult("disconnect code"));
                        }
                        2 + str8_len(reason, "reason")?
                    }
                }
        }
        LinkFrame::Acks(a) => add_list(0, &a.acks, |ack| {
            check_id(&ack.user, "user")?;
            Ok(str8_len(&ack.user, "user")? + 8 + 8)
        })?,
    };
    let len = 1 + body;
    if len > MAX_LINK_FRAME {
        return Err(LinkError::FrameTooLarge(len));
    }
    Ok(len)
}

/// Adds a `count u32` and its entries to `n`, stopping early once past the frame limit so a
/// huge list cannot overflow the sum.
fn add_entries(
    mut n: usize,
    entries: &[(String, u32)],
    field: &'static str,
) -> Result<usize, LinkError> {
    n += 4;
    for (id, _) in entries {
        check_id(id, field)?;
        n += str8_len(id, field)? + 4;
        if n > MAX_LINK_FRAME {
            return Err(LinkError::FrameTooLarge(n));
        }
    }
    Ok(n)
}

/// Adds a `seq_count u32` and its entries to `n`; same early stop as [`add_entries`].
fn add_seqs(mut n: usize, seqs: &[(Target, u64)]) -> Result<usize, LinkError> {
    n += 4;
    for (target, _) in seqs {
        check_target(target)?;
        n += 1 + str8_len(target.id(), "id")? + 8;
        if n > MAX_LINK_FRAME {
            return Err(LinkError::FrameTooLarge(n));
        }
    }
    Ok(n)
}

/// Adds a `count u16` and its connections to `n`. One connection is at most ~64 KiB (255 rooms
/// of 255 bytes), so stopping once past the frame limit keeps the sum from overflowing.
fn add_conns(mut n: usize, conns: &[ConnInfo]) -> Result<usize, LinkError> {
    if conns.len() > usize::from(u16::MAX) {
        return Err(WireError::TooLong("conns").into());
    }
    n += 2;
    for c in conns {
        if c.rooms.len() > usize::from(u8::MAX) {
            return Err(WireError::TooLong("rooms").into());
        }
        n += 1 + str8_len(&c.peer, "peer")? + 1;
        for room in &c.rooms {
            check_id(room, "room")?;
            n += str8_len(room, "room")?;
        }
        if n > MAX_LINK_FRAME {
            return Err(LinkError::FrameTooLarge(n));
        }
    }
    Ok(n)
}

/// Adds a `count u32` and its items to `n`, stopping early once past the frame limit so a huge
/// list cannot overflow the sum (no item's size is above the limit by more than a few bytes).
fn add_list<T>(
    mut n: usize,
    items: &[T],
    item_len: impl Fn(&T) -> Result<usize, LinkError>,
) -> Result<usize, LinkError> {
    n += 4;
    for item in items {
        n += item_len(item)?;
        if n > MAX_LINK_FRAME {
            return Err(LinkError::FrameTooLarge(n));
        }
    }
    Ok(n)
}

/// Encoded size of a checked `target u8` + `id str8`.
fn target_len(target: &Target) -> Result<usize, LinkError> {
    check_target(target)?;
    Ok(1 + str8_len(target.id(), "id")?)
}

/// Encoded size of a checked channel position: target, `epoch str8`, `last_seq u64`.
fn position_len(p: &ChannelPosition) -> Result<usize, LinkError> {
    check_epoch(&p.epoch, "epoch")?;
    Ok(target_len(&p.target)? + str8_len(&p.epoch, "epoch")? + 8)
}

/// Encoded size of a checked message: `seq u64`, `priority u8` (with the merge flags), `merged
/// u32` when merged, `kind str8`, `data bytes32`.
fn msg_len(m: &PushMessage) -> Result<usize, LinkError> {
    check_priority(m.priority)?;
    check_kind(&m.kind)?;
    // Comparing before adding keeps the sum from overflowing on 32-bit targets.
    if m.data.len() > MAX_LINK_FRAME {
        return Err(LinkError::FrameTooLarge(m.data.len()));
    }
    let merged = if m.merged > 0 { 4 } else { 0 };
    let from = match m.from.as_deref() {
        Some(from) => {
            check_id(from, "from")?;
            str8_len(from, "from")?
        }
        None => 0,
    };
    Ok(8 + 1 + merged + from + str8_len(&m.kind, "kind")? + 4 + m.data.len())
}

/// Encoded size of a checked room count: `room str8`, `online u32`, `users u32`.
fn room_count_len(c: &RoomCount) -> Result<usize, LinkError> {
    check_id(&c.room, "room")?;
    Ok(str8_len(&c.room, "room")? + 4 + 4)
}

/// Encoded size of a checked `(room, users)` entry: `room str8`, then the sketch: `form u8` and
/// either `count u16` × `hash u64` (exact) or the registers (dense).
fn room_users_len((room, sketch): &(String, UserSketch)) -> Result<usize, LinkError> {
    check_id(room, "room")?;
    sketch.check().map_err(LinkError::BadSketch)?;
    let body = match sketch {
        UserSketch::Exact(hashes) => 2 + 8 * hashes.len(),
        UserSketch::Dense(_) => REGISTERS,
    };
    Ok(str8_len(room, "room")? + 1 + body)
}

/// Encoded size of a `str8`, failing when it does not fit one.
fn str8_len(s: &str, field: &'static str) -> Result<usize, LinkError> {
    if s.len() > usize::from(u8::MAX) {
        return Err(WireError::TooLong(field).into());
    }
    Ok(1 + s.len())
}

fn write_frame(frame: &LinkFrame, len: usize, out: &mut BytesMut) -> Result<(), LinkError> {
    // `len` was checked against MAX_LINK_FRAME, which fits a u32.
    let len = u32::try_from(len).map_err(|_| LinkError::FrameTooLarge(len))?;
    out.put_u32(len);
    match frame {
        LinkFrame::Register(r) => {
            out.put_u8(TYPE_REGISTER);
            out.put_u16(LINK_VERSION);
            put_str8(out, r.edge_id.as_bytes(), "edge_id")?;
            put_str8(out, r.ws_addr.as_bytes(), "ws_addr")?;
            put_str8(out, r.tcp_addr.as_bytes(), "tcp_addr")?;
            put_str8(out, r.admin_addr.as_bytes(), "admin_addr")?;
            out.put_u16(r.workers);
            out.put_u32(r.capacity);
        }
        LinkFrame::Publish(p) => {
            out.put_u8(TYPE_PUBLISH);
            put_target(out, &p.target)?;
            put_msg(out, &p.msg)?;
        }
        LinkFrame::SetLevel(s) => {
            out.put_u8(TYPE_SET_LEVEL);
            put_str8(out, s.room.as_bytes(), "room")?;
            out.put_u8(s.level);
            out.put_u32(s.tick_ms);
            for b in s.budgets {
                out.put_u32(b);
            }
        }
        LinkFrame::LoadReport(l) => {
            out.put_u8(TYPE_LOAD_REPORT);
            out.put_u32(l.connections);
            out.put_u64(l.bytes_out);
            out.put_u64(l.frames_out);
            out.put_u64(l.msgs_dropped);
            out.put_u64(l.slow_closes);
            out.put_u8(u8::from(l.full));
            write_entries(out, &l.rooms, "room")?;
            write_entries(out, &l.users, "user")?;
            let count = u32::try_from(l.seqs.len()).map_err(|_| WireError::TooLong("seqs"))?;
            out.put_u32(count);
            for (target, seq) in &l.seqs {
                put_target(out, target)?;
                out.put_u64(*seq);
            }
            out.put_u16(l.capacity_ratio_permille);
            put_list(out, &l.room_users, "room_users", |out, (room, sketch)| {
                put_str8(out, room.as_bytes(), "room")?;
                match sketch {
                    UserSketch::Exact(hashes) => {
                        out.put_u8(SKETCH_EXACT);
                        // At most EXACT_MAX (checked by `frame_len`).
                        out.put_u16(hashes.len() as u16);
                        for &hash in hashes {
                            out.put_u64(hash);
                        }
                    }
                    UserSketch::Dense(registers) => {
                        out.put_u8(SKETCH_DENSE);
                        out.put_slice(&registers[..]);
                    }
                }
                Ok(())
            })?;
        }
        LinkFrame::QueryUser(q) => {
            out.put_u8(TYPE_QUERY_USER);
            out.put_u32(q.request);
            put_str8(out, q.user.as_bytes(), "user")?;
        }
        LinkFrame::Sync(s) => {
            out.put_u8(TYPE_SYNC);
            out.put_u64(s.id);
            put_list(out, &s.channels, "channels", put_target)?;
        }
        LinkFrame::SyncAck(a) => {
            out.put_u8(TYPE_SYNC_ACK);
            out.put_u64(a.id);
            put_list(out, &a.positions, "positions", put_position)?;
        }
        LinkFrame::Recover(r) => {
            out.put_u8(TYPE_RECOVER);
            out.put_u64(r.id);
            put_target(out, &r.target)?;
            put_str8(out, r.since.epoch.as_bytes(), "epoch")?;
            out.put_u64(r.since.seq);
        }
        LinkFrame::Recovered(r) => {
            out.put_u8(TYPE_RECOVERED);
            out.put_u64(r.id);
            put_position(out, &r.position)?;
            match &r.result {
                Ok(msgs) => {
                    out.put_u8(0);
                    put_list(out, msgs, "msgs", put_msg)?;
                }
                Err(failure) => out.put_u8(failure.code()),
            }
        }
        LinkFrame::History(h) => {
            out.put_u8(TYPE_HISTORY);
            out.put_u64(h.id);
            put_target(out, &h.target)?;
            out.put_u64(h.since);
            out.put_u32(h.limit);
        }
        LinkFrame::HistoryPage(h) => {
            out.put_u8(TYPE_HISTORY_PAGE);
            out.put_u64(h.id);
            put_position(out, &h.position)?;
            out.put_u8(u8::from(h.complete));
            put_list(out, &h.msgs, "msgs", put_msg)?;
        }
        LinkFrame::RoomOnline(o) => {
            out.put_u8(TYPE_ROOM_ONLINE);
            put_list(out, &o.rooms, "rooms", |out, c| {
                put_str8(out, c.room.as_bytes(), "room")?;
                out.put_u32(c.online);
                out.put_u32(c.users);
                Ok(())
            })?;
        }
        LinkFrame::Send(s) => {
            out.put_u8(TYPE_SEND);
            out.put_u64(s.id);
            put_str8(out, s.user.as_bytes(), "user")?;
            put_str8(out, s.room.as_bytes(), "room")?;
            put_str8(out, s.kind.as_bytes(), "kind")?;
            put_bytes32(out, &s.data, "data")?;
            // `index` is 0, 1 or 2.
            out.put_u8(s.format.index() as u8);
            put_str8(out, s.peer.as_bytes(), "peer")?;
        }
        LinkFrame::SendResult(r) => {
            out.put_u8(TYPE_SEND_RESULT);
            out.put_u64(r.id);
            match &r.outcome {
                SendOutcome::Published { msg_seq } => {
                    out.put_u8(0);
                    out.put_u64(*msg_seq);
                }
                SendOutcome::NotBroadcast => out.put_u8(1),
                SendOutcome::Refused {
                    code,
                    message,
                    platform_code,
                } => {
                    out.put_u8(2);
                    out.put_u8(code.code());
                    put_str16(out, message.as_bytes(), "message")?;
                    put_str8(out, platform_code.as_bytes(), "platform_code")?;
                }
                SendOutcome::Disconnect { code, reason } => {
                    out.put_u8(3);
                    out.put_u16(*code);
                    put_str8(out, reason.as_bytes(), "reason")?;
                }
            }
        }
        LinkFrame::Acks(a) => {
            out.put_u8(TYPE_ACKS);
            put_list(out, &a.acks, "acks", |out, ack| {
                put_str8(out, ack.user.as_bytes(), "user")?;
                out.put_u64(ack.msg_seq);
                out.put_u64(ack.at_ms);
                Ok(())
            })?;
        }
        LinkFrame::UserConns(u) => {
            out.put_u8(TYPE_USER_CONNS);
            out.put_u32(u.request);
            put_str8(out, u.user.as_bytes(), "user")?;
            let count = u16::try_from(u.conns.len()).map_err(|_| WireError::TooLong("conns"))?;
            out.put_u16(count);
            for c in &u.conns {
                // `index` is 0, 1 or 2.
                out.put_u8(c.format.index() as u8);
                put_str8(out, c.peer.as_bytes(), "peer")?;
                let rooms = u8::try_from(c.rooms.len()).map_err(|_| WireError::TooLong("rooms"))?;
                out.put_u8(rooms);
                for room in &c.rooms {
                    put_str8(out, room.as_bytes(), "room")?;
                }
            }
        }
    }
    Ok(())
}

/// Writes a `target u8` + `id str8` pair (publish, load-report seqs, sync channels, positions,
/// recover, history).
fn put_target(out: &mut BytesMut, target: &Target) -> Result<(), LinkError> {
    out.put_u8(target.tag());
    put_str8(out, target.id().as_bytes(), "id")?;
    Ok(())
}

/// Writes a channel position: target, `epoch str8`, `last_seq u64`.
fn put_position(out: &mut BytesMut, p: &ChannelPosition) -> Result<(), LinkError> {
    put_target(out, &p.target)?;
    put_str8(out, p.epoch.as_bytes(), "epoch")?;
    out.put_u64(p.last_seq);
    Ok(())
}

/// Writes a message: `seq u64`, `priority u8` with its merge flags, `merged u32` when merged,
/// `kind str8`, `data bytes32` (publish, recovered, history page).
fn put_msg(out: &mut BytesMut, m: &PushMessage) -> Result<(), LinkError> {
    out.put_u64(m.seq);
    out.put_u8(m.priority_byte());
    if m.merged > 0 {
        out.put_u32(m.merged);
    }
    if let Some(from) = m.from.as_deref() {
        put_str8(out, from.as_bytes(), "from")?;
    }
    put_str8(out, m.kind.as_bytes(), "kind")?;
    put_bytes32(out, &m.data, "data")?;
    Ok(())
}

/// Writes a `count u32` and each item.
fn put_list<T>(
    out: &mut BytesMut,
    items: &[T],
    field: &'static str,
    put_item: impl Fn(&mut BytesMut, &T) -> Result<(), LinkError>,
) -> Result<(), LinkError> {
    let count = u32::try_from(items.len()).map_err(|_| WireError::TooLong(field))?;
    out.put_u32(count);
    for item in items {
        put_item(out, item)?;
    }
    Ok(())
}

fn write_entries(
    out: &mut BytesMut,
    entries: &[(String, u32)],
    field: &'static str,
) -> Result<(), LinkError> {
    let count = u32::try_from(entries.len()).map_err(|_| WireError::TooLong(field))?;
    out.put_u32(count);
    for (id, n) in entries {
        put_str8(out, id.as_bytes(), field)?;
        out.put_u32(*n);
    }
    Ok(())
}

/// Decodes type byte + body. `frame` is the frozen frame without its length prefix, so message
/// data can be sliced out of it without copying.
fn decode_body(frame: Bytes) -> Result<LinkFrame, LinkError> {
    let mut r = Reader::new(&frame);
    let out = match r.u8("type")? {
        TYPE_REGISTER => {
            let version = r.u16("version")?;
            if version != LINK_VERSION {
                return Err(LinkError::UnsupportedVersion(version));
            }
            let reg = Register {
                edge_id: r.str8("edge_id")?.to_owned(),
                ws_addr: r.str8("ws_addr")?.to_owned(),
                tcp_addr: r.str8("tcp_addr")?.to_owned(),
                admin_addr: r.str8("admin_addr")?.to_owned(),
                workers: r.u16("workers")?,
                capacity: r.u32("capacity")?,
            };
            check_register(&reg)?;
            LinkFrame::Register(reg)
        }
        TYPE_PUBLISH => {
            let target = read_target(&mut r)?;
            let msg = read_msg(&mut r, &frame)?;
            LinkFrame::Publish(Publish { target, msg })
        }
        TYPE_SET_LEVEL => {
            let room = r.str8("room")?;
            check_id(room, "room")?;
            let room = room.to_owned();
            let level = r.u8("level")?;
            let tick_ms = r.u32("tick_ms")?;
            let mut budgets = [0u32; PRIORITIES];
            for b in &mut budgets {
                *b = r.u32("budgets")?;
            }
            LinkFrame::SetLevel(SetLevel {
                room,
                level,
                tick_ms,
                budgets,
            })
        }
        TYPE_LOAD_REPORT => {
            let connections = r.u32("connections")?;
            let bytes_out = r.u64("bytes_out")?;
            let frames_out = r.u64("frames_out")?;
            let msgs_dropped = r.u64("msgs_dropped")?;
            let slow_closes = r.u64("slow_closes")?;
            let full = match r.u8("full")? {
                0 => false,
                1 => true,
                f => return Err(LinkError::BadFlag("full", f)),
            };
            let rooms = read_entries(&mut r, "room_count", "room")?;
            let users = read_entries(&mut r, "user_count", "user")?;
            let seqs = read_seqs(&mut r)?;
            let capacity_ratio_permille = r.u16("capacity_ratio_permille")?;
            let room_users = read_list(&mut r, "room_users_count", MIN_ROOM_USERS_LEN, |r| {
                let room = r.str8("room")?;
                check_id(room, "room")?;
                Ok((room.to_owned(), read_sketch(r)?))
            })?;
            LinkFrame::LoadReport(LoadReport {
                connections,
                bytes_out,
                frames_out,
                msgs_dropped,
                slow_closes,
                full,
                rooms,
                users,
                seqs,
                capacity_ratio_permille,
                room_users,
            })
        }
        TYPE_QUERY_USER => {
            let request = r.u32("request")?;
            let user = r.str8("user")?;
            check_id(user, "user")?;
            LinkFrame::QueryUser(QueryUser {
                request,
                user: user.to_owned(),
            })
        }
        TYPE_USER_CONNS => {
            let request = r.u32("request")?;
            let user = r.str8("user")?;
            check_id(user, "user")?;
            let user = user.to_owned();
            let conns = read_conns(&mut r)?;
            LinkFrame::UserConns(UserConns {
                request,
                user,
                conns,
            })
        }
        TYPE_SYNC => {
            let id = r.u64("sync id")?;
            let channels = read_list(&mut r, "channel_count", MIN_TARGET_LEN, read_target)?;
            LinkFrame::Sync(Sync { id, channels })
        }
        TYPE_SYNC_ACK => {
            let id = r.u64("sync id")?;
            let positions = read_list(&mut r, "position_count", MIN_POSITION_LEN, read_position)?;
            LinkFrame::SyncAck(SyncAck { id, positions })
        }
        TYPE_RECOVER => {
            let id = r.u64("recover id")?;
            let target = read_target(&mut r)?;
            let epoch = read_epoch(&mut r, "epoch")?;
            let seq = r.u64("since")?;
            LinkFrame::Recover(Recover {
                id,
                target,
                since: Since { epoch, seq },
            })
        }
        TYPE_RECOVERED => {
            let id = r.u64("recover id")?;
            let position = read_position(&mut r)?;
            let result = match r.u8("result")? {
                0 => Ok(read_msgs(&mut r, &frame)?),
                code => Err(RecoveryFailure::from_code(code).ok_or(LinkError::BadRecovery(code))?),
            };
            LinkFrame::Recovered(Recovered {
                id,
                position,
                result,
            })
        }
        TYPE_HISTORY => LinkFrame::History(HistoryRequest {
            id: r.u64("history id")?,
            target: read_target(&mut r)?,
            since: r.u64("since")?,
            limit: r.u32("limit")?,
        }),
        TYPE_HISTORY_PAGE => {
            let id = r.u64("history id")?;
            let position = read_position(&mut r)?;
            let complete = match r.u8("complete")? {
                0 => false,
                1 => true,
                f => return Err(LinkError::BadFlag("complete", f)),
            };
            let msgs = read_msgs(&mut r, &frame)?;
            LinkFrame::HistoryPage(HistoryPage {
                id,
                position,
                complete,
                msgs,
            })
        }
        TYPE_ROOM_ONLINE => {
            let rooms = read_list(&mut r, "room_count", MIN_ROOM_COUNT_LEN, |r| {
                let room = r.str8("room")?;
                check_id(room, "room")?;
                Ok(RoomCount {
                    room: room.to_owned(),
                    online: r.u32("online")?,
                    users: r.u32("users")?,
                })
            })?;
            LinkFrame::RoomOnline(RoomOnline { rooms })
        }
        TYPE_SEND => {
            let id = r.u64("send id")?;
            let user = r.str8("user")?;
            check_id(user, "user")?;
            let user = user.to_owned();
            let room = r.str8("room")?;
            check_id(room, "room")?;
            let room = room.to_owned();
            let kind = r.str8("kind")?;
            check_kind(kind)?;
            let kind = kind.to_owned();
            let data = frame.slice(r.bytes32("data")?);
            let format = r.u8("format")?;
            let format = *WireFormat::ALL
                .get(usize::from(format))
                .ok_or(LinkError::BadFormat(format))?;
            let peer = r.str8("peer")?.to_owned();
            LinkFrame::Send(SendRequest {
                id,
                user,
                room,
                kind,
                data,
                format,
                peer,
            })
        }
        TYPE_SEND_RESULT => {
            let id = r.u64("send id")?;
            let outcome = match r.u8("result")? {
                0 => SendOutcome::Published {
                    msg_seq: r.u64("msg_seq")?,
                },
                1 => SendOutcome::NotBroadcast,
                2 => {
                    let code = r.u8("code")?;
                    let code = SendRefusal::from_code(code)
                        .ok_or(LinkError::BadSendResult("refusal code"))?;
                    SendOutcome::Refused {
                        code,
                        message: r.str16("message")?.to_owned(),
                        platform_code: r.str8("platform_code")?.to_owned(),
                    }
                }
                3 => {
                    let code = r.u16("code")?;
                    if !PLATFORM_CLOSE_CODES.contains(&code) {
                        return Err(LinkError::BadSendResult("disconnect code"));
                    }
                    SendOutcome::Disconnect {
                        code,
                        reason: r.str8("reason")?.to_owned(),
                    }
                }
                _ => return Err(LinkError::BadSendResult("result")),
            };
            LinkFrame::SendResult(SendResult { id, outcome })
        }
        TYPE_ACKS => {
            let acks = read_list(&mut r, "ack_count", MIN_ACK_LEN, |r| {
                let user = r.str8("user")?;
                check_id(user, "user")?;
                Ok(Ack {
                    user: user.to_owned(),
                    msg_seq: r.u64("msg_seq")?,
                    at_ms: r.u64("at_ms")?,
                })
            })?;
            LinkFrame::Acks(Acks { acks })
        }
        t => return Err(LinkError::UnknownType(t)),
    };
    r.finish()?;
    Ok(out)
}

fn read_entries(
    r: &mut Reader<'_>,
    count_field: &'static str,
    field: &'static str,
) -> Result<Vec<(String, u32)>, LinkError> {
    let count = r.u32(count_field)?;
    // The count is untrusted: never pre-allocate more entries than the remaining bytes can hold.
    let cap = usize::try_from(count)
        .unwrap_or(usize::MAX)
        .min(r.remaining() / MIN_ENTRY_LEN);
    let mut entries = Vec::with_capacity(cap);
    for _ in 0..count {
        let id = r.str8(field)?;
        check_id(id, field)?;
        let id = id.to_owned();
        entries.push((id, r.u32(field)?));
    }
    Ok(entries)
}

/// Reads a `target u8` + `id str8` pair and checks it: a valid id for rooms and users, an empty
/// one for broadcast.
fn read_target(r: &mut Reader<'_>) -> Result<Target, LinkError> {
    let tag = r.u8("target")?;
    let id = r.str8("id")?;
    let target = match tag {
        0 => Target::Room(id.to_owned()),
        1 => Target::User(id.to_owned()),
        2 => Target::Broadcast,
        t => return Err(LinkError::BadTarget(t)),
    };
    // For broadcast the id was read but not kept; it must still be empty.
    if tag == 2 && !id.is_empty() {
        return Err(LinkError::BroadcastWithId);
    }
    check_target(&target)?;
    Ok(target)
}

/// Reads a `count u32` and that many items. The count is untrusted: never pre-allocate more
/// items than the remaining bytes can hold at `min_len` bytes each.
fn read_list<'a, T>(
    r: &mut Reader<'a>,
    count_field: &'static str,
    min_len: usize,
    read_item: impl Fn(&mut Reader<'a>) -> Result<T, LinkError>,
) -> Result<Vec<T>, LinkError> {
    let count = r.u32(count_field)?;
    let cap = usize::try_from(count)
        .unwrap_or(usize::MAX)
        .min(r.remaining() / min_len);
    let mut items = Vec::with_capacity(cap);
    for _ in 0..count {
        items.push(read_item(r)?);
    }
    Ok(items)
}

/// Reads a `str8` that must be a valid epoch.
fn read_epoch(r: &mut Reader<'_>, field: &'static str) -> Result<String, LinkError> {
    let epoch = r.str8(field)?;
    check_epoch(epoch, field)?;
    Ok(epoch.to_owned())
}

/// Reads a channel position: target, `epoch str8`, `last_seq u64`.
fn read_position(r: &mut Reader<'_>) -> Result<ChannelPosition, LinkError> {
    Ok(ChannelPosition {
        target: read_target(r)?,
        epoch: read_epoch(r, "epoch")?,
        last_seq: r.u64("last_seq")?,
    })
}

/// Reads a message; its `data` is a zero-copy slice of `frame`, the bytes `r` reads.
fn read_msg(r: &mut Reader<'_>, frame: &Bytes) -> Result<PushMessage, LinkError> {
    let seq = r.u64("seq")?;
    let byte = r.u8("priority")?;
    let flags = split_priority_byte(byte).ok_or(LinkError::BadPriority(byte))?;
    let merged = if flags.merged_follows {
        match r.u32("merged")? {
            0 => return Err(LinkError::BadPriority(byte)),
            n => n,
        }
    } else {
        0
    };
    let from = if flags.from_follows {
        let from = r.str8("from")?;
        check_id(from, "from")?;
        Some(Box::from(from))
    } else {
        None
    };
    let kind = r.str8("kind")?;
    check_kind(kind)?;
    let kind = kind.to_owned();
    let data = r.bytes32("data")?;
    Ok(PushMessage {
        seq,
        priority: flags.priority,
        kind,
        data: frame.slice(data),
        merged,
        is_final: flags.is_final,
        from,
        ack: flags.ack,
    })
}

/// Reads a `msg_count u32` and that many messages (zero-copy `data`).
fn read_msgs(r: &mut Reader<'_>, frame: &Bytes) -> Result<Vec<PushMessage>, LinkError> {
    read_list(r, "msg_count", MIN_MSG_LEN, |r| read_msg(r, frame))
}

/// Reads a user sketch: `form u8`, then `count u16` × `hash u64` (exact) or the registers
/// (dense); checks its rules.
fn read_sketch(r: &mut Reader<'_>) -> Result<UserSketch, LinkError> {
    let sketch = match r.u8("sketch form")? {
        SKETCH_EXACT => {
            let count = r.u16("sketch count")?;
            let mut hashes = Vec::with_capacity(usize::from(count).min(r.remaining() / 8));
            for _ in 0..count {
                hashes.push(r.u64("sketch hash")?);
            }
            UserSketch::Exact(hashes)
        }
        SKETCH_DENSE => {
            let mut registers = Box::new([0u8; REGISTERS]);
            registers.copy_from_slice(r.bytes(REGISTERS, "sketch registers")?);
            UserSketch::Dense(registers)
        }
        _ => return Err(LinkError::BadSketch("unknown sketch form")),
    };
    sketch.check().map_err(LinkError::BadSketch)?;
    Ok(sketch)
}

fn read_seqs(r: &mut Reader<'_>) -> Result<Vec<(Target, u64)>, LinkError> {
    let count = r.u32("seq_count")?;
    let cap = usize::try_from(count)
        .unwrap_or(usize::MAX)
        .min(r.remaining() / MIN_SEQ_LEN);
    let mut seqs = Vec::with_capacity(cap);
    for _ in 0..count {
        let target = read_target(r)?;
        seqs.push((target, r.u64("seq")?));
    }
    Ok(seqs)
}

fn read_conns(r: &mut Reader<'_>) -> Result<Vec<ConnInfo>, LinkError> {
    let count = r.u16("conn_count")?;
    let mut conns = Vec::with_capacity(usize::from(count).min(r.remaining() / MIN_CONN_LEN));
    for _ in 0..count {
        let format = r.u8("format")?;
        let format = *WireFormat::ALL
            .get(usize::from(format))
            .ok_or(LinkError::BadFormat(format))?;
        let peer = r.str8("peer")?.to_owned();
        let room_count = r.u8("room_count")?;
        let mut rooms =
            Vec::with_capacity(usize::from(room_count).min(r.remaining() / MIN_ROOM_LEN));
        for _ in 0..room_count {
            let room = r.str8("room")?;
            check_id(room, "room")?;
            rooms.push(room.to_owned());
        }
        conns.push(ConnInfo {
            format,
            peer,
            rooms,
        });
    }
    Ok(conns)
}

fn check_register(r: &Register) -> Result<(), LinkError> {
    check_id(&r.edge_id, "edge_id")?;
    if r.ws_addr.is_empty() {
        return Err(LinkError::EmptyField("ws_addr"));
    }
    if r.tcp_addr.is_empty() {
        return Err(LinkError::EmptyField("tcp_addr"));
    }
    Ok(())
}

fn check_target(t: &Target) -> Result<(), LinkError> {
    match t {
        Target::Room(id) => check_id(id, "room"),
        Target::User(id) => check_id(id, "user"),
        Target::Broadcast => Ok(()),
    }
}

fn check_id(id: &str, field: &'static str) -> Result<(), LinkError> {
    if is_valid_id(id.as_bytes()) {
        Ok(())
    } else {
        Err(LinkError::InvalidId(field))
    }
}

fn check_epoch(epoch: &str, field: &'static str) -> Result<(), LinkError> {
    if is_valid_epoch(epoch.as_bytes()) {
        Ok(())
    } else {
        Err(LinkError::InvalidEpoch(field))
    }
}

fn check_priority(p: u8) -> Result<(), LinkError> {
    if usize::from(p) < PRIORITIES {
        Ok(())
    } else {
        Err(LinkError::BadPriority(p))
    }
}

fn check_kind(kind: &str) -> Result<(), LinkError> {
    if kind.chars().any(char::is_control) {
        Err(LinkError::InvalidKind)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register() -> LinkFrame {
        LinkFrame::Register(Register {
            edge_id: "edge-1".into(),
            ws_addr: "10.0.0.1:8080".into(),
            tcp_addr: "10.0.0.1:8081".into(),
            admin_addr: "127.0.0.1:9090".into(),
            workers: 8,
            capacity: 1_000_000,
        })
    }

    fn publish(target: Target, priority: u8, data: &'static [u8]) -> LinkFrame {
        LinkFrame::Publish(Publish {
            target,
            msg: PushMessage {
                seq: 41,
                priority,
                kind: "gift".into(),
                data: Bytes::from_static(data),
                merged: 0,
                is_final: false,
                from: None,
                ack: false,
            },
        })
    }

    fn merged_publish(merged: u32, is_final: bool) -> LinkFrame {
        let LinkFrame::Publish(mut p) = publish(Target::Room("r1".into()), 1, br#"{"count":7}"#)
        else {
            unreachable!()
        };
        p.msg.merged = merged;
        p.msg.is_final = is_final;
        LinkFrame::Publish(p)
    }

    #[test]
    fn merge_flags_ride_in_the_priority_byte() {
        // seq, then the priority byte 0xc1 (merged, final, priority 1) and merged 7.
        let bytes = encoded(&merged_publish(7, true));
        let at = bytes
            .iter()
            .position(|&b| b == 41)
            .expect("the seq's last byte")
            + 1;
        assert_eq!(bytes[at], 0xc1);
        assert_eq!(&bytes[at + 1..at + 5], &7u32.to_be_bytes());
        let plain = encoded(&publish(Target::Room("r1".into()), 1, br#"{"count":7}"#));
        assert_eq!(
            plain.len() + 4,
            bytes.len(),
            "an unmerged message has no merged field"
        );
        // Reserved bits (0x04, 0x08) are refused, with or without other flags.
        for byte in [0x04u8, 0x08, 0x3c] {
            let mut bad = plain.clone();
            bad[at] = byte;
            assert_eq!(
                decode(&mut bad),
                Err(LinkError::BadPriority(byte)),
                "{byte:#x}"
            );
        }
        let mut zero_merged = bytes.clone();
        zero_merged[at + 1..at + 5].copy_from_slice(&[0; 4]);
        assert_eq!(decode(&mut zero_merged), Err(LinkError::BadPriority(0xc1)));
    }

    fn set_level() -> LinkFrame {
        LinkFrame::SetLevel(SetLevel {
            room: "room:10000".into(),
            level: 2,
            tick_ms: 250,
            budgets: [UNLIMITED, 50, 20, 5],
        })
    }

    fn load_report() -> LinkFrame {
        LinkFrame::LoadReport(LoadReport {
            connections: 12_345,
            bytes_out: u64::MAX,
            frames_out: 1 << 40,
            msgs_dropped: 7,
            slow_closes: 3,
            full: true,
            rooms: vec![("r1".into(), 10), ("r2".into(), 0)],
            users: vec![("u1".into(), 2)],
            seqs: vec![
                (Target::Room("r1".into()), 41),
                (Target::User("u1".into()), 0),
                (Target::Broadcast, u64::MAX),
            ],
            capacity_ratio_permille: 0,
            room_users: vec![
                ("r1".into(), UserSketch::from_hashes([3, 1, 2, 3])),
                ("r3".into(), UserSketch::default()),
                (
                    "big".into(),
                    UserSketch::from_hashes(
                        (0..2_000u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                    ),
                ),
            ],
        })
    }

    fn query_user() -> LinkFrame {
        LinkFrame::QueryUser(QueryUser {
            request: 7,
            user: "user:42".into(),
        })
    }

    fn user_conns() -> LinkFrame {
        LinkFrame::UserConns(UserConns {
            request: u32::MAX,
            user: "user:42".into(),
            conns: vec![
                ConnInfo {
                    format: WireFormat::WsJson,
                    peer: "10.1.2.3:50000".into(),
                    rooms: vec!["r1".into(), "room:10000".into()],
                },
                ConnInfo {
                    format: WireFormat::WsBinary,
                    peer: "[2001:db8::1]:443".into(),
                    rooms: vec!["r2".into()],
                },
                ConnInfo {
                    format: WireFormat::Tcp,
                    peer: String::new(),
                    rooms: vec![],
                },
            ],
        })
    }

    fn position(target: Target, epoch: &str, last_seq: u64) -> ChannelPosition {
        ChannelPosition {
            target,
            epoch: epoch.into(),
            last_seq,
        }
    }

    fn sync() -> LinkFrame {
        LinkFrame::Sync(Sync {
            id: 42,
            channels: vec![
                Target::Room("r1".into()),
                Target::User("u1".into()),
                Target::Broadcast,
            ],
        })
    }

    fn sync_ack() -> LinkFrame {
        LinkFrame::SyncAck(SyncAck {
            id: 42,
            positions: vec![
                position(Target::Room("r1".into()), "k3x9", 57),
                position(Target::User("u1".into()), "A-z_0", 0),
                position(Target::Broadcast, "b", u64::MAX),
            ],
        })
    }

    fn recover() -> LinkFrame {
        LinkFrame::Recover(Recover {
            id: 9,
            target: Target::Room("r1".into()),
            since: Since {
                epoch: "k3x9".into(),
                seq: 41,
            },
        })
    }

    /// Messages as a history holds them: every priority, an empty kind and data.
    fn stored_msgs() -> Vec<PushMessage> {
        vec![
            PushMessage {
                seq: 42,
                priority: 2,
                kind: "gift".into(),
                data: Bytes::from_static(br#"{"gift":"rocket","n":3}"#),
                merged: 0,
                is_final: false,
                from: None,
                ack: false,
            },
            PushMessage {
                seq: 43,
                priority: 3,
                kind: "chat".into(),
                data: Bytes::from_static(br#""hi""#),
                merged: 0,
                is_final: false,
                from: None,
                ack: false,
            },
            PushMessage {
                seq: 44,
                priority: 0,
                kind: String::new(),
                data: Bytes::new(),
                merged: 0,
                is_final: false,
                from: None,
                ack: false,
            },
            PushMessage {
                seq: u64::MAX,
                priority: 1,
                kind: "ü".into(),
                data: Bytes::from_static(b"null"),
                merged: 0,
                is_final: false,
                from: None,
                ack: false,
            },
        ]
    }

    fn recovered(result: Result<Vec<PushMessage>, RecoveryFailure>) -> LinkFrame {
        LinkFrame::Recovered(Recovered {
            id: 9,
            position: position(Target::Room("r1".into()), "k3x9", 57),
            result,
        })
    }

    fn history() -> LinkFrame {
        LinkFrame::History(HistoryRequest {
            id: 3,
            target: Target::User("u1".into()),
            since: 41,
            limit: 100,
        })
    }

    fn history_page(complete: bool, msgs: Vec<PushMessage>) -> LinkFrame {
        LinkFrame::HistoryPage(HistoryPage {
            id: 3,
            position: position(Target::User("u1".into()), "k3x9", 57),
            complete,
            msgs,
        })
    }

    fn room_online() -> LinkFrame {
        LinkFrame::RoomOnline(RoomOnline {
            rooms: vec![
                RoomCount {
                    room: "r1".into(),
                    online: 104_532,
                    users: 98_000,
                },
                RoomCount {
                    room: "room:10000".into(),
                    online: 0,
                    users: u32::MAX,
                },
            ],
        })
    }

    /// One of every frame type, covering the optional/edge-case fields.
    fn samples() -> Vec<LinkFrame> {
        vec![
            LinkFrame::Sync(Sync {
                id: 7,
                channels: vec![],
            }),
            sync(),
            LinkFrame::SyncAck(SyncAck {
                id: u64::MAX,
                positions: vec![],
            }),
            sync_ack(),
            recover(),
            LinkFrame::Recover(Recover {
                id: 0,
                target: Target::Broadcast,
                since: Since {
                    epoch: "E".repeat(32),
                    seq: u64::MAX,
                },
            }),
            recovered(Ok(vec![])),
            recovered(Ok(stored_msgs())),
            recovered(Err(RecoveryFailure::TooOld)),
            recovered(Err(RecoveryFailure::NotStored)),
            history(),
            history_page(true, vec![]),
            history_page(false, stored_msgs()),
            room_online(),
            LinkFrame::RoomOnline(RoomOnline { rooms: vec![] }),
            register(),
            LinkFrame::Register(Register {
                edge_id: "e".into(),
                ws_addr: "[::1]:8080".into(),
                tcp_addr: "[::1]:8081".into(),
                admin_addr: String::new(),
                workers: 0,
                capacity: 0,
            }),
            publish(Target::Room("r1".into()), 2, br#"{"gift":"rocket","n":3}"#),
            publish(Target::User("u1".into()), 1, br#"{"text":"you won"}"#),
            publish(Target::Broadcast, 0, br#"{"text":"maintenance"}"#),
            merged_publish(7, false),
            merged_publish(1, true),
            merged_publish(0, true),
            LinkFrame::Publish(Publish {
                target: Target::Room("r1".into()),
                msg: PushMessage {
                    seq: u64::MAX,
                    priority: 3,
                    kind: String::new(),
                    data: Bytes::new(),
                    merged: 0,
                    is_final: false,
                    from: None,
                    ack: false,
                },
            }),
            set_level(),
            load_report(),
            LinkFrame::LoadReport(LoadReport {
                connections: 0,
                bytes_out: 0,
                frames_out: 0,
                msgs_dropped: 0,
                slow_closes: 0,
                full: false,
                rooms: vec![],
                users: vec![],
                seqs: vec![],
                capacity_ratio_permille: 0,
                room_users: vec![],
            }),
            query_user(),
            LinkFrame::QueryUser(QueryUser {
                request: 0,
                user: "u".into(),
            }),
            user_conns(),
            LinkFrame::UserConns(UserConns {
                request: 0,
                user: "u".into(),
                conns: vec![],
            }),
        ]
    }

    fn encoded(frame: &LinkFrame) -> BytesMut {
        let mut out = BytesMut::new();
        encode(frame, &mut out).unwrap();
        out
    }

    /// A hand-built frame: length prefix, type byte, body.
    fn raw(ty: u8, body: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        out.put_u32(u32::try_from(1 + body.len()).unwrap());
        out.put_u8(ty);
        out.put_slice(body);
        out
    }

    fn decode_err(mut buf: BytesMut) -> LinkError {
        decode(&mut buf).unwrap_err()
    }

    /// A publish body with the given fields, for error tests.
    fn publish_body(tag: u8, id: &[u8], priority: u8, kind: &[u8], data: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.put_u8(tag);
        put_str8(&mut b, id, "id").unwrap();
        b.put_u64(1);
        b.put_u8(priority);
        put_str8(&mut b, kind, "kind").unwrap();
        put_bytes32(&mut b, data, "data").unwrap();
        b
    }

    fn register_body(version: u16, edge_id: &[u8], ws: &[u8], tcp: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.put_u16(version);
        put_str8(&mut b, edge_id, "edge_id").unwrap();
        put_str8(&mut b, ws, "ws_addr").unwrap();
        put_str8(&mut b, tcp, "tcp_addr").unwrap();
        put_str8(&mut b, b"", "admin_addr").unwrap();
        b.put_u16(4);
        b.put_u32(100);
        b
    }

    fn load_report_body(full: u8, rooms: &[(&[u8], u32)]) -> Vec<u8> {
        let mut b = Vec::new();
        b.put_u32(1);
        for _ in 0..4 {
            b.put_u64(2);
        }
        b.put_u8(full);
        b.put_u32(u32::try_from(rooms.len()).unwrap());
        for (id, n) in rooms {
            put_str8(&mut b, id, "room").unwrap();
            b.put_u32(*n);
        }
        b.put_u32(0); // user_count
        b.put_u32(0); // seq_count
        b.put_u16(0); // capacity_ratio_permille
        b.put_u32(0); // room_users_count
        b
    }

    /// A full load report body with no rooms or users and the given `(tag, id, seq)` entries.
    fn seqs_body(seqs: &[(u8, &[u8], u64)]) -> Vec<u8> {
        let mut b = load_report_body(1, &[]);
        b.truncate(b.len() - 10);
        b.put_u32(u32::try_from(seqs.len()).unwrap());
        for (tag, id, seq) in seqs {
            b.put_u8(*tag);
            put_str8(&mut b, id, "id").unwrap();
            b.put_u64(*seq);
        }
        b.put_u16(0); // capacity_ratio_permille
        b.put_u32(0); // room_users_count
        b
    }

    /// A user connections body for `u1` with one connection.
    fn user_conns_body(format: u8, peer: &[u8], rooms: &[&[u8]]) -> Vec<u8> {
        let mut b = Vec::new();
        b.put_u32(1);
        put_str8(&mut b, b"u1", "user").unwrap();
        b.put_u16(1);
        b.put_u8(format);
        put_str8(&mut b, peer, "peer").unwrap();
        b.put_u8(u8::try_from(rooms.len()).unwrap());
        for room in rooms {
            put_str8(&mut b, room, "room").unwrap();
        }
        b
    }

    #[test]
    fn every_frame_type_round_trips() {
        for frame in samples() {
            let mut buf = encoded(&frame);
            assert_eq!(decode(&mut buf).unwrap(), Some(frame.clone()), "{frame:?}");
            assert!(buf.is_empty(), "{frame:?} left {} bytes", buf.len());
        }
    }

    #[test]
    fn decode_then_encode_gives_the_same_bytes() {
        for frame in samples() {
            let bytes = encoded(&frame);
            let mut buf = bytes.clone();
            let back = decode(&mut buf).unwrap().unwrap();
            assert_eq!(encoded(&back), bytes);
        }
    }

    #[test]
    fn publish_matches_the_documented_layout() {
        let frame = publish(Target::Room("r1".into()), 2, b"{}");
        let mut want = Vec::new();
        want.put_u32(1 + 1 + 3 + 8 + 1 + 5 + 4 + 2);
        want.extend_from_slice(&[0x02, 0, 2, b'r', b'1']);
        want.put_u64(41);
        want.extend_from_slice(&[2, 4, b'g', b'i', b'f', b't']);
        want.extend_from_slice(&[0, 0, 0, 2, b'{', b'}']);
        assert_eq!(&encoded(&frame)[..], &want[..]);
    }

    #[test]
    fn register_and_set_level_match_the_documented_layout() {
        let mut want = Vec::new();
        want.put_u32(1 + 2 + 2 + 2 + 2 + 1 + 2 + 4);
        want.extend_from_slice(&[0x01, 0, 6, 1, b'e', 1, b'w', 1, b't', 0, 0, 3, 0, 0, 0, 9]);
        let reg = LinkFrame::Register(Register {
            edge_id: "e".into(),
            ws_addr: "w".into(),
            tcp_addr: "t".into(),
            admin_addr: String::new(),
            workers: 3,
            capacity: 9,
        });
        assert_eq!(&encoded(&reg)[..], &want[..]);

        let mut want = Vec::new();
        want.put_u32(1 + 3 + 1 + 4 + 16);
        want.extend_from_slice(&[0x03, 2, b'r', b'1', 5]);
        want.put_u32(100);
        for b in [UNLIMITED, 1, 2, 3] {
            want.put_u32(b);
        }
        let level = LinkFrame::SetLevel(SetLevel {
            room: "r1".into(),
            level: 5,
            tick_ms: 100,
            budgets: [UNLIMITED, 1, 2, 3],
        });
        assert_eq!(&encoded(&level)[..], &want[..]);
        assert_eq!(&want[want.len() - 16..want.len() - 12], &[0xff; 4]);
    }

    #[test]
    fn query_user_and_user_conns_match_the_documented_layout() {
        let mut want = Vec::new();
        want.put_u32(1 + 4 + 3);
        want.put_u8(0x05);
        want.put_u32(7);
        want.extend_from_slice(&[2, b'u', b'1']);
        let query = LinkFrame::QueryUser(QueryUser {
            request: 7,
            user: "u1".into(),
        });
        assert_eq!(&encoded(&query)[..], &want[..]);

        let mut want = Vec::new();
        want.put_u32(1 + 4 + 3 + 2 + (1 + 4 + 1 + 3 + 3) + (1 + 1 + 1));
        want.put_u8(0x06);
        want.put_u32(7);
        want.extend_from_slice(&[2, b'u', b'1', 0, 2]);
        want.extend_from_slice(&[1, 3, b'a', b':', b'1', 2, 2, b'r', b'1', 2, b'r', b'2']);
        want.extend_from_slice(&[2, 0, 0]);
        let conns = LinkFrame::UserConns(UserConns {
            request: 7,
            user: "u1".into(),
            conns: vec![
                ConnInfo {
                    format: WireFormat::WsBinary,
                    peer: "a:1".into(),
                    rooms: vec!["r1".into(), "r2".into()],
                },
                ConnInfo {
                    format: WireFormat::Tcp,
                    peer: String::new(),
                    rooms: vec![],
                },
            ],
        });
        assert_eq!(&encoded(&conns)[..], &want[..]);
    }

    #[test]
    fn load_report_seqs_come_last() {
        let mut report = LoadReport {
            connections: 1,
            bytes_out: 2,
            frames_out: 2,
            msgs_dropped: 2,
            slow_closes: 2,
            full: true,
            rooms: vec![],
            users: vec![],
            seqs: vec![],
            capacity_ratio_permille: 0,
            room_users: vec![],
        };
        let without = encoded(&LinkFrame::LoadReport(report.clone()));
        assert_eq!(
            &without[LEN_PREFIX + 1..],
            &load_report_body(1, &[])[..],
            "seq_count 0, capacity_ratio_permille and room_users_count 0 end the body"
        );
        report.seqs = vec![(Target::User("u1".into()), 5), (Target::Broadcast, 6)];
        report.capacity_ratio_permille = 0x0102;
        let with = encoded(&LinkFrame::LoadReport(report));
        let mut tail = Vec::new();
        tail.put_u32(2);
        tail.extend_from_slice(&[1, 2, b'u', b'1']);
        tail.put_u64(5);
        tail.extend_from_slice(&[2, 0]);
        tail.put_u64(6);
        tail.put_u16(0x0102);
        tail.put_u32(0);
        let head = LEN_PREFIX..without.len() - 10;
        assert_eq!(&with[head.clone()], &without[head]);
        assert_eq!(&with[without.len() - 10..], &tail[..]);
        assert_eq!(
            &with[..LEN_PREFIX],
            &u32::try_from(with.len() - LEN_PREFIX)
                .unwrap()
                .to_be_bytes()
        );
    }

    #[test]
    fn load_report_capacity_ratio_is_required() {
        let mut body = load_report_body(1, &[]);
        body.truncate(body.len() - 5);
        assert_eq!(
            decode_err(raw(TYPE_LOAD_REPORT, &body)),
            LinkError::Wire(WireError::Truncated("capacity_ratio_permille"))
        );
        let mut body = load_report_body(1, &[]);
        body.truncate(body.len() - 6);
        body.put_u16(850);
        body.put_u32(0);
        assert!(matches!(
            decode(&mut raw(TYPE_LOAD_REPORT, &body)).unwrap(),
            Some(LinkFrame::LoadReport(l)) if l.capacity_ratio_permille == 850
        ));
    }

    /// A load report body with no rooms, users or seqs, ending with these `room_users` entries
    /// written as they are (so tests can break their rules).
    fn room_users_body(entries: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut b = load_report_body(1, &[]);
        b.truncate(b.len() - 4);
        b.put_u32(u32::try_from(entries.len()).unwrap());
        for (room, sketch) in entries {
            put_str8(&mut b, room, "room").unwrap();
            b.extend_from_slice(sketch);
        }
        b
    }

    /// An exact sketch as written on the link: form 0, `count u16`, the hashes.
    fn exact_sketch(hashes: &[u64]) -> Vec<u8> {
        let mut b = vec![SKETCH_EXACT];
        b.put_u16(u16::try_from(hashes.len()).unwrap());
        for &h in hashes {
            b.put_u64(h);
        }
        b
    }

    #[test]
    fn load_report_room_users_come_last_exact_or_dense() {
        let mut report = LoadReport {
            connections: 1,
            bytes_out: 2,
            frames_out: 2,
            msgs_dropped: 2,
            slow_closes: 2,
            full: true,
            rooms: vec![],
            users: vec![],
            seqs: vec![],
            capacity_ratio_permille: 0,
            room_users: vec![("r1".into(), UserSketch::Exact(vec![1, u64::MAX]))],
        };
        let exact = encoded(&LinkFrame::LoadReport(report.clone()));
        assert_eq!(
            &exact[LEN_PREFIX + 1..],
            &room_users_body(&[(b"r1", &exact_sketch(&[1, u64::MAX]))])[..]
        );
        let mut registers = Box::new([0u8; REGISTERS]);
        registers[0] = 1;
        registers[REGISTERS - 1] = crate::sketch::MAX_RANK;
        report.room_users = vec![("r2".into(), UserSketch::Dense(registers.clone()))];
        let dense = encoded(&LinkFrame::LoadReport(report.clone()));
        let mut sketch = vec![SKETCH_DENSE];
        sketch.extend_from_slice(&registers[..]);
        assert_eq!(
            &dense[LEN_PREFIX + 1..],
            &room_users_body(&[(b"r2", &sketch)])[..]
        );
        assert_eq!(
            decode(&mut dense.clone()).unwrap(),
            Some(LinkFrame::LoadReport(report))
        );
    }

    #[test]
    fn load_report_room_users_are_required() {
        let mut body = load_report_body(1, &[]);
        body.truncate(body.len() - 1);
        assert_eq!(
            decode_err(raw(TYPE_LOAD_REPORT, &body)),
            LinkError::Wire(WireError::Truncated("room_users_count"))
        );
    }

    #[test]
    fn bad_user_sketches_are_refused_both_ways() {
        let too_many: Vec<u64> = (0..513).collect();
        let mut high = vec![SKETCH_DENSE];
        high.extend_from_slice(&[0u8; REGISTERS]);
        high[1 + 17] = crate::sketch::MAX_RANK + 1;
        let cases: [(&str, Vec<u8>, LinkError); 7] = [
            (
                "unsorted",
                exact_sketch(&[2, 1]),
                LinkError::BadSketch("exact sketch hashes are not strictly ascending"),
            ),
            (
                "duplicate",
                exact_sketch(&[5, 5]),
                LinkError::BadSketch("exact sketch hashes are not strictly ascending"),
            ),
            (
                "over the exact bound",
                exact_sketch(&too_many),
                LinkError::BadSketch("an exact sketch holds more than 512 hashes"),
            ),
            (
                "register too high",
                high,
                LinkError::BadSketch("a dense sketch register is above 53"),
            ),
            (
                "unknown form",
                vec![2, 0, 0],
                LinkError::BadSketch("unknown sketch form"),
            ),
            (
                "short exact list",
                exact_sketch(&[1, 2])[..11].to_vec(),
                LinkError::Wire(WireError::Truncated("sketch hash")),
            ),
            (
                "short registers",
                vec![SKETCH_DENSE; 100],
                LinkError::Wire(WireError::Truncated("sketch registers")),
            ),
        ];
        for (what, sketch, error) in cases {
            let body = room_users_body(&[(b"r1", &sketch)]);
            assert_eq!(decode_err(raw(TYPE_LOAD_REPORT, &body)), error, "{what}");
        }
        let body = room_users_body(&[(b"bad room", &exact_sketch(&[]))]);
        assert_eq!(
            decode_err(raw(TYPE_LOAD_REPORT, &body)),
            LinkError::InvalidId("room")
        );
        // Encoding checks the same rules and appends nothing.
        for (sketch, room) in [
            (UserSketch::Exact(vec![2, 1]), "r1"),
            (UserSketch::Exact(too_many), "r1"),
            (UserSketch::default(), "bad room"),
        ] {
            let frame = LinkFrame::LoadReport(LoadReport {
                connections: 0,
                bytes_out: 0,
                frames_out: 0,
                msgs_dropped: 0,
                slow_closes: 0,
                full: false,
                rooms: vec![],
                users: vec![],
                seqs: vec![],
                capacity_ratio_permille: 0,
                room_users: vec![(room.into(), sketch)],
            });
            let mut out = BytesMut::new();
            assert!(encode(&frame, &mut out).is_err());
            assert!(out.is_empty());
        }
    }

    #[test]
    fn encode_appends_and_reserves_the_exact_size() {
        // A fresh buffer gets exactly one frame's worth of capacity.
        for frame in samples() {
            let alone = encoded(&frame);
            assert_eq!(alone.capacity(), alone.len(), "{frame:?}");
        }
        let frame = load_report();
        let alone = encoded(&frame);

        let mut out = BytesMut::from(&b"xyz"[..]);
        encode(&frame, &mut out).unwrap();
        assert_eq!(&out[..3], b"xyz");
        assert_eq!(&out[3..], &alone[..]);
    }

    #[test]
    fn back_to_back_frames_decode_in_order() {
        let frames = samples();
        let mut buf = BytesMut::new();
        for f in &frames {
            encode(f, &mut buf).unwrap();
        }
        for f in &frames {
            assert_eq!(decode(&mut buf).unwrap().as_ref(), Some(f));
        }
        assert_eq!(decode(&mut buf).unwrap(), None);
        assert!(buf.is_empty());
    }

    #[test]
    fn split_at_every_byte_decodes_once_whole() {
        for frame in samples() {
            let bytes = encoded(&frame);
            for split in 0..bytes.len() {
                let mut buf = BytesMut::from(&bytes[..split]);
                assert_eq!(
                    decode(&mut buf).unwrap(),
                    None,
                    "{frame:?} split at {split}"
                );
                assert_eq!(buf.len(), split, "an incomplete frame must not be consumed");
                buf.extend_from_slice(&bytes[split..]);
                assert_eq!(decode(&mut buf).unwrap(), Some(frame.clone()));
                assert!(buf.is_empty());
            }
        }
    }

    #[test]
    fn byte_by_byte_feeding_yields_every_frame() {
        let frames = samples();
        let mut stream = BytesMut::new();
        for f in &frames {
            encode(f, &mut stream).unwrap();
        }
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in stream.iter() {
            buf.put_u8(b);
            while let Some(f) = decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
        assert!(buf.is_empty());
    }

    #[test]
    fn incomplete_frame_reserves_room_for_the_rest() {
        let bytes = encoded(&publish(Target::Broadcast, 0, &[b'x'; 4096]));
        let mut buf = BytesMut::from(&bytes[..10]);
        assert_eq!(decode(&mut buf).unwrap(), None);
        assert!(buf.capacity() >= bytes.len());
    }

    #[test]
    fn publish_data_is_a_zero_copy_slice_of_the_input() {
        let data = br#"{"gift":"rocket","n":3,"pad":"................................"}"#;
        let mut buf = encoded(&publish(Target::Room("r1".into()), 1, data));
        encode(&set_level(), &mut buf).unwrap();
        let start = buf.as_ptr() as usize;
        let end = start + buf.len();
        let Some(LinkFrame::Publish(p)) = decode(&mut buf).unwrap() else {
            panic!("expected a publish");
        };
        assert_eq!(&p.msg.data[..], &data[..]);
        let ptr = p.msg.data.as_ptr() as usize;
        assert!(
            start <= ptr && ptr + p.msg.data.len() <= end,
            "data was copied"
        );
        // The rest of the buffer is still usable.
        assert_eq!(decode(&mut buf).unwrap(), Some(set_level()));
    }

    #[test]
    fn a_frame_of_exactly_the_limit_is_accepted_and_one_more_is_not() {
        let overhead = 1 + 1 + 1 + 8 + 1 + 1 + 4; // type, tag, empty id, seq, p, empty kind, len
        let mut data = vec![b'x'; MAX_LINK_FRAME - overhead];
        let mut frame = LinkFrame::Publish(Publish {
            target: Target::Broadcast,
            msg: PushMessage {
                seq: 1,
                priority: 0,
                kind: String::new(),
                data: Bytes::new(),
                merged: 0,
                is_final: false,
                from: None,
                ack: false,
            },
        });
        if let LinkFrame::Publish(p) = &mut frame {
            p.msg.data = Bytes::from(data.clone());
        }
        let mut buf = encoded(&frame);
        assert_eq!(buf.len(), LEN_PREFIX + MAX_LINK_FRAME);
        assert_eq!(decode(&mut buf).unwrap(), Some(frame.clone()));

        data.push(b'x');
        if let LinkFrame::Publish(p) = &mut frame {
            p.msg.data = Bytes::from(data);
        }
        let mut out = BytesMut::new();
        assert_eq!(
            encode(&frame, &mut out),
            Err(LinkError::FrameTooLarge(MAX_LINK_FRAME + 1))
        );
        assert!(out.is_empty());
    }

    #[test]
    fn oversized_length_is_refused_from_the_prefix_alone() {
        let mut buf = BytesMut::new();
        buf.put_u32(u32::try_from(MAX_LINK_FRAME + 1).unwrap());
        assert_eq!(
            decode_err(buf),
            LinkError::FrameTooLarge(MAX_LINK_FRAME + 1)
        );
        let mut buf = BytesMut::new();
        buf.put_u32(u32::MAX);
        assert_eq!(decode_err(buf), LinkError::FrameTooLarge(u32::MAX as usize));
    }

    #[test]
    fn zero_length_is_refused() {
        assert_eq!(
            decode_err(BytesMut::from(&[0u8, 0, 0, 0][..])),
            LinkError::EmptyFrame
        );
    }

    #[test]
    fn short_prefix_is_incomplete_not_an_error() {
        for n in 0..LEN_PREFIX {
            let mut buf = BytesMut::from(&[0u8, 0, 0][..n]);
            assert_eq!(decode(&mut buf).unwrap(), None);
        }
    }

    #[test]
    fn sync_frames_match_the_documented_layout() {
        let mut want = Vec::new();
        want.put_u32(1 + 8 + 4 + 4 + 4 + 2);
        want.push(0x07);
        want.put_u64(42);
        want.put_u32(3);
        want.extend_from_slice(&[0, 2, b'r', b'1', 1, 2, b'u', b'1', 2, 0]);
        assert_eq!(&encoded(&sync())[..], &want[..]);

        let mut want = Vec::new();
        want.put_u32(1 + 8 + 4 + (4 + 5 + 8) + (4 + 6 + 8) + (2 + 2 + 8));
        want.push(0x08);
        want.put_u64(42);
        want.put_u32(3);
        want.extend_from_slice(&[0, 2, b'r', b'1', 4, b'k', b'3', b'x', b'9']);
        want.put_u64(57);
        want.extend_from_slice(&[1, 2, b'u', b'1', 5, b'A', b'-', b'z', b'_', b'0']);
        want.put_u64(0);
        want.extend_from_slice(&[2, 0, 1, b'b']);
        want.put_u64(u64::MAX);
        assert_eq!(&encoded(&sync_ack())[..], &want[..]);

        // An empty sync is its id and a zero count.
        let empty = LinkFrame::Sync(Sync {
            id: 1,
            channels: vec![],
        });
        assert_eq!(
            &encoded(&empty)[..],
            [0, 0, 0, 13, 0x07, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]
        );
        // The version 3 sync (an id alone) is truncated now.
        assert_eq!(
            decode_err(raw(0x07, &[0; 8])),
            LinkError::Wire(WireError::Truncated("channel_count"))
        );
        assert_eq!(
            decode_err(raw(0x08, &[0; 8])),
            LinkError::Wire(WireError::Truncated("position_count"))
        );
    }

    #[test]
    fn recovery_frames_match_the_documented_layout() {
        let mut want = Vec::new();
        want.put_u32(1 + 8 + 4 + 5 + 8);
        want.push(0x09);
        want.put_u64(9);
        want.extend_from_slice(&[0, 2, b'r', b'1', 4, b'k', b'3', b'x', b'9']);
        want.put_u64(41);
        assert_eq!(&encoded(&recover())[..], &want[..]);

        // The position every answer starts with: room r1 at k3x9/57.
        let mut position = vec![0, 2, b'r', b'1', 4, b'k', b'3', b'x', b'9'];
        position.put_u64(57);

        let mut want = Vec::new();
        want.put_u32(1 + 8 + 17 + 1);
        want.push(0x0a);
        want.put_u64(9);
        want.extend_from_slice(&position);
        want.push(2); // too_old: no messages follow
        assert_eq!(
            &encoded(&recovered(Err(RecoveryFailure::TooOld)))[..],
            &want[..]
        );

        let msg = PushMessage {
            seq: 42,
            priority: 2,
            kind: "gift".into(),
            data: Bytes::from_static(b"{}"),
            merged: 0,
            is_final: false,
            from: None,
            ack: false,
        };
        let mut want = Vec::new();
        want.put_u32(1 + 8 + 17 + 1 + 4 + (8 + 1 + 5 + 4 + 2));
        want.push(0x0a);
        want.put_u64(9);
        want.extend_from_slice(&position);
        want.push(0); // recovered
        want.put_u32(1);
        want.put_u64(42);
        want.extend_from_slice(&[2, 4, b'g', b'i', b'f', b't', 0, 0, 0, 2, b'{', b'}']);
        assert_eq!(&encoded(&recovered(Ok(vec![msg.clone()])))[..], &want[..]);

        // A history page is laid out like a recovered answer with `complete` for `result`.
        let page = LinkFrame::HistoryPage(HistoryPage {
            id: 9,
            position: ChannelPosition {
                target: Target::Room("r1".into()),
                epoch: "k3x9".into(),
                last_seq: 57,
            },
            complete: true,
            msgs: vec![msg],
        });
        want[LEN_PREFIX] = 0x0c;
        want[LEN_PREFIX + 1 + 8 + 17] = 1;
        assert_eq!(&encoded(&page)[..], &want[..]);
    }

    #[test]
    fn history_and_room_online_match_the_documented_layout() {
        let mut want = Vec::new();
        want.put_u32(1 + 8 + 4 + 8 + 4);
        want.push(0x0b);
        want.put_u64(3);
        want.extend_from_slice(&[1, 2, b'u', b'1']);
        want.put_u64(41);
        want.put_u32(100);
        assert_eq!(&encoded(&history())[..], &want[..]);

        let mut want = Vec::new();
        want.put_u32(1 + 4 + (3 + 8) + (11 + 8));
        want.push(0x0d);
        want.put_u32(2);
        want.extend_from_slice(&[2, b'r', b'1']);
        want.put_u32(104_532);
        want.put_u32(98_000);
        want.push(10);
        want.extend_from_slice(b"room:10000");
        want.put_u32(0);
        want.put_u32(u32::MAX);
        assert_eq!(&encoded(&room_online())[..], &want[..]);
    }

    #[test]
    fn recovery_results_and_complete_flags_are_checked() {
        let mut body = encoded(&recovered(Err(RecoveryFailure::TooOld)))[LEN_PREFIX + 1..].to_vec();
        for code in [5, 0x80, 0xff] {
            *body.last_mut().unwrap() = code;
            assert_eq!(
                decode_err(raw(TYPE_RECOVERED, &body)),
                LinkError::BadRecovery(code)
            );
        }
        for failure in RecoveryFailure::ALL {
            *body.last_mut().unwrap() = failure.code();
            assert!(matches!(
                decode(&mut raw(TYPE_RECOVERED, &body)).unwrap(),
                Some(LinkFrame::Recovered(Recovered { result: Err(f), .. })) if f == failure
            ));
        }
        // A failure carries no messages: a count after it is trailing.
        body.put_u32(0);
        assert_eq!(
            decode_err(raw(TYPE_RECOVERED, &body)),
            LinkError::Wire(WireError::Trailing(4))
        );

        let mut body = encoded(&history_page(true, vec![]))[LEN_PREFIX + 1..].to_vec();
        let at = body.len() - 5;
        for flag in [2, 0xff] {
            body[at] = flag;
            assert_eq!(
                decode_err(raw(TYPE_HISTORY_PAGE, &body)),
                LinkError::BadFlag("complete", flag)
            );
        }
    }

    #[test]
    fn epochs_are_checked_in_every_frame_that_carries_one() {
        let bad_epochs: [&[u8]; 4] = [b"", b"k.3", b"k 3", &[b'e'; 33]];
        // (type, body before the epoch, body after it)
        let mut target = vec![0u8; 8]; // request id
        target.extend_from_slice(&[0, 2, b'r', b'1']);
        let mut ack_head = vec![0u8; 8];
        ack_head.put_u32(1);
        ack_head.extend_from_slice(&[0, 2, b'r', b'1']);
        let cases: [(u8, &[u8], Vec<u8>); 4] = [
            (TYPE_SYNC_ACK, &ack_head, vec![0; 8]),
            (TYPE_RECOVER, &target, vec![0; 8]),
            (TYPE_RECOVERED, &target, [&[0u8; 8][..], &[1]].concat()),
            (
                TYPE_HISTORY_PAGE,
                &target,
                [&[0u8; 8][..], &[1, 0, 0, 0, 0]].concat(),
            ),
        ];
        for (ty, head, tail) in &cases {
            for epoch in bad_epochs {
                let mut body = head.to_vec();
                put_str8(&mut body, epoch, "epoch").unwrap();
                body.extend_from_slice(tail);
                assert_eq!(
                    decode_err(raw(*ty, &body)),
                    LinkError::InvalidEpoch("epoch"),
                    "type {ty:#x}, epoch {epoch:?}"
                );
            }
            // The same body with a good epoch decodes.
            let mut body = head.to_vec();
            put_str8(&mut body, b"k3x9", "epoch").unwrap();
            body.extend_from_slice(tail);
            assert!(
                decode(&mut raw(*ty, &body)).unwrap().is_some(),
                "type {ty:#x}"
            );
        }
        let bad = [
            LinkFrame::Recover(Recover {
                id: 1,
                target: Target::Broadcast,
                since: Since {
                    epoch: String::new(),
                    seq: 0,
                },
            }),
            LinkFrame::SyncAck(SyncAck {
                id: 1,
                positions: vec![position(Target::Broadcast, "k.3", 0)],
            }),
            recovered_with_position(position(Target::Broadcast, &"e".repeat(33), 0)),
        ];
        for frame in bad {
            assert_eq!(
                encode(&frame, &mut BytesMut::new()),
                Err(LinkError::InvalidEpoch("epoch")),
                "{frame:?}"
            );
        }
    }

    fn recovered_with_position(position: ChannelPosition) -> LinkFrame {
        LinkFrame::Recovered(Recovered {
            id: 1,
            position,
            result: Ok(vec![]),
        })
    }

    #[test]
    fn targets_ids_and_messages_of_the_new_frames_are_checked() {
        // A sync channel, a position, a recover and a history target are checked like a
        // publish's target.
        let mut body = vec![0u8; 8];
        body.put_u32(2);
        body.extend_from_slice(&[0, 2, b'r', b'1', 0, 3, b'r', b' ', b'1']);
        assert_eq!(
            decode_err(raw(TYPE_SYNC, &body)),
            LinkError::InvalidId("room")
        );
        let mut body = vec![0u8; 8];
        body.put_u32(1);
        body.extend_from_slice(&[2, 1, b'x']);
        assert_eq!(
            decode_err(raw(TYPE_SYNC, &body)),
            LinkError::BroadcastWithId
        );
        let mut body = vec![0u8; 8];
        body.extend_from_slice(&[3, 0]);
        body.put_u64(1);
        body.put_u32(1);
        assert_eq!(
            decode_err(raw(TYPE_HISTORY, &body)),
            LinkError::BadTarget(3)
        );
        // Room counts carry valid room ids.
        let mut body = Vec::new();
        body.put_u32(1);
        put_str8(&mut body, b"r/1", "room").unwrap();
        body.put_u64(0);
        assert_eq!(
            decode_err(raw(TYPE_ROOM_ONLINE, &body)),
            LinkError::InvalidId("room")
        );
        // Stored messages are checked like a publish's.
        let mut bad_priority = stored_msgs();
        bad_priority[1].priority = 4;
        let mut bad_kind = stored_msgs();
        bad_kind[2].kind = "a\nb".into();
        for (msgs, err) in [
            (bad_priority, LinkError::BadPriority(4)),
            (bad_kind, LinkError::InvalidKind),
        ] {
            for frame in [
                recovered(Ok(msgs.clone())),
                history_page(true, msgs.clone()),
            ] {
                assert_eq!(encode(&frame, &mut BytesMut::new()), Err(err.clone()));
            }
        }
        // On decode too: the first message's priority byte: after id, position, complete, count and its seq.
        let at = 8 + (4 + 5 + 8) + 1 + 4 + 8;
        let mut body = encoded(&history_page(true, stored_msgs()))[LEN_PREFIX + 1..].to_vec();
        assert_eq!(body[at], 2);
        body[at] = 7;
        assert_eq!(
            decode_err(raw(TYPE_HISTORY_PAGE, &body)),
            LinkError::BadPriority(7)
        );
        let mut rooms = room_online();
        if let LinkFrame::RoomOnline(o) = &mut rooms {
            o.rooms[1].room = String::new();
        }
        assert_eq!(
            encode(&rooms, &mut BytesMut::new()),
            Err(LinkError::InvalidId("room"))
        );
    }

    #[test]
    fn stored_message_data_is_a_zero_copy_slice_of_the_input() {
        let frames = [
            recovered(Ok(stored_msgs())),
            history_page(false, stored_msgs()),
        ];
        for frame in frames {
            let mut buf = encoded(&frame);
            let start = buf.as_ptr() as usize;
            let end = start + buf.len();
            let msgs = match decode(&mut buf).unwrap() {
                Some(LinkFrame::Recovered(Recovered { result: Ok(m), .. })) => m,
                Some(LinkFrame::HistoryPage(p)) => p.msgs,
                other => panic!("unexpected {other:?}"),
            };
            assert_eq!(msgs, stored_msgs());
            for m in msgs.iter().filter(|m| !m.data.is_empty()) {
                let ptr = m.data.as_ptr() as usize;
                assert!(start <= ptr && ptr + m.data.len() <= end, "data was copied");
            }
        }
    }

    #[test]
    fn huge_counts_in_the_new_frames_fail_without_allocating_for_them() {
        // Each body ends right after a count of u32::MAX: the first item is missing.
        let mut position = vec![0, 2, b'r', b'1', 1, b'e'];
        position.put_u64(1);
        let cases: [(u8, Vec<u8>, &str); 5] = [
            (TYPE_SYNC, vec![0; 8], "target"),
            (TYPE_SYNC_ACK, vec![0; 8], "target"),
            (
                TYPE_RECOVERED,
                [&[0u8; 8][..], &position, &[0]].concat(),
                "seq",
            ),
            (
                TYPE_HISTORY_PAGE,
                [&[0u8; 8][..], &position, &[1]].concat(),
                "seq",
            ),
            (TYPE_ROOM_ONLINE, vec![], "room"),
        ];
        for (ty, mut body, field) in cases {
            body.put_u32(u32::MAX);
            assert_eq!(
                decode_err(raw(ty, &body)),
                LinkError::Wire(WireError::Truncated(field)),
                "type {ty:#x}"
            );
        }
    }

    #[test]
    fn lists_of_the_new_frames_stop_at_the_frame_limit() {
        // 1.5 million room counts of 17 bytes are over 16 MiB: refused before writing.
        let rooms = vec![
            RoomCount {
                room: "room:1234".into(),
                online: 1,
                users: 1,
            };
            1_500_000
        ];
        let mut out = BytesMut::from(&b"keep"[..]);
        assert!(matches!(
            encode(&LinkFrame::RoomOnline(RoomOnline { rooms }), &mut out),
            Err(LinkError::FrameTooLarge(_))
        ));
        // Two messages of 9 MiB each fit no history page.
        let big = PushMessage {
            seq: 1,
            priority: 3,
            kind: "k".into(),
            data: Bytes::from(vec![b'1'; 9 << 20]),
            merged: 0,
            is_final: false,
            from: None,
            ack: false,
        };
        assert!(matches!(
            encode(&history_page(true, vec![big.clone(), big]), &mut out),
            Err(LinkError::FrameTooLarge(_))
        ));
        assert_eq!(&out[..], b"keep");
    }

    #[test]
    fn unknown_types_are_refused() {
        for ty in [0x00, 0x11, 0x81, 0xff] {
            assert_eq!(decode_err(raw(ty, &[])), LinkError::UnknownType(ty));
        }
    }

    #[test]
    fn other_versions_are_refused() {
        for v in [0, 1, LINK_VERSION + 1, u16::MAX] {
            let body = register_body(v, b"e1", b"a:1", b"a:2");
            assert_eq!(
                decode_err(raw(TYPE_REGISTER, &body)),
                LinkError::UnsupportedVersion(v)
            );
        }
    }

    #[test]
    fn register_fields_are_checked() {
        let body = register_body(LINK_VERSION, b"bad id", b"a:1", b"a:2");
        assert_eq!(
            decode_err(raw(TYPE_REGISTER, &body)),
            LinkError::InvalidId("edge_id")
        );
        let body = register_body(LINK_VERSION, b"", b"a:1", b"a:2");
        assert_eq!(
            decode_err(raw(TYPE_REGISTER, &body)),
            LinkError::InvalidId("edge_id")
        );
        let body = register_body(LINK_VERSION, b"e1", b"", b"a:2");
        assert_eq!(
            decode_err(raw(TYPE_REGISTER, &body)),
            LinkError::EmptyField("ws_addr")
        );
        let body = register_body(LINK_VERSION, b"e1", b"a:1", b"");
        assert_eq!(
            decode_err(raw(TYPE_REGISTER, &body)),
            LinkError::EmptyField("tcp_addr")
        );
        let body = register_body(LINK_VERSION, b"e1", &[0xff, 0xfe], b"a:2");
        assert_eq!(
            decode_err(raw(TYPE_REGISTER, &body)),
            LinkError::Wire(WireError::NotUtf8("ws_addr"))
        );
    }

    #[test]
    fn target_tags_above_two_are_refused() {
        for tag in [3, 0x80, 0xff] {
            let body = publish_body(tag, b"r1", 0, b"k", b"{}");
            assert_eq!(
                decode_err(raw(TYPE_PUBLISH, &body)),
                LinkError::BadTarget(tag)
            );
        }
    }

    #[test]
    fn priorities_above_three_are_refused() {
        for p in [4, 0xff] {
            let body = publish_body(0, b"r1", p, b"k", b"{}");
            assert_eq!(
                decode_err(raw(TYPE_PUBLISH, &body)),
                LinkError::BadPriority(p)
            );
        }
        let mut out = BytesMut::new();
        assert_eq!(
            encode(&publish(Target::Broadcast, 4, b"{}"), &mut out),
            Err(LinkError::BadPriority(4))
        );
        assert!(out.is_empty());
    }

    #[test]
    fn publish_ids_are_checked() {
        let long = [b'a'; 129];
        for (tag, id, field) in [
            (0, &b""[..], "room"),
            (0, &b"r 1"[..], "room"),
            (0, &long[..], "room"),
            (1, &b""[..], "user"),
            (1, &b"u/1"[..], "user"),
        ] {
            let body = publish_body(tag, id, 0, b"k", b"{}");
            assert_eq!(
                decode_err(raw(TYPE_PUBLISH, &body)),
                LinkError::InvalidId(field)
            );
        }
        let body = publish_body(2, b"r1", 0, b"k", b"{}");
        assert_eq!(
            decode_err(raw(TYPE_PUBLISH, &body)),
            LinkError::BroadcastWithId
        );
    }

    #[test]
    fn kinds_with_control_characters_are_refused() {
        let body = publish_body(0, b"r1", 0, b"gi\nft", b"{}");
        assert_eq!(decode_err(raw(TYPE_PUBLISH, &body)), LinkError::InvalidKind);
        let mut frame = publish(Target::Broadcast, 0, b"{}");
        if let LinkFrame::Publish(p) = &mut frame {
            p.msg.kind = "a\u{7f}".into();
        }
        assert_eq!(
            encode(&frame, &mut BytesMut::new()),
            Err(LinkError::InvalidKind)
        );
    }

    #[test]
    fn set_level_room_is_checked() {
        let mut body = Vec::new();
        put_str8(&mut body, b"r*", "room").unwrap();
        body.put_u8(0);
        body.put_u32(100);
        body.extend_from_slice(&[0; 16]);
        assert_eq!(
            decode_err(raw(TYPE_SET_LEVEL, &body)),
            LinkError::InvalidId("room")
        );
        // One budget short.
        let mut body = Vec::new();
        put_str8(&mut body, b"r1", "room").unwrap();
        body.put_u8(0);
        body.put_u32(100);
        body.extend_from_slice(&[0; 12]);
        assert_eq!(
            decode_err(raw(TYPE_SET_LEVEL, &body)),
            LinkError::Wire(WireError::Truncated("budgets"))
        );
    }

    #[test]
    fn load_report_entries_and_flag_are_checked() {
        let body = load_report_body(2, &[]);
        assert_eq!(
            decode_err(raw(TYPE_LOAD_REPORT, &body)),
            LinkError::BadFlag("full", 2)
        );
        let body = load_report_body(0, &[(b"r1", 1), (b"", 0)]);
        assert_eq!(
            decode_err(raw(TYPE_LOAD_REPORT, &body)),
            LinkError::InvalidId("room")
        );

        let mut body = load_report_body(0, &[]);
        body.truncate(body.len() - 14);
        body.put_u32(1);
        put_str8(&mut body, b"u 1", "user").unwrap();
        body.put_u32(1);
        body.put_u32(0);
        body.put_u16(0);
        body.put_u32(0);
        assert_eq!(
            decode_err(raw(TYPE_LOAD_REPORT, &body)),
            LinkError::InvalidId("user")
        );
    }

    #[test]
    fn huge_entry_counts_fail_without_allocating_for_them() {
        // The body ends right after a room_count of u32::MAX: the first entry is missing.
        let mut body = load_report_body(1, &[]);
        body.truncate(body.len() - 18);
        body.put_u32(u32::MAX);
        assert_eq!(
            decode_err(raw(TYPE_LOAD_REPORT, &body)),
            LinkError::Wire(WireError::Truncated("room"))
        );
        // Likewise a seq_count of u32::MAX with no entry after it.
        let mut body = seqs_body(&[]);
        body.truncate(body.len() - 10);
        body.put_u32(u32::MAX);
        assert_eq!(
            decode_err(raw(TYPE_LOAD_REPORT, &body)),
            LinkError::Wire(WireError::Truncated("target"))
        );
        // And a room_users_count of u32::MAX.
        let mut body = load_report_body(1, &[]);
        body.truncate(body.len() - 4);
        body.put_u32(u32::MAX);
        assert_eq!(
            decode_err(raw(TYPE_LOAD_REPORT, &body)),
            LinkError::Wire(WireError::Truncated("room"))
        );
        // And u16::MAX connections / 255 rooms with nothing after the count.
        let mut body = Vec::new();
        body.put_u32(1);
        put_str8(&mut body, b"u1", "user").unwrap();
        body.put_u16(u16::MAX);
        assert_eq!(
            decode_err(raw(TYPE_USER_CONNS, &body)),
            LinkError::Wire(WireError::Truncated("format"))
        );
        let mut body = user_conns_body(0, b"p", &[]);
        body.pop();
        body.put_u8(u8::MAX);
        assert_eq!(
            decode_err(raw(TYPE_USER_CONNS, &body)),
            LinkError::Wire(WireError::Truncated("room"))
        );
    }

    #[test]
    fn load_report_seqs_are_checked_like_publish_targets() {
        assert!(matches!(
            decode(&mut raw(TYPE_LOAD_REPORT, &seqs_body(&[(2, b"", 9)]))).unwrap(),
            Some(LinkFrame::LoadReport(l)) if l.seqs == [(Target::Broadcast, 9)]
        ));
        for tag in [3, 0xff] {
            assert_eq!(
                decode_err(raw(TYPE_LOAD_REPORT, &seqs_body(&[(tag, b"r1", 1)]))),
                LinkError::BadTarget(tag)
            );
        }
        assert_eq!(
            decode_err(raw(TYPE_LOAD_REPORT, &seqs_body(&[(2, b"r1", 1)]))),
            LinkError::BroadcastWithId
        );
        let long = [b'a'; 129];
        for (tag, id, field) in [
            (0, &b""[..], "room"),
            (0, &b"r 1"[..], "room"),
            (0, &long[..], "room"),
            (1, &b""[..], "user"),
            (1, &b"u/1"[..], "user"),
        ] {
            // The bad entry comes after a good one: every entry is checked.
            let body = seqs_body(&[(0, b"r1", 1), (tag, id, 2)]);
            assert_eq!(
                decode_err(raw(TYPE_LOAD_REPORT, &body)),
                LinkError::InvalidId(field)
            );
        }
        let body = seqs_body(&[(0, &[0xff], 1)]);
        assert_eq!(
            decode_err(raw(TYPE_LOAD_REPORT, &body)),
            LinkError::Wire(WireError::NotUtf8("id"))
        );
    }

    #[test]
    fn query_user_and_user_conns_ids_are_checked() {
        for user in [&b""[..], &b"u 1"[..], &[b'a'; 129][..]] {
            let mut body = Vec::new();
            body.put_u32(1);
            put_str8(&mut body, user, "user").unwrap();
            assert_eq!(
                decode_err(raw(TYPE_QUERY_USER, &body)),
                LinkError::InvalidId("user")
            );
            body.put_u16(0);
            assert_eq!(
                decode_err(raw(TYPE_USER_CONNS, &body)),
                LinkError::InvalidId("user")
            );
        }
        for room in [&b""[..], &b"r*"[..]] {
            let body = user_conns_body(0, b"1.2.3.4:5", &[b"r1", room]);
            assert_eq!(
                decode_err(raw(TYPE_USER_CONNS, &body)),
                LinkError::InvalidId("room")
            );
        }
        let body = user_conns_body(0, &[0xc3], &[]);
        assert_eq!(
            decode_err(raw(TYPE_USER_CONNS, &body)),
            LinkError::Wire(WireError::NotUtf8("peer"))
        );
    }

    #[test]
    fn unknown_wire_formats_are_refused() {
        for (byte, format) in [
            (0, WireFormat::WsJson),
            (1, WireFormat::WsBinary),
            (2, WireFormat::Tcp),
        ] {
            let mut buf = raw(TYPE_USER_CONNS, &user_conns_body(byte, b"p", &[]));
            let Some(LinkFrame::UserConns(u)) = decode(&mut buf).unwrap() else {
                panic!("expected user connections");
            };
            assert_eq!(u.conns[0].format, format);
        }
        for byte in [3, 0x80, 0xff] {
            assert_eq!(
                decode_err(raw(TYPE_USER_CONNS, &user_conns_body(byte, b"p", &[]))),
                LinkError::BadFormat(byte)
            );
        }
    }

    #[test]
    fn user_conns_list_limits_are_enforced_on_encode() {
        let conn = |rooms: usize| ConnInfo {
            format: WireFormat::Tcp,
            peer: "p".into(),
            rooms: (0..rooms).map(|i| format!("r{i}")).collect(),
        };
        let frame = |conns: Vec<ConnInfo>| {
            LinkFrame::UserConns(UserConns {
                request: 1,
                user: "u1".into(),
                conns,
            })
        };
        // The largest lists that fit round-trip.
        for ok in [frame(vec![conn(255)]), frame(vec![conn(0); 65_535])] {
            let mut buf = encoded(&ok);
            assert_eq!(decode(&mut buf).unwrap(), Some(ok));
        }
        let mut out = BytesMut::from(&b"keep"[..]);
        assert_eq!(
            encode(&frame(vec![conn(256)]), &mut out),
            Err(LinkError::Wire(WireError::TooLong("rooms")))
        );
        assert_eq!(
            encode(&frame(vec![conn(0); 65_536]), &mut out),
            Err(LinkError::Wire(WireError::TooLong("conns")))
        );
        assert_eq!(&out[..], b"keep");
    }

    #[test]
    fn trailing_bytes_are_refused_for_every_type() {
        for frame in samples() {
            let bytes = encoded(&frame);
            let mut body = bytes[LEN_PREFIX + 1..].to_vec();
            body.push(0);
            assert_eq!(
                decode_err(raw(bytes[LEN_PREFIX], &body)),
                LinkError::Wire(WireError::Trailing(1)),
                "{frame:?}"
            );
        }
    }

    #[test]
    fn truncated_bodies_are_refused_for_every_type() {
        // Shorten the declared length (and the bytes) by one: the body then ends inside a field.
        for frame in samples() {
            let bytes = encoded(&frame);
            let body = &bytes[LEN_PREFIX + 1..bytes.len() - 1];
            let err = decode_err(raw(bytes[LEN_PREFIX], body));
            assert!(
                matches!(err, LinkError::Wire(WireError::Truncated(_))),
                "{frame:?}: {err:?}"
            );
        }
    }

    #[test]
    fn data_length_overrunning_the_frame_is_refused() {
        let mut body = publish_body(0, b"r1", 0, b"k", b"{}");
        let at = body.len() - 6;
        body[at..at + 4].copy_from_slice(&100u32.to_be_bytes());
        assert_eq!(
            decode_err(raw(TYPE_PUBLISH, &body)),
            LinkError::Wire(WireError::Truncated("data"))
        );
    }

    #[test]
    fn encode_refuses_what_decode_would_refuse() {
        let mut out = BytesMut::from(&b"keep"[..]);
        let bad = [
            (
                publish(Target::Room("no good".into()), 0, b"{}"),
                LinkError::InvalidId("room"),
            ),
            (
                publish(Target::User(String::new()), 0, b"{}"),
                LinkError::InvalidId("user"),
            ),
            (
                LinkFrame::SetLevel(SetLevel {
                    room: "é".into(),
                    level: 0,
                    tick_ms: 1,
                    budgets: [0; 4],
                }),
                LinkError::InvalidId("room"),
            ),
            (
                LinkFrame::Register(Register {
                    edge_id: "e1".into(),
                    ws_addr: "a".into(),
                    tcp_addr: "b".into(),
                    admin_addr: "x".repeat(256),
                    workers: 1,
                    capacity: 1,
                }),
                LinkError::Wire(WireError::TooLong("admin_addr")),
            ),
            (
                LinkFrame::LoadReport(LoadReport {
                    connections: 0,
                    bytes_out: 0,
                    frames_out: 0,
                    msgs_dropped: 0,
                    slow_closes: 0,
                    full: true,
                    rooms: vec![],
                    users: vec![("bad user".into(), 1)],
                    seqs: vec![],
                    capacity_ratio_permille: 0,
                    room_users: vec![],
                }),
                LinkError::InvalidId("user"),
            ),
            (
                LinkFrame::LoadReport(LoadReport {
                    connections: 0,
                    bytes_out: 0,
                    frames_out: 0,
                    msgs_dropped: 0,
                    slow_closes: 0,
                    full: true,
                    rooms: vec![],
                    users: vec![],
                    seqs: vec![
                        (Target::Room("r1".into()), 1),
                        (Target::Room("r 2".into()), 2),
                    ],
                    capacity_ratio_permille: 0,
                    room_users: vec![],
                }),
                LinkError::InvalidId("room"),
            ),
            (
                LinkFrame::QueryUser(QueryUser {
                    request: 1,
                    user: String::new(),
                }),
                LinkError::InvalidId("user"),
            ),
            (
                LinkFrame::UserConns(UserConns {
                    request: 1,
                    user: "u/1".into(),
                    conns: vec![],
                }),
                LinkError::InvalidId("user"),
            ),
            (
                LinkFrame::UserConns(UserConns {
                    request: 1,
                    user: "u1".into(),
                    conns: vec![ConnInfo {
                        format: WireFormat::WsJson,
                        peer: "p".into(),
                        rooms: vec!["r1".into(), "x".repeat(129)],
                    }],
                }),
                LinkError::InvalidId("room"),
            ),
            (
                LinkFrame::UserConns(UserConns {
                    request: 1,
                    user: "u1".into(),
                    conns: vec![ConnInfo {
                        format: WireFormat::WsJson,
                        peer: "p".repeat(256),
                        rooms: vec![],
                    }],
                }),
                LinkError::Wire(WireError::TooLong("peer")),
            ),
        ];
        for (frame, want) in bad {
            assert_eq!(encode(&frame, &mut out), Err(want), "{frame:?}");
        }
        assert_eq!(&out[..], b"keep");
    }

    #[test]
    fn single_byte_mutations_never_panic_and_stay_canonical() {
        // A cheap deterministic stand-in for the fuzz target: corrupt every byte of every sample
        // (length prefix included) with a few interesting values. Whatever still decodes must
        // re-encode to exactly the bytes it came from.
        for frame in samples() {
            let bytes = encoded(&frame);
            for at in 0..bytes.len() {
                for v in [0, 1, 2, 3, 4, 0x20, 0x7f, 0x80, 0xff, bytes[at] ^ 1] {
                    let mut input = bytes.clone();
                    input[at] = v;
                    let mut buf = input.clone();
                    if let Ok(Some(f)) = decode(&mut buf) {
                        let used = input.len() - buf.len();
                        assert_eq!(&encoded(&f)[..], &input[..used], "{frame:?} at {at} = {v}");
                    }
                }
            }
        }
    }

    #[test]
    fn errors_name_what_was_wrong() {
        assert_eq!(
            LinkError::UnknownType(0x7f).to_string(),
            "unknown link frame type 0x7f"
        );
        assert_eq!(
            LinkError::InvalidId("room").to_string(),
            "room is not a valid id"
        );
        assert_eq!(LinkError::BadFormat(3).to_string(), "unknown wire format 3");
        assert_eq!(
            LinkError::InvalidEpoch("epoch").to_string(),
            "epoch is not a valid epoch"
        );
        assert_eq!(
            LinkError::BadFlag("complete", 2).to_string(),
            "complete is 2, expected 0 or 1"
        );
        assert_eq!(
            LinkError::BadRecovery(9).to_string(),
            "unknown recovery result 9"
        );
        assert_eq!(
            LinkError::Wire(WireError::TooLong("rooms")).to_string(),
            "malformed frame: rooms is too long"
        );
        assert_eq!(
            LinkError::Wire(WireError::Trailing(2)).to_string(),
            "malformed frame: 2 bytes trailing after the body"
        );
    }
}
