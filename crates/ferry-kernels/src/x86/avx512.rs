//! AVX-512 VNNI kernels, all tiled up to 4 weight rows × 4 tokens: the 32-element block types
//! (Q4_0, Q4_1, Q8_0: two weight rows per 512-bit vector; Q5_0, Q5_1: two tokens per vector;
//! each half following ggml's x86 per-output float ops; integer products with `vpdpbusd`), the
//! K-quants (Q4_K, Q5_K, Q6_K: `vpmaddubsw` + `vpdpwssd`, in llama.cpp's tiled K-quant order)
//! and the float rows (F16, BF16, F32). The quantizers come from the AVX2 module.
//!
//! Every `unsafe` here is either a call of a `#[target_feature]` function (sound because these
//! functions are reachable only through `BACKEND`, handed out after `detected()`), or a pointer
//! read inside a range that the safe wrapper checked with `check_tile`.

// Index loops mirror ggml's reference code and the lane layout of the kernels.
#![allow(clippy::needless_range_loop)]
// Tile kernels take a weight tile, an activation tile and an output slice with strides.
#![allow(clippy::too_many_arguments)]

use std::arch::x86_64::*;

use super::{avx2, tile_wrapper};
use crate::dot::{Backend, PreparedKernel, TileFn, TileKernel};
use crate::quant::GgmlType;
use crate::quant_k::{Q8K_BSUMS, Q8K_QS, QK_K};

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
    prepared,
    x16: super::packed16::x16,
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
        GgmlType::Q4K => TileKernel {
            f: tile_q4k,
            max_r: MAX_R,
            max_t: MAX_T,
        },
        GgmlType::Q5K => TileKernel {
            f: tile_q5k,
            max_r: MAX_R,
            max_t: MAX_T,
        },
        GgmlType::Q6K => TileKernel {
            f: tile_q6k,
            max_r: MAX_R,
            max_t: MAX_T,
        },
        GgmlType::F16 => TileKernel {
            f: tile_f16,
            max_r: MAX_R,
            max_t: MAX_T,
        },
        GgmlType::BF16 => TileKernel {
            f: if has_bf16() {
                tile_bf16_pairs
            } else {
                tile_bf16
            },
            max_r: MAX_R,
            max_t: MAX_T,
        },
        GgmlType::F32 => TileKernel {
            f: tile_f32,
            max_r: MAX_R,
            max_t: MAX_T,
        },
        other => avx2::tile(other),
    }
}

// ---------------------------------------------------------------------------------------------
// Q4_0, Q4_1 and Q8_0: one block per step and two weight rows per vector. The low 256 bits
// carry row 2p, the high 256 bits row 2p + 1, each against the same activation block
// broadcast to both halves. Each half performs exactly the float ops llama.cpp runs per output
// on this kind of CPU, both in its single-token kernels (`ggml_vec_dot_q4_0_q8_0`,
// `_q8_0_q8_0`, `_q4_1_q8_1`, AVX2 code) and in tinyBLAS's `tinyBLAS_Q0_AVX`, which computes
// Q4_0/Q8_0 batches: per block `acc = fma(d_w · d_a, f32(Σ₄ q·a), acc)` in 8 lanes, Q4_1's
// `summs = fma(m, s, summs)` in a separate accumulator, then `hsum_float_8(acc) (+ summs)`
// (`quant::dot_blocks_x86` is the scalar statement). The halves never mix, so a row's result
// does not depend on its neighbour, and a single token (decoding) still fills the vector.

/// Block `b` of two weight rows (the second all zero when absent).
#[derive(Clone, Copy)]
struct WP {
    /// Q4_0/Q4_1: the nibbles as bytes in element order; Q8_0: `w + 128` as u8.
    q: __m512i,
    /// Each row's `d` over its 8 lanes.
    d: __m512,
    /// Q4_1: each row's `m` over its 8 lanes (unused otherwise).
    m: __m512,
}

/// One token's block, the same in both halves.
#[derive(Clone, Copy)]
struct AP {
    q: __m512i,
    d: __m512,
    /// Q8_1 (for Q4_1): `s` in every lane. Q8_0: `-k·Σ₄ a` per i32 lane (bit-cast), the
    /// integer offset that turns the unsigned product into the signed one (k = 8 for Q4_0,
    /// 128 for Q8_0).
    s: __m512,
}

/// Per row pair and token: the 8+8 lanes, and Q4_1's `summs` (each half's lanes all equal).
#[derive(Clone, Copy)]
struct AccP {
    v: __m512,
    m: __m512,
}

/// A 32-element block type for the row-pair kernels.
trait Pair {
    const WB: usize;
    const AB: usize;
    const WTY: GgmlType;
    /// Whether the type has mins (Q4_1), accumulated apart as `summs`.
    const MINS: bool;
    /// The blocks at `p0` (row 2p) and `p1` (row 2p + 1, when there is one).
    unsafe fn load_w(p0: *const u8, p1: Option<*const u8>) -> WP;
    /// The activation block at `p`, in both halves.
    unsafe fn load_a(p: *const u8) -> AP;
}

struct Q40;
struct Q41;
struct Q50;
struct Q51;
struct Q80;

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

/// Two rows' Q4_1 / Q4_0 blocks, loaded at bytes 0 and 32.
static IDX_Q41: [u8; 64] = nib_idx(4, 36);
static IDX_Q40: [u8; 64] = nib_idx(2, 34);
/// Per-16-bit-lane shifts: low nibbles for bytes 0..16 of each block, high for 16..32.
static NIB_SHIFT: [u16; 32] = [
    0, 0, 0, 0, 0, 0, 0, 0, 4, 4, 4, 4, 4, 4, 4, 4, 0, 0, 0, 0, 0, 0, 0, 0, 4, 4, 4, 4, 4, 4, 4, 4,
];
/// Word permutations: word `a` over lanes 0..8, word `b` over lanes 8..16.
const fn bcast2(a: u16, b: u16) -> [u16; 32] {
    let mut t = [0u16; 32];
    let mut i = 0;
    while i < 16 {
        t[i] = if i < 8 { a } else { b };
        i += 1;
    }
    t
}
/// The `d` (word 0) and Q4_1's `m` (word 1) of two rows' blocks loaded at bytes 0 and 32.
static IDX_D2: [u16; 32] = bcast2(0, 16);
static IDX_M2: [u16; 32] = bcast2(1, 17);
/// Q5_0/Q5_1: the nibbles of one block in both halves, or of two consecutive blocks.
static IDX_Q50: [u8; 64] = nib_idx(6, 6);
static IDX_Q51: [u8; 64] = nib_idx(8, 8);
static IDX_Q50_2: [u8; 64] = nib_idx(6, 28);
static IDX_Q51_2: [u8; 64] = nib_idx(8, 32);

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

/// The first `len` bytes of the blocks at `p0` and `p1` (zero when absent) at bytes 0 and 32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn raw_pair(p0: *const u8, p1: Option<*const u8>, len: u32) -> __m512i {
    let mask: u32 = (1 << len) - 1;
    // SAFETY: the masked loads touch only the first `len` bytes at `p0` and `p1`, which the
    // caller guarantees readable.
    unsafe {
        let lo = _mm256_maskz_loadu_epi8(mask, p0 as *const i8);
        let hi = p1.map_or(_mm256_setzero_si256(), |p| {
            _mm256_maskz_loadu_epi8(mask, p as *const i8)
        });
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
    }
}

/// The f16 at word `i` of each half of `raw`, over that half's 8 lanes, as f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn halves_f16(raw: __m512i, idx: &[u16; 32]) -> __m512 {
    // SAFETY: table load.
    let idx = unsafe { ld512(idx) };
    _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi16(idx, raw)))
}

/// A Q8_0 activation block in both halves, with `-k·Σ₄ a` per i32 lane.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn load_a80(p: *const u8, k: i8) -> AP {
    // SAFETY: the caller guarantees a whole block at `p`.
    unsafe {
        let q = _mm512_broadcast_i64x4(_mm256_loadu_si256(p.add(2) as *const __m256i));
        let ks = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(k), q);
        AP {
            q,
            d: _mm512_cvtph_ps(_mm256_set1_epi16(avx2::rd16(p))),
            s: _mm512_castsi512_ps(_mm512_sub_epi32(_mm512_setzero_si512(), ks)),
        }
    }
}

