//! Search over blind indexes, conditional create, and the audit log: every write, read and
//! search leaves an AuditEvent with a verifiable inclusion proof and signed checkpoints.

mod common;

use common::*;
use hexa_actors::store::search::SearchQuery;
use hexa_actors::store::{AccessContext, StoreError, engine::Engine};
use hexa_crypto::checkpoint::{Checkpoint, NoteVerifier, open_note};
use hexa_crypto::merkle;
use serde_json::{Value, json};

#[test]
fn patient_search_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    let c = ctx();
    let mk = |v: Value| {
        e.create(&c, v, None, None)
            .unwrap()
            .wait_blocking()
            .unwrap()
            .record
            .id
    };
    let a = mk(patient("Uwimana", "Aimée", "1990-05-17", "111"));
    let mut pb = patient("Uwase", "Jean-Pierre", "1985-12-01", "222");
    pb["gender"] = json!("male");
    pb["telecom"] = json!([{"system": "phone", "value": "+250 788 000 111"}]);
    pb["address"] = json!([{"city": "Huye", "district": "Huye"}]);
    let b = mk(pb);
    let cc = mk(patient(
        "Nyirahabimana-Mukeshimana",
        "Claire",
        "1990-06-02",
        "333",
    ));
    let mut sorted = vec![a.clone(), b.clone()];
    sorted.sort();

    assert_eq!(ids(&e, "Patient", &[("family", "uw")]), sorted);
    assert_eq!(
        ids(&e, "Patient", &[("family", "UWIMANA")]),
        vec![a.clone()]
    );
    assert_eq!(ids(&e, "Patient", &[("given", "aimee")]), vec![a.clone()]);
    assert_eq!(ids(&e, "Patient", &[("given", "pierre")]), vec![b.clone()]);
    assert_eq!(ids(&e, "Patient", &[("name", "jean")]), vec![b.clone()]);
    // `name` covers family, given and text (indexed under family/given/name).
    assert_eq!(ids(&e, "Patient", &[("name", "uw")]), sorted);
    assert_eq!(ids(&e, "Patient", &[("name", "aimee")]), vec![a.clone()]);
    assert_eq!(
        ids(&e, "Patient", &[("name", "mukeshimana")]),
        vec![cc.clone()]
    );
    assert_eq!(
        ids(&e, "Patient", &[("name", "claire"), ("family", "nyira")]),
        vec![cc.clone()]
    );
    assert_eq!(
        ids(&e, "Patient", &[("name:exact", "Uwase")]),
        vec![b.clone()]
    );
    assert!(ids(&e, "Patient", &[("name:exact", "uwase")]).is_empty());
    assert_eq!(
        ids(&e, "Patient", &[("name:contains", "habim")]),
        vec![cc.clone()]
    );
    // Longer than the indexed prefix: index narrows, post-filter decides.
    assert_eq!(
        ids(&e, "Patient", &[("family", "nyirahabimana mukesh")]),
        vec![cc.clone()]
    );
    assert!(ids(&e, "Patient", &[("family", "nyirahabimana mukeshX")]).is_empty());
    assert_eq!(
        ids(&e, "Patient", &[("identifier", "urn:rw:nid|222")]),
        vec![b.clone()]
    );
    assert_eq!(
        ids(&e, "Patient", &[("identifier", "333")]),
        vec![cc.clone()]
    );
    assert!(ids(&e, "Patient", &[("identifier", "other|333")]).is_empty());
    assert_eq!(ids(&e, "Patient", &[("gender", "male")]), vec![b.clone()]);
    assert_eq!(
        ids(&e, "Patient", &[("telecom", "+250788000111")]),
        vec![b.clone()]
    );
    assert_eq!(
        ids(&e, "Patient", &[("address-district", "huye")]),
        vec![b.clone()]
    );
    // `address` covers its city and district (indexed under address-city/-district).
    assert_eq!(
        ids(&e, "Patient", &[("address", "huye")]),
        ids(&e, "Patient", &[("address-district", "huye")])
    );
    assert!(!ids(&e, "Patient", &[("address", "huy")]).is_empty());
    assert_eq!(
        ids(
            &e,
            "Patient",
            &[("address-city", "kig"), ("given", "claire")]
        ),
        vec![cc.clone()]
    );
    assert_eq!(ids(&e, "Patient", &[("birthdate", "1990")]).len(), 2);
    assert_eq!(
        ids(&e, "Patient", &[("birthdate", "1990-05")]),
        vec![a.clone()]
    );
    assert_eq!(
        ids(&e, "Patient", &[("birthdate", "1990-05-17")]),
        vec![a.clone()]
    );
    assert_eq!(
        ids(&e, "Patient", &[("birthdate", "lt1990-01-01")]),
        vec![b.clone()]
    );
    assert_eq!(
        ids(
            &e,
            "Patient",
            &[("birthdate", "ge1990-06-01"), ("family", "ny")]
        ),
        vec![cc.clone()]
    );
    assert_eq!(ids(&e, "Patient", &[("_id", &format!("{a},{b}"))]), sorted);
    assert_eq!(ids(&e, "Patient", &[("gender", "male,female")]).len(), 3);

    // Paging and sort.
    let q =
        SearchQuery::from_pairs("Patient", &[("_count", "2"), ("_sort", "-birthdate")]).unwrap();
    let p = e.store.search(&q).unwrap();
    assert_eq!(p.total, 3);
    assert_eq!(
        p.items.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        vec![cc.clone(), a.clone()]
    );
    let q = SearchQuery::from_pairs(
        "Patient",
        &[("_count", "2"), ("_offset", "2"), ("_sort", "-birthdate")],
    )
    .unwrap();
    assert_eq!(e.store.search(&q).unwrap().items[0].id, b);

    // Updates move index entries; deletes remove them.
    let mut upd = e.store.read("Patient", &a).unwrap().resource;
    upd["name"] = json!([{"family": "Ingabire", "given": ["Aimée"]}]);
    e.update(&c, "Patient", &a, upd, None, None)
        .unwrap()
        .wait_blocking()
        .unwrap();
    assert_eq!(ids(&e, "Patient", &[("family", "uw")]), vec![b.clone()]);
    assert_eq!(ids(&e, "Patient", &[("family", "ingab")]), vec![a.clone()]);
    e.delete(&c, "Patient", &b)
        .unwrap()
        .wait_blocking()
        .unwrap();
    assert!(ids(&e, "Patient", &[("family", "uw")]).is_empty());
    assert_eq!(ids(&e, "Patient", &[]).len(), 2);

    assert!(matches!(
        SearchQuery::from_pairs("Patient", &[("hair-colour", "x")]),
        Err(StoreError::UnsupportedSearch(_))
    ));
    let pt = json!({"resourceType": "Patient", "name": [{"text": "Dr Olivier Twagira"}]});
    let t = mk(pt);
    assert_eq!(ids(&e, "Patient", &[("name", "twag")]), vec![t.clone()]);
    assert!(ids(&e, "Patient", &[("family", "twag")]).is_empty());
}

