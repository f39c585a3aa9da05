//! Links to copies in a `file://` store, which the proxy serves itself: signed, expiring,
//! and answering `Range` requests.
//!
//! A link is `{public_url}/-/outputs/{token}`, the token minted with the callback token
//! keys over `archive:{key}`: the same keys, rotation and lifetime rules as callback
//! tokens, and nothing about the object readable in the link. [`OutputServer`] answers
//! `GET` and `HEAD` for such links: 404 for a token that does not verify (or a callback
//! token, which names no object), 410 once the link's lifetime has passed, a single
//! `bytes=` range as 206 (416 when it lies outside the object), the whole object
//! otherwise, streamed from the store.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::TryStreamExt;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::StreamBody;
use object_store::{GetOptions, GetRange};

use super::{ArchiveError, ArchiveStore, ObjectKey};
use crate::body::{self, Body, BodyError};
use crate::callback::Keyring;
use crate::envelope;

/// The path prefix of output links.
pub const PREFIX: &str = "/-/outputs/";
/// What a link's token carries before the key (a callback token carries a URL instead).
const SCHEME: &str = "archive:";

/// Mints links to copies: `{public_url}/-/outputs/{token}`.
#[derive(Clone, Debug)]
pub struct OutputLinks {
    keys: Arc<Keyring>,
    public_url: String,
}

impl OutputLinks {
    /// Links under `public_url` (where the webhook listener is reached), signed with
    /// `keys`.
    pub fn new(public_url: &str, keys: Arc<Keyring>) -> OutputLinks {
        OutputLinks {
            keys,
            public_url: public_url.trim_end_matches('/').to_owned(),
        }
    }

    /// A link to the copy at `key`, valid for the server's lifetime from now.
    pub fn link(&self, key: &ObjectKey) -> String {
        let token = self.keys.mint(&format!("{SCHEME}{}", key.as_str()));
        format!("{}{PREFIX}{token}", self.public_url)
    }
}

/// How a relayed webhook links to a copy.
#[derive(Clone, Debug)]
pub enum LinkStyle {
    /// `{base}/{object path}`: the bucket, or a CDN before it, serves the objects.
    Public(String),
    /// Pre-signed `GET` URLs, valid this long (S3, GCS, Azure).
    Presigned(Duration),
    /// Links the proxy's webhook listener serves ([`OutputServer`]): for `file://`.
    Served(OutputLinks),
}

/// Mints the link a subscriber gets for each copy, in the store's [`LinkStyle`].
#[derive(Clone, Debug)]
pub struct ArchiveLinks {
    store: ArchiveStore,
    style: LinkStyle,
}

impl ArchiveLinks {
    /// Links to `store`'s objects in `style`. A pre-signed style on a store that cannot
    /// sign (local files) is refused.
    pub fn new(store: ArchiveStore, style: LinkStyle) -> Result<ArchiveLinks, ArchiveError> {
        if matches!(style, LinkStyle::Presigned(_)) && !store.can_sign() {
            return Err(ArchiveError::Setup(format!(
                "{} cannot pre-sign links: set archive.public_url, or serve them from the webhook listener",
                store.url()
            )));
        }
        Ok(ArchiveLinks { store, style })
    }

    /// The style.
    pub fn style(&self) -> &LinkStyle {
        &self.style
    }

    /// A link to the copy at `key`, valid from now (for the style's lifetime).
    pub async fn link(&self, key: &ObjectKey) -> Result<String, ArchiveError> {
        match &self.style {
            LinkStyle::Public(base) => Ok(format!(
                "{}/{}",
                base.trim_end_matches('/'),
                self.store.path(key.as_str())
            )),
            LinkStyle::Presigned(lifetime) => self
                .store
                .presigned(key.as_str(), *lifetime)
                .await?
                .ok_or_else(|| ArchiveError::Setup("the store cannot pre-sign links".into())),
            LinkStyle::Served(links) => Ok(links.link(key)),
        }
    }
}

/// Serves the links [`OutputLinks`] mints, from the store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct OutputServer {
    store: ArchiveStore,
    keys: Arc<Keyring>,
    lifetime: Duration,
}

impl OutputServer {
    /// Serve `store`'s objects to links signed with `keys`, for `lifetime` after each was
    /// minted.
    pub fn new(store: ArchiveStore, keys: Arc<Keyring>, lifetime: Duration) -> OutputServer {
        OutputServer {
            store,
            keys,
            lifetime,
        }
    }