impl Pair for Q41 {
    const WB: usize = 20;
    const AB: usize = 36;
    const WTY: GgmlType = GgmlType::Q4_1;
    const MINS: bool = true;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    unsafe fn load_w(p0: *const u8, p1: Option<*const u8>) -> WP {
        // SAFETY: whole blocks at `p0` and `p1` (the caller's guarantee); tables are 64 bytes.
        unsafe {
            let raw = raw_pair(p0, p1, 20);
            WP {
                q: nibbles(raw, &IDX_Q41),
                d: halves_f16(raw, &IDX_D2),
                m: halves_f16(raw, &IDX_M2),
            }
        }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    unsafe fn load_a(p: *const u8) -> AP {
        // SAFETY: the caller guarantees a whole block at `p`.
        unsafe {
            AP {
                q: _mm512_broadcast_i64x4(_mm256_loadu_si256(p.add(4) as *const __m256i)),
                d: _mm512_cvtph_ps(_mm256_set1_epi16(avx2::rd16(p))),
                s: _mm512_cvtph_ps(_mm256_set1_epi16(avx2::rd16(p.add(2)))),
            }
        }
    }
}

impl Pair for Q40 {
    const WB: usize = 18;
    const AB: usize = 34;
    const WTY: GgmlType = GgmlType::Q4_0;
    const MINS: bool = false;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    unsafe fn load_w(p0: *const u8, p1: Option<*const u8>) -> WP {
        // SAFETY: whole blocks at `p0` and `p1` (the caller's guarantee); tables are 64 bytes.
        unsafe {
            let raw = raw_pair(p0, p1, 18);
            WP {
                q: nibbles(raw, &IDX_Q40),
                d: halves_f16(raw, &IDX_D2),
                m: _mm512_setzero_ps(),
            }
        }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    unsafe fn load_a(p: *const u8) -> AP {
        // SAFETY: forwarded from the caller. Σ (q - 8)·a = Σ q·a - 8·Σ a.
        unsafe { load_a80(p, 8) }
    }
}

impl Pair for Q80 {
    const WB: usize = 34;
    const AB: usize = 34;
    const WTY: GgmlType = GgmlType::Q8_0;
    const MINS: bool = false;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    unsafe fn load_w(p0: *const u8, p1: Option<*const u8>) -> WP {
        // SAFETY: whole blocks at `p0` and `p1` (the caller's guarantee).
        unsafe {
            // w + 128 as u8: the product becomes Σ (w+128)·a - 128·Σ a.
            let q = _mm512_xor_si512(quants_pair(p0, p1, 2), _mm512_set1_epi8(-128));
            WP {
                q,
                d: _mm512_cvtph_ps(f16_pair(p0, p1, 0)),
                m: _mm512_setzero_ps(),
            }
        }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    unsafe fn load_a(p: *const u8) -> AP {
        // SAFETY: forwarded from the caller.
        unsafe { load_a80(p, -128) }
    }
}

/// One block of a row pair × one token: ggml's per-block float ops in each half.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
fn step_pair<K: Pair>(w: &WP, a: &AP, acc: AccP) -> AccP {
    AccP {
        v: step_v::<K>(w.q, w.d, a.q, a.s, a.d, acc.v),
        m: if K::MINS {
            _mm512_fmadd_ps(w.m, a.s, acc.m)
        } else {
            acc.m
        },
    }
}

/// The `acc` part of `step_pair`: `fma(d_w · d_a, f32(Σ₄ q·a (+ offsets)), acc)`; `s` is used
/// only without mins (the i32 offsets).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
fn step_v<K: Pair>(
    wq: __m512i,
    wd: __m512,
    aq: __m512i,
    s: __m512,
    ad: __m512,
    acc: __m512,
) -> __m512 {
    let i = if K::MINS {
        _mm512_dpbusd_epi32(_mm512_setzero_si512(), wq, aq)
    } else {
        _mm512_dpbusd_epi32(_mm512_castps_si512(s), wq, aq)
    };
    _mm512_fmadd_ps(_mm512_mul_ps(wd, ad), _mm512_cvtepi32_ps(i), acc)
}

/// `hsum_float_8` of each 8-lane half: ((x0+x4)+(x2+x6)) + ((x1+x5)+(x3+x7)).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
fn hsum_halves(x: __m512) -> (f32, f32) {
    // 128-bit lanes swapped within each half: lane k + lane k+4.
    let s = _mm512_add_ps(x, _mm512_shuffle_f32x4::<0b10_11_00_01>(x, x));
    // `movehl` within each 128-bit lane, then `movehdup`.
    let s = _mm512_add_ps(s, _mm512_permute_ps::<0b11_10_11_10>(s));
    let s = _mm512_add_ps(s, _mm512_movehdup_ps(s));
    (
        _mm512_cvtss_f32(s),
        _mm_cvtss_f32(_mm512_extractf32x4_ps::<2>(s)),
    )
}

/// Write the results of `R` rows (in pairs) × `T` tokens.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn finish_pairs<K: Pair, const R: usize, const T: usize>(
    acc: &[[AccP; T]; 2],
    out: *mut f32,
) {
    for p in 0..R.div_ceil(2) {
        for t in 0..T {
            let c = acc[p][t];
            let (mut s0, mut s1) = hsum_halves(c.v);
            if K::MINS {
                s0 += _mm512_cvtss_f32(c.m);
                s1 += _mm_cvtss_f32(_mm512_extractf32x4_ps::<2>(c.m));
            }
            // SAFETY: `out` holds at least R·T elements (checked by the caller).
            unsafe {
                *out.add(2 * p * T + t) = s0;
                if 2 * p + 1 < R {
                    *out.add((2 * p + 1) * T + t) = s1;
                }
            }
        }
    }
}

/// `R` weight rows (in pairs) × `T` activation rows over `nb` blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn tile_pair<K: Pair, const R: usize, const T: usize>(
    nb: usize,
    w: *const u8,
    ws: usize,
    a: *const u8,
    as_: usize,
    out: *mut f32,
) {
    // Row pairs: at most 2 (R ≤ 4); `np` of them are used.
    let np = R.div_ceil(2);
    let z = _mm512_setzero_ps();
    let mut acc = [[AccP { v: z, m: z }; T]; 2];
    for b in 0..nb {
        // SAFETY: block `b` of rows `< R` / `< T` lies inside the ranges `check_tile` verified.
        unsafe {
            let wr = |r: usize| w.add(r * ws + b * K::WB);
            let mut wv = [K::load_w(wr(0), (R > 1).then(|| wr(1))); 2];
            if np > 1 {
                wv[1] = K::load_w(wr(2), (R > 3).then(|| wr(3)));
            }
            for t in 0..T {
                let av = K::load_a(a.add(t * as_ + b * K::AB));
                for p in 0..np {
                    acc[p][t] = step_pair::<K>(&wv[p], &av, acc[p][t]);
                }
            }
        }
    }
    // SAFETY: forwarded from the caller.
    unsafe { finish_pairs::<K, R, T>(&acc, out) }
}

tile_wrapper!(tile_q4_0, Q40::WTY, tile_pair, Q40, 32);
tile_wrapper!(tile_q4_1, Q41::WTY, tile_pair, Q41, 32);
tile_wrapper!(tile_q8_0, Q80::WTY, tile_pair, Q80, 32);

// ---------------------------------------------------------------------------------------------
// Prepared operands for the row-pair types. A weight group is stored as row pairs, pair `p` at
// `2p · ds`, each block of the pair (128 bytes) being the `q` and `d` of the `WP` that `load_w`
// builds for it, whole: the quants of both rows, then both rows' `d` over 8 lanes each (an
// absent second row is all zero, as in `load_w`), so the tile loads each vector of the pair
// once. Q4_1's `m` of the whole group follow pair 0's blocks: 4 f32 per block (row order, zero
// for absent rows), for `summs`, which the tile keeps 4 rows to a 128-bit vector per token
// (`fma(m, s, summs)` per lane: ggml's op, lanes never mix). An activation row is its blocks'
// quants (32 bytes, broadcast to both halves by the tile) with, without mins, the i32 offsets
// (32 bytes), then every block's `d`, then (Q4_1) every block's `s`, one f32 each, which the
// tile broadcasts. `tile_prep` runs `tile_pair`'s float ops per (row, token), so the same bits.
// `matmul` prepares the activations once per batch and each 4-row weight group once per 64
// tokens, both at cache-line aligned strides.

/// Prepares one activation row of `n` elements.
type PrepFn = fn(usize, &[u8], &mut [u8]);
/// Prepares a group of weight rows (`PreparedKernel::prep_w`).
type PrepWFn = fn(usize, usize, &[u8], usize, &mut [u8], usize);

/// Bytes of one block of a prepared weight row pair: quants and `d`.
const PAIR_BLK: usize = 128;

/// Bytes per row of a prepared weight group (half a pair's blocks, and Q4_1's `m`).
fn prep_w_bytes_pair<K: Pair>(n: usize) -> usize {
    (n / 32) * (PAIR_BLK / 2 + if K::MINS { 8 } else { 0 })
}

/// Bytes of a prepared activation block's vectors: the quants, and the offsets without mins.
const fn a_blk<K: Pair>() -> usize {
    if K::MINS {
        32
    } else {
        64
    }
}

/// Bytes of a prepared activation row: the blocks' vectors, `d`, and Q4_1's `s`.
fn prep_a_bytes_pair<K: Pair>(n: usize) -> usize {
    (n / 32) * (a_blk::<K>() + if K::MINS { 8 } else { 4 })
}

fn prepared(ty: GgmlType) -> Option<PreparedKernel> {
    let h16 = |prep_w: PrepWFn, prep: PrepFn, f: TileFn| PreparedKernel {
        w_bytes: prep_bytes_h16,
        prep_w,
        a_bytes: prep_bytes_h16,
        prep_a: prep,
        f,
        max_r: H16_R,
        max_t: H16_T,
    };
    let tok2 = |prep_w: PrepWFn, prep_a: PrepFn, f: TileFn| PreparedKernel {
        w_bytes: prep_w_bytes_tok2,
        prep_w,
        a_bytes: prep_a_bytes_tok2,
        prep_a,
        f,
        max_r: MAX_R,
        max_t: MAX_T,
    };
    let kq = |prep_w: PrepWFn, prep_a: PrepFn, f: TileFn| PreparedKernel {
        w_bytes: prep_w_bytes_k,
        prep_w,
        a_bytes: prep_a_bytes_k,
        prep_a,
        f,
        max_r: MAX_R,
        max_t: MAX_T,
    };
    type Bytes = (fn(usize) -> usize, fn(usize) -> usize);
    let (w_bytes, prep_w, prep_a, f): (Bytes, PrepWFn, PrepFn, TileFn) = match ty {
        GgmlType::F16 => return Some(h16(prep_w_f16, prep_f16, tile_prep_f16)),
        GgmlType::BF16 if has_bf16() => {
            return Some(PreparedKernel {
                w_bytes: prep_bytes_pairs,
                a_bytes: prep_bytes_pairs,
                ..h16(prep_w_bf16_pairs, prep_bf16_pairs, tile_prep_bf16_pairs)
            })
        }
        GgmlType::BF16 => return Some(h16(prep_w_bf16, prep_bf16, tile_prep_bf16)),
        GgmlType::F32 => return Some(h16(prep_w_f32, prep_f32, tile_prep_f32)),
        GgmlType::Q5_0 => return Some(tok2(prep_w_q5_0, prep_a_q5_0, tile_prep_q5_0)),
        GgmlType::Q5_1 => return Some(tok2(prep_w_q5_1, prep_a_q5_1, tile_prep_q5_1)),
        GgmlType::Q4K => return Some(kq(prep_w_q4k, prep_a_q4k, tile_prep_q4k)),
        GgmlType::Q5K => return Some(kq(prep_w_q5k, prep_a_q5k, tile_prep_q5k)),
        GgmlType::Q6K => return Some(kq(prep_w_q6k, prep_a_q6k, tile_prep_q6k)),
        GgmlType::Q4_0 => (
            (prep_w_bytes_pair::<Q40>, prep_a_bytes_pair::<Q40>),
            prep_w_q4_0,
            prep_a_q4_0,
            tile_prep_q4_0,
        ),
        GgmlType::Q4_1 => (
            (prep_w_bytes_pair::<Q41>, prep_a_bytes_pair::<Q41>),
            prep_w_q4_1,
            prep_a_q4_1,
            tile_prep_q4_1,
        ),
        GgmlType::Q8_0 => (
            (prep_w_bytes_pair::<Q80>, prep_a_bytes_pair::<Q80>),
            prep_w_q8_0,
            prep_a_q8_0,
            tile_prep_q8_0,
        ),
        _ => return None,
    };
    Some(PreparedKernel {
        w_bytes: w_bytes.0,
        prep_w,
        a_bytes: w_bytes.1,
        prep_a,
        f,
        max_r: MAX_R,
        max_t: MAX_T,
    })
}

/// Prepare the `nr` weight rows of `nb` blocks at `src + i · ss` as row pairs at `dst + 2p · ds`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn prep_w_pairs<K: Pair>(
    nb: usize,
    nr: usize,
    src: *const u8,
    ss: usize,
    dst: *mut u8,
    ds: usize,
) {
    // SAFETY (whole body): the caller checked the `nr` source rows and the group's length,
    // `nr.next_multiple_of(2) · ds` bytes with `ds >= prep_w_bytes_pair(32 · nb)`.
    unsafe {
        // Q4_1's `m` of the group, after pair 0's blocks; zero for absent rows.
        let ms = dst.add(nb * PAIR_BLK) as *mut f32;
        if K::MINS {
            std::ptr::write_bytes(ms, 0, 4 * nb);
        }
        for p in 0..nr.div_ceil(2) {
            let r0 = src.add(2 * p * ss);
            let r1 = (2 * p + 1 < nr).then(|| src.add((2 * p + 1) * ss));
            for b in 0..nb {
                let w = K::load_w(r0.add(b * K::WB), r1.map(|r| r.add(b * K::WB)));
                let o = dst.add(2 * p * ds + b * PAIR_BLK);
                _mm512_storeu_si512(o as *mut __m512i, w.q);
                _mm512_storeu_ps(o.add(64) as *mut f32, w.d);
                if K::MINS {
                    let m = ms.add(4 * b + 2 * p);
                    *m = _mm512_cvtss_f32(w.m);
                    if r1.is_some() {
                        *m.add(1) = _mm_cvtss_f32(_mm512_extractf32x4_ps::<2>(w.m));
                    }
                }
            }
        }
    }
}

/// Prepare the `nb` blocks of one activation row at `src` into `dst`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn prep_a_rows<K: Pair>(nb: usize, src: *const u8, dst: *mut u8) {
    // SAFETY: the caller checked the row (nb blocks) and the prepared row's length,
    // `prep_a_bytes_pair(32 · nb)`.
    unsafe {
        let ds = dst.add(nb * a_blk::<K>()) as *mut f32;
        for b in 0..nb {
            let a = K::load_a(src.add(b * K::AB));
            let o = dst.add(b * a_blk::<K>());
            _mm256_storeu_si256(o as *mut __m256i, _mm512_castsi512_si256(a.q));
            *ds.add(b) = _mm512_cvtss_f32(a.d);
            if K::MINS {
                *ds.add(nb + b) = _mm512_cvtss_f32(a.s);
            } else {
                let s = _mm512_castsi512_si256(_mm512_castps_si512(a.s));
                _mm256_storeu_si256(o.add(32) as *mut __m256i, s);
            }
        }
    }
}

