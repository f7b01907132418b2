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
//! Truncation and padding are configured once, when the file is loaded, so
//! [`ClipTokenizer::encode`] only runs the pipeline. It returns errors rather than panicking.

use std::path::{Path, PathBuf};

use thiserror::Error;
use tokenizers::{
    PaddingDirection, PaddingParams, PaddingStrategy, PostProcessor, Tokenizer,
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
        let mut tokenizer = Tokenizer::from_bytes(&json).map_err(|e| TokenizerError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;

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
}
