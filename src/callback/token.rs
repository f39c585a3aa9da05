//! Stateless, signed route tokens: the subscriber's URL, sealed into the callback URL the
//! upstream is given.
//!
//! A token carries everything needed to route a webhook: the original `callback_url`
//! (encrypted, so the upstream never learns the subscriber's endpoint or any secret in
//! its query string), a random nonce and the issue time, authenticated under a numbered
//! key. Any replica that has the keys can route a webhook without shared state; nobody
//! without them can mint or alter one. New tokens use the newest key; older keys still
//! verify, so keys can rotate.
//!
//! Layout before base64url (no padding):
//! `version (1) | key id (1) | issued at, Unix seconds (4) | nonce (12) | encrypted URL | tag (16)`.
//!
//! - **Version 2** (minted now): the URL sealed with ChaCha20-Poly1305 under a key derived
//!   from the secret, the first 18 bytes as associated data. One pass over the URL.
//! - **Version 1** (minted before; still verified, so callbacks of tasks submitted before
//!   an upgrade still route): the tag is HMAC-SHA256 (truncated to 128 bits) over the
//!   first 18 bytes and the plain URL, and the URL is encrypted with a keystream of
//!   HMAC-SHA256(nonce, block) blocks under a key derived separately: two SHA-256
//!   compressions per 32 bytes of URL, about five times the cost of version 2.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::{aead, hmac};

/// HMAC-SHA256 tag, HMAC keystream: verified, no longer minted.
const VERSION_HMAC: u8 = 1;
/// ChaCha20-Poly1305: what [`Keyring::mint`] makes.
const VERSION_AEAD: u8 = 2;
/// The first byte of a sealed secret (see [`Keyring::seal`]): never a token's version.
const SEALED: u8 = 0x51;
const HEADER: usize = 1 + 1 + 4 + 12;
const TAG: usize = 16;
/// Longest subscriber URL a token carries.
pub const MAX_URL: usize = 2048;

/// Why a token was refused. Deliberately coarse: a caller learns nothing about which
/// check failed beyond what a log line needs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not base64url, too short, or an unknown version.
    #[error("malformed callback token")]
    Malformed,
    /// Signed with a key id this keyring does not have.
    #[error("callback token signed with an unknown key")]
    UnknownKey,
    /// The signature does not match: forged or altered.
    #[error("callback token signature does not verify")]
    BadSignature,
    /// Genuine, but minted longer ago than the token lifetime.
    #[error("callback token expired")]
    Expired,
}

/// Why a keyring could not be read from `id:secret,...`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    /// An item without a `:`.
    #[error("token keys are written id:secret, separated by commas")]
    Malformed,
    /// A key id that is not a number from 0 to 255.
    #[error("key id {0:?} is not a number from 0 to 255")]
    BadId(String),
    /// A secret shorter than 32 characters.
    #[error("the secret of key {0} is shorter than 32 characters")]
    ShortSecret(u8),
    /// No key at all.
    #[error("no token keys given")]
    Empty,
}

impl From<KeyringError> for crate::settings::ValueError {
    fn from(err: KeyringError) -> Self {
        crate::settings::ValueError::invalid(err)
    }
}

/// A secret and the keys derived from it.
struct Key {
    mac: hmac::Key,
    encryption: hmac::Key,
    tokens: aead::LessSafeKey,
    sealing: aead::LessSafeKey,
}

impl Key {
    fn derive(secret: &[u8]) -> Key {
        let root = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let sub = |label: &[u8]| hmac::Key::new(hmac::HMAC_SHA256, hmac::sign(&root, label).as_ref());
        let aead = |label: &[u8]| {
            let derived = hmac::sign(&root, label);
            aead::UnboundKey::new(&aead::CHACHA20_POLY1305, &derived.as_ref()[..32])
                .map(aead::LessSafeKey::new)
                .unwrap_or_else(|_| unreachable!("a 32-byte ChaCha20-Poly1305 key is always valid"))
        };
        Key {
            mac: sub(b"runway-proxy/callback-token/mac/v1"),
            encryption: sub(b"runway-proxy/callback-token/enc/v1"),
            tokens: aead(b"runway-proxy/callback-token/aead/v2"),
            sealing: aead(b"runway-proxy/sealed/v1"),
        }
    }

