//! AVX-512 VNNI kernels over x16-packed weights (`crate::packed`): 16 rows per 512-bit vector,
//! one `vpdpbusd` per 4-element lane group for all 16 rows, the activation's 4 bytes broadcast
//! from memory. Per (row, token) the float operations are those of `quant::vec_dot_ref_in` in
//! the matrix's `Order`: for `Order::LlamaCpp` those of `avx512::tile_pair` (GGML's x86
//! `vec_dot` order), so the results are the same bits; for `Order::Block` one float step per
//! block, four tokens per pass.
//!
//! Every `unsafe` is a call of a `#[target_feature]` function (reachable only through
//! `avx512::BACKEND`, handed out after `detected()`) or a load inside the ranges `x16` checked.

// Lane-group loops index the accumulators and the vectors of a block together; kernels take
// the group, the activation rows and their stride separately.
#![allow(clippy::needless_range_loop, clippy::too_many_arguments)]

use std::arch::x86_64::*;

use crate::packed::{
    lines_bytes_mut, Geometry, KGeometry, Line, X16Fn, ACT_BLK, ACT_SB, DECODE_MAX_TOKENS, GROUP,
};
use crate::quant::{GgmlType, Order};

/// `f::<G.., PF>(args)` with `PF` = `on`: the kernels that prefetch (`Ahead`) are instances of
/// their own, so the others carry none of its arithmetic.
macro_rules! with_pf {
    ($on:expr, $f:ident::<$($g:tt),*>($($a:expr),*)) => {
        if $on {
            $f::<$($g),*, true>($($a),*)
        } else {
            $f::<$($g),*, false>($($a),*)
        }
    };
}

/// The x16 kernel for `ty` summed in order `o`, if there is one.
pub(crate) fn x16(ty: GgmlType, o: Order) -> Option<X16Fn> {
    match ty {
        GgmlType::Q4_0 => Some(blocks::<4, false, false>(o)),
        GgmlType::Q4_1 => Some(blocks::<4, true, false>(o)),
        GgmlType::Q5_0 => Some(blocks::<4, false, true>(o)),
        GgmlType::Q5_1 => Some(blocks::<4, true, true>(o)),
        GgmlType::Q8_0 => Some(blocks::<8, false, false>(o)),
        GgmlType::Q4K => Some(run_k::<0>),
        GgmlType::Q5K => Some(run_k::<1>),
        GgmlType::Q6K => Some(run_k::<2>),
        _ => None,
    }
}

/// `run` for one 32-element block type in `order`.
fn blocks<const V: usize, const MINS: bool, const HB: bool>(order: Order) -> X16Fn {
    match order {
        Order::Block => run::<V, MINS, HB, true>,
        Order::LlamaCpp => run::<V, MINS, HB, false>,
    }
}

/// Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (an `X16Fn`): `V` quant vectors per block (4: nibbles, 8:
/// bytes), `MINS` for Q4_1/Q5_1, `HB` (high bits) for Q5_0/Q5_1, `BLOCK` for `Order::Block`.
///
/// Over a long batch (more than `PREFETCH_MAX_TOKENS` tokens) a 4- or 5-bit group is first
/// widened to whole code bytes (`widen`), once, and the tokens run over that copy: otherwise
/// every pass (two tokens in llama.cpp's order) would split the nibbles and place the high bits
/// again, about as many vector operations as the pass's own products. Same bits either way.
unsafe fn run<const V: usize, const MINS: bool, const HB: bool, const BLOCK: bool>(
    cols: usize,
    nt: usize,
    group: &[u8],
    a: &[u8],
    pab: usize,
    out: *mut f32,
    ostride: usize,
    nr: usize,
) {
    let ty = match (V, MINS, HB) {
        (4, true, false) => GgmlType::Q4_1,
        (4, false, false) => GgmlType::Q4_0,
        (4, true, true) => GgmlType::Q5_1,
        (4, false, true) => GgmlType::Q5_0,
        _ => GgmlType::Q8_0,
    };
    let g = Geometry::of(ty, cols).expect("packed type");
    // `V` 4: nibbles (Q5's high bits only come with them).
    if V == 4 && nt > PREFETCH_MAX_TOKENS {
        assert!(group.len() >= g.group_bytes() && group.as_ptr().align_offset(64) == 0);
        let wg = Geometry::bytes(MINS, g.nb);
        WIDE.with(|buf| {
            let mut buf = buf.borrow_mut();
            let lines = wg.group_bytes() / 64;
            if buf.len() < lines {
                buf.resize(lines, Line::ZERO);
            }
            let wide = lines_bytes_mut(&mut buf[..lines]);
            // SAFETY: the group holds `g` (checked above) and `wide` holds `wg`; the kernels'
            // other operands are forwarded from the caller.
            unsafe {
                widen::<V, HB>(group.as_ptr(), g, wide.as_mut_ptr());
                run_in::<8, MINS, false, BLOCK>(wg, nt, wide, a, pab, out, ostride, nr)
            }
        })
    } else {
        // SAFETY: forwarded from the caller.
        unsafe { run_in::<V, MINS, HB, BLOCK>(g, nt, group, a, pab, out, ostride, nr) }
    }
}

thread_local! {
    /// Each thread's widened group (`run`).
    static WIDE: std::cell::RefCell<Vec<Line>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A group of geometry `g` at `w`, widened into `Geometry::bytes(g.mins(), g.nb)` at `dst`:
/// each block's eight vectors as `block_vectors` builds them, then `d` (and `m`) copied.
///
/// # Safety
/// `w` holds the group, `dst` (64-byte aligned) the widened group's bytes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn widen<const V: usize, const HB: bool>(w: *const u8, g: Geometry, dst: *mut u8) {
    let wg = Geometry::bytes(g.mins(), g.nb);
    // SAFETY: inside both groups, as the caller guarantees.
    unsafe {
        for b in 0..g.nb {
            let wq = block_vectors::<V, HB>(w, g, b);
            for (k, v) in wq.into_iter().enumerate() {
                _mm512_store_si512(dst.add(b * wg.qb() + k * 64) as *mut __m512i, v);
            }
        }
        let scales = g.nb * 32 * if g.mins() { 2 } else { 1 };
        std::ptr::copy_nonoverlapping(w.add(g.d_at()), dst.add(wg.d_at()), scales);
    }
}

/// `run` over a group of geometry `g` whose blocks have `V` quant vectors.
unsafe fn run_in<const V: usize, const MINS: bool, const HB: bool, const BLOCK: bool>(
    g: Geometry,
    nt: usize,
    group: &[u8],
    a: &[u8],
    pab: usize,
    out: *mut f32,
    ostride: usize,
    nr: usize,
) {
    let nb = g.nb;
    let (w, arow, gb) = (group.as_ptr(), nb * ACT_BLK, g.group_bytes());
    let step = gb / nb;
    let run = |at: *const u8, o: Out, n: usize, end: usize| {
        let (pf, on) = (Ahead::new(w, end, step), end > 0);
        // SAFETY: `drive` checked the group and the activation rows the kernels read.
        unsafe {
            match (BLOCK, n) {
                (false, 2) => with_pf!(on, tokens::<V, MINS, HB, 2>(nb, w, g, at, pab, o, pf)),
                (false, _) => with_pf!(on, tokens::<V, MINS, HB, 1>(nb, w, g, at, pab, o, pf)),
                (true, 4) => {
                    with_pf!(on, tokens_block::<V, MINS, HB, 4>(nb, w, g, at, pab, o, pf))
                }
                (true, 2) => {
                    with_pf!(on, tokens_block::<V, MINS, HB, 2>(nb, w, g, at, pab, o, pf))
                }
                (true, _) => {
                    with_pf!(on, tokens_block::<V, MINS, HB, 1>(nb, w, g, at, pab, o, pf))
                }
            }
        }
    };
    // One float step per block leaves registers for four tokens per pass; GGML's eight lane
    // accumulators per token, for two.
    let most = if BLOCK { 4 } else { 2 };
    // SAFETY: forwarded from the caller.
    unsafe { drive(nt, nr, group, gb, a, pab, arow, out, ostride, most, run) }
}

