//! [`RateLimit`], the service: wait for a turn, then call the inner service, holding the
//! concurrency slot until the response body is done.

use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use super::wait::{Permit, Shared};
use crate::body::{self, Body, BoxError};
use crate::settings::Live;

/// Holds each request until its quotas and a concurrency slot allow it. See the module docs.
#[derive(Clone, Debug)]
pub struct RateLimit<S> {
    inner: S,
    live: Live<Shared>,
}

impl<S> RateLimit<S> {
    pub(super) fn new(inner: S, live: Live<Shared>) -> Self {
        RateLimit { inner, live }
    }
}

/// Response future of [`RateLimit`].
pub type ResponseFuture<E> = Pin<Box<dyn Future<Output = Result<Response<Body>, E>> + Send>>;

impl<S, B, RB> Service<Request<B>> for RateLimit<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
    B: Send + 'static,
    RB: http_body::Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Waiting happens per request in the future, where it can be bounded and cancelled.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let live = self.live.clone();
        let inner = self.inner.clone();
        let class = crate::context::class_of(&request);
        Box::pin(async move {
            let started = Instant::now();
            let permit = loop {
                // Taken before the state it guards is read, so a reload in between is
                // not missed: a request waiting when one comes starts over under it.
                let reloaded = live.changed();
                let shared = live.get();
                // The token is hashed, never kept: the state is keyed by the hash (per
                // process here, and a digest that is the same in every replica for the
                // shared state).
                let token = request
                    .headers()
                    .get(header::AUTHORIZATION)
                    .map_or(&b""[..], HeaderValue::as_bytes);
                let key = (shared.rate_per_key.is_some() || shared.concurrency_per_key.is_some())
                    .then(|| shared.hasher.hash_one(token));
                let digest = shared.shares_per_key_state().then(|| token_digest(token));
                tokio::select! {
                    biased;
                    turn = shared.wait_turn(class, key, digest, started) => break turn,
                    () = reloaded => continue,
                }
            };
            let permit = match permit {
                Ok(permit) => permit,
                Err(refusal) => return Ok(refusal.into_response(request.uri().path())),
            };
            let waited = started.elapsed();
            let mut response = inner.oneshot(request).await?;
            if waited >= std::time::Duration::from_millis(1) {
                // For the attempt's span. Only a real wait: most requests have none, and
                // an extension costs an allocation.
                response
                    .extensions_mut()
                    .insert(crate::trace::LimitWaited(waited));
            }
            // The slot is held until the response body is done with, not just its headers.
            Ok(response.map(|body| {
                body::boxed(WithPermit {
                    body,
                    _permit: permit,
                })
            }))
        })
    }
}

/// The name of an API key in the state shared by replicas: the first 16 bytes of its
/// SHA-256, the same in every process (the local state's hash is keyed per process).
fn token_digest(token: &[u8]) -> [u8; 16] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token);
    let mut name = [0u8; 16];
    name.copy_from_slice(&digest.as_ref()[..16]);
    name
}

pin_project_lite::pin_project! {
    /// A response body that keeps the request's concurrency slot until it is dropped.
    struct WithPermit<B> {
        #[pin]
        body: B,
        _permit: Permit,
    }
}

impl<B: http_body::Body> http_body::Body for WithPermit<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
