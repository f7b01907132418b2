//! Model quality on a labelled folder (see [`crate::dataset`]): Dice and IoU of the predicted
//! mask against the reference mask, per sample, grouped by class, for every 2D family:
//! - vlsm: the sample's prompt (see [`sample_prompt`]);
//! - sam: one foreground click at the most interior pixel of the reference mask (the pixel
//!   farthest from its boundary, as interactive-segmentation benchmarks place a first click);
//! - conditioned: the sample's class as the task and its modality as the modality;
//! - plain: the pixels labelled with the sample's class (multi-class models), or the mask;
//! - sam3d ([`evaluate_volumes`]): a folder of volumes whose `samples.jsonl` lines are
//!   `{"volume": …, "mask": …, "points": [[x, y, z], …]}` (input voxel coordinates; no points
//!   means the sliding window), scored by Dice per volume.

use std::collections::BTreeMap;
use std::path::Path;

use thiserror::Error;

use crate::dataset::{self, DatasetError, Sample};
use crate::frame::Mask;
use crate::input::{self, InputError};
use crate::model::{Click, Family, FrameModel, ModelError, Package, Precision, Request, SamPrompt};
use crate::postprocess::{dice, iou};
use crate::prompt::{PromptError, PromptType};

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EvalError {
    #[error(transparent)]
    Volume(#[from] crate::volume::VolumeError),
    #[error("{volume}: {source}")]
    VolumeModel {
        volume: String,
        source: crate::volume::segment::SegmentError,
    },
    #[error("{path}: line {line}: {message}")]
    VolumeIndex {
        path: String,
        line: usize,
        message: String,
    },
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{image}: {source}")]
    Prompt { image: String, source: PromptError },
    #[error("{image}: sample has neither `prompt` nor `attributes`")]
    NoPrompt { image: String },
    #[error("{image}: {what}")]
    Sample { image: String, what: String },
    #[error("{mask}: mask is {found_w}x{found_h}, image is {want_w}x{want_h}")]
    MaskSize {
        mask: String,
        found_w: u32,
        found_h: u32,
        want_w: u32,
        want_h: u32,
    },
}

/// Scores of one sample.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SampleScore {
    pub image: String,
    pub class: String,
    pub prompt: String,
    pub dice: f64,
    pub iou: f64,
}

/// Mean scores of one group of samples.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GroupScore {
    pub group: String,
    pub samples: usize,
    pub dice: f64,
    pub iou: f64,
}

/// The prompt a sample asks for: built from its attributes at `prompt_type` when both exist,
/// else its literal prompt, else its attributes at `default_type`.
pub fn sample_prompt(
    sample: &Sample,
    prompt_type: Option<PromptType>,
    default_type: PromptType,
) -> Result<String, EvalError> {
    let built = |t: PromptType, a: &crate::prompt::Attributes| {
        a.prompt(t).map_err(|source| EvalError::Prompt {
            image: sample.image.clone(),
            source,
        })
    };
    match (&sample.attributes, &sample.prompt, prompt_type) {
        (Some(a), _, Some(t)) => built(t, a),
        (_, Some(p), _) => Ok(p.clone()),
        (Some(a), None, None) => built(default_type, a),
        (None, None, _) => Err(EvalError::NoPrompt {
            image: sample.image.clone(),
        }),
    }
}

/// Reads a reference mask: any image whose nonzero pixels mark the structure.
pub fn read_mask(path: &Path) -> Result<Mask, EvalError> {
    let loaded = input::load(path)?;
    let frame = &loaded.frames[0];
    let bits = frame
        .rgb()
        .chunks_exact(3)
        .map(|p| p.iter().any(|&v| v > 127))
        .collect();
    Ok(Mask::new(frame.width(), frame.height(), bits).expect("frame dimensions are valid"))
}

