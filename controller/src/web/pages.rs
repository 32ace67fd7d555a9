//! The dashboard's pages, rendered on the server from the same data the API serves, so each
//! is a readable static view without JavaScript. The script (`assets/app.js`) then keeps
//! them live from the event stream and sends changes through the JSON API.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use edgefleet_domain::access::{Caller, Role, deployment_site};
use edgefleet_domain::rollout::engine::{Phase, RolloutState};
use edgefleet_domain::rollout::view::RolloutView;
use edgefleet_domain::selector::Selector;
use edgefleet_store::audit::PageQuery;

use super::html::{esc, frame, seg};
use super::tile::{AlarmLine, Tile, clock};
use super::{page_caller, page_response, stream, to_login};
use crate::http::auth::{Access, access};
use crate::http::routes::deployments::unified_diff;
use crate::http::routes::devices::{LogsQuery, recent_events};
use crate::http::state::ApiState;

type Ctx = State<ApiState>;

/// Whether the caller's role may call `method path` (the API's role table; site scope is
/// checked separately).
fn allowed(caller: &Caller, method: Method, path: &str) -> bool {
    match access(&method, path) {
        Access::Public | Access::Any => true,
        Access::Roles(roles) => roles.contains(&caller.role),
    }
}

fn not_found(caller: &Caller, what: &str) -> Response {
    page_response(
        StatusCode::NOT_FOUND,
        frame(
            "Not found",
            Some(caller),
            "error",
            &format!("<main><p class=\"panel\">{}</p></main>", esc(what)),
        ),
    )
}

fn state_word<T: serde::Serialize>(v: &T, tag: &str) -> String {
    let v = serde_json::to_value(v).unwrap_or_default();
    v.get(tag)
        .and_then(|s| s.as_str())
        .or_else(|| v.as_str())
        .unwrap_or("")
        .to_owned()
}

fn tile_html(t: &Tile) -> String {
    format!(
        "<a class=\"tile st-{st}\" data-tile=\"{id}\" href=\"/devices/{href}\"><span class=\"id\">{id}</span><span class=\"state\">{text}</span><span class=\"rev\">{rev}</span></a>",
        st = t.state.as_str(),
        id = esc(&t.id),
        href = esc(&seg(&t.id)),
        text = esc(&t.text),
        rev = esc(&t.rev),
    )
}

fn counts_html(tiles: &[&Tile]) -> String {
    let mut by: BTreeMap<&str, usize> = BTreeMap::new();
    for t in tiles {
        *by.entry(t.state.as_str()).or_default() += 1;
    }
    let mut s = format!("<span class=\"counts\"><b>{}</b> devices", tiles.len());
    for (state, n) in by {
        s += &format!(" <span class=\"count st-{state}\">{n} {state}</span>");
    }
    s += "</span>";
    s
}

fn alarms_html(alarms: &[AlarmLine]) -> String {
    let mut b = format!(
        "<section class=\"panel alarms\"><h2>Alarms <span id=\"alarm-count\">{}</span></h2><ol id=\"alarm-list\">",
        alarms.len()
    );
    for a in alarms {
        b += &alarm_li(a);
    }
    if alarms.is_empty() {
        b += "<li class=\"none\">No alarms</li>";
    }
    b += "</ol></section>";
    b
}

fn alarm_li(a: &AlarmLine) -> String {
    let sev = state_word(&a.severity, "");
    format!(
        "<li class=\"sev-{sev}\"><span class=\"sev\">{SEV}</span> <a href=\"{href}\">{subject}</a> <span class=\"kind\">{kind}</span> <span class=\"msg\">{msg}</span>{since}</li>",
        SEV = esc(&sev.to_uppercase()),
        href = esc(&a.href),
        subject = esc(&a.subject),
        kind = esc(&a.kind),
        msg = esc(&a.message),
        since = a
            .since
            .as_deref()
            .filter(|_| !a.message.contains("since"))
            .map(|s| format!(" <span class=\"since\">since {}</span>", esc(&clock(s))))
            .unwrap_or_default(),
    )
}

