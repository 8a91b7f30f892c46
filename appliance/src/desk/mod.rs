//! The front-desk web page (issue #6): a receptionist's screen that shows the pending
//! consent request in plain words, follows the reader's progress and shows the result, and
//! lets a patient tap their card to list who accessed their record.
//!
//! The page is four embedded static files (HTML, CSS, JavaScript, an SVG icon; no build step, no
//! external resource) served at `GET /desk` (also `/desk/`), `/desk/desk.css` and
//! `/desk/desk.js` (and its icon, `/desk/icon.svg`). It talks only to the JSON API of [`crate::consent::desk`]
//! (`/desk/api/*`). Every response carries a strict Content-Security-Policy
//! ([`CSP`]): scripts, styles and fetches from this origin only, no inline code, no frames,
//! no forms; the script builds the page with `textContent` only, never HTML strings.
//!
//! Like the API, the page answers only loopback callers (the kiosk browser runs on the
//! appliance itself).

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::{Method, Response, StatusCode};
use std::net::SocketAddr;

/// The Content-Security-Policy of every page response.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'";

const PAGE: &str = include_str!("page.html");
const STYLE: &str = include_str!("desk.css");
const SCRIPT: &str = include_str!("desk.js");
const ICON: &str = include_str!("icon.svg");

/// Whether `path` names the page or one of its assets (not the JSON API).
pub fn is_page_path(path: &str) -> bool {
    path == "/desk" || (path.starts_with("/desk/") && !path.starts_with("/desk/api/"))
}

/// The asset at `path`: its content type and bytes.
fn asset(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "/desk" | "/desk/" | "/desk/index.html" => Some(("text/html; charset=utf-8", PAGE)),
        "/desk/desk.css" => Some(("text/css; charset=utf-8", STYLE)),
        "/desk/desk.js" => Some(("text/javascript; charset=utf-8", SCRIPT)),
        "/desk/icon.svg" => Some(("image/svg+xml", ICON)),
        _ => None,
    }
}

/// Answers a request for the page or an asset (`GET` or `HEAD`, loopback callers only).
pub fn serve(method: &Method, path: &str, peer: SocketAddr) -> Response<Full<Bytes>> {
    if !peer.ip().is_loopback() {
        return secured(crate::http::outcome(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the front-desk page answers only callers on the appliance itself",
        ));
    }
    let Some((content_type, body)) = asset(path) else {
        return secured(crate::http::outcome(
            StatusCode::NOT_FOUND,
            "not-found",
            &format!("nothing is served at {path}"),
        ));
    };
    if method != Method::GET && method != Method::HEAD {
        let mut r = crate::http::outcome(
            StatusCode::METHOD_NOT_ALLOWED,
            "not-supported",
            &format!("{method} is not allowed on {path}"),
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return secured(r);
    }
    let bytes = if method == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from_static(body.as_bytes())
    };
    let mut r = Response::new(Full::new(bytes));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    secured(r)
}

/// Adds the security headers every front-desk response carries.
fn secured(mut r: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    let h = r.headers_mut();
    for (name, value) in [
        ("content-security-policy", CSP),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
    ] {
        h.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> SocketAddr {
        "127.0.0.1:5000".parse().unwrap()
    }

    #[test]
    fn page_and_assets_with_a_strict_policy() {
        for (path, ty) in [
            ("/desk", "text/html"),
            ("/desk/", "text/html"),
            ("/desk/desk.css", "text/css"),
            ("/desk/desk.js", "text/javascript"),
            ("/desk/icon.svg", "image/svg+xml"),
        ] {
            assert!(is_page_path(path));
            let r = serve(&Method::GET, path, local());
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            let h = r.headers();
            assert!(h[CONTENT_TYPE].to_str().unwrap().starts_with(ty), "{path}");
            assert_eq!(h["content-security-policy"], CSP);
            assert_eq!(h["x-content-type-options"], "nosniff");
        }
        assert!(!is_page_path("/desk/api/requests"));
        assert!(!is_page_path("/desktop"));
        assert_eq!(
            serve(&Method::GET, "/desk/nope.js", local()).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            serve(&Method::POST, "/desk", local()).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        let remote: SocketAddr = "10.0.0.7:5000".parse().unwrap();
        assert_eq!(
            serve(&Method::GET, "/desk", remote).status(),
            StatusCode::FORBIDDEN
        );
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere_and_has_no_inline_code() {
        // Nothing external, no inline script or style (the CSP would block them anyway).
        for text in [PAGE, STYLE, SCRIPT] {
            // (The icon's only URL is its XML namespace.)
            assert!(!text.contains("http://") && !text.contains("https://"));
        }
        assert!(!PAGE.contains("<style"));
        assert!(!PAGE.contains(" style="));
        let handler = PAGE.split(" on").skip(1).any(|rest| {
            let name: String = rest.chars().take_while(char::is_ascii_alphabetic).collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        });
        assert!(!handler, "no inline event handlers");
        assert_eq!(PAGE.matches("<script").count(), 1);
        assert!(PAGE.contains(r#"<script src="/desk/desk.js" defer></script>"#));
        assert!(!SCRIPT.contains("innerHTML") && !SCRIPT.contains("eval("));
    }
}
