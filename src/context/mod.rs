//! One request's context, learned once by the outermost layer and read by every layer
//! inside it: a submission's body, buffered once and parsed once.
//!
//! [`SubmissionContext`] goes outside the other layers of [`RunwayLayer`](crate::RunwayLayer).
//! For a submission it reads the body once, up to the largest bound any inner layer has,
//! and puts a [`SubmissionBody`] in the request's extensions: the bytes (the request's
//! body is the same bytes) and the [`Fields`] the layers need, parsed once, the first
//! time one asks. The idempotency record hashes those bytes, the callback rewrite reads
//! the `callback_url` and puts the rewritten bytes back, the task guard reads the
//! `model`, and the retry layer replays the bytes as they are then; none of them reads or
//! parses the body again. Each still applies its own bound to the buffered length, so a
//! body is refused (or streamed) exactly where it was before.
//!
//! Every layer also works without the context (used alone, or behind a service that
//! changed the body and dropped it): it reads the body itself, as the context would have.
//!
//! Reads and other requests carry nothing: their class is two string comparisons away
//! ([`class_of`]), cheaper than the allocation an extension costs.
//!
//! # Example
//!
//! ```
//! use http::Request;
//! use runway_proxy::body::{self, Body};
//! use runway_proxy::context::{SubmissionBody, SubmissionContextLayer};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let inner = tower::service_fn(|request: Request<Body>| async move {
//!     let body = request.extensions().get::<SubmissionBody>().expect("buffered once");
//!     let model = body.fields().model.clone().unwrap_or_default();
//!     Ok::<_, std::convert::Infallible>(http::Response::new(body::full(model)))
//! });
//! let stack = ServiceBuilder::new()
//!     .layer(SubmissionContextLayer::new(1024 * 1024))
//!     .service(inner);
//! let request = Request::post("http://upstream.test/runway/pro/generate")
//!     .body(body::full(r#"{"model":"gen4_turbo","prompt":"a cat"}"#))
//!     .unwrap();
//! let response = stack.oneshot(request).await.unwrap();
//! # let _ = response;
//! # }
//! ```

mod fields;
mod on_submission;

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use tower::{Layer, ServiceExt};

#[cfg(test)]
pub(crate) use fields::PARSES;
pub use fields::{CallbackUrl, Fields, RewriteError};
pub use on_submission::{BytesBody, Inner, OnSubmission, ResponseFuture, SubmissionHandler};

use crate::body::{self, Body, Bounded, BoxError};
use crate::envelope;
use crate::route::RouteClass;

/// The class of `request`: a submission when the context buffered its body, else read
/// from its method and path.
pub fn class_of<B>(request: &Request<B>) -> RouteClass {
    if request.extensions().get::<SubmissionBody>().is_some() {
        return RouteClass::Submission;
    }
    RouteClass::of(request.method(), request.uri().path())
}

/// A submission's body, buffered once (a request extension): its bytes, which are also
/// the request's body, and its [`Fields`], parsed the first time they are asked for.
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct SubmissionBody {
    bytes: Bytes,
    fields: Arc<OnceLock<Fields>>,
}

impl SubmissionBody {
    /// The body `bytes`, not parsed yet.
    pub fn new(bytes: Bytes) -> SubmissionBody {
        SubmissionBody {
            bytes,
            fields: Arc::new(OnceLock::new()),
        }
    }

    /// The bytes the request carries now.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// What the layers read of the body as the client sent it (parsed on first use).
    pub fn fields(&self) -> &Fields {
        self.fields.get_or_init(|| Fields::parse(&self.bytes))
    }

    /// The buffered body of `request`, if the context buffered it and it is at most
    /// `limit` bytes (a layer's own bound).
    pub fn of<B>(request: &Request<B>, limit: usize) -> Option<&SubmissionBody> {
        request
            .extensions()
            .get::<SubmissionBody>()
            .filter(|buffered| buffered.bytes.len() <= limit)
    }

    /// `request` with its body replaced by `bytes` (a rewrite), and the context kept in
    /// step: the fields still describe the body the client sent.
    pub fn replace(mut request: Request<Body>, bytes: Bytes) -> Request<Body> {
        let fields = match request.extensions_mut().remove::<SubmissionBody>() {
            Some(buffered) => {
                // Parsed before the bytes go, so they describe what the client sent.
                buffered.fields();
                buffered.fields
            }
            None => Arc::new(OnceLock::new()),
        };
        let buffered = SubmissionBody {
            bytes: bytes.clone(),
            fields,
        };
        request.extensions_mut().insert(buffered);
        *request.body_mut() = body::full(bytes);
        request
    }
}

/// Applies [`SubmissionContext`].
#[derive(Clone, Debug)]
pub struct SubmissionContextLayer {
    buffering: Arc<Buffering>,
}

/// The handler of [`SubmissionContext`]: buffers submissions of at most `limit` bytes.
#[derive(Debug)]
pub struct Buffering {
    limit: usize,
}

