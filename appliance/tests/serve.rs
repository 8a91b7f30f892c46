//! End-to-end tests of `hexa init` / `hexa serve` over real sockets on 127.0.0.1.

use hexa_appliance::config::Config;
use hexa_appliance::datadir::{DataDir, DataDirError};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

/// One HTTP/1.1 request over a fresh connection; returns (status, headers, body).
fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let status = head[9..12].parse().unwrap();
    (status, head, raw[split + 4..].to_vec())
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap()
}

mod common;
use common::Listening as Server;

impl Server {
    fn start(dir: &DataDir) -> (Server, hexa_appliance::Appliance) {
        let app = hexa_appliance::start(dir, &Config::defaults(), None).unwrap();
        (Server::serve(app.http.clone()), app)
    }
}

#[test]
fn serve_initialises_a_fresh_data_dir_and_publishes_its_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("data"));
    let (srv, app) = Server::start(&dir);

    // Key file exists, owner-only.
    let mode = std::fs::metadata(dir.key_path())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let keys_mode = std::fs::metadata(dir.key_path().parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(keys_mode, 0o700);

    let (st, head, body) = http(srv.addr, "GET", "/healthz", b"");
    assert_eq!(st, 200, "{head}");
    assert_eq!(json(&body)["facility"], "demo-facility");

    let (st, _, _) = http(srv.addr, "GET", "/readyz", b"");
    assert_eq!(st, 200);

    let (st, head, body) = http(srv.addr, "GET", "/.well-known/jwks.json", b"");
    assert_eq!(st, 200);
    assert!(head.contains("application/jwk-set+json"));
    let jwks = json(&body);
    let jwk = &jwks["keys"][0];
    assert_eq!(jwk["kty"], "OKP");
    assert_eq!(jwk["crv"], "Ed25519");
    assert_eq!(jwk["kid"], app.node_kid.as_str());
    // The published key is the one that unlocks from the key file.
    let (_, secrets) = dir.open(None).unwrap();
    assert_eq!(
        hexa_crypto::keys::PublicKey::from_jwk(jwk).unwrap(),
        secrets.node_key.public()
    );
    // And the kid really is the RFC 7638 thumbprint of that key.
    assert_eq!(secrets.node_key.public().kid(), app.node_kid);

    let (st, _, body) = http(srv.addr, "GET", "/metrics", b"");
    assert_eq!(st, 200);
    let text = String::from_utf8(body).unwrap();
    assert!(text.contains("hexa_http_requests_total"), "{text}");
}

#[test]
fn restart_keeps_the_same_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("data"));
    let kid1 = hexa_appliance::start(&dir, &Config::defaults(), None)
        .unwrap()
        .node_kid;
    let kid2 = hexa_appliance::start(&dir, &Config::defaults(), None)
        .unwrap()
        .node_kid;
    assert_eq!(kid1, kid2);
    // init refuses to overwrite existing keys.
    assert!(matches!(
        dir.init(&Config::defaults(), None),
        Err(DataDirError::AlreadyInitialised(_))
    ));
}

#[test]
fn errors_are_operation_outcomes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("data"));
    let (srv, _app) = Server::start(&dir);

    let (st, head, body) = http(srv.addr, "GET", "/nowhere", b"");
    assert_eq!(st, 404);
    assert!(head.contains("application/fhir+json"));
    let oo = json(&body);
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert_eq!(oo["issue"][0]["code"], "not-found");

    let (st, head, body) = http(srv.addr, "DELETE", "/healthz", b"");
    assert_eq!(st, 405);
    assert!(head.to_ascii_lowercase().contains("allow: get, head"));
    assert_eq!(json(&body)["issue"][0]["code"], "not-supported");

    let big = vec![b'x'; 2 << 20];
    let (st, _, body) = http(srv.addr, "GET", "/healthz", &big);
    assert_eq!(st, 413);
    assert_eq!(json(&body)["issue"][0]["code"], "too-costly");
}

