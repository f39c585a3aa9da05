//! Standard Webhooks signatures: `webhook-id`, `webhook-timestamp` and
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::hmac;

/// How far a webhook's timestamp may be from the subscriber's clock (the Standard
/// Webhooks libraries' default): older messages are refused as possible replays.
pub const TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// Why a webhook secret was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// Not `whsec_` followed by base64.
    #[error("the webhook secret is not whsec_ followed by base64")]
    NotBase64,
    /// Fewer than 24 bytes once decoded.
    #[error("the webhook secret must hold at least 24 bytes (32 recommended)")]
    TooShort,
}

impl From<SecretError> for crate::settings::ValueError {
    fn from(err: SecretError) -> Self {
        crate::settings::ValueError::invalid(err)
    }
}

/// Signs relayed webhooks with a `whsec_<base64>` secret, as the Standard Webhooks spec
/// describes (so subscribers can verify with any Standard Webhooks library).
#[derive(Clone)]
pub struct WebhookSigner {
    key: hmac::Key,
}

impl fmt::Debug for WebhookSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSigner { .. }")
    }
}

impl WebhookSigner {
    /// A signer for a secret written `whsec_<base64>` (the prefix is optional).
    pub fn from_secret(secret: &str) -> Result<WebhookSigner, SecretError> {
        let encoded = secret.trim().strip_prefix("whsec_").unwrap_or(secret.trim());
        let bytes = STANDARD.decode(encoded).map_err(|_| SecretError::NotBase64)?;
        if bytes.len() < 24 {
            return Err(SecretError::TooShort);
        }
        Ok(WebhookSigner {
            key: hmac::Key::new(hmac::HMAC_SHA256, &bytes),
        })
    }

    /// A new random secret in the `whsec_<base64>` form.
    pub fn generate_secret() -> String {
        let bytes: [u8; 32] = rand::random();
        format!("whsec_{}", STANDARD.encode(bytes))
    }

    /// The `webhook-signature` value for a message.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut context = hmac::Context::with_key(&self.key);
        context.update(id.as_bytes());
        context.update(b".");
        context.update(timestamp.to_string().as_bytes());
        context.update(b".");
        context.update(body);
        format!("v1,{}", STANDARD.encode(context.sign().as_ref()))
    }

    /// Whether the message is fresh (its timestamp within [`TOLERANCE`] of now, as the
    /// Standard Webhooks libraries require, against replays) and any `v1` signature in
    /// `header` (space-separated, as the spec allows during rotation) matches it. What a
    /// subscriber does; used by the tests and the demo.
    pub fn verify(&self, id: &str, timestamp: u64, body: &[u8], header: &str) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.verify_at(id, timestamp, body, header, now, TOLERANCE)
    }

    /// [`verify`](Self::verify) as of `now` (Unix seconds), with `tolerance` either way.
    pub fn verify_at(
        &self,
        id: &str,
        timestamp: u64,
        body: &[u8],
        header: &str,
        now: u64,
        tolerance: Duration,
    ) -> bool {
        if now.abs_diff(timestamp) > tolerance.as_secs() {
            return false;
        }
        self.signature_matches(id, timestamp, body, header)
    }

    fn signature_matches(&self, id: &str, timestamp: u64, body: &[u8], header: &str) -> bool {
        let mut message = Vec::with_capacity(id.len() + body.len() + 24);
        message.extend_from_slice(id.as_bytes());
        message.push(b'.');
        message.extend_from_slice(timestamp.to_string().as_bytes());
        message.push(b'.');
        message.extend_from_slice(body);
        header
            .split_whitespace()
            .filter_map(|sig| sig.strip_prefix("v1,"))
            .any(|encoded| {
                STANDARD
                    .decode(encoded)
                    .is_ok_and(|tag| hmac::verify(&self.key, &message, &tag).is_ok())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_standard_webhooks_test_vector() {
        // The example from the Standard Webhooks specification.
        let signer = WebhookSigner::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let signature = signer.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let now = 1614265330 + 60;
        let rotated = format!("v1,bm9wZQ== {signature}");
        assert!(signer.verify_at(id, 1614265330, body, &rotated, now, TOLERANCE));
        assert!(!signer.verify_at(id, 1614265331, body, &signature, now, TOLERANCE));
        assert!(
            !signer.verify(id, 1614265330, body, &signature),
            "a 2021 timestamp is a replay today"
        );
        let week_later = 1614265330 + 7 * 24 * 3600;
        assert!(!signer.verify_at(id, 1614265330, body, &signature, week_later, TOLERANCE));
    }

    #[test]
    fn refuses_weak_or_malformed_secrets() {
        assert!(WebhookSigner::from_secret("whsec_!!").is_err());
        assert!(WebhookSigner::from_secret("whsec_c2hvcnQ=").is_err());
        assert!(WebhookSigner::from_secret(&WebhookSigner::generate_secret()).is_ok());
        let with_newline = format!("{}\n", WebhookSigner::generate_secret());
        assert!(
            WebhookSigner::from_secret(&with_newline).is_ok(),
            "a trailing newline is tolerated"
        );
    }
}
