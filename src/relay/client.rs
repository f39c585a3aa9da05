//! The delivery client: it connects only where the subscriber check allowed, whatever a
//! host name resolves to by the time of the connection (DNS rebinding).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

use crate::callback::SubscriberPolicy;
use crate::upstream::{ClientError, GuardedResolver, tls_client};

/// The client deliveries are sent with: TLS, a timeout, and only the addresses the
/// subscriber policy allows.
pub(super) type DeliveryClient = Client<HttpsConnector<HttpConnector<GuardedResolver>>, Full<Bytes>>;

pub(super) fn delivery_client(
    policy: &SubscriberPolicy,
    timeout: Duration,
) -> Result<DeliveryClient, ClientError> {
    // Only the addresses the subscriber policy allows: the guard against DNS rebinding
    // between the check and the connection.
    let policy = policy.clone();
    let resolver = GuardedResolver::new(move |_, ip| policy.check_resolved(ip).is_ok());
    tls_client(HttpConnector::new_with_resolver(resolver), timeout)
}
