//! Access tokens: `hexa1.<base64url(JSON claims)>.<base64url(HMAC-SHA256)>`.
//!
//! The HMAC key is 32 random bytes made when the authenticator opens and never stored, so
//! every token dies with a restart. The claims carry the issuer, client, facility, granted
//! scope, expiry and a random id; they are not secret but cannot be altered.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::Mac as _;
use zeroize::Zeroizing;

use super::AuthError;

const PREFIX: &str = "hexa1.";
/// Longest token looked at (a token is a few hundred bytes).
const MAX_TOKEN_LEN: usize = 8 * 1024;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// What an access token says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Claims {
    #[serde(rename = "iss")]
    pub(crate) issuer: String,
    #[serde(rename = "cid")]
    pub(crate) client_id: String,
    #[serde(rename = "fac")]
    pub(crate) facility_id: String,
    pub(crate) scope: String,
    pub(crate) exp: u64,
    /// The client registration's generation at issuance.
    #[serde(rename = "gen")]
    pub(crate) generation: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Wire {
    #[serde(flatten)]
    claims: Claims,
    /// Random token id: two tokens are never equal.
    jti: String,
}

/// The key tokens are signed with.
pub(crate) struct TokenKey(Zeroizing<[u8; 32]>);

impl TokenKey {
    /// A fresh random key from the OS RNG.
    pub(crate) fn generate() -> Result<Self, AuthError> {
        let mut k = Zeroizing::new([0u8; 32]);
        getrandom::fill(k.as_mut()).map_err(|e| AuthError::Storage(format!("OS RNG: {e}")))?;
        Ok(Self(k))
    }

    fn mac(&self, data: &[u8]) -> HmacSha256 {
        // HMAC accepts keys of any length.
        let mut m = <HmacSha256 as hmac::KeyInit>::new_from_slice(self.0.as_ref())
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        m.update(data);
        m
    }

    /// Signs `claims` into a token.
    pub(crate) fn issue(&self, claims: &Claims) -> Result<String, AuthError> {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(|e| AuthError::Storage(format!("OS RNG: {e}")))?;
        let wire = Wire {
            claims: claims.clone(),
            jti: URL_SAFE_NO_PAD.encode(id),
        };
        let payload = serde_json::to_vec(&wire).map_err(|e| AuthError::Storage(e.to_string()))?;
        let mut tok = String::from(PREFIX);
        URL_SAFE_NO_PAD.encode_string(payload, &mut tok);
        let tag = self.mac(tok.as_bytes()).finalize().into_bytes();
        tok.push('.');
        URL_SAFE_NO_PAD.encode_string(tag, &mut tok);
        Ok(tok)
    }

    /// Checks a token's MAC (in constant time), issuer and expiry.
    pub(crate) fn verify(&self, tok: &str, issuer: &str, now: u64) -> Result<Claims, AuthError> {
        let malformed = AuthError::InvalidToken("malformed token");
        if tok.len() > MAX_TOKEN_LEN || !tok.starts_with(PREFIX) {
            return Err(malformed);
        }
        let (signed, tag64) = tok.rsplit_once('.').ok_or(malformed.clone())?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag64)
            .map_err(|_| malformed.clone())?;
        self.mac(signed.as_bytes())
            .verify_slice(&tag)
            .map_err(|_| AuthError::InvalidToken("bad token signature"))?;
        let payload = URL_SAFE_NO_PAD
            .decode(&signed[PREFIX.len()..])
            .map_err(|_| malformed.clone())?;
        let wire: Wire = serde_json::from_slice(&payload).map_err(|_| malformed)?;
        if wire.claims.issuer != issuer {
            return Err(AuthError::InvalidToken("token from another issuer"));
        }
        if wire.claims.exp <= now {
            return Err(AuthError::InvalidToken("token has expired"));
        }
        Ok(wire.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            issuer: "iss".into(),
            client_id: "c".into(),
            facility_id: "f".into(),
            scope: "system/*.rs".into(),
            exp: 1000,
            generation: 7,
        }
    }

    #[test]
    fn round_trip_tamper_expiry_key() {
        let k = TokenKey::generate().unwrap();
        let t = k.issue(&claims()).unwrap();
        assert_ne!(t, k.issue(&claims()).unwrap(), "token ids are random");
        assert_eq!(k.verify(&t, "iss", 999).unwrap(), claims());
        assert!(k.verify(&t, "iss", 1000).is_err(), "expired");
        assert!(k.verify(&t, "other", 999).is_err(), "issuer");
        let other = TokenKey::generate().unwrap();
        assert!(other.verify(&t, "iss", 999).is_err(), "other key (restart)");
        // Flip one character of the payload.
        let mut b = t.clone().into_bytes();
        let i = PREFIX.len() + 3;
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(b).unwrap();
        assert_eq!(
            k.verify(&tampered, "iss", 999),
            Err(AuthError::InvalidToken("bad token signature"))
        );
        assert!(k.verify("", "iss", 0).is_err());
        assert!(k.verify("hexa1.", "iss", 0).is_err());
    }
}
