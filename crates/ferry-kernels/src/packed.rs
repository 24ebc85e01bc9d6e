//! Weight matrices repacked once, at load time, into the layout the small-batch kernels load
//! directly: 16 rows interleaved per block ("x16", the idea of llama.cpp's `repack.cpp`
//! `block_q4_0x8` and friends, laid out for one 512-bit vector per 16 rows).
//!
//! A decode step multiplies every weight once by one activation row. Read in GGML's own layout,
//! each block of a row has to be unpacked in registers (nibbles moved into place, scales
//! gathered and widened) before its one use, which made the row-pair kernels compute-bound at a
//! third of the memory bandwidth. In the x16 layout the same work is done once, here: for a
//! group of 16 rows and one 32-element block, vector `k` holds the `k`-th group of 4 quant bytes
//! of each of the 16 rows (row `r` in 32-bit lane `r`), so `vpdpbusd` with the activation's
//! `k`-th 4 bytes broadcast gives lane `k` of GGML's 8-lane sum for all 16 rows at once, and
//! the 16 rows' scales are one 32-byte vector of f16.
//!
//! The kernels sum each output in the `Order` the matrix was packed for. `Order::LlamaCpp`
//! performs, for every (row, token), exactly the float operations of the row-pair tiles
//! (GGML's x86 `vec_dot` order: per block `acc[k] = fma(d_w·d_a, f32(Σ₄), acc[k])`, then
//! `hsum_float_8`), so results are bit-identical to them and to llama.cpp (tested in
//! `tests.rs`). `Order::Block` (opt-in) adds a block's eight `vpdpbusd` lane groups as
//! integers and takes one float step per block, as `quant::vec_dot_ref_in` does; the
//! K-quants have one order (llama.cpp's tiled one) in both.
//!
//! Layout of one group (16 rows; rows past the matrix are zero, with zero scales), `nb` blocks:
//! all blocks' quant vectors first (`QB` bytes per block, 64 per vector), then all blocks' `d`
//! (32 bytes: 16 × f16), then, for Q4_1, all blocks' `m`. Q4_0/Q4_1 vectors hold GGML's packed
//! bytes as they are (low nibbles are elements `4k..4k+3`, high nibbles `16+4k..`); Q8_0 bytes
//! are stored plus 128 (as `u8`), the operand `vpdpbusd` wants.
//!
//! The x16 kernels serve every batch size of a packed matrix (up to four tokens per pass over
//! a block in registers: two for the block types in llama.cpp's order, whose eight lane
//! accumulators per token fill the registers; faster than the prepared row-pair tiles from 1 to
//! 512 tokens), so a packed
//! model reads only its packed copy and the file's pages can leave the resident set.

use crate::dot::{backend, Backend};
use crate::hugemem::Lines;
use crate::matmul::Matrix;
use crate::quant::{GgmlType, Order};

/// Rows per group.
pub const GROUP: usize = 16;

/// Batches of at most this many tokens are decode-sized: their products over packed weights are
/// bound by memory, not arithmetic, so the kernels prefetch their weights ahead
/// (`x86::packed16`) and `matmul` splits the rows into one range per thread (`x16_ranges`,
/// `ThreadPool::run_owned`).
pub(crate) const DECODE_MAX_TOKENS: usize = 16;

/// One cache line, the unit of the packed buffer (so every vector load is aligned).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct Line([u8; 64]);

impl Line {
    pub(crate) const ZERO: Self = Self([0; 64]);
}

/// A weight matrix in the x16 layout of the backend that packed it.
pub struct PackedMatrix {
    pub(crate) backend: &'static str,
    pub(crate) ty: GgmlType,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    /// How the kernels sum each output.
    pub(crate) order: Order,
    data: Lines,
}

/// Where things are in a group of a packed type.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geometry {
    /// Offset of the quants in a GGML block.
    qoff: usize,
    /// Quant bytes per block and row (16 for 4-bit, 32 for 8-bit).
    qbytes: usize,
    /// Whether blocks carry `m` (Q4_1).
    mins: bool,
    /// Bytes added to each stored quant byte (128 for Q8_0).
    xor: u8,
    /// Offset of the 32 high bits (`qh`) in a Q5_0/Q5_1 block.
    qh: Option<usize>,
    /// Blocks per row.
    pub nb: usize,
}

