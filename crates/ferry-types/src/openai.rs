//! OpenAI-compatible request and response bodies, with Ferry's extensions (`top_k`, `min_p`,
//! `repetition_penalty`, `/tokenize`, `/detokenize`).
//!
//! Requests keep unknown fields in `extra`, so that a parameter Ferry does not support is
//! answered with a 400 naming it instead of being silently ignored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{ApiError, ErrorCode};

/// A string or a list of strings (`stop`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StringOrList {
    One(String),
    Many(Vec<String>),
}

/// Message content: a string or a list of parts.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    pub r#type: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessageIn {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling fields shared by chat and completions.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SamplingFields {
    pub max_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: Option<i64>,
    pub stop: Option<StringOrList>,
    pub n: Option<i64>,
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub logit_bias: Option<BTreeMap<String, f64>>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub user: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<ChatMessageIn>,
    pub max_completion_tokens: Option<i64>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// `prompt` of a completion: text, texts, token ids, or lists of token ids.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: Prompt,
    pub echo: Option<bool>,
    pub logprobs: Option<i64>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// Sampling parameters after validation, in the engine's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingSpec {
    pub max_tokens: Option<usize>,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub min_p: f32,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub n: usize,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    pub repetition_penalty: f32,
    pub logit_bias: Vec<(u32, f32)>,
    /// Number of top alternatives to report per token, if logprobs are wanted.
    pub logprobs: Option<usize>,
    pub stream: bool,
    pub include_usage: bool,
}

pub const MAX_N: i64 = 16;
pub const MAX_TOP_LOGPROBS: i64 = 20;

fn range(param: &str, v: Option<f64>, lo: f64, hi: f64, default: f64) -> Result<f32, ApiError> {
    match v {
        None => Ok(default as f32),
        Some(x) if x.is_finite() && x >= lo && x <= hi => Ok(x as f32),
        Some(x) => Err(ApiError::invalid(
            param,
            format!("`{param}` must be between {lo} and {hi}, got {x}"),
        )),
    }
}

/// Reject unknown top-level fields with a 400 that names the first one.
pub fn reject_unknown(extra: &BTreeMap<String, Value>) -> Result<(), ApiError> {
    // Fields clients commonly send with their default meaning, which change nothing here.
    const HARMLESS: &[&str] = &["parallel_tool_calls", "store", "metadata", "service_tier"];
    for (k, v) in extra {
        if v.is_null()
            || HARMLESS.contains(&k.as_str()) && matches!(v, Value::Bool(false) | Value::Object(_))
        {
            continue;
        }
        return Err(ApiError::new(
            ErrorCode::UnsupportedParameter,
            format!("Parameter `{k}` is not supported by Ferry."),
        )
        .with_param(k));
    }
    Ok(())
}

