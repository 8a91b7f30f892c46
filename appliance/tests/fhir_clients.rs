//! Conformance checked by FHIR clients we did not write: the real `hexa` binary is
//! initialised in a tempdir, a client key made by the Python script is registered with
//! `hexa client add`, `hexa serve` listens on 127.0.0.1:0, and
//! `tests/interop/fhir_clients.py` drives it with `fhirclient` and `fhirpy` (token by a
//! private_key_jwt assertion it signs itself, create, read, search, update, history,
//! transaction, batch, error paths), validating every returned resource against the R4
//! schema with Python's `jsonschema`. The test fails when the script fails. It needs
//! `python3` with `tests/interop/requirements.txt` installed (`.ci/setup` does it).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn script() -> PathBuf {
    repo().join("tests/interop/fhir_clients.py")
}

fn hexa(data: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hexa"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env_remove("HEXA_KEY_PASSPHRASE")
        .output()
        .unwrap()
}

/// Kills the server if the test fails before stopping it.
struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn python_fhir_clients_conform() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let keys = tmp.path().join("client");
    let out = hexa(&data, &["init", "--facility-id", "rw-dh-conformance"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = Command::new("python3")
        .arg(script())
        .arg("keygen")
        .arg(&keys)
        .output()
        .expect("python3 is needed (see tests/interop/requirements.txt)");
    assert!(
        out.status.success(),
        "keygen failed (run .ci/setup): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jwks = keys.join("client.jwks.json");
    let out = hexa(
        &data,
        &[
            "client",
            "add",
            "--id",
            "py-conformance",
            "--facility",
            "rw-dh-conformance",
            "--jwks",
            jwks.to_str().unwrap(),
            "--scopes",
            "system/*.cruds",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut child = Command::new(env!("CARGO_BIN_EXE_hexa"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("RUST_LOG", "info")
        .env_remove("HEXA_KEY_PASSPHRASE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let server = Serving(child);
    let mut lines = BufReader::new(stderr).lines();
    let addr: SocketAddr = loop {
        let line = lines.next().expect("hexa exited before serving").unwrap();
        if let Some(i) = line.find("addr=") {
            let rest = &line[i + 5..];
            let end = rest.find(' ').unwrap_or(rest.len());
            break rest[..end].parse().unwrap();
        }
    };
    // Keep draining the server's log so it never blocks on a full pipe.
    let log = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());

    let mut run = Command::new("python3")
        .arg(script())
        .args(["run", "--base", &format!("http://{addr}/fhir")])
        .args(["--client-id", "py-conformance", "--key"])
        .arg(keys.join("client.jwk"))
        .arg("--schema")
        .arg(repo().join("appliance/resources/fhir.schema.json"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A hung client must not hang the suite: give it a generous bound.
    let pid = run.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(Duration::from_secs(300)).is_err() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    });
    let mut stdout = String::new();
    let mut stderr = String::new();
    use std::io::Read;
    run.stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    run.stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = run.wait().unwrap();
    let _ = done_tx.send(());
    watchdog.join().unwrap();
    println!("{stdout}");

    // Stop the server with SIGTERM and check it stopped cleanly.
    let mut server = server;
    let rc = Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(rc.success());
    let exit = server.0.wait().unwrap();
    let log = log.join().unwrap();
    assert!(
        status.success(),
        "fhir_clients.py failed ({status}):\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("OK"), "{stdout}");
    assert!(exit.success(), "hexa exited with {exit}: {log:?}");
    // The names the script wrote never reach the log.
    for name in ["Uwimana", "Niyonzima", "Claudine"] {
        assert!(!log.iter().any(|l| l.contains(name)), "{name} in the log");
    }
}
