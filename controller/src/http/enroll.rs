//! The enrollment listener: HTTPS with the gateway's server certificate (agents pin its CA),
//! one route, `POST /enroll` ([`edgefleet_protocol::enrollment::ENROLL_PATH`]), which
//! exchanges a one-time token for the device's identity ([`Identity::redeem`]).
//!
//! Served by [`super::server`]: handshake and header-read timeouts, a connection cap, so
//! an idle socket delays nobody.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use edgefleet_protocol::enrollment::{ENROLL_PATH, EnrollRequest};
use tokio_util::sync::CancellationToken;

use crate::services::identity::Identity;

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

/// Serves `app` over TLS on `listener` until `shutdown`, with the timeouts and connection
/// cap every HTTP listener has ([`super::server`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    limits: super::server::Limits,
    shutdown: CancellationToken,
) {
    super::server::serve(listener, Some(tls), app, limits, shutdown).await
}
