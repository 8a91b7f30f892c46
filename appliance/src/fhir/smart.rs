//! The FHIR API's [`Authorizer`] implemented by the SMART Backend Services
//! [`Authenticator`](crate::auth::Authenticator): bearer tokens it issued, scopes it
//! granted.

use super::access::{Authorizer, Caller, Denied, Grants, Interaction};
use crate::auth::{Authenticator, Scopes};
use serde_json::Value;

impl Grants for Scopes {
    fn allows(&self, resource_type: &str, i: Interaction) -> bool {
        Scopes::allows(self, resource_type, i)
    }
}

impl Authorizer for Authenticator {
    fn authenticate(&self, authorization: Option<&str>, now: u64) -> Result<Caller, Denied> {
        match Authenticator::authenticate(self, authorization, now) {
            Ok(p) => Ok(Caller {
                client_id: p.client_id,
                facility_id: p.facility_id,
                grants: Box::new(p.scopes),
            }),
            Err(e) => Err(Denied {
                status: e.status(),
                code: e.code(),
                message: e.to_string(),
            }),
        }
    }

    fn token_endpoint(&self, form_body: &[u8], token_url: &str, now: u64) -> (u16, Value) {
        Authenticator::token_endpoint(self, form_body, token_url, now)
    }

    fn smart_configuration(&self, base_url: &str) -> Value {
        Authenticator::smart_configuration(self, base_url)
    }
}
