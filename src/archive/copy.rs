//! One output from its source into the store: streamed, hashed, bounded.

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::{HeaderMap, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty};
use object_store::{Attribute, Attributes, MultipartUpload, PutMultipartOptions, PutPayload};
use serde::Serialize;

use super::sources::redact;
use super::{ArchiveError, Archiver, PART};

/// Redirects a download follows, each checked against the host list.
const MAX_REDIRECTS: usize = 5;
/// Parts uploading at once: with [`PART`], the most one copy holds in memory.
const PARTS_IN_FLIGHT: usize = 2;

/// Where an output is stored: `{yyyy}/{mm}/{dd}/{task id}/{index}-{16 random hex}.{ext}`,
/// under the store's prefix. The random part makes a key unguessable; keep the key to
/// copy the same output again to the same place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ObjectKey(String);

impl ObjectKey {
    /// A new key for output `index` of `task_id`, dated today (UTC), with extension `ext`.
    pub fn new(task_id: &str, index: usize, ext: &str) -> ObjectKey {
        let today = crate::duration::rfc3339(crate::duration::unix_millis());
        let date = today.get(..10).unwrap_or("1970-01-01").replace('-', "/");
        let random: [u8; 8] = rand::random();
        let random: String = random.iter().map(|b| format!("{b:02x}")).collect();
        ObjectKey(format!(
            "{date}/{}/{index}-{random}.{}",
            safe(task_id, 128),
            safe(ext, 8)
        ))
    }

    /// The key of output `index` of an archive job made at `created_at` (Unix
    /// milliseconds) with `nonce` (random, kept with the job): the same every time it is
    /// asked, so a copy made again after a crash overwrites its first try.
    pub fn stable(task_id: &str, index: usize, ext: &str, created_at: i64, nonce: &str) -> ObjectKey {
        let day = crate::duration::rfc3339(created_at);
        let date = day.get(..10).unwrap_or("1970-01-01").replace('-', "/");
        ObjectKey(format!(
            "{date}/{}/{index}-{}.{}",
            safe(task_id, 128),
            safe(nonce, 32),
            safe(ext, 8)
        ))
    }

    /// A key kept from before (the store's own relative path).
    pub fn from_stored(key: impl Into<String>) -> ObjectKey {
        ObjectKey(key.into())
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `text` with anything but ASCII letters, digits, `-` and `_` replaced (a task id or an
/// extension comes from the upstream), at most `max` characters, never empty.
fn safe(text: &str, max: usize) -> String {
    let cleaned: String = text
        .chars()
        .take(max)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "_".to_owned()
    } else {
        cleaned
    }
}

/// A finished copy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Archived {
    /// The URL it was copied from, without its query string (a signature).
    pub source: String,
    /// Where it is in the store.
    pub key: ObjectKey,
    /// Its size.
    pub bytes: u64,
    /// Its SHA-256, hex.
    pub sha256: String,
    /// The source's `Content-Type`, when it sent a sensible one.
    pub content_type: Option<String>,
}

impl Archiver {
    /// Copy the output at `source` to `key`. Fails when the source is refused, answers
    /// other than 200, exceeds the size limit or breaks off, or the store fails; nothing
    /// is left at `key` then. Bounded by the archiver's timeout.
    pub async fn copy(&self, source: &str, key: &ObjectKey) -> Result<Archived, ArchiveError> {
        // One deadline for the whole copy; a copy that runs out of time still aborts its
        // upload (dropping it would leave the parts in the bucket).
        let deadline = tokio::time::Instant::now() + self.timeout;
        let timed_out = |_| ArchiveError::Timeout(self.timeout);
        let response = tokio::time::timeout_at(deadline, self.fetch(source))
            .await
            .map_err(timed_out)??;
        let declared = content_length(response.headers());
        if declared.is_some_and(|declared| declared > self.max_bytes) {
            return Err(ArchiveError::TooLarge {
                limit: self.max_bytes,
            });
        }
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.len() <= 128 && !v.is_empty())
            .map(str::to_owned);
        let mut attributes = Attributes::new();
        if let Some(content_type) = content_type.as_ref().filter(|_| self.store.keeps_attributes()) {
            attributes.insert(Attribute::ContentType, content_type.clone().into());
        }
        let options = PutMultipartOptions {
            attributes,
            ..PutMultipartOptions::default()
        };
        let path = self.store.path(key.as_str());
        let mut upload =
            tokio::time::timeout_at(deadline, self.store.inner().put_multipart_opts(&path, options))
                .await
                .map_err(timed_out)?
                .map_err(|e| ArchiveError::Store(e.to_string()))?;
        let streamed = tokio::time::timeout_at(
            deadline,
            self.stream(response.into_body(), declared, upload.as_mut()),
        )
        .await
        .unwrap_or(Err(ArchiveError::Timeout(self.timeout)));
        match streamed {
            Ok((bytes, sha256)) => Ok(Archived {
                source: redact(source).to_owned(),
                key: key.clone(),
                bytes,
                sha256,
                content_type,
            }),
            Err(err) => {
                // Nothing half-written stays at the key.
                if let Err(abort) = upload.abort().await {
                    tracing::debug!(error = %abort, key = key.as_str(), "cannot abort an archive upload");
                }
                Err(err)
            }
        }
    }

