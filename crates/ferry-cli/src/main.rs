//! The `ferry` binary: `serve`, `pull`, `list`, `show`, `rm`, `ps`, `run`, `chat`, `bench`, `keys`.
//!
//! This is the edge of the program: it parses flags, loads models, starts the server, and turns
//! errors into messages (`anyhow`). Logic lives in the library crates.

mod bench;
mod chat;
mod client;
mod keys;
mod lifecycle;
mod options;
mod progress;
mod pull;
mod registry_cmds;
mod source;
mod store;

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use ferry_engine::{Engine, EngineConfig, Event, GenerateRequest, SamplingParams};
use ferry_models::gguf::GgufFile;
use ferry_models::llama::Llama;
use ferry_models::template::{ChatMessage, ChatTemplate};
use ferry_models::tokenizer::Tokenizer;
use ferry_server::{AppState, ServerConfig};

/// Default model name (imported by the setup script).
pub const DEFAULT_MODEL: &str = "smollm2-135m-instruct";

#[derive(Parser)]
#[command(name = "ferry", version, about = "Ferry: large models as a service")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve models over an OpenAI-compatible HTTP API.
    Serve(ServeArgs),
    /// Import a model: a local .gguf file or Hugging Face-style directory, an http(s):// URL
    /// of a .gguf file, or hf:ORG/REPO[:FILE] (from HF_ENDPOINT, default huggingface.co).
    Pull {
        source: String,
        #[arg(long)]
        name: Option<String>,
        /// Expected sha256 of the file (of model.safetensors for a directory); the import
        /// fails if it differs.
        #[arg(long)]
        sha256: Option<String>,
        /// Branch, tag or commit of an hf: repository.
        #[arg(long)]
        revision: Option<String>,
        /// Times to resume an interrupted download within this run.
        #[arg(long, default_value_t = 3)]
        retries: u32,
    },
    /// List imported models.
    List,
    /// Show a model's architecture, parameters, quantization, context, template and files.
    Show { model: String },
    /// Show or change a model's serving options, which override `ferry serve`'s flags for it
    /// (`ferry run`/`chat` flags override them): context_length (a cap below the model's own
    /// context), kv_cache_tokens, max_running, max_batch_tokens, max_waiting, threads.
    Config {
        model: String,
        /// KEY=VALUE pairs to set, e.g. context_length=2048 kv_cache_tokens=4096.
        set: Vec<String>,
        /// Remove an option (the server's flag applies again).
        #[arg(long, value_name = "KEY")]
        unset: Vec<String>,
        /// Remove every option.
        #[arg(long)]
        reset: bool,
    },
    /// Remove models; blobs another model shares stay.
    Rm {
        #[arg(required = true)]
        models: Vec<String>,
    },
    /// Delete blobs no model uses (left by a multi-file pull that failed partway, or by
    /// `rm` of a model still loaded elsewhere) and leftovers of killed imports.
    Prune {
        /// Also delete partial downloads (otherwise kept so that `ferry pull` resumes them).
        #[arg(long)]
        partials: bool,
        /// Say what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// List the models a running server has loaded.
    Ps {
        /// The server (default FERRY_URL or http://127.0.0.1:8000).
        #[arg(long)]
        url: Option<String>,
        /// API key, when the server requires one (default FERRY_API_KEY).
        #[arg(long)]
        api_key: Option<String>,
    },
    /// Chat with a model in the terminal, streaming its replies (/bye or Ctrl-D exits).
    Chat {
        model: String,
        #[arg(long, default_value_t = 512)]
        max_tokens: usize,
        #[arg(long, default_value_t = 0.7)]
        temperature: f32,
        /// A system message to start the conversation with.
        #[arg(long)]
        system: Option<String>,
        /// Print each turn's token counts on stderr.
        #[arg(long)]
        verbose: bool,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Generate a chat reply to one prompt, streaming tokens to stdout.
    Run {
        model: String,
        prompt: String,
        #[arg(long, default_value_t = 256)]
        max_tokens: usize,
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Measure prefill and decode speed of a model in this process.
    Bench(bench::BenchArgs),
    /// Manage API keys: create, list, revoke, usage.
    #[command(subcommand)]
    Keys(keys::KeysCmd),
    /// Upload and profile datasets (on a running server).
    #[command(subcommand)]
    Data(lifecycle::DataCmd),
    /// Train a model on an uploaded dataset and follow the job.
    Train(Box<lifecycle::TrainArgs>),
    /// Print a finished training job's evaluation report.
    Eval {
        job: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: lifecycle::Conn,
    },
    /// Predict with a trained model from raw records (JSON Lines).
    Predict {
        model: String,
        #[arg(long)]
        records: std::path::PathBuf,
        #[command(flatten)]
        conn: lifecycle::Conn,
    },
}

/// Engine sizing flags. Each is optional so that a flag given on the command line can be told
/// from its default: `ferry run`/`chat` let a given flag win over the model's own options
/// (`ferry config`), `ferry serve` lets each model's options win over its flags (the flags
/// are the defaults for models without their own).
#[derive(Args, Clone, Default)]
pub struct EngineArgs {
    /// Compute threads (0 = one per core) [default: 0].
    #[arg(long)]
    threads: Option<usize>,
    /// KV cache capacity in tokens, shared by all sequences [default: 16384].
    #[arg(long)]
    kv_cache_tokens: Option<usize>,
    /// Most sequences decoding together [default: 32].
    #[arg(long)]
    max_running: Option<usize>,
    /// Most tokens per engine step [default: 256].
    #[arg(long)]
    max_batch_tokens: Option<usize>,
    /// Most requests waiting; beyond it requests get 429 [default: 128].
    #[arg(long)]
    max_waiting: Option<usize>,
    /// Cap on a sequence's tokens, prompt and completion (vLLM's max_model_len)
    /// [default: the model's context].
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    context_length: Option<usize>,
}

impl EngineArgs {
    /// The defaults with the given flags over them.
    pub fn config(&self) -> EngineConfig {
        let mut cfg = EngineConfig {
            threads: 0,
            kv_cache_tokens: 16384,
            block_size: 16,
            max_running: 32,
            max_batch_tokens: 256,
            max_waiting: 128,
            max_context: 0,
        };
        self.overlay(&mut cfg);
        cfg
    }

    /// For the model named by `arg`: the defaults, then the model's options (a registered
    /// name; a path has none), then the given flags.
    pub fn config_for(&self, arg: &str) -> Result<EngineConfig> {
        let mut cfg = self.config();
        if !Path::new(arg).exists() {
            options::apply(&mut cfg, &store::options(arg)?);
            self.overlay(&mut cfg);
        }
        Ok(cfg)
    }

    fn overlay(&self, cfg: &mut EngineConfig) {
        let pairs = [
            (&mut cfg.threads, self.threads),
            (&mut cfg.kv_cache_tokens, self.kv_cache_tokens),
            (&mut cfg.max_running, self.max_running),
            (&mut cfg.max_batch_tokens, self.max_batch_tokens),
            (&mut cfg.max_waiting, self.max_waiting),
            (&mut cfg.max_context, self.context_length),
        ];
        for (slot, v) in pairs {
            if let Some(v) = v {
                *slot = v;
            }
        }
    }
}

#[derive(Args)]
struct ServeArgs {
    /// Model names (as imported) or paths to .gguf files.
    #[arg(long = "model", default_values_t = vec![DEFAULT_MODEL.to_string()])]
    models: Vec<String>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Largest accepted request body, bytes.
    #[arg(long, default_value_t = 4 << 20)]
    max_body_bytes: usize,
    /// Largest accepted file upload (POST /v1/files), bytes; uploads stream to disk.
    #[arg(long, default_value_t = 512 << 20)]
    max_upload_bytes: u64,
    /// Exit when standard input reaches end of file (for supervisors and tests that hold a
    /// pipe to the server: the server cannot outlive them).
    #[arg(long, hide = true)]
    exit_on_stdin_eof: bool,
    /// Require API keys even while none exist (create them with `ferry keys create`). With
    /// keys in the database, keys are required anyway.
    #[arg(long)]
    require_auth: bool,
    /// On SIGTERM or Ctrl-C, seconds to let in-flight requests and streams finish (new
    /// requests get 503) before exiting.
    #[arg(long, default_value_t = 30)]
    drain_timeout: u64,
    /// Most models loaded at once; beyond it the least recently used is unloaded. Every
    /// registered model is served and loaded on first use.
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_loaded_models: Option<usize>,
    /// Most memory for loaded models (weights, KV caches, workspaces), e.g. 8GiB or 512MiB;
    /// beyond it the least recently used models are unloaded.
    #[arg(long, value_parser = ferry_server::parse_bytes)]
    memory_budget: Option<u64>,
    /// Seconds a request waits for its model to load before a 503 with Retry-After.
    #[arg(long, default_value_t = 300)]
    load_timeout: u64,
    #[command(flatten)]
    engine: EngineArgs,
}

/// Everything needed to serve one model.
pub struct Loaded {
    pub engine: Engine,
    pub template: ChatTemplate,
}

pub fn load(path: &Path, cfg: EngineConfig) -> Result<Loaded> {
    let file =
        Arc::new(GgufFile::open(path).with_context(|| format!("loading {}", path.display()))?);
    let tokenizer = Arc::new(Tokenizer::from_gguf(&file).context("building the tokenizer")?);
    let template =
        ChatTemplate::from_gguf(&file, &tokenizer).context("reading the chat template")?;
    let model = Arc::new(Llama::load(file).context("loading weights")?);
    Ok(Loaded {
        engine: Engine::start(model, tokenizer, cfg),
        template,
    })
}

/// Load a Hugging Face-style BERT directory (config.json, model.safetensors, tokenizer.json)
/// as an embedding model.
pub fn load_embedding(dir: &Path, cfg: &EngineConfig) -> Result<ferry_server::EmbeddingModel> {
    let model = ferry_models::bert::Bert::load(dir)
        .with_context(|| format!("loading the embedding model {}", dir.display()))?;
    Ok(ferry_server::EmbeddingModel {
        engine: ferry_engine::embed::EmbedEngine::start(Arc::new(model), embed_config(cfg)),
    })
}

fn embed_config(cfg: &EngineConfig) -> ferry_engine::embed::EmbedConfig {
    let d = ferry_engine::embed::EmbedConfig::default();
    ferry_engine::embed::EmbedConfig {
        threads: cfg.threads,
        max_waiting: cfg.max_waiting,
        max_context: cfg.max_context,
        // `--max-batch-tokens` sizes chat steps; an embedding engine keeps its own (larger)
        // step (`ferry config` refuses the chat-only options for embedding models).
        max_batch_tokens: d.max_batch_tokens,
    }
}

/// The memory a model at `path` will hold once loaded with `cfg` (what its engine's
/// `memory_bytes` will say), read from its header or config only: nothing is loaded.
pub fn estimate_memory(path: &Path, cfg: &EngineConfig) -> Result<u64> {
    if path.is_dir() {
        let c = ferry_models::bert::BertConfig::from_dir(path)
            .with_context(|| format!("reading {}", path.display()))?;
        return Ok(ferry_engine::embed::EmbedEngine::estimate_memory(
            &c,
            ferry_models::bert::default_format(),
            &embed_config(cfg),
        ));
    }
    let file = GgufFile::open(path).with_context(|| format!("reading {}", path.display()))?;
    let m = ferry_models::llama::LlamaConfig::from_gguf(&file)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(Engine::estimate_memory(&m, file.file_size() as u64, cfg))
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let r = match cli.cmd {
        Cmd::Serve(a) => serve(a),
        Cmd::Pull {
            source,
            name,
            sha256,
            revision,
            retries,
        } => pull(
            &source,
            pull::PullOpts {
                name,
                sha256,
                revision,
                retries,
            },
        ),
        Cmd::List => list(),
        Cmd::Show { model } => registry_cmds::show(&model),
        Cmd::Config {
            model,
            set,
            unset,
            reset,
        } => registry_cmds::config(&model, &set, &unset, reset),
        Cmd::Rm { models } => registry_cmds::rm(&models),
        Cmd::Prune { partials, dry_run } => registry_cmds::prune(partials, dry_run),
        Cmd::Ps { url, api_key } => registry_cmds::ps(
            &url.or_else(|| std::env::var("FERRY_URL").ok())
                .unwrap_or_else(|| "http://127.0.0.1:8000".into()),
            api_key
                .or_else(|| std::env::var("FERRY_API_KEY").ok())
                .as_deref(),
        ),
        Cmd::Chat {
            model,
            max_tokens,
            temperature,
            system,
            verbose,
            engine,
        } => chat::chat(
            &model,
            &chat::ChatOpts {
                max_tokens,
                temperature,
                system,
                verbose,
            },
            &engine,
        ),
        Cmd::Run {
            model,
            prompt,
            max_tokens,
            temperature,
            engine,
        } => run(&model, &prompt, max_tokens, temperature, &engine),
        Cmd::Bench(a) => bench::run(a),
        Cmd::Keys(k) => keys::run(k),
        Cmd::Data(d) => lifecycle::data(d),
        Cmd::Train(t) => lifecycle::train(*t),
        Cmd::Eval { job, json, conn } => lifecycle::eval(&job, json, &conn),
        Cmd::Predict {
            model,
            records,
            conn,
        } => lifecycle::predict(&model, &records, &conn),
    };
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn pull(source: &str, o: pull::PullOpts) -> Result<()> {
    // Held for the whole pull: `ferry prune` must not take blobs not yet registered.
    let _lock = store::writer_lock()?;
    if pull::is_remote(source) {
        let m = pull::pull(source, &o)?;
        println!("pulled {} ({} bytes, {})", m.name, m.size, m.blob);
        return Ok(());
    }
    if o.revision.is_some() {
        anyhow::bail!("--revision applies to hf: sources only");
    }
    let (name, sha256) = (o.name, o.sha256);
    let src = Path::new(source);
    if !src.exists() {
        anyhow::bail!("{source}: no such file or directory (remote sources are http(s)://… URLs or hf:ORG/REPO[:FILE])");
    }
    let name = match name {
        Some(n) => n,
        None => src
            .file_stem()
            .and_then(|s| s.to_str())
            .context("cannot derive a name; pass --name")?
            .to_lowercase(),
    };
    let m = if src.is_dir() {
        store::import_dir(src, &name, sha256.as_deref())?
    } else {
        store::import_file(src, &name, sha256.as_deref())?
    };
    println!("imported {} ({} bytes, {})", m.name, m.size, m.blob);
    Ok(())
}

fn list() -> Result<()> {
    println!("{:<32} {:>12}  {:<8} BLOB", "NAME", "SIZE", "FORMAT");
    for m in store::list()? {
        println!(
            "{:<32} {:>10.1}MB  {:<8} {}",
            m.name,
            m.size as f64 / 1e6,
            m.format,
            &m.blob[..19.min(m.blob.len())]
        );
    }
    lifecycle::list_trained()
}

fn serve(a: ServeArgs) -> Result<()> {
    let mut resolved = Vec::new();
    for m in &a.models {
        resolved.push(store::resolve(m).with_context(|| {
            format!("model {m:?} not found: import it with `ferry pull FILE.gguf --name {m}` (the setup script imports the default)")
        })?);
    }
    let home = store::home();
    let db = Arc::new(
        ferry_store::Store::open_in(&home)
            .with_context(|| format!("opening the metadata database in {}", home.display()))?,
    );
    let addr: SocketAddr = format!("{}:{}", a.host, a.port)
        .parse()
        .context("bad --host/--port")?;
    if a.exit_on_stdin_eof {
        std::thread::spawn(|| {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
            std::process::exit(0);
        });
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let state = AppState::new(ServerConfig {
            max_body_bytes: a.max_body_bytes,
            store: Some(db),
            require_auth: a.require_auth,
            max_upload_bytes: a.max_upload_bytes,
        });
        // `--model` paths are served under their names; registered names resolve at each load.
        let pinned = a
            .models
            .iter()
            .zip(&resolved)
            .filter(|(arg, _)| Path::new(arg.as_str()).exists())
            .map(|(_, r)| r.clone())
            .collect();
        let limits = ferry_server::Limits {
            max_loaded: a.max_loaded_models,
            memory_budget: a.memory_budget,
            load_timeout: std::time::Duration::from_secs(a.load_timeout),
        };
        state
            .models
            .configure(source::StoreSource::new(pinned, a.engine.config()), limits)
            .map_err(anyhow::Error::msg)?;
        // Jobs left running by a killed server are marked failed; the training thread starts.
        ferry_server::lifecycle::start(&state).context("starting the training runner")?;
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        let local = listener.local_addr()?;
        if !local.ip().is_loopback() && !state.auth.enabled() {
            tracing::warn!("serving on a non-loopback address {local} without API keys: anyone who can reach it can use it");
        }
        eprintln!("ferry listening on http://{local}");
        // The `--model` models load now, in order (the first is the default where `model` is
        // optional); /ready says 200 once they are loaded. The others load on first use.
        let eager: Vec<String> = resolved.into_iter().map(|(name, _)| name).collect();
        let registry = state.models.clone();
        tokio::spawn(async move {
            for (name, e) in registry.load_at_start(&eager).await {
                tracing::error!("model {name} is not served: {}", e.message);
            }
        });
        let app = ferry_server::router(state.clone());
        let drain_timeout = std::time::Duration::from_secs(a.drain_timeout);
        let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        let shutdown = async move {
            shutdown_signal().await;
            drain(&st, drain_timeout).await;
            let _ = drained_tx.send(());
        };
        let server = std::future::IntoFuture::into_future(
            axum::serve(listener, app).with_graceful_shutdown(shutdown),
        );
        // After the drain, connections still open a moment later (a stream past the
        // timeout, an idle client) are cut.
        let cut = async {
            match drained_rx.await {
                Ok(()) => tokio::time::sleep(std::time::Duration::from_secs(1)).await,
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            r = server => r?,
            _ = cut => {}
        }
        let st = state.clone();
        let _ = tokio::task::spawn_blocking(move || st.auth.flush_blocking()).await;
        Ok::<_, anyhow::Error>(())
    })?;
    // Engines hold threads; exit without waiting for in-flight work beyond axum's drain.
    std::process::exit(0);
}

/// Refuse new requests (503) and wait for the ones in flight, up to `timeout`.
async fn drain(st: &AppState, timeout: std::time::Duration) {
    st.drain.begin();
    tracing::info!(
        "draining: new requests get 503; waiting up to {}s for {} in flight",
        timeout.as_secs(),
        st.drain.in_flight()
    );
    if st.drain.wait_idle(timeout).await {
        tracing::info!("drained");
    } else {
        tracing::warn!(
            "drain timed out with {} requests in flight; closing them",
            st.drain.in_flight()
        );
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}

fn run(
    model: &str,
    prompt: &str,
    max_tokens: usize,
    temperature: f32,
    ea: &EngineArgs,
) -> Result<()> {
    let (_, path) = store::resolve(model)?;
    let l = load(&path, ea.config_for(model)?)?;
    let text = l.template.render(
        &[ChatMessage {
            role: "user".into(),
            content: prompt.into(),
        }],
        true,
    )?;
    let ids = l.engine.tokenizer().encode(&text, true, true);
    let max_tokens = max_tokens.min(l.engine.context_length().saturating_sub(ids.len()));
    let req = GenerateRequest {
        prompt: ids,
        max_tokens,
        sampling: SamplingParams {
            temperature,
            ..Default::default()
        },
        stop: vec![],
        logprobs: None,
        prompt_logprobs: None,
    };
    let mut rx = l.engine.submit(req).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut out = std::io::stdout();
    while let Some(ev) = rx.blocking_recv() {
        match ev {
            Event::Token { text, .. } => {
                out.write_all(text.as_bytes())?;
                out.flush()?;
            }
            Event::Finished { .. } => break,
            Event::Error(e) => anyhow::bail!(e),
            Event::PromptLogprobs(_) => {}
        }
    }
    writeln!(out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every option the store accepts changes the engine configuration (the two lists cannot
    /// drift apart unnoticed), and given flags win over options only in `config_for`'s order.
    #[test]
    fn every_stored_option_is_applied() {
        let base = EngineArgs::default().config();
        for (i, k) in ferry_store::models::OPTION_KEYS.iter().enumerate() {
            let v = 1000 + i as u64;
            let mut cfg = base.clone();
            options::apply(&mut cfg, &[(k.to_string(), v)].into_iter().collect());
            let got = [
                cfg.threads,
                cfg.kv_cache_tokens,
                cfg.max_running,
                cfg.max_batch_tokens,
                cfg.max_waiting,
                cfg.max_context,
            ];
            assert_eq!(
                got.iter().filter(|&&x| x == v as usize).count(),
                1,
                "{k} not applied"
            );
        }
        let flags = EngineArgs {
            max_running: Some(7),
            ..Default::default()
        };
        let mut cfg = flags.config();
        options::apply(&mut cfg, &[("max_running".into(), 3)].into_iter().collect());
        assert_eq!(cfg.max_running, 3);
        flags.overlay(&mut cfg);
        assert_eq!(cfg.max_running, 7);
    }
}
