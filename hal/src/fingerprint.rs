//! R30x / R50x / AS608 optical fingerprint modules over a UART (embedded-io).
//!
//! Packets: header 0xEF01, 4-byte address, packet identifier, 2-byte length (payload +
//! checksum), payload, 2-byte checksum (sum of identifier, length and payload bytes).
//! Commands answer with an acknowledge packet whose first payload byte is the
//! confirmation code, mapped here to [`Confirmation`].

use embedded_hal::delay::DelayNs;
use embedded_io::{Read, ReadReady, Write};
use thiserror::Error;

/// Packet header.
pub const HEADER: [u8; 2] = [0xEF, 0x01];
/// Default module address.
pub const DEFAULT_ADDRESS: u32 = 0xFFFF_FFFF;
/// Packet identifier: command.
pub const PID_COMMAND: u8 = 0x01;
/// Packet identifier: data, more follow.
pub const PID_DATA: u8 = 0x02;
/// Packet identifier: acknowledge.
pub const PID_ACK: u8 = 0x07;
/// Packet identifier: last data packet.
pub const PID_END_DATA: u8 = 0x08;
/// Largest payload accepted (data packets carry at most 256 bytes).
pub const MAX_PAYLOAD: usize = 256;

/// Instruction: capture an image.
pub const GEN_IMG: u8 = 0x01;
/// Instruction: image to character file in a buffer.
pub const IMG2TZ: u8 = 0x02;
/// Instruction: search the library.
pub const SEARCH: u8 = 0x04;
/// Instruction: combine buffers 1 and 2 into a template.
pub const REG_MODEL: u8 = 0x05;
/// Instruction: store a template.
pub const STORE: u8 = 0x06;
/// Instruction: delete templates.
pub const DELET_CHAR: u8 = 0x0C;
/// Instruction: read the system parameters.
pub const READ_SYS_PARA: u8 = 0x0F;
/// Instruction: verify the module password.
pub const VFY_PWD: u8 = 0x13;
/// Instruction: number of stored templates.
pub const TEMPLETE_NUM: u8 = 0x1D;

/// A module confirmation code other than success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirmation(pub u8);

impl Confirmation {
    /// No finger on the sensor.
    pub const NO_FINGER: Confirmation = Confirmation(0x02);
    /// Buffers 1 and 2 do not come from the same finger.
    pub const COMBINE_FAILED: Confirmation = Confirmation(0x0A);
    /// Search found no matching template.
    pub const NOT_FOUND: Confirmation = Confirmation(0x09);
    /// Wrong module password.
    pub const WRONG_PASSWORD: Confirmation = Confirmation(0x13);

    /// Meaning from the module's datasheet.
    pub fn description(self) -> &'static str {
        match self.0 {
            0x01 => "error receiving the packet",
            0x02 => "no finger on the sensor",
            0x03 => "failed to capture the image",
            0x06 => "image too disordered",
            0x07 => "too few feature points",
            0x08 => "finger does not match",
            0x09 => "no matching template in the library",
            0x0A => "failed to combine the two scans (different fingers?)",
            0x0B => "template address beyond the library",
            0x0C => "error reading the template, or invalid template",
            0x0D => "error uploading the template",
            0x0E => "cannot receive the following data packets",
            0x0F => "error uploading the image",
            0x10 => "failed to delete the template",
            0x11 => "failed to clear the library",
            0x13 => "wrong module password",
            0x15 => "no valid primary image",
            0x18 => "error writing flash",
            0x19 => "undefined error",
            0x1A => "invalid register number",
            0x1B => "incorrect register configuration",
            0x1C => "wrong notepad page number",
            0x1D => "communication port failure",
            _ => "unknown confirmation code",
        }
    }
}

/// A malformed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PacketError {
    /// Header is not 0xEF01.
    #[error("packet does not start with 0xEF01")]
    BadHeader,
    /// Length field out of range.
    #[error("packet length {0} out of range")]
    BadLength(usize),
    /// Checksum mismatch.
    #[error("packet checksum mismatch")]
    Checksum,
    /// Address differs from the module's.
    #[error("packet from address {0:#010x}")]
    WrongAddress(u32),
}

