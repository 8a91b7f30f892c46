//! Simulated R30x/AS608 fingerprint module on embedded-io `Read`/`Write`/`ReadReady`:
//! a template library, two character buffers, and a finger that a control handle places,
//! lifts or replaces with an unknown one. Fingers are identified by a number; enrolling
//! while finger N is on the sensor stores N in the slot, and searching finds the slot
//! holding the finger on the sensor with the configured match score.
//!
//! After each captured image the simulated user lifts and presses again (the next GenImg
//! reports no finger, the one after captures again), as a cooperative user does when the
//! module asks for a second scan.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Fault, Faults, SimError, Trigger, WireStats};
use crate::fingerprint::{DEFAULT_ADDRESS, PID_ACK, PID_COMMAND, Packet};

#[derive(Default)]
struct State {
    address: u32,
    password: u32,
    capacity: u16,
    templates: BTreeMap<u16, u32>,
    buffers: [Option<u32>; 2],
    image: Option<u32>,
    finger: Option<u32>,
    retap: bool,
    next_unknown: u32,
    score: u16,
    rx: Vec<u8>,
    tx: VecDeque<u8>,
    faults: Faults,
    stats: WireStats,
}

fn lock(s: &Mutex<State>) -> MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    fn on_bytes(&mut self, bytes: &[u8]) -> Result<(), SimError> {
        self.stats.host_to_device += bytes.len() as u64;
        self.stats.transactions += 1;
        self.rx.extend_from_slice(bytes);
        loop {
            match Packet::decode(&self.rx) {
                Ok(Ok((p, used))) => {
                    self.rx.drain(..used);
                    self.on_packet(p)?;
                }
                Ok(Err(_)) => return Ok(()),
                Err(_) => {
                    // Resynchronise on the next header byte; report a receive error.
                    self.rx.remove(0);
                    let pos = self
                        .rx
                        .iter()
                        .position(|b| *b == 0xEF)
                        .unwrap_or(self.rx.len());
                    self.rx.drain(..pos);
                    self.reply(0x01, &[]);
                    return Ok(());
                }
            }
        }
    }

    fn reply(&mut self, code: u8, data: &[u8]) -> Vec<u8> {
        let mut payload = vec![code];
        payload.extend_from_slice(data);
        Packet {
            address: self.address,
            pid: PID_ACK,
            payload,
        }
        .encode()
    }

    fn on_packet(&mut self, p: Packet) -> Result<(), SimError> {
        if p.pid != PID_COMMAND || p.address != self.address || p.payload.is_empty() {
            return Ok(());
        }
        let instr = p.payload[0];
        let fault = self.faults.take(instr);
        let wire = match fault {
            Some(Fault::BusError) => return Err(SimError::InjectedBusError),
            Some(Fault::Silence) => return Ok(()),
            Some(Fault::Nack) | Some(Fault::ErrorFrame) => self.reply(0x01, &[]),
            other => {
                if other == Some(Fault::Lift) {
                    self.finger = None;
                }
                let (code, data) = self.execute(instr, &p.payload[1..]);
                let mut w = self.reply(code, &data);
                match other {
                    Some(Fault::CorruptChecksum) => {
                        let i = w.len() - 1;
                        w[i] ^= 0x5A;
                    }
                    Some(Fault::Truncate) => w.truncate(w.len() / 2),
                    _ => {}
                }
                w
            }
        };
        self.tx.extend(wire);
        Ok(())
    }

    fn execute(&mut self, instr: u8, p: &[u8]) -> (u8, Vec<u8>) {
        let u16_at = |i: usize| p.get(i..i + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
        let buffer = |i: usize| match p.get(i) {
            Some(1) => Some(0usize),
            Some(2) => Some(1usize),
            _ => None,
        };
        match instr {
            0x01 => match (self.finger, self.retap) {
                (Some(f), false) => {
                    self.image = Some(f);
                    self.retap = true;
                    (0x00, vec![])
                }
                (Some(_), true) => {
                    self.retap = false;
                    (0x02, vec![])
                }
                (None, _) => (0x02, vec![]),
            },
            0x02 => match (buffer(0), self.image) {
                (Some(b), Some(img)) => {
                    self.buffers[b] = Some(img);
                    (0x00, vec![])
                }
                (None, _) => (0x01, vec![]),
                (_, None) => (0x15, vec![]),
            },
            0x05 => match self.buffers {
                [Some(a), Some(b)] if a == b => (0x00, vec![]),
                _ => (0x0A, vec![]),
            },
            0x06 => match (buffer(0), u16_at(1)) {
                (Some(b), Some(page)) if page < self.capacity => match self.buffers[b] {
                    Some(f) => {
                        self.templates.insert(page, f);
                        (0x00, vec![])
                    }
                    None => (0x0C, vec![]),
                },
                (Some(_), Some(_)) => (0x0B, vec![]),
                _ => (0x01, vec![]),
            },
            0x04 => match (buffer(0), u16_at(1), u16_at(3)) {
                (Some(b), Some(start), Some(count)) => {
                    let Some(f) = self.buffers[b] else {
                        return (0x15, vec![]);
                    };
                    let end = start.saturating_add(count);
                    match self.templates.range(start..end).find(|(_, t)| **t == f) {
                        Some((slot, _)) => {
                            let mut d = slot.to_be_bytes().to_vec();
                            d.extend_from_slice(&self.score.to_be_bytes());
                            (0x00, d)
                        }
                        None => (0x09, vec![]),
                    }
                }
                _ => (0x01, vec![]),
            },
            0x0C => match (u16_at(0), u16_at(2)) {
                (Some(page), Some(n)) if page as u32 + n as u32 <= self.capacity as u32 => {
                    let keys: Vec<u16> = self
                        .templates
                        .range(page..page + n)
                        .map(|(k, _)| *k)
                        .collect();
                    for k in keys {
                        self.templates.remove(&k);
                    }
                    (0x00, vec![])
                }
                _ => (0x10, vec![]),
            },
            0x0F => {
                let mut d = Vec::with_capacity(16);
                d.extend_from_slice(&0u16.to_be_bytes());
                d.extend_from_slice(&0u16.to_be_bytes());
                d.extend_from_slice(&self.capacity.to_be_bytes());
                d.extend_from_slice(&3u16.to_be_bytes());
                d.extend_from_slice(&self.address.to_be_bytes());
                d.extend_from_slice(&2u16.to_be_bytes());
                d.extend_from_slice(&6u16.to_be_bytes());
                (0x00, d)
            }
            0x13 => match p.get(..4) {
                Some(pw) if *pw == self.password.to_be_bytes() => (0x00, vec![]),
                Some(_) => (0x13, vec![]),
                None => (0x01, vec![]),
            },
            0x1D => (0x00, (self.templates.len() as u16).to_be_bytes().to_vec()),
            _ => (0x01, vec![]),
        }
    }
}

