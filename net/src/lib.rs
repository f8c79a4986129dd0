//! Drover's transport, shared by the coordinator, the agent and the admin CLI.
//!
//! - [`tls`]: rustls configurations for QUIC that trust only the fleet CA
//!   (pinned; never the system roots), ALPN `drover/1`, TLS 1.3, no 0-RTT.
//! - [`stream`]: one framed request and its answers per bi-stream.
//! - [`identity`]: key pairs, certificate signing requests, the identities
//!   carried in certificates (`drover://machine/<id>`, `drover://admin/<name>`),
//!   and key files written with mode 0600.
//! - [`address`]: `host:port` as written, resolved at each connection.
//! - [`client`]: connecting to a coordinator and saying Hello.
//! - [`socket`]: UDP sockets with raised kernel buffers for every endpoint.
//! - [`fsutil`]: atomic file writes with an exact mode.
//! - [`clock`]: wall-clock milliseconds for records.
//! - [`s3`]: the S3 data-plane client (path-style, as Garage needs).

pub mod address;
pub mod client;
pub mod clock;
pub mod fsutil;
pub mod identity;
pub mod logging;
pub mod s3;
pub mod socket;
pub mod stream;
pub mod tls;

pub use address::HostPort;
pub use client::{error_chain, ClientError, CoordinatorConnection};
pub use identity::PeerCertificate;
