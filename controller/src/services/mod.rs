//! The controller's operations, each a service that owns its state and gets what it depends
//! on when it is built (no shared "controller" object): the composition happens once, in
//! [`crate::app`].
//!
//! Dependencies point down this list and never back up:
//! - [`fleet`]: the live fleet view (devices, change tracking).
//! - [`link`]: the broker link's state.
//! - [`outbox`]: the publish queue and the site summaries (→ fleet).
//! - [`audit`]: the audit log (→ store).
//! - [`windows`]: maintenance windows (→ store).
//! - [`policies`]: workload policies per site and the fleet default (→ store).
//! - [`vault`]: secrets and registry credentials, sealed at rest and per device (→ store).
//! - [`variables`]: variables kept per site and per device (→ store).
//! - [`deployments`]: apply, delete, pins, desired documents (each device's resolved and
//!   sealed for it), policy checks (→ fleet, outbox, policies, vault, variables, store).
//! - [`inventory`]: a device's labels, set by admins only (→ deployments, fleet, store).
//! - [`commands`]: signed commands to one agent and their replies (→ fleet, outbox).
//! - [`rollouts`]: running rollouts (→ deployments, fleet, windows, audit, outbox, store).
//! - [`intake`]: what devices publish (→ fleet, deployments, commands, audit, outbox, store).
//! - [`users`]: users, passwords, tokens (→ audit, store).
//! - [`identity`]: enrollment, revocation, integrators (→ fleet, audit, users, store).
//! - [`keys`]: the desired-state signing key (files).
//!
//! Services do no blocking I/O on the async runtime: the store runs on its own threads,
//! password hashing, certificate issuing and file writes on blocking threads.

pub mod audit;
pub mod commands;
pub mod deployments;
pub mod fleet;
pub mod identity;
pub mod intake;
pub mod inventory;
pub mod keys;
pub mod link;
pub mod outbox;
pub mod policies;
pub mod rollouts;
pub mod users;
pub mod variables;
pub mod vault;
pub mod windows;
