//! The consent bypass suite (issue 6, "Must show"): a second facility's client, with a
//! real token, tries every path that can reveal a patient's record without a consent —
//! read, vread, instance and type history, searches (by patient, identifier, name, birth
//! date, chained, `_summary=count`, POST `_search`), `_include`/`_revinclude`,
//! `$everything`, `$match`, batch and transaction GETs, conditional create, AuditEvent and
//! Provenance — and gets 403 or an empty result with none of the patient's names,
//! identifiers or clinical values in any response body. Then a consent (stored as the
//! ceremony stores it, through the store with the appliance's system context) opens the
//! record, its revocation closes it again, and an emergency access with a justification
//! works and is flagged in the AuditEvent.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hexa_actors::store::AccessContext;
use hexa_appliance::auth::ClientRegistration;
use hexa_appliance::config::Config;
use hexa_appliance::datadir::DataDir;
use hexa_crypto::keys::SigningKey;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

mod common;

static JTI: AtomicU64 = AtomicU64::new(0);

/// Facility of the second client (the would-be intruder).
const OTHER: &str = "fac-two";
const NID: &str = "1197770098765432";
/// Strings of the patient's record that must never reach the other facility.
const SECRETS: &[&str] = &[
    "Mukamana",
    "MUKAMANA",
    "Josiane",
    NID,
    "1977-03-14",
    "+250788123456",
    "tuberculosis-secret-note",
    "viral-load-secret-value",
];

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct Resp {
    status: u16,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Field order matters: the HTTP server stops before the appliance closes.
struct Server {
    http: common::Listening,
    app: hexa_appliance::Appliance,
    _dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
}

impl Server {
    fn start() -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("data"));
        let app = hexa_appliance::start(&dir, &Config::defaults(), None).unwrap();
        Server {
            http: common::Listening::serve(app.http.clone()),
            app,
            _dir: tmp,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        }
    }

    fn facility(&self) -> String {
        self.app.config.facility.id.clone()
    }

    /// Registers `client_id` for `facility` and exchanges a signed assertion for a token.
    fn token(&self, client_id: &str, facility: &str) -> String {
        let key = SigningKey::generate().unwrap();
        let public = key.public();
        self.app
            .auth
            .register_client(ClientRegistration {
                client_id: client_id.into(),
                facility_id: facility.into(),
                jwks: json!({"keys": [public.to_jwk()]}),
                scopes: "system/*.cruds".into(),
            })
            .unwrap();
        let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
        let header = b64(&json!({"alg": "EdDSA", "typ": "JWT", "kid": public.kid()}));
        let t = now();
        let claims = b64(&json!({
            "iss": client_id, "sub": client_id, "aud": format!("http://{}/fhir/token", self.http.addr),
            "iat": t, "exp": t + 120,
            "jti": format!("bypass-{t}-{}", JTI.fetch_add(1, Ordering::Relaxed)),
        }));
        let input = format!("{header}.{claims}");
        let sig = URL_SAFE_NO_PAD.encode(key.sign(input.as_bytes()));
        let form = format!(
            "grant_type=client_credentials&scope=system%2F%2A.cruds&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={input}.{sig}"
        );
        let r = self.req(
            "POST",
            "/fhir/token",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            form.as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        format!("Bearer {}", r.json()["access_token"].as_str().unwrap())
    }

    fn req(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        let mut s = TcpStream::connect(self.http.addr).unwrap();
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
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response");
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        Resp {
            status: head[9..12].parse().unwrap(),
            body: raw[split + 4..].to_vec(),
        }
    }

    fn get(&self, token: &str, path: &str) -> Resp {
        self.req("GET", path, &[("Authorization", token)], b"")
    }

    fn get_with(&self, token: &str, path: &str, extra: &[(&str, &str)]) -> Resp {
        let mut h = vec![("Authorization", token)];
        h.extend_from_slice(extra);
        self.req("GET", path, &h, b"")
    }

    fn send(&self, token: &str, method: &str, path: &str, body: &Value) -> Resp {
        self.req(
            method,
            path,
            &[
                ("Authorization", token),
                ("Content-Type", "application/fhir+json"),
            ],
            &serde_json::to_vec(body).unwrap(),
        )
    }

    /// Writes through the store with the appliance's own context (as the ceremony does).
    fn system_write(&self, resource: Value, update: Option<(&str, u64)>) -> Value {
        let h = self.app.store.handle().clone();
        let ctx = AccessContext::system(&self.facility());
        self.rt.block_on(async move {
            match update {
                None => h.create(&ctx, resource, None).await,
                Some((id, v)) => h.update(&ctx, "Consent", id, resource, Some(v), None).await,
            }
            .unwrap()
            .record
            .resource
        })
    }
}

