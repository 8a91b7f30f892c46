//! End-to-end tests of the FHIR R4 API over real sockets on 127.0.0.1: every interaction,
//! the error statuses (400, 401, 403, 404, 405, 409, 410, 412, 413, 415, 422), paging,
//! transactions (atomic) and batches. Every call carries a real access token: clients are
//! registered with Ed25519 keys, sign RFC 7523 assertions with hexa-crypto and exchange
//! them at `POST /fhir/token`.

mod common;
mod fhir_common;

use fhir_common::Server;
use hexa_appliance::config::Config;
use serde_json::{Value, json};

#[test]
fn data_survives_a_restart() {
    let s = Server::start();
    let c = s.send("POST", "/fhir/Patient", &patient("Durable", "D1"), &[]);
    assert_eq!(c.status, 201);
    let id = c.json()["id"].as_str().unwrap().to_string();
    let tmp = s.stop();
    // The old appliance (store writer, actors, readers) is closed; reopen the same directory.
    let s = Server::start_in(tmp, Config::defaults());
    let r = s.get(&format!("/fhir/Patient/{id}"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["name"][0]["family"], "Durable");
}

fn patient(family: &str, nid: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": "urn:rw:nid", "value": nid}],
        "name": [{"family": family, "given": ["Aline"]}],
        "gender": "female",
        "birthDate": "1990-01-01"
    })
}

