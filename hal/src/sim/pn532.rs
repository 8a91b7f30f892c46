//! Simulated PN532: answers frames over I2C (embedded-hal `I2c`, ready byte + frame) and
//! over HSU (embedded-io `Read`/`Write`/`ReadReady`) as the chip does, with virtual cards
//! placed on and lifted off its antenna through a shared [`SimPn532Handle`].

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use embedded_hal::i2c::{I2c, Operation, SevenBitAddress};

use super::card::{CardConfig, VirtualCard};
use super::{Fault, Faults, SimError, Trigger, WireStats};
use crate::pn532::frame::{self, ACK, Decoded, ERROR_FRAME, Frame, NACK, TFI_HOST, TFI_PN532};
use crate::pn532::{MAX_EXCHANGE_CHUNK, PN532_I2C_ADDRESS};

/// ATS the virtual cards answer to RATS (TL, T0, TA, TB, TC).
const ATS: [u8; 5] = [0x05, 0x78, 0x80, 0x70, 0x02];
/// Cap on a host-chained (MI) command.
const MAX_CHAINED_COMMAND: usize = 4096;

#[derive(Default)]
struct State {
    cards: BTreeMap<u32, VirtualCard>,
    next_id: u32,
    present: Option<u32>,
    target_active: bool,
    mi_in: Vec<u8>,
    mi_out: Vec<u8>,
    i2c_out: VecDeque<Vec<u8>>,
    hsu_rx: Vec<u8>,
    hsu_tx: VecDeque<u8>,
    last: Vec<Vec<u8>>,
    faults: Faults,
    stats: WireStats,
}

