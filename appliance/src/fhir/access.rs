//! The seam between the FHIR API and client authentication (SMART Backend Services).
//!
//! The API asks an [`Authorizer`] who is calling (from the `Authorization` header) and
//! whether the caller's scopes allow an [`Interaction`] on a resource type. The
//! authentication module implements it; tests may implement it too, so the handlers run
//! with the check in place.

use serde_json::Value;

/// A RESTful interaction, as SMART scopes grant them (one type, shared with `auth`).
pub use crate::auth::Interaction;

/// What an authenticated caller may do.
pub trait Grants: Send + Sync {
    /// Whether `i` on `resource_type` is allowed.
    fn allows(&self, resource_type: &str, i: Interaction) -> bool;
}

/// An authenticated caller.
pub struct Caller {
    /// The registered client's id (recorded in every AuditEvent).
    pub client_id: String,
    /// The facility (Organization id) the client acts for.
    pub facility_id: String,
    /// The scopes granted to this token.
    pub grants: Box<dyn Grants>,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("client_id", &self.client_id)
            .field("facility_id", &self.facility_id)
            .finish_non_exhaustive()
    }
}

/// Why a request was refused by authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// HTTP status: 401 (no or bad token), 403 or 400.
    pub status: u16,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// A sentence for people (never contains the token).
    pub message: String,
}

/// Client authentication as the FHIR API needs it.
pub trait Authorizer: Send + Sync {
    /// Verifies the `Authorization` header (`Bearer <token>`) at unix time `now` (seconds).
    fn authenticate(&self, authorization: Option<&str>, now: u64) -> Result<Caller, Denied>;
    /// Handles `POST /fhir/token` (form body); returns the status and JSON body.
    fn token_endpoint(&self, form_body: &[u8], token_url: &str, now: u64) -> (u16, Value);
    /// The SMART configuration document served at `/fhir/.well-known/smart-configuration`.
    fn smart_configuration(&self, base_url: &str) -> Value;
}
