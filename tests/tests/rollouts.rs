//! Acceptance (rollouts) with the real engine and five agents: a staged apply holds every
//! device, a rollout moves them in waves gated on health, and a broken revision stops after
//! the canary, which is rolled back and healthy again with nobody else touched.

use std::collections::BTreeMap;
use std::time::Duration;

use edgefleet_tests::api::Api;
use edgefleet_tests::docker::{self, Cleanup};
use edgefleet_tests::images::{self, APP_BROKEN, APP_V1, APP_V2};
use edgefleet_tests::procs::{Agent, Gateway};
use edgefleet_tests::{unique_id, wait};
use serde_json::Value;

const T: Duration = Duration::from_secs(90);

fn stack(image: &str) -> String {
    format!(
        "services:\n  app:\n    image: {image}\n    restart: unless-stopped\n    healthcheck:\n      test: [\"CMD\", \"true\"]\n      interval: 1s\n      retries: 2\nx-edgefleet-rollout:\n  canary: 1\n  batch: 2\n  soak: 2s\n  health_timeout: 40s\n"
    )
}

/// The running container (id, image) of every device, read from Docker.
fn running(ids: &[String]) -> BTreeMap<String, (String, String)> {
    ids.iter()
        .filter_map(|id| {
            let c = docker::containers(id)
                .into_iter()
                .find(|c| c.state == "running")?;
            Some((id.clone(), (c.id, c.image)))
        })
        .collect()
}

async fn wait_all_on(ids: &[String], image: &str, api: &Api) -> BTreeMap<String, (String, String)> {
    wait::until(&format!("all devices running {image}"), T, || async {
        let now = running(ids);
        let healthy = {
            let mut ok = true;
            for id in ids {
                let d = api.device(id).await?;
                ok &= d["converged"] == true;
            }
            ok
        };
        if healthy && now.len() == ids.len() && now.values().all(|(_, img)| img == image) {
            Ok(now)
        } else {
            Err(format!("{now:?}"))
        }
    })
    .await
}

/// Every device's desired revision as the controller holds (and publishes) it.
async fn desired_revisions(ids: &[String], api: &Api) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for id in ids {
        let d = api.device(id).await.expect("device");
        out.insert(id.clone(), d["desired_revision"].as_u64().unwrap_or(0));
    }
    out
}

/// Waits until the controller's rollout loop has made two more passes (so whatever it was
/// going to do after the caller's last action, it has done).
async fn two_loop_passes(api: &Api) {
    let passes = || async {
        api.get("/api/v1/health")
            .await
            .map(|h| h["rollout_passes"].as_u64().unwrap_or(0))
    };
    let start = passes().await.expect("health");
    wait::until("two passes of the rollout loop", T, || async {
        let now = passes().await?;
        if now >= start + 2 {
            Ok(())
        } else {
            Err(format!("{now} passes"))
        }
    })
    .await;
}

