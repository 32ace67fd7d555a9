//! The client commands: each one a call (or a few) to the HTTP API, rendered for a person
//! or printed as JSON (`--json`). `audit verify` and `acl export` need no gateway: the first
//! reads the store file itself (`--data-dir`, [`crate::audit_verify`]), so it works with the
//! gateway stopped.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use edgefleet_files::Mode;
use serde_json::{Value, json};

use crate::args::*;
use crate::client::{ApiClient, audit_query, read_password, token_file};
use crate::render::*;

/// A Compose file and its variables (`--env-file`, then `--var`, which wins), read here and
/// sent with the request, with the files its configs and secrets name (read relative to the
/// Compose file) and the variables they read from the environment (`--var` and `--env-file`
/// first, then this process's environment, as `docker compose` does).
fn read_compose(a: &ComposeInput) -> anyhow::Result<Value> {
    let compose = if a.file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
            .context("cannot read the Compose file from standard input")?
    } else {
        std::fs::read_to_string(&a.file)
            .with_context(|| format!("cannot read the Compose file {}", a.file.display()))?
    };
    let mut variables = match &a.env_file {
        None => Default::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the env file {}", path.display()))?;
            edgefleet_domain::interpolate::parse_env_file(&text)
                .map_err(|e| anyhow::anyhow!("env file {}: {e}", path.display()))?
        }
    };
    for kv in &a.vars {
        let (k, v) = kv.split_once('=').ok_or_else(|| {
            anyhow::anyhow!("--var {kv:?}: expected KEY=VALUE, e.g. --var TAG=1.4")
        })?;
        edgefleet_domain::interpolate::validate_name(k)
            .map_err(|e| anyhow::anyhow!("--var {kv:?}: {e}"))?;
        variables.insert(k.to_owned(), v.to_owned());
    }
    for var in edgefleet_domain::compose::environment_sources(&compose) {
        if !variables.contains_key(&var)
            && let Ok(value) = std::env::var(&var)
        {
            variables.insert(var, value);
        }
    }
    let base = match a.file.parent() {
        Some(p) if a.file.as_os_str() != "-" && !p.as_os_str().is_empty() => p.to_owned(),
        _ => std::path::PathBuf::from("."),
    };
    let mut files = std::collections::BTreeMap::new();
    for path in edgefleet_domain::compose::file_sources(&compose) {
        let full = if std::path::Path::new(&path).is_absolute() {
            std::path::PathBuf::from(&path)
        } else {
            base.join(&path)
        };
        let text = std::fs::read_to_string(&full).with_context(|| {
            format!(
                "cannot read {} (named by a config or secret of the Compose file; paths are relative to the Compose file)",
                full.display()
            )
        })?;
        files.insert(path, text);
    }
    Ok(json!({ "compose": compose, "variables": variables, "files": files }))
}

/// The API path of the policy a `policy` command means.
fn policy_path(scope: &PolicyScope) -> String {
    match &scope.site {
        Some(site) if !scope.fleet => format!("/api/v1/policies/sites/{site}"),
        _ => "/api/v1/policies/fleet".to_owned(),
    }
}

/// The API path of the variables a `vars` command means.
fn vars_path(site: Option<&str>, device: Option<&str>) -> String {
    match (site, device) {
        (Some(site), _) => format!("/api/v1/variables/sites/{site}"),
        (None, Some(device)) => format!("/api/v1/variables/devices/{device}"),
        (None, None) => "/api/v1/variables".to_owned(),
    }
}

/// `NAME=VALUE` arguments, checked as variable names.
fn name_values(args: &[String]) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let mut out = std::collections::BTreeMap::new();
    for kv in args {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| anyhow!("{kv:?}: expected NAME=VALUE, e.g. LINE_IP=10.1.3.7"))?;
        edgefleet_domain::interpolate::validate_name(k).map_err(|e| anyhow!("{kv:?}: {e}"))?;
        out.insert(k.to_owned(), v.to_owned());
    }
    Ok(out)
}

