//! The SAM-3D adapter family: a 3D `encoder` (`volume` `[1,1,D,H,W]` → `image_embeddings`) and a
//! prompt `decoder` (embeddings, `point_coords` `[1,N,3]` in voxel x y z of the patch,
//! `point_labels` `[1,N]` → `low_res_masks` `[1,1,D',H',W']` logits over the patch).
//!
//! The volume side (resampling to the manifest's spacing, intensity normalisation, the patch
//! around the clicks or the sliding window without clicks, blending and pasting back) is
//! [`crate::volume::segment`]; this module runs the graphs on each patch: it pads the clicks to
//! the decoder's N points with label -1, upsamples the low-resolution logits trilinearly to
//! the patch and applies the sigmoid.

use std::time::Instant;

use super::manifest::VolumeNormalize;
use super::{elapsed_ms as ms, Family, Graph, ModelError, Package, Precision, Session};
use crate::volume::normalize::Normalization;
use crate::volume::patch::Importance;
use crate::volume::resample::upsample_trilinear;
use crate::volume::segment::{
    segment_volume, Click, Point, SegmentError, VolumeConfig, VolumeMask,
};
use crate::volume::Volume;

const VOLUME: &str = "volume";
const EMBEDDINGS: &str = "image_embeddings";
const LOW_RES: &str = "low_res_masks";

/// A loaded SAM-3D package at one precision.
#[derive(Debug, Clone)]
pub struct Sam3d {
    package: Package,
    precision: Precision,
    encoder: Graph,
    decoder: Graph,
    config: VolumeConfig,
    /// N: points the decoder takes.
    points: usize,
    /// Low-resolution logit grid, x y z.
    low_res: [usize; 3],
}

/// Time spent in the graphs over all patches of one volume.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct VolumeTimings {
    pub patches: usize,
    pub encoder_ms: f64,
    pub decoder_ms: f64,
    /// Everything else: resampling, normalisation, cropping, blending, pasting back.
    pub volume_ms: f64,
}

fn contract(graph: &Graph, message: String) -> ModelError {
    ModelError::Contract {
        path: graph.path().to_path_buf(),
        message,
    }
}

impl Sam3d {
    /// Loads and optimises the encoder and decoder.
    pub fn load(
        package: Package,
        precision: Precision,
        threads: usize,
    ) -> Result<Sam3d, ModelError> {
        package.require(Family::Sam3d)?;
        let [encoder, decoder] = package.load_graphs(["encoder", "decoder"], precision, threads)?;
        let patch = match encoder.shape_of(VOLUME)? {
            [1, 1, d, h, w] => [*w, *h, *d],
            other => {
                return Err(contract(
                    &encoder,
                    format!("volume must be [1,1,D,H,W], manifest says {other:?}"),
                ))
            }
        };
        if decoder.shape_of(EMBEDDINGS)? != encoder.shape_of(EMBEDDINGS)? {
            return Err(contract(
                &decoder,
                "decoder image_embeddings differ from the encoder's output".into(),
            ));
        }
        let points = match decoder.shape_of("point_coords")? {
            [1, n, 3] if *n > 0 => *n,
            other => {
                return Err(contract(
                    &decoder,
                    format!("point_coords must be [1,N,3], manifest says {other:?}"),
                ))
            }
        };
        let low_res = match decoder.shape_of(LOW_RES)? {
            [1, 1, d, h, w] => [*w, *h, *d],
            other => {
                return Err(contract(
                    &decoder,
                    format!("low_res_masks must be [1,1,D,H,W], manifest says {other:?}"),
                ))
            }
        };
        let m = package.manifest();
        let v = m
            .volume
            .as_ref()
            .expect("sam3d manifests have [volume] (checked at parse)");
        let pair = |p: Option<[f64; 2]>| p.expect("checked at parse");
        let normalization = match v.normalize {
            VolumeNormalize::Zscore => Normalization::ZScore,
            VolumeNormalize::Window => {
                let [low, high] = pair(v.window);
                Normalization::Window { low, high }
            }
            VolumeNormalize::Percentile => {
                let [low, high] = pair(v.percentiles);
                Normalization::Percentile { low, high }
            }
        };
        let config = VolumeConfig {
            spacing: v.spacing,
            normalization,
            patch,
            overlap: v.overlap,
            threshold: m.output.threshold,
            importance: Importance::Gaussian,
        };
        config.check().map_err(|e| ModelError::Manifest {
            path: package.path(super::package::MANIFEST),
            message: e.to_string(),
        })?;
        Ok(Sam3d {
            package,
            precision,
            encoder,
            decoder,
            config,
            points,
            low_res,
        })
    }

    pub fn package(&self) -> &Package {
        &self.package
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// A session: the graphs' run states.
    pub fn session(&self) -> Result<Sam3dSession, ModelError> {
        Ok(Sam3dSession {
            model: self.clone(),
            encoder: self.encoder.session()?,
            decoder: self.decoder.session()?,
        })
    }
}

/// Run states of both graphs.
pub struct Sam3dSession {
    model: Sam3d,
    encoder: Session,
    decoder: Session,
}

impl Sam3dSession {
    /// Segments `volume` around `clicks` (input voxel coordinates), or everywhere with a
    /// sliding window when there are none. The mask comes back on the input's grid.
    pub fn segment(
        &mut self,
        volume: &Volume,
        clicks: &[Click],
    ) -> Result<(VolumeMask, VolumeTimings), SegmentError> {
        let n = self.model.points;
        if clicks.len() > n {
            return Err(SegmentError::Config {
                reason: format!(
                    "this decoder takes at most {n} clicks; {} were given",
                    clicks.len()
                ),
            });
        }
        let start = std::time::Instant::now();
        let mut timings = VolumeTimings::default();
        let model = &self.model;
        let (encoder, decoder) = (&mut self.encoder, &mut self.decoder);
        let mut run = |patch: &[f32], points: &[Point]| -> Result<Vec<f32>, ModelError> {
            let e = &model.encoder;
            let t0 = Instant::now();
            let input = e.tensor(e.shape_of(VOLUME)?, patch)?;
            let mut out = encoder.run(e.order_inputs(vec![(VOLUME, input)])?)?;
            timings.encoder_ms += ms(t0);
            let t1 = Instant::now();
            let d = &model.decoder;
            let mut coords = vec![0f32; 3 * n];
            let mut labels = vec![-1f32; n];
            for (k, (xyz, label)) in points.iter().enumerate() {
                coords[3 * k..3 * k + 3].copy_from_slice(xyz);
                labels[k] = *label;
            }
            let inputs = d.order_inputs(vec![
                (EMBEDDINGS, out.swap_remove(0)),
                ("point_coords", d.tensor(&[1, n, 3], &coords)?),
                ("point_labels", d.tensor(&[1, n], &labels)?),
            ])?;
            let outputs = decoder.run(inputs)?;
            timings.decoder_ms += ms(t1);
            timings.patches += 1;
            let logits = d.values(&outputs[0])?;
            let mut prob = upsample_trilinear(logits, model.low_res, model.config.patch)
                .map_err(|e| d.error(e))?;
            for p in &mut prob {
                let v = 1.0 / (1.0 + (-*p).exp());
                *p = if v.is_nan() { 0.0 } else { v };
            }
            Ok(prob)
        };
        let mask = segment_volume(volume, clicks, &model.config, &mut run)?;
        timings.volume_ms = ms(start) - timings.encoder_ms - timings.decoder_ms;
        Ok((mask, timings))
    }

    pub fn model(&self) -> &Sam3d {
        &self.model
    }
}
