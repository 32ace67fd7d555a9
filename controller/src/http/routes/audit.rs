//! The audit log (admin, auditor): list, verify, export, and its signed head.
//!
//! An export streams: the records up to the head at the time of the request, read from the
//! store's reader a page at a time and written out as they come, so a large log costs
//! neither the gateway's memory nor a long read that would hold other readers up.

use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use edgefleet_domain::audit::{Filter, Record, Verification, parse_since};
use edgefleet_protocol::audit_head::SignedAuditHead;
use edgefleet_store::Store;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::http::error::ApiError;
use crate::services::audit::AuditLog;

fn bad_filter() -> ApiError {
    ApiError::BadRequest("audit filters: ?since=2h|RFC3339&site=lyon&limit=100".into())
}

/// `GET /api/v1/audit?since&site&limit` (newest `limit`, default 100, oldest first).
pub async fn list(
    State(store): State<Store>,
    q: Result<Query<Filter>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(mut f) = q.map_err(|_| bad_filter())?;
    f.limit = Some(f.limit.unwrap_or(100));
    let records = store.audit_records(&f).await?;
    Ok(Json(json!({ "records": records })))
}

/// What `GET /api/v1/audit/verify` answers: the walk, and the head it reached signed now
/// (`null` for a broken chain).
#[derive(Serialize)]
pub struct VerifyAnswer {
    #[serde(flatten)]
    pub verification: Verification,
    pub signed_head: Option<SignedAuditHead>,
}

/// `GET /api/v1/audit/verify`: walks the whole chain.
pub async fn verify(State(audit): State<Arc<AuditLog>>) -> Result<Json<VerifyAnswer>, ApiError> {
    let verification = audit.verify_full().await?;
    let signed_head = audit.sign_verified(&verification);
    Ok(Json(VerifyAnswer {
        verification,
        signed_head,
    }))
}

/// `GET /api/v1/audit/head`: the current head, verified (incrementally) and signed now, to
/// be saved outside the gateway and checked later with `edgefleet audit verify --against`.
/// 409 if the chain does not verify.
pub async fn head(State(audit): State<Arc<AuditLog>>) -> Result<Json<SignedAuditHead>, ApiError> {
    Ok(Json(audit.signed_head().await?))
}

#[derive(Deserialize)]
pub struct ExportQuery {
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    site: Option<String>,
}

/// The export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Json,
}

impl Format {
    pub fn parse(s: &str) -> Result<Format, ApiError> {
        match s {
            "csv" => Ok(Format::Csv),
            "json" => Ok(Format::Json),
            other => Err(ApiError::BadRequest(format!(
                "unknown export format '{other}': use csv or json"
            ))),
        }
    }
}

/// The CSV header of an audit export.
pub const CSV_COLUMNS: [&str; 12] = [
    "seq",
    "ts",
    "actor",
    "role",
    "action",
    "target",
    "site",
    "outcome",
    "status",
    "detail",
    "prev_hash",
    "hash",
];

/// A CSV cell a spreadsheet will not run as a formula: a value starting with `=`, `+`, `-`,
/// `@`, a tab or a carriage return (text a device, a path or a user name can carry) gets a
/// leading `'` (OWASP's advice for CSV injection). The JSON export keeps every value exact.
pub fn csv_cell(v: &str) -> std::borrow::Cow<'_, str> {
    match v.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') => format!("'{v}").into(),
        _ => v.into(),
    }
}

/// Records as CSV lines (with the header first if `header`), cells neutralised
/// ([`csv_cell`]).
pub fn csv_chunk(records: &[Record], header: bool) -> Result<Vec<u8>, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    if header {
        w.write_record(CSV_COLUMNS)?;
    }
    for r in records {
        let status = r.status.map(|s| s.to_string()).unwrap_or_default();
        let seq = r.seq.to_string();
        w.write_record(
            [
                seq.as_str(),
                &r.ts,
                &r.actor,
                &r.role,
                &r.action,
                &r.target,
                &r.site,
                &r.outcome,
                &status,
                &r.detail,
                &r.prev_hash,
                &r.hash,
            ]
            .map(csv_cell)
            .iter()
            .map(|c| c.as_bytes()),
        )?;
    }
    w.into_inner().map_err(|e| e.into_error().into())
}

/// Records as elements of a JSON array (`first`: no leading comma).
fn json_chunk(records: &[Record], first: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, r) in records.iter().enumerate() {
        if !(first && n == 0) {
            out.extend_from_slice(b",");
        }
        out.extend_from_slice(b"\n  ");
        out.extend_from_slice(&serde_json::to_vec(r).unwrap_or_default());
    }
    out
}

