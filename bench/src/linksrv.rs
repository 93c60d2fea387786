//! The coordinator's control-plane side of the edge link (PROTOCOL.md §6): accept every edge's
//! link, read its `register` and load reports, and publish to all edges at a fixed rate.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use roomcast_engine::proto::link::{self, LinkFrame, LoadReport, Publish, Register};
use roomcast_engine::proto::message::{PushMessage, Target};

use crate::client::room_name;
use crate::sys;

/// One edge as its link shows it.
pub struct EdgeLink {
    pub register: Register,
    writer: Mutex<TcpStream>,
    pub alive: AtomicBool,
    /// Every load report with the time it arrived.
    pub reports: Mutex<Vec<(Instant, LoadReport)>>,
}

impl EdgeLink {
    /// The newest load report and when it arrived.
    pub fn latest(&self) -> Option<(Instant, LoadReport)> {
        self.reports.lock().expect("reports lock").last().cloned()
    }
}

#[derive(Default)]
pub struct LinkServer {
    /// Registered edges; a re-dialled link replaces the entry with the same edge id.
    pub edges: Mutex<Vec<Arc<EdgeLink>>>,
    pub link_errors: AtomicU64,
}

impl LinkServer {
    /// Binds `addr` and accepts links in the background.
    pub fn start(addr: SocketAddr) -> io::Result<(Arc<LinkServer>, SocketAddr)> {
        let listener = TcpListener::bind(addr)?;
        let bound = listener.local_addr()?;
        let server = Arc::new(LinkServer::default());
        let s = Arc::clone(&server);
        std::thread::Builder::new()
            .name("link-accept".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    match stream {
                        Ok(stream) => {
                            let s = Arc::clone(&s);
                            std::thread::spawn(move || s.serve(stream));
                        }
                        Err(e) => eprintln!("link: accept failed: {e}"),
                    }
                }
            })?;
        Ok((server, bound))
    }

    pub fn snapshot(&self) -> Vec<Arc<EdgeLink>> {
        self.edges.lock().expect("edges lock").clone()
    }

    pub fn live(&self) -> Vec<Arc<EdgeLink>> {
        self.snapshot()
            .into_iter()
            .filter(|e| e.alive.load(Ordering::Relaxed))
            .collect()
    }

    fn serve(self: Arc<Self>, mut stream: TcpStream) {
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "?".to_string(), |a| a.to_string());
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let mut scratch = vec![0u8; 64 * 1024];
        let mut me: Option<Arc<EdgeLink>> = None;
        loop {
            loop {
                match link::decode(&mut buf) {
                    Ok(Some(LinkFrame::Register(register))) => {
                        let writer = match stream.try_clone() {
                            Ok(w) => w,
                            Err(e) => {
                                eprintln!("link {peer}: {e}");
                                return;
                            }
                        };
                        let edge = Arc::new(EdgeLink {
                            register,
                            writer: Mutex::new(writer),
                            alive: AtomicBool::new(true),
                            reports: Mutex::new(Vec::new()),
                        });
                        let mut edges = self.edges.lock().expect("edges lock");
                        if let Some(old) = edges
                            .iter_mut()
                            .find(|e| e.register.edge_id == edge.register.edge_id)
                        {
                            eprintln!(
                                "link: edge {} re-registered from {peer}",
                                edge.register.edge_id
                            );
                            old.alive.store(false, Ordering::Relaxed);
                            *old = Arc::clone(&edge);
                        } else {
                            edges.push(Arc::clone(&edge));
                        }
                        me = Some(edge);
                    }
                    Ok(Some(LinkFrame::LoadReport(report))) => match &me {
                        Some(edge) => edge
                            .reports
                            .lock()
                            .expect("reports lock")
                            .push((Instant::now(), report)),
                        None => eprintln!("link {peer}: load report before register"),
                    },
                    Ok(Some(other)) => {
                        eprintln!("link {peer}: unexpected frame from an edge: {other:?}");
                        self.link_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        eprintln!("link {peer}: undecodable frame ({e}); dropping the link");
                        self.link_errors.fetch_add(1, Ordering::Relaxed);
                        if let Some(edge) = &me {
                            edge.alive.store(false, Ordering::Relaxed);
                        }
                        return;
                    }
                }
            }
            match stream.read(&mut scratch) {
                Ok(0) | Err(_) => {
                    if let Some(edge) = &me {
                        edge.alive.store(false, Ordering::Relaxed);
                    }
                    return;
                }
                Ok(n) => buf.extend_from_slice(&scratch[..n]),
            }
        }
    }
}