/// `_total=none`: a search in id order stops once it has its page and one hit past it
/// (`exact` false, `total` that count); the pages are those of the counted search; deleted
/// records, `_lastUpdated` and post-filters still apply; another order counts everything.
#[test]
fn total_none_stops_after_the_page() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    let c = ctx();
    let mut made: Vec<String> = (0..9)
        .map(|i| created_id(&e, &c, patient("Totalno", &format!("G{i}"), "1990", "9")))
        .collect();
    created_id(&e, &c, patient("Elsewhere", "X", "1990", "9"));
    // Two of them deleted: candidates the search must skip.
    for gone in [made.remove(1), made.remove(4)] {
        e.delete(&c, "Patient", &gone)
            .unwrap()
            .wait_blocking()
            .unwrap();
    }
    made.sort();
    let search = |pairs: &[(&str, &str)]| {
        let p = e
            .store
            .search(&SearchQuery::from_pairs("Patient", pairs).unwrap())
            .unwrap();
        let ids: Vec<String> = p.items.iter().map(|r| r.id.clone()).collect();
        (p.total, p.exact, ids)
    };
    let family = ("family", "totalno");
    for offset in 0..8 {
        let off = offset.to_string();
        let page = [family, ("_count", "2"), ("_offset", &off)];
        let (total, exact, counted) = search(&page);
        assert_eq!((total, exact), (7, true));
        assert_eq!(counted, made[offset.min(7)..(offset + 2).min(7)]);
        let (total, exact, ids) = search(&[page[0], page[1], page[2], ("_total", "none")]);
        assert_eq!(ids, counted, "offset {offset}");
        if offset + 3 < 7 {
            // Stopped at the page and one past it.
            assert_eq!((total, exact), (offset + 3, false), "offset {offset}");
        } else {
            // The page and one past it take every live Patient; the last candidate is
            // live (the deleted ones were created second and sixth), so the search ran
            // to its end and counted.
            assert_eq!((total, exact), (7, true), "offset {offset}");
        }
    }
    // No indexable clause: the type's scan stops too (8 Patients live, 7 + 1).
    let (total, exact, ids) = search(&[("_count", "1"), ("_total", "none")]);
    assert_eq!((total, exact, ids.len()), (2, false, 1));
    // `_lastUpdated` still applies.
    let since = [family, ("_count", "2"), ("_lastUpdated", "ge2000-01-01")];
    let (_, _, ids) = search(&[since[0], since[1], since[2], ("_total", "none")]);
    assert_eq!(ids, made[..2]);
    let before = [family, ("_lastUpdated", "lt2000-01-01"), ("_total", "none")];
    assert_eq!(search(&before), (0, true, vec![]));
    // A post-filter (`:contains` re-checks each record) still applies.
    let (_, _, ids) = search(&[("given:contains", "g8"), ("_total", "none")]);
    assert_eq!(ids.len(), 1);
    // Another order must see every hit: it counts them all.
    let sorted = [family, ("_count", "2"), ("_sort", "-_lastUpdated")];
    let (total, exact, _) = search(&[sorted[0], sorted[1], sorted[2], ("_total", "none")]);
    assert_eq!((total, exact), (7, true));
    assert!(matches!(
        SearchQuery::from_pairs("Patient", &[("_total", "some")]),
        Err(StoreError::Invalid(_))
    ));
    close(e);
}

