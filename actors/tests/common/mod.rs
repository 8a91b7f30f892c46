//! Shared helpers of the store tests: deterministic secrets, a store in a tempdir.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use hexa_actors::store::engine::Engine;
use hexa_actors::store::search::SearchQuery;
use hexa_actors::store::{AccessContext, Store, StoreConfig};
use hexa_crypto::keyfile::ApplianceSecrets;
use hexa_crypto::keys::SigningKey;
use hexa_crypto::seal::MasterKey;
use serde_json::{Value, json};

pub fn secrets(seed: u8) -> ApplianceSecrets {
    ApplianceSecrets {
        node_key: SigningKey::from_seed(&[seed; 32]),
        master_key: MasterKey::from_bytes([seed.wrapping_add(100); 32]),
    }
}

pub fn config(dir: &Path) -> StoreConfig {
    let mut c = StoreConfig::new(dir, "hexa-test-node", "fac1");
    c.checkpoint_every = 10;
    c
}

pub fn open(dir: &Path) -> Engine {
    open_with(config(dir), 1)
}

pub fn open_with(cfg: StoreConfig, seed: u8) -> Engine {
    let store = Arc::new(Store::open(cfg, secrets(seed)).expect("open store"));
    Engine::start(store).expect("start writer")
}

pub fn close(e: Engine) {
    e.close(std::time::Duration::from_secs(20))
        .expect("close store");
}

pub fn ctx() -> AccessContext {
    AccessContext {
        client_id: "emr-1".into(),
        facility_id: "fac1".into(),
        practitioner: Some("dr-a".into()),
        purpose_of_use: "TREAT".into(),
        justification: None,
        patient_session: None,
    }
}

pub fn patient(family: &str, given: &str, birth: &str, nid: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": "urn:rw:nid", "value": nid}],
        "name": [{"family": family, "given": [given]}],
        "gender": "female",
        "birthDate": birth,
        "address": [{"city": "Kigali", "district": "Gasabo"}]
    })
}

pub fn observation(patient_id: &str, code: &str, date: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "subject": {"reference": format!("Patient/{patient_id}")},
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "effectiveDateTime": date,
        "valueQuantity": {"value": 72, "unit": "beats/min"}
    })
}

/// The ids a search of `ty` by `pairs` finds (its first page), sorted.
pub fn ids(e: &Engine, ty: &str, pairs: &[(&str, &str)]) -> Vec<String> {
    let q = SearchQuery::from_pairs(ty, pairs).unwrap();
    let mut v: Vec<String> = e
        .store
        .search(&q)
        .unwrap()
        .items
        .into_iter()
        .map(|r| r.id)
        .collect();
    v.sort();
    v
}

/// Creates `resource` as `ctx`, waits for its commit and returns its id.
pub fn created_id(e: &Engine, ctx: &AccessContext, resource: Value) -> String {
    e.create(ctx, resource, None, None)
        .unwrap()
        .wait_blocking()
        .unwrap()
        .record
        .id
}
