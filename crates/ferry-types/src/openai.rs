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
