//! The llama-family decoder (Llama, SmolLM, Mistral-style GQA models) over GGUF weights.
//!
//! `LlamaConfig::from_gguf` -> `Llama::load` -> `Llama::forward`. One forward call runs a
//! *flattened batch*: any mix of prompt chunks and single decode tokens from many sequences.
//! Every token's arithmetic is the same whatever else is in the batch (matmuls reduce per
//! (row, token) in a fixed order; attention walks a token's own sequence in position order),
//! so greedy decoding is batch-invariant.

use std::sync::Arc;

use std::cell::RefCell;

use ferry_kernels::ggml_attn;
use ferry_kernels::ops::{rms_norm, rope_cache, rope_inplace, rope_theta_scale, swiglu_inplace};
use ferry_kernels::{
    matmul, matmul_multi, GgmlType, HugeBytes, MatmulScratch, Matrix, Order, PackedMatrix,
    ThreadPool,
};

use crate::gguf::{GgufFile, TensorInfo};
use crate::kv::KvCache;

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("missing metadata key {0}")]
    MissingKey(String),
    #[error("bad metadata value for {key}: {why}")]
    BadValue { key: String, why: String },
    #[error("missing tensor {0}")]
    MissingTensor(String),
    #[error("tensor {name} has shape {got:?}, expected {want:?}")]
    BadShape {
        name: String,
        got: Vec<u64>,
        want: Vec<u64>,
    },
    #[error("tensor {name}: {why}")]
    BadTensor { name: String, why: String },
    #[error("unsupported architecture {0:?}")]
    Architecture(String),
    /// A setting of the process (an environment variable) that cannot be honoured.
    #[error("{0}")]
    Setting(String),
}

/// Hyper-parameters read from GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub arch: String,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
}

const MAX_HEAD_DIM: usize = 256;

/// Most query tokens of one sequence in one attention task (prefill): with the GQA group's
/// query heads they share each key and value row's conversion from f16.
const ATTN_TOKENS: usize = 8;

thread_local! {
    /// Attention buffers of one task, per worker thread (they grow to the largest task and
    /// longest sequence seen, then are reused).
    static ATTN: RefCell<ggml_attn::AttnGroup> = RefCell::new(ggml_attn::AttnGroup::default());
}

/// One attention task: tokens `i0..i0 + nt` of the batch (one sequence) and query heads
/// `h0..h0 + nh`, which share KV head `kvh`.
#[derive(Debug, Clone, Copy)]
struct AttnTask {
    i0: u32,
    nt: u32,
    h0: u32,
    nh: u32,
    kvh: u32,
    /// Work estimate, for ordering: queries times keys of the last token.
    cost: u64,
}

