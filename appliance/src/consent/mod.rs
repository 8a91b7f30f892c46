//! The consent ceremonies (issue #6): card and fingerprint enrolment, the consent ceremony
//! with its evidence, countersignature of fingerprint consents, revocation, and the
//! patient's own card-tap session at the front desk. Shapes are those of the consent
//! contract (Device enrolment records, Consent, evidence JSON); see [`records`].
//!
//! # FHIR operations (bearer token of an integrator; scopes in brackets)
//!
//! | request | what |
//! | --- | --- |
//! | `POST /fhir/Patient/{id}/$enroll-card` [Device create] | makeCredential on the reader; Parameters: `practitioner` (enrolled by), `replaces` (Device: the old card becomes inactive), `timeoutSeconds`; 201 + Device |
//! | `POST /fhir/Patient/{id}/$enroll-finger` [Device create] | identifies, then enrols the finger on the sensor into a free template slot (409 when the module already knows that finger for an active enrolment; `replaces` reuses the old slot); 201 + Device |
//! | `POST /fhir/Device/{id}/$revoke` [Device update] | a lost card or finger: next version `inactive`; 200 + Device |
//! | `POST /fhir/Device/{id}/$countersign` [Device update] | `practitioner` (the one the enrolment named) + `signature` (detached JWS over the statement in extension `urn:hexa:enrolment-statement`), within the countersign window; 200 + Device with `urn:hexa:enrolment-countersignature` |
//! | `POST /fhir/Patient/{id}/$consent` [Consent create] | the ceremony; Parameters: `organization`, `practitioner`?, `purpose`, `class`*, `periodStart`?, `periodEnd`, `dataPeriodStart`?, `dataPeriodEnd`?, `decision` permit\|deny, `method` card\|finger, `timeoutSeconds`; 201 + Consent (`active` for a card, `proposed` for a finger) |
//! | `POST /fhir/Consent/{id}/$countersign` [Consent update] | `practitioner` + `signature` (detached JWS over the challenge bytes); 200 + Consent `active` |
//! | `POST /fhir/Consent/{id}/$revoke` [Consent update] | a card ceremony with decision deny over the consent's terms; 200 + Consent `inactive` |
//!
//! Errors: 400 bad parameters, 404 unknown patient/device/consent, 422 `not-enrolled`, 403
//! `wrong-credential` / `declined` / `replay` / `stale-challenge` / `bad-signature`, 408
//! `ceremony-timeout`, 409 `device-busy` / `wrong-state`.
//!
//! # Front desk JSON API (`/desk/api/*`, loopback callers only)
//!
//! `GET /desk/api/requests`:
//! ```json
//! {"requests": [{"id": "r-12", "kind": "consent|revocation|enrol-card|enrol-finger|login",
//!    "state": "pending|done|failed", "method": "card|fingerprint", "patient": "Patient/p1",
//!    "askedBy": {"client": "emr-1", "facility": "Organization/fac-a"},
//!    "text": "Organization/fac-b asks to read your Observation records for treatment ...",
//!    "terms": {"grantee": ["Organization/fac-b"], "purpose": "TREAT", "purposeText": "treatment",
//!              "scope": ["Observation"] , "period": {"start": "...", "end": "..."},
//!              "dataPeriod": {...}, "decision": "permit"},            (consent and revocation only)
//!    "started": "<RFC 3339>", "until": "<RFC 3339: deadline to tap>",
//!    "progress": {"state": "waiting|card_present|signing|done|failed|idle", ...},  (pending only)
//!    "result": {"reference": "Consent/c1/_history/1"} | {"code": "wrong-credential", "reason": "..."}}]}
//! ```
//! Pending requests come first, then the 20 most recent finished ones, newest first.
//! Consent and revocation requests also carry `"names": {"Organization/fac-b": "Kigali
//! University Teaching Hospital", ...}` for their grantees and asking facility (see
//! [`names`]); the access list carries the same `names` for its facilities and practitioners.
//!
//! `POST /desk/api/login` (body empty, or `{"timeoutSeconds": n}`): a card tap; 200
//! `{"patient": "Patient/p1", "token": "...", "expires": "<RFC 3339>"}` and a cookie
//! `hexa_session` (HttpOnly, SameSite=Strict, Path=/); errors are OperationOutcomes.
//!
//! `GET /desk/api/accesses` (cookie or `Authorization: Bearer <token>`):
//! ```json
//! {"patient": "Patient/p1", "total": 3, "accesses": [{"when": "<RFC 3339>", "what": "read",
//!    "action": "R", "records": ["Observation/o1/_history/1"], "facility": "Organization/fac-b",
//!    "practitioner": "Practitioner/d1" | null, "client": "emr-2", "purpose": "ETREAT",
//!    "purposeText": "emergency treatment", "emergency": true, "justification": "..." | null,
//!    "basis": ["consent"], "consents": ["Consent/c1/_history/1"], "outcome": "success|failure",
//!    "text": "Organization/fac-b read Observation/o1 for emergency treatment ..."}]}
//! ```
//! The same token works as a bearer on `GET /fhir/AuditEvent?patient=<own id>` (only).
//!
//! `POST /desk/api/logout` (cookie or bearer): ends the session at once (the next patient at
//! a shared kiosk cannot see this one's list) and clears the cookie; 204.

pub mod desk;
pub mod error;
pub mod names;
pub mod params;
pub mod records;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use actix::Addr;
use bytes::Bytes;
use hexa_actors::device::{
    Assert, DeviceActor, DeviceError, EnrollCard, EnrollFinger, IdentifyFinger, ReaderKind, Timed,
};
use hexa_actors::handle::StoreHandle;
use hexa_actors::store::{AccessContext, Record, StoreError};
use hexa_crypto::consent::{
    AssertionEvidence, ConsentChallenge, CoseKey, Decision, VerifyParams, verify_assertion,
};
use hexa_hal::ctap2::Assertion;
use hexa_hal::reader::ReaderError;
use http_body_util::Full;
use hyper::header::{ETAG, HeaderValue, LOCATION};
use hyper::{Response, StatusCode};
use serde_json::{Value, json};

pub use error::CeremonyError;
use params::{Params, format_time};
use records::{Enrolled, Enrolment, Terms};

/// FIDO2 relying party ID of the cards: one national value, so a card enrolled at one
/// appliance answers at every appliance of the exchange (not configurable for that reason).
pub const RP_ID: &str = "hexa-consent";

