//! The control plane's side of the edge link (PROTOCOL.md §6): accept edges, and per edge run a
//! reader task (register, load reports, user-query answers) and a writer task that drains the
//! edge's queue of encoded frames with large vectored writes. Also the periodic sweep that drops
//! silent edges, the level tick and the rooms' online-count pushes.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use roomcast_proto::link::{
    self, ChannelPosition, HistoryPage, HistoryRequest, LinkFrame, Recover, Recovered, Register,
    SyncAck,
};
use roomcast_proto::message::{PushMessage, RecoveryFailure, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::history::{Position, RecoverFailure, StoredMessage};
use crate::router::{EdgeKey, LinkHandle, Router, TargetRef};
use crate::upstream::Upstream;
use crate::userquery::UserQueries;

/// An edge must send `register` this soon after connecting.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// Queued frames smaller than this are copied into one staging buffer before writing, so a run
/// of single publishes becomes one large write instead of many tiny iovecs.
const COPY_BELOW: usize = 4 * 1024;
/// Most bytes gathered for one write call.
const MAX_WRITE: usize = 1 << 20;
/// Most chunks gathered for one write call (tokio passes at most 64 iovecs per writev).
const MAX_CHUNKS: usize = 64;
/// Free space kept in the read buffer before each read.
const READ_RESERVE: usize = 64 * 1024;
/// Most message bytes (kind + data) in one `history` answer; a page cut short by it holds fewer
/// messages than asked, and the client asks again from the last one.
const MAX_HISTORY_PAGE_BYTES: usize = 1 << 20;

/// Accepts edge links forever.
pub async fn serve(
    listener: TcpListener,
    router: Arc<Router>,
    queries: Arc<UserQueries>,
    upstream: Arc<Upstream>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let router = Arc::clone(&router);
                let queries = Arc::clone(&queries);
                let upstream = Arc::clone(&upstream);
                tokio::spawn(
                    async move { serve_edge(stream, peer, router, queries, upstream).await },
                );
            }
            Err(error) => {
                // Out of file descriptors or similar: back off instead of spinning.
                tracing::warn!(%error, "link accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Starts the periodic tasks: publish merged messages as their windows end
/// ([`Router::flush_merges`]), drop edges that stopped reporting, re-evaluate room levels once a
/// second (a level falls only after time has passed), and push the online counts that are due
/// ([`Router::push_online`], which looks only at rooms whose count may have changed).
pub fn spawn_maintenance(router: Arc<Router>) {
    // Merge windows end when they end, not on a tick: sleep until the next one, or until a
    // publish opens one (which may end sooner).
    let r = Arc::clone(&router);
    tokio::spawn(async move {
        loop {
            let woken = r.merges_waiting().notified();
            match r.next_merge() {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at.into()) => {}
                        _ = woken => {}
                    }
                }
                None => woken.await,
            }
            r.flush_merges(Instant::now());
        }
    });
    if let Some(every) = router.online_tick() {
        let r = Arc::clone(&router);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                r.push_online(Instant::now());
            }
        });
    }
    let sweep_every =
        (router.report_timeout() / 4).clamp(Duration::from_millis(10), Duration::from_millis(250));
    let r = Arc::clone(&router);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(sweep_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            r.sweep(Instant::now());
        }
    });
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            router.tick_levels(Instant::now());
        }
    });
}