fn lock(s: &Mutex<State>) -> MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    fn lift(&mut self) {
        if let Some(card) = self.present.and_then(|id| self.cards.get_mut(&id)) {
            card.power_cycle();
        }
        self.present = None;
        self.target_active = false;
        self.mi_in.clear();
        self.mi_out.clear();
    }

    fn on_frame(&mut self, f: Frame) -> Result<Vec<Vec<u8>>, SimError> {
        let data = match f {
            Frame::Ack => return Ok(Vec::new()),
            Frame::Nack => return Ok(self.last.clone()),
            Frame::Error => return Ok(Vec::new()),
            Frame::Info { tfi, .. } if tfi != TFI_HOST => return Ok(Vec::new()),
            Frame::Info { data, .. } if data.is_empty() => {
                return Ok(vec![ACK.to_vec(), ERROR_FRAME.to_vec()]);
            }
            Frame::Info { data, .. } => data,
        };
        let code = data[0];
        let fault = self.faults.take(code);
        let out = match fault {
            Some(Fault::BusError) => return Err(SimError::InjectedBusError),
            Some(Fault::Silence) => Vec::new(),
            Some(Fault::Nack) => vec![NACK.to_vec()],
            Some(Fault::ErrorFrame) => vec![ACK.to_vec(), ERROR_FRAME.to_vec()],
            other => {
                if other == Some(Fault::Lift) {
                    self.lift();
                }
                let resp = match self.execute(code, &data[1..]) {
                    Some(r) => {
                        let mut d = vec![code.wrapping_add(1)];
                        d.extend_from_slice(&r);
                        frame::encode(TFI_PN532, &d).unwrap_or_else(|_| ERROR_FRAME.to_vec())
                    }
                    None => ERROR_FRAME.to_vec(),
                };
                let resp = match other {
                    Some(Fault::CorruptChecksum) => {
                        let mut r = resp;
                        let i = r.len() - 2;
                        r[i] ^= 0x5A;
                        r
                    }
                    Some(Fault::Truncate) => resp[..resp.len() / 2].to_vec(),
                    _ => resp,
                };
                vec![ACK.to_vec(), resp]
            }
        };
        self.last = out.clone();
        Ok(out)
    }

    fn execute(&mut self, code: u8, p: &[u8]) -> Option<Vec<u8>> {
        match code {
            0x02 => Some(vec![0x32, 0x01, 0x06, 0x07]),
            0x14 if !p.is_empty() => Some(Vec::new()),
            0x4A if p.len() >= 2 => {
                if p[1] != 0x00 {
                    return Some(vec![0]);
                }
                let Some(card) = self.present.and_then(|id| self.cards.get_mut(&id)) else {
                    return Some(vec![0]);
                };
                card.power_cycle();
                self.target_active = true;
                self.mi_in.clear();
                self.mi_out.clear();
                let mut r = vec![1, 1, 0x00, 0x44, 0x20, 7];
                r.extend_from_slice(&card.uid());
                r.extend_from_slice(&ATS);
                Some(r)
            }
            0x40 if !p.is_empty() => Some(self.exchange(p[0], &p[1..])),
            0x52 if !p.is_empty() => {
                self.target_active = false;
                Some(vec![0])
            }
            _ => None,
        }
    }

    fn exchange(&mut self, tg: u8, data: &[u8]) -> Vec<u8> {
        let Some(id) = self.present else {
            self.target_active = false;
            return vec![0x01];
        };
        if !self.target_active || tg & 0x3F != 1 {
            return vec![0x27];
        }
        if data.is_empty() && !self.mi_out.is_empty() {
            return self.next_chunk(Vec::new());
        }
        if tg & 0x40 != 0 {
            if self.mi_in.len() + data.len() > MAX_CHAINED_COMMAND {
                self.mi_in.clear();
                return vec![0x07];
            }
            self.mi_in.extend_from_slice(data);
            return vec![0x00];
        }
        let mut apdu = std::mem::take(&mut self.mi_in);
        apdu.extend_from_slice(data);
        let Some(card) = self.cards.get_mut(&id) else {
            return vec![0x01];
        };
        let resp = card.process_apdu(&apdu);
        self.next_chunk(resp)
    }

    fn next_chunk(&mut self, fresh: Vec<u8>) -> Vec<u8> {
        let mut all = if fresh.is_empty() {
            std::mem::take(&mut self.mi_out)
        } else {
            fresh
        };
        if all.len() > MAX_EXCHANGE_CHUNK {
            self.mi_out = all.split_off(MAX_EXCHANGE_CHUNK);
            let mut r = vec![0x40];
            r.extend_from_slice(&all);
            r
        } else {
            self.mi_out.clear();
            let mut r = vec![0x00];
            r.extend_from_slice(&all);
            r
        }
    }

    fn i2c_write(&mut self, bytes: &[u8]) -> Result<(), SimError> {
        self.stats.host_to_device += bytes.len() as u64;
        self.i2c_out.clear();
        match frame::decode(bytes) {
            Ok(Decoded::Complete(f, _)) => {
                let out = self.on_frame(f)?;
                self.i2c_out.extend(out);
            }
            Ok(Decoded::Incomplete(_)) | Err(_) => self.i2c_out.push_back(NACK.to_vec()),
        }
        Ok(())
    }

    fn i2c_read(&mut self, buf: &mut [u8]) {
        self.stats.device_to_host += buf.len() as u64;
        buf.fill(0);
        let Some(front) = self.i2c_out.front() else {
            return;
        };
        if let Some((status, rest)) = buf.split_first_mut() {
            *status = 0x01;
            let n = rest.len().min(front.len());
            rest[..n].copy_from_slice(&front[..n]);
            if rest.len() >= front.len() {
                self.i2c_out.pop_front();
            }
        }
    }

    fn hsu_write(&mut self, bytes: &[u8]) -> Result<(), SimError> {
        self.stats.host_to_device += bytes.len() as u64;
        self.stats.transactions += 1;
        self.hsu_rx.extend_from_slice(bytes);
        loop {
            let skip = self.hsu_rx.iter().take_while(|b| **b == 0x55).count();
            self.hsu_rx.drain(..skip);
            if self.hsu_rx.is_empty() {
                return Ok(());
            }
            match frame::decode(&self.hsu_rx) {
                Ok(Decoded::Complete(f, used)) => {
                    self.hsu_rx.drain(..used);
                    let out = self.on_frame(f)?;
                    self.hsu_tx.extend(out.into_iter().flatten());
                }
                Ok(Decoded::Incomplete(_)) => return Ok(()),
                Err(_) => {
                    self.hsu_rx.clear();
                    self.hsu_tx.extend(NACK);
                    return Ok(());
                }
            }
        }
    }
}

/// The simulated chip (a bus endpoint). Clone-free; get more views through the handle.
pub struct SimPn532 {
    state: Arc<Mutex<State>>,
}

