//! The NATS client protocol as far as `--server nats` needs it: the server's ops a subscriber or
//! a publisher reads (`INFO`, `MSG`, `PING`, `PONG`, `+OK`, `-ERR`), parsed out of a byte stream
//! that arrives in arbitrary pieces ([`Stream`]: over NATS's websocket several `MSG`s share one
//! frame and one `MSG` may be split across frames), and the client's lines the bench sends.
//!
//! This is the peer comparison's protocol, not roomcast's: roomcast's own wire format stays in
//! `roomcast-proto`.

/// The longest control line accepted (the server's `INFO` is the longest, a few hundred bytes).
const MAX_CONTROL_LINE: usize = 64 * 1024;
/// The largest `MSG` payload accepted.
const MAX_PAYLOAD: usize = 64 << 20;

/// One server op. Slices borrow the bytes it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op<'a> {
    /// `MSG <subject> <sid> [reply-to] <#bytes>\r\n<payload>\r\n`.
    Msg {
        subject: &'a [u8],
        sid: &'a [u8],
        payload: &'a [u8],
    },
    Ping,
    Pong,
    /// `+OK` (only with `"verbose":true`).
    Ok,
    /// `INFO {json}`: the JSON.
    Info(&'a [u8]),
    /// `-ERR '<text>'`: the text.
    Err(&'a [u8]),
}

/// Parses one op at the start of `buf`: `Ok(None)` while it is incomplete, else the op and the
/// bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(Op<'_>, usize)>, String> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > MAX_CONTROL_LINE {
            return Err(format!("control line longer than {MAX_CONTROL_LINE} bytes"));
        }
        return Ok(None);
    };
    let line = &buf[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let after = nl + 1;
    let (verb, rest) = match line.iter().position(|&b| b == b' ' || b == b'\t') {
        Some(i) => (&line[..i], trim(&line[i + 1..])),
        None => (line, &line[line.len()..]),
    };
    let op = if verb.eq_ignore_ascii_case(b"MSG") {
        let args: Vec<&[u8]> = rest
            .split(|&b| b == b' ' || b == b'\t')
            .filter(|a| !a.is_empty())
            .collect();
        if args.len() != 3 && args.len() != 4 {
            return Err(format!("bad MSG line {:?}", String::from_utf8_lossy(line)));
        }
        let size = std::str::from_utf8(args[args.len() - 1])
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|&n| n <= MAX_PAYLOAD)
            .ok_or_else(|| format!("bad MSG size in {:?}", String::from_utf8_lossy(line)))?;
        let end = after + size;
        if buf.len() < end + 2 {
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err("MSG payload not followed by CRLF".into());
        }
        return Ok(Some((
            Op::Msg {
                subject: args[0],
                sid: args[1],
                payload: &buf[after..end],
            },
            end + 2,
        )));
    } else if verb.eq_ignore_ascii_case(b"PING") {
        Op::Ping
    } else if verb.eq_ignore_ascii_case(b"PONG") {
        Op::Pong
    } else if verb.eq_ignore_ascii_case(b"+OK") {
        Op::Ok
    } else if verb.eq_ignore_ascii_case(b"INFO") {
        Op::Info(rest)
    } else if verb.eq_ignore_ascii_case(b"-ERR") {
        Op::Err(rest)
    } else {
        return Err(format!(
            "unexpected NATS op {:?}",
            String::from_utf8_lossy(&line[..line.len().min(64)])
        ));
    };
    Ok(Some((op, after)))
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// A connection's incoming protocol stream: pieces in (websocket frames, socket reads), whole
/// ops out. Only a partial op is ever kept.
#[derive(Debug, Default)]
pub struct Stream {
    partial: Vec<u8>,
}

impl Stream {
    /// Calls `on_op` for every op completed by `chunk`, in order, keeping what is left of an
    /// incomplete one. Stops early, returning `Ok(false)`, when `on_op` returns false.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        mut on_op: impl FnMut(Op<'_>) -> bool,
    ) -> Result<bool, String> {
        if self.partial.is_empty() {
            let (used, go_on) = parse_all(chunk, &mut on_op)?;
            if go_on && used < chunk.len() {
                self.partial.extend_from_slice(&chunk[used..]);
            }
            return Ok(go_on);
        }
        let mut buf = std::mem::take(&mut self.partial);
        buf.extend_from_slice(chunk);
        let (used, go_on) = parse_all(&buf, &mut on_op)?;
        if go_on && used < buf.len() {
            buf.drain(..used);
            self.partial = buf;
        }
        Ok(go_on)
    }

    /// Bytes of an incomplete op held.
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.partial.len()
    }
}

