//! A virtual contactless FIDO2 card: an ISO 7816-4 applet that is a real CTAP 2.1
//! authenticator (Ed25519 and/or ES256 credentials, signature counter, optional PIN with
//! protocol 2, user presence always true).

use ciborium::Value;
use ed25519_dalek::Signer as _;
use sha2::{Digest, Sha256};

use super::SimError;
use crate::ctap2::cbor::{
    self, COSE_ALG_EDDSA, COSE_ALG_ES256, CoseKey, FLAG_AT, FLAG_UP, FLAG_UV, as_bytes, as_i64,
    as_map, get_int, get_text, int,
};
use crate::ctap2::pin::{self, KeyAgreement};
use crate::ctap2::{self, FIDO_AID};

/// What a card model offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CardModel {
    /// Offers Ed25519 (-8) and ES256 (-7).
    Ed25519,
    /// Offers only ES256 (-7), like many cards on the market.
    Es256Only,
}

/// How to make a virtual card.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CardConfig {
    /// Algorithms offered.
    pub model: CardModel,
    /// PIN; when set, the card requires it for every credential operation (alwaysUv).
    pub pin: Option<String>,
}

impl Default for CardConfig {
    fn default() -> Self {
        CardConfig {
            model: CardModel::Ed25519,
            pin: None,
        }
    }
}

enum CredKey {
    Ed(ed25519_dalek::SigningKey),
    P256(p256::ecdsa::SigningKey),
}

impl CredKey {
    fn generate(alg: i64) -> Result<CredKey, SimError> {
        let seed = pin::random::<32>().map_err(|_| SimError::Random)?;
        if alg == COSE_ALG_EDDSA {
            return Ok(CredKey::Ed(ed25519_dalek::SigningKey::from_bytes(&seed)));
        }
        p256::ecdsa::SigningKey::from_slice(&seed)
            .map(CredKey::P256)
            .map_err(|_| SimError::Random)
    }
    fn cose(&self) -> CoseKey {
        match self {
            CredKey::Ed(k) => CoseKey::Ed25519 {
                x: k.verifying_key().to_bytes(),
            },
            CredKey::P256(k) => {
                let sec1 = k.verifying_key().to_sec1_bytes();
                let mut x = [0u8; 32];
                let mut y = [0u8; 32];
                if sec1.len() == 65 {
                    x.copy_from_slice(&sec1[1..33]);
                    y.copy_from_slice(&sec1[33..]);
                }
                CoseKey::P256 {
                    alg: COSE_ALG_ES256,
                    x,
                    y,
                }
            }
        }
    }
    fn sign(&self, msg: &[u8]) -> Vec<u8> {
        match self {
            CredKey::Ed(k) => k.sign(msg).to_bytes().to_vec(),
            CredKey::P256(k) => {
                let sig: p256::ecdsa::DerSignature = k.sign(msg);
                sig.as_bytes().to_vec()
            }
        }
    }
    fn alg(&self) -> i64 {
        match self {
            CredKey::Ed(_) => COSE_ALG_EDDSA,
            CredKey::P256(_) => COSE_ALG_ES256,
        }
    }
}

struct Credential {
    id: Vec<u8>,
    rp_id_hash: [u8; 32],
    key: CredKey,
}

/// A virtual FIDO2 card.
pub struct VirtualCard {
    uid: [u8; 7],
    model: CardModel,
    pin_hash: Option<[u8; 16]>,
    pin_retries: u8,
    counter: u32,
    aaguid: [u8; 16],
    credentials: Vec<Credential>,
    key_agreement: Option<KeyAgreement>,
    token: Option<([u8; 32], i64, String)>,
    selected: bool,
    chain: Vec<u8>,
    pending: Vec<u8>,
}

type CtapResult = Result<Value, u8>;

const ERR_INVALID_COMMAND: u8 = 0x01;
const ERR_INVALID_PARAMETER: u8 = 0x02;
const ERR_INVALID_CBOR: u8 = 0x12;
const ERR_MISSING_PARAMETER: u8 = 0x14;
const ERR_PIN_INVALID: u8 = 0x31;
const ERR_PIN_BLOCKED: u8 = 0x32;
const ERR_PIN_AUTH_INVALID: u8 = 0x33;
const ERR_PIN_NOT_SET: u8 = 0x35;
const MAX_CREDENTIALS: usize = 32;

