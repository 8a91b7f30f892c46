//! End-to-end tests over real sockets of the FHIR features beyond CRUD: `_include` and
//! `_revinclude` (with `:iterate`, scopes and deleted targets), `_sort`, conditional
//! update, instance `_history` paging, `Patient/$match`, `Patient/{id}/$everything`, the
//! terminology operations, the rate limits (429 + Retry-After), the configured public
//! base URL (never `Host`) and the audit figures of `/metrics`. Bad inputs included.

mod common;
mod fhir_common;

use fhir_common::{Server, token, token_for};
use hexa_appliance::config::Config;
use serde_json::{Value, json};
use std::io::{Read, Write};

fn patient(family: &str, given: &str, nid: &str, birth: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": "urn:rw:nid", "value": nid}],
        "name": [{"family": family, "given": [given]}],
        "gender": "female",
        "birthDate": birth,
    })
}

fn created(s: &Server, ty: &str, body: &Value) -> String {
    let r = s.send("POST", &format!("/fhir/{ty}"), body, &[]);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.json()["id"].as_str().unwrap().to_string()
}

fn entries(b: &Value) -> Vec<Value> {
    b["entry"].as_array().cloned().unwrap_or_default()
}

/// `(mode, Type/id)` of each entry.
fn modes(b: &Value) -> Vec<(String, String)> {
    entries(b)
        .iter()
        .map(|e| {
            (
                e["search"]["mode"].as_str().unwrap().to_string(),
                format!(
                    "{}/{}",
                    e["resource"]["resourceType"].as_str().unwrap(),
                    e["resource"]["id"].as_str().unwrap()
                ),
            )
        })
        .collect()
}

