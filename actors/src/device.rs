//! The device actor: owns the consent readers (a card reader and a fingerprint reader,
//! built by the caller as boxed [`CardReader`] / [`FingerprintReader`] so that this crate
//! never names a Linux device), runs one ceremony at a time per reader with a timeout,
//! waits for the card or finger, and publishes progress (waiting, card present, signing,
//! done, failed) to subscribers and to [`Status`].
//!
//! Driver calls block, so each ceremony runs on the blocking thread pool
//! (`actix_rt::task::spawn_blocking`), never on the actor's executor. A reader that fails
//! (bus error, timeout, garbled frames) is marked for re-initialisation and is
//! re-initialised at the start of its next ceremony, so a reader that disappears and comes
//! back is used again without restarting the appliance.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use actix::prelude::*;
use hexa_hal::ctap2::{Assertion, AssertionRequest, Enrollment, MakeCredentialRequest};
use hexa_hal::fingerprint::Match;
use hexa_hal::pn532::Target;
use hexa_hal::reader::{CardReader, FingerprintReader, ReaderError};
use serde::Serialize;
use thiserror::Error;

/// Which reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReaderKind {
    /// The NFC card reader.
    Card,
    /// The fingerprint module.
    Fingerprint,
}

/// Progress of a ceremony, for a front-desk screen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Progress {
    /// No ceremony has run yet.
    Idle,
    /// Waiting for the patient to present a card or finger.
    Waiting,
    /// A card (or finger) is on the reader.
    CardPresent,
    /// The card is signing (or the module is matching).
    Signing,
    /// The ceremony succeeded.
    Done,
    /// The ceremony failed.
    Failed {
        /// Stable error code (see [`DeviceError::code`]).
        code: String,
        /// What happened, for a person.
        reason: String,
    },
}

/// A progress change, sent to subscribers.
#[derive(Message, Debug, Clone, PartialEq, Eq, Serialize)]
#[rtype(result = "()")]
pub struct ProgressEvent {
    /// Which reader.
    pub reader: ReaderKind,
    /// Ceremony number (increases per ceremony, shared by both readers).
    pub ceremony: u64,
    /// New state.
    pub progress: Progress,
}

/// Errors of the device actor.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// No such reader is configured.
    #[error("no {0:?} reader is configured")]
    NoReader(ReaderKind),
    /// The reader is running another ceremony.
    #[error("the {0:?} reader is busy with another ceremony; try again when it is done")]
    Busy(ReaderKind),
    /// No card or finger was presented in time.
    #[error("no card or finger was presented in time")]
    Timeout,
    /// The reader, card or module failed.
    #[error("{0}")]
    Reader(#[from] ReaderError),
    /// The blocking task could not run to completion.
    #[error("device task failed: {0}")]
    Internal(String),
}

impl DeviceError {
    /// Stable code for API errors.
    pub fn code(&self) -> &'static str {
        match self {
            DeviceError::NoReader(_) => "device-no-reader",
            DeviceError::Busy(_) => "device-busy",
            DeviceError::Timeout => "device-timeout",
            DeviceError::Reader(e) if e.is_card_gone() => "device-card-removed",
            DeviceError::Reader(e) if e.is_reader_fault() => "device-reader-fault",
            DeviceError::Reader(ReaderError::Card(hexa_hal::ctap2::Error::PinRequired)) => {
                "device-pin-required"
            }
            DeviceError::Reader(ReaderError::Card(_)) => "device-card-refused",
            DeviceError::Reader(ReaderError::Fingerprint(
                hexa_hal::fingerprint::Error::Module(_),
            )) => "device-fingerprint-refused",
            DeviceError::Reader(_) => "device-reader-fault",
            DeviceError::Internal(_) => "device-internal",
        }
    }
}

/// Timing of the ceremonies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Time a patient has to present a card or finger.
    pub ceremony_timeout: Duration,
    /// Pause between two polls for a card or finger.
    pub poll_interval: Duration,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            ceremony_timeout: Duration::from_secs(30),
            poll_interval: Duration::from_millis(100),
        }
    }
}

