//! K-quant formats: Q4_K, Q5_K and Q6_K weights and Q8_K activations, in ggml's layout
//! (`ggml-common.h`, `QK_K = 256`). This module owns their scalar dequantization, the Q8_K
//! activation quantizer and the scalar reference dot products, written after ggml's
//! `ggml-quants.c` (`dequantize_row_q4_K`, `quantize_row_q8_K_ref`) and, for the products,
//! after llama.cpp's tiled K-quant matmul (`ggml/src/ggml-cpu/tiled`), which it runs for
//! batches of 8 or more tokens.
//!
//! The tiled matmul's arithmetic per output (row `i`, token `j`), as read in `tiled.cpp`,
//! `tiled-kernel.cpp` (`tiled_run_micro_vnni_8x16`, the AVX-512 VNNI build) and in the
//! shipped `libggml-cpu.so` (`objdump`):
//! - Activations: `quantize_row_q8_K` (x86, bytes equal to `quantize_row_q8_K_ref`), the same
//!   Q8_K rows `ggml_vec_dot_*_q8_K` reads; `tiled_unpack_src1_q8_K` only widens the bsums to
//!   i32 and keeps `d` as f32. The VNNI kernel reorders the codes for `vpdpbusd` (unsigned
//!   weight codes × signed activations), which does not change the integer sums.
//! - Weights: codes widened to bytes, unsigned (Q4_K 0..15, Q5_K 0..31, Q6_K 0..63), per
//!   sub-block scales (and Q4_K/Q5_K mins) as i32, `d`/`dmin` as f32 (`tiled_unpack_src0`).
//! - Per 256-element super-block, exact i32 sums: `s1 = Σ_s scale_s · (raw_s − BIAS·bsum_s)`
//!   with `raw_s = Σ_{e∈s} q_e·a_e` (sub-blocks of 32 for Q4_K/Q5_K, 16 for Q6_K; `BIAS` is 32
//!   for Q6_K, whose template is `<16, false, 32, true>`, 0 otherwise; the `ACTBIAS` argument
//!   only matters to the AVX2 kernel, which pre-biases the activations by +128 and corrects the
//!   integer sum exactly), and for Q4_K/Q5_K `s2 = Σ_s min_s · bsum_s` (bsums of 32).
//! - Then, in f32: `r = f32(s1) · d`; `r = fnmadd(dmin, f32(s2), r)` (one rounding) where there
//!   are mins; `acc = fma(r, d_a, acc)`: the source writes `buf + r·d_a` as a multiply and an
//!   add, but GCC contracts them into `vfmadd213ps` in the shipped binary.
//! - `acc` starts at 0 for every output and takes the super-blocks in order (`kblk` ascending,
//!   on both its per-slab and its "narrow" multi-slab path); outputs never share lanes, so the
//!   result does not depend on the tile, the thread split or the batch.
//!
//! `vec_dot_k_ref` states this; the AVX2 and AVX-512 tiles perform the same operations per
//! output, checked against llama.cpp's own outputs (`tests/data/ggml_tiled.bin`). Ferry uses
//! this order for every batch size, decoding included, so its results do not depend on the
//! batch. llama.cpp's own single-token path (and batches under 8 tokens) uses
//! `ggml_vec_dot_q*_K_q8_K` instead (eight float lanes of `d_w·d_a·Σ`, mins in a separate
//! accumulator), which rounds differently: on random rows the two paths agree bit for bit on
//! only 10-30% of outputs (`scripts/goldens/ggml_tiled.c` prints the count).
//!
//! Block layouts (little-endian):
//! - Q4_K (144 B): `d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]`
//! - Q5_K (176 B): `d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]`
//! - Q6_K (210 B): `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16`
//! - Q8_K (292 B): `d: f32, qs: [i8; 256], bsums: [i16; 16]`
//!
//! The Q8_K quantizer rounds half to even, as ggml's `nearest_int`; the SIMD quantizers give
//! the same bytes.

// Index loops mirror ggml's reference code and the lane layout of the kernels.
#![allow(clippy::needless_range_loop)]

use crate::quant::rd_f16;
use crate::GgmlType;

/// Elements per K-quant super-block.
pub const QK_K: usize = 256;

/// Byte offsets inside a Q8_K block.
pub(crate) const Q8K_QS: usize = 4;
pub(crate) const Q8K_BSUMS: usize = 4 + QK_K;

