//! `edgefleet audit verify --data-dir DIR [--against FILE [--key KEY]]`: reads the store file
//! itself (read-only, so it works with the gateway stopped), walks the chain, and with
//! `--against` checks a signed head saved earlier: its signature with the controller's public
//! key, then that the chain still holds that record with exactly that hash. A chain that
//! verifies is reported with its head signed by the data dir's key, ready to be saved.
//!
//! The walk alone cannot see the newest records cut off, nor a chain rewritten and rehashed
//! from the first change to the end; a saved head can (see ARCHITECTURE.md, "Audit log").

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use edgefleet_domain::audit::{BadRecord, Verification, check_saved_head};
use edgefleet_protocol::audit_head::{self, SignedAuditHead};
use edgefleet_protocol::signing::{VerifyingKey, parse_public_key};
use edgefleet_store::audit::{
    first_connection, head_connection, record_connection, verify_connection,
};
use serde::Serialize;

/// The largest saved head read (a real one is about 300 bytes).
const MAX_HEAD_FILE: u64 = 64 * 1024;

/// What was found, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub verification: Verification,
    /// The head the walk reached, signed with the data dir's key (`null` if the chain or the
    /// saved head does not hold, or the key cannot be read: see `signed_head_unavailable`).
    pub signed_head: Option<SignedAuditHead>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed_head_unavailable: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub against: Option<Against>,
}

/// The check against a saved head.
#[derive(Debug, Serialize)]
pub struct Against {
    pub file: String,
    pub seq: u64,
    pub hash: String,
    pub ts: String,
    pub key_id: String,
    /// Whether the chain still holds the saved head.
    pub holds: bool,
    pub problem: Option<BadRecord>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.verification.ok && self.against.as_ref().is_none_or(|a| a.holds)
    }

    /// What went wrong, in one paragraph (the error of a failed run).
    fn failure(&self) -> String {
        let mut out = Vec::new();
        if let Some(Against {
            problem: Some(bad),
            file,
            ..
        }) = &self.against
        {
            out.push(format!(
                "audit log TAMPERED against the saved head {file}: {}",
                bad.reason
            ));
        }
        let v = &self.verification;
        if let Some(bad) = &v.first_bad {
            out.push(format!(
                "audit log TAMPERED: first bad record is #{}: {} ({} record(s) before it verify; their head is #{} {})",
                bad.seq, bad.reason, v.records, v.head_seq, v.head_hash
            ));
        }
        out.join("\n")
    }

    /// What a person reads on success.
    fn human(&self) -> String {
        let v = &self.verification;
        let mut out = format!(
            "audit log OK: {} record(s), chain intact\nhead: #{} {}",
            v.records, v.head_seq, v.head_hash
        );
        if let Some(a) = &self.against {
            out.push_str(&format!(
                "\nsaved head #{} (signed {}, key {}) from {}: still in the chain, unchanged",
                a.seq, a.ts, a.key_id, a.file
            ));
        }
        match (&self.signed_head, &self.signed_head_unavailable) {
            (Some(head), _) => out.push_str(&format!(
                "\nsigned head: {}\n(save the signed head outside the gateway; `edgefleet audit verify --against FILE` later shows whether records were cut off or the chain rewritten)",
                String::from_utf8_lossy(&head.encode())
            )),
            (None, Some(why)) => out.push_str(&format!("\nsigned head: not available ({why})")),
            (None, None) => {}
        }
        out
    }
}

/// A failed run: its message, and with `--json` the whole report (printed instead of
/// `{"error": …}`, with a non-zero exit).
#[derive(Debug)]
pub struct Failed {
    pub message: String,
    pub json: Option<String>,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failed {}

fn schema_hint(data_dir: &Path) -> String {
    format!(
        "is {} an edgefleet store of schema 4 or later? (start the gateway once to migrate it)",
        data_dir.join("edgefleet.db").display()
    )
}

/// The key to check a saved head with: `--key` (base64 text, or a file holding it), else the
/// data dir's public key.
fn trusted_key(data_dir: &Path, key: Option<&str>) -> anyhow::Result<VerifyingKey> {
    let (text, from) = match key {
        Some(k) if Path::new(k).is_file() => (
            std::fs::read_to_string(k).with_context(|| format!("cannot read --key {k}"))?,
            format!("--key {k}"),
        ),
        Some(k) => (
            k.to_owned(),
            format!("--key {k} (neither a file nor base64 text)"),
        ),
        None => {
            let path = edgefleet_controller::services::keys::public_key_path(data_dir);
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "cannot read the controller's public key {}: give it with --key (base64, or a file)",
                    path.display()
                )
            })?;
            (text, path.display().to_string())
        }
    };
    parse_public_key(&text).map_err(|e| anyhow!("{from}: not the controller's public key: {e}"))
}

