//! Byte-level BPE tokenizer, as llama.cpp runs it for GGUF files with
//! `tokenizer.ggml.model == "gpt2"` (GPT-2, SmolLM, Llama 3, Qwen 2, ...).
//!
//! This module owns text <-> token-id conversion and nothing else:
//!
//! * **special-token partition** (llama.cpp `tokenizer_st_partition`): control / user-defined /
//!   unknown tokens found verbatim in the text become whole tokens, longest first. Control and
//!   unknown tokens are only matched when `parse_special` is set; user-defined tokens are always
//!   matched, as llama.cpp (and HF `tokenizers`) do.
//! * **pre-tokenization**: the regex set llama.cpp picks for `tokenizer.ggml.pre`, hand-coded
//!   (the `regex` crate has no look-ahead) after llama.cpp's `unicode.cpp`. `\p{L}`, `\p{N}`,
//!   `\p{P}` use exact Unicode general categories (`unicode-general-category`, Unicode 16;
//!   llama.cpp's table is slightly older, so only code points assigned in Unicode 16 may differ).
//! * **BPE**: GPT-2 byte-to-unicode mapping, merges ranked by their order in
//!   `tokenizer.ggml.merges`, lowest rank first and leftmost first on ties, over a linked list of
//!   symbols with a binary heap per word. Nothing is cached between calls.
//! * **decoding**: per-token raw bytes ([`Tokenizer::token_bytes`]) for UTF-8-safe streaming, and
//!   [`Tokenizer::decode`] for whole sequences.
//! * **end-of-generation set**: built from the metadata ids and token names the way llama.cpp
//!   builds `special_eog_ids`.
//!
//! [`Tokenizer::new`] takes plain data ([`TokenizerConfig`]); [`Tokenizer::from_gguf`] only reads
//! the `tokenizer.*` metadata keys into one.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use unicode_general_category::{get_general_category, GeneralCategory};

use crate::gguf::{GgufFile, Value};

/// Why a tokenizer could not be built from the given metadata.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("missing metadata key `{0}`")]
    MissingKey(String),
    #[error("metadata key `{key}` has the wrong type (expected {expected})")]
    WrongType { key: String, expected: &'static str },
    #[error("unsupported tokenizer model `{0}` (only byte-level BPE, `gpt2`, is supported)")]
    UnsupportedModel(String),
    #[error("unsupported pre-tokenizer `{0}`")]
    UnsupportedPreTokenizer(String),
    #[error("the vocabulary is empty")]
    EmptyVocab,
    #[error("the vocabulary has {0} tokens, more than token ids can address")]
    VocabTooLarge(usize),
    #[error("token {text:?} appears twice in the vocabulary (ids {first} and {second})")]
    DuplicateToken {
        text: String,
        first: u32,
        second: u32,
    },
    #[error("{what} has {got} entries but the vocabulary has {expected} tokens")]
    LengthMismatch {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("merge #{index} {merge:?} is invalid: {reason}")]
    BadMerge {
        index: usize,
        merge: String,
        reason: &'static str,
    },
    #[error("{what} token id {id} is out of range (vocabulary size {vocab_size})")]
    IdOutOfRange {
        what: &'static str,
        id: u64,
        vocab_size: usize,
    },
    #[error("{flag} is set but the model has no {what} token")]
    MissingSpecial {
        flag: &'static str,
        what: &'static str,
    },
}

/// Plain-data description of a byte-level BPE vocabulary; what [`Tokenizer::new`] takes.
///
/// `None` for an id means "not set". `add_bos` / `add_eos` `None` means "llama.cpp's default for
/// the pre-tokenizer" (true for the Llama 3 family, false otherwise).
#[derive(Debug, Clone, Default)]
pub struct TokenizerConfig {
    /// Vocabulary strings in byte-to-unicode form (`tokenizer.ggml.tokens`).
    pub tokens: Vec<String>,
    /// llama.cpp token types (`tokenizer.ggml.token_type`): 1 normal, 2 unknown, 3 control,
    /// 4 user-defined, 5 unused, 6 byte. `None`: all normal.
    pub token_types: Option<Vec<i32>>,
    /// `"left right"` pairs, highest priority first (`tokenizer.ggml.merges`).
    pub merges: Vec<String>,
    /// `tokenizer.ggml.pre`; empty means `default`.
    pub pre: String,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub eot_id: Option<u32>,
    pub eom_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub fim_pad_id: Option<u32>,
    pub fim_rep_id: Option<u32>,
    pub fim_sep_id: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
}

impl TokenizerConfig {
    /// Reads the `tokenizer.*` metadata keys (type-checked; ids are range-checked later, by
    /// [`Tokenizer::new`]).
    pub fn from_gguf(file: &GgufFile) -> Result<TokenizerConfig, TokenizerError> {
        config_from_metadata(|key| file.get(key))
    }
}

/// Pre-tokenizer (word splitter) families, named after llama.cpp's `LLAMA_VOCAB_PRE_TYPE_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizer {
    /// `[\p{P}\$\+<=>\^~\|]+`, then GPT-2, then `\p{N}+`, then `[0-9][0-9][0-9]`.
    Default,
    /// The GPT-2 regex `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`.
    Gpt2,
    /// `\p{N}` (every digit alone), then GPT-2. StarCoder, SmolLM, Refact, Command-R, ...
    Smollm,
    /// Llama 3: case-insensitive contractions, `\p{N}{1,3}`, newline-aware whitespace.
    Llama3,
    /// Qwen 2: as Llama 3 but single digits.
    Qwen2,
}

impl PreTokenizer {
    /// Maps a `tokenizer.ggml.pre` value to (splitter, ignore_merges, default add_bos), following
    /// llama.cpp's `llama_vocab::impl::load`.
    fn from_name(name: &str) -> Option<(PreTokenizer, bool, bool)> {
        Some(match name {
            "" | "default" => (PreTokenizer::Default, false, false),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral"
            | "midm-2.0" | "lfm2" | "jina-v5-nano" => (PreTokenizer::Llama3, true, true),
            "dbrx" | "smaug-bpe" => (PreTokenizer::Llama3, false, false),
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva-7b" | "mellum2" => (PreTokenizer::Smollm, false, false),
            "gpt2" | "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es"
            | "jina-v2-de" | "a.x-4.0" | "mellum" | "modern-bert" | "mpt" | "olmo" | "jais"
            | "trillion" | "granite-docling" | "exaone4" | "jina-v1-en" | "jina-v2-code"
            | "roberta-bpe" => (PreTokenizer::Gpt2, false, false),
            "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" | "stablelm2"
            | "hunyuan" | "solar-open" => (PreTokenizer::Qwen2, false, false),
            _ => return None,
        })
    }
}

// llama.cpp token attributes (llama_token_attr).
const ATTR_UNKNOWN: u16 = 1 << 0;
const ATTR_UNUSED: u16 = 1 << 1;
const ATTR_NORMAL: u16 = 1 << 2;
const ATTR_CONTROL: u16 = 1 << 3;
const ATTR_USER_DEFINED: u16 = 1 << 4;
const ATTR_BYTE: u16 = 1 << 5;

fn attr_from_type(t: i32) -> u16 {
    match t {
        1 => ATTR_NORMAL,
        2 => ATTR_UNKNOWN,
        3 => ATTR_CONTROL,
        4 => ATTR_USER_DEFINED,
        5 => ATTR_UNUSED,
        6 => ATTR_BYTE,
        _ => 0, // undefined
    }
}