/// `/`: every device the caller may see, as tiles grouped site → area → line, and the alarms.
pub async fn fleet(State(state): Ctx, headers: HeaderMap) -> Response {
    let Some(caller) = page_caller(&state, &headers).await else {
        return to_login("/");
    };
    let rollouts = stream::visible_rollouts(&state.rollouts, &state.deployments, &caller, 20).await;
    let (tiles, alarms) = stream::fleet_snapshot(&state.fleet, &caller, &rollouts);
    type Lines<'a> = BTreeMap<&'a str, Vec<&'a Tile>>;
    let mut groups: BTreeMap<&str, BTreeMap<&str, Lines<'_>>> = BTreeMap::new();
    for t in &tiles {
        groups
            .entry(&t.site)
            .or_default()
            .entry(&t.area)
            .or_default()
            .entry(&t.line)
            .or_default()
            .push(t);
    }
    let mut b = String::from("<main class=\"fleet\">");
    b += &format!(
        "<div class=\"toolbar\"><h1>Fleet {}</h1><a class=\"button\" id=\"compliance-csv\" href=\"/api/v1/reports/compliance?format=csv\" download>Compliance report (CSV)</a></div>",
        counts_html(&tiles.iter().collect::<Vec<_>>())
    );
    b += &alarms_html(&alarms);
    b += "<div id=\"sites\">";
    for (site, areas) in &groups {
        let site_tiles: Vec<&Tile> = tiles.iter().filter(|t| t.site == *site).collect();
        b += &format!(
            "<section class=\"group site\" data-group=\"{g}\"><h2>Site {s} {c}</h2>",
            g = esc(site),
            s = esc(site),
            c = counts_html(&site_tiles)
        );
        for (area, lines) in areas {
            let area_tiles: Vec<&Tile> = site_tiles
                .iter()
                .copied()
                .filter(|t| t.area == *area)
                .collect();
            b += &format!(
                "<section class=\"group area\" data-group=\"{g}\"><h3>Area {a} {c}</h3>",
                g = esc(&format!("{site}\u{1f}{area}")),
                a = esc(area),
                c = counts_html(&area_tiles)
            );
            for (line, lt) in lines {
                b += &format!(
                    "<section class=\"group line\" data-group=\"{g}\"><h4>Line {l} {c}</h4><div class=\"tiles\">",
                    g = esc(&format!("{site}\u{1f}{area}\u{1f}{line}")),
                    l = esc(line),
                    c = counts_html(lt)
                );
                for t in lt {
                    b += &tile_html(t);
                }
                b += "</div></section>";
            }
            b += "</section>";
        }
        b += "</section>";
    }
    if tiles.is_empty() {
        b += "<p class=\"panel\" id=\"no-devices\">No device has connected yet. Start an agent: <code>edgefleet-agent --id press-07 --broker mqtt://GATEWAY:1883 --labels site=lyon,area=stamping,line=3</code></p>";
    }
    b += "</div></main>";
    page_response(StatusCode::OK, frame("Fleet", Some(&caller), "fleet", &b))
}

/// `/devices/{id}`: labels, agent, every stack and service, recent events.
pub async fn device(State(state): Ctx, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let Some(caller) = page_caller(&state, &headers).await else {
        return to_login(&format!("/devices/{}", seg(&id)));
    };
    let Some(d) = state.fleet.get(&id) else {
        return not_found(&caller, &format!("No device '{id}' has connected yet."));
    };
    if !caller.sees(d.labels.get("site").map(String::as_str)) {
        return not_found(&caller, &format!("Device '{id}' is outside your sites."));
    }
    let now = jiff::Timestamp::now();
    let t = super::tile::tile(&d, now);
    let s = d.summary();
    let mut b = String::from("<main class=\"device\">");
    b += &format!(
        "<div class=\"toolbar\"><h1>Device {}</h1><span class=\"badge st-{}\" data-tile=\"{}\"><span class=\"state\">{}</span></span></div>",
        esc(&d.id),
        t.state.as_str(),
        esc(&d.id),
        esc(&t.text)
    );
    b += "<section class=\"panel facts\"><dl>";
    let mut fact = |k: &str, v: &str| {
        b += &format!("<dt>{}</dt><dd>{}</dd>", esc(k), esc(v));
    };
    for (k, v) in &d.labels {
        fact(&format!("label {k}"), v);
    }
    fact(
        "agent version",
        s.agent_version.as_deref().unwrap_or("unknown"),
    );
    fact("last seen", d.last_seen.as_deref().unwrap_or("never"));
    fact("connection", &state_word(&s.connection, ""));
    fact(
        "desired / observed revision",
        &format!("{} / {}", s.desired_revision, s.observed_revision),
    );
    fact(
        "convergence",
        &s.state.map(|x| state_word(&x, "")).unwrap_or_default(),
    );
    fact("last error", s.last_error.as_deref().unwrap_or("–"));
    b += "</dl></section>";
    b += &variables_panel(&state.deployments.variables_of(&id), &d.unresolved);
    b += "<section class=\"panel\"><h2>Stacks and services</h2><table class=\"services\"><thead><tr><th>stack</th><th>revision</th><th>service</th><th>image</th><th>image id</th><th>state</th><th>health</th><th>restarts</th><th>last error</th><th>logs</th></tr></thead><tbody>";
    let mut any = false;
    if let Some(st) = &d.status {
        for (stack, ss) in &st.stacks {
            for (name, svc) in &ss.services {
                any = true;
                let health = state_word(&svc.health, "");
                b += &format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"mono\">{}</td><td>{}</td><td class=\"h-{}\">{}</td><td>{}</td><td class=\"error\">{}</td><td><a class=\"logs-link\" href=\"/devices/{}/logs?stack={}&amp;service={}\">last 100 lines</a></td></tr>",
                    esc(stack),
                    ss.deployment_revision,
                    esc(name),
                    esc(&svc.image),
                    esc(svc
                        .image_id
                        .as_deref()
                        .map_or("", |i| i.get(..19).unwrap_or(i))),
                    esc(&state_word(&svc.state, "")),
                    esc(&health),
                    esc(&health),
                    svc.restart_count,
                    esc(svc.last_error.as_deref().unwrap_or("")),
                    esc(&seg(&d.id)),
                    esc(&seg(stack)),
                    esc(&seg(name))
                );
            }
        }
    }
    if !any {
        b += "<tr><td colspan=\"10\">No service reported.</td></tr>";
    }
    b += "</tbody></table><p class=\"note\">Logs are read from the device when you ask (a signed request to its agent); nothing is stored.</p></section>";
    b += "<section class=\"panel\"><h2>Recent events</h2><table class=\"events\"><thead><tr><th>time</th><th>severity</th><th>kind</th><th>stack/service</th><th>message</th></tr></thead><tbody>";
    let events = recent_events(&state.store, &id, d.events.iter().cloned().collect())
        .await
        .unwrap_or_default();
    for e in events.iter().rev() {
        let e: &edgefleet_protocol::event::DeviceEvent = e;
        b += &format!(
            "<tr class=\"sev-{sev}\"><td>{}</td><td>{sev}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&e.ts),
            esc(&state_word(&e.kind, "")),
            esc(&format!(
                "{}{}",
                e.stack.as_deref().unwrap_or(""),
                e.service
                    .as_deref()
                    .map(|s| format!("/{s}"))
                    .unwrap_or_default()
            )),
            esc(&e.message),
            sev = esc(&state_word(&e.severity, "")),
        );
    }
    if events.is_empty() {
        b += "<tr><td colspan=\"5\">No events.</td></tr>";
    }
    b += "</tbody></table></section></main>";
    page_response(
        StatusCode::OK,
        frame(&format!("Device {id}"), Some(&caller), "device", &b),
    )
}

