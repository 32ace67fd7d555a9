//! Replacing a service whose container has another config, in its `update_order`:
//! `stop-first` (old out, new in) and `start-first` (new in under a temporary name, wait until
//! it is ready, old out, rename), and finishing a `start-first` update that stopped midway.
//! Every step that may leave two versions running if it fails carries the `undo` that takes
//! the new container back.

use edgefleet_protocol::spec::{ServiceSpec, StackSpec, UpdateOrder};

use super::{Finding, Op, Planner, Readiness};
use crate::container::{ContainerSpec, next_container_name};
use crate::runtime::ContainerInfo;

impl Planner<'_> {
    /// Replaces a service's containers (`old`, possibly none) by one with the desired config:
    /// pull first (a failed pull leaves the old container running), then stop and remove the
    /// old ones, then create and start the new one. Compose's `stop-first` order.
    pub(super) fn replace_stop_first(
        &mut self,
        stack_name: &str,
        stack: &StackSpec,
        service: &str,
        svc: &ServiceSpec,
        old: &[&ContainerInfo],
        finding: Finding,
    ) {
        self.pull_if_missing(stack_name, service, svc);
        for c in old {
            self.retire(stack_name, Some(service), c, finding.clone());
        }
        let spec = ContainerSpec::for_service(self.device, stack_name, stack, service, svc);
        let name = spec.name.clone();
        self.push(
            stack_name,
            Some(service),
            Op::Create(Box::new(spec)),
            finding.clone(),
        );
        let op = Op::Start {
            container: name.clone(),
            name,
        };
        self.push(stack_name, Some(service), op, finding);
    }

    /// Compose's `start-first` order, while an old version is serving: pull; remove what
    /// does not serve (including a leftover under the temporary name); create and start the
    /// new container under the temporary name; wait until it is ready; stop and remove the
    /// old ones; rename the new one to the service's name. Until the old ones are stopped,
    /// a failure takes the new one back (`undo`), so the old version keeps running alone.
    pub(super) fn replace_start_first(
        &mut self,
        stack_name: &str,
        stack: &StackSpec,
        service: &str,
        svc: &ServiceSpec,
        old: &[&ContainerInfo],
        finding: Finding,
    ) {
        let next_name = next_container_name(self.device, stack_name, service);
        self.pull_if_missing(stack_name, service, svc);
        let (serving, leftovers): (Vec<&ContainerInfo>, Vec<&ContainerInfo>) = old
            .iter()
            .copied()
            .partition(|c| c.is_active() && c.name != next_name);
        for c in leftovers {
            self.retire(stack_name, Some(service), c, finding.clone());
        }
        let mut spec = ContainerSpec::for_service(self.device, stack_name, stack, service, svc);
        let want_name = std::mem::replace(&mut spec.name, next_name.clone());
        self.push(
            stack_name,
            Some(service),
            Op::Create(Box::new(spec)),
            finding.clone(),
        );
        let undo = discard(&next_name, &next_name);
        let op = Op::Start {
            container: next_name.clone(),
            name: next_name.clone(),
        };
        self.push_undoable(stack_name, Some(service), op, finding.clone(), undo);
        let new = (next_name.as_str(), next_name.as_str());
        self.take_over(stack_name, service, svc, new, &serving, &finding);
        let op = Op::Rename {
            container: next_name.clone(),
            from: next_name,
            to: want_name,
        };
        self.push(stack_name, Some(service), op, finding);
    }

    /// The `new` container (id or name, and name) has been started: wait until it is ready,
    /// then stop and remove the `serving` old ones; both undo the new container on failure.
    fn take_over(
        &mut self,
        stack_name: &str,
        service: &str,
        svc: &ServiceSpec,
        (container, name): (&str, &str),
        serving: &[&ContainerInfo],
        finding: &Finding,
    ) {
        let undo = discard(container, name);
        let op = Op::AwaitReady {
            container: container.to_owned(),
            name: name.to_owned(),
            readiness: Readiness::for_service(svc),
        };
        self.push_undoable(stack_name, Some(service), op, finding.clone(), undo.clone());
        for c in serving {
            self.retire_undoable(stack_name, Some(service), c, finding.clone(), undo.clone());
        }
    }

    /// A container with the desired config is under the temporary name: a `start-first`
    /// update stopped midway (agent restart, failed removal or rename). Finish it: with an
    /// old version still serving (and `start-first` still wanted), make sure the new one is
    /// ready before retiring the old one; then give the new one the service's name.
    pub(super) fn finish_start_first(
        &mut self,
        stack_name: &str,
        service: &str,
        svc: &ServiceSpec,
        current: &ContainerInfo,
        mine: &[&ContainerInfo],
    ) {
        let finding = Finding::Unfinished;
        let others: Vec<&ContainerInfo> = mine
            .iter()
            .copied()
            .filter(|c| c.id != current.id)
            .collect();
        let (serving, idle): (Vec<&ContainerInfo>, Vec<&ContainerInfo>) =
            others.iter().copied().partition(|c| c.is_active());
        let start_first = svc.update_order == UpdateOrder::StartFirst && !serving.is_empty();
        for c in if start_first { &idle } else { &others } {
            self.retire(stack_name, Some(service), c, finding.clone());
        }
        if start_first {
            if !current.is_active() {
                let op = Op::Start {
                    container: current.id.clone(),
                    name: current.name.clone(),
                };
                let undo = discard(&current.id, &current.name);
                self.push_undoable(stack_name, Some(service), op, finding.clone(), undo);
            }
            let new = (current.id.as_str(), current.name.as_str());
            self.take_over(stack_name, service, svc, new, &serving, &finding);
        }
        let want_name = ContainerSpec::docker_name(self.device, stack_name, service, svc);
        let op = Op::Rename {
            container: current.id.clone(),
            from: current.name.clone(),
            to: want_name.clone(),
        };
        self.push(stack_name, Some(service), op, finding);
        if !start_first {
            let renamed = ContainerInfo {
                name: want_name,
                ..current.clone()
            };
            self.resume(stack_name, service, svc, &renamed);
        }
    }
}

/// Stop and remove a container: the undo of a `start-first` update's new container.
fn discard(container: &str, name: &str) -> Vec<Op> {
    vec![
        Op::Stop {
            container: container.to_owned(),
            name: name.to_owned(),
        },
        Op::Remove {
            container: container.to_owned(),
            name: name.to_owned(),
        },
    ]
}
