//! The S3 data-plane client both binaries use: path-style addressing (as
//! Garage needs), the given region, static credentials. The coordinator
//! probes a new key with it; the agent's `s3:` health check lists a bucket.
//!
//! The HTTPS trust is built here, never left to the SDK's defaults: the
//! system's root certificates only when the system has some (a minimal
//! guest has none, and the SDK's default client refuses to start without
//! them), plus a CA the caller names. A CA that is not PEM is an error,
//! never a panic.

use std::sync::OnceLock;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};

/// Whether this system has root certificates (looked up once, as the
/// SDK does: `SSL_CERT_FILE`, `SSL_CERT_DIR`, then the usual places).
pub fn system_roots_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    *PRESENT.get_or_init(|| !rustls_native_certs::load_native_certs().certs.is_empty())
}

/// Checks that `pem` holds at least one certificate and nothing else that
/// fails to read.
fn check_pem(pem: &str) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the S3 endpoint's CA is not a PEM certificate: {e}"))?;
    if certs.is_empty() {
        return Err("the S3 endpoint's CA holds no PEM certificate".into());
    }
    Ok(())
}

/// An S3 client for `endpoint` with the given key, trusting the system's
/// roots when present and `ca_pem` when given.
pub fn client_with(endpoint: &str, region: &str, access_key: &str, secret_key: &str, ca_pem: Option<&str>) -> Result<aws_sdk_s3::Client, String> {
    let mut trust = TrustStore::empty().with_native_roots(system_roots_present());
    if let Some(pem) = ca_pem {
        check_pem(pem)?;
        trust = trust.with_pem_certificate(pem.as_bytes().to_vec());
    }
    let context = TlsContext::builder().with_trust_store(trust).build().map_err(|e| format!("cannot set up TLS for S3: {e}"))?;
    let http = aws_smithy_http_client::Builder::new().tls_provider(tls::Provider::Rustls(CryptoMode::Ring)).tls_context(context).build_https();
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new(region.to_string()))
        .credentials_provider(Credentials::new(access_key, secret_key, None, None, "drover"))
        .force_path_style(true)
        .http_client(http)
        .build();
    Ok(aws_sdk_s3::Client::from_conf(config))
}

/// [`client_with`] without a CA of its own.
pub fn client(endpoint: &str, region: &str, access_key: &str, secret_key: &str) -> Result<aws_sdk_s3::Client, String> {
    client_with(endpoint, region, access_key, secret_key, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_that_is_not_pem_is_an_error_not_a_panic() {
        let e = client_with("https://127.0.0.1:3900", "garage", "GK1", "s", Some("not a certificate")).expect_err("refused");
        assert!(e.contains("PEM"), "{e}");
        assert!(client("http://127.0.0.1:3900", "garage", "GK1", "s").is_ok());
    }
}
