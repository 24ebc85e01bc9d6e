//! Integer (int16) matrix products `out = act(x · Wᵀ + b)` for encoders (BERT), as an
//! alternative to the F32 GEMM of `gemm.rs` that runs twice the multiply-accumulates per
//! instruction: AVX-512 VNNI `vpdpwssd` (32 i16 × i16 → i32 per zmm, against 16 for
//! `vfmadd231ps`).
//!
//! Quantization (why these widths: int8 weights or activations, even per channel / per token,
//! cost all-MiniLM-L6-v2 up to 0.5% of cosine; see docs/PERFORMANCE.md, Embeddings):
//! - weights per output row, symmetric, 12 bits: `wq = clamp(round(w · 2047 / amax_r), ±2047)`,
//!   scale `sw_r = amax_r / 2047`;
//! - activations per token, symmetric, 14 bits: `xq = clamp(round(x · 8191 / amax_t), ±8191)`,
//!   scale `sx_t = amax_t / 8191` (rounding half to even, as `vcvtps2dq` does).
//!
//! **No overflow.** `|xq · wq| ≤ 8191 · 2047 = 16 766 977`. The integer products are summed
//! in chunks of `KCH` = 128 columns: a chunk's sum, and every partial sum on the way (each
//! `vpdpwssd`/`vpmaddwd` lane adds two products at a time), is at most
//! `128 · 16 766 977 = 2 146 173 056 < 2³¹ − 1 = 2 147 483 647` in magnitude, so the wrapping
//! `vpdpwssd` never wraps and `vpmaddwd` (which only overflows for two −32768² products) is
//! exact. Each chunk's exact i32 sum is converted to f32 (round to nearest even) and added to
//! an f32 accumulator, chunks in column order.
//!
//! Every output is therefore the same arithmetic whatever the tile, the batch or the
//! instruction set: `acc = Σ_chunks f32(Σ_chunk xq·wq)` (f32 adds in chunk order, from the
//! first chunk), then `y = fma(acc, sx_t · sw_r, b_r)` (`b_r = 0` without bias), then GELU
//! (`gelu_ref`/`gelu512`, bit-identical) if asked. The portable code is the reference; the
//! AVX2 (`vpmaddwd`) and AVX-512 VNNI (`vpdpwssd`) kernels are tested against it bitwise.

// The micro-kernels index registers and lanes by position.
#![allow(clippy::needless_range_loop)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::pool::ThreadPool;
use crate::vmath::gelu_ref;
use crate::KernelError;

/// Weight vectors per column pair in the AVX-512 micro-kernel: 16 rows' pairs each.
const RV: usize = 4;
/// Rows per panel.
const PR: usize = 16 * RV;
/// Tokens per register tile.
///
/// Why 64 rows × 6 tokens (24 accumulators, 4 weight loads and 6 broadcasts per 24
/// `vpdpwssd`) rather than 32 × 14 (28 accumulators, 2 loads and 14 broadcasts per 28): in an
/// L1-resident loop on the development machine (Sapphire Rapids class), the 32 × 14 loop ran
/// at ~76% of the `vpdpwssd` peak, the same loop without its broadcast loads at the peak;
/// fewer broadcasts per multiply-add recover part of it. Over whole products of the model's
/// shapes, single-threaded, in paired rounds, the 64 × 6 tile ran 11-26% faster (see
/// docs/PERFORMANCE.md, Embeddings).
const MT: usize = 6;
/// Tokens per task (a multiple of `MT`): small enough that a task's outputs (48 tokens × 64
/// rows) and activations stay in L1/L2 while the panel streams.
const TOK_BLOCK: usize = 8 * MT;
/// Columns per exact integer chunk (see the bound in the module comment).
pub const KCH: usize = 128;
/// Column pairs per chunk: the segment of the activation layout (see `I16Scratch::q`).
const CP: usize = KCH / 2;

/// Words of one quantized token tile with `kp` values per row (whole chunks).
fn tile_words(kp: usize) -> usize {
    (kp / 2).div_ceil(CP) * MT * CP
}

/// Where pair `k2` of token `j` lies within a token tile.
#[inline]
fn xidx(k2: usize, j: usize) -> usize {
    (k2 / CP) * MT * CP + j * CP + k2 % CP
}

/// Largest weight magnitude after quantization (12 bits).
pub const W_MAX: i32 = 2047;
/// Largest activation magnitude after quantization (14 bits).
pub const X_MAX: i32 = 8191;

// The overflow bound of the module comment, checked by the compiler.
const _: () = assert!((KCH as i64) * (W_MAX as i64) * (X_MAX as i64) <= i32::MAX as i64);

/// One cache line of packed weights: `PackedI16`'s storage unit, so that each zmm the
/// micro-kernel loads lies in one line (a 64-byte load across two lines costs two L1 accesses;
/// aligning the panels alone made whole products 0-13% faster, by shape).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([i16; 32]);

/// A weight matrix quantized to 12-bit integers per row, in the packed panel layout: panels of
/// `PR` (64) rows; within a panel, per column pair `p`, the 64 rows' `(w[r][2p], w[r][2p + 1])`
/// pairs (128 i16, `RV` zmm), each panel starting on a cache line.
#[derive(Clone)]
pub struct PackedI16 {
    rows: usize,
    cols: usize,
    /// `cols` rounded up to even.
    kp: usize,
    /// `panels × kp × PR` i16 (see `data`), zero-padded past `rows` and `cols`.
    lines: Vec<Line>,
    /// Per-row scale (`rows` values, zero-padded to whole panels).
    scale: Vec<f32>,
}

impl std::fmt::Debug for PackedI16 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedI16({}×{})", self.rows, self.cols)
    }
}

/// The values of `lines`, as `PackedI16::data`, to fill them.
fn lines_mut(lines: &mut [Line]) -> &mut [i16] {
    // SAFETY: as `PackedI16::data`; the borrow is unique.
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast(), lines.len() * 32) }
}

/// `(scale, 1 / scale as the quantizer multiplies)` of a row whose largest magnitude is `amax`,
/// for `lim` levels each side. A zero (or non-finite) row quantizes to zeros with scale 0.
fn scales(amax: f32, lim: i32) -> (f32, f32) {
    if amax > 0.0 && amax.is_finite() {
        (amax / lim as f32, lim as f32 / amax)
    } else {
        (0.0, 0.0)
    }
}

/// `clamp(round_half_even(v · inv), ±lim)`.
#[inline]
fn quant(v: f32, inv: f32, lim: i32) -> i16 {
    let q = (v * inv).round_ties_even();
    // `as i32` saturates (and maps NaN to 0); the clamp bounds the magnitude.
    (q as i32).clamp(-lim, lim) as i16
}