/// Scale and min of sub-block `j` (`0..8`) from the 12 packed bytes of a Q4_K/Q5_K block
/// (ggml's `get_scale_min_k4`).
#[inline]
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

#[inline]
pub(crate) fn rd_f32(b: &[u8], off: usize) -> f32 {
    f32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

#[inline]
fn rd_i16(b: &[u8], off: usize) -> i16 {
    i16::from_le_bytes([b[off], b[off + 1]])
}

pub(crate) fn dequantize_row_k(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    let ts = ty.type_size();
    for (y, b) in dst.chunks_exact_mut(QK_K).zip(src.chunks_exact(ts)) {
        match ty {
            GgmlType::Q4K => {
                let d = rd_f16(b, 0);
                let min = rd_f16(b, 2);
                let scales = &b[4..16];
                let qs = &b[16..144];
                for j in 0..4 {
                    let (sc1, m1) = scale_min_k4(2 * j, scales);
                    let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
                    let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
                    let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
                    let q = &qs[32 * j..32 * j + 32];
                    let y = &mut y[64 * j..64 * j + 64];
                    for l in 0..32 {
                        y[l] = d1 * (q[l] & 0xF) as f32 - m1;
                        y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
                    }
                }
            }
            GgmlType::Q5K => {
                let d = rd_f16(b, 0);
                let min = rd_f16(b, 2);
                let scales = &b[4..16];
                let qh = &b[16..48];
                let ql = &b[48..176];
                for j in 0..4 {
                    let (sc1, m1) = scale_min_k4(2 * j, scales);
                    let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
                    let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
                    let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
                    let (u1, u2) = (1u8 << (2 * j), 2u8 << (2 * j));
                    let q = &ql[32 * j..32 * j + 32];
                    let y = &mut y[64 * j..64 * j + 64];
                    for l in 0..32 {
                        let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
                        let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
                        y[l] = d1 * ((q[l] & 0xF) + h1) as f32 - m1;
                        y[l + 32] = d2 * ((q[l] >> 4) + h2) as f32 - m2;
                    }
                }
            }
            GgmlType::Q6K => {
                let d = rd_f16(b, 208);
                for n in 0..2 {
                    let ql = &b[64 * n..64 * n + 64];
                    let qh = &b[128 + 32 * n..128 + 32 * n + 32];
                    let sc = &b[192 + 8 * n..192 + 8 * n + 8];
                    let y = &mut y[128 * n..128 * n + 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                        y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                        y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                        y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                    }
                }
            }
            GgmlType::Q8K => {
                let d = rd_f32(b, 0);
                for l in 0..QK_K {
                    y[l] = d * (b[Q8K_QS + l] as i8) as f32;
                }
            }
            other => unreachable!("{} is not a K-quant", other.name()),
        }
    }
}

/// Quantize one block's worth of `x` (256 values) into a Q8_K block `b`, given the first value
/// of largest magnitude `max` (as ggml picks it).
#[inline]
pub(crate) fn q8k_block_from_max(x: &[f32], max: f32, b: &mut [u8]) {
    if max == 0.0 {
        b.fill(0);
        return;
    }
    let iscale = -127.0f32 / max;
    for (j, v) in x.iter().enumerate() {
        // ggml's `nearest_int`: round half to even.
        let q = ((iscale * v).round_ties_even() as i32).min(127);
        b[Q8K_QS + j] = q as i8 as u8;
    }
    q8k_finish(b, 1.0 / iscale);
}

/// Write the bsums and `d` of a Q8_K block whose `qs` are already filled.
#[inline]
pub(crate) fn q8k_finish(b: &mut [u8], d: f32) {
    for j in 0..QK_K / 16 {
        let s: i32 = b[Q8K_QS + 16 * j..Q8K_QS + 16 * j + 16]
            .iter()
            .map(|&q| q as i8 as i32)
            .sum();
        b[Q8K_BSUMS + 2 * j..Q8K_BSUMS + 2 * j + 2].copy_from_slice(&(s as i16).to_le_bytes());
    }
    b[0..4].copy_from_slice(&d.to_le_bytes());
}

/// The first value of largest magnitude (ggml's `max`, not `amax`), or 0 if all are 0.
#[inline]
pub(crate) fn first_absmax(x: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        let a = v.abs();
        if a > amax {
            amax = a;
            max = v;
        }
    }
    max
}

pub(crate) fn quantize_row_q8k(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src
        .chunks_exact(QK_K)
        .zip(dst.chunks_exact_mut(GgmlType::Q8K.type_size()))
    {
        q8k_block_from_max(x, first_absmax(x), b);
    }
}

