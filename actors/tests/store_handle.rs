//! The `StoreHandle` facade through the supervised registry actors: routing, batch,
//! transaction, concurrent updates without If-Match, patient matching, merge/unmerge with
//! history, and audit checkpoints and proofs.

mod common;

use common::*;
use hexa_actors::handle::{BatchEntry, BatchOutcome, StoreHandle};
use hexa_actors::store::engine::TxEntry;
use hexa_actors::store::search::SearchQuery;
use hexa_actors::store::{AccessContext, StoreConfig, StoreError};
use hexa_crypto::checkpoint::{Checkpoint, NoteVerifier, open_note};
use hexa_crypto::merkle;
use serde_json::json;

fn start(dir: &std::path::Path) -> StoreHandle {
    StoreHandle::start(StoreConfig::new(dir, "node", "fac1"), secrets(2), 2).unwrap()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[actix_rt::test]
async fn crud_batch_and_concurrent_updates() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path());
    let c = ctx();
    let w = h
        .create(&c, patient("Rukundo", "Paul", "1992-02-02", "P1"), None)
        .await
        .unwrap();
    let id = w.record.id.clone();
    assert_eq!(h.read(&c, "Patient", &id).await.unwrap().version, 1);
    // Conditional create through the facade.
    let again = h
        .conditional_create(
            &c,
            patient("Rukundo", "Paul", "1992-02-02", "P1"),
            &pairs(&[("identifier", "urn:rw:nid|P1")]),
        )
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.record.id, id);

    // Two concurrent updates without If-Match both land (the loser is re-prepared).
    let (h1, h2, c1, c2, i1, i2) = (
        h.clone(),
        h.clone(),
        c.clone(),
        c.clone(),
        id.clone(),
        id.clone(),
    );
    let a = actix_rt::spawn(async move {
        h1.update(
            &c1,
            "Patient",
            &i1,
            patient("Rukundo", "A", "1992-02-02", "P1"),
            None,
            None,
        )
        .await
    });
    let b = actix_rt::spawn(async move {
        h2.update(
            &c2,
            "Patient",
            &i2,
            patient("Rukundo", "B", "1992-02-02", "P1"),
            None,
            None,
        )
        .await
    });
    let (ra, rb) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());
    let mut versions = vec![ra.record.version, rb.record.version];
    versions.sort();
    assert_eq!(versions, vec![2, 3]);
    // With a stale If-Match it is a conflict.
    assert!(matches!(
        h.update(
            &c,
            "Patient",
            &id,
            patient("X", "Y", "1992", "P1"),
            Some(1),
            None
        )
        .await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(h.history(&c, "Patient", &id).await.unwrap().len(), 3);
    assert_eq!(
        h.vread(&c, "Patient", &id, 1).await.unwrap().resource["name"][0]["given"][0],
        "Paul"
    );
    let th = h.type_history(&c, "Patient", 10, 0).await.unwrap();
    assert_eq!(th.total, 3);

    // Batch: independent outcomes; one failure does not affect the others.
    let out = h
        .batch(
            &c,
            vec![
                BatchEntry::Write(TxEntry::Create {
                    resource: observation(&id, "8867-4", "2024-01-01"),
                    full_url: None,
                }),
                BatchEntry::Read {
                    resource_type: "Patient".into(),
                    id: "missing".into(),
                },
                BatchEntry::Read {
                    resource_type: "Patient".into(),
                    id: id.clone(),
                },
                BatchEntry::Search(
                    SearchQuery::from_pairs("Observation", &[("patient", &id)]).unwrap(),
                ),
                BatchEntry::Write(TxEntry::Delete {
                    resource_type: "Spaceship".into(),
                    id: "x".into(),
                }),
            ],
        )
        .await;
    assert!(matches!(out[0], Ok(BatchOutcome::Written(_))));
    assert!(matches!(out[1], Err(StoreError::NotFound { .. })));
    assert!(matches!(out[2], Ok(BatchOutcome::Read(_))));
    assert!(matches!(out[4], Err(StoreError::UnknownResourceType(_))));
    // The search ran concurrently with the create: it sees 0 or 1.
    assert!(matches!(&out[3], Ok(BatchOutcome::Searched(p)) if p.total <= 1));
    let page = h
        .search(&c, "Observation", &pairs(&[("patient", &id)]))
        .await
        .unwrap();
    assert_eq!(page.total, 1);

    // Transaction through the facade.
    let res = h
        .transaction(
            &c,
            vec![
                TxEntry::Create { resource: patient("Tx", "One", "2000", "T1"), full_url: Some("urn:uuid:1".into()) },
                TxEntry::Create { resource: json!({"resourceType": "Encounter", "status": "planned", "subject": {"reference": "urn:uuid:1"}}), full_url: None },
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        res[1].record.resource["subject"]["reference"],
        format!("Patient/{}", res[0].record.id)
    );
    assert!(matches!(
        h.read(&c, "Spaceship", "x").await,
        Err(StoreError::UnknownResourceType(_))
    ));
}

#[actix_rt::test]
async fn matching_and_merge_unmerge() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path());
    let c = ctx();
    let mut golden = patient("Mukamana", "Claudine", "1985-03-12", "1198570012345678");
    golden["telecom"] = json!([{"system": "phone", "value": "0788123456"}]);
    let g = h.create(&c, golden, None).await.unwrap().record.id;
    // A duplicate registered elsewhere: typo in the family name, no national id, same phone.
    let mut dup = json!({"resourceType": "Patient", "name": [{"family": "Mukamanna", "given": ["Claudine"]}],
        "gender": "female", "birthDate": "1985-03-12", "telecom": [{"system": "phone", "value": "+250 788 123 456"}]});
    let d = h.create(&c, dup.clone(), None).await.unwrap().record.id;
    for i in 0..30 {
        h.create(
            &c,
            patient(
                &format!("Other{i}"),
                "Someone",
                "1970-01-01",
                &format!("N{i}"),
            ),
            None,
        )
        .await
        .unwrap();
    }
    dup["id"] = json!("query");
    let before = h.store().audit_size().unwrap();
    let found = h.match_patients(&c, dup, 0.5, 5).await.unwrap();
    assert!(
        found.iter().any(|m| m.record.id == g),
        "golden not found: {:?}",
        found
            .iter()
            .map(|m| (&m.record.id, m.score.score))
            .collect::<Vec<_>>()
    );
    assert!(
        found
            .iter()
            .all(|m| m.score.score >= 0.5 || m.score.identifier_match)
    );
    assert!(
        found
            .windows(2)
            .all(|w| w[0].score.score >= w[1].score.score)
    );
    // The disclosure was audited.
    assert_eq!(h.store().audit_size().unwrap(), before + 1);
    // Identifier match is certain.
    let by_id = h
        .match_patients(
            &c,
            patient("Zzz", "Qqq", "2001", "1198570012345678"),
            0.9,
            5,
        )
        .await
        .unwrap();
    assert_eq!(by_id[0].record.id, g);
    assert!(by_id[0].score.identifier_match);

    // Merge the duplicate into the golden record; history keeps both states.
    let merged = h.merge_patients(&c, &d, &g).await.unwrap();
    assert_eq!(merged.len(), 2);
    let src = h.read(&c, "Patient", &d).await.unwrap();
    assert_eq!(src.resource["active"], false);
    assert_eq!(src.resource["link"][0]["type"], "replaced-by");
    assert_eq!(
        src.resource["link"][0]["other"]["reference"],
        format!("Patient/{g}")
    );
    let tgt = h.read(&c, "Patient", &g).await.unwrap();
    assert_eq!(tgt.resource["link"][0]["type"], "replaces");
    let linked = h
        .search(&c, "Patient", &pairs(&[("link", &format!("Patient/{g}"))]))
        .await
        .unwrap();
    assert_eq!(
        linked
            .items
            .iter()
            .map(|r| r.id.clone())
            .collect::<Vec<_>>(),
        vec![d.clone()]
    );
    h.unmerge_patients(&c, &d, &g).await.unwrap();
    let src = h.read(&c, "Patient", &d).await.unwrap();
    assert_eq!(src.resource["active"], true);
    assert!(src.resource.get("link").is_none());
    assert!(
        h.read(&c, "Patient", &g)
            .await
            .unwrap()
            .resource
            .get("link")
            .is_none()
    );
    let hist = h.history(&c, "Patient", &d).await.unwrap();
    assert_eq!(hist.len(), 3);
    assert_eq!(hist[1].resource["link"][0]["type"], "replaced-by");
    assert!(matches!(
        h.merge_patients(&c, &d, &d).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        h.merge_patients(&c, &d, "nobody").await,
        Err(StoreError::NotFound { .. })
    ));
}