/// The simulated module (a UART endpoint).
pub struct SimFingerprint {
    state: Arc<Mutex<State>>,
}

/// Control handle of a simulated fingerprint module.
#[derive(Clone)]
pub struct SimFingerprintHandle {
    state: Arc<Mutex<State>>,
}

impl Default for SimFingerprint {
    fn default() -> Self {
        Self::new()
    }
}

impl SimFingerprint {
    /// A module at the default address, password 0, 200 slots, match score 120.
    pub fn new() -> Self {
        SimFingerprint {
            state: Arc::new(Mutex::new(State {
                address: DEFAULT_ADDRESS,
                capacity: 200,
                score: 120,
                next_unknown: 0x8000_0000,
                ..State::default()
            })),
        }
    }

    /// The control handle.
    pub fn handle(&self) -> SimFingerprintHandle {
        SimFingerprintHandle {
            state: self.state.clone(),
        }
    }
}

impl SimFingerprintHandle {
    /// Another UART endpoint on the same module.
    pub fn device(&self) -> SimFingerprint {
        SimFingerprint {
            state: self.state.clone(),
        }
    }

    /// Places finger `finger` on the sensor.
    pub fn place_finger(&self, finger: u32) {
        let mut s = lock(&self.state);
        s.finger = Some(finger);
        s.retap = false;
    }

    /// Places the finger enrolled in `slot`; false when the slot is empty.
    pub fn place_enrolled(&self, slot: u16) -> bool {
        let mut s = lock(&self.state);
        match s.templates.get(&slot).copied() {
            Some(f) => {
                s.finger = Some(f);
                s.retap = false;
                true
            }
            None => false,
        }
    }

    /// Places a finger that matches no template; returns its number.
    pub fn place_unknown(&self) -> u32 {
        let mut s = lock(&self.state);
        let f = s.next_unknown;
        s.next_unknown = s.next_unknown.wrapping_add(1) | 0x8000_0000;
        s.finger = Some(f);
        s.retap = false;
        f
    }

    /// Lifts the finger.
    pub fn lift_finger(&self) {
        lock(&self.state).finger = None;
    }

    /// Sets the score reported by Search.
    pub fn set_match_score(&self, score: u16) {
        lock(&self.state).score = score;
    }

    /// Sets the module password (VfyPwd).
    pub fn set_password(&self, password: u32) {
        lock(&self.state).password = password;
    }

    /// Finger stored in `slot`.
    pub fn template(&self, slot: u16) -> Option<u32> {
        lock(&self.state).templates.get(&slot).copied()
    }

    /// Injects a fault that fires once.
    pub fn inject(&self, fault: Fault, trigger: Trigger) {
        lock(&self.state).faults.push(fault, trigger);
    }

    /// Bytes on the wire so far.
    pub fn stats(&self) -> WireStats {
        lock(&self.state).stats
    }

    /// Resets the wire counters.
    pub fn reset_stats(&self) {
        lock(&self.state).stats = WireStats::default();
    }
}

impl embedded_io::ErrorType for SimFingerprint {
    type Error = SimError;
}

impl embedded_io::Write for SimFingerprint {
    fn write(&mut self, buf: &[u8]) -> Result<usize, SimError> {
        lock(&self.state).on_bytes(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> Result<(), SimError> {
        Ok(())
    }
}

impl embedded_io::Read for SimFingerprint {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, SimError> {
        let mut s = lock(&self.state);
        if s.tx.is_empty() {
            return Err(SimError::NoData);
        }
        let n = buf.len().min(s.tx.len());
        for (dst, src) in buf.iter_mut().zip(s.tx.drain(..n)) {
            *dst = src;
        }
        s.stats.device_to_host += n as u64;
        Ok(n)
    }
}

impl embedded_io::ReadReady for SimFingerprint {
    fn read_ready(&mut self) -> Result<bool, SimError> {
        Ok(!lock(&self.state).tx.is_empty())
    }
}
