//! The consent readers: real ones from the configuration, or simulated ones when none is
//! configured, owned by the device actor running in its own actix system thread.

use actix::{Actor, Addr};
use hexa_actors::device::{DeviceActor, DeviceConfig};
use hexa_hal::config::ReadersConfig;
use hexa_hal::reader::{CardReader, FingerprintReader};
use hexa_hal::sim::{SimFingerprintHandle, SimPn532Handle};

/// Handles on the simulated readers, for the `/sim/*` control API.
#[derive(Clone)]
pub struct SimHandles {
    /// The simulated PN532 and its virtual cards.
    pub nfc: SimPn532Handle,
    /// The simulated fingerprint module.
    pub fingerprint: SimFingerprintHandle,
}

/// The running device actor.
pub struct Devices {
    /// Address of the device actor.
    pub addr: Addr<DeviceActor>,
    /// Present when the readers are simulated.
    pub sim: Option<SimHandles>,
    system: actix::System,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Devices {
    /// Opens the configured readers (simulated ones when none is configured) and starts
    /// the device actor on a dedicated actix system thread.
    pub fn start(cfg: &ReadersConfig) -> anyhow::Result<Devices> {
        let (card, finger, sim) = open_readers(cfg)?;
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("hexa-devices".into())
            .spawn(move || {
                let sys = actix::System::new();
                sys.block_on(async move {
                    let addr = DeviceActor::new(card, finger, DeviceConfig::default()).start();
                    let _ = tx.send((addr, actix::System::current()));
                });
                let _ = sys.run();
            })?;
        let (addr, system) = rx
            .recv()
            .map_err(|_| anyhow::anyhow!("the device actor failed to start"))?;
        Ok(Devices {
            addr,
            sim,
            system,
            thread: Some(thread),
        })
    }
}

impl Drop for Devices {
    fn drop(&mut self) {
        self.system.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Readers = (
    Option<Box<dyn CardReader>>,
    Option<Box<dyn FingerprintReader>>,
    Option<SimHandles>,
);

fn open_readers(cfg: &ReadersConfig) -> anyhow::Result<Readers> {
    if cfg.nfc.is_none() && cfg.fingerprint.is_none() {
        let (card, nfc) = hexa_hal::sim::simulated_card_reader();
        let (finger, fingerprint) = hexa_hal::sim::simulated_fingerprint_reader();
        tracing::info!("no readers configured: using simulated NFC and fingerprint readers");
        return Ok((
            Some(card),
            Some(finger),
            Some(SimHandles { nfc, fingerprint }),
        ));
    }
    open_hardware(cfg)
}

#[cfg(feature = "linux")]
fn open_hardware(cfg: &ReadersConfig) -> anyhow::Result<Readers> {
    use anyhow::Context;
    let card = match &cfg.nfc {
        Some(n) => {
            Some(hexa_hal::linux::open_card_reader(n).context("cannot open the NFC reader")?)
        }
        None => None,
    };
    let finger = match &cfg.fingerprint {
        Some(f) => Some(
            hexa_hal::linux::open_fingerprint_reader(f)
                .context("cannot open the fingerprint module")?,
        ),
        None => None,
    };
    Ok((card, finger, None))
}

#[cfg(not(feature = "linux"))]
fn open_hardware(_: &ReadersConfig) -> anyhow::Result<Readers> {
    anyhow::bail!("readers are configured but hexa was built without the `linux` feature")
}
