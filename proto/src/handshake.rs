//! The HTTP/1.1 WebSocket upgrade (RFC 6455 §4), both sides.
//!
//! Server side: [`parse_upgrade`] checks a request head and yields the `Sec-WebSocket-Accept`
//! value; [`accept_response`], [`error_response`] and [`full_response`] are the answers.
//! Client side, for the load generator and tests: [`client_request`] and
//! [`parse_client_response`].

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha1::{Digest, Sha1};

/// Largest request (or response) head accepted, final blank line included (PROTOCOL.md §1).
pub const MAX_REQUEST_HEAD: usize = 8192;

/// More headers than this is treated like an oversized head (431).
const MAX_HEADERS: usize = 64;

/// Appended to the client's key before hashing (RFC 6455 §1.3).
const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The route that accepts WebSocket upgrades.
const WS_PATH: &str = "/ws";

/// An accepted upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// The `Sec-WebSocket-Accept` value to answer with.
    pub accept: String,
}

/// Why an upgrade request (or, client side, the response to one) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("malformed HTTP head: {0}")]
    Malformed(httparse::Error),
    #[error("HTTP head over {MAX_REQUEST_HEAD} bytes or {MAX_HEADERS} headers")]
    HeadTooLarge,
    #[error("HTTP version other than 1.1")]
    UnsupportedHttpVersion,
    #[error("method other than GET")]
    MethodNotAllowed,
    #[error("path other than {WS_PATH}")]
    NotFound,
    #[error("no `Upgrade: websocket` header")]
    MissingUpgrade,
    #[error("no `Connection: upgrade` header")]
    MissingConnectionUpgrade,
    #[error("missing or unsupported Sec-WebSocket-Version (13 is required)")]
    UnsupportedVersion,
    #[error("missing, repeated or malformed Sec-WebSocket-Key")]
    BadKey,
    /// Client side: the server answered with another status than 101.
    #[error("server answered {0} instead of 101")]
    UnexpectedStatus(u16),
    /// Client side: `Sec-WebSocket-Accept` is missing or does not match the key.
    #[error("missing or wrong Sec-WebSocket-Accept")]
    BadAccept,
}

impl HandshakeError {
    /// The HTTP status to answer with (PROTOCOL.md §1). The client-side variants are never
    /// answered and map to 400.
    pub fn status(&self) -> u16 {
        match self {
            HandshakeError::NotFound => 404,
            HandshakeError::MethodNotAllowed => 405,
            HandshakeError::UnsupportedVersion => 426,
            HandshakeError::HeadTooLarge => 431,
            HandshakeError::Malformed(_)
            | HandshakeError::UnsupportedHttpVersion
            | HandshakeError::MissingUpgrade
            | HandshakeError::MissingConnectionUpgrade
            | HandshakeError::BadKey
            | HandshakeError::UnexpectedStatus(_)
            | HandshakeError::BadAccept => 400,
        }
    }
}

/// The `Sec-WebSocket-Accept` value for a `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
pub fn accept_key(key_b64: &str) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key_b64.as_bytes());
    sha1.update(WEBSOCKET_GUID.as_bytes());
    BASE64.encode(sha1.finalize())
}

/// A `Sec-WebSocket-Key` made from a 16-byte nonce (client side).
pub fn client_key(nonce: [u8; 16]) -> String {
    BASE64.encode(nonce)
}

