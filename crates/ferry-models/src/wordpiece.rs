//! BERT WordPiece tokenizer read from a Hugging Face `tokenizer.json`.
//!
//! The pipeline is Hugging Face `tokenizers`' for BERT models, step by step:
//! 1. added tokens (`[CLS]`, `[SEP]`, ...) are split out of the raw text first (they are not
//!    normalized, as `tokenizers` does for `normalized: false`);
//! 2. `BertNormalizer`: clean text (drop NUL, U+FFFD and control characters, map whitespace to
//!    a space), put spaces around CJK ideographs, strip accents (NFD, then drop non-spacing
//!    marks), lowercase;
//! 3. `BertPreTokenizer`: split on whitespace, and isolate every punctuation character;
//! 4. `WordPiece`: greedy longest-match-first with the `##` continuation prefix; a word longer
//!    than `max_input_chars_per_word` characters, or one that cannot be covered, is `[UNK]`;
//! 5. the `[CLS] A [SEP]` template. Truncation happens only when the caller asks for it.
//!
//! Token ids equal `tokenizers`' (goldens in `tests/data/embedding_goldens.json`).

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use unicode_general_category::{get_general_category, GeneralCategory as Gc};
use unicode_normalization::UnicodeNormalization;

/// Why a tokenizer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum WordPieceError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("tokenizer.json is not valid: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported tokenizer.json: {0}")]
    Unsupported(String),
}

#[derive(Deserialize)]
struct TokenizerJson {
    #[serde(default)]
    added_tokens: Vec<AddedToken>,
    normalizer: Option<serde_json::Value>,
    pre_tokenizer: Option<serde_json::Value>,
    post_processor: Option<serde_json::Value>,
    model: ModelJson,
}

#[derive(Deserialize)]
struct AddedToken {
    id: u32,
    content: String,
}

#[derive(Deserialize)]
struct ModelJson {
    #[serde(rename = "type")]
    ty: Option<String>,
    unk_token: String,
    #[serde(default = "default_prefix")]
    continuing_subword_prefix: String,
    #[serde(default = "default_max_chars")]
    max_input_chars_per_word: usize,
    vocab: HashMap<String, u32>,
}

fn default_prefix() -> String {
    "##".into()
}
fn default_max_chars() -> usize {
    100
}

/// `BertNormalizer` options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NormalizerOptions {
    pub clean_text: bool,
    pub handle_chinese_chars: bool,
    pub strip_accents: bool,
    pub lowercase: bool,
}

/// A BERT WordPiece tokenizer.
pub struct WordPiece {
    vocab: HashMap<String, u32>,
    unk_id: u32,
    cls_id: u32,
    sep_id: u32,
    prefix: String,
    max_chars: usize,
    norm: Option<NormalizerOptions>,
    /// Added tokens, longest first (matched leftmost, then longest).
    added: Vec<(String, u32)>,
    vocab_size: usize,
}

impl std::fmt::Debug for WordPiece {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WordPiece")
            .field("vocab_size", &self.vocab_size)
            .field("normalizer", &self.norm)
            .finish()
    }
}

