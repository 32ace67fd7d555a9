//! What client commands print: tables (comfy-table) and sentences made from the API's JSON.
//! `--json` prints the JSON itself instead.

use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use serde_json::Value;

/// ` of lyon,paris` for scoped users.
pub fn scope(v: &Value) -> String {
    let sites = list(v, "sites");
    if sites.is_empty() {
        String::new()
    } else {
        format!(" of {}", sites.join(","))
    }
}

/// `edgefleet audit head`: the signed head, and the JSON line to save.
pub fn render_audit_head(v: &Value) -> String {
    format!(
        "audit head: #{} {}, verified and signed {} by controller key {}\n{}\n(save that JSON line outside the gateway; `edgefleet audit verify --data-dir DIR --against FILE` later shows whether records were cut off or the chain rewritten)",
        n(v, "seq"),
        s(v, "hash"),
        s(v, "ts"),
        s(v, "key_id"),
        v
    )
}

pub fn render_audit(v: &Value) -> String {
    let mut t = table(&[
        "SEQ", "TIME", "ACTOR", "ACTION", "TARGET", "SITE", "OUTCOME", "DETAIL",
    ]);
    let all = v
        .get("records")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for r in &all {
        let outcome = match r.get("status").and_then(Value::as_u64) {
            Some(code) => format!("{} {code}", s(r, "outcome")),
            None => s(r, "outcome").to_owned(),
        };
        let detail = r
            .get("detail")
            .map(|d| match d.get("error").and_then(Value::as_str) {
                Some(e) => e.to_owned(),
                None => d.to_string(),
            })
            .unwrap_or_default();
        t.add_row(vec![
            n(r, "seq").to_string(),
            s(r, "ts").to_owned(),
            s(r, "actor").to_owned(),
            s(r, "action").to_owned(),
            s(r, "target").to_owned(),
            s(r, "site").to_owned(),
            outcome,
            detail.chars().take(80).collect(),
        ]);
    }
    format!("{t}\n{} record(s)", all.len())
}

pub fn render_tokens(v: &Value) -> String {
    let mut t = table(&["USER", "NAME", "CREATED", "EXPIRES"]);
    let all = v
        .get("tokens")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for r in &all {
        t.add_row(vec![
            s(r, "username").to_owned(),
            s(r, "name").to_owned(),
            s(r, "created_at").to_owned(),
            s(r, "expires_at").to_owned(),
        ]);
    }
    format!(
        "{t}\n{} token(s); revoke one with 'edgefleet token revoke NAME'",
        all.len()
    )
}

pub fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("-")
}

