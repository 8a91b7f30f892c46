//! The FHIR shapes of the consent contract: enrolment records (Device), Consent resources
//! and the evidence JSON inside `Consent.sourceAttachment` — built here and read back here,
//! so the ceremony code never touches raw JSON paths.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hexa_actors::store::Record;
use hexa_crypto::consent::{ConsentChallenge, Decision};
use serde_json::{Value, json};

use super::error::CeremonyError;
use super::params::{decision_code, format_time};

/// Code system of the enrolment record types.
pub const DEVICE_TYPE_SYSTEM: &str = "urn:hexa:device-type";
/// Device type code of an enrolled FIDO2 card.
pub const CARD: &str = "fido2-card";
/// Device type code of an enrolled fingerprint template.
pub const FINGER: &str = "fingerprint-template";
/// Identifier system of a card's credential ID (base64url without padding).
pub const CREDENTIAL_SYSTEM: &str = "urn:hexa:fido2-credential-id";
/// Identifier system of a fingerprint template number.
pub const TEMPLATE_SYSTEM: &str = "urn:hexa:fingerprint-template";
/// Extension carrying a card's COSE_Key (standard base64).
pub const EXT_COSE_KEY: &str = "urn:hexa:cose-key";
/// Extension carrying a card's last signature counter.
pub const EXT_SIGN_COUNT: &str = "urn:hexa:sign-count";
/// Extension naming the health worker who enrolled the card or finger.
pub const EXT_ENROLLED_BY: &str = "urn:hexa:enrolled-by";
/// Extension carrying the enrolment statement (standard base64 of its JCS bytes) that the
/// enrolling health worker countersigns; present when the enrolment names a practitioner,
/// and carried unchanged by every later version of the Device.
pub const EXT_ENROLMENT_STATEMENT: &str = "urn:hexa:enrolment-statement";
/// Extension carrying the enrolling health worker's countersignature of the statement:
/// sub-extensions `practitioner` (Reference), `kid` and `jws` (detached JWS, strings).
pub const EXT_ENROLMENT_COUNTERSIGNATURE: &str = "urn:hexa:enrolment-countersignature";
/// `format` of the enrolment statement.
pub const STATEMENT_FORMAT: &str = "hexa-enrolment-statement-v1";
/// Extension carrying a Practitioner's public JWK.
pub const EXT_PUBLIC_JWK: &str = "urn:hexa:public-jwk";
/// Extension recording a consent's assurance (`card` or `fingerprint`).
pub const EXT_ASSURANCE: &str = "urn:hexa:consent-assurance";
/// Content type of the evidence attachment.
pub const EVIDENCE_CONTENT_TYPE: &str = "application/vnd.hexa.consent-evidence+json";
/// Title of the evidence attachment.
pub const EVIDENCE_TITLE: &str = "hexa consent evidence v1";
/// `format` of the evidence JSON.
pub const EVIDENCE_FORMAT: &str = "hexa-consent-evidence-v1";

fn invalid(msg: impl Into<String>) -> CeremonyError {
    CeremonyError::Internal(msg.into())
}

/// The enrolment Device of a card (contract section 3).
pub fn card_device(
    patient_id: &str,
    credential_id: &[u8],
    cose_key: &[u8],
    sign_count: u32,
    enrolled_by: Option<&str>,
) -> Value {
    let mut ext = vec![
        json!({"url": EXT_COSE_KEY, "valueBase64Binary": STANDARD.encode(cose_key)}),
        json!({"url": EXT_SIGN_COUNT, "valueUnsignedInt": sign_count}),
    ];
    if let Some(p) = enrolled_by {
        ext.push(json!({"url": EXT_ENROLLED_BY, "valueReference": {"reference": format!("Practitioner/{p}")}}));
    }
    json!({
        "resourceType": "Device",
        "status": "active",
        "patient": {"reference": format!("Patient/{patient_id}")},
        "type": {"coding": [{"system": DEVICE_TYPE_SYSTEM, "code": CARD}]},
        "identifier": [{"system": CREDENTIAL_SYSTEM, "value": URL_SAFE_NO_PAD.encode(credential_id)}],
        "extension": ext,
    })
}

