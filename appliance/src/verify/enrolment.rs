//! Enrolment statements and their countersignatures (issue #6: a card or finger is bound to
//! the patient "signed by the appliance and by the enrolling health worker's key where
//! given"). An enrolment Device that names its health worker carries, from its first
//! version on, a statement (extension `urn:hexa:enrolment-statement`, the JCS bytes of
//! `{format, appliance, device, patient, enrolledBy, enrolledAt, credential}`); the worker's
//! detached JWS over those bytes, by the key registered on their Practitioner, is added as
//! `urn:hexa:enrolment-countersignature` by `Device/{id}/$countersign`.
//!
//! Checked here, for every exported Device version that carries a statement: the statement
//! is canonical JSON of the expected format and says what the Device says (its id, patient,
//! enrolling worker, and the credential ID and COSE key hash, or the template slot); it is
//! the same in every version of that Device; a countersignature names the same worker and
//! verifies under a key registered on that worker's Practitioner in the export. A statement
//! without a countersignature is a notice (the worker never countersigned), not a failure.

use std::collections::BTreeSet;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hexa_crypto::{jcs, jws};
use serde_json::Value;
use sha2::Digest as _;

use super::{Code, Export, Report, Version, consent};

const STATEMENT_EXT: &str = "urn:hexa:enrolment-statement";
const COUNTERSIGNATURE_EXT: &str = "urn:hexa:enrolment-countersignature";
const STATEMENT_FORMAT: &str = "hexa-enrolment-statement-v1";

fn ext<'a>(r: &'a Value, url: &str) -> Option<&'a Value> {
    r["extension"]
        .as_array()?
        .iter()
        .find(|e| e["url"].as_str() == Some(url))
}

fn identifier<'a>(r: &'a Value, system: &str) -> Option<&'a str> {
    r["identifier"]
        .as_array()?
        .iter()
        .find(|i| i["system"].as_str() == Some(system))?["value"]
        .as_str()
}

fn sub<'a>(e: &'a Value, url: &str) -> Option<&'a Value> {
    e["extension"]
        .as_array()?
        .iter()
        .find(|x| x["url"].as_str() == Some(url))
}

/// What the Device itself says its credential is, in the statement's shape.
fn credential_of(d: &Value) -> Option<Value> {
    let code = d["type"]["coding"]
        .as_array()?
        .iter()
        .find(|c| c["system"] == "urn:hexa:device-type")?["code"]
        .as_str()?;
    match code {
        "fido2-card" => {
            let cose = STANDARD
                .decode(ext(d, "urn:hexa:cose-key")?["valueBase64Binary"].as_str()?)
                .ok()?;
            Some(serde_json::json!({
                "credentialId": identifier(d, "urn:hexa:fido2-credential-id")?,
                "coseKeySha256": URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(&cose)),
            }))
        }
        "fingerprint-template" => Some(serde_json::json!({
            "template": identifier(d, "urn:hexa:fingerprint-template")?.parse::<u64>().ok()?,
        })),
        _ => None,
    }
}

/// The statement's disagreements with the Device version `v` (empty when it agrees).
fn mismatches(st: &Value, v: &Version<'_>) -> Vec<String> {
    let d = v.resource;
    let mut out = Vec::new();
    if st["format"] != STATEMENT_FORMAT {
        out.push(format!("format is not {STATEMENT_FORMAT}"));
    }
    if st["device"].as_str() != Some(&format!("Device/{}", v.id)) {
        out.push(format!(
            "it names {} instead of Device/{}",
            st["device"], v.id
        ));
    }
    if st["patient"] != d["patient"]["reference"] {
        out.push(format!(
            "it names patient {} but the Device names {}",
            st["patient"], d["patient"]["reference"]
        ));
    }
    let by = ext(d, "urn:hexa:enrolled-by").map(|e| &e["valueReference"]["reference"]);
    if by != Some(&st["enrolledBy"]) {
        out.push(format!(
            "it names {} as the enrolling worker but the Device names {}",
            st["enrolledBy"],
            by.unwrap_or(&Value::Null)
        ));
    }
    if !st["enrolledAt"].is_u64() || !st["appliance"].is_string() {
        out.push("enrolledAt or appliance is missing".into());
    }
    match credential_of(d) {
        Some(c) if c == st["credential"] => {}
        _ => out.push("its credential is not the Device's credential".into()),
    }
    out
}

