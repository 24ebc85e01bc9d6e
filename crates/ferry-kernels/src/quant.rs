//! GGML block formats: sizes, dequantization, activation quantization and the scalar
//! reference dot products. Layouts follow ggml's `ggml-common.h` exactly (little-endian).

use half::{bf16, f16};

/// Tensor element types as numbered in the GGUF format (ggml's `enum ggml_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    BF16,
}

impl GgmlType {
    /// Map a GGUF type id. Unknown or unsupported ids give `None`.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            9 => Self::Q8_1,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            15 => Self::Q8K,
            30 => Self::BF16,
            _ => return None,
        })
    }

    /// The GGUF id of this type.
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q8_1 => 9,
            Self::Q4K => 12,
            Self::Q5K => 13,
            Self::Q6K => 14,
            Self::Q8K => 15,
            Self::BF16 => 30,
        }
    }

    /// The name ggml and llama.cpp print for this type.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q8_1 => "Q8_1",
            Self::Q4K => "Q4_K",
            Self::Q5K => "Q5_K",
            Self::Q6K => "Q6_K",
            Self::Q8K => "Q8_K",
            Self::BF16 => "BF16",
        }
    }

    /// Elements per block.
    pub fn block_size(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 | Self::Q8_1 => 32,
            Self::Q4K | Self::Q5K | Self::Q6K | Self::Q8K => 256,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q8_1 => 36,
            Self::Q4K => 144,
            Self::Q5K => 176,
            Self::Q6K => 210,
            Self::Q8K => 292,
        }
    }

    /// Bytes taken by a row of `cols` elements, or `None` if `cols` is not a whole number of
    /// blocks.
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        if !cols.is_multiple_of(self.block_size()) {
            return None;
        }
        (cols / self.block_size()).checked_mul(self.type_size())
    }

    /// The type activations are converted to before a dot product with weights of this type
    /// (ggml's `vec_dot_type`).
    pub fn vec_dot_type(self) -> GgmlType {
        match self {
            Self::F32 => Self::F32,
            Self::F16 => Self::F16,
            Self::BF16 => Self::BF16,
            Self::Q4_0 | Self::Q5_0 | Self::Q8_0 => Self::Q8_0,
            Self::Q4_1 | Self::Q5_1 | Self::Q8_1 => Self::Q8_1,
            Self::Q4K | Self::Q5K | Self::Q6K | Self::Q8K => Self::Q8K,
        }
    }

    /// Whether weights of this type can be multiplied by this crate.
    pub fn is_weight_type(self) -> bool {
        !matches!(self, Self::Q8_1 | Self::Q8K)
    }
}

#[inline]
pub(crate) fn rd_f16(b: &[u8], off: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[off], b[off + 1]])).to_f32()
}

#[inline]
fn wr_f16(b: &mut [u8], off: usize, v: f32) {
    b[off..off + 2].copy_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
}

