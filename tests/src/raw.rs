//! A plain socket for what a well-behaved client never sends: broken or truncated handshakes,
//! hand-built WebSocket frames (unmasked, fragmented control frames, invalid UTF-8, reserved
//! bits) and garbage. It reads the edge's answers (HTTP status, server frames, EOF) as raw bytes.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use roomcast_proto::client::ClientOp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::client::json_op;
use crate::tokens::token;
use crate::WAIT;

/// WebSocket opcodes (RFC 6455 §5.2).
pub mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// The FIN bit of a frame's first byte.
pub const FIN: u8 = 0x80;
/// The RSV1 bit of a frame's first byte (permessage-deflate's, never negotiated here).
pub const RSV1: u8 = 0x40;

/// The mask hand-built client frames use.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// The sample key of RFC 6455 §1.3 and the accept value it must produce.
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A valid WebSocket upgrade request for `path`.
pub fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: roomcast.test\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// A client frame: `first_byte` holds FIN, the RSV bits and the opcode; the payload is masked
/// when `mask` is set (clients must mask).
pub fn frame(first_byte: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![first_byte];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(mask) => {
            out.extend_from_slice(&mask);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A final, masked client frame: what a well-behaved client sends.
pub fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(FIN | opcode, payload, Some(MASK))
}

/// Opens a TCP connection whose receive buffer is only `bytes` (set before connecting, so the
/// advertised window stays small): a reader that stalls fills up after a few kilobytes.
pub async fn connect_with_small_recv_buffer(addr: SocketAddr, bytes: u32) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("create a socket");
    socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
    socket
        .connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// An HTTP response head as the edge sent it.
#[derive(Debug)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The whole head, for header checks and failure messages.
    pub head: String,
}

/// A frame from the server, or the end of the connection.
#[derive(Debug, PartialEq, Eq)]
pub enum ServerFrame {
    Frame {
        fin: bool,
        opcode: u8,
        payload: Bytes,
    },
    Eof,
    Reset(String),
}

/// A plain TCP connection to one of the edge's ports.
pub struct RawConn {
    stream: TcpStream,
    buf: BytesMut,
}