/// The device page's variables: for each deployment resolved per device, the variables its
/// file refers to with this device's values and where each comes from (built-ins marked),
/// and the deployments that cannot be resolved for it. Empty when none targets it.
fn variables_panel(
    resolved: &BTreeMap<String, Vec<edgefleet_domain::template::ResolvedVariable>>,
    unresolved: &BTreeMap<String, String>,
) -> String {
    use edgefleet_domain::variables::Source;
    if resolved.is_empty() && unresolved.is_empty() {
        return String::new();
    }
    let mut b = String::from("<section class=\"panel variables\"><h2>Variables</h2>");
    for (dep, why) in unresolved {
        b += &format!(
            "<p class=\"error\">Deployment {} is not resolved for this device, which keeps what it has of it: {}</p>",
            esc(dep),
            esc(why)
        );
    }
    b += "<table class=\"variables\"><thead><tr><th>deployment</th><th>variable</th><th>value</th><th>from</th></tr></thead><tbody>";
    for (dep, vars) in resolved {
        for v in vars {
            let from = match v.source {
                Source::Builtin => "<span class=\"badge\">built-in</span>",
                Source::Device => "this device",
                Source::Site => "its site",
                Source::Apply => "apply",
                Source::Unset => "not set (the file's default, if it has one)",
            };
            b += &format!(
                "<tr class=\"src-{}\"><td>{}</td><td class=\"mono\">{}</td><td class=\"mono\">{}</td><td>{from}</td></tr>",
                state_word(&v.source, ""),
                esc(dep),
                esc(&v.name),
                esc(v.value.as_deref().unwrap_or("–")),
            );
        }
    }
    b += "</tbody></table><p class=\"note\">Resolved for this device: built-ins (its id and labels) cannot be overridden; then its own variables, its site's, and the values given at apply. Set them with <code>edgefleet vars set --device ID</code> or <code>--site SITE</code>.</p></section>";
    b
}

fn apply_form(name: &str, target: &str, compose: &str, locked: bool) -> String {
    format!(
        "<form class=\"panel form\" id=\"apply-form\" data-api=\"apply\" data-default-field=\"compose\"><h2>{title}</h2>\
         <label for=\"apply-name\">Name</label><input id=\"apply-name\" name=\"name\" required value=\"{n}\"{ro}><div class=\"err\" data-for=\"name\"></div>\
         <label for=\"apply-target\">Target</label><input id=\"apply-target\" name=\"target\" required placeholder=\"site=lyon,line=3\" value=\"{t}\"><div class=\"err\" data-for=\"target\"></div>\
         <label for=\"apply-compose\">Compose file</label><textarea id=\"apply-compose\" name=\"compose\" rows=\"14\" required spellcheck=\"false\">{c}</textarea><div class=\"err\" data-for=\"compose\"></div>\
         <button type=\"submit\" id=\"apply-submit\">Apply</button><div class=\"ok\" data-ok></div>\
         <noscript><p class=\"note\">Changes need JavaScript; or use <code>edgefleet apply</code>.</p></noscript></form>",
        title = if locked {
            "Apply a change"
        } else {
            "Apply a deployment"
        },
        n = esc(name),
        ro = if locked { " readonly" } else { "" },
        t = esc(target),
        c = esc(compose),
    )
}