impl LlamaConfig {
    pub fn from_gguf(g: &GgufFile) -> Result<Self, ModelError> {
        let arch = g
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .ok_or_else(|| ModelError::MissingKey("general.architecture".into()))?
            .to_string();
        if !matches!(arch.as_str(), "llama" | "mistral") {
            return Err(ModelError::Architecture(arch));
        }
        let u = |k: &str| -> Result<usize, ModelError> {
            let key = format!("{arch}.{k}");
            let v = g
                .get(&key)
                .ok_or_else(|| ModelError::MissingKey(key.clone()))?;
            let n = v.as_u64().ok_or_else(|| ModelError::BadValue {
                key: key.clone(),
                why: "not an integer".into(),
            })?;
            if n == 0 || n > 1 << 24 {
                return Err(ModelError::BadValue {
                    key,
                    why: format!("{n} is out of range"),
                });
            }
            Ok(n as usize)
        };
        let f = |k: &str, default: f32| -> Result<f32, ModelError> {
            let key = format!("{arch}.{k}");
            match g.get(&key) {
                None => Ok(default),
                Some(v) => v
                    .as_f64()
                    .map(|x| x as f32)
                    .filter(|x| x.is_finite() && *x > 0.0)
                    .ok_or(ModelError::BadValue {
                        key,
                        why: "not a positive number".into(),
                    }),
            }
        };
        let n_embd = u("embedding_length")?;
        let n_head = u("attention.head_count")?;
        let n_head_kv = match g.get(&format!("{arch}.attention.head_count_kv")) {
            None => n_head,
            Some(_) => u("attention.head_count_kv")?,
        };
        if n_embd % n_head != 0 || n_head % n_head_kv != 0 {
            return Err(ModelError::BadValue {
                key: format!("{arch}.attention.head_count"),
                why: format!("{n_embd} dims, {n_head} heads, {n_head_kv} kv heads do not divide"),
            });
        }
        let head_dim = n_embd / n_head;
        if head_dim % 2 != 0 || head_dim > MAX_HEAD_DIM {
            return Err(ModelError::BadValue {
                key: format!("{arch}.embedding_length"),
                why: format!("head dim {head_dim}"),
            });
        }
        let vocab_size = match g.get(&format!("{arch}.vocab_size")) {
            Some(_) => u("vocab_size")?,
            None => g
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.as_array())
                .map(|a| a.len())
                .ok_or_else(|| ModelError::MissingKey(format!("{arch}.vocab_size")))?,
        };
        Ok(Self {
            n_layer: u("block_count")?,
            n_ff: u("feed_forward_length")?,
            context_length: u("context_length")?,
            rope_theta: f("rope.freq_base", 10000.0)?,
            rms_eps: f("attention.layer_norm_rms_epsilon", 1e-5)?,
            arch,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            vocab_size,
        })
    }

    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}

#[derive(Clone)]
struct W {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    offset: usize,
    len: usize,
    /// The weights repacked for the small-batch kernels, where the kernels have such a layout
    /// for the type; products then read only this copy (see `Llama::load`).
    packed: Option<Arc<PackedMatrix>>,
    /// Otherwise the file's bytes copied into huge-page memory (`HugeBytes`), which products
    /// read instead of the mapped file.
    copy: Option<Arc<HugeBytes>>,
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: W,
    wk: W,
    wv: W,
    wo: W,
    ffn_norm: Vec<f32>,
    w_gate: W,
    w_up: W,
    w_down: W,
}

/// A loaded llama-family model. Its matrices are read from copies made at load (packed, or
/// copied into huge pages); the mapped file is still read for a packed token embedding's rows.
pub struct Llama {
    pub cfg: LlamaConfig,
    file: Arc<GgufFile>,
    tok_embd: W,
    output: W,
    output_norm: Vec<f32>,
    layers: Vec<Layer>,
    /// `rope_theta_scale` of the head size and frequency base.
    theta_scale: f32,
    /// The order the packed matrices sum in.
    order: Order,
}

/// One token of a flattened batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchToken {
    pub token: u32,
    /// Position in its sequence.
    pub pos: usize,
    /// Index of its sequence's block table in the `tables` argument of `forward`.
    pub seq: usize,
    /// Whether logits are wanted for this token.
    pub logits: bool,
}

/// Buffers for `forward`, sized once for a maximum number of tokens per step.
pub struct Workspace {
    max_tokens: usize,
    x: Vec<f32>,
    xb: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    hidden: Vec<f32>,
    /// Each token's RoPE cos/sin table (`head_dim` each), built once per step: the same for
    /// every layer.
    rope: Vec<f32>,
    /// Logits of the tokens that asked for them, in batch order, `vocab_size` each.
    pub logits: Vec<f32>,
    mm: MatmulScratch,
    /// This step's attention tasks (at most one per (token, head)).
    attn_tasks: Vec<AttnTask>,
}

impl Workspace {
    pub fn new(cfg: &LlamaConfig, max_tokens: usize) -> Self {
        let t = max_tokens;
        Self {
            max_tokens,
            x: vec![0.0; t * cfg.n_embd],
            xb: vec![0.0; t * cfg.n_embd],
            q: vec![0.0; t * cfg.n_embd],
            k: vec![0.0; t * cfg.kv_dim()],
            v: vec![0.0; t * cfg.kv_dim()],
            att: vec![0.0; t * cfg.n_embd],
            gate: vec![0.0; t * cfg.n_ff],
            up: vec![0.0; t * cfg.n_ff],
            hidden: Vec::with_capacity(t * cfg.n_embd),
            rope: vec![0.0; t * cfg.head_dim],
            logits: Vec::new(),
            mm: MatmulScratch::default(),
            attn_tasks: Vec::with_capacity(t * cfg.n_head),
        }
    }
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }
}