async fn serve_edge(
    stream: TcpStream,
    peer: SocketAddr,
    router: Arc<Router>,
    queries: Arc<UserQueries>,
    upstream: Arc<Upstream>,
) {
    let _ = stream.set_nodelay(true);
    let (mut reader, writer) = stream.into_split();
    let mut buf = BytesMut::with_capacity(READ_RESERVE);
    let register =
        match tokio::time::timeout(REGISTER_TIMEOUT, first_frame(&mut reader, &mut buf)).await {
            Ok(Ok(register)) => register,
            Ok(Err(why)) => {
                tracing::warn!(%peer, why, "edge link refused");
                return;
            }
            Err(_) => {
                tracing::warn!(%peer, "edge link refused: no register within 10 s");
                return;
            }
        };
    let edge_id = register.edge_id.clone();
    tracing::info!(
        %peer,
        edge_id,
        ws = %register.ws_addr,
        tcp = %register.tcp_addr,
        workers = register.workers,
        capacity = register.capacity,
        "edge registered"
    );
    let (link, queue) = router.new_link();
    let key = router.add_edge(register, Arc::clone(&link), Instant::now());
    let writer = tokio::spawn(write_loop(writer, queue, Arc::clone(&link)));

    let peers = Peers {
        router: &router,
        queries: &queries,
        upstream: &upstream,
        edge_id: edge_id.as_str().into(),
    };
    let why = read_loop(&mut reader, &mut buf, &peers, key, &link).await;
    if router.remove_edge(key, Instant::now()) {
        tracing::info!(%peer, edge_id, why, "edge link closed");
    }
    link.close();
    let _ = writer.await;
}

/// Reads until the `register` frame arrives; anything else first is a protocol error.
async fn first_frame(reader: &mut OwnedReadHalf, buf: &mut BytesMut) -> Result<Register, String> {
    loop {
        match link::decode(buf) {
            Ok(Some(LinkFrame::Register(register))) => return Ok(register),
            Ok(Some(other)) => {
                return Err(format!("expected register, got {}", frame_name(&other)))
            }
            Ok(None) => {}
            Err(error) => return Err(format!("bad link frame: {error}")),
        }
        buf.reserve(READ_RESERVE);
        match reader.read_buf(buf).await {
            Ok(0) => return Err("closed before registering".into()),
            Ok(_) => {}
            Err(error) => return Err(error.to_string()),
        }
    }
}

/// What an edge's frames are handled with.
struct Peers<'a> {
    router: &'a Arc<Router>,
    queries: &'a UserQueries,
    upstream: &'a Arc<Upstream>,
    edge_id: Arc<str>,
}

/// Handles the edge's frames until the link fails or is closed; returns why it ended.
async fn read_loop(
    reader: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    peers: &Peers<'_>,
    key: EdgeKey,
    link: &Arc<LinkHandle>,
) -> String {
    let Peers {
        router, queries, ..
    } = peers;
    let mut closed = link.closed();
    loop {
        loop {
            let frame = match link::decode(buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) => return format!("bad link frame: {error}"),
            };
            match frame {
                LinkFrame::LoadReport(report) => {
                    if !router.apply_report(key, report, Instant::now()) {
                        return "replaced by a newer registration".into();
                    }
                }
                LinkFrame::UserConns(answer) => queries.answer(answer),
                // Every frame before it is applied (frames are handled in order, and a report
                // updates routing under the router's lock before this line runs): acknowledge,
                // with where each channel's stream stands — read and queued under the routing
                // lock, so every publish numbered after it follows the ack on the link.
                LinkFrame::Sync(sync) => {
                    let id = sync.id;
                    let sent = router.positions_to_edge(key, &sync.channels, |positions| {
                        let positions = positions
                            .iter()
                            .map(|(target, p)| channel_position(target.clone(), p))
                            .collect();
                        encode(&LinkFrame::SyncAck(SyncAck { id, positions }))
                    });
                    if !sent {
                        return "replaced by a newer registration".into();
                    }
                }
                // The same ordering makes a recovery exact: the missed messages up to
                // `last_seq` in the answer, every later one after it.
                LinkFrame::Recover(Recover { id, target, since }) => {
                    let sent = router.recover_to_edge(
                        key,
                        target_ref(&target),
                        &since.epoch,
                        since.seq,
                        |outcome| {
                            let position = channel_position(target.clone(), &outcome.position);
                            let result = match &outcome.result {
                                Ok(msgs) => Ok(msgs.iter().map(push_message).collect()),
                                Err(failure) => Err(recovery_failure(*failure)),
                            };
                            encode(&LinkFrame::Recovered(Recovered {
                                id,
                                position,
                                result,
                            }))
                        },
                    );
                    if !sent {
                        return "replaced by a newer registration".into();
                    }
                }
                LinkFrame::History(HistoryRequest {
                    id,
                    target,
                    since,
                    limit,
                }) => {
                    let page = router.history(target_ref(&target), since, limit as usize);
                    let mut bytes = 0;
                    let msgs = page
                        .msgs
                        .iter()
                        .take_while(|m| {
                            bytes += m.len();
                            bytes <= MAX_HISTORY_PAGE_BYTES
                        })
                        .map(push_message)
                        .collect();
                    let answer = LinkFrame::HistoryPage(HistoryPage {
                        id,
                        position: channel_position(target, &page.position),
                        complete: page.complete,
                        msgs,
                    });
                    let Some(bytes) = encode(&answer) else {
                        return "a history page did not encode".into();
                    };
                    if !link.send(bytes) {
                        return "the link's writer is gone".into();
                    }
                }
                LinkFrame::Send(send) => {
                    peers
                        .upstream
                        .handle_send(peers.router, &peers.edge_id, link, send);
                }
                LinkFrame::Acks(acks) => {
                    peers
                        .upstream
                        .record_acks(peers.router, &peers.edge_id, acks.acks)
                }
                other => {
                    return format!("unexpected {} frame from an edge", frame_name(&other));
                }
            }
        }
        if buf.capacity() - buf.len() < READ_RESERVE / 4 {
            buf.reserve(READ_RESERVE);
        }
        tokio::select! {
            read = reader.read_buf(buf) => match read {
                Ok(0) => return "the edge closed the link".into(),
                Ok(_) => {}
                Err(error) => return error.to_string(),
            },
            _ = closed.wait_for(|&c| c) => return "closed by the control plane".into(),
        }
    }
}

