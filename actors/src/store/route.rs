//! Routing: which component (registry actor and LMDB databases) owns a resource type.
//!
//! One function, [`component_for`], maps a FHIR resource type to its [`Component`]; unknown
//! types are a typed error so nothing is ever stored "somewhere".

use super::error::{StoreError, StoreResult};

/// A store component: one registry actor and its named LMDB databases (`<name>.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    /// Client registry: Patient (and RelatedPerson, Person).
    Patient,
    /// Facility registry: Organization, Location, HealthcareService, Endpoint.
    Facility,
    /// Health worker registry: Practitioner, PractitionerRole.
    Worker,
    /// Product catalogue: Medication, Device, Substance and other products.
    Product,
    /// Terminology: CodeSystem, ValueSet, ConceptMap, NamingSystem.
    Term,
    /// Shared health record: patient-compartment clinical and financial resources.
    Shr,
    /// Consent store: Consent.
    Consent,
    /// Audit log: AuditEvent (Merkle log) and Provenance.
    Audit,
}

impl Component {
    /// Every component, in a stable order.
    pub const ALL: [Component; 8] = [
        Component::Patient,
        Component::Facility,
        Component::Worker,
        Component::Product,
        Component::Term,
        Component::Shr,
        Component::Consent,
        Component::Audit,
    ];

    /// Name used as the prefix of this component's LMDB databases and sealing keys.
    pub fn name(self) -> &'static str {
        match self {
            Component::Patient => "patient",
            Component::Facility => "facility",
            Component::Worker => "worker",
            Component::Product => "product",
            Component::Term => "term",
            Component::Shr => "shr",
            Component::Consent => "consent",
            Component::Audit => "audit",
        }
    }

    /// Position in [`Component::ALL`].
    pub fn index(self) -> usize {
        Component::ALL.iter().position(|c| *c == self).unwrap_or(0)
    }
}

/// Patient-compartment clinical and financial types held by the shared health record.
pub const SHR_TYPES: &[&str] = &[
    "Account",
    "AdverseEvent",
    "AllergyIntolerance",
    "Appointment",
    "AppointmentResponse",
    "Basic",
    "BodyStructure",
    "CarePlan",
    "CareTeam",
    "ChargeItem",
    "Claim",
    "ClaimResponse",
    "ClinicalImpression",
    "Communication",
    "CommunicationRequest",
    "Composition",
    "Condition",
    "Coverage",
    "CoverageEligibilityRequest",
    "CoverageEligibilityResponse",
    "DetectedIssue",
    "DeviceRequest",
    "DeviceUseStatement",
    "DiagnosticReport",
    "DocumentManifest",
    "DocumentReference",
    "Encounter",
    "EnrollmentRequest",
    "EpisodeOfCare",
    "ExplanationOfBenefit",
    "FamilyMemberHistory",
    "Flag",
    "Goal",
    "Group",
    "ImagingStudy",
    "Immunization",
    "ImmunizationEvaluation",
    "ImmunizationRecommendation",
    "Invoice",
    "List",
    "MeasureReport",
    "Media",
    "MedicationAdministration",
    "MedicationDispense",
    "MedicationRequest",
    "MedicationStatement",
    "MolecularSequence",
    "NutritionOrder",
    "Observation",
    "Procedure",
    "QuestionnaireResponse",
    "RequestGroup",
    "ResearchSubject",
    "RiskAssessment",
    "Schedule",
    "ServiceRequest",
    "Specimen",
    "SupplyDelivery",
    "SupplyRequest",
    "Task",
    "VisionPrescription",
];

/// The types of every component but the shared health record, with their component.
pub const REGISTRY_TYPES: &[(&str, Component)] = &[
    ("Patient", Component::Patient),
    ("RelatedPerson", Component::Patient),
    ("Person", Component::Patient),
    ("Organization", Component::Facility),
    ("Location", Component::Facility),
    ("HealthcareService", Component::Facility),
    ("Endpoint", Component::Facility),
    ("OrganizationAffiliation", Component::Facility),
    ("Practitioner", Component::Worker),
    ("PractitionerRole", Component::Worker),
    ("Medication", Component::Product),
    ("MedicationKnowledge", Component::Product),
    ("Device", Component::Product),
    ("DeviceDefinition", Component::Product),
    ("Substance", Component::Product),
    ("BiologicallyDerivedProduct", Component::Product),
    ("NutritionProduct", Component::Product),
    ("InventoryItem", Component::Product),
    ("CodeSystem", Component::Term),
    ("ValueSet", Component::Term),
    ("ConceptMap", Component::Term),
    ("NamingSystem", Component::Term),
    ("Consent", Component::Consent),
    ("AuditEvent", Component::Audit),
    ("Provenance", Component::Audit),
];

/// The component that owns `resource_type`, or `UnknownResourceType`.
pub fn component_for(resource_type: &str) -> StoreResult<Component> {
    if let Some((_, c)) = REGISTRY_TYPES.iter().find(|(t, _)| *t == resource_type) {
        return Ok(*c);
    }
    if SHR_TYPES.contains(&resource_type) {
        return Ok(Component::Shr);
    }
    Err(StoreError::UnknownResourceType(resource_type.to_string()))
}

/// Every resource type the store holds (what a local reference can name).
pub fn stored_types() -> impl Iterator<Item = &'static str> {
    REGISTRY_TYPES
        .iter()
        .map(|(t, _)| *t)
        .chain(SHR_TYPES.iter().copied())
}

/// True for types whose versions are written by clients (everything except the audit log,
/// whose AuditEvents and Provenances are produced by the store itself).
pub fn client_writable(resource_type: &str) -> bool {
    !matches!(resource_type, "AuditEvent" | "Provenance")
}

/// Validates a FHIR logical id: `[A-Za-z0-9\-\.]{1,64}`.
pub fn validate_id(id: &str) -> StoreResult<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "`{id}` is not a valid FHIR id (1-64 of A-Z a-z 0-9 - .)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_known_types() {
        assert_eq!(component_for("Patient").unwrap(), Component::Patient);
        assert_eq!(component_for("Location").unwrap(), Component::Facility);
        assert_eq!(
            component_for("PractitionerRole").unwrap(),
            Component::Worker
        );
        assert_eq!(component_for("Medication").unwrap(), Component::Product);
        assert_eq!(component_for("ValueSet").unwrap(), Component::Term);
        assert_eq!(component_for("Observation").unwrap(), Component::Shr);
        assert_eq!(component_for("SupplyDelivery").unwrap(), Component::Shr);
        assert_eq!(component_for("Consent").unwrap(), Component::Consent);
        assert_eq!(component_for("Provenance").unwrap(), Component::Audit);
    }

    #[test]
    fn stored_types_are_distinct_and_route() {
        let all: Vec<&str> = stored_types().collect();
        let set: std::collections::BTreeSet<&str> = all.iter().copied().collect();
        assert_eq!(set.len(), all.len(), "a type is listed twice");
        assert!(all.len() > 80, "{} types", all.len());
        for t in all {
            assert!(component_for(t).is_ok(), "{t}");
        }
    }

    #[test]
    fn unknown_type_is_typed_error() {
        assert_eq!(
            component_for("Spaceship"),
            Err(StoreError::UnknownResourceType("Spaceship".into()))
        );
        assert!(component_for("patient").is_err());
    }

    #[test]
    fn ids_are_validated() {
        assert!(validate_id("abc-1.2").is_ok());
        assert!(validate_id("").is_err());
        assert!(validate_id("a/b").is_err());
        assert!(validate_id(&"x".repeat(65)).is_err());
    }
}
