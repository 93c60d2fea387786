//! Measured costs and fixed edge parameters the arithmetic is built on.
//!
//! Every measured cost is a [`Figure`] taken from README.md's "Performance" sections, in one
//! table ([`FIGURES`]): which section and command it comes from, the words just before it there,
//! and the value as the README prints it. The constants the arithmetic uses are derived from those
//! figures, and a unit test reads README.md and fails when a figure here and the README's
//! disagree, so that a re-measurement in the README cannot leave `plan` and CAPACITY.md behind.
//! Machine of those runs: 2 vCPUs (AMD EPYC), Linux 6.18, everything on loopback.

/// One figure from README.md.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figure {
    /// What it is.
    pub what: &'static str,
    /// The README.md heading (`### ...`, without the hashes) of the section that prints it.
    pub section: &'static str,
    /// The command of that section's runs.
    pub command: &'static str,
    /// The text just before the figure in that section (unique there).
    pub anchor: &'static str,
    /// The number(s) right after `anchor`, as printed: one value, or a range's two ends.
    pub values: &'static [f64],
}

const HOLD_SECTION: &str = "Connections held and memory";
const HOLD_COMMAND: &str = "roomcast-bench run --conns 100000 --hold-only --duration 20";
const ROOM_SECTION: &str = "One room of 10,000 members";
const ROOM_COMMAND: &str = "roomcast-bench run --publish-via link --conns 10000 --rate R \
                            --duration 10 --edge-arg=--tick-ms=T --edge-arg=--io=D";

/// Edge RSS per idle connection, KiB (median of 3 hold-only runs, io_uring).
pub const IDLE_RSS_KIB: Figure = Figure {
    what: "edge RSS per idle connection (KiB)",
    section: HOLD_SECTION,
    command: HOLD_COMMAND,
    anchor: "| edge RSS per idle connection | **",
    values: &[1.33],
};

/// Kernel slab per connection *pair*, KiB: client and edge socket are both on the bench host.
pub const KERNEL_SLAB_PAIR_KIB: Figure = Figure {
    what: "kernel slab per connection, both socket ends (KiB)",
    section: HOLD_SECTION,
    command: HOLD_COMMAND,
    anchor: "| kernel slab per connection | ",
    values: &[10.3],
};

/// Edge CPU to hold an idle connection with heartbeats, µs per connection per second.
pub const HOLD_CPU_MICROS: Figure = Figure {
    what: "edge CPU while holding (us per connection per second)",
    section: HOLD_SECTION,
    command: HOLD_COMMAND,
    anchor: "0.16 cores for 100k connections (",
    values: &[1.56],
};

/// Edge CPU per delivered frame at one frame per write, µs (the range over drivers, ticks and
/// rates of the 10k room matrix).
pub const FRAME_MICROS: Figure = Figure {
    what: "edge CPU per delivered frame (us)",
    section: ROOM_SECTION,
    command: ROOM_COMMAND,
    anchor: "Per delivered frame the edge costs ",
    values: &[6.6, 7.8],
};

/// Frames one flush carries in one write at tick 0, 100 msg/s.
pub const FRAMES_PER_WRITE_TICK0: Figure = Figure {
    what: "frames per write at tick 0, 100 msg/s",
    section: ROOM_SECTION,
    command: ROOM_COMMAND,
    anchor: "at tick 0 and 100 msg/s it carries ",
    values: &[5.8, 8.2],
};

/// Edge CPU per message at tick 0, 100 msg/s, where flushes carry several frames per write, µs.
pub const COALESCED_MICROS_TICK0: Figure = Figure {
    what: "edge CPU per message at tick 0, 100 msg/s (us)",
    section: ROOM_SECTION,
    command: ROOM_COMMAND,
    anchor: "The cost then drops to ",
    values: &[0.94, 1.15],
};

