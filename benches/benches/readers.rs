//! One consent assertion through the whole driver stack (PN532 driver, ISO 7816 APDUs,
//! CTAP2 client) against the simulated PN532 and a virtual FIDO2 card: the CPU time of
//! driver + simulator (Criterion), and the bytes on the wire counted by the simulator,
//! converted to bus time at the PN532's 115200 baud HSU and 400 kHz I2C.
//!
//! A consent "tap" is: InListPassiveTarget (card detection, RATS), SELECT of the FIDO
//! applet, authenticatorGetInfo, authenticatorGetAssertion, InRelease.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use hexa_hal::NoDelay;
use hexa_hal::ctap2::{AssertionRequest, MakeCredentialRequest};
use hexa_hal::pn532::{HsuTransport, I2cTransport, Pn532, Transport};
use hexa_hal::reader::CardReader;
use hexa_hal::sim::{CardConfig, CardModel, SimPn532, SimPn532Handle, WireStats};

const RP: &str = "hexa.district-hospital.example";

/// Initialises the reader, enrols a card of `model` and returns the assertion request.
fn setup<T: Transport + Send>(
    reader: &mut Pn532<T, NoDelay>,
    sim: &SimPn532Handle,
    model: CardModel,
) -> AssertionRequest {
    CardReader::init(reader).expect("init");
    let card = sim
        .create_card(&CardConfig { model, pin: None })
        .expect("card");
    sim.present(card).expect("present");
    let t = reader.detect().expect("detect").expect("card in field");
    let e = reader
        .enroll(
            &t,
            &MakeCredentialRequest {
                rp_id: RP.into(),
                user_id: b"Patient/1199".to_vec(),
                user_name: "1199".into(),
                client_data_hash: [1; 32],
                pin: None,
            },
        )
        .expect("enrol");
    reader.release(&t).expect("release");
    AssertionRequest {
        rp_id: RP.into(),
        client_data_hash: [0x5C; 32],
        allow_credential_ids: vec![e.credential_id],
        pin: None,
    }
}

/// One consent tap.
fn tap<T: Transport + Send>(reader: &mut Pn532<T, NoDelay>, req: &AssertionRequest) -> usize {
    let t = reader.detect().expect("detect").expect("card in field");
    let a = reader.assert(&t, req).expect("assert");
    reader.release(&t).expect("release");
    a.signature.len()
}

fn wire_of_one_tap<T: Transport + Send>(
    reader: &mut Pn532<T, NoDelay>,
    sim: &SimPn532Handle,
    req: &AssertionRequest,
) -> WireStats {
    sim.reset_stats();
    tap(reader, req);
    sim.stats()
}

fn report(label: &str, w: &WireStats, bus_ms: f64) {
    println!(
        "{label}: host->PN532 {} B, PN532->host {} B, {} bus transactions, {bus_ms:.2} ms on the wire",
        w.host_to_device, w.device_to_host, w.transactions,
    );
}

fn readers(c: &mut Criterion) {
    for (name, model) in [
        ("ed25519", CardModel::Ed25519),
        ("es256", CardModel::Es256Only),
    ] {
        let chip = SimPn532::new();
        let sim = chip.handle();
        let mut i2c = Pn532::new(I2cTransport::new(chip), NoDelay);
        let req = setup(&mut i2c, &sim, model);
        let w = wire_of_one_tap(&mut i2c, &sim, &req);
        report(
            &format!("wire/i2c@400kHz/{name}"),
            &w,
            w.i2c_seconds(400_000) * 1e3,
        );
        let probe_chip = SimPn532::new();
        let probe_sim = probe_chip.handle();
        let mut probing = Pn532::new(I2cTransport::new(probe_chip).probing_header(), NoDelay);
        let probe_req = setup(&mut probing, &probe_sim, model);
        let w = wire_of_one_tap(&mut probing, &probe_sim, &probe_req);
        report(
            &format!("wire/i2c-header-probing@400kHz/{name}"),
            &w,
            w.i2c_seconds(400_000) * 1e3,
        );
        c.bench_function(&format!("consent_tap/i2c/{name}"), |b| {
            b.iter(|| black_box(tap(&mut i2c, black_box(&req))))
        });

        let chip = SimPn532::new();
        let sim = chip.handle();
        let mut hsu = Pn532::new(HsuTransport::new(chip), NoDelay);
        let req = setup(&mut hsu, &sim, model);
        let w = wire_of_one_tap(&mut hsu, &sim, &req);
        report(
            &format!("wire/hsu@115200/{name}"),
            &w,
            w.uart_seconds(115_200) * 1e3,
        );
        c.bench_function(&format!("consent_tap/hsu/{name}"), |b| {
            b.iter(|| black_box(tap(&mut hsu, black_box(&req))))
        });
    }
}

criterion_group!(benches, readers);
criterion_main!(benches);
