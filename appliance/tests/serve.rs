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

struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(dir: &DataDir) -> (Server, hexa_appliance::Appliance) {
        let app = hexa_appliance::start(dir, &Config::defaults(), None).unwrap();
        let state = app.http.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (atx, arx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                atx.send(l.local_addr().unwrap()).unwrap();
                hexa_appliance::http::run(l, state, async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
            });
        });
        let addr = arx.recv().unwrap();
        (
            Server {
                addr,
                stop: Some(tx),
                thread: Some(thread),
            },
            app,
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap();
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
    let mut child = Command::new(env!("CARGO_BIN_EXE_hexa"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path().join("data"))
        .env("RUST_LOG", "info")
        .env_remove("HEXA_KEY_PASSPHRASE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let addr: SocketAddr = loop {
        let line = lines.next().expect("hexa exited before serving").unwrap();
        if let Some(i) = line.find("addr=") {
            let rest = &line[i + 5..];
            let end = rest.find(' ').unwrap_or(rest.len());
            break rest[..end].parse().unwrap();
        }
    };
    let (st, _, _) = http(addr, "GET", "/readyz", b"");
    assert_eq!(st, 200);
    // Logs must never carry key material: read what's been logged so far after stop.
    let pid = child.id() as i32;
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