/// The enrolment Device of a fingerprint template (contract section 3).
pub fn finger_device(patient_id: &str, template: u16, enrolled_by: Option<&str>) -> Value {
    let mut d = json!({
        "resourceType": "Device",
        "status": "active",
        "patient": {"reference": format!("Patient/{patient_id}")},
        "type": {"coding": [{"system": DEVICE_TYPE_SYSTEM, "code": FINGER}]},
        "identifier": [{"system": TEMPLATE_SYSTEM, "value": template.to_string()}],
    });
    if let Some(p) = enrolled_by {
        d["extension"] = json!([{"url": EXT_ENROLLED_BY, "valueReference": {"reference": format!("Practitioner/{p}")}}]);
    }
    d
}

/// What kind of enrolment a Device records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enrolment {
    /// A FIDO2 card credential.
    Card {
        /// Credential ID.
        credential_id: Vec<u8>,
        /// COSE_Key bytes.
        cose_key: Vec<u8>,
        /// Last signature counter seen.
        sign_count: u32,
    },
    /// A fingerprint template slot on the module.
    Finger {
        /// Template number.
        template: u16,
    },
}

/// An enrolment record read back from the store.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// Device id.
    pub id: String,
    /// Version read.
    pub version: u64,
    /// `Patient/<id>`.
    pub patient: String,
    /// Whether the enrolment is active.
    pub active: bool,
    /// The credential or template.
    pub kind: Enrolment,
    /// The stored resource.
    pub resource: Value,
}

impl Enrolled {
    /// `Device/<id>/_history/<v>`.
    pub fn versioned(&self) -> String {
        format!("Device/{}/_history/{}", self.id, self.version)
    }
}

fn ext<'a>(r: &'a Value, url: &str) -> Option<&'a Value> {
    r.get("extension")?
        .as_array()?
        .iter()
        .find(|e| e.get("url").and_then(Value::as_str) == Some(url))
}

fn identifier<'a>(r: &'a Value, system: &str) -> Option<&'a str> {
    r.get("identifier")?
        .as_array()?
        .iter()
        .find(|i| i.get("system").and_then(Value::as_str) == Some(system))?
        .get("value")?
        .as_str()
}

/// Reads an enrolment Device; `None` for any other Device (or a malformed one).
pub fn parse_device(rec: &Record) -> Option<Enrolled> {
    if rec.resource_type != "Device" || rec.deleted {
        return None;
    }
    let r = &rec.resource;
    let code = r
        .get("type")?
        .get("coding")?
        .as_array()?
        .iter()
        .find(|c| c.get("system").and_then(Value::as_str) == Some(DEVICE_TYPE_SYSTEM))?
        .get("code")?
        .as_str()?;
    let patient = r.get("patient")?.get("reference")?.as_str()?.to_owned();
    let kind = match code {
        CARD => Enrolment::Card {
            credential_id: URL_SAFE_NO_PAD
                .decode(identifier(r, CREDENTIAL_SYSTEM)?)
                .ok()?,
            cose_key: STANDARD
                .decode(ext(r, EXT_COSE_KEY)?.get("valueBase64Binary")?.as_str()?)
                .ok()?,
            sign_count: u32::try_from(ext(r, EXT_SIGN_COUNT)?.get("valueUnsignedInt")?.as_u64()?)
                .ok()?,
        },
        FINGER => Enrolment::Finger {
            template: identifier(r, TEMPLATE_SYSTEM)?.parse().ok()?,
        },
        _ => return None,
    };
    Some(Enrolled {
        id: rec.id.clone(),
        version: rec.version,
        patient,
        active: r.get("status").and_then(Value::as_str) == Some("active"),
        kind,
        resource: r.clone(),
    })
}

/// The resource with `status` replaced (and `meta` dropped: the store sets it).
pub fn with_status(resource: &Value, status: &str) -> Value {
    let mut r = resource.clone();
    if let Some(o) = r.as_object_mut() {
        o.remove("meta");
        o.insert("status".into(), json!(status));
    }
    r
}

