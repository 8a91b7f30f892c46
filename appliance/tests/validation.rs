//! Validation of resources against the FHIR R4 definitions over real sockets: unknown
//! elements, wrong types, malformed primitives and codes outside required bindings are 400,
//! broken references 422, each with an OperationOutcome naming the element; on create,
//! update, conditional create, and in transactions and batches. Nothing invalid reaches
//! the store, and what is valid is stored as sent.

mod common;
mod conformance_support;

use conformance_support::{Server, expressions};
use serde_json::{Value, json};

fn patient() -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": "urn:rw:nid", "value": "1199080012345678"}],
        "name": [{"family": "Uwase", "given": ["Aline"]}],
        "gender": "female",
        "birthDate": "1990-01-01"
    })
}

fn observation(subject: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
        "subject": {"reference": subject},
        "valueQuantity": {"value": 61.5, "unit": "kg"}
    })
}

/// Asserts a 400 `invalid-resource` whose issues name exactly `want` (in any order).
fn assert_invalid(r: &conformance_support::Resp, want: &[&str]) {
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.code(), "invalid-resource");
    let mut got = r.expressions();
    got.sort();
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(got, want, "{}", r.text());
}

#[test]
fn structural_errors_are_400_and_name_the_element() {
    let s = Server::start();
    let mut p = patient();
    p["shoeSize"] = json!(42);
    assert_invalid(
        &s.send("POST", "/fhir/Patient", &p, &[]),
        &["Patient.shoeSize"],
    );

    let mut p = patient();
    p["name"][0]["given"] = json!("Aline");
    assert_invalid(
        &s.send("POST", "/fhir/Patient", &p, &[]),
        &["Patient.name[0].given"],
    );

    // A code outside the required binding; the allowed codes are listed, the value is
    // not echoed.
    let mut p = patient();
    p["gender"] = json!("woman");
    let r = s.send("POST", "/fhir/Patient", &p, &[]);
    assert_invalid(&r, &["Patient.gender"]);
    let issue = &r.json()["issue"][0];
    assert_eq!(issue["code"], "code-invalid");
    assert!(issue["diagnostics"].as_str().unwrap().contains("female"));
    assert!(!r.text().contains("woman"));

    let mut p = patient();
    p["birthDate"] = json!("1990-13-01");
    p["active"] = json!("yes");
    assert_invalid(
        &s.send("POST", "/fhir/Patient", &p, &[]),
        &["Patient.birthDate", "Patient.active"],
    );

    // A required element missing. (The R4 schema requires only complex elements: a
    // required primitive such as Observation.status may be given as `_status` alone.)
    let mut o = observation("#x");
    o.as_object_mut().unwrap().remove("code");
    o["subject"] = json!({"display": "someone"});
    assert_invalid(
        &s.send("POST", "/fhir/Observation", &o, &[]),
        &["Observation.code"],
    );

    // A contained resource is validated as its own type.
    let mut o = observation("#p");
    o["contained"] = json!([{"resourceType": "Patient", "id": "p", "gender": "x"}]);
    assert_invalid(
        &s.send("POST", "/fhir/Observation", &o, &[]),
        &["Observation.contained[0].gender"],
    );

    // None of them was stored.
    let b = s.get("/fhir/Patient?_summary=count").json();
    assert_eq!(b["total"], 0, "{b}");
    let b = s.get("/fhir/Observation?_summary=count").json();
    assert_eq!(b["total"], 0, "{b}");
}

#[test]
fn update_and_conditional_create_are_validated() {
    let s = Server::start();
    let mut p = patient();
    p["gender"] = json!("F");
    assert_invalid(
        &s.send("PUT", "/fhir/Patient/p-upd", &p, &[]),
        &["Patient.gender"],
    );
    assert_eq!(s.get("/fhir/Patient/p-upd").status, 404);
    assert_invalid(
        &s.send(
            "POST",
            "/fhir/Patient",
            &p,
            &[("If-None-Exist", "identifier=urn:rw:nid|1199080012345678")],
        ),
        &["Patient.gender"],
    );
    // Valid: stored; then an invalid update leaves version 1 current.
    let r = s.send("PUT", "/fhir/Patient/p-upd", &patient(), &[]);
    assert_eq!(r.status, 201, "{}", r.text());
    let mut bad = patient();
    bad["id"] = json!("p-upd");
    bad["telecom"] = json!([{"system": "pager-of-doom", "value": "1"}]);
    assert_invalid(
        &s.send("PUT", "/fhir/Patient/p-upd", &bad, &[]),
        &["Patient.telecom[0].system"],
    );
    assert_eq!(
        s.get("/fhir/Patient/p-upd").json()["meta"]["versionId"],
        "1"
    );
}

#[test]
fn valid_resources_are_stored_as_sent() {
    let s = Server::start();
    // Extensions, primitive extensions and a contained resource survive untouched.
    let sent = json!({
        "resourceType": "Patient",
        "extension": [{"url": "urn:hexa:test", "valueString": "kept"}],
        "name": [{"family": "Mukamana", "given": ["Jeanne"]}],
        "birthDate": "1985",
        "_birthDate": {"extension": [{"url": "urn:hexa:approx", "valueBoolean": true}]},
        "contained": [{"resourceType": "Organization", "id": "o1", "name": "Clinic"}],
        "managingOrganization": {"reference": "#o1"}
    });
    let r = s.send("POST", "/fhir/Patient", &sent, &[]);
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let mut got = s.get(&format!("/fhir/Patient/{id}")).json();
    let o = got.as_object_mut().unwrap();
    o.remove("meta");
    o.remove("id");
    assert_eq!(got, sent);
}

