//! The front-desk page in a real headless browser (issue #6, "Must show"): starts the real
//! `hexa` binary (`serve` on `127.0.0.1:0`, a temporary data directory, simulated
//! readers), registers two integrator clients with `hexa client add`, creates the
//! facilities, a patient with an Observation and an enrolled simulated card, then runs
//! `tests/browser/desk.mjs` (Node + playwright-core driving Debian's `/usr/bin/chromium`),
//! which opens `/desk`, starts a consent request through the FHIR API, taps a stranger's
//! card (refused) then the enrolled card through `/sim`, logs the patient in by a card tap and checks the access list, asserting
//! on the visible text and saving a screenshot of each step under
//! `$CARGO_TARGET_TMPDIR/desk-browser/` (the path is printed).
//!
//! Needs what `.ci/setup` installs: Debian's `chromium` and `npm ci` in `tests/browser`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hexa_crypto::keys::SigningKey;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const FACILITY: &str = "rw-dh-kibagabaga";
const FACILITY_NAME: &str = "Kibagabaga District Hospital";
const GRANTEE: &str = "rw-chuk";
const GRANTEE_NAME: &str = "University Teaching Hospital of Kigali (CHUK)";

fn hexa(data: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hexa"));
    c.env("HEXA_DATA_DIR", data)
        .env_remove("HEXA_KEY_PASSPHRASE")
        .env("RUST_LOG", "info");
    c
}

fn run_ok(mut c: Command) {
    let out = c.output().expect("hexa runs");
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `hexa serve`, stopped (SIGTERM, then waited for) when dropped.
struct Serve {
    child: Child,
    addr: SocketAddr,
}

impl Serve {
    fn start(data: &Path) -> Serve {
        let mut child = hexa(data)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("hexa serve starts");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr is piped")).lines();
        let mut seen = String::new();
        let addr = loop {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                panic!("hexa serve stopped before listening:\n{seen}");
            };
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("hexa serving")
                && let Some(a) = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
            {
                break a.parse::<SocketAddr>().expect("a socket address");
            }
        };
        // Keep draining the log so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Serve { child, addr }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = self.child.wait();
    }
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
}

fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut h = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
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

/// A client registered with `hexa client add`: its id and key.
struct Client {
    id: &'static str,
    key: SigningKey,
}

impl Client {
    fn register(data: &Path, id: &'static str, facility: &str, scopes: &str) -> Client {
        let key = SigningKey::generate().unwrap();
        let jwks = data.with_file_name(format!("{id}.jwks.json"));
        std::fs::write(
            &jwks,
            serde_json::to_vec(&json!({"keys": [key.public().to_jwk()]})).unwrap(),
        )
        .unwrap();
        let mut c = hexa(data);
        c.args(["client", "add", "--id", id, "--facility", facility])
            .arg("--jwks")
            .arg(&jwks)
            .args(["--scopes", scopes]);
        run_ok(c);
        Client { id, key }
    }