impl WordPiece {
    /// Read `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self, WordPieceError> {
        let s = std::fs::read_to_string(path).map_err(|source| WordPieceError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&s)
    }

    /// Parse the contents of a `tokenizer.json` (WordPiece model, BERT normalizer and
    /// pre-tokenizer).
    pub fn from_json(s: &str) -> Result<Self, WordPieceError> {
        let t: TokenizerJson = serde_json::from_str(s)?;
        let unsupported = |s: String| WordPieceError::Unsupported(s);
        if let Some(ty) = &t.model.ty {
            if ty != "WordPiece" {
                return Err(unsupported(format!("model type {ty:?} (need WordPiece)")));
            }
        }
        let norm = match &t.normalizer {
            None | Some(serde_json::Value::Null) => None,
            Some(n) => {
                let ty = n.get("type").and_then(|v| v.as_str()).unwrap_or("");
                if ty != "BertNormalizer" {
                    return Err(unsupported(format!(
                        "normalizer {ty:?} (need BertNormalizer)"
                    )));
                }
                let flag = |k: &str, d: bool| n.get(k).and_then(|v| v.as_bool()).unwrap_or(d);
                let lowercase = flag("lowercase", true);
                Some(NormalizerOptions {
                    clean_text: flag("clean_text", true),
                    handle_chinese_chars: flag("handle_chinese_chars", true),
                    // `null` means "follow lowercase", as in BERT's original tokenizer.
                    strip_accents: flag("strip_accents", lowercase),
                    lowercase,
                })
            }
        };
        if let Some(p) = &t.pre_tokenizer {
            let ty = p.get("type").and_then(|v| v.as_str()).unwrap_or("");
            if ty != "BertPreTokenizer" {
                return Err(unsupported(format!(
                    "pre-tokenizer {ty:?} (need BertPreTokenizer)"
                )));
            }
        }
        if let Some(p) = &t.post_processor {
            let ty = p.get("type").and_then(|v| v.as_str()).unwrap_or("");
            if !matches!(ty, "TemplateProcessing" | "BertProcessing" | "") {
                return Err(unsupported(format!("post-processor {ty:?}")));
            }
        }
        let vocab = t.model.vocab;
        let id_of = |tok: &str| -> Result<u32, WordPieceError> {
            vocab
                .get(tok)
                .copied()
                .ok_or_else(|| unsupported(format!("{tok} is not in the vocabulary")))
        };
        let unk_id = id_of(&t.model.unk_token)?;
        let cls_id = id_of("[CLS]")?;
        let sep_id = id_of("[SEP]")?;
        let vocab_size = vocab
            .values()
            .chain(t.added_tokens.iter().map(|a| &a.id))
            .map(|&i| i as usize + 1)
            .max()
            .unwrap_or(0);
        let mut added: Vec<(String, u32)> = t
            .added_tokens
            .into_iter()
            .filter(|a| !a.content.is_empty())
            .map(|a| (a.content, a.id))
            .collect();
        added.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        Ok(Self {
            vocab,
            unk_id,
            cls_id,
            sep_id,
            prefix: t.model.continuing_subword_prefix,
            max_chars: t.model.max_input_chars_per_word,
            norm,
            added,
            vocab_size,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }
    pub fn cls_id(&self) -> u32 {
        self.cls_id
    }
    pub fn sep_id(&self) -> u32 {
        self.sep_id
    }
    pub fn token_to_id(&self, s: &str) -> Option<u32> {
        self.vocab.get(s).copied()
    }

    /// Token ids of `text` with `[CLS]`/`[SEP]` when `add_special`. With `max_len`, the text's
    /// tokens are cut so that the whole sequence (specials included) fits.
    pub fn encode(&self, text: &str, add_special: bool, max_len: Option<usize>) -> Vec<u32> {
        let mut ids = Vec::new();
        // Split out added tokens from the raw text, then tokenize the pieces between them.
        let mut rest = text;
        while !rest.is_empty() {
            match self.find_added(rest) {
                Some((at, len, id)) => {
                    self.encode_plain(&rest[..at], &mut ids);
                    ids.push(id);
                    rest = &rest[at + len..];
                }
                None => {
                    self.encode_plain(rest, &mut ids);
                    break;
                }
            }
        }
        if let Some(max) = max_len {
            let room = max.saturating_sub(if add_special { 2 } else { 0 });
            ids.truncate(room);
        }
        if add_special {
            ids.insert(0, self.cls_id);
            ids.push(self.sep_id);
        }
        ids
    }

    /// The leftmost (then longest) added token in `s`: (byte offset, byte length, id).
    fn find_added(&self, s: &str) -> Option<(usize, usize, u32)> {
        let mut best: Option<(usize, usize, u32)> = None;
        for (content, id) in &self.added {
            if let Some(at) = s.find(content.as_str()) {
                if best.is_none_or(|(b, l, _)| at < b || (at == b && content.len() > l)) {
                    best = Some((at, content.len(), *id));
                }
            }
        }
        best
    }

    fn encode_plain(&self, text: &str, ids: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let normalized = match self.norm {
            Some(o) => normalize(text, o),
            None => text.to_string(),
        };
        for word in pre_tokenize(&normalized) {
            self.word_piece(word, ids);
        }
    }

    fn word_piece(&self, word: &str, ids: &mut Vec<u32>) {
        let n_chars = word.chars().count();
        if n_chars > self.max_chars {
            ids.push(self.unk_id);
            return;
        }
        let mark = ids.len();
        let mut start = 0;
        let mut buf = String::new();
        while start < word.len() {
            // Longest vocabulary entry starting at `start`.
            let mut end = word.len();
            let mut found = None;
            while end > start {
                buf.clear();
                if start > 0 {
                    buf.push_str(&self.prefix);
                }
                buf.push_str(&word[start..end]);
                if let Some(&id) = self.vocab.get(&buf) {
                    found = Some(id);
                    break;
                }
                // Step back one character.
                end = word[..end]
                    .char_indices()
                    .next_back()
                    .map(|(i, _)| i)
                    .unwrap_or(start);
            }
            match found {
                Some(id) => {
                    ids.push(id);
                    start = end;
                }
                None => {
                    ids.truncate(mark);
                    ids.push(self.unk_id);
                    return;
                }
            }
        }
    }
}

/// `tokenizers`' control test: "Other" categories except tab, newline, carriage return.
fn is_control(c: char) -> bool {
    if matches!(c, '\t' | '\n' | '\r') {
        return false;
    }
    matches!(
        get_general_category(c),
        Gc::Control | Gc::Format | Gc::Unassigned | Gc::PrivateUse | Gc::Surrogate
    )
}

fn is_whitespace(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || c.is_whitespace()
}

fn is_chinese_char(c: char) -> bool {
    matches!(
        c as u32,
        0x4E00..=0x9FFF
            | 0x3400..=0x4DBF
            | 0x20000..=0x2A6DF
            | 0x2A700..=0x2B73F
            | 0x2B740..=0x2B81F
            | 0x2B920..=0x2CEAF
            | 0xF900..=0xFAFF
            | 0x2F800..=0x2FA1F
    )
}

fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation()
        || matches!(
            get_general_category(c),
            Gc::ConnectorPunctuation
                | Gc::DashPunctuation
                | Gc::OpenPunctuation
                | Gc::ClosePunctuation
                | Gc::InitialPunctuation
                | Gc::FinalPunctuation
                | Gc::OtherPunctuation
        )
}