    /// GET `source`, following redirects that stay on allowed hosts, up to a 200.
    async fn fetch(&self, source: &str) -> Result<http::Response<hyper::body::Incoming>, ArchiveError> {
        let mut url = source.to_owned();
        for _ in 0..=MAX_REDIRECTS {
            let uri = self.hosts.check(&url)?;
            let request = Request::get(uri.clone())
                .header(
                    header::USER_AGENT,
                    concat!("runway-proxy/", env!("CARGO_PKG_VERSION")),
                )
                .body(Empty::<Bytes>::new())
                .map_err(|e| ArchiveError::Refused(format!("{}: {e}", redact(&url))))?;
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| ArchiveError::Download(crate::body::error_chain(&e)))?;
            let status = response.status();
            match status {
                StatusCode::OK => return Ok(response),
                StatusCode::FORBIDDEN | StatusCode::NOT_FOUND | StatusCode::GONE => {
                    return Err(ArchiveError::Gone(status.as_u16()));
                }
                _ if status.is_redirection() => {
                    let location = response
                        .headers()
                        .get(header::LOCATION)
                        .and_then(|v| v.to_str().ok())
                        .ok_or(ArchiveError::Status(status.as_u16()))?;
                    url = resolve(&uri, location)?;
                }
                _ => return Err(ArchiveError::Status(status.as_u16())),
            }
        }
        Err(ArchiveError::Refused(format!(
            "{}: more than {MAX_REDIRECTS} redirects",
            redact(source)
        )))
    }

    /// Send `body` to `upload` in parts, hashing it; its size and hex SHA-256.
    async fn stream(
        &self,
        mut body: hyper::body::Incoming,
        declared: Option<u64>,
        upload: &mut dyn MultipartUpload,
    ) -> Result<(u64, String), ArchiveError> {
        let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
        // Each part is one buffer of its exact size: the frames' bytes are copied into it,
        // since a frame can hold on to a larger read buffer than its own length.
        let mut part = BytesMut::with_capacity(PART);
        let mut uploading: FuturesUnordered<object_store::UploadPart> = FuturesUnordered::new();
        let mut received: u64 = 0;
        let store_error = |e: object_store::Error| ArchiveError::Store(e.to_string());
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ArchiveError::Download(crate::body::error_chain(&e)))?;
            let Ok(data) = frame.into_data() else { continue };
            received += data.len() as u64;
            if received > self.max_bytes {
                return Err(ArchiveError::TooLarge {
                    limit: self.max_bytes,
                });
            }
            hash.update(&data);
            part.extend_from_slice(&data);
            if part.len() >= PART {
                if uploading.len() >= PARTS_IN_FLIGHT
                    && let Some(done) = uploading.next().await
                {
                    done.map_err(store_error)?;
                }
                let full = std::mem::replace(&mut part, BytesMut::with_capacity(PART));
                uploading.push(upload.put_part(PutPayload::from(full.freeze())));
            }
        }
        if let Some(declared) = declared
            && declared != received
        {
            return Err(ArchiveError::Truncated {
                declared,
                got: received,
            });
        }
        // The last part (or the only one, empty for an empty output).
        if !part.is_empty() || received == 0 {
            uploading.push(upload.put_part(PutPayload::from(part.freeze())));
        }
        while let Some(done) = uploading.next().await {
            done.map_err(store_error)?;
        }
        upload.complete().await.map_err(store_error)?;
        let digest = hash.finish();
        Ok((
            received,
            digest.as_ref().iter().map(|b| format!("{b:02x}")).collect(),
        ))
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// A redirect's `Location`, absolute or relative to `base`.
fn resolve(base: &Uri, location: &str) -> Result<String, ArchiveError> {
    if location.starts_with("https://") || location.starts_with("http://") {
        return Ok(location.to_owned());
    }
    match (base.scheme_str(), base.authority(), location.starts_with('/')) {
        (Some(scheme), Some(authority), true) if !location.starts_with("//") => {
            Ok(format!("{scheme}://{authority}{location}"))
        }
        _ => Err(ArchiveError::Refused(format!(
            "redirect to {location:?}, which is neither absolute nor rooted"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_dated_per_task_and_output_and_unguessable() {
        let key = ObjectKey::new("d51c94db-f7fa", 2, "mp4");
        let parts: Vec<&str> = key.as_str().split('/').collect();
        assert_eq!(parts.len(), 5, "{key:?}");
        assert_eq!(parts[0].len(), 4);
        assert_eq!(parts[3], "d51c94db-f7fa");
        assert!(
            parts[4].starts_with("2-") && parts[4].ends_with(".mp4"),
            "{key:?}"
        );
        assert_ne!(
            ObjectKey::new("d51c94db-f7fa", 2, "mp4"),
            key,
            "a fresh random part"
        );
        let hostile = ObjectKey::new("../../etc/passwd", 0, "sh;rm");
        assert!(!hostile.as_str().contains(".."), "{hostile:?}");
        assert_eq!(hostile.as_str().split('/').count(), 5, "{hostile:?}");
    }

    #[test]
    fn redirects_resolve_absolute_or_rooted() {
        let base: Uri = "https://cdn.example.com/a/b.mp4?sig=1".parse().unwrap();
        assert_eq!(
            resolve(&base, "/c/d.mp4").unwrap(),
            "https://cdn.example.com/c/d.mp4"
        );
        assert_eq!(
            resolve(&base, "http://other.example/x").unwrap(),
            "http://other.example/x"
        );
        assert!(resolve(&base, "//evil.example/x").is_err());
        assert!(resolve(&base, "relative.mp4").is_err());
    }
}
