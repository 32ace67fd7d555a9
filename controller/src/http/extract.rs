//! The API's own `Path` and `Query` extractors: axum's, but a rejection (a path segment or
//! query string that does not parse, a missing query field) comes back as the API's JSON
//! error with a 400 and what to change, instead of axum's plain-text body. Handlers that want
//! a route-specific message still take `Result<axum::extract::Query<T>, QueryRejection>`.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::http::error::ApiError;

/// Path parameters; a rejection is a JSON 400.
pub struct Path<T>(pub T);

/// Query parameters; a rejection is a JSON 400.
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Path<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|e| {
                ApiError::BadRequest(format!(
                    "{}; fix the URL path (every route's parameters are in /api/openapi.json)",
                    e.body_text()
                ))
            })
    }
}

impl<S, T> FromRequestParts<S> for Query<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e| {
                ApiError::BadRequest(format!(
                    "{}; fix the query string (every route's parameters are in /api/openapi.json)",
                    e.body_text()
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::routing::get;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Q {
        #[allow(dead_code)]
        stack: String,
    }

    #[tokio::test]
    async fn rejections_are_json_errors_that_say_what_to_fix() {
        let app = Router::new()
            .route("/q", get(|Query(_): Query<Q>| async { "ok" }))
            .route("/p/{n}", get(|Path(_): Path<u64>| async { "ok" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        for (path, says) in [
            ("/q", "missing field `stack`; fix the query string"),
            ("/p/x", "fix the URL path"),
        ] {
            let resp = reqwest::get(format!("{base}{path}")).await.unwrap();
            assert_eq!(resp.status(), 400, "{path}");
            assert_eq!(resp.headers()["content-type"], "application/json", "{path}");
            let body: serde_json::Value = resp.json().await.unwrap();
            let msg = body["error"].as_str().unwrap();
            assert!(msg.contains(says), "{path}: {msg}");
        }
        let ok = reqwest::get(format!("{base}/q?stack=s")).await.unwrap();
        assert_eq!(ok.status(), 200);
    }
}
