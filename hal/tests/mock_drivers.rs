//! Driver tests against scripted buses: embedded-hal-mock transaction scripts (I2C, SPI,
//! delay) and a small scripted embedded-io serial port (embedded-hal-mock has none for
//! embedded-io) for HSU and the fingerprint module. Every script ends with `.done()`.

use std::collections::VecDeque;

use embedded_hal_mock::eh1::delay::{CheckedDelay, NoopDelay, Transaction as DelayTx};
use embedded_hal_mock::eh1::i2c::{Mock as I2cMock, Transaction as I2cTx};
use embedded_hal_mock::eh1::spi::{Mock as SpiMock, Transaction as SpiTx};
use hexa_hal::fingerprint::{self, Confirmation, Fingerprint, Packet};
use hexa_hal::pn532::frame::{self, ACK, ERROR_FRAME, NACK, TFI_HOST, TFI_PN532};
use hexa_hal::pn532::{self, HsuTransport, I2cTransport, Pn532, SpiTransport, Target};

const ADDR: u8 = 0x24;

fn host(cmd: &[u8]) -> Vec<u8> {
    frame::encode(TFI_HOST, cmd).unwrap()
}
fn chip(resp: &[u8]) -> Vec<u8> {
    frame::encode(TFI_PN532, resp).unwrap()
}
fn ready(bytes: &[u8], len: usize) -> Vec<u8> {
    let mut v = vec![0x01];
    v.extend_from_slice(bytes);
    v.resize(len, 0);
    v
}

/// The I2C transactions of one command: write, ready poll, ACK read, ready poll, one read
/// of the largest frame.
fn i2c_command(cmd: &[u8], resp_frame: &[u8]) -> Vec<I2cTx> {
    vec![
        I2cTx::write(ADDR, host(cmd)),
        I2cTx::read(ADDR, vec![0x01]),
        I2cTx::read(ADDR, ready(&ACK, 7)),
        I2cTx::read(ADDR, vec![0x01]),
        I2cTx::read(ADDR, ready(resp_frame, 1 + frame::MAX_WIRE_FRAME)),
    ]
}

/// The same with header probing: header read, then the exact frame.
fn i2c_command_probing(cmd: &[u8], resp_frame: &[u8]) -> Vec<I2cTx> {
    let mut v = vec![
        I2cTx::write(ADDR, host(cmd)),
        I2cTx::read(ADDR, vec![0x01]),
        I2cTx::read(ADDR, ready(&ACK, 7)),
        I2cTx::read(ADDR, vec![0x01]),
        I2cTx::read(ADDR, ready(resp_frame, 10)),
    ];
    // Frames that fit in the 9-byte header read need no second read.
    if resp_frame.len() > 9 {
        v.push(I2cTx::read(ADDR, ready(resp_frame, 1 + resp_frame.len())));
    }
    v
}

#[test]
fn i2c_header_probing_reads_the_exact_frame() {
    let resp = [
        0x00, 0x00, 0xFF, 0x06, 0xFA, 0xD5, 0x03, 0x32, 0x01, 0x06, 0x07, 0xE8, 0x00,
    ];
    let mut script = i2c_command_probing(&[0x02], &resp);
    script.extend(i2c_command_probing(
        &[0x14, 0x01, 0x14, 0x01],
        &chip(&[0x15]),
    ));
    let mut p = Pn532::new(
        I2cTransport::new(I2cMock::new(&script)).probing_header(),
        NoopDelay::new(),
    );
    assert_eq!(p.firmware_version().unwrap().ic, 0x32);
    p.sam_configuration().unwrap();
    let (t, _) = p.destroy();
    t.destroy().done();
}

fn i2c_driver(script: &[I2cTx]) -> Pn532<I2cTransport<I2cMock>, NoopDelay> {
    Pn532::new(I2cTransport::new(I2cMock::new(script)), NoopDelay::new())
}

fn finish(p: Pn532<I2cTransport<I2cMock>, NoopDelay>) {
    let (t, _) = p.destroy();
    t.destroy().done();
}

#[test]
fn i2c_get_firmware_version_matches_the_manual_bytes() {
    let resp = [
        0x00, 0x00, 0xFF, 0x06, 0xFA, 0xD5, 0x03, 0x32, 0x01, 0x06, 0x07, 0xE8, 0x00,
    ];
    let script = i2c_command(&[0x02], &resp);
    assert_eq!(
        host(&[0x02]),
        vec![0x00, 0x00, 0xFF, 0x02, 0xFE, 0xD4, 0x02, 0x2A, 0x00]
    );
    let mut p = i2c_driver(&script);
    let v = p.firmware_version().unwrap();
    assert_eq!((v.ic, v.version, v.revision, v.support), (0x32, 1, 6, 7));
    finish(p);
}