/// Checks a kernel's operands (the group is `gbytes` long and cache-line aligned, each of the
/// `nt` activation rows `arow` bytes, `pab` apart), then runs `f(row, out, n, end)` over the
/// tokens, `n` at a time: `most` (2 or 4) while that many are left, then 2, then 1. `end` is
/// how far past the group's start the first pass may prefetch (`group.len()`: the rest of the
/// task's groups follow it), 0 for the later passes, which find the group in cache, and for
/// batches of more than `PREFETCH_MAX_TOKENS`.
///
/// # Safety
/// As `X16Fn`: row `r < nr` of token `t` at `out + t · ostride + r` is writable by the caller.
unsafe fn drive(
    nt: usize,
    nr: usize,
    group: &[u8],
    gbytes: usize,
    a: &[u8],
    pab: usize,
    arow: usize,
    out: *mut f32,
    ostride: usize,
    most: usize,
    f: impl Fn(*const u8, Out, usize, usize),
) {
    assert!(nt >= 1 && (1..=GROUP).contains(&nr));
    assert!(group.len() >= gbytes && group.as_ptr().align_offset(64) == 0);
    assert!(pab >= arow && a.len() >= (nt - 1) * pab + arow);
    let mut t = 0;
    while t < nt {
        let n = [most, 2, 1].into_iter().find(|&n| n <= nt - t).unwrap_or(1);
        let end = if t == 0 && nt <= PREFETCH_MAX_TOKENS {
            group.len()
        } else {
            0
        };
        f(a[t * pab..].as_ptr(), Out::new(out, t, ostride, nr), n, end);
        t += n;
    }
}

/// Where a kernel writes: 16 rows (the first `mask` bits) of token `t` at `ptr + t · stride`.
#[derive(Clone, Copy)]
struct Out {
    ptr: *mut f32,
    stride: usize,
    mask: __mmask16,
}

impl Out {
    fn new(out: *mut f32, t: usize, stride: usize, nr: usize) -> Self {
        Self {
            ptr: out.wrapping_add(t * stride),
            stride,
            mask: (((1u32 << nr) - 1) & 0xFFFF) as __mmask16,
        }
    }
    /// Store token `t`'s 16 (masked) rows.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn put(&self, t: usize, v: __m512) {
        // SAFETY: the caller of the `X16Fn` guarantees these elements are writable.
        unsafe { _mm512_mask_storeu_ps(self.ptr.add(t * self.stride), self.mask, v) }
    }
}

/// How far ahead of its reads a kernel's first pass over a group prefetches. Decode streams
/// every weight once per step, and one core's stream is bound by the misses it keeps in
/// flight (a plain AVX-512 read loop gets ~5-6 GB/s per core here), not by the kernel's
/// arithmetic (27 GB/s from L2); the hardware prefetchers alone leave that bandwidth unused,
/// more so at the start of every group, matrix and task. Measured with `decode_bench`, the
/// settings alternated step by step in one process: single-stream decode +20-31% over no
/// software prefetch (Q4_0, Q4_1, Q8_0, Q4_K_M, Q6_K), 4 streams +19%, 16 streams +3-5%;
/// 4 KiB gave a little less, 12 KiB and more less again.
const PREFETCH_AHEAD: usize = 8192;

/// Prefetching is for the memory-bound products of decode (`DECODE_MAX_TOKENS`). Over a long
/// batch a kernel passes over each group many times, bound by arithmetic, and the lines fetched
/// for the next group only crowd the level-1 cache meanwhile: with prefetch at every batch size
/// Q8_0 prefill of 512 tokens lost 20-30%, and ~10% (kbench) with it only switched off at run
/// time, so the prefetching kernels are a const parameter (`PF`) of each kernel family.
const PREFETCH_MAX_TOKENS: usize = DECODE_MAX_TOKENS;

