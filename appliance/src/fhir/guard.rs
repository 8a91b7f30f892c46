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

/// Header naming the health worker a facility's system acts for (`Practitioner/<id>`):
/// the practitioner a consent may be limited to, recorded in the AuditEvent. The client
/// is trusted to say so as it is trusted with its facility's data (SMART Backend Services
/// carries no end-user identity).
pub(super) const ON_BEHALF_OF: &str = "x-on-behalf-of";

/// The practitioner id of an `X-On-Behalf-Of: Practitioner/<id>` header (a FHIR id:
/// 1–64 of `A-Za-z0-9-.`), or a 400.
pub(super) fn on_behalf_of(header: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(h) = header.map(str::trim) else {
        return Ok(None);
    };
    match h.strip_prefix("Practitioner/") {
        Some(id)
            if !id.is_empty()
                && id.len() <= 64
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') =>
        {
            Ok(Some(id.to_string()))
        }
        _ => Err(ApiError::invalid(
            "bad-on-behalf-of",
            "X-On-Behalf-Of must be a Practitioner reference such as Practitioner/123",
        )),
    }
}

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
