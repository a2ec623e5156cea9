//! Bind credentials: shared app keys and per-device HMAC tokens.
//!
//! Pure computation (no clock: the caller passes `unix_now`), so the sans-io
//! session can call it. App keys suit load tests and trusted fleets; production
//! fleets mint per-device tokens on their backend with the shared secret:
//! `"<expires>.<hex HMAC-SHA256(secret, "miop-token-v1:<device>:<expires>")>"`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::protocol::Credential;

type HmacSha256 = Hmac<Sha256>;

/// Why a credential was refused. Logged and counted; the client only learns
/// "auth failed" so it cannot probe which part was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("unknown app key")]
    UnknownAppKey,
    #[error("app keys are not accepted by this server")]
    AppKeysDisabled,
    #[error("tokens are not accepted by this server")]
    TokensDisabled,
    #[error("token is not of the form <expires>.<hex mac>")]
    BadTokenFormat,
    #[error("token has expired")]
    TokenExpired,
    #[error("token signature does not match")]
    BadSignature,
}

impl AuthError {
    pub fn name(self) -> &'static str {
        match self {
            AuthError::UnknownAppKey => "unknown_app_key",
            AuthError::AppKeysDisabled => "app_keys_disabled",
            AuthError::TokensDisabled => "tokens_disabled",
            AuthError::BadTokenFormat => "bad_token_format",
            AuthError::TokenExpired => "token_expired",
            AuthError::BadSignature => "bad_signature",
        }
    }
}

/// The node's credential policy, built once at start-up and shared read-only.
#[derive(Clone, Default)]
pub struct Authenticator {
    app_keys: Vec<Box<[u8]>>,
    token_secret: Option<Box<[u8]>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.debug_struct("Authenticator")
            .field("app_keys", &self.app_keys.len())
            .field("token_mode", &self.token_secret.is_some())
            .finish()
    }
}

impl Authenticator {
    pub fn new(app_keys: impl IntoIterator<Item = String>, token_secret: Option<String>) -> Self {
        let mut keys: Vec<Box<[u8]>> = app_keys
            .into_iter()
            .filter(|k| !k.is_empty())
            .map(|k| k.into_bytes().into_boxed_slice())
            .collect();
        keys.sort();
        keys.dedup();
        Authenticator {
            app_keys: keys,
            token_secret: token_secret
                .filter(|s| !s.is_empty())
                .map(|s| s.into_bytes().into_boxed_slice()),
        }
    }

    /// True when no credential could ever pass: the gateway refuses to start so.
    pub fn is_closed(&self) -> bool {
        self.app_keys.is_empty() && self.token_secret.is_none()
    }

    pub fn app_key_count(&self) -> usize {
        self.app_keys.len()
    }

    pub fn token_mode(&self) -> bool {
        self.token_secret.is_some()
    }

    /// Checks `credential` for `device_id` at wall-clock time `unix_now` (seconds).
    pub fn check(
        &self,
        device_id: &str,
        credential: &Credential,
        unix_now: u64,
    ) -> Result<(), AuthError> {
        match credential {
            Credential::AppKey(key) => {
                if self.app_keys.is_empty() {
                    return Err(AuthError::AppKeysDisabled);
                }
                // Compare against every key in constant time per key, so timing
                // reveals neither which key nor how much of it matched.
                let mut found = false;
                for k in &self.app_keys {
                    found |= constant_time_eq(k, key.as_bytes());
                }
                if found {
                    Ok(())
                } else {
                    Err(AuthError::UnknownAppKey)
                }
            }
            Credential::Token(token) => {
                let secret = self
                    .token_secret
                    .as_deref()
                    .ok_or(AuthError::TokensDisabled)?;
                verify_token(secret, device_id, token, unix_now)
            }
        }
    }
}

/// Mints a token for `device_id` valid until `expires_unix` (seconds).
pub fn mint_token(secret: &[u8], device_id: &str, expires_unix: u64) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(token_message(device_id, expires_unix).as_bytes());
    format!(
        "{expires_unix}.{}",
        hex::encode(mac.finalize().into_bytes())
    )
}

