//! The operator's object store, named by a URL: `file:///dir`, `s3://bucket/prefix`,
//! `gs://bucket/prefix`, `az://container/prefix`.

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::path::Path;
use object_store::signer::Signer;

use super::ArchiveError;

/// An object store and the prefix every key is put under. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ArchiveStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    url: Arc<str>,
    local: bool,
    /// Pre-signs URLs (every cloud store; not local files).
    signer: Option<Arc<dyn Signer>>,
}

impl ArchiveStore {
    /// The store `url` names. Credentials, region and endpoint come from the standard
    /// environment of each cloud (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`; `GOOGLE_APPLICATION_CREDENTIALS`;
    /// `AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`, ...), never from the URL.
    /// A `file://` directory is created when missing.
    pub fn open(url: &str) -> Result<ArchiveStore, ArchiveError> {
        ArchiveStore::open_with(url, std::iter::empty::<(&str, &str)>())
    }

    /// [`open`](Self::open), then `options` on top of the environment: the cloud's own
    /// configuration keys, as `object_store` names them (`aws_endpoint`,
    /// `aws_access_key_id`, `aws_allow_http`, `google_service_account`,
    /// `azure_storage_account_name`, ...). An unknown key is refused.
    pub fn open_with<I, K, V>(url: &str, options: I) -> Result<ArchiveStore, ArchiveError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: Into<String>,
    {
        let options: Vec<(String, String)> = options
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_ascii_lowercase(), v.into()))
            .collect();
        let setup = |why: String| ArchiveError::Setup(format!("archive.url {url:?}: {why}"));
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| setup("not a URL like file:///dir or s3://bucket/prefix".into()))?;
        if rest.contains('@') || rest.contains('?') {
            return Err(setup(
                "credentials and options come from the environment, not the URL".into(),
            ));
        }
        let (store, signer, prefix): (Arc<dyn ObjectStore>, Option<Arc<dyn Signer>>, &str) = match scheme {
            "file" => {
                if let Some((key, _)) = options.first() {
                    return Err(setup(format!("{key} is not an option of file:// stores")));
                }
                let dir = rest
                    .strip_prefix('/')
                    .map(|_| rest)
                    .ok_or_else(|| setup("a file URL names an absolute directory: file:///dir".into()))?;
                std::fs::create_dir_all(dir).map_err(|e| setup(format!("cannot create {dir}: {e}")))?;
                let local = object_store::local::LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| setup(e.to_string()))?
                    // Parts are written beside the object and renamed into place.
                    .with_automatic_cleanup(true);
                (Arc::new(local), None, "")
            }
            "s3" | "gs" | "az" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(setup("no bucket".into()));
                }
                let root = format!("{scheme}://{bucket}");
                let unknown = |key: &str| setup(format!("{key} is not an option of {scheme}:// stores"));
                // Each cloud's builder: the environment, the URL's bucket, the options.
                macro_rules! cloud {
                    ($builder:expr) => {{
                        let mut builder = $builder.with_url(&root);
                        for (key, value) in &options {
                            builder = builder.with_config(key.parse().map_err(|_| unknown(key))?, value);
                        }
                        let built = Arc::new(builder.build().map_err(|e| setup(e.to_string()))?);
                        (
                            Arc::clone(&built) as Arc<dyn ObjectStore>,
                            Some(built as Arc<dyn Signer>),
                        )
                    }};
                }
                let (store, signer) = match scheme {
                    "s3" => cloud!(object_store::aws::AmazonS3Builder::from_env()),
                    "gs" => cloud!(object_store::gcp::GoogleCloudStorageBuilder::from_env()),
                    _ => cloud!(object_store::azure::MicrosoftAzureBuilder::from_env()),
                };
                (store, signer, prefix)
            }
            other => {
                return Err(setup(format!(
                    "{other}:// is not a store this build knows (file, s3, gs, az)"
                )));
            }
        };
        let prefix = Path::parse(prefix.trim_matches('/')).map_err(|e| setup(format!("bad prefix: {e}")))?;
        Ok(ArchiveStore {
            store,
            prefix,
            url: url.into(),
            local: scheme == "file",
            signer,
        })
    }

    /// The URL it was opened from (it carries no credentials).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The store.
    pub fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Whether objects keep attributes (a `Content-Type`): every store but local files,
    /// whose server answers by extension.
    pub fn keeps_attributes(&self) -> bool {
        !self.local
    }

    /// Whether it can pre-sign links (S3, GCS, Azure; not local files).
    pub fn can_sign(&self) -> bool {
        self.signer.is_some()
    }

    /// A pre-signed `GET` URL for `key`, valid for `lifetime`; `None` for a store that
    /// cannot sign (local files: link them with [`OutputLinks`](super::OutputLinks)).
    pub async fn presigned(
        &self,
        key: &str,
        lifetime: std::time::Duration,
    ) -> Result<Option<String>, ArchiveError> {
        let Some(signer) = &self.signer else {
            return Ok(None);
        };
        signer
            .signed_url(http::Method::GET, &self.path(key), lifetime)
            .await
            .map(|url| Some(url.to_string()))
            .map_err(|e| ArchiveError::Store(e.to_string()))
    }

    /// Delete every object under the prefix last written more than `older_than` ago (the
    /// retention sweep); how many were deleted. Objects are listed once per sweep, in
    /// pages, and deleted one by one; one that cannot be deleted is logged and left for
    /// the next sweep.
    pub async fn sweep(&self, older_than: std::time::Duration) -> Result<u64, ArchiveError> {
        use futures_util::StreamExt as _;

        let cutoff = cutoff_ms(older_than);
        let mut listed = self.store.list(Some(&self.prefix));
        let mut deleted = 0;
        while let Some(meta) = listed.next().await {
            let meta = meta.map_err(|e| ArchiveError::Store(e.to_string()))?;
            if meta.last_modified.timestamp_millis() >= cutoff {
                continue;
            }
            match self.store.delete(&meta.location).await {
                Ok(()) => deleted += 1,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(err) => tracing::warn!(error = %err, "cannot delete an expired archive object"),
            }
        }
        Ok(deleted)
    }

    /// The full path of `key` under the prefix.
    pub fn path(&self, key: &str) -> Path {
        let mut path = self.prefix.clone();
        for part in key.split('/').filter(|p| !p.is_empty()) {
            path = path.child(part);
        }
        path
    }
}

/// Unix milliseconds `older_than` ago.
fn cutoff_ms(older_than: std::time::Duration) -> i64 {
    crate::duration::unix_millis().saturating_sub(crate::duration::millis(older_than))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_name_a_kind_a_bucket_and_a_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/outputs", dir.path().display());
        let store = ArchiveStore::open(&url).unwrap();
        assert!(dir.path().join("outputs").is_dir(), "created");
        assert_eq!(
            store.path("2026/12/06/t1/0-ab.mp4").as_ref(),
            "2026/12/06/t1/0-ab.mp4"
        );
        for bad in [
            "outputs",
            "file://relative/dir",
            "s3:///prefix",
            "s3://key:secret@bucket/x",
            "s3://bucket/x?region=eu",
            "ftp://host/dir",
        ] {
            assert!(
                matches!(ArchiveStore::open(bad), Err(ArchiveError::Setup(_))),
                "{bad}"
            );
        }
    }
}