/// Dequantize one row. `src` holds exactly `dst.len()` elements of type `ty`.
///
/// Panics if the lengths disagree (a programming error: callers check shapes first).
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    let bs = ty.block_size();
    let ts = ty.type_size();
    assert_eq!(dst.len() % bs, 0);
    assert_eq!(src.len(), dst.len() / bs * ts);
    match ty {
        GgmlType::F32 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            }
        }
        GgmlType::F16 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = f16::from_bits(u16::from_le_bytes([s[0], s[1]])).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = bf16::from_bits(u16::from_le_bytes([s[0], s[1]])).to_f32();
            }
        }
        GgmlType::Q4_0 => {
            for (y, b) in dst.chunks_exact_mut(32).zip(src.chunks_exact(ts)) {
                let d = rd_f16(b, 0);
                for j in 0..16 {
                    let q = b[2 + j];
                    y[j] = ((q & 0x0f) as i32 - 8) as f32 * d;
                    y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        GgmlType::Q4_1 => {
            for (y, b) in dst.chunks_exact_mut(32).zip(src.chunks_exact(ts)) {
                let d = rd_f16(b, 0);
                let m = rd_f16(b, 2);
                for j in 0..16 {
                    let q = b[4 + j];
                    y[j] = (q & 0x0f) as f32 * d + m;
                    y[j + 16] = (q >> 4) as f32 * d + m;
                }
            }
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let one = ty == GgmlType::Q5_1;
            let hoff = if one { 4 } else { 2 };
            for (y, b) in dst.chunks_exact_mut(32).zip(src.chunks_exact(ts)) {
                let d = rd_f16(b, 0);
                let m = if one { rd_f16(b, 2) } else { 0.0 };
                let q = q5_values(b, hoff, if one { 0 } else { 16 });
                for j in 0..32 {
                    y[j] = if one {
                        q[j] as f32 * d + m
                    } else {
                        q[j] as f32 * d
                    };
                }
            }
        }
        GgmlType::Q8_0 => {
            for (y, b) in dst.chunks_exact_mut(32).zip(src.chunks_exact(ts)) {
                let d = rd_f16(b, 0);
                for j in 0..32 {
                    y[j] = (b[2 + j] as i8) as f32 * d;
                }
            }
        }
        GgmlType::Q8_1 => {
            for (y, b) in dst.chunks_exact_mut(32).zip(src.chunks_exact(ts)) {
                let d = rd_f16(b, 0);
                for j in 0..32 {
                    y[j] = (b[4 + j] as i8) as f32 * d;
                }
            }
        }
        GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K | GgmlType::Q8K => {
            crate::quant_k::dequantize_row_k(ty, src, dst)
        }
    }
}

/// The 32 five-bit values of a Q5_0/Q5_1 block, minus `bias` (16 for Q5_0, 0 for Q5_1), in
/// element order. `hoff` is the offset of the 4 high-bit bytes; the nibbles follow them.
/// (ggml's `dequantize_row_q5_0`: element j takes bit j of `qh`, element j+16 bit j+16.)
#[inline]
pub(crate) fn q5_values(b: &[u8], hoff: usize, bias: i32) -> [i32; 32] {
    let qh = u32::from_le_bytes([b[hoff], b[hoff + 1], b[hoff + 2], b[hoff + 3]]);
    let qs = &b[hoff + 4..hoff + 20];
    let mut q = [0i32; 32];
    for j in 0..16 {
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        q[j] = ((qs[j] & 0x0f) as u32 | h0) as i32 - bias;
        q[j + 16] = ((qs[j] >> 4) as u32 | h1) as i32 - bias;
    }
    q
}

/// Convert a row of activations to `ty` (a `vec_dot_type`). `dst` must be `row_bytes` long.
///
/// Q8_0 and Q8_1 follow ggml-cpu's x86 `quantize_row_q8_0`/`quantize_row_q8_1` (the code
/// llama.cpp runs on AVX/AVX2/AVX-512 machines), not ggml's portable `*_ref` quantizer: the
/// inverse scale is `127 / amax` (not `1 / (amax / 127)`) and values round half to even
/// (`_mm256_round_ps(_MM_ROUND_NEAREST)`), not half away from zero. Q8_K follows
/// `quantize_row_q8_K_ref`, which x86 also runs, whose `nearest_int` rounds half to even.
pub fn quantize_row_act(ty: GgmlType, src: &[f32], dst: &mut [u8]) {
    let bs = ty.block_size();
    let ts = ty.type_size();
    assert_eq!(src.len() % bs, 0);
    assert_eq!(dst.len(), src.len() / bs * ts);
    match ty {
        GgmlType::F32 => {
            for (d, s) in dst.chunks_exact_mut(4).zip(src) {
                d.copy_from_slice(&s.to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for (d, s) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&f16::from_f32(*s).to_bits().to_le_bytes());
            }
        }
        GgmlType::BF16 => {
            for (d, s) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&bf16::from_f32(*s).to_bits().to_le_bytes());
            }
        }
        GgmlType::Q8_0 | GgmlType::Q8_1 => {
            let qoff = if ty == GgmlType::Q8_0 { 2 } else { 4 };
            for (x, b) in src.chunks_exact(32).zip(dst.chunks_exact_mut(ts)) {
                let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
                let mut sum = 0i32;
                for j in 0..32 {
                    let q = (x[j] * id).round_ties_even() as i32;
                    sum += q;
                    b[qoff + j] = q as i8 as u8;
                }
                wr_f16(b, 0, d);
                if ty == GgmlType::Q8_1 {
                    wr_f16(b, 2, sum as f32 * d);
                }
            }
        }
        GgmlType::Q8K => crate::quant_k::quantize_row_q8k(src, dst),
        other => panic!("{} is not an activation type", other.name()),
    }
}

