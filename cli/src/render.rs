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
    let head = format!(
        "deployment {}: {what}; target '{}' matches {} device(s){}{}{held}{unknown}",
        s(v, "name"),
        s(v, "target"),
        devices.len(),
        if devices.is_empty() { "" } else { ": " },
        devices.join(", ")
    );
    match v.get("would_run") {
        Some(stack) if !stack.is_null() => format!("{head}\n{}", render_would_run(v, stack)),
        _ => match v.get("would_run_per_device").and_then(Value::as_object) {
            Some(per) if !per.is_empty() => {
                format!("{head}\n{}", render_would_run_per_device(v, per))
            }
            _ => head,
        },
    }
}

/// Devices shown one by one in a dry run resolved per device (`--json` has them all).
const DRY_RUN_DEVICES_SHOWN: usize = 20;

/// A dry run of a file resolved per device: each device's values and stack.
fn render_would_run_per_device(v: &Value, per: &serde_json::Map<String, Value>) -> String {
    let mut out = String::from("resolved per device (built-ins > device > site > apply):");
    for (device, stack) in per.iter().take(DRY_RUN_DEVICES_SHOWN) {
        let vars = v
            .pointer(&format!("/variables_per_device/{device}"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|x| match s(x, "source") {
                        "unset" => format!("{} unset (default)", s(x, "name")),
                        "builtin" => {
                            format!("{}={} (built-in)", s(x, "name"), short(s(x, "value")))
                        }
                        src => format!("{}={} ({src})", s(x, "name"), short(s(x, "value"))),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        out += &format!(
            "\n\ndevice {device}: {vars}\n{}",
            render_would_run(v, stack).replacen("each device would run:\n", "", 1)
        );
    }
    if per.len() > DRY_RUN_DEVICES_SHOWN {
        out += &format!(
            "\n\n… and {} more device(s) (--json shows every one)",
            per.len() - DRY_RUN_DEVICES_SHOWN
        );
    }
    out
}

/// A value cut for a table cell.
fn short(v: &str) -> String {
    match v.char_indices().nth(60) {
        Some((i, _)) => format!("{}…", &v[..i]),
        None => v.to_owned(),
    }
}

/// `vars get|set|unset`: the variables of a scope (or all), and after a change the devices
/// it re-resolved and those that can no longer resolve a deployment.
pub fn render_vars(v: &Value) -> String {
    let rows = items(v, "variables");
    let mut t = table(&["SCOPE", "NAME", "VALUE", "SET BY", "SET AT"]);
    for r in &rows {
        t.add_row(vec![
            s(r, "scope").to_owned(),
            s(r, "name").to_owned(),
            short(s(r, "value")),
            s(r, "set_by").to_owned(),
            s(r, "set_at").to_owned(),
        ]);
    }
    let scope = v.get("scope").and_then(Value::as_str);
    let mut out = match (scope, rows.is_empty()) {
        (Some(scope), true) => format!("{scope}: no variables"),
        (None, true) => "no variables kept for any site or device you may see".to_owned(),
        _ => t.to_string(),
    };
    if let Some(removed) = v.get("removed").and_then(Value::as_array) {
        let names: Vec<&str> = removed.iter().filter_map(Value::as_str).collect();
        out += &if names.is_empty() {
            "\nnothing was set under those names".to_owned()
        } else {
            format!("\nremoved: {}", names.join(", "))
        };
    }
    if v.get("devices").is_some() {
        out += &format!("\n{} device(s) resolved again", list_len(v, "devices"));
    }
    if let Some(unresolved) = v.get("unresolved").and_then(Value::as_object) {
        for (device, deps) in unresolved {
            for (dep, why) in deps.as_object().into_iter().flatten() {
                out += &format!(
                    "\nwarning: {device} keeps what it runs of '{dep}', which it can no longer resolve: {}",
                    why.as_str().unwrap_or_default()
                );
            }
        }
    }
    out
}

/// A dry run's resolved stack: per service what each targeted device would run, then the
/// stack's networks and volumes and the policies that allow it.
fn render_would_run(v: &Value, stack: &Value) -> String {
    let mut t = table(&[
        "SERVICE",
        "IMAGE",
        "ENVIRONMENT (resolved)",
        "PORTS",
        "MOUNTS",
    ]);
    if let Some(services) = stack.get("services").and_then(Value::as_object) {
        for (name, svc) in services {
            let env: Vec<String> = svc
                .get("environment")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, x)| format!("{k}={}", x.as_str().unwrap_or_default()))
                        .collect()
                })
                .unwrap_or_default();
            let ports: Vec<String> = svc
                .get("ports")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .map(|p| match p.get("host_port").and_then(Value::as_u64) {
                            Some(h) => {
                                format!("{h}:{}/{}", n(p, "container_port"), s(p, "protocol"))
                            }
                            None => format!("{}/{}", n(p, "container_port"), s(p, "protocol")),
                        })
                        .collect()
                })
                .unwrap_or_default();
            let mounts: Vec<String> = svc
                .get("volumes")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .map(|m| match s(m, "kind") {
                            "stack" => format!("./{}:{}", s(m, "source"), s(m, "target")),
                            _ => format!("{}:{}", s(m, "source"), s(m, "target")),
                        })
                        .collect()
                })
                .unwrap_or_default();
            t.add_row(vec![
                name.clone(),
                s(svc, "image").to_owned(),
                env.join("\n"),
                ports.join(", "),
                mounts.join("\n"),
            ]);
        }
    }
    let keys = |k: &str| {
        let l: Vec<String> = stack
            .get(k)
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .or_else(|| {
                stack.get(k).and_then(Value::as_array).map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
            })
            .unwrap_or_default();
        if l.is_empty() {
            "none".to_owned()
        } else {
            l.join(", ")
        }
    };
    format!(
        "each device would run:\n{t}\nnetworks: {}; volumes: {}; allowed by: {}",
        keys("networks"),
        keys("volumes"),
        list(v, "policies").join(", ")
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
    let resolved = v
        .get("variables")
        .and_then(Value::as_object)
        .filter(|m| !m.is_empty());
    if let Some(resolved) = resolved {
        let mut t = table(&["DEPLOYMENT", "VARIABLE", "VALUE", "FROM"]);
        for (dep, vars) in resolved {
            for x in vars.as_array().into_iter().flatten() {
                t.add_row(vec![
                    dep.clone(),
                    s(x, "name").to_owned(),
                    x.get("value")
                        .and_then(Value::as_str)
                        .map_or("–".to_owned(), short),
                    match s(x, "source") {
                        "builtin" => "built-in".to_owned(),
                        "unset" => "not set (the file's default, if it has one)".to_owned(),
                        other => other.to_owned(),
                    },
                ]);
            }
        }
        out += &format!("\n\nvariables, as this device resolves them:\n{t}");
    }
    for (dep, why) in v
        .get("unresolved")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        out += &format!(
            "\nNOT RESOLVED: '{dep}' (the device keeps what it has of it): {}",
            why.as_str().unwrap_or_default()
        );
    }
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

