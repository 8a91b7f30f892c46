//! PN532 transports: I2C (ready-byte polling), SPI (DW/SR/DR prefixes, optional
//! software LSB-first bit reversal) and HSU (UART over embedded-io, wake-up preamble).

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;
use embedded_hal::spi::{Operation, SpiDevice};
use embedded_io::{Read, ReadReady, Write};

use super::Error;
use super::frame::{self, Decoded, Frame, MAX_WIRE_FRAME};

/// Default 7-bit I2C address of the PN532.
pub const PN532_I2C_ADDRESS: u8 = 0x24;
/// Size of the first read of a response on I2C: ready byte plus a header long enough to
/// hold an extended length field.
const I2C_HEADER_READ: usize = 1 + 9;
/// HSU wake-up: 0x55 0x55 and a run of zeros long enough for the chip to leave power-down.
pub const HSU_WAKEUP: [u8; 16] = [0x55, 0x55, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// A byte link to the PN532 that moves whole frames.
pub trait Transport {
    /// Error of the underlying bus.
    type BusError: core::fmt::Debug;
    /// Wakes the chip if the link needs it (HSU); a no-op elsewhere.
    fn wake<D: DelayNs>(&mut self, delay: &mut D) -> Result<(), Error<Self::BusError>>;
    /// Sends one encoded frame.
    fn send(&mut self, frame: &[u8]) -> Result<(), Error<Self::BusError>>;
    /// Waits (at most `polls` polls, `interval_us` apart) for the next frame and decodes it;
    /// `ack` says an ACK frame (6 bytes) is expected.
    fn receive<D: DelayNs>(
        &mut self,
        delay: &mut D,
        ack: bool,
        polls: u32,
        interval_us: u32,
    ) -> Result<Frame, Error<Self::BusError>>;
}

fn finish<E>(buf: &[u8]) -> Result<Frame, Error<E>> {
    match frame::decode(buf)? {
        Decoded::Complete(f, _) => Ok(f),
        Decoded::Incomplete(_) => Err(Error::Unexpected("truncated frame")),
    }
}

/// PN532 over I2C.
///
/// Every read starts with the PN532's status byte (bit 0: ready). The host polls the
/// status byte with one-byte reads; once ready, it reads the ACK (status + 6 bytes), and
/// for a response, by default, status plus the largest possible frame in a single read
/// (as the Linux pn533 driver does; the decoder ignores the padding). With
/// [`probing_header`](Self::probing_header) it reads the status and frame header first and
/// then the exact frame, which moves fewer bytes but relies on the chip sending the frame
/// again from its start on the second read.
pub struct I2cTransport<I> {
    i2c: I,
    address: u8,
    probe_header: bool,
}

impl<I: I2c> I2cTransport<I> {
    /// Uses the default address 0x24.
    pub fn new(i2c: I) -> Self {
        Self::with_address(i2c, PN532_I2C_ADDRESS)
    }
    /// Uses another 7-bit address.
    pub fn with_address(i2c: I, address: u8) -> Self {
        I2cTransport {
            i2c,
            address,
            probe_header: false,
        }
    }
    /// Reads each response as header, then exact frame (see the type's documentation).
    pub fn probing_header(mut self) -> Self {
        self.probe_header = true;
        self
    }
    /// Gives back the bus.
    pub fn destroy(self) -> I {
        self.i2c
    }
    fn read(&mut self, buf: &mut [u8]) -> Result<(), Error<I::Error>> {
        self.i2c.read(self.address, buf).map_err(Error::Bus)
    }
}

impl<I: I2c> Transport for I2cTransport<I> {
    type BusError = I::Error;

    fn wake<D: DelayNs>(&mut self, _delay: &mut D) -> Result<(), Error<I::Error>> {
        Ok(())
    }

    fn send(&mut self, frame: &[u8]) -> Result<(), Error<I::Error>> {
        self.i2c.write(self.address, frame).map_err(Error::Bus)
    }

    fn receive<D: DelayNs>(
        &mut self,
        delay: &mut D,
        ack: bool,
        polls: u32,
        interval_us: u32,
    ) -> Result<Frame, Error<I::Error>> {
        let mut ready = [0u8; 1];
        let mut left = polls;
        loop {
            self.read(&mut ready)?;
            if ready[0] & 0x01 == 0x01 {
                break;
            }
            if left == 0 {
                return Err(Error::Timeout);
            }
            left -= 1;
            delay.delay_us(interval_us);
        }
        let first = match (ack, self.probe_header) {
            (true, _) => 1 + 6,
            (false, true) => I2C_HEADER_READ,
            (false, false) => 1 + MAX_WIRE_FRAME,
        };
        let mut buf = vec![0u8; first];
        self.read(&mut buf)?;
        if buf[0] & 0x01 == 0 {
            return Err(Error::Unexpected("PN532 not ready after signalling ready"));
        }
        let total = match frame::decode(&buf[1..])? {
            Decoded::Complete(f, _) => return Ok(f),
            Decoded::Incomplete(total) => total,
        };
        if total > MAX_WIRE_FRAME {
            return Err(Error::TooLong(total));
        }
        let mut buf = vec![0u8; 1 + total];
        self.read(&mut buf)?;
        finish(&buf[1..])
    }
}

/// PN532 over SPI (mode 0). The PN532 shifts LSB first; most SPI controllers shift MSB
/// first, so by default every byte is bit-reversed in software.
pub struct SpiTransport<S> {
    spi: S,
    reverse_bits: bool,
}

/// SPI prefix: data write.
pub const SPI_DW: u8 = 0x01;
/// SPI prefix: status read.
pub const SPI_SR: u8 = 0x02;
/// SPI prefix: data read.
pub const SPI_DR: u8 = 0x03;

impl<S: SpiDevice> SpiTransport<S> {
    /// A controller shifting MSB first: bytes are bit-reversed in software.
    pub fn new(spi: S) -> Self {
        SpiTransport {
            spi,
            reverse_bits: true,
        }
    }
    /// A controller already configured LSB first: bytes go out unchanged.
    pub fn lsb_first_controller(spi: S) -> Self {
        SpiTransport {
            spi,
            reverse_bits: false,
        }
    }
    /// Gives back the device.
    pub fn destroy(self) -> S {
        self.spi
    }
    fn conv(&self, b: u8) -> u8 {
        if self.reverse_bits {
            b.reverse_bits()
        } else {
            b
        }
    }
    fn read_with(&mut self, prefix: u8, buf: &mut [u8]) -> Result<(), Error<S::Error>> {
        let p = [self.conv(prefix)];
        self.spi
            .transaction(&mut [Operation::Write(&p), Operation::Read(buf)])
            .map_err(Error::Bus)?;
        if self.reverse_bits {
            buf.iter_mut().for_each(|b| *b = b.reverse_bits());
        }
        Ok(())
    }
}

impl<S: SpiDevice> Transport for SpiTransport<S> {
    type BusError = S::Error;

    fn wake<D: DelayNs>(&mut self, _delay: &mut D) -> Result<(), Error<S::Error>> {
        Ok(())
    }

    fn send(&mut self, frame: &[u8]) -> Result<(), Error<S::Error>> {
        let mut out = Vec::with_capacity(frame.len() + 1);
        out.push(self.conv(SPI_DW));
        out.extend(frame.iter().map(|b| self.conv(*b)));
        self.spi.write(&out).map_err(Error::Bus)
    }

    fn receive<D: DelayNs>(
        &mut self,
        delay: &mut D,
        ack: bool,
        polls: u32,
        interval_us: u32,
    ) -> Result<Frame, Error<S::Error>> {
        let mut status = [0u8; 1];
        let mut left = polls;
        loop {
            self.read_with(SPI_SR, &mut status)?;
            if status[0] & 0x01 == 0x01 {
                break;
            }
            if left == 0 {
                return Err(Error::Timeout);
            }
            left -= 1;
            delay.delay_us(interval_us);
        }
        // One DR transaction must carry the whole frame: read the largest possible frame.
        let mut buf = vec![0u8; if ack { 6 } else { MAX_WIRE_FRAME }];
        self.read_with(SPI_DR, &mut buf)?;
        finish(&buf)
    }
}

/// PN532 over its high-speed UART (HSU), on any embedded-io serial port.
pub struct HsuTransport<S> {
    serial: S,
}

impl<S: Read + Write + ReadReady> HsuTransport<S> {
    /// Wraps a serial port already set to the PN532's baud rate (115200 by default).
    pub fn new(serial: S) -> Self {
        HsuTransport { serial }
    }
    /// Gives back the serial port.
    pub fn destroy(self) -> S {
        self.serial
    }
}

impl<S: Read + Write + ReadReady> Transport for HsuTransport<S> {
    type BusError = S::Error;

    fn wake<D: DelayNs>(&mut self, delay: &mut D) -> Result<(), Error<S::Error>> {
        // Drop whatever a previous, failed exchange left in the receive buffer.
        let mut junk = [0u8; 64];
        for _ in 0..64 {
            if !self.serial.read_ready().map_err(Error::Bus)? {
                break;
            }
            self.serial.read(&mut junk).map_err(Error::Bus)?;
        }
        self.serial.write_all(&HSU_WAKEUP).map_err(Error::Bus)?;
        self.serial.flush().map_err(Error::Bus)?;
        delay.delay_ms(2);
        Ok(())
    }

    fn send(&mut self, frame: &[u8]) -> Result<(), Error<S::Error>> {
        self.serial.write_all(frame).map_err(Error::Bus)?;
        self.serial.flush().map_err(Error::Bus)
    }

    fn receive<D: DelayNs>(
        &mut self,
        delay: &mut D,
        _ack: bool,
        polls: u32,
        interval_us: u32,
    ) -> Result<Frame, Error<S::Error>> {
        let mut buf: Vec<u8> = Vec::with_capacity(16);
        let mut need = 6;
        let mut left = polls;
        loop {
            while buf.len() < need {
                if !self.serial.read_ready().map_err(Error::Bus)? {
                    if left == 0 {
                        return Err(Error::Timeout);
                    }
                    left -= 1;
                    delay.delay_us(interval_us);
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
            match frame::decode(&buf)? {
                Decoded::Complete(f, _) => return Ok(f),
                Decoded::Incomplete(total) if total > MAX_WIRE_FRAME + 32 => {
                    return Err(Error::TooLong(total));
                }
                Decoded::Incomplete(total) => need = total,
            }
        }
    }
}