struct SyncPtr(*mut f32);
// SAFETY: tasks write disjoint regions.
unsafe impl Sync for SyncPtr {}

impl Llama {
    /// Resolve and check every tensor the architecture needs; quantized products summed in
    /// the order `FERRY_MATMUL_ORDER` names (llama.cpp's, `Order::LlamaCpp`, unless it says
    /// `block`).
    pub fn load(file: Arc<GgufFile>) -> Result<Self, ModelError> {
        let order = Order::from_env().map_err(ModelError::Setting)?;
        Self::load_with(file, order)
    }

    /// `load`, with the order in which the packed 32-element block types sum their products
    /// (`Order::LlamaCpp` gives llama.cpp's logits bit for bit; the fidelity tests check both).
    pub fn load_with(file: Arc<GgufFile>, order: Order) -> Result<Self, ModelError> {
        let cfg = LlamaConfig::from_gguf(&file)?;
        let get = |name: &str| {
            file.tensor(name)
                .ok_or_else(|| ModelError::MissingTensor(name.to_string()))
        };
        // Unpacked matrices (no x16 kernels on this CPU) always sum in llama.cpp's order.
        let any_packed = std::cell::Cell::new(false);
        let mat = |name: &str, rows: usize, cols: usize| -> Result<W, ModelError> {
            let t = get(name)?;
            check_shape(t, &[cols as u64, rows as u64])?;
            let m = Matrix::new(t.ty, rows, cols, file.tensor_data(t)).map_err(|e| {
                ModelError::BadTensor {
                    name: name.into(),
                    why: e.to_string(),
                }
            })?;
            let packed = PackedMatrix::new(&m, order).map(Arc::new);
            any_packed.set(any_packed.get() || packed.is_some());
            // Matrices the kernels read in place are copied into huge pages too: decode streams
            // every weight once per token, and whether the file's mapping has 2 MiB pages
            // depends on its filesystem (on the development machine it had, `FilePmdMapped`,
            // and the copy gained little: F16 decode 1.01x, F32 1.05x, paired medians of 4).
            let copy = packed
                .is_none()
                .then(|| Arc::new(HugeBytes::copy_of(file.tensor_data(t))));
            // Products read only the copy from now on (the token embedding's rows looked up
            // per token aside): the file's pages leave the resident set as each matrix is
            // copied, so that the weights are resident once, also while loading.
            file.release(t.offset, t.n_bytes);
            Ok(W {
                ty: t.ty,
                rows,
                cols,
                offset: t.offset,
                len: t.n_bytes,
                packed,
                copy,
            })
        };
        let vec = |name: &str, n: usize| -> Result<Vec<f32>, ModelError> {
            let t = get(name)?;
            check_shape(t, &[n as u64])?;
            let mut out = vec![0.0; n];
            if !matches!(t.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
                return Err(ModelError::BadTensor {
                    name: name.into(),
                    why: format!("norm weights of type {}", t.ty.name()),
                });
            }
            ferry_kernels::quant::dequantize_row(t.ty, file.tensor_data(t), &mut out);
            Ok(out)
        };
        let (d, kv, ff) = (cfg.n_embd, cfg.kv_dim(), cfg.n_ff);
        let tok_embd = mat("token_embd.weight", cfg.vocab_size, d)?;
        let output = if file.tensor("output.weight").is_some() {
            mat("output.weight", cfg.vocab_size, d)?
        } else {
            tok_embd.clone()
        };
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            layers.push(Layer {
                attn_norm: vec(&n("attn_norm"), d)?,
                wq: mat(&n("attn_q"), d, d)?,
                wk: mat(&n("attn_k"), kv, d)?,
                wv: mat(&n("attn_v"), kv, d)?,
                wo: mat(&n("attn_output"), d, d)?,
                ffn_norm: vec(&n("ffn_norm"), d)?,
                w_gate: mat(&n("ffn_gate"), ff, d)?,
                w_up: mat(&n("ffn_up"), ff, d)?,
                w_down: mat(&n("ffn_down"), d, ff)?,
            });
        }
        let output_norm = vec("output_norm.weight", d)?;
        let theta_scale = rope_theta_scale(cfg.head_dim, cfg.rope_theta);
        Ok(Self {
            cfg,
            file,
            tok_embd,
            output,
            output_norm,
            layers,
            theta_scale,
            order: if any_packed.get() {
                order
            } else {
                Order::LlamaCpp
            },
        })
    }

    /// The order in which this model's 32-element block matrices sum their products (llama.cpp's
    /// where the CPU has no x16 kernels to pack them for, whatever was asked).
    pub fn matmul_order(&self) -> Order {
        self.order
    }

    fn m<'a>(&'a self, w: &'a W) -> Matrix<'a> {
        let bytes = match &w.copy {
            Some(c) => c.as_bytes(),
            None => &self.file.bytes()[w.offset..w.offset + w.len],
        };
        Matrix {
            ty: w.ty,
            rows: w.rows,
            cols: w.cols,
            data: bytes,
            packed: w.packed.as_deref(),
        }
    }

    /// Bytes of the mapped GGUF file the weights are read from.
    pub fn file_size(&self) -> usize {
        self.file.file_size()
    }

    /// Bytes of weights read per decoded token (every matrix once, the output matrix included).
    pub fn weight_bytes(&self) -> usize {
        let l: usize = self
            .layers
            .iter()
            .map(|l| {
                l.wq.len + l.wk.len + l.wv.len + l.wo.len + l.w_gate.len + l.w_up.len + l.w_down.len
            })
            .sum();
        l + self.output.len
    }

    /// A KV cache sized for `n_tokens` token slots.
    pub fn new_kv_cache(&self, n_tokens: usize, block_size: usize) -> KvCache {
        KvCache::new(self.cfg.n_layer, self.cfg.kv_dim(), block_size, n_tokens)
    }

    /// Run one step over `batch`. Writes K/V for every token into the cache at its position
    /// (the block tables must cover those positions), and leaves the logits of the tokens with
    /// `logits: true` in `ws.logits`, in batch order.
    ///
    /// Tokens of one sequence must appear in increasing position order; a token attends to
    /// positions `0..=pos` of its sequence, including those written earlier in this batch.
    pub fn forward(
        &self,
        pool: &ThreadPool,
        ws: &mut Workspace,
        kv: &mut KvCache,
        batch: &[BatchToken],
        tables: &[&[u32]],
    ) {
        let cfg = &self.cfg;
        let n = batch.len();
        assert!(
            n <= ws.max_tokens,
            "batch of {n} exceeds workspace of {}",
            ws.max_tokens
        );
        let (d, kvd, ff, hd) = (cfg.n_embd, cfg.kv_dim(), cfg.n_ff, cfg.head_dim);
        // Embeddings.
        let emb = self.m(&self.tok_embd);
        for (i, t) in batch.iter().enumerate() {
            assert!(
                (t.token as usize) < cfg.vocab_size,
                "token id {} out of range",
                t.token
            );
            ferry_kernels::quant::dequantize_row(
                emb.ty,
                emb.row(t.token as usize),
                &mut ws.x[i * d..(i + 1) * d],
            );
        }
        for (t, rope) in batch.iter().zip(ws.rope.chunks_exact_mut(hd)) {
            rope_cache(t.pos, self.theta_scale, rope);
        }
        let scale = 1.0 / (hd as f32).sqrt();
        for (li, layer) in self.layers.iter().enumerate() {
            // Per-token work runs on the pool for a prompt's many tokens (`for_each_row`).
            let x = &ws.x;
            pool.for_each_row(&mut ws.xb[..n * d], d, &|i, xb| {
                rms_norm(&x[i * d..(i + 1) * d], &layer.attn_norm, cfg.rms_eps, xb)
            });
            matmul_multi(
                pool,
                &[self.m(&layer.wq), self.m(&layer.wk), self.m(&layer.wv)],
                &ws.xb[..n * d],
                n,
                &mut [
                    &mut ws.q[..n * d],
                    &mut ws.k[..n * kvd],
                    &mut ws.v[..n * kvd],
                ],
                &mut ws.mm,
            );
            let rope = &ws.rope;
            let rope_heads = |i: usize, row: &mut [f32]| {
                for head in row.chunks_exact_mut(hd) {
                    rope_inplace(head, &rope[i * hd..(i + 1) * hd]);
                }
            };
            pool.for_each_row(&mut ws.q[..n * d], d, &rope_heads);
            pool.for_each_row(&mut ws.k[..n * kvd], kvd, &rope_heads);
            for (i, t) in batch.iter().enumerate() {
                let off = kv.offset(li, tables[t.seq], t.pos);
                // llama.cpp's cache holds f16.
                ggml_attn::store_f16(&ws.k[i * kvd..(i + 1) * kvd], &mut kv.k[off..off + kvd]);
                ggml_attn::store_f16(&ws.v[i * kvd..(i + 1) * kvd], &mut kv.v[off..off + kvd]);
            }
            // Attention in llama.cpp's arithmetic (see `ferry_kernels::ggml_attn`: f16 query,
            // keys, values and weights, a two-pass softmax over the sequence in position
            // order), one task per (block of a sequence's tokens, KV head): the query heads
            // sharing the KV head read and convert each cached row once for all of them. The
            // tasks are built once per step (the same for every layer).
            if li == 0 {
                self.attn_tasks(pool, batch, &mut ws.attn_tasks);
            }
            {
                let kvr = &*kv;
                let q = &ws.q;
                let out = SyncPtr(ws.att.as_mut_ptr());
                let out = &out;
                let tasks = &ws.attn_tasks;
                pool.run(tasks.len(), &|ti| {
                    let tk = tasks[ti];
                    let (i0, nt) = (tk.i0 as usize, tk.nt as usize);
                    let (h0, nh) = (tk.h0 as usize, tk.nh as usize);
                    let table = tables[batch[i0].seq];
                    let kvo = tk.kvh as usize * hd;
                    ATTN.with(|g| {
                        let mut g = g.borrow_mut();
                        g.clear(hd);
                        for (i, t) in batch.iter().enumerate().skip(i0).take(nt) {
                            for h in h0..h0 + nh {
                                g.push(&q[i * d + h * hd..i * d + (h + 1) * hd], t.pos);
                            }
                        }
                        let bs = kvr.block_size();
                        g.run(
                            &kvr.k,
                            &kvr.v,
                            bs,
                            kvd,
                            |b| kvr.offset(li, table, b * bs) + kvo,
                            scale,
                        );
                        for i in i0..i0 + nt {
                            for h in h0..h0 + nh {
                                // SAFETY: the tasks partition the (token, head) pairs; this
                                // one owns elements i*d + h*hd .. + hd of `att`.
                                let o = unsafe {
                                    std::slice::from_raw_parts_mut(out.0.add(i * d + h * hd), hd)
                                };
                                o.copy_from_slice(g.out((i - i0) * nh + h - h0));
                            }
                        }
                    });
                });
            }
            matmul(
                pool,
                &self.m(&layer.wo),
                &ws.att[..n * d],
                n,
                &mut ws.xb[..n * d],
                &mut ws.mm,
            );
            // The residual, then the FFN's norm into `xb`, token by token.
            let xb = SyncPtr(ws.xb.as_mut_ptr());
            let xb = &xb;
            pool.for_each_row(&mut ws.x[..n * d], d, &|i, x| {
                // SAFETY: row `i` of `xb` (in bounds: `xb` holds `n * d`) is this task's alone.
                let xb = unsafe { std::slice::from_raw_parts_mut(xb.0.add(i * d), d) };
                for (x, o) in x.iter_mut().zip(xb.iter()) {
                    *x += o;
                }
                rms_norm(x, &layer.ffn_norm, cfg.rms_eps, xb);
            });
            matmul_multi(
                pool,
                &[self.m(&layer.w_gate), self.m(&layer.w_up)],
                &ws.xb[..n * d],
                n,
                &mut [&mut ws.gate[..n * ff], &mut ws.up[..n * ff]],
                &mut ws.mm,
            );
            let up = &ws.up;
            pool.for_each_row(&mut ws.gate[..n * ff], ff, &|i, g| {
                swiglu_inplace(g, &up[i * ff..(i + 1) * ff])
            });
            matmul(
                pool,
                &self.m(&layer.w_down),
                &ws.gate[..n * ff],
                n,
                &mut ws.xb[..n * d],
                &mut ws.mm,
            );
            let xb = &ws.xb;
            pool.for_each_row(&mut ws.x[..n * d], d, &|i, x| {
                for (x, o) in x.iter_mut().zip(&xb[i * d..(i + 1) * d]) {
                    *x += o;
                }
            });
        }
        // Final norm and logits for the tokens that want them.
        ws.hidden.clear();
        for (i, t) in batch.iter().enumerate() {
            if t.logits {
                let start = ws.hidden.len();
                ws.hidden.resize(start + d, 0.0);
                rms_norm(
                    &ws.x[i * d..(i + 1) * d],
                    &self.output_norm,
                    cfg.rms_eps,
                    &mut ws.hidden[start..],
                );
            }
        }
        let nl = ws.hidden.len() / d;
        ws.logits.resize(nl * cfg.vocab_size, 0.0);
        if nl > 0 {
            matmul(
                pool,
                &self.m(&self.output),
                &ws.hidden,
                nl,
                &mut ws.logits,
                &mut ws.mm,
            );
        }
    }
}

