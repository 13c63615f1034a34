//! Command-line entry points. Each subcommand's arguments and code live with their module;
//! this file only dispatches.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::telemetry::logging::{self, LogFormat};

/// capturefleet: compliant iMessage capture on a Kubernetes-managed fleet of cloud Apple devices.
#[derive(Parser, Debug)]
#[command(name = "capturefleet", version, about, long_about = None)]
pub struct Cli {
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the Kubernetes operator (controllers for CaptureDevice, DevicePool, ArchiveSink).
    Operator(crate::operator::cli::OperatorArgs),
    /// Run the capture agent: read chat.db, spool records, deliver them to the sinks.
    Agent(crate::agent::cli::AgentArgs),
    /// Print the CustomResourceDefinitions as multi-document YAML.
    Crd {
        /// Print a Markdown reference of every field instead.
        #[arg(long)]
        reference: bool,
    },
    /// Device tools.
    Device {
        /// The device tool.
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// Archive tools.
    Archive {
        /// The archive tool.
        #[command(subcommand)]
        command: ArchiveCommand,
    },
    /// Benchmarks (release builds; see BENCHMARKS.md).
    Bench {
        /// The benchmark.
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Decode Apple blobs and databases for people debugging a device.
    Inspect {
        /// What to inspect.
        #[command(subcommand)]
        command: crate::apple::inspect::InspectCommand,
    },
}

/// `capturefleet device …`
#[derive(Subcommand, Debug)]
pub enum DeviceCommand {
    /// Write a realistic chat.db in Apple's schema (bulk history or live).
    Simulate(crate::device::cli::SimulateArgs),
    /// Exec probe of the simulated device runtime (startup: `booted`; readiness: `signed-in`).
    Probe(crate::device::runtime::ProbeArgs),
}

/// `capturefleet bench …`
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// chat.db reader throughput (a backfill into an empty archive).
    Reader(crate::agent::source::bench::BenchReaderArgs),
    /// The operator at fleet scale on the local control plane (see scripts/bench-fleet).
    Fleet(crate::bench::fleet::BenchFleetArgs),
}

/// `capturefleet archive …`
#[derive(Subcommand, Debug)]
pub enum ArchiveCommand {
    /// Recompute every device's hash chain in a filesystem archive and report problems.
    Verify(crate::archive::cli::VerifyArgs),
}

/// Run the parsed command and map its outcome to an exit code (errors are printed with their
/// whole cause chain).
pub fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Operator(args) => {
            logging::init(LogFormat::from_env());
            crate::operator::cli::run(args)
        }
        Command::Agent(args) => {
            logging::init(LogFormat::from_env());
            crate::agent::cli::run(args)
        }
        Command::Crd { reference: false } => crate::api::crdgen::print_all(),
        Command::Crd { reference: true } => {
            print!("{}", crate::api::reference::render());
            Ok(ExitCode::SUCCESS)
        }
        Command::Device {
            command: DeviceCommand::Simulate(args),
        } => {
            logging::init(LogFormat::Text);
            crate::device::cli::run(args)
        }
        Command::Device {
            command: DeviceCommand::Probe(args),
        } => crate::device::runtime::probe(args),
        Command::Archive {
            command: ArchiveCommand::Verify(args),
        } => crate::archive::cli::run(args),
        Command::Inspect { command } => crate::apple::inspect::run(command),
        Command::Bench {
            command: BenchCommand::Reader(args),
        } => crate::agent::source::bench::run(args),
        Command::Bench {
            command: BenchCommand::Fleet(args),
        } => crate::bench::fleet::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
