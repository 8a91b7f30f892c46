//! Client public keys from JWKs, and JWS signature verification for the algorithms SMART
//! Backend Services clients use: EdDSA (Ed25519), ES256, ES384, RS256, RS384.
//!
//! ECDSA signatures are the JWS raw `r || s` form (RFC 7518 §3.4); high-`s` signatures are
//! normalised before verification (ECDSA is malleable and JWS does not forbid high `s`; replay
//! protection rests on `jti`, not on signature bytes). RSA keys must be 2048–4096 bits.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use sha2::Digest as _;

/// The JWS algorithms accepted for client assertions.
pub const ALGORITHMS: [&str; 5] = ["EdDSA", "ES256", "ES384", "RS256", "RS384"];

/// Smallest RSA modulus accepted, in bits.
const RSA_MIN_BITS: usize = 2048;

/// A client's public key, ready to verify.
#[derive(Clone)]
pub(crate) enum ClientKey {
    Ed25519(hexa_crypto::keys::PublicKey),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    Rsa(rsa::RsaPublicKey),
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ed25519(_) => "Ed25519",
            Self::P256(_) => "P-256",
            Self::P384(_) => "P-384",
            Self::Rsa(_) => "RSA",
        })
    }
}

/// A registered key: its kid, key, and the one `alg` it is restricted to, if the JWK said.
#[derive(Debug, Clone)]
pub(crate) struct Jwk {
    pub(crate) kid: String,
    pub(crate) key: ClientKey,
    pub(crate) alg: Option<String>,
}

fn b64(v: &serde_json::Map<String, Value>, name: &'static str) -> Result<Vec<u8>, String> {
    let s = v
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("JWK lacks \"{name}\""))?;
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| format!("JWK \"{name}\" is not base64url"))
}

/// RFC 7638 thumbprint of the required members, given in lexicographic order.
fn thumbprint(members: &[(&str, &str)]) -> String {
    let mut obj = serde_json::Map::new();
    for (k, v) in members {
        obj.insert((*k).to_owned(), Value::String((*v).to_owned()));
    }
    // serde_json with preserve_order keeps insertion order, which is lexicographic here.
    let canonical = Value::Object(obj).to_string();
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(canonical.as_bytes()))
}

