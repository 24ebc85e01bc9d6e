//! Element-wise and row-wise ops of a transformer step. All work in place or into
//! caller-provided buffers; none allocates.

/// RMS norm of `x` into `out`, scaled by `w`: `out = x / sqrt(mean(x²) + eps) * w`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ss: f32 = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / (ss + eps).sqrt();
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

/// Precomputed rotary-embedding frequencies `theta^(-2i/d)` for `i < d/2`.
pub fn rope_freqs(head_dim: usize, theta: f32) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| theta.powf(-((2 * i) as f32) / head_dim as f32))
        .collect()
}

/// Rotary embedding on one head, GGML "normal" mode (adjacent pairs `(x[2i], x[2i+1])`), as
/// used by llama-architecture GGUF files.
pub fn rope_inplace(x: &mut [f32], pos: usize, freqs: &[f32]) {
    for (i, f) in freqs.iter().enumerate() {
        let a = pos as f32 * f;
        let (s, c) = a.sin_cos();
        let x0 = x[2 * i];
        let x1 = x[2 * i + 1];
        x[2 * i] = x0 * c - x1 * s;
        x[2 * i + 1] = x0 * s + x1 * c;
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

/// SwiGLU: `gate = silu(gate) * up`, in place on `gate`.
pub fn swiglu_inplace(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
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
/// Compiled twice, for the baseline target and (on x86-64) for AVX-512; both run the same
/// element-wise operations in the same order (no fused multiply-adds), so the bits agree.
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
    attend_rows_body(q, k, v, stride, n, scale, st, acc)
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
        let f = rope_freqs(8, 10000.0);
        let mut x: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let orig = x.clone();
        rope_inplace(&mut x, 0, &f);
        assert_eq!(x, orig);
        rope_inplace(&mut x, 17, &f);
        let n0: f32 = orig.iter().map(|v| v * v).sum();
        let n1: f32 = x.iter().map(|v| v * v).sum();
        assert!((n0 - n1).abs() < 1e-3);
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
        let (hd, stride) = (24, 40);
        for n in [1, 5, 16, 37, 130] {
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
