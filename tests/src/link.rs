//! The control plane's end of the edge link (PROTOCOL.md §6), played by the test.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use roomcast_proto::link::{
    decode, encode, ChannelPosition, LinkFrame, LoadReport, Publish, QueryUser, Register, SetLevel,
    SyncAck, UserConns, UNLIMITED,
};
use roomcast_proto::message::{PushMessage, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::WAIT;

/// Listens where the edge's `--control` points, accepts the edge's link, and lets the test
/// publish, set room levels and read load reports.
///
/// Like the real control plane it numbers publishes itself: one sequence per channel (room, user,
/// broadcast), starting at 1 and surviving re-dials of the link, and it answers every `sync`
/// barrier with its `sync ack` (after [`LinkPeer::set_sync_delay`], if set) without showing the
/// test either frame.
pub struct LinkPeer {
    listener: TcpListener,
    link: Option<Link>,
    next_seq: HashMap<Target, u64>,
    last_arrival: Option<Instant>,
    /// How long the reader waits before acknowledging a `sync` (a slow control plane).
    sync_delay_ms: Arc<AtomicU64>,
    /// `sync` frames seen since the peer was bound.
    syncs: Arc<AtomicU64>,
}

/// One accepted link connection: frames from the edge arrive through a reader task, so the edge
/// can always write its load reports even while the test is busy elsewhere.
struct Link {
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    /// Each frame with the moment the reader task decoded it.
    from_edge: mpsc::UnboundedReceiver<Result<(Instant, LinkFrame), String>>,
    reader: JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl LinkPeer {
    /// Binds 127.0.0.1 on a free port.
    pub async fn bind() -> LinkPeer {
        LinkPeer::bind_at("127.0.0.1:0".parse().expect("an address")).await
    }

    /// Binds `addr` (port 0: a free one).
    pub async fn bind_at(addr: SocketAddr) -> LinkPeer {
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind the link listener on {addr}: {e}"));
        LinkPeer {
            listener,
            link: None,
            next_seq: HashMap::new(),
            last_arrival: None,
            sync_delay_ms: Arc::new(AtomicU64::new(0)),
            syncs: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Delays every later `sync ack` by `delay` (the edge's joins of new channels wait for it).
    pub fn set_sync_delay(&self, delay: Duration) {
        self.sync_delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// `sync` barriers the edge has sent on any link so far.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// The address to give the edge as `--control`.
    pub fn addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("link listener address")
    }

    /// Accepts the edge's next link connection (replacing the current one, if any) and returns
    /// its first frame, which must be `register`. No timeout of its own: wrap it in one.
    pub async fn accept_register(&mut self) -> Register {
        self.link = None;
        let (stream, _) = self
            .listener
            .accept()
            .await
            .expect("accept the edge's link");
        stream.set_nodelay(true).expect("TCP_NODELAY on the link");
        let (mut read_half, writer) = stream.into_split();
        let writer = Arc::new(tokio::sync::Mutex::new(writer));
        let (to_test, from_edge) = mpsc::unbounded_channel();
        let acks = Arc::clone(&writer);
        let sync_delay_ms = Arc::clone(&self.sync_delay_ms);
        let syncs = Arc::clone(&self.syncs);
        let reader = tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            loop {
                loop {
                    match decode(&mut buf) {
                        Ok(Some(LinkFrame::Sync(sync))) => {
                            syncs.fetch_add(1, Ordering::Relaxed);
                            let delay = sync_delay_ms.load(Ordering::Relaxed);
                            let acks = Arc::clone(&acks);
                            tokio::spawn(async move {
                                tokio::time::sleep(Duration::from_millis(delay)).await;
                                let mut out = BytesMut::new();
                                // This peer keeps no history: every channel is at the
                                // start of one epoch as far as the ack says.
                                let ack = SyncAck {
                                    id: sync.id,
                                    positions: sync
                                        .channels
                                        .into_iter()
                                        .map(|target| ChannelPosition {
                                            target,
                                            epoch: "peer".into(),
                                            last_seq: 0,
                                        })
                                        .collect(),
                                };
                                encode(&LinkFrame::SyncAck(ack), &mut out).expect("encode");
                                // A closed link loses the ack, as it would with a real control.
                                let _ = acks.lock().await.write_all(&out).await;
                            });
                        }
                        Ok(Some(frame)) => {
                            if to_test.send(Ok((Instant::now(), frame))).is_err() {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            let _ = to_test.send(Err(format!("undecodable link frame: {e}")));
                            return;
                        }
                    }
                }
                match read_half.read_buf(&mut buf).await {
                    Ok(0) => {
                        let _ = to_test.send(Err("the edge closed the link".to_owned()));
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = to_test.send(Err(format!("link read failed: {e}")));
                        return;
                    }
                }
            }
        });
        self.link = Some(Link {
            writer,
            from_edge,
            reader,
        });
        match self.next_frame(WAIT).await {
            LinkFrame::Register(register) => register,
            other => panic!("the edge's first link frame is not register: {other:?}"),
        }
    }

    /// Closes the current link connection, as a crashed or restarted control plane would.
    pub fn drop_link(&mut self) {
        self.link = None;
    }

    /// Publishes one message, numbered with the next sequence number of its channel, and
    /// returns it as sent.
    pub async fn publish(
        &mut self,
        target: Target,
        priority: u8,
        kind: &str,
        data: &str,
    ) -> PushMessage {
        let next = self.next_seq.entry(target.clone()).or_insert(1);
        let msg = PushMessage {
            seq: *next,
            priority,
            kind: kind.to_owned(),
            data: Bytes::copy_from_slice(data.as_bytes()),
            merged: 0,
            is_final: false,
            from: None,
            ack: false,
        };
        *next += 1;
        self.send(&LinkFrame::Publish(Publish {
            target,
            msg: msg.clone(),
        }))
        .await;
        msg
    }

    /// [`publish`](Self::publish) to a room.
    pub async fn publish_room(
        &mut self,
        room: &str,
        priority: u8,
        kind: &str,
        data: &str,
    ) -> PushMessage {
        self.publish(Target::Room(room.to_owned()), priority, kind, data)
            .await
    }

    /// Sets a room's level, tick and per-priority budgets ([`UNLIMITED`] = no cap).
    pub async fn set_level(&mut self, room: &str, level: u8, tick_ms: u32, budgets: [u32; 4]) {
        let frame = SetLevel {
            room: room.to_owned(),
            level,
            tick_ms,
            budgets,
        };
        self.send(&LinkFrame::SetLevel(frame)).await;
    }

    /// Sets a room's tick with no budget caps.
    pub async fn set_tick(&mut self, room: &str, tick_ms: u32) {
        self.set_level(room, 0, tick_ms, [UNLIMITED; 4]).await;
    }

    /// The next load report from the edge; panics when `wait` passes first, when the link
    /// breaks, or when any other frame arrives.
    pub async fn next_load_report(&mut self, wait: Duration) -> LoadReport {
        match self.next_frame(wait).await {
            LinkFrame::LoadReport(report) => report,
            other => panic!("expected a load report from the edge, got {other:?}"),
        }
    }

    /// Waits up to `wait` for a load report that satisfies `accept`, skipping the others, and
    /// returns every report seen (the accepted one last).
    pub async fn load_reports_until(
        &mut self,
        wait: Duration,
        mut accept: impl FnMut(&LoadReport) -> bool,
    ) -> Vec<LoadReport> {
        let deadline = Instant::now() + wait;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let report = match self.try_next_frame(left).await {
                Some(LinkFrame::LoadReport(report)) => report,
                Some(other) => panic!("expected a load report from the edge, got {other:?}"),
                None => panic!("no acceptable load report within {wait:?}; saw {seen:#?}"),
            };
            let done = accept(&report);
            seen.push(report);
            if done {
                return seen;
            }
        }
    }

    /// When the frame last returned (such as a load report) came off the link: frames queue
    /// up while the test is busy, so this is not the time it was read.
    pub fn last_arrival(&self) -> Instant {
        self.last_arrival
            .expect("no frame has been read from the link yet")
    }

    async fn next_frame(&mut self, wait: Duration) -> LinkFrame {
        self.try_next_frame(wait)
            .await
            .unwrap_or_else(|| panic!("no frame from the edge within {wait:?}"))
    }

    /// The next frame from the edge, or `None` when `wait` passes first.
    async fn try_next_frame(&mut self, wait: Duration) -> Option<LinkFrame> {
        let link = self
            .link
            .as_mut()
            .expect("no link: the edge has not connected");
        match tokio::time::timeout(wait, link.from_edge.recv()).await {
            Ok(Some(Ok((arrived, frame)))) => {
                self.last_arrival = Some(arrived);
                Some(frame)
            }
            Ok(Some(Err(why))) => panic!("{why}"),
            Ok(None) => panic!("the link reader stopped"),
            Err(_) => None,
        }
    }

    /// Asks the edge for one user's connections (`query user`) and returns its answer.
    pub async fn query_user(&mut self, request: u32, user: &str) -> UserConns {
        let query = LinkFrame::QueryUser(QueryUser {
            request,
            user: user.to_owned(),
        });
        self.send(&query).await;
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.try_next_frame(left).await {
                Some(LinkFrame::UserConns(answer)) => return answer,
                Some(LinkFrame::LoadReport(_)) => continue,
                Some(other) => panic!("expected user connections, got {other:?}"),
                None => panic!("no answer to query user {request} within {WAIT:?}"),
            }
        }
    }

    async fn send(&mut self, frame: &LinkFrame) {
        let mut out = BytesMut::new();
        encode(frame, &mut out).unwrap_or_else(|e| panic!("encode {frame:?}: {e}"));
        let link = self
            .link
            .as_mut()
            .expect("no link: the edge has not connected");
        let mut writer = link.writer.lock().await;
        tokio::time::timeout(WAIT, writer.write_all(&out))
            .await
            .unwrap_or_else(|_| panic!("the edge did not read its link for {WAIT:?}"))
            .unwrap_or_else(|e| panic!("write to the link: {e}"));
    }
}
