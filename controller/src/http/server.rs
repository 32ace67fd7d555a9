//! The HTTP server under every listener of the controller (the API and dashboard, plain or
//! HTTPS, and the enrollment listener): hyper's HTTP/1 connection with a timer, so that a
//! client that sends nothing, or stops half-way through its headers, is cut off.
//!
//! - **Header-read timeout** ([`Limits::header_read_timeout`]): a new connection, and a
//!   kept-alive one between two requests, must deliver a whole request head within it;
//!   hyper runs this timer from the moment it waits for a head, so it is also the idle
//!   timeout. A response being streamed (SSE) is not affected.
//! - **TLS handshake timeout** ([`Limits::handshake_timeout`]).
//! - **Connection cap** ([`Limits::max_connections`]): a connection beyond it is closed at
//!   once, so one host holding idle sockets can delay others by at most the timeout.
//!
//! `axum::serve` sets no timer, so hyper's header-read timeout never fires there: that is
//! why this module exists.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// The documented default of `--http-idle-timeout`.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Open connections one listener serves at most.
pub const DEFAULT_MAX_CONNECTIONS: usize = 2048;

/// Bounds every HTTP listener applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub handshake_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            handshake_timeout: Duration::from_secs(10),
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Marks a request that came over TLS (handlers set `Secure` cookies then).
#[derive(Debug, Clone, Copy)]
pub struct OverTls;

/// Serves `app` on `listener` until `shutdown`, over TLS when `tls` is given. Each
/// connection runs in its own task; at shutdown, connections get 5 s to finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let (socket, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Typically out of file descriptors: back off instead of spinning.
                    tracing::warn!("HTTP listener: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(%peer, max = limits.max_connections, "HTTP connection refused: too many open");
            drop(socket);
            continue;
        };
        let (acceptor, app, shutdown) = (acceptor.clone(), app.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match acceptor {
                None => connection(socket, peer, false, app, limits, shutdown).await,
                Some(acceptor) => {
                    match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(socket))
                        .await
                    {
                        Ok(Ok(s)) => connection(s, peer, true, app, limits, shutdown).await,
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

async fn connection<I>(
    io: I,
    peer: SocketAddr,
    over_tls: bool,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Handlers read the peer (login backoff per address) and whether TLS carried the request.
    let service = tower::service_fn(move |mut req: axum::http::Request<hyper::body::Incoming>| {
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        if over_tls {
            req.extensions_mut().insert(OverTls);
        }
        app.clone().oneshot(req)
    });
    let service = TowerToHyperService::new(service);
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, "HTTP connection ended: {e}");
            }
            return;
        }
        _ = shutdown.cancelled() => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
}
