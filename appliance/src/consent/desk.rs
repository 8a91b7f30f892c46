//! The front desk's JSON API (`/desk/api/*`, shapes in the [module docs](super)) and the
//! patient's card-tap session: login, the session token, and the access list.
//!
//! Decision: `/desk/*` answers only callers on the loopback interface, like `/sim/*`: the
//! front-desk screen is a kiosk browser on the appliance itself (or reaches it through an
//! SSH tunnel), never the hospital network, since a session shows who read a record.
//!
//! Session tokens are `hexas1.<base64url(JSON {"pat","exp","jti"})>.<base64url(HMAC-SHA256)>`
//! under a key made at start (a restart ends every session), valid
//! [`super::CeremonyConfig::session_ttl_secs`].

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use hexa_actors::device::{ReaderKind, Status};
use hexa_actors::store::AccessContext;
use hmac::Mac as _;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, COOKIE, HeaderValue, SET_COOKIE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use zeroize::Zeroizing;

use super::error::CeremonyError;
use super::params::format_time;
use super::records::{self, Enrolment};
use super::{Ceremonies, LOGIN_CHUNK, MAX_LOGIN_CARDS, lock, now_secs, purpose_text};
use crate::fhir::outcome::ApiError;
use crate::fhir::{Caller, Grants, Interaction};

const PREFIX: &str = "hexas1.";
const COOKIE_NAME: &str = "hexa_session";
const MAX_TOKEN_LEN: usize = 1024;
/// Most AuditEvents listed in one access list.
const MAX_ACCESSES: usize = 500;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Most ended (logged out, unexpired) sessions remembered.
const MAX_ENDED_SESSIONS: usize = 10_000;

