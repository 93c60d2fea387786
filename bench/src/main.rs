//! `roomcast-bench`: the load generator.
//!
//! * `roomcast-bench run [SCENARIO.toml] [flags]` is the coordinator: it starts the system under
//!   test (the control plane and edges, or only edges when it plays the control plane on the edge
//!   link itself), starts client processes (copies of itself running the hidden `client`
//!   subcommand) that hold the viewer connections, publishes, and measures from the outside
//!   (`/proc`, load reports, the edges' own counters, optionally `strace`). Against a running
//!   control plane (`--no-spawn`), `bench/scenarios/control-publish.toml` and
//!   `control-latency.toml` measure its publish path: throughput with publishers replaying
//!   encoded batches (`--replay-batches`), the request round trip, and the control hop's latency
//!   (`--probe-rate` under load).
//! * `roomcast-bench floor` measures the cost of the bare syscall the edge is built around: one
//!   pre-encoded frame written to many loopback sockets.
//!
//! Modules by job: [`scenario`] (the run's configuration), [`dist`] (who joins which room, which
//! group, which priority), [`merge`] (merge traffic and its checks), [`coord`] (the phases of a run), [`system`] (the processes and their
//! view of themselves), [`publish`] with its sinks [`api`] (HTTP API) and [`linksrv`] (edge link),
//! [`observer`] (the edges' load, through either), [`client`] (a client process) and [`msgs`]
//! (what it tells the coordinator), [`progress`], [`report`], [`plot`], [`strace`], [`floor`],
//! [`kernel_tcp`], [`sys`] (the OS), [`term`] (stderr), [`upstream`] (viewers' sends:
//! `--senders`).
//!
//! Every byte on the wire is produced and parsed by the engine's own codecs
//! (`roomcast_proto`); this crate only adds sockets, clocks and bookkeeping.

// Module layering. A module uses only modules on the rows above its own, so the dependencies
// form a DAG (`grep -n "^use crate::" bench/src/*.rs bench/src/*/*.rs` to check):
//
//   merge                        merge traffic: what the pk and like-storm scenarios publish and
//                                how a viewer checks it (pure)
//   dist, msgs, sys, term,       who is where and gets what; client <-> coordinator messages;
//   natsproto                    the OS; stderr and the progress line; NATS's client protocol
//   client, kernel_tcp, publish  a client process (owns Transport, ClientArgs); the kernel's TCP
//                                counters; the publisher and its Sink, Outgoing, Outcome, Encoded
//   floor, scenario              the syscall floor (FloorArgs); a run's configuration (RunArgs)
//   system                       started processes and a run's hold on them (Ctx), the edges
//                                under measurement (Measured) and their load (EdgeLoad), logs
//   api, linksrv                 the control plane's API and the edge link: sinks, load readers
//   nats                         --server nats: the NATS server's config, monitor and sink
//   observer                     the edges' load through either
//   progress                     the live view (Live, Sample)
//   upstream                     --senders: the edges', control plane's and backend's view of
//                                the sends (/metrics, /stats) and the results' upstream section
//   plot, report                 the outputs; report owns the measured Window
//   strace                       the syscall cross-check
//   coord                        the phases of a run
//   main                         the command line

use clap::{Parser, Subcommand};

use crate::client::ClientArgs;
use crate::floor::FloorArgs;
use crate::scenario::RunArgs;

mod api;
mod client;
mod coord;
mod dist;
mod floor;
mod kernel_tcp;
mod linksrv;
mod merge;
mod msgs;
mod nats;
mod natsproto;
mod observer;
mod plot;
mod progress;
mod publish;
mod report;
mod scenario;
mod strace;
mod sys;
mod system;
mod term;
mod upstream;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "roomcast-bench",
    version,
    about = "roomcast load generator: holds viewer connections, publishes, measures the system",
    long_about = "roomcast load generator.\n\n\
        `run` starts (or uses) roomcast-control and roomcast-edge processes, starts client \
        processes that hold the requested connections from several 127.0.0.x source addresses \
        and join rooms by a distribution, publishes at a rate and priority mix, and reports \
        delivered messages/s, completeness and publish->receive latency per priority, edge CPU \
        per delivered frame (also as a ratio to the floor measured in the same run), control \
        plane CPU, edge and kernel memory per connection. Scenarios are TOML files \
        (bench/scenarios/); flags override them.\n\n\
        `floor` measures the physical floor: one pre-encoded frame written to N loopback sockets."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one benchmark, from a scenario file and/or flags (edges, control plane, client
    /// processes, publishing, measurements).
    Run(Box<RunArgs>),
    /// Measure the syscall floor: write one pre-encoded frame to N loopback sockets in a loop.
    Floor(FloorArgs),
    /// (internal) A client process started by `run`; talks to the coordinator over stdin/stdout.
    #[command(hide = true)]
    Client(ClientArgs),
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        // Parsed again, in layers over the scenario file it names (flags win).
        Command::Run(_) => match RunArgs::load(std::env::args_os().skip(2)) {
            Ok(args) => coord::run(&args),
            Err(e) => {
                eprintln!("roomcast-bench run: {e}");
                2
            }
        },
        Command::Client(args) => client::run(args),
        Command::Floor(args) => floor::run(args),
    };
    std::process::exit(code);
}
