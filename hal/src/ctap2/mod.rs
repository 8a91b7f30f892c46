//! FIDO2 CTAP 2.1 over NFC (ISO 7816-4 APDUs): SELECT of the FIDO applet,
//! authenticatorGetInfo, authenticatorMakeCredential (Ed25519 preferred, ES256 fallback),
//! authenticatorGetAssertion and clientPIN protocol 2, with CTAP status codes as typed errors.

pub mod cbor;
pub mod pin;

use ciborium::Value;
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::iso7816::{self, ApduTransport, Command, LengthMode};
use cbor::{
    AuthenticatorData, CborError, CoseKey, as_bytes, as_i64, as_map, get_int, get_text, int,
};
use pin::{KeyAgreement, PinError};

/// AID of the FIDO applet.
pub const FIDO_AID: [u8; 8] = [0xA0, 0x00, 0x00, 0x06, 0x47, 0x2F, 0x00, 0x01];
/// authenticatorMakeCredential.
pub const CMD_MAKE_CREDENTIAL: u8 = 0x01;
/// authenticatorGetAssertion.
pub const CMD_GET_ASSERTION: u8 = 0x02;
/// authenticatorGetInfo.
pub const CMD_GET_INFO: u8 = 0x04;
/// authenticatorClientPIN.
pub const CMD_CLIENT_PIN: u8 = 0x06;
/// clientPIN subcommand getPINRetries.
pub const PIN_GET_RETRIES: i64 = 0x01;
/// clientPIN subcommand getKeyAgreement.
pub const PIN_GET_KEY_AGREEMENT: i64 = 0x02;
/// clientPIN subcommand getPinUvAuthTokenUsingPinWithPermissions.
pub const PIN_GET_TOKEN_WITH_PERMISSIONS: i64 = 0x09;
/// pinUvAuthToken permission: makeCredential.
pub const PERMISSION_MC: i64 = 0x01;
/// pinUvAuthToken permission: getAssertion.
pub const PERMISSION_GA: i64 = 0x02;

/// A CTAP2 status code returned by the authenticator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtapStatus(pub u8);

impl CtapStatus {
    /// CTAP2_ERR_PIN_INVALID.
    pub const PIN_INVALID: CtapStatus = CtapStatus(0x31);
    /// CTAP2_ERR_PIN_BLOCKED.
    pub const PIN_BLOCKED: CtapStatus = CtapStatus(0x32);
    /// CTAP2_ERR_PIN_AUTH_INVALID.
    pub const PIN_AUTH_INVALID: CtapStatus = CtapStatus(0x33);
    /// CTAP2_ERR_PUAT_REQUIRED.
    pub const PUAT_REQUIRED: CtapStatus = CtapStatus(0x36);
    /// CTAP2_ERR_NO_CREDENTIALS.
    pub const NO_CREDENTIALS: CtapStatus = CtapStatus(0x2E);
    /// CTAP2_ERR_UNSUPPORTED_ALGORITHM.
    pub const UNSUPPORTED_ALGORITHM: CtapStatus = CtapStatus(0x26);

    /// Name of the status in the CTAP 2.1 specification, with what it means.
    pub fn description(self) -> &'static str {
        match self.0 {
            0x01 => "CTAP1_ERR_INVALID_COMMAND: the card does not know this command",
            0x02 => "CTAP1_ERR_INVALID_PARAMETER",
            0x03 => "CTAP1_ERR_INVALID_LENGTH",
            0x11 => "CTAP2_ERR_CBOR_UNEXPECTED_TYPE",
            0x12 => "CTAP2_ERR_INVALID_CBOR",
            0x14 => "CTAP2_ERR_MISSING_PARAMETER",
            0x19 => "CTAP2_ERR_CREDENTIAL_EXCLUDED: already enrolled on this card",
            0x26 => {
                "CTAP2_ERR_UNSUPPORTED_ALGORITHM: the card offers none of the requested algorithms"
            }
            0x27 => "CTAP2_ERR_OPERATION_DENIED",
            0x28 => "CTAP2_ERR_KEY_STORE_FULL: the card has no room for a new credential",
            0x2B => "CTAP2_ERR_UNSUPPORTED_OPTION",
            0x2C => "CTAP2_ERR_INVALID_OPTION",
            0x2E => {
                "CTAP2_ERR_NO_CREDENTIALS: this card holds no enrolled credential for the request"
            }
            0x2F => "CTAP2_ERR_USER_ACTION_TIMEOUT",
            0x30 => "CTAP2_ERR_NOT_ALLOWED",
            0x31 => "CTAP2_ERR_PIN_INVALID: wrong PIN",
            0x32 => "CTAP2_ERR_PIN_BLOCKED: too many wrong PINs, the card must be reset",
            0x33 => "CTAP2_ERR_PIN_AUTH_INVALID",
            0x34 => "CTAP2_ERR_PIN_AUTH_BLOCKED: remove and re-present the card",
            0x35 => "CTAP2_ERR_PIN_NOT_SET",
            0x36 => "CTAP2_ERR_PUAT_REQUIRED: the card requires its PIN",
            0x37 => "CTAP2_ERR_PIN_POLICY_VIOLATION",
            0x3B => "CTAP2_ERR_UP_REQUIRED",
            0x3C => "CTAP2_ERR_UV_BLOCKED",
            0x7F => "CTAP1_ERR_OTHER",
            _ => "unknown CTAP status",
        }
    }
}