#[test]
fn i2c_sam_configuration() {
    let script = i2c_command(&[0x14, 0x01, 0x14, 0x01], &chip(&[0x15]));
    let mut p = i2c_driver(&script);
    p.sam_configuration().unwrap();
    finish(p);
}

#[test]
fn i2c_polls_the_ready_byte_with_the_delay() {
    let resp = chip(&[0x15]);
    let script = vec![
        I2cTx::write(ADDR, host(&[0x14, 0x01, 0x14, 0x01])),
        I2cTx::read(ADDR, vec![0x00]),
        I2cTx::read(ADDR, vec![0x01]),
        I2cTx::read(ADDR, ready(&ACK, 7)),
        I2cTx::read(ADDR, vec![0x00]),
        I2cTx::read(ADDR, vec![0x00]),
        I2cTx::read(ADDR, vec![0x01]),
        I2cTx::read(ADDR, ready(&resp, 1 + frame::MAX_WIRE_FRAME)),
    ];
    let delay = CheckedDelay::new(&[
        DelayTx::delay_us(1000),
        DelayTx::delay_us(1000),
        DelayTx::delay_us(1000),
    ]);
    let mut p = Pn532::new(I2cTransport::new(I2cMock::new(&script)), delay);
    p.sam_configuration().unwrap();
    let (t, mut d) = p.destroy();
    t.destroy().done();
    d.done();
}

#[test]
fn i2c_silence_times_out() {
    let mut script = vec![I2cTx::write(ADDR, host(&[0x02]))];
    // ack_ms = 2 with a 1 ms poll interval: 1 + 2 polls, then Timeout.
    script.extend((0..3).map(|_| I2cTx::read(ADDR, vec![0x00])));
    let mut p = i2c_driver(&script).with_timeouts(pn532::Timeouts {
        ack_ms: 2,
        response_ms: 2,
        poll_interval_us: 1000,
    });
    assert!(matches!(p.firmware_version(), Err(pn532::Error::Timeout)));
    finish(p);
}

#[test]
fn i2c_in_list_passive_target_with_and_without_card() {
    let uid = [0x04, 1, 2, 3, 4, 5, 6];
    let mut found = vec![0x4B, 1, 1, 0x00, 0x44, 0x20, 7];
    found.extend_from_slice(&uid);
    found.extend_from_slice(&[0x05, 0x78, 0x80, 0x70, 0x02]);
    let mut script = i2c_command(&[0x4A, 0x01, 0x00], &chip(&[0x4B, 0]));
    script.extend(i2c_command(&[0x4A, 0x01, 0x00], &chip(&found)));
    let mut p = i2c_driver(&script);
    assert_eq!(p.in_list_passive_target().unwrap(), None);
    let t = p.in_list_passive_target().unwrap().unwrap();
    assert_eq!(
        t,
        Target {
            tg: 1,
            sens_res: 0x0044,
            sel_res: 0x20,
            uid: uid.to_vec(),
            ats: vec![0x78, 0x80, 0x70, 0x02]
        }
    );
    finish(p);
}

#[test]
fn i2c_in_data_exchange_and_release() {
    let apdu = [0x00, 0xA4, 0x04, 0x00];
    let mut cmd = vec![0x40, 0x01];
    cmd.extend_from_slice(&apdu);
    let mut script = i2c_command(&cmd, &chip(&[0x41, 0x00, 0x90, 0x00]));
    script.extend(i2c_command(&[0x52, 0x01], &chip(&[0x53, 0x00])));
    let mut p = i2c_driver(&script);
    assert_eq!(p.in_data_exchange(1, &apdu).unwrap(), vec![0x90, 0x00]);
    p.in_release(1).unwrap();
    finish(p);
}

#[test]
fn i2c_in_data_exchange_mi_chaining_both_ways() {
    let big: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
    let mut first = vec![0x40, 0x41];
    first.extend_from_slice(&big[..262]);
    let mut second = vec![0x40, 0x01];
    second.extend_from_slice(&big[262..]);
    let mut resp1 = vec![0x41, 0x40];
    resp1.extend_from_slice(&[0xAA; 262]);
    let mut resp2 = vec![0x41, 0x00];
    resp2.extend_from_slice(&[0xBB, 0x90, 0x00]);
    let mut script = i2c_command(&first, &chip(&[0x41, 0x00]));
    script.extend(i2c_command(&second, &chip(&resp1)));
    script.extend(i2c_command(&[0x40, 0x01], &chip(&resp2)));
    let mut p = i2c_driver(&script);
    let got = p.in_data_exchange(1, &big).unwrap();
    assert_eq!(got.len(), 265);
    assert_eq!(&got[262..], &[0xBB, 0x90, 0x00]);
    finish(p);
}

