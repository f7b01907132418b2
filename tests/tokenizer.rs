//! The CLIP tokenizer gives the ids and masks of Hugging Face's slow `CLIPTokenizer` (computed
//! by `models/tools/make_tokenizer.py`) for every prompt of the fixture.

use std::path::{Path, PathBuf};

use edgeseg::tokenizer::{ClipTokenizer, TokenizerError};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

struct Case {
    text: String,
    input_ids: Vec<i64>,
    attention_mask: Vec<i64>,
}

fn fixture() -> (usize, Vec<Case>) {
    let path = repo("tests/fixtures/tokenizer/prompts.json");
    let json = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    let context_length = value["context_length"].as_u64().unwrap() as usize;
    let ints = |v: &serde_json::Value| -> Vec<i64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect()
    };
    let cases = value["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Case {
            text: p["text"].as_str().unwrap().to_string(),
            input_ids: ints(&p["input_ids"]),
            attention_mask: ints(&p["attention_mask"]),
        })
        .collect();
    (context_length, cases)
}

fn clip(context_length: usize) -> ClipTokenizer {
    ClipTokenizer::from_file(
        &repo("models/tools/clip-bpe/tokenizer.json"),
        context_length,
    )
    .unwrap()
}

#[test]
fn every_fixture_prompt_matches_the_reference() {
    let (context_length, cases) = fixture();
    assert_eq!(context_length, 77);
    assert!(
        cases.len() >= 60,
        "only {} prompts in the fixture",
        cases.len()
    );
    let tok = clip(context_length);
    let mut failures = Vec::new();
    for case in &cases {
        match tok.encode(&case.text) {
            Ok(got) => {
                assert_eq!(got.input_ids.len(), context_length, "{:?}", case.text);
                assert_eq!(got.attention_mask.len(), context_length, "{:?}", case.text);
                if got.input_ids != case.input_ids || got.attention_mask != case.attention_mask {
                    let (text, ids, mask) = (&case.text, &case.input_ids, &case.attention_mask);
                    failures.push(format!(
                        "{text:?}\n  ids  want {ids:?}\n       got  {:?}\n  mask want {mask:?}\n       got  {:?}",
                        got.input_ids, got.attention_mask
                    ));
                }
            }
            Err(e) => failures.push(format!("{:?}: {e}", case.text)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} prompts differ from the reference:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn special_tokens_padding_and_truncation() {
    let tok = clip(77);
    let empty = tok.encode("").unwrap();
    assert_eq!(empty.input_ids[..3], [49406, 49407, 49407]);
    assert_eq!(empty.attention_mask.iter().sum::<i64>(), 2);

    let long = tok.encode(&"polyp ".repeat(100)).unwrap();
    assert_eq!(long.input_ids[0], 49406);
    assert_eq!(long.input_ids[76], 49407);
    assert_eq!(long.attention_mask, vec![1; 77]);
}

#[test]
fn encoding_is_repeatable_and_shareable_across_threads() {
    let tok = std::sync::Arc::new(clip(77));
    let want = tok
        .encode("one small pink round polyp, located in left of the image")
        .unwrap();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let tok = tok.clone();
            std::thread::spawn(move || {
                tok.encode("one small pink round polyp, located in left of the image")
                    .unwrap()
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), want);
    }
}

#[test]
fn load_errors_name_the_file() {
    let missing = repo("tests/fixtures/tokenizer/no-such-tokenizer.json");
    match ClipTokenizer::from_file(&missing, 77) {
        Err(e @ TokenizerError::Io { .. }) => {
            assert!(e.to_string().contains("no-such-tokenizer.json"), "{e}")
        }
        other => panic!("expected an Io error, got {other:?}"),
    }
    // The fixture is JSON but not a tokenizer.
    let not_tokenizer = repo("tests/fixtures/tokenizer/prompts.json");
    assert!(matches!(
        ClipTokenizer::from_file(&not_tokenizer, 77),
        Err(TokenizerError::Parse { .. })
    ));
    assert!(matches!(
        ClipTokenizer::from_file(&repo("models/tools/clip-bpe/tokenizer.json"), 1),
        Err(TokenizerError::ContextLength { context_length: 1 })
    ));
}
