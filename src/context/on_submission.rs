//! [`OnSubmission`]: the one skeleton of every middleware that acts on submissions only.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::TryFutureExt;
use futures_util::future::{Either, MapOk};
use http::{Request, Response};
use tower::Service;

use crate::body::{self, Body, BoxError};

/// What a middleware built on [`OnSubmission`] does with the requests it takes.
///
/// The idempotency record, the callback rewrite, the task guard, the watch list's
/// recorder and the context itself are each one of these: [`take`](Self::take) looks at
/// a request's head and says whether (and how) to handle it; [`handle`](Self::handle)
/// does, calling the inner service for what goes on.
pub trait SubmissionHandler: Send + Sync + 'static {
    /// What `take` learned of a request it handles, for `handle`.
    type Ticket: Send + 'static;

    /// Whether to handle `request` (`Some`), or pass it through untouched (`None`).
    fn take<B>(&self, request: &Request<B>) -> Option<Self::Ticket>;

    /// Handle `request`, calling `inner` for what goes on.
    fn handle<S: Inner<RB>, RB: BytesBody>(
        self: Arc<Self>,
        ticket: Self::Ticket,
        inner: S,
        request: Request<Body>,
    ) -> impl Future<Output = Result<Response<Body>, S::Error>> + Send;
}

/// The service a handler calls for what goes on: it takes the crate's [`Body`], answers
/// with a body of bytes, and its future and error can cross threads.
pub trait Inner<RB>:
    Service<Request<Body>, Response = Response<RB>, Future: Send, Error: Send + 'static> + Send + 'static
{
}

impl<S, RB> Inner<RB> for S where
    S: Service<Request<Body>, Response = Response<RB>, Future: Send, Error: Send + 'static> + Send + 'static
{
}

/// A body of [`Bytes`] the middleware can box into a [`Body`].
pub trait BytesBody: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static {}

impl<B> BytesBody for B where B: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static {}

/// A service that hands the requests `H` takes to `H`, and streams every other one (every
/// one, when it has no handler: the middleware is off) to `S` untouched, with no
/// allocation on that path.
#[derive(Debug)]
pub struct OnSubmission<S, H> {
    inner: S,
    handler: Option<Arc<H>>,
}

impl<S: Clone, H> Clone for OnSubmission<S, H> {
    fn clone(&self) -> Self {
        OnSubmission {
            inner: self.inner.clone(),
            handler: self.handler.clone(),
        }
    }
}

impl<S, H> OnSubmission<S, H> {
    /// `inner`, with `handler` taking the requests it wants.
    pub fn new(inner: S, handler: Arc<H>) -> Self {
        OnSubmission {
            inner,
            handler: Some(handler),
        }
    }

    /// `inner`, every request passed through (for a stack with this middleware off).
    pub fn passthrough(inner: S) -> Self {
        OnSubmission { inner, handler: None }
    }
}

/// Response future of [`OnSubmission`]: the inner service's own future for a request
/// passed through (`F`, unboxed: no allocation on that path), a boxed one for a request
/// handled.
pub type ResponseFuture<F, RB, E> = Either<
    MapOk<F, fn(Response<RB>) -> Response<Body>>,
    Pin<Box<dyn Future<Output = Result<Response<Body>, E>> + Send>>,
>;

impl<S, H, B, RB> Service<Request<B>> for OnSubmission<S, H>
where
    // Spelled out (not `Inner<RB>`): the response type is what fixes `RB`.
    S: Service<Request<Body>, Response = Response<RB>, Future: Send, Error: Send + 'static>
        + Clone
        + Send
        + 'static,
    H: SubmissionHandler,
    B: BytesBody,
    RB: BytesBody,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, RB, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Ready when the inner service is; a handler's own waiting (a task slot, say) is
        // per request, bounded, in its future.
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let taken = self
            .handler
            .as_ref()
            .and_then(|handler| Some((handler.take(&request)?, Arc::clone(handler))));
        match taken {
            Some((ticket, handler)) => {
                // The ready service goes with the request; its clone waits for the next
                // `poll_ready`.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                Either::Right(Box::pin(handler.handle(ticket, inner, request.map(body::boxed))))
            }
            // Straight to the ready inner service: no clone, no allocation.
            None => {
                let boxed: fn(Response<RB>) -> Response<Body> = |response| response.map(body::boxed);
                Either::Left(self.inner.call(request.map(body::boxed)).map_ok(boxed))
            }
        }
    }
}
