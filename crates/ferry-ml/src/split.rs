//! Reproducible data splitting, bit-compatible with numpy and scikit-learn.
//!
//! [`RandomState`] is a port of numpy's legacy `numpy.random.RandomState`
//! (MT19937 seeded with `init_genrand` for an integer seed or `init_by_array`
//! for an array seed, 53-bit `random_sample`, masked-rejection bounded
//! integers, the Fisher–Yates `shuffle` numpy uses, and the polar-method
//! `standard_normal`). `RandomState::new(s).permutation(n)` returns exactly
//! what `numpy.random.RandomState(s).permutation(n)` returns.
//!
//! On top of it, [`train_test_split`] selects exactly the rows that
//! scikit-learn 1.9.1's `train_test_split` selects (through `ShuffleSplit`
//! or `StratifiedShuffleSplit`, including `_approximate_mode`'s random
//! tie-breaking), and [`kfold`], [`stratified_kfold`], [`leave_one_out`]
//! return the same folds as `KFold`, `StratifiedKFold` and `LeaveOneOut`.
//! [`train_val_test_split`] does two successive splits and [`bootstrap`]
//! draws seeded resamples with their out-of-bag rows.

use serde::{Deserialize, Serialize};

use crate::error::{invalid, MlError, Result};

const N: usize = 624;
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// numpy's legacy `RandomState` (MT19937), reproduced bit for bit.
#[derive(Clone, Serialize, Deserialize)]
pub struct RandomState {
    key: Vec<u32>,
    pos: usize,
    gauss: Option<f64>,
}

impl std::fmt::Debug for RandomState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RandomState")
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

impl RandomState {
    /// `numpy.random.RandomState(seed)` for an integer seed.
    pub fn new(seed: u32) -> Self {
        let mut key = vec![0u32; N];
        let mut s = seed;
        for (pos, k) in key.iter_mut().enumerate() {
            *k = s;
            s = 1_812_433_253u32
                .wrapping_mul(s ^ (s >> 30))
                .wrapping_add(pos as u32 + 1);
        }
        RandomState {
            key,
            pos: N,
            gauss: None,
        }
    }