/// Errors of the fingerprint driver.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error<E> {
    /// The UART reported an error.
    #[error("serial error: {0:?}")]
    Bus(E),
    /// The module did not answer in time.
    #[error("the fingerprint module did not answer in time")]
    Timeout,
    /// A malformed packet.
    #[error("malformed packet: {0}")]
    Packet(#[from] PacketError),
    /// The module answered with a confirmation code other than success.
    #[error("fingerprint module: {desc} ({code:#04x})", code = .0.0, desc = .0.description())]
    Module(Confirmation),
    /// The module answered with the wrong packet type or length.
    #[error("unexpected answer: {0}")]
    Unexpected(&'static str),
    /// No finger appeared (or was lifted) within the allowed time.
    #[error("no finger was presented in time")]
    NoFinger,
}

impl<E> Error<E> {
    /// Maps the bus error, keeping every other variant.
    pub fn map_bus<F>(self, f: impl FnOnce(E) -> F) -> Error<F> {
        match self {
            Error::Bus(e) => Error::Bus(f(e)),
            Error::Timeout => Error::Timeout,
            Error::Packet(p) => Error::Packet(p),
            Error::Module(c) => Error::Module(c),
            Error::Unexpected(s) => Error::Unexpected(s),
            Error::NoFinger => Error::NoFinger,
        }
    }
}

/// A decoded packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Module address.
    pub address: u32,
    /// Packet identifier.
    pub pid: u8,
    /// Payload (without checksum).
    pub payload: Vec<u8>,
}

fn checksum(pid: u8, len: u16, payload: &[u8]) -> u16 {
    let [l1, l2] = len.to_be_bytes();
    payload
        .iter()
        .fold(pid as u16 + l1 as u16 + l2 as u16, |a, b| {
            a.wrapping_add(*b as u16)
        })
}

impl Packet {
    /// Encodes the packet.
    pub fn encode(&self) -> Vec<u8> {
        let len = (self.payload.len() + 2) as u16;
        let mut out = Vec::with_capacity(self.payload.len() + 11);
        out.extend_from_slice(&HEADER);
        out.extend_from_slice(&self.address.to_be_bytes());
        out.push(self.pid);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&self.payload);
        out.extend_from_slice(&checksum(self.pid, len, &self.payload).to_be_bytes());
        out
    }

    /// Decodes a packet at the start of `buf`: `Ok(Ok((packet, used)))`, or `Ok(Err(n))`
    /// when `n` bytes in total are needed.
    pub fn decode(buf: &[u8]) -> Result<Result<(Packet, usize), usize>, PacketError> {
        if buf.len() < 9 {
            if buf.iter().zip(HEADER.iter()).any(|(a, b)| a != b) {
                return Err(PacketError::BadHeader);
            }
            return Ok(Err(9));
        }
        if buf[..2] != HEADER {
            return Err(PacketError::BadHeader);
        }
        let address = u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]);
        let pid = buf[6];
        let len = u16::from_be_bytes([buf[7], buf[8]]);
        if !(2..=(MAX_PAYLOAD + 2)).contains(&(len as usize)) {
            return Err(PacketError::BadLength(len as usize));
        }
        let total = 9 + len as usize;
        if buf.len() < total {
            return Ok(Err(total));
        }
        let payload = &buf[9..total - 2];
        let sum = u16::from_be_bytes([buf[total - 2], buf[total - 1]]);
        if sum != checksum(pid, len, payload) {
            return Err(PacketError::Checksum);
        }
        Ok(Ok((
            Packet {
                address,
                pid,
                payload: payload.to_vec(),
            },
            total,
        )))
    }
}

/// System parameters (ReadSysPara).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SysPara {
    /// Status register.
    pub status: u16,
    /// System identifier code.
    pub system_id: u16,
    /// Library size (number of template slots).
    pub library_size: u16,
    /// Security level 1..5.
    pub security_level: u16,
    /// Module address.
    pub address: u32,
    /// Data packet size code (0: 32, 1: 64, 2: 128, 3: 256 bytes).
    pub packet_size: u16,
    /// Baud rate as a multiple of 9600.
    pub baud_multiplier: u16,
}

/// A search hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    /// Template slot (page ID).
    pub slot: u16,
    /// Match score.
    pub score: u16,
}

/// Timing of the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Time allowed for an acknowledge packet, in milliseconds.
    pub response_ms: u32,
    /// Time a user has to place (or lift) a finger, in milliseconds.
    pub finger_ms: u32,
    /// Pause between two polls, in microseconds.
    pub poll_interval_us: u32,
    /// Pause between two GenImg attempts while waiting for a finger, in milliseconds.
    pub finger_poll_ms: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            response_ms: 1_000,
            finger_ms: 10_000,
            poll_interval_us: 1_000,
            finger_poll_ms: 50,
        }
    }
}

