//! The HTTP JSON API (axum). The CLI's client commands use exactly this API; so does the
//! dashboard ([`crate::web`]). Every request is untrusted: errors come back as
//! `{"error": "…"}` with a 4xx status and a sentence saying what to change ([`error`]).
//!
//! Every route but `health` and `login` needs `Authorization: Bearer TOKEN` (or the
//! dashboard's session cookie); the [`auth`] middleware authenticates, applies the role
//! table and writes the audit log; handlers check site scope through the [`auth::Auth`]
//! extractor and filter lists by it.
//!
//! ## Layout
//! - [`router`]: every API route, in one place (the OpenAPI test reads it).
//! - [`state`]: the services handlers take; [`error`]: the error type; [`auth`]: roles,
//!   authentication, audit.
//! - [`routes`]: the handlers, one file per resource.
//! - [`enroll`]: the separate HTTPS listener agents enroll at.
//! - [`server`]: the HTTP server under every listener (timeouts, connection cap, TLS).

pub mod auth;
pub mod enroll;
pub mod error;
pub mod extract;
pub mod routes;
pub mod server;
pub mod state;

use axum::Router;
use axum::routing::{get, post, put};
use tokio_util::sync::CancellationToken;

pub use self::auth::BASE;
use self::error::ApiError;
use self::routes::{
    audit, deployments, devices, health, identity, policies, registries, rollouts, sessions, users,
    variables,
};
use self::state::ApiState;

/// The API: every route, behind the authentication and audit middleware.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/health", get(health::health))
        .route("/api/v1/devices", get(devices::list))
        .route("/api/v1/devices/{id}", get(devices::one))
        .route("/api/v1/devices/{id}/logs", get(devices::logs))
        .route("/api/v1/devices/{id}/enroll", post(identity::add_device))
        .route("/api/v1/devices/{id}/revoke", post(identity::revoke_device))
        .route(
            "/api/v1/devices/{id}/labels",
            axum::routing::put(devices::set_labels),
        )
        .route("/api/v1/integrators", post(identity::add_integrator))
        .route(
            "/api/v1/integrators/{name}/revoke",
            post(identity::revoke_integrator),
        )
        .route(
            "/api/v1/mqtt-users",
            get(identity::list_mqtt_users).post(identity::add_mqtt_user),
        )
        .route(
            "/api/v1/mqtt-users/{name}",
            axum::routing::delete(identity::remove_mqtt_user),
        )
        .route("/api/v1/acl", get(identity::acl))
        .route(
            "/api/v1/deployments",
            get(deployments::list).post(deployments::apply),
        )
        .route(
            "/api/v1/deployments/{name}",
            get(deployments::one).delete(deployments::delete),
        )
        .route(
            "/api/v1/deployments/{name}/revisions/{revision}",
            get(deployments::revision),
        )
        .route("/api/v1/deployments/{name}/diff", get(deployments::diff))
        .route("/api/v1/windows", get(deployments::windows))
        .route(
            "/api/v1/windows/{site}",
            put(deployments::set_window).delete(deployments::clear_window),
        )
        .route("/api/v1/policies", get(policies::list))
        .route(
            "/api/v1/policies/fleet",
            get(policies::fleet)
                .put(policies::set_fleet)
                .delete(policies::clear_fleet),
        )
        .route(
            "/api/v1/policies/sites/{site}",
            get(policies::site)
                .put(policies::set_site)
                .delete(policies::clear_site),
        )
        .route("/api/v1/policies/violations", get(policies::violations))
        .route("/api/v1/registries", get(registries::list))
        .route(
            "/api/v1/registries/{host}",
            put(registries::set).delete(registries::remove),
        )
        .route("/api/v1/policies/check", post(policies::check))
        .route("/api/v1/variables", get(variables::list))
        .route(
            "/api/v1/variables/sites/{site}",
            get(variables::site)
                .put(variables::set_site)
                .delete(variables::unset_site),
        )
        .route(
            "/api/v1/variables/devices/{id}",
            get(variables::device)
                .put(variables::set_device)
                .delete(variables::unset_device),
        )
        .route(
            "/api/v1/rollouts",
            get(rollouts::list).post(rollouts::start),
        )
        .route("/api/v1/rollouts/{id}", get(rollouts::one))
        .route("/api/v1/rollouts/{id}/{action}", post(rollouts::control))
        .route("/api/v1/login", post(sessions::login))
        .route("/api/v1/logout", post(sessions::logout))
        .route("/api/v1/whoami", get(sessions::whoami))
        .route(
            "/api/v1/tokens",
            get(sessions::list_tokens).post(sessions::create_token),
        )
        .route(
            "/api/v1/tokens/{name}",
            axum::routing::delete(sessions::revoke_token),
        )
        .route("/api/v1/users", get(users::list).post(users::create))
        .route("/api/v1/users/{name}", axum::routing::delete(users::remove))
        .route("/api/v1/audit", get(audit::list))
        .route("/api/v1/audit/verify", get(audit::verify))
        .route("/api/v1/audit/head", get(audit::head))
        .route("/api/v1/audit/export", get(audit::export))
        .fallback(|| async { ApiError::NotFound("no such API route; see /api/v1/health".into()) })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::middleware,
        ))
        .with_state(state)
}

/// Serves `app` on `listener` (plain HTTP) until `shutdown`, with the timeouts and the
/// connection cap of `limits`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: server::Limits,
    shutdown: CancellationToken,
) {
    server::serve(listener, None, app, limits, shutdown).await
}
