//! The S3 store (aws-sdk-s3). Streaming multipart upload: equal-size parts
//! (except the last) sized from the expected total so even a 5 TB dump stays
//! under S3's 10,000-part limit; a bounded number of parts in flight, which
//! both bounds memory and applies backpressure to pg_dump; the SDK's standard
//! retry (backoff with jitter on 5xx, throttling, timeouts and connection
//! resets); and an abort of the multipart upload on any failure.
//!
//! Timeouts, so that a store that stops answering ends in an error instead
//! of a hang: a TCP connect may take `[store] connect_timeout` (10 s); a
//! request may wait `io_timeout` (60 s) for its reply and five times that
//! for the whole attempt (paged listings, a CompleteMultipartUpload that S3
//! takes a while over: fifteen times). An upload part's attempt may take
//! `io_timeout` plus 1 s per MiB of the part (the SDK's read timeout runs
//! while the body is sent, so it must grow with the part: 68 s for 8 MiB,
//! 17 min for the 1 GiB parts of a 5 TB dump); a link slower than 1 MiB/s
//! fails the attempt and the SDK retries it. Downloads are read through
//! [`s3_read::Resuming`]: `io_timeout` without a byte is a break, and a
//! break resumes from where it stopped.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use tokio::io::AsyncRead;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::s3_read::{Resuming, Source};
use super::s3_upload::S3Upload;
use super::{Incomplete, ObjectInfo, Store, StoreError, Upload};
use crate::config::{Checksums, S3Config};

/// S3 allows at most 10,000 parts; we size parts for 9,000 at twice the
/// expected size so growth during the dump never hits the limit.
pub(super) const MAX_PARTS: u32 = 10_000;
const PLANNED_PARTS: u64 = 9_000;
const MAX_PART_SIZE: u64 = 5 << 30;
/// Memory budget for buffered parts: the part being filled plus those in
/// flight. Parts larger than this (dumps over ~18 TB) upload one at a time.
const BUFFER_BUDGET: u64 = 32 << 20;

pub struct S3Store {
    client: Client,
    /// "bucket b at http://…" for messages.
    place: String,
    bucket: String,
    prefix: String,
    min_part_size: u64,
    concurrency: usize,
    timeouts: Timeouts,
    max_attempts: u32,
}

/// The configured timeouts and what they make for each kind of request.
#[derive(Clone, Copy, Debug)]
pub(super) struct Timeouts {
    connect: Duration,
    io: Duration,
}

impl Timeouts {
    /// For requests with small bodies (the client's default).
    pub(super) fn small(&self) -> TimeoutConfig {
        TimeoutConfig::builder()
            .connect_timeout(self.connect)
            .read_timeout(self.io)
            .operation_attempt_timeout(self.io * 5)
            .build()
    }

    /// For a request that sends `bytes` of body: `io` plus 1 s per MiB.
    pub(super) fn sending(&self, bytes: u64) -> TimeoutConfig {
        let t = self.io + Duration::from_secs(bytes.div_ceil(1 << 20));
        TimeoutConfig::builder().connect_timeout(self.connect).read_timeout(t).operation_attempt_timeout(t).build()
    }

    /// CompleteMultipartUpload: S3 may take minutes to assemble a big object.
    pub(super) fn completing(&self) -> TimeoutConfig {
        TimeoutConfig::builder()
            .connect_timeout(self.connect)
            .read_timeout(self.io * 15)
            .operation_attempt_timeout(self.io * 15)
            .build()
    }

    pub(super) fn config(t: TimeoutConfig) -> aws_sdk_s3::config::Builder {
        aws_sdk_s3::config::Builder::default().timeout_config(t)
    }
}

/// Classifies an SDK error (unreachable, 5xx, timeout: "unavailable", exit
/// 69) and words it for an operator: the S3 error code and message, not the
/// SDK's debug dump (that goes to the debug log).
pub(super) fn classify<E>(place: &str, op: &str, err: SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    tracing::debug!(op, error = %DisplayErrorContext(&err), "S3 request failed.");
    let op = format!("S3 {place}: {op}");
    match &err {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            let chain = source_chain(&err);
            if chain.contains("credentials") {
                StoreError::Unavailable(format!(
                    "{op}: no usable AWS credentials ({chain}); set [store] access_key_id and secret_access_key_file, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or an AWS profile"
                ))
            } else {
                StoreError::Unavailable(format!("{op}: {chain}"))
            }
        }
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = se.err().code().unwrap_or("unknown");
            let message = se.err().message().unwrap_or_default();
            let hint = match code {
                "NoSuchBucket" => "; create the bucket or fix [store] bucket",
                "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch" => {
                    "; check the credentials (access_key_id/secret_access_key_file or the AWS environment) and the bucket policy"
                }
                _ => "",
            };
            let text = format!("{op}: {code} (HTTP {status}): {message}{hint}");
            if status >= 500 || matches!(code, "SlowDown" | "ServiceUnavailable" | "InternalError") {
                StoreError::Unavailable(text)
            } else if matches!(code, "NoSuchKey" | "NotFound") {
                StoreError::NotFound { key: op.to_string() }
            } else {
                StoreError::Failed(text)
            }
        }
        _ => StoreError::Failed(format!("{op}: {}", source_chain(&err))),
    }
}

