//! The server commands: `gateway`, `controller`, `broker`. Each binds its listeners here
//! (port 0 allowed), prints the addresses it really bound, and hands the listeners to the
//! libraries; the gateway and controller also write them to `DATA_DIR/addresses.json`.
//! A server command exits non-zero when an essential part of it stops (crash-only: let
//! systemd or Docker restart it).

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use edgefleet_controller::{Addresses, GatewayConfig, GatewayListeners};
use edgefleet_protocol::broker_url::BrokerAddr;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::args::{BrokerArgs, ControllerArgs, GatewayArgs};

pub fn init_tracing(format: &str) {
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

/// Cancels the returned token on the first SIGINT/SIGTERM; a second one exits at once.
fn watch_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
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
                t.cancel();
            } else {
                std::process::exit(130);
            }
        }
    });
    token
}

/// Binds a listener, with an error that names the flag to change.
async fn bind(addr: SocketAddr, what: &str, flag: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen for {what} on {addr}: choose another address with {flag} (port 0: any free port)")
    })
}

/// Plain HTTP carries passwords, session cookies, enrollment tokens and integrator keys in
/// clear: it is served on loopback only.
fn plain_http_on_loopback(addr: SocketAddr, https_hint: &str) -> anyhow::Result<()> {
    if addr.ip().is_loopback() {
        return Ok(());
    }
    anyhow::bail!(
        "--http-listen {addr}: plain HTTP is served only on loopback (127.0.0.1 or ::1), since logins, session cookies and tokens would cross the network in clear. {https_hint}"
    )
}

async fn start_broker(
    mqtt_listen: SocketAddr,
    credential: Option<edgefleet_broker::InternalCredential>,
) -> anyhow::Result<edgefleet_broker::BrokerHandle> {
    let config = edgefleet_broker::BrokerConfig {
        mqtt_listen,
        credential,
        ..Default::default()
    };
    Ok(tokio::task::spawn_blocking(move || edgefleet_broker::start(&config)).await??)
}

/// Descriptors the gateway keeps for itself (store, HTTP clients, listeners, logs).
const RESERVED_FILES: u64 = 512;

/// Raises this process's open-files soft limit to its hard limit (the common default of
/// 1,024 would refuse the 340th device) and returns it. Logs the figures; a failure is only
/// a warning.
fn raise_open_files_limit() -> u64 {
    let before = rlimit::getrlimit(rlimit::Resource::NOFILE).map(|(soft, _)| soft);
    match (before, rlimit::increase_nofile_limit(u64::MAX)) {
        (Ok(before), Ok(now)) => {
            tracing::info!(before, now, "open files limit (RLIMIT_NOFILE soft)");
            now
        }
        (Ok(before), Err(e)) => {
            tracing::warn!(error = %e, "cannot raise the open files limit");
            before
        }
        (Err(e), _) => {
            tracing::warn!(error = %e, "cannot read the open files limit; assuming 1024");
            1024
        }
    }
}

/// The open files the gateway's front may give its client sessions within `limit`: all but
/// [`RESERVED_FILES`]. A device on the hub holds one, a relayed client (integrator, local
/// user) three. Logs it, and warns when fewer than 10,000 devices would fit.
fn front_open_files(limit: u64) -> usize {
    let files = open_files_for_sessions(limit);
    tracing::info!(
        files,
        open_files = limit,
        "the front's sessions may hold this many open files (one per device)"
    );
    if files < 10_000 {
        tracing::warn!(
            files,
            "fewer than 10,000 device sessions fit in the open files limit: raise the hard limit (ulimit -Hn, LimitNOFILE= in systemd) for a larger fleet"
        );
    }
    files
}

fn open_files_for_sessions(open_files: u64) -> usize {
    usize::try_from(open_files.saturating_sub(RESERVED_FILES)).unwrap_or(usize::MAX)
}