pub fn n(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

pub fn list(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

pub fn labels(v: &Value) -> String {
    v.get("labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(header.to_vec());
    t
}

pub fn render_apply(v: &Value) -> String {
    let devices = list(v, "devices");
    let held = list(v, "held");
    let dry = v.get("dry_run").and_then(Value::as_bool).unwrap_or(false);
    let changed = v.get("changed").and_then(Value::as_bool).unwrap_or(false);
    let what = match (dry, changed) {
        (false, true) => format!("revision {} recorded", n(v, "revision")),
        (true, true) => format!(
            "dry run, nothing recorded or sent: would record revision {}",
            n(v, "revision")
        ),
        (_, false) => format!("unchanged (still revision {})", n(v, "revision")),
    };
    let held = if held.is_empty() {
        String::new()
    } else {
        format!(
            "; {} {} on their current revision until a rollout moves them: {}",
            held.len(),
            if dry { "would be held" } else { "held" },
            held.join(", ")
        )
    };
    let unknown = list(v, "architecture_unknown");
    let unknown = if unknown.is_empty() {
        String::new()
    } else {
        format!(
            "; architecture unknown (never reported, 'platform' not checked): {}",
            unknown.join(", ")
        )
    };
    format!(
        "deployment {}: {what}; target '{}' matches {} device(s){}{}{held}{unknown}",
        s(v, "name"),
        s(v, "target"),
        devices.len(),
        if devices.is_empty() { "" } else { ": " },
        devices.join(", ")
    )
}

pub fn connection(d: &Value) -> String {
    match s(d, "connection") {
        "online" => "● online".into(),
        "offline" => "○ OFFLINE".into(),
        other => format!("? {other}"),
    }
}

pub fn render_devices(v: &Value) -> String {
    let mut t = table(&[
        "DEVICE",
        "CONNECTION",
        "REVISION",
        "STATE",
        "SERVICES",
        "LABELS",
        "LAST SEEN",
    ]);
    let devices = v
        .get("devices")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for d in &devices {
        let unhealthy = n(d, "services_unhealthy");
        t.add_row(vec![
            s(d, "id").to_owned(),
            connection(d),
            format!("{}/{}", n(d, "observed_revision"), n(d, "desired_revision")),
            s(d, "state").to_owned(),
            format!(
                "{}/{} running{}",
                n(d, "services_running"),
                n(d, "services_total"),
                if unhealthy > 0 {
                    format!(", {unhealthy} unhealthy")
                } else {
                    String::new()
                }
            ),
            labels(d),
            s(d, "last_seen").to_owned(),
        ]);
    }
    format!("{t}\n{} device(s)", devices.len())
}

pub fn render_device(v: &Value) -> String {
    let mut out = format!(
        "device {}  {}  revision {}/{} ({})  labels: {}\nagent {}  platform {}  last seen {}\n",
        s(v, "id"),
        connection(v),
        n(v, "observed_revision"),
        n(v, "desired_revision"),
        s(v, "state"),
        labels(v),
        s(v, "agent_version"),
        v.get("platform")
            .and_then(Value::as_str)
            .unwrap_or("unknown"),
        s(v, "last_seen"),
    );
    if let Some(err) = v.get("last_error").and_then(Value::as_str) {
        out += &format!("last error: {err}\n");
    }
    let mut t = table(&[
        "STACK",
        "SERVICE",
        "IMAGE",
        "STATE",
        "HEALTH",
        "RESTARTS",
        "CONTAINER",
        "LAST ERROR",
    ]);
    if let Some(stacks) = v.pointer("/status/stacks").and_then(Value::as_object) {
        for (stack, st) in stacks {
            for (svc, sv) in st
                .get("services")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                t.add_row(vec![
                    stack.clone(),
                    svc.clone(),
                    s(sv, "image").to_owned(),
                    s(sv, "state").to_owned(),
                    s(sv, "health").to_owned(),
                    n(sv, "restart_count").to_string(),
                    s(sv, "container_id").chars().take(12).collect(),
                    s(sv, "last_error").to_owned(),
                ]);
            }
        }
    }
    out += &t.to_string();
    let events = v
        .get("events")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if !events.is_empty() {
        out += "\n\nrecent events:\n";
        for e in events.iter().rev().take(10).rev() {
            out += &format!(
                "  {} {:<8} {:<16} {}\n",
                s(e, "ts"),
                s(e, "severity"),
                s(e, "kind"),
                s(e, "message")
            );
        }
    }
    out
}

pub fn render_deployments(v: &Value) -> String {
    let mut t = table(&["NAME", "REVISION", "TARGET", "DEVICES", "UPDATED"]);
    let deps = v
        .get("deployments")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for d in &deps {
        t.add_row(vec![
            s(d, "name").to_owned(),
            n(d, "revision").to_string(),
            s(d, "target").to_owned(),
            list(d, "devices").len().to_string(),
            s(d, "updated_at").to_owned(),
        ]);
    }
    format!("{t}\n{} deployment(s)", deps.len())
}

pub fn render_deployment(v: &Value) -> String {
    let mut out = format!(
        "deployment {}  revision {}  target '{}'  devices: {}\n",
        s(v, "name"),
        n(v, "revision"),
        s(v, "target"),
        list(v, "devices").join(", ")
    );
    let mut t = table(&["REVISION", "TARGET", "CREATED", "BY"]);
    for r in v
        .get("revisions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        t.add_row(vec![
            n(r, "revision").to_string(),
            s(r, "target").to_owned(),
            s(r, "created_at").to_owned(),
            s(r, "created_by").to_owned(),
        ]);
    }
    out += &t.to_string();
    if let Some(c) = v.get("compose").and_then(Value::as_str) {
        out += &format!("\n\ncompose (revision {}):\n{c}", n(v, "revision"));
    }
    out
}

