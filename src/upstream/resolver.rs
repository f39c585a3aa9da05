//! A resolver that keeps only the addresses a guard allows: the connection can only go
//! where the check before it said, whatever the name resolves to by then (DNS rebinding).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;

/// Whether a connection to `host` may use address `ip`.
type Allows = dyn Fn(&str, IpAddr) -> bool + Send + Sync;

/// Resolves with the system resolver, then drops the addresses `allows` refuses; a name
/// with nothing left fails to resolve.
#[derive(Clone)]
pub(crate) struct GuardedResolver {
    allows: Arc<Allows>,
}

impl std::fmt::Debug for GuardedResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedResolver").finish_non_exhaustive()
    }
}

impl GuardedResolver {
    /// Keep the addresses for which `allows(host, ip)` holds.
    pub(crate) fn new(allows: impl Fn(&str, IpAddr) -> bool + Send + Sync + 'static) -> Self {
        GuardedResolver {
            allows: Arc::new(allows),
        }
    }
}

impl tower::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allows = Arc::clone(&self.allows);
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let kept: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| allows(name.as_str(), a.ip()))
                .collect();
            if kept.is_empty() && !addrs.is_empty() {
                return Err(std::io::Error::other(format!(
                    "{name} resolves only to internal addresses"
                )));
            }
            Ok(kept.into_iter())
        })
    }
}