/// The ceremonies' timings and the fingerprint module's capacity (`[consent]` in hexa.toml).
pub type CeremonyConfig = crate::config::ConsentConfig;

/// Who asked for a ceremony (from the integrator's token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requester {
    /// Client id.
    pub client_id: String,
    /// Facility the client acts for.
    pub facility_id: String,
}

/// Most nonces awaiting an answer at once.
const MAX_OUTSTANDING_NONCES: usize = 4096;
/// Finished requests kept for the front desk.
const RECENT_REQUESTS: usize = 20;
/// Credential IDs offered to the card per getAssertion when the patient is not known.
const LOGIN_CHUNK: usize = 16;
/// Most cards a login looks through.
const MAX_LOGIN_CARDS: usize = 4096;
/// Page size of the store searches.
const PAGE: usize = 200;

/// The ceremony service: the store, the readers, this appliance's identity, the issued
/// challenges, the front desk's view of the requests and the session key.
pub struct Ceremonies {
    store: StoreHandle,
    devices: Addr<DeviceActor>,
    appliance_id: String,
    facility_id: String,
    config: CeremonyConfig,
    /// Nonces issued and not yet answered, with their issue time.
    issued: Mutex<HashMap<[u8; 32], u64>>,
    desk: Mutex<DeskState>,
    sessions: desk::SessionKey,
    /// Serialises fingerprint slot allocation.
    finger_lock: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct DeskState {
    next: u64,
    pending: Vec<DeskRequest>,
    recent: VecDeque<DeskRequest>,
}

#[derive(Debug, Clone)]
struct DeskRequest {
    id: u64,
    view: Value,
    reader: ReaderKind,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Unix time in seconds.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Marks a front-desk request finished when dropped (as `cancelled` unless finished).
struct DeskGuard<'a> {
    c: &'a Ceremonies,
    id: u64,
    result: Option<Value>,
}

impl DeskGuard<'_> {
    fn finish<T>(mut self, r: &Result<T, CeremonyError>, reference: impl Fn(&T) -> String) {
        self.result = Some(match r {
            Ok(v) => json!({"state": "done", "reference": reference(v)}),
            Err(e) => {
                json!({"state": "failed", "code": e.to_api().code, "reason": e.to_string()})
            }
        });
    }
}

impl Drop for DeskGuard<'_> {
    fn drop(&mut self) {
        let result = self.result.take().unwrap_or_else(
            || json!({"state": "failed", "code": "cancelled", "reason": "the request was abandoned"}),
        );
        let mut d = lock(&self.c.desk);
        if let Some(pos) = d.pending.iter().position(|r| r.id == self.id) {
            let mut r = d.pending.remove(pos);
            r.view["state"] = result["state"].clone();
            let mut res = result;
            if let Some(o) = res.as_object_mut() {
                o.remove("state");
            }
            r.view["result"] = res;
            d.recent.push_front(r);
            d.recent.truncate(RECENT_REQUESTS);
        }
    }
}

fn purpose_text(code: &str) -> &str {
    match code {
        "TREAT" => "treatment",
        "ETREAT" => "emergency treatment",
        "HPAYMT" => "payment",
        "HRESCH" => "research",
        "PUBHLTH" => "public health",
        "HOPERAT" => "healthcare operations",
        "PATRQT" => "your own request",
        "CAREMGT" => "care management",
        _ => code,
    }
}

/// A FHIR response carrying a stored version (ETag, Location).
fn record_response(status: StatusCode, rec: &Record, base: &str) -> Response<Full<Bytes>> {
    let mut r = crate::http::bytes_response(status, crate::http::FHIR_JSON, rec.canonical.clone());
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("W/\"{}\"", rec.version)) {
        h.insert(ETAG, v);
    }
    let loc = format!(
        "{base}/{}/{}/_history/{}",
        rec.resource_type, rec.id, rec.version
    );
    if let Ok(v) = HeaderValue::from_str(&loc) {
        h.insert(LOCATION, v);
    }
    r
}

/// The scope an operation needs: (resource type, interaction).
pub fn required_scope(ty: &str, op: &str) -> Option<(&'static str, crate::fhir::Interaction)> {
    use crate::fhir::Interaction as I;
    match (ty, op) {
        ("Patient", "$enroll-card" | "$enroll-finger") => Some(("Device", I::Create)),
        ("Device", "$revoke" | "$countersign") => Some(("Device", I::Update)),
        ("Patient", "$consent") => Some(("Consent", I::Create)),
        ("Consent", "$countersign" | "$revoke") => Some(("Consent", I::Update)),
        _ => None,
    }
}

/// The ceremony operations per resource type: (type, operation name without `$`).
pub const OPERATIONS: &[(&str, &str)] = &[
    ("Patient", "enroll-card"),
    ("Patient", "enroll-finger"),
    ("Patient", "consent"),
    ("Device", "revoke"),
    ("Device", "countersign"),
    ("Consent", "countersign"),
    ("Consent", "revoke"),
];

/// Adds the ceremony operations to the CapabilityStatement's resource entries.
pub fn capability_operations(resources: &mut [Value]) {
    for r in resources {
        let Some(ty) = r.get("type").and_then(Value::as_str).map(str::to_owned) else {
            continue;
        };
        let ops: Vec<Value> = OPERATIONS
            .iter()
            .filter(|(t, _)| *t == ty)
            .map(|(_, op)| json!({"name": op, "definition": format!("urn:hexa:operation:{op}")}))
            .collect();
        if ops.is_empty() {
            continue;
        }
        match r.get_mut("operation").and_then(Value::as_array_mut) {
            Some(existing) => existing.extend(ops),
            None => r["operation"] = Value::Array(ops),
        }
    }
}

