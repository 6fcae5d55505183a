//! Transport mechanics shared by the protocols: accepting TCP connections and reading HTTP
//! requests within bounds ([`listen`]), the WebSocket upgrade ([`upgrade`]) with a bound on the
//! first message ([`first_message`]), and a connection's outbox, bounded in frames and bytes
//! ([`outbox`]).

pub(crate) mod first_message;
pub(crate) mod listen;
pub(crate) mod outbox;
pub(crate) mod upgrade;
