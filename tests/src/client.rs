//! Well-behaved viewers: [`WsClient`] (tokio-tungstenite), [`TcpClient`] (the raw TCP framing)
//! and [`Client`], which speaks the session protocol over either.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use roomcast_proto::client::{
    decode_server_binary, decode_server_json, encode_op, tcp_frame_len, ClientOp, ReplyDetails,
    ServerMsg, WireFormat,
};
use roomcast_proto::link::RoomCount;
use roomcast_proto::message::{PushMessage, Since, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::edge::EdgeAddrs;
use crate::tokens::token;
use crate::WAIT;

/// The outcome of an op: `Ok(())` or `Err((code, message))`.
pub type OpResult = Result<(), (String, String)>;

/// One thing a client can read from the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// The reply to op `seq`, with its extra fields (`epoch`, `last_seq`, `recovered`, ...).
    Reply {
        seq: u64,
        result: OpResult,
        details: Box<ReplyDetails>,
    },
    /// A room's online count.
    Room {
        room: String,
        online: u32,
        users: u32,
    },
    /// Pushed messages for one channel; `raw` is the message exactly as it came off the wire
    /// (the JSON text of a WebSocket text frame, or the binary payload).
    Batch {
        target: Target,
        msgs: Vec<PushMessage>,
        raw: Bytes,
    },
    /// The edge is closing: a WebSocket close frame (1005 when it carries no code) or a raw TCP
    /// `0x83` close frame.
    Close { code: u16, reason: String },
    /// The connection ended cleanly without (another) close frame.
    Eof,
    /// The connection broke: reset, or ended in the middle of a frame.
    Reset(String),
}

impl Incoming {
    fn from_server_msg(msg: ServerMsg, raw: Bytes) -> Incoming {
        match msg {
            ServerMsg::Reply {
                seq,
                result,
                details,
            } => Incoming::Reply {
                seq,
                result,
                details: Box::new(details),
            },
            ServerMsg::Room {
                room,
                online,
                users,
            } => Incoming::Room {
                room,
                online,
                users,
            },
            ServerMsg::Batch { target, msgs } => Incoming::Batch { target, msgs, raw },
            ServerMsg::Close { code, reason } => Incoming::Close { code, reason },
        }
    }
}

/// Asserts that an op failed with error `code`.
#[track_caller]
pub fn assert_error(result: OpResult, code: &str) {
    match result {
        Err((got, _)) if got == code => {}
        other => panic!("expected a `{code}` error reply, got {other:?}"),
    }
}

/// The JSON text of a client op (PROTOCOL.md §2), built independently of the engine's encoder.
pub fn json_op(op: &ClientOp) -> String {
    use serde_json::json;
    let value = match op {
        ClientOp::Auth { seq, token, since } => {
            let mut op = json!({ "op": "auth", "seq": seq, "token": token });
            if let Some(since) = since {
                op["since"] = json!({ "epoch": since.epoch, "seq": since.seq });
            }
            op
        }
        ClientOp::Join { seq, room, since } => {
            let mut op = json!({ "op": "join", "seq": seq, "room": room });
            if let Some(since) = since {
                op["since"] = json!({ "epoch": since.epoch, "seq": since.seq });
            }
            op
        }
        ClientOp::Leave { seq, room } => json!({ "op": "leave", "seq": seq, "room": room }),
        ClientOp::Ping { seq } => json!({ "op": "ping", "seq": seq }),
        ClientOp::History {
            seq,
            room,
            since,
            limit,
        } => json!({ "op": "history", "seq": seq, "room": room, "since": since, "limit": limit }),
        // `data` is spliced as it is, so a test can send what is not JSON.
        ClientOp::Send {
            seq,
            room,
            kind,
            data,
        } => {
            return format!(
                r#"{{"op":"send","seq":{seq},"room":{},"kind":{},"data":{}}}"#,
                json!(room),
                json!(kind),
                String::from_utf8_lossy(data)
            )
        }
        ClientOp::Ack { seq, user, msg_seq } => {
            let mut op = json!({ "op": "ack", "seq": seq, "msg_seq": msg_seq });
            if let Some(user) = user {
                op["user"] = json!(user);
            }
            op
        }
    };
    value.to_string()
}

/// The binary payload of a client op (PROTOCOL.md §3), without any framing.
pub fn binary_op(op: &ClientOp) -> Bytes {
    const TCP_PREFIX: usize = 4;
    encode_op(WireFormat::Tcp, op, [0; 4]).slice(TCP_PREFIX..)
}