/// `/deployments`: every deployment the caller may see; the apply form for writers.
pub async fn deployments(State(state): Ctx, headers: HeaderMap) -> Response {
    let Some(caller) = page_caller(&state, &headers).await else {
        return to_login("/deployments");
    };
    let rows = match state.store.deployments().await {
        Ok(r) => r,
        Err(e) => return store_error(&caller, &e.to_string()),
    };
    let mut b = String::from(
        "<main><h1>Deployments</h1><section class=\"panel\"><table id=\"deployments\"><thead><tr><th>name</th><th>target</th><th>revision</th><th>updated</th><th>devices</th></tr></thead><tbody>",
    );
    let mut n = 0;
    for d in rows
        .iter()
        .filter(|d| caller.sees(deployment_site(&d.target).as_deref()))
    {
        n += 1;
        let devices = Selector::parse(&d.target)
            .map(|s| state.fleet.targets(&s).len())
            .unwrap_or(0);
        b += &format!(
            "<tr><td><a href=\"/deployments/{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&seg(&d.name)),
            esc(&d.name),
            esc(&d.target),
            d.revision,
            esc(&d.updated_at),
            devices
        );
    }
    if n == 0 {
        b += "<tr><td colspan=\"5\">No deployment yet.</td></tr>";
    }
    b += "</tbody></table></section>";
    b += &violations_panel(&state, &caller);
    if allowed(&caller, Method::POST, "/api/v1/deployments") {
        b += &apply_form(
            "",
            "",
            "services:\n  app:\n    image: registry.plant.local/app:1.0\n",
            false,
        );
    }
    b += "</main>";
    page_response(
        StatusCode::OK,
        frame("Deployments", Some(&caller), "deployments", &b),
    )
}

/// Deployments that break the workload policy their devices run under now (after a policy
/// was tightened): they keep running, and this panel says so until they change. Empty when
/// none is in the caller's sites.
fn violations_panel(state: &ApiState, caller: &Caller) -> String {
    let list: Vec<_> = state
        .deployments
        .violations()
        .into_iter()
        .filter(|v| caller.sees(v.site.as_deref()))
        .collect();
    if list.is_empty() {
        return String::new();
    }
    let mut b = format!(
        "<section class=\"panel err\" id=\"violations\"><h2>{} policy violation(s): still running, not allowed by today's policy</h2><table><thead><tr><th>deployment</th><th>site</th><th>service</th><th>rule</th><th>what</th><th>devices</th></tr></thead><tbody>",
        list.len()
    );
    for v in &list {
        b += &format!(
            "<tr><td><a href=\"/deployments/{}\">{}</a> r{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&seg(&v.deployment)),
            esc(&v.deployment),
            v.revision,
            esc(v.site.as_deref().unwrap_or("-")),
            esc(&v.violation.service),
            esc(&v.violation.rule),
            esc(&v.violation.detail),
            v.devices.len()
        );
    }
    b += "</tbody></table></section>";
    b
}

fn store_error(caller: &Caller, e: &str) -> Response {
    page_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        frame(
            "Error",
            Some(caller),
            "error",
            &format!(
                "<main><p class=\"panel err\">The store could not be read: {}</p></main>",
                esc(e)
            ),
        ),
    )
}

#[derive(Deserialize, Default)]
pub struct DiffQuery {
    #[serde(default)]
    from: Option<u64>,
    #[serde(default)]
    to: Option<u64>,
}

