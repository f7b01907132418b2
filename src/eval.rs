//! Model quality on a labelled folder (see [`crate::dataset`]): Dice and IoU of the predicted
//! mask against the reference mask, per sample, grouped by class.

use std::collections::BTreeMap;
use std::path::Path;

use thiserror::Error;

use crate::dataset::{self, DatasetError, Sample};
use crate::frame::Mask;
use crate::input::{self, InputError};
use crate::model::{ModelError, VlsmSession};
use crate::postprocess::{dice, iou};
use crate::prompt::{PromptError, PromptType};

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EvalError {
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

/// Scores every sample of `dir` with `session`.
pub fn evaluate(
    session: &mut VlsmSession,
    dir: &Path,
    prompt_type: Option<PromptType>,
) -> Result<Vec<SampleScore>, EvalError> {
    let default_type = session
        .model()
        .package()
        .manifest()
        .prompt
        .as_ref()
        .map(|p| p.default)
        .expect("vlsm manifests have a [prompt] table");
    let samples = dataset::read_samples(dir)?;
    let mut scores = Vec::with_capacity(samples.len());
    for sample in &samples {
        let prompt = sample_prompt(sample, prompt_type, default_type)?;
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
        let allow_empty = prompt_type.is_some_and(|t| t.level() == 0);
        session.set_prompt(&prompt, allow_empty)?;
        let predicted = session.segment(&frame)?.segmentation.mask;
        let class = sample
            .attributes
            .as_ref()
            .and_then(|a| a.class.clone())
            .unwrap_or_else(|| "-".into());
        scores.push(SampleScore {
            image: sample.image.clone(),
            class,
            prompt,
            dice: dice(&predicted, &truth).expect("sizes checked above"),
            iou: iou(&predicted, &truth).expect("sizes checked above"),
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