/// A WebSocket client on tokio-tungstenite: the oracle for the edge's WebSocket side.
pub struct WsClient {
    ws: WebSocketStream<TcpStream>,
}

impl WsClient {
    /// Opens a TCP connection to `addr` and upgrades it at `/ws`.
    pub async fn connect(addr: SocketAddr) -> Result<WsClient, WsError> {
        let stream = TcpStream::connect(addr).await?;
        WsClient::upgrade(stream).await
    }

    /// Upgrades an already connected socket (such as one with a tiny receive buffer) at `/ws`.
    pub async fn upgrade(stream: TcpStream) -> Result<WsClient, WsError> {
        let addr = stream.peer_addr()?;
        stream.set_nodelay(true)?;
        // Small buffers: some tests hold a thousand of these.
        let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
        let url = format!("ws://{addr}/ws");
        let (ws, _response) =
            tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await?;
        Ok(WsClient { ws })
    }

    /// Sends a text message.
    pub async fn send_text(&mut self, text: String) -> Result<(), WsError> {
        self.ws.send(Message::text(text)).await
    }

    /// Sends a binary message.
    pub async fn send_binary(&mut self, payload: Bytes) -> Result<(), WsError> {
        self.ws.send(Message::Binary(payload)).await
    }

    /// Sends a WebSocket ping frame.
    pub async fn send_ping(&mut self) -> Result<(), WsError> {
        self.ws.send(Message::Ping(Bytes::from_static(b"hb"))).await
    }

    /// Starts the closing handshake with `1000 bye`.
    pub async fn send_close(&mut self) -> Result<(), WsError> {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        };
        self.ws.close(Some(frame)).await
    }

    /// The next reply, batch or close; pings and pongs are skipped (tungstenite answers pings).
    /// No timeout of its own.
    pub async fn recv(&mut self) -> Incoming {
        loop {
            let message = match self.ws.next().await {
                None => return Incoming::Eof,
                Some(Ok(message)) => message,
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                    return Incoming::Eof
                }
                Some(Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))) => {
                    return Incoming::Eof
                }
                Some(Err(WsError::Io(e))) => return Incoming::Reset(e.to_string()),
                Some(Err(e)) => panic!("the edge broke the WebSocket protocol: {e}"),
            };
            match message {
                Message::Text(text) => {
                    let raw = Bytes::from(text);
                    let msg = decode_server_json(&raw).unwrap_or_else(|e| {
                        panic!(
                            "undecodable JSON from the edge ({e}): {}",
                            String::from_utf8_lossy(&raw)
                        )
                    });
                    return Incoming::from_server_msg(msg, raw);
                }
                Message::Binary(raw) => {
                    let msg = decode_server_binary(&raw).unwrap_or_else(|e| {
                        panic!("undecodable binary message from the edge ({e}): {raw:02x?}")
                    });
                    return Incoming::from_server_msg(msg, raw);
                }
                Message::Close(Some(frame)) => {
                    return Incoming::Close {
                        code: u16::from(frame.code),
                        reason: frame.reason.to_string(),
                    }
                }
                Message::Close(None) => {
                    return Incoming::Close {
                        code: 1005,
                        reason: String::new(),
                    };
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }
}

/// A raw TCP client: `u32` length-prefixed binary frames (PROTOCOL.md §1).
pub struct TcpClient {
    stream: TcpStream,
    buf: BytesMut,
}

impl TcpClient {
    /// Connects to the edge's raw TCP port.
    pub async fn connect(addr: SocketAddr) -> std::io::Result<TcpClient> {
        Ok(TcpClient::over(TcpStream::connect(addr).await?))
    }

    /// Uses an already connected socket (such as one with a tiny receive buffer).
    pub fn over(stream: TcpStream) -> TcpClient {
        stream.set_nodelay(true).expect("TCP_NODELAY");
        TcpClient {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
        }
    }

    /// Sends one op, encoded by the engine's client codec.
    pub async fn send_op(&mut self, op: &ClientOp) -> std::io::Result<()> {
        self.send_bytes(&encode_op(WireFormat::Tcp, op, [0; 4]))
            .await
    }

