//! One multipart upload to S3: buffers the stream into equal-size parts,
//! uploads up to a bounded number of them at once, completes the upload in
//! part order, and aborts it when dropped unfinished (see `s3.rs` for the
//! part-size and buffer budget).

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::s3::{MAX_PARTS, Timeouts, classify, source_chain};
use crate::store::{StoreError, Upload};

pub(super) struct S3Upload {
    pub(super) client: Client,
    pub(super) place: String,
    pub(super) bucket: String,
    pub(super) key: String,
    pub(super) part_size: usize,
    pub(super) buf: BytesMut,
    pub(super) upload_id: Option<String>,
    pub(super) next_part: i32,
    pub(super) tasks: JoinSet<Result<CompletedPart, StoreError>>,
    pub(super) permits: Arc<Semaphore>,
    pub(super) parts: Vec<CompletedPart>,
    pub(super) size: u64,
    pub(super) done: bool,
    pub(super) timeouts: Timeouts,
}

impl S3Upload {
    async fn upload_id(&mut self) -> Result<String, StoreError> {
        if let Some(id) = &self.upload_id {
            return Ok(id.clone());
        }
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .send()
            .await
            .map_err(|e| classify(&self.place, "CreateMultipartUpload", e))?;
        let id =
            out.upload_id().ok_or_else(|| StoreError::Failed("CreateMultipartUpload returned no upload id".into()))?;
        self.upload_id = Some(id.to_string());
        Ok(id.to_string())
    }

    /// Collects finished parts, surfacing the first failure early.
    fn reap(&mut self) -> Result<(), StoreError> {
        while let Some(res) = self.tasks.try_join_next() {
            self.parts.push(res.map_err(|e| StoreError::Failed(format!("upload task: {e}")))??);
        }
        Ok(())
    }

    async fn send_part(&mut self, body: Bytes) -> Result<(), StoreError> {
        self.reap()?;
        let number = self.next_part;
        if number as u32 > MAX_PARTS {
            return Err(StoreError::TooManyParts { parts: MAX_PARTS, part_size: self.part_size as u64 });
        }
        let upload_id = self.upload_id().await?;
        // Waiting here is the backpressure that bounds memory.
        let permit = self.permits.clone().acquire_owned().await.expect("semaphore never closed");
        self.next_part += 1;
        let (client, bucket, key, place) =
            (self.client.clone(), self.bucket.clone(), self.key.clone(), self.place.clone());
        let timeouts = Timeouts::config(self.timeouts.sending(body.len() as u64));
        self.tasks.spawn(async move {
            let _permit = permit;
            let out = client
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .body(ByteStream::from(body))
                .customize()
                .config_override(timeouts)
                .send()
                .await
                .map_err(|e| classify(&place, "UploadPart", e))?;
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_string))
                .set_checksum_crc32(out.checksum_crc32().map(str::to_string))
                .set_checksum_crc32_c(out.checksum_crc32_c().map(str::to_string))
                .set_checksum_crc64_nvme(out.checksum_crc64_nvme().map(str::to_string))
                .set_checksum_sha1(out.checksum_sha1().map(str::to_string))
                .set_checksum_sha256(out.checksum_sha256().map(str::to_string))
                .build())
        });
        Ok(())
    }

    async fn complete(&mut self) -> Result<u64, StoreError> {
        if self.upload_id.is_none() {
            // Smaller than one part: a single PUT.
            let body = self.buf.split().freeze();
            let timeouts = Timeouts::config(self.timeouts.sending(body.len() as u64));
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&self.key)
                .body(ByteStream::from(body))
                .customize()
                .config_override(timeouts)
                .send()
                .await
                .map_err(|e| classify(&self.place, "PutObject", e))?;
            return Ok(self.size);
        }
        if !self.buf.is_empty() {
            let last = self.buf.split().freeze();
            self.send_part(last).await?;
        }
        while let Some(res) = self.tasks.join_next().await {
            self.parts.push(res.map_err(|e| StoreError::Failed(format!("upload task: {e}")))??);
        }
        self.parts.sort_by_key(|p| p.part_number());
        let id = self.upload_id.clone().expect("checked above");
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(id)
            .multipart_upload(
                CompletedMultipartUpload::builder().set_parts(Some(std::mem::take(&mut self.parts))).build(),
            )
            .customize()
            .config_override(Timeouts::config(self.timeouts.completing()))
            .send()
            .await
            .map_err(|e| classify(&self.place, "CompleteMultipartUpload", e))?;
        Ok(self.size)
    }

    async fn abort_now(&mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        if let Some(id) = self.upload_id.take() {
            let res =
                self.client.abort_multipart_upload().bucket(&self.bucket).key(&self.key).upload_id(&id).send().await;
            match res {
                Ok(_) => tracing::info!(key = %self.key, "Aborted the multipart upload."),
                Err(e) => tracing::warn!(
                    key = %self.key, upload_id = %id, error = %source_chain(&e),
                    "Could not abort the multipart upload; the start-up sweeper will."
                ),
            }
        }
        self.done = true;
    }
}

#[async_trait]
impl Upload for S3Upload {
    async fn write(&mut self, mut data: Bytes) -> Result<(), StoreError> {
        self.size += data.len() as u64;
        while !data.is_empty() {
            if self.buf.capacity() == 0 {
                self.buf.reserve(self.part_size);
            }
            let take = (self.part_size - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data.split_to(take));
            if self.buf.len() == self.part_size {
                let part = self.buf.split().freeze();
                self.send_part(part).await?;
            }
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<u64, StoreError> {
        match self.complete().await {
            Ok(n) => {
                self.done = true;
                Ok(n)
            }
            Err(e) => {
                self.abort_now().await;
                Err(e)
            }
        }
    }

    async fn abort(mut self: Box<Self>) {
        self.abort_now().await;
    }
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        // Dropped without finish or abort (an error path or a cancelled task):
        // abort in the background; if the process dies first, the start-up
        // sweeper aborts it.
        if !self.done
            && let Some(id) = self.upload_id.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let (client, bucket, key) = (self.client.clone(), self.bucket.clone(), self.key.clone());
            rt.spawn(async move {
                let _ = client.abort_multipart_upload().bucket(bucket).key(key).upload_id(id).send().await;
            });
        }
    }
}
