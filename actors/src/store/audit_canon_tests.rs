//! The AuditEvent composed without `serde_json::Value` ([`audit::audit_event_canon`]) is the
//! same document, with the same bytes and search terms, as the `json!` builder it replaced;
//! so is the Provenance ([`audit::provenance_canon`]).

use base64::Engine as _;
use serde_json::{Value, json};

use super::audit::{self, AccessContext, AuditDraft, Interaction};
use super::policy::{BASIS_EXTENSION, Basis};
use super::{Record, Store, time};

/// The AuditEvent builder as it was before `audit_event_canon`, on `serde_json::Value`: the
/// oracle the composed tree must equal.
fn audit_event_json_oracle(store: &Store, d: &AuditDraft, failure: Option<&str>) -> Value {
    let failure = failure.or(d.failure.as_deref());
    let mut agents = vec![json!({
        "type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110150", "display": "Application"}]},
        "who": {"identifier": {"system": "urn:hexa:client", "value": d.ctx.client_id}},
        "requestor": d.ctx.practitioner.is_none(),
        "purposeOfUse": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": d.ctx.purpose_of_use}]}]
    })];
    agents.push(json!({
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleClass", "code": "PROV", "display": "healthcare provider"}]},
        "who": {"reference": format!("Organization/{}", d.ctx.facility_id)},
        "requestor": false
    }));
    if let Some(p) = &d.ctx.practitioner {
        agents.push(json!({
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP", "display": "information recipient"}]},
            "who": {"reference": format!("Practitioner/{p}")},
            "requestor": true
        }));
    }
    let mut entities: Vec<Value> = d
        .patients
        .iter()
        .map(|p| {
            json!({"what": {"reference": p},
                   "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person"},
                   "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"}})
        })
        .collect();
    for e in &d.entities {
        entities.push(json!({"what": {"reference": e},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"}}));
    }
    for c in &d.consents {
        entities.push(json!({"what": {"reference": c},
            "type": {"system": "http://hl7.org/fhir/resource-types", "code": "Consent"},
            "description": "authorizing consent"}));
    }
    if let Some(q) = &d.query {
        entities.push(json!({
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "24", "display": "Query"},
            "query": base64::engine::general_purpose::STANDARD.encode(q.as_bytes())
        }));
    }
    let mut ev = json!({
        "resourceType": "AuditEvent",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": d.interaction.code()}],
        "action": d.interaction.action(),
        "recorded": time::instant(d.recorded),
        "outcome": if failure.is_some() { "4" } else { "0" },
        "purposeOfEvent": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": d.ctx.purpose_of_use}]}],
        "agent": agents,
        "source": {"site": d.ctx.facility_id, "observer": {"reference": format!("Device/{}", store.config.appliance_id)}},
        "entity": entities
    });
    if let (false, Some(obj)) = (d.bases.is_empty(), ev.as_object_mut()) {
        let ext: Vec<Value> = d
            .bases
            .iter()
            .map(|b| json!({"url": BASIS_EXTENSION, "valueCode": b.code()}))
            .collect();
        obj.insert("extension".into(), Value::Array(ext));
    }
    if let (Some(f), Some(obj)) = (failure, ev.as_object_mut()) {
        obj.insert("outcomeDesc".into(), json!(f));
    }
    if let (Some(j), Some(obj)) = (&d.ctx.justification, ev.as_object_mut()) {
        obj.insert("purposeOfEvent".into(), json!([{
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": d.ctx.purpose_of_use}],
            "text": j
        }]));
    }
    ev
}

/// A store in `dir` for appliance `appliance` and facility `fac`, under fixed test keys.
fn open_store(dir: &std::path::Path, appliance: &str) -> Store {
    let secrets = hexa_crypto::keyfile::ApplianceSecrets {
        node_key: hexa_crypto::keys::SigningKey::from_seed(&[3; 32]),
        master_key: hexa_crypto::seal::MasterKey::from_bytes([4; 32]),
    };
    Store::open(super::StoreConfig::new(dir, appliance, "fac"), secrets).unwrap()
}

fn drafts() -> Vec<AuditDraft> {
    let plain = AccessContext::system("fac");
    let mut rich = AccessContext::system("fac-\"é");
    rich.client_id = "emr \\ 1".into();
    rich.practitioner = Some("pr-1".into());
    rich.purpose_of_use = "ETREAT".into();
    rich.justification = Some("unconscious, \nno card".into());
    let mut out = Vec::new();
    for (i, ctx) in [plain, rich].iter().enumerate() {
        for interaction in [Interaction::Read, Interaction::Search, Interaction::Create] {
            let mut d = AuditDraft::new(interaction, ctx);
            out.push(d.clone());
            d.entities.push("Patient/p1/_history/2".into());
            d.entities.push("Observation/o1/_history/1".into());
            d.patients.push("Patient/p1".into());
            d.patients.push("Patient/p2".into());
            d.consents.push("Consent/c1/_history/1".into());
            d.bases = vec![Basis::Consent, Basis::Emergency];
            d.query = Some(format!("Patient?name=ü{i}&_count=5"));
            out.push(d.clone());
            d.failure = Some("forbidden: no consent".into());
            out.push(d);
        }
    }
    out
}

#[test]
fn composed_audit_event_equals_the_value_builder() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), "node-\"1");
    for d in drafts() {
        for failure in [None, Some("conflict")] {
            let canon = audit::audit_event_canon(&store, &d, failure);
            let oracle = audit_event_json_oracle(&store, &d, failure);
            assert_eq!(canon.to_value(), oracle);
            assert_eq!(
                canon.to_bytes(),
                hexa_crypto::jcs::canonicalize(&oracle).unwrap()
            );
            let mut with_id = canon.clone();
            if let hexa_crypto::jcs::Canon::Object(m) = &mut with_id {
                m.push((
                    "id",
                    hexa_crypto::jcs::Canon::Str("0192f0a0-1111-7222-8333-444455556666"),
                ));
            }
            let mut oracle_id = oracle.clone();
            oracle_id["id"] = json!("0192f0a0-1111-7222-8333-444455556666");
            let terms = super::audit_index::canon_event_terms(&store, &with_id);
            assert_eq!(terms, super::audit_index::event_terms(&store, &oracle_id));
            assert!(
                terms.len() >= 6,
                "date, agent, action and outcome terms at least"
            );
        }
    }
    // prepare_audit's bytes are the canonical form of the event it names, compressed;
    // its leaf is the hash of the canonical form.
    let d = &drafts()[1];
    let p = audit::prepare_audit(&store, d, None).unwrap();
    let mut v = audit_event_json_oracle(&store, d, None);
    v["id"] = json!(p.id);
    let jcs = hexa_crypto::jcs::canonicalize(&v).unwrap();
    assert_eq!(
        super::compress::unpack_audit(p.stored.clone()).unwrap(),
        jcs
    );
    assert!(
        p.stored.len() * 4 < jcs.len(),
        "{} of {}",
        p.stored.len(),
        jcs.len()
    );
    assert_eq!(p.leaf, hexa_crypto::merkle::leaf_hash(&jcs));
    assert_eq!(p.terms, super::audit_index::event_terms(&store, &v));
}