pub async fn gateway(args: &GatewayArgs) -> anyhow::Result<()> {
    plain_http_on_loopback(
        args.server.http_listen,
        "Other hosts reach the API and dashboard over HTTPS: --https-listen (default 0.0.0.0:8444).",
    )?;
    let max_open_files = front_open_files(raise_open_files_limit());
    let shutdown = watch_signals();
    let data_dir = args.server.data_dir.clone();
    let credential = tokio::task::spawn_blocking(move || {
        edgefleet_files::create_private_dir(&data_dir)?;
        edgefleet_broker::InternalCredential::load_or_create(&data_dir)
    })
    .await?
    .with_context(|| {
        format!(
            "cannot read or create the broker's internal password in {}",
            args.server.data_dir.display()
        )
    })?;
    // rumqttd itself: loopback, a port nobody has to choose, our credential only.
    let internal = SocketAddr::from(([127, 0, 0, 1], 0));
    let broker = start_broker(internal, Some(credential.clone())).await?;
    let mqtt = bind(args.mqtt_listen, "MQTT (local users)", "--mqtt-listen").await?;
    let http = bind(args.server.http_listen, "HTTP", "--http-listen").await?;
    let https = bind(args.https_listen, "HTTPS", "--https-listen").await?;
    let mqtts = bind(args.mqtts_listen, "MQTT over TLS", "--mqtts-listen").await?;
    let enroll = bind(args.enroll_listen, "enrollment", "--enroll-listen").await?;
    if !args.mqtt_listen.ip().is_loopback() {
        tracing::warn!(
            listen = %args.mqtt_listen,
            "the plain MQTT listener is not on loopback: local users' passwords cross the network in clear. Devices and integrators belong on the TLS listener (--mqtts-listen)"
        );
    }
    let public_host = args.public_host();
    eprintln!(
        "edgefleet gateway: devices on mqtts://{public_host}:{} (enroll at https://{public_host}:{}), local MQTT users on {}, API and dashboard on https://{public_host}:{} (CA in {}) and http://{}, data in {} (addresses in {})",
        mqtts.local_addr()?.port(),
        enroll.local_addr()?.port(),
        mqtt.local_addr()?,
        https.local_addr()?.port(),
        args.server.data_dir.join("pki").join("ca.pem").display(),
        http.local_addr()?,
        args.server.data_dir.display(),
        args.server
            .data_dir
            .join(edgefleet_controller::ADDRESSES_FILE)
            .display(),
    );
    let config = GatewayConfig {
        controller: args.server.controller_config(BrokerAddr {
            host: broker.connect_addr().ip().to_string(),
            port: broker.connect_addr().port(),
            tls: false,
        }),
        public_host,
        internal_credential: credential,
        max_open_files,
    };
    edgefleet_controller::run_gateway(
        config,
        broker,
        GatewayListeners {
            http,
            https,
            mqtt,
            mqtts,
            enroll,
        },
        shutdown,
    )
    .await
}

pub async fn controller(args: &ControllerArgs) -> anyhow::Result<()> {
    plain_http_on_loopback(
        args.server.http_listen,
        "The controller alone serves no HTTPS: run `edgefleet gateway` (HTTPS on --https-listen), or put a TLS reverse proxy on this machine in front of a loopback --http-listen.",
    )?;
    let _ = raise_open_files_limit();
    let mut config = args.server.controller_config(args.broker.clone());
    if let (Some(user), Some(file)) = (&args.broker_user, &args.broker_password_file) {
        let text = std::fs::read_to_string(file).with_context(|| {
            format!(
                "cannot read the broker password from {} (--broker-password-file)",
                file.display()
            )
        })?;
        let password = text.lines().next().unwrap_or_default().to_owned();
        anyhow::ensure!(
            !password.is_empty(),
            "{} is empty: its first line must be the broker password (--broker-password-file)",
            file.display()
        );
        config.broker_login = Some((user.clone(), password));
    }
    let shutdown = watch_signals();
    let http = bind(args.server.http_listen, "HTTP", "--http-listen").await?;
    eprintln!(
        "edgefleet controller: broker {}, HTTP API on http://{}, data in {}",
        args.broker,
        http.local_addr()?,
        args.server.data_dir.display()
    );
    edgefleet_controller::run_controller(config, http, shutdown).await
}

async fn write_addresses(file: &Path, addresses: Addresses) -> anyhow::Result<()> {
    let path = file.to_owned();
    tokio::task::spawn_blocking(move || addresses.write(&path))
        .await?
        .with_context(|| format!("cannot write {}", file.display()))
}

pub async fn broker(args: &BrokerArgs) -> anyhow::Result<()> {
    let _ = raise_open_files_limit();
    let broker = start_broker(args.mqtt_listen, None).await?;
    eprintln!("edgefleet broker: MQTT on {}", broker.listen_addr());
    if let Some(file) = &args.addresses_file {
        let mut a = Addresses::new();
        a.mqtt = Some(broker.listen_addr());
        write_addresses(file, a).await?;
    }
    let stopped = broker.stopped();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok(()),
        why = stopped => Err(anyhow::anyhow!("the embedded MQTT broker stopped: {why}")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_front_gets_all_open_files_but_the_reserve() {
        assert_eq!(super::open_files_for_sessions(20_000), 19_488);
        assert_eq!(super::open_files_for_sessions(1_024), 512);
        assert_eq!(super::open_files_for_sessions(100), 0);
    }
}
