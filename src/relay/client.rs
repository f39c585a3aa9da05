//! The delivery client: it connects only where the subscriber check allowed, whatever a
//! host name resolves to by the time of the connection (DNS rebinding).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;

use crate::callback::SubscriberPolicy;
use crate::upstream::{ClientError, tls_client};

/// A resolver that drops internal addresses (unless allowed), so the connection can only
/// go where the check said: the guard against DNS rebinding between check and connect.
#[derive(Clone, Debug)]
pub(super) struct SafeResolver {
    policy: SubscriberPolicy,
}

impl tower::Service<Name> for SafeResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.policy.clone();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let safe: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| policy.check_resolved(a.ip()).is_ok())
                .collect();
            if safe.is_empty() && !addrs.is_empty() {
                return Err(std::io::Error::other(format!(
                    "{name} resolves only to internal addresses"
                )));
            }
            Ok(safe.into_iter())
        })
    }
}

/// The client deliveries are sent with: TLS, a timeout, and only the addresses the
/// subscriber policy allows.
pub(super) type DeliveryClient = Client<HttpsConnector<HttpConnector<SafeResolver>>, Full<Bytes>>;

pub(super) fn delivery_client(
    policy: &SubscriberPolicy,
    timeout: Duration,
) -> Result<DeliveryClient, ClientError> {
    let resolver = SafeResolver {
        policy: policy.clone(),
    };
    tls_client(HttpConnector::new_with_resolver(resolver), timeout)
}
