//! Encoding a 320x240 mask for the serial link (`docs/serial-protocol.md`); the mask is every
//! structure of an ultrasound phantom (a lesion and vessels), about what the model sends:
//!
//! - `serial/rle_rows`: row runs of the mask;
//! - `serial/encode_rle`: header, row-run payload and CRC-32, COBS-framed (`protocol::encode`);
//! - `serial/cobs`, `serial/crc32`: the framing and checksum alone, on that message's bytes;
//! - `serial/mask_payload/<baud>`: the serial sink's choice of payload at 30 fps: row runs at
//!   921600 baud (the demo's link), contour polygons simplified to the byte budget at 115200
//!   and 57600 baud;
//! - `serial/decode_rle`: the receiving end (`edgeseg listen`), the framed message back to a
//!   message.
//!
//! `cargo bench --bench serial` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use edgeseg::frame::Mask;
use edgeseg::phantom::{self, Modality};
use edgeseg::protocol::{self, Message, Payload};
use edgeseg::serial::{self, Encoding};

const WIDTH: u32 = 320;
const HEIGHT: u32 = 240;
const FPS: f64 = 30.0;

fn mask() -> Mask {
    let phantom = phantom::generate(Modality::Ultrasound, WIDTH, HEIGHT, 7).expect("phantom");
    let mut bits = vec![false; (WIDTH * HEIGHT) as usize];
    for s in &phantom.structures {
        for (b, &m) in bits.iter_mut().zip(s.mask.bits()) {
            *b |= m;
        }
    }
    Mask::new(WIDTH, HEIGHT, bits).expect("mask")
}

fn message(payload: Payload) -> Message {
    Message {
        seq: 1234,
        capture_us: 5_000_000,
        width: WIDTH as u16,
        height: HEIGHT as u16,
        flags: 0,
        payload,
    }
}

fn serial(c: &mut Criterion) {
    let mask = mask();
    let rows = protocol::rle_rows(&mask);
    let rle = message(Payload::Rle(rows.clone()));
    let wire = protocol::encode(&rle);
    // The unframed bytes: header, payload, CRC-32 (what COBS takes in).
    let raw = protocol::cobs_decode(&wire[..wire.len() - 1]).expect("own frame");
    println!(
        "mask area {} px; {} runs; wire {} bytes",
        mask.area(),
        rows.iter().map(Vec::len).sum::<usize>(),
        wire.len()
    );

    let mut group = c.benchmark_group("serial");
    group
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    group.bench_function("rle_rows", |b| {
        b.iter(|| protocol::rle_rows(black_box(&mask)))
    });
    group.bench_function("encode_rle", |b| {
        b.iter(|| protocol::encode(black_box(&rle)))
    });
    group.bench_function("cobs", |b| {
        b.iter(|| protocol::cobs_encode(black_box(&raw)))
    });
    group.bench_function("crc32", |b| b.iter(|| protocol::crc32(black_box(&raw))));
    for baud in [921_600, 115_200, 57_600] {
        let budget = serial::frame_budget(baud, FPS);
        let kind = match serial::mask_payload(&mask, Encoding::Auto, budget) {
            Payload::Rle(_) => "row runs".to_string(),
            Payload::Contours(p) => format!("{} contour polygons", p.len()),
            Payload::Status { .. } => "status".to_string(),
        };
        println!("{baud} baud at {FPS} fps: {budget}-byte budget, {kind}");
        group.bench_function(format!("mask_payload/{baud}"), |b| {
            b.iter(|| serial::mask_payload(black_box(&mask), Encoding::Auto, budget))
        });
    }
    group.bench_function("decode_rle", |b| {
        b.iter(|| protocol::decode(black_box(&wire[..wire.len() - 1])).expect("decoded"))
    });
    group.finish();
}

criterion_group!(benches, serial);
criterion_main!(benches);