#[test]
fn slow_clients_are_cut_off() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("data"));
    std::fs::create_dir_all(dir.root()).unwrap();
    let mut cfg = Config::defaults();
    cfg.server.header_read_timeout_secs = 1;
    dir.init(&cfg, None).unwrap();
    let (srv, _app) = Server::start(&dir);
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap(); // never finishes the headers
    let mut buf = Vec::new();
    let started = std::time::Instant::now();
    let _ = s.read_to_end(&mut buf); // the server closes the connection
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "server held a slow client for {:?}",
        started.elapsed()
    );
    assert!(
        buf.is_empty() || String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
}

#[test]
fn passphrase_protected_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("data"));
    dir.init(&Config::defaults(), Some(b"correct horse"))
        .unwrap();
    let e = dir.open(Some(b"wrong horse")).err().unwrap().to_string();
    assert!(e.contains("passphrase"), "{e}");
    let e = dir.open(None).err().unwrap().to_string();
    assert!(e.contains("passphrase"), "{e}");
    dir.open(Some(b"correct horse")).unwrap();
}

#[test]
fn group_readable_key_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("data"));
    dir.init(&Config::defaults(), None).unwrap();
    std::fs::set_permissions(dir.key_path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(
        dir.open(None),
        Err(DataDirError::KeyFilePermissions(_, 0o644))
    ));
}

/// The real binary: `hexa serve` on a fresh directory answers, and exits 0 on SIGTERM.
#[test]
fn binary_serves_and_stops_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut child, addr, lines) =
        start_serve(&tmp.path().join("data"), &["--listen", "127.0.0.1:0"]);
    let pid = child.id() as i32;
    let (st, _, _) = http(addr, "GET", "/readyz", b"");
    assert_eq!(st, 200);
    // While it serves, no second process may open its store (an export would append to
    // the audit log behind the server's back).
    let out = Command::new(env!("CARGO_BIN_EXE_hexa"))
        .args(["export", "--patient", "nobody", "--out"])
        .arg(tmp.path().join("export.json"))
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .env_remove("HEXA_KEY_PASSPHRASE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another hexa process"), "{err}");
    assert!(!tmp.path().join("export.json").exists());
    let rc = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(rc.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "hexa exited with {status}");
    assert!(rest.iter().any(|l| l.contains("hexa stopped")), "{rest:?}");
}

fn post_json(addr: SocketAddr, path: &str, v: serde_json::Value) -> (u16, Vec<u8>) {
    let (st, _, body) = http(addr, "POST", path, v.to_string().as_bytes());
    (st, body)
}