/// Software prefetch of a group's (and its task's following groups') lines ahead of the
/// kernel's reads: step `i` (of `step` bytes each, in the order the kernel consumes them)
/// asks for the lines `PREFETCH_AHEAD` bytes further on, never past `end` (where the task's
/// groups end, counted from `w`). Only the kernels compiled with `PF` call it.
#[derive(Clone, Copy)]
struct Ahead {
    w: *const u8,
    end: usize,
    step: usize,
}

impl Ahead {
    fn new(w: *const u8, end: usize, step: usize) -> Self {
        Self { w, end, step }
    }

    #[inline(always)]
    fn step(&self, i: usize) {
        let lo = (i * self.step + PREFETCH_AHEAD) / 64;
        let hi = ((i + 1) * self.step + PREFETCH_AHEAD)
            .min(self.end)
            .div_ceil(64);
        for l in lo..hi {
            // SAFETY: a prefetch never faults; the address is computed without dereferencing.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(self.w.wrapping_add(64 * l) as *const i8) };
        }
    }
}

/// Q5_0/Q5_1 high bits: byte `i` of row `r`'s lane in vector `k` takes bit `4k + i` of the row's
/// `qh` (element `4k + i`) at bit 4: `vpmultishiftqb` picks 8 bits from (the row's bit offset in
/// its qword) + 4k + i − 4, modulo 64. One 64-byte control per `k`, built at compile time.
static HB_CTRL: [Ctrl; 8] = {
    let mut t = [Ctrl([0; 64]); 8];
    let mut k = 0;
    while k < 8 {
        let mut p = 0;
        while p < 64 {
            t[k].0[p] = ((32 * ((p % 8) / 4) + (p % 4) + 4 * k + 60) % 64) as u8;
            p += 1;
        }
        k += 1;
    }
    t
};

/// 64 bytes, aligned for a vector load.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Ctrl([u8; 64]);

impl Ctrl {
    fn as_ptr(&self) -> *const u8 {
        self.0.as_ptr()
    }
}

/// Block `b`'s 8 quant vectors of a group (lane group `k` in vector `k`), as `vpdpbusd`'s
/// unsigned operand: nibbles split (`V` 4) or bytes as stored (`V` 8), Q5 high bits placed.
///
/// # Safety
/// The block's vectors (and, `HB`, its high-bit vector) lie inside the group at `w`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn block_vectors<const V: usize, const HB: bool>(
    w: *const u8,
    g: Geometry,
    b: usize,
) -> [__m512i; 8] {
    let low = _mm512_set1_epi8(0x0F);
    let q = w.wrapping_add(b * V * 64);
    let mut wq = [_mm512_setzero_si512(); 8];
    // SAFETY: inside the group, as the caller guarantees.
    unsafe {
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
        if HB {
            let hv = _mm512_load_si512(w.add(g.qh_at() + b * 64) as *const __m512i);
            let bit4 = _mm512_set1_epi8(0x10);
            for k in 0..8 {
                // wq | (multishift & 0x10).
                let c = _mm512_load_si512(HB_CTRL[k].as_ptr() as *const __m512i);
                let h = _mm512_multishift_epi64_epi8(c, hv);
                wq[k] = _mm512_ternarylogic_epi32::<0xF8>(wq[k], h, bit4);
            }
        }
    }
    wq
}

/// Block `b`'s 16 row scales `d` and (`MINS`) mins `m` of a group, as f32.
///
/// # Safety
/// As `block_vectors`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn block_scales<const MINS: bool>(w: *const u8, g: Geometry, b: usize) -> (__m512, __m512) {
    // SAFETY: inside the group, as the caller guarantees.
    unsafe {
        let ld =
            |at: usize| _mm512_cvtph_ps(_mm256_load_si256(w.add(at + b * 32) as *const __m256i));
        let m = if MINS {
            ld(g.m_at())
        } else {
            _mm512_setzero_ps()
        };
        (ld(g.d_at()), m)
    }
}