fn rollout(api: &Api, deployment: &str) -> (u64, Value) {
    let out = api.cli(&["--json", "rollout", "start", deployment]);
    assert!(out.success, "rollout start: {out:?}");
    let id = out.json()["id"].as_u64().expect("rollout id");
    let done = api.cli(&["--json", "rollout", "status", &id.to_string(), "--watch"]);
    assert!(done.success, "rollout status --watch: {done:?}");
    (id, done.json())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_move_in_waves_and_a_bad_canary_is_rolled_back() {
    images::ensure();
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let ids: Vec<String> = (0..5).map(|_| unique_id("wave")).collect();
    let _cleanup = Cleanup(ids.clone());
    let gw = Gateway::start(dir);
    let api = gw.api();
    let _agents: Vec<Agent> = ids.iter().map(|id| gw.agent(dir, id, "site=r")).collect();
    for id in &ids {
        api.wait_connection(id, "online", T).await;
    }
    api.apply(dir, "web", "site=r", &stack(APP_V1));
    let v1 = wait_all_on(&ids, APP_V1, &api).await;

    // Staged: the new revision is recorded, nobody moves: no device is sent a new desired
    // document (the controller computed them all before answering), and the loop leaves
    // them alone.
    let desired = desired_revisions(&ids, &api).await;
    let applied = api.apply(dir, "web", "site=r", &stack(APP_V2));
    assert_eq!(
        applied["held"].as_array().map(Vec::len),
        Some(5),
        "{applied}"
    );
    two_loop_passes(&api).await;
    assert_eq!(desired_revisions(&ids, &api).await, desired);
    assert_eq!(
        running(&ids),
        v1,
        "a staged apply must not touch any container"
    );

    // A good revision: waves of 1, 2, 2, all succeed.
    let (_, done) = rollout(&api, "web");
    assert_eq!(done["state"]["state"], "succeeded", "{done}");
    let sizes: Vec<usize> = done["waves"]
        .as_array()
        .expect("waves")
        .iter()
        .map(|w| w.as_array().map_or(0, Vec::len))
        .collect();
    assert_eq!(sizes, vec![1, 2, 2]);
    let v2 = wait_all_on(&ids, APP_V2, &api).await;
    // SCADA sees the same progress, retained, on the rollout's topic.
    let topic = edgefleet_protocol::topics::rollout_status(done["id"].as_u64().expect("id"));
    let retained =
        edgefleet_tests::mqtt::retained(gw.mqtt_port, &topic, 5).expect("retained rollout status");
    assert_eq!(retained["schema"], 1);
    assert_eq!(retained["state"]["state"], "succeeded", "{retained}");

    // A broken revision: the canary fails, is rolled back; nobody else is touched.
    api.apply(dir, "web", "site=r", &stack(APP_BROKEN));
    let (_, failed) = rollout(&api, "web");
    assert_eq!(failed["state"]["state"], "failed", "{failed}");
    assert_eq!(failed["state"]["rollback"], true);
    let reason = failed["state"]["reason"].as_str().unwrap_or_default();
    // A container that exits at start shows as a crash loop, an exited container or a
    // failing healthcheck, depending on when the gate looks; each names the service.
    assert!(
        reason.contains("service 'app'") || reason.contains("crash loop"),
        "reason visible: {reason}"
    );
    let canary = failed["waves"][0][0].as_str().expect("canary").to_owned();
    let after = wait_all_on(&ids, APP_V2, &api).await;
    for id in &ids {
        if *id == canary {
            assert_ne!(
                after[id].0, v2[id].0,
                "the canary was updated, then rolled back"
            );
        } else {
            assert_eq!(after[id], v2[id], "{id} must not have been touched");
        }
    }
    let list = api.cli(&["--json", "rollout", "list"]).json();
    assert!(
        list["rollouts"]
            .as_array()
            .expect("list")
            .iter()
            .any(|r| r["created_by"]
                .as_str()
                .is_some_and(|b| b.starts_with("rollback"))),
        "the rollback is recorded"
    );
}

/// The controller (here the whole gateway) is SIGKILLed in the middle of a rollout and
/// restarted: the rollout resumes from the store and completes, and no device already moved
/// is moved again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_resumes_after_the_gateway_is_killed_mid_way() {
    images::ensure();
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let ids: Vec<String> = (0..5).map(|_| unique_id("resume")).collect();
    let _cleanup = Cleanup(ids.clone());
    let mut gw = Gateway::start(dir);
    let api = gw.api();
    let _agents: Vec<Agent> = ids.iter().map(|id| gw.agent(dir, id, "site=k")).collect();
    for id in &ids {
        api.wait_connection(id, "online", T).await;
    }
    let staged = |image: &str| {
        stack(image)
            .replace("batch: 2", "batch: 1")
            .replace("soak: 2s", "soak: 3s")
    };
    api.apply(dir, "web", "site=k", &staged(APP_V1));
    wait_all_on(&ids, APP_V1, &api).await;
    api.apply(dir, "web", "site=k", &staged(APP_V2));
    let out = api.cli(&["--json", "rollout", "start", "web"]);
    assert!(out.success, "{out:?}");
    let id = out.json()["id"].as_u64().expect("id").to_string();

    // Kill once at least two devices have moved and the rollout is not finished.
    let moved_before: BTreeMap<String, (String, String)> =
        wait::until("two devices moved", T, || async {
            let moved: BTreeMap<_, _> = running(&ids)
                .into_iter()
                .filter(|(_, (_, img))| img == APP_V2)
                .collect();
            let r = api.get(&format!("/api/v1/rollouts/{id}")).await?;
            if moved.len() >= 2 && r["state"]["state"] == "running" {
                Ok(moved)
            } else {
                Err(format!("{} moved, {}", moved.len(), r["state"]))
            }
        })
        .await;
    gw.proc.kill9();
    gw.proc.start();
    gw.wait_ready();

    let done = api.cli(&["--json", "rollout", "status", &id, "--watch"]);
    assert!(done.success, "{done:?}");
    assert_eq!(
        done.json()["state"]["state"],
        "succeeded",
        "{}",
        done.stdout
    );
    let after = wait_all_on(&ids, APP_V2, &api).await;
    for (device, before) in &moved_before {
        assert_eq!(
            &after[device], before,
            "{device} was moved before the kill and must not be moved again"
        );
    }
}

