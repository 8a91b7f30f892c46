//! `hexa-load`: drives a running appliance's FHIR API over HTTP/1.1 keep-alive connections
//! (hyper's client) and reports throughput and latency percentiles.
//!
//! It authenticates like any SMART Backend Services client: it signs an RFC 7523
//! assertion with the client's private Ed25519 JWK and exchanges it at `/fhir/token`.
//! `--gen-key FILE` writes a fresh private JWK to FILE (mode 0600) and its public JWKS
//! to `FILE.jwks.json`, for `hexa client add --jwks`.
//!
//! Scenarios: `create` (POST Patient), `read` (GET Patient/{id}), `search`
//! (GET Patient?identifier=sys|value), `transaction` (a Bundle of one Patient and nine
//! Observations that reference it by `urn:uuid:`), `update` (PUT Patient/{id}, moving the
//! patient between two cities). `read`, `search` and `update` first create
//! `--population` patients to draw from. Each of `--clients` connections sends its next
//! request when the previous answer arrived (closed loop), so throughput and latency are
//! measured together; every request's latency is recorded (no sampling).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use hexa_crypto::keys::SigningKey;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// POST /fhir/Patient.
    Create,
    /// GET /fhir/Patient/{id}.
    Read,
    /// GET /fhir/Patient?identifier=...
    Search,
    /// POST /fhir (transaction Bundle of 10 resources).
    Transaction,
    /// PUT /fhir/Patient/{id}: the patient as created, in one of two cities.
    Update,
}

/// Load generator for hexa's FHIR API.
#[derive(Debug, Parser)]
#[command(name = "hexa-load", version)]
struct Args {
    /// Base URL of the appliance (without /fhir), e.g. http://127.0.0.1:8080.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Concurrent connections (one request in flight on each).
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Seconds to measure (after the warm-up), at most 240 (the access token lives 5 min).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds of warm-up whose requests are not counted.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Scenario.
    #[arg(long, value_enum, default_value_t = Scenario::Read)]
    scenario: Scenario,
    /// Registered client id.
    #[arg(long, default_value = "hexa-load")]
    client_id: String,
    /// The client's private Ed25519 JWK (as written by --gen-key).
    #[arg(long)]
    key: Option<std::path::PathBuf>,
    /// Patients created before a read, search or update run.
    #[arg(long, default_value_t = 2000)]
    population: usize,
    /// Worker threads of the load tool's runtime (it shares the machine with the server).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Write a new private JWK to this file (and its public JWKS beside it) and exit.
    #[arg(long)]
    gen_key: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(path) = &args.gen_key {
        return gen_key(path);
    }
    if args.duration == 0 || args.duration > 240 {
        bail!("--duration must be 1..=240 seconds (tokens live 5 minutes)");
    }
    if args.clients == 0 || args.clients > 4096 {
        bail!("--clients must be 1..=4096");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

fn gen_key(path: &std::path::Path) -> anyhow::Result<()> {
    let key = SigningKey::generate().map_err(|e| anyhow!("{e}"))?;
    let mut private = key.public().to_jwk();
    private["d"] = json!(URL_SAFE_NO_PAD.encode(key.seed()));
    let text = serde_json::to_string_pretty(&private)?;
    {
        use std::io::Write;
        #[cfg(unix)]
        use std::os::unix::fs::OpenOptionsExt;
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        o.mode(0o600);
        let mut f = o
            .open(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        f.write_all(text.as_bytes())?;
    }
    let public = json!({"keys": [key.public().to_jwk()]});
    let pub_path = path.with_extension("jwks.json");
    std::fs::write(&pub_path, serde_json::to_string_pretty(&public)?)?;
    println!(
        "private JWK: {}\npublic JWKS: {} (register it with `hexa client add --jwks`)",
        path.display(),
        pub_path.display()
    );
    Ok(())
}

fn load_key(path: &std::path::Path) -> anyhow::Result<SigningKey> {
    let v: Value = serde_json::from_str(
        &std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?,
    )?;
    let d = v["d"]
        .as_str()
        .ok_or_else(|| anyhow!("{} has no private key (d)", path.display()))?;
    let seed: [u8; 32] = URL_SAFE_NO_PAD
        .decode(d)?
        .try_into()
        .map_err(|_| anyhow!("d is not a 32-byte Ed25519 seed"))?;
    Ok(SigningKey::from_seed(&seed))
}

/// A keep-alive HTTP/1.1 connection.
struct Conn {
    tx: SendRequest<Full<Bytes>>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> anyhow::Result<Conn> {
        let s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { tx })
    }

    async fn send(&mut self, req: Request<Full<Bytes>>) -> anyhow::Result<(StatusCode, Bytes)> {
        self.tx.ready().await?;
        let resp = self.tx.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

struct Target {
    addr: SocketAddr,
    host: String,
    base: String,
}

fn parse_url(url: &str) -> anyhow::Result<Target> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("--url must start with http://"))?
        .trim_end_matches('/');
    let host = rest.split('/').next().unwrap_or(rest).to_string();
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&host)?
        .next()
        .ok_or_else(|| anyhow!("cannot resolve {host}"))?;
    Ok(Target {
        addr,
        host,
        base: url.trim_end_matches('/').to_string(),
    })
}

fn request(
    t: &Target,
    method: Method,
    path: &str,
    auth: &str,
    body: Option<Vec<u8>>,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", &t.host)
        .header("authorization", auth)
        .header("accept", "application/fhir+json");
    if body.is_some() {
        b = b.header("content-type", "application/fhir+json");
    }
    b.body(Full::new(Bytes::from(body.unwrap_or_default())))
        .expect("valid request")
}

async fn token(t: &Target, client_id: &str, key: &SigningKey) -> anyhow::Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).expect("json"));
    let header = b64(&json!({"alg": "EdDSA", "typ": "JWT", "kid": key.kid()}));
    let claims = b64(&json!({
        "iss": client_id, "sub": client_id, "aud": format!("{}/fhir/token", t.base),
        "iat": now, "exp": now + 240, "jti": format!("load-{now}-{}", std::process::id()),
    }));
    let input = format!("{header}.{claims}");
    let sig = URL_SAFE_NO_PAD.encode(key.sign(input.as_bytes()));
    let form = format!(
        "grant_type=client_credentials&scope=system%2F*.cruds&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={input}.{sig}"
    );
    let req = Request::builder()
        .method(Method::POST)
        .uri("/fhir/token")
        .header("host", &t.host)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(form)))?;
    let (status, body) = Conn::open(t.addr).await?.send(req).await?;
    if status != StatusCode::OK {
        bail!(
            "token endpoint answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let v: Value = serde_json::from_slice(&body)?;
    Ok(format!(
        "Bearer {}",
        v["access_token"]
            .as_str()
            .ok_or_else(|| anyhow!("no access_token"))?
    ))
}

const NID: &str = "urn:hexa-load:nid";

fn patient(n: u64, salt: u64) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": NID, "value": format!("{salt}-{n}")}],
        "name": [{"family": format!("Load{}", n % 997), "given": ["Aline", "Grace"]}],
        "gender": if n.is_multiple_of(2) { "female" } else { "male" },
        "birthDate": format!("19{:02}-{:02}-{:02}", 40 + n % 60, 1 + n % 12, 1 + n % 28),
        "address": [{"city": "Kigali", "district": "Gasabo"}],
    })
}

