//! The FHIR test client shared by `fhir.rs` and `fhir_ops.rs`: an appliance with its
//! server on 127.0.0.1:0, clients registered with Ed25519 keys that obtain real tokens at
//! `POST /fhir/token`, and raw HTTP/1.1 requests over fresh connections.
// Two test binaries include this module and each uses a subset of it.
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

static JTI: AtomicU64 = AtomicU64::new(0);

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Registers `client_id` with an Ed25519 key and `scopes`, signs a client assertion with
/// hexa-crypto and exchanges it at `POST /fhir/token`; returns `Bearer <token>`.
pub fn token(s: &Server, client_id: &str, scopes: &str) -> String {
    token_for(s, client_id, "fac-test", scopes)
}

/// [`token`] for a client acting for `facility`.
pub fn token_for(s: &Server, client_id: &str, facility: &str, scopes: &str) -> String {
    let key = SigningKey::generate().unwrap();
    let public = key.public();
    s.app
        .auth
        .register_client(ClientRegistration {
            client_id: client_id.into(),
            facility_id: facility.into(),
            jwks: json!({"keys": [public.to_jwk()]}),
            scopes: scopes.into(),
        })
        .unwrap();
    // The audience is the token endpoint the server advertises, as real clients find it.
    let aud = s
        .req("GET", "/fhir/.well-known/smart-configuration", &[], b"")
        .json()["token_endpoint"]
        .as_str()
        .unwrap()
        .to_string();
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    let header = b64(&json!({"alg": "EdDSA", "typ": "JWT", "kid": public.kid()}));
    let t = now();
    let claims = b64(&json!({
        "iss": client_id,
        "sub": client_id,
        "aud": aud,
        "iat": t,
        "exp": t + 120,
        "jti": format!("jti-{}-{}", t, JTI.fetch_add(1, Ordering::Relaxed)),
    }));
    let signing_input = format!("{header}.{claims}");
    let sig = URL_SAFE_NO_PAD.encode(key.sign(signing_input.as_bytes()));
    let form = format!(
        "grant_type=client_credentials&scope={}&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={signing_input}.{sig}",
        scopes
            .replace(' ', "+")
            .replace('/', "%2F")
            .replace('*', "%2A")
    );
    let r = s.req(
        "POST",
        "/fhir/token",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["token_type"], "bearer");
    format!("Bearer {}", v["access_token"].as_str().unwrap())
}

pub struct Resp {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&self.body));
        })
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
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
}

/// Field order matters: the HTTP server stops before the appliance closes.
pub struct Server {
    pub http: crate::common::Listening,
    pub app: hexa_appliance::Appliance,
    _dir: tempfile::TempDir,
    /// `Bearer` header of a client granted everything (`system/*.cruds`).
    pub all: String,
    /// `Bearer` header of a client granted reads and searches (`system/*.rs`).
    pub read: String,
}

impl Server {
    pub fn start() -> Server {
        Self::start_with(Config::defaults())
    }

    pub fn start_with(cfg: Config) -> Server {
        Self::start_in(tempfile::tempdir().unwrap(), cfg)
    }

    /// Starts on the data directory `tmp/data` (initialised on first start).
    pub fn start_in(tmp: tempfile::TempDir, cfg: Config) -> Server {
        let dir = DataDir::new(tmp.path().join("data"));
        let app = hexa_appliance::start(&dir, &cfg, None).unwrap();
        let mut s = Server {
            http: crate::common::Listening::serve(app.http.clone()),
            app,
            _dir: tmp,
            all: String::new(),
            read: String::new(),
        };
        s.all = token(&s, "emr-all", "system/*.cruds");
        s.read = token(&s, "emr-read", "system/*.rs");
        s
    }

    /// One request over a fresh connection.
    pub fn req(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
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
        // The server may answer (413) before reading a large body; ignore a reset.
        let _ = s.write_all(body);
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

    pub fn get(&self, path: &str) -> Resp {
        self.req("GET", path, &[("Authorization", self.all.as_str())], b"")
    }

    pub fn send(&self, method: &str, path: &str, body: &Value, extra: &[(&str, &str)]) -> Resp {
        let mut h = vec![
            ("Authorization", self.all.as_str()),
            ("Content-Type", "application/fhir+json"),
        ];
        h.extend_from_slice(extra);
        self.req(method, path, &h, &serde_json::to_vec(body).unwrap())
    }
}

impl Server {
    /// Stops the server and closes the appliance; hands back the data directory.
    pub fn stop(mut self) -> tempfile::TempDir {
        self.http.halt();
        let tmp = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self._dir, tmp)
    }
}
