//! Access policy: the single choke point every disclosure passes through.
//!
//! [`authorize_read`] is called for every record a read, vread, history or search is about
//! to return, after the data was read and before its AuditEvent is queued. Consent
//! enforcement (issue: consent) plugs in here: today it permits everything, so the only
//! effect is that the call sites exist and are tested.

use super::Record;
use super::audit::AccessContext;
use super::error::StoreResult;

/// Decides whether `ctx` may see `record`. Returns `StoreError::Forbidden` to refuse.
pub fn authorize_read(ctx: &AccessContext, record: &Record) -> StoreResult<()> {
    let _ = (ctx, record);
    Ok(())
}