fn link(b: &Value, rel: &str) -> Option<String> {
    b["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == rel)
        .map(|l| l["url"].as_str().unwrap().to_string())
}

#[test]
fn include_and_revinclude() {
    let s = Server::start();
    let org = created(
        &s,
        "Organization",
        &json!({"resourceType": "Organization", "name": "Kibagabaga"}),
    );
    let mut p = patient("Inc", "Aline", "INC1", "1990-01-01");
    p["managingOrganization"] = json!({"reference": format!("Organization/{org}")});
    let pid = created(&s, "Patient", &p);
    let other = created(
        &s,
        "Patient",
        &patient("Other", "Bea", "INC2", "1991-01-01"),
    );
    let obs = |subject: &str| {
        json!({"resourceType": "Observation", "status": "final",
               "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
               "subject": {"reference": format!("Patient/{subject}")}})
    };
    let o1 = created(&s, "Observation", &obs(&pid));
    let o2 = created(&s, "Observation", &obs(&pid));
    created(&s, "Observation", &obs(&other));

    // _include: the matches' patient, once, as mode=include.
    let r = s.get(&format!(
        "/fhir/Observation?patient={pid}&_include=Observation:patient"
    ));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let b = r.json();
    assert_eq!(b["total"], 2, "total counts matches only");
    let m = modes(&b);
    assert_eq!(m.len(), 3, "{m:?}");
    assert!(m.contains(&("include".into(), format!("Patient/{pid}"))));
    assert!(m.contains(&("match".into(), format!("Observation/{o1}"))));
    assert!(m.contains(&("match".into(), format!("Observation/{o2}"))));
    // The typed form and :iterate reach the patient's organization.
    let r = s.get(&format!(
        "/fhir/Observation?patient={pid}&_include=Observation:subject:Patient&_include:iterate=Patient:organization"
    ));
    let m = modes(&r.json());
    assert!(
        m.contains(&("include".into(), format!("Organization/{org}"))),
        "{m:?}"
    );
    // Without :iterate the organization is not reached.
    let r = s.get(&format!(
        "/fhir/Observation?patient={pid}&_include=Observation:patient"
    ));
    assert!(
        !modes(&r.json())
            .iter()
            .any(|(_, k)| k.starts_with("Organization/"))
    );

    // _revinclude: the patient's observations and the Provenance of its version.
    let r = s.get(&format!(
        "/fhir/Patient?_id={pid}&_revinclude=Observation:patient&_revinclude=Provenance:target"
    ));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let b = r.json();
    let m = modes(&b);
    assert_eq!(m[0], ("match".into(), format!("Patient/{pid}")));
    let obs_inc: Vec<_> = m
        .iter()
        .filter(|(mode, k)| mode == "include" && k.starts_with("Observation/"))
        .collect();
    assert_eq!(obs_inc.len(), 2, "{m:?}");
    let prov: Vec<Value> = entries(&b)
        .into_iter()
        .filter(|e| e["resource"]["resourceType"] == "Provenance")
        .collect();
    assert_eq!(prov.len(), 1, "{m:?}");
    let target = prov[0]["resource"]["target"][0]["reference"]
        .as_str()
        .unwrap();
    assert!(target.starts_with(&format!("Patient/{pid}")), "{target}");
    // Paging links keep the include parameters.
    let next = link(&b, "self").unwrap();
    assert!(next.contains("_revinclude=Provenance:target"), "{next}");

    // Scopes: a client that may read Observations only gets no Patient included.
    let obs_only = token(&s, "obs-only", "system/Observation.rs");
    let r = s.req(
        "GET",
        &format!("/fhir/Observation?patient={pid}&_include=Observation:patient"),
        &[("Authorization", obs_only.as_str())],
        b"",
    );
    assert_eq!(r.status, 200);
    assert!(modes(&r.json()).iter().all(|(mode, _)| mode == "match"));

    // A deleted target is silently left out, never an error.
    assert_eq!(
        s.req(
            "DELETE",
            &format!("/fhir/Organization/{org}"),
            &[("Authorization", s.all.as_str())],
            b""
        )
        .status,
        204
    );
    let r = s.get(&format!(
        "/fhir/Patient?_id={pid}&_include=Patient:organization"
    ));
    assert_eq!(r.status, 200);
    assert_eq!(modes(&r.json()).len(), 1);
    // _summary=count carries no entries at all.
    let r = s.get(&format!(
        "/fhir/Observation?patient={pid}&_include=Observation:patient&_summary=count"
    ));
    assert!(r.json().get("entry").is_none());

    // Bad includes: 400 with a stable code.
    for q in [
        "Observation?_include=Observation:*",
        "Observation?_include=Observation:code",
        "Observation?_include=Observation",
        "Observation?_include=Spaceship:patient",
        "Observation?_include=Patient:organization",
        "Observation?_include=Observation:patient:Practitioner",
        "Patient?_revinclude=Observation:nope",
    ] {
        let r = s.get(&format!("/fhir/{q}"));
        assert_eq!(r.status, 400, "{q}");
        assert_eq!(r.code(), "unsupported-include", "{q}");
    }
}

#[test]
fn sort_orders_and_refuses_unknown_keys() {
    let s = Server::start();
    let c = created(
        &s,
        "Patient",
        &patient("Cyiza", "Sortie", "S3", "1970-05-05"),
    );
    let a = created(
        &s,
        "Patient",
        &patient("Abayo", "Sortie", "S1", "1990-01-01"),
    );
    let b = created(
        &s,
        "Patient",
        &patient("Bizimana", "Sortie", "S2", "1980-03-03"),
    );
    let ids = |q: &str| -> Vec<String> {
        let r = s.get(&format!("/fhir/Patient?given=sortie&{q}"));
        assert_eq!(r.status, 200, "{q}: {}", String::from_utf8_lossy(&r.body));
        entries(&r.json())
            .iter()
            .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids("_sort=family"), [a.as_str(), b.as_str(), c.as_str()]);
    assert_eq!(ids("_sort=-family"), [c.as_str(), b.as_str(), a.as_str()]);
    assert_eq!(ids("_sort=name"), [a.as_str(), b.as_str(), c.as_str()]);
    assert_eq!(ids("_sort=birthdate"), [c.as_str(), b.as_str(), a.as_str()]);
    assert_eq!(
        ids("_sort=-birthdate"),
        [a.as_str(), b.as_str(), c.as_str()]
    );
    // _lastUpdated: ordered by meta.lastUpdated (two creates may share a millisecond).
    let stamps = |q: &str| -> Vec<String> {
        entries(&s.get(&format!("/fhir/Patient?given=sortie&{q}")).json())
            .iter()
            .map(|e| {
                e["resource"]["meta"]["lastUpdated"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    let up = stamps("_sort=_lastUpdated");
    assert_eq!(up.len(), 3);
    assert!(up.windows(2).all(|w| w[0] <= w[1]), "{up:?}");
    let down = stamps("_sort=-_lastUpdated");
    assert!(down.windows(2).all(|w| w[0] >= w[1]), "{down:?}");
    let mut sorted = vec![a.clone(), b.clone(), c.clone()];
    sorted.sort();
    assert_eq!(ids("_sort=_id"), sorted);
    // Sorting holds across pages.
    let r = s.get("/fhir/Patient?given=sortie&_sort=family&_count=2");
    let page1 = r.json();
    assert_eq!(entries(&page1).len(), 2);
    let next = link(&page1, "next").unwrap();
    let path = next.split_once("/fhir/").unwrap().1;
    let page2 = s.get(&format!("/fhir/{path}")).json();
    assert_eq!(entries(&page2)[0]["resource"]["id"], json!(c));
    // Observations by date, descending.
    let mk = |d: &str| {
        created(
            &s,
            "Observation",
            &json!({"resourceType": "Observation", "status": "final", "code": {"text": "w"},
                    "subject": {"reference": format!("Patient/{a}")}, "effectiveDateTime": d}),
        )
    };
    let o1 = mk("2024-01-01");
    let o3 = mk("2024-03-01");
    let o2 = mk("2024-02-01");
    let r = s.get(&format!("/fhir/Observation?patient={a}&_sort=-date"));
    let got: Vec<Value> = entries(&r.json())
        .iter()
        .map(|e| e["resource"]["id"].clone())
        .collect();
    assert_eq!(got, [json!(o3), json!(o2), json!(o1)]);
    // Unknown sort keys: 400.
    for q in ["_sort=shoe-size", "_sort=-", "_sort=-nope"] {
        let r = s.get(&format!("/fhir/Patient?{q}"));
        assert_eq!(r.status, 400, "{q}");
    }
}

#[test]
fn conditional_update() {
    let s = Server::start();
    let put = |q: &str, body: &Value, extra: &[(&str, &str)]| {
        s.send("PUT", &format!("/fhir/Patient?{q}"), body, extra)
    };
    // No match and no id: created with a server id.
    let r = put(
        "identifier=urn:rw:nid|CU1",
        &patient("Cond", "Upd", "CU1", "1990-01-01"),
        &[],
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["id"].as_str().unwrap().to_string();
    // One match: that resource is updated.
    let mut p = patient("Cond2", "Upd", "CU1", "1990-01-01");
    let r = put("identifier=urn:rw:nid|CU1", &p, &[]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["id"], json!(id));
    assert_eq!(r.json()["meta"]["versionId"], "2");
    // If-Match is honoured: a stale version is 412.
    let r = put("identifier=urn:rw:nid|CU1", &p, &[("If-Match", "W/\"1\"")]);
    assert_eq!(r.status, 412);
    let r = put("identifier=urn:rw:nid|CU1", &p, &[("If-Match", "W/\"2\"")]);
    assert_eq!(r.status, 200);
    // A body id that differs from the match: 400.
    p["id"] = json!("someone-else");
    let r = put("identifier=urn:rw:nid|CU1", &p, &[]);
    assert_eq!(r.status, 400);
    assert_eq!(r.code(), "id-mismatch");
    // No match with a client id: created under that id.
    let mut q = patient("Cond3", "Upd", "CU3", "1990-01-01");
    q["id"] = json!("cu-client-id");
    let r = put("identifier=urn:rw:nid|CU3", &q, &[]);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["id"], "cu-client-id");
    // Several matches: 412 multiple-matches.
    let r = put("given=upd", &patient("X", "Upd", "CU9", "1990-01-01"), &[]);
    assert_eq!(r.status, 412);
    assert_eq!(r.code(), "multiple-matches");
    // Result parameters are not criteria; unknown parameters are refused.
    let r = put("_count=1", &patient("X", "Y", "CU8", "1990-01-01"), &[]);
    assert_eq!(r.status, 400);
    assert_eq!(r.code(), "bad-conditional-update");
    assert_eq!(
        put("shoe-size=4", &patient("X", "Y", "CU8", "1990-01-01"), &[]).status,
        400
    );
    // PUT on a type without criteria is not an interaction.
    assert_eq!(
        s.send(
            "PUT",
            "/fhir/Patient",
            &patient("X", "Y", "CU8", "1990-01-01"),
            &[]
        )
        .status,
        405
    );
    // A read-only client may not.
    let body = serde_json::to_vec(&patient("X", "Y", "CU1", "1990-01-01")).unwrap();
    let r = s.req(
        "PUT",
        "/fhir/Patient?identifier=urn:rw:nid|CU1",
        &[
            ("Authorization", s.read.as_str()),
            ("Content-Type", "application/fhir+json"),
        ],
        &body,
    );
    assert_eq!(r.status, 403);
}

#[test]
fn instance_history_pages_with_next_links() {
    let s = Server::start();
    let id = created(&s, "Patient", &patient("Hist", "A", "H1", "1990-01-01"));
    for i in 0..4 {
        let mut p = patient(&format!("Hist{i}"), "A", "H1", "1990-01-01");
        p["id"] = json!(id);
        assert_eq!(
            s.send("PUT", &format!("/fhir/Patient/{id}"), &p, &[])
                .status,
            200
        );
    }
    let mut url = format!("/fhir/Patient/{id}/_history?_count=2");
    let mut versions = Vec::new();
    let mut pages = 0;
    loop {
        let r = s.get(&url);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let b = r.json();
        assert_eq!(b["type"], "history");
        assert_eq!(b["total"], 5);
        for e in entries(&b) {
            versions.push(
                e["resource"]["meta"]["versionId"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
        pages += 1;
        match link(&b, "next") {
            Some(n) => url = format!("/fhir/{}", n.split_once("/fhir/").unwrap().1),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(versions, ["5", "4", "3", "2", "1"]);
    for q in ["_count=x", "_offset=-1", "_since=2020-01-01"] {
        assert_eq!(
            s.get(&format!("/fhir/Patient/{id}/_history?{q}")).status,
            400,
            "{q}"
        );
    }
}

fn match_params(p: &Value, extra: &[Value]) -> Value {
    let mut params = vec![json!({"name": "resource", "resource": p})];
    params.extend_from_slice(extra);
    json!({"resourceType": "Parameters", "parameter": params})
}

#[test]
fn patient_match_scores_and_grades() {
    let s = Server::start();
    let mut p = patient("Mukamana", "Aline", "M100", "1988-03-04");
    p["address"] = json!([{"city": "Kigali", "district": "Gasabo"}]);
    let pid = created(&s, "Patient", &p);
    let unlike = created(
        &s,
        "Patient",
        &patient("Habimana", "Jean", "M200", "1975-07-07"),
    );
    // Same demographics, no identifier: scored, graded, best first.
    let mut q = patient("Mukamana", "Aline", "ZZZ", "1988-03-04");
    q.as_object_mut().unwrap().remove("identifier");
    q["address"] = json!([{"city": "Kigali", "district": "Gasabo"}]);
    let r = s.send("POST", "/fhir/Patient/$match", &match_params(&q, &[]), &[]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let b = r.json();
    assert_eq!(b["type"], "searchset");
    let e = entries(&b);
    assert!(!e.is_empty(), "{b}");
    assert_eq!(e[0]["resource"]["id"], json!(pid));
    let score = e[0]["search"]["score"].as_f64().unwrap();
    assert!(score > 0.5 && score <= 1.0, "{score}");
    assert_eq!(
        e[0]["search"]["extension"][0]["url"],
        "http://hl7.org/fhir/StructureDefinition/match-grade"
    );
    let grade = e[0]["search"]["extension"][0]["valueCode"]
        .as_str()
        .unwrap();
    assert!(
        ["certain", "probable", "possible"].contains(&grade),
        "{grade}"
    );
    assert!(e.iter().all(|x| x["resource"]["id"] != json!(unlike)));
    // A shared identifier is certain; onlyCertainMatches keeps only those.
    let r = s.send(
        "POST",
        "/fhir/Patient/$match",
        &match_params(
            &patient("Mukamana", "Aline", "M100", "1988-03-04"),
            &[
                json!({"name": "onlyCertainMatches", "valueBoolean": true}),
                json!({"name": "count", "valueInteger": 5}),
            ],
        ),
        &[],
    );
    assert_eq!(r.status, 200);
    let e = entries(&r.json());
    assert_eq!(e.len(), 1);
    assert_eq!(e[0]["search"]["extension"][0]["valueCode"], "certain");
    // Nobody like this: an empty searchset, not an error.
    let r = s.send(
        "POST",
        "/fhir/Patient/$match",
        &match_params(&patient("Zzyzx", "Qwerty", "NONE", "2001-09-09"), &[]),
        &[],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["total"], 0);
    // Bad inputs.
    assert_eq!(s.get("/fhir/Patient/$match").status, 405);
    let bad = [
        json!({"resourceType": "Parameters"}),
        json!({"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": {"resourceType": "Observation"}}]}),
        match_params(&q, &[json!({"name": "count", "valueInteger": -3})]),
        match_params(
            &q,
            &[json!({"name": "onlyCertainMatches", "valueString": "maybe"})],
        ),
        match_params(&q, &[json!({"name": "colour", "valueString": "red"})]),
        json!({"resourceType": "Parameters", "parameter": {"name": "resource"}}),
        json!({"resourceType": "Parameters", "parameter": [{"valueString": "x"}]}),
        patient("Not", "Parameters", "X", "1990-01-01"),
    ];
    for body in bad {
        let r = s.send("POST", "/fhir/Patient/$match", &body, &[]);
        assert_eq!(r.status, 400, "{body}");
        assert_eq!(r.json()["resourceType"], "OperationOutcome");
    }
    // Operations that do not exist: 404.
    assert_eq!(
        s.send(
            "POST",
            "/fhir/Observation/$match",
            &match_params(&q, &[]),
            &[]
        )
        .status,
        404
    );
    assert_eq!(s.get("/fhir/Patient/$nothing").status, 404);
}

#[test]
fn everything_returns_the_compartment_the_scopes_allow() {
    let s = Server::start();
    let pid = created(
        &s,
        "Patient",
        &patient("Every", "Thing", "E1", "1990-01-01"),
    );
    let other = created(&s, "Patient", &patient("Else", "One", "E2", "1990-01-01"));
    let subj = |p: &str| json!({"reference": format!("Patient/{p}")});
    let o = created(
        &s,
        "Observation",
        &json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": subj(&pid)}),
    );
    let c = created(
        &s,
        "Condition",
        &json!({"resourceType": "Condition", "code": {"text": "malaria"}, "subject": subj(&pid)}),
    );
    created(
        &s,
        "Observation",
        &json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": subj(&other)}),
    );
    let r = s.get(&format!("/fhir/Patient/{pid}/$everything"));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let m = modes(&r.json());
    assert_eq!(m.len(), 3, "{m:?}");
    assert_eq!(m[0], ("match".into(), format!("Patient/{pid}")));
    assert!(m.contains(&("include".into(), format!("Observation/{o}"))));
    assert!(m.contains(&("include".into(), format!("Condition/{c}"))));
    // A client that may read patients only sees just the Patient.
    let pat_only = token(&s, "pat-only", "system/Patient.rs");
    let r = s.req(
        "GET",
        &format!("/fhir/Patient/{pid}/$everything"),
        &[("Authorization", pat_only.as_str())],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(modes(&r.json()).len(), 1);
    // Unknown patient 404, unknown parameter 400, wrong method 405.
    assert_eq!(s.get("/fhir/Patient/nobody/$everything").status, 404);
    assert_eq!(
        s.get(&format!(
            "/fhir/Patient/{pid}/$everything?_type=Observation"
        ))
        .status,
        400
    );
    assert_eq!(
        s.req(
            "DELETE",
            &format!("/fhir/Patient/{pid}/$everything"),
            &[("Authorization", s.all.as_str())],
            b""
        )
        .status,
        405
    );
    // A client without Patient read: 403.
    let obs_only = token(&s, "obs-only", "system/Observation.rs");
    let r = s.req(
        "GET",
        &format!("/fhir/Patient/{pid}/$everything"),
        &[("Authorization", obs_only.as_str())],
        b"",
    );
    assert_eq!(r.status, 403);
}

fn load_terminology(s: &Server) -> (String, String) {
    created(
        s,
        "CodeSystem",
        &json!({
            "resourceType": "CodeSystem", "url": "urn:test:cs", "version": "1", "name": "TestCodes",
            "status": "active", "content": "complete",
            "concept": [
                {"code": "fever", "display": "Fever", "definition": "Raised temperature", "concept": [
                    {"code": "malaria-fever", "display": "Malarial fever",
                     "designation": [{"language": "rw", "value": "Umuriro wa malariya"}]},
                    {"code": "typhoid-fever", "display": "Typhoid fever"}
                ]},
                {"code": "cough", "display": "Cough"}
            ]
        }),
    );
    let vs = created(
        s,
        "ValueSet",
        &json!({
            "resourceType": "ValueSet", "url": "urn:test:vs:fevers", "status": "active",
            "compose": {"include": [{"system": "urn:test:cs",
                "filter": [{"property": "concept", "op": "is-a", "value": "fever"}]}],
                "exclude": [{"system": "urn:test:cs", "concept": [{"code": "typhoid-fever"}]}]}
        }),
    );
    created(
        s,
        "ValueSet",
        &json!({
            "resourceType": "ValueSet", "url": "urn:test:vs:missing", "status": "active",
            "compose": {"include": [{"system": "urn:test:not-loaded"}]}
        }),
    );
    let cm = created(
        s,
        "ConceptMap",
        &json!({
            "resourceType": "ConceptMap", "url": "urn:test:cm", "status": "active",
            "sourceUri": "urn:test:vs:fevers", "targetUri": "urn:test:vs:icd",
            "group": [{"source": "urn:test:cs", "target": "http://hl7.org/fhir/sid/icd-10",
                "element": [{"code": "malaria-fever", "target": [
                    {"code": "B54", "display": "Unspecified malaria", "equivalence": "wider"}]},
                    {"code": "cough", "target": [{"equivalence": "unmatched"}]}]}]
        }),
    );
    (vs, cm)
}

fn param<'a>(p: &'a Value, name: &str) -> Option<&'a Value> {
    p["parameter"]
        .as_array()?
        .iter()
        .find(|x| x["name"] == name)
}

#[test]
fn terminology_operations() {
    let s = Server::start();
    let (vs_id, cm_id) = load_terminology(&s);

    // $lookup, GET and POST.
    let r = s.get("/fhir/CodeSystem/$lookup?system=urn:test:cs&code=malaria-fever");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let p = r.json();
    assert_eq!(p["resourceType"], "Parameters");
    assert_eq!(param(&p, "name").unwrap()["valueString"], "TestCodes");
    assert_eq!(
        param(&p, "display").unwrap()["valueString"],
        "Malarial fever"
    );
    assert_eq!(param(&p, "version").unwrap()["valueString"], "1");
    assert_eq!(
        param(&p, "designation").unwrap()["part"][1]["valueString"],
        "Umuriro wa malariya"
    );
    let body = json!({"resourceType": "Parameters", "parameter": [
        {"name": "coding", "valueCoding": {"system": "urn:test:cs", "code": "fever"}}]});
    let r = s.send("POST", "/fhir/CodeSystem/$lookup", &body, &[]);
    assert_eq!(r.status, 200);
    assert_eq!(param(&r.json(), "display").unwrap()["valueString"], "Fever");
    let r = s.get("/fhir/CodeSystem/$lookup?system=urn:test:cs&code=nope");
    assert_eq!((r.status, r.code().as_str()), (404, "unknown-code"));
    let r = s.get("/fhir/CodeSystem/$lookup?system=urn:none&code=x");
    assert_eq!((r.status, r.code().as_str()), (404, "unknown-code-system"));
    assert_eq!(
        s.get("/fhir/CodeSystem/$lookup?system=urn:test:cs").status,
        400
    );

    // CodeSystem/$validate-code.
    let v = |path: &str| {
        let r = s.get(path);
        assert_eq!(
            r.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        param(&r.json(), "result").unwrap()["valueBoolean"]
            .as_bool()
            .unwrap()
    };
    assert!(v(
        "/fhir/CodeSystem/$validate-code?url=urn:test:cs&code=cough"
    ));
    assert!(!v(
        "/fhir/CodeSystem/$validate-code?url=urn:test:cs&code=sneeze"
    ));
    assert!(!v(
        "/fhir/CodeSystem/$validate-code?url=urn:test:cs&code=cough&display=Sneeze"
    ));
    assert_eq!(
        s.get("/fhir/CodeSystem/$validate-code?url=urn:missing&code=x")
            .status,
        404
    );

    // ValueSet/$expand: is-a filter minus the exclusion, by url and on the instance.
    let r = s.get("/fhir/ValueSet/$expand?url=urn:test:vs:fevers");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let e = r.json();
    assert_eq!(e["resourceType"], "ValueSet");
    assert_eq!(e["expansion"]["total"], 2);
    let codes: Vec<&str> = e["expansion"]["contains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["fever", "malaria-fever"]);
    let r = s.get(&format!("/fhir/ValueSet/{vs_id}/$expand?filter=malar"));
    assert_eq!(r.json()["expansion"]["total"], 1);
    let r = s.get("/fhir/ValueSet/$expand?url=urn:test:vs:fevers&count=1&offset=1");
    let e = r.json();
    assert_eq!(e["expansion"]["contains"][0]["code"], "malaria-fever");
    assert_eq!(e["expansion"]["offset"], 1);
    // An inline ValueSet by POST.
    let body = json!({"resourceType": "Parameters", "parameter": [{"name": "valueSet", "resource": {
        "resourceType": "ValueSet", "status": "draft",
        "compose": {"include": [{"system": "urn:test:cs", "concept": [{"code": "cough"}]}]}}}]});
    let r = s.send("POST", "/fhir/ValueSet/$expand", &body, &[]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["expansion"]["contains"][0]["display"], "Cough");
    // Expansion needing a code system the store lacks: 422; unknown value set: 404.
    let r = s.get("/fhir/ValueSet/$expand?url=urn:test:vs:missing");
    assert_eq!((r.status, r.code().as_str()), (422, "unknown-code-system"));
    assert_eq!(s.get("/fhir/ValueSet/$expand?url=urn:nope").status, 404);
    assert_eq!(s.get("/fhir/ValueSet/$expand").status, 400);
    assert_eq!(
        s.get("/fhir/ValueSet/$expand?url=urn:test:vs:fevers&count=x")
            .status,
        400
    );

    // ValueSet/$validate-code.
    assert!(v(
        "/fhir/ValueSet/$validate-code?url=urn:test:vs:fevers&system=urn:test:cs&code=malaria-fever"
    ));
    assert!(!v(
        "/fhir/ValueSet/$validate-code?url=urn:test:vs:fevers&system=urn:test:cs&code=typhoid-fever"
    ));
    assert!(!v(
        "/fhir/ValueSet/$validate-code?url=urn:test:vs:fevers&system=urn:other&code=fever"
    ));
    let body = json!({"resourceType": "Parameters", "parameter": [
        {"name": "url", "valueUri": "urn:test:vs:fevers"},
        {"name": "codeableConcept", "valueCodeableConcept": {"coding": [
            {"system": "urn:x", "code": "y"}, {"system": "urn:test:cs", "code": "fever"}]}}]});
    let r = s.send("POST", "/fhir/ValueSet/$validate-code", &body, &[]);
    assert_eq!(param(&r.json(), "result").unwrap()["valueBoolean"], true);

    // ConceptMap/$translate: by url, on the instance, and without a named map.
    let r =
        s.get("/fhir/ConceptMap/$translate?url=urn:test:cm&system=urn:test:cs&code=malaria-fever");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let t = r.json();
    assert_eq!(param(&t, "result").unwrap()["valueBoolean"], true);
    let m = param(&t, "match").unwrap();
    assert_eq!(m["part"][0]["valueCode"], "wider");
    assert_eq!(m["part"][1]["valueCoding"]["code"], "B54");
    assert_eq!(
        m["part"][1]["valueCoding"]["system"],
        "http://hl7.org/fhir/sid/icd-10"
    );
    let r = s.get(&format!(
        "/fhir/ConceptMap/{cm_id}/$translate?system=urn:test:cs&code=cough"
    ));
    assert_eq!(param(&r.json(), "result").unwrap()["valueBoolean"], false);
    let r = s.get(
        "/fhir/ConceptMap/$translate?system=urn:test:cs&code=malaria-fever&target=urn:test:vs:icd",
    );
    assert_eq!(param(&r.json(), "result").unwrap()["valueBoolean"], true);
    let r = s.get(
        "/fhir/ConceptMap/$translate?system=urn:test:cs&code=malaria-fever&target=urn:elsewhere",
    );
    assert_eq!(param(&r.json(), "result").unwrap()["valueBoolean"], false);
    assert_eq!(
        s.get("/fhir/ConceptMap/$translate?url=urn:test:cm").status,
        400
    );
    assert_eq!(
        s.get("/fhir/ConceptMap/$translate?url=urn:test:cm&code=x&reverse=true")
            .status,
        400
    );

    // Unknown operations and parameters.
    assert_eq!(s.get("/fhir/CodeSystem/$expand").status, 404);
    let r = s.get("/fhir/CodeSystem/$lookup?system=urn:test:cs&code=fever&colour=red");
    assert_eq!((r.status, r.code().as_str()), (400, "unknown-parameter"));
    let r = s.send(
        "PUT",
        "/fhir/ValueSet/$expand",
        &json!({"resourceType": "Parameters"}),
        &[],
    );
    assert_eq!(r.status, 405);
    // Operations need the read scope on the type.
    let pat_only = token(&s, "pat-only", "system/Patient.rs");
    let r = s.req(
        "GET",
        "/fhir/ValueSet/$expand?url=urn:test:vs:fevers",
        &[("Authorization", pat_only.as_str())],
        b"",
    );
    assert_eq!(r.status, 403);
}

#[test]
fn metadata_lists_operations_includes_and_conditional_update() {
    let s = Server::start();
    let cs = s.req("GET", "/fhir/metadata", &[], b"").json();
    let res = cs["rest"][0]["resource"].as_array().unwrap();
    let find = |t: &str| res.iter().find(|r| r["type"] == t).unwrap();
    let ops = |t: &str| -> Vec<String> {
        find(t)["operation"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|o| o["name"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    // The consent ceremonies add their own Patient operations after these.
    assert_eq!(ops("Patient")[..2], ["match", "everything"]);
    assert_eq!(ops("ValueSet"), ["expand", "validate-code"]);
    assert_eq!(ops("ConceptMap"), ["translate"]);
    assert!(ops("Observation").is_empty());
    assert_eq!(find("Patient")["conditionalUpdate"], true);
    assert!(
        find("Observation")["searchInclude"]
            .as_array()
            .unwrap()
            .contains(&json!("Observation:patient"))
    );
    assert!(
        find("Patient")["searchRevInclude"]
            .as_array()
            .unwrap()
            .contains(&json!("Provenance:target"))
    );
}

#[test]
fn rate_limits_answer_429_with_retry_after() {
    let mut cfg = Config::defaults();
    cfg.server.client_rate_per_sec = 1;
    cfg.server.client_burst = 3;
    cfg.server.token_rate_per_sec = 1;
    cfg.server.token_burst = 4;
    // Server::start_in obtains two tokens (two of the four).
    let s = Server::start_with(cfg);
    for _ in 0..3 {
        assert_eq!(s.get("/fhir/Patient?_count=1").status, 200);
    }
    let r = s.get("/fhir/Patient?_count=1");
    assert_eq!(r.status, 429);
    assert_eq!(r.code(), "rate-limited");
    let after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&after), "{after}");
    // Another client has its own bucket.
    assert_eq!(
        s.req(
            "GET",
            "/fhir/Patient?_count=1",
            &[("Authorization", s.read.as_str())],
            b""
        )
        .status,
        200
    );
    // The token endpoint is limited per address, before the request is even parsed.
    let form = &[("Content-Type", "application/x-www-form-urlencoded")];
    assert_eq!(
        s.req("POST", "/fhir/token", form, b"grant_type=x").status,
        400
    );
    assert_eq!(
        s.req("POST", "/fhir/token", form, b"grant_type=x").status,
        400
    );
    let r = s.req("POST", "/fhir/token", form, b"grant_type=x");
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").is_some());
    // Open endpoints are not limited; /metrics counts the refusals.
    let m = s.req("GET", "/metrics", &[], b"");
    let text = String::from_utf8(m.body).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("hexa_http_rate_limited_total "))
        .unwrap();
    assert_eq!(line, "hexa_http_rate_limited_total 2");
}

#[test]
fn public_base_url_not_host_names_the_server() {
    let mut cfg = Config::defaults();
    cfg.server.public_base_url = Some("https://hexa.example.rw".into());
    let s = Server::start_with(cfg);
    let smart = s
        .req("GET", "/fhir/.well-known/smart-configuration", &[], b"")
        .json();
    assert_eq!(
        smart["token_endpoint"],
        "https://hexa.example.rw/fhir/token"
    );
    // A request naming another host still gets the configured URLs back.
    let body = serde_json::to_vec(&patient("Base", "Url", "B1", "1990-01-01")).unwrap();
    let mut c = std::net::TcpStream::connect(s.http.addr).unwrap();
    let head = format!(
        "POST /fhir/Patient HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\nAuthorization: {}\r\nContent-Type: application/fhir+json\r\nContent-Length: {}\r\n\r\n",
        s.all,
        body.len()
    );
    c.write_all(head.as_bytes()).unwrap();
    c.write_all(&body).unwrap();
    let mut raw = String::new();
    c.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 201"), "{raw}");
    let loc = raw
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("location:"))
        .unwrap();
    assert!(
        loc.contains("https://hexa.example.rw/fhir/Patient/"),
        "{loc}"
    );
    assert!(!raw.contains("evil.example"));
    let b = s.get("/fhir/Patient?family=base").json();
    assert!(
        link(&b, "self")
            .unwrap()
            .starts_with("https://hexa.example.rw/fhir/Patient?")
    );
    assert!(
        entries(&b)[0]["fullUrl"]
            .as_str()
            .unwrap()
            .starts_with("https://hexa.example.rw/fhir/Patient/")
    );
}

#[test]
fn metrics_report_the_audit_log() {
    let s = Server::start();
    created(&s, "Patient", &patient("Metric", "A", "MX1", "1990-01-01"));
    // Force a checkpoint so its age is reported.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let note = rt
        .block_on(s.app.store.handle().audit_checkpoint())
        .unwrap();
    assert!(note.is_some());
    let text = String::from_utf8(s.req("GET", "/metrics", &[], b"").body).unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
            .parse()
            .unwrap()
    };
    let entries = value("hexa_audit_log_entries");
    assert!(entries >= 1.0, "{entries}");
    assert!(value("hexa_audit_checkpoint_size") >= 1.0);
    let age = value("hexa_audit_checkpoint_age_seconds");
    assert!((0.0..60.0).contains(&age), "{age}");
    assert_eq!(value("hexa_actor_restarts_total"), 0.0);
}

#[test]
fn slow_bodies_get_408_and_the_connection_closes() {
    let mut cfg = Config::defaults();
    cfg.server.body_read_timeout_secs = 1;
    let s = Server::start_with(cfg);
    let mut c = std::net::TcpStream::connect(s.http.addr).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let head = format!(
        "POST /fhir/Patient HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Type: application/fhir+json\r\nContent-Length: 100\r\n\r\n{{\"resourceType\"",
        s.all
    );
    c.write_all(head.as_bytes()).unwrap(); // the rest of the body never comes
    let mut raw = String::new();
    let _ = c.read_to_string(&mut raw); // returns because the server closes
    assert!(raw.starts_with("HTTP/1.1 408"), "{raw}");
    assert!(raw.contains("body-timeout"), "{raw}");
    assert!(
        raw.to_ascii_lowercase().contains("connection: close"),
        "{raw}"
    );
}

/// Consent enforcement meets includes: a record the caller may not see (another
/// facility's patient, no consent) is left out of `_include`/`_revinclude` silently, while
/// a direct read of it is 403.
#[test]
fn includes_drop_what_the_consent_policy_refuses() {
    let s = Server::start();
    // Facility fac-test (the `all` client) registers a patient.
    let pid = created(
        &s,
        "Patient",
        &patient("Private", "Pat", "PV1", "1990-01-01"),
    );
    // A client of another facility writes an Observation about that patient.
    let other = token_for(&s, "emr-other", "fac-other", "system/*.cruds");
    let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "bp"},
                     "subject": {"reference": format!("Patient/{pid}")}});
    let r = s.req(
        "POST",
        "/fhir/Observation",
        &[
            ("Authorization", other.as_str()),
            ("Content-Type", "application/fhir+json"),
        ],
        &serde_json::to_vec(&obs).unwrap(),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let oid = r.json()["id"].as_str().unwrap().to_string();
    let get = |path: &str| s.req("GET", path, &[("Authorization", other.as_str())], b"");
    // Without a consent the other facility may not read the patient...
    assert_eq!(get(&format!("/fhir/Patient/{pid}")).status, 403);
    // ...so including it drops it, and the search itself still succeeds.
    let r = get(&format!(
        "/fhir/Observation?_id={oid}&_include=Observation:patient&_revinclude=Provenance:target"
    ));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let m = modes(&r.json());
    assert_eq!(m[0], ("match".into(), format!("Observation/{oid}")));
    assert!(!m.iter().any(|(_, k)| k.starts_with("Patient/")), "{m:?}");
    // The other way round: the patient's facility revincludes observations, but the one
    // written by fac-other is not its to see (no consent): the patient alone comes back.
    let r = s.get(&format!(
        "/fhir/Patient?_id={pid}&_revinclude=Observation:patient"
    ));
    assert_eq!(r.status, 200);
    assert_eq!(
        modes(&r.json()),
        [("match".to_string(), format!("Patient/{pid}"))]
    );
    assert_eq!(s.get(&format!("/fhir/Observation/{oid}")).status, 403);
}
