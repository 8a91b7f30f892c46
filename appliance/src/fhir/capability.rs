//! The CapabilityStatement served at `GET /fhir/metadata`: exactly the types, interactions
//! and search parameters this API implements.

use hexa_actors::store::component_for;
use hexa_actors::store::params::{ParamKind, params_for};
use hexa_actors::store::route::{SHR_TYPES, client_writable};
use serde_json::{Value, json};

/// Types served by the registries other than the shared health record.
const REGISTRY_TYPES: &[&str] = &[
    "Patient",
    "RelatedPerson",
    "Person",
    "Organization",
    "Location",
    "HealthcareService",
    "Endpoint",
    "OrganizationAffiliation",
    "Practitioner",
    "PractitionerRole",
    "Medication",
    "MedicationKnowledge",
    "Device",
    "DeviceDefinition",
    "Substance",
    "BiologicallyDerivedProduct",
    "NutritionProduct",
    "InventoryItem",
    "CodeSystem",
    "ValueSet",
    "ConceptMap",
    "NamingSystem",
    "Consent",
    "AuditEvent",
    "Provenance",
];

/// Every resource type the API serves, sorted.
pub fn served_types() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = REGISTRY_TYPES
        .iter()
        .chain(SHR_TYPES.iter())
        .copied()
        .filter(|t| component_for(t).is_ok())
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn param_type(k: ParamKind) -> &'static str {
    match k {
        ParamKind::Token | ParamKind::Telecom => "token",
        ParamKind::Str => "string",
        ParamKind::Reference(_) => "reference",
        ParamKind::Date => "date",
    }
}

/// The operations served on `ty` (name and the canonical OperationDefinition).
pub const OPERATIONS: &[(&str, &str, &str)] = &[
    (
        "Patient",
        "match",
        "http://hl7.org/fhir/OperationDefinition/Patient-match",
    ),
    (
        "Patient",
        "everything",
        "http://hl7.org/fhir/OperationDefinition/Patient-everything",
    ),
    (
        "CodeSystem",
        "lookup",
        "http://hl7.org/fhir/OperationDefinition/CodeSystem-lookup",
    ),
    (
        "CodeSystem",
        "validate-code",
        "http://hl7.org/fhir/OperationDefinition/CodeSystem-validate-code",
    ),
    (
        "ValueSet",
        "expand",
        "http://hl7.org/fhir/OperationDefinition/ValueSet-expand",
    ),
    (
        "ValueSet",
        "validate-code",
        "http://hl7.org/fhir/OperationDefinition/ValueSet-validate-code",
    ),
    (
        "ConceptMap",
        "translate",
        "http://hl7.org/fhir/OperationDefinition/ConceptMap-translate",
    ),
];

fn operations_of(ty: &str) -> Vec<Value> {
    OPERATIONS
        .iter()
        .filter(|(t, _, _)| *t == ty)
        .map(|(_, name, def)| json!({"name": name, "definition": def}))
        .collect()
}

/// The CapabilityStatement; `base` is the absolute `/fhir` URL.
pub fn capability_statement(base: &str) -> Value {
    let mut resources: Vec<Value> = served_types()
        .into_iter()
        .map(|ty| {
            let writable = client_writable(ty);
            let mut interactions = vec!["read", "vread", "history-instance", "history-type"];
            interactions.push("search-type");
            if writable {
                interactions.extend(["create", "update", "delete"]);
            }
            let mut params: Vec<Value> = params_for(ty)
                .iter()
                .map(|p| json!({"name": p.name, "type": param_type(p.kind)}))
                .collect();
            params.push(json!({"name": "_id", "type": "token"}));
            params.push(json!({"name": "_lastUpdated", "type": "date"}));
            let refs: Vec<String> = params_for(ty)
                .iter()
                .filter(|p| matches!(p.kind, ParamKind::Reference(_)))
                .map(|p| format!("{ty}:{}", p.name))
                .collect();
            // Every type whose reference parameters could point here may be revincluded;
            // listed are the common ones (Provenance:target for every type).
            let mut revinclude = vec!["Provenance:target".to_string()];
            if ty == "Patient" {
                revinclude.extend(
                    [
                        "Observation:patient",
                        "Condition:patient",
                        "Encounter:patient",
                        "Consent:patient",
                        "AllergyIntolerance:patient",
                        "MedicationRequest:patient",
                    ]
                    .map(String::from),
                );
            }
            let mut res = json!({
                "type": ty,
                "interaction": interactions.iter().map(|c| json!({"code": c})).collect::<Vec<_>>(),
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": writable,
                "conditionalCreate": writable,
                "conditionalRead": "not-supported",
                "conditionalUpdate": writable,
                "conditionalDelete": "not-supported",
                "searchInclude": refs,
                "searchRevInclude": revinclude,
                "searchParam": params,
            });
            let ops = operations_of(ty);
            if !ops.is_empty() {
                res["operation"] = Value::Array(ops);
            }
            res
        })
        .collect();
    crate::consent::capability_operations(&mut resources);
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-22",
        "publisher": "hexa",
        "kind": "instance",
        "software": {"name": "hexa", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "hexa health exchange appliance", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "application/json"],
        "rest": [{
            "mode": "server",
            "security": {
                "extension": [{
                    "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                    "extension": [{"url": "token", "valueUri": format!("{base}/token")}]
                }],
                "service": [{"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                    "code": "SMART-on-FHIR"
                }]}],
                "description": "SMART Backend Services: client-credentials grant with a private_key_jwt assertion; bearer tokens on every request."
            },
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}],
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_served_types_only() {
        let t = served_types();
        assert!(t.contains(&"Patient") && t.contains(&"Observation"));
        assert!(t.iter().all(|x| component_for(x).is_ok()));
        let cs = capability_statement("http://h/fhir");
        let res = cs["rest"][0]["resource"].as_array().unwrap();
        assert_eq!(res.len(), t.len());
        let audit = res.iter().find(|r| r["type"] == "AuditEvent").unwrap();
        assert!(!audit["interaction"].to_string().contains("create"));
    }
}