impl Llama {
    /// Split a step's attention into tasks: runs of up to `ATTN_TOKENS` tokens of one sequence
    /// (consecutive in the batch), times the KV heads; when that gives too few tasks for the
    /// pool (single-stream decode), one task per query head instead. Heaviest first. The
    /// arithmetic of every (token, head) is the same whatever the split.
    fn attn_tasks(&self, pool: &ThreadPool, batch: &[BatchToken], tasks: &mut Vec<AttnTask>) {
        let cfg = &self.cfg;
        let group = cfg.n_head / cfg.n_head_kv;
        let runs = |f: &mut dyn FnMut(usize, usize)| {
            let mut i = 0;
            while i < batch.len() {
                let mut j = i + 1;
                while j < batch.len() && j - i < ATTN_TOKENS && batch[j].seq == batch[i].seq {
                    j += 1;
                }
                f(i, j - i);
                i = j;
            }
        };
        let mut n_runs = 0;
        runs(&mut |_, _| n_runs += 1);
        let per_task = if n_runs * cfg.n_head_kv < 4 * pool.n_threads() {
            1
        } else {
            group
        };
        tasks.clear();
        runs(&mut |i0, nt| {
            let last = batch[i0..i0 + nt].iter().map(|t| t.pos).max().unwrap_or(0);
            for h0 in (0..cfg.n_head).step_by(per_task) {
                tasks.push(AttnTask {
                    i0: i0 as u32,
                    nt: nt as u32,
                    h0: h0 as u32,
                    nh: per_task as u32,
                    kvh: (h0 / group) as u32,
                    cost: (nt * per_task * (last + 1)) as u64,
                });
            }
        });
        tasks.sort_unstable_by_key(|t| std::cmp::Reverse(t.cost));
    }
}

fn check_shape(t: &TensorInfo, want: &[u64]) -> Result<(), ModelError> {
    if t.dims != want {
        return Err(ModelError::BadShape {
            name: t.name.clone(),
            got: t.dims.clone(),
            want: want.to_vec(),
        });
    }
    Ok(())
}
