//! One connection's inbound byte stream → client operations, for both transports.
//!
//! Pure: the worker feeds it whatever the driver read and gets back [`Action`]s. It keeps a partial
//! frame only while one is incomplete, so an idle connection holds no input buffer. What the ops
//! *mean* (auth, rooms) is the worker's business; this layer only frames and decodes.

use bytes::Bytes;

use roomcast_proto::client::{self, ClientOp, OpError, WireFormat};
use roomcast_proto::handshake;
use roomcast_proto::ws::{self, Message};

/// Which listener a connection came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    WebSocket,
    Tcp,
}

/// What the worker must do after feeding bytes in.
#[derive(Debug)]
pub enum Action {
    /// Queue these bytes as they are (handshake response, pong).
    Send(Bytes),
    /// The WebSocket upgrade completed.
    Upgraded,
    /// A decoded client op; `format` is the encoding it arrived in (replies use the connection's).
    Op { op: ClientOp, format: WireFormat },
    /// A client message that could not be decoded: reply with this error.
    BadOp { error: OpError, format: WireFormat },
    /// Close the connection: send a close frame with this code and reason (WebSocket close frame or
    /// TCP close frame), or, before the WebSocket upgrade, the HTTP response in `http`.
    Close { code: u16, http: Option<Bytes> },
}

#[derive(Debug)]
enum Stage {
    /// Waiting for the HTTP upgrade request.
    Handshake,
    WebSocket(ws::Decoder),
    Tcp,
    /// A close was decided; further input is ignored. `framed`: the close happened after the
    /// WebSocket upgrade (or on TCP), so a close frame is the way to say why.
    Done {
        framed: bool,
    },
}

#[derive(Debug)]
pub struct Session {
    stage: Stage,
    /// Bytes of an incomplete frame (or request head); empty and unallocated otherwise.
    pending: Vec<u8>,
    max_message: usize,
}

impl Session {
    pub fn new(transport: Transport, max_message: usize) -> Session {
        Session {
            stage: match transport {
                Transport::WebSocket => Stage::Handshake,
                Transport::Tcp => Stage::Tcp,
            },
            pending: Vec::new(),
            max_message,
        }
    }

    /// True once the WebSocket upgrade is done (always true for TCP).
    pub fn is_framing(&self) -> bool {
        matches!(
            self.stage,
            Stage::WebSocket(_) | Stage::Tcp | Stage::Done { framed: true }
        )
    }

    /// Bytes held for an incomplete frame.
    #[cfg(test)]
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Feeds bytes read from the socket; appends what to do to `actions`.
    pub fn on_bytes(&mut self, data: &mut [u8], actions: &mut Vec<Action>) {
        if matches!(self.stage, Stage::Done { .. }) {
            return;
        }
        if self.pending.is_empty() {
            let consumed = self.process(data, actions);
            if !matches!(self.stage, Stage::Done { .. }) && consumed < data.len() {
                self.pending.extend_from_slice(&data[consumed..]);
            }
        } else {
            let mut buf = std::mem::take(&mut self.pending);
            buf.extend_from_slice(data);
            let consumed = self.process(&mut buf, actions);
            if matches!(self.stage, Stage::Done { .. }) || consumed == buf.len() {
                return; // `buf` is dropped: nothing is held while idle
            }
            buf.drain(..consumed);
            self.pending = buf;
        }
    }

    /// Processes whole frames at the start of `buf`; returns the bytes consumed.
    fn process(&mut self, buf: &mut [u8], actions: &mut Vec<Action>) -> usize {
        let mut pos = 0;
        loop {
            let step = match &mut self.stage {
                Stage::Done { .. } => return buf.len(),
                Stage::Handshake => Self::handshake_step(&buf[pos..], actions),
                Stage::Tcp => Self::tcp_step(&buf[pos..], self.max_message, actions),
                Stage::WebSocket(decoder) => Self::ws_step(decoder, &mut buf[pos..], actions),
            };
            match step {
                Step::NeedMore => return pos,
                Step::Consumed(n) => pos += n,
                Step::Upgraded(n) => {
                    pos += n;
                    self.stage = Stage::WebSocket(ws::Decoder::new(self.max_message));
                }
                Step::Closed => {
                    let framed = !matches!(self.stage, Stage::Handshake);
                    self.stage = Stage::Done { framed };
                    return buf.len();
                }
            }
        }
    }