/// The 256-bit half at `p + off` in both halves.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn bcast2x(p: *const u8, off: usize) -> __m512i {
    // SAFETY: the caller guarantees 32 readable bytes at `p + off`.
    unsafe { _mm512_broadcast_i64x4(_mm256_loadu_si256(p.add(off) as *const __m256i)) }
}

/// `tile_pair` over prepared rows of `nb` blocks (layout above).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn tile_prep<K: Pair, const R: usize, const T: usize>(
    nb: usize,
    w: *const u8,
    ws: usize,
    a: *const u8,
    as_: usize,
    out: *mut f32,
) {
    let np = R.div_ceil(2);
    let mut acc = [[_mm512_setzero_ps(); T]; 2];
    // Q4_1: `summs` of rows 0..4 (lanes) per token.
    let mut summs = [_mm_setzero_ps(); T];
    let ab = a_blk::<K>();
    for b in 0..nb {
        // SAFETY: block `b` of rows `< R` / `< T` lies inside the ranges the wrapper checked.
        unsafe {
            // Rows `r`, `r + 1` of the group: one pair, prepared whole (see `prep_w_pairs`).
            let pair = |r: usize| {
                let o = w.add(r * ws + b * PAIR_BLK);
                (
                    _mm512_loadu_si512(o as *const __m512i),
                    _mm512_loadu_ps(o.add(64) as *const f32),
                )
            };
            let mut wv = [pair(0); 2];
            if np > 1 {
                wv[1] = pair(2);
            }
            let m = if K::MINS {
                _mm_loadu_ps(w.add(nb * PAIR_BLK + 16 * b) as *const f32)
            } else {
                _mm_setzero_ps()
            };
            for t in 0..T {
                let p = a.add(t * as_);
                let aq = bcast2x(p, b * ab);
                let ad = _mm512_set1_ps(*(p.add(nb * ab + 4 * b) as *const f32));
                let s = if K::MINS {
                    let s = *(p.add(nb * ab + 4 * (nb + b)) as *const f32);
                    summs[t] = _mm_fmadd_ps(m, _mm_set1_ps(s), summs[t]);
                    _mm512_setzero_ps()
                } else {
                    _mm512_castsi512_ps(bcast2x(p, b * ab + 32))
                };
                for p in 0..np {
                    acc[p][t] = step_v::<K>(wv[p].0, wv[p].1, aq, s, ad, acc[p][t]);
                }
            }
        }
    }
    for p in 0..np {
        for t in 0..T {
            let (mut s0, mut s1) = hsum_halves(acc[p][t]);
            if K::MINS {
                let mut m = [0f32; 4];
                // SAFETY: `m` holds 4 floats.
                unsafe { _mm_storeu_ps(m.as_mut_ptr(), summs[t]) };
                s0 += m[2 * p];
                s1 += m[2 * p + 1];
            }
            // SAFETY: `out` holds at least R·T elements (checked by the caller).
            unsafe {
                *out.add(2 * p * T + t) = s0;
                if 2 * p + 1 < R {
                    *out.add((2 * p + 1) * T + t) = s1;
                }
            }
        }
    }
}

/// The safe entry points of a prepared block kernel for `$k`: weight and activation
/// preparation (`$prep_w`, `$prep_a`, into `$w_bytes(n)` / `$a_bytes(n)` bytes per row) and the
/// tile (`$kernel`, stepping `$steps(n)` times over a row).
macro_rules! prep_fns {
    ($k:ty, $pw:ident, $pa:ident, $tile:ident;
     $prep_w:ident, $prep_a:ident, $w_bytes:expr, $a_bytes:expr, $kernel:ident, $steps:expr) => {
        fn $pw(n: usize, nr: usize, src: &[u8], ss: usize, dst: &mut [u8], ds: usize) {
            let rb = <$k>::WTY.row_bytes(n).expect("whole blocks");
            assert!((1..=MAX_R).contains(&nr));
            assert!(ss >= rb && src.len() >= (nr - 1) * ss + rb);
            assert!(ds >= $w_bytes(n) && dst.len() >= nr.next_multiple_of(2) * ds);
            let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
            // SAFETY: lengths checked; reachable only via `BACKEND`, used after `detected()`.
            unsafe { $prep_w::<$k>(n / 32, nr, s, ss, d, ds) }
        }
        fn $pa(n: usize, src: &[u8], dst: &mut [u8]) {
            let rb = <$k>::WTY.vec_dot_type().row_bytes(n).expect("whole blocks");
            assert!(src.len() >= rb && dst.len() >= $a_bytes(n));
            // SAFETY: as above.
            unsafe { $prep_a::<$k>(n / 32, src.as_ptr(), dst.as_mut_ptr()) }
        }
        fn $tile(
            n: usize,
            nr: usize,
            nt: usize,
            w: &[u8],
            ws: usize,
            a: &[u8],
            as_: usize,
            out: &mut [f32],
        ) {
            let (pw, pa) = ($w_bytes(n), $a_bytes(n));
            assert!(n.is_multiple_of(32) && nr >= 1 && nt >= 1 && out.len() >= nr * nt);
            assert!(
                ws >= pw && w.len() >= nr.next_multiple_of(2) * ws,
                "weight tile out of bounds"
            );
            assert!(
                as_ >= pa && a.len() >= (nt - 1) * as_ + pa,
                "activation tile out of bounds"
            );
            let steps: usize = $steps(n);
            let (w, a, o) = (w.as_ptr(), a.as_ptr(), out.as_mut_ptr());
            // SAFETY: bounds checked above; reachable only via `BACKEND`, used after `detected()`.
            unsafe { super::rt_match!($kernel, $k, nr, nt, (steps, w, ws, a, as_, o)) }
        }
    };
}
/// One block per step, two rows per vector.
macro_rules! prep_fns_pair {
    ($k:ty, $pw:ident, $pa:ident, $tile:ident) => {
        prep_fns!($k, $pw, $pa, $tile; prep_w_pairs, prep_a_rows, (prep_w_bytes_pair::<$k>),
            (prep_a_bytes_pair::<$k>), tile_prep, |n: usize| n / 32);
    };
}
prep_fns_pair!(Q40, prep_w_q4_0, prep_a_q4_0, tile_prep_q4_0);
prep_fns_pair!(Q41, prep_w_q4_1, prep_a_q4_1, tile_prep_q4_1);
prep_fns_pair!(Q80, prep_w_q8_0, prep_a_q8_0, tile_prep_q8_0);

// ---------------------------------------------------------------------------------------------
// Q5_0/Q5_1, one block per step and two tokens per vector: the low 256 bits carry token 2p, the
// high 256 bits token 2p + 1, each against the same weight block broadcast to both halves. Each
// half then performs exactly the float ops of ggml's AVX2 `ggml_vec_dot_q5_{0,1}_q8_{0,1}`
// (llama.cpp's kernel on this kind of CPU): per block `acc += (d_w · d_a) · f32(Σ₄ q·a)` in 8
// lanes, Q5_1's `summs += m · s` in a separate accumulator, and `hsum_float_8(acc) + summs`.
// The halves never mix, so a token's result does not depend on its neighbour.

/// A Q5 weight block, both halves equal.
#[derive(Clone, Copy)]
struct W5 {
    q: __m512i,
    d: __m512,
    /// Q5_1: `m` in every lane.
    m: __m128,
}

/// The same block of two tokens (the second zero when absent).
#[derive(Clone, Copy)]
struct A5 {
    q: __m512i,
    /// Each token's `d` over its 8 lanes.
    d: __m512,
    /// Q5_0: `-16 · Σ₄ a` per lane (bit-cast); Q5_1 unused.
    k: __m512i,
    /// Q5_1: the two tokens' `s` in lanes 0 and 1.
    s: __m128,
}

/// Two accumulators: 8 lanes per token, and Q5_1's `summs` in lanes 0 and 1.
#[derive(Clone, Copy)]
struct Acc5 {
    v: __m512,
    m: __m128,
}

trait Tok2 {
    const WB: usize;
    const AB: usize;
    const WTY: GgmlType;
    const MINS: bool;
    /// Nibble tables: one block in both halves; two consecutive blocks.
    const IDX: &'static [u8; 64];
    const IDX2: &'static [u8; 64];
    /// Offset of `qh` in a block.
    const QH: usize;
    unsafe fn load_w(p: *const u8) -> W5;
    unsafe fn load_a(p0: *const u8, p1: Option<*const u8>) -> A5;
    unsafe fn step(w: &W5, a: &A5, acc: Acc5) -> Acc5;
}

/// Block `b` (and `b + 1` when `two`) of one weight row, blocks in the two halves (for the
/// single-token tile).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn load_w_seq<K: Tok2>(p: *const u8, two: bool) -> W5 {
    let mask: u64 = if two {
        (1 << (2 * K::WB)) - 1
    } else {
        (1 << K::WB) - 1
    };
    // SAFETY: the masked load and the `qh` reads touch only the blocks; tables are 64 bytes.
    unsafe {
        let raw = _mm512_maskz_loadu_epi8(mask, p as *const i8);
        let p1 = two.then(|| p.add(K::WB));
        let m = if K::MINS {
            _mm_cvtph_ps(_mm_setr_epi16(
                avx2::rd16(p.add(2)),
                p1.map_or(0, |q| avx2::rd16(q.add(2))),
                0,
                0,
                0,
                0,
                0,
                0,
            ))
        } else {
            _mm_setzero_ps()
        };
        W5 {
            q: _mm512_or_si512(nibbles(raw, K::IDX2), high_bits(p.add(K::QH), K::WB, two)),
            d: _mm512_cvtph_ps(f16_pair(p, p1, 0)),
            m,
        }
    }
}

/// One token's blocks in sequence (the single-token tile): the pair of blocks in the two halves
/// of the vector is accumulated low half first, then high half, into 8 lanes, as ggml's loop
/// over blocks does; Q5_1's `summs` likewise block by block in lane 0.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn step_seq<K: Tok2>(w: &W5, a: &A5, two: bool, acc: Acc5) -> Acc5 {
    let i = if K::MINS {
        _mm512_dpbusd_epi32(_mm512_setzero_si512(), w.q, a.q)
    } else {
        _mm512_dpbusd_epi32(a.k, w.q, a.q)
    };
    let v = _mm512_cvtepi32_ps(i);
    let dd = _mm512_mul_ps(w.d, a.d);
    let lo = |x: __m512| _mm512_castps512_ps256(x);
    let hi = |x: __m512| _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(x)));
    let mut v8 = _mm256_fmadd_ps(lo(dd), lo(v), _mm512_castps512_ps256(acc.v));
    let mut m = acc.m;
    if K::MINS {
        m = _mm_fmadd_ss(w.m, a.s, m);
    }
    if two {
        v8 = _mm256_fmadd_ps(hi(dd), hi(v), v8);
        if K::MINS {
            m = _mm_fmadd_ss(_mm_movehdup_ps(w.m), _mm_movehdup_ps(a.s), m);
        }
    }
    Acc5 {
        v: _mm512_castps256_ps512(v8),
        m,
    }
}

/// The f16 at `p0 + off` over lanes 0-7 and at `p1 + off` (or 0) over lanes 8-15, as f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn f16_pair(p0: *const u8, p1: Option<*const u8>, off: usize) -> __m256i {
    // SAFETY: the caller guarantees two readable bytes at each `p + off`.
    unsafe {
        let d0 = avx2::rd16(p0.add(off));
        let d1 = p1.map_or(0, |p| avx2::rd16(p.add(off)));
        _mm256_set_m128i(_mm_set1_epi16(d1), _mm_set1_epi16(d0))
    }
}

