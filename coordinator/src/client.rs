//! The admin side of the wire: connects to the coordinator with an admin
//! bundle and makes admin requests.

use std::time::Duration;

use anyhow::{Context, Result};

use drover_net::client::{client_endpoint, ClientError, CoordinatorConnection};
use drover_protocol::v1::{AdminRequest, AdminResponse, Request, Response};

use crate::bundle::AdminBundle;

/// How long to wait for the coordinator to answer a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct AdminClient {
    conn: CoordinatorConnection,
    _endpoint: quinn::Endpoint,
}

impl AdminClient {
    pub async fn connect(bundle: &AdminBundle) -> Result<Self> {
        let config = drover_net::tls::client_config(
            &bundle.ca_der()?,
            Some((&bundle.cert_der()?, &bundle.key_der()?)),
            Duration::from_secs(30),
        )?;
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
        .with_context(|| {
            format!(
                "cannot reach the coordinator at {} as admin {}; is `drover serve` running?",
                bundle.coordinator, bundle.name
            )
        })?;
        Ok(AdminClient {
            conn,
            _endpoint: endpoint,
        })
    }

    /// Makes one admin request. A refusal keeps its wire code
    /// ([`ClientError::code`]).
    pub async fn call(&self, request: AdminRequest) -> Result<AdminResponse, ClientError> {
        match self.conn.request(&Request::Admin(request)).await? {
            Response::Admin(answer) => Ok(answer),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    pub async fn close(self) {
        self.conn.connection.close(0u32.into(), b"done");
        self._endpoint.wait_idle().await;
    }
}