/// Control handle of a simulated PN532: cards, presence, faults, wire statistics.
#[derive(Clone)]
pub struct SimPn532Handle {
    state: Arc<Mutex<State>>,
}

impl Default for SimPn532 {
    fn default() -> Self {
        Self::new()
    }
}

impl SimPn532 {
    /// A chip with no cards.
    pub fn new() -> Self {
        SimPn532 {
            state: Arc::new(Mutex::new(State {
                next_id: 1,
                ..State::default()
            })),
        }
    }

    /// The control handle.
    pub fn handle(&self) -> SimPn532Handle {
        SimPn532Handle {
            state: self.state.clone(),
        }
    }
}

impl SimPn532Handle {
    /// Another bus endpoint on the same chip (e.g. after a driver gave its bus back).
    pub fn device(&self) -> SimPn532 {
        SimPn532 {
            state: self.state.clone(),
        }
    }

    /// Makes a new virtual card (not yet on the reader); returns its ID.
    pub fn create_card(&self, config: &CardConfig) -> Result<u32, SimError> {
        let card = VirtualCard::new(config)?;
        let mut s = lock(&self.state);
        let id = s.next_id;
        s.next_id += 1;
        s.cards.insert(id, card);
        Ok(id)
    }

    /// IDs of all virtual cards.
    pub fn cards(&self) -> Vec<u32> {
        lock(&self.state).cards.keys().copied().collect()
    }

    /// Places card `id` on the reader (lifting any other).
    pub fn present(&self, id: u32) -> Result<(), SimError> {
        let mut s = lock(&self.state);
        if !s.cards.contains_key(&id) {
            return Err(SimError::UnknownCard(id));
        }
        s.lift();
        s.present = Some(id);
        Ok(())
    }

    /// Lifts the card off the reader.
    pub fn lift(&self) {
        lock(&self.state).lift();
    }

    /// The card on the reader.
    pub fn present_card(&self) -> Option<u32> {
        lock(&self.state).present
    }

    /// Signature counter of card `id`.
    pub fn sign_count(&self, id: u32) -> Option<u32> {
        lock(&self.state)
            .cards
            .get(&id)
            .map(VirtualCard::sign_count)
    }

    /// Injects a fault that fires once, at `trigger`.
    pub fn inject(&self, fault: Fault, trigger: Trigger) {
        lock(&self.state).faults.push(fault, trigger);
    }

    /// Drops pending faults.
    pub fn clear_faults(&self) {
        lock(&self.state).faults.clear();
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

impl embedded_hal::i2c::ErrorType for SimPn532 {
    type Error = SimError;
}

impl I2c<SevenBitAddress> for SimPn532 {
    fn transaction(
        &mut self,
        address: u8,
        operations: &mut [Operation<'_>],
    ) -> Result<(), SimError> {
        if address != PN532_I2C_ADDRESS {
            return Err(SimError::NoDevice(address));
        }
        let mut s = lock(&self.state);
        for op in operations {
            s.stats.transactions += 1;
            match op {
                Operation::Write(bytes) => s.i2c_write(bytes)?,
                Operation::Read(buf) => s.i2c_read(buf),
            }
        }
        Ok(())
    }
}

impl embedded_io::ErrorType for SimPn532 {
    type Error = SimError;
}

impl embedded_io::Write for SimPn532 {
    fn write(&mut self, buf: &[u8]) -> Result<usize, SimError> {
        lock(&self.state).hsu_write(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> Result<(), SimError> {
        Ok(())
    }
}

impl embedded_io::Read for SimPn532 {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, SimError> {
        let mut s = lock(&self.state);
        if s.hsu_tx.is_empty() {
            return Err(SimError::NoData);
        }
        let n = buf.len().min(s.hsu_tx.len());
        for (dst, src) in buf.iter_mut().zip(s.hsu_tx.drain(..n)) {
            *dst = src;
        }
        s.stats.device_to_host += n as u64;
        Ok(n)
    }
}

impl embedded_io::ReadReady for SimPn532 {
    fn read_ready(&mut self) -> Result<bool, SimError> {
        Ok(!lock(&self.state).hsu_tx.is_empty())
    }
}
