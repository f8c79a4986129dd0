//! The agent's life: enroll once, then keep one connection to the
//! coordinator, report health at the interval it names, renew the
//! certificate at two thirds of its lifetime, and reconnect with jittered
//! exponential backoff whenever the connection is lost. The agent only ever
//! dials out; it never accepts connections.

use std::path::Path;
use std::time::Duration;

use tokio::sync::watch;

use drover_net::client::{connection_code, ClientError, CoordinatorConnection};
use drover_net::clock::now_ms;
use drover_net::identity::{self as net_identity, IdentityError};
use drover_net::stream::read_frame_for;
use drover_protocol::frame::MAX_FRAME_LEN;
use drover_protocol::v1::{AgentEvent, AgentRequest, AgentResponse, EnrollRequest, IssuedCertificate, Request, Response, Secret, MAX_REPORTS_PER_REQUEST};
use drover_protocol::ErrorCode;

use crate::backoff::Backoff;
use crate::config::AgentConfig;
use crate::identity::{self, IdentityRecord};
use crate::scheduler::{Answer, Outgoing, Scheduler};
use crate::system::health::HealthSource;

/// QUIC idle timeout of the agent's connection (keep-alives every third).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Datagrams received on the connection so far. A coordinator that is
/// only slow still acknowledges what it is sent; a dead or unreachable one
/// sends nothing at all.
fn heard(conn: &CoordinatorConnection) -> u64 {
    conn.connection.stats().udp_rx.datagrams
}

/// Where the agent is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Phase {
    #[default]
    Starting,
    Enrolling,
    Connecting,
    Connected,
    /// Waiting before the next attempt.
    Backoff,
    /// The coordinator revoked this machine; the agent stopped.
    Revoked,
    Stopped,
}

/// What the agent reports about itself (for its caller and tests).
#[derive(Debug, Clone, Default)]
pub struct AgentStatus {
    pub phase: Phase,
    pub machine_id: Option<String>,
    pub serial: Option<String>,
    /// Successful connections (welcomes received).
    pub connects: u64,
    pub reports: u64,
    pub renewals: u64,
    pub last_error: Option<String>,
    /// The newest generation the coordinator announced.
    pub desired_generation: u64,
    /// The last generation this agent finished applying, and how.
    pub applied_generation: u64,
    pub applied_step: Option<drover_protocol::v1::DeployStep>,
    /// Applies started (including resumed ones).
    pub applies: u64,
}

/// Why the agent stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot read the fleet CA (ca_file, --ca-file): {error}")]
    Ca { error: IdentityError },
    #[error("machine {0} was revoked by the coordinator; re-enroll with a new token and an empty state directory")]
    Revoked(String),
}

/// Why one attempt (enroll, connect, session) ended.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("not enrolled and no enrollment_token_file is configured; give the agent a token file (drover tokens create)")]
    NoToken,
    #[error("cannot read the enrollment token {path}: {source}")]
    TokenFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("enrollment refused: {0}")]
    Enrollment(String),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("{0}")]
    Client(ClientError),
    #[error("revoked")]
    Revoked,
    #[error("stopping")]
    Shutdown,
}

impl From<ClientError> for AttemptError {
    fn from(e: ClientError) -> Self {
        if e.code() == Some(ErrorCode::Revoked) {
            AttemptError::Revoked
        } else {
            AttemptError::Client(e)
        }
    }
}

/// Enrolls once: sends `token` and a CSR for `key` over a connection without
/// a client certificate, then closes it. Used by tests of refusals.
pub async fn enroll_once(
    endpoint: &quinn::Endpoint,
    config: &AgentConfig,
    ca_der: &[u8],
    key: &rcgen::KeyPair,
    token: Secret,
    hostname: &str,
) -> Result<IssuedCertificate, ClientError> {
    let (issued, conn) = enroll_keeping(endpoint, config, ca_der, key, token, hostname).await?;
    if let Some(conn) = conn {
        conn.connection.close(0u32.into(), b"enrolled");
    }
    Ok(issued)
}

