//! The admin HTTP server: `GET /metrics` (Prometheus text format), `GET /healthz` (the process
//! serves) and `GET /readyz` (200 when the owner says it is ready, else 503 and why). `HEAD` is
//! answered like `GET` without the body; another method on those paths is `405`, any other path
//! `404`.
//!
//! A hyper HTTP/1.1 server on its own thread with a current-thread tokio runtime, so it shares
//! nothing with the threads that serve traffic. A scrape must not wait for anyone else's client:
//!
//! - every connection is its own task, so a slow or stalled client holds only itself;
//! - a request head must arrive within [`HEAD_TIMEOUT`] and fit in [`MAX_HEAD`] bytes (hyper
//!   answers a larger one `431` and closes); an idle kept-alive connection is closed after the
//!   same timeout;
//! - at most [`MAX_CONNECTIONS`] connections are served at once; further ones wait in the
//!   listen backlog until one ends;
//! - [`AdminServer::stop`] (or dropping it) stops accepting, lets requests in flight finish for
//!   up to [`STOP_GRACE`] and joins the thread.
//!
//! The pages come from the owner through [`Endpoints`]; the server never computes anything.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};

/// Longest request head (request line and headers) a client may send; hyper's read buffer is
/// capped at this, and a head that does not fit is answered `431`.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most header lines in a request.
pub const MAX_HEADERS: usize = 64;
/// A client must send a whole request head within this after connecting (or after its previous
/// response, on a kept-alive connection).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 128;
/// How long [`AdminServer::stop`] lets requests in flight finish.
pub const STOP_GRACE: Duration = Duration::from_secs(1);
/// Pause after a failed accept (out of descriptors, say) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

const TEXT: &str = "text/plain; charset=utf-8";

/// What the admin server serves, provided by its owner.
pub trait Endpoints: Send + Sync + 'static {
    /// The `/metrics` page in the Prometheus text format (see [`crate::metrics::render`]).
    fn metrics(&self) -> String;

    /// `Ok` when ready to serve traffic, else why not (`/readyz` answers 503 `not ready: {why}`).
    fn ready(&self) -> Result<(), String>;
}

