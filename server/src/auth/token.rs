//! The token format: a JWT signed with HMAC-SHA256 whose claims name a subject, document
//! patterns, a [`Scope`] and an expiry; the [`KeySet`] that mints and verifies them.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use lattice_engine::DocId;
use serde::{Deserialize, Serialize};

use super::{AuthError, Principal};

/// Longest token accepted, checked before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Shortest secret accepted: HMAC-SHA256 wants at least its output size.
pub const MIN_SECRET_BYTES: usize = 32;
/// Longest subject accepted (it is stored with every delta).
pub const MAX_SUBJECT_BYTES: usize = 256;
/// Most document patterns one token may carry.
pub const MAX_PATTERNS: usize = 64;
/// Longest key id accepted.
pub const MAX_KID_BYTES: usize = 64;
/// Key id of a secret given without one.
pub const DEFAULT_KID: &str = "default";
/// The latest expiry honoured, in seconds since the Unix epoch (9999-12-31T23:59:59Z). A token
/// with a later `exp` (up to `u64::MAX`, "never") is valid and counts as expiring then, which
/// every platform's clock types can represent.
pub const LATEST_EXPIRY_SECS: u64 = 253_402_300_799;

/// What a token allows on the documents it covers. Ordered: `Read < Write < Admin`, and a
/// higher scope includes every lower one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Receive the document and its updates, publish presence.
    Read,
    /// Also send changes.
    Write,
    /// Also use the admin endpoints.
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = MintError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Scope::Read),
            "write" => Ok(Scope::Write),
            "admin" => Ok(Scope::Admin),
            other => Err(MintError::InvalidClaims {
                reason: format!("scope {other:?} is not one of read, write, admin"),
            }),
        }
    }
}

/// One entry of a token's `docs` claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DocPattern {
    /// `*`: every document.
    All,
    /// `team-a/*`: every document whose id starts with `team-a/` (at any depth), not `team-a`
    /// itself. Holds the prefix with its trailing slash.
    Prefix(String),
    /// An exact document id.
    Exact(DocId),
}

impl DocPattern {
    /// Parses `*`, `<doc id>/*` or `<doc id>`; a `*` anywhere else is refused.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "*" {
            return Ok(DocPattern::All);
        }
        if let Some(prefix) = s.strip_suffix("/*") {
            let id = DocId::new(prefix).map_err(|e| format!("pattern {s:?}: {e}"))?;
            return Ok(DocPattern::Prefix(format!("{}/", id.as_str())));
        }
        DocId::new(s)
            .map(DocPattern::Exact)
            .map_err(|e| format!("pattern {s:?}: {e}"))
    }

    pub fn covers(&self, doc: &DocId) -> bool {
        match self {
            DocPattern::All => true,
            DocPattern::Prefix(p) => doc.as_str().starts_with(p.as_str()),
            DocPattern::Exact(id) => id == doc,
        }
    }
}

impl fmt::Display for DocPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DocPattern::All => f.write_str("*"),
            DocPattern::Prefix(p) => write!(f, "{p}*"),
            DocPattern::Exact(id) => f.write_str(id.as_str()),
        }
    }
}

/// The claims of a Lattice token (the JWT payload).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id, recorded as the author of every delta sent with this token.
    pub sub: String,
    /// Document patterns: exact ids, `prefix/*`, or `*`.
    pub docs: Vec<String>,
    pub scope: Scope,
    /// Expiry, seconds since the Unix epoch. Required.
    pub exp: u64,
    /// Issued at, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

/// Why a key set could not be built from configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("no secret given")]
    Empty,
    #[error(
        "the secret for key id {kid:?} is {len} bytes; at least {MIN_SECRET_BYTES} are required"
    )]
    TooShort { kid: String, len: usize },
    #[error("key id {kid:?} is invalid: 1–{MAX_KID_BYTES} characters of [A-Za-z0-9._-]")]
    InvalidKid { kid: String },
    #[error("key id {kid:?} appears twice")]
    DuplicateKid { kid: String },
}

/// Why a token could not be minted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MintError {
    #[error("invalid claims: {reason}")]
    InvalidClaims { reason: String },
    #[error("no key with id {kid:?}")]
    UnknownKey { kid: String },
    #[error("signing failed: {reason}")]
    Signing { reason: String },
}

struct Key {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

/// The server's signing keys: `(kid, secret)` pairs. The first one signs new tokens; every one
/// verifies, which is what lets a secret be rotated without logging everyone out.
#[derive(Clone)]
pub struct KeySet {
    keys: std::sync::Arc<Vec<Key>>,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secrets.
        f.debug_struct("KeySet")
            .field("kids", &self.kids().collect::<Vec<_>>())
            .finish()
    }
}

