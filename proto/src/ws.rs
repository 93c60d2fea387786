//! WebSocket framing (RFC 6455).
//!
//! Server side: [`Decoder`] turns masked client frames into [`Message`]s (unmasking in place and
//! reassembling fragmented messages), and [`server_frame`], [`close_frame`] and [`pong_frame`]
//! build unmasked server frames. Client side, for the load generator and tests:
//! [`put_client_frame`] and [`parse_server_frame`]. Everything is pure: bytes in, frames out.

use std::ops::Range;

use bytes::{BufMut, Bytes};

/// Frame opcodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl OpCode {
    /// The opcode with this 4-bit value, or `None` for a reserved value.
    pub const fn from_u8(value: u8) -> Option<OpCode> {
        match value {
            0x0 => Some(OpCode::Continuation),
            0x1 => Some(OpCode::Text),
            0x2 => Some(OpCode::Binary),
            0x8 => Some(OpCode::Close),
            0x9 => Some(OpCode::Ping),
            0xA => Some(OpCode::Pong),
            _ => None,
        }
    }

    /// Close, ping and pong: at most 125 bytes, never fragmented, may interleave a message.
    pub const fn is_control(self) -> bool {
        self as u8 & 0x8 != 0
    }
}

/// Largest payload of a control frame (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Length of the header of an unmasked server frame carrying `payload_len` bytes.
pub const fn server_header_len(payload_len: usize) -> usize {
    if payload_len < 126 {
        2
    } else if payload_len <= u16::MAX as usize {
        4
    } else {
        10
    }
}

/// Writes the header of a final, unmasked server frame (servers never mask, RFC 6455 §5.1).
pub fn put_server_header(out: &mut impl BufMut, opcode: OpCode, payload_len: usize) {
    out.put_u8(0x80 | opcode as u8);
    if payload_len < 126 {
        out.put_u8(payload_len as u8);
    } else if payload_len <= u16::MAX as usize {
        out.put_u8(126);
        out.put_u16(payload_len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(payload_len as u64);
    }
}

/// A violation of RFC 6455 or of the message size limit. Every one ends the connection with a
/// close frame carrying [`WsError::close_code`] and [`WsError::close_reason`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    #[error("client frame is not masked")]
    UnmaskedClientFrame,
    #[error("server frame is masked")]
    MaskedServerFrame,
    #[error("reserved bits set, but no extension was negotiated")]
    ReservedBitsSet,
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    #[error("fragmented control frame")]
    FragmentedControlFrame,
    #[error("control frame payload over 125 bytes")]
    ControlFrameTooLong,
    #[error("64-bit payload length with the most significant bit set")]
    InvalidLength,
    #[error("continuation frame without a started message")]
    UnexpectedContinuation,
    #[error("new data frame while a fragmented message is open")]
    InterleavedDataFrame,
    #[error("message over the {limit}-byte limit")]
    MessageTooBig { limit: usize },
    #[error("invalid UTF-8 in a text message or close reason")]
    InvalidUtf8,
    #[error("close payload of a single byte")]
    BadClosePayload,
    #[error("invalid close code {0}")]
    InvalidCloseCode(u16),
}

impl WsError {
    /// The close code to send for this error (PROTOCOL.md §4).
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::InvalidUtf8 => 1007,
            WsError::MessageTooBig { .. } => 1009,
            _ => 1002,
        }
    }

    /// The close reason that goes with [`WsError::close_code`] (PROTOCOL.md §4).
    pub fn close_reason(&self) -> &'static str {
        match self.close_code() {
            1007 => "invalid utf-8",
            1009 => "too big",
            _ => "protocol error",
        }
    }
}

