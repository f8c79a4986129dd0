//! The S3 data-plane client both binaries use: path-style addressing (as
//! Garage needs), the given region, static credentials. The coordinator
//! probes a new key with it; the agent's `s3:` health check lists a bucket.

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

/// An S3 client for `endpoint` with the given key.
pub fn client(endpoint: &str, region: &str, access_key: &str, secret_key: &str) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new(region.to_string()))
        .credentials_provider(Credentials::new(access_key, secret_key, None, None, "drover"))
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}