    /// A bearer token (SMART Backend Services `private_key_jwt`).
    fn token(&self, addr: SocketAddr, scopes: &str) -> String {
        let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let header = b64(&json!({"alg": "EdDSA", "typ": "JWT", "kid": self.key.public().kid()}));
        let claims = b64(&json!({
            "iss": self.id, "sub": self.id, "aud": format!("http://{addr}/fhir/token"),
            "iat": now, "exp": now + 120, "jti": format!("desk-{}-{now}", self.id),
        }));
        let input = format!("{header}.{claims}");
        let sig = URL_SAFE_NO_PAD.encode(self.key.sign(input.as_bytes()));
        let form = format!(
            "grant_type=client_credentials&scope={}&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={input}.{sig}",
            scopes
                .replace(' ', "+")
                .replace('/', "%2F")
                .replace('*', "%2A")
        );
        let r = request(
            addr,
            "POST",
            "/fhir/token",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            form.as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        format!("Bearer {}", r.json()["access_token"].as_str().unwrap())
    }
}

fn fhir(addr: SocketAddr, token: &str, method: &str, path: &str, body: &Value) -> Resp {
    let b = if body.is_null() {
        Vec::new()
    } else {
        serde_json::to_vec(body).unwrap()
    };
    request(
        addr,
        method,
        path,
        &[
            ("Authorization", token),
            ("Content-Type", "application/fhir+json"),
        ],
        &b,
    )
}

fn sim(addr: SocketAddr, path: &str, body: &Value) -> Resp {
    let r = request(
        addr,
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

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/browser")
}

#[test]
fn front_desk_page_in_headless_chromium() {
    let browser = browser_dir();
    assert!(
        Path::new("/usr/bin/chromium").exists()
            && browser.join("node_modules/playwright-core").is_dir(),
        "the browser test needs Debian's chromium and `npm ci` in tests/browser: run `bash .ci/setup`"
    );
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut init = hexa(&data);
    init.args([
        "init",
        "--facility-id",
        FACILITY,
        "--facility-name",
        FACILITY_NAME,
    ]);
    run_ok(init);
    let own = Client::register(&data, "emr-kibagabaga", FACILITY, "system/*.cruds");
    let other = Client::register(&data, "emr-chuk", GRANTEE, "system/*.rs");
    let server = Serve::start(&data);
    let addr = server.addr;
    let token_a = own.token(addr, "system/*.cruds");
    let token_b = other.token(addr, "system/*.rs");

    // The facilities as the registry knows them, a patient with one Observation.
    for (id, name) in [(FACILITY, FACILITY_NAME), (GRANTEE, GRANTEE_NAME)] {
        let r = fhir(
            addr,
            &token_a,
            "PUT",
            &format!("/fhir/Organization/{id}"),
            &json!({"resourceType": "Organization", "id": id, "name": name, "active": true}),
        );
        assert!(
            r.status == 201 || r.status == 200,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
    }
    let r = fhir(
        addr,
        &token_a,
        "POST",
        "/fhir/Patient",
        &json!({"resourceType": "Patient", "name": [{"family": "Uwase", "given": ["Marie"]}],
                "gender": "female", "birthDate": "1990-04-12"}),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let patient = r.json()["id"].as_str().unwrap().to_owned();
    let r = fhir(
        addr,
        &token_a,
        "POST",
        "/fhir/Observation",
        &json!({"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7", "display": "Body weight"}]},
                "subject": {"reference": format!("Patient/{patient}")},
                "effectiveDateTime": "2026-11-20T10:00:00Z",
                "valueQuantity": {"value": 61.5, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}}),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));

    // The patient's card, enrolled at this desk, then lifted off the reader.
    let card = sim(addr, "/sim/cards", &json!({"model": "ed25519"})).json()["card"]
        .as_u64()
        .unwrap();
    sim(addr, "/sim/reader/present", &json!({"card": card}));
    let r = fhir(
        addr,
        &token_a,
        "POST",
        &format!("/fhir/Patient/{patient}/$enroll-card"),
        &json!({"resourceType": "Parameters", "parameter": []}),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    sim(addr, "/sim/reader/lift", &json!({}));

    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("desk-browser");
    let _ = std::fs::remove_dir_all(&shots);
    println!("screenshots: {}", shots.display());
    let out = Command::new("node")
        .arg(browser.join("desk.mjs"))
        .current_dir(&browser)
        .env("HEXA_BASE", format!("http://{addr}"))
        .env("HEXA_TOKEN_A", &token_a)
        .env("HEXA_TOKEN_B", &token_b)
        .env("HEXA_GRANTEE", GRANTEE)
        .env("HEXA_GRANTEE_NAME", GRANTEE_NAME)
        .env("HEXA_PATIENT", &patient)
        .env("HEXA_CARD", card.to_string())
        .env("HEXA_SHOTS", &shots)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the browser test failed:\n{stdout}\n{stderr}"
    );
    let mut pngs: Vec<String> = std::fs::read_dir(&shots)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".png"))
        .collect();
    pngs.sort();
    assert_eq!(
        pngs,
        [
            "01-idle.png",
            "02-request-waiting-for-card.png",
            "03-request-refused-wrong-card.png",
            "04-request-granted.png",
            "05-login-waiting-for-card.png",
            "06-patient-access-list.png",
            "07-finished.png"
        ],
        "a screenshot of each step"
    );
    drop(server);
}
