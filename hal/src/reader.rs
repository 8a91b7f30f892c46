//! Object-safe reader capabilities for the device actor: [`CardReader`] (a PN532 carrying
//! CTAP2 to a contactless card) and [`FingerprintReader`] (an R30x module). Bus errors are
//! erased to text ([`BusError`]) so that readers on different buses share one error type.

use core::fmt::Debug;

use embedded_hal::delay::DelayNs;
use embedded_io::{Read, ReadReady, Write};
use thiserror::Error;

use crate::ctap2::{self, Assertion, AssertionRequest, Ctap2, Enrollment, MakeCredentialRequest};
use crate::fingerprint::{self, Confirmation, Fingerprint, Match};
use crate::iso7816::ApduTransport;
use crate::pn532::{self, Pn532, Target, Transport};

/// A bus error reduced to its description.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct BusError(pub String);

fn erase<E: Debug>(e: E) -> BusError {
    BusError(format!("{e:?}"))
}

/// Errors of the reader capabilities.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ReaderError {
    /// The NFC controller failed (bus, timeout, frames).
    #[error("NFC reader: {0}")]
    Nfc(pn532::Error<BusError>),
    /// The card refused or broke the CTAP2 protocol.
    #[error("card: {0}")]
    Card(ctap2::Error<pn532::Error<BusError>>),
    /// The fingerprint module failed or refused.
    #[error("fingerprint module: {0}")]
    Fingerprint(fingerprint::Error<BusError>),
    /// The card in the field cannot carry APDUs (not ISO 14443-4).
    #[error("the card in the field is not a contactless smart card (ISO 14443-4)")]
    NotSmartCard,
}

impl ReaderError {
    /// Whether the reader itself misbehaved (as opposed to the card or the user), so that
    /// it should be re-initialised before its next use.
    pub fn is_reader_fault(&self) -> bool {
        use crate::iso7816::Error as Apdu;
        let nfc = |e: &pn532::Error<BusError>| {
            !matches!(e, pn532::Error::CardGone | pn532::Error::Status(_))
        };
        match self {
            ReaderError::Nfc(e) => nfc(e),
            ReaderError::Card(ctap2::Error::Apdu(Apdu::Transport(e))) => nfc(e),
            ReaderError::Card(_) | ReaderError::NotSmartCard => false,
            ReaderError::Fingerprint(
                fingerprint::Error::Module(_) | fingerprint::Error::NoFinger,
            ) => false,
            ReaderError::Fingerprint(_) => true,
        }
    }

    /// Whether the card left the reader during the operation.
    pub fn is_card_gone(&self) -> bool {
        use crate::iso7816::Error as Apdu;
        matches!(
            self,
            ReaderError::Nfc(pn532::Error::CardGone)
                | ReaderError::Card(ctap2::Error::Apdu(Apdu::Transport(pn532::Error::CardGone)))
        )
    }
}

/// APDUs carried by a PN532 to target `tg` with InDataExchange.
pub struct Pn532Apdu<'a, T, D> {
    pn532: &'a mut Pn532<T, D>,
    tg: u8,
}

impl<'a, T: Transport, D: DelayNs> Pn532Apdu<'a, T, D> {
    /// Carries APDUs to target `tg`.
    pub fn new(pn532: &'a mut Pn532<T, D>, tg: u8) -> Self {
        Pn532Apdu { pn532, tg }
    }
}

impl<T: Transport, D: DelayNs> ApduTransport for Pn532Apdu<'_, T, D> {
    type Error = pn532::Error<T::BusError>;
    fn transceive(&mut self, apdu: &[u8]) -> Result<Vec<u8>, Self::Error> {
        self.pn532.in_data_exchange(self.tg, apdu)
    }
}

/// A consent card reader.
pub trait CardReader: Send {
    /// Wakes and configures the reader; call after power-up and after reader faults.
    fn init(&mut self) -> Result<(), ReaderError>;
    /// One poll for a card in the field.
    fn detect(&mut self) -> Result<Option<Target>, ReaderError>;
    /// Enrols the card: a new credential.
    fn enroll(
        &mut self,
        target: &Target,
        req: &MakeCredentialRequest,
    ) -> Result<Enrollment, ReaderError>;
    /// Gets an assertion from the card.
    fn assert(&mut self, target: &Target, req: &AssertionRequest)
    -> Result<Assertion, ReaderError>;
    /// Releases the card.
    fn release(&mut self, target: &Target) -> Result<(), ReaderError>;
}