/// A complete client message or control frame. Payloads borrow the caller's buffer (unmasked in
/// place) or, for a reassembled fragmented message, the decoder's own buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// A text message; already validated as UTF-8.
    Text(&'a [u8]),
    Binary(&'a [u8]),
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    /// `None` when the close frame had no payload; otherwise a valid code and a UTF-8 reason.
    Close(Option<(u16, &'a str)>),
}

/// Which fragmented message, if any, the decoder is assembling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Assembly {
    Idle,
    Text,
    Binary,
    /// The last call returned a message borrowed from `partial`; release it on the next call.
    Delivered,
}

/// Server-side decoder of client frames. Idle it holds no heap memory and is at most 40 bytes,
/// because one lives in every connection; a buffer exists only while a fragmented message is
/// being assembled (capped at the message limit).
///
/// After an error the decoder is reset; the connection is meant to be closed.
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    partial: Vec<u8>,
    assembly: Assembly,
}

impl Decoder {
    /// A decoder accepting messages of at most `max_message` bytes (after reassembly).
    pub fn new(max_message: usize) -> Decoder {
        Decoder {
            max_message,
            partial: Vec::new(),
            assembly: Assembly::Idle,
        }
    }

    /// Decodes the frame at the start of `buf`, unmasking its payload in place.
    ///
    /// Returns `(consumed, Some(message))` for a complete message or control frame,
    /// `(consumed, None)` for a non-final fragment (kept by the decoder), and `(0, None)` when
    /// `buf` does not hold a whole frame yet: keep the bytes and call again with more. A frame
    /// whose declared length is over the limit fails as soon as its header is readable.
    ///
    /// A reassembled message borrows the decoder's buffer, which is freed by the next call; so
    /// keep calling until `(0, None)`, even with an empty `buf`.
    pub fn next<'a>(
        &'a mut self,
        buf: &'a mut [u8],
    ) -> Result<(usize, Option<Message<'a>>), WsError> {
        if self.assembly == Assembly::Delivered {
            self.reset();
        }
        let head = match read_head(buf, Direction::ClientToServer) {
            Ok(Some(head)) => head,
            Ok(None) => return Ok((0, None)),
            Err(err) => return Err(self.fail(err)),
        };
        match (head.opcode, self.assembly) {
            (OpCode::Continuation, Assembly::Idle) => {
                return Err(self.fail(WsError::UnexpectedContinuation))
            }
            (OpCode::Text | OpCode::Binary, Assembly::Text | Assembly::Binary) => {
                return Err(self.fail(WsError::InterleavedDataFrame))
            }
            _ => {}
        }
        // Control frames are capped at 125 bytes by `read_head`; data frames by the limit.
        let assembled = match head.opcode {
            OpCode::Continuation => self.partial.len() as u64,
            _ => 0,
        };
        let too_big = WsError::MessageTooBig {
            limit: self.max_message,
        };
        let message_len = assembled.saturating_add(head.payload_len);
        if !head.opcode.is_control() && message_len > self.max_message as u64 {
            return Err(self.fail(too_big));
        }
        let Some(frame_len) = usize::try_from(head.payload_len)
            .ok()
            .and_then(|payload_len| head.header_len.checked_add(payload_len))
        else {
            return Err(self.fail(too_big));
        };
        if buf.len() < frame_len {
            return Ok((0, None));
        }

        let (header, rest) = buf.split_at_mut(head.header_len);
        let mut mask = [0u8; 4];
        mask.copy_from_slice(&header[head.header_len - 4..]);
        let payload = &mut rest[..frame_len - head.header_len];
        apply_mask(payload, mask);
        let payload: &'a [u8] = payload;

        let message = match head.opcode {
            OpCode::Ping => Message::Ping(payload),
            OpCode::Pong => Message::Pong(payload),
            OpCode::Close => match parse_close_payload(payload) {
                Ok(close) => Message::Close(close),
                Err(err) => return Err(self.fail(err)),
            },
            OpCode::Text | OpCode::Binary if head.fin => {
                if head.opcode == OpCode::Text && std::str::from_utf8(payload).is_err() {
                    return Err(self.fail(WsError::InvalidUtf8));
                }
                match head.opcode {
                    OpCode::Text => Message::Text(payload),
                    _ => Message::Binary(payload),
                }
            }
            OpCode::Text | OpCode::Binary => {
                self.assembly = match head.opcode {
                    OpCode::Text => Assembly::Text,
                    _ => Assembly::Binary,
                };
                self.append_fragment(payload);
                return Ok((frame_len, None));
            }
            OpCode::Continuation => {
                self.append_fragment(payload);
                if !head.fin {
                    return Ok((frame_len, None));
                }
                let is_text = self.assembly == Assembly::Text;
                if is_text && std::str::from_utf8(&self.partial).is_err() {
                    return Err(self.fail(WsError::InvalidUtf8));
                }
                self.assembly = Assembly::Delivered;
                let whole: &'a [u8] = &self.partial;
                if is_text {
                    Message::Text(whole)
                } else {
                    Message::Binary(whole)
                }
            }
        };
        Ok((frame_len, Some(message)))
    }

    /// Appends a fragment, growing the buffer geometrically but never past the message limit
    /// (the caller has checked that the fragment fits).
    fn append_fragment(&mut self, fragment: &[u8]) {
        let needed = self.partial.len() + fragment.len();
        if needed > self.partial.capacity() {
            let target = needed
                .max(self.partial.capacity().saturating_mul(2))
                .min(self.max_message);
            self.partial.reserve_exact(target - self.partial.len());
        }
        self.partial.extend_from_slice(fragment);
    }

    /// Drops any partial message and its memory.
    fn reset(&mut self) {
        self.partial = Vec::new();
        self.assembly = Assembly::Idle;
    }

    fn fail(&mut self, err: WsError) -> WsError {
        self.reset();
        err
    }
}

/// Which side sent the frame: client frames must be masked, server frames must not be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    ClientToServer,
    ServerToClient,
}

/// The frame header up to and including the payload length.
#[derive(Debug, Clone, Copy)]
struct FrameHead {
    fin: bool,
    opcode: OpCode,
    payload_len: u64,
    /// Bytes before the payload, masking key included.
    header_len: usize,
}

