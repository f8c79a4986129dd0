//! Health checks after a switch: a systemd unit is active, an HTTP URL
//! answers 2xx, a TCP port accepts, a bucket answers with the credentials the
//! machine received for it. They run together, again and again, until all
//! pass or the deadline passes.

use std::path::Path;
use std::time::Duration;

use drover_protocol::v1::HealthCheck;

/// How long one attempt of one check may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between rounds.
const ROUND_PAUSE: Duration = Duration::from_millis(500);

/// Lists the bucket with the credentials and facts delivered for it
/// (`secrets/s3-BUCKET-access-key-id`, `secrets/s3-BUCKET-secret-access-key`,
/// `facts.json`: `s3_endpoint`, `s3_region`, and `s3_ca_pem`, the CA of an
/// HTTPS endpoint, when the deployment names one). The client trusts that
/// CA and the system's roots when the system has any; a client that cannot
/// be made, or that fails in any way, fails the check with the reason —
/// it never takes the agent down.
async fn s3_check(bucket: &str, runtime: &Path) -> Result<(), String> {
    let bucket_name = bucket.to_string();
    let runtime = runtime.to_path_buf();
    match tokio::spawn(async move { s3_attempt(&bucket_name, &runtime).await }).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => Err(format!("s3:{bucket}: the S3 client failed inside: {}", panic_text(e.into_panic()))),
        Err(e) => Err(format!("s3:{bucket}: the check stopped: {e}")),
    }
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    payload.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| payload.downcast_ref::<String>().cloned()).unwrap_or_else(|| "a panic".into())
}

async fn s3_attempt(bucket: &str, runtime: &Path) -> Result<(), String> {
    let read = |name: String| {
        std::fs::read_to_string(runtime.join("secrets").join(&name))
            .map(|s| s.trim().to_string())
            .map_err(|e| format!("s3:{bucket}: no credentials for the bucket ({name}: {e}); deploy with --bucket {bucket}"))
    };
    let id = read(format!("s3-{bucket}-access-key-id"))?;
    let secret = read(format!("s3-{bucket}-secret-access-key"))?;
    let facts: serde_json::Value = std::fs::read_to_string(runtime.join("facts.json")).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
    let endpoint = facts.get("s3_endpoint").and_then(|v| v.as_str()).ok_or_else(|| format!("s3:{bucket}: no s3_endpoint in facts.json"))?;
    let region = facts.get("s3_region").and_then(|v| v.as_str()).unwrap_or("garage");
    let ca = facts.get("s3_ca_pem").and_then(|v| v.as_str());
    let client = drover_net::s3::client_with(endpoint, region, &id, &secret, ca).map_err(|e| format!("s3:{bucket}: {e}"))?;
    if endpoint.starts_with("https://") && ca.is_none() && !drover_net::s3::system_roots_present() {
        return Err(format!(
            "s3:{bucket}: {endpoint} is HTTPS, but this machine has no CA root certificates and the deployment names no CA \
             (fact s3_ca_pem); install the CA roots or give the endpoint's CA"
        ));
    }
    tokio::time::timeout(ATTEMPT_TIMEOUT, client.list_objects_v2().bucket(bucket).max_keys(1).send())
        .await
        .map_err(|_| format!("s3:{bucket} timed out"))?
        .map(|_| ())
        .map_err(|e| format!("s3:{bucket}: {}", aws_sdk_s3::error::DisplayErrorContext(e)))
}

