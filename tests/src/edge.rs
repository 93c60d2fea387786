//! The edge under test: the real `roomcast-edge` binary as a child process, linked either to a
//! [`LinkPeer`] the test plays ([`Edge`]) or to any other control address, such as a real
//! `roomcast-control` ([`LinkedEdge`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use roomcast_proto::link::Register;

use crate::link::LinkPeer;
use crate::process::{free_local_addrs, ChildProcess, EDGE_BINARY};
use crate::tokens::SECRET;
use crate::WAIT;

/// The `--edge-id` every [`Edge`] runs with.
pub const EDGE_ID: &str = "test-edge";

/// Workers every test edge runs with, so that connections really spread over several cores.
pub const WORKERS: u16 = 2;

/// Where viewers dial an edge: what [`Client`](crate::Client) needs to connect.
pub trait EdgeAddrs {
    /// The WebSocket listen address (path `/ws`).
    fn ws_addr(&self) -> SocketAddr;
    /// The raw TCP listen address.
    fn tcp_addr(&self) -> SocketAddr;
}

impl<T: EdgeAddrs + ?Sized> EdgeAddrs for &T {
    fn ws_addr(&self) -> SocketAddr {
        (**self).ws_addr()
    }
    fn tcp_addr(&self) -> SocketAddr {
        (**self).tcp_addr()
    }
}

/// The arguments of a test edge: `--edge-id <edge_id> --control <control> --ws-listen <ws>
/// --tcp-listen <tcp> --workers 2 --io <io> --jwt-secret test-secret` (and `--admin-listen
/// 127.0.0.1:0` unless `extra_args` sets it), then `extra_args`.
pub fn edge_args(
    io: &str,
    control: &str,
    edge_id: &str,
    ws_listen: &str,
    tcp_listen: &str,
    extra_args: &[&str],
) -> Vec<String> {
    let workers = WORKERS.to_string();
    #[rustfmt::skip]
    let mut args = vec![
        "--edge-id", edge_id,
        "--control", control,
        "--ws-listen", ws_listen,
        "--tcp-listen", tcp_listen,
        "--workers", &workers,
        "--io", io,
        "--jwt-secret", SECRET,
    ];
    // The admin endpoint on a free port, so parallel test edges never share the default 9101.
    if !extra_args.contains(&"--admin-listen") {
        args.extend_from_slice(&["--admin-listen", "127.0.0.1:0"]);
    }
    args.extend_from_slice(extra_args);
    args.into_iter().map(str::to_owned).collect()
}

/// A running `roomcast-edge`, linked to a [`LinkPeer`] that plays its control plane.
///
/// Started with `--control <peer> --ws-listen 127.0.0.1:0 --tcp-listen 127.0.0.1:0 --workers 2
/// --io <driver> --jwt-secret test-secret` plus the test's own arguments; the listening addresses
/// come from its `register` frame. The process is killed when this value is dropped; when that
/// happens because the test panicked, the end of the edge's log is printed.
pub struct Edge {
    /// The I/O driver this edge runs (`uring` or `epoll`).
    pub io: &'static str,
    /// The fake control plane at the other end of the edge's link.
    pub link: LinkPeer,
    /// The `register` frame the edge sent on its first link.
    pub register: Register,
    /// Where viewers connect over WebSocket.
    pub ws_addr: SocketAddr,
    /// Where viewers connect over raw TCP.
    pub tcp_addr: SocketAddr,
    process: ChildProcess,
}

impl Edge {
    /// Starts an edge on driver `io` with the standard test arguments plus `extra_args`
    /// (such as `["--tick-ms", "200"]`), and waits for its `register` frame.
    pub async fn start(io: &'static str, extra_args: &[&str]) -> Edge {
        let mut link = LinkPeer::bind().await;
        let control = link.addr().to_string();
        let any_port = "127.0.0.1:0";
        let args = edge_args(io, &control, EDGE_ID, any_port, any_port, extra_args);
        let mut process = ChildProcess::spawn(edge_binary(), "edge", io, &args);

        let register = tokio::select! {
            register = tokio::time::timeout(WAIT, link.accept_register()) => match register {
                Ok(register) => register,
                Err(_) => panic!(
                    "the edge sent no register frame within {WAIT:?}\n{}",
                    process.log_tail()
                ),
            },
            status = process.exited() => panic!(
                "the edge exited with {status} before registering (args {args:?})\n{}",
                process.log_tail()
            ),
        };
        let ws_addr = parse_addr("ws_addr", &register.ws_addr);
        let tcp_addr = parse_addr("tcp_addr", &register.tcp_addr);
        Edge {
            io,
            link,
            register,
            ws_addr,
            tcp_addr,
            process,
        }
    }

