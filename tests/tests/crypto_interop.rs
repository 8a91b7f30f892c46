//! Interoperability: hexa's detached JWS over RFC 8785 bytes must verify with an independent
//! JOSE implementation (Python `jwcrypto`) and canonicalizer (Python `rfc8785`).
//!
//! Runs `tests/interop/verify_jws.py` with `python3` (or `$HEXA_PYTHON`). If the Python
//! packages are missing the test fails and says how to install them.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use hexa_crypto::{jcs, jws, keys::SigningKey};
use serde_json::{Value, json};

fn python() -> String {
    std::env::var("HEXA_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop/verify_jws.py")
}

fn require_python_packages() {
    let out = Command::new(python())
        .args(["-c", "import jwcrypto, rfc8785"])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e}; install Python 3 or set HEXA_PYTHON",
                python()
            )
        });
    assert!(
        out.status.success(),
        "the Python interop packages are missing ({}); run: \
         python3 -m pip install -r tests/interop/requirements.txt",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Runs the Python verifier; returns (exit code, stderr).
fn run_verifier(req: &Value) -> (i32, String) {
    let mut child = Command::new(python())
        .arg(script())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python verifier");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(req.to_string().as_bytes())
        .expect("write request");
    let out = child.wait_with_output().expect("wait for python verifier");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A FHIR Patient written with members out of order, non-ASCII text, escapes and numbers that
/// exercise RFC 8785's ECMAScript number formatting.
const PATIENT: &str = r#"{
  "resourceType": "Patient",
  "name": [{"given": ["Zoë", "Ana-María"], "family": "Müller-Øster", "use": "official"}],
  "id": "pat-001",
  "birthDate": "1980-02-29",
  "active": true,
  "extension": [{"url": "http://example.org/weight", "valueDecimal": 72.50},
                {"url": "http://example.org/ratio", "valueDecimal": 1E-7},
                {"url": "http://example.org/big", "valueDecimal": 1e21}],
  "telecom": [{"system": "phone", "value": "+41 44 000 00 00"}],
  "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">\u20ac \ud83d\ude00 tab\t</div>"},
  "multipleBirthInteger": 2,
  "meta": {"versionId": "3", "lastUpdated": "2026-01-01T00:00:00Z"}
}"#;

fn request(key: &SigningKey, payload_json: &str, signed: &[u8], token: &str) -> Value {
    json!({
        "jwk": key.public().to_jwk(),
        "payload_json": payload_json,
        "signed_payload": std::str::from_utf8(signed).expect("JCS output is UTF-8"),
        "jws": token,
    })
}

#[test]
fn python_jwcrypto_verifies_hexa_signature() {
    require_python_packages();
    let key = SigningKey::generate().expect("key");
    let canonical = jcs::canonicalize_str(PATIENT).expect("canonical");
    let token = jws::sign_detached(&key, &canonical);
    let (code, err) = run_verifier(&request(&key, PATIENT, &canonical, &token));
    assert_eq!(code, 0, "python verifier rejected a valid signature: {err}");
}

#[test]
fn python_rejects_tampered_payload() {
    require_python_packages();
    let key = SigningKey::generate().expect("key");
    let canonical = jcs::canonicalize_str(PATIENT).expect("canonical");
    let token = jws::sign_detached(&key, &canonical);

    // The record changed after signing: its canonical form no longer matches the signed bytes.
    let tampered = PATIENT.replace("1980-02-29", "1980-02-28");
    let (code, err) = run_verifier(&request(&key, &tampered, &canonical, &token));
    assert_eq!(code, 1, "tampered payload not rejected: {err}");

    // Same change presented consistently: now jwcrypto itself must reject the signature.
    let tampered_canonical = jcs::canonicalize_str(&tampered).expect("canonical");
    let (code, err) = run_verifier(&request(&key, &tampered, &tampered_canonical, &token));
    assert_eq!(
        code, 1,
        "jwcrypto accepted a signature over other bytes: {err}"
    );
    assert!(
        err.contains("jwcrypto rejected"),
        "unexpected failure: {err}"
    );

    // A different key (with a matching kid) must not verify either.
    let other = SigningKey::generate().expect("key");
    let forged = jws::sign_detached(&other, &canonical);
    let (code, _) = run_verifier(&request(&key, PATIENT, &canonical, &forged));
    assert_eq!(code, 1);
}
