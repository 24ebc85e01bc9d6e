//! Causal attention of one query head with the arithmetic of llama.cpp's CPU path as llama-cpp-
//! python runs it (no flash attention, F16 K/V cache, AVX-512 build):
//!
//! 1. keys and values are stored rounded to f16 (`round_f16`, when they enter the cache);
//! 2. the query is rounded to f16, and each score is tinyBLAS's F16 dot product: 16 lanes,
//!    lane `l` = `fma(k[i], q[i], lane)` over `i ≡ l (mod 16)` in index order, then
//!    `_mm512_reduce_add_ps` (lanes `+8`, `+4`, `+2`, `+1`), times the scale;
//! 3. `ggml_soft_max_ext` over the padded row: max; in chunks of 16 positions, ggml's vector
//!    `expf` of `score - max` and `sum += f64(reduce_add(chunk))`; each weight times
//!    `f32(1 / sum)` (masked positions are exactly 0 and only add zeros);
//! 4. the weights are rounded to f16, and each output element is tinyBLAS's F16 dot product of
//!    the weights with that element of every value row (lane = position mod 16).
//!
//! Positions are counted from 0 in the sequence, as llama.cpp's cache cells are for one
//! sequence in a fresh cache. Head sizes that are not a multiple of 16 (where llama.cpp would
//! take another kernel) keep the same lane rule, so the result is still deterministic.
//!
//! Each step has a portable body; on x86-64 the same bodies are compiled with FMA (and AVX-512
//! where present, with ggml's vector `expf` and F16C conversions), which only removes library
//! calls: every operation and its order are the same, so are the bits (`tests`).

use crate::vmath;

/// Lanes of the F16 dot products (tinyBLAS's vector width on AVX-512).
pub const LANES: usize = 16;

/// Round every element to the nearest f16 (ties to even), kept as f32.
pub fn round_f16(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        // SAFETY: F16C and AVX were detected.
        return unsafe { round_f16_f16c(x) };
    }
    for v in x.iter_mut() {
        *v = half::f16::from_f32(*v).to_f32();
    }
}

#[cfg(target_arch = "x86_64")]
fn has_f16c() -> bool {
    use std::sync::OnceLock;
    static F: OnceLock<bool> = OnceLock::new();
    *F.get_or_init(|| is_x86_feature_detected!("f16c") && is_x86_feature_detected!("avx"))
}

#[cfg(target_arch = "x86_64")]
fn has_fma() -> bool {
    use std::sync::OnceLock;
    static F: OnceLock<bool> = OnceLock::new();
    *F.get_or_init(|| is_x86_feature_detected!("fma") && is_x86_feature_detected!("avx2"))
}

/// # Safety
/// The CPU must support F16C and AVX.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn round_f16_f16c(x: &mut [f32]) {
    use std::arch::x86_64::*;
    let mut c = x.chunks_exact_mut(8);
    for ch in &mut c {
        // SAFETY: 8 floats.
        unsafe {
            let v = _mm256_loadu_ps(ch.as_ptr());
            let h = _mm256_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT }>(v);
            _mm256_storeu_ps(ch.as_mut_ptr(), _mm256_cvtph_ps(h));
        }
    }
    for v in c.into_remainder() {
        *v = half::f16::from_f32(*v).to_f32();
    }
}

/// Fold 16 lane sums as `_mm512_reduce_add_ps` does (GCC): `+8`, `+4`, `+2`, `+1`.
#[inline(always)]
fn fold16(mut a: [f32; LANES]) -> f32 {
    let mut w = 8;
    while w > 0 {
        for i in 0..w {
            a[i] += a[i + w];
        }
        w /= 2;
    }
    a[0]
}

/// tinyBLAS's F16 dot product of `a` and `b` (f16 values held as f32): lane `i mod 16`
/// accumulates `fma(a[i], b[i], lane)`, then `fold16`.
#[inline(always)]
pub fn dot_f16_lanes(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot lengths");
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] = x[l].mul_add(y[l], acc[l]);
        }
    }
    for (l, (x, y)) in ra.iter().zip(rb).enumerate() {
        acc[l] = x.mul_add(*y, acc[l]);
    }
    fold16(acc)
}

/// Scores of `n` key rows (`k[p * stride..][..q.len()]`) against the f16-rounded query `q`,
/// times `scale`, into `out[..n]`.
pub fn scores(q: &[f32], k: &[f32], stride: usize, n: usize, scale: f32, out: &mut [f32]) {
    let hd = q.len();
    assert!(out.len() >= n && (n == 0 || k.len() >= (n - 1) * stride + hd));
    #[cfg(target_arch = "x86_64")]
    if crate::gemm::has_avx512() && hd.is_multiple_of(LANES) {
        let f = match hd / LANES {
            1 => scores_avx512::<1>,
            2 => scores_avx512::<2>,
            3 => scores_avx512::<3>,
            4 => scores_avx512::<4>,
            5 => scores_avx512::<5>,
            6 => scores_avx512::<6>,
            7 => scores_avx512::<7>,
            8 => scores_avx512::<8>,
            _ => scores_fma,
        };
        // SAFETY: AVX-512F (hence FMA and AVX2) was detected; bounds were checked above.
        return unsafe { f(q, k, stride, n, scale, out) };
    }
    #[cfg(target_arch = "x86_64")]
    if has_fma() {
        // SAFETY: FMA and AVX2 were detected.
        return unsafe { scores_fma(q, k, stride, n, scale, out) };
    }
    scores_body(q, k, stride, n, scale, out)
}