/// `BertNormalizer`.
pub fn normalize(text: &str, o: NormalizerOptions) -> String {
    let mut s: String = if o.clean_text {
        text.chars()
            .filter(|&c| !(c == '\0' || c == '\u{fffd}' || is_control(c)))
            .map(|c| if is_whitespace(c) { ' ' } else { c })
            .collect()
    } else {
        text.to_string()
    };
    if o.handle_chinese_chars {
        let mut t = String::with_capacity(s.len() + 8);
        for c in s.chars() {
            if is_chinese_char(c) {
                t.push(' ');
                t.push(c);
                t.push(' ');
            } else {
                t.push(c);
            }
        }
        s = t;
    }
    if o.strip_accents {
        s = s
            .nfd()
            .filter(|&c| get_general_category(c) != Gc::NonspacingMark)
            .collect();
    }
    if o.lowercase {
        s = s.chars().flat_map(char::to_lowercase).collect();
    }
    s
}

/// `BertPreTokenizer`: whitespace-separated words, each punctuation character on its own.
pub fn pre_tokenize(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    for (i, c) in s.char_indices() {
        if c.is_whitespace() {
            if let Some(b) = start.take() {
                out.push(&s[b..i]);
            }
        } else if is_punctuation(c) {
            if let Some(b) = start.take() {
                out.push(&s[b..i]);
            }
            out.push(&s[i..i + c.len_utf8()]);
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(b) = start {
        out.push(&s[b..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> WordPiece {
        let vocab: Vec<&str> = vec![
            "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "un", "##aff",
            "##able", ",", "!", "cafe", "中", "文", "a", "##b",
        ];
        let v: serde_json::Map<String, serde_json::Value> = vocab
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), serde_json::json!(i)))
            .collect();
        let j = serde_json::json!({
            "added_tokens": [
                {"id": 0, "content": "[PAD]"}, {"id": 1, "content": "[UNK]"},
                {"id": 2, "content": "[CLS]"}, {"id": 3, "content": "[SEP]"},
                {"id": 4, "content": "[MASK]"}
            ],
            "normalizer": {"type": "BertNormalizer", "clean_text": true,
                           "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": {"type": "TemplateProcessing"},
            "model": {"type": "WordPiece", "unk_token": "[UNK]",
                      "continuing_subword_prefix": "##", "max_input_chars_per_word": 9,
                      "vocab": v}
        });
        WordPiece::from_json(&j.to_string()).unwrap()
    }

    #[test]
    fn pieces_punctuation_accents_cjk_and_unknowns() {
        let t = tiny();
        assert_eq!(
            t.encode("Hello, WORLD!", true, None),
            vec![2, 5, 10, 6, 11, 3]
        );
        assert_eq!(t.encode("unaffable", false, None), vec![7, 8, 9]);
        assert_eq!(t.encode("Café", false, None), vec![12]);
        assert_eq!(t.encode("中文", false, None), vec![13, 14]);
        // Longer than max_input_chars_per_word, and not coverable.
        assert_eq!(t.encode("hellohello xyz abq", false, None), vec![1, 1, 1]);
        assert_eq!(t.encode("ab", false, None), vec![15, 16]);
        // Added tokens are matched in the raw text.
        assert_eq!(t.encode("a[SEP]b", false, None), vec![15, 3, 1]);
        assert_eq!(t.encode("\t \u{0}\u{200b}", true, None), vec![2, 3]);
    }

    #[test]
    fn truncation_only_when_asked() {
        let t = tiny();
        let ids = t.encode("hello world hello world", true, None);
        assert_eq!(ids.len(), 6);
        assert_eq!(
            t.encode("hello world hello world", true, Some(4)),
            vec![2, 5, 6, 3]
        );
    }

    #[test]
    fn rejects_other_models() {
        let j = r#"{"model": {"type": "BPE", "unk_token": "x", "vocab": {}}}"#;
        assert!(WordPiece::from_json(j).is_err());
        assert!(WordPiece::from_json("{").is_err());
        let j = r#"{"model": {"type": "WordPiece", "unk_token": "[UNK]", "vocab": {"a": 0}}}"#;
        assert!(WordPiece::from_json(j).is_err(), "no [UNK] in vocab");
    }

    #[test]
    fn normalizer_matches_bert_rules() {
        let o = NormalizerOptions {
            clean_text: true,
            handle_chinese_chars: true,
            strip_accents: true,
            lowercase: true,
        };
        assert_eq!(normalize("ÀÉÎ\u{0}x\ty", o), "aeix y");
        assert_eq!(normalize("a中b", o), "a 中 b");
        assert_eq!(pre_tokenize(" a,b  c$ "), vec!["a", ",", "b", "c", "$"]);
    }
}
