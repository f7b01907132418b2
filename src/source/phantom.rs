//! Procedural phantom frames as a live source, for demos and tests without a probe or scope.
//!
//! Generating a 320×240 phantom takes about 10 ms (endoscopy) to 16 ms (ultrasound) on a
//! desktop x86-64 core in a release build, several times that on a small ARM board: too slow
//! to draw a fresh one every 33 ms next to inference. The source therefore generates a ring of
//! up to [`RING_FRAMES`] frames when it opens and cycles through them at the configured rate.
//! Frame `i` of the ring is drawn with seed `seed + i`; with the `alternate` modality even
//! frames are ultrasound and odd frames endoscopy.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde::Deserialize;

use super::pacing::Pacer;
use super::{rate_text, Source, SourceError};
use crate::frame::Frame;
use crate::phantom::{generate, Modality};

/// Most frames generated into the ring.
pub const RING_FRAMES: usize = 16;

/// Most bytes of RGB the ring may hold; larger frames get a shorter ring (at least two).
pub const RING_BYTES: usize = 64 << 20;

/// Which phantoms a [`PhantomSource`] draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PhantomModality {
    /// Ultrasound only.
    Ultrasound,
    /// Endoscopy only.
    Endoscopy,
    /// Ultrasound and endoscopy in turn.
    Alternate,
}

impl PhantomModality {
    /// The modality of ring frame `index`.
    fn of_frame(self, index: usize) -> Modality {
        match self {
            PhantomModality::Ultrasound => Modality::Ultrasound,
            PhantomModality::Endoscopy => Modality::Endoscopy,
            PhantomModality::Alternate if index.is_multiple_of(2) => Modality::Ultrasound,
            PhantomModality::Alternate => Modality::Endoscopy,
        }
    }

    /// The name used in configurations.
    pub fn as_str(self) -> &'static str {
        match self {
            PhantomModality::Ultrasound => "ultrasound",
            PhantomModality::Endoscopy => "endoscopy",
            PhantomModality::Alternate => "alternate",
        }
    }
}

impl std::str::FromStr for PhantomModality {
    type Err = String;

    fn from_str(s: &str) -> Result<PhantomModality, String> {
        match s {
            "ultrasound" => Ok(PhantomModality::Ultrasound),
            "endoscopy" => Ok(PhantomModality::Endoscopy),
            "alternate" => Ok(PhantomModality::Alternate),
            _ => Err(format!(
                "unknown phantom modality {s:?} (expected ultrasound, endoscopy or alternate)"
            )),
        }
    }
}

/// How many frames of `width × height` the ring holds.
fn ring_len_for(width: u32, height: u32) -> usize {
    let frame_bytes = (width as usize * height as usize * 3).max(1);
    (RING_BYTES / frame_bytes).clamp(2, RING_FRAMES)
}

/// Cycles through a ring of phantom frames generated at open; never ends.
pub struct PhantomSource {
    ring: Vec<Frame>,
    next: usize,
    modality: PhantomModality,
    seed: u64,
    pacer: Pacer,
}

impl PhantomSource {
    /// Generates the ring (see the module docs) and paces it at `interval` (`None`: as fast as
    /// asked). Sizes outside the phantom generator's range are an error.
    pub fn new(
        modality: PhantomModality,
        width: u32,
        height: u32,
        seed: u64,
        interval: Option<Duration>,
    ) -> Result<PhantomSource, SourceError> {
        let ring = (0..ring_len_for(width, height))
            .map(|i| {
                generate(
                    modality.of_frame(i),
                    width,
                    height,
                    seed.wrapping_add(i as u64),
                )
                .map(|phantom| phantom.frame)
            })
            .collect::<Result<Vec<Frame>, _>>()?;
        Ok(PhantomSource {
            ring,
            next: 0,
            modality,
            seed,
            pacer: Pacer::new(interval),
        })
    }

    /// Number of distinct frames the source cycles through.
    pub fn ring_len(&self) -> usize {
        self.ring.len()
    }
}

impl Source for PhantomSource {
    fn describe(&self) -> String {
        let first = &self.ring[0];
        format!(
            "phantom {} {}x{}, seed {}, ring of {} frames, {}",
            self.modality.as_str(),
            first.width(),
            first.height(),
            self.seed,
            self.ring.len(),
            rate_text(self.pacer.interval())
        )
    }

    fn next_frame(&mut self, stop: &AtomicBool) -> Result<Option<Frame>, SourceError> {
        if !self.pacer.wait(stop) {
            return Ok(None);
        }
        let frame = self.ring[self.next].clone();
        self.next = (self.next + 1) % self.ring.len();
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phantom::PhantomError;

    #[test]
    fn alternate_ring_matches_the_generator_and_cycles() {
        let stop = AtomicBool::new(false);
        let mut source = PhantomSource::new(PhantomModality::Alternate, 64, 48, 7, None).unwrap();
        assert_eq!(source.ring_len(), RING_FRAMES);
        let first = source.next_frame(&stop).unwrap().unwrap();
        let second = source.next_frame(&stop).unwrap().unwrap();
        assert_eq!(
            first,
            generate(Modality::Ultrasound, 64, 48, 7).unwrap().frame
        );
        assert_eq!(
            second,
            generate(Modality::Endoscopy, 64, 48, 8).unwrap().frame
        );
        for _ in 2..RING_FRAMES {
            source.next_frame(&stop).unwrap().unwrap();
        }
        assert_eq!(source.next_frame(&stop).unwrap().unwrap(), first);
        assert!(source.describe().contains("alternate 64x48, seed 7"));
    }

    #[test]
    fn large_frames_get_a_shorter_ring() {
        assert_eq!(ring_len_for(320, 240), RING_FRAMES);
        assert_eq!(ring_len_for(1920, 1080), 10);
        assert_eq!(ring_len_for(4096, 4096), 2);
    }

    #[test]
    fn bad_sizes_and_modalities_are_errors() {
        let err = PhantomSource::new(PhantomModality::Ultrasound, 8, 8, 0, None)
            .err()
            .unwrap();
        assert!(matches!(
            err,
            SourceError::Phantom(PhantomError::BadSize {
                width: 8,
                height: 8
            })
        ));
        assert!(err.to_string().contains("8x8"), "{err}");
        let err = "mri".parse::<PhantomModality>().unwrap_err();
        assert!(err.contains("\"mri\""), "{err}");
    }
}
