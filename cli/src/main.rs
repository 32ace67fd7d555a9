//! `edgefleet`: the gateway, the controller, the embedded broker alone, and the client
//! commands that talk to the controller's HTTP API. Only wiring lives here.
//!
//! ## Layout
//! - [`args`]: every command and flag (clap), with its help.
//! - [`server`]: the server commands (bind listeners, run the libraries, exit non-zero when
//!   an essential part stops).
//! - [`client`]: the HTTP client and the stored session token.
//! - [`commands`]: the client commands; [`render`]: what they print.
//! - [`audit_verify`]: `audit verify`, offline, with `--against` a saved signed head.

mod args;
mod audit_verify;
mod client;
mod commands;
mod render;
mod server;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    // One crypto stack (ring) for every rustls user in the process: built together with the
    // agent, reqwest's rustls has no provider of its own and panics without this.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Gateway(args) => {
            server::init_tracing(&cli.log_format);
            server::gateway(args).await
        }
        Command::Controller(args) => {
            server::init_tracing(&cli.log_format);
            server::controller(args).await
        }
        Command::Broker(args) => {
            server::init_tracing(&cli.log_format);
            server::broker(args).await
        }
        _ => match commands::run_client(&cli).await {
            Ok(out) => {
                // A closed pipe (`| head`) is not an error worth a panic.
                use std::io::Write;
                let _ = writeln!(std::io::stdout(), "{out}");
                Ok(())
            }
            Err(e) if cli.json => {
                match e.downcast_ref::<audit_verify::Failed>() {
                    Some(audit_verify::Failed {
                        json: Some(report), ..
                    }) => println!("{report}"),
                    _ => println!("{}", serde_json::json!({ "error": e.to_string() })),
                }
                return ExitCode::FAILURE;
            }
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