impl RawConn {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream.set_nodelay(true).expect("TCP_NODELAY");
        RawConn {
            stream,
            buf: BytesMut::with_capacity(8 * 1024),
        }
    }

    /// Connects to `addr` and completes a valid WebSocket upgrade at `/ws`.
    pub async fn upgraded(addr: SocketAddr) -> RawConn {
        let mut conn = RawConn::connect(addr).await;
        conn.send(upgrade_request("/ws").as_bytes()).await;
        let response = conn.read_http_response(WAIT).await;
        assert_eq!(
            response.status, 101,
            "the upgrade was refused:\n{}",
            response.head
        );
        assert!(
            response.head.contains(WS_ACCEPT),
            "wrong or missing Sec-WebSocket-Accept (expected {WS_ACCEPT}):\n{}",
            response.head
        );
        conn
    }

    /// [`upgraded`](Self::upgraded), then authenticates as `user` with a JSON `auth` op
    /// (seq 1) and checks the reply.
    pub async fn upgraded_and_authed(addr: SocketAddr, user: &str) -> RawConn {
        let mut conn = RawConn::upgraded(addr).await;
        let auth = ClientOp::Auth {
            seq: 1,
            token: token(user),
            since: None,
        };
        conn.send(&masked_frame(opcode::TEXT, json_op(&auth).as_bytes()))
            .await;
        let reply = conn.read_json(WAIT).await;
        // An auth reply also says where the user channel's stream stands (PROTOCOL.md §5).
        let position = (reply["epoch"].is_string(), reply["last_seq"].is_u64());
        let mut bare = reply.clone();
        if let Some(fields) = bare.as_object_mut() {
            fields.remove("epoch");
            fields.remove("last_seq");
        }
        assert_eq!(
            (bare, position),
            (
                serde_json::json!({ "op": "reply", "seq": 1, "ok": true }),
                (true, true)
            ),
            "auth failed: {reply}"
        );
        conn
    }

    /// Writes `bytes`; panics if the write fails.
    pub async fn send(&mut self, bytes: &[u8]) {
        if let Err(e) = self.try_send(bytes).await {
            panic!("raw write failed: {e}");
        }
    }

    /// Writes `bytes`, reporting failure (the edge may already have closed).
    pub async fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Reads an HTTP response head; panics on EOF, reset or after `wait`.
    pub async fn read_http_response(&mut self, wait: Duration) -> HttpResponse {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end + 4]).into_owned();
                self.buf.advance(end + 4);
                let status = head
                    .strip_prefix("HTTP/1.1 ")
                    .and_then(|rest| rest.get(..3))
                    .and_then(|code| code.parse().ok())
                    .unwrap_or_else(|| panic!("not an HTTP/1.1 status line:\n{head}"));
                return HttpResponse { status, head };
            }
            match self.read_more(deadline).await {
                Ok(true) => {}
                Ok(false) => panic!(
                    "the connection ended before a full HTTP response head; got {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
                Err(why) => panic!("{why} while waiting for an HTTP response (wait {wait:?})"),
            }
        }
    }

    /// Reads one server frame, or the end of the connection; panics after `wait`. Server frames
    /// must not be masked.
    pub async fn read_frame(&mut self, wait: Duration) -> ServerFrame {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(frame) = self.parse_frame() {
                return frame;
            }
            match self.read_more(deadline).await {
                Ok(true) => {}
                Ok(false) if self.buf.is_empty() => return ServerFrame::Eof,
                Ok(false) => {
                    return ServerFrame::Reset(format!(
                        "EOF inside a frame ({} bytes buffered)",
                        self.buf.len()
                    ))
                }
                Err(why) if why.starts_with("timeout") => {
                    panic!("no server frame within {wait:?}")
                }
                Err(why) => return ServerFrame::Reset(why),
            }
        }
    }

    /// Reads one frame that must be a text frame holding JSON, and parses it.
    pub async fn read_json(&mut self, wait: Duration) -> serde_json::Value {
        match self.read_frame(wait).await {
            ServerFrame::Frame {
                opcode: opcode::TEXT,
                payload,
                ..
            } => serde_json::from_slice(&payload).unwrap_or_else(|e| {
                panic!(
                    "invalid JSON from the edge ({e}): {}",
                    String::from_utf8_lossy(&payload)
                )
            }),
            other => panic!("expected a JSON text frame, got {other:?}"),
        }
    }

    /// Skips data, ping and pong frames up to the server's close frame and returns its code
    /// (1005 when it has none) and reason; panics on EOF, reset or after `wait`.
    pub async fn read_close(&mut self, wait: Duration) -> (u16, String) {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_frame(left).await {
                ServerFrame::Frame {
                    opcode: opcode::CLOSE,
                    payload,
                    ..
                } => return close_code_and_reason(&payload),
                ServerFrame::Frame { .. } => {}
                end => panic!("expected a close frame, got {end:?}"),
            }
        }
    }

    /// Asserts that the edge ends the connection (EOF or reset) within `wait`, discarding
    /// whatever arrives first; returns how long that took.
    pub async fn expect_end(&mut self, wait: Duration) -> Duration {
        let start = Instant::now();
        let deadline = start + wait;
        loop {
            self.buf.clear();
            match self.read_more(deadline).await {
                Ok(true) => {}
                Ok(false) => return start.elapsed(),
                Err(why) if why.starts_with("timeout") => {
                    panic!("the edge kept the connection open for more than {wait:?}")
                }
                Err(_reset) => return start.elapsed(),
            }
        }
    }

    /// Reads more bytes into the buffer: `Ok(false)` on EOF, `Err("timeout")` at `deadline`,
    /// `Err(why)` when the read fails.
    async fn read_more(&mut self, deadline: Instant) -> Result<bool, String> {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.stream.read_buf(&mut self.buf)).await {
            Err(_) => Err("timeout".to_owned()),
            Ok(Ok(0)) => Ok(false),
            Ok(Ok(_)) => Ok(true),
            Ok(Err(e)) => Err(e.to_string()),
        }
    }

    fn parse_frame(&mut self) -> Option<ServerFrame> {
        let b = &self.buf[..];
        if b.len() < 2 {
            return None;
        }
        let fin = b[0] & FIN != 0;
        let opcode = b[0] & 0x0f;
        assert_eq!(b[1] & 0x80, 0, "the edge sent a masked frame");
        let (len, header) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() >= 10 => {
                let mut n = [0; 8];
                n.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(n) as usize, 10)
            }
            126 | 127 => return None,
            n => (usize::from(n), 2),
        };
        if b.len() < header + len {
            return None;
        }
        self.buf.advance(header);
        let payload = self.buf.split_to(len).freeze();
        Some(ServerFrame::Frame {
            fin,
            opcode,
            payload,
        })
    }
}

/// The code and reason of a close frame's payload (1005 when it is empty).
pub fn close_code_and_reason(payload: &[u8]) -> (u16, String) {
    match payload {
        [] => (1005, String::new()),
        [hi, lo, reason @ ..] => (
            u16::from_be_bytes([*hi, *lo]),
            String::from_utf8_lossy(reason).into_owned(),
        ),
        [_] => panic!("a close frame payload of one byte"),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