/// `/deployments/{name}`: revisions (who, when), a diff between two, which devices run
/// which revision; the change and rollout forms for writers.
pub async fn deployment(
    State(state): Ctx,
    headers: HeaderMap,
    Path(name): Path<String>,
    q: Result<Query<DiffQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Some(caller) = page_caller(&state, &headers).await else {
        return to_login(&format!("/deployments/{}", seg(&name)));
    };
    let q = q.map(|Query(q)| q).unwrap_or_default();
    let (row, revisions) = match (
        state.store.deployment(&name).await,
        state.store.revisions(&name).await,
    ) {
        (Ok(r), Ok(revs)) => (r, revs),
        (Err(e), _) | (_, Err(e)) => return store_error(&caller, &e.to_string()),
    };
    let Some(row) = row else {
        return not_found(&caller, &format!("No deployment '{name}'."));
    };
    if !caller.sees(deployment_site(&row.target).as_deref()) {
        return not_found(
            &caller,
            &format!("Deployment '{name}' is outside your sites."),
        );
    }
    // Old revisions may have targeted another site (a name deleted there and re-created):
    // neither their Compose files nor their diffs are the caller's to see.
    let revisions: Vec<_> = revisions
        .into_iter()
        .filter(|r| caller.sees(deployment_site(&r.target).as_deref()))
        .collect();
    let current = revisions.iter().find(|r| r.revision == row.revision);
    let compose = current.and_then(|r| r.compose.clone()).unwrap_or_default();
    let mut b = format!(
        "<main class=\"deployment\"><h1>Deployment {}</h1><section class=\"panel facts\"><dl><dt>target</dt><dd>{}</dd><dt>latest revision</dt><dd id=\"latest-revision\">{}</dd><dt>updated</dt><dd>{}</dd></dl></section>",
        esc(&name),
        esc(&row.target),
        row.revision,
        esc(&row.updated_at)
    );
    // Which devices run which revision.
    b += "<section class=\"panel\"><h2>Devices</h2><table id=\"deployment-devices\"><thead><tr><th>device</th><th>state</th><th>running revision</th><th>desired revision</th></tr></thead><tbody>";
    let targets = Selector::parse(&row.target)
        .map(|s| state.fleet.targets(&s))
        .unwrap_or_default();
    let now = jiff::Timestamp::now();
    for id in &targets {
        let Some(d) = state.fleet.get(id) else {
            continue;
        };
        if !caller.sees(d.labels.get("site").map(String::as_str)) {
            continue;
        }
        let t = super::tile::tile(&d, now);
        let running = d
            .status
            .as_ref()
            .and_then(|s| s.stacks.get(&name))
            .map(|s| s.deployment_revision.to_string())
            .unwrap_or_else(|| "–".into());
        let desired = d
            .desired
            .as_ref()
            .and_then(|s| s.stacks.get(&name))
            .map(|s| s.deployment_revision.to_string())
            .unwrap_or_else(|| "–".into());
        b += &format!(
            "<tr><td><a href=\"/devices/{}\">{}</a></td><td><span class=\"badge st-{}\" data-tile=\"{}\"><span class=\"state\">{}</span></span></td><td>{}</td><td>{}</td></tr>",
            esc(&seg(id)),
            esc(id),
            t.state.as_str(),
            esc(id),
            esc(&t.text),
            esc(&running),
            esc(&desired)
        );
    }
    b += "</tbody></table></section>";
    // Revisions and the diff.
    b += "<section class=\"panel\"><h2>Revisions</h2><table id=\"revisions\"><thead><tr><th>revision</th><th>target</th><th>recorded</th><th>by</th></tr></thead><tbody>";
    for r in revisions.iter().rev() {
        b += &format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            r.revision,
            esc(&r.target),
            esc(&r.created_at),
            esc(&r.created_by)
        );
    }
    b += "</tbody></table>";
    let latest = row.revision;
    let from = q.from.unwrap_or(latest.saturating_sub(1).max(1));
    let to = q.to.unwrap_or(latest);
    let options = |sel: u64| -> String {
        revisions
            .iter()
            .map(|r| {
                format!(
                    "<option value=\"{0}\"{1}>{0}</option>",
                    r.revision,
                    if r.revision == sel { " selected" } else { "" }
                )
            })
            .collect()
    };
    b += &format!(
        "<form method=\"get\" class=\"inline\" id=\"diff-form\"><label>Diff from <select name=\"from\">{}</select></label> <label>to <select name=\"to\">{}</select></label> <button type=\"submit\">Show diff</button></form>",
        options(from),
        options(to)
    );
    let revision = |r: u64| revisions.iter().find(|x| x.revision == r);
    if let (Some(a), Some(bb)) = (revision(from), revision(to)) {
        let diff = unified_diff(&name, a, bb);
        b += "<pre class=\"diff\" id=\"diff\">";
        if diff.is_empty() {
            b += "(no difference)";
        }
        for line in diff.lines() {
            let class = match line.chars().next() {
                Some('+') if !line.starts_with("+++") => "add",
                Some('-') if !line.starts_with("---") => "del",
                Some('@') => "hunk",
                _ => "ctx",
            };
            b += &format!("<span class=\"{class}\">{}</span>\n", esc(line));
        }
        b += "</pre>";
    }
    b += "</section>";
    b += &format!(
        "<section class=\"panel\"><h2>Compose file (revision {})</h2><pre id=\"compose\">{}</pre></section>",
        latest,
        esc(&compose)
    );
    if allowed(&caller, Method::POST, "/api/v1/rollouts") {
        let revs: String = revisions
            .iter()
            .rev()
            .map(|r| format!("<option value=\"{0}\">{0}</option>", r.revision))
            .collect();
        b += &format!(
            "<form class=\"panel form\" id=\"rollout-form\" data-api=\"rollout\" data-default-field=\"revision\"><h2>Start a rollout</h2>\
             <input type=\"hidden\" name=\"deployment\" value=\"{n}\">\
             <label for=\"rollout-revision\">Revision</label><select id=\"rollout-revision\" name=\"revision\">{revs}</select><div class=\"err\" data-for=\"revision\"></div>\
             <label for=\"rollout-canary\">Canary devices</label><input id=\"rollout-canary\" name=\"canary\" type=\"number\" min=\"0\" placeholder=\"from the file\"><div class=\"err\" data-for=\"canary\"></div>\
             <label for=\"rollout-batch\">Batch</label><input id=\"rollout-batch\" name=\"batch\" placeholder=\"25% or 2\"><div class=\"err\" data-for=\"batch\"></div>\
             <label for=\"rollout-soak\">Soak</label><input id=\"rollout-soak\" name=\"soak\" placeholder=\"30s\"><div class=\"err\" data-for=\"soak\"></div>\
             <button type=\"submit\" id=\"rollout-submit\">Start rollout</button><div class=\"ok\" data-ok></div></form>",
            n = esc(&name),
        );
        b += &apply_form(&name, &row.target, &compose, true);
    }
    b += "</main>";
    page_response(
        StatusCode::OK,
        frame(
            &format!("Deployment {name}"),
            Some(&caller),
            "deployment",
            &b,
        ),
    )
}