    /// `numpy.random.RandomState([k0, k1, ...])` (MT19937 `init_by_array`).
    /// An empty key is rejected, as numpy does.
    pub fn from_key(init_key: &[u32]) -> Result<Self> {
        if init_key.is_empty() {
            return Err(invalid("seed key must be non-empty"));
        }
        let mut st = RandomState::new(19_650_218);
        let mt = &mut st.key;
        let mut i = 1usize;
        let mut j = 0usize;
        let mut k = N.max(init_key.len());
        while k > 0 {
            mt[i] = (mt[i] ^ (mt[i - 1] ^ (mt[i - 1] >> 30)).wrapping_mul(1_664_525))
                .wrapping_add(init_key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
            if j >= init_key.len() {
                j = 0;
            }
            k -= 1;
        }
        k = N - 1;
        while k > 0 {
            mt[i] = (mt[i] ^ (mt[i - 1] ^ (mt[i - 1] >> 30)).wrapping_mul(1_566_083_941))
                .wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
            k -= 1;
        }
        mt[0] = 0x8000_0000;
        st.pos = N;
        st.gauss = None;
        Ok(st)
    }

    /// A generator from a 64-bit seed: integer seeding when it fits in 32 bits
    /// (identical to `RandomState(seed)`), otherwise `init_by_array([lo, hi])`.
    pub fn from_u64(seed: u64) -> Self {
        match u32::try_from(seed) {
            Ok(s) => RandomState::new(s),
            Err(_) => RandomState::from_key(&[seed as u32, (seed >> 32) as u32])
                .unwrap_or_else(|_| RandomState::new(0)),
        }
    }

    fn generate(&mut self) {
        let key = &mut self.key;
        let mix = |a: u32, b: u32| (a & UPPER_MASK) | (b & LOWER_MASK);
        let twist = |y: u32| (y >> 1) ^ (0u32.wrapping_sub(y & 1) & MATRIX_A);
        for i in 0..N - M {
            let y = mix(key[i], key[i + 1]);
            key[i] = key[i + M] ^ twist(y);
        }
        for i in N - M..N - 1 {
            let y = mix(key[i], key[i + 1]);
            key[i] = key[i + M - N] ^ twist(y);
        }
        let y = mix(key[N - 1], key[0]);
        key[N - 1] = key[M - 1] ^ twist(y);
        self.pos = 0;
    }

    /// Next raw 32-bit output (tempered).
    pub fn next_u32(&mut self) -> u32 {
        if self.pos >= N {
            self.generate();
        }
        let mut y = self.key[self.pos];
        self.pos += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    /// Next 64-bit output (high word drawn first, as numpy does).
    pub fn next_u64(&mut self) -> u64 {
        let hi = self.next_u32() as u64;
        let lo = self.next_u32() as u64;
        (hi << 32) | lo
    }

    /// `random_sample()`: a double in `[0, 1)` with 53 random bits.
    pub fn random_sample(&mut self) -> f64 {
        let a = (self.next_u32() >> 5) as f64;
        let b = (self.next_u32() >> 6) as f64;
        (a * 67_108_864.0 + b) / 9_007_199_254_740_992.0
    }

    /// Uniform in `[low, high)`: `low + (high - low) * random_sample()`.
    pub fn uniform(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.random_sample()
    }

    /// `standard_normal()` (legacy polar Box–Muller with a cached value).
    pub fn standard_normal(&mut self) -> f64 {
        if let Some(g) = self.gauss.take() {
            return g;
        }
        loop {
            let x1 = 2.0 * self.random_sample() - 1.0;
            let x2 = 2.0 * self.random_sample() - 1.0;
            let r2 = x1 * x1 + x2 * x2;
            if r2 >= 1.0 || r2 == 0.0 {
                continue;
            }
            let f = (-2.0 * r2.ln() / r2).sqrt();
            self.gauss = Some(f * x1);
            return f * x2;
        }
    }

    /// `normal(loc, scale)`.
    pub fn normal(&mut self, loc: f64, scale: f64) -> f64 {
        loc + scale * self.standard_normal()
    }

    /// numpy's `random_interval(max)`: uniform integer in `[0, max]` by
    /// masked rejection sampling (used by `shuffle`).
    pub fn interval(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let mask = mask_for(max);
        if max <= u32::MAX as u64 {
            loop {
                let v = (self.next_u32() as u64) & mask;
                if v <= max {
                    return v;
                }
            }
        } else {
            loop {
                let v = self.next_u64() & mask;
                if v <= max {
                    return v;
                }
            }
        }
    }

    /// `randint(low, high)`: uniform integer in `[low, high)`, using numpy's
    /// legacy masked bounded-integer algorithm. Errors if `low >= high`.
    pub fn randint(&mut self, low: i64, high: i64) -> Result<i64> {
        if low >= high {
            return Err(invalid(format!("randint: low ({low}) >= high ({high})")));
        }
        let rng = (high as i128 - 1 - low as i128) as u64;
        Ok(low.wrapping_add(self.bounded_u64(rng) as i64))
    }

    /// `randint(low, high, size=n)`.
    pub fn randint_n(&mut self, low: i64, high: i64, n: usize) -> Result<Vec<i64>> {
        (0..n).map(|_| self.randint(low, high)).collect()
    }

    fn bounded_u64(&mut self, rng: u64) -> u64 {
        if rng == 0 {
            0
        } else if rng <= u32::MAX as u64 {
            if rng == u32::MAX as u64 {
                return self.next_u32() as u64;
            }
            let mask = mask_for(rng);
            loop {
                let v = (self.next_u32() as u64) & mask;
                if v <= rng {
                    return v;
                }
            }
        } else {
            if rng == u64::MAX {
                return self.next_u64();
            }
            let mask = mask_for(rng);
            loop {
                let v = self.next_u64() & mask;
                if v <= rng {
                    return v;
                }
            }
        }
    }

    /// In-place `shuffle` (numpy's legacy Fisher–Yates from the end).
    pub fn shuffle<T>(&mut self, x: &mut [T]) {
        for i in (1..x.len()).rev() {
            let j = self.interval(i as u64) as usize;
            x.swap(i, j);
        }
    }

    /// `permutation(n)`: a shuffled `0..n`.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..n).collect();
        self.shuffle(&mut v);
        v
    }

    /// `permutation(array)`: a shuffled copy.
    pub fn permuted<T: Clone>(&mut self, x: &[T]) -> Vec<T> {
        let mut v = x.to_vec();
        self.shuffle(&mut v);
        v
    }

    /// `choice(pop_size, size, replace=False)` without probabilities:
    /// `permutation(pop_size)[:size]`, as numpy's legacy implementation does.
    pub fn choice_without_replacement(
        &mut self,
        pop_size: usize,
        size: usize,
    ) -> Result<Vec<usize>> {
        if size > pop_size {
            return Err(invalid(
                "cannot take a larger sample than population when replace=False",
            ));
        }
        let mut p = self.permutation(pop_size);
        p.truncate(size);
        Ok(p)
    }
}

fn mask_for(max: u64) -> u64 {
    let mut mask = max;
    mask |= mask >> 1;
    mask |= mask >> 2;
    mask |= mask >> 4;
    mask |= mask >> 8;
    mask |= mask >> 16;
    mask |= mask >> 32;
    mask
}

/// A split size: a fraction of the samples in `(0, 1)` or an absolute count.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SplitSize {
    /// Absolute number of samples.
    Count(usize),
    /// Fraction of the samples, in `(0, 1)`.
    Fraction(f64),
}

