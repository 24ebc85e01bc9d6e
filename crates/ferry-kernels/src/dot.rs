//! Fast dot products and activation quantizers, chosen once per process by CPU feature
//! detection.
//!
//! This module owns the dispatch table (`backend()`): on x86-64 it picks the AVX-512 VNNI
//! kernels, else the AVX2+FMA+F16C kernels, else the portable scalar ones; other targets get
//! the scalar ones (`FERRY_KERNELS=scalar` or `=avx2` forces a lower level, for comparisons).
//! The choice is made once (a `OnceLock`) so every product in a process uses the same
//! arithmetic.
//!
//! Kernels work on *tiles*: `nr` weight rows against `nt` activation rows. A kernel performs,
//! for each (row, token) pair of a tile, exactly the same sequence of floating-point
//! operations as for a 1×1 tile, so results do not depend on how the work is tiled or how
//! many tokens are in a batch.

// Tile kernels take a weight tile, an activation tile and an output slice with strides.
#![allow(clippy::too_many_arguments)]

use std::sync::OnceLock;

use crate::quant::{quantize_row_act, vec_dot_ref, GgmlType};

/// Computes `out[r * nt + t] = dot(weight row r, activation row t)` for `r < nr`, `t < nt`,
/// where weight row `r` starts at `w[r * ws..]` and activation row `t` at `a[t * as_..]`, each
/// holding `n` elements. Implementations check the slice bounds.
pub(crate) type TileFn =
    fn(n: usize, nr: usize, nt: usize, w: &[u8], ws: usize, a: &[u8], as_: usize, out: &mut [f32]);

/// Converts a row of activations to a `vec_dot_type`, bit-identical to `quantize_row_act`.
pub(crate) type QuantFn = fn(ty: GgmlType, src: &[f32], dst: &mut [u8]);

/// A tile kernel and the largest tile it takes.
#[derive(Clone, Copy)]
pub(crate) struct TileKernel {
    pub f: TileFn,
    pub max_r: usize,
    pub max_t: usize,
}

/// A tile kernel over *prepared* operands, for batches: weight rows and activation rows are
/// first converted (`prep_w`, `prep_a`) into a layout the kernel only loads (nibbles split,
/// scales widened to f32, activation sums precomputed), so that this work is done once per
/// row per batch instead of once per tile. For every (row, token) pair, `f` performs exactly
/// the float operations of the backend's plain `TileKernel` on the same operands, so results
/// are bit-identical to it (tested in `tests.rs`).
///
/// Weights are prepared a *group* of `nr <= max_r` rows at a time (the rows of one tile), so
/// that a kernel may interleave rows it loads together (the row-pair kernels put both rows of
/// a pair in one 64-byte vector per block). `f` then takes one such group as its weight tile,
/// with the same `nr` and with `ws` the `ds` the group was prepared with.
#[derive(Clone, Copy)]
pub(crate) struct PreparedKernel {
    /// Bytes per row of a prepared weight group of `n`-element rows; a group of `nr` rows
    /// prepared with stride `ds >= w_bytes(n)` fills `nr.next_multiple_of(2) * ds` bytes.
    pub w_bytes: fn(n: usize) -> usize,
    /// Prepare the `nr <= max_r` weight rows at `src[i * ss..]` (`ty.row_bytes(n)` bytes each)
    /// into a group at `dst` of stride `ds` (see `w_bytes`).
    pub prep_w: fn(n: usize, nr: usize, src: &[u8], ss: usize, dst: &mut [u8], ds: usize),
    /// Bytes of one prepared activation row of `n` elements.
    pub a_bytes: fn(n: usize) -> usize,
    /// Prepare one activation row (in `ty.vec_dot_type()`) into `a_bytes(n)` bytes.
    pub prep_a: fn(n: usize, src: &[u8], dst: &mut [u8]),
    /// A `TileFn` whose rows and strides are those of the prepared rows.
    pub f: TileFn,
    pub max_r: usize,
    pub max_t: usize,
}

/// One instruction-set level's kernels.
pub(crate) struct Backend {
    pub name: &'static str,
    pub tile: fn(GgmlType) -> TileKernel,
    pub quant: QuantFn,
    /// The prepared-operand kernel for a weight type, where the backend has one.
    pub prepared: fn(GgmlType) -> Option<PreparedKernel>,
    /// The kernel over x16-packed weights (`crate::packed`) for a weight type summed in an
    /// order, if any.
    pub x16: fn(GgmlType, crate::quant::Order) -> Option<crate::packed::X16Fn>,
}

/// For backends without prepared-operand kernels.
pub(crate) fn no_prepared(_: GgmlType) -> Option<PreparedKernel> {
    None
}

