//! Dense F32 matrix products `out = act(x · Wᵀ + b)` with a packed weight layout, for encoders
//! (BERT) whose batches have hundreds of tokens: register-blocked, many tokens per weight load.
//!
//! `PackedF32` stores `W` (`rows × cols`) in panels of 32 rows, transposed so that the 32 row
//! values of one column are contiguous. The AVX-512 micro-kernel keeps a tile of 32 rows (two
//! zmm registers) × `MT` = 14 tokens in 28 accumulators and walks `k` in cache blocks of `KC`
//! columns: per `k`, two weight loads and 14 broadcasts of `x` (read in place, row-major)
//! feed 28 FMAs. Bias and GELU are applied to the tile in registers before it is stored.
//! (Packing `x` into k-major tiles first was tried: the kernel loop got simpler, but the
//! transpose cost 7% of the encoder's time and the GEMM did not measurably gain.)
//!
//! Every output element is the same chain `acc = fma(w[k], x[k], acc)` for `k = 0..cols` from
//! zero, then `+ b` and, if asked, `gelu_ref`, whatever the tile, the batch size or the
//! instruction set (AVX-512F, AVX2+FMA, or portable `f32::mul_add`), so results are
//! bit-identical across batches and backends.

// The micro-kernels index registers and lanes by position.
#![allow(clippy::needless_range_loop)]

use crate::pool::ThreadPool;
use crate::vmath::gelu_ref;
use crate::KernelError;

/// Rows per panel.
const PR: usize = 32;
/// Tokens per AVX-512 register tile.
const MT: usize = 14;
/// Tokens per task (a multiple of `MT`).
const TOK_BLOCK: usize = 8 * MT;

/// A weight matrix in the packed panel layout.
#[derive(Clone)]
pub struct PackedF32 {
    rows: usize,
    cols: usize,
    /// `panels × cols × 32`, zero-padded past `rows`.
    data: Vec<f32>,
}

impl std::fmt::Debug for PackedF32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedF32({}×{})", self.rows, self.cols)
    }
}