#[test]
fn broken_references_are_422() {
    let s = Server::start();
    let r = s.send(
        "POST",
        "/fhir/Observation",
        &observation("Patient/nobody"),
        &[],
    );
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.code(), "broken-reference");
    assert_eq!(r.expressions(), vec!["Observation.subject.reference"]);

    // A type this server does not hold cannot be the target of a relative reference.
    let mut o = observation("Patient/nobody");
    o["subject"] = json!({"display": "anonymous"});
    o["derivedFrom"] = json!([{"reference": "Questionnaire/q1"}]);
    let r = s.send("POST", "/fhir/Observation", &o, &[]);
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(
        r.expressions(),
        vec!["Observation.derivedFrom[0].reference"]
    );

    // A `#id` that names no contained resource.
    let r = s.send("POST", "/fhir/Observation", &observation("#ghost"), &[]);
    assert_eq!(r.status, 422, "{}", r.text());

    // Once the target exists, the same reference is accepted; absolute and urn
    // references are not this server's to resolve.
    let r = s.send("PUT", "/fhir/Patient/pt-1", &patient(), &[]);
    assert_eq!(r.status, 201, "{}", r.text());
    let r = s.send(
        "POST",
        "/fhir/Observation",
        &observation("Patient/pt-1"),
        &[],
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let mut o = observation("Patient/pt-1");
    o["performer"] = json!([
        {"reference": "https://hie.example.rw/fhir/Practitioner/123"},
        {"reference": "urn:oid:1.2.3.4"}
    ]);
    assert_eq!(s.send("POST", "/fhir/Observation", &o, &[]).status, 201);

    // A deleted target is gone for new references, but its versions stay citable.
    let r = s.req(
        "DELETE",
        "/fhir/Patient/pt-1",
        &[("Authorization", s.all.as_str())],
        b"",
    );
    assert_eq!(r.status, 204);
    let r = s.send(
        "POST",
        "/fhir/Observation",
        &observation("Patient/pt-1"),
        &[],
    );
    assert_eq!(r.status, 422, "{}", r.text());
    let r = s.send(
        "POST",
        "/fhir/Observation",
        &observation("Patient/pt-1/_history/1"),
        &[],
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = s.send(
        "POST",
        "/fhir/Observation",
        &observation("Patient/pt-1/_history/9"),
        &[],
    );
    assert_eq!(r.status, 422, "{}", r.text());
}

#[test]
fn transactions_are_validated_as_a_whole() {
    let s = Server::start();
    let mut bad = patient();
    bad["gender"] = json!("woman");
    let tx = |entries: Vec<Value>| json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    let post = |res: Value, full: &str| json!({"fullUrl": full, "resource": res, "request": {"method": "POST", "url": res["resourceType"]}});
    // One invalid entry: 400 naming it, nothing committed.
    let r = s.send(
        "POST",
        "/fhir",
        &tx(vec![
            post(patient(), "urn:uuid:00000000-0000-4000-8000-000000000001"),
            post(bad, "urn:uuid:00000000-0000-4000-8000-000000000002"),
        ]),
        &[],
    );
    assert_invalid(&r, &["Bundle.entry[1].resource.gender"]);
    assert_eq!(s.get("/fhir/Patient?_summary=count").json()["total"], 0);

    // A reference to a resource the same transaction creates by PUT is not broken; one
    // to nothing is (422, naming the entry); urn:uuid references are resolved.
    let put_patient = json!({
        "resource": {"resourceType": "Patient", "id": "tx-p", "gender": "male"},
        "request": {"method": "PUT", "url": "Patient/tx-p"}
    });
    let r = s.send(
        "POST",
        "/fhir",
        &tx(vec![
            put_patient.clone(),
            post(
                observation("Patient/none"),
                "urn:uuid:00000000-0000-4000-8000-000000000003",
            ),
        ]),
        &[],
    );
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(
        r.expressions(),
        vec!["Bundle.entry[1].resource.subject.reference"]
    );
    assert_eq!(s.get("/fhir/Patient/tx-p").status, 404);
    let r = s.send(
        "POST",
        "/fhir",
        &tx(vec![
            put_patient,
            post(
                observation("Patient/tx-p"),
                "urn:uuid:00000000-0000-4000-8000-000000000004",
            ),
            post(patient(), "urn:uuid:00000000-0000-4000-8000-000000000005"),
            post(
                observation("urn:uuid:00000000-0000-4000-8000-000000000005"),
                "urn:uuid:00000000-0000-4000-8000-000000000006",
            ),
        ]),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let b = r.json();
    let statuses: Vec<&str> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, vec!["201 Created"; 4]);
}

#[test]
fn batch_entries_are_validated_one_by_one() {
    let s = Server::start();
    let mut bad = patient();
    bad["birthDate"] = json!("yesterday");
    let b = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": patient(), "request": {"method": "POST", "url": "Patient"}},
        {"resource": bad, "request": {"method": "POST", "url": "Patient"}},
        {"resource": observation("Patient/absent"), "request": {"method": "POST", "url": "Observation"}}
    ]});
    let r = s.send("POST", "/fhir", &b, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let e = v["entry"].as_array().unwrap();
    assert_eq!(e[0]["response"]["status"], "201 Created");
    assert_eq!(e[1]["response"]["status"], "400 Bad Request");
    assert_eq!(
        expressions(&e[1]["response"]["outcome"]),
        vec!["Patient.birthDate"]
    );
    assert_eq!(e[2]["response"]["status"], "422 Unprocessable Entity");
    assert_eq!(
        expressions(&e[2]["response"]["outcome"]),
        vec!["Observation.subject.reference"]
    );
    assert_eq!(s.get("/fhir/Patient?_summary=count").json()["total"], 1);
}