/// CTAP errors; `E` is the APDU transport's error.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error<E> {
    /// APDU layer error (transport, status word, malformed response).
    #[error("APDU: {0}")]
    Apdu(#[from] iso7816::Error<E>),
    /// The authenticator returned a CTAP error status.
    #[error("card refused: {desc} ({code:#04x})", code = .0.0, desc = .0.description())]
    Ctap(CtapStatus),
    /// CBOR error in a response.
    #[error("{0}")]
    Cbor(#[from] CborError),
    /// PIN protocol crypto error.
    #[error("PIN protocol: {0}")]
    Pin(#[from] PinError),
    /// The card offers neither Ed25519 (-8) nor ES256 (-7).
    #[error("the card offers neither Ed25519 nor ES256 credentials")]
    NoSupportedAlgorithm,
    /// The card requires user verification and no PIN was given.
    #[error("the card requires its PIN and none was given")]
    PinRequired,
    /// The card answered something that breaks the protocol.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
}

/// authenticatorGetInfo response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Info {
    /// Supported versions ("FIDO_2_0", "FIDO_2_1", ...).
    pub versions: Vec<String>,
    /// Authenticator model.
    pub aaguid: Vec<u8>,
    /// Options (rk, up, uv, clientPin, alwaysUv, ...).
    pub options: Vec<(String, bool)>,
    /// Maximum message size.
    pub max_msg_size: Option<u64>,
    /// Supported PIN/UV auth protocols.
    pub pin_protocols: Vec<i64>,
    /// Supported COSE algorithms, when the card lists them.
    pub algorithms: Option<Vec<i64>>,
}

impl Info {
    /// An option's value.
    pub fn option(&self, name: &str) -> Option<bool> {
        self.options
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| *v)
    }

    /// Whether every credential operation needs user verification.
    pub fn always_uv(&self) -> bool {
        self.option("alwaysUv") == Some(true)
    }

    /// Whether a PIN is set on the card.
    pub fn pin_set(&self) -> bool {
        self.option("clientPin") == Some(true)
    }

    /// The pubKeyCredParams to send: Ed25519 preferred, ES256 where the card offers only
    /// that; `None` when the card lists neither.
    pub fn credential_algorithms(&self) -> Option<Vec<i64>> {
        match &self.algorithms {
            None => Some(vec![cbor::COSE_ALG_EDDSA, cbor::COSE_ALG_ES256]),
            Some(a) if a.contains(&cbor::COSE_ALG_EDDSA) => Some(vec![cbor::COSE_ALG_EDDSA]),
            Some(a) if a.contains(&cbor::COSE_ALG_ES256) => Some(vec![cbor::COSE_ALG_ES256]),
            Some(_) => None,
        }
    }

    /// Parses the response map.
    pub fn from_value(v: &Value) -> Result<Info, CborError> {
        let m = as_map(v)?;
        let mut info = Info::default();
        if let Some(vs) = get_int(m, 1).and_then(Value::as_array) {
            info.versions = vs
                .iter()
                .filter_map(|v| v.as_text().map(str::to_owned))
                .collect();
        }
        if let Some(a) = get_int(m, 3) {
            info.aaguid = as_bytes(a)?.to_vec();
        }
        if let Some(opts) = get_int(m, 4) {
            for (k, v) in as_map(opts)? {
                if let (Some(k), Some(v)) = (k.as_text(), v.as_bool()) {
                    info.options.push((k.to_owned(), v));
                }
            }
        }
        if let Some(s) = get_int(m, 5) {
            info.max_msg_size = u64::try_from(as_i64(s)?).ok();
        }
        if let Some(p) = get_int(m, 6).and_then(Value::as_array) {
            info.pin_protocols = p.iter().filter_map(|v| as_i64(v).ok()).collect();
        }
        if let Some(algs) = get_int(m, 10).and_then(Value::as_array) {
            let mut out = Vec::new();
            for a in algs {
                if let Ok(am) = as_map(a)
                    && let Some(alg) = get_text(am, "alg")
                {
                    out.push(as_i64(alg)?);
                }
            }
            info.algorithms = Some(out);
        }
        Ok(info)
    }
}

