//! The FHIR R4 REST API at `/fhir`: routing, content negotiation, body limits,
//! authentication and authorisation through an [`Authorizer`], and the interactions
//! (read, vread, create, conditional create, update with `If-Match`, delete, instance and
//! type history, search by GET and POST with `_include`/`_revinclude` and `_sort`,
//! conditional update, Bundle transaction and batch, and the operations of
//! [`operations`] and [`terminology`]). Every error is an OperationOutcome
//! ([`outcome::ApiError`]). Per-client and per-IP rate limits answer 429 with
//! `Retry-After`; links and `fullUrl`s use the configured public base URL, never `Host`.

pub mod access;
mod bundle;
pub mod capability;
mod guard;
mod include;
mod operations;
pub mod outcome;
pub mod query;
mod smart;
mod terminology;
pub mod validate;

pub use access::{Authorizer, Caller, Denied, Grants, Interaction};

use bytes::Bytes;
use hexa_actors::handle::StoreHandle;
use hexa_actors::store::engine::WriteResult;
use hexa_actors::store::{AccessContext, Record, component_for};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{
    ALLOW, AUTHORIZATION, CONTENT_LENGTH, ETAG, HeaderMap, HeaderValue, LAST_MODIFIED, LOCATION,
    WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use outcome::{ApiError, Op};
use serde_json::{Value, json};
use std::sync::Arc;

/// HTTP response type of the API.
pub type Resp = Response<Full<Bytes>>;
type ApiResult<T> = Result<T, ApiError>;

/// Default page size of searches and type history.
const DEFAULT_COUNT: usize = 20;
/// Largest page size a client may ask for.
const MAX_COUNT: usize = 1000;

/// What the HTTP server hands the API with each request.
pub struct RequestEnv<'a> {
    /// Largest body read.
    pub max_body: usize,
    /// Time allowed to receive the body (slow senders get 408 and the connection closes).
    pub body_timeout: std::time::Duration,
    /// Absolute base URL of the server (no trailing slash, no `/fhir`).
    pub base: &'a str,
    /// The peer's address (the token endpoint's rate-limit key).
    pub peer: std::net::IpAddr,
    /// Per-client limit on authenticated requests.
    pub client_limiter: &'a crate::ratelimit::RateLimiter,
    /// Per-IP limit on the token endpoint.
    pub token_limiter: &'a crate::ratelimit::RateLimiter,
}

/// 429 with an OperationOutcome and `Retry-After`.
fn too_many(l: crate::ratelimit::Limited, what: &str) -> Resp {
    let mut r = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "throttled",
        "rate-limited",
        format!(
            "too many requests {what}; retry after {} s",
            l.retry_after_secs
        ),
    )
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&l.retry_after_secs.to_string()) {
        r.headers_mut().insert(hyper::header::RETRY_AFTER, v);
    }
    r
}

/// The FHIR API: the store and the authentication it is always mounted with.
#[derive(Clone)]
pub struct FhirApi {
    store: StoreHandle,
    auth: Arc<dyn Authorizer>,
    /// The consent ceremonies (`$enroll-*`, `$consent`, `$countersign`, `$revoke`) and the
    /// patient sessions they open.
    ceremonies: Option<Arc<crate::consent::Ceremonies>>,
}

/// One parsed request.
struct Req {
    method: Method,
    segs: Vec<String>,
    query: Vec<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
    /// Absolute URL of `/fhir` as the client addressed it.
    base: String,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `Prefer: return=minimal`.
    fn minimal(&self) -> bool {
        self.header("prefer")
            .is_some_and(|p| p.split([',', ';']).any(|x| x.trim() == "return=minimal"))
    }
}

/// Unix time in seconds.
fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Whether a Content-Type names FHIR JSON or JSON.
fn is_json(ct: Option<&str>) -> bool {
    ct.map(|c| {
        c.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    })
    .is_some_and(|m| m == "application/fhir+json" || m == "application/json")
}

/// Whether an `Accept` header admits JSON (absent means anything).
fn accepts_json(accept: Option<&str>) -> bool {
    accept.is_none_or(|a| {
        a.split(',').any(|r| {
            let m = r
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            matches!(
                m.as_str(),
                "*/*"
                    | "application/*"
                    | "application/json"
                    | "application/fhir+json"
                    | "application/json+fhir"
            )
        })
    })
}

fn is_form(ct: Option<&str>) -> bool {
    ct.map(|c| {
        c.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    })
    .is_some_and(|m| m == "application/x-www-form-urlencoded")
}

