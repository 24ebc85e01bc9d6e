//! Bidirectional scaled dot-product attention of one (sequence, head), for encoders.
//!
//! `attend_head` reads a sequence's Q, K and V rows out of a fused QKV buffer and writes the
//! head's context rows. For every query `i`:
//!
//! - `s[j] = (Σ_d q[d]·k_j[d]) · scale`, the sum an FMA chain over `d = 0..hd` from zero;
//! - `e[j] = exp_ref(s[j] - max_j s)`; `sum` = 16 lane sums (`j mod 16`, each in `j` order),
//!   reduced by halving (lanes `l` and `l + 8`, then `+ 4`, `+ 2`, `+ 1`);
//! - `ctx[d] = Σ_j (e[j] · (1/sum)) · v_j[d]`, an FMA chain over `j = 0..len` from zero.
//!
//! The scalar reference (`attend_head_ref`) and the AVX-512F kernel perform exactly these
//! operations, so they give identical bits (tested over random shapes), and the result for a
//! sequence never depends on other sequences.

// The kernels index lanes and head dimensions by position.
#![allow(clippy::needless_range_loop)]

use crate::vmath::{exp_ref, lane_sum16};

/// Where one sequence's Q, K, V live in a row-major buffer of `len` rows of `stride` floats.
#[derive(Clone, Copy, Debug)]
pub struct HeadLayout {
    pub len: usize,
    pub stride: usize,
    pub head_dim: usize,
    /// Column of the head's query, key and value in a row.
    pub q: usize,
    pub k: usize,
    pub v: usize,
    pub scale: f32,
}

impl HeadLayout {
    fn check(&self, qkv: &[f32], out: &[f32]) {
        let hd = self.head_dim;
        assert!(self.q + hd <= self.stride && self.k + hd <= self.stride);
        assert!(self.v + hd <= self.stride);
        assert!(qkv.len() >= self.len * self.stride, "qkv too short");
        assert!(out.len() >= self.len * hd, "out too short");
    }
}

/// Reusable per-thread buffers.
#[derive(Default)]
pub struct AttnScratch {
    kt: Vec<f32>,
    e: Vec<f32>,
}

/// Context rows `out[i * head_dim + d]` of one (sequence, head).
pub fn attend_head(qkv: &[f32], l: &HeadLayout, out: &mut [f32], s: &mut AttnScratch) {
    l.check(qkv, out);
    #[cfg(target_arch = "x86_64")]
    if crate::gemm::has_avx512() {
        // SAFETY: AVX-512F was detected; extents were checked.
        unsafe { x86::attend_avx512(qkv, l, out, s) };
        return;
    }
    attend_head_ref(qkv, l, out, s)
}