/// An enrolment request (authenticatorMakeCredential).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MakeCredentialRequest {
    /// RP ID naming the appliance.
    pub rp_id: String,
    /// User handle (opaque, e.g. the patient's registry ID).
    pub user_id: Vec<u8>,
    /// User name shown by authenticators with a display.
    pub user_name: String,
    /// Hash of the client data (the enrolment challenge).
    pub client_data_hash: [u8; 32],
    /// Card PIN, when the patient set one.
    pub pin: Option<String>,
}

/// Result of an enrolment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrollment {
    /// Credential ID to list in later assertions.
    pub credential_id: Vec<u8>,
    /// Credential public key as CBOR COSE key bytes.
    pub cose_key: Vec<u8>,
    /// COSE algorithm of the credential (-8 or -7).
    pub alg: i64,
    /// Authenticator data of the attestation.
    pub auth_data: Vec<u8>,
    /// Attestation statement format.
    pub fmt: String,
    /// Attestation statement, CBOR encoded.
    pub att_stmt: Vec<u8>,
}

/// An assertion request (authenticatorGetAssertion).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssertionRequest {
    /// RP ID the credentials were made for.
    pub rp_id: String,
    /// The consent challenge hash.
    pub client_data_hash: [u8; 32],
    /// Enrolled credential IDs acceptable for this patient.
    pub allow_credential_ids: Vec<Vec<u8>>,
    /// Card PIN, when needed.
    pub pin: Option<String>,
}

/// Result of an assertion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assertion {
    /// Credential that signed.
    pub credential_id: Vec<u8>,
    /// Authenticator data (signed, followed by the client data hash).
    pub auth_data: Vec<u8>,
    /// Signature: 64 raw bytes for Ed25519, ASN.1 DER for ES256.
    pub signature: Vec<u8>,
    /// Signature counter from the authenticator data.
    pub sign_count: u32,
}

/// A CTAP2 client over an APDU transport.
pub struct Ctap2<T> {
    transport: T,
    mode: LengthMode,
}

impl<T: ApduTransport> Ctap2<T> {
    /// Uses short APDUs with command chaining (what NFC authenticators accept most widely).
    pub fn new(transport: T) -> Self {
        Ctap2 {
            transport,
            mode: LengthMode::Short,
        }
    }

    /// Uses another APDU length encoding.
    pub fn with_length_mode(mut self, mode: LengthMode) -> Self {
        self.mode = mode;
        self
    }

    /// Gives the transport back.
    pub fn into_inner(self) -> T {
        self.transport
    }

    /// SELECTs the FIDO applet; returns its version string ("FIDO_2_0" or "U2F_V2").
    pub fn select(&mut self) -> Result<String, Error<T::Error>> {
        let cmd = Command::new(0x00, 0xA4, 0x04, 0x00)
            .with_data(FIDO_AID.to_vec())
            .with_le(256);
        let r = iso7816::transmit(&mut self.transport, &cmd, LengthMode::Short)?;
        String::from_utf8(r).map_err(|_| Error::Protocol("applet version is not text"))
    }

    /// Sends one CTAP command; returns the decoded CBOR response (Null when empty).
    pub fn request(&mut self, cmd: u8, params: Option<&Value>) -> Result<Value, Error<T::Error>> {
        let mut data = vec![cmd];
        if let Some(p) = params {
            data.extend_from_slice(&cbor::encode(p));
        }
        let le = if self.mode == LengthMode::Short {
            256
        } else {
            65_536
        };
        let apdu = Command::new(0x80, 0x10, 0x00, 0x00)
            .with_data(data)
            .with_le(le);
        let r = iso7816::transmit(&mut self.transport, &apdu, self.mode)?;
        let status = *r.first().ok_or(Error::Protocol("empty CTAP response"))?;
        if status != 0 {
            return Err(Error::Ctap(CtapStatus(status)));
        }
        if r.len() == 1 {
            return Ok(Value::Null);
        }
        Ok(cbor::decode(&r[1..])?)
    }