impl PackedI16 {
    /// Quantize and pack a row-major `rows × cols` matrix.
    pub fn new(w: &[f32], rows: usize, cols: usize) -> Result<Self, KernelError> {
        let want = rows.checked_mul(cols).ok_or(KernelError::SizeMismatch {
            got: w.len(),
            want: usize::MAX,
        })?;
        if w.len() != want {
            return Err(KernelError::SizeMismatch { got: w.len(), want });
        }
        let kp = cols.next_multiple_of(2);
        let panels = rows.div_ceil(PR);
        // kp × PR is a whole number of lines (per column pair, PR rows × 2 values: 4 lines).
        let mut lines = vec![Line([0; 32]); panels * kp * PR / 32];
        let data = lines_mut(&mut lines);
        let mut scale = vec![0f32; panels * PR];
        for r in 0..rows {
            let row = &w[r * cols..(r + 1) * cols];
            let amax = row.iter().fold(0f32, |a, v| a.max(v.abs()));
            let (s, inv) = scales(amax, W_MAX);
            scale[r] = s;
            let (p, i) = (r / PR, r % PR);
            let base = p * kp * PR;
            for (k, &v) in row.iter().enumerate() {
                data[base + (k / 2) * 2 * PR + 2 * i + k % 2] = quant(v, inv, W_MAX);
            }
        }
        Ok(Self {
            rows,
            cols,
            kp,
            lines,
            scale,
        })
    }

    /// The packed values (`panels × kp × PR`).
    fn data(&self) -> &[i16] {
        // SAFETY: `Line` is `repr(C)` around `[i16; 32]` with no padding (64 bytes, aligned to
        // 64), so the lines are `32 × len` contiguous, initialized i16.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast(), self.lines.len() * 32) }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    fn panels(&self) -> usize {
        self.rows.div_ceil(PR)
    }
    /// Bytes held (weights and scales).
    pub fn bytes(&self) -> usize {
        self.lines.len() * 64 + self.scale.len() * 4
    }
}

/// Quantized activations, reusable across calls.
#[derive(Default)]
pub struct I16Scratch {
    /// Tiles of `MT` tokens (the last padded with zero tokens); within a tile, per chunk of
    /// `KCH` columns, per token, the chunk's `CP` column pairs `(x[2p], x[2p + 1])` as u32
    /// (little end first, as two i16 lie in memory): index `xidx(p, j)`, `tile_words(kp)`
    /// words per tile. A token's pairs in a chunk are contiguous (the quantizer copies them
    /// straight from its row), and the micro-kernel's 14 broadcasts of a pair lie at fixed
    /// distances (`CP` words) from one pointer. Only grown (never shrunk), so that switching
    /// between 384- and 1536-column products does not zero megabytes each time: the first
    /// `tiles × tile_words(kp)` words are the current activations.
    q: Vec<u32>,
    /// Per-token scale.
    s: Vec<f32>,
    /// `(tokens, columns)` of the activations begun by `begin` (for `gemm_i16_prequantized`).
    begun: Option<(usize, usize)>,
    /// Per token: put by a `QuantSink::put` since `begin`.
    claimed: Vec<AtomicBool>,
}

impl I16Scratch {
    /// Size the buffers for `n` tokens of `kp` (even) values and zero the last tile's padding
    /// tokens. Every word the kernels read is then either padding or written by the quantizer,
    /// so the buffer is never cleared.
    fn prepare(&mut self, n: usize, kp: usize) {
        let tiles = n.div_ceil(MT);
        let tw = tile_words(kp);
        if self.q.len() < tiles * tw {
            self.q.resize(tiles * tw, 0);
        }
        self.s.clear();
        self.s.resize(n, 0.0);
        if !n.is_multiple_of(MT) {
            let q = &mut self.q[(tiles - 1) * tw..tiles * tw];
            for j in n % MT..MT {
                for c in 0..(kp / 2).div_ceil(CP) {
                    q[xidx(c * CP, j)..][..CP].fill(0);
                }
            }
        }
        self.begun = None;
    }

    /// Start quantizing `n` tokens of `cols` columns row by row, for
    /// `gemm_i16_prequantized`: whoever produces a token's row (a LayerNorm, attention) hands
    /// it to `QuantSink::put` while it is still in cache, instead of a separate pass over the
    /// activations. The result is the same bits as `gemm_i16` quantizing them itself.
    pub fn begin(&mut self, n: usize, cols: usize) -> QuantSink<'_> {
        self.begin_with(isa(), n, cols)
    }

    fn begin_with(&mut self, isa: Isa, n: usize, cols: usize) -> QuantSink<'_> {
        let kp = cols.next_multiple_of(2);
        self.prepare(n, kp);
        self.begun = Some((n, cols));
        if self.claimed.len() < n {
            self.claimed.resize_with(n, AtomicBool::default);
        }
        self.claimed[..n]
            .iter_mut()
            .for_each(|c| *c.get_mut() = false);
        QuantSink {
            isa,
            q: self.q.as_mut_ptr(),
            s: self.s.as_mut_ptr(),
            n,
            cols,
            kp,
            claimed: &self.claimed[..n],
        }
    }
}

/// Quantizes activation rows into an `I16Scratch` (see `I16Scratch::begin`); shared by the
/// pool's tasks, each putting its own tokens.
pub struct QuantSink<'a> {
    isa: Isa,
    q: *mut u32,
    s: *mut f32,
    n: usize,
    cols: usize,
    kp: usize,
    claimed: &'a [AtomicBool],
}

// SAFETY: `put` writes token `t`'s words and scale only after claiming `t` (an atomic swap
// that succeeds once per `begin`), so concurrent puts write disjoint memory; the buffers are
// borrowed (through `begin`'s `&mut`) for the sink's lifetime.
unsafe impl Sync for QuantSink<'_> {}
unsafe impl Send for QuantSink<'_> {}

impl QuantSink<'_> {
    /// Quantize token `t`'s row (`cols` values) into its place. Each token is put once:
    /// a second put of the same token panics.
    pub fn put(&self, t: usize, row: &[f32]) {
        assert!(t < self.n, "token {t} of {}", self.n);
        assert_eq!(row.len(), self.cols, "row length");
        assert!(
            !self.claimed[t].swap(true, Ordering::AcqRel),
            "token {t} put twice"
        );
        // SAFETY: `q` holds ceil(n / MT) tiles and `s` n scales (`prepare`); token t < n was
        // claimed above by this call alone.
        unsafe { put_token(self.isa, self.q, self.s, self.kp, t, row) };
    }
}