/// State of one reader, as reported by [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReaderStatus {
    /// A ceremony is running.
    pub busy: bool,
    /// The reader will be re-initialised before its next use (it failed, or never ran).
    pub needs_init: bool,
    /// Latest ceremony number on this reader (0: none yet).
    pub ceremony: u64,
    /// Latest progress.
    pub progress: Progress,
}

/// Status of all readers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceStatus {
    /// The card reader, when configured.
    pub card: Option<ReaderStatus>,
    /// The fingerprint module, when configured.
    pub fingerprint: Option<ReaderStatus>,
}

/// Enrol a card: make a credential for the patient.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<Enrollment, DeviceError>")]
pub struct EnrollCard {
    /// RP ID naming the appliance.
    pub rp_id: String,
    /// User handle.
    pub user_id: Vec<u8>,
    /// User name.
    pub user_name: String,
    /// Hash of the enrolment challenge.
    pub client_data_hash: [u8; 32],
    /// Card PIN, if the patient set one.
    pub pin: Option<String>,
}

/// Get a consent assertion from an enrolled card.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<Assertion, DeviceError>")]
pub struct Assert {
    /// RP ID of the enrolment.
    pub rp_id: String,
    /// Hash of the consent challenge.
    pub client_data_hash: [u8; 32],
    /// The patient's enrolled credential IDs.
    pub allow_credential_ids: Vec<Vec<u8>>,
    /// Card PIN, if needed.
    pub pin: Option<String>,
}

/// Enrol a finger into a template slot.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Result<u16, DeviceError>")]
pub struct EnrollFinger {
    /// Library slot.
    pub slot: u16,
}

/// Identify a finger.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Result<Match, DeviceError>")]
pub struct IdentifyFinger;

/// A ceremony message ([`EnrollCard`], [`Assert`], [`EnrollFinger`], [`IdentifyFinger`])
/// with its own deadline instead of the actor's configured
/// [`DeviceConfig::ceremony_timeout`], for callers that let the requester choose how long
/// the patient has to present a card or finger.
#[derive(Debug, Clone)]
pub struct Timed<M> {
    /// The ceremony.
    pub message: M,
    /// Time the patient has to present a card or finger.
    pub timeout: Duration,
}

impl<M: Message> Message for Timed<M> {
    type Result = M::Result;
}

/// Current state of the readers.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "DeviceStatus")]
pub struct Status;

/// Subscribe to progress events.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Subscribe(pub Recipient<ProgressEvent>);

#[derive(Default)]
struct Hub {
    latest: Mutex<BTreeMap<ReaderKind, (u64, Progress)>>,
    subscribers: Mutex<Vec<Recipient<ProgressEvent>>>,
    next: AtomicU64,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    fn publish(&self, reader: ReaderKind, ceremony: u64, progress: Progress) {
        lock(&self.latest).insert(reader, (ceremony, progress.clone()));
        let mut subs = lock(&self.subscribers);
        subs.retain(|s| s.connected());
        for s in subs.iter() {
            s.do_send(ProgressEvent {
                reader,
                ceremony,
                progress: progress.clone(),
            });
        }
    }
    fn fail(&self, reader: ReaderKind, ceremony: u64, e: &DeviceError) {
        self.publish(
            reader,
            ceremony,
            Progress::Failed {
                code: e.code().to_owned(),
                reason: e.to_string(),
            },
        );
    }
}

struct Slot<R: ?Sized> {
    reader: Arc<Mutex<Box<R>>>,
    busy: Arc<AtomicBool>,
    needs_init: Arc<AtomicBool>,
}

impl<R: ?Sized> Slot<R> {
    fn new(reader: Box<R>) -> Self {
        Slot {
            reader: Arc::new(Mutex::new(reader)),
            busy: Arc::new(AtomicBool::new(false)),
            needs_init: Arc::new(AtomicBool::new(true)),
        }
    }
    fn status(&self, kind: ReaderKind, hub: &Hub) -> ReaderStatus {
        let (ceremony, progress) = lock(&hub.latest)
            .get(&kind)
            .cloned()
            .unwrap_or((0, Progress::Idle));
        ReaderStatus {
            busy: self.busy.load(Ordering::SeqCst),
            needs_init: self.needs_init.load(Ordering::SeqCst),
            ceremony,
            progress,
        }
    }
}