/// Training and test row indices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainTest {
    /// Training rows.
    pub train: Vec<usize>,
    /// Test (held-out) rows.
    pub test: Vec<usize>,
}

/// Port of scikit-learn's `_validate_shuffle_split`: returns `(n_train, n_test)`.
pub fn validate_shuffle_split(
    n_samples: usize,
    test_size: Option<SplitSize>,
    train_size: Option<SplitSize>,
    default_test_size: f64,
) -> Result<(usize, usize)> {
    let test_size = match (test_size, train_size) {
        (None, None) => Some(SplitSize::Fraction(default_test_size)),
        (t, _) => t,
    };
    let check = |s: Option<SplitSize>, name: &str| -> Result<()> {
        match s {
            Some(SplitSize::Count(c)) if c >= n_samples || c == 0 => Err(invalid(format!(
                "{name}={c} should be either positive and smaller than the number of samples {n_samples} or a float in the (0, 1) range"
            ))),
            Some(SplitSize::Fraction(f)) if !(f > 0.0 && f < 1.0) => Err(invalid(format!(
                "{name}={f} should be either positive and smaller than the number of samples {n_samples} or a float in the (0, 1) range"
            ))),
            _ => Ok(()),
        }
    };
    check(test_size, "test_size")?;
    check(train_size, "train_size")?;
    if let (Some(SplitSize::Fraction(a)), Some(SplitSize::Fraction(b))) = (test_size, train_size) {
        if a + b > 1.0 {
            return Err(invalid(format!(
                "the sum of test_size and train_size = {}, should be in the (0, 1) range",
                a + b
            )));
        }
    }
    let n = n_samples as f64;
    let to_test = |s: SplitSize| match s {
        SplitSize::Fraction(f) => (f * n).ceil(),
        SplitSize::Count(c) => c as f64,
    };
    let to_train = |s: SplitSize| match s {
        SplitSize::Fraction(f) => (f * n).floor(),
        SplitSize::Count(c) => c as f64,
    };
    let (n_train, n_test) = match (train_size, test_size) {
        (None, Some(t)) => {
            let nt = to_test(t);
            (n - nt, nt)
        }
        (Some(tr), None) => {
            let ntr = to_train(tr);
            (ntr, n - ntr)
        }
        (Some(tr), Some(t)) => (to_train(tr), to_test(t)),
        (None, None) => unreachable_sizes()?,
    };
    if n_train + n_test > n {
        return Err(invalid(format!(
            "the sum of train_size and test_size = {}, should be smaller than the number of samples {n_samples}",
            n_train + n_test
        )));
    }
    let (n_train, n_test) = (n_train as usize, n_test as usize);
    if n_train == 0 {
        return Err(invalid(format!(
            "with n_samples={n_samples} the resulting train set will be empty"
        )));
    }
    Ok((n_train, n_test))
}

fn unreachable_sizes() -> Result<(f64, f64)> {
    Err(invalid("no split size given"))
}

/// Sorted unique classes and each sample's class index (`np.unique(y, return_inverse=True)`).
pub fn encode_classes<T: Ord + Clone>(y: &[T]) -> (Vec<T>, Vec<usize>) {
    let mut classes: Vec<T> = y.to_vec();
    classes.sort();
    classes.dedup();
    let inv = y
        .iter()
        .map(|v| classes.binary_search(v).unwrap_or(0))
        .collect();
    (classes, inv)
}

