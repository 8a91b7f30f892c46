//! End-to-end tests of the consent ceremonies over real sockets on 127.0.0.1, with the
//! simulated reader driven through `/sim/*`: card enrolment (Ed25519 and ES256 cards),
//! consent, wrong / unenrolled / other patient's card, replayed, stale and wrong-appliance
//! assertions, timeout, revocation, fingerprint consent with countersignature, lost and
//! replaced cards, the front desk's request list, login and the patient's access list, and
//! the stored evidence checked by Yubico's Python `fido2` (`tests/interop/verify_fido2.py`).

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hexa_actors::device::{Assert, Timed};
use hexa_appliance::auth::ClientRegistration;
use hexa_appliance::config::Config;
use hexa_appliance::consent::CeremonyError;
use hexa_appliance::consent::records::Terms;
use hexa_appliance::datadir::DataDir;
use hexa_crypto::consent::{ConsentChallenge, Decision};
use hexa_crypto::keys::SigningKey;
use hexa_hal::ctap2::Assertion;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod common;

static JTI: AtomicU64 = AtomicU64::new(0);

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct Resp {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
    fn code(&self) -> String {
        let v = self.json();
        assert_eq!(v["resourceType"], "OperationOutcome", "{v}");
        v["issue"][0]["details"]["coding"][0]["code"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

/// Field order matters: the HTTP server stops before the appliance closes.
struct Server {
    http: common::Listening,
    app: hexa_appliance::Appliance,
    _dir: tempfile::TempDir,
    all: String,
    read: String,
}

fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
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
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response");
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    Resp {
        status: head[9..12].parse().unwrap(),
        head,
        body: raw[split + 4..].to_vec(),
    }
}

impl Server {
    fn start() -> Server {
        Server::start_with(&Config::defaults())
    }

    fn start_with(config: &Config) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("data"));
        let app = hexa_appliance::start(&dir, config, None).unwrap();
        let mut s = Server {
            http: common::Listening::serve(app.http.clone()),
            app,
            _dir: tmp,
            all: String::new(),
            read: String::new(),
        };
        // The hospital's own EMR: its facility is the appliance's, which authors (through
        // the ceremonies) the Consents and enrolment Devices it then reads back.
        s.all = s.token("emr-all", "demo-facility", "system/*.cruds");
        s.read = s.token("emr-read", "demo-facility", "system/*.rs");
        s
    }

    /// Registers a client with an Ed25519 key and exchanges an assertion for a token.
    fn token(&self, client_id: &str, facility: &str, scopes: &str) -> String {
        let key = SigningKey::generate().unwrap();
        let public = key.public();
        self.app
            .auth
            .register_client(ClientRegistration {
                client_id: client_id.into(),
                facility_id: facility.into(),
                jwks: json!({"keys": [public.to_jwk()]}),
                scopes: scopes.into(),
            })
            .unwrap();
        let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
        let header = b64(&json!({"alg": "EdDSA", "typ": "JWT", "kid": public.kid()}));
        let t = now();
        let claims = b64(&json!({
            "iss": client_id, "sub": client_id, "aud": format!("http://{}/fhir/token", self.http.addr),
            "iat": t, "exp": t + 120,
            "jti": format!("jti-{t}-{}", JTI.fetch_add(1, Ordering::Relaxed)),
        }));
        let input = format!("{header}.{claims}");
        let sig = URL_SAFE_NO_PAD.encode(key.sign(input.as_bytes()));
        let form = format!(
            "grant_type=client_credentials&scope={}&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={input}.{sig}",
            scopes
                .replace(' ', "+")
                .replace('/', "%2F")
                .replace('*', "%2A")
        );
        let r = self.req(
            "POST",
            "/fhir/token",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            form.as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        format!("Bearer {}", r.json()["access_token"].as_str().unwrap())
    }

    fn req(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        request(self.http.addr, method, path, headers, body)
    }

    fn fhir(&self, method: &str, path: &str, body: &Value) -> Resp {
        self.fhir_as(&self.all, method, path, body)
    }

    fn fhir_as(&self, auth: &str, method: &str, path: &str, body: &Value) -> Resp {
        let b = if body.is_null() {
            Vec::new()
        } else {
            serde_json::to_vec(body).unwrap()
        };
        self.req(
            method,
            path,
            &[
                ("Authorization", auth),
                ("Content-Type", "application/fhir+json"),
            ],
            &b,
        )
    }

    fn sim(&self, path: &str, body: Value) -> Resp {
        let r = self.req(
            "POST",
            path,
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        );
        assert!(
            r.status == 201 || r.status == 204,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        r
    }

    fn new_card(&self, model: &str) -> u32 {
        let r = self.sim("/sim/cards", json!({"model": model}));
        r.json()["card"].as_u64().unwrap() as u32
    }

    fn present(&self, card: u32) {
        self.sim("/sim/reader/present", json!({"card": card}));
    }

    fn lift(&self) {
        self.sim("/sim/reader/lift", json!({}));
    }

    fn patient(&self, family: &str) -> String {
        let r = self.fhir(
            "POST",
            "/fhir/Patient",
            &json!({"resourceType": "Patient", "name": [{"family": family, "given": ["Test"]}]}),
        );
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        r.json()["id"].as_str().unwrap().to_owned()
    }

    /// Enrols `card` (placed on the reader) for `patient`; returns the Device.
    fn enrol(&self, patient: &str, card: u32) -> Value {
        self.present(card);
        let r = self.fhir(
            "POST",
            &format!("/fhir/Patient/{patient}/$enroll-card"),
            &params(vec![]),
        );
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        r.json()
    }

    fn consent(&self, patient: &str, extra: Vec<Value>) -> Resp {
        let mut p = vec![
            json!({"name": "organization", "valueReference": {"reference": "Organization/fac-b"}}),
            json!({"name": "purpose", "valueCode": "TREAT"}),
            json!({"name": "class", "valueCode": "Observation"}),
            json!({"name": "periodEnd", "valueDateTime": "2099-01-01T00:00:00Z"}),
            json!({"name": "timeoutSeconds", "valueInteger": 10}),
        ];
        // A parameter given in `extra` replaces the default of the same name.
        p.retain(|d| {
            !extra
                .iter()
                .any(|e| e["name"] == d["name"] && e["name"] != "class")
        });
        p.extend(extra);
        self.fhir(
            "POST",
            &format!("/fhir/Patient/{patient}/$consent"),
            &params(p),
        )
    }

    fn ceremonies(&self) -> &hexa_appliance::consent::Ceremonies {
        self.app.http.ceremonies().expect("ceremonies are wired")
    }
}

fn params(p: Vec<Value>) -> Value {
    json!({"resourceType": "Parameters", "parameter": p})
}

fn evidence(consent: &Value) -> Value {
    let data = STANDARD
        .decode(consent["sourceAttachment"]["data"].as_str().unwrap())
        .unwrap();
    serde_json::from_slice(&data).unwrap()
}

fn challenge_of(ev: &Value) -> (Vec<u8>, ConsentChallenge) {
    let b = URL_SAFE_NO_PAD
        .decode(ev["challenge"].as_str().unwrap())
        .unwrap();
    let ch = ConsentChallenge::from_bytes(&b).unwrap();
    (b, ch)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn ext<'a>(r: &'a Value, url: &str) -> &'a Value {
    r["extension"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["url"] == url)
        .unwrap_or_else(|| panic!("no extension {url} in {r}"))
}

#[test]
fn card_enrolment_and_consent_with_both_card_models() {
    let s = Server::start();
    for (model, alg) in [("ed25519", -8), ("es256-only", -7)] {
        let p = s.patient(model);
        let card = s.new_card(model);
        let dev = s.enrol(&p, card);
        assert_eq!(dev["status"], "active");
        assert_eq!(dev["patient"]["reference"], format!("Patient/{p}"));
        assert_eq!(dev["type"]["coding"][0]["code"], "fido2-card");
        assert_eq!(
            dev["identifier"][0]["system"],
            "urn:hexa:fido2-credential-id"
        );
        let cose = STANDARD
            .decode(
                ext(&dev, "urn:hexa:cose-key")["valueBase64Binary"]
                    .as_str()
                    .unwrap(),
            )
            .unwrap();
        let key = hexa_crypto::consent::CoseKey::from_cbor(&cose).unwrap();
        assert_eq!(key.alg(), alg, "{model}");

        let r = s.consent(&p, vec![]);
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        assert!(r.header("location").unwrap().contains("/fhir/Consent/"));
        let c = r.json();
        assert_eq!(c["status"], "active");
        assert_eq!(c["patient"]["reference"], format!("Patient/{p}"));
        assert_eq!(c["provision"]["type"], "permit");
        assert_eq!(
            c["provision"]["actor"][0]["reference"]["reference"],
            "Organization/fac-b"
        );
        assert_eq!(c["provision"]["class"][0]["code"], "Observation");
        assert_eq!(c["provision"]["purpose"][0]["code"], "TREAT");
        assert_eq!(c["provision"]["period"]["end"], "2099-01-01T00:00:00Z");
        assert_eq!(ext(&c, "urn:hexa:consent-assurance")["valueCode"], "card");
        assert_eq!(
            c["organization"][0]["reference"],
            "Organization/demo-facility"
        );
        let ev = evidence(&c);
        assert_eq!(ev["format"], "hexa-consent-evidence-v1");
        assert_eq!(ev["method"], "card");
        let (_, ch) = challenge_of(&ev);
        assert_eq!(ch.patient, format!("Patient/{p}"));
        assert_eq!(
            ch.grantee_organization.as_deref(),
            Some("Organization/fac-b")
        );
        assert_eq!(ch.scope, ["Observation"]);
        assert_eq!(ch.appliance_id, s.app.node_kid);
        assert_eq!(ch.decision, Decision::Permit);
        assert_eq!(
            ev["card"]["device"],
            format!("Device/{}/_history/1", dev["id"].as_str().unwrap())
        );
        // An auditor re-verifies offline: now = issued_at, last counter 0.
        let card_ev = &ev["card"];
        let a = hexa_crypto::consent::AssertionEvidence {
            authenticator_data: URL_SAFE_NO_PAD
                .decode(card_ev["authenticatorData"].as_str().unwrap())
                .unwrap(),
            signature: URL_SAFE_NO_PAD
                .decode(card_ev["signature"].as_str().unwrap())
                .unwrap(),
            credential_id: URL_SAFE_NO_PAD
                .decode(card_ev["credentialId"].as_str().unwrap())
                .unwrap(),
        };
        let v = hexa_crypto::consent::verify_assertion(
            &ch,
            &key,
            &a,
            &hexa_crypto::consent::VerifyParams {
                rp_id: card_ev["rpId"].as_str().unwrap(),
                expected_appliance_id: &s.app.node_kid,
                last_sign_count: 0,
                now: ch.issued_at,
                ttl_secs: 60,
                require_user_verified: false,
            },
        )
        .unwrap();
        // The stored counter moved on.
        let d = s
            .fhir(
                "GET",
                &format!("/fhir/Device/{}", dev["id"].as_str().unwrap()),
                &Value::Null,
            )
            .json();
        assert_eq!(
            ext(&d, "urn:hexa:sign-count")["valueUnsignedInt"],
            v.sign_count
        );
        // A deny consent is stored active with provision deny.
        let r = s.consent(&p, vec![json!({"name": "decision", "valueCode": "deny"})]);
        assert_eq!(r.status, 201);
        assert_eq!(r.json()["provision"]["type"], "deny");
        s.lift();
    }
}

#[test]
fn wrong_unenrolled_and_other_patients_cards_are_refused() {
    let s = Server::start();
    let a = s.patient("Alpha");
    let b = s.patient("Beta");
    let nobody = s.patient("Nobody");
    let card_a = s.new_card("ed25519");
    let card_b = s.new_card("ed25519");
    s.enrol(&a, card_a);
    s.enrol(&b, card_b);

    // B's card for A's consent.
    s.present(card_b);
    let r = s.consent(&a, vec![]);
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.code(), "wrong-credential");
    // A card enrolled to nobody.
    let stranger = s.new_card("es256-only");
    s.present(stranger);
    let r = s.consent(&a, vec![]);
    assert_eq!((r.status, r.code()), (403, "wrong-credential".into()));
    // A card that needs a PIN cannot be enrolled at the desk.
    let pin_card = s
        .sim("/sim/cards", json!({"model": "ed25519", "pin": "1234"}))
        .json()["card"]
        .as_u64()
        .unwrap() as u32;
    s.present(pin_card);
    let r = s.fhir(
        "POST",
        &format!("/fhir/Patient/{nobody}/$enroll-card"),
        &params(vec![]),
    );
    assert_eq!((r.status, r.code()), (403, "declined".into()));
    // A patient without a card.
    let r = s.consent(&nobody, vec![]);
    assert_eq!((r.status, r.code()), (422, "not-enrolled".into()));
    // Unknown patient.
    let r = s.consent("no-such-patient", vec![]);
    assert_eq!(r.status, 404);
    // Bad parameters.
    let r = s.consent(&a, vec![json!({"name": "class", "valueCode": "Spaceship"})]);
    assert_eq!((r.status, r.code()), (400, "bad-parameters".into()));
    let r = s.consent(&a, vec![json!({"name": "typo", "valueCode": "x"})]);
    assert_eq!(r.status, 400);
    // The CapabilityStatement lists the operations.
    let cap = s.req("GET", "/fhir/metadata", &[], b"").json();
    let patient = cap["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Patient")
        .unwrap();
    assert!(
        patient["operation"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["name"] == "consent")
    );
    // Read-only scopes may not run a ceremony.
    let r = s.fhir_as(
        &s.read,
        "POST",
        &format!("/fhir/Patient/{a}/$consent"),
        &params(vec![]),
    );
    assert_eq!(r.status, 403);
    // And the front desk saw those requests fail.
    let desk = s.req("GET", "/desk/api/requests", &[], b"").json();
    let reqs = desk["requests"].as_array().unwrap();
    assert!(
        reqs.iter()
            .any(|r| r["state"] == "failed" && r["result"]["code"] == "wrong-credential"),
        "{desk}"
    );
}