impl Geometry {
    pub(crate) fn of(ty: GgmlType, cols: usize) -> Option<Self> {
        let (qoff, qbytes, mins, xor, qh) = match ty {
            GgmlType::Q4_0 => (2, 16, false, 0, None),
            GgmlType::Q4_1 => (4, 16, true, 0, None),
            GgmlType::Q5_0 => (6, 16, false, 0, Some(2)),
            GgmlType::Q5_1 => (8, 16, true, 0, Some(4)),
            GgmlType::Q8_0 => (2, 32, false, 0x80, None),
            _ => return None,
        };
        cols.is_multiple_of(32).then_some(Self {
            qoff,
            qbytes,
            mins,
            xor,
            qh,
            nb: cols / 32,
        })
    }
    /// The layout a 4- or 5-bit group is widened into for a long batch
    /// (`x86::packed16::widen`): each block's eight code vectors as whole bytes (as Q8_0
    /// stores them, but without its offset), then the group's `d` and (`mins`) `m` as stored.
    pub(crate) fn bytes(mins: bool, nb: usize) -> Self {
        Self {
            qoff: 0,
            qbytes: 32,
            mins,
            xor: 0,
            qh: None,
            nb,
        }
    }
    /// Whether blocks carry `m` (Q4_1/Q5_1).
    pub(crate) fn mins(&self) -> bool {
        self.mins
    }
    /// Quant bytes of one block of a group (`GROUP` rows).
    pub(crate) fn qb(&self) -> usize {
        self.qbytes * GROUP
    }
    /// Where the high-bit vectors start (one per block: row `r`'s `qh` in lane `r`).
    pub(crate) fn qh_at(&self) -> usize {
        self.nb * self.qb()
    }
    pub(crate) fn d_at(&self) -> usize {
        self.qh_at() + if self.qh.is_some() { self.nb * 64 } else { 0 }
    }
    pub(crate) fn m_at(&self) -> usize {
        self.d_at() + self.nb * 32
    }
    /// Bytes of one group, whole cache lines.
    pub(crate) fn group_bytes(&self) -> usize {
        (self.m_at() + if self.mins { self.nb * 32 } else { 0 }).next_multiple_of(64)
    }
    /// Bytes of one GGML block.
    fn block(&self) -> usize {
        self.qoff + self.qbytes
    }
}

impl PackedMatrix {
    /// Repack `w` for this process's kernels, to be summed in `order`; `None` where they have
    /// no x16 kernel for its type.
    pub fn new(w: &Matrix<'_>, order: Order) -> Option<Self> {
        Self::new_with(backend(), w, order)
    }

    pub(crate) fn new_with(be: &Backend, w: &Matrix<'_>, order: Order) -> Option<Self> {
        (be.x16)(w.ty, order)?;
        let data = match w.ty {
            GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => pack_k(w)?,
            _ => pack_blocks(w)?,
        };
        Some(Self {
            backend: be.name,
            ty: w.ty,
            rows: w.rows,
            cols: w.cols,
            order,
            data,
        })
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() * 64
    }

    pub(crate) fn geometry(&self) -> Geometry {
        Geometry::of(self.ty, self.cols).expect("checked when packed")
    }

    /// Bytes of one group.
    fn group_bytes(&self) -> usize {
        match self.ty {
            GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => KGeometry::of(self.ty, self.cols)
                .expect("checked when packed")
                .group_bytes(),
            _ => self.geometry().group_bytes(),
        }
    }

    /// Whether `w` is the matrix this was packed from (type and shape).
    pub(crate) fn fits(&self, w: &Matrix<'_>) -> bool {
        (self.ty, self.rows, self.cols) == (w.ty, w.rows, w.cols)
    }

    /// The packed bytes of group `gi` (rows `16·gi..16·gi + 16`).
    #[cfg(test)]
    pub(crate) fn group(&self, gi: usize) -> &[u8] {
        self.groups(gi, gi + 1)
    }

    /// Groups `g0..g1`, contiguous: an `X16Fn` runs the first and prefetches the rest.
    pub(crate) fn groups(&self, g0: usize, g1: usize) -> &[u8] {
        let gb = self.group_bytes();
        &lines_bytes(&self.data)[g0 * gb..g1 * gb]
    }

