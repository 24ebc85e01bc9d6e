//! AVX-512 VNNI kernels for the 32-element block types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0): two blocks per
//! 512-bit step, integer products with `vpdpbusd`. Other types and the quantizers come from
//! the AVX2 module.
//!
//! Every `unsafe` here is either a call of a `#[target_feature]` function (sound because these
//! functions are reachable only through `BACKEND`, handed out after `detected()`), or a pointer
//! read inside a range that the safe wrapper checked with `check_tile`.

// Index loops mirror ggml's reference code and the lane layout of the kernels.
#![allow(clippy::needless_range_loop)]
// Tile kernels take a weight tile, an activation tile and an output slice with strides.
#![allow(clippy::too_many_arguments)]

use std::arch::x86_64::*;

use super::{avx2, rt_match};
use crate::dot::{check_tile, Backend, TileKernel};
use crate::quant::GgmlType;

/// Whether this CPU runs the kernels in this module.
pub(crate) fn detected() -> bool {
    avx2::detected()
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("avx512vbmi")
}

pub(crate) static BACKEND: Backend = Backend {
    name: "avx512vnni",
    tile,
    quant: avx2::BACKEND.quant,
};

const MAX_R: usize = 4;
const MAX_T: usize = 4;

fn tile(ty: GgmlType) -> TileKernel {
    match ty {
        GgmlType::Q4_0 => TileKernel {
            f: tile_q4_0,
            max_r: MAX_R,
            max_t: MAX_T,
        },
        GgmlType::Q4_1 => TileKernel {
            f: tile_q4_1,
            max_r: MAX_R,
            max_t: MAX_T,
        },
        GgmlType::Q8_0 => TileKernel {
            f: tile_q8_0,
            max_r: MAX_R,
            max_t: MAX_T,
        },
        GgmlType::Q5_0 => TileKernel {
            f: tile_q5_0,
            max_r: MAX_R,
            max_t: MAX_T,
        },
        GgmlType::Q5_1 => TileKernel {
            f: tile_q5_1,
            max_r: MAX_R,
            max_t: MAX_T,
        },
        other => avx2::tile(other),
    }
}

/// A pair of 32-element blocks (weights × activations) for the tiled kernel. When `two` is
/// false only the first block exists and the second half of every vector is zero.
trait Pair {
    const WB: usize;
    const AB: usize;
    const WTY: GgmlType;
    type W: Copy;
    type A: Copy;
    unsafe fn load_w(p: *const u8, two: bool) -> Self::W;
    unsafe fn load_a(p: *const u8, two: bool) -> Self::A;
    /// Add the pair's product to `acc`; the float ops depend only on the two operands.
    unsafe fn step(w: Self::W, a: Self::A, acc: __m512) -> __m512;
}

struct Q40;
struct Q41;
struct Q50;
struct Q51;
struct Q80;

#[derive(Clone, Copy)]
struct WP {
    q: __m512i,
    d: __m512,
    /// Q4_1: the two mins in lanes 0 and 8, zero elsewhere.
    m: __m512,
}

#[derive(Clone, Copy)]
struct AP {
    q: __m512i,
    d: __m512,
    /// Q8_1: `s` of each block, broadcast over its 8 lanes. Q8_0: the integer offset that
    /// turns the unsigned product into the signed one, bit-cast.
    s: __m512,
}

/// Byte permutation putting the 16 packed nibble bytes of block 0 (at `o0`) twice in bytes
/// 0..32 and those of block 1 (at `o1`) twice in bytes 32..64.
const fn nib_idx(o0: usize, o1: usize) -> [u8; 64] {
    let mut t = [0u8; 64];
    let mut p = 0;
    while p < 64 {
        let base = if p < 32 { o0 } else { o1 };
        t[p] = (base + p % 16) as u8;
        p += 1;
    }
    t
}