    /// Sends arbitrary bytes.
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// The next reply, batch or close frame. No timeout of its own.
    pub async fn recv(&mut self) -> Incoming {
        const PREFIX: usize = 4;
        loop {
            if let Some(len) = tcp_frame_len(&self.buf) {
                if self.buf.len() >= PREFIX + len {
                    let raw = self.buf.split_to(PREFIX + len).freeze().slice(PREFIX..);
                    let msg = decode_server_binary(&raw).unwrap_or_else(|e| {
                        panic!("undecodable TCP frame from the edge ({e}): {raw:02x?}")
                    });
                    return Incoming::from_server_msg(msg, raw);
                }
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) if self.buf.is_empty() => return Incoming::Eof,
                Ok(0) => {
                    return Incoming::Reset(format!(
                        "EOF inside a frame ({} bytes buffered)",
                        self.buf.len()
                    ))
                }
                Ok(_) => {}
                Err(e) => return Incoming::Reset(e.to_string()),
            }
        }
    }
}

enum Connection {
    // Boxed: tungstenite's state is far bigger than a TCP client's.
    Ws(Box<WsClient>),
    Tcp(TcpClient),
}

/// A viewer speaking the session protocol (PROTOCOL.md §4) in one of the three wire formats.
///
/// Batches that arrive while it waits for a reply are kept and returned by the next reads, so
/// nothing is lost between an op and the messages the test waits for.
///
/// Rooms' online counts (`room` pushes) come whenever a room's count changes and belong to no
/// stream, so the reads ([`next_within`](Self::next_within) and every helper built on it) take
/// them out and keep them, in order, for [`next_room_count`](Self::next_room_count) and
/// [`take_room_counts`](Self::take_room_counts): a test about something else need not expect them.
pub struct Client {
    /// The wire format: WebSocket JSON, WebSocket binary, or raw TCP.
    pub format: WireFormat,
    /// Names the client in failure messages.
    pub label: String,
    connection: Connection,
    inbox: VecDeque<Incoming>,
    /// Room counts read and not yet taken, oldest first.
    room_counts: VecDeque<RoomCount>,
    next_seq: u64,
    last_details: ReplyDetails,
}

impl Client {
    /// Connects to the edge in `format`, without authenticating.
    pub async fn connect(edge: &impl EdgeAddrs, format: WireFormat) -> Client {
        let connection = match format {
            WireFormat::WsJson | WireFormat::WsBinary => {
                let addr = edge.ws_addr();
                Connection::Ws(Box::new(
                    WsClient::connect(addr)
                        .await
                        .unwrap_or_else(|e| panic!("{format:?} connect to {addr}: {e}")),
                ))
            }
            WireFormat::Tcp => {
                let addr = edge.tcp_addr();
                Connection::Tcp(
                    TcpClient::connect(addr)
                        .await
                        .unwrap_or_else(|e| panic!("TCP connect to {addr}: {e}")),
                )
            }
        };
        Client::over(format, connection)
    }

    /// Wraps an already connected [`WsClient`]; `format` picks the encoding it speaks.
    pub fn over_ws(format: WireFormat, ws: WsClient) -> Client {
        assert_ne!(
            format,
            WireFormat::Tcp,
            "a WebSocket client speaks WsJson or WsBinary"
        );
        Client::over(format, Connection::Ws(Box::new(ws)))
    }

    /// Wraps an already connected [`TcpClient`].
    pub fn over_tcp(tcp: TcpClient) -> Client {
        Client::over(WireFormat::Tcp, Connection::Tcp(tcp))
    }

    /// The client's own address (`ip:port`), as the edge sees it as the peer.
    pub fn local_addr(&self) -> SocketAddr {
        let addr = match &self.connection {
            Connection::Ws(ws) => ws.ws.get_ref().local_addr(),
            Connection::Tcp(tcp) => tcp.stream.local_addr(),
        };
        addr.unwrap_or_else(|e| panic!("{}: local address: {e}", self.label))
    }

    fn over(format: WireFormat, connection: Connection) -> Client {
        Client {
            format,
            label: format!("{format:?} client"),
            connection,
            inbox: VecDeque::new(),
            room_counts: VecDeque::new(),
            next_seq: 1,
            last_details: ReplyDetails::default(),
        }
    }

    /// Connects and authenticates as `user` with a valid token.
    pub async fn connect_authed(edge: &impl EdgeAddrs, format: WireFormat, user: &str) -> Client {
        let mut client = Client::connect(edge, format).await;
        client.authenticate(user).await;
        client
    }

    /// Authenticates an open connection as `user` with a valid token; panics on failure.
    pub async fn authenticate(&mut self, user: &str) {
        self.label = format!("{:?} client of {user}", self.format);
        let result = self.auth(&token(user)).await;
        assert_eq!(result, Ok(()), "{}: auth failed", self.label);
    }