#[test]
fn metadata_and_authentication() {
    let s = Server::start();
    // Readiness includes the store.
    assert_eq!(s.req("GET", "/readyz", &[], b"").status, 200);
    let m = s.req("GET", "/fhir/metadata", &[], b"");
    assert_eq!(m.status, 200);
    let cs = m.json();
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(cs["fhirVersion"], "4.0.1");
    let types: Vec<&str> = cs["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["type"].as_str().unwrap())
        .collect();
    assert!(types.contains(&"Patient") && types.contains(&"Observation"));
    assert!(!types.contains(&"Bundle"));
    let smart = s.req("GET", "/fhir/.well-known/smart-configuration", &[], b"");
    assert_eq!(smart.status, 200);
    // URLs come from the server's own address (no public_base_url configured), never Host.
    assert_eq!(
        smart.json()["token_endpoint"],
        format!("http://{}/fhir/token", s.http.addr)
    );
    // No token, a bad token: 401 with WWW-Authenticate.
    for h in [vec![], vec![("Authorization", "Bearer nope")]] {
        let r = s.req("GET", "/fhir/Patient", &h, b"");
        assert_eq!(r.status, 401);
        assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
        assert!(["missing_token", "invalid_token"].contains(&r.code().as_str()));
    }
    // A read-only token may search but not create: 403.
    let r = s.req(
        "GET",
        "/fhir/Patient",
        &[("Authorization", s.read.as_str())],
        b"",
    );
    assert_eq!(r.status, 200);
    let body = serde_json::to_vec(&patient("Uwase", "N1")).unwrap();
    let r = s.req(
        "POST",
        "/fhir/Patient",
        &[
            ("Authorization", s.read.as_str()),
            ("Content-Type", "application/fhir+json"),
        ],
        &body,
    );
    assert_eq!(r.status, 403);
    assert_eq!(r.code(), "insufficient-scope");
    // Only JSON is served.
    let r = s.req(
        "GET",
        "/fhir/metadata",
        &[("Accept", "application/fhir+xml")],
        b"",
    );
    assert_eq!(r.status, 406);
    assert_eq!(r.code(), "not-acceptable");
    let r = s.req(
        "GET",
        "/fhir/metadata",
        &[("Accept", "application/fhir+json;q=0.9, */*;q=0.1")],
        b"",
    );
    assert_eq!(r.status, 200);
    // Method not allowed, with Allow.
    let r = s.req("DELETE", "/fhir/metadata", &[], b"");
    assert_eq!(r.status, 405);
    assert!(r.header("allow").is_some());
    // Metrics report the store.
    let mt = s.req("GET", "/metrics", &[], b"");
    assert!(String::from_utf8_lossy(&mt.body).contains("hexa_store_commits_total"));
    assert!(String::from_utf8_lossy(&mt.body).contains("hexa_store_commit_waits_total"));
}

#[test]
fn crud_history_and_preconditions() {
    let s = Server::start();
    let c = s.send("POST", "/fhir/Patient", &patient("Uwase", "N1"), &[]);
    assert_eq!(c.status, 201, "{}", String::from_utf8_lossy(&c.body));
    assert_eq!(c.header("etag").unwrap(), "W/\"1\"");
    let loc = c.header("location").unwrap();
    assert!(
        loc.starts_with(&format!("http://{}/fhir/Patient/", s.http.addr))
            && loc.ends_with("/_history/1")
    );
    let created = c.json();
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["meta"]["versionId"], "1");

    // Read and vread.
    let r = s.get(&format!("/fhir/Patient/{id}"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["name"][0]["family"], "Uwase");
    assert_eq!(r.header("etag").unwrap(), "W/\"1\"");
    assert!(r.header("last-modified").unwrap().ends_with("GMT"));
    assert_eq!(s.get(&format!("/fhir/Patient/{id}/_history/1")).status, 200);
    assert_eq!(s.get(&format!("/fhir/Patient/{id}/_history/9")).status, 404);

    // Conditional create finds the existing one (200, same id).
    let cc = s.send(
        "POST",
        "/fhir/Patient",
        &patient("Other", "N1"),
        &[("If-None-Exist", "identifier=urn:rw:nid|N1")],
    );
    assert_eq!(cc.status, 200);
    assert_eq!(cc.json()["id"], id.as_str());

    // Several matches: 412 multiple-matches, nothing created.
    s.send("POST", "/fhir/Patient", &patient("Twin", "DUP"), &[]);
    s.send("POST", "/fhir/Patient", &patient("Twin", "DUP"), &[]);
    let r = s.send(
        "POST",
        "/fhir/Patient",
        &patient("Twin", "DUP"),
        &[("If-None-Exist", "identifier=urn:rw:nid|DUP")],
    );
    assert_eq!(r.status, 412);
    assert_eq!(r.code(), "multiple-matches");
    assert_eq!(s.get("/fhir/Patient?family=Twin").json()["total"], 2);

    // Update with the right If-Match; then a stale one is 412.
    let mut p = patient("Uwase-Mukamana", "N1");
    p["id"] = json!(id);
    let u = s.send(
        "PUT",
        &format!("/fhir/Patient/{id}"),
        &p,
        &[("If-Match", "W/\"1\"")],
    );
    assert_eq!(u.status, 200, "{}", String::from_utf8_lossy(&u.body));
    assert_eq!(u.header("etag").unwrap(), "W/\"2\"");
    let stale = s.send(
        "PUT",
        &format!("/fhir/Patient/{id}"),
        &p,
        &[("If-Match", "W/\"1\"")],
    );
    assert_eq!(stale.status, 412);
    assert_eq!(stale.code(), "conflict");
    // Prefer: return=minimal gives no body.
    let min = s.send(
        "PUT",
        &format!("/fhir/Patient/{id}"),
        &p,
        &[("Prefer", "return=minimal")],
    );
    assert_eq!(min.status, 200);
    assert!(min.body.is_empty());
    assert_eq!(min.header("etag").unwrap(), "W/\"3\"");
    // Id in the body must match the URL.
    let mut wrong = p.clone();
    wrong["id"] = json!("other-id");
    let r = s.send("PUT", &format!("/fhir/Patient/{id}"), &wrong, &[]);
    assert_eq!(r.status, 400);
    assert_eq!(r.code(), "id-mismatch");

    // Instance history (newest first) and type history.
    let h = s.get(&format!("/fhir/Patient/{id}/_history"));
    assert_eq!(h.status, 200);
    let hb = h.json();
    assert_eq!(hb["type"], "history");
    assert_eq!(hb["total"], 3);
    assert_eq!(hb["entry"][0]["resource"]["meta"]["versionId"], "3");
    let th = s.get("/fhir/Patient/_history?_count=2");
    assert_eq!(th.status, 200);
    assert_eq!(th.json()["type"], "history");
    assert_eq!(th.json()["entry"].as_array().unwrap().len(), 2);
    assert!(
        th.json()["link"][0]["url"]
            .as_str()
            .unwrap()
            .contains("_offset=2")
    );

    // X-Purpose-Of-Use overrides TREAT and is recorded in the write's AuditEvent.
    let mut p4 = p.clone();
    p4["gender"] = json!("other");
    let u = s.send(
        "PUT",
        &format!("/fhir/Patient/{id}"),
        &p4,
        &[("X-Purpose-Of-Use", "ETREAT")],
    );
    assert_eq!(u.status, 200);
    let audits = s.get(&format!("/fhir/AuditEvent?entity=Patient/{id}&_count=100"));
    assert_eq!(
        audits.status,
        200,
        "{}",
        String::from_utf8_lossy(&audits.body)
    );
    let text = audits.json().to_string();
    assert!(
        text.contains("\"ETREAT\"") && text.contains("\"TREAT\""),
        "{text}"
    );
    assert!(text.contains("emr-all"));
    let r = s.send(
        "PUT",
        &format!("/fhir/Patient/{id}"),
        &p4,
        &[("X-Purpose-Of-Use", "treat me; DROP")],
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.code(), "bad-purpose-of-use");

    // Delete, then read is 410; vread of an old version still works.
    let d = s.req(
        "DELETE",
        &format!("/fhir/Patient/{id}"),
        &[("Authorization", s.all.as_str())],
        b"",
    );
    assert_eq!(d.status, 204);
    let g = s.get(&format!("/fhir/Patient/{id}"));
    assert_eq!(g.status, 410);
    assert_eq!(g.code(), "deleted");
    assert_eq!(s.get(&format!("/fhir/Patient/{id}/_history/2")).status, 200);
    assert_eq!(s.get("/fhir/Patient/no-such-id").status, 404);
}

#[test]
fn bad_requests_are_operation_outcomes() {
    let mut cfg = Config::defaults();
    cfg.server.max_body_bytes = 4096;
    let s = Server::start_with(cfg);
    // Unknown type: 404.
    let r = s.get("/fhir/Spaceship");
    assert_eq!(r.status, 404);
    assert_eq!(r.code(), "unknown-resource-type");
    // Wrong type in the body: 400 naming the problem.
    let r = s.send("POST", "/fhir/Observation", &patient("X", "N2"), &[]);
    assert_eq!(r.status, 400);
    assert_eq!(r.code(), "wrong-resource-type");
    assert!(
        r.json()["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("Patient")
    );
    // Not JSON: 400.
    let r = s.req(
        "POST",
        "/fhir/Patient",
        &[
            ("Authorization", s.all.as_str()),
            ("Content-Type", "application/fhir+json"),
        ],
        b"{not json",
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.code(), "bad-json");
    // JSON that is not a resource.
    let r = s.send("POST", "/fhir/Patient", &json!([1, 2]), &[]);
    assert_eq!(r.status, 400);
    assert_eq!(r.code(), "not-a-resource");
    // Unsupported media type: 415.
    let r = s.req(
        "POST",
        "/fhir/Patient",
        &[
            ("Authorization", s.all.as_str()),
            ("Content-Type", "application/xml"),
        ],
        b"<Patient/>",
    );
    assert_eq!(r.status, 415);
    assert_eq!(r.code(), "unsupported-media-type");
    // Too large: 413.
    let big = vec![b' '; 8192];
    let r = s.req(
        "POST",
        "/fhir/Patient",
        &[
            ("Authorization", s.all.as_str()),
            ("Content-Type", "application/fhir+json"),
        ],
        &big,
    );
    assert_eq!(r.status, 413);
    assert_eq!(r.code(), "body-too-large");
    // Content the store refuses (AuditEvents are written by the appliance only): 422.
    let r = s.send(
        "POST",
        "/fhir/AuditEvent",
        &json!({
            "resourceType": "AuditEvent",
            "type": {"code": "rest"},
            "recorded": "2026-01-01T00:00:00Z",
            "agent": [{"requestor": true}],
            "source": {"observer": {"display": "emr"}}
        }),
        &[],
    );
    assert_eq!(r.status, 422, "{}", String::from_utf8_lossy(&r.body));
    // Unsupported search parameter and _include of a non-reference parameter: 400.
    assert_eq!(s.get("/fhir/Patient?shoe-size=42").status, 400);
    let r = s.get("/fhir/Patient?_include=Patient:gender");
    assert_eq!(r.status, 400);
    assert_eq!(r.code(), "unsupported-include");
    let r = s.get("/fhir/Patient?_elements=name");
    assert_eq!(r.status, 400);
    assert_eq!(r.code(), "unsupported-search");
    // Bad If-Match syntax.
    let r = s.send(
        "PUT",
        "/fhir/Patient/abc",
        &patient("X", "N3"),
        &[("If-Match", "yesterday")],
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.code(), "bad-if-match");
}

#[test]
fn search_paging_get_and_post() {
    let s = Server::start();
    for i in 0..7 {
        let r = s.send(
            "POST",
            "/fhir/Patient",
            &patient("Habimana", &format!("S{i}")),
            &[],
        );
        assert_eq!(r.status, 201);
    }
    s.send("POST", "/fhir/Patient", &patient("Other", "Z9"), &[]);
    // The Bundles of a search, page by page, following `next`.
    let origin = format!("http://{}", s.http.addr);
    let follow = |first: &str| -> Vec<Value> {
        let mut url = first.to_string();
        let mut bundles = Vec::new();
        loop {
            let r = s.get(&url);
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            let b = r.json();
            assert_eq!(b["type"], "searchset");
            let next = b["link"]
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["relation"] == "next")
                .map(|l| l["url"].as_str().unwrap().to_string());
            bundles.push(b);
            match next {
                Some(n) => url = n.strip_prefix(&origin).unwrap().to_string(),
                None => return bundles,
            }
        }
    };
    let ids_of = |bundles: &[Value]| -> Vec<String> {
        let entries = bundles.iter().flat_map(|b| b["entry"].as_array().unwrap());
        entries
            .map(|e| {
                assert_eq!(e["search"]["mode"], "match");
                e["resource"]["id"].as_str().unwrap().to_string()
            })
            .collect()
    };
    // Page through family=Habimana three at a time.
    let counted = follow("/fhir/Patient?family=Habimana&_count=3");
    assert_eq!(counted.len(), 3);
    assert!(counted.iter().all(|b| b["total"] == 7));
    let mut seen = ids_of(&counted);
    let mut in_id_order = seen.clone();
    in_id_order.sort();
    assert_eq!(seen, in_id_order, "the default order is by id");
    // `_total=none`: the same pages in the same order, and the links keep it. A search
    // stops once it has its page and one hit past it, and then gives no total: the first
    // page (3 + 1 of 7). The second needs 3 + 3 + 1, all 7, so it counted them all.
    let uncounted = follow("/fhir/Patient?family=Habimana&_count=3&_total=none");
    assert_eq!(ids_of(&uncounted), seen);
    let totals: Vec<Option<Value>> = uncounted.iter().map(|b| b.get("total").cloned()).collect();
    assert_eq!(totals, [None, Some(json!(7)), Some(json!(7))]);
    for b in &uncounted[..2] {
        let links = b["link"].as_array().unwrap();
        let next = links.iter().find(|l| l["relation"] == "next").unwrap();
        assert!(
            next["url"].as_str().unwrap().contains("_total=none"),
            "{next}"
        );
    }
    seen.dedup();
    assert_eq!(seen.len(), 7);
    // An unknown `_total` is a 400 with an OperationOutcome.
    let r = s.get("/fhir/Patient?family=Habimana&_total=some");
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["resourceType"], "OperationOutcome");
    // POST _search with a form body gives the same hits.
    let r = s.req(
        "POST",
        "/fhir/Patient/_search",
        &[
            ("Authorization", s.all.as_str()),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        b"identifier=urn%3Arw%3Anid%7CS3",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["total"], 1);
    // _search needs a form body.
    let r = s.send("POST", "/fhir/Patient/_search", &json!({}), &[]);
    assert_eq!(r.status, 415);
    // _summary=count: total only.
    let b = s.get("/fhir/Patient?family=Habimana&_summary=count").json();
    assert_eq!(b["total"], 7);
    assert!(b.get("entry").is_none());
}

#[test]
fn transaction_is_atomic_and_batch_is_not() {
    let s = Server::start();
    let tx = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:6c6b6a3e-1111-4b5c-9d4e-000000000001",
                "resource": patient("Tx", "T1"),
                "request": {"method": "POST", "url": "Patient"}
            },
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                    "subject": {"reference": "urn:uuid:6c6b6a3e-1111-4b5c-9d4e-000000000001"}
                },
                "request": {"method": "POST", "url": "Observation"}
            }
        ]
    });
    let r = s.send("POST", "/fhir", &tx, &[]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let b = r.json();
    assert_eq!(b["type"], "transaction-response");
    assert!(
        b["entry"][0]["response"]["status"]
            .as_str()
            .unwrap()
            .starts_with("201")
    );
    let pid = b["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        b["entry"][1]["resource"]["subject"]["reference"],
        format!("Patient/{pid}")
    );

    // A transaction whose second entry fails (stale ifMatch) writes nothing: 412.
    let mut p = patient("Tx-changed", "T1");
    p["id"] = json!(pid);
    let bad = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": patient("Atomic", "T2"), "request": {"method": "POST", "url": "Patient"}},
            {"resource": p, "request": {"method": "PUT", "url": format!("Patient/{pid}"), "ifMatch": "W/\"7\""}}
        ]
    });
    let r = s.send("POST", "/fhir", &bad, &[]);
    assert_eq!(r.status, 412, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.code(), "conflict");
    assert_eq!(s.get("/fhir/Patient?family=Atomic").json()["total"], 0);
    assert_eq!(
        s.get(&format!("/fhir/Patient/{pid}"))
            .header("etag")
            .unwrap(),
        "W/\"1\""
    );

    // A batch: independent entries, each with its own status.
    let batch = json!({
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": patient("Batch", "B1"), "request": {"method": "POST", "url": "Patient"}},
            {"request": {"method": "GET", "url": format!("Patient/{pid}")}},
            {"request": {"method": "GET", "url": "Patient/missing"}},
            {"request": {"method": "GET", "url": "Patient?family=Tx"}},
            {"resource": patient("Wrong", "B2"), "request": {"method": "POST", "url": "Observation"}}
        ]
    });
    let r = s.send("POST", "/fhir", &batch, &[]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let b = r.json();
    assert_eq!(b["type"], "batch-response");
    let st: Vec<&str> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["response"]["status"].as_str().unwrap()[..3])
        .collect();
    assert_eq!(st, ["201", "200", "404", "200", "400"]);
    assert_eq!(b["entry"][3]["resource"]["total"], 1);
    assert_eq!(s.get("/fhir/Patient?family=Batch").json()["total"], 1);

    // Not a transaction or batch.
    let r = s.send(
        "POST",
        "/fhir",
        &json!({"resourceType": "Bundle", "type": "collection"}),
        &[],
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.code(), "bad-bundle-type");
}
