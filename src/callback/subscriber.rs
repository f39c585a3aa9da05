//! Which subscriber URLs the proxy will deliver to: the SSRF guard.
//!
//! A submission names the URL that webhooks are relayed to, and the relay will POST there
//! from inside your network. So before the paid call goes out, the URL must be `http` or
//! `https` with a host, and must not point at loopback, private, link-local, CGNAT,
//! multicast, reserved or cloud-metadata addresses (IPv4 and IPv6, IPv4-mapped included),
//! unless private callbacks are explicitly allowed. The resolved addresses are checked
//! again when a webhook is delivered, since DNS can change in between (rebinding).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::Uri;

/// Which subscriber URLs are accepted: by default any public `http(s)` host, no internal
/// address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubscriberPolicy {
    allow_private: bool,
    allowed_hosts: Vec<String>,
}

/// Why a subscriber URL was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("callback_url refused: {0}")]
pub struct Refused(pub String);

/// A subscriber URL that passed the checks, with its parts.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriberUrl {
    /// The URL.
    pub uri: Uri,
    /// Its host, lower case, without brackets or a trailing dot.
    pub host: String,
    /// The host as an IP address, when it is a literal.
    pub ip: Option<IpAddr>,
}

impl SubscriberPolicy {
    /// Allow loopback, private and other internal addresses (for development and tests).
    pub fn allow_private(mut self, allow: bool) -> Self {
        self.allow_private = allow;
        self
    }

    /// Only these hosts (exact, or `*.example.com` for subdomains); empty means any.
    pub fn allowed_hosts<I, H>(mut self, hosts: I) -> Self
    where
        I: IntoIterator<Item = H>,
        H: Into<String>,
    {
        self.allowed_hosts = hosts
            .into_iter()
            .map(|h| h.into().trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        self
    }

    /// Whether internal addresses are allowed.
    pub fn allows_private(&self) -> bool {
        self.allow_private
    }

    /// The host allow list (empty: any host).
    pub fn hosts(&self) -> &[String] {
        &self.allowed_hosts
    }

    /// Check a subscriber URL's form, host and (if literal) address.
    pub fn check(&self, url: &str) -> Result<SubscriberUrl, Refused> {
        let refuse = |why: &str| Err(Refused(why.to_owned()));
        if url.len() > super::token::MAX_URL {
            return refuse("it is longer than 2048 bytes");
        }
        let uri: Uri = match url.parse() {
            Ok(uri) => uri,
            Err(_) => return refuse("it is not a valid URL"),
        };
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => return refuse("only http and https URLs can receive callbacks"),
        }
        let Some(authority) = uri.authority() else {
            return refuse("it has no host");
        };
        if authority.as_str().contains('@') {
            return refuse("it carries credentials before the host");
        }
        let raw_host = authority.host();
        let host = raw_host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if host.is_empty() {
            return refuse("it has no host");
        }
        if host.contains('%') {
            return refuse("its host is percent-encoded");
        }
        if !self.allowed_hosts.is_empty()
            && !self
                .allowed_hosts
                .iter()
                .any(|pattern| host_matches(pattern, &host))
        {
            return Err(Refused(format!("host {host} is not in the callback allow list")));
        }
        let ip = host.parse::<IpAddr>().ok();
        if !self.allow_private {
            if let Some(ip) = ip {
                if let Some(kind) = unsafe_address(ip) {
                    return Err(Refused(format!("{ip} is a {kind} address")));
                }
            } else if looks_numeric(&host) {
                // 0x7f.1, 2130706433, 017700000001: resolvers read these as IPv4 addresses.
                return Err(Refused(format!(
                    "host {host} is an IP address in an unusual notation"
                )));
            } else if host == "localhost" || host.ends_with(".localhost") {
                return Err(Refused(format!("host {host} is a loopback name")));
            } else if host == "metadata.google.internal" || host == "metadata" {
                return Err(Refused(format!("host {host} is a cloud metadata service")));
            }
        }
        Ok(SubscriberUrl { uri, host, ip })
    }

    /// Check the addresses a host resolved to (at delivery time).
    pub fn check_resolved(&self, ip: IpAddr) -> Result<(), Refused> {
        match (self.allow_private, unsafe_address(ip)) {
            (false, Some(kind)) => Err(Refused(format!("the host resolves to {ip}, a {kind} address"))),
            _ => Ok(()),
        }
    }
}

