//! [`Idempotent`], the service: look the key up, then send, replay or refuse.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use ring::digest;
use tower::{Service, ServiceExt};

use super::{Begin, Claim, Finished, IDEMPOTENCY_KEY, Idempotency, REPLAYED, StoredAnswer};
use crate::body::{self, Body, Bounded, BoxError, ReadError};
use crate::context::{self, BytesBody, Inner, OnSubmission, SubmissionBody, SubmissionHandler};
use crate::envelope;
use crate::retry::{OUTCOME_UNKNOWN, RetryOutcome};
use crate::route::RouteClass;

/// Honours `Idempotency-Key` on submissions, then calls `S`. See the [module docs](super).
pub type Idempotent<S> = OnSubmission<S, Idempotency>;

impl SubmissionHandler for Idempotency {
    type Ticket = ();

    fn take<B>(&self, request: &Request<B>) -> Option<()> {
        // The header first: most requests stop there.
        let keyed = request.headers().contains_key(IDEMPOTENCY_KEY)
            && context::class_of(request) == RouteClass::Submission;
        keyed.then_some(())
    }

    async fn handle<S: Inner<RB>, RB: BytesBody>(
        self: Arc<Self>,
        (): (),
        inner: S,
        request: Request<Body>,
    ) -> Result<Response<Body>, S::Error> {
        self.submit(inner, request).await
    }
}