impl SubmissionContextLayer {
    /// Buffer submissions of at most `limit` bytes (the largest bound of the layers
    /// inside); a larger one streams on, as each layer would have let it.
    pub fn new(limit: usize) -> Self {
        SubmissionContextLayer {
            buffering: Arc::new(Buffering { limit }),
        }
    }

    /// How much of a submission it buffers.
    pub fn limit(&self) -> usize {
        self.buffering.limit
    }
}

impl<S> Layer<S> for SubmissionContextLayer {
    type Service = SubmissionContext<S>;

    fn layer(&self, inner: S) -> SubmissionContext<S> {
        OnSubmission::new(inner, Arc::clone(&self.buffering))
    }
}

/// Buffers a submission's body once and puts it in the request's extensions for the
/// layers inside. See the [module docs](self).
pub type SubmissionContext<S> = OnSubmission<S, Buffering>;

impl SubmissionHandler for Buffering {
    type Ticket = ();

    fn take<B>(&self, request: &Request<B>) -> Option<()> {
        let buffered = request.extensions().get::<SubmissionBody>().is_some();
        (!buffered && RouteClass::of(request.method(), request.uri().path()) == RouteClass::Submission)
            .then_some(())
    }

    async fn handle<S: Inner<RB>, RB: BytesBody>(
        self: Arc<Self>,
        (): (),
        inner: S,
        request: Request<Body>,
    ) -> Result<Response<Body>, S::Error> {
        let request = match buffer(request, self.limit).await {
            Ok(request) => request,
            Err(refusal) => return Ok(refusal),
        };
        Ok(inner.oneshot(request).await?.map(body::boxed))
    }
}

/// `request` with its body read up to `limit`: whole, it carries a [`SubmissionBody`];
/// larger, it streams on unchanged. A body that breaks off is answered 400 here, with
/// nothing sent.
async fn buffer<B>(request: Request<B>, limit: usize) -> Result<Request<Body>, Response<Body>>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = request.into_parts();
    match body::read_bounded(body::boxed(body), limit).await {
        Ok(Bounded::Whole(bytes)) => {
            parts.extensions.insert(SubmissionBody::new(bytes.clone()));
            Ok(Request::from_parts(parts, body::full(bytes)))
        }
        Ok(Bounded::Partial(body)) => Ok(Request::from_parts(parts, body)),
        Err(err) => {
            let msg = format!("could not read the request body: {}", body::error_chain(&err));
            Err(envelope::error_response_for(
                parts.uri.path(),
                StatusCode::BAD_REQUEST,
                &msg,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::BodyExt;

    use super::*;

    /// Answers with what the context gave it: the buffered length and the model.
    async fn seen(request: Request<Body>) -> Result<Response<Body>, Infallible> {
        let class = class_of(&request);
        let text = match request.extensions().get::<SubmissionBody>() {
            Some(buffered) => format!(
                "{} {} {:?}",
                class.as_str(),
                buffered.bytes().len(),
                buffered.fields().model
            ),
            None => format!("{} none", class.as_str()),
        };
        let body = request.into_body().collect().await.map(|b| b.to_bytes().len());
        Ok(Response::new(body::full(format!(
            "{text} body={}",
            body.unwrap_or(0)
        ))))
    }

    async fn call(path: &str, bytes: &'static str, limit: usize) -> String {
        let service = SubmissionContextLayer::new(limit).layer(tower::service_fn(seen));
        let request = Request::post(format!("http://upstream.test{path}"))
            .body(body::full(bytes))
            .unwrap();
        let response = service.oneshot(request).await.unwrap();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_submission_is_buffered_once_and_its_fields_parsed_for_the_layers_inside() {
        let body = r#"{"model":"gen4","prompt":"a cat"}"#;
        assert_eq!(
            call("/runway/pro/generate", body, 1024).await,
            r#"submission 33 Some("gen4") body=33"#
        );
        // Larger than the bound: streamed on whole, nothing buffered.
        assert_eq!(
            call("/runway/pro/generate", body, 8).await,
            "submission none body=33"
        );
        // Reads are not buffered.
        assert_eq!(
            call("/runway/feed", r#"{"task_id":"t"}"#, 1024).await,
            "read none body=15"
        );
    }

    #[test]
    fn a_rewrite_keeps_the_fields_of_what_the_client_sent() {
        let mut request = Request::post("http://upstream.test/runway/pro/generate")
            .body(body::full("{}"))
            .unwrap();
        let sent = Bytes::from_static(br#"{"model":"gen4","callback_url":"https://a.example/h"}"#);
        request.extensions_mut().insert(SubmissionBody::new(sent));
        let rewritten = Bytes::from_static(br#"{"model":"gen4","callback_url":"https://proxy/hooks/x"}"#);
        let request = SubmissionBody::replace(request, rewritten.clone());
        let buffered = SubmissionBody::of(&request, usize::MAX).unwrap();
        assert_eq!(buffered.bytes(), &rewritten);
        let url = buffered.fields().callback_url.clone().unwrap().unwrap().url;
        assert_eq!(url, "https://a.example/h");
        assert!(
            SubmissionBody::of(&request, 8).is_none(),
            "over a layer's own bound"
        );
    }
}