fn rollout_progress(v: &RolloutView) -> String {
    let r = &v.rollout;
    let state = state_word(&r.state, "state");
    let reason = match &r.state {
        RolloutState::Paused { reason } | RolloutState::Failed { reason, .. } => reason.clone(),
        _ => String::new(),
    };
    let mut b = format!(
        "<p class=\"rstate rs-{s}\"><span class=\"state\" id=\"rollout-state\">{S}</span> <span class=\"reason\">{reason}</span></p>\
         <p class=\"progress\">{ok} succeeded · {fail} failed · {fl} in flight · of {all} devices · wave {w} of {ws}</p>",
        s = esc(&state),
        S = esc(&state.to_uppercase()),
        reason = esc(&reason),
        ok = v.succeeded,
        fail = v.failures,
        fl = v.in_flight,
        all = r.devices.len(),
        w = (r.current_wave + 1).min(r.waves.len()),
        ws = r.waves.len(),
    );
    if let Some(w) = &r.waiting {
        b += &format!("<p class=\"waiting\">waiting: {}</p>", esc(w));
    }
    b += "<ol class=\"waves\">";
    for (i, wave) in r.waves.iter().enumerate() {
        b += &format!(
            "<li class=\"wave{}\"><span class=\"wave-name\">{}</span>",
            if i == r.current_wave { " current" } else { "" },
            if i == 0 {
                "Wave 1 (canary)".to_owned()
            } else {
                format!("Wave {}", i + 1)
            }
        );
        for d in wave {
            let (phase, why) = match r.devices.get(d.as_str()) {
                Some(Phase::Failed { reason } | Phase::Skipped { reason }) => (
                    state_word(
                        r.devices.get(d.as_str()).unwrap_or(&Phase::Pending),
                        "phase",
                    ),
                    reason.clone(),
                ),
                Some(p) => (state_word(p, "phase"), String::new()),
                None => ("pending".into(), String::new()),
            };
            b += &format!(
                "<span class=\"dev ph-{p}\" title=\"{why}\">{d}: {p}</span>",
                p = esc(&phase),
                why = esc(&why),
                d = esc(d)
            );
        }
        b += "</li>";
    }
    b += "</ol>";
    b
}

/// `/rollouts`: the newest rollouts with their state (live).
pub async fn rollouts(State(state): Ctx, headers: HeaderMap) -> Response {
    let Some(caller) = page_caller(&state, &headers).await else {
        return to_login("/rollouts");
    };
    let list = stream::visible_rollouts(&state.rollouts, &state.deployments, &caller, 200).await;
    let mut b = String::from(
        "<main><h1>Rollouts</h1><section class=\"panel\"><table id=\"rollouts\"><thead><tr><th>id</th><th>deployment</th><th>revisions</th><th>state</th><th>progress</th><th>started by</th></tr></thead><tbody>",
    );
    for v in &list {
        let state = state_word(&v.rollout.state, "state");
        b += &format!(
            "<tr><td><a href=\"/rollouts/{id}\">{id}</a></td><td>{dep}</td><td>{f} → {t}</td><td class=\"rs-{s}\" data-rollout-state=\"{id}\">{S}</td><td data-rollout-progress=\"{id}\">{ok}/{all}</td><td>{by}</td></tr>",
            id = v.id,
            dep = esc(&v.rollout.deployment),
            f = v.rollout.from_revision,
            t = v.rollout.to_revision,
            s = esc(&state),
            S = esc(&state.to_uppercase()),
            ok = v.succeeded,
            all = v.rollout.devices.len(),
            by = esc(&v.created_by),
        );
    }
    if list.is_empty() {
        b += "<tr><td colspan=\"6\">No rollout yet. Start one from a deployment's page.</td></tr>";
    }
    b += "</tbody></table></section></main>";
    page_response(
        StatusCode::OK,
        frame("Rollouts", Some(&caller), "rollouts", &b),
    )
}

