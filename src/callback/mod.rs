//! Rewrites `callback_url` in submissions so that webhooks come back through the proxy.
//!
//! [`RewriteCallback`] (made by [`RewriteCallbackLayer`]) reads a submission's JSON body
//! (bounded), checks the subscriber URL before the paid call goes out
//! ([`SubscriberPolicy`]: http or https, no internal addresses unless allowed, an
//! optional host allow list), and replaces the top-level `callback_url` with
//! `{public_url}/hooks/runway/{token}`, where the token ([`Keyring`]) seals the original
//! URL. Every other byte of the body stays as it was. A body that is not a JSON object
//! gets a 400 envelope, one over the bound a 413, and in both cases nothing is sent
//! upstream. A submission without `callback_url` passes on unchanged, as does every
//! request that is not a submission.
//!
//! [`Callbacks`] holds what the rewrite and the [relay](crate::relay) must agree on (the
//! public URL, the token keys, the subscriber policy and the body limit). Both are built
//! from the same value, so the policy checked at submission is the one checked again at
//! delivery.
//!
//! # Example
//!
//! ```
//! use runway_proxy::callback::{Callbacks, Keyring, RewriteCallbackLayer, SubscriberPolicy};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let keys: Keyring = "1:a-secret-of-at-least-thirty-two-bytes".parse()?;
//! let callbacks = Callbacks::new("https://hooks.my-proxy.example", keys)?
//!     .with_policy(SubscriberPolicy::default().allowed_hosts(["*.my-app.example"]))
//!     .with_body_limit(1024 * 1024);
//! let stack = tower::ServiceBuilder::new().layer(RewriteCallbackLayer::new(callbacks));
//! # let _ = stack;
//! # Ok(())
//! # }
//! ```

mod layer;
mod resolve;
mod service;
mod subscriber;
mod token;

use std::sync::Arc;
use std::time::Duration;

use crate::settings::{
    InvalidSetting, Live, Secret, ValueError, at_least_one_byte, longer_than_zero, parse, settings, show,
};

pub use crate::context::ResponseFuture;
pub use crate::context::{CallbackUrl, RewriteError};
pub use layer::{RewriteCallbackLayer, Rewriter};
pub use service::{Rewrite, RewriteCallback};
pub use subscriber::{Refused, SubscriberPolicy, SubscriberUrl, unsafe_address};
pub(crate) use token::constant_time_eq;
pub use token::{Keyring, KeyringError, MAX_URL, Route, TokenError, random_secret};

/// The path prefix webhooks come back on.
pub const HOOK_PATH: &str = "/hooks/runway/";

/// Request header naming the subscriber of an official-format submission
/// (`POST /runwayml/v1/*`, whose body has no `callback_url`): checked like a
/// `callback_url`, and never sent upstream.
pub const CALLBACK_URL_HEADER: http::HeaderName =
    http::HeaderName::from_static("x-runway-proxy-callback-url");

/// The subscriber a submission named (its `callback_url`, or the [`CALLBACK_URL_HEADER`]
/// of an official-format one), once checked: [`RewriteCallback`] puts it in the request's
/// extensions for the layers inside it (the watch list records it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskSubscriber(pub String);

/// The route token a submission's callback URL carries, by its id ([`token_id`]):
/// [`RewriteCallback`] puts it in the request's extensions, and the watch list records
/// it with the task the submission creates, binding the two.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallbackToken(pub i64);

/// A route token's id: the first 8 of the 12 random bytes of its nonce (characters 8 to
/// 18 of the token: base64 of its header), as a number. Unique per token for all
/// practical purposes (64 random bits), public (it seals nothing), read without opening
/// the token, and a number so that recording it costs an integer key.
pub fn token_id(token: &str) -> Option<i64> {
    use base64::Engine as _;
    // Characters 8..24 are bytes 6..18 of the token: its nonce.
    let nonce = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.get(8..24)?)
        .ok()?;
    let bytes: [u8; 8] = nonce.get(..8)?.try_into().ok()?;
    Some(i64::from_be_bytes(bytes))
}

/// Why [`Callbacks`] could not be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    /// The public URL is not an `http(s)` base URL with a host.
    #[error("{0:?} is not an http(s) base URL like https://hooks.example.com")]
    PublicUrl(String),
}

