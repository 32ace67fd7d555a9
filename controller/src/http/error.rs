//! The API's errors: every refusal is `{"error": "…"}` with a 4xx status and a sentence
//! saying what to change; a store failure is a 500 that says what to check. Each service
//! error maps here in one place.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use edgefleet_store::StoreError;
use edgefleet_store::audit::AuditQueryError;
use serde_json::json;

use crate::services::commands::CommandError;
use crate::services::deployments::{ApplyError, PinError};
use crate::services::identity::EnrollError;
use crate::services::policies::PolicyError;
use crate::services::rollouts::RolloutError;
use crate::services::users::UserError;
use crate::services::windows::WindowError;

#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    /// A request body that does not parse (its text is not audited: it may quote a secret).
    BadBody(String),
    Unauthorized(String),
    Forbidden(String),
    NotFound(String),
    Conflict(String),
    Internal(String),
    /// 429: this client or user must wait (login backoff); `Retry-After` in seconds.
    TooMany(String, u64),
    /// 503: the server is saturated (password checks); `Retry-After` in seconds.
    Busy(String, u64),
}

/// A refusal's message, attached to the response for the audit middleware.
#[derive(Debug, Clone)]
pub struct ErrorMessage(pub String);

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::BadBody(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::TooMany(..) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Busy(..) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Seconds the client should wait (429, 503).
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::TooMany(_, s) | ApiError::Busy(_, s) => Some(*s),
            _ => None,
        }
    }

    /// The message as the audit log records it.
    pub fn message(&self) -> &str {
        match self {
            ApiError::BadBody(_) => "the request body could not be read",
            ApiError::BadRequest(m)
            | ApiError::Unauthorized(m)
            | ApiError::Forbidden(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m)
            | ApiError::Internal(m)
            | ApiError::TooMany(m, _)
            | ApiError::Busy(m, _) => m,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let audited = ErrorMessage(self.message().to_owned());
        let retry = self.retry_after();
        let msg = match self {
            ApiError::BadRequest(m)
            | ApiError::BadBody(m)
            | ApiError::Unauthorized(m)
            | ApiError::Forbidden(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m)
            | ApiError::Internal(m)
            | ApiError::TooMany(m, _)
            | ApiError::Busy(m, _) => m,
        };
        let mut resp = (status, Json(json!({ "error": msg }))).into_response();
        if let Some(secs) = retry {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        resp.extensions_mut().insert(audited);
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!("store error: {e}");
        ApiError::Internal(format!(
            "{e}; check free disk space and the permissions of the gateway's --data-dir, then retry (the gateway log has details)"
        ))
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        ApiError::BadBody(format!("request body: {}", e.body_text()))
    }
}

impl From<ApplyError> for ApiError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::Store(s) => s.into(),
            e @ ApplyError::RolloutActive { .. } => ApiError::Conflict(e.to_string()),
            other => ApiError::BadRequest(other.to_string()),
        }
    }
}

impl From<PolicyError> for ApiError {
    fn from(e: PolicyError) -> Self {
        match e {
            PolicyError::Store(s) => s.into(),
            PolicyError::Invalid(m) => ApiError::BadRequest(m),
        }
    }
}

impl From<crate::services::variables::VariablesError> for ApiError {
    fn from(e: crate::services::variables::VariablesError) -> Self {
        use crate::services::variables::VariablesError;
        match e {
            VariablesError::Store(s) => s.into(),
            VariablesError::Invalid(m) => ApiError::BadRequest(m),
        }
    }
}

impl From<RolloutError> for ApiError {
    fn from(e: RolloutError) -> Self {
        match e {
            RolloutError::Store(s) => s.into(),
            RolloutError::Pin(PinError::Store(s)) => s.into(),
            e @ (RolloutError::NotFound(_) | RolloutError::NoDeployment(_)) => {
                ApiError::NotFound(e.to_string())
            }
            e @ (RolloutError::Busy { .. } | RolloutError::BadState { .. }) => {
                ApiError::Conflict(e.to_string())
            }
            other => ApiError::BadRequest(other.to_string()),
        }
    }
}

impl From<WindowError> for ApiError {
    fn from(e: WindowError) -> Self {
        match e {
            WindowError::Store(s) => s.into(),
            other => ApiError::BadRequest(other.to_string()),
        }
    }
}

impl From<AuditQueryError> for ApiError {
    fn from(e: AuditQueryError) -> Self {
        match e {
            AuditQueryError::Store(s) => s.into(),
            other => ApiError::BadRequest(other.to_string()),
        }
    }
}

impl From<crate::services::audit::HeadError> for ApiError {
    fn from(e: crate::services::audit::HeadError) -> Self {
        use crate::services::audit::HeadError;
        match e {
            HeadError::Store(e) => e.into(),
            broken @ HeadError::Broken(_) => ApiError::Conflict(broken.to_string()),
        }
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::UnknownDevice(_) => ApiError::NotFound(e.to_string()),
            CommandError::Invalid(m) => ApiError::BadRequest(m),
            CommandError::Offline(_) | CommandError::Device(_) | CommandError::Timeout(..) => {
                ApiError::Conflict(e.to_string())
            }
        }
    }
}

impl From<crate::services::inventory::InventoryError> for ApiError {
    fn from(e: crate::services::inventory::InventoryError) -> Self {
        use crate::services::inventory::InventoryError;
        match e {
            InventoryError::Unknown(_) => ApiError::NotFound(e.to_string()),
            InventoryError::Invalid(m) => ApiError::BadRequest(m),
            InventoryError::Store(s) => s.into(),
        }
    }
}

impl From<EnrollError> for ApiError {
    fn from(e: EnrollError) -> Self {
        match e {
            EnrollError::NoGateway => ApiError::Conflict(e.to_string()),
            EnrollError::Invalid(m) => ApiError::BadRequest(m),
            EnrollError::NotEnrolled(_)
            | EnrollError::NoIntegrator(_)
            | EnrollError::NoMqttUser(_) => ApiError::NotFound(e.to_string()),
            EnrollError::MqttUserExists(_) => ApiError::Conflict(e.to_string()),
            EnrollError::Store(s) => s.into(),
            EnrollError::Pki(p) => ApiError::Internal(format!("cannot issue a certificate: {p}")),
        }
    }
}

impl From<UserError> for ApiError {
    fn from(e: UserError) -> Self {
        match e {
            UserError::Invalid(m) => ApiError::BadRequest(m),
            UserError::Conflict(m) => ApiError::Conflict(m),
            UserError::NotFound(m) => ApiError::NotFound(m),
            UserError::Unauthorized(m) => ApiError::Unauthorized(m),
            UserError::Backoff(m, secs) => ApiError::TooMany(m, secs),
            UserError::Busy(m, secs) => ApiError::Busy(m, secs),
            UserError::Store(s) => s.into(),
        }
    }
}
