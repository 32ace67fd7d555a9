//! `GET /api/v1/health` (no credentials): whether the controller can do its job. 200 while
//! the link to the broker holds a session, 503 while it does not (devices then receive
//! nothing), with the reason and since when, and how many passes the rollout loop made.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::http::state::ApiState;

pub async fn health(State(s): State<ApiState>) -> Response {
    let link = s.link.get();
    let since_s = link.since.elapsed().as_secs();
    let body = json!({
        "status": if link.connected { "ok" } else { "unavailable" },
        "version": env!("CARGO_PKG_VERSION"),
        "devices": s.fleet.len(),
        "uptime_s": s.started.elapsed().as_secs(),
        "broker": { "connected": link.connected, "since_s": since_s },
        // Completed passes of the rollout loop: a client that needs "the loop has run since
        // I acted" waits for this to grow by two.
        "rollout_passes": s.rollouts.passes(),
    });
    if link.connected {
        Json(body).into_response()
    } else {
        let mut body = body;
        body["error"] = json!(format!(
            "the controller has no connection to the MQTT broker (for {since_s} s): devices receive nothing until it is back; see the gateway log"
        ));
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}
