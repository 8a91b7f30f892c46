//! Client authentication (SMART Backend Services) through `hexa_appliance::auth`, without
//! HTTP: registration and persistence, the token endpoint with every accepted algorithm and
//! the assertions it must refuse, and bearer-token checks.

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hexa_appliance::auth::{
    ASSERTION_TYPE, Authenticator, ClientRegistration, Interaction, Scopes,
};
use p256::ecdsa::signature::Signer as _;
use rsa::traits::PublicKeyParts as _;
use serde_json::{Value, json};
use sha2::Digest as _;

const TOKEN_URL: &str = "https://hexa.test/fhir/token";
const ISSUER: &str = "https://hexa.test/fhir";
const NOW: u64 = 1_800_000_000;

fn b64(b: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

fn random32() -> [u8; 32] {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).unwrap();
    b
}

/// One RSA key per test binary: generation is the slow part.
fn rsa_key() -> &'static rsa::RsaPrivateKey {
    static KEY: OnceLock<rsa::RsaPrivateKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut rng = getrandom::rand_core::UnwrapErr(getrandom::SysRng);
        rsa::RsaPrivateKey::new(&mut rng, 2048).unwrap()
    })
}

/// A client's private key in the test.
enum Key {
    Ed(hexa_crypto::keys::SigningKey),
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
    Rsa(&'static rsa::RsaPrivateKey),
}

impl Key {
    fn for_alg(alg: &str) -> Key {
        match alg {
            "EdDSA" => Key::Ed(hexa_crypto::keys::SigningKey::generate().unwrap()),
            "ES256" => Key::P256(p256::ecdsa::SigningKey::from_slice(&random32()).unwrap()),
            "ES384" => {
                let mut b = [0u8; 48];
                getrandom::fill(&mut b).unwrap();
                Key::P384(p384::ecdsa::SigningKey::from_slice(&b).unwrap())
            }
            "RS256" | "RS384" => Key::Rsa(rsa_key()),
            other => panic!("no test key for {other}"),
        }
    }

    fn public_jwk(&self, kid: &str) -> Value {
        let mut j = match self {
            Key::Ed(k) => k.public().to_jwk(),
            Key::P256(k) => {
                let p = k.verifying_key().to_sec1_point(false);
                let b = p.as_bytes();
                json!({"kty": "EC", "crv": "P-256", "x": b64(&b[1..33]), "y": b64(&b[33..65])})
            }
            Key::P384(k) => {
                let p = k.verifying_key().to_sec1_point(false);
                let b = p.as_bytes();
                json!({"kty": "EC", "crv": "P-384", "x": b64(&b[1..49]), "y": b64(&b[49..97])})
            }
            Key::Rsa(k) => json!({
                "kty": "RSA",
                "n": b64(k.n().to_be_bytes_trimmed_vartime()),
                "e": b64(k.e().to_be_bytes_trimmed_vartime()),
            }),
        };
        j["kid"] = json!(kid);
        j
    }

