//! The `waymark` command-line tools that work on dtabs: formatting and checking dtab files,
//! explaining how a path resolves (offline, or through a namer), and managing the dtabs a
//! namer stores.
//!
//! Commands print plain text for people, JSON with `--json` for scripts, and use colour only
//! when standard output is a terminal. Each failure class has its own exit status (see
//! [`Exit`]), so that scripts can tell them apart.

pub mod delegate;
pub mod exit;
pub mod fmt;
pub mod style;

pub use exit::{Exit, Failure};

use clap::{Args, Subcommand};

/// `waymark dtab ...`
#[derive(Debug, Subcommand)]
pub enum DtabCommand {
    /// Print a dtab file in canonical form: one dentry per line, as the store keeps it.
    Fmt {
        /// Only check: exit with status 1 if the file is not already canonical.
        #[arg(long)]
        check: bool,
        /// The dtab file, or `-` for standard input.
        #[arg(default_value = "-")]
        file: String,
    },
}

/// `waymark delegate ...`
#[derive(Debug, Args)]
pub struct DelegateArgs {
    /// The complete dtab to explain PATH through (offline, built-in `/$/` namers only).
    #[arg(long)]
    pub dtab: String,
    /// The path to explain, such as `/svc/web`.
    pub path: String,
    /// Print namerd's JSON instead of the indented tree.
    #[arg(long)]
    pub json: bool,
}

/// Runs a `waymark dtab` command.
pub fn run_dtab(command: DtabCommand) -> Result<(), Failure> {
    match command {
        DtabCommand::Fmt { check, file } => fmt::run(&file, check),
    }
}

/// Runs `waymark delegate`.
pub fn run_delegate(args: DelegateArgs) -> Result<(), Failure> {
    delegate::run_offline(&args.dtab, &args.path, args.json)
}