impl PackedF32 {
    /// Pack a row-major `rows × cols` matrix.
    pub fn new(w: &[f32], rows: usize, cols: usize) -> Result<Self, KernelError> {
        let want = rows.checked_mul(cols).ok_or(KernelError::SizeMismatch {
            got: w.len(),
            want: usize::MAX,
        })?;
        if w.len() != want {
            return Err(KernelError::SizeMismatch { got: w.len(), want });
        }
        let panels = rows.div_ceil(PR);
        let mut data = vec![0f32; panels * cols * PR];
        for r in 0..rows {
            let (p, i) = (r / PR, r % PR);
            let base = p * cols * PR;
            for k in 0..cols {
                data[base + k * PR + i] = w[r * cols + k];
            }
        }
        Ok(Self { rows, cols, data })
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
}

/// What is applied to `x · Wᵀ` before it is stored.
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

#[derive(Clone, Copy)]
enum Isa {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

fn isa() -> Isa {
    static I: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *I.get_or_init(|| {
        if std::env::var_os("FERRY_KERNELS").is_some_and(|v| v == "scalar") {
            return Isa::Portable;
        }
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    })
}

/// True when the AVX-512 kernels of this module and `vmath` are in use (AVX-512F detected and
/// `FERRY_KERNELS` is not `scalar`).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        matches!(isa(), Isa::Avx512)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out[t * rows + r] = Σ_k x[t * cols + k] · W[r][k]` for `t < n_tokens`.
pub fn gemm_f32(pool: &ThreadPool, w: &PackedF32, x: &[f32], n_tokens: usize, out: &mut [f32]) {
    gemm_with(isa(), pool, w, x, n_tokens, Epilogue::default(), out)
}

/// `out[t * rows + r] = act(Σ_k x[t * cols + k] · W[r][k] + bias[r])` for `t < n_tokens`.
pub fn gemm_f32_ex(
    pool: &ThreadPool,
    w: &PackedF32,
    x: &[f32],
    n_tokens: usize,
    epi: Epilogue<'_>,
    out: &mut [f32],
) {
    gemm_with(isa(), pool, w, x, n_tokens, epi, out)
}

fn gemm_with(
    isa: Isa,
    pool: &ThreadPool,
    w: &PackedF32,
    x: &[f32],
    n_tokens: usize,
    epi: Epilogue<'_>,
    out: &mut [f32],
) {
    assert_eq!(x.len(), n_tokens * w.cols, "activation shape");
    assert_eq!(out.len(), n_tokens * w.rows, "output shape");
    if let Some(b) = epi.bias {
        assert_eq!(b.len(), w.rows, "bias length");
    }
    if n_tokens == 0 || w.rows == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx512) {
        return gemm_avx512(pool, w, x, n_tokens, epi, out);
    }
    let panels = w.panels();
    let n_tb = n_tokens.div_ceil(TOK_BLOCK);
    let outp = OutPtr(out.as_mut_ptr());
    let outp = &outp;
    pool.run(panels * n_tb, &|task| {
        let (p, tb) = (task % panels, task / panels);
        let (t0, t1) = (tb * TOK_BLOCK, ((tb + 1) * TOK_BLOCK).min(n_tokens));
        let panel = &w.data[p * w.cols * PR..(p + 1) * w.cols * PR];
        let r0 = p * PR;
        let nr = PR.min(w.rows - r0);
        let bias = epi.bias.map(|b| &b[r0..r0 + nr]);
        let mut t = t0;
        while t < t1 {
            let nt = MT.min(t1 - t);
            let xs = &x[t * w.cols..(t + nt) * w.cols];
            // SAFETY: rows r0..r0 + nr of tokens t..t + nt lie inside `out` (n_tokens × rows)
            // and belong to this task only.
            let dst = unsafe { outp.0.add(t * w.rows + r0) };
            match isa {
                Isa::Portable => portable(panel, w.cols, xs, nt, nr, bias, epi.gelu, dst, w.rows),
                // SAFETY: the feature was detected by `isa()`; slices are sized as the kernel
                // reads them (panel: cols × 32, xs: nt × cols); `dst` as above.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => unsafe {
                    x86::avx2(panel, w.cols, xs, nt, nr, bias, epi.gelu, dst, w.rows)
                },
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => unreachable!("AVX-512 runs gemm_avx512"),
            }
            t += nt;
        }
    });
}

/// Columns per cache block: a panel's block (`32 × KC` floats, 64 KiB) stays in L2 (close to
/// L1) while the tiles of a token block stream past it. Between blocks the accumulators are
/// parked in `out` as f32, which leaves every output's FMA chain unchanged. (On the 2-vCPU
/// test machine 128, 192, 384 and unblocked measured the same within noise.)
const KC: usize = 512;

#[cfg(target_arch = "x86_64")]
fn gemm_avx512(
    pool: &ThreadPool,
    w: &PackedF32,
    x: &[f32],
    n_tokens: usize,
    epi: Epilogue<'_>,
    out: &mut [f32],
) {
    let cols = w.cols;
    let panels = w.panels();
    let n_tb = n_tokens.div_ceil(TOK_BLOCK);
    let outp = OutPtr(out.as_mut_ptr());
    let outp = &outp;
    pool.run(panels * n_tb, &|task| {
        let (p, tb) = (task % panels, task / panels);
        let (t0, t1) = (tb * TOK_BLOCK, ((tb + 1) * TOK_BLOCK).min(n_tokens));
        let panel = &w.data[p * cols * PR..(p + 1) * cols * PR];
        let r0 = p * PR;
        let nr = PR.min(w.rows - r0);
        let bias = epi.bias.map(|b| &b[r0..r0 + nr]);
        // A short last tile is copied, zero-padded to MT tokens, so that the kernel always
        // runs MT tokens (the padding is computed, never stored).
        let mut pad: Vec<f32> = Vec::new();
        let mut k0 = 0;
        while k0 < cols {
            let kc = KC.min(cols - k0);
            let mut t = t0;
            while t < t1 {
                let nt = MT.min(t1 - t);
                let (xs, ld_x) = if nt == MT {
                    (&x[t * cols + k0..(t + MT - 1) * cols + k0 + kc], cols)
                } else {
                    pad.clear();
                    pad.resize(MT * kc, 0.0);
                    for j in 0..nt {
                        let src = &x[(t + j) * cols + k0..(t + j) * cols + k0 + kc];
                        pad[j * kc..(j + 1) * kc].copy_from_slice(src);
                    }
                    (&pad[..], kc)
                };
                // SAFETY: AVX-512F was detected (`isa`); the panel block holds kc × 32 and
                // `xs` MT rows of kc at stride ld_x; rows r0..r0 + nr of tokens t..t + nt lie
                // inside `out` (n_tokens × rows) and belong to this task only.
                unsafe {
                    x86::avx512_block(
                        &panel[k0 * PR..(k0 + kc) * PR],
                        xs,
                        ld_x,
                        kc,
                        (k0 == 0, k0 + kc == cols),
                        nt,
                        nr,
                        bias,
                        epi.gelu,
                        outp.0.add(t * w.rows + r0),
                        w.rows,
                    )
                };
                t += nt;
            }
            k0 += kc;
        }
    });
}