/// The fingerprint module driver.
pub struct Fingerprint<S, D> {
    serial: S,
    delay: D,
    address: u32,
    password: u32,
    timeouts: Timeouts,
}

impl<S: Read + Write + ReadReady, D: DelayNs> Fingerprint<S, D> {
    /// A module at the default address with the default password 0.
    pub fn new(serial: S, delay: D) -> Self {
        Fingerprint {
            serial,
            delay,
            address: DEFAULT_ADDRESS,
            password: 0,
            timeouts: Timeouts::default(),
        }
    }

    /// Sets address and password.
    pub fn with_address(mut self, address: u32, password: u32) -> Self {
        self.address = address;
        self.password = password;
        self
    }

    /// Replaces the timing.
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Gives back the serial port and the delay.
    pub fn destroy(self) -> (S, D) {
        (self.serial, self.delay)
    }

    /// Sends an instruction and returns the acknowledge payload after a success
    /// confirmation code.
    pub fn command(&mut self, instruction: u8, params: &[u8]) -> Result<Vec<u8>, Error<S::Error>> {
        let (code, data) = self.command_raw(instruction, params)?;
        if code != 0 {
            return Err(Error::Module(Confirmation(code)));
        }
        Ok(data)
    }

    /// Sends an instruction and returns the confirmation code and the rest of the payload.
    pub fn command_raw(
        &mut self,
        instruction: u8,
        params: &[u8],
    ) -> Result<(u8, Vec<u8>), Error<S::Error>> {
        let mut payload = vec![instruction];
        payload.extend_from_slice(params);
        let p = Packet {
            address: self.address,
            pid: PID_COMMAND,
            payload,
        };
        self.serial.write_all(&p.encode()).map_err(Error::Bus)?;
        self.serial.flush().map_err(Error::Bus)?;
        let ack = self.receive()?;
        if ack.pid != PID_ACK {
            return Err(Error::Unexpected("packet is not an acknowledge"));
        }
        if ack.address != self.address {
            return Err(PacketError::WrongAddress(ack.address).into());
        }
        let mut payload = ack.payload;
        if payload.is_empty() {
            return Err(Error::Unexpected("acknowledge without confirmation code"));
        }
        let code = payload.remove(0);
        Ok((code, payload))
    }

    fn receive(&mut self) -> Result<Packet, Error<S::Error>> {
        let interval = self.timeouts.poll_interval_us.max(1);
        let mut left = (self.timeouts.response_ms.saturating_mul(1000) / interval).max(1);
        let mut buf = Vec::with_capacity(12);
        let mut need = 9;
        loop {
            while buf.len() < need {
                if !self.serial.read_ready().map_err(Error::Bus)? {
                    if left == 0 {
                        return Err(Error::Timeout);
                    }
                    left -= 1;
                    self.delay.delay_us(interval);
                    continue;
                }
                let start = buf.len();
                buf.resize(need, 0);
                let n = self.serial.read(&mut buf[start..]).map_err(Error::Bus)?;
                buf.truncate(start + n);
                if n == 0 {
                    return Err(Error::Unexpected("serial port closed"));
                }
            }
            match Packet::decode(&buf)? {
                Ok((p, _)) => return Ok(p),
                Err(total) => need = total,
            }
        }
    }

    /// VfyPwd with the configured password.
    pub fn verify_password(&mut self) -> Result<(), Error<S::Error>> {
        let pw = self.password.to_be_bytes();
        self.command(VFY_PWD, &pw).map(|_| ())
    }

    /// ReadSysPara.
    pub fn read_sys_para(&mut self) -> Result<SysPara, Error<S::Error>> {
        let d = self.command(READ_SYS_PARA, &[])?;
        if d.len() != 16 {
            return Err(Error::Unexpected("system parameters are not 16 bytes"));
        }
        let w = |i: usize| u16::from_be_bytes([d[i], d[i + 1]]);
        Ok(SysPara {
            status: w(0),
            system_id: w(2),
            library_size: w(4),
            security_level: w(6),
            address: u32::from_be_bytes([d[8], d[9], d[10], d[11]]),
            packet_size: w(12),
            baud_multiplier: w(14),
        })
    }

    /// GenImg: captures an image (Err(Module(NO_FINGER)) when the sensor is empty).
    pub fn gen_img(&mut self) -> Result<(), Error<S::Error>> {
        self.command(GEN_IMG, &[]).map(|_| ())
    }

