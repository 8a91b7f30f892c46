//! The official FHIR R4 examples (`tests/fixtures/r4-examples`, copied from the 4.0.1
//! example package) against the appliance:
//! - every example, Bundles included, passes the embedded R4 schema (the official
//!   examples are valid, so a rejection would be a defect of ours);
//! - every example of a type clients may write is PUT with its id through the API, in
//!   dependency order (cycles in one transaction), and reads back equal, ignoring only
//!   `meta.versionId` and `meta.lastUpdated`, which the server sets. References to
//!   resources outside the example set get minimal stand-ins first (the server refuses
//!   broken references); examples that reference a type the server does not hold are
//!   refused with 422, and the test pins exactly which;
//! - the `hla-1` transaction Bundle (`urn:uuid:` references) commits as a transaction.

mod common;
mod conformance_support;

use conformance_support::Server;
use hexa_appliance::fhir::validate::{self, RefTarget};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

type Key = (String, String);

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/r4-examples")
}

/// Every example: (file name, resource), sorted by file name.
fn examples() -> Vec<(String, Value)> {
    let mut files: Vec<_> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(files.len() > 300, "fixtures missing: {}", files.len());
    files
        .into_iter()
        .map(|p| {
            let v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            (p.file_name().unwrap().to_string_lossy().into_owned(), v)
        })
        .collect()
}

fn key_of(v: &Value) -> Key {
    (
        v["resourceType"].as_str().unwrap().to_string(),
        v["id"].as_str().unwrap_or_default().to_string(),
    )
}

fn known(t: &str) -> bool {
    validate::schema().unwrap().knows(t)
}

/// The local (`Type/id`) targets a resource refers to, other than itself.
fn local_targets(v: &Value) -> BTreeSet<Key> {
    let own = key_of(v);
    validate::references(v, "x", &known, 10_000)
        .into_iter()
        .filter_map(|r| match r.target {
            RefTarget::Local {
                resource_type, id, ..
            } => Some((resource_type, id)),
            RefTarget::Contained(_) => None,
        })
        .filter(|k| *k != own)
        .collect()
}

/// Whether clients may write resources of type `t` through this server.
fn writable(t: &str) -> bool {
    hexa_actors::store::component_for(t).is_ok() && hexa_actors::store::route::client_writable(t)
}

/// The smallest schema-valid resource of type `ty` with id `id`: its required elements
/// filled with placeholder values, recursively for backbone elements.
fn stand_in(schema: &Value, ty: &str, id: &str) -> Value {
    fn fill(schema: &Value, def: &str) -> Value {
        match def {
            "Reference" => json!({"display": "stand-in"}),
            "CodeableConcept" => json!({"text": "stand-in"}),
            "Coding" => json!({"display": "stand-in"}),
            "Quantity" | "SimpleQuantity" => json!({"value": 1}),
            "Attachment" => json!({"title": "stand-in"}),
            _ => {
                let d = &schema["definitions"][def];
                let mut o = Map::new();
                for p in d["required"].as_array().into_iter().flatten() {
                    let p = p.as_str().unwrap();
                    if p == "resourceType" {
                        continue;
                    }
                    let prop = &d["properties"][p];
                    let (r, array) = match prop.get("$ref") {
                        Some(r) => (r, false),
                        None => (&prop["items"]["$ref"], true),
                    };
                    let name = r.as_str().unwrap().rsplit('/').next().unwrap();
                    let v = fill(schema, name);
                    o.insert(p.into(), if array { json!([v]) } else { v });
                }
                if o.is_empty() {
                    o.insert("id".into(), json!("stand-in"));
                }
                Value::Object(o)
            }
        }
    }
    let mut v = fill(schema, ty);
    let o = v.as_object_mut().unwrap();
    o.remove("id");
    o.insert("resourceType".into(), json!(ty));
    o.insert("id".into(), json!(id));
    v
}

/// A resource without the two meta elements the server sets (and without `meta` when
/// nothing else was in it).
fn without_server_meta(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.get_mut("meta").and_then(Value::as_object_mut) {
        m.remove("versionId");
        m.remove("lastUpdated");
        if m.is_empty() {
            v.as_object_mut().unwrap().remove("meta");
        }
    }
    v
}

/// Equality where numbers compare by value (`1.0` == `1`): JSON numbers are read as
/// binary floats and stored in RFC 8785 form, which writes `1.0` as `1`.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, a)| y.get(k).is_some_and(|b| same(a, b)))
        }
        _ => a == b,
    }
}

#[test]
fn every_official_example_passes_the_schema() {
    let v = validate::schema().unwrap();
    let mut rejected = Vec::new();
    for (file, res) in examples() {
        let issues = v.validate(&res).unwrap();
        if !issues.is_empty() {
            rejected.push(format!("{file}: {issues:?}"));
        }
    }
    assert!(
        rejected.is_empty(),
        "official examples rejected:\n{}",
        rejected.join("\n")
    );
}

