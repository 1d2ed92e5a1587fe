//! Purging copies of responses that a status change made wrong.
//!
//! The origin never serves such a copy (see [`crate::feed`]), so purges are about the caches
//! in front of it and about not paying for a wrong copy twice:
//! - [`pending`]: the Redis keys a change owes a purge of, recorded in the change's own
//!   transaction (`pending_purge_batches`), deleted right after the commit and retried by the
//!   responders until they are gone.
//! - [`cdn`]: the CDN purge hook, owed and retried the same way (`cdn_purges`).

pub mod cdn;
pub mod pending;