impl SamplingFields {
    /// Validate ranges. `logprobs` is decided by the caller (chat and completions differ).
    pub fn validate(
        &self,
        vocab_size: usize,
        logprobs: Option<usize>,
    ) -> Result<SamplingSpec, ApiError> {
        let max_tokens = match self.max_tokens {
            None => None,
            Some(m) if m >= 0 => Some(m as usize),
            Some(m) => {
                return Err(ApiError::invalid(
                    "max_tokens",
                    format!("`max_tokens` must be at least 0, got {m}"),
                ))
            }
        };
        let n = match self.n {
            None => 1,
            Some(n) if (1..=MAX_N).contains(&n) => n as usize,
            Some(n) => {
                return Err(ApiError::invalid(
                    "n",
                    format!("`n` must be between 1 and {MAX_N}, got {n}"),
                ))
            }
        };
        let stop = match &self.stop {
            None => vec![],
            Some(StringOrList::One(s)) => vec![s.clone()],
            Some(StringOrList::Many(v)) => v.clone(),
        };
        if stop.len() > 4 {
            return Err(ApiError::invalid(
                "stop",
                "`stop` may hold at most 4 sequences",
            ));
        }
        if stop.iter().any(|s| s.is_empty()) {
            return Err(ApiError::invalid(
                "stop",
                "stop sequences must not be empty",
            ));
        }
        let top_k = match self.top_k {
            None | Some(0) | Some(-1) => 0,
            Some(k) if k > 0 => k as usize,
            Some(k) => {
                return Err(ApiError::invalid(
                    "top_k",
                    format!("`top_k` must be -1, 0 or positive, got {k}"),
                ))
            }
        };
        let mut logit_bias = Vec::new();
        if let Some(b) = &self.logit_bias {
            if b.len() > 300 {
                return Err(ApiError::invalid(
                    "logit_bias",
                    "`logit_bias` may hold at most 300 entries",
                ));
            }
            for (k, v) in b {
                let id: u32 = k
                    .parse()
                    .ok()
                    .filter(|&i: &u32| (i as usize) < vocab_size)
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "logit_bias",
                            format!("`logit_bias` key {k:?} is not a token id of this model"),
                        )
                    })?;
                if !v.is_finite() || !(-100.0..=100.0).contains(v) {
                    return Err(ApiError::invalid(
                        "logit_bias",
                        format!("`logit_bias` values must be between -100 and 100, got {v}"),
                    ));
                }
                logit_bias.push((id, *v as f32));
            }
        }
        let stream = self.stream.unwrap_or(false);
        if self.stream_options.is_some() && !stream {
            return Err(ApiError::invalid(
                "stream_options",
                "`stream_options` is only allowed when `stream` is true",
            ));
        }
        Ok(SamplingSpec {
            max_tokens,
            temperature: range("temperature", self.temperature, 0.0, 2.0, 1.0)?,
            top_p: {
                let p = range("top_p", self.top_p, 0.0, 1.0, 1.0)?;
                if p <= 0.0 {
                    return Err(ApiError::invalid("top_p", "`top_p` must be greater than 0"));
                }
                p
            },
            top_k,
            min_p: range("min_p", self.min_p, 0.0, 1.0, 0.0)?,
            seed: self.seed.map(|s| s as u64),
            stop,
            n,
            frequency_penalty: range("frequency_penalty", self.frequency_penalty, -2.0, 2.0, 0.0)?,
            presence_penalty: range("presence_penalty", self.presence_penalty, -2.0, 2.0, 0.0)?,
            repetition_penalty: {
                let r = range(
                    "repetition_penalty",
                    self.repetition_penalty,
                    0.0,
                    10.0,
                    1.0,
                )?;
                if r <= 0.0 {
                    return Err(ApiError::invalid(
                        "repetition_penalty",
                        "`repetition_penalty` must be greater than 0",
                    ));
                }
                r
            },
            logit_bias,
            logprobs,
            stream,
            include_usage: self
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
        })
    }
}

impl ChatCompletionRequest {
    pub fn validate(&self, vocab_size: usize) -> Result<SamplingSpec, ApiError> {
        reject_unknown(&self.extra)?;
        if self.messages.is_empty() {
            return Err(ApiError::invalid(
                "messages",
                "`messages` must not be empty",
            ));
        }
        let top = match (self.logprobs.unwrap_or(false), self.top_logprobs) {
            (_, Some(t)) if !(0..=MAX_TOP_LOGPROBS).contains(&t) => {
                return Err(ApiError::invalid(
                    "top_logprobs",
                    format!("`top_logprobs` must be between 0 and {MAX_TOP_LOGPROBS}"),
                ))
            }
            (false, Some(_)) => {
                return Err(ApiError::invalid(
                    "top_logprobs",
                    "`top_logprobs` requires `logprobs: true`",
                ))
            }
            (true, t) => Some(t.unwrap_or(0) as usize),
            (false, None) => None,
        };
        let mut s = self.sampling.validate(vocab_size, top)?;
        if let Some(m) = self.max_completion_tokens {
            if m < 0 {
                return Err(ApiError::invalid(
                    "max_completion_tokens",
                    "`max_completion_tokens` must be at least 0",
                ));
            }
            s.max_tokens = Some(m as usize);
        }
        Ok(s)
    }
}

