//! `ferry chat NAME`: an interactive, multi-turn chat in the terminal. The model is loaded in
//! this process as `ferry run` does; each turn renders the whole history with the model's chat
//! template and streams the reply's tokens as they come. `/bye` or end of input exits,
//! `/clear` forgets the history. A conversation that no longer fits the context is refused
//! with a message (never silently truncated).

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Result};
use ferry_engine::{Event, FinishReason, GenerateRequest, SamplingParams};
use ferry_models::template::ChatMessage;

use crate::{load, store, EngineArgs};

pub struct ChatOpts {
    pub max_tokens: usize,
    pub temperature: f32,
    pub system: Option<String>,
    /// Print token counts of each turn on stderr.
    pub verbose: bool,
}

pub fn chat(model: &str, o: &ChatOpts, ea: &EngineArgs) -> Result<()> {
    let (name, path) = store::resolve(model)?;
    if path.is_dir() {
        bail!("{name} is an embedding model; `ferry chat` needs a chat model (GGUF)");
    }
    let l = load(&path, ea.config_for(model)?)?;
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!("chatting with {name}; /bye or Ctrl-D to exit, /clear to start over");
    }
    let mut history: Vec<ChatMessage> = Vec::new();
    if let Some(s) = &o.system {
        history.push(ChatMessage {
            role: "system".into(),
            content: s.clone(),
        });
    }
    let base = history.len();
    let ctx = l.engine.context_length();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock();
    let mut out = std::io::stdout();
    loop {
        if interactive {
            write!(out, ">>> ")?;
            out.flush()?;
        }
        let mut line = String::new();
        if lines.read_line(&mut line)? == 0 {
            break; // end of input
        }
        let text = line.trim_end_matches(['\n', '\r']);
        match text.trim() {
            "" => continue,
            "/bye" | "/exit" => break,
            "/clear" => {
                history.truncate(base);
                eprintln!("(history cleared)");
                continue;
            }
            _ => {}
        }
        history.push(ChatMessage {
            role: "user".into(),
            content: text.to_string(),
        });
        let prompt = l.template.render(&history, true)?;
        let ids = l.engine.tokenizer().encode(&prompt, true, true);
        if ids.len() >= ctx {
            history.pop();
            eprintln!(
                "error: the conversation is {} tokens, the model's context is {ctx}; /clear to start over",
                ids.len()
            );
            continue;
        }
        let max_tokens = o.max_tokens.min(ctx - ids.len());
        let req = GenerateRequest {
            prompt: ids,
            max_tokens,
            sampling: SamplingParams {
                temperature: o.temperature,
                ..Default::default()
            },
            stop: vec![],
            logprobs: None,
            prompt_logprobs: None,
        };
        let mut rx = l.engine.submit(req).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut reply = String::new();
        while let Some(ev) = rx.blocking_recv() {
            match ev {
                Event::Token { text, .. } => {
                    out.write_all(text.as_bytes())?;
                    out.flush()?;
                    reply.push_str(&text);
                }
                Event::Finished {
                    reason,
                    prompt_tokens,
                    completion_tokens,
                    ..
                } => {
                    if o.verbose {
                        eprintln!(
                            "\n[prompt_tokens={prompt_tokens} completion_tokens={completion_tokens}]"
                        );
                    }
                    if reason == FinishReason::Length && interactive {
                        eprintln!("\n(reply cut at --max-tokens {max_tokens})");
                    }
                    break;
                }
                Event::Error(e) => bail!(e),
                Event::PromptLogprobs(_) => {}
            }
        }
        writeln!(out)?;
        history.push(ChatMessage {
            role: "assistant".into(),
            content: reply,
        });
    }
    Ok(())
}
