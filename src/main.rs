//! The `edgeseg` command line: a thin layer over the library that parses arguments, reports
//! each failure as one line naming the file and the problem, and exits with a deliberate code:
//! 0 all inputs done, 1 some inputs failed (the others were still processed), 2 the run could
//! not start (bad arguments, model or dataset).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use edgeseg::frame::Frame;
use edgeseg::model::{
    Click, Family, FrameModel, Package, Precision, Request, Sam, Sam3d, SamPrompt,
};
use edgeseg::output::{self, FrameSummary, Summary};
use edgeseg::postprocess;
use edgeseg::profile::{self, Overrides, Profile};
use edgeseg::prompt::{Attributes, PromptType};
use edgeseg::volume::segment::Click as VolumeClick;
use edgeseg::volume::{nifti, LoadOptions};
use edgeseg::{eval, input, live, phantom, serial};

/// musl's malloc unmaps every large block it frees; this keeps them for the next frame
/// (`edgeseg::alloc` says why).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: edgeseg::alloc::Retaining = edgeseg::alloc::Retaining::new();

#[derive(Parser)]
#[command(
    name = "edgeseg",
    version,
    about = "Segment ultrasound and endoscopy frames on edge devices"
)]
struct Cli {
    /// Log more (-v info, -vv debug) to stderr.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

/// Which model, at which precision, on how many threads.
#[derive(Args)]
struct ModelArgs {
    /// Model package folder (default: the bundled models/clipseg-phantom).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Graph precision: f32, f16 (tract's translation of the f32 graph) or int8.
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// Threads for tract's matrix products (1 = single-threaded).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

/// What to segment, per model family: a text prompt or attributes and an adapter (vlsm),
/// clicks and a box (sam), a task and modality (conditioned); plain models take nothing.
#[derive(Args)]
struct PromptArgs {
    /// Text prompt, e.g. "round hypoechoic lesion" (vlsm).
    #[arg(long, conflicts_with = "attributes")]
    prompt: Option<String>,
    /// Attributes, e.g. class=polyp,shape=round,color=pink,size=small,count=one,location="left of the image".
    #[arg(long)]
    attributes: Option<Attributes>,
    /// Prompt level P0..P9 built from --attributes (default: the model's).
    #[arg(long, requires = "attributes")]
    prompt_type: Option<PromptType>,
    /// Task adapter of an adapted vlsm package (default: its first).
    #[arg(long)]
    adapter: Option<String>,
    /// A click X,Y in image pixels (sam) or X,Y,Z in voxels of the input volume (sam3d),
    /// optionally followed by ,1 (foreground, the default) or ,0 (background); repeatable.
    #[arg(long = "point")]
    points: Vec<String>,
    /// A box X0,Y0,X1,Y1 in image pixels (sam).
    #[arg(long = "box", value_parser = parse_box)]
    bbox: Option<[f64; 4]>,
    /// Write all of SAM's masks, not only the chosen one (sam).
    #[arg(long)]
    all_masks: bool,
    /// Task name, e.g. lesion (conditioned).
    #[arg(long)]
    task: Option<String>,
    /// Modality name, e.g. US (conditioned).
    #[arg(long)]
    modality: Option<String>,
}

/// How volume inputs are read (sam3d models).
#[derive(Args)]
struct VolumeArgs {
    /// Which volume of a 4D NIfTI file (zero-based).
    #[arg(long)]
    volume_index: Option<usize>,
    /// Voxel spacing X,Y,Z in mm for a folder of 2D frames (an ultrasound sweep).
    #[arg(long, value_parser = parse_spacing)]
    spacing: Option<[f64; 3]>,
}

#[derive(Subcommand)]
enum Command {
    /// Segment image and DICOM files: writes masks, overlays and a JSON summary per input.
    Segment {
        /// PNG, JPEG, BMP or DICOM files (every frame of a multi-frame DICOM is segmented).
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        prompt: PromptArgs,
        /// Output folder (created).
        #[arg(long, default_value = "out")]
        out: PathBuf,
        /// SAM: encode the first input once, then read prompts from stdin, one per line
        /// (`X,Y[,L] ... [box X0,Y0,X1,Y1]`), and decode each (prints the decoder-only cost).
        #[arg(long)]
        interactive: bool,
        #[command(flatten)]
        volume: VolumeArgs,
    },
    /// List model packages, or verify them.
    Models {
        #[command(subcommand)]
        action: Option<ModelsAction>,
    },
    /// Print the prompt of every level P0..P9 for the given attributes.
    Prompts {
        #[arg(long)]
        attributes: Attributes,
    },
    /// Dice and IoU of a model over a labelled folder (samples.jsonl + images + masks). SAM
    /// models get one click at the most interior pixel of each reference mask; conditioned
    /// models the sample's class as task and its modality.
    Eval {
        #[command(flatten)]
        model: ModelArgs,
        /// Task adapter (adapted vlsm packages).
        #[arg(long)]
        adapter: Option<String>,
        /// Dataset folder.
        #[arg(long)]
        data: PathBuf,
        /// Build every prompt from the samples' attributes at this level.
        #[arg(long)]
        prompt_type: Option<PromptType>,
        /// Also write per-sample scores as JSON lines to this file.
        #[arg(long)]
        scores: Option<PathBuf>,
    },
    /// Segment a live stream as a device profile says: source → model → display, serial link,
    /// files and telemetry, until the source ends, a limit is reached or Ctrl-C; then print the
    /// summary (frames, fps, latency percentiles per stage and per sink).
    Run(RunArgs),
    /// Measure latency: load time, first frame, then per-stage, end-to-end and per-graph
    /// percentiles, throughput, CPU time and peak memory of each model × precision × thread
    /// count, over frames captured from the source beforehand (volumes for sam3d models).
    Bench(BenchArgs),
    /// Decode the serial wire format from a port and print one line per message.
    Listen {
        /// Serial port, e.g. /dev/ttyUSB0.
        #[arg(long)]
        port: PathBuf,
        /// Line rate (8N1).
        #[arg(long, default_value_t = 115_200)]
        baud: u32,
    },
    /// Write procedurally generated ultrasound and endoscopy phantoms with their masks.
    Phantoms {
        /// Output folder (created).
        #[arg(long, default_value = "phantoms")]
        out: PathBuf,
        /// Number of images (modalities alternate).
        #[arg(long, default_value_t = 16)]
        count: usize,
        /// Random seed; the same seed gives the same images.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Image size, WxH.
        #[arg(long, default_value = "256x256", value_parser = parse_size)]
        size: (u32, u32),
    },
}

/// `edgeseg run`: a profile and the settings that override it.
#[derive(Args)]
struct RunArgs {
    /// Device profile (TOML); default firmware-config/demo.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Frame source: phantom, folder:DIR, dicom:FILE, raw:WxH:gray8|rgb24|yuyv (stdin) or
    /// v4l2:DEVICE.
    #[arg(long)]
    source: Option<String>,
    /// Model package folder.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Graph precision: f32, f16 or int8.
    #[arg(long)]
    precision: Option<Precision>,
    /// Threads for the model's matrix products.
    #[arg(long)]
    threads: Option<usize>,
    /// Text prompt.
    #[arg(long)]
    prompt: Option<String>,
    /// Task adapter to start with (adapted vlsm packages).
    #[arg(long)]
    adapter: Option<String>,
    /// Read `adapter NAME` lines during the run from `stdin` or a file (followed as it grows).
    #[arg(long)]
    control: Option<String>,
    /// Task name (conditioned models).
    #[arg(long)]
    task: Option<String>,
    /// Modality name (conditioned models).
    #[arg(long)]
    modality: Option<String>,
    /// Display: none, png:DIR, fbdev[:DEVICE] or drm[:DEVICE].
    #[arg(long)]
    display: Option<String>,
    /// Serial link: none or PORT[@BAUD].
    #[arg(long)]
    serial: Option<String>,
    /// Stop after this many processed frames (replaces the profile's [run]).
    #[arg(long)]
    frames: Option<u64>,
    /// Stop after this many seconds (replaces the profile's [run]).
    #[arg(long)]
    seconds: Option<f64>,
    /// Also write the summary as JSON here.
    #[arg(long)]
    summary: Option<PathBuf>,
}

/// `edgeseg bench`: what to sweep, on what, and where the report goes.
#[derive(Args)]
struct BenchArgs {
    /// Model package folder; repeat to compare several (default: the bundled model).
    #[arg(long = "model")]
    models: Vec<PathBuf>,
    /// Precisions, comma-separated (f32,f16,int8); those a package does not serve are skipped
    /// (default: f32, or the profile's with --live).
    #[arg(long, value_delimiter = ',')]
    precision: Vec<Precision>,
    /// Thread counts, comma-separated (default: 1, or the profile's with --live).
    #[arg(long, value_delimiter = ',')]
    threads: Vec<usize>,
    /// Measure the live loop of a device profile instead (frames at the source's rate, through
    /// the mailbox and the profile's sinks); `--frames` frames per run, no warm-up.
    #[arg(long)]
    live: bool,
    /// The profile of --live (default firmware-config/demo.toml).
    #[arg(long, requires = "live")]
    config: Option<PathBuf>,
    /// Timed frames per run (volumes for sam3d models).
    #[arg(long, default_value_t = 100)]
    frames: usize,
    /// Untimed frames after the first.
    #[arg(long, default_value_t = 10)]
    warmup: usize,
    /// Frame source, as for `edgeseg run` (frames are captured before timing).
    #[arg(long, default_value = "phantom")]
    source: String,
    /// Frame size WxH of a phantom source (default 320x240).
    #[arg(long, value_parser = parse_size)]
    size: Option<(u32, u32)>,
    /// The volume sam3d models segment: a NIfTI file or a DICOM series folder.
    #[arg(long)]
    volume: Option<PathBuf>,
    #[command(flatten)]
    prompt: PromptArgs,
    #[command(flatten)]
    volume_args: VolumeArgs,
    /// Write the whole report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write one CSV row per stage and graph of each run here.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Draw the latency CDF and per-stage bars as SVG here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Write each graph's first inputs here (for timing another runtime on the same tensors).
    #[arg(long)]
    dump_inputs: Option<PathBuf>,
    /// Also time each operator type of every graph (10 extra runs per graph).
    #[arg(long)]
    profile_ops: bool,
}

#[derive(Subcommand)]
enum ModelsAction {
    /// List the packages under a folder (default: models).
    List { root: Option<PathBuf> },
    /// Check hashes and graph contracts of one package, or of every package under a folder.
    Verify { dir: Option<PathBuf> },
}

/// `X,Y` or `X,Y,1|0`.
fn parse_click(s: &str) -> Result<Click, String> {
    let v = numbers(s)?;
    match v[..] {
        [x, y] => Ok(Click {
            x,
            y,
            positive: true,
        }),
        [x, y, l] if l == 1.0 || l == 0.0 => Ok(Click {
            x,
            y,
            positive: l == 1.0,
        }),
        _ => Err(format!("point `{s}` is not X,Y or X,Y,1|0")),
    }
}

/// `X,Y,Z` or `X,Y,Z,1|0`, in voxels.
fn parse_click3(s: &str) -> Result<VolumeClick, String> {
    let v = numbers(s)?;
    match v[..] {
        [x, y, z] => Ok(VolumeClick {
            pos: [x, y, z],
            positive: true,
        }),
        [x, y, z, l] if l == 1.0 || l == 0.0 => Ok(VolumeClick {
            pos: [x, y, z],
            positive: l == 1.0,
        }),
        _ => Err(format!(
            "point `{s}` is not X,Y,Z or X,Y,Z,1|0 (a volume model takes voxel coordinates)"
        )),
    }
}

fn parse_spacing(s: &str) -> Result<[f64; 3], String> {
    numbers(s)?
        .try_into()
        .map_err(|_| format!("spacing `{s}` is not X,Y,Z in mm"))
}

/// `X0,Y0,X1,Y1`.
fn parse_box(s: &str) -> Result<[f64; 4], String> {
    numbers(s)?
        .try_into()
        .map_err(|_| format!("box `{s}` is not X0,Y0,X1,Y1"))
}

fn numbers(s: &str) -> Result<Vec<f64>, String> {
    s.split(',')
        .map(|v| {
            v.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| format!("`{v}` in `{s}` is not a number"))
        })
        .collect()
}

/// One interactive prompt line: clicks `X,Y[,L]` and an optional `box X0,Y0,X1,Y1`.
fn parse_prompt_line(line: &str) -> Result<SamPrompt, String> {
    let mut prompt = SamPrompt::default();
    let mut words = line.split_whitespace();
    while let Some(word) = words.next() {
        if word == "box" {
            let b = words.next().ok_or("`box` needs X0,Y0,X1,Y1")?;
            prompt.bbox = Some(parse_box(b)?);
        } else {
            prompt.clicks.push(parse_click(word)?);
        }
    }
    Ok(prompt)
}

fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("size `{s}` is not WxH");
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    Ok((w.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?))
}

