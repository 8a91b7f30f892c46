//! Disclosures (contract section 6): every successful read, search, history or operation in
//! the log that handed one of the patient's record versions to a facility must be covered.
//!
//! For each disclosed version of the export (the AuditEvent names it `Type/id/_history/v`):
//! - **author**: its `meta.source` is the reader's facility;
//! - **consent**: a Consent the event names (or, for events that record no basis, any
//!   exported Consent) verified, was the version in force when the event was recorded, is
//!   active, permits the reader's Organization (and the Practitioner when it names one) for
//!   the event's purpose, its period contains the event time, its class contains the type
//!   (or is absent; the Patient resource is covered by any class) and its data period contains
//!   the version's `meta.lastUpdated`; and no active deny Consent for the facility was in force;
//! - **emergency**: purpose ETREAT with a justification of at least 10 characters (reported);
//! - **patient**: the patient's own session (reported); **system**: the appliance itself.
//!
//! Anything else is a failure naming the event, the version and the facility.

use std::collections::BTreeMap;

use hexa_crypto::consent::Decision;
use serde_json::Value;

use super::consent::ConsentInfo;
use super::{AuditItem, Code, Export, Report, Version, time};

/// Types readable by every authenticated client (basis `public`).
const PUBLIC_TYPES: &[&str] = &[
    "Organization",
    "Location",
    "Practitioner",
    "PractitionerRole",
    "Device",
];

/// Interactions that hand data out.
const DISCLOSING: &[&str] = &[
    "read",
    "vread",
    "history-instance",
    "history-type",
    "search-type",
    "operation",
];

/// What an AuditEvent says about who read and why.
struct Access<'a> {
    facility: String,
    practitioner: Option<String>,
    client: String,
    purpose: String,
    justification: Option<&'a str>,
    recorded: Option<i64>,
    bases: Vec<&'a str>,
    consents: Vec<&'a str>,
}

fn access<'a>(ev: &'a Value) -> Access<'a> {
    let agents = ev["agent"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let by_role = |code: &str| {
        agents
            .iter()
            .find(|a| {
                a["type"]["coding"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["code"] == code)
            })
            .and_then(|a| a["who"]["reference"].as_str())
    };
    let purpose_of_event = &ev["purposeOfEvent"][0];
    Access {
        facility: by_role("PROV")
            .and_then(|r| r.strip_prefix("Organization/"))
            .unwrap_or("")
            .to_string(),
        practitioner: by_role("IRCP").map(str::to_string),
        client: agents
            .first()
            .and_then(|a| a["who"]["identifier"]["value"].as_str())
            .unwrap_or("")
            .to_string(),
        purpose: purpose_of_event["coding"][0]["code"]
            .as_str()
            .unwrap_or("")
            .to_string(),
        justification: purpose_of_event["text"].as_str(),
        recorded: ev["recorded"].as_str().and_then(time::parse_millis),
        bases: ev["extension"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["url"] == "urn:hexa:access-basis")
            .filter_map(|e| e["valueCode"].as_str())
            .collect(),
        consents: ev["entity"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["type"]["code"] == "Consent" && e["description"] == "authorizing consent")
            .filter_map(|e| e["what"]["reference"].as_str())
            .collect(),
    }
}

fn within(range: (Option<i64>, Option<i64>), t: i64) -> bool {
    range.0.is_none_or(|s| s <= t) && range.1.is_none_or(|e| t <= e)
}

/// Why consent `c` does not cover `v` read by `a` (None = it covers).
fn not_covering(ex: &Export, c: &ConsentInfo, a: &Access, at: i64, v: &Version) -> Option<String> {
    let id = c.id.strip_prefix("Consent/").unwrap_or("");
    let in_force = ex.in_force_at("Consent", id, at).map(Version::reference);
    if in_force.as_deref() != Some(c.reference.as_str()) {
        return Some(format!(
            "{} was not the version in force at {} ({})",
            c.reference,
            time::instant(at),
            in_force.unwrap_or_else(|| "none".into())
        ));
    }
    if c.status != "active" || c.decision != Decision::Permit {
        return Some(format!("{} is not an active permit", c.reference));
    }
    if c.organization.as_deref() != Some(&format!("Organization/{}", a.facility)) {
        return Some(format!(
            "{} does not name Organization/{}",
            c.reference, a.facility
        ));
    }
    if let Some(p) = &c.practitioner
        && a.practitioner.as_ref() != Some(p)
    {
        return Some(format!(
            "{} grants only {p}, the request was not on their behalf",
            c.reference
        ));
    }
    if !c.purposes.contains(&a.purpose) {
        return Some(format!(
            "{} does not cover purpose {}",
            c.reference, a.purpose
        ));
    }
    if !within(c.period, at) {
        return Some(format!(
            "{} was not in its period at {}",
            c.reference,
            time::instant(at)
        ));
    }
    if v.ty != "Patient" && !c.classes.is_empty() && !c.classes.contains(&v.ty) {
        return Some(format!("{} does not cover {} data", c.reference, v.ty));
    }
    if let Some(dp) = c.data_period
        && !v.updated.is_some_and(|u| within(dp, u))
    {
        return Some(format!(
            "{} does not cover data of {}",
            c.reference,
            v.updated.map(time::instant).unwrap_or_default()
        ));
    }
    None
}