fn unsupported_media(ct: Option<&str>, wanted: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "not-supported",
        "unsupported-media-type",
        format!(
            "Content-Type {} is not accepted here; send {wanted}",
            ct.unwrap_or("(none)")
        ),
    )
}

fn method_not_allowed(m: &Method, allow: &'static str) -> Resp {
    let mut r = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "not-supported",
        "method-not-allowed",
        format!("{m} is not allowed here; allowed: {allow}"),
    )
    .into_response();
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    r
}

/// A JSON response with FHIR's content type.
fn fhir_json(status: StatusCode, v: &Value) -> Resp {
    crate::http::json_response(status, crate::http::FHIR_JSON, v)
}

/// A searchset Bundle's JSON: `resourceType`, `type`, `total` (unless the search did not
/// count it), `link`, then `entry` (when there are entries) with each resource's stored
/// canonical bytes spliced in.
fn searchset_body(
    base: &str,
    total: Option<usize>,
    links: &[Value],
    entries: &[(&Record, &str)],
) -> Vec<u8> {
    let size: usize = entries.iter().map(|(r, _)| r.canonical.len() + 128).sum();
    let mut out = Vec::with_capacity(256 + size);
    out.extend_from_slice(br#"{"resourceType":"Bundle","type":"searchset""#);
    if let Some(total) = total {
        out.extend_from_slice(br#","total":"#);
        out.extend_from_slice(total.to_string().as_bytes());
    }
    out.extend_from_slice(br#","link":"#);
    // Serialising Values and strings into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, links);
    if !entries.is_empty() {
        out.extend_from_slice(br#","entry":["#);
        for (i, (rec, mode)) in entries.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(br#"{"fullUrl":"#);
            let url = format!("{base}/{}/{}", rec.resource_type, rec.id);
            let _ = serde_json::to_writer(&mut out, &url);
            out.extend_from_slice(br#","resource":"#);
            out.extend_from_slice(&rec.canonical);
            out.extend_from_slice(br#","search":{"mode":"#);
            let _ = serde_json::to_writer(&mut out, mode);
            out.extend_from_slice(b"}}");
        }
        out.push(b']');
    }
    out.push(b'}');
    out
}

/// Parses a JSON body that must be a resource of `expected` type (or any when `None`).
fn parse_resource(body: &[u8], expected: Option<&str>) -> ApiResult<Value> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid("bad-json", format!("the body is not valid JSON: {e}")))?;
    let Some(obj) = v.as_object() else {
        return Err(ApiError::invalid(
            "not-a-resource",
            "the body is not a FHIR resource (a JSON object with resourceType)",
        ));
    };
    let Some(rt) = obj.get("resourceType").and_then(Value::as_str) else {
        return Err(ApiError::invalid(
            "not-a-resource",
            "the body has no resourceType; it is not a FHIR resource",
        ));
    };
    if let Some(t) = expected
        && rt != t
    {
        return Err(ApiError::invalid(
            "wrong-resource-type",
            format!("the body is a {rt} but the URL is for {t}"),
        ));
    }
    Ok(v)
}

/// Parses an ETag / If-Match value: `W/"3"` or `"3"` or `3`.
fn parse_version_tag(s: &str) -> Option<u64> {
    let s = s.trim();
    let s = s.strip_prefix("W/").unwrap_or(s);
    s.trim_matches('"').parse().ok()
}

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("W/\"{version}\"")).expect("ASCII header")
}

impl FhirApi {
    /// The API over `store`, authenticating every request through `auth`.
    pub fn new(store: StoreHandle, auth: Arc<dyn Authorizer>) -> Self {
        FhirApi {
            store,
            auth,
            ceremonies: None,
        }
    }

    /// Serves the consent operations and accepts patient session tokens.
    pub fn with_ceremonies(mut self, c: Arc<crate::consent::Ceremonies>) -> Self {
        self.ceremonies = Some(c);
        self
    }

    /// Answers one request to `/fhir...`, reading at most `env.max_body` bytes of body.
    pub async fn handle(&self, req: Request<Incoming>, env: &RequestEnv<'_>) -> Resp {
        let max_body = env.max_body;
        let (parts, body) = req.into_parts();
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-costly",
                "body-too-large",
                format!("the request body is larger than {max_body} bytes"),
            )
            .into_response()
        };
        if declared.is_some_and(|n| n > max_body as u64) {
            return too_large();
        }
        let collected =
            match tokio::time::timeout(env.body_timeout, Limited::new(body, max_body).collect())
                .await
            {
                Ok(c) => c,
                Err(_) => {
                    return ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "timeout",
                        "body-timeout",
                        format!(
                            "the request body did not arrive within {} s",
                            env.body_timeout.as_secs()
                        ),
                    )
                    .into_response();
                }
            };
        let body = match collected {
            Ok(b) => b.to_bytes(),
            Err(e)
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                return too_large();
            }
            Err(_) => {
                return ApiError::invalid("bad-body", "the request body could not be read")
                    .into_response();
            }
        };
        let base = format!("{}/fhir", env.base);
        let path = parts.uri.path();
        let rest = path.strip_prefix("/fhir").unwrap_or("");
        let segs = rest
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| query::percent_decode(s, false))
            .collect();
        let query = parts.uri.query().map(query::form_pairs).unwrap_or_default();
        let r = Req {
            method: parts.method,
            segs,
            query,
            headers: parts.headers,
            body,
            base,
        };
        self.dispatch(r, env).await
    }

    async fn dispatch(&self, r: Req, env: &RequestEnv<'_>) -> Resp {
        let segs: Vec<&str> = r.segs.iter().map(String::as_str).collect();
        if !accepts_json(r.header("accept")) {
            return ApiError::new(
                StatusCode::NOT_ACCEPTABLE,
                "not-supported",
                "not-acceptable",
                "this server answers in JSON only; accept application/fhir+json",
            )
            .into_response();
        }
        // Public endpoints: discovery and the token endpoint.
        match segs.as_slice() {
            ["metadata"] => {
                return if r.method == Method::GET || r.method == Method::HEAD {
                    fhir_json(StatusCode::OK, &capability::capability_statement(&r.base))
                } else {
                    method_not_allowed(&r.method, "GET, HEAD")
                };
            }
            [".well-known", "smart-configuration"] => {
                return if r.method == Method::GET || r.method == Method::HEAD {
                    crate::http::json_response(
                        StatusCode::OK,
                        "application/json",
                        &self.auth.smart_configuration(&r.base),
                    )
                } else {
                    method_not_allowed(&r.method, "GET, HEAD")
                };
            }
            ["_audit", rest @ ..] if crate::audit_api::is_public(rest) => {
                return crate::audit_api::public(&self.store, &r.method, rest, &r.query).await;
            }
            ["token"] => {
                if r.method != Method::POST {
                    return method_not_allowed(&r.method, "POST");
                }
                if let Err(l) = env.token_limiter.check(&env.peer.to_string()) {
                    return too_many(l, "to the token endpoint from this address");
                }
                let ct = r.header("content-type");
                if !is_form(ct) {
                    return unsupported_media(ct, "application/x-www-form-urlencoded")
                        .into_response();
                }
                let (status, body) =
                    self.auth
                        .token_endpoint(&r.body, &format!("{}/token", r.base), now_secs());
                let mut resp = crate::http::json_response(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
                    "application/json",
                    &body,
                );
                resp.headers_mut()
                    .insert("cache-control", HeaderValue::from_static("no-store"));
                return resp;
            }
            _ => {}
        }
        let authorization = r.header(AUTHORIZATION.as_str());
        if let Some(c) = &self.ceremonies
            && crate::consent::desk::is_session_bearer(authorization)
        {
            // A patient's own card-tap session: only its own AuditEvents.
            return match c.session_caller(authorization, &r.method, &segs, &r.query, now_secs()) {
                Ok((caller, ctx)) => {
                    let call = Call {
                        api: self,
                        caller: &caller,
                        ctx: &ctx,
                    };
                    call.route(&r, &segs)
                        .await
                        .unwrap_or_else(|e| e.into_response())
                }
                Err(e) => e.into_response(),
            };
        }
        let caller = match self.auth.authenticate(authorization, now_secs()) {
            Ok(c) => c,
            Err(d) => {
                let status = d.status;
                let mut resp = ApiError::from(d).into_response();
                if status == 401 {
                    resp.headers_mut().insert(
                        WWW_AUTHENTICATE,
                        HeaderValue::from_static("Bearer realm=\"hexa\", error=\"invalid_token\""),
                    );
                }
                return resp;
            }
        };
        if let Err(l) = env.client_limiter.check(&caller.client_id) {
            return too_many(l, "from this client");
        }
        let purpose = match r.header("x-purpose-of-use") {
            None => "TREAT".to_string(),
            Some(p)
                if !p.is_empty()
                    && p.len() <= 32
                    && p.bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()) =>
            {
                p.to_string()
            }
            Some(_) => {
                return ApiError::invalid(
                    "bad-purpose-of-use",
                    "X-Purpose-Of-Use must be a v3 ActReason code such as TREAT or ETREAT",
                )
                .into_response();
            }
        };
        let justification = match guard::justification(&caller, r.header(guard::JUSTIFICATION)) {
            Ok(j) => j,
            Err(e) => return e.into_response(),
        };
        let practitioner = match guard::on_behalf_of(r.header(guard::ON_BEHALF_OF)) {
            Ok(p) => p,
            Err(e) => return e.into_response(),
        };
        let ctx = AccessContext {
            client_id: caller.client_id.clone(),
            facility_id: caller.facility_id.clone(),
            practitioner,
            purpose_of_use: purpose,
            justification,
            patient_session: None,
        };
        let c = Call {
            api: self,
            caller: &caller,
            ctx: &ctx,
        };
        match c.route(&r, &segs).await {
            Ok(resp) => resp,
            Err(e) => e.into_response(),
        }
    }
}

