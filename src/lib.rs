//! edgeseg: segment ultrasound and endoscopy frames with ONNX models run by tract.
//!
//! Modules follow the data flow: [`frame`] (types) → [`input`] (files and DICOM),
//! [`source`] (live frame sources) and [`phantom`] (procedural frames) → [`roi`] (region of
//! interest) → [`model`] (packages, engine, families) → [`postprocess`] and [`smoothing`] →
//! [`sink`] outputs: [`display`], [`serial`] (over the wire format in [`protocol`]),
//! [`recording`] and [`output`] files. [`live`] runs the live loop a [`profile`] describes.
//! [`volume`] reads NIfTI files, DICOM series and frame stacks as 3D volumes and runs the volume
//! pipeline (resample, normalise, patch or sliding window, paste back) of 3D models.
//! [`prompt`] builds text prompts from attributes; [`dataset`] and [`eval`] measure a model on a
//! folder of labelled frames. [`bench`](mod@bench) measures all of it ([`histogram`] holds the latencies).

pub mod alloc;
pub mod background;
pub mod bench;
pub mod dataset;
pub mod display;
pub mod eval;
pub mod frame;
pub mod histogram;
pub mod input;
pub mod live;
pub mod model;
pub mod output;
pub mod phantom;
pub mod postprocess;
pub mod preprocess;
pub mod profile;
pub mod prompt;
pub mod protocol;
pub mod recording;
pub mod roi;
pub mod serial;
pub mod sink;
pub mod smoothing;
pub mod source;
pub mod tokenizer;
pub mod volume;
