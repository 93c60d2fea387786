//! The sample platform backend (`roomcast-example-backend`, examples/backend) as a child
//! process: what `roomcast-control --send-proxy-url` asks about viewers' sends and
//! `--receipt-url` reports receipts to, with its inspection and mute routes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use crate::http::{self, Request, Response};
use crate::process::{free_local_addrs, ChildProcess, BACKEND_BINARY};
use crate::WAIT;

/// The `roomcast-example-backend` binary, built once per test process (see
/// [`WorkspaceBinary::path`](crate::process::WorkspaceBinary::path);
/// `ROOMCAST_TEST_BACKEND_BIN` names a prebuilt one). Call it before
/// [`for_each_driver`](crate::for_each_driver), so that a cold nested build does not count
/// against a scenario's time limit.
pub fn backend_binary() -> &'static Path {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BACKEND_BINARY.path(&BIN)
}

/// A running `roomcast-example-backend` on a free loopback port, killed when dropped (its log
/// printed when that happens because the test panicked).
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    process: ChildProcess,
}

impl Backend {
    /// Starts the backend with `--listen 127.0.0.1:<free port>` plus `extra_args` (such as
    /// `["--banned-users", "troll"]`) and waits until `GET /healthz` answers 200.
    pub async fn start(extra_args: &[&str]) -> Backend {
        let addr = free_local_addrs(1)[0];
        let mut args = vec!["--listen".to_owned(), addr.to_string()];
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let mut process = ChildProcess::spawn(backend_binary(), "backend", "sample", &args);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = process.try_status() {
                panic!(
                    "roomcast-example-backend exited with {status} before it was healthy \
                     (args {args:?})\n{}",
                    process.log_tail()
                );
            }
            let last = match http::send(
                addr,
                &Request::new("GET", "/healthz"),
                Duration::from_secs(1),
            )
            .await
            {
                Ok(response) if response.status == 200 => break,
                Ok(response) => format!("{response:?}"),
                Err(why) => why,
            };
            if Instant::now() >= deadline {
                panic!(
                    "roomcast-example-backend was not healthy within {WAIT:?}; last: {last}\n{}",
                    process.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Backend { addr, process }
    }

    /// The send proxy URL to give `roomcast-control --send-proxy-url`.
    pub fn send_url(&self) -> String {
        format!("http://{}/roomcast/send", self.addr)
    }

    /// The receipt URL to give `roomcast-control --receipt-url`.
    pub fn receipt_url(&self) -> String {
        format!("http://{}/roomcast/receipts", self.addr)
    }

    /// Sends `request` to the backend; panics when no complete response comes within
    /// [`WAIT`].
    pub async fn request(&self, request: Request) -> Response {
        http::send(self.addr, &request, WAIT)
            .await
            .unwrap_or_else(|why| panic!("roomcast-example-backend: {why}"))
    }

    /// `POST /mute/{user}`, which must succeed.
    pub async fn mute(&self, user: &str) {
        let response = self
            .request(Request::new("POST", &format!("/mute/{user}")))
            .await;
        assert_eq!(response.ok()["muted"], true, "{response:?}");
    }

    /// `DELETE /mute/{user}`, which must succeed.
    pub async fn unmute(&self, user: &str) {
        let response = self
            .request(Request::new("DELETE", &format!("/mute/{user}")))
            .await;
        assert_eq!(response.ok()["muted"], false, "{response:?}");
    }

    /// `GET /receipts`: `{"total":N,"kept":K,"receipts":[...]}`.
    pub async fn receipts(&self) -> Value {
        self.request(Request::new("GET", "/receipts")).await.ok()
    }

    /// `GET /stats`: the backend's answer counts.
    pub async fn stats(&self) -> Value {
        self.request(Request::new("GET", "/stats")).await.ok()
    }

    /// Panics (with the end of its log) if the backend has exited.
    pub fn assert_running(&mut self) {
        self.process.assert_running();
    }
}
