//! [`Principal`]: who is on the other end of a request or connection, and what they may do.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lattice_engine::DocId;
use lattice_engine::sync::Access;

use super::token::check_claims;
use super::{AuthError, Claims, DocPattern, LATEST_EXPIRY_SECS, Scope};

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
    pub(super) fn from_claims(claims: Claims) -> Result<Principal, String> {
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
            let now = crate::clock::since_epoch();
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
