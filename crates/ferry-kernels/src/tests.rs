//! Cross-checks of every backend this CPU runs against the scalar reference: fast dot
//! products, activation quantizers, and batch invariance of `matmul`.

// Index loops mirror ggml's reference code and the lane layout of the kernels.
#![allow(clippy::needless_range_loop)]
#![allow(clippy::too_many_arguments)]

use crate::dot::{available_backends, Backend};
use crate::matmul::{matmul_with, MatmulScratch, Matrix};
use crate::pool::ThreadPool;
use crate::quant::{dequantize_row, quantize_row_act, vec_dot_ref, GgmlType};
use half::f16;

const WEIGHT_TYPES: [GgmlType; 11] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }
    /// Uniform in [-1, 1).
    fn f(&mut self) -> f32 {
        self.next() as f32 / (1u64 << 30) as f32 - 1.0
    }
}

fn put_f16(b: &mut [u8], off: usize, v: f32) {
    b[off..off + 2].copy_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
}

/// Random weights of type `ty`. With `exact`, scales are powers of two and float weights are
/// small integers, so every partial sum is exactly representable.
fn weights(ty: GgmlType, rows: usize, cols: usize, rng: &mut Rng, exact: bool) -> Vec<u8> {
    let rb = ty.row_bytes(cols).unwrap();
    let mut data = vec![0u8; rb * rows];
    for row in data.chunks_exact_mut(rb) {
        match ty {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
                let vals: Vec<f32> = (0..cols)
                    .map(|_| {
                        if exact {
                            (rng.next() % 15) as f32 - 7.0
                        } else {
                            rng.f()
                        }
                    })
                    .collect();
                quantize_row_act(ty, &vals, row);
            }
            _ => {
                row.iter_mut().for_each(|b| *b = rng.next() as u8);
                for blk in row.chunks_exact_mut(ty.type_size()) {
                    let (d, m) = if exact {
                        (0.5, -0.25)
                    } else {
                        (0.01 + 0.01 * rng.f(), -0.05 + 0.01 * rng.f())
                    };
                    match ty {
                        GgmlType::Q6K => put_f16(blk, 208, d),
                        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K => {
                            put_f16(blk, 0, d);
                            put_f16(blk, 2, -m);
                        }
                        _ => put_f16(blk, 0, d),
                    }
                }
            }
        }
    }
    data
}

/// Random activations. With `exact`, integers in [-127, 127] with a -127 in every block, so
/// that every quantized scale is exactly 1.
fn activations(n: usize, cols: usize, rng: &mut Rng, exact: bool) -> Vec<f32> {
    let mut x: Vec<f32> = (0..n * cols)
        .map(|_| {
            if exact {
                (rng.next() % 255) as f32 - 127.0
            } else {
                rng.f() * 2.0
            }
        })
        .collect();
    if exact {
        for c in x.chunks_mut(32) {
            c[0] = -127.0;
        }
    }
    x
}

fn col_counts(ty: GgmlType) -> &'static [usize] {
    match ty.block_size() {
        1 => &[1, 7, 8, 33, 96, 100, 576],
        32 => &[32, 64, 96, 160, 224, 576],
        _ => &[256, 512, 768],
    }
}

/// Σ |w_i · a_i| of the dequantized operands, to scale tolerances.
fn abs_dot(ty: GgmlType, cols: usize, w: &[u8], a: &[u8]) -> f64 {
    let mut wf = vec![0f32; cols];
    let mut af = vec![0f32; cols];
    dequantize_row(ty, w, &mut wf);
    dequantize_row(ty.vec_dot_type(), a, &mut af);
    wf.iter()
        .zip(&af)
        .map(|(p, q)| (*p as f64 * *q as f64).abs())
        .sum()
}