/// Parses a public JWK; refuses private members, unknown key types and curves, `use` other
/// than `sig`, and an `alg` outside [`ALGORITHMS`] or not matching the key type. Without a
/// `kid` the RFC 7638 thumbprint becomes the kid.
pub(crate) fn parse_jwk(v: &Value) -> Result<Jwk, String> {
    let obj = v.as_object().ok_or("JWK is not a JSON object")?;
    for private in ["d", "p", "q", "dp", "dq", "qi", "oth", "k"] {
        if obj.contains_key(private) {
            return Err(format!("JWK contains private key material \"{private}\""));
        }
    }
    if let Some(u) = obj.get("use")
        && u.as_str() != Some("sig")
    {
        return Err("JWK \"use\" must be \"sig\"".into());
    }
    let alg = match obj.get("alg") {
        None => None,
        Some(Value::String(a)) if ALGORITHMS.contains(&a.as_str()) => Some(a.clone()),
        Some(_) => return Err(format!("JWK \"alg\" must be one of {ALGORITHMS:?}")),
    };
    let kid = match obj.get("kid") {
        None => None,
        Some(Value::String(k)) if !k.is_empty() && k.len() <= 256 => Some(k.clone()),
        Some(_) => return Err("JWK \"kid\" must be a non-empty string of at most 256".into()),
    };
    let kty = obj.get("kty").and_then(Value::as_str).unwrap_or("");
    let crv = obj.get("crv").and_then(Value::as_str).unwrap_or("");
    let str_of = |name: &str| obj.get(name).and_then(Value::as_str).unwrap_or("");
    let alg_ok = |allowed: &[&str]| alg.as_deref().is_none_or(|a| allowed.contains(&a));
    let (key, thumb) = match (kty, crv) {
        ("OKP", "Ed25519") => {
            if !alg_ok(&["EdDSA"]) {
                return Err("an Ed25519 key can only be used with EdDSA".into());
            }
            // hexa_crypto insists a kid be its thumbprint; clients pick their own kids.
            let mut bare = obj.clone();
            bare.remove("kid");
            bare.remove("alg");
            let k = hexa_crypto::keys::PublicKey::from_jwk(&Value::Object(bare))
                .map_err(|e| e.to_string())?;
            let t = k.kid();
            (ClientKey::Ed25519(k), t)
        }
        ("EC", "P-256" | "P-384") => {
            let (len, algs) = if crv == "P-256" {
                (32, ["ES256"])
            } else {
                (48, ["ES384"])
            };
            if !alg_ok(&algs) {
                return Err(format!("a {crv} key can only be used with {}", algs[0]));
            }
            let (x, y) = (b64(obj, "x")?, b64(obj, "y")?);
            if x.len() != len || y.len() != len {
                return Err(format!("{crv} \"x\" and \"y\" must be {len} bytes"));
            }
            let mut sec1 = Vec::with_capacity(1 + 2 * len);
            sec1.push(4);
            sec1.extend_from_slice(&x);
            sec1.extend_from_slice(&y);
            let key = if len == 32 {
                ClientKey::P256(
                    p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
                        .map_err(|_| "not a valid P-256 point")?,
                )
            } else {
                ClientKey::P384(
                    p384::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
                        .map_err(|_| "not a valid P-384 point")?,
                )
            };
            let t = thumbprint(&[
                ("crv", crv),
                ("kty", "EC"),
                ("x", str_of("x")),
                ("y", str_of("y")),
            ]);
            (key, t)
        }
        ("RSA", _) => {
            if !alg_ok(&["RS256", "RS384"]) {
                return Err("an RSA key can only be used with RS256 or RS384".into());
            }
            let (n, e) = (b64(obj, "n")?, b64(obj, "e")?);
            if n.first() == Some(&0) || e.first() == Some(&0) {
                return Err("RSA \"n\" and \"e\" must be minimal big-endian integers".into());
            }
            let bits = n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize);
            if bits < RSA_MIN_BITS {
                return Err(format!("RSA keys must have at least {RSA_MIN_BITS} bits"));
            }
            let key = rsa_public_key(&n, &e)?;
            let t = thumbprint(&[("e", str_of("e")), ("kty", "RSA"), ("n", str_of("n"))]);
            (ClientKey::Rsa(key), t)
        }
        _ => {
            return Err("JWK must be OKP/Ed25519, EC/P-256, EC/P-384 or RSA".into());
        }
    };
    Ok(Jwk {
        kid: kid.unwrap_or(thumb),
        key,
        alg,
    })
}

fn rsa_public_key(n: &[u8], e: &[u8]) -> Result<rsa::RsaPublicKey, String> {
    let n = rsa::BoxedUint::from_be_slice_vartime(n);
    let e = rsa::BoxedUint::from_be_slice_vartime(e);
    rsa::RsaPublicKey::new(n, e).map_err(|e| format!("not a valid RSA public key: {e}"))
}

impl ClientKey {
    /// Whether this key can verify `alg`.
    pub(crate) fn supports(&self, alg: &str) -> bool {
        matches!(
            (self, alg),
            (Self::Ed25519(_), "EdDSA")
                | (Self::P256(_), "ES256")
                | (Self::P384(_), "ES384")
                | (Self::Rsa(_), "RS256" | "RS384")
        )
    }

