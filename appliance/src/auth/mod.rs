//! Client authentication: SMART Backend Services (OAuth 2.0 client-credentials grant,
//! RFC 6749 §4.4, with `private_key_jwt` client assertions, RFC 7523).
//!
//! - Clients are registered with a facility, a JWK Set and the scopes they may hold; each is
//!   a file `<data_dir>/clients/<client_id>.json` (0600 in a 0700 directory, written
//!   atomically), loaded at [`Authenticator::open`].
//! - [`Authenticator::token_endpoint`] verifies the client assertion (alg EdDSA, ES256,
//!   ES384, RS256 or RS384; `kid` selects the key; `iss == sub == client_id`, `aud` is the
//!   token URL, lifetime at most five minutes, `jti` single use) and issues an access token
//!   for the requested scopes intersected with the registered ones.
//! - Access tokens are self-contained: `hexa1.<payload>.<HMAC-SHA256>`, valid five minutes,
//!   keyed by a random key made at [`Authenticator::open`]. Tokens therefore die with a
//!   restart (clients simply fetch a new one), and revoking a client (removing its file and
//!   reopening, or [`Authenticator::revoke_client`]) ends its tokens at once because
//!   [`Authenticator::authenticate`] checks the client is still registered.
//! - Tokens and assertions are never logged.
//!
//! Cost (release build, this 2-core machine, `HEXA_AUTH_PERF=1 cargo test -p hexa-appliance
//! --release --test auth -- --nocapture perf`): `authenticate` 1.5 µs per call; the token
//! endpoint 62 µs (EdDSA), 206 µs (ES256), 612 µs (ES384), 61 µs (RS256), 82 µs (RS384) per
//! request. Verification runs only for a known client id and kid, but those are not
//! secrets, so the HTTP layer's rate limits should cover the token endpoint.

mod clients;
mod keys;
mod replay;
pub mod scopes;
mod token;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

pub use keys::ALGORITHMS;
pub use scopes::{Interaction, Scopes};

use clients::Client;

/// Lifetime of an access token, in seconds.
pub const TOKEN_LIFETIME: u64 = 300;
/// Longest lifetime (`exp - now`) a client assertion may have, in seconds.
pub const MAX_ASSERTION_LIFETIME: u64 = 300;
/// Clock skew tolerated for `iat` and `nbf` in the future, in seconds.
pub const CLOCK_SKEW: u64 = 60;
/// The only client assertion type (RFC 7523 §2.2).
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Longest client assertion accepted, in bytes (an RS384 JWT with a 4096-bit key is ~1.2 KB).
const MAX_ASSERTION_LEN: usize = 16 * 1024;
/// Most `jti`s remembered at once; beyond this the token endpoint refuses (503) until
/// entries expire (at most [`MAX_ASSERTION_LIFETIME`] later). Bounded memory: with `jti`s
/// of at most [`MAX_JTI_LEN`] bytes this stays in the tens of megabytes at worst.
const REPLAY_CAPACITY: usize = 100_000;
/// Most live `jti`s per client (a client needs one token per [`TOKEN_LIFETIME`]); beyond
/// this that client is refused (429) until its assertions expire.
const REPLAY_PER_CLIENT: usize = 2_000;
/// Longest `jti` accepted, in bytes.
const MAX_JTI_LEN: usize = 128;

/// Why authentication or a token request failed. Each variant has a stable [`code`] (the
/// OAuth 2.0 / RFC 6750 error code) and an HTTP [`status`].
///
/// [`code`]: AuthError::code
/// [`status`]: AuthError::status
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The token request is malformed (missing or repeated parameter, bad form encoding).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Client authentication failed: unknown client, bad or replayed assertion, bad signature.
    #[error("client authentication failed: {0}")]
    InvalidClient(String),
    /// `grant_type` is not `client_credentials`.
    #[error("unsupported grant type; use client_credentials")]
    UnsupportedGrantType,
    /// The scope is malformed, or none of it is granted to this client.
    #[error("invalid scope: {0}")]
    InvalidScope(String),
    /// No `Authorization: Bearer` credentials were sent.
    #[error("an access token is required (Authorization: Bearer)")]
    MissingToken,
    /// The bearer token is malformed, forged, expired, or its client was revoked.
    #[error("invalid access token: {0}")]
    InvalidToken(&'static str),
    /// A client registration is malformed (bad id, facility, JWKS or scopes).
    #[error("invalid client registration: {0}")]
    InvalidRegistration(String),
    /// Too many assertions are in flight; retry shortly.
    #[error("too many recent client assertions; retry shortly")]
    Busy,
    /// This client presented too many assertions recently; reuse the access token (it is
    /// valid for five minutes) instead of requesting one per call.
    #[error("too many token requests from this client; reuse the access token until it expires")]
    RateLimited,
    /// Reading or writing the client registry failed.
    #[error("client registry storage failed: {0}")]
    Storage(String),
}

