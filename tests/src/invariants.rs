//! What must hold after any fault on a [`Plant`], checked from outside the code under test
//! (the docker CLI, `mosquitto_sub`, the store file):
//! - every device is on its desired revision, converged, running the image it must
//!   ([`converged`]);
//! - never two versions of one service running: a [`Sampler`] watches the engine the whole
//!   time the fault lasts, not only at the end;
//! - the retained status of every device matches what `docker inspect` shows;
//! - no accepted change is missing from the store (the deployment's revision counts every
//!   accepted apply);
//! - the audit chain verifies (`edgefleet audit verify`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;

use crate::hosts::{Plant, docker};
use crate::wait;

/// Samples the engine every 100 ms from its start until [`Sampler::finish`]: for each device
/// of the plant, how many containers of one service ran at once.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<SamplerReport>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug, Default, Clone)]
pub struct SamplerReport {
    pub samples: u64,
    /// (device, stack, service) → the images running at once, when more than one ran.
    pub doubles: Vec<(String, String, String, Vec<String>)>,
}

impl Sampler {
    pub fn start(devices: Vec<String>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(SamplerReport::default()));
        let (s, r) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let rows = docker(&[
                    "ps",
                    "--filter",
                    "label=io.edgefleet.device",
                    "--format",
                    "{{.Label \"io.edgefleet.device\"}}\t{{.Label \"io.edgefleet.stack\"}}\t{{.Label \"io.edgefleet.service\"}}\t{{.Image}}",
                ])
                .unwrap_or_default();
                let mut per: BTreeMap<(String, String, String), Vec<String>> = BTreeMap::new();
                for line in rows.lines() {
                    let f: Vec<&str> = line.split('\t').collect();
                    if let [dev, stack, svc, image] = f.as_slice()
                        && devices.iter().any(|d| d == dev)
                    {
                        per.entry((dev.to_string(), stack.to_string(), svc.to_string()))
                            .or_default()
                            .push(image.to_string());
                    }
                }
                let mut seen = r.lock();
                seen.samples += 1;
                for ((d, st, sv), images) in per {
                    if images.len() > 1 {
                        seen.doubles.push((d, st, sv, images));
                    }
                }
                drop(seen);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Sampler {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// Stops sampling; panics if any service ever ran twice on one device.
    pub fn finish(mut self) -> SamplerReport {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let report = self.seen.lock().clone();
        assert!(
            report.doubles.is_empty(),
            "two containers of one service ran at once: {:?}",
            report.doubles
        );
        assert!(report.samples > 0, "the engine was never sampled");
        report
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Waits until every device in `want` (id → image of `stack`/`service`) is online,
/// converged on the revision the controller wants for it, with exactly one running
/// container of the service, of that image. Returns the container ids and how long it took.
pub async fn converged(
    plant: &Plant,
    stack: &str,
    service: &str,
    want: &BTreeMap<String, String>,
    timeout: Duration,
) -> (BTreeMap<String, String>, Duration) {
    let start = Instant::now();
    let api = plant.gateway.api();
    let ids = wait::until(
        "every device converged on its desired revision",
        timeout,
        || async {
            let mut ids = BTreeMap::new();
            for (id, image) in want {
                let d = api.device(id).await.map_err(|e| format!("{id}: {e}"))?;
                let svc = crate::api::service(&d, stack, service)
                    .cloned()
                    .unwrap_or(Value::Null);
                let running = running(id, stack, service);
                let ok = d["online"] == true
                    && d["converged"] == true
                    && d["status"]["observed_revision"] == d["desired_revision"]
                    && svc["image"] == image.as_str()
                    && running.len() == 1
                    && running[0].1 == *image;
                if !ok {
                    return Err(format!(
                        "{id}: online {} converged {} desired {} status {} running {running:?}",
                        d["online"], d["converged"], d["desired_revision"], d["status"]
                    ));
                }
                ids.insert(id.clone(), running[0].0.clone());
            }
            Ok(ids)
        },
    )
    .await;
    (ids, start.elapsed())
}

/// Running containers (id, image) of one service of a device, from the engine.
pub fn running(device: &str, stack: &str, service: &str) -> Vec<(String, String)> {
    let filters = [
        format!("label=io.edgefleet.device={device}"),
        format!("label=io.edgefleet.stack={stack}"),
        format!("label=io.edgefleet.service={service}"),
    ];
    docker(&[
        "ps",
        "--no-trunc",
        "--filter",
        &filters[0],
        "--filter",
        &filters[1],
        "--filter",
        &filters[2],
        "--format",
        "{{.ID}}\t{{.Image}}",
    ])
    .unwrap_or_default()
    .lines()
    .filter_map(|l| {
        let (id, image) = l.split_once('\t')?;
        Some((id.to_owned(), image.to_owned()))
    })
    .collect()
}

/// The retained status of each device says what `docker inspect` says: for every service,
/// the same container, state and image id; and no running container of the device is
/// missing from it. Waits (a status is published on change) until it does.
pub async fn retained_status_matches_engine(plant: &Plant, timeout: Duration) {
    for id in plant.ids() {
        let topic = edgefleet_protocol::topics::TopicKind::DeviceStatus.for_device(&id);
        wait::until(&format!("retained status of {id} = docker inspect"), timeout, || async {
            let status = plant.gateway.retained(&topic)?;
            let mut listed = Vec::new();
            let stacks = status["stacks"].as_object().cloned().unwrap_or_default();
            for (stack, s) in &stacks {
                let services = s["services"].as_object().cloned().unwrap_or_default();
                for (name, svc) in &services {
                    let Some(cid) = svc["container_id"].as_str() else {
                        if svc["state"] != "missing" {
                            return Err(format!("{stack}/{name}: no container but {svc}"));
                        }
                        continue;
                    };
                    let seen = docker(&["inspect", "-f", "{{.State.Status}}\t{{.Image}}", cid])
                        .map_err(|e| format!("{stack}/{name}: status names {cid}: {e}"))?;
                    let (state, image_id) = seen.split_once('\t').unwrap_or_default();
                    if svc["state"] != state || svc["image_id"] != image_id {
                        return Err(format!(
                            "{stack}/{name}: status says {} {}, docker inspect says {state} {image_id}",
                            svc["state"], svc["image_id"]
                        ));
                    }
                    listed.push(cid.to_owned());
                }
            }
            let filter = format!("label=io.edgefleet.device={id}");
            let all = docker(&["ps", "-q", "--no-trunc", "--filter", &filter]).unwrap_or_default();
            for cid in all.split_whitespace() {
                if !listed.iter().any(|l| l == cid) {
                    return Err(format!("running container {cid} missing from the status"));
                }
            }
            Ok(())
        })
        .await;
    }
}

/// The deployment's latest revision is `revisions` (every accepted apply is in the store).
pub async fn deployment_has(plant: &Plant, deployment: &str, revisions: u64) {
    let d = plant
        .gateway
        .api()
        .get(&format!("/api/v1/deployments/{deployment}"))
        .await
        .unwrap_or_else(|e| panic!("deployment {deployment}: {e}"));
    assert_eq!(
        d["revision"], revisions,
        "accepted applies missing from the store: {d}"
    );
}

/// Every check after a fault, in order; returns their names for the scenario's line.
pub async fn all(
    plant: &Plant,
    deployment: &str,
    revisions: u64,
    want: &BTreeMap<String, String>,
    sampler: Sampler,
    timeout: Duration,
) -> (Duration, String) {
    let (_, took) = converged(plant, deployment, "app", want, timeout).await;
    let report = sampler.finish();
    retained_status_matches_engine(plant, timeout).await;
    deployment_has(plant, deployment, revisions).await;
    let audit = plant
        .gateway
        .audit_verifies()
        .unwrap_or_else(|e| panic!("{e}"));
    (
        took,
        format!(
            "converged+desired revision ({} devices), one version per service ({} samples), retained status = docker inspect, {} revisions in store, audit chain verifies ({} records)",
            want.len(),
            report.samples,
            revisions,
            audit["records"]
        ),
    )
}
