//! The prologue of every per-document endpoint, as an extractor ([`DocCall`]): parse the
//! query, authenticate (`Authorization: Bearer`, else `?token=`), parse the document id from
//! the path and require the endpoint's scope on it, in that order, so a refusal never depends
//! on whether the document exists.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, Path, Query};
use axum::http::request::Parts;
use lattice_engine::DocId;
use serde::de::DeserializeOwned;

use super::{ApiError, Internal};
use crate::auth::{Principal, Scope, authenticate_request};
use crate::state::ServerState;

/// A query that may carry `?token=`.
pub(crate) trait TokenParam {
    fn token(&self) -> Option<&str>;
}

/// Implements [`TokenParam`] for query structs with a `token: Option<String>` field.
#[macro_export]
#[doc(hidden)]
macro_rules! token_param {
    ($($t:ty),*) => {
        $(impl $crate::http::extract::TokenParam for $t {
            fn token(&self) -> Option<&str> {
                self.token.as_deref()
            }
        })*
    };
}

impl TokenParam for crate::auth::TokenQuery {
    fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }
}

/// The scope an endpoint requires on its document.
pub(crate) trait Needs {
    const SCOPE: Scope;
}

/// `read` on the document.
#[derive(Debug)]
pub(crate) struct NeedsRead;
/// `write` on the document.
#[derive(Debug)]
pub(crate) struct NeedsWrite;
/// `admin` on the document.
#[derive(Debug)]
pub(crate) struct NeedsAdmin;

impl Needs for NeedsRead {
    const SCOPE: Scope = Scope::Read;
}
impl Needs for NeedsWrite {
    const SCOPE: Scope = Scope::Write;
}
impl Needs for NeedsAdmin {
    const SCOPE: Scope = Scope::Admin;
}

/// A request on one document by a principal that holds `N`'s scope on it, with its query.
#[derive(Debug)]
pub(crate) struct DocCall<P, N> {
    pub principal: Principal,
    pub doc: DocId,
    pub params: P,
    pub remote: SocketAddr,
    needs: PhantomData<N>,
}

impl<P, N> FromRequestParts<Arc<ServerState>> for DocCall<P, N>
where
    P: DeserializeOwned + TokenParam + Send,
    N: Needs + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ServerState>,
    ) -> Result<Self, ApiError> {
        let Query(params) = Query::<P>::from_request_parts(parts, state).await?;
        let remote = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| *addr)
            .ok_or(Internal::NoPeerAddress)?;
        let Path(doc) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest {
                code: "bad_path",
                message: e.body_text(),
            })?;
        let principal =
            authenticate_request(&state.auth, &parts.headers, params.token(), remote.ip())?;
        let doc = DocId::new(doc)?;
        principal.require(&doc, N::SCOPE)?;
        Ok(DocCall {
            principal,
            doc,
            params,
            remote,
            needs: PhantomData,
        })
    }
}