/// The enrolment with its sign counter set to `n`.
pub fn with_sign_count(resource: &Value, n: u32) -> Value {
    let mut r = with_status(resource, "active");
    if let Some(exts) = r.get_mut("extension").and_then(Value::as_array_mut) {
        for e in exts {
            if e.get("url").and_then(Value::as_str) == Some(EXT_SIGN_COUNT) {
                e["valueUnsignedInt"] = json!(n);
            }
        }
    }
    r
}

/// The terms a patient consents to (what the challenge and the Consent both say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms {
    /// Patient id.
    pub patient_id: String,
    /// Grantee Organization id.
    pub organization: String,
    /// Grantee Practitioner id, if the consent is limited to one.
    pub practitioner: Option<String>,
    /// Purpose of use code.
    pub purpose: String,
    /// Resource types covered (empty: all clinical data).
    pub classes: Vec<String>,
    /// Validity (unix seconds).
    pub period: (u64, u64),
    /// Data period bounds (unix seconds).
    pub data_period: (Option<u64>, Option<u64>),
    /// Permit or deny.
    pub decision: Decision,
}

impl Terms {
    /// The challenge for these terms (contract section 4 mapping).
    pub fn challenge(
        &self,
        appliance_id: &str,
        nonce: [u8; 32],
        issued_at: u64,
    ) -> ConsentChallenge {
        ConsentChallenge {
            version: 1,
            patient: format!("Patient/{}", self.patient_id),
            grantee_organization: Some(format!("Organization/{}", self.organization)),
            grantee_practitioner: self
                .practitioner
                .as_ref()
                .map(|p| format!("Practitioner/{p}")),
            purpose: self.purpose.clone(),
            scope: self.classes.clone(),
            period_start: self.period.0,
            period_end: self.period.1,
            data_period_start: self.data_period.0,
            data_period_end: self.data_period.1,
            decision: self.decision,
            appliance_id: appliance_id.to_owned(),
            nonce,
            issued_at,
        }
    }

    /// The terms a stored challenge names.
    pub fn from_challenge(ch: &ConsentChallenge) -> Result<Terms, CeremonyError> {
        let strip = |r: &str, t: &str| {
            r.strip_prefix(t)
                .and_then(|x| x.strip_prefix('/'))
                .map(str::to_owned)
        };
        Ok(Terms {
            patient_id: strip(&ch.patient, "Patient")
                .ok_or_else(|| invalid("stored challenge names no Patient"))?,
            organization: ch
                .grantee_organization
                .as_deref()
                .and_then(|o| strip(o, "Organization"))
                .ok_or_else(|| invalid("stored challenge names no Organization"))?,
            practitioner: ch
                .grantee_practitioner
                .as_deref()
                .and_then(|p| strip(p, "Practitioner")),
            purpose: ch.purpose.clone(),
            classes: ch.scope.clone(),
            period: (ch.period_start, ch.period_end),
            data_period: (ch.data_period_start, ch.data_period_end),
            decision: ch.decision,
        })
    }
}

fn period(start: Option<u64>, end: Option<u64>) -> Value {
    let mut p = serde_json::Map::new();
    if let Some(s) = start {
        p.insert("start".into(), json!(format_time(s)));
    }
    if let Some(e) = end {
        p.insert("end".into(), json!(format_time(e)));
    }
    Value::Object(p)
}