/// The floor: CPU per `writev` of one pre-encoded frame, µs (median over the matrix's runs).
pub const FLOOR_MICROS: Figure = Figure {
    what: "floor: CPU per writev of one frame (us, median)",
    section: ROOM_SECTION,
    command: ROOM_COMMAND,
    anchor: "across these 24 runs (median ",
    values: &[7.0],
};

/// The floor's frame size, bytes.
pub const FLOOR_FRAME_BYTES: Figure = Figure {
    what: "the floor's frame (bytes)",
    section: ROOM_SECTION,
    command: ROOM_COMMAND,
    anchor: "writing one pre-encoded ",
    values: &[161.0],
};

/// The payload of the floor's frame and of the matrix's messages, bytes.
pub const PAYLOAD_BYTES: Figure = Figure {
    what: "payload of the matrix's messages (bytes)",
    section: ROOM_SECTION,
    command: ROOM_COMMAND,
    anchor: "raw-TCP clients, ",
    values: &[128.0],
};

/// Every figure taken from README.md.
pub const FIGURES: &[Figure] = &[
    IDLE_RSS_KIB,
    KERNEL_SLAB_PAIR_KIB,
    HOLD_CPU_MICROS,
    FRAME_MICROS,
    FRAMES_PER_WRITE_TICK0,
    COALESCED_MICROS_TICK0,
    FLOOR_MICROS,
    FLOOR_FRAME_BYTES,
    PAYLOAD_BYTES,
];

/// Edge user-space memory per idle connection.
pub const EDGE_BYTES_PER_IDLE_CONNECTION: f64 = IDLE_RSS_KIB.values[0] * 1024.0;

/// Kernel slab per connection *pair* on loopback (client and edge on one host).
pub const KERNEL_SLAB_BYTES_PER_PAIR: f64 = KERNEL_SLAB_PAIR_KIB.values[0] * 1024.0;

/// Kernel slab per server-side socket: half the measured pair.
pub const KERNEL_SLAB_BYTES_PER_SOCKET: f64 = KERNEL_SLAB_BYTES_PER_PAIR / 2.0;

/// Edge CPU to hold an idle connection with heartbeats.
pub const HOLD_CPU_MICROS_PER_CONNECTION_PER_SEC: f64 = HOLD_CPU_MICROS.values[0];

/// Edge CPU per delivered frame at one frame per write (lowest .. highest of the room matrix).
pub const EDGE_MICROS_PER_FRAME: (f64, f64) = (FRAME_MICROS.values[0], FRAME_MICROS.values[1]);

/// Edge CPU per message at tick 0, 100 msg/s, where a flush carries several frames per write.
pub const EDGE_MICROS_PER_COALESCED_MESSAGE_TICK0: (f64, f64) = (
    COALESCED_MICROS_TICK0.values[0],
    COALESCED_MICROS_TICK0.values[1],
);

/// Frames per write in those tick-0 flushes (lowest .. highest).
pub const FRAMES_PER_WRITE_AT_TICK0: (f64, f64) = (
    FRAMES_PER_WRITE_TICK0.values[0],
    FRAMES_PER_WRITE_TICK0.values[1],
);

/// The floor: one pre-encoded frame per `writev` to loopback sockets.
pub const FLOOR_MICROS_PER_WRITEV: f64 = FLOOR_MICROS.values[0];

/// Encoding overhead per message: the floor's frame minus its payload.
pub const MESSAGE_OVERHEAD_BYTES: u64 =
    FLOOR_FRAME_BYTES.values[0] as u64 - PAYLOAD_BYTES.values[0] as u64;

/// Ethernet + IPv4 + TCP (with timestamps) headers per segment on the wire.
pub const WIRE_HEADER_BYTES_PER_SEGMENT: u64 = 14 + 20 + 32;

/// Payload bytes per TCP segment at a 1500-byte MTU with timestamps.
pub const MSS_BYTES: u64 = 1448;

/// The edge's default `--socket-send-buffer-bytes` (SO_SNDBUF per client socket).
pub const SOCKET_SEND_BUFFER_BYTES: u64 = 64 * 1024;