#[test]
fn i2c_status_nack_and_error_frames_are_typed() {
    let mut script = i2c_command(&[0x40, 0x01, 0x00], &chip(&[0x41, 0x01]));
    script.extend(i2c_command(&[0x40, 0x01, 0x00], &chip(&[0x41, 0x13])));
    script.extend(vec![
        I2cTx::write(ADDR, host(&[0x02])),
        I2cTx::read(ADDR, vec![0x01]),
        I2cTx::read(ADDR, ready(&NACK, 7)),
    ]);
    script.extend(i2c_command(&[0x02], &ERROR_FRAME));
    let mut bad = chip(&[0x03, 0x32, 1, 6, 7]);
    let n = bad.len();
    bad[n - 2] ^= 1;
    script.extend(i2c_command(&[0x02], &bad));
    let mut p = i2c_driver(&script);
    assert!(matches!(
        p.in_data_exchange(1, &[0]),
        Err(pn532::Error::CardGone)
    ));
    let e = p.in_data_exchange(1, &[0]).unwrap_err();
    assert!(matches!(e, pn532::Error::Status(0x13)));
    assert!(e.to_string().contains("format"));
    assert!(matches!(p.firmware_version(), Err(pn532::Error::Nack)));
    assert!(matches!(
        p.firmware_version(),
        Err(pn532::Error::ErrorFrame)
    ));
    assert!(matches!(
        p.firmware_version(),
        Err(pn532::Error::Frame(frame::FrameError::DataChecksum))
    ));
    finish(p);
}

fn rev(v: &[u8]) -> Vec<u8> {
    v.iter().map(|b| b.reverse_bits()).collect()
}

#[test]
fn spi_get_firmware_version_with_bit_reversal() {
    let mut w = vec![0x01];
    w.extend_from_slice(&host(&[0x02]));
    let resp = chip(&[0x03, 0x32, 1, 6, 7]);
    let mut full = resp.clone();
    full.resize(frame::MAX_WIRE_FRAME, 0);
    let status = |r: u8| {
        vec![
            SpiTx::transaction_start(),
            SpiTx::write_vec(rev(&[0x02])),
            SpiTx::read_vec(rev(&[r])),
            SpiTx::transaction_end(),
        ]
    };
    let mut script = vec![
        SpiTx::transaction_start(),
        SpiTx::write_vec(rev(&w)),
        SpiTx::transaction_end(),
    ];
    script.extend(status(0x00));
    script.extend(status(0x01));
    script.extend(vec![
        SpiTx::transaction_start(),
        SpiTx::write_vec(rev(&[0x03])),
        SpiTx::read_vec(rev(&ACK)),
        SpiTx::transaction_end(),
    ]);
    script.extend(status(0x01));
    script.extend(vec![
        SpiTx::transaction_start(),
        SpiTx::write_vec(rev(&[0x03])),
        SpiTx::read_vec(rev(&full)),
        SpiTx::transaction_end(),
    ]);
    let mut p = Pn532::new(SpiTransport::new(SpiMock::new(&script)), NoopDelay::new());
    assert_eq!(p.firmware_version().unwrap().ic, 0x32);
    let (t, _) = p.destroy();
    t.destroy().done();
}

/// A scripted embedded-io serial port: asserts the exact bytes written, answers the
/// scripted bytes, reports ReadReady only when the next step is a read.
struct ScriptedSerial {
    steps: VecDeque<Step>,
}

#[derive(Debug)]
enum Step {
    Write(Vec<u8>),
    Read(Vec<u8>),
}

impl ScriptedSerial {
    fn new(steps: Vec<Step>) -> Self {
        ScriptedSerial {
            steps: steps.into(),
        }
    }
    fn done(&self) {
        assert!(self.steps.is_empty(), "unfinished script: {:?}", self.steps);
    }
}

impl embedded_io::ErrorType for ScriptedSerial {
    type Error = std::io::Error;
}

impl embedded_io::Write for ScriptedSerial {
    fn write(&mut self, buf: &[u8]) -> Result<usize, std::io::Error> {
        match self.steps.front_mut() {
            Some(Step::Write(expect)) => {
                assert!(
                    expect.len() >= buf.len() && expect[..buf.len()] == *buf,
                    "wrote {buf:02x?}, expected {expect:02x?}"
                );
                expect.drain(..buf.len());
                if expect.is_empty() {
                    self.steps.pop_front();
                }
                Ok(buf.len())
            }
            other => panic!("unexpected write {buf:02x?}, next step {other:?}"),
        }
    }
    fn flush(&mut self) -> Result<(), std::io::Error> {
        Ok(())
    }
}