/// The key patient session tokens are signed with (random, per start), and the sessions
/// ended by a logout before they expired.
pub struct SessionKey {
    key: Zeroizing<[u8; 32]>,
    /// Token id -> expiry of sessions ended early.
    ended: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SessionClaims {
    pat: String,
    exp: u64,
    jti: String,
}

impl SessionKey {
    /// A fresh key from the OS RNG.
    pub fn generate() -> Result<Self, CeremonyError> {
        let mut k = Zeroizing::new([0u8; 32]);
        getrandom::fill(k.as_mut()).map_err(|e| CeremonyError::Internal(format!("OS RNG: {e}")))?;
        Ok(SessionKey {
            key: k,
            ended: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    fn mac(&self, data: &[u8]) -> HmacSha256 {
        let mut m = <HmacSha256 as hmac::KeyInit>::new_from_slice(self.key.as_ref())
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        m.update(data);
        m
    }

    /// A token for `patient` (`Patient/<id>`) valid until `exp`.
    pub fn issue(&self, patient: &str, exp: u64) -> Result<String, CeremonyError> {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(|e| CeremonyError::Internal(format!("OS RNG: {e}")))?;
        let claims = SessionClaims {
            pat: patient.to_owned(),
            exp,
            jti: URL_SAFE_NO_PAD.encode(id),
        };
        let payload =
            serde_json::to_vec(&claims).map_err(|e| CeremonyError::Internal(e.to_string()))?;
        let mut tok = String::from(PREFIX);
        URL_SAFE_NO_PAD.encode_string(payload, &mut tok);
        let tag = self.mac(tok.as_bytes()).finalize().into_bytes();
        tok.push('.');
        URL_SAFE_NO_PAD.encode_string(tag, &mut tok);
        Ok(tok)
    }

    fn claims(&self, tok: &str, now: u64) -> Option<SessionClaims> {
        if tok.len() > MAX_TOKEN_LEN || !tok.starts_with(PREFIX) {
            return None;
        }
        let (signed, tag64) = tok.rsplit_once('.')?;
        let tag = URL_SAFE_NO_PAD.decode(tag64).ok()?;
        self.mac(signed.as_bytes()).verify_slice(&tag).ok()?;
        let payload = URL_SAFE_NO_PAD.decode(&signed[PREFIX.len()..]).ok()?;
        let c: SessionClaims = serde_json::from_slice(&payload).ok()?;
        let ended = lock(&self.ended).contains_key(&c.jti);
        (c.exp > now && !ended).then_some(c)
    }

    /// The patient of a valid, unexpired, not ended token.
    pub fn verify(&self, tok: &str, now: u64) -> Option<String> {
        self.claims(tok, now).map(|c| c.pat)
    }

    /// Ends a session before it expires (logout at a shared kiosk); false when the token
    /// was not a live session.
    pub fn end(&self, tok: &str, now: u64) -> bool {
        let Some(c) = self.claims(tok, now) else {
            return false;
        };
        let mut ended = lock(&self.ended);
        ended.retain(|_, exp| *exp > now);
        if ended.len() >= MAX_ENDED_SESSIONS {
            // Cannot remember more: refuse rather than let a session outlive its logout.
            return false;
        }
        ended.insert(c.jti, c.exp);
        true
    }
}

/// Whether an `Authorization` header carries a patient session token.
pub fn is_session_bearer(authorization: Option<&str>) -> bool {
    authorization
        .and_then(|a| a.strip_prefix("Bearer "))
        .is_some_and(|t| t.trim().starts_with(PREFIX))
}

/// What a patient session may do on `/fhir`: search its own AuditEvents.
struct SessionGrants;

impl Grants for SessionGrants {
    fn allows(&self, resource_type: &str, i: Interaction) -> bool {
        resource_type == "AuditEvent" && i == Interaction::Search
    }
}

impl Ceremonies {
    fn session_ctx(&self, patient: &str) -> AccessContext {
        AccessContext {
            client_id: "patient-session".into(),
            facility_id: self.facility_id.clone(),
            practitioner: None,
            purpose_of_use: "PATRQT".into(),
            justification: None,
            patient_session: Some(patient.to_owned()),
        }
    }

    /// For a `/fhir` request carrying a session bearer token: the caller and context when
    /// the request is `GET /fhir/AuditEvent` whose every `patient` parameter names the
    /// session's own patient; an error otherwise (401 bad token, 403 anything else).
    pub fn session_caller(
        &self,
        authorization: Option<&str>,
        method: &Method,
        segs: &[&str],
        query: &[(String, String)],
        now: u64,
    ) -> Result<(Caller, AccessContext), ApiError> {
        let tok = authorization
            .and_then(|a| a.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or_default();
        let patient = self.sessions.verify(tok, now).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "login",
                "invalid-session",
                "the patient session is invalid or has expired; tap the card again",
            )
        })?;
        let own_id = patient.trim_start_matches("Patient/");
        let forbidden = || {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "session-scope",
                "a patient session may only search its own AuditEvents: GET /fhir/AuditEvent?patient=<own id>",
            )
        };
        let patients: Vec<&str> = query
            .iter()
            .filter(|(k, _)| k == "patient" || k == "patient:Patient")
            .map(|(_, v)| v.as_str())
            .collect();
        let own = !patients.is_empty()
            && patients
                .iter()
                .all(|v| v.trim_start_matches("Patient/") == own_id);
        let other_refs = query
            .iter()
            .any(|(k, _)| matches!(k.as_str(), "agent" | "entity" | "_id"));
        if !(*method == Method::GET || *method == Method::HEAD)
            || segs != ["AuditEvent"]
            || !own
            || other_refs
        {
            return Err(forbidden());
        }
        Ok((
            Caller {
                client_id: "patient-session".into(),
                facility_id: self.facility_id.clone(),
                grants: Box::new(SessionGrants),
            },
            self.session_ctx(&patient),
        ))
    }

    /// The front desk's requests: pending first (with the reader's progress), then recent.
    pub async fn requests_view(&self) -> Value {
        let status = self.devices.send(Status).await.ok();
        let (pending, recent) = {
            let d = lock(&self.desk);
            (d.pending.clone(), d.recent.clone())
        };
        let mut out = Vec::with_capacity(pending.len() + recent.len());
        for r in pending.into_iter().rev() {
            let mut v = r.view;
            let reader = status.as_ref().and_then(|s| match r.reader {
                ReaderKind::Card => s.card.as_ref(),
                ReaderKind::Fingerprint => s.fingerprint.as_ref(),
            });
            if let Some(rs) = reader {
                v["progress"] = serde_json::to_value(&rs.progress).unwrap_or(Value::Null);
            }
            out.push(v);
        }
        out.extend(recent.into_iter().map(|r| r.view));
        json!({"requests": out})
    }

