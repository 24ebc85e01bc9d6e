//! Chat-template rendering: turns a list of chat messages into the prompt text a model was
//! trained on, from the Hugging Face Jinja template stored in GGUF `tokenizer.chat_template`.
//!
//! This module owns the Jinja environment and its Hugging Face compatibility layer: the
//! environment matches `transformers` (`trim_blocks`, `lstrip_blocks`, loop controls), Python
//! string/dict methods (`.strip()`, `.startswith()`, `.items()`, ...) come from
//! `minijinja-contrib`'s `pycompat`, and the helpers templates expect are provided:
//! `raise_exception(msg)`, `strftime_now(fmt)` (UTC) and a `tojson` filter that formats like
//! Python's `json.dumps` (`", "` / `": "` separators, no HTML escaping, `indent`, `sort_keys`,
//! `ensure_ascii` arguments). Templates see `messages`, `add_generation_prompt`, `bos_token`,
//! `eos_token`, and `tools` / `documents` as none.
//!
//! Tokenizing the rendered prompt is the caller's job (with `parse_special = true`, so the
//! template's control tokens become single ids).

use std::fmt::Write as _;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};
use serde::Serialize;

use crate::gguf::GgufFile;
use crate::tokenizer::Tokenizer;

/// One chat turn as templates see it: `message['role']`, `message['content']`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Why a chat template could not be compiled or rendered.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The template source does not compile.
    #[error("invalid chat template: {0}")]
    Syntax(String),
    /// The template called `raise_exception(message)`, typically because the conversation breaks
    /// its rules (roles not alternating, system message in the wrong place, ...).
    #[error("{0}")]
    Raised(String),
    /// Any other failure while rendering.
    #[error("chat template failed: {0}")]
    Render(String),
}

impl TemplateError {
    /// The human-readable message (for a raised exception, exactly the template's text).
    pub fn message(&self) -> &str {
        match self {
            TemplateError::Syntax(m) | TemplateError::Raised(m) | TemplateError::Render(m) => m,
        }
    }
}

/// Marker carried as the source of the error `raise_exception` returns.
#[derive(Debug)]
struct RaisedException(String);

impl std::fmt::Display for RaisedException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedException {}

const TEMPLATE_NAME: &str = "chat_template";

