//! Builds `edgefleet`, `edgefleet-agent` and `edgefleet-sim` once per test process (so `cargo test` alone is
//! enough) and returns their paths.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

pub struct Bins {
    pub edgefleet: PathBuf,
    pub agent: PathBuf,
    pub sim: PathBuf,
}

fn target_dir() -> PathBuf {
    // Test executables live in target/<profile>/deps/, binaries using the harness (the fleet
    // benchmark) in target/<profile>/.
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().map(PathBuf::from).unwrap_or(dir)
    } else if dir.as_os_str().is_empty() {
        PathBuf::from("target/debug")
    } else {
        dir
    }
}

pub fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        let dir = target_dir();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        // The whole workspace's binaries, as scripts/test, scripts/api-conformance and
        // bench/fleet.sh build them: the same feature set, so after one of them this finds
        // nothing to do (building a subset of packages unifies features differently and
        // rebuilt TLS, the agent and the CLI in every suite run).
        cmd.args(["build", "--workspace", "--bins"]);
        // The profile the caller runs from (target/<profile>/): `release`, or `profiling`
        // (release with symbols, for perf) when the benchmark is run from there.
        match dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => {}
            Some(profile) => {
                cmd.args(["--profile", profile]);
            }
        }
        let status = cmd
            .status()
            .expect("cannot run cargo to build the binaries under test");
        assert!(status.success(), "building the binaries under test failed");
        let bins = Bins {
            edgefleet: dir.join("edgefleet"),
            agent: dir.join("edgefleet-agent"),
            sim: dir.join("edgefleet-sim"),
        };
        assert!(
            bins.edgefleet.exists(),
            "{} missing",
            bins.edgefleet.display()
        );
        assert!(bins.agent.exists(), "{} missing", bins.agent.display());
        bins
    })
}
