//! Element-wise and row-wise ops of a transformer step. All work in place or into
//! caller-provided buffers; none allocates.

/// RMS norm of `x` into `out`, scaled by `w`: `out = x / sqrt(mean(x²) + eps) * w`, in
/// llama.cpp's arithmetic (`ggml_compute_forward_rms_norm_f32` followed by the weight's MUL):
/// the squares are rounded to f32 and summed in f64 in index order, `mean` is rounded to f32,
/// `scale = 1 / sqrtf(mean + eps)`, and `out = (x * scale) * w` (two roundings).
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let sum: f64 = x.iter().map(|v| (v * v) as f64).sum();
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for ((o, v), g) in out.iter_mut().zip(x).zip(w) {
        *o = v * scale * g;
    }
}

/// Layer norm (BERT): `out = (x - mean) / sqrt(var + eps) * w + b`.
pub fn layer_norm(x: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let scale = 1.0 / (var + eps).sqrt();
    for (((o, v), g), c) in out.iter_mut().zip(x).zip(w).zip(b) {
        *o = (v - mean) * scale * g + c;
    }
}

/// The ratio of consecutive rotary frequencies, as llama.cpp computes it:
/// `powf(freq_base, -2 / n_dims)`.
pub fn rope_theta_scale(head_dim: usize, freq_base: f32) -> f32 {
    freq_base.powf(-2.0 / head_dim as f32)
}

/// The rotation of position `pos` into `cache` (`cos, sin` per pair, `cache.len()` = head
/// dim), as llama.cpp's `ggml_rope_cache_init` builds it without YaRN or frequency factors:
/// the angle starts at `pos` as f32 and is multiplied by `theta_scale` (rounded to f32) after
/// each pair; `cos` and `sin` are the C library's `cosf` and `sinf`.
pub fn rope_cache(pos: usize, theta_scale: f32, cache: &mut [f32]) {
    let mut theta = pos as f32;
    for cs in cache.chunks_exact_mut(2) {
        cs[0] = theta.cos();
        cs[1] = theta.sin();
        theta *= theta_scale;
    }
}

/// Rotary embedding on one head, GGML "normal" mode (adjacent pairs `(x[2i], x[2i+1])`), as
/// used by llama-architecture GGUF files, with a rotation from `rope_cache`; the arithmetic of
/// llama.cpp's `rotate_pairs` as GCC compiles it (read in its binary, checked by
/// `ggml_ops_give_llama_cpp_bits`): the pairs it vectorizes (all but the last pair of an odd
/// count) are contracted to `fma(x0, cos, -(x1·sin))` and `fma(x0, sin, x1·cos)`; a last odd
/// pair rounds both products (`x0·cos - x1·sin`, `x0·sin + x1·cos`).
pub fn rope_inplace(x: &mut [f32], cache: &[f32]) {
    assert_eq!(x.len(), cache.len(), "rope head size");
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static FMA: OnceLock<bool> = OnceLock::new();
        if *FMA.get_or_init(|| is_x86_feature_detected!("fma")) {
            // SAFETY: FMA was detected at run time.
            return unsafe { rope_fma(x, cache) };
        }
    }
    rope_body(x, cache)
}

/// `rope_body` compiled with hardware fused multiply-adds (the same bits: `mul_add` is exact
/// either way, this only avoids the library call).
///
/// # Safety
/// The CPU must support FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn rope_fma(x: &mut [f32], cache: &[f32]) {
    rope_body(x, cache)
}

#[inline(always)]
fn rope_body(x: &mut [f32], cache: &[f32]) {
    let pairs = x.len() / 2;
    let fused = pairs & !1;
    for (p, cs) in x.chunks_exact_mut(2).zip(cache.chunks_exact(2)).take(fused) {
        let (c, s) = (cs[0], cs[1]);
        let (x0, x1) = (p[0], p[1]);
        p[0] = x0.mul_add(c, -(x1 * s));
        p[1] = x0.mul_add(s, x1 * c);
    }
    if fused < pairs {
        let (c, s) = (cache[2 * fused], cache[2 * fused + 1]);
        let (x0, x1) = (x[2 * fused], x[2 * fused + 1]);
        x[2 * fused] = x0 * c - x1 * s;
        x[2 * fused + 1] = x0 * s + x1 * c;
    }
}