#[test]
fn clinical_and_registry_search() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    let c = ctx();
    let mk = |v: Value| {
        e.create(&c, v, None, None)
            .unwrap()
            .wait_blocking()
            .unwrap()
            .record
            .id
    };
    let o1 = mk(observation("p1", "8867-4", "2024-01-10T08:00:00Z"));
    let o2 = mk(observation("p1", "8310-5", "2024-02-10"));
    let o3 = mk(observation("p2", "8867-4", "2024-01-11"));
    let mut enc = json!({"resourceType": "Encounter", "status": "finished", "subject": {"reference": "Patient/p1"},
        "period": {"start": "2024-01-10", "end": "2024-01-12"}});
    enc["class"] = json!({"code": "AMB"});
    let en = mk(enc);
    let mut o4 = observation("p1", "8867-4", "2024-03-01");
    o4["encounter"] = json!({"reference": format!("Encounter/{en}")});
    let o4 = mk(o4);

    let mut v = vec![o1.clone(), o2.clone(), o4.clone()];
    v.sort();
    assert_eq!(ids(&e, "Observation", &[("patient", "p1")]), v);
    assert_eq!(ids(&e, "Observation", &[("subject", "Patient/p1")]), v);
    // A bare id on an unrestricted reference: the index holds only `r:<Type>/<id>` terms,
    // and the search looks the id up under every stored type.
    assert_eq!(ids(&e, "Observation", &[("subject", "p1")]), v);
    let mut at_loc = observation("p1", "0000-0", "2023-06-01");
    at_loc["subject"] = json!({"reference": "Location/ward-3"});
    at_loc["status"] = json!("preliminary");
    let ol = mk(at_loc);
    assert_eq!(
        ids(&e, "Observation", &[("subject", "ward-3")]),
        vec![ol.clone()]
    );
    let mut all = vec![o1.clone(), o2.clone(), o3.clone(), o4.clone(), ol.clone()];
    all.sort();
    assert_eq!(ids(&e, "Observation", &[("subject", "p1,p2,ward-3")]), all);
    assert!(ids(&e, "Observation", &[("subject", "p3")]).is_empty());
    assert!(ids(&e, "Observation", &[("patient", "ward-3")]).is_empty());
    let mut v = vec![o1.clone(), o4.clone()];
    v.sort();
    assert_eq!(
        ids(
            &e,
            "Observation",
            &[("patient", "p1"), ("code", "http://loinc.org|8867-4")]
        ),
        v
    );
    assert_eq!(
        ids(
            &e,
            "Observation",
            &[("code", "8867-4"), ("date", "2024-01")]
        )
        .len(),
        2
    );
    assert_eq!(
        ids(
            &e,
            "Observation",
            &[("patient", "Patient/p1"), ("date", "ge2024-02-01")]
        )
        .len(),
        2
    );
    assert_eq!(
        ids(
            &e,
            "Observation",
            &[("date", "ge2024-01-11"), ("date", "le2024-02-10")]
        ),
        {
            let mut v = vec![o2.clone(), o3.clone()];
            v.sort();
            v
        }
    );
    assert_eq!(
        ids(&e, "Observation", &[("encounter", &en)]),
        vec![o4.clone()]
    );
    assert_eq!(ids(&e, "Observation", &[("status", "final")]).len(), 4);
    assert_eq!(
        ids(&e, "Encounter", &[("date", "2024-01-11")]),
        Vec::<String>::new()
    ); // period not within the day
    assert_eq!(
        ids(&e, "Encounter", &[("date", "2024-01")]),
        vec![en.clone()]
    );
    assert_eq!(
        ids(&e, "Encounter", &[("date", "ge2024-01-12")]),
        vec![en.clone()]
    );

    let org = mk(
        json!({"resourceType": "Organization", "name": "CHU Kigali", "identifier": [{"system": "urn:fac", "value": "F1"}]}),
    );
    let loc = mk(
        json!({"resourceType": "Location", "name": "Maternité", "partOf": {"reference": "Location/root"},
        "managingOrganization": {"reference": format!("Organization/{org}")},
        "type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "HOSP"}]}]}),
    );
    let pr = mk(
        json!({"resourceType": "Practitioner", "name": [{"family": "Mugabo", "given": ["Eric"]}], "identifier": [{"value": "MD-9"}]}),
    );
    // Consents are written only by the ceremonies (the appliance's own context); the
    // system context of facility fac1 makes fac1 their author, so fac1's client finds them.
    let cons = e
        .create(
            &AccessContext::system("fac1"),
            json!({"resourceType": "Consent", "status": "active", "patient": {"reference": "Patient/p1"},
            "provision": {"actor": [{"reference": {"reference": format!("Practitioner/{pr}")}}]}}),
            None,
            None,
        )
        .unwrap()
        .wait_blocking()
        .unwrap()
        .record
        .id;
    assert_eq!(
        ids(&e, "Organization", &[("name", "chu")]),
        vec![org.clone()]
    );
    assert_eq!(
        ids(&e, "Organization", &[("identifier", "urn:fac|F1")]),
        vec![org]
    );
    assert_eq!(
        ids(
            &e,
            "Location",
            &[("name", "maternite"), ("partof", "root"), ("type", "HOSP")]
        ),
        vec![loc]
    );
    assert_eq!(
        ids(
            &e,
            "Practitioner",
            &[("name", "eric"), ("identifier", "MD-9")]
        ),
        vec![pr.clone()]
    );
    assert_eq!(
        ids(
            &e,
            "Consent",
            &[
                ("patient", "p1"),
                ("status", "active"),
                ("actor", &format!("Practitioner/{pr}"))
            ]
        ),
        vec![cons]
    );

    // AuditEvent search: who touched patient p1's record.
    let q = SearchQuery::from_pairs("AuditEvent", &[("patient", "p1")]).unwrap();
    let page = e.store.search(&q).unwrap();
    assert!(page.total >= 4, "{}", page.total);
    for r in &page.items {
        let refs: Vec<&str> = r.resource["entity"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|x| x["what"]["reference"].as_str())
            .collect();
        assert!(refs.contains(&"Patient/p1"), "{refs:?}");
    }
    let q = SearchQuery::from_pairs(
        "AuditEvent",
        &[("agent", "Practitioner/dr-a"), ("date", "ge2020-01-01")],
    )
    .unwrap();
    assert!(e.store.search(&q).unwrap().total > 5);
}

#[test]
fn conditional_create() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    let c = ctx();
    let q = SearchQuery::from_pairs("Patient", &[("identifier", "urn:rw:nid|777")]).unwrap();
    let first = e
        .create(
            &c,
            patient("Cond", "A", "2000", "777"),
            None,
            Some(q.clone()),
        )
        .unwrap()
        .wait_blocking()
        .unwrap();
    assert!(first.created);
    let second = e
        .create(
            &c,
            patient("Cond", "B", "2000", "777"),
            None,
            Some(q.clone()),
        )
        .unwrap()
        .wait_blocking()
        .unwrap();
    assert!(!second.created);
    assert_eq!(second.record.id, first.record.id);
    // Two concurrent conditional creates in one group commit: exactly one is created.
    let p1 = e
        .create(
            &c,
            patient("Cond", "C", "2000", "888"),
            None,
            Some(SearchQuery::from_pairs("Patient", &[("identifier", "888")]).unwrap()),
        )
        .unwrap();
    let p2 = e
        .create(
            &c,
            patient("Cond", "D", "2000", "888"),
            None,
            Some(SearchQuery::from_pairs("Patient", &[("identifier", "888")]).unwrap()),
        )
        .unwrap();
    let (r1, r2) = (p1.wait_blocking().unwrap(), p2.wait_blocking().unwrap());
    assert_eq!(r1.record.id, r2.record.id);
    assert!(r1.created ^ r2.created);
    let multi = SearchQuery::from_pairs("Patient", &[("family", "cond")]).unwrap();
    assert!(matches!(
        e.create(&c, patient("Cond", "E", "2000", "999"), None, Some(multi))
            .unwrap()
            .wait_blocking(),
        Err(StoreError::MultipleMatches(2))
    ));
    // Paging and `_total` in the criteria change nothing: still two matches, and one.
    let paged = [("_count", "0"), ("_offset", "5"), ("_total", "none")];
    let criteria = |pairs: &[(&'static str, &'static str)]| {
        let all: Vec<(&str, &str)> = pairs.iter().chain(&paged).copied().collect();
        Some(SearchQuery::from_pairs("Patient", &all).unwrap())
    };
    let before = ids(&e, "Patient", &[("family", "cond")]);
    assert!(matches!(
        e.create(
            &c,
            patient("Cond", "F", "2000", "999"),
            None,
            criteria(&[("family", "cond")])
        )
        .unwrap()
        .wait_blocking(),
        Err(StoreError::MultipleMatches(2))
    ));
    let again = e
        .create(
            &c,
            patient("Cond", "G", "2000", "777"),
            None,
            criteria(&[("identifier", "urn:rw:nid|777")]),
        )
        .unwrap()
        .wait_blocking()
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.record.id, first.record.id);
    assert_eq!(ids(&e, "Patient", &[("family", "cond")]), before);
}