/// `scores_body` for head size `16 * NC` on AVX-512, 16 keys at a time: one vector of lane
/// sums per key (`fmadd(k, q, lanes)` per 16 elements, as tinyBLAS), and the 16 keys' folds
/// done together by `ops::attend_x86::fold16`, whose levels add the same pairs as `fold16`
/// here (`+8`, `+4`, `+2`, `+1`), so the bits are those of `scores_body`.
///
/// # Safety
/// The CPU must support AVX-512F; `q.len() == 16 * NC`, `out.len() >= n`, and the `n` key rows
/// lie inside `k` (checked by `scores`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn scores_avx512<const NC: usize>(
    q: &[f32],
    k: &[f32],
    stride: usize,
    n: usize,
    scale: f32,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    debug_assert!(q.len() == 16 * NC && out.len() >= n);
    // SAFETY (all loads and stores): `q` holds 16 * NC floats, key `p < n` starts at
    // `p * stride` inside `k` and holds 16 * NC floats, `out` holds `n` floats (masked store).
    let qv: [__m512; NC] =
        std::array::from_fn(|c| unsafe { _mm512_loadu_ps(q.as_ptr().add(16 * c)) });
    let mut p0 = 0;
    while p0 < n {
        let cnt = (n - p0).min(16);
        let mut a = [_mm512_setzero_ps(); 16];
        for (p, ap) in a.iter_mut().enumerate().take(cnt) {
            let kr = unsafe { k.as_ptr().add((p0 + p) * stride) };
            let mut t = _mm512_setzero_ps();
            for (c, qc) in qv.iter().enumerate() {
                t = _mm512_fmadd_ps(unsafe { _mm512_loadu_ps(kr.add(16 * c)) }, *qc, t);
            }
            *ap = t;
        }
        let sc = _mm512_mul_ps(crate::ops::attend_x86::fold16(&a), _mm512_set1_ps(scale));
        let m: __mmask16 = if cnt == 16 { 0xffff } else { (1u16 << cnt) - 1 };
        unsafe { _mm512_mask_storeu_ps(out.as_mut_ptr().add(p0), m, sc) };
        p0 += 16;
    }
}

#[inline(always)]
fn scores_body(q: &[f32], k: &[f32], stride: usize, n: usize, scale: f32, out: &mut [f32]) {
    let hd = q.len();
    for (p, o) in out[..n].iter_mut().enumerate() {
        *o = dot_f16_lanes(&k[p * stride..p * stride + hd], q) * scale;
    }
}

/// # Safety
/// The CPU must support FMA and AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn scores_fma(q: &[f32], k: &[f32], stride: usize, n: usize, scale: f32, out: &mut [f32]) {
    scores_body(q, k, stride, n, scale, out)
}

/// `ggml_soft_max_ext` of one row of scores (positions `0..s.len()` unmasked, the rest of the
/// padded row masked), then the weights rounded to f16, in place.
pub fn softmax_f16(s: &mut [f32]) {
    if s.is_empty() {
        return;
    }
    let max = s.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mut sum = 0f64;
    for ch in s.chunks_mut(LANES) {
        sum += vmath::ggml_exp_sub_chunk(ch, max) as f64;
    }
    let inv = (1.0 / sum) as f32;
    for v in s.iter_mut() {
        *v *= inv;
    }
    round_f16(s);
}

/// Add `n` value rows (`v[r * stride..][..hd]`) weighted by `w[..n]` into the 16-lane
/// accumulator `acc` (`LANES` rows of `hd`): row `r`, at sequence position `p0 + r`, goes to
/// lane `(p0 + r) mod 16` as `acc[lane][j] = fma(v[j], w, acc[lane][j])`.
pub fn accumulate(w: &[f32], v: &[f32], stride: usize, n: usize, p0: usize, acc: &mut [f32]) {
    let hd = acc.len() / LANES;
    assert!(acc.len() == hd * LANES && w.len() >= n);
    assert!(n == 0 || v.len() >= (n - 1) * stride + hd);
    #[cfg(target_arch = "x86_64")]
    if has_fma() {
        // SAFETY: FMA and AVX2 were detected.
        return unsafe { accumulate_fma(w, v, stride, n, p0, acc) };
    }
    accumulate_body(w, v, stride, n, p0, acc)
}

#[inline(always)]
fn accumulate_body(w: &[f32], v: &[f32], stride: usize, n: usize, p0: usize, acc: &mut [f32]) {
    let hd = acc.len() / LANES;
    for (r, &wr) in w[..n].iter().enumerate() {
        let lane = (p0 + r) % LANES;
        let a = &mut acc[lane * hd..(lane + 1) * hd];
        for (x, y) in a.iter_mut().zip(&v[r * stride..r * stride + hd]) {
            *x = y.mul_add(wr, *x);
        }
    }
}

