//! Linux bindings (feature `linux`): open the readers named by [`crate::config`] on
//! `/dev/i2c-N`, `/dev/spidevB.C` and serial ports through linux-embedded-hal, returning
//! the generic drivers over its types.

use std::io;
use std::time::Duration;

use linux_embedded_hal::serialport::{self, SerialPort as _};
use linux_embedded_hal::spidev::{SpiModeFlags, SpidevOptions};
use linux_embedded_hal::{Delay, I2cdev, Serial, SpidevDevice};
use thiserror::Error;

use crate::config::{FingerprintConfig, NfcConfig};
use crate::fingerprint::Fingerprint;
use crate::pn532::{HsuTransport, I2cTransport, Pn532, SpiTransport};
use crate::reader::{CardReader, FingerprintDevice, FingerprintReader};

/// Errors opening a device.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The I2C device could not be opened.
    #[error("cannot open I2C device {path}: {msg}")]
    I2c {
        /// Device path.
        path: String,
        /// Cause.
        msg: String,
    },
    /// The SPI device could not be opened or configured.
    #[error("cannot open SPI device {path}: {source}")]
    Spi {
        /// Device path.
        path: String,
        /// Cause.
        source: io::Error,
    },
    /// The serial port could not be opened.
    #[error("cannot open serial port {path}: {msg}")]
    Serial {
        /// Device path.
        path: String,
        /// Cause.
        msg: String,
    },
}

/// A linux-embedded-hal serial port as an embedded-io `Read + Write + ReadReady`.
pub struct LinuxSerial(pub Serial);

impl LinuxSerial {
    /// Opens `path` at `baud`, 8N1, raw.
    pub fn open(path: &str, baud: u32) -> Result<LinuxSerial, OpenError> {
        let builder = serialport::new(path, baud).timeout(Duration::from_millis(100));
        Serial::open_from_builder(builder)
            .map(LinuxSerial)
            .map_err(|e| OpenError::Serial {
                path: path.to_owned(),
                msg: e.to_string(),
            })
    }
}

impl embedded_io::ErrorType for LinuxSerial {
    type Error = io::Error;
}

impl embedded_io::Read for LinuxSerial {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, io::Error> {
        loop {
            match io::Read::read(&mut self.0.0, buf) {
                Err(e)
                    if e.kind() == io::ErrorKind::TimedOut
                        || e.kind() == io::ErrorKind::Interrupted =>
                {
                    continue;
                }
                r => return r,
            }
        }
    }
}

impl embedded_io::Write for LinuxSerial {
    fn write(&mut self, buf: &[u8]) -> Result<usize, io::Error> {
        io::Write::write(&mut self.0.0, buf)
    }
    fn flush(&mut self) -> Result<(), io::Error> {
        io::Write::flush(&mut self.0.0)
    }
}

impl embedded_io::ReadReady for LinuxSerial {
    fn read_ready(&mut self) -> Result<bool, io::Error> {
        self.0
            .0
            .bytes_to_read()
            .map(|n| n > 0)
            .map_err(|e| io::Error::other(e.to_string()))
    }
}

/// Opens a PN532 on I2C.
pub fn open_pn532_i2c(
    path: &str,
    address: u8,
) -> Result<Pn532<I2cTransport<I2cdev>, Delay>, OpenError> {
    let i2c = I2cdev::new(path).map_err(|e| OpenError::I2c {
        path: path.to_owned(),
        msg: e.to_string(),
    })?;
    Ok(Pn532::new(I2cTransport::with_address(i2c, address), Delay))
}

/// Opens a PN532 on SPI (mode 0, MSB-first controller: bytes are reversed in software).
pub fn open_pn532_spi(
    path: &str,
    max_speed_hz: u32,
) -> Result<Pn532<SpiTransport<SpidevDevice>, Delay>, OpenError> {
    let err = |source| OpenError::Spi {
        path: path.to_owned(),
        source,
    };
    let mut spi = SpidevDevice::open(path).map_err(|e| err(io::Error::other(e.to_string())))?;
    let options = SpidevOptions::new()
        .bits_per_word(8)
        .max_speed_hz(max_speed_hz)
        .mode(SpiModeFlags::SPI_MODE_0)
        .build();
    spi.configure(&options).map_err(err)?;
    Ok(Pn532::new(SpiTransport::new(spi), Delay))
}

/// Opens a PN532 on its HSU (UART).
pub fn open_pn532_hsu(
    path: &str,
    baud: u32,
) -> Result<Pn532<HsuTransport<LinuxSerial>, Delay>, OpenError> {
    Ok(Pn532::new(
        HsuTransport::new(LinuxSerial::open(path, baud)?),
        Delay,
    ))
}

/// Opens the configured NFC reader as a boxed [`CardReader`].
pub fn open_card_reader(cfg: &NfcConfig) -> Result<Box<dyn CardReader>, OpenError> {
    Ok(match cfg {
        NfcConfig::I2c { device, address } => Box::new(open_pn532_i2c(device, *address)?),
        NfcConfig::Spi {
            device,
            max_speed_hz,
        } => Box::new(open_pn532_spi(device, *max_speed_hz)?),
        NfcConfig::Hsu { device, baud } => Box::new(open_pn532_hsu(device, *baud)?),
    })
}

/// Opens a fingerprint module.
pub fn open_fingerprint(
    cfg: &FingerprintConfig,
) -> Result<Fingerprint<LinuxSerial, Delay>, OpenError> {
    let serial = LinuxSerial::open(&cfg.device, cfg.baud)?;
    Ok(Fingerprint::new(serial, Delay).with_address(cfg.address, cfg.password))
}

/// Opens the configured fingerprint module as a boxed [`FingerprintReader`].
pub fn open_fingerprint_reader(
    cfg: &FingerprintConfig,
) -> Result<Box<dyn FingerprintReader>, OpenError> {
    Ok(Box::new(FingerprintDevice::new(open_fingerprint(cfg)?)))
}
