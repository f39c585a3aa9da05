//! Rewrites `callback_url` in submissions so that webhooks come back through the proxy.
//!
//! [`CallbackRewriter`] reads a submission's JSON body (bounded), checks the subscriber
//! URL before the paid call goes out ([`TargetPolicy`]: http or https, no internal
//! addresses unless allowed, an optional host allow list), and replaces the top-level
//! `callback_url` with `{public_url}/hooks/runway/{token}`, where the token
//! ([`Keyring`]) seals the original URL. Every other byte of the body stays as it was.
//! A body that is not a JSON object gets a 400 envelope, one over the bound a 413, and
//! in both cases nothing is sent upstream. A submission without `callback_url` passes
//! on unchanged, as does every request that is not a submission.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use runway_proxy::callback::{CallbackRewriter, Keyring, TargetPolicy};
//!
//! let keys = Keyring::parse("1:a-secret-of-at-least-thirty-two-bytes").unwrap();
//! let rewriter = CallbackRewriter::new("https://hooks.my-proxy.example", Arc::new(keys))
//!     .policy(TargetPolicy { allow_private: false, allowed_hosts: vec![] })
//!     .body_limit(1024 * 1024);
//! let stack = tower::ServiceBuilder::new().layer(rewriter);
//! # let _ = stack;
//! ```

mod rewrite;
mod target;
mod token;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use tower::{Layer, Service, ServiceExt};

pub use rewrite::{Found, RewriteError, find_callback_url, replace};
pub use target::{Refused, Target, TargetPolicy, unsafe_address};
pub use token::{Keyring, MAX_URL, Route, TokenError, random_secret};

use crate::body::{self, Body, BoxError};
use crate::envelope;
use crate::route::RouteClass;

/// The path prefix webhooks come back on.
pub const HOOK_PATH: &str = "/hooks/runway/";

/// How long a subscriber host may take to resolve when it is checked at submission.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct Shared {
    /// `{public_url}/hooks/runway/`, computed once.
    prefix: String,
    keys: Arc<Keyring>,
    policy: TargetPolicy,
    body_limit: usize,
    resolved: ResolvedCache,
}

/// Applies [`RewriteCallback`]: see the module docs.
#[derive(Clone, Debug)]
pub struct CallbackRewriter {
    shared: Arc<Shared>,
}

impl CallbackRewriter {
    /// Rewrite to `{public_url}/hooks/runway/{token}`, tokens minted with `keys`.
    pub fn new(public_url: &str, keys: Arc<Keyring>) -> Self {
        let prefix = format!("{}{HOOK_PATH}", public_url.trim_end_matches('/'));
        CallbackRewriter {
            shared: Arc::new(Shared {
                prefix,
                keys,
                policy: TargetPolicy::default(),
                body_limit: 1024 * 1024,
                resolved: ResolvedCache::default(),
            }),
        }
    }

    fn update(mut self, change: impl FnOnce(&mut Shared)) -> Self {
        let shared = &*self.shared;
        let mut copy = Shared {
            prefix: shared.prefix.clone(),
            keys: Arc::clone(&shared.keys),
            policy: shared.policy.clone(),
            body_limit: shared.body_limit,
            // A new policy may judge hosts differently: start afresh.
            resolved: ResolvedCache::default(),
        };
        change(&mut copy);
        self.shared = Arc::new(copy);
        self
    }

    /// Which subscriber URLs are accepted.
    pub fn policy(self, policy: TargetPolicy) -> Self {
        self.update(|s| s.policy = policy)
    }

    /// Largest submission body read (default 1 MiB); larger ones get a 413.
    pub fn body_limit(self, limit: usize) -> Self {
        self.update(|s| s.body_limit = limit)
    }
}

impl<S> Layer<S> for CallbackRewriter {
    type Service = RewriteCallback<S>;

    fn layer(&self, inner: S) -> RewriteCallback<S> {
        RewriteCallback {
            inner,
            shared: Some(Arc::clone(&self.shared)),
        }
    }
}

/// Rewrites `callback_url` in submissions, then calls `S`. See the module docs.
#[derive(Clone, Debug)]
pub struct RewriteCallback<S> {
    inner: S,
    /// `None`: rewriting is off and every request passes through.
    shared: Option<Arc<Shared>>,
}

impl<S> RewriteCallback<S> {
    /// A service that rewrites nothing (for a stack with callback rewriting turned off).
    pub fn passthrough(inner: S) -> Self {
        RewriteCallback { inner, shared: None }
    }
}

/// Response future of [`RewriteCallback`].
pub type ResponseFuture<E> = Pin<Box<dyn Future<Output = Result<Response<Body>, E>> + Send>>;

