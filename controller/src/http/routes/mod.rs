//! The API's handlers, one file per resource. Routes are registered in
//! [`crate::http::router`].

pub mod audit;
pub mod deployments;
pub mod devices;
pub mod health;
pub mod identity;
pub mod policies;
pub mod registries;
pub mod rollouts;
pub mod sessions;
pub mod users;
pub mod variables;