fn check_backend_dots(be: &Backend, exact: bool) {
    let mut rng = Rng(1234);
    for ty in WEIGHT_TYPES {
        let k = (be.tile)(ty);
        for &cols in col_counts(ty) {
            let rows = 2 * k.max_r + 1;
            let nt = 2 * k.max_t + 1;
            let w = weights(ty, rows, cols, &mut rng, exact);
            let x = activations(nt, cols, &mut rng, exact);
            let at = ty.vec_dot_type();
            let arb = at.row_bytes(cols).unwrap();
            let wrb = ty.row_bytes(cols).unwrap();
            let mut a = vec![0u8; arb * nt];
            for (xr, ar) in x.chunks_exact(cols).zip(a.chunks_exact_mut(arb)) {
                quantize_row_act(at, xr, ar);
            }
            // Every tile shape at every offset gives the same bits as the 1x1 tile, and the 1x1
            // tile agrees with the reference.
            let mut single = vec![0f32; rows * nt];
            for r in 0..rows {
                for t in 0..nt {
                    let mut o = [0f32; 1];
                    (k.f)(cols, 1, 1, &w[r * wrb..], wrb, &a[t * arb..], arb, &mut o);
                    single[r * nt + t] = o[0];
                    let wr = &w[r * wrb..(r + 1) * wrb];
                    let ar = &a[t * arb..(t + 1) * arb];
                    let want = vec_dot_ref(ty, cols, wr, ar);
                    // The 32-element block types' reference follows ggml's x86 float ops (as
                    // every backend's kernels do), so they must agree bit for bit.
                    if ty.block_size() == 32 {
                        assert_eq!(
                            o[0].to_bits(),
                            want.to_bits(),
                            "{} {ty:?} cols {cols} ({r},{t}): {} vs ref {want}",
                            be.name,
                            o[0]
                        );
                    } else if exact {
                        assert_eq!(o[0], want, "{} {ty:?} cols {cols} ({r},{t})", be.name);
                    } else {
                        let tol = 2e-4 * abs_dot(ty, cols, wr, ar) + 1e-5;
                        assert!(
                            ((o[0] - want) as f64).abs() <= tol,
                            "{} {ty:?} cols {cols} ({r},{t}): {} vs ref {want}",
                            be.name,
                            o[0]
                        );
                    }
                }
            }
            let what = format!("{} {ty:?} cols {cols}", be.name);
            let shape = (rows, nt, k.max_r, k.max_t);
            check_every_tile(&what, shape, &single, |nr, ntt, r0, t0, o| {
                (k.f)(cols, nr, ntt, &w[r0 * wrb..], wrb, &a[t0 * arb..], arb, o)
            });
        }
    }
}

/// Runs every tile shape up to `max_r` x `max_t` at every offset of a `rows` x `nt` problem
/// through `tile(nr, ntt, r0, t0, out)` and asserts the bits of `single` (the 1x1 results,
/// row-major); returns the number of tiles checked.
fn check_every_tile(
    what: &str,
    (rows, nt, max_r, max_t): (usize, usize, usize, usize),
    single: &[f32],
    mut tile: impl FnMut(usize, usize, usize, usize, &mut [f32]),
) -> usize {
    let mut checked = 0;
    for nr in 1..=max_r {
        for ntt in 1..=max_t {
            for r0 in 0..=rows - nr {
                for t0 in 0..=nt - ntt {
                    let mut o = vec![0f32; nr * ntt];
                    tile(nr, ntt, r0, t0, &mut o);
                    for i in 0..nr {
                        for j in 0..ntt {
                            assert_eq!(
                                o[i * ntt + j].to_bits(),
                                single[(r0 + i) * nt + t0 + j].to_bits(),
                                "{what} tile {nr}x{ntt} at ({r0},{t0})"
                            );
                        }
                    }
                    checked += 1;
                }
            }
        }
    }
    checked
}

