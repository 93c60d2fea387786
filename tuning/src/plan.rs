//! Capacity arithmetic: memory, bandwidth and CPU for connections, rooms and message rates,
//! from the measured costs in `costs`.

use std::fmt;

use crate::costs::*;
use crate::profile::{
    nofile_wanted, tcp_mem_cap_bytes, tcp_mem_pressure_bytes, tcp_mem_ram_warning,
    TCP_MEM_CAP_BYTES_PER_CONNECTION, TCP_MEM_PRESSURE_BYTES_PER_CONNECTION,
};

/// What the operator expects. Every viewer is in one room; every room gets `msgs_per_sec`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Load {
    pub connections: u64,
    pub rooms: u64,
    pub msgs_per_sec: f64,
    pub tick_ms: u64,
    pub payload_bytes: u64,
    pub boxes: u64,
    /// Per-room cap per tick from the control plane's level budgets (None = unlimited).
    pub max_msgs_per_tick: Option<u64>,
}

/// The arithmetic for one box (connections spread evenly over `boxes`).
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub load: Load,
    pub connections_per_box: u64,
    pub viewers_per_room: f64,
    pub delivered_msgs_per_viewer_per_sec: f64,
    pub frames_per_viewer_per_sec: f64,
    pub msgs_per_frame: f64,
    pub frame_bytes: f64,
    pub segments_per_frame: u64,
    pub frames_per_sec: f64,
    pub msgs_per_sec: f64,
    pub payload_egress_bytes_per_sec: f64,
    pub wire_egress_bytes_per_sec: f64,
    pub cpu_cores: (f64, f64),
    pub hold_cpu_cores: f64,
    pub user_memory_bytes: f64,
    pub kernel_slab_bytes: f64,
    pub kernel_buffer_steady_bytes: f64,
    pub kernel_buffer_worst_bytes: f64,
    /// The profile's tcp_mem pressure threshold for this box's connections, in bytes.
    pub tcp_mem_pressure_bytes: f64,
    /// The profile's tcp_mem hard cap for this box's connections, in bytes.
    pub tcp_mem_cap_bytes: u64,
    /// MemTotal of the host running `plan` (None = not read); above half of it the profile's
    /// tcp_mem hard cap gets a warning.
    pub host_mem_total_bytes: Option<u64>,
    /// Page size of the host running `plan` (None = not read): tcp_mem is set in pages.
    pub page_bytes: Option<u64>,
    pub fds: u64,
}

pub fn plan(load: Load) -> Plan {
    let per_box = load.connections.div_ceil(load.boxes.max(1));
    let n = per_box as f64;
    let ticks_per_sec = if load.tick_ms == 0 {
        f64::INFINITY
    } else {
        1000.0 / load.tick_ms as f64
    };
    // Budgets drop what exceeds them per tick; priority 0 is never limited (not modelled here).
    let delivered = match load.max_msgs_per_tick {
        Some(cap) if load.tick_ms > 0 => load.msgs_per_sec.min(cap as f64 * ticks_per_sec),
        _ => load.msgs_per_sec,
    };
    // Merging caps pushes at one frame per viewer per tick; tick 0 sends one frame per message.
    let frames_per_viewer = delivered.min(ticks_per_sec);
    let msgs_per_frame = if frames_per_viewer > 0.0 {
        delivered / frames_per_viewer
    } else {
        0.0
    };
    let frame_bytes = msgs_per_frame * (load.payload_bytes + MESSAGE_OVERHEAD_BYTES) as f64;
    let segments = (frame_bytes.ceil() as u64).div_ceil(MSS_BYTES).max(1);
    let frames_per_sec = n * frames_per_viewer;
    let hold = n * HOLD_CPU_MICROS_PER_CONNECTION_PER_SEC / 1e6;
    let cpu = |micros: f64| frames_per_sec * micros / 1e6 + hold;
    Plan {
        load,
        connections_per_box: per_box,
        viewers_per_room: load.connections as f64 / load.rooms.max(1) as f64,
        delivered_msgs_per_viewer_per_sec: delivered,
        frames_per_viewer_per_sec: frames_per_viewer,
        msgs_per_frame,
        frame_bytes,
        segments_per_frame: segments,
        frames_per_sec,
        msgs_per_sec: n * delivered,
        payload_egress_bytes_per_sec: frames_per_sec * frame_bytes,
        wire_egress_bytes_per_sec: frames_per_sec
            * (frame_bytes + (segments * WIRE_HEADER_BYTES_PER_SEGMENT) as f64),
        cpu_cores: (cpu(EDGE_MICROS_PER_FRAME.0), cpu(EDGE_MICROS_PER_FRAME.1)),
        hold_cpu_cores: hold,
        user_memory_bytes: n * EDGE_BYTES_PER_IDLE_CONNECTION,
        kernel_slab_bytes: n * KERNEL_SLAB_BYTES_PER_SOCKET,
        // Steady: about one frame in flight per socket. Worst: every SO_SNDBUF full, which the
        // kernel charges at twice the requested size (bookkeeping overhead).
        kernel_buffer_steady_bytes: n * frame_bytes,
        kernel_buffer_worst_bytes: n * (2 * SOCKET_SEND_BUFFER_BYTES) as f64,
        tcp_mem_pressure_bytes: tcp_mem_pressure_bytes(per_box) as f64,
        tcp_mem_cap_bytes: tcp_mem_cap_bytes(per_box),
        host_mem_total_bytes: None,
        page_bytes: None,
        fds: nofile_wanted(per_box),
    }
}

