//! A small HTTP/1.1 client for the control plane's API, on a plain tokio socket.
//!
//! Hand-written (on `httparse`) rather than a client library so that tests can send exactly
//! what they mean, including what a library refuses to send: bodies that are not JSON, wrong
//! content types, oversized bodies the server answers before reading them. One request per
//! connection (`Connection: close`); the body is written while the response is read, so an early
//! `413` is seen even when the server stops reading.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// One HTTP request.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path and query, as sent on the request line (already percent-encoded).
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// A request without headers or body.
    pub fn new(method: &str, target: &str) -> Request {
        Request {
            method: method.to_owned(),
            target: target.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets the body and its `Content-Type`.
    pub fn body(self, content_type: &str, body: impl Into<Vec<u8>>) -> Request {
        let mut request = self.header("Content-Type", content_type);
        request.body = body.into();
        request
    }

    /// Sets a JSON body (`Content-Type: application/json`).
    pub fn json(self, value: &Value) -> Request {
        self.body("application/json", value.to_string())
    }

    fn head(&self, host: SocketAddr) -> String {
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n",
            self.method, self.target
        );
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if !self.body.is_empty() || matches!(self.method.as_str(), "POST" | "PUT" | "PATCH") {
            head.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        head.push_str("\r\n");
        head
    }
}

/// One HTTP response.
#[derive(Clone)]
pub struct Response {
    /// What was asked, for failure messages (`POST /v1/broadcast`).
    pub request: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {} {}",
            self.request,
            self.status,
            String::from_utf8_lossy(&self.body)
        )
    }
}

impl Response {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics when it is not JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("the response body is not JSON ({e}): {self:?}"))
    }

    /// Asserts status 200 and a JSON body, and returns the body.
    #[track_caller]
    pub fn ok(&self) -> Value {
        assert_eq!(self.status, 200, "expected 200: {self:?}");
        self.json()
    }

    /// Asserts an API error: status `status` and a body `{"error":{"code":<code>,"message":..}}`
    /// with a non-empty message, which is returned.
    #[track_caller]
    pub fn error(&self, status: u16, code: &str) -> String {
        assert_eq!(
            self.status, status,
            "expected a {status} `{code}` error: {self:?}"
        );
        error_message(&self.json(), code).unwrap_or_else(|why| panic!("{why}: {self:?}"))
    }
}

/// Checks that `value` is `{"error":{"code":<code>,"message":<non-empty string>}}` and returns
/// the message.
pub fn error_message(value: &Value, code: &str) -> Result<String, String> {
    let error = value
        .get("error")
        .ok_or_else(|| "no `error` object".to_owned())?;
    let got = error.get("code").and_then(Value::as_str);
    if got != Some(code) {
        return Err(format!("error code {got:?}, expected {code:?}"));
    }
    match error.get("message").and_then(Value::as_str) {
        Some(message) if !message.is_empty() => Ok(message.to_owned()),
        _ => Err("no non-empty error message".to_owned()),
    }
}

/// Sends `request` to `addr` and reads the whole response, within `wait`.
pub async fn send(addr: SocketAddr, request: &Request, wait: Duration) -> Result<Response, String> {
    let what = format!("{} {}", request.method, request.target);
    tokio::time::timeout(wait, exchange(addr, request, &what))
        .await
        .unwrap_or_else(|_| Err(format!("{what}: no complete response within {wait:?}")))
}

async fn exchange(addr: SocketAddr, request: &Request, what: &str) -> Result<Response, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("{what}: connect to {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (mut reader, mut writer) = stream.into_split();
    let mut out = request.head(addr).into_bytes();
    out.extend_from_slice(&request.body);
    // Written beside the reading: a server may answer (413) without reading the whole body, and
    // then the write may block or fail, which is not the test's concern.
    let write = tokio::spawn(async move {
        let _ = writer.write_all(&out).await;
        // Keep the write half open (no FIN) until the response has been read.
        writer
    });
    let mut buf = Vec::with_capacity(4096);
    let response = loop {
        if let Some(response) = parse(&buf, what)? {
            break Ok(response);
        }
        let mut chunk = [0u8; 16 * 1024];
        match reader.read(&mut chunk).await {
            Ok(0) => break parse_at_eof(&buf, what),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => {
                break parse(&buf, what)?.ok_or_else(|| {
                    format!(
                        "{what}: read failed ({e}) after {} bytes: {:?}",
                        String::from_utf8_lossy(&buf).len(),
                        String::from_utf8_lossy(&buf)
                    )
                })
            }
        }
    };
    write.abort();
    response
}

/// A complete response in `buf`, `None` when more bytes are needed.
fn parse(buf: &[u8], what: &str) -> Result<Option<Response>, String> {
    let Some((status, headers, head_len)) = parse_head(buf, what)? else {
        return Ok(None);
    };
    let rest = &buf[head_len..];
    let response = |body: Vec<u8>| Response {
        request: what.to_owned(),
        status,
        headers: headers.clone(),
        body,
    };
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
    };
    if header("transfer-encoding").is_some_and(|te| te.eq_ignore_ascii_case("chunked")) {
        return Ok(dechunk(rest, what)?.map(response));
    }
    if let Some(len) = header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| format!("{what}: bad Content-Length {len:?}"))?;
        if rest.len() >= len {
            return Ok(Some(response(rest[..len].to_vec())));
        }
        return Ok(None);
    }
    // No length: the body runs to the end of the connection.
    Ok(None)
}

fn parse_at_eof(buf: &[u8], what: &str) -> Result<Response, String> {
    if let Some(response) = parse(buf, what)? {
        return Ok(response);
    }
    match parse_head(buf, what)? {
        Some((status, headers, head_len))
            if !headers.iter().any(|(n, _)| {
                n.eq_ignore_ascii_case("content-length")
                    || n.eq_ignore_ascii_case("transfer-encoding")
            }) =>
        {
            Ok(Response {
                request: what.to_owned(),
                status,
                headers,
                body: buf[head_len..].to_vec(),
            })
        }
        _ => Err(format!(
            "{what}: the connection ended before a complete response: {:?}",
            String::from_utf8_lossy(buf)
        )),
    }
}

type Head = (u16, Vec<(String, String)>, usize);

fn parse_head(buf: &[u8], what: &str) -> Result<Option<Head>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(buf) {
        Ok(httparse::Status::Complete(head_len)) => {
            let status = response.code.expect("a complete head has a status");
            let headers = response
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_owned(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            Ok(Some((status, headers, head_len)))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(format!(
            "{what}: not an HTTP response ({e}): {:?}",
            String::from_utf8_lossy(buf)
        )),
    }
}

/// The body of a complete chunked encoding, `None` when more bytes are needed.
fn dechunk(mut rest: &[u8], what: &str) -> Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("{what}: bad chunk size {size_text:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            // Trailers (none expected) end with an empty line.
            return Ok(rest.windows(2).any(|w| w == b"\r\n").then_some(body));
        }
        if rest.len() < size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// Retries `probe` every 100 ms until it returns `Ok`, and returns that; panics with the last
/// `Err` after `wait`.
pub async fn poll<T, F, Fut>(what: &str, wait: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + wait;
    loop {
        let last = match probe().await {
            Ok(value) => return value,
            Err(why) => why,
        };
        if Instant::now() >= deadline {
            panic!("{what}: not within {wait:?}; last: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
