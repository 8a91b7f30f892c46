//! Request checks of the access policy that belong to the HTTP layer: the emergency
//! justification header and the refusal of clients posing as the appliance itself.
//!
//! Consent enforcement proper (who may read what, and the refusal of generic writes of
//! Consents and enrolment Devices) lives in the store (`hexa_actors::store::policy`), so
//! every path — read, search, batch, transaction, operations — passes it.

use super::access::Caller;
use super::outcome::ApiError;
use hexa_actors::store::audit::SYSTEM_CLIENT_ID;
use hyper::StatusCode;

/// Header carrying the written justification of an emergency access (`X-Purpose-Of-Use:
/// ETREAT`); recorded as the AuditEvent's `purposeOfEvent.text`.
pub(super) const JUSTIFICATION: &str = "x-access-justification";
/// Longest justification accepted, in bytes.
pub(super) const MAX_JUSTIFICATION: usize = 1000;

/// Checks the caller and reads the justification header.
pub(super) fn justification(
    caller: &Caller,
    header: Option<&str>,
) -> Result<Option<String>, ApiError> {
    if caller.client_id == SYSTEM_CLIENT_ID {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "reserved-client",
            format!("the client id {SYSTEM_CLIENT_ID} is reserved for the appliance itself"),
        ));
    }
    match header.map(str::trim) {
        None | Some("") => Ok(None),
        Some(j) if j.len() <= MAX_JUSTIFICATION && !j.chars().any(char::is_control) => {
            Ok(Some(j.to_string()))
        }
        Some(_) => Err(ApiError::invalid(
            "bad-justification",
            format!(
                "X-Access-Justification must be at most {MAX_JUSTIFICATION} bytes of text without control characters"
            ),
        )),
    }
}