impl Ceremonies {
    /// The service over `store` and the readers of `devices`, for the appliance whose node
    /// key has kid `appliance_id`, serving `facility_id`.
    pub fn new(
        store: StoreHandle,
        devices: Addr<DeviceActor>,
        appliance_id: &str,
        facility_id: &str,
        config: CeremonyConfig,
    ) -> Result<Self, CeremonyError> {
        Ok(Ceremonies {
            store,
            devices,
            appliance_id: appliance_id.to_owned(),
            facility_id: facility_id.to_owned(),
            config,
            issued: Mutex::new(HashMap::new()),
            desk: Mutex::new(DeskState::default()),
            sessions: desk::SessionKey::generate()?,
            finger_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &CeremonyConfig {
        &self.config
    }

    fn system(&self) -> AccessContext {
        AccessContext::system(&self.facility_id)
    }

    /// Runs `POST /fhir/{ty}/{id}/{op}`; the caller checked the scope of
    /// [`required_scope`].
    pub async fn operation(
        &self,
        requester: &Requester,
        ty: &str,
        id: &str,
        op: &str,
        body: &[u8],
        base: &str,
    ) -> Result<Response<Full<Bytes>>, CeremonyError> {
        if !params::valid_id(id) {
            return Err(CeremonyError::NotFound(format!("{ty}/{id} does not exist")));
        }
        let p = Params::parse(body)?;
        let (status, rec) = match (ty, op) {
            ("Patient", "$enroll-card") => {
                p.only(&["practitioner", "replaces", "timeoutSeconds"])?;
                (
                    StatusCode::CREATED,
                    self.enroll_card(requester, id, &p).await?,
                )
            }
            ("Patient", "$enroll-finger") => {
                p.only(&["practitioner", "replaces", "timeoutSeconds"])?;
                (
                    StatusCode::CREATED,
                    self.enroll_finger(requester, id, &p).await?,
                )
            }
            ("Device", "$revoke") => {
                p.only(&[])?;
                (StatusCode::OK, self.revoke_device(id).await?)
            }
            ("Device", "$countersign") => {
                p.only(&["practitioner", "signature"])?;
                (
                    StatusCode::OK,
                    self.countersign_enrolment(id, &p, now_secs()).await?,
                )
            }
            ("Patient", "$consent") => {
                (StatusCode::CREATED, self.consent(requester, id, &p).await?)
            }
            ("Consent", "$countersign") => {
                p.only(&["practitioner", "signature"])?;
                (StatusCode::OK, self.countersign(id, &p, now_secs()).await?)
            }
            ("Consent", "$revoke") => {
                p.only(&["timeoutSeconds"])?;
                (
                    StatusCode::OK,
                    self.revoke_consent(requester, id, &p).await?,
                )
            }
            _ => {
                return Err(CeremonyError::NotFound(format!(
                    "no operation {op} on {ty}"
                )));
            }
        };
        Ok(record_response(status, &rec, base))
    }

    fn timeout(&self, p: &Params) -> Result<Duration, CeremonyError> {
        let t = p
            .integer("timeoutSeconds")?
            .unwrap_or(self.config.default_timeout_secs);
        if t == 0 || t > self.config.max_timeout_secs {
            return Err(CeremonyError::BadRequest(format!(
                "timeoutSeconds must be between 1 and {}",
                self.config.max_timeout_secs
            )));
        }
        Ok(Duration::from_secs(t))
    }

    async fn require_patient(&self, id: &str) -> Result<(), CeremonyError> {
        match self.store.read(&self.system(), "Patient", id).await {
            Ok(r) if !r.deleted => Ok(()),
            Ok(_) | Err(StoreError::NotFound { .. } | StoreError::Gone { .. }) => Err(
                CeremonyError::NotFound(format!("Patient/{id} does not exist")),
            ),
            Err(e) => Err(e.into()),
        }
    }

    async fn require_practitioner(&self, id: &str) -> Result<Record, CeremonyError> {
        match self.store.read(&self.system(), "Practitioner", id).await {
            Ok(r) if !r.deleted => Ok(r),
            Ok(_) | Err(StoreError::NotFound { .. } | StoreError::Gone { .. }) => Err(
                CeremonyError::NotFound(format!("Practitioner/{id} does not exist")),
            ),
            Err(e) => Err(e.into()),
        }
    }

    /// Every Device matching `params` (all pages, at most `limit`).
    async fn devices(
        &self,
        params: &[(&str, String)],
        limit: usize,
    ) -> Result<Vec<Enrolled>, CeremonyError> {
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let mut q: Vec<(String, String)> = params
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect();
            q.push(("_count".into(), PAGE.to_string()));
            q.push(("_offset".into(), offset.to_string()));
            let page = self.store.search(&self.system(), "Device", &q).await?;
            let n = page.items.len();
            out.extend(page.items.iter().filter_map(records::parse_device));
            offset += n;
            if n == 0 || offset >= page.total || out.len() >= limit {
                break;
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    /// The patient's active card enrolments.
    pub async fn card_enrolments(&self, patient_id: &str) -> Result<Vec<Enrolled>, CeremonyError> {
        self.enrolments(patient_id, records::CARD).await
    }

    /// The relying party ID and this appliance's ID (what challenges name).
    pub fn identity(&self) -> (&str, &str) {
        (RP_ID, &self.appliance_id)
    }

    /// The patient's active enrolments of type `code`.
    async fn enrolments(
        &self,
        patient_id: &str,
        code: &str,
    ) -> Result<Vec<Enrolled>, CeremonyError> {
        let patient = format!("Patient/{patient_id}");
        let all = self
            .devices(
                &[
                    ("patient", patient.clone()),
                    ("type", format!("{}|{code}", records::DEVICE_TYPE_SYSTEM)),
                ],
                PAGE * 4,
            )
            .await?;
        Ok(all
            .into_iter()
            .filter(|d| d.active && d.patient == patient)
            .filter(|d| {
                matches!(
                    (&d.kind, code),
                    (Enrolment::Card { .. }, records::CARD)
                        | (Enrolment::Finger { .. }, records::FINGER)
                )
            })
            .collect())
    }

    fn register_request(
        &self,
        reader: ReaderKind,
        mut view: Value,
        timeout: Duration,
    ) -> DeskGuard<'_> {
        let now = now_secs();
        let mut d = lock(&self.desk);
        d.next += 1;
        let id = d.next;
        view["id"] = json!(format!("r-{id}"));
        view["state"] = json!("pending");
        view["started"] = json!(format_time(now));
        view["until"] = json!(format_time(now + timeout.as_secs()));
        d.pending.push(DeskRequest { id, view, reader });
        DeskGuard {
            c: self,
            id,
            result: None,
        }
    }

    fn fresh_nonce(&self, issued_at: u64) -> Result<[u8; 32], CeremonyError> {
        let nonce = random32()?;
        let mut issued = lock(&self.issued);
        let ttl = self.config.challenge_ttl_secs;
        let now = now_secs();
        issued.retain(|_, t| t.saturating_add(ttl) >= now);
        if issued.len() >= MAX_OUTSTANDING_NONCES {
            return Err(CeremonyError::Internal(
                "too many ceremonies are waiting for an answer; retry in a few minutes".into(),
            ));
        }
        issued.insert(nonce, issued_at);
        Ok(nonce)
    }

    /// Issues a challenge for `terms` at `issued_at` (its nonce is then accepted once).
    pub fn issue(&self, terms: &Terms, issued_at: u64) -> Result<ConsentChallenge, CeremonyError> {
        let nonce = self.fresh_nonce(issued_at)?;
        let ch = terms.challenge(&self.appliance_id, nonce, issued_at);
        ch.validate()?;
        Ok(ch)
    }

    /// A login challenge: a consent challenge that grants nothing (decision deny, no
    /// grantee, purpose `PATRQT`, patient `urn:hexa:login`), so a login assertion can never
    /// stand for a consent.
    fn login_challenge(&self, issued_at: u64) -> Result<ConsentChallenge, CeremonyError> {
        let nonce = self.fresh_nonce(issued_at)?;
        Ok(ConsentChallenge {
            version: 1,
            patient: "urn:hexa:login".into(),
            grantee_organization: None,
            grantee_practitioner: None,
            purpose: "PATRQT".into(),
            scope: Vec::new(),
            period_start: issued_at,
            period_end: issued_at,
            data_period_start: None,
            data_period_end: None,
            decision: Decision::Deny,
            appliance_id: self.appliance_id.clone(),
            nonce,
            issued_at,
        })
    }

    /// Checks a card's answer to `ch` at time `now` against the enrolments in `cards`:
    /// appliance and TTL, the nonce (accepted once), the credential (an active enrolment
    /// among `cards`), the signature and the counter; then stores the new counter.
    /// Returns the enrolment used (the version verified against) and the card evidence.
    pub async fn accept_card_assertion(
        &self,
        ch: &ConsentChallenge,
        a: &Assertion,
        cards: &[Enrolled],
        now: u64,
    ) -> Result<(Enrolled, Value), CeremonyError> {
        if ch.appliance_id != self.appliance_id {
            return Err(CeremonyError::Stale(
                "the challenge was issued by another appliance".into(),
            ));
        }
        if now > ch.issued_at.saturating_add(self.config.challenge_ttl_secs)
            || ch.issued_at > now.saturating_add(hexa_crypto::consent::MAX_FORWARD_SKEW_SECS)
        {
            return Err(CeremonyError::Stale(format!(
                "issued at {}, answered at {} (time to live {} s)",
                format_time(ch.issued_at),
                format_time(now),
                self.config.challenge_ttl_secs
            )));
        }
        if lock(&self.issued).remove(&ch.nonce).is_none() {
            return Err(CeremonyError::Replay);
        }
        let dev = cards
            .iter()
            .find(|d| {
                d.active
                    && matches!(&d.kind, Enrolment::Card { credential_id, .. } if *credential_id == a.credential_id)
            })
            .ok_or_else(|| {
                CeremonyError::WrongCredential(
                    "the card that answered is not an active card of this patient".into(),
                )
            })?;
        let Enrolment::Card {
            cose_key,
            sign_count,
            credential_id,
        } = &dev.kind
        else {
            return Err(CeremonyError::Internal("not a card enrolment".into()));
        };
        let key = CoseKey::from_cbor(cose_key)
            .map_err(|e| CeremonyError::Internal(format!("stored COSE key: {e}")))?;
        let verified = verify_assertion(
            ch,
            &key,
            &AssertionEvidence {
                authenticator_data: a.auth_data.clone(),
                signature: a.signature.clone(),
                credential_id: a.credential_id.clone(),
            },
            &VerifyParams {
                rp_id: RP_ID,
                expected_appliance_id: &self.appliance_id,
                last_sign_count: *sign_count,
                now,
                ttl_secs: self.config.challenge_ttl_secs,
                require_user_verified: false,
            },
        )?;
        if verified.sign_count != *sign_count {
            self.store
                .update(
                    &self.system(),
                    "Device",
                    &dev.id,
                    records::with_sign_count(&dev.resource, verified.sign_count),
                    Some(dev.version),
                    None,
                )
                .await
                .map_err(|e| match e {
                    StoreError::Conflict { .. } => CeremonyError::Replay,
                    e => e.into(),
                })?;
        }
        let ev = records::card_evidence(
            &dev.versioned(),
            credential_id,
            cose_key,
            &a.auth_data,
            &a.signature,
            RP_ID,
        );
        Ok((dev.clone(), ev))
    }

    async fn tap_card(
        &self,
        ch: &ConsentChallenge,
        cards: &[Enrolled],
        timeout: Duration,
    ) -> Result<Assertion, CeremonyError> {
        let allow = cards
            .iter()
            .filter_map(|d| match &d.kind {
                Enrolment::Card { credential_id, .. } => Some(credential_id.clone()),
                Enrolment::Finger { .. } => None,
            })
            .collect();
        let a = self
            .devices
            .send(Timed {
                message: Assert {
                    rp_id: RP_ID.to_string(),
                    client_data_hash: ch.client_data_hash(),
                    allow_credential_ids: allow,
                    pin: None,
                },
                timeout,
            })
            .await
            .map_err(|e| CeremonyError::Internal(format!("device actor: {e}")))??;
        Ok(a)
    }

    /// The name of a registry entry held here (`Organization.name`, a Practitioner's
    /// first name), for the front desk; `None` when it is not in this appliance's registry.
    async fn display_name(&self, ty: &str, id: &str) -> Option<String> {
        let rec = self.store.read(&self.system(), ty, id).await.ok()?;
        let r = &rec.resource;
        let name = match ty {
            "Organization" => r.get("name")?.as_str()?.to_owned(),
            _ => {
                let n = r.get("name")?.get(0)?;
                match n.get("text").and_then(Value::as_str) {
                    Some(t) => t.to_owned(),
                    None => {
                        let mut parts: Vec<&str> = n
                            .get("given")
                            .and_then(Value::as_array)
                            .map(|g| g.iter().filter_map(Value::as_str).collect())
                            .unwrap_or_default();
                        parts.extend(n.get("family").and_then(Value::as_str));
                        parts.join(" ")
                    }
                }
            }
        };
        let name: String = name.chars().filter(|c| !c.is_control()).take(200).collect();
        (!name.trim().is_empty()).then_some(name)
    }

    /// The plain-words sentence and the JSON view of `t` for the front desk.
    async fn describe(&self, t: &Terms, revocation: bool) -> (String, Value) {
        let org = self.display_name("Organization", &t.organization).await;
        let prac = match &t.practitioner {
            Some(p) => self.display_name("Practitioner", p).await,
            None => None,
        };
        let label = |name: &Option<String>, r: String| match name {
            Some(n) => format!("{n} ({r})"),
            None => r,
        };
        let org_label = label(&org, format!("Organization/{}", t.organization));
        let who = match &t.practitioner {
            Some(p) => format!(
                "{} of {org_label}",
                label(&prac, format!("Practitioner/{p}"))
            ),
            None => org_label,
        };
        let mut view = self.terms_view(t);
        view["granteeNames"] = json!([org, prac]);
        (self.terms_text(t, &who, revocation), view)
    }

    fn terms_view(&self, t: &Terms) -> Value {
        let mut grantee = vec![format!("Organization/{}", t.organization)];
        if let Some(p) = &t.practitioner {
            grantee.push(format!("Practitioner/{p}"));
        }
        let mut v = json!({
            "grantee": grantee,
            "purpose": t.purpose,
            "purposeText": purpose_text(&t.purpose),
            "scope": if t.classes.is_empty() { json!("all clinical data") } else { json!(t.classes) },
            "period": {"start": format_time(t.period.0), "end": format_time(t.period.1)},
            "decision": params::decision_code(t.decision),
        });
        if t.data_period.0.is_some() || t.data_period.1.is_some() {
            v["dataPeriod"] = json!({
                "start": t.data_period.0.map(format_time),
                "end": t.data_period.1.map(format_time),
            });
        }
        v
    }

    fn terms_text(&self, t: &Terms, who: &str, revocation: bool) -> String {
        let what = if t.classes.is_empty() {
            "all your clinical records".to_owned()
        } else {
            format!("your {} records", t.classes.join(", "))
        };
        let verb = match (revocation, t.decision) {
            (true, _) => format!("Withdraw the permission of {who} to read"),
            (false, Decision::Permit) => format!("{who} asks to read"),
            (false, Decision::Deny) => format!("Forbid {who} to read"),
        };
        format!(
            "{verb} {what} for {} ({}), from {} until {}.",
            purpose_text(&t.purpose),
            t.purpose,
            format_time(t.period.0),
            format_time(t.period.1)
        )
    }

    fn parse_terms(&self, patient_id: &str, p: &Params, now: u64) -> Result<Terms, CeremonyError> {
        let organization = p
            .reference("organization", "Organization")?
            .ok_or_else(|| {
                CeremonyError::BadRequest("the grantee `organization` is required".into())
            })?;
        let practitioner = p.reference("practitioner", "Practitioner")?;
        let purpose = params::purpose(&p.text("purpose")?.ok_or_else(|| {
            CeremonyError::BadRequest("`purpose` is required (e.g. TREAT)".into())
        })?)?;
        let mut classes: Vec<String> = Vec::new();
        for c in p.codes("class")? {
            if !hexa_actors::store::route::SHR_TYPES.contains(&c.as_str()) {
                return Err(CeremonyError::BadRequest(format!(
                    "class {c:?} is not a clinical resource type of the shared health record"
                )));
            }
            if !classes.contains(&c) {
                classes.push(c);
            }
        }
        if classes.len() > params::MAX_CLASSES {
            return Err(CeremonyError::BadRequest(format!(
                "at most {} classes",
                params::MAX_CLASSES
            )));
        }
        let time = |n: &str| -> Result<Option<u64>, CeremonyError> {
            p.text(n)?.map(|s| params::parse_time(&s)).transpose()
        };
        let start = time("periodStart")?.unwrap_or(now);
        let end = time("periodEnd")?
            .ok_or_else(|| CeremonyError::BadRequest("`periodEnd` is required".into()))?;
        if end <= start || end <= now {
            return Err(CeremonyError::BadRequest(
                "periodEnd must be after periodStart and in the future".into(),
            ));
        }
        let ds = time("dataPeriodStart")?;
        let de = time("dataPeriodEnd")?;
        if let (Some(s), Some(e)) = (ds, de)
            && s > e
        {
            return Err(CeremonyError::BadRequest(
                "dataPeriodStart is after dataPeriodEnd".into(),
            ));
        }
        Ok(Terms {
            patient_id: patient_id.to_owned(),
            organization,
            practitioner,
            purpose,
            classes,
            period: (start, end),
            data_period: (ds, de),
            decision: params::decision(p.text("decision")?.as_deref())?,
        })
    }

    async fn consent(
        &self,
        requester: &Requester,
        patient_id: &str,
        p: &Params,
    ) -> Result<Record, CeremonyError> {
        p.only(&[
            "organization",
            "practitioner",
            "purpose",
            "class",
            "periodStart",
            "periodEnd",
            "dataPeriodStart",
            "dataPeriodEnd",
            "decision",
            "method",
            "timeoutSeconds",
        ])?;
        let now = now_secs();
        let terms = self.parse_terms(patient_id, p, now)?;
        let timeout = self.timeout(p)?;
        let finger = match p.text("method")?.as_deref() {
            None | Some("card") => false,
            Some("finger" | "fingerprint") => true,
            Some(o) => {
                return Err(CeremonyError::BadRequest(format!(
                    "method {o:?} must be card or finger"
                )));
            }
        };
        self.require_patient(patient_id).await?;
        let code = if finger {
            records::FINGER
        } else {
            records::CARD
        };
        let enrolled = self.enrolments(patient_id, code).await?;
        if enrolled.is_empty() {
            return Err(CeremonyError::NotEnrolled(format!(
                "Patient/{patient_id} has no active enrolled {}; enrol one first",
                if finger { "fingerprint" } else { "card" }
            )));
        }
        let (text, terms_view) = self.describe(&terms, false).await;
        let mut view = json!({
            "kind": "consent",
            "method": if finger { "fingerprint" } else { "card" },
            "patient": format!("Patient/{patient_id}"),
            "askedBy": {"client": requester.client_id, "facility": format!("Organization/{}", requester.facility_id)},
            "text": text,
            "terms": terms_view,
        });
        let reader = if finger {
            ReaderKind::Fingerprint
        } else {
            ReaderKind::Card
        };
        self.add_names(&mut view).await;
        let guard = self.register_request(reader, view, timeout);
        let r = if finger {
            self.finger_consent(&terms, &enrolled, timeout, now).await
        } else {
            self.card_consent(&terms, &enrolled, timeout, now).await
        };
        guard.finish(&r, Record::versioned_reference);
        r
    }

    async fn card_consent(
        &self,
        terms: &Terms,
        cards: &[Enrolled],
        timeout: Duration,
        now: u64,
    ) -> Result<Record, CeremonyError> {
        let ch = self.issue(terms, now)?;
        let a = self.tap_card(&ch, cards, timeout).await?;
        let (_, card) = self
            .accept_card_assertion(&ch, &a, cards, now_secs())
            .await?;
        let ev = records::evidence("card", &ch, card);
        let consent = records::consent_resource(
            terms,
            &self.facility_id,
            "active",
            "card",
            &ev,
            ch.issued_at,
        );
        Ok(self
            .store
            .create(&self.system(), consent, None)
            .await?
            .record)
    }

    async fn finger_consent(
        &self,
        terms: &Terms,
        templates: &[Enrolled],
        timeout: Duration,
        now: u64,
    ) -> Result<Record, CeremonyError> {
        let ch = self.issue(terms, now)?;
        let m = self
            .devices
            .send(Timed {
                message: IdentifyFinger,
                timeout,
            })
            .await
            .map_err(|e| CeremonyError::Internal(format!("device actor: {e}")))??;
        if lock(&self.issued).remove(&ch.nonce).is_none() {
            return Err(CeremonyError::Replay);
        }
        if now_secs() > ch.issued_at.saturating_add(self.config.challenge_ttl_secs) {
            return Err(CeremonyError::Stale(
                "the finger was presented too late".into(),
            ));
        }
        let dev = templates
            .iter()
            .find(|d| matches!(d.kind, Enrolment::Finger { template } if template == m.slot))
            .ok_or_else(|| {
                CeremonyError::WrongCredential(
                    "the finger on the sensor is not an enrolled finger of this patient".into(),
                )
            })?;
        let ev = records::evidence(
            "fingerprint",
            &ch,
            json!({"device": dev.versioned(), "templateId": m.slot, "matchScore": m.score}),
        );
        let consent = records::consent_resource(
            terms,
            &self.facility_id,
            "proposed",
            "fingerprint",
            &ev,
            ch.issued_at,
        );
        Ok(self
            .store
            .create(&self.system(), consent, None)
            .await?
            .record)
    }

    async fn read_consent(&self, id: &str) -> Result<Record, CeremonyError> {
        match self.store.read(&self.system(), "Consent", id).await {
            Ok(r) if !r.deleted => Ok(r),
            Ok(_) | Err(StoreError::NotFound { .. } | StoreError::Gone { .. }) => Err(
                CeremonyError::NotFound(format!("Consent/{id} does not exist")),
            ),
            Err(e) => Err(e.into()),
        }
    }

    /// `$countersign` at time `now`: the practitioner's JWS over the challenge bytes turns
    /// a `proposed` fingerprint consent `active`.
    pub async fn countersign(
        &self,
        id: &str,
        p: &Params,
        now: u64,
    ) -> Result<Record, CeremonyError> {
        let (prac_id, jws) = Self::countersign_params(p, "the challenge")?;
        let rec = self.read_consent(id).await?;
        let status = rec.resource.get("status").and_then(Value::as_str);
        if status != Some("proposed") || records::assurance_of(&rec.resource) != Some("fingerprint")
        {
            return Err(CeremonyError::WrongState(format!(
                "Consent/{id} is not a proposed fingerprint consent"
            )));
        }
        let mut ev = records::evidence_of(&rec.resource)?;
        let (bytes, ch) = records::evidence_challenge(&ev)?;
        self.in_countersign_window(ch.issued_at, now, "a fingerprint consent")?;
        let key = self.verify_worker_signature(&prac_id, &jws, &bytes).await?;
        ev["countersignature"] = json!({
            "practitioner": format!("Practitioner/{prac_id}"),
            "kid": key.kid(),
            "jws": jws,
        });
        let next = records::consent_next_version(
            &rec.resource,
            "active",
            "fingerprint",
            &ev,
            ch.issued_at,
        );
        self.update_version("Consent", id, next, rec.version).await
    }

    async fn revoke_consent(
        &self,
        requester: &Requester,
        id: &str,
        p: &Params,
    ) -> Result<Record, CeremonyError> {
        let timeout = self.timeout(p)?;
        let rec = self.read_consent(id).await?;
        let status = rec.resource.get("status").and_then(Value::as_str);
        if !matches!(status, Some("active" | "proposed")) {
            return Err(CeremonyError::WrongState(format!(
                "Consent/{id} is not active or proposed; there is nothing to revoke"
            )));
        }
        let ev = records::evidence_of(&rec.resource)?;
        let (_, old) = records::evidence_challenge(&ev)?;
        let mut terms = Terms::from_challenge(&old)?;
        terms.decision = Decision::Deny;
        let cards = self.enrolments(&terms.patient_id, records::CARD).await?;
        if cards.is_empty() {
            return Err(CeremonyError::NotEnrolled(format!(
                "Patient/{} has no active enrolled card to revoke with",
                terms.patient_id
            )));
        }
        let (text, terms_view) = self.describe(&terms, true).await;
        let mut view = json!({
            "kind": "revocation",
            "method": "card",
            "patient": format!("Patient/{}", terms.patient_id),
            "askedBy": {"client": requester.client_id, "facility": format!("Organization/{}", requester.facility_id)},
            "text": text,
            "terms": terms_view,
        });
        self.add_names(&mut view).await;
        let guard = self.register_request(ReaderKind::Card, view, timeout);
        let r = async {
            let now = now_secs();
            let ch = self.issue(&terms, now)?;
            let a = self.tap_card(&ch, &cards, timeout).await?;
            let (_, card) = self
                .accept_card_assertion(&ch, &a, &cards, now_secs())
                .await?;
            let mut ev = records::evidence("card", &ch, card);
            ev["revokes"] = json!(rec.versioned_reference());
            let next = records::consent_next_version(&rec.resource, "inactive", "card", &ev, now);
            self.update_version("Consent", id, next, rec.version).await
        }
        .await;
        guard.finish(&r, Record::versioned_reference);
        r
    }

    async fn replaced_device(
        &self,
        patient_id: &str,
        p: &Params,
    ) -> Result<Option<Enrolled>, CeremonyError> {
        let Some(old) = p.reference("replaces", "Device")? else {
            return Ok(None);
        };
        let d = self.read_enrolment(&old).await?;
        if d.patient != format!("Patient/{patient_id}") || !d.active {
            return Err(CeremonyError::WrongState(format!(
                "Device/{old} is not an active enrolment of Patient/{patient_id}"
            )));
        }
        Ok(Some(d))
    }

    async fn read_enrolment(&self, id: &str) -> Result<Enrolled, CeremonyError> {
        let rec = match self.store.read(&self.system(), "Device", id).await {
            Ok(r) if !r.deleted => r,
            Ok(_) | Err(StoreError::NotFound { .. } | StoreError::Gone { .. }) => {
                return Err(CeremonyError::NotFound(format!(
                    "Device/{id} does not exist"
                )));
            }
            Err(e) => return Err(e.into()),
        };
        records::parse_device(&rec).ok_or_else(|| {
            CeremonyError::NotFound(format!("Device/{id} is not an enrolment record"))
        })
    }

    async fn deactivate(&self, d: &Enrolled) -> Result<Record, CeremonyError> {
        self.update_version(
            "Device",
            &d.id,
            records::with_status(&d.resource, "inactive"),
            d.version,
        )
        .await
    }

    /// Writes `next` as the version after `version` of `ty/id`; a version written
    /// meanwhile is a 409 `wrong-state` (the caller's decision was made on the old one).
    async fn update_version(
        &self,
        ty: &str,
        id: &str,
        next: Value,
        version: u64,
    ) -> Result<Record, CeremonyError> {
        match self
            .store
            .update(&self.system(), ty, id, next, Some(version), None)
            .await
        {
            Ok(w) => Ok(w.record),
            Err(StoreError::Conflict { .. }) => Err(CeremonyError::WrongState(format!(
                "{ty}/{id} changed meanwhile; retry"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// A countersignature of `what`, made at `since`, is on time at `now`.
    fn in_countersign_window(&self, since: u64, now: u64, what: &str) -> Result<(), CeremonyError> {
        let window = self.config.countersign_window_secs;
        if now > since.saturating_add(window) {
            return Err(CeremonyError::Stale(format!(
                "{what} must be countersigned within {window} s of its ceremony"
            )));
        }
        Ok(())
    }

    /// The `practitioner` and `signature` parameters of a `$countersign` over `signed`.
    fn countersign_params(p: &Params, signed: &str) -> Result<(String, String), CeremonyError> {
        let prac_id = p
            .reference("practitioner", "Practitioner")?
            .ok_or_else(|| {
                CeremonyError::BadRequest(
                    "`practitioner` (the countersigning health worker) is required".into(),
                )
            })?;
        let jws = p.text("signature")?.ok_or_else(|| {
            CeremonyError::BadRequest(format!(
                "`signature` (a detached JWS over {signed}) is required"
            ))
        })?;
        Ok((prac_id, jws))
    }

    /// Verifies `jws` over `bytes` by the key registered on Practitioner `prac_id`;
    /// returns that key.
    async fn verify_worker_signature(
        &self,
        prac_id: &str,
        jws: &str,
        bytes: &[u8],
    ) -> Result<hexa_crypto::keys::PublicKey, CeremonyError> {
        let prac = self.require_practitioner(prac_id).await?;
        let key = records::practitioner_key(&prac.resource).ok_or_else(|| {
            CeremonyError::WrongCredential(format!(
                "Practitioner/{prac_id} has no registered Ed25519 key (extension {})",
                records::EXT_PUBLIC_JWK
            ))
        })?;
        hexa_crypto::jws::verify_detached(jws, bytes, &key)
            .map_err(|e| CeremonyError::BadSignature(e.to_string()))?;
        Ok(key)
    }

    async fn revoke_device(&self, id: &str) -> Result<Record, CeremonyError> {
        let d = self.read_enrolment(id).await?;
        if !d.active {
            return Err(CeremonyError::WrongState(format!(
                "Device/{id} is already inactive"
            )));
        }
        self.deactivate(&d).await
    }

    /// Writes a new enrolment Device. Named by a health worker, it carries the enrolment
    /// statement that health worker countersigns (`Device/{id}/$countersign`); the
    /// statement names the Device, so its id is chosen here and written as a create
    /// (`If-Match` version 0: the id must not exist yet).
    async fn store_enrolment(
        &self,
        patient_id: &str,
        dev: Value,
        kind: &Enrolment,
        by: Option<&str>,
    ) -> Result<hexa_actors::store::engine::WriteResult, CeremonyError> {
        let Some(by) = by else {
            return Ok(self.store.create(&self.system(), dev, None).await?);
        };
        let id = hexa_actors::store::new_id()?;
        let statement = records::enrolment_statement(
            &self.appliance_id,
            &id,
            patient_id,
            kind,
            by,
            now_secs(),
        )?;
        let dev = records::with_statement(dev, &id, &statement);
        Ok(self
            .store
            .update(&self.system(), "Device", &id, dev, Some(0), None)
            .await?)
    }

    /// `Device/{id}/$countersign` at time `now`: the enrolling health worker's detached JWS
    /// over the Device's enrolment statement, by the key registered on their Practitioner,
    /// is verified and added to the next version of the Device.
    pub async fn countersign_enrolment(
        &self,
        id: &str,
        p: &Params,
        now: u64,
    ) -> Result<Record, CeremonyError> {
        let (prac_id, jws) = Self::countersign_params(p, "the enrolment statement")?;
        let d = self.read_enrolment(id).await?;
        if !d.active {
            return Err(CeremonyError::WrongState(format!(
                "Device/{id} is not an active enrolment"
            )));
        }
        let Some(statement) = records::statement_of(&d.resource) else {
            return Err(CeremonyError::WrongState(format!(
                "Device/{id} was enrolled without naming a health worker: there is no \
                 enrolment statement to countersign"
            )));
        };
        if records::is_countersigned(&d.resource) {
            return Err(CeremonyError::WrongState(format!(
                "Device/{id} is already countersigned"
            )));
        }
        let st: Value = serde_json::from_slice(&statement)
            .map_err(|e| CeremonyError::Internal(format!("stored enrolment statement: {e}")))?;
        let enrolled_by = st["enrolledBy"].as_str().unwrap_or_default();
        if enrolled_by != format!("Practitioner/{prac_id}") {
            return Err(CeremonyError::WrongCredential(format!(
                "Device/{id} was enrolled by {enrolled_by}, not Practitioner/{prac_id}"
            )));
        }
        let enrolled_at = st["enrolledAt"].as_u64().unwrap_or(0);
        self.in_countersign_window(enrolled_at, now, "an enrolment")?;
        let key = self
            .verify_worker_signature(&prac_id, &jws, &statement)
            .await?;
        let next = records::with_countersignature(&d.resource, &prac_id, &key.kid(), &jws);
        self.update_version("Device", id, next, d.version).await
    }

    async fn enroll_card(
        &self,
        requester: &Requester,
        patient_id: &str,
        p: &Params,
    ) -> Result<Record, CeremonyError> {
        let timeout = self.timeout(p)?;
        let by = p.reference("practitioner", "Practitioner")?;
        self.require_patient(patient_id).await?;
        if let Some(b) = &by {
            self.require_practitioner(b).await?;
        }
        let old = self.replaced_device(patient_id, p).await?;
        let view = json!({
            "kind": "enrol-card",
            "method": "card",
            "patient": format!("Patient/{patient_id}"),
            "askedBy": {"client": requester.client_id, "facility": format!("Organization/{}", requester.facility_id)},
            "text": "Place the new consent card on the reader to enrol it.",
        });
        let guard = self.register_request(ReaderKind::Card, view, timeout);
        let r = async {
            // makeCredential signs this hash; the attestation is not kept, so any fresh
            // value bound to the patient and this appliance will do.
            let mut seed = b"hexa-enrol-v1\0".to_vec();
            seed.extend_from_slice(
                format!("Patient/{patient_id}\0{}\0", self.appliance_id).as_bytes(),
            );
            seed.extend_from_slice(&random32()?);
            let e = self
                .devices
                .send(Timed {
                    message: EnrollCard {
                        rp_id: RP_ID.to_string(),
                        user_id: patient_id.as_bytes().to_vec(),
                        user_name: format!("Patient/{patient_id}"),
                        client_data_hash: sha256(&seed),
                        pin: None,
                    },
                    timeout,
                })
                .await
                .map_err(|e| CeremonyError::Internal(format!("device actor: {e}")))??;
            CoseKey::from_cbor(&e.cose_key).map_err(|x| {
                CeremonyError::Declined(format!("the card's key is not usable: {x}"))
            })?;
            let sign_count = attested_sign_count(&e.auth_data);
            let dev = records::card_device(
                patient_id,
                &e.credential_id,
                &e.cose_key,
                sign_count,
                by.as_deref(),
            );
            let kind = Enrolment::Card {
                credential_id: e.credential_id.clone(),
                cose_key: e.cose_key.clone(),
                sign_count,
            };
            let w = self
                .store_enrolment(patient_id, dev, &kind, by.as_deref())
                .await?;
            if let Some(o) = &old {
                self.deactivate(o).await?;
            }
            Ok(w.record)
        }
        .await;
        guard.finish(&r, Record::versioned_reference);
        r
    }

    async fn enroll_finger(
        &self,
        requester: &Requester,
        patient_id: &str,
        p: &Params,
    ) -> Result<Record, CeremonyError> {
        let timeout = self.timeout(p)?;
        let by = p.reference("practitioner", "Practitioner")?;
        self.require_patient(patient_id).await?;
        if let Some(b) = &by {
            self.require_practitioner(b).await?;
        }
        let old = self.replaced_device(patient_id, p).await?;
        let _slots = self.finger_lock.lock().await;
        let templates: Vec<(u16, Enrolled)> = self
            .devices(
                &[(
                    "type",
                    format!("{}|{}", records::DEVICE_TYPE_SYSTEM, records::FINGER),
                )],
                usize::from(self.config.finger_slots) * 2,
            )
            .await?
            .into_iter()
            .filter_map(|d| match d.kind {
                Enrolment::Finger { template } => Some((template, d)),
                Enrolment::Card { .. } => None,
            })
            .collect();
        let free = (0..self.config.finger_slots).find(|s| !templates.iter().any(|(t, _)| t == s));
        let view = json!({
            "kind": "enrol-finger",
            "method": "fingerprint",
            "patient": format!("Patient/{patient_id}"),
            "askedBy": {"client": requester.client_id, "facility": format!("Organization/{}", requester.facility_id)},
            "text": "Place the finger to enrol on the sensor.",
        });
        let guard = self.register_request(ReaderKind::Fingerprint, view, timeout);
        let r = async {
            // A finger the module already knows must not get a second template: the module
            // would then match it to either, and a consent could name the wrong patient.
            let known = match self
                .devices
                .send(Timed {
                    message: IdentifyFinger,
                    timeout,
                })
                .await
                .map_err(|e| CeremonyError::Internal(format!("device actor: {e}")))?
            {
                Ok(m) => Some(m.slot),
                Err(DeviceError::Reader(ReaderError::Fingerprint(
                    hexa_hal::fingerprint::Error::Module(_),
                ))) => None,
                Err(e) => return Err(e.into()),
            };
            let slot = match known {
                Some(s) => {
                    let replaced = |d: &Enrolled| old.as_ref().is_some_and(|o| o.id == d.id);
                    if let Some((_, d)) = templates
                        .iter()
                        .find(|(t, d)| *t == s && d.active && !replaced(d))
                    {
                        return Err(CeremonyError::WrongState(format!(
                            "this finger is already enrolled ({}); revoke that enrolment first",
                            d.versioned()
                        )));
                    }
                    // A template no active enrolment uses (or the one being replaced):
                    // overwrite it.
                    s
                }
                None => free.ok_or_else(|| {
                    CeremonyError::WrongState(
                        "every template slot of the fingerprint module is used".into(),
                    )
                })?,
            };
            let slot = self
                .devices
                .send(Timed {
                    message: EnrollFinger { slot },
                    timeout,
                })
                .await
                .map_err(|e| CeremonyError::Internal(format!("device actor: {e}")))?
                .map_err(|e| match CeremonyError::from(e) {
                    CeremonyError::WrongCredential(_) => CeremonyError::Declined(
                        "the module could not enrol this finger; try again".into(),
                    ),
                    o => o,
                })?;
            let dev = records::finger_device(patient_id, slot, by.as_deref());
            let kind = Enrolment::Finger { template: slot };
            let w = self
                .store_enrolment(patient_id, dev, &kind, by.as_deref())
                .await?;
            if let Some(o) = &old {
                self.deactivate(o).await?;
            }
            Ok(w.record)
        }
        .await;
        guard.finish(&r, Record::versioned_reference);
        r
    }
}

/// The signature counter of a makeCredential authenticatorData (bytes 33..37, big-endian).
fn attested_sign_count(auth_data: &[u8]) -> u32 {
    auth_data
        .get(33..37)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_be_bytes)
        .unwrap_or(0)
}

fn random32() -> Result<[u8; 32], CeremonyError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| CeremonyError::Internal(format!("OS RNG: {e}")))?;
    Ok(b)
}

fn sha256(b: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(b).into()
}

/// Shared handle on the service.
pub type SharedCeremonies = Arc<Ceremonies>;