/// A Consent of contract section 4.
pub fn consent_resource(
    terms: &Terms,
    facility_id: &str,
    status: &str,
    assurance: &str,
    evidence: &Value,
    date_time: u64,
) -> Value {
    let role = json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]});
    let mut actors = vec![
        json!({"role": role, "reference": {"reference": format!("Organization/{}", terms.organization)}}),
    ];
    if let Some(p) = &terms.practitioner {
        actors.push(json!({"role": role, "reference": {"reference": format!("Practitioner/{p}")}}));
    }
    let mut provision = json!({
        "type": decision_code(terms.decision),
        "period": period(Some(terms.period.0), Some(terms.period.1)),
        "actor": actors,
        "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": terms.purpose}],
    });
    if !terms.classes.is_empty() {
        provision["class"] = Value::Array(
            terms
                .classes
                .iter()
                .map(|c| json!({"system": "http://hl7.org/fhir/resource-types", "code": c}))
                .collect(),
        );
    }
    if terms.data_period.0.is_some() || terms.data_period.1.is_some() {
        provision["dataPeriod"] = period(terms.data_period.0, terms.data_period.1);
    }
    json!({
        "resourceType": "Consent",
        "status": status,
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": format!("Patient/{}", terms.patient_id)},
        "dateTime": format_time(date_time),
        "organization": [{"reference": format!("Organization/{facility_id}")}],
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "sourceAttachment": attachment(evidence),
        "extension": [{"url": EXT_ASSURANCE, "valueCode": assurance}],
        "provision": provision,
    })
}

fn attachment(evidence: &Value) -> Value {
    let bytes = serde_json::to_vec(evidence).unwrap_or_default();
    json!({"contentType": EVIDENCE_CONTENT_TYPE, "data": STANDARD.encode(bytes), "title": EVIDENCE_TITLE})
}

/// The Consent with a new status, evidence, assurance and dateTime (`meta` dropped).
pub fn consent_next_version(
    consent: &Value,
    status: &str,
    assurance: &str,
    evidence: &Value,
    date_time: u64,
) -> Value {
    let mut r = with_status(consent, status);
    r["sourceAttachment"] = attachment(evidence);
    r["extension"] = json!([{"url": EXT_ASSURANCE, "valueCode": assurance}]);
    r["dateTime"] = json!(format_time(date_time));
    r
}

/// The evidence JSON of a stored Consent.
pub fn evidence_of(consent: &Value) -> Result<Value, CeremonyError> {
    let att = consent
        .get("sourceAttachment")
        .ok_or_else(|| invalid("the Consent carries no evidence"))?;
    if att.get("contentType").and_then(Value::as_str) != Some(EVIDENCE_CONTENT_TYPE) {
        return Err(invalid(
            "the Consent's attachment is not hexa consent evidence",
        ));
    }
    let data = att
        .get("data")
        .and_then(Value::as_str)
        .and_then(|d| STANDARD.decode(d).ok())
        .ok_or_else(|| invalid("the Consent's evidence is not base64"))?;
    let v: Value =
        serde_json::from_slice(&data).map_err(|_| invalid("the Consent's evidence is not JSON"))?;
    if v.get("format").and_then(Value::as_str) != Some(EVIDENCE_FORMAT) {
        return Err(invalid("unknown evidence format"));
    }
    Ok(v)
}

/// The challenge inside evidence (exact bytes and parsed form).
pub fn evidence_challenge(ev: &Value) -> Result<(Vec<u8>, ConsentChallenge), CeremonyError> {
    let bytes = ev
        .get("challenge")
        .and_then(Value::as_str)
        .and_then(|c| URL_SAFE_NO_PAD.decode(c).ok())
        .ok_or_else(|| invalid("the evidence has no challenge"))?;
    let ch = ConsentChallenge::from_bytes(&bytes).map_err(|e| invalid(e.to_string()))?;
    Ok((bytes, ch))
}

/// Card evidence (contract section 5, `card` member).
pub fn card_evidence(
    device: &str,
    credential_id: &[u8],
    cose_key: &[u8],
    authenticator_data: &[u8],
    signature: &[u8],
    rp_id: &str,
) -> Value {
    let u = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    json!({
        "device": device,
        "credentialId": u(credential_id),
        "coseKey": u(cose_key),
        "authenticatorData": u(authenticator_data),
        "signature": u(signature),
        "rpId": rp_id,
    })
}

/// The evidence JSON of a ceremony: `method` is `card` or `fingerprint` and `detail` the
/// member of that name.
pub fn evidence(method: &str, challenge: &ConsentChallenge, detail: Value) -> Value {
    let mut ev = serde_json::Map::new();
    ev.insert("format".into(), json!(EVIDENCE_FORMAT));
    ev.insert("method".into(), json!(method));
    ev.insert(
        "challenge".into(),
        json!(URL_SAFE_NO_PAD.encode(challenge.to_bytes())),
    );
    ev.insert(method.into(), detail);
    Value::Object(ev)
}

