//! The admin side of the wire: connects to the coordinator with an admin
//! bundle and makes admin requests.

use std::time::Duration;

use anyhow::{Context, Result};

use drover_net::client::{client_endpoint, ClientError, CoordinatorConnection};
use drover_protocol::v1::{AdminRequest, AdminResponse, Labels, MachineInfo, Request, Response, MAX_MACHINES_PER_PAGE};

use crate::bundle::AdminBundle;

/// The protocol version from which the machines are listed page by page.
const MACHINES_PAGED_SINCE: u16 = 14;

/// How long to wait for the coordinator to answer a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct AdminClient {
    conn: CoordinatorConnection,
    _endpoint: quinn::Endpoint,
}

impl AdminClient {
    pub async fn connect(bundle: &AdminBundle) -> Result<Self> {
        let config = drover_net::tls::client_config(&bundle.ca_der()?, Some((&bundle.cert_der()?, &bundle.key_der()?)), Duration::from_secs(30))?;
        let endpoint = client_endpoint(bundle.coordinator)?;
        let conn = CoordinatorConnection::connect(
            &endpoint,
            config,
            bundle.coordinator,
            &bundle.server_name,
            &format!("drover-cli {}", env!("CARGO_PKG_VERSION")),
            CONNECT_TIMEOUT,
        )
        .await
        .with_context(|| format!("cannot reach the coordinator at {} as admin {}; is `drover serve` running?", bundle.coordinator, bundle.name))?;
        Ok(AdminClient { conn, _endpoint: endpoint })
    }

    /// The protocol version agreed with the coordinator.
    pub fn version(&self) -> u16 {
        self.conn.version
    }

    /// Every machine matching `selector`, in hostname order: page by page
    /// from a coordinator of protocol 14 or later (a fleet too large for one
    /// answer), in one answer from an older one.
    pub async fn machines(&self, selector: Labels) -> Result<Vec<MachineInfo>, ClientError> {
        let unexpected = |e: drover_protocol::answer::UnexpectedAnswer| ClientError::Unexpected(e.to_string());
        if self.version() < MACHINES_PAGED_SINCE {
            return self.call(AdminRequest::MachinesList { selector }).await?.machines().map_err(unexpected);
        }
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let request = AdminRequest::MachinesPage { selector: selector.clone(), after, limit: MAX_MACHINES_PER_PAGE };
            let (machines, next) = self.call(request).await?.machines_page().map_err(unexpected)?;
            all.extend(machines);
            match next {
                Some(next) => after = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// Makes one admin request. A refusal keeps its wire code
    /// ([`ClientError::code`]).
    pub async fn call(&self, request: AdminRequest) -> Result<AdminResponse, ClientError> {
        match self.conn.request(&Request::Admin(request)).await? {
            Response::Admin(answer) => Ok(answer),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Takes a backup, writing its parts to `out` as they arrive and
    /// calling `progress` with the bytes so far; returns its size and
    /// SHA-256 once both are checked against what arrived.
    pub async fn backup(&self, out: &mut impl std::io::Write, mut progress: impl FnMut(u64)) -> Result<(u64, String)> {
        use sha2::Digest;
        if self.conn.version < 4 {
            anyhow::bail!("the coordinator speaks protocol {}; backups need 4 (upgrade the coordinator)", self.conn.version);
        }
        let (mut send, mut recv) = self.conn.connection.open_bi().await.context("opening a stream")?;
        drover_net::stream::write_frame(&mut send, &Request::Admin(AdminRequest::Backup)).await?;
        send.finish().ok();
        let mut hash = sha2::Sha256::new();
        let mut got: u64 = 0;
        loop {
            let frame: Response = drover_net::stream::read_frame(&mut recv, drover_protocol::frame::MAX_FRAME_LEN).await?;
            let answer = match frame {
                Response::Admin(answer) => answer,
                Response::Error(e) => return Err(ClientError::Refused(e).into()),
                other => anyhow::bail!("unexpected answer to a backup: {other:?}"),
            };
            if answer.kind() == "BackupChunk" {
                let bytes = answer.backup_chunk()?;
                hash.update(&bytes);
                out.write_all(&bytes).context("writing the backup")?;
                got += bytes.len() as u64;
                progress(got);
                continue;
            }
            let (bytes, sha256) = answer.backup_end()?;
            let ours = hex::encode(hash.finalize());
            if bytes != got || sha256 != ours {
                anyhow::bail!("the backup arrived damaged ({got} of {bytes} bytes, SHA-256 {ours} instead of {sha256}); take it again");
            }
            return Ok((bytes, sha256));
        }
    }

    pub async fn close(self) {
        self.conn.connection.close(0u32.into(), b"done");
        self._endpoint.wait_idle().await;
    }
}
