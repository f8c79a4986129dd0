//! An `s3:` health check on a machine without CA root certificates (a
//! minimal guest): the check fails with its reason; nothing panics. Its
//! own test binary, so that the process has no roots from the start
//! (`SSL_CERT_FILE` and `SSL_CERT_DIR` point at nothing).

use std::path::Path;

use drover_agent::system::checks::run_once;
use drover_protocol::v1::HealthCheck;

fn runtime(dir: &Path, endpoint: &str, ca: Option<&str>) {
    std::fs::create_dir_all(dir.join("secrets")).expect("mkdir");
    std::fs::write(dir.join("secrets/s3-media-access-key-id"), "GK0123").expect("id");
    std::fs::write(dir.join("secrets/s3-media-secret-access-key"), "secret").expect("secret");
    let mut facts = serde_json::json!({ "s3_endpoint": endpoint, "s3_region": "garage" });
    if let Some(ca) = ca {
        facts["s3_ca_pem"] = ca.into();
    }
    std::fs::write(dir.join("facts.json"), facts.to_string()).expect("facts");
}

#[tokio::test]
async fn an_s3_check_without_ca_roots_fails_with_its_reason_and_nothing_panics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = dir.path().join("no-roots");
    std::fs::create_dir_all(&empty).expect("mkdir");
    std::fs::write(empty.join("roots.pem"), "").expect("an empty bundle");
    // Before any TLS code runs in this process: no roots anywhere.
    std::env::set_var("SSL_CERT_FILE", empty.join("roots.pem"));
    std::env::set_var("SSL_CERT_DIR", &empty);
    assert!(!drover_net::s3::system_roots_present(), "this process sees no root certificates");

    drover_net::tls::install_default_provider();
    let http = reqwest::Client::new();
    let check = HealthCheck::S3 { bucket: "media".into() };
    let run = dir.path().join("run");

    runtime(&run, "https://127.0.0.1:9", None);
    let e = run_once(&check, Path::new("/bin/false"), &run, &http).await.expect_err("no roots for an HTTPS endpoint");
    assert!(e.contains("no CA root certificates") && e.contains("s3_ca_pem"), "{e}");

    runtime(&run, "https://127.0.0.1:9", Some("not a certificate"));
    let e = run_once(&check, Path::new("/bin/false"), &run, &http).await.expect_err("a CA that is not PEM");
    assert!(e.contains("PEM"), "{e}");

    // A plain HTTP endpoint needs no roots: the check gets as far as the
    // network (nothing listens there) and fails saying so.
    runtime(&run, "http://127.0.0.1:9", None);
    let e = run_once(&check, Path::new("/bin/false"), &run, &http).await.expect_err("nothing listens");
    assert!(e.starts_with("s3:media"), "{e}");
}