static IDX_Q41: [u8; 64] = nib_idx(4, 24);
static IDX_Q40: [u8; 64] = nib_idx(2, 20);
/// Per-16-bit-lane shifts: low nibbles for bytes 0..16 of each block, high for 16..32.
static NIB_SHIFT: [u16; 32] = [
    0, 0, 0, 0, 0, 0, 0, 0, 4, 4, 4, 4, 4, 4, 4, 4, 0, 0, 0, 0, 0, 0, 0, 0, 4, 4, 4, 4, 4, 4, 4, 4,
];
/// Word permutations: f16 scale of block 0 (word `a`) over lanes 0..8, of block 1 (word `b`)
/// over lanes 8..16.
const fn bcast2(a: u16, b: u16) -> [u16; 32] {
    let mut t = [0u16; 32];
    let mut i = 0;
    while i < 16 {
        t[i] = if i < 8 { a } else { b };
        i += 1;
    }
    t
}
static IDX_D41: [u16; 32] = bcast2(0, 10);
static IDX_M41: [u16; 32] = bcast2(1, 11);
static IDX_D40: [u16; 32] = bcast2(0, 9);
static IDX_Q50: [u8; 64] = nib_idx(6, 28);
static IDX_D50: [u16; 32] = bcast2(0, 11);
static IDX_Q51: [u8; 64] = nib_idx(8, 32);
static IDX_D51: [u16; 32] = bcast2(0, 12);
static IDX_M51: [u16; 32] = bcast2(1, 13);

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn ld512<T>(t: &T) -> __m512i {
    // SAFETY: the tables above are 64 bytes.
    unsafe { _mm512_loadu_si512(t as *const T as *const __m512i) }
}

/// Unpack a nibble pair whose raw bytes are in `raw`, per the byte table `idx`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn nibbles(raw: __m512i, idx: &[u8; 64]) -> __m512i {
    // SAFETY: table loads.
    let (idx, sh) = unsafe { (ld512(idx), ld512(&NIB_SHIFT)) };
    let q = _mm512_permutexvar_epi8(idx, raw);
    _mm512_and_si512(_mm512_srlv_epi16(q, sh), _mm512_set1_epi8(0x0F))
}

/// The fifth bits of a Q5 pair as 0x10 in every byte whose element has its bit set: byte
/// `p` of block 0 (element `p`, as `nibbles` lays it out) takes bit `p` of the `qh` word at
/// `p0`, byte `32 + p` bit `p` of the word at `p0 + stride` (only if `two`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn high_bits(p0: *const u8, stride: usize, two: bool) -> __m512i {
    // SAFETY: the caller guarantees the `qh` words are readable.
    let (h0, h1) = unsafe {
        let h0 = std::ptr::read_unaligned(p0 as *const u32) as u64;
        let h1 = if two {
            std::ptr::read_unaligned(p0.add(stride) as *const u32) as u64
        } else {
            0
        };
        (h0, h1)
    };
    _mm512_maskz_mov_epi8(h0 | (h1 << 32), _mm512_set1_epi8(0x10))
}

/// Two f16 scales, at `p` and `p + stride` (the second only if `two`), each broadcast over 8
/// lanes as f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn scales2(p: *const u8, stride: usize, two: bool) -> __m512 {
    // SAFETY: the caller guarantees the scales are readable.
    unsafe {
        let d0 = avx2::rd16(p);
        let d1 = if two { avx2::rd16(p.add(stride)) } else { 0 };
        _mm512_cvtph_ps(_mm256_set_m128i(_mm_set1_epi16(d1), _mm_set1_epi16(d0)))
    }
}

/// Two 32-byte quant runs, at `p` and `p + stride` (the second zero unless `two`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn quants2(p: *const u8, stride: usize, two: bool) -> __m512i {
    // SAFETY: the caller guarantees the runs are readable.
    unsafe {
        let q0 = _mm256_loadu_si256(p as *const __m256i);
        let q1 = if two {
            _mm256_loadu_si256(p.add(stride) as *const __m256i)
        } else {
            _mm256_setzero_si256()
        };
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(q0), q1)
    }
}

impl Pair for Q41 {
    const WB: usize = 20;
    const AB: usize = 36;
    const WTY: GgmlType = GgmlType::Q4_1;
    type W = WP;
    type A = AP;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    unsafe fn load_w(p: *const u8, two: bool) -> WP {
        let mask: u64 = if two { (1 << 40) - 1 } else { (1 << 20) - 1 };
        // SAFETY: the masked load touches only the pair's bytes; tables are 64 bytes.
        unsafe {
            let raw = _mm512_maskz_loadu_epi8(mask, p as *const i8);
            let d = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi16(
                ld512(&IDX_D41),
                raw,
            )));
            let m = _mm512_maskz_permutexvar_epi16(0x0101, ld512(&IDX_M41), raw);
            WP {
                q: nibbles(raw, &IDX_Q41),
                d,
                m: _mm512_cvtph_ps(_mm512_castsi512_si256(m)),
            }
        }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    unsafe fn load_a(p: *const u8, two: bool) -> AP {
        // SAFETY: the caller guarantees the pair (or the single block) is readable.
        unsafe {
            AP {
                q: quants2(p.add(4), 36, two),
                d: scales2(p, 36, two),
                s: scales2(p.add(2), 36, two),
            }
        }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    unsafe fn step(w: WP, a: AP, acc: __m512) -> __m512 {
        let i = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w.q, a.q);
        let acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), _mm512_mul_ps(w.d, a.d), acc);
        _mm512_fmadd_ps(w.m, a.s, acc)
    }
}