/// Reads and checks the header at the start of `buf` as far as the payload length;
/// `Ok(None)` when that much is not there yet. The masking key is not read, only counted.
fn read_head(buf: &[u8], direction: Direction) -> Result<Option<FrameHead>, WsError> {
    let [first, second, ..] = *buf else {
        return Ok(None);
    };
    if first & 0x70 != 0 {
        return Err(WsError::ReservedBitsSet);
    }
    let opcode_bits = first & 0x0F;
    let opcode = OpCode::from_u8(opcode_bits).ok_or(WsError::UnknownOpcode(opcode_bits))?;
    let fin = first & 0x80 != 0;
    let masked = second & 0x80 != 0;
    match direction {
        Direction::ClientToServer if !masked => return Err(WsError::UnmaskedClientFrame),
        Direction::ServerToClient if masked => return Err(WsError::MaskedServerFrame),
        _ => {}
    }
    let short_len = second & 0x7F;
    if opcode.is_control() {
        if !fin {
            return Err(WsError::FragmentedControlFrame);
        }
        if usize::from(short_len) > MAX_CONTROL_PAYLOAD {
            return Err(WsError::ControlFrameTooLong);
        }
    }
    let (payload_len, len_bytes) = match short_len {
        126 => {
            let Some(&[hi, lo]) = buf.get(2..4) else {
                return Ok(None);
            };
            (u64::from(u16::from_be_bytes([hi, lo])), 2)
        }
        127 => {
            let Some(bytes) = buf.get(2..10) else {
                return Ok(None);
            };
            let mut be = [0u8; 8];
            be.copy_from_slice(bytes);
            let len = u64::from_be_bytes(be);
            if len >> 63 != 0 {
                return Err(WsError::InvalidLength);
            }
            (len, 8)
        }
        len => (u64::from(len), 0),
    };
    let mask_len = if masked { 4 } else { 0 };
    Ok(Some(FrameHead {
        fin,
        opcode,
        payload_len,
        header_len: 2 + len_bytes + mask_len,
    }))
}

/// XORs `payload` with the repeating 4-byte `mask` (masking and unmasking are the same).
/// Works a u64 at a time: a whole word covers the mask twice, so every chunk starts at mask
/// offset 0, and so does the tail.
pub fn apply_mask(payload: &mut [u8], mask: [u8; 4]) {
    let [m0, m1, m2, m3] = mask;
    let mask_word = u64::from_ne_bytes([m0, m1, m2, m3, m0, m1, m2, m3]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let unmasked = u64::from_ne_bytes(word) ^ mask_word;
        chunk.copy_from_slice(&unmasked.to_ne_bytes());
    }
    for (byte, key) in chunks.into_remainder().iter_mut().zip(mask.iter().cycle()) {
        *byte ^= key;
    }
}

/// Whether a peer may send this close code (RFC 6455 §7.4; 1004-1006 and 1015 are reserved,
/// 1016-2999 unassigned, 3000-4999 for libraries and applications).
pub const fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Parses a close frame payload: empty, or a valid code followed by a UTF-8 reason.
pub fn parse_close_payload(payload: &[u8]) -> Result<Option<(u16, &str)>, WsError> {
    match payload {
        [] => Ok(None),
        [_] => Err(WsError::BadClosePayload),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !is_valid_close_code(code) {
                return Err(WsError::InvalidCloseCode(code));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| WsError::InvalidUtf8)?;
            Ok(Some((code, reason)))
        }
    }
}

/// A final, unmasked server frame in one exact-size allocation. Control opcodes need a payload
/// of at most 125 bytes; [`close_frame`] and [`pong_frame`] take care of that.
pub fn server_frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(server_header_len(payload.len()) + payload.len());
    put_server_header(&mut frame, opcode, payload.len());
    frame.extend_from_slice(payload);
    // A Vec whose length equals its capacity becomes `Bytes` without another allocation.
    Bytes::from(frame)
}

/// A close frame with `code` and `reason`; the reason is cut (at a character boundary) to the
/// 123 bytes a control frame leaves for it.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let reason = truncate_at_char_boundary(reason, MAX_CONTROL_PAYLOAD - 2);
    let payload_len = 2 + reason.len();
    let mut frame = Vec::with_capacity(server_header_len(payload_len) + payload_len);
    put_server_header(&mut frame, OpCode::Close, payload_len);
    frame.extend_from_slice(&code.to_be_bytes());
    frame.extend_from_slice(reason.as_bytes());
    Bytes::from(frame)
}

/// The pong answering a ping with `payload` (a decoded ping never exceeds 125 bytes; anything
/// longer is cut so the frame stays valid).
pub fn pong_frame(payload: &[u8]) -> Bytes {
    server_frame(
        OpCode::Pong,
        &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)],
    )
}