/// 32 quant bytes at `p0 + off` (low half) and `p1 + off` (high half, or zero).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn quants_pair(p0: *const u8, p1: Option<*const u8>, off: usize) -> __m512i {
    // SAFETY: the caller guarantees 32 readable bytes at each `p + off`.
    unsafe {
        let q0 = _mm256_loadu_si256(p0.add(off) as *const __m256i);
        let q1 = p1.map_or(_mm256_setzero_si256(), |p| {
            _mm256_loadu_si256(p.add(off) as *const __m256i)
        });
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(q0), q1)
    }
}

impl Tok2 for Q50 {
    const WB: usize = 22;
    const AB: usize = 34;
    const WTY: GgmlType = GgmlType::Q5_0;
    const MINS: bool = false;
    const IDX: &'static [u8; 64] = &IDX_Q50;
    const IDX2: &'static [u8; 64] = &IDX_Q50_2;
    const QH: usize = 2;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    unsafe fn load_w(p: *const u8) -> W5 {
        // SAFETY: the masked load and the `qh` read touch only the block; tables are 64 bytes.
        unsafe {
            let raw = _mm512_maskz_loadu_epi8((1 << 22) - 1, p as *const i8);
            W5 {
                q: _mm512_or_si512(nibbles(raw, Self::IDX), high_bits(p.add(Self::QH), 0, true)),
                d: _mm512_cvtph_ps(_mm256_set1_epi16(avx2::rd16(p))),
                m: _mm_setzero_ps(),
            }
        }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    unsafe fn load_a(p0: *const u8, p1: Option<*const u8>) -> A5 {
        // SAFETY: the caller guarantees whole blocks at `p0` and `p1`.
        unsafe {
            let q = quants_pair(p0, p1, 2);
            let ks = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(16), q);
            A5 {
                q,
                d: _mm512_cvtph_ps(f16_pair(p0, p1, 0)),
                k: _mm512_sub_epi32(_mm512_setzero_si512(), ks),
                s: _mm_setzero_ps(),
            }
        }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    unsafe fn step(w: &W5, a: &A5, acc: Acc5) -> Acc5 {
        // Σ₄ (q - 16)·a = Σ₄ q·a - 16·Σ₄ a, exactly ggml's integer lanes.
        let i = _mm512_dpbusd_epi32(a.k, w.q, a.q);
        Acc5 {
            v: _mm512_fmadd_ps(_mm512_mul_ps(w.d, a.d), _mm512_cvtepi32_ps(i), acc.v),
            m: acc.m,
        }
    }
}

impl Tok2 for Q51 {
    const WB: usize = 24;
    const AB: usize = 36;
    const WTY: GgmlType = GgmlType::Q5_1;
    const MINS: bool = true;
    const IDX: &'static [u8; 64] = &IDX_Q51;
    const IDX2: &'static [u8; 64] = &IDX_Q51_2;
    const QH: usize = 4;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    unsafe fn load_w(p: *const u8) -> W5 {
        // SAFETY: the masked load and the `qh` read touch only the block; tables are 64 bytes.
        unsafe {
            let raw = _mm512_maskz_loadu_epi8((1 << 24) - 1, p as *const i8);
            W5 {
                q: _mm512_or_si512(nibbles(raw, Self::IDX), high_bits(p.add(Self::QH), 0, true)),
                d: _mm512_cvtph_ps(_mm256_set1_epi16(avx2::rd16(p))),
                m: _mm_cvtph_ps(_mm_set1_epi16(avx2::rd16(p.add(2)))),
            }
        }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    unsafe fn load_a(p0: *const u8, p1: Option<*const u8>) -> A5 {
        // SAFETY: the caller guarantees whole blocks at `p0` and `p1`.
        unsafe {
            let s0 = avx2::rd16(p0.add(2));
            let s1 = p1.map_or(0, |p| avx2::rd16(p.add(2)));
            A5 {
                q: quants_pair(p0, p1, 4),
                d: _mm512_cvtph_ps(f16_pair(p0, p1, 0)),
                k: _mm512_setzero_si512(),
                s: _mm_cvtph_ps(_mm_setr_epi16(s0, s1, 0, 0, 0, 0, 0, 0)),
            }
        }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    unsafe fn step(w: &W5, a: &A5, acc: Acc5) -> Acc5 {
        let i = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w.q, a.q);
        Acc5 {
            v: _mm512_fmadd_ps(_mm512_mul_ps(w.d, a.d), _mm512_cvtepi32_ps(i), acc.v),
            m: _mm_fmadd_ps(w.m, a.s, acc.m),
        }
    }
}

/// `R` weight rows × `T` activation rows over `nb` blocks, tokens in pairs.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn tile_tok2<K: Tok2, const R: usize, const T: usize>(
    nb: usize,
    w: *const u8,
    ws: usize,
    a: *const u8,
    as_: usize,
    out: *mut f32,
) {
    // Pairs of tokens: at most 2 (T ≤ 4); `np` of them are used.
    let np = T.div_ceil(2);
    let zero = Acc5 {
        v: _mm512_setzero_ps(),
        m: _mm_setzero_ps(),
    };
    let mut acc = [[zero; 2]; R];
    if T == 1 {
        // One token: two consecutive blocks per vector, accumulated in block order.
        let mut b = 0;
        while b < nb {
            let two = b + 1 < nb;
            // SAFETY: blocks `b` (and `b + 1` when `two`) of rows `< R` and of the token lie
            // inside the ranges `check_tile` verified.
            unsafe {
                let p = a.add(b * K::AB);
                let av = K::load_a(p, two.then(|| p.add(K::AB)));
                for r in 0..R {
                    let wv = load_w_seq::<K>(w.add(r * ws + b * K::WB), two);
                    acc[r][0] = step_seq::<K>(&wv, &av, two, acc[r][0]);
                }
            }
            b += 2;
        }
    }
    for b in 0..if T == 1 { 0 } else { nb } {
        // SAFETY: block `b` of rows `< R` / `< T` lies inside the ranges `check_tile` verified.
        unsafe {
            let at = |t: usize| a.add(t * as_ + b * K::AB);
            let mut av = [K::load_a(at(0), (T > 1).then(|| at(1))); 2];
            if np > 1 {
                av[1] = K::load_a(at(2), (T > 3).then(|| at(3)));
            }
            for r in 0..R {
                let wv = K::load_w(w.add(r * ws + b * K::WB));
                for p in 0..np {
                    acc[r][p] = K::step(&wv, &av[p], acc[r][p]);
                }
            }
        }
    }
    for r in 0..R {
        for t in 0..T {
            let c = acc[r][t / 2];
            let (v, m) = if t % 2 == 0 {
                (_mm512_castps512_ps256(c.v), _mm_cvtss_f32(c.m))
            } else {
                (
                    _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(c.v))),
                    _mm_cvtss_f32(_mm_movehdup_ps(c.m)),
                )
            };
            let s = avx2::hsum256(v);
            let s = if K::MINS { s + m } else { s };
            // SAFETY: `out` holds at least R·T elements (checked by the caller).
            unsafe { *out.add(r * T + t) = s };
        }
    }
}

tile_wrapper!(tile_q5_0, Q50::WTY, tile_tok2, Q50, 32);
tile_wrapper!(tile_q5_1, Q51::WTY, tile_tok2, Q51, 32);

// Prepared Q5_0/Q5_1 operands: each weight block as the `W5` of `load_w` (144 bytes), each
// activation block as one token's half of the `A5` of `load_a` (quants, scale, offsets: 3 × 32
// bytes, then `s`; 128 bytes). `tile_prep_tok2` joins two tokens' halves into the `A5` that
// `load_a` builds for the pair (an absent second token is all zeros there too) and runs
// `tile_tok2`'s token-pair steps: the same float operations per token, so the same bits as
// `tile_tok2` (whose single-token path also performs them).

const PREP_W5: usize = 144;
const PREP_A5: usize = 128;

fn prep_w_bytes_tok2(n: usize) -> usize {
    (n / 32) * PREP_W5
}

fn prep_a_bytes_tok2(n: usize) -> usize {
    (n / 32) * PREP_A5
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn prep_w_tok2<K: Tok2>(nb: usize, src: *const u8, dst: *mut u8) {
    for b in 0..nb {
        // SAFETY: the caller checked the row (nb blocks) and the prepared row's length.
        unsafe {
            let w = K::load_w(src.add(b * K::WB));
            let o = dst.add(b * PREP_W5);
            _mm512_storeu_si512(o as *mut __m512i, w.q);
            _mm512_storeu_ps(o.add(64) as *mut f32, w.d);
            _mm_storeu_ps(o.add(128) as *mut f32, w.m);
        }
    }
}

/// `prep_w_tok2` over a group of `nr` rows at `src + i · ss`, into `dst + i · ds`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn prep_w_tok2_group<K: Tok2>(
    nb: usize,
    nr: usize,
    src: *const u8,
    ss: usize,
    dst: *mut u8,
    ds: usize,
) {
    for i in 0..nr {
        // SAFETY: forwarded from the caller.
        unsafe { prep_w_tok2::<K>(nb, src.add(i * ss), dst.add(i * ds)) }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn prep_a_tok2<K: Tok2>(nb: usize, src: *const u8, dst: *mut u8) {
    for b in 0..nb {
        // SAFETY: the caller checked the row (nb blocks) and the prepared row's length.
        unsafe {
            let a = K::load_a(src.add(b * K::AB), None);
            let o = dst.add(b * PREP_A5);
            _mm256_storeu_si256(o as *mut __m256i, _mm512_castsi512_si256(a.q));
            _mm256_storeu_ps(o.add(32) as *mut f32, _mm512_castps512_ps256(a.d));
            _mm256_storeu_si256(o.add(64) as *mut __m256i, _mm512_castsi512_si256(a.k));
            _mm_storeu_ps(o.add(96) as *mut f32, a.s);
        }
    }
}

/// The `A5` of tokens at `p0` and `p1` (prepared blocks), as `load_a(p0, p1)` builds it.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn join_a5(p0: *const u8, p1: Option<*const u8>) -> A5 {
    // SAFETY: the caller guarantees prepared blocks at `p0` and `p1`.
    unsafe {
        let half = |p: Option<*const u8>, off: usize| {
            p.map_or(_mm256_setzero_si256(), |p| {
                _mm256_loadu_si256(p.add(off) as *const __m256i)
            })
        };
        let join = |off: usize| {
            _mm512_inserti64x4::<1>(_mm512_castsi256_si512(half(Some(p0), off)), half(p1, off))
        };
        let s0 = _mm_load_ss(p0.add(96) as *const f32);
        let s1 = p1.map_or(_mm_setzero_ps(), |p| _mm_load_ss(p.add(96) as *const f32));
        A5 {
            q: join(0),
            d: _mm512_castsi512_ps(join(32)),
            k: join(64),
            s: _mm_unpacklo_ps(s0, s1),
        }
    }
}

/// `tile_tok2` over prepared rows of `nb` blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn tile_prep_tok2<K: Tok2, const R: usize, const T: usize>(
    nb: usize,
    w: *const u8,
    ws: usize,
    a: *const u8,
    as_: usize,
    out: *mut f32,
) {
    let np = T.div_ceil(2);
    let zero = Acc5 {
        v: _mm512_setzero_ps(),
        m: _mm_setzero_ps(),
    };
    let mut acc = [[zero; 2]; R];
    for b in 0..nb {
        // SAFETY: block `b` of rows `< R` / `< T` lies inside the ranges the wrapper checked.
        unsafe {
            let at = |t: usize| a.add(t * as_ + b * PREP_A5);
            let mut av = [join_a5(at(0), (T > 1).then(|| at(1))); 2];
            if np > 1 {
                av[1] = join_a5(at(2), (T > 3).then(|| at(3)));
            }
            for r in 0..R {
                let o = w.add(r * ws + b * PREP_W5);
                let wv = W5 {
                    q: _mm512_loadu_si512(o as *const __m512i),
                    d: _mm512_loadu_ps(o.add(64) as *const f32),
                    m: _mm_loadu_ps(o.add(128) as *const f32),
                };
                for p in 0..np {
                    acc[r][p] = K::step(&wv, &av[p], acc[r][p]);
                }
            }
        }
    }
    for r in 0..R {
        for t in 0..T {
            let c = acc[r][t / 2];
            let (v, m) = if t % 2 == 0 {
                (_mm512_castps512_ps256(c.v), _mm_cvtss_f32(c.m))
            } else {
                (
                    _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(c.v))),
                    _mm_cvtss_f32(_mm_movehdup_ps(c.m)),
                )
            };
            let s = avx2::hsum256(v);
            let s = if K::MINS { s + m } else { s };
            // SAFETY: `out` holds at least R·T elements (checked by the caller).
            unsafe { *out.add(r * T + t) = s };
        }
    }
}