impl AuthError {
    /// The HTTP status this error maps to.
    pub fn status(&self) -> u16 {
        match self {
            Self::InvalidRequest(_)
            | Self::UnsupportedGrantType
            | Self::InvalidScope(_)
            | Self::InvalidRegistration(_) => 400,
            Self::InvalidClient(_) | Self::MissingToken | Self::InvalidToken(_) => 401,
            Self::Busy => 503,
            Self::RateLimited => 429,
            Self::Storage(_) => 500,
        }
    }

    /// The stable error code (RFC 6749 §5.2, RFC 6750 §3.1, RFC 7591 §3.2.2).
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidClient(_) => "invalid_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidScope(_) => "invalid_scope",
            Self::MissingToken => "missing_token",
            Self::InvalidToken(_) => "invalid_token",
            Self::InvalidRegistration(_) => "invalid_client_metadata",
            Self::Busy => "temporarily_unavailable",
            Self::RateLimited => "slow_down",
            Self::Storage(_) => "server_error",
        }
    }

    /// The RFC 6749 error body: `{"error": code, "error_description": message}`.
    pub fn to_json(&self) -> Value {
        json!({ "error": self.code(), "error_description": self.to_string() })
    }
}

/// A client to register: who it is, whom it acts for, its keys and its maximum scopes.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClientRegistration {
    /// The OAuth client id (`iss`/`sub` of its assertions): 1–128 of `[A-Za-z0-9._-]`, not
    /// starting with a dot (it names a file).
    pub client_id: String,
    /// The facility (Organization id) the client acts for.
    pub facility_id: String,
    /// Its public keys: a JWK Set `{"keys": [...]}` or a single public JWK.
    pub jwks: Value,
    /// The most it may be granted, as SMART system scopes (v1 or v2 syntax).
    pub scopes: String,
}

/// An authenticated caller, from a verified access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The client that obtained the token.
    pub client_id: String,
    /// The facility the client acts for (what consent decisions are made against).
    pub facility_id: String,
    /// What the token allows.
    pub scopes: Scopes,
}

/// Verifies client assertions, issues and checks access tokens, and keeps the client
/// registry. `Send + Sync`; share it in an `Arc`.
pub struct Authenticator {
    dir: PathBuf,
    issuer: String,
    clients: RwLock<HashMap<String, Client>>,
    tokens: token::TokenKey,
    replay: Mutex<replay::ReplayCache>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("dir", &self.dir)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Opens the client registry under `data_dir` (creating `clients/` with mode 0700) and
    /// makes a fresh token key. `issuer` goes into every access token and must match on use.
    pub fn open(data_dir: &Path, issuer: &str) -> Result<Self, AuthError> {
        let dir = data_dir.join("clients");
        let clients = clients::load_all(&dir)?;
        Ok(Self {
            dir,
            issuer: issuer.to_owned(),
            clients: RwLock::new(clients),
            tokens: token::TokenKey::generate()?,
            replay: Mutex::new(replay::ReplayCache::new(REPLAY_CAPACITY, REPLAY_PER_CLIENT)),
        })
    }

    /// Registers (or replaces) a client, persisting it before it takes effect.
    pub fn register_client(&self, client: ClientRegistration) -> Result<(), AuthError> {
        let parsed = Client::from_registration(client)?;
        let id = parsed.registration.client_id.clone();
        // The write lock serialises file writes too: two registrations of one id never
        // share a temporary file.
        let mut clients = self.clients_write();
        clients::store(&self.dir, &parsed.registration)?;
        clients.insert(id.clone(), parsed);
        drop(clients);
        tracing::info!(client_id = %id, "registered client");
        Ok(())
    }