/// An error and its causes on one line, leaving out a cause whose text the message already holds
/// (library errors quote their source).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line = format!("{line}: {text}");
        }
    }
    line
}

/// Errors that stop the run before any input is processed (exit 2).
struct Fatal(anyhow::Error);

impl<E: Into<anyhow::Error>> From<E> for Fatal {
    fn from(e: E) -> Self {
        Fatal(e.into())
    }
}

fn open_package(args: &ModelArgs) -> anyhow::Result<Package> {
    let dir = args.model.clone().unwrap_or_else(Package::default_dir);
    Ok(Package::open(&dir)?)
}

fn open_model(args: &ModelArgs, request: &Request) -> anyhow::Result<FrameModel> {
    let package = open_package(args)?;
    let start = Instant::now();
    let model = FrameModel::open(package, args.precision, args.threads.max(1), request)?;
    log::info!(
        "loaded {} ({}) in {:.0} ms",
        model.package().dir().display(),
        args.precision,
        start.elapsed().as_secs_f64() * 1e3
    );
    Ok(model)
}

/// The request the arguments make for `package`'s family.
fn request(args: &PromptArgs, package: &Package) -> anyhow::Result<Request> {
    let (prompt, allow_empty) = match (&args.prompt, &args.attributes) {
        (Some(p), _) => (Some(p.clone()), false),
        (None, Some(a)) => {
            let default = package.manifest().prompt.as_ref().map(|p| p.default);
            let kind = args
                .prompt_type
                .or(default)
                .context("model has no default prompt type")?;
            (Some(a.prompt(kind)?), kind.level() == 0)
        }
        (None, None) => (None, false),
    };
    Ok(Request {
        prompt,
        allow_empty,
        adapter: args.adapter.clone(),
        sam: SamPrompt {
            clicks: args
                .points
                .iter()
                .map(|p| parse_click(p))
                .collect::<Result<_, _>>()
                .map_err(anyhow::Error::msg)?,
            bbox: args.bbox,
        },
        all_masks: args.all_masks,
        task: args.task.clone(),
        modality: args.modality.clone(),
    })
}

