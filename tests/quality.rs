//! What the bundled model does on phantoms it never saw (seed 999, the held-out seed of the
//! training tools): the prompted structure's Dice against the phantom's own mask, and how
//! closely the int8 and f16 forms follow the f32 mask. Thresholds are the product's claims:
//! held-out Dice ≥ 0.85 at f32; int8 and f16 masks with Dice ≥ 0.97 against the f32 mask.

use std::path::PathBuf;

use edgeseg::frame::Mask;
use edgeseg::model::{Package, Precision, Vlsm};
use edgeseg::phantom::{self, Modality};
use edgeseg::postprocess::dice;
use edgeseg::prompt::PromptType;

/// (frame, prompt, true mask) for `n` held-out phantoms, one sample per structure.
fn held_out(n: u64) -> Vec<(edgeseg::frame::Frame, String, Mask)> {
    let p4: PromptType = "P4".parse().unwrap();
    let mut samples = Vec::new();
    for i in 0..n {
        let modality = if i % 2 == 0 {
            Modality::Ultrasound
        } else {
            Modality::Endoscopy
        };
        let ph = phantom::generate(modality, 128, 128, 999_000 + i).unwrap();
        for s in ph.structures {
            samples.push((ph.frame.clone(), s.attributes.prompt(p4).unwrap(), s.mask));
        }
    }
    samples
}

fn masks(precision: Precision, samples: &[(edgeseg::frame::Frame, String, Mask)]) -> Vec<Mask> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/clipseg-phantom");
    let model = Vlsm::load(Package::open(&dir).unwrap(), precision, 1).unwrap();
    let mut session = model.session().unwrap();
    samples
        .iter()
        .map(|(frame, prompt, _)| {
            session.set_prompt(prompt, false).unwrap();
            session.segment(frame).unwrap().segmentation.mask
        })
        .collect()
}

fn mean_dice(a: &[Mask], b: &[Mask]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(a, b)| dice(a, b).unwrap())
        .sum::<f64>()
        / a.len() as f64
}

#[test]
fn prompted_structure_is_found_on_held_out_phantoms() {
    let samples = held_out(40);
    let truth: Vec<Mask> = samples.iter().map(|s| s.2.clone()).collect();
    let f32_masks = masks(Precision::F32, &samples);
    let d = mean_dice(&f32_masks, &truth);
    println!("held-out Dice (f32, P4, {} samples): {d:.4}", samples.len());
    assert!(d >= 0.85, "held-out Dice {d:.4} < 0.85");
}

#[test]
fn int8_and_f16_masks_follow_f32() {
    let samples = held_out(16);
    let f32_masks = masks(Precision::F32, &samples);
    for precision in [Precision::Int8, Precision::F16] {
        let d = mean_dice(&masks(precision, &samples), &f32_masks);
        println!(
            "{precision} vs f32 mask Dice ({} samples): {d:.4}",
            samples.len()
        );
        assert!(d >= 0.97, "{precision} vs f32 mask Dice {d:.4} < 0.97");
    }
}