pub fn render_delete(v: &Value) -> String {
    let devices = list(v, "devices");
    format!(
        "deployment {} deleted; its containers are being removed from {} device(s)",
        s(v, "name"),
        devices.len()
    )
}

pub fn rollout_state(v: &Value) -> String {
    let state = v
        .pointer("/state/state")
        .and_then(Value::as_str)
        .unwrap_or("-");
    match v.pointer("/state/reason").and_then(Value::as_str) {
        Some(r) => format!("{state}: {r}"),
        None => state.to_owned(),
    }
}

pub fn render_rollout(v: &Value) -> String {
    let mut out = format!(
        "rollout {}  {} revision {} → {}  {}\n{} succeeded, {} failed, {} in flight",
        n(v, "id"),
        s(v, "deployment"),
        n(v, "from_revision"),
        n(v, "to_revision"),
        rollout_state(v),
        n(v, "succeeded"),
        n(v, "failures"),
        n(v, "in_flight"),
    );
    if let Some(w) = v.get("waiting").and_then(Value::as_str) {
        out += &format!("\nwaiting: {w}");
    }
    let mut t = table(&["WAVE", "DEVICE", "PHASE", "REASON"]);
    let current = n(v, "current_wave");
    for (i, wave) in v
        .get("waves")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        for d in wave
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            let phase = v
                .pointer(&format!("/devices/{d}"))
                .cloned()
                .unwrap_or_default();
            let label = if i == 0 {
                "canary".to_owned()
            } else {
                format!("{i}{}", if i as u64 == current { " ◀" } else { "" })
            };
            t.add_row(vec![
                label,
                d.to_owned(),
                s(&phase, "phase").to_owned(),
                s(&phase, "reason").to_owned(),
            ]);
        }
    }
    format!("{out}\n{t}")
}

pub fn render_rollouts(v: &Value) -> String {
    let mut t = table(&["ID", "DEPLOYMENT", "REVISIONS", "STATE", "DEVICES", "BY"]);
    let all = v
        .get("rollouts")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for r in &all {
        let devices = r
            .get("devices")
            .and_then(Value::as_object)
            .map_or(0, |m| m.len());
        t.add_row(vec![
            n(r, "id").to_string(),
            s(r, "deployment").to_owned(),
            format!("{} → {}", n(r, "from_revision"), n(r, "to_revision")),
            rollout_state(r),
            devices.to_string(),
            s(r, "created_by").to_owned(),
        ]);
    }
    format!("{t}\n{} rollout(s)", all.len())
}

pub fn render_windows(v: &Value) -> String {
    let mut t = table(&["SITE", "WINDOW", "TIME ZONE", "NOW", "NEXT OPENS"]);
    let all = v
        .get("windows")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for w in &all {
        let open = match w.get("open_now").and_then(Value::as_bool) {
            Some(true) => "open",
            Some(false) => "closed",
            None => "invalid",
        };
        t.add_row(vec![
            s(w, "site").to_owned(),
            s(w, "window").to_owned(),
            s(w, "tz").to_owned(),
            open.to_owned(),
            s(w, "next_open").to_owned(),
        ]);
    }
    format!("{t}\n{} window(s)", all.len())
}

/// A `local` MQTT user's read and write filters as shown after its role, e.g.
/// `; read plant/#; write none` (nothing for other roles, which have no filters).
pub fn grants_shown(user: &Value) -> String {
    let list = |key: &str| match user[key].as_array() {
        None => None,
        Some(filters) if filters.is_empty() => Some("none".to_owned()),
        Some(filters) => Some(
            filters
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" "),
        ),
    };
    match (list("read"), list("write")) {
        (Some(read), Some(write)) => format!("; read {read}; write {write}"),
        _ => String::new(),
    }
}

/// The `--read`/`--write` values as sent: `None` when not given (the gateway's default,
/// every topic outside edgefleet/); `none` alone means no filter at all.
pub fn grant_filters(given: &[String]) -> Option<Vec<String>> {
    match given {
        [] => None,
        [only] if only == "none" => Some(Vec::new()),
        _ => Some(given.to_vec()),
    }
}
