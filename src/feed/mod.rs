//! The status-change feed: how every responder learns, within about a second, that a
//! certificate's status changed, and how it proves that it is still learning.
//!
//! - [`payload`]: what a status change says on the wire (`NOTIFY jitocsp_status`).
//! - [`listener`]: the one connection per responder that LISTENs, applies what it hears,
//!   sends itself a heartbeat through the same connection every second, and catches up from
//!   the table after a reconnect.
//! - [`log`]: what the responder remembers: the changes by status version ([`log::ChangeLog`])
//!   and the feed's proof of life with the primary's WAL positions ([`log::FeedHealth`]).

pub mod listener;
pub mod log;
pub mod payload;
