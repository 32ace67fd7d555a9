//! # edgefleet-controller
//!
//! The control plane: holds deployments and their revisions, computes and publishes each
//! device's desired document, aggregates what agents report into a live fleet view, serves
//! the HTTP API and the dashboard. `edgefleet gateway` runs it next to the embedded broker
//! ([`gateway`]); `edgefleet controller` runs it against any external MQTT broker
//! ([`app::run_controller`]). The `edgefleet` binary and its client commands are the `cli`
//! crate.
//!
//! ## Layout, in layers (every dependency points down)
//! - `edgefleet_domain` (crate): pure — Compose, targets, the desired-state book, rollouts,
//!   access rules, the audit chain.
//! - `edgefleet_store` (crate): SQLite, one owner thread for writes, a reader.
//! - [`services`]: the operations, each owning its state (fleet, deployments, intake,
//!   outbox and site summaries, audit, rollouts, windows, commands, users, identity, keys).
//! - [`bus`]: the MQTT link and publisher.
//! - [`http`]: the JSON API (error type, authentication and audit middleware, routes by
//!   resource) and the enrollment listener.
//! - [`web`]: the dashboard, on top of [`http`].
//! - [`app`] and [`gateway`]: the composition root — services built once, listeners handed
//!   in, essential tasks supervised (crash-only).
//!
//! ARCHITECTURE.md has the rules; `tests/layers.rs` checks them on every test run.

pub mod app;
pub mod bus;
pub mod gateway;
pub mod http;
pub mod services;
pub mod web;

pub use app::{ADDRESSES_FILE, Addresses, App, ControllerConfig, run_controller};
pub use gateway::{GatewayConfig, GatewayListeners, run_gateway};
