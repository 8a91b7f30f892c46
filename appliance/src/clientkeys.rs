//! Integrator key material for the `hexa client` commands: reading a client's public key
//! from a JWK, a JWK Set or a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) file; generating an
//! Ed25519 key pair whose private JWK only the caller can read; and signing the RFC 7523
//! client assertion a registered client exchanges at `POST /fhir/token` (so a README
//! session can go from `serve` to a created Patient with curl alone).
//!
//! PEM parsing is deliberately narrow: Ed25519, P-256 and P-384 keys are recognised by
//! their fixed SubjectPublicKeyInfo prefixes, RSA keys by a bounded DER walk. Everything
//! else is refused with a clear error. The registration itself re-validates the JWKs
//! (`auth::Authenticator::register_client`).

use std::io::Write as _;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hexa_crypto::keys::SigningKey;
use serde_json::{Value, json};

/// Largest key file read (a JWKS of a few RSA keys is far below).
pub const MAX_KEY_FILE: u64 = 64 * 1024;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ClientKeyError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key file is not a JWK, a JWK Set or a PEM public key we know.
    #[error("{0}")]
    Format(String),
    /// The private key file exists already (never overwritten).
    #[error("{0} exists already; choose another file or remove it")]
    Exists(String),
}

fn fmt_err(m: impl Into<String>) -> ClientKeyError {
    ClientKeyError::Format(m.into())
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ClientKeyError + '_ {
    move |source| ClientKeyError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Reads `path` (at most [`MAX_KEY_FILE`] bytes) and returns the public key(s) it holds
/// as a JWK Set.
pub fn read_public_keys(path: &Path) -> Result<Value, ClientKeyError> {
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    if meta.len() > MAX_KEY_FILE {
        return Err(fmt_err(format!(
            "{} is larger than {MAX_KEY_FILE} bytes: not a key file",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    public_keys_from_text(&text)
}

/// The JWK Set of a JWK, JWK Set or PEM `PUBLIC KEY` text. Private members (`d`, `p`,
/// `q`, ...) are refused: a registration holds public keys only.
pub fn public_keys_from_text(text: &str) -> Result<Value, ClientKeyError> {
    let t = text.trim();
    if t.starts_with("-----BEGIN") {
        let jwk = jwk_from_pem(t)?;
        return Ok(json!({"keys": [jwk]}));
    }
    let v: Value = serde_json::from_str(t)
        .map_err(|e| fmt_err(format!("not JSON and not a PEM public key: {e}")))?;
    let keys = match v.get("keys") {
        Some(Value::Array(keys)) => keys.clone(),
        Some(_) => return Err(fmt_err("`keys` of a JWK Set must be an array")),
        None if v.get("kty").is_some() => vec![v],
        None => {
            return Err(fmt_err(
                "neither a JWK (no `kty`) nor a JWK Set (no `keys`)",
            ));
        }
    };
    for k in &keys {
        for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
            if k.get(private).is_some() {
                return Err(fmt_err(format!(
                    "the key file holds a private key (member `{private}`): register the public key only"
                )));
            }
        }
    }
    Ok(json!({"keys": keys}))
}

const ED25519_SPKI: &[u8] = &[
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
const P256_SPKI: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04,
];
const P384_SPKI: &[u8] = &[
    0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b,
    0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00, 0x04,
];
const RSA_OID: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// The public JWK of a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) block.
pub fn jwk_from_pem(pem: &str) -> Result<Value, ClientKeyError> {
    let mut lines = pem.lines().map(str::trim).filter(|l| !l.is_empty());
    if lines.next() != Some("-----BEGIN PUBLIC KEY-----") {
        return Err(fmt_err(
            "only `-----BEGIN PUBLIC KEY-----` (SubjectPublicKeyInfo) PEM files are accepted",
        ));
    }
    let mut b64 = String::new();
    let mut ended = false;
    for l in lines {
        if l == "-----END PUBLIC KEY-----" {
            ended = true;
            break;
        }
        b64.push_str(l);
    }
    if !ended {
        return Err(fmt_err(
            "the PEM block has no `-----END PUBLIC KEY-----` line",
        ));
    }
    let der = STANDARD
        .decode(b64.as_bytes())
        .map_err(|e| fmt_err(format!("the PEM body is not base64: {e}")))?;
    let b64u = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    if let Some(x) = der.strip_prefix(ED25519_SPKI)
        && x.len() == 32
    {
        return Ok(json!({"kty": "OKP", "crv": "Ed25519", "x": b64u(x)}));
    }
    if let Some(xy) = der.strip_prefix(P256_SPKI)
        && xy.len() == 64
    {
        return Ok(
            json!({"kty": "EC", "crv": "P-256", "x": b64u(&xy[..32]), "y": b64u(&xy[32..])}),
        );
    }
    if let Some(xy) = der.strip_prefix(P384_SPKI)
        && xy.len() == 96
    {
        return Ok(
            json!({"kty": "EC", "crv": "P-384", "x": b64u(&xy[..48]), "y": b64u(&xy[48..])}),
        );
    }
    let (n, e) = rsa_spki(&der).ok_or_else(|| {
        fmt_err("the PEM public key is not an Ed25519, P-256, P-384 or RSA SubjectPublicKeyInfo")
    })?;
    Ok(json!({"kty": "RSA", "n": b64u(n), "e": b64u(e)}))
}

/// One DER element: (tag, contents, rest). Definite lengths of up to 4 bytes only.
fn der(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&l0, mut b) = b.split_first()?;
    let len = if l0 < 0x80 {
        usize::from(l0)
    } else {
        let n = usize::from(l0 & 0x7f);
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let mut len = 0usize;
        for &x in &b[..n] {
            len = (len << 8) | usize::from(x);
        }
        b = &b[n..];
        len
    };
    if b.len() < len {
        return None;
    }
    Some((tag, &b[..len], &b[len..]))
}

/// Strips the sign byte DER puts before a positive integer whose top bit is set.
fn unsigned(i: &[u8]) -> &[u8] {
    match i {
        [0, rest @ ..] if !rest.is_empty() => rest,
        _ => i,
    }
}

/// (n, e) of an RSA SubjectPublicKeyInfo.
fn rsa_spki(d: &[u8]) -> Option<(&[u8], &[u8])> {
    let (0x30, spki, []) = der(d)? else {
        return None;
    };
    let (0x30, alg, rest) = der(spki)? else {
        return None;
    };
    let (0x06, oid, _) = der(alg)? else {
        return None;
    };
    if oid != RSA_OID {
        return None;
    }
    let (0x03, bits, []) = der(rest)? else {
        return None;
    };
    let (0, key) = bits.split_first()? else {
        return None;
    };
    let (0x30, seq, []) = der(key)? else {
        return None;
    };
    let (0x02, n, rest) = der(seq)? else {
        return None;
    };
    let (0x02, e, []) = der(rest)? else {
        return None;
    };
    let (n, e) = (unsigned(n), unsigned(e));
    // 2048 bits at least (the token endpoint refuses smaller keys too), 8192 at most.
    (256..=1024).contains(&n.len()).then_some((n, e))
}

/// Generates an Ed25519 key pair, writes its private JWK to `path` (created new, mode
/// 0600: only the caller can read it; an existing file is never overwritten) and returns
/// the public JWK Set to register.
pub fn generate_private_jwk(path: &Path) -> Result<Value, ClientKeyError> {
    let key = SigningKey::generate().map_err(|e| fmt_err(format!("key generation: {e}")))?;
    let mut public = key.public().to_jwk();
    let mut private = public.clone();
    private["d"] = json!(URL_SAFE_NO_PAD.encode(key.seed()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            ClientKeyError::Exists(path.display().to_string())
        } else {
            io_err(path)(e)
        }
    })?;
    let text = serde_json::to_string_pretty(&private).unwrap_or_default();
    f.write_all(text.as_bytes())
        .and_then(|()| f.write_all(b"\n"))
        .and_then(|()| f.sync_all())
        .map_err(io_err(path))?;
    if let Some(o) = public.as_object_mut() {
        o.remove("d");
    }
    Ok(json!({"keys": [public]}))
}

/// Reads a private Ed25519 JWK (as [`generate_private_jwk`] writes it).
pub fn read_private_jwk(path: &Path) -> Result<SigningKey, ClientKeyError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| fmt_err(format!("{} is not a JWK: {e}", path.display())))?;
    if v["kty"] != "OKP" || v["crv"] != "Ed25519" {
        return Err(fmt_err(
            "only Ed25519 private JWKs (kty OKP, crv Ed25519) are supported",
        ));
    }
    let d = v["d"]
        .as_str()
        .and_then(|d| URL_SAFE_NO_PAD.decode(d).ok())
        .and_then(|d| <[u8; 32]>::try_from(d).ok())
        .ok_or_else(|| fmt_err("the JWK has no 32-byte private member `d`"))?;
    let key = SigningKey::from_seed(&d);
    if let Some(x) = v["x"].as_str()
        && key.public().to_jwk()["x"] != x
    {
        return Err(fmt_err("the JWK's `x` does not belong to its `d`"));
    }
    Ok(key)
}