/// Token texts llama.cpp treats as end of generation (`special_eog_ids`).
const EOG_NAMES: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];
const EOT_NAMES: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const EOM_NAMES: &[&str] = &["<|eom_id|>"];
const FIM_PRE_NAMES: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF_NAMES: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID_NAMES: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD_NAMES: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_NAMES: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP_NAMES: &[&str] = &["<|file_sep|>"];

/// The GPT-2 byte-to-unicode table: printable Latin-1 bytes map to themselves, the other 68 bytes
/// to U+0100.. in byte order.
fn byte_to_char_table() -> &'static [char; 256] {
    &byte_tables().0
}

/// Inverse of [`byte_to_char_table`].
fn char_to_byte(c: char) -> Option<u8> {
    let inverse = &byte_tables().1;
    inverse.get(c as usize).and_then(|&b| u8::try_from(b).ok())
}

fn byte_tables() -> &'static ([char; 256], [u16; 0x144]) {
    static TABLES: std::sync::OnceLock<([char; 256], [u16; 0x144])> = std::sync::OnceLock::new();
    TABLES.get_or_init(|| {
        let mut to_char = ['\0'; 256];
        let mut to_byte = [u16::MAX; 0x144];
        let mut n = 0u32;
        for b in 0..256u32 {
            let printable = (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
            let cp = if printable {
                b
            } else {
                n += 1;
                255 + n
            };
            to_char[b as usize] = char::from_u32(cp).unwrap_or('\0');
            to_byte[cp as usize] = b as u16;
        }
        (to_char, to_byte)
    })
}

/// Multiplicative hasher for the `(left, right)` merge table; keys are two packed u32 ids.
#[derive(Default)]
struct PairHasher(u64);

impl Hasher for PairHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 ^= self.0 >> 29;
    }
}

type PairMap = HashMap<u64, Merge, BuildHasherDefault<PairHasher>>;

#[derive(Clone, Copy)]
struct Merge {
    rank: u32,
    merged: u32,
}

fn pair_key(left: u32, right: u32) -> u64 {
    (u64::from(left) << 32) | u64::from(right)
}

