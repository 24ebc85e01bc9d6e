//! Dense kernels for training: register-blocked matrix products in portable
//! Rust, with an AVX2 instance of the same code picked at run time.
//!
//! Every output element is accumulated in a fixed order (ascending over the
//! shared dimension, starting from the value already in the output), so the
//! results do not depend on the blocking, on the CPU's vector width or on
//! the number of rows in a call: the same inputs give the same bits, which
//! keeps training deterministic. No fused multiply-add is used (Rust never
//! contracts `a * b + c` on its own), so the AVX2 path (picked at run time)
//! and the portable SSE2 path give identical results.

/// `c[i][j] += Σ_k a[i][k] · b[k][j]` for `a` (`m × kd`), `b` (`kd × n`),
/// `c` (`m × n`), all row-major; `k` ascends for every element.
pub(crate) fn matmul_acc(a: &[f64], b: &[f64], c: &mut [f64], m: usize, kd: usize, n: usize) {
    assert!(a.len() >= m * kd && b.len() >= kd * n && c.len() >= m * n);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above), the only requirement
        // of this function; it performs the same operations in the same
        // order as the portable path, so the results are identical.
        unsafe { matmul_acc_avx2(a, b, c, m, kd, n) };
        return;
    }
    matmul_acc_blocked::<4, 4>(a, b, c, m, kd, n);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn matmul_acc_avx2(a: &[f64], b: &[f64], c: &mut [f64], m: usize, kd: usize, n: usize) {
    matmul_acc_blocked::<4, 8>(a, b, c, m, kd, n);
}

/// [`matmul_acc`] in `MR × NR` register blocks, then narrower blocks for
/// the last columns and single rows for the last rows.
#[inline(always)]
fn matmul_acc_blocked<const MR: usize, const NR: usize>(
    a: &[f64],
    b: &[f64],
    c: &mut [f64],
    m: usize,
    kd: usize,
    n: usize,
) {
    let j = acc_cols::<MR, NR>(a, b, c, (m, kd, n), 0);
    let j = acc_cols::<MR, 4>(a, b, c, (m, kd, n), j);
    let j = acc_cols::<MR, 2>(a, b, c, (m, kd, n), j);
    acc_cols::<MR, 1>(a, b, c, (m, kd, n), j);
    for r in m - m % MR..m {
        row_tail(
            &a[r * kd..(r + 1) * kd],
            b,
            &mut c[r * n..(r + 1) * n],
            0,
            n,
        );
    }
}

/// Whole `MR`-row blocks of [`matmul_acc`] over the `NR`-wide column blocks
/// that fit from `j0`; returns the first column not done.
#[inline(always)]
fn acc_cols<const MR: usize, const NR: usize>(
    a: &[f64],
    b: &[f64],
    c: &mut [f64],
    (m, kd, n): (usize, usize, usize),
    j0: usize,
) -> usize {
    let j_end = j0 + (n - j0) / NR * NR;
    let mut i = 0;
    while i + MR <= m {
        let rows: [&[f64]; MR] = std::array::from_fn(|r| &a[(i + r) * kd..(i + r + 1) * kd]);
        let mut j = j0;
        while j < j_end {
            let mut acc = [[0.0f64; NR]; MR];
            for (r, row) in acc.iter_mut().enumerate() {
                row.copy_from_slice(&c[(i + r) * n + j..(i + r) * n + j + NR]);
            }
            for k in 0..kd {
                let bk: &[f64; NR] = b[k * n + j..k * n + j + NR].try_into().unwrap();
                for (row, ar) in acc.iter_mut().zip(&rows) {
                    let x = ar[k];
                    for (cv, bv) in row.iter_mut().zip(bk) {
                        *cv += x * bv;
                    }
                }
            }
            for (r, row) in acc.iter().enumerate() {
                c[(i + r) * n + j..(i + r) * n + j + NR].copy_from_slice(row);
            }
            j += NR;
        }
        i += MR;
    }
    j_end
}

/// One row of [`matmul_acc`] for columns `j0..n` (`k` ascending).
#[inline(always)]
fn row_tail(a_row: &[f64], b: &[f64], c_row: &mut [f64], j0: usize, n: usize) {
    let out = &mut c_row[j0..n];
    for (k, &x) in a_row.iter().enumerate() {
        let bk = &b[k * n + j0..k * n + n];
        for (cv, bv) in out.iter_mut().zip(bk) {
            *cv += x * bv;
        }
    }
}

/// `c[k][j] += Σ_i (a[i][k] · s) · d[i][j]` (`aᵀ·d` scaled), for `a`
/// (`m × kd`), `d` (`m × n`), `c` (`kd × n`); `i` ascends for every element.
pub(crate) fn matmul_at_b_acc(
    a: &[f64],
    d: &[f64],
    c: &mut [f64],
    (m, kd, n): (usize, usize, usize),
    s: f64,
) {
    assert!(a.len() >= m * kd && d.len() >= m * n && c.len() >= kd * n);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: as in `matmul_acc`.
        unsafe { matmul_at_b_acc_avx2(a, d, c, (m, kd, n), s) };
        return;
    }
    matmul_at_b_acc_blocked::<4, 4>(a, d, c, (m, kd, n), s);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn matmul_at_b_acc_avx2(
    a: &[f64],
    d: &[f64],
    c: &mut [f64],
    dims: (usize, usize, usize),
    s: f64,
) {
    matmul_at_b_acc_blocked::<4, 8>(a, d, c, dims, s);
}

