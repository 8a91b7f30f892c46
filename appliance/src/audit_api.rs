//! The audit log over HTTP, for auditors and peer appliances (under `/fhir/_audit/`).
//!
//! | method, path | answer |
//! | --- | --- |
//! | `GET /fhir/_audit/checkpoint` | the latest signed checkpoint: a C2SP tlog-checkpoint signed note (`text/plain; charset=utf-8`), 404 before the first one |
//! | `GET /fhir/_audit/proof/inclusion?index=I&size=N` | `{"index", "treeSize", "hashes": [base64...]}`: RFC 9162 inclusion proof of entry I in the tree of N entries |
//! | `GET /fhir/_audit/proof/consistency?old=M&new=N` | `{"oldSize", "newSize", "hashes": [base64...]}`: RFC 9162 consistency proof |
//! | `GET /fhir/_audit/entry/{I}` (bearer token) | `{"index", "leaf": base64 of the exact bytes hashed, "leafHash", "resource": the AuditEvent}` |
//!
//! The checkpoint and the proofs carry only hashes and sizes, so they need no token (like
//! `metadata`); they read stored checkpoints and never force one. An entry is an AuditEvent:
//! it is read through the store as `AuditEvent/<id>`, so it passes the access policy (the
//! facility named as its agent, or the patient's own session) with a token allowing
//! AuditEvent reads, and that read is itself audited. Every error is an OperationOutcome:
//! malformed or out-of-range numbers are 400, an index or size beyond the log 404.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use hexa_actors::handle::StoreHandle;
use hexa_actors::store::AccessContext;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::fhir::outcome::{ApiError, Op};

type Resp = Response<Full<Bytes>>;

/// Largest decimal accepted for an index or a size (the log cannot exceed 2^53 entries).
const MAX_NUMBER_DIGITS: usize = 16;

/// Whether `segs` (after `_audit`) is one of the endpoints served without a token.
pub fn is_public(segs: &[&str]) -> bool {
    matches!(
        segs,
        ["checkpoint"] | ["proof", "inclusion" | "consistency"]
    )
}

fn not_found(msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not-found", "audit-not-found", msg)
}

fn method_check(m: &Method) -> Result<(), ApiError> {
    if *m == Method::GET || *m == Method::HEAD {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "not-supported",
            "method-not-allowed",
            format!("{m} is not allowed on the audit log; use GET"),
        ))
    }
}

fn number(s: &str, what: &str) -> Result<u64, ApiError> {
    if s.is_empty() || s.len() > MAX_NUMBER_DIGITS || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::invalid(
            "bad-audit-number",
            format!("{what} must be a non-negative decimal of at most {MAX_NUMBER_DIGITS} digits"),
        ));
    }
    s.parse()
        .map_err(|_| ApiError::invalid("bad-audit-number", format!("{what} is out of range")))
}

/// The two named numbers of a proof query; anything else is refused.
fn two_params(query: &[(String, String)], a: &str, b: &str) -> Result<(u64, u64), ApiError> {
    let (mut x, mut y) = (None, None);
    for (k, v) in query {
        let slot = if k == a {
            &mut x
        } else if k == b {
            &mut y
        } else {
            return Err(ApiError::invalid(
                "bad-audit-query",
                format!("unknown parameter {k}; expected {a} and {b}"),
            ));
        };
        if slot.replace(number(v, k)?).is_some() {
            return Err(ApiError::invalid(
                "bad-audit-query",
                format!("{k} is given twice"),
            ));
        }
    }
    match (x, y) {
        (Some(x), Some(y)) => Ok((x, y)),
        _ => Err(ApiError::invalid(
            "bad-audit-query",
            format!("both {a} and {b} are required"),
        )),
    }
}

fn json_ok(v: &Value) -> Resp {
    crate::http::json_response(StatusCode::OK, "application/json", v)
}

fn hashes(p: &[[u8; 32]]) -> Value {
    Value::Array(p.iter().map(|h| json!(STANDARD.encode(h))).collect())
}

