//! Cost of consent enforcement on searches: one patient's compartment of
//! `HEXA_BENCH_OBSERVATIONS` Observations (default 1000) authored by the home facility,
//! searched (unaudited: policy, index and unsealing only) by
//! - the store without any policy (`raw`),
//! - the authoring facility (kept from the `_source` index, nothing opened to decide),
//! - a second facility holding an active consent of the patient (every hit opened and
//!   decided; the patient's consents read once per request),
//! - a third facility without consent (every hit opened and refused; empty result),
//!
//! each for a first page of 20 and for `_summary=count` (`_count=0`).

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use hexa_actors::store::engine::{Engine, TxEntry};
use hexa_actors::store::search::SearchQuery;
use hexa_actors::store::{AccessContext, Store, StoreConfig, time};
use hexa_crypto::keyfile::ApplianceSecrets;
use hexa_crypto::keys::SigningKey;
use hexa_crypto::seal::MasterKey;
use serde_json::json;

fn reader(facility: &str) -> AccessContext {
    AccessContext {
        client_id: format!("bench-{facility}"),
        facility_id: facility.into(),
        practitioner: None,
        purpose_of_use: "TREAT".into(),
        justification: None,
        patient_session: None,
    }
}

fn search(c: &mut Criterion) {
    let n: usize = hexa_benches::env_parse("HEXA_BENCH_OBSERVATIONS").unwrap_or(1000);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = StoreConfig::new(dir.path(), "bench-node", "home");
    cfg.initial_map_size = 1 << 28;
    let secrets = ApplianceSecrets {
        node_key: SigningKey::from_seed(&[1; 32]),
        master_key: MasterKey::from_bytes([2; 32]),
    };
    let store = Arc::new(Store::open(cfg, secrets).expect("open"));
    let engine = Engine::start(store.clone()).expect("writer");
    let home = reader("home");
    let patient = engine
        .create(
            &home,
            json!({"resourceType": "Patient", "name": [{"family": "Bench"}]}),
            None,
            None,
        )
        .expect("create")
        .wait_blocking()
        .expect("commit")
        .record
        .id;
    for chunk in 0..n.div_ceil(500) {
        let entries = (0..500.min(n - chunk * 500))
            .map(|i| TxEntry::Create {
                resource: json!({"resourceType": "Observation", "status": "final",
                    "subject": {"reference": format!("Patient/{patient}")},
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                    "valueQuantity": {"value": 60 + i % 40, "unit": "/min"}}),
                full_url: None,
            })
            .collect();
        engine
            .transaction(&home, entries)
            .expect("tx")
            .wait_blocking()
            .expect("commit");
    }
    let now = time::now_millis();
    let role = json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]});
    engine
        .create(
            &AccessContext::system("home"),
            json!({"resourceType": "Consent", "status": "active",
                "patient": {"reference": format!("Patient/{patient}")},
                "provision": {"type": "permit",
                    "period": {"start": time::instant(now - 86_400_000), "end": time::instant(now + 86_400_000 * 30)},
                    "actor": [{"role": role, "reference": {"reference": "Organization/f2"}}],
                    "purpose": [{"code": "TREAT"}]}}),
            None,
            None,
        )
        .expect("consent")
        .wait_blocking()
        .expect("commit");

    let mut g = c.benchmark_group(format!("policy_search_{n}"));
    g.sample_size(20);
    for (page, count) in [("page20", "20"), ("count", "0")] {
        let q = SearchQuery::from_pairs("Observation", &[("patient", &patient), ("_count", count)])
            .expect("query");
        g.bench_function(format!("{page}_raw"), |b| {
            b.iter(|| store.search(&q).expect("search").total)
        });
        for (who, ctx, expect) in [
            ("author", reader("home"), n),
            ("consent", reader("f2"), n),
            ("refused", reader("f3"), 0),
        ] {
            assert_eq!(
                store.disclose_search(&ctx, &q).expect("search").value.total,
                expect
            );
            g.bench_function(format!("{page}_{who}"), |b| {
                b.iter(|| store.disclose_search(&ctx, &q).expect("search").value.total)
            });
        }
    }
    g.finish();
    drop(store);
    engine
        .close(std::time::Duration::from_secs(20))
        .expect("close");
}

criterion_group!(benches, search);
criterion_main!(benches);