/// One block per step, two tokens per vector.
macro_rules! prep_fns_tok2 {
    ($k:ty, $pw:ident, $pa:ident, $tile:ident) => {
        prep_fns!($k, $pw, $pa, $tile; prep_w_tok2_group, prep_a_tok2, prep_w_bytes_tok2,
            prep_a_bytes_tok2, tile_prep_tok2, |n: usize| n / 32);
    };
}
prep_fns_tok2!(Q50, prep_w_q5_0, prep_a_q5_0, tile_prep_q5_0);
prep_fns_tok2!(Q51, prep_w_q5_1, prep_a_q5_1, tile_prep_q5_1);

// ---------------------------------------------------------------------------------------------
// K-quants (256-element super-blocks) against Q8_K activations, tiled, in llama.cpp's *tiled*
// K-quant order (`quant_k::vec_dot_k_ref` states it; `ggml-cpu/tiled`, its batched path).
//
// Per 64 elements: `vpmaddubsw` (unsigned quants × signed activations → i16 pairs, which cannot
// saturate: quants ≤ 63), then `vpdpwssd` with the sub-block scales as i16 → i32 lanes; Q6_K's
// `−32` is taken off as `32 · Σ scale · bsum`. Integer sums are exact, so each (row, token)
// pair's lanes hold, in total, llama.cpp's `s1` (and, in 4 more lanes from the bsums, `s2`).
// The 16 pairs of a 4×4 tile are then reduced together (`reduce_pairs`: a transpose-and-add
// that leaves pair `p`'s `s1` and `s2` in lane `lane_of(p)` of two vectors), so the float steps of
// `quant_k::k_block_step` run once per super-block on 16 pairs at a time: `r = f32(s1) · d`,
// `r = fnmadd(dmin, f32(s2), r)`, `acc = fma(r, d_a, acc)` per lane: llama.cpp's per-output
// operations, lanes never mix, whatever the tile shape.

/// A K-quant weight block unpacked for the tiled kernel (`repr(C)` without padding: stored
/// whole as a prepared weight block).
#[derive(Clone, Copy)]
#[repr(C)]
struct WK {
    /// Unsigned quants in element order, 64 per vector.
    q: [__m512i; 4],
    /// The scale of each i16 lane's element pair, per 64-element chunk.
    sc: [__m512i; 4],
    /// Q6_K: the 16 scales as i16 (unused by Q4_K/Q5_K).
    sc16: __m256i,
    /// Q4_K/Q5_K: the 8 mins as i16 (unused by Q6_K).
    mins: __m128i,
    /// `d` and (Q4_K/Q5_K) `dmin` as f32.
    d: f32,
    dmin: f32,
    /// Zero: fills the struct to 576 bytes.
    pad: [f32; 2],
}

/// A Q8_K activation block.
#[derive(Clone, Copy)]
struct AK {
    /// The 256 quants.
    p: *const u8,
    /// Q4_K/Q5_K: sums of 32 quants (ggml's `hadd` of the bsums), as 8 i16.
    q8s: __m128i,
    /// Q6_K: the 16 bsums (sums of 16 quants) as i16.
    bs: __m256i,
    /// `d`.
    d: f32,
}

trait KQuant {
    const WB: usize;
    const WTY: GgmlType;
    /// Whether the block has mins (Q4_K, Q5_K) rather than a fixed offset (Q6_K).
    const MINS: bool;
    unsafe fn load_w(p: *const u8) -> WK;
}

struct Q4K;
struct Q5K;
struct Q6K;

/// i16 lane → scale index tables: lane `k` of chunk `c` takes scale `c·per + k / (32 / per)`,
/// `per` sub-blocks per 64 elements (2 for Q4_K/Q5_K, 4 for Q6_K).
const fn k_idx(per: usize) -> [[u16; 32]; 4] {
    let mut t = [[0u16; 32]; 4];
    let mut c = 0;
    while c < 4 {
        let mut k = 0;
        while k < 32 {
            t[c][k] = (c * per + k / (32 / per)) as u16;
            k += 1;
        }
        c += 1;
    }
    t
}
static IDX_K4: [[u16; 32]; 4] = k_idx(2);
static IDX_K6: [[u16; 32]; 4] = k_idx(4);
/// Per-16-bit-lane shift counts: `a` for the low 256 bits, `b` for the high.
const fn halves(a: u16, b: u16) -> [u16; 32] {
    let mut t = [0u16; 32];
    let mut i = 0;
    while i < 32 {
        t[i] = if i < 16 { a } else { b };
        i += 1;
    }
    t
}
static SH_0_4: [u16; 32] = halves(0, 4);
static SH_0_1: [u16; 32] = halves(0, 1);
static SH_4_2: [u16; 32] = halves(4, 2);
static SH_0_2: [u16; 32] = halves(0, 2);

/// The f16 at `p` as f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn f16_at(p: *const u8) -> f32 {
    // SAFETY: the caller guarantees two readable bytes at `p`.
    unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(avx2::rd16(p) as u16 as i32))) }
}

/// 32 bytes at `p` in both halves of a vector.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn bcast256(p: *const u8) -> __m512i {
    // SAFETY: the caller guarantees 32 readable bytes at `p`.
    unsafe { _mm512_broadcast_i64x4(_mm256_loadu_si256(p as *const __m256i)) }
}

/// Q4_K/Q5_K header: per-chunk scales, mins, `d` and `dmin` (ggml's `utmp` unpacking of the 12
/// packed 6-bit scales and mins).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn k4_header(p: *const u8) -> ([__m512i; 4], __m128i, f32, f32) {
    const KM1: u32 = 0x3f3f_3f3f;
    const KM2: u32 = 0x0f0f_0f0f;
    const KM3: u32 = 0x0303_0303;
    // SAFETY: the caller guarantees a whole Q4_K/Q5_K block at `p`; tables are 64 bytes.
    unsafe {
        let u0 = std::ptr::read_unaligned(p.add(4) as *const u32);
        let u1 = std::ptr::read_unaligned(p.add(8) as *const u32);
        let u2 = std::ptr::read_unaligned(p.add(12) as *const u32);
        let sc_lo = u0 & KM1;
        let sc_hi = (u2 & KM2) | (((u0 >> 6) & KM3) << 4);
        let mn_lo = u1 & KM1;
        let mn_hi = ((u2 >> 4) & KM2) | (((u1 >> 6) & KM3) << 4);
        let sc = _mm256_cvtepu8_epi16(_mm_set_epi32(0, 0, sc_hi as i32, sc_lo as i32));
        let sc = _mm512_castsi256_si512(sc);
        let scs = std::array::from_fn(|c| _mm512_permutexvar_epi16(ld512(&IDX_K4[c]), sc));
        let mins = _mm_cvtepu8_epi16(_mm_set_epi32(0, 0, mn_hi as i32, mn_lo as i32));
        (scs, mins, f16_at(p), f16_at(p.add(2)))
    }
}

impl KQuant for Q4K {
    const WB: usize = 144;
    const WTY: GgmlType = GgmlType::Q4K;
    const MINS: bool = true;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    unsafe fn load_w(p: *const u8) -> WK {
        // SAFETY: the caller guarantees a whole block at `p`; tables are 64 bytes.
        unsafe {
            let (sc, mins, d, dmin) = k4_header(p);
            let sh = ld512(&SH_0_4);
            let q = std::array::from_fn(|c| {
                let raw = bcast256(p.add(16 + 32 * c));
                _mm512_and_si512(_mm512_srlv_epi16(raw, sh), _mm512_set1_epi8(0x0F))
            });
            WK {
                q,
                sc,
                mins,
                sc16: _mm256_setzero_si256(),
                d,
                dmin,
                pad: [0.0; 2],
            }
        }
    }
}

impl KQuant for Q5K {
    const WB: usize = 176;
    const WTY: GgmlType = GgmlType::Q5K;
    const MINS: bool = true;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    unsafe fn load_w(p: *const u8) -> WK {
        // SAFETY: the caller guarantees a whole block at `p`; tables are 64 bytes.
        unsafe {
            let (sc, mins, d, dmin) = k4_header(p);
            let (sh, sh_h) = (ld512(&SH_0_4), ld512(&SH_0_1));
            // Chunk c: the low nibbles take bit 2c of `qh`, the high nibbles bit 2c + 1.
            let mut h = bcast256(p.add(16));
            let mut q = [_mm512_setzero_si512(); 4];
            for (c, qc) in q.iter_mut().enumerate() {
                let raw = bcast256(p.add(48 + 32 * c));
                let lo = _mm512_and_si512(_mm512_srlv_epi16(raw, sh), _mm512_set1_epi8(0x0F));
                let hb = _mm512_and_si512(_mm512_srlv_epi16(h, sh_h), _mm512_set1_epi8(1));
                *qc = _mm512_or_si512(lo, _mm512_slli_epi16::<4>(hb));
                h = _mm512_srli_epi16::<2>(h);
            }
            WK {
                q,
                sc,
                mins,
                sc16: _mm256_setzero_si256(),
                d,
                dmin,
                pad: [0.0; 2],
            }
        }
    }
}

impl KQuant for Q6K {
    const WB: usize = 210;
    const WTY: GgmlType = GgmlType::Q6K;
    const MINS: bool = false;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    unsafe fn load_w(p: *const u8) -> WK {
        // SAFETY: the caller guarantees a whole block at `p`; tables are 64 bytes.
        unsafe {
            let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(192) as *const __m128i));
            let sc = _mm512_castsi256_si512(sc16);
            let scs = std::array::from_fn(|c| _mm512_permutexvar_epi16(ld512(&IDX_K6[c]), sc));
            let (sh0, sh1) = (ld512(&SH_4_2), ld512(&SH_0_2));
            let (m4, m30) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(0x30));
            let mut q = [_mm512_setzero_si512(); 4];
            for n in 0..2 {
                // Elements 128n + l and 128n + 32 + l (l < 32) from the low nibbles of
                // ql[64n..64n+64] and bits 0-1 / 2-3 of qh[32n + l]; elements 128n + 64 + l
                // and 128n + 96 + l from the high nibbles and bits 4-5 / 6-7.
                let l = _mm512_loadu_si512(p.add(64 * n) as *const __m512i);
                let h = bcast256(p.add(128 + 32 * n));
                q[2 * n] = _mm512_or_si512(
                    _mm512_and_si512(l, m4),
                    _mm512_and_si512(_mm512_sllv_epi16(h, sh0), m30),
                );
                q[2 * n + 1] = _mm512_or_si512(
                    _mm512_and_si512(_mm512_srli_epi16::<4>(l), m4),
                    _mm512_and_si512(_mm512_srlv_epi16(h, sh1), m30),
                );
            }
            WK {
                q,
                sc: scs,
                mins: _mm_setzero_si128(),
                sc16,
                d: f16_at(p.add(208)),
                dmin: 0.0,
                pad: [0.0; 2],
            }
        }
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn load_ak(p: *const u8, mins: bool) -> AK {
    // SAFETY: the caller guarantees a whole Q8_K block at `p`.
    unsafe {
        let q = p.add(Q8K_QS);
        let bs = _mm256_loadu_si256(p.add(Q8K_BSUMS) as *const __m256i);
        let (q8s, bs) = if mins {
            let q8s = _mm_hadd_epi16(
                _mm256_castsi256_si128(bs),
                _mm256_extracti128_si256::<1>(bs),
            );
            (q8s, _mm256_setzero_si256())
        } else {
            (_mm_setzero_si128(), bs)
        };
        AK {
            p: q,
            q8s,
            bs,
            d: std::ptr::read_unaligned(p as *const f32),
        }
    }
}