/// Checks every enrolment statement and countersignature in the export.
pub(crate) fn check_enrolments(ex: &Export, report: &mut Report) {
    let mut countersigned = BTreeSet::new();
    let mut unsigned = BTreeSet::new();
    let mut first: std::collections::BTreeMap<String, Vec<u8>> = Default::default();
    // Oldest version first within each Device (the map's keys sort "_history/10" before
    // "_history/2").
    let mut devices: Vec<&Version<'_>> = ex
        .versions
        .values()
        .filter(|v| v.ty == "Device" && !v.deleted)
        .collect();
    devices.sort_by(|a, b| (&a.id, a.version).cmp(&(&b.id, b.version)));
    for v in devices {
        let subject = v.reference();
        let Some(e) = ext(v.resource, STATEMENT_EXT) else {
            if ext(v.resource, COUNTERSIGNATURE_EXT).is_some() {
                report.fail(
                    Code::EnrolmentCountersignature,
                    subject,
                    "a countersignature without the enrolment statement it signs",
                );
            }
            continue;
        };
        let Some(bytes) = e["valueBase64Binary"]
            .as_str()
            .and_then(|s| STANDARD.decode(s).ok())
        else {
            report.fail(
                Code::EnrolmentCountersignature,
                subject,
                "the enrolment statement is not base64",
            );
            continue;
        };
        let st: Value = match serde_json::from_slice(&bytes) {
            Ok(st) => st,
            Err(_) => {
                report.fail(
                    Code::EnrolmentCountersignature,
                    subject,
                    "the enrolment statement is not JSON",
                );
                continue;
            }
        };
        if jcs::canonicalize(&st).ok().as_deref() != Some(bytes.as_slice()) {
            report.fail(
                Code::EnrolmentCountersignature,
                &subject,
                "the enrolment statement is not in canonical (JCS) form",
            );
        }
        for m in mismatches(&st, v) {
            report.fail(
                Code::EnrolmentCountersignature,
                &subject,
                format!("the enrolment statement does not match the Device: {m}"),
            );
        }
        let device = format!("Device/{}", v.id);
        match first.get(&device) {
            Some(b) if *b != bytes => report.fail(
                Code::EnrolmentCountersignature,
                &subject,
                "the enrolment statement differs from the one of the Device's first version",
            ),
            Some(_) => {}
            None => {
                first.insert(device.clone(), bytes.clone());
            }
        }
        let Some(cs) = ext(v.resource, COUNTERSIGNATURE_EXT) else {
            unsigned.insert(device);
            continue;
        };
        let who = sub(cs, "practitioner").and_then(|p| p["valueReference"]["reference"].as_str());
        let kid = sub(cs, "kid").and_then(|k| k["valueString"].as_str());
        let sig = sub(cs, "jws").and_then(|j| j["valueString"].as_str());
        let (Some(who), Some(kid), Some(sig)) = (who, kid, sig) else {
            report.fail(
                Code::EnrolmentCountersignature,
                subject,
                "the countersignature lacks its practitioner, kid or jws",
            );
            continue;
        };
        if st["enrolledBy"].as_str() != Some(who) {
            report.fail(
                Code::EnrolmentCountersignature,
                &subject,
                format!(
                    "countersigned by {who}, but the statement names {}",
                    st["enrolledBy"]
                ),
            );
            continue;
        }
        let Some(key) = consent::practitioner_key(ex, who, kid) else {
            report.fail(
                Code::EnrolmentCountersignature,
                subject,
                format!("{who}'s key {kid} is not registered on their Practitioner in the export"),
            );
            continue;
        };
        match jws::verify_detached(sig, &bytes, &key) {
            Ok(_) => {
                if countersigned.insert(device) {
                    report.counts.enrolment_countersignatures += 1;
                }
            }
            Err(e) => report.fail(
                Code::EnrolmentCountersignature,
                subject,
                format!("the countersignature by {who} does not verify over the statement: {e}"),
            ),
        }
    }
    for d in unsigned.difference(&countersigned) {
        report.notice(
            d.clone(),
            "enrolled by a named health worker who has not countersigned the enrolment",
        );
    }
}