/// Verifies that entry `index` is in the log under the latest signed checkpoint.
fn assert_included(e: &Engine, index: u64, expect_action: &str) -> Value {
    let note = e
        .checkpoint()
        .unwrap()
        .blocking_recv()
        .unwrap()
        .unwrap()
        .expect("a checkpoint");
    let verifier = NoteVerifier::new(e.store.origin(), e.store.node_public().clone());
    let (body, names) = open_note(&note, &[verifier]).unwrap();
    assert_eq!(names, vec![e.store.origin().to_string()]);
    let cp = Checkpoint::parse_body(&body).unwrap();
    assert!(index < cp.size);
    let entry = e.store.audit_entry(index).unwrap();
    assert_eq!(entry.leaf, merkle::leaf_hash(&entry.bytes));
    let proof = e.store.audit_inclusion_proof(index, cp.size).unwrap();
    merkle::verify_inclusion(&entry.leaf, index, cp.size, &proof, &cp.root).unwrap();
    assert_eq!(e.store.audit_root(cp.size).unwrap(), cp.root);
    let ev: Value = serde_json::from_slice(&entry.bytes).unwrap();
    assert_eq!(ev["resourceType"], "AuditEvent");
    // The AuditEvent is readable as a FHIR resource by its id, with the exact logged bytes.
    let id = ev["id"].as_str().unwrap();
    assert_eq!(
        e.store.read("AuditEvent", id).unwrap().canonical,
        entry.bytes
    );
    assert_eq!(ev["action"], expect_action);
    assert_eq!(hexa_crypto::jcs::canonicalize(&ev).unwrap(), entry.bytes);
    ev
}

