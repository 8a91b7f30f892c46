//! PN532 NFC controller driver: commands over any [`Transport`] (I2C, SPI, HSU/UART).
//!
//! The driver speaks the frame protocol of the PN532 user manual: every command is an
//! information frame answered by an ACK frame and then a response frame. Waiting is done
//! by polling the transport with a [`DelayNs`] between polls, within budgets set by
//! [`Timeouts`], so a silent chip yields [`Error::Timeout`] and never a hang.

pub mod frame;
pub mod transport;

use embedded_hal::delay::DelayNs;
use thiserror::Error;

pub use frame::{Frame, FrameError};
pub use transport::{HsuTransport, I2cTransport, PN532_I2C_ADDRESS, SpiTransport, Transport};

/// GetFirmwareVersion command code.
pub const CMD_GET_FIRMWARE_VERSION: u8 = 0x02;
/// SAMConfiguration command code.
pub const CMD_SAM_CONFIGURATION: u8 = 0x14;
/// InDataExchange command code.
pub const CMD_IN_DATA_EXCHANGE: u8 = 0x40;
/// InListPassiveTarget command code.
pub const CMD_IN_LIST_PASSIVE_TARGET: u8 = 0x4A;
/// InRelease command code.
pub const CMD_IN_RELEASE: u8 = 0x52;
/// Most data bytes one InDataExchange frame carries (the PN532's 262-byte buffer).
pub const MAX_EXCHANGE_CHUNK: usize = 262;
/// Cap on a reassembled (MI-chained) InDataExchange response.
pub const MAX_EXCHANGE_RESPONSE: usize = 8 * 1024;
/// "More information" bit in the Tg byte (host→PN532) and in the status byte (PN532→host).
const MI: u8 = 0x40;

/// Errors of the PN532 driver; `E` is the bus error of the transport.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error<E> {
    /// The bus (I2C, SPI, UART) reported an error.
    #[error("bus error: {0:?}")]
    Bus(E),
    /// The PN532 did not answer within the polling budget.
    #[error("the PN532 did not answer in time")]
    Timeout,
    /// A malformed frame (bad start code, checksum or length).
    #[error("malformed frame from the PN532: {0}")]
    Frame(#[from] FrameError),
    /// The PN532 answered with a NACK frame.
    #[error("the PN532 rejected the frame (NACK)")]
    Nack,
    /// The PN532 answered with an application-level error frame.
    #[error("the PN532 reported a syntax error frame")]
    ErrorFrame,
    /// The PN532 sent a frame other than the one the protocol expects.
    #[error("unexpected frame from the PN532: {0}")]
    Unexpected(&'static str),
    /// The command reported a non-zero status byte.
    #[error("PN532 status {0:#04x}: {desc}", desc = status_description(*.0))]
    Status(u8),
    /// The target left the field (timeout or "card disappeared" status during an exchange).
    #[error("the card left the reader during the exchange")]
    CardGone,
    /// The data do not fit in the PN532's frames or buffers.
    #[error("{0} bytes exceed the PN532 limits")]
    TooLong(usize),
}

impl<E> Error<E> {
    /// Maps the bus error, keeping every other variant.
    pub fn map_bus<F>(self, f: impl FnOnce(E) -> F) -> Error<F> {
        match self {
            Error::Bus(e) => Error::Bus(f(e)),
            Error::Timeout => Error::Timeout,
            Error::Frame(e) => Error::Frame(e),
            Error::Nack => Error::Nack,
            Error::ErrorFrame => Error::ErrorFrame,
            Error::Unexpected(s) => Error::Unexpected(s),
            Error::Status(s) => Error::Status(s),
            Error::CardGone => Error::CardGone,
            Error::TooLong(n) => Error::TooLong(n),
        }
    }
}

/// Human meaning of a PN532 status (error) code, from the user manual §7.1.
pub fn status_description(code: u8) -> &'static str {
    match code & 0x3F {
        0x00 => "success",
        0x01 => "target timeout (no answer from the card)",
        0x02 => "CRC error",
        0x03 => "parity error",
        0x04 => "erroneous bit count during anticollision",
        0x05 => "framing error",
        0x06 => "bit collision",
        0x07 => "communication buffer too small",
        0x09 => "RF buffer overflow",
        0x0A => "RF field not switched on in time",
        0x0B => "RF protocol error",
        0x0D => "temperature error",
        0x0E => "internal buffer overflow",
        0x10 => "invalid parameter",
        0x12 => "command not supported by the target",
        0x13 => "data format does not match the specification",
        0x14 => "authentication error",
        0x23 => "wrong UID check byte",
        0x25 => "invalid device state",
        0x26 => "operation not allowed in this configuration",
        0x27 => "command not acceptable in this context",
        0x29 => "target released by the initiator",
        0x2A => "card ID does not match",
        0x2B => "card disappeared",
        0x2C => "NFCID3 mismatch",
        0x2D => "over-current",
        0x2E => "NAD missing",
        _ => "unknown status",
    }
}

