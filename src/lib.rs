//! An outbound gateway for CometAPI's Runway video endpoints.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod body;
pub mod config;
pub mod duration;
pub mod envelope;
pub mod metrics;
pub mod mock;
pub mod proxy;
pub mod route;
pub mod server;
