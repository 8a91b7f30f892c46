//! The auditors' path end to end: a real appliance (in-process, real LMDB, real sockets on
//! 127.0.0.1) with a ministry-signed roster, records, card and fingerprint consents made per
//! the consent contract with real evidence (a software FIDO2 authenticator, a health
//! worker's countersignature), reads by other facilities and an emergency access; the audit
//! log over HTTP; `hexa export`; `hexa verify` passing, and failing by name on every tamper:
//! an edited resource, a removed and reordered audit entries, a forged consent, a node key
//! not in the roster, a wrong root key, a removed consent.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hexa_actors::handle::StoreHandle;
use hexa_actors::store::AccessContext;
use hexa_appliance::auth::ClientRegistration;
use hexa_appliance::config::Config;
use hexa_appliance::datadir::DataDir;
use hexa_appliance::verify::{Code, ROSTER_URL, Report, verify_export};
use hexa_crypto::checkpoint::{Checkpoint, NoteVerifier, open_note};
use hexa_crypto::consent::{ConsentChallenge, CoseKey, Decision};
use hexa_crypto::jws;
use hexa_crypto::keys::{PublicKey, SigningKey};
use hexa_crypto::merkle;
use hexa_crypto::roster::{Roster, RosterEntry, SignedRoster, sign_roster};
use serde_json::{Value, json};
use sha2::Digest as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

mod common;

const FAC_A: &str = "fac-a";
const RP_ID: &str = "hexa.fac-a";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn instant(secs: u64) -> String {
    hexa_actors::store::time::instant(secs * 1000)
}

/// A software FIDO2 authenticator holding one Ed25519 credential.
struct SoftCard {
    key: SigningKey,
    credential_id: Vec<u8>,
    counter: u32,
}

impl SoftCard {
    fn new() -> SoftCard {
        let mut id = vec![0u8; 16];
        getrandom::fill(&mut id).unwrap();
        SoftCard {
            key: SigningKey::generate().unwrap(),
            credential_id: id,
            counter: 0,
        }
    }

    fn cose(&self) -> Vec<u8> {
        CoseKey::Ed25519(self.key.public()).to_cbor()
    }

    /// getAssertion over the challenge: (authenticatorData, signature).
    fn assert(&mut self, ch: &ConsentChallenge) -> (Vec<u8>, Vec<u8>) {
        self.counter += 1;
        let mut ad = sha2::Sha256::digest(RP_ID.as_bytes()).to_vec();
        ad.push(0x01);
        ad.extend_from_slice(&self.counter.to_be_bytes());
        let mut msg = ad.clone();
        msg.extend_from_slice(&ch.client_data_hash());
        (ad, self.key.sign(&msg).to_vec())
    }
}

struct Fx {
    http: common::Listening,
    app: hexa_appliance::Appliance,
    rt: tokio::runtime::Runtime,
    root: SigningKey,
    node: SigningKey,
    roster: SignedRoster,
    tmp: tempfile::TempDir,
}

fn roster_for(root: &SigningKey, node: &PublicKey) -> SignedRoster {
    let t = now();
    sign_roster(
        &Roster {
            issuer: "Ministry of Health".into(),
            serial: 1,
            issued_at: t - 10,
            entries: vec![RosterEntry {
                facility_id: FAC_A.into(),
                facility_name: "Facility A district hospital".into(),
                node_key: node.clone(),
                not_before: t - 86_400,
                not_after: t + 86_400,
            }],
        },
        root,
    )
    .unwrap()
}

impl Fx {
    fn start() -> Fx {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("data"));
        let mut cfg = Config::defaults();
        cfg.facility.id = FAC_A.into();
        let app = hexa_appliance::start(&dir, &cfg, None).unwrap();
        let (_, secrets) = dir.open(None).unwrap();
        let node = SigningKey::from_seed(secrets.node_key.seed());
        let root = SigningKey::generate().unwrap();
        let roster = roster_for(&root, &node.public());
        hexa_appliance::export::install_roster(
            dir.root(),
            &roster,
            &root.public(),
            &node.public(),
            FAC_A,
            now(),
        )
        .unwrap();
        Fx {
            http: common::Listening::serve(app.http.clone()),
            app,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            root,
            node,
            roster,
            tmp,
        }
    }

    fn store(&self) -> &StoreHandle {
        self.app.store.handle()
    }

    fn create(&self, ctx: &AccessContext, r: Value) -> String {
        self.rt
            .block_on(self.store().create(ctx, r, None))
            .unwrap()
            .record
            .id
    }

    fn export(&self, patient: &str) -> Value {
        self.rt
            .block_on(hexa_appliance::export::export_patient(
                self.store(),
                &self.node,
                FAC_A,
                &self.roster,
                patient,
            ))
            .unwrap()
    }
}

fn sys() -> AccessContext {
    AccessContext::system(FAC_A)
}

fn reader(facility: &str, purpose: &str, justification: Option<&str>) -> AccessContext {
    AccessContext {
        client_id: format!("emr-{facility}"),
        facility_id: facility.into(),
        practitioner: None,
        purpose_of_use: purpose.into(),
        justification: justification.map(str::to_string),
        patient_session: None,
    }
}

fn source() -> Value {
    json!({"source": format!("urn:hexa:facility:{FAC_A}")})
}

fn card_device(patient: &str, card: &SoftCard, enrolled_by: &str) -> Value {
    json!({
        "resourceType": "Device", "status": "active", "meta": source(),
        "patient": {"reference": format!("Patient/{patient}")},
        "type": {"coding": [{"system": "urn:hexa:device-type", "code": "fido2-card"}]},
        "identifier": [{"system": "urn:hexa:fido2-credential-id", "value": URL_SAFE_NO_PAD.encode(&card.credential_id)}],
        "extension": [
            {"url": "urn:hexa:cose-key", "valueBase64Binary": STANDARD.encode(card.cose())},
            {"url": "urn:hexa:sign-count", "valueUnsignedInt": 0},
            {"url": "urn:hexa:enrolled-by", "valueReference": {"reference": format!("Practitioner/{enrolled_by}")}}
        ]
    })
}