/// Drains the edge's queue: gathers whatever is queued (small frames copied together, large
/// slices passed as they are) and writes it with vectored writes.
async fn write_loop(
    mut writer: OwnedWriteHalf,
    mut queue: mpsc::UnboundedReceiver<Bytes>,
    link: Arc<LinkHandle>,
) {
    let mut closed = link.closed();
    let mut chunks = Chunks::default();
    let mut staging = BytesMut::new();
    loop {
        let first = tokio::select! {
            next = queue.recv() => match next {
                Some(bytes) => bytes,
                None => break,
            },
            _ = closed.wait_for(|&c| c) => break,
        };
        chunks.gather(first, &mut staging);
        while chunks.len() < MAX_CHUNKS - 1 && chunks.remaining() + staging.len() < MAX_WRITE {
            match queue.try_recv() {
                Ok(bytes) => chunks.gather(bytes, &mut staging),
                Err(_) => break,
            }
        }
        chunks.seal(&mut staging);
        let n = chunks.remaining();
        let written = tokio::select! {
            result = writer.write_all_buf(&mut chunks) => result,
            _ = closed.wait_for(|&c| c) => break,
        };
        link.written(n);
        if let Err(error) = written {
            tracing::warn!(%error, "edge link write failed");
            break;
        }
    }
    // Wake the reader too, so the edge is dropped and re-dials.
    link.close();
    let _ = writer.shutdown().await;
}

/// A list of byte chunks written as one vectored write.
#[derive(Default)]
struct Chunks {
    list: VecDeque<Bytes>,
    remaining: usize,
}

impl Chunks {
    fn len(&self) -> usize {
        self.list.len()
    }

    /// Adds queued bytes: small ones are appended to `staging`, large ones become their own
    /// chunk (after whatever was staged, to keep the order).
    fn gather(&mut self, bytes: Bytes, staging: &mut BytesMut) {
        if bytes.len() < COPY_BELOW {
            staging.extend_from_slice(&bytes);
        } else {
            self.seal(staging);
            self.remaining += bytes.len();
            self.list.push_back(bytes);
        }
    }

    /// Moves what is staged into the list as one chunk.
    fn seal(&mut self, staging: &mut BytesMut) {
        if !staging.is_empty() {
            let staged = staging.split().freeze();
            self.remaining += staged.len();
            self.list.push_back(staged);
        }
    }
}