/// What is applied to the product before it is stored.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    /// Added per output row (`rows` values).
    pub bias: Option<&'a [f32]>,
    /// GELU (erf form, `vmath::gelu_ref`) after the bias.
    pub gelu: bool,
}

struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint (token, row) elements.
unsafe impl Sync for OutPtr {}
struct QPtr(*mut u32, *mut f32);
// SAFETY: tasks write disjoint tokens' rows of `q` and entries of `s`.
unsafe impl Sync for QPtr {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Vnni512,
}

/// What `Isa::Vnni512` needs: AVX-512F/BW/VL (quantizer) and AVX-512 VNNI (`vpdpwssd`).
#[cfg(target_arch = "x86_64")]
fn vnni512_detected() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
}

fn isa() -> Isa {
    static I: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *I.get_or_init(|| {
        if std::env::var_os("FERRY_KERNELS").is_some_and(|v| v == "scalar") {
            return Isa::Portable;
        }
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::env::var_os("FERRY_KERNELS").is_some_and(|v| v == "avx2");
            if !avx2 && vnni512_detected() {
                return Isa::Vnni512;
            }
            if is_x86_feature_detected!("avx2") {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    })
}

/// The kernel family in use: `avx512-vnni`, `avx2` or `portable`.
pub fn backend() -> &'static str {
    match isa() {
        Isa::Portable => "portable",
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => "avx2",
        #[cfg(target_arch = "x86_64")]
        Isa::Vnni512 => "avx512-vnni",
    }
}

/// `out[t * rows + r] = act(sx_t · sw_r · Σ_k xq[t][k] · wq[r][k] + bias[r])` for `t < n_tokens`
/// (see the module comment for the exact arithmetic).
pub fn gemm_i16(
    pool: &ThreadPool,
    w: &PackedI16,
    x: &[f32],
    n_tokens: usize,
    epi: Epilogue<'_>,
    out: &mut [f32],
    scratch: &mut I16Scratch,
) {
    gemm_with(isa(), pool, w, x, n_tokens, epi, out, scratch)
}

/// Quantize `n` token rows of `x` (`cols` each) into `s.q` (tiles of `MT` tokens, see
/// `I16Scratch`) and `s.s`.
fn quantize_acts(
    isa: Isa,
    pool: &ThreadPool,
    x: &[f32],
    n: usize,
    cols: usize,
    kp: usize,
    s: &mut I16Scratch,
) {
    s.prepare(n, kp);
    let p = QPtr(s.q.as_mut_ptr(), s.s.as_mut_ptr());
    let p = &p;
    // Owned like the products' token blocks (`products`), so a thread quantizes the tokens it
    // then multiplies.
    pool.run_owned(n.div_ceil(MT), &|tile, _| {
        for t in tile * MT..(tile * MT + MT).min(n) {
            // SAFETY: `prepare` sized q and s for n tokens; token t belongs to this task.
            unsafe { put_token(isa, p.0, p.1, kp, t, &x[t * cols..(t + 1) * cols]) };
        }
    });
}

/// Quantize token `t`'s row into its words of the tile layout (`I16Scratch::q`) and its scale
/// into `s[t]`.
///
/// # Safety
/// `q` holds `ceil((t + 1) / MT)` tiles of `tile_words(kp)` words and `s` at least `t + 1`
/// scales; `kp` is `row.len()` rounded up to even; no one else touches token `t`'s words or
/// scale meanwhile.
unsafe fn put_token(isa: Isa, q: *mut u32, s: *mut f32, kp: usize, t: usize, row: &[f32]) {
    let cols = row.len();
    debug_assert_eq!(kp, cols.next_multiple_of(2));
    let amax = match isa {
        // SAFETY: AVX-512F was detected (Vnni512 implies it).
        #[cfg(target_arch = "x86_64")]
        Isa::Vnni512 => unsafe { x86::amax512(row) },
        _ => amax_ref(row),
    };
    let (sc, inv) = scales(amax, X_MAX);
    // SAFETY: the caller's contract (token t's scale).
    unsafe { *s.add(t) = sc };
    let (tile, j) = (t / MT, t % MT);
    // SAFETY: the caller's contract: tile `tile` lies inside `q`.
    let q = unsafe { q.add(tile * tile_words(kp)) };
    // Chunk by chunk, straight into the tile: the chunk's CP words are token j's KCH values
    // in column order (two i16 per little-endian u32), contiguous.
    for (c, src) in row.chunks(KCH).enumerate() {
        // SAFETY: token j's words of chunk c in this tile (xidx(c * CP, j) + CP <=
        // tile_words(kp)), the caller's alone; `src.len().next_multiple_of(2) / 2 <= CP`
        // words are written.
        let dst = unsafe {
            std::slice::from_raw_parts_mut(
                q.add(xidx(c * CP, j)).cast::<i16>(),
                src.len().next_multiple_of(2),
            )
        };
        // The odd column's pad.
        dst[src.len()..].fill(0);
        let dst = &mut dst[..src.len()];
        match isa {
            // SAFETY: AVX-512F/BW/VL were detected; the lengths are equal.
            #[cfg(target_arch = "x86_64")]
            Isa::Vnni512 => unsafe { x86::quant512(src, inv, dst) },
            _ => quant_ref(src, inv, dst),
        }
    }
}

/// The largest magnitude of an activation row (reference of `x86::amax512`).
fn amax_ref(row: &[f32]) -> f32 {
    row.iter().fold(0f32, |a, v| a.max(v.abs()))
}

/// `quant` over a row (reference of `x86::quant512`).
fn quant_ref(row: &[f32], inv: f32, q: &mut [i16]) {
    assert_eq!(row.len(), q.len());
    q.iter_mut()
        .zip(row)
        .for_each(|(d, &v)| *d = quant(v, inv, X_MAX));
}

/// Quantize one activation row to `X_MAX` levels each side; returns its scale. The reference
/// of `x86::quantize_row512` (bit-identical for finite inputs).
#[cfg(test)]
fn quantize_row(row: &[f32], q: &mut [i16]) -> f32 {
    let (sc, inv) = scales(amax_ref(row), X_MAX);
    quant_ref(row, inv, q);
    sc
}