/// Shapes the composer never produces still get the terms of the whole event: the direct
/// path hands them to the generic one instead of guessing.
#[test]
fn unexpected_audit_event_shapes_fall_back_to_the_generic_terms() {
    use hexa_crypto::jcs::Canon;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), "node-1");
    let all = drafts();
    let base = audit::audit_event_canon(&store, &all[1], None);
    fn set<'a>(c: &Canon<'a>, name: &'static str, v: Canon<'a>) -> Canon<'a> {
        let mut c = c.clone();
        if let Canon::Object(m) = &mut c {
            m.retain(|(k, _)| *k != name);
            m.push((name, v));
        }
        c
    }
    let who = |v: Canon<'static>| Canon::Array(vec![Canon::Object(vec![("who", v)])]);
    let variants = [
        set(&base, "action", Canon::Bool(true)),
        set(
            &base,
            "recorded",
            Canon::Object(vec![("start", Canon::Str("2026-01-02"))]),
        ),
        set(
            &base,
            "agent",
            who(Canon::Str("https://x.example/fhir/Practitioner/p1")),
        ),
        set(
            &base,
            "agent",
            who(Canon::Array(vec![Canon::Str("Patient/a")])),
        ),
        set(
            &base,
            "agent",
            who(Canon::Object(vec![("reference", Canon::Bool(false))])),
        ),
        set(&base, "entity", Canon::Str("Patient/b")),
        set(&base, "entity", Canon::Array(vec![Canon::Str("Patient/c")])),
    ];
    for v in &variants {
        let terms = super::audit_index::canon_event_terms(&store, v);
        assert_eq!(
            terms,
            super::audit_index::event_terms(&store, &v.to_value())
        );
        assert_eq!(terms, super::audit_index::generic_event_terms(&store, v));
    }
}

