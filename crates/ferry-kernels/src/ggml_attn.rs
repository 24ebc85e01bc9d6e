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
//! The cache holds keys and values as f16 bits (`store_f16`); `AttnGroup` runs the queries that
//! share one KV head (a GQA group, and a block of a sequence's tokens in prefill) over it,
//! converting each key and value row to f32 once for all of them (`load_f16`, exact), then
//! running the f32 pieces below per query, so every query's bits are those of the pieces run
//! on an f32 cache of the same values.
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

/// Round every element of `src` to the nearest f16 (ties to even, as `round_f16`) and store its
/// bits in `dst`: what the KV cache holds.
pub fn store_f16(src: &[f32], dst: &mut [u16]) {
    assert_eq!(src.len(), dst.len(), "store_f16 lengths");
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        // SAFETY: F16C and AVX were detected; the lengths are equal.
        return unsafe { store_f16_f16c(src, dst) };
    }
    for (d, s) in dst.iter_mut().zip(src) {
        *d = half::f16::from_f32(*s).to_bits();
    }
}

/// The f32 values of the f16 bits in `src` (exact: every f16 is an f32).
pub fn load_f16(src: &[u16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "load_f16 lengths");
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        // SAFETY: F16C and AVX were detected; the lengths are equal.
        return unsafe { load_f16_f16c(src, dst) };
    }
    load_f16_body(src, dst)
}

#[inline(always)]
fn load_f16_body(src: &[u16], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = half::f16::from_bits(*s).to_f32();
    }
}

/// # Safety
/// The CPU must support F16C and AVX; `src.len() == dst.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn store_f16_f16c(src: &[f32], dst: &mut [u16]) {
    use std::arch::x86_64::*;
    let n8 = src.len() / 8 * 8;
    for i in (0..n8).step_by(8) {
        // SAFETY: i + 8 <= len of both slices.
        unsafe {
            let v = _mm256_loadu_ps(src.as_ptr().add(i));
            let h = _mm256_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT }>(v);
            _mm_storeu_si128(dst.as_mut_ptr().add(i) as *mut __m128i, h);
        }
    }
    for (d, s) in dst[n8..].iter_mut().zip(&src[n8..]) {
        *d = half::f16::from_f32(*s).to_bits();
    }
}

/// # Safety
/// The CPU must support F16C and AVX; `src.len() == dst.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn load_f16_f16c(src: &[u16], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let n8 = src.len() / 8 * 8;
    for i in (0..n8).step_by(8) {
        // SAFETY: i + 8 <= len of both slices.
        unsafe {
            let h = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        }
    }
    load_f16_body(&src[n8..], &mut dst[n8..]);
}

/// Where one KV head's rows lie in a paged cache: position `p`'s row is
/// `block(p / bs) + (p % bs) * stride` (`hd` elements), `block(b)` being the offset of block
/// `b`'s first row.
struct Paged<'a, F> {
    bs: usize,
    stride: usize,
    block: &'a F,
}

/// Convert rows `p0..p0 + n` of an f16 cache into `dst` (rows of `hd`), one cache block's run
/// of rows at a time: row `p0 + r` to row `to(r)` of `dst` (`r` itself: contiguous, or a
/// lane-major order for `accumulate_lanes`).
fn load_rows_f16<F: Fn(usize) -> usize>(
    src: &[u16],
    at: &Paged<'_, F>,
    p0: usize,
    n: usize,
    hd: usize,
    dst: &mut [f32],
    to: impl Fn(usize) -> usize,
) {
    let mut p = p0;
    while p < p0 + n {
        let r0 = p % at.bs;
        let cnt = (at.bs - r0).min(p0 + n - p);
        let base = (at.block)(p / at.bs) + r0 * at.stride;
        let src = &src[base..base + (cnt - 1) * at.stride + hd];
        let first = p - p0;
        #[cfg(target_arch = "x86_64")]
        if crate::gemm::has_avx512() && hd.is_multiple_of(LANES) {
            assert!((0..cnt).all(|r| (to(first + r) + 1) * hd <= dst.len()));
            // SAFETY: AVX-512F was detected; `src` holds the `cnt` rows of `hd` at `stride`
            // and every destination row lies inside `dst` (asserted).
            unsafe { load_rows_avx512(src, at.stride, cnt, hd, dst, |r| to(first + r)) };
            p += cnt;
            continue;
        }
        for r in 0..cnt {
            let d = to(first + r) * hd;
            load_f16(&src[r * at.stride..r * at.stride + hd], &mut dst[d..d + hd]);
        }
        p += cnt;
    }
}

