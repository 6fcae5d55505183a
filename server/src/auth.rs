//! Access control: signed tokens with document scopes.
//!
//! A token is a standard JWT signed with HMAC-SHA256 (`jsonwebtoken`; no crypto of our own). Its
//! header names the key that signed it (`kid`), its claims name a subject (recorded as the author
//! of every delta), the documents it covers (exact ids, `prefix/*`, or `*`), a [`Scope`]
//! (`read` < `write` < `admin`, a higher scope includes the lower ones) and an expiry. The server
//! holds a [`KeySet`] (several keys, so secrets can be rotated; the first one signs). [`Auth`]
//! turns a token into a [`Principal`] and throttles failed attempts per IP address. See
//! docs/security.md.
//!
//! # Invariants
//! - A token is accepted only with `alg` HS256, a `kid` the server knows, a valid signature, an
//!   `exp` in the future (no leeway) and well-formed claims; anything else is an [`AuthError`].
//! - A [`Principal`] grants nothing outside its patterns: [`Principal::access`] is `None` for an
//!   uncovered document, whether or not that document exists.
//! - A token that verifies is accepted whatever else its address sent: every presented token is
//!   verified (bounded work: at most [`MAX_TOKEN_BYTES`], one HMAC), and only failures are
//!   throttled.
//! - Failed-attempt state is bounded: at most `max_tracked_addresses` addresses are remembered.
//! - Time computed from claims never overflows: an `exp` past [`LATEST_EXPIRY_SECS`] counts as
//!   that instant.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, header};
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use lattice_engine::DocId;
use lattice_engine::sync::Access;
use serde::{Deserialize, Serialize};

use crate::config::{AuthConfig, AuthMode};

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

/// Why a request or connection was not let in. The first group means "unauthenticated"
/// (HTTP 401, close 4401), [`AuthError::Forbidden`] means "not for this document" (403), and
/// [`AuthError::Throttled`] means too many failures from this address (429, close 4029).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("a token is required")]
    Missing,
    #[error("the token has expired")]
    Expired,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token's key id is not known to this server")]
    UnknownKey { kid: Option<String> },
    #[error("tokens must be signed with HS256, not {alg}")]
    UnsupportedAlgorithm { alg: String },
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("malformed token: {reason}")]
    Malformed { reason: String },
    /// The principal does not cover the document, or its scope is too low. One variant with one
    /// message, so a refusal never tells whether the document exists.
    #[error("not permitted")]
    Forbidden { doc: DocId, needed: Scope },
    /// An operation that concerns no single document (the admin listing) needs a scope the
    /// token does not have.
    #[error("not permitted")]
    ScopeTooLow { needed: Scope },
    #[error("too many failed authentication attempts; retry later")]
    Throttled { retry_after: Duration },
}

impl AuthError {
    /// No valid identity (as opposed to forbidden or throttled).
    pub fn is_unauthenticated(&self) -> bool {
        !matches!(
            self,
            AuthError::Forbidden { .. }
                | AuthError::ScopeTooLow { .. }
                | AuthError::Throttled { .. }
        )
    }
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

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
        let now = unix_now();
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

fn check_claims(claims: &Claims) -> Result<Vec<DocPattern>, String> {
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

/// Who is on the other end, and what they may do. Built from a verified token, or
/// [`Principal::open`] when authentication is disabled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    subject: Option<String>,
    scope: Scope,
    docs: Vec<DocPattern>,
    /// Seconds since the Unix epoch.
    expires_at: Option<u64>,
}

impl Principal {
    fn from_claims(claims: Claims) -> Result<Principal, String> {
        let docs = check_claims(&claims)?;
        Ok(Principal {
            subject: Some(claims.sub),
            scope: claims.scope,
            docs,
            expires_at: Some(claims.exp),
        })
    }

    /// Everything, for everyone: the principal of every request when authentication is
    /// disabled (`--no-auth`). No subject, no expiry.
    pub fn open() -> Principal {
        Principal {
            subject: None,
            scope: Scope::Admin,
            docs: vec![DocPattern::All],
            expires_at: None,
        }
    }

    /// The token's subject (the author recorded with deltas); `None` when auth is disabled.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    pub fn scope(&self) -> Scope {
        self.scope
    }

    pub fn patterns(&self) -> &[DocPattern] {
        &self.docs
    }