/// Parses the upgrade request at the start of `buf`.
///
/// `Ok(None)` while the head is incomplete (and still within [`MAX_REQUEST_HEAD`]); on success
/// the upgrade and the length of the head. Bytes after the head are not looked at.
pub fn parse_upgrade(buf: &[u8]) -> Result<Option<(Upgrade, usize)>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let parsed = request.parse(head_window(buf));
    let Some(head_len) = head_length(parsed, buf.len())? else {
        return Ok(None);
    };
    if request.version != Some(1) {
        return Err(HandshakeError::UnsupportedHttpVersion);
    }
    let path = request.path.unwrap_or_default();
    let route = path.split_once('?').map_or(path, |(route, _query)| route);
    if route != WS_PATH {
        return Err(HandshakeError::NotFound);
    }
    if request.method != Some("GET") {
        return Err(HandshakeError::MethodNotAllowed);
    }
    let headers = &*request.headers;
    if !has_token(headers, "Upgrade", b"websocket") {
        return Err(HandshakeError::MissingUpgrade);
    }
    if !has_token(headers, "Connection", b"upgrade") {
        return Err(HandshakeError::MissingConnectionUpgrade);
    }
    match single_value(headers, "Sec-WebSocket-Version") {
        Some(version) if version == b"13" => {}
        _ => return Err(HandshakeError::UnsupportedVersion),
    }
    let key = single_value(headers, "Sec-WebSocket-Key").ok_or(HandshakeError::BadKey)?;
    // A base64 encoding of 16 bytes is exactly 24 characters; checking first bounds the work.
    let key_decodes_to_16_bytes =
        key.len() == 24 && BASE64.decode(key).is_ok_and(|nonce| nonce.len() == 16);
    let key = std::str::from_utf8(key).map_err(|_| HandshakeError::BadKey)?;
    if !key_decodes_to_16_bytes {
        return Err(HandshakeError::BadKey);
    }
    let upgrade = Upgrade {
        accept: accept_key(key),
    };
    Ok(Some((upgrade, head_len)))
}

/// The part of `buf` worth parsing: a head longer than [`MAX_REQUEST_HEAD`] is refused anyway.
fn head_window(buf: &[u8]) -> &[u8] {
    &buf[..buf.len().min(MAX_REQUEST_HEAD)]
}

/// Interprets httparse's verdict on [`head_window`] of a `buf_len`-byte buffer: `Ok(None)`
/// while the head may still complete, the head length once it has.
fn head_length(
    parsed: httparse::Result<usize>,
    buf_len: usize,
) -> Result<Option<usize>, HandshakeError> {
    match parsed {
        Ok(httparse::Status::Complete(head_len)) => Ok(Some(head_len)),
        // The window is full and the head has not ended: it would end past the limit.
        Ok(httparse::Status::Partial) if buf_len >= MAX_REQUEST_HEAD => {
            Err(HandshakeError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HandshakeError::HeadTooLarge),
        Err(err) => Err(HandshakeError::Malformed(err)),
    }
}

/// Values of every header called `name` (names are case-insensitive).
fn header_values<'h>(
    headers: &'h [httparse::Header<'_>],
    name: &'static str,
) -> impl Iterator<Item = &'h [u8]> {
    headers
        .iter()
        .filter(move |header| header.name.eq_ignore_ascii_case(name))
        .map(|header| header.value)
}

/// Whether any `name` header lists `token` in its comma-separated value (case-insensitive).
fn has_token(headers: &[httparse::Header<'_>], name: &'static str, token: &[u8]) -> bool {
    header_values(headers, name)
        .flat_map(|value| value.split(|&byte| byte == b','))
        .any(|item| item.trim_ascii().eq_ignore_ascii_case(token))
}

/// The trimmed value of the only `name` header; `None` when it is missing or repeated.
fn single_value<'h>(headers: &'h [httparse::Header<'_>], name: &'static str) -> Option<&'h [u8]> {
    let mut values = header_values(headers, name);
    let value = values.next()?;
    match values.next() {
        Some(_) => None,
        None => Some(value.trim_ascii()),
    }
}

/// The `101 Switching Protocols` answer to an accepted upgrade.
pub fn accept_response(up: &Upgrade) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\
         \r\n",
        up.accept
    )
    .into_bytes()
}

/// An error answer with a short plain-text body, after which the server closes the connection.
/// `426` carries `Sec-WebSocket-Version: 13` (RFC 6455 §4.4) and `405` carries `Allow: GET`.
pub fn error_response(status: u16) -> Vec<u8> {
    let (reason, body) = match status {
        400 => (
            "Bad Request",
            "bad request: not a valid WebSocket upgrade\n",
        ),
        404 => ("Not Found", "not found: WebSocket endpoint is /ws\n"),
        405 => ("Method Not Allowed", "method not allowed: use GET\n"),
        426 => (
            "Upgrade Required",
            "upgrade required: Sec-WebSocket-Version 13\n",
        ),
        431 => (
            "Request Header Fields Too Large",
            "request head too large\n",
        ),
        503 => ("Service Unavailable", "edge is full\n"),
        _ => ("Error", "error\n"),
    };
    let extra_header = match status {
        405 => "Allow: GET\r\n",
        426 => "Sec-WebSocket-Version: 13\r\n",
        _ => "",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\n\
         Connection: close\r\n\
         {extra_header}\
         \r\n\
         {body}",
        body.len()
    )
    .into_bytes()
}

