//! Client authentication: the token endpoint (SMART Backend Services, an EdDSA client
//! assertion) and checking a bearer token on every FHIR request.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{Criterion, criterion_group, criterion_main};
use hexa_appliance::auth::{Authenticator, ClientRegistration, Interaction};
use hexa_crypto::keys::SigningKey;
use serde_json::json;
use std::hint::black_box;

const TOKEN_URL: &str = "http://127.0.0.1/fhir/token";
const NOW: u64 = 1_790_000_000;

fn assertion(key: &SigningKey, client: &str, jti: u64, now: u64) -> Vec<u8> {
    let h = URL_SAFE_NO_PAD.encode(json!({"alg": "EdDSA", "kid": "k1", "typ": "JWT"}).to_string());
    let c = URL_SAFE_NO_PAD.encode(
        json!({"iss": client, "sub": client, "aud": TOKEN_URL, "exp": now + 240,
               "iat": now, "jti": format!("bench-{jti}")})
        .to_string(),
    );
    let input = format!("{h}.{c}");
    let sig = URL_SAFE_NO_PAD.encode(key.sign(input.as_bytes()));
    format!(
        "grant_type=client_credentials&scope=system%2F%2A.rs\
         &client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer\
         &client_assertion={input}.{sig}"
    )
    .into_bytes()
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let auth = Authenticator::open(dir.path(), "urn:hexa:bench").unwrap();
    let key = SigningKey::generate().unwrap();
    let mut jwk = key.public().to_jwk();
    jwk["kid"] = json!("k1");
    auth.register_client(ClientRegistration {
        client_id: "emr".into(),
        facility_id: "f1".into(),
        jwks: json!({"keys": [jwk]}),
        scopes: "system/*.cruds".into(),
    })
    .unwrap();

    let mut n = 0u64;
    let mut token = String::new();
    c.bench_function("auth/token_endpoint_eddsa", |b| {
        b.iter_batched(
            || {
                // One second per request: the used-jti cache (bounded per client) holds
                // only assertions that have not expired, as in steady use.
                n += 1;
                (assertion(&key, "emr", n, NOW + n), NOW + n)
            },
            |(form, now)| {
                let (status, body) = auth.token_endpoint(&form, TOKEN_URL, now);
                assert_eq!(status, 200, "{body}");
                token = body["access_token"].as_str().unwrap().to_owned();
            },
            criterion::BatchSize::SmallInput,
        )
    });
    let header = format!("Bearer {token}");
    c.bench_function("auth/authenticate_bearer", |b| {
        b.iter(|| {
            let p = auth
                .authenticate(Some(black_box(&header)), NOW + 1)
                .unwrap();
            assert!(p.scopes.allows("Patient", Interaction::Read));
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