    fn sign(&self, alg: &str, msg: &[u8]) -> Vec<u8> {
        match (self, alg) {
            (Key::Ed(k), _) => k.sign(msg).to_vec(),
            (Key::P256(k), _) => {
                let s: p256::ecdsa::Signature = k.sign(msg);
                s.to_bytes().to_vec()
            }
            (Key::P384(k), _) => {
                let s: p384::ecdsa::Signature = k.sign(msg);
                s.to_bytes().to_vec()
            }
            (Key::Rsa(k), "RS256") => k
                .sign(
                    rsa::pkcs1v15::Pkcs1v15Sign::new::<sha2::Sha256>(),
                    &sha2::Sha256::digest(msg),
                )
                .unwrap(),
            (Key::Rsa(k), _) => k
                .sign(
                    rsa::pkcs1v15::Pkcs1v15Sign::new::<sha2::Sha384>(),
                    &sha2::Sha384::digest(msg),
                )
                .unwrap(),
        }
    }
}

fn jwt(key: &Key, header: &Value, claims: &Value) -> String {
    let signing_input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
    let alg = header["alg"].as_str().unwrap_or("");
    let sig = key.sign(alg, signing_input.as_bytes());
    format!("{signing_input}.{}", b64(sig))
}

fn claims(client_id: &str, jti: &str) -> Value {
    json!({
        "iss": client_id, "sub": client_id, "aud": TOKEN_URL,
        "exp": NOW + 240, "iat": NOW, "jti": jti,
    })
}

fn form(assertion: &str, scope: &str) -> Vec<u8> {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                b' ' => "+".into(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    format!(
        "grant_type=client_credentials&scope={}&client_assertion_type={}&client_assertion={}",
        enc(scope),
        enc(ASSERTION_TYPE),
        enc(assertion)
    )
    .into_bytes()
}

struct Fixture {
    _dir: tempfile::TempDir,
    auth: Authenticator,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let auth = Authenticator::open(dir.path(), ISSUER).unwrap();
    Fixture { _dir: dir, auth }
}

fn register(auth: &Authenticator, id: &str, key: &Key, kid: &str, scopes: &str) {
    auth.register_client(ClientRegistration {
        client_id: id.into(),
        facility_id: "fac-1".into(),
        jwks: json!({ "keys": [key.public_jwk(kid)] }),
        scopes: scopes.into(),
    })
    .unwrap();
}

/// Requests a token with a well-formed assertion for `alg`; returns (status, body).
fn request(auth: &Authenticator, key: &Key, alg: &str, header: Value, c: Value) -> (u16, Value) {
    let _ = alg;
    auth.token_endpoint(&form(&jwt(key, &header, &c), "system/*.rs"), TOKEN_URL, NOW)
}

#[test]
fn every_algorithm_is_accepted_and_its_token_authenticates() {
    let f = fixture();
    for alg in hexa_appliance::auth::ALGORITHMS {
        let key = Key::for_alg(alg);
        let id = format!("client-{alg}");
        register(
            &f.auth,
            &id,
            &key,
            "k1",
            "system/Patient.cruds system/Observation.rs",
        );
        let header = json!({"alg": alg, "kid": "k1", "typ": "JWT"});
        let a = jwt(&key, &header, &claims(&id, &format!("jti-{alg}")));
        let (status, body) = f.auth.token_endpoint(
            &form(&a, "system/Patient.rs system/Observation.read"),
            TOKEN_URL,
            NOW,
        );
        assert_eq!(status, 200, "{alg}: {body}");
        assert_eq!(body["token_type"], "bearer");
        assert_eq!(body["expires_in"], 300);
        let granted = Scopes::parse(body["scope"].as_str().unwrap()).unwrap();
        assert!(granted.allows("Patient", Interaction::Search));
        assert!(
            !granted.allows("Patient", Interaction::Create),
            "{alg}: beyond request"
        );
        let tok = body["access_token"].as_str().unwrap();
        let p = f
            .auth
            .authenticate(Some(&format!("Bearer {tok}")), NOW + 10)
            .unwrap();
        assert_eq!(p.client_id, id);
        assert_eq!(p.facility_id, "fac-1");
        assert!(p.scopes.allows("Observation", Interaction::Read));
        assert!(!p.scopes.allows("Encounter", Interaction::Read));
    }
}

fn refused(status_body: (u16, Value), status: u16, code: &str) {
    let (s, b) = status_body;
    assert_eq!((s, b["error"].as_str().unwrap()), (status, code), "{b}");
    assert!(b["error_description"].is_string());
}

/// Refused as invalid_client for the reason containing `why` (not for some other reason).
fn refused_for(status_body: (u16, Value), why: &str) {
    let (s, b) = status_body;
    assert_eq!(
        (s, b["error"].as_str().unwrap()),
        (401, "invalid_client"),
        "{b}"
    );
    let d = b["error_description"].as_str().unwrap();
    assert!(d.contains(why), "expected {why:?} in {d:?}");
}

#[test]
fn bad_assertions_are_refused() {
    let f = fixture();
    let key = Key::for_alg("ES384");
    register(&f.auth, "lab", &key, "k1", "system/*.cruds");
    let h = json!({"alg": "ES384", "kid": "k1"});
    let auth = &f.auth;

    let mut c = claims("lab", "expired");
    c["exp"] = json!(NOW);
    refused_for(request(auth, &key, "ES384", h.clone(), c), "expired");

    let mut c = claims("lab", "long");
    c["exp"] = json!(NOW + 301);
    refused_for(
        request(auth, &key, "ES384", h.clone(), c),
        "at most five minutes",
    );

    let mut c = claims("lab", "aud");
    c["aud"] = json!("https://elsewhere.test/token");
    refused_for(request(auth, &key, "ES384", h.clone(), c), "aud");

    let mut c = claims("lab", "sub");
    c["sub"] = json!("someone-else");
    refused_for(
        request(auth, &key, "ES384", h.clone(), c),
        "sub must equal iss",
    );

    let c = claims("nobody", "iss");
    refused_for(request(auth, &key, "ES384", h.clone(), c), "unknown client");

    let mut c = claims("lab", "future");
    c["iat"] = json!(NOW + 120);
    refused_for(
        request(auth, &key, "ES384", h.clone(), c),
        "iat is in the future",
    );

    let mut c = claims("lab", "x");
    c.as_object_mut().unwrap().remove("jti");
    refused_for(request(auth, &key, "ES384", h.clone(), c), "jti");

    // Unknown kid, and a kid without one at all.
    let c = claims("lab", "kid");
    let other = json!({"alg": "ES384", "kid": "k2"});
    refused_for(
        request(auth, &key, "ES384", other, c.clone()),
        "no registered key has this kid",
    );
    let nokid = json!({"alg": "ES384"});
    refused_for(request(auth, &key, "ES384", nokid, c), "lacks kid");

    // The key's algorithm is not the header's.
    let c = claims("lab", "mismatch");
    let es256 = json!({"alg": "ES256", "kid": "k1"});
    refused_for(request(auth, &key, "ES256", es256, c), "not for this alg");

    // A signature from another key with the same kid.
    let impostor = Key::for_alg("ES384");
    let c = claims("lab", "impostor");
    refused_for(
        request(auth, &impostor, "ES384", h.clone(), c),
        "signature does not verify",
    );

    // Tampered claims under a good signature.
    let good = jwt(&key, &h, &claims("lab", "tamper"));
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let mut forged = claims("lab", "tamper");
    forged["sub"] = json!("lab");
    forged["exp"] = json!(NOW + 299);
    parts[1] = b64(forged.to_string());
    let r = auth.token_endpoint(&form(&parts.join("."), "system/*.rs"), TOKEN_URL, NOW);
    refused_for(r, "signature does not verify");

    // alg none (empty signature) and HS256 keyed with public material.
    let none_hdr = b64(json!({"alg": "none", "kid": "k1"}).to_string());
    let none = format!("{none_hdr}.{}.", b64(claims("lab", "none").to_string()));
    let r = auth.token_endpoint(&form(&none, "system/*.rs"), TOKEN_URL, NOW);
    refused_for(r, "\"none\" is not accepted");
    let hs_input = format!(
        "{}.{}",
        b64(json!({"alg": "HS256", "kid": "k1"}).to_string()),
        b64(claims("lab", "hs").to_string())
    );
    let secret = key.public_jwk("k1").to_string();
    let mac = hmac_sha256(secret.as_bytes(), hs_input.as_bytes());
    let hs = format!("{hs_input}.{}", b64(mac));
    let r = auth.token_endpoint(&form(&hs, "system/*.rs"), TOKEN_URL, NOW);
    refused_for(r, "\"HS256\" is not accepted");

    // Replay: the same assertion works once.
    let once = jwt(&key, &h, &claims("lab", "once"));
    let (s, _) = auth.token_endpoint(&form(&once, "system/*.rs"), TOKEN_URL, NOW);
    assert_eq!(s, 200);
    let r = auth.token_endpoint(&form(&once, "system/*.rs"), TOKEN_URL, NOW + 1);
    refused_for(r, "already used");
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    use hmac::{KeyInit as _, Mac as _};
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    m.update(msg);
    m.finalize().into_bytes().to_vec()
}

#[test]
fn malformed_requests_and_scopes() {
    let f = fixture();
    let key = Key::for_alg("EdDSA");
    register(&f.auth, "emr", &key, "k1", "system/Patient.rs");
    let h = json!({"alg": "EdDSA", "kid": "k1"});
    let a = |jti: &str| jwt(&key, &h, &claims("emr", jti));

    let body = String::from_utf8(form(&a("g"), "system/*.rs")).unwrap();
    let wrong = body.replace("client_credentials", "authorization_code");
    refused(
        f.auth.token_endpoint(wrong.as_bytes(), TOKEN_URL, NOW),
        400,
        "unsupported_grant_type",
    );
    let twice = format!("{body}&scope=system%2F*.cruds");
    refused(
        f.auth.token_endpoint(twice.as_bytes(), TOKEN_URL, NOW),
        400,
        "invalid_request",
    );
    refused(
        f.auth.token_endpoint(b"%zz", TOKEN_URL, NOW),
        400,
        "invalid_request",
    );
    refused(
        f.auth.token_endpoint(b"", TOKEN_URL, NOW),
        400,
        "invalid_request",
    );

    refused(
        f.auth
            .token_endpoint(&form(&a("s1"), "system/Observation.rs"), TOKEN_URL, NOW),
        400,
        "invalid_scope",
    );
    refused(
        f.auth
            .token_endpoint(&form(&a("s2"), "patient/*.read"), TOKEN_URL, NOW),
        400,
        "invalid_scope",
    );
    // v1 request against a v2 registration: only what both allow.
    let (s, b) = f
        .auth
        .token_endpoint(&form(&a("s3"), "system/*.*"), TOKEN_URL, NOW);
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["scope"], "system/Patient.read");
}

#[test]
fn bearer_tokens_are_checked() {
    let f = fixture();
    let key = Key::for_alg("ES256");
    register(&f.auth, "dhis2", &key, "k1", "system/*.read");
    let h = json!({"alg": "ES256", "kid": "k1"});
    let (s, b) = f.auth.token_endpoint(
        &form(&jwt(&key, &h, &claims("dhis2", "t")), "system/*.read"),
        TOKEN_URL,
        NOW,
    );
    assert_eq!(s, 200, "{b}");
    let tok = b["access_token"].as_str().unwrap().to_owned();
    let ok = format!("Bearer {tok}");
    assert!(f.auth.authenticate(Some(&ok), NOW + 299).is_ok());
    assert!(
        f.auth
            .authenticate(Some(&format!("bearer {tok}")), NOW)
            .is_ok()
    );

    let e = f.auth.authenticate(Some(&ok), NOW + 300).unwrap_err();
    assert_eq!((e.status(), e.code()), (401, "invalid_token"));
    let e = f.auth.authenticate(None, NOW).unwrap_err();
    assert_eq!(e.status(), 401);
    for bad in [
        format!("Basic {tok}"),
        "Bearer".to_owned(),
        "Bearer hexa1.e30.AAAA".to_owned(),
        format!("Bearer {}x", tok),
        format!("Bearer {}", tok.replacen("hexa1.e", "hexa1.f", 1)),
    ] {
        let e = f.auth.authenticate(Some(&bad), NOW).unwrap_err();
        assert_eq!(e.status(), 401, "{bad}");
    }

    // A token from another authenticator (a restart) does not verify here.
    let dir2 = tempfile::tempdir().unwrap();
    let other = Authenticator::open(dir2.path(), ISSUER).unwrap();
    assert!(other.authenticate(Some(&ok), NOW).is_err());

    // Revocation ends the client's tokens at once, and registering the same id again
    // does not revive them.
    assert!(f.auth.revoke_client("dhis2").unwrap());
    assert!(f.auth.authenticate(Some(&ok), NOW).is_err());
    register(&f.auth, "dhis2", &key, "k1", "system/*.read");
    let e = f.auth.authenticate(Some(&ok), NOW).unwrap_err();
    assert_eq!(e.code(), "invalid_token");
}

#[test]
fn clients_persist_across_open_with_private_modes() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let key = Key::for_alg("RS384");
    {
        let auth = Authenticator::open(dir.path(), ISSUER).unwrap();
        register(&auth, "nhie", &key, "rsa-1", "system/*.cruds");
    }
    let file = hexa_appliance::auth::client_file(dir.path(), "nhie");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(file.parent().unwrap()), 0o700);

    let auth = Authenticator::open(dir.path(), ISSUER).unwrap();
    assert_eq!(auth.clients().len(), 1);
    assert_eq!(auth.clients()[0].facility_id, "fac-1");
    let h = json!({"alg": "RS384", "kid": "rsa-1"});
    let (s, b) = auth.token_endpoint(
        &form(&jwt(&key, &h, &claims("nhie", "p")), "system/Patient.cruds"),
        TOKEN_URL,
        NOW,
    );
    assert_eq!(s, 200, "{b}");

    // Leftover temporary files (an interrupted write) are ignored; a corrupt client file
    // stops the start rather than silently dropping a client.
    let clients_dir = file.parent().unwrap().to_owned();
    std::fs::write(clients_dir.join(".x.json.tmp"), b"{").unwrap();
    assert!(Authenticator::open(dir.path(), ISSUER).is_ok());
    std::fs::write(clients_dir.join("broken.json"), b"{").unwrap();
    let e = Authenticator::open(dir.path(), ISSUER).unwrap_err();
    assert_eq!(e.code(), "server_error");
    std::fs::remove_file(clients_dir.join("broken.json")).unwrap();

    assert!(auth.revoke_client("nhie").unwrap());
    assert!(!file.exists());
    let auth = Authenticator::open(dir.path(), ISSUER).unwrap();
    assert!(auth.clients().is_empty());
}