impl Buf for Chunks {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.list.front().map_or(&[], |b| b.as_ref())
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advance past the end");
        self.remaining -= cnt;
        while cnt > 0 {
            let front = self.list.front_mut().expect("remaining bytes are listed");
            if cnt < front.len() {
                front.advance(cnt);
                return;
            }
            cnt -= front.len();
            self.list.pop_front();
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, chunk) in dst.iter_mut().zip(&self.list) {
            *slot = IoSlice::new(chunk);
            n += 1;
        }
        n
    }
}

/// Encodes one link frame; None (logged) when it cannot be (a bug, not the edge's fault).
fn encode(frame: &LinkFrame) -> Option<Bytes> {
    let mut out = BytesMut::new();
    match link::encode(frame, &mut out) {
        Ok(()) => Some(out.freeze()),
        Err(error) => {
            tracing::error!(%error, frame = frame_name(frame), "cannot encode a link frame");
            None
        }
    }
}

fn target_ref(target: &Target) -> TargetRef<'_> {
    match target {
        Target::Room(id) => TargetRef::Room(id),
        Target::User(id) => TargetRef::User(id),
        Target::Broadcast => TargetRef::Broadcast,
    }
}

fn channel_position(target: Target, position: &Position) -> ChannelPosition {
    ChannelPosition {
        target,
        epoch: position.epoch.as_str().to_owned(),
        last_seq: position.last_seq,
    }
}

fn push_message(stored: &StoredMessage) -> PushMessage {
    PushMessage {
        seq: stored.seq,
        priority: stored.priority,
        kind: stored.kind().to_owned(),
        data: stored.data(),
        merged: stored.merged,
        is_final: stored.is_final,
        from: stored.from().map(Box::from),
        ack: stored.ack,
    }
}

fn recovery_failure(failure: RecoverFailure) -> RecoveryFailure {
    match failure {
        RecoverFailure::EpochChanged => RecoveryFailure::EpochChanged,
        RecoverFailure::TooOld => RecoveryFailure::TooOld,
        RecoverFailure::TooMany => RecoveryFailure::TooMany,
        RecoverFailure::NotStored => RecoveryFailure::NotStored,
    }
}