/// A byte-level BPE tokenizer. Cheap to share (`&self` everywhere, no interior state).
pub struct Tokenizer {
    tokens: Vec<String>,
    attrs: Vec<u16>,
    /// Decoded bytes of every token, concatenated; `piece_offsets[id]..piece_offsets[id + 1]`.
    pieces: Vec<u8>,
    piece_offsets: Vec<u32>,
    token_to_id: HashMap<String, u32>,
    /// Token for each single byte, if the vocabulary has one.
    byte_ids: [Option<u32>; 256],
    merges: PairMap,
    pre: PreTokenizer,
    ignore_merges: bool,
    /// Control, user-defined and unknown tokens, longest text first (llama.cpp
    /// `cache_special_tokens`).
    special_cache: Vec<u32>,
    eog: HashSet<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    add_eos: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.tokens.len())
            .field("merges", &self.merges.len())
            .field("pre", &self.pre)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Reads the `tokenizer.*` keys of a GGUF file.
    pub fn from_gguf(file: &GgufFile) -> Result<Tokenizer, TokenizerError> {
        Tokenizer::new(TokenizerConfig::from_gguf(file)?)
    }

    /// Builds a tokenizer from plain data, validating it: every id must be in range, every merge
    /// must name two tokens whose concatenation is a token, token texts must be unique.
    pub fn new(config: TokenizerConfig) -> Result<Tokenizer, TokenizerError> {
        let TokenizerConfig {
            mut tokens,
            token_types,
            merges,
            pre,
            bos_id,
            eos_id,
            eot_id,
            eom_id,
            unk_id,
            pad_id,
            fim_pad_id,
            fim_rep_id,
            fim_sep_id,
            add_bos,
            add_eos,
        } = config;

        let n = tokens.len();
        if n == 0 {
            return Err(TokenizerError::EmptyVocab);
        }
        if n >= u32::MAX as usize {
            return Err(TokenizerError::VocabTooLarge(n));
        }
        let (pre_kind, ignore_merges, default_add_bos) = PreTokenizer::from_name(&pre)
            .ok_or_else(|| TokenizerError::UnsupportedPreTokenizer(pre.clone()))?;

        let mut attrs = match &token_types {
            Some(types) => {
                if types.len() != n {
                    return Err(TokenizerError::LengthMismatch {
                        what: "token_type",
                        expected: n,
                        got: types.len(),
                    });
                }
                types.iter().map(|&t| attr_from_type(t)).collect::<Vec<_>>()
            }
            None => vec![ATTR_NORMAL; n],
        };

        let mut token_to_id = HashMap::with_capacity(n);
        for (i, text) in tokens.iter_mut().enumerate() {
            if text.is_empty() {
                // llama.cpp renames empty tokens so they stay unique and never match
                *text = format!("[EMPTY_{i}]");
            }
            if let Some(first) = token_to_id.insert(text.clone(), i as u32) {
                return Err(TokenizerError::DuplicateToken {
                    text: text.clone(),
                    first,
                    second: i as u32,
                });
            }
        }

        let check = |what: &'static str, id: Option<u32>| -> Result<Option<u32>, TokenizerError> {
            match id {
                Some(id) if id as usize >= n => Err(TokenizerError::IdOutOfRange {
                    what,
                    id: u64::from(id),
                    vocab_size: n,
                }),
                other => Ok(other),
            }
        };
        let bos = check("bos", bos_id)?;
        let eos = check("eos", eos_id)?;
        let mut eot = check("eot", eot_id)?;
        let mut eom = check("eom", eom_id)?;
        check("unk", unk_id)?;
        check("pad", pad_id)?;
        let mut fim_pad = check("fim_pad", fim_pad_id)?;
        let mut fim_rep = check("fim_rep", fim_rep_id)?;
        let mut fim_sep = check("fim_sep", fim_sep_id)?;

        let add_bos = add_bos.unwrap_or(default_add_bos);
        let add_eos = add_eos.unwrap_or(false);
        if add_bos && bos.is_none() {
            return Err(TokenizerError::MissingSpecial {
                flag: "add_bos_token",
                what: "BOS",
            });
        }
        if add_eos && eos.is_none() {
            return Err(TokenizerError::MissingSpecial {
                flag: "add_eos_token",
                what: "EOS",
            });
        }

        // Merges: ranked by position; the first occurrence of a pair wins (llama.cpp `emplace`).
        let mut merge_map = PairMap::default();
        merge_map.reserve(merges.len());
        for (index, merge) in merges.iter().enumerate() {
            let bad = |reason| TokenizerError::BadMerge {
                index,
                merge: merge.clone(),
                reason,
            };
            // llama.cpp: `word.find(' ', 1)`; the left part is never empty
            let split = merge
                .bytes()
                .skip(1)
                .position(|b| b == b' ')
                .map(|p| p + 1)
                .ok_or_else(|| bad("no space separating the two parts"))?;
            let (left, right) = (&merge[..split], &merge[split + 1..]);
            let &l = token_to_id
                .get(left)
                .ok_or_else(|| bad("left part is not a token"))?;
            let &r = token_to_id
                .get(right)
                .ok_or_else(|| bad("right part is not a token"))?;
            let &merged = token_to_id
                .get(&format!("{left}{right}"))
                .ok_or_else(|| bad("merged text is not a token"))?;
            let rank = u32::try_from(index).map_err(|_| bad("too many merges"))?;
            merge_map
                .entry(pair_key(l, r))
                .or_insert(Merge { rank, merged });
        }

        let table = byte_to_char_table();
        let mut byte_ids = [None; 256];
        for (b, slot) in byte_ids.iter_mut().enumerate() {
            *slot = token_to_id.get(table[b].to_string().as_str()).copied();
        }

        // Name-based detection of special tokens, as llama.cpp does after loading. Candidates are
        // visited in id order (llama.cpp walks a hash map, so its order is unspecified).
        let ids_named = |names: &[&str]| -> Vec<u32> {
            let mut ids: Vec<u32> = names
                .iter()
                .filter_map(|name| token_to_id.get(*name).copied())
                .collect();
            ids.sort_unstable();
            ids
        };
        let detect = |slot: &mut Option<u32>, names: &[&str], attrs: &mut Vec<u16>| {
            if slot.is_none() {
                if let Some(&id) = ids_named(names).first() {
                    *slot = Some(id);
                    attrs[id as usize] |= ATTR_CONTROL;
                }
            }
        };
        detect(&mut eot, EOT_NAMES, &mut attrs);
        detect(&mut eom, EOM_NAMES, &mut attrs);
        for names in [FIM_PRE_NAMES, FIM_SUF_NAMES, FIM_MID_NAMES] {
            detect(&mut None, names, &mut attrs);
        }
        detect(&mut fim_pad, FIM_PAD_NAMES, &mut attrs);
        detect(&mut fim_rep, FIM_REP_NAMES, &mut attrs);
        detect(&mut fim_sep, FIM_SEP_NAMES, &mut attrs);

        // control tokens named "...unused..." are unused
        for (id, text) in tokens.iter().enumerate() {
            if attrs[id] & ATTR_CONTROL != 0 && text.contains("unused") {
                attrs[id] |= ATTR_UNUSED;
            }
        }

        let mut eog: HashSet<u32> = [fim_pad, fim_rep, fim_sep].into_iter().flatten().collect();
        for id in ids_named(EOG_NAMES) {
            eog.insert(id);
            attrs[id as usize] |= ATTR_CONTROL;
        }
        // gpt-oss: always rendered
        for id in ids_named(&["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"]) {
            attrs[id as usize] = ATTR_USER_DEFINED;
        }
        eog.extend([eos, eot, eom].into_iter().flatten());
        let text_of = |id: u32| tokens[id as usize].as_str();
        let eog_names: HashSet<&str> = eog.iter().map(|&id| text_of(id)).collect();
        let has = |name: &str| eog_names.contains(name);
        // o200k_harmony / solar-open: "<|end|>" is not end-of-generation there
        let drop_end =
            (has("<|return|>") && has("<|call|>")) || (has("<|calls|>") && has("<|flush|>"));
        // gemma4 / plamo: "</s>" is a normal token there
        let drop_s = has("<|tool_response>") || has("<|plamo:eos|>");
        drop(eog_names);
        for (name, drop_it, attr) in [
            ("<|end|>", drop_end, ATTR_USER_DEFINED),
            ("</s>", drop_s, ATTR_NORMAL),
        ] {
            if !drop_it {
                continue;
            }
            if let Some(id) = eog.iter().copied().find(|&id| text_of(id) == name) {
                eog.remove(&id);
                attrs[id as usize] = attr;
            }
        }

        let mut special_cache: Vec<u32> = (0..n as u32)
            .filter(|&id| {
                attrs[id as usize] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN) != 0
            })
            .collect();
        special_cache.sort_by_key(|&id| (Reverse(tokens[id as usize].len()), id));

        let mut pieces = Vec::new();
        let mut piece_offsets = Vec::with_capacity(n + 1);
        piece_offsets.push(0u32);
        for (id, text) in tokens.iter().enumerate() {
            append_piece(&mut pieces, text, attrs[id]);
            let end = u32::try_from(pieces.len()).map_err(|_| TokenizerError::VocabTooLarge(n))?;
            piece_offsets.push(end);
        }

        Ok(Tokenizer {
            tokens,
            attrs,
            pieces,
            piece_offsets,
            token_to_id,
            byte_ids,
            merges: merge_map,
            pre: pre_kind,
            ignore_merges,
            special_cache,
            eog,
            bos,
            eos,
            add_bos,
            add_eos,
        })
    }

    /// Tokenizes `text`. With `add_special`, prepends BOS if the model asks for it
    /// (`add_bos_token`) and appends EOS if it asks for that. With `parse_special`, control
    /// tokens written in the text (`<|im_start|>`) become their ids; otherwise they are
    /// tokenized as plain text.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        let mut scratch = Scratch::default();
        for fragment in self.partition(text, parse_special) {
            match fragment {
                Fragment::Text(start, end) => {
                    self.encode_text(&text[start..end], &mut scratch, &mut out)
                }
                Fragment::Token(id) => out.push(id),
            }
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        out
    }

    /// Concatenates [`Tokenizer::token_bytes`] of every id, lossily as UTF-8. Special tokens
    /// appear as their text; unknown ids are skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            bytes.extend_from_slice(self.token_bytes(id));
        }
        match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }

    /// The raw bytes token `id` stands for (may be part of a UTF-8 sequence). Control,
    /// user-defined and unknown tokens give their text, byte tokens (`<0x0A>`) their byte, unused
    /// and undefined tokens nothing (as llama.cpp's `token_to_piece(special = true)`). Empty for
    /// an id outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        let i = id as usize;
        match (self.piece_offsets.get(i), self.piece_offsets.get(i + 1)) {
            (Some(&a), Some(&b)) => &self.pieces[a as usize..b as usize],
            _ => &[],
        }
    }

    /// The vocabulary string of `id` (byte-to-unicode form, e.g. `Ġhello`); empty if out of range.
    pub fn token_text(&self, id: u32) -> &str {
        self.tokens.get(id as usize).map_or("", String::as_str)
    }

    /// Looks up a vocabulary string (byte-to-unicode form).
    pub fn token_to_id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Whether `encode(.., add_special = true, ..)` prepends BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// End of generation: EOS, EOT, EOM, the FIM pad/repo/separator tokens and control tokens
    /// named like `<|im_end|>`, `<|endoftext|>`, `<|eot_id|>`, `<end_of_turn>`, `<|end|>`, ...
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// The end-of-generation ids, ascending.
    pub fn eog_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.eog.iter().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Control and unknown tokens: the ones llama.cpp hides when rendering with `special = false`
    /// and only parses from text with `parse_special`. (User-defined tokens are not special in
    /// this sense: they are always parsed and always rendered.)
    pub fn is_special(&self, id: u32) -> bool {
        self.attrs
            .get(id as usize)
            .is_some_and(|&a| a & (ATTR_CONTROL | ATTR_UNKNOWN) != 0)
    }

    pub fn pre_tokenizer(&self) -> PreTokenizer {
        self.pre
    }

    /// Splits `text` around special tokens (llama.cpp `tokenizer_st_partition`): for each special
    /// token, longest first, every occurrence inside the remaining text fragments is cut out.
    fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        let mut fragments = Vec::new();
        if text.is_empty() {
            return fragments;
        }
        fragments.push(Fragment::Text(0, text.len()));
        for &id in &self.special_cache {
            if !parse_special && self.attrs[id as usize] & (ATTR_CONTROL | ATTR_UNKNOWN) != 0 {
                continue;
            }
            let needle = self.tokens[id as usize].as_str();
            let hit = fragments.iter().any(|f| match *f {
                Fragment::Text(a, b) => text[a..b].contains(needle),
                Fragment::Token(_) => false,
            });
            if !hit {
                continue;
            }
            let mut next = Vec::with_capacity(fragments.len() + 2);
            for f in fragments {
                let Fragment::Text(mut a, b) = f else {
                    next.push(f);
                    continue;
                };
                while let Some(pos) = text[a..b].find(needle) {
                    if pos > 0 {
                        next.push(Fragment::Text(a, a + pos));
                    }
                    next.push(Fragment::Token(id));
                    a += pos + needle.len();
                }
                if a < b {
                    next.push(Fragment::Text(a, b));
                }
            }
            fragments = next;
        }
        fragments
    }

    /// Pre-tokenizes a special-token-free fragment and BPE-encodes each word.
    fn encode_text(&self, text: &str, scratch: &mut Scratch, out: &mut Vec<u32>) {
        let words = pre_tokenize(self.pre, text, scratch);
        let mut encoded = String::new();
        for &(a, b) in &words {
            let word = &text.as_bytes()[a..b];
            if self.ignore_merges {
                encoded.clear();
                let table = byte_to_char_table();
                encoded.extend(word.iter().map(|&byte| table[byte as usize]));
                if let Some(&id) = self.token_to_id.get(encoded.as_str()) {
                    out.push(id);
                    continue;
                }
            }
            self.bpe(word, scratch, out);
        }
    }

    /// Byte-pair merges over one word (llama.cpp `llm_tokenizer_bpe_session::tokenize`).
    fn bpe(&self, word: &[u8], scratch: &mut Scratch, out: &mut Vec<u32>) {
        if word.len() == 1 {
            // a byte the vocabulary lacks is dropped, as llama.cpp does
            out.extend(self.byte_ids[word[0] as usize]);
            return;
        }
        let syms = &mut scratch.symbols;
        syms.clear();
        let n = word.len();
        for (i, &byte) in word.iter().enumerate() {
            syms.push(Symbol {
                id: self.byte_ids[byte as usize].unwrap_or(NO_TOKEN),
                prev: i as i32 - 1,
                next: if i + 1 == n { -1 } else { i as i32 + 1 },
                live: true,
            });
        }
        let heap = &mut scratch.heap;
        heap.clear();
        for i in 1..n {
            self.push_bigram(syms, heap, i - 1, i);
        }
        while let Some(Reverse((_, left, right, left_id, right_id, merged))) = heap.pop() {
            let (l, r) = (left as usize, right as usize);
            if !syms[l].live || !syms[r].live || syms[l].id != left_id || syms[r].id != right_id {
                continue; // stale
            }
            syms[l].id = merged;
            syms[r].live = false;
            let after = syms[r].next;
            syms[l].next = after;
            if after >= 0 {
                syms[after as usize].prev = left as i32;
            }
            if syms[l].prev >= 0 {
                self.push_bigram(syms, heap, syms[l].prev as usize, l);
            }
            if after >= 0 {
                self.push_bigram(syms, heap, l, after as usize);
            }
        }
        let mut i = 0i32;
        while i >= 0 {
            let s = &syms[i as usize];
            if s.id != NO_TOKEN {
                out.push(s.id);
            }
            i = s.next;
        }
    }

    fn push_bigram(
        &self,
        syms: &[Symbol],
        heap: &mut BinaryHeap<Reverse<Bigram>>,
        l: usize,
        r: usize,
    ) {
        let (a, b) = (syms[l].id, syms[r].id);
        if a == NO_TOKEN || b == NO_TOKEN {
            return;
        }
        if let Some(m) = self.merges.get(&pair_key(a, b)) {
            heap.push(Reverse((m.rank, l as u32, r as u32, a, b, m.merged)));
        }
    }
}