/// Numerically stable softmax in place.
pub fn softmax_inplace(x: &mut [f32]) {
    let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - m).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// SwiGLU on one row: `gate = silu(gate) * up`, in place on `gate`, with llama.cpp's
/// arithmetic (`vmath::swiglu_row`: ggml's vector `expf` on 16-element chunks, the C library's
/// `expf` on the tail). Rows must be passed one at a time: the chunks start at the row start.
pub fn swiglu_inplace(gate: &mut [f32], up: &[f32]) {
    crate::vmath::swiglu_row(gate, up)
}

/// GELU (erf form, as BERT uses): `vmath::gelu_inplace` (AVX-512 when available).
pub fn gelu_inplace(x: &mut [f32]) {
    crate::vmath::gelu_inplace(x)
}

/// Dot product in a fixed left-to-right order.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Dot product with a fixed 16-lane order: lane `i` sums the products at indices `≡ i (mod
/// 16)` in index order, then the lanes fold pairwise (16→8→4→2→1). Plain code that the
/// compiler vectorizes; the same bits on every CPU and for every caller.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
pub fn dot16(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot16 lengths");
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    for (i, (x, y)) in ra.iter().zip(rb).enumerate() {
        acc[i] += x * y;
    }
    let mut w = 8;
    while w > 0 {
        for i in 0..w {
            acc[i] += acc[i + w];
        }
        w /= 2;
    }
    acc[0]
}

/// Most key/value rows `attend_rows` takes at once.
pub const ATTEND_MAX_ROWS: usize = 64;

/// Running state of one query's online softmax: the largest score so far `m`, the sum of
/// `exp(score - m)` so far `l`, and (in the caller's buffer) the weighted sum of values.
#[derive(Clone, Copy, Debug)]
pub struct SoftmaxState {
    pub m: f32,
    pub l: f32,
}

impl Default for SoftmaxState {
    fn default() -> Self {
        Self {
            m: f32::NEG_INFINITY,
            l: 0.0,
        }
    }
}

/// Fold `n` consecutive key/value rows into one query's attention: row `p` of the keys is
/// `k[p * stride..][..q.len()]`, of the values `v[p * stride..][..q.len()]`. Scores are
/// `dot16(q, key) * scale`; the state is rescaled once per call to the rows' largest score,
/// then every row adds `exp(score - m)` times its value to `acc`. The result depends only on
/// how the rows are grouped into calls, so callers group by position (cache block).
///
/// Portable code, and (on x86-64) an AVX-512 kernel that runs the same element-wise operations
/// in the same order (no fused multiply-adds), so the bits agree.
#[allow(clippy::too_many_arguments)]
pub fn attend_rows(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    stride: usize,
    n: usize,
    scale: f32,
    st: &mut SoftmaxState,
    acc: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static WIDE: OnceLock<bool> = OnceLock::new();
        if *WIDE.get_or_init(|| {
            is_x86_feature_detected!("avx512f")
                && std::env::var_os("FERRY_KERNELS").is_none_or(|v| v != "scalar")
        }) {
            // SAFETY: AVX-512F was detected at run time.
            return unsafe { attend_rows_avx512(q, k, v, stride, n, scale, st, acc) };
        }
    }
    attend_rows_body(q, k, v, stride, n, scale, st, acc)
}

