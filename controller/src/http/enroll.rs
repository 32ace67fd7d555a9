//! The enrollment listener: HTTPS with the gateway's server certificate (agents pin its CA),
//! one route, `POST /enroll` ([`edgefleet_protocol::enrollment::ENROLL_PATH`]), which
//! exchanges a one-time token for the device's identity ([`Identity::redeem`]).
//!
//! Each connection is served in its own task with a handshake timeout, so an idle socket
//! delays nobody.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use edgefleet_protocol::enrollment::{ENROLL_PATH, EnrollRequest};
use tokio_util::sync::CancellationToken;

use crate::services::identity::Identity;

/// Time a client has to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The enrollment listener's router: one route.
pub fn router(identity: Arc<Identity>) -> Router {
    Router::new()
        .route(ENROLL_PATH, post(enroll))
        .with_state(identity)
}

async fn enroll(State(identity): State<Arc<Identity>>, body: axum::body::Bytes) -> Response {
    let error = |status: StatusCode, message: String| {
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    };
    let request: EnrollRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("not an enrollment request: {e}"),
            );
        }
    };
    match identity.redeem(&request).await {
        Ok(Ok(response)) => Json(response).into_response(),
        Ok(Err(refusal)) => error(StatusCode::UNAUTHORIZED, refusal.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Serves `app` over TLS on `listener` until `shutdown`: each connection in its own task,
/// the handshake under a timeout. Returns only at shutdown.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    shutdown: CancellationToken,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (socket, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Typically out of file descriptors: back off instead of spinning.
                    tracing::warn!("enrollment listener: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "enrollment TLS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "enrollment TLS handshake timed out");
                    return;
                }
            };
            let service = TowerToHyperService::new(app);
            let conn = Builder::new(TokioExecutor::new());
            let serving = conn.serve_connection(TokioIo::new(tls), service);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                r = serving => if let Err(e) = r {
                    tracing::debug!(%peer, "enrollment connection ended: {e}");
                }
            }
        });
    }
}
