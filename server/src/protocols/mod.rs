//! The protocols clients speak, each only its own message handling on the mechanics of
//! `transport/`: [`native`] is `/v1/sync` (the MessagePack protocol of docs/protocol.md),
//! [`yjs`] is `/yjs/{doc}` (the y-websocket protocol of stock Yjs clients), [`hocuspocus`] is
//! `/hocuspocus` (`@hocuspocus/provider`, documents multiplexed on one socket), [`feed`] the HTTP
//! readers (SSE, long polling) and [`write`] the HTTP writes and state reads
//! (docs/http-api.md); [`lifecycle`] is how every WebSocket connection ends. All reach
//! documents only through rooms (`rooms::join_room`,
//! `RoomCmd`).

use std::sync::Arc;

use axum::Router;
use axum::routing::get;

use crate::state::ServerState;

pub(crate) mod feed;
pub(crate) mod hocuspocus;
pub(crate) mod lifecycle;
pub(crate) mod native;
pub(crate) mod write;
pub(crate) mod yjs;

/// The HTTP transports' routes.
pub(crate) fn http_routes() -> Router<Arc<ServerState>> {
    Router::new()
        .route("/v1/events/{*doc}", get(feed::events))
        .route(
            "/v1/updates/{*doc}",
            get(feed::updates).post(write::post_update),
        )
        .route("/v1/state/{*doc}", get(write::get_state))
        .route(
            "/v1/presence/{*doc}",
            get(write::get_presence).post(write::post_presence),
        )
}
