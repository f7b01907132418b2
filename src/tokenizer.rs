//! CLIP byte-level BPE tokenization of text prompts, on the device.
//!
//! Text-prompted models (CLIPSeg and its relatives) take the prompt as CLIP token ids plus an
//! attention mask, both exactly `context_length` (77 for CLIP) long. [`ClipTokenizer`] turns a
//! prompt into those two rows with the same ids as Hugging Face's `CLIPTokenizer` called as
//! `tok(text, padding="max_length", max_length=context_length, truncation=True)`:
//! `<|startoftext|>` (49406), at most `context_length - 2` text tokens, `<|endoftext|>` (49407),
//! then `<|endoftext|>` padding with mask 0.
//!
//! # Crate
//! The work is done by Hugging Face's `tokenizers` crate reading the package's `tokenizer.json`
//! (the serialization of the fast CLIP tokenizer: NFC + whitespace + lower-case normalizer, CLIP
//! split pattern, byte-level BPE with the `</w>` suffix, `RobertaProcessing` for the special
//! tokens). The same code is what the Python `tokenizers` package runs, so the runtime gives
//! the ids the model was trained with, and there is no BPE of our own to keep correct. The crate
//! is built without its default features and with `fancy-regex`, so it is pure Rust (no
//! Oniguruma or C++ suffix arrays) and links into the static musl builds.
//!
//! # Equality with the reference
//! `tests/tokenizer.rs` checks every prompt of `tests/fixtures/tokenizer/prompts.json` (phantom
//! classes at every benchmark prompt level, clinical phrasing with capitals, digits, punctuation,
//! apostrophes, accents, non-Latin scripts, emoji, empty and over-long prompts) against ids from
//! Hugging Face's slow, pure-Python CLIPTokenizer, which `models/tools/make_tokenizer.py`
//! computes. The slow tokenizer first repairs text with `ftfy` (mojibake, HTML entities, curly
//! quotes, ligatures, full-width letters, a byte-order mark), lower-cases Greek final sigma by
//! context and matches `<|endoftext|>` in any case; no `tokenizer.json` expresses those, so on
//! such text the ids follow the fast tokenizer (which the training tools load from the same
//! file) and the fixture lists them under `excluded` with both outputs.
//!
//! # Loading
//! The file is read into typed fields: the BPE model's vocabulary and merges straight into the
//! maps the crate's BPE builder takes, the small parts (normalizer, pre-tokenizer,
//! post-processor, decoder, added tokens) through the crate's own types. The crate's
//! `Tokenizer::from_bytes` buffers the whole model into an untyped tree before it reads it,
//! which made it take 108–177 ms here against 50–90 ms read this way, and made the tokenizer
//! the longest part of a VLSM model's cold start. Both merge forms are read: `["a", "b"]` pairs and
//! the older `"a b"` strings.
//!
//! Truncation and padding are configured once, when the file is loaded, so
//! [`ClipTokenizer::encode`] only runs the pipeline. It returns errors rather than panicking.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PaddingDirection, PaddingParams,
    PaddingStrategy, PostProcessor, PostProcessorWrapper, PreTokenizerWrapper, Tokenizer,
    TruncationDirection, TruncationParams, TruncationStrategy,
};

/// CLIP's start-of-text token and its id.
pub const START_OF_TEXT: (&str, u32) = ("<|startoftext|>", 49406);
/// CLIP's end-of-text token and its id; it is also the padding token.
pub const END_OF_TEXT: (&str, u32) = ("<|endoftext|>", 49407);

/// Errors loading a tokenizer or encoding a prompt. Each variant names the file or text at fault.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TokenizerError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid tokenizer.json: {message}")]
    Parse { path: PathBuf, message: String },
    #[error(
        "context length {context_length} cannot hold <|startoftext|> and <|endoftext|> (min 2)"
    )]
    ContextLength { context_length: usize },
    #[error("{path}: special token `{token}` has id {found:?}, a CLIP tokenizer has {expected}")]
    SpecialToken {
        path: PathBuf,
        token: &'static str,
        expected: u32,
        found: Option<u32>,
    },
    #[error("{path}: the post-processor adds {found} tokens to a prompt, a CLIP tokenizer adds 2")]
    PostProcessor { path: PathBuf, found: usize },
    #[error("{path}: cannot truncate to {context_length} tokens: {message}")]
    Truncation {
        path: PathBuf,
        context_length: usize,
        message: String,
    },
    #[error("{path}: the empty prompt encodes to {found:?}, a CLIP tokenizer gives {expected:?}")]
    SelfCheck {
        path: PathBuf,
        expected: Vec<i64>,
        found: Vec<i64>,
    },
    #[error("cannot tokenize {text:?}: {message}")]
    Encode { text: String, message: String },
    #[error(
        "tokenizing {text:?} gave {ids} ids and {mask} mask values, expected {expected} of each"
    )]
    Length {
        text: String,
        expected: usize,
        ids: usize,
        mask: usize,
    },
}