/// Segments every frame of one input file and writes its outputs.
fn segment_file(model: &mut FrameModel, path: &Path, out: &Path) -> anyhow::Result<usize> {
    let t0 = Instant::now();
    let loaded = input::load(path)?;
    let decode = t0.elapsed().as_secs_f64() * 1e3 / loaded.frames.len() as f64;
    let stem = file_stem(path);
    let multi = loaded.frames.len() > 1;
    let mut frames = Vec::with_capacity(loaded.frames.len());
    for (i, frame) in loaded.frames.iter().enumerate() {
        let index = multi.then_some(i);
        frames.push(segment_frame(model, frame, out, &stem, index, decode)?);
    }
    let summary = Summary {
        input: path.display().to_string(),
        model: model.package().name().to_string(),
        precision: model.precision().to_string(),
        prompt: Some(model.label().to_string()),
        frames,
    };
    output::write_summary(&out.join(format!("{stem}.json")), &summary)?;
    Ok(loaded.frames.len())
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "input".into())
}

fn segment_frame(
    model: &mut FrameModel,
    frame: &Frame,
    out: &Path,
    stem: &str,
    index: Option<usize>,
    decode_ms: f64,
) -> anyhow::Result<FrameSummary> {
    let segmented = model.segment(frame)?;
    let result = segmented.best();
    let mut timings = result.timings;
    timings.decode = decode_ms;
    let mask = &result.segmentation.mask;
    let mask_name = output::output_name(stem, index, "mask");
    let overlay_name = output::output_name(stem, index, "overlay");
    output::write_mask_png(&out.join(&mask_name), mask)?;
    output::write_overlay_png(&out.join(&overlay_name), frame, mask, [255, 200, 0])?;
    let (mut label_map, mut class_areas) = (None, None);
    if let Some(labels) = &result.labels {
        let name = output::output_name(stem, index, "labels");
        output::write_label_png(&out.join(&name), frame.width(), frame.height(), labels)?;
        let names = &model.package().manifest().output.labels;
        let mut areas = std::collections::BTreeMap::new();
        for &l in labels {
            let class = names
                .get(usize::from(l))
                .cloned()
                .unwrap_or_else(|| l.to_string());
            *areas.entry(class).or_insert(0usize) += 1;
        }
        (label_map, class_areas) = (Some(name), Some(areas));
    }
    let all_masks = (segmented.results.len() > 1)
        .then(|| {
            segmented
                .results
                .iter()
                .enumerate()
                .map(|(k, r)| {
                    let name = output::output_name(stem, index, &format!("mask{k}"));
                    output::write_mask_png(&out.join(&name), &r.segmentation.mask)?;
                    Ok(name)
                })
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .transpose()?;
    let sam = !segmented.scores.is_empty();
    Ok(FrameSummary {
        frame: index.unwrap_or(0),
        width: frame.width(),
        height: frame.height(),
        measures: postprocess::measure(&result.segmentation, frame.spacing()),
        mask: mask_name,
        overlay: overlay_name,
        label_map,
        class_areas,
        iou_predictions: sam.then(|| segmented.scores.clone()),
        chosen: sam.then_some(segmented.output),
        all_masks,
        timings_ms: timings,
    })
}

fn segment(
    inputs: &[PathBuf],
    model_args: &ModelArgs,
    prompt: &PromptArgs,
    out: &Path,
    interactive: bool,
    volume: &VolumeArgs,
) -> Result<ExitCode, Fatal> {
    std::fs::create_dir_all(out)
        .with_context(|| format!("{}: cannot create output folder", out.display()))?;
    if interactive {
        return interact(inputs, model_args, out);
    }
    let package = open_package(model_args)?;
    if package.manifest().family == Family::Sam3d {
        return segment_volumes(inputs, package, model_args, prompt, volume, out);
    }
    let request = request(prompt, &package)?;
    let mut model = open_model(model_args, &request)?;
    Ok(each_input(inputs, out, |path| {
        Ok(format!("{} frame(s)", segment_file(&mut model, path, out)?))
    }))
}

/// Runs `each` on every input and prints what it made, or its error in one line; the other
/// inputs still run. Exit code 1 when any failed.
fn each_input(
    inputs: &[PathBuf],
    out: &Path,
    mut each: impl FnMut(&Path) -> anyhow::Result<String>,
) -> ExitCode {
    let mut failed = 0;
    for path in inputs {
        match each(path) {
            Ok(what) => println!("{}: {what} → {}", path.display(), out.display()),
            Err(e) => {
                failed += 1;
                eprintln!("error: {}", one_line(&e));
            }
        }
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `segment` with a sam3d model: each input is a volume; writes `<stem>_mask.nii.gz` with the
/// input's affine and `<stem>.json` with the voxel count, volume and timings.
fn segment_volumes(
    inputs: &[PathBuf],
    package: Package,
    model_args: &ModelArgs,
    prompt: &PromptArgs,
    volume: &VolumeArgs,
    out: &Path,
) -> Result<ExitCode, Fatal> {
    if prompt.prompt.is_some()
        || prompt.attributes.is_some()
        || prompt.adapter.is_some()
        || prompt.bbox.is_some()
        || prompt.all_masks
        || prompt.task.is_some()
        || prompt.modality.is_some()
    {
        return Err(anyhow::anyhow!(
            "model `{}` is a volume model (sam3d): it takes --point X,Y,Z[,1|0] clicks only",
            package.name()
        )
        .into());
    }
    let clicks: Vec<VolumeClick> = prompt
        .points
        .iter()
        .map(|p| parse_click3(p))
        .collect::<Result<_, _>>()
        .map_err(anyhow::Error::msg)?;
    let start = Instant::now();
    let model = Sam3d::load(package, model_args.precision, model_args.threads.max(1))?;
    log::info!(
        "loaded {} in {:.0} ms",
        model.package().name(),
        start.elapsed().as_secs_f64() * 1e3
    );
    let mut session = model.session()?;
    let options = LoadOptions {
        volume_index: volume.volume_index,
        spacing: volume.spacing,
    };
    Ok(each_input(inputs, out, |path| {
        let t0 = Instant::now();
        let vol = edgeseg::volume::load(path, &options)?;
        let read_ms = t0.elapsed().as_secs_f64() * 1e3;
        let (mask, timings) = session.segment(&vol, &clicks)?;
        let stem = volume_stem(path);
        let name = format!("{stem}_mask.nii.gz");
        nifti::write_mask(
            &out.join(&name),
            mask.dims,
            mask.spacing,
            &mask.affine,
            &mask.mask,
        )?;
        let summary = serde_json::json!({
            "input": path.display().to_string(),
            "model": model.package().name(),
            "precision": model.precision().to_string(),
            "clicks": clicks.iter().map(|c| [c.pos[0], c.pos[1], c.pos[2], if c.positive { 1.0 } else { 0.0 }]).collect::<Vec<_>>(),
            "dims": mask.dims,
            "spacing_mm": mask.spacing,
            "mask": name,
            "voxels": mask.voxels,
            "volume_ml": mask.volume_ml,
            "timings_ms": { "read": read_ms, "encoder": timings.encoder_ms, "decoder": timings.decoder_ms, "volume": timings.volume_ms, "patches": timings.patches },
        });
        let json = serde_json::to_vec_pretty(&summary)?;
        std::fs::write(out.join(format!("{stem}.json")), json)
            .with_context(|| format!("{}: cannot write the summary", out.display()))?;
        Ok(format!("{} voxels, {:.2} mL", mask.voxels, mask.volume_ml))
    }))
}

/// A file name without `.nii.gz`, `.nii` or any other extension; a folder's name.
fn volume_stem(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "volume".into());
    for ext in [".nii.gz", ".nii"] {
        if let Some(stem) = name.strip_suffix(ext) {
            return stem.to_string();
        }
    }
    file_stem(path)
}

/// `segment --interactive`: one SAM encoder run, then a decoder run per stdin line; prints one
/// JSON line per prompt with the decoder-only time and writes its mask. A bad line is reported
/// and the loop goes on.
fn interact(inputs: &[PathBuf], model_args: &ModelArgs, out: &Path) -> Result<ExitCode, Fatal> {
    use std::io::BufRead;
    let [path] = inputs else {
        return Err(anyhow::anyhow!("--interactive takes exactly one image").into());
    };
    let sam = Sam::load(
        open_package(model_args)?,
        model_args.precision,
        model_args.threads.max(1),
    )?;
    let mut session = sam.session()?;
    let frame = input::load(path)?.frames.remove(0);
    let encoded = session.set_image(&frame)?;
    println!(
        "{{\"encoded\":\"{}\",\"preprocess_ms\":{:.3},\"encoder_ms\":{:.3}}}",
        path.display(),
        encoded.preprocess,
        encoded.inference
    );
    let stem = file_stem(path);
    let mut failed = 0;
    for (n, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.context("stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let result = parse_prompt_line(&line)
            .map_err(anyhow::Error::msg)
            .and_then(|p| Ok(session.predict(&p, false)?));
        match result {
            Ok(r) => {
                let mask = &r.masks[0];
                let name = format!("{stem}_prompt{n}_mask.png");
                output::write_mask_png(&out.join(&name), &mask.mask)?;
                let line = serde_json::json!({
                    "prompt": n,
                    "decoder_ms": r.timings.inference,
                    "postprocess_ms": r.timings.postprocess,
                    "chosen": r.chosen,
                    "iou_predictions": r.iou,
                    "area_px": mask.mask.area(),
                    "mask": name,
                });
                println!("{line}");
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: prompt {n}: {}", one_line(&e));
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn models(action: Option<ModelsAction>) -> Result<ExitCode, Fatal> {
    match action.unwrap_or(ModelsAction::List { root: None }) {
        ModelsAction::List { root } => {
            let root = root.unwrap_or_else(|| PathBuf::from("models"));
            println!("{:<28} {:<12} {:<16} path", "name", "family", "precisions");
            for dir in Package::discover(&root)? {
                match Package::open(&dir) {
                    Ok(p) => {
                        let m = p.manifest();
                        let precisions: Vec<&str> =
                            m.precisions().iter().map(|p| p.as_str()).collect();
                        println!(
                            "{:<28} {:<12} {:<16} {}",
                            m.name,
                            m.family.as_str(),
                            precisions.join(","),
                            dir.display()
                        );
                    }
                    Err(e) => eprintln!("error: {e}"),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ModelsAction::Verify { dir } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from("models"));
            let dirs = if dir.join(edgeseg::model::package::MANIFEST).exists() {
                vec![dir]
            } else {
                Package::discover(&dir)?
            };
            let mut failed = 0;
            for d in &dirs {
                match Package::open(d).and_then(|p| p.verify()) {
                    Ok(checks) => {
                        for c in checks {
                            let precisions: Vec<&str> =
                                c.precisions.iter().map(|p| p.as_str()).collect();
                            println!(
                                "ok  {}/{} ({}: {})",
                                d.display(),
                                c.file,
                                c.role,
                                precisions.join(",")
                            );
                        }
                    }
                    Err(e) => {
                        failed += 1;
                        eprintln!("error: {e}");
                    }
                }
            }
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

fn evaluate(
    model_args: &ModelArgs,
    adapter: Option<String>,
    data: &Path,
    prompt_type: Option<PromptType>,
    scores_path: Option<&Path>,
) -> Result<ExitCode, Fatal> {
    let package = open_package(model_args)?;
    if package.manifest().family == Family::Sam3d {
        let model = Sam3d::load(package, model_args.precision, model_args.threads.max(1))?;
        let scores = eval::evaluate_volumes(&mut model.session()?, data)?;
        return report_scores(
            model.package().name(),
            model_args,
            data,
            prompt_type,
            &scores,
            scores_path,
        );
    }
    let options = eval::Options {
        precision: model_args.precision,
        threads: model_args.threads.max(1),
        prompt_type,
        adapter,
    };
    let scores = eval::evaluate(&package, data, &options)?;
    report_scores(
        package.name(),
        model_args,
        data,
        prompt_type,
        &scores,
        scores_path,
    )
}

/// Prints the score table and writes per-sample scores when asked.
fn report_scores(
    name: &str,
    model_args: &ModelArgs,
    data: &Path,
    prompt_type: Option<PromptType>,
    scores: &[eval::SampleScore],
    scores_path: Option<&Path>,
) -> Result<ExitCode, Fatal> {
    if let Some(path) = scores_path {
        let lines: Vec<String> = scores
            .iter()
            .map(|s| serde_json::to_string(s).expect("scores serialize"))
            .collect();
        std::fs::write(path, lines.join("\n") + "\n")
            .with_context(|| format!("{}: cannot write scores", path.display()))?;
    }
    println!(
        "model {} ({}), data {}, prompt type {}",
        name,
        model_args.precision,
        data.display(),
        prompt_type
            .map(|t| t.to_string())
            .unwrap_or_else(|| "per sample".into())
    );
    println!(
        "{:<10} {:>8} {:>8} {:>8}",
        "class", "samples", "dice", "iou"
    );
    for g in eval::summarize(scores) {
        println!(
            "{:<10} {:>8} {:>8.4} {:>8.4}",
            g.group, g.samples, g.dice, g.iou
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A flag set by SIGINT and SIGTERM.
fn stop_on_signals() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("cannot install the signal handler")?;
    }
    Ok(stop)
}

fn live(args: RunArgs) -> Result<ExitCode, Fatal> {
    let path = args
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(profile::DEMO));
    let mut profile = Profile::load(&path)?;
    profile.apply(&Overrides {
        source: args.source,
        model: args.model,
        precision: args.precision,
        threads: args.threads,
        prompt: args.prompt,
        adapter: args.adapter,
        control: args.control,
        task: args.task,
        modality: args.modality,
        display: args.display,
        serial: args.serial,
        frames: args.frames,
        seconds: args.seconds,
    })?;
    let stop = stop_on_signals()?;
    let setup = live::setup(&profile)?;
    println!("profile    {}", path.display());
    if !profile.description.is_empty() {
        println!("           {}", profile.description);
    }
    println!(
        "model      {} ({}) loaded in {:.0} ms, prompt \"{}\"",
        setup.model,
        profile.model.precision,
        setup.load.as_secs_f64() * 1e3,
        profile.model.prompt
    );
    let report = live::run(setup.source, setup.stages, setup.sinks, setup.limits, stop);
    let received = setup.loopback.map(|l| l.finish());
    print!("{}", report.table());
    if let Some(received) = received {
        match received {
            Ok(summary) => println!("loopback   received: {summary}"),
            Err(e) => eprintln!("error: serial loopback receiver: {e}"),
        }
    }
    let summary_paths = [
        args.summary,
        profile.telemetry.as_ref().and_then(|t| t.summary.clone()),
    ];
    let mut json = serde_json::to_vec_pretty(&report).context("summary")?;
    json.push(b'\n');
    for path in summary_paths.into_iter().flatten() {
        std::fs::write(&path, &json)
            .with_context(|| format!("{}: cannot write the summary", path.display()))?;
    }
    Ok(if report.failed == 0 && report.source_errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The progress bar and one line per finished run, on stderr.
fn bench_progress() -> impl FnMut(edgeseg::bench::Progress) {
    use edgeseg::bench::Progress;
    use std::io::{IsTerminal, Write};
    let tty = std::io::stderr().is_terminal();
    let (mut label, mut total) = (String::new(), 0);
    move |p| match p {
        Progress::Start(l, n) => (label, total) = (l.to_string(), n),
        Progress::Frame(i) if tty => {
            let filled = i * 30 / total.max(1);
            let bar = format!("{}{}", "#".repeat(filled), ".".repeat(30 - filled));
            eprint!("\r{label} [{bar}] {i}/{total}");
            let _ = std::io::stderr().flush();
        }
        Progress::Frame(_) => {}
        Progress::Done(r) => {
            let e = r.stage("end_to_end");
            eprintln!(
                "{}{label}: end-to-end p50 {:.2} ms, p99 {:.2} ms, {:.1} fps",
                if tty { "\r\x1b[2K" } else { "" },
                e.p50,
                e.p99,
                r.throughput_fps
            );
        }
        Progress::Skipped(why) => eprintln!("skipped: {why}"),
    }
}

fn bench(args: BenchArgs) -> Result<ExitCode, Fatal> {
    use edgeseg::bench;
    let report = if args.live {
        bench_live(&args)?
    } else {
        bench_closed_loop(&args)?
    };
    print!("{}", report.table());
    let write = |path: &Option<PathBuf>, text: String| -> anyhow::Result<()> {
        if let Some(path) = path {
            std::fs::write(path, text)
                .with_context(|| format!("{}: cannot write", path.display()))?;
        }
        Ok(())
    };
    write(&args.json, serde_json::to_string_pretty(&report)? + "\n")?;
    write(&args.csv, report.csv())?;
    write(&args.plot, bench::svg::plot(&report))?;
    Ok(if report.runs.iter().any(|r| r.failed > 0) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `bench --live`: the profile's live loop once per model × precision × thread count given.
fn bench_live(args: &BenchArgs) -> anyhow::Result<edgeseg::bench::Report> {
    let path = args
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(profile::DEMO));
    let sweep = edgeseg::bench::live::Sweep {
        models: args.models.clone(),
        precisions: args.precision.clone(),
        threads: args.threads.clone(),
        frames: args.frames as u64,
    };
    edgeseg::bench::live::sweep(&Profile::load(&path)?, &sweep, &mut bench_progress())
}

/// `given`, or `[default]` when empty.
fn or_default<T: Clone>(given: &[T], default: T) -> Vec<T> {
    if given.is_empty() {
        vec![default]
    } else {
        given.to_vec()
    }
}

/// `bench`: the closed loop over frames captured beforehand.
fn bench_closed_loop(args: &BenchArgs) -> anyhow::Result<edgeseg::bench::Report> {
    use edgeseg::bench;
    let mut source = edgeseg::source::SourceConfig::from_spec(&args.source)?;
    if let Some((w, h)) = args.size {
        (source.width, source.height) = (Some(w), Some(h));
    }
    let models = if args.models.is_empty() {
        vec![Package::default_dir()]
    } else {
        args.models.clone()
    };
    let volume_model = models
        .iter()
        .any(|d| Package::open(d).is_ok_and(|p| p.manifest().family == Family::Sam3d));
    let volume_clicks = if volume_model {
        args.prompt
            .points
            .iter()
            .map(|p| parse_click3(p))
            .collect::<Result<_, _>>()
            .map_err(anyhow::Error::msg)?
    } else {
        Vec::new()
    };
    let options = bench::Options {
        models,
        precisions: or_default(&args.precision, Precision::F32),
        threads: or_default(&args.threads, 1),
        frames: args.frames.max(1),
        warmup: args.warmup,
        source,
        volume: args.volume.clone(),
        volume_options: LoadOptions {
            volume_index: args.volume_args.volume_index,
            spacing: args.volume_args.spacing,
        },
        volume_clicks,
        dump_inputs: args.dump_inputs.clone(),
        profile_ops: args.profile_ops,
    };
    bench::run(
        &options,
        &|package| request(&args.prompt, package),
        &mut bench_progress(),
    )
}

fn listen(port: &Path, baud: u32) -> Result<ExitCode, Fatal> {
    let stop = stop_on_signals()?;
    serial::listen_port(port, baud, std::io::stdout().lock(), &stop)?;
    Ok(ExitCode::SUCCESS)
}

fn run(cli: Cli) -> Result<ExitCode, Fatal> {
    match cli.command {
        Command::Run(args) => live(args),
        Command::Bench(args) => bench(args),
        Command::Listen { port, baud } => listen(&port, baud),
        Command::Segment {
            inputs,
            model,
            prompt,
            out,
            interactive,
            volume,
        } => segment(&inputs, &model, &prompt, &out, interactive, &volume),
        Command::Models { action } => models(action),
        Command::Prompts { attributes } => {
            for kind in PromptType::all() {
                match attributes.prompt(kind) {
                    Ok(p) => println!("{kind}: {p}"),
                    Err(e) => println!("{kind}: ({e})"),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Eval {
            model,
            adapter,
            data,
            prompt_type,
            scores,
        } => evaluate(&model, adapter, &data, prompt_type, scores.as_deref()),
        Command::Phantoms {
            out,
            count,
            seed,
            size,
        } => {
            let n = phantom::write_dataset(&out, count, size.0, size.1, seed)?;
            println!("wrote {n} samples to {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Log records to stderr, one line each.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            eprintln!(
                "{}: {}",
                record.level().as_str().to_lowercase(),
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

fn main() -> ExitCode {
    // glibc's malloc keeps freed memory once told to (`edgeseg::alloc` says why).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    edgeseg::alloc::configure();
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    if log::set_logger(&StderrLog).is_ok() {
        log::set_max_level(level);
    }
    match run(cli) {
        Ok(code) => code,
        Err(Fatal(e)) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}
