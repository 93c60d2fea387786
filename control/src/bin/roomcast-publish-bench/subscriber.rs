//! A raw-TCP viewer on an edge: authenticates, joins one room, and counts (or times) what it
//! receives. Frames are decoded with the engine's client codec.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use hdrhistogram::Histogram;
use roomcast_proto::client::{
    decode_server_binary, encode_op, tcp_frame_len, ClientOp, ServerMsg, WireFormat,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::api::Error;

/// What all subscribers saw, shared with the reporting code.
#[derive(Default)]
pub struct Received {
    pub messages: AtomicU64,
    pub frames: AtomicU64,
    /// Messages missing from a room's sequence (a gap between consecutive seqs).
    pub gaps: AtomicU64,
    /// Publish → receive latency in microseconds (latency mode only).
    pub latency_us: Mutex<Option<Histogram<u64>>>,
}

/// A joined subscriber, ready to read.
pub struct Subscriber {
    stream: TcpStream,
    buf: BytesMut,
    room: String,
}

impl Subscriber {
    /// Connects, authenticates with `token` and joins `room`; fails unless both replies are ok.
    pub async fn join(edge: SocketAddr, token: &str, room: &str) -> Result<Subscriber, Error> {
        let mut stream = TcpStream::connect(edge).await?;
        stream.set_nodelay(true)?;
        let auth = ClientOp::Auth {
            seq: 1,
            token: token.to_owned(),
        };
        let join = ClientOp::Join {
            seq: 2,
            room: room.to_owned(),
        };
        stream
            .write_all(&encode_op(WireFormat::Tcp, &auth, [0; 4]))
            .await?;
        stream
            .write_all(&encode_op(WireFormat::Tcp, &join, [0; 4]))
            .await?;
        let mut sub = Subscriber {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
            room: room.to_owned(),
        };
        for expected in [1, 2] {
            match sub.next().await? {
                ServerMsg::Reply {
                    seq,
                    result: Ok(()),
                } if seq == expected => {}
                other => return Err(format!("joining {room}: unexpected {other:?}").into()),
            }
        }
        Ok(sub)
    }

    /// The next server message.
    async fn next(&mut self) -> Result<ServerMsg, Error> {
        loop {
            if let Some(len) = tcp_frame_len(&self.buf) {
                if self.buf.len() >= 4 + len {
                    let frame = self.buf.split_to(4 + len);
                    return decode_server_binary(&frame[4..])
                        .map_err(|e| format!("bad server frame: {e:?}").into());
                }
                self.buf.reserve(4 + len - self.buf.len());
            }
            if self.buf.capacity() - self.buf.len() < 16 * 1024 {
                self.buf.reserve(64 * 1024);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err("the edge closed the connection".into());
            }
        }
    }

    /// Reads until `until`, counting messages and sequence gaps; with `clock`, each message's
    /// `data` carries `{"t_us":N}` (microseconds since `clock`) and its latency is recorded.
    pub async fn run(mut self, received: Arc<Received>, until: Instant, clock: Option<Instant>) {
        let mut last_seq: Option<u64> = None;
        let mut ping = tokio::time::interval(Duration::from_secs(20));
        let mut ping_seq = 100;
        let mut local = Histogram::<u64>::new(3).expect("histogram");
        loop {
            let msg = tokio::select! {
                msg = self.next() => msg,
                _ = tokio::time::sleep_until(until.into()) => break,
                _ = ping.tick() => {
                    ping_seq += 1;
                    let op = ClientOp::Ping { seq: ping_seq };
                    if self.stream.write_all(&encode_op(WireFormat::Tcp, &op, [0; 4])).await.is_err() {
                        break;
                    }
                    continue;
                }
            };
            let msgs = match msg {
                Ok(ServerMsg::Batch { msgs, .. }) => msgs,
                Ok(ServerMsg::Reply { .. }) => continue,
                Ok(other) => {
                    eprintln!("subscriber {}: {other:?}", self.room);
                    break;
                }
                Err(error) => {
                    eprintln!("subscriber {}: {error}", self.room);
                    break;
                }
            };
            received.frames.fetch_add(1, Ordering::Relaxed);
            received
                .messages
                .fetch_add(msgs.len() as u64, Ordering::Relaxed);
            for m in &msgs {
                if let Some(last) = last_seq {
                    if m.seq > last + 1 {
                        received.gaps.fetch_add(m.seq - last - 1, Ordering::Relaxed);
                    }
                }
                last_seq = Some(m.seq);
                if let Some(clock) = clock {
                    if let Some(sent_us) = sent_at_us(&m.data) {
                        let now_us = clock.elapsed().as_micros() as u64;
                        let _ = local.record(now_us.saturating_sub(sent_us));
                    }
                }
            }
        }
        if clock.is_some() {
            let mut shared = received.latency_us.lock().await;
            match shared.as_mut() {
                Some(h) => {
                    let _ = h.add(&local);
                }
                None => *shared = Some(local),
            }
        }
    }
}

/// The `t_us` field of a latency probe's data.
fn sent_at_us(data: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Probe {
        t_us: u64,
    }
    serde_json::from_slice::<Probe>(data).ok().map(|p| p.t_us)
}
