//! edgeseg: segment ultrasound and endoscopy frames with ONNX models run by tract.
//!
//! Modules follow the data flow: [`frame`] (types) → [`input`] (files and DICOM) and
//! [`phantom`] (procedural frames) → [`model`] (packages, engine, families) → [`postprocess`]
//! → [`output`]. [`prompt`] builds text prompts from attributes; [`dataset`] and [`eval`]
//! measure a model on a folder of labelled frames.

pub mod dataset;
pub mod eval;
pub mod frame;
pub mod input;
pub mod model;
pub mod output;
pub mod phantom;
pub mod postprocess;
pub mod preprocess;
pub mod prompt;
pub mod protocol;
pub mod tokenizer;