impl embedded_io::Read for ScriptedSerial {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, std::io::Error> {
        match self.steps.front_mut() {
            Some(Step::Read(data)) => {
                let n = buf.len().min(data.len());
                buf[..n].copy_from_slice(&data[..n]);
                data.drain(..n);
                if data.is_empty() {
                    self.steps.pop_front();
                }
                Ok(n)
            }
            other => panic!("unexpected read, next step {other:?}"),
        }
    }
}

impl embedded_io::ReadReady for ScriptedSerial {
    fn read_ready(&mut self) -> Result<bool, std::io::Error> {
        Ok(matches!(self.steps.front(), Some(Step::Read(_))))
    }
}

#[test]
fn hsu_wakes_the_chip_then_configures_the_sam() {
    let serial = ScriptedSerial::new(vec![
        Step::Write(pn532::transport::HSU_WAKEUP.to_vec()),
        Step::Write(host(&[0x14, 0x01, 0x14, 0x01])),
        Step::Read(ACK.to_vec()),
        Step::Read(chip(&[0x15])),
        Step::Write(host(&[0x02])),
        Step::Read(ACK.to_vec()),
        Step::Read(chip(&[0x03, 0x32, 1, 6, 7])),
    ]);
    let mut p = Pn532::new(HsuTransport::new(serial), NoopDelay::new());
    assert_eq!(p.init().unwrap().ic, 0x32);
    p.destroy().0.destroy().done();
}

fn fp_cmd(payload: &[u8]) -> Vec<u8> {
    Packet {
        address: 0xFFFF_FFFF,
        pid: 0x01,
        payload: payload.to_vec(),
    }
    .encode()
}
fn fp_ack(payload: &[u8]) -> Vec<u8> {
    Packet {
        address: 0xFFFF_FFFF,
        pid: 0x07,
        payload: payload.to_vec(),
    }
    .encode()
}

#[test]
fn fingerprint_packet_bytes_match_the_datasheet() {
    // GenImg: EF01 FFFFFFFF 01 0003 01 0005
    assert_eq!(
        fp_cmd(&[0x01]),
        vec![
            0xEF, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, 0x00, 0x03, 0x01, 0x00, 0x05
        ]
    );
}

#[test]
fn fingerprint_every_command_against_a_script() {
    let mut para = vec![0x00];
    para.extend_from_slice(&[0, 0, 0, 0, 0, 200, 0, 3, 0xFF, 0xFF, 0xFF, 0xFF, 0, 2, 0, 6]);
    let steps = vec![
        Step::Write(fp_cmd(&[0x13, 0, 0, 0, 0])),
        Step::Read(fp_ack(&[0x00])),
        Step::Write(fp_cmd(&[0x0F])),
        Step::Read(fp_ack(&para)),
        Step::Write(fp_cmd(&[0x01])),
        Step::Read(fp_ack(&[0x02])),
        Step::Write(fp_cmd(&[0x01])),
        Step::Read(fp_ack(&[0x00])),
        Step::Write(fp_cmd(&[0x02, 1])),
        Step::Read(fp_ack(&[0x00])),
        Step::Write(fp_cmd(&[0x05])),
        Step::Read(fp_ack(&[0x0A])),
        Step::Write(fp_cmd(&[0x06, 1, 0, 5])),
        Step::Read(fp_ack(&[0x00])),
        Step::Write(fp_cmd(&[0x04, 1, 0, 0, 0, 200])),
        Step::Read(fp_ack(&[0x00, 0, 5, 0, 99])),
        Step::Write(fp_cmd(&[0x0C, 0, 5, 0, 1])),
        Step::Read(fp_ack(&[0x00])),
        Step::Write(fp_cmd(&[0x1D])),
        Step::Read(fp_ack(&[0x00, 0, 4])),
    ];
    let mut f = Fingerprint::new(ScriptedSerial::new(steps), NoopDelay::new());
    f.verify_password().unwrap();
    let p = f.read_sys_para().unwrap();
    assert_eq!(
        (p.library_size, p.security_level, p.address, p.packet_size),
        (200, 3, 0xFFFF_FFFF, 2)
    );
    assert!(matches!(
        f.gen_img(),
        Err(fingerprint::Error::Module(Confirmation::NO_FINGER))
    ));
    f.gen_img().unwrap();
    f.img2tz(1).unwrap();
    let e = f.reg_model().unwrap_err();
    assert!(matches!(
        e,
        fingerprint::Error::Module(Confirmation::COMBINE_FAILED)
    ));
    assert!(e.to_string().contains("combine"));
    f.store(1, 5).unwrap();
    let m = f.search(1, 0, 200).unwrap();
    assert_eq!((m.slot, m.score), (5, 99));
    f.delete_char(5, 1).unwrap();
    assert_eq!(f.template_count().unwrap(), 4);
    f.destroy().0.done();
}
