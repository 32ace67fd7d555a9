//! Per-site summaries: counts and alarms per site and line, computed from the fleet view and
//! published retained for SCADA screens (`edgefleet/v1/fleet/sites/{site}/summary`).

use std::collections::BTreeMap;

use edgefleet_protocol::event::Severity;
use edgefleet_protocol::site::{Alarm, Counts, MAX_ALARMS, SiteSummary};
use edgefleet_protocol::status::{ContainerState, ConvergenceState, Health};
use edgefleet_protocol::topics::UNASSIGNED_SITE;

use crate::device::{Connection, DeviceView};

fn label<'a>(d: &'a DeviceView, key: &str) -> &'a str {
    d.labels.get(key).map_or(UNASSIGNED_SITE, String::as_str)
}

/// Alarms of one device: offline, reported labels not the inventory's, a deployment that
/// cannot be resolved for it (a variable set nowhere), failed apply, unhealthy services.
pub fn alarms(d: &DeviceView) -> Vec<Alarm> {
    let mut out = Vec::new();
    let alarm = |severity, kind: &str, since: Option<String>, message: String| Alarm {
        device: d.id.clone(),
        severity,
        kind: kind.to_owned(),
        since,
        message,
    };
    if d.connection == Connection::Offline {
        let since = d.last_seen.clone();
        let msg = format!("offline since {}", since.as_deref().unwrap_or("unknown"));
        out.push(alarm(Severity::Error, "offline", since, msg));
    }
    if let Some(diff) = d.label_mismatch() {
        let msg = format!(
            "reports other labels than the inventory's ({diff}); the inventory's apply: fix the agent or run 'edgefleet device label'"
        );
        out.push(alarm(Severity::Warning, "labels", None, msg));
    }
    for (deployment, why) in &d.unresolved {
        out.push(alarm(
            Severity::Error,
            "variables",
            None,
            format!("deployment '{deployment}' not resolved, the device keeps what it has: {why}"),
        ));
    }
    let Some(status) = &d.status else { return out };
    if status.state == ConvergenceState::Failed {
        let msg = status
            .last_error
            .clone()
            .unwrap_or_else(|| "applying its desired state failed".into());
        out.push(alarm(Severity::Error, "failed", None, msg));
    }
    for (stack, st) in &status.stacks {
        for (name, svc) in &st.services {
            let problem = if let Some(e) = &svc.last_error {
                Some(e.clone())
            } else if svc.health == Health::Unhealthy {
                Some("healthcheck failing".to_owned())
            } else if matches!(svc.state, ContainerState::Restarting | ContainerState::Dead) {
                Some(format!("container {:?}", svc.state).to_lowercase())
            } else {
                None
            };
            if let Some(p) = problem {
                out.push(alarm(
                    Severity::Warning,
                    "unhealthy",
                    None,
                    format!("{stack}/{name}: {p}"),
                ));
            }
        }
    }
    out
}

fn count(c: &mut Counts, d: &DeviceView, unhealthy: bool) {
    c.devices += 1;
    match d.connection {
        Connection::Online => c.online += 1,
        Connection::Offline => c.offline += 1,
        Connection::Unknown => {}
    }
    if d.converged() {
        c.converged += 1;
    }
    if unhealthy {
        c.unhealthy += 1;
    }
}

