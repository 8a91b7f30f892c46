//! The control API of the simulated readers, for demos and tests:
//!
//! | request | effect |
//! | --- | --- |
//! | `POST /sim/cards` `{"model": "ed25519" \| "es256-only", "pin": "1234"}` (all optional) | a new virtual FIDO2 card; 201 `{"card": ID}` |
//! | `GET /sim/cards` | the virtual cards and which one is on the reader |
//! | `POST /sim/reader/present` `{"card": ID}` | places the card on the reader |
//! | `POST /sim/reader/lift` | lifts it |
//! | `POST /sim/fingerprint/place` `{"template": N}` or `{"unknown": true}` | a finger enrolled in slot N, or one the module does not know |
//! | `POST /sim/fingerprint/lift` | lifts the finger |
//!
//! It exists only while the readers are simulated (404 otherwise) and answers only callers
//! on the loopback interface (403 otherwise).

use crate::devices::SimHandles;
use crate::http::{json_response, outcome};
use bytes::Bytes;
use hexa_hal::sim::{CardConfig, CardModel};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;
use std::net::SocketAddr;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NewCard {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    pin: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Present {
    card: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Place {
    #[serde(default)]
    template: Option<u16>,
    #[serde(default)]
    unknown: bool,
}

fn no_content() -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

fn bad_request(msg: &str) -> Response<Full<Bytes>> {
    outcome(StatusCode::BAD_REQUEST, "invalid", msg)
}

/// Parses a JSON body (empty body = `default`).
fn parse<T: for<'de> Deserialize<'de>>(body: &[u8], default: Option<T>) -> Result<T, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return default.ok_or_else(|| "a JSON body is required".to_string());
    }
    serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))
}

/// Answers one `/sim/*` request.
pub async fn route(
    req: Request<Incoming>,
    peer: SocketAddr,
    sim: Option<&SimHandles>,
    max_body: usize,
) -> Response<Full<Bytes>> {
    let Some(sim) = sim else {
        return outcome(
            StatusCode::NOT_FOUND,
            "not-found",
            "the simulator control API exists only when the readers are simulated",
        );
    };
    if !peer.ip().is_loopback() {
        return outcome(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the simulator control API answers only local callers",
        );
    }
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let body = match Limited::new(req.into_body(), max_body.min(4096))
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return outcome(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-costly",
                "simulator requests are at most 4096 bytes",
            );
        }
    };
    match (method.clone(), path.as_str()) {
        (Method::POST, "/sim/cards") => {
            let req: NewCard = match parse(&body, Some(NewCard::default())) {
                Ok(r) => r,
                Err(e) => return bad_request(&e),
            };
            let model = match req.model.as_deref() {
                None | Some("ed25519") => CardModel::Ed25519,
                Some("es256-only") => CardModel::Es256Only,
                Some(other) => {
                    return bad_request(&format!(
                        "unknown card model {other:?}: use \"ed25519\" or \"es256-only\""
                    ));
                }
            };
            if req
                .pin
                .as_ref()
                .is_some_and(|p| p.len() < 4 || p.len() > 63)
            {
                return bad_request("a card PIN has 4 to 63 characters");
            }
            match sim.nfc.create_card(&CardConfig {
                model,
                pin: req.pin,
            }) {
                Ok(id) => json_response(
                    StatusCode::CREATED,
                    "application/json",
                    &json!({"card": id}),
                ),
                Err(e) => outcome(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "exception",
                    &e.to_string(),
                ),
            }
        }
        (Method::GET, "/sim/cards") => json_response(
            StatusCode::OK,
            "application/json",
            &json!({"cards": sim.nfc.cards(), "present": sim.nfc.present_card()}),
        ),
        (Method::POST, "/sim/reader/present") => {
            let req: Present = match parse(&body, None) {
                Ok(r) => r,
                Err(e) => return bad_request(&e),
            };
            match sim.nfc.present(req.card) {
                Ok(()) => no_content(),
                Err(e) => outcome(StatusCode::NOT_FOUND, "not-found", &e.to_string()),
            }
        }
        (Method::POST, "/sim/reader/lift") => {
            sim.nfc.lift();
            no_content()
        }
        (Method::POST, "/sim/fingerprint/place") => {
            let req: Place = match parse(&body, None) {
                Ok(r) => r,
                Err(e) => return bad_request(&e),
            };
            match (req.template, req.unknown) {
                (Some(slot), false) => {
                    if sim.fingerprint.place_enrolled(slot) {
                        no_content()
                    } else {
                        outcome(
                            StatusCode::NOT_FOUND,
                            "not-found",
                            &format!("no finger is enrolled in template slot {slot}"),
                        )
                    }
                }
                (None, true) => {
                    sim.fingerprint.place_unknown();
                    no_content()
                }
                _ => bad_request("give exactly one of {\"template\": N} or {\"unknown\": true}"),
            }
        }
        (Method::POST, "/sim/fingerprint/lift") => {
            sim.fingerprint.lift_finger();
            no_content()
        }
        (
            _,
            "/sim/cards"
            | "/sim/reader/present"
            | "/sim/reader/lift"
            | "/sim/fingerprint/place"
            | "/sim/fingerprint/lift",
        ) => outcome(
            StatusCode::METHOD_NOT_ALLOWED,
            "not-supported",
            &format!("{method} is not allowed on {path}"),
        ),
        _ => outcome(
            StatusCode::NOT_FOUND,
            "not-found",
            &format!("nothing is served at {path}"),
        ),
    }
}