/// Scalar reference of `attend_head`.
pub fn attend_head_ref(qkv: &[f32], l: &HeadLayout, out: &mut [f32], s: &mut AttnScratch) {
    l.check(qkv, out);
    let (len, hd) = (l.len, l.head_dim);
    s.e.resize(len, 0.0);
    for i in 0..len {
        let q = &qkv[i * l.stride + l.q..][..hd];
        for j in 0..len {
            let k = &qkv[j * l.stride + l.k..][..hd];
            let mut acc = 0f32;
            for d in 0..hd {
                acc = q[d].mul_add(k[d], acc);
            }
            s.e[j] = acc * l.scale;
        }
        let m = s.e.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        for v in s.e.iter_mut() {
            *v = exp_ref(*v - m);
        }
        let inv = 1.0 / lane_sum16(s.e.iter().copied());
        let o = &mut out[i * hd..(i + 1) * hd];
        o.iter_mut().for_each(|v| *v = 0.0);
        for j in 0..len {
            let p = s.e[j] * inv;
            let v = &qkv[j * l.stride + l.v..][..hd];
            for d in 0..hd {
                o[d] = p.mul_add(v[d], o[d]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{AttnScratch, HeadLayout};
    use crate::vmath::x86::exp512;

    fn mask(n: usize) -> __mmask16 {
        if n >= 16 {
            0xffff
        } else {
            (1u16 << n) - 1
        }
    }

    /// Query rows per block: the rows' FMA chains (scores over `d`, context over `j`) are
    /// independent, so a block of rows keeps several in flight where one row alone waits on
    /// each FMA's latency. Each row's operations and their order are unchanged.
    const R: usize = 4;

    /// # Safety
    /// AVX-512F must be available; `HeadLayout::check` must have passed.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn attend_avx512(
        qkv: &[f32],
        l: &HeadLayout,
        out: &mut [f32],
        s: &mut AttnScratch,
    ) {
        let (len, hd) = (l.len, l.head_dim);
        let lp = len.div_ceil(16) * 16;
        let base = qkv.as_ptr();
        // The head's Q, K and V rows are scattered over a QKV buffer that is larger than L2
        // (one row per token, `stride` floats apart): ask for all their lines up front, so
        // that their misses overlap instead of stalling the transpose and the context loop
        // one row at a time.
        for j in 0..len {
            for col in [l.k, l.q, l.v] {
                // SAFETY: row j, columns col..col + hd lie inside qkv (checked); a prefetch
                // never faults.
                unsafe {
                    let row = base.add(j * l.stride + col).cast::<i8>();
                    let mut off = 0;
                    while off < hd * 4 {
                        _mm_prefetch::<_MM_HINT_T0>(row.add(off));
                        off += 64;
                    }
                    _mm_prefetch::<_MM_HINT_T0>(row.add(hd * 4 - 1));
                }
            }
        }
        // Kᵀ of this head, `hd × lp`, zero past `len` (every element written below, so the
        // buffer is only grown, never cleared): 16 keys at a time, one gather per dimension.
        if s.kt.len() < hd * lp {
            s.kt.resize(hd * lp, 0.0);
        }
        assert!(
            l.stride < (i32::MAX as usize) / 16,
            "row stride fits the gather's index"
        );
        let idx = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(l.stride as i32),
        );
        let ktp = s.kt.as_mut_ptr();
        for jc in (0..lp).step_by(16) {
            let m = mask(len - jc);
            for d in 0..hd {
                // SAFETY: the mask keeps rows jc.. below len; their column k + d lies inside
                // qkv (checked); kt holds hd × lp floats and jc + 16 <= lp.
                unsafe {
                    let kb = base.add(jc * l.stride + l.k + d);
                    let v = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), m, idx, kb.cast());
                    _mm512_storeu_ps(ktp.add(d * lp + jc), v);
                }
            }
        }
        if s.e.len() < R * lp {
            s.e.resize(R * lp, 0.0);
        }
        let (kt, e) = (s.kt.as_ptr(), s.e.as_mut_ptr());
        let mut i = 0;
        // SAFETY (the calls): kt holds hd × lp, e holds R × lp; rows i..i + rows < len.
        while i + R <= len {
            unsafe { rows::<R>(qkv, l, out, kt, e, lp, i) };
            i += R;
        }
        while i < len {
            unsafe { rows::<1>(qkv, l, out, kt, e, lp, i) };
            i += 1;
        }
    }

    /// Query rows `i0..i0 + N` of `attend_avx512`.
    ///
    /// # Safety
    /// AVX-512F; `HeadLayout::check` passed; `kt` holds `hd × lp` (Kᵀ, zero past `len`), `e`
    /// holds `N × lp`; `i0 + N <= len`.
    #[target_feature(enable = "avx512f")]
    unsafe fn rows<const N: usize>(
        qkv: &[f32],
        l: &HeadLayout,
        out: &mut [f32],
        kt: *const f32,
        e: *mut f32,
        lp: usize,
        i0: usize,
    ) {
        let (len, hd) = (l.len, l.head_dim);
        let base = qkv.as_ptr();
        // SAFETY: q rows i0..i0 + N, columns q..q + hd, are inside qkv (checked).
        let q: [*const f32; N] =
            std::array::from_fn(|r| unsafe { base.add((i0 + r) * l.stride + l.q) });
        let mut vmax = [_mm512_set1_ps(f32::NEG_INFINITY); N];
        for jc in (0..lp).step_by(16) {
            let mut acc = [_mm512_setzero_ps(); N];
            for d in 0..hd {
                // SAFETY: d < hd, jc + 16 <= lp; kt holds hd × lp; q rows as above.
                unsafe {
                    let k = _mm512_loadu_ps(kt.add(d * lp + jc));
                    for r in 0..N {
                        acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(*q[r].add(d)), k, acc[r]);
                    }
                }
            }
            let m = mask(len - jc);
            for r in 0..N {
                let sc = _mm512_mul_ps(acc[r], _mm512_set1_ps(l.scale));
                vmax[r] = _mm512_mask_max_ps(vmax[r], m, vmax[r], sc);
                // SAFETY: e holds N × lp.
                unsafe { _mm512_storeu_ps(e.add(r * lp + jc), sc) };
            }
        }
        let mut inv = [0f32; N];
        for r in 0..N {
            let m = _mm512_set1_ps(_mm512_reduce_max_ps(vmax[r]));
            let mut vsum = _mm512_setzero_ps();
            for jc in (0..lp).step_by(16) {
                // SAFETY: e holds N × lp.
                unsafe {
                    let x = exp512(_mm512_sub_ps(_mm512_loadu_ps(e.add(r * lp + jc)), m));
                    let x = _mm512_maskz_mov_ps(mask(len - jc), x);
                    vsum = _mm512_add_ps(vsum, x);
                    _mm512_storeu_ps(e.add(r * lp + jc), x);
                }
            }
            let mut lanes = [0f32; 16];
            // SAFETY: 16 floats.
            unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), vsum) };
            let mut w = 8;
            while w > 0 {
                for t in 0..w {
                    lanes[t] += lanes[t + w];
                }
                w /= 2;
            }
            inv[r] = 1.0 / lanes[0];
            // The weights `e[j] · (1/sum)` (the same product per element as the reference),
            // 16 at a time instead of one scalar product per dimension block and key.
            let vi = _mm512_set1_ps(inv[r]);
            for jc in (0..lp).step_by(16) {
                // SAFETY: e holds N × lp.
                unsafe {
                    let x = _mm512_loadu_ps(e.add(r * lp + jc));
                    _mm512_storeu_ps(e.add(r * lp + jc), _mm512_mul_ps(x, vi));
                }
            }
        }
        for dc in (0..hd).step_by(16) {
            let dm = mask(hd - dc);
            let mut acc = [_mm512_setzero_ps(); N];
            for j in 0..len {
                // SAFETY: j < len <= lp; v row j, columns v + dc.. (masked to hd) is inside
                // qkv; e holds N × lp.
                unsafe {
                    let v = _mm512_maskz_loadu_ps(dm, base.add(j * l.stride + l.v + dc));
                    for r in 0..N {
                        let p = _mm512_set1_ps(*e.add(r * lp + j));
                        acc[r] = _mm512_fmadd_ps(p, v, acc[r]);
                    }
                }
            }
            for r in 0..N {
                // SAFETY: out holds len × hd (i0 + r < len); the mask stops at hd.
                unsafe {
                    _mm512_mask_storeu_ps(out.as_mut_ptr().add((i0 + r) * hd + dc), dm, acc[r])
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_matches_reference_bitwise() {
        let mut seed = 5u64;
        let mut rnd = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        let mut s = AttnScratch::default();
        // Row blocks of 4 with ragged tails; the scratch reused from larger to smaller shapes
        // (stale values must not leak in).
        let shapes = [
            (1, 32, 2),
            (5, 32, 3),
            (16, 32, 1),
            (17, 8, 2),
            (40, 20, 2),
            (7, 16, 2),
            (15, 32, 1),
            (23, 32, 1),
            (2, 33, 1),
        ];
        for (len, hd, heads) in shapes {
            for (scale, spread) in [(0.17f32, 1.0f32), (0.5, 30.0)] {
                let stride = 3 * hd * heads + 3;
                let qkv: Vec<f32> = (0..len * stride).map(|_| rnd() * spread).collect();
                for h in 0..heads {
                    let l = HeadLayout {
                        len,
                        stride,
                        head_dim: hd,
                        q: h * hd,
                        k: heads * hd + h * hd,
                        v: 2 * heads * hd + h * hd + 3,
                        scale,
                    };
                    let mut want = vec![0f32; len * hd];
                    attend_head_ref(&qkv, &l, &mut want, &mut s);
                    let mut got = vec![f32::NAN; len * hd];
                    attend_head(&qkv, &l, &mut got, &mut s);
                    assert_eq!(got, want, "len {len} hd {hd} head {h}");
                    // Against plain f64 attention.
                    for i in 0..len {
                        let q = &qkv[i * stride + l.q..][..hd];
                        let sc: Vec<f64> = (0..len)
                            .map(|j| {
                                let k = &qkv[j * stride + l.k..][..hd];
                                q.iter()
                                    .zip(k)
                                    .map(|(a, b)| *a as f64 * *b as f64)
                                    .sum::<f64>()
                                    * scale as f64
                            })
                            .collect();
                        let m = sc.iter().cloned().fold(f64::MIN, f64::max);
                        let ex: Vec<f64> = sc.iter().map(|v| (v - m).exp()).collect();
                        let z: f64 = ex.iter().sum();
                        for d in 0..hd {
                            let c: f64 = (0..len)
                                .map(|j| ex[j] / z * qkv[j * stride + l.v + d] as f64)
                                .sum();
                            let g = want[i * hd + d] as f64;
                            assert!((g - c).abs() < 1e-4 * spread as f64, "{g} vs {c}");
                        }
                    }
                }
            }
        }
    }
}