#[actix_rt::test]
async fn audit_api_through_the_facade() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path());
    let c = ctx();
    for i in 0..5 {
        h.create(&c, observation("p", &format!("c{i}"), "2024-01-01"), None)
            .await
            .unwrap();
    }
    let note = h.audit_checkpoint().await.unwrap().unwrap();
    let v = NoteVerifier::new(h.store().origin(), h.store().node_public().clone());
    let cp = Checkpoint::parse_body(&open_note(&note, &[v]).unwrap().0).unwrap();
    assert_eq!(cp.size, 5);
    assert!(cp.origin.starts_with("hexa.fac1/"));
    for i in 0..cp.size {
        let e = h.audit_entry(&c, i).await.unwrap();
        let proof = h.audit_inclusion_proof(&c, i, cp.size).await.unwrap();
        merkle::verify_inclusion(&e.leaf, i, cp.size, &proof, &cp.root).unwrap();
    }
    h.read(&c, "Patient", "nobody").await.unwrap_err();
    let note2 = h.audit_checkpoint().await.unwrap().unwrap();
    let v = NoteVerifier::new(h.store().origin(), h.store().node_public().clone());
    let cp2 = Checkpoint::parse_body(&open_note(&note2, &[v]).unwrap().0).unwrap();
    assert_eq!(cp2.size, 6);
    let proof = h
        .audit_consistency_proof(&c, cp.size, cp2.size)
        .await
        .unwrap();
    merkle::verify_consistency(cp.size, cp2.size, &cp.root, &cp2.root, &proof).unwrap();
    assert!(matches!(
        h.audit_entry(&c, 99).await,
        Err(StoreError::Audit(_))
    ));
}