    /// Rows `r0..r0 + nr` in GGML's layout, into `dst` (`nr` rows of `ty.row_bytes(cols)`): the
    /// exact inverse of the packing (tested).
    #[cfg(test)]
    pub(crate) fn unpack_rows(&self, r0: usize, nr: usize, dst: &mut [u8]) {
        let g = self.geometry();
        let rb = g.nb * g.block();
        assert!(r0 + nr <= self.rows && dst.len() >= nr * rb);
        for (i, row) in dst.chunks_exact_mut(rb).take(nr).enumerate() {
            let r = r0 + i;
            let src = self.group(r / GROUP);
            let r = r % GROUP;
            for (b, blk) in row.chunks_exact_mut(g.block()).enumerate() {
                blk[..2].copy_from_slice(&src[g.d_at() + b * 32 + r * 2..][..2]);
                if let Some(h) = g.qh {
                    blk[h..h + 4].copy_from_slice(&src[g.qh_at() + b * 64 + r * 4..][..4]);
                }
                if g.mins {
                    blk[2..4].copy_from_slice(&src[g.m_at() + b * 32 + r * 2..][..2]);
                }
                for (k, word) in blk[g.qoff..].chunks_exact_mut(4).enumerate() {
                    let at = b * g.qb() + k * 64 + r * 4;
                    for (o, &q) in word.iter_mut().zip(&src[at..at + 4]) {
                        *o = q ^ g.xor;
                    }
                }
            }
        }
    }
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedMatrix")
            .field("backend", &self.backend)
            .field("ty", &self.ty)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("order", &self.order)
            .field("bytes", &self.bytes())
            .finish()
    }
}

pub(crate) fn lines_bytes(l: &[Line]) -> &[u8] {
    // SAFETY: `Line` is 64 plain bytes with no padding.
    unsafe { std::slice::from_raw_parts(l.as_ptr() as *const u8, l.len() * 64) }
}

pub(crate) fn lines_bytes_mut(l: &mut [Line]) -> &mut [u8] {
    // SAFETY: as in `lines_bytes`; the borrow is unique.
    unsafe { std::slice::from_raw_parts_mut(l.as_mut_ptr() as *mut u8, l.len() * 64) }
}

/// The x16 layout of the 32-element block types (see the module's documentation).
fn pack_blocks(w: &Matrix<'_>) -> Option<Lines> {
    let g = Geometry::of(w.ty, w.cols)?;
    let groups = w.rows.div_ceil(GROUP);
    let lines = groups * g.group_bytes() / 64;
    let mut data = Lines::zeroed(lines);
    let rb = w.row_bytes();
    let buf = lines_bytes_mut(&mut data);
    for (gi, dst) in buf.chunks_exact_mut(g.group_bytes()).enumerate() {
        for r in 0..GROUP.min(w.rows - gi * GROUP) {
            let row = &w.data[(gi * GROUP + r) * rb..][..rb];
            for (b, blk) in row.chunks_exact(g.block()).enumerate() {
                for (k, word) in blk[g.qoff..].chunks_exact(4).enumerate() {
                    let at = b * g.qb() + k * 64 + r * 4;
                    let v = u32::from_le_bytes(word.try_into().expect("4 bytes"));
                    let x = u32::from_ne_bytes([g.xor; 4]);
                    dst[at..at + 4].copy_from_slice(&(v ^ x).to_le_bytes());
                }
                dst[g.d_at() + b * 32 + r * 2..][..2].copy_from_slice(&blk[..2]);
                if let Some(h) = g.qh {
                    dst[g.qh_at() + b * 64 + r * 4..][..4].copy_from_slice(&blk[h..h + 4]);
                }
                if g.mins {
                    dst[g.m_at() + b * 32 + r * 2..][..2].copy_from_slice(&blk[2..4]);
                }
            }
        }
    }
    Some(data)
}

/// The x16 layout of the K-quants, for llama.cpp's tiled K-quant order (`quant_k`). Per
/// super-block of 256 elements, the quant vectors, each holding 4 bytes of each of the 16 rows
/// at the same offset of GGML's block:
/// - Q4_K: 32 vectors, vector `8j + k` = bytes `32j + 4k..+4` of `qs`: low nibbles are
///   sub-block `2j` elements `4k..4k+3`, high nibbles sub-block `2j + 1`;
/// - Q5_K: 8 vectors of `qh` (vector `k` = bytes `4k..+4`), then `qs` as Q4_K's;
/// - Q6_K: 32 vectors of `ql` (vector `16n + j` = bytes `64n + 4j..+4`), then 16 of `qh`
///   (vector `8n + k` = bytes `32n + 4k..+4`), combined into 6-bit codes as GGML's dequantizer
///   does.
///
/// Then, after all super-blocks: the sub-block scales (16 rows per sub-block: Q4_K's 6-bit
/// scales unpacked to `u8`, Q6_K's `i8` as they are), Q4_K's mins (`u8`), `d` (16 × f16 per
/// super-block) and Q4_K's `dmin`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KGeometry {
    /// Super-blocks per row.
    pub nsb: usize,
    /// Q6_K (else Q4_K or Q5_K).
    pub q6: bool,
    /// Q5_K.
    pub q5: bool,
}

