//! Criterion benchmarks of hexa-crypto's hot paths: Ed25519 sign/verify of a detached JWS,
//! XChaCha20-Poly1305 seal/open of 1 KiB, JCS canonicalization of a ~1 KiB FHIR Patient, and
//! Merkle inclusion proofs in a tree of 1,048,576 leaves.
//!
//! Run: `cargo bench -p hexa-benches --bench crypto -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hexa_crypto::jcs;
use hexa_crypto::jws;
use hexa_crypto::keys::SigningKey;
use hexa_crypto::merkle::{self, Frontier, Hash, SubtreeSource};
use hexa_crypto::seal::{Aad, MasterKey};
use serde_json::Value;

/// A realistic FHIR R4 Patient of about 1 KiB.
const PATIENT: &str = r#"{
  "resourceType": "Patient",
  "id": "example-0001",
  "meta": {"versionId": "7", "lastUpdated": "2026-03-14T09:26:53.589Z",
           "profile": ["http://hl7.org/fhir/StructureDefinition/Patient"]},
  "identifier": [
    {"use": "usual", "system": "urn:oid:2.16.840.1.113883.2.4.6.3", "value": "738472983",
     "period": {"start": "2001-05-06"}, "assigner": {"display": "Acme Healthcare"}},
    {"use": "official", "system": "http://hospital-a.example/mrn", "value": "MRN-00012345"}
  ],
  "active": true,
  "name": [
    {"use": "official", "family": "Chalmers", "given": ["Peter", "James"]},
    {"use": "usual", "given": ["Jim"]},
    {"use": "maiden", "family": "Windsor", "given": ["Peter", "James"], "period": {"end": "2002"}}
  ],
  "telecom": [
    {"use": "home"},
    {"system": "phone", "value": "(03) 5555 6473", "use": "work", "rank": 1},
    {"system": "phone", "value": "(03) 3410 5613", "use": "mobile", "rank": 2}
  ],
  "gender": "male",
  "birthDate": "1974-12-25",
  "deceasedBoolean": false,
  "address": [
    {"use": "home", "type": "both", "text": "534 Erewhon St PeasantVille, Rainbow, Vic  3999",
     "line": ["534 Erewhon St"], "city": "PleasantVille", "district": "Rainbow",
     "state": "Vic", "postalCode": "3999", "period": {"start": "1974-12-25"}}
  ],
  "contact": [
    {"relationship": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0131", "code": "N"}]}],
     "name": {"family": "du Marché", "given": ["Bénédicte"]},
     "telecom": [{"system": "phone", "value": "+33 (237) 998327"}],
     "gender": "female", "period": {"start": "2012"}}
  ],
  "managingOrganization": {"reference": "Organization/1"}
}"#;

fn sign_verify(c: &mut Criterion) {
    let key = SigningKey::from_seed(&[7u8; 32]);
    let public = key.public();
    let payload = jcs::canonicalize_str(PATIENT).expect("canonical");
    let token = jws::sign_detached(&key, &payload);
    let mut g = c.benchmark_group("ed25519_jws");
    g.throughput(Throughput::Bytes(payload.len() as u64));
    g.bench_function("sign_detached", |b| {
        b.iter(|| jws::sign_detached(black_box(&key), black_box(&payload)))
    });
    g.bench_function("verify_detached", |b| {
        b.iter(|| jws::verify_detached(black_box(&token), black_box(&payload), black_box(&public)))
    });
    g.finish();
    // Batches as a registry thread signs them under load (`Engine::create_many`): the
    // figure is per signature.
    let mut g = c.benchmark_group("ed25519_jws_batch");
    for n in [4usize, 16] {
        let payloads: Vec<&[u8]> = vec![payload.as_slice(); n];
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("sign_detached_many_{n}"), |b| {
            b.iter(|| jws::sign_detached_many(black_box(&key), black_box(&payloads)))
        });
    }
    g.finish();
}

fn seal_open(c: &mut Criterion) {
    let key = MasterKey::from_bytes([9u8; 32]).sealing_key("bench");
    let aad = Aad {
        database: "patients",
        key: b"Patient/example-0001",
        version: 7,
    };
    let plaintext = vec![0x5au8; 1024];
    let sealed = key.seal(&plaintext, &aad).expect("seal");
    let mut g = c.benchmark_group("xchacha20poly1305_1KiB");
    g.throughput(Throughput::Bytes(1024));
    g.bench_function("seal", |b| {
        b.iter(|| key.seal(black_box(&plaintext), black_box(&aad)))
    });
    g.bench_function("open", |b| {
        b.iter(|| key.open(black_box(&sealed), black_box(&aad)))
    });
    g.finish();
}

fn canonicalize(c: &mut Criterion) {
    let value: Value = serde_json::from_str(PATIENT).expect("json");
    let len = jcs::canonicalize(&value).expect("canonical").len();
    let mut g = c.benchmark_group("jcs_fhir_patient");
    g.throughput(Throughput::Bytes(len as u64));
    g.bench_function("canonicalize_value", |b| {
        b.iter(|| jcs::canonicalize(black_box(&value)))
    });
    g.bench_function("canonicalize_str", |b| {
        b.iter(|| jcs::canonicalize_str(black_box(PATIENT)))
    });
    g.finish();
}

/// Every completed perfect subtree, level by level (what an audit store persists).
struct Levels(Vec<Vec<Hash>>);

impl SubtreeSource for Levels {
    type Error = ();
    fn subtree(&mut self, level: u32, index: u64) -> Result<Hash, ()> {
        self.0
            .get(level as usize)
            .and_then(|l| l.get(index as usize))
            .copied()
            .ok_or(())
    }
}

fn inclusion(c: &mut Criterion) {
    const N: u64 = 1 << 20;
    let mut frontier = Frontier::new();
    let mut levels = Levels(vec![Vec::new(); 21]);
    let mut leaves = Vec::with_capacity(N as usize);
    for i in 0..N {
        let leaf = merkle::leaf_hash(&i.to_be_bytes());
        leaves.push(leaf);
        for (level, _, hash) in frontier.append(leaf) {
            levels.0[level as usize].push(hash);
        }
    }
    let root = frontier.root();
    let index = 777_777u64;
    let proof = merkle::inclusion_proof_from(&mut levels, index, N).expect("proof");
    assert_eq!(proof.len(), 20);
    merkle::verify_inclusion(&leaves[index as usize], index, N, &proof, &root).expect("valid");
    let mut g = c.benchmark_group("merkle_1M");
    g.bench_function("verify_inclusion", |b| {
        b.iter(|| {
            merkle::verify_inclusion(
                black_box(&leaves[index as usize]),
                black_box(index),
                black_box(N),
                black_box(&proof),
                black_box(&root),
            )
        })
    });
    g.bench_function("inclusion_proof_from_store", |b| {
        b.iter(|| merkle::inclusion_proof_from(&mut levels, black_box(index), black_box(N - 3)))
    });
    g.bench_function("frontier_append", |b| {
        let mut f = frontier.clone();
        b.iter(|| f.append(black_box(root)))
    });
    g.finish();
}

criterion_group!(benches, sign_verify, seal_open, canonicalize, inclusion);
criterion_main!(benches);