fn valid_kid(kid: &str) -> bool {
    !kid.is_empty()
        && kid.len() <= MAX_KID_BYTES
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl KeySet {
    /// Keys from `(kid, secret)` pairs; the first one signs.
    pub fn new(keys: Vec<(String, Vec<u8>)>) -> Result<KeySet, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        let mut out: Vec<Key> = Vec::with_capacity(keys.len());
        for (kid, secret) in keys {
            if !valid_kid(&kid) {
                return Err(KeyError::InvalidKid { kid });
            }
            if secret.len() < MIN_SECRET_BYTES {
                return Err(KeyError::TooShort {
                    kid,
                    len: secret.len(),
                });
            }
            if out.iter().any(|k| k.kid == kid) {
                return Err(KeyError::DuplicateKid { kid });
            }
            out.push(Key {
                encoding: EncodingKey::from_secret(&secret),
                decoding: DecodingKey::from_secret(&secret),
                kid,
            });
        }
        Ok(KeySet {
            keys: std::sync::Arc::new(out),
        })
    }

    /// Parses `--auth-secret` items: each `kid:secret`, or a bare secret (key id `default`).
    /// Each item may itself be a comma-separated list. The first key signs.
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<KeySet, KeyError> {
        let mut keys = Vec::new();
        for item in items {
            for part in item.as_ref().split(',').map(str::trim) {
                if part.is_empty() {
                    continue;
                }
                let (kid, secret) = match part.split_once(':') {
                    Some((kid, secret)) => (kid, secret),
                    None => (DEFAULT_KID, part),
                };
                keys.push((kid.to_string(), secret.as_bytes().to_vec()));
            }
        }
        KeySet::new(keys)
    }

    /// A fresh random 256-bit key (from the OS-seeded CSPRNG), for a run without a configured
    /// secret. Tokens signed with it die with the process.
    pub fn generate() -> KeySet {
        use rand::RngCore;
        let mut secret = vec![0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let key = Key {
            encoding: EncodingKey::from_secret(&secret),
            decoding: DecodingKey::from_secret(&secret),
            kid: "generated".into(),
        };
        KeySet {
            keys: std::sync::Arc::new(vec![key]),
        }
    }

    /// Key ids, the signing one first.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.kid.as_str())
    }

    /// The key id new tokens are signed with.
    pub fn signing_kid(&self) -> &str {
        self.keys.first().map_or("", |k| k.kid.as_str())
    }

    /// Signs a token for `subject` on `docs` with `scope`, valid for `ttl` from now, with the
    /// key `kid` (the signing key if `None`). Claims the server would refuse are refused here.
    pub fn mint(
        &self,
        subject: &str,
        docs: &[String],
        scope: Scope,
        ttl: Duration,
        kid: Option<&str>,
    ) -> Result<String, MintError> {
        let now = crate::clock::now_secs();
        let claims = Claims {
            sub: subject.to_string(),
            docs: docs.to_vec(),
            scope,
            exp: now.saturating_add(ttl.as_secs()),
            iat: Some(now),
        };
        self.mint_claims(&claims, kid)
    }

    /// Signs exactly these claims (tests use it for tokens that are already expired).
    pub fn mint_claims(&self, claims: &Claims, kid: Option<&str>) -> Result<String, MintError> {
        check_claims(claims).map_err(|reason| MintError::InvalidClaims { reason })?;
        let key = match kid {
            None => self.keys.first(),
            Some(kid) => self.keys.iter().find(|k| k.kid == kid),
        }
        .ok_or_else(|| MintError::UnknownKey {
            kid: kid.unwrap_or_default().to_string(),
        })?;
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, claims, &key.encoding).map_err(|e| MintError::Signing {
            reason: e.to_string(),
        })
    }

    /// Checks a token: size, `alg` HS256, a known `kid`, the signature, `exp` (and `nbf` if
    /// present), then the claims' shape.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Malformed {
                reason: format!("longer than {MAX_TOKEN_BYTES} bytes"),
            });
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed {
            reason: e.to_string(),
        })?;
        if header.alg != Algorithm::HS256 {
            return Err(AuthError::UnsupportedAlgorithm {
                alg: format!("{:?}", header.alg),
            });
        }
        let Some(kid) = header.kid else {
            return Err(AuthError::UnknownKey { kid: None });
        };
        let Some(key) = self.keys.iter().find(|k| k.kid == kid) else {
            return Err(AuthError::UnknownKey {
                kid: Some(kid.chars().take(MAX_KID_BYTES).collect()),
            });
        };
        let mut validation = Validation::new(Algorithm::HS256);
        // RFC 7519: the token is refused *on or after* `exp`, which is when the live-session
        // timer closes connections too (jsonwebtoken alone would accept `exp == now`).
        validation.leeway = 0;
        validation.reject_tokens_expiring_in_less_than = 1;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidAlgorithm => AuthError::UnsupportedAlgorithm {
                    alg: format!("{:?}", header.alg),
                },
                _ => AuthError::Malformed {
                    reason: e.to_string(),
                },
            },
        )?;
        Principal::from_claims(data.claims).map_err(|reason| AuthError::Malformed { reason })
    }
}