/// Q8_0 activations with `-k·Σq` per lane group (k = 8 for Q4_0, 128 for Q8_0).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn load_a80(p: *const u8, two: bool, k: i8) -> AP {
    // SAFETY: the caller guarantees the pair (or the single block) is readable.
    unsafe {
        let q = quants2(p.add(2), 34, two);
        let ks = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(k), q);
        let neg = _mm512_sub_epi32(_mm512_setzero_si512(), ks);
        AP {
            q,
            d: scales2(p, 34, two),
            s: _mm512_castsi512_ps(neg),
        }
    }
}

impl Pair for Q40 {
    const WB: usize = 18;
    const AB: usize = 34;
    const WTY: GgmlType = GgmlType::Q4_0;
    type W = WP;
    type A = AP;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    unsafe fn load_w(p: *const u8, two: bool) -> WP {
        let mask: u64 = if two { (1 << 36) - 1 } else { (1 << 18) - 1 };
        // SAFETY: the masked load touches only the pair's bytes; tables are 64 bytes.
        unsafe {
            let raw = _mm512_maskz_loadu_epi8(mask, p as *const i8);
            let d = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi16(
                ld512(&IDX_D40),
                raw,
            )));
            WP {
                q: nibbles(raw, &IDX_Q40),
                d,
                m: _mm512_setzero_ps(),
            }
        }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    unsafe fn load_a(p: *const u8, two: bool) -> AP {
        // SAFETY: forwarded from the caller.
        unsafe { load_a80(p, two, 8) }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    unsafe fn step(w: WP, a: AP, acc: __m512) -> __m512 {
        // Σ (q - 8)·a = Σ q·a - 8·Σ a, the latter preloaded as the accumulator.
        let i = _mm512_dpbusd_epi32(_mm512_castps_si512(a.s), w.q, a.q);
        _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), _mm512_mul_ps(w.d, a.d), acc)
    }
}

impl Pair for Q80 {
    const WB: usize = 34;
    const AB: usize = 34;
    const WTY: GgmlType = GgmlType::Q8_0;
    type W = WP;
    type A = AP;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    unsafe fn load_w(p: *const u8, two: bool) -> WP {
        // SAFETY: the caller guarantees the pair (or the single block) is readable.
        unsafe {
            // w + 128 as u8: the product becomes Σ (w+128)·a - 128·Σ a.
            let q = _mm512_xor_si512(quants2(p.add(2), 34, two), _mm512_set1_epi8(-128));
            WP {
                q,
                d: scales2(p, 34, two),
                m: _mm512_setzero_ps(),
            }
        }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    unsafe fn load_a(p: *const u8, two: bool) -> AP {
        // SAFETY: forwarded from the caller.
        unsafe { load_a80(p, two, -128) }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    unsafe fn step(w: WP, a: AP, acc: __m512) -> __m512 {
        let i = _mm512_dpbusd_epi32(_mm512_castps_si512(a.s), w.q, a.q);
        _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), _mm512_mul_ps(w.d, a.d), acc)
    }
}

impl Pair for Q50 {
    const WB: usize = 22;
    const AB: usize = 34;
    const WTY: GgmlType = GgmlType::Q5_0;
    type W = WP;
    type A = AP;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    unsafe fn load_w(p: *const u8, two: bool) -> WP {
        let mask: u64 = if two { (1 << 44) - 1 } else { (1 << 22) - 1 };
        // SAFETY: the masked load and the `qh` reads touch only the pair's bytes; tables are
        // 64 bytes.
        unsafe {
            let raw = _mm512_maskz_loadu_epi8(mask, p as *const i8);
            let d = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi16(
                ld512(&IDX_D50),
                raw,
            )));
            WP {
                q: _mm512_or_si512(nibbles(raw, &IDX_Q50), high_bits(p.add(2), 22, two)),
                d,
                m: _mm512_setzero_ps(),
            }
        }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    unsafe fn load_a(p: *const u8, two: bool) -> AP {
        // SAFETY: forwarded from the caller.
        unsafe { load_a80(p, two, 16) }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    unsafe fn step(w: WP, a: AP, acc: __m512) -> __m512 {
        // Σ (q - 16)·a = Σ q·a - 16·Σ a, the latter preloaded as the accumulator.
        let i = _mm512_dpbusd_epi32(_mm512_castps_si512(a.s), w.q, a.q);
        _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), _mm512_mul_ps(w.d, a.d), acc)
    }
}