/// One authenticated request.
struct Call<'a> {
    api: &'a FhirApi,
    caller: &'a Caller,
    ctx: &'a AccessContext,
}

impl Call<'_> {
    fn store(&self) -> &StoreHandle {
        &self.api.store
    }

    /// Refuses unknown types (404) and interactions the token's scopes do not grant (403).
    fn allow(&self, ty: &str, i: Interaction) -> ApiResult<()> {
        component_for(ty).map_err(|e| ApiError::from_store(&e, Op::Read))?;
        if self.caller.grants.allows(ty, i) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "insufficient-scope",
                format!("the token's scopes do not allow {i:?} on {ty}"),
            ))
        }
    }

    fn require_json(&self, r: &Req) -> ApiResult<()> {
        let ct = r.header("content-type");
        if is_json(ct) {
            Ok(())
        } else {
            Err(unsupported_media(ct, "application/fhir+json"))
        }
    }

    async fn route(&self, r: &Req, segs: &[&str]) -> ApiResult<Resp> {
        let m = &r.method;
        let get = *m == Method::GET || *m == Method::HEAD;
        match segs {
            [] => match *m {
                Method::POST => {
                    self.require_json(r)?;
                    let b = parse_resource(&r.body, Some("Bundle"))?;
                    bundle::process(self, r, b).await
                }
                _ => Ok(method_not_allowed(m, "POST")),
            },
            ["_audit", "entry", index] => {
                self.allow("AuditEvent", Interaction::Read)?;
                crate::audit_api::entry(self.store(), self.ctx, m, index, &r.query).await
            }
            [ty] => match *m {
                Method::GET | Method::HEAD => self.search(r, ty, r.query.clone()).await,
                Method::POST => self.create(r, ty).await,
                Method::PUT if !r.query.is_empty() => self.conditional_update(r, ty).await,
                _ => Ok(method_not_allowed(
                    m,
                    "GET, HEAD, POST, PUT (with search criteria)",
                )),
            },
            [ty, id, op] if crate::consent::required_scope(ty, op).is_some() => {
                if *m != Method::POST {
                    return Ok(method_not_allowed(m, "POST"));
                }
                let Some(c) = &self.api.ceremonies else {
                    return Err(ApiError::not_supported(
                        "unsupported-operation",
                        "consent ceremonies are not enabled on this appliance",
                    ));
                };
                if let Some((scope_ty, i)) = crate::consent::required_scope(ty, op) {
                    self.allow(scope_ty, i)?;
                }
                let who = crate::consent::Requester {
                    client_id: self.caller.client_id.clone(),
                    facility_id: self.caller.facility_id.clone(),
                };
                c.operation(&who, ty, id, op, &r.body, &r.base)
                    .await
                    .map_err(|e| e.to_api())
            }
            [ty, op] if op.starts_with('$') => self.operation(r, ty, None, op).await,
            [ty, id, op] if op.starts_with('$') => self.operation(r, ty, Some(id), op).await,
            [ty, "_search"] => {
                if *m != Method::POST {
                    return Ok(method_not_allowed(m, "POST"));
                }
                let ct = r.header("content-type");
                if !is_form(ct) {
                    return Err(unsupported_media(ct, "application/x-www-form-urlencoded"));
                }
                let mut params = r.query.clone();
                params.extend(query::form_pairs(&String::from_utf8_lossy(&r.body)));
                self.search(r, ty, params).await
            }
            [ty, "_history"] => {
                if !get {
                    return Ok(method_not_allowed(m, "GET, HEAD"));
                }
                self.type_history(r, ty).await
            }
            [ty, id] => match *m {
                Method::GET | Method::HEAD => self.read(ty, id, None).await,
                Method::PUT => self.update(r, ty, id).await,
                Method::DELETE => self.delete(ty, id).await,
                _ => Ok(method_not_allowed(m, "GET, HEAD, PUT, DELETE")),
            },
            [ty, id, "_history"] => {
                if !get {
                    return Ok(method_not_allowed(m, "GET, HEAD"));
                }
                self.history(r, ty, id).await
            }
            [ty, id, "_history", v] => {
                if !get {
                    return Ok(method_not_allowed(m, "GET, HEAD"));
                }
                let v: u64 = v.parse().map_err(|_| {
                    ApiError::new(
                        StatusCode::NOT_FOUND,
                        "not-found",
                        "version-not-found",
                        format!("`{v}` is not a version of {ty}/{id}"),
                    )
                })?;
                self.read(ty, id, Some(v)).await
            }
            _ => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not-found",
                "not-found",
                "no FHIR endpoint at this path",
            )),
        }
    }

    async fn read(&self, ty: &str, id: &str, version: Option<u64>) -> ApiResult<Resp> {
        self.allow(ty, Interaction::Read)?;
        let rec = match version {
            None => self.store().read(self.ctx, ty, id).await,
            Some(v) => self.store().vread(self.ctx, ty, id, v).await,
        }
        .map_err(|e| ApiError::from_store(&e, Op::Read))?;
        if rec.deleted {
            return Err(ApiError::new(
                StatusCode::GONE,
                "deleted",
                "deleted",
                format!("{ty}/{id} version {} is a deletion", rec.version),
            ));
        }
        Ok(record_response(StatusCode::OK, &rec, false, None))
    }

    async fn create(&self, r: &Req, ty: &str) -> ApiResult<Resp> {
        self.allow(ty, Interaction::Create)?;
        self.require_json(r)?;
        let mut res = parse_resource(&r.body, Some(ty))?;
        // The server assigns ids on create (FHIR R4 3.1.0.5).
        if let Some(o) = res.as_object_mut() {
            o.remove("id");
        }
        validate::resource(self, &res)?;
        let w = match r.header("if-none-exist") {
            Some(crit) => {
                let crit = query::form_pairs(crit.trim_start_matches('?'));
                if crit.is_empty() {
                    return Err(ApiError::invalid(
                        "bad-if-none-exist",
                        "If-None-Exist must carry search parameters such as identifier=sys|val",
                    ));
                }
                self.allow(ty, Interaction::Search)?;
                self.store().conditional_create(self.ctx, res, &crit).await
            }
            None => self.store().create(self.ctx, res, None).await,
        }
        .map_err(|e| ApiError::from_store(&e, Op::Write { if_match: false }))?;
        Ok(write_response(r, &w))
    }

    async fn update(&self, r: &Req, ty: &str, id: &str) -> ApiResult<Resp> {
        self.allow(ty, Interaction::Update)?;
        self.require_json(r)?;
        let mut res = parse_resource(&r.body, Some(ty))?;
        match res.get("id").and_then(Value::as_str) {
            Some(rid) if rid == id => {}
            Some(rid) => {
                return Err(ApiError::invalid(
                    "id-mismatch",
                    format!("the body's id {rid} does not match the URL's id {id}"),
                ));
            }
            None => {
                if let Some(o) = res.as_object_mut() {
                    o.insert("id".into(), json!(id));
                }
            }
        }
        validate::resource(self, &res)?;
        let if_match = match r.header("if-match") {
            None => None,
            Some(t) => Some(parse_version_tag(t).ok_or_else(|| {
                ApiError::invalid(
                    "bad-if-match",
                    format!("If-Match `{t}` is not an ETag like W/\"3\""),
                )
            })?),
        };
        let w = self
            .store()
            .update(self.ctx, ty, id, res, if_match, None)
            .await
            .map_err(|e| {
                ApiError::from_store(
                    &e,
                    Op::Write {
                        if_match: if_match.is_some(),
                    },
                )
            })?;
        Ok(write_response(r, &w))
    }

    async fn delete(&self, ty: &str, id: &str) -> ApiResult<Resp> {
        self.allow(ty, Interaction::Delete)?;
        let w = self
            .store()
            .delete(self.ctx, ty, id)
            .await
            .map_err(|e| ApiError::from_store(&e, Op::Write { if_match: false }))?;
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::NO_CONTENT;
        resp.headers_mut().insert(ETAG, etag(w.record.version));
        Ok(resp)
    }

    async fn search(&self, r: &Req, ty: &str, params: Vec<(String, String)>) -> ApiResult<Resp> {
        self.allow(ty, Interaction::Search)?;
        let body = self.search_bundle(&r.base, ty, params).await?;
        Ok(crate::http::bytes_response(
            StatusCode::OK,
            crate::http::FHIR_JSON,
            body,
        ))
    }

    /// Runs a search and writes its searchset Bundle with `self` and `next` links. The
    /// entries' resources are the stored canonical bytes, copied in as they are (no
    /// re-serialisation of each resource).
    async fn search_bundle(
        &self,
        base: &str,
        ty: &str,
        params: Vec<(String, String)>,
    ) -> ApiResult<Vec<u8>> {
        let mut summary_count = false;
        let mut count = DEFAULT_COUNT;
        let mut offset = 0usize;
        let mut kept = Vec::with_capacity(params.len());
        let mut includes = Vec::new();
        // Kept apart from the store's query, but repeated in the paging links.
        let mut include_params = Vec::new();
        for (k, v) in params {
            match k.as_str() {
                "_include" | "_revinclude" | "_include:iterate" | "_revinclude:iterate" => {
                    includes.push(include::IncludeSpec::parse(&k, &v, ty)?);
                    include_params.push((k, v));
                }
                "_elements" | "_contained" | "_has" => {
                    return Err(ApiError::not_supported(
                        "unsupported-search",
                        format!("{k} is not supported by this server"),
                    ));
                }
                "_summary" if v == "count" => summary_count = true,
                "_summary" if v == "false" => {}
                "_summary" => {
                    return Err(ApiError::not_supported(
                        "unsupported-search",
                        format!("_summary={v} is not supported (only count and false)"),
                    ));
                }
                "_format" => {
                    if !matches!(
                        v.as_str(),
                        "json" | "application/fhir+json" | "application/json"
                    ) {
                        return Err(ApiError::new(
                            StatusCode::NOT_ACCEPTABLE,
                            "not-supported",
                            "unsupported-format",
                            format!("_format={v}: only JSON is served"),
                        ));
                    }
                }
                "_count" => {
                    count = v.parse().map_err(|_| {
                        ApiError::invalid("bad-count", format!("_count={v} is not a number"))
                    })?;
                    count = count.min(MAX_COUNT);
                }
                "_offset" => {
                    offset = v.parse().map_err(|_| {
                        ApiError::invalid("bad-offset", format!("_offset={v} is not a number"))
                    })?;
                }
                "_pretty" => {}
                _ => kept.push((k, v)),
            }
        }
        // `_summary=count` asks for the total, whatever `_total` says.
        if summary_count {
            kept.retain(|(k, _)| k != "_total");
        }
        let mut q = kept.clone();
        q.push((
            "_count".into(),
            if summary_count { 0 } else { count }.to_string(),
        ));
        q.push(("_offset".into(), offset.to_string()));
        let page = self
            .store()
            .search(self.ctx, ty, &q)
            .await
            .map_err(|e| ApiError::from_store(&e, Op::Read))?;
        let link = |off: usize| {
            let mut p = kept.clone();
            p.extend(include_params.iter().cloned());
            p.push(("_count".into(), count.to_string()));
            p.push(("_offset".into(), off.to_string()));
            format!("{base}/{ty}?{}", query::encode_pairs(&p))
        };
        let mut links = vec![json!({"relation": "self", "url": link(offset)})];
        if !summary_count && offset + count < page.total && count > 0 {
            links.push(json!({"relation": "next", "url": link(offset + count)}));
        }
        if !summary_count && offset > 0 {
            links.push(json!({"relation": "previous", "url": link(offset.saturating_sub(count))}));
        }
        let mut entries: Vec<(&Record, &str)> = if summary_count {
            Vec::new()
        } else {
            page.items.iter().map(|rec| (rec, "match")).collect()
        };
        let included = if !summary_count && !includes.is_empty() {
            include::resolve(self, &page.items, &includes).await
        } else {
            Vec::new()
        };
        entries.extend(included.iter().map(|rec| (rec, "include")));
        // With `_total=none` the store may stop at the page and one hit past it: `total` is
        // then a lower bound, enough for the `next` link, and the Bundle carries none.
        Ok(searchset_body(
            base,
            page.exact.then_some(page.total),
            &links,
            &entries,
        ))
    }

    async fn history(&self, r: &Req, ty: &str, id: &str) -> ApiResult<Resp> {
        self.allow(ty, Interaction::Read)?;
        let (count, offset) = history_paging(&r.query)?;
        let recs = self
            .store()
            .history(self.ctx, ty, id)
            .await
            .map_err(|e| ApiError::from_store(&e, Op::Read))?;
        let total = recs.len();
        let next = (offset + count < total && count > 0).then(|| {
            format!(
                "{}/{ty}/{id}/_history?_count={count}&_offset={}",
                r.base,
                offset + count
            )
        });
        let page: Vec<Record> = recs.into_iter().skip(offset).take(count).collect();
        Ok(fhir_json(
            StatusCode::OK,
            &history_bundle(&r.base, &page, total, next),
        ))
    }

    /// `PUT [type]?criteria`: no match creates (with the body's id if it has one), one
    /// match updates it (`If-Match` honoured), several are 412.
    async fn conditional_update(&self, r: &Req, ty: &str) -> ApiResult<Resp> {
        self.allow(ty, Interaction::Update)?;
        self.allow(ty, Interaction::Search)?;
        self.require_json(r)?;
        let mut res = parse_resource(&r.body, Some(ty))?;
        validate::resource(self, &res)?;
        let mut crit: Vec<(String, String)> = Vec::new();
        for (k, v) in &r.query {
            if k.starts_with('_') && k != "_id" && k != "_lastUpdated" {
                return Err(ApiError::invalid(
                    "bad-conditional-update",
                    format!("{k} cannot be a conditional update criterion"),
                ));
            }
            crit.push((k.clone(), v.clone()));
        }
        crit.push(("_count".into(), "2".into()));
        let page = self
            .store()
            .search(self.ctx, ty, &crit)
            .await
            .map_err(|e| ApiError::from_store(&e, Op::Read))?;
        let body_id = res.get("id").and_then(Value::as_str).map(str::to_string);
        let id = match (page.total, page.items.first()) {
            (0, _) => match body_id {
                Some(id) => id,
                None => {
                    self.allow(ty, Interaction::Create)?;
                    let w = self
                        .store()
                        .create(self.ctx, res, None)
                        .await
                        .map_err(|e| ApiError::from_store(&e, Op::Write { if_match: false }))?;
                    return Ok(write_response(r, &w));
                }
            },
            (1, Some(found)) => {
                if body_id.as_deref().is_some_and(|b| b != found.id) {
                    return Err(ApiError::invalid(
                        "id-mismatch",
                        format!(
                            "the body's id does not match the resource the criteria found ({ty}/{})",
                            found.id
                        ),
                    ));
                }
                found.id.clone()
            }
            (n, _) => {
                return Err(ApiError::new(
                    StatusCode::PRECONDITION_FAILED,
                    "duplicate",
                    "multiple-matches",
                    format!(
                        "the criteria match {n} resources; a conditional update needs at most one"
                    ),
                ));
            }
        };
        if let Some(o) = res.as_object_mut() {
            o.insert("id".into(), json!(id));
        }
        let if_match = match r.header("if-match") {
            None => None,
            Some(t) => Some(parse_version_tag(t).ok_or_else(|| {
                ApiError::invalid(
                    "bad-if-match",
                    format!("If-Match `{t}` is not an ETag like W/\"3\""),
                )
            })?),
        };
        let w = self
            .store()
            .update(self.ctx, ty, &id, res, if_match, None)
            .await
            .map_err(|e| {
                ApiError::from_store(
                    &e,
                    Op::Write {
                        if_match: if_match.is_some(),
                    },
                )
            })?;
        Ok(write_response(r, &w))
    }

    /// `[type]/$op` and `[type]/[id]/$op`.
    async fn operation(&self, r: &Req, ty: &str, id: Option<&str>, op: &str) -> ApiResult<Resp> {
        match (ty, id, op) {
            ("Patient", None, "$match") => operations::patient_match(self, r).await,
            ("Patient", Some(id), "$everything") => operations::everything(self, r, id).await,
            (
                "CodeSystem" | "ValueSet" | "ConceptMap",
                _,
                "$lookup" | "$validate-code" | "$expand" | "$translate",
            ) => terminology::operation(self, r, ty, id, op).await,
            _ => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not-supported",
                "unknown-operation",
                format!(
                    "{op} is not an operation on {ty}{} here; see /fhir/metadata",
                    if id.is_some() { " instances" } else { "" }
                ),
            )),
        }
    }

    async fn type_history(&self, r: &Req, ty: &str) -> ApiResult<Resp> {
        self.allow(ty, Interaction::Search)?;
        let (count, offset) = history_paging(&r.query)?;
        let page = self
            .store()
            .type_history(self.ctx, ty, count, offset)
            .await
            .map_err(|e| ApiError::from_store(&e, Op::Read))?;
        let next = (offset + count < page.total && count > 0).then(|| {
            format!(
                "{}/{ty}/_history?_count={count}&_offset={}",
                r.base,
                offset + count
            )
        });
        Ok(fhir_json(
            StatusCode::OK,
            &history_bundle(&r.base, &page.items, page.total, next),
        ))
    }
}