#[test]
fn timeout_then_pending_request_is_visible_at_the_desk() {
    let s = Server::start();
    let p = s.patient("Waiting");
    let card = s.new_card("ed25519");
    s.enrol(&p, card);
    s.lift();
    let started = Instant::now();
    let r = s.consent(
        &p,
        vec![json!({"name": "timeoutSeconds", "valueInteger": 1})],
    );
    assert_eq!((r.status, r.code()), (408, "ceremony-timeout".into()));
    assert!(started.elapsed() < Duration::from_secs(10));
    // Wrong timeouts are refused before anything runs.
    let bad = params(vec![
        json!({"name": "timeoutSeconds", "valueInteger": 100000}),
    ]);
    let r = s.fhir("POST", &format!("/fhir/Patient/{p}/$consent"), &bad);
    assert_eq!(r.status, 400);

    // The grantee is in the local registry: the desk names it.
    let r = s.fhir(
        "PUT",
        "/fhir/Organization/fac-b",
        &json!({"resourceType": "Organization", "id": "fac-b", "name": "Kibagabaga District Hospital"}),
    );
    assert!(
        r.status == 201 || r.status == 200,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    // A ceremony in flight is listed, in plain words, until the card is tapped.
    let addr = s.http.addr;
    let auth = s.all.clone();
    let p2 = p.clone();
    let t = std::thread::spawn(move || {
        let body = params(vec![
            json!({"name": "organization", "valueReference": {"reference": "Organization/fac-b"}}),
            json!({"name": "practitioner", "valueReference": {"reference": "Practitioner/dr-b"}}),
            json!({"name": "purpose", "valueCode": "TREAT"}),
            json!({"name": "periodEnd", "valueDateTime": "2099-01-01T00:00:00Z"}),
            json!({"name": "dataPeriodStart", "valueDateTime": "2020-01-01"}),
            json!({"name": "timeoutSeconds", "valueInteger": 60}),
        ]);
        request(
            addr,
            "POST",
            &format!("/fhir/Patient/{p2}/$consent"),
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/fhir+json"),
            ],
            &serde_json::to_vec(&body).unwrap(),
        )
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let pending = loop {
        let v = s.req("GET", "/desk/api/requests", &[], b"").json();
        if let Some(r) = v["requests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["state"] == "pending")
        {
            break r.clone();
        }
        assert!(Instant::now() < deadline, "no pending request appeared");
        // Poll interval only: correctness does not depend on it.
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(pending["kind"], "consent");
    assert_eq!(pending["patient"], format!("Patient/{p}"));
    assert_eq!(pending["askedBy"]["client"], "emr-all");
    assert_eq!(pending["terms"]["scope"], "all clinical data");
    assert_eq!(pending["terms"]["grantee"][1], "Practitioner/dr-b");
    assert!(
        pending["text"]
            .as_str()
            .unwrap()
            .contains("asks to read all your clinical records for treatment"),
        "{pending}"
    );
    assert!(pending["until"].is_string());
    assert!(pending["progress"]["state"].is_string(), "{pending}");
    // The reader is busy with that ceremony: a second one is refused at once.
    let r = s.consent(&p, vec![]);
    assert_eq!((r.status, r.code()), (409, "device-busy".into()));
    s.present(card);
    let r = t.join().unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let c = r.json();
    assert!(c["provision"].get("class").is_none());
    assert_eq!(
        c["provision"]["actor"][1]["reference"]["reference"],
        "Practitioner/dr-b"
    );
    assert_eq!(
        c["provision"]["dataPeriod"]["start"],
        "2020-01-01T00:00:00Z"
    );
    let v = s.req("GET", "/desk/api/requests", &[], b"").json();
    let done = &v["requests"][0];
    assert_eq!(done["state"], "done", "{v}");
    assert_eq!(
        done["result"]["reference"],
        format!("Consent/{}/_history/1", c["id"].as_str().unwrap())
    );
}

#[test]
fn replayed_stale_and_wrong_appliance_assertions_are_rejected() {
    let s = Server::start();
    let p = s.patient("Replay");
    let card = s.new_card("ed25519");
    s.enrol(&p, card);
    let r = s.consent(&p, vec![]);
    assert_eq!(r.status, 201);
    let ev = evidence(&r.json());
    let (_, ch) = challenge_of(&ev);
    let c = s.ceremonies();
    let rt = rt();
    let cards = rt.block_on(c.card_enrolments(&p)).unwrap();
    let (rp_id, appliance) = c.identity();
    assert_eq!(appliance, s.app.node_kid);
    let rp_id = rp_id.to_owned();
    let b = |k: &str| {
        URL_SAFE_NO_PAD
            .decode(ev["card"][k].as_str().unwrap())
            .unwrap()
    };
    let replayed = Assertion {
        credential_id: b("credentialId"),
        auth_data: b("authenticatorData"),
        signature: b("signature"),
        sign_count: 0,
    };
    // The stored evidence presented again: its nonce was used.
    let e = rt
        .block_on(c.accept_card_assertion(&ch, &replayed, &cards, now()))
        .unwrap_err();
    assert!(matches!(e, CeremonyError::Replay), "{e}");

    let terms = Terms {
        patient_id: p.clone(),
        organization: "fac-b".into(),
        practitioner: None,
        purpose: "TREAT".into(),
        classes: vec![],
        period: (now(), now() + 3600),
        data_period: (None, None),
        decision: Decision::Permit,
    };
    let sign = |ch: &ConsentChallenge| -> Assertion {
        rt.block_on(s.app.http.device_actor().send(Timed {
            message: Assert {
                rp_id: rp_id.clone(),
                client_data_hash: ch.client_data_hash(),
                allow_credential_ids: cards.iter().map(|_| b("credentialId")).collect(),
                pin: None,
            },
            timeout: Duration::from_secs(5),
        }))
        .unwrap()
        .unwrap()
    };
    // Stale: a challenge issued an hour ago, signed by the real card now.
    let stale = c.issue(&terms, now() - 3600).unwrap();
    let a = sign(&stale);
    let e = rt
        .block_on(c.accept_card_assertion(&stale, &a, &cards, now()))
        .unwrap_err();
    assert!(matches!(e, CeremonyError::Stale(_)), "{e}");
    // Wrong appliance: a challenge naming another appliance.
    let foreign = terms.challenge("another-appliance-kid", [7; 32], now());
    let a = sign(&foreign);
    let e = rt
        .block_on(c.accept_card_assertion(&foreign, &a, &cards, now()))
        .unwrap_err();
    assert!(matches!(e, CeremonyError::Stale(_)), "{e}");
    // Wrong patient: a fresh, valid challenge whose assertion is checked against another
    // patient's enrolments.
    let q = s.patient("Other");
    let other_card = s.new_card("ed25519");
    s.enrol(&q, other_card);
    s.present(card);
    let fresh = c.issue(&terms, now()).unwrap();
    let a = sign(&fresh);
    let others = rt.block_on(c.card_enrolments(&q)).unwrap();
    let e = rt
        .block_on(c.accept_card_assertion(&fresh, &a, &others, now()))
        .unwrap_err();
    assert!(matches!(e, CeremonyError::WrongCredential(_)), "{e}");
    // A valid one passes once, then is a replay.
    let fresh = c.issue(&terms, now()).unwrap();
    let a = sign(&fresh);
    let cards = rt.block_on(c.card_enrolments(&p)).unwrap();
    rt.block_on(c.accept_card_assertion(&fresh, &a, &cards, now()))
        .unwrap();
    let cards = rt.block_on(c.card_enrolments(&p)).unwrap();
    let e = rt
        .block_on(c.accept_card_assertion(&fresh, &a, &cards, now()))
        .unwrap_err();
    assert!(matches!(e, CeremonyError::Replay), "{e}");
}

#[test]
fn revocation_lost_and_replaced_cards() {
    let s = Server::start();
    let p = s.patient("Revoke");
    let card = s.new_card("ed25519");
    let dev = s.enrol(&p, card);
    let c = s.consent(&p, vec![]).json();
    let id = c["id"].as_str().unwrap();
    let r = s.fhir(
        "POST",
        &format!("/fhir/Consent/{id}/$revoke"),
        &params(vec![]),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v2 = r.json();
    assert_eq!(v2["status"], "inactive");
    assert_eq!(v2["meta"]["versionId"], "2");
    let ev = evidence(&v2);
    assert_eq!(ev["revokes"], format!("Consent/{id}/_history/1"));
    let (_, ch) = challenge_of(&ev);
    assert_eq!(ch.decision, Decision::Deny);
    assert_eq!(
        ch.grantee_organization.as_deref(),
        Some("Organization/fac-b")
    );
    // Nothing left to revoke.
    let r = s.fhir(
        "POST",
        &format!("/fhir/Consent/{id}/$revoke"),
        &params(vec![]),
    );
    assert_eq!((r.status, r.code()), (409, "wrong-state".into()));

    // Replace the card: the old one becomes inactive and no longer answers.
    let new_card = s.new_card("es256-only");
    s.present(new_card);
    let old_id = dev["id"].as_str().unwrap();
    let r = s.fhir(
        "POST",
        &format!("/fhir/Patient/{p}/$enroll-card"),
        &params(vec![json!({"name": "replaces", "valueReference": {"reference": format!("Device/{old_id}")}})]),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let new_dev = r.json();
    let old = s
        .fhir("GET", &format!("/fhir/Device/{old_id}"), &Value::Null)
        .json();
    assert_eq!(old["status"], "inactive");
    s.present(card);
    assert_eq!(s.consent(&p, vec![]).code(), "wrong-credential");
    s.present(new_card);
    assert_eq!(s.consent(&p, vec![]).status, 201);

    // Lost card: revoked; the patient then has no card.
    let new_id = new_dev["id"].as_str().unwrap();
    let r = s.fhir(
        "POST",
        &format!("/fhir/Device/{new_id}/$revoke"),
        &params(vec![]),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "inactive");
    let r = s.fhir(
        "POST",
        &format!("/fhir/Device/{new_id}/$revoke"),
        &params(vec![]),
    );
    assert_eq!(r.status, 409);
    assert_eq!(s.consent(&p, vec![]).code(), "not-enrolled");
    let r = s.fhir(
        "GET",
        &format!("/fhir/Device/{new_id}/$revoke"),
        &Value::Null,
    );
    assert_eq!(r.status, 405);
}

#[test]
fn fingerprint_consent_needs_a_countersignature() {
    let s = Server::start();
    let p = s.patient("Finger");
    let q = s.patient("Other");
    let nurse = SigningKey::generate().unwrap();
    let r = s.fhir(
        "POST",
        "/fhir/Practitioner",
        &json!({"resourceType": "Practitioner", "name": [{"family": "Nurse"}],
                "extension": [{"url": "urn:hexa:public-jwk", "valueString": nurse.public().to_jwk().to_string()}]}),
    );
    assert_eq!(r.status, 201);
    let nurse_id = r.json()["id"].as_str().unwrap().to_owned();

    let enrol_finger = |patient: &str| -> u64 {
        s.sim("/sim/fingerprint/place", json!({"unknown": true}));
        let r = s.fhir(
            "POST",
            &format!("/fhir/Patient/{patient}/$enroll-finger"),
            &params(vec![json!({"name": "practitioner", "valueReference": {"reference": format!("Practitioner/{nurse_id}")}})]),
        );
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        let d = r.json();
        assert_eq!(d["type"]["coding"][0]["code"], "fingerprint-template");
        assert_eq!(
            ext(&d, "urn:hexa:enrolled-by")["valueReference"]["reference"],
            format!("Practitioner/{nurse_id}")
        );
        d["identifier"][0]["value"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let slot_p = enrol_finger(&p);
    // The same finger again (still on the sensor) for another patient: refused.
    let r = s.fhir(
        "POST",
        &format!("/fhir/Patient/{q}/$enroll-finger"),
        &params(vec![]),
    );
    assert_eq!((r.status, r.code()), (409, "wrong-state".into()));
    let slot_q = enrol_finger(&q);
    assert_ne!(slot_p, slot_q);
    // Re-enrolling Q's own finger as a replacement keeps its template slot.
    let q_dev = s
        .fhir(
            "GET",
            &format!("/fhir/Device?patient=Patient/{q}&status=active"),
            &Value::Null,
        )
        .json()["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.sim("/sim/fingerprint/place", json!({"template": slot_q}));
    let r = s.fhir(
        "POST",
        &format!("/fhir/Patient/{q}/$enroll-finger"),
        &params(vec![
            json!({"name": "replaces", "valueReference": {"reference": format!("Device/{q_dev}")}}),
        ]),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["identifier"][0]["value"], slot_q.to_string());
    let old = s
        .fhir("GET", &format!("/fhir/Device/{q_dev}"), &Value::Null)
        .json();
    assert_eq!(old["status"], "inactive");

    // Q's finger for P's consent.
    s.sim("/sim/fingerprint/place", json!({"template": slot_q}));
    let r = s.consent(&p, vec![json!({"name": "method", "valueCode": "finger"})]);
    assert_eq!((r.status, r.code()), (403, "wrong-credential".into()));

    s.sim("/sim/fingerprint/place", json!({"template": slot_p}));
    let r = s.consent(&p, vec![json!({"name": "method", "valueCode": "finger"})]);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let c = r.json();
    assert_eq!(c["status"], "proposed");
    assert_eq!(
        ext(&c, "urn:hexa:consent-assurance")["valueCode"],
        "fingerprint"
    );
    let ev = evidence(&c);
    assert_eq!(ev["method"], "fingerprint");
    assert_eq!(ev["fingerprint"]["templateId"], slot_p);
    let (bytes, _) = challenge_of(&ev);
    let id = c["id"].as_str().unwrap();
    let countersign = |key: &SigningKey, payload: &[u8]| {
        s.fhir(
            "POST",
            &format!("/fhir/Consent/{id}/$countersign"),
            &params(vec![
                json!({"name": "practitioner", "valueReference": {"reference": format!("Practitioner/{nurse_id}")}}),
                json!({"name": "signature", "valueString": hexa_crypto::jws::sign_detached(key, payload)}),
            ]),
        )
    };
    // Another key, or other bytes, do not verify.
    let r = countersign(&SigningKey::generate().unwrap(), &bytes);
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    let r = countersign(&nurse, b"something else");
    assert_eq!((r.status, r.code()), (403, "bad-signature".into()));
    let r = countersign(&nurse, &bytes);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let c2 = r.json();
    assert_eq!(c2["status"], "active");
    let ev2 = evidence(&c2);
    assert_eq!(
        ev2["countersignature"]["practitioner"],
        format!("Practitioner/{nurse_id}")
    );
    assert_eq!(ev2["countersignature"]["kid"], nurse.kid());
    assert_eq!(ev2["challenge"], ev["challenge"]);
    let r = countersign(&nurse, &bytes);
    assert_eq!((r.status, r.code()), (409, "wrong-state".into()));
}

#[test]
fn login_and_the_patients_access_list() {
    let s = Server::start();
    let p = s.patient("Session");
    let q = s.patient("Someone");
    let card = s.new_card("ed25519");
    s.enrol(&p, card);
    let other = s.new_card("ed25519");
    s.enrol(&q, other);
    s.present(card);
    assert_eq!(s.consent(&p, vec![]).status, 201);
    // Another facility reads P's record in an emergency.
    let emr_b = s.token("emr-b", "fac-b", "system/*.rs");
    let r = s.req(
        "GET",
        &format!("/fhir/Patient/{p}"),
        &[
            ("Authorization", &emr_b),
            ("X-Purpose-Of-Use", "ETREAT"),
            (
                "X-Access-Justification",
                "unconscious on arrival, allergies unknown",
            ),
        ],
        b"",
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    // An unenrolled card cannot log in.
    let stranger = s.new_card("ed25519");
    s.present(stranger);
    let r = s.req("POST", "/desk/api/login", &[], br#"{"timeoutSeconds": 5}"#);
    assert_eq!((r.status, r.code()), (403, "wrong-credential".into()));

    s.present(card);
    let r = s.req("POST", "/desk/api/login", &[], b"");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let login = r.json();
    assert_eq!(login["patient"], format!("Patient/{p}"));
    let token = login["token"].as_str().unwrap().to_owned();
    let cookie = r.header("set-cookie").unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let cookie_pair = cookie.split(';').next().unwrap().to_owned();

    let r = s.req(
        "GET",
        "/desk/api/accesses",
        &[("Cookie", &cookie_pair)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let list = r.json();
    assert_eq!(list["patient"], format!("Patient/{p}"));
    let accesses = list["accesses"].as_array().unwrap();
    assert!(!accesses.is_empty());
    let em = accesses
        .iter()
        .find(|a| a["client"] == "emr-b")
        .unwrap_or_else(|| panic!("the emergency read is listed: {list}"));
    assert_eq!(em["emergency"], true);
    assert_eq!(em["facility"], "Organization/fac-b");
    assert!(em["text"].as_str().unwrap().contains("EMERGENCY"), "{em}");
    assert_eq!(
        em["justification"],
        "unconscious on arrival, allergies unknown"
    );
    assert_eq!(em["basis"][0], "emergency");
    // The login itself is in the list: the session's read of its own Patient resource.
    assert!(
        accesses
            .iter()
            .any(|a| a["client"] == "patient-session" && a["what"] == "read"),
        "{list}"
    );
    let whens: Vec<&str> = accesses
        .iter()
        .map(|a| a["when"].as_str().unwrap())
        .collect();
    assert!(whens.windows(2).all(|w| w[0] >= w[1]), "newest first");

    // The same token as a bearer on /fhir: own AuditEvents only.
    let bearer = format!("Bearer {token}");
    let r = s.req(
        "GET",
        &format!("/fhir/AuditEvent?patient={p}"),
        &[("Authorization", &bearer)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let b = r.json();
    assert_eq!(b["resourceType"], "Bundle");
    assert!(b["total"].as_u64().unwrap() > 0);
    for (path, status) in [
        (format!("/fhir/AuditEvent?patient={q}"), 403),
        ("/fhir/AuditEvent".to_owned(), 403),
        (format!("/fhir/Patient/{p}"), 403),
        (format!("/fhir/AuditEvent?patient={p}&patient={q}"), 403),
    ] {
        let r = s.req("GET", &path, &[("Authorization", &bearer)], b"");
        assert_eq!(r.status, status, "{path}");
    }
    let r = s.req(
        "GET",
        "/fhir/AuditEvent?patient=x",
        &[("Authorization", "Bearer hexas1.forged.x")],
        b"",
    );
    assert_eq!(r.status, 401);
    let r = s.req("GET", "/desk/api/accesses", &[], b"");
    assert_eq!(r.status, 401);
    let r = s.req("DELETE", "/desk/api/accesses", &[], b"");
    assert_eq!(r.status, 405);
    // Logout ends the session everywhere it was used.
    let r = s.req("POST", "/desk/api/logout", &[("Cookie", &cookie_pair)], b"");
    assert_eq!(r.status, 204);
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
    let r = s.req(
        "GET",
        "/desk/api/accesses",
        &[("Cookie", &cookie_pair)],
        b"",
    );
    assert_eq!(r.status, 401);
    let r = s.req(
        "GET",
        &format!("/fhir/AuditEvent?patient={p}"),
        &[("Authorization", &bearer)],
        b"",
    );
    assert_eq!(r.status, 401);
}

/// The stored evidence of an Ed25519 and an ES256 card, verified by Yubico's `fido2`.
#[test]
fn stored_evidence_verifies_with_python_fido2() {
    let s = Server::start();
    let mut consents = Vec::new();
    for model in ["ed25519", "es256-only"] {
        let p = s.patient(model);
        let card = s.new_card(model);
        s.enrol(&p, card);
        let c = s.consent(&p, vec![]).json();
        // Read back what is stored, not what the operation answered.
        let stored = s.fhir(
            "GET",
            &format!("/fhir/Consent/{}", c["id"].as_str().unwrap()),
            &Value::Null,
        );
        assert_eq!(stored.status, 200);
        consents.push(stored.json());
        s.lift();
    }
    let python = std::env::var("HEXA_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let probe = Command::new(&python)
        .args(["-c", "import fido2"])
        .output()
        .expect("run python3");
    assert!(
        probe.status.success(),
        "Python fido2 is missing: run python3 -m pip install -r tests/interop/requirements.txt"
    );
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/interop/verify_fido2.py");
    let run = |req: &Value| {
        let mut child = Command::new(&python)
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(req.to_string().as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = run(&json!({"consents": consents, "algs": [-8, -7]}));
    assert!(
        out.status.success(),
        "fido2 rejected the evidence: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ok alg=-8") && text.contains("ok alg=-7"),
        "{text}"
    );
    // A forged evidence (signature of the other consent) is rejected by fido2 too.
    let mut forged = consents[0].clone();
    let mut ev = evidence(&forged);
    let other = evidence(&consents[1]);
    ev["card"]["signature"] = other["card"]["signature"].clone();
    forged["sourceAttachment"]["data"] = json!(STANDARD.encode(serde_json::to_vec(&ev).unwrap()));
    let out = run(&json!({"consents": [forged], "algs": [-8]}));
    assert!(!out.status.success(), "a forged signature passed fido2");
}

/// Login offers the card at most 16 credential IDs at a time: a card enrolled after many
/// others is still found.
#[test]
fn login_finds_a_card_beyond_the_first_allow_list() {
    let s = Server::start();
    for i in 0..17 {
        let p = s.patient(&format!("Crowd{i}"));
        let c = s.new_card(if i % 2 == 0 { "ed25519" } else { "es256-only" });
        s.enrol(&p, c);
    }
    let me = s.patient("Last");
    let card = s.new_card("es256-only");
    s.enrol(&me, card);
    let r = s.req("POST", "/desk/api/login", &[], b"{}");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["patient"], format!("Patient/{me}"));
    let r = s.req("POST", "/desk/api/login", &[], br#"{"timeoutSeconds": 0}"#);
    assert_eq!(r.status, 400);
}

/// A card enrolled by a named health worker carries the enrolment statement (what the
/// appliance bound to whom, by whom), and that worker countersigns it with the key on
/// their Practitioner; another worker, another key, other bytes, a second countersignature,
/// and an enrolment that named nobody are refused. The countersignature survives later
/// versions (a consent's sign-counter update).
#[test]
fn card_enrolment_countersigned_by_the_enrolling_health_worker() {
    let s = Server::start();
    let p = s.patient("Enrolled");
    let practitioner = |family: &str, key: &SigningKey| {
        let r = s.fhir(
            "POST",
            "/fhir/Practitioner",
            &json!({"resourceType": "Practitioner", "name": [{"family": family}],
                    "extension": [{"url": "urn:hexa:public-jwk", "valueString": key.public().to_jwk().to_string()}]}),
        );
        assert_eq!(r.status, 201);
        r.json()["id"].as_str().unwrap().to_owned()
    };
    let nurse = SigningKey::generate().unwrap();
    let nurse_id = practitioner("Nurse", &nurse);
    let clerk = SigningKey::generate().unwrap();
    let clerk_id = practitioner("Clerk", &clerk);

    let card = s.new_card("ed25519");
    s.present(card);
    let r = s.fhir(
        "POST",
        &format!("/fhir/Patient/{p}/$enroll-card"),
        &params(vec![json!({"name": "practitioner", "valueReference": {"reference": format!("Practitioner/{nurse_id}")}})]),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let dev = r.json();
    let id = dev["id"].as_str().unwrap().to_owned();
    assert_eq!(dev["meta"]["versionId"], "1");
    let statement = STANDARD
        .decode(
            ext(&dev, "urn:hexa:enrolment-statement")["valueBase64Binary"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    let st: Value = serde_json::from_slice(&statement).unwrap();
    assert_eq!(st["format"], "hexa-enrolment-statement-v1");
    assert_eq!(st["device"], format!("Device/{id}"));
    assert_eq!(st["patient"], format!("Patient/{p}"));
    assert_eq!(st["enrolledBy"], format!("Practitioner/{nurse_id}"));
    assert_eq!(st["appliance"], s.app.node_kid.as_str());
    assert_eq!(
        st["credential"]["credentialId"],
        dev["identifier"][0]["value"]
    );
    assert_eq!(
        hexa_crypto::jcs::canonicalize(&st).unwrap(),
        statement,
        "the statement is stored as JCS bytes"
    );

    let countersign = |who: &str, key: &SigningKey, payload: &[u8]| {
        s.fhir(
            "POST",
            &format!("/fhir/Device/{id}/$countersign"),
            &params(vec![
                json!({"name": "practitioner", "valueReference": {"reference": format!("Practitioner/{who}")}}),
                json!({"name": "signature", "valueString": hexa_crypto::jws::sign_detached(key, payload)}),
            ]),
        )
    };
    // Not the worker who enrolled, even with their own registered key.
    let r = countersign(&clerk_id, &clerk, &statement);
    assert_eq!((r.status, r.code()), (403, "wrong-credential".into()));
    // The enrolling worker, but another key or other bytes.
    let r = countersign(&nurse_id, &clerk, &statement);
    assert_eq!((r.status, r.code()), (403, "bad-signature".into()));
    let r = countersign(&nurse_id, &nurse, b"{\"something\":\"else\"}");
    assert_eq!((r.status, r.code()), (403, "bad-signature".into()));
    // After the countersign window (an hour by default), even the right signature is late.
    let body = params(vec![
        json!({"name": "practitioner", "valueReference": {"reference": format!("Practitioner/{nurse_id}")}}),
        json!({"name": "signature", "valueString": hexa_crypto::jws::sign_detached(&nurse, &statement)}),
    ]);
    let late = rt().block_on(s.ceremonies().countersign_enrolment(
        &id,
        &hexa_appliance::consent::params::Params::parse(body.to_string().as_bytes()).unwrap(),
        st["enrolledAt"].as_u64().unwrap() + s.ceremonies().config().countersign_window_secs + 1,
    ));
    assert!(matches!(late, Err(CeremonyError::Stale(_))), "{late:?}");
    let r = countersign(&nurse_id, &nurse, &statement);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let d2 = r.json();
    assert_eq!(d2["meta"]["versionId"], "2");
    let cs = ext(&d2, "urn:hexa:enrolment-countersignature");
    assert_eq!(
        cs["extension"][0]["valueReference"]["reference"],
        format!("Practitioner/{nurse_id}")
    );
    assert_eq!(cs["extension"][1]["valueString"], nurse.kid());
    assert_eq!(
        ext(&d2, "urn:hexa:enrolment-statement"),
        ext(&dev, "urn:hexa:enrolment-statement")
    );
    let r = countersign(&nurse_id, &nurse, &statement);
    assert_eq!((r.status, r.code()), (409, "wrong-state".into()));

    // The card still works, and the next version (its sign counter) keeps both extensions.
    s.present(card);
    let r = s.consent(&p, vec![]);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    s.lift();
    let d3 = s
        .fhir("GET", &format!("/fhir/Device/{id}"), &Value::Null)
        .json();
    assert_eq!(d3["meta"]["versionId"], "3");
    assert_eq!(ext(&d3, "urn:hexa:enrolment-countersignature"), cs);

    // An enrolment that named no worker has nothing to countersign.
    let q = s.patient("Unnamed");
    let other = s.new_card("ed25519");
    let plain = s.enrol(&q, other);
    s.lift();
    assert!(
        plain["extension"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["url"] != "urn:hexa:enrolment-statement")
    );
    let r = s.fhir(
        "POST",
        &format!("/fhir/Device/{}/$countersign", plain["id"].as_str().unwrap()),
        &params(vec![
            json!({"name": "practitioner", "valueReference": {"reference": format!("Practitioner/{nurse_id}")}}),
            json!({"name": "signature", "valueString": hexa_crypto::jws::sign_detached(&nurse, &statement)}),
        ]),
    );
    assert_eq!((r.status, r.code()), (409, "wrong-state".into()));
}

/// The `[consent]` section of hexa.toml reaches the ceremonies: a site that allows at most
/// 5 s to tap refuses a request for 10 s, and its countersign window is what it set.
#[test]
fn configured_ceremony_timings_apply() {
    let mut cfg = Config::defaults();
    cfg.consent.max_timeout_secs = 5;
    cfg.consent.default_timeout_secs = 5;
    cfg.consent.countersign_window_secs = 600;
    let s = Server::start_with(&cfg);
    assert_eq!(s.ceremonies().config().countersign_window_secs, 600);
    let p = s.patient("Timed");
    let r = s.fhir(
        "POST",
        &format!("/fhir/Patient/{p}/$enroll-card"),
        &params(vec![json!({"name": "timeoutSeconds", "valueInteger": 10})]),
    );
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        String::from_utf8_lossy(&r.body).contains("between 1 and 5"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
}
