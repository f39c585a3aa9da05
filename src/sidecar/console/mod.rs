//! The web console at `/-/console`: a page, a stylesheet and a script embedded in the
//! binary, over the admin paths' own JSON.
//!
//! The page holds no data. Its script asks the same admin paths a script would
//! (`/-/tasks`, `/-/usage`, `/-/budgets`, `/-/deliveries`, `/-/subscribers`) with the
//! admin token the operator typed once (kept in the tab's `sessionStorage`), and acts
//! through them (`POST /-/deliveries/{id}/replay`, `/-/deliveries/replay`). The only path
//! of its own is `/-/console/samples`: the overview's charts, from a ring of samples of
//! the proxy's metrics ([`Samples`]). So the page itself is served to anyone, and answers
//! nothing until the admin paths do: without the token, a listener that is not loopback
//! shows the login form and nothing else.
//!
//! Every answer carries a strict `Content-Security-Policy`: scripts, styles and requests
//! from the proxy only, no inline code, no frames, no forms sent anywhere. Nothing is
//! fetched from a CDN; the console works offline.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use runway_proxy::metrics::{MetricSet, ProcessMetrics};
//! use runway_proxy::sidecar::Console;
//!
//! let sets: Vec<Arc<dyn MetricSet>> = vec![Arc::new(ProcessMetrics::default())];
//! let console = Console::new(sets.into());
//! console.samples().take();
//! let report = console.samples().report();
//! assert_eq!(report["charts"][0]["id"], "requests");
//! ```

mod samples;

use std::sync::Arc;

use http::{HeaderValue, Method, Response, StatusCode, header};

pub use samples::{SAMPLE_EVERY, Samples};

use crate::body::{self, Body};
use crate::envelope;
use crate::metrics::MetricSet;

/// The console's path; its assets are under it.
pub const CONSOLE_PATH: &str = "/-/console";

/// The path of the overview's samples (an admin path like `/-/deliveries`).
pub const SAMPLES_PATH: &str = "/-/console/samples";

/// What the console's answers allow: only the proxy's own script, style and JSON.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                      connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

const PAGE: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/console.js");
const STYLE: &str = include_str!("assets/console.css");

/// The console: its assets, and the ring of samples behind its charts. Clones share the
/// ring.
#[derive(Clone, Debug)]
pub struct Console {
    samples: Arc<Samples>,
}

impl Console {
    /// A console charting `sets` (the metric sets `/-/metrics` renders).
    pub fn new(sets: Arc<[Arc<dyn MetricSet>]>) -> Self {
        Console {
            samples: Arc::new(Samples::new(sets)),
        }
    }

    /// The ring of samples.
    pub fn samples(&self) -> &Samples {
        &self.samples
    }

    /// Take a sample now and every [`SAMPLE_EVERY`] until `stopped`.
    pub async fn sample(&self, mut stopped: tokio::sync::watch::Receiver<bool>) {
        let mut every = tokio::time::interval(SAMPLE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => self.samples.take(),
                _ = stopped.wait_for(|s| *s) => return,
            }
        }
    }

    /// `GET /-/console/samples`: the overview's charts (the caller checked access).
    pub(super) fn samples_page(&self, method: &Method) -> Response<Body> {
        if method != Method::GET && method != Method::HEAD {
            return envelope::error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "/-/console/samples only answers GET",
            );
        }
        let mut response = envelope::json_response(StatusCode::OK, self.samples.report().to_string());
        guard_headers(&mut response, "no-store");
        response
    }
}

/// `GET /-/console` and its assets: served to anyone, they hold no data.
pub(super) fn asset(method: &Method, path: &str) -> Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        return envelope::error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{path} is the console of runway-proxy and only answers GET"),
        );
    }
    let (content, kind) = match path.strip_prefix(CONSOLE_PATH) {
        Some("" | "/") => (PAGE, "text/html; charset=utf-8"),
        Some("/console.js") => (SCRIPT, "text/javascript; charset=utf-8"),
        Some("/console.css") => (STYLE, "text/css; charset=utf-8"),
        _ => {
            return envelope::error_response(
                StatusCode::NOT_FOUND,
                &format!("{path} is not part of the console (open {CONSOLE_PATH})"),
            );
        }
    };
    let mut response = Response::new(body::full(content));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    // Revalidated each time: a new build's console is never mixed with an old one's script.
    guard_headers(&mut response, "no-cache");
    response
}

/// The headers every console answer carries.
fn guard_headers(response: &mut Response<Body>, cache: &'static str) {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_served_under_a_strict_policy() {
        for (path, kind) in [
            ("/-/console", "text/html"),
            ("/-/console/console.js", "text/javascript"),
            ("/-/console/console.css", "text/css"),
        ] {
            let response = asset(&Method::GET, path);
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            let headers = response.headers();
            assert!(headers[header::CONTENT_TYPE].to_str().unwrap().starts_with(kind));
            let policy = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
            assert!(policy.contains("default-src 'none'") && policy.contains("script-src 'self'"));
        }
        assert_eq!(
            asset(&Method::GET, "/-/console/x.js").status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            asset(&Method::POST, "/-/console").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[test]
    fn the_page_runs_no_inline_code_and_loads_nothing_from_elsewhere() {
        assert!(PAGE.contains(r#"<script src="/-/console/console.js" defer></script>"#));
        assert!(
            !PAGE.contains("<script>") && !PAGE.contains("style="),
            "inline code is refused by the policy"
        );
        for asset in [PAGE, SCRIPT, STYLE] {
            // SVG's namespace is a name, never fetched.
            let asset = asset.replace("http://www.w3.org/2000/svg", "");
            assert!(
                !asset.contains("http://") && !asset.contains("https://"),
                "nothing off the proxy"
            );
        }
    }
}
