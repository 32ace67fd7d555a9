//! What the Docker engine really runs for a device, read with the docker CLI (not through
//! the code under test), and cleanup of everything a test's devices created.

use std::process::Command;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub image: String,
    pub state: String,
}

/// Runs `docker ARGS` and returns its stdout (empty on failure).
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every container (running or not) labelled with this device id.
pub fn containers(device: &str) -> Vec<Container> {
    let filter = format!("label=io.edgefleet.device={device}");
    docker(&[
        "ps",
        "-a",
        "--no-trunc",
        "--filter",
        &filter,
        "--format",
        "{{.ID}}\t{{.Names}}\t{{.Image}}\t{{.State}}",
    ])
    .lines()
    .filter_map(|l| {
        let mut f = l.split('\t');
        Some(Container {
            id: f.next()?.to_owned(),
            name: f.next()?.to_owned(),
            image: f.next()?.to_owned(),
            state: f.next()?.to_owned(),
        })
    })
    .collect()
}

/// `docker stop` by hand, as an operator on the device would.
pub fn stop(id: &str) {
    docker(&["stop", "-t", "2", id]);
}

/// `docker rm -f` by hand.
pub fn remove(id: &str) {
    docker(&["rm", "-f", id]);
}

/// Removes every container and volume of the given devices when dropped, also when the test
/// fails.
pub struct Cleanup(pub Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for device in &self.0 {
            let filter = format!("label=io.edgefleet.device={device}");
            for id in docker(&["ps", "-aq", "--filter", &filter]).split_whitespace() {
                docker(&["rm", "-f", id]);
            }
            for vol in docker(&["volume", "ls", "-q", "--filter", &filter]).split_whitespace() {
                docker(&["volume", "rm", "-f", vol]);
            }
            for net in docker(&["network", "ls", "-q", "--filter", &filter]).split_whitespace() {
                docker(&["network", "rm", net]);
            }
        }
    }
}