/// 16 rows × `T` (1 or 2) tokens over `nb` blocks in `Order::LlamaCpp`: each block's weight
/// vectors are loaded (and, for 4-bit quants, split into nibbles) once for the `T` tokens.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn tokens<
    const V: usize,
    const MINS: bool,
    const HB: bool,
    const T: usize,
    const PF: bool,
>(
    nb: usize,
    w: *const u8,
    g: Geometry,
    a: *const u8,
    pab: usize,
    out: Out,
    pf: Ahead,
) {
    let z = _mm512_setzero_ps();
    let mut acc = [[z; 8]; T];
    let mut summs = [z; T];
    // SAFETY: every pointer below stays inside the group (`nb` blocks of `V` vectors, then
    // high bits, `d` and `m`) and the `T` activation rows (`nb` blocks of `ACT_BLK` each, `pab`
    // apart), as the caller checked.
    unsafe {
        for b in 0..nb {
            if PF {
                pf.step(b);
            }
            let wq = block_vectors::<V, HB>(w, g, b);
            let (dw, m) = block_scales::<MINS>(w, g, b);
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
            out.put(t, s);
        }
    }
}

/// 16 rows × `T` (1, 2 or 4) tokens over `nb` blocks in `Order::Block`: a block's eight lane
/// groups go into two `vpdpbusd` chains per token (even and odd `k`, the first started from the
/// block's offset `-C·Σ a`), whose exact sum takes one `cvt` and one `fma`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn tokens_block<
    const V: usize,
    const MINS: bool,
    const HB: bool,
    const T: usize,
    const PF: bool,
>(
    nb: usize,
    w: *const u8,
    g: Geometry,
    a: *const u8,
    pab: usize,
    out: Out,
    pf: Ahead,
) {
    let z = _mm512_setzero_ps();
    let zi = _mm512_setzero_si512();
    let mut acc = [z; T];
    let mut summs = [z; T];
    // SAFETY: as in `tokens`.
    unsafe {
        for b in 0..nb {
            if PF {
                pf.step(b);
            }
            let wq = block_vectors::<V, HB>(w, g, b);
            let (dw, m) = block_scales::<MINS>(w, g, b);
            let ab = |t: usize| a.add(t * pab + b * ACT_BLK);
            let mut even = [zi; T];
            let mut odd = [zi; T];
            if !MINS {
                for t in 0..T {
                    even[t] = _mm512_set1_epi32(*(ab(t).add(72) as *const i32));
                }
            }
            for k in (0..8).step_by(2) {
                for t in 0..T {
                    let lane = |k: usize| {
                        _mm512_set1_epi32((ab(t).add(4 * k) as *const i32).read_unaligned())
                    };
                    even[t] = _mm512_dpbusd_epi32(even[t], wq[k], lane(k));
                    odd[t] = _mm512_dpbusd_epi32(odd[t], wq[k + 1], lane(k + 1));
                }
            }
            for t in 0..T {
                let dd = _mm512_mul_ps(dw, _mm512_set1_ps(*(ab(t).add(64) as *const f32)));
                let i = _mm512_add_epi32(even[t], odd[t]);
                acc[t] = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(i), acc[t]);
                if MINS {
                    let s = _mm512_set1_ps(*(ab(t).add(68) as *const f32));
                    summs[t] = _mm512_fmadd_ps(m, s, summs[t]);
                }
            }
        }
        for t in 0..T {
            out.put(
                t,
                if MINS {
                    _mm512_add_ps(acc[t], summs[t])
                } else {
                    acc[t]
                },
            );
        }
    }
}