/// Reads and checks a saved head's signature (a refused one is an error: nothing in it can
/// be trusted).
fn saved_head(file: &Path, key: &VerifyingKey) -> anyhow::Result<SignedAuditHead> {
    let len = std::fs::metadata(file)
        .with_context(|| format!("cannot read the saved head {}", file.display()))?
        .len();
    if len > MAX_HEAD_FILE {
        bail!(
            "{} has {len} bytes: a saved audit head is one small JSON document (`edgefleet --json audit head > FILE`)",
            file.display()
        );
    }
    let bytes = std::fs::read(file)
        .with_context(|| format!("cannot read the saved head {}", file.display()))?;
    audit_head::verify(key, &bytes)
        .map_err(|e| anyhow!("the saved head {} is refused: {e}", file.display()))
}

/// Runs the checks; returns what to print, or a [`Failed`] error.
pub fn run(
    data_dir: &Path,
    against: Option<&PathBuf>,
    key: Option<&str>,
    json: bool,
) -> anyhow::Result<String> {
    let db = data_dir.join("edgefleet.db");
    if !db.exists() {
        bail!(
            "no store at {}: point --data-dir at the gateway's data directory",
            db.display()
        );
    }
    let conn = edgefleet_store::open_read_only(&db)
        .with_context(|| format!("cannot open {} read-only", db.display()))?;
    let trusted = trusted_key(data_dir, key);
    let saved = match against {
        Some(file) => Some((
            file,
            saved_head(file, trusted.as_ref().map_err(|e| anyhow!("{e:#}"))?)?,
        )),
        None => None,
    };
    // The key also checks the retention checkpoint a pruned log starts with.
    let trusted = trusted.ok();
    let against = match saved {
        None => None,
        Some((file, head)) => {
            let found = record_connection(&conn, head.seq)
                .map_err(|e| anyhow!("{e}: {}", schema_hint(data_dir)))?;
            let (current, _) =
                head_connection(&conn).map_err(|e| anyhow!("{e}: {}", schema_hint(data_dir)))?;
            let oldest = first_connection(&conn)
                .map_err(|e| anyhow!("{e}: {}", schema_hint(data_dir)))?
                .map_or(1, |r| r.seq);
            let problem = check_saved_head(
                head.seq,
                &head.hash,
                found.as_ref().map(|r| r.hash.as_str()),
                oldest,
                current,
            );
            Some(Against {
                file: file.display().to_string(),
                seq: head.seq,
                hash: head.hash,
                ts: head.ts,
                key_id: head.key_id,
                holds: problem.is_none(),
                problem,
            })
        }
    };
    let verification = verify_connection(&conn, trusted.as_ref())
        .map_err(|e| anyhow!("{e}: {}", schema_hint(data_dir)))?;
    let mut report = Report {
        verification,
        signed_head: None,
        signed_head_unavailable: None,
        against,
    };
    if report.ok() {
        match edgefleet_controller::services::keys::load_signer(data_dir) {
            Ok(Some(signer)) => {
                let v = &report.verification;
                report.signed_head = Some(SignedAuditHead::sign(
                    &signer,
                    v.head_seq,
                    &v.head_hash,
                    edgefleet_protocol::now_rfc3339(),
                ));
            }
            Ok(None) => {
                report.signed_head_unavailable = Some(format!(
                    "no signing key in {}: `edgefleet audit head` asks the gateway",
                    edgefleet_controller::services::keys::signing_dir(data_dir).display()
                ));
            }
            Err(e) => {
                report.signed_head_unavailable =
                    Some(format!("{e:#}; `edgefleet audit head` asks the gateway"))
            }
        }
    }
    if !report.ok() {
        let message = report.failure();
        let json = json.then(|| {
            let mut v = serde_json::to_value(&report).unwrap_or_default();
            v["error"] = message.clone().into();
            serde_json::to_string_pretty(&v).unwrap_or_default()
        });
        return Err(Failed { message, json }.into());
    }
    Ok(if json {
        serde_json::to_string_pretty(&report).unwrap_or_default()
    } else {
        report.human()
    })
}