fn frame_name(frame: &LinkFrame) -> &'static str {
    match frame {
        LinkFrame::Register(_) => "register",
        LinkFrame::Publish(_) => "publish",
        LinkFrame::SetLevel(_) => "set level",
        LinkFrame::LoadReport(_) => "load report",
        LinkFrame::QueryUser(_) => "query user",
        LinkFrame::UserConns(_) => "user connections",
        LinkFrame::Sync(_) => "sync",
        LinkFrame::SyncAck(_) => "sync ack",
        LinkFrame::Recover(_) => "recover",
        LinkFrame::Recovered(_) => "recovered",
        LinkFrame::History(_) => "history",
        LinkFrame::HistoryPage(_) => "history page",
        LinkFrame::RoomOnline(_) => "room online",
        LinkFrame::Send(_) => "send",
        LinkFrame::SendResult(_) => "send result",
        LinkFrame::Acks(_) => "acks",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::tests::{register, report, router};
    use crate::router::{PublishReq, TargetRef};
    use roomcast_proto::client::WireFormat;
    use roomcast_proto::link::{ConnInfo, UserConns};
    use roomcast_proto::message::Target;

    fn default_upstream() -> Arc<Upstream> {
        let config = crate::config::ControlConfig::default();
        Arc::new(Upstream::from_config(&config).expect("the default upstream"))
    }

    async fn send(stream: &mut TcpStream, frame: LinkFrame) {
        let mut out = BytesMut::new();
        link::encode(&frame, &mut out).unwrap();
        stream.write_all(&out).await.unwrap();
    }

    async fn recv(stream: &mut TcpStream, buf: &mut BytesMut) -> LinkFrame {
        loop {
            if let Some(frame) = link::decode(buf).unwrap() {
                return frame;
            }
            let read = tokio::time::timeout(Duration::from_secs(5), stream.read_buf(buf));
            assert!(
                read.await.expect("a frame in time").unwrap() > 0,
                "link closed"
            );
        }
    }

    async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A fake edge on a real loopback socket: register, report, receive publishes in order,
    /// answer a user query, and leave routing when its link closes.
    #[tokio::test]
    async fn an_edge_link_registers_reports_receives_and_answers() {
        let router = Arc::new(router());
        let queries = Arc::new(UserQueries::new());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(
            listener,
            Arc::clone(&router),
            Arc::clone(&queries),
            default_upstream(),
        ));

        let mut edge = TcpStream::connect(addr).await.unwrap();
        send(&mut edge, LinkFrame::Register(register("e1", 100))).await;
        send(
            &mut edge,
            LinkFrame::LoadReport(report(true, &[("r1", 1)], &[("u1", 1)])),
        )
        .await;
        eventually("the report", || router.room("r1").online == 1).await;

        let reqs: Vec<PublishReq<'_>> = (0..3)
            .map(|_| PublishReq {
                target: TargetRef::Room("r1"),
                priority: 2,
                kind: "gift",
                data: Bytes::from_static(b"{}"),
                from: None,
                ack: false,
            })
            .collect();
        router.publish(&reqs);
        let mut buf = BytesMut::new();
        for expected in 1..=3 {
            match recv(&mut edge, &mut buf).await {
                LinkFrame::Publish(p) => {
                    assert_eq!((p.target, p.msg.seq), (Target::Room("r1".into()), expected));
                }
                other => panic!("{other:?}"),
            }
        }

        let q = Arc::clone(&queries);
        let targets = router.query_targets();
        let lookup =
            tokio::spawn(async move { q.ask("u1", targets, Duration::from_secs(5)).await });
        let LinkFrame::QueryUser(query) = recv(&mut edge, &mut buf).await else {
            panic!("expected a user query");
        };
        let conn = ConnInfo {
            format: WireFormat::WsBinary,
            peer: "127.0.0.1:4000".into(),
            rooms: vec!["r1".into()],
        };
        let answer = UserConns {
            request: query.request,
            user: query.user,
            conns: vec![conn],
        };
        send(&mut edge, LinkFrame::UserConns(answer)).await;
        let view = lookup.await.unwrap();
        assert_eq!(view.connections.len(), 1);
        assert_eq!(view.connections[0].encoding, "binary");

        drop(edge);
        eventually("the edge to leave", || router.edge_count() == 0).await;
        assert_eq!(router.room("r1").online, 0);
    }

    #[tokio::test]
    async fn a_link_that_does_not_start_with_register_is_refused() {
        let router = Arc::new(router());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(
            listener,
            Arc::clone(&router),
            Arc::new(UserQueries::new()),
            default_upstream(),
        ));
        let mut edge = TcpStream::connect(addr).await.unwrap();
        send(
            &mut edge,
            LinkFrame::LoadReport(report(true, &[("r1", 1)], &[])),
        )
        .await;
        let mut buf = BytesMut::new();
        let read = tokio::time::timeout(Duration::from_secs(5), edge.read_buf(&mut buf));
        assert_eq!(
            read.await.unwrap().unwrap(),
            0,
            "the control plane closes the link"
        );
        assert_eq!(router.edge_count(), 0);
    }

    #[test]
    fn chunks_keep_order_and_copy_only_small_frames() {
        let mut chunks = Chunks::default();
        let mut staging = BytesMut::new();
        let big = Bytes::from(vec![b'B'; COPY_BELOW]);
        chunks.gather(Bytes::from_static(b"a1"), &mut staging);
        chunks.gather(Bytes::from_static(b"a2"), &mut staging);
        chunks.gather(big.clone(), &mut staging);
        chunks.gather(Bytes::from_static(b"c"), &mut staging);
        chunks.seal(&mut staging);
        assert_eq!(chunks.len(), 3, "a1+a2 staged, big as is, c staged");
        assert_eq!(chunks.remaining(), 5 + COPY_BELOW);
        let mut all = Vec::new();
        while chunks.has_remaining() {
            let n = chunks.chunk().len().min(3);
            all.extend_from_slice(&chunks.chunk()[..n]);
            chunks.advance(n);
        }
        let mut expected = b"a1a2".to_vec();
        expected.extend_from_slice(&big);
        expected.push(b'c');
        assert_eq!(all, expected);
    }
}