    /// A login by card tap within `timeout`: returns the patient (`Patient/<id>`).
    pub async fn login(&self, timeout: Duration) -> Result<String, CeremonyError> {
        let status = format!("{}|{}", records::DEVICE_TYPE_SYSTEM, records::CARD);
        let cards: Vec<_> = self
            .devices(
                &[("type", status), ("status", "active".into())],
                MAX_LOGIN_CARDS,
            )
            .await?
            .into_iter()
            .filter(|d| d.active && matches!(d.kind, Enrolment::Card { .. }))
            .collect();
        if cards.is_empty() {
            return Err(CeremonyError::NotEnrolled(
                "no card is enrolled on this appliance".into(),
            ));
        }
        let view = json!({
            "kind": "login",
            "method": "card",
            "text": "Tap your consent card to see who read your record.",
        });
        let guard = self.register_request(ReaderKind::Card, view, timeout);
        let r = async {
            let now = now_secs();
            let ch = self.login_challenge(now)?;
            let mut last = CeremonyError::WrongCredential("no card answered".into());
            for chunk in cards.chunks(LOGIN_CHUNK) {
                match self.tap_card(&ch, chunk, timeout).await {
                    Ok(a) => {
                        let (dev, _) = self
                            .accept_card_assertion(&ch, &a, chunk, now_secs())
                            .await?;
                        // The login is recorded as the session's read of its own Patient
                        // resource (an AuditEvent by `patient-session`), which also checks
                        // the patient still exists.
                        let id = dev.patient.trim_start_matches("Patient/");
                        self.store
                            .read(&self.session_ctx(&dev.patient), "Patient", id)
                            .await?;
                        return Ok(dev.patient);
                    }
                    Err(e @ CeremonyError::WrongCredential(_)) => last = e,
                    Err(e) => return Err(e),
                }
            }
            lock(&self.issued).remove(&ch.nonce);
            Err(match last {
                CeremonyError::WrongCredential(_) => CeremonyError::WrongCredential(
                    "this card is not enrolled on this appliance".into(),
                ),
                o => o,
            })
        }
        .await;
        guard.finish(&r, Clone::clone);
        r
    }

