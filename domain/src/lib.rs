//! # edgefleet-domain
//!
//! What the controller knows and decides, as pure code: no I/O, no clock reads it cannot be
//! given, no locks, no async. Everything here is unit-tested without a store, a broker or a
//! runtime; the controller's services hold the state and do the I/O around it.
//!
//! ## Layout
//! - [`compose`]: Compose files → normalized service specs (the supported subset), refusals
//!   naming service and key; [`duration`]: Compose durations (`1m30s`).
//! - [`platform`]: `os/arch[/variant]`, and whether a device's engine runs a service's
//!   `platform`.
//! - [`selector`]: deployment targets (`site=lyon,line=3`, `id=a|b`, `*`); [`labels`]: the
//!   labels an operator gives a device.
//! - [`deployment`]: a revision's stored spec; [`book`]: which stacks each device should run,
//!   and its next desired document; [`template`]: revisions resolved per device;
//!   [`variables`]: site and device variables and their precedence; [`interpolate`]:
//!   `${VAR}` and the built-ins.
//! - [`device`]: a device as the controller sees it and the summary the API lists;
//!   [`sites`]: per-site summaries and alarms for SCADA screens.
//! - [`rollout`]: strategy, maintenance windows, wave planner, health gate, the rollout state
//!   machine and its view.
//! - [`access`]: roles and site scope; [`user`]: users as stored.
//! - [`audit`]: audit entries and records, the hash chain and its walk.
//!
//! ## Rule
//! This crate depends on `edgefleet-protocol`, serde, hashing and time parsing only. The
//! compiler keeps it that way: nothing here can reach the store, the bus or HTTP.

pub mod access;
pub mod audit;
pub mod book;
pub mod compose;
pub mod deployment;
pub mod device;
pub mod duration;
pub mod interpolate;
pub mod labels;
pub mod platform;
pub mod policy;
pub mod rollout;
pub mod selector;
pub mod sites;
pub mod template;
pub mod user;
pub mod variables;