    fn handshake_step(buf: &[u8], actions: &mut Vec<Action>) -> Step {
        match handshake::parse_upgrade(buf) {
            Ok(None) => Step::NeedMore,
            Ok(Some((upgrade, used))) => {
                actions.push(Action::Send(Bytes::from(handshake::accept_response(
                    &upgrade,
                ))));
                actions.push(Action::Upgraded);
                Step::Upgraded(used)
            }
            Err(error) => {
                actions.push(Action::Close {
                    code: error.status(),
                    http: Some(Bytes::from(handshake::error_response(error.status()))),
                });
                Step::Closed
            }
        }
    }

    fn tcp_step(buf: &[u8], max_message: usize, actions: &mut Vec<Action>) -> Step {
        let Some(len) = client::tcp_frame_len(buf) else {
            return Step::NeedMore;
        };
        if len > max_message {
            actions.push(Action::Close {
                code: CLOSE_TOO_BIG,
                http: None,
            });
            return Step::Closed;
        }
        if buf.len() < 4 + len {
            return Step::NeedMore;
        }
        let payload = &buf[4..4 + len];
        actions.push(match client::decode_binary(payload) {
            Ok(op) => Action::Op {
                op,
                format: WireFormat::Tcp,
            },
            Err(error) => Action::BadOp {
                error,
                format: WireFormat::Tcp,
            },
        });
        Step::Consumed(4 + len)
    }

    fn ws_step(decoder: &mut ws::Decoder, buf: &mut [u8], actions: &mut Vec<Action>) -> Step {
        let (used, message) = match decoder.next(buf) {
            Ok(step) => step,
            Err(error) => {
                let code = error.close_code();
                actions.push(Action::Close { code, http: None });
                return Step::Closed;
            }
        };
        if used == 0 {
            return Step::NeedMore;
        }
        match message {
            None | Some(Message::Pong(_)) => {}
            Some(Message::Ping(payload)) => actions.push(Action::Send(ws::pong_frame(payload))),
            Some(Message::Text(text)) => actions.push(match client::decode_json(text) {
                Ok(op) => Action::Op {
                    op,
                    format: WireFormat::WsJson,
                },
                Err(error) => Action::BadOp {
                    error,
                    format: WireFormat::WsJson,
                },
            }),
            Some(Message::Binary(payload)) => actions.push(match client::decode_binary(payload) {
                Ok(op) => Action::Op {
                    op,
                    format: WireFormat::WsBinary,
                },
                Err(error) => Action::BadOp {
                    error,
                    format: WireFormat::WsBinary,
                },
            }),
            Some(Message::Close(_)) => {
                actions.push(Action::Close {
                    code: CLOSE_NORMAL,
                    http: None,
                });
                return Step::Closed;
            }
        }
        Step::Consumed(used)
    }
}

enum Step {
    NeedMore,
    Consumed(usize),
    Upgraded(usize),
    Closed,
}

pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_SHUTDOWN: u16 = 1001;
pub const CLOSE_TOO_BIG: u16 = 1009;
/// WebSocket's "try again later": `auth` could not be confirmed with the control plane in time.
pub const CLOSE_TRY_AGAIN: u16 = 1013;
pub const CLOSE_HEARTBEAT: u16 = 4000;
pub const CLOSE_UNAUTHENTICATED: u16 = 4001;
pub const CLOSE_SLOW: u16 = 4008;
pub const CLOSE_FULL: u16 = 4029;
/// Too many refused sends within the flood window.
pub const CLOSE_SEND_FLOOD: u16 = 4030;