/// "dispatch failure: io error: connection refused" from nested sources.
/// Some SDK errors append their `Debug` form in parentheses; that is cut.
pub(super) fn source_chain(err: &dyn std::error::Error) -> String {
    let clean = |s: String| -> String {
        match s.find(" (").filter(|&i| s[i + 2..].starts_with(|c: char| c.is_ascii_uppercase())) {
            Some(i) => s[..i].to_string(),
            None => s,
        }
    };
    let mut parts = vec![clean(err.to_string())];
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = clean(e.to_string());
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = e.source();
    }
    parts.join(": ")
}

impl S3Store {
    pub async fn connect(cfg: &S3Config) -> Result<S3Store, StoreError> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).region(Region::new(cfg.region.clone()));
        if let (Some(id), Some(secret)) = (&cfg.access_key_id, &cfg.secret_access_key) {
            loader =
                loader.credentials_provider(Credentials::new(id, secret.expose(), None, None, "pgrehearse-config"));
        }
        let shared = loader.load().await;
        let (req, resp) = match cfg.checksums {
            Checksums::WhenRequired => {
                (RequestChecksumCalculation::WhenRequired, ResponseChecksumValidation::WhenRequired)
            }
            Checksums::WhenSupported => {
                (RequestChecksumCalculation::WhenSupported, ResponseChecksumValidation::WhenSupported)
            }
        };
        let timeouts = Timeouts { connect: cfg.connect_timeout, io: cfg.io_timeout };
        let mut b = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(cfg.force_path_style)
            .request_checksum_calculation(req)
            .response_checksum_validation(resp)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(cfg.max_attempts)
                    .with_initial_backoff(Duration::from_millis(200)),
            )
            .timeout_config(timeouts.small());
        if let Some(ep) = &cfg.endpoint {
            b = b.endpoint_url(ep);
        }
        let place = format!("bucket {} at {}", cfg.bucket, cfg.endpoint.as_deref().unwrap_or("AWS"));
        Ok(S3Store {
            client: Client::from_conf(b.build()),
            place,
            bucket: cfg.bucket.clone(),
            prefix: cfg.prefix.clone(),
            min_part_size: cfg.min_part_size,
            concurrency: cfg.upload_concurrency,
            timeouts,
            max_attempts: cfg.max_attempts,
        })
    }

    fn full(&self, key: &str) -> String {
        if self.prefix.is_empty() { key.to_string() } else { format!("{}/{key}", self.prefix) }
    }

    fn relative<'a>(&self, full: &'a str) -> Option<&'a str> {
        if self.prefix.is_empty() { Some(full) } else { full.strip_prefix(&self.prefix)?.strip_prefix('/') }
    }

    /// GetObject's body, read through [`Resuming`]; a missing key is
    /// `NotFound` naming it.
    async fn get_body(&self, key: &str) -> Result<Resuming, StoreError> {
        let full = self.full(key);
        let out =
            self.client.get_object().bucket(&self.bucket).key(&full).send().await.map_err(|e| {
                match classify(&self.place, "GetObject", e) {
                    StoreError::NotFound { .. } => StoreError::NotFound { key: key.into() },
                    other => other,
                }
            })?;
        let src = Source {
            client: self.client.clone(),
            place: self.place.clone(),
            bucket: self.bucket.clone(),
            key: full,
            etag: out.e_tag().map(str::to_string),
            total: out.content_length().and_then(|n| u64::try_from(n).ok()),
            io_timeout: self.timeouts.io,
            max_attempts: self.max_attempts,
        };
        Ok(Resuming::new(src, Box::new(out.body.into_async_read())))
    }

    /// Part size for a stream of about `expected` bytes: at least the
    /// configured minimum, whole MiB.
    pub fn part_size(min: u64, expected: u64) -> u64 {
        let needed = (expected.saturating_mul(2)).div_ceil(PLANNED_PARTS);
        needed.max(min).div_ceil(1 << 20).saturating_mul(1 << 20).min(MAX_PART_SIZE)
    }
}