/// Check that a tile's operands are in bounds (shared by every implementation).
#[inline]
pub(crate) fn check_tile(
    ty: GgmlType,
    n: usize,
    nr: usize,
    nt: usize,
    w: &[u8],
    ws: usize,
    a: &[u8],
    as_: usize,
    out: &[f32],
) {
    let wrb = ty.row_bytes(n).expect("whole blocks");
    let arb = ty.vec_dot_type().row_bytes(n).expect("whole blocks");
    assert!(nr >= 1 && nt >= 1 && out.len() >= nr * nt);
    assert!(
        ws >= wrb && w.len() >= (nr - 1) * ws + wrb,
        "weight tile out of bounds"
    );
    assert!(
        as_ >= arb && a.len() >= (nt - 1) * as_ + arb,
        "activation tile out of bounds"
    );
}

pub(crate) fn scalar_tile(ty: GgmlType) -> TileKernel {
    fn f(ty: GgmlType) -> TileFn {
        macro_rules! mk {
            ($t:expr) => {{
                fn g(
                    n: usize,
                    nr: usize,
                    nt: usize,
                    w: &[u8],
                    ws: usize,
                    a: &[u8],
                    as_: usize,
                    out: &mut [f32],
                ) {
                    let ty = $t;
                    check_tile(ty, n, nr, nt, w, ws, a, as_, out);
                    let wrb = ty.row_bytes(n).unwrap();
                    let arb = ty.vec_dot_type().row_bytes(n).unwrap();
                    for r in 0..nr {
                        for t in 0..nt {
                            out[r * nt + t] = vec_dot_ref(
                                ty,
                                n,
                                &w[r * ws..r * ws + wrb],
                                &a[t * as_..t * as_ + arb],
                            );
                        }
                    }
                }
                g as TileFn
            }};
        }
        match ty {
            GgmlType::F32 => mk!(GgmlType::F32),
            GgmlType::F16 => mk!(GgmlType::F16),
            GgmlType::BF16 => mk!(GgmlType::BF16),
            GgmlType::Q4_0 => mk!(GgmlType::Q4_0),
            GgmlType::Q4_1 => mk!(GgmlType::Q4_1),
            GgmlType::Q5_0 => mk!(GgmlType::Q5_0),
            GgmlType::Q5_1 => mk!(GgmlType::Q5_1),
            GgmlType::Q8_0 => mk!(GgmlType::Q8_0),
            GgmlType::Q4K => mk!(GgmlType::Q4K),
            GgmlType::Q5K => mk!(GgmlType::Q5K),
            GgmlType::Q6K => mk!(GgmlType::Q6K),
            other => panic!("{} is not a weight type", other.name()),
        }
    }
    TileKernel {
        f: f(ty),
        max_r: 1,
        max_t: 1,
    }
}

/// The portable backend: scalar reference arithmetic.
pub(crate) static SCALAR: Backend = Backend {
    name: "scalar",
    tile: scalar_tile,
    quant: quantize_row_act,
    prepared: no_prepared,
    x16: crate::packed::no_x16,
};

/// The backend this CPU runs, detected on first use.
pub(crate) fn backend() -> &'static Backend {
    static B: OnceLock<&'static Backend> = OnceLock::new();
    B.get_or_init(|| {
        let want = std::env::var("FERRY_KERNELS").ok();
        if want.as_deref() == Some("scalar") {
            return &SCALAR;
        }
        #[cfg(target_arch = "x86_64")]
        {
            // `FERRY_KERNELS=avx2` caps the choice at the AVX2 kernels (to compare them).
            let all = crate::x86::all();
            if let Some(b) = all.iter().find(|b| Some(b.name) == want.as_deref()) {
                return b;
            }
            if let Some(b) = all.last() {
                return b;
            }
        }
        &SCALAR
    })
}

/// Name of the kernel set in use (`"avx512vnni"`, `"avx2"` or `"scalar"`).
pub fn backend_name() -> &'static str {
    backend().name
}

/// Fast dot product of one weight row `w` (type `ty`, `n` elements) with one activation row
/// `a` already converted to `ty.vec_dot_type()`. Agrees with `quant::vec_dot_ref` up to
/// float rounding, and bit for bit with what `matmul` computes for the same pair.
pub fn vec_dot(ty: GgmlType, n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut out = [0f32; 1];
    let k = (backend().tile)(ty);
    (k.f)(n, 1, 1, w, w.len(), a, a.len(), &mut out);
    out[0]
}

/// Fast activation quantizer: same bytes as `quant::quantize_row_act`.
pub fn quantize_row_act_fast(ty: GgmlType, src: &[f32], dst: &mut [u8]) {
    (backend().quant)(ty, src, dst)
}

/// All backends this CPU can run (for tests), scalar first.
#[cfg(test)]
pub(crate) fn available_backends() -> Vec<&'static Backend> {
    #[allow(unused_mut)]
    let mut v = vec![&SCALAR];
    #[cfg(target_arch = "x86_64")]
    v.extend(crate::x86::all());
    v
}