/// How to run the model over the samples.
#[derive(Debug, Clone)]
pub struct Options {
    pub precision: Precision,
    pub threads: usize,
    /// vlsm: build every prompt from the samples' attributes at this level.
    pub prompt_type: Option<PromptType>,
    /// vlsm: the task adapter of an adapted package.
    pub adapter: Option<String>,
}

/// Scores every sample of `dir` with the model in `package`.
pub fn evaluate(
    package: &Package,
    dir: &Path,
    options: &Options,
) -> Result<Vec<SampleScore>, EvalError> {
    let manifest = package.manifest();
    let samples = dataset::read_samples(dir)?;
    let mut model: Option<FrameModel> = None;
    let mut scores = Vec::with_capacity(samples.len());
    for sample in &samples {
        let frame = input::load(&dir.join(&sample.image))?.frames.remove(0);
        let truth = read_mask(&dir.join(&sample.mask))?;
        if (truth.width(), truth.height()) != (frame.width(), frame.height()) {
            return Err(EvalError::MaskSize {
                mask: sample.mask.clone(),
                found_w: truth.width(),
                found_h: truth.height(),
                want_w: frame.width(),
                want_h: frame.height(),
            });
        }
        let class = sample
            .attributes
            .as_ref()
            .and_then(|a| a.class.clone())
            .unwrap_or_else(|| "-".into());
        let bad = |what: String| EvalError::Sample {
            image: sample.image.clone(),
            what,
        };
        let mut request = Request::default();
        let described = match manifest.family {
            Family::Vlsm => {
                let default_type = manifest
                    .prompt
                    .as_ref()
                    .map(|p| p.default)
                    .expect("vlsm manifests have a [prompt] table");
                let prompt = sample_prompt(sample, options.prompt_type, default_type)?;
                request.allow_empty = options.prompt_type.is_some_and(|t| t.level() == 0);
                request.adapter = options.adapter.clone();
                request.prompt = Some(prompt.clone());
                prompt
            }
            Family::Sam => {
                let (x, y) = interior_point(&truth)
                    .ok_or_else(|| bad("the reference mask is empty: nowhere to click".into()))?;
                let (x, y) = (f64::from(x), f64::from(y));
                request.sam = SamPrompt {
                    clicks: vec![Click {
                        x,
                        y,
                        positive: true,
                    }],
                    bbox: None,
                };
                format!("click ({x}, {y})")
            }
            Family::Conditioned => {
                let modality = sample
                    .modality
                    .clone()
                    .ok_or_else(|| bad("sample has no `modality`".into()))?;
                request.task = Some(class.clone());
                request.modality = Some(modality.clone());
                format!("{class} ({modality})")
            }
            Family::Plain | Family::Sam3d => class.clone(),
        };
        let model = match &mut model {
            Some(m) => {
                m.apply(&request)?;
                m
            }
            None => model.insert(FrameModel::open(
                package.clone(),
                options.precision,
                options.threads,
                &request,
            )?),
        };
        let segmented = model.segment(&frame)?;
        let best = segmented.best();
        let predicted = match &best.labels {
            Some(labels) => {
                let names = &manifest.output.labels;
                let k = names.iter().position(|n| *n == class).ok_or_else(|| {
                    bad(format!(
                        "class `{class}` is not one of the model's labels {names:?}"
                    ))
                })?;
                let bits = labels.iter().map(|&l| usize::from(l) == k).collect();
                Mask::new(frame.width(), frame.height(), bits).expect("frame dimensions are valid")
            }
            None => best.segmentation.mask.clone(),
        };
        scores.push(SampleScore {
            image: sample.image.clone(),
            class,
            prompt: described,
            dice: dice(&predicted, &truth).expect("sizes checked above"),
            iou: iou(&predicted, &truth).expect("sizes checked above"),
        });
    }
    Ok(scores)
}