/// A prompt as the text graph takes it: both rows are exactly `context_length` long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPrompt {
    pub input_ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
}

/// A CLIP BPE tokenizer that truncates and pads every prompt to a fixed context length.
#[derive(Clone)]
pub struct ClipTokenizer {
    tokenizer: Tokenizer,
    context_length: usize,
}

impl std::fmt::Debug for ClipTokenizer {
    // The derived form would print the whole vocabulary.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("vocab_size", &self.tokenizer.get_vocab_size(true))
            .field("context_length", &self.context_length)
            .finish()
    }
}

impl ClipTokenizer {
    /// Loads a Hugging Face `tokenizer.json` of the CLIP BPE tokenizer and sets it to truncate
    /// and pad to `context_length` tokens. Checks that `<|startoftext|>` is 49406,
    /// `<|endoftext|>` is 49407, that the post-processor wraps prompts in exactly these two, and
    /// that `context_length` is at least 2.
    pub fn from_file(path: &Path, context_length: usize) -> Result<Self, TokenizerError> {
        if context_length < 2 {
            return Err(TokenizerError::ContextLength { context_length });
        }
        let json = std::fs::read(path).map_err(|source| TokenizerError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let parse_error = |message: String| TokenizerError::Parse {
            path: path.to_path_buf(),
            message,
        };
        let file: TokenizerFile =
            serde_json::from_slice(&json).map_err(|e| parse_error(e.to_string()))?;
        let mut tokenizer = file.build().map_err(parse_error)?;

        for (token, expected) in [START_OF_TEXT, END_OF_TEXT] {
            let found = tokenizer.token_to_id(token);
            if found != Some(expected) {
                return Err(TokenizerError::SpecialToken {
                    path: path.to_path_buf(),
                    token,
                    expected,
                    found,
                });
            }
        }
        // Truncation subtracts the added tokens from the context length, so they must fit.
        let added = tokenizer
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(false));
        if added != 2 {
            return Err(TokenizerError::PostProcessor {
                path: path.to_path_buf(),
                found: added,
            });
        }

        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: context_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| TokenizerError::Truncation {
                path: path.to_path_buf(),
                context_length,
                message: e.to_string(),
            })?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(context_length),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id: END_OF_TEXT.1,
            pad_type_id: 0,
            pad_token: END_OF_TEXT.0.to_string(),
        }));

        let clip = ClipTokenizer {
            tokenizer,
            context_length,
        };
        // The post-processor must put the special tokens around the text, in this order.
        let empty = clip.encode("")?;
        let expected = [i64::from(START_OF_TEXT.1), i64::from(END_OF_TEXT.1)];
        if empty.input_ids[..2] != expected || empty.attention_mask[..2] != [1, 1] {
            return Err(TokenizerError::SelfCheck {
                path: path.to_path_buf(),
                expected: expected.to_vec(),
                found: empty.input_ids,
            });
        }
        Ok(clip)
    }

    /// The number of ids (and mask values) [`encode`](Self::encode) returns.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// Tokenizes `text` like `CLIPTokenizer(text, padding="max_length",
    /// max_length=context_length, truncation=True)`: `<|startoftext|>`, the text's tokens (cut
    /// to `context_length - 2`), `<|endoftext|>`, then `<|endoftext|>` padding with mask 0.
    pub fn encode(&self, text: &str) -> Result<TokenizedPrompt, TokenizerError> {
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| TokenizerError::Encode {
                text: text.to_string(),
                message: e.to_string(),
            })?;
        let (ids, mask) = (encoding.get_ids(), encoding.get_attention_mask());
        if ids.len() != self.context_length || mask.len() != self.context_length {
            return Err(TokenizerError::Length {
                text: text.to_string(),
                expected: self.context_length,
                ids: ids.len(),
                mask: mask.len(),
            });
        }
        Ok(TokenizedPrompt {
            input_ids: ids.iter().map(|&id| i64::from(id)).collect(),
            attention_mask: mask.iter().map(|&m| i64::from(m)).collect(),
        })
    }
}

/// The parts of a `tokenizer.json` this module reads (see [Loading](self#loading)).
#[derive(Deserialize)]
struct TokenizerFile {
    #[serde(default)]
    added_tokens: Vec<AddedToken>,
    normalizer: Option<NormalizerWrapper>,
    pre_tokenizer: Option<PreTokenizerWrapper>,
    post_processor: Option<PostProcessorWrapper>,
    decoder: Option<DecoderWrapper>,
    model: BpeFile,
}

