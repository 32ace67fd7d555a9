//! `edgefleet`: the gateway, the controller, and the client commands. Only wiring lives here.

use std::process::ExitCode;

use clap::Parser;
use edgefleet_controller::bus::BrokerAddr;
use edgefleet_controller::cli::{Cli, Command};
use tokio_util::sync::CancellationToken;

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,rumqttd=warn,rumqttd::server::broker=off")
    });
    // axum logs rejected request bodies' parse errors at TRACE, and those can quote a
    // password: never log them, whatever RUST_LOG says (no secret in logs).
    let filter = match "axum::rejection=off".parse() {
        Ok(d) => filter.add_directive(d),
        Err(_) => filter,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Cancels `token` on the first SIGINT/SIGTERM; a second one exits at once.
fn watch_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("cannot watch SIGTERM: {e}");
                    return;
                }
            };
        for n in 0..2 {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            if n == 0 {
                tracing::info!("shutting down (send the signal again to force)");
                token.cancel();
            } else {
                std::process::exit(130);
            }
        }
    });
}

#[tokio::main]
async fn main() -> ExitCode {
    // One crypto stack (ring) for every rustls user in the process: built together with the
    // agent, reqwest's rustls has no provider of its own and panics without this.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Gateway(args) => {
            init_tracing(&cli.log_format);
            let token = CancellationToken::new();
            watch_signals(token.clone());
            let broker = edgefleet_broker::BrokerConfig {
                mqtt_listen: args.mqtt_listen,
                ..Default::default()
            };
            let addr = edgefleet_broker::connect_addr(args.mqtt_listen);
            let mut config = args.server.controller_config(BrokerAddr {
                host: addr.ip().to_string(),
                port: addr.port(),
                tls: false,
            });
            let tls = args.gateway_tls();
            if !args.mqtt_listen.ip().is_loopback() {
                tracing::warn!(
                    listen = %args.mqtt_listen,
                    "the plain MQTT listener is not on loopback: any client that reaches it can publish and subscribe anywhere, with no identity. Use it only on a trusted network; devices belong on the TLS listener (--mqtts-listen)"
                );
            }
            eprintln!(
                "edgefleet gateway: devices on mqtts://{}:{} (enroll at https://{}:{}), local MQTT on {}, HTTP API on http://{}, data in {}",
                tls.public_host,
                tls.mqtts_listen.port(),
                tls.public_host,
                tls.enroll_listen.port(),
                args.mqtt_listen,
                args.server.http_listen,
                args.server.data_dir.display()
            );
            config.gateway = Some(tls);
            edgefleet_controller::run_gateway(broker, config, token).await
        }
        Command::Controller(args) => {
            init_tracing(&cli.log_format);
            let token = CancellationToken::new();
            watch_signals(token.clone());
            edgefleet_controller::run(args.server.controller_config(args.broker.clone()), token)
                .await
        }
        Command::Broker(args) => {
            init_tracing(&cli.log_format);
            let config = edgefleet_broker::BrokerConfig {
                mqtt_listen: args.mqtt_listen,
                ..Default::default()
            };
            match tokio::task::spawn_blocking(move || edgefleet_broker::start(&config)).await {
                Ok(Ok(_handle)) => {
                    let _ = tokio::signal::ctrl_c().await;
                    Ok(())
                }
                Ok(Err(e)) => Err(e.into()),
                Err(e) => Err(e.into()),
            }
        }
        _ => match edgefleet_controller::cli::run_client(&cli).await {
            Ok(out) => {
                // A closed pipe (`| head`) is not an error worth a panic.
                use std::io::Write;
                let _ = writeln!(std::io::stdout(), "{out}");
                Ok(())
            }
            Err(e) if cli.json => {
                println!("{}", serde_json::json!({ "error": e.to_string() }));
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
