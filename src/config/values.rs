//! Reading (and writing back) the values only the top-level settings hold: addresses,
//! the upstream's URL, threads, the data directory, secrets.

use std::path::PathBuf;

use http::Uri;

use crate::relay::WebhookSigner;
use crate::settings::{Secret, ValueError, parse};

fn form(message: String) -> ValueError {
    ValueError::Form(message)
}

/// An address to listen on, as every `*listen` setting reads it: see [`socket_addr`].
pub(super) fn listen_address(raw: &str) -> Result<std::net::SocketAddr, ValueError> {
    socket_addr(raw, "127.0.0.1:8080")
}

/// An address to listen on: `127.0.0.1:8080`, `[::1]:8080`, or a host name with a port
/// (`localhost:8080`), resolved once, at start. A name with IPv4 and IPv6 addresses
/// listens on its first IPv4 one, where `localhost` clients usually connect.
pub(super) fn socket_addr(raw: &str, example: &str) -> Result<std::net::SocketAddr, ValueError> {
    use std::net::ToSocketAddrs as _;
    let raw = raw.trim();
    if let Ok(addr) = raw.parse() {
        return Ok(addr);
    }
    let not_an_address = || {
        form(format!(
            "{raw:?} is not a socket address like {example} or localhost:8080"
        ))
    };
    let Some((host, port)) = raw.rsplit_once(':') else {
        return Err(not_an_address());
    };
    let fine = !host.is_empty()
        && port.parse::<u16>().is_ok()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !fine {
        return Err(not_an_address());
    }
    let resolved: Vec<std::net::SocketAddr> = raw
        .to_socket_addrs()
        .map_err(|err| form(format!("{raw:?}: the host {host} does not resolve ({err})")))?
        .collect();
    resolved
        .iter()
        .find(|addr| addr.is_ipv4())
        .or_else(|| resolved.first())
        .copied()
        .ok_or_else(|| form(format!("{raw:?}: the host {host} has no address")))
}

/// An `http://` or `https://` base URL with a host, like `https://api.cometapi.com`.
pub(super) fn base_url(raw: &str) -> Result<Uri, ValueError> {
    let expected = || {
        form(format!(
            "{raw:?} is not an http(s) base URL like https://api.cometapi.com"
        ))
    };
    let uri: Uri = raw.parse().map_err(|_| expected())?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some_and(|h| !h.is_empty()) => {}
        _ => return Err(expected()),
    }
    if uri.query().is_some() {
        return Err(form(format!("{raw:?} must not have a query string")));
    }
    Ok(uri)
}

/// A secret, or none (`none` or empty).
pub(super) fn optional_secret(raw: &str) -> Result<Option<Secret>, ValueError> {
    Ok(parse::optional_text(raw)?.map(Secret::new))
}

/// A secret with no fallback: `(set)` or `none`.
pub(super) fn show_secret(secret: &Option<Secret>) -> String {
    match secret {
        Some(_) => "(set)".to_owned(),
        None => "none".to_owned(),
    }
}

/// Serving threads: a count, or `auto` (or 0), one per core.
pub(super) fn threads(raw: &str) -> Result<usize, ValueError> {
    match raw.trim() {
        "auto" | "0" => Ok(0),
        n => parse::count(n),
    }
}

pub(super) fn show_threads(threads: &usize) -> String {
    match threads {
        0 => "auto".to_owned(),
        n => n.to_string(),
    }
}

/// The upstream's base URL, as the file writes it (without the root path's slash).
pub(super) fn show_upstream(upstream: &Uri) -> String {
    upstream.to_string().trim_end_matches('/').to_owned()
}

/// The base URL webhooks come to, or `auto`; a path prefix is fine: webhooks come to
/// `{public_url}/hooks/runway/...`.
pub(super) fn public_url(raw: &str) -> Result<Option<String>, ValueError> {
    match raw.trim() {
        "" | "auto" => Ok(None),
        url => {
            base_url(url)?;
            Ok(Some(url.trim_end_matches('/').to_owned()))
        }
    }
}

pub(super) fn show_public_url(url: &Option<String>) -> String {
    url.clone().unwrap_or_else(|| "auto".to_owned())
}

/// A `whsec_` secret, or `generated`; checked here so a bad secret stops the start, never
/// the first delivery.
pub(super) fn webhook_secret(raw: &str) -> Result<Option<Secret>, ValueError> {
    match raw.trim() {
        "" | "generated" => Ok(None),
        secret => {
            WebhookSigner::from_secret(secret)?;
            Ok(Some(Secret::new(secret)))
        }
    }
}

pub(super) fn data_dir(raw: &str) -> Result<PathBuf, ValueError> {
    if raw.trim().is_empty() {
        return Err(ValueError::Form("the data directory must not be empty".into()));
    }
    Ok(raw.into())
}

pub(super) fn show_data_dir(dir: &std::path::Path) -> String {
    dir.display().to_string()
}