/// A BPE model as `tokenizer.json` stores it.
#[derive(Deserialize)]
struct BpeFile {
    #[serde(rename = "type")]
    kind: String,
    vocab: Vocab,
    merges: Vec<Merge>,
    dropout: Option<f32>,
    unk_token: Option<String>,
    continuing_subword_prefix: Option<String>,
    end_of_word_suffix: Option<String>,
    // Absent flags are false, as in the crate's own reader.
    #[serde(default)]
    fuse_unk: bool,
    #[serde(default)]
    byte_fallback: bool,
    #[serde(default)]
    ignore_merges: bool,
}

/// One merge: a `["a", "b"]` pair or an `"a b"` string.
struct Merge(String, String);

impl<'de> Deserialize<'de> for Merge {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MergeVisitor;
        impl<'de> serde::de::Visitor<'de> for MergeVisitor {
            type Value = Merge;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a merge: a pair of strings or one string \"a b\"")
            }
            fn visit_str<E: serde::de::Error>(self, merge: &str) -> Result<Merge, E> {
                match merge.split(' ').collect::<Vec<_>>()[..] {
                    [a, b] => Ok(Merge(a.to_string(), b.to_string())),
                    _ => Err(E::custom(format!("merge {merge:?} is not two tokens"))),
                }
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Merge, A::Error> {
                let mut next = || -> Result<String, A::Error> {
                    seq.next_element()?
                        .ok_or_else(|| serde::de::Error::custom("a merge pair needs two tokens"))
                };
                let merge = Merge(next()?, next()?);
                match seq.next_element::<serde::de::IgnoredAny>()? {
                    None => Ok(merge),
                    Some(_) => Err(serde::de::Error::custom("a merge pair has two tokens")),
                }
            }
        }
        deserializer.deserialize_any(MergeVisitor)
    }
}