fn parse_all(buf: &[u8], on_op: &mut impl FnMut(Op<'_>) -> bool) -> Result<(usize, bool), String> {
    let mut pos = 0;
    while pos < buf.len() {
        match parse(&buf[pos..])? {
            None => break,
            Some((op, used)) => {
                pos += used;
                if !on_op(op) {
                    return Ok((pos, false));
                }
            }
        }
    }
    Ok((pos, true))
}

/// What a subscriber sends once connected: `CONNECT` (no echo of verbose `+OK`s, no headers),
/// `SUB <subject> <sid>`, and a `PING` whose `PONG` says the subscription is in place (the server
/// handles a connection's ops in order).
pub fn subscribe_lines(subject: &str, sid: u32) -> Vec<u8> {
    format!("{CONNECT}SUB {subject} {sid}\r\nPING\r\n").into_bytes()
}

/// The `CONNECT` line of the bench's subscribers and publisher.
pub const CONNECT: &str = "CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1,\
     \"headers\":false,\"no_responders\":false,\"lang\":\"roomcast-bench\",\"version\":\"0\"}\r\n";

/// Appends `PUB <subject> <len>\r\n<payload>\r\n`.
pub fn put_pub(out: &mut Vec<u8>, subject: &str, payload: &[u8]) {
    out.extend_from_slice(b"PUB ");
    out.extend_from_slice(subject.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// Reads the unsigned integer after `"key":` in a JSON payload (no allocation, no full parse).
pub fn scan_u64(data: &[u8], key: &[u8]) -> Option<u64> {
    let mut from = 0;
    while let Some(i) = data[from..]
        .windows(key.len() + 3)
        .position(|w| w[0] == b'"' && &w[1..=key.len()] == key && &w[key.len() + 1..] == b"\":")
    {
        let start = from + i + key.len() + 3;
        let digits = data[start..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits > 0 {
            return std::str::from_utf8(&data[start..start + digits])
                .ok()?
                .parse()
                .ok();
        }
        from = start;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every op of `chunks` fed one after another, as owned text.
    fn ops_of(chunks: &[&[u8]]) -> Vec<String> {
        let mut s = Stream::default();
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, |op| {
                out.push(match op {
                    Op::Msg {
                        subject,
                        sid,
                        payload,
                    } => format!(
                        "MSG {} {} {}",
                        String::from_utf8_lossy(subject),
                        String::from_utf8_lossy(sid),
                        String::from_utf8_lossy(payload)
                    ),
                    Op::Info(j) => format!("INFO {}", String::from_utf8_lossy(j)),
                    Op::Err(e) => format!("ERR {}", String::from_utf8_lossy(e)),
                    other => format!("{other:?}"),
                });
                true
            })
            .unwrap();
        }
        assert_eq!(s.pending(), 0, "nothing left over");
        out
    }

    #[test]
    fn several_msgs_in_one_frame() {
        let frame =
            b"MSG room-0 1 5\r\nhello\r\nMSG room-0 1 2\r\nhi\r\nMSG room-0 1 reply.x 0\r\n\r\n";
        assert_eq!(
            ops_of(&[frame]),
            ["MSG room-0 1 hello", "MSG room-0 1 hi", "MSG room-0 1 "]
        );
    }

    #[test]
    fn a_msg_split_across_frames_at_every_byte() {
        let wire: &[u8] =
            b"INFO {\"server_id\":\"x\"}\r\nMSG room-7 1 11\r\n{\"ts\":1,\r\n}\r\nPING\r\nMSG room-7 1 3\r\nabc\r\n";
        let whole = ops_of(&[wire]);
        assert_eq!(
            whole,
            [
                "INFO {\"server_id\":\"x\"}",
                "MSG room-7 1 {\"ts\":1,\r\n}",
                "Ping",
                "MSG room-7 1 abc"
            ]
        );
        for cut in 1..wire.len() {
            assert_eq!(ops_of(&[&wire[..cut], &wire[cut..]]), whole, "cut at {cut}");
        }
        // One byte per frame.
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(ops_of(&bytes), whole);
    }

    #[test]
    fn ping_pong_ok_and_err() {
        assert_eq!(
            ops_of(&[b"PING\r\nPONG\r\n+OK\r\n-ERR 'Slow Consumer'\r\nping\r\n"]),
            ["Ping", "Pong", "Ok", "ERR 'Slow Consumer'", "Ping"]
        );
        let mut pongs = Vec::new();
        let mut s = Stream::default();
        for piece in [&b"PI"[..], b"NG\r", b"\n"] {
            s.feed(piece, |op| {
                if op == Op::Ping {
                    pongs.extend_from_slice(b"PONG\r\n");
                }
                true
            })
            .unwrap();
        }
        assert_eq!(
            pongs, b"PONG\r\n",
            "one PING answered once, after its last piece"
        );
    }

    #[test]
    fn stops_when_told_and_rejects_garbage() {
        let mut s = Stream::default();
        let mut n = 0;
        let go_on = s
            .feed(b"PING\r\nPING\r\nPING\r\n", |_| {
                n += 1;
                n < 2
            })
            .unwrap();
        assert!(!go_on);
        assert_eq!(n, 2);
        assert!(Stream::default().feed(b"HELLO\r\n", |_| true).is_err());
        assert!(Stream::default()
            .feed(b"MSG a 1 3\r\nabcd\r\n", |_| true)
            .is_err());
        assert!(parse(b"MSG a 1 x\r\n").is_err());
        assert_eq!(parse(b"MSG a 1 3\r\nab").unwrap(), None);
    }

    #[test]
    fn client_lines() {
        let mut out = Vec::new();
        put_pub(&mut out, "room-3", b"{\"ts\":1}");
        assert_eq!(out, b"PUB room-3 8\r\n{\"ts\":1}\r\n");
        let sub = String::from_utf8(subscribe_lines("room-0", 1)).unwrap();
        assert!(sub.starts_with("CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1,"));
        assert!(sub.ends_with("}\r\nSUB room-0 1\r\nPING\r\n"));
        let json: serde_json::Value =
            serde_json::from_str(CONNECT.trim_start_matches("CONNECT ").trim_end()).unwrap();
        assert_eq!(json["headers"], false);
    }

    #[test]
    fn scans_numbers_out_of_the_payload() {
        let d = br#"{"ts":1700000000123456,"n":42,"p":3,"pad":"xx"}"#;
        assert_eq!(scan_u64(d, b"ts"), Some(1_700_000_000_123_456));
        assert_eq!(scan_u64(d, b"n"), Some(42));
        assert_eq!(scan_u64(d, b"p"), Some(3));
        assert_eq!(scan_u64(d, b"pad"), None);
        assert_eq!(scan_u64(br#"{"np":1,"n":7}"#, b"n"), Some(7));
    }
}