/// A signed RFC 7523 client assertion (`iss` = `sub` = `client_id`, `aud` = the token
/// URL, two minutes of validity from `now`, a random `jti`), alg EdDSA.
pub fn client_assertion(
    key: &SigningKey,
    client_id: &str,
    aud: &str,
    now: u64,
) -> Result<String, ClientKeyError> {
    let mut jti = [0u8; 16];
    getrandom::fill(&mut jti).map_err(|e| fmt_err(format!("randomness: {e}")))?;
    let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": key.kid()});
    let claims = json!({
        "iss": client_id, "sub": client_id, "aud": aud,
        "iat": now, "exp": now + 120, "jti": URL_SAFE_NO_PAD.encode(jti),
    });
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = key.sign(input.as_bytes());
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_ed25519_and_p256_become_jwks() {
        // `openssl genpkey -algorithm ed25519 | openssl pkey -pubout`
        let ed = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
        let jwks = public_keys_from_text(ed).unwrap();
        assert_eq!(jwks["keys"][0]["kty"], "OKP");
        assert_eq!(
            jwks["keys"][0]["x"],
            "Gb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE"
        );
        // RFC 7517 A.1's P-256 key as SPKI.
        let x = URL_SAFE_NO_PAD
            .decode("MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4")
            .unwrap();
        let y = URL_SAFE_NO_PAD
            .decode("4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM")
            .unwrap();
        let mut der = P256_SPKI.to_vec();
        der.extend_from_slice(&x);
        der.extend_from_slice(&y);
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----",
            STANDARD.encode(&der)
        );
        let jwk = jwk_from_pem(&pem).unwrap();
        assert_eq!(jwk["crv"], "P-256");
        assert_eq!(jwk["x"], "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4");
        assert_eq!(jwk["y"], "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM");
        // One byte short is refused, not misread.
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----",
            STANDARD.encode(&der[..der.len() - 1])
        );
        assert!(jwk_from_pem(&pem).is_err());
    }

    #[test]
    fn pem_rsa_is_walked_and_bounded() {
        // SPKI of a 2048-bit modulus of 0xC5 bytes and e = 65537, built by hand.
        let n = vec![0xc5u8; 256];
        let mut rsa = vec![0x02, 0x82, 0x01, 0x01, 0x00];
        rsa.extend_from_slice(&n);
        rsa.extend_from_slice(&[0x02, 0x03, 0x01, 0x00, 0x01]);
        let mut seq = vec![0x30, 0x82];
        seq.extend_from_slice(&(rsa.len() as u16).to_be_bytes());
        seq.extend_from_slice(&rsa);
        let mut bits = vec![0x03, 0x82];
        bits.extend_from_slice(&((seq.len() + 1) as u16).to_be_bytes());
        bits.push(0);
        bits.extend_from_slice(&seq);
        let alg = [
            0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05,
            0x00,
        ];
        let mut body = alg.to_vec();
        body.extend_from_slice(&bits);
        let mut spki = vec![0x30, 0x82];
        spki.extend_from_slice(&(body.len() as u16).to_be_bytes());
        spki.extend_from_slice(&body);
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----",
            STANDARD.encode(&spki)
        );
        let jwk = jwk_from_pem(&pem).unwrap();
        assert_eq!(jwk["kty"], "RSA");
        assert_eq!(jwk["e"], "AQAB");
        assert_eq!(
            URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap(),
            n
        );
        // Truncated DER is an error, never a panic.
        for cut in [1, 10, 100, spki.len() - 1] {
            assert!(rsa_spki(&spki[..cut]).is_none());
        }
    }

    #[test]
    fn private_members_are_refused_and_generated_keys_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("emr.jwk");
        let jwks = generate_private_jwk(&path).unwrap();
        assert!(jwks["keys"][0].get("d").is_none());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(
            generate_private_jwk(&path),
            Err(ClientKeyError::Exists(_))
        ));
        let private = std::fs::read_to_string(&path).unwrap();
        assert!(public_keys_from_text(&private).is_err());
        let key = read_private_jwk(&path).unwrap();
        assert_eq!(key.public().to_jwk()["x"], jwks["keys"][0]["x"]);
        let jwt = client_assertion(&key, "emr-1", "http://h/fhir/token", 1000).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        key.public()
            .verify_strict(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .unwrap();
    }
}
