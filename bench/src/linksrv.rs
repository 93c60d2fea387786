//! `--publish-via link`: the bench plays the control plane's side of the edge link (PROTOCOL.md
//! §6). It accepts every edge's link, folds its `register` and load reports into a view of the
//! edge, and publishes by writing `publish` frames (with per-room sequence numbers it assigns) to
//! every live edge.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use roomcast_proto::link::{self, LinkFrame, LoadReport, Publish, Register};
use roomcast_proto::message::{PushMessage, Target};

use crate::dist::room_name;
use crate::publish::{Outcome, Outgoing, Sink};
use crate::system::EdgeLoad;
use crate::term::say;

/// One edge as its link shows it.
pub struct EdgeLink {
    pub register: Register,
    writer: Mutex<TcpStream>,
    pub alive: AtomicBool,
    view: Mutex<EdgeView>,
}

/// What the edge's load reports add up to.
#[derive(Default)]
struct EdgeView {
    /// The newest report (its room and user lists moved into `rooms`) and when it came.
    latest: Option<(Instant, LoadReport)>,
    /// Members per room: the full report's list with every later change applied.
    rooms: HashMap<String, u32>,
}

impl EdgeLink {
    fn apply(&self, mut report: LoadReport) {
        let mut view = self.view.lock().expect("edge view lock");
        if report.full {
            view.rooms.clear();
        }
        for (room, members) in report.rooms.drain(..) {
            if members == 0 {
                view.rooms.remove(&room);
            } else {
                view.rooms.insert(room, members);
            }
        }
        report.users = Vec::new();
        report.seqs = Vec::new();
        view.latest = Some((Instant::now(), report));
    }

    /// The newest load report's counters, and when it arrived.
    pub fn load(&self) -> Option<(Instant, EdgeLoad)> {
        let view = self.view.lock().expect("edge view lock");
        let (at, r) = view.latest.as_ref()?;
        Some((
            *at,
            EdgeLoad {
                id: self.register.edge_id.clone(),
                connections: u64::from(r.connections),
                frames_out: r.frames_out,
                bytes_out: r.bytes_out,
                msgs_dropped: r.msgs_dropped,
                slow_closes: r.slow_closes,
            },
        ))
    }

    /// Members of `room` on this edge.
    pub fn members(&self, room: &str) -> u64 {
        let view = self.view.lock().expect("edge view lock");
        view.rooms.get(room).copied().map_or(0, u64::from)
    }
}

#[derive(Default)]
pub struct LinkServer {
    /// Registered edges; a re-dialled link replaces the entry with the same edge id.
    edges: Mutex<Vec<Arc<EdgeLink>>>,
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
                        Err(e) => say(&format!("link: accept failed: {e}")),
                    }
                }
            })?;
        Ok((server, bound))
    }

    pub fn live(&self) -> Vec<Arc<EdgeLink>> {
        self.edges
            .lock()
            .expect("edges lock")
            .iter()
            .filter(|e| e.alive.load(Ordering::Relaxed))
            .cloned()
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
                                say(&format!("link {peer}: {e}"));
                                return;
                            }
                        };
                        let edge = Arc::new(EdgeLink {
                            register,
                            writer: Mutex::new(writer),
                            alive: AtomicBool::new(true),
                            view: Mutex::new(EdgeView::default()),
                        });
                        let mut edges = self.edges.lock().expect("edges lock");
                        if let Some(old) = edges
                            .iter_mut()
                            .find(|e| e.register.edge_id == edge.register.edge_id)
                        {
                            say(&format!(
                                "link: edge {} re-registered from {peer}",
                                edge.register.edge_id
                            ));
                            old.alive.store(false, Ordering::Relaxed);
                            *old = Arc::clone(&edge);
                        } else {
                            edges.push(Arc::clone(&edge));
                        }
                        me = Some(edge);
                    }
                    Ok(Some(LinkFrame::LoadReport(report))) => match &me {
                        Some(edge) => edge.apply(report),
                        None => say(&format!("link {peer}: load report before register")),
                    },
                    Ok(Some(LinkFrame::Sync(sync))) => {
                        // The edge answers joins of new channels once this barrier comes back;
                        // this server routes every publish to every edge, so there is nothing
                        // to apply first. It keeps no history: one epoch, positions at 0.
                        let positions = sync
                            .channels
                            .into_iter()
                            .map(|target| link::ChannelPosition {
                                target,
                                epoch: "bench".into(),
                                last_seq: 0,
                            })
                            .collect();
                        let ack = link::SyncAck {
                            id: sync.id,
                            positions,
                        };
                        let mut ack_bytes = BytesMut::new();
                        link::encode(&LinkFrame::SyncAck(ack), &mut ack_bytes)
                            .expect("a sync ack encodes");
                        let written = match &me {
                            Some(edge) => edge
                                .writer
                                .lock()
                                .expect("link writer lock")
                                .write_all(&ack_bytes),
                            None => stream.write_all(&ack_bytes),
                        };
                        if let Err(e) = written {
                            say(&format!("link {peer}: {e}; dropping the link"));
                            return;
                        }
                    }
                    Ok(Some(other)) => {
                        say(&format!(
                            "link {peer}: unexpected frame from an edge: {other:?}"
                        ));
                    }
                    Ok(None) => break,
                    Err(e) => {
                        say(&format!(
                            "link {peer}: undecodable frame ({e}); dropping the link"
                        ));
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

/// Publishes over the links: every message to every live edge, numbered per room here.
pub struct LinkSink {
    server: Arc<LinkServer>,
    room_names: Vec<String>,
    seqs: Vec<u64>,
    buf: BytesMut,
}

impl LinkSink {
    pub fn new(server: Arc<LinkServer>, rooms: usize) -> LinkSink {
        LinkSink {
            server,
            room_names: (0..rooms).map(room_name).collect(),
            seqs: vec![0; rooms],
            buf: BytesMut::with_capacity(64 * 1024),
        }
    }
}

impl Sink for LinkSink {
    fn send(&mut self, msgs: &[Outgoing]) -> Vec<Outcome> {
        self.buf.clear();
        for m in msgs {
            self.seqs[m.room] += 1;
            let frame = LinkFrame::Publish(Publish {
                target: Target::Room(self.room_names[m.room].clone()),
                msg: PushMessage {
                    seq: self.seqs[m.room],
                    priority: m.priority,
                    kind: m.kind.into(),
                    data: m.data.clone(),
                    merged: 0,
                    is_final: false,
                    from: None,
                    ack: false,
                },
            });
            link::encode(&frame, &mut self.buf).expect("a publish frame always encodes");
        }
        let mut outcome = Outcome::Routed;
        for edge in self.server.live() {
            let mut w = edge.writer.lock().expect("writer lock");
            if let Err(e) = w.write_all(&self.buf) {
                outcome = Outcome::Rejected(format!("link to {}: {e}", edge.register.edge_id));
                edge.alive.store(false, Ordering::Relaxed);
            }
        }
        vec![outcome; msgs.len()]
    }
}