/// How the products of a 32-element block type (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) are summed into
/// one output. Both are exact per block up to the float steps, fixed per (row, token) and so
/// independent of the batch; they differ in where the float roundings fall.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Order {
    /// ggml-cpu's x86 `vec_dot` (what llama.cpp runs without repacking): eight f32 lanes per
    /// output, each block's four-product lane sums added by one `fma` each, then
    /// `hsum_float_8`. Bit-identical to llama.cpp's logits on the same file. The default.
    #[default]
    LlamaCpp,
    /// Each block's 32 products summed exactly as integers, then one float step per block,
    /// `acc = fma(d_w·d_a, f32(Σ), acc)` (Q4_1/Q5_1: `summs = fma(m, s, summs)`, added at the
    /// end): the order of llama.cpp's repacked x86 Q4_0 kernels (`repack.cpp`,
    /// `gemm_q4_b32_8x8_q8_0_lut_avx`, which llama.cpp uses by default on AVX2 machines).
    /// Fewer roundings and a third of `LlamaCpp`'s float work per block, so batched products
    /// (prefill) run 1.5-2x faster; as close to the F16 model as `LlamaCpp`, but its
    /// roundings re-quantize activations differently, so its logits differ from llama.cpp's
    /// unrepacked ones by quantization noise (96-98% teacher-forced top-1 agreement). Opt-in.
    Block,
}

impl Order {
    /// The order named by `FERRY_MATMUL_ORDER` (`llama.cpp`, the default, or `block`); an
    /// unknown value is an error naming the accepted ones.
    pub fn from_env() -> Result<Self, String> {
        Self::parse(std::env::var("FERRY_MATMUL_ORDER").ok().as_deref())
    }

    /// `from_env` of the variable's value (`None`: unset).
    fn parse(v: Option<&str>) -> Result<Self, String> {
        match v {
            None | Some("") | Some("llamacpp") => Ok(Self::LlamaCpp),
            Some(v) if v == Self::LlamaCpp.name() => Ok(Self::LlamaCpp),
            Some(v) if v == Self::Block.name() => Ok(Self::Block),
            Some(other) => Err(format!(
                "FERRY_MATMUL_ORDER={other:?}: expected {:?} or {:?}",
                Self::LlamaCpp.name(),
                Self::Block.name()
            )),
        }
    }

    /// The order's name, as `FERRY_MATMUL_ORDER` takes it and `ferry bench` reports it.
    pub fn name(self) -> &'static str {
        match self {
            Self::LlamaCpp => "llama.cpp",
            Self::Block => "block",
        }
    }
}

/// Scalar reference dot product of one weight row `w` (type `ty`) with one activation row `a`
/// already converted to `ty.vec_dot_type()`. `n` is the number of elements. For the 32-element
/// block types it performs ggml-cpu's x86 float operations (`dot_blocks_x86`), which every SIMD
/// backend's tiles reproduce bit for bit; the K-quants follow llama.cpp's tiled order.
pub fn vec_dot_ref(ty: GgmlType, n: usize, w: &[u8], a: &[u8]) -> f32 {
    vec_dot_ref_in(Order::LlamaCpp, ty, n, w, a)
}

/// `vec_dot_ref` with the 32-element block types summed in `order` (the K-quants and float
/// types have one order).
pub fn vec_dot_ref_in(order: Order, ty: GgmlType, n: usize, w: &[u8], a: &[u8]) -> f32 {
    match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
            let mut x = vec![0f32; n];
            let mut y = vec![0f32; n];
            dequantize_row(ty, w, &mut x);
            dequantize_row(ty, a, &mut y);
            x.iter().zip(&y).map(|(p, q)| p * q).sum()
        }
        // The 32-element block types follow ggml-cpu's x86 kernels (`ggml_vec_dot_q4_0_q8_0`,
        // `_q4_1_q8_1`, `_q5_0_q8_0`, `_q5_1_q8_1`, `_q8_0_q8_0` with AVX2, and tinyBLAS's
        // `tinyBLAS_Q0_AVX` for Q4_0/Q5_0/Q8_0 batches, which performs the same float ops per
        // output): see `dot_blocks_x86`; or `dot_blocks_exact`.
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => {
            let blocks = block_operands(ty, w, a);
            match order {
                Order::LlamaCpp => dot_blocks_x86(blocks),
                Order::Block => dot_blocks_exact(blocks),
            }
        }
        GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => crate::quant_k::vec_dot_k_ref(ty, n, w, a),
        GgmlType::Q8_1 | GgmlType::Q8K => panic!("{} is not a weight type", ty.name()),
    }
}

