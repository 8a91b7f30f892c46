//! The HTTP server (hyper 1.x): health, readiness, the appliance's public keys, metrics,
//! reader status, and (simulated readers only, loopback callers only) the `/sim/*`
//! control API that places and lifts virtual cards and fingers.
//!
//! [`run`] takes its listener and shutdown signal from the caller, so tests bind
//! `127.0.0.1:0` and stop it when they are done. Every error a client sees is a FHIR
//! OperationOutcome with a stable code.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Content type of FHIR JSON responses.
pub const FHIR_JSON: &str = "application/fhir+json";

/// What the server needs to answer requests.
pub struct AppState {
    /// The JWKS document served at `/.well-known/jwks.json`, serialised once.
    jwks: Bytes,
    /// Facility ID, reported by `/healthz`.
    facility_id: String,
    /// Largest request body accepted.
    max_body_bytes: usize,
    /// Seconds allowed for request headers.
    header_read_timeout: Duration,
    /// Time allowed for a request body.
    body_read_timeout: Duration,
    /// Connections served at once.
    max_connections: usize,
    /// Set once everything the API depends on is open.
    ready: AtomicBool,
    /// When the server started, for `/metrics`.
    started: Instant,
    metrics: Metrics,
    /// The consent readers and their actor.
    devices: crate::devices::Devices,
    /// The store, once open (readiness and metrics depend on it).
    store: OnceLock<hexa_actors::handle::StoreHandle>,
    /// The FHIR API, mounted at `/fhir` only together with client authentication.
    fhir: OnceLock<crate::fhir::FhirApi>,
    /// Absolute base URL of the server (no trailing slash): configured, or derived from
    /// the listening address when [`run`] starts. Never taken from `Host`.
    public_base: OnceLock<String>,
    /// Per-client rate limit on `/fhir`.
    client_limiter: crate::ratelimit::RateLimiter,
    /// Per-IP rate limit on `/fhir/token`.
    token_limiter: crate::ratelimit::RateLimiter,
    /// The consent ceremonies, for the front desk's `/desk/api/*`.
    ceremonies: OnceLock<Arc<crate::consent::Ceremonies>>,
}

#[derive(Default)]
struct Metrics {
    requests: AtomicU64,
    errors_4xx: AtomicU64,
    errors_5xx: AtomicU64,
    connections: AtomicU64,
    rate_limited: AtomicU64,
}

impl AppState {
    /// State for a server publishing `jwks` for `facility_id`, with the limits of `server`.
    pub fn new(
        jwks: serde_json::Value,
        facility_id: String,
        server: &crate::config::ServerConfig,
        devices: crate::devices::Devices,
    ) -> Self {
        AppState {
            jwks: Bytes::from(serde_json::to_vec(&jwks).expect("JWKS serializes")),
            facility_id,
            max_body_bytes: server.max_body_bytes,
            header_read_timeout: Duration::from_secs(server.header_read_timeout_secs),
            body_read_timeout: Duration::from_secs(server.body_read_timeout_secs),
            max_connections: server.max_connections,
            ready: AtomicBool::new(false),
            started: Instant::now(),
            metrics: Metrics::default(),
            devices,
            store: OnceLock::new(),
            fhir: OnceLock::new(),
            public_base: server
                .public_base_url
                .clone()
                .map(OnceLock::from)
                .unwrap_or_default(),
            client_limiter: crate::ratelimit::RateLimiter::new(
                server.client_rate_per_sec,
                server.client_burst,
                server.rate_limit_max_keys,
            ),
            token_limiter: crate::ratelimit::RateLimiter::new(
                server.token_rate_per_sec,
                server.token_burst,
                server.rate_limit_max_keys,
            ),
            ceremonies: OnceLock::new(),
        }
    }

    /// The server's absolute base URL (`http://127.0.0.1:8080` when derived).
    pub fn public_base(&self) -> &str {
        self.public_base
            .get()
            .map(String::as_str)
            .unwrap_or("http://localhost")
    }