#[actix_rt::test]
async fn patient_everything() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path());
    let c = ctx();
    let p = h
        .create(&c, patient("Every", "Thing", "1999", "E1"), None)
        .await
        .unwrap()
        .record
        .id;
    let other = h
        .create(&c, patient("Other", "One", "1999", "E2"), None)
        .await
        .unwrap()
        .record
        .id;
    h.create(&c, observation(&p, "8867-4", "2024-01-01"), None)
        .await
        .unwrap();
    h.create(&c, observation(&other, "8867-4", "2024-01-01"), None)
        .await
        .unwrap();
    h.create(
        &c,
        json!({"resourceType": "Condition", "subject": {"reference": format!("Patient/{p}")}}),
        None,
    )
    .await
    .unwrap();
    // Consents are written by the appliance's own context (the ceremonies) only.
    h.create(&AccessContext::system("fac1"), json!({"resourceType": "Consent", "status": "active", "patient": {"reference": format!("Patient/{p}")}}), None)
        .await
        .unwrap();
    let all = h.everything(&c, &p).await.unwrap();
    let mut types: Vec<&str> = all.iter().map(|r| r.resource_type.as_str()).collect();
    types.sort();
    assert_eq!(
        types,
        vec!["Condition", "Consent", "Observation", "Patient"]
    );
    assert!(matches!(
        h.everything(&c, "nobody").await,
        Err(StoreError::NotFound { .. })
    ));
}
