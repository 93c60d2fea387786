//! Measured costs and fixed edge parameters the arithmetic is built on (README "Performance").
//!
//! Runs: 100k hold = `roomcast-bench run --conns 100000 --hold-only --duration 20`;
//! room matrix = `roomcast-bench run --conns 10000 --rate R --duration 10 --edge-arg=--tick-ms=T
//! --edge-arg=--io=D`; floor = `roomcast-bench floor --conns 9900 --payload 128 --iters 100`.
//! Machine: 2 vCPUs (AMD EPYC), Linux 6.18, everything on loopback.

/// Edge user-space memory per idle connection (100k hold run; 971 B – 1.47 KiB per process).
pub const EDGE_BYTES_PER_IDLE_CONNECTION: f64 = 1.15 * 1024.0;

/// Kernel slab per connection *pair* on loopback (100k hold run: client and edge on one host).
pub const KERNEL_SLAB_BYTES_PER_PAIR: f64 = 10.6 * 1024.0;

/// Kernel slab per server-side socket: half the measured pair.
pub const KERNEL_SLAB_BYTES_PER_SOCKET: f64 = KERNEL_SLAB_BYTES_PER_PAIR / 2.0;

/// Edge CPU to hold an idle connection with heartbeats (0.11 cores for 100k).
pub const HOLD_CPU_MICROS_PER_CONNECTION_PER_SEC: f64 = 1.1;

/// Edge CPU per delivered frame at one frame per write (room matrix, io_uring .. epoll).
pub const EDGE_MICROS_PER_FRAME: (f64, f64) = (5.1, 6.3);

/// Edge CPU per message when a flush carries several frames per write (tick 0, 100 msg/s,
/// 5.7 frames per write) or a frame carries several messages (tick 100 ms, 100 msg/s).
pub const EDGE_MICROS_PER_MERGED_MESSAGE: (f64, f64) = (0.55, 0.83);

/// Edge CPU per message at tick 0, 100 msg/s, where a flush carries 5.7 frames per write.
pub const EDGE_MICROS_PER_COALESCED_MESSAGE_TICK0: (f64, f64) = (0.63, 0.83);

/// The floor: one pre-encoded 161-byte frame per `writev` to 9,900 loopback sockets.
pub const FLOOR_MICROS_PER_WRITEV: f64 = 6.22;

/// Encoding overhead per message: the floor's frame is 161 bytes for a 128-byte payload.
pub const MESSAGE_OVERHEAD_BYTES: u64 = 161 - 128;

/// Ethernet + IPv4 + TCP (with timestamps) headers per segment on the wire.
pub const WIRE_HEADER_BYTES_PER_SEGMENT: u64 = 14 + 20 + 32;

/// Payload bytes per TCP segment at a 1500-byte MTU with timestamps.
pub const MSS_BYTES: u64 = 1448;

/// The edge's default `--socket-send-buffer-bytes` (SO_SNDBUF per client socket).
pub const SOCKET_SEND_BUFFER_BYTES: u64 = 64 * 1024;

/// The listen backlog the edge passes per worker listener (engine/src/edge.rs).
pub const EDGE_LISTEN_BACKLOG: u64 = 4096;

/// tcp_mem is counted in pages.
pub const PAGE_BYTES: u64 = 4096;