/// The protocol version from which a coordinator keeps the connection an
/// agent enrolled on as the machine's.
pub const ENROLL_KEEPS_CONNECTION: u16 = 14;

/// Enrolls over a connection without a client certificate, with a CSR
/// bound to that connection's TLS session. A coordinator of protocol 14 or
/// later then serves the connection as the new machine's: it is returned,
/// to go on with (the certificate is for the connections after it). From
/// an older one, none: the agent connects again with the certificate.
pub async fn enroll_keeping(
    endpoint: &quinn::Endpoint,
    config: &AgentConfig,
    ca_der: &[u8],
    key: &rcgen::KeyPair,
    token: Secret,
    hostname: &str,
) -> Result<(IssuedCertificate, Option<CoordinatorConnection>), ClientError> {
    let tls = drover_net::tls::client_config(ca_der, None, IDLE_TIMEOUT).map_err(|e| ClientError::Unexpected(e.to_string()))?;
    let conn = CoordinatorConnection::dial(endpoint, tls, &config.coordinator, &config.server_name(), &software(), config.connect_timeout).await?;
    let binding = net_identity::enrollment_binding(&conn.connection);
    let csr = net_identity::csr_der_bound(key, hostname, binding.as_deref()).map_err(|e| ClientError::Unexpected(e.to_string()))?;
    let answer = conn.request(&Request::Enroll(EnrollRequest { token, csr_der: csr, hostname: hostname.to_string() })).await;
    let issued = match answer {
        Ok(Response::Enrolled(issued)) => issued,
        Ok(other) => {
            conn.connection.close(0u32.into(), b"unexpected answer");
            return Err(ClientError::Unexpected(format!("{other:?}")));
        }
        Err(e) => {
            conn.connection.close(0u32.into(), b"enrollment refused");
            return Err(e);
        }
    };
    if binding.is_some() && conn.version >= ENROLL_KEEPS_CONNECTION {
        Ok((issued, Some(conn)))
    } else {
        conn.connection.close(0u32.into(), b"enrolled");
        Ok((issued, None))
    }
}

/// How long the coordinator may take to roll a volume back.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a deployment's requests (fetch, progress, outcome) may wait
/// for their answer. A deploy to a large fleet makes every agent ask at
/// once; an answer late by seconds is still worth having, while asking
/// again adds to the very load that made it late.
const DEPLOY_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the agent lets an apply's progress reports gather before it
/// sends them: a fraction of any real switch, and time enough for the
/// steps around it (and for the outcome of an apply with nothing to do).
const REPORT_COALESCE: Duration = Duration::from_millis(100);

/// One request on its own stream, with a deadline. A late answer abandons
/// that stream only: the connection stays, so a coordinator under load is
/// not made to accept a reconnect (and a new handshake) on top of the work
/// it is late with. Whether the coordinator is still there at all is
/// QUIC's to tell: keep-alives every third of the idle timeout, and the
/// connection ends when nothing came back for the whole of it (or at once,
/// when a restarted coordinator answers with a stateless reset).
pub async fn ask(conn: &CoordinatorConnection, request: Request, timeout: Duration) -> Result<Response, ClientError> {
    match tokio::time::timeout(timeout, conn.request(&request)).await {
        Ok(answer) => answer,
        Err(_) => Err(ClientError::RequestTimeout { addr: conn.connection.remote_address(), after: timeout }),
    }
}

pub fn software() -> String {
    format!("drover-agent {}", env!("CARGO_PKG_VERSION"))
}

/// The running agent.
pub struct Agent<H: HealthSource> {
    pub config: AgentConfig,
    pub endpoint: quinn::Endpoint,
    pub health: H,
    pub hostname: String,
    pub status: watch::Sender<AgentStatus>,
    pub shutdown: watch::Receiver<bool>,
    pub scheduler: Scheduler,
}