/// The body with the request echo (`Bundle.link`, which repeats the caller's own query)
/// removed.
fn without_echo(r: &Resp) -> String {
    match serde_json::from_slice::<Value>(&r.body) {
        Ok(mut v) => {
            strip_links(&mut v);
            v.to_string()
        }
        Err(_) => r.text(),
    }
}

fn strip_links(v: &mut Value) {
    if let Some(o) = v.as_object_mut() {
        if o.get("resourceType") == Some(&json!("Bundle")) {
            o.remove("link");
        }
        for (_, x) in o.iter_mut() {
            strip_links(x);
        }
    } else if let Some(a) = v.as_array_mut() {
        a.iter_mut().for_each(strip_links);
    }
}

/// No secret of the patient in the response.
fn leaks_nothing(what: &str, r: &Resp) {
    let body = without_echo(r);
    for s in SECRETS {
        assert!(
            !body.contains(s),
            "{what}: the response reveals `{s}`: {body}"
        );
    }
}

/// A refused direct access: 403 OperationOutcome, nothing revealed.
fn refused(what: &str, r: &Resp) {
    assert_eq!(r.status, 403, "{what}: {}", r.text());
    assert_eq!(r.json()["resourceType"], "OperationOutcome", "{what}");
    leaks_nothing(what, r);
}

/// An empty list: a Bundle with total 0 (when given) and no entries, nothing revealed.
fn empty(what: &str, r: &Resp) {
    assert_eq!(r.status, 200, "{what}: {}", r.text());
    let v = r.json();
    assert_eq!(v["resourceType"], "Bundle", "{what}");
    if let Some(t) = v.get("total") {
        assert_eq!(t, 0, "{what}: {v}");
    }
    assert!(
        v["entry"].as_array().is_none_or(|e| e.is_empty()),
        "{what}: {v}"
    );
    leaks_nothing(what, r);
}

/// `$match` for another facility's patient: the score and the id, nothing else.
fn ids_only(what: &str, r: &Resp) {
    assert_eq!(r.status, 200, "{what}: {}", r.text());
    let v = r.json();
    let entries = v["entry"].as_array().cloned().unwrap_or_default();
    assert!(
        !entries.is_empty(),
        "{what}: the candidate is listed by id: {v}"
    );
    for e in entries {
        let res = e["resource"].as_object().unwrap();
        let mut keys: Vec<&String> = res.keys().collect();
        keys.sort();
        assert_eq!(keys, vec!["id", "resourceType"], "{what}: {v}");
    }
    leaks_nothing(what, r);
}

struct Record {
    patient: String,
    obs: String,
    cond: String,
}

fn seed(s: &Server, home: &str) -> Record {
    let p = s.send(
        home,
        "POST",
        "/fhir/Patient",
        &json!({"resourceType": "Patient",
            "identifier": [{"system": "urn:rw:nid", "value": NID}],
            "name": [{"family": "Mukamana", "given": ["Josiane"]}],
            "telecom": [{"system": "phone", "value": "+250788123456"}],
            "gender": "female", "birthDate": "1977-03-14"}),
    );
    assert_eq!(p.status, 201, "{}", p.text());
    let patient = p.json()["id"].as_str().unwrap().to_string();
    let o = s.send(
        home,
        "POST",
        "/fhir/Observation",
        &json!({"resourceType": "Observation", "status": "final",
            "subject": {"reference": format!("Patient/{patient}")},
            "code": {"coding": [{"system": "http://loinc.org", "code": "20447-9"}]},
            "valueString": "viral-load-secret-value"}),
    );
    assert_eq!(o.status, 201, "{}", o.text());
    let c = s.send(
        home,
        "POST",
        "/fhir/Condition",
        &json!({"resourceType": "Condition",
            "subject": {"reference": format!("Patient/{patient}")},
            "code": {"text": "tuberculosis-secret-note"}}),
    );
    assert_eq!(c.status, 201, "{}", c.text());
    Record {
        patient,
        obs: o.json()["id"].as_str().unwrap().to_string(),
        cond: c.json()["id"].as_str().unwrap().to_string(),
    }
}

