//! The edge's admin endpoint (`--admin-listen`): `GET /metrics` (Prometheus text format),
//! `GET /healthz` (the process serves) and `GET /readyz` (workers run and the control link is up).
//!
//! A minimal HTTP/1.1 server on its own thread with blocking std sockets, one request per
//! connection. It reads only the hub's snapshot ([`crate::metrics::Shared`]): never a worker.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::metrics::{self, Shared};

/// How often the accept loop looks at the shutdown flag.
const ACCEPT_POLL: Duration = Duration::from_millis(50);
/// A client must send its request within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request head read (request line plus headers).
const MAX_HEAD: usize = 8 * 1024;

/// Binds the admin listener; the caller starts [`serve`] on its own thread.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves until `shutdown` is set.
pub fn spawn(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("roomcast-admin".into())
        .spawn(move || serve(listener, &shared, &shutdown))
        .expect("spawn admin thread")
}

fn serve(listener: TcpListener, shared: &Shared, shutdown: &AtomicBool) {
    while !shutdown.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(error) = answer(stream, shared) {
                    tracing::debug!(%error, "admin request failed");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(ACCEPT_POLL);
            }
            Err(error) => {
                tracing::warn!(%error, "admin accept failed");
                std::thread::sleep(ACCEPT_POLL);
            }
        }
    }
}

fn answer(stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    // Read (and ignore) the headers up to the blank line.
    let mut head = line.len();
    loop {
        let mut header = String::new();
        let n = reader.read_line(&mut header)?;
        head += n;
        if n == 0 || header == "\r\n" || header == "\n" || head > MAX_HEAD {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("");
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics::render(shared),
        ),
        ("GET" | "HEAD", "/healthz") => ("200 OK", "text/plain; charset=utf-8", "ok\n".into()),
        ("GET" | "HEAD", "/readyz") => {
            if shared.ready() {
                ("200 OK", "text/plain; charset=utf-8", "ready\n".into())
            } else if !shared.workers_running.load(Ordering::Acquire) {
                (
                    "503 Service Unavailable",
                    "text/plain; charset=utf-8",
                    "not ready: workers not running\n".into(),
                )
            } else {
                (
                    "503 Service Unavailable",
                    "text/plain; charset=utf-8",
                    "not ready: control link down\n".into(),
                )
            }
        }
        (_, "/metrics" | "/healthz" | "/readyz") => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "method not allowed\n".into(),
        ),
        _ => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    };
    let mut stream = stream;
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if method != "HEAD" {
        response.push_str(&body);
    }
    stream.write_all(response.as_bytes())?;
    stream.flush()
}