/// The Provenance builder as it was before `provenance_canon` (the oracle). The Provenance of a stored version: target, agent (this appliance, and the author when
/// given), and the detached JWS(s) as `signature` (`sigFormat` application/jose).
fn provenance_json_oracle(store: &Store, r: &Record, id: &str, author: Option<&str>) -> Value {
    let device = json!({"reference": format!("Device/{}", store.config.appliance_id)});
    let when = time::instant(r.last_updated);
    let activity = match (r.version, r.deleted) {
        (_, true) => "DELETE",
        (1, false) => "CREATE",
        _ => "UPDATE",
    };
    let author_sig_type = json!([{"system": "urn:iso-astm:E1762-95:2013", "code": "1.2.840.10065.1.12.1.1", "display": "Author's Signature"}]);
    let mut agents = vec![json!({
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "custodian"}]},
        "who": device
    })];
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut sigs = vec![json!({
        "type": author_sig_type,
        "when": when,
        "who": device,
        "targetFormat": "application/fhir+json",
        "sigFormat": "application/jose",
        "data": b64.encode(r.jws.as_bytes())
    })];
    if let Some(a) = &r.author_jws {
        let author = match author {
            Some(a) => json!({"reference": a}),
            None => json!({"display": "author (identified by the JWS kid)"}),
        };
        agents.push(json!({
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "author"}]},
            "who": author
        }));
        sigs.push(json!({
            "type": author_sig_type,
            "when": when,
            "who": author,
            "targetFormat": "application/fhir+json",
            "sigFormat": "application/jose",
            "data": b64.encode(a.as_bytes())
        }));
    }
    json!({
        "resourceType": "Provenance",
        "id": id,
        "target": [{"reference": r.versioned_reference()}],
        "recorded": when,
        "activity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation", "code": activity}]},
        "agent": agents,
        "signature": sigs
    })
}

#[test]
fn composed_provenance_equals_the_value_builder() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), "node");
    let base = Record {
        resource_type: "Observation".into(),
        id: "o1".into(),
        version: 1,
        last_updated: 1_764_000_000_123,
        deleted: false,
        resource: json!({"resourceType": "Observation", "id": "o1"}),
        canonical: br#"{"id":"o1","resourceType":"Observation"}"#.to_vec(),
        jws: "eyJhbGciOiJFZERTQSJ9..c2ln".into(),
        author_jws: None,
    };
    let mut cases = vec![base.clone()];
    cases.push(Record {
        version: 3,
        ..base.clone()
    });
    cases.push(Record {
        version: 4,
        deleted: true,
        ..base.clone()
    });
    cases.push(Record {
        author_jws: Some("eyJraWQiOiJ3In0..YXV0aG9y".into()),
        ..base
    });
    for r in &cases {
        for author in [None, Some("Practitioner/pr-\"1")] {
            let canon = audit::provenance_canon(&store.config.appliance_id, r, "prov-1", author);
            let oracle = provenance_json_oracle(&store, r, "prov-1", author);
            assert_eq!(canon.to_value(), oracle);
            assert_eq!(
                canon.to_bytes(),
                hexa_crypto::jcs::canonicalize(&oracle).unwrap()
            );
        }
    }
}