    /// When the token expires (at the latest [`LATEST_EXPIRY_SECS`]); `None` when auth is
    /// disabled.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at.map(|s| {
            let capped = Duration::from_secs(s.min(LATEST_EXPIRY_SECS));
            // Representable on every platform; the fallback only guards against a clock type
            // narrower than any Rust supports today.
            UNIX_EPOCH.checked_add(capped).unwrap_or(UNIX_EPOCH)
        })
    }

    /// Time until expiry (zero if it passed); `None` if it never expires. Computed on
    /// durations since the epoch, so no `exp` can overflow it.
    pub fn time_left(&self) -> Option<Duration> {
        self.expires_at.map(|s| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO);
            Duration::from_secs(s.min(LATEST_EXPIRY_SECS)).saturating_sub(now)
        })
    }

    pub fn covers(&self, doc: &DocId) -> bool {
        self.docs.iter().any(|p| p.covers(doc))
    }

    /// What a subscription to `doc` gets: `None` if the token does not cover it, `Read` for a
    /// read scope, `Write` for write and admin.
    pub fn access(&self, doc: &DocId) -> Option<Access> {
        if !self.covers(doc) {
            return None;
        }
        Some(match self.scope {
            Scope::Read => Access::Read,
            Scope::Write | Scope::Admin => Access::Write,
        })
    }

    /// `Ok` if this principal has at least `needed` on the documents it covers (for what
    /// concerns no single document, like the admin listing, which is then limited to them).
    pub fn require_scope(&self, needed: Scope) -> Result<(), AuthError> {
        if self.scope >= needed {
            Ok(())
        } else {
            Err(AuthError::ScopeTooLow { needed })
        }
    }

    /// `Ok` if this principal covers `doc` with at least `needed`.
    pub fn require(&self, doc: &DocId, needed: Scope) -> Result<(), AuthError> {
        if self.covers(doc) && self.scope >= needed {
            Ok(())
        } else {
            Err(AuthError::Forbidden {
                doc: doc.clone(),
                needed,
            })
        }
    }
}

/// Per-address throttle of failed authentication attempts, with bounded memory.
///
/// A governor token bucket per address counts failures. It is consulted only after a token
/// failed to verify, so it never refuses a valid token: a blocked address is one whose *failing*
/// attempts get [`AuthError::Throttled`] (with the time until a cell frees) instead of the
/// reason. When `max_tracked` addresses are remembered and none can be forgotten, a failure from
/// a new address counts as over the limit (fail closed: only failing requests are affected).
struct FailureLimiter {
    buckets: DefaultKeyedRateLimiter<IpAddr>,
    max_tracked: usize,
}

impl fmt::Debug for FailureLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailureLimiter")
            .field("tracked", &self.buckets.len())
            .field("max_tracked", &self.max_tracked)
            .finish_non_exhaustive()
    }
}

/// How long a failure from an address the throttle has no room for is told to wait.
const UNTRACKED_RETRY_AFTER: Duration = Duration::from_secs(60);

impl FailureLimiter {
    fn new(per_minute: u32, max_tracked: usize) -> FailureLimiter {
        let n = std::num::NonZeroU32::new(per_minute).unwrap_or(std::num::NonZeroU32::MIN);
        FailureLimiter {
            buckets: RateLimiter::keyed(Quota::per_minute(n).allow_burst(n)),
            max_tracked: max_tracked.max(1),
        }
    }

    /// Counts a failure from `ip`; `Some(retry_after)` if it is over the limit.
    fn failed(&self, ip: IpAddr) -> Option<Duration> {
        if self.buckets.len() >= self.max_tracked {
            self.buckets.retain_recent();
            self.buckets.shrink_to_fit();
        }
        if self.buckets.len() >= self.max_tracked {
            // No room to remember another address, and checking a key inserts it.
            return Some(UNTRACKED_RETRY_AFTER);
        }
        match self.buckets.check_key(&ip) {
            Ok(()) => None,
            Err(not_until) => Some(not_until.wait_time_from(self.buckets.clock().now())),
        }
    }
}

/// The server's authentication state: the configured mode and the failure throttle.
#[derive(Debug)]
pub(crate) struct Auth {
    mode: AuthMode,
    failures: FailureLimiter,
}

impl Auth {
    pub(crate) fn new(config: &AuthConfig) -> Auth {
        Auth {
            mode: config.mode.clone(),
            failures: FailureLimiter::new(
                config.failed_attempts_per_minute,
                config.max_tracked_addresses,
            ),
        }
    }

    pub(crate) fn is_required(&self) -> bool {
        matches!(self.mode, AuthMode::Required(_))
    }