impl Pair for Q51 {
    const WB: usize = 24;
    const AB: usize = 36;
    const WTY: GgmlType = GgmlType::Q5_1;
    type W = WP;
    type A = AP;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    unsafe fn load_w(p: *const u8, two: bool) -> WP {
        let mask: u64 = if two { (1 << 48) - 1 } else { (1 << 24) - 1 };
        // SAFETY: the masked load and the `qh` reads touch only the pair's bytes; tables are
        // 64 bytes.
        unsafe {
            let raw = _mm512_maskz_loadu_epi8(mask, p as *const i8);
            let d = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi16(
                ld512(&IDX_D51),
                raw,
            )));
            let m = _mm512_maskz_permutexvar_epi16(0x0101, ld512(&IDX_M51), raw);
            WP {
                q: _mm512_or_si512(nibbles(raw, &IDX_Q51), high_bits(p.add(4), 24, two)),
                d,
                m: _mm512_cvtph_ps(_mm512_castsi512_si256(m)),
            }
        }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    unsafe fn load_a(p: *const u8, two: bool) -> AP {
        // SAFETY: forwarded from the caller (Q8_1 activations, as for Q4_1).
        unsafe { Q41::load_a(p, two) }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    unsafe fn step(w: WP, a: AP, acc: __m512) -> __m512 {
        // SAFETY: the same arithmetic as Q4_1 (unsigned 5-bit quants instead of 4-bit).
        unsafe { Q41::step(w, a, acc) }
    }
}

/// `R` weight rows × `T` activation rows over `nb` blocks, two blocks per step.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn tile_pair<K: Pair, const R: usize, const T: usize>(
    nb: usize,
    w: *const u8,
    ws: usize,
    a: *const u8,
    as_: usize,
    out: *mut f32,
) {
    let mut acc = [[_mm512_setzero_ps(); T]; R];
    let mut b = 0;
    while b < nb {
        let two = b + 1 < nb;
        // SAFETY: blocks `b` (and `b + 1` when `two`) of rows `< R` / `< T` lie inside the
        // ranges `check_tile` verified.
        unsafe {
            let mut wv = [K::load_w(w.add(b * K::WB), two); R];
            for (r, v) in wv.iter_mut().enumerate().skip(1) {
                *v = K::load_w(w.add(r * ws + b * K::WB), two);
            }
            let mut av = [K::load_a(a.add(b * K::AB), two); T];
            for (t, v) in av.iter_mut().enumerate().skip(1) {
                *v = K::load_a(a.add(t * as_ + b * K::AB), two);
            }
            for r in 0..R {
                for t in 0..T {
                    acc[r][t] = K::step(wv[r], av[t], acc[r][t]);
                }
            }
        }
        b += 2;
    }
    for r in 0..R {
        for t in 0..T {
            // SAFETY: `out` holds at least R·T elements (checked by the caller).
            unsafe { *out.add(r * T + t) = _mm512_reduce_add_ps(acc[r][t]) };
        }
    }
}

macro_rules! pair_wrapper {
    ($name:ident, $k:ty) => {
        fn $name(
            n: usize,
            nr: usize,
            nt: usize,
            w: &[u8],
            ws: usize,
            a: &[u8],
            as_: usize,
            out: &mut [f32],
        ) {
            check_tile(<$k>::WTY, n, nr, nt, w, ws, a, as_, out);
            let (w, a, o) = (w.as_ptr(), a.as_ptr(), out.as_mut_ptr());
            // SAFETY: bounds checked above; reachable only via `BACKEND`, used after `detected()`.
            unsafe { rt_match!(tile_pair, $k, nr, nt, (n / 32, w, ws, a, as_, o)) }
        }
    };
}
pair_wrapper!(tile_q4_0, Q40);
pair_wrapper!(tile_q4_1, Q41);
pair_wrapper!(tile_q8_0, Q80);
pair_wrapper!(tile_q5_0, Q50);
pair_wrapper!(tile_q5_1, Q51);
