//! # edgefleet-bench
//!
//! Benchmarks that print tables and compare against a peer in the same run.
//!
//! ## Layout
//! - `src/bin/fanout.rs`: the desired-state fan-out probe of SPEC.md §11 — N MQTT clients,
//!   each subscribed QoS 1 to its own `…/desired` topic (resubscribing on every CONNACK, as
//!   the agent does), one publisher sending one retained ~600-byte document per client. Run
//!   against the embedded rumqttd with rumqttd's sample limits, with the gateway's limits,
//!   and against Mosquitto. `bench/fanout.sh` runs the matrix.