/// With five real agents: a device offline when its wave comes is skipped (policy `skip`);
/// a paused rollout moves nobody until resumed; an aborted rollout leaves every device fully
/// on one revision or the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_skip_pause_resume_and_abort() {
    images::ensure();
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let mut ids: Vec<String> = (0..5).map(|_| unique_id("ctl")).collect();
    ids.sort();
    let _cleanup = Cleanup(ids.clone());
    let gw = Gateway::start(dir);
    let api = gw.api();
    let mut agents: Vec<Agent> = ids.iter().map(|id| gw.agent(dir, id, "site=c")).collect();
    for id in &ids {
        api.wait_connection(id, "online", T).await;
    }
    let file = |image: &str, env: &str| {
        stack(image)
            .replace(
                "    restart:",
                &format!("    environment: {{STAGE: {env}}}\n    restart:"),
            )
            .replace("batch: 2", "batch: 1")
            .replace("soak: 2s", "soak: 1s\n  offline: skip")
    };
    api.apply(dir, "web", "site=c", &file(APP_V1, "a"));
    wait_all_on(&ids, APP_V1, &api).await;

    // The last device (last wave, ids sorted) goes offline; its container keeps running.
    let offline = ids[4].clone();
    agents[4].proc.kill9();
    api.wait_connection(&offline, "offline", T).await;
    api.apply(dir, "web", "site=c", &file(APP_V2, "a"));
    let before = running(&ids);
    let desired = desired_revisions(&ids, &api).await;
    let out = api.cli(&["--json", "rollout", "start", "web"]);
    assert!(out.success, "{out:?}");
    let id = out.json()["id"].as_u64().expect("id").to_string();
    assert!(api.cli(&["rollout", "pause", &id]).success);
    // Whatever the loop pinned before the pause (the canary at most), it pins nothing after;
    // the devices it did pin converge, the others keep their container.
    two_loop_passes(&api).await;
    let now = desired_revisions(&ids, &api).await;
    let sent: Vec<_> = ids.iter().filter(|d| now[*d] != desired[*d]).collect();
    assert!(
        sent.len() <= 1,
        "sent a new revision after the pause: {sent:?}"
    );
    wait::until("the devices sent a revision converge", T, || async {
        for d in &sent {
            let v = api.device(d).await?;
            if v["converged"] != true {
                return Err(format!("{d}: {}", v["status"]));
            }
        }
        Ok(())
    })
    .await;
    let paused = running(&ids);
    let moved: Vec<_> = ids.iter().filter(|d| paused[*d] != before[*d]).collect();
    assert!(
        moved.len() <= 1,
        "at most the canary, pinned before the pause, may move: {moved:?}"
    );
    let status = api.cli(&["--json", "rollout", "status", &id]).json();
    assert_eq!(status["state"]["state"], "paused", "{status}");
    assert!(api.cli(&["rollout", "resume", &id]).success);
    let done = api
        .cli(&["--json", "rollout", "status", &id, "--watch"])
        .json();
    assert_eq!(done["state"]["state"], "succeeded", "{done}");
    assert_eq!(done["devices"][&offline]["phase"], "skipped", "{done}");
    let now = running(&ids);
    assert_eq!(
        now[&offline], before[&offline],
        "the skipped device was not touched"
    );
    assert!(ids[..4].iter().all(|d| now[d].1 == APP_V2), "{now:?}");

    // Abort mid-way: every online device is fully on v2 or on the new revision, never half.
    agents.truncate(4);
    api.apply(
        dir,
        "web",
        "site=c",
        &file(APP_V2, "b").replace("soak: 1s", "soak: 4s"),
    );
    let out = api.cli(&["--json", "rollout", "start", "web"]);
    assert!(out.success, "{out:?}");
    let id = out.json()["id"].as_u64().expect("id").to_string();
    wait::until("the canary moved", T, || async {
        let r = api.get(&format!("/api/v1/rollouts/{id}")).await?;
        if r["succeeded"].as_u64() >= Some(1) {
            Ok(())
        } else {
            Err(r["waiting"].to_string())
        }
    })
    .await;
    let aborted = api.cli(&["--json", "rollout", "abort", &id]);
    assert!(aborted.success, "{aborted:?}");
    assert_eq!(aborted.json()["state"]["state"], "aborted");
    for device in &ids[..4] {
        let d = wait::until(&format!("{device} converged after abort"), T, || async {
            let d = api.device(device).await?;
            if d["converged"] == true {
                Ok(d)
            } else {
                Err(d["state"].to_string())
            }
        })
        .await;
        let svc = &d["status"]["stacks"]["web"];
        let rev = svc["deployment_revision"].as_u64();
        assert!(
            rev == Some(2) || rev == Some(3),
            "{device} on revision {rev:?}"
        );
        assert_eq!(svc["services"]["app"]["state"], "running");
    }
}

