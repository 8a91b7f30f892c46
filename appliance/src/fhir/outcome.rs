//! Errors of the FHIR API and their OperationOutcomes: every error has an HTTP status, a
//! FHIR IssueType code, a stable hexa code (in `issue.details.coding`) and a sentence.

use bytes::Bytes;
use hexa_actors::store::StoreError;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde_json::{Value, json};

/// Code system of hexa's stable error codes.
pub const ERROR_SYSTEM: &str = "urn:hexa:error";

/// An error answered to a FHIR client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// FHIR IssueType (`invalid`, `not-found`, ...).
    pub issue: &'static str,
    /// Stable hexa code.
    pub code: &'static str,
    /// What happened and what to do.
    pub message: String,
    /// Element-level issues (validation): when present, the OperationOutcome has one
    /// issue per entry instead of the single `message` issue.
    pub issues: Vec<Issue>,
}

/// One element-level problem of a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// FHIR IssueType (`structure`, `required`, `value`, `code-invalid`, `not-found`).
    pub code: &'static str,
    /// FHIRPath of the element (`Patient.gender`), in `issue.expression`.
    pub expression: String,
    /// What is wrong and what it must be (never the submitted value).
    pub message: String,
}

impl Issue {
    /// An issue of type `code` at `expression`.
    pub fn new(code: &'static str, expression: String, message: impl Into<String>) -> Self {
        Issue {
            code,
            expression,
            message: message.into(),
        }
    }
}

/// What the failing request was, where it changes the status of a store error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A read, search or history.
    Read,
    /// A create, update or delete; `if_match` when the client sent `If-Match`.
    Write {
        /// The client sent an `If-Match` precondition.
        if_match: bool,
    },
}

impl ApiError {
    /// An error with every field given.
    pub fn new(
        status: StatusCode,
        issue: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            issue,
            code,
            message: message.into(),
            issues: Vec::new(),
        }
    }

    /// The same error with element-level issues.
    pub fn with_issues(mut self, issues: Vec<Issue>) -> Self {
        self.issues = issues;
        self
    }

    /// 400 with IssueType `invalid`.
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", code, message)
    }

    /// 400 with IssueType `not-supported`.
    pub fn not_supported(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "not-supported", code, message)
    }

    /// Maps a store error. `Invalid` on a write is 422 (the resource was well-formed JSON
    /// of the right type but its content is refused); a version conflict is 412 when a
    /// precondition of the client failed (`If-Match`, or a transaction entry's `ifMatch`)
    /// and 409 otherwise (a concurrent writer won and no precondition was given).
    pub fn from_store(e: &StoreError, op: Op) -> Self {
        use StatusCode as S;
        let (status, issue) = match e {
            StoreError::UnknownResourceType(_) => (S::NOT_FOUND, "not-supported"),
            StoreError::NotFound { .. } | StoreError::VersionNotFound { .. } => {
                (S::NOT_FOUND, "not-found")
            }
            StoreError::Gone { .. } => (S::GONE, "deleted"),
            StoreError::Conflict { .. } => match op {
                Op::Write { if_match: true } => (S::PRECONDITION_FAILED, "conflict"),
                _ => (S::CONFLICT, "conflict"),
            },
            StoreError::Invalid(_) => match op {
                Op::Write { .. } => (S::UNPROCESSABLE_ENTITY, "processing"),
                Op::Read => (S::BAD_REQUEST, "invalid"),
            },
            StoreError::MultipleMatches(_) => (S::PRECONDITION_FAILED, "duplicate"),
            StoreError::Forbidden(_) => (S::FORBIDDEN, "forbidden"),
            StoreError::UnsupportedSearch(_) => (S::BAD_REQUEST, "not-supported"),
            StoreError::Audit(_) => (S::BAD_REQUEST, "invalid"),
            StoreError::Unavailable(_) | StoreError::WriterStopped => {
                (S::SERVICE_UNAVAILABLE, "transient")
            }
            _ => (S::INTERNAL_SERVER_ERROR, "exception"),
        };
        ApiError::new(status, issue, e.code(), e.to_string())
    }

    /// The OperationOutcome resource.
    pub fn to_outcome(&self) -> Value {
        if !self.issues.is_empty() {
            let issues: Vec<Value> = self
                .issues
                .iter()
                .map(|i| {
                    json!({
                        "severity": "error",
                        "code": i.code,
                        "details": {
                            "coding": [{"system": ERROR_SYSTEM, "code": self.code}],
                            "text": self.message,
                        },
                        "diagnostics": i.message,
                        "expression": [i.expression],
                    })
                })
                .collect();
            return json!({"resourceType": "OperationOutcome", "issue": issues});
        }
        json!({
            "resourceType": "OperationOutcome",
            "issue": [{
                "severity": if self.status.is_server_error() { "fatal" } else { "error" },
                "code": self.issue,
                "details": {"coding": [{"system": ERROR_SYSTEM, "code": self.code}]},
                "diagnostics": self.message,
            }]
        })
    }

    /// `"<status> <reason>"`, as in a Bundle entry's `response.status`.
    pub fn status_line(&self) -> String {
        status_line(self.status)
    }

    /// The HTTP response.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        crate::http::json_response(self.status, crate::http::FHIR_JSON, &self.to_outcome())
    }
}

/// `"<code> <reason>"`.
pub fn status_line(s: StatusCode) -> String {
    format!("{} {}", s.as_u16(), s.canonical_reason().unwrap_or(""))
}

impl From<crate::fhir::access::Denied> for ApiError {
    fn from(d: crate::fhir::access::Denied) -> Self {
        let status = StatusCode::from_u16(d.status).unwrap_or(StatusCode::UNAUTHORIZED);
        let issue = match d.status {
            401 => "login",
            403 => "forbidden",
            _ => "security",
        };
        ApiError::new(status, issue, d.code, d.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_map_to_statuses() {
        let conflict = StoreError::Conflict {
            resource_type: "Patient".into(),
            id: "a".into(),
            expected: 1,
            current: 2,
        };
        let w = Op::Write { if_match: true };
        assert_eq!(ApiError::from_store(&conflict, w).status, 412);
        assert_eq!(
            ApiError::from_store(&conflict, Op::Write { if_match: false }).status,
            409
        );
        let gone = StoreError::Gone {
            resource_type: "Patient".into(),
            id: "a".into(),
            version: 2,
        };
        assert_eq!(ApiError::from_store(&gone, Op::Read).status, 410);
        assert_eq!(ApiError::from_store(&gone, Op::Read).code, "deleted");
        let inv = StoreError::Invalid("x".into());
        assert_eq!(ApiError::from_store(&inv, w).status, 422);
        assert_eq!(ApiError::from_store(&inv, Op::Read).status, 400);
        let unk = StoreError::UnknownResourceType("Spaceship".into());
        assert_eq!(ApiError::from_store(&unk, Op::Read).status, 404);
        let o = ApiError::from_store(&StoreError::MultipleMatches(2), w).to_outcome();
        assert_eq!(
            o["issue"][0]["details"]["coding"][0]["code"],
            "multiple-matches"
        );
    }
}
