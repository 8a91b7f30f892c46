//! Which reader is where: plain configuration structs (serde) that the appliance reads
//! from its configuration file and hands to [`crate::linux`] to open the devices.

use serde::{Deserialize, Serialize};

/// The readers of one appliance.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadersConfig {
    /// The PN532 NFC reader, if one is wired.
    #[serde(default)]
    pub nfc: Option<NfcConfig>,
    /// The fingerprint module, if one is wired.
    #[serde(default)]
    pub fingerprint: Option<FingerprintConfig>,
}

/// Where the PN532 is and over which bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "bus", rename_all = "snake_case", deny_unknown_fields)]
pub enum NfcConfig {
    /// I2C: `/dev/i2c-N` and the 7-bit address (0x24 by default).
    I2c {
        /// Device path, e.g. `/dev/i2c-1`.
        device: String,
        /// 7-bit address.
        #[serde(default = "default_pn532_address")]
        address: u8,
    },
    /// SPI: `/dev/spidevB.C`.
    Spi {
        /// Device path, e.g. `/dev/spidev0.0`.
        device: String,
        /// Clock in Hz (the PN532 accepts up to 5 MHz).
        #[serde(default = "default_spi_hz")]
        max_speed_hz: u32,
    },
    /// HSU (UART), e.g. `/dev/ttyUSB0` or `/dev/ttyAMA0`.
    Hsu {
        /// Device path.
        device: String,
        /// Baud rate (115200 by default).
        #[serde(default = "default_hsu_baud")]
        baud: u32,
    },
}

/// Where the fingerprint module is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FingerprintConfig {
    /// Serial device path.
    pub device: String,
    /// Baud rate (57600 by default).
    #[serde(default = "default_fp_baud")]
    pub baud: u32,
    /// Module address (0xFFFFFFFF by default).
    #[serde(default = "default_fp_address")]
    pub address: u32,
    /// Module password (0 by default).
    #[serde(default)]
    pub password: u32,
}

fn default_pn532_address() -> u8 {
    crate::pn532::PN532_I2C_ADDRESS
}
fn default_spi_hz() -> u32 {
    1_000_000
}
fn default_hsu_baud() -> u32 {
    115_200
}
fn default_fp_baud() -> u32 {
    57_600
}
fn default_fp_address() -> u32 {
    crate::fingerprint::DEFAULT_ADDRESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_typical_configuration() {
        let cfg: ReadersConfig = toml::from_str(
            r#"
            [nfc]
            bus = "i2c"
            device = "/dev/i2c-1"

            [fingerprint]
            device = "/dev/ttyAMA0"
            "#,
        )
        .unwrap();
        assert_eq!(
            cfg.nfc,
            Some(NfcConfig::I2c {
                device: "/dev/i2c-1".into(),
                address: 0x24
            })
        );
        let fp = cfg.fingerprint.unwrap();
        assert_eq!((fp.baud, fp.address, fp.password), (57_600, 0xFFFF_FFFF, 0));
        let hsu: NfcConfig = toml::from_str("bus = \"hsu\"\ndevice = \"/dev/ttyUSB0\"").unwrap();
        assert_eq!(
            hsu,
            NfcConfig::Hsu {
                device: "/dev/ttyUSB0".into(),
                baud: 115_200
            }
        );
        assert!(toml::from_str::<NfcConfig>("bus = \"usb\"\ndevice = \"x\"").is_err());
        assert_eq!(
            toml::from_str::<ReadersConfig>("").unwrap(),
            ReadersConfig::default()
        );
    }
}