    /// Img2Tz: turns the image into a character file in buffer 1 or 2.
    pub fn img2tz(&mut self, buffer: u8) -> Result<(), Error<S::Error>> {
        self.command(IMG2TZ, &[buffer]).map(|_| ())
    }

    /// RegModel: combines buffers 1 and 2 into a template.
    pub fn reg_model(&mut self) -> Result<(), Error<S::Error>> {
        self.command(REG_MODEL, &[]).map(|_| ())
    }

    /// Store: saves the template in `buffer` to library slot `slot`.
    pub fn store(&mut self, buffer: u8, slot: u16) -> Result<(), Error<S::Error>> {
        let s = slot.to_be_bytes();
        self.command(STORE, &[buffer, s[0], s[1]]).map(|_| ())
    }

    /// Search: looks the character file in `buffer` up in slots `start..start+count`.
    pub fn search(&mut self, buffer: u8, start: u16, count: u16) -> Result<Match, Error<S::Error>> {
        let (s, c) = (start.to_be_bytes(), count.to_be_bytes());
        let d = self.command(SEARCH, &[buffer, s[0], s[1], c[0], c[1]])?;
        if d.len() != 4 {
            return Err(Error::Unexpected("search answer is not 4 bytes"));
        }
        Ok(Match {
            slot: u16::from_be_bytes([d[0], d[1]]),
            score: u16::from_be_bytes([d[2], d[3]]),
        })
    }

    /// DeletChar: deletes `count` templates from `slot`.
    pub fn delete_char(&mut self, slot: u16, count: u16) -> Result<(), Error<S::Error>> {
        let (s, c) = (slot.to_be_bytes(), count.to_be_bytes());
        self.command(DELET_CHAR, &[s[0], s[1], c[0], c[1]])
            .map(|_| ())
    }

    /// TempleteNum: number of stored templates.
    pub fn template_count(&mut self) -> Result<u16, Error<S::Error>> {
        let d = self.command(TEMPLETE_NUM, &[])?;
        if d.len() != 2 {
            return Err(Error::Unexpected("template count is not 2 bytes"));
        }
        Ok(u16::from_be_bytes([d[0], d[1]]))
    }

    fn finger_polls(&self) -> u32 {
        (self.timeouts.finger_ms / self.timeouts.finger_poll_ms.max(1)).max(1)
    }

    /// Polls GenImg until an image is captured.
    pub fn wait_finger(&mut self) -> Result<(), Error<S::Error>> {
        for _ in 0..self.finger_polls() {
            match self.gen_img() {
                Ok(()) => return Ok(()),
                Err(Error::Module(Confirmation::NO_FINGER)) => {
                    self.delay.delay_ms(self.timeouts.finger_poll_ms)
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::NoFinger)
    }

    /// Polls GenImg until the sensor is empty.
    pub fn wait_lift(&mut self) -> Result<(), Error<S::Error>> {
        for _ in 0..self.finger_polls() {
            match self.gen_img() {
                Err(Error::Module(Confirmation::NO_FINGER)) => return Ok(()),
                Ok(()) => self.delay.delay_ms(self.timeouts.finger_poll_ms),
                Err(e) => return Err(e),
            }
        }
        Err(Error::NoFinger)
    }

    /// Enrols a finger into `slot`: two scans (lift between), RegModel, Store.
    pub fn enroll(&mut self, slot: u16) -> Result<(), Error<S::Error>> {
        self.wait_finger()?;
        self.enroll_captured(slot)
    }

    /// Finishes an enrolment whose first image was just captured by GenImg.
    pub fn enroll_captured(&mut self, slot: u16) -> Result<(), Error<S::Error>> {
        self.img2tz(1)?;
        self.wait_lift()?;
        self.wait_finger()?;
        self.img2tz(2)?;
        self.reg_model()?;
        self.store(1, slot)
    }

    /// Identifies a finger against the whole library: returns slot and score
    /// (Err(Module(NOT_FOUND)) when no template matches).
    pub fn identify(&mut self, library_size: u16) -> Result<Match, Error<S::Error>> {
        self.wait_finger()?;
        self.identify_captured(library_size)
    }

    /// Identifies the image just captured by GenImg.
    pub fn identify_captured(&mut self, library_size: u16) -> Result<Match, Error<S::Error>> {
        self.img2tz(1)?;
        self.search(1, 0, library_size)
    }
}