impl Idempotency {
    async fn submit<S, B, RB>(&self, inner: S, request: Request<B>) -> Result<Response<Body>, S::Error>
    where
        S: Service<Request<Body>, Response = Response<RB>>,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
        RB: http_body::Body<Data = Bytes> + Send + 'static,
        RB::Error: Into<BoxError>,
    {
        let path = request.uri().path().to_owned();
        let refuse = |status: StatusCode, msg: &str, retry: bool| {
            let mut response = envelope::error_response_for(&path, status, msg);
            envelope::should_retry(&mut response, retry);
            if retry {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            response
        };
        let Some(key) = record_key(&request) else {
            let msg = "Idempotency-Key must be 1 to 255 visible ASCII characters";
            return Ok(refuse(StatusCode::BAD_REQUEST, msg, false));
        };
        let limit = self.settings.body_limit;
        let (parts, bytes, body) = match SubmissionBody::of(&request, limit) {
            // Buffered by the context: hashed as it is, and sent on as it is.
            Some(buffered) => {
                let bytes = buffered.bytes().clone();
                let (parts, body) = request.into_parts();
                (parts, bytes, body::boxed(body))
            }
            None => {
                let (mut parts, body) = request.into_parts();
                match body::read_to_limit(body, limit).await {
                    Ok(bytes) => {
                        // Buffered here for the layers inside, as the context would have.
                        parts.extensions.insert(SubmissionBody::new(bytes.clone()));
                        (parts, bytes.clone(), body::full(bytes))
                    }
                    Err(ReadError::TooLarge(_)) => {
                        let msg = format!(
                            "a submission with an Idempotency-Key is hashed whole, and this body is larger than {limit} bytes"
                        );
                        return Ok(refuse(StatusCode::PAYLOAD_TOO_LARGE, &msg, false));
                    }
                    Err(ReadError::Failed(err)) => {
                        let msg = format!("could not read the request body: {}", body::error_chain(&err));
                        return Ok(refuse(StatusCode::BAD_REQUEST, &msg, false));
                    }
                }
            }
        };
        let fingerprint = fingerprint(&parts, &bytes);
        let settings = &self.settings;
        let begun = self
            .store
            .begin(Claim::new(key.clone(), fingerprint, settings.lease, settings.ttl))
            .await;
        match begun {
            Ok(Begin::Started) => {}
            Ok(Begin::Replay(answer)) => return Ok(replay(answer)),
            Ok(Begin::InFlight) => {
                let msg = "a submission with this Idempotency-Key is still in flight; try again shortly";
                return Ok(refuse(StatusCode::CONFLICT, msg, true));
            }
            Ok(Begin::Mismatch) => {
                let msg = "this Idempotency-Key was used with a different request body";
                return Ok(refuse(StatusCode::UNPROCESSABLE_ENTITY, msg, false));
            }
            Ok(Begin::Unknown) => {
                let msg = format!("{OUTCOME_UNKNOWN} (the first submission with this Idempotency-Key)");
                let mut response = refuse(StatusCode::GATEWAY_TIMEOUT, &msg, false);
                response
                    .headers_mut()
                    .insert(REPLAYED, HeaderValue::from_static("true"));
                return Ok(response);
            }
            Err(err) => {
                tracing::error!(error = %err, "idempotency record unavailable; submission not sent");
                let msg = "the Idempotency-Key record is unavailable; nothing was sent, try again";
                return Ok(refuse(StatusCode::SERVICE_UNAVAILABLE, msg, true));
            }
        }
        let response = match inner.oneshot(Request::from_parts(parts, body)).await {
            Ok(response) => response,
            Err(err) => {
                // No answer at all: the submission may have reached the upstream.
                self.finish(&key, Finished::Unknown).await;
                return Err(err);
            }
        };
        Ok(self.record(key, response).await)
    }

    /// Record how the submission ended, by what the retry layer says of it.
    async fn record<RB>(&self, key: String, response: Response<RB>) -> Response<Body>
    where
        RB: http_body::Body<Data = Bytes> + Send + 'static,
        RB::Error: Into<BoxError>,
    {
        let response = response.map(body::boxed);
        match response.extensions().get::<RetryOutcome>().copied() {
            Some(RetryOutcome::Success | RetryOutcome::Fail) => {}
            Some(RetryOutcome::OutcomeUnknown) => {
                self.finish(&key, Finished::Unknown).await;
                return response;
            }
            // Proven not created (nothing sent, refused before sending, or the upstream
            // said "not accepted" until the proxy stopped asking): the key is free again.
            _ => {
                if let Err(err) = self.store.release(key).await {
                    tracing::warn!(error = %err, "could not release an idempotency key");
                }
                return response;
            }
        }
        let (parts, body) = response.into_parts();
        match body::read_bounded(body, self.settings.answer_limit).await {
            Ok(Bounded::Whole(bytes)) => {
                let answer = StoredAnswer {
                    status: parts.status.as_u16(),
                    content_type: parts
                        .headers
                        .get(header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned),
                    body: bytes.clone(),
                };
                self.finish(&key, Finished::Answer(answer)).await;
                Response::from_parts(parts, body::full(bytes))
            }
            Ok(Bounded::Partial(body)) => {
                self.finish(&key, Finished::Unknown).await;
                Response::from_parts(parts, body)
            }
            Err(err) => {
                self.finish(&key, Finished::Unknown).await;
                let msg = format!(
                    "{OUTCOME_UNKNOWN} (the answer broke off: {})",
                    body::error_chain(&err)
                );
                envelope::error_response(StatusCode::GATEWAY_TIMEOUT, &msg)
            }
        }
    }

    async fn finish(&self, key: &str, finished: Finished) {
        if let Err(err) = self.store.finish(key.to_owned(), finished).await {
            // The record stays in flight until its lease ends, then reads as unknown:
            // a repeat is refused rather than sent twice.
            tracing::error!(error = %err, "could not record an idempotent submission's outcome");
        }
    }
}

/// The record's key: the client's API key and its Idempotency-Key, hashed together (a
/// key is scoped to one API key; neither is stored). `None` for a malformed key.
fn record_key<B>(request: &Request<B>) -> Option<String> {
    let key = request.headers().get(IDEMPOTENCY_KEY)?.as_bytes();
    let valid = !key.is_empty() && key.len() <= 255 && key.iter().all(|b| b.is_ascii_graphic());
    if !valid {
        return None;
    }
    let api_key = request
        .headers()
        .get(header::AUTHORIZATION)
        .map_or(&b""[..], HeaderValue::as_bytes);
    let mut context = digest::Context::new(&digest::SHA256);
    context.update(api_key);
    context.update(b"\0");
    context.update(key);
    Some(hex(context.finish().as_ref()))
}

/// What makes two submissions the same: method, path and body.
fn fingerprint(parts: &http::request::Parts, body: &[u8]) -> String {
    let mut context = digest::Context::new(&digest::SHA256);
    context.update(parts.method.as_str().as_bytes());
    context.update(b" ");
    context.update(parts.uri.path().as_bytes());
    context.update(b"\n");
    context.update(body);
    hex(context.finish().as_ref())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

fn replay(answer: StoredAnswer) -> Response<Body> {
    let mut response = Response::new(body::full(answer.body));
    *response.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    if let Some(content_type) = answer.content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
        response.headers_mut().insert(header::CONTENT_TYPE, content_type);
    }
    response
        .headers_mut()
        .insert(REPLAYED, HeaderValue::from_static("true"));
    response
}