/// A workload policy's rules as lines a person reads: every rule, with the baseline's "no"
/// spelled out, so what is allowed is never implied by a missing line.
fn policy_rules(p: &Value) -> Vec<(String, String)> {
    let flag = |k: &str| p.get(k).and_then(Value::as_bool).unwrap_or(false);
    let yes_no = |k: &str| if flag(k) { "allowed" } else { "refused" }.to_owned();
    let req = |k: &str| if flag(k) { "required" } else { "not required" }.to_owned();
    let names = |k: &str, none: &str| {
        let l: Vec<String> = p
            .get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        if l.is_empty() {
            none.to_owned()
        } else {
            l.join(", ")
        }
    };
    let registries = match p.get("registries") {
        None | Some(Value::Null) => "any".to_owned(),
        Some(_) => names("registries", "none"),
    };
    let logs = match p.get("max_log_bytes").and_then(Value::as_u64) {
        Some(b) => format!("at most {} MiB per container", b >> 20),
        None => "no cap beyond the rotation (default 3 × 10 MiB)".to_owned(),
    };
    vec![
        ("registries".into(), registries),
        ("require_digest".into(), req("require_digest")),
        ("privileged".into(), yes_no("privileged")),
        ("host_network".into(), yes_no("host_network")),
        ("devices".into(), names("devices", "none")),
        (
            "host_paths".into(),
            names("host_paths", "none (the stack's own directory only)"),
        ),
        (
            "capabilities".into(),
            names("capabilities", "the baseline set only"),
        ),
        ("unconfined".into(), yes_no("unconfined")),
        ("sysctls".into(), names("sysctls", "the safe set only")),
        (
            "volume_drivers".into(),
            names("volume_drivers", "local only"),
        ),
        ("require_memory_limit".into(), req("require_memory_limit")),
        ("require_cpu_limit".into(), req("require_cpu_limit")),
        ("max_log_size".into(), logs),
    ]
}