#[test]
fn official_examples_load_through_the_api_and_read_back_equal() {
    let schema: Value =
        serde_json::from_str(include_str!("../resources/fhir.schema.json")).unwrap();
    let all = examples();
    let by_key: BTreeMap<Key, Value> = all
        .iter()
        .filter(|(_, v)| v["resourceType"] != "Bundle")
        .map(|(_, v)| (key_of(v), v.clone()))
        .collect();
    // Which examples can be loaded: writable type, every target writable (or loadable).
    let mut refused: BTreeSet<Key> = BTreeSet::new();
    let mut skipped_audit = 0;
    let mut loadable: BTreeMap<Key, BTreeSet<Key>> = BTreeMap::new();
    for (k, v) in &by_key {
        if !writable(&k.0) {
            // AuditEvent and Provenance are written by the appliance only.
            skipped_audit += 1;
            continue;
        }
        loadable.insert(k.clone(), local_targets(v));
    }
    loop {
        let newly: Vec<Key> = loadable
            .iter()
            .filter(|(_, deps)| deps.iter().any(|d| !writable(&d.0) || refused.contains(d)))
            .map(|(k, _)| k.clone())
            .collect();
        if newly.is_empty() {
            break;
        }
        for k in newly {
            loadable.remove(&k);
            refused.insert(k);
        }
    }
    // Stand-ins for targets outside the example set.
    let stand_ins: BTreeSet<Key> = loadable
        .values()
        .flatten()
        .filter(|d| !by_key.contains_key(*d))
        .cloned()
        .collect();

    let s = Server::start();
    for (ty, id) in &stand_ins {
        let body = stand_in(&schema, ty, id);
        let r = s.send("PUT", &format!("/fhir/{ty}/{id}"), &body, &[]);
        assert_eq!(r.status, 201, "stand-in {ty}/{id}: {}", r.text());
    }

    // Waves in dependency order; what is left is a set of cycles: one transaction.
    let mut done: BTreeSet<Key> = stand_ins.clone();
    let mut pending = loadable.clone();
    let mut waves = 0;
    while !pending.is_empty() {
        let ready: Vec<Key> = pending
            .iter()
            .filter(|(_, deps)| deps.iter().all(|d| done.contains(d)))
            .map(|(k, _)| k.clone())
            .collect();
        if ready.is_empty() {
            break;
        }
        waves += 1;
        for k in ready {
            let r = s.send("PUT", &format!("/fhir/{}/{}", k.0, k.1), &by_key[&k], &[]);
            assert_eq!(r.status, 201, "{}/{}: {}", k.0, k.1, r.text());
            pending.remove(&k);
            done.insert(k);
        }
    }
    let cyclic = pending.len();
    if !pending.is_empty() {
        let entries: Vec<Value> = pending
            .keys()
            .map(|k| {
                json!({
                    "resource": by_key[k],
                    "request": {"method": "PUT", "url": format!("{}/{}", k.0, k.1)},
                })
            })
            .collect();
        let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
        let r = s.send("POST", "/fhir", &tx, &[("Prefer", "return=minimal")]);
        assert_eq!(r.status, 200, "cycle transaction: {}", r.text());
    }

    // Read back equal.
    let mut exact = 0;
    for k in loadable.keys() {
        let r = s.get(&format!("/fhir/{}/{}", k.0, k.1));
        assert_eq!(r.status, 200, "{}/{}: {}", k.0, k.1, r.text());
        let got = without_server_meta(&r.json());
        let want = without_server_meta(&by_key[k]);
        assert!(
            same(&got, &want),
            "{}/{} differs:\n sent {want}\n read {got}",
            k.0,
            k.1
        );
        if got == want {
            exact += 1;
        }
    }

    // The refused ones are refused with 422 naming a reference.
    for k in &refused {
        let r = s.send("PUT", &format!("/fhir/{}/{}", k.0, k.1), &by_key[k], &[]);
        assert_eq!(r.status, 422, "{}/{}: {}", k.0, k.1, r.text());
        assert_eq!(r.code(), "broken-reference");
        assert!(
            r.expressions().iter().all(|e| e.ends_with(".reference")),
            "{}",
            r.text()
        );
    }
    let refused_names: Vec<String> = refused.iter().map(|k| format!("{}/{}", k.0, k.1)).collect();
    println!(
        "examples: {} loaded ({} waves, {} in a cycle transaction; {} equal byte for byte as \
         JSON values, the rest equal up to number form), {} stand-ins, {} AuditEvent/Provenance \
         not client-writable, {} refused for references to types not held: {:?}",
        loadable.len(),
        waves,
        cyclic,
        exact,
        stand_ins.len(),
        skipped_audit,
        refused.len(),
        refused_names
    );
    assert!(
        loadable.len() >= 250,
        "too few examples loaded: {}",
        loadable.len()
    );
}

#[test]
fn the_hla_transaction_example_commits() {
    let s = Server::start();
    let (_, b) = examples()
        .into_iter()
        .find(|(f, _)| f == "Bundle-hla-1.json")
        .unwrap();
    // Its entries' references either use urn:uuid (resolved in the transaction) or point
    // at resources outside the bundle: give those stand-ins first.
    let schema: Value =
        serde_json::from_str(include_str!("../resources/fhir.schema.json")).unwrap();
    let mut targets = BTreeSet::new();
    for e in b["entry"].as_array().unwrap() {
        targets.extend(local_targets(&e["resource"]));
    }
    for (ty, id) in &targets {
        let r = s.send(
            "PUT",
            &format!("/fhir/{ty}/{id}"),
            &stand_in(&schema, ty, id),
            &[],
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let r = s.send("POST", "/fhir", &b, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let out = r.json();
    let n = b["entry"].as_array().unwrap().len();
    assert_eq!(out["entry"].as_array().unwrap().len(), n);
    // urn:uuid references were rewritten to the ids the server assigned.
    let text = out.to_string();
    assert!(!text.contains("urn:uuid:"), "{text}");
}