impl CompletionRequest {
    pub fn validate(&self, vocab_size: usize) -> Result<SamplingSpec, ApiError> {
        reject_unknown(&self.extra)?;
        let lp = match self.logprobs {
            None => None,
            Some(l) if (0..=5).contains(&l) => Some(l as usize),
            Some(_) => {
                return Err(ApiError::invalid(
                    "logprobs",
                    "`logprobs` must be between 0 and 5",
                ))
            }
        };
        self.sampling.validate(vocab_size, lp)
    }
}

// ---- responses ----

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChoiceLogprobs {
    pub content: Vec<TokenLogprob>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AssistantMessage {
    pub role: &'static str,
    pub content: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatChoice {
    pub index: usize,
    pub message: AssistantMessage,
    pub logprobs: Option<ChoiceLogprobs>,
    pub finish_reason: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
    pub system_fingerprint: Option<String>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChunkChoice {
    pub index: usize,
    pub delta: Delta,
    pub logprobs: Option<ChoiceLogprobs>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
    pub system_fingerprint: Option<String>,
}

/// Legacy completions `logprobs` object.
#[derive(Debug, Clone, Serialize, Default)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<Option<f32>>,
    pub top_logprobs: Vec<Option<BTreeMap<String, f32>>>,
    pub text_offset: Vec<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CompletionChoice {
    pub text: String,
    pub index: usize,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Completion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
    pub system_fingerprint: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelCard {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: String,
    /// Ferry extension: available | loading | loaded | failed.
    pub state: String,
    /// Ferry extension.
    pub max_model_len: Option<usize>,
    /// Ferry extension: the engine's memory estimate while loaded (weights, KV cache,
    /// workspace), bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Ferry extension: why the last load failed (state `failed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Ferry extension: the engine settings a loaded model runs with (the server's flags with
    /// the model's own options over them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineSettings>,
}

/// Engine settings of a loaded model (`ModelCard::engine`).
#[derive(Debug, Clone, Serialize)]
pub struct EngineSettings {
    /// Compute threads (0 = one per core).
    pub threads: usize,
    pub max_batch_tokens: usize,
    pub max_waiting: usize,
    /// Chat models only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_cache_tokens: Option<usize>,
    /// Chat models only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_running: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TokenizeRequest {
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub messages: Option<Vec<ChatMessageIn>>,
    pub add_special_tokens: Option<bool>,
    pub add_generation_prompt: Option<bool>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TokenizeResponse {
    pub tokens: Vec<u32>,
    pub count: usize,
    pub max_model_len: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DetokenizeRequest {
    pub model: Option<String>,
    pub tokens: Vec<u32>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DetokenizeResponse {
    pub prompt: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(v: serde_json::Value) -> ChatCompletionRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn ranges_are_checked_and_name_the_param() {
        let r = chat(
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 3}),
        );
        let e = r.validate(100).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("temperature"));
        let r = chat(
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stop": ["a","b","c","d","e"]}),
        );
        assert_eq!(r.validate(100).unwrap_err().param.as_deref(), Some("stop"));
        let r = chat(
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "logit_bias": {"100": 1}}),
        );
        assert_eq!(
            r.validate(100).unwrap_err().param.as_deref(),
            Some("logit_bias")
        );
    }

    #[test]
    fn unknown_parameters_are_rejected_not_ignored() {
        let r = chat(
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": []}),
        );
        let e = r.validate(100).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnsupportedParameter);
        assert_eq!(e.param.as_deref(), Some("tools"));
    }

    #[test]
    fn defaults_and_max_completion_tokens() {
        let r = chat(
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 7, "logprobs": true, "top_logprobs": 3}),
        );
        let s = r.validate(100).unwrap();
        assert_eq!(s.max_tokens, Some(7));
        assert_eq!(s.logprobs, Some(3));
        assert_eq!(s.temperature, 1.0);
        assert_eq!(s.n, 1);
    }
}

// ---------------------------------------------------------------------------------------------
// Embeddings (`POST /v1/embeddings`).

/// Most inputs in one embeddings request (OpenAI's limit).
pub const MAX_EMBEDDING_INPUTS: usize = 2048;