/// One block pair's exact integer sums: lanes 0-3 sum to `s1`, lanes 4-7 to `s2` (zero for
/// Q6_K). `mins` is a constant per type (inlined away).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn sums_k(mins: bool, w: &WK, a: &AK) -> __m256i {
    let mut isum = _mm512_setzero_si512();
    for c in 0..4 {
        // SAFETY: the activation block holds 256 quants at `a.p`.
        let aq = unsafe { _mm512_loadu_si512(a.p.add(64 * c) as *const __m512i) };
        // |maddubs(q, a)| ≤ 2·63·127: no i16 saturation.
        let p = _mm512_maddubs_epi16(w.q[c], aq);
        isum = _mm512_dpwssd_epi32(isum, p, w.sc[c]);
    }
    let mut s8 = _mm256_add_epi32(
        _mm512_castsi512_si256(isum),
        _mm512_extracti64x4_epi64::<1>(isum),
    );
    if !mins {
        // Q6_K's −32: Σ scale · (q − 32) · a = Σ scale · q · a − 32 · Σ scale · bsum.
        s8 = _mm256_sub_epi32(s8, _mm256_slli_epi32::<5>(_mm256_madd_epi16(a.bs, w.sc16)));
    }
    let s4 = _mm_add_epi32(
        _mm256_castsi256_si128(s8),
        _mm256_extracti128_si256::<1>(s8),
    );
    let m = if mins {
        _mm_madd_epi16(w.mins, a.q8s)
    } else {
        _mm_setzero_si128()
    };
    _mm256_set_m128i(m, s4)
}

/// Lane of pair `p = 4·row + token` in the vectors of `reduce_pairs`.
const fn lane_of(p: usize) -> usize {
    8 * (p / 8) + 4 * (p % 2) + (p % 8) / 2
}
/// Lane masks of the pairs of each row (`row`) or each token: bit `lane_of(p)` of entry `i` is
/// set when pair `p` has row (token) `i`.
const fn pair_masks(row: bool) -> [u16; 4] {
    let mut m = [0u16; 4];
    let mut p = 0;
    while p < 16 {
        m[if row { p / 4 } else { p % 4 }] |= 1 << lane_of(p);
        p += 1;
    }
    m
}
const ROW_MASK: [u16; 4] = pair_masks(true);
const TOK_MASK: [u16; 4] = pair_masks(false);

/// Sum each 4-lane group of `a`, `b`, `c`, `d`: group `g` of vector `k` lands in lane `4g + k`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
fn reduce4(a: __m512i, b: __m512i, c: __m512i, d: __m512i) -> __m512i {
    let ab = _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
    let cd = _mm512_add_epi32(_mm512_unpacklo_epi32(c, d), _mm512_unpackhi_epi32(c, d));
    _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd))
}

/// The 16 pairs' `s1` and `s2` (from `sums_k`), pair `p` in lane `lane_of(p)`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
fn reduce_pairs(pv: &[__m256i; 16]) -> (__m512i, __m512i) {
    // Vector j holds pairs 2j (groups 0, 1: s1, s2) and 2j + 1 (groups 2, 3).
    let v: [__m512i; 8] = std::array::from_fn(|j| {
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(pv[2 * j]), pv[2 * j + 1])
    });
    let r0 = reduce4(v[0], v[1], v[2], v[3]);
    let r1 = reduce4(v[4], v[5], v[6], v[7]);
    // s1: groups 0 and 2 of r0, then of r1; s2: groups 1 and 3.
    (
        _mm512_shuffle_i32x4::<0x88>(r0, r1),
        _mm512_shuffle_i32x4::<0xDD>(r0, r1),
    )
}

/// `R` weight rows × `T` activation rows over `nb` super-blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn tile_kq<K: KQuant, const R: usize, const T: usize>(
    nb: usize,
    w: *const u8,
    ws: usize,
    a: *const u8,
    as_: usize,
    out: *mut f32,
) {
    // SAFETY: forwarded from the caller.
    unsafe { tile_kq_any::<K, R, T, false>(nb, w, ws, a, as_, out) }
}

/// `tile_kq` over prepared rows (`PREP`, layout below) or plain ones: the same operations on
/// the same `WK` and `AK` values, so the same bits.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn tile_kq_any<K: KQuant, const R: usize, const T: usize, const PREP: bool>(
    nb: usize,
    w: *const u8,
    ws: usize,
    a: *const u8,
    as_: usize,
    out: *mut f32,
) {
    let (ab, a_off) = if PREP {
        (PREP_AK, PREP_AK_OFF)
    } else {
        (292, 0)
    };
    let mut acc = _mm512_setzero_ps();
    for b in 0..nb {
        let mut pv = [_mm256_setzero_si256(); 16];
        // Per lane: the `d` and `dmin` of its pair's row and the `d` of its token (zero in the
        // lanes of absent pairs, whose sums are zero too).
        let (mut dw, mut dm, mut da) = (
            _mm512_setzero_ps(),
            _mm512_setzero_ps(),
            _mm512_setzero_ps(),
        );
        // SAFETY: block `b` of rows `< R` / `< T` lies inside the ranges `check_tile` verified.
        unsafe {
            let mut av = [load_ak(a.add(b * ab + a_off), K::MINS); T];
            for (t, v) in av.iter_mut().enumerate().skip(1) {
                *v = load_ak(a.add(t * as_ + b * ab + a_off), K::MINS);
            }
            for t in 0..T {
                da = _mm512_mask_blend_ps(TOK_MASK[t], da, _mm512_set1_ps(av[t].d));
            }
            for r in 0..R {
                let wk = if PREP {
                    std::ptr::read_unaligned(w.add(r * ws + b * PREP_WK) as *const WK)
                } else {
                    K::load_w(w.add(r * ws + b * K::WB))
                };
                dw = _mm512_mask_blend_ps(ROW_MASK[r], dw, _mm512_set1_ps(wk.d));
                if K::MINS {
                    dm = _mm512_mask_blend_ps(ROW_MASK[r], dm, _mm512_set1_ps(wk.dmin));
                }
                for t in 0..T {
                    pv[4 * r + t] = sums_k(K::MINS, &wk, &av[t]);
                }
            }
        }
        let (s1, s2) = reduce_pairs(&pv);
        let mut r = _mm512_mul_ps(_mm512_cvtepi32_ps(s1), dw);
        if K::MINS {
            r = _mm512_fnmadd_ps(dm, _mm512_cvtepi32_ps(s2), r);
        }
        acc = _mm512_fmadd_ps(r, da, acc);
    }
    let mut o = [0f32; 16];
    // SAFETY: `o` is 64 writable bytes.
    unsafe { _mm512_storeu_ps(o.as_mut_ptr(), acc) };
    for r in 0..R {
        for t in 0..T {
            // SAFETY: `out` holds at least R·T elements (checked by the caller).
            unsafe { *out.add(r * T + t) = o[lane_of(4 * r + t)] };
        }
    }
}

// Prepared K-quant operands: each weight block as the `WK` that `load_w` unpacks from it (codes
// widened to bytes, scales spread over the i16 lanes, `d`/`dmin` as f32: 576 bytes, stored
// whole), so a 4×4 tile no longer unpacks every weight block once per 4 tokens; each Q8_K
// activation block copied into a 384-byte slot at offset 60, so that its 256 quants start on a
// cache line. `tile_prep_kq` is `tile_kq` on the same `WK`/`AK` values: the same bits.

/// Bytes of a prepared weight block (`size_of::<WK>()`: no padding).
const PREP_WK: usize = 576;
const _: () = assert!(std::mem::size_of::<WK>() == PREP_WK);
/// Bytes of a prepared activation block's slot, and where the Q8_K block starts in it.
const PREP_AK: usize = 384;
const PREP_AK_OFF: usize = 64 - Q8K_QS;

fn prep_w_bytes_k(n: usize) -> usize {
    n / QK_K * PREP_WK
}

fn prep_a_bytes_k(n: usize) -> usize {
    n / QK_K * PREP_AK
}

/// Unpack the `nb` blocks of one weight row at `src` into `dst`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn prep_w_k<K: KQuant>(nb: usize, src: *const u8, dst: *mut u8) {
    for b in 0..nb {
        // SAFETY: the caller checked `nb` blocks at `src` and `nb · PREP_WK` bytes at `dst`.
        unsafe {
            let wk = K::load_w(src.add(b * K::WB));
            std::ptr::write_unaligned(dst.add(b * PREP_WK) as *mut WK, wk);
        }
    }
}

/// The safe entry points of the prepared kernel of K-quant `$k`.
macro_rules! prep_fns_k {
    ($k:ty, $pw:ident, $pa:ident, $tile:ident) => {
        fn $pw(n: usize, nr: usize, src: &[u8], ss: usize, dst: &mut [u8], ds: usize) {
            let (wrb, pb) = (<$k>::WTY.row_bytes(n).unwrap(), prep_w_bytes_k(n));
            assert!((1..=MAX_R).contains(&nr) && ss >= wrb && ds >= pb);
            assert!(src.len() >= (nr - 1) * ss + wrb && dst.len() >= (nr - 1) * ds + pb);
            for i in 0..nr {
                // SAFETY: bounds checked above; reachable only via `BACKEND`, used after
                // `detected()`.
                unsafe {
                    prep_w_k::<$k>(
                        n / QK_K,
                        src.as_ptr().add(i * ss),
                        dst.as_mut_ptr().add(i * ds),
                    )
                }
            }
        }
        fn $pa(n: usize, src: &[u8], dst: &mut [u8]) {
            let nb = n / QK_K;
            assert!(src.len() >= nb * 292 && dst.len() >= prep_a_bytes_k(n));
            for b in 0..nb {
                dst[b * PREP_AK + PREP_AK_OFF..][..292].copy_from_slice(&src[b * 292..][..292]);
            }
        }
        fn $tile(
            n: usize,
            nr: usize,
            nt: usize,
            w: &[u8],
            ws: usize,
            a: &[u8],
            as_: usize,
            out: &mut [f32],
        ) {
            let (pwb, pab) = (prep_w_bytes_k(n), prep_a_bytes_k(n));
            assert!(n % QK_K == 0 && nr >= 1 && nt >= 1 && out.len() >= nr * nt);
            assert!(
                ws >= pwb && w.len() >= (nr - 1) * ws + pwb,
                "weight tile out of bounds"
            );
            assert!(
                as_ >= pab && a.len() >= (nt - 1) * as_ + pab,
                "activation tile out of bounds"
            );
            let (w, a, o) = (w.as_ptr(), a.as_ptr(), out.as_mut_ptr());
            // SAFETY: bounds checked above; reachable only via `BACKEND`, used after `detected()`.
            unsafe { super::rt_match!(tile_prep_kq, $k, nr, nt, (n / QK_K, w, ws, a, as_, o)) }
        }
    };
}
prep_fns_k!(Q4K, prep_w_q4k, prep_a_q4k, tile_prep_q4k);
prep_fns_k!(Q5K, prep_w_q5k, prep_a_q5k, tile_prep_q5k);
prep_fns_k!(Q6K, prep_w_q6k, prep_a_q6k, tile_prep_q6k);

