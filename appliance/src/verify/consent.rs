//! Consent evidence (contract sections 3-5): each Consent version's
//! `sourceAttachment` holds the evidence JSON; its challenge must say what the Consent says,
//! and name an appliance key of the roster; a card consent's FIDO2 assertion must verify
//! against the COSE key of the enrolled Device version it names (`verify_assertion` with
//! `now = challenge.issued_at`, `last_sign_count = 0`); an active fingerprint consent must
//! carry the health worker's countersignature by the key registered on the Practitioner.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hexa_crypto::consent::{
    AssertionEvidence, ConsentChallenge, CoseKey, Decision, VerifyParams, verify_assertion,
};
use hexa_crypto::jws;
use hexa_crypto::keys::PublicKey;
use serde_json::Value;

use super::{Code, Export, Report, Trust, Version, time};

/// A Consent version whose evidence verified, with what the disclosure check needs.
#[derive(Debug, Clone)]
pub struct ConsentInfo {
    /// `Consent/<id>/_history/<v>`.
    pub reference: String,
    /// `Consent/<id>`.
    pub id: String,
    /// `active`, `inactive` or `proposed`.
    pub status: String,
    /// Permit or deny.
    pub decision: Decision,
    /// `Organization/<id>` granted (or denied).
    pub organization: Option<String>,
    /// `Practitioner/<id>` granted, if named.
    pub practitioner: Option<String>,
    /// Purpose codes.
    pub purposes: Vec<String>,
    /// Class codes (empty = all clinical data).
    pub classes: Vec<String>,
    /// Period (unix millis).
    pub period: (Option<i64>, Option<i64>),
    /// Data period (unix millis), if any.
    pub data_period: Option<(Option<i64>, Option<i64>)>,
}

/// The key registered on a Practitioner (any exported version) whose kid is `kid`.
pub(crate) fn practitioner_key(ex: &Export, who: &str, kid: &str) -> Option<PublicKey> {
    let id = who.strip_prefix("Practitioner/")?;
    ex.history("Practitioner", id).into_iter().find_map(|v| {
        v.resource["extension"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["url"] == "urn:hexa:public-jwk")
            .filter_map(|e| e["valueString"].as_str())
            .filter_map(|s| serde_json::from_str::<Value>(s).ok())
            .filter_map(|j| PublicKey::from_jwk(&j).ok())
            .find(|k| k.kid() == kid)
    })
}

fn period(v: &Value) -> (Option<i64>, Option<i64>) {
    (
        v["start"].as_str().and_then(time::parse_millis),
        v["end"].as_str().and_then(time::parse_millis),
    )
}

fn secs(ms: Option<i64>) -> Option<u64> {
    ms.and_then(|m| u64::try_from(m.div_euclid(1000)).ok())
}

fn actors(p: &Value, prefix: &str) -> Option<String> {
    p["actor"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["reference"]["reference"].as_str())
        .find(|r| r.starts_with(prefix))
        .map(str::to_string)
}

/// What the Consent resource says, parsed.
fn info(v: &Version) -> ConsentInfo {
    let r = v.resource;
    let p = &r["provision"];
    ConsentInfo {
        reference: v.reference(),
        id: format!("Consent/{}", v.id),
        status: r["status"].as_str().unwrap_or("").to_string(),
        decision: if p["type"] == "deny" {
            Decision::Deny
        } else {
            Decision::Permit
        },
        organization: actors(p, "Organization/"),
        practitioner: actors(p, "Practitioner/"),
        purposes: p["purpose"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["code"].as_str().map(str::to_string))
            .collect(),
        classes: p["class"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["code"].as_str().map(str::to_string))
            .collect(),
        period: period(&p["period"]),
        data_period: p.get("dataPeriod").map(period),
    }
}

fn b64url(v: &Value) -> Result<Vec<u8>, String> {
    v.as_str()
        .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
        .ok_or_else(|| "a base64url field of the evidence is missing or malformed".to_string())
}