/// Decoded bytes of one token, after llama.cpp `token_to_piece(special = true)`.
fn append_piece(out: &mut Vec<u8>, text: &str, attr: u16) {
    if attr & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED) != 0 {
        out.extend_from_slice(text.as_bytes());
    } else if attr & ATTR_NORMAL != 0 {
        let mut buf = [0u8; 4];
        for c in text.chars() {
            match char_to_byte(c) {
                Some(b) => out.push(b),
                // not a byte-to-unicode character: keep it as is (llama.cpp prints a marker)
                None => out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes()),
            }
        }
    } else if attr & ATTR_BYTE != 0 {
        match text
            .strip_prefix("<0x")
            .and_then(|s| s.strip_suffix('>'))
            .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            Some(b) => out.push(b),
            None => out.extend_from_slice(text.as_bytes()),
        }
    }
    // unused / undefined: nothing
}

const NO_TOKEN: u32 = u32::MAX;

/// `(rank, left, right, left_id, right_id, merged_id)`; min-heap order is llama.cpp's
/// (lowest rank, then leftmost).
type Bigram = (u32, u32, u32, u32, u32, u32);

#[derive(Clone, Copy)]
struct Symbol {
    id: u32,
    prev: i32,
    next: i32,
    live: bool,
}

/// Per-call buffers, reused across the words of one `encode`.
#[derive(Default)]
struct Scratch {
    symbols: Vec<Symbol>,
    heap: BinaryHeap<Reverse<Bigram>>,
    chars: Vec<(usize, char)>,
    flags: Vec<u8>,
}

enum Fragment {
    /// Byte range of text still to tokenize.
    Text(usize, usize),
    Token(u32),
}