    /// The AuditEvents naming `patient`, in plain words, newest first.
    pub async fn accesses(&self, patient: &str) -> Result<Value, CeremonyError> {
        let ctx = self.session_ctx(patient);
        let mut events = Vec::new();
        let mut offset = 0;
        loop {
            let q = vec![
                ("patient".to_owned(), patient.to_owned()),
                ("_count".to_owned(), "200".to_owned()),
                ("_offset".to_owned(), offset.to_string()),
            ];
            let page = self.store.search(&ctx, "AuditEvent", &q).await?;
            let n = page.items.len();
            events.extend(page.items.into_iter().map(|r| r.resource));
            offset += n;
            if n == 0 || offset >= page.total || events.len() >= MAX_ACCESSES {
                break;
            }
        }
        let mut list: Vec<Value> = events.iter().map(|e| access_view(e, patient)).collect();
        list.sort_by(|a, b| b["when"].as_str().cmp(&a["when"].as_str()));
        list.truncate(MAX_ACCESSES);
        Ok(json!({"patient": patient, "total": list.len(), "accesses": list}))
    }
}

/// One AuditEvent in plain words.
fn access_view(e: &Value, patient: &str) -> Value {
    let agents = e
        .get("agent")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let who_ref = |prefix: &str| {
        agents.iter().find_map(|a| {
            a.get("who")?
                .get("reference")?
                .as_str()
                .filter(|r| r.starts_with(prefix))
                .map(str::to_owned)
        })
    };
    let client = agents.iter().find_map(|a| {
        let id = a.get("who")?.get("identifier")?;
        (id.get("system")?.as_str()? == "urn:hexa:client")
            .then(|| id.get("value")?.as_str().map(str::to_owned))?
    });
    let poe = e
        .get("purposeOfEvent")
        .and_then(|p| p.get(0))
        .cloned()
        .unwrap_or(Value::Null);
    let purpose = poe
        .get("coding")
        .and_then(|c| c.get(0))
        .and_then(|c| c.get("code"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let justification = poe.get("text").and_then(Value::as_str);
    let entities = e
        .get("entity")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut recs = Vec::new();
    let mut consents = Vec::new();
    for en in &entities {
        let Some(r) = en
            .get("what")
            .and_then(|w| w.get("reference"))
            .and_then(Value::as_str)
        else {
            continue;
        };
        if en.get("description").and_then(Value::as_str) == Some("authorizing consent") {
            consents.push(r.to_owned());
        } else if r != patient {
            recs.push(r.to_owned());
        }
    }
    let basis: Vec<String> = e
        .get("extension")
        .and_then(Value::as_array)
        .map(|x| {
            x.iter()
                .filter(|x| x.get("url").and_then(Value::as_str) == Some("urn:hexa:access-basis"))
                .filter_map(|x| {
                    x.get("valueCode")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default();
    let what = e
        .get("subtype")
        .and_then(|s| s.get(0))
        .and_then(|s| s.get("code"))
        .and_then(Value::as_str)
        .unwrap_or("access")
        .to_owned();
    let facility = who_ref("Organization/");
    let practitioner = who_ref("Practitioner/");
    let emergency = purpose == "ETREAT";
    let outcome = if e.get("outcome").and_then(Value::as_str) == Some("0") {
        "success"
    } else {
        "failure"
    };
    let actor = match (&practitioner, &facility) {
        (Some(p), Some(f)) => format!("{p} of {f}"),
        (None, Some(f)) => f.clone(),
        (Some(p), None) => p.clone(),
        (None, None) => client.clone().unwrap_or_else(|| "someone".into()),
    };
    let target = match recs.len() {
        0 => "your record".to_owned(),
        1..=3 => recs
            .iter()
            .map(|r| r.split("/_history").next().unwrap_or(r))
            .collect::<Vec<_>>()
            .join(", "),
        n => format!("{n} of your records"),
    };
    let mut text = format!(
        "{actor} ({}) did a {what} of {target} for {}",
        client.as_deref().unwrap_or("unknown system"),
        purpose_text(&purpose)
    );
    if emergency {
        text.push_str(&format!(
            " — EMERGENCY ACCESS, justification: {}",
            justification.unwrap_or("(none given)")
        ));
    }
    if outcome == "failure" {
        text.push_str(" (refused)");
    }
    text.push('.');
    json!({
        "when": e.get("recorded").and_then(Value::as_str),
        "what": what,
        "action": e.get("action").and_then(Value::as_str),
        "records": recs,
        "facility": facility,
        "practitioner": practitioner,
        "client": client,
        "purpose": purpose,
        "purposeText": purpose_text(&purpose),
        "emergency": emergency,
        "justification": justification,
        "basis": basis,
        "consents": consents,
        "outcome": outcome,
        "text": text,
    })
}

fn outcome(e: ApiError) -> Response<Full<Bytes>> {
    e.into_response()
}

fn json_ok(v: &Value) -> Response<Full<Bytes>> {
    let mut r = crate::http::json_response(StatusCode::OK, "application/json", v);
    r.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-store"));
    r
}

fn session_token(req_headers: &hyper::HeaderMap) -> Option<String> {
    if let Some(t) = req_headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.strip_prefix("Bearer "))
    {
        return Some(t.trim().to_owned());
    }
    req_headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            c.trim()
                .strip_prefix(COOKIE_NAME)
                .and_then(|r| r.strip_prefix('='))
                .map(str::to_owned)
        })
}

/// Answers one `/desk/*` request.
pub async fn route(
    c: Option<&Ceremonies>,
    req: Request<Incoming>,
    peer: SocketAddr,
    max_body: usize,
) -> Response<Full<Bytes>> {
    let err = |s: StatusCode, issue: &'static str, code: &'static str, m: &str| {
        outcome(ApiError::new(s, issue, code, m))
    };
    if !peer.ip().is_loopback() {
        return err(
            StatusCode::FORBIDDEN,
            "forbidden",
            "desk-local-only",
            "the front-desk API answers only callers on the appliance itself",
        );
    }
    let Some(c) = c else {
        return err(
            StatusCode::NOT_FOUND,
            "not-found",
            "not-found",
            "the consent ceremonies are not enabled on this appliance",
        );
    };
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let headers = req.headers().clone();
    let body = match Limited::new(req.into_body(), max_body.min(4096))
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return err(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-costly",
                "body-too-large",
                "front-desk requests are at most 4096 bytes",
            );
        }
    };
    let now = now_secs();
    match (&method, path.as_str()) {
        (&Method::GET, "/desk/api/requests") => json_ok(&c.requests_view().await),
        (&Method::POST, "/desk/api/login") => {
            let timeout = if body.iter().all(u8::is_ascii_whitespace) {
                c.config.default_timeout_secs
            } else {
                let parsed = serde_json::from_slice::<Value>(&body).ok();
                let t = match parsed.as_ref().and_then(Value::as_object) {
                    Some(o) => match o.get("timeoutSeconds") {
                        None => Some(c.config.default_timeout_secs),
                        Some(v) => v.as_u64(),
                    },
                    None => None,
                };
                match t {
                    Some(t) if t >= 1 && t <= c.config.max_timeout_secs => t,
                    _ => {
                        return err(
                            StatusCode::BAD_REQUEST,
                            "invalid",
                            "bad-parameters",
                            "the body must be empty or {\"timeoutSeconds\": n} within the allowed range",
                        );
                    }
                }
            };
            match c.login(Duration::from_secs(timeout)).await {
                Ok(patient) => {
                    let exp = now_secs() + c.config.session_ttl_secs;
                    let tok = match c.sessions.issue(&patient, exp) {
                        Ok(t) => t,
                        Err(e) => return outcome(e.to_api()),
                    };
                    let mut r = json_ok(&json!({
                        "patient": patient,
                        "token": tok,
                        "expires": format_time(exp),
                    }));
                    if let Ok(v) = HeaderValue::from_str(&format!(
                        "{COOKIE_NAME}={tok}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
                        c.config.session_ttl_secs
                    )) {
                        r.headers_mut().insert(SET_COOKIE, v);
                    }
                    r
                }
                Err(e) => outcome(e.to_api()),
            }
        }
        (&Method::GET, "/desk/api/accesses") => {
            let Some(patient) = session_token(&headers).and_then(|t| c.sessions.verify(&t, now))
            else {
                return err(
                    StatusCode::UNAUTHORIZED,
                    "login",
                    "invalid-session",
                    "no valid patient session; tap the card at POST /desk/api/login",
                );
            };
            match c.accesses(&patient).await {
                Ok(v) => json_ok(&v),
                Err(e) => outcome(e.to_api()),
            }
        }
        (&Method::POST, "/desk/api/logout") => {
            if let Some(t) = session_token(&headers) {
                c.sessions.end(&t, now);
            }
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::NO_CONTENT;
            r.headers_mut().insert(
                SET_COOKIE,
                HeaderValue::from_static(
                    "hexa_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
                ),
            );
            r
        }
        (
            _,
            "/desk/api/requests" | "/desk/api/accesses" | "/desk/api/login" | "/desk/api/logout",
        ) => err(
            StatusCode::METHOD_NOT_ALLOWED,
            "not-supported",
            "method-not-allowed",
            &format!("{method} is not allowed on {path}"),
        ),
        _ => err(
            StatusCode::NOT_FOUND,
            "not-found",
            "not-found",
            &format!("nothing is served at {path}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_tokens_expire_and_resist_tampering() {
        let k = SessionKey::generate().unwrap();
        let t = k.issue("Patient/p1", 100).unwrap();
        assert_eq!(k.verify(&t, 99).as_deref(), Some("Patient/p1"));
        assert!(k.verify(&t, 100).is_none());
        let other = SessionKey::generate().unwrap();
        assert!(other.verify(&t, 99).is_none());
        let mut b = t.into_bytes();
        b[PREFIX.len() + 2] ^= 1;
        assert!(k.verify(&String::from_utf8_lossy(&b), 99).is_none());
        let t2 = k.issue("Patient/p2", 100).unwrap();
        assert!(k.end(&t2, 50));
        assert!(k.verify(&t2, 50).is_none(), "ended by logout");
        assert!(!k.end(&t2, 50));
        assert!(is_session_bearer(Some("Bearer hexas1.x.y")));
        assert!(!is_session_bearer(Some("Bearer hexa1.x.y")));
    }
}
