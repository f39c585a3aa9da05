//! What happened when the upstream gave no answer.

use std::time::Duration;

use http::{Response, StatusCode};

use crate::body::{self, Body, BoxError};
use crate::duration;
use crate::envelope;

/// Why the proxy could not get a response from the upstream.
///
/// The variant answers the question a retry of a paid submission turns on: was anything
/// sent? Only [`Connect`](UpstreamError::Connect) proves it was not.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be opened: nothing was sent, so a retry is always safe.
    #[error("upstream connect failed: {}", cause(.0.as_ref()))]
    Connect(#[source] BoxError),
    /// No answer in time: the request may have been received and acted on.
    #[error("upstream timed out after {}", duration::format(*.0))]
    Timeout(Duration),
    /// The exchange failed after the request was (at least partly) written: the upstream
    /// may have received and acted on it.
    #[error("upstream request failed: {}", cause(.0.as_ref()))]
    Request(#[source] BoxError),
}

/// The chain of causes without hyper-util's generic outer message
/// ("client error (Connect)"), which says nothing the variant doesn't.
fn cause(err: &(dyn std::error::Error + 'static)) -> String {
    body::error_chain(err.source().unwrap_or(err))
}

/// A response body that broke off while it was being read.
#[derive(Debug, thiserror::Error)]
#[error("the response body failed: {}", body::error_chain(.0))]
struct ResponseBodyFailed(#[source] body::BodyError);

impl UpstreamError {
    /// Classify any error from the service below (a [`Forward`](super::Forward), a bare
    /// hyper-util client, or anything else), finding an `UpstreamError` or a hyper-util
    /// client error anywhere in its source chain. An error it can't place counts as
    /// [`Request`](UpstreamError::Request): the safe assumption is that something was sent.
    pub fn from_service_error(err: BoxError) -> UpstreamError {
        let err = match err.downcast::<UpstreamError>() {
            Ok(upstream) => return *upstream,
            Err(other) => other,
        };
        let mut connect = None;
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err.as_ref());
        while let Some(e) = source {
            if let Some(upstream) = e.downcast_ref::<UpstreamError>() {
                connect = Some(!upstream.may_have_been_sent());
                break;
            }
            if let Some(client) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
                connect = Some(client.is_connect());
                break;
            }
            source = e.source();
        }
        if connect == Some(true) {
            UpstreamError::Connect(err)
        } else {
            UpstreamError::Request(err)
        }
    }

    /// The response body failed while it was read: the request was sent.
    pub fn response_body(err: body::BodyError) -> UpstreamError {
        UpstreamError::Request(Box::new(ResponseBodyFailed(err)))
    }

    /// The HTTP status a client should see for this failure.
    pub fn status(&self) -> StatusCode {
        match self {
            UpstreamError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            UpstreamError::Connect(_) | UpstreamError::Request(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// Every [`kind`](Self::kind).
    pub const KINDS: [&'static str; 3] = ["connect", "timeout", "request"];

    /// The failure's kind, for logs and metrics (one of [`KINDS`](Self::KINDS)).
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "connect",
            UpstreamError::Timeout(_) => "timeout",
            UpstreamError::Request(_) => "request",
        }
    }

    /// Whether any part of the request may have reached the upstream.
    pub fn may_have_been_sent(&self) -> bool {
        !matches!(self, UpstreamError::Connect(_))
    }

    /// The error envelope response for this failure.
    pub fn to_response(&self) -> Response<Body> {
        envelope::error_response(self.status(), &self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("wrapped")]
    struct Wrapped(#[source] UpstreamError);

    #[test]
    fn finds_the_upstream_error_anywhere_in_the_chain() {
        let direct: BoxError = Box::new(UpstreamError::Timeout(Duration::from_secs(3)));
        let found = UpstreamError::from_service_error(direct);
        assert!(matches!(found, UpstreamError::Timeout(_)));
        assert_eq!(found.to_string(), "upstream timed out after 3s");

        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let wrapped: BoxError = Box::new(Wrapped(UpstreamError::Connect(Box::new(refused))));
        let found = UpstreamError::from_service_error(wrapped);
        assert!(!found.may_have_been_sent(), "a connect failure deep in the chain");

        let unknown: BoxError = "something else".into();
        let found = UpstreamError::from_service_error(unknown);
        assert!(
            found.may_have_been_sent(),
            "unknown errors may have sent the request"
        );
        assert_eq!(found.kind(), "request");
    }
}
