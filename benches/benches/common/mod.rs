//! What the store benches (`store`, `budget`) share: the appliance secrets their stores open
//! with and the health worker they act as.

use hexa_actors::store::AccessContext;
use hexa_crypto::keyfile::ApplianceSecrets;
use hexa_crypto::keys::SigningKey;
use hexa_crypto::seal::MasterKey;

/// Fixed node and master keys, so every run signs and seals alike.
pub fn secrets() -> ApplianceSecrets {
    ApplianceSecrets {
        node_key: SigningKey::from_seed(&[1; 32]),
        master_key: MasterKey::from_bytes([2; 32]),
    }
}

/// A practitioner of facility `fac` treating patients (the bench store's own facility).
pub fn ctx() -> AccessContext {
    AccessContext {
        client_id: "bench".into(),
        facility_id: "fac".into(),
        practitioner: Some("dr".into()),
        purpose_of_use: "TREAT".into(),
        justification: None,
        patient_session: None,
    }
}
