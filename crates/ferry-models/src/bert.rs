//! BERT-family sentence encoders (all-MiniLM, BGE, E5 ...) over safetensors weights, with
//! sentence-transformers pooling.
//!
//! `BertConfig::from_dir` (config.json) -> `Bert::load(dir)` -> `Bert::forward` on a batch of
//! token-id sequences -> one pooled (and, if `modules.json` lists `Normalize`, L2-normalized)
//! vector per sequence.
//!
//! A batch is flattened without padding: the matmuls run over every token of every sequence at
//! once, and attention runs per (sequence, head) over that sequence's own tokens only, so no
//! work is spent on padding and a sequence's result does not depend on what else is in the
//! batch. Weights are converted once at load to the matmul format (`WeightFormat`).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use ferry_kernels::attn::{attend_head, AttnScratch, HeadLayout};
use ferry_kernels::gemm::{gemm_f32_ex, Epilogue, PackedF32};
use ferry_kernels::igemm::{
    self, gemm_i16, gemm_i16_prequantized, I16Scratch, PackedI16, QuantSink,
};
use ferry_kernels::ops::gelu_inplace;
use ferry_kernels::quant::quantize_row_act;
use ferry_kernels::vmath::add_layer_norm;
use ferry_kernels::{matmul, GgmlType, MatmulScratch, Matrix, ThreadPool};

use serde::Deserialize;

use crate::safetensors::{SafetensorsError, SafetensorsFile};
use crate::wordpiece::{WordPiece, WordPieceError};

/// Why a BERT model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum BertError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{file} is not valid: {source}")]
    Json {
        file: String,
        source: serde_json::Error,
    },
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error(transparent)]
    Safetensors(#[from] SafetensorsError),
    #[error(transparent)]
    Tokenizer(#[from] WordPieceError),
    #[error("sequence {index} has {len} tokens; the model takes at most {max}")]
    TooLong {
        index: usize,
        len: usize,
        max: usize,
    },
    #[error("sequence {index} is empty")]
    Empty { index: usize },
    #[error("token id {id} is out of the vocabulary of {vocab}")]
    BadToken { id: u32, vocab: usize },
}

/// `config.json` of a Hugging Face BERT model (the fields the encoder needs).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BertConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub vocab_size: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
    #[serde(default)]
    pub model_type: Option<String>,
}

fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, BertError> {
    let s = std::fs::read_to_string(path).map_err(|source| BertError::Io {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_str(&s).map_err(|source| BertError::Json {
        file: path.display().to_string(),
        source,
    })
}

impl BertConfig {
    /// Read and check `dir/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self, BertError> {
        let c: BertConfig = read_json(&dir.join("config.json"))?;
        c.check()?;
        Ok(c)
    }

    fn check(&self) -> Result<(), BertError> {
        let bad = |s: String| Err(BertError::Unsupported(s));
        if let Some(t) = &self.model_type {
            if !matches!(t.as_str(), "bert" | "roberta" | "xlm-roberta") {
                return bad(format!("model_type {t:?}"));
            }
        }
        if self.hidden_act != "gelu" {
            return bad(format!("hidden_act {:?} (need gelu)", self.hidden_act));
        }
        if let Some(p) = &self.position_embedding_type {
            if p != "absolute" {
                return bad(format!("position_embedding_type {p:?}"));
            }
        }
        let dims = [
            self.hidden_size,
            self.num_hidden_layers,
            self.num_attention_heads,
            self.intermediate_size,
            self.max_position_embeddings,
            self.vocab_size,
            self.type_vocab_size,
        ];
        if dims.iter().any(|&d| d == 0 || d > 1 << 20) {
            return bad(format!("dimensions out of range: {dims:?}"));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad("hidden_size is not a multiple of num_attention_heads".into());
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// How sentence vectors are made from token vectors (`1_Pooling/config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    Mean,
    Cls,
}

#[derive(Deserialize)]
struct PoolingJson {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

#[derive(Deserialize)]
struct ModuleJson {
    #[serde(rename = "type")]
    ty: String,
    #[serde(default)]
    path: String,
}

/// The sentence-transformers pipeline: pooling mode and whether vectors are L2-normalized.
fn read_pipeline(dir: &Path) -> Result<(Pooling, bool), BertError> {
    let modules_path = dir.join("modules.json");
    if !modules_path.exists() {
        // A bare transformers model: mean pooling, no normalization.
        return Ok((Pooling::Mean, false));
    }
    let modules: Vec<ModuleJson> = read_json(&modules_path)?;
    let mut pooling = Pooling::Mean;
    let mut normalize = false;
    for m in &modules {
        match m.ty.rsplit('.').next().unwrap_or("") {
            "Transformer" => {}
            "Pooling" => {
                let p: PoolingJson = read_json(&dir.join(&m.path).join("config.json"))?;
                if p.pooling_mode_max_tokens || p.pooling_mode_mean_sqrt_len_tokens {
                    return Err(BertError::Unsupported(
                        "pooling modes other than mean and cls".into(),
                    ));
                }
                pooling = match (p.pooling_mode_mean_tokens, p.pooling_mode_cls_token) {
                    (true, false) => Pooling::Mean,
                    (false, true) => Pooling::Cls,
                    _ => {
                        return Err(BertError::Unsupported(
                            "pooling must be exactly one of mean or cls".into(),
                        ))
                    }
                };
            }
            "Normalize" => normalize = true,
            other => {
                return Err(BertError::Unsupported(format!(
                    "sentence-transformers module {other:?}"
                )))
            }
        }
    }
    Ok((pooling, normalize))
}

/// The type linear-layer weights are converted to at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    F32,
    F16,
    BF16,
    Q8_0,
    /// 12-bit integer weights per row × 14-bit integer activations per token, int16 GEMM
    /// (`ferry_kernels::igemm`).
    I16,
}

impl WeightFormat {
    fn ggml(self) -> GgmlType {
        match self {
            Self::F32 => GgmlType::F32,
            Self::F16 => GgmlType::F16,
            Self::BF16 => GgmlType::BF16,
            Self::Q8_0 => GgmlType::Q8_0,
            // Never used for matmul: I16 layers are always packed.
            Self::I16 => GgmlType::F32,
        }
    }

    /// Parse `f32`, `f16`, `bf16`, `q8_0` or `i16`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "f32" => Self::F32,
            "f16" => Self::F16,
            "bf16" => Self::BF16,
            "q8_0" => Self::Q8_0,
            "i16" => Self::I16,
            _ => return None,
        })
    }
}

/// A linear layer `y = x·Wᵀ + b` with `W` stored in the matmul format (F32 weights are
/// packed for `gemm_f32`, I16 for `gemm_i16`, the others go through `matmul`).
struct Linear {
    packed: Option<PackedF32>,
    packed_i16: Option<PackedI16>,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
    bias: Vec<f32>,
}

impl Linear {
    fn new(w: &[f32], bias: Vec<f32>, rows: usize, cols: usize, fmt: WeightFormat) -> Self {
        if fmt == WeightFormat::I16 {
            if let Ok(p) = PackedI16::new(w, rows, cols) {
                return Self {
                    packed: None,
                    packed_i16: Some(p),
                    ty: GgmlType::F32,
                    rows,
                    cols,
                    data: Vec::new(),
                    bias,
                };
            }
        }
        if matches!(fmt, WeightFormat::F32 | WeightFormat::I16) {
            if let Ok(p) = PackedF32::new(w, rows, cols) {
                return Self {
                    packed: Some(p),
                    packed_i16: None,
                    ty: GgmlType::F32,
                    rows,
                    cols,
                    data: Vec::new(),
                    bias,
                };
            }
        }
        // Block formats need whole blocks per row; other shapes stay F32.
        let ty = match fmt.ggml().row_bytes(cols) {
            Some(_) => fmt.ggml(),
            None => GgmlType::F32,
        };
        let rb = ty.row_bytes(cols).unwrap_or(cols * 4);
        let mut data = vec![0u8; rb * rows];
        for (src, dst) in w.chunks_exact(cols).zip(data.chunks_exact_mut(rb)) {
            quantize_row_act(ty, src, dst);
        }
        Self {
            packed: None,
            packed_i16: None,
            ty,
            rows,
            cols,
            data,
            bias,
        }
    }

    /// Whether this layer's input can be quantized by whoever produces it
    /// (`I16Scratch::begin`, then `forward_pre`).
    fn prequantizes(&self) -> bool {
        self.packed_i16.is_some()
    }