fn sw(data: &[u8], sw: u16) -> Vec<u8> {
    let mut v = data.to_vec();
    v.extend_from_slice(&sw.to_be_bytes());
    v
}

/// A parsed command APDU: CLA, INS, P1, P2, data, Le (0 = absent).
type ParsedApdu<'a> = (u8, u8, u8, u8, &'a [u8], usize);

fn parse_apdu(a: &[u8]) -> Option<ParsedApdu<'_>> {
    if a.len() < 4 {
        return None;
    }
    let (h, rest) = a.split_at(4);
    let n = rest.len();
    let (data, le): (&[u8], usize) = if n == 0 {
        (&[], 0)
    } else if n == 1 {
        (&[], if rest[0] == 0 { 256 } else { rest[0] as usize })
    } else if rest[0] != 0 {
        let lc = rest[0] as usize;
        if n == 1 + lc {
            (&rest[1..], 0)
        } else if n == 2 + lc {
            let le = rest[n - 1];
            (&rest[1..1 + lc], if le == 0 { 256 } else { le as usize })
        } else {
            return None;
        }
    } else if n == 3 {
        let le = u16::from_be_bytes([rest[1], rest[2]]) as usize;
        (&[], if le == 0 { 65_536 } else { le })
    } else {
        let lc = u16::from_be_bytes([rest[1], rest[2]]) as usize;
        if n == 3 + lc {
            (&rest[3..], 0)
        } else if n == 5 + lc {
            let le = u16::from_be_bytes([rest[n - 2], rest[n - 1]]) as usize;
            (&rest[3..3 + lc], if le == 0 { 65_536 } else { le })
        } else {
            return None;
        }
    };
    Some((h[0], h[1], h[2], h[3], data, le))
}

impl VirtualCard {
    /// Makes a card with a random UID.
    pub fn new(config: &CardConfig) -> Result<VirtualCard, SimError> {
        let mut uid: [u8; 7] = pin::random().map_err(|_| SimError::Random)?;
        uid[0] = 0x04;
        let mut aaguid = [0u8; 16];
        aaguid[..8].copy_from_slice(b"hexa-sim");
        aaguid[15] = match config.model {
            CardModel::Ed25519 => 1,
            CardModel::Es256Only => 2,
        };
        Ok(VirtualCard {
            uid,
            model: config.model,
            pin_hash: config.pin.as_deref().map(pin::pin_hash),
            pin_retries: 8,
            counter: 0,
            aaguid,
            credentials: Vec::new(),
            key_agreement: None,
            token: None,
            selected: false,
            chain: Vec::new(),
            pending: Vec::new(),
        })
    }

    /// The card's 7-byte UID.
    pub fn uid(&self) -> [u8; 7] {
        self.uid
    }

    /// Signature counter.
    pub fn sign_count(&self) -> u32 {
        self.counter
    }

    /// Number of credentials on the card.
    pub fn credential_count(&self) -> usize {
        self.credentials.len()
    }

    /// Field lost: the applet is deselected and session state (PIN token, chains) dropped.
    pub fn power_cycle(&mut self) {
        self.selected = false;
        self.chain.clear();
        self.pending.clear();
        self.token = None;
        self.key_agreement = None;
    }

    fn respond(&mut self, mut data: Vec<u8>, le: usize) -> Vec<u8> {
        let le = if le == 0 { 256 } else { le };
        if data.len() <= le {
            return sw(&data, 0x9000);
        }
        self.pending = data.split_off(le);
        let left = self.pending.len().min(256);
        sw(&data, 0x6100 | (left & 0xFF) as u16)
    }