    /// Turns a token presented from `ip` into a principal. With auth disabled every caller is
    /// [`Principal::open`]. The token is verified first, so a valid one always passes, whatever
    /// else came from its address (every user behind one proxy shares it); a token that fails
    /// counts against its address, and once the address is over the limit its failures are
    /// answered with [`AuthError::Throttled`].
    pub(crate) fn authenticate(
        &self,
        token: Option<&str>,
        ip: IpAddr,
    ) -> Result<Principal, AuthError> {
        let keys = match &self.mode {
            AuthMode::Disabled => return Ok(Principal::open()),
            AuthMode::Required(keys) => keys,
        };
        let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
        keys.verify(token)
            .map_err(|e| match self.failures.failed(ip) {
                Some(retry_after) => AuthError::Throttled { retry_after },
                None => e,
            })
    }
}

/// The token of an `Authorization: Bearer <token>` header, if there is one.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Authenticates an HTTP request (or WebSocket upgrade): the `Authorization: Bearer` header
/// wins over the `?token=` query parameter. Endpoints then check the document with
/// [`Principal::access`] or [`Principal::require`].
pub(crate) fn authorize(
    state: &crate::ServerState,
    headers: &HeaderMap,
    query_token: Option<&str>,
    ip: IpAddr,
) -> Result<Principal, AuthError> {
    let token = bearer_token(headers).or(query_token);
    state.auth.authenticate(token, ip)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn doc(s: &str) -> DocId {
        DocId::new(s).unwrap()
    }

    fn keys() -> KeySet {
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
        let t = keys()
            .mint(
                "a",
                &["d".into()],
                Scope::Admin,
                Duration::from_secs(60),
                None,
            )
            .unwrap();
        let p = keys().verify(&t).unwrap();
        for s in [Scope::Read, Scope::Write, Scope::Admin] {
            assert!(p.require(&doc("d"), s).is_ok());
        }
        assert_eq!(p.access(&doc("d")), Some(Access::Write));
        assert_eq!(p.access(&doc("e")), None);
        let t = keys()
            .mint(
                "r",
                &["d".into()],
                Scope::Read,
                Duration::from_secs(60),
                None,
            )
            .unwrap();
        let p = keys().verify(&t).unwrap();
        assert_eq!(p.access(&doc("d")), Some(Access::Read));
        assert!(p.require(&doc("d"), Scope::Write).is_err());
    }

    #[test]
    fn verify_refuses_what_it_must() {
        let ks = keys();
        let good = ks
            .mint(
                "alice",
                &["x".into()],
                Scope::Write,
                Duration::from_secs(60),
                None,
            )
            .unwrap();
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
        let t = forged
            .mint(
                "eve",
                &["*".into()],
                Scope::Admin,
                Duration::from_secs(60),
                None,
            )
            .unwrap();
        assert_eq!(ks.verify(&t), Err(AuthError::BadSignature));
        // Expired.
        let claims = Claims {
            sub: "a".into(),
            docs: vec!["x".into()],
            scope: Scope::Read,
            exp: unix_now() - 1,
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
    fn failures_are_throttled_per_address_with_bounded_memory() {
        let limiter = FailureLimiter::new(3, 2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let c: IpAddr = [10, 0, 0, 3].into();
        for _ in 0..3 {
            assert!(limiter.failed(a).is_none());
        }
        let wait = limiter.failed(a).expect("over the limit");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(limiter.failed(b).is_none());
        // Two addresses tracked, both recently active: a third fails closed.
        assert_eq!(limiter.failed(c), Some(UNTRACKED_RETRY_AFTER));
        assert!(limiter.buckets.len() <= 2);
    }

    #[test]
    fn a_blocked_address_still_gets_in_with_a_valid_token() {
        let ks = keys();
        let mut config = AuthConfig::required(ks.clone());
        config.failed_attempts_per_minute = 2;
        let auth = Auth::new(&config);
        let ip: IpAddr = [10, 0, 0, 9].into();
        let good = ks
            .mint(
                "a",
                &["d".into()],
                Scope::Read,
                Duration::from_secs(60),
                None,
            )
            .unwrap();
        for _ in 0..2 {
            assert!(matches!(
                auth.authenticate(Some("garbage"), ip),
                Err(AuthError::Malformed { .. })
            ));
        }
        for _ in 0..10 {
            assert!(matches!(
                auth.authenticate(Some("garbage"), ip),
                Err(AuthError::Throttled { .. })
            ));
            assert!(auth.authenticate(Some(&good), ip).is_ok());
        }
        // A request without a token is not a guess and not throttled.
        assert_eq!(auth.authenticate(None, ip), Err(AuthError::Missing));
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