#[async_trait]
impl Store for S3Store {
    fn locate(&self, key: &str) -> String {
        self.full(key)
    }

    async fn begin_upload(&self, key: &str, expected_size: u64) -> Result<Box<dyn Upload>, StoreError> {
        let part_size = S3Store::part_size(self.min_part_size, expected_size);
        let in_flight = ((BUFFER_BUDGET / part_size) as usize).clamp(1, self.concurrency);
        tracing::debug!(key, part_size, in_flight, "Starting upload.");
        Ok(Box::new(S3Upload {
            client: self.client.clone(),
            place: self.place.clone(),
            bucket: self.bucket.clone(),
            key: self.full(key),
            part_size: part_size as usize,
            buf: BytesMut::new(),
            upload_id: None,
            next_part: 1,
            tasks: JoinSet::new(),
            permits: Arc::new(Semaphore::new(in_flight)),
            parts: Vec::new(),
            size: 0,
            done: false,
            timeouts: self.timeouts,
        }))
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| classify(&self.place, "PutObject", e))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        use tokio::io::AsyncReadExt;
        let mut body = self.get_body(key).await?;
        let mut data = Vec::new();
        body.read_to_end(&mut data).await.map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(Bytes::from(data))
    }

    async fn open(&self, key: &str) -> Result<Box<dyn AsyncRead + Send + Unpin>, StoreError> {
        Ok(Box::new(self.get_body(key).await?))
    }

    async fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        match self.client.head_object().bucket(&self.bucket).key(self.full(key)).send().await {
            Ok(h) => Ok(Some(h.content_length.unwrap_or(0).max(0) as u64)),
            Err(SdkError::ServiceError(se)) if se.raw().status().as_u16() == 404 => Ok(None),
            Err(e) => Err(classify(&self.place, "HeadObject", e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let mut out = Vec::new();
        let mut pages =
            self.client.list_objects_v2().bucket(&self.bucket).prefix(self.full(prefix)).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify(&self.place, "ListObjectsV2", e))?;
            for obj in page.contents() {
                if let Some(rel) = obj.key().and_then(|k| self.relative(k)) {
                    out.push(ObjectInfo { key: rel.to_string() });
                }
            }
        }
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .send()
            .await
            .map_err(|e| classify(&self.place, "DeleteObject", e))?;
        Ok(())
    }

    async fn incomplete(&self) -> Result<Vec<Incomplete>, StoreError> {
        let mut out = Vec::new();
        let mut key_marker: Option<String> = None;
        let mut id_marker: Option<String> = None;
        loop {
            let mut req = self.client.list_multipart_uploads().bucket(&self.bucket);
            if !self.prefix.is_empty() {
                req = req.prefix(format!("{}/", self.prefix));
            }
            let page = req
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone())
                .send()
                .await
                .map_err(|e| classify(&self.place, "ListMultipartUploads", e))?;
            for u in page.uploads() {
                let (Some(key), Some(id)) = (u.key(), u.upload_id()) else { continue };
                let Some(rel) = self.relative(key) else { continue };
                out.push(Incomplete {
                    key: rel.to_string(),
                    upload_id: id.to_string(),
                    initiated: u.initiated().and_then(|t| DateTime::<Utc>::from_timestamp(t.secs(), 0)),
                });
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_string);
            id_marker = page.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() {
                break;
            }
        }
        Ok(out)
    }

    async fn abort_incomplete(&self, upload: &Incomplete) -> Result<(), StoreError> {
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(self.full(&upload.key))
            .upload_id(&upload.upload_id)
            .send()
            .await
            .map_err(|e| classify(&self.place, "AbortMultipartUpload", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_stay_under_the_limit_and_equal() {
        let min = 8 << 20;
        assert_eq!(S3Store::part_size(min, 500 << 20), min);
        for total in [1u64 << 30, 100 << 30, 5u64 << 40] {
            let p = S3Store::part_size(min, total);
            assert_eq!(p % (1 << 20), 0);
            // Even at twice the expected size the part count stays in range.
            assert!((2 * total).div_ceil(p) <= MAX_PARTS as u64, "total {total} part {p}");
        }
    }
}