    /// XOR `data` with the keystream for `nonce`.
    fn apply_keystream(&self, nonce: &[u8], data: &mut [u8]) {
        for (block, chunk) in data.chunks_mut(32).enumerate() {
            let mut input = [0u8; 16];
            input[..12].copy_from_slice(nonce);
            input[12..].copy_from_slice(&(block as u32).to_be_bytes());
            let stream = hmac::sign(&self.encryption, &input);
            for (byte, key) in chunk.iter_mut().zip(stream.as_ref()) {
                *byte ^= key;
            }
        }
    }

    fn tag(&self, header: &[u8], url: &[u8]) -> hmac::Tag {
        let mut context = hmac::Context::with_key(&self.mac);
        context.update(header);
        context.update(url);
        context.sign()
    }
}

/// The keys that mint and verify route tokens, by key id. The highest id mints.
pub struct Keyring {
    keys: BTreeMap<u8, Key>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secrets.
        f.debug_struct("Keyring")
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A verified token's contents.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Route {
    /// The subscriber URL the submission carried.
    pub url: String,
    /// When the token was minted (Unix seconds).
    pub issued_at: u32,
    /// The key that signed it.
    pub key_id: u8,
}

impl std::str::FromStr for Keyring {
    type Err = KeyringError;

    fn from_str(text: &str) -> Result<Keyring, KeyringError> {
        Keyring::parse(text)
    }
}

impl Keyring {
    /// A keyring from `(key id, secret)` pairs. Secrets should be at least 32 random bytes.
    pub fn new<'a>(secrets: impl IntoIterator<Item = (u8, &'a [u8])>) -> Option<Keyring> {
        let keys: BTreeMap<u8, Key> = secrets
            .into_iter()
            .map(|(id, secret)| (id, Key::derive(secret)))
            .collect();
        (!keys.is_empty()).then_some(Keyring { keys })
    }

    /// Parse `id:secret` pairs separated by commas (`1:old-secret,2:new-secret`).
    pub fn parse(text: &str) -> Result<Keyring, KeyringError> {
        let mut pairs = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (id, secret) = item.split_once(':').ok_or(KeyringError::Malformed)?;
            let id: u8 = id
                .trim()
                .parse()
                .map_err(|_| KeyringError::BadId(id.to_owned()))?;
            if secret.len() < 32 {
                return Err(KeyringError::ShortSecret(id));
            }
            pairs.push((id, secret.as_bytes()));
        }
        Keyring::new(pairs).ok_or(KeyringError::Empty)
    }

    /// The id of the key that mints new tokens.
    pub fn current_id(&self) -> u8 {
        self.keys.keys().next_back().copied().unwrap_or_default()
    }

    /// Mint a token for `url`, issued now.
    pub fn mint(&self, url: &str) -> String {
        let issued_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()) as u32;
        self.mint_at(url, issued_at, rand::random())
    }

    fn mint_at(&self, url: &str, issued_at: u32, nonce: [u8; 12]) -> String {
        let id = self.current_id();
        let Some(key) = self.keys.get(&id) else {
            return String::new();
        };
        let mut token = Vec::with_capacity(HEADER + url.len() + TAG);
        token.push(VERSION_AEAD);
        token.push(id);
        token.extend_from_slice(&issued_at.to_be_bytes());
        token.extend_from_slice(&nonce);
        token.extend_from_slice(url.as_bytes());
        let (header, sealed) = token.split_at_mut(HEADER);
        let Ok(tag) = key.tokens.seal_in_place_separate_tag(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::from(&*header),
            sealed,
        ) else {
            return String::new();
        };
        token.extend_from_slice(tag.as_ref());
        URL_SAFE_NO_PAD.encode(token)
    }

    /// Check a token, and that it was minted no longer than `lifetime` ago.
    ///
    /// Every token carries its minting time (it is signed with the rest), so the lifetime
    /// applies to all of them, whichever key signed them; a key that is retired from the
    /// keyring stops its tokens at once.
    pub fn verify_fresh(&self, token: &str, lifetime: Duration) -> Result<Route, TokenError> {
        let route = self.verify(token)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if now.saturating_sub(u64::from(route.issued_at)) > lifetime.as_secs() {
            return Err(TokenError::Expired);
        }
        Ok(route)
    }

    /// Check a token and recover its route, whatever its age.
    pub fn verify(&self, token: &str) -> Result<Route, TokenError> {
        // A token is at most the header, the longest URL and the tag in base64.
        if token.len() > (HEADER + MAX_URL + TAG) * 4 / 3 + 4 {
            return Err(TokenError::Malformed);
        }
        let mut bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| TokenError::Malformed)?;
        if bytes.len() < HEADER + TAG || !matches!(bytes[0], VERSION_HMAC | VERSION_AEAD) {
            return Err(TokenError::Malformed);
        }
        let key_id = bytes[1];
        let key = self.keys.get(&key_id).ok_or(TokenError::UnknownKey)?;
        let (header, rest) = bytes.split_at_mut(HEADER);
        let url: &[u8] = if header[0] == VERSION_AEAD {
            let nonce =
                aead::Nonce::try_assume_unique_for_key(&header[6..18]).map_err(|_| TokenError::Malformed)?;
            key.tokens
                .open_in_place(nonce, aead::Aad::from(&*header), rest)
                .map_err(|_| TokenError::BadSignature)?
        } else {
            let (url, tag) = rest.split_at_mut(rest.len() - TAG);
            key.apply_keystream(&header[6..18], url);
            let expected = key.tag(header, url);
            // Constant-time comparison of the truncated tag.
            if !constant_time_eq(&expected.as_ref()[..TAG], tag) {
                return Err(TokenError::BadSignature);
            }
            url
        };
        let url = std::str::from_utf8(url)
            .map_err(|_| TokenError::Malformed)?
            .to_owned();
        let issued_at = u32::from_be_bytes([header[2], header[3], header[4], header[5]]);
        Ok(Route {
            url,
            issued_at,
            key_id,
        })
    }
}

