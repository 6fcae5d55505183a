//! Standard Webhooks signatures (<https://www.standardwebhooks.com>): a secret is
//! `whsec_<base64 of the key>`; a message is signed as
//! `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`, and the `webhook-signature`
//! header lists one signature per valid secret, separated by spaces (during a rotation, the new
//! secret's and the old one's), so that any existing verifier accepts it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

/// The prefix of a secret's text form.
pub const SECRET_PREFIX: &str = "whsec_";
/// Bytes of a generated secret's key (Svix uses 24).
pub const GENERATED_KEY_BYTES: usize = 24;
/// Accepted key lengths of a secret given by an administrator.
pub const KEY_BYTES: std::ops::RangeInclusive<usize> = 16..=128;

/// Why a secret was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("a webhook secret starts with {SECRET_PREFIX}")]
    Prefix,
    #[error("a webhook secret is {SECRET_PREFIX} followed by base64")]
    Base64,
    #[error("a webhook secret's key is 16 to 128 bytes, not {0}")]
    Length(usize),
}

/// The key of a `whsec_…` secret.
pub fn parse_secret(secret: &str) -> Result<Vec<u8>, SecretError> {
    let b64 = secret
        .strip_prefix(SECRET_PREFIX)
        .ok_or(SecretError::Prefix)?;
    let key = STANDARD.decode(b64).map_err(|_| SecretError::Base64)?;
    if !KEY_BYTES.contains(&key.len()) {
        return Err(SecretError::Length(key.len()));
    }
    Ok(key)
}

/// A new random secret, `whsec_` + base64 of [`GENERATED_KEY_BYTES`] bytes.
pub fn generate_secret() -> String {
    let key: [u8; GENERATED_KEY_BYTES] = rand::random();
    format!("{SECRET_PREFIX}{}", STANDARD.encode(key))
}

/// `v1,<signature>` of one message under one key.
pub fn sign(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The `webhook-signature` header: one signature per key, space-separated.
pub fn signature_header(keys: &[Vec<u8>], id: &str, timestamp: u64, body: &[u8]) -> String {
    keys.iter()
        .map(|k| sign(k, id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks reference libraries' tests.
    #[test]
    fn signs_the_reference_example() {
        let key = parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("secret");
        assert_eq!(
            sign(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn refuses_malformed_secrets_and_generates_valid_ones() {
        assert_eq!(parse_secret("abc"), Err(SecretError::Prefix));
        assert_eq!(parse_secret("whsec_!!!"), Err(SecretError::Base64));
        assert_eq!(parse_secret("whsec_AAAA"), Err(SecretError::Length(3)));
        let secret = generate_secret();
        assert_eq!(
            parse_secret(&secret).map(|k| k.len()),
            Ok(GENERATED_KEY_BYTES)
        );
        assert_ne!(secret, generate_secret());
    }

    #[test]
    fn the_header_carries_one_signature_per_key() {
        let keys = [vec![1u8; 24], vec![2u8; 24]];
        let header = signature_header(&keys, "msg_1", 5, b"{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], sign(&keys[0], "msg_1", 5, b"{}"));
        assert_eq!(parts[1], sign(&keys[1], "msg_1", 5, b"{}"));
        assert_ne!(parts[0], parts[1]);
    }
}