    /// Records the open store: `/readyz` requires it, `/metrics` reports on it. A second
    /// call is ignored.
    pub fn set_store(&self, store: hexa_actors::handle::StoreHandle) {
        let _ = self.store.set(store);
    }

    /// Mounts the FHIR API at `/fhir` (it carries its own authentication). Returns false
    /// if one was already mounted.
    pub fn mount_fhir(&self, api: crate::fhir::FhirApi) -> bool {
        self.fhir.set(api).is_ok()
    }

    /// Serves the consent ceremonies' front-desk API at `/desk/api/*`. A second call is
    /// ignored.
    pub fn set_ceremonies(&self, c: Arc<crate::consent::Ceremonies>) {
        let _ = self.ceremonies.set(c);
    }

    /// The consent ceremonies, once set.
    pub fn ceremonies(&self) -> Option<&Arc<crate::consent::Ceremonies>> {
        self.ceremonies.get()
    }

    /// Largest request body accepted, in bytes.
    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// The device actor that owns the consent readers.
    pub fn device_actor(&self) -> actix::Addr<hexa_actors::device::DeviceActor> {
        self.devices.addr.clone()
    }

    /// Marks the appliance ready (or not) for `/readyz`.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }
}

/// Serves HTTP/1.1 on `listener` until `shutdown` resolves, then stops accepting, lets
/// requests in flight finish (for at most 10 s) and returns.
pub async fn run(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        // No configured public URL: the address we listen on (a wildcard address names
        // loopback, the only address that is then certainly reachable).
        let ip = match addr.ip() {
            ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
            ip if ip.is_unspecified() => "[::1]".to_string(),
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            ip => ip.to_string(),
        };
        let _ = state
            .public_base
            .set(format!("http://{ip}:{}", addr.port()));
    }
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(state.max_connections));
    tokio::pin!(shutdown);
    loop {
        // Bound concurrent connections: wait for a permit before accepting another.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and similar: back off briefly, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        state.metrics.connections.fetch_add(1, Ordering::Relaxed);
        let st = state.clone();
        let svc = service_fn(move |req| {
            let st = st.clone();
            async move { Ok::<_, std::convert::Infallible>(handle(req, peer, &st).await) }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(state.header_read_timeout)
            .max_buf_size(64 * 1024)
            .serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {},
        _ = tokio::time::sleep(Duration::from_secs(10)) => {
            tracing::warn!("connections still open after 10 s; closing them");
        }
    }
    Ok(())
}

async fn handle(req: Request<Incoming>, peer: SocketAddr, st: &AppState) -> Response<Full<Bytes>> {
    st.metrics.requests.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path();
    let resp = if path.starts_with("/sim/") {
        crate::sim_api::route(req, peer, st.devices.sim.as_ref(), st.max_body_bytes).await
    } else if crate::desk::is_page_path(path) {
        crate::desk::serve(req.method(), path, peer)
    } else if path.starts_with("/desk/") {
        let c = st.ceremonies.get().map(|c| &**c);
        crate::consent::desk::route(c, req, peer, st.max_body_bytes).await
    } else if path == "/fhir" || path.starts_with("/fhir/") {
        match st.fhir.get() {
            Some(api) => {
                let env = crate::fhir::RequestEnv {
                    max_body: st.max_body_bytes,
                    body_timeout: st.body_read_timeout,
                    base: st.public_base(),
                    peer: peer.ip(),
                    client_limiter: &st.client_limiter,
                    token_limiter: &st.token_limiter,
                };
                api.handle(req, &env).await
            }
            None => outcome(
                StatusCode::NOT_FOUND,
                "not-found",
                "the FHIR API is not enabled on this appliance",
            ),
        }
    } else {
        route(req, st).await
    };
    let mut resp = resp;
    if resp.status() == StatusCode::PAYLOAD_TOO_LARGE
        || resp.status() == StatusCode::REQUEST_TIMEOUT
    {
        // The rest of the oversized body is still on the wire: close the connection
        // rather than read it.
        resp.headers_mut()
            .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    }
    let s = resp.status();
    if s == StatusCode::TOO_MANY_REQUESTS {
        st.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
    }
    if s.is_client_error() {
        st.metrics.errors_4xx.fetch_add(1, Ordering::Relaxed);
    } else if s.is_server_error() {
        st.metrics.errors_5xx.fetch_add(1, Ordering::Relaxed);
    }
    resp
}

async fn route(req: Request<Incoming>, st: &AppState) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let allowed: &[Method] = match path.as_str() {
        "/healthz" | "/readyz" | "/metrics" | "/.well-known/jwks.json" | "/devices" => {
            &[Method::GET, Method::HEAD]
        }
        _ => {
            return outcome(
                StatusCode::NOT_FOUND,
                "not-found",
                &format!("nothing is served at {path}"),
            );
        }
    };
    if !allowed.contains(req.method()) {
        let mut r = outcome(
            StatusCode::METHOD_NOT_ALLOWED,
            "not-supported",
            &format!("{} is not allowed on {path}", req.method()),
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    // Drain (bounded) whatever body came with the request so the connection stays usable.
    let limit = st.max_body_bytes;
    if Limited::new(req.into_body(), limit)
        .collect()
        .await
        .is_err()
    {
        return outcome(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-costly",
            &format!("request body larger than {limit} bytes"),
        );
    }
    match path.as_str() {
        "/healthz" => json_response(
            StatusCode::OK,
            "application/json",
            &json!({"status": "ok", "facility": st.facility_id}),
        ),
        "/readyz" => {
            if st.ready.load(Ordering::SeqCst) && st.store.get().is_some() {
                json_response(
                    StatusCode::OK,
                    "application/json",
                    &json!({"status": "ready"}),
                )
            } else {
                outcome(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "transient",
                    "the appliance is starting; retry shortly",
                )
            }
        }
        "/.well-known/jwks.json" => {
            let mut r = Response::new(Full::new(st.jwks.clone()));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/jwk-set+json"),
            );
            r
        }
        "/devices" => match st.devices.addr.send(hexa_actors::device::Status).await {
            Ok(status) => json_response(
                StatusCode::OK,
                "application/json",
                &serde_json::to_value(status).expect("status serializes"),
            ),
            Err(_) => outcome(
                StatusCode::SERVICE_UNAVAILABLE,
                "transient",
                "the device actor is restarting; retry shortly",
            ),
        },
        _ => metrics(st),
    }
}

fn metrics(st: &AppState) -> Response<Full<Bytes>> {
    let m = &st.metrics;
    let body = format!(
        "# HELP hexa_http_requests_total HTTP requests received.\n\
         # TYPE hexa_http_requests_total counter\n\
         hexa_http_requests_total {}\n\
         # HELP hexa_http_responses_errors_total Error responses by class.\n\
         # TYPE hexa_http_responses_errors_total counter\n\
         hexa_http_responses_errors_total{{class=\"4xx\"}} {}\n\
         hexa_http_responses_errors_total{{class=\"5xx\"}} {}\n\
         # HELP hexa_http_connections_total TCP connections accepted.\n\
         # TYPE hexa_http_connections_total counter\n\
         hexa_http_connections_total {}\n\
         # HELP hexa_http_rate_limited_total Requests refused with 429 by a rate limit.\n\
         # TYPE hexa_http_rate_limited_total counter\n\
         hexa_http_rate_limited_total {}\n\
         # HELP hexa_uptime_seconds Seconds since the server started.\n\
         # TYPE hexa_uptime_seconds gauge\n\
         hexa_uptime_seconds {}\n",
        m.requests.load(Ordering::Relaxed),
        m.errors_4xx.load(Ordering::Relaxed),
        m.errors_5xx.load(Ordering::Relaxed),
        m.connections.load(Ordering::Relaxed),
        m.rate_limited.load(Ordering::Relaxed),
        st.started.elapsed().as_secs(),
    );
    let mut body = body;
    if let Some(store) = st.store.get() {
        let w = store.engine().writer.stats();
        body.push_str(&format!(
            "# HELP hexa_store_commits_total Group commits of the store writer.\n\
             # TYPE hexa_store_commits_total counter\n\
             hexa_store_commits_total {}\n\
             # HELP hexa_store_commit_waits_total Group commits for which the writer waited for more members under load.\n\
             # TYPE hexa_store_commit_waits_total counter\n\
             hexa_store_commit_waits_total {}\n\
             # HELP hexa_store_registry_backlog Requests queued for a registry thread.\n\
             # TYPE hexa_store_registry_backlog gauge\n\
             hexa_store_registry_backlog {}\n\
             # HELP hexa_store_writes_total Writes committed by the store writer.\n\
             # TYPE hexa_store_writes_total counter\n\
             hexa_store_writes_total {}\n\
             # HELP hexa_actor_restarts_total Registry actors restarted after a panic.\n\
             # TYPE hexa_actor_restarts_total counter\n\
             hexa_actor_restarts_total {}\n\
             # HELP hexa_store_map_size_bytes Size of the store's LMDB map.\n\
             # TYPE hexa_store_map_size_bytes gauge\n\
             hexa_store_map_size_bytes {}\n",
            w.commits.load(Ordering::Relaxed),
            w.waits.load(Ordering::Relaxed),
            store.store().backlog(),
            w.members.load(Ordering::Relaxed),
            store.restarts(),
            store.store().map_size(),
        ));
        let nice = w.nice.load(Ordering::Relaxed);
        if nice != i32::MIN {
            body.push_str(&format!(
                "# HELP hexa_store_writer_nice Nice value of the store's group-commit writer thread.\n\
                 # TYPE hexa_store_writer_nice gauge\n\
                 hexa_store_writer_nice {nice}\n"
            ));
        }
        match store.audit_status() {
            Ok(a) => {
                body.push_str(&format!(
                    "# HELP hexa_audit_log_entries Entries in the Merkle audit log.\n\
                     # TYPE hexa_audit_log_entries gauge\n\
                     hexa_audit_log_entries {}\n\
                     # HELP hexa_audit_checkpoint_size Tree size of the latest signed checkpoint.\n\
                     # TYPE hexa_audit_checkpoint_size gauge\n\
                     hexa_audit_checkpoint_size {}\n",
                    a.size, a.checkpoint_size,
                ));
                if let Some(t) = a.checkpoint_time_ms {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis() as u64)
                        .unwrap_or(0);
                    body.push_str(&format!(
                        "# HELP hexa_audit_checkpoint_age_seconds Seconds since the latest checkpoint was signed.\n\
                         # TYPE hexa_audit_checkpoint_age_seconds gauge\n\
                         hexa_audit_checkpoint_age_seconds {:.3}\n",
                        now.saturating_sub(t) as f64 / 1000.0
                    ));
                }
            }
            Err(e) => tracing::warn!(error = %e, "audit status unavailable for /metrics"),
        }
    }
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

/// A response with `status`, `content_type` and `body` as they are.
pub fn bytes_response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A JSON response with `status`.
pub fn json_response(
    status: StatusCode,
    content_type: &'static str,
    v: &serde_json::Value,
) -> Response<Full<Bytes>> {
    bytes_response(
        status,
        content_type,
        serde_json::to_vec(v).expect("JSON serializes"),
    )
}

/// A FHIR OperationOutcome response with one issue of `code` and a sentence for people.
pub fn outcome(status: StatusCode, code: &str, diagnostics: &str) -> Response<Full<Bytes>> {
    json_response(
        status,
        FHIR_JSON,
        &json!({
            "resourceType": "OperationOutcome",
            "issue": [{
                "severity": if status.is_server_error() { "fatal" } else { "error" },
                "code": code,
                "diagnostics": diagnostics,
            }]
        }),
    )
}