/// Summaries of every site with at least one device (`updated_at` left empty: set it when
/// publishing, so unchanged summaries compare equal).
/// Takes anything that derefs to a device view, so the controller can pass the fleet's
/// DashMap entries without cloning every device each second.
pub fn summarize<D: std::ops::Deref<Target = DeviceView>>(
    devices: impl IntoIterator<Item = D>,
) -> BTreeMap<String, SiteSummary> {
    let mut sites: BTreeMap<String, SiteSummary> = BTreeMap::new();
    for d in devices {
        let d = &*d;
        let site = label(d, "site").to_owned();
        let entry = sites.entry(site.clone()).or_insert_with(|| SiteSummary {
            schema: edgefleet_protocol::SCHEMA_VERSION,
            site,
            counts: Counts::default(),
            lines: BTreeMap::new(),
            alarms: Vec::new(),
            updated_at: String::new(),
        });
        let device_alarms = alarms(d);
        let unhealthy = device_alarms.iter().any(|a| a.kind != "offline");
        count(&mut entry.counts, d, unhealthy);
        count(
            entry.lines.entry(label(d, "line").to_owned()).or_default(),
            d,
            unhealthy,
        );
        entry.alarms.extend(device_alarms);
    }
    for s in sites.values_mut() {
        s.alarms.sort_by(|a, b| {
            let rank = |x: &Alarm| if x.severity == Severity::Error { 0 } else { 1 };
            rank(a)
                .cmp(&rank(b))
                .then_with(|| a.since.cmp(&b.since))
                .then_with(|| a.device.cmp(&b.device))
        });
        s.alarms.truncate(MAX_ALARMS);
    }
    sites
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use edgefleet_protocol::status::{DeviceStatus, ServiceStatus, StackStatus};

    use super::*;

    fn device(
        id: &str,
        site: Option<&str>,
        line: &str,
        connection: Connection,
        health: Health,
    ) -> DeviceView {
        let mut d = DeviceView::new(id);
        if let Some(s) = site {
            d.labels.insert("site".into(), s.into());
        }
        d.labels.insert("line".into(), line.into());
        d.connection = connection;
        d.last_seen = Some("2026-11-27T08:00:00.000Z".into());
        d.status = Some(DeviceStatus {
            schema: 1,
            device: id.into(),
            observed_revision: 0,
            desired_revision: 0,
            state: ConvergenceState::Converged,
            stacks: BTreeMap::from([(
                "web".into(),
                StackStatus {
                    deployment_revision: 1,
                    services: BTreeMap::from([(
                        "app".into(),
                        ServiceStatus {
                            image: "a".into(),
                            image_id: None,
                            container_id: None,
                            state: ContainerState::Running,
                            health,
                            restart_count: 0,
                            last_error: None,
                            config_hash: None,
                        },
                    )]),
                },
            )]),
            last_error: None,
            agent_version: "t".into(),
            updated_at: "t".into(),
            platform: None,
        });
        d
    }

    #[test]
    fn counts_and_alarms_per_site_and_line() {
        let devices = [
            device("a", Some("lyon"), "3", Connection::Online, Health::Healthy),
            device(
                "b",
                Some("lyon"),
                "3",
                Connection::Online,
                Health::Unhealthy,
            ),
            device("c", Some("lyon"), "4", Connection::Offline, Health::Healthy),
            device("d", None, "1", Connection::Unknown, Health::None),
        ];
        let sites = summarize(devices.iter());
        assert_eq!(sites.keys().collect::<Vec<_>>(), vec!["lyon", "unassigned"]);
        let lyon = &sites["lyon"];
        assert_eq!(
            lyon.counts,
            Counts {
                devices: 3,
                online: 2,
                offline: 1,
                converged: 0,
                unhealthy: 1
            },
            "converged needs a desired revision; none is set here"
        );
        assert_eq!(lyon.lines["3"].devices, 2);
        assert_eq!(lyon.lines["3"].unhealthy, 1);
        assert_eq!(lyon.lines["4"].offline, 1);
        let kinds: Vec<(&str, &str)> = lyon
            .alarms
            .iter()
            .map(|a| (a.device.as_str(), a.kind.as_str()))
            .collect();
        assert_eq!(
            kinds,
            vec![("c", "offline"), ("b", "unhealthy")],
            "errors first"
        );
        assert_eq!(sites["unassigned"].counts.devices, 1);
        assert_eq!(
            sites["unassigned"].counts.online + sites["unassigned"].counts.offline,
            0
        );
    }
}