#[test]
fn bad_registrations_are_refused() {
    let f = fixture();
    let key = Key::for_alg("EdDSA");
    let reg = |id: &str, jwks: Value, scopes: &str| ClientRegistration {
        client_id: id.into(),
        facility_id: "fac-1".into(),
        jwks,
        scopes: scopes.into(),
    };
    let good = key.public_jwk("k");
    let mut private = good.clone();
    private["d"] = json!(b64([1u8; 32]));
    let cases = [
        reg("../escape", good.clone(), "system/*.rs"),
        reg(".hidden", good.clone(), "system/*.rs"),
        reg("ok", good.clone(), "system/*.bogus"),
        reg("ok", private, "system/*.rs"),
        reg("ok", json!({"kty": "oct", "k": "c2VjcmV0"}), "system/*.rs"),
        reg("ok", json!({"keys": []}), "system/*.rs"),
        reg(
            "ok",
            json!({"keys": [good.clone(), good.clone()]}),
            "system/*.rs",
        ),
    ];
    for c in cases {
        let e = f.auth.register_client(c.clone()).unwrap_err();
        assert_eq!(
            (e.status(), e.code()),
            (400, "invalid_client_metadata"),
            "{c:?}"
        );
    }
    assert!(f.auth.clients().is_empty());
    // A single JWK (not a set) without kid registers under its thumbprint.
    let mut bare = key.public_jwk("x");
    bare.as_object_mut().unwrap().remove("kid");
    f.auth
        .register_client(reg("single", bare, "system/*.rs"))
        .unwrap();
}

