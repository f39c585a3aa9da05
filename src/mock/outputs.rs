//! The stand-in's CDN: a succeeded task's outputs as real bytes, which can expire.
//!
//! A succeeded task's `video_url`, `poster` and `last_frame` (and the official format's
//! `output[]`) point here, at `{stand-in}/cdn/{kind}/{task id}.{ext}`: no key needed, as on
//! CometAPI's CDN. Each output is [`MockConfig::output_bytes`](super::MockConfig::output_bytes)
//! long, starts with a real file header (an MP4 `ftyp` box, the PNG signature) and goes on
//! with bytes drawn from a generator seeded by the path: the same URL always serves the
//! same bytes (a copy can be checked by its SHA-256), generated as they are sent, so a
//! 1 GiB output costs no memory. With
//! [`MockConfig::outputs_expire_after`](super::MockConfig::outputs_expire_after), output
//! URLs are signed with their expiry, that long after they were handed out (in a
//! callback, a feed answer, a task read), and answer 403 after it: reading the task
//! again gives fresh URLs, as with Runway's.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body::{Frame, SizeHint};

use super::state::{OUTPUT_KINDS as KINDS, State};
use crate::body::{self, Body, BodyError};

pub(super) use super::state::OUTPUTS as PREFIX;

/// Bytes generated per frame of the body.
const CHUNK: usize = 64 * 1024;

/// Answer a request under [`PREFIX`].
pub(super) fn serve(state: &State, method: &Method, path: &str, query: Option<&str>) -> Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        return plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "outputs are read with GET or HEAD",
        );
    }
    let Some((kind, content_type, id)) = parse(path) else {
        return plain(StatusCode::NOT_FOUND, "no such output");
    };
    let succeeded = state.lock().tasks.get(id).is_some_and(|task| task.status == 3);
    if !succeeded {
        return plain(StatusCode::NOT_FOUND, "no such output");
    }
    if !state.outputs.admits(path, query) {
        // What an expired (or altered) signed URL answers on S3 and most CDNs.
        let mut response = Response::new(body::full(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>",
        ));
        *response.status_mut() = StatusCode::FORBIDDEN;
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/xml"));
        return response;
    }
    let len = state.config.output_bytes;
    let generated = Generated::new(kind, path, len);
    let mut response = if method == Method::HEAD {
        Response::new(body::empty())
    } else {
        Response::new(body::boxed(generated))
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=86400"),
    );
    response
}

/// `(kind, content type, task id)` of `/cdn/{kind}/{id}.{ext}`.
fn parse(path: &str) -> Option<(&'static str, &'static str, &str)> {
    let (kind, file) = path.strip_prefix(PREFIX)?.split_once('/')?;
    let (name, ext, content_type) = KINDS.iter().find(|(k, _, _)| *k == kind)?;
    let id = file.strip_suffix(ext)?.strip_suffix('.')?;
    (!id.is_empty() && !id.contains('/')).then_some((name, content_type, id))
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(body::full(text));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// An output's bytes, made as they are read: a file header, then a deterministic stream.
struct Generated {
    header: &'static [u8],
    state: u64,
    sent: u64,
    len: u64,
}

/// An MP4 file's first box (`ftyp`, brand `isom`), as players and `file(1)` recognize it.
const MP4_HEADER: &[u8] = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isommp42";
/// The PNG signature.
const PNG_HEADER: &[u8] = b"\x89PNG\r\n\x1a\n";

impl Generated {
    fn new(kind: &str, path: &str, len: u64) -> Generated {
        // FNV-1a of the path seeds the stream: the same URL, the same bytes.
        let seed = path.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
        Generated {
            header: if kind == "video" { MP4_HEADER } else { PNG_HEADER },
            state: seed,
            sent: 0,
            len,
        }
    }

    /// The next 8 bytes of the stream (SplitMix64).
    fn next_word(&mut self) -> [u8; 8] {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)).to_le_bytes()
    }
}

impl http_body::Body for Generated {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let left = self.len - self.sent;
        if left == 0 {
            return Poll::Ready(None);
        }
        let size = usize::try_from(left).map_or(CHUNK, |left| left.min(CHUNK));
        let mut chunk = BytesMut::with_capacity(size + 8);
        if self.sent == 0 {
            chunk.extend_from_slice(self.header);
        }
        while chunk.len() < size {
            let word = self.next_word();
            chunk.extend_from_slice(&word);
        }
        chunk.truncate(size);
        self.sent += size as u64;
        Poll::Ready(Some(Ok(Frame::data(chunk.freeze()))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent == self.len
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len - self.sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_paths_name_a_kind_and_a_task() {
        assert_eq!(parse("/cdn/video/t1.mp4"), Some(("video", "video/mp4", "t1")));
        assert_eq!(parse("/cdn/poster/t1.png"), Some(("poster", "image/png", "t1")));
        assert_eq!(
            parse("/cdn/last_frame/t-2.png"),
            Some(("last_frame", "image/png", "t-2"))
        );
        for bad in [
            "/cdn/video/t1.png",
            "/cdn/audio/t1.mp3",
            "/cdn/video/.mp4",
            "/cdn/video",
            "/cdn/video/a/b.mp4",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        let plain = super::super::state::OutputUrls::new("http://127.0.0.1:1".into(), None);
        assert_eq!(plain.url("poster", "t1"), "http://127.0.0.1:1/cdn/poster/t1.png");
        assert!(plain.admits("/cdn/poster/t1.png", None));
        let signed =
            super::super::state::OutputUrls::new("http://h".into(), Some(std::time::Duration::from_secs(60)));
        let url = signed.url("video", "t1");
        let (path, query) = url.trim_start_matches("http://h").split_once('?').unwrap();
        assert!(signed.admits(path, Some(query)));
        assert!(!signed.admits(path, None), "unsigned");
        assert!(!signed.admits("/cdn/video/t2.mp4", Some(query)), "another output");
        let later = query.replacen("expires=1", "expires=2", 1);
        assert!(!signed.admits(path, Some(&later)), "an altered expiry");
    }
}