/// A running admin server; stopped by [`AdminServer::stop`] or when dropped.
pub struct AdminServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl AdminServer {
    /// Binds `addr` (port 0 picks a free port) and serves `endpoints` on a thread named
    /// `thread_name`. Fails only when the address cannot be bound or the thread or its runtime
    /// cannot be started; nothing is left running then.
    pub fn start(
        addr: SocketAddr,
        thread_name: &str,
        endpoints: Arc<dyn Endpoints>,
    ) -> io::Result<AdminServer> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let listener = {
            let _context = runtime.enter();
            TcpListener::from_std(listener)?
        };
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(thread_name.to_owned())
            .spawn(move || runtime.block_on(serve(listener, endpoints, stopped)))?;
        Ok(AdminServer {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The bound address (the real port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets requests in flight finish (up to [`STOP_GRACE`]) and joins the
    /// server's thread.
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the admin server's thread panicked");
            }
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

impl std::fmt::Debug for AdminServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

async fn serve(
    listener: TcpListener,
    endpoints: Arc<dyn Endpoints>,
    mut stopped: oneshot::Receiver<()>,
) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .max_headers(MAX_HEADERS);
    loop {
        let accepted = tokio::select! {
            _ = &mut stopped => break,
            accepted = accept(&listener, &slots) => accepted,
        };
        let (stream, slot) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "admin accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let endpoints = Arc::clone(&endpoints);
        let service = service_fn(move |request| {
            let response = answer(&request, &*endpoints);
            async move { Ok::<_, Infallible>(response) }
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "admin connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(STOP_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("admin requests still in flight at stop; dropping them");
    }
}

/// Waits for a free connection slot, then for a connection.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> io::Result<(tokio::net::TcpStream, tokio::sync::OwnedSemaphorePermit)> {
    let slot = Arc::clone(slots)
        .acquire_owned()
        .await
        .map_err(io::Error::other)?;
    let (stream, _) = listener.accept().await?;
    Ok((stream, slot))
}

/// The response to one request (the routes, the methods and the bodies).
fn answer(request: &Request<Incoming>, endpoints: &dyn Endpoints) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return text(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: try /metrics, /healthz or /readyz\n".into(),
        );
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "method not allowed\n".into(),
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match path {
        "/metrics" => text(
            StatusCode::OK,
            crate::metrics::CONTENT_TYPE,
            endpoints.metrics(),
        ),
        "/healthz" => text(StatusCode::OK, TEXT, "ok\n".into()),
        _ => match endpoints.ready() {
            Ok(()) => text(StatusCode::OK, TEXT, "ready\n".into()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!("not ready: {why}\n"),
            ),
        },
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    struct Pages {
        ready: AtomicBool,
        metrics: String,
    }

    impl Endpoints for Pages {
        fn metrics(&self) -> String {
            self.metrics.clone()
        }

        fn ready(&self) -> Result<(), String> {
            if self.ready.load(Ordering::Acquire) {
                Ok(())
            } else {
                Err("link down".into())
            }
        }
    }

    fn start(metrics: String) -> (AdminServer, Arc<Pages>) {
        let pages = Arc::new(Pages {
            ready: AtomicBool::new(false),
            metrics,
        });
        let endpoints: Arc<dyn Endpoints> = pages.clone();
        let server = AdminServer::start("127.0.0.1:0".parse().unwrap(), "test-admin", endpoints)
            .expect("start the admin server");
        (server, pages)
    }

    /// Sends `request` on a new connection and reads the whole response (the server closes
    /// because the request says `Connection: close`).
    fn exchange(addr: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        String::from_utf8(response).unwrap()
    }

    fn get(addr: SocketAddr, method: &str, path: &str) -> String {
        exchange(
            addr,
            &format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
    }

    #[test]
    fn routes_methods_and_readiness() {
        let (server, pages) = start("m 1\n".into());
        let addr = server.local_addr();
        let metrics = get(addr, "GET", "/metrics?x=1");
        assert!(metrics.starts_with("HTTP/1.1 200 OK\r\n"), "{metrics}");
        assert!(
            metrics.contains("content-type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            "{metrics}"
        );
        assert!(metrics.ends_with("\r\n\r\nm 1\n"), "{metrics}");
        assert!(get(addr, "GET", "/healthz").ends_with("\r\n\r\nok\n"));
        let not_ready = get(addr, "GET", "/readyz");
        assert!(not_ready.starts_with("HTTP/1.1 503 "), "{not_ready}");
        assert!(not_ready.ends_with("not ready: link down\n"), "{not_ready}");
        pages.ready.store(true, Ordering::Release);
        assert!(get(addr, "GET", "/readyz").ends_with("\r\n\r\nready\n"));
        let head = get(addr, "HEAD", "/metrics");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head}");
        let post = get(addr, "POST", "/metrics");
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
        assert!(post.contains("allow: GET, HEAD\r\n"), "{post}");
        assert!(get(addr, "GET", "/nope").starts_with("HTTP/1.1 404 "));
        assert!(get(addr, "DELETE", "/nope").starts_with("HTTP/1.1 404 "));
        server.stop();
    }

    #[test]
    fn a_stalled_request_does_not_hold_up_a_scrape() {
        let (server, _) = start("m 1\n".into());
        let addr = server.local_addr();
        let mut stalled = TcpStream::connect(addr).unwrap();
        stalled
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        let started = Instant::now();
        let response = get(addr, "GET", "/metrics");
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(started.elapsed() < Duration::from_secs(1));
        drop(stalled);
    }

    #[test]
    fn an_oversized_head_is_refused_and_a_stalled_one_times_out() {
        let (server, _) = start("m 1\n".into());
        let addr = server.local_addr();
        let mut request = String::from("GET /metrics HTTP/1.1\r\nHost: x\r\n");
        while request.len() < 64 * 1024 {
            request.push_str(&format!(
                "X-Filler-{}: {}\r\n",
                request.len(),
                "y".repeat(200)
            ));
        }
        request.push_str("\r\n");
        let refused = exchange(addr, &request);
        assert!(
            refused.is_empty() || refused.starts_with("HTTP/1.1 431 "),
            "{refused}"
        );

        let mut stalled = TcpStream::connect(addr).unwrap();
        stalled.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
        stalled
            .set_read_timeout(Some(HEAD_TIMEOUT + Duration::from_secs(5)))
            .unwrap();
        let started = Instant::now();
        let mut rest = Vec::new();
        let _ = stalled.read_to_end(&mut rest);
        let waited = started.elapsed();
        assert!(
            waited >= HEAD_TIMEOUT - Duration::from_millis(500)
                && waited < HEAD_TIMEOUT + Duration::from_secs(3),
            "closed after {waited:?}"
        );
    }

    #[test]
    fn a_large_page_is_sent_whole() {
        let page: String = (0..40_000).map(|i| format!("m{{i=\"{i}\"}} 1\n")).collect();
        assert!(page.len() > 16 * MAX_HEAD);
        let (server, _) = start(page.clone());
        let response = get(server.local_addr(), "GET", "/metrics");
        assert!(response.ends_with(&page), "{} bytes", response.len());
    }

    #[test]
    fn stopping_closes_the_port_and_kept_alive_connections() {
        let (server, _) = start("m 1\n".into());
        let addr = server.local_addr();
        let mut kept = TcpStream::connect(addr).unwrap();
        kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut first = [0u8; 256];
        let n = kept.read(&mut first).unwrap();
        assert!(first[..n].starts_with(b"HTTP/1.1 200 OK\r\n"));
        let started = Instant::now();
        server.stop();
        assert!(started.elapsed() < STOP_GRACE + Duration::from_secs(1));
        kept.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut rest = Vec::new();
        let _ = kept.read_to_end(&mut rest);
        assert!(rest.is_empty());
        assert!(TcpStream::connect(addr).is_err(), "still listening");
    }

    #[test]
    fn a_taken_address_is_an_error() {
        let (server, _) = start(String::new());
        let endpoints: Arc<dyn Endpoints> = Arc::new(Pages {
            ready: AtomicBool::new(true),
            metrics: String::new(),
        });
        let err = AdminServer::start(server.local_addr(), "test-admin", endpoints).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }
}