/// # Safety
/// The CPU must support AVX-512F; `hd` is a multiple of 16, `src` holds `n` rows of `hd` at
/// `stride` (the last one may end the slice) and `dst` rows `to(r)` of `hd` for `r < n`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn load_rows_avx512(
    src: &[u16],
    stride: usize,
    n: usize,
    hd: usize,
    dst: &mut [f32],
    to: impl Fn(usize) -> usize,
) {
    use std::arch::x86_64::*;
    debug_assert!(n == 0 || src.len() >= (n - 1) * stride + hd);
    for r in 0..n {
        let d = to(r) * hd;
        debug_assert!(d + hd <= dst.len());
        for c in (0..hd).step_by(LANES) {
            // SAFETY: row `r` holds `hd` halves at `r * stride`, `c + 16 <= hd`; row `to(r)`
            // of `dst` holds `hd` floats.
            unsafe {
                let h = _mm256_loadu_si256(src.as_ptr().add(r * stride + c) as *const __m256i);
                _mm512_storeu_ps(dst.as_mut_ptr().add(d + c), _mm512_cvtph_ps(h));
            }
        }
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
            1 => scores_avx512::<f32, 1>,
            2 => scores_avx512::<f32, 2>,
            3 => scores_avx512::<f32, 3>,
            4 => scores_avx512::<f32, 4>,
            5 => scores_avx512::<f32, 5>,
            6 => scores_avx512::<f32, 6>,
            7 => scores_avx512::<f32, 7>,
            8 => scores_avx512::<f32, 8>,
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

/// Elements of a cached row that the AVX-512 kernels read 16 at a time as f32: `f32` itself,
/// or `u16` holding f16 bits (converted in register by `vcvtph2ps`, exact).
#[cfg(target_arch = "x86_64")]
trait Row16: Copy {
    /// # Safety
    /// AVX-512F; `p` points at 16 readable elements.
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
}

#[cfg(target_arch = "x86_64")]
impl Row16 for f32 {
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(p: *const f32) -> std::arch::x86_64::__m512 {
        // SAFETY: the caller guarantees 16 readable floats at `p`.
        unsafe { std::arch::x86_64::_mm512_loadu_ps(p) }
    }
}

#[cfg(target_arch = "x86_64")]
impl Row16 for u16 {
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(p: *const u16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees 16 readable halves (32 bytes) at `p`.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)) }
    }
}

/// `scores_body` for head size `16 * NC` on AVX-512, 16 keys at a time: one vector of lane
/// sums per key (`fmadd(k, q, lanes)` per 16 elements, as tinyBLAS), and the 16 keys' folds
/// done together by `ops::attend_x86::fold16`, whose levels add the same pairs as `fold16`
/// here (`+8`, `+4`, `+2`, `+1`), so the bits are those of `scores_body`. Keys are f32 or f16
/// bits (`Row16`).
///
/// # Safety
/// The CPU must support AVX-512F; `q.len() == 16 * NC`, `out.len() >= n`, and the `n` key rows
/// lie inside `k` (checked by `scores` / `scores_h`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn scores_avx512<T: Row16, const NC: usize>(
    q: &[f32],
    k: &[T],
    stride: usize,
    n: usize,
    scale: f32,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    debug_assert!(q.len() == 16 * NC && out.len() >= n);
    // SAFETY (all loads and stores): `q` holds 16 * NC floats, key `p < n` starts at
    // `p * stride` inside `k` and holds 16 * NC elements, `out` holds `n` floats (masked store).
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
                t = _mm512_fmadd_ps(unsafe { T::load16(kr.add(16 * c)) }, *qc, t);
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

/// The largest of `s` (not NaN: scores are finite), in 16 lanes: a maximum is the same whatever
/// the order it is taken in, and `f32::max` folded one element at a time compiles to scalar
/// code with a NaN check per element (3% of a prefill profile).
fn max_f32(s: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = s.chunks_exact(LANES);
    for ch in &mut chunks {
        for (m, &v) in lanes.iter_mut().zip(ch) {
            *m = if v > *m { v } else { *m };
        }
    }
    for (m, &v) in lanes.iter_mut().zip(chunks.remainder()) {
        *m = if v > *m { v } else { *m };
    }
    lanes
        .into_iter()
        .fold(f32::NEG_INFINITY, |a, b| if b > a { b } else { a })
}

/// `ggml_soft_max_ext` of one row of scores (positions `0..s.len()` unmasked, the rest of the
/// padded row masked), then the weights rounded to f16, in place.
pub fn softmax_f16(s: &mut [f32]) {
    if s.is_empty() {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if crate::gemm::has_avx512() {
        // SAFETY: AVX-512F (and with it F16C) was detected.
        return unsafe { softmax_f16_avx512(s) };
    }
    softmax_f16_body(s)
}

fn softmax_f16_body(s: &mut [f32]) {
    let max = max_f32(s);
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

/// `softmax_f16` in one AVX-512 function: the same maximum, the same chunks of `exp` and
/// their sums (`exp_sub_chunk_avx512`, inlined here instead of called per 16 scores), and
/// each weight's multiply by `1 / sum` and rounding to f16 (nearest, ties to even) in one pass.
///
/// # Safety
/// AVX-512F must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn softmax_f16_avx512(s: &mut [f32]) {
    use std::arch::x86_64::*;
    let mut chunks = s.chunks_exact(LANES);
    let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
    for ch in &mut chunks {
        // SAFETY: 16 floats.
        m = _mm512_max_ps(m, unsafe { _mm512_loadu_ps(ch.as_ptr()) });
    }
    let mut max = _mm512_reduce_max_ps(m);
    for &v in chunks.remainder() {
        max = if v > max { v } else { max };
    }
    let mut sum = 0f64;
    for ch in s.chunks_mut(LANES) {
        // SAFETY: AVX-512F is available; a chunk holds at most 16 floats.
        sum += unsafe { vmath::x86::exp_sub_chunk_avx512(ch, max) } as f64;
    }
    let inv = _mm512_set1_ps((1.0 / sum) as f32);
    for ch in s.chunks_mut(LANES) {
        let k = ch.len();
        let m: __mmask16 = if k == LANES { 0xFFFF } else { (1u16 << k) - 1 };
        // SAFETY: the mask covers the chunk's `k` floats.
        unsafe {
            let v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, ch.as_ptr()), inv);
            let h = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
            _mm512_mask_storeu_ps(ch.as_mut_ptr(), m, _mm512_cvtph_ps(h));
        }
    }
}