/// `POST /v1/embeddings` body. `input` is kept raw and checked by `validate`.
#[derive(Debug, Clone, Deserialize)]
pub struct EmbeddingRequest {
    pub model: String,
    pub input: Value,
    pub encoding_format: Option<String>,
    pub dimensions: Option<u64>,
    pub user: Option<String>,
    /// Extension: cut inputs longer than the model's context instead of refusing them.
    pub truncate: Option<bool>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// The inputs of an embeddings request: texts, or already-tokenized sequences.
#[derive(Debug, Clone, PartialEq)]
pub enum EmbeddingInput {
    Texts(Vec<String>),
    Tokens(Vec<Vec<u32>>),
}

impl EmbeddingInput {
    pub fn len(&self) -> usize {
        match self {
            Self::Texts(t) => t.len(),
            Self::Tokens(t) => t.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How vectors are written in the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodingFormat {
    Float,
    /// Little-endian f32 bytes, base64.
    Base64,
}

/// A validated embeddings request.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingSpec {
    pub input: EmbeddingInput,
    pub format: EncodingFormat,
    pub truncate: bool,
}

fn token_id(v: &Value, param: &str) -> Result<u32, ApiError> {
    v.as_u64()
        .and_then(|t| u32::try_from(t).ok())
        .ok_or_else(|| ApiError::invalid(param, format!("`{param}` must be a token id: {v}")))
}

impl EmbeddingRequest {
    /// Check the request against a model that makes `dim`-long vectors.
    pub fn validate(&self, dim: usize) -> Result<EmbeddingSpec, ApiError> {
        reject_unknown(&self.extra)?;
        let format = match self.encoding_format.as_deref() {
            None | Some("float") => EncodingFormat::Float,
            Some("base64") => EncodingFormat::Base64,
            Some(other) => {
                return Err(ApiError::invalid(
                    "encoding_format",
                    format!("`encoding_format` must be `float` or `base64`, not `{other}`."),
                ))
            }
        };
        if let Some(d) = self.dimensions {
            if d != dim as u64 {
                return Err(ApiError::new(
                    ErrorCode::UnsupportedParameter,
                    format!("This model makes {dim}-dimensional embeddings; `dimensions` {d} is not supported."),
                )
                .with_param("dimensions"));
            }
        }
        let empty = || ApiError::invalid("input", "`input` must not be empty.");
        let input = match &self.input {
            Value::String(s) => EmbeddingInput::Texts(vec![s.clone()]),
            Value::Array(items) if items.is_empty() => return Err(empty()),
            Value::Array(items) if items.len() > MAX_EMBEDDING_INPUTS => {
                return Err(ApiError::invalid(
                    "input",
                    format!("`input` has {} items; at most {MAX_EMBEDDING_INPUTS} are allowed.", items.len()),
                ))
            }
            Value::Array(items) => match &items[0] {
                Value::String(_) => EmbeddingInput::Texts(
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, v)| {
                            v.as_str().map(str::to_string).ok_or_else(|| {
                                ApiError::invalid(
                                    &format!("input[{i}]"),
                                    "Every item of `input` must be a string when the first is.",
                                )
                            })
                        })
                        .collect::<Result<_, _>>()?,
                ),
                Value::Number(_) => EmbeddingInput::Tokens(vec![items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| token_id(v, &format!("input[{i}]")))
                    .collect::<Result<_, _>>()?]),
                Value::Array(_) => EmbeddingInput::Tokens(
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, v)| {
                            let a = v.as_array().ok_or_else(|| {
                                ApiError::invalid(
                                    &format!("input[{i}]"),
                                    "Every item of `input` must be a list of token ids when the first is.",
                                )
                            })?;
                            a.iter()
                                .enumerate()
                                .map(|(j, t)| token_id(t, &format!("input[{i}][{j}]")))
                                .collect::<Result<Vec<u32>, _>>()
                        })
                        .collect::<Result<_, _>>()?,
                ),
                _ => {
                    return Err(ApiError::invalid(
                        "input",
                        "`input` must be a string, a list of strings, a list of token ids, or a list of lists of token ids.",
                    ))
                }
            },
            _ => {
                return Err(ApiError::invalid(
                    "input",
                    "`input` must be a string, a list of strings, a list of token ids, or a list of lists of token ids.",
                ))
            }
        };
        let any_empty = match &input {
            EmbeddingInput::Texts(t) => t.iter().any(|s| s.is_empty()),
            EmbeddingInput::Tokens(t) => t.iter().any(|s| s.is_empty()),
        };
        if any_empty {
            return Err(empty());
        }
        Ok(EmbeddingSpec {
            input,
            format,
            truncate: self.truncate.unwrap_or(false),
        })
    }
}

