//! [`RewriteCallbackLayer`]: applies [`RewriteCallback`].

use std::sync::Arc;

use tower::Layer;

use super::resolve::ResolvedCache;
use super::{Callbacks, RewriteCallback};
use crate::context::OnSubmission;

/// Applies [`RewriteCallback`]: see the [module docs](super). Clones share one cache of
/// subscriber-host checks.
#[derive(Clone, Debug)]
pub struct RewriteCallbackLayer {
    shared: Arc<Rewriter>,
}

/// The handler of [`RewriteCallback`]: the callbacks it rewrites by, and the cache of
/// subscriber-host checks. Made by [`RewriteCallbackLayer`].
#[derive(Debug)]
pub struct Rewriter {
    pub(super) callbacks: Callbacks,
    pub(super) resolved: ResolvedCache,
    /// Put each submission's checked subscriber in its extensions ([`TaskSubscriber`](super::TaskSubscriber)).
    pub(super) name_subscribers: bool,
}

impl RewriteCallbackLayer {
    /// Rewrite `callback_url` by `callbacks`.
    pub fn new(callbacks: Callbacks) -> Self {
        RewriteCallbackLayer {
            shared: Arc::new(Rewriter {
                callbacks,
                resolved: ResolvedCache::default(),
                name_subscribers: false,
            }),
        }
    }

    /// Also put each submission's checked subscriber in its request extensions, as a
    /// [`TaskSubscriber`](super::TaskSubscriber), for a layer inside that needs it (the
    /// watch list). Off by default: the extension costs a few allocations per submission.
    pub fn naming_subscribers(self) -> Self {
        RewriteCallbackLayer {
            shared: Arc::new(Rewriter {
                callbacks: self.shared.callbacks.clone(),
                resolved: ResolvedCache::default(),
                name_subscribers: true,
            }),
        }
    }

    /// What the rewrite works by.
    pub fn callbacks(&self) -> &Callbacks {
        &self.shared.callbacks
    }
}

impl<S> Layer<S> for RewriteCallbackLayer {
    type Service = RewriteCallback<S>;

    fn layer(&self, inner: S) -> RewriteCallback<S> {
        OnSubmission::new(inner, Arc::clone(&self.shared))
    }
}