/// Add `n` value rows (`v[r * stride..][..hd]`) weighted by `w[..n]` into the 16-lane
/// accumulator `acc` (`LANES` rows of `hd`): row `r`, at sequence position `p0 + r`, goes to
/// lane `(p0 + r) mod 16` as `acc[lane][j] = fma(v[j], w, acc[lane][j])`.
pub fn accumulate(w: &[f32], v: &[f32], stride: usize, n: usize, p0: usize, acc: &mut [f32]) {
    let hd = acc.len() / LANES;
    assert!(acc.len() == hd * LANES && w.len() >= n);
    assert!(n == 0 || v.len() >= (n - 1) * stride + hd);
    #[cfg(target_arch = "x86_64")]
    if crate::gemm::has_avx512() && hd.is_multiple_of(LANES) {
        // SAFETY: AVX-512F (hence FMA and AVX2) was detected; bounds were checked above.
        return unsafe { accumulate_avx512(w, v, stride, n, p0, acc) };
    }
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

/// `accumulate_body` for head sizes that are a multiple of 16 on AVX-512: per 16 columns of
/// the head, the 16 lanes' accumulators stay in registers over all `n` rows (register `l` is
/// lane `l`; rows from a position that is a multiple of 16 go to registers 0..16 in turn), so
/// each row costs one load, one broadcast and one FMA per 16 columns instead of a load and
/// store of the accumulator. Each lane still takes `fma(v, w, lane)` in position order: the
/// bits of `accumulate_body`. Values are f32 or f16 bits (`Row16`).
///
/// # Safety
/// The CPU must support AVX-512F; `hd = acc.len() / 16` is a multiple of 16, `w.len() >= n`
/// and the `n` value rows lie inside `v` (checked by `accumulate` / `accumulate_h`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn accumulate_avx512<T: Row16>(
    w: &[f32],
    v: &[T],
    stride: usize,
    n: usize,
    p0: usize,
    acc: &mut [f32],
) {
    use std::arch::x86_64::*;
    let hd = acc.len() / LANES;
    debug_assert!(hd.is_multiple_of(LANES) && w.len() >= n);
    // SAFETY (all loads and stores): lane `l` of the accumulator is `acc[l * hd..][..hd]` and
    // `c + 16 <= hd`; row `r < n` starts at `r * stride` inside `v` with `hd` elements, and `w`
    // holds `n` weights. Rows before the next multiple of 16 positions go through memory.
    let ap = acc.as_mut_ptr();
    let lead = ((LANES - p0 % LANES) % LANES).min(n);
    for (r, &wr) in w.iter().enumerate().take(lead) {
        let lane = (p0 + r) % LANES;
        for c in (0..hd).step_by(LANES) {
            unsafe {
                let a = ap.add(lane * hd + c);
                let x = _mm512_fmadd_ps(
                    T::load16(v.as_ptr().add(r * stride + c)),
                    _mm512_set1_ps(wr),
                    _mm512_loadu_ps(a),
                );
                _mm512_storeu_ps(a, x);
            }
        }
    }
    if lead == n {
        return;
    }
    let (w, v, n) = (&w[lead..n], &v[lead * stride..], n - lead);
    for c in (0..hd).step_by(LANES) {
        let mut a: [__m512; LANES] =
            std::array::from_fn(|l| unsafe { _mm512_loadu_ps(ap.add(l * hd + c)) });
        let mut vp = v.as_ptr().wrapping_add(c);
        let mut wp = w.as_ptr();
        let full = n / LANES;
        for _ in 0..full {
            for al in a.iter_mut() {
                unsafe {
                    *al = _mm512_fmadd_ps(T::load16(vp), _mm512_set1_ps(*wp), *al);
                    vp = vp.wrapping_add(stride);
                    wp = wp.add(1);
                }
            }
        }
        let rem = n - full * LANES;
        for (l, al) in a.iter_mut().enumerate() {
            if l < rem {
                unsafe {
                    *al = _mm512_fmadd_ps(T::load16(vp), _mm512_set1_ps(*wp), *al);
                    vp = vp.wrapping_add(stride);
                    wp = wp.add(1);
                }
            }
        }
        for (l, al) in a.iter().enumerate() {
            unsafe { _mm512_storeu_ps(ap.add(l * hd + c), *al) };
        }
    }
}

/// One tile of `accumulate_lanes`: queries `t..t + nt` (`nt` at most the kernel's `Q`).
type LanesFn =
    unsafe fn(&[f32], usize, usize, usize, &[f32], usize, &[usize], &mut [f32], usize, usize);

/// `accumulate_lanes_avx512::<NC, Q>` for each `Q` listed, largest first.
macro_rules! lane_tiles {
    ($nc:literal: $($q:literal),+) => {
        &[$(($q, accumulate_lanes_avx512::<$nc, $q> as LanesFn)),+]
    };
}

/// The AVX-512 kernels of `accumulate_lanes` for head size `hd = 16 * NC`, if there are: tiles
/// of `Q` queries (`Q * NC` accumulators and `NC` value vectors in registers), largest first;
/// a group's last queries take the smallest tile that holds them.
fn lanes_kernels(hd: usize) -> Option<&'static [(usize, LanesFn)]> {
    #[cfg(target_arch = "x86_64")]
    if crate::gemm::has_avx512() {
        return match hd {
            16 => Some(lane_tiles!(1: 8, 4, 3, 2, 1)),
            32 => Some(lane_tiles!(2: 8, 4, 3, 2, 1)),
            48 => Some(lane_tiles!(3: 8, 4, 3, 2, 1)),
            64 => Some(lane_tiles!(4: 6, 4, 3, 2, 1)),
            80 => Some(lane_tiles!(5: 4, 3, 2, 1)),
            96 => Some(lane_tiles!(6: 4, 3, 2, 1)),
            112 => Some(lane_tiles!(7: 3, 2, 1)),
            128 => Some(lane_tiles!(8: 3, 2, 1)),
            _ => None,
        };
    }
    let _ = hd;
    None
}