fn challenge(
    fx: &Fx,
    patient: &str,
    org: &str,
    classes: &[&str],
    period: (u64, u64),
    decision: Decision,
) -> ConsentChallenge {
    let mut nonce = [0u8; 32];
    getrandom::fill(&mut nonce).unwrap();
    ConsentChallenge {
        version: 1,
        patient: format!("Patient/{patient}"),
        grantee_organization: Some(format!("Organization/{org}")),
        grantee_practitioner: None,
        purpose: "TREAT".into(),
        scope: classes.iter().map(|s| s.to_string()).collect(),
        period_start: period.0,
        period_end: period.1,
        data_period_start: None,
        data_period_end: None,
        decision,
        appliance_id: fx.node.kid(),
        nonce,
        issued_at: now(),
    }
}

fn card_evidence(
    ch: &ConsentChallenge,
    card: &mut SoftCard,
    device: &str,
    cose_of: Option<Vec<u8>>,
) -> Value {
    let (ad, sig) = card.assert(ch);
    json!({
        "format": "hexa-consent-evidence-v1",
        "method": "card",
        "challenge": URL_SAFE_NO_PAD.encode(ch.to_bytes()),
        "card": {
            "device": format!("Device/{device}/_history/1"),
            "credentialId": URL_SAFE_NO_PAD.encode(&card.credential_id),
            "coseKey": URL_SAFE_NO_PAD.encode(cose_of.unwrap_or_else(|| card.cose())),
            "authenticatorData": URL_SAFE_NO_PAD.encode(ad),
            "signature": URL_SAFE_NO_PAD.encode(sig),
            "rpId": RP_ID
        }
    })
}

fn consent(ch: &ConsentChallenge, status: &str, method: &str, evidence: &Value) -> Value {
    let mut provision = json!({
        "type": if ch.decision == Decision::Permit { "permit" } else { "deny" },
        "period": {"start": instant(ch.period_start), "end": instant(ch.period_end)},
        "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                   "reference": {"reference": ch.grantee_organization.clone().unwrap()}}],
        "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": ch.purpose}]
    });
    if !ch.scope.is_empty() {
        provision["class"] = Value::Array(
            ch.scope
                .iter()
                .map(|c| json!({"system": "http://hl7.org/fhir/resource-types", "code": c}))
                .collect(),
        );
    }
    json!({
        "resourceType": "Consent", "status": status, "meta": source(),
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": ch.patient},
        "dateTime": instant(ch.issued_at),
        "organization": [{"reference": format!("Organization/{FAC_A}")}],
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "sourceAttachment": {"contentType": "application/vnd.hexa.consent-evidence+json",
                             "data": STANDARD.encode(serde_json::to_vec(evidence).unwrap()),
                             "title": "hexa consent evidence v1"},
        "extension": [{"url": "urn:hexa:consent-assurance", "valueCode": method}],
        "provision": provision
    })
}

/// What `populate` made.
struct World {
    patient: String,
    observation: String,
    condition: String,
    card_consent: String,
}