    /// A fresh op sequence number (1, 2, 3, ... per connection).
    pub fn next_op_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Sends `op` in the connection's own encoding.
    pub async fn send(&mut self, op: &ClientOp) {
        match self.format {
            WireFormat::WsJson => self.send_as_json(op).await,
            WireFormat::WsBinary => self.send_as_binary(op).await,
            WireFormat::Tcp => {
                let Connection::Tcp(tcp) = &mut self.connection else {
                    unreachable!()
                };
                if let Err(e) = tcp.send_op(op).await {
                    panic!("{}: send {op:?}: {e}", self.label);
                }
            }
        }
    }

    /// Sends `op` as JSON in a WebSocket text frame, whatever the connection's encoding.
    pub async fn send_as_json(&mut self, op: &ClientOp) {
        let text = json_op(op);
        if let Err(e) = self.ws().send_text(text).await {
            panic!("{}: send {op:?}: {e}", self.label);
        }
    }

    /// Sends `op` in a WebSocket binary frame, whatever the connection's encoding.
    pub async fn send_as_binary(&mut self, op: &ClientOp) {
        if let Err(e) = self.ws().send_binary(binary_op(op)).await {
            panic!("{}: send {op:?}: {e}", self.label);
        }
    }

    /// Sends `text` as one WebSocket text message, whatever it holds (an op with a field
    /// missing, malformed JSON).
    pub async fn send_json_text(&mut self, text: &str) {
        if let Err(e) = self.ws().send_text(text.to_owned()).await {
            panic!("{}: send a text message: {e}", self.label);
        }
    }

    /// Sends `payload` as one binary message, whatever it holds (a truncated op, an unknown op
    /// byte): a WebSocket binary frame, or a raw TCP frame with its `u32` length prefix.
    pub async fn send_binary_payload(&mut self, payload: &[u8]) {
        match &mut self.connection {
            Connection::Ws(ws) => {
                if let Err(e) = ws.send_binary(Bytes::copy_from_slice(payload)).await {
                    panic!("{}: send a binary message: {e}", self.label);
                }
            }
            Connection::Tcp(tcp) => {
                let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
                frame.extend_from_slice(payload);
                if let Err(e) = tcp.send_bytes(&frame).await {
                    panic!("{}: send a TCP frame: {e}", self.label);
                }
            }
        }
    }

    /// Writes arbitrary bytes on a raw TCP connection (bad length prefixes and the like).
    pub async fn send_raw_tcp(&mut self, bytes: &[u8]) {
        let Connection::Tcp(tcp) = &mut self.connection else {
            panic!("{}: not a raw TCP connection", self.label)
        };
        if let Err(e) = tcp.send_bytes(bytes).await {
            panic!("{}: raw write: {e}", self.label);
        }
    }

    /// Sends a WebSocket ping frame.
    pub async fn send_ws_ping(&mut self) {
        if let Err(e) = self.ws().send_ping().await {
            panic!("{}: send a ping frame: {e}", self.label);
        }
    }

    fn ws(&mut self) -> &mut WsClient {
        match &mut self.connection {
            Connection::Ws(ws) => ws,
            Connection::Tcp(_) => panic!("{}: not a WebSocket connection", self.label),
        }
    }

    /// Sends `op` and waits for its reply, keeping batches that arrive meanwhile.
    pub async fn call(&mut self, op: ClientOp) -> OpResult {
        self.send(&op).await;
        self.reply_to(op.seq()).await
    }

