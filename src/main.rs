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
use edgeseg::model::{Package, Precision, Vlsm, VlsmSession};
use edgeseg::output::{self, FrameSummary, Summary};
use edgeseg::postprocess;
use edgeseg::profile::{self, Overrides, Profile};
use edgeseg::prompt::{Attributes, PromptType};
use edgeseg::{eval, input, live, phantom, serial};

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

/// What to segment: a typed prompt, or attributes built into a prompt.
#[derive(Args)]
struct PromptArgs {
    /// Text prompt, e.g. "round hypoechoic lesion".
    #[arg(long, conflicts_with = "attributes")]
    prompt: Option<String>,
    /// Attributes, e.g. class=polyp,shape=round,color=pink,size=small,count=one,location="left of the image".
    #[arg(long)]
    attributes: Option<Attributes>,
    /// Prompt level P0..P9 built from --attributes (default: the model's).
    #[arg(long, requires = "attributes")]
    prompt_type: Option<PromptType>,
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
    /// Dice and IoU of a model over a labelled folder (samples.jsonl + images + masks).
    Eval {
        #[command(flatten)]
        model: ModelArgs,
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

#[derive(Subcommand)]
enum ModelsAction {
    /// List the packages under a folder (default: models).
    List { root: Option<PathBuf> },
    /// Check hashes and graph contracts of one package, or of every package under a folder.
    Verify { dir: Option<PathBuf> },
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

fn load_vlsm(args: &ModelArgs) -> anyhow::Result<Vlsm> {
    let dir = args.model.clone().unwrap_or_else(Package::default_dir);
    let package = Package::open(&dir)?;
    let start = Instant::now();
    let model = Vlsm::load(package, args.precision, args.threads.max(1))?;
    log::info!(
        "loaded {} ({}) in {:.0} ms",
        dir.display(),
        args.precision,
        start.elapsed().as_secs_f64() * 1e3
    );
    Ok(model)
}

/// The prompt text and whether an empty one was asked for on purpose (P0).
fn resolve_prompt(args: &PromptArgs, model: &Vlsm) -> anyhow::Result<(String, bool)> {
    match (&args.prompt, &args.attributes) {
        (Some(p), _) => Ok((p.clone(), false)),
        (None, Some(a)) => {
            let default = model
                .package()
                .manifest()
                .prompt
                .as_ref()
                .map(|p| p.default);
            let kind = args
                .prompt_type
                .or(default)
                .context("model has no default prompt type")?;
            Ok((a.prompt(kind)?, kind.level() == 0))
        }
        (None, None) => Ok((String::new(), false)),
    }
}

/// Segments every frame of one input file and writes its outputs.
fn segment_file(
    session: &mut VlsmSession,
    path: &Path,
    out: &Path,
    text_ms: f64,
    prompt: &str,
) -> anyhow::Result<usize> {
    let t0 = Instant::now();
    let loaded = input::load(path)?;
    let decode = t0.elapsed().as_secs_f64() * 1e3 / loaded.frames.len() as f64;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "input".into());
    let multi = loaded.frames.len() > 1;
    let mut frames = Vec::with_capacity(loaded.frames.len());
    for (i, frame) in loaded.frames.iter().enumerate() {
        let index = multi.then_some(i);
        frames.push(segment_frame(
            session,
            frame,
            out,
            &stem,
            index,
            decode,
            if i == 0 { text_ms } else { 0.0 },
        )?);
    }
    let model = session.model();
    let summary = Summary {
        input: path.display().to_string(),
        model: model.package().name().to_string(),
        precision: model.precision().to_string(),
        prompt: Some(prompt.to_string()),
        frames,
    };
    output::write_summary(&out.join(format!("{stem}.json")), &summary)?;
    Ok(loaded.frames.len())
}

fn segment_frame(
    session: &mut VlsmSession,
    frame: &Frame,
    out: &Path,
    stem: &str,
    index: Option<usize>,
    decode_ms: f64,
    text_ms: f64,
) -> anyhow::Result<FrameSummary> {
    let result = session.segment(frame)?;
    let mut timings = result.timings;
    timings.decode = decode_ms;
    timings.text = text_ms;
    let mask = &result.segmentation.mask;
    let mask_name = output::output_name(stem, index, "mask");
    let overlay_name = output::output_name(stem, index, "overlay");
    output::write_mask_png(&out.join(&mask_name), mask)?;
    output::write_overlay_png(&out.join(&overlay_name), frame, mask, [255, 200, 0])?;
    Ok(FrameSummary {
        frame: index.unwrap_or(0),
        width: frame.width(),
        height: frame.height(),
        measures: postprocess::measure(&result.segmentation, frame.spacing()),
        mask: mask_name,
        overlay: overlay_name,
        timings_ms: timings,
    })
}

fn segment(
    inputs: &[PathBuf],
    model: &ModelArgs,
    prompt: &PromptArgs,
    out: &Path,
) -> Result<ExitCode, Fatal> {
    let vlsm = load_vlsm(model)?;
    let (text, allow_empty) = resolve_prompt(prompt, &vlsm)?;
    let mut session = vlsm.session()?;
    // The prompt is encoded once; its cost is reported on the first frame of the run.
    let mut text_ms = session.set_prompt(&text, allow_empty)?;
    std::fs::create_dir_all(out)
        .with_context(|| format!("{}: cannot create output folder", out.display()))?;
    let mut failed = 0;
    for path in inputs {
        match segment_file(&mut session, path, out, text_ms, &text) {
            Ok(n) => {
                text_ms = 0.0;
                println!("{}: {n} frame(s) → {}", path.display(), out.display());
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: {}", one_line(&e));
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
    model: &ModelArgs,
    data: &Path,
    prompt_type: Option<PromptType>,
    scores_path: Option<&Path>,
) -> Result<ExitCode, Fatal> {
    let vlsm = load_vlsm(model)?;
    let mut session = vlsm.session()?;
    let scores = eval::evaluate(&mut session, data, prompt_type)?;
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
        vlsm.package().name(),
        vlsm.precision(),
        data.display(),
        prompt_type
            .map(|t| t.to_string())
            .unwrap_or_else(|| "per sample".into())
    );
    println!(
        "{:<10} {:>8} {:>8} {:>8}",
        "class", "samples", "dice", "iou"
    );
    for g in eval::summarize(&scores) {
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
        "model      {} loaded in {:.0} ms, prompt \"{}\"",
        setup.model,
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

fn listen(port: &Path, baud: u32) -> Result<ExitCode, Fatal> {
    let stop = stop_on_signals()?;
    serial::listen_port(port, baud, std::io::stdout().lock(), &stop)?;
    Ok(ExitCode::SUCCESS)
}

fn run(cli: Cli) -> Result<ExitCode, Fatal> {
    match cli.command {
        Command::Run(args) => live(args),
        Command::Listen { port, baud } => listen(&port, baud),
        Command::Segment {
            inputs,
            model,
            prompt,
            out,
        } => segment(&inputs, &model, &prompt, &out),
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
            data,
            prompt_type,
            scores,
        } => evaluate(&model, &data, prompt_type, scores.as_deref()),
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