struct Export {
    store: Store,
    format: Format,
    since: Option<String>,
    site: Option<String>,
    after: u64,
    upto: u64,
    started: bool,
    done: bool,
}

impl Export {
    /// The next chunk of the body, `None` at the end.
    async fn next(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        if self.done {
            return None;
        }
        let page = match self
            .store
            .audit_export_page(self.after, self.upto, self.since.clone(), self.site.clone())
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("audit export stopped: {e}");
                self.done = true;
                return Some(Err(std::io::Error::other(e.to_string())));
            }
        };
        let first = !self.started;
        self.started = true;
        let last = (page.len() as u64) < edgefleet_store::audit::PAGE;
        if let Some(r) = page.last() {
            self.after = r.seq;
        }
        let mut chunk = match self.format {
            Format::Csv => match csv_chunk(&page, first) {
                Ok(c) => c,
                Err(e) => {
                    self.done = true;
                    return Some(Err(std::io::Error::other(e.to_string())));
                }
            },
            Format::Json => {
                let mut c = if first { b"[".to_vec() } else { Vec::new() };
                c.extend(json_chunk(&page, first));
                c
            }
        };
        if last {
            self.done = true;
            if self.format == Format::Json {
                chunk.extend_from_slice(b"\n]\n");
            }
        }
        Some(Ok(Bytes::from(chunk)))
    }
}

/// `GET /api/v1/audit/export?format=csv|json&since&site`: every matching record, streamed.
pub async fn export(
    State(store): State<Store>,
    q: Result<Query<ExportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) =
        q.map_err(|_| ApiError::BadRequest("export: ?format=csv|json&since=2h&site=lyon".into()))?;
    let format = Format::parse(q.format.as_deref().unwrap_or("json"))?;
    let since = q
        .since
        .as_deref()
        .map(parse_since)
        .transpose()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let (upto, _) = store.audit_head().await?;
    let export = Export {
        store,
        format,
        since,
        site: q.site,
        after: 0,
        upto,
        started: false,
        done: false,
    };
    let body = Body::from_stream(futures_util::stream::unfold(export, |mut e| async move {
        e.next().await.map(|chunk| (chunk, e))
    }));
    let mime = match format {
        Format::Csv => "text/csv; charset=utf-8",
        Format::Json => "application/json",
    };
    Ok(([(header::CONTENT_TYPE, mime)], body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, detail: &str) -> Record {
        Record {
            seq,
            ts: "t".into(),
            actor: "a".into(),
            role: "r".into(),
            action: "x".into(),
            target: "t".into(),
            site: "lyon".into(),
            outcome: "ok".into(),
            status: Some(200),
            detail: detail.into(),
            prev_hash: "p".into(),
            hash: "h".into(),
        }
    }

    #[test]
    fn csv_quotes_what_needs_it_and_json_chunks_make_one_array() {
        let rs = [record(1, "{\"n\":2}"), record(2, "{}")];
        let csv = String::from_utf8(csv_chunk(&rs, true).unwrap()).unwrap();
        assert!(csv.starts_with("seq,ts,actor,"), "{csv}");
        assert!(csv.contains(",\"{\"\"n\"\":2}\","), "{csv}");
        let mut json = b"[".to_vec();
        json.extend(json_chunk(&rs[..1], true));
        json.extend(json_chunk(&rs[1..], false));
        json.extend_from_slice(b"\n]\n");
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v[0]["detail"]["n"], 2);
        assert_eq!(v.as_array().unwrap().len(), 2);
        assert!(Format::parse("xml").is_err());
    }

    #[test]
    fn csv_cells_that_a_spreadsheet_would_run_are_neutralised() {
        for evil in [
            "=HYPERLINK(\"http://x\")",
            "+1+1",
            "-2+3",
            "@SUM(A1)",
            "\tx",
            "\rx",
        ] {
            assert_eq!(csv_cell(evil), format!("'{evil}"), "{evil:?}");
        }
        assert_eq!(csv_cell("press-07"), "press-07");
        assert_eq!(csv_cell(""), "");
        let mut r = record(1, "{}");
        r.target = "=cmd|' /C calc'!A0".into();
        r.actor = "@evil".into();
        let csv = String::from_utf8(csv_chunk(&[r], false).unwrap()).unwrap();
        assert!(csv.contains(",'@evil,"), "{csv}");
        assert!(csv.contains(",'=cmd|' /C calc'!A0,"), "{csv}");
    }
}