/// A maintenance window that opens a few seconds into the test (at the next minute): the
/// first wave waits and says why, then proceeds. Also the CLI's refusals of nonsense.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wave_waits_for_the_maintenance_window_and_nonsense_is_refused() {
    images::ensure();
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let ids: Vec<String> = (0..5).map(|_| unique_id("win")).collect();
    let _cleanup = Cleanup(ids.clone());
    let gw = Gateway::start(dir);
    let api = gw.api();
    let _agents: Vec<Agent> = ids.iter().map(|id| gw.agent(dir, id, "site=w")).collect();
    for id in &ids {
        api.wait_connection(id, "online", T).await;
    }
    let file = |image: &str| {
        stack(image)
            .replace("batch: 2", "batch: 100%")
            .replace("soak: 2s", "soak: 1s")
    };
    api.apply(dir, "web", "site=w", &file(APP_V1));
    let v1 = wait_all_on(&ids, APP_V1, &api).await;
    api.apply(dir, "web", "site=w", &file(APP_V2));

    // Nonsense is refused with the reason, and records nothing.
    for (args, needle) in [
        (vec!["--batch", "0"], "'batch'"),
        (vec!["--max-failures", "150%"], "'max_failures'"),
        (vec!["--on-failure", "explode"], "on_failure"),
        (vec!["--revision", "99"], "no revision 99"),
    ] {
        let mut cmd = vec!["rollout", "start", "web"];
        cmd.extend(args);
        let out = api.cli(&cmd);
        assert!(
            !out.success && out.stderr.contains(needle),
            "{cmd:?}: {out:?}"
        );
    }
    assert_eq!(
        api.cli(&["--json", "rollout", "list"]).json()["rollouts"],
        serde_json::json!([])
    );

    // A window opening at the next minute boundary (UTC), at least 3 s from now.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let opens = (now / 60 + 1 + u64::from(now % 60 > 57)) * 60;
    let hm = |t: u64| format!("{:02}:{:02}", (t / 3600) % 24, (t / 60) % 60);
    let window = format!("daily {}-{}", hm(opens), hm(opens + 600));
    let out = api.cli(&["window", "set", "w", &window, "--tz", "UTC"]);
    assert!(out.success, "{out:?}");
    let out = api.cli(&["--json", "rollout", "start", "web"]);
    assert!(out.success, "{out:?}");
    let id = out.json()["id"].as_u64().expect("id").to_string();
    let busy = api.cli(&["rollout", "start", "web"]);
    assert!(
        !busy.success && busy.stderr.contains("still running"),
        "two rollouts of one deployment: {busy:?}"
    );
    wait::until("the rollout waits for the window", T, || async {
        let waiting = api.cli(&["--json", "rollout", "status", &id]).json();
        if waiting["waiting"]
            .as_str()
            .unwrap_or_default()
            .contains("maintenance window")
        {
            Ok(())
        } else {
            Err(waiting.to_string())
        }
    })
    .await;
    assert_eq!(running(&ids), v1, "nothing moves before the window opens");
    let done = api
        .cli(&["--json", "rollout", "status", &id, "--watch"])
        .json();
    assert_eq!(done["state"]["state"], "succeeded", "{done}");
    let finished = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(finished >= opens, "completed only after the window opened");
    wait_all_on(&ids, APP_V2, &api).await;
}
