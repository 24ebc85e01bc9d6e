//! Matrix products `out = x · Wᵀ` of activations `x` (`n_tokens` rows of `cols` f32) with a
//! weight matrix `W` (`rows` rows of `cols` elements stored in a GGML block type).
//!
//! Activations are first converted to the weight type's `vec_dot_type` (as ggml does), then
//! every output element is one `vec_dot` of a weight row with an activation row. The work is
//! split over output rows, so each element's reduction order is fixed whatever `n_tokens` is.

// Tile kernels take a weight tile, an activation tile and an output slice with strides.
#![allow(clippy::too_many_arguments)]

use std::cell::RefCell;

use crate::dot::{backend, Backend, PreparedKernel};
use crate::packed::{PackedMatrix, X16Fn, DECODE_MAX_TOKENS, GROUP};
use crate::pool::ThreadPool;
use crate::quant::GgmlType;
use crate::KernelError;

/// A borrowed weight matrix: `rows` rows of `cols` elements of type `ty`, row-major.
#[derive(Clone, Copy, Debug)]
pub struct Matrix<'a> {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
    /// The same matrix repacked for this process's small-batch kernels (`PackedMatrix`), if
    /// the caller made one: products then read it instead of `data`.
    pub packed: Option<&'a PackedMatrix>,
}

impl<'a> Matrix<'a> {
    /// Check that `data` holds exactly `rows × cols` elements of `ty`.
    pub fn new(
        ty: GgmlType,
        rows: usize,
        cols: usize,
        data: &'a [u8],
    ) -> Result<Self, KernelError> {
        if !ty.is_weight_type() {
            return Err(KernelError::UnsupportedType(ty.name().to_string()));
        }
        let rb = ty.row_bytes(cols).ok_or(KernelError::RaggedRow {
            ty: ty.name(),
            cols,
            block: ty.block_size(),
        })?;
        let want = rb.checked_mul(rows).ok_or(KernelError::SizeMismatch {
            got: data.len(),
            want: usize::MAX,
        })?;
        if data.len() != want {
            return Err(KernelError::SizeMismatch {
                got: data.len(),
                want,
            });
        }
        Ok(Self {
            ty,
            rows,
            cols,
            data,
            packed: None,
        })
    }

    /// This matrix with its packed copy (which must have been made from a matrix of the same
    /// type and shape; panics otherwise).
    pub fn with_packed(self, packed: Option<&'a PackedMatrix>) -> Self {
        if let Some(p) = packed {
            assert!(p.fits(&self), "packed copy of another matrix");
        }
        Self { packed, ..self }
    }

    /// The packed copy, if there is one for backend `be`.
    fn packed_for(&self, be: &Backend) -> Option<&'a PackedMatrix> {
        self.packed.filter(|p| p.backend == be.name)
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.data.len() / self.rows.max(1)
    }

    /// The bytes of row `r`.
    pub fn row(&self, r: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }
}

/// Reusable buffers for `matmul`, so that a decode step allocates nothing once warm.
#[derive(Default)]
pub struct MatmulScratch {
    act: Vec<u8>,
    /// Prepared activations (`PreparedKernel::prep_a`), for batches.
    prep: Vec<u8>,
}

struct OutPtrs<'a>(&'a [*mut f32]);
// SAFETY: tasks write disjoint elements.
unsafe impl Sync for OutPtrs<'_> {}
impl OutPtrs<'_> {
    // A method, so that closures capture the whole (Sync) wrapper rather than its field.
    fn get(&self, i: usize) -> *mut f32 {
        self.0[i]
    }
}

/// `out[t * w.rows + r] = Σ_k x[t * w.cols + k] · W[r][k]` for `t < n_tokens`.
///
/// Each output element is computed by the same sequence of operations whatever `n_tokens`
/// is and whichever tile it falls in, so a token's result does not depend on its batch.
pub fn matmul(
    pool: &ThreadPool,
    w: &Matrix<'_>,
    x: &[f32],
    n_tokens: usize,
    out: &mut [f32],
    scratch: &mut MatmulScratch,
) {
    matmul_with(backend(), pool, w, x, n_tokens, out, scratch)
}