fn truncate_at_char_boundary(text: &str, max_len: usize) -> &str {
    if text.len() <= max_len {
        return text;
    }
    let mut end = max_len;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Writes a final, masked client frame (for the load generator and tests).
pub fn put_client_frame(out: &mut impl BufMut, opcode: OpCode, payload: &[u8], mask: [u8; 4]) {
    out.put_u8(0x80 | opcode as u8);
    let len = payload.len();
    if len < 126 {
        out.put_u8(0x80 | len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.put_u8(0x80 | 126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(0x80 | 127);
        out.put_u64(len as u64);
    }
    out.put_slice(&mask);
    // Mask through a stack buffer; its size is a multiple of 4 so the mask stays aligned.
    let mut scratch = [0u8; 256];
    for piece in payload.chunks(scratch.len()) {
        let masked = &mut scratch[..piece.len()];
        masked.copy_from_slice(piece);
        apply_mask(masked, mask);
        out.put_slice(masked);
    }
}

/// A server frame located in a buffer by [`parse_server_frame`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFrame {
    pub fin: bool,
    pub opcode: OpCode,
    /// Where the payload sits in the parsed buffer.
    pub payload: Range<usize>,
    /// Length of the whole frame, header included.
    pub len: usize,
}

/// Locates the (unmasked) server frame at the start of `buf`; `Ok(None)` until it is complete.
/// Stateless: the caller tracks fragmentation through `fin` and `opcode`.
pub fn parse_server_frame(buf: &[u8]) -> Result<Option<ServerFrame>, WsError> {
    let Some(head) = read_head(buf, Direction::ServerToClient)? else {
        return Ok(None);
    };
    let len = usize::try_from(head.payload_len)
        .ok()
        .and_then(|payload_len| head.header_len.checked_add(payload_len))
        .ok_or(WsError::InvalidLength)?;
    if buf.len() < len {
        return Ok(None);
    }
    Ok(Some(ServerFrame {
        fin: head.fin,
        opcode: head.opcode,
        payload: head.header_len..len,
        len,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    const LIMIT: usize = 64 * 1024;

    fn client_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_client_frame(&mut out, opcode, payload, MASK);
        out
    }

    /// A masked client frame with explicit FIN (for fragments) and any first-byte bits.
    fn raw_client_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.put_u8(first_byte);
        if payload.len() < 126 {
            out.put_u8(0x80 | payload.len() as u8);
        } else {
            out.put_u8(0x80 | 126);
            out.put_u16(payload.len() as u16);
        }
        out.put_slice(&MASK);
        let start = out.len();
        out.put_slice(payload);
        apply_mask(&mut out[start..], MASK);
        out
    }

    fn fragment(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        raw_client_frame(if fin { 0x80 } else { 0 } | opcode as u8, payload)
    }

    /// Decodes exactly one frame that fills `frame`, returning an owned copy of the result.
    fn decode_one(decoder: &mut Decoder, frame: &[u8]) -> Result<Option<Owned>, WsError> {
        let mut buf = frame.to_vec();
        let (consumed, message) = decoder.next(&mut buf)?;
        assert_eq!(consumed, frame.len(), "the whole frame is consumed");
        Ok(message.map(Owned::from))
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Owned {
        Text(Vec<u8>),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<(u16, String)>),
    }

    impl From<Message<'_>> for Owned {
        fn from(message: Message<'_>) -> Owned {
            match message {
                Message::Text(p) => Owned::Text(p.to_vec()),
                Message::Binary(p) => Owned::Binary(p.to_vec()),
                Message::Ping(p) => Owned::Ping(p.to_vec()),
                Message::Pong(p) => Owned::Pong(p.to_vec()),
                Message::Close(c) => Owned::Close(c.map(|(code, r)| (code, r.to_string()))),
            }
        }
    }

    fn expect_error(frame: &[u8], limit: usize) -> WsError {
        let mut buf = frame.to_vec();
        Decoder::new(limit).next(&mut buf).unwrap_err()
    }

    #[test]
    fn decoder_is_small_and_allocation_free_when_idle() {
        assert!(std::mem::size_of::<Decoder>() <= 40);
        let decoder = Decoder::new(LIMIT);
        assert_eq!(decoder.partial.capacity(), 0);
    }

    #[test]
    fn opcode_values_round_trip() {
        for value in 0..=0x0F_u8 {
            if let Some(opcode) = OpCode::from_u8(value) {
                assert_eq!(opcode as u8, value);
                assert_eq!(opcode.is_control(), value >= 8);
            }
        }
        assert_eq!(OpCode::from_u8(0x3), None);
        assert_eq!(OpCode::from_u8(0xB), None);
        assert_eq!(OpCode::from_u8(0x10), None);
    }

    #[test]
    fn decodes_rfc_example_masked_hello() {
        // RFC 6455 §5.7: a single-frame masked text message containing "Hello".
        let mut frame = vec![
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let mut decoder = Decoder::new(LIMIT);
        let (consumed, message) = decoder.next(&mut frame).unwrap();
        assert_eq!(consumed, 11);
        assert_eq!(message, Some(Message::Text(b"Hello")));
        // Unmasked in place.
        assert_eq!(&frame[6..], b"Hello");
    }

    #[test]
    fn decodes_text_and_binary_frames() {
        let mut decoder = Decoder::new(LIMIT);
        let text = client_frame(OpCode::Text, "héllo wörld".as_bytes());
        assert_eq!(
            decode_one(&mut decoder, &text).unwrap(),
            Some(Owned::Text("héllo wörld".as_bytes().to_vec()))
        );
        let binary = client_frame(OpCode::Binary, &[0, 0xff, 0xfe, 1]);
        assert_eq!(
            decode_one(&mut decoder, &binary).unwrap(),
            Some(Owned::Binary(vec![0, 0xff, 0xfe, 1]))
        );
    }

    #[test]
    fn decodes_empty_frames() {
        let mut decoder = Decoder::new(LIMIT);
        for (opcode, expected) in [
            (OpCode::Text, Owned::Text(vec![])),
            (OpCode::Binary, Owned::Binary(vec![])),
            (OpCode::Ping, Owned::Ping(vec![])),
            (OpCode::Pong, Owned::Pong(vec![])),
            (OpCode::Close, Owned::Close(None)),
        ] {
            let frame = client_frame(opcode, &[]);
            assert_eq!(frame.len(), 6);
            assert_eq!(decode_one(&mut decoder, &frame).unwrap(), Some(expected));
        }
    }

    #[test]
    fn round_trips_every_length_encoding() {
        for len in [0, 1, 7, 8, 9, 125, 126, 127, 65535, 65536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let frame = client_frame(OpCode::Binary, &payload);
            let expected_header = server_header_len(len) + 4;
            assert_eq!(frame.len(), expected_header + len, "len {len}");
            let mut decoder = Decoder::new(100_000);
            assert_eq!(
                decode_one(&mut decoder, &frame).unwrap(),
                Some(Owned::Binary(payload))
            );
        }
    }

    #[test]
    fn waits_for_a_whole_frame() {
        for len in [5, 126, 300, 65536] {
            let payload = vec![b'x'; len];
            let frame = client_frame(OpCode::Text, &payload);
            let mut decoder = Decoder::new(100_000);
            // Every strict prefix is incomplete; check them all for small frames.
            let step = if len > 1000 { 997 } else { 1 };
            for cut in (0..frame.len()).step_by(step) {
                let mut prefix = frame[..cut].to_vec();
                assert_eq!(decoder.next(&mut prefix).unwrap(), (0, None), "cut {cut}");
            }
            let mut whole = frame.clone();
            let (consumed, message) = decoder.next(&mut whole).unwrap();
            assert_eq!(consumed, frame.len());
            assert_eq!(message, Some(Message::Text(&payload)));
        }
    }

    #[test]
    fn decodes_back_to_back_frames_from_one_buffer() {
        let mut buf = client_frame(OpCode::Text, b"one");
        buf.extend(client_frame(OpCode::Ping, b"p"));
        buf.extend(client_frame(OpCode::Binary, b"three"));
        buf.extend(&client_frame(OpCode::Text, b"partial")[..4]);
        let mut decoder = Decoder::new(LIMIT);
        let mut seen = Vec::new();
        let mut start = 0;
        loop {
            let (consumed, message) = decoder.next(&mut buf[start..]).unwrap();
            if consumed == 0 {
                break;
            }
            seen.push(Owned::from(message.unwrap()));
            start += consumed;
        }
        assert_eq!(
            seen,
            vec![
                Owned::Text(b"one".to_vec()),
                Owned::Ping(b"p".to_vec()),
                Owned::Binary(b"three".to_vec()),
            ]
        );
        assert_eq!(buf.len() - start, 4, "the incomplete frame stays for later");
    }

    #[test]
    fn rejects_unmasked_client_frames() {
        let err = expect_error(&[0x81, 0x02, b'h', b'i'], LIMIT);
        assert_eq!(err, WsError::UnmaskedClientFrame);
        assert_eq!(err.close_code(), 1002);
        // Detected from the first two bytes.
        assert_eq!(expect_error(&[0x82, 0x7e], LIMIT), err);
    }

    #[test]
    fn rejects_reserved_bits() {
        for rsv in [0x40, 0x20, 0x10, 0x70] {
            let frame = raw_client_frame(0x80 | rsv | OpCode::Text as u8, b"x");
            let err = expect_error(&frame, LIMIT);
            assert_eq!(err, WsError::ReservedBitsSet);
            assert_eq!(err.close_code(), 1002);
        }
    }

    #[test]
    fn rejects_unknown_opcodes() {
        for opcode in [0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            let frame = raw_client_frame(0x80 | opcode, b"");
            let err = expect_error(&frame, LIMIT);
            assert_eq!(err, WsError::UnknownOpcode(opcode));
            assert_eq!(err.close_code(), 1002);
        }
    }

    #[test]
    fn rejects_fragmented_control_frames() {
        for opcode in [OpCode::Close, OpCode::Ping, OpCode::Pong] {
            let frame = fragment(opcode, false, b"x");
            assert_eq!(expect_error(&frame, LIMIT), WsError::FragmentedControlFrame);
        }
    }

    #[test]
    fn rejects_control_frames_over_125_bytes_from_the_header() {
        let mut decoder = Decoder::new(LIMIT);
        let ping_125 = client_frame(OpCode::Ping, &[7; 125]);
        assert_eq!(
            decode_one(&mut decoder, &ping_125).unwrap(),
            Some(Owned::Ping(vec![7; 125]))
        );
        for opcode in [OpCode::Close, OpCode::Ping, OpCode::Pong] {
            let frame = client_frame(opcode, &[7; 126]);
            let err = expect_error(&frame[..2], LIMIT);
            assert_eq!(err, WsError::ControlFrameTooLong);
            assert_eq!(err.close_code(), 1002);
        }
    }

    #[test]
    fn decodes_close_frames() {
        let mut decoder = Decoder::new(LIMIT);
        let mut payload = 1000_u16.to_be_bytes().to_vec();
        payload.extend_from_slice("bye ✓".as_bytes());
        let frame = client_frame(OpCode::Close, &payload);
        assert_eq!(
            decode_one(&mut decoder, &frame).unwrap(),
            Some(Owned::Close(Some((1000, "bye ✓".to_string()))))
        );
        let code_only = client_frame(OpCode::Close, &4000_u16.to_be_bytes());
        assert_eq!(
            decode_one(&mut decoder, &code_only).unwrap(),
            Some(Owned::Close(Some((4000, String::new()))))
        );
    }

    #[test]
    fn rejects_bad_close_payloads() {
        let err = expect_error(&client_frame(OpCode::Close, &[0x03]), LIMIT);
        assert_eq!(err, WsError::BadClosePayload);
        assert_eq!(err.close_code(), 1002);

        let mut bad_reason = 1000_u16.to_be_bytes().to_vec();
        bad_reason.extend_from_slice(&[0xce, 0xba, 0xff]);
        let err = expect_error(&client_frame(OpCode::Close, &bad_reason), LIMIT);
        assert_eq!(err, WsError::InvalidUtf8);
        assert_eq!(err.close_code(), 1007);
    }

    #[test]
    fn validates_close_codes() {
        for code in [
            0_u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            let frame = client_frame(OpCode::Close, &code.to_be_bytes());
            let err = expect_error(&frame, LIMIT);
            assert_eq!(err, WsError::InvalidCloseCode(code));
            assert_eq!(err.close_code(), 1002);
        }
        for code in [
            1000_u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
            4000, 4999,
        ] {
            assert!(is_valid_close_code(code), "{code}");
            let frame = client_frame(OpCode::Close, &code.to_be_bytes());
            let mut decoder = Decoder::new(LIMIT);
            assert_eq!(
                decode_one(&mut decoder, &frame).unwrap(),
                Some(Owned::Close(Some((code, String::new()))))
            );
        }
    }

    #[test]
    fn rejects_invalid_utf8_text() {
        for payload in [
            &[0xff][..],
            &[b'a', 0xc3][..],             // truncated sequence
            &[0xed, 0xa0, 0x80][..],       // surrogate
            &[0xc0, 0xaf][..],             // overlong
            &[0xf4, 0x90, 0x80, 0x80][..], // above U+10FFFF
        ] {
            let err = expect_error(&client_frame(OpCode::Text, payload), LIMIT);
            assert_eq!(err, WsError::InvalidUtf8);
            assert_eq!(err.close_code(), 1007);
        }
        // The same bytes are fine in a binary message.
        let frame = client_frame(OpCode::Binary, &[0xff]);
        assert!(Decoder::new(LIMIT).next(&mut frame.clone()).is_ok());
    }

    #[test]
    fn reassembles_fragments_around_control_frames() {
        let mut decoder = Decoder::new(LIMIT);
        // "ü" (0xc3 0xbc) is split across the fragment boundary.
        let frames = [
            fragment(OpCode::Text, false, b"Hello, w\xc3"),
            client_frame(OpCode::Ping, b"are you there"),
            fragment(OpCode::Continuation, false, b"\xbcrld"),
            fragment(OpCode::Continuation, false, b""),
            client_frame(OpCode::Pong, b""),
            fragment(OpCode::Continuation, true, b"!"),
        ];
        let mut results = Vec::new();
        for frame in &frames {
            results.push(decode_one(&mut decoder, frame).unwrap());
        }
        assert_eq!(
            results,
            vec![
                None,
                Some(Owned::Ping(b"are you there".to_vec())),
                None,
                None,
                Some(Owned::Pong(vec![])),
                Some(Owned::Text("Hello, würld!".as_bytes().to_vec())),
            ]
        );
        // The reassembly buffer is released on the next call, even one with no bytes.
        assert!(decoder.partial.capacity() > 0);
        assert_eq!(decoder.next(&mut []).unwrap(), (0, None));
        assert_eq!(decoder.partial.capacity(), 0);
        assert_eq!(decoder.assembly, Assembly::Idle);
    }

    #[test]
    fn reassembles_binary_fragments_and_starts_over() {
        let mut decoder = Decoder::new(LIMIT);
        for round in 0..3_u8 {
            let first = fragment(OpCode::Binary, false, &[round, 1]);
            let last = fragment(OpCode::Continuation, true, &[2, 0xff]);
            assert_eq!(decode_one(&mut decoder, &first).unwrap(), None);
            assert_eq!(
                decode_one(&mut decoder, &last).unwrap(),
                Some(Owned::Binary(vec![round, 1, 2, 0xff]))
            );
        }
    }

    #[test]
    fn rejects_continuation_without_a_message() {
        let err = expect_error(&fragment(OpCode::Continuation, true, b"x"), LIMIT);
        assert_eq!(err, WsError::UnexpectedContinuation);
        assert_eq!(err.close_code(), 1002);
        // Also right after a complete message.
        let mut decoder = Decoder::new(LIMIT);
        decode_one(&mut decoder, &client_frame(OpCode::Text, b"done")).unwrap();
        assert_eq!(
            decode_one(&mut decoder, &fragment(OpCode::Continuation, false, b"x")),
            Err(WsError::UnexpectedContinuation)
        );
    }

    #[test]
    fn rejects_a_new_data_frame_inside_a_fragmented_message() {
        for second in [OpCode::Text, OpCode::Binary] {
            let mut decoder = Decoder::new(LIMIT);
            decode_one(&mut decoder, &fragment(OpCode::Binary, false, b"ab")).unwrap();
            let err = decode_one(&mut decoder, &fragment(second, true, b"cd")).unwrap_err();
            assert_eq!(err, WsError::InterleavedDataFrame);
            assert_eq!(err.close_code(), 1002);
            // The error released the partial message.
            assert_eq!(decoder.partial.capacity(), 0);
        }
    }

    #[test]
    fn rejects_invalid_utf8_in_a_reassembled_message() {
        let mut decoder = Decoder::new(LIMIT);
        decode_one(&mut decoder, &fragment(OpCode::Text, false, b"ok \xc3")).unwrap();
        let err =
            decode_one(&mut decoder, &fragment(OpCode::Continuation, true, b"(")).unwrap_err();
        assert_eq!(err, WsError::InvalidUtf8);
        assert_eq!(decoder.partial.capacity(), 0);
        assert_eq!(decoder.assembly, Assembly::Idle);
    }

    #[test]
    fn accepts_a_message_of_exactly_the_limit() {
        let mut decoder = Decoder::new(300);
        let frame = client_frame(OpCode::Binary, &[1; 300]);
        assert_eq!(
            decode_one(&mut decoder, &frame).unwrap(),
            Some(Owned::Binary(vec![1; 300]))
        );
        decode_one(&mut decoder, &fragment(OpCode::Text, false, &[b'a'; 200])).unwrap();
        assert_eq!(
            decode_one(
                &mut decoder,
                &fragment(OpCode::Continuation, true, &[b'b'; 100])
            )
            .unwrap(),
            Some(Owned::Text([[b'a'; 200].as_slice(), &[b'b'; 100]].concat()))
        );
        assert_eq!(
            decoder.partial.capacity(),
            300,
            "never grown past the limit"
        );
    }

    #[test]
    fn rejects_an_oversized_frame_from_its_header_alone() {
        let frame = client_frame(OpCode::Binary, &[0; 301]);
        // Two bytes plus the 16-bit length are enough; mask and payload are not needed.
        let err = expect_error(&frame[..4], 300);
        assert_eq!(err, WsError::MessageTooBig { limit: 300 });
        assert_eq!(err.close_code(), 1009);
        assert_eq!(err.close_reason(), "too big");

        // A 64-bit length claiming an exabyte.
        let mut huge = vec![0x82, 0x80 | 127];
        huge.extend_from_slice(&(1_u64 << 60).to_be_bytes());
        assert_eq!(
            expect_error(&huge, LIMIT),
            WsError::MessageTooBig { limit: LIMIT }
        );
        // The largest legal length with the largest possible limit must not overflow.
        let mut max = vec![0x82, 0x80 | 127];
        max.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
        max.extend_from_slice(&MASK);
        let mut decoder = Decoder::new(usize::MAX);
        assert!(matches!(
            decoder.next(&mut max),
            Ok((0, None)) | Err(WsError::MessageTooBig { .. })
        ));
    }

    #[test]
    fn rejects_fragments_adding_up_past_the_limit() {
        let mut decoder = Decoder::new(100);
        decode_one(&mut decoder, &fragment(OpCode::Binary, false, &[0; 60])).unwrap();
        decode_one(
            &mut decoder,
            &fragment(OpCode::Continuation, false, &[0; 40]),
        )
        .unwrap();
        let err =
            decode_one(&mut decoder, &fragment(OpCode::Continuation, true, &[0; 1])).unwrap_err();
        assert_eq!(err, WsError::MessageTooBig { limit: 100 });
        assert_eq!(decoder.partial.capacity(), 0);
    }

    #[test]
    fn control_frames_are_not_subject_to_the_message_limit() {
        let mut decoder = Decoder::new(4);
        let ping = client_frame(OpCode::Ping, &[1; 100]);
        assert_eq!(
            decode_one(&mut decoder, &ping).unwrap(),
            Some(Owned::Ping(vec![1; 100]))
        );
    }

    #[test]
    fn rejects_64_bit_length_with_top_bit_set() {
        let mut frame = vec![0x82, 0x80 | 127];
        frame.extend_from_slice(&(1_u64 << 63).to_be_bytes());
        let err = expect_error(&frame, usize::MAX);
        assert_eq!(err, WsError::InvalidLength);
        assert_eq!(err.close_code(), 1002);
    }

    #[test]
    fn close_codes_and_reasons_of_every_error() {
        let cases = [
            (WsError::UnmaskedClientFrame, 1002),
            (WsError::MaskedServerFrame, 1002),
            (WsError::ReservedBitsSet, 1002),
            (WsError::UnknownOpcode(3), 1002),
            (WsError::FragmentedControlFrame, 1002),
            (WsError::ControlFrameTooLong, 1002),
            (WsError::InvalidLength, 1002),
            (WsError::UnexpectedContinuation, 1002),
            (WsError::InterleavedDataFrame, 1002),
            (WsError::MessageTooBig { limit: 1 }, 1009),
            (WsError::InvalidUtf8, 1007),
            (WsError::BadClosePayload, 1002),
            (WsError::InvalidCloseCode(1005), 1002),
        ];
        for (err, code) in cases {
            assert_eq!(err.close_code(), code, "{err}");
            let reason = match code {
                1007 => "invalid utf-8",
                1009 => "too big",
                _ => "protocol error",
            };
            assert_eq!(err.close_reason(), reason);
        }
    }

    #[test]
    fn apply_mask_matches_the_bytewise_definition() {
        for mask in [[0, 0, 0, 0], MASK, [0xff, 0x01, 0x80, 0x7f]] {
            for len in 0..70 {
                let original: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
                let mut fast = original.clone();
                apply_mask(&mut fast, mask);
                let slow: Vec<u8> = original
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ mask[i % 4])
                    .collect();
                assert_eq!(fast, slow, "len {len}");
                apply_mask(&mut fast, mask);
                assert_eq!(fast, original, "masking twice restores the payload");
            }
        }
    }

    #[test]
    fn put_client_frame_masks_across_scratch_chunks() {
        // Longer than the 256-byte scratch buffer, with a length that is not a multiple of it.
        let payload: Vec<u8> = (0..1000).map(|i| (i % 256) as u8).collect();
        let frame = client_frame(OpCode::Binary, &payload);
        assert_eq!(&frame[..4], &[0x82, 0x80 | 126, 0x03, 0xe8]);
        assert_eq!(&frame[4..8], &MASK);
        let mut unmasked = frame[8..].to_vec();
        apply_mask(&mut unmasked, MASK);
        assert_eq!(unmasked, payload);
    }

    #[test]
    fn server_frame_headers_for_every_length_class() {
        for (len, header) in [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            assert_eq!(server_header_len(len), header);
            let payload = vec![9; len];
            let frame = server_frame(OpCode::Binary, &payload);
            assert_eq!(frame.len(), header + len);
            let parsed = parse_server_frame(&frame).unwrap().unwrap();
            assert_eq!(
                parsed,
                ServerFrame {
                    fin: true,
                    opcode: OpCode::Binary,
                    payload: header..header + len,
                    len: header + len,
                }
            );
            assert_eq!(&frame[parsed.payload], &payload[..]);
        }
        assert_eq!(
            &server_frame(OpCode::Text, b"hi")[..],
            &[0x81, 0x02, b'h', b'i']
        );
    }

    #[test]
    fn close_frame_layout_and_truncation() {
        assert_eq!(
            &close_frame(4008, "slow")[..],
            &[0x88, 6, 0x0f, 0xa8, b's', b'l', b'o', b'w']
        );
        // 62 two-byte characters are 124 bytes: cut to 122, not in the middle of a character.
        let long = "é".repeat(62);
        let frame = close_frame(1001, &long);
        let parsed = parse_server_frame(&frame).unwrap().unwrap();
        let close = parse_close_payload(&frame[parsed.payload.clone()]).unwrap();
        assert_eq!(close, Some((1001, "é".repeat(61).as_str())));
        assert!(parsed.payload.len() <= MAX_CONTROL_PAYLOAD);
        // Exactly 123 ASCII bytes fit.
        let fits = "a".repeat(123);
        let frame = close_frame(1000, &fits);
        assert_eq!(frame.len(), 2 + 125);
    }

    #[test]
    fn pong_frame_echoes_and_caps_the_payload() {
        assert_eq!(&pong_frame(b"abc")[..], &[0x8a, 3, b'a', b'b', b'c']);
        assert_eq!(pong_frame(&[0; 200]).len(), 2 + MAX_CONTROL_PAYLOAD);
    }

    #[test]
    fn server_frames_decode_as_client_frames_once_masked() {
        // The client helpers and the server decoder agree with each other.
        let mut decoder = Decoder::new(LIMIT);
        let frame = client_frame(OpCode::Close, &close_frame(1000, "bye")[2..]);
        assert_eq!(
            decode_one(&mut decoder, &frame).unwrap(),
            Some(Owned::Close(Some((1000, "bye".to_string()))))
        );
    }

    #[test]
    fn parse_server_frame_waits_and_validates() {
        let frame = server_frame(OpCode::Text, &[b'z'; 300]);
        for cut in 0..frame.len() {
            assert_eq!(parse_server_frame(&frame[..cut]), Ok(None), "cut {cut}");
        }
        // Trailing bytes of the next frame are left alone.
        let mut two = frame.to_vec();
        two.extend_from_slice(&pong_frame(b"")[..]);
        assert_eq!(parse_server_frame(&two).unwrap().unwrap().len, frame.len());

        let masked = client_frame(OpCode::Text, b"x");
        assert_eq!(parse_server_frame(&masked), Err(WsError::MaskedServerFrame));
        assert_eq!(
            parse_server_frame(&[0xC1, 0x00]),
            Err(WsError::ReservedBitsSet)
        );
        assert_eq!(
            parse_server_frame(&[0x83, 0x00]),
            Err(WsError::UnknownOpcode(3))
        );
        assert_eq!(
            parse_server_frame(&[0x09, 0x00]),
            Err(WsError::FragmentedControlFrame)
        );
        // A non-final data frame is reported, not rejected.
        let first = parse_server_frame(&[0x01, 0x01, b'a']).unwrap().unwrap();
        assert!(!first.fin);
        assert_eq!(first.opcode, OpCode::Text);
    }

    #[test]
    fn parse_close_payload_cases() {
        assert_eq!(parse_close_payload(&[]), Ok(None));
        assert_eq!(parse_close_payload(&[3]), Err(WsError::BadClosePayload));
        assert_eq!(
            parse_close_payload(&[0x03, 0xed]),
            Err(WsError::InvalidCloseCode(1005))
        );
        assert_eq!(
            parse_close_payload(&[0x0f, 0xa1, b'u']),
            Ok(Some((4001, "u")))
        );
    }

    /// A cheap deterministic generator, so the no-panic sweep needs no extra crate.
    struct XorShift(u64);

    impl XorShift {
        fn next_u64(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let len = (rng.next_u64() % 64) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            // Bias towards well-formed headers so deeper paths are reached.
            if let Some(first) = buf.first_mut() {
                if rng.next_u64() & 1 == 0 {
                    *first &= 0x8F;
                }
            }
            if let Some(second) = buf.get_mut(1) {
                *second |= 0x80;
            }
            let mut decoder = Decoder::new((rng.next_u64() % 40) as usize);
            let mut start = 0;
            while let Ok((consumed, message)) = decoder.next(&mut buf[start..]) {
                if let Some(Message::Text(text)) = message {
                    assert!(std::str::from_utf8(text).is_ok());
                }
                if consumed == 0 {
                    break;
                }
                start += consumed;
            }
            let _ = parse_server_frame(&buf);
        }
    }
}