/// `_count` and `_offset` of a history request; any other parameter is refused (400).
fn history_paging(query: &[(String, String)]) -> ApiResult<(usize, usize)> {
    let mut count = DEFAULT_COUNT;
    let mut offset = 0;
    for (k, v) in query {
        let bad = || ApiError::invalid("bad-count", format!("{k}={v} is not a number"));
        match k.as_str() {
            "_count" => count = v.parse::<usize>().map_err(|_| bad())?.min(MAX_COUNT),
            "_offset" => offset = v.parse().map_err(|_| bad())?,
            "_format" | "_pretty" => {}
            _ => {
                return Err(ApiError::not_supported(
                    "unsupported-search",
                    format!("{k} is not supported on _history"),
                ));
            }
        }
    }
    Ok((count, offset))
}

/// A history Bundle of `recs` (newest first).
fn history_bundle(base: &str, recs: &[Record], total: usize, next: Option<String>) -> Value {
    let entries: Vec<Value> = recs
        .iter()
        .map(|rec| {
            let url = format!("{}/{}", rec.resource_type, rec.id);
            let mut e = json!({
                "fullUrl": format!("{base}/{url}"),
                "request": {
                    "method": if rec.deleted { "DELETE" } else if rec.version == 1 { "POST" } else { "PUT" },
                    "url": if rec.version == 1 && !rec.deleted { rec.resource_type.clone() } else { url },
                },
                "response": {
                    "status": if rec.deleted { "204" } else if rec.version == 1 { "201" } else { "200" },
                    "etag": format!("W/\"{}\"", rec.version),
                    "lastModified": hexa_actors::store::time::instant(rec.last_updated),
                },
            });
            if !rec.deleted {
                e["resource"] = rec.resource.clone();
            }
            e
        })
        .collect();
    let mut links = Vec::new();
    if let Some(n) = next {
        links.push(json!({"relation": "next", "url": n}));
    }
    let mut b = json!({"resourceType": "Bundle", "type": "history", "total": total});
    if !links.is_empty() {
        b["link"] = Value::Array(links);
    }
    if !entries.is_empty() {
        b["entry"] = Value::Array(entries);
    }
    b
}

/// The response to a read or write of `rec`: body (unless `minimal`), ETag,
/// Last-Modified and, for writes, Location.
fn record_response(
    status: StatusCode,
    rec: &Record,
    minimal: bool,
    location: Option<&str>,
) -> Resp {
    let mut resp = if minimal {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = status;
        r
    } else {
        crate::http::bytes_response(status, crate::http::FHIR_JSON, rec.canonical.clone())
    };
    let h = resp.headers_mut();
    h.insert(ETAG, etag(rec.version));
    if let Ok(v) = HeaderValue::from_str(&query::http_date(rec.last_updated)) {
        h.insert(LAST_MODIFIED, v);
    }
    if let Some(l) = location.and_then(|l| HeaderValue::from_str(l).ok()) {
        h.insert(LOCATION, l);
    }
    resp
}

/// 201 (created) or 200 with Location, ETag and the representation unless the client
/// prefers `return=minimal`.
fn write_response(r: &Req, w: &WriteResult) -> Resp {
    let rec = &w.record;
    let loc = format!(
        "{}/{}/{}/_history/{}",
        r.base, rec.resource_type, rec.id, rec.version
    );
    let status = if w.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    record_response(status, rec, r.minimal(), Some(&loc))
}