/// [`matmul_at_b_acc`] in `MR × NR` register blocks, then narrower blocks
/// for the last columns and single rows for the last rows of `c`.
#[inline(always)]
fn matmul_at_b_acc_blocked<const MR: usize, const NR: usize>(
    a: &[f64],
    d: &[f64],
    c: &mut [f64],
    dims: (usize, usize, usize),
    s: f64,
) {
    let j = at_cols::<MR, NR>(a, d, c, dims, 0, s);
    let j = at_cols::<MR, 4>(a, d, c, dims, j, s);
    let j = at_cols::<MR, 2>(a, d, c, dims, j, s);
    at_cols::<MR, 1>(a, d, c, dims, j, s);
    let kd = dims.1;
    at_tail(a, d, c, dims, kd - kd % MR..kd, 0, s);
}

/// Whole `MR`-row blocks of `c` in [`matmul_at_b_acc`] over the `NR`-wide
/// column blocks that fit from `j0`; returns the first column not done.
#[inline(always)]
fn at_cols<const MR: usize, const NR: usize>(
    a: &[f64],
    d: &[f64],
    c: &mut [f64],
    (m, kd, n): (usize, usize, usize),
    j0: usize,
    s: f64,
) -> usize {
    let j_end = j0 + (n - j0) / NR * NR;
    let mut k = 0;
    while k + MR <= kd {
        let mut j = j0;
        while j < j_end {
            let mut acc = [[0.0f64; NR]; MR];
            for (r, row) in acc.iter_mut().enumerate() {
                row.copy_from_slice(&c[(k + r) * n + j..(k + r) * n + j + NR]);
            }
            for i in 0..m {
                let di: &[f64; NR] = d[i * n + j..i * n + j + NR].try_into().unwrap();
                let ai: &[f64; MR] = a[i * kd + k..i * kd + k + MR].try_into().unwrap();
                for (row, &av) in acc.iter_mut().zip(ai) {
                    let x = av * s;
                    for (cv, dv) in row.iter_mut().zip(di) {
                        *cv += x * dv;
                    }
                }
            }
            for (r, row) in acc.iter().enumerate() {
                c[(k + r) * n + j..(k + r) * n + j + NR].copy_from_slice(row);
            }
            j += NR;
        }
        k += MR;
    }
    j_end
}

/// Rows `ks` of [`matmul_at_b_acc`] for columns `j0..n` (`i` ascending).
#[inline(always)]
fn at_tail(
    a: &[f64],
    d: &[f64],
    c: &mut [f64],
    (m, kd, n): (usize, usize, usize),
    ks: std::ops::Range<usize>,
    j0: usize,
    s: f64,
) {
    for k in ks {
        let out = &mut c[k * n + j0..k * n + n];
        for i in 0..m {
            let x = a[i * kd + k] * s;
            let di = &d[i * n + j0..i * n + n];
            for (cv, dv) in out.iter_mut().zip(di) {
                *cv += x * dv;
            }
        }
    }
}

/// `bᵀ` of a row-major `rows × cols` matrix (`cols × rows`).
pub(crate) fn transpose(b: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut t = vec![0.0; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = b[r * cols + c];
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain triple loop the kernels must reproduce bit for bit.
    fn reference(a: &[f64], b: &[f64], c0: &[f64], m: usize, kd: usize, n: usize) -> Vec<f64> {
        let mut c = c0.to_vec();
        for i in 0..m {
            for j in 0..n {
                let mut s = c[i * n + j];
                for k in 0..kd {
                    s += a[i * kd + k] * b[k * n + j];
                }
                c[i * n + j] = s;
            }
        }
        c
    }

    fn values(len: usize, seed: u64) -> Vec<f64> {
        let mut rng = crate::split::RandomState::from_u64(seed);
        (0..len).map(|_| rng.normal(0.0, 1.0)).collect()
    }

    #[test]
    fn blocked_products_match_the_plain_loops_bit_for_bit() {
        for &(m, kd, n) in &[
            (1, 1, 1),
            (3, 5, 7),
            (4, 8, 8),
            (9, 13, 17),
            (33, 30, 1),
            (17, 64, 10),
        ] {
            let a = values(m * kd, 1);
            let b = values(kd * n, 2);
            let c0 = values(m * n, 3);
            let mut c = c0.clone();
            matmul_acc(&a, &b, &mut c, m, kd, n);
            let want = reference(&a, &b, &c0, m, kd, n);
            assert!(
                c.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{m}x{kd}x{n}"
            );

            // aᵀ·d with a scale: the same as the plain loop over (a·s)ᵀ.
            let d = values(m * n, 4);
            let g0 = values(kd * n, 5);
            let mut g = g0.clone();
            matmul_at_b_acc(&a, &d, &mut g, (m, kd, n), 0.25);
            let at: Vec<f64> = transpose(&a, m, kd).iter().map(|x| x * 0.25).collect();
            let want = reference(&at, &d, &g0, kd, m, n);
            assert!(
                g.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits()),
                "at {m}x{kd}x{n}"
            );
        }
    }
}
