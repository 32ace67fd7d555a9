//! The fleet simulator against a real gateway: simulated devices enroll with their own
//! certificates, connect through the TLS front, converge, and a rehearsed rollout moves them
//! wave by wave; a second run reuses the identities. Nonsense parameters are refused.

use std::process::Command;

use edgefleet_tests::bins::bins;
use edgefleet_tests::procs::Gateway;

fn sim(gw: &Gateway, data: &std::path::Path, args: &[&str]) -> std::process::Output {
    let api = gw.api();
    let token = api.token().expect("admin token").expect("a token");
    Command::new(&bins().sim)
        .arg("--server")
        .arg(api.url())
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env("EDGEFLEET_TOKEN", token)
        .output()
        .expect("run edgefleet-sim")
}

#[test]
fn simulated_devices_enroll_converge_and_rehearse_a_rollout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = Gateway::start(dir.path());
    let data = dir.path().join("sim");
    let fleet = dir.path().join("fleet.toml");
    std::fs::write(
        &fleet,
        "sites = [\"lyon\", \"paris\"]\nareas = [\"a\"]\nlines = 2\ndevices_per_line = 2\n",
    )
    .unwrap();
    let out = sim(
        &gw,
        &data,
        &[
            "--fleet",
            fleet.to_str().unwrap(),
            "--rehearse",
            "--strategy",
            "canary=1,batch=50%,soak=0s",
            "--pull",
            "10ms",
            "--timeout",
            "2m",
            "--json",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "edgefleet-sim failed: {stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    assert_eq!(report["devices"], 8, "{report}");
    let r = &report["rehearsal"];
    assert_eq!(r["state"], "succeeded", "{report}");
    assert_eq!(r["devices"], 8, "{report}");
    // canary 1, then batches of half the rest: 1 + 4 + 3.
    let waves: Vec<u64> = r["waves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["devices"].as_u64().unwrap())
        .collect();
    assert_eq!(waves, vec![1, 4, 3], "{report}");
    // Every device is known to the gateway with the labels the simulator enrolled it with.
    let api = gw.api();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let d = rt.block_on(api.device("paris-a-2-00002")).expect("device");
    assert_eq!(d["labels"]["site"], "paris", "{d}");
    // A second run reuses the enrolled identities (no new device add).
    let again = sim(
        &gw,
        &data,
        &[
            "--devices",
            "0",
            "--fleet",
            fleet.to_str().unwrap(),
            "--rehearse",
            "--pull",
            "10ms",
            "--timeout",
            "2m",
            "--json",
        ],
    );
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

#[test]
fn nonsense_parameters_get_a_clear_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (args, why) in [
        (vec!["--start-failure", "2"], "probability between 0 and 1"),
        (vec!["--devices", "0"], "at least one line and one device"),
        (vec!["--pull", "soon"], "not a duration"),
        (vec!["--strategy", "canary"], "k=v pairs"),
    ] {
        let out = Command::new(&bins().sim)
            .args(&args)
            .arg("--data-dir")
            .arg(dir.path())
            .env("EDGEFLEET_TOKEN", "x")
            .output()
            .expect("run edgefleet-sim");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(stderr.contains(why), "{args:?}: {stderr}");
    }
}
