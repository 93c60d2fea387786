//! Harness for the cross-process integration tests of `roomcast-edge` and `roomcast-control`.
//!
//! Edge tests start the real edge binary ([`Edge`]), play the control plane on the other end of
//! its link ([`LinkPeer`]) and talk to it over loopback like real viewers do. Control-plane tests
//! start the real `roomcast-control` ([`Control`], driven through its HTTP API with [`Api`]) and
//! real edges linked to it ([`LinkedEdge`], from [`Control::start_edge`]). The pieces:
//!
//! - [`Client`]: a well-behaved viewer over WebSocket (JSON or binary, on tokio-tungstenite, an
//!   independent WebSocket implementation used as the oracle) or raw TCP;
//! - [`RawConn`]: a plain socket for what a well-behaved client never sends (broken handshakes,
//!   unmasked or fragmented control frames, invalid UTF-8, garbage);
//! - [`HealthyMember`]: a bystander in a room that must keep receiving while another client
//!   misbehaves;
//! - [`tokens`]: JWTs, valid and broken;
//! - [`Backend`]: the sample platform backend (`roomcast-example-backend`) that the control
//!   plane's send proxy asks and reports receipts to;
//! - [`process`]: the workspace's binaries, built once per test process, as child processes
//!   killed by PID on drop; [`http`]: a small HTTP/1.1 client that can also send what a client
//!   library would refuse to.
//!
//! PROTOCOL.md at the repository root is the specification the tests check. Each test runs its
//! scenario once per I/O driver through [`for_each_driver`], because the suite must pass on both.

use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Mutex;
use std::time::Duration;

pub mod backend;
pub mod client;
pub mod control;
pub mod edge;
pub mod http;
pub mod link;
pub mod metrics;
pub mod process;
pub mod proxy;
pub mod raw;
pub mod tokens;

pub use backend::Backend;
pub use client::{assert_error, Client, Incoming, TcpClient, WsClient};
pub use control::{assert_receives, assert_receives_all, Api, Control, Published};
pub use edge::{Edge, EdgeAddresses, EdgeAddrs, LinkedEdge};
pub use link::LinkPeer;
pub use raw::RawConn;
pub use roomcast_proto::client::{ClientOp, WireFormat};
pub use roomcast_proto::link::{LoadReport, Register};
pub use roomcast_proto::message::{PushMessage, Target};

/// The default bound on every wait: no test may hang.
pub const WAIT: Duration = Duration::from_secs(10);

/// The longest one scenario (one driver) may take before it is failed.
const SCENARIO_LIMIT: Duration = Duration::from_secs(180);

/// The I/O drivers every scenario runs on: `uring` and `epoll`, or only the one named by the
/// `ROOMCAST_TEST_IO` environment variable.
pub fn drivers() -> Vec<&'static str> {
    const ALL: [&str; 2] = ["uring", "epoll"];
    match std::env::var("ROOMCAST_TEST_IO") {
        Ok(only) => {
            let driver = ALL
                .into_iter()
                .find(|d| *d == only)
                .unwrap_or_else(|| panic!("ROOMCAST_TEST_IO={only:?}: expected one of {ALL:?}"));
            vec![driver]
        }
        Err(_) => ALL.to_vec(),
    }
}

/// Runs `scenario` once per driver in [`drivers`], each on a fresh multi-threaded tokio runtime,
/// and names the driver when it fails.
///
/// Scenarios of one test binary run one at a time (a process-wide lock): they measure delivery
/// times and timeouts, and each starts its own edge, so running them side by side on a small
/// machine would only make them flaky.
pub fn for_each_driver<F, Fut>(scenario: F)
where
    F: Fn(&'static str) -> Fut,
    Fut: Future<Output = ()>,
{
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    // A scenario that panicked poisons the lock; the next one may still run.
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for io in drivers() {
        eprintln!("--- scenario on the {io} driver");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("build a tokio runtime");
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            runtime.block_on(async {
                tokio::time::timeout(SCENARIO_LIMIT, scenario(io))
                    .await
                    .unwrap_or_else(|_| panic!("scenario took longer than {SCENARIO_LIMIT:?}"))
            })
        }));
        runtime.shutdown_timeout(Duration::from_secs(2));
        if let Err(cause) = outcome {
            eprintln!("--- scenario FAILED on the {io} driver");
            panic::resume_unwind(cause);
        }
    }
}

/// A client sitting in a room, used as a witness: whatever another client does, a publish to
/// this room must still reach it.
pub struct HealthyMember {
    client: Client,
    room: String,
}

impl HealthyMember {
    /// Connects a WebSocket JSON client as user `healthy` and joins `room`.
    pub async fn join(edge: &Edge, room: &str) -> HealthyMember {
        let mut client = Client::connect_authed(edge, WireFormat::WsJson, "healthy").await;
        client
            .join(room)
            .await
            .expect("healthy member joins its room");
        HealthyMember {
            client,
            room: room.to_owned(),
        }
    }

    /// Publishes one message to the room and asserts that it arrives (and nothing else does).
    pub async fn assert_still_served(&mut self, edge: &mut Edge) {
        let sent = edge
            .link
            .publish_room(&self.room, 3, "probe", r#"{"probe":true}"#)
            .await;
        let got = self
            .client
            .recv_messages(&Target::Room(self.room.clone()), 1, WAIT)
            .await;
        assert_eq!(got, vec![sent], "the healthy member got the wrong messages");
    }
}

/// One authenticated member of `room` per wire format (WebSocket JSON, WebSocket binary, raw
/// TCP), as users `member-0`, `member-1`, `member-2`.
pub async fn members_in_every_format(edge: &Edge, room: &str) -> Vec<Client> {
    let mut members = Vec::new();
    for (i, format) in WireFormat::ALL.into_iter().enumerate() {
        let mut client = Client::connect_authed(edge, format, &format!("member-{i}")).await;
        client
            .join(room)
            .await
            .unwrap_or_else(|e| panic!("{format:?} member joins {room}: {e:?}"));
        members.push(client);
    }
    members
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}
