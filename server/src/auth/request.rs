//! Where a request's token comes from: the `Authorization: Bearer` header, else `?token=`.

use std::net::IpAddr;

use axum::http::{HeaderMap, header};

use super::{Auth, AuthError, Principal};

/// The `?token=` query parameter, for clients that cannot set headers (browsers' WebSocket,
/// `EventSource`).
#[derive(Debug, serde::Deserialize)]
pub(crate) struct TokenQuery {
    pub token: Option<String>,
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
/// wins over the `?token=` query parameter. It only authenticates: endpoints then check the document with
/// [`Principal::access`] or [`Principal::require`].
pub(crate) fn authenticate_request(
    auth: &Auth,
    headers: &HeaderMap,
    query_token: Option<&str>,
    ip: IpAddr,
) -> Result<Principal, AuthError> {
    let token = bearer_token(headers).or(query_token);
    auth.authenticate(token, ip)
}
