//! AVX2 + FMA + F16C kernels: tiled Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 products, single-pair float and K-quant
//! products (the K-quants in llama.cpp's tiled order), and the Q8_0/Q8_1/Q8_K activation quantizers.
//!
//! Every `unsafe` here is either a call of a `#[target_feature]` function (sound because these
//! functions are reachable only through `BACKEND`, handed out after `detected()`), or an
//! unaligned pointer read inside a range that the safe wrapper checked with `check_tile`.

// Index loops mirror ggml's reference code and the lane layout of the kernels.
#![allow(clippy::needless_range_loop)]
// Tile kernels take a weight tile, an activation tile and an output slice with strides.
#![allow(clippy::too_many_arguments)]

use std::arch::x86_64::*;

use super::tile_wrapper;
use crate::dot::{check_tile, Backend, TileKernel};
use crate::quant::{quantize_row_act, GgmlType};
use crate::quant_k::{k_block_step, q8k_finish, unpack_scales_mins, Q8K_BSUMS, Q8K_QS, QK_K};

/// Whether this CPU runs the kernels in this module.
pub(crate) fn detected() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

pub(crate) static BACKEND: Backend = Backend {
    name: "avx2",
    tile,
    quant,
    prepared: crate::dot::no_prepared,
    x16: crate::packed::no_x16,
};

/// Largest tile of the block kernels (rows, tokens).
const MAX_R: usize = 4;
const MAX_T: usize = 2;

pub(crate) fn tile(ty: GgmlType) -> TileKernel {
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
        GgmlType::F32 => TileKernel {
            f: single_f32,
            max_r: 1,
            max_t: 1,
        },
        GgmlType::F16 => TileKernel {
            f: single_f16,
            max_r: 1,
            max_t: 1,
        },
        GgmlType::BF16 => TileKernel {
            f: single_bf16,
            max_r: 1,
            max_t: 1,
        },
        GgmlType::Q4K => TileKernel {
            f: single_q4k,
            max_r: 1,
            max_t: 1,
        },
        GgmlType::Q5K => TileKernel {
            f: single_q5k,
            max_r: 1,
            max_t: 1,
        },
        GgmlType::Q6K => TileKernel {
            f: single_q6k,
            max_r: 1,
            max_t: 1,
        },
        // llama.cpp's quantizer picks these for K-quant mixes whose rows are not a multiple
        // of 256.
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
        other => panic!("{} is not a weight type", other.name()),
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers.

/// Read a little-endian u16 at `p` (any alignment).
#[inline(always)]
pub(crate) unsafe fn rd16(p: *const u8) -> i16 {
    // SAFETY: the caller guarantees `p..p+2` is readable.
    unsafe { std::ptr::read_unaligned(p as *const u16) as i16 }
}

/// Horizontal sum of 8 lanes in a fixed order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn hsum256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Broadcast the f16 at `p` as 8 f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bcast_f16(p: *const u8) -> __m256 {
    // SAFETY: the caller guarantees two readable bytes at `p`.
    _mm256_cvtph_ps(_mm_set1_epi16(unsafe { rd16(p) }))
}

// ---------------------------------------------------------------------------------------------
// 32-element block kernels, tiled.

/// One 32-element block type pair (weights × activations) for the tiled kernel.
trait Blk {
    /// Bytes per weight block and per activation block.
    const WB: usize;
    const AB: usize;
    const WTY: GgmlType;
    type W: Copy;
    type A: Copy;
    /// Load and unpack the weight block at `p`.
    unsafe fn load_w(p: *const u8) -> Self::W;
    /// Load the activation block at `p`.
    unsafe fn load_a(p: *const u8) -> Self::A;
    /// Add one block's product to `acc`. The sequence of float ops depends on nothing but
    /// the two blocks, which is what makes tiling invisible in the results.
    unsafe fn step(w: Self::W, a: Self::A, acc: Acc) -> Acc;
    /// Whether `Acc::m` holds Q4_1/Q5_1's `summs`, added after the horizontal sum.
    const MINS: bool = false;
}

/// ggml's accumulators per output: 8 lanes, and `summs` (lane 0) for the types with mins.
#[derive(Clone, Copy)]
struct Acc {
    v: __m256,
    m: __m128,
}

