//! Data-plane checks with `aws-sdk-s3`: a key must be able to put, get and
//! delete a probe object in its bucket before its credentials are handed out.

use aws_sdk_s3::primitives::ByteStream;

use super::S3Error;

pub use drover_net::s3::client;

fn failed(step: &str, bucket: &str, e: impl std::fmt::Display) -> S3Error {
    S3Error::Api { status: 0, code: format!("probe {step}"), message: format!("the new key cannot {step} in bucket {bucket}: {e}") }
}

/// Puts, reads back and deletes a small object.
pub async fn probe(client: &aws_sdk_s3::Client, bucket: &str) -> Result<(), S3Error> {
    let key = format!(".drover-probe-{}", hex_id());
    let body = format!("drover probe {key}");
    client
        .put_object()
        .bucket(bucket)
        .key(&key)
        .body(ByteStream::from(body.clone().into_bytes()))
        .send()
        .await
        .map_err(|e| failed("put", bucket, aws_sdk_s3::error::DisplayErrorContext(e)))?;
    let got = client.get_object().bucket(bucket).key(&key).send().await.map_err(|e| failed("get", bucket, aws_sdk_s3::error::DisplayErrorContext(e)))?;
    let bytes = got.body.collect().await.map_err(|e| failed("read", bucket, e))?.into_bytes();
    if bytes.as_ref() != body.as_bytes() {
        return Err(failed("read back", bucket, "the object came back different"));
    }
    client.delete_object().bucket(bucket).key(&key).send().await.map_err(|e| failed("delete", bucket, aws_sdk_s3::error::DisplayErrorContext(e)))?;
    Ok(())
}

fn hex_id() -> String {
    let bytes: [u8; 6] = rand::random();
    hex::encode(bytes)
}