/// `serve` without configured readers runs the simulated ones; the /sim control API places
/// cards and fingers, and real ceremonies run through the real drivers in the device actor.
#[test]
fn simulated_readers_run_real_ceremonies() {
    use hexa_actors::device::{Assert, EnrollCard, EnrollFinger, IdentifyFinger};
    use hexa_crypto::consent::{
        AssertionEvidence, ConsentChallenge, CoseKey, Decision, VerifyParams, verify_assertion,
    };

    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("data"));
    let (srv, app) = Server::start(&dir);
    let actor = app.http.device_actor();

    let (st, _, body) = http(srv.addr, "GET", "/devices", b"");
    assert_eq!(st, 200);
    let status = json(&body);
    assert!(
        status["card"].is_object() && status["fingerprint"].is_object(),
        "{status}"
    );

    // A virtual card that offers only ES256, placed on the reader.
    let (st, body) = post_json(
        srv.addr,
        "/sim/cards",
        serde_json::json!({"model": "es256-only"}),
    );
    assert_eq!(st, 201);
    let card = json(&body)["card"].as_u64().unwrap();
    let (st, _) = post_json(
        srv.addr,
        "/sim/reader/present",
        serde_json::json!({"card": card}),
    );
    assert_eq!(st, 204);
    let (_, _, body) = http(srv.addr, "GET", "/sim/cards", b"");
    assert_eq!(json(&body)["present"], card);

    let rp_id = format!("hexa.{}", app.config.facility.id);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let challenge = ConsentChallenge {
        version: 1,
        patient: "Patient/p1".into(),
        grantee_organization: Some("Organization/kigali-chuk".into()),
        grantee_practitioner: None,
        purpose: "TREAT".into(),
        scope: vec!["Observation".into()],
        period_start: now,
        period_end: now + 86_400,
        data_period_start: None,
        data_period_end: None,
        decision: Decision::Permit,
        appliance_id: app.node_kid.clone(),
        nonce: [7; 32],
        issued_at: now,
    };
    let rt = actix_rt::System::new();
    let (enrolled, assertion, slot, matched) = rt.block_on(async {
        let enrolled = actor
            .send(EnrollCard {
                rp_id: rp_id.clone(),
                user_id: b"p1".to_vec(),
                user_name: "p1".into(),
                client_data_hash: [1; 32],
                pin: None,
            })
            .await
            .unwrap()
            .unwrap();
        let assertion = actor
            .send(Assert {
                rp_id: rp_id.clone(),
                client_data_hash: challenge.client_data_hash(),
                allow_credential_ids: vec![enrolled.credential_id.clone()],
                pin: None,
            })
            .await
            .unwrap()
            .unwrap();
        // A finger the module does not know yet, enrolled into slot 3, then identified.
        let (st, _) = post_json(
            srv.addr,
            "/sim/fingerprint/place",
            serde_json::json!({"unknown": true}),
        );
        assert_eq!(st, 204);
        let slot = actor.send(EnrollFinger { slot: 3 }).await.unwrap().unwrap();
        let (st, _, _) = http(srv.addr, "POST", "/sim/fingerprint/lift", b"");
        assert_eq!(st, 204);
        let (st, _) = post_json(
            srv.addr,
            "/sim/fingerprint/place",
            serde_json::json!({"template": 3}),
        );
        assert_eq!(st, 204);
        let matched = actor.send(IdentifyFinger).await.unwrap().unwrap();
        (enrolled, assertion, slot, matched)
    });
    assert_eq!(
        enrolled.alg, -7,
        "an ES256-only card enrols an ES256 credential"
    );
    let key = CoseKey::from_cbor(&enrolled.cose_key).unwrap();
    let params = VerifyParams {
        rp_id: &rp_id,
        expected_appliance_id: &app.node_kid,
        last_sign_count: 0,
        now,
        ttl_secs: 120,
        require_user_verified: false,
    };
    let evidence = AssertionEvidence {
        authenticator_data: assertion.auth_data.clone(),
        signature: assertion.signature.clone(),
        credential_id: assertion.credential_id.clone(),
    };
    verify_assertion(&challenge, &key, &evidence, &params).expect("assertion verifies");
    // The same evidence does not verify a different challenge.
    let mut other = challenge.clone();
    other.patient = "Patient/p2".into();
    assert!(verify_assertion(&other, &key, &evidence, &params).is_err());
    assert_eq!(slot, 3);
    assert_eq!(matched.slot, 3);

    // Bad control requests are OperationOutcomes.
    let (st, body) = post_json(
        srv.addr,
        "/sim/reader/present",
        serde_json::json!({"card": 999}),
    );
    assert_eq!(st, 404);
    assert_eq!(json(&body)["resourceType"], "OperationOutcome");
    let (st, _) = post_json(
        srv.addr,
        "/sim/fingerprint/place",
        serde_json::json!({"template": 77}),
    );
    assert_eq!(st, 404);
    let (st, _, _) = http(srv.addr, "POST", "/sim/reader/present", b"{not json");
    assert_eq!(st, 400);
    let (st, _) = post_json(srv.addr, "/sim/cards", serde_json::json!({"model": "rsa"}));
    assert_eq!(st, 400);
    let (st, _, _) = http(srv.addr, "GET", "/sim/reader/lift", b"");
    assert_eq!(st, 405);
}

/// With readers configured, there is no simulator to drive.
#[test]
fn control_api_is_absent_with_hardware_readers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("data"));
    let mut cfg = Config::defaults();
    // A fingerprint module on a pseudo-terminal stands in for a serial port.
    let pty = nix::pty::openpty(None, None).unwrap();
    let path = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&pty.slave)
    ))
    .unwrap();
    cfg.devices.fingerprint = Some(hexa_hal::config::FingerprintConfig {
        device: path.display().to_string(),
        baud: 57_600,
        address: 0xFFFF_FFFF,
        password: 0,
    });
    dir.init(&cfg, None).unwrap();
    let (srv, _app) = Server::start(&dir);
    let (st, body) = post_json(srv.addr, "/sim/cards", serde_json::json!({}));
    assert_eq!(st, 404, "{}", String::from_utf8_lossy(&body));
    let (_, _, body) = http(srv.addr, "GET", "/devices", b"");
    let status = json(&body);
    assert!(
        status["card"].is_null() && status["fingerprint"].is_object(),
        "{status}"
    );
}