fn violation_rows(t: &mut Table, list: &[Value]) {
    for v in list {
        t.add_row(vec![
            format!("{} r{}", s(v, "deployment"), n(v, "revision")),
            s(v, "site").to_owned(),
            s(v, "service").to_owned(),
            s(v, "key").to_owned(),
            s(v, "rule").to_owned(),
            list_len(v, "devices").to_string(),
            s(v, "detail").to_owned(),
        ]);
    }
}

fn list_len(v: &Value, key: &str) -> usize {
    v.get(key).and_then(Value::as_array).map_or(0, Vec::len)
}

/// The array under `key` (empty if absent or not an array).
fn items(v: &Value, key: &str) -> Vec<Value> {
    v.get(key)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

const VIOLATION_HEADER: &[&str] = &[
    "DEPLOYMENT",
    "SITE",
    "SERVICE",
    "KEY",
    "RULE",
    "DEVICES",
    "WHAT",
];

/// `policy get|set|clear`: the policy in force and, after a change, who breaks it now.
pub fn render_policy(v: &Value) -> String {
    let scope = match v.get("site").and_then(Value::as_str) {
        Some(site) => format!("site {site}"),
        None => "fleet default".to_owned(),
    };
    let from = match s(v, "source") {
        "baseline" => "the baseline (no policy set)".to_owned(),
        "fleet" => "the fleet default".to_owned(),
        other
            if Some(other.trim_start_matches("site:")) == v.get("site").and_then(Value::as_str) =>
        {
            "its own policy".to_owned()
        }
        other => other.replace("site:", "site "),
    };
    let by = match v.get("set_by").and_then(Value::as_str) {
        Some(by) => format!(", set by {by} at {}", s(v, "set_at")),
        None => String::new(),
    };
    let mut t = table(&["RULE", "ALLOWED"]);
    for (rule, what) in policy_rules(v.get("policy").unwrap_or(&Value::Null)) {
        t.add_row(vec![rule, what]);
    }
    let mut out = format!("{scope}: runs under {from}{by}\n{t}");
    if let Some(list) = v.get("violations").and_then(Value::as_array) {
        if list.is_empty() {
            out.push_str("\nno deployment breaks it");
        } else {
            let mut t = table(VIOLATION_HEADER);
            violation_rows(&mut t, list);
            out.push_str(&format!(
                "\n{} violation(s) — these keep running (a policy never stops a workload); change them:\n{t}",
                list.len()
            ));
        }
    }
    out
}

/// `policy list`.
pub fn render_registries(v: &Value) -> String {
    let list = items(v, "registries");
    if list.is_empty() {
        return "no registry credentials (set one with 'edgefleet registry set HOST --username U --password-stdin --site SITE')".into();
    }
    let mut t = table(&["REGISTRY", "SITES", "USERNAME", "SET BY", "SET AT"]);
    for r in &list {
        t.add_row(vec![
            s(r, "host").to_owned(),
            registry_scope(r),
            s(r, "username").to_owned(),
            s(r, "set_by").to_owned(),
            s(r, "set_at").to_owned(),
        ]);
    }
    t.to_string()
}

/// The sites a registry credential reaches (`every site` when it names none).
fn registry_scope(v: &Value) -> String {
    let sites = items(v, "sites");
    if sites.is_empty() {
        return "every site".to_owned();
    }
    sites
        .iter()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn render_registry_set(v: &Value) -> String {
    let scope = registry_scope(v);
    format!(
        "registry {}: credential of '{}' set for {scope}; devices get it with their next desired document",
        s(v, "host"),
        s(v, "username")
    )
}

pub fn render_policies(v: &Value) -> String {
    let mut t = table(&["SCOPE", "SET BY", "SET AT", "DIFFERS FROM THE BASELINE IN"]);
    let row = |t: &mut Table, scope: String, p: &Value| {
        let differs: Vec<String> = p
            .get("policy")
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        t.add_row(vec![
            scope,
            s(p, "set_by").to_owned(),
            s(p, "set_at").to_owned(),
            if differs.is_empty() {
                "nothing".into()
            } else {
                differs.join(", ")
            },
        ]);
    };
    if let Some(f) = v.get("fleet").filter(|f| !f.is_null()) {
        row(&mut t, "fleet default".into(), f);
    }
    let sites = items(v, "sites");
    for site in &sites {
        row(&mut t, format!("site {}", s(site, "site")), site);
    }
    format!(
        "{t}\n{} site polic(ies){}; sites without one run under {}",
        sites.len(),
        if v.get("fleet").is_some_and(|f| !f.is_null()) {
            " and a fleet default"
        } else {
            ""
        },
        if v.get("fleet").is_some_and(|f| !f.is_null()) {
            "the fleet default"
        } else {
            "the baseline (no privileged, no host network, devices or host paths, baseline capabilities)"
        }
    )
}

/// `policy check`.
pub fn render_policy_check(v: &Value) -> String {
    let devices = list_len(v, "devices");
    let refusals = items(v, "refusals");
    if refusals.is_empty() {
        return format!(
            "allowed: target '{}' ({devices} device(s)) — every policy it reaches allows the file",
            s(v, "target")
        );
    }
    let mut t = table(&["POLICY", "SERVICE", "KEY", "RULE", "WHAT"]);
    for r in &refusals {
        t.add_row(
            ["policy", "service", "key", "rule", "detail"]
                .map(|k| s(r, k).to_owned())
                .to_vec(),
        );
    }
    format!(
        "refused: target '{}' ({devices} device(s)); apply would refuse it for {} reason(s):\n{t}",
        s(v, "target"),
        refusals.len()
    )
}

/// `policy violations`.
pub fn render_violations(v: &Value) -> String {
    let list = items(v, "violations");
    if list.is_empty() {
        return "no deployment breaks the policy it runs under".into();
    }
    let mut t = table(VIOLATION_HEADER);
    violation_rows(&mut t, &list);
    format!(
        "{t}\n{} violation(s); they keep running until the deployment changes",
        list.len()
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_dry_run_resolved_per_device_shows_each_device() {
        let stack = |ip: &str| {
            json!({ "deployment": "bridge", "deployment_revision": 1, "volumes": [],
                    "services": { "bridge": { "image": "bridge:2", "environment": { "LINE_IP": ip } } } })
        };
        let v = json!({
            "name": "bridge", "revision": 1, "changed": true, "target": "*", "dry_run": true,
            "devices": ["press-07", "press-21"], "held": [], "architecture_unknown": [],
            "policies": ["baseline"],
            "would_run_per_device": { "press-07": stack("10.1.0.1"), "press-21": stack("10.2.0.1") },
            "variables_per_device": {
                "press-07": [
                    { "name": "EDGEFLEET_SITE", "value": "lyon", "source": "builtin" },
                    { "name": "LINE_IP", "value": "10.1.0.1", "source": "site" },
                    { "name": "MODE", "value": null, "source": "unset" }
                ]
            }
        });
        let out = render_apply(&v);
        assert!(out.contains("would record revision 1"), "{out}");
        assert!(
            out.contains("device press-07: EDGEFLEET_SITE=lyon (built-in), LINE_IP=10.1.0.1 (site), MODE unset (default)"),
            "{out}"
        );
        assert!(
            out.contains("LINE_IP=10.2.0.1") && out.contains("device press-21"),
            "{out}"
        );
    }

    #[test]
    fn vars_show_the_scope_and_what_no_longer_resolves() {
        let v = json!({
            "scope": "site:lyon",
            "variables": [{ "scope": "site:lyon", "name": "LINE_IP", "value": "10.1.0.1", "set_by": "ana", "set_at": "t" }],
            "removed": ["TZ"],
            "devices": ["press-07"],
            "unresolved": { "press-08": { "bridge": "device 'press-08': variable 'TZ' is not set" } }
        });
        let out = render_vars(&v);
        assert!(out.contains("LINE_IP") && out.contains("10.1.0.1"), "{out}");
        assert!(out.contains("removed: TZ"), "{out}");
        assert!(out.contains("1 device(s) resolved again"), "{out}");
        assert!(
            out.contains("warning: press-08 keeps what it runs of 'bridge'"),
            "{out}"
        );
        assert_eq!(
            render_vars(&json!({ "scope": "device:press-07", "variables": [] })),
            "device:press-07: no variables"
        );
    }
}
