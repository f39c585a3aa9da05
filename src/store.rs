//! What the durable stores' traits ([`Outbox`](crate::relay::Outbox),
//! [`IdempotencyStore`](crate::idempotency::IdempotencyStore)) have in common.

use std::future::Future;
use std::pin::Pin;

/// A boxed future, so the stores' traits can be used as `dyn` objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A failure of a store itself (its disk, its connection).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(pub String);