/// One vector: floats, or a base64 string of little-endian f32 bytes.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum EmbeddingVector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct EmbeddingData {
    pub object: &'static str,
    pub index: usize,
    pub embedding: EmbeddingVector,
}

#[derive(Debug, Clone, Serialize)]
pub struct EmbeddingUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct EmbeddingResponse {
    pub object: &'static str,
    pub data: Vec<EmbeddingData>,
    pub model: String,
    pub usage: EmbeddingUsage,
}

/// Standard base64 (RFC 4648, with padding).
pub fn base64_encode(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A vector as OpenAI's base64 encoding: little-endian f32 bytes.
pub fn f32_base64(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64_encode(&bytes)
}

#[cfg(test)]
mod embedding_tests {
    use super::*;

    fn req(v: Value) -> EmbeddingRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn base64_matches_rfc4648() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(i.as_bytes()), o);
        }
        assert_eq!(f32_base64(&[1.0]), "AACAPw==");
    }

    #[test]
    fn input_shapes() {
        let s = |v| req(serde_json::json!({"model": "m", "input": v})).validate(4);
        assert_eq!(
            s(serde_json::json!("hi")).unwrap().input,
            EmbeddingInput::Texts(vec!["hi".into()])
        );
        assert_eq!(s(serde_json::json!(["a", "b"])).unwrap().input.len(), 2);
        assert_eq!(
            s(serde_json::json!([1, 2])).unwrap().input,
            EmbeddingInput::Tokens(vec![vec![1, 2]])
        );
        assert_eq!(s(serde_json::json!([[1], [2, 3]])).unwrap().input.len(), 2);
        for bad in [
            serde_json::json!([]),
            serde_json::json!(""),
            serde_json::json!(["a", ""]),
            serde_json::json!([[]]),
            serde_json::json!(["a", 1]),
            serde_json::json!([1, -1]),
            serde_json::json!([[1], "a"]),
            serde_json::json!(7),
            serde_json::json!([{"a": 1}]),
        ] {
            let e = s(bad.clone()).unwrap_err();
            assert_eq!(e.status(), 400, "{bad}");
            assert!(e.param.unwrap().starts_with("input"), "{bad}");
        }
    }

    #[test]
    fn format_dimensions_and_unknown_parameters() {
        let v = |extra: Value| {
            let mut b = serde_json::json!({"model": "m", "input": "x"});
            for (k, x) in extra.as_object().unwrap() {
                b[k] = x.clone();
            }
            req(b).validate(4)
        };
        assert_eq!(
            v(serde_json::json!({"encoding_format": "base64"}))
                .unwrap()
                .format,
            EncodingFormat::Base64
        );
        assert_eq!(
            v(serde_json::json!({"dimensions": 4})).unwrap().format,
            EncodingFormat::Float
        );
        assert_eq!(
            v(serde_json::json!({"encoding_format": "int8"}))
                .unwrap_err()
                .param
                .as_deref(),
            Some("encoding_format")
        );
        let e = v(serde_json::json!({"dimensions": 3})).unwrap_err();
        assert_eq!(
            (e.code, e.param.as_deref()),
            (ErrorCode::UnsupportedParameter, Some("dimensions"))
        );
        let e = v(serde_json::json!({"frobnicate": 1})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("frobnicate"));
        assert!(v(serde_json::json!({"truncate": true})).unwrap().truncate);
    }
}