/// Runs a client command; returns what to print.
pub async fn run_client(cli: &Cli) -> anyhow::Result<String> {
    if let Command::Audit(AuditCommand::Verify {
        data_dir,
        against,
        key,
    }) = &cli.command
    {
        return crate::audit_verify::run(data_dir, against.as_ref(), key.as_deref(), cli.json);
    }
    if let Command::Audit(AuditCommand::Export {
        format,
        since,
        site,
        output,
    }) = &cli.command
    {
        let api = ApiClient::new(&cli.server)?;
        let text = api
            .get_text(&format!(
                "/api/v1/audit/export?format={format}{}",
                audit_query(since, site)
            ))
            .await?;
        return match output {
            Some(path) => {
                std::fs::write(path, &text)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                Ok(if cli.json {
                    json!({ "file": path.display().to_string(), "format": format }).to_string()
                } else {
                    format!("audit export ({format}) written to {}", path.display())
                })
            }
            None => Ok(text.trim_end().to_owned()),
        };
    }
    if let Command::Login(a) = &cli.command {
        return login(cli, a).await;
    }
    if let Command::Acl(AclCommand::Export {
        format,
        integrators,
    }) = &cli.command
    {
        // The rules are the code's own; no gateway needed.
        let _ = format;
        let text = edgefleet_protocol::acl::mosquitto_acl_with_integrators(integrators)
            .map_err(|e| anyhow!("{e}"))?;
        return Ok(if cli.json {
            json!({ "format": "mosquitto", "acl": text }).to_string()
        } else {
            text.trim_end().to_owned()
        });
    }
    if let Command::Integrator(IntegratorCommand::Add { name, out }) = &cli.command {
        let api = ApiClient::new(&cli.server)?;
        let v = api
            .post("/api/v1/integrators", &json!({ "name": name }))
            .await?;
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        edgefleet_files::write_private(&out.join("key.pem"), s(&v, "key_pem").as_bytes())
            .with_context(|| format!("cannot write {}", out.join("key.pem").display()))?;
        for (file, key) in [("cert.pem", "cert_pem"), ("ca.pem", "ca_pem")] {
            edgefleet_files::write_atomic(&out.join(file), s(&v, key).as_bytes(), Mode::Public)
                .with_context(|| format!("cannot write {}", out.join(file).display()))?;
        }
        return Ok(if cli.json {
            json!({
                "name": name, "client_id": v["client_id"], "serial": v["serial"],
                "broker_url": v["broker_url"], "dir": out.display().to_string(),
            })
            .to_string()
        } else {
            format!(
                "integrator {name}: credentials in {} (key.pem is private); connect to {} with client id '{}' (or that id followed by ':' and a suffix)",
                out.display(),
                s(&v, "broker_url"),
                s(&v, "client_id")
            )
        });
    }
    if let Command::Logout = &cli.command {
        return logout(cli).await;
    }
    let api = ApiClient::new(&cli.server)?;
    let (value, human): (Value, fn(&Value) -> String) = match &cli.command {
        Command::Apply(a) => {
            let mut body = read_compose(&a.input)?;
            body["name"] = json!(a.name);
            body["target"] = json!(a.target);
            body["dry_run"] = json!(a.dry_run);
            (api.post("/api/v1/deployments", &body).await?, render_apply)
        }
        Command::Policy(PolicyCommand::Get { scope }) => {
            (api.get(&policy_path(scope)).await?, render_policy)
        }
        Command::Policy(PolicyCommand::List) => {
            (api.get("/api/v1/policies").await?, render_policies)
        }
        Command::Policy(PolicyCommand::Set { scope, file }) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the policy file {}", file.display()))?;
            (
                api.put(&policy_path(scope), &json!({ "policy": text }))
                    .await?,
                render_policy,
            )
        }
        Command::Policy(PolicyCommand::Clear { scope }) => {
            (api.delete(&policy_path(scope)).await?, render_policy)
        }
        Command::Policy(PolicyCommand::Check {
            input,
            target,
            name,
        }) => {
            let mut body = read_compose(input)?;
            body["name"] = json!(name);
            body["target"] = json!(target);
            (
                api.post("/api/v1/policies/check", &body).await?,
                render_policy_check,
            )
        }
        Command::Registry(RegistryCommand::List) => {
            (api.get("/api/v1/registries").await?, render_registries)
        }
        Command::Registry(RegistryCommand::Set {
            host,
            username,
            password_stdin,
            password_file,
            sites,
            all_sites,
        }) => {
            let password = read_password(password_file.as_ref(), *password_stdin)?.ok_or_else(
                || anyhow!("give the password with --password-stdin or --password-file (never on the command line)"),
            )?;
            let body = json!({ "username": username, "password": password, "sites": sites, "all_sites": all_sites });
            (
                api.put(&format!("/api/v1/registries/{host}"), &body)
                    .await?,
                render_registry_set,
            )
        }
        Command::Registry(RegistryCommand::Remove { host }) => (
            api.delete(&format!("/api/v1/registries/{host}")).await?,
            |v: &Value| format!("registry {}: credential removed", s(v, "host")),
        ),
        Command::Vars(VarsCommand::Set { scope, vars }) => (
            api.put(
                &vars_path(scope.site.as_deref(), scope.device.as_deref()),
                &json!({ "variables": name_values(vars)? }),
            )
            .await?,
            render_vars,
        ),
        Command::Vars(VarsCommand::Get { site, device }) => (
            api.get(&vars_path(site.as_deref(), device.as_deref()))
                .await?,
            render_vars,
        ),
        Command::Vars(VarsCommand::Unset { scope, names, all }) => {
            for n in names {
                edgefleet_domain::interpolate::validate_name(n).map_err(|e| anyhow!("{e}"))?;
            }
            let path = vars_path(scope.site.as_deref(), scope.device.as_deref());
            let path = if *all {
                path
            } else {
                format!("{path}?names={}", names.join(","))
            };
            (api.delete(&path).await?, render_vars)
        }
        Command::Policy(PolicyCommand::Violations) => (
            api.get("/api/v1/policies/violations").await?,
            render_violations,
        ),
        Command::Get(GetCommand::Devices) => (api.get("/api/v1/devices").await?, render_devices),
        Command::Get(GetCommand::Device { id }) => (
            api.get(&format!("/api/v1/devices/{id}")).await?,
            render_device,
        ),
        Command::Get(GetCommand::Deployments) => {
            (api.get("/api/v1/deployments").await?, render_deployments)
        }
        Command::Get(GetCommand::Deployment { name }) => (
            api.get(&format!("/api/v1/deployments/{name}")).await?,
            render_deployment,
        ),
        Command::Delete(DeleteCommand::Deployment { name }) => (
            api.delete(&format!("/api/v1/deployments/{name}")).await?,
            render_delete,
        ),
        Command::Rollout(RolloutCommand::Start(r)) => {
            let body = json!({ "deployment": r.deployment, "revision": r.revision, "strategy": r.overrides() });
            (api.post("/api/v1/rollouts", &body).await?, render_rollout)
        }
        Command::Rollout(RolloutCommand::Status { id, watch: false }) => (
            api.get(&format!("/api/v1/rollouts/{id}")).await?,
            render_rollout,
        ),
        Command::Rollout(RolloutCommand::Status { id, watch: true }) => {
            (watch_rollout(&api, *id, cli.json).await?, render_rollout)
        }
        Command::Window(WindowCommand::Set { site, window, tz }) => (
            api.put(
                &format!("/api/v1/windows/{site}"),
                &json!({ "window": window, "tz": tz }),
            )
            .await?,
            |v: &Value| {
                format!(
                    "site {}: maintenance window '{}' ({})",
                    s(v, "site"),
                    s(v, "window"),
                    s(v, "tz")
                )
            },
        ),
        Command::Window(WindowCommand::Clear { site }) => (
            api.delete(&format!("/api/v1/windows/{site}")).await?,
            |v: &Value| format!("site {}: no maintenance window", s(v, "site")),
        ),
        Command::Window(WindowCommand::List) => (api.get("/api/v1/windows").await?, render_windows),
        Command::History {
            deployment,
            diff: Some(revs),
        } => {
            let (from, to) = (
                revs.first().copied().unwrap_or(0),
                revs.get(1).copied().unwrap_or(0),
            );
            (
                api.get(&format!(
                    "/api/v1/deployments/{deployment}/diff?from={from}&to={to}"
                ))
                .await?,
                |v: &Value| {
                    let d = s(v, "diff");
                    if d.is_empty() {
                        "no difference".to_owned()
                    } else {
                        d.to_owned()
                    }
                },
            )
        }
        Command::History {
            deployment,
            diff: None,
        } => (
            api.get(&format!("/api/v1/deployments/{deployment}"))
                .await?,
            render_deployment,
        ),
        Command::Rollout(RolloutCommand::List) => {
            (api.get("/api/v1/rollouts").await?, render_rollouts)
        }
        Command::Rollout(RolloutCommand::Pause { id }) => (
            api.post(&format!("/api/v1/rollouts/{id}/pause"), &json!({}))
                .await?,
            render_rollout,
        ),
        Command::Rollout(RolloutCommand::Resume { id }) => (
            api.post(&format!("/api/v1/rollouts/{id}/resume"), &json!({}))
                .await?,
            render_rollout,
        ),
        Command::Rollout(RolloutCommand::Rollback { id }) => (
            api.post(&format!("/api/v1/rollouts/{id}/rollback"), &json!({}))
                .await?,
            render_rollout,
        ),
        Command::Rollout(RolloutCommand::Abort { id }) => (
            api.post(&format!("/api/v1/rollouts/{id}/abort"), &json!({}))
                .await?,
            render_rollout,
        ),
        Command::Device(DeviceCommand::Add {
            id,
            labels,
            expires,
        }) => (
            api.post(
                &format!("/api/v1/devices/{id}/enroll"),
                &json!({ "labels": labels, "expires": expires }),
            )
            .await?,
            |v: &Value| {
                format!(
                    "enrollment token for {} (valid until {}, works once):\n\n  {}\n\non the device run:\n  edgefleet-agent enroll --token <the token above>\n(it connects to {}; add --url https://HOST:PORT if the device reaches the gateway under another name)",
                    s(v, "device"),
                    s(v, "expires_at"),
                    s(v, "token"),
                    s(v, "enroll_url")
                )
            },
        ),
        Command::Device(DeviceCommand::Label { id, changes }) => (
            api.put(
                &format!("/api/v1/devices/{id}/labels"),
                &label_changes(changes)?,
            )
            .await?,
            |v: &Value| {
                let labels = v["labels"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default();
                format!("{}: labels now {labels}", s(v, "device"))
            },
        ),
        Command::MqttUser(MqttUserCommand::Add {
            name,
            role,
            read,
            write,
        }) => {
            let mut body = json!({ "name": name, "role": role });
            if let Some(read) = grant_filters(read) {
                body["read"] = json!(read);
            }
            if let Some(write) = grant_filters(write) {
                body["write"] = json!(write);
            }
            (api.post("/api/v1/mqtt-users", &body).await?, |v: &Value| {
                format!(
                    "local MQTT user {} (role {}{}) created; its password, shown only now:\n\n  {}\n\nconnect to the gateway's plain listener (--mqtt-listen) with user name {} and this password",
                    s(v, "name"),
                    s(v, "role"),
                    grants_shown(v),
                    s(v, "password"),
                    s(v, "name")
                )
            })
        }
        Command::MqttUser(MqttUserCommand::List) => {
            (api.get("/api/v1/mqtt-users").await?, |v: &Value| {
                let rows: Vec<String> = v
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .map(|u| {
                        format!(
                            "{}  {}{}  (created {} by {})",
                            s(u, "name"),
                            s(u, "role"),
                            grants_shown(u),
                            s(u, "created_at"),
                            s(u, "created_by")
                        )
                    })
                    .collect();
                if rows.is_empty() {
                    "no local MQTT users".to_owned()
                } else {
                    rows.join("\n")
                }
            })
        }
        Command::Integrator(IntegratorCommand::Revoke { name }) => (
            api.post(&format!("/api/v1/integrators/{name}/revoke"), &json!({}))
                .await?,
            |v: &Value| {
                format!(
                    "integrator {}: {} certificate(s) revoked, {} connection(s) closed",
                    s(v, "integrator"),
                    v["certificates_revoked"],
                    v["connections_closed"]
                )
            },
        ),
        Command::MqttUser(MqttUserCommand::Remove { name }) => (
            api.delete(&format!("/api/v1/mqtt-users/{name}")).await?,
            |v: &Value| {
                format!(
                    "local MQTT user {} removed ({} connection(s) closed)",
                    s(v, "name"),
                    v["connections_closed"]
                )
            },
        ),
        Command::Device(DeviceCommand::Revoke { id }) => (
            api.post(&format!("/api/v1/devices/{id}/revoke"), &json!({}))
                .await?,
            |v: &Value| {
                format!(
                    "{} revoked: {} certificate(s) refused from now on, {} live connection(s) closed",
                    s(v, "device"),
                    v["certificates_revoked"],
                    v["connections_closed"]
                )
            },
        ),
        Command::Logs {
            device,
            stack,
            service,
            tail,
        } => (
            api.get(&format!(
                "/api/v1/devices/{device}/logs?stack={stack}&service={service}&tail={tail}"
            ))
            .await?,
            |v: &Value| list(v, "lines").join("\n"),
        ),
        Command::Whoami => (api.get("/api/v1/whoami").await?, |v: &Value| {
            format!(
                "{} ({}{}) — token '{}' valid until {}",
                s(v, "username"),
                s(v, "role"),
                scope(v),
                v.pointer("/token/name")
                    .and_then(Value::as_str)
                    .unwrap_or("-"),
                v.pointer("/token/expires_at")
                    .and_then(Value::as_str)
                    .unwrap_or("-")
            )
        }),
        Command::User(UserCommand::Add {
            name,
            role,
            sites,
            password_stdin,
        }) => {
            let password = read_password(None, *password_stdin)?;
            let body =
                json!({ "username": name, "role": role, "sites": sites, "password": password });
            (api.post("/api/v1/users", &body).await?, |v: &Value| {
                let mut out = format!(
                    "user {} created: {}{}",
                    s(v, "username"),
                    s(v, "role"),
                    scope(v)
                );
                if let Some(p) = v.get("password").and_then(Value::as_str) {
                    out += &format!("\npassword (shown only now, hand it over safely): {p}");
                }
                out
            })
        }
        Command::User(UserCommand::List) => (api.get("/api/v1/users").await?, |v: &Value| {
            let mut t = table(&["USER", "ROLE", "SITES", "CREATED"]);
            let all = v
                .get("users")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for u in &all {
                t.add_row(vec![
                    s(u, "username").to_owned(),
                    s(u, "role").to_owned(),
                    list(u, "sites").join(","),
                    s(u, "created_at").to_owned(),
                ]);
            }
            format!("{t}\n{} user(s)", all.len())
        }),
        Command::User(UserCommand::Remove { name }) => (
            api.delete(&format!("/api/v1/users/{name}")).await?,
            |v: &Value| {
                format!(
                    "user {} removed; their tokens are revoked",
                    s(v, "username")
                )
            },
        ),
        Command::Token(TokenCommand::List { user, all }) => (
            api.get(&format!(
                "/api/v1/tokens?all={all}{}",
                user.as_deref()
                    .map(|u| format!("&user={}", crate::client::q(u)))
                    .unwrap_or_default()
            ))
            .await?,
            render_tokens,
        ),
        Command::Token(TokenCommand::Revoke { name, user }) => (
            api.delete(&format!(
                "/api/v1/tokens/{}{}",
                crate::client::q(name),
                user.as_deref()
                    .map(|u| format!("?user={}", crate::client::q(u)))
                    .unwrap_or_default()
            ))
            .await?,
            |v: &Value| {
                format!(
                    "revoked {} token(s) named '{}' of {}",
                    v["revoked"],
                    s(v, "name"),
                    s(v, "username")
                )
            },
        ),
        Command::Token(TokenCommand::Create { name, expires }) => (
            api.post(
                "/api/v1/tokens",
                &match expires {
                    Some(e) => json!({ "name": name, "expires_in": e }),
                    None => json!({ "name": name }),
                },
            )
            .await?,
            |v: &Value| {
                format!(
                    "token '{}' for {} ({}{}), valid until {} — shown only now:\n{}",
                    s(v, "name"),
                    s(v, "username"),
                    s(v, "role"),
                    scope(v),
                    s(v, "expires_at"),
                    s(v, "token")
                )
            },
        ),
        Command::Audit(AuditCommand::Head) => {
            (api.get("/api/v1/audit/head").await?, render_audit_head)
        }
        Command::Audit(AuditCommand::List { since, site, limit }) => (
            api.get(&format!(
                "/api/v1/audit?limit={limit}{}",
                audit_query(since, site)
            ))
            .await?,
            render_audit,
        ),
        Command::Audit(AuditCommand::Verify { .. } | AuditCommand::Export { .. })
        | Command::Login(_)
        | Command::Logout
        | Command::Integrator(_)
        | Command::Acl(_)
        | Command::Gateway(_)
        | Command::Controller(_)
        | Command::Broker(_) => {
            bail!("not a client command")
        }
    };
    Ok(if cli.json {
        serde_json::to_string_pretty(&value).unwrap_or_default()
    } else {
        human(&value)
    })
}