/// One block's operands: the weight values and the activation values in element order, the
/// scale product `d_w · d_a` (one f32 multiply) and, for Q4_1/Q5_1, the pair `(m, s)`.
type BlockOperands = ([i32; 32], [i32; 32], f32, Option<(f32, f32)>);

/// The `BlockOperands` of each block of weight row `w` (a 32-element block type `ty`) and
/// activation row `a` (its `vec_dot_type`), in order.
fn block_operands<'a>(
    ty: GgmlType,
    w: &'a [u8],
    a: &'a [u8],
) -> impl Iterator<Item = BlockOperands> + 'a {
    let (wb, ab) = (ty.type_size(), ty.vec_dot_type().type_size());
    w.chunks_exact(wb)
        .zip(a.chunks_exact(ab))
        .map(move |(bw, ba)| {
            let nib = |off: usize, bias: i32| -> [i32; 32] {
                std::array::from_fn(|j| {
                    let b = bw[off + j % 16];
                    (if j < 16 { b & 0x0f } else { b >> 4 }) as i32 - bias
                })
            };
            let d = rd_f16(bw, 0) * rd_f16(ba, 0);
            let ms = || Some((rd_f16(bw, 2), rd_f16(ba, 2)));
            match ty {
                GgmlType::Q4_0 => (nib(2, 8), q8(&ba[2..]), d, None),
                GgmlType::Q4_1 => (nib(4, 0), q8(&ba[4..]), d, ms()),
                GgmlType::Q5_0 => (q5_values(bw, 2, 16), q8(&ba[2..]), d, None),
                GgmlType::Q5_1 => (q5_values(bw, 4, 0), q8(&ba[4..]), d, ms()),
                GgmlType::Q8_0 => (q8(&bw[2..]), q8(&ba[2..]), d, None),
                _ => unreachable!("not a 32-element block type"),
            }
        })
}

/// The 32 signed bytes at the start of `b` as integers.
#[inline]
fn q8(b: &[u8]) -> [i32; 32] {
    std::array::from_fn(|j| (b[j] as i8) as i32)
}

/// ggml's horizontal sum of 8 f32 lanes on x86 (`hsum_float_8`, tinyBLAS's `hsum(__m256)`):
/// the 128-bit halves added, then `movehl`, then `movehdup`.
#[inline]
pub(crate) fn hsum8_x86(x: [f32; 8]) -> f32 {
    ((x[0] + x[4]) + (x[2] + x[6])) + ((x[1] + x[5]) + (x[3] + x[7]))
}

/// The float arithmetic of ggml-cpu's x86 dot products of 32-element blocks, per output,
/// over the blocks' operands (`block_operands`). Eight f32 lanes: for each block in order, lane `k` takes the exact integer
/// `Σ w_e·a_e` over elements `4k..4k+4` (what `vpdpbusd` / `maddubs`+`madd` produce), and
/// `lane = fma(d, f32(int), lane)`; the mins go to one scalar, `summs = fma(m, s, summs)`
/// (GCC contracts ggml's `summs += m*s`, as its binaries show); the result is
/// `hsum8_x86(lanes) + summs` (no `+ summs` without mins).
fn dot_blocks_x86(blocks: impl Iterator<Item = BlockOperands>) -> f32 {
    let mut acc = [0f32; 8];
    let mut summs = None;
    for (qw, qa, d, ms) in blocks {
        for (k, lane) in acc.iter_mut().enumerate() {
            let i: i32 = (4 * k..4 * k + 4).map(|e| qw[e] * qa[e]).sum();
            *lane = d.mul_add(i as f32, *lane);
        }
        if let Some((m, s)) = ms {
            summs = Some(m.mul_add(s, summs.unwrap_or(0.0)));
        }
    }
    match summs {
        Some(s) => hsum8_x86(acc) + s,
        None => hsum8_x86(acc),
    }
}

