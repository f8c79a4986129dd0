//! The coordinator served in process on loopback, with in-process agents and
//! the `drover` binary: no root, Garage, QEMU or Nix needed. Each file is
//! one concern; they share one binary (and one build).

#[path = "../common/mod.rs"]
mod common;

mod attacks;
mod backup;
mod browser;
mod cli_output;
mod deploy;
mod enrollment;
mod fleet;
mod hostile_input;
mod hostile_load;
mod metrics;
mod renewal;
mod restart;
mod rollout;
mod security;
mod simulate;
mod slow_coordinator;
mod tenants;
mod web;