    /// Answer one request for a link (its head: a body is never read).
    pub async fn answer(&self, request: &http::request::Parts) -> Response<Body> {
        let method = &request.method;
        if method != Method::GET && method != Method::HEAD {
            return envelope::error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "outputs are read with GET or HEAD",
            );
        }
        let not_found = || envelope::error_response(StatusCode::NOT_FOUND, "no such output");
        let Some(token) = request
            .uri
            .path()
            .strip_prefix(PREFIX)
            .filter(|t| !t.contains('/'))
        else {
            return not_found();
        };
        let key = match self.keys.verify_fresh(token, self.lifetime) {
            Ok(route) => match route.url.strip_prefix(SCHEME) {
                Some(key) => key.to_owned(),
                None => return not_found(),
            },
            Err(crate::callback::TokenError::Expired) => {
                return envelope::error_response(
                    StatusCode::GONE,
                    "this output link has expired; ask for a fresh one",
                );
            }
            Err(_) => return not_found(),
        };
        let path = self.store.path(&key);
        let size = match self.store.inner().head(&path).await {
            Ok(meta) => meta.size,
            Err(object_store::Error::NotFound { .. }) => return not_found(),
            Err(err) => return store_failed(&err),
        };
        let range = match request
            .headers
            .get(header::RANGE)
            .map(|value| parse_range(value.as_bytes(), size))
        {
            None | Some(Range::Ignored) => None,
            Some(Range::Bytes(start, end)) => Some((start, end)),
            Some(Range::Unsatisfiable) => {
                let mut response =
                    envelope::error_response(StatusCode::RANGE_NOT_SATISFIABLE, "range outside the output");
                if let Ok(value) = HeaderValue::try_from(format!("bytes */{size}")) {
                    response.headers_mut().insert(header::CONTENT_RANGE, value);
                }
                return response;
            }
        };
        let (status, length) = match range {
            Some((start, end)) => (StatusCode::PARTIAL_CONTENT, end - start + 1),
            None => (StatusCode::OK, size),
        };
        let body = if *method == Method::HEAD || length == 0 {
            body::empty()
        } else {
            let options = GetOptions {
                range: Some(match range {
                    Some((start, end)) => GetRange::Bounded(start..end + 1),
                    None => GetRange::Bounded(0..size),
                }),
                ..GetOptions::default()
            };
            match self.store.inner().get_opts(&path, options).await {
                Ok(found) => {
                    let frames = found.into_stream().map_ok(Frame::data).map_err(BodyError::new);
                    body::boxed(StreamBody::new(frames))
                }
                Err(object_store::Error::NotFound { .. }) => return not_found(),
                Err(err) => return store_failed(&err),
            }
        };
        let mut response = Response::new(body);
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(&key)));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, max-age=3600"),
        );
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        if let Some((start, end)) = range
            && let Ok(value) = HeaderValue::try_from(format!("bytes {start}-{end}/{size}"))
        {
            headers.insert(header::CONTENT_RANGE, value);
        }
        response
    }
}

impl<B: Send + 'static> tower::Service<Request<B>> for OutputServer {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let server = self.clone();
        let (head, _) = request.into_parts();
        Box::pin(async move { Ok(server.answer(&head).await) })
    }
}

/// The answer when the store fails a read: 503, which clients may retry.
fn store_failed(err: &object_store::Error) -> Response<Body> {
    tracing::warn!(error = %err, "cannot read an archived output");
    envelope::error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "the archive store did not answer",
    )
}

/// A `Range` header, read against an object of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
enum Range {
    /// One satisfiable range, first and last byte.
    Bytes(u64, u64),
    /// A range outside the object.
    Unsatisfiable,
    /// Not one `bytes=` range this server reads (several, another unit): the whole object.
    Ignored,
}

fn parse_range(value: &[u8], size: u64) -> Range {
    let Some(spec) = std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return Range::Ignored;
    };
    if spec.contains(',') {
        return Range::Ignored;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Range::Ignored;
    };
    let number = |text: &str| text.trim().parse::<u64>().ok();
    match (first.trim().is_empty(), number(first), number(last)) {
        // bytes=-N: the last N bytes.
        (true, _, Some(suffix)) if suffix > 0 && size > 0 => {
            Range::Bytes(size.saturating_sub(suffix), size - 1)
        }
        (true, _, _) => Range::Unsatisfiable,
        (false, Some(start), _) if start >= size => Range::Unsatisfiable,
        (false, Some(start), None) if last.trim().is_empty() => Range::Bytes(start, size - 1),
        (false, Some(start), Some(end)) if end >= start => Range::Bytes(start, end.min(size - 1)),
        _ => Range::Ignored,
    }
}

/// The content type a stored output is served with, by its key's extension.
fn content_type(key: &str) -> &'static str {
    match key
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase())
        .as_deref()
    {
        Some("mp4") => "video/mp4",
        Some("mov") => "video/quicktime",
        Some("webm") => "video/webm",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("webp") => "image/webp",
        Some("gif") => "image/gif",
        Some("mp3") => "audio/mpeg",
        Some("wav") => "audio/wav",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_read_as_rfc_9110_says() {
        assert_eq!(parse_range(b"bytes=0-99", 1000), Range::Bytes(0, 99));
        assert_eq!(parse_range(b"bytes=900-", 1000), Range::Bytes(900, 999));
        assert_eq!(parse_range(b"bytes=-100", 1000), Range::Bytes(900, 999));
        assert_eq!(parse_range(b"bytes=-5000", 1000), Range::Bytes(0, 999));
        assert_eq!(parse_range(b"bytes=990-2000", 1000), Range::Bytes(990, 999));
        assert_eq!(parse_range(b"bytes=1000-", 1000), Range::Unsatisfiable);
        assert_eq!(parse_range(b"bytes=-0", 1000), Range::Unsatisfiable);
        assert_eq!(parse_range(b"bytes=0-1,5-6", 1000), Range::Ignored);
        assert_eq!(parse_range(b"items=0-1", 1000), Range::Ignored);
        assert_eq!(parse_range(b"bytes=5-1", 1000), Range::Ignored);
        assert_eq!(parse_range(b"bytes=\xff", 1000), Range::Ignored);
    }

    #[test]
    fn content_types_follow_the_extension() {
        assert_eq!(content_type("2026/12/06/t/0-ab.mp4"), "video/mp4");
        assert_eq!(content_type("2026/12/06/t/1-ab.PNG"), "image/png");
        assert_eq!(content_type("2026/12/06/t/2-ab.bin"), "application/octet-stream");
    }
}
