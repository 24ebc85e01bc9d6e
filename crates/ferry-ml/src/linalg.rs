//! Dense kernels for training: register-blocked matrix products in safe,
//! portable Rust.
//!
//! Every output element is accumulated in a fixed order (ascending over the
//! shared dimension, starting from the value already in the output), so the
//! results do not depend on the blocking, on the CPU's vector width or on
//! the number of rows in a call: the same inputs give the same bits, which
//! keeps training deterministic. No fused multiply-add is used (Rust never
//! contracts `a * b + c` on its own).

/// Rows per block.
const MR: usize = 4;
/// Columns per block.
const NR: usize = 8;

/// `c[i][j] += Σ_k a[i][k] · b[k][j]` for `a` (`m × kd`), `b` (`kd × n`),
/// `c` (`m × n`), all row-major; `k` ascends for every element.
pub(crate) fn matmul_acc(a: &[f64], b: &[f64], c: &mut [f64], m: usize, kd: usize, n: usize) {
    debug_assert!(a.len() >= m * kd && b.len() >= kd * n && c.len() >= m * n);
    let mut i = 0;
    while i + MR <= m {
        let mut j = 0;
        while j + NR <= n {
            let mut acc = [[0.0f64; NR]; MR];
            for (r, row) in acc.iter_mut().enumerate() {
                row.copy_from_slice(&c[(i + r) * n + j..(i + r) * n + j + NR]);
            }
            for k in 0..kd {
                let bk: &[f64; NR] = b[k * n + j..k * n + j + NR].try_into().unwrap();
                for (r, row) in acc.iter_mut().enumerate() {
                    let x = a[(i + r) * kd + k];
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
        if j < n {
            for r in i..i + MR {
                row_tail(
                    &a[r * kd..(r + 1) * kd],
                    b,
                    &mut c[r * n..(r + 1) * n],
                    j,
                    n,
                );
            }
        }
        i += MR;
    }
    for r in i..m {
        row_tail(
            &a[r * kd..(r + 1) * kd],
            b,
            &mut c[r * n..(r + 1) * n],
            0,
            n,
        );
    }
}

/// One row of [`matmul_acc`] for columns `j0..n` (`k` ascending).
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
    m: usize,
    kd: usize,
    n: usize,
    s: f64,
) {
    debug_assert!(a.len() >= m * kd && d.len() >= m * n && c.len() >= kd * n);
    let mut k = 0;
    while k + MR <= kd {
        let mut j = 0;
        while j + NR <= n {
            let mut acc = [[0.0f64; NR]; MR];
            for (r, row) in acc.iter_mut().enumerate() {
                row.copy_from_slice(&c[(k + r) * n + j..(k + r) * n + j + NR]);
            }
            for i in 0..m {
                let di: &[f64; NR] = d[i * n + j..i * n + j + NR].try_into().unwrap();
                for (r, row) in acc.iter_mut().enumerate() {
                    let x = a[i * kd + k + r] * s;
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
        if j < n {
            at_tail(a, d, c, (m, kd, n), k..k + MR, j, s);
        }
        k += MR;
    }
    at_tail(a, d, c, (m, kd, n), k..kd, 0, s);
}

/// Rows `ks` of [`matmul_at_b_acc`] for columns `j0..n` (`i` ascending).
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
            matmul_at_b_acc(&a, &d, &mut g, m, kd, n, 0.25);
            let at: Vec<f64> = transpose(&a, m, kd).iter().map(|x| x * 0.25).collect();
            let want = reference(&at, &d, &g0, kd, m, n);
            assert!(
                g.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits()),
                "at {m}x{kd}x{n}"
            );
        }
    }
}