/// The assurance extension code of a Consent.
pub fn assurance_of(consent: &Value) -> Option<&str> {
    ext(consent, EXT_ASSURANCE)?.get("valueCode")?.as_str()
}

/// The enrolment statement a health worker countersigns (JCS bytes): which appliance bound
/// which credential (a card's credential ID and the SHA-256 of its COSE key, or a template
/// slot) to which patient, in which Device, enrolled by whom and when. The verifier
/// (`verify::enrolment`) rebuilds the credential part from the Device and compares.
pub fn enrolment_statement(
    appliance: &str,
    device_id: &str,
    patient_id: &str,
    kind: &Enrolment,
    practitioner_id: &str,
    enrolled_at: u64,
) -> Result<Vec<u8>, CeremonyError> {
    let credential = match kind {
        Enrolment::Card {
            credential_id,
            cose_key,
            ..
        } => {
            use sha2::Digest as _;
            json!({
                "credentialId": URL_SAFE_NO_PAD.encode(credential_id),
                "coseKeySha256": URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(cose_key)),
            })
        }
        Enrolment::Finger { template } => json!({"template": template}),
    };
    let st = json!({
        "format": STATEMENT_FORMAT,
        "appliance": appliance,
        "device": format!("Device/{device_id}"),
        "patient": format!("Patient/{patient_id}"),
        "enrolledBy": format!("Practitioner/{practitioner_id}"),
        "enrolledAt": enrolled_at,
        "credential": credential,
    });
    hexa_crypto::jcs::canonicalize(&st).map_err(|e| invalid(e.to_string()))
}

/// The Device with its id set and the statement attached.
pub fn with_statement(device: Value, id: &str, statement: &[u8]) -> Value {
    let mut d = device;
    d["id"] = json!(id);
    let e =
        json!({"url": EXT_ENROLMENT_STATEMENT, "valueBase64Binary": STANDARD.encode(statement)});
    push_extension(&mut d, e);
    d
}

fn push_extension(r: &mut Value, e: Value) {
    match r.get_mut("extension").and_then(Value::as_array_mut) {
        Some(exts) => exts.push(e),
        None => r["extension"] = json!([e]),
    }
}

/// The statement bytes of an enrolment Device, if it has one.
pub fn statement_of(device: &Value) -> Option<Vec<u8>> {
    STANDARD
        .decode(
            ext(device, EXT_ENROLMENT_STATEMENT)?
                .get("valueBase64Binary")?
                .as_str()?,
        )
        .ok()
}

/// Whether the Device already carries a countersignature.
pub fn is_countersigned(device: &Value) -> bool {
    ext(device, EXT_ENROLMENT_COUNTERSIGNATURE).is_some()
}

/// The next version of an enrolment Device with the countersignature added (`meta`
/// dropped: the store sets it).
pub fn with_countersignature(device: &Value, practitioner_id: &str, kid: &str, jws: &str) -> Value {
    let mut d = device.clone();
    if let Some(o) = d.as_object_mut() {
        o.remove("meta");
    }
    let e = json!({"url": EXT_ENROLMENT_COUNTERSIGNATURE, "extension": [
        {"url": "practitioner", "valueReference": {"reference": format!("Practitioner/{practitioner_id}")}},
        {"url": "kid", "valueString": kid},
        {"url": "jws", "valueString": jws},
    ]});
    push_extension(&mut d, e);
    d
}

/// The public JWK registered on a Practitioner.
pub fn practitioner_key(practitioner: &Value) -> Option<hexa_crypto::keys::PublicKey> {
    let s = ext(practitioner, EXT_PUBLIC_JWK)?
        .get("valueString")?
        .as_str()?;
    let jwk: Value = serde_json::from_str(s).ok()?;
    hexa_crypto::keys::PublicKey::from_jwk(&jwk).ok()
}