/// `accumulate` of one block of value rows for every query of a group at once. The block holds
/// positions `c0..c0 + n` (`c0` a multiple of 16) converted in lane-major order: position
/// `c0 + l + 16 m` at row `l * per_lane + m` of `rows`. Query `j` (at position `pos[j]`, weights
/// `s[j * npos..]`, 16-lane accumulator `acc[j * 16 * hd..]`) takes the block's positions up to
/// its own. Lane `l` of every query only ever receives positions `≡ l (mod 16)`, in position
/// order, so per lane this is a matrix product (queries × rows of the lane × head columns)
/// whose every output takes its terms in `k` order: tiled over several queries, each value
/// vector is loaded once for all of them (one load per FMA in `accumulate`, one per tile here),
/// and every accumulator receives the same FMAs in the same order as in `accumulate`. The
/// accumulators are not read in the first block (`c0 == 0`): every lane of every query starts
/// from zero there and is written, rows or none.
#[allow(clippy::too_many_arguments)]
fn accumulate_lanes(
    rows: &[f32],
    per_lane: usize,
    c0: usize,
    n: usize,
    s: &[f32],
    npos: usize,
    pos: &[usize],
    acc: &mut [f32],
) {
    let nq = pos.len();
    let hd = acc.len() / (LANES * nq.max(1));
    assert!(c0.is_multiple_of(LANES) && n <= LANES * per_lane);
    assert!(rows.len() >= LANES * per_lane * hd && s.len() >= nq * npos);
    assert!(acc.len() == nq * LANES * hd && pos.iter().all(|&p| p < npos));
    let ks = lanes_kernels(hd).expect("lane kernels for this head size");
    let mut t = 0;
    while t < nq {
        let left = nq - t;
        let &(q, f) = ks.iter().rev().find(|&&(q, _)| q >= left).unwrap_or(&ks[0]);
        // SAFETY: the kernels are this head size's (AVX-512F detected); the bounds are asserted
        // above, and queries `t..t + min(q, left)` exist.
        unsafe { f(rows, per_lane, c0, n, s, npos, pos, acc, t, q.min(left)) };
        t += q.min(left);
    }
}

/// # Safety
/// AVX-512F; the bounds `accumulate_lanes` asserts, with `hd = 16 * NC`; `1 <= nt <= Q` and
/// `t + nt <= pos.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn accumulate_lanes_avx512<const NC: usize, const Q: usize>(
    rows: &[f32],
    per_lane: usize,
    c0: usize,
    n: usize,
    s: &[f32],
    npos: usize,
    pos: &[usize],
    acc: &mut [f32],
    t: usize,
    nt: usize,
) {
    use std::arch::x86_64::*;
    let hd = 16 * NC;
    debug_assert!(nt >= 1 && nt <= Q && t + nt <= pos.len());
    let (ap, rp, sp) = (acc.as_mut_ptr(), rows.as_ptr(), s.as_ptr());
    // SAFETY (all loads and stores): query `j < pos.len()` owns `acc[j * 16 * hd..][..16 * hd]`,
    // its weights for positions up to `pos[j] < npos` are `s[j * npos..]`; lane `l`'s row `m`
    // of the block (`m < nl <= per_lane`) is `rows[(l * per_lane + m) * hd..][..hd]`.
    // A tile of fewer than `Q` queries repeats its last one: the copy computes the same
    // values and stores them twice.
    let qi: [usize; Q] = std::array::from_fn(|k| t + k.min(nt - 1));
    let first = c0 == 0;
    for l in 0..LANES {
        let nl = n.saturating_sub(l).div_ceil(LANES);
        // Rows of this lane each query takes (positions `c0 + l + 16 m <= pos`).
        let cnt: [usize; Q] = std::array::from_fn(|k| {
            let p = pos[qi[k]];
            if p >= c0 + l {
                ((p - c0 - l) / LANES + 1).min(nl)
            } else {
                0
            }
        });
        let most = cnt.iter().copied().max().unwrap_or(0);
        if most == 0 && !first {
            continue;
        }
        let common = cnt.iter().copied().min().unwrap_or(0);
        let at = |k: usize, c: usize| qi[k] * LANES * hd + l * hd + 16 * c;
        let mut a: [[__m512; NC]; Q] = std::array::from_fn(|k| {
            std::array::from_fn(|c| {
                if first {
                    _mm512_setzero_ps()
                } else {
                    unsafe { _mm512_loadu_ps(ap.add(at(k, c))) }
                }
            })
        });
        let wp: [*const f32; Q] = std::array::from_fn(|k| unsafe { sp.add(qi[k] * npos + c0 + l) });
        for m in 0..common {
            let vr = unsafe { rp.add((l * per_lane + m) * hd) };
            let vv: [__m512; NC] =
                std::array::from_fn(|c| unsafe { _mm512_loadu_ps(vr.add(16 * c)) });
            for (ak, wk) in a.iter_mut().zip(&wp) {
                let w = _mm512_set1_ps(unsafe { *wk.add(LANES * m) });
                for (x, v) in ak.iter_mut().zip(&vv) {
                    *x = _mm512_fmadd_ps(*v, w, *x);
                }
            }
        }
        for ((ak, wk), &ck) in a.iter_mut().zip(&wp).zip(&cnt) {
            for m in common..ck {
                let vr = unsafe { rp.add((l * per_lane + m) * hd) };
                let w = _mm512_set1_ps(unsafe { *wk.add(LANES * m) });
                for (c, x) in ak.iter_mut().enumerate() {
                    *x = _mm512_fmadd_ps(unsafe { _mm512_loadu_ps(vr.add(16 * c)) }, w, *x);
                }
            }
        }
        for (k, ak) in a.iter().enumerate() {
            for (c, x) in ak.iter().enumerate() {
                unsafe { _mm512_storeu_ps(ap.add(at(k, c)), *x) };
            }
        }
    }
}