fn map_ctap<E: Debug>(e: ctap2::Error<pn532::Error<E>>) -> ReaderError {
    use crate::iso7816::Error as Apdu;
    ReaderError::Card(match e {
        ctap2::Error::Apdu(a) => ctap2::Error::Apdu(match a {
            Apdu::Transport(t) => Apdu::Transport(t.map_bus(erase)),
            Apdu::Status { sw } => Apdu::Status { sw },
            Apdu::Malformed(m) => Apdu::Malformed(m),
            Apdu::TooLong(m) => Apdu::TooLong(m),
        }),
        ctap2::Error::Ctap(s) => ctap2::Error::Ctap(s),
        ctap2::Error::Cbor(c) => ctap2::Error::Cbor(c),
        ctap2::Error::Pin(p) => ctap2::Error::Pin(p),
        ctap2::Error::NoSupportedAlgorithm => ctap2::Error::NoSupportedAlgorithm,
        ctap2::Error::PinRequired => ctap2::Error::PinRequired,
        ctap2::Error::Protocol(p) => ctap2::Error::Protocol(p),
    })
}

impl<T, D> CardReader for Pn532<T, D>
where
    T: Transport + Send,
    D: DelayNs + Send,
{
    fn init(&mut self) -> Result<(), ReaderError> {
        Pn532::init(self)
            .map(|_| ())
            .map_err(|e| ReaderError::Nfc(e.map_bus(erase)))
    }

    fn detect(&mut self) -> Result<Option<Target>, ReaderError> {
        self.in_list_passive_target()
            .map_err(|e| ReaderError::Nfc(e.map_bus(erase)))
    }

    fn enroll(
        &mut self,
        target: &Target,
        req: &MakeCredentialRequest,
    ) -> Result<Enrollment, ReaderError> {
        if !target.is_iso14443_4() {
            return Err(ReaderError::NotSmartCard);
        }
        Ctap2::new(Pn532Apdu::new(self, target.tg))
            .enroll(req)
            .map_err(map_ctap)
    }

    fn assert(
        &mut self,
        target: &Target,
        req: &AssertionRequest,
    ) -> Result<Assertion, ReaderError> {
        if !target.is_iso14443_4() {
            return Err(ReaderError::NotSmartCard);
        }
        Ctap2::new(Pn532Apdu::new(self, target.tg))
            .assert(req)
            .map_err(map_ctap)
    }

    fn release(&mut self, target: &Target) -> Result<(), ReaderError> {
        self.in_release(target.tg)
            .map_err(|e| ReaderError::Nfc(e.map_bus(erase)))
    }
}

/// A fingerprint reader.
pub trait FingerprintReader: Send {
    /// Verifies the module password and reads its library size.
    fn init(&mut self) -> Result<u16, ReaderError>;
    /// One GenImg: true when an image of a finger was captured.
    fn capture(&mut self) -> Result<bool, ReaderError>;
    /// Finishes an enrolment into `slot` after a successful [`capture`](Self::capture).
    fn enroll_captured(&mut self, slot: u16) -> Result<(), ReaderError>;
    /// Identifies the finger captured by [`capture`](Self::capture).
    fn identify_captured(&mut self) -> Result<Match, ReaderError>;
}

/// A fingerprint driver together with the library size read at init.
pub struct FingerprintDevice<S, D> {
    driver: Fingerprint<S, D>,
    library_size: u16,
}

impl<S, D> FingerprintDevice<S, D> {
    /// Wraps a driver.
    pub fn new(driver: Fingerprint<S, D>) -> Self {
        FingerprintDevice {
            driver,
            library_size: 0,
        }
    }
    /// Gives back the driver.
    pub fn into_inner(self) -> Fingerprint<S, D> {
        self.driver
    }
}

fn fp<E: Debug>(e: fingerprint::Error<E>) -> ReaderError {
    ReaderError::Fingerprint(e.map_bus(erase))
}

impl<S, D> FingerprintReader for FingerprintDevice<S, D>
where
    S: Read + Write + ReadReady + Send,
    D: DelayNs + Send,
{
    fn init(&mut self) -> Result<u16, ReaderError> {
        self.driver.verify_password().map_err(fp)?;
        self.library_size = self.driver.read_sys_para().map_err(fp)?.library_size;
        Ok(self.library_size)
    }

    fn capture(&mut self) -> Result<bool, ReaderError> {
        match self.driver.gen_img() {
            Ok(()) => Ok(true),
            Err(fingerprint::Error::Module(Confirmation::NO_FINGER)) => Ok(false),
            Err(e) => Err(fp(e)),
        }
    }

    fn enroll_captured(&mut self, slot: u16) -> Result<(), ReaderError> {
        self.driver.enroll_captured(slot).map_err(fp)
    }

    fn identify_captured(&mut self) -> Result<Match, ReaderError> {
        self.driver.identify_captured(self.library_size).map_err(fp)
    }
}