/// Q4_K (`K` 0), Q5_K (1) and Q6_K (2) (an `X16Fn`).
unsafe fn run_k<const K: u8>(
    cols: usize,
    nt: usize,
    group: &[u8],
    a: &[u8],
    pab: usize,
    out: *mut f32,
    ostride: usize,
    nr: usize,
) {
    let ty = [GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K][K as usize];
    let g = KGeometry::of(ty, cols).expect("whole super-blocks");
    let (w, arow, gb) = (group.as_ptr(), g.nsb * ACT_SB, g.group_bytes());
    // Four prefetch steps per super-block (its four quarters in the kernels' loops).
    let step = gb / (4 * g.nsb);
    let run = |at: *const u8, o: Out, n: usize, end: usize| {
        let (pf, on) = (Ahead::new(w, end, step), end > 0);
        // SAFETY: `drive` checked the group and the activation rows the kernels read.
        unsafe {
            match (K, n) {
                (0, 4) => with_pf!(on, tokens_q45k::<false, 4>(g, w, at, pab, o, pf)),
                (0, 2) => with_pf!(on, tokens_q45k::<false, 2>(g, w, at, pab, o, pf)),
                (0, _) => with_pf!(on, tokens_q45k::<false, 1>(g, w, at, pab, o, pf)),
                (1, 4) => with_pf!(on, tokens_q45k::<true, 4>(g, w, at, pab, o, pf)),
                (1, 2) => with_pf!(on, tokens_q45k::<true, 2>(g, w, at, pab, o, pf)),
                (1, _) => with_pf!(on, tokens_q45k::<true, 1>(g, w, at, pab, o, pf)),
                (_, 4) => with_pf!(on, tokens_q6k::<4>(g, w, at, pab, o, pf)),
                (_, 2) => with_pf!(on, tokens_q6k::<2>(g, w, at, pab, o, pf)),
                (_, _) => with_pf!(on, tokens_q6k::<1>(g, w, at, pab, o, pf)),
            }
        }
    };
    // Four tokens per pass share each super-block's code vectors (the K-quant kernels keep
    // one float accumulator per token, so the registers hold four).
    // SAFETY: forwarded from the caller.
    unsafe { drive(nt, nr, group, gb, a, pab, arow, out, ostride, 4, run) }
}

/// The float steps of a K-quant super-block for `T` tokens (`quant_k::k_block_step`):
/// `r = f32(s1)·d`, (Q4_K) `r = fnmadd(dmin, f32(s2), r)`, `acc = fma(r, d_a, acc)`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn k_step<const T: usize>(
    g: KGeometry,
    w: *const u8,
    i: usize,
    a: *const u8,
    pab: usize,
    s1: &[__m512i; T],
    s2: Option<&[__m512i; T]>,
    acc: &mut [__m512; T],
) {
    // SAFETY: inside the group and the activation rows (the caller's ranges).
    unsafe {
        let d = _mm512_cvtph_ps(_mm256_load_si256(w.add(g.d_at() + i * 32) as *const __m256i));
        for t in 0..T {
            let da = _mm512_set1_ps(*(a.add(t * pab + i * ACT_SB + 320) as *const f32));
            let mut r = _mm512_mul_ps(_mm512_cvtepi32_ps(s1[t]), d);
            if let Some(s2) = s2 {
                let dmin = _mm512_cvtph_ps(_mm256_load_si256(
                    w.add(g.dmin_at() + i * 32) as *const __m256i
                ));
                r = _mm512_fnmadd_ps(dmin, _mm512_cvtepi32_ps(s2[t]), r);
            }
            acc[t] = _mm512_fmadd_ps(r, da, acc[t]);
        }
    }
}