/// The mask pixel farthest from the mask's boundary (city-block/diagonal chamfer distance to
/// the nearest pixel outside the mask or outside the image); the first in raster order on
/// ties. `None` for an empty mask.
pub fn interior_point(mask: &Mask) -> Option<(u32, u32)> {
    let (w, h) = (mask.width() as usize, mask.height() as usize);
    let inf = u32::MAX / 2;
    let mut d: Vec<u32> = mask
        .bits()
        .iter()
        .map(|&b| if b { inf } else { 0 })
        .collect();
    // Distance from outside the image: pixels on the border are 1 step (3) from it.
    let at = |x: usize, y: usize| y * w + x;
    for y in 0..h {
        for x in 0..w {
            if d[at(x, y)] == 0 {
                continue;
            }
            let mut v = d[at(x, y)];
            if x == 0 || y == 0 {
                v = v.min(3);
            }
            if x > 0 {
                v = v.min(d[at(x - 1, y)] + 3);
            }
            if y > 0 {
                v = v.min(d[at(x, y - 1)] + 3);
                if x > 0 {
                    v = v.min(d[at(x - 1, y - 1)] + 4);
                }
                if x + 1 < w {
                    v = v.min(d[at(x + 1, y - 1)] + 4);
                }
            }
            d[at(x, y)] = v;
        }
    }
    for y in (0..h).rev() {
        for x in (0..w).rev() {
            if d[at(x, y)] == 0 {
                continue;
            }
            let mut v = d[at(x, y)];
            if x + 1 == w || y + 1 == h {
                v = v.min(3);
            }
            if x + 1 < w {
                v = v.min(d[at(x + 1, y)] + 3);
            }
            if y + 1 < h {
                v = v.min(d[at(x, y + 1)] + 3);
                if x + 1 < w {
                    v = v.min(d[at(x + 1, y + 1)] + 4);
                }
                if x > 0 {
                    v = v.min(d[at(x - 1, y + 1)] + 4);
                }
            }
            d[at(x, y)] = v;
        }
    }
    let (i, &best) = d.iter().enumerate().rev().max_by_key(|(_, &v)| v)?;
    (best > 0).then(|| ((i % w) as u32, (i / w) as u32))
}

/// One line of a volume folder's `samples.jsonl`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct VolumeSample {
    volume: String,
    mask: String,
    #[serde(default)]
    points: Vec<[f64; 3]>,
}

/// Scores every volume of `dir` (see the module docs) with a sam3d model: Dice and IoU of the
/// mask on the volume's own grid, one group per volume file.
pub fn evaluate_volumes(
    model: &mut crate::model::Sam3dSession,
    dir: &Path,
) -> Result<Vec<SampleScore>, EvalError> {
    use crate::volume::segment::Click as VolumeClick;
    use crate::volume::{self, LoadOptions};
    let index = dir.join(dataset::INDEX);
    let text = std::fs::read_to_string(&index).map_err(|e| EvalError::VolumeIndex {
        path: index.display().to_string(),
        line: 0,
        message: e.to_string(),
    })?;
    let mut scores = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let sample: VolumeSample =
            serde_json::from_str(line).map_err(|e| EvalError::VolumeIndex {
                path: index.display().to_string(),
                line: n + 1,
                message: e.to_string(),
            })?;
        let options = LoadOptions::default();
        let vol = volume::load(&dir.join(&sample.volume), &options)?;
        let truth = volume::load(&dir.join(&sample.mask), &options)?;
        let clicks: Vec<VolumeClick> = sample
            .points
            .iter()
            .map(|&pos| VolumeClick {
                pos,
                positive: true,
            })
            .collect();
        let (predicted, _) =
            model
                .segment(&vol, &clicks)
                .map_err(|source| EvalError::VolumeModel {
                    volume: sample.volume.clone(),
                    source,
                })?;
        if truth.dims() != predicted.dims {
            return Err(EvalError::Sample {
                image: sample.mask.clone(),
                what: format!(
                    "mask is {:?} voxels, the volume {:?}",
                    truth.dims(),
                    predicted.dims
                ),
            });
        }
        let (mut both, mut a, mut b) = (0usize, 0usize, 0usize);
        for (&p, &t) in predicted.mask.iter().zip(truth.data()) {
            let (p, t) = (p > 0, t > 0.5);
            both += usize::from(p && t);
            a += usize::from(p);
            b += usize::from(t);
        }
        let ratio = |num: usize, den: usize| {
            if den == 0 {
                1.0
            } else {
                num as f64 / den as f64
            }
        };
        scores.push(SampleScore {
            image: sample.volume.clone(),
            class: sample.volume.clone(),
            prompt: format!("{} click(s)", clicks.len()),
            dice: ratio(2 * both, a + b),
            iou: ratio(both, a + b - both),
        });
    }
    Ok(scores)
}