impl Keyring {
    /// Encrypt `secret` to be stored (an API key the proxy must use again after a
    /// restart, say), with ChaCha20-Poly1305 under a key derived from the newest secret.
    /// `purpose` is bound into it: a secret sealed for one purpose does not open as
    /// another. Whoever reads the store without the keyring learns nothing of it.
    pub fn seal(&self, purpose: &str, secret: &[u8]) -> String {
        let id = self.current_id();
        let Some(key) = self.keys.get(&id) else {
            return String::new();
        };
        let nonce: [u8; 12] = rand::random();
        let mut out = Vec::with_capacity(2 + 12 + secret.len() + TAG);
        out.extend_from_slice(&[SEALED, id]);
        out.extend_from_slice(&nonce);
        let mut sealed = secret.to_vec();
        let aad = aead::Aad::from(purpose.as_bytes());
        if key
            .sealing
            .seal_in_place_append_tag(aead::Nonce::assume_unique_for_key(nonce), aad, &mut sealed)
            .is_err()
        {
            return String::new();
        }
        out.extend_from_slice(&sealed);
        URL_SAFE_NO_PAD.encode(out)
    }

    /// Decrypt what [`seal`](Self::seal) made for `purpose`, with whichever key of the
    /// keyring sealed it. `None`: altered, sealed for another purpose, or under a key
    /// this keyring no longer has.
    pub fn open(&self, purpose: &str, sealed: &str) -> Option<Vec<u8>> {
        let bytes = URL_SAFE_NO_PAD.decode(sealed).ok()?;
        if bytes.len() < 2 + 12 + TAG || bytes[0] != SEALED {
            return None;
        }
        let key = self.keys.get(&bytes[1])?;
        let nonce = aead::Nonce::try_assume_unique_for_key(&bytes[2..14]).ok()?;
        let mut data = bytes[14..].to_vec();
        let plain = key
            .sealing
            .open_in_place(nonce, aead::Aad::from(purpose.as_bytes()), &mut data)
            .ok()?;
        Some(plain.to_vec())
    }
}