/// Where webhooks come back and who may receive them: the public URL of the webhook
/// receiver, the keys of the route tokens, the subscriber policy and the largest body
/// read. Cheap to clone; the rewrite and the relay take the same value.
#[derive(Clone, Debug)]
pub struct Callbacks {
    /// `{public_url}/hooks/runway/`, computed once.
    prefix: Arc<str>,
    // Replaced by a reload, for every clone at once: the rewrite mints with the keys in
    // force, and the receiver verifies with them.
    keys: Live<Keyring>,
    policy: Live<SubscriberPolicy>,
    body_limit: usize,
    webhook_body_limit: usize,
    token_lifetime: Duration,
}

/// How long a route token is honoured unless told otherwise: a week, longer than any
/// Runway task takes.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

impl Callbacks {
    /// Webhooks come back to `{public_url}/hooks/runway/{token}`, tokens sealed with `keys`;
    /// the strict [`SubscriberPolicy`] and a 16 MiB body limit until told otherwise.
    pub fn new(public_url: &str, keys: impl Into<Arc<Keyring>>) -> Result<Callbacks, CallbackError> {
        let base = public_url.trim_end_matches('/');
        let uri: http::Uri = base
            .parse()
            .map_err(|_| CallbackError::PublicUrl(public_url.to_owned()))?;
        let valid = matches!(uri.scheme_str(), Some("http" | "https"))
            && uri.host().is_some_and(|h| !h.is_empty())
            && uri.query().is_none();
        if !valid {
            return Err(CallbackError::PublicUrl(public_url.to_owned()));
        }
        Ok(Callbacks {
            prefix: format!("{base}{HOOK_PATH}").into(),
            keys: Live::from_arc(keys.into()),
            policy: Live::new(SubscriberPolicy::default()),
            body_limit: 16 * 1024 * 1024,
            webhook_body_limit: 1024 * 1024,
            token_lifetime: DEFAULT_TOKEN_LIFETIME,
        })
    }

    /// Honour a route token for `lifetime` after it was minted (default
    /// [`DEFAULT_TOKEN_LIFETIME`]); a webhook with an older one is refused (404), so a
    /// hook URL that leaked stops working.
    pub fn with_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime = lifetime;
        self
    }

    /// How long a route token is honoured.
    pub fn token_lifetime(&self) -> Duration {
        self.token_lifetime
    }

    /// Accept subscriber URLs by `policy`, at submission and again at delivery.
    pub fn with_policy(mut self, policy: SubscriberPolicy) -> Self {
        self.policy = Live::new(policy);
        self
    }

    /// Put `policy` in force for this value and every clone of it: submissions checked
    /// from now on, and deliveries by workers started from now on.
    pub fn set_policy(&self, policy: SubscriberPolicy) {
        self.policy.set(policy);
    }

    /// Put `keys` in force for this value and every clone of it: new tokens are minted
    /// with its newest key, and webhooks are verified with all of them, so keep the
    /// previous key in the set for as long as its tokens may still be called back.
    pub fn set_keys(&self, keys: Keyring) {
        self.keys.set(keys);
    }

    /// Largest submission body rewritten (default 16 MiB: a 5 MB image as a base64 data
    /// URI fits).
    pub fn with_body_limit(mut self, limit: usize) -> Self {
        self.body_limit = limit;
        self
    }

    /// Largest webhook body the receiver accepts (default 1 MiB; CometAPI's are a few KB).
    pub fn with_webhook_body_limit(mut self, limit: usize) -> Self {
        self.webhook_body_limit = limit;
        self
    }

    /// The webhook body limit.
    pub fn webhook_body_limit(&self) -> usize {
        self.webhook_body_limit
    }

    /// The token keys, as a reload replaces them.
    pub fn keys(&self) -> &Live<Keyring> {
        &self.keys
    }

    /// The subscriber policy in force.
    pub fn policy(&self) -> Arc<SubscriberPolicy> {
        self.policy.get()
    }

    /// The submission body limit.
    pub fn body_limit(&self) -> usize {
        self.body_limit
    }

    /// The URL CometAPI is given for `subscriber`: `{public_url}/hooks/runway/{token}`.
    pub fn hook_url(&self, subscriber: &str) -> String {
        let token = self.keys.with(|keys| keys.mint(subscriber));
        let mut url = String::with_capacity(self.prefix.len() + token.len());
        url.push_str(&self.prefix);
        url.push_str(&token);
        url
    }
}