impl TokenizerFile {
    /// The tokenizer the file describes, as the crate's `Tokenizer::from_bytes` builds it.
    fn build(self) -> Result<Tokenizer, String> {
        let model = self.model;
        if model.kind != "BPE" {
            return Err(format!(
                "the model is {}, a CLIP tokenizer is BPE",
                model.kind
            ));
        }
        let merges = model.merges.into_iter().map(|Merge(a, b)| (a, b)).collect();
        let mut bpe = BPE::builder()
            .vocab_and_merges(model.vocab, merges)
            .fuse_unk(model.fuse_unk)
            .byte_fallback(model.byte_fallback)
            .ignore_merges(model.ignore_merges);
        if let Some(dropout) = model.dropout {
            bpe = bpe.dropout(dropout);
        }
        if let Some(unk) = model.unk_token {
            bpe = bpe.unk_token(unk);
        }
        if let Some(prefix) = model.continuing_subword_prefix {
            bpe = bpe.continuing_subword_prefix(prefix);
        }
        if let Some(suffix) = model.end_of_word_suffix {
            bpe = bpe.end_of_word_suffix(suffix);
        }
        let mut tokenizer = Tokenizer::new(bpe.build().map_err(|e| e.to_string())?);
        tokenizer
            .with_normalizer(self.normalizer)
            .with_pre_tokenizer(self.pre_tokenizer)
            .with_post_processor(self.post_processor)
            .with_decoder(self.decoder);
        tokenizer.add_tokens(&self.added_tokens);
        Ok(tokenizer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer_json() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tools/clip-bpe/tokenizer.json")
    }

    fn scratch(name: &str, contents: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("edgeseg-tokenizer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn missing_file_names_the_path() {
        let path = Path::new("/nonexistent/clip/tokenizer.json");
        let err = ClipTokenizer::from_file(path, 77).unwrap_err();
        assert!(
            matches!(&err, TokenizerError::Io { path: p, .. } if p == path),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("/nonexistent/clip/tokenizer.json"),
            "{err}"
        );
    }

    #[test]
    fn corrupt_json_is_a_parse_error() {
        for (name, contents) in [
            ("truncated.json", "{\"version\": \"1.0\", \"model\": {"),
            ("not-a-tokenizer.json", "{\"hello\": 1}"),
            ("empty.json", ""),
        ] {
            let path = scratch(name, contents);
            let err = ClipTokenizer::from_file(&path, 77).unwrap_err();
            assert!(
                matches!(&err, TokenizerError::Parse { path: p, .. } if *p == path),
                "{name}: {err:?}"
            );
        }
    }

    #[test]
    fn context_length_below_two_is_rejected() {
        for context_length in [0, 1] {
            let err = ClipTokenizer::from_file(&tokenizer_json(), context_length).unwrap_err();
            assert!(
                matches!(err, TokenizerError::ContextLength { context_length: c } if c == context_length),
                "{err:?}"
            );
        }
    }

    #[test]
    fn context_length_two_holds_only_the_special_tokens() {
        let tok = ClipTokenizer::from_file(&tokenizer_json(), 2).unwrap();
        for text in ["", "polyp", "one small pink round polyp"] {
            let out = tok.encode(text).unwrap();
            assert_eq!(out.input_ids, [49406, 49407], "{text:?}");
            assert_eq!(out.attention_mask, [1, 1], "{text:?}");
        }
    }

    #[test]
    fn other_context_lengths_cut_and_pad_like_77() {
        let full = ClipTokenizer::from_file(&tokenizer_json(), 77).unwrap();
        for context_length in [3, 5, 8, 100] {
            let tok = ClipTokenizer::from_file(&tokenizer_json(), context_length).unwrap();
            assert_eq!(tok.context_length(), context_length);
            for text in [
                "lesion",
                "one small pink round polyp",
                "dark oval lesion, located in center of the image",
            ] {
                let reference = full.encode(text).unwrap();
                let n = reference.attention_mask.iter().sum::<i64>() as usize - 2;
                let kept = n.min(context_length - 2);
                let mut want = vec![49406];
                want.extend_from_slice(&reference.input_ids[1..1 + kept]);
                want.resize(context_length, 49407);
                let mut mask = vec![1; kept + 2];
                mask.resize(context_length, 0);
                let got = tok.encode(text).unwrap();
                assert_eq!(got.input_ids, want, "{text:?} at {context_length}");
                assert_eq!(got.attention_mask, mask, "{text:?} at {context_length}");
            }
        }
    }

    fn edited(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
        let mut value: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(tokenizer_json()).unwrap()).unwrap();
        edit(&mut value);
        scratch(name, &value.to_string())
    }

    #[test]
    fn wrong_special_token_ids_are_rejected() {
        // Swap the two special tokens' ids, in the BPE vocabulary and in the added tokens.
        let path = edited("swapped.json", |value| {
            let vocab = &mut value["model"]["vocab"];
            vocab["<|startoftext|>"] = 49407.into();
            vocab["<|endoftext|>"] = 49406.into();
            for token in value["added_tokens"].as_array_mut().unwrap() {
                let id = token["id"].as_u64().unwrap();
                token["id"] = (49406 + 49407 - id).into();
            }
        });
        let err = ClipTokenizer::from_file(&path, 77).unwrap_err();
        assert!(
            matches!(
                err,
                TokenizerError::SpecialToken {
                    token: "<|startoftext|>",
                    expected: 49406,
                    found: Some(49407),
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn missing_post_processor_is_rejected() {
        let path = edited("no-post-processor.json", |value| {
            value["post_processor"] = serde_json::Value::Null
        });
        let err = ClipTokenizer::from_file(&path, 77).unwrap_err();
        assert!(
            matches!(err, TokenizerError::PostProcessor { found: 0, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn string_merges_read_like_pairs() {
        // Older tokenizer.json files write each merge as one "a b" string.
        let path = edited("string-merges.json", |value| {
            for merge in value["model"]["merges"].as_array_mut().unwrap() {
                let pair = merge.as_array().unwrap();
                *merge = format!(
                    "{} {}",
                    pair[0].as_str().unwrap(),
                    pair[1].as_str().unwrap()
                )
                .into();
            }
        });
        let pairs = ClipTokenizer::from_file(&tokenizer_json(), 77).unwrap();
        let strings = ClipTokenizer::from_file(&path, 77).unwrap();
        for text in [
            "dark oval lesion",
            "Polyp (3 mm) at 4 o'clock!",
            "naïve 肝臓 😀",
        ] {
            assert_eq!(
                pairs.encode(text).unwrap(),
                strings.encode(text).unwrap(),
                "{text}"
            );
        }
    }

    #[test]
    fn malformed_models_are_parse_errors() {
        type Edit = fn(&mut serde_json::Value);
        let cases: [(&str, Edit, &str); 4] = [
            (
                "three-token-merge.json",
                |v| v["model"]["merges"][0] = "a b c".into(),
                "not two tokens",
            ),
            (
                "short-merge.json",
                |v| v["model"]["merges"][0] = serde_json::json!(["a"]),
                "two tokens",
            ),
            (
                "unigram.json",
                |v| v["model"]["type"] = "Unigram".into(),
                "a CLIP tokenizer is BPE",
            ),
            (
                "unknown-merge.json",
                |v| v["model"]["merges"][0] = serde_json::json!(["zz", "qq"]),
                "zz",
            ),
        ];
        for (name, edit, expected) in cases {
            let err = ClipTokenizer::from_file(&edited(name, edit), 77).unwrap_err();
            assert!(
                matches!(&err, TokenizerError::Parse { .. }) && err.to_string().contains(expected),
                "{name}: {err}"
            );
        }
    }
}
