//! Where outputs may be downloaded from: an allow list of hosts, the SSRF guard, and a
//! client that connects only where the guard allowed.
//!
//! An output URL comes from the upstream (a callback anyone holding a hook URL could
//! forge, or a feed answer), and the proxy fetches it from inside your network. So a
//! download goes only to a host on the list (`*.example.com` for subdomains), and never to
//! an internal address (loopback, private, link-local, metadata, ...) unless that exact
//! host is on the list: a wildcard never lets an internal address through, and neither
//! does a redirect. Addresses are checked again when the connection is made, since DNS can
//! change between the check and the connection.

use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

use super::ArchiveError;
use crate::callback::{SubscriberPolicy, unsafe_address};
use crate::upstream::{GuardedResolver, tls_client};
use bytes::Bytes;
use http_body_util::Empty;

use super::DEFAULT_HOSTS;

/// The hosts outputs may be downloaded from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceHosts {
    patterns: Arc<[String]>,
}

impl Default for SourceHosts {
    fn default() -> Self {
        SourceHosts::new(DEFAULT_HOSTS.iter().copied())
    }
}

impl SourceHosts {
    /// These hosts (exact, or `*.example.com` for subdomains); an internal address is
    /// allowed only for a host listed exactly.
    pub fn new<I, H>(hosts: I) -> Self
    where
        I: IntoIterator<Item = H>,
        H: AsRef<str>,
    {
        let patterns: Vec<String> = hosts
            .into_iter()
            .map(|h| h.as_ref().trim().trim_end_matches('.').to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        SourceHosts {
            patterns: patterns.into(),
        }
    }

    /// The patterns, as given.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Whether `host` is listed exactly (not through a wildcard).
    fn listed_exactly(&self, host: &str) -> bool {
        self.patterns.iter().any(|pattern| pattern == host)
    }

    /// Check a source URL before it is fetched: `http(s)`, a host on the list, and no
    /// internal address unless that host is listed exactly.
    pub fn check(&self, url: &str) -> Result<Uri, ArchiveError> {
        let refused = |why: String| ArchiveError::Refused(format!("{}: {why}", redact(url)));
        // The subscriber checks read the URL's form (scheme, host, credentials, unusual
        // notations) and its literal or well-known internal hosts.
        let checked = SubscriberPolicy::default()
            .allow_private(true)
            .check(url)
            .map_err(|refusal| refused(refusal.0))?;
        if !self
            .patterns
            .iter()
            .any(|pattern| matches(pattern, &checked.host))
        {
            return Err(refused(format!("host {} is not in archive.hosts", checked.host)));
        }
        if self.listed_exactly(&checked.host) {
            return Ok(checked.uri);
        }
        SubscriberPolicy::default()
            .check(url)
            .map(|checked| checked.uri)
            .map_err(|refusal| refused(refusal.0))
    }

    /// Whether a connection to `host` may reach internal addresses.
    fn internal_allowed(&self, host: &str) -> bool {
        self.listed_exactly(&host.trim_end_matches('.').to_ascii_lowercase())
    }
}

/// Whether `host` matches `pattern`: equal, or a subdomain of `*.domain`.
fn matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(domain) => host
            .strip_suffix(domain)
            .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
        None => pattern == host,
    }
}

/// A URL without its query string (signed CDN URLs carry their signature there).
pub(super) fn redact(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

/// The client outputs are downloaded with.
pub(super) type SourceClient = Client<HttpsConnector<HttpConnector<GuardedResolver>>, Empty<Bytes>>;

pub(super) fn source_client(
    hosts: &SourceHosts,
    connect_timeout: Duration,
) -> Result<SourceClient, ArchiveError> {
    // Internal addresses only for a host listed exactly, checked again at each connection.
    let hosts = hosts.clone();
    let resolver =
        GuardedResolver::new(move |host, ip| hosts.internal_allowed(host) || unsafe_address(ip).is_none());
    tls_client(HttpConnector::new_with_resolver(resolver), connect_timeout)
        .map_err(|e| ArchiveError::Setup(format!("cannot build the download client: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_hosts_and_internal_addresses_only_when_listed_exactly() {
        let hosts = SourceHosts::new([
            "cdn.example.com",
            "*.media.example",
            "127.0.0.1",
            "files.internal",
        ]);
        for allowed in [
            "https://cdn.example.com/v/1.mp4",
            "https://a.media.example/x.png?sig=1",
            "http://127.0.0.1:8090/cdn/video/t.mp4",
            "https://files.internal/x.mp4",
        ] {
            assert!(hosts.check(allowed).is_ok(), "{allowed}");
        }
        for refused in [
            "https://evil.example.com/x.mp4",
            "https://media.example/x.mp4",
            "http://127.0.0.2/x.mp4",
            "http://[::1]/x.mp4",
            "http://169.254.169.254/latest/meta-data",
            "ftp://cdn.example.com/x.mp4",
            "https://user:pass@cdn.example.com/x.mp4",
            "not a url",
        ] {
            assert!(
                matches!(hosts.check(refused), Err(ArchiveError::Refused(_))),
                "{refused}"
            );
        }
        // A wildcard never lets an internal literal through.
        let wide = SourceHosts::new(["*.example.com"]);
        assert!(
            wide.check("http://10.0.0.1.example.com/x").is_ok(),
            "a name, checked when it resolves"
        );
        assert!(!wide.internal_allowed("cdn.example.com"));
        assert!(hosts.internal_allowed("files.internal"));
        assert!(hosts.internal_allowed("FILES.internal."));
        // The query (a signature) stays out of errors.
        let error = hosts
            .check("https://evil.example/x.mp4?X-Amz-Signature=secret")
            .unwrap_err();
        assert!(!error.to_string().contains("secret"), "{error}");
    }

    #[test]
    fn default_hosts_are_cometapi_and_runway_cdns() {
        let hosts = SourceHosts::default();
        assert!(
            hosts
                .check("https://runwaycdn.cometapi.com/attachments/video/runway/20241011/x.mp4")
                .is_ok()
        );
        assert!(
            hosts
                .check("https://dnznrvs05pmza.cloudfront.net/x.mp4?Expires=1")
                .is_ok()
        );
        assert!(hosts.check("https://example.com/x.mp4").is_err());
    }
}