/// `scores` over keys stored as f16 bits (`k[p * stride..][..q.len()]`): the same values as
/// `scores` on their f32 conversions, the same bits; each key chunk is converted in register
/// (`vcvtph2ps`) on AVX-512, else through a row buffer. For a query that is alone on its KV
/// head's rows (single-stream decode), where converting rows once for several queries buys
/// nothing. Head size at most 256.
pub fn scores_h(q: &[f32], k: &[u16], stride: usize, n: usize, scale: f32, out: &mut [f32]) {
    let hd = q.len();
    assert!(hd <= 256 && out.len() >= n && (n == 0 || k.len() >= (n - 1) * stride + hd));
    #[cfg(target_arch = "x86_64")]
    if crate::gemm::has_avx512() && hd.is_multiple_of(LANES) && hd / LANES <= 8 {
        let f = match hd / LANES {
            1 => scores_avx512::<u16, 1>,
            2 => scores_avx512::<u16, 2>,
            3 => scores_avx512::<u16, 3>,
            4 => scores_avx512::<u16, 4>,
            5 => scores_avx512::<u16, 5>,
            6 => scores_avx512::<u16, 6>,
            7 => scores_avx512::<u16, 7>,
            _ => scores_avx512::<u16, 8>,
        };
        // SAFETY: AVX-512F was detected; bounds were checked above.
        return unsafe { f(q, k, stride, n, scale, out) };
    }
    let mut row = [0f32; 256];
    for (p, o) in out[..n].iter_mut().enumerate() {
        load_f16(&k[p * stride..p * stride + hd], &mut row[..hd]);
        scores(q, &row[..hd], hd, 1, scale, std::slice::from_mut(o));
    }
}

/// `accumulate` over value rows stored as f16 bits: the same bits as `accumulate` on their f32
/// conversions (converted in register on AVX-512, else one row at a time). Head size at most
/// 256.
pub fn accumulate_h(w: &[f32], v: &[u16], stride: usize, n: usize, p0: usize, acc: &mut [f32]) {
    let hd = acc.len() / LANES;
    assert!(hd <= 256 && acc.len() == hd * LANES && w.len() >= n);
    assert!(n == 0 || v.len() >= (n - 1) * stride + hd);
    #[cfg(target_arch = "x86_64")]
    if crate::gemm::has_avx512() && hd.is_multiple_of(LANES) {
        // SAFETY: AVX-512F was detected; bounds were checked above.
        return unsafe { accumulate_avx512(w, v, stride, n, p0, acc) };
    }
    let mut row = [0f32; 256];
    for r in 0..n {
        load_f16(&v[r * stride..r * stride + hd], &mut row[..hd]);
        accumulate(&w[r..], &row[..hd], hd, 1, p0 + r, acc);
    }
}

/// Fold the 16-lane accumulator into the head's output (`out.len()` = head size).
pub fn finish(acc: &[f32], out: &mut [f32]) {
    let hd = out.len();
    assert_eq!(acc.len(), hd * LANES);
    #[cfg(target_arch = "x86_64")]
    if crate::gemm::has_avx512() && hd.is_multiple_of(LANES) {
        // SAFETY: AVX-512F was detected; the lengths were checked above.
        return unsafe { finish_avx512(acc, out) };
    }
    for (j, o) in out.iter_mut().enumerate() {
        *o = fold16(std::array::from_fn(|l| acc[l * hd + j]));
    }
}

/// `finish` for 16 columns at a time: `fold16`'s levels as vertical adds of the lanes' rows
/// (lane `l` + lane `l + w`, for `w` = 8, 4, 2, 1), the same additions per column.
///
/// # Safety
/// AVX-512F; `out.len()` is a multiple of 16 and `acc.len() == 16 * out.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn finish_avx512(acc: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let hd = out.len();
    for c in (0..hd).step_by(LANES) {
        // SAFETY: lane `l`'s columns `c..c + 16` are `acc[l * hd + c..][..16]`, `c + 16 <= hd`.
        let mut a: [__m512; LANES] =
            std::array::from_fn(|l| unsafe { _mm512_loadu_ps(acc.as_ptr().add(l * hd + c)) });
        let mut w = LANES / 2;
        while w > 0 {
            for i in 0..w {
                a[i] = _mm512_add_ps(a[i], a[i + w]);
            }
            w /= 2;
        }
        unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(c), a[0]) };
    }
}