impl KGeometry {
    pub(crate) fn of(ty: GgmlType, cols: usize) -> Option<Self> {
        let (q5, q6) = match ty {
            GgmlType::Q4K => (false, false),
            GgmlType::Q5K => (true, false),
            GgmlType::Q6K => (false, true),
            _ => return None,
        };
        cols.is_multiple_of(256).then_some(Self {
            nsb: cols / 256,
            q5,
            q6,
        })
    }
    /// Quant bytes of one super-block of a group.
    pub(crate) fn qb(&self) -> usize {
        if self.q6 {
            48 * 64
        } else if self.q5 {
            40 * 64
        } else {
            32 * 64
        }
    }
    /// Sub-blocks per super-block.
    pub(crate) fn subs(&self) -> usize {
        if self.q6 {
            16
        } else {
            8
        }
    }
    pub(crate) fn sc_at(&self) -> usize {
        self.nsb * self.qb()
    }
    pub(crate) fn mn_at(&self) -> usize {
        self.sc_at() + self.nsb * self.subs() * 16
    }
    pub(crate) fn d_at(&self) -> usize {
        self.mn_at() + if self.q6 { 0 } else { self.nsb * 128 }
    }
    pub(crate) fn dmin_at(&self) -> usize {
        self.d_at() + self.nsb * 32
    }
    pub(crate) fn group_bytes(&self) -> usize {
        (self.dmin_at() + if self.q6 { 0 } else { self.nsb * 32 }).next_multiple_of(64)
    }
}

fn pack_k(w: &Matrix<'_>) -> Option<Lines> {
    let g = KGeometry::of(w.ty, w.cols)?;
    let groups = w.rows.div_ceil(GROUP);
    let mut data = Lines::zeroed(groups * g.group_bytes() / 64);
    let (rb, ts) = (w.row_bytes(), w.ty.type_size());
    // Where the quant bytes, the scales and `d` are in a GGML block.
    let (qs, sc, d) = if g.q6 {
        (0..192, 192, 208)
    } else if g.q5 {
        (16..176, 4, 0)
    } else {
        (16..144, 4, 0)
    };
    let buf = lines_bytes_mut(&mut data);
    for (gi, dst) in buf.chunks_exact_mut(g.group_bytes()).enumerate() {
        for r in 0..GROUP.min(w.rows - gi * GROUP) {
            let row = &w.data[(gi * GROUP + r) * rb..][..rb];
            for (i, x) in row.chunks_exact(ts).enumerate() {
                for (v, word) in x[qs.clone()].chunks_exact(4).enumerate() {
                    dst[i * g.qb() + v * 64 + r * 4..][..4].copy_from_slice(word);
                }
                let at = |s: usize| g.sc_at() + i * g.subs() * 16 + s * 16 + r;
                if g.q6 {
                    for s in 0..16 {
                        dst[at(s)] = x[sc + s];
                    }
                } else {
                    let (scales, mins) = crate::quant_k::unpack_scales_mins(&x[sc..sc + 12]);
                    for s in 0..8 {
                        dst[at(s)] = scales[s];
                        dst[g.mn_at() + i * 128 + s * 16 + r] = mins[s];
                    }
                    dst[g.dmin_at() + i * 32 + r * 2..][..2].copy_from_slice(&x[2..4]);
                }
                dst[g.d_at() + i * 32 + r * 2..][..2].copy_from_slice(&x[d..d + 2]);
            }
        }
    }
    Some(data)
}

/// Bytes of one prepared activation row of `cols` elements for packed weights of type `ty`.
pub(crate) fn act_bytes(ty: GgmlType, cols: usize) -> usize {
    match ty {
        GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => cols / 256 * ACT_SB,
        _ => cols / 32 * ACT_BLK,
    }
}