/// Port of scikit-learn's `_approximate_mode(class_counts, n_draws, rng)`.
pub fn approximate_mode(
    class_counts: &[usize],
    n_draws: usize,
    rng: &mut RandomState,
) -> Result<Vec<usize>> {
    let total: usize = class_counts.iter().sum();
    if total == 0 {
        return Err(invalid("approximate_mode: empty population"));
    }
    let continuous: Vec<f64> = class_counts
        .iter()
        .map(|&c| c as f64 / total as f64 * n_draws as f64)
        .collect();
    let mut floored: Vec<f64> = continuous.iter().map(|c| c.floor()).collect();
    let fsum: f64 = floored.iter().sum();
    let mut need_to_add = (n_draws as f64 - fsum) as i64;
    if need_to_add > 0 {
        let remainder: Vec<f64> = continuous
            .iter()
            .zip(&floored)
            .map(|(c, f)| c - f)
            .collect();
        let mut values = remainder.clone();
        values.sort_by(|a, b| b.total_cmp(a));
        values.dedup();
        for value in values {
            let inds: Vec<usize> = (0..remainder.len())
                .filter(|&i| remainder[i] == value)
                .collect();
            let add_now = inds.len().min(need_to_add as usize);
            let chosen = rng.choice_without_replacement(inds.len(), add_now)?;
            for c in chosen {
                floored[inds[c]] += 1.0;
            }
            need_to_add -= add_now as i64;
            if need_to_add == 0 {
                break;
            }
        }
    }
    Ok(floored.iter().map(|&f| f as usize).collect())
}

/// Parameters of [`train_test_split`], mirroring scikit-learn's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitOptions {
    /// Test size (default 0.25 when neither size is given).
    pub test_size: Option<SplitSize>,
    /// Train size (default: the complement of the test size).
    pub train_size: Option<SplitSize>,
    /// `random_state` (an integer seed).
    pub random_state: u32,
    /// Shuffle before splitting (default true).
    pub shuffle: bool,
}

impl Default for SplitOptions {
    fn default() -> Self {
        SplitOptions {
            test_size: None,
            train_size: None,
            random_state: 0,
            shuffle: true,
        }
    }
}

impl SplitOptions {
    /// Options with a fractional test size and a seed.
    pub fn test_fraction(test_size: f64, random_state: u32) -> Self {
        SplitOptions {
            test_size: Some(SplitSize::Fraction(test_size)),
            random_state,
            ..Default::default()
        }
    }
}

/// `sklearn.model_selection.train_test_split` over `n` rows.
///
/// `stratify`, when given, holds one label per row (any ordered type).
pub fn train_test_split<T: Ord + Clone>(
    n: usize,
    opts: &SplitOptions,
    stratify: Option<&[T]>,
) -> Result<TrainTest> {
    let (n_train, n_test) = validate_shuffle_split(n, opts.test_size, opts.train_size, 0.25)?;
    if !opts.shuffle {
        if stratify.is_some() {
            return Err(invalid(
                "stratified train/test split is not implemented for shuffle=false",
            ));
        }
        return Ok(TrainTest {
            train: (0..n_train).collect(),
            test: (n_train..n_train + n_test).collect(),
        });
    }
    // sklearn re-validates with integer sizes inside (Stratified)ShuffleSplit.
    let (n_train, n_test) = validate_shuffle_split(
        n,
        Some(SplitSize::Count(n_test)),
        Some(SplitSize::Count(n_train)),
        0.1,
    )?;
    let mut rng = RandomState::new(opts.random_state);
    match stratify {
        None => {
            let perm = rng.permutation(n);
            Ok(TrainTest {
                test: perm[..n_test].to_vec(),
                train: perm[n_test..n_test + n_train].to_vec(),
            })
        }
        Some(y) => stratified_shuffle_split_once(y, n, n_train, n_test, &mut rng),
    }
}