impl CallbackSettings {
    /// Check every value.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        longer_than_zero(self.token_lifetime, "callback.token_lifetime")?;
        at_least_one_byte(self.body_limit, "callback.body_limit")?;
        at_least_one_byte(self.webhook_body_limit, "callback.webhook_body_limit")
    }

    /// The subscriber policy these settings describe.
    pub fn policy(&self) -> SubscriberPolicy {
        SubscriberPolicy::default()
            .allow_private(self.allow_private)
            .allowed_hosts(self.allowed_hosts.iter().cloned())
    }

    /// Callback hosts, comma-separated, lower-cased; `any` (or `*`, or empty): every host.
    fn hosts(raw: &str) -> Result<Vec<String>, ValueError> {
        Ok(match raw.trim() {
            "" | "any" | "*" => Vec::new(),
            hosts => hosts
                .split(',')
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
        })
    }

    fn show_hosts(hosts: &[String]) -> String {
        match hosts {
            [] => "any".to_owned(),
            hosts => hosts.join(","),
        }
    }

    /// Route token keys, `id:secret,...`, checked now; or `generated`.
    fn token_keys(raw: &str) -> Result<Option<Secret>, ValueError> {
        match raw.trim() {
            "" | "generated" => Ok(None),
            keys => {
                Keyring::parse(keys)?;
                Ok(Some(Secret::new(keys)))
            }
        }
    }
}

settings! {
    /// Settings of the `callback_url` rewrite (`[callback]`).
    #[derive(Clone, Debug, PartialEq)]
    #[non_exhaustive]
    pub struct CallbackSettings in callback {
        /// Let subscriber URLs point at loopback, private and other internal addresses.
        pub allow_private: bool = false,
        /// Only these subscriber hosts (empty: any).
        pub allowed_hosts: Vec<String> = Vec::new(),
        /// Route token keys (`id:secret,...`); `None`: generated once, kept in `data_dir`.
        pub token_keys: Option<Secret> = None,
        /// Largest submission body rewritten (16 MiB: a 5 MB image as a base64 data URI fits).
        pub body_limit: usize = 16 * 1024 * 1024,
        /// Largest webhook body accepted (CometAPI's are a few KB): a holder of a callback
        /// URL can make the proxy store no more than this per post.
        pub webhook_body_limit: usize = 1024 * 1024,
        /// How long a route token is honoured after it was minted.
        pub token_lifetime: Duration = DEFAULT_TOKEN_LIFETIME,
    }
    rows {
        allow_private: live, under Callbacks,
            env: "RUNWAY_PROXY_ALLOW_PRIVATE_CALLBACKS",
            flag: "allow-private-callbacks",
            doc: "Let callback_url point at loopback, private and other internal addresses.",
            parse: parse::boolean, show: show::plain;
        allowed_hosts: live, under Callbacks,
            env: "RUNWAY_PROXY_CALLBACK_ALLOWED_HOSTS",
            flag: "callback-allowed-hosts",
            doc: "Only these callback hosts, comma-separated (*.example.com for subdomains).",
            parse: Self::hosts, show: Self::show_hosts;
        token_keys: live, under Callbacks,
            env: "RUNWAY_PROXY_CALLBACK_TOKEN_KEYS",
            flag: "callback-token-keys",
            doc: "Keys of callback route tokens, id:secret,... (newest id mints; generated: kept in data_dir).",
            parse: Self::token_keys, show: show::generated;
        body_limit: restart, under Callbacks,
            env: "RUNWAY_PROXY_CALLBACK_BODY_LIMIT",
            flag: "callback-body-limit",
            doc: "Largest submission body whose callback_url is rewritten.",
            parse: parse::size, show: show::size;
        webhook_body_limit: restart, under Callbacks,
            env: "RUNWAY_PROXY_WEBHOOK_BODY_LIMIT",
            flag: "webhook-body-limit",
            doc: "Largest webhook body the webhook listener accepts (413 past it, nothing stored).",
            parse: parse::size, show: show::size;
        token_lifetime: restart, under Callbacks,
            env: "RUNWAY_PROXY_CALLBACK_TOKEN_LIFETIME",
            flag: "callback-token-lifetime",
            doc: "How long a callback route token is honoured after it was minted (webhooks with older ones get 404).",
            parse: parse::positive_duration, show: show::duration;
    }
}

#[cfg(test)]
mod token_id_tests {
    use super::*;

    #[test]
    fn each_token_has_its_own_id_read_without_the_keys() {
        let keys: Keyring = "1:a-secret-of-at-least-thirty-two-bytes".parse().unwrap();
        let first = keys.mint("https://app.example/hook");
        let second = keys.mint("https://app.example/hook");
        assert_eq!(token_id(&first), token_id(&first));
        assert!(token_id(&first).is_some());
        assert_ne!(token_id(&first), token_id(&second), "a fresh nonce each");
        for bad in ["", "short", "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"] {
            assert_eq!(token_id(bad), None, "{bad:?}");
        }
    }
}