/// Causal attention of several queries over one KV head of a paged f16 cache, sharing each
/// key and value row's conversion to f32: the queries are the query heads of a GQA group, for
/// one token (decode) or a block of one sequence's tokens (prefill). Rows are converted in
/// blocks of about 32 KiB; each query's scores, softmax, value sums and fold are the pieces
/// above (`scores`, `softmax_f16`, `accumulate`, `finish`) in position order, so its output has
/// the bits of those pieces over an f32 cache holding the same values, one query at a time.
///
/// The buffers grow to the largest group and longest sequence seen and are then reused:
/// `clear`, `push` each query, `run`, read `out`.
/// Groups of at most this many queries read the f16 rows in place (`AttnGroup::run_direct`);
/// larger ones convert each row block once into f32 for all of them.
const DIRECT_MAX: usize = 2;

#[derive(Default)]
pub struct AttnGroup {
    hd: usize,
    /// Queries rounded to f16, `hd` each.
    q: Vec<f32>,
    /// Each query's sequence position (it attends to `0..=pos`).
    pos: Vec<usize>,
    /// Scores then weights, one row of `npos` per query.
    s: Vec<f32>,
    /// A block of converted key or value rows.
    rows: Vec<f32>,
    /// 16-lane value accumulators, `16 * hd` per query.
    acc: Vec<f32>,
    out: Vec<f32>,
}

impl AttnGroup {
    /// Start a group of queries of head size `hd`.
    pub fn clear(&mut self, hd: usize) {
        self.hd = hd;
        self.q.clear();
        self.pos.clear();
    }

    /// Add a query (`hd` values, rounded to f16 here) at sequence position `pos`.
    pub fn push(&mut self, q: &[f32], pos: usize) {
        assert_eq!(q.len(), self.hd, "query length");
        let start = self.q.len();
        self.q.extend_from_slice(q);
        round_f16(&mut self.q[start..]);
        self.pos.push(pos);
    }

    /// Number of queries pushed.
    pub fn len(&self) -> usize {
        self.pos.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pos.is_empty()
    }

    /// Run every query over keys `k` and values `v` (f16 bits) of a paged cache: blocks of
    /// `bs` positions, rows `stride` apart in a block, block `b`'s first row of this KV head at
    /// `block(b)` (the same in `k` and `v`); position `p`'s row is then
    /// `k[block(p / bs) + (p % bs) * stride..][..hd]`, for `p` up to the largest position
    /// pushed. `out(j)` then holds query `j`'s output.
    pub fn run<F: Fn(usize) -> usize>(
        &mut self,
        k: &[u16],
        v: &[u16],
        bs: usize,
        stride: usize,
        block: F,
        scale: f32,
    ) {
        assert!(bs > 0, "block size");
        let at = Paged {
            bs,
            stride,
            block: &block,
        };
        let (hd, nq) = (self.hd, self.pos.len());
        let Some(&maxpos) = self.pos.iter().max() else {
            return;
        };
        let npos = maxpos + 1;
        // Rows per converted block: ~32 KiB of f32, a multiple of 16 positions so that the
        // blocks start where `accumulate` keeps its lanes in registers.
        let rb = ((32768 / 4 / hd.max(1)) / LANES * LANES).max(LANES);
        let lanes = lanes_kernels(hd).is_some();
        if self.s.len() < nq * npos {
            self.s.resize(nq * npos, 0.0);
        }
        if self.rows.len() < rb * hd {
            self.rows.resize(rb * hd, 0.0);
        }
        if nq <= DIRECT_MAX || !lanes {
            self.acc.clear();
        }
        // (`accumulate_lanes` writes every accumulator from zero in its first block.)
        self.acc.resize(nq * LANES * hd, 0.0);
        self.out.resize(nq * hd, 0.0);
        if nq <= DIRECT_MAX {
            self.run_direct(k, v, &at, npos, scale);
            return;
        }
        let (q, pos, s, rows) = (&self.q, &self.pos, &mut self.s, &mut self.rows);
        let mut c0 = 0;
        while c0 < npos {
            let c1 = (c0 + rb).min(npos);
            load_rows_f16(k, &at, c0, c1 - c0, hd, rows, |r| r);
            for (j, &p) in pos.iter().enumerate() {
                if p >= c0 {
                    let n = c1.min(p + 1) - c0;
                    let qj = &q[j * hd..(j + 1) * hd];
                    scores(qj, rows, hd, n, scale, &mut s[j * npos + c0..]);
                }
            }
            c0 = c1;
        }
        for (j, &p) in pos.iter().enumerate() {
            softmax_f16(&mut s[j * npos..j * npos + p + 1]);
        }
        let mut c0 = 0;
        while c0 < npos {
            let c1 = (c0 + rb).min(npos);
            if lanes {
                // Lane-major: row `r` of the block (position `c0 + r`, lane `r % 16`) at row
                // `r % 16 * per_lane + r / 16`.
                let per_lane = rb / LANES;
                let to = |r: usize| r % LANES * per_lane + r / LANES;
                load_rows_f16(v, &at, c0, c1 - c0, hd, rows, to);
                accumulate_lanes(rows, per_lane, c0, c1 - c0, s, npos, pos, &mut self.acc);
            } else {
                load_rows_f16(v, &at, c0, c1 - c0, hd, rows, |r| r);
                for (j, &p) in pos.iter().enumerate() {
                    if p >= c0 {
                        let n = c1.min(p + 1) - c0;
                        let acc = &mut self.acc[j * LANES * hd..(j + 1) * LANES * hd];
                        accumulate(&s[j * npos + c0..], rows, hd, n, c0, acc);
                    }
                }
            }
            c0 = c1;
        }
        for (a, o) in self
            .acc
            .chunks_exact(LANES * hd)
            .zip(self.out.chunks_exact_mut(hd))
        {
            finish(a, o);
        }
    }