/// Clears the busy flag when the ceremony ends, however it ends.
struct BusyGuard(Arc<AtomicBool>);
impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Everything a blocking ceremony needs.
struct Job<R: ?Sized> {
    kind: ReaderKind,
    reader: Arc<Mutex<Box<R>>>,
    needs_init: Arc<AtomicBool>,
    _busy: BusyGuard,
    hub: Arc<Hub>,
    ceremony: u64,
    deadline: Instant,
    poll: Duration,
}

impl<R: ?Sized> Job<R> {
    fn finish<T>(&self, r: Result<T, DeviceError>) -> Result<T, DeviceError> {
        match &r {
            Ok(_) => self.hub.publish(self.kind, self.ceremony, Progress::Done),
            Err(e) => {
                if let DeviceError::Reader(re) = e
                    && re.is_reader_fault()
                {
                    self.needs_init.store(true, Ordering::SeqCst);
                }
                self.hub.fail(self.kind, self.ceremony, e);
            }
        }
        r
    }
}

fn card_ceremony<T>(
    job: Job<dyn CardReader>,
    op: impl FnOnce(&mut dyn CardReader, &Target) -> Result<T, ReaderError>,
) -> Result<T, DeviceError> {
    job.hub.publish(job.kind, job.ceremony, Progress::Waiting);
    let mut reader = lock(&job.reader);
    let r = (|| {
        if job.needs_init.load(Ordering::SeqCst) {
            reader.init()?;
            job.needs_init.store(false, Ordering::SeqCst);
        }
        let target = loop {
            if let Some(t) = reader.detect()? {
                break t;
            }
            if Instant::now() >= job.deadline {
                return Err(DeviceError::Timeout);
            }
            std::thread::sleep(job.poll);
        };
        job.hub
            .publish(job.kind, job.ceremony, Progress::CardPresent);
        job.hub.publish(job.kind, job.ceremony, Progress::Signing);
        let result = op(&mut **reader, &target);
        if result.is_ok() {
            // The card may already be gone; the result stands either way.
            let _ = reader.release(&target);
        }
        Ok(result?)
    })();
    drop(reader);
    job.finish(r)
}

fn finger_ceremony<T>(
    job: Job<dyn FingerprintReader>,
    op: impl FnOnce(&mut dyn FingerprintReader) -> Result<T, ReaderError>,
) -> Result<T, DeviceError> {
    job.hub.publish(job.kind, job.ceremony, Progress::Waiting);
    let mut reader = lock(&job.reader);
    let r = (|| {
        if job.needs_init.load(Ordering::SeqCst) {
            reader.init()?;
            job.needs_init.store(false, Ordering::SeqCst);
        }
        while !reader.capture()? {
            if Instant::now() >= job.deadline {
                return Err(DeviceError::Timeout);
            }
            std::thread::sleep(job.poll);
        }
        job.hub
            .publish(job.kind, job.ceremony, Progress::CardPresent);
        job.hub.publish(job.kind, job.ceremony, Progress::Signing);
        Ok(op(&mut **reader)?)
    })();
    drop(reader);
    job.finish(r)
}

/// The device actor.
pub struct DeviceActor {
    card: Option<Slot<dyn CardReader>>,
    finger: Option<Slot<dyn FingerprintReader>>,
    config: DeviceConfig,
    hub: Arc<Hub>,
}

impl DeviceActor {
    /// An actor owning the given readers (either may be absent).
    pub fn new(
        card: Option<Box<dyn CardReader>>,
        fingerprint: Option<Box<dyn FingerprintReader>>,
        config: DeviceConfig,
    ) -> Self {
        DeviceActor {
            card: card.map(Slot::new),
            finger: fingerprint.map(Slot::new),
            config,
            hub: Arc::new(Hub::default()),
        }
    }