/// A figure as README.md prints it (`7.0`, `1.33`).
fn figure(value: f64) -> String {
    format!("{value:?}")
}

fn gib(bytes: f64) -> String {
    format!("{:.2} GiB", bytes / (1u64 << 30) as f64)
}

fn gbit(bytes_per_sec: f64) -> String {
    format!("{:.2} Gbit/s", bytes_per_sec * 8.0 / 1e9)
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.load;
        let tick = if l.tick_ms == 0 {
            "0 (no merging)".to_string()
        } else {
            format!("{} ms", l.tick_ms)
        };
        writeln!(f, "load: {} connections over {} box(es), {} room(s) ({:.0} viewers each), {} msg/s per room, tick {tick}, {} B payload",
            l.connections, l.boxes.max(1), l.rooms, self.viewers_per_room, l.msgs_per_sec, l.payload_bytes)?;
        if let Some(cap) = l.max_msgs_per_tick {
            writeln!(
                f,
                "budget: at most {cap} msg per room per tick -> {:.1} msg/s delivered per viewer",
                self.delivered_msgs_per_viewer_per_sec
            )?;
        }
        writeln!(f, "per box: {} connections", self.connections_per_box)?;
        writeln!(f, "  frames:    {:.2} per viewer/s x {} = {:.0} frames/s, {:.1} msg per frame, {:.0} B per frame ({} segment(s)); {:.0} msg/s delivered",
            self.frames_per_viewer_per_sec, self.connections_per_box, self.frames_per_sec, self.msgs_per_frame, self.frame_bytes, self.segments_per_frame, self.msgs_per_sec)?;
        writeln!(f, "  bandwidth: {} payload, {} on the wire (+{WIRE_HEADER_BYTES_PER_SEGMENT} B Ethernet/IP/TCP per segment)",
            gbit(self.payload_egress_bytes_per_sec), gbit(self.wire_egress_bytes_per_sec))?;
        writeln!(f, "  CPU:       {:.2}-{:.2} cores = frames/s x {}-{} us per frame + {:.2} cores holding ({} us per connection/s)",
            self.cpu_cores.0, self.cpu_cores.1, figure(EDGE_MICROS_PER_FRAME.0), figure(EDGE_MICROS_PER_FRAME.1),
            self.hold_cpu_cores, figure(HOLD_CPU_MICROS_PER_CONNECTION_PER_SEC))?;
        if l.tick_ms == 0 && l.msgs_per_sec > 10.0 {
            writeln!(f, "             (tick 0 upper bound; measured at 100 msg/s flushes coalesce {}-{} frames per write: {}-{} us per message)",
                figure(FRAMES_PER_WRITE_AT_TICK0.0), figure(FRAMES_PER_WRITE_AT_TICK0.1),
                figure(EDGE_MICROS_PER_COALESCED_MESSAGE_TICK0.0), figure(EDGE_MICROS_PER_COALESCED_MESSAGE_TICK0.1))?;
        }
        writeln!(
            f,
            "  memory:    edge {} ({} x {} KiB idle), kernel slab {} (x {} KiB per socket)",
            gib(self.user_memory_bytes),
            self.connections_per_box,
            figure(EDGE_BYTES_PER_IDLE_CONNECTION / 1024.0),
            gib(self.kernel_slab_bytes),
            figure(KERNEL_SLAB_BYTES_PER_SOCKET / 1024.0)
        )?;
        writeln!(f, "             kernel TCP buffers ~{} steady (one frame in flight each), {} worst (every 64 KiB SO_SNDBUF full, charged x2)",
            gib(self.kernel_buffer_steady_bytes), gib(self.kernel_buffer_worst_bytes))?;
        let pages = match self.page_bytes {
            Some(page) => format!(
                " = {} / {} pages of {page} B",
                (self.tcp_mem_pressure_bytes as u64).div_ceil(page),
                self.tcp_mem_cap_bytes.div_ceil(page)
            ),
            None => String::new(),
        };
        writeln!(
            f,
            "             profile tcp_mem: {} pressure, {} hard cap (x {} / {} KiB per connection{pages})",
            gib(self.tcp_mem_pressure_bytes),
            gib(self.tcp_mem_cap_bytes as f64),
            TCP_MEM_PRESSURE_BYTES_PER_CONNECTION / 1024,
            TCP_MEM_CAP_BYTES_PER_CONNECTION / 1024,
        )?;
        if self.kernel_buffer_steady_bytes > self.tcp_mem_pressure_bytes {
            writeln!(f, "             WARNING: steady buffers exceed the profile's tcp_mem pressure ({}); raise net.ipv4.tcp_mem for frames this large",
                gib(self.tcp_mem_pressure_bytes))?;
        }
        if let Some(warning) = self
            .host_mem_total_bytes
            .and_then(|mem| tcp_mem_ram_warning(mem, self.tcp_mem_cap_bytes))
        {
            writeln!(f, "             WARNING: {warning}")?;
        }
        writeln!(
            f,
            "  fds:       {} (nofile; fs.file-max above it)",
            self.fds
        )?;
        write!(f, "costs: README Performance (2-vCPU EPYC, loopback): 100k hold run, 10k room matrix; floor {} us per writev",
            figure(FLOOR_MICROS_PER_WRITEV))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(connections: u64, rooms: u64, msgs_per_sec: f64, tick_ms: u64) -> Load {
        Load {
            connections,
            rooms,
            msgs_per_sec,
            tick_ms,
            payload_bytes: 128,
            boxes: 1,
            max_msgs_per_tick: None,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6 * b.abs().max(1.0)
    }

    #[test]
    fn reproduces_the_measured_room_matrix_row() {
        // 10k viewers, 100 msg/s, tick 100 ms: measured 997.8k msg/s in 99.0k frames/s.
        let p = plan(load(10_000, 1, 100.0, 100));
        assert!(close(p.frames_per_sec, 100_000.0));
        assert!(close(p.msgs_per_sec, 1_000_000.0));
        assert!(close(p.msgs_per_frame, 10.0));
        assert!(close(p.frame_bytes, 1610.0));
        assert_eq!(p.segments_per_frame, 2);
        // 100k frames/s x the per-frame range + 10k x the holding cost.
        let hold = 10_000.0 * HOLD_CPU_MICROS_PER_CONNECTION_PER_SEC / 1e6;
        assert!(close(p.cpu_cores.0, 0.1 * EDGE_MICROS_PER_FRAME.0 + hold));
        assert!(close(p.cpu_cores.1, 0.1 * EDGE_MICROS_PER_FRAME.1 + hold));
    }

    #[test]
    fn one_room_of_100k_at_level_four() {
        let p = plan(load(100_000, 1, 100.0, 1000));
        assert!(close(p.frames_per_viewer_per_sec, 1.0));
        assert!(close(p.frame_bytes, 16_100.0));
        assert_eq!(p.segments_per_frame, 12);
        assert!(close(p.payload_egress_bytes_per_sec, 1.61e9));
        assert!(close(
            p.wire_egress_bytes_per_sec,
            100_000.0 * (16_100.0 + 12.0 * 66.0)
        ));
        assert!(close(
            p.hold_cpu_cores,
            0.1 * HOLD_CPU_MICROS_PER_CONNECTION_PER_SEC
        ));
        assert!(close(
            p.user_memory_bytes,
            100_000.0 * EDGE_BYTES_PER_IDLE_CONNECTION
        ));
        assert!(close(
            p.kernel_slab_bytes,
            100_000.0 * KERNEL_SLAB_BYTES_PER_SOCKET
        ));
        assert!(close(p.kernel_buffer_worst_bytes, 100_000.0 * 131_072.0));
        assert_eq!(p.fds, 104_096);
        // 16 KB frames fit under the profile's 32 KiB of tcp_mem pressure per connection.
        assert_eq!(p.tcp_mem_cap_bytes, 100_000 * 65_536);
        assert!(close(p.tcp_mem_pressure_bytes, 100_000.0 * 32_768.0));
        let text = p.to_string();
        assert!(!text.contains("WARNING"), "{text}");
        assert!(text.contains("profile tcp_mem: 3.05 GiB pressure, 6.10 GiB hard cap"));
        // The figures as README.md prints them.
        assert!(text.contains("x 6.6-7.8 us per frame"), "{text}");
        assert!(text.contains("(1.56 us per connection/s)"), "{text}");
        assert!(text.contains("(100000 x 1.33 KiB idle)"), "{text}");
        assert!(text.contains("(x 5.15 KiB per socket)"), "{text}");
        assert!(text.contains("floor 7.0 us per writev"), "{text}");
    }

    #[test]
    fn tcp_mem_is_shown_in_the_hosts_pages_when_known() {
        let mut p = plan(load(100_000, 1, 100.0, 1000));
        assert!(p.to_string().contains("(x 32 / 64 KiB per connection)\n"));
        p.page_bytes = Some(4096);
        assert!(p
            .to_string()
            .contains("(x 32 / 64 KiB per connection = 800000 / 1600000 pages of 4096 B)"));
        p.page_bytes = Some(65_536);
        assert!(p.to_string().contains("= 50000 / 100000 pages of 65536 B)"));
    }

    #[test]
    fn warns_when_the_tcp_mem_cap_exceeds_half_the_host_ram() {
        let mut p = plan(load(100_000, 1, 100.0, 1000));
        p.host_mem_total_bytes = Some(24 << 30);
        assert!(!p.to_string().contains("WARNING"));
        p.host_mem_total_bytes = Some(8 << 30);
        let text = p.to_string();
        assert!(
            text.contains("WARNING: the profile's net.ipv4.tcp_mem hard cap (6.10 GiB)"),
            "{text}"
        );
    }

    #[test]
    fn budgets_cap_delivered_messages() {
        // Level 4: 200 + 100 + 100 per 1 s tick for priorities 1-3.
        let mut l = load(100_000, 1, 100.0, 1000);
        l.max_msgs_per_tick = Some(400);
        let p = plan(l);
        assert!(close(p.delivered_msgs_per_viewer_per_sec, 100.0));
        l.msgs_per_sec = 1000.0;
        let p = plan(l);
        assert!(close(p.delivered_msgs_per_viewer_per_sec, 400.0));
        assert!(close(p.frame_bytes, 400.0 * 161.0));
        // A full level-4 frame (~64 KB) in every socket is past the profile's pressure.
        assert!(p.to_string().contains("WARNING: steady buffers exceed"));
    }

    #[test]
    fn tick_zero_sends_a_frame_per_message() {
        let p = plan(load(10_000, 1, 10.0, 0));
        assert!(close(p.frames_per_sec, 100_000.0));
        assert!(close(p.msgs_per_frame, 1.0));
        assert!(close(p.frame_bytes, 161.0));
        assert!(p.to_string().contains("tick 0 (no merging)"));
    }

    #[test]
    fn slow_rooms_send_one_frame_per_message_even_when_merging() {
        let p = plan(load(1_000, 10, 2.0, 100));
        assert!(close(p.frames_per_viewer_per_sec, 2.0));
        assert!(close(p.msgs_per_frame, 1.0));
    }

    #[test]
    fn boxes_split_the_connections() {
        let mut l = load(1_000_000, 1_000, 20.0, 100);
        l.boxes = 10;
        let p = plan(l);
        assert_eq!(p.connections_per_box, 100_000);
        assert!(close(p.viewers_per_room, 1_000.0));
        assert!(close(p.frames_per_sec, 1_000_000.0));
        assert!(p.to_string().contains("per box: 100000 connections"));
    }
}
