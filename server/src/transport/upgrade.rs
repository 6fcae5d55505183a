//! The WebSocket upgrade, done here rather than by axum so that the connection's byte stream
//! can be wrapped ([`FirstMessageLimit`]) before the WebSocket library reads from it.
//!
//! The byte stream is read through [`ReadBurst`] (no read buffer held while idle) and
//! [`FirstMessageLimit`]. [`WsUpgrade`] extracts what an HTTP/1.1 upgrade request carries (RFC 6455 §4.2.1);
//! [`WsUpgrade::accept`] answers `101 Switching Protocols` and runs the connection on its own
//! task once hyper hands the socket over, among the server's [`ConnectionTasks`] (so the
//! server's shutdown waits for it).

use std::future::Future;

use axum::extract::FromRequestParts;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{Sink, Stream};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::burst::ReadBurst;
use super::first_message::{FirstMessageLimit, Tripped};
use super::listen::ConnectionTasks;

/// A server-side WebSocket over the upgraded connection. Boxed: the futures that serve it
/// take it by value and keep an argument as long as they run.
pub(crate) type Socket =
    Box<WebSocketStream<FirstMessageLimit<ReadBurst<TokioIo<hyper::upgrade::Upgraded>>>>>;

/// What the protocols need of a WebSocket: messages in and out. The server's sockets are
/// [`Socket`]s; tests drive a handler over any other (an in-memory pipe).
pub(crate) trait WsSocket:
    Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Send + Unpin + 'static
{
}

impl<T> WsSocket for T where
    T: Stream<Item = Result<Message, WsError>>
        + Sink<Message, Error = WsError>
        + Send
        + Unpin
        + 'static
{
}

/// An HTTP/1.1 request to upgrade to a WebSocket.
#[derive(Debug)]
pub(crate) struct WsUpgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
    /// Where the connection's task runs; `None` outside `listen::serve` (then untracked).
    tasks: Option<ConnectionTasks>,
}

/// Why a request is not a WebSocket upgrade (400, or 426 for a missing `Upgrade`).
#[derive(Debug)]
pub(crate) struct NotAnUpgrade(&'static str);

impl IntoResponse for NotAnUpgrade {
    fn into_response(self) -> Response {
        let status = if self.0.contains("Upgrade") {
            StatusCode::UPGRADE_REQUIRED
        } else {
            StatusCode::BAD_REQUEST
        };
        (status, self.0).into_response()
    }
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|part| part.trim().eq_ignore_ascii_case(token))
        })
    })
}

impl<S: Send + Sync> FromRequestParts<S> for WsUpgrade {
    type Rejection = NotAnUpgrade;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if parts.method != Method::GET {
            return Err(NotAnUpgrade("a WebSocket upgrade must be a GET"));
        }
        if !header_has_token(&parts.headers, header::CONNECTION, "upgrade") {
            return Err(NotAnUpgrade("expected `Connection: upgrade`"));
        }
        if !header_has_token(&parts.headers, header::UPGRADE, "websocket") {
            return Err(NotAnUpgrade("expected `Upgrade: websocket`"));
        }
        if parts
            .headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            return Err(NotAnUpgrade("expected `Sec-WebSocket-Version: 13`"));
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .cloned()
            .ok_or(NotAnUpgrade("missing `Sec-WebSocket-Key`"))?;
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(NotAnUpgrade("this connection cannot be upgraded"))?;
        let tasks = parts.extensions.get::<ConnectionTasks>().cloned();
        Ok(WsUpgrade {
            key,
            on_upgrade,
            tasks,
        })
    }
}

impl WsUpgrade {
    /// Answers the upgrade and runs `serve` with the socket on a task of its own.
    /// `first_message_limit` bounds the first message ([`FirstMessageLimit`]); `serve` gets
    /// the flag that says whether that bound stopped the reads. If the client goes away before
    /// the upgrade completes, `serve` is dropped without running (with whatever it owns).
    pub(crate) fn accept<F, Fut>(
        self,
        config: WebSocketConfig,
        first_message_limit: Option<usize>,
        serve: F,
    ) -> Response
    where
        F: FnOnce(Socket, Tripped) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let WsUpgrade {
            key,
            on_upgrade,
            tasks,
        } = self;
        // Boxed and unpacked at once: what an `async move` block captures it keeps for as long
        // as it runs, and this one runs as long as the connection.
        let setup = Box::new((on_upgrade, config, first_message_limit, serve));
        let connection = async move {
            // Moved out in a block of its own, so the box is freed at once.
            let (on_upgrade, config, first_message_limit, serve) = {
                let setup = setup;
                *setup
            };
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let io = ReadBurst::new(TokioIo::new(upgraded));
            let (io, tripped) = FirstMessageLimit::new(io, first_message_limit);
            let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
            serve(Box::new(socket), tripped).await;
        };
        match tasks {
            Some(ConnectionTasks(tracker)) => drop(tracker.spawn(connection)),
            None => drop(tokio::spawn(connection)),
        }
        let accept = derive_accept_key(key.as_bytes());
        let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(value) = HeaderValue::from_str(&accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
        }
        response
    }
}
