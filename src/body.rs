//! The body type every service in this crate speaks, and reading one within a bound.
//!
//! One boxed body type keeps the middleware stack simple: the sidecar's streaming
//! pass-through, a buffered replayable submission and an error envelope all travel as
//! [`Body`]. It is `Send` but not `Sync`, like hyper's own `Incoming` wrapped by axum.
//!
//! Every place that must see a whole body (the `callback_url` rewrite, the webhook
//! receiver, the retry layer classifying a response) reads it through [`read_bounded`],
//! so a body is never buffered past its bound and never loses a byte when it is larger.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use http_body::{Body as _, Frame};
use http_body_util::{BodyExt, Empty, Full, StreamBody, combinators::UnsyncBoxBody};

/// The error type carried by [`Body`] and by the crate's services' boxed errors.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A boxed, streaming HTTP body of [`Bytes`] chunks.
pub type Body = UnsyncBoxBody<Bytes, BodyError>;

/// Why reading a [`Body`] failed.
///
/// A concrete type rather than a bare [`BoxError`]: trait bounds like
/// `E: Into<BoxError>` then hold for every lifetime, which rustc needs to prove that
/// futures holding a body are `Send` (a bare `Box<dyn Error>` trips its higher-ranked
/// lifetime check when such a future is spawned).
#[derive(Debug)]
pub struct BodyError(BoxError);

impl BodyError {
    /// Wrap any error.
    pub fn new(err: impl Into<BoxError>) -> Self {
        BodyError(err.into())
    }
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// A body holding `bytes` in one chunk.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body with no bytes.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Box any body whose error converts into [`BoxError`] (hyper's `Incoming` among them).
///
/// A body that already is a [`Body`] is returned as it is rather than boxed again: the
/// layers are generic over their bodies, and a box in a box costs an allocation per
/// request and an indirection per frame for nothing.
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut slot = Some(body);
    if let Some(already) = (&mut slot as &mut dyn std::any::Any).downcast_mut::<Option<Body>>()
        && let Some(body) = already.take()
    {
        return body;
    }
    match slot {
        Some(body) => body.map_err(BodyError::new).boxed_unsync(),
        None => empty(),
    }
}

/// The error's message followed by each distinct message in its `source()` chain.
///
/// hyper and hyper-util put the useful part ("Connection refused") a few sources deep
/// behind generic wrappers ("client error (Connect)"), so a message a human can act on
/// needs the whole chain.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// A body read up to a bound.
#[derive(Debug)]
pub enum Bounded {
    /// The whole body, within the bound.
    Whole(Bytes),
    /// Over the bound (or carrying trailers): what was read, followed by the rest, unread.
    Partial(Body),
}

/// Read `body` until it ends or passes `limit` bytes, without losing anything: a larger
/// body comes back as [`Bounded::Partial`], whose frames are the ones already read
/// followed by the rest of the stream.
pub async fn read_bounded(mut body: Body, limit: usize) -> Result<Bounded, BodyError> {
    if body.size_hint().lower() > limit as u64 {
        return Ok(Bounded::Partial(body));
    }
    // Most bodies arrive in one frame: keep it as it is, and copy only when a second
    // frame has to be joined to it.
    let mut first: Option<Bytes> = None;
    let mut joined = BytesMut::new();
    loop {
        let Some(frame) = body.frame().await.transpose()? else {
            let whole = match first {
                Some(bytes) if joined.is_empty() => bytes,
                _ => joined.freeze(),
            };
            return Ok(Bounded::Whole(whole));
        };
        let read_so_far = first.as_ref().map_or(0, Bytes::len) + joined.len();
        match frame.into_data() {
            Ok(data) if read_so_far + data.len() <= limit => match first.take() {
                None if joined.is_empty() => first = Some(data),
                earlier => {
                    if let Some(earlier) = earlier {
                        joined.extend_from_slice(&earlier);
                    }
                    joined.extend_from_slice(&data);
                }
            },
            Ok(data) => {
                let read = [Frame::data(take_read(first, joined)), Frame::data(data)];
                return Ok(Bounded::Partial(chain(read.into(), body)));
            }
            Err(trailers) => {
                let read = [Frame::data(take_read(first, joined)), trailers];
                return Ok(Bounded::Partial(chain(read.into(), body)));
            }
        }
    }
}

fn take_read(first: Option<Bytes>, joined: BytesMut) -> Bytes {
    first.unwrap_or_else(|| joined.freeze())
}

/// A body that yields `read` and then whatever is left of `rest`.
fn chain(read: VecDeque<Frame<Bytes>>, rest: Body) -> Body {
    let head = futures_util::stream::iter(read.into_iter().map(Ok::<_, BodyError>));
    let tail = http_body_util::BodyStream::new(rest);
    boxed(StreamBody::new(futures_util::StreamExt::chain(head, tail)))
}

/// Why [`read_to_limit`] could not return a whole body.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The body is larger than the limit (nothing past the limit was read).
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    /// The body failed while being read (the client went away, say).
    #[error("could not read the body: {}", error_chain(.0))]
    Failed(#[source] BodyError),
}

/// Read a whole body of at most `limit` bytes, for a caller that can do nothing with a
/// larger one but refuse it.
pub async fn read_to_limit<B>(body: B, limit: usize) -> Result<Bytes, ReadError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    match read_bounded(boxed(body), limit).await {
        Ok(Bounded::Whole(bytes)) => Ok(bytes),
        Ok(Bounded::Partial(_)) => Err(ReadError::TooLarge(limit)),
        Err(err) => Err(ReadError::Failed(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> Body {
        let frames = parts
            .iter()
            .map(|p| Ok::<_, BodyError>(Frame::data(Bytes::from_static(p))))
            .collect::<Vec<_>>();
        boxed(StreamBody::new(futures_util::stream::iter(frames)))
    }

    #[tokio::test]
    async fn whole_bodies_within_the_bound_are_joined() {
        let Bounded::Whole(bytes) = read_bounded(chunks(&[b"ab", b"cd"]), 4).await.unwrap() else {
            panic!("within the bound");
        };
        assert_eq!(bytes, "abcd");
    }

    #[tokio::test]
    async fn larger_bodies_lose_nothing() {
        let Bounded::Partial(rest) = read_bounded(chunks(&[b"ab", b"cd", b"ef"]), 3).await.unwrap() else {
            panic!("over the bound");
        };
        assert_eq!(rest.collect().await.unwrap().to_bytes(), "abcdef");
        let err = read_to_limit(chunks(&[b"abcd"]), 3).await.unwrap_err();
        assert!(matches!(err, ReadError::TooLarge(3)), "{err}");
    }
}