/// 16 Q6_K rows × `T` (1, 2 or 4) tokens, llama.cpp's tiled order: per super-block `s1 = Σ_s scale_s ·
/// (raw_s − 32·bsum_s)` over the 16 sub-blocks of 16 (the `−32·bsum` starts each `vpdpbusd`
/// chain), then `k_step`. Codes as GGML's dequantizer builds them: element `128n + 32c + l`
/// is nibble `c / 2` of `ql[64n + 32(c % 2) + l]` with bits `2c..2c+2` of `qh[32n + l]` above.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tokens_q6k<const T: usize, const PF: bool>(
    g: KGeometry,
    w: *const u8,
    a: *const u8,
    pab: usize,
    out: Out,
    pf: Ahead,
) {
    let z = _mm512_setzero_ps();
    let mut acc = [z; T];
    let (low, two) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(0x30));
    // SAFETY: every pointer stays inside the group (`nsb` super-blocks of `qb()` bytes, then
    // scales and `d`) and the `T` activation rows (`nsb` super-blocks of `ACT_SB` bytes, `pab`
    // apart), as `run_k` checked.
    unsafe {
        for i in 0..g.nsb {
            let q = w.add(i * g.qb());
            let mut s1 = [_mm512_setzero_si512(); T];
            for n in 0..2 {
                for kk in 0..2 {
                    if PF {
                        pf.step(4 * i + 2 * n + kk);
                    }
                    // Sub-blocks 8n + 2c + kk for c in 0..4: raw sums from −32·bsum.
                    let mut raw = [[_mm512_setzero_si512(); 4]; T];
                    for t in 0..T {
                        let ab = a.add(t * pab + i * ACT_SB + 256) as *const i32;
                        for c in 0..4 {
                            raw[t][c] = _mm512_set1_epi32(*ab.add(8 * n + 2 * c + kk));
                        }
                    }
                    for m in 0..4 {
                        let k = 4 * kk + m;
                        let ld = |v: usize| _mm512_load_si512(q.add(v * 64) as *const __m512i);
                        let (v1, v2, h) = (ld(16 * n + k), ld(16 * n + 8 + k), ld(32 + 8 * n + k));
                        let code = |nib: __m512i, hb: __m512i| {
                            _mm512_ternarylogic_epi32::<0xF8>(_mm512_and_si512(nib, low), hb, two)
                        };
                        let cs = [
                            code(v1, _mm512_slli_epi16::<4>(h)),
                            code(v2, _mm512_slli_epi16::<2>(h)),
                            code(_mm512_srli_epi16::<4>(v1), h),
                            code(_mm512_srli_epi16::<4>(v2), _mm512_srli_epi16::<2>(h)),
                        ];
                        for t in 0..T {
                            let ab = a.add(t * pab + i * ACT_SB + 128 * n + 4 * k);
                            for c in 0..4 {
                                let aq = (ab.add(32 * c) as *const i32).read_unaligned();
                                raw[t][c] =
                                    _mm512_dpbusd_epi32(raw[t][c], cs[c], _mm512_set1_epi32(aq));
                            }
                        }
                    }
                    for c in 0..4 {
                        let sb = 8 * n + 2 * c + kk;
                        let sc = _mm512_cvtepi8_epi32(_mm_load_si128(
                            w.add(g.sc_at() + i * 256 + sb * 16) as *const __m128i,
                        ));
                        for t in 0..T {
                            s1[t] = _mm512_add_epi32(s1[t], _mm512_mullo_epi32(sc, raw[t][c]));
                        }
                    }
                }
            }
            k_step::<T>(g, w, i, a, pab, &s1, None, &mut acc);
        }
        for t in 0..T {
            out.put(t, acc[t]);
        }
    }
}