/// Means per class, then over all samples (group `all`).
pub fn summarize(scores: &[SampleScore]) -> Vec<GroupScore> {
    let mut groups: BTreeMap<&str, Vec<&SampleScore>> = BTreeMap::new();
    for s in scores {
        groups.entry(s.class.as_str()).or_default().push(s);
    }
    let mean = |group: String, items: &[&SampleScore]| GroupScore {
        group,
        samples: items.len(),
        dice: items.iter().map(|s| s.dice).sum::<f64>() / items.len().max(1) as f64,
        iou: items.iter().map(|s| s.iou).sum::<f64>() / items.len().max(1) as f64,
    };
    let mut out: Vec<GroupScore> = groups
        .iter()
        .map(|(g, items)| mean(g.to_string(), items))
        .collect();
    let all: Vec<&SampleScore> = scores.iter().collect();
    out.push(mean("all".into(), &all));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(class: &str, dice: f64) -> SampleScore {
        SampleScore {
            image: "i.png".into(),
            class: class.into(),
            prompt: class.into(),
            dice,
            iou: dice / 2.0,
        }
    }

    #[test]
    fn interior_point_is_the_centre_of_a_block_and_none_for_empty() {
        let mut bits = vec![false; 9 * 7];
        for y in 1..6 {
            for x in 2..7 {
                bits[y * 9 + x] = true;
            }
        }
        let mask = Mask::new(9, 7, bits).unwrap();
        assert_eq!(interior_point(&mask), Some((4, 3)));
        let full = Mask::new(5, 5, vec![true; 25]).unwrap();
        assert_eq!(interior_point(&full), Some((2, 2)));
        assert_eq!(
            interior_point(&Mask::new(3, 3, vec![false; 9]).unwrap()),
            None
        );
    }

    #[test]
    fn groups_by_class_then_all() {
        let s = summarize(&[score("polyp", 1.0), score("polyp", 0.5), score("tool", 0.0)]);
        let table: Vec<(&str, usize, f64)> = s
            .iter()
            .map(|g| (g.group.as_str(), g.samples, g.dice))
            .collect();
        assert_eq!(
            table,
            vec![("polyp", 2, 0.75), ("tool", 1, 0.0), ("all", 3, 0.5)]
        );
    }

    #[test]
    fn prompt_choice_follows_the_documented_order() {
        let attrs = "class=polyp,shape=round".parse().unwrap();
        let mut s = Sample::from_attributes("a.png".into(), "m.png".into(), "endoscopy", attrs);
        let p2: PromptType = "P2".parse().unwrap();
        let p1: PromptType = "P1".parse().unwrap();
        assert_eq!(sample_prompt(&s, Some(p2), p1).unwrap(), "round polyp");
        assert_eq!(sample_prompt(&s, None, p1).unwrap(), "polyp");
        s.prompt = Some("literal".into());
        assert_eq!(sample_prompt(&s, None, p1).unwrap(), "literal");
        s.attributes = None;
        s.prompt = None;
        assert!(matches!(
            sample_prompt(&s, None, p1),
            Err(EvalError::NoPrompt { .. })
        ));
    }
}