    /// authenticatorGetInfo.
    pub fn get_info(&mut self) -> Result<Info, Error<T::Error>> {
        let v = self.request(CMD_GET_INFO, None)?;
        Ok(Info::from_value(&v)?)
    }

    /// clientPIN protocol 2: key agreement, then getPinUvAuthTokenUsingPinWithPermissions.
    /// Returns the decrypted pinUvAuthToken.
    pub fn pin_token(
        &mut self,
        pin: &str,
        permissions: i64,
        rp_id: &str,
    ) -> Result<Vec<u8>, Error<T::Error>> {
        let ka_req = Value::Map(vec![(int(1), int(2)), (int(2), int(PIN_GET_KEY_AGREEMENT))]);
        let resp = self.request(CMD_CLIENT_PIN, Some(&ka_req))?;
        let card_key = CoseKey::from_value(
            get_int(as_map(&resp)?, 1).ok_or(Error::Protocol("no keyAgreement in response"))?,
        )?;
        let ours = KeyAgreement::generate()?;
        let shared = ours.shared_secret(&card_key)?;
        let pin_hash_enc = shared.encrypt(&pin::pin_hash(pin))?;
        let req = Value::Map(vec![
            (int(1), int(2)),
            (int(2), int(PIN_GET_TOKEN_WITH_PERMISSIONS)),
            (int(3), ours.public_cose().to_value()),
            (int(6), Value::Bytes(pin_hash_enc)),
            (int(9), int(permissions)),
            (int(10), Value::Text(rp_id.to_owned())),
        ]);
        let resp = self.request(CMD_CLIENT_PIN, Some(&req))?;
        let enc = as_bytes(
            get_int(as_map(&resp)?, 2).ok_or(Error::Protocol("no pinUvAuthToken in response"))?,
        )?;
        let token = shared.decrypt(enc)?;
        if token.len() != 32 {
            return Err(Error::Protocol("pinUvAuthToken is not 32 bytes"));
        }
        Ok(token)
    }

    fn uv_params(
        &mut self,
        info: &Info,
        pin: Option<&str>,
        permission: i64,
        rp_id: &str,
        client_data_hash: &[u8; 32],
    ) -> Result<Option<[u8; 32]>, Error<T::Error>> {
        match pin {
            Some(pin) if info.pin_set() => {
                if !info.pin_protocols.is_empty() && !info.pin_protocols.contains(&2) {
                    return Err(Error::Protocol("card lacks PIN/UV auth protocol 2"));
                }
                let token = self.pin_token(pin, permission, rp_id)?;
                Ok(Some(pin::authenticate(&token, client_data_hash)))
            }
            None if info.always_uv() => Err(Error::PinRequired),
            _ => Ok(None),
        }
    }

