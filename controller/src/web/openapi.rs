//! `GET /api/openapi.json`: the HTTP API described as OpenAPI 3.1, hand-written
//! (`openapi.json` beside this file, shipped in the binary), with the schema of every success
//! body. Tests read the router sources and fail when an API route or method is missing from
//! it, when it lists a dashboard page (HTML for browsers, not API), or when a 2xx body has no
//! real schema; `scripts/api-conformance` runs schemathesis against a live gateway with it.

use axum::http::header;
use axum::response::{IntoResponse, Response};

pub const DOCUMENT: &str = include_str!("openapi.json");

pub async fn document() -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        DOCUMENT,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(path, methods)` of every `.route("PATH", HANDLERS)` in a router's source.
    fn routes(src: &str) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        let mut rest = src;
        while let Some(i) = rest.find(".route(") {
            rest = &rest[i + ".route(".len()..];
            let Some(q0) = rest.find('"') else { break };
            let after = &rest[q0 + 1..];
            let Some(q1) = after.find('"') else { break };
            let path = after[..q1].to_owned();
            // The handler expression runs to the paren closing `.route(`.
            let mut depth = 1;
            let mut end = 0;
            for (j, c) in after[q1..].char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            end = q1 + j;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let handlers = &after[q1..end];
            let methods = ["get", "post", "put", "delete", "patch"]
                .iter()
                .filter(|m| {
                    handlers
                        .match_indices(&format!("{m}("))
                        .any(|(k, _)| k == 0 || !handlers.as_bytes()[k - 1].is_ascii_alphanumeric())
                })
                .map(|m| m.to_string())
                .collect();
            out.push((path, methods));
            rest = &after[end..];
        }
        out
    }

    #[test]
    fn every_route_of_the_router_is_documented() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).expect("openapi.json parses");
        assert_eq!(doc["openapi"], "3.1.0");
        let mut checked = 0;
        // Every API route is registered in http::router; the dashboard's own `/api/…` routes
        // (stream, report, this document) in web::router, beside its HTML pages.
        for src in [include_str!("../http/mod.rs"), include_str!("mod.rs")] {
            for (path, methods) in routes(src) {
                assert!(!methods.is_empty(), "no method found for route {path}");
                if !path.starts_with("/api/") {
                    continue;
                }
                for m in methods {
                    assert!(
                        doc["paths"][&path][&m].is_object(),
                        "{} {path} is routed but missing from web/openapi.json",
                        m.to_uppercase()
                    );
                    checked += 1;
                }
            }
        }
        assert!(
            checked >= 30,
            "only {checked} routes found: is the parser broken?"
        );
    }

    /// The document describes the API, not the dashboard's pages: a page answers HTML (the
    /// login form without a session), which no API client should rely on.
    #[test]
    fn only_api_routes_are_documented() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).expect("openapi.json parses");
        for path in doc["paths"].as_object().expect("paths").keys() {
            assert!(
                path.starts_with("/api/"),
                "{path} is a dashboard page: leave it out of web/openapi.json"
            );
        }
    }

    /// Every 2xx answer says what its body holds (a schema with properties, a `$ref`, an array
    /// of items, or a documented string), so a client can rely on more than "an object".
    #[test]
    fn every_success_body_has_a_real_schema() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).expect("openapi.json parses");
        let mut bodies = 0;
        for (path, ops) in doc["paths"].as_object().expect("paths") {
            for (method, op) in ops.as_object().expect("operations") {
                let responses = op["responses"].as_object().expect("responses");
                for (code, resp) in responses {
                    if !code.starts_with('2') || code == "204" {
                        continue;
                    }
                    let content = resp["content"].as_object().unwrap_or_else(|| {
                        panic!("{method} {path} {code}: no content (say what the body holds)")
                    });
                    for (mime, media) in content {
                        let s = &media["schema"];
                        let real = s.get("$ref").is_some()
                            || s.get("allOf").is_some()
                            || s.get("properties").is_some()
                            || s.get("items").is_some()
                            || (s["type"] == "string" && mime != "application/json");
                        assert!(real, "{method} {path} {code} {mime}: a bare schema {s}");
                        bodies += 1;
                    }
                }
            }
        }
        assert!(bodies >= 30, "only {bodies} bodies found");
        // Every `$ref` resolves.
        let text = DOCUMENT;
        for (i, _) in text.match_indices("\"#/components/schemas/") {
            let name: String = text[i + 22..].chars().take_while(|c| *c != '"').collect();
            assert!(
                doc["components"]["schemas"][&name].is_object(),
                "$ref to a missing schema {name}"
            );
        }
    }

    #[test]
    fn the_route_parser_reads_methods() {
        let src =
            r#".route("/a/{x}", get(one).delete(two)) .route("/b", axum::routing::post(three))"#;
        assert_eq!(
            routes(src),
            vec![
                (
                    "/a/{x}".to_owned(),
                    vec!["get".to_owned(), "delete".to_owned()]
                ),
                ("/b".to_owned(), vec!["post".to_owned()]),
            ]
        );
    }
}