/// Scales and mins of the 8 sub-blocks of a Q4_K/Q5_K block (ggml's `utmp` unpacking).
#[inline]
pub(crate) fn unpack_scales_mins(q: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..8 {
        (sc[j], mn[j]) = scale_min_k4(j, q);
    }
    (sc, mn)
}

/// The weight codes of one K-quant block in element order, as llama.cpp's tiled unpacking
/// (`tiled_unpack_src0`) widens them: Q4_K 0..15, Q5_K 0..31, Q6_K 0..63 (the `-32` is applied
/// to the integer sums), and the per-sub-block scales and (Q4_K/Q5_K) mins.
pub(crate) fn unpack_k_block(ty: GgmlType, x: &[u8], q: &mut [u8; QK_K]) -> ([i32; 16], [i32; 8]) {
    let mut sc = [0i32; 16];
    let mut mn = [0i32; 8];
    match ty {
        GgmlType::Q4K | GgmlType::Q5K => {
            let (qs, qh) = if ty == GgmlType::Q4K {
                (&x[16..144], None)
            } else {
                (&x[48..176], Some(&x[16..48]))
            };
            for j in 0..4 {
                for l in 0..32 {
                    let b = qs[32 * j + l];
                    let (mut lo, mut hi) = (b & 0xF, b >> 4);
                    if let Some(qh) = qh {
                        lo |= ((qh[l] >> (2 * j)) & 1) << 4;
                        hi |= ((qh[l] >> (2 * j + 1)) & 1) << 4;
                    }
                    q[64 * j + l] = lo;
                    q[64 * j + 32 + l] = hi;
                }
            }
            let (s8, m8) = unpack_scales_mins(&x[4..16]);
            for j in 0..8 {
                sc[j] = s8[j] as i32;
                mn[j] = m8[j] as i32;
            }
        }
        GgmlType::Q6K => {
            for n in 0..2 {
                let ql = &x[64 * n..64 * n + 64];
                let qh = &x[128 + 32 * n..128 + 32 * n + 32];
                let q = &mut q[128 * n..128 * n + 128];
                for l in 0..32 {
                    q[l] = (ql[l] & 0xF) | ((qh[l] & 3) << 4);
                    q[l + 32] = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
                    q[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                    q[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                }
            }
            for j in 0..16 {
                sc[j] = x[192 + j] as i8 as i32;
            }
        }
        other => panic!("{} is not a K-quant weight type", other.name()),
    }
    (sc, mn)
}

/// The exact integer sums of one K-quant block against one Q8_K block, llama.cpp's tiled
/// `s1 = Σ_s scale_s · Σ_{e∈s} (q_e − bias) · a_e` (bias 32 for Q6_K, 0 otherwise) and, for
/// Q4_K/Q5_K, `s2 = Σ_s min_s · Σ_{e∈s} a_e` (from the activation's bsums).
pub(crate) fn k_block_sums(ty: GgmlType, x: &[u8], y: &[u8]) -> (i32, i32) {
    let mut q = [0u8; QK_K];
    let (sc, mn) = unpack_k_block(ty, x, &mut q);
    let q8 = &y[Q8K_QS..Q8K_QS + QK_K];
    let (sub, bias) = if ty == GgmlType::Q6K {
        (16, 32)
    } else {
        (32, 0)
    };
    let mut s1 = 0i32;
    let mut s2 = 0i32;
    for s in 0..QK_K / sub {
        let raw: i32 = (sub * s..sub * (s + 1))
            .map(|e| (q[e] as i32 - bias) * q8[e] as i8 as i32)
            .sum();
        s1 += sc[s] * raw;
        if ty != GgmlType::Q6K {
            let bsum =
                rd_i16(y, Q8K_BSUMS + 4 * s) as i32 + rd_i16(y, Q8K_BSUMS + 4 * s + 2) as i32;
            s2 += mn[s] * bsum;
        }
    }
    (s1, s2)
}

/// The float steps of one super-block, llama.cpp's tiled epilogue
/// (`tiled_run_micro_vnni_8x16`): `r = f32(s1) · d_w`, then (Q4_K/Q5_K) `r = fma(−dmin_w,
/// f32(s2), r)` (its `fnmadd`), and the output accumulates `fma(r, d_a, acc)`: the source
/// writes `acc + r · d_a` as a multiply and an add, but GCC contracts them into one
/// `vfmadd213ps` in the shipped binary (checked with `objdump`; the goldens agree only with the
/// FMA). Every backend performs exactly these operations per (row, token, block).
#[inline(always)]
pub(crate) fn k_block_step(acc: f32, s1: i32, s2: i32, d: f32, dmin: Option<f32>, da: f32) -> f32 {
    let mut r = s1 as f32 * d;
    if let Some(m) = dmin {
        r = (-m).mul_add(s2 as f32, r);
    }
    r.mul_add(da, acc)
}

/// Scalar reference dot product of a K-quant weight row with a Q8_K activation row in
/// llama.cpp's *tiled* order (`ggml/src/ggml-cpu/tiled`, which llama.cpp runs for batches of
/// 8 or more tokens): per super-block the exact integer sums of `k_block_sums`, converted once
/// and scaled as `k_block_step` states, accumulated over the super-blocks in order from 0.
/// Ferry uses this order for every batch size (decode too), so its greedy decoding does not
/// depend on the batch; llama.cpp's own single-token path (`ggml_vec_dot_q*_K_q8_K`: eight
/// float lanes of `d_w·d_a·Σ`, mins in a separate accumulator) rounds differently.
pub(crate) fn vec_dot_k_ref(ty: GgmlType, n: usize, w: &[u8], a: &[u8]) -> f32 {
    let ts = ty.type_size();
    let ats = GgmlType::Q8K.type_size();
    let mut acc = 0f32;
    for i in 0..n / QK_K {
        let x = &w[i * ts..(i + 1) * ts];
        let y = &a[i * ats..(i + 1) * ats];
        let (s1, s2) = k_block_sums(ty, x, y);
        let (d, dmin) = match ty {
            GgmlType::Q6K => (rd_f16(x, 208), None),
            _ => (rd_f16(x, 0), Some(rd_f16(x, 2))),
        };
        acc = k_block_step(acc, s1, s2, d, dmin, rd_f32(y, 0));
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{dequantize_row, quantize_row_act, vec_dot_ref};
    use half::f16;

    fn put_f16(b: &mut [u8], off: usize, v: f32) {
        b[off..off + 2].copy_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
    }

    /// Pack 8 six-bit scales and mins the way ggml's Q4_K quantizer does.
    fn pack_scales(sc: [u8; 8], mn: [u8; 8]) -> [u8; 12] {
        let mut q = [0u8; 12];
        for j in 0..8 {
            if j < 4 {
                q[j] = sc[j];
                q[j + 4] = mn[j];
            } else {
                q[j + 4] = (sc[j] & 0xF) | ((mn[j] & 0xF) << 4);
                q[j - 4] |= (sc[j] >> 4) << 6;
                q[j] |= (mn[j] >> 4) << 6;
            }
        }
        q
    }

    #[test]
    fn scales_pack_roundtrip() {
        let sc = [1, 63, 17, 32, 45, 0, 63, 5];
        let mn = [0, 2, 63, 31, 33, 62, 1, 48];
        let p = pack_scales(sc, mn);
        assert_eq!(unpack_scales_mins(&p), (sc, mn));
    }

    #[test]
    fn q4k_block_by_hand() {
        let mut b = vec![0u8; 144];
        put_f16(&mut b, 0, 0.5);
        put_f16(&mut b, 2, 0.25);
        let sc = [1, 2, 3, 4, 5, 6, 7, 40];
        let mn = [0, 1, 2, 3, 4, 5, 6, 50];
        b[4..16].copy_from_slice(&pack_scales(sc, mn));
        for l in 0..128 {
            b[16 + l] = ((l % 16) as u8) | ((((l + 3) % 16) as u8) << 4);
        }
        let mut y = vec![0f32; 256];
        dequantize_row(GgmlType::Q4K, &b, &mut y);
        for e in 0..256 {
            let (j, half, l) = (e / 64, (e % 64) / 32, e % 32);
            let sub = 2 * j + half;
            let byte = 32 * j + l;
            let q = if half == 0 {
                byte % 16
            } else {
                (byte + 3) % 16
            };
            let want = 0.5 * sc[sub] as f32 * q as f32 - 0.25 * mn[sub] as f32;
            assert_eq!(y[e], want, "element {e}");
        }
    }

    #[test]
    fn q5k_block_by_hand() {
        let mut b = vec![0u8; 176];
        put_f16(&mut b, 0, 2.0);
        put_f16(&mut b, 2, 1.0);
        let sc = [3; 8];
        let mn = [1, 1, 1, 1, 2, 2, 2, 2];
        b[4..16].copy_from_slice(&pack_scales(sc, mn));
        for l in 0..32 {
            b[16 + l] = if l % 2 == 0 { 0xFF } else { 0x00 };
        }
        for l in 0..128 {
            b[48 + l] = 0x21; // low nibble 1, high nibble 2
        }
        let mut y = vec![0f32; 256];
        dequantize_row(GgmlType::Q5K, &b, &mut y);
        for e in 0..256 {
            let (j, half, l) = (e / 64, (e % 64) / 32, e % 32);
            let sub = 2 * j + half;
            let q = if half == 0 { 1 } else { 2 } + if l % 2 == 0 { 16 } else { 0 };
            let want = 2.0 * 3.0 * q as f32 - mn[sub] as f32;
            assert_eq!(y[e], want, "element {e}");
        }
    }

    #[test]
    fn q6k_block_by_hand() {
        let mut b = vec![0u8; 210];
        // Every element's 6-bit value is 32 + 5 = 37 (low nibble 5, high bits 2): value 5.
        b[0..128].fill(0x55);
        b[128..192].fill(0xAA);
        for j in 0..16 {
            b[192 + j] = (j as i8 - 8) as u8;
        }
        put_f16(&mut b, 208, 0.5);
        let mut y = vec![0f32; 256];
        dequantize_row(GgmlType::Q6K, &b, &mut y);
        for (e, v) in y.iter().enumerate() {
            let want = 0.5 * (e / 16) as f32 - 4.0;
            assert_eq!(*v, want * 5.0, "element {e}");
        }
    }

    #[test]
    fn q8k_quantize_matches_ggml_rules() {
        let x: Vec<f32> = (0..512)
            .map(|i| ((i * 7919 % 255) as f32 - 127.0) * 0.013)
            .collect();
        let mut b = vec![0u8; 2 * 292];
        quantize_row_act(GgmlType::Q8K, &x, &mut b);
        for blk in 0..2 {
            let bb = &b[blk * 292..(blk + 1) * 292];
            let xs = &x[blk * 256..(blk + 1) * 256];
            let max = first_absmax(xs);
            assert_eq!(rd_f32(bb, 0), 1.0 / (-127.0 / max));
            for j in 0..16 {
                let s: i32 = (0..16).map(|l| bb[4 + 16 * j + l] as i8 as i32).sum();
                assert_eq!(rd_i16(bb, Q8K_BSUMS + 2 * j) as i32, s);
            }
        }
        let mut y = vec![0f32; 512];
        dequantize_row(GgmlType::Q8K, &b, &mut y);
        for (p, q) in x.iter().zip(&y) {
            assert!((p - q).abs() < 0.01, "{p} vs {q}");
        }
        let mut z = vec![0u8; 292];
        quantize_row_act(GgmlType::Q8K, &[0.0; 256], &mut z);
        assert!(z.iter().all(|&v| v == 0));
    }

    #[test]
    fn k_dot_ref_matches_dequantized_float_dot() {
        let mut seed = 99u64;
        let mut rnd = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as u32
        };
        for ty in [GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K] {
            let n = 512;
            let mut w = vec![0u8; ty.row_bytes(n).unwrap()];
            w.iter_mut().for_each(|b| *b = rnd() as u8);
            for blk in w.chunks_exact_mut(ty.type_size()) {
                if ty == GgmlType::Q6K {
                    put_f16(blk, 208, 0.003);
                } else {
                    put_f16(blk, 0, 0.004);
                    put_f16(blk, 2, 0.002);
                }
            }
            let x: Vec<f32> = (0..n)
                .map(|_| (rnd() % 2000) as f32 / 1000.0 - 1.0)
                .collect();
            let mut a = vec![0u8; GgmlType::Q8K.row_bytes(n).unwrap()];
            quantize_row_act(GgmlType::Q8K, &x, &mut a);
            let mut wf = vec![0f32; n];
            let mut af = vec![0f32; n];
            dequantize_row(ty, &w, &mut wf);
            dequantize_row(GgmlType::Q8K, &a, &mut af);
            let want: f64 = wf.iter().zip(&af).map(|(p, q)| *p as f64 * *q as f64).sum();
            let got = vec_dot_ref(ty, n, &w, &a);
            assert!(
                (want - got as f64).abs() < 1e-3 * (1.0 + want.abs()),
                "{ty:?}: {want} vs {got}"
            );
        }
    }
}
