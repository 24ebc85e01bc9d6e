//! AVX-512 VNNI kernels over x16-packed weights (`crate::packed`): 16 rows per 512-bit vector,
//! one `vpdpbusd` per 4-element lane group for all 16 rows, the activation's 4 bytes broadcast
//! from memory. Per (row, token) the float operations are those of `avx512::tile_pair` (GGML's
//! x86 `vec_dot` order), so the results are the same bits.
//!
//! Every `unsafe` is a call of a `#[target_feature]` function (reachable only through
//! `avx512::BACKEND`, handed out after `detected()`) or a load inside the ranges `x16` checked.

// Lane-group loops index the accumulators and the vectors of a block together.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use crate::packed::{Geometry, X16Fn, ACT_BLK, GROUP, X16_MAX_T};
use crate::quant::GgmlType;

/// The x16 kernel for `ty`, if there is one.
pub(crate) fn x16(ty: GgmlType) -> Option<X16Fn> {
    match ty {
        GgmlType::Q4_0 => Some(run::<4, false>),
        GgmlType::Q4_1 => Some(run::<4, true>),
        GgmlType::Q8_0 => Some(run::<8, false>),
        _ => None,
    }
}

/// Checks the operands, then runs each token. `V` quant vectors per block (4: nibbles, 8:
/// bytes), `MINS` for Q4_1.
fn run<const V: usize, const MINS: bool>(
    nb: usize,
    nt: usize,
    group: &[u8],
    a: &[u8],
    pab: usize,
    out: &mut [f32],
) {
    let ty = match (V, MINS) {
        (4, true) => GgmlType::Q4_1,
        (4, false) => GgmlType::Q4_0,
        _ => GgmlType::Q8_0,
    };
    let g = Geometry::of(ty, nb * 32).expect("packed type");
    assert!((1..=X16_MAX_T).contains(&nt) && out.len() >= GROUP * nt);
    assert!(group.len() >= g.group_bytes() && group.as_ptr().align_offset(64) == 0);
    assert!(pab >= nb * ACT_BLK && a.len() >= (nt - 1) * pab + nb * ACT_BLK);
    let mut res = [[0f32; GROUP]; 2];
    let mut t = 0;
    while t < nt {
        let two = nt - t >= 2;
        let (w, at) = (group.as_ptr(), a[t * pab..].as_ptr());
        // SAFETY: the group and the activation rows hold the bytes `tokens` reads (checked
        // above; a second row only when `t + 1 < nt`).
        unsafe {
            if two {
                tokens::<V, MINS, 2>(nb, w, g.d_at(), g.m_at(), at, pab, &mut res);
            } else {
                tokens::<V, MINS, 1>(nb, w, g.d_at(), g.m_at(), at, pab, &mut res);
            }
        }
        for j in 0..if two { 2 } else { 1 } {
            for (r, &v) in res[j].iter().enumerate() {
                out[r * nt + t + j] = v;
            }
        }
        t += if two { 2 } else { 1 };
    }
}

/// 16 rows × `T` (1 or 2) tokens over `nb` blocks: each block's weight vectors are loaded
/// (and, for 4-bit quants, split into nibbles) once for the `T` tokens.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tokens<const V: usize, const MINS: bool, const T: usize>(
    nb: usize,
    w: *const u8,
    d_at: usize,
    m_at: usize,
    a: *const u8,
    pab: usize,
    out: &mut [[f32; GROUP]; 2],
) {
    let z = _mm512_setzero_ps();
    let mut acc = [[z; 8]; T];
    let mut summs = [z; T];
    let low = _mm512_set1_epi8(0x0F);
    // SAFETY: every pointer below stays inside the group (`nb` blocks of `V` vectors, then
    // `d`, then `m`) and the `T` activation rows (`nb` blocks of `ACT_BLK` each, `pab` apart),
    // as the caller checked.
    unsafe {
        for b in 0..nb {
            let q = w.add(b * V * 64);
            // The block's 8 quant vectors, lane group `k` in vector `k`.
            let mut wq = [_mm512_setzero_si512(); 8];
            if V == 4 {
                for k in 0..4 {
                    let v = _mm512_load_si512(q.add(k * 64) as *const __m512i);
                    wq[k] = _mm512_and_si512(v, low);
                    wq[k + 4] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), low);
                }
            } else {
                for k in 0..8 {
                    wq[k] = _mm512_load_si512(q.add(k * 64) as *const __m512i);
                }
            }
            let dw = _mm512_cvtph_ps(_mm256_load_si256(w.add(d_at + b * 32) as *const __m256i));
            let m = if MINS {
                _mm512_cvtph_ps(_mm256_load_si256(w.add(m_at + b * 32) as *const __m256i))
            } else {
                z
            };
            for t in 0..T {
                let ab = a.add(t * pab + b * ACT_BLK);
                let dd = _mm512_mul_ps(dw, _mm512_set1_ps(*(ab.add(64) as *const f32)));
                for k in 0..8 {
                    // The activation's lane group `k` (4 bytes) and its offset, broadcast.
                    let aq = _mm512_set1_epi32((ab.add(4 * k) as *const i32).read_unaligned());
                    let init = if MINS {
                        _mm512_setzero_si512()
                    } else {
                        _mm512_set1_epi32(*(ab.add(32 + 4 * k) as *const i32))
                    };
                    let i = _mm512_dpbusd_epi32(init, wq[k], aq);
                    acc[t][k] = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(i), acc[t][k]);
                }
                if MINS {
                    let s = _mm512_set1_ps(*(ab.add(68) as *const f32));
                    summs[t] = _mm512_fmadd_ps(m, s, summs[t]);
                }
            }
        }
        for t in 0..T {
            let acc = &acc[t];
            // `hsum_float_8` per row, lanes across vectors: ((x0+x4)+(x2+x6)) +
            // ((x1+x5)+(x3+x7)).
            let s = _mm512_add_ps(
                _mm512_add_ps(_mm512_add_ps(acc[0], acc[4]), _mm512_add_ps(acc[2], acc[6])),
                _mm512_add_ps(_mm512_add_ps(acc[1], acc[5]), _mm512_add_ps(acc[3], acc[7])),
            );
            let s = if MINS { _mm512_add_ps(s, summs[t]) } else { s };
            _mm512_storeu_ps(out[t].as_mut_ptr(), s);
        }
    }
}