fn stratified_shuffle_split_once<T: Ord + Clone>(
    y: &[T],
    n: usize,
    n_train: usize,
    n_test: usize,
    rng: &mut RandomState,
) -> Result<TrainTest> {
    if y.len() != n {
        return Err(crate::error::shape(format!(
            "stratify has {} labels for {n} rows",
            y.len()
        )));
    }
    let (classes, y_idx) = encode_classes(y);
    let n_classes = classes.len();
    let mut counts = vec![0usize; n_classes];
    for &c in &y_idx {
        counts[c] += 1;
    }
    if counts.iter().any(|&c| c < 2) {
        return Err(MlError::InvalidData(
            "the least populated class in y has only 1 member, which is too few; the minimum number of groups for any class cannot be less than 2".into(),
        ));
    }
    if n_train < n_classes {
        return Err(invalid(format!(
            "the train_size = {n_train} should be greater or equal to the number of classes = {n_classes}"
        )));
    }
    if n_test < n_classes {
        return Err(invalid(format!(
            "the test_size = {n_test} should be greater or equal to the number of classes = {n_classes}"
        )));
    }
    let mut class_indices: Vec<Vec<usize>> = vec![Vec::new(); n_classes];
    for (i, &c) in y_idx.iter().enumerate() {
        class_indices[c].push(i);
    }
    let n_i = approximate_mode(&counts, n_train, rng)?;
    let remaining: Vec<usize> = counts
        .iter()
        .zip(&n_i)
        .map(|(c, k)| c.saturating_sub(*k))
        .collect();
    let t_i = approximate_mode(&remaining, n_test, rng)?;
    let mut train = Vec::with_capacity(n_train);
    let mut test = Vec::with_capacity(n_test);
    for i in 0..n_classes {
        let perm = rng.permutation(counts[i]);
        let idx: Vec<usize> = perm.iter().map(|&p| class_indices[i][p]).collect();
        let a = n_i[i].min(idx.len());
        let b = (a + t_i[i]).min(idx.len());
        train.extend_from_slice(&idx[..a]);
        test.extend_from_slice(&idx[a..b]);
    }
    let train = rng.permuted(&train);
    let test = rng.permuted(&test);
    Ok(TrainTest { train, test })
}

/// Training, validation and test rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainValTest {
    /// Training rows.
    pub train: Vec<usize>,
    /// Validation rows.
    pub validation: Vec<usize>,
    /// Test rows.
    pub test: Vec<usize>,
}

/// Train / validation / test split by fractions, as two successive
/// `train_test_split` calls with the same `random_state`: first the test
/// fraction is held out of all rows, then `val_fraction / (1 - test_fraction)`
/// of the remainder becomes the validation set (stratified on the remaining
/// labels when `stratify` is given). Indices refer to the original rows.
pub fn train_val_test_split<T: Ord + Clone>(
    n: usize,
    val_fraction: f64,
    test_fraction: f64,
    random_state: u32,
    stratify: Option<&[T]>,
) -> Result<TrainValTest> {
    if !(val_fraction > 0.0 && test_fraction > 0.0 && val_fraction + test_fraction < 1.0) {
        return Err(invalid(format!(
            "validation ({val_fraction}) and test ({test_fraction}) fractions must be positive and sum to less than 1"
        )));
    }
    let first = train_test_split(
        n,
        &SplitOptions::test_fraction(test_fraction, random_state),
        stratify,
    )?;
    let rest = first.train;
    let rest_labels: Option<Vec<T>> = match stratify {
        Some(y) => Some(crate::matrix::take(y, &rest)?),
        None => None,
    };
    let frac = val_fraction / (1.0 - test_fraction);
    let second = train_test_split(
        rest.len(),
        &SplitOptions::test_fraction(frac.min(0.999_999), random_state),
        rest_labels.as_deref(),
    )?;
    Ok(TrainValTest {
        train: second.train.iter().map(|&i| rest[i]).collect(),
        validation: second.test.iter().map(|&i| rest[i]).collect(),
        test: first.test,
    })
}

/// A cross-validation fold: training rows and test rows (both ascending).
pub type Fold = TrainTest;

fn folds_from_test_sets(n: usize, tests: Vec<Vec<usize>>) -> Vec<Fold> {
    tests
        .into_iter()
        .map(|mut test| {
            test.sort_unstable();
            let mut mask = vec![false; n];
            for &t in &test {
                mask[t] = true;
            }
            let train = (0..n).filter(|&i| !mask[i]).collect();
            Fold { train, test }
        })
        .collect()
}

/// `KFold(n_splits, shuffle, random_state).split(range(n))`.
pub fn kfold(n: usize, n_splits: usize, shuffle: bool, random_state: u32) -> Result<Vec<Fold>> {
    if n_splits < 2 {
        return Err(invalid(format!(
            "k-fold cross-validation requires at least 2 splits, got {n_splits}"
        )));
    }
    if n_splits > n {
        return Err(invalid(format!(
            "cannot have number of splits n_splits={n_splits} greater than the number of samples: n_samples={n}"
        )));
    }
    let mut indices: Vec<usize> = (0..n).collect();
    if shuffle {
        RandomState::new(random_state).shuffle(&mut indices);
    }
    let mut tests = Vec::with_capacity(n_splits);
    let mut current = 0;
    for k in 0..n_splits {
        let size = n / n_splits + usize::from(k < n % n_splits);
        tests.push(indices[current..current + size].to_vec());
        current += size;
    }
    Ok(folds_from_test_sets(n, tests))
}