/// `/rollouts/{id}`: wave-by-wave progress (live) and the operator's controls.
pub async fn rollout(State(state): Ctx, headers: HeaderMap, Path(id): Path<u64>) -> Response {
    let Some(caller) = page_caller(&state, &headers).await else {
        return to_login(&format!("/rollouts/{id}"));
    };
    let Ok(v) = state.rollouts.get(id).await else {
        return not_found(&caller, &format!("No rollout {id}."));
    };
    let site = state
        .deployments
        .site_of(&v.rollout.deployment)
        .await
        .ok()
        .flatten();
    if !caller.sees(site.as_deref()) {
        return not_found(&caller, &format!("Rollout {id} is outside your sites."));
    }
    let mut b = format!(
        "<main class=\"rollout\"><h1>Rollout {id}: <a href=\"/deployments/{}\">{}</a> revision {} → {}</h1><p class=\"note\">started by {}</p>",
        esc(&seg(&v.rollout.deployment)),
        esc(&v.rollout.deployment),
        v.rollout.from_revision,
        v.rollout.to_revision,
        esc(&v.created_by)
    );
    if allowed(
        &caller,
        Method::POST,
        &format!("/api/v1/rollouts/{id}/pause"),
    ) {
        b += "<div class=\"panel controls\" id=\"controls\">";
        // Only the controls that mean something in the rollout's state (as rendered; the API
        // refuses the rest anyway). A finished rollout can still be rolled back.
        let actions: &[(&str, &str)] = match &v.rollout.state {
            RolloutState::Running => &[
                ("pause", "Pause"),
                ("abort", "Abort"),
                ("rollback", "Roll back"),
            ],
            RolloutState::Paused { .. } => &[
                ("resume", "Resume"),
                ("abort", "Abort"),
                ("rollback", "Roll back"),
            ],
            _ => &[("rollback", "Roll back")],
        };
        for &(action, label) in actions {
            b += &format!(
                "<button type=\"button\" data-control=\"{action}\" data-rollout=\"{id}\" id=\"control-{action}\">{label}</button>"
            );
        }
        b += "<div class=\"err\" data-for=\"control\"></div><div class=\"ok\" data-ok></div></div>";
    }
    b += &format!(
        "<section class=\"panel\" id=\"rollout-live\" data-rollout=\"{id}\">{}</section></main>",
        rollout_progress(&v)
    );
    page_response(
        StatusCode::OK,
        frame(&format!("Rollout {id}"), Some(&caller), "rollout", &b),
    )
}

#[derive(Deserialize, Default)]
pub struct AuditQuery {
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    site: Option<String>,
    /// Text searched in actor, action, target, site, outcome and detail.
    #[serde(default)]
    q: Option<String>,
    #[serde(default)]
    limit: Option<u64>,
    /// Only records older than this `seq` (the next page).
    #[serde(default)]
    before: Option<u64>,
}

