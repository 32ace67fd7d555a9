//! # edgefleet-tests
//!
//! The end-to-end harness: starts the real `edgefleet` and `edgefleet-agent` binaries, a real
//! Mosquitto when asked, builds its own container images (no registry here), and talks to
//! the gateway over HTTP and MQTT like a user or an integrator would.
//!
//! ## Layout
//! - [`browser`]: headless Chromium over WebDriver (chromedriver), screenshots.
//! - [`bins`]: builds the binaries once per test process and finds them.
//! - [`procs`]: child processes (gateway, controller, broker, agent, Mosquitto) that die with
//!   the test, logs kept under the test's temp dir and printed on failure.
//! - [`images`]: test images imported from a busybox rootfs tarball.
//! - [`docker`]: what the engine really runs, and cleanup of a test's containers.
//! - [`hosts`]: a plant of separate hosts (gateway and agents in containers on a private
//!   network, images from `scripts/images`) and the faults dealt to them (links cut or lossy,
//!   hosts killed).
//! - [`invariants`]: what must hold after any fault, checked from outside.
//! - [`registry`]: a real image registry (Debian's `docker-registry`) the engine pulls from.
//! - [`mqtt`]: retained documents read with `mosquitto_sub`, as an integrator would.
//! - [`ports`]: ports from the servers' own addresses files, or held for them: never guessed.
//! - [`api`]: the gateway's HTTP API and the `edgefleet` CLI.
//! - [`wait`]: polling with a deadline and a useful failure message.

pub mod api;
pub mod bins;
pub mod browser;
pub mod docker;
pub mod hosts;
pub mod images;
pub mod invariants;
pub mod mqtt;
pub mod ports;
pub mod procs;
pub mod registry;
pub mod wait;

/// A device id unique to this test run: `<tag>-<pid>-<n>`.
pub fn unique_id(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