    /// Waits for the reply to op `seq`, keeping batches that arrive meanwhile; panics on any
    /// other reply, on a close, or after [`WAIT`].
    pub async fn reply_to(&mut self, seq: u64) -> OpResult {
        let deadline = Instant::now() + WAIT;
        let mut held = VecDeque::new();
        let result = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_within(left).await {
                Some(Incoming::Reply {
                    seq: got,
                    result,
                    details,
                }) if got == seq => {
                    self.last_details = *details;
                    break result;
                }
                Some(batch @ Incoming::Batch { .. }) => held.push_back(batch),
                Some(other) => panic!(
                    "{}: waiting for the reply to op {seq}, got {other:?}",
                    self.label
                ),
                None => panic!("{}: no reply to op {seq} within {WAIT:?}", self.label),
            }
        };
        held.append(&mut self.inbox);
        self.inbox = held;
        result
    }

    /// `auth` with `token`.
    pub async fn auth(&mut self, token: &str) -> OpResult {
        self.auth_since(token, None).await.0
    }

    /// `auth` with `token`, resuming the user channel from `since`: the result and the reply's
    /// details (`epoch`, `last_seq`, `recovered`).
    pub async fn auth_since(
        &mut self,
        token: &str,
        since: Option<Since>,
    ) -> (OpResult, ReplyDetails) {
        let seq = self.next_op_seq();
        let result = self
            .call(ClientOp::Auth {
                seq,
                token: token.to_owned(),
                since,
            })
            .await;
        (result, self.last_details.clone())
    }

    /// `join` of `room`.
    pub async fn join(&mut self, room: &str) -> OpResult {
        self.join_since(room, None).await.0
    }

    /// `join` of `room`, resuming from `since`: the result and the reply's details.
    pub async fn join_since(
        &mut self,
        room: &str,
        since: Option<Since>,
    ) -> (OpResult, ReplyDetails) {
        let seq = self.next_op_seq();
        let result = self
            .call(ClientOp::Join {
                seq,
                room: room.to_owned(),
                since,
            })
            .await;
        (result, self.last_details.clone())
    }

    /// `history` of `room` after `since`: the result and the reply's details (`msgs`, ...).
    pub async fn history(
        &mut self,
        room: &str,
        since: u64,
        limit: u32,
    ) -> (OpResult, ReplyDetails) {
        let seq = self.next_op_seq();
        let result = self
            .call(ClientOp::History {
                seq,
                room: room.to_owned(),
                since,
                limit,
            })
            .await;
        (result, self.last_details.clone())
    }

    /// The details of the last reply [`reply_to`](Self::reply_to) returned.
    pub fn last_details(&self) -> &ReplyDetails {
        &self.last_details
    }

    /// `leave` of `room`.
    pub async fn leave(&mut self, room: &str) -> OpResult {
        let seq = self.next_op_seq();
        self.call(ClientOp::Leave {
            seq,
            room: room.to_owned(),
        })
        .await
    }

    /// `send` of `data` as `kind` into `room` and waits for its reply. `data` goes on the wire
    /// as it is: spliced into the op's JSON text (so it may be what is not JSON, which makes
    /// the whole op malformed), or as the binary op's `data` bytes. The reply's extras
    /// (`msg_seq`, `not_broadcast`, `retry_after_ms`, `platform_code`) are then in
    /// [`last_details`](Self::last_details).
    pub async fn send_msg(&mut self, room: &str, kind: &str, data: &[u8]) -> OpResult {
        let op = self.send_op(room, kind, data);
        self.call(op).await
    }

    /// A `send` op with a fresh op sequence number, for a test that writes it itself (several
    /// in a row, before any reply).
    pub fn send_op(&mut self, room: &str, kind: &str, data: &[u8]) -> ClientOp {
        ClientOp::Send {
            seq: self.next_op_seq(),
            room: room.to_owned(),
            kind: kind.to_owned(),
            data: Bytes::copy_from_slice(data),
        }
    }

    /// `ack` of message `msg_seq` of a user channel, naming `user` (`None`: left out, the
    /// connection's own).
    pub async fn ack_msg(&mut self, user: Option<&str>, msg_seq: u64) -> OpResult {
        let seq = self.next_op_seq();
        self.call(ClientOp::Ack {
            seq,
            user: user.map(str::to_owned),
            msg_seq,
        })
        .await
    }

    /// `ping`.
    pub async fn ping(&mut self) -> OpResult {
        let seq = self.next_op_seq();
        self.call(ClientOp::Ping { seq }).await
    }

    /// The next thing from the edge; panics after `wait`.
    pub async fn next(&mut self, wait: Duration) -> Incoming {
        match self.next_within(wait).await {
            Some(incoming) => incoming,
            None => panic!("{}: nothing from the edge within {wait:?}", self.label),
        }
    }

    /// The next thing from the edge but a room count (kept for
    /// [`next_room_count`](Self::next_room_count)), or `None` when `wait` passes first.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Incoming> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_any_within(left).await {
                Some(Incoming::Room {
                    room,
                    online,
                    users,
                }) => self.room_counts.push_back(RoomCount {
                    room,
                    online,
                    users,
                }),
                other => return other,
            }
        }
    }

    /// The next room count (one read earlier first), keeping whatever else arrives meanwhile
    /// for the next reads; `None` when `wait` passes first.
    pub async fn next_room_count(&mut self, wait: Duration) -> Option<RoomCount> {
        if let Some(count) = self.room_counts.pop_front() {
            return Some(count);
        }
        let deadline = Instant::now() + wait;
        let mut held = VecDeque::new();
        let count = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_any_within(left).await {
                Some(Incoming::Room {
                    room,
                    online,
                    users,
                }) => {
                    break Some(RoomCount {
                        room,
                        online,
                        users,
                    })
                }
                Some(other) => held.push_back(other),
                None => break None,
            }
        };
        held.append(&mut self.inbox);
        self.inbox = held;
        count
    }

    /// The room counts read so far and not yet taken, oldest first.
    pub fn take_room_counts(&mut self) -> Vec<RoomCount> {
        self.room_counts.drain(..).collect()
    }

    /// The next thing from the edge, room counts included, or `None` when `wait` passes first.
    async fn next_any_within(&mut self, wait: Duration) -> Option<Incoming> {
        if let Some(kept) = self.inbox.pop_front() {
            return Some(kept);
        }
        let read = async {
            match &mut self.connection {
                Connection::Ws(ws) => ws.recv().await,
                Connection::Tcp(tcp) => tcp.recv().await,
            }
        };
        tokio::time::timeout(wait, read).await.ok()
    }

    /// Reads batches for `target` until they hold at least `count` messages; panics on anything
    /// else, or when `wait` passes first.
    pub async fn recv_batches(
        &mut self,
        target: &Target,
        count: usize,
        wait: Duration,
    ) -> Vec<Vec<PushMessage>> {
        let deadline = Instant::now() + wait;
        let mut batches: Vec<Vec<PushMessage>> = Vec::new();
        let mut got = 0;
        while got < count {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_within(left).await {
                Some(Incoming::Batch {
                    target: t, msgs, ..
                }) if t == *target => {
                    got += msgs.len();
                    batches.push(msgs);
                }
                None => panic!(
                    "{}: got {got} of {count} messages for {target:?} within {wait:?} (seqs {:?})",
                    self.label,
                    seqs(batches.iter().flatten())
                ),
                Some(other) => panic!(
                    "{}: waiting for {count} messages for {target:?} ({got} so far, seqs {:?}), \
                     got {other:?}",
                    self.label,
                    seqs(batches.iter().flatten())
                ),
            }
        }
        batches
    }

    /// Like [`recv_batches`](Self::recv_batches), flattened.
    pub async fn recv_messages(
        &mut self,
        target: &Target,
        count: usize,
        wait: Duration,
    ) -> Vec<PushMessage> {
        self.recv_batches(target, count, wait)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Asserts that nothing arrives for `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) {
        if let Some(incoming) = self.next_within(quiet).await {
            panic!(
                "{}: expected nothing for {quiet:?}, got {incoming:?}",
                self.label
            );
        }
    }

    /// Waits for the edge's close frame, skipping batches, and returns its code and reason;
    /// panics on a reply, on a bare EOF or reset, or after `wait`.
    pub async fn expect_close(&mut self, wait: Duration) -> (u16, String) {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_within(left).await {
                Some(Incoming::Close { code, reason }) => return (code, reason),
                Some(Incoming::Batch { .. }) => {}
                other => panic!("{}: waiting for a close frame, got {other:?}", self.label),
            }
        }
    }

    /// Asserts that the connection ends (EOF or reset) within `wait`, skipping anything still
    /// queued before the end.
    pub async fn expect_end(&mut self, wait: Duration) {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_within(left).await {
                Some(Incoming::Eof | Incoming::Reset(_)) => return,
                Some(_) => {}
                None => panic!("{}: the connection did not end within {wait:?}", self.label),
            }
        }
    }

    /// Closes the connection the polite way (WebSocket `1000 bye`, TCP FIN) and drops it.
    pub async fn close(mut self) {
        match &mut self.connection {
            Connection::Ws(ws) => {
                let _ = ws.send_close().await;
                // Let the edge answer the close, but do not insist.
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    while !matches!(ws.recv().await, Incoming::Eof | Incoming::Reset(_)) {}
                })
                .await;
            }
            Connection::Tcp(tcp) => {
                let _ = tcp.stream.shutdown().await;
            }
        }
    }
}

/// The sequence numbers of `msgs`, for failure messages.
pub fn seqs<'a>(msgs: impl IntoIterator<Item = &'a PushMessage>) -> Vec<u64> {
    msgs.into_iter().map(|m| m.seq).collect()
}