/// `tile_kq` over prepared rows of `nb` blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn tile_prep_kq<K: KQuant, const R: usize, const T: usize>(
    nb: usize,
    w: *const u8,
    ws: usize,
    a: *const u8,
    as_: usize,
    out: *mut f32,
) {
    // SAFETY: forwarded from the caller.
    unsafe { tile_kq_any::<K, R, T, true>(nb, w, ws, a, as_, out) }
}

tile_wrapper!(tile_q4k, Q4K::WTY, tile_kq, Q4K, QK_K);
tile_wrapper!(tile_q5k, Q5K::WTY, tile_kq, Q5K, QK_K);
tile_wrapper!(tile_q6k, Q6K::WTY, tile_kq, Q6K, QK_K);

// ---------------------------------------------------------------------------------------------
// Float rows (F16, BF16 or F32 weights × activations of the same type), tiled: 16 elements per
// step, converted to f32 and multiplied with one FMA per (row, token) into 16 f32 lanes; a
// ragged tail is a masked load of zeros. The lane sums are reduced once at the end
// (`_mm512_reduce_add_ps`): tinyBLAS's `tinyBLAS<16, __m512, ...>` for these types, which
// llama.cpp runs for every batch of two or more tokens on an AVX-512 CPU.

trait FloatRow {
    const TY: GgmlType;
    /// Bytes per element.
    const BYTES: usize;
    /// The `k` (<= 16, `k` > 0) floats at `p` as f32, zeros after them.
    unsafe fn load(p: *const u8, k: usize) -> __m512;
}

struct F16;
struct BF16;
struct F32;

impl FloatRow for F32 {
    const TY: GgmlType = GgmlType::F32;
    const BYTES: usize = 4;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    unsafe fn load(p: *const u8, k: usize) -> __m512 {
        // SAFETY: the caller guarantees `k` readable f32 at `p`; the masked load reads no more.
        unsafe {
            if k >= 16 {
                _mm512_loadu_ps(p as *const f32)
            } else {
                _mm512_maskz_loadu_ps(((1u32 << k) - 1) as u16, p as *const f32)
            }
        }
    }
}

/// The `k` (<= 16, `k` > 0) 16-bit values at `p`, zeros after them.
///
/// # Safety
/// `k` values are readable at `p`; the masked load reads no more.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn load_halves(p: *const u8, k: usize) -> __m256i {
    // SAFETY: as the caller guarantees.
    unsafe {
        if k >= 16 {
            _mm256_loadu_si256(p as *const __m256i)
        } else {
            _mm256_maskz_loadu_epi16(((1u32 << k) - 1) as u16, p as *const i16)
        }
    }
}

impl FloatRow for F16 {
    const TY: GgmlType = GgmlType::F16;
    const BYTES: usize = 2;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    unsafe fn load(p: *const u8, k: usize) -> __m512 {
        // SAFETY: the caller guarantees `k` readable f16 at `p`.
        _mm512_cvtph_ps(unsafe { load_halves(p, k) })
    }
}

impl FloatRow for BF16 {
    const TY: GgmlType = GgmlType::BF16;
    const BYTES: usize = 2;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    unsafe fn load(p: *const u8, k: usize) -> __m512 {
        // SAFETY: the caller guarantees `k` readable bf16 at `p`.
        let h = unsafe { load_halves(p, k) };
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
    }
}

/// `R` weight rows × `T` activation rows of `n` 16-bit floats.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn tile_h16<K: FloatRow, const R: usize, const T: usize>(
    n: usize,
    w: *const u8,
    ws: usize,
    a: *const u8,
    as_: usize,
    out: *mut f32,
) {
    let mut acc = [[_mm512_setzero_ps(); T]; R];
    let mut i = 0;
    while i < n {
        let k = (n - i).min(16);
        // SAFETY: elements `i..i + k` of rows `< R` / `< T` lie inside the ranges
        // `check_tile` verified.
        unsafe {
            if T <= 2 && (K::BYTES * i).is_multiple_of(64) {
                // At each cache line of the rows.
                super::prefetch_next_tile::<R>(w, ws, K::BYTES * i);
            }
            let mut wv = [K::load(w.add(K::BYTES * i), k); R];
            for (r, v) in wv.iter_mut().enumerate().skip(1) {
                *v = K::load(w.add(r * ws + K::BYTES * i), k);
            }
            let mut av = [K::load(a.add(K::BYTES * i), k); T];
            for (t, v) in av.iter_mut().enumerate().skip(1) {
                *v = K::load(a.add(t * as_ + K::BYTES * i), k);
            }
            for r in 0..R {
                for t in 0..T {
                    acc[r][t] = _mm512_fmadd_ps(wv[r], av[t], acc[r][t]);
                }
            }
        }
        i += 16;
    }
    for r in 0..R {
        for t in 0..T {
            // SAFETY: `out` holds at least R·T elements (checked by the caller).
            unsafe { *out.add(r * T + t) = _mm512_reduce_add_ps(acc[r][t]) };
        }
    }
}

tile_wrapper!(tile_f16, F16::TY, tile_h16, F16, 1);
tile_wrapper!(tile_bf16, BF16::TY, tile_h16, BF16, 1);
tile_wrapper!(tile_f32, F32::TY, tile_h16, F32, 1);

// BF16 rows on a CPU with AVX-512 BF16. llama.cpp runs its batches there with `vdpbf16ps`
// (tinyBLAS's `tinyBLAS<32, __m512, __m512bh, ...>`): per (row, token), per 32 elements, lane
// `i` of 16 f32 lanes takes `fma(w[2i], a[2i], fma(w[2i + 1], a[2i + 1], acc))` (the odd
// element first: measured equal to the instruction on 3.2 million random lanes, and
// `vdpbf16ps_is_two_fmas` tests it on every run), then `_mm512_reduce_add_ps`. Ferry does the
// same two FMAs on the odd and even elements widened to f32: llama.cpp's bits, at the F32 FMA
// rate (`vdpbf16ps` itself runs at half of it here). The one difference: `vdpbf16ps` treats
// subnormal inputs and results as zero. A ragged tail is zeros (llama.cpp takes another path
// there). Without AVX-512 BF16, llama.cpp (and Ferry) use the 16-lane order of `tile_h16`.

/// Whether this CPU has AVX-512 BF16: then BF16 products follow `vdpbf16ps`'s order.
fn has_bf16() -> bool {
    is_x86_feature_detected!("avx512bf16")
}

/// The odd and even elements (as f32) of the `k` (<= 32, `k` > 0) bf16 at `p`, zeros after them.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn load_pairs(p: *const u8, k: usize) -> (__m512, __m512) {
    // SAFETY: the caller guarantees `k` readable bf16 at `p`; the masked load reads no more.
    let v = unsafe {
        if k >= 32 {
            _mm512_loadu_si512(p as *const __m512i)
        } else {
            _mm512_maskz_loadu_epi16(((1u64 << k) - 1) as u32, p as *const i16)
        }
    };
    let odd = _mm512_and_si512(v, _mm512_set1_epi32(0xFFFF_0000u32 as i32));
    let even = _mm512_slli_epi32::<16>(v);
    (_mm512_castsi512_ps(odd), _mm512_castsi512_ps(even))
}

/// `R` BF16 weight rows × `T` BF16 activation rows of `n` elements in `vdpbf16ps`'s order.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn tile_pairs<K: FloatRow, const R: usize, const T: usize>(
    n: usize,
    w: *const u8,
    ws: usize,
    a: *const u8,
    as_: usize,
    out: *mut f32,
) {
    debug_assert!(K::BYTES == 2);
    let mut acc = [[_mm512_setzero_ps(); T]; R];
    let mut i = 0;
    while i < n {
        let k = (n - i).min(32);
        // SAFETY: elements `i..i + k` of rows `< R` / `< T` lie inside the ranges
        // `check_tile` verified.
        unsafe {
            if T <= 2 {
                // Every step reads one cache line of each row.
                super::prefetch_next_tile::<R>(w, ws, 2 * i);
            }
            let wv: [(__m512, __m512); R] =
                std::array::from_fn(|r| load_pairs(w.add(r * ws + 2 * i), k));
            let av: [(__m512, __m512); T] =
                std::array::from_fn(|t| load_pairs(a.add(t * as_ + 2 * i), k));
            for r in 0..R {
                for t in 0..T {
                    acc[r][t] = _mm512_fmadd_ps(wv[r].0, av[t].0, acc[r][t]);
                    acc[r][t] = _mm512_fmadd_ps(wv[r].1, av[t].1, acc[r][t]);
                }
            }
        }
        i += 32;
    }
    for r in 0..R {
        for t in 0..T {
            // SAFETY: `out` holds at least R·T elements (checked by the caller).
            unsafe { *out.add(r * T + t) = _mm512_reduce_add_ps(acc[r][t]) };
        }
    }
}

tile_wrapper!(tile_bf16_pairs, BF16::TY, tile_pairs, BF16, 1);

// Prepared 16-bit float rows: widened to f32 once (16 lanes per chunk, the ragged last chunk
// zero-filled exactly as `FloatRow::load` fills it), so `tile_prep_h16` only loads and runs the
// fused multiply-adds of `tile_h16` in the same order: the same bits.

fn prep_bytes_h16(n: usize) -> usize {
    n.div_ceil(16) * 64
}

/// Widen the `n` 16-bit floats at `src` into `dst` (`prep_bytes_h16(n)` bytes).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn prep_h16<K: FloatRow>(n: usize, src: *const u8, dst: *mut u8) {
    let mut i = 0;
    while i < n {
        // SAFETY: the caller checked `n` elements at `src` and the prepared row's length.
        unsafe {
            let v = K::load(src.add(K::BYTES * i), (n - i).min(16));
            _mm512_storeu_ps(dst.add(4 * i) as *mut f32, v);
        }
        i += 16;
    }
}

/// Rows and tokens of the prepared 16-bit float tile: 6 × 4 = 24 accumulators, the 4 tokens'
/// chunks held in registers and each row's chunk loaded once per step (29 of the 32 vector
/// registers). Per 24 FMAs it loads 4 activation vectors, which stream from L2 (a task's 64
/// tokens of 576-1536 f32 do not fit L1), and 6 weight vectors from the row group in L1:
/// 1/6 of a vector from L2 per FMA, against 1/4 for the 4 × 4 tile it replaces.
const H16_R: usize = 6;
const H16_T: usize = 4;