/// The listen backlog the edge passes per worker listener (engine/src/edge.rs).
pub const EDGE_LISTEN_BACKLOG: u64 = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    /// The text of the README.md section under `### {heading}`, up to the next heading.
    fn section<'a>(readme: &'a str, heading: &str) -> &'a str {
        let title = format!("\n### {heading}\n");
        let start = readme
            .find(&title)
            .unwrap_or_else(|| panic!("README.md has no section `### {heading}`"))
            + title.len();
        let rest = &readme[start..];
        let end = rest.find("\n#").unwrap_or(rest.len());
        &rest[..end]
    }

    /// The first `n` numbers of `text` (`1.33`, `6.6–7.8`, `10,000`), stopping at the first
    /// character that is neither part of a number nor a space, dash or other separator between
    /// a range's ends.
    fn numbers(text: &str, n: usize) -> Vec<f64> {
        let mut out = Vec::new();
        let mut rest = text;
        while out.len() < n {
            let digits = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ','))
                .unwrap_or(rest.len());
            let number = rest[..digits].trim_end_matches('.').replace(',', "");
            match number.parse::<f64>() {
                Ok(value) => out.push(value),
                Err(_) => break,
            }
            // A range continues with an en dash (or a hyphen) and the other end.
            rest = &rest[digits..];
            match rest.strip_prefix('–').or_else(|| rest.strip_prefix('-')) {
                Some(after) => rest = after,
                None => break,
            }
        }
        out
    }

    #[test]
    fn numbers_reads_values_and_ranges_as_printed() {
        assert_eq!(numbers("1.33 KiB** (1.26–1.36", 1), [1.33]);
        assert_eq!(numbers("6.6–7.8 µs, **0.79", 2), [6.6, 7.8]);
        assert_eq!(numbers("5.8–8.2.\n", 2), [5.8, 8.2]);
        assert_eq!(numbers("161-byte frame", 1), [161.0]);
        assert_eq!(numbers("10,000 members", 1), [10_000.0]);
        assert_eq!(numbers("about 7", 1), Vec::<f64>::new());
    }

    #[test]
    fn every_figure_is_the_readmes() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
        let readme = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        for figure in FIGURES {
            let text = section(&readme, figure.section);
            let command = figure
                .command
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            assert!(
                text.contains(&command),
                "README.md `### {}` no longer shows the command `{command}` of {:?}",
                figure.section,
                figure.what
            );
            let found: Vec<&str> = text.matches(figure.anchor).collect();
            assert_eq!(
                found.len(),
                1,
                "README.md `### {}`: {:?} should appear once (it precedes {:?})",
                figure.section,
                figure.anchor,
                figure.what
            );
            let at = text.find(figure.anchor).unwrap() + figure.anchor.len();
            let printed = numbers(&text[at..], figure.values.len());
            assert_eq!(
                printed,
                figure.values,
                "{:?}: README.md `### {}` prints {:?} after {:?}; update tuning/src/costs.rs, \
                 tuning/CAPACITY.md and the `roomcast-tune plan` examples there",
                figure.what,
                figure.section,
                &text[at..(at + 40).min(text.len())],
                figure.anchor
            );
        }
    }

    #[test]
    fn the_derived_constants_follow_the_figures() {
        assert_eq!(
            EDGE_BYTES_PER_IDLE_CONNECTION,
            IDLE_RSS_KIB.values[0] * 1024.0
        );
        assert_eq!(
            KERNEL_SLAB_BYTES_PER_SOCKET * 2.0,
            KERNEL_SLAB_BYTES_PER_PAIR
        );
        assert!(EDGE_MICROS_PER_FRAME.0 <= EDGE_MICROS_PER_FRAME.1);
        assert!(EDGE_MICROS_PER_COALESCED_MESSAGE_TICK0.1 < EDGE_MICROS_PER_FRAME.0);
        // The wire format's overhead of a 128-byte payload: 33 bytes.
        assert_eq!(MESSAGE_OVERHEAD_BYTES, 33);
    }
}