#[allow(clippy::too_many_arguments)]
fn gemm_with(
    isa: Isa,
    pool: &ThreadPool,
    w: &PackedI16,
    x: &[f32],
    n_tokens: usize,
    epi: Epilogue<'_>,
    out: &mut [f32],
    scratch: &mut I16Scratch,
) {
    assert_eq!(x.len(), n_tokens * w.cols, "activation shape");
    assert_eq!(out.len(), n_tokens * w.rows, "output shape");
    if let Some(b) = epi.bias {
        assert_eq!(b.len(), w.rows, "bias length");
    }
    if n_tokens == 0 || w.rows == 0 {
        return;
    }
    quantize_acts(isa, pool, x, n_tokens, w.cols, w.kp, scratch);
    products(isa, pool, w, n_tokens, epi, out, scratch, None);
}

/// `gemm_i16` on activations already quantized row by row through `s.begin(n_tokens,
/// w.cols())` and a `put` of every token: the same bits.
///
/// With `next` (begun for `n_tokens` tokens of `w.rows()` columns), each token's output row,
/// once complete, is also put into it: the input of a following int16 product (this function
/// again, on `next`'s scratch), quantized by the task that finished the row while it is in
/// that core's cache instead of in a pass of its own; the same bits as quantizing `out`
/// afterwards.
///
/// # Panics
/// If `s` was not begun for `n_tokens` tokens of `w.cols()` columns, or a token was not put;
/// if `next` was begun for another shape.
#[allow(clippy::too_many_arguments)]
pub fn gemm_i16_prequantized(
    pool: &ThreadPool,
    w: &PackedI16,
    n_tokens: usize,
    epi: Epilogue<'_>,
    out: &mut [f32],
    s: &I16Scratch,
    next: Option<&QuantSink<'_>>,
) {
    prequantized_with(isa(), pool, w, n_tokens, epi, out, s, next)
}

#[allow(clippy::too_many_arguments)]
fn prequantized_with(
    isa: Isa,
    pool: &ThreadPool,
    w: &PackedI16,
    n_tokens: usize,
    epi: Epilogue<'_>,
    out: &mut [f32],
    s: &I16Scratch,
    next: Option<&QuantSink<'_>>,
) {
    assert_eq!(
        s.begun,
        Some((n_tokens, w.cols)),
        "activations begun for this shape"
    );
    // Every sink borrowing `s` is gone, so every put has returned (pool tasks and scoped
    // threads are joined before a borrow they hold ends): a claimed token is written. No
    // shared counter per put: it would bounce between the threads' caches on every row.
    assert!(
        s.claimed[..n_tokens]
            .iter()
            .all(|c| c.load(Ordering::Relaxed)),
        "every token quantized"
    );
    assert_eq!(out.len(), n_tokens * w.rows, "output shape");
    if let Some(b) = epi.bias {
        assert_eq!(b.len(), w.rows, "bias length");
    }
    if let Some(next) = next {
        assert_eq!(
            (next.n, next.cols),
            (n_tokens, w.rows),
            "next begun for the output"
        );
    }
    if n_tokens == 0 || w.rows == 0 {
        // Empty rows: nothing to compute, but each is still put.
        (0..n_tokens).for_each(|t| next.iter().for_each(|q| q.put(t, &[])));
        return;
    }
    products(isa, pool, w, n_tokens, epi, out, s, next);
}

/// The products over quantized activations in `scratch` (`n_tokens` of `w.kp` values); with
/// `next`, each token's finished output row is put into it.
#[allow(clippy::too_many_arguments)]
fn products(
    isa: Isa,
    pool: &ThreadPool,
    w: &PackedI16,
    n_tokens: usize,
    epi: Epilogue<'_>,
    out: &mut [f32],
    scratch: &I16Scratch,
    next: Option<&QuantSink<'_>>,
) {
    let kp = w.kp;
    let (xq, sx) = (&scratch.q[..], &scratch.s[..n_tokens]);
    assert!(xq.len() >= n_tokens.div_ceil(MT) * tile_words(kp));
    let panels = w.panels();
    let n_tb = n_tokens.div_ceil(TOK_BLOCK);
    let outp = OutPtr(out.as_mut_ptr());
    let outp = &outp;
    let block = |p: usize, tb: usize| {
        let (t0, t1) = (tb * TOK_BLOCK, ((tb + 1) * TOK_BLOCK).min(n_tokens));
        let panel = &w.data()[p * kp * PR..(p + 1) * kp * PR];
        let r0 = p * PR;
        let nr = PR.min(w.rows - r0);
        let sw = &w.scale[r0..r0 + PR];
        let zero = [0f32; PR];
        let mut bias = [0f32; PR];
        bias[..nr].copy_from_slice(epi.bias.map_or(&zero[..nr], |b| &b[r0..r0 + nr]));
        let mut t = t0;
        while t < t1 {
            let nt = MT.min(t1 - t);
            // Always a whole tile: the quantized activations are padded to MT tokens.
            let tw = tile_words(kp);
            let xs = &xq[t / MT * tw..][..tw];
            let tile = Tile {
                kp,
                nt,
                nr,
                sw,
                sx: &sx[t..t + nt],
                bias: &bias,
                gelu: epi.gelu,
                // SAFETY: rows r0..r0 + nr of tokens t..t + nt lie inside `out`
                // (n_tokens × rows) and belong to this task only.
                dst: unsafe { outp.0.add(t * w.rows + r0) },
                ld: w.rows,
            };
            match isa {
                Isa::Portable => portable(panel, xs, &tile),
                // SAFETY: the features were detected by `isa()` (or by the test that picked
                // the ISA); slices are sized as the kernels read them (panel kp × PR, xs
                // tile_words(kp) words); `dst` as above.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => unsafe { x86::avx2(panel, xs, &tile) },
                #[cfg(target_arch = "x86_64")]
                Isa::Vnni512 => unsafe { x86::vnni512(panel, xs, &tile) },
            }
            t += nt;
        }
    };
    // A task runs a group of panels over one token block, so that the block's activations stay
    // in one core's caches from panel to panel (rather than every task of a block moving its
    // quantized tokens, and the rows of its output, between the cores); the panels are split
    // into groups only as far as it takes to give each thread several tasks (one group of all
    // panels when the batch has enough token blocks). Token blocks of all panels ran 5-6%
    // faster end to end than (panel, block) tasks (embed_bench, paired).
    let groups = (4 * pool.n_threads()).div_ceil(n_tb).clamp(1, panels);
    let per = panels.div_ceil(groups);
    let groups = panels.div_ceil(per);
    // Groups still to finish, per token block (with `next` only).
    let left: Vec<AtomicUsize> = match next {
        Some(_) => (0..n_tb).map(|_| AtomicUsize::new(groups)).collect(),
        None => Vec::new(),
    };
    // Token blocks owned by threads (`run_owned`): the same thread computes a block's rows in
    // every product of the batch (and, in BERT, its LayerNorms and attention), so the block's
    // activations and outputs stay in one core's caches from pass to pass (end to end 5%
    // faster than claiming blocks in turn, embed_bench, paired).
    pool.run_owned(n_tb * groups, &|task, _| {
        let (tb, g) = (task / groups, task % groups);
        (g * per..((g + 1) * per).min(panels)).for_each(|p| block(p, tb));
        let Some(next) = next else { return };
        // The last group of the block to finish: its rows are complete (each task's writes
        // happen before its decrement; this one's acquires them).
        if left[tb].fetch_sub(1, Ordering::AcqRel) == 1 {
            for t in tb * TOK_BLOCK..((tb + 1) * TOK_BLOCK).min(n_tokens) {
                // SAFETY: token t's row (w.rows values) lies inside `out` and no task writes
                // it any more.
                let row = unsafe { std::slice::from_raw_parts(outp.0.add(t * w.rows), w.rows) };
                next.put(t, row);
            }
        }
    });
}

