//! [`RewriteCallback`], the service: rewrite a submission's `callback_url`, then call the
//! inner service.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use tower::ServiceExt;

use super::layer::Rewriter;
use super::{CALLBACK_URL_HEADER, CallbackToken, TaskSubscriber};
use crate::body::{self, Body, BoxError, ReadError};
use crate::context::{self, BytesBody, Inner, OnSubmission, SubmissionBody, SubmissionHandler};
use crate::envelope;
use crate::route::RouteClass;

/// Rewrites `callback_url` in submissions, then calls `S`. See the [module docs](super).
pub type RewriteCallback<S> = OnSubmission<S, Rewriter>;

/// What [`Rewriter`] does with a request it takes.
#[derive(Debug)]
pub enum Rewrite {
    /// A reverse-format submission: rewrite its body's `callback_url`.
    Body,
    /// A request naming its subscriber in [`CALLBACK_URL_HEADER`] (an official-format
    /// submission): check it and take it off.
    Header,
}

impl SubmissionHandler for Rewriter {
    type Ticket = Rewrite;

    fn take<B>(&self, request: &Request<B>) -> Option<Rewrite> {
        if carries_callback_url(request) {
            Some(Rewrite::Body)
        } else if request.headers().contains_key(CALLBACK_URL_HEADER) {
            Some(Rewrite::Header)
        } else {
            // Not a submission with a callback_url: streamed through untouched, whatever
            // its size.
            None
        }
    }

    async fn handle<S: Inner<RB>, RB: BytesBody>(
        self: Arc<Self>,
        ticket: Rewrite,
        inner: S,
        request: Request<Body>,
    ) -> Result<Response<Body>, S::Error> {
        let rewritten = match ticket {
            Rewrite::Body => self.rewrite(request).await,
            Rewrite::Header => self.official_subscriber(request).await,
        };
        match rewritten {
            Ok(request) => Ok(inner.oneshot(request).await?.map(body::boxed)),
            Err(refusal) => Ok(refusal),
        }
    }
}

/// Whether a request is a submission in the reverse format (`POST /runway/pro/*`), the
/// one whose body may carry a `callback_url`. The official routes (`/runwayml/v1/*`)
/// have no webhook; their bodies (base64 images of several MB) are never read here.
fn carries_callback_url<B>(request: &Request<B>) -> bool {
    context::class_of(request) == RouteClass::Submission && request.uri().path().starts_with("/runway/")
}

impl Rewriter {
    /// Check `url` as a subscriber: the policy, and (for a host name) where it resolves.
    async fn check_subscriber(&self, url: &str) -> Result<(), Response<Body>> {
        let bad_request = |msg: String| envelope::error_response(StatusCode::BAD_REQUEST, &msg);
        let policy = self.callbacks.policy();
        let subscriber = policy
            .check(url)
            .map_err(|refused| bad_request(refused.to_string()))?;
        if subscriber.ip.is_none() && !policy.allows_private() {
            self.resolved
                .check(&subscriber, &policy)
                .await
                .map_err(|refused| bad_request(refused.to_string()))?;
        }
        Ok(())
    }

    /// An official-format submission's subscriber, from [`CALLBACK_URL_HEADER`]: checked,
    /// taken off the request (the upstream never sees it) and put in its extensions. Only
    /// submissions may name one.
    async fn official_subscriber<B>(&self, request: Request<B>) -> Result<Request<Body>, Response<Body>>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (mut parts, body) = request.into_parts();
        let bad_request = |msg: &str| envelope::error_response(StatusCode::BAD_REQUEST, msg);
        if parts.extensions.get::<SubmissionBody>().is_none()
            && RouteClass::of(&parts.method, parts.uri.path()) != RouteClass::Submission
        {
            return Err(bad_request(
                "x-runway-proxy-callback-url names the subscriber of a submission; this request is not one",
            ));
        }
        let Some(value) = parts.headers.remove(CALLBACK_URL_HEADER) else {
            return Ok(Request::from_parts(parts, body::boxed(body)));
        };
        let url = value
            .to_str()
            .map_err(|_| {
                bad_request("x-runway-proxy-callback-url is not a valid URL (it is not ASCII text)")
            })?
            .trim()
            .to_owned();
        self.check_subscriber(&url).await?;
        parts.extensions.insert(TaskSubscriber(url));
        Ok(Request::from_parts(parts, body::boxed(body)))
    }

    /// The request with its `callback_url` rewritten, or the error response to send back.
    /// The body is the one the context buffered when it is within `callback.body_limit`;
    /// else it is read here (and buffered for the layers inside).
    async fn rewrite<B>(&self, request: Request<B>) -> Result<Request<Body>, Response<Body>>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let limit = self.callbacks.body_limit();
        let mut request = request.map(body::boxed);
        let buffered = match SubmissionBody::of(&request, limit) {
            Some(buffered) => buffered.clone(),
            None => {
                let (mut parts, body) = request.into_parts();
                let bytes = read_within(body, limit).await?;
                let buffered = SubmissionBody::new(bytes.clone());
                parts.extensions.insert(buffered.clone());
                request = Request::from_parts(parts, body::full(bytes));
                buffered
            }
        };
        // The body's callback_url names a reverse-format task's subscriber; the header is
        // for the official format, and never goes upstream.
        request.headers_mut().remove(CALLBACK_URL_HEADER);
        let found = match &buffered.fields().callback_url {
            Ok(Some(found)) if !found.url.is_empty() => found,
            // No callback_url (or an empty one, which CometAPI answers itself): unchanged.
            Ok(_) => return Ok(request),
            Err(err) => {
                return Err(envelope::error_response(
                    StatusCode::BAD_REQUEST,
                    &err.to_string(),
                ));
            }
        };
        self.check_subscriber(&found.url).await?;
        let hook = self.callbacks.hook_url(&found.url);
        let token = hook
            .rsplit('/')
            .next()
            .and_then(super::token_id)
            .map(CallbackToken);
        let rewritten = found.replace(buffered.bytes(), &hook);
        // The length changed; hyper sets the new one from the body.
        request.headers_mut().remove(header::CONTENT_LENGTH);
        if self.name_subscribers {
            request.extensions_mut().insert(TaskSubscriber(found.url.clone()));
            if let Some(token) = token {
                request.extensions_mut().insert(token);
            }
        }
        Ok(SubmissionBody::replace(request, rewritten))
    }
}

/// A submission's whole body, or the answer for one too large (413) or broken off (400).
async fn read_within(body: Body, limit: usize) -> Result<Bytes, Response<Body>> {
    match body::read_to_limit(body, limit).await {
        Ok(bytes) => Ok(bytes),
        Err(ReadError::TooLarge(_)) => {
            let msg = format!(
                "the request body is larger than {limit} bytes (callback.body_limit), the most runway-proxy \
                 reads from a submission to rewrite its callback_url"
            );
            Err(envelope::error_response(StatusCode::PAYLOAD_TOO_LARGE, &msg))
        }
        Err(ReadError::Failed(err)) => {
            let msg = format!("could not read the request body: {}", body::error_chain(&err));
            Err(envelope::error_response(StatusCode::BAD_REQUEST, &msg))
        }
    }
}
