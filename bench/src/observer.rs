//! Where the edges' load reports are read: the bench's own link server (`--publish-via link`),
//! or the control plane's API. Above both, so that neither depends on the other.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::api::Api;
use crate::dist::room_name;
use crate::linksrv::LinkServer;
use crate::nats::Monitor;
use crate::system::EdgeLoad;

/// Where the edges' load reports are read: the bench's own link server, or the control plane.
pub enum Observer {
    Link(Arc<LinkServer>),
    Control(Mutex<Api>),
    /// `--server nats`: the NATS server's monitoring endpoint.
    Nats(Monitor),
}

impl Observer {
    /// Every live edge's newest load report (empty when it cannot be read).
    pub fn edges(&self) -> Vec<EdgeLoad> {
        match self {
            Observer::Link(server) => server
                .live()
                .iter()
                .filter_map(|e| e.load())
                .map(|(_, load)| load)
                .collect(),
            Observer::Control(api) => api.lock().expect("api lock").edges().unwrap_or_default(),
            Observer::Nats(monitor) => monitor.load().into_iter().collect(),
        }
    }

    /// Members of each room in `rooms`, summed over the edges.
    pub fn room_members(&self, rooms: &[usize]) -> Result<BTreeMap<usize, u64>, String> {
        let mut members = BTreeMap::new();
        match self {
            Observer::Nats(monitor) => return monitor.room_members(rooms),
            Observer::Link(server) => {
                let edges = server.live();
                for &r in rooms {
                    let name = room_name(r);
                    members.insert(r, edges.iter().map(|e| e.members(&name)).sum());
                }
            }
            Observer::Control(api) => {
                let mut api = api.lock().expect("api lock");
                for &r in rooms {
                    members.insert(r, api.room(&room_name(r))?.online);
                }
            }
        }
        Ok(members)
    }

    /// The control plane's rate level and tick of `room` (through the API only).
    pub fn room_level(&self, room: usize) -> Option<(u8, u32)> {
        match self {
            Observer::Link(_) | Observer::Nats(_) => None,
            Observer::Control(api) => {
                let view = api.lock().expect("api lock").room(&room_name(room)).ok()?;
                Some((view.level, view.tick_ms))
            }
        }
    }

    /// Waits until a load report newer than now has come from every edge (about one report
    /// interval), so that what it says covers everything done before the call.
    pub fn wait_fresh(&self) {
        match self {
            Observer::Link(server) => {
                let since = Instant::now();
                let deadline = since + Duration::from_secs(3);
                while Instant::now() < deadline
                    && !server
                        .live()
                        .iter()
                        .all(|e| e.load().is_some_and(|(at, _)| at > since))
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            // The control plane answers from reports that arrive every second.
            Observer::Control(_) => std::thread::sleep(Duration::from_millis(2200)),
            // Its monitoring endpoint answers from live counters; a moment for closes to land.
            Observer::Nats(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}