    /// `forward` on an input already quantized into `pre` (`prequantizes` layers only); with
    /// `next`, each output row is then put into it (see `gemm_i16_prequantized`).
    fn forward_pre(
        &self,
        pool: &ThreadPool,
        pre: &I16Scratch,
        n: usize,
        out: &mut Vec<f32>,
        gelu: bool,
        next: Option<&QuantSink<'_>>,
    ) {
        let p = self.packed_i16.as_ref().expect("an int16 layer");
        out.resize(n * self.rows, 0.0);
        let epi = igemm::Epilogue {
            bias: Some(&self.bias),
            gelu,
        };
        gemm_i16_prequantized(pool, p, n, epi, out, pre, next);
    }

    fn matrix(&self) -> Matrix<'_> {
        Matrix {
            ty: self.ty,
            rows: self.rows,
            cols: self.cols,
            data: &self.data,
            packed: None,
        }
    }

    /// `out = x·Wᵀ + b` (then GELU if `gelu`) for `n` rows of `x`.
    fn forward(
        &self,
        pool: &ThreadPool,
        x: &[f32],
        n: usize,
        out: &mut Vec<f32>,
        s: &mut Scratch,
        gelu: bool,
    ) {
        out.resize(n * self.rows, 0.0);
        if let Some(p) = &self.packed_i16 {
            let epi = igemm::Epilogue {
                bias: Some(&self.bias),
                gelu,
            };
            gemm_i16(pool, p, x, n, epi, out, &mut s.i16);
            return;
        }
        if let Some(p) = &self.packed {
            // Bias and GELU are applied in the GEMM's registers.
            let epi = Epilogue {
                bias: Some(&self.bias),
                gelu,
            };
            gemm_f32_ex(pool, p, x, n, epi, out);
            return;
        }
        matmul(pool, &self.matrix(), x, n, out, &mut s.mm);
        for row in out.chunks_exact_mut(self.rows) {
            for (o, b) in row.iter_mut().zip(&self.bias) {
                *o += b;
            }
        }
        if gelu {
            gelu_parallel(pool, out);
        }
    }
}

struct LayerNorm {
    w: Vec<f32>,
    b: Vec<f32>,
}

struct Layer {
    qkv: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    up: Linear,
    down: Linear,
    out_norm: LayerNorm,
}

/// A loaded BERT encoder with its tokenizer and pooling.
pub struct Bert {
    pub cfg: BertConfig,
    pub pooling: Pooling,
    pub normalize: bool,
    pub format: WeightFormat,
    tokenizer: WordPiece,
    word_emb: Vec<f32>,
    pos_emb: Vec<f32>,
    type_emb: Vec<f32>,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    eps: f32,
    /// Quantize an int16 layer's input where it is produced (LayerNorm, attention) rather than
    /// in a pass of its own: the same bits either way (false only in tests, to show it).
    fuse_quant: bool,
}

impl std::fmt::Debug for Bert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bert")
            .field("cfg", &self.cfg)
            .field("pooling", &self.pooling)
            .field("normalize", &self.normalize)
            .field("format", &self.format)
            .finish()
    }
}

/// Reusable buffers for `Bert::forward`.
#[derive(Default)]
pub struct BertWorkspace {
    x: Vec<f32>,
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    tmp: Vec<f32>,
    ff: Vec<f32>,
    mm: Scratch,
    /// The next int16 product's input, quantized by the pass that produced it.
    pre: I16Scratch,
    /// The feed-forward down product's input, quantized by the up product's tasks while `pre`
    /// holds the up product's own input.
    pre_ff: I16Scratch,
}

/// The matrix products' own buffers.
#[derive(Default)]
struct Scratch {
    mm: MatmulScratch,
    i16: I16Scratch,
}

thread_local! {
    /// Per-thread attention buffers (the pool's threads live as long as the engine).
    static ATTN_SCRATCH: std::cell::RefCell<(AttnScratch, Vec<f32>)> =
        std::cell::RefCell::new((AttnScratch::default(), Vec::new()));
}

struct SyncPtr(*mut f32);
// SAFETY: pool tasks given a `SyncPtr` write disjoint parts of its buffer: (token, head)
// slices of the context (attention), rows (LayerNorm), chunks (GELU); a sequence's context
// rows are read (to quantize them) only after every task writing them has finished.
unsafe impl Sync for SyncPtr {}

/// The default weight format: I16 (int16 GEMM, the fastest; worst golden cosine against
/// sentence-transformers 0.99999 on all-MiniLM-L6-v2, where F32 gives 1.0000000).
/// `FERRY_BERT_WEIGHTS` (`f32`, `f16`, `bf16`, `q8_0`, `i16`) overrides it.
pub fn default_format() -> WeightFormat {
    std::env::var("FERRY_BERT_WEIGHTS")
        .ok()
        .and_then(|s| WeightFormat::parse(&s))
        .unwrap_or(WeightFormat::I16)
}