pub(super) fn check_claims(claims: &Claims) -> Result<Vec<DocPattern>, String> {
    if claims.sub.is_empty() || claims.sub.len() > MAX_SUBJECT_BYTES {
        return Err(format!("the subject must be 1–{MAX_SUBJECT_BYTES} bytes"));
    }
    if claims.sub.chars().any(char::is_control) {
        return Err("the subject contains control characters".into());
    }
    if claims.docs.is_empty() || claims.docs.len() > MAX_PATTERNS {
        return Err(format!("a token covers 1–{MAX_PATTERNS} document patterns"));
    }
    claims.docs.iter().map(|d| DocPattern::parse(d)).collect()
}

/// Parses a token lifetime: a number followed by `s`, `m`, `h` or `d` (`30s`, `15m`, `1h`,
/// `7d`). Zero is refused.
pub fn parse_ttl(s: &str) -> Result<Duration, MintError> {
    let bad = || MintError::InvalidClaims {
        reason: format!("lifetime {s:?}: expected a number and s, m, h or d (like 30s, 1h, 7d)"),
    };
    let s = s.trim();
    let unit = s.chars().last().ok_or_else(bad)?;
    let seconds_per = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        _ => return Err(bad()),
    };
    let n: u64 = s[..s.len() - 1].parse().map_err(|_| bad())?;
    match n.checked_mul(seconds_per) {
        Some(secs) if secs > 0 => Ok(Duration::from_secs(secs)),
        _ => Err(bad()),
    }
}