/// Prepared-operand kernels give, for every tile shape at every offset, the bits of the
/// backend's plain 1x1 tile (odd block counts exercise the single-block tail).
#[test]
fn prepared_kernels_are_bit_identical_to_plain_tiles() {
    let mut rng = Rng(555);
    let mut checked = 0;
    for be in available_backends() {
        for ty in WEIGHT_TYPES {
            let Some(pk) = (be.prepared)(ty) else {
                continue;
            };
            let k = (be.tile)(ty);
            for &cols in col_counts(ty) {
                for exact in [false, true] {
                    let rows = 2 * pk.max_r + 1;
                    let nt = 2 * pk.max_t + 1;
                    let w = weights(ty, rows, cols, &mut rng, exact);
                    let x = activations(nt, cols, &mut rng, exact);
                    let at = ty.vec_dot_type();
                    let (arb, wrb) = (at.row_bytes(cols).unwrap(), ty.row_bytes(cols).unwrap());
                    let mut a = vec![0u8; arb * nt];
                    for (xr, ar) in x.chunks_exact(cols).zip(a.chunks_exact_mut(arb)) {
                        quantize_row_act(at, xr, ar);
                    }
                    // Prepared rows with some slack in the stride, filled with garbage first;
                    // weights as the group of each tile's rows, prepared per tile.
                    let (pwb, pab) = ((pk.w_bytes)(cols) + 64, (pk.a_bytes)(cols) + 192);
                    let mut pw = vec![0xA5u8; pwb * pk.max_r.next_multiple_of(2)];
                    let mut pa = vec![0x5Au8; pab * nt];
                    for t in 0..nt {
                        (pk.prep_a)(cols, &a[t * arb..(t + 1) * arb], &mut pa[t * pab..]);
                    }
                    let mut single = vec![0f32; rows * nt];
                    for r in 0..rows {
                        for t in 0..nt {
                            let mut o = [0f32; 1];
                            (k.f)(cols, 1, 1, &w[r * wrb..], wrb, &a[t * arb..], arb, &mut o);
                            single[r * nt + t] = o[0];
                        }
                    }
                    let what = format!("{} {ty:?} cols {cols} prepared", be.name);
                    let shape = (rows, nt, pk.max_r, pk.max_t);
                    checked += check_every_tile(&what, shape, &single, |nr, ntt, r0, t0, o| {
                        pw.fill(0xA5);
                        (pk.prep_w)(cols, nr, &w[r0 * wrb..], wrb, &mut pw, pwb);
                        (pk.f)(cols, nr, ntt, &pw, pwb, &pa[t0 * pab..], pab, o)
                    });
                }
            }
        }
    }
    eprintln!("{checked} prepared tiles checked");
}

#[test]
fn fast_dots_match_reference_within_tolerance() {
    for be in available_backends() {
        check_backend_dots(be, false);
    }
}

#[test]
fn fast_dots_are_exact_when_arithmetic_is_exact() {
    for be in available_backends() {
        check_backend_dots(be, true);
    }
}

/// The 32-element block and K-quant kernels of every SIMD backend reproduce ggml's x86 float
/// arithmetic (the AVX2 backend's kernels follow it op for op), so they agree bit for bit.
#[test]
fn ggml_exact_kernels_agree_across_simd_backends() {
    let simd: Vec<&Backend> = available_backends()
        .into_iter()
        .filter(|b| b.name != "scalar")
        .collect();
    eprintln!("comparing {} SIMD backends", simd.len());
    let mut rng = Rng(99);
    // Every block-quantized weight type.
    for ty in WEIGHT_TYPES.into_iter().filter(|t| t.block_size() > 1) {
        for &cols in col_counts(ty) {
            let (rows, nt) = (6, 5);
            let w = weights(ty, rows, cols, &mut rng, false);
            let x = activations(nt, cols, &mut rng, false);
            let at = ty.vec_dot_type();
            let (arb, wrb) = (at.row_bytes(cols).unwrap(), ty.row_bytes(cols).unwrap());
            let mut a = vec![0u8; arb * nt];
            for (xr, ar) in x.chunks_exact(cols).zip(a.chunks_exact_mut(arb)) {
                quantize_row_act(at, xr, ar);
            }
            let results: Vec<Vec<u32>> = simd
                .iter()
                .map(|be| {
                    let k = (be.tile)(ty);
                    let mut v = Vec::new();
                    for r in 0..rows {
                        for t in 0..nt {
                            let mut o = [0f32; 1];
                            (k.f)(cols, 1, 1, &w[r * wrb..], wrb, &a[t * arb..], arb, &mut o);
                            v.push(o[0].to_bits());
                        }
                    }
                    v
                })
                .collect();
            for (be, got) in simd.iter().zip(&results).skip(1) {
                assert_eq!(
                    got, &results[0],
                    "{} vs {} {ty:?} cols {cols}",
                    be.name, simd[0].name
                );
            }
        }
    }
}