impl Bert {
    /// True when `dir` looks like a Hugging Face BERT-style directory.
    pub fn is_model_dir(dir: &Path) -> bool {
        dir.join("config.json").is_file() && dir.join("model.safetensors").is_file()
    }

    /// Load `dir` (config.json, model.safetensors, tokenizer.json, and the sentence-transformers
    /// files if present) with the default weight format.
    pub fn load(dir: &Path) -> Result<Self, BertError> {
        Self::load_with(dir, default_format())
    }

    pub fn load_with(dir: &Path, format: WeightFormat) -> Result<Self, BertError> {
        let cfg = BertConfig::from_dir(dir)?;
        let (pooling, normalize) = read_pipeline(dir)?;
        let tokenizer = WordPiece::from_file(&dir.join("tokenizer.json"))?;
        if tokenizer.vocab_size() > cfg.vocab_size {
            return Err(BertError::Unsupported(format!(
                "tokenizer has {} ids but the model {}",
                tokenizer.vocab_size(),
                cfg.vocab_size
            )));
        }
        let st = SafetensorsFile::open(&dir.join("model.safetensors"))?;
        // Weights are named `embeddings.*`/`encoder.*`, or with a `bert.` prefix.
        let prefix = if st
            .tensor("bert.embeddings.word_embeddings.weight")
            .is_some()
        {
            "bert."
        } else {
            ""
        };
        let get = |name: &str, shape: &[usize]| st.read_f32(&format!("{prefix}{name}"), shape);
        let (h, ff) = (cfg.hidden_size, cfg.intermediate_size);
        let norm = |name: &str| -> Result<LayerNorm, BertError> {
            Ok(LayerNorm {
                w: get(&format!("{name}.weight"), &[h])?,
                b: get(&format!("{name}.bias"), &[h])?,
            })
        };
        let linear = |name: &str, rows: usize, cols: usize| -> Result<Linear, BertError> {
            let w = get(&format!("{name}.weight"), &[rows, cols])?;
            let b = get(&format!("{name}.bias"), &[rows])?;
            Ok(Linear::new(&w, b, rows, cols, format))
        };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            // Q, K and V fused into one [3h, h] matrix: one pass over the activations.
            let mut w = Vec::with_capacity(3 * h * h);
            let mut b = Vec::with_capacity(3 * h);
            for part in ["query", "key", "value"] {
                w.extend(get(&format!("{p}.attention.self.{part}.weight"), &[h, h])?);
                b.extend(get(&format!("{p}.attention.self.{part}.bias"), &[h])?);
            }
            layers.push(Layer {
                qkv: Linear::new(&w, b, 3 * h, h, format),
                attn_out: linear(&format!("{p}.attention.output.dense"), h, h)?,
                attn_norm: norm(&format!("{p}.attention.output.LayerNorm"))?,
                up: linear(&format!("{p}.intermediate.dense"), ff, h)?,
                down: linear(&format!("{p}.output.dense"), h, ff)?,
                out_norm: norm(&format!("{p}.output.LayerNorm"))?,
            });
        }
        Ok(Self {
            word_emb: get("embeddings.word_embeddings.weight", &[cfg.vocab_size, h])?,
            pos_emb: get(
                "embeddings.position_embeddings.weight",
                &[cfg.max_position_embeddings, h],
            )?,
            type_emb: get(
                "embeddings.token_type_embeddings.weight",
                &[cfg.type_vocab_size, h],
            )?,
            emb_norm: norm("embeddings.LayerNorm")?,
            layers,
            eps: cfg.layer_norm_eps as f32,
            fuse_quant: true,
            cfg,
            pooling,
            normalize,
            format,
            tokenizer,
        })
    }

    pub fn tokenizer(&self) -> &WordPiece {
        &self.tokenizer
    }

    /// Output vector length.
    pub fn dim(&self) -> usize {
        self.cfg.hidden_size
    }

    /// Most tokens per sequence (specials included).
    pub fn max_tokens(&self) -> usize {
        self.cfg.max_position_embeddings
    }

    /// Check a batch before running it.
    pub fn check(&self, seqs: &[&[u32]]) -> Result<(), BertError> {
        for (index, s) in seqs.iter().enumerate() {
            if s.is_empty() {
                return Err(BertError::Empty { index });
            }
            if s.len() > self.max_tokens() {
                return Err(BertError::TooLong {
                    index,
                    len: s.len(),
                    max: self.max_tokens(),
                });
            }
            if let Some(&id) = s.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
                return Err(BertError::BadToken {
                    id,
                    vocab: self.cfg.vocab_size,
                });
            }
        }
        Ok(())
    }

    /// Sentence vectors of a batch of token-id sequences (each with its own specials).
    pub fn forward(
        &self,
        pool: &ThreadPool,
        seqs: &[&[u32]],
        ws: &mut BertWorkspace,
    ) -> Result<Vec<Vec<f32>>, BertError> {
        self.check(seqs)?;
        let h = self.cfg.hidden_size;
        let n: usize = seqs.iter().map(|s| s.len()).sum();
        if n == 0 {
            return Ok(Vec::new());
        }
        // Embeddings: word + position + token type 0, then layer norm.
        ws.x.resize(n * h, 0.0);
        let mut row = 0;
        for s in seqs {
            for (pos, &id) in s.iter().enumerate() {
                let w = &self.word_emb[id as usize * h..(id as usize + 1) * h];
                let p = &self.pos_emb[pos * h..(pos + 1) * h];
                let out = &mut ws.x[row * h..(row + 1) * h];
                for (((o, a), b), c) in out.iter_mut().zip(w).zip(p).zip(&self.type_emb[..h]) {
                    *o = (a + b) + c;
                }
                row += 1;
            }
        }
        let sink = self
            .layers
            .first()
            .is_some_and(|l| self.pre(&l.qkv))
            .then(|| ws.pre.begin(n, h));
        add_norm(
            pool,
            &mut ws.x,
            None,
            &self.emb_norm,
            self.eps,
            h,
            sink.as_ref(),
        );
        for (i, layer) in self.layers.iter().enumerate() {
            self.layer(pool, layer, self.layers.get(i + 1), seqs, n, ws);
        }
        Ok(self.pool_outputs(seqs, &ws.x))
    }

    /// Whether `l`'s input is quantized where it is produced.
    fn pre(&self, l: &Linear) -> bool {
        self.fuse_quant && l.prequantizes()
    }

    fn layer(
        &self,
        pool: &ThreadPool,
        l: &Layer,
        next: Option<&Layer>,
        seqs: &[&[u32]],
        n: usize,
        ws: &mut BertWorkspace,
    ) {
        let h = self.cfg.hidden_size;
        // The QKV input was quantized by the LayerNorm before (`forward`, or the previous
        // layer's last one).
        if self.pre(&l.qkv) {
            l.qkv
                .forward_pre(pool, &ws.pre, n, &mut ws.qkv, false, None);
        } else {
            l.qkv
                .forward(pool, &ws.x, n, &mut ws.qkv, &mut ws.mm, false);
        }
        ws.ctx.resize(n * h, 0.0);
        let sink = self.pre(&l.attn_out).then(|| ws.pre.begin(n, h));
        self.attention(pool, seqs, &ws.qkv, &mut ws.ctx, sink.as_ref());
        // Attention output + residual, layer norm.
        if self.pre(&l.attn_out) {
            l.attn_out
                .forward_pre(pool, &ws.pre, n, &mut ws.tmp, false, None);
        } else {
            l.attn_out
                .forward(pool, &ws.ctx, n, &mut ws.tmp, &mut ws.mm, false);
        }
        let sink = self.pre(&l.up).then(|| ws.pre.begin(n, h));
        add_norm(
            pool,
            &mut ws.x,
            Some(&ws.tmp),
            &l.attn_norm,
            self.eps,
            h,
            sink.as_ref(),
        );
        // Feed-forward + residual, layer norm. Between two int16 products, the up product's
        // tasks quantize its rows for the down product as they finish them.
        let fused = self.pre(&l.up) && self.pre(&l.down);
        {
            let sink = fused.then(|| ws.pre_ff.begin(n, l.up.rows));
            if self.pre(&l.up) {
                l.up.forward_pre(pool, &ws.pre, n, &mut ws.ff, true, sink.as_ref());
            } else {
                l.up.forward(pool, &ws.x, n, &mut ws.ff, &mut ws.mm, true);
            }
        }
        if fused {
            l.down
                .forward_pre(pool, &ws.pre_ff, n, &mut ws.tmp, false, None);
        } else {
            l.down
                .forward(pool, &ws.ff, n, &mut ws.tmp, &mut ws.mm, false);
        }
        let sink = next
            .is_some_and(|nl| self.pre(&nl.qkv))
            .then(|| ws.pre.begin(n, h));
        add_norm(
            pool,
            &mut ws.x,
            Some(&ws.tmp),
            &l.out_norm,
            self.eps,
            h,
            sink.as_ref(),
        );
    }

    /// Scaled dot-product attention per sequence and head over the sequence's own tokens.
    /// With `sink`, each sequence's context rows are quantized by the task that finishes its
    /// last head.
    fn attention(
        &self,
        pool: &ThreadPool,
        seqs: &[&[u32]],
        qkv: &[f32],
        ctx: &mut [f32],
        sink: Option<&QuantSink<'_>>,
    ) {
        let h = self.cfg.hidden_size;
        let nh = self.cfg.num_attention_heads;
        let hd = self.cfg.head_dim();
        let scale = 1.0 / (hd as f32).sqrt();
        let mut starts = Vec::with_capacity(seqs.len());
        let mut t0 = 0;
        for s in seqs {
            starts.push((t0, s.len()));
            t0 += s.len();
        }
        // Tasks of `ph` heads of one sequence: all its heads when the batch has sequences
        // enough to keep every thread busy (one claim and one scratch borrow per sequence, its
        // rows read once into one core's caches: 3% faster end to end, `embed_bench`, paired),
        // one head otherwise (a batch of one long sequence still spreads over the threads).
        let ph = if seqs.len() >= 4 * pool.n_threads() {
            nh
        } else {
            1
        };
        let tps = nh / ph;
        // Tasks still to finish, per sequence.
        let left: Vec<AtomicUsize> = seqs.iter().map(|_| AtomicUsize::new(tps)).collect();
        let left = &left;
        let out = SyncPtr(ctx.as_mut_ptr());
        let out = &out;
        let starts = &starts;
        // Owned sequences: each thread attends over (about) the tokens whose products it runs
        // (`run_owned`), so the QKV rows it reads and the context rows it writes stay in its
        // core's caches.
        pool.run_owned(seqs.len() * tps, &|task, _| {
            let (si, first) = (task / tps, (task % tps) * ph);
            let (t0, len) = starts[si];
            ATTN_SCRATCH.with(|cell| {
                let (scratch, buf) = &mut *cell.borrow_mut();
                buf.resize(len * hd, 0.0);
                for head in first..first + ph {
                    let col = head * hd;
                    let layout = HeadLayout {
                        len,
                        stride: 3 * h,
                        head_dim: hd,
                        q: col,
                        k: h + col,
                        v: 2 * h + col,
                        scale,
                    };
                    attend_head(&qkv[t0 * 3 * h..(t0 + len) * 3 * h], &layout, buf, scratch);
                    for (i, row) in buf.chunks_exact(hd).enumerate() {
                        // SAFETY: token t0 + i, columns col..col + hd belong to this (sequence,
                        // head) task alone, and lie inside `ctx` (n × h).
                        let dst = unsafe {
                            std::slice::from_raw_parts_mut(out.0.add((t0 + i) * h + col), hd)
                        };
                        dst.copy_from_slice(row);
                    }
                }
            });
            if let Some(sink) = sink {
                // The last task of the sequence to finish: every head's columns are written
                // (each task's writes happen before its decrement; this one's acquires them).
                if left[si].fetch_sub(1, Ordering::AcqRel) == 1 {
                    for t in t0..t0 + len {
                        // SAFETY: token t's row is complete and no task writes it any more.
                        let row = unsafe { std::slice::from_raw_parts(out.0.add(t * h), h) };
                        sink.put(t, row);
                    }
                }
            }
        });
    }

    fn pool_outputs(&self, seqs: &[&[u32]], x: &[f32]) -> Vec<Vec<f32>> {
        let h = self.cfg.hidden_size;
        let mut out = Vec::with_capacity(seqs.len());
        let mut t0 = 0;
        for s in seqs {
            let rows = &x[t0 * h..(t0 + s.len()) * h];
            let mut v = match self.pooling {
                Pooling::Cls => rows[..h].to_vec(),
                Pooling::Mean => {
                    let mut acc = vec![0f64; h];
                    for r in rows.chunks_exact(h) {
                        for (a, &b) in acc.iter_mut().zip(r) {
                            *a += b as f64;
                        }
                    }
                    acc.iter().map(|a| (a / s.len() as f64) as f32).collect()
                }
            };
            if self.normalize {
                let norm = v.iter().map(|&a| a as f64 * a as f64).sum::<f64>().sqrt();
                let inv = 1.0 / norm.max(1e-12);
                v.iter_mut().for_each(|a| *a = (*a as f64 * inv) as f32);
            }
            out.push(v);
            t0 += s.len();
        }
        out
    }
}

