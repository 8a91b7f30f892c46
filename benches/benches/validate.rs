//! Validation of resources against the FHIR R4 schema (the check every create, update and
//! transaction entry passes before the store sees it): a valid Patient and Observation, a
//! contained resource, an invalid Patient (the error path that builds the issues), the
//! reference walk, and the one-off cost of indexing the schema and compiling one type.

use criterion::{Criterion, criterion_group, criterion_main};
use hexa_appliance::fhir::validate::{self, SchemaValidator};
use serde_json::json;
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let v = validate::schema().unwrap();
    let patient = json!({
        "resourceType": "Patient",
        "identifier": [{"system": "urn:rw:nid", "value": "1199080012345678"}],
        "name": [{"family": "Uwase", "given": ["Aline", "Marie"]}],
        "gender": "female",
        "birthDate": "1990-01-01",
        "telecom": [{"system": "phone", "value": "+250788000000", "use": "mobile"}],
        "address": [{"city": "Kigali", "district": "Gasabo", "country": "RW"}],
        "managingOrganization": {"reference": "Organization/f1"}
    });
    let observation = json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7", "display": "Body weight"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2026-11-22T08:00:00Z",
        "valueQuantity": {"value": 61.5, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}
    });
    let mut with_contained = observation.clone();
    with_contained["contained"] =
        json!([{"resourceType": "Practitioner", "id": "pr", "name": [{"family": "Habimana"}]}]);
    with_contained["performer"] = json!([{"reference": "#pr"}]);
    let mut invalid = patient.clone();
    invalid["gender"] = json!("woman");
    invalid["shoeSize"] = json!(42);
    invalid["birthDate"] = json!("1990-13-01");
    // Compile the types once before measuring.
    for r in [&patient, &observation, &with_contained] {
        assert!(v.validate(r).unwrap().is_empty());
    }
    assert_eq!(v.validate(&invalid).unwrap().len(), 3);

    let mut g = c.benchmark_group("validate");
    g.bench_function("patient_valid", |b| {
        b.iter(|| v.validate(black_box(&patient)).unwrap())
    });
    g.bench_function("observation_valid", |b| {
        b.iter(|| v.validate(black_box(&observation)).unwrap())
    });
    g.bench_function("observation_with_contained", |b| {
        b.iter(|| v.validate(black_box(&with_contained)).unwrap())
    });
    g.bench_function("patient_invalid_3_issues", |b| {
        b.iter(|| v.validate(black_box(&invalid)).unwrap())
    });
    let known = |t: &str| v.knows(t);
    g.bench_function("observation_reference_walk", |b| {
        b.iter(|| validate::references(black_box(&observation), "Observation", &known, 1000))
    });
    g.finish();

    let mut g = c.benchmark_group("validate_startup");
    g.sample_size(10);
    g.bench_function("index_schema_and_compile_patient", |b| {
        b.iter(|| {
            let s = SchemaValidator::from_json(include_str!(
                "../../appliance/resources/fhir.schema.json"
            ))
            .unwrap();
            s.validate(black_box(&patient)).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
