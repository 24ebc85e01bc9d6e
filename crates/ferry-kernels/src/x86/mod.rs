//! x86-64 SIMD kernels. `avx2` needs AVX2, FMA and F16C; `avx512` additionally needs
//! AVX-512 F/BW/VL/VNNI/VBMI and reuses the AVX2 kernels for the types it does not cover.
//! Nothing here is compiled with `-C target-cpu`: every kernel is a `#[target_feature]`
//! function reachable only through a backend that `all()` hands out after runtime
//! detection.

use crate::dot::Backend;

pub(crate) mod avx2;
pub(crate) mod avx512;
pub(crate) mod packed16;

/// For the decode-sized tiles that read GGML's layout (the AVX2 block tiles, the AVX-512 F16
/// and BF16 tiles): ask for rows `R..2R` of a tile (the next tile's) at byte `off` of each row,
/// `ws` bytes apart; decode is memory-bound (see `packed16::PREFETCH_AHEAD`). A prefetch never
/// faults, so rows past the matrix cost nothing but the request.
#[inline(always)]
fn prefetch_next_tile<const R: usize>(w: *const u8, ws: usize, off: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    for r in R..2 * R {
        // SAFETY: the address is computed without dereferencing; prefetches do not fault.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(r * ws + off) as *const i8) };
    }
}

/// Every SIMD backend this CPU supports, fastest last.
pub(crate) fn all() -> Vec<&'static Backend> {
    let mut v = Vec::new();
    if avx2::detected() {
        v.push(&avx2::BACKEND);
        if avx512::detected() {
            v.push(&avx512::BACKEND);
        }
    }
    v
}

/// Match a runtime tile shape to a monomorphized kernel `$f::<$k, R, T>`, for R, T in 1..=4.
macro_rules! rt_match {
    ($f:ident, $k:ty, $nr:expr, $nt:expr, ($($arg:expr),*)) => {
        match ($nr, $nt) {
            (1, 1) => $f::<$k, 1, 1>($($arg),*),
            (1, 2) => $f::<$k, 1, 2>($($arg),*),
            (1, 3) => $f::<$k, 1, 3>($($arg),*),
            (1, 4) => $f::<$k, 1, 4>($($arg),*),
            (2, 1) => $f::<$k, 2, 1>($($arg),*),
            (2, 2) => $f::<$k, 2, 2>($($arg),*),
            (2, 3) => $f::<$k, 2, 3>($($arg),*),
            (2, 4) => $f::<$k, 2, 4>($($arg),*),
            (3, 1) => $f::<$k, 3, 1>($($arg),*),
            (3, 2) => $f::<$k, 3, 2>($($arg),*),
            (3, 3) => $f::<$k, 3, 3>($($arg),*),
            (3, 4) => $f::<$k, 3, 4>($($arg),*),
            (4, 1) => $f::<$k, 4, 1>($($arg),*),
            (4, 2) => $f::<$k, 4, 2>($($arg),*),
            (4, 3) => $f::<$k, 4, 3>($($arg),*),
            (4, 4) => $f::<$k, 4, 4>($($arg),*),
            _ => panic!("tile {}x{} is larger than 4x4", $nr, $nt),
        }
    };
}
pub(crate) use rt_match;

/// A safe `TileFn` named `$name` over the generic tile kernel `$tile::<$k, R, T>`: checks the
/// tile's bounds for weight type `$ty`, then dispatches on the tile shape. `$per` is the
/// number of elements per step of the kernel (its first argument is `n / $per`).
macro_rules! tile_wrapper {
    ($name:ident, $ty:expr, $tile:ident, $k:ty, $per:expr) => {
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
            $crate::dot::check_tile($ty, n, nr, nt, w, ws, a, as_, out);
            let (w, a, o) = (w.as_ptr(), a.as_ptr(), out.as_mut_ptr());
            // SAFETY: bounds checked above; reachable only via `BACKEND`, used after `detected()`.
            unsafe { $crate::x86::rt_match!($tile, $k, nr, nt, (n / $per, w, ws, a, as_, o)) }
        }
    };
}
pub(crate) use tile_wrapper;