/// 16 Q4_K (or, `Q5`, Q5_K) rows × `T` (1, 2 or 4) tokens, llama.cpp's tiled order
/// (`quant_k::vec_dot_k_ref`): per super-block exact i32 sums `s1 = Σ_s scale_s · raw_s` and
/// `s2 = Σ_s min_s · bsum_s` (row `r` in lane `r`), then `k_step`. Q5_K's fifth bit of element
/// `64j + 32h + l` is bit `2j + h` of `qh[l]`, moved to bit 4 of the code byte.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tokens_q45k<const Q5: bool, const T: usize, const PF: bool>(
    g: KGeometry,
    w: *const u8,
    a: *const u8,
    pab: usize,
    out: Out,
    pf: Ahead,
) {
    let z = _mm512_setzero_ps();
    let zi = _mm512_setzero_si512();
    let mut acc = [z; T];
    let low = _mm512_set1_epi8(0x0F);
    let bit4 = _mm512_set1_epi8(0x10);
    // SAFETY: every pointer stays inside the group (`nsb` super-blocks of `qb()` bytes, then
    // scales, mins, `d`, `dmin`) and the `T` activation rows (`nsb` super-blocks of `ACT_SB`
    // bytes, `pab` apart), as `run_k` checked.
    unsafe {
        for i in 0..g.nsb {
            let q = w.add(i * g.qb());
            let mut s1 = [zi; T];
            let mut s2 = [zi; T];
            for j in 0..4 {
                if PF {
                    pf.step(4 * i + j);
                }
                // Sub-blocks 2j (low nibbles) and 2j + 1 (high nibbles).
                let mut raw = [[zi; 2]; T];
                for k in 0..8 {
                    let qs = if Q5 { q.add(8 * 64) } else { q };
                    let v = _mm512_load_si512(qs.add((8 * j + k) * 64) as *const __m512i);
                    let mut lo = _mm512_and_si512(v, low);
                    let mut hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), low);
                    if Q5 {
                        let h = _mm512_load_si512(q.add(k * 64) as *const __m512i);
                        // Bits 2j and 2j + 1 of each byte to bit 4 (shifts within 16-bit
                        // lanes: the bits that cross a byte are masked off).
                        let (hl, hh) = match j {
                            0 => (_mm512_slli_epi16::<4>(h), _mm512_slli_epi16::<3>(h)),
                            1 => (_mm512_slli_epi16::<2>(h), _mm512_slli_epi16::<1>(h)),
                            2 => (h, _mm512_srli_epi16::<1>(h)),
                            _ => (_mm512_srli_epi16::<2>(h), _mm512_srli_epi16::<3>(h)),
                        };
                        lo = _mm512_ternarylogic_epi32::<0xF8>(lo, hl, bit4);
                        hi = _mm512_ternarylogic_epi32::<0xF8>(hi, hh, bit4);
                    }
                    for t in 0..T {
                        let aq = a.add(t * pab + i * ACT_SB + 64 * j + 4 * k);
                        let al = _mm512_set1_epi32((aq as *const i32).read_unaligned());
                        let ah = _mm512_set1_epi32((aq.add(32) as *const i32).read_unaligned());
                        raw[t][0] = _mm512_dpbusd_epi32(raw[t][0], lo, al);
                        raw[t][1] = _mm512_dpbusd_epi32(raw[t][1], hi, ah);
                    }
                }
                for h in 0..2 {
                    let sb = 2 * j + h;
                    let sc = _mm512_cvtepu8_epi32(_mm_load_si128(
                        w.add(g.sc_at() + i * 128 + sb * 16) as *const __m128i,
                    ));
                    let mn = _mm512_cvtepu8_epi32(_mm_load_si128(
                        w.add(g.mn_at() + i * 128 + sb * 16) as *const __m128i,
                    ));
                    for t in 0..T {
                        let bs = a.add(t * pab + i * ACT_SB + 256 + 4 * sb) as *const i32;
                        s1[t] = _mm512_add_epi32(s1[t], _mm512_mullo_epi32(sc, raw[t][h]));
                        let m = _mm512_mullo_epi32(mn, _mm512_set1_epi32(*bs));
                        s2[t] = _mm512_add_epi32(s2[t], m);
                    }
                }
            }
            k_step::<T>(g, w, i, a, pab, &s1, Some(&s2), &mut acc);
        }
        for t in 0..T {
            out.put(t, acc[t]);
        }
    }
}