/// Bytes per super-block of a prepared Q8_K activation row: the 256 quants; at 256 the sums
/// the kernel needs as i32 (Q4_K: the 8 sums of 32 quants, Q8_K's 16 `bsums` added in pairs;
/// Q6_K: `−32·bsum` of each of the 16 sums of 16, its codes' offset); at 320 `d`.
pub(crate) const ACT_SB: usize = 384;

/// Bytes per block of a prepared activation row for the x16 kernels: the 32 quants, GGML's
/// per-lane offsets `-C·Σ₄ a` (i32 × 8; `C` = 8 for Q4_0, 16 for Q5_0, 128 for Q8_0, unused
/// for Q4_1/Q5_1), `d` and Q8_1's `s` widened to f32, then the block's offset `-C·Σ a` (i32,
/// for `Order::Block`).
pub(crate) const ACT_BLK: usize = 80;

/// Prepare one activation row (`ty.vec_dot_type()` bytes of `cols` elements) for weights of
/// type `ty`, into `dst` (`cols / 32 · ACT_BLK` bytes).
pub(crate) fn prep_act(ty: GgmlType, cols: usize, src: &[u8], dst: &mut [u8]) {
    if matches!(ty, GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K) {
        let q8k = GgmlType::Q8K.type_size();
        for (a, o) in src
            .chunks_exact(q8k)
            .zip(dst.chunks_exact_mut(ACT_SB))
            .take(cols / 256)
        {
            o[..256].copy_from_slice(&a[4..260]);
            let bsum = |i: usize| i16::from_le_bytes([a[260 + 2 * i], a[261 + 2 * i]]) as i32;
            let q6 = ty == GgmlType::Q6K;
            for s in 0..if q6 { 16 } else { 8 } {
                let v = if q6 {
                    -32 * bsum(s)
                } else {
                    bsum(2 * s) + bsum(2 * s + 1)
                };
                o[256 + 4 * s..260 + 4 * s].copy_from_slice(&v.to_le_bytes());
            }
            o[320..324].copy_from_slice(&a[..4]);
        }
        return;
    }
    let g = Geometry::of(ty, cols).expect("a packed type");
    // Activation blocks: Q8_1 (d, s, 32 quants) for Q4_1/Q5_1, Q8_0 (d, 32 quants) otherwise;
    // `c` is the offset of the weight codes (`Σ (q − c)·a = Σ q·a − c·Σ a`).
    let (aoff, c) = match ty {
        GgmlType::Q4_1 | GgmlType::Q5_1 => (4, 0i32),
        GgmlType::Q4_0 => (2, 8),
        GgmlType::Q5_0 => (2, 16),
        _ => (2, 128),
    };
    let f16 = |b: &[u8]| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
    for (a, o) in src
        .chunks_exact(aoff + 32)
        .zip(dst.chunks_exact_mut(ACT_BLK))
        .take(g.nb)
    {
        let q = &a[aoff..aoff + 32];
        o[..32].copy_from_slice(q);
        let mut block = 0;
        for k in 0..8 {
            let s: i32 = q[4 * k..4 * k + 4].iter().map(|&v| v as i8 as i32).sum();
            o[32 + 4 * k..36 + 4 * k].copy_from_slice(&(-c * s).to_le_bytes());
            block += -c * s;
        }
        o[72..76].copy_from_slice(&block.to_le_bytes());
        o[64..68].copy_from_slice(&f16(a).to_le_bytes());
        let s = if g.mins { f16(&a[2..]) } else { 0.0 };
        o[68..72].copy_from_slice(&s.to_le_bytes());
    }
}

/// Runs 16 packed rows of `cols` elements (the first group of `group`; groups after it, the
/// rest of the caller's task, may be prefetched but are not read) against `nt` prepared
/// activation rows (`pab` bytes apart), writing row `r < nr` of token `t` at
/// `out + t · ostride + r`.
///
/// # Safety
/// Those `nt × nr` elements must be valid for writes and written by no one else meanwhile.
pub(crate) type X16Fn = unsafe fn(
    cols: usize,
    nt: usize,
    group: &[u8],
    a: &[u8],
    pab: usize,
    out: *mut f32,
    ostride: usize,
    nr: usize,
);

/// For backends without x16 kernels.
pub(crate) fn no_x16(_: GgmlType, _: Order) -> Option<X16Fn> {
    None
}