fn host_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.trim().trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(domain) => host.len() > domain.len() + 1 && host.ends_with(&format!(".{domain}")),
        None => pattern == host,
    }
}

fn looks_numeric(host: &str) -> bool {
    host.split('.').all(|part| {
        !part.is_empty()
            && (part.bytes().all(|b| b.is_ascii_digit())
                || part
                    .strip_prefix("0x")
                    .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit())))
    })
}

/// The kind of address that must not receive callbacks, or `None` for a public one.
pub fn unsafe_address(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => unsafe_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return unsafe_v4(v4).map(|_| "IPv4-mapped internal");
            }
            let segments = v6.segments();
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if segments[0] & 0xfe00 == 0xfc00 {
                Some("unique local (private)")
            } else if segments[0] & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if segments[0] == 0x64 && segments[1] == 0xff9b {
                // NAT64 embeds an IPv4 address in the last 32 bits.
                let [.., a, b] = segments;
                let v4 = Ipv4Addr::new((a >> 8) as u8, a as u8, (b >> 8) as u8, b as u8);
                unsafe_v4(v4).map(|_| "NAT64-mapped internal")
            } else if segments[0] == 0x2001 && segments[1] == 0xdb8 {
                Some("documentation")
            } else if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                Some("cloud metadata")
            } else {
                None
            }
        }
    }
}

fn unsafe_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() || a == 0 {
        Some("unspecified")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        // 169.254.169.254 is the metadata service of AWS, GCP and Azure.
        Some(if ip == Ipv4Addr::new(169, 254, 169, 254) {
            "cloud metadata"
        } else {
            "link-local"
        })
    } else if a == 100 && (64..128).contains(&b) {
        Some("carrier-grade NAT")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_broadcast()
        || a >= 240
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (18..20).contains(&b))
    {
        Some("reserved")
    } else if ip.is_documentation() {
        Some("documentation")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict() -> SubscriberPolicy {
        SubscriberPolicy::default()
    }

    #[test]
    fn public_urls_pass() {
        for url in [
            "https://hooks.example.com/runway",
            "http://93.184.216.34:8080/x?y=1",
            "https://[2606:4700::1111]/h",
        ] {
            assert!(strict().check(url).is_ok(), "{url}");
        }
    }

    #[test]
    fn internal_addresses_are_refused() {
        for url in [
            "http://127.0.0.1/",
            "http://127.1.2.3:9000/",
            "http://10.0.0.8/",
            "http://172.16.4.4/",
            "http://192.168.1.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://169.254.1.1/",
            "http://100.64.0.1/",
            "http://0.0.0.0/",
            "http://224.0.0.1/",
            "http://255.255.255.255/",
            "http://[::1]/",
            "http://[::]/",
            "http://[fe80::1]/",
            "http://[fc00::1]/",
            "http://[fd00:ec2::254]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:169.254.169.254]/",
            "http://[64:ff9b::a00:1]/",
            "http://[ff02::1]/",
            "http://localhost:8080/",
            "http://LOCALHOST./",
            "http://api.localhost/",
            "http://metadata.google.internal/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://017700000001/",
        ] {
            let refused = strict().check(url);
            assert!(refused.is_err(), "{url} passed");
        }
    }

    #[test]
    fn malformed_urls_are_refused_with_a_reason() {
        let cases = [
            ("ftp://example.com/", "only http and https"),
            ("/relative/path", "only http and https"),
            ("https://user:pw@example.com/", "credentials"),
            ("not a url", "not a valid URL"),
            ("javascript:alert(1)", "only http and https"),
        ];
        for (url, why) in cases {
            let err = strict().check(url).unwrap_err().to_string();
            assert!(err.contains(why), "{url}: {err}");
        }
    }

    #[test]
    fn private_can_be_allowed_and_hosts_listed() {
        let open = SubscriberPolicy::default().allow_private(true);
        assert!(open.check("http://127.0.0.1:9000/hook").is_ok());
        let listed = SubscriberPolicy::default().allowed_hosts(["*.example.com", "Hooks.io "]);
        assert!(listed.check("https://a.example.com/").is_ok());
        assert!(listed.check("https://hooks.io/").is_ok());
        assert!(listed.check("https://example.com/").is_err());
        assert!(listed.check("https://evil.com/?a.example.com").is_err());
        assert!(listed.check("https://hooks.io.evil.com/").is_err());
    }
}