/// `Order::Block`'s arithmetic, per output: for each block in order the exact integer
/// `Σ w_e·a_e` over its 32 elements and `acc = fma(d, f32(Σ), acc)` (`|Σ| < 2²⁴`, so the
/// conversion is exact); the mins as in `dot_blocks_x86`; the result `acc + summs`.
fn dot_blocks_exact(blocks: impl Iterator<Item = BlockOperands>) -> f32 {
    let mut acc = 0f32;
    let mut summs = None;
    for (qw, qa, d, ms) in blocks {
        let i: i32 = qw.iter().zip(&qa).map(|(x, y)| x * y).sum();
        acc = d.mul_add(i as f32, acc);
        if let Some((m, s)) = ms {
            summs = Some(m.mul_add(s, summs.unwrap_or(0.0)));
        }
    }
    match summs {
        Some(s) => acc + s,
        None => acc,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_names() {
        for (v, want) in [
            (None, Ok(Order::LlamaCpp)),
            (Some(""), Ok(Order::LlamaCpp)),
            (Some("llama.cpp"), Ok(Order::LlamaCpp)),
            (Some("block"), Ok(Order::Block)),
        ] {
            assert_eq!(Order::parse(v), want, "{v:?}");
        }
        let e = Order::parse(Some("Block ")).unwrap_err();
        assert!(e.contains("\"Block \"") && e.contains("llama.cpp"), "{e}");
    }

    #[test]
    fn q8_roundtrip_is_close() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 17) as f32 - 8.0) * 0.13)
            .collect();
        for ty in [GgmlType::Q8_0, GgmlType::Q8_1] {
            let mut b = vec![0u8; ty.row_bytes(64).unwrap()];
            quantize_row_act(ty, &x, &mut b);
            let mut y = vec![0f32; 64];
            dequantize_row(ty, &b, &mut y);
            for (p, q) in x.iter().zip(&y) {
                assert!((p - q).abs() < 0.01, "{p} vs {q}");
            }
        }
    }

    /// The bytes ggml-cpu's x86 `quantize_row_q8_0` writes for one block, transliterated.
    fn ggml_x86_q8_0(x: &[f32; 32]) -> [i8; 32] {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        std::array::from_fn(|j| (x[j] * id).round_ties_even() as i8)
    }

    #[test]
    fn q8_quantizer_follows_ggml_x86() {
        // amax 127 gives id 1: halves round to even, as `_mm256_round_ps(_MM_ROUND_NEAREST)`.
        let mut x = [0f32; 32];
        x[..8].copy_from_slice(&[127.0, 2.5, 3.5, -2.5, -0.5, 0.5, 1.5, -1.5]);
        for ty in [GgmlType::Q8_0, GgmlType::Q8_1] {
            let mut b = vec![0u8; ty.type_size()];
            quantize_row_act(ty, &x, &mut b);
            let off = if ty == GgmlType::Q8_0 { 2 } else { 4 };
            let q: Vec<i8> = b[off..off + 8].iter().map(|&v| v as i8).collect();
            assert_eq!(q, [127, 2, 4, -2, 0, 0, 2, -2], "{ty:?}");
        }
        // Blocks where `1 / (amax / 127)` and `127 / amax` round differently: the quantizer
        // must take ggml's x86 choice, `127 / amax`.
        let mut differing = 0;
        for i in 0..4000u32 {
            let amax = 0.37 + i as f32 * 1.37e-4;
            let mut x = [0f32; 32];
            x[0] = amax;
            for (j, v) in x.iter_mut().enumerate().skip(1) {
                *v = amax * ((j as f32 * 3.9 + i as f32 * 0.01) % 127.0 + 0.5) / 127.0;
            }
            let recip = 1.0 / (amax / 127.0);
            if x.iter()
                .any(|v| (v * recip).round() != (v * (127.0 / amax)).round_ties_even())
            {
                differing += 1;
            }
            let mut b = vec![0u8; 34];
            quantize_row_act(GgmlType::Q8_0, &x, &mut b);
            let got: Vec<i8> = b[2..].iter().map(|&v| v as i8).collect();
            assert_eq!(got, ggml_x86_q8_0(&x), "amax {amax}");
        }
        assert!(
            differing > 0,
            "the test data never separates the two formulas"
        );
    }

    #[test]
    fn q5_blocks_by_hand() {
        // Element j: low nibble of qs[j] (j < 16) or high nibble of qs[j-16], fifth bit = bit j
        // of the little-endian qh word.
        for ty in [GgmlType::Q5_0, GgmlType::Q5_1] {
            let one = ty == GgmlType::Q5_1;
            let hoff = if one { 4 } else { 2 };
            let mut b = vec![0u8; ty.type_size()];
            b[0..2].copy_from_slice(&f16::from_f32(0.5).to_bits().to_le_bytes());
            if one {
                b[2..4].copy_from_slice(&f16::from_f32(-3.0).to_bits().to_le_bytes());
            }
            let want_q: Vec<u32> = (0..32).map(|j| (j * 7 + 3) % 32).collect();
            let mut qh = 0u32;
            for (j, &q) in want_q.iter().enumerate() {
                qh |= (q >> 4) << j;
                let nib = (q & 0xf) as u8;
                b[hoff + 4 + j % 16] |= if j < 16 { nib } else { nib << 4 };
            }
            b[hoff..hoff + 4].copy_from_slice(&qh.to_le_bytes());
            let mut y = [0f32; 32];
            dequantize_row(ty, &b, &mut y);
            for (j, &q) in want_q.iter().enumerate() {
                let want = if one {
                    q as f32 * 0.5 - 3.0
                } else {
                    (q as f32 - 16.0) * 0.5
                };
                assert_eq!(y[j], want, "{ty:?} element {j}");
            }
            // The reference dot equals the dot of the dequantized rows (exact here).
            let x: Vec<f32> = (0..32).map(|j| (j as f32 - 16.0) * 127.0 / 16.0).collect();
            let at = ty.vec_dot_type();
            let mut a = vec![0u8; at.type_size()];
            quantize_row_act(at, &x, &mut a);
            let mut xa = [0f32; 32];
            dequantize_row(at, &a, &mut xa);
            let want: f32 = y.iter().zip(&xa).map(|(p, q)| p * q).sum();
            let got = vec_dot_ref(ty, 32, &b, &a);
            assert!(
                (got - want).abs() <= 1e-3 * want.abs().max(1.0),
                "{ty:?}: {got} vs {want}"
            );
        }
    }

    /// The reference sums 8 lanes in ggml's x86 order, not block by block or lane by lane:
    /// three Q8_0 blocks whose products land in lanes 0 (2^24), 1 (1) and 5 (1). ggml adds
    /// lanes 1 and 5 first (exactly 2, then 2^24 + 2); summing blocks in order would round
    /// each `2^24 + 1` back to 2^24.
    #[test]
    fn block_dots_sum_lanes_in_ggml_x86_order() {
        let block = |d: f32, e: usize| {
            let mut b = [0u8; 34];
            wr_f16(&mut b, 0, d);
            b[2 + e] = 1;
            b
        };
        let (w, a): (Vec<u8>, Vec<u8>) = (
            [block(4096.0, 0), block(1.0, 4), block(1.0, 20)].concat(),
            [block(4096.0, 0), block(1.0, 4), block(1.0, 20)].concat(),
        );
        let two24 = (1u32 << 24) as f32;
        assert_eq!(vec_dot_ref(GgmlType::Q8_0, 96, &w, &a), two24 + 2.0);
        assert_eq!(
            hsum8_x86([two24, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]),
            two24 + 2.0
        );
        // Lanes 0 and 4 meet first: 2^24 + 1 rounds to 2^24 before lane 1 comes in.
        assert_eq!(hsum8_x86([two24, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]), two24);
    }

    #[test]
    fn ids_roundtrip() {
        for id in 0..40 {
            if let Some(t) = GgmlType::from_id(id) {
                assert_eq!(t.id(), id);
            }
        }
    }
}