/// `StratifiedKFold(n_splits, shuffle, random_state).split(X, y)`.
pub fn stratified_kfold<T: Ord + Clone>(
    y: &[T],
    n_splits: usize,
    shuffle: bool,
    random_state: u32,
) -> Result<Vec<Fold>> {
    let n = y.len();
    if n_splits < 2 {
        return Err(invalid(format!(
            "k-fold cross-validation requires at least 2 splits, got {n_splits}"
        )));
    }
    if n_splits > n {
        return Err(invalid(format!(
            "cannot have number of splits n_splits={n_splits} greater than the number of samples: n_samples={n}"
        )));
    }
    let mut rng = RandomState::new(random_state);
    // Encode classes by order of first appearance.
    let (classes, inv) = encode_classes(y);
    let mut first_seen = vec![usize::MAX; classes.len()];
    for (i, &c) in inv.iter().enumerate() {
        if first_seen[c] == usize::MAX {
            first_seen[c] = i;
        }
    }
    let mut order: Vec<usize> = (0..classes.len()).collect();
    order.sort_by_key(|&c| first_seen[c]);
    let mut rank = vec![0usize; classes.len()];
    for (r, &c) in order.iter().enumerate() {
        rank[c] = r;
    }
    let y_enc: Vec<usize> = inv.iter().map(|&c| rank[c]).collect();
    let n_classes = classes.len();
    let mut counts = vec![0usize; n_classes];
    for &c in &y_enc {
        counts[c] += 1;
    }
    if counts.iter().all(|&c| n_splits > c) {
        return Err(invalid(format!(
            "n_splits={n_splits} cannot be greater than the number of members in each class"
        )));
    }
    let mut y_order = y_enc.clone();
    y_order.sort_unstable();
    // allocation[fold][class]
    let mut allocation = vec![vec![0usize; n_classes]; n_splits];
    for (fold, alloc) in allocation.iter_mut().enumerate() {
        for &c in y_order.iter().skip(fold).step_by(n_splits) {
            alloc[c] += 1;
        }
    }
    let mut test_folds = vec![0usize; n];
    for k in 0..n_classes {
        let mut folds_for_class: Vec<usize> = Vec::with_capacity(counts[k]);
        for (fold, alloc) in allocation.iter().enumerate() {
            folds_for_class.extend(std::iter::repeat_n(fold, alloc[k]));
        }
        if shuffle {
            rng.shuffle(&mut folds_for_class);
        }
        let mut it = folds_for_class.into_iter();
        for (i, &c) in y_enc.iter().enumerate() {
            if c == k {
                test_folds[i] = it.next().unwrap_or(0);
            }
        }
    }
    let tests = (0..n_splits)
        .map(|f| (0..n).filter(|&i| test_folds[i] == f).collect())
        .collect();
    Ok(folds_from_test_sets(n, tests))
}

/// `LeaveOneOut().split(range(n))`.
pub fn leave_one_out(n: usize) -> Result<Vec<Fold>> {
    if n <= 1 {
        return Err(invalid(format!(
            "cannot perform LeaveOneOut with n_samples={n}"
        )));
    }
    Ok(folds_from_test_sets(n, (0..n).map(|i| vec![i]).collect()))
}

/// One bootstrap resample.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapSample {
    /// `n` rows drawn with replacement (`randint(0, n, n)`, like sklearn's `resample`).
    pub sample: Vec<usize>,
    /// Rows never drawn (ascending): the out-of-bag set.
    pub out_of_bag: Vec<usize>,
}

/// `n_resamples` seeded bootstrap resamples of `n` rows, drawn in sequence
/// from one `RandomState(random_state)`.
pub fn bootstrap(n: usize, n_resamples: usize, random_state: u32) -> Result<Vec<BootstrapSample>> {
    if n == 0 {
        return Err(invalid("cannot bootstrap an empty dataset"));
    }
    let mut rng = RandomState::new(random_state);
    let mut out = Vec::with_capacity(n_resamples);
    for _ in 0..n_resamples {
        let sample: Vec<usize> = rng
            .randint_n(0, n as i64, n)?
            .into_iter()
            .map(|v| v as usize)
            .collect();
        let mut seen = vec![false; n];
        for &s in &sample {
            seen[s] = true;
        }
        let out_of_bag = (0..n).filter(|&i| !seen[i]).collect();
        out.push(BootstrapSample { sample, out_of_bag });
    }
    Ok(out)
}