/// `edgefleet login`: exchanges the password for a session token and stores it (0600).
async fn login(cli: &Cli, a: &LoginArgs) -> anyhow::Result<String> {
    let password = read_password(a.password_file.as_ref(), a.password_stdin)?.ok_or_else(|| {
        anyhow!("give the password with --password-file FILE or --password-stdin (first start: the file is <data-dir>/initial-admin-password)")
    })?;
    let mut api = ApiClient::with_ca(&cli.server, None, a.ca_file.as_deref())?;
    api.login_hint = false;
    let v = api
        .post(
            "/api/v1/login",
            &json!({ "username": a.user, "password": password }),
        )
        .await?;
    let token = v
        .get("token")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("the API answered the login without a token"))?;
    let file = token_file()?;
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    edgefleet_files::write_private(&file, format!("{token}\n").as_bytes())
        .with_context(|| format!("cannot write the token to {}", file.display()))?;
    // Pin the CA the login was checked against, next to the token.
    let pinned = match &a.ca_file {
        Some(ca) if cli.server.starts_with("https://") => {
            let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
            let dest = crate::client::ca_file()?;
            edgefleet_files::write_atomic(&dest, &pem, Mode::Public)
                .with_context(|| format!("cannot write the pinned CA to {}", dest.display()))?;
            Some(dest)
        }
        _ => None,
    };
    let mut shown = v.clone();
    if let Some(m) = shown.as_object_mut() {
        m.remove("token");
        m.insert("token_file".into(), json!(file.display().to_string()));
        if let Some(p) = &pinned {
            m.insert("ca_file".into(), json!(p.display().to_string()));
        }
    }
    Ok(if cli.json {
        serde_json::to_string_pretty(&shown).unwrap_or_default()
    } else {
        let mut out = format!(
            "logged in to {} as {} ({}{}) until {}; token saved in {}",
            cli.server,
            s(&v, "username"),
            s(&v, "role"),
            scope(&v),
            s(&v, "expires_at"),
            file.display()
        );
        if let Some(p) = &pinned {
            out += &format!("; gateway CA pinned in {}", p.display());
        }
        if std::env::var_os("EDGEFLEET_TOKEN").is_some() {
            out += "\nnote: EDGEFLEET_TOKEN is set and takes precedence over the stored token";
        }
        out
    })
}

