//! The webhook listener's routes.

use std::convert::Infallible;

use http::{Request, Response};

use crate::body::Body;
use crate::relay::WebhookReceiver;

/// The webhook listener's routes: `/-/outputs/{token}` (when the proxy serves the
/// archive's links) and, for everything else, the webhook receiver.
#[derive(Clone, Debug)]
pub(super) struct HookRoutes {
    pub(super) receiver: WebhookReceiver,
    #[cfg(feature = "archive")]
    pub(super) outputs: Option<crate::archive::OutputServer>,
}

impl tower::Service<Request<Body>> for HookRoutes {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        #[cfg(feature = "archive")]
        if let Some(outputs) = &mut self.outputs
            && request.uri().path().starts_with(crate::archive::OUTPUTS_PATH)
        {
            return tower::Service::call(outputs, request);
        }
        tower::Service::call(&mut self.receiver, request)
    }
}