/// The consent of the contract's section 4 for the other facility, all clinical data.
fn consent(s: &Server, patient: &str) -> Value {
    let t = |d: i64| hexa_actors::store::time::instant(((now() as i64 + d * 86_400) * 1000) as u64);
    let role = json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]});
    json!({"resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": format!("Patient/{patient}")},
        "dateTime": t(0),
        "organization": [{"reference": format!("Organization/{}", s.facility())}],
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "sourceAttachment": {"contentType": "application/vnd.hexa.consent-evidence+json", "data": "e30=", "title": "hexa consent evidence v1"},
        "extension": [{"url": "urn:hexa:consent-assurance", "valueCode": "card"}],
        "provision": {"type": "permit",
            "period": {"start": t(-1), "end": t(30)},
            "actor": [{"role": role, "reference": {"reference": format!("Organization/{OTHER}")}}],
            "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}]}})
}

/// The `$match` query for the patient (name, identifier, birth date).
fn match_query() -> Value {
    json!({"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": {
        "resourceType": "Patient", "identifier": [{"system": "urn:rw:nid", "value": NID}],
        "name": [{"family": "Mukamana", "given": ["Josiane"]}], "birthDate": "1977-03-14"}}]})
}

/// `_include` / `_revinclude` searches reaching the patient's record.
fn include_paths(r: &Record) -> Vec<String> {
    vec![
        format!(
            "/fhir/Observation?_id={}&_include=Observation:subject",
            r.obs
        ),
        format!(
            "/fhir/Observation?_id={}&_include=Observation:patient",
            r.obs
        ),
        format!(
            "/fhir/Patient?_id={}&_revinclude=Observation:subject",
            r.patient
        ),
        format!(
            "/fhir/Patient?_id={}&_revinclude=Provenance:target",
            r.patient
        ),
        format!(
            "/fhir/Observation?patient={}&_revinclude=Provenance:target",
            r.patient
        ),
        format!(
            "/fhir/Observation?patient={}&_include=Observation:subject",
            r.patient
        ),
    ]
}