    /// Selects the applet, reads getInfo, obtains a PIN token when needed and makes a
    /// credential (Ed25519 preferred, ES256 fallback).
    pub fn enroll(&mut self, req: &MakeCredentialRequest) -> Result<Enrollment, Error<T::Error>> {
        self.select()?;
        let info = self.get_info()?;
        let algs = info
            .credential_algorithms()
            .ok_or(Error::NoSupportedAlgorithm)?;
        let auth = self.uv_params(
            &info,
            req.pin.as_deref(),
            PERMISSION_MC,
            &req.rp_id,
            &req.client_data_hash,
        )?;
        let params: Vec<Value> = algs
            .iter()
            .map(|a| {
                Value::Map(vec![
                    (Value::Text("alg".into()), int(*a)),
                    (Value::Text("type".into()), Value::Text("public-key".into())),
                ])
            })
            .collect();
        let mut m = vec![
            (int(1), Value::Bytes(req.client_data_hash.to_vec())),
            (
                int(2),
                Value::Map(vec![(
                    Value::Text("id".into()),
                    Value::Text(req.rp_id.clone()),
                )]),
            ),
            (
                int(3),
                Value::Map(vec![
                    (Value::Text("id".into()), Value::Bytes(req.user_id.clone())),
                    (
                        Value::Text("name".into()),
                        Value::Text(req.user_name.clone()),
                    ),
                ]),
            ),
            (int(4), Value::Array(params)),
        ];
        if let Some(tag) = auth {
            m.push((int(8), Value::Bytes(tag.to_vec())));
            m.push((int(9), int(2)));
        }
        let resp = match self.request(CMD_MAKE_CREDENTIAL, Some(&Value::Map(m))) {
            Err(Error::Ctap(CtapStatus::PUAT_REQUIRED)) if req.pin.is_none() => {
                return Err(Error::PinRequired);
            }
            r => r?,
        };
        let rm = as_map(&resp)?;
        let fmt = get_int(rm, 1)
            .and_then(Value::as_text)
            .ok_or(Error::Protocol("attestation without fmt"))?
            .to_owned();
        let auth_data =
            as_bytes(get_int(rm, 2).ok_or(Error::Protocol("attestation without authData"))?)?
                .to_vec();
        let att_stmt = get_int(rm, 3).map(cbor::encode).unwrap_or_default();
        let parsed = AuthenticatorData::parse(&auth_data)?;
        if parsed.rp_id_hash[..] != Sha256::digest(req.rp_id.as_bytes())[..] {
            return Err(Error::Protocol("authData is for another RP ID"));
        }
        let cred = parsed
            .attested
            .ok_or(Error::Protocol("authData lacks attested credential data"))?;
        let alg = cred.key.alg();
        if !algs.contains(&alg) {
            return Err(Error::Protocol(
                "the card made a credential with an algorithm not asked for",
            ));
        }
        Ok(Enrollment {
            credential_id: cred.credential_id,
            cose_key: cred.cose_key,
            alg,
            auth_data,
            fmt,
            att_stmt,
        })
    }

    /// Selects the applet, reads getInfo, obtains a PIN token when needed and gets an
    /// assertion over `client_data_hash`.
    pub fn assert(&mut self, req: &AssertionRequest) -> Result<Assertion, Error<T::Error>> {
        self.select()?;
        let info = self.get_info()?;
        let auth = self.uv_params(
            &info,
            req.pin.as_deref(),
            PERMISSION_GA,
            &req.rp_id,
            &req.client_data_hash,
        )?;
        let mut m = vec![
            (int(1), Value::Text(req.rp_id.clone())),
            (int(2), Value::Bytes(req.client_data_hash.to_vec())),
        ];
        if !req.allow_credential_ids.is_empty() {
            let list = req
                .allow_credential_ids
                .iter()
                .map(|id| {
                    Value::Map(vec![
                        (Value::Text("id".into()), Value::Bytes(id.clone())),
                        (Value::Text("type".into()), Value::Text("public-key".into())),
                    ])
                })
                .collect();
            m.push((int(3), Value::Array(list)));
        }
        if let Some(tag) = auth {
            m.push((int(6), Value::Bytes(tag.to_vec())));
            m.push((int(7), int(2)));
        }
        let resp = match self.request(CMD_GET_ASSERTION, Some(&Value::Map(m))) {
            Err(Error::Ctap(CtapStatus::PUAT_REQUIRED)) if req.pin.is_none() => {
                return Err(Error::PinRequired);
            }
            r => r?,
        };
        let rm = as_map(&resp)?;
        let auth_data =
            as_bytes(get_int(rm, 2).ok_or(Error::Protocol("assertion without authData"))?)?
                .to_vec();
        let signature =
            as_bytes(get_int(rm, 3).ok_or(Error::Protocol("assertion without signature"))?)?
                .to_vec();
        let credential_id = match get_int(rm, 1) {
            Some(c) => as_bytes(
                get_text(as_map(c)?, "id").ok_or(Error::Protocol("credential without id"))?,
            )?
            .to_vec(),
            None if req.allow_credential_ids.len() == 1 => req.allow_credential_ids[0].clone(),
            None => return Err(Error::Protocol("assertion without credential")),
        };
        if !req.allow_credential_ids.is_empty()
            && !req.allow_credential_ids.contains(&credential_id)
        {
            return Err(Error::Protocol(
                "the card signed with a credential not in the allow list",
            ));
        }
        let parsed = AuthenticatorData::parse(&auth_data)?;
        if parsed.rp_id_hash[..] != Sha256::digest(req.rp_id.as_bytes())[..] {
            return Err(Error::Protocol("authData is for another RP ID"));
        }
        if parsed.flags & cbor::FLAG_UP == 0 {
            return Err(Error::Protocol("user presence flag not set"));
        }
        Ok(Assertion {
            credential_id,
            auth_data,
            signature,
            sign_count: parsed.sign_count,
        })
    }
}