/// The exported Device version `Device/<id>/_history/<v>`, checked to be an enrolment of
/// `patient` of `kind`, in force when the challenge was issued.
fn enrolled_device<'e>(
    ex: &'e Export,
    reference: &str,
    patient: &str,
    kind: &str,
    issued_at_ms: i64,
) -> Result<&'e Version<'e>, String> {
    let v = ex
        .versions
        .get(reference)
        .ok_or_else(|| format!("the enrolment {reference} is not in the export"))?;
    let d = v.resource;
    if d["patient"]["reference"] != patient {
        return Err(format!("{reference} is not enrolled for {patient}"));
    }
    let is_kind = d["type"]["coding"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["system"] == "urn:hexa:device-type" && c["code"] == kind);
    if !is_kind {
        return Err(format!("{reference} is not a {kind} enrolment"));
    }
    if d["status"] != "active" {
        return Err(format!("{reference} is not an active enrolment"));
    }
    // A later version in force at the ceremony may only bump the signature counter: an
    // inactive status or another credential means the card was revoked or replaced.
    if let Some(now) = ex.in_force_at(&v.ty, &v.id, issued_at_ms)
        && now.version > v.version
        && (now.resource["status"] != "active"
            || ext(now.resource, "urn:hexa:cose-key") != ext(d, "urn:hexa:cose-key")
            || now.resource["identifier"] != d["identifier"])
    {
        return Err(format!(
            "{reference} was superseded by version {} (revoked or replaced) before the \
             ceremony",
            now.version
        ));
    }
    Ok(v)
}

fn ext<'v>(r: &'v Value, url: &str) -> Option<&'v Value> {
    r["extension"].as_array()?.iter().find(|e| e["url"] == url)
}