    /// `run` for one or two queries: each reads the f16 rows in place, converting in
    /// register (`scores_h`, `accumulate_h`), one cache block's run of rows at a time.
    fn run_direct<F: Fn(usize) -> usize>(
        &mut self,
        k: &[u16],
        v: &[u16],
        at: &Paged<'_, F>,
        npos: usize,
        scale: f32,
    ) {
        let hd = self.hd;
        let (q, pos, s) = (&self.q, &self.pos, &mut self.s);
        let seg = |p: usize| {
            let r0 = p % at.bs;
            ((at.block)(p / at.bs) + r0 * at.stride, at.bs - r0)
        };
        let mut p = 0;
        while p < npos {
            let (base, cnt) = seg(p);
            for (j, &pj) in pos.iter().enumerate() {
                if pj >= p {
                    let n = cnt.min(pj + 1 - p);
                    let qj = &q[j * hd..(j + 1) * hd];
                    scores_h(qj, &k[base..], at.stride, n, scale, &mut s[j * npos + p..]);
                }
            }
            p += cnt;
        }
        for (j, &pj) in pos.iter().enumerate() {
            softmax_f16(&mut s[j * npos..j * npos + pj + 1]);
        }
        let mut p = 0;
        while p < npos {
            let (base, cnt) = seg(p);
            for (j, &pj) in pos.iter().enumerate() {
                if pj >= p {
                    let n = cnt.min(pj + 1 - p);
                    let acc = &mut self.acc[j * LANES * hd..(j + 1) * LANES * hd];
                    accumulate_h(&s[j * npos + p..], &v[base..], at.stride, n, p, acc);
                }
            }
            p += cnt;
        }
        for (a, o) in self
            .acc
            .chunks_exact(LANES * hd)
            .zip(self.out.chunks_exact_mut(hd))
        {
            finish(a, o);
        }
    }