    /// Processes one command APDU and returns the response APDU.
    pub fn process_apdu(&mut self, apdu: &[u8]) -> Vec<u8> {
        let Some((cla, ins, p1, _p2, data, le)) = parse_apdu(apdu) else {
            return sw(&[], 0x6700);
        };
        if ins == 0xC0 {
            if self.pending.is_empty() {
                return sw(&[], 0x6985);
            }
            let pending = std::mem::take(&mut self.pending);
            return self.respond(pending, le);
        }
        self.pending.clear();
        if cla & 0x10 != 0 {
            if self.chain.len() + data.len() > 4096 {
                self.chain.clear();
                return sw(&[], 0x6700);
            }
            self.chain.extend_from_slice(data);
            return sw(&[], 0x9000);
        }
        let mut full = std::mem::take(&mut self.chain);
        full.extend_from_slice(data);
        match (cla, ins, p1) {
            (0x00, 0xA4, 0x04) => {
                if full == FIDO_AID {
                    self.selected = true;
                    self.respond(b"FIDO_2_0".to_vec(), le)
                } else {
                    self.selected = false;
                    sw(&[], 0x6A82)
                }
            }
            (0x80, 0x10, _) if self.selected => {
                let out = self.ctap(&full);
                self.respond(out, le)
            }
            (0x80, 0x10, _) => sw(&[], 0x6985),
            (_, _, _) if cla != 0x00 && cla != 0x80 => sw(&[], 0x6E00),
            _ => sw(&[], 0x6D00),
        }
    }

    fn ctap(&mut self, msg: &[u8]) -> Vec<u8> {
        let Some((&cmd, body)) = msg.split_first() else {
            return vec![ctap2::CtapStatus(0x03).0];
        };
        let params = if body.is_empty() {
            Ok(Value::Null)
        } else {
            cbor::decode(body).map_err(|_| ERR_INVALID_CBOR)
        };
        let result = params.and_then(|p| match cmd {
            ctap2::CMD_GET_INFO => Ok(self.get_info()),
            ctap2::CMD_MAKE_CREDENTIAL => self.make_credential(&p),
            ctap2::CMD_GET_ASSERTION => self.get_assertion(&p),
            ctap2::CMD_CLIENT_PIN => self.client_pin(&p),
            _ => Err(ERR_INVALID_COMMAND),
        });
        match result {
            Ok(Value::Null) => vec![0],
            Ok(v) => {
                let mut out = vec![0];
                out.extend_from_slice(&cbor::encode(&v));
                out
            }
            Err(code) => vec![code],
        }
    }

    fn algorithms(&self) -> Vec<i64> {
        match self.model {
            CardModel::Ed25519 => vec![COSE_ALG_EDDSA, COSE_ALG_ES256],
            CardModel::Es256Only => vec![COSE_ALG_ES256],
        }
    }

    fn get_info(&self) -> Value {
        let t = |s: &str| Value::Text(s.into());
        let pin_set = self.pin_hash.is_some();
        let algs = self
            .algorithms()
            .into_iter()
            .map(|a| Value::Map(vec![(t("alg"), int(a)), (t("type"), t("public-key"))]))
            .collect();
        Value::Map(vec![
            (int(1), Value::Array(vec![t("FIDO_2_0"), t("FIDO_2_1")])),
            (int(3), Value::Bytes(self.aaguid.to_vec())),
            (
                int(4),
                Value::Map(vec![
                    (t("rk"), Value::Bool(false)),
                    (t("up"), Value::Bool(true)),
                    (t("alwaysUv"), Value::Bool(pin_set)),
                    (t("clientPin"), Value::Bool(pin_set)),
                    (t("pinUvAuthToken"), Value::Bool(true)),
                ]),
            ),
            (int(5), int(1200)),
            (int(6), Value::Array(vec![int(2)])),
            (int(10), Value::Array(algs)),
        ])
    }

    /// Checks pinUvAuthParam when a PIN is set; returns whether UV was performed.
    fn check_uv(
        &mut self,
        m: &[(Value, Value)],
        param_key: i64,
        permission: i64,
        rp_id: &str,
        cdh: &[u8],
    ) -> Result<bool, u8> {
        if self.pin_hash.is_none() {
            return Ok(false);
        }
        let Some(param) = get_int(m, param_key) else {
            return Err(ctap2::CtapStatus::PUAT_REQUIRED.0);
        };
        let param = as_bytes(param).map_err(|_| ERR_INVALID_PARAMETER)?;
        let proto = get_int(m, param_key + 1).map(as_i64);
        if proto != Some(Ok(2)) {
            return Err(ERR_INVALID_PARAMETER);
        }
        let Some((token, perms, token_rp)) = &self.token else {
            return Err(ERR_PIN_AUTH_INVALID);
        };
        if !pin::verify(token, cdh, param) || perms & permission == 0 || token_rp != rp_id {
            return Err(ERR_PIN_AUTH_INVALID);
        }
        Ok(true)
    }