#[test]
fn every_write_read_and_search_is_audited_with_proofs() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    let c = ctx();
    assert_eq!(e.store.audit_size().unwrap(), 0);
    let w = e
        .create(&c, patient("Audit", "Me", "1970", "1"), None, None)
        .unwrap()
        .wait_blocking()
        .unwrap();
    assert_eq!(w.audit_indexes, vec![0]);
    let ev = assert_included(&e, 0, "C");
    assert_eq!(ev["outcome"], "0");
    assert_eq!(ev["purposeOfEvent"][0]["coding"][0]["code"], "TREAT");
    let whos: Vec<String> = ev["agent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["who"].to_string())
        .collect();
    assert!(
        whos.iter().any(|w| w.contains("emr-1"))
            && whos.iter().any(|w| w.contains("Organization/fac1"))
            && whos.iter().any(|w| w.contains("Practitioner/dr-a"))
    );
    assert_eq!(
        ev["entity"][0]["what"]["reference"],
        format!("Patient/{}", w.record.id)
    );

    let before = e.store.audit_size().unwrap();
    e.read(&c, "Patient", &w.record.id)
        .unwrap()
        .wait_blocking()
        .unwrap();
    // The read's AuditEvent was durable before the data came back.
    assert_eq!(e.store.audit_size().unwrap(), before + 1);
    let ev = assert_included(&e, before, "R");
    assert_eq!(ev["subtype"][0]["code"], "read");

    let before = e.store.audit_size().unwrap();
    let q = SearchQuery::from_pairs("Patient", &[("family", "audit")]).unwrap();
    e.search(&c, &q).unwrap().wait_blocking().unwrap();
    let ev = assert_included(&e, before, "E");
    assert_eq!(ev["subtype"][0]["code"], "search-type");
    assert!(
        ev["entity"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x.get("query").is_some())
    );
    assert!(
        ev["entity"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["what"]["reference"] == format!("Patient/{}", w.record.id))
    );

    let before = e.store.audit_size().unwrap();
    e.update(
        &c,
        "Patient",
        &w.record.id,
        patient("Audit", "You", "1970", "1"),
        Some(1),
        None,
    )
    .unwrap()
    .wait_blocking()
    .unwrap();
    assert_included(&e, before, "U");
    let before = e.store.audit_size().unwrap();
    e.delete(&c, "Patient", &w.record.id)
        .unwrap()
        .wait_blocking()
        .unwrap();
    assert_included(&e, before, "D");
    // A failed read is audited too.
    let before = e.store.audit_size().unwrap();
    assert!(
        e.read(&c, "Patient", "missing")
            .unwrap()
            .wait_blocking()
            .is_err()
    );
    let ev = assert_included(&e, before, "R");
    assert_eq!(ev["outcome"], "4");
    // So is a refused create: a resource without a type, and a conditional create whose
    // criteria name another type. Neither stores anything.
    let all_patients = SearchQuery::from_pairs("Patient", &[]).unwrap();
    let patients = e.store.search(&all_patients).unwrap().total;
    let refused = [
        (json!({"name": [{"family": "Untyped"}]}), None),
        (
            patient("Audit", "Other", "1971", "2"),
            Some(SearchQuery::from_pairs("Observation", &[("code", "x")]).unwrap()),
        ),
    ];
    for (resource, if_none_exist) in refused {
        let before = e.store.audit_size().unwrap();
        let err = e
            .create(&c, resource, None, if_none_exist)
            .unwrap()
            .wait_blocking()
            .unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
        let ev = assert_included(&e, before, "C");
        assert_eq!(ev["outcome"], "4");
        assert_eq!(e.store.audit_size().unwrap(), before + 1);
    }
    assert_eq!(e.store.search(&all_patients).unwrap().total, patients);

    // Many entries: checkpoints every 10, consistency between them.
    for i in 0..40 {
        e.create(
            &c,
            observation("px", &format!("c{i}"), "2024-01-01"),
            None,
            None,
        )
        .unwrap()
        .wait_blocking()
        .unwrap();
    }
    let n = e.store.audit_size().unwrap();
    for old in [1, 7, 16, n / 2] {
        let p = e.store.audit_consistency_proof(old, n).unwrap();
        merkle::verify_consistency(
            old,
            n,
            &e.store.audit_root(old).unwrap(),
            &e.store.audit_root(n).unwrap(),
            &p,
        )
        .unwrap();
    }
    // Checkpoints were published automatically (every 10 entries) without being forced.
    let latest = e.store.latest_checkpoint().unwrap().unwrap();
    let (body, _) = open_note(
        &latest,
        &[NoteVerifier::new(
            e.store.origin(),
            e.store.node_public().clone(),
        )],
    )
    .unwrap();
    let cp = Checkpoint::parse_body(&body).unwrap();
    assert!(
        cp.size + 10 >= n && cp.size <= n,
        "latest checkpoint {} of {n}",
        cp.size
    );
    assert_eq!(
        e.store.checkpoint_at(cp.size).unwrap().as_deref(),
        Some(latest.as_str())
    );
    // AuditEvent is readable as a FHIR resource, and tampering with an entry breaks its proof.
    let id3: Value = serde_json::from_slice(&e.store.audit_entry(3).unwrap().bytes).unwrap();
    let r = e
        .read(&c, "AuditEvent", id3["id"].as_str().unwrap())
        .unwrap()
        .wait_blocking()
        .unwrap();
    assert_eq!(r.resource, id3);
    let mut forged = r.canonical.clone();
    let pos = forged.iter().position(|b| *b == b'R').unwrap();
    forged[pos] = b'X';
    let proof = e.store.audit_inclusion_proof(3, n).unwrap();
    assert!(
        merkle::verify_inclusion(
            &merkle::leaf_hash(&forged),
            3,
            n,
            &proof,
            &e.store.audit_root(n).unwrap()
        )
        .is_err()
    );
    assert!(e.store.audit_inclusion_proof(n, n).is_err());
}