/// The AVX-512 build of `attend_rows_body`: the same IEEE operations in the same order, so the
/// same bits, but organised for 16 lanes. Each key's `dot16` partial sums (lane `i` = indices
/// `≡ i mod 16`) are kept in one vector per key, and the 16→8→4→2→1 lane folds of 16 keys are
/// done together by a transposing reduction (each level adds the same pairs of partial sums
/// as `dot16`'s fold; IEEE addition is commutative, so the bits are those of `dot16`). The
/// query and the output accumulator stay in registers for head sizes that are a multiple of
/// 16 up to 128; other head sizes take the portable body (compiled for AVX-512).
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_rows_avx512(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    stride: usize,
    n: usize,
    scale: f32,
    st: &mut SoftmaxState,
    acc: &mut [f32],
) {
    let hd = q.len();
    if hd.is_multiple_of(16) {
        let f = match hd / 16 {
            1 => attend_x86::rows::<1>,
            2 => attend_x86::rows::<2>,
            3 => attend_x86::rows::<3>,
            4 => attend_x86::rows::<4>,
            5 => attend_x86::rows::<5>,
            6 => attend_x86::rows::<6>,
            7 => attend_x86::rows::<7>,
            8 => attend_x86::rows::<8>,
            _ => return attend_rows_body(q, k, v, stride, n, scale, st, acc),
        };
        // SAFETY: AVX-512F is available (this function's contract); `rows` checks bounds.
        return unsafe { f(q, k, v, stride, n, scale, st, acc) };
    }
    attend_rows_body(q, k, v, stride, n, scale, st, acc)
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod attend_x86 {
    use super::{SoftmaxState, ATTEND_MAX_ROWS};
    use std::arch::x86_64::*;

    /// Fold 16 vectors of 16 lane sums (vector `p` = key `p`) into one vector whose lane `p`
    /// is `dot16`'s fold of vector `p`: lanes `i + 8` onto `i`, then `+ 4`, `+ 2`, `+ 1`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(crate) fn fold16(a: &[__m512; 16]) -> __m512 {
        // Level 1: [p lo 8 | p+1 lo 8] + [p hi 8 | p+1 hi 8]; b[j] holds keys 2j, 2j+1 (8 each).
        let b: [__m512; 8] = std::array::from_fn(|j| {
            let (x, y) = (a[2 * j], a[2 * j + 1]);
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b01_00_01_00>(x, y),
                _mm512_shuffle_f32x4::<0b11_10_11_10>(x, y),
            )
        });
        // Level 2: 128-bit chunk k of c[m] holds key 4m + k's 4 partial sums.
        let c: [__m512; 4] = std::array::from_fn(|m| {
            let (x, y) = (b[2 * m], b[2 * m + 1]);
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b10_00_10_00>(x, y),
                _mm512_shuffle_f32x4::<0b11_01_11_01>(x, y),
            )
        });
        // Level 3: chunk k of d[m] holds keys 8m + k and 8m + 4 + k, 2 partial sums each.
        let d: [__m512; 2] = std::array::from_fn(|m| {
            let (x, y) = (c[2 * m], c[2 * m + 1]);
            _mm512_add_ps(
                _mm512_shuffle_ps::<0b01_00_01_00>(x, y),
                _mm512_shuffle_ps::<0b11_10_11_10>(x, y),
            )
        });
        // Level 4: lane 4k + j holds key 4j + k; put key p in lane p.
        let e = _mm512_add_ps(
            _mm512_shuffle_ps::<0b10_00_10_00>(d[0], d[1]),
            _mm512_shuffle_ps::<0b11_01_11_01>(d[0], d[1]),
        );
        let idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        _mm512_permutexvar_ps(idx, e)
    }

    /// `attend_rows_body` for head size `16 * NC`.
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn rows<const NC: usize>(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        stride: usize,
        n: usize,
        scale: f32,
        st: &mut SoftmaxState,
        acc: &mut [f32],
    ) {
        let hd = 16 * NC;
        assert!(q.len() == hd && n <= ATTEND_MAX_ROWS && acc.len() == hd && stride >= hd);
        if n == 0 {
            return;
        }
        assert!(k.len() >= (n - 1) * stride + hd && v.len() >= (n - 1) * stride + hd);
        let (kp, vp) = (k.as_ptr(), v.as_ptr());
        // SAFETY (all loads and stores below): `q` and `acc` hold `hd` floats; keys and values
        // `p < n` start at `p * stride` and hold `hd` floats, inside `k` and `v` (checked).
        let qv: [__m512; NC] =
            std::array::from_fn(|c| unsafe { _mm512_loadu_ps(q.as_ptr().add(16 * c)) });
        // Scores, 16 keys per vector; lanes past `n` are -inf (they never win the max and are
        // never read).
        let mut s = [0f32; ATTEND_MAX_ROWS];
        let mut mx = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut p0 = 0;
        while p0 < n {
            let cnt = (n - p0).min(16);
            let mut a = [_mm512_setzero_ps(); 16];
            for (p, ap) in a.iter_mut().enumerate().take(cnt) {
                let kr = unsafe { kp.add((p0 + p) * stride) };
                let mut t = _mm512_setzero_ps();
                for (c, qc) in qv.iter().enumerate() {
                    let kc = unsafe { _mm512_loadu_ps(kr.add(16 * c)) };
                    t = _mm512_add_ps(t, _mm512_mul_ps(*qc, kc));
                }
                *ap = t;
            }
            let sc = _mm512_mul_ps(fold16(&a), _mm512_set1_ps(scale));
            let m: __mmask16 = if cnt == 16 { 0xffff } else { (1u16 << cnt) - 1 };
            unsafe { _mm512_mask_storeu_ps(s.as_mut_ptr().add(p0), m, sc) };
            mx = _mm512_mask_max_ps(mx, m, mx, sc);
            p0 += 16;
        }
        // The maximum of the scores is exact whatever the order it is taken in.
        let mc = _mm512_reduce_max_ps(mx);
        let mut av: [__m512; NC] =
            std::array::from_fn(|c| unsafe { _mm512_loadu_ps(acc.as_ptr().add(16 * c)) });
        if mc > st.m {
            let c = (st.m - mc).exp();
            st.l *= c;
            let cv = _mm512_set1_ps(c);
            for a in av.iter_mut() {
                *a = _mm512_mul_ps(*a, cv);
            }
            st.m = mc;
        }
        // The weights first, then the values: no call inside the value loop, so the
        // accumulator stays in registers.
        for sp in s[..n].iter_mut() {
            *sp = (*sp - st.m).exp();
            st.l += *sp;
        }
        for (p, &e) in s[..n].iter().enumerate() {
            let ev = _mm512_set1_ps(e);
            let vr = unsafe { vp.add(p * stride) };
            for (c, a) in av.iter_mut().enumerate() {
                let x = unsafe { _mm512_loadu_ps(vr.add(16 * c)) };
                *a = _mm512_add_ps(*a, _mm512_mul_ps(ev, x));
            }
        }
        for (c, a) in av.iter().enumerate() {
            unsafe { _mm512_storeu_ps(acc.as_mut_ptr().add(16 * c), *a) };
        }
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attend_rows_body(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    stride: usize,
    n: usize,
    scale: f32,
    st: &mut SoftmaxState,
    acc: &mut [f32],
) {
    let hd = q.len();
    assert!(n <= ATTEND_MAX_ROWS && acc.len() == hd && stride >= hd);
    if n == 0 {
        return;
    }
    assert!(k.len() >= (n - 1) * stride + hd && v.len() >= (n - 1) * stride + hd);
    let mut s = [0f32; ATTEND_MAX_ROWS];
    for (p, sp) in s[..n].iter_mut().enumerate() {
        *sp = dot16(q, &k[p * stride..p * stride + hd]) * scale;
    }
    let mc = s[..n].iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    if mc > st.m {
        let c = (st.m - mc).exp();
        st.l *= c;
        for a in acc.iter_mut() {
            *a *= c;
        }
        st.m = mc;
    }
    for (p, &sp) in s[..n].iter().enumerate() {
        let e = (sp - st.m).exp();
        st.l += e;
        for (a, x) in acc.iter_mut().zip(&v[p * stride..p * stride + hd]) {
            *a += e * x;
        }
    }
}

/// `y += a * x`.
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (o, v) in y.iter_mut().zip(x) {
        *o += a * v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_is_stable() {
        let mut x = vec![1000.0, 1001.0, 999.0];
        softmax_inplace(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[1] > x[0] && x[0] > x[2]);
    }

    #[test]
    fn rope_at_zero_is_identity_and_preserves_norm() {
        let ts = rope_theta_scale(8, 10000.0);
        let mut cache = [0f32; 8];
        let mut x: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let orig = x.clone();
        rope_cache(0, ts, &mut cache);
        rope_inplace(&mut x, &cache);
        assert_eq!(x, orig);
        rope_cache(17, ts, &mut cache);
        rope_inplace(&mut x, &cache);
        let n0: f32 = orig.iter().map(|v| v * v).sum();
        let n1: f32 = x.iter().map(|v| v * v).sum();
        assert!((n0 - n1).abs() < 1e-3);
    }

    /// llama.cpp's own results (`tests/data/ggml_ops.bin`, made by `scripts/goldens/ggml_ops.c`
    /// from the libggml the fidelity goldens came from, AVX-512 build): RMS norm times its
    /// weight, RoPE (normal mode) and SwiGLU on random rows, ragged lengths included. Ferry's
    /// ops must give these bits on every CPU: the SwiGLU chunks by the AVX-512 kernel where it
    /// runs and by the scalar reference (checked on its own here) everywhere else.
    #[test]
    fn ggml_ops_give_llama_cpp_bits() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/ggml_ops.bin");
        let data = std::fs::read(path).unwrap();
        assert_eq!(&data[..4], b"FGO1");
        let mut pos = 4;
        let mut u32_at = |n: usize| -> Vec<u32> {
            let v = data[pos..pos + 4 * n]
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            pos += 4 * n;
            v
        };
        let f32s = |v: Vec<u32>| -> Vec<f32> { v.into_iter().map(f32::from_bits).collect() };
        let count = u32_at(1)[0];
        let mut seen = [0; 4];
        for _ in 0..count {
            let op = u32_at(1)[0] as usize;
            seen[op] += 1;
            match op {
                1 => {
                    let h = u32_at(3);
                    let (n, rows, eps) = (h[0] as usize, h[1] as usize, f32::from_bits(h[2]));
                    let x = f32s(u32_at(n * rows));
                    let w = f32s(u32_at(n));
                    let want = u32_at(n * rows);
                    let mut y = vec![0f32; n * rows];
                    for (xr, yr) in x.chunks_exact(n).zip(y.chunks_exact_mut(n)) {
                        rms_norm(xr, &w, eps, yr);
                    }
                    let got: Vec<u32> = y.iter().map(|v| v.to_bits()).collect();
                    assert_eq!(got, want, "rms_norm n {n}");
                }
                2 => {
                    let h = u32_at(4);
                    let (hd, heads, nt) = (h[0] as usize, h[1] as usize, h[2] as usize);
                    let base = f32::from_bits(h[3]);
                    let ps = u32_at(nt);
                    let mut x = f32s(u32_at(hd * heads * nt));
                    let want = u32_at(hd * heads * nt);
                    let ts = rope_theta_scale(hd, base);
                    let mut cache = vec![0f32; hd];
                    for (t, xt) in x.chunks_exact_mut(hd * heads).enumerate() {
                        rope_cache(ps[t] as usize, ts, &mut cache);
                        for xh in xt.chunks_exact_mut(hd) {
                            rope_inplace(xh, &cache);
                        }
                    }
                    for (i, (g, w)) in x.iter().zip(&want).enumerate() {
                        let t = i / (hd * heads);
                        assert_eq!(
                            g.to_bits(),
                            *w,
                            "rope hd {hd} base {base} pos {} elem {}: {g} vs {}",
                            ps[t],
                            i % hd,
                            f32::from_bits(*w)
                        );
                    }
                }
                3 => {
                    let h = u32_at(2);
                    let (n, rows) = (h[0] as usize, h[1] as usize);
                    let x = f32s(u32_at(n * rows));
                    let g = f32s(u32_at(n * rows));
                    let want = u32_at(n * rows);
                    let mut y = x.clone();
                    for (yr, gr) in y.chunks_exact_mut(n).zip(g.chunks_exact(n)) {
                        swiglu_inplace(yr, gr);
                    }
                    let got: Vec<u32> = y.iter().map(|v| v.to_bits()).collect();
                    assert_eq!(got, want, "swiglu n {n}");
                    // The scalar references alone (what CPUs without AVX-512 run).
                    let full = n / 16 * 16;
                    let r: Vec<u32> = (0..n * rows)
                        .map(|i| {
                            let f = if i % n < full {
                                crate::vmath::swiglu_chunk_ref
                            } else {
                                crate::vmath::swiglu_tail_ref
                            };
                            f(x[i], g[i]).to_bits()
                        })
                        .collect();
                    assert_eq!(r, want, "swiglu scalar reference n {n}");
                }
                _ => panic!("unknown op {op}"),
            }
        }
        assert!(seen[1] > 0 && seen[2] > 0 && seen[3] > 0, "{seen:?}");
    }

    #[test]
    fn dot16_matches_f64_for_ragged_lengths() {
        let mut seed = 3u64;
        let mut r = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        for n in [0, 1, 7, 15, 16, 17, 33, 64, 100] {
            let a: Vec<f32> = (0..n).map(|_| r()).collect();
            let b: Vec<f32> = (0..n).map(|_| r()).collect();
            let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot16(&a, &b) as f64 - want).abs() < 1e-5, "n {n}");
        }
    }

    #[test]
    fn attend_rows_matches_two_pass_softmax_for_any_grouping() {
        let mut seed = 11u64;
        let mut r = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        for (hd, stride, n) in [
            (24, 40, 1),
            (24, 40, 5),
            (24, 40, 16),
            (24, 40, 37),
            (24, 40, 130),
            (16, 16, 1),
            (16, 20, 17),
            (32, 96, 33),
            (64, 192, 1),
            (64, 192, 15),
            (64, 64, 16),
            (64, 192, 49),
            (64, 200, 130),
            (128, 130, 64),
            (128, 128, 70),
            (144, 150, 23),
        ] {
            let q: Vec<f32> = (0..hd).map(|_| 4.0 * r()).collect();
            let k: Vec<f32> = (0..n * stride).map(|_| 4.0 * r()).collect();
            let v: Vec<f32> = (0..n * stride).map(|_| r()).collect();
            let scale = 0.3;
            let s: Vec<f64> = (0..n)
                .map(|p| {
                    (0..hd)
                        .map(|j| q[j] as f64 * k[p * stride + j] as f64)
                        .sum::<f64>()
                        * scale as f64
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
            let want: Vec<f64> = (0..hd)
                .map(|j| {
                    (0..n)
                        .map(|p| (s[p] - m).exp() * v[p * stride + j] as f64)
                        .sum::<f64>()
                        / z
                })
                .collect();
            for group in [1, 3, 16, 64] {
                let mut st = SoftmaxState::default();
                let mut acc = vec![0f32; hd];
                let mut p = 0;
                while p < n {
                    let c = group.min(n - p);
                    let o = p * stride;
                    attend_rows(&q, &k[o..], &v[o..], stride, c, scale, &mut st, &mut acc);
                    p += c;
                }
                // The dispatched (possibly AVX-512) build agrees bit for bit with the portable one.
                let mut st2 = SoftmaxState::default();
                let mut acc2 = vec![0f32; hd];
                let mut p = 0;
                while p < n {
                    let c = group.min(n - p);
                    let o = p * stride;
                    attend_rows_body(&q, &k[o..], &v[o..], stride, c, scale, &mut st2, &mut acc2);
                    p += c;
                }
                assert_eq!(st.l.to_bits(), st2.l.to_bits());
                assert_eq!(
                    acc.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    acc2.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
                );
                for j in 0..hd {
                    let got = acc[j] / st.l;
                    assert!((got as f64 - want[j]).abs() < 1e-5, "n {n} group {group}");
                }
            }
        }
    }
}
