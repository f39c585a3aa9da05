//! The stand-in as a tower service: control paths, faults, then the routes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};

use super::answer::Reset;
use super::control::control;
use super::routes::handle;
use super::state::State;
use crate::body::Body;

#[derive(Clone, Debug)]
pub(super) struct MockService(pub(super) Arc<State>);

impl tower::Service<Request<Body>> for MockService {
    type Response = Response<Body>;
    // Failing the service makes the server drop the connection without an answer.
    type Error = Reset;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Reset>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let state = Arc::clone(&self.0);
        Box::pin(async move {
            if request.uri().path().starts_with("/-/mock/") {
                return Ok(control(&state, request).await);
            }
            let _in_flight = InFlight::enter(&state);
            handle(&state, request).await
        })
    }
}

/// Counts a request in flight for as long as it lives.
pub(super) struct InFlight<'a>(&'a State);

impl<'a> InFlight<'a> {
    fn enter(state: &'a State) -> Self {
        let mut inner = state.lock();
        inner.in_flight += 1;
        inner.max_in_flight = inner.max_in_flight.max(inner.in_flight);
        InFlight(state)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.lock().in_flight -= 1;
    }
}
