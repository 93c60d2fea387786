//! `roomcast-tune`: check, apply and print the kernel/limits profile for N connections, and plan
//! capacity from the measured costs.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use roomcast_tuning::apply::apply;
use roomcast_tuning::check::check;
use roomcast_tuning::live::{self, ProcSys};
use roomcast_tuning::plan::{plan, Load};
use roomcast_tuning::profile::{sysctls, tcp_mem_cap_bytes, tcp_mem_ram_warning};
use roomcast_tuning::render::{render, ProfileFormat};

#[derive(Parser)]
#[command(
    name = "roomcast-tune",
    about = "Kernel and limits tuning for a roomcast edge holding N connections"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compare live values with what N connections need; exit 1 when something should change.
    Check {
        #[arg(long)]
        connections: u64,
        /// Root of the sysctl tree (for testing against a copy).
        #[arg(long, default_value = "/proc/sys", hide = true)]
        proc_sys: String,
    },
    /// Write the sysctls for N (never lowering a value that already passes) and report what could
    /// not be changed; exit 1 when something is left.
    Apply {
        #[arg(long)]
        connections: u64,
        /// Print `sysctl -w` lines instead of writing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long, default_value = "/proc/sys", hide = true)]
        proc_sys: String,
    },
    /// Print the profile for N: a sysctl.d file, a limits.conf snippet or a systemd drop-in.
    Profile {
        #[arg(long)]
        connections: u64,
        #[arg(long, value_enum, default_value = "sysctl")]
        format: ProfileFormat,
    },
    /// Memory, bandwidth and CPU per box for a load, from the measured costs.
    Plan {
        /// Total viewers (connections).
        #[arg(long)]
        connections: u64,
        #[arg(long, default_value_t = 1)]
        rooms: u64,
        /// Messages per second published to each room.
        #[arg(long)]
        msgs_per_sec: f64,
        /// Merge window (the room's level tick); 0 = no merging.
        #[arg(long, default_value_t = 100)]
        tick_ms: u64,
        /// Payload bytes per message.
        #[arg(long, default_value_t = 128)]
        payload: u64,
        /// Edge boxes the connections are spread over.
        #[arg(long, default_value_t = 1)]
        boxes: u64,
        /// Per-room per-tick message budget (the level's budgets summed); unlimited if absent.
        #[arg(long)]
        max_msgs_per_tick: Option<u64>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check {
            connections,
            proc_sys,
        } => {
            let proc_sys = ProcSys::new(proc_sys);
            let findings = check(
                connections,
                &sysctls(connections),
                |s| proc_sys.read(s),
                &live::nofile_limit(),
            );
            println!("roomcast-tune check for {connections} connections");
            for finding in &findings {
                println!("{finding}");
            }
            // Advice only: does not change the exit code.
            if let Ok(mem_total) = live::mem_total_bytes() {
                let cap = tcp_mem_cap_bytes(connections);
                if let Some(warning) = tcp_mem_ram_warning(mem_total, cap) {
                    println!("WARNING {warning}");
                }
            }
            let changes = findings.iter().filter(|f| f.status.needs_action()).count();
            if changes == 0 {
                println!("all fine for {connections} connections");
                ExitCode::SUCCESS
            } else {
                println!("{changes} to change (roomcast-tune apply --connections {connections} [--dry-run])");
                ExitCode::FAILURE
            }
        }
        Command::Apply {
            connections,
            dry_run,
            proc_sys,
        } => {
            let report = apply(
                connections,
                &ProcSys::new(proc_sys),
                dry_run,
                live::raise_nofile_limit,
                live::nofile_limit,
            );
            for line in &report.lines {
                println!("{line}");
            }
            if report.unchanged == 0 {
                ExitCode::SUCCESS
            } else {
                println!("{} could not be changed", report.unchanged);
                ExitCode::FAILURE
            }
        }
        Command::Profile {
            connections,
            format,
        } => {
            print!("{}", render(format, connections, live::page_bytes()));
            ExitCode::SUCCESS
        }
        Command::Plan {
            connections,
            rooms,
            msgs_per_sec,
            tick_ms,
            payload,
            boxes,
            max_msgs_per_tick,
        } => {
            let load = Load {
                connections,
                rooms,
                msgs_per_sec,
                tick_ms,
                payload_bytes: payload,
                boxes,
                max_msgs_per_tick,
            };
            let mut plan = plan(load);
            plan.host_mem_total_bytes = live::mem_total_bytes().ok();
            plan.page_bytes = Some(live::page_bytes());
            println!("{plan}");
            ExitCode::SUCCESS
        }
    }
}