    fn make_credential(&mut self, p: &Value) -> CtapResult {
        let m = as_map(p).map_err(|_| ERR_INVALID_CBOR)?;
        let cdh = get_int(m, 1).ok_or(ERR_MISSING_PARAMETER)?;
        let cdh = as_bytes(cdh).map_err(|_| ERR_INVALID_PARAMETER)?.to_vec();
        let rp = as_map(get_int(m, 2).ok_or(ERR_MISSING_PARAMETER)?)
            .map_err(|_| ERR_INVALID_PARAMETER)?;
        let rp_id = get_text(rp, "id")
            .and_then(Value::as_text)
            .ok_or(ERR_MISSING_PARAMETER)?
            .to_owned();
        get_int(m, 3).ok_or(ERR_MISSING_PARAMETER)?;
        let params = get_int(m, 4)
            .and_then(Value::as_array)
            .ok_or(ERR_MISSING_PARAMETER)?;
        let offered = self.algorithms();
        let alg = params
            .iter()
            .filter_map(|p| as_map(p).ok().and_then(|pm| get_text(pm, "alg")))
            .filter_map(|a| as_i64(a).ok())
            .find(|a| offered.contains(a))
            .ok_or(ctap2::CtapStatus::UNSUPPORTED_ALGORITHM.0)?;
        let uv = self.check_uv(m, 8, ctap2::PERMISSION_MC, &rp_id, &cdh)?;
        if self.credentials.len() >= MAX_CREDENTIALS {
            return Err(0x28);
        }
        let key = CredKey::generate(alg).map_err(|_| 0x7F)?;
        let id = pin::random::<32>().map_err(|_| 0x7Fu8)?.to_vec();
        let rp_id_hash: [u8; 32] = Sha256::digest(rp_id.as_bytes()).into();
        self.counter = self.counter.wrapping_add(1);
        let mut auth_data = rp_id_hash.to_vec();
        auth_data.push(FLAG_UP | FLAG_AT | if uv { FLAG_UV } else { 0 });
        auth_data.extend_from_slice(&self.counter.to_be_bytes());
        auth_data.extend_from_slice(&self.aaguid);
        auth_data.extend_from_slice(&(id.len() as u16).to_be_bytes());
        auth_data.extend_from_slice(&id);
        auth_data.extend_from_slice(&cbor::encode(&key.cose().to_value()));
        let mut signed = auth_data.clone();
        signed.extend_from_slice(&cdh);
        let sig = key.sign(&signed);
        let alg = key.alg();
        self.credentials.push(Credential {
            id,
            rp_id_hash,
            key,
        });
        Ok(Value::Map(vec![
            (int(1), Value::Text("packed".into())),
            (int(2), Value::Bytes(auth_data)),
            (
                int(3),
                Value::Map(vec![
                    (Value::Text("alg".into()), int(alg)),
                    (Value::Text("sig".into()), Value::Bytes(sig)),
                ]),
            ),
        ]))
    }

