//! The Drover coordinator: holds the fleet's desired state, enrolls machines,
//! serves agents and admins over QUIC, and is driven by the `drover` CLI.
//!
//! Layers, each depending only on those below it (a test over the module
//! graph, `tests/repository/architecture.rs`, keeps it so):
//! - [`server`]: the QUIC endpoint, nothing else;
//! - [`app`]: what the coordinator does — request handlers, the rollout
//!   driver, enrollment — over the cores, the store and the external systems;
//! - the cores, without I/O: [`tokens`], [`registry`], [`authz`], [`deploy`],
//!   [`tenancy`], [`rollout`] (the planner);
//! - [`store`] (the only module that imports sled), [`s3`] (object storage
//!   behind a trait), [`pki`] (the fleet CA), [`model`] (the records);
//! - the admin side: [`cli`], [`command`] (one module per verb), [`client`],
//!   [`bundle`], [`output`]; [`init`] makes new state directories.

pub mod app;
pub mod authz;
pub mod backup;
pub mod bundle;
pub mod cli;
pub mod client;
pub mod command;
pub mod config;
pub mod deploy;
pub mod fleet;
pub mod hypervisor;
pub mod init;
pub mod model;
pub mod nix;
pub mod output;
pub mod pki;
pub mod registry;
pub mod rollout;
pub mod s3;
pub mod server;
pub mod store;
pub mod tenancy;
pub mod tokens;
pub mod volume_rules;
pub mod volumes;
pub mod wiring;