#[test]
fn fast_quantizers_are_bit_identical() {
    let mut rng = Rng(77);
    for be in available_backends() {
        for ty in [
            GgmlType::Q8_0,
            GgmlType::Q8_1,
            GgmlType::Q8K,
            GgmlType::F16,
            GgmlType::BF16,
            GgmlType::F32,
        ] {
            for case in 0..6 {
                let n = 512;
                let x: Vec<f32> = match case {
                    // Halfway cases: amax 127 makes the scale 1, so x.5 values round.
                    0 => (0..n)
                        .map(|i| {
                            if i % 32 == 0 {
                                127.0
                            } else {
                                ((i % 50) as f32 - 25.0) + 0.5
                            }
                        })
                        .collect(),
                    1 => vec![0.0; n],
                    2 => (0..n)
                        .map(|i| if i % 3 == 0 { -0.0 } else { 1e-30 * rng.f() })
                        .collect(),
                    3 => (0..n).map(|_| rng.f() * 1000.0).collect(),
                    // Ties in magnitude with both signs (Q8_K keeps the first).
                    4 => (0..n)
                        .map(|i| {
                            if i % 7 == 0 {
                                3.0
                            } else if i % 5 == 0 {
                                -3.0
                            } else {
                                rng.f()
                            }
                        })
                        .collect(),
                    _ => (0..n).map(|_| rng.f()).collect(),
                };
                let mut want = vec![0u8; ty.row_bytes(n).unwrap()];
                let mut got = want.clone();
                quantize_row_act(ty, &x, &mut want);
                (be.quant)(ty, &x, &mut got);
                assert_eq!(want, got, "{} {ty:?} case {case}", be.name);
            }
        }
    }
}

/// The 16-bit float quantizers over ragged lengths (SIMD body and tail) and special values:
/// halfway cases of f16 rounding, subnormals, overflow to infinity, infinities and NaN.
#[test]
fn fast_half_quantizers_are_bit_identical_on_ragged_rows() {
    let mut rng = Rng(78);
    let special = [
        0.0,
        -0.0,
        1.0 + 1.0 / 2048.0,
        1.0 + 3.0 / 2048.0,
        -(1.0 + 1.0 / 2048.0),
        65504.0,
        65520.0,
        70000.0,
        -1e9,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        5.96e-8,
        2.98e-8,
        1e-6,
        -6.1e-5,
    ];
    for be in available_backends() {
        for ty in [GgmlType::F16, GgmlType::BF16] {
            for n in (1..=40).chain([63, 64, 65, 577]) {
                let x: Vec<f32> = (0..n)
                    .map(|i| {
                        if i % 3 == 0 {
                            special[(rng.next() as usize) % special.len()]
                        } else {
                            rng.f() * 100.0
                        }
                    })
                    .collect();
                let mut want = vec![0u8; 2 * n];
                let mut got = vec![0xEEu8; 2 * n];
                quantize_row_act(ty, &x, &mut want);
                (be.quant)(ty, &x, &mut got);
                assert_eq!(want, got, "{} {ty:?} n {n}", be.name);
            }
        }
    }
}