/// Store a tile `tile[j * 32 + i]` (token `j < nt`, panel row `i < nr`) with the epilogue.
#[allow(clippy::too_many_arguments)]
fn store_tile(
    tile: &[f32],
    nt: usize,
    nr: usize,
    bias: Option<&[f32]>,
    gelu: bool,
    dst: *mut f32,
    ld: usize,
) {
    for j in 0..nt {
        for i in 0..nr {
            let mut v = tile[j * PR + i];
            if let Some(b) = bias {
                v += b[i];
            }
            if gelu {
                v = gelu_ref(v);
            }
            // SAFETY: the caller owns rows 0..nr of tokens 0..nt at `dst` with stride `ld`.
            unsafe { *dst.add(j * ld + i) = v };
        }
    }
}

/// Portable micro-kernel: one chain per (token `j < nt`, panel row `i`).
#[allow(clippy::too_many_arguments)]
fn portable(
    panel: &[f32],
    cols: usize,
    xs: &[f32],
    nt: usize,
    nr: usize,
    bias: Option<&[f32]>,
    gelu: bool,
    dst: *mut f32,
    ld: usize,
) {
    let mut tile = [0f32; PR * MT];
    for j in 0..nt {
        let mut acc = [0f32; PR];
        let xr = &xs[j * cols..(j + 1) * cols];
        for (k, &xv) in xr.iter().enumerate() {
            let wk = &panel[k * PR..(k + 1) * PR];
            for i in 0..PR {
                acc[i] = wk[i].mul_add(xv, acc[i]);
            }
        }
        tile[j * PR..(j + 1) * PR].copy_from_slice(&acc);
    }
    store_tile(&tile, nt, nr, bias, gelu, dst, ld);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{store_tile, MT, PR};
    use crate::vmath::x86::gelu512;

    /// One cache block of a 32-row × `MT`-token tile: `kc` columns of the panel (`w`, `kc × 32`)
    /// and of `MT` token rows (`x`, row `j` at `j · ld_x`). On the first block the accumulators start
    /// at zero, otherwise from `dst`; the last block applies bias and GELU. Rows `nr..32` and
    /// tokens `nt..MT` are computed but never stored.
    ///
    /// # Safety
    /// AVX-512F must be available; rows `0..nr` of tokens `0..nt` at `dst` (stride `ld`) are
    /// readable and writable by the caller alone.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn avx512_block(
        w: &[f32],
        x: &[f32],
        ld_x: usize,
        kc: usize,
        (first, last): (bool, bool),
        nt: usize,
        nr: usize,
        bias: Option<&[f32]>,
        gelu: bool,
        dst: *mut f32,
        ld: usize,
    ) {
        assert!(w.len() >= kc * PR && x.len() >= (MT - 1) * ld_x + kc && nt <= MT && nr <= PR);
        let m = if nr == PR { u32::MAX } else { (1u32 << nr) - 1 };
        let (m0, m1) = (m as u16, (m >> 16) as u16);
        let mut lo = [_mm512_setzero_ps(); MT];
        let mut hi = [_mm512_setzero_ps(); MT];
        if !first {
            for j in 0..MT {
                if j < nt {
                    // SAFETY: rows 0..nr of token j are the caller's (masked).
                    unsafe {
                        lo[j] = _mm512_maskz_loadu_ps(m0, dst.add(j * ld));
                        hi[j] = _mm512_maskz_loadu_ps(m1, dst.add(j * ld + 16));
                    }
                }
            }
        }
        let (wp, xp) = (w.as_ptr(), x.as_ptr());
        for k in 0..kc {
            // SAFETY: k < kc; the extents were checked above.
            unsafe {
                let w0 = _mm512_loadu_ps(wp.add(k * PR));
                let w1 = _mm512_loadu_ps(wp.add(k * PR + 16));
                for j in 0..MT {
                    let xv = _mm512_set1_ps(*xp.add(j * ld_x + k));
                    lo[j] = _mm512_fmadd_ps(w0, xv, lo[j]);
                    hi[j] = _mm512_fmadd_ps(w1, xv, hi[j]);
                }
            }
        }
        let e = if last {
            let (b0, b1) = match bias {
                // SAFETY: the masks cover only b[0..nr].
                Some(b) => unsafe {
                    (
                        _mm512_maskz_loadu_ps(m0, b.as_ptr()),
                        _mm512_maskz_loadu_ps(m1, b.as_ptr().add(16)),
                    )
                },
                None => (_mm512_setzero_ps(), _mm512_setzero_ps()),
            };
            Some(Epi {
                has_bias: bias.is_some(),
                b0,
                b1,
                gelu,
            })
        } else {
            None
        };
        for j in 0..MT {
            if j < nt {
                let (a, b) = match &e {
                    Some(e) => (finish(lo[j], e.b0, e), finish(hi[j], e.b1, e)),
                    None => (lo[j], hi[j]),
                };
                // SAFETY: the masks cover rows 0..nr of token j, owned by the caller.
                unsafe {
                    _mm512_mask_storeu_ps(dst.add(j * ld), m0, a);
                    _mm512_mask_storeu_ps(dst.add(j * ld + 16), m1, b);
                }
            }
        }
    }

    struct Epi {
        has_bias: bool,
        b0: __m512,
        b1: __m512,
        gelu: bool,
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn finish(v: __m512, b: __m512, e: &Epi) -> __m512 {
        let v = if e.has_bias { _mm512_add_ps(v, b) } else { v };
        if e.gelu {
            gelu512(v)
        } else {
            v
        }
    }

    /// # Safety
    /// AVX2 and FMA must be available; extents as for `avx512`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2(
        panel: &[f32],
        cols: usize,
        xs: &[f32],
        nt: usize,
        nr: usize,
        bias: Option<&[f32]>,
        gelu: bool,
        dst: *mut f32,
        ld: usize,
    ) {
        assert!(panel.len() >= cols * PR && xs.len() >= nt * cols && nt <= MT && nr <= PR);
        let mut tile = [0f32; PR * MT];
        let mut j0 = 0;
        while j0 < nt {
            let n = 6.min(nt - j0);
            for half in 0..2 {
                // SAFETY: same contract as this function's; the tile holds MT × 32.
                unsafe {
                    match n {
                        1 => k256::<1>(panel.as_ptr(), half, cols, xs.as_ptr(), j0, &mut tile),
                        2 => k256::<2>(panel.as_ptr(), half, cols, xs.as_ptr(), j0, &mut tile),
                        3 => k256::<3>(panel.as_ptr(), half, cols, xs.as_ptr(), j0, &mut tile),
                        4 => k256::<4>(panel.as_ptr(), half, cols, xs.as_ptr(), j0, &mut tile),
                        5 => k256::<5>(panel.as_ptr(), half, cols, xs.as_ptr(), j0, &mut tile),
                        _ => k256::<6>(panel.as_ptr(), half, cols, xs.as_ptr(), j0, &mut tile),
                    }
                }
            }
            j0 += n;
        }
        store_tile(&tile, nt, nr, bias, gelu, dst, ld);
    }

    /// 16 panel rows (`half`) × `T` tokens from token `j0`, into `tile[j * 32 + half * 16 ..]`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn k256<const T: usize>(
        w: *const f32,
        half: usize,
        cols: usize,
        x: *const f32,
        j0: usize,
        tile: &mut [f32; PR * MT],
    ) {
        let mut lo = [_mm256_setzero_ps(); T];
        let mut hi = [_mm256_setzero_ps(); T];
        let w = unsafe { w.add(half * 16) };
        let x = unsafe { x.add(j0 * cols) };
        for k in 0..cols {
            // SAFETY: k < cols; the caller checked the extents.
            let (w0, w1) = unsafe {
                (
                    _mm256_loadu_ps(w.add(k * PR)),
                    _mm256_loadu_ps(w.add(k * PR + 8)),
                )
            };
            for j in 0..T {
                let xv = _mm256_set1_ps(unsafe { *x.add(j * cols + k) });
                lo[j] = _mm256_fmadd_ps(w0, xv, lo[j]);
                hi[j] = _mm256_fmadd_ps(w1, xv, hi[j]);
            }
        }
        for j in 0..T {
            let o = (j0 + j) * PR + half * 16;
            // SAFETY: o + 16 <= MT × 32 since j0 + j < MT.
            unsafe {
                _mm256_storeu_ps(tile.as_mut_ptr().add(o), lo[j]);
                _mm256_storeu_ps(tile.as_mut_ptr().add(o + 8), hi[j]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::lcg;

    #[test]
    fn matches_reference_bitwise_across_isas_and_batches() {
        let pool = ThreadPool::new(2);
        let mut seed = 3u64;
        let shapes = [
            (37, 50, 1),
            (48, 96, 29),
            (16, 7, 200),
            (5, 3, 15),
            (70, 33, 13),
            (96, 64, 97),
            (17, 128, 12),
            (33, 5, 25),
            // Several cache blocks of columns (KC), ragged last block.
            (40, 400, 30),
            (64, 2 * KC, 14),
            (9, KC + 1, 101),
        ];
        for (rows, cols, n) in shapes {
            let w: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut seed)).collect();
            let x: Vec<f32> = (0..n * cols).map(|_| lcg(&mut seed)).collect();
            let bias: Vec<f32> = (0..rows).map(|_| lcg(&mut seed)).collect();
            let p = PackedF32::new(&w, rows, cols).unwrap();
            let mut chain = vec![0f32; n * rows];
            for t in 0..n {
                for r in 0..rows {
                    let mut acc = 0f32;
                    for k in 0..cols {
                        acc = w[r * cols + k].mul_add(x[t * cols + k], acc);
                    }
                    chain[t * rows + r] = acc;
                }
            }
            let mut isas = vec![Isa::Portable];
            #[cfg(target_arch = "x86_64")]
            {
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    isas.push(Isa::Avx2);
                }
                if is_x86_feature_detected!("avx512f") {
                    isas.push(Isa::Avx512);
                }
            }
            for (with_bias, gelu) in [(false, false), (true, false), (true, true), (false, true)] {
                let want: Vec<f32> = chain
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| {
                        let v = if with_bias { v + bias[i % rows] } else { v };
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
                for &isa in &isas {
                    let mut out = vec![f32::NAN; n * rows];
                    gemm_with(isa, &pool, &p, &x, n, epi, &mut out);
                    assert_eq!(
                        out, want,
                        "{rows}x{cols} n={n} bias={with_bias} gelu={gelu}"
                    );
                    // One token alone: the same bits.
                    let t = n / 2;
                    let mut one = vec![0f32; rows];
                    let xt = &x[t * cols..(t + 1) * cols];
                    gemm_with(isa, &pool, &p, xt, 1, epi, &mut one);
                    assert_eq!(one, want[t * rows..(t + 1) * rows].to_vec());
                }
            }
        }
        assert!(PackedF32::new(&[0.0; 5], 2, 3).is_err());
    }
}