    fn get_assertion(&mut self, p: &Value) -> CtapResult {
        let m = as_map(p).map_err(|_| ERR_INVALID_CBOR)?;
        let rp_id = get_int(m, 1)
            .and_then(Value::as_text)
            .ok_or(ERR_MISSING_PARAMETER)?
            .to_owned();
        let cdh = as_bytes(get_int(m, 2).ok_or(ERR_MISSING_PARAMETER)?)
            .map_err(|_| ERR_INVALID_PARAMETER)?
            .to_vec();
        let allow: Vec<Vec<u8>> = get_int(m, 3)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|c| as_map(c).ok().and_then(|cm| get_text(cm, "id")))
                    .filter_map(|id| as_bytes(id).ok().map(<[u8]>::to_vec))
                    .collect()
            })
            .unwrap_or_default();
        let uv = self.check_uv(m, 6, ctap2::PERMISSION_GA, &rp_id, &cdh)?;
        let rp_id_hash: [u8; 32] = Sha256::digest(rp_id.as_bytes()).into();
        let cred = self
            .credentials
            .iter()
            .find(|c| c.rp_id_hash == rp_id_hash && allow.contains(&c.id))
            .ok_or(ctap2::CtapStatus::NO_CREDENTIALS.0)?;
        self.counter = self.counter.wrapping_add(1);
        let mut auth_data = rp_id_hash.to_vec();
        auth_data.push(FLAG_UP | if uv { FLAG_UV } else { 0 });
        auth_data.extend_from_slice(&self.counter.to_be_bytes());
        let mut signed = auth_data.clone();
        signed.extend_from_slice(&cdh);
        let sig = cred.key.sign(&signed);
        Ok(Value::Map(vec![
            (
                int(1),
                Value::Map(vec![
                    (Value::Text("id".into()), Value::Bytes(cred.id.clone())),
                    (Value::Text("type".into()), Value::Text("public-key".into())),
                ]),
            ),
            (int(2), Value::Bytes(auth_data)),
            (int(3), Value::Bytes(sig)),
        ]))
    }

    fn client_pin(&mut self, p: &Value) -> CtapResult {
        let m = as_map(p).map_err(|_| ERR_INVALID_CBOR)?;
        let sub = as_i64(get_int(m, 2).ok_or(ERR_MISSING_PARAMETER)?)
            .map_err(|_| ERR_INVALID_PARAMETER)?;
        match sub {
            ctap2::PIN_GET_RETRIES => Ok(Value::Map(vec![(int(3), int(self.pin_retries as i64))])),
            ctap2::PIN_GET_KEY_AGREEMENT => {
                let ka = KeyAgreement::generate().map_err(|_| 0x7Fu8)?;
                let cose = ka.public_cose().to_value();
                self.key_agreement = Some(ka);
                Ok(Value::Map(vec![(int(1), cose)]))
            }
            ctap2::PIN_GET_TOKEN_WITH_PERMISSIONS => {
                let Some(pin_hash) = self.pin_hash else {
                    return Err(ERR_PIN_NOT_SET);
                };
                if self.pin_retries == 0 {
                    return Err(ERR_PIN_BLOCKED);
                }
                if get_int(m, 1).map(as_i64) != Some(Ok(2)) {
                    return Err(ERR_INVALID_PARAMETER);
                }
                let peer = CoseKey::from_value(get_int(m, 3).ok_or(ERR_MISSING_PARAMETER)?)
                    .map_err(|_| ERR_INVALID_PARAMETER)?;
                let enc = as_bytes(get_int(m, 6).ok_or(ERR_MISSING_PARAMETER)?)
                    .map_err(|_| ERR_INVALID_PARAMETER)?;
                let perms = as_i64(get_int(m, 9).ok_or(ERR_MISSING_PARAMETER)?)
                    .map_err(|_| ERR_INVALID_PARAMETER)?;
                let rp_id = get_int(m, 10)
                    .and_then(Value::as_text)
                    .unwrap_or_default()
                    .to_owned();
                let ka = self.key_agreement.as_ref().ok_or(ERR_PIN_AUTH_INVALID)?;
                let shared = ka.shared_secret(&peer).map_err(|_| ERR_INVALID_PARAMETER)?;
                let got = shared.decrypt(enc).map_err(|_| ERR_PIN_AUTH_INVALID)?;
                if got[..] != pin_hash[..] {
                    self.pin_retries -= 1;
                    self.key_agreement = KeyAgreement::generate().ok();
                    return Err(if self.pin_retries == 0 {
                        ERR_PIN_BLOCKED
                    } else {
                        ERR_PIN_INVALID
                    });
                }
                self.pin_retries = 8;
                let token = pin::random::<32>().map_err(|_| 0x7Fu8)?;
                let enc_token = shared.encrypt(&token).map_err(|_| 0x7Fu8)?;
                self.token = Some((token, perms, rp_id));
                Ok(Value::Map(vec![(int(2), Value::Bytes(enc_token))]))
            }
            _ => Err(ERR_INVALID_PARAMETER),
        }
    }
}