    fn job<R: ?Sized>(
        &self,
        kind: ReaderKind,
        slot: Option<&Slot<R>>,
        timeout: Option<Duration>,
    ) -> Result<Job<R>, DeviceError> {
        let slot = slot.ok_or(DeviceError::NoReader(kind))?;
        if slot.busy.swap(true, Ordering::SeqCst) {
            return Err(DeviceError::Busy(kind));
        }
        Ok(Job {
            kind,
            reader: slot.reader.clone(),
            needs_init: slot.needs_init.clone(),
            _busy: BusyGuard(slot.busy.clone()),
            hub: self.hub.clone(),
            ceremony: self.hub.next.fetch_add(1, Ordering::SeqCst) + 1,
            deadline: Instant::now() + timeout.unwrap_or(self.config.ceremony_timeout),
            poll: self.config.poll_interval,
        })
    }
}

impl Actor for DeviceActor {
    type Context = Context<Self>;
}

fn off_executor<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, DeviceError> + Send + 'static,
) -> ResponseFuture<Result<T, DeviceError>> {
    let handle = actix_rt::task::spawn_blocking(f);
    Box::pin(async move {
        handle
            .await
            .map_err(|e| DeviceError::Internal(e.to_string()))?
    })
}

fn ready<T: Send + 'static>(r: Result<T, DeviceError>) -> ResponseFuture<Result<T, DeviceError>> {
    Box::pin(async move { r })
}

impl DeviceActor {
    fn enroll_card(
        &self,
        m: EnrollCard,
        timeout: Option<Duration>,
    ) -> ResponseFuture<Result<Enrollment, DeviceError>> {
        let job = match self.job(ReaderKind::Card, self.card.as_ref(), timeout) {
            Ok(j) => j,
            Err(e) => return ready(Err(e)),
        };
        let req = MakeCredentialRequest {
            rp_id: m.rp_id,
            user_id: m.user_id,
            user_name: m.user_name,
            client_data_hash: m.client_data_hash,
            pin: m.pin,
        };
        off_executor(move || card_ceremony(job, |r, t| r.enroll(t, &req)))
    }

    fn assert(
        &self,
        m: Assert,
        timeout: Option<Duration>,
    ) -> ResponseFuture<Result<Assertion, DeviceError>> {
        let job = match self.job(ReaderKind::Card, self.card.as_ref(), timeout) {
            Ok(j) => j,
            Err(e) => return ready(Err(e)),
        };
        let req = AssertionRequest {
            rp_id: m.rp_id,
            client_data_hash: m.client_data_hash,
            allow_credential_ids: m.allow_credential_ids,
            pin: m.pin,
        };
        off_executor(move || card_ceremony(job, |r, t| r.assert(t, &req)))
    }

    fn enroll_finger(
        &self,
        m: EnrollFinger,
        timeout: Option<Duration>,
    ) -> ResponseFuture<Result<u16, DeviceError>> {
        let job = match self.job(ReaderKind::Fingerprint, self.finger.as_ref(), timeout) {
            Ok(j) => j,
            Err(e) => return ready(Err(e)),
        };
        off_executor(move || finger_ceremony(job, |r| r.enroll_captured(m.slot).map(|()| m.slot)))
    }

    fn identify_finger(
        &self,
        timeout: Option<Duration>,
    ) -> ResponseFuture<Result<Match, DeviceError>> {
        let job = match self.job(ReaderKind::Fingerprint, self.finger.as_ref(), timeout) {
            Ok(j) => j,
            Err(e) => return ready(Err(e)),
        };
        off_executor(move || finger_ceremony(job, |r| r.identify_captured()))
    }
}

impl Handler<EnrollCard> for DeviceActor {
    type Result = ResponseFuture<Result<Enrollment, DeviceError>>;
    fn handle(&mut self, m: EnrollCard, _: &mut Context<Self>) -> Self::Result {
        self.enroll_card(m, None)
    }
}

impl Handler<Assert> for DeviceActor {
    type Result = ResponseFuture<Result<Assertion, DeviceError>>;
    fn handle(&mut self, m: Assert, _: &mut Context<Self>) -> Self::Result {
        self.assert(m, None)
    }
}