/// The reason text sent with each close code (PROTOCOL.md §4).
pub fn close_reason(code: u16) -> &'static str {
    match code {
        CLOSE_NORMAL => "bye",
        CLOSE_SHUTDOWN => "shutdown",
        1002 => "protocol error",
        1007 => "invalid utf-8",
        CLOSE_TOO_BIG => "too big",
        CLOSE_TRY_AGAIN => "try again later",
        CLOSE_HEARTBEAT => "heartbeat timeout",
        CLOSE_UNAUTHENTICATED => "unauthenticated",
        CLOSE_SLOW => "slow",
        CLOSE_FULL => "full",
        CLOSE_SEND_FLOOD => "send flood",
        _ => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomcast_proto::ws::OpCode;

    fn feed(session: &mut Session, bytes: &[u8]) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut copy = bytes.to_vec();
        session.on_bytes(&mut copy, &mut actions);
        actions
    }

    fn masked(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        ws::put_client_frame(&mut out, opcode, payload, [1, 2, 3, 4]);
        out
    }

    const UPGRADE: &[u8] =
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn websocket_upgrade_then_ops_in_the_same_read() {
        let mut s = Session::new(Transport::WebSocket, 1024);
        let mut bytes = UPGRADE.to_vec();
        bytes.extend(masked(OpCode::Text, br#"{"op":"ping","seq":4}"#));
        let actions = feed(&mut s, &bytes);
        assert!(matches!(actions[0], Action::Send(_)));
        assert!(matches!(actions[1], Action::Upgraded));
        assert!(matches!(
            actions[2],
            Action::Op {
                op: ClientOp::Ping { seq: 4 },
                format: WireFormat::WsJson
            }
        ));
        assert_eq!(s.pending_bytes(), 0);
    }

    #[test]
    fn frames_split_across_reads_are_held_then_released() {
        let mut s = Session::new(Transport::Tcp, 1024);
        let frame = client::encode_op(WireFormat::Tcp, &ClientOp::Ping { seq: 9 }, [0; 4]);
        let (a, b) = frame.split_at(5);
        assert!(feed(&mut s, a).is_empty());
        assert_eq!(s.pending_bytes(), 5);
        let actions = feed(&mut s, b);
        assert!(matches!(
            actions[0],
            Action::Op {
                op: ClientOp::Ping { seq: 9 },
                ..
            }
        ));
        assert_eq!(s.pending_bytes(), 0);
        assert_eq!(s.pending.capacity(), 0, "no buffer kept once idle");
    }

    #[test]
    fn oversized_tcp_frame_closes_with_1009_before_the_payload_arrives() {
        let mut s = Session::new(Transport::Tcp, 128);
        let actions = feed(&mut s, &1000u32.to_be_bytes());
        assert!(matches!(actions[0], Action::Close { code: 1009, .. }));
        assert!(
            feed(&mut s, b"more").is_empty(),
            "input after close is ignored"
        );
    }

    #[test]
    fn bad_handshake_answers_http_and_closes() {
        let mut s = Session::new(Transport::WebSocket, 1024);
        let actions = feed(&mut s, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
        match &actions[0] {
            Action::Close {
                code,
                http: Some(body),
                ..
            } => {
                assert_eq!(*code, 404);
                assert!(body.starts_with(b"HTTP/1.1 404"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn unmasked_frame_is_a_protocol_error_answered_with_a_close_frame() {
        let mut s = Session::new(Transport::WebSocket, 1024);
        feed(&mut s, UPGRADE);
        let actions = feed(&mut s, &[0x81, 0x02, b'h', b'i']);
        assert!(matches!(
            actions[0],
            Action::Close {
                code: 1002,
                http: None,
                ..
            }
        ));
        assert!(
            s.is_framing(),
            "a close frame (not HTTP) tells the client why"
        );
    }

    #[test]
    fn a_failed_handshake_is_not_framing() {
        let mut s = Session::new(Transport::WebSocket, 1024);
        feed(&mut s, b"POST /ws HTTP/1.1\r\n\r\n");
        assert!(!s.is_framing());
    }

    #[test]
    fn ping_is_answered_and_undecodable_text_is_a_bad_op() {
        let mut s = Session::new(Transport::WebSocket, 1024);
        feed(&mut s, UPGRADE);
        let mut bytes = masked(OpCode::Ping, b"hb");
        bytes.extend(masked(OpCode::Text, b"not json"));
        let actions = feed(&mut s, &bytes);
        assert!(matches!(&actions[0], Action::Send(pong) if pong[0] == 0x8A));
        assert!(matches!(
            actions[1],
            Action::BadOp {
                format: WireFormat::WsJson,
                ..
            }
        ));
    }

    #[test]
    fn client_close_is_echoed() {
        let mut s = Session::new(Transport::WebSocket, 1024);
        feed(&mut s, UPGRADE);
        let actions = feed(&mut s, &masked(OpCode::Close, &1000u16.to_be_bytes()));
        assert!(matches!(actions[0], Action::Close { code: 1000, .. }));
    }
}