#[cfg(test)]
pub(super) mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use lattice_engine::sync::Access;
    use std::time::{SystemTime, UNIX_EPOCH};

    /// A token from `ks` for `sub` on the one pattern `doc`, valid for a minute.
    pub(in crate::auth) fn minted(ks: &KeySet, sub: &str, doc: &str, scope: Scope) -> String {
        ks.mint(sub, &[doc.into()], scope, Duration::from_secs(60), None)
            .unwrap()
    }

    fn doc(s: &str) -> DocId {
        DocId::new(s).unwrap()
    }

    pub(in crate::auth) fn keys() -> KeySet {
        KeySet::parse(&["k2:0123456789abcdef0123456789abcdef,k1:fedcba9876543210fedcba9876543210"])
            .unwrap()
    }

    #[test]
    fn patterns_match_exact_prefix_and_all() {
        let p = DocPattern::parse("team-a/*").unwrap();
        assert!(p.covers(&doc("team-a/x")));
        assert!(p.covers(&doc("team-a/x/y")));
        assert!(!p.covers(&doc("team-a")));
        assert!(!p.covers(&doc("team-ab/x")));
        assert!(
            DocPattern::parse("*")
                .unwrap()
                .covers(&doc("anything/at/all"))
        );
        let e = DocPattern::parse("notes").unwrap();
        assert!(e.covers(&doc("notes")));
        assert!(!e.covers(&doc("notes/a")));
        for bad in ["", "a*", "a/*/b", "*/x", "a/**", "../x/*", "a b"] {
            assert!(DocPattern::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            DocPattern::parse("team-a/*").unwrap().to_string(),
            "team-a/*"
        );
    }

    #[test]
    fn higher_scopes_include_lower_ones() {
        assert!(Scope::Admin > Scope::Write && Scope::Write > Scope::Read);
        let t = minted(&keys(), "a", "d", Scope::Admin);
        let p = keys().verify(&t).unwrap();
        for s in [Scope::Read, Scope::Write, Scope::Admin] {
            assert!(p.require(&doc("d"), s).is_ok());
        }
        assert_eq!(p.access(&doc("d")), Some(Access::Write));
        assert_eq!(p.access(&doc("e")), None);
        let t = minted(&keys(), "r", "d", Scope::Read);
        let p = keys().verify(&t).unwrap();
        assert_eq!(p.access(&doc("d")), Some(Access::Read));
        assert!(p.require(&doc("d"), Scope::Write).is_err());
    }

    #[test]
    fn verify_refuses_what_it_must() {
        let ks = keys();
        let good = minted(&ks, "alice", "x", Scope::Write);
        let p = ks.verify(&good).unwrap();
        assert_eq!(p.subject(), Some("alice"));
        // Every key verifies; the first one signs.
        assert_eq!(ks.signing_kid(), "k2");
        let old = ks
            .mint(
                "bob",
                &["x".into()],
                Scope::Read,
                Duration::from_secs(60),
                Some("k1"),
            )
            .unwrap();
        assert!(ks.verify(&old).is_ok());
        // A key set without k1 refuses it by kid.
        let rotated = KeySet::parse(&["k2:0123456789abcdef0123456789abcdef"]).unwrap();
        assert!(matches!(
            rotated.verify(&old),
            Err(AuthError::UnknownKey { kid: Some(k) }) if k == "k1"
        ));
        // Same kid, other secret: bad signature.
        let forged = KeySet::parse(&["k2:another-secret-that-is-long-enough!!"]).unwrap();
        let t = minted(&forged, "eve", "*", Scope::Admin);
        assert_eq!(ks.verify(&t), Err(AuthError::BadSignature));
        // Expired.
        let claims = Claims {
            sub: "a".into(),
            docs: vec!["x".into()],
            scope: Scope::Read,
            exp: crate::clock::now_secs() - 1,
            iat: None,
        };
        let t = ks.mint_claims(&claims, None).unwrap();
        assert_eq!(ks.verify(&t), Err(AuthError::Expired));
        // alg none and other algorithms.
        let parts: Vec<&str> = good.split('.').collect();
        let none_header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIiwia2lkIjoiazIifQ"; // {"alg":"none",...}
        assert!(ks.verify(&format!("{none_header}.{}.", parts[1])).is_err());
        let hs512 = "eyJhbGciOiJIUzUxMiIsInR5cCI6IkpXVCIsImtpZCI6ImsyIn0"; // {"alg":"HS512",...}
        assert!(matches!(
            ks.verify(&format!("{hs512}.{}.{}", parts[1], parts[2])),
            Err(AuthError::UnsupportedAlgorithm { .. })
        ));
        // Garbage and oversize.
        assert!(matches!(
            ks.verify("nope"),
            Err(AuthError::Malformed { .. })
        ));
        assert!(matches!(
            ks.verify(&"a".repeat(MAX_TOKEN_BYTES + 1)),
            Err(AuthError::Malformed { .. })
        ));
    }

    #[test]
    fn key_configuration_is_checked() {
        assert_eq!(
            KeySet::parse(&["short"]).unwrap_err(),
            KeyError::TooShort {
                kid: DEFAULT_KID.into(),
                len: 5
            }
        );
        assert!(matches!(
            KeySet::parse(&["a b:0123456789abcdef0123456789abcdef"]),
            Err(KeyError::InvalidKid { .. })
        ));
        assert!(matches!(
            KeySet::parse(&[
                "k:0123456789abcdef0123456789abcdef",
                "k:0123456789abcdef0123456789abcdeX"
            ]),
            Err(KeyError::DuplicateKid { .. })
        ));
        assert_eq!(KeySet::parse::<&str>(&[]).unwrap_err(), KeyError::Empty);
        let bare = KeySet::parse(&["0123456789abcdef0123456789abcdef"]).unwrap();
        assert_eq!(bare.signing_kid(), DEFAULT_KID);
        assert!(!format!("{bare:?}").contains("0123456789"));
    }

    #[test]
    fn mint_refuses_claims_the_server_would_refuse() {
        let ks = keys();
        let ttl = Duration::from_secs(60);
        assert!(ks.mint("", &["x".into()], Scope::Read, ttl, None).is_err());
        assert!(ks.mint("a", &[], Scope::Read, ttl, None).is_err());
        assert!(
            ks.mint("a", &["x*".into()], Scope::Read, ttl, None)
                .is_err()
        );
        assert!(matches!(
            ks.mint("a", &["x".into()], Scope::Read, ttl, Some("nope")),
            Err(MintError::UnknownKey { .. })
        ));
    }

    #[test]
    fn ttls_parse() {
        assert_eq!(parse_ttl("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_ttl("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_ttl("1h").unwrap(), Duration::from_secs(3_600));
        assert_eq!(parse_ttl("7d").unwrap(), Duration::from_secs(604_800));
        for bad in [
            "",
            "h",
            "0s",
            "1",
            "1w",
            "-1h",
            "1.5h",
            "99999999999999999999d",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn expiry_far_in_the_future_is_capped_not_an_overflow() {
        let ks = keys();
        for exp in [u64::MAX, u64::MAX - 1, LATEST_EXPIRY_SECS + 1, 1 << 40] {
            let claims = Claims {
                sub: "forever".into(),
                docs: vec!["d".into()],
                scope: Scope::Read,
                exp,
                iat: None,
            };
            let p = ks.verify(&ks.mint_claims(&claims, None).unwrap()).unwrap();
            let at = p.expires_at().unwrap();
            assert!(at > SystemTime::now());
            assert!(at <= UNIX_EPOCH + Duration::from_secs(LATEST_EXPIRY_SECS));
            let left = p.time_left().unwrap();
            assert!(
                left > Duration::from_secs(10_000 * 86_400),
                "{exp}: {left:?}"
            );
        }
    }
}