impl Handler<EnrollFinger> for DeviceActor {
    type Result = ResponseFuture<Result<u16, DeviceError>>;
    fn handle(&mut self, m: EnrollFinger, _: &mut Context<Self>) -> Self::Result {
        self.enroll_finger(m, None)
    }
}

impl Handler<IdentifyFinger> for DeviceActor {
    type Result = ResponseFuture<Result<Match, DeviceError>>;
    fn handle(&mut self, _: IdentifyFinger, _: &mut Context<Self>) -> Self::Result {
        self.identify_finger(None)
    }
}

impl Handler<Timed<EnrollCard>> for DeviceActor {
    type Result = ResponseFuture<Result<Enrollment, DeviceError>>;
    fn handle(&mut self, m: Timed<EnrollCard>, _: &mut Context<Self>) -> Self::Result {
        self.enroll_card(m.message, Some(m.timeout))
    }
}

impl Handler<Timed<Assert>> for DeviceActor {
    type Result = ResponseFuture<Result<Assertion, DeviceError>>;
    fn handle(&mut self, m: Timed<Assert>, _: &mut Context<Self>) -> Self::Result {
        self.assert(m.message, Some(m.timeout))
    }
}

impl Handler<Timed<EnrollFinger>> for DeviceActor {
    type Result = ResponseFuture<Result<u16, DeviceError>>;
    fn handle(&mut self, m: Timed<EnrollFinger>, _: &mut Context<Self>) -> Self::Result {
        self.enroll_finger(m.message, Some(m.timeout))
    }
}

impl Handler<Timed<IdentifyFinger>> for DeviceActor {
    type Result = ResponseFuture<Result<Match, DeviceError>>;
    fn handle(&mut self, m: Timed<IdentifyFinger>, _: &mut Context<Self>) -> Self::Result {
        let _ = m.message;
        self.identify_finger(Some(m.timeout))
    }
}

impl Handler<Status> for DeviceActor {
    type Result = MessageResult<Status>;
    fn handle(&mut self, _: Status, _: &mut Context<Self>) -> Self::Result {
        MessageResult(DeviceStatus {
            card: self
                .card
                .as_ref()
                .map(|s| s.status(ReaderKind::Card, &self.hub)),
            fingerprint: self
                .finger
                .as_ref()
                .map(|s| s.status(ReaderKind::Fingerprint, &self.hub)),
        })
    }
}