/// An update that moves a record to another patient, and a deletion, name the patients of
/// the version they replace in their AuditEvent: the first patient's trail shows who changed
/// what was in their record. The replaced version's patients come from its kept facts (the
/// second update) or from the stored version (the first update, and after reopening).
#[test]
fn a_record_moved_to_another_patient_stays_in_the_first_patients_trail() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = open(dir.path());
    let c = ctx();
    let id = created_id(&e, &c, observation("p1", "8867-4", "2024-01-10"));
    let update = |e: &Engine, patient: &str, version: u64| {
        let mut o = observation(patient, "8867-4", "2024-01-10");
        o["id"] = json!(id);
        let w = e.update(&c, "Observation", &id, o, Some(version), None);
        assert_eq!(
            w.unwrap().wait_blocking().unwrap().record.version,
            version + 1
        );
    };
    // The entities of the AuditEvents that name `patient`.
    let trail = |e: &Engine, patient: &str| -> Vec<String> {
        let mut q = SearchQuery::from_pairs("AuditEvent", &[("patient", patient)]).unwrap();
        q.count = 100;
        let page = e.store.search(&q).unwrap();
        page.items
            .iter()
            .flat_map(|r| r.resource["entity"].as_array().unwrap().clone())
            .filter_map(|x| x["what"]["reference"].as_str().map(str::to_string))
            .collect()
    };
    update(&e, "p2", 1);
    update(&e, "p3", 2);
    close(e);
    e = open(dir.path());
    update(&e, "p4", 3);
    let deleted = e.delete(&c, "Observation", &id).unwrap().wait_blocking();
    assert_eq!(deleted.unwrap().record.version, 5);
    let version = |n: u64| format!("Observation/{id}/_history/{n}");
    for (patient, versions) in [
        ("p1", [1, 2]),
        ("p2", [2, 3]),
        ("p3", [3, 4]),
        ("p4", [4, 5]),
    ] {
        let t = trail(&e, patient);
        for n in versions {
            assert!(
                t.contains(&version(n)),
                "{patient}: {t:?} lacks version {n}"
            );
        }
    }
    close(e);
}
