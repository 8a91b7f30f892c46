//! Shared by the conformance tests (`validation.rs`, `examples.rs`): an appliance started
//! in a tempdir and served on 127.0.0.1:0 (through `common::Listening`), a client
//! registered with an Ed25519 key whose RFC 7523 assertion is exchanged for a bearer
//! token, and one-request-per-connection HTTP helpers.

#![allow(dead_code)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hexa_appliance::auth::ClientRegistration;
use hexa_appliance::config::Config;
use hexa_appliance::datadir::DataDir;
use hexa_crypto::keys::SigningKey;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common;

/// A response.
pub struct Resp {
    /// HTTP status.
    pub status: u16,
    /// Status line and headers.
    pub head: String,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Resp {
    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    /// The body as text, for assertion messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The stable hexa code of an OperationOutcome.
    pub fn code(&self) -> String {
        let v = self.json();
        assert_eq!(v["resourceType"], "OperationOutcome", "{v}");
        v["issue"][0]["details"]["coding"][0]["code"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Every `issue.expression` of an OperationOutcome.
    pub fn expressions(&self) -> Vec<String> {
        expressions(&self.json())
    }
}

/// Every `issue.expression` of an OperationOutcome value.
pub fn expressions(outcome: &Value) -> Vec<String> {
    outcome["issue"]
        .as_array()
        .map(|a| {
            a.iter()
                .flat_map(|i| i["expression"].as_array().cloned().unwrap_or_default())
                .filter_map(|e| e.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A started appliance with its HTTP server and a bearer token granting everything.
/// Field order matters: the HTTP server stops before the appliance closes.
pub struct Server {
    /// The HTTP server.
    pub http: common::Listening,
    /// The appliance.
    pub app: hexa_appliance::Appliance,
    _dir: tempfile::TempDir,
    /// `Bearer ...` of a client granted `system/*.cruds`.
    pub all: String,
}

impl Server {
    /// Starts an appliance on a fresh data directory.
    pub fn start() -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("data"));
        let app = hexa_appliance::start(&dir, &Config::defaults(), None).unwrap();
        let mut s = Server {
            http: common::Listening::serve(app.http.clone()),
            app,
            _dir: tmp,
            all: String::new(),
        };
        s.all = s.token("conformance", "system/*.cruds");
        s
    }

    /// Registers `client_id` with a fresh Ed25519 key and `scopes`, signs an assertion
    /// and exchanges it at `POST /fhir/token`; returns `Bearer <token>`.
    pub fn token(&self, client_id: &str, scopes: &str) -> String {
        let key = SigningKey::generate().unwrap();
        let public = key.public();
        self.app
            .auth
            .register_client(ClientRegistration {
                client_id: client_id.into(),
                facility_id: "fac-test".into(),
                jwks: json!({"keys": [public.to_jwk()]}),
                scopes: scopes.into(),
            })
            .unwrap();
        let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let header = b64(&json!({"alg": "EdDSA", "typ": "JWT", "kid": public.kid()}));
        let claims = b64(&json!({
            "iss": client_id, "sub": client_id,
            "aud": "http://127.0.0.1/fhir/token",
            "iat": now, "exp": now + 120,
            "jti": format!("{client_id}-{now}"),
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
        assert_eq!(r.status, 200, "{}", r.text());
        format!("Bearer {}", r.json()["access_token"].as_str().unwrap())
    }

    /// One request over a fresh connection.
    pub fn req(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        let mut s = TcpStream::connect(self.http.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
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
        s.read_to_end(&mut raw).unwrap();
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

    /// GET with the all-scopes token.
    pub fn get(&self, path: &str) -> Resp {
        self.req("GET", path, &[("Authorization", self.all.as_str())], b"")
    }

    /// A FHIR JSON request with the all-scopes token.
    pub fn send(&self, method: &str, path: &str, body: &Value, extra: &[(&str, &str)]) -> Resp {
        let mut h = vec![
            ("Authorization", self.all.as_str()),
            ("Content-Type", "application/fhir+json"),
        ];
        h.extend_from_slice(extra);
        self.req(method, path, &h, &serde_json::to_vec(body).unwrap())
    }
}