fn config_from_metadata<'a>(
    get: impl Fn(&str) -> Option<&'a Value>,
) -> Result<TokenizerConfig, TokenizerError> {
    let wrong = |key: &str, expected| TokenizerError::WrongType {
        key: key.to_string(),
        expected,
    };
    let string = |key: &str| -> Result<Option<String>, TokenizerError> {
        get(key)
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| wrong(key, "string"))
            })
            .transpose()
    };
    let strings = |key: &str| -> Result<Vec<String>, TokenizerError> {
        let arr = get(key)
            .ok_or_else(|| TokenizerError::MissingKey(key.to_string()))?
            .as_array()
            .ok_or_else(|| wrong(key, "array of strings"))?;
        arr.iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| wrong(key, "array of strings"))
            })
            .collect()
    };
    let model = string("tokenizer.ggml.model")?
        .ok_or_else(|| TokenizerError::MissingKey("tokenizer.ggml.model".into()))?;
    if model != "gpt2" {
        return Err(TokenizerError::UnsupportedModel(model));
    }
    let tokens = strings("tokenizer.ggml.tokens")?;
    let n_tokens = tokens.len();
    let id = |key: &'static str| -> Result<Option<u32>, TokenizerError> {
        let Some(v) = get(key) else { return Ok(None) };
        if v.as_i64().is_some_and(|i| i < 0) {
            return Ok(None); // -1 means "none" in some converters
        }
        let raw = v.as_u64().ok_or_else(|| wrong(key, "unsigned integer"))?;
        u32::try_from(raw)
            .map(Some)
            .map_err(|_| TokenizerError::IdOutOfRange {
                what: key,
                id: raw,
                vocab_size: n_tokens,
            })
    };
    let flag = |key: &str| -> Result<Option<bool>, TokenizerError> {
        get(key)
            .map(|v| v.as_bool().ok_or_else(|| wrong(key, "bool")))
            .transpose()
    };

    let token_types = match get("tokenizer.ggml.token_type") {
        None => None,
        Some(v) => {
            let key = "tokenizer.ggml.token_type";
            let arr = v
                .as_array()
                .ok_or_else(|| wrong(key, "array of integers"))?;
            let types = arr
                .iter()
                .map(|t| {
                    t.as_i64()
                        .and_then(|t| i32::try_from(t).ok())
                        .ok_or_else(|| wrong(key, "array of integers"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Some(types)
        }
    };
    Ok(TokenizerConfig {
        tokens,
        token_types,
        merges: strings("tokenizer.ggml.merges")?,
        pre: string("tokenizer.ggml.pre")?.unwrap_or_default(),
        bos_id: id("tokenizer.ggml.bos_token_id")?,
        eos_id: id("tokenizer.ggml.eos_token_id")?,
        eot_id: id("tokenizer.ggml.eot_token_id")?,
        eom_id: id("tokenizer.ggml.eom_token_id")?,
        unk_id: id("tokenizer.ggml.unknown_token_id")?,
        pad_id: id("tokenizer.ggml.padding_token_id")?,
        fim_pad_id: id("tokenizer.ggml.fim_pad_token_id")?,
        fim_rep_id: id("tokenizer.ggml.fim_rep_token_id")?,
        fim_sep_id: id("tokenizer.ggml.fim_sep_token_id")?,
        add_bos: flag("tokenizer.ggml.add_bos_token")?,
        add_eos: flag("tokenizer.ggml.add_eos_token")?,
    })
}

// ---------------------------------------------------------------------------------------------
// Pre-tokenization (llama.cpp unicode.cpp `unicode_regex_split` and its custom splitters)
// ---------------------------------------------------------------------------------------------

const F_IN: u8 = 1; // inside the fragment (llama.cpp: flags != 0)
const F_L: u8 = 2; // \p{L}
const F_N: u8 = 4; // \p{N}
const F_P: u8 = 8; // \p{P}
const F_WS: u8 = 16; // \s

fn char_flags(c: char) -> u8 {
    use GeneralCategory as G;
    if c.is_ascii() {
        return F_IN
            | match c {
                'a'..='z' | 'A'..='Z' => F_L,
                '0'..='9' => F_N,
                '\t' | '\n' | '\u{b}' | '\u{c}' | '\r' | ' ' => F_WS,
                '!' | '"' | '#' | '%' | '&' | '\'' | '(' | ')' | '*' | ',' | '-' | '.' | '/'
                | ':' | ';' | '?' | '@' | '[' | '\\' | ']' | '_' | '{' | '}' => F_P,
                _ => 0, // controls and the symbols $ + < = > ^ ` | ~
            };
    }
    let mut f = F_IN;
    if c.is_whitespace() {
        f |= F_WS;
    }
    f | match get_general_category(c) {
        G::UppercaseLetter
        | G::LowercaseLetter
        | G::TitlecaseLetter
        | G::ModifierLetter
        | G::OtherLetter => F_L,
        G::DecimalNumber | G::LetterNumber | G::OtherNumber => F_N,
        G::ConnectorPunctuation
        | G::DashPunctuation
        | G::OpenPunctuation
        | G::ClosePunctuation
        | G::InitialPunctuation
        | G::FinalPunctuation
        | G::OtherPunctuation => F_P,
        _ => 0,
    }
}

/// Splits `text` into words; returns byte ranges.
fn pre_tokenize(pre: PreTokenizer, text: &str, scratch: &mut Scratch) -> Vec<(usize, usize)> {
    let chars = &mut scratch.chars;
    chars.clear();
    chars.extend(text.char_indices());
    scratch.flags.clear();
    scratch
        .flags
        .extend(chars.iter().map(|&(_, c)| char_flags(c)));
    let flags: &[u8] = &scratch.flags;
    let cps: Vec<char> = chars.iter().map(|&(_, c)| c).collect();
    let n = cps.len();
    let whole = vec![(0usize, n)];

    let frags = match pre {
        PreTokenizer::Gpt2 => split_gpt2(&cps, flags, &whole),
        PreTokenizer::Smollm => {
            let digits = split_isolate(&whole, |i| flags[i] & F_N != 0, false);
            split_gpt2(&cps, flags, &digits)
        }
        PreTokenizer::Llama3 => split_llama3(&cps, flags, &whole, 3),
        PreTokenizer::Qwen2 => split_llama3(&cps, flags, &whole, 1),
        PreTokenizer::Default => {
            let punct = split_isolate(
                &whole,
                |i| {
                    flags[i] & F_P != 0
                        || matches!(cps[i], '$' | '+' | '<' | '=' | '>' | '^' | '~' | '|')
                },
                true,
            );
            let words = split_gpt2(&cps, flags, &punct);
            let numbers = split_isolate(&words, |i| flags[i] & F_N != 0, true);
            split_ascii_digit_triples(&cps, &numbers)
        }
    };
    let byte_at = |i: usize| if i < n { chars[i].0 } else { text.len() };
    frags
        .into_iter()
        .map(|(a, b)| (byte_at(a), byte_at(b)))
        .collect()
}

/// A regex that is one character class (`[class]` or `[class]+` when `runs`): every match
/// becomes a fragment, and so does every gap between matches.
fn split_isolate(
    frags: &[(usize, usize)],
    is_match: impl Fn(usize) -> bool,
    runs: bool,
) -> Vec<(usize, usize)> {
    let mut out = Vec::with_capacity(frags.len());
    for &(ini, end) in frags {
        let mut start = ini;
        let mut pos = ini;
        while pos < end {
            if is_match(pos) {
                if pos > start {
                    out.push((start, pos));
                }
                let m = pos;
                pos += 1;
                while runs && pos < end && is_match(pos) {
                    pos += 1;
                }
                out.push((m, pos));
                start = pos;
            } else {
                pos += 1;
            }
        }
        if end > start {
            out.push((start, end));
        }
    }
    out
}

/// `[0-9][0-9][0-9]` (the last regex of the `default` pre-tokenizer).
fn split_ascii_digit_triples(cps: &[char], frags: &[(usize, usize)]) -> Vec<(usize, usize)> {
    let mut out = Vec::with_capacity(frags.len());
    for &(ini, end) in frags {
        let mut start = ini;
        let mut pos = ini;
        while pos < end {
            if pos + 3 <= end && cps[pos..pos + 3].iter().all(char::is_ascii_digit) {
                if pos > start {
                    out.push((start, pos));
                }
                out.push((pos, pos + 3));
                pos += 3;
                start = pos;
            } else {
                pos += 1;
            }
        }
        if end > start {
            out.push((start, end));
        }
    }
    out
}

/// Emits words as `(prev_end, end)` ranges, skipping empty ones.
struct Emitter<'a> {
    out: &'a mut Vec<(usize, usize)>,
    prev_end: usize,
}

impl Emitter<'_> {
    fn add(&mut self, end: usize) -> usize {
        let len = end - self.prev_end;
        if len > 0 {
            self.out.push((self.prev_end, end));
        }
        self.prev_end = end;
        len
    }
}

/// GPT-2: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
/// (llama.cpp `unicode_regex_split_custom_gpt2`).
fn split_gpt2(cps: &[char], flags: &[u8], frags: &[(usize, usize)]) -> Vec<(usize, usize)> {
    let mut out = Vec::with_capacity(cps.len() / 3 + frags.len());
    for &(ini, end) in frags {
        let cpt = |p: usize| if p < end { Some(cps[p]) } else { None };
        let fl = |p: usize| if p < end { flags[p] } else { 0 };
        let mut em = Emitter {
            out: &mut out,
            prev_end: ini,
        };
        let mut pos = ini;
        while pos < end {
            let c = cps[pos];
            let f = flags[pos];
            if c == '\'' && pos + 1 < end {
                let next = cps[pos + 1];
                if matches!(next, 's' | 't' | 'm' | 'd') {
                    pos += em.add(pos + 2);
                    continue;
                }
                if pos + 2 < end {
                    let next2 = cps[pos + 2];
                    if matches!((next, next2), ('r', 'e') | ('v', 'e') | ('l', 'l')) {
                        pos += em.add(pos + 3);
                        continue;
                    }
                }
            }
            let space = c == ' ';
            let f2 = if space { fl(pos + 1) } else { f };
            // ` ?\p{L}+`, ` ?\p{N}+`
            if let Some(class) = [F_L, F_N].into_iter().find(|&class| f2 & class != 0) {
                pos += usize::from(space);
                while fl(pos) & class != 0 {
                    pos += 1;
                }
                em.add(pos);
                continue;
            }
            // ` ?[^\s\p{L}\p{N}]+`
            if f2 & (F_WS | F_L | F_N) == 0 && f2 != 0 {
                pos += usize::from(space);
                while fl(pos) & (F_WS | F_L | F_N) == 0 && fl(pos) != 0 {
                    pos += 1;
                }
                em.add(pos);
                continue;
            }
            let mut ws = 0;
            while fl(pos + ws) & F_WS != 0 {
                ws += 1;
            }
            if ws > 1 && cpt(pos + ws).is_some() {
                // `\s+(?!\S)`: leave the last space to the next word
                pos += ws - 1;
                em.add(pos);
                continue;
            }
            if ws > 0 {
                pos += ws;
                em.add(pos);
                continue;
            }
            pos += 1;
            em.add(pos);
        }
    }
    out
}

/// Llama 3 (`max_digits` 3) and Qwen 2 (`max_digits` 1):
/// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
/// (llama.cpp `unicode_regex_split_custom_llama3` / `_qwen2`).
fn split_llama3(
    cps: &[char],
    flags: &[u8],
    frags: &[(usize, usize)],
    max_digits: usize,
) -> Vec<(usize, usize)> {
    let mut out = Vec::with_capacity(cps.len() / 3 + frags.len());
    for &(ini, end) in frags {
        let cpt = |p: usize| if p < end { Some(cps[p]) } else { None };
        let fl = |p: usize| if p < end { flags[p] } else { 0 };
        let lower = |p: usize| cpt(p).map(|c| c.to_ascii_lowercase());
        let mut em = Emitter {
            out: &mut out,
            prev_end: ini,
        };
        let mut pos = ini;
        while pos < end {
            let c = cps[pos];
            let f = flags[pos];
            if c == '\'' && pos + 1 < end {
                let next = lower(pos + 1);
                if matches!(next, Some('s' | 't' | 'm' | 'd')) {
                    pos += em.add(pos + 2);
                    continue;
                }
                if pos + 2 < end {
                    let next2 = lower(pos + 2);
                    if matches!(
                        (next, next2),
                        (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l'))
                    ) {
                        pos += em.add(pos + 3);
                        continue;
                    }
                }
            }
            // `[^\r\n\p{L}\p{N}]?\p{L}+`
            if !(c == '\r' || c == '\n' || f & F_N != 0) && (f & F_L != 0 || fl(pos + 1) & F_L != 0)
            {
                pos += 1;
                while fl(pos) & F_L != 0 {
                    pos += 1;
                }
                em.add(pos);
                continue;
            }
            // `\p{N}{1,max_digits}`
            if f & F_N != 0 {
                let mut group = pos;
                while fl(pos) & F_N != 0 {
                    pos += 1;
                    if pos - group >= max_digits {
                        em.add(pos);
                        group = pos;
                    }
                }
                em.add(pos);
                continue;
            }
            // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
            let space = c == ' ';
            let mut f2 = if space { fl(pos + 1) } else { f };
            if f2 & (F_WS | F_L | F_N) == 0 {
                pos += usize::from(space);
                while f2 & (F_WS | F_L | F_N) == 0 && f2 != 0 {
                    pos += 1;
                    f2 = fl(pos);
                }
                while matches!(cpt(pos), Some('\r' | '\n')) {
                    pos += 1;
                }
                em.add(pos);
                continue;
            }
            let mut ws = 0;
            let mut last_newline_end = 0;
            while fl(pos + ws) & F_WS != 0 {
                if matches!(cps[pos + ws], '\r' | '\n') {
                    last_newline_end = pos + ws + 1;
                }
                ws += 1;
            }
            // `\s*[\r\n]+`
            if last_newline_end > 0 {
                pos = last_newline_end;
                em.add(pos);
                continue;
            }
            // `\s+(?!\S)`
            if ws > 1 && cpt(pos + ws).is_some() {
                pos += ws - 1;
                em.add(pos);
                continue;
            }
            if ws > 0 {
                pos += ws;
                em.add(pos);
                continue;
            }
            pos += 1;
            em.add(pos);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// The 256 byte tokens (ids 0..256), then `extra` as (text, token_type).
    fn vocab(extra: &[(&str, i32)], skip_bytes: &[u8]) -> (Vec<String>, Vec<i32>) {
        let table = byte_to_char_table();
        let mut tokens: Vec<String> = (0..256usize)
            .filter(|&b| !skip_bytes.contains(&(b as u8)))
            .map(|b| table[b].to_string())
            .collect();
        let mut types = vec![1; tokens.len()];
        for &(t, ty) in extra {
            tokens.push(t.to_string());
            types.push(ty);
        }
        (tokens, types)
    }

    fn build(extra: &[(&str, i32)], merges: &[&str], pre: &str) -> Tokenizer {
        let (tokens, types) = vocab(extra, &[]);
        Tokenizer::new(TokenizerConfig {
            tokens,
            token_types: Some(types),
            merges: merges.iter().map(|s| s.to_string()).collect(),
            pre: pre.to_string(),
            ..Default::default()
        })
        .unwrap()
    }

    fn texts(t: &Tokenizer, ids: &[u32]) -> Vec<String> {
        ids.iter().map(|&id| t.token_text(id).to_string()).collect()
    }

    fn words(pre: PreTokenizer, text: &str) -> Vec<String> {
        pre_tokenize(pre, text, &mut Scratch::default())
            .into_iter()
            .map(|(a, b)| text[a..b].to_string())
            .collect()
    }

    #[test]
    fn tokenizer_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Tokenizer>();
    }

    #[test]
    fn byte_table_is_a_bijection() {
        let table = byte_to_char_table();
        let distinct: HashSet<char> = table.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(table[b as usize]), Some(b));
        }
        assert_eq!(table[b' ' as usize], 'Ġ');
        assert_eq!(table[b'\n' as usize], 'Ċ');
        assert_eq!(table[b'a' as usize], 'a');
        assert_eq!(char_to_byte('é'), Some(0xE9));
        assert_eq!(char_to_byte('\u{144}'), None);
    }

    #[test]
    fn merges_apply_by_rank_not_position() {
        let extra = [("ab", 1), ("bc", 1)];
        let t = build(&extra, &["b c", "a b"], "gpt2");
        assert_eq!(texts(&t, &t.encode("abc", false, false)), ["a", "bc"]);
        let t = build(&extra, &["a b", "b c"], "gpt2");
        assert_eq!(texts(&t, &t.encode("abc", false, false)), ["ab", "c"]);
    }

    #[test]
    fn equal_ranks_merge_leftmost_first() {
        let t = build(&[("aa", 1)], &["a a"], "gpt2");
        assert_eq!(texts(&t, &t.encode("aaa", false, false)), ["aa", "a"]);
        assert_eq!(texts(&t, &t.encode("aaaa", false, false)), ["aa", "aa"]);
    }

    #[test]
    fn merges_chain_into_longer_tokens() {
        let extra = [("he", 1), ("ll", 1), ("hell", 1), ("hello", 1), ("Ġw", 1)];
        let merges = ["h e", "l l", "he ll", "hell o", "Ġ w"];
        let t = build(&extra, &merges, "gpt2");
        let ids = t.encode("hello world", false, false);
        assert_eq!(texts(&t, &ids), ["hello", "Ġw", "o", "r", "l", "d"]);
        assert_eq!(t.decode(&ids), "hello world");
        // a merge whose left symbol has already grown is stale and must be skipped
        let extra = [("bc", 1), ("ab", 1), ("cd", 1)];
        let t = build(&extra, &["b c", "a b", "c d"], "gpt2");
        assert_eq!(texts(&t, &t.encode("abcd", false, false)), ["a", "bc", "d"]);
    }

    #[test]
    fn bytes_missing_from_the_vocabulary_are_dropped_like_llama_cpp() {
        let (tokens, types) = vocab(&[], &[b'z', 0xA9]);
        let t = Tokenizer::new(TokenizerConfig {
            tokens,
            token_types: Some(types),
            pre: "gpt2".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(t.decode(&t.encode("azb", false, false)), "ab");
        assert_eq!(t.encode("z", false, false), Vec::<u32>::new());
        // "é" is C3 A9: only the C3 byte survives
        let ids = t.encode("é", false, false);
        assert_eq!(ids.len(), 1);
        assert_eq!(t.token_bytes(ids[0]), [0xC3]);
    }

    #[test]
    fn multibyte_text_round_trips_through_byte_tokens() {
        let t = build(&[], &[], "gpt2");
        for text in [
            "héllo wörld 👋",
            "日本語のテキスト",
            "a\u{301} \u{1F468}\u{200D}\u{1F469}",
            "\t\n\r\0",
        ] {
            let ids = t.encode(text, false, false);
            assert_eq!(ids.len(), text.len());
            assert_eq!(t.decode(&ids), text);
            let bytes: Vec<u8> = ids
                .iter()
                .flat_map(|&id| t.token_bytes(id).to_vec())
                .collect();
            assert_eq!(bytes, text.as_bytes());
        }
        // a lone continuation byte decodes lossily, not with a panic
        let e = t.encode("é", false, false);
        assert_eq!(t.decode(&e[..1]), "\u{FFFD}");
    }

    #[test]
    fn gpt2_splitting() {
        use PreTokenizer::Gpt2;
        assert_eq!(
            words(Gpt2, "Hello world's  test 123 !!\n\n"),
            ["Hello", " world", "'s", " ", " test", " 123", " !!", "\n\n"]
        );
        assert_eq!(
            words(Gpt2, "don't WE'RE I'll"),
            ["don", "'t", " WE", "'", "RE", " I", "'ll"]
        );
        assert_eq!(words(Gpt2, "   x"), ["  ", " x"]);
        assert_eq!(words(Gpt2, "x   "), ["x", "   "]);
        assert_eq!(
            words(Gpt2, "\tif x:\n\t\treturn"),
            ["\t", "if", " x", ":", "\n\t", "\t", "return"]
        );
        // \p{L} is the Unicode category, not char::is_alphabetic (U+2160 ROMAN NUMERAL ONE is Nl)
        assert_eq!(words(Gpt2, "aⅠb"), ["a", "Ⅰ", "b"]);
        assert_eq!(words(Gpt2, "e\u{301}"), ["e", "\u{301}"]);
    }

    #[test]
    fn smollm_isolates_every_digit() {
        assert_eq!(
            words(PreTokenizer::Smollm, "abc 1234 x3.14"),
            ["abc", " ", "1", "2", "3", "4", " x", "3", ".", "1", "4"]
        );
    }

    #[test]
    fn llama3_and_qwen2_splitting() {
        assert_eq!(
            words(PreTokenizer::Llama3, "Hello  world 12345\n\n  x"),
            ["Hello", " ", " world", " ", "123", "45", "\n\n", " ", " x"]
        );
        assert_eq!(words(PreTokenizer::Llama3, "WE'RE"), ["WE", "'RE"]);
        assert_eq!(words(PreTokenizer::Llama3, "x;\n\ny"), ["x", ";\n\n", "y"]);
        assert_eq!(
            words(PreTokenizer::Qwen2, "a 123"),
            ["a", " ", "1", "2", "3"]
        );
    }

    #[test]
    fn default_pre_tokenizer_splits_punctuation_and_digit_triples() {
        assert_eq!(
            words(PreTokenizer::Default, "hello, world!! 1234567"),
            ["hello", ",", " world", "!!", " ", "123", "456", "7"]
        );
    }

    #[test]
    fn special_tokens_partition_longest_first() {
        let extra = [
            ("<|im_start|>", 3),
            ("<|im", 3),
            ("<tool>", 4),
            ("<|im_end|>", 3),
        ];
        let t = build(&extra, &[], "smollm");
        let start = t.token_to_id("<|im_start|>").unwrap();
        let short = t.token_to_id("<|im").unwrap();
        let tool = t.token_to_id("<tool>").unwrap();
        let a = t.token_to_id("a").unwrap();
        let b = t.token_to_id("b").unwrap();
        assert_eq!(t.encode("<|im_start|>", false, true), [start]);
        assert_eq!(
            t.encode("a<|im_start|>b<tool><|im", false, true),
            [a, start, b, tool, short]
        );
        // parse_special = false: control tokens are plain text, user-defined ones still match
        let plain = t.encode("a<|im_start|>b<tool>", false, false);
        assert_eq!(plain.len(), 1 + "<|im_start|>".len() + 1 + 1);
        assert_eq!(plain.last(), Some(&tool));
        assert_eq!(t.decode(&plain), "a<|im_start|>b<tool>");
        assert!(t.is_special(start) && !t.is_special(tool) && !t.is_special(a));
        assert!(t.is_eog(t.token_to_id("<|im_end|>").unwrap()));
        assert!(!t.is_eog(start));
        assert_eq!(t.encode("", true, true), Vec::<u32>::new());
    }

    #[test]
    fn eog_set_follows_llama_cpp() {
        // "<|endoftext|>" typed normal is still end-of-generation, and becomes control
        let extra = [
            ("<|endoftext|>", 1),
            ("<|im_end|>", 3),
            ("<reponame>", 3),
            ("<x>", 3),
        ];
        let (tokens, types) = vocab(&extra, &[]);
        let t = Tokenizer::new(TokenizerConfig {
            tokens,
            token_types: Some(types),
            pre: "smollm".into(),
            eos_id: Some(5),
            ..Default::default()
        })
        .unwrap();
        let id = |s: &str| t.token_to_id(s).unwrap();
        let mut expected = vec![5, id("<|endoftext|>"), id("<|im_end|>"), id("<reponame>")];
        expected.sort_unstable();
        assert_eq!(t.eog_ids(), expected);
        assert!(t.is_special(id("<|endoftext|>")));
        assert_eq!(
            t.encode("<|endoftext|>", false, true),
            [id("<|endoftext|>")]
        );
        assert!(!t.is_eog(id("<x>")));
        assert!(!t.is_eog(u32::MAX));
    }

    #[test]
    fn add_special_follows_the_model() {
        let (tokens, types) = vocab(&[("<s>", 3), ("</s>", 3)], &[]);
        let config = TokenizerConfig {
            tokens,
            token_types: Some(types),
            bos_id: Some(256),
            eos_id: Some(257),
            pre: "llama-bpe".into(),
            ..Default::default()
        };
        let t = Tokenizer::new(config.clone()).unwrap();
        assert!(t.add_bos());
        assert_eq!(t.encode("a", true, false), [256, u32::from(b'a')]);
        assert_eq!(t.encode("a", false, false), [u32::from(b'a')]);
        let t = Tokenizer::new(TokenizerConfig {
            add_bos: Some(false),
            add_eos: Some(true),
            ..config.clone()
        })
        .unwrap();
        assert_eq!(t.encode("a", true, false), [u32::from(b'a'), 257]);
        let t = Tokenizer::new(TokenizerConfig {
            pre: "smollm".into(),
            ..config
        })
        .unwrap();
        assert_eq!(t.encode("a", true, false), [u32::from(b'a')]);
    }

    #[test]
    fn llama3_ignore_merges_takes_whole_words() {
        let (tokens, types) = vocab(&[("Ġabc", 1)], &[]);
        let t = Tokenizer::new(TokenizerConfig {
            tokens,
            token_types: Some(types),
            pre: "llama-bpe".into(),
            add_bos: Some(false),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(texts(&t, &t.encode(" abc", false, false)), ["Ġabc"]);
        let t = build(&[("Ġabc", 1)], &[], "gpt2");
        assert_eq!(t.encode(" abc", false, false).len(), 4);
    }

    #[test]
    fn token_accessors_never_panic() {
        let t = build(&[("<|im_end|>", 3)], &[], "gpt2");
        assert_eq!(t.vocab_size(), 257);
        assert_eq!(t.token_text(256), "<|im_end|>");
        assert_eq!(t.token_bytes(256), b"<|im_end|>");
        assert_eq!(t.token_bytes(u32::from(b' ')), b" ");
        assert_eq!(t.token_text(9999), "");
        assert_eq!(t.token_bytes(9999), b"");
        assert_eq!(t.decode(&[9999, u32::from(b'a')]), "a");
        assert!(!t.is_special(9999));
        assert_eq!(t.bos_id(), None);
    }

    #[test]
    fn byte_and_unused_token_types_decode_like_llama_cpp() {
        let (tokens, types) = vocab(&[("<0x0A>", 6), ("<unused0>", 5)], &[]);
        let t = Tokenizer::new(TokenizerConfig {
            tokens,
            token_types: Some(types),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(t.token_bytes(256), b"\n");
        assert_eq!(t.token_bytes(257), b"");
    }

    fn err(config: TokenizerConfig) -> TokenizerError {
        Tokenizer::new(config).unwrap_err()
    }

    #[test]
    fn malformed_metadata_is_an_error() {
        let (tokens, types) = vocab(&[("ab", 1)], &[]);
        let base = TokenizerConfig {
            tokens,
            token_types: Some(types),
            pre: "gpt2".into(),
            ..Default::default()
        };
        let with_merges = |m: &[&str]| TokenizerConfig {
            merges: m.iter().map(|s| s.to_string()).collect(),
            ..base.clone()
        };
        assert!(matches!(
            err(with_merges(&["a b", "a zz"])),
            TokenizerError::BadMerge { index: 1, .. }
        ));
        assert!(matches!(
            err(with_merges(&["ab"])),
            TokenizerError::BadMerge { index: 0, .. }
        ));
        assert!(matches!(
            err(with_merges(&["b a"])),
            TokenizerError::BadMerge { .. }
        ));
        assert!(matches!(
            err(with_merges(&["ab b"])),
            TokenizerError::BadMerge { .. }
        ));
        assert!(matches!(
            err(TokenizerConfig {
                token_types: Some(vec![1; 3]),
                ..base.clone()
            }),
            TokenizerError::LengthMismatch {
                expected: 257,
                got: 3,
                ..
            }
        ));
        assert!(matches!(
            err(TokenizerConfig {
                eos_id: Some(257),
                ..base.clone()
            }),
            TokenizerError::IdOutOfRange { id: 257, .. }
        ));
        assert!(matches!(
            err(TokenizerConfig {
                add_bos: Some(true),
                ..base.clone()
            }),
            TokenizerError::MissingSpecial { .. }
        ));
        assert!(matches!(
            err(TokenizerConfig {
                pre: "nonsense".into(),
                ..base.clone()
            }),
            TokenizerError::UnsupportedPreTokenizer(_)
        ));
        let mut dup = base.clone();
        dup.tokens[256] = "a".into();
        assert!(matches!(
            err(dup),
            TokenizerError::DuplicateToken {
                first: 97,
                second: 256,
                ..
            }
        ));
        assert!(matches!(
            err(TokenizerConfig {
                tokens: vec![],
                token_types: None,
                ..base.clone()
            }),
            TokenizerError::EmptyVocab
        ));
        // the same tokenizer builds once the merges are sane
        assert!(Tokenizer::new(with_merges(&["a b", "a b"])).is_ok());
    }

    #[test]
    fn metadata_keys_are_read_and_checked() {
        let (tokens, types) = vocab(&[("<|im_start|>", 3), ("<|im_end|>", 3)], &[]);
        let mut meta = BTreeMap::new();
        let s = |v: &str| Value::String(v.to_string());
        meta.insert("tokenizer.ggml.model".to_string(), s("gpt2"));
        meta.insert("tokenizer.ggml.pre".to_string(), s("smollm"));
        meta.insert(
            "tokenizer.ggml.tokens".to_string(),
            Value::Array(tokens.iter().map(|t| s(t)).collect()),
        );
        meta.insert(
            "tokenizer.ggml.token_type".to_string(),
            Value::Array(types.iter().map(|&t| Value::I32(t)).collect()),
        );
        meta.insert("tokenizer.ggml.merges".to_string(), Value::Array(vec![]));
        meta.insert("tokenizer.ggml.bos_token_id".to_string(), Value::U32(256));
        meta.insert("tokenizer.ggml.eos_token_id".to_string(), Value::U32(257));
        meta.insert(
            "tokenizer.ggml.padding_token_id".to_string(),
            Value::I32(-1),
        );
        meta.insert(
            "tokenizer.ggml.add_bos_token".to_string(),
            Value::Bool(false),
        );
        let load = |m: &BTreeMap<String, Value>| {
            config_from_metadata(|k| m.get(k)).and_then(Tokenizer::new)
        };

        let t = load(&meta).unwrap();
        assert_eq!((t.bos_id(), t.eos_id()), (Some(256), Some(257)));
        assert_eq!(t.pre_tokenizer(), PreTokenizer::Smollm);
        assert!(t.is_eog(257));

        let mut m = meta.clone();
        m.insert("tokenizer.ggml.model".into(), s("llama"));
        assert!(matches!(load(&m), Err(TokenizerError::UnsupportedModel(_))));
        let mut m = meta.clone();
        m.remove("tokenizer.ggml.merges");
        assert!(matches!(load(&m), Err(TokenizerError::MissingKey(_))));
        let mut m = meta.clone();
        m.insert(
            "tokenizer.ggml.tokens".into(),
            Value::Array(vec![Value::U8(1)]),
        );
        assert!(matches!(load(&m), Err(TokenizerError::WrongType { .. })));
        let mut m = meta.clone();
        m.insert("tokenizer.ggml.eos_token_id".into(), Value::U64(1 << 40));
        assert!(matches!(load(&m), Err(TokenizerError::IdOutOfRange { .. })));
        let mut m = meta.clone();
        m.insert("tokenizer.ggml.eos_token_id".into(), s("2"));
        assert!(matches!(load(&m), Err(TokenizerError::WrongType { .. })));
        let mut m = meta;
        m.insert(
            "tokenizer.ggml.token_type".into(),
            Value::Array(vec![Value::I32(1)]),
        );
        assert!(matches!(
            load(&m),
            Err(TokenizerError::LengthMismatch { .. })
        ));
    }
}
