# What Cargo needs to build the workspace, as paths relative to the
# repository's root: the flake's package `src` is exactly these, and
# coordinator/tests/system/flake_source.rs copies exactly these into an empty
# directory and builds both binaries there (offline), so that the list
# cannot fall behind the workspace's members.
[
  "Cargo.toml"
  "Cargo.lock"
  "protocol"
  "net"
  "store"
  "coordinator"
  "agent"
  "bench"
  "testing/linstor-double"
  "testing/proxmox-double"
  "testing/testkit"
]