    /// Verifies a JWS signature over `msg` (the ASCII `header.payload`) with `alg`.
    pub(crate) fn verify(&self, alg: &str, msg: &[u8], sig: &[u8]) -> bool {
        use p256::ecdsa::signature::Verifier as _;
        match (self, alg) {
            (Self::Ed25519(k), "EdDSA") => k.verify_strict(msg, sig).is_ok(),
            (Self::P256(k), "ES256") => p256::ecdsa::Signature::from_slice(sig)
                .map(|s| s.normalize_s())
                .is_ok_and(|s| k.verify(msg, &s).is_ok()),
            (Self::P384(k), "ES384") => p384::ecdsa::Signature::from_slice(sig)
                .map(|s| s.normalize_s())
                .is_ok_and(|s| k.verify(msg, &s).is_ok()),
            (Self::Rsa(k), "RS256") => k
                .verify(
                    rsa::pkcs1v15::Pkcs1v15Sign::new::<sha2::Sha256>(),
                    &sha2::Sha256::digest(msg),
                    sig,
                )
                .is_ok(),
            (Self::Rsa(k), "RS384") => k
                .verify(
                    rsa::pkcs1v15::Pkcs1v15Sign::new::<sha2::Sha384>(),
                    &sha2::Sha384::digest(msg),
                    sig,
                )
                .is_ok(),
            _ => false,
        }
    }
}

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), before the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Converts a PEM public key (`PUBLIC KEY`: Ed25519, P-256, P-384 or RSA SubjectPublicKeyInfo;
/// or `RSA PUBLIC KEY`: PKCS#1) into a public JWK that [`parse_jwk`] accepts.
pub(crate) fn jwk_from_pem(pem: &str) -> Result<Value, String> {
    use base64::engine::general_purpose::STANDARD;
    use p256::pkcs8::DecodePublicKey as _;
    use rsa::pkcs1::DecodeRsaPublicKey as _;
    use rsa::traits::PublicKeyParts as _;

    let text = pem.trim();
    let (label, rest) = text
        .strip_prefix("-----BEGIN ")
        .and_then(|r| r.split_once("-----"))
        .ok_or("not a PEM document")?;
    let end = format!("-----END {label}-----");
    let body = rest
        .trim()
        .strip_suffix(end.as_str())
        .ok_or("PEM END line missing or mismatched")?;
    let b64body: String = body.split_whitespace().collect();
    let der = STANDARD
        .decode(b64body)
        .map_err(|_| "PEM body is not base64")?;
    let ec = |crv: &str, point: &[u8], len: usize| {
        serde_json::json!({
            "kty": "EC", "crv": crv,
            "x": URL_SAFE_NO_PAD.encode(&point[1..1 + len]),
            "y": URL_SAFE_NO_PAD.encode(&point[1 + len..1 + 2 * len]),
        })
    };
    let rsa_jwk = |k: &rsa::RsaPublicKey| {
        serde_json::json!({
            "kty": "RSA",
            "n": URL_SAFE_NO_PAD.encode(k.n().to_be_bytes_trimmed_vartime()),
            "e": URL_SAFE_NO_PAD.encode(k.e().to_be_bytes_trimmed_vartime()),
        })
    };
    let jwk = match label {
        "RSA PUBLIC KEY" => rsa_jwk(
            &rsa::RsaPublicKey::from_pkcs1_der(&der).map_err(|_| "not a PKCS#1 RSA public key")?,
        ),
        "PUBLIC KEY" => {
            if der.len() == 44 && der[..12] == ED25519_SPKI_PREFIX {
                serde_json::json!({
                    "kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(&der[12..]),
                })
            } else if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_der(&der) {
                ec("P-256", k.to_sec1_point(false).as_bytes(), 32)
            } else if let Ok(k) = p384::ecdsa::VerifyingKey::from_public_key_der(&der) {
                ec("P-384", k.to_sec1_point(false).as_bytes(), 48)
            } else if let Ok(k) = rsa::RsaPublicKey::from_public_key_der(&der) {
                rsa_jwk(&k)
            } else {
                return Err("PUBLIC KEY is not an Ed25519, P-256, P-384 or RSA key".into());
            }
        }
        other => return Err(format!("PEM label {other:?}: expected PUBLIC KEY")),
    };
    // Validate exactly as a registered JWK would be.
    parse_jwk(&jwk)?;
    Ok(jwk)
}
