//! Transport mechanics shared by the protocols: accepting TCP connections and reading HTTP
//! requests within bounds ([`listen`]), the WebSocket upgrade ([`upgrade`]) with reads in
//! bursts ([`burst`]) and a bound on the first message ([`first_message`]), a connection's outbox, bounded in frames and bytes
//! ([`outbox`]), the writer that drains it and finishes a connection ([`writer`]), connection
//! slots ([`slots`]), rate limits ([`rate`]), the close codes ([`close`]) and the event format of
//! the HTTP transports ([`events`]) and the answers of their writes by key ([`idempotency`]).

pub(crate) mod burst;
pub(crate) mod close;
pub(crate) mod events;
pub(crate) mod first_message;
pub(crate) mod idempotency;
pub(crate) mod listen;
pub(crate) mod outbox;
pub(crate) mod rate;
pub(crate) mod slots;
pub(crate) mod upgrade;
pub(crate) mod writer;