/// Checks one Consent version; returns what it grants or why it fails.
fn check_one(ex: &Export, trust: &Trust, v: &Version) -> Result<ConsentInfo, String> {
    let r = v.resource;
    let info = info(v);
    let att = &r["sourceAttachment"];
    if att["contentType"] != "application/vnd.hexa.consent-evidence+json" {
        return Err("sourceAttachment is not hexa consent evidence".into());
    }
    let evidence: Value = att["data"]
        .as_str()
        .and_then(|d| STANDARD.decode(d).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("the evidence is not base64 JSON")?;
    if evidence["format"] != "hexa-consent-evidence-v1" {
        return Err("unknown evidence format".into());
    }
    let ch_bytes = b64url(&evidence["challenge"])?;
    let ch = ConsentChallenge::from_bytes(&ch_bytes).map_err(|e| e.to_string())?;
    let issued_ms = i64::try_from(ch.issued_at)
        .unwrap_or(i64::MAX / 1000)
        .saturating_mul(1000);
    // The challenge names an appliance key the roster vouches for at issue time.
    let mut scratch = Report::default();
    if trust
        .node_key(&ch.appliance_id, Some(issued_ms), "", &mut scratch)
        .is_none()
    {
        return Err(format!(
            "the challenge names appliance {} which the roster does not vouch for at {}",
            ch.appliance_id,
            time::instant(issued_ms)
        ));
    }
    // The challenge says what the Consent says.
    let patient = r["patient"]["reference"].as_str().unwrap_or("");
    if ch.patient != patient {
        return Err(format!(
            "the challenge is for {}, not {patient}",
            ch.patient
        ));
    }
    let revokes = evidence["revokes"].as_str();
    if let Some(revoked) = revokes {
        if ch.decision != Decision::Deny || info.status != "inactive" {
            return Err("a revocation must be a deny ceremony storing an inactive version".into());
        }
        let expected = format!("Consent/{}/_history/{}", v.id, v.version.saturating_sub(1));
        if revoked != expected {
            return Err(format!(
                "revokes {revoked}, but the version it replaces is {expected}"
            ));
        }
        if ch.grantee_organization.is_some() && ch.grantee_organization != info.organization {
            return Err("the revocation names another grantee".into());
        }
    } else {
        let mismatch =
            |what: &str| Err(format!("the challenge's {what} differs from the Consent's"));
        if ch.grantee_organization != info.organization {
            return mismatch("grantee organization");
        }
        if ch.grantee_practitioner != info.practitioner {
            return mismatch("grantee practitioner");
        }
        if !info.purposes.contains(&ch.purpose) {
            return mismatch("purpose");
        }
        if ch.scope != info.classes {
            return mismatch("scope (provision.class)");
        }
        if Some(ch.period_start) != secs(info.period.0)
            || Some(ch.period_end) != secs(info.period.1)
        {
            return mismatch("period");
        }
        let dp = info.data_period.unwrap_or((None, None));
        if ch.data_period_start != secs(dp.0) || ch.data_period_end != secs(dp.1) {
            return mismatch("data period");
        }
        if ch.decision != info.decision {
            return mismatch("decision (provision.type)");
        }
    }
    let method = evidence["method"].as_str().unwrap_or("");
    let assurance = ext(r, "urn:hexa:consent-assurance").and_then(|e| e["valueCode"].as_str());
    if assurance != Some(method) {
        return Err(format!(
            "the consent records assurance {assurance:?} but the evidence is by {method}"
        ));
    }
    match method {
        "card" => {
            let card = &evidence["card"];
            let device_ref = card["device"].as_str().unwrap_or("");
            let dev = enrolled_device(ex, device_ref, patient, "fido2-card", issued_ms)?;
            let cose_bytes = b64url(&card["coseKey"])?;
            let enrolled = ext(dev.resource, "urn:hexa:cose-key")
                .and_then(|e| e["valueBase64Binary"].as_str())
                .and_then(|s| STANDARD.decode(s).ok());
            if enrolled.as_deref() != Some(cose_bytes.as_slice()) {
                return Err(format!(
                    "the evidence's credential key is not the one enrolled on {device_ref} \
                     (forged consent)"
                ));
            }
            let cred_id = card["credentialId"].as_str().unwrap_or("");
            let enrolled_id = dev.resource["identifier"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|i| i["system"] == "urn:hexa:fido2-credential-id")
                .and_then(|i| i["value"].as_str());
            if enrolled_id != Some(cred_id) {
                return Err(format!("credential id differs from {device_ref}'s"));
            }
            let key = CoseKey::from_cbor(&cose_bytes).map_err(|e| e.to_string())?;
            let ev = AssertionEvidence {
                authenticator_data: b64url(&card["authenticatorData"])?,
                signature: b64url(&card["signature"])?,
                credential_id: b64url(&card["credentialId"])?,
            };
            let params = VerifyParams {
                rp_id: card["rpId"].as_str().unwrap_or(""),
                expected_appliance_id: &ch.appliance_id,
                last_sign_count: 0,
                now: ch.issued_at,
                ttl_secs: 0,
                require_user_verified: false,
            };
            verify_assertion(&ch, &key, &ev, &params)
                .map_err(|e| format!("the card assertion does not verify: {e}"))?;
        }
        "fingerprint" => {
            let fp = &evidence["fingerprint"];
            let device_ref = fp["device"].as_str().unwrap_or("");
            let dev = enrolled_device(ex, device_ref, patient, "fingerprint-template", issued_ms)?;
            let template = fp["templateId"].as_u64().map(|t| t.to_string());
            let enrolled = dev.resource["identifier"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|i| i["system"] == "urn:hexa:fingerprint-template")
                .and_then(|i| i["value"].as_str());
            if template.as_deref() != enrolled || enrolled.is_none() {
                return Err(format!("template differs from {device_ref}'s"));
            }
            let cs = &evidence["countersignature"];
            if cs.is_null() {
                if info.status == "proposed" {
                    return Ok(info);
                }
                return Err(
                    "a fingerprint consent in force needs the health worker's countersignature"
                        .into(),
                );
            }
            let who = cs["practitioner"].as_str().unwrap_or("");
            let kid = cs["kid"].as_str().unwrap_or("");
            let key = practitioner_key(ex, who, kid)
                .ok_or_else(|| format!("{who}'s key {kid} is not registered in the export"))?;
            jws::verify_detached(cs["jws"].as_str().unwrap_or(""), &ch_bytes, &key)
                .map_err(|e| format!("the countersignature by {who} does not verify: {e}"))?;
        }
        other => return Err(format!("unknown consent method {other:?}")),
    }
    Ok(info)
}

/// Checks every Consent version; returns those that verified, by reference.
pub(crate) fn check_consents(
    ex: &Export,
    trust: &Trust,
    report: &mut Report,
) -> BTreeMap<String, ConsentInfo> {
    let mut ok = BTreeMap::new();
    for (r, v) in ex.versions.iter().filter(|(_, v)| v.ty == "Consent") {
        if v.deleted {
            continue;
        }
        match check_one(ex, trust, v) {
            Ok(info) => {
                report.counts.consents += 1;
                if info.status == "proposed" {
                    report.notice(
                        r.as_str(),
                        "fingerprint consent proposed, not countersigned: not in force",
                    );
                }
                ok.insert(r.clone(), info);
            }
            Err(e) => report.fail(Code::ConsentEvidence, r.as_str(), e),
        }
    }
    ok
}