    /// Query `j`'s output (`hd` values) after `run`.
    pub fn out(&self, j: usize) -> &[f32] {
        &self.out[j * self.hd..(j + 1) * self.hd]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::lcg;

    /// The dispatched softmax (one AVX-512 pass where available) against the plain one, bit
    /// for bit, over ragged lengths, with ties for the maximum and scores far below it.
    #[test]
    fn softmax_matches_plain_body() {
        let mut seed = 9u64;
        for n in (1..=40).chain([63, 64, 65, 200, 513]) {
            let s: Vec<f32> = (0..n)
                .map(|i| match i % 11 {
                    3 => 7.5,
                    7 => -90.0,
                    _ => lcg(&mut seed) * 6.0,
                })
                .collect();
            let (mut a, mut b) = (s.clone(), s);
            softmax_f16(&mut a);
            softmax_f16_body(&mut b);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b), "n {n}");
        }
    }

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

    #[test]
    fn f16_store_and_load_match_half() {
        // Every f16 bit pattern converts as `half` does (NaNs stay NaN).
        let all: Vec<u16> = (0..=u16::MAX).collect();
        for len in [0, 1, 7, 8, 9, 23, 65536] {
            let mut y = vec![0f32; len];
            load_f16(&all[..len], &mut y);
            for (a, b) in y.iter().zip(&all) {
                let want = half::f16::from_bits(*b).to_f32();
                assert!(a.to_bits() == want.to_bits() || (a.is_nan() && want.is_nan()));
            }
        }
        let mut seed = 11u64;
        let x: Vec<f32> = (0..1000)
            .map(|i| lcg(&mut seed) * [1.0, 1e-6, 7e4, 1e5, 3e-5][i % 5])
            .collect();
        for len in [0, 1, 7, 8, 9, 100, 1000] {
            let mut h = vec![0u16; len];
            store_f16(&x[..len], &mut h);
            let mut r = x[..len].to_vec();
            round_f16(&mut r);
            for ((a, b), c) in h.iter().zip(&x).zip(&r) {
                assert_eq!(*a, half::f16::from_f32(*b).to_bits());
                assert_eq!(half::f16::from_bits(*a).to_f32().to_bits(), c.to_bits());
            }
        }
    }

    /// The dispatched `accumulate` (AVX-512 registers-resident lanes where present) against
    /// the portable body, for ragged row counts, start positions and head sizes.
    #[test]
    fn accumulate_matches_body() {
        let mut seed = 13u64;
        for hd in [16, 24, 32, 48, 64, 128, 144] {
            for p0 in [0, 1, 5, 15, 16, 17, 31, 40] {
                for n in [0, 1, 2, 15, 16, 17, 33, 50] {
                    let stride = hd + 8;
                    let w: Vec<f32> = (0..n).map(|_| lcg(&mut seed)).collect();
                    let v: Vec<f32> = (0..n * stride).map(|_| lcg(&mut seed) * 3.0).collect();
                    let init: Vec<f32> = (0..16 * hd).map(|_| lcg(&mut seed)).collect();
                    let mut want = init.clone();
                    accumulate_body(&w, &v, stride, n, p0, &mut want);
                    let mut got = init;
                    accumulate(&w, &v, stride, n, p0, &mut got);
                    assert_eq!(got, want, "hd {hd} p0 {p0} n {n}");
                }
            }
        }
    }

    /// `AttnGroup` over an f16 paged cache against the per-(token, head) attention it replaced
    /// (the pieces walked per cache block over an f32 cache of the same values), bit for bit:
    /// ragged positions, token blocks, group sizes, block sizes and head sizes 16..128.
    #[test]
    fn group_over_f16_cache_equals_per_head_over_f32_cache() {
        let mut seed = 17u64;
        let mut g = AttnGroup::default();
        for (hd, n_kv, bs, group) in [
            (64, 3, 16, 3),
            (16, 2, 16, 1),
            (24, 1, 5, 2),
            (32, 2, 7, 4),
            (48, 2, 16, 3),
            (80, 1, 3, 2),
            (128, 2, 16, 2),
        ] {
            let kvd = n_kv * hd;
            let npos: usize = 300;
            let n_blocks = npos.div_ceil(bs) + 3;
            // A shuffled block table.
            let mut table: Vec<usize> = (0..n_blocks).collect();
            for i in (1..n_blocks).rev() {
                let j = ((lcg(&mut seed) + 0.5) * (i + 1) as f32) as usize % (i + 1);
                table.swap(i, j);
            }
            let len = n_blocks * bs * kvd;
            let kf: Vec<f32> = (0..len)
                .map(|_| half::f16::from_f32(lcg(&mut seed) * 6.0).to_f32())
                .collect();
            let vf: Vec<f32> = (0..len)
                .map(|_| half::f16::from_f32(lcg(&mut seed) * 2.0).to_f32())
                .collect();
            let mut kh = vec![0u16; len];
            let mut vh = vec![0u16; len];
            store_f16(&kf, &mut kh);
            store_f16(&vf, &mut vh);
            let scale = 1.0 / (hd as f32).sqrt();
            let off = |p: usize| (table[p / bs] * bs + p % bs) * kvd;
            for kvh in 0..n_kv {
                let row = |p: usize| off(p) + kvh * hd;
                for positions in [
                    vec![0],
                    vec![7],
                    vec![16],
                    vec![0, 1, 2],
                    vec![15, 16, 17, 18, 19],
                    vec![3, 40, 41, 299],
                    (100..116).collect::<Vec<_>>(),
                    (250..300).collect::<Vec<_>>(),
                ] {
                    g.clear(hd);
                    let mut qs = Vec::new();
                    for &p in &positions {
                        for _ in 0..group {
                            let q: Vec<f32> = (0..hd).map(|_| lcg(&mut seed) * 4.0).collect();
                            g.push(&q, p);
                            qs.push((q, p));
                        }
                    }
                    g.run(&kh, &vh, bs, kvd, |b| table[b] * bs * kvd + kvh * hd, scale);
                    for (j, (q, p)) in qs.iter().enumerate() {
                        // The replaced per-head code of `Llama::forward`.
                        let mut qh = q.clone();
                        round_f16(&mut qh);
                        let mut s = vec![0f32; p + 1];
                        let mut acc = vec![0f32; LANES * hd];
                        let mut x = 0;
                        while x <= *p {
                            let nrows = (bs - x % bs).min(p + 1 - x);
                            let o = row(x);
                            scores(&qh, &kf[o..], kvd, nrows, scale, &mut s[x..]);
                            x += nrows;
                        }
                        softmax_f16(&mut s);
                        let mut x = 0;
                        while x <= *p {
                            let nrows = (bs - x % bs).min(p + 1 - x);
                            let o = row(x);
                            accumulate(&s[x..], &vf[o..], kvd, nrows, x, &mut acc);
                            x += nrows;
                        }
                        let mut want = vec![0f32; hd];
                        finish(&acc, &mut want);
                        assert_eq!(g.out(j), &want[..], "hd {hd} bs {bs} kvh {kvh} pos {p}");
                    }
                }
            }
        }
    }

    /// `scores_h` and `accumulate_h` (f16 rows read in place) against `scores` and
    /// `accumulate` on the same values as f32, for ragged counts, start positions and head
    /// sizes (multiples of 16 take the AVX-512 kernels, the others the row-buffer path).
    #[test]
    fn f16_row_pieces_match_f32_pieces() {
        let mut seed = 19u64;
        for hd in [16, 24, 32, 48, 64, 80, 128, 144] {
            for (n, p0) in [(0, 0), (1, 0), (5, 3), (16, 0), (17, 15), (33, 16), (40, 7)] {
                let stride = hd + 16;
                let q: Vec<f32> = (0..hd)
                    .map(|_| half::f16::from_f32(lcg(&mut seed) * 4.0).to_f32())
                    .collect();
                let x: Vec<f32> = (0..n * stride).map(|_| lcg(&mut seed) * 4.0).collect();
                let mut h = vec![0u16; x.len()];
                store_f16(&x, &mut h);
                let mut xf = vec![0f32; x.len()];
                load_f16(&h, &mut xf);
                let mut want = vec![0f32; n];
                scores(&q, &xf, stride, n, 0.125, &mut want);
                let mut got = vec![0f32; n];
                scores_h(&q, &h, stride, n, 0.125, &mut got);
                assert_eq!(got, want, "scores hd {hd} n {n}");
                let w: Vec<f32> = (0..n).map(|_| lcg(&mut seed)).collect();
                let init: Vec<f32> = (0..16 * hd).map(|_| lcg(&mut seed)).collect();
                let mut want = init.clone();
                accumulate(&w, &xf, stride, n, p0, &mut want);
                let mut got = init;
                accumulate_h(&w, &h, stride, n, p0, &mut got);
                assert_eq!(got, want, "accumulate hd {hd} n {n} p0 {p0}");
            }
        }
    }
}