/// Runs one check once; `Err` says why it failed.
pub async fn run_once(check: &HealthCheck, systemctl: &Path, runtime: &Path, http: &reqwest::Client) -> Result<(), String> {
    match check {
        HealthCheck::S3 { bucket } => s3_check(bucket, runtime).await,
        HealthCheck::File { path, sha256 } => {
            let Some(want) = sha256 else {
                // Without a digest: the path exists (a file or a directory).
                return tokio::fs::metadata(path).await.map(|_| ()).map_err(|e| format!("file:{path}: {e}"));
            };
            let bytes = tokio::fs::read(path).await.map_err(|e| format!("file:{path}: {e}"))?;
            use sha2::{Digest, Sha256};
            let have = hex::encode(Sha256::digest(&bytes));
            if have.eq_ignore_ascii_case(want) {
                Ok(())
            } else {
                Err(format!("file:{path} has SHA-256 {have}, not {want}"))
            }
        }
        HealthCheck::Unit { name } => {
            let out = tokio::time::timeout(ATTEMPT_TIMEOUT, tokio::process::Command::new(systemctl).args(["is-active", name]).kill_on_drop(true).output())
                .await
                .map_err(|_| format!("{} is-active {name} timed out", systemctl.display()))?
                .map_err(|e| format!("cannot run {}: {e}", systemctl.display()))?;
            if out.status.success() {
                Ok(())
            } else {
                let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
                Err(format!("unit {name} is {}", if state.is_empty() { "not active".into() } else { state }))
            }
        }
        HealthCheck::Http { url } => {
            let response = http.get(url).timeout(ATTEMPT_TIMEOUT).send().await.map_err(|e| format!("{url}: {e}"))?;
            if response.status().is_success() {
                Ok(())
            } else {
                Err(format!("{url} answered {}", response.status()))
            }
        }
        HealthCheck::Tcp { host, port } => tokio::time::timeout(ATTEMPT_TIMEOUT, tokio::net::TcpStream::connect((host.as_str(), *port)))
            .await
            .map_err(|_| format!("tcp:{host}:{port} timed out"))?
            .map(|_| ())
            .map_err(|e| format!("tcp:{host}:{port}: {e}")),
    }
}

/// Runs the checks until all pass (Ok) or `deadline` passes (Err with the
/// failures of the last round).
pub async fn gate(checks: &[HealthCheck], deadline: Duration, systemctl: &Path, runtime: &Path) -> Result<(), String> {
    if checks.is_empty() {
        return Ok(());
    }
    drover_net::tls::install_default_provider();
    let http = reqwest::Client::builder().use_rustls_tls().build().map_err(|e| format!("cannot make an HTTP client: {e}"))?;
    let end = tokio::time::Instant::now() + deadline;
    loop {
        let mut failures = Vec::new();
        for check in checks {
            if let Err(why) = run_once(check, systemctl, runtime, &http).await {
                failures.push(why);
            }
        }
        if failures.is_empty() {
            return Ok(());
        }
        let now = tokio::time::Instant::now();
        if now >= end {
            return Err(format!("health checks failed after {}: {}", humantime::format_duration(deadline), failures.join("; ")));
        }
        // One more round right at the deadline, never past it by a pause.
        tokio::time::sleep(ROUND_PAUSE.min(end - now)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tcp_and_http_checks_pass_against_live_servers_and_fail_without() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
            }
        });
        let ok = [HealthCheck::Tcp { host: "127.0.0.1".into(), port }, HealthCheck::Http { url: format!("http://127.0.0.1:{port}/health") }];
        gate(&ok, Duration::from_secs(5), Path::new("systemctl"), Path::new("/nonexistent")).await.expect("passes");
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("a").port();
        let err =
            gate(&[HealthCheck::Tcp { host: "127.0.0.1".into(), port: closed }], Duration::from_millis(600), Path::new("systemctl"), Path::new("/nonexistent"))
                .await
                .expect_err("fails");
        assert!(err.contains(&format!("tcp:127.0.0.1:{closed}")), "{err}");
    }

    #[tokio::test]
    async fn unit_checks_ask_systemctl_is_active() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = dir.path().join("systemctl");
        std::fs::write(&fake, "#!/bin/sh\n[ \"$1\" = is-active ] || exit 2\nif [ \"$2\" = up.service ]; then echo active; exit 0; fi\necho failed; exit 3\n")
            .expect("write");
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        gate(&[HealthCheck::Unit { name: "up.service".into() }], Duration::from_secs(2), &fake, Path::new("/nonexistent")).await.expect("active");
        let err = gate(&[HealthCheck::Unit { name: "down.service".into() }], Duration::from_millis(600), &fake, Path::new("/nonexistent"))
            .await
            .expect_err("inactive");
        assert!(err.contains("unit down.service is failed"), "{err}");
    }
}