/// A practitioner with a key, a patient with an Observation and a Condition, an enrolled
/// card and fingerprint, a card consent for fac-b (Observations), a fingerprint consent for
/// fac-c countersigned by the practitioner, reads by fac-b under consent, an emergency read
/// by fac-d, an author read, then the card consent's revocation.
fn populate(fx: &Fx) -> World {
    let worker_key = SigningKey::generate().unwrap();
    let practitioner = fx.create(
        &sys(),
        json!({"resourceType": "Practitioner", "meta": source(), "name": [{"family": "Uwase"}],
               "extension": [{"url": "urn:hexa:public-jwk", "valueString": worker_key.public().to_jwk().to_string()}]}),
    );
    let patient = fx.create(
        &sys(),
        json!({"resourceType": "Patient", "meta": source(), "name": [{"family": "Mukamana", "given": ["Aline"]}],
               "birthDate": "1990-04-02", "gender": "female"}),
    );
    let subject = json!({"reference": format!("Patient/{patient}")});
    let observation = fx.create(
        &sys(),
        json!({"resourceType": "Observation", "meta": source(), "status": "final", "subject": subject,
               "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
               "valueQuantity": {"value": 72, "unit": "/min"}}),
    );
    let condition = fx.create(
        &sys(),
        json!({"resourceType": "Condition", "meta": source(), "subject": subject,
               "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]}}),
    );
    let mut card = SoftCard::new();
    let device = fx.create(&sys(), card_device(&patient, &card, &practitioner));
    let finger = fx.create(
        &sys(),
        json!({"resourceType": "Device", "status": "active", "meta": source(),
               "patient": {"reference": format!("Patient/{patient}")},
               "type": {"coding": [{"system": "urn:hexa:device-type", "code": "fingerprint-template"}]},
               "identifier": [{"system": "urn:hexa:fingerprint-template", "value": "7"}]}),
    );
    let t = now();
    let period = (t - 60, t + 3600);

    // Card consent: fac-b may read Observations for treatment.
    let ch = challenge(
        fx,
        &patient,
        "fac-b",
        &["Observation"],
        period,
        Decision::Permit,
    );
    let ev = card_evidence(&ch, &mut card, &device, None);
    let card_consent = fx.create(&sys(), consent(&ch, "active", "card", &ev));

    // Fingerprint consent for fac-c: proposed, then countersigned (version 2, active).
    let ch = challenge(fx, &patient, "fac-c", &[], period, Decision::Permit);
    let mut ev = json!({
        "format": "hexa-consent-evidence-v1", "method": "fingerprint",
        "challenge": URL_SAFE_NO_PAD.encode(ch.to_bytes()),
        "fingerprint": {"device": format!("Device/{finger}/_history/1"), "templateId": 7, "matchScore": 120}
    });
    let fp = fx.create(&sys(), consent(&ch, "proposed", "fingerprint", &ev));
    ev["countersignature"] = json!({
        "practitioner": format!("Practitioner/{practitioner}"),
        "kid": worker_key.kid(),
        "jws": jws::sign_detached(&worker_key, &ch.to_bytes())
    });
    let mut active = consent(&ch, "active", "fingerprint", &ev);
    active["id"] = json!(fp);
    fx.rt
        .block_on(
            fx.store()
                .update(&sys(), "Consent", &fp, active, Some(1), None),
        )
        .unwrap();

    // Reads: fac-b under the card consent (read and search), fac-d in an emergency, fac-a
    // as the author.
    let b = reader("fac-b", "TREAT", None);
    fx.rt
        .block_on(fx.store().read(&b, "Observation", &observation))
        .unwrap();
    let page = fx
        .rt
        .block_on(fx.store().search(
            &b,
            "Observation",
            &[("patient".to_string(), format!("Patient/{patient}"))],
        ))
        .unwrap();
    assert_eq!(page.total, 1);
    let d = reader(
        "fac-d",
        "ETREAT",
        Some("unconscious on arrival at the emergency ward, no card"),
    );
    fx.rt
        .block_on(fx.store().read(&d, "Condition", &condition))
        .unwrap();
    fx.rt
        .block_on(
            fx.store()
                .read(&reader(FAC_A, "TREAT", None), "Condition", &condition),
        )
        .unwrap();

    // Revocation of the card consent: a deny ceremony storing version 2, inactive.
    let mut rch = challenge(
        fx,
        &patient,
        "fac-b",
        &["Observation"],
        period,
        Decision::Deny,
    );
    rch.issued_at = now();
    let mut rev = card_evidence(&rch, &mut card, &device, None);
    rev["revokes"] = json!(format!("Consent/{card_consent}/_history/1"));
    let mut revoked = consent(
        &ch_with_decision(&rch, Decision::Permit),
        "inactive",
        "card",
        &rev,
    );
    revoked["id"] = json!(card_consent);
    fx.rt
        .block_on(
            fx.store()
                .update(&sys(), "Consent", &card_consent, revoked, Some(1), None),
        )
        .unwrap();
    World {
        patient,
        observation,
        condition,
        card_consent,
    }
}

/// The revoked version keeps the permit provision it revokes (only its status changes).
fn ch_with_decision(ch: &ConsentChallenge, d: Decision) -> ConsentChallenge {
    let mut c = ch.clone();
    c.decision = d;
    c
}

fn verify(fx: &Fx, bundle: &Value) -> Report {
    verify_export(bundle, &fx.root.public(), now())
}

fn entries_mut(b: &mut Value) -> &mut Vec<Value> {
    b["entry"].as_array_mut().unwrap()
}

fn audit_positions(b: &Value) -> Vec<usize> {
    b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .filter(|(_, e)| e["resource"]["resourceType"] == "AuditEvent")
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn export_verifies_and_every_tamper_is_named() {
    let fx = Fx::start();
    let w = populate(&fx);
    let bundle = fx.export(&w.patient);
    let report = verify(&fx, &bundle);
    assert!(report.ok(), "{report}");
    let c = &report.counts;
    // Patient, Observation, Condition, 2 Devices, 2 Consents x 2 versions, Practitioner.
    assert!(c.records >= 10, "{report}");
    assert_eq!(c.consents, 4, "{report}");
    assert!(c.audit_events >= 10, "{report}");
    assert!(c.disclosures_covered >= 3, "{report}");
    assert_eq!(c.emergency, 1, "{report}");
    let text = report.to_string();
    assert!(
        text.contains("EMERGENCY access by Organization/fac-d"),
        "{text}"
    );
    assert!(text.contains("RESULT: OK"), "{text}");
    // The store records the basis of every disclosure: nothing had to be inferred.
    assert!(!text.contains("inferred"), "{text}");

    // An edited resource: the Observation's value changed after signing.
    let mut t = bundle.clone();
    for e in entries_mut(&mut t) {
        if e["resource"]["resourceType"] == "Observation" {
            e["resource"]["valueQuantity"]["value"] = json!(140);
        }
    }
    let r = verify(&fx, &t);
    assert!(
        r.has_failure(
            Code::RecordSignature,
            &format!("Observation/{}", w.observation)
        ),
        "{r}"
    );

    // A removed audit entry: the emergency read's AuditEvent is dropped.
    let mut t = bundle.clone();
    let pos = entries_mut(&mut t)
        .iter()
        .position(|e| e["resource"]["purposeOfEvent"][0]["coding"][0]["code"] == "ETREAT")
        .unwrap();
    let removed = entries_mut(&mut t).remove(pos);
    let index = removed["extension"][0]["extension"][0]["valueString"]
        .as_str()
        .unwrap()
        .to_string();
    let r = verify(&fx, &t);
    assert!(
        r.has_failure(Code::AuditSet, &format!("log index {index}")),
        "{r}"
    );
    assert_eq!(r.counts.emergency, 0);

    // Reordered audit entries: two events swap their log positions.
    let mut t = bundle.clone();
    let p = audit_positions(&t);
    let (i, j) = (p[1], p[3]);
    let ext_i = t["entry"][i]["extension"].clone();
    let ext_j = t["entry"][j]["extension"].clone();
    t["entry"][i]["extension"] = ext_j;
    t["entry"][j]["extension"] = ext_i;
    let r = verify(&fx, &t);
    let moved: Vec<_> = r
        .failures()
        .filter(|f| f.code == Code::AuditInclusion)
        .collect();
    assert_eq!(moved.len(), 2, "{r}");

    // A node key not in the roster: the roster (root-signed) names another key for fac-a.
    let mut t = bundle.clone();
    let other = roster_for(&fx.root, &SigningKey::generate().unwrap().public());
    for e in entries_mut(&mut t) {
        if e["fullUrl"] == ROSTER_URL {
            e["resource"]["data"] = json!(STANDARD.encode(serde_json::to_vec(&other).unwrap()));
        }
    }
    let r = verify(&fx, &t);
    assert!(r.has_failure(Code::KeyNotInRoster, "manifest"), "{r}");
    assert!(
        r.failures().any(|f| f.message.contains(&fx.node.kid())),
        "{r}"
    );

    // A wrong root key.
    let r = verify_export(&bundle, &SigningKey::generate().unwrap().public(), now());
    assert!(r.has_failure(Code::Roster, "roster"), "{r}");
    assert!(!r.ok());

    // A removed consent: fac-b's reads are no longer covered.
    let mut t = bundle.clone();
    let cref = format!("Consent/{}/", w.card_consent);
    entries_mut(&mut t).retain(|e| {
        !(e["resource"]["resourceType"] == "Consent"
            && e["fullUrl"].as_str().unwrap().contains(&cref))
    });
    let r = verify(&fx, &t);
    assert!(r.has_failure(Code::RecordSet, &cref), "{r}");
    assert!(
        r.failures()
            .any(|f| f.code == Code::Disclosure && f.message.contains("Organization/fac-b")),
        "{r}"
    );

    // A forged consent stored for another patient: the assertion is by a key that is not
    // the enrolled credential.
    let p2 = fx.create(
        &sys(),
        json!({"resourceType": "Patient", "meta": source(), "name": [{"family": "Habimana"}]}),
    );
    let mut enrolled = SoftCard::new();
    let device = fx.create(&sys(), card_device(&p2, &enrolled, "nobody"));
    let mut forger = SoftCard::new();
    forger.credential_id = enrolled.credential_id.clone();
    let t0 = now();
    let ch = challenge(&fx, &p2, "fac-b", &[], (t0 - 60, t0 + 60), Decision::Permit);
    let ev = card_evidence(&ch, &mut forger, &device, None);
    let forged = fx.create(&sys(), consent(&ch, "active", "card", &ev));
    let r = verify(&fx, &fx.export(&p2));
    assert!(
        r.has_failure(Code::ConsentEvidence, &format!("Consent/{forged}")),
        "{r}"
    );
    assert!(r.to_string().contains("forged consent"), "{r}");
    // The same forgery claiming the enrolled key: the assertion signature fails instead.
    let ch = challenge(&fx, &p2, "fac-b", &[], (t0 - 60, t0 + 60), Decision::Permit);
    let ev = card_evidence(&ch, &mut forger, &device, Some(enrolled.cose()));
    let forged2 = fx.create(&sys(), consent(&ch, "active", "card", &ev));
    let r = verify(&fx, &fx.export(&p2));
    assert!(
        r.failures().any(|f| f.subject.contains(&forged2)
            && f.message.contains("assertion signature does not verify")),
        "{r}"
    );

    // A consent naming an enrolment version later superseded only by a counter bump is
    // fine; one made after the card was revoked is not.
    let mut bumped = card_device(&p2, &enrolled, "nobody");
    bumped["id"] = json!(device);
    bumped["extension"][1]["valueUnsignedInt"] = json!(5);
    fx.rt
        .block_on(
            fx.store()
                .update(&sys(), "Device", &device, bumped.clone(), Some(1), None),
        )
        .unwrap();
    // (issued now: before the revocation below, at or after the bump)
    let ch = challenge(&fx, &p2, "fac-b", &[], (t0 - 60, t0 + 60), Decision::Permit);
    let ev = card_evidence(&ch, &mut enrolled, &device, None);
    let after_bump = fx.create(&sys(), consent(&ch, "active", "card", &ev));
    bumped["status"] = json!("inactive");
    fx.rt
        .block_on(
            fx.store()
                .update(&sys(), "Device", &device, bumped, Some(2), None),
        )
        .unwrap();
    // (issued in the next second: after the revocation's commit)
    let mut ch = challenge(&fx, &p2, "fac-b", &[], (t0 - 60, t0 + 60), Decision::Permit);
    ch.issued_at = now() + 1;
    let ev = card_evidence(&ch, &mut enrolled, &device, None);
    let after_revoke = fx.create(&sys(), consent(&ch, "active", "card", &ev));
    let r = verify(&fx, &fx.export(&p2));
    assert!(
        !r.failures().any(|f| f.subject.contains(&after_bump)),
        "{r}"
    );
    assert!(
        r.failures()
            .any(|f| f.subject.contains(&after_revoke)
                && f.message.contains("superseded by version 3")),
        "{r}"
    );
}

/// One HTTP request over a fresh connection: (status, headers, body).
fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut h = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("\r\n");
    s.write_all(h.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    (
        head[9..12].parse().unwrap(),
        head,
        raw[split + 4..].to_vec(),
    )
}

/// Registers a client of `facility` and exchanges a signed assertion for a bearer token.
fn token(fx: &Fx, client_id: &str, facility: &str, scopes: &str) -> String {
    let key = SigningKey::generate().unwrap();
    fx.app
        .auth
        .register_client(ClientRegistration {
            client_id: client_id.into(),
            facility_id: facility.into(),
            jwks: json!({"keys": [key.public().to_jwk()]}),
            scopes: scopes.into(),
        })
        .unwrap();
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    let header = b64(&json!({"alg": "EdDSA", "typ": "JWT", "kid": key.public().kid()}));
    let t = now();
    let claims = b64(
        &json!({"iss": client_id, "sub": client_id, "aud": format!("http://{}/fhir/token", fx.http.addr),
                             "iat": t, "exp": t + 120, "jti": format!("jti-{client_id}-{t}")}),
    );
    let input = format!("{header}.{claims}");
    let sig = URL_SAFE_NO_PAD.encode(key.sign(input.as_bytes()));
    let form = format!(
        "grant_type=client_credentials&scope={}&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={input}.{sig}",
        scopes
            .replace(' ', "+")
            .replace('/', "%2F")
            .replace('*', "%2A")
    );
    let (status, _, body) = http(
        fx.http.addr,
        "POST",
        "/fhir/token",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form.as_bytes(),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    format!("Bearer {}", v["access_token"].as_str().unwrap())
}

fn json_of(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(b)))
}

fn hashes(v: &Value) -> Vec<[u8; 32]> {
    v["hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            STANDARD
                .decode(h.as_str().unwrap())
                .unwrap()
                .try_into()
                .unwrap()
        })
        .collect()
}

#[test]
fn the_audit_log_is_served_with_proofs_that_verify() {
    let fx = Fx::start();
    let addr = fx.http.addr;
    let get = |path: &str, auth: Option<&str>| {
        let h: Vec<(&str, &str)> = auth.map(|a| vec![("Authorization", a)]).unwrap_or_default();
        http(addr, "GET", path, &h, b"")
    };
    // Before any checkpoint: 404 as an OperationOutcome.
    let (s, _, b) = get("/fhir/_audit/checkpoint", None);
    assert_eq!(s, 404);
    assert_eq!(json_of(&b)["resourceType"], "OperationOutcome");

    let w = populate(&fx);
    let note1 = fx
        .rt
        .block_on(fx.store().audit_checkpoint())
        .unwrap()
        .unwrap();
    let (s, head, b) = get("/fhir/_audit/checkpoint", None);
    assert_eq!(s, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain")
    );
    assert_eq!(String::from_utf8(b).unwrap(), note1);
    let origin = format!("hexa.{FAC_A}/audit");
    let verifier = NoteVerifier::new(&origin, fx.node.public());
    let cp1 = Checkpoint::parse_body(
        &open_note(&note1, std::slice::from_ref(&verifier))
            .unwrap()
            .0,
    )
    .unwrap();

    // An entry needs a token; with one of the facility named as its agent it is served
    // with the exact leaf bytes, whose inclusion proof verifies against the checkpoint.
    let (s, _, _) = get("/fhir/_audit/entry/0", None);
    assert_eq!(s, 401);
    let tok = token(&fx, "auditor-a", FAC_A, "system/AuditEvent.rs");
    // Entries whose agent is fac-a (the policy lets a facility read its own events).
    let own: Vec<u64> = (0..cp1.size)
        .filter(|i| {
            let e = fx.store().store().audit_entry(*i).unwrap();
            String::from_utf8_lossy(&e.bytes).contains("\"Organization/fac-a\"")
        })
        .collect();
    assert!(own.len() > 3);
    for index in [own[0], own[own.len() / 2], own[own.len() - 1]] {
        let (s, _, b) = get(&format!("/fhir/_audit/entry/{index}"), Some(&tok));
        assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
        let e = json_of(&b);
        let leaf = STANDARD.decode(e["leaf"].as_str().unwrap()).unwrap();
        assert_eq!(
            hexa_crypto::jcs::canonicalize(&e["resource"]).unwrap(),
            leaf,
            "the resource is the leaf"
        );
        let (s, _, b) = get(
            &format!(
                "/fhir/_audit/proof/inclusion?index={index}&size={}",
                cp1.size
            ),
            None,
        );
        assert_eq!(s, 200);
        let p = json_of(&b);
        merkle::verify_inclusion(
            &merkle::leaf_hash(&leaf),
            index,
            cp1.size,
            &hashes(&p),
            &cp1.root,
        )
        .unwrap();
        // A proof for another index does not verify this leaf.
        let other = (index + 1) % cp1.size;
        let (_, _, b) = get(
            &format!(
                "/fhir/_audit/proof/inclusion?index={other}&size={}",
                cp1.size
            ),
            None,
        );
        assert!(
            merkle::verify_inclusion(
                &merkle::leaf_hash(&leaf),
                other,
                cp1.size,
                &hashes(&json_of(&b)),
                &cp1.root
            )
            .is_err()
        );
    }

    // The log grows; the two checkpoints are consistent.
    fx.rt
        .block_on(
            fx.store()
                .read(&reader(FAC_A, "TREAT", None), "Patient", &w.patient),
        )
        .unwrap();
    let note2 = fx
        .rt
        .block_on(fx.store().audit_checkpoint())
        .unwrap()
        .unwrap();
    let cp2 = Checkpoint::parse_body(&open_note(&note2, &[verifier]).unwrap().0).unwrap();
    assert!(cp2.size > cp1.size);
    let (s, _, b) = get(
        &format!(
            "/fhir/_audit/proof/consistency?old={}&new={}",
            cp1.size, cp2.size
        ),
        None,
    );
    assert_eq!(s, 200);
    merkle::verify_consistency(
        cp1.size,
        cp2.size,
        &cp1.root,
        &cp2.root,
        &hashes(&json_of(&b)),
    )
    .unwrap();

    // Limits and errors, each an OperationOutcome.
    let big = cp2.size + 1_000_000;
    for (path, status) in [
        (
            format!("/fhir/_audit/proof/inclusion?index={0}&size={0}", cp1.size),
            400,
        ),
        (
            format!("/fhir/_audit/proof/inclusion?index=0&size={big}"),
            404,
        ),
        (
            "/fhir/_audit/proof/inclusion?index=x&size=3".to_string(),
            400,
        ),
        (
            "/fhir/_audit/proof/inclusion?index=99999999999999999999&size=3".to_string(),
            400,
        ),
        ("/fhir/_audit/proof/inclusion?index=0".to_string(), 400),
        (
            "/fhir/_audit/proof/inclusion?index=0&size=2&extra=1".to_string(),
            400,
        ),
        (
            "/fhir/_audit/proof/consistency?old=5&new=2".to_string(),
            400,
        ),
        (
            format!("/fhir/_audit/proof/consistency?old=1&new={big}"),
            404,
        ),
        ("/fhir/_audit/nothing".to_string(), 401),
    ] {
        let (s, _, b) = get(&path, None);
        assert_eq!(s, status, "{path}: {}", String::from_utf8_lossy(&b));
        assert_eq!(json_of(&b)["resourceType"], "OperationOutcome", "{path}");
    }
    let (s, _, _) = get(&format!("/fhir/_audit/entry/{big}"), Some(&tok));
    assert_eq!(s, 404);
    let (s, _, _) = get("/fhir/_audit/entry/-1", Some(&tok));
    assert_eq!(s, 400);
    let (s, _, _) = http(addr, "POST", "/fhir/_audit/checkpoint", &[], b"");
    assert_eq!(s, 405);
    // Another facility may read its own events, not fac-a's.
    let tok_b = token(&fx, "auditor-b", "fac-b", "system/AuditEvent.rs");
    let own_b = (0..cp1.size)
        .find(|i| {
            let e = fx.store().store().audit_entry(*i).unwrap();
            String::from_utf8_lossy(&e.bytes).contains("\"Organization/fac-b\"")
        })
        .unwrap();
    let (s, _, b) = get(&format!("/fhir/_audit/entry/{own_b}"), Some(&tok_b));
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    let (s, _, b) = get(&format!("/fhir/_audit/entry/{}", own[0]), Some(&tok_b));
    assert_eq!(s, 403, "{}", String::from_utf8_lossy(&b));
    assert!(!String::from_utf8_lossy(&b).contains(&w.patient));
    // A token without AuditEvent scopes gets 403.
    let tok2 = token(&fx, "emr-obs", FAC_A, "system/Observation.rs");
    let (s, _, _) = get("/fhir/_audit/entry/0", Some(&tok2));
    assert_eq!(s, 403);
}

#[test]
fn hexa_export_and_verify_on_the_command_line() {
    let fx = Fx::start();
    let w = populate(&fx);
    let root_pub = fx.root.public();
    let tmp = tempfile::tempdir().unwrap();
    let data = fx.tmp.path().join("data");
    // The CLI's own roster installation (replacing the one the fixture installed).
    let roster_file = tmp.path().join("roster.json");
    std::fs::write(&roster_file, serde_json::to_vec(&fx.roster).unwrap()).unwrap();
    let root_file = tmp.path().join("root.jwk");
    std::fs::write(&root_file, root_pub.to_jwk().to_string()).unwrap();
    let Fx { http, app, .. } = fx;
    drop(http);
    drop(app);
    let hexa = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_hexa"))
            .arg("--data-dir")
            .arg(&data)
            .args(args)
            .output()
            .unwrap()
    };
    let o = hexa(&[
        "roster",
        "install",
        roster_file.to_str().unwrap(),
        "--root",
        root_file.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // A roster signed by another root is refused.
    let wrong_root = SigningKey::generate()
        .unwrap()
        .public()
        .to_jwk()
        .to_string();
    let o = hexa(&[
        "roster",
        "install",
        roster_file.to_str().unwrap(),
        "--root",
        &wrong_root,
    ]);
    assert!(!o.status.success());

    let out = tmp.path().join("export.json");
    let o = hexa(&[
        "export",
        "--patient",
        &w.patient,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // verify needs no data directory: run it from elsewhere with the raw key form too.
    let raw_root = URL_SAFE_NO_PAD.encode(root_pub.as_bytes());
    for root in [root_file.to_str().unwrap(), raw_root.as_str()] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_hexa"))
            // `--root=` keeps a base64url key starting with '-' from parsing as a flag.
            .args(["verify", out.to_str().unwrap(), &format!("--root={root}")])
            .current_dir(tmp.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(text.contains("RESULT: OK"), "{text}");
    }
    // Tampered: exit status 1 and the failure named.
    let mut b: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    for e in entries_mut(&mut b) {
        if e["resource"]["resourceType"] == "Condition" {
            e["resource"]["code"]["coding"][0]["code"] = json!("38341003");
        }
    }
    let bad = tmp.path().join("tampered.json");
    std::fs::write(&bad, serde_json::to_vec(&b).unwrap()).unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_hexa"))
        .args([
            "verify",
            bad.to_str().unwrap(),
            "--root",
            root_file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(text.contains("[record-signature]"), "{text}");
    assert!(
        text.contains(&format!("Condition/{}", w.condition)),
        "{text}"
    );
}

/// An authenticated FHIR call over HTTP; returns (status, JSON body or Null).
fn fhir(fx: &Fx, auth: &str, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let b = if body.is_null() {
        Vec::new()
    } else {
        serde_json::to_vec(body).unwrap()
    };
    let (s, _, out) = http(
        fx.http.addr,
        method,
        path,
        &[
            ("Authorization", auth),
            ("Content-Type", "application/fhir+json"),
        ],
        &b,
    );
    (s, serde_json::from_slice(&out).unwrap_or(Value::Null))
}

fn sim(fx: &Fx, path: &str, body: Value) -> Value {
    let (s, _, out) = http(
        fx.http.addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    );
    assert!(
        s == 201 || s == 204,
        "{path}: {}",
        String::from_utf8_lossy(&out)
    );
    serde_json::from_slice(&out).unwrap_or(Value::Null)
}

fn params(p: Vec<Value>) -> Value {
    json!({"resourceType": "Parameters", "parameter": p})
}

/// The consents the appliance's own ceremonies store (card Ed25519 and ES256, revocation,
/// card replacement, fingerprint with countersignature) verify offline, and the reads
/// they allowed are covered.
#[test]
fn consents_made_by_the_real_ceremonies_verify() {
    let fx = Fx::start();
    let all = token(&fx, "emr-a", FAC_A, "system/*.cruds");
    let b = token(&fx, "emr-b", "fac-b", "system/*.rs");
    let created = |ty: &str, body: Value| {
        let (s, v) = fhir(&fx, &all, "POST", &format!("/fhir/{ty}"), &body);
        assert_eq!(s, 201, "{v}");
        v["id"].as_str().unwrap().to_string()
    };
    let nurse = SigningKey::generate().unwrap();
    let nurse_id = created(
        "Practitioner",
        json!({"resourceType": "Practitioner", "name": [{"family": "Nurse"}],
               "extension": [{"url": "urn:hexa:public-jwk", "valueString": nurse.public().to_jwk().to_string()}]}),
    );
    let p = created(
        "Patient",
        json!({"resourceType": "Patient", "name": [{"family": "Ceremony", "given": ["Real"]}]}),
    );
    let obs = created(
        "Observation",
        json!({"resourceType": "Observation", "status": "final", "subject": {"reference": format!("Patient/{p}")},
               "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}, "valueQuantity": {"value": 80}}),
    );
    let consent = |extra: Vec<Value>| {
        let mut ps = vec![
            json!({"name": "organization", "valueReference": {"reference": "Organization/fac-b"}}),
            json!({"name": "purpose", "valueCode": "TREAT"}),
            json!({"name": "class", "valueCode": "Observation"}),
            json!({"name": "periodEnd", "valueDateTime": "2099-01-01T00:00:00Z"}),
            json!({"name": "timeoutSeconds", "valueInteger": 10}),
        ];
        ps.retain(|d| !extra.iter().any(|e| e["name"] == d["name"]));
        ps.extend(extra);
        let (s, v) = fhir(
            &fx,
            &all,
            "POST",
            &format!("/fhir/Patient/{p}/$consent"),
            &params(ps),
        );
        assert_eq!(s, 201, "{v}");
        v
    };
    let card = sim(&fx, "/sim/cards", json!({"model": "ed25519"}))["card"].clone();
    sim(&fx, "/sim/reader/present", json!({"card": card}));
    let (s, dev) = fhir(
        &fx,
        &all,
        "POST",
        &format!("/fhir/Patient/{p}/$enroll-card"),
        &params(vec![]),
    );
    assert_eq!(s, 201, "{dev}");
    let c1 = consent(vec![]);
    let c1_id = c1["id"].as_str().unwrap();
    // fac-b reads under the consent, then the patient revokes it.
    let (s, _) = fhir(
        &fx,
        &b,
        "GET",
        &format!("/fhir/Observation/{obs}"),
        &Value::Null,
    );
    assert_eq!(s, 200);
    let (s, v) = fhir(
        &fx,
        &all,
        "POST",
        &format!("/fhir/Consent/{c1_id}/$revoke"),
        &params(vec![]),
    );
    assert_eq!(s, 200, "{v}");
    let (s, _) = fhir(
        &fx,
        &b,
        "GET",
        &format!("/fhir/Observation/{obs}"),
        &Value::Null,
    );
    assert_eq!(s, 403);
    // The card is replaced by an ES256-only card, which consents again.
    let card2 = sim(&fx, "/sim/cards", json!({"model": "es256-only"}))["card"].clone();
    sim(&fx, "/sim/reader/present", json!({"card": card2}));
    let old = dev["id"].as_str().unwrap();
    let (s, v) = fhir(
        &fx,
        &all,
        "POST",
        &format!("/fhir/Patient/{p}/$enroll-card"),
        &params(vec![
            json!({"name": "replaces", "valueReference": {"reference": format!("Device/{old}")}}),
        ]),
    );
    assert_eq!(s, 201, "{v}");
    consent(vec![]);
    let (s, _) = fhir(
        &fx,
        &b,
        "GET",
        &format!("/fhir/Observation/{obs}"),
        &Value::Null,
    );
    assert_eq!(s, 200);
    // A fingerprint consent, countersigned by the nurse.
    sim(&fx, "/sim/fingerprint/place", json!({"unknown": true}));
    let (s, fdev) = fhir(
        &fx,
        &all,
        "POST",
        &format!("/fhir/Patient/{p}/$enroll-finger"),
        &params(vec![
            json!({"name": "practitioner", "valueReference": {"reference": format!("Practitioner/{nurse_id}")}}),
        ]),
    );
    assert_eq!(s, 201, "{fdev}");
    let slot: u64 = fdev["identifier"][0]["value"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    sim(&fx, "/sim/fingerprint/place", json!({"template": slot}));
    let fc = consent(vec![
        json!({"name": "method", "valueCode": "finger"}),
        json!({"name": "organization", "valueReference": {"reference": "Organization/fac-c"}}),
    ]);
    let ev: Value = serde_json::from_slice(
        &STANDARD
            .decode(fc["sourceAttachment"]["data"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let ch = URL_SAFE_NO_PAD
        .decode(ev["challenge"].as_str().unwrap())
        .unwrap();
    let fc_id = fc["id"].as_str().unwrap();
    let (s, v) = fhir(
        &fx,
        &all,
        "POST",
        &format!("/fhir/Consent/{fc_id}/$countersign"),
        &params(vec![
            json!({"name": "practitioner", "valueReference": {"reference": format!("Practitioner/{nurse_id}")}}),
            json!({"name": "signature", "valueString": jws::sign_detached(&nurse, &ch)}),
        ]),
    );
    assert_eq!(s, 200, "{v}");

    // The nurse named as enroller of the finger: until she countersigns the enrolment
    // statement, the auditor is told so (a notice, not a failure).
    let fdev_id = fdev["id"].as_str().unwrap().to_string();
    let report = verify(&fx, &fx.export(&p));
    assert!(report.ok(), "{report}");
    assert_eq!(report.counts.enrolment_countersignatures, 0, "{report}");
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.code == Code::Notice && f.subject == format!("Device/{fdev_id}")),
        "{report}"
    );
    let statement = STANDARD
        .decode(
            fdev["extension"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["url"] == "urn:hexa:enrolment-statement")
                .unwrap()["valueBase64Binary"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    let (s, v) = fhir(
        &fx,
        &all,
        "POST",
        &format!("/fhir/Device/{fdev_id}/$countersign"),
        &params(vec![
            json!({"name": "practitioner", "valueReference": {"reference": format!("Practitioner/{nurse_id}")}}),
            json!({"name": "signature", "valueString": jws::sign_detached(&nurse, &statement)}),
        ]),
    );
    assert_eq!(s, 200, "{v}");

    let export = fx.export(&p);
    let report = verify(&fx, &export);
    assert!(report.ok(), "{report}");
    // Card consent v1, its revocation v2, the ES256 consent, the fingerprint consent
    // proposed then countersigned.
    assert_eq!(report.counts.consents, 5, "{report}");
    assert_eq!(report.counts.enrolment_countersignatures, 1, "{report}");
    assert!(
        report.to_string().contains("enrolments countersigned  1"),
        "{report}"
    );
    assert!(report.counts.disclosures_covered >= 2, "{report}");
    assert!(!report.to_string().contains("inferred"), "{report}");

    // Tampered exports: each is named as an enrolment-countersignature failure.
    let device_entry = |b: &mut Value, version: u64| -> usize {
        let url = format!("urn:hexa:record:Device/{fdev_id}/_history/{version}");
        entries_mut(b)
            .iter()
            .position(|e| e["fullUrl"] == url.as_str())
            .unwrap_or_else(|| panic!("no {url} in the export"))
    };
    // A countersignature forged with another key.
    let mut forged = export.clone();
    let i = device_entry(&mut forged, 2);
    let cs = ext_mut(
        &mut entries_mut(&mut forged)[i]["resource"],
        "urn:hexa:enrolment-countersignature",
    );
    cs["extension"][2]["valueString"] = json!(jws::sign_detached(
        &SigningKey::generate().unwrap(),
        &statement
    ));
    let r = verify(&fx, &forged);
    assert!(
        r.has_failure(
            Code::EnrolmentCountersignature,
            &format!("Device/{fdev_id}/_history/2")
        ),
        "{r}"
    );
    // A statement rewritten to bind the finger to another patient.
    let mut moved = export.clone();
    let i = device_entry(&mut moved, 1);
    let mut st: Value = serde_json::from_slice(&statement).unwrap();
    st["patient"] = json!("Patient/someone-else");
    let st = STANDARD.encode(hexa_crypto::jcs::canonicalize(&st).unwrap());
    ext_mut(
        &mut entries_mut(&mut moved)[i]["resource"],
        "urn:hexa:enrolment-statement",
    )["valueBase64Binary"] = json!(st);
    let r = verify(&fx, &moved);
    assert!(
        r.has_failure(
            Code::EnrolmentCountersignature,
            &format!("Device/{fdev_id}/_history/1")
        ),
        "{r}"
    );
    assert!(r.to_string().contains("Patient/someone-else"), "{r}");
}

/// The extension of `r` with `url`.
fn ext_mut<'a>(r: &'a mut Value, url: &str) -> &'a mut Value {
    r["extension"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|e| e["url"] == url)
        .unwrap()
}

/// A record disclosed and later deleted is still the patient's: the export carries every
/// version of it (the deletion marked), found through the patient's AuditEvents, and the
/// export verifies — the disclosure to fac-b is still covered. Records of other patients
/// named by the same AuditEvents (a search returning several patients) stay out.
#[test]
fn deleted_records_are_exported_with_their_history() {
    let fx = Fx::start();
    let w = populate(&fx);
    // Another patient's Observation, read by fac-b in the same search as ours would be:
    // the author reads both in one search (one AuditEvent naming both patients).
    let other = fx.create(
        &sys(),
        json!({"resourceType": "Patient", "meta": source(), "name": [{"family": "Other"}]}),
    );
    let other_obs = fx.create(
        &sys(),
        json!({"resourceType": "Observation", "meta": source(), "status": "final",
               "subject": {"reference": format!("Patient/{other}")},
               "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}}),
    );
    let page = fx
        .rt
        .block_on(fx.store().search(
            &reader(FAC_A, "TREAT", None),
            "Observation",
            &[("code".to_string(), "http://loinc.org|8867-4".to_string())],
        ))
        .unwrap();
    assert_eq!(page.total, 2);
    fx.rt
        .block_on(fx.store().delete(&sys(), "Observation", &w.observation))
        .unwrap();
    let bundle = fx.export(&w.patient);
    let urls: Vec<&str> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["fullUrl"].as_str())
        .collect();
    let obs = format!("urn:hexa:record:Observation/{}/_history/", w.observation);
    assert!(urls.contains(&format!("{obs}1").as_str()), "{urls:?}");
    assert!(urls.contains(&format!("{obs}2").as_str()), "{urls:?}");
    assert!(
        !urls
            .iter()
            .any(|u| u.contains(&other_obs) || u.contains(&other)),
        "another patient's records leaked into the export: {urls:?}"
    );
    let report = verify(&fx, &bundle);
    assert!(report.ok(), "{report}");
    assert!(report.counts.disclosures_covered >= 3, "{report}");
    assert!(!report.to_string().contains("inferred"), "{report}");
}