struct Q40;
struct Q41;
struct Q50;
struct Q51;
struct Q80;

#[derive(Clone, Copy)]
struct WNib {
    q: __m256i,
    d: __m256,
    /// Q4_1/Q5_1: `m` in lane 0.
    m: __m128,
}

#[derive(Clone, Copy)]
struct A8 {
    q: __m256i,
    d: __m256,
    /// Q8_0 for Q4_0/Q5_0: `k·Σ₄q` per i32 lane (bit-cast).
    s: __m256,
    /// Q8_1: `s` in lane 0.
    s1: __m128,
}

#[derive(Clone, Copy)]
struct W8 {
    q: __m256i,
    qa: __m256i,
    d: __m256,
}

/// 16 packed bytes of nibbles → 32 bytes: low nibbles then high nibbles.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack_nibbles(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 16 readable bytes at `p`.
    let raw = unsafe { _mm_loadu_si128(p as *const __m128i) };
    _mm256_and_si256(
        _mm256_set_m128i(_mm_srli_epi16::<4>(raw), raw),
        _mm256_set1_epi8(0x0F),
    )
}

/// 16 packed nibble bytes at `p` plus the fifth bits of the little-endian `qh` word at `h`
/// → 32 bytes in element order (byte `j` is element `j` and takes bit `j` of `qh`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack_q5(p: *const u8, h: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 16 readable bytes at `p` and 4 at `h`.
    let (lo, qh) = unsafe {
        (
            unpack_nibbles(p),
            std::ptr::read_unaligned(h as *const u32) as i32,
        )
    };
    // ggml's `bytes_from_bits_32`: byte j of lane group j/8 gets qh's byte j/8, then tests
    // its bit j%8.
    let v = _mm256_shuffle_epi8(
        _mm256_set1_epi32(qh),
        _mm256_setr_epi64x(
            0x0000_0000_0000_0000,
            0x0101_0101_0101_0101,
            0x0202_0202_0202_0202,
            0x0303_0303_0303_0303,
        ),
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
    _mm256_or_si256(lo, _mm256_and_si256(set, _mm256_set1_epi8(0x10)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_u8i8(x: __m256i, y: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1))
}

impl Blk for Q41 {
    const WB: usize = 20;
    const AB: usize = 36;
    const WTY: GgmlType = GgmlType::Q4_1;
    type W = WNib;
    type A = A8;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_w(p: *const u8) -> WNib {
        // SAFETY: the caller guarantees a whole block at `p`.
        unsafe {
            let m = _mm_cvtph_ps(_mm_cvtsi32_si128(rd16(p.add(2)) as u16 as i32));
            WNib {
                q: unpack_nibbles(p.add(4)),
                d: bcast_f16(p),
                m,
            }
        }
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_a(p: *const u8) -> A8 {
        // SAFETY: the caller guarantees a whole block at `p`.
        unsafe {
            A8 {
                q: _mm256_loadu_si256(p.add(4) as *const __m256i),
                d: bcast_f16(p),
                s: _mm256_setzero_ps(),
                s1: _mm_cvtph_ps(_mm_cvtsi32_si128(rd16(p.add(2)) as u16 as i32)),
            }
        }
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn step(w: WNib, a: A8, acc: Acc) -> Acc {
        // ggml: `acc = fma(d_w·d_a, f32(Σ₄ q·a), acc)`; `summs = fma(m, s, summs)` apart.
        let i = dot_u8i8(w.q, a.q);
        Acc {
            v: _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_mul_ps(w.d, a.d), acc.v),
            m: _mm_fmadd_ss(w.m, a.s1, acc.m),
        }
    }
    const MINS: bool = true;
}

impl Blk for Q40 {
    const WB: usize = 18;
    const AB: usize = 34;
    const WTY: GgmlType = GgmlType::Q4_0;
    type W = WNib;
    type A = A8;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_w(p: *const u8) -> WNib {
        // SAFETY: the caller guarantees a whole block at `p`.
        unsafe {
            WNib {
                q: unpack_nibbles(p.add(2)),
                d: bcast_f16(p),
                m: _mm_setzero_ps(),
            }
        }
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_a(p: *const u8) -> A8 {
        // SAFETY: the caller guarantees a whole block at `p`.
        unsafe {
            let q = _mm256_loadu_si256(p.add(2) as *const __m256i);
            let s8 = dot_u8i8(_mm256_set1_epi8(8), q);
            A8 {
                q,
                d: bcast_f16(p),
                s: _mm256_castsi256_ps(s8),
                s1: _mm_setzero_ps(),
            }
        }
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn step(w: WNib, a: A8, acc: Acc) -> Acc {
        let i = _mm256_sub_epi32(dot_u8i8(w.q, a.q), _mm256_castps_si256(a.s));
        Acc {
            v: _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_mul_ps(w.d, a.d), acc.v),
            m: acc.m,
        }
    }
}

/// Q8_0 activations with `k·Σq` per i32 lane (bit-cast), for weights stored with a bias `k`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_a80_bias(p: *const u8, k: i8) -> A8 {
    // SAFETY: the caller guarantees a whole block at `p`.
    unsafe {
        let q = _mm256_loadu_si256(p.add(2) as *const __m256i);
        let s = dot_u8i8(_mm256_set1_epi8(k), q);
        A8 {
            q,
            d: bcast_f16(p),
            s: _mm256_castsi256_ps(s),
            s1: _mm_setzero_ps(),
        }
    }
}

impl Blk for Q50 {
    const WB: usize = 22;
    const AB: usize = 34;
    const WTY: GgmlType = GgmlType::Q5_0;
    type W = WNib;
    type A = A8;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_w(p: *const u8) -> WNib {
        // SAFETY: the caller guarantees a whole block at `p`.
        unsafe {
            WNib {
                q: unpack_q5(p.add(6), p.add(2)),
                d: bcast_f16(p),
                m: _mm_setzero_ps(),
            }
        }
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_a(p: *const u8) -> A8 {
        // SAFETY: forwarded from the caller.
        unsafe { load_a80_bias(p, 16) }
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn step(w: WNib, a: A8, acc: Acc) -> Acc {
        // Σ (q - 16)·a = Σ q·a - 16·Σ a; q ≤ 31 keeps maddubs from saturating.
        let i = _mm256_sub_epi32(dot_u8i8(w.q, a.q), _mm256_castps_si256(a.s));
        Acc {
            v: _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_mul_ps(w.d, a.d), acc.v),
            m: acc.m,
        }
    }
}

impl Blk for Q51 {
    const WB: usize = 24;
    const AB: usize = 36;
    const WTY: GgmlType = GgmlType::Q5_1;
    type W = WNib;
    type A = A8;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_w(p: *const u8) -> WNib {
        // SAFETY: the caller guarantees a whole block at `p`.
        unsafe {
            let m = _mm_cvtph_ps(_mm_cvtsi32_si128(rd16(p.add(2)) as u16 as i32));
            WNib {
                q: unpack_q5(p.add(8), p.add(4)),
                d: bcast_f16(p),
                m,
            }
        }
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_a(p: *const u8) -> A8 {
        // SAFETY: forwarded from the caller (Q8_1 activations, as for Q4_1).
        unsafe { Q41::load_a(p) }
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn step(w: WNib, a: A8, acc: Acc) -> Acc {
        // SAFETY: the same arithmetic as Q4_1 (5-bit quants, ≤ 31, do not saturate maddubs).
        unsafe { Q41::step(w, a, acc) }
    }
    const MINS: bool = true;
}

impl Blk for Q80 {
    const WB: usize = 34;
    const AB: usize = 34;
    const WTY: GgmlType = GgmlType::Q8_0;
    type W = W8;
    type A = A8;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_w(p: *const u8) -> W8 {
        // SAFETY: the caller guarantees a whole block at `p`.
        unsafe {
            let q = _mm256_loadu_si256(p.add(2) as *const __m256i);
            W8 {
                q,
                qa: _mm256_abs_epi8(q),
                d: bcast_f16(p),
            }
        }
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_a(p: *const u8) -> A8 {
        // SAFETY: the caller guarantees a whole block at `p`.
        unsafe {
            A8 {
                q: _mm256_loadu_si256(p.add(2) as *const __m256i),
                d: bcast_f16(p),
                s: _mm256_setzero_ps(),
                s1: _mm_setzero_ps(),
            }
        }
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn step(w: W8, a: A8, acc: Acc) -> Acc {
        // |w| · (a · sign w) = w · a; |w| ≤ 128 and |a| ≤ 127 keep maddubs from saturating.
        let i = dot_u8i8(w.qa, _mm256_sign_epi8(a.q, w.q));
        Acc {
            v: _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_mul_ps(w.d, a.d), acc.v),
            m: acc.m,
        }
    }
}

/// `R` weight rows × `T` activation rows over `nb` blocks.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_blk<K: Blk, const R: usize, const T: usize>(
    nb: usize,
    w: *const u8,
    ws: usize,
    a: *const u8,
    as_: usize,
    out: *mut f32,
) {
    let z = Acc {
        v: _mm256_setzero_ps(),
        m: _mm_setzero_ps(),
    };
    let mut acc = [[z; T]; R];
    for b in 0..nb {
        // SAFETY: block `b` of rows `< R` / `< T` lies inside the ranges `check_tile` verified.
        unsafe {
            if T <= 2 && (b * K::WB) % 64 < K::WB {
                // Where this block starts a cache line.
                super::prefetch_next_tile::<R>(w, ws, b * K::WB);
            }
            let mut wv = [K::load_w(w.add(b * K::WB)); R];
            for (r, v) in wv.iter_mut().enumerate().skip(1) {
                *v = K::load_w(w.add(r * ws + b * K::WB));
            }
            let mut av = [K::load_a(a.add(b * K::AB)); T];
            for (t, v) in av.iter_mut().enumerate().skip(1) {
                *v = K::load_a(a.add(t * as_ + b * K::AB));
            }
            for r in 0..R {
                for t in 0..T {
                    acc[r][t] = K::step(wv[r], av[t], acc[r][t]);
                }
            }
        }
    }
    for r in 0..R {
        for t in 0..T {
            let c = acc[r][t];
            let s = hsum256(c.v);
            let s = if K::MINS { s + _mm_cvtss_f32(c.m) } else { s };
            // SAFETY: `out` holds at least R·T elements (checked by the caller).
            unsafe { *out.add(r * T + t) = s };
        }
    }
}

tile_wrapper!(tile_q4_0, Q40::WTY, tile_blk, Q40, 32);
tile_wrapper!(tile_q4_1, Q41::WTY, tile_blk, Q41, 32);
tile_wrapper!(tile_q8_0, Q80::WTY, tile_blk, Q80, 32);
tile_wrapper!(tile_q5_0, Q50::WTY, tile_blk, Q50, 32);
tile_wrapper!(tile_q5_1, Q51::WTY, tile_blk, Q51, 32);

/// A tile made of single-pair products (for kernels without a tiled form).
macro_rules! single_wrapper {
    ($name:ident, $ty:expr, $f:ident) => {
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
            check_tile($ty, n, nr, nt, w, ws, a, as_, out);
            for r in 0..nr {
                for t in 0..nt {
                    // SAFETY: row r / token t are in bounds (checked above); reachable only via
                    // `BACKEND`, used after `detected()`.
                    out[r * nt + t] =
                        unsafe { $f(n, w.as_ptr().add(r * ws), a.as_ptr().add(t * as_)) };
                }
            }
        }
    };
}

single_wrapper!(single_f32, GgmlType::F32, dot_f32);
single_wrapper!(single_f16, GgmlType::F16, dot_f16);
single_wrapper!(single_bf16, GgmlType::BF16, dot_bf16);
single_wrapper!(single_q4k, GgmlType::Q4K, dot_q4k);
single_wrapper!(single_q5k, GgmlType::Q5K, dot_q5k);
single_wrapper!(single_q6k, GgmlType::Q6K, dot_q6k);

// ---------------------------------------------------------------------------------------------
// Float rows.

/// Dot of two float rows given a loader of 8 lanes at element `i`, and a scalar loader for the
/// tail. Four accumulators over 32 elements, combined in a fixed order.
macro_rules! float_dot {
    ($n:expr, $load:expr, $scalar:expr) => {{
        let n = $n;
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (k, ac) in acc.iter_mut().enumerate() {
                let (x, y) = $load(i + 8 * k);
                *ac = _mm256_fmadd_ps(x, y, *ac);
            }
            i += 32;
        }
        while i + 8 <= n {
            let (x, y) = $load(i);
            acc[0] = _mm256_fmadd_ps(x, y, acc[0]);
            i += 8;
        }
        let mut s = hsum256(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ));
        while i < n {
            s += $scalar(i);
            i += 1;
        }
        s
    }};
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f32(n: usize, w: *const u8, a: *const u8) -> f32 {
    let (w, a) = (w as *const f32, a as *const f32);
    // SAFETY: both rows hold `n` f32 (checked by the wrapper); reads are unaligned.
    unsafe {
        float_dot!(
            n,
            |i: usize| (_mm256_loadu_ps(w.add(i)), _mm256_loadu_ps(a.add(i))),
            |i: usize| std::ptr::read_unaligned(w.add(i)) * std::ptr::read_unaligned(a.add(i))
        )
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16(n: usize, w: *const u8, a: *const u8) -> f32 {
    // SAFETY (both closures): both rows hold `n` f16 (checked by the wrapper).
    let ld = |p: *const u8, i: usize| unsafe {
        _mm256_cvtph_ps(_mm_loadu_si128(p.add(2 * i) as *const __m128i))
    };
    let sc = |p: *const u8, i: usize| unsafe {
        half::f16::from_bits(rd16(p.add(2 * i)) as u16).to_f32()
    };
    float_dot!(n, |i: usize| (ld(w, i), ld(a, i)), |i: usize| sc(w, i)
        * sc(a, i))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_bf16(n: usize, w: *const u8, a: *const u8) -> f32 {
    // SAFETY (both closures): both rows hold `n` bf16 (checked by the wrapper).
    let ld = |p: *const u8, i: usize| {
        let h = _mm256_cvtepu16_epi32(unsafe { _mm_loadu_si128(p.add(2 * i) as *const __m128i) });
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(h))
    };
    let sc = |p: *const u8, i: usize| {
        f32::from_bits((unsafe { rd16(p.add(2 * i)) } as u16 as u32) << 16)
    };
    float_dot!(n, |i: usize| (ld(w, i), ld(a, i)), |i: usize| sc(w, i)
        * sc(a, i))
}

// ---------------------------------------------------------------------------------------------
// K-quants, one (row, token) pair at a time, in llama.cpp's tiled K-quant order: per super-block
// the exact integer sums `s1` (and `s2` for the mins), then `quant_k::k_block_step`'s float ops.

/// Sum of 8 i32 lanes (exact).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum_i32x8(v: __m256i) -> i32 {
    hsum_i32x4(_mm_add_epi32(
        _mm256_castsi256_si128(v),
        _mm256_extracti128_si256::<1>(v),
    ))
}

/// Sum of 4 i32 lanes (exact).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum_i32x4(v: __m128i) -> i32 {
    let v = _mm_add_epi32(v, _mm_unpackhi_epi64(v, v));
    _mm_cvtsi128_si32(_mm_add_epi32(v, _mm_shuffle_epi32::<1>(v)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rdf32(p: *const u8) -> f32 {
    // SAFETY: the caller guarantees four readable bytes.
    unsafe { std::ptr::read_unaligned(p as *const f32) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16_to_f32(bits: i16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as u16 as i32)))
}

/// Σ mins[j] · (bsums[2j] + bsums[2j+1]) as four i32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn k_mins(mins: &[u8; 8], y: *const u8) -> __m128i {
    // SAFETY: the caller guarantees a whole Q8_K block at `y`.
    unsafe {
        let m = _mm_cvtepu8_epi16(_mm_loadl_epi64(mins.as_ptr() as *const __m128i));
        let bs = _mm256_loadu_si256(y.add(Q8K_BSUMS) as *const __m256i);
        let q8s = _mm_hadd_epi16(
            _mm256_castsi256_si128(bs),
            _mm256_extracti128_si256::<1>(bs),
        );
        _mm_madd_epi16(m, q8s)
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4k(n: usize, x: *const u8, y: *const u8) -> f32 {
    let m4 = _mm256_set1_epi8(0x0F);
    let mut acc = 0f32;
    for i in 0..n / QK_K {
        // SAFETY: block `i` of both rows is in bounds (checked by the wrapper).
        unsafe {
            let xb = x.add(i * 144);
            let yb = y.add(i * 292);
            let (sc, mn) = unpack_scales_mins(std::slice::from_raw_parts(xb.add(4), 12));
            let s2 = hsum_i32x4(k_mins(&mn, yb));
            let mut sumi = _mm256_setzero_si256();
            for j in 0..4 {
                let q4 = _mm256_loadu_si256(xb.add(16 + 32 * j) as *const __m256i);
                let lo = _mm256_and_si256(q4, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q4), m4);
                let a0 = _mm256_loadu_si256(yb.add(Q8K_QS + 64 * j) as *const __m256i);
                let a1 = _mm256_loadu_si256(yb.add(Q8K_QS + 64 * j + 32) as *const __m256i);
                let p0 = _mm256_madd_epi16(
                    _mm256_maddubs_epi16(lo, a0),
                    _mm256_set1_epi16(sc[2 * j] as i16),
                );
                let p1 = _mm256_madd_epi16(
                    _mm256_maddubs_epi16(hi, a1),
                    _mm256_set1_epi16(sc[2 * j + 1] as i16),
                );
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p0, p1));
            }
            let (d, dmin) = (f16_to_f32(rd16(xb)), f16_to_f32(rd16(xb.add(2))));
            acc = k_block_step(acc, hsum_i32x8(sumi), s2, d, Some(dmin), rdf32(yb));
        }
    }
    acc
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q5k(n: usize, x: *const u8, y: *const u8) -> f32 {
    let m4 = _mm256_set1_epi8(0x0F);
    let mut acc = 0f32;
    for i in 0..n / QK_K {
        // SAFETY: block `i` of both rows is in bounds (checked by the wrapper).
        unsafe {
            let xb = x.add(i * 176);
            let yb = y.add(i * 292);
            let (sc, mn) = unpack_scales_mins(std::slice::from_raw_parts(xb.add(4), 12));
            let s2 = hsum_i32x4(k_mins(&mn, yb));
            let mut hbits = _mm256_loadu_si256(xb.add(16) as *const __m256i);
            let mut sumi = _mm256_setzero_si256();
            for j in 0..4 {
                let q4 = _mm256_loadu_si256(xb.add(48 + 32 * j) as *const __m256i);
                let h0 = _mm256_slli_epi16::<4>(_mm256_and_si256(hbits, _mm256_set1_epi8(1)));
                let h1 = _mm256_slli_epi16::<3>(_mm256_and_si256(hbits, _mm256_set1_epi8(2)));
                hbits = _mm256_srli_epi16::<2>(hbits);
                let lo = _mm256_or_si256(_mm256_and_si256(q4, m4), h0);
                let hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(q4), m4), h1);
                let a0 = _mm256_loadu_si256(yb.add(Q8K_QS + 64 * j) as *const __m256i);
                let a1 = _mm256_loadu_si256(yb.add(Q8K_QS + 64 * j + 32) as *const __m256i);
                let p0 = _mm256_madd_epi16(
                    _mm256_maddubs_epi16(lo, a0),
                    _mm256_set1_epi16(sc[2 * j] as i16),
                );
                let p1 = _mm256_madd_epi16(
                    _mm256_maddubs_epi16(hi, a1),
                    _mm256_set1_epi16(sc[2 * j + 1] as i16),
                );
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p0, p1));
            }
            let (d, dmin) = (f16_to_f32(rd16(xb)), f16_to_f32(rd16(xb.add(2))));
            acc = k_block_step(acc, hsum_i32x8(sumi), s2, d, Some(dmin), rdf32(yb));
        }
    }
    acc
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q6k(n: usize, x: *const u8, y: *const u8) -> f32 {
    let m4 = _mm256_set1_epi8(0x0F);
    let m3 = _mm256_set1_epi8(3);
    let mut acc = 0f32;
    for i in 0..n / QK_K {
        // SAFETY: block `i` of both rows is in bounds (checked by the wrapper).
        unsafe {
            let xb = x.add(i * 210);
            let yb = y.add(i * 292);
            let mut sumi = _mm256_setzero_si256();
            for h in 0..2 {
                let qa = _mm256_loadu_si256(xb.add(64 * h) as *const __m256i);
                let qb = _mm256_loadu_si256(xb.add(64 * h + 32) as *const __m256i);
                let qh = _mm256_loadu_si256(xb.add(128 + 32 * h) as *const __m256i);
                let hi = |s: __m256i| _mm256_slli_epi16::<4>(_mm256_and_si256(s, m3));
                let q6 = [
                    _mm256_or_si256(_mm256_and_si256(qa, m4), hi(qh)),
                    _mm256_or_si256(_mm256_and_si256(qb, m4), hi(_mm256_srli_epi16::<2>(qh))),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(qa), m4),
                        hi(_mm256_srli_epi16::<4>(qh)),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(qb), m4),
                        hi(_mm256_srli_epi16::<6>(qh)),
                    ),
                ];
                for (k, q) in q6.iter().enumerate() {
                    let a = _mm256_loadu_si256(yb.add(Q8K_QS + 128 * h + 32 * k) as *const __m256i);
                    let p = _mm256_maddubs_epi16(*q, a);
                    let s0 = *xb.add(192 + 8 * h + 2 * k) as i8 as i16;
                    let s1 = *xb.add(192 + 8 * h + 2 * k + 1) as i8 as i16;
                    let scv = _mm256_set_m128i(_mm_set1_epi16(s1), _mm_set1_epi16(s0));
                    sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scv));
                }
            }
            // The -32 offset: Σ scale · (q − 32) · a = Σ scale · q · a − 32 · Σ scale · bsum.
            let bs = _mm256_loadu_si256(yb.add(Q8K_BSUMS) as *const __m256i);
            let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(xb.add(192) as *const __m128i));
            sumi = _mm256_sub_epi32(sumi, _mm256_slli_epi32::<5>(_mm256_madd_epi16(bs, sc16)));
            let d = f16_to_f32(rd16(xb.add(208)));
            acc = k_block_step(acc, hsum_i32x8(sumi), 0, d, None, rdf32(yb));
        }
    }
    acc
}

