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

/// A raw LMDB database of the store, as [`raw_dbs`] opens it.
pub type RawDb<'e> = heed::Database<'e, heed::types::Bytes, heed::types::Bytes>;

/// Opens `<dir>/store` with raw heed (no store around it), with a map of `map_size` bytes
/// (LMDB makes it at least the pages in use): tests set up what an older, a future or a
/// damaged store looks like with it. Close it with `env.prepare_for_closing().wait()`.
pub fn raw_env(dir: &Path, map_size: usize) -> heed::Env {
    #[allow(unsafe_code)]
    let env = unsafe {
        heed::EnvOpenOptions::new()
            .max_dbs(40)
            .map_size(map_size)
            .open(dir.join("store"))
            .unwrap()
    };
    env
}

/// The named databases of a [`raw_env`] (created if missing).
pub fn raw_dbs<'e, const N: usize>(env: &'e heed::Env, names: [&str; N]) -> [RawDb<'e>; N] {
    let wtxn = env.write_txn().unwrap();
    env.create_databases_and_commit(wtxn, |o, w| {
        let mut dbs = Vec::with_capacity(N);
        for n in names {
            dbs.push(o.create_database::<heed::types::Bytes, heed::types::Bytes>(w, Some(n))?);
        }
        let dbs: [RawDb<'e>; N] = dbs.try_into().unwrap();
        Ok::<_, heed::Error>(heed::CommitOrAbort::<_, ()>::Commit(dbs))
    })
    .unwrap()
    .unwrap_commit()
}

/// Runs `f` on the store's `meta` database in one raw write transaction, then commits.
pub fn edit_meta(dir: &Path, f: impl FnOnce(&mut heed::RwTxn, RawDb<'_>)) {
    let env = raw_env(dir, 1 << 30);
    let [meta] = raw_dbs(&env, ["meta"]);
    let mut wtxn = env.write_txn().unwrap();
    f(&mut wtxn, meta);
    wtxn.commit().unwrap();
    env.prepare_for_closing().wait();
}
