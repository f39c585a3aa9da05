//! The body type every service in this crate speaks, and small helpers around it.
//!
//! One boxed body type keeps the middleware stack simple: the sidecar's streaming
//! pass-through, a buffered replayable submission and an error envelope all travel as
//! [`Body`]. It is `Send` but not `Sync`, like hyper's own `Incoming` wrapped by axum.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};

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