/// The ChatML layout (`<|im_start|>role\ncontent<|im_end|>\n`), for models without a template.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// A compiled chat template plus the special-token strings it may reference.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish()
    }
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token` / `eos_token` are the texts templates see as `bos_token`
    /// and `eos_token`.
    pub fn new(
        source: &str,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<ChatTemplate, TemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| TemplateError::Syntax(describe(&e)))?;
        Ok(ChatTemplate {
            env,
            source: source.to_string(),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// The ChatML fallback, for models whose file carries no template.
    pub fn chatml() -> ChatTemplate {
        ChatTemplate::new(CHATML_TEMPLATE, "", "<|im_end|>").expect("the ChatML template compiles")
    }

    /// The file's `tokenizer.chat_template`, or ChatML when it has none; `bos_token` /
    /// `eos_token` are the tokenizer's BOS / EOS texts.
    pub fn from_gguf(
        file: &GgufFile,
        tokenizer: &Tokenizer,
    ) -> Result<ChatTemplate, TemplateError> {
        let bos = tokenizer.bos_id().map_or("", |id| tokenizer.token_text(id));
        let eos = tokenizer.eos_id().map_or("", |id| tokenizer.token_text(id));
        match file.get("tokenizer.chat_template").and_then(|v| v.as_str()) {
            Some(source) => ChatTemplate::new(source, bos, eos),
            None => ChatTemplate::new(CHATML_TEMPLATE, bos, eos),
        }
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders the conversation; with `add_generation_prompt`, ends with the header of an
    /// assistant turn so the model continues as the assistant.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| TemplateError::Render(describe(&e)))?;
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
            tools => Value::from(()),
            documents => Value::from(()),
        };
        template.render(ctx).map_err(|e| match raised_message(&e) {
            Some(msg) => TemplateError::Raised(msg),
            None => TemplateError::Render(describe(&e)),
        })
    }
}

fn describe(e: &Error) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        let _ = write!(s, ": {inner}");
        source = inner.source();
    }
    s
}

fn raised_message(e: &Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(raised) = err.downcast_ref::<RaisedException>() {
            return Some(raised.0.clone());
        }
        source = err.source();
    }
    None
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(
        Error::new(ErrorKind::InvalidOperation, "raise_exception() called")
            .with_source(RaisedException(message)),
    )
}

/// `strftime_now(format)`: the current UTC time through a subset of C `strftime`
/// (`%Y %y %m %d %e %j %H %I %M %S %p %b %h %B %a %A %F %T %D %%`).
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    strftime(&format, secs)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

fn strftime(format: &str, unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let sod = unix_secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (sod / 3600, sod / 60 % 60, sod % 60);
    let weekday = (days + 4).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let yday = days - days_from_civil(year, 1, 1) + 1;
    let month_name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let _ = match chars.next() {
            Some('Y') => write!(out, "{year}"),
            Some('y') => write!(out, "{:02}", year.rem_euclid(100)),
            Some('m') => write!(out, "{month:02}"),
            Some('d') => write!(out, "{day:02}"),
            Some('e') => write!(out, "{day:>2}"),
            Some('j') => write!(out, "{yday:03}"),
            Some('H') => write!(out, "{hour:02}"),
            Some('I') => write!(out, "{:02}", (hour + 11) % 12 + 1),
            Some('M') => write!(out, "{minute:02}"),
            Some('S') => write!(out, "{second:02}"),
            Some('p') => write!(out, "{}", if hour < 12 { "AM" } else { "PM" }),
            Some('B') => write!(out, "{month_name}"),
            Some('b' | 'h') => write!(out, "{}", &month_name[..3]),
            Some('A') => write!(out, "{}", WEEKDAYS[weekday]),
            Some('a') => write!(out, "{}", &WEEKDAYS[weekday][..3]),
            Some('F') => write!(out, "{year}-{month:02}-{day:02}"),
            Some('T') => write!(out, "{hour:02}:{minute:02}:{second:02}"),
            Some('D') => write!(out, "{month:02}/{day:02}/{:02}", year.rem_euclid(100)),
            Some('%') => write!(out, "%"),
            Some(other) => write!(out, "%{other}"),
            None => write!(out, "%"),
        };
    }
    out
}

/// Days since 1970-01-01 -> (year, month 1..=12, day 1..=31) (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `tojson` as `transformers` defines it: `json.dumps(x, ensure_ascii=False, indent=None,
/// separators=None, sort_keys=False)`.
fn tojson(value: &Value, kwargs: Kwargs) -> Result<String, Error> {
    let indent = match kwargs.get::<Option<Value>>("indent")? {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => Some(match v.as_str() {
            Some(s) => s.to_string(),
            None => " ".repeat(usize::try_from(v.as_i64().unwrap_or(0)).unwrap_or(0)),
        }),
    };
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    let ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
    let separators = kwargs.get::<Option<Vec<String>>>("separators")?;
    kwargs.assert_all_used()?;
    let (item_sep, key_sep) = match separators.as_deref() {
        Some([item, key]) => (item.clone(), key.clone()),
        Some(_) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson: separators must be a pair",
            ))
        }
        None if indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    let opts = JsonOpts {
        indent,
        sort_keys,
        ensure_ascii,
        item_sep,
        key_sep,
    };
    let mut out = String::new();
    write_json(&mut out, value, &opts, 0)?;
    Ok(out)
}

struct JsonOpts {
    indent: Option<String>,
    sort_keys: bool,
    ensure_ascii: bool,
    item_sep: String,
    key_sep: String,
}