/// `/audit` (admin, auditor): the audit log, searchable and paged (newest first); the
/// chain's verification (incremental: only the records since the last check are walked);
/// exports.
pub async fn audit(
    State(state): Ctx,
    headers: HeaderMap,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Some(caller) = page_caller(&state, &headers).await else {
        return to_login("/audit");
    };
    if !matches!(caller.role, Role::Admin | Role::Auditor) {
        return page_response(
            StatusCode::FORBIDDEN,
            frame(
                "Audit",
                Some(&caller),
                "audit",
                "<main><p class=\"panel err\">The audit log needs the role admin or auditor.</p></main>",
            ),
        );
    }
    let q = q.map(|Query(q)| q).unwrap_or_default();
    let nonempty = |s: &Option<String>| s.clone().filter(|s| !s.trim().is_empty());
    let since = nonempty(&q.since);
    let site = nonempty(&q.site);
    let text = nonempty(&q.q);
    let limit = q.limit.unwrap_or(200).clamp(1, 10_000);
    let page = PageQuery {
        since: since.clone(),
        site: site.clone(),
        text,
        before: q.before,
        limit,
    };
    let (records, since_error) = match state.store.audit_page(page).await {
        Ok(r) => (r, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let verify = match state.audit.verify_incremental().await {
        Ok(v) if v.ok => format!(
            "Chain verified: {} records, head #{} {}",
            v.records,
            v.head_seq,
            v.head_hash.get(..16).unwrap_or(&v.head_hash)
        ),
        Ok(v) => format!(
            "CHAIN BROKEN: {}",
            serde_json::to_string(&v).unwrap_or_default()
        ),
        Err(e) => format!("cannot verify: {e}"),
    };
    let mut b = String::from("<main class=\"audit\"><div class=\"toolbar\"><h1>Audit log</h1>");
    b += "<div class=\"actions\"><a class=\"button\" href=\"/api/v1/audit/export?format=csv\" download>Export CSV</a> <a class=\"button\" id=\"compliance-csv\" href=\"/api/v1/reports/compliance?format=csv\" download>Compliance report (CSV)</a> <a class=\"button\" href=\"/api/v1/reports/compliance?format=json\">Compliance (JSON)</a></div></div>";
    b += &format!(
        "<p class=\"panel verify\" id=\"verify\">{}</p>",
        esc(&verify)
    );
    let v = |s: &Option<String>| esc(s.as_deref().unwrap_or(""));
    b += &format!(
        "<form method=\"get\" class=\"panel inline\" id=\"audit-form\">\
         <label>Search <input name=\"q\" value=\"{}\" placeholder=\"deployment.apply, ana, web…\"></label>\
         <label>Since <input name=\"since\" value=\"{}\" placeholder=\"2h or 2026-11-27T08:00:00Z\"></label>\
         <label>Site <input name=\"site\" value=\"{}\"></label>\
         <label>Limit <input name=\"limit\" type=\"number\" min=\"1\" value=\"{limit}\"></label>\
         <button type=\"submit\">Search</button>{}</form>",
        v(&q.q),
        v(&q.since),
        v(&q.site),
        since_error
            .map(|e| format!("<div class=\"err\" data-for=\"since\">{}</div>", esc(&e)))
            .unwrap_or_default()
    );
    b += "<section class=\"panel\"><table id=\"audit\"><thead><tr><th>#</th><th>time</th><th>actor</th><th>role</th><th>action</th><th>target</th><th>site</th><th>outcome</th><th>detail</th></tr></thead><tbody>";
    for r in &records {
        b += &format!(
            "<tr class=\"out-{o}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{o}{}</td><td class=\"mono\">{}</td></tr>",
            r.seq,
            esc(&r.ts),
            esc(&r.actor),
            esc(&r.role),
            esc(&r.action),
            esc(&r.target),
            esc(&r.site),
            r.status.map(|s| format!(" ({s})")).unwrap_or_default(),
            esc(&r.detail),
            o = esc(&r.outcome),
        );
    }
    if records.is_empty() {
        b += "<tr><td colspan=\"9\">No matching record.</td></tr>";
    }
    b += "</tbody></table>";
    if let Some(oldest) = records.last().filter(|_| records.len() as u64 == limit) {
        let param = |k: &str, v: &Option<String>| {
            v.as_deref()
                .map(|v| format!("&{k}={}", super::html::url_component(v)))
                .unwrap_or_default()
        };
        b += &format!(
            "<p><a class=\"button\" id=\"audit-older\" href=\"/audit?limit={limit}&before={}{}{}{}\">Older records</a></p>",
            oldest.seq,
            esc(&param("q", &q.q)),
            esc(&param("since", &since)),
            esc(&param("site", &site)),
        );
    }
    b += "</section></main>";
    page_response(StatusCode::OK, frame("Audit", Some(&caller), "audit", &b))
}

/// `/devices/{id}/logs?stack&service&tail`: a service's last lines, asked of the agent now.
pub async fn device_logs(
    State(state): Ctx,
    headers: HeaderMap,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<LogsQuery>,
) -> Response {
    let back = format!(
        "/devices/{}/logs?stack={}&service={}",
        seg(&id),
        seg(&q.stack),
        seg(&q.service)
    );
    let Some(caller) = page_caller(&state, &headers).await else {
        return to_login(&back);
    };
    let site = state.fleet.site_of(&id);
    if !caller.sees(site.as_deref()) {
        return not_found(&caller, &format!("Device '{id}' is outside your sites."));
    }
    let tail = q.tail.unwrap_or(100);
    let mut b = format!(
        "<main class=\"logs\"><h1><a href=\"/devices/{}\">{}</a> · {} / {}: last {tail} lines</h1>",
        esc(&seg(&id)),
        esc(&id),
        esc(&q.stack),
        esc(&q.service)
    );
    match state
        .commands
        .device_logs(&id, &q.stack, &q.service, tail)
        .await
    {
        Ok(lines) if lines.is_empty() => {
            b += "<p class=\"panel\" id=\"logs-empty\">The container has written nothing yet.</p>";
        }
        Ok(lines) => {
            b += "<pre class=\"panel mono\" id=\"logs\">";
            for line in &lines {
                b += &esc(line);
                b += "\n";
            }
            b += "</pre>";
        }
        Err(e) => {
            b += &format!(
                "<p class=\"panel error\" id=\"logs-error\">{}</p>",
                esc(&e.to_string())
            );
        }
    }
    b += "</main>";
    page_response(
        StatusCode::OK,
        frame(&format!("Logs of {id}"), Some(&caller), "fleet", &b),
    )
}