/// Polling budgets (in units of `poll_interval_us`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Time allowed for the ACK frame, in milliseconds.
    pub ack_ms: u32,
    /// Time allowed for a response frame, in milliseconds.
    pub response_ms: u32,
    /// Pause between two polls of the transport, in microseconds.
    pub poll_interval_us: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            ack_ms: 50,
            response_ms: 1_000,
            poll_interval_us: 1_000,
        }
    }
}

impl Timeouts {
    /// Number of polls that fit in `ms` milliseconds.
    pub fn polls(&self, ms: u32) -> u32 {
        let interval = self.poll_interval_us.max(1);
        (ms.saturating_mul(1000) / interval).max(1)
    }
}

/// Firmware version reported by GetFirmwareVersion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirmwareVersion {
    /// IC code (0x32 for the PN532).
    pub ic: u8,
    /// Firmware version.
    pub version: u8,
    /// Firmware revision.
    pub revision: u8,
    /// Supported protocols bit field (ISO 14443-A, -B, ISO 18092).
    pub support: u8,
}

/// A target found by InListPassiveTarget (ISO 14443-A, 106 kbps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Logical target number to use in InDataExchange / InRelease.
    pub tg: u8,
    /// SENS_RES (ATQA).
    pub sens_res: u16,
    /// SEL_RES (SAK); bit 0x20 means ISO 14443-4 (APDU-capable).
    pub sel_res: u8,
    /// NFCID1 (UID), 4, 7 or 10 bytes.
    pub uid: Vec<u8>,
    /// Answer to select (ATS), without its length byte, when the card is ISO 14443-4.
    pub ats: Vec<u8>,
}

impl Target {
    /// Whether the target speaks ISO 14443-4 and so can carry APDUs.
    pub fn is_iso14443_4(&self) -> bool {
        self.sel_res & 0x20 != 0
    }

    /// Parses the data of an InListPassiveTarget response (after the response code).
    pub fn parse_list(data: &[u8]) -> Result<Option<Target>, &'static str> {
        let nb = *data.first().ok_or("empty InListPassiveTarget response")?;
        if nb == 0 {
            return Ok(None);
        }
        let mut r = Reader(&data[1..]);
        let tg = r.u8()?;
        let sens_res = u16::from_be_bytes([r.u8()?, r.u8()?]);
        let sel_res = r.u8()?;
        let uid_len = r.u8()? as usize;
        if !matches!(uid_len, 4 | 7 | 10) {
            return Err("NFCID1 length is not 4, 7 or 10");
        }
        let uid = r.take(uid_len)?.to_vec();
        let mut ats = Vec::new();
        if sel_res & 0x20 != 0 && !r.0.is_empty() {
            let ats_len = r.u8()? as usize;
            if ats_len == 0 {
                return Err("ATS length byte is zero");
            }
            ats = r.take(ats_len - 1)?.to_vec();
        }
        Ok(Some(Target {
            tg,
            sens_res,
            sel_res,
            uid,
            ats,
        }))
    }
}

struct Reader<'a>(&'a [u8]);
impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.0.len() < n {
            return Err("truncated target description");
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
}

/// The PN532 driver, generic over its transport and a delay.
pub struct Pn532<T, D> {
    transport: T,
    delay: D,
    timeouts: Timeouts,
    awake: bool,
}

impl<T: Transport, D: DelayNs> Pn532<T, D> {
    /// Wraps a transport; the chip is woken (HSU) on the first command.
    pub fn new(transport: T, delay: D) -> Self {
        Pn532 {
            transport,
            delay,
            timeouts: Timeouts::default(),
            awake: false,
        }
    }

    /// Replaces the polling budgets.
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Gives back the transport and the delay.
    pub fn destroy(self) -> (T, D) {
        (self.transport, self.delay)
    }

    /// Marks the chip as asleep, so the next command sends the wake-up sequence again
    /// (used after an error, before re-initialising).
    pub fn mark_asleep(&mut self) {
        self.awake = false;
    }

