//! Vectorized `exp` and GELU (erf form) for encoders, with scalar references.
//!
//! Each function exists twice: a scalar reference (`exp_ref`, `gelu_ref`) written with
//! `f32::mul_add`, and an AVX-512F version that performs the same IEEE operations in the same
//! order on 16 lanes (fused multiply-adds, one correctly rounded division, round-half-even), so
//! the two give identical bits; `tests` checks this over random inputs and ragged lengths.
//!
//! `exp` is Cephes' `expf` (range reduction by `ln 2` in two parts, degree-6 polynomial; about
//! 1 ulp). GELU is `x·Φ(x)` with `Φ` from the complementary error function of Numerical
//! Recipes (`erfcc`, fractional error < 1.2e-7), taken without cancellation on both sides:
//! `Φ(x) = erfc(|x|/√2)/2` for `x < 0`, `1 - erfc(x/√2)/2` otherwise.

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const EXP_LO: f32 = -87.0;
const EXP_HI: f32 = 88.0;
const EXP_P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    0.166_666_65,
    0.5,
];
/// Numerical Recipes `erfcc` coefficients, highest power of `t` first, then the constant
/// (as published; f32 rounds them).
#[allow(clippy::excessive_precision)]
const ERFC_P: [f32; 10] = [
    0.170_872_77,
    -0.822_152_23,
    1.488_515_9,
    -1.135_203_98,
    0.278_868_07,
    -0.186_288_06,
    0.096_784_18,
    0.374_091_96,
    1.000_023_7,
    -1.265_512_2,
];
const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// Past this `|x|/√2` erfc is below f32's range; clamping keeps `t` and `z²` finite.
const ERFC_Z_MAX: f32 = 10.0;