/// The horizontal sums of 16 vectors, each with exactly the additions of
/// `_mm512_reduce_add_ps` (lane `i` + lane `i + 8`, then `i + 4`, then `i + 2`, then lane 0 +
/// lane 1, each as `low + high`), done for 16 vectors at once: 15 shuffle pairs and 15 adds
/// instead of 16 × 4 extract/shuffle + add chains. Lane `4k + m` of the result is the sum of
/// `v[4m + k]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
fn hsum16(v: &[__m512; 16]) -> __m512 {
    // Lanes 0-7: v[2p] lane i + lane i+8; lanes 8-15: the same for v[2p + 1].
    let u: [__m512; 8] = std::array::from_fn(|p| {
        let (a, b) = (v[2 * p], v[2 * p + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x44>(a, b),
            _mm512_shuffle_f32x4::<0xEE>(a, b),
        )
    });
    // Quad k: the 4-lane partial sums of v[4q + k].
    let w: [__m512; 4] = std::array::from_fn(|q| {
        let (a, b) = (u[2 * q], u[2 * q + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(a, b),
            _mm512_shuffle_f32x4::<0xDD>(a, b),
        )
    });
    // Quad k: the 2-lane partial sums of v[k], v[4 + k] (z0) and of v[8 + k], v[12 + k] (z1).
    let z: [__m512; 2] = std::array::from_fn(|h| {
        let (a, b) = (w[2 * h], w[2 * h + 1]);
        _mm512_add_ps(
            _mm512_shuffle_ps::<0x44>(a, b),
            _mm512_shuffle_ps::<0xEE>(a, b),
        )
    });
    _mm512_add_ps(
        _mm512_shuffle_ps::<0x88>(z[0], z[1]),
        _mm512_shuffle_ps::<0xDD>(z[0], z[1]),
    )
}

/// `tile_h16` over prepared rows of `nc` chunks of 16 f32: per (row, token) the same FMAs in
/// the same order, and the same reduction (`hsum16`), so the same bits.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn tile_prep_h16<K: FloatRow, const R: usize, const T: usize>(
    nc: usize,
    w: *const u8,
    ws: usize,
    a: *const u8,
    as_: usize,
    out: *mut f32,
) {
    let mut acc = [[_mm512_setzero_ps(); T]; R];
    for c in 0..nc {
        // SAFETY: chunk `c` of rows `< R` / `< T` lies inside the ranges the wrapper checked.
        unsafe {
            let av: [__m512; T] =
                std::array::from_fn(|t| _mm512_loadu_ps(a.add(t * as_ + 64 * c) as *const f32));
            for r in 0..R {
                let wv = _mm512_loadu_ps(w.add(r * ws + 64 * c) as *const f32);
                for t in 0..T {
                    acc[r][t] = _mm512_fmadd_ps(wv, av[t], acc[r][t]);
                }
            }
        }
    }
    // Accumulator `i` is (row i / T, token i % T), which is also its place in `out`.
    let mut i0 = 0;
    while i0 < R * T {
        let n = (R * T - i0).min(16);
        let v: [__m512; 16] = std::array::from_fn(|j| {
            let i = i0 + j;
            if j < n {
                acc[i / T][i % T]
            } else {
                _mm512_setzero_ps()
            }
        });
        // `hsum16` leaves sum `j` in lane `4 (j % 4) + j / 4`: put in order, one masked vector
        // store instead of a scalar store per sum.
        let idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        let sums = _mm512_permutexvar_ps(idx, hsum16(&v));
        let m: __mmask16 = if n == 16 { 0xffff } else { (1u16 << n) - 1 };
        // SAFETY: `out` holds at least R·T elements (checked by the caller); the mask covers
        // elements `i0..i0 + n` of them.
        unsafe { _mm512_mask_storeu_ps(out.add(i0), m, sums) };
        i0 += 16;
    }
}

/// Match a runtime tile shape (`nr <= H16_R`, `nt <= H16_T`) to `tile_prep_h16::<$k, R, T>`.
macro_rules! h16_match {
    ($k:ty, $nr:expr, $nt:expr, $args:tt) => {
        match $nr {
            1 => h16_match!(@t $k, 1, $nt, $args),
            2 => h16_match!(@t $k, 2, $nt, $args),
            3 => h16_match!(@t $k, 3, $nt, $args),
            4 => h16_match!(@t $k, 4, $nt, $args),
            5 => h16_match!(@t $k, 5, $nt, $args),
            6 => h16_match!(@t $k, 6, $nt, $args),
            _ => panic!("tile {}x{} is larger than {H16_R}x{H16_T}", $nr, $nt),
        }
    };
    (@t $k:ty, $r:literal, $nt:expr, ($($arg:expr),*)) => {
        match $nt {
            1 => tile_prep_h16::<$k, $r, 1>($($arg),*),
            2 => tile_prep_h16::<$k, $r, 2>($($arg),*),
            3 => tile_prep_h16::<$k, $r, 3>($($arg),*),
            4 => tile_prep_h16::<$k, $r, 4>($($arg),*),
            _ => panic!("tile {}x{} is larger than {H16_R}x{H16_T}", $r, $nt),
        }
    };
}

/// The safe entry points of the prepared float-row kernels for `$k`: rows prepared by `$row`
/// into `$bytes(n)` bytes of `$chunks(n)` chunks of 16 f32 (by default `prep_h16`: the
/// elements in order), run by `tile_prep_h16`.
macro_rules! prep_fns_h16 {
    ($k:ty, $prep_w:ident, $prep:ident, $tile:ident) => {
        prep_fns_h16!(
            $k,
            $prep_w,
            $prep,
            $tile,
            prep_bytes_h16,
            prep_h16::<$k>,
            |n: usize| n.div_ceil(16)
        );
    };
    ($k:ty, $prep_w:ident, $prep:ident, $tile:ident, $bytes:expr, $row:expr, $chunks:expr) => {
        fn $prep(n: usize, src: &[u8], dst: &mut [u8]) {
            assert!(src.len() >= <$k>::BYTES * n && dst.len() >= $bytes(n));
            // SAFETY: lengths checked; reachable only via `BACKEND`, used after `detected()`.
            unsafe { $row(n, src.as_ptr(), dst.as_mut_ptr()) }
        }
        /// A weight group: `$prep` per row.
        fn $prep_w(n: usize, nr: usize, src: &[u8], ss: usize, dst: &mut [u8], ds: usize) {
            assert!((1..=H16_R).contains(&nr) && ss >= <$k>::BYTES * n && ds >= $bytes(n));
            for i in 0..nr {
                $prep(n, &src[i * ss..], &mut dst[i * ds..]);
            }
        }
        fn $tile(
            n: usize,
            nr: usize,
            nt: usize,
            w: &[u8],
            ws: usize,
            a: &[u8],
            as_: usize,
            out: &mut [f32],
        ) {
            let pb = $bytes(n);
            assert!(nr >= 1 && nt >= 1 && out.len() >= nr * nt);
            assert!(
                ws >= pb && w.len() >= (nr - 1) * ws + pb,
                "weight tile out of bounds"
            );
            assert!(
                as_ >= pb && a.len() >= (nt - 1) * as_ + pb,
                "activation tile out of bounds"
            );
            let (w, a, o) = (w.as_ptr(), a.as_ptr(), out.as_mut_ptr());
            // SAFETY: bounds checked above; reachable only via `BACKEND`, used after `detected()`.
            unsafe { h16_match!($k, nr, nt, ($chunks(n), w, ws, a, as_, o)) }
        }
    };
}
prep_fns_h16!(F16, prep_w_f16, prep_f16, tile_prep_f16);
prep_fns_h16!(BF16, prep_w_bf16, prep_bf16, tile_prep_bf16);
prep_fns_h16!(F32, prep_w_f32, prep_f32, tile_prep_f32);

/// Bytes of a prepared BF16 row in `vdpbf16ps`'s order: per 32 elements, the odd elements'
/// 16 f32, then the even elements'.
fn prep_bytes_pairs(n: usize) -> usize {
    n.div_ceil(32) * 128
}

/// Prepare the `n` bf16 at `src` into `dst` (`prep_bytes_pairs(n)` bytes).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn prep_pairs(n: usize, src: *const u8, dst: *mut u8) {
    let mut i = 0;
    while i < n {
        // SAFETY: the caller checked `n` elements at `src` and the prepared row's length.
        unsafe {
            let (odd, even) = load_pairs(src.add(2 * i), (n - i).min(32));
            _mm512_storeu_ps(dst.add(4 * i) as *mut f32, odd);
            _mm512_storeu_ps(dst.add(4 * i + 64) as *mut f32, even);
        }
        i += 32;
    }
}

// `tile_pairs` over prepared rows: `tile_prep_h16` over their chunks (odd, even, odd, ...), the
// same FMAs in the same order and the same reduction.
prep_fns_h16!(
    BF16,
    prep_w_bf16_pairs,
    prep_bf16_pairs,
    tile_prep_bf16_pairs,
    prep_bytes_pairs,
    prep_pairs,
    |n: usize| 2 * n.div_ceil(32)
);

#[cfg(test)]
mod tests {
    use super::*;

    /// `vdpbf16ps` itself over `n` bf16 (a multiple of 32) of `w` and `a`, then
    /// `_mm512_reduce_add_ps`: what llama.cpp computes per output.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn dpbf16(n: usize, w: &[u16], a: &[u16]) -> f32 {
        let mut acc = _mm512_setzero_ps();
        for i in (0..n).step_by(32) {
            // SAFETY: `i + 32 <= n` elements of both; 64-byte unaligned loads.
            unsafe {
                let wv = _mm512_loadu_si512(w.as_ptr().add(i) as *const __m512i);
                let av = _mm512_loadu_si512(a.as_ptr().add(i) as *const __m512i);
                acc = _mm512_dpbf16_ps(
                    acc,
                    std::mem::transmute::<__m512i, __m512bh>(wv),
                    std::mem::transmute::<__m512i, __m512bh>(av),
                );
            }
        }
        _mm512_reduce_add_ps(acc)
    }

    #[test]
    fn vdpbf16ps_is_two_fmas() {
        if !(detected() && has_bf16()) {
            println!("NOT RUN: no AVX-512 BF16 here");
            return;
        }
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        // Normal bf16 of exponents 2^-27..2^26 and both signs (subnormals are where the
        // instruction flushes and the FMAs do not).
        let mut val = || {
            let r = next();
            ((r & 0x8000) | ((100 + (r >> 16) % 54) << 7) | ((r >> 32) & 0x7F)) as u16
        };
        let (rows, toks) = (5, 4);
        for n in [32, 64, 576, 1536] {
            let w: Vec<u16> = (0..rows * n).map(|_| val()).collect();
            let a: Vec<u16> = (0..toks * n).map(|_| val()).collect();
            let bytes = |v: &[u16]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
            let (wb, ab) = (bytes(&w), bytes(&a));
            for (r, t) in [(1, 1), (4, 4), (3, 2), (1, 3)] {
                let mut out = vec![0f32; r * t];
                tile_bf16_pairs(n, r, t, &wb, 2 * n, &ab, 2 * n, &mut out);
                for i in 0..r {
                    for j in 0..t {
                        // SAFETY: AVX-512 BF16 detected above.
                        let want = unsafe { dpbf16(n, &w[i * n..], &a[j * n..]) };
                        assert_eq!(
                            out[i * t + j].to_bits(),
                            want.to_bits(),
                            "n {n} row {i} token {j}"
                        );
                    }
                }
            }
            // The prepared tile over the same rows.
            let pb = prep_bytes_pairs(n);
            let mut pw = vec![0u8; pb * rows];
            let mut pa = vec![0u8; pb * toks];
            prep_w_bf16_pairs(n, rows.min(H16_R), &wb, 2 * n, &mut pw, pb);
            for j in 0..toks {
                prep_bf16_pairs(n, &ab[j * 2 * n..], &mut pa[j * pb..]);
            }
            let mut out = vec![0f32; rows * toks];
            tile_prep_bf16_pairs(n, rows, toks, &pw, pb, &pa, pb, &mut out);
            for i in 0..rows {
                for j in 0..toks {
                    // SAFETY: AVX-512 BF16 detected above.
                    let want = unsafe { dpbf16(n, &w[i * n..], &a[j * n..]) };
                    assert_eq!(
                        out[i * toks + j].to_bits(),
                        want.to_bits(),
                        "prepared n {n}"
                    );
                }
            }
        }
    }
}
