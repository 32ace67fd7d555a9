//! Staged rollouts, the pure parts: the strategy and its validation ([`strategy`]),
//! maintenance windows ([`window`]), the wave planner ([`waves`]), the per-device health gate
//! ([`gate`]), the state machine one pass of the gated loop steps ([`engine`]) and the view
//! the API shows ([`view`]). The service that runs them (persisted state, the loop, operator
//! controls) lives in the controller; nothing here does I/O.

pub mod engine;
pub mod gate;
pub mod strategy;
pub mod view;
pub mod waves;
pub mod window;