impl<S, B, RB> Service<Request<B>> for RewriteCallback<S>
where
    S: Service<Request<Body>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    RB: http_body::Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        let shared = match &self.shared {
            Some(shared)
                if RouteClass::of(request.method(), request.uri().path()) == RouteClass::Submission =>
            {
                Arc::clone(shared)
            }
            // Not a submission (or rewriting is off): stream it through untouched.
            _ => {
                return Box::pin(async move {
                    let response = inner.oneshot(request.map(body::boxed)).await?;
                    Ok(response.map(body::boxed))
                });
            }
        };
        Box::pin(async move {
            let request = match shared.rewrite(request).await {
                Ok(request) => request,
                Err(refusal) => return Ok(refusal),
            };
            let response = inner.oneshot(request).await?;
            Ok(response.map(body::boxed))
        })
    }
}

impl Shared {
    /// The request with its `callback_url` rewritten, or the error response to send back.
    async fn rewrite<B>(&self, request: Request<B>) -> Result<Request<Body>, Response<Body>>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (mut parts, body) = request.into_parts();
        let too_large = || {
            let msg = format!(
                "the request body is larger than {} bytes, the most runway-proxy reads from a submission",
                self.body_limit
            );
            envelope::error_response(StatusCode::PAYLOAD_TOO_LARGE, &msg)
        };
        if body.size_hint().lower() > self.body_limit as u64 {
            return Err(too_large());
        }
        let bytes = match Limited::new(body, self.body_limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(err) if err.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
            Err(err) => {
                let msg = format!(
                    "could not read the request body: {}",
                    body::error_chain(err.as_ref())
                );
                return Err(envelope::error_response(StatusCode::BAD_REQUEST, &msg));
            }
        };
        let bad_request = |msg: String| envelope::error_response(StatusCode::BAD_REQUEST, &msg);
        let found = match find_callback_url(&bytes) {
            Ok(Some(found)) if !found.url.is_empty() => found,
            // No callback_url (or an empty one, which CometAPI answers itself): unchanged.
            Ok(_) => return Ok(Request::from_parts(parts, body::full(bytes))),
            Err(err) => return Err(bad_request(err.to_string())),
        };
        let target = self
            .policy
            .check(&found.url)
            .map_err(|refused| bad_request(refused.to_string()))?;
        if target.ip.is_none() && !self.policy.allow_private {
            self.check_resolved(&target)
                .await
                .map_err(|refused| bad_request(refused.to_string()))?;
        }
        let url = format!("{}{}", self.prefix, self.keys.mint(&found.url));
        let rewritten = replace(&bytes, found.span, &url);
        // The length changed; hyper sets the new one from the body.
        parts.headers.remove(header::CONTENT_LENGTH);
        Ok(Request::from_parts(parts, body::full(rewritten)))
    }

    /// Refuse a host that resolves to an internal address. A host that doesn't resolve
    /// now is let through: delivery checks again, and a DNS hiccup shouldn't fail a
    /// submission. Verdicts are cached for a short while, so a busy subscriber host costs
    /// one lookup, not one per submission (delivery re-checks every connection anyway).
    async fn check_resolved(&self, target: &Target) -> Result<(), Refused> {
        if let Some(verdict) = self.resolved.get(&target.host) {
            return verdict;
        }
        let default_port = if target.uri.scheme_str() == Some("https") {
            443
        } else {
            80
        };
        let lookup = tokio::net::lookup_host((
            target.host.as_str(),
            target.uri.port_u16().unwrap_or(default_port),
        ));
        let (verdict, ttl) = match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
            Ok(Ok(addrs)) => {
                let mut addrs = addrs;
                let verdict = addrs.try_for_each(|addr| self.policy.check_resolved(addr.ip()));
                (verdict, RESOLVED_TTL)
            }
            Ok(Err(err)) => {
                tracing::debug!(host = %target.host, error = %err, "callback host does not resolve now");
                (Ok(()), UNRESOLVED_TTL)
            }
            Err(_) => (Ok(()), UNRESOLVED_TTL),
        };
        self.resolved.insert(&target.host, verdict.clone(), ttl);
        verdict
    }
}

/// How long a resolved host's verdict is reused.
const RESOLVED_TTL: Duration = Duration::from_secs(60);
/// How long a host that did not resolve is let through without asking again.
const UNRESOLVED_TTL: Duration = Duration::from_secs(5);
/// Most hosts whose verdict is cached.
const RESOLVED_CACHE: usize = 1024;

/// A verdict and when it stops being reused.
type CachedVerdict = (std::time::Instant, Result<(), Refused>);

/// Recent resolution verdicts by host. The lock is held for a lookup or an insert only.
#[derive(Debug, Default)]
struct ResolvedCache {
    entries: std::sync::Mutex<std::collections::HashMap<String, CachedVerdict>>,
}

impl ResolvedCache {
    fn get(&self, host: &str) -> Option<Result<(), Refused>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(host)
            .filter(|(until, _)| *until > std::time::Instant::now())
            .map(|(_, v)| v.clone())
    }

    fn insert(&self, host: &str, verdict: Result<(), Refused>, ttl: Duration) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if entries.len() >= RESOLVED_CACHE {
            entries.retain(|_, (until, _)| *until > now);
            if entries.len() >= RESOLVED_CACHE {
                entries.clear();
            }
        }
        entries.insert(host.to_owned(), (now + ttl, verdict));
    }
}