/// `hexa client add/list/remove` keep the client registry in the data directory.
#[test]
fn client_registry_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let hexa = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_hexa"))
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .env_remove("HEXA_KEY_PASSPHRASE")
            .output()
            .unwrap()
    };
    let out = hexa(&["client", "list"]);
    assert!(
        !out.status.success(),
        "an uninitialised data dir is refused"
    );
    assert!(
        hexa(&["init", "--facility-id", "rw-dh-test"])
            .status
            .success()
    );
    let key = hexa_crypto::keys::SigningKey::generate().unwrap();
    let jwks_path = tmp.path().join("emr.jwks");
    std::fs::write(
        &jwks_path,
        hexa_crypto::keys::jwks(&[key.public()]).to_string(),
    )
    .unwrap();
    let out = hexa(&[
        "client",
        "add",
        "--id",
        "emr-1",
        "--facility",
        "rw-dh-test",
        "--scopes",
        "system/Patient.cruds",
        "--jwks",
        jwks_path.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = hexa(&["client", "list"]);
    let listed = String::from_utf8(out.stdout).unwrap();
    assert!(
        listed.contains("emr-1\trw-dh-test\tsystem/Patient.cruds"),
        "{listed}"
    );
    // Bad scopes are refused with a message, and nothing is registered.
    let out = hexa(&[
        "client",
        "add",
        "--id",
        "emr-2",
        "--facility",
        "rw-dh-test",
        "--scopes",
        "everything please",
        "--jwks",
        jwks_path.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        !String::from_utf8(hexa(&["client", "list"]).stdout)
            .unwrap()
            .contains("emr-2")
    );
    assert!(
        hexa(&["client", "remove", "--id", "emr-1"])
            .status
            .success()
    );
    assert!(
        String::from_utf8(hexa(&["client", "list"]).stdout)
            .unwrap()
            .trim()
            .is_empty()
    );
}

/// Runs the `hexa` binary with `args` on data directory `data`, in directory `cwd`.
fn hexa_in(cwd: &std::path::Path, data: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hexa"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .current_dir(cwd)
        .env_remove("HEXA_KEY_PASSPHRASE")
        .output()
        .unwrap()
}

type LogLines = std::io::Lines<BufReader<std::process::ChildStderr>>;

/// Starts `hexa serve` on `data` with `args`; returns it, the address it logged, and the
/// rest of its log. Log lines to a pipe must carry no terminal escapes. A watchdog kills it
/// after a minute, which closes its stderr and turns a hang into a test failure.
fn start_serve(
    data: &std::path::Path,
    args: &[&str],
) -> (std::process::Child, SocketAddr, LogLines) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hexa"))
        .arg("serve")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env("RUST_LOG", "info")
        .env_remove("HEXA_KEY_PASSPHRASE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(60));
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    });
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr: SocketAddr = loop {
        let line = lines.next().expect("hexa exited before serving").unwrap();
        assert!(
            !line.contains('\x1b'),
            "log lines to a pipe must carry no terminal escapes: {line:?}"
        );
        if let Some(i) = line.find("addr=") {
            let rest = &line[i + 5..];
            let end = rest.find(' ').unwrap_or(rest.len());
            break rest[..end].parse().unwrap();
        }
    };
    (child, addr, lines)
}

/// [`start_serve`] on the configured address, its log drained so the child never blocks
/// on a full pipe.
fn spawn_serve(data: &std::path::Path) -> (std::process::Child, SocketAddr) {
    let (child, addr, lines) = start_serve(data, &[]);
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
    (child, addr)
}

/// POSTs a client-credentials grant with `assertion` to `/fhir/token`.
fn token_request(addr: SocketAddr, assertion: &str) -> (u16, serde_json::Value) {
    let form = format!(
        "grant_type=client_credentials&scope=system%2FPatient.cruds&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={assertion}"
    );
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /fhir/token HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
        form.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp[9..12].parse().unwrap();
    let body = &resp[resp.find("\r\n\r\n").unwrap() + 4..];
    (status, serde_json::from_str(body).unwrap())
}

