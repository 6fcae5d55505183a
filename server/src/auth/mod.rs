//! Access control: signed tokens with document scopes.
//!
//! A token is a standard JWT signed with HMAC-SHA256 (`jsonwebtoken`; no crypto of our own). Its
//! header names the key that signed it (`kid`), its claims name a subject (recorded as the author
//! of every delta), the documents it covers (exact ids, `prefix/*`, or `*`), a [`Scope`]
//! (`read` < `write` < `admin`, a higher scope includes the lower ones) and an expiry. The server
//! holds a [`KeySet`] (several keys, so secrets can be rotated; the first one signs). `Auth`
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
//!
//! # Map
//! - `token.rs`: the token format: [`Scope`], [`DocPattern`], [`Claims`], the [`KeySet`] that
//!   mints and verifies tokens, and their limits.
//! - `principal.rs`: [`Principal`], what a verified token (or `--no-auth`) lets its bearer do.
//! - `throttle.rs`: the per-address throttle of failed attempts.
//! - `request.rs`: where a request's token comes from (header or query).
//! - here: [`AuthConfig`] / [`AuthMode`] (what the operator chose), [`AuthError`], and `Auth`,
//!   which ties them together for the server.

mod principal;
mod request;
mod throttle;
mod token;

use std::net::IpAddr;
use std::time::Duration;

use lattice_engine::DocId;

pub use principal::Principal;
pub(crate) use request::{TokenQuery, authenticate_request, bearer_token};
use throttle::FailureLimiter;
pub use token::{
    Claims, DEFAULT_KID, DocPattern, KeyError, KeySet, LATEST_EXPIRY_SECS, MAX_KID_BYTES,
    MAX_PATTERNS, MAX_SUBJECT_BYTES, MAX_TOKEN_BYTES, MIN_SECRET_BYTES, MintError, Scope,
    parse_ttl,
};

/// Access control (docs/security.md).
#[derive(Clone, Debug)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// Failed authentication attempts (a token that does not verify) allowed per IP address per
    /// minute, as a burst; past it the address gets HTTP 429 / close 4029 until it refills.
    pub failed_attempts_per_minute: u32,
    /// Addresses the failure throttle remembers at most (bounded memory).
    pub max_tracked_addresses: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::Disabled,
            failed_attempts_per_minute: 20,
            max_tracked_addresses: 65_536,
        }
    }
}

impl AuthConfig {
    /// Tokens required, signed by one of `keys`.
    pub fn required(keys: KeySet) -> Self {
        Self {
            mode: AuthMode::Required(keys),
            ..Self::default()
        }
    }
}

/// Whether tokens are required.
#[derive(Clone, Debug)]
pub enum AuthMode {
    /// Everyone may do everything (`--no-auth`; logged as a warning at start).
    Disabled,
    /// Every endpoint but `/healthz`, `/readyz` and `/metrics` requires a token signed by one
    /// of these keys.
    Required(KeySet),
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::token::tests::{keys, minted};
    use super::*;

    #[test]
    fn a_blocked_address_still_gets_in_with_a_valid_token() {
        let ks = keys();
        let mut config = AuthConfig::required(ks.clone());
        config.failed_attempts_per_minute = 2;
        let auth = Auth::new(&config);
        let ip: IpAddr = [10, 0, 0, 9].into();
        let good = minted(&ks, "a", "d", Scope::Read);
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
}