fn write_json(out: &mut String, value: &Value, opts: &JsonOpts, depth: usize) -> Result<(), Error> {
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let Some(i) = value.as_i64().filter(|_| value.is_integer()) {
                let _ = write!(out, "{i}");
            } else {
                let f = f64::try_from(value.clone()).unwrap_or(f64::NAN);
                if f.is_nan() {
                    out.push_str("NaN");
                } else if f.is_infinite() {
                    out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
                } else if f == f.trunc() && f.abs() < 1e16 {
                    let _ = write!(out, "{f:.1}");
                } else {
                    let _ = write!(out, "{f}");
                }
            }
        }
        ValueKind::String => write_json_str(out, value.as_str().unwrap_or(""), opts.ensure_ascii),
        ValueKind::Map => {
            let mut keys: Vec<Value> = value.try_iter()?.collect();
            if opts.sort_keys {
                keys.sort();
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                newline(out, opts, depth + 1);
                match key.as_str() {
                    Some(s) => write_json_str(out, s, opts.ensure_ascii),
                    None => write_json_str(out, &key.to_string(), opts.ensure_ascii),
                }
                out.push_str(&opts.key_sep);
                write_json(out, &value.get_item(key)?, opts, depth + 1)?;
            }
            newline(out, opts, depth);
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                newline(out, opts, depth + 1);
                write_json(out, item, opts, depth + 1)?;
            }
            newline(out, opts, depth);
            out.push(']');
        }
        _ => write_json_str(out, &value.to_string(), opts.ensure_ascii),
    }
    Ok(())
}

fn newline(out: &mut String, opts: &JsonOpts, depth: usize) {
    if let Some(indent) = &opts.indent {
        out.push('\n');
        for _ in 0..depth {
            out.push_str(indent);
        }
    }
}

