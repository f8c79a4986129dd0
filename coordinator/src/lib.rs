//! The Drover coordinator: holds the fleet's desired state, enrolls machines,
//! serves agents and admins over QUIC, and is driven by the `drover` CLI.
//!
//! Map: [`server`] (QUIC endpoint and request handlers), [`store`] (sled, the
//! only module that touches it), [`pki`] (fleet CA), the I/O-free cores
//! [`tokens`], [`registry`] and [`authz`], [`init`] (new state directories),
//! [`client`] and [`bundle`] (the admin side), [`cli`] and [`command`] (one
//! module per CLI verb).

pub mod authz;
pub mod bundle;
pub mod cli;
pub mod client;
pub mod command;
pub mod config;
pub mod deploy;
pub mod init;
pub mod model;
pub mod output;
pub mod pki;
pub mod registry;
pub mod rollout;
pub mod s3;
pub mod server;
pub mod store;
pub mod tenancy;
pub mod tokens;
