//! hexa-hal: drivers for the consent readers, generic over embedded-hal 1.0 and
//! embedded-io 0.7, and byte-level simulators that implement the same traits.
//!
//! - [`pn532`]: the NFC controller (frames, I2C/SPI/HSU transports, commands).
//! - [`iso7816`]: APDUs with chaining; [`ctap2`]: FIDO2 over NFC with PIN protocol 2.
//! - [`fingerprint`]: R30x/R50x/AS608 modules over a UART.
//! - [`reader`]: object-safe capabilities ([`reader::CardReader`],
//!   [`reader::FingerprintReader`]) used by the device actor.
//! - [`sim`]: simulated PN532 with virtual FIDO2 cards, simulated fingerprint module.
//! - [`config`]: which device is where; [`linux`] (feature `linux`): opening them.

pub mod config;
pub mod ctap2;
pub mod fingerprint;
pub mod iso7816;
#[cfg(feature = "linux")]
pub mod linux;
pub mod pn532;
pub mod reader;
pub mod sim;

pub use embedded_hal::delay::DelayNs;

/// A [`DelayNs`] that sleeps the calling thread (for drivers run on a host OS thread).
#[derive(Debug, Clone, Copy, Default)]
pub struct StdDelay;

impl DelayNs for StdDelay {
    fn delay_ns(&mut self, ns: u32) {
        std::thread::sleep(std::time::Duration::from_nanos(ns as u64));
    }
}

/// A [`DelayNs`] that returns at once: for simulators, which answer immediately, and tests.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoDelay;

impl DelayNs for NoDelay {
    fn delay_ns(&mut self, _ns: u32) {}
}