#[test]
fn smart_configuration_advertises_what_is_implemented() {
    let f = fixture();
    let c = f.auth.smart_configuration("https://hexa.test/fhir/");
    assert_eq!(c["token_endpoint"], TOKEN_URL);
    assert_eq!(
        c["token_endpoint_auth_methods_supported"],
        json!(["private_key_jwt"])
    );
    assert_eq!(
        c["token_endpoint_auth_signing_alg_values_supported"],
        json!(["EdDSA", "ES256", "ES384", "RS256", "RS384"])
    );
    assert_eq!(c["grant_types_supported"], json!(["client_credentials"]));
    for cap in [
        "client-confidential-asymmetric",
        "permission-v1",
        "permission-v2",
    ] {
        assert!(c["capabilities"].as_array().unwrap().contains(&json!(cap)));
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

#[test]
fn pem_public_keys_convert_to_the_same_jwk() {
    use p256::pkcs8::EncodePublicKey as _;
    use rsa::pkcs1::EncodeRsaPublicKey as _;
    let without_kid = |mut j: Value| {
        let o = j.as_object_mut().unwrap();
        for k in ["kid", "alg", "use"] {
            o.remove(k);
        }
        j
    };
    for alg in ["EdDSA", "ES256", "ES384", "RS256"] {
        let key = Key::for_alg(alg);
        let mut pems = Vec::new();
        match &key {
            Key::Ed(k) => {
                let mut der = vec![
                    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
                ];
                der.extend_from_slice(k.public().as_bytes());
                pems.push(pem("PUBLIC KEY", &der));
            }
            Key::P256(k) => {
                let der = k.verifying_key().to_public_key_der().unwrap();
                pems.push(pem("PUBLIC KEY", der.as_bytes()));
            }
            Key::P384(k) => {
                let der = k.verifying_key().to_public_key_der().unwrap();
                pems.push(pem("PUBLIC KEY", der.as_bytes()));
            }
            Key::Rsa(k) => {
                let public = k.to_public_key();
                let der = public.to_public_key_der().unwrap();
                pems.push(pem("PUBLIC KEY", der.as_bytes()));
                let der = public.to_pkcs1_der().unwrap();
                pems.push(pem("RSA PUBLIC KEY", der.as_bytes()));
            }
        }
        for p in pems {
            let jwk = hexa_appliance::auth::jwk_from_pem(&p).unwrap();
            assert_eq!(jwk, without_kid(key.public_jwk("k")), "{alg}");
        }
    }
    for bad in [
        "",
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----",
        "-----BEGIN PUBLIC KEY-----\n!!\n-----END PUBLIC KEY-----",
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END RSA PUBLIC KEY-----",
    ] {
        let e = hexa_appliance::auth::jwk_from_pem(bad).unwrap_err();
        assert_eq!(e.code(), "invalid_client_metadata", "{bad:?}");
    }
}
