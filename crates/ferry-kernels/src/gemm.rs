//! Dense F32 matrix products `out = x · Wᵀ` with a packed weight layout, for encoders (BERT)
//! whose batches have hundreds of tokens: register-blocked, many tokens per weight load.
//!
//! `PackedF32` stores `W` (`rows × cols`) in panels of 16 rows, transposed so that the 16 row
//! values of one column are contiguous. A micro-kernel keeps a tile of 16 rows × up to `MT`
//! tokens in registers and walks `k = 0..cols`, one fused multiply-add per (row, token, k).
//!
//! Every output element is the same chain `acc = fma(w[k], x[k], acc)` for `k = 0..cols` from
//! zero, whatever the tile, the batch size or the instruction set (AVX-512F, AVX2+FMA, or
//! portable `f32::mul_add`), so results are bit-identical across batches and backends.

// The micro-kernels index registers and lanes by position.
#![allow(clippy::needless_range_loop)]

use crate::pool::ThreadPool;
use crate::KernelError;

/// Rows per panel.
const PR: usize = 16;
/// Tokens per task.
const TOK_BLOCK: usize = 96;

/// A weight matrix in the packed panel layout.
#[derive(Clone)]
pub struct PackedF32 {
    rows: usize,
    cols: usize,
    /// `panels × cols × 16`, zero-padded past `rows`.
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

/// `out[t * rows + r] = Σ_k x[t * cols + k] · W[r][k]` for `t < n_tokens`.
pub fn gemm_f32(pool: &ThreadPool, w: &PackedF32, x: &[f32], n_tokens: usize, out: &mut [f32]) {
    gemm_with(isa(), pool, w, x, n_tokens, out)
}

fn gemm_with(
    isa: Isa,
    pool: &ThreadPool,
    w: &PackedF32,
    x: &[f32],
    n_tokens: usize,
    out: &mut [f32],
) {
    assert_eq!(x.len(), n_tokens * w.cols, "activation shape");
    assert_eq!(out.len(), n_tokens * w.rows, "output shape");
    if n_tokens == 0 || w.rows == 0 {
        return;
    }
    let panels = w.panels();
    let n_tb = n_tokens.div_ceil(TOK_BLOCK);
    let outp = OutPtr(out.as_mut_ptr());
    let outp = &outp;
    pool.run(panels * n_tb, &|task| {
        let (p, tb) = (task % panels, task / panels);
        let (t0, t1) = (tb * TOK_BLOCK, ((tb + 1) * TOK_BLOCK).min(n_tokens));
        let panel = &w.data[p * w.cols * PR..(p + 1) * w.cols * PR];
        let nr = PR.min(w.rows - p * PR);
        let mut tile = [0f32; PR * 16];
        let mt = match isa {
            Isa::Portable => 4,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => 6,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => 14,
        };
        let mut t = t0;
        while t < t1 {
            let nt = mt.min(t1 - t);
            let xs = &x[t * w.cols..(t + nt) * w.cols];
            match isa {
                Isa::Portable => portable(panel, w.cols, xs, nt, &mut tile),
                // SAFETY: the feature was detected by `isa()`; slices are sized as the kernel
                // reads them (panel: cols × 16, xs: nt × cols, tile: ≥ nt × 16).
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => unsafe { x86::avx2(panel, w.cols, xs, nt, &mut tile) },
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => unsafe { x86::avx512(panel, w.cols, xs, nt, &mut tile) },
            }
            for j in 0..nt {
                for i in 0..nr {
                    // SAFETY: (t + j, p * 16 + i) is inside `out` and written by this task only.
                    unsafe { *outp.0.add((t + j) * w.rows + p * PR + i) = tile[j * PR + i] };
                }
            }
            t += nt;
        }
    });
}

/// Portable micro-kernel: `tile[j * 16 + i]` for token `j < nt`, panel row `i`.
fn portable(panel: &[f32], cols: usize, xs: &[f32], nt: usize, tile: &mut [f32]) {
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
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::PR;

    macro_rules! dispatch {
        ($f:ident, $nt:expr, $($arg:expr),*) => {
            match $nt {
                1 => $f::<1>($($arg),*),
                2 => $f::<2>($($arg),*),
                3 => $f::<3>($($arg),*),
                4 => $f::<4>($($arg),*),
                5 => $f::<5>($($arg),*),
                6 => $f::<6>($($arg),*),
                7 => $f::<7>($($arg),*),
                8 => $f::<8>($($arg),*),
                9 => $f::<9>($($arg),*),
                10 => $f::<10>($($arg),*),
                11 => $f::<11>($($arg),*),
                12 => $f::<12>($($arg),*),
                13 => $f::<13>($($arg),*),
                14 => $f::<14>($($arg),*),
                n => panic!("token tile {n} is larger than 14"),
            }
        };
    }

    /// # Safety
    /// AVX-512F must be available; `panel` holds `cols × 16`, `xs` `nt × cols`, `tile` ≥ `nt × 16`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn avx512(
        panel: &[f32],
        cols: usize,
        xs: &[f32],
        nt: usize,
        tile: &mut [f32],
    ) {
        assert!(panel.len() >= cols * PR && xs.len() >= nt * cols && tile.len() >= nt * PR);
        // SAFETY: same contract as this function's.
        unsafe {
            dispatch!(
                k512,
                nt,
                panel.as_ptr(),
                cols,
                xs.as_ptr(),
                tile.as_mut_ptr()
            )
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn k512<const T: usize>(w: *const f32, cols: usize, x: *const f32, out: *mut f32) {
        let mut acc = [_mm512_setzero_ps(); T];
        for k in 0..cols {
            // SAFETY: k < cols; the caller checked the extents.
            let wv = unsafe { _mm512_loadu_ps(w.add(k * PR)) };
            for j in 0..T {
                let xv = _mm512_set1_ps(unsafe { *x.add(j * cols + k) });
                acc[j] = _mm512_fmadd_ps(wv, xv, acc[j]);
            }
        }
        for j in 0..T {
            // SAFETY: out holds T × 16.
            unsafe { _mm512_storeu_ps(out.add(j * PR), acc[j]) };
        }
    }

    /// # Safety
    /// AVX2 and FMA must be available; extents as for `avx512`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2(panel: &[f32], cols: usize, xs: &[f32], nt: usize, tile: &mut [f32]) {
        assert!(panel.len() >= cols * PR && xs.len() >= nt * cols && tile.len() >= nt * PR);
        // SAFETY: same contract as this function's.
        unsafe {
            dispatch!(
                k256,
                nt,
                panel.as_ptr(),
                cols,
                xs.as_ptr(),
                tile.as_mut_ptr()
            )
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn k256<const T: usize>(w: *const f32, cols: usize, x: *const f32, out: *mut f32) {
        let mut lo = [_mm256_setzero_ps(); T];
        let mut hi = [_mm256_setzero_ps(); T];
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
            // SAFETY: out holds T × 16.
            unsafe {
                _mm256_storeu_ps(out.add(j * PR), lo[j]);
                _mm256_storeu_ps(out.add(j * PR + 8), hi[j]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    }

    #[test]
    fn matches_reference_bitwise_across_isas_and_batches() {
        let pool = ThreadPool::new(2);
        let mut seed = 3u64;
        for (rows, cols, n) in [(37, 50, 1), (48, 96, 29), (16, 7, 200), (5, 3, 15)] {
            let w: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut seed)).collect();
            let x: Vec<f32> = (0..n * cols).map(|_| lcg(&mut seed)).collect();
            let p = PackedF32::new(&w, rows, cols).unwrap();
            let mut want = vec![0f32; n * rows];
            for t in 0..n {
                for r in 0..rows {
                    let mut acc = 0f32;
                    for k in 0..cols {
                        acc = w[r * cols + k].mul_add(x[t * cols + k], acc);
                    }
                    want[t * rows + r] = acc;
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
            for isa in isas {
                let mut out = vec![0f32; n * rows];
                gemm_with(isa, &pool, &p, &x, n, &mut out);
                assert_eq!(out, want, "{rows}x{cols} n={n}");
                // One token alone: the same bits.
                let t = n / 2;
                let mut one = vec![0f32; rows];
                gemm_with(isa, &pool, &p, &x[t * cols..(t + 1) * cols], 1, &mut one);
                assert_eq!(one, want[t * rows..(t + 1) * rows].to_vec());
            }
        }
        assert!(PackedF32::new(&[0.0; 5], 2, 3).is_err());
    }
}
