//! Prompt text and its CLIP BPE tokenization, as the VLSM does once per new prompt:
//!
//! - `tokenizer/load`: reading and checking the bundled `tokenizer.json` (once per model load);
//! - `tokenize/prompt/P0..P9`: building the prompt of each benchmark level from attributes;
//! - `tokenize/encode/P1|P5|P9`: tokenizing prompts of growing length to the 77-token context,
//!   and `tokenize/encode/truncated`: a prompt longer than the context (cut to 75 tokens).
//!
//! `cargo bench --bench tokenize` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use edgeseg::prompt::{Attributes, PromptType};
use edgeseg::tokenizer::ClipTokenizer;

const CONTEXT_LENGTH: usize = 77;

fn tokenize(c: &mut Criterion) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/clipseg-phantom/tokenizer.json");
    let attributes: Attributes = "class=polyp,shape=round,color=pink,size=small,count=one,\
        location=\"left of the image\",\
        definition=\"a growth of tissue, raised from the mucosa\""
        .parse()
        .expect("attributes");
    let tokenizer = ClipTokenizer::from_file(&path, CONTEXT_LENGTH).expect("tokenizer");

    // About 0.1 s a load: ten samples.
    let mut group = c.benchmark_group("tokenizer");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    group.bench_function("load", |b| {
        b.iter(|| ClipTokenizer::from_file(black_box(&path), CONTEXT_LENGTH).expect("tokenizer"))
    });
    group.finish();

    let mut group = c.benchmark_group("tokenize");
    group
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    for kind in PromptType::all() {
        group.bench_function(format!("prompt/{kind}"), |b| {
            b.iter(|| attributes.prompt(black_box(kind)).expect("prompt"))
        });
    }
    let mut prompts: Vec<(String, String)> = ["P1", "P5", "P9"]
        .into_iter()
        .map(|level| {
            let kind: PromptType = level.parse().expect("prompt type");
            (level.to_string(), attributes.prompt(kind).expect("prompt"))
        })
        .collect();
    prompts.push((
        "truncated".into(),
        ["a small dark round lesion near the vessel"; 12].join(", "),
    ));
    for (label, text) in &prompts {
        group.bench_function(format!("encode/{label}"), |b| {
            b.iter(|| tokenizer.encode(black_box(text)).expect("tokens"))
        });
    }
    group.finish();
}

criterion_group!(benches, tokenize);
criterion_main!(benches);