    /// Sends `cmd` with `params` and returns the response data after the response code.
    pub fn command(
        &mut self,
        cmd: u8,
        params: &[u8],
        response_ms: u32,
    ) -> Result<Vec<u8>, Error<T::BusError>> {
        let mut data = Vec::with_capacity(params.len() + 1);
        data.push(cmd);
        data.extend_from_slice(params);
        let wire = frame::encode(frame::TFI_HOST, &data)?;
        if !self.awake {
            self.transport.wake(&mut self.delay)?;
            self.awake = true;
        }
        self.transport.send(&wire)?;
        let polls = self.timeouts.polls(self.timeouts.ack_ms);
        let interval = self.timeouts.poll_interval_us;
        match self
            .transport
            .receive(&mut self.delay, true, polls, interval)?
        {
            Frame::Ack => {}
            Frame::Nack => return Err(Error::Nack),
            Frame::Error => return Err(Error::ErrorFrame),
            Frame::Info { .. } => {
                return Err(Error::Unexpected("information frame instead of ACK"));
            }
        }
        let polls = self.timeouts.polls(response_ms);
        match self
            .transport
            .receive(&mut self.delay, false, polls, interval)?
        {
            Frame::Info { tfi, mut data } => {
                if tfi != frame::TFI_PN532 {
                    return Err(Error::Unexpected("response frame with a host TFI"));
                }
                if data.first() != Some(&cmd.wrapping_add(1)) {
                    return Err(Error::Unexpected(
                        "response code does not match the command",
                    ));
                }
                data.remove(0);
                Ok(data)
            }
            Frame::Error => Err(Error::ErrorFrame),
            Frame::Nack => Err(Error::Nack),
            Frame::Ack => Err(Error::Unexpected("second ACK instead of a response")),
        }
    }

    /// SAMConfiguration: normal mode, no SAM, IRQ pin used.
    pub fn sam_configuration(&mut self) -> Result<(), Error<T::BusError>> {
        let resp = self.command(CMD_SAM_CONFIGURATION, &[0x01, 0x14, 0x01], 100)?;
        if !resp.is_empty() {
            return Err(Error::Unexpected("SAMConfiguration response carries data"));
        }
        Ok(())
    }

    /// GetFirmwareVersion.
    pub fn firmware_version(&mut self) -> Result<FirmwareVersion, Error<T::BusError>> {
        let r = self.command(CMD_GET_FIRMWARE_VERSION, &[], 100)?;
        if r.len() != 4 {
            return Err(Error::Unexpected(
                "GetFirmwareVersion response is not 4 bytes",
            ));
        }
        Ok(FirmwareVersion {
            ic: r[0],
            version: r[1],
            revision: r[2],
            support: r[3],
        })
    }

    /// Wakes the chip, configures the SAM and checks the firmware answers: call once after
    /// power-up or after an error.
    pub fn init(&mut self) -> Result<FirmwareVersion, Error<T::BusError>> {
        self.awake = false;
        self.sam_configuration()?;
        self.firmware_version()
    }

    /// InListPassiveTarget for one ISO 14443-A target at 106 kbps; `None` when no card
    /// is in the field.
    pub fn in_list_passive_target(&mut self) -> Result<Option<Target>, Error<T::BusError>> {
        let r = self.command(
            CMD_IN_LIST_PASSIVE_TARGET,
            &[0x01, 0x00],
            self.timeouts.response_ms,
        )?;
        Target::parse_list(&r).map_err(Error::Unexpected)
    }

    /// InDataExchange with target `tg`: sends `data` (chained with the MI bit when longer
    /// than one PN532 buffer) and returns the card's complete answer (following MI chaining).
    pub fn in_data_exchange(&mut self, tg: u8, data: &[u8]) -> Result<Vec<u8>, Error<T::BusError>> {
        let tg = tg & 0x3F;
        let mut chunks = data.chunks(MAX_EXCHANGE_CHUNK).peekable();
        let mut resp;
        loop {
            let chunk = chunks.next().unwrap_or(&[]);
            let more = chunks.peek().is_some();
            let mut params = Vec::with_capacity(chunk.len() + 1);
            params.push(if more { tg | MI } else { tg });
            params.extend_from_slice(chunk);
            resp = self.command(CMD_IN_DATA_EXCHANGE, &params, self.timeouts.response_ms)?;
            let status = check_status(&resp)?;
            if !more {
                break;
            }
            if status & MI != 0 {
                return Err(Error::Unexpected(
                    "MI set in the answer to a chained command block",
                ));
            }
        }
        let mut out = resp[1..].to_vec();
        let mut status = resp[0];
        while status & MI != 0 {
            let next = self.command(CMD_IN_DATA_EXCHANGE, &[tg], self.timeouts.response_ms)?;
            status = check_status(&next)?;
            if out.len() + next.len() - 1 > MAX_EXCHANGE_RESPONSE {
                return Err(Error::TooLong(out.len() + next.len() - 1));
            }
            out.extend_from_slice(&next[1..]);
        }
        Ok(out)
    }

    /// InRelease of target `tg` (0 releases all targets).
    pub fn in_release(&mut self, tg: u8) -> Result<(), Error<T::BusError>> {
        let r = self.command(CMD_IN_RELEASE, &[tg], 100)?;
        check_status(&r)?;
        Ok(())
    }
}

fn check_status<E>(resp: &[u8]) -> Result<u8, Error<E>> {
    let status = *resp
        .first()
        .ok_or(Error::Unexpected("response without status byte"))?;
    match status & 0x3F {
        0x00 => Ok(status),
        0x01 | 0x2B | 0x29 => Err(Error::CardGone),
        code => Err(Error::Status(code)),
    }
}