/// Compare in time that depends only on the length (tokens' tags here, the admin token's
/// digest in the sidecar).
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A fresh random secret, base64url, for a generated keyring or webhook secret.
pub fn random_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(pairs: &[(u8, &str)]) -> Keyring {
        Keyring::new(pairs.iter().map(|(id, s)| (*id, s.as_bytes()))).unwrap()
    }

    const URL: &str = "https://hooks.example.com/runway?secret=abc&x=%20y";

    #[test]
    fn sealed_secrets_open_only_for_their_purpose_and_keys() {
        let old = ring(&[(1, "first-secret-of-at-least-32-bytes!!")]);
        let sealed = old.seal("api-key", b"sk-live-0123456789");
        assert!(!sealed.contains("sk-live"), "{sealed}");
        assert_ne!(
            sealed,
            old.seal("api-key", b"sk-live-0123456789"),
            "a fresh nonce each time"
        );
        assert_eq!(
            old.open("api-key", &sealed).as_deref(),
            Some(&b"sk-live-0123456789"[..])
        );
        assert_eq!(old.open("other-purpose", &sealed), None);
        // Rotated: the old key still opens what it sealed; a keyring without it can't.
        let rotated = ring(&[
            (1, "first-secret-of-at-least-32-bytes!!"),
            (2, "second-secret-of-at-least-32-bytes!"),
        ]);
        assert_eq!(
            rotated.open("api-key", &sealed).as_deref(),
            Some(&b"sk-live-0123456789"[..])
        );
        let other = ring(&[(1, "another-secret-of-at-least-32-bytes")]);
        assert_eq!(other.open("api-key", &sealed), None);
        // Altered, truncated, or a route token: refused.
        let mut altered = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert_eq!(old.open("api-key", &URL_SAFE_NO_PAD.encode(altered)), None);
        assert_eq!(old.open("api-key", &sealed[..10]), None);
        assert_eq!(old.open("api-key", &old.mint(URL)), None);
        assert_eq!(old.open("api-key", "not base64 !"), None);
        // And a sealed secret is no route token.
        assert!(old.verify(&sealed).is_err());
    }

    #[test]
    fn round_trips_and_hides_the_url() {
        let keys = ring(&[(1, "first-secret-of-at-least-32-bytes!!")]);
        let token = keys.mint(URL);
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{token}"
        );
        assert!(
            token.len() < 2 * URL.len() + 60,
            "reasonably short: {}",
            token.len()
        );
        let decoded = URL_SAFE_NO_PAD.decode(&token).unwrap();
        assert!(
            !decoded.windows(6).any(|w| w == b"hooks."),
            "the URL is not readable in the token"
        );
        let route = keys.verify(&token).unwrap();
        assert_eq!(route.url, URL);
        assert_eq!(route.key_id, 1);
        assert_ne!(keys.mint(URL), token, "a fresh nonce each time");
    }

    #[test]
    fn forged_altered_and_foreign_tokens_are_refused() {
        let keys = ring(&[(1, "first-secret-of-at-least-32-bytes!!")]);
        let token = keys.mint(URL);
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        for i in [0, 1, 3, 10, HEADER + 2, bytes.len() - 1] {
            bytes[i] ^= 0x01;
            let altered = URL_SAFE_NO_PAD.encode(&bytes);
            assert!(keys.verify(&altered).is_err(), "flipping byte {i} went unnoticed");
            bytes[i] ^= 0x01;
        }
        let other = ring(&[(1, "another-secret-of-at-least-32-bytes")]);
        assert_eq!(other.verify(&token), Err(TokenError::BadSignature));
        let unknown = ring(&[(9, "another-secret-of-at-least-32-bytes")]);
        assert_eq!(unknown.verify(&token), Err(TokenError::UnknownKey));
        for junk in ["", "!!!", "AAAA", &"A".repeat(10_000)] {
            assert!(keys.verify(junk).is_err());
        }
    }

    /// A token minted by an earlier release (version 1: HMAC tag and keystream) still
    /// routes, with its key and issue time; altered, it does not.
    #[test]
    fn tokens_minted_before_version_2_still_verify() {
        const V1: &str = "AQFqsTuABwcHBwcHBwcHBwcHzYJQ02Knr3GZX17-6qF3J-_UCWQR25e_r75ogaWJbdy5vy0fyuxnKFUcr7MEZZ-aNFZ9543i8No7OV-YHeVMUJL0";
        let keys = ring(&[(1, "first-secret-of-at-least-32-bytes!!")]);
        let route = keys.verify(V1).unwrap();
        assert_eq!(
            (route.url.as_str(), route.key_id, route.issued_at),
            (URL, 1, 1_790_000_000)
        );
        let mut bytes = URL_SAFE_NO_PAD.decode(V1).unwrap();
        for i in [2, HEADER, bytes.len() - 1] {
            bytes[i] ^= 0x01;
            assert_eq!(
                keys.verify(&URL_SAFE_NO_PAD.encode(&bytes)),
                Err(TokenError::BadSignature),
                "byte {i}"
            );
            bytes[i] ^= 0x01;
        }
        // Claimed as the other version, it is refused.
        bytes[0] = VERSION_AEAD;
        assert_eq!(
            keys.verify(&URL_SAFE_NO_PAD.encode(&bytes)),
            Err(TokenError::BadSignature)
        );
        let fresh = URL_SAFE_NO_PAD.decode(keys.mint(URL)).unwrap();
        assert_eq!(fresh[0], VERSION_AEAD, "new tokens are version 2");
        assert_eq!(fresh.len(), bytes.len(), "and as long as version 1's");
    }

    #[test]
    fn rotation_keeps_old_tokens_valid() {
        let old = ring(&[(1, "first-secret-of-at-least-32-bytes!!")]);
        let token = old.mint(URL);
        let rotated = ring(&[
            (1, "first-secret-of-at-least-32-bytes!!"),
            (2, "second-secret-of-at-least-32-bytes"),
        ]);
        assert_eq!(rotated.verify(&token).unwrap().key_id, 1);
        let fresh = rotated.mint(URL);
        assert_eq!(rotated.verify(&fresh).unwrap().key_id, 2);
        assert_eq!(old.verify(&fresh), Err(TokenError::UnknownKey));
    }

    #[test]
    fn tokens_older_than_their_lifetime_are_refused() {
        let keys = ring(&[(1, "first-secret-of-at-least-32-bytes!!")]);
        let week = Duration::from_secs(7 * 24 * 3600);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as u32;
        let fresh = keys.mint_at(URL, now - 3600, [7; 12]);
        assert_eq!(keys.verify_fresh(&fresh, week).unwrap().url, URL);
        let old = keys.mint_at(URL, now - 8 * 24 * 3600, [7; 12]);
        assert_eq!(keys.verify_fresh(&old, week), Err(TokenError::Expired));
        assert!(keys.verify(&old).is_ok(), "still genuine, only too old");
        // Rotation: a token of the older key is honoured for its lifetime too.
        let rotated = ring(&[
            (1, "first-secret-of-at-least-32-bytes!!"),
            (2, "second-secret-of-at-least-32-bytes"),
        ]);
        assert_eq!(rotated.verify_fresh(&fresh, week).unwrap().key_id, 1);
        assert_eq!(rotated.verify_fresh(&old, week), Err(TokenError::Expired));
    }

    #[test]
    fn keyring_text_is_checked() {
        assert!(Keyring::parse("1:short").is_err());
        assert!(Keyring::parse("x:first-secret-of-at-least-32-bytes!!").is_err());
        assert!(Keyring::parse("").is_err());
        let keys =
            Keyring::parse("1:first-secret-of-at-least-32-bytes!!, 2:second-secret-of-at-least-32-bytes")
                .unwrap();
        assert_eq!(keys.current_id(), 2);
        assert!(!format!("{keys:?}").contains("secret"));
    }
}