fn token_message(device_id: &str, expires: impl std::fmt::Display) -> String {
    format!("miop-token-v1:{device_id}:{expires}")
}

/// Only the canonical form is accepted: a decimal expiry without sign or
/// leading zeros, and exactly 64 lowercase hex digits. The MAC is checked over
/// the expiry text as received, so no two strings are the same token.
fn verify_token(
    secret: &[u8],
    device_id: &str,
    token: &str,
    unix_now: u64,
) -> Result<(), AuthError> {
    let (expires_text, mac_hex) = token.split_once('.').ok_or(AuthError::BadTokenFormat)?;
    let canonical_number = !expires_text.is_empty()
        && expires_text.len() <= 20
        && expires_text.bytes().all(|b| b.is_ascii_digit())
        && (expires_text == "0" || !expires_text.starts_with('0'));
    let canonical_mac = mac_hex.len() == 64
        && mac_hex
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !canonical_number || !canonical_mac {
        return Err(AuthError::BadTokenFormat);
    }
    let expires: u64 = expires_text
        .parse()
        .map_err(|_| AuthError::BadTokenFormat)?;
    let tag = hex::decode(mac_hex).map_err(|_| AuthError::BadTokenFormat)?;
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(token_message(device_id, expires_text).as_bytes());
    // verify_slice compares in constant time.
    mac.verify_slice(&tag)
        .map_err(|_| AuthError::BadSignature)?;
    if expires <= unix_now {
        return Err(AuthError::TokenExpired);
    }
    Ok(())
}

/// Compares SHA-256 digests in constant time, so neither the content nor the
/// length of a configured key leaks through timing.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::Digest;
    let (da, db) = (Sha256::digest(a), Sha256::digest(b));
    da.iter()
        .zip(db.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Credential {
        Credential::AppKey(s.into())
    }

    #[test]
    fn app_keys() {
        let a = Authenticator::new(["pk".to_string(), "other".to_string()], None);
        assert_eq!(a.check("d", &key("pk"), 0), Ok(()));
        assert_eq!(a.check("d", &key("other"), 0), Ok(()));
        assert_eq!(a.check("d", &key("pk2"), 0), Err(AuthError::UnknownAppKey));
        assert_eq!(a.check("d", &key(""), 0), Err(AuthError::UnknownAppKey));
        assert_eq!(
            a.check("d", &Credential::Token("1.00".into()), 0),
            Err(AuthError::TokensDisabled)
        );
    }

    #[test]
    fn tokens() {
        let a = Authenticator::new([], Some("s3cret".into()));
        assert!(!a.is_closed());
        let t = mint_token(b"s3cret", "dev-1", 1000);
        let tok = |s: &str| Credential::Token(s.into());
        assert_eq!(a.check("dev-1", &tok(&t), 999), Ok(()));
        assert_eq!(
            a.check("dev-1", &tok(&t), 1000),
            Err(AuthError::TokenExpired)
        );
        assert_eq!(
            a.check("dev-2", &tok(&t), 999),
            Err(AuthError::BadSignature)
        );
        let forged = t.replacen("1000", "9000", 1);
        assert_eq!(
            a.check("dev-1", &tok(&forged), 999),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            a.check("dev-1", &tok("nodot"), 0),
            Err(AuthError::BadTokenFormat)
        );
        assert_eq!(
            a.check("dev-1", &tok("12.zz"), 0),
            Err(AuthError::BadTokenFormat)
        );
        // Non-canonical spellings of a valid token are refused.
        let (exp, mac) = t.split_once('.').unwrap();
        for bad in [
            format!("+{exp}.{mac}"),
            format!("0{exp}.{mac}"),
            format!("{exp}.{}", mac.to_uppercase()),
        ] {
            assert_eq!(
                a.check("dev-1", &tok(&bad), 999),
                Err(AuthError::BadTokenFormat),
                "{bad}"
            );
        }
        assert_eq!(
            a.check("dev-1", &key("pk"), 0),
            Err(AuthError::AppKeysDisabled)
        );
        assert!(Authenticator::new([String::new()], None).is_closed());
    }
}