fn transaction(n: u64, salt: u64) -> Value {
    let pid = format!("urn:uuid:00000000-0000-4000-8000-{:012x}", n % (1 << 48));
    let mut entries = vec![json!({
        "fullUrl": pid, "resource": patient(n, salt),
        "request": {"method": "POST", "url": "Patient"},
    })];
    for i in 0..9 {
        entries.push(json!({
            "resource": {
                "resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "subject": {"reference": pid},
                "valueQuantity": {"value": 60 + i, "unit": "/min"},
            },
            "request": {"method": "POST", "url": "Observation"},
        }));
    }
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

/// Latencies (µs) and outcome counts of one connection.
#[derive(Default)]
struct Tally {
    lat_us: Vec<u32>,
    errors: u64,
    throttled: u64,
}

async fn populate(
    t: &Arc<Target>,
    auth: &str,
    n: usize,
    salt: u64,
) -> anyhow::Result<Vec<(String, String)>> {
    let per = n.div_ceil(16);
    let mut tasks = Vec::new();
    for w in 0..16u64 {
        let (t, auth) = (t.clone(), auth.to_string());
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(t.addr).await?;
            let mut out = Vec::new();
            for i in 0..per as u64 {
                let k = w * per as u64 + i;
                let body = serde_json::to_vec(&patient(k, salt))?;
                let (s, b) = c
                    .send(request(
                        &t,
                        Method::POST,
                        "/fhir/Patient",
                        &auth,
                        Some(body),
                    ))
                    .await?;
                if s != StatusCode::CREATED {
                    bail!("populate: {s}: {}", String::from_utf8_lossy(&b));
                }
                let v: Value = serde_json::from_slice(&b)?;
                out.push((
                    v["id"].as_str().unwrap_or_default().to_string(),
                    format!("{salt}-{k}"),
                ));
            }
            anyhow::Ok(out)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    all.truncate(n);
    Ok(all)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let t = Arc::new(parse_url(&args.url)?);
    let key_path = args
        .key
        .as_ref()
        .ok_or_else(|| anyhow!("--key FILE (the client's private JWK) is required"))?;
    let key = load_key(key_path)?;
    let auth = token(&t, &args.client_id, &key).await?;
    let salt = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let pop = if matches!(
        args.scenario,
        Scenario::Read | Scenario::Search | Scenario::Update
    ) {
        let p = populate(&t, &auth, args.population.max(1), salt).await?;
        eprintln!("created {} patients to read, search or update", p.len());
        Arc::new(p)
    } else {
        Arc::new(Vec::new())
    };
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let seq = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let (t, auth, pop) = (t.clone(), auth.clone(), pop.clone());
        let (counting, stop, seq) = (counting.clone(), stop.clone(), seq.clone());
        let scenario = args.scenario;
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut c = Conn::open(t.addr).await?;
            while !stop.load(Ordering::Relaxed) {
                let n = seq.fetch_add(1, Ordering::Relaxed);
                // A cheap deterministic spread over the population.
                let pick = |n: u64| {
                    (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as usize % pop.len().max(1)
                };
                let req = match scenario {
                    Scenario::Create => request(
                        &t,
                        Method::POST,
                        "/fhir/Patient",
                        &auth,
                        Some(serde_json::to_vec(&patient(n, salt + 1))?),
                    ),
                    Scenario::Read => {
                        let id = &pop[pick(n)].0;
                        request(&t, Method::GET, &format!("/fhir/Patient/{id}"), &auth, None)
                    }
                    Scenario::Search => {
                        let nid = &pop[pick(n)].1;
                        request(
                            &t,
                            Method::GET,
                            &format!("/fhir/Patient?identifier={NID}%7C{nid}"),
                            &auth,
                            None,
                        )
                    }
                    Scenario::Transaction => request(
                        &t,
                        Method::POST,
                        "/fhir",
                        &auth,
                        Some(serde_json::to_vec(&transaction(n, salt + 2))?),
                    ),
                    Scenario::Update => {
                        // `populate` keeps creation order: entry k was patient(k, salt).
                        let k = pick(n);
                        let id = &pop[k].0;
                        let mut p = patient(k as u64, salt);
                        p["id"] = json!(id);
                        if n.is_multiple_of(2) {
                            p["address"] = json!([{"city": "Huye", "district": "Huye"}]);
                        }
                        request(
                            &t,
                            Method::PUT,
                            &format!("/fhir/Patient/{id}"),
                            &auth,
                            Some(serde_json::to_vec(&p)?),
                        )
                    }
                };
                let t0 = Instant::now();
                let r = c.send(req).await;
                let us = t0.elapsed().as_micros().min(u32::MAX as u128) as u32;
                let counted = counting.load(Ordering::Relaxed);
                match r {
                    Ok((s, _)) if s.is_success() => {
                        if counted {
                            tally.lat_us.push(us);
                        }
                    }
                    Ok((s, _)) => {
                        if counted {
                            if s == StatusCode::TOO_MANY_REQUESTS {
                                tally.throttled += 1;
                            } else {
                                tally.errors += 1;
                            }
                        }
                        if s == StatusCode::PAYLOAD_TOO_LARGE {
                            c = Conn::open(t.addr).await?;
                        }
                    }
                    Err(_) => {
                        if counted {
                            tally.errors += 1;
                        }
                        c = Conn::open(t.addr).await?;
                    }
                }
            }
            anyhow::Ok(tally)
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    counting.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    let (mut errors, mut throttled) = (0, 0);
    for task in tasks {
        let tally = task.await??;
        lat.extend(tally.lat_us);
        errors += tally.errors;
        throttled += tally.throttled;
    }
    lat.sort_unstable();
    let ok = lat.len();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((p / 100.0) * (lat.len() - 1) as f64).round() as usize;
        f64::from(lat[i]) / 1000.0
    };
    let per_req = if args.scenario == Scenario::Transaction {
        10.0
    } else {
        1.0
    };
    println!(
        "scenario={:?} clients={} duration={:.1}s ok={} errors={} throttled={}",
        args.scenario, args.clients, elapsed, ok, errors, throttled
    );
    println!(
        "throughput: {:.0} req/s{}",
        ok as f64 / elapsed,
        if per_req > 1.0 {
            format!(" ({:.0} resources/s)", ok as f64 * per_req / elapsed)
        } else {
            String::new()
        }
    );
    println!(
        "latency ms: p50={:.2} p90={:.2} p99={:.2} p99.9={:.2} max={:.2}",
        pct(50.0),
        pct(90.0),
        pct(99.0),
        pct(99.9),
        pct(100.0)
    );
    if ok == 0 {
        bail!("no request succeeded");
    }
    Ok(())
}