fn write_json_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !c.is_ascii()) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-135M-Instruct's `tokenizer.chat_template`, verbatim from the GGUF.
    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    /// Meta-Llama-3-8B-Instruct's template.
    const LLAMA3: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

    /// Mistral-7B-Instruct-v0.2's template.
    const MISTRAL: &str = "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";

    fn msgs(turns: &[(&str, &str)]) -> Vec<ChatMessage> {
        turns.iter().map(|&(r, c)| ChatMessage::new(r, c)).collect()
    }

    #[test]
    fn template_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ChatTemplate>();
    }

    #[test]
    fn smollm2_with_system_prompt() {
        let t = ChatTemplate::new(SMOLLM2, "<|im_start|>", "<|im_end|>").unwrap();
        let m = msgs(&[
            ("system", "Be brief."),
            ("user", "Hi!"),
            ("assistant", "Hello."),
            ("user", "2+2?"),
        ]);
        assert_eq!(
            t.render(&m, true).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n\
             <|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n\
             <|im_start|>assistant\n"
        );
    }

    #[test]
    fn smollm2_inserts_its_default_system_prompt() {
        let t = ChatTemplate::new(SMOLLM2, "<|im_start|>", "<|im_end|>").unwrap();
        let m = msgs(&[("user", "Hi!")]);
        let expected =
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by \
                        Hugging Face<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n";
        assert_eq!(t.render(&m, false).unwrap(), expected);
        assert_eq!(
            t.render(&m, true).unwrap(),
            format!("{expected}<|im_start|>assistant\n")
        );
        assert_eq!(t.render(&[], true).unwrap(), "<|im_start|>assistant\n");
    }

    #[test]
    fn llama3_uses_bos_and_trims() {
        let t = ChatTemplate::new(LLAMA3, "<|begin_of_text|>", "<|eot_id|>").unwrap();
        let m = msgs(&[("system", "  sys  "), ("user", "hello\n")]);
        assert_eq!(
            t.render(&m, true).unwrap(),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nsys<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nhello<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
    }

    #[test]
    fn mistral_raises_on_bad_roles() {
        let t = ChatTemplate::new(MISTRAL, "<s>", "</s>").unwrap();
        let ok = msgs(&[("user", "a"), ("assistant", "b"), ("user", "c")]);
        assert_eq!(
            t.render(&ok, true).unwrap(),
            "<s>[INST] a [/INST]b</s>[INST] c [/INST]"
        );
        let err = t
            .render(&msgs(&[("user", "a"), ("user", "b")]), true)
            .unwrap_err();
        assert!(matches!(err, TemplateError::Raised(_)), "{err:?}");
        assert_eq!(
            err.message(),
            "Conversation roles must alternate user/assistant/user/assistant/..."
        );
        let err = t
            .render(&msgs(&[("user", "a"), ("system", "b")]), true)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Only user and assistant roles are supported!"
        );
    }

    #[test]
    fn syntax_errors_are_reported_at_construction() {
        let err = ChatTemplate::new("{% for m in messages %}", "", "").unwrap_err();
        assert!(matches!(err, TemplateError::Syntax(_)), "{err:?}");
        // unknown filters and undefined attributes only fail when rendered
        let t = ChatTemplate::new("{{ messages[0].content | nosuchfilter }}", "", "").unwrap();
        let err = t.render(&msgs(&[("user", "x")]), false).unwrap_err();
        assert!(matches!(err, TemplateError::Render(_)), "{err:?}");
        let t = ChatTemplate::new("{{ messages[0].content.upper() }}", "", "").unwrap();
        assert!(matches!(
            t.render(&[], false),
            Err(TemplateError::Render(_))
        ));
    }

    #[test]
    fn chatml_fallback() {
        let t = ChatTemplate::chatml();
        let m = msgs(&[("user", "Hi")]);
        assert_eq!(
            t.render(&m, true).unwrap(),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_string_methods_and_hf_environment() {
        let src = "{% for m in messages %}\n  {% if m.content.strip().startswith('x') %}\n{{ m.role.upper() }}:{{ m.content.strip() }}\n  {% endif %}\n{% endfor %}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        let m = msgs(&[("user", "  xyz "), ("assistant", "abc")]);
        // trim_blocks + lstrip_blocks: the tag lines leave nothing behind
        assert_eq!(t.render(&m, false).unwrap(), "USER:xyz\n");
        let t = ChatTemplate::new(
            "{{ tools is none }}{{ documents is none }}{{ tools | tojson }}",
            "",
            "",
        )
        .unwrap();
        // Jinja prints booleans the Python way
        assert_eq!(t.render(&[], false).unwrap(), "TrueTruenull");
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let src = r#"{{ {"a": 1, "b": [1, 2.5, "x\"y", true], "c": none, "d": "é\n"} | tojson }}"#;
        let t = ChatTemplate::new(src, "", "").unwrap();
        assert_eq!(
            t.render(&[], false).unwrap(),
            r#"{"a": 1, "b": [1, 2.5, "x\"y", true], "c": null, "d": "é\n"}"#
        );
        let t = ChatTemplate::new(
            r#"{{ {"a": [1, {}], "b": []} | tojson(indent=2) }}"#,
            "",
            "",
        )
        .unwrap();
        assert_eq!(
            t.render(&[], false).unwrap(),
            "{\n  \"a\": [\n    1,\n    {}\n  ],\n  \"b\": []\n}"
        );
        let t = ChatTemplate::new(
            r#"{{ "<é>" | tojson(ensure_ascii=true) }}{{ 2.0 | tojson }}"#,
            "",
            "",
        )
        .unwrap();
        assert_eq!(t.render(&[], false).unwrap(), r#""<\u00e9>"2.0"#);
        let t = ChatTemplate::new("{{ messages | tojson }}", "", "").unwrap();
        let out = t.render(&msgs(&[("user", "hi")]), false).unwrap();
        assert!(
            out == r#"[{"role": "user", "content": "hi"}]"#
                || out == r#"[{"content": "hi", "role": "user"}]"#,
            "{out}"
        );
    }

    #[test]
    fn strftime_formats_utc() {
        assert_eq!(strftime("%d %b %Y", 0), "01 Jan 1970");
        assert_eq!(
            strftime("%Y-%m-%d %H:%M:%S %A %a %B %j %I%p %e %%", 1_700_000_000),
            "2023-11-14 22:13:20 Tuesday Tue November 318 10PM 14 %"
        );
        assert_eq!(strftime("%F %T", 951_782_400), "2000-02-29 00:00:00");
        let t = ChatTemplate::new("{{ strftime_now('%Y') }}", "", "").unwrap();
        let year: i32 = t.render(&[], false).unwrap().parse().unwrap();
        assert!(year >= 2024);
    }
}
