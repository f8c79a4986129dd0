//! The suites against the real systems: root (loop devices, mounts, network
//! namespaces, nftables), Garage, QEMU, Nix, the LINSTOR and Proxmox
//! doubles. Built with the `system-tests` feature (`scripts/test.sh` turns
//! it on); a missing program fails with how to install it.
//!
//! Tests that load the machine (QEMU guests, a workspace build, a lossy
//! link, three Garage nodes) take [`common::heavy`] so that no two of them
//! run at once; the others run beside them.

#[path = "../common/mod.rs"]
mod common;

mod block_storage;
mod closure;
mod etcd;
mod faults;
mod flake_source;
mod fleet_file;
mod full_disk;
mod nixops4;
mod object_store;
mod provision;
mod s3;
mod s3_cluster;
mod s3_deploy;
mod volumes;
mod web;