impl<H: HealthSource> Agent<H> {
    /// Runs until shut down or revoked.
    pub async fn run(mut self) -> Result<(), AgentError> {
        let ca_der = net_identity::read_cert_pem(&self.config.ca_file).map_err(|error| AgentError::Ca { error })?;
        let mut backoff = Backoff::new(self.config.backoff_initial, self.config.backoff_max);
        self.scheduler.resume_interrupted();
        self.show_applies();
        loop {
            if *self.shutdown.borrow() {
                break;
            }
            match self.attempt(&ca_der, &mut backoff).await {
                Ok(()) | Err(AttemptError::Shutdown) => {}
                Err(AttemptError::Revoked) => {
                    let id = self.status.borrow().machine_id.clone().unwrap_or_default();
                    tracing::error!(machine = %id, "this machine was revoked by the coordinator; stopping");
                    self.status.send_modify(|s| {
                        s.phase = Phase::Revoked;
                        s.last_error = Some("revoked by the coordinator".into());
                    });
                    return Err(AgentError::Revoked(id));
                }
                Err(e) => {
                    tracing::warn!(error = %e, coordinator = %self.config.coordinator, "connection attempt failed");
                    self.status.send_modify(|s| s.last_error = Some(e.to_string()));
                    self.next_coordinator();
                }
            }
            if *self.shutdown.borrow() {
                break;
            }
            // An apply that switched must hear from a coordinator within
            // its confirmation deadline or roll back: while one runs, the
            // pauses stay at most an eighth of that deadline, so that a
            // coordinator taking over (a failover) is found in time.
            let delay =
                if self.scheduler.confirming() { backoff.next_capped(rand::random(), self.config.confirm_deadline / 8) } else { backoff.next(rand::random()) };
            self.status.send_modify(|s| s.phase = Phase::Backoff);
            tracing::debug!(?delay, "reconnecting after a pause");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.shutdown.changed() => {}
            }
        }
        self.status.send_modify(|s| s.phase = Phase::Stopped);
        Ok(())
    }

    /// Whether a connection that hears nothing while a switch waits for its
    /// confirmation is left for another coordinator: only when the fleet
    /// has others. The only coordinator, overloaded (50,000 agents
    /// reporting at once on two cores), can go seconds without sending a
    /// datagram to one agent; connecting to it again would only add a
    /// handshake to its load. A dead one is noticed at the idle timeout
    /// (30 s), well within the confirmation deadline.
    fn failover(&self) -> bool {
        !self.config.other_coordinators.is_empty()
    }

    /// Moves on to the next of the fleet's coordinators, if it has others.
    fn next_coordinator(&mut self) {
        if self.config.other_coordinators.is_empty() {
            return;
        }
        let next = self.config.other_coordinators.remove(0);
        let previous = std::mem::replace(&mut self.config.coordinator, next);
        self.config.other_coordinators.push(previous);
        tracing::info!(coordinator = %self.config.coordinator, "trying the fleet's next coordinator");
    }

    async fn attempt(&mut self, ca_der: &[u8], backoff: &mut Backoff) -> Result<(), AttemptError> {
        let dir = self.config.state_dir.clone();
        let mut stored = identity::load_or_create(&dir)?;
        let expired = stored.record.as_ref().is_some_and(|r| r.not_after <= now_ms());
        if expired {
            tracing::warn!("this machine's certificate has expired; enrolling again with the token");
        }
        let mut kept = None;
        if stored.cert_der.is_none() || expired {
            kept = self.enroll(ca_der, &stored.key, &dir).await?;
            stored = identity::load_or_create(&dir)?;
        }
        let (Some(cert), Some(record)) = (stored.cert_der.clone(), stored.record.clone()) else {
            return Err(AttemptError::Identity(IdentityError::NoIdentity));
        };
        self.status.send_modify(|s| {
            s.phase = Phase::Connecting;
            s.machine_id = Some(record.machine_id.clone());
            s.serial = Some(record.serial.clone());
        });
        // The connection enrolled on is already the machine's: one
        // handshake for an enrollment, not two.
        let conn = match kept {
            Some(conn) => conn,
            None => {
                let tls = drover_net::tls::client_config(ca_der, Some((&cert, &stored.key.serialize_der())), IDLE_TIMEOUT)
                    .map_err(|e| AttemptError::Client(ClientError::Unexpected(e.to_string())))?;
                CoordinatorConnection::dial(&self.endpoint, tls, &self.config.coordinator, &self.config.server_name(), &software(), self.config.connect_timeout)
                    .await?
            }
        };
        let result = self.session(&conn, &stored.key, record, &dir, backoff).await;
        if matches!(result, Err(AttemptError::Shutdown)) {
            conn.connection.close(0u32.into(), b"agent stopping");
        }
        result
    }

    /// Enrolls with the token, and stores the certificate before anything
    /// else goes over the connection (until the machine is first seen, a
    /// lost answer can be asked again with the same key and token). Returns
    /// the connection to go on with, when the coordinator keeps it.
    async fn enroll(&mut self, ca_der: &[u8], key: &rcgen::KeyPair, dir: &Path) -> Result<Option<CoordinatorConnection>, AttemptError> {
        let path = self.config.enrollment_token_file.clone().ok_or(AttemptError::NoToken)?;
        let token = std::fs::read_to_string(&path).map_err(|source| AttemptError::TokenFile { path: path.display().to_string(), source })?;
        self.status.send_modify(|s| s.phase = Phase::Enrolling);
        let (issued, kept) = match enroll_keeping(&self.endpoint, &self.config, ca_der, key, Secret::new(token.trim()), &self.hostname).await {
            Ok(enrolled) => enrolled,
            Err(ClientError::Refused(e)) => return Err(AttemptError::Enrollment(e.message)),
            Err(e) => return Err(e.into()),
        };
        let record = match identity::store_certificate(dir, &issued) {
            Ok(record) => record,
            Err(e) => {
                if let Some(conn) = kept {
                    conn.connection.close(0u32.into(), b"certificate not stored");
                }
                return Err(e.into());
            }
        };
        tracing::info!(machine = %record.machine_id, kept = kept.is_some(), "enrolled");
        Ok(kept)
    }

    /// Mirrors the scheduler's counters into the status.
    fn show_applies(&self) {
        let applied = self.scheduler.applied();
        let applies = self.scheduler.applies;
        let desired = self.scheduler.desired_generation();
        self.status.send_modify(|s| {
            s.applies = applies;
            s.desired_generation = desired;
            if let Some(a) = &applied {
                s.applied_generation = a.generation;
                s.applied_step = Some(a.step);
            }
        });
    }

    /// Sends what the scheduler has to send, and hands it the answers.
    async fn pump(&mut self, conn: &CoordinatorConnection) -> Result<(), AttemptError> {
        // Protocol 7 takes the progress reports queued meanwhile in one
        // request; an older coordinator one at a time.
        let batch = if conn.version >= 7 { MAX_REPORTS_PER_REQUEST } else { 1 };
        while let Some(out) = self.scheduler.next_to_send(batch) {
            let request = match &out {
                Outgoing::Progress(reports) if reports.len() == 1 => AgentRequest::ReportDeployment(reports[0].clone()),
                Outgoing::Progress(reports) => AgentRequest::ReportDeployments(reports.clone()),
                Outgoing::Outcome(report) => AgentRequest::ReportDeployment(report.clone()),
                Outgoing::Finished { progress, outcome } => AgentRequest::ReportDeployments(progress.iter().chain([outcome]).cloned().collect()),
                Outgoing::Fetch => AgentRequest::FetchAssignment,
                Outgoing::Restore { generation, name } => AgentRequest::RestoreVolume { generation: *generation, name: name.clone() },
            };
            // A volume rollback takes the block storage's time, not a
            // round trip's. A switch waiting for its confirmation waits at
            // most an eighth of its deadline for a coordinator that sends
            // nothing at all (not even QUIC's acknowledgements: dead or cut
            // off), and then connects again (another may have taken over);
            // a coordinator that is only slow is waited for as before.
            let confirming = self.scheduler.confirming();
            let heard_before = heard(conn);
            let timeout = match out {
                Outgoing::Restore { .. } => self.config.connect_timeout.max(RESTORE_TIMEOUT),
                _ if confirming => self.config.connect_timeout.max(self.config.confirm_deadline / 8).min(DEPLOY_REQUEST_TIMEOUT),
                _ => self.config.connect_timeout.max(DEPLOY_REQUEST_TIMEOUT),
            };
            let response = match ask(conn, Request::Agent(request), timeout).await {
                Err(ClientError::Refused(e)) if matches!(out, Outgoing::Restore { .. }) => Response::Error(e),
                Err(e @ ClientError::RequestTimeout { .. })
                    if confirming && self.failover() && !matches!(out, Outgoing::Restore { .. }) && heard(conn) == heard_before =>
                {
                    tracing::warn!(error = %e, "the coordinator sent nothing at all while a switch waits for its confirmation; trying the fleet's next coordinator");
                    return Err(e.into());
                }
                Err(e @ ClientError::RequestTimeout { .. }) => {
                    // Left unanswered: the scheduler offers it again at the
                    // next pump (at the latest after the next health report).
                    tracing::warn!(error = %e, "request");
                    return Ok(());
                }
                other => other?,
            };
            let answer = match response {
                Response::Agent(AgentResponse::Ack) => Answer::Acknowledged,
                Response::Agent(AgentResponse::Assignment { assignment, access }) => Answer::Assignment(Box::new((assignment, access))),
                Response::Agent(AgentResponse::NoAssignment) => Answer::NoAssignment,
                Response::Error(e) if matches!(out, Outgoing::Restore { .. }) => Answer::Refused(e.message),
                other => return Err(ClientError::Unexpected(format!("{other:?}")).into()),
            };
            self.scheduler.answered(out, answer);
            self.show_applies();
        }
        Ok(())
    }

    async fn session(
        &mut self,
        conn: &CoordinatorConnection,
        key: &rcgen::KeyPair,
        mut record: IdentityRecord,
        dir: &Path,
        backoff: &mut Backoff,
    ) -> Result<(), AttemptError> {
        let lost = |conn: &CoordinatorConnection, e: ClientError| -> AttemptError {
            match conn.connection.close_reason() {
                Some(reason) if connection_code(&reason) == Some(ErrorCode::Revoked) => AttemptError::Revoked,
                _ => e.into(),
            }
        };
        let (_send, mut events) = conn.open(&Request::Agent(AgentRequest::Watch)).await?;
        let welcome = read_frame_for::<Response>(&mut events, MAX_FRAME_LEN, &[], conn.version).await.map_err(|e| lost(conn, ClientError::Stream(e)))?;
        let interval = match welcome {
            Response::Agent(AgentResponse::Event(AgentEvent::Welcome { machine_id, health_interval_ms })) => {
                tracing::info!(machine = %machine_id, "connected to the coordinator");
                Duration::from_millis(health_interval_ms.max(100))
            }
            Response::Error(e) => return Err(ClientError::Refused(e).into()),
            other => return Err(ClientError::Unexpected(format!("{other:?}")).into()),
        };
        backoff.reset();
        self.status.send_modify(|s| {
            s.phase = Phase::Connected;
            s.connects += 1;
            s.last_error = None;
        });
        self.pump(conn).await?;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let renew_in = |r: &IdentityRecord| Duration::from_millis(r.renew_at().saturating_sub(now_ms()));
        let renew = tokio::time::sleep(renew_in(&record));
        tokio::pin!(renew);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let report = self.health.collect().await;
                    let heard_before = heard(conn);
                    match ask(conn, Request::Agent(AgentRequest::Report(report)), self.config.connect_timeout).await {
                        Ok(Response::Agent(AgentResponse::Ack)) => {
                            self.status.send_modify(|s| s.reports += 1);
                            self.scheduler.heard_from_coordinator();
                        }
                        Ok(other) => return Err(ClientError::Unexpected(format!("{other:?}")).into()),
                        // A switch waiting for its confirmation cannot wait
                        // out a coordinator that sends nothing at all (QUIC
                        // notices a dead one only at the idle timeout):
                        // connect to another of the fleet's coordinators. A
                        // slow one still acknowledges; a fleet's only one is
                        // waited for (see `failover`).
                        Err(e @ ClientError::RequestTimeout { .. }) if self.scheduler.confirming() && self.failover() && heard(conn) == heard_before => {
                            tracing::warn!(error = %e, "the coordinator sent nothing at all while a switch waits for its confirmation; connecting again");
                            return Err(e.into());
                        }
                        Err(e @ ClientError::RequestTimeout { .. }) => tracing::warn!(error = %e, "health report"),
                        Err(e) => return Err(lost(conn, e)),
                    }
                    // What a slow answer left unsent goes again now.
                    self.pump(conn).await?;
                }
                _ = &mut renew => {
                    let csr = net_identity::csr_der(key, &record.machine_id)?;
                    match ask(conn, Request::Agent(AgentRequest::Renew { csr_der: csr }), self.config.connect_timeout).await {
                        Ok(Response::Agent(AgentResponse::Renewed(issued))) => {
                            record = identity::store_certificate(dir, &issued)?;
                            tracing::info!(serial = %record.serial, "certificate renewed");
                            self.status.send_modify(|s| {
                                s.renewals += 1;
                                s.serial = Some(record.serial.clone());
                            });
                            renew.as_mut().reset(tokio::time::Instant::now() + renew_in(&record));
                        }
                        Ok(other) => return Err(ClientError::Unexpected(format!("{other:?}")).into()),
                        Err(e @ ClientError::RequestTimeout { .. }) => {
                            tracing::warn!(error = %e, "certificate renewal");
                            renew.as_mut().reset(tokio::time::Instant::now() + interval);
                        }
                        Err(e) => return Err(lost(conn, e)),
                    }
                }
                event = read_frame_for::<Response>(&mut events, MAX_FRAME_LEN, &[], conn.version) => {
                    match event {
                        Ok(Response::Agent(AgentResponse::Event(AgentEvent::Desired { generation }))) => {
                            tracing::debug!(generation, "desired generation announced");
                            self.scheduler.desired(generation);
                            self.show_applies();
                            self.pump(conn).await?;
                        }
                        Ok(Response::Agent(AgentResponse::Event(AgentEvent::Assigned { assignment, access }))) => {
                            tracing::debug!(generation = assignment.generation, "desired generation announced with its assignment");
                            self.scheduler.assigned(assignment, access);
                            self.show_applies();
                            self.pump(conn).await?;
                        }
                        Ok(other) => tracing::debug!(?other, "event not understood by this agent; ignored"),
                        Err(e) => return Err(lost(conn, ClientError::Stream(e))),
                    }
                }
                _ = self.scheduler.wait() => {
                    // The apply's next reports, or its outcome, are usually
                    // moments away: waiting for them sends one request
                    // instead of several (a deploy to a large fleet makes
                    // every machine report at once).
                    tokio::time::sleep(REPORT_COALESCE).await;
                    self.pump(conn).await?
                }
                _ = self.shutdown.changed() => return Err(AttemptError::Shutdown),
            }
        }
    }
}