/// Answers the token-free endpoints ([`is_public`]).
pub async fn public(
    store: &StoreHandle,
    method: &Method,
    segs: &[&str],
    query: &[(String, String)],
) -> Resp {
    match public_inner(store, method, segs, query).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn public_inner(
    store: &StoreHandle,
    method: &Method,
    segs: &[&str],
    query: &[(String, String)],
) -> Result<Resp, ApiError> {
    method_check(method)?;
    let s = store.store();
    let read_err = |e| ApiError::from_store(&e, Op::Read);
    match segs {
        ["checkpoint"] => {
            if let Some((k, _)) = query.first() {
                return Err(ApiError::invalid(
                    "bad-audit-query",
                    format!("the checkpoint takes no parameter ({k})"),
                ));
            }
            let note = s
                .latest_checkpoint()
                .map_err(read_err)?
                .ok_or_else(|| not_found("the audit log has no checkpoint yet"))?;
            let mut r = Response::new(Full::new(Bytes::from(note)));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            Ok(r)
        }
        ["proof", "inclusion"] => {
            let (index, size) = two_params(query, "index", "size")?;
            let log = s.audit_size().map_err(read_err)?;
            if size > log {
                return Err(not_found(format!("the log has {log} entries, not {size}")));
            }
            if index >= size {
                return Err(ApiError::invalid(
                    "bad-audit-query",
                    format!("index {index} is not below size {size}"),
                ));
            }
            let p = s.audit_inclusion_proof(index, size).map_err(read_err)?;
            Ok(json_ok(
                &json!({"index": index, "treeSize": size, "hashes": hashes(&p)}),
            ))
        }
        ["proof", "consistency"] => {
            let (old, new) = two_params(query, "old", "new")?;
            let log = s.audit_size().map_err(read_err)?;
            if new > log {
                return Err(not_found(format!("the log has {log} entries, not {new}")));
            }
            if old > new {
                return Err(ApiError::invalid(
                    "bad-audit-query",
                    format!("old size {old} is larger than new size {new}"),
                ));
            }
            let p = s.audit_consistency_proof(old, new).map_err(read_err)?;
            Ok(json_ok(
                &json!({"oldSize": old, "newSize": new, "hashes": hashes(&p)}),
            ))
        }
        _ => Err(not_found("no audit endpoint at this path")),
    }
}

/// `GET /fhir/_audit/entry/{index}` for an authenticated caller (`ctx`), whose scopes the
/// FHIR router already checked for AuditEvent reads.
pub async fn entry(
    store: &StoreHandle,
    ctx: &AccessContext,
    method: &Method,
    index: &str,
    query: &[(String, String)],
) -> Result<Resp, ApiError> {
    method_check(method)?;
    if let Some((k, _)) = query.first() {
        return Err(ApiError::invalid(
            "bad-audit-query",
            format!("an entry takes no parameter ({k})"),
        ));
    }
    let index = number(index, "the entry index")?;
    let s = store.store();
    let size = s
        .audit_size()
        .map_err(|e| ApiError::from_store(&e, Op::Read))?;
    if index >= size {
        return Err(not_found(format!("the log has {size} entries")));
    }
    let e = store
        .audit_entry(ctx, index)
        .await
        .map_err(|e| ApiError::from_store(&e, Op::Read))?;
    let id = serde_json::from_slice::<Value>(&e.bytes)
        .ok()
        .and_then(|v| v["id"].as_str().map(str::to_string))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                "audit-corrupt",
                format!("audit entry {index} is not an AuditEvent"),
            )
        })?;
    // Through the store: the access policy decides, and the read is audited.
    let rec = store
        .read(ctx, "AuditEvent", &id)
        .await
        .map_err(|e| ApiError::from_store(&e, Op::Read))?;
    if rec.canonical != e.bytes {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "exception",
            "audit-corrupt",
            format!("audit entry {index} does not match AuditEvent/{id}"),
        ));
    }
    Ok(json_ok(&json!({
        "index": index,
        "leaf": STANDARD.encode(&e.bytes),
        "leafHash": STANDARD.encode(e.leaf),
        "resource": rec.resource,
    })))
}