    /// Removes a client; its outstanding tokens stop working immediately. Returns whether
    /// it existed.
    pub fn revoke_client(&self, client_id: &str) -> Result<bool, AuthError> {
        if !clients::valid_client_id(client_id) {
            return Ok(false);
        }
        let mut clients = self.clients_write();
        let existed = clients::remove(&self.dir, client_id)?;
        let was_loaded = clients.remove(client_id).is_some();
        Ok(existed || was_loaded)
    }

    /// The registered clients, sorted by id.
    pub fn clients(&self) -> Vec<ClientRegistration> {
        let mut v: Vec<_> = self
            .clients_read()
            .values()
            .map(|c| c.registration.clone())
            .collect();
        v.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        v
    }

    /// Verifies an `Authorization` header value (`Bearer <token>`) at time `now` (unix
    /// seconds) and returns the caller.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        now: u64,
    ) -> Result<Principal, AuthError> {
        let header = authorization.ok_or(AuthError::MissingToken)?.trim();
        let (scheme, tok) = header
            .split_once(' ')
            .ok_or(AuthError::InvalidToken("expected \"Bearer <token>\""))?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::InvalidToken("expected \"Bearer <token>\""));
        }
        let claims = self.tokens.verify(tok.trim(), &self.issuer, now)?;
        let clients = self.clients_read();
        let client = clients
            .get(&claims.client_id)
            .ok_or(AuthError::InvalidToken(
                "the client is no longer registered",
            ))?;
        if client.generation != claims.generation {
            return Err(AuthError::InvalidToken(
                "the client was registered again since this token was issued",
            ));
        }
        if client.registration.facility_id != claims.facility_id {
            return Err(AuthError::InvalidToken("the client's facility changed"));
        }
        let scopes = Scopes::parse(&claims.scope)
            .map_err(|_| AuthError::InvalidToken("bad scope in token"))?;
        // Registrations may have shrunk since issuance: never grant more than they allow now.
        let scopes = scopes
            .intersect(&client.scopes)
            .ok_or(AuthError::InvalidToken(
                "the client's scopes were withdrawn",
            ))?;
        Ok(Principal {
            client_id: claims.client_id,
            facility_id: claims.facility_id,
            scopes,
        })
    }

    /// Handles a token request: `form_body` is the `application/x-www-form-urlencoded` body,
    /// `token_url` the endpoint's absolute URL (the required `aud`). Returns the HTTP status
    /// and JSON body (the token response, or an RFC 6749 §5.2 error).
    pub fn token_endpoint(&self, form_body: &[u8], token_url: &str, now: u64) -> (u16, Value) {
        match self.issue(form_body, token_url, now) {
            Ok(v) => (200, v),
            Err(e) => {
                tracing::info!(code = e.code(), reason = %e, "token request refused");
                (e.status(), e.to_json())
            }
        }
    }

    fn issue(&self, form_body: &[u8], token_url: &str, now: u64) -> Result<Value, AuthError> {
        let form = parse_form(form_body)?;
        let field = |name: &str| form.get(name).map(String::as_str);
        match field("grant_type") {
            None => return Err(AuthError::InvalidRequest("grant_type is required".into())),
            Some("client_credentials") => {}
            Some(_) => return Err(AuthError::UnsupportedGrantType),
        }
        match field("client_assertion_type") {
            Some(ASSERTION_TYPE) => {}
            _ => {
                return Err(AuthError::InvalidRequest(format!(
                    "client_assertion_type must be {ASSERTION_TYPE}"
                )));
            }
        }
        let assertion = field("client_assertion")
            .ok_or_else(|| AuthError::InvalidRequest("client_assertion is required".into()))?;
        let requested = Scopes::parse(field("scope").unwrap_or(""))?;
        let client_id = self.verify_assertion(assertion, token_url, now)?;

        let clients = self.clients_read();
        let client = clients
            .get(&client_id)
            .ok_or_else(|| AuthError::InvalidClient("unknown client".into()))?;
        let granted = requested.intersect(&client.scopes).ok_or_else(|| {
            AuthError::InvalidScope("none of the requested scopes is granted to this client".into())
        })?;
        let scope = granted.to_string();
        let token = self.tokens.issue(&token::Claims {
            issuer: self.issuer.clone(),
            client_id: client_id.clone(),
            facility_id: client.registration.facility_id.clone(),
            generation: client.generation,
            scope: scope.clone(),
            exp: now.saturating_add(TOKEN_LIFETIME),
        })?;
        tracing::info!(client_id = %client_id, scope = %scope, "issued access token");
        Ok(json!({
            "access_token": token,
            "token_type": "bearer",
            "expires_in": TOKEN_LIFETIME,
            "scope": scope,
        }))
    }

    /// Verifies a client assertion JWT; returns the client id.
    fn verify_assertion(&self, jwt: &str, token_url: &str, now: u64) -> Result<String, AuthError> {
        let bad = |why: &str| AuthError::InvalidClient(why.to_owned());
        if jwt.len() > MAX_ASSERTION_LEN {
            return Err(bad("client_assertion is too long"));
        }
        let mut parts = jwt.split('.');
        let (Some(h64), Some(p64), Some(s64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("client_assertion is not a compact JWS (three parts)"));
        };
        let header = decode_json(h64).ok_or_else(|| bad("JWT header is not base64url JSON"))?;
        let claims = decode_json(p64).ok_or_else(|| bad("JWT claims are not base64url JSON"))?;
        let sig = URL_SAFE_NO_PAD
            .decode(s64)
            .map_err(|_| bad("JWT signature is not base64url"))?;

        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("JWT header lacks alg"))?;
        if !ALGORITHMS.contains(&alg) {
            return Err(AuthError::InvalidClient(format!(
                "JWT alg {alg:?} is not accepted; use one of {ALGORITHMS:?}"
            )));
        }
        if header.get("crit").is_some() {
            return Err(bad("JWT header has crit extensions, none are supported"));
        }
        if let Some(typ) = header.get("typ")
            && !typ.as_str().is_some_and(|t| t.eq_ignore_ascii_case("JWT"))
        {
            return Err(bad("JWT typ must be \"JWT\""));
        }
        let kid = header
            .get("kid")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("JWT header lacks kid"))?;

        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("JWT lacks iss"))?;
        if claims.get("sub").and_then(Value::as_str) != Some(iss) {
            return Err(bad("JWT sub must equal iss (the client id)"));
        }
        {
            let clients = self.clients_read();
            let client = clients.get(iss).ok_or_else(|| bad("unknown client"))?;
            let jwk = client
                .keys
                .iter()
                .find(|k| k.kid == kid)
                .ok_or_else(|| bad("no registered key has this kid"))?;
            if !jwk.key.supports(alg) || jwk.alg.as_deref().is_some_and(|a| a != alg) {
                return Err(bad("the key named by kid is not for this alg"));
            }
            let signed = &jwt.as_bytes()[..h64.len() + 1 + p64.len()];
            if !jwk.key.verify(alg, signed, &sig) {
                return Err(bad("JWT signature does not verify"));
            }
        }

        // The signature is good: the claims are the client's own. Check them.
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => a == token_url,
            Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(token_url)),
            _ => false,
        };
        if !aud_ok {
            return Err(bad("JWT aud must be the token endpoint URL"));
        }
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("JWT lacks a numeric exp"))?;
        if exp <= now {
            return Err(bad("JWT has expired"));
        }
        if exp > now.saturating_add(MAX_ASSERTION_LIFETIME) {
            return Err(bad("JWT exp must be at most five minutes from now"));
        }
        for name in ["nbf", "iat"] {
            match claims.get(name) {
                None => {}
                Some(v) => {
                    let t = v.as_u64().ok_or_else(|| {
                        AuthError::InvalidClient(format!("JWT {name} is not numeric"))
                    })?;
                    if t > now.saturating_add(CLOCK_SKEW) {
                        return Err(AuthError::InvalidClient(format!(
                            "JWT {name} is in the future"
                        )));
                    }
                    if t > exp {
                        return Err(AuthError::InvalidClient(format!("JWT {name} is after exp")));
                    }
                }
            }
        }
        if let Some(iat) = claims.get("iat").and_then(Value::as_u64)
            && exp - iat.min(exp) > MAX_ASSERTION_LIFETIME + CLOCK_SKEW
        {
            return Err(bad("JWT lifetime (exp - iat) exceeds five minutes"));
        }
        let jti = claims
            .get("jti")
            .and_then(Value::as_str)
            .filter(|j| !j.is_empty() && j.len() <= MAX_JTI_LEN)
            .ok_or_else(|| {
                AuthError::InvalidClient(format!("JWT needs a jti of 1 to {MAX_JTI_LEN} bytes"))
            })?;
        self.replay
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .check_and_insert(iss, jti, exp, now)?;
        Ok(iss.to_owned())
    }

    /// The SMART configuration (`/.well-known/smart-configuration`) for a FHIR base URL
    /// such as `https://host/fhir`; the token endpoint is `<base_url>/token`.
    pub fn smart_configuration(&self, base_url: &str) -> Value {
        json!({
            "issuer": self.issuer,
            "token_endpoint": format!("{}/token", base_url.trim_end_matches('/')),
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ALGORITHMS,
            "grant_types_supported": ["client_credentials"],
            "scopes_supported": [
                "system/*.read", "system/*.write", "system/*.*",
                "system/*.cruds", "system/*.rs",
            ],
            "capabilities": [
                "client-confidential-asymmetric", "permission-v1", "permission-v2",
            ],
        })
    }

    fn clients_read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Client>> {
        self.clients
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn clients_write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Client>> {
        self.clients
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Strict base64url then JSON that must be an object and has no duplicate member names.
fn decode_json(s: &str) -> Option<serde_json::Map<String, Value>> {
    let raw = URL_SAFE_NO_PAD.decode(s).ok()?;
    let text = std::str::from_utf8(&raw).ok()?;
    match hexa_crypto::jcs::parse_strict(text).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

/// Parses an `application/x-www-form-urlencoded` body; a repeated name is an error
/// (RFC 6749 §3.2).
fn parse_form(body: &[u8]) -> Result<HashMap<String, String>, AuthError> {
    let bad = |why: &str| AuthError::InvalidRequest(why.to_owned());
    let mut out = HashMap::new();
    for pair in body.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        let mut it = pair.splitn(2, |&b| b == b'=');
        let name = percent_decode(it.next().unwrap_or_default())
            .ok_or_else(|| bad("form body is not valid URL encoding"))?;
        let value = percent_decode(it.next().unwrap_or_default())
            .ok_or_else(|| bad("form body is not valid URL encoding"))?;
        if out.insert(name.clone(), value).is_some() {
            return Err(AuthError::InvalidRequest(format!(
                "parameter {name:?} is repeated"
            )));
        }
    }
    Ok(out)
}

fn percent_decode(s: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Converts a PEM public key (`-----BEGIN PUBLIC KEY-----` with an Ed25519, P-256, P-384
/// or RSA key, or `-----BEGIN RSA PUBLIC KEY-----`) into a public JWK for
/// [`ClientRegistration::jwks`] (what `hexa client add --jwk key.pem` needs).
pub fn jwk_from_pem(pem: &str) -> Result<Value, AuthError> {
    keys::jwk_from_pem(pem).map_err(AuthError::InvalidRegistration)
}

/// Path of a client's file (exposed for the CLI and tests).
pub fn client_file(data_dir: &Path, client_id: &str) -> PathBuf {
    data_dir.join("clients").join(format!("{client_id}.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        let f = parse_form(b"a=x+y%2Fz&b=&c").unwrap();
        assert_eq!(f["a"], "x y/z");
        assert_eq!(f["b"], "");
        assert_eq!(f["c"], "");
        for bad in [&b"a=%2"[..], b"a=%+1", b"a=%zz", b"a=%FF", b"a=1&a=2"] {
            assert!(
                matches!(parse_form(bad), Err(AuthError::InvalidRequest(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn strict_segments() {
        assert!(decode_json(&URL_SAFE_NO_PAD.encode(br#"{"a":1}"#)).is_some());
        // Duplicate member names, non-objects and padded base64 are refused.
        assert!(decode_json(&URL_SAFE_NO_PAD.encode(br#"{"a":1,"a":2}"#)).is_none());
        assert!(decode_json(&URL_SAFE_NO_PAD.encode(b"[1]")).is_none());
        assert!(decode_json("eyJhIjoxfQ==").is_none());
    }

    #[test]
    fn errors_map_to_oauth_statuses() {
        assert_eq!(AuthError::UnsupportedGrantType.status(), 400);
        assert_eq!(AuthError::InvalidClient(String::new()).status(), 401);
        assert_eq!(AuthError::MissingToken.status(), 401);
        assert_eq!(AuthError::Busy.status(), 503);
        let j = AuthError::InvalidScope("x".into()).to_json();
        assert_eq!(j["error"], "invalid_scope");
    }
}