/// The `503` answer when the edge is at its connection limit.
pub fn full_response() -> Vec<u8> {
    error_response(503)
}

/// An upgrade request for `path` on `host` (client side).
pub fn client_request(host: &str, path: &str, key_b64: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\n\
         Host: {host}\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Key: {key_b64}\r\n\
         Sec-WebSocket-Version: 13\r\n\
         \r\n"
    )
    .into_bytes()
}

/// Checks the server's answer to [`client_request`] with `key_b64` (client side): `Ok(None)`
/// while the head is incomplete, the head length once it is a valid `101` for this key.
pub fn parse_client_response(buf: &[u8], key_b64: &str) -> Result<Option<usize>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let parsed = response.parse(head_window(buf));
    let Some(head_len) = head_length(parsed, buf.len())? else {
        return Ok(None);
    };
    if response.version != Some(1) {
        return Err(HandshakeError::UnsupportedHttpVersion);
    }
    match response.code {
        Some(101) => {}
        other => return Err(HandshakeError::UnexpectedStatus(other.unwrap_or_default())),
    }
    let headers = &*response.headers;
    if !has_token(headers, "Upgrade", b"websocket") {
        return Err(HandshakeError::MissingUpgrade);
    }
    if !has_token(headers, "Connection", b"upgrade") {
        return Err(HandshakeError::MissingConnectionUpgrade);
    }
    match single_value(headers, "Sec-WebSocket-Accept") {
        Some(accept) if accept == accept_key(key_b64).as_bytes() => Ok(Some(head_len)),
        _ => Err(HandshakeError::BadAccept),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example key of RFC 6455 §1.3 and its accept value.
    const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const RFC_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    fn request_with(lines: &[&str]) -> Vec<u8> {
        let mut head = lines.join("\r\n");
        head.push_str("\r\n\r\n");
        head.into_bytes()
    }

    fn valid_lines() -> Vec<&'static str> {
        vec![
            "GET /ws HTTP/1.1",
            "Host: edge.example:8080",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
        ]
    }

    /// The valid request with line `index` replaced (or removed when `line` is empty).
    fn variant(index: usize, line: &'static str) -> Vec<u8> {
        let mut lines = valid_lines();
        if line.is_empty() {
            lines.remove(index);
        } else {
            lines[index] = line;
        }
        request_with(&lines)
    }

    fn refusal(request: &[u8]) -> HandshakeError {
        parse_upgrade(request).expect_err("request must be refused")
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(accept_key(RFC_KEY), RFC_ACCEPT);
        assert_eq!(client_key(*b"the sample nonce"), RFC_KEY);
    }

    #[test]
    fn parses_a_valid_upgrade() {
        let request = request_with(&valid_lines());
        let (upgrade, head_len) = parse_upgrade(&request).unwrap().unwrap();
        assert_eq!(upgrade.accept, RFC_ACCEPT);
        assert_eq!(head_len, request.len());
    }

    #[test]
    fn reports_head_length_without_the_bytes_after_it() {
        let mut buf = request_with(&valid_lines());
        let head = buf.len();
        // A client may pipeline its first frame right behind the head.
        buf.extend_from_slice(&[0x81, 0x85, 1, 2, 3, 4, 5]);
        assert_eq!(parse_upgrade(&buf).unwrap().unwrap().1, head);
    }

    #[test]
    fn waits_for_the_whole_head() {
        let request = request_with(&valid_lines());
        for cut in 0..request.len() {
            assert_eq!(parse_upgrade(&request[..cut]), Ok(None), "cut {cut}");
        }
    }

    #[test]
    fn ignores_the_query_string() {
        let request = variant(0, "GET /ws?room=r1&v=2 HTTP/1.1");
        assert!(parse_upgrade(&request).unwrap().is_some());
        let request = variant(0, "GET /ws? HTTP/1.1");
        assert!(parse_upgrade(&request).unwrap().is_some());
    }

    #[test]
    fn other_paths_get_404() {
        for line in [
            "GET / HTTP/1.1",
            "GET /wss HTTP/1.1",
            "GET /ws/ HTTP/1.1",
            "GET /WS HTTP/1.1",
            "GET /x/ws HTTP/1.1",
            "GET http://edge/ws HTTP/1.1",
        ] {
            let err = refusal(&variant(0, line));
            assert_eq!(err, HandshakeError::NotFound, "{line}");
            assert_eq!(err.status(), 404);
        }
    }

    #[test]
    fn other_methods_get_405() {
        for line in ["POST /ws HTTP/1.1", "HEAD /ws HTTP/1.1", "get /ws HTTP/1.1"] {
            let err = refusal(&variant(0, line));
            assert_eq!(err, HandshakeError::MethodNotAllowed, "{line}");
            assert_eq!(err.status(), 405);
        }
    }

    #[test]
    fn http_1_0_gets_400() {
        let err = refusal(&variant(0, "GET /ws HTTP/1.0"));
        assert_eq!(err, HandshakeError::UnsupportedHttpVersion);
        assert_eq!(err.status(), 400);
    }

    #[test]
    fn malformed_request_lines_get_400() {
        for request in [
            &b"GARBAGE\r\n\r\n"[..],
            b"GET /ws HTTP/2.0\r\n\r\n",
            b"GET /ws\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"GET /ws HTTP/1.1\r\nBad Header\r\n\r\n",
        ] {
            let err = refusal(request);
            assert!(matches!(err, HandshakeError::Malformed(_)), "{err:?}");
            assert_eq!(err.status(), 400);
        }
    }

    #[test]
    fn upgrade_and_connection_tokens_are_required() {
        assert_eq!(refusal(&variant(2, "")), HandshakeError::MissingUpgrade);
        assert_eq!(
            refusal(&variant(2, "Upgrade: h2c")),
            HandshakeError::MissingUpgrade
        );
        assert_eq!(
            refusal(&variant(3, "")),
            HandshakeError::MissingConnectionUpgrade
        );
        assert_eq!(
            refusal(&variant(3, "Connection: keep-alive")),
            HandshakeError::MissingConnectionUpgrade
        );
        assert_eq!(
            refusal(&variant(3, "Connection: upgrades")),
            HandshakeError::MissingConnectionUpgrade
        );
        assert_eq!(refusal(&variant(3, "")).status(), 400);
    }

    #[test]
    fn tokens_are_case_insensitive_and_listed() {
        let mut lines = valid_lines();
        lines[2] = "upgrade: WebSocket";
        lines[3] = "connection: keep-alive,  UPGRADE ";
        assert!(parse_upgrade(&request_with(&lines)).unwrap().is_some());
        // The token may also come in a second header of the same name.
        lines[3] = "Connection: keep-alive";
        lines.push("Connection: Upgrade");
        assert!(parse_upgrade(&request_with(&lines)).unwrap().is_some());
    }

    #[test]
    fn missing_or_other_version_gets_426() {
        for line in [
            "",
            "Sec-WebSocket-Version: 8",
            "Sec-WebSocket-Version: 13, 8",
            "Sec-WebSocket-Version: 130",
        ] {
            let err = refusal(&variant(5, line));
            assert_eq!(err, HandshakeError::UnsupportedVersion, "{line:?}");
            assert_eq!(err.status(), 426);
        }
        let mut lines = valid_lines();
        lines.push("Sec-WebSocket-Version: 13");
        assert_eq!(
            refusal(&request_with(&lines)),
            HandshakeError::UnsupportedVersion
        );
    }

    #[test]
    fn bad_keys_get_400() {
        for line in [
            "",
            "Sec-WebSocket-Key: ",
            "Sec-WebSocket-Key: not base64 at all!!!!!!",
            // 15 bytes.
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25j",
            // 17 bytes.
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZSE=",
            // Non-canonical padding bits.
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZR==",
        ] {
            let err = refusal(&variant(4, line));
            assert_eq!(err, HandshakeError::BadKey, "{line:?}");
            assert_eq!(err.status(), 400);
        }
        let mut lines = valid_lines();
        lines.push("Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==");
        assert_eq!(refusal(&request_with(&lines)), HandshakeError::BadKey);
        // Non-UTF-8 bytes in the value.
        let mut request = variant(4, "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==");
        let at = request.windows(4).position(|w| w == b"dGhl").unwrap();
        request[at] = 0xff;
        assert_eq!(refusal(&request), HandshakeError::BadKey);
    }

    #[test]
    fn heads_over_the_limit_get_431() {
        // Incomplete and already at the limit.
        let mut huge = b"GET /ws HTTP/1.1\r\nX-Padding: ".to_vec();
        huge.resize(MAX_REQUEST_HEAD, b'a');
        let err = refusal(&huge);
        assert_eq!(err, HandshakeError::HeadTooLarge);
        assert_eq!(err.status(), 431);
        huge.resize(MAX_REQUEST_HEAD * 2, b'a');
        assert_eq!(refusal(&huge), HandshakeError::HeadTooLarge);
        // One byte short of the limit is still worth waiting for.
        huge.truncate(MAX_REQUEST_HEAD - 1);
        assert_eq!(parse_upgrade(&huge), Ok(None));
    }

    #[test]
    fn a_head_of_exactly_the_limit_is_accepted() {
        let base = request_with(&valid_lines());
        // "X: " + padding + "\r\n" goes before the final blank line.
        let padding = MAX_REQUEST_HEAD - base.len() - "X: \r\n".len();
        let filler = format!("X: {}", "p".repeat(padding));
        let mut lines = valid_lines();
        lines.push(&filler);
        let request = request_with(&lines);
        assert_eq!(request.len(), MAX_REQUEST_HEAD);
        assert_eq!(
            parse_upgrade(&request).unwrap().unwrap().1,
            MAX_REQUEST_HEAD
        );
        // One more byte and it is refused.
        let filler = format!("X: {}", "p".repeat(padding + 1));
        let mut lines = valid_lines();
        lines.push(&filler);
        assert_eq!(refusal(&request_with(&lines)), HandshakeError::HeadTooLarge);
    }

    #[test]
    fn too_many_headers_get_431() {
        let extra: Vec<String> = (0..MAX_HEADERS).map(|i| format!("X-{i}: v")).collect();
        let mut lines = valid_lines();
        lines.extend(extra.iter().map(String::as_str));
        let err = refusal(&request_with(&lines));
        assert_eq!(err, HandshakeError::HeadTooLarge);
        assert_eq!(err.status(), 431);
    }

    #[test]
    fn status_of_every_error() {
        let cases = [
            (HandshakeError::Malformed(httparse::Error::Token), 400),
            (HandshakeError::HeadTooLarge, 431),
            (HandshakeError::UnsupportedHttpVersion, 400),
            (HandshakeError::MethodNotAllowed, 405),
            (HandshakeError::NotFound, 404),
            (HandshakeError::MissingUpgrade, 400),
            (HandshakeError::MissingConnectionUpgrade, 400),
            (HandshakeError::UnsupportedVersion, 426),
            (HandshakeError::BadKey, 400),
            (HandshakeError::UnexpectedStatus(503), 400),
            (HandshakeError::BadAccept, 400),
        ];
        for (err, status) in cases {
            assert_eq!(err.status(), status, "{err}");
        }
    }

    #[test]
    fn accept_response_is_a_valid_101() {
        let response = accept_response(&Upgrade {
            accept: RFC_ACCEPT.to_string(),
        });
        assert_eq!(
            std::str::from_utf8(&response).unwrap(),
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
        assert_eq!(
            parse_client_response(&response, RFC_KEY),
            Ok(Some(response.len()))
        );
    }

    /// Parses an error response: status, headers (lower-cased names) and body.
    fn parse_error(response: &[u8]) -> (u16, Vec<(String, String)>, String) {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut parsed = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(head_len) = parsed.parse(response).unwrap() else {
            panic!("incomplete response");
        };
        let headers = parsed
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8(h.value.to_vec()).unwrap(),
                )
            })
            .collect();
        let body = String::from_utf8(response[head_len..].to_vec()).unwrap();
        (parsed.code.unwrap(), headers, body)
    }

    fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn error_responses_are_complete_http() {
        for status in [400, 404, 405, 426, 431, 503, 500] {
            let (code, headers, body) = parse_error(&error_response(status));
            assert_eq!(code, status);
            assert_eq!(header(&headers, "connection"), Some("close"));
            assert_eq!(
                header(&headers, "content-length"),
                Some(body.len().to_string().as_str())
            );
            assert!(header(&headers, "content-type")
                .unwrap()
                .starts_with("text/plain"));
            assert!(!body.is_empty() && body.len() < 100);
            assert_eq!(
                header(&headers, "sec-websocket-version"),
                (status == 426).then_some("13"),
                "{status}"
            );
            assert_eq!(
                header(&headers, "allow"),
                (status == 405).then_some("GET"),
                "{status}"
            );
        }
    }

    #[test]
    fn full_response_is_503() {
        let (code, _, body) = parse_error(&full_response());
        assert_eq!(code, 503);
        assert_eq!(body, "edge is full\n");
    }

    #[test]
    fn client_request_round_trips_through_the_server_parser() {
        let key = client_key([7; 16]);
        let request = client_request("127.0.0.1:8080", "/ws?load=1", &key);
        let (upgrade, head_len) = parse_upgrade(&request).unwrap().unwrap();
        assert_eq!(head_len, request.len());
        assert_eq!(upgrade.accept, accept_key(&key));
        let response = accept_response(&upgrade);
        assert_eq!(
            parse_client_response(&response, &key),
            Ok(Some(response.len()))
        );
    }

    #[test]
    fn client_response_checks() {
        let response = accept_response(&Upgrade {
            accept: RFC_ACCEPT.to_string(),
        });
        for cut in 0..response.len() {
            assert_eq!(parse_client_response(&response[..cut], RFC_KEY), Ok(None));
        }
        // Frames right behind the head are not part of it.
        let mut with_frame = response.clone();
        with_frame.extend_from_slice(&[0x81, 0x00]);
        assert_eq!(
            parse_client_response(&with_frame, RFC_KEY),
            Ok(Some(response.len()))
        );
        assert_eq!(
            parse_client_response(&response, &client_key([1; 16])),
            Err(HandshakeError::BadAccept)
        );
        assert_eq!(
            parse_client_response(&full_response(), RFC_KEY),
            Err(HandshakeError::UnexpectedStatus(503))
        );
        let no_accept = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                          Connection: Upgrade\r\n\r\n";
        assert_eq!(
            parse_client_response(no_accept, RFC_KEY),
            Err(HandshakeError::BadAccept)
        );
        let no_upgrade = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
                           Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert_eq!(
            parse_client_response(no_upgrade, RFC_KEY),
            Err(HandshakeError::MissingUpgrade)
        );
        assert!(matches!(
            parse_client_response(b"NOT HTTP\r\n\r\n", RFC_KEY),
            Err(HandshakeError::Malformed(_))
        ));
        let mut endless = b"HTTP/1.1 101 Switching Protocols\r\nX: ".to_vec();
        endless.resize(MAX_REQUEST_HEAD, b'a');
        assert_eq!(
            parse_client_response(&endless, RFC_KEY),
            Err(HandshakeError::HeadTooLarge)
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let valid = request_with(&valid_lines());
        for round in 0..5_000 {
            let mut request = valid.clone();
            // Corrupt a few bytes of a valid request so parsing gets past the first line.
            for _ in 0..(round % 4 + 1) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let at = (state as usize) % request.len();
                request[at] = (state >> 32) as u8;
            }
            let _ = parse_upgrade(&request).map_err(|err| err.status());
            let _ = parse_client_response(&request, RFC_KEY);
        }
    }
}
