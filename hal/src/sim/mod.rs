//! Byte-level simulators of the readers. They implement the same embedded-hal /
//! embedded-io traits as the real buses, speak the devices' byte protocols, count the
//! bytes on the wire, and inject faults on request.

pub mod card;
pub mod fingerprint;
pub mod pn532;

pub use card::{CardConfig, CardModel, VirtualCard};
pub use fingerprint::{SimFingerprint, SimFingerprintHandle};
pub use pn532::{SimPn532, SimPn532Handle};

use thiserror::Error;

/// A fault to inject into a simulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// The card (or finger) leaves the reader just before the command is processed.
    Lift,
    /// The response carries a wrong checksum.
    CorruptChecksum,
    /// Only the first half of the response is sent.
    Truncate,
    /// The command is refused: NACK frame (PN532) or "packet receive error" (fingerprint).
    Nack,
    /// The bus operation carrying the command fails.
    BusError,
    /// The device never answers the command.
    Silence,
    /// The PN532 answers with an application error frame.
    ErrorFrame,
}

/// When an injected fault fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// On the next command.
    NextCommand,
    /// On the next command with this code (PN532 command code or fingerprint instruction).
    Command(u8),
}

/// Bytes and bus transactions seen by a simulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct WireStats {
    /// Bytes written by the host.
    pub host_to_device: u64,
    /// Bytes read by the host.
    pub device_to_host: u64,
    /// Bus transactions (I2C: address phases; UART: write or read calls).
    pub transactions: u64,
}

impl WireStats {
    /// Seconds on a UART at `baud` with 10 bits per byte (start, 8 data, stop).
    pub fn uart_seconds(&self, baud: u32) -> f64 {
        (self.host_to_device + self.device_to_host) as f64 * 10.0 / baud as f64
    }

    /// Seconds on I2C at `hz`: 9 bits per byte (8 + ACK), plus an address byte and
    /// start/stop (about 2 bit times) per transaction.
    pub fn i2c_seconds(&self, hz: u32) -> f64 {
        let bits = (self.host_to_device + self.device_to_host + self.transactions) * 9
            + self.transactions * 2;
        bits as f64 / hz as f64
    }
}

/// Simulator errors (also the bus error type the simulated buses report).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SimError {
    /// An injected bus fault.
    #[error("injected bus error")]
    InjectedBusError,
    /// The I2C address is not the device's.
    #[error("no device at I2C address {0:#04x}")]
    NoDevice(u8),
    /// A read while the device has nothing to send (the driver should check ReadReady).
    #[error("read with no data pending")]
    NoData,
    /// No card with this ID.
    #[error("no virtual card with id {0}")]
    UnknownCard(u32),
    /// The random generator failed.
    #[error("random generator failed")]
    Random,
    /// The shared state's lock was poisoned by a panicking thread.
    #[error("simulator state poisoned")]
    Poisoned,
}

impl embedded_hal::i2c::Error for SimError {
    fn kind(&self) -> embedded_hal::i2c::ErrorKind {
        match self {
            SimError::NoDevice(_) => embedded_hal::i2c::ErrorKind::NoAcknowledge(
                embedded_hal::i2c::NoAcknowledgeSource::Address,
            ),
            SimError::InjectedBusError => embedded_hal::i2c::ErrorKind::Bus,
            _ => embedded_hal::i2c::ErrorKind::Other,
        }
    }
}

impl embedded_io::Error for SimError {
    fn kind(&self) -> embedded_io::ErrorKind {
        match self {
            SimError::NoData => embedded_io::ErrorKind::TimedOut,
            _ => embedded_io::ErrorKind::Other,
        }
    }
}

/// Pending faults with their triggers; each fires once.
#[derive(Debug, Default)]
pub(crate) struct Faults(Vec<(Fault, Trigger)>);

impl Faults {
    pub(crate) fn push(&mut self, f: Fault, t: Trigger) {
        self.0.push((f, t));
    }
    pub(crate) fn take(&mut self, code: u8) -> Option<Fault> {
        let i = self.0.iter().position(|(_, t)| match t {
            Trigger::NextCommand => true,
            Trigger::Command(c) => *c == code,
        })?;
        Some(self.0.remove(i).0)
    }
    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }
}

/// A simulated card reader (PN532 on I2C, as wired on most boards) ready to hand to the
/// device actor, with the control handle that places and lifts virtual cards.
pub fn simulated_card_reader() -> (Box<dyn crate::reader::CardReader>, SimPn532Handle) {
    let chip = SimPn532::new();
    let handle = chip.handle();
    let reader = crate::pn532::Pn532::new(crate::pn532::I2cTransport::new(chip), crate::NoDelay);
    (Box::new(reader), handle)
}

/// A simulated fingerprint module ready to hand to the device actor, with its control
/// handle. Waiting for a finger polls without sleeping between module polls; the actor's
/// own poll interval paces it.
pub fn simulated_fingerprint_reader() -> (
    Box<dyn crate::reader::FingerprintReader>,
    SimFingerprintHandle,
) {
    let module = SimFingerprint::new();
    let handle = module.handle();
    let driver = crate::fingerprint::Fingerprint::new(module, crate::NoDelay);
    (
        Box::new(crate::reader::FingerprintDevice::new(driver)),
        handle,
    )
}