/// # Safety
/// The CPU must support FMA and AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn accumulate_fma(
    w: &[f32],
    v: &[f32],
    stride: usize,
    n: usize,
    p0: usize,
    acc: &mut [f32],
) {
    accumulate_body(w, v, stride, n, p0, acc)
}

/// Fold the 16-lane accumulator into the head's output (`out.len()` = head size).
pub fn finish(acc: &[f32], out: &mut [f32]) {
    let hd = out.len();
    assert_eq!(acc.len(), hd * LANES);
    for (j, o) in out.iter_mut().enumerate() {
        *o = fold16(std::array::from_fn(|l| acc[l * hd + j]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::lcg;

    /// The whole head in the plainest form (f64 where llama.cpp uses it, `mul_add`,
    /// `ggml_expf_ref`, `half` conversions), against the dispatched pieces over ragged
    /// lengths and block splits.
    #[test]
    fn pieces_match_plain_reference() {
        let mut seed = 5u64;
        for (hd, stride, n, bs) in [
            (64, 192, 1, 16),
            (64, 192, 17, 16),
            (64, 64, 100, 32),
            (32, 40, 33, 7),
            (24, 24, 19, 5),
            (128, 130, 64, 64),
        ] {
            let f16r = |x: f32| half::f16::from_f32(x).to_f32();
            let q: Vec<f32> = (0..hd).map(|_| f16r(lcg(&mut seed) * 4.0)).collect();
            let k: Vec<f32> = (0..n * stride)
                .map(|_| f16r(lcg(&mut seed) * 4.0))
                .collect();
            let v: Vec<f32> = (0..n * stride).map(|_| f16r(lcg(&mut seed))).collect();
            let scale = 0.125;
            // Reference.
            let mut s: Vec<f32> = (0..n)
                .map(|p| {
                    let mut acc = [0f32; 16];
                    for i in 0..hd {
                        acc[i % 16] = k[p * stride + i].mul_add(q[i], acc[i % 16]);
                    }
                    fold16(acc) * scale
                })
                .collect();
            let max = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f64;
            for ch in s.chunks_mut(16) {
                let mut e = [0f32; 16];
                for (l, x) in ch.iter_mut().enumerate() {
                    *x = vmath::ggml_expf_ref(*x - max);
                    e[l] = *x;
                }
                sum += fold16(e) as f64;
            }
            let inv = (1.0 / sum) as f32;
            let w: Vec<f32> = s.iter().map(|x| f16r(x * inv)).collect();
            let want: Vec<f32> = (0..hd)
                .map(|j| {
                    let mut acc = [0f32; 16];
                    for p in 0..n {
                        acc[p % 16] = v[p * stride + j].mul_add(w[p], acc[p % 16]);
                    }
                    fold16(acc)
                })
                .collect();
            // Pieces, walking blocks of `bs` positions.
            let mut got_s = vec![0f32; n];
            let mut p = 0;
            while p < n {
                let c = bs.min(n - p);
                scores(&q, &k[p * stride..], stride, c, scale, &mut got_s[p..]);
                p += c;
            }
            softmax_f16(&mut got_s);
            assert_eq!(got_s, w, "weights hd {hd} n {n}");
            let mut acc = vec![0f32; 16 * hd];
            let mut p = 0;
            while p < n {
                let c = bs.min(n - p);
                accumulate(&got_s[p..], &v[p * stride..], stride, c, p, &mut acc);
                p += c;
            }
            let mut out = vec![0f32; hd];
            finish(&acc, &mut out);
            assert_eq!(out, want, "out hd {hd} n {n}");
            // And it is attention: against f64 softmax(q·k)·v within f16 precision.
            for j in 0..hd {
                let sc: Vec<f64> = (0..n)
                    .map(|p| {
                        (0..hd)
                            .map(|i| q[i] as f64 * k[p * stride + i] as f64)
                            .sum::<f64>()
                            * scale as f64
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = sc.iter().map(|x| (x - m).exp()).sum();
                let o: f64 = (0..n)
                    .map(|p| (sc[p] - m).exp() / z * v[p * stride + j] as f64)
                    .sum();
                assert!((out[j] as f64 - o).abs() < 2e-3, "hd {hd} n {n} j {j}");
            }
        }
    }

    #[test]
    fn round_f16_matches_half() {
        let mut seed = 9u64;
        let x: Vec<f32> = (0..1000)
            .map(|i| lcg(&mut seed) * [1.0, 1e-6, 7e4, 1e5][i % 4])
            .collect();
        for len in [0, 1, 7, 8, 9, 100, 1000] {
            let mut y = x[..len].to_vec();
            round_f16(&mut y);
            for (a, b) in y.iter().zip(&x) {
                assert_eq!(a.to_bits(), half::f16::from_f32(*b).to_f32().to_bits());
            }
        }
    }
}