/// `edgefleet logout`: revokes the stored session at the API (if reachable) and deletes it.
async fn logout(cli: &Cli) -> anyhow::Result<String> {
    let file = token_file()?;
    let stored = std::fs::read_to_string(&file)
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty());
    let revoked = match &stored {
        Some(t) => ApiClient::with_token(&cli.server, Some(t.clone()))?
            .post("/api/v1/logout", &json!({}))
            .await
            .is_ok(),
        None => false,
    };
    if stored.is_some() {
        std::fs::remove_file(&file).with_context(|| format!("cannot remove {}", file.display()))?;
    }
    let v = json!({ "logged_out": stored.is_some(), "revoked": revoked, "token_file": file.display().to_string() });
    Ok(if cli.json {
        serde_json::to_string_pretty(&v).unwrap_or_default()
    } else if stored.is_none() {
        format!("not logged in (no token in {})", file.display())
    } else {
        format!(
            "logged out{}; removed {}",
            if revoked {
                " and the session revoked"
            } else {
                " (the API was not reachable to revoke the session; it expires on its own)"
            },
            file.display()
        )
    })
}

/// Follows a rollout until it stops running (ends or pauses): a progress bar on a terminal, one line per change
/// otherwise (or nothing until the end with --json). Returns the final state.
async fn watch_rollout(api: &ApiClient, id: u64, json_out: bool) -> anyhow::Result<Value> {
    use std::io::IsTerminal;
    let tty = std::io::stderr().is_terminal() && !json_out;
    let bar = indicatif::ProgressBar::new(0);
    if tty {
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{bar:40}] {pos}/{len} devices  {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut last = String::new();
    loop {
        let v = api.get(&format!("/api/v1/rollouts/{id}")).await?;
        let total = v
            .get("devices")
            .and_then(Value::as_object)
            .map_or(0, |m| m.len() as u64);
        let done = v.get("devices").and_then(Value::as_object).map_or(0, |m| {
            m.values()
                .filter(|p| matches!(s(p, "phase"), "succeeded" | "failed" | "skipped"))
                .count() as u64
        });
        let line = format!(
            "wave {}  {}{}",
            n(&v, "current_wave"),
            rollout_state(&v),
            v.get("waiting")
                .and_then(Value::as_str)
                .map(|w| format!("  ({w})"))
                .unwrap_or_default()
        );
        bar.set_length(total);
        bar.set_position(done);
        bar.set_message(line.clone());
        if !tty && !json_out && line != last {
            eprintln!("{done}/{total} devices  {line}");
        }
        last = line;
        let state = v
            .pointer("/state/state")
            .and_then(Value::as_str)
            .unwrap_or("");
        if state != "running" {
            bar.finish();
            return Ok(v);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `key=value` / `key-` arguments of `device label` as the API's body
/// `{"set": {key: value}, "remove": [key]}`.
fn label_changes(changes: &[String]) -> anyhow::Result<Value> {
    let mut set = serde_json::Map::new();
    let mut remove = Vec::new();
    for change in changes {
        if let Some((k, v)) = change.split_once('=') {
            set.insert(k.to_owned(), Value::String(v.to_owned()));
        } else if let Some(k) = change.strip_suffix('-') {
            remove.push(Value::String(k.to_owned()));
        } else {
            bail!("'{change}' is neither key=value (set a label) nor key- (remove it)");
        }
    }
    Ok(json!({ "set": set, "remove": remove }))
}