/// An active deny consent of the facility in force at `at`, if any.
fn denied_by<'c>(
    ex: &Export,
    consents: &'c BTreeMap<String, ConsentInfo>,
    facility: &str,
    at: i64,
) -> Option<&'c ConsentInfo> {
    let org = format!("Organization/{facility}");
    consents.values().find(|c| {
        c.status == "active"
            && c.decision == Decision::Deny
            && c.organization.as_deref() == Some(org.as_str())
            && within(c.period, at)
            && ex
                .in_force_at("Consent", c.id.strip_prefix("Consent/").unwrap_or(""), at)
                .is_some_and(|v| v.reference() == c.reference)
    })
}

/// Checks one disclosed version; returns whether it was covered by something other than
/// authorship.
fn check_version(
    ex: &Export,
    consents: &BTreeMap<String, ConsentInfo>,
    item: &AuditItem,
    a: &Access,
    v: &Version,
    report: &mut Report,
) -> bool {
    let subject = format!("{} disclosed {}", item.subject(), v.reference());
    if v.source_facility() == Some(a.facility.as_str()) {
        return false;
    }
    let Some(at) = a.recorded else {
        report.fail(
            Code::Disclosure,
            subject,
            "the AuditEvent has no recorded time",
        );
        return false;
    };
    let recorded = |b: &str| a.bases.contains(&b);
    let none_recorded = a.bases.is_empty();
    if (recorded("system") || none_recorded)
        && a.client == "hexa-appliance"
        && a.purpose == "HOPERAT"
    {
        return true;
    }
    if recorded("patient") {
        report.notice(subject, "read in the patient's own session");
        return true;
    }
    if recorded("public") && PUBLIC_TYPES.contains(&v.ty.as_str()) {
        return true;
    }
    if recorded("emergency") || (none_recorded && a.purpose == "ETREAT") {
        let j = a.justification.unwrap_or("").trim();
        if a.purpose == "ETREAT" && j.chars().count() >= 10 {
            report.counts.emergency += 1;
            report.notice(
                subject,
                format!(
                    "EMERGENCY access by Organization/{} at {}, justification: {j:?}",
                    a.facility,
                    time::instant(at)
                ),
            );
            return true;
        }
        report.fail(
            Code::Disclosure,
            subject,
            "emergency access without purpose ETREAT and a justification of 10 characters",
        );
        return false;
    }
    if recorded("consent") || none_recorded {
        if let Some(d) = denied_by(ex, consents, &a.facility, at) {
            report.fail(
                Code::Disclosure,
                subject,
                format!(
                    "{} denied Organization/{} at that time",
                    d.reference, a.facility
                ),
            );
            return false;
        }
        let mut reasons = Vec::new();
        let candidates: Vec<&ConsentInfo> = if none_recorded {
            consents.values().collect()
        } else {
            let mut c = Vec::new();
            for r in &a.consents {
                match consents.get(*r) {
                    Some(info) => c.push(info),
                    None if ex.versions.contains_key(*r) => {
                        reasons.push(format!("{r} has evidence that does not verify"))
                    }
                    None => reasons.push(format!("{r} is not in the export")),
                }
            }
            if c.is_empty() && reasons.is_empty() {
                reasons.push("the event records basis consent but names no consent".into());
            }
            c
        };
        for c in candidates {
            match not_covering(ex, c, a, at, v) {
                None => {
                    if none_recorded {
                        report.notice(
                            subject,
                            format!(
                                "covered by {} (inferred: the event records no basis)",
                                c.reference
                            ),
                        );
                    }
                    return true;
                }
                Some(why) if !none_recorded => reasons.push(why),
                Some(_) => {}
            }
        }
        let why = if reasons.is_empty() {
            "no consent in the export covers it".to_string()
        } else {
            reasons.join("; ")
        };
        report.fail(
            Code::Disclosure,
            subject,
            format!(
                "disclosed to Organization/{} (purpose {}) without cover: {why}",
                a.facility, a.purpose
            ),
        );
        return false;
    }
    report.fail(
        Code::Disclosure,
        subject,
        format!(
            "disclosed to Organization/{} with basis {:?}, which does not cover data authored by {}",
            a.facility,
            a.bases,
            v.source_facility().unwrap_or("an unknown facility")
        ),
    );
    false
}