impl Handler<Subscribe> for DeviceActor {
    type Result = ();
    fn handle(&mut self, m: Subscribe, _: &mut Context<Self>) {
        lock(&self.hub.subscribers).push(m.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hexa_hal::NoDelay;
    use hexa_hal::fingerprint::{self as fp, Fingerprint};
    use hexa_hal::pn532::{self, I2cTransport, Pn532, Timeouts};
    use hexa_hal::reader::FingerprintDevice;
    use hexa_hal::sim::{
        CardConfig, CardModel, Fault, SimFingerprint, SimFingerprintHandle, SimPn532,
        SimPn532Handle, Trigger,
    };

    const RP: &str = "hexa.example";

    fn config(timeout_ms: u64) -> DeviceConfig {
        DeviceConfig {
            ceremony_timeout: Duration::from_millis(timeout_ms),
            poll_interval: Duration::from_millis(1),
        }
    }

    fn card_reader() -> (Box<dyn CardReader>, SimPn532Handle) {
        let chip = SimPn532::new();
        let h = chip.handle();
        let reader = Pn532::new(I2cTransport::new(chip), NoDelay).with_timeouts(Timeouts {
            ack_ms: 5,
            response_ms: 20,
            poll_interval_us: 1000,
        });
        (Box::new(reader), h)
    }

    fn finger_reader() -> (Box<dyn FingerprintReader>, SimFingerprintHandle) {
        let module = SimFingerprint::new();
        let h = module.handle();
        let d = Fingerprint::new(module, NoDelay).with_timeouts(fp::Timeouts {
            response_ms: 20,
            finger_ms: 100,
            poll_interval_us: 1000,
            finger_poll_ms: 1,
        });
        (Box::new(FingerprintDevice::new(d)), h)
    }

    fn enroll_msg(pin: Option<&str>) -> EnrollCard {
        EnrollCard {
            rp_id: RP.into(),
            user_id: b"p-1".to_vec(),
            user_name: "patient 1".into(),
            client_data_hash: [1; 32],
            pin: pin.map(str::to_owned),
        }
    }

    fn assert_msg(e: &Enrollment) -> Assert {
        Assert {
            rp_id: RP.into(),
            client_data_hash: [2; 32],
            allow_credential_ids: vec![e.credential_id.clone()],
            pin: None,
        }
    }

    /// Records progress events and presents a card when the actor starts waiting.
    struct Frontdesk {
        seen: Arc<Mutex<Vec<Progress>>>,
        sim: SimPn532Handle,
        card: u32,
    }
    impl Actor for Frontdesk {
        type Context = Context<Self>;
    }
    impl Handler<ProgressEvent> for Frontdesk {
        type Result = ();
        fn handle(&mut self, e: ProgressEvent, _: &mut Context<Self>) {
            if e.progress == Progress::Waiting {
                self.sim.present(self.card).unwrap();
            }
            lock(&self.seen).push(e.progress);
        }
    }

    #[actix_rt::test]
    async fn enrols_then_asserts_with_progress() {
        let (reader, sim) = card_reader();
        let card = sim.create_card(&CardConfig::default()).unwrap();
        let addr = DeviceActor::new(Some(reader), None, config(5_000)).start();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let desk = Frontdesk {
            seen: seen.clone(),
            sim: sim.clone(),
            card,
        }
        .start();
        addr.send(Subscribe(desk.recipient())).await.unwrap();

        let e = addr.send(enroll_msg(None)).await.unwrap().unwrap();
        assert_eq!(e.alg, -8);
        sim.lift();
        let a = addr.send(assert_msg(&e)).await.unwrap().unwrap();
        assert_eq!(a.credential_id, e.credential_id);
        assert_eq!(sim.sign_count(card), Some(a.sign_count));

        let status = addr.send(Status).await.unwrap();
        let card_status = status.card.unwrap();
        assert_eq!((card_status.busy, card_status.needs_init), (false, false));
        assert_eq!(card_status.progress, Progress::Done);
        assert!(status.fingerprint.is_none());
        // Let the subscriber drain its mailbox.
        addr.send(Status).await.unwrap();
        actix_rt::task::yield_now().await;
        let seen = lock(&seen).clone();
        let expect = [
            Progress::Waiting,
            Progress::CardPresent,
            Progress::Signing,
            Progress::Done,
        ];
        assert!(seen.len() >= 4 && seen[..4] == expect, "{seen:?}");
    }

    #[actix_rt::test]
    async fn one_ceremony_at_a_time_and_timeouts() {
        let (reader, sim) = card_reader();
        let card = sim
            .create_card(&CardConfig {
                model: CardModel::Es256Only,
                pin: None,
            })
            .unwrap();
        let addr = DeviceActor::new(Some(reader), None, config(300)).start();
        let first = addr.send(enroll_msg(None));
        let second = addr.send(enroll_msg(None)).await.unwrap();
        assert!(matches!(second, Err(DeviceError::Busy(ReaderKind::Card))));
        let first = first.await.unwrap().unwrap_err();
        assert!(matches!(first, DeviceError::Timeout), "{first}");
        assert_eq!(first.code(), "device-timeout");
        sim.present(card).unwrap();
        let e = addr.send(enroll_msg(None)).await.unwrap().unwrap();
        assert_eq!(e.alg, -7);
        let none = addr.send(IdentifyFinger).await.unwrap();
        assert!(matches!(
            none,
            Err(DeviceError::NoReader(ReaderKind::Fingerprint))
        ));
    }

    #[actix_rt::test]
    async fn timed_ceremonies_use_their_own_deadline() {
        let (reader, sim) = card_reader();
        let card = sim.create_card(&CardConfig::default()).unwrap();
        // The actor's own timeout is long; the message's short one must win.
        let addr = DeviceActor::new(Some(reader), None, config(60_000)).start();
        let started = Instant::now();
        let err = addr
            .send(Timed {
                message: enroll_msg(None),
                timeout: Duration::from_millis(50),
            })
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, DeviceError::Timeout), "{err}");
        assert!(started.elapsed() < Duration::from_secs(30));
        sim.present(card).unwrap();
        let e = addr
            .send(Timed {
                message: enroll_msg(None),
                timeout: Duration::from_secs(5),
            })
            .await
            .unwrap()
            .unwrap();
        let a = addr
            .send(Timed {
                message: assert_msg(&e),
                timeout: Duration::from_secs(5),
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(a.credential_id, e.credential_id);
    }

    #[actix_rt::test]
    async fn survives_a_reader_fault_and_a_lifted_card() {
        let (reader, sim) = card_reader();
        let card = sim.create_card(&CardConfig::default()).unwrap();
        sim.present(card).unwrap();
        let addr = DeviceActor::new(Some(reader), None, config(2_000)).start();
        let e = addr.send(enroll_msg(None)).await.unwrap().unwrap();

        sim.inject(
            Fault::BusError,
            Trigger::Command(pn532::CMD_IN_DATA_EXCHANGE),
        );
        let err = addr.send(assert_msg(&e)).await.unwrap().unwrap_err();
        assert_eq!(err.code(), "device-reader-fault", "{err}");
        let st = addr.send(Status).await.unwrap().card.unwrap();
        assert!(st.needs_init);
        assert!(matches!(st.progress, Progress::Failed { .. }));

        let a = addr.send(assert_msg(&e)).await.unwrap().unwrap();
        assert_eq!(a.credential_id, e.credential_id);
        assert!(!addr.send(Status).await.unwrap().card.unwrap().needs_init);

        sim.inject(Fault::Lift, Trigger::Command(pn532::CMD_IN_DATA_EXCHANGE));
        let err = addr.send(assert_msg(&e)).await.unwrap().unwrap_err();
        assert_eq!(err.code(), "device-card-removed", "{err}");

        let pin_card = sim
            .create_card(&CardConfig {
                model: CardModel::Ed25519,
                pin: Some("1234".into()),
            })
            .unwrap();
        sim.present(pin_card).unwrap();
        let err = addr.send(enroll_msg(None)).await.unwrap().unwrap_err();
        assert_eq!(err.code(), "device-pin-required");
        assert!(addr.send(enroll_msg(Some("1234"))).await.unwrap().is_ok());
    }

    #[actix_rt::test]
    async fn fingerprint_enrol_and_identify() {
        let (reader, h) = finger_reader();
        let addr = DeviceActor::new(None, Some(reader), config(2_000)).start();
        h.place_finger(11);
        assert_eq!(
            addr.send(EnrollFinger { slot: 4 }).await.unwrap().unwrap(),
            4
        );
        h.set_match_score(150);
        let m = addr.send(IdentifyFinger).await.unwrap().unwrap();
        assert_eq!((m.slot, m.score), (4, 150));
        h.place_unknown();
        let err = addr.send(IdentifyFinger).await.unwrap().unwrap_err();
        assert_eq!(err.code(), "device-fingerprint-refused", "{err}");
        h.lift_finger();
        let (reader2, _) = finger_reader();
        let addr2 = DeviceActor::new(None, Some(reader2), config(30)).start();
        assert!(matches!(
            addr2.send(IdentifyFinger).await.unwrap(),
            Err(DeviceError::Timeout)
        ));
        let none = addr2.send(assert_msg(&Enrollment {
            credential_id: vec![],
            cose_key: vec![],
            alg: -8,
            auth_data: vec![],
            fmt: String::new(),
            att_stmt: vec![],
        }));
        assert!(matches!(
            none.await.unwrap(),
            Err(DeviceError::NoReader(ReaderKind::Card))
        ));
    }
}
