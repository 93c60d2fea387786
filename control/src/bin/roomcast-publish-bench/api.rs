//! A keep-alive HTTP/1.1 connection to the control plane's API (hyper's client connection, no
//! pool: each load task owns one connection, like a backend's publisher thread would).

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Where the API is and how to authenticate.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub api_key: String,
}

impl Endpoint {
    /// Parses `http://host:port` (a trailing slash is fine).
    pub fn parse(url: &str, api_key: &str) -> Result<Endpoint, Error> {
        let rest = url
            .strip_prefix("http://")
            .ok_or("--url must start with http://")?
            .trim_end_matches('/');
        let addr = std::net::ToSocketAddrs::to_socket_addrs(rest)?
            .next()
            .ok_or("--url does not resolve")?;
        Ok(Endpoint {
            addr,
            api_key: api_key.to_owned(),
        })
    }

    pub async fn connect(&self) -> Result<Conn, Error> {
        let stream = TcpStream::connect(self.addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Conn {
            sender,
            host: self.addr.to_string(),
            auth: format!("Bearer {}", self.api_key),
        })
    }
}

/// One keep-alive connection.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    host: String,
    auth: String,
}

impl Conn {
    /// Sends one request and reads the whole response.
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes), Error> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, &self.host)
            .header(AUTHORIZATION, &self.auth);
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let request = request.body(Full::new(body.unwrap_or_default()))?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// A call that must answer 200 with JSON.
    pub async fn json(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<serde_json::Value, Error> {
        let (status, body) = self.call(method, path, body).await?;
        if status != StatusCode::OK {
            return Err(
                format!("{path}: HTTP {status}: {}", String::from_utf8_lossy(&body)).into(),
            );
        }
        Ok(serde_json::from_slice(&body)?)
    }
}