/// `e^x` (scalar reference): 0 below -87, inputs above 88 are clamped to 88.
pub fn exp_ref(x: f32) -> f32 {
    if x < EXP_LO {
        return 0.0;
    }
    // max then min (not clamp): NaN becomes EXP_LO, as with _mm512_max_ps/_mm512_min_ps.
    #[allow(clippy::manual_clamp)]
    let x = x.max(EXP_LO).min(EXP_HI);
    let n = (x * LOG2E).round_ties_even();
    let r = n.mul_add(-LN2_HI, x);
    let r = n.mul_add(-LN2_LO, r);
    let mut p = EXP_P[0];
    for c in &EXP_P[1..] {
        p = p.mul_add(r, *c);
    }
    let z = r * r;
    let y = p.mul_add(z, r) + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// `erfc(z)` for `z >= 0` (scalar reference).
fn erfc_pos_ref(z: f32) -> f32 {
    let z = z.min(ERFC_Z_MAX);
    let t = 1.0 / 0.5f32.mul_add(z, 1.0);
    let mut p = ERFC_P[0];
    for c in &ERFC_P[1..] {
        p = p.mul_add(t, *c);
    }
    t * exp_ref((-z).mul_add(z, p))
}

/// GELU, erf form: `x·Φ(x)` (scalar reference).
pub fn gelu_ref(x: f32) -> f32 {
    let h = 0.5 * erfc_pos_ref(x.abs() * FRAC_1_SQRT_2);
    let phi = if x < 0.0 { h } else { 1.0 - h };
    x * phi
}

/// GELU in place (AVX-512F when the CPU has it, else the scalar reference; same bits).
pub fn gelu_inplace(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::gemm::has_avx512() {
        // SAFETY: AVX-512F was detected.
        unsafe { x86::gelu_avx512(x) };
        return;
    }
    for v in x.iter_mut() {
        *v = gelu_ref(*v);
    }
}

/// `x[i] = e^x[i]` in place (AVX-512F when available; same bits as `exp_ref`).
pub fn exp_inplace(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::gemm::has_avx512() {
        // SAFETY: AVX-512F was detected.
        unsafe { x86::exp_avx512_slice(x) };
        return;
    }
    for v in x.iter_mut() {
        *v = exp_ref(*v);
    }
}

/// Constants of ggml's vector `expf` (`ggml_v_expf`, from ARM's optimized routines), as
/// bit patterns of the hex floats in ggml's source.
mod gexp {
    /// `0x1.8p23`: adding it rounds to an integer.
    pub const SHIFT: u32 = 0x4b40_0000;
    /// `0x1.715476p+0` (log2 e).
    pub const LOG2E: u32 = 0x3fb8_aa3b;
    /// `0x1.62e4p-1`, `0x1.7f7d1cp-20`: ln 2 in two parts.
    pub const LN2_HI: u32 = 0x3f31_7200;
    pub const LN2_LO: u32 = 0x35bf_be8e;
    /// `0x1.0e4020p-7`, `0x1.573e2ep-5`, `0x1.555e66p-3`, `0x1.fffdb6p-2`, `0x1.ffffecp-1`.
    pub const C: [u32; 5] = [
        0x3c07_2010,
        0x3d2b_9f17,
        0x3e2a_af33,
        0x3eff_fedb,
        0x3f7f_fff6,
    ];
}

/// `e^x` with the operations of ggml's AVX-512 `ggml_v_expf` (scalar reference): `n` = x·log2e
/// rounded by the `0x1.8p23` shift, `b = x - n·ln2` in two fused steps, a degree-5 polynomial
/// in fused multiply-adds, then `scalef(j, n)` (one rounding: done here in f64, where
/// `j·2^n` is exact); `|n| > 192` gives 0 or infinity.
#[inline]
pub fn ggml_expf_ref(x: f32) -> f32 {
    let f = f32::from_bits;
    let r = f(gexp::SHIFT);
    let z = x.mul_add(f(gexp::LOG2E), r);
    let n = z - r;
    let b = (-n).mul_add(f(gexp::LN2_LO), (-n).mul_add(f(gexp::LN2_HI), x));
    let u = b * b;
    let c = gexp::C.map(f);
    let j = c[0].mul_add(b, c[1]).mul_add(u, c[2].mul_add(b, c[3]));
    let j = j.mul_add(u, c[4].mul_add(b, 1.0));
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    (j as f64 * 2f64.powi(n as i32)) as f32
}

/// One 16-position chunk of ggml's `ggml_vec_soft_max_f32` (AVX-512): `x[i] = expf(x[i] -
/// max)` by ggml's vector `expf`, returning the chunk's `_mm512_reduce_add_ps` (lanes past
/// `x.len()`, masked positions, are 0). `x.len() <= 16`.
pub fn ggml_exp_sub_chunk(x: &mut [f32], max: f32) -> f32 {
    assert!(x.len() <= 16, "chunk of {}", x.len());
    #[cfg(target_arch = "x86_64")]
    if crate::gemm::has_avx512() {
        // SAFETY: AVX-512F was detected; the chunk holds at most 16 floats.
        return unsafe { x86::exp_sub_chunk_avx512(x, max) };
    }
    let mut lanes = [0f32; 16];
    for (l, v) in x.iter_mut().enumerate() {
        *v = ggml_expf_ref(*v - max);
        lanes[l] = *v;
    }
    halve16(lanes)
}

/// `silu(x)·g` as ggml's `ggml_vec_swiglu_f32` computes it on AVX-512 for a lane of a full
/// 16-element chunk: `x / (1 + ggml_v_expf(0 - x)) · g`.
pub fn swiglu_chunk_ref(x: f32, g: f32) -> f32 {
    x / (1.0 + ggml_expf_ref(0.0 - x)) * g
}

/// `silu(x)·g` as ggml's scalar tail computes it: `x / (1 + expf(-x)) · g` with the C
/// library's `expf` (what Rust's `f32::exp` calls).
pub fn swiglu_tail_ref(x: f32, g: f32) -> f32 {
    x / (1.0 + (-x).exp()) * g
}

/// SwiGLU on one row, `gate = silu(gate)·up`, with llama.cpp's arithmetic on AVX-512 CPUs:
/// full 16-element chunks from the row start by `swiglu_chunk_ref`, the rest by
/// `swiglu_tail_ref` (AVX-512F kernel when available; the same bits either way).
pub fn swiglu_row(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "swiglu lengths");
    let full = gate.len() / 16 * 16;
    #[cfg(target_arch = "x86_64")]
    if crate::gemm::has_avx512() {
        // SAFETY: AVX-512F was detected; `up` is as long as `gate` and `full <= gate.len()`.
        unsafe { x86::swiglu_avx512(&mut gate[..full], &up[..full]) };
    } else {
        for (g, u) in gate[..full].iter_mut().zip(up) {
            *g = swiglu_chunk_ref(*g, *u);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    for (g, u) in gate[..full].iter_mut().zip(up) {
        *g = swiglu_chunk_ref(*g, *u);
    }
    for (g, u) in gate[full..].iter_mut().zip(&up[full..]) {
        *g = swiglu_tail_ref(*g, *u);
    }
}

/// Sum in the order of the AVX-512 kernels: 16 lane sums (`i mod 16`, each in order from
/// zero), then halving (`l + 8`, `+ 4`, `+ 2`, `+ 1`).
pub fn lane_sum16(v: impl Iterator<Item = f32>) -> f32 {
    let mut lanes = [0f32; 16];
    for (i, x) in v.enumerate() {
        lanes[i % 16] += x;
    }
    halve16(lanes)
}

fn halve16(mut lanes: [f32; 16]) -> f32 {
    let mut w = 8;
    while w > 0 {
        for l in 0..w {
            lanes[l] += lanes[l + w];
        }
        w /= 2;
    }
    lanes[0]
}

/// `x = layer_norm(x + r)` (BERT's residual + LayerNorm; `r` may be `None`), scalar reference:
/// `s = x + r`; `mean = Σs / n`; `var = Σ(s - mean)² / n` (sums by `lane_sum16`);
/// `out = ((s - mean)·(1/√(var + eps)))·w + b` (the last step one FMA).
pub fn add_layer_norm_ref(x: &mut [f32], r: Option<&[f32]>, w: &[f32], b: &[f32], eps: f32) {
    let n = x.len();
    assert!(w.len() == n && b.len() == n && r.is_none_or(|r| r.len() == n));
    if let Some(r) = r {
        x.iter_mut().zip(r).for_each(|(a, c)| *a += c);
    }
    let mean = lane_sum16(x.iter().copied()) / n as f32;
    let var = lane_sum16(x.iter().map(|v| (v - mean) * (v - mean))) / n as f32;
    let scale = 1.0 / (var + eps).sqrt();
    for ((v, g), c) in x.iter_mut().zip(w).zip(b) {
        *v = ((*v - mean) * scale).mul_add(*g, *c);
    }
}

/// `add_layer_norm_ref` on one row (AVX-512F when available; same bits).
pub fn add_layer_norm(x: &mut [f32], r: Option<&[f32]>, w: &[f32], b: &[f32], eps: f32) {
    #[cfg(target_arch = "x86_64")]
    if crate::gemm::has_avx512() {
        let n = x.len();
        assert!(w.len() == n && b.len() == n && r.is_none_or(|r| r.len() == n));
        // SAFETY: AVX-512F was detected; lengths were checked.
        unsafe { x86::add_layer_norm_avx512(x, r, w, b, eps) };
        return;
    }
    add_layer_norm_ref(x, r, w, b, eps)
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    use super::*;

    /// 16 lanes of `exp_ref`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(crate) fn exp512(x: __m512) -> __m512 {
        let keep = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(x, _mm512_set1_ps(EXP_LO));
        let x = _mm512_min_ps(
            _mm512_max_ps(x, _mm512_set1_ps(EXP_LO)),
            _mm512_set1_ps(EXP_HI),
        );
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(LOG2E)),
        );
        let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-LN2_HI), x);
        let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-LN2_LO), r);
        let mut p = _mm512_set1_ps(EXP_P[0]);
        for c in &EXP_P[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
        }
        let z = _mm512_mul_ps(r, r);
        let y = _mm512_add_ps(_mm512_fmadd_ps(p, z, r), _mm512_set1_ps(1.0));
        let e = _mm512_slli_epi32::<23>(_mm512_add_epi32(
            _mm512_cvtps_epi32(n),
            _mm512_set1_epi32(127),
        ));
        _mm512_maskz_mul_ps(keep, y, _mm512_castsi512_ps(e))
    }

    /// 16 lanes of `gelu_ref`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(crate) fn gelu512(x: __m512) -> __m512 {
        let ax = _mm512_castsi512_ps(_mm512_and_si512(
            _mm512_castps_si512(x),
            _mm512_set1_epi32(0x7fff_ffff),
        ));
        let z = _mm512_min_ps(
            _mm512_mul_ps(ax, _mm512_set1_ps(FRAC_1_SQRT_2)),
            _mm512_set1_ps(ERFC_Z_MAX),
        );
        let one = _mm512_set1_ps(1.0);
        let t = _mm512_div_ps(one, _mm512_fmadd_ps(_mm512_set1_ps(0.5), z, one));
        let mut p = _mm512_set1_ps(ERFC_P[0]);
        for c in &ERFC_P[1..] {
            p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(*c));
        }
        let neg_z = _mm512_sub_ps(_mm512_setzero_ps(), z);
        let e = _mm512_mul_ps(t, exp512(_mm512_fmadd_ps(neg_z, z, p)));
        let h = _mm512_mul_ps(_mm512_set1_ps(0.5), e);
        let neg = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_setzero_ps());
        let phi = _mm512_mask_blend_ps(neg, _mm512_sub_ps(one, h), h);
        _mm512_mul_ps(x, phi)
    }

    /// 16 lanes of `ggml_expf_ref`: ggml's `ggml_v_expf` for AVX-512, operation for operation.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(crate) fn ggml_exp512(x: __m512) -> __m512 {
        let f = |b: u32| _mm512_set1_ps(f32::from_bits(b));
        let r = f(gexp::SHIFT);
        let z = _mm512_fmadd_ps(x, f(gexp::LOG2E), r);
        let n = _mm512_sub_ps(z, r);
        let b = _mm512_fnmadd_ps(n, f(gexp::LN2_LO), _mm512_fnmadd_ps(n, f(gexp::LN2_HI), x));
        let d = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_abs_ps(n), _mm512_set1_ps(192.0));
        let u = _mm512_mul_ps(b, b);
        let c = gexp::C;
        let j = _mm512_fmadd_ps(
            _mm512_fmadd_ps(
                _mm512_fmadd_ps(f(c[0]), b, f(c[1])),
                u,
                _mm512_fmadd_ps(f(c[2]), b, f(c[3])),
            ),
            u,
            _mm512_fmadd_ps(f(c[4]), b, _mm512_set1_ps(1.0)),
        );
        let res = _mm512_scalef_ps(j, n);
        if d == 0 {
            return res;
        }
        let zero = _mm512_setzero_ps();
        let alt = _mm512_mask_blend_ps(
            _mm512_cmp_ps_mask::<_CMP_LE_OQ>(n, zero),
            _mm512_set1_ps(f32::INFINITY),
            zero,
        );
        _mm512_mask_blend_ps(d, res, alt)
    }

    /// `ggml_exp_sub_chunk` for AVX-512: masked load, `ggml_exp512(x - max)`, masked store,
    /// and `halve16` of the lanes (the order of GCC's `_mm512_reduce_add_ps`).
    ///
    /// # Safety
    /// AVX-512F must be available; `x.len() <= 16`.
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn exp_sub_chunk_avx512(x: &mut [f32], max: f32) -> f32 {
        let m = mask(x.len());
        // SAFETY: the mask covers only the chunk's elements.
        unsafe {
            let v = _mm512_maskz_loadu_ps(m, x.as_ptr());
            let e = _mm512_maskz_mov_ps(m, ggml_exp512(_mm512_sub_ps(v, _mm512_set1_ps(max))));
            _mm512_mask_storeu_ps(x.as_mut_ptr(), m, e);
            reduce(e)
        }
    }

    /// `swiglu_chunk_ref` on every element; `gate.len()` a multiple of 16 (ggml's
    /// `ggml_vec_swiglu_f32` main loop with `ggml_v_silu`).
    ///
    /// # Safety
    /// AVX-512F must be available; `up` at least as long as `gate`.
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn swiglu_avx512(gate: &mut [f32], up: &[f32]) {
        assert!(gate.len().is_multiple_of(16) && up.len() >= gate.len());
        let (gp, upp) = (gate.as_mut_ptr(), up.as_ptr());
        let one = _mm512_set1_ps(1.0);
        for i in (0..gate.len()).step_by(16) {
            // SAFETY: i + 16 <= gate.len() <= up.len().
            unsafe {
                let x = _mm512_loadu_ps(gp.add(i));
                let e = ggml_exp512(_mm512_sub_ps(_mm512_setzero_ps(), x));
                let s = _mm512_div_ps(x, _mm512_add_ps(one, e));
                _mm512_storeu_ps(gp.add(i), _mm512_mul_ps(s, _mm512_loadu_ps(upp.add(i))));
            }
        }
    }

    fn mask(n: usize) -> __mmask16 {
        if n >= 16 {
            0xffff
        } else {
            (1u16 << n) - 1
        }
    }

    #[target_feature(enable = "avx512f")]
    fn reduce(v: __m512) -> f32 {
        let mut lanes = [0f32; 16];
        // SAFETY: 16 floats.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), v) };
        super::halve16(lanes)
    }

    /// # Safety
    /// AVX-512F must be available; `r`, `w`, `b` have `x.len()` elements.
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn add_layer_norm_avx512(
        x: &mut [f32],
        r: Option<&[f32]>,
        w: &[f32],
        b: &[f32],
        eps: f32,
    ) {
        let n = x.len();
        let xp = x.as_mut_ptr();
        let mut sum = _mm512_setzero_ps();
        for i in (0..n).step_by(16) {
            let m = mask(n - i);
            // SAFETY: masked to i..n.
            unsafe {
                let mut v = _mm512_maskz_loadu_ps(m, xp.add(i));
                if let Some(r) = r {
                    v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, r.as_ptr().add(i)));
                    _mm512_mask_storeu_ps(xp.add(i), m, v);
                }
                sum = _mm512_add_ps(sum, v);
            }
        }
        let mean = reduce(sum) / n as f32;
        let vm = _mm512_set1_ps(mean);
        let mut sq = _mm512_setzero_ps();
        for i in (0..n).step_by(16) {
            let m = mask(n - i);
            // SAFETY: masked to i..n.
            unsafe {
                let d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, xp.add(i)), vm);
                sq = _mm512_add_ps(sq, _mm512_maskz_mul_ps(m, d, d));
            }
        }
        let var = reduce(sq) / n as f32;
        let scale = _mm512_set1_ps(1.0 / (var + eps).sqrt());
        for i in (0..n).step_by(16) {
            let m = mask(n - i);
            // SAFETY: masked to i..n.
            unsafe {
                let d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, xp.add(i)), vm);
                let g = _mm512_maskz_loadu_ps(m, w.as_ptr().add(i));
                let c = _mm512_maskz_loadu_ps(m, b.as_ptr().add(i));
                let o = _mm512_fmadd_ps(_mm512_mul_ps(d, scale), g, c);
                _mm512_mask_storeu_ps(xp.add(i), m, o);
            }
        }
    }

    /// # Safety
    /// AVX-512F must be available.
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn gelu_avx512(x: &mut [f32]) {
        let n = x.len();
        let p = x.as_mut_ptr();
        let mut i = 0;
        while i < n {
            let m: __mmask16 = if n - i >= 16 {
                0xffff
            } else {
                (1u16 << (n - i)) - 1
            };
            // SAFETY: the mask covers only lanes i..min(i + 16, n), inside `x`.
            unsafe {
                let v = _mm512_maskz_loadu_ps(m, p.add(i));
                _mm512_mask_storeu_ps(p.add(i), m, gelu512(v));
            }
            i += 16;
        }
    }

    /// # Safety
    /// AVX-512F must be available.
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn exp_avx512_slice(x: &mut [f32]) {
        let n = x.len();
        let p = x.as_mut_ptr();
        let mut i = 0;
        while i < n {
            let m: __mmask16 = if n - i >= 16 {
                0xffff
            } else {
                (1u16 << (n - i)) - 1
            };
            // SAFETY: the mask covers only lanes i..min(i + 16, n), inside `x`.
            unsafe {
                let v = _mm512_maskz_loadu_ps(m, p.add(i));
                _mm512_mask_storeu_ps(p.add(i), m, exp512(v));
            }
            i += 16;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::lcg;

    #[test]
    fn exp_ref_is_accurate() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp_ref(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 3e-7, "exp relative error {worst}");
        assert_eq!(exp_ref(0.0), 1.0);
        assert_eq!(exp_ref(-1000.0), 0.0);
        assert!(exp_ref(-86.9) > 0.0);
    }

    #[test]
    fn gelu_ref_matches_f64_erf_form() {
        // Reference: 0.5·x·(1 + erf(x/√2)) with erf from f64 erfc (Numerical Recipes in f64
        // has fractional error 1.2e-7, so compare at that scale, relative to |x| + tiny).
        let (mut worst_rel, mut worst_abs) = (0f64, 0f64);
        let mut x = -12.0f32;
        while x < 12.0 {
            let want = 0.5 * x as f64 * libm_erfc(-(x as f64) / std::f64::consts::SQRT_2);
            let got = gelu_ref(x) as f64;
            worst_abs = worst_abs.max((got - want).abs());
            if x > -6.0 {
                worst_rel = worst_rel.max((got - want).abs() / want.abs().max(1e-30));
            }
            x += 0.00731;
        }
        eprintln!("gelu: worst relative error {worst_rel:e} (x > -6), absolute {worst_abs:e}");
        assert!(worst_rel < 5e-6, "gelu relative error {worst_rel}");
        assert!(worst_abs < 1e-6, "gelu absolute error {worst_abs}");
        assert_eq!(gelu_ref(0.0), 0.0);
        assert!(gelu_ref(f32::INFINITY) == f32::INFINITY);
        assert!(gelu_ref(-1e30).abs() < 1e-30);
        assert!(!gelu_ref(1e30).is_nan());
    }

    /// erfc in f64 by its continued fraction / series, accurate to ~1e-15 (test only).
    fn libm_erfc(x: f64) -> f64 {
        if x < 0.0 {
            return 2.0 - libm_erfc(-x);
        }
        if x < 2.0 {
            // erf by Taylor series.
            let mut sum = 0.0f64;
            let mut term = x;
            let mut n = 0;
            while term.abs() > 1e-18 * sum.abs().max(1e-300) || n < 3 {
                sum += term / (2 * n + 1) as f64;
                n += 1;
                term *= -x * x / n as f64;
                if n > 200 {
                    break;
                }
            }
            1.0 - sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // Continued fraction (Lentz), converges fast for x >= 2.
            let mut f = x;
            let (mut c, mut d) = (x, 0.0);
            for n in 1..200 {
                let a = n as f64 / 2.0;
                d = x + a * d;
                d = 1.0 / d;
                c = x + a / c;
                let delta = c * d;
                f *= delta;
                if (delta - 1.0).abs() < 1e-16 {
                    break;
                }
            }
            (-x * x).exp() / f / std::f64::consts::PI.sqrt()
        }
    }

    #[test]
    fn simd_layer_norm_is_bit_identical_to_reference_and_accurate() {
        let mut seed = 13u64;
        for n in [1usize, 5, 16, 17, 64, 384, 385] {
            let x: Vec<f32> = (0..n).map(|_| lcg(&mut seed) * 4.0 + 1.0).collect();
            let r: Vec<f32> = (0..n).map(|_| lcg(&mut seed)).collect();
            let w: Vec<f32> = (0..n).map(|_| lcg(&mut seed) + 1.0).collect();
            let b: Vec<f32> = (0..n).map(|_| lcg(&mut seed)).collect();
            for res in [None, Some(r.as_slice())] {
                let mut want = x.clone();
                add_layer_norm_ref(&mut want, res, &w, &b, 1e-12);
                let mut got = x.clone();
                add_layer_norm(&mut got, res, &w, &b, 1e-12);
                assert_eq!(got, want, "n {n}");
                // Against f64.
                let s: Vec<f64> = (0..n)
                    .map(|i| x[i] as f64 + res.map_or(0.0, |r| r[i] as f64))
                    .collect();
                let mean = s.iter().sum::<f64>() / n as f64;
                let var = s.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
                for i in 0..n {
                    let o = (s[i] - mean) / (var + 1e-12).sqrt() * w[i] as f64 + b[i] as f64;
                    assert!((want[i] as f64 - o).abs() < 1e-4, "{} vs {o}", want[i]);
                }
            }
        }
    }

    #[test]
    fn simd_gelu_and_exp_are_bit_identical_to_reference() {
        let mut seed = 11u64;
        for len in [0usize, 1, 7, 15, 16, 17, 33, 100, 1000] {
            for scale in [1.0f32, 8.0, 40.0, 250.0] {
                let x: Vec<f32> = (0..len).map(|_| lcg(&mut seed) * scale).collect();
                let mut g = x.clone();
                gelu_inplace(&mut g);
                let want: Vec<u32> = x.iter().map(|&v| gelu_ref(v).to_bits()).collect();
                assert_eq!(g.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want);
                let mut e = x.clone();
                exp_inplace(&mut e);
                let want: Vec<u32> = x.iter().map(|&v| exp_ref(v).to_bits()).collect();
                assert_eq!(e.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want);
            }
        }
    }
}
