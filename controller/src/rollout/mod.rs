//! Staged rollouts (in progress): the pure parts first — the strategy and its validation,
//! maintenance windows, the wave planner and the per-device health gate. The engine that
//! drives them (persisted state, the periodic gated loop, the CLI and the rollout topic) comes
//! next and calls these; nothing here does I/O.

pub mod engine;
pub mod gate;
pub mod strategy;
pub mod waves;
pub mod window;
