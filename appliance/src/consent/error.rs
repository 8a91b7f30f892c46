//! Errors of the ceremonies, each with an HTTP status, a FHIR IssueType, a stable hexa code
//! and a sentence that tells the front desk what to do.

use hexa_actors::device::DeviceError;
use hexa_actors::store::StoreError;
use hexa_crypto::consent::ConsentError;
use hexa_hal::ctap2::{self, CtapStatus};
use hexa_hal::reader::ReaderError;
use hyper::StatusCode;

use crate::fhir::outcome::{ApiError, Op};

/// Why a ceremony failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CeremonyError {
    /// The request's parameters are wrong (400).
    #[error("{0}")]
    BadRequest(String),
    /// A named resource does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The patient has no active enrolment of the kind needed (422).
    #[error("{0}")]
    NotEnrolled(String),
    /// The card or finger presented is not enrolled for this patient (403).
    #[error("{0}")]
    WrongCredential(String),
    /// The patient declined on the card, or the card refused (403).
    #[error("{0}")]
    Declined(String),
    /// No card or finger was presented in time (408).
    #[error("no card or finger was presented in time; start the ceremony again")]
    Timeout,
    /// The challenge was already answered (403).
    #[error("this challenge was already used or was never issued by this appliance")]
    Replay,
    /// The challenge is older than its time to live, or from the future (403).
    #[error("the challenge is stale: {0}")]
    Stale(String),
    /// The assertion or signature does not verify (403).
    #[error("the signature does not verify: {0}")]
    BadSignature(String),
    /// The resource is not in a state this operation applies to (409).
    #[error("{0}")]
    WrongState(String),
    /// The readers are busy or absent (503 / 409).
    #[error("{0}")]
    Device(DeviceError),
    /// The store refused or failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Something internal failed (500).
    #[error("{0}")]
    Internal(String),
}

impl From<DeviceError> for CeremonyError {
    fn from(e: DeviceError) -> Self {
        match &e {
            DeviceError::Timeout => CeremonyError::Timeout,
            DeviceError::Reader(ReaderError::Card(ctap2::Error::Ctap(s)))
                if *s == CtapStatus::NO_CREDENTIALS =>
            {
                CeremonyError::WrongCredential(
                    "the card on the reader holds no credential enrolled for this patient".into(),
                )
            }
            // CTAP2_ERR_OPERATION_DENIED, CTAP2_ERR_KEEPALIVE_CANCEL.
            DeviceError::Reader(ReaderError::Card(ctap2::Error::Ctap(CtapStatus(0x27 | 0x2D)))) => {
                CeremonyError::Declined("the patient declined on the card".into())
            }
            // CTAP2_ERR_USER_ACTION_TIMEOUT: the card waited for a touch that did not come.
            DeviceError::Reader(ReaderError::Card(ctap2::Error::Ctap(CtapStatus(0x2F)))) => {
                CeremonyError::Timeout
            }
            DeviceError::Reader(ReaderError::Card(ctap2::Error::PinRequired)) => {
                CeremonyError::Declined(
                    "the card requires its PIN; PIN entry at the desk is not supported yet".into(),
                )
            }
            DeviceError::Reader(ReaderError::Fingerprint(
                hexa_hal::fingerprint::Error::Module(_),
            )) => CeremonyError::WrongCredential(
                "the finger on the sensor matches no enrolled template".into(),
            ),
            _ => CeremonyError::Device(e),
        }
    }
}

impl From<ConsentError> for CeremonyError {
    fn from(e: ConsentError) -> Self {
        match e {
            ConsentError::Expired { .. }
            | ConsentError::NotYetValid { .. }
            | ConsentError::ApplianceMismatch { .. } => CeremonyError::Stale(e.to_string()),
            ConsentError::Malformed(_) | ConsentError::Invalid(_) => {
                CeremonyError::BadRequest(e.to_string())
            }
            other => CeremonyError::BadSignature(other.to_string()),
        }
    }
}

impl CeremonyError {
    /// The FHIR error answered to the client.
    pub fn to_api(&self) -> ApiError {
        use StatusCode as S;
        let msg = self.to_string();
        match self {
            CeremonyError::BadRequest(_) => ApiError::invalid("bad-parameters", msg),
            CeremonyError::NotFound(_) => {
                ApiError::new(S::NOT_FOUND, "not-found", "not-found", msg)
            }
            CeremonyError::NotEnrolled(_) => {
                ApiError::new(S::UNPROCESSABLE_ENTITY, "processing", "not-enrolled", msg)
            }
            CeremonyError::WrongCredential(_) => {
                ApiError::new(S::FORBIDDEN, "security", "wrong-credential", msg)
            }
            CeremonyError::Declined(_) => ApiError::new(S::FORBIDDEN, "security", "declined", msg),
            CeremonyError::Timeout => {
                ApiError::new(S::REQUEST_TIMEOUT, "timeout", "ceremony-timeout", msg)
            }
            CeremonyError::Replay => ApiError::new(S::FORBIDDEN, "security", "replay", msg),
            CeremonyError::Stale(_) => {
                ApiError::new(S::FORBIDDEN, "security", "stale-challenge", msg)
            }
            CeremonyError::BadSignature(_) => {
                ApiError::new(S::FORBIDDEN, "security", "bad-signature", msg)
            }
            CeremonyError::WrongState(_) => {
                ApiError::new(S::CONFLICT, "business-rule", "wrong-state", msg)
            }
            CeremonyError::Device(d) => match d {
                DeviceError::Busy(_) => ApiError::new(S::CONFLICT, "transient", d.code(), msg),
                DeviceError::NoReader(_) => {
                    ApiError::new(S::SERVICE_UNAVAILABLE, "not-supported", d.code(), msg)
                }
                DeviceError::Reader(r) if r.is_card_gone() => {
                    ApiError::new(S::CONFLICT, "transient", d.code(), msg)
                }
                _ => ApiError::new(S::SERVICE_UNAVAILABLE, "transient", d.code(), msg),
            },
            CeremonyError::Store(e) => ApiError::from_store(e, Op::Write { if_match: false }),
            CeremonyError::Internal(_) => {
                ApiError::new(S::INTERNAL_SERVER_ERROR, "exception", "internal", msg)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(status: u8) -> DeviceError {
        DeviceError::Reader(ReaderError::Card(ctap2::Error::Ctap(CtapStatus(status))))
    }

    #[test]
    fn device_errors_map_to_statuses() {
        let api = |e: DeviceError| CeremonyError::from(e).to_api();
        assert_eq!(api(card(0x27)).code, "declined");
        assert_eq!(api(card(0x27)).status, StatusCode::FORBIDDEN);
        assert_eq!(api(card(0x2F)).status, StatusCode::REQUEST_TIMEOUT);
        assert_eq!(api(card(0x2E)).code, "wrong-credential");
        assert_eq!(api(DeviceError::Timeout).code, "ceremony-timeout");
        assert_eq!(
            api(DeviceError::Busy(hexa_actors::device::ReaderKind::Card)).status,
            StatusCode::CONFLICT
        );
        assert_eq!(
            api(DeviceError::NoReader(
                hexa_actors::device::ReaderKind::Fingerprint
            ))
            .status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let stale = CeremonyError::from(ConsentError::Expired {
            issued_at: 1,
            ttl_secs: 1,
            now: 9,
        });
        assert_eq!(stale.to_api().code, "stale-challenge");
        assert_eq!(
            CeremonyError::from(ConsentError::BadSignature)
                .to_api()
                .code,
            "bad-signature"
        );
    }
}