/// A site behind NAT or a forwarded port (the appliance image's smoke test is one) names
/// the URL integrators reach it at: `hexa init --public-base-url` stores it, discovery
/// publishes it, and the token endpoint requires it as the assertion's audience, not the
/// listening address.
#[test]
fn init_stores_the_public_base_url_that_tokens_are_audienced_to() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let hexa = |args: &[&str]| hexa_in(tmp.path(), &data, args);
    let bad = hexa(&["init", "--public-base-url", "http://hexa.test:8443/"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("public_base_url"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    assert!(
        !data.join("hexa.toml").exists(),
        "a refused init writes nothing"
    );
    let public = "http://hexa.test:8443";
    let out = hexa(&[
        "init",
        "--listen",
        "127.0.0.1:0",
        "--public-base-url",
        public,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = hexa(&[
        "client",
        "add",
        "--name",
        "emr-nat",
        "--facility",
        "demo-facility",
        "--scope",
        "system/Patient.cruds",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = tmp.path().join("emr-nat.private.jwk");
    let (mut child, addr) = spawn_serve(&data);
    let (st, _, body) = http(addr, "GET", "/fhir/.well-known/smart-configuration", b"");
    assert_eq!(st, 200);
    assert_eq!(
        json(&body)["token_endpoint"],
        format!("{public}/fhir/token")
    );
    let assertion = |aud: Option<&str>| {
        let mut args = vec!["client", "assertion", "--name", "emr-nat", "--key"];
        args.push(key.to_str().unwrap());
        if let Some(a) = aud {
            args.extend(["--aud", a]);
        }
        let out = hexa(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    // The listening address is not the audience; the public URL is (and is the default).
    let (st, body) = token_request(addr, &assertion(Some(&format!("http://{addr}/fhir/token"))));
    assert_eq!(st, 401, "{body}");
    let (st, body) = token_request(addr, &assertion(None));
    assert_eq!(st, 200, "{body}");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());
}

/// The README's session: `client add` without a key generates one (private JWK 0600),
/// `client assertion` signs the RFC 7523 assertion, and the running binary exchanges it
/// for a token that creates and finds a Patient; `client revoke NAME` then removes it.
#[test]
fn generated_client_key_to_a_created_patient() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let hexa = |args: &[&str]| hexa_in(tmp.path(), &data, args);
    // Pick a free port for the whole session: the assertion names it as its audience.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    assert!(hexa(&["init", "--listen", &listen]).status.success());
    let out = hexa(&[
        "client",
        "add",
        "--name",
        "emr-1",
        "--facility",
        "demo-facility",
        "--scope",
        "system/Patient.cruds",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8(out.stdout).unwrap();
    assert!(said.contains("emr-1.private.jwk"), "{said}");
    let key_path = tmp.path().join("emr-1.private.jwk");
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // A second add with the same default key file is refused before registering.
    let again = hexa(&[
        "client",
        "add",
        "--name",
        "emr-1",
        "--facility",
        "demo-facility",
        "--scope",
        "system/Patient.cruds",
    ]);
    assert!(!again.status.success());

    let (mut child, addr) = spawn_serve(&data);
    let pid = child.id() as i32;
    assert_eq!(addr.port(), port);
    let out = hexa(&[
        "client",
        "assertion",
        "--name",
        "emr-1",
        "--key",
        key_path.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let assertion = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let (st, body) = token_request(addr, &assertion);
    assert_eq!(st, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();
    let fhir = |method: &str, path: &str, body: &str| {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Type: application/fhir+json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        resp
    };
    let created = fhir(
        "POST",
        "/fhir/Patient",
        r#"{"resourceType":"Patient","name":[{"family":"Uwimana","given":["Grace"]}],"gender":"female"}"#,
    );
    assert!(created.starts_with("HTTP/1.1 201"), "{created}");
    let found = fhir("GET", "/fhir/Patient?family=Uwimana", "");
    assert!(found.starts_with("HTTP/1.1 200"), "{found}");
    assert!(found.contains("\"total\":1"), "{found}");
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    assert!(child.wait().unwrap().success());

    assert!(hexa(&["client", "revoke", "emr-1"]).status.success());
    assert!(!hexa(&["client", "revoke", "emr-1"]).status.success());
}
