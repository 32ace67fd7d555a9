//! `edgefleet-agent`: parses the configuration, sets up logging and signals, and runs the
//! agent library until SIGINT/SIGTERM (a second signal exits at once).

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use edgefleet_agent::config::{Cli, Command, Config, EnrollArgs, LogFormat, default_data_dir};
use edgefleet_agent::identity;
use edgefleet_protocol::enrollment::EnrollmentToken;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn wait_for_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the agent with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down (send the signal again to exit at once)");
    shutdown.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::warn!("second signal: exiting now");
    std::process::exit(130);
}

/// The agent's single-threaded runtime (it is small and mostly waits).
fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("edgefleet-agent: cannot start the async runtime: {e}");
            None
        }
    }
}

fn enroll(args: EnrollArgs) -> ExitCode {
    init_logging(LogFormat::Text);
    let token = match EnrollmentToken::decode(&args.token) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("edgefleet-agent: {e}");
            return ExitCode::from(2);
        }
    };
    let data_dir = match args.data_dir {
        Some(d) => d,
        None => match default_data_dir(&token.device) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("edgefleet-agent: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(identity::enroll(&token, args.url.as_deref(), &data_dir)) {
        Ok(enrolled) => {
            println!(
                "enrolled as '{}' (broker {}); identity in {}\nstart the agent with: edgefleet-agent --data-dir {}",
                enrolled.device,
                enrolled.broker_url,
                identity::identity_dir(&data_dir).display(),
                data_dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("edgefleet-agent: enrollment failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if let Some(Command::Enroll(args)) = cli.command.take() {
        return enroll(args);
    }
    let (config, log_format) = match Config::from_cli(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("edgefleet-agent: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(log_format);
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(wait_for_signals(shutdown.clone()));
        edgefleet_agent::run(config, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