#[test]
fn another_facility_gets_nothing_without_consent_then_exactly_what_consent_allows() {
    let s = Server::start();
    let home = s.token("emr-home", &s.facility());
    let other = s.token("clinic-2", OTHER);
    let r = seed(&s, &home);
    let pid = r.patient.as_str();

    // The author reads its own data.
    let mine = s.get(&home, &format!("/fhir/Patient/{pid}"));
    assert_eq!(mine.status, 200);
    assert_eq!(
        mine.json()["meta"]["source"],
        format!("urn:hexa:facility:{}", s.facility())
    );

    // ---- direct reads: 403 ----
    for path in [
        format!("/fhir/Patient/{pid}"),
        format!("/fhir/Patient/{pid}/_history/1"),
        format!("/fhir/Patient/{pid}/_history"),
        format!("/fhir/Observation/{}", r.obs),
        format!("/fhir/Observation/{}/_history/1", r.obs),
        format!("/fhir/Observation/{}/_history", r.obs),
        format!("/fhir/Condition/{}", r.cond),
    ] {
        refused(&path, &s.get(&other, &path));
    }

    // ---- searches and type history: empty ----
    for path in [
        "/fhir/Patient".to_string(),
        format!("/fhir/Patient?identifier=urn:rw:nid|{NID}"),
        format!("/fhir/Patient?identifier={NID}"),
        "/fhir/Patient?family=Mukamana".into(),
        "/fhir/Patient?name=josiane".into(),
        "/fhir/Patient?birthdate=1977-03-14".into(),
        "/fhir/Patient?phone=%2B250788123456".into(),
        format!("/fhir/Patient?_id={pid}"),
        "/fhir/Patient?_summary=count".into(),
        format!("/fhir/Observation?patient={pid}"),
        format!("/fhir/Observation?subject=Patient/{pid}"),
        format!("/fhir/Observation?patient={pid}&_summary=count"),
        "/fhir/Observation?code=http://loinc.org|20447-9".into(),
        format!("/fhir/Condition?patient={pid}"),
        "/fhir/Condition?_summary=count".into(),
        format!("/fhir/Provenance?target=Observation/{}", r.obs),
        format!("/fhir/Provenance?target=Patient/{pid}"),
        "/fhir/Patient/_history".into(),
        "/fhir/Observation/_history".into(),
        "/fhir/Condition/_history".into(),
    ] {
        empty(&path, &s.get(&other, &path));
    }
    // Chained parameters: unsupported (400) or empty.
    for path in [
        "/fhir/Observation?patient.name=Mukamana".to_string(),
        format!("/fhir/Observation?patient.identifier={NID}"),
        format!("/fhir/Patient?_has:Observation:patient:_id={}", r.obs),
    ] {
        let resp = s.get(&other, &path);
        if resp.status == 200 {
            empty(&path, &resp);
        } else {
            assert_eq!(resp.status, 400, "{path}: {}", resp.text());
            leaks_nothing(&path, &resp);
        }
    }
    // POST _search.
    let ps = s.req(
        "POST",
        "/fhir/Patient/_search",
        &[
            ("Authorization", other.as_str()),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        format!("identifier={NID}").as_bytes(),
    );
    empty("POST Patient/_search", &ps);
    // _include / _revinclude, $everything, $match (scores and ids only).
    for path in include_paths(&r) {
        empty(&path, &s.get(&other, &path));
    }
    let everything = format!("/fhir/Patient/{pid}/$everything");
    empty("$everything", &s.get(&other, &everything));
    ids_only(
        "$match",
        &s.send(&other, "POST", "/fhir/Patient/$match", &match_query()),
    );

    // ---- batch and transaction GETs ----
    let batch = s.send(
        &other,
        "POST",
        "/fhir",
        &json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": format!("Patient/{pid}")}},
            {"request": {"method": "GET", "url": format!("Observation/{}", r.obs)}},
            {"request": {"method": "GET", "url": format!("Observation?patient={pid}")}},
            {"request": {"method": "GET", "url": format!("Patient?identifier={NID}")}},
            {"request": {"method": "GET", "url": "Patient?_summary=count"}}
        ]}),
    );
    assert_eq!(batch.status, 200, "{}", batch.text());
    leaks_nothing("batch", &batch);
    let b = batch.json();
    assert!(
        b["entry"][0]["response"]["status"]
            .as_str()
            .unwrap()
            .starts_with("403")
    );
    assert!(
        b["entry"][1]["response"]["status"]
            .as_str()
            .unwrap()
            .starts_with("403")
    );
    for i in 2..5 {
        assert_eq!(b["entry"][i]["resource"]["total"], 0, "{b}");
    }
    let tx = s.send(
        &other,
        "POST",
        "/fhir",
        &json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "GET", "url": format!("Patient/{pid}")}}]}),
    );
    assert_ne!(tx.status, 200, "{}", tx.text());
    leaks_nothing("transaction GET", &tx);

    // ---- conditional create matching the patient: no read through the back door ----
    let cc = s.req(
        "POST",
        "/fhir/Patient",
        &[
            ("Authorization", other.as_str()),
            ("Content-Type", "application/fhir+json"),
            ("If-None-Exist", &format!("identifier={NID}")),
        ],
        br#"{"resourceType": "Patient", "name": [{"family": "Probe"}]}"#,
    );
    refused("conditional create", &cc);

    // ---- audit trail: only the other facility's own events; Provenance follows target ----
    let own = s.get(
        &other,
        &format!("/fhir/AuditEvent?patient={pid}&_count=1000"),
    );
    assert_eq!(own.status, 200);
    leaks_nothing("AuditEvent search", &own);
    for e in own.json()["entry"].as_array().into_iter().flatten() {
        let agents = e["resource"]["agent"].to_string();
        assert!(
            agents.contains(&format!("Organization/{OTHER}")),
            "{agents}"
        );
    }
    let home_events = s.get(&home, "/fhir/AuditEvent?_count=1000").json();
    let home_event = home_events["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| !e["resource"]["agent"].to_string().contains(OTHER))
        .expect("an event of the home facility");
    let eid = home_event["resource"]["id"].as_str().unwrap();
    refused(
        "AuditEvent read",
        &s.get(&other, &format!("/fhir/AuditEvent/{eid}")),
    );
    let prov = s.get(
        &home,
        &format!("/fhir/Provenance?target=Observation/{}", r.obs),
    );
    let prov_id = prov.json()["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    refused(
        "Provenance read",
        &s.get(&other, &format!("/fhir/Provenance/{prov_id}")),
    );

    // ---- generic writes of Consents and enrolment Devices: 403 ----
    refused(
        "Consent create",
        &s.send(&other, "POST", "/fhir/Consent", &consent(&s, pid)),
    );
    refused(
        "Consent create by the home facility",
        &s.send(&home, "POST", "/fhir/Consent", &consent(&s, pid)),
    );
    let card = json!({"resourceType": "Device", "status": "active",
        "patient": {"reference": format!("Patient/{pid}")},
        "type": {"coding": [{"system": "urn:hexa:device-type", "code": "fido2-card"}]}});
    refused(
        "Device create",
        &s.send(&home, "POST", "/fhir/Device", &card),
    );
    let tx = s.send(
        &home,
        "POST",
        "/fhir",
        &json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "POST", "url": "Consent"}, "resource": consent(&s, pid)}]}),
    );
    assert_eq!(tx.status, 403, "{}", tx.text());

    // ---- with a consent: the data; its use recorded in the AuditEvent ----
    let c = s.system_write(consent(&s, pid), None);
    let cid = c["id"].as_str().unwrap().to_string();
    let read = s.get(&other, &format!("/fhir/Patient/{pid}"));
    assert_eq!(read.status, 200, "{}", read.text());
    assert!(read.text().contains("Mukamana"));
    let obs = s.get(&other, &format!("/fhir/Observation?patient={pid}"));
    assert_eq!(obs.json()["total"], 1);
    let inc = s.get(
        &other,
        &format!("/fhir/Observation?patient={pid}&_include=Observation:subject"),
    );
    assert!(inc.text().contains("Mukamana") && inc.text().contains("viral-load-secret-value"));
    let all = s.get(&other, &everything).text();
    assert!(all.contains("Mukamana") && all.contains("tuberculosis-secret-note"));
    let m = s.send(&other, "POST", "/fhir/Patient/$match", &match_query());
    assert!(m.text().contains("Josiane"), "{}", m.text());
    let events = s.get(
        &other,
        &format!("/fhir/AuditEvent?patient={pid}&_count=1000"),
    );
    let with_consent = events.json()["entry"].as_array().unwrap().iter().any(|e| {
        let ev = e["resource"].to_string();
        ev.contains(r#""valueCode":"consent""#)
            && ev.contains(&format!("Consent/{cid}/_history/1"))
            && ev.contains("authorizing consent")
    });
    assert!(with_consent, "the consent read is audited with its consent");

    // ---- revoked (next version inactive): closed again ----
    let mut revoked = c.clone();
    revoked["status"] = json!("inactive");
    s.system_write(revoked, Some((&cid, 1)));
    refused(
        "after revocation",
        &s.get(&other, &format!("/fhir/Patient/{pid}")),
    );
    empty(
        "search after revocation",
        &s.get(&other, &format!("/fhir/Observation?patient={pid}")),
    );
    empty("$everything after revocation", &s.get(&other, &everything));
    ids_only(
        "$match after revocation",
        &s.send(&other, "POST", "/fhir/Patient/$match", &match_query()),
    );

    // ---- emergency: needs a justification; flagged in the AuditEvent ----
    refused(
        "ETREAT without justification",
        &s.get_with(
            &other,
            &format!("/fhir/Observation/{}", r.obs),
            &[("X-Purpose-Of-Use", "ETREAT")],
        ),
    );
    let why = "unconscious patient brought to the emergency room";
    let em = s.get_with(
        &other,
        &format!("/fhir/Observation/{}", r.obs),
        &[
            ("X-Purpose-Of-Use", "ETREAT"),
            ("X-Access-Justification", why),
        ],
    );
    assert_eq!(em.status, 200, "{}", em.text());
    let events = s.get(
        &other,
        &format!("/fhir/AuditEvent?entity=Observation/{}&_count=1000", r.obs),
    );
    let flagged = events.json()["entry"].as_array().unwrap().iter().any(|e| {
        let ev = &e["resource"];
        ev["purposeOfEvent"][0]["coding"][0]["code"] == "ETREAT"
            && ev["purposeOfEvent"][0]["text"] == why
            && ev.to_string().contains(r#""valueCode":"emergency""#)
    });
    assert!(flagged, "{}", events.text());
}

#[test]
fn a_client_posing_as_the_appliance_is_refused() {
    let s = Server::start();
    let t = s.token("hexa-appliance", &s.facility());
    let r = s.req(
        "GET",
        "/fhir/Patient",
        &[
            ("Authorization", t.as_str()),
            ("X-Purpose-Of-Use", "HOPERAT"),
        ],
        b"",
    );
    assert_eq!(r.status, 403, "{}", r.text());
}

/// A consent limited to one practitioner of the other facility: that facility's system
/// reads only when it says it acts for that practitioner (`X-On-Behalf-Of`), and the
/// AuditEvent names the practitioner; another practitioner, or none, gets a 403.
#[test]
fn a_practitioner_scoped_consent_needs_that_practitioner() {
    let s = Server::start();
    let home = s.token("emr-home", &s.facility());
    let other = s.token("emr-other", OTHER);
    let r = seed(&s, &home);
    let mut c = consent(&s, &r.patient);
    let role = c["provision"]["actor"][0]["role"].clone();
    c["provision"]["actor"]
        .as_array_mut()
        .unwrap()
        .push(json!({"role": role, "reference": {"reference": "Practitioner/dr-kayitesi"}}));
    s.system_write(c, None);
    let path = format!("/fhir/Observation/{}", r.obs);
    let read = |who: Option<&str>| {
        let mut h = vec![];
        if let Some(w) = who {
            h.push(("X-On-Behalf-Of", w));
        }
        s.get_with(&other, &path, &h)
    };
    refused("no practitioner named", &read(None));
    refused("another practitioner", &read(Some("Practitioner/dr-other")));
    let ok = read(Some("Practitioner/dr-kayitesi"));
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert!(ok.text().contains("viral-load-secret-value"));
    let bad = read(Some("Patient/x"));
    assert_eq!(bad.status, 400, "{}", bad.text());
    let events = s.get(
        &other,
        &format!("/fhir/AuditEvent?entity=Observation/{}&_count=1000", r.obs),
    );
    assert!(
        events.text().contains("Practitioner/dr-kayitesi"),
        "{}",
        events.text()
    );
}

/// Another facility may not change or delete what it did not write: a blind update or a
/// delete of the home facility's Observation is 403 and the record stays as it was.
#[test]
fn another_facility_cannot_overwrite_or_delete_records() {
    let s = Server::start();
    let home = s.token("emr-home", &s.facility());
    let other = s.token("emr-other", OTHER);
    let r = seed(&s, &home);
    let path = format!("/fhir/Observation/{}", r.obs);
    let forged = json!({"resourceType": "Observation", "id": r.obs, "status": "entered-in-error",
        "subject": {"reference": format!("Patient/{}", r.patient)},
        "code": {"coding": [{"system": "http://loinc.org", "code": "20447-9"}]}});
    refused("blind update", &s.send(&other, "PUT", &path, &forged));
    refused(
        "delete",
        &s.req("DELETE", &path, &[("Authorization", other.as_str())], b""),
    );
    let now = s.get(&home, &path);
    assert_eq!(now.status, 200);
    assert_eq!(now.json()["meta"]["versionId"], "1");
    assert_eq!(now.json()["status"], "final");
    // The author still can.
    let mut mine = now.json();
    mine["status"] = json!("amended");
    assert_eq!(s.send(&home, "PUT", &path, &mine).status, 200);
}
