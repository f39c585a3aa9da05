//! [`RewriteCallbackLayer`]: applies [`RewriteCallback`].

use std::sync::Arc;

use tower::Layer;

use super::resolve::ResolvedCache;
use super::{Callbacks, RewriteCallback};

/// Applies [`RewriteCallback`]: see the [module docs](super). Clones share one cache of
/// subscriber-host checks.
#[derive(Clone, Debug)]
pub struct RewriteCallbackLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
pub(super) struct Shared {
    pub(super) callbacks: Callbacks,
    pub(super) resolved: ResolvedCache,
}

impl RewriteCallbackLayer {
    /// Rewrite `callback_url` by `callbacks`.
    pub fn new(callbacks: Callbacks) -> Self {
        RewriteCallbackLayer {
            shared: Arc::new(Shared {
                callbacks,
                resolved: ResolvedCache::default(),
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
        RewriteCallback::new(inner, Some(Arc::clone(&self.shared)))
    }
}