/// Checks every disclosure the exported AuditEvents record.
pub(crate) fn check_disclosures(
    ex: &Export,
    consents: &BTreeMap<String, ConsentInfo>,
    report: &mut Report,
) {
    for item in &ex.audits {
        let ev = item.resource;
        if ev["outcome"] != "0" {
            continue;
        }
        let sub = ev["subtype"][0]["code"].as_str().unwrap_or("");
        if !DISCLOSING.contains(&sub) {
            continue;
        }
        let a = access(ev);
        for e in ev["entity"].as_array().into_iter().flatten() {
            let Some(r) = e["what"]["reference"].as_str() else {
                continue;
            };
            if a.consents.contains(&r) {
                continue;
            }
            let Some(v) = ex.versions.get(r) else {
                // Another patient's record in the same search result, or a resource outside
                // this export: not this export's to judge.
                continue;
            };
            if PUBLIC_TYPES.contains(&v.ty.as_str()) && v.ty != "Device" {
                continue;
            }
            if check_version(ex, consents, item, &a, v, report) {
                report.counts.disclosures_covered += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The rules on AuditEvents that record their basis (contract section 6), over a
    //! hand-made export: the consent's evidence is taken as verified here (its checks have
    //! their own tests), so only coverage is judged.
    use super::*;
    use serde_json::json;

    const CONSENT: &str = "Consent/c1/_history/1";

    fn bundle(events: Vec<Value>) -> Value {
        let mut entries = vec![
            json!({"resource": {"resourceType": "Observation", "id": "o1",
                "meta": {"versionId": "1", "lastUpdated": "2026-01-01T10:00:00.000Z", "source": "urn:hexa:facility:fac-a"},
                "subject": {"reference": "Patient/p1"}}}),
            json!({"resource": {"resourceType": "Consent", "id": "c1",
                "meta": {"versionId": "1", "lastUpdated": "2026-01-02T00:00:00.000Z", "source": "urn:hexa:facility:fac-a"}}}),
        ];
        entries.extend(events.into_iter().map(|e| json!({"resource": e})));
        json!({"resourceType": "Bundle", "type": "collection", "entry": entries})
    }

    fn event(
        facility: &str,
        purpose: &str,
        when: &str,
        bases: &[&str],
        text: Option<&str>,
    ) -> Value {
        let mut e = json!({
            "resourceType": "AuditEvent", "id": format!("e-{facility}-{when}"),
            "subtype": [{"code": "read"}], "outcome": "0", "recorded": when,
            "purposeOfEvent": [{"coding": [{"code": purpose}]}],
            "agent": [{"who": {"identifier": {"value": format!("emr-{facility}")}}},
                      {"type": {"coding": [{"code": "PROV"}]}, "who": {"reference": format!("Organization/{facility}")}}],
            "extension": bases.iter().map(|b| json!({"url": "urn:hexa:access-basis", "valueCode": b})).collect::<Vec<_>>(),
            "entity": [{"what": {"reference": "Patient/p1"}}, {"what": {"reference": "Observation/o1/_history/1"}}]
        });
        if bases.contains(&"consent") {
            e["entity"]
                .as_array_mut()
                .unwrap()
                .push(json!({"what": {"reference": CONSENT},
                "type": {"system": "http://hl7.org/fhir/resource-types", "code": "Consent"},
                "description": "authorizing consent"}));
        }
        if let Some(t) = text {
            e["purposeOfEvent"][0]["text"] = json!(t);
        }
        e
    }

    fn consent(classes: &[&str], decision: Decision) -> BTreeMap<String, ConsentInfo> {
        let mut m = BTreeMap::new();
        m.insert(
            CONSENT.to_string(),
            ConsentInfo {
                reference: CONSENT.into(),
                id: "Consent/c1".into(),
                status: "active".into(),
                decision,
                organization: Some("Organization/fac-b".into()),
                practitioner: None,
                purposes: vec!["TREAT".into()],
                classes: classes.iter().map(|c| c.to_string()).collect(),
                period: (
                    time::parse_millis("2026-01-02T00:00:00Z"),
                    time::parse_millis("2026-02-01T00:00:00Z"),
                ),
                data_period: None,
            },
        );
        m
    }

    fn run(ev: Value, consents: &BTreeMap<String, ConsentInfo>) -> Report {
        let b = bundle(vec![ev]);
        let mut report = Report::default();
        let ex = super::super::parse(&b, &mut report);
        check_disclosures(&ex, consents, &mut report);
        report
    }

    const IN_PERIOD: &str = "2026-01-10T08:00:00.000Z";

    #[test]
    fn a_recorded_consent_in_force_covers() {
        let r = run(
            event("fac-b", "TREAT", IN_PERIOD, &["consent"], None),
            &consent(&["Observation"], Decision::Permit),
        );
        assert!(r.ok(), "{r}");
        assert_eq!(r.counts.disclosures_covered, 1);
    }

    #[test]
    fn consents_that_do_not_cover_are_failures() {
        let permit = consent(&["Observation"], Decision::Permit);
        for (ev, consents, why) in [
            // after the consent's period
            (
                event(
                    "fac-b",
                    "TREAT",
                    "2026-03-01T00:00:00.000Z",
                    &["consent"],
                    None,
                ),
                &permit,
                "period",
            ),
            // before the consent existed
            (
                event(
                    "fac-b",
                    "TREAT",
                    "2026-01-01T12:00:00.000Z",
                    &["consent"],
                    None,
                ),
                &permit,
                "in force",
            ),
            // another purpose
            (
                event("fac-b", "HPAYMT", IN_PERIOD, &["consent"], None),
                &permit,
                "purpose",
            ),
            // another facility
            (
                event("fac-x", "TREAT", IN_PERIOD, &["consent"], None),
                &permit,
                "Organization/fac-x",
            ),
            // another class
            (
                event("fac-b", "TREAT", IN_PERIOD, &["consent"], None),
                &consent(&["Condition"], Decision::Permit),
                "Observation data",
            ),
            // an active deny for the facility
            (
                event("fac-b", "TREAT", IN_PERIOD, &["consent"], None),
                &consent(&[], Decision::Deny),
                "denied",
            ),
            // no consent at all, no basis recorded
            (
                event("fac-b", "TREAT", IN_PERIOD, &[], None),
                &BTreeMap::new(),
                "no consent",
            ),
        ] {
            let r = run(ev, consents);
            assert!(
                r.failures()
                    .any(|f| f.code == Code::Disclosure && f.message.contains(why)),
                "{why}: {r}"
            );
        }
    }

    #[test]
    fn emergency_needs_a_justification_and_is_reported() {
        let none = BTreeMap::new();
        let r = run(
            event(
                "fac-d",
                "ETREAT",
                IN_PERIOD,
                &["emergency"],
                Some("cardiac arrest in ER"),
            ),
            &none,
        );
        assert!(r.ok(), "{r}");
        assert_eq!(r.counts.emergency, 1);
        assert!(
            r.to_string()
                .contains("EMERGENCY access by Organization/fac-d")
        );
        let r = run(
            event(
                "fac-d",
                "ETREAT",
                IN_PERIOD,
                &["emergency"],
                Some("because"),
            ),
            &none,
        );
        assert!(r.failures().any(|f| f.code == Code::Disclosure), "{r}");
    }

    #[test]
    fn author_basis_must_match_meta_source() {
        let none = BTreeMap::new();
        assert!(run(event("fac-a", "TREAT", IN_PERIOD, &["author"], None), &none).ok());
        let r = run(event("fac-b", "TREAT", IN_PERIOD, &["author"], None), &none);
        assert!(
            r.failures()
                .any(|f| f.message.contains("authored by fac-a")),
            "{r}"
        );
        // "public" does not cover clinical data either.
        let r = run(event("fac-b", "TREAT", IN_PERIOD, &["public"], None), &none);
        assert!(!r.ok(), "{r}");
    }
}