    /// `ws://<addr>/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.ws_addr)
    }

    /// Asserts that the edge process is still running.
    pub fn assert_running(&mut self) {
        self.process.assert_running();
    }
}

impl EdgeAddrs for Edge {
    fn ws_addr(&self) -> SocketAddr {
        self.ws_addr
    }
    fn tcp_addr(&self) -> SocketAddr {
        self.tcp_addr
    }
}

fn parse_addr(field: &str, text: &str) -> SocketAddr {
    text.parse()
        .unwrap_or_else(|e| panic!("register.{field} {text:?} is not an ip:port address: {e}"))
}

/// A running `roomcast-edge` whose `--control` is any address, such as a real control plane's
/// link address. It listens on free loopback ports chosen before it starts, so its addresses are
/// known at once; [`spawn`](Self::spawn) does not wait for it to listen or register (a control
/// plane helper such as [`Control::start_edge`](crate::Control::start_edge) does).
pub struct LinkedEdge {
    /// The I/O driver this edge runs (`uring` or `epoll`).
    pub io: &'static str,
    /// Its `--edge-id`.
    pub edge_id: String,
    /// The `--control` address it dials.
    pub control: String,
    /// Where viewers connect over WebSocket.
    pub ws_addr: SocketAddr,
    /// Where viewers connect over raw TCP.
    pub tcp_addr: SocketAddr,
    /// The process; killed when this value is dropped.
    pub process: ChildProcess,
}

impl LinkedEdge {
    /// Starts an edge on driver `io` that dials `control`, with the standard test arguments
    /// (see [`edge_args`]) on two free loopback ports, plus `extra_args`.
    pub fn spawn(
        io: &'static str,
        control: &str,
        edge_id: &str,
        extra_args: &[&str],
    ) -> LinkedEdge {
        let [ws_addr, tcp_addr] = free_local_addrs(2)[..] else {
            unreachable!()
        };
        let args = edge_args(
            io,
            control,
            edge_id,
            &ws_addr.to_string(),
            &tcp_addr.to_string(),
            extra_args,
        );
        let process = ChildProcess::spawn(edge_binary(), &format!("edge-{edge_id}"), io, &args);
        LinkedEdge {
            io,
            edge_id: edge_id.to_owned(),
            control: control.to_owned(),
            ws_addr,
            tcp_addr,
            process,
        }
    }

    /// `ws://<addr>/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.ws_addr)
    }

    /// Kills the edge process (SIGKILL, as a crash would) and reaps it.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Asserts that the edge process is still running.
    pub fn assert_running(&mut self) {
        self.process.assert_running();
    }

    /// Its listen addresses, for a task that outlives this borrow.
    pub fn addresses(&self) -> EdgeAddresses {
        EdgeAddresses {
            ws_addr: self.ws_addr,
            tcp_addr: self.tcp_addr,
        }
    }
}

impl EdgeAddrs for LinkedEdge {
    fn ws_addr(&self) -> SocketAddr {
        self.ws_addr
    }
    fn tcp_addr(&self) -> SocketAddr {
        self.tcp_addr
    }
}

/// An edge's listen addresses on their own (a `Copy` value a task can own), such as an embedded
/// edge's or a [`LinkedEdge::addresses`].
#[derive(Debug, Clone, Copy)]
pub struct EdgeAddresses {
    pub ws_addr: SocketAddr,
    pub tcp_addr: SocketAddr,
}

impl EdgeAddrs for EdgeAddresses {
    fn ws_addr(&self) -> SocketAddr {
        self.ws_addr
    }
    fn tcp_addr(&self) -> SocketAddr {
        self.tcp_addr
    }
}

/// The `roomcast-edge` binary, built once per test process (see [`WorkspaceBinary::path`];
/// `ROOMCAST_TEST_EDGE_BIN` names a prebuilt one).
///
/// [`WorkspaceBinary::path`]: crate::process::WorkspaceBinary::path
pub fn edge_binary() -> &'static Path {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    EDGE_BINARY.path(&BIN)
}