/// `x = layer_norm(x + y)` row by row (`y` absent: `layer_norm(x)`), rows spread over the pool.
fn add_norm(
    pool: &ThreadPool,
    x: &mut [f32],
    y: Option<&[f32]>,
    n: &LayerNorm,
    eps: f32,
    h: usize,
    sink: Option<&QuantSink<'_>>,
) {
    const ROWS: usize = 32;
    let rows = x.len() / h;
    let p = SyncPtr(x.as_mut_ptr());
    let p = &p;
    // Owned rows: each thread normalizes the tokens whose products it runs (`run_owned`).
    pool.run_owned(rows.div_ceil(ROWS), &|c, _| {
        for r in c * ROWS..((c + 1) * ROWS).min(rows) {
            // SAFETY: row r of `x` (n × h) is touched by this task only.
            let xr = unsafe { std::slice::from_raw_parts_mut(p.0.add(r * h), h) };
            add_layer_norm(xr, y.map(|y| &y[r * h..(r + 1) * h]), &n.w, &n.b, eps);
            // Quantized for the next product while the row is in cache.
            if let Some(s) = sink {
                s.put(r, xr);
            }
        }
    });
}

fn gelu_parallel(pool: &ThreadPool, x: &mut [f32]) {
    const CHUNK: usize = 16 * 1024;
    let n_chunks = x.len().div_ceil(CHUNK);
    let len = x.len();
    let p = SyncPtr(x.as_mut_ptr());
    let p = &p;
    pool.run(n_chunks, &|c| {
        let (a, b) = (c * CHUNK, ((c + 1) * CHUNK).min(len));
        // SAFETY: chunks are disjoint and inside `x`.
        let s = unsafe { std::slice::from_raw_parts_mut(p.0.add(a), b - a) };
        gelu_inplace(s);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::safetensors::{write, Dtype};

    /// A tiny random BERT written to a temporary directory.
    fn tiny_model(dir: &Path) {
        let (h, ff, v, p, l) = (64usize, 128usize, 16usize, 32usize, 2usize);
        let mut seed = 1u64;
        let mut rnd = |n: usize, s: f32| -> Vec<u8> {
            (0..n)
                .flat_map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (((seed >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * s).to_le_bytes()
                })
                .collect()
        };
        let mut t: Vec<(String, Vec<usize>, Vec<u8>)> = vec![
            (
                "embeddings.word_embeddings.weight".into(),
                vec![v, h],
                rnd(v * h, 1.0),
            ),
            (
                "embeddings.position_embeddings.weight".into(),
                vec![p, h],
                rnd(p * h, 0.2),
            ),
            (
                "embeddings.token_type_embeddings.weight".into(),
                vec![2, h],
                rnd(2 * h, 0.2),
            ),
            ("embeddings.LayerNorm.weight".into(), vec![h], rnd(h, 0.1)),
            ("embeddings.LayerNorm.bias".into(), vec![h], rnd(h, 0.1)),
        ];
        for i in 0..l {
            let pre = format!("encoder.layer.{i}");
            for (name, r, c) in [
                ("attention.self.query", h, h),
                ("attention.self.key", h, h),
                ("attention.self.value", h, h),
                ("attention.output.dense", h, h),
                ("intermediate.dense", ff, h),
                ("output.dense", h, ff),
            ] {
                t.push((format!("{pre}.{name}.weight"), vec![r, c], rnd(r * c, 0.3)));
                t.push((format!("{pre}.{name}.bias"), vec![r], rnd(r, 0.1)));
            }
            for name in ["attention.output.LayerNorm", "output.LayerNorm"] {
                t.push((format!("{pre}.{name}.weight"), vec![h], rnd(h, 0.1)));
                t.push((format!("{pre}.{name}.bias"), vec![h], rnd(h, 0.1)));
            }
        }
        let refs: Vec<(&str, Dtype, &[usize], &[u8])> = t
            .iter()
            .map(|(n, s, b)| (n.as_str(), Dtype::F32, s.as_slice(), b.as_slice()))
            .collect();
        std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
        std::fs::write(dir.join("model.safetensors"), write(&refs)).unwrap();
        std::fs::write(
            dir.join("config.json"),
            serde_json::json!({"hidden_size": h, "num_hidden_layers": l, "num_attention_heads": 4,
                "intermediate_size": ff, "max_position_embeddings": p, "vocab_size": v,
                "model_type": "bert"})
            .to_string(),
        )
        .unwrap();
        let vocab: serde_json::Map<String, serde_json::Value> =
            ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b", "c"]
                .iter()
                .enumerate()
                .map(|(i, s)| (s.to_string(), serde_json::json!(i)))
                .collect();
        std::fs::write(
            dir.join("tokenizer.json"),
            serde_json::json!({"normalizer": {"type": "BertNormalizer"},
                "pre_tokenizer": {"type": "BertPreTokenizer"},
                "model": {"type": "WordPiece", "unk_token": "[UNK]", "vocab": vocab}})
            .to_string(),
        )
        .unwrap();
        std::fs::write(
            dir.join("modules.json"),
            r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
                {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
                {"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}]"#,
        )
        .unwrap();
        std::fs::write(
            dir.join("1_Pooling/config.json"),
            r#"{"word_embedding_dimension": 64, "pooling_mode_mean_tokens": true}"#,
        )
        .unwrap();
    }

    #[test]
    fn batch_invariant_normalized_and_checked() {
        let dir = std::env::temp_dir().join(format!("ferry-bert-test-{}", std::process::id()));
        tiny_model(&dir);
        let m = Bert::load_with(&dir, WeightFormat::F32).unwrap();
        assert_eq!((m.pooling, m.normalize, m.dim()), (Pooling::Mean, true, 64));
        let pool = ThreadPool::new(2);
        let mut ws = BertWorkspace::default();
        let a: &[u32] = &[2, 4, 5, 3];
        let b: &[u32] = &[2, 6, 4, 4, 5, 6, 3];
        let both = m.forward(&pool, &[a, b], &mut ws).unwrap();
        let solo_b = m.forward(&pool, &[b], &mut ws).unwrap();
        assert_eq!(both[1], solo_b[0], "batch invariance");
        let norm: f32 = both[0].iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-5);
        assert_ne!(both[0], both[1]);
        // Lower-precision formats stay close.
        for f in [
            WeightFormat::F16,
            WeightFormat::BF16,
            WeightFormat::Q8_0,
            WeightFormat::I16,
        ] {
            let q = Bert::load_with(&dir, f).unwrap();
            let v = q.forward(&pool, &[b], &mut ws).unwrap();
            let cos: f32 = v[0].iter().zip(&solo_b[0]).map(|(x, y)| x * y).sum();
            assert!(cos > 0.99, "{f:?}: {cos}");
        }
        // Quantizing the int16 products' inputs where they are produced (LayerNorm,
        // attention, the feed-forward up product) gives the same bits as a pass of their own,
        // whatever the batch.
        let mut q = Bert::load_with(&dir, WeightFormat::I16).unwrap();
        let c: &[u32] = &[2, 5, 5, 6, 4, 4, 4, 5, 6, 6, 5, 4, 4, 5, 6, 4, 3];
        let batch: Vec<&[u32]> = vec![a, b, c, b, &[2, 3], c, a, a, c];
        for threads in [1, 2, 3] {
            let pool = ThreadPool::new(threads);
            q.fuse_quant = true;
            let fused = q.forward(&pool, &batch, &mut ws).unwrap();
            q.fuse_quant = false;
            let apart = q.forward(&pool, &batch, &mut ws).unwrap();
            assert_eq!(fused, apart, "threads={threads}");
            q.fuse_quant = true;
            assert_eq!(q.forward(&pool, &[c], &mut ws).unwrap()[0], fused[2]);
        }
        let long = vec![4u32; 33];
        assert!(matches!(
            m.forward(&pool, &[&long], &mut ws),
            Err(BertError::TooLong { .. })
        ));
        assert!(matches!(
            m.forward(&pool, &[&[2, 99]], &mut ws),
            Err(BertError::BadToken { .. })
        ));
        assert!(matches!(
            m.forward(&pool, &[&[]], &mut ws),
            Err(BertError::Empty { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
