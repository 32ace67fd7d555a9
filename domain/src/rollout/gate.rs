//! The per-device health gate: has this device succeeded, failed, or must the rollout wait?
//!
//! Success means the device reports the target revision as observed and every service of the
//! stack healthy (its Compose healthcheck passes; a service without one is running and not
//! restarting) continuously for `soak`. A crash loop, an image that cannot be pulled, a
//! failing healthcheck or `health_timeout` passing first is a failure, with the reason.
//! Times are unix milliseconds so the gate's inputs can be persisted as they are.

use edgefleet_protocol::status::{ContainerState, DeviceStatus, Health};

use super::strategy::Strategy;

/// What the rollout asked of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment<'a> {
    pub deployment: &'a str,
    pub deployment_revision: u64,
    /// Device desired revision that carries the deployment revision.
    pub desired_revision: u64,
    /// When the device was given it.
    pub assigned_at_ms: u64,
    /// Restart counts per service when it was given it (a crash loop grows them).
    pub restarts_at_start: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not there yet; why.
    Waiting(String),
    /// Converged and healthy since this time; success once `soak` has passed.
    Soaking {
        healthy_since_ms: u64,
    },
    Succeeded,
    Failed(String),
}

/// Judges one device. `healthy_since_ms` is what the previous judgement returned in
/// `Soaking` (if any).
pub fn judge(
    a: &Assignment<'_>,
    status: Option<&DeviceStatus>,
    healthy_since_ms: Option<u64>,
    now_ms: u64,
    strategy: &Strategy,
) -> Verdict {
    let timeout_ms = u64::try_from(strategy.health_timeout.as_millis()).unwrap_or(u64::MAX);
    let soak_ms = u64::try_from(strategy.soak.as_millis()).unwrap_or(u64::MAX);
    let timed_out = now_ms.saturating_sub(a.assigned_at_ms) >= timeout_ms;
    let waiting = |why: String| {
        if timed_out {
            Verdict::Failed(format!(
                "not healthy within {}: {why}",
                humantime::format_duration(strategy.health_timeout)
            ))
        } else {
            Verdict::Waiting(why)
        }
    };
    let Some(status) = status else {
        return waiting("no status reported yet".into());
    };
    if status.desired_revision < a.desired_revision {
        return waiting(format!(
            "device has not received revision {} yet",
            a.desired_revision
        ));
    }
    let Some(stack) = status.stacks.get(a.deployment) else {
        return waiting(format!("stack '{}' not reported yet", a.deployment));
    };
    // Hard failures count as soon as the device works on the target.
    let mut restarts = 0;
    for (name, svc) in &stack.services {
        restarts += svc.restart_count;
        if let Some(err) = &svc.last_error {
            return Verdict::Failed(format!("service '{name}': {err}"));
        }
        if stack.deployment_revision == a.deployment_revision {
            match (svc.state, svc.health) {
                (_, Health::Unhealthy) => {
                    return Verdict::Failed(format!("service '{name}': healthcheck failing"));
                }
                (ContainerState::Exited | ContainerState::Dead, _) => {
                    return Verdict::Failed(
                        format!("service '{name}': container {:?}", svc.state).to_lowercase(),
                    );
                }
                (ContainerState::Restarting, _) => {
                    return Verdict::Failed(format!("service '{name}': crash loop (restarting)"));
                }
                _ => {}
            }
        }
    }
    if stack.deployment_revision == a.deployment_revision && restarts > a.restarts_at_start {
        return Verdict::Failed(format!(
            "crash loop: {} restart(s) since the update",
            restarts - a.restarts_at_start
        ));
    }
    if status.observed_revision < a.desired_revision
        || stack.deployment_revision != a.deployment_revision
    {
        return waiting(
            format!(
                "converging to revision {} ({:?})",
                a.desired_revision, status.state
            )
            .to_lowercase(),
        );
    }
    let unhealthy: Vec<&str> = stack
        .services
        .iter()
        .filter(|(_, s)| {
            !(s.state == ContainerState::Running
                && matches!(s.health, Health::Healthy | Health::None))
        })
        .map(|(n, _)| n.as_str())
        .collect();
    if !unhealthy.is_empty() {
        return waiting(format!(
            "waiting for {} to be healthy",
            unhealthy.join(", ")
        ));
    }
    let since = healthy_since_ms.unwrap_or(now_ms);
    if now_ms.saturating_sub(since) >= soak_ms {
        Verdict::Succeeded
    } else {
        Verdict::Soaking {
            healthy_since_ms: since,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use edgefleet_protocol::status::{ConvergenceState, ServiceStatus, StackStatus};

    use super::*;

    fn svc(
        state: ContainerState,
        health: Health,
        restarts: u64,
        err: Option<&str>,
    ) -> ServiceStatus {
        ServiceStatus {
            image: "app:2".into(),
            image_id: None,
            container_id: Some("c".into()),
            state,
            health,
            restart_count: restarts,
            last_error: err.map(str::to_owned),
            config_hash: None,
        }
    }

    fn status(
        observed: u64,
        desired: u64,
        dep_rev: u64,
        services: Vec<ServiceStatus>,
    ) -> DeviceStatus {
        DeviceStatus {
            schema: 1,
            device: "d".into(),
            observed_revision: observed,
            desired_revision: desired,
            state: if observed == desired {
                ConvergenceState::Converged
            } else {
                ConvergenceState::Converging
            },
            stacks: BTreeMap::from([(
                "web".to_string(),
                StackStatus {
                    deployment_revision: dep_rev,
                    services: services
                        .into_iter()
                        .enumerate()
                        .map(|(i, s)| (format!("s{i}"), s))
                        .collect(),
                },
            )]),
            last_error: None,
            agent_version: "t".into(),
            updated_at: "t".into(),
            platform: None,
        }
    }

    /// name, status, healthy since, now, expected verdict prefix.
    type Case = (
        &'static str,
        Option<DeviceStatus>,
        Option<u64>,
        u64,
        &'static str,
    );

    #[test]
    fn table() {
        use ContainerState::*;
        let a = Assignment {
            deployment: "web",
            deployment_revision: 2,
            desired_revision: 7,
            assigned_at_ms: 0,
            restarts_at_start: 0,
        };
        let strategy = Strategy {
            soak: Duration::from_secs(10),
            health_timeout: Duration::from_secs(60),
            ..Strategy::default()
        };
        let ok = || svc(Running, Health::Healthy, 0, None);
        let cases: Vec<Case> = vec![
            ("no status", None, None, 1_000, "waiting"),
            (
                "no status past timeout",
                None,
                None,
                60_000,
                "failed: not healthy within 1m",
            ),
            (
                "old desired",
                Some(status(6, 6, 1, vec![ok()])),
                None,
                1_000,
                "waiting",
            ),
            (
                "converging",
                Some(status(6, 7, 1, vec![ok()])),
                None,
                1_000,
                "waiting",
            ),
            (
                "healthy starts soak",
                Some(status(7, 7, 2, vec![ok()])),
                None,
                1_000,
                "soaking 1000",
            ),
            (
                "soak continues",
                Some(status(7, 7, 2, vec![ok()])),
                Some(1_000),
                5_000,
                "soaking 1000",
            ),
            (
                "soak done",
                Some(status(7, 7, 2, vec![ok()])),
                Some(1_000),
                11_000,
                "succeeded",
            ),
            (
                "no healthcheck, running",
                Some(status(7, 7, 2, vec![svc(Running, Health::None, 0, None)])),
                Some(0),
                10_000,
                "succeeded",
            ),
            (
                "health starting",
                Some(status(
                    7,
                    7,
                    2,
                    vec![svc(Running, Health::Starting, 0, None)],
                )),
                None,
                1_000,
                "waiting",
            ),
            (
                "healthcheck failing",
                Some(status(
                    7,
                    7,
                    2,
                    vec![svc(Running, Health::Unhealthy, 0, None)],
                )),
                None,
                1_000,
                "failed: service 's0': healthcheck",
            ),
            (
                "exits at start",
                Some(status(7, 7, 2, vec![svc(Exited, Health::None, 0, None)])),
                None,
                1_000,
                "failed: service 's0': container exited",
            ),
            (
                "crash loop",
                Some(status(
                    7,
                    7,
                    2,
                    vec![svc(Restarting, Health::None, 3, None)],
                )),
                None,
                1_000,
                "failed: service 's0': crash loop",
            ),
            (
                "restarts grew",
                Some(status(7, 7, 2, vec![svc(Running, Health::None, 2, None)])),
                None,
                1_000,
                "failed: crash loop: 2",
            ),
            (
                "pull failed",
                Some(status(
                    6,
                    7,
                    1,
                    vec![svc(
                        Running,
                        Health::None,
                        0,
                        Some("image 'app:2' not present and pull failed"),
                    )],
                )),
                None,
                1_000,
                "failed: service 's0': image",
            ),
            (
                "old container exited is not our failure yet",
                Some(status(6, 7, 1, vec![svc(Exited, Health::None, 0, None)])),
                None,
                1_000,
                "waiting",
            ),
            (
                "healthy but timeout passed during soak",
                Some(status(7, 7, 2, vec![ok()])),
                Some(55_000),
                61_000,
                "soaking 55000",
            ),
        ];
        for (name, st, since, now, want) in cases {
            let got = match judge(&a, st.as_ref(), since, now, &strategy) {
                Verdict::Waiting(_) => "waiting".to_string(),
                Verdict::Soaking { healthy_since_ms } => format!("soaking {healthy_since_ms}"),
                Verdict::Succeeded => "succeeded".to_string(),
                Verdict::Failed(why) => format!("failed: {why}"),
            };
            assert!(got.starts_with(want), "{name}: got {got:?}, want {want:?}");
        }
    }
}