// ---------------------------------------------------------------------------------------------
// Activation quantizers, bit-identical to `quant::quantize_row_act`.

/// Round to nearest, half to even, on 8 lanes (`f32::round_ties_even`; ggml's
/// `_mm256_round_ps(v, _MM_ROUND_NEAREST)` and `nearest_int`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn round_even(v: __m256) -> __m256 {
    _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v)
}

/// Pack 4×8 i32 (each in i8 range) into 32 bytes in order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn store_i8x32(q: [__m256i; 4], dst: *mut u8) {
    let p01 = _mm256_packs_epi32(q[0], q[1]);
    let p23 = _mm256_packs_epi32(q[2], q[3]);
    let p = _mm256_packs_epi16(p01, p23);
    let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    // SAFETY: the caller guarantees 32 writable bytes at `dst`.
    unsafe { _mm256_storeu_si256(dst as *mut __m256i, p) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hmax(v: __m256) -> f32 {
    let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_max_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn quant_q8(ty: GgmlType, src: &[f32], dst: &mut [u8]) {
    let ts = ty.type_size();
    let qoff = if ty == GgmlType::Q8_0 { 2 } else { 4 };
    let sign = _mm256_set1_ps(-0.0);
    for (x, b) in src.chunks_exact(32).zip(dst.chunks_exact_mut(ts)) {
        // SAFETY: `x` holds 32 floats.
        let v: [__m256; 4] =
            unsafe { std::array::from_fn(|k| _mm256_loadu_ps(x.as_ptr().add(8 * k))) };
        let m = _mm256_max_ps(
            _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
            _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])),
        );
        let amax = hmax(m);
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        let q: [__m256i; 4] =
            std::array::from_fn(|k| _mm256_cvtps_epi32(round_even(_mm256_mul_ps(v[k], id))));
        // SAFETY: `b` has 32 bytes after `qoff`.
        unsafe { store_i8x32(q, b.as_mut_ptr().add(qoff)) };
        b[0..2].copy_from_slice(&half::f16::from_f32(d).to_bits().to_le_bytes());
        if ty == GgmlType::Q8_1 {
            let s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
            let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
            let sum = _mm_cvtsi128_si32(s);
            b[2..4].copy_from_slice(&half::f16::from_f32(sum as f32 * d).to_bits().to_le_bytes());
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn quant_q8k(src: &[f32], dst: &mut [u8]) {
    let sign = _mm256_set1_ps(-0.0);
    for (x, b) in src
        .chunks_exact(QK_K)
        .zip(dst.chunks_exact_mut(GgmlType::Q8K.type_size()))
    {
        let mut m = _mm256_setzero_ps();
        for c in x.chunks_exact(8) {
            // SAFETY: `c` holds 8 floats.
            m = _mm256_max_ps(
                m,
                _mm256_andnot_ps(sign, unsafe { _mm256_loadu_ps(c.as_ptr()) }),
            );
        }
        let amax = hmax(m);
        // ggml keeps the first value of largest magnitude, with its sign.
        let max = x.iter().copied().find(|v| v.abs() == amax).unwrap_or(0.0);
        if amax == 0.0 || max == 0.0 {
            b.fill(0);
            continue;
        }
        let iscale = -127.0f32 / max;
        let is = _mm256_set1_ps(iscale);
        for (k, c) in x.chunks_exact(32).enumerate() {
            let q: [__m256i; 4] = std::array::from_fn(|j| {
                // SAFETY: `c` holds 32 floats.
                let v = unsafe { _mm256_loadu_ps(c.as_ptr().add(8 * j)) };
                _mm256_min_epi32(
                    _mm256_cvtps_epi32(round_even(_mm256_mul_ps(is, v))),
                    _mm256_set1_epi32(127),
                )
            });
            // SAFETY: the block has 256 quant bytes after `Q8K_QS`.
            unsafe { store_i8x32(q, b.as_mut_ptr().add(Q8K_QS + 32 * k)) };
        }
        q8k_finish(b, 1.0 / iscale);
    }
}

/// f32 to f16 with F16C, 8 at a time (round to nearest even: the conversion of
/// `half::f16::from_f32` and of ggml's `GGML_FP32_TO_FP16`); a ragged tail goes through a
/// zero-padded vector.
#[target_feature(enable = "avx2,fma,f16c")]
fn quant_f16(src: &[f32], dst: &mut [u8]) {
    let mut xs = src.chunks_exact(8);
    let mut ds = dst.chunks_exact_mut(16);
    for (x, d) in (&mut xs).zip(&mut ds) {
        // SAFETY: `x` holds 8 floats and `d` 16 bytes.
        unsafe {
            let h = _mm256_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT }>(_mm256_loadu_ps(x.as_ptr()));
            _mm_storeu_si128(d.as_mut_ptr() as *mut __m128i, h);
        }
    }
    let (x, d) = (xs.remainder(), ds.into_remainder());
    if !x.is_empty() {
        let mut buf = [0f32; 8];
        buf[..x.len()].copy_from_slice(x);
        let mut out = [0u8; 16];
        // SAFETY: `buf` holds 8 floats and `out` 16 bytes.
        unsafe {
            let h = _mm256_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT }>(_mm256_loadu_ps(buf.as_ptr()));
            _mm_storeu_si128(out.as_mut_ptr() as *mut __m128i, h);
        }
        d.copy_from_slice(&out[..d.len()]);
    }
}

fn quant(ty: GgmlType, src: &[f32], dst: &mut [u8]) {
    let bs = ty.block_size();
    assert_eq!(src.len() % bs, 0);
    assert_eq!(dst.len(), src.len() / bs * ty.type_size());
    match ty {
        // SAFETY: reachable only via `BACKEND`, used after `detected()`.
        GgmlType::Q8_0 | GgmlType::Q8_1 => unsafe { quant_q8(ty, src, dst) },
        // SAFETY: as above.
        GgmlType::Q8K => unsafe { quant_q8k(src, dst) },
        // SAFETY: as above.
        GgmlType::F16 => unsafe { quant_f16(src, dst) },
        _ => quantize_row_act(ty, src, dst),
    }
}