/// One `PR`-row × `MT`-token tile's shape and epilogue.
struct Tile<'a> {
    /// Values per quantized row (even).
    kp: usize,
    /// Tokens stored (`≤ MT`) and rows stored (`≤ PR`).
    nt: usize,
    nr: usize,
    /// Row scales (`PR`), token scales (`nt`), bias (`PR`, zeros when absent).
    sw: &'a [f32],
    sx: &'a [f32],
    bias: &'a [f32; PR],
    gelu: bool,
    dst: *mut f32,
    ld: usize,
}

/// Store `acc[j * PR + i]` (token `j < nt`, row `i < nr`) through the epilogue.
fn store_tile(acc: &[f32; PR * MT], t: &Tile<'_>) {
    for j in 0..t.nt {
        for i in 0..t.nr {
            let mut v = acc[j * PR + i].mul_add(t.sw[i] * t.sx[j], t.bias[i]);
            if t.gelu {
                v = gelu_ref(v);
            }
            // SAFETY: the caller owns rows 0..nr of tokens 0..nt at `dst` with stride `ld`.
            unsafe { *t.dst.add(j * t.ld + i) = v };
        }
    }
}

/// Portable reference: per (token, row), exact i32 sums per chunk of `KCH` columns, added in
/// f32 in chunk order.
fn portable(panel: &[i16], xs: &[u32], t: &Tile<'_>) {
    let mut acc = [0f32; PR * MT];
    let pairs = t.kp / 2;
    for j in 0..t.nt {
        for c in 0..pairs.div_ceil(KCH / 2) {
            let mut isum = [0i32; PR];
            for k2 in c * KCH / 2..((c + 1) * KCH / 2).min(pairs) {
                let v = xs[xidx(k2, j)];
                let (x0, x1) = (v as u16 as i16 as i32, (v >> 16) as u16 as i16 as i32);
                let wk = &panel[k2 * 2 * PR..][..2 * PR];
                for i in 0..PR {
                    isum[i] += wk[2 * i] as i32 * x0 + wk[2 * i + 1] as i32 * x1;
                }
            }
            for i in 0..PR {
                let v = isum[i] as f32;
                acc[j * PR + i] = if c == 0 { v } else { acc[j * PR + i] + v };
            }
        }
    }
    store_tile(&acc, t);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{store_tile, tile_words, xidx, Tile, CP, KCH, MT, PR, RV, X_MAX};
    use crate::vmath::x86::gelu512;

    /// AVX-512 VNNI: `RV × MT` (4 × 6) i32 accumulators (64 rows × 6 tokens) per chunk of
    /// `KCH` columns; per column pair `RV` weight loads and `MT` broadcast pairs of activations
    /// feed 24 `vpdpwssd`. Chunk sums are folded into f32 accumulators (`facc`, on the stack).
    ///
    /// # Safety
    /// AVX-512F and AVX-512 VNNI must be available; `panel` holds `kp × PR` values, `xs`
    /// `tile_words(kp)` words (`I16Scratch::q`); rows `0..nr` of tokens `0..nt` at `t.dst`
    /// (stride `t.ld`) are the caller's.
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub(super) unsafe fn vnni512(panel: &[i16], xs: &[u32], t: &Tile<'_>) {
        let kp = t.kp;
        assert!(panel.len() >= kp * PR && xs.len() >= tile_words(kp) && t.nt <= MT && t.nr <= PR);
        assert!(t.sw.len() >= PR && t.sx.len() >= t.nt);
        if kp == 0 {
            // No columns: nothing to sum (the code below needs a first chunk).
            super::portable(panel, xs, t);
            return;
        }
        // Written by the first chunk (k0 == 0, which always runs since kp > 0), so not zeroed
        // here (a memset of the tile per call, measurable when it was 28 vectors).
        let mut facc = [[std::mem::MaybeUninit::<__m512>::uninit(); RV]; MT];
        let (wp, xp) = (panel.as_ptr(), xs.as_ptr());
        let mut k0 = 0;
        while k0 < kp {
            let pairs = KCH.min(kp - k0) / 2;
            let mut acc = [[_mm512_setzero_si512(); RV]; MT];
            // This chunk's pairs of token 0 (`xidx(k0 / 2 + p, 0)`), hoisted out of the loop.
            // SAFETY: k0 / 2 < kp / 2, inside the tile (checked above).
            let xc = unsafe { xp.add(xidx(k0 / 2, 0)) };
            for p in 0..pairs {
                let k = k0 + 2 * p;
                // SAFETY: k + 1 < kp and p < CP; the extents were checked above.
                unsafe {
                    let mut wv = [_mm512_setzero_si512(); RV];
                    for (r, v) in wv.iter_mut().enumerate() {
                        *v = _mm512_loadu_si512(wp.add(k * PR + 32 * r).cast());
                    }
                    let xk = xc.add(p);
                    for j in 0..MT {
                        let xv = _mm512_set1_epi32(*xk.add(j * CP) as i32);
                        for r in 0..RV {
                            acc[j][r] = _mm512_dpwssd_epi32(acc[j][r], wv[r], xv);
                        }
                    }
                }
            }
            for j in 0..MT {
                for r in 0..RV {
                    let a = _mm512_cvtepi32_ps(acc[j][r]);
                    facc[j][r] = std::mem::MaybeUninit::new(if k0 == 0 {
                        a
                    } else {
                        // SAFETY: written by the first chunk.
                        _mm512_add_ps(unsafe { facc[j][r].assume_init() }, a)
                    });
                }
            }
            k0 += 2 * pairs;
        }
        let m: u64 = if t.nr == PR {
            u64::MAX
        } else {
            (1u64 << t.nr) - 1
        };
        let mut sw = [_mm512_setzero_ps(); RV];
        let mut bias = [_mm512_setzero_ps(); RV];
        for r in 0..RV {
            // SAFETY: sw and bias hold PR = 16 × RV values.
            unsafe {
                sw[r] = _mm512_loadu_ps(t.sw.as_ptr().add(16 * r));
                bias[r] = _mm512_loadu_ps(t.bias.as_ptr().add(16 * r));
            }
        }
        for j in 0..t.nt {
            let sx = _mm512_set1_ps(t.sx[j]);
            for r in 0..RV {
                // SAFETY: kp > 0, so the first chunk wrote every entry.
                let f = unsafe { facc[j][r].assume_init() };
                let mut v = _mm512_fmadd_ps(f, _mm512_mul_ps(sw[r], sx), bias[r]);
                if t.gelu {
                    v = gelu512(v);
                }
                // SAFETY: the mask covers rows 16r.. of 0..nr of token j, owned by the caller.
                unsafe {
                    _mm512_mask_storeu_ps(t.dst.add(j * t.ld + 16 * r), (m >> (16 * r)) as u16, v)
                };
            }
        }
    }

    /// `quantize_row` with AVX-512F: the largest magnitude (max is exact in any order), then
    /// `vcvtps2dq` (round half to even under the default MXCSR, as `round_ties_even`) and a
    /// clamp to `±X_MAX`. Identical to `quantize_row` for finite inputs.
    ///
    /// # Safety
    /// AVX-512F must be available; `q.len() == row.len()`.
    #[cfg(test)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn quantize_row512(row: &[f32], q: &mut [i16]) -> f32 {
        assert_eq!(row.len(), q.len());
        // SAFETY: the features are enabled on this function.
        let (sc, inv) = super::scales(unsafe { amax512(row) }, X_MAX);
        // SAFETY: as above; the lengths are equal.
        unsafe { quant512(row, inv, q) };
        sc
    }

    fn tail(n: usize, i: usize) -> __mmask16 {
        if n - i >= 16 {
            0xffff
        } else {
            (1u16 << (n - i)) - 1
        }
    }

    /// The largest magnitude of `row` (max is exact in any order), 0 for an empty row.
    ///
    /// # Safety
    /// AVX-512F must be available.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn amax512(row: &[f32]) -> f32 {
        let n = row.len();
        let (mut m0, mut m1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut i = 0;
        // Two independent max chains, then the masked tail.
        while i + 32 <= n {
            // SAFETY: row[i..i + 32] is inside the row.
            unsafe {
                m0 = _mm512_max_ps(m0, _mm512_abs_ps(_mm512_loadu_ps(row.as_ptr().add(i))));
                m1 = _mm512_max_ps(m1, _mm512_abs_ps(_mm512_loadu_ps(row.as_ptr().add(i + 16))));
            }
            i += 32;
        }
        while i < n {
            // SAFETY: the mask covers row[i..n] only.
            let v = unsafe { _mm512_maskz_loadu_ps(tail(n, i), row.as_ptr().add(i)) };
            m0 = _mm512_max_ps(m0, _mm512_abs_ps(v));
            i += 16;
        }
        _mm512_reduce_max_ps(_mm512_max_ps(m0, m1))
    }

    /// `q[i] = clamp(round_half_even(row[i] · inv), ±X_MAX)`: `vcvtps2dq` (round half to even
    /// under the default MXCSR, as `round_ties_even`) and a clamp. Identical to `quant` for
    /// finite inputs.
    ///
    /// # Safety
    /// AVX-512F/BW/VL must be available; `q.len() == row.len()`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn quant512(row: &[f32], inv: f32, q: &mut [i16]) {
        assert_eq!(row.len(), q.len());
        let n = row.len();
        let inv = _mm512_set1_ps(inv);
        let (lo, hi) = (_mm512_set1_epi32(-X_MAX), _mm512_set1_epi32(X_MAX));
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: row[i..i + 16] and q[i..i + 16] are inside the slices.
            unsafe {
                let v = _mm512_loadu_ps(row.as_ptr().add(i));
                let r = _mm512_cvtps_epi32(_mm512_mul_ps(v, inv));
                let r = _mm512_min_epi32(_mm512_max_epi32(r, lo), hi);
                _mm256_storeu_si256(q.as_mut_ptr().add(i).cast(), _mm512_cvtepi32_epi16(r));
            }
            i += 16;
        }
        if i < n {
            let k = tail(n, i);
            // SAFETY: the masks cover row[i..n] and q[i..n] only.
            unsafe {
                let v = _mm512_maskz_loadu_ps(k, row.as_ptr().add(i));
                let r = _mm512_cvtps_epi32(_mm512_mul_ps(v, inv));
                let r = _mm512_min_epi32(_mm512_max_epi32(r, lo), hi);
                _mm256_mask_storeu_epi16(q.as_mut_ptr().add(i).cast(), k, _mm512_cvtepi32_epi16(r));
            }
        }
    }

    /// AVX2: `vpmaddwd` + `vpaddd` per 8 rows × column pair; 16 rows × up to 6 tokens at a time.
    ///
    /// # Safety
    /// AVX2 must be available; extents as for `vnni512`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn avx2(panel: &[i16], xs: &[u32], t: &Tile<'_>) {
        let kp = t.kp;
        assert!(panel.len() >= kp * PR && xs.len() >= tile_words(kp) && t.nt <= MT && t.nr <= PR);
        let mut acc = [0f32; PR * MT];
        let mut j0 = 0;
        while j0 < t.nt {
            let n = 6.min(t.nt - j0);
            for part in 0..PR / 16 {
                // SAFETY: same contract as this function's; `acc` holds MT × PR.
                unsafe {
                    let (w, x) = (panel.as_ptr(), xs.as_ptr());
                    match n {
                        1 => k256::<1>(w, part, kp, x, j0, &mut acc),
                        2 => k256::<2>(w, part, kp, x, j0, &mut acc),
                        3 => k256::<3>(w, part, kp, x, j0, &mut acc),
                        4 => k256::<4>(w, part, kp, x, j0, &mut acc),
                        5 => k256::<5>(w, part, kp, x, j0, &mut acc),
                        _ => k256::<6>(w, part, kp, x, j0, &mut acc),
                    }
                }
            }
            j0 += n;
        }
        store_tile(&acc, t);
    }

    /// 16 panel rows (`part`) × `T` tokens from token `j0`, into `acc[j * PR + part * 16 ..]`.
    #[target_feature(enable = "avx2")]
    unsafe fn k256<const T: usize>(
        w: *const i16,
        part: usize,
        kp: usize,
        x: *const u32,
        j0: usize,
        acc: &mut [f32; PR * MT],
    ) {
        let mut flo = [_mm256_setzero_ps(); T];
        let mut fhi = [_mm256_setzero_ps(); T];
        // SAFETY (whole function): pointers stay inside panel (kp × PR) and xs (tile_words(kp)),
        // as the caller checked; k + 1 < kp.
        let w = unsafe { w.add(part * 32) };
        let x = unsafe { x.add(j0 * CP) };
        let mut k0 = 0;
        while k0 < kp {
            let pairs = KCH.min(kp - k0) / 2;
            let mut lo = [_mm256_setzero_si256(); T];
            let mut hi = [_mm256_setzero_si256(); T];
            for p in 0..pairs {
                let k = k0 + 2 * p;
                let (w0, w1) = unsafe {
                    (
                        _mm256_loadu_si256(w.add(k * PR).cast()),
                        _mm256_loadu_si256(w.add(k * PR + 16).cast()),
                    )
                };
                for j in 0..T {
                    let xv = _mm256_set1_epi32(unsafe { *x.add(xidx(k / 2, j)) } as i32);
                    lo[j] = _mm256_add_epi32(lo[j], _mm256_madd_epi16(w0, xv));
                    hi[j] = _mm256_add_epi32(hi[j], _mm256_madd_epi16(w1, xv));
                }
            }
            for j in 0..T {
                let (a, b) = (_mm256_cvtepi32_ps(lo[j]), _mm256_cvtepi32_ps(hi[j]));
                if k0 == 0 {
                    flo[j] = a;
                    fhi[j] = b;
                } else {
                    flo[j] = _mm256_add_ps(flo[j], a);
                    fhi[j] = _mm256_add_ps(fhi[j], b);
                }
            }
            k0 += 2 * pairs;
        }
        for j in 0..T {
            let o = (j0 + j) * PR + part * 16;
            // SAFETY: o + 16 <= MT × PR since j0 + j < MT and part < PR / 16.
            unsafe {
                _mm256_storeu_ps(acc.as_mut_ptr().add(o), flo[j]);
                _mm256_storeu_ps(acc.as_mut_ptr().add(o + 8), fhi[j]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::lcg;

    fn isas() -> Vec<Isa> {
        let mut v = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") {
                v.push(Isa::Avx2);
            }
            if vnni512_detected() {
                v.push(Isa::Vnni512);
            }
        }
        v
    }

    /// The arithmetic of the module comment, written out per element from the row-major
    /// matrices (independent of the packing and the tiles): per (token, row) the f32 sum of
    /// the exact chunk sums, and the scale `sx_t · sw_r`.
    fn reference(w: &[f32], x: &[f32], rows: usize, cols: usize, n: usize) -> Vec<(f32, f32)> {
        let quant_rows = |m: &[f32], lim: i32| -> (Vec<i32>, Vec<f32>) {
            let mut q = Vec::with_capacity(m.len());
            let mut s = Vec::new();
            for row in m.chunks_exact(cols) {
                let amax = row.iter().fold(0f32, |a, v| a.max(v.abs()));
                let (sc, inv) = scales(amax, lim);
                s.push(sc);
                q.extend(row.iter().map(|&v| quant(v, inv, lim) as i32));
            }
            (q, s)
        };
        let (wq, sw) = quant_rows(w, W_MAX);
        let (xq, sx) = quant_rows(x, X_MAX);
        let mut out = Vec::with_capacity(n * rows);
        for t in 0..n {
            for r in 0..rows {
                let mut acc = 0f32;
                for (c, k0) in (0..cols).step_by(KCH).enumerate() {
                    let isum: i64 = (k0..(k0 + KCH).min(cols))
                        .map(|k| (xq[t * cols + k] * wq[r * cols + k]) as i64)
                        .sum();
                    assert!(isum.abs() <= i32::MAX as i64);
                    acc = if c == 0 {
                        isum as f32
                    } else {
                        acc + isum as f32
                    };
                }
                out.push((acc, sx[t] * sw[r]));
            }
        }
        out
    }

    #[test]
    fn matches_reference_bitwise_across_isas_and_batches() {
        let pool = ThreadPool::new(2);
        let mut seed = 5u64;
        let shapes = [
            (37, 50, 1),
            (48, 96, 29),
            (16, 7, 200),
            (5, 3, 15),
            (70, 33, 13),
            (96, 64, 97),
            (17, 128, 12),
            (33, 5, 25),
            // Several integer chunks (KCH), ragged last chunk, odd columns.
            (40, 400, 30),
            (64, 2 * KCH, 14),
            (9, KCH + 1, 101),
            (32, 3 * KCH + 7, 28),
            // The model's widths.
            (40, 384, 29),
            (35, 1536, 15),
        ];
        for (rows, cols, n) in shapes {
            let w: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut seed)).collect();
            let mut x: Vec<f32> = (0..n * cols).map(|_| 4.0 * lcg(&mut seed)).collect();
            // An all-zero token and an outlier.
            if n > 2 {
                x[cols..2 * cols].fill(0.0);
                x[2 * cols] = 300.0;
            }
            let bias: Vec<f32> = (0..rows).map(|_| lcg(&mut seed)).collect();
            let p = PackedI16::new(&w, rows, cols).unwrap();
            // A second product over this one's output (19 rows).
            let w2: Vec<f32> = (0..19 * rows).map(|_| lcg(&mut seed)).collect();
            let p2 = PackedI16::new(&w2, 19, rows).unwrap();
            let epi2 = Epilogue::default();
            let plain = reference(&w, &x, rows, cols, n);
            for (with_bias, gelu) in [(false, false), (true, false), (true, true), (false, true)] {
                let want: Vec<f32> = plain
                    .iter()
                    .enumerate()
                    .map(|(i, &(acc, scale))| {
                        let b = if with_bias { bias[i % rows] } else { 0.0 };
                        let v = acc.mul_add(scale, b);
                        if gelu {
                            gelu_ref(v)
                        } else {
                            v
                        }
                    })
                    .collect();
                let epi = Epilogue {
                    bias: with_bias.then_some(bias.as_slice()),
                    gelu,
                };
                for &isa in &isas() {
                    let mut s = I16Scratch::default();
                    let mut out = vec![f32::NAN; n * rows];
                    gemm_with(isa, &pool, &p, &x, n, epi, &mut out, &mut s);
                    assert_eq!(
                        out, want,
                        "{isa:?} {rows}x{cols} n={n} bias={with_bias} gelu={gelu}"
                    );
                    // One token alone: the same bits.
                    let t = n / 2;
                    let mut one = vec![0f32; rows];
                    let xt = &x[t * cols..(t + 1) * cols];
                    gemm_with(isa, &pool, &p, xt, 1, epi, &mut one, &mut s);
                    assert_eq!(one, want[t * rows..(t + 1) * rows].to_vec());
                    // Quantized ahead, row by row from pool tasks in a scrambled order, into
                    // the scratch that held the other activations: the same bits.
                    let sink = s.begin_with(isa, n, cols);
                    pool.run(n, &|i| {
                        let t = (i * 7 + 3) % n;
                        let t = if n % 7 == 0 { i } else { t };
                        sink.put(t, &x[t * cols..(t + 1) * cols]);
                    });
                    let mut pre = vec![f32::NAN; n * rows];
                    prequantized_with(isa, &pool, &p, n, epi, &mut pre, &s, None);
                    assert_eq!(pre, want, "{isa:?} prequantized {rows}x{cols} n={n}");
                    // The output put into the next product's scratch by the tasks that finish
                    // its rows: the same bits as quantizing it afterwards.
                    let mut next = I16Scratch::default();
                    let mut then = vec![f32::NAN; n * rows];
                    {
                        let sink = next.begin_with(isa, n, rows);
                        prequantized_with(isa, &pool, &p, n, epi, &mut then, &s, Some(&sink));
                    }
                    assert_eq!(then, want, "{isa:?} then {rows}x{cols} n={n}");
                    let mut chained = vec![f32::NAN; n * 19];
                    prequantized_with(isa, &pool, &p2, n, epi2, &mut chained, &next, None);
                    let mut after = vec![f32::NAN; n * 19];
                    gemm_with(isa, &pool, &p2, &want, n, epi2, &mut after, &mut s);
                    assert_eq!(chained, after, "{isa:?} chained {rows}x{cols} n={n}");
                }
            }
        }
        assert!(PackedI16::new(&[0.0; 5], 2, 3).is_err());
    }

    #[test]
    fn quantize_row_simd_matches_reference() {
        #[cfg(target_arch = "x86_64")]
        if vnni512_detected() {
            let mut seed = 11u64;
            for n in [1usize, 2, 15, 16, 17, 31, 33, 100, 384, 385, 1536] {
                for case in 0..4 {
                    let mut row: Vec<f32> = (0..n).map(|_| 3.0 * lcg(&mut seed)).collect();
                    if case == 1 {
                        // Exact ties: amax 8191 makes the multiplier 1.
                        row = (0..n).map(|i| (i as f32 - n as f32 / 2.0) * 0.5).collect();
                        row[0] = 8191.0;
                    }
                    if case == 2 {
                        row.fill(0.0);
                    }
                    if case == 3 {
                        row[n / 2] = -1e30;
                    }
                    let (mut a, mut b) = (vec![7i16; n], vec![7i16; n]);
                    let sa = quantize_row(&row, &mut a);
                    // SAFETY: the features were detected; the lengths are equal.
                    let sb = unsafe { x86::quantize_row512(&row, &mut b) };
                    assert_eq!((sa, &a), (sb, &b), "n={n} case={case}");
                    assert!(a.iter().all(|&q| (q as i32).abs() <= X_MAX));
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "put twice")]
    fn a_token_put_twice_panics() {
        let mut s = I16Scratch::default();
        let sink = s.begin(3, 10);
        sink.put(1, &[1.0; 10]);
        sink.put(1, &[1.0; 10]);
    }

    #[test]
    #[should_panic(expected = "every token quantized")]
    fn a_missing_token_panics() {
        let pool = ThreadPool::new(1);
        let p = PackedI16::new(&[0.5; 40], 4, 10).unwrap();
        let mut s = I16Scratch::default();
        let sink = s.begin(3, 10);
        sink.put(0, &[1.0; 10]);
        sink.put(2, &[1.0; 10]);
        let mut out = vec![0f32; 12];
        gemm_i16_prequantized(&pool, &p, 3, Epilogue::default(), &mut out, &s, None);
    }

    #[test]
    #[should_panic(expected = "begun for this shape")]
    fn a_shape_not_begun_panics() {
        let pool = ThreadPool::new(1);
        let p = PackedI16::new(&[0.5; 40], 4, 10).unwrap();
        let mut s = I16Scratch::default();
        let sink = s.begin(3, 12);
        (0..3).for_each(|t| sink.put(t, &[1.0; 12]));
        let mut out = vec![0f32; 12];
        gemm_i16_prequantized(&pool, &p, 3, Epilogue::default(), &mut out, &s, None);
    }

    /// The overflow bound's worst case: every product at its largest magnitude, one sign.
    #[test]
    fn worst_case_chunks_do_not_wrap() {
        let pool = ThreadPool::new(2);
        let (rows, cols, n) = (33, 3 * KCH + 2, 15);
        for sign in [1.0f32, -1.0] {
            let w = vec![sign; rows * cols];
            let x = vec![1.0f32; n * cols];
            let p = PackedI16::new(&w, rows, cols).unwrap();
            // Each of the three whole chunks sums to ±128 · 8191 · 2047 (exact in f32 after
            // rounding), the last to ±2 · 8191 · 2047.
            let chunk = (KCH as i64 * X_MAX as i64 * W_MAX as i64) as f32;
            let tail = (2 * X_MAX as i64 * W_MAX as i64) as f32;
            let acc = sign * (((chunk + chunk) + chunk) + tail);
            let want = acc.mul_add((1.0 / X_MAX as f32) * (1.0 / W_MAX as f32), 0.0);
            for &isa in &isas() {
                let mut out = vec![0f32; n * rows];
                gemm_with(
                    isa,
                    &pool,
                    &p,
                    &x,
                    n,
                    Epilogue::default(),
                    &mut out,
                    &mut I16Scratch::default(),
                );
                assert!(
                    out.iter().all(|&v| v == want),
                    "{isa:?}: {} vs {want}",
                    out[0]
                );
                assert!((want - sign * cols as f32).abs() < 1e-3 * cols as f32);
            }
        }
    }
}