/// What to publish.
#[derive(Debug, Clone)]
pub struct Plan {
    pub rooms: usize,
    pub rate: f64,
    pub payload: usize,
    pub priority: u8,
}

/// A running publisher.
pub struct Publisher {
    stop: Arc<AtomicBool>,
    state: Arc<PubState>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
pub struct PubState {
    /// Messages published (each went to every live edge).
    pub published: AtomicU64,
    /// Per room: the last seq published.
    pub seqs: Mutex<Vec<u64>>,
    pub write_errors: AtomicU64,
    /// Times the publisher fell more than 100 ms behind its schedule.
    pub late: AtomicU64,
}

impl Publisher {
    pub fn start(server: Arc<LinkServer>, plan: Plan) -> Publisher {
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(PubState {
            seqs: Mutex::new(vec![0; plan.rooms.max(1)]),
            ..PubState::default()
        });
        let (s, st) = (Arc::clone(&stop), Arc::clone(&state));
        let thread = std::thread::Builder::new()
            .name("publisher".into())
            .spawn(move || publish_loop(&server, &plan, &s, &st))
            .expect("spawn publisher");
        Publisher {
            stop,
            state,
            thread: Some(thread),
        }
    }

    pub fn state(&self) -> &PubState {
        &self.state
    }

    /// Stops publishing; returns the final seq of every room.
    pub fn stop(mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.state.seqs.lock().expect("seqs lock").clone()
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `{"ts":<unix µs>,"pad":"xxx…"}`, padded to `size` bytes when `size` allows.
pub fn message_data(ts: u64, size: usize) -> Bytes {
    let head = format!("{{\"ts\":{ts}");
    let bare = head.len() + 1;
    let with_pad = head.len() + ",\"pad\":\"\"}".len();
    if size <= bare || size < with_pad {
        return Bytes::from(format!("{head}}}"));
    }
    let mut s = String::with_capacity(size);
    s.push_str(&head);
    s.push_str(",\"pad\":\"");
    s.extend(std::iter::repeat_n('x', size - with_pad));
    s.push_str("\"}");
    Bytes::from(s)
}

fn publish_loop(server: &LinkServer, plan: &Plan, stop: &AtomicBool, state: &PubState) {
    let rooms: Vec<String> = (0..plan.rooms.max(1)).map(room_name).collect();
    let interval = Duration::from_secs_f64(1.0 / plan.rate.max(1e-6));
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let due = (now.duration_since(start).as_secs_f64() * plan.rate) as u64 + 1;
        if due <= sent {
            let next = start + interval.mul_f64(sent as f64);
            std::thread::sleep(
                next.saturating_duration_since(now)
                    .min(Duration::from_millis(50)),
            );
            continue;
        }
        if due - sent > (plan.rate / 10.0).max(1.0) as u64 + 1 {
            state.late.fetch_add(1, Ordering::Relaxed);
        }
        buf.clear();
        {
            let mut seqs = state.seqs.lock().expect("seqs lock");
            // At most 10,000 messages per write round, so a stalled edge cannot make one huge burst.
            let until = due.min(sent + 10_000);
            while sent < until {
                let r = (sent % rooms.len() as u64) as usize;
                seqs[r] += 1;
                let frame = LinkFrame::Publish(Publish {
                    target: Target::Room(rooms[r].clone()),
                    msg: PushMessage {
                        seq: seqs[r],
                        priority: plan.priority,
                        kind: "chat".into(),
                        data: message_data(sys::unix_micros(), plan.payload),
                    },
                });
                if let Err(e) = link::encode(&frame, &mut buf) {
                    eprintln!("publisher: cannot encode a publish: {e}");
                    return;
                }
                sent += 1;
            }
        }
        for edge in server.live() {
            let mut w = edge.writer.lock().expect("writer lock");
            if let Err(e) = w.write_all(&buf) {
                eprintln!("publisher: link to {} failed: {e}", edge.register.edge_id);
                state.write_errors.fetch_add(1, Ordering::Relaxed);
                edge.alive.store(false, Ordering::Relaxed);
            }
        }
        state.published.store(sent, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_padded_json_of_the_requested_size() {
        for size in [0, 10, 30, 33, 64, 128, 1024] {
            let d = message_data(1_700_000_000_000_000, size);
            let v: serde_json::Value = serde_json::from_slice(&d).unwrap();
            assert_eq!(v["ts"], 1_700_000_000_000_000u64);
            if size >= 40 {
                assert_eq!(d.len(), size);
            }
        }
    }
}
