//! `waymark`: the namer, the router and the tools, in one binary. This file only parses the
//! command line and dispatches; each subcommand lives in its crate.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A dtab-routed service mesh.
#[derive(Debug, Parser)]
#[command(name = "waymark", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Format and manage dtabs.
    Dtab {
        #[command(subcommand)]
        command: waymark_cli::DtabCommand,
    },
    /// Explain how a path resolves through a dtab.
    Delegate(waymark_cli::DelegateArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Dtab { command } => waymark_cli::run_dtab(command),
        Command::Delegate(args) => waymark_cli::run_delegate(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}
