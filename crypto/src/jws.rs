//! Detached compact JWS (RFC 7515 appendix F) with `alg: EdDSA` (RFC 8037).
//!
//! The serialization is `<b64url(header)>..<b64url(signature)>` (empty payload part); the
//! signing input is the standard `b64url(header) + "." + b64url(payload)`. Record signatures
//! sign the RFC 8785 canonical bytes of a JSON value (see [`crate::jcs`]).

use serde_json::Value;

use crate::b64;
use crate::keys::{PublicKey, SigningKey};

/// Errors from JWS parsing and verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwsError {
    /// Not three dot-separated parts with an empty middle part.
    #[error("malformed detached JWS: {0}")]
    Malformed(&'static str),
    /// The protected header is not valid base64url JSON object.
    #[error("JWS header is not a base64url-encoded JSON object")]
    BadHeader,
    /// The algorithm is not EdDSA/Ed25519.
    #[error("unsupported JWS algorithm {0:?}: only EdDSA (Ed25519) is accepted")]
    UnsupportedAlg(String),
    /// The header carries `crit` or `b64:false`, which this verifier does not implement.
    #[error("JWS header uses unsupported critical parameters")]
    UnsupportedCrit,
    /// The header's `kid` is not the kid of the verifying key.
    #[error("JWS kid {found:?} does not match the verifying key {expected:?}")]
    KidMismatch {
        /// The kid of the key verification was attempted with.
        expected: String,
        /// The kid found in the header.
        found: String,
    },
    /// The signature does not verify.
    #[error("JWS signature verification failed")]
    BadSignature,
}

/// The parts of the protected header this crate understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwsHeader {
    /// The `alg` value (`EdDSA` or `Ed25519`).
    pub alg: String,
    /// The `kid` value, when present.
    pub kid: Option<String>,
}

/// Signs `payload` and returns the detached compact JWS with header `{"alg":"EdDSA","kid":..}`.
pub fn sign_detached(key: &SigningKey, payload: &[u8]) -> String {
    let header_b64 = key.jws_header_b64();
    let input = signing_input(header_b64, payload);
    compact(header_b64, &key.sign(input.as_bytes()))
}

/// [`sign_detached`] of each payload, in order, with the signatures made together
/// ([`SigningKey::sign_many`]): the same JWS strings, for less work per signature.
pub fn sign_detached_many(key: &SigningKey, payloads: &[&[u8]]) -> Vec<String> {
    let header_b64 = key.jws_header_b64();
    let inputs: Vec<String> = payloads
        .iter()
        .map(|p| signing_input(header_b64, p))
        .collect();
    let refs: Vec<&[u8]> = inputs.iter().map(|i| i.as_bytes()).collect();
    key.sign_many(&refs)
        .iter()
        .map(|sig| compact(header_b64, sig))
        .collect()
}

/// `header_b64 || ".." || base64url(signature)`.
fn compact(header_b64: &str, sig: &[u8; 64]) -> String {
    let mut jws = String::with_capacity(header_b64.len() + 2 + sig.len().div_ceil(3) * 4);
    jws.push_str(header_b64);
    jws.push_str("..");
    b64::url_encode_into(sig, &mut jws);
    jws
}

/// Verifies a detached compact JWS over `payload` with `key` (Ed25519 `verify_strict`).
pub fn verify_detached(jws: &str, payload: &[u8], key: &PublicKey) -> Result<JwsHeader, JwsError> {
    let (header_b64, sig_b64) = split(jws)?;
    let header = parse_header(header_b64)?;
    if let Some(kid) = &header.kid {
        let expected = key.kid();
        if *kid != expected {
            return Err(JwsError::KidMismatch {
                expected,
                found: kid.clone(),
            });
        }
    }
    let sig = b64::url_decode(sig_b64).ok_or(JwsError::Malformed("signature is not base64url"))?;
    let input = signing_input(header_b64, payload);
    key.verify_strict(input.as_bytes(), &sig)
        .map_err(|_| JwsError::BadSignature)?;
    Ok(header)
}

/// Returns the header's `kid` without verifying anything (to pick the key to verify with).
pub fn peek_kid(jws: &str) -> Result<Option<String>, JwsError> {
    let (header_b64, _) = split(jws)?;
    Ok(parse_header(header_b64)?.kid)
}

/// `header_b64 || '.' || base64url(payload)`, written into one buffer of the right size.
fn signing_input(header_b64: &str, payload: &[u8]) -> String {
    let mut input = String::with_capacity(header_b64.len() + 1 + payload.len().div_ceil(3) * 4);
    input.push_str(header_b64);
    input.push('.');
    b64::url_encode_into(payload, &mut input);
    input
}

fn split(jws: &str) -> Result<(&str, &str), JwsError> {
    let mut parts = jws.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwsError::Malformed("expected three dot-separated parts"));
    };
    if !p.is_empty() {
        return Err(JwsError::Malformed("payload part must be empty (detached)"));
    }
    if h.is_empty() || s.is_empty() {
        return Err(JwsError::Malformed("empty header or signature part"));
    }
    Ok((h, s))
}

fn parse_header(header_b64: &str) -> Result<JwsHeader, JwsError> {
    let raw = b64::url_decode(header_b64).ok_or(JwsError::BadHeader)?;
    let text = std::str::from_utf8(&raw).map_err(|_| JwsError::BadHeader)?;
    let v = crate::jcs::parse_strict(text).map_err(|_| JwsError::BadHeader)?;
    let obj = v.as_object().ok_or(JwsError::BadHeader)?;
    if obj.contains_key("crit") || obj.get("b64").is_some_and(|b| b != &Value::Bool(true)) {
        return Err(JwsError::UnsupportedCrit);
    }
    let alg = match obj.get("alg").and_then(Value::as_str) {
        Some(a @ ("EdDSA" | "Ed25519")) => a.to_owned(),
        Some(other) => return Err(JwsError::UnsupportedAlg(other.to_owned())),
        None => return Err(JwsError::UnsupportedAlg(String::new())),
    };
    let kid = match obj.get("kid") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(JwsError::BadHeader),
    };
    Ok(JwsHeader { alg, kid })
}
