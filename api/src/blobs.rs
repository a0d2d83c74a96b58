//! File contents, behind `object_store`: local disk by default, an
//! S3-compatible bucket as an option. One code path serves both.
//!
//! Blobs are keyed by generated file ids, never by user-supplied names, so a
//! name cannot reach outside the store. Writes are multipart uploads fed
//! chunk by chunk with bounded in-flight parts: memory stays at a few parts
//! whatever the file size.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{GetOptions, GetRange, ObjectStore, WriteMultipart};

use crate::config::StoreConfig;
use crate::db::Db;
use crate::error::{Error, Result};

/// Size of each uploaded part (S3's minimum is 5 MiB).
const PART_SIZE: usize = 5 * 1024 * 1024;
/// Parts in flight before a writer waits.
const PARTS_IN_FLIGHT: usize = 2;

/// The blob store.
#[derive(Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    kind: &'static str,
}

impl fmt::Debug for Blobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Blobs")
            .field("kind", &self.kind)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Blobs {
    /// Opens the configured store (creating the local directory).
    pub fn open(config: &StoreConfig) -> Result<Blobs> {
        match config {
            StoreConfig::Local(dir) => {
                std::fs::create_dir_all(dir)?;
                Ok(Blobs {
                    store: Arc::new(LocalFileSystem::new_with_prefix(dir)?),
                    prefix: String::new(),
                    kind: "local",
                })
            }
            StoreConfig::S3 {
                bucket,
                endpoint,
                region,
                prefix,
                allow_http,
                credentials,
            } => {
                let mut b = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_region(region)
                    .with_allow_http(*allow_http);
                if let Some((id, secret)) = credentials {
                    b = b
                        .with_access_key_id(id)
                        .with_secret_access_key(secret.expose());
                }
                if let Some(e) = endpoint {
                    b = b.with_endpoint(e).with_virtual_hosted_style_request(false);
                }
                Ok(Blobs {
                    store: Arc::new(b.build()?),
                    prefix: prefix.clone(),
                    kind: "s3",
                })
            }
        }
    }

    /// `local` or `s3`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The store key of a file id.
    pub fn key(&self, file_id: &str) -> String {
        if self.prefix.is_empty() {
            format!("files/{file_id}")
        } else {
            format!("{}/files/{file_id}", self.prefix)
        }
    }

    /// Starts writing a blob.
    pub async fn writer(&self, key: &str) -> Result<BlobWriter> {
        let upload = self.store.put_multipart(&StorePath::from(key)).await?;
        Ok(BlobWriter {
            inner: WriteMultipart::new_with_chunk_size(upload, PART_SIZE),
        })
    }

    /// Streams a blob, or a byte range of it.
    pub async fn read(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<BoxStream<'static, Result<Bytes>>> {
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        let got = self.store.get_opts(&StorePath::from(key), options).await?;
        Ok(got.into_stream().map_err(Error::from).boxed())
    }

    /// Deletes a blob; a missing blob is not an error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&StorePath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes blobs that no file points at and that are older than
    /// `min_age` (younger ones may belong to an upload about to commit on
    /// another replica). They are left by a crash between the end of an
    /// upload and its commit. Returns how many were deleted.
    pub async fn sweep_orphans(&self, db: &Db, min_age: Duration) -> Result<usize> {
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(min_age).unwrap_or(chrono::Duration::MAX);
        let prefix = StorePath::from(self.key(""));
        let mut listing = self.store.list(Some(&prefix));
        let mut deleted = 0;
        while let Some(meta) = listing.next().await {
            let meta = meta?;
            if meta.last_modified > cutoff {
                continue;
            }
            let key = meta.location.to_string();
            let used: Option<(String,)> =
                sqlx::query_as("SELECT id FROM files WHERE blob_key = $1")
                    .bind(&key)
                    .fetch_optional(&db.pool)
                    .await?;
            if used.is_none() {
                self.delete(&key).await?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Whether the store answers (a missing probe object is a good answer).
    pub async fn check(&self) -> Result<()> {
        match self.store.head(&StorePath::from(self.key(".probe"))).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// A blob being written.
#[derive(Debug)]
pub struct BlobWriter {
    inner: WriteMultipart,
}

impl BlobWriter {
    /// Appends bytes, waiting when too many parts are in flight.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.inner.wait_for_capacity(PARTS_IN_FLIGHT).await?;
        self.inner.write(bytes);
        Ok(())
    }

    /// Completes the blob.
    pub async fn finish(self) -> Result<()> {
        self.inner.finish().await?;
        Ok(())
    }

    /// Discards what was written.
    pub async fn abort(self) {
        if let Err(e) = self.inner.abort().await {
            tracing::warn!(error = %e, "could not abort a partial upload");
        }
    }
}
