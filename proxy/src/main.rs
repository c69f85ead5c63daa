//! `waymark-proxy`: the router alone. This file only parses the command line; the router
//! lives in `waymark-router`, and how it runs as a process in this crate's library.

use std::process::ExitCode;

use clap::Parser;

/// The Waymark router: an HTTP/1.1, HTTP/2 and gRPC proxy routed by dtabs.
#[derive(Debug, Parser)]
#[command(name = "waymark-proxy", version, about)]
struct Cli {
    #[command(flatten)]
    args: waymark_proxy::RouterArgs,
}

fn main() -> ExitCode {
    match waymark_proxy::run(Cli::parse().args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
