//! [`Retry`], the service: one request's attempts run in [`Attempts`](super::attempts).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use tower::Service;
use tracing::Instrument;

use super::attempts::Attempts;
use super::layer::Shared;
use crate::body::{self, Body, BoxError};
use crate::context;
use crate::settings::Live;

/// Retries requests to `S` by the rules of its [`RetryLayer`](super::RetryLayer). See the
/// module docs.
#[derive(Clone, Debug)]
pub struct Retry<S> {
    inner: S,
    live: Live<Shared>,
}

impl<S> Retry<S> {
    pub(super) fn new(inner: S, live: Live<Shared>) -> Self {
        Retry { inner, live }
    }
}

/// Response future of [`Retry`].
pub type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl<S, B, RB> Service<Request<B>> for Retry<S>
where
    S: Service<Request<Body>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    RB: http_body::Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each attempt waits for readiness of its own clone of `inner`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let class = context::class_of(&request);
        // A span per request costs an allocation and a few µs when it is recorded, so it is
        // at debug: the events that matter (a retry, a stop) carry the class and path
        // themselves.
        let span = tracing::debug_span!("retry", route_class = class.as_str(), path = request.uri().path());
        let attempts = Attempts::new(self.inner.clone(), self.live.get(), class);
        let request = request.map(body::boxed);
        if span.is_disabled() {
            // Nothing records it: skip entering and leaving it at every poll.
            return Box::pin(async move { Ok(attempts.run(request).await) });
        }
        Box::pin(async move { Ok(attempts.run(request).await) }.instrument(span))
    }
}