/// Several products of the same activations, `outs[i] = x · ws[i]ᵀ`, with the activations
/// converted once and one pool dispatch for all of them (Q/K/V, gate/up). Each output element
/// is bit-identical to what `matmul` computes for it alone. Matrices of different types or
/// widths fall back to one `matmul` each.
pub fn matmul_multi(
    pool: &ThreadPool,
    ws: &[Matrix<'_>],
    x: &[f32],
    n_tokens: usize,
    outs: &mut [&mut [f32]],
    scratch: &mut MatmulScratch,
) {
    matmul_multi_with(backend(), pool, ws, x, n_tokens, outs, scratch)
}

pub(crate) fn matmul_multi_with(
    be: &Backend,
    pool: &ThreadPool,
    ws: &[Matrix<'_>],
    x: &[f32],
    n_tokens: usize,
    outs: &mut [&mut [f32]],
    scratch: &mut MatmulScratch,
) {
    assert_eq!(ws.len(), outs.len(), "one output per matrix");
    if ws.is_empty() {
        return;
    }
    let (ty, cols) = (ws[0].ty, ws[0].cols);
    if ws.len() > MAX_MULTI || ws.iter().any(|w| w.ty != ty || w.cols != cols) {
        for (w, o) in ws.iter().zip(outs.iter_mut()) {
            matmul_with(be, pool, w, x, n_tokens, o, scratch);
        }
        return;
    }
    assert_eq!(x.len(), n_tokens * cols, "activation shape");
    for (w, o) in ws.iter().zip(outs.iter()) {
        assert_eq!(o.len(), n_tokens * w.rows, "output shape");
    }
    if n_tokens == 0 {
        return;
    }
    let arb = quantize_acts(be, pool, ty, cols, x, n_tokens, scratch);
    let mut ptrs = [std::ptr::null_mut::<f32>(); MAX_MULTI];
    for (p, o) in ptrs.iter_mut().zip(outs.iter_mut()) {
        *p = o.as_mut_ptr();
    }
    matmul_quantized(
        be,
        pool,
        ws,
        &ptrs[..ws.len()],
        &scratch.act[..arb * n_tokens],
        n_tokens,
        &mut scratch.prep,
    );
}

/// Most matrices one `matmul_multi` call fuses.
const MAX_MULTI: usize = 4;

/// Convert `n_tokens` rows of activations into `scratch.act`; returns the bytes per row.
fn quantize_acts(
    be: &Backend,
    pool: &ThreadPool,
    ty: GgmlType,
    cols: usize,
    x: &[f32],
    n_tokens: usize,
    scratch: &mut MatmulScratch,
) -> usize {
    let at = ty.vec_dot_type();
    let arb = at
        .row_bytes(cols)
        .expect("weight and activation block sizes agree");
    scratch.act.resize(arb * n_tokens, 0);
    pool.for_each_row(&mut scratch.act[..arb * n_tokens], arb, &|t, ar| {
        (be.quant)(at, &x[t * cols..(t + 1) * cols], ar)
    });
    arb
}

pub(crate) fn matmul_with(
    be: &Backend,
    pool: &ThreadPool,
    w: &Matrix<'_>,
    x: &[f32],
    n_tokens: usize,
    out: &mut [f32],
    scratch: &mut MatmulScratch,
) {
    assert_eq!(x.len(), n_tokens * w.cols, "activation shape");
    assert_eq!(out.len(), n_tokens * w.rows, "output shape");
    if n_tokens == 0 || w.rows == 0 {
        return;
    }
    let arb = quantize_acts(be, pool, w.ty, w.cols, x, n_tokens, scratch);
    matmul_quantized(
        be,
        pool,
        std::slice::from_ref(w),
        &[out.as_mut_ptr()],
        &scratch.act[..arb * n_tokens],
        n_tokens,
        &mut scratch.prep,
    );
}

/// Tokens per task (a multiple of every kernel's largest token tile).
const TOK_CHUNK: usize = 64;
/// Tokens per task for the prepared F16/BF16 kernel: its weight rows are widened to f32 once
/// per task (2 bytes per element read, 4 written: `prep_h16` was 8% of an F16 prefill profile
/// at 64), and 128 tokens of f32 activations (768 KB at 1536 columns) still stay in L2.
const TOK_CHUNK_H16: usize = 128;
/// Most weight rows per task of several tokens, so that a task's rows stay in L1/L2 across
/// its token tiles.
const MAX_ROW_CHUNK: usize = 128;

/// Batches of at least this many tokens use the backend's prepared-operand kernel, if any
/// (below it, preparing a weight row costs more than it saves). Either path gives the same bits.
const PREP_MIN_TOKENS: usize = 8;

/// Alignment of prepared rows: whole cache lines, so that a kernel's 64-byte loads of a prepared
/// block never straddle two lines.
const PREP_ALIGN: usize = 64;

/// The first `len` bytes of `buf` from its first `PREP_ALIGN`-aligned byte on (grown as needed,
/// never shrunk: a layer's products alternate between 576- and 1536-wide rows, and regrowing
/// would zero megabytes that the preparation overwrites anyway).
fn aligned(buf: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if buf.len() < len + PREP_ALIGN {
        buf.resize(len + PREP_ALIGN, 0);
    }
    let off = buf.as_ptr().align_offset(PREP_ALIGN).min(PREP_ALIGN);
    &mut buf[off..off + len]
}

thread_local! {
    /// Prepared weight rows of the current task (one row group at a time).
    static PREP_W: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The products with activations already converted to the matrices' `vec_dot_type`; `outs[i]`
/// points at `n_tokens × ws[i].rows` writable floats. All matrices share type and width.
fn matmul_quantized(
    be: &Backend,
    pool: &ThreadPool,
    ws: &[Matrix<'_>],
    outs: &[*mut f32],
    act: &[u8],
    n_tokens: usize,
    prep: &mut Vec<u8>,
) {
    let ty = ws[0].ty;
    let k = (be.tile)(ty);
    // Matrices that all have a packed copy run the x16 kernel (faster than the prepared tiles
    // at every batch size: the packing is their preparation, done once); others, in batches,
    // the prepared-operand kernel if the backend has one; else the plain tiles.
    // (A packed copy fixes the order in which its outputs are summed: all must agree.)
    let order = ws[0].packed_for(be).map(|p| p.order);
    let x16 = order.and_then(|o| (be.x16)(ty, o));
    let path = match (x16, (be.prepared)(ty)) {
        (Some(f), _)
            if ws
                .iter()
                .all(|w| w.packed_for(be).map(|p| p.order) == order) =>
        {
            Path::X16(f)
        }
        (_, Some(pk)) if n_tokens >= PREP_MIN_TOKENS => Path::Prepared(pk),
        _ => Path::Tiles,
    };
    let arb = act.len() / n_tokens;
    let cols = ws[0].cols;
    // Bytes of a prepared activation row (64-byte aligned, see `aligned`) and rows per tile.
    let (pab, max_r) = match path {
        Path::X16(_) => (crate::packed::act_bytes(ty, cols), GROUP),
        Path::Prepared(pk) => ((pk.a_bytes)(cols), pk.max_r),
        Path::Tiles => (0, k.max_r),
    };
    let pab = pab.next_multiple_of(PREP_ALIGN);
    // Prepared activations, once for the whole batch.
    let prep = aligned(prep, pab * n_tokens);
    if pab > 0 {
        pool.for_each_row(prep, pab, &|t, dst| {
            let src = &act[t * arb..(t + 1) * arb];
            match path {
                Path::X16(_) => crate::packed::prep_act(ty, cols, src, dst),
                Path::Prepared(pk) => (pk.prep_a)(cols, src, dst),
                Path::Tiles => {}
            }
        });
    }
    let prep = &*prep;
    // Decode-sized batches over x16-packed weights: one contiguous range per thread, with
    // stealing.
    if let Path::X16(f) = path {
        if n_tokens <= DECODE_MAX_TOKENS {
            let outp = OutPtrs(outs);
            return x16_ranges(
                f,
                be,
                pool,
                ws,
                &outp,
                &prep[..n_tokens * pab],
                pab,
                n_tokens,
            );
        }
    }
    let tok_chunk = match (path, ty) {
        (Path::Prepared(_), GgmlType::F16 | GgmlType::BF16 | GgmlType::F32) => TOK_CHUNK_H16,
        _ => TOK_CHUNK,
    };
    let tc = n_tokens.min(tok_chunk);
    let n_tc = n_tokens.div_ceil(tc);
    let total_rows: usize = ws.iter().map(|w| w.rows).sum();
    if total_rows == 0 {
        return;
    }
    // Aim at 8+ tasks per thread so that dynamic scheduling evens out the threads; a single
    // token's product (decode, memory-bound; here only on the unpacked paths: F16/BF16, AVX2)
    // takes 2, of any size (`MAX_ROW_CHUNK` is for token tiles): each claim costs a contended
    // atomic, and each task start is a new stream for the prefetchers (decode +3% over 8 per
    // thread, and +1-3% more without the row cap, measured on the x16 path before
    // `x16_ranges` with `decode_bench`, settings alternated step by step).
    let single = n_tokens == 1;
    let want_tasks = if single { 2 } else { 8 } * pool.n_threads();
    let most_rows = if single { usize::MAX } else { MAX_ROW_CHUNK };
    let per = (total_rows * n_tc).div_ceil(want_tasks).clamp(1, most_rows);
    let rc = per.div_ceil(max_r) * max_r;
    // Task ranges per matrix: matrix i owns tasks first[i]..first[i + 1].
    let mut first = [0usize; MAX_MULTI + 1];
    let mut n_rcs = [0usize; MAX_MULTI];
    for (i, w) in ws.iter().enumerate() {
        n_rcs[i] = w.rows.div_ceil(rc);
        first[i + 1] = first[i] + n_rcs[i] * n_tc;
    }
    let n_tasks = first[ws.len()];
    let outp = OutPtrs(outs);
    let outp = &outp;
    pool.run(n_tasks, &|task| {
        let mi = first[1..=ws.len()].partition_point(|&f| f <= task);
        let w = &ws[mi];
        let (rows, wrb, n_rc) = (w.rows, w.row_bytes(), n_rcs[mi]);
        let local = task - first[mi];
        let (ri, ti) = (local % n_rc, local / n_rc);
        let (r0, r1) = (ri * rc, ((ri + 1) * rc).min(rows));
        let (t0, t1) = (ti * tc, ((ti + 1) * tc).min(n_tokens));
        let out = outp.get(mi);
        let mut tile = [0f32; 64];
        let mut put = |r: usize, nr: usize, t: usize, nt: usize, tile: &[f32]| {
            // SAFETY: (t + j, r..r + nr) for j < nt is in bounds of output `mi` (`rows` floats
            // per token) and written by this task only.
            unsafe { put_tile(tile, nr, nt, out.add(t * rows + r), rows) }
        };
        match path {
            Path::X16(f) => {
                let p = w.packed_for(be).expect("checked above");
                return x16_task(f, p, prep, pab, (r0, r1), (t0, t1), out);
            }
            Path::Prepared(pk) => {
                return prepared_task(&pk, w, prep, pab, (r0, r1), (t0, t1), &mut tile, &mut put);
            }
            Path::Tiles => {}
        }
        let mut t = t0;
        while t < t1 {
            let nt = k.max_t.min(t1 - t);
            let a = &act[t * arb..(t + nt) * arb];
            let mut r = r0;
            while r < r1 {
                let nr = k.max_r.min(r1 - r);
                let wt = &w.data[r * wrb..(r + nr) * wrb];
                (k.f)(w.cols, nr, nt, wt, wrb, a, arb, &mut tile[..nr * nt]);
                put(r, nr, t, nt, &tile[..nr * nt]);
                r += nr;
            }
            t += nt;
        }
    });
}

/// Store a tile of results (`tile[i * nt + j]` is row `i`, token `j`) at `out`: token `j`'s
/// `nr` rows at `out + j * ld`. Element by element this was 5-6% of an F16 prefill profile
/// (a scattered scalar store per result, with its index arithmetic); on AVX-512 each token's
/// rows are one permute and one masked store.
///
/// # Safety
/// `tile` holds `nr * nt` floats; `out + j * ld` points at `nr` writable floats for `j < nt`.
unsafe fn put_tile(tile: &[f32], nr: usize, nt: usize, out: *mut f32, ld: usize) {
    #[cfg(target_arch = "x86_64")]
    if nr <= 16 && nr * nt <= 32 && crate::gemm::has_avx512() {
        // SAFETY: AVX-512F was detected; the bounds are the caller's.
        return unsafe { put_tile_avx512(tile, nr, nt, out, ld) };
    }
    let tile = &tile[..nr * nt];
    for j in 0..nt {
        // SAFETY: the caller guarantees `nr` floats at `out + j * ld`.
        let dst = unsafe { std::slice::from_raw_parts_mut(out.add(j * ld), nr) };
        for (i, d) in dst.iter_mut().enumerate() {
            *d = tile[i * nt + j];
        }
    }
}

/// # Safety
/// AVX-512F; `nr <= 16`, `nr * nt <= 32`, and the bounds of `put_tile`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn put_tile_avx512(tile: &[f32], nr: usize, nt: usize, out: *mut f32, ld: usize) {
    use std::arch::x86_64::*;
    let n = nr * nt;
    let part =
        |k: u32| -> __mmask16 { ((1u32 << (n as u32).saturating_sub(16 * k).min(16)) - 1) as u16 };
    // SAFETY: the masks cover the tile's `n` floats only.
    let (lo, hi) = unsafe {
        (
            _mm512_maskz_loadu_ps(part(0), tile.as_ptr()),
            _mm512_maskz_loadu_ps(part(1), tile.as_ptr().wrapping_add(16)),
        )
    };
    let rows = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(nt as i32),
    );
    let m: __mmask16 = ((1u32 << nr) - 1) as u16;
    for j in 0..nt {
        // Lane i < nr: element i * nt + j < 32 of lo:hi.
        let v = _mm512_permutex2var_ps(lo, _mm512_add_epi32(rows, _mm512_set1_epi32(j as i32)), hi);
        // SAFETY: `nr` floats at `out + j * ld` (the caller's bound).
        unsafe { _mm512_mask_storeu_ps(out.add(j * ld), m, v) };
    }
}

/// Which kernels one `matmul_quantized` call runs.
#[derive(Clone, Copy)]
enum Path {
    /// Over the matrices' packed copies.
    X16(X16Fn),
    /// Over operands prepared for the batch (weights per row group in each task).
    Prepared(PreparedKernel),
    /// The backend's plain tiles.
    Tiles,
}

/// The products of a decode-sized batch over x16-packed weights: the matrices' row groups,
/// concatenated, are split into one contiguous range per thread (`ThreadPool::run_owned`),
/// which a thread walks from its start, one group per claim (on its own cache line), and when
/// done steals from the ends of the others'. Decode is bound by memory: a thread idle at the end of a product is half
/// the machine's bandwidth unused (with two tasks per thread, claimed in turn, the threads sat
/// idle ~15% of a decode step), and one unbroken range per thread is one stream for the
/// prefetchers, which the kernel's own prefetch follows to the end of what the thread owned at
/// its claim. Which thread computes a group changes no output bit.
fn x16_ranges(
    f: X16Fn,
    be: &Backend,
    pool: &ThreadPool,
    ws: &[Matrix<'_>],
    outs: &OutPtrs<'_>,
    a: &[u8],
    pab: usize,
    n_tokens: usize,
) {
    // Matrix i owns the concatenated groups first[i]..first[i + 1].
    let mut first = [0usize; MAX_MULTI + 1];
    for (i, w) in ws.iter().enumerate() {
        first[i + 1] = first[i] + w.rows.div_ceil(GROUP);
    }
    let total = first[ws.len()];
    // Group `g`, prefetching no further than the concatenated group `end` (nor past its matrix).
    let run = |g: usize, end: usize| {
        let mi = first[1..=ws.len()].partition_point(|&f| f <= g);
        let w = &ws[mi];
        let p = w.packed_for(be).expect("x16 path: every matrix is packed");
        let (lg, lend) = (g - first[mi], end.min(first[mi + 1]) - first[mi]);
        let r = lg * GROUP;
        // SAFETY: rows `r..r + nr` of every token of output `mi` (`p.rows` floats per token)
        // are in bounds, and group `g` is claimed by one thread only.
        unsafe {
            f(
                p.cols,
                n_tokens,
                p.groups(lg, lend),
                a,
                pab,
                outs.get(mi).add(r),
                p.rows,
                GROUP.min(w.rows - r),
            )
        };
    };
    pool.run_owned(total, &run);
}

/// One task of `matmul_quantized` over x16-packed weights: rows `r0..r1` (whole groups from
/// `r0`, a multiple of `GROUP`) against tokens `t0..t1`.
fn x16_task(
    f: X16Fn,
    p: &PackedMatrix,
    prep: &[u8],
    pab: usize,
    (r0, r1): (usize, usize),
    (t0, t1): (usize, usize),
    out: *mut f32,
) {
    debug_assert_eq!(r0 % GROUP, 0);
    let a = &prep[t0 * pab..t1 * pab];
    for r in (r0..r1).step_by(GROUP) {
        let nr = GROUP.min(r1 - r);
        // SAFETY: rows `r..r + nr` of tokens `t0..t1` of this output (`p.rows` floats per
        // token) are in bounds and written by this task only.
        unsafe {
            f(
                p.cols,
                t1 - t0,
                p.groups(r / GROUP, r1.div_ceil(GROUP)),
                a,
                pab,
                out.add(t0 * p.rows + r),
                p.rows,
                nr,
            )
        };
    }
}

/// One task of `matmul_quantized` with prepared operands: each group of `max_r` weight rows is
/// prepared once (as one group, see `PreparedKernel`), then run against every token tile of
/// the task.
fn prepared_task(
    pk: &PreparedKernel,
    w: &Matrix<'_>,
    prep: &[u8],
    pab: usize,
    (r0, r1): (usize, usize),
    (t0, t1): (usize, usize),
    tile: &mut [f32; 64],
    put: &mut impl FnMut(usize, usize, usize, usize, &[f32]),
) {
    let (wrb, pwb) = (
        w.row_bytes(),
        (pk.w_bytes)(w.cols).next_multiple_of(PREP_ALIGN),
    );
    PREP_W.with_borrow_mut(|pw| {
        let pw = aligned(pw, pwb * pk.max_r.next_multiple_of(2));
        let mut r = r0;
        while r < r1 {
            let nr = pk.max_r.min(r1 - r);
            let src = &w.data[r * wrb..(r + nr) * wrb];
            (pk.prep_w)(w.cols, nr, src, wrb, pw, pwb);
            let mut t = t0;
            while t < t1 {
                let nt = pk.max_t.min(t1 - t);
                let a = &prep[t * pab..(t + nt) * pab];
                (pk.f)(
                    w.cols,
                    nr,
                    nt,
                    &pw[..nr.next_multiple_of(2) * pwb],
                    pwb,
                    a,
                    pab,
                    &mut tile[..nr * nt],
                );
                put(r, nr, t, nt, &tile[..nr * nt]);
                t += nt;
            }
            r += nr;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{dequantize_row, quantize_row_act, Order};
    use crate::testutil::lcg;

    fn weights(ty: GgmlType, rows: usize, cols: usize, seed: &mut u64) -> Vec<u8> {
        let rb = ty.row_bytes(cols).unwrap();
        let mut data = vec![0u8; rb * rows];
        // Build weights by quantizing random floats with the activation quantizer where the
        // layout allows, otherwise by random bytes with sane scales.
        for r in 0..rows {
            let row = &mut data[r * rb..(r + 1) * rb];
            for b in row.iter_mut() {
                *b = (lcg(seed) * 255.0) as i32 as u8;
            }
            let bs = ty.type_size();
            if ty != GgmlType::F32 && ty != GgmlType::F16 && ty != GgmlType::BF16 {
                for blk in row.chunks_exact_mut(bs) {
                    blk[0..2].copy_from_slice(&half::f16::from_f32(0.01).to_bits().to_le_bytes());
                    if ty == GgmlType::Q4_1 {
                        blk[2..4]
                            .copy_from_slice(&half::f16::from_f32(-0.05).to_bits().to_le_bytes());
                    }
                }
            } else {
                let vals: Vec<f32> = (0..cols).map(|_| lcg(seed)).collect();
                quantize_row_act(ty, &vals, row);
            }
        }
        data
    }

    #[test]
    fn matmul_matches_dequantized_reference_and_is_batch_invariant() {
        let pool = ThreadPool::new(2);
        let mut seed = 7u64;
        for ty in [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::BF16,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q8_0,
        ] {
            let (rows, cols) = (37, 96);
            let data = weights(ty, rows, cols, &mut seed);
            let w = Matrix::new(ty, rows, cols, &data).unwrap();
            // 5 tokens run the plain tiles, 21 the prepared ones (ragged row and token tiles).
            for n in [5, 21] {
                let x: Vec<f32> = (0..n * cols).map(|_| lcg(&mut seed)).collect();
                let mut out = vec![0f32; n * rows];
                let mut s = MatmulScratch::default();
                matmul(&pool, &w, &x, n, &mut out, &mut s);
                let mut row = vec![0f32; cols];
                for r in 0..rows {
                    dequantize_row(ty, w.row(r), &mut row);
                    for t in 0..n {
                        let want: f32 = row
                            .iter()
                            .zip(&x[t * cols..(t + 1) * cols])
                            .map(|(a, b)| a * b)
                            .sum();
                        let got = out[t * rows + r];
                        assert!(
                            (want - got).abs() < 0.02 * (1.0 + want.abs()),
                            "{ty:?} {r} {t}: {want} vs {got}"
                        );
                    }
                }
                // Each token alone gives bit-identical results.
                for t in 0..n {
                    let mut one = vec![0f32; rows];
                    matmul(&pool, &w, &x[t * cols..(t + 1) * cols], 1, &mut one, &mut s);
                    assert_eq!(
                        one,
                        out[t * rows..(t + 1) * rows].to_vec(),
                        "{ty:?} token {t} of {n}"
                    );
                }
            }
        }
    }

    /// Random matrices of type `ty`, `cols` wide, one per row count in `shapes`.
    fn random_matrices(
        ty: GgmlType,
        cols: usize,
        shapes: &[usize],
        seed: &mut u64,
    ) -> Vec<Vec<u8>> {
        shapes.iter().map(|&r| weights(ty, r, cols, seed)).collect()
    }

    /// One `matmul_multi_with` over `fused` against one `matmul_with` per matrix of `alone`
    /// (the same matrices, with or without packed copies), bit for bit, at each batch size.
    fn check_multi(
        be: &Backend,
        pool: &ThreadPool,
        fused: &[Matrix<'_>],
        alone: &[Matrix<'_>],
        ns: &[usize],
        seed: &mut u64,
    ) {
        let cols = fused[0].cols;
        for &n in ns {
            let x: Vec<f32> = (0..n * cols).map(|_| lcg(seed) * 4.0).collect();
            let mut s = MatmulScratch::default();
            let mut outs: Vec<Vec<f32>> =
                fused.iter().map(|m| vec![f32::NAN; n * m.rows]).collect();
            {
                let mut o: Vec<&mut [f32]> = outs.iter_mut().map(|v| v.as_mut_slice()).collect();
                matmul_multi_with(be, pool, fused, &x, n, &mut o, &mut s);
            }
            for (m, f) in alone.iter().zip(&outs) {
                let mut one = vec![f32::NAN; n * m.rows];
                matmul_with(be, pool, m, &x, n, &mut one, &mut s);
                assert_eq!(
                    one.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    f.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{} {:?} rows {} n {n} threads {}",
                    be.name,
                    m.ty,
                    m.rows,
                    pool.n_threads()
                );
            }
        }
    }

    #[test]
    fn matmul_multi_is_bit_identical_to_separate_matmuls() {
        let pool = ThreadPool::new(2);
        let mut seed = 19u64;
        for be in crate::dot::available_backends() {
            for ty in [
                GgmlType::Q4_0,
                GgmlType::Q4_1,
                GgmlType::Q8_0,
                GgmlType::F16,
            ] {
                let shapes = [37usize, 5, 5, 130];
                let data = random_matrices(ty, 64, &shapes, &mut seed);
                let ms: Vec<Matrix> = shapes
                    .iter()
                    .zip(&data)
                    .map(|(&r, d)| Matrix::new(ty, r, 64, d).unwrap())
                    .collect();
                check_multi(be, &pool, &ms, &ms, &[1, 3, 70], &mut seed);
            }
        }
    }

    /// `quant::vec_dot_ref_in(order, ..)` of every (token, row) of `w` and `x` (`n` rows of
    /// `w.cols`), the activations converted by the scalar quantizer; token-major like `matmul`.
    fn reference(order: Order, w: &Matrix<'_>, x: &[f32], n: usize) -> Vec<f32> {
        let at = w.ty.vec_dot_type();
        let arb = at.row_bytes(w.cols).unwrap();
        let mut a = vec![0u8; n * arb];
        for (src, dst) in x.chunks_exact(w.cols).zip(a.chunks_exact_mut(arb)) {
            quantize_row_act(at, src, dst);
        }
        let wrb = w.row_bytes();
        let mut out = Vec::with_capacity(n * w.rows);
        for t in 0..n {
            for r in 0..w.rows {
                let (wr, ar) = (&w.data[r * wrb..][..wrb], &a[t * arb..][..arb]);
                out.push(crate::quant::vec_dot_ref_in(order, w.ty, w.cols, wr, ar));
            }
        }
        out
    }

    #[test]
    fn packed_matrices_give_the_same_bits_and_unpack_exactly() {
        let pool = ThreadPool::new(2);
        let mut seed = 23u64;
        let mut packed_any = false;
        for be in crate::dot::available_backends() {
            for ty in [
                GgmlType::Q4_0,
                GgmlType::Q4_1,
                GgmlType::Q5_0,
                GgmlType::Q5_1,
                GgmlType::Q8_0,
                GgmlType::Q4K,
                GgmlType::Q5K,
                GgmlType::Q6K,
            ] {
                let k = matches!(ty, GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K);
                for (rows, cols) in [(1, 32), (15, 64), (16, 96), (17, 32), (37, 160), (130, 64)] {
                    // K-quants: super-blocks of 256.
                    let cols = if k { cols * 8 } else { cols };
                    let mut data = weights(ty, rows, cols, &mut seed);
                    // A scale (and min) of its own per block, so that a misplaced one shows.
                    let offs: &[usize] = match ty {
                        GgmlType::Q6K => &[208],
                        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
                        _ => &[0],
                    };
                    for blk in data.chunks_exact_mut(ty.type_size()) {
                        for (n, &at) in offs.iter().enumerate() {
                            let v = if n == 0 {
                                0.001 + lcg(&mut seed).abs() * 0.02
                            } else {
                                lcg(&mut seed) * 0.1
                            };
                            let h = half::f16::from_f32(v).to_bits().to_le_bytes();
                            blk[at..at + 2].copy_from_slice(&h);
                        }
                    }
                    let w = Matrix::new(ty, rows, cols, &data).unwrap();
                    for order in [Order::LlamaCpp, Order::Block] {
                        let Some(p) = PackedMatrix::new_with(be, &w, order) else {
                            assert!((be.x16)(ty, order).is_none(), "{} packs {ty:?}", be.name);
                            continue;
                        };
                        packed_any = true;
                        if !k {
                            let mut back = vec![0u8; data.len()];
                            p.unpack_rows(0, rows, &mut back);
                            assert!(back == data, "{} {ty:?} {rows}x{cols}: unpack", be.name);
                        }
                        let wp = w.with_packed(Some(&p));
                        let mut s = MatmulScratch::default();
                        // 17 and 70: batches past `DECODE_MAX_TOKENS` (4- and 5-bit groups widened).
                        for n in [1, 2, 3, 4, 5, 6, 7, 8, 9, 17, 70] {
                            let x: Vec<f32> = (0..n * cols).map(|_| lcg(&mut seed) * 4.0).collect();
                            let mut b = vec![f32::NAN; n * rows];
                            matmul_with(be, &pool, &wp, &x, n, &mut b, &mut s);
                            // The tiles sum in llama.cpp's order; the other order has only
                            // the scalar reference.
                            let a = match order {
                                Order::LlamaCpp => {
                                    let mut a = vec![f32::NAN; n * rows];
                                    matmul_with(be, &pool, &w, &x, n, &mut a, &mut s);
                                    a
                                }
                                Order::Block => reference(order, &w, &x, n),
                            };
                            assert!(a.iter().all(|v| v.is_finite()), "{ty:?}: finite outputs");
                            let bits =
                                |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                            assert_eq!(
                                bits(&a),
                                bits(&b),
                                "{} {ty:?} {order:?} {rows}x{cols} n {n}",
                                be.name
                            );
                        }
                    }
                }
            }
        }
        if crate::dot::backend().name == "avx512vnni" {
            assert!(packed_any, "the AVX-512 backend packs Q4_0/Q4_1/Q8_0");
        }
    }

    #[test]
    fn packed_products_of_several_matrices_on_any_thread_count_match_the_tiles() {
        // Decode-sized batches run `x16_ranges`: the groups of all matrices in one range per
        // thread, stolen from the ends; the outputs must be the tiles' bits however the
        // ranges fall (matrix boundaries inside a range, ragged groups, more threads than
        // groups) and the prefill split must agree with it.
        let mut seed = 31u64;
        for threads in [1, 2, 3, 5] {
            let pool = ThreadPool::new(threads);
            for be in crate::dot::available_backends() {
                for ty in [GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q4K] {
                    let cols = if ty == GgmlType::Q4K { 256 } else { 64 };
                    let shapes = [37usize, 5, 16, 130];
                    let data = random_matrices(ty, cols, &shapes, &mut seed);
                    let ms: Vec<Matrix> = shapes
                        .iter()
                        .zip(&data)
                        .map(|(&r, d)| Matrix::new(ty, r, cols, d).unwrap())
                        .collect();
                    let packed: Option<Vec<PackedMatrix>> = ms
                        .iter()
                        .map(|m| PackedMatrix::new_with(be, m, Order::LlamaCpp))
                        .collect();
                    let Some(packed) = packed else { continue };
                    let mp: Vec<Matrix> = ms
                        .iter()
                        .zip(&packed)
                        .map(|(m, p)| m.with_packed(Some(p)))
                        .collect();
                    check_multi(be, &pool, &mp, &ms, &[1, 3, 16, 17], &mut seed);
                }
            }
        }
    }

    #[test]
    fn matrix_rejects_bad_shapes() {
        assert!(Matrix::new(GgmlType::Q4_0, 2, 33, &[0u8; 36]).is_err());
        assert!(Matrix::new(GgmlType::Q4_0, 2, 32, &[0u8; 35]).is_err());
        assert!(Matrix::new(GgmlType::Q4_0, 2, 32, &[0u8; 36]).is_ok());
    }
}