#[test]
fn matmul_is_batch_invariant_for_every_backend_and_type() {
    let pool = ThreadPool::new(2);
    let mut rng = Rng(4321);
    for be in available_backends() {
        for ty in WEIGHT_TYPES {
            for &cols in col_counts(ty) {
                for rows in [1, 5, 13, 67] {
                    let data = weights(ty, rows, cols, &mut rng, false);
                    let w = Matrix::new(ty, rows, cols, &data).unwrap();
                    for n in [2, 7, 8, 70] {
                        let x = activations(n, cols, &mut rng, false);
                        let mut out = vec![0f32; n * rows];
                        let mut s = MatmulScratch::default();
                        matmul_with(be, &pool, &w, &x, n, &mut out, &mut s);
                        for t in 0..n {
                            let mut one = vec![0f32; rows];
                            matmul_with(
                                be,
                                &pool,
                                &w,
                                &x[t * cols..(t + 1) * cols],
                                1,
                                &mut one,
                                &mut s,
                            );
                            let got: Vec<u32> = out[t * rows..(t + 1) * rows]
                                .iter()
                                .map(|v| v.to_bits())
                                .collect();
                            let want: Vec<u32> = one.iter().map(|v| v.to_bits()).collect();
                            assert_eq!(
                                got, want,
                                "{} {ty:?} {rows}x{cols} n {n} token {t}",
                                be.name
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn simd_backends_are_detected_where_available() {
    let names: Vec<&str> = available_backends().iter().map(|b| b.name).collect();
    eprintln!(
        "backends: {names:?}, in use: {}",
        crate::dot::backend_name()
    );
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        assert!(names.contains(&"avx2"));
    }
}

/// Every backend's tiles of `ty` over all `rows` × `nt` pairs of the weight rows `w` and the
/// quantized activation rows `a` (rows of `cols` elements), as result bits in row-major order.
fn tile_bits(
    be: &Backend,
    ty: GgmlType,
    cols: usize,
    rows: usize,
    nt: usize,
    w: &[u8],
    a: &[u8],
) -> Vec<u32> {
    let (wrb, arb) = (
        ty.row_bytes(cols).unwrap(),
        ty.vec_dot_type().row_bytes(cols).unwrap(),
    );
    let k = (be.tile)(ty);
    let mut got = vec![0u32; rows * nt];
    for r0 in (0..rows).step_by(k.max_r) {
        for t0 in (0..nt).step_by(k.max_t) {
            let (nr, ntt) = (k.max_r.min(rows - r0), k.max_t.min(nt - t0));
            let mut o = vec![0f32; nr * ntt];
            (k.f)(
                cols,
                nr,
                ntt,
                &w[r0 * wrb..],
                wrb,
                &a[t0 * arb..],
                arb,
                &mut o,
            );
            for i in 0..nr {
                for j in 0..ntt {
                    got[(r0 + i) * nt + t0 + j] = o[i * ntt + j].to_bits();
                }
            }
        }
    }
    got
}

/// A golden file of `tests/data`, read front to back: a 4-byte magic, then little-endian
/// `u32` fields and byte runs.
struct Golden {
    data: Vec<u8>,
    pos: usize,
}

impl Golden {
    fn open(name: &str, magic: &[u8; 4]) -> Self {
        let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
        let data = std::fs::read(&path).unwrap();
        assert_eq!(&data[..4], magic, "{path}");
        Self { data, pos: 4 }
    }
    fn take(&mut self, n: usize) -> Vec<u8> {
        let v = self.data[self.pos..self.pos + n].to_vec();
        self.pos += n;
        v
    }
    /// `n` little-endian 32-bit words.
    fn words(&mut self, n: usize) -> Vec<u32> {
        self.take(4 * n)
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }
    fn u32(&mut self) -> usize {
        self.words(1)[0] as usize
    }
    /// Every byte was read.
    fn finish(&self) {
        assert_eq!(self.pos, self.data.len());
    }
}

/// llama.cpp's own results (`tests/data/ggml_dots.bin`, made by `scripts/goldens/ggml_dots.c`
/// from the libggml-cpu.so the fidelity goldens came from): random rows of every block weight
/// type, activations quantized by ggml-cpu's x86 `quantize_row_q8_*`, and for every (row,
/// token) pair the result of `ggml_vec_dot_*` (llama.cpp's single-token path) and, for
/// Q4_0/Q5_0/Q8_0, of `llamafile_sgemm` (tinyBLAS, its batched path). Every backend's tiles
/// of the 32-element block types must give these bits, and so must the scalar reference
/// (whose float ops follow ggml's x86 order); the quantizers must give ggml's bytes.
///
/// The K-quants (Q4_K, Q5_K, Q6_K) follow llama.cpp's *tiled* matmul instead, the path it
/// takes for batches (`tests/data/ggml_tiled.bin`, made by `scripts/goldens/ggml_tiled.c`
/// through a real ggml graph, ragged rows and tokens): every backend's tiles and the scalar
/// reference must give those bits, for every token count.
#[test]
fn kernels_give_llama_cpp_bits() {
    let mut g = Golden::open("ggml_dots.bin", b"FGD1");
    let count = g.u32();
    let mut seen = Vec::new();
    for _ in 0..count {
        let id = g.u32();
        let (rows, nt, cols, has_gemm) = (g.u32(), g.u32(), g.u32(), g.u32() == 1);
        let ty = GgmlType::from_id(id as u32).unwrap();
        let at = ty.vec_dot_type();
        let (wrb, arb) = (ty.row_bytes(cols).unwrap(), at.row_bytes(cols).unwrap());
        let w = g.take(wrb * rows);
        let x: Vec<f32> = g.words(cols * nt).into_iter().map(f32::from_bits).collect();
        let qa = g.take(arb * nt);
        let want = g.words(rows * nt);
        if has_gemm {
            assert_eq!(g.words(rows * nt), want, "{ty:?}: ggml's sgemm vs vec_dot");
        }
        let mut a = vec![0u8; arb * nt];
        for (xr, ar) in x.chunks_exact(cols).zip(a.chunks_exact_mut(arb)) {
            quantize_row_act(at, xr, ar);
        }
        assert!(a == qa, "{ty:?}: {at:?} activations differ from ggml's");
        if ty.block_size() != 32 {
            continue; // K-quants: the tiled goldens below
        }
        for be in available_backends() {
            let got = tile_bits(be, ty, cols, rows, nt, &w, &a);
            assert_eq!(got, want, "{} {ty:?}: tiles vs llama.cpp", be.name);
            if be.name == "scalar" {
                let r: Vec<u32> = (0..rows * nt)
                    .map(|i| {
                        let (r, t) = (i / nt, i % nt);
                        let (wr, ar) = (&w[r * wrb..][..wrb], &a[t * arb..][..arb]);
                        vec_dot_ref(ty, cols, wr, ar).to_bits()
                    })
                    .collect();
                assert_eq!(r, want, "{ty:?}: vec_dot_ref vs llama.cpp");
            }
        }
        seen.push(ty);
    }
    g.finish();
    eprintln!("llama.cpp bits reproduced for {seen:?}");

    let mut g = Golden::open("ggml_tiled.bin", b"FGT1");
    let count = g.u32();
    let mut seen = Vec::new();
    for _ in 0..count {
        let id = g.u32();
        let (rows, nt, cols) = (g.u32(), g.u32(), g.u32());
        let ty = GgmlType::from_id(id as u32).unwrap();
        let (wrb, arb) = (
            ty.row_bytes(cols).unwrap(),
            GgmlType::Q8K.row_bytes(cols).unwrap(),
        );
        let (w, a) = (g.take(wrb * rows), g.take(arb * nt));
        let want = g.words(rows * nt);
        for be in available_backends() {
            let got = tile_bits(be, ty, cols, rows, nt, &w, &a);
            let same = got.iter().zip(&want).filter(|(g, w)| g == w).count();
            assert!(
                got == want,
                "{} {ty:?} {rows}x{nt}x{cols}: tiles vs llama.cpp's tiled matmul, {same}/{} equal",
                be.name,
                want.len()
            );
        }
        let r: Vec<u32> = (0..rows * nt)
            .map(|i| {
                let (r, t) = (i / nt, i % nt);
                vec_dot_ref(ty, cols, &w[r * wrb..][..wrb], &a[t * arb..][..arb]).to_bits()
            })
            .collect();
        assert_eq!(r, want, "{ty:?}: vec_dot_ref vs llama.cpp's tiled matmul");
        seen.push((ty, rows, nt, cols));
    }
    g.finish();
    eprintln!("llama.cpp's tiled bits reproduced for {seen:?}");
}
