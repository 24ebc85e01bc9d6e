//! Cleaning, transforms and the serializable preprocessing [`Pipeline`].
//!
//! Cleaning works on a [`Dataset`]: [`drop_missing_rows`],
//! [`drop_duplicate_rows`], [`convert_column`] (text → number / bool /
//! category, reporting the first bad cell with its row and column, or
//! coercing bad cells to missing).
//!
//! Transforms follow scikit-learn's definitions so that their outputs agree
//! to 1e-12:
//!
//! * [`SimpleImputer`]: `mean` / `median` / `most_frequent` (ties → smallest)
//!   / `constant`, NaN-aware; all-missing columns are dropped like sklearn's
//!   `keep_empty_features=False`, or filled with 0 when kept.
//! * [`StandardScaler`]: population variance (ddof = 0) by the corrected
//!   two-pass formula; near-constant columns (sklearn's `_is_constant_feature`)
//!   scale by 1; NaN is ignored in `fit` and kept in `transform`.
//! * [`MinMaxScaler`]: `x * scale + min` with sklearn's zero-range handling.
//! * [`OneHotEncoder`]: categories sorted (missing last, as its own category),
//!   `handle_unknown` = ignore (all zeros) or error, optional `drop`.
//! * [`LabelEncoder`] (target) and [`OrdinalEncoder`].
//!
//! A [`Pipeline`] is fitted from a [`PipelineSpec`] on the training split
//! only; it then transforms other splits and raw records (prediction time)
//! into the same feature matrix, and encodes / decodes the target. It
//! serializes with serde as part of a model artifact.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::data::{
    parse_bool, parse_number, Cell, Column, ColumnData, ColumnKind, Dataset, Record,
};
use crate::error::{invalid, shape, MlError, Result};
use crate::matrix::Matrix;

// ---------------------------------------------------------------------------
// Cleaning
// ---------------------------------------------------------------------------

/// Drops rows with a missing value in any of `columns` (all columns when `None`).
pub fn drop_missing_rows(ds: &Dataset, columns: Option<&[&str]>) -> Result<Dataset> {
    let cols: Vec<&Column> = match columns {
        Some(names) => names.iter().map(|n| ds.column(n)).collect::<Result<_>>()?,
        None => ds.columns().iter().collect(),
    };
    let keep: Vec<usize> = (0..ds.n_rows())
        .filter(|&i| cols.iter().all(|c| !c.data.is_missing(i)))
        .collect();
    ds.take_rows(&keep)
}

/// Drops repeated rows, keeping the first occurrence (missing equals missing).
pub fn drop_duplicate_rows(ds: &Dataset) -> Result<Dataset> {
    let mut seen: HashSet<Vec<String>> = HashSet::new();
    let mut keep = Vec::new();
    for i in 0..ds.n_rows() {
        let key: Vec<String> = ds
            .columns()
            .iter()
            .map(|c| match c.data.cell(i) {
                Cell::Missing => "\u{0}missing".to_string(),
                Cell::Number(x) => format!("n{}", x + 0.0),
                Cell::Bool(b) => format!("b{b}"),
                Cell::Text(s) => format!("t{s}"),
            })
            .collect();
        if seen.insert(key) {
            keep.push(i);
        }
    }
    ds.take_rows(&keep)
}

/// The type a column is converted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConvertTo {
    /// `f64`.
    Numeric,
    /// Boolean (`true`/`false`, `1`/`0`, `yes`/`no`, any case).
    Bool,
    /// Categorical with sorted categories.
    Categorical,
    /// Text.
    Text,
}

/// What to do with a cell that cannot be converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Fail with [`MlError::Conversion`] naming the row and column.
    #[default]
    Fail,
    /// Make the cell missing.
    Coerce,
}

fn to_bool_loose(s: &str) -> Option<bool> {
    parse_bool(s).or_else(|| match s.trim().to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "t" => Some(true),
        "0" | "no" | "n" | "f" => Some(false),
        _ => None,
    })
}

/// Converts column `name` to `to`, in place.
pub fn convert_column(
    ds: &mut Dataset,
    name: &str,
    to: ConvertTo,
    on_error: OnError,
) -> Result<()> {
    let col = ds.column(name)?.clone();
    let n = col.data.len();
    let fail = |row: usize, value: String, target: &str| MlError::Conversion {
        row,
        column: name.to_string(),
        value,
        target: target.to_string(),
    };
    let data = match to {
        ConvertTo::Numeric => {
            let mut out = Vec::with_capacity(n);
            for i in 0..n {
                out.push(match col.data.cell(i) {
                    Cell::Missing => f64::NAN,
                    Cell::Number(x) => x,
                    Cell::Bool(b) => f64::from(u8::from(b)),
                    Cell::Text(s) => match parse_number(&s) {
                        Some(x) => x,
                        None if on_error == OnError::Coerce => f64::NAN,
                        None => return Err(fail(i, s, "numeric")),
                    },
                });
            }
            ColumnData::Numeric(out)
        }
        ConvertTo::Bool => {
            let mut out = Vec::with_capacity(n);
            for i in 0..n {
                out.push(match col.data.cell(i) {
                    Cell::Missing => None,
                    Cell::Bool(b) => Some(b),
                    Cell::Number(x) if x == 0.0 || x == 1.0 => Some(x == 1.0),
                    Cell::Text(s) if to_bool_loose(&s).is_some() => to_bool_loose(&s),
                    _ if on_error == OnError::Coerce => None,
                    c => return Err(fail(i, c.to_string(), "bool")),
                });
            }
            ColumnData::Bool(out)
        }
        ConvertTo::Categorical => {
            let texts: Vec<Option<String>> = (0..n).map(|i| col.data.text(i)).collect();
            let cats = sorted_unique_text(&col.data);
            let index: HashMap<&str, u32> = cats
                .iter()
                .enumerate()
                .map(|(i, c)| (c.as_str(), i as u32))
                .collect();
            let codes = texts
                .iter()
                .map(|t| t.as_deref().and_then(|t| index.get(t).copied()))
                .collect();
            ColumnData::Categorical {
                categories: cats,
                codes,
            }
        }
        ConvertTo::Text => ColumnData::Text((0..n).map(|i| col.data.text(i)).collect()),
    };
    ds.set_column(Column {
        name: name.to_string(),
        data,
    })
}

/// Sorted distinct texts of a column (numeric columns sort numerically).
fn sorted_unique_text(data: &ColumnData) -> Vec<String> {
    match data {
        ColumnData::Numeric(v) => {
            let mut vals: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
            vals.sort_by(f64::total_cmp);
            vals.dedup();
            vals.iter().map(|x| Cell::Number(*x).to_string()).collect()
        }
        _ => {
            let set: std::collections::BTreeSet<String> =
                (0..data.len()).filter_map(|i| data.text(i)).collect();
            set.into_iter().collect()
        }
    }
}

/// Numeric columns of a dataset as a matrix (bool → 0/1, missing → NaN);
/// errors on a text or categorical column.
pub fn to_matrix(ds: &Dataset, names: &[&str]) -> Result<Matrix> {
    let cols: Vec<Vec<f64>> = names
        .iter()
        .map(|n| numeric_values(ds.column(n)?))
        .collect::<Result<_>>()?;
    let rows = ds.n_rows();
    let mut m = Matrix::zeros(rows, cols.len());
    for (j, c) in cols.iter().enumerate() {
        for (i, v) in c.iter().enumerate() {
            m.row_mut(i)[j] = *v;
        }
    }
    Ok(m)
}

fn numeric_values(col: &Column) -> Result<Vec<f64>> {
    match &col.data {
        ColumnData::Numeric(v) => Ok(v.clone()),
        ColumnData::Bool(v) => Ok(v
            .iter()
            .map(|b| b.map_or(f64::NAN, |b| f64::from(u8::from(b))))
            .collect()),
        d => Err(MlError::ColumnType {
            column: col.name.clone(),
            expected: "numeric".into(),
            actual: d.kind().to_string(),
        }),
    }
}

// ---------------------------------------------------------------------------
// Imputation
// ---------------------------------------------------------------------------

/// `SimpleImputer` strategies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImputeStrategy {
    /// Column mean.
    Mean,
    /// Column median.
    Median,
    /// Most frequent value (smallest on ties).
    MostFrequent,
    /// A constant value.
    Constant(f64),
}

fn nan_mean(v: &[f64]) -> f64 {
    let (s, n) = v
        .iter()
        .filter(|x| !x.is_nan())
        .fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 {
        f64::NAN
    } else {
        s / n as f64
    }
}

fn nan_median(v: &[f64]) -> f64 {
    let mut vals: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if vals.is_empty() {
        return f64::NAN;
    }
    vals.sort_by(f64::total_cmp);
    let m = vals.len() / 2;
    if vals.len() % 2 == 1 {
        vals[m]
    } else {
        (vals[m - 1] + vals[m]) / 2.0
    }
}

fn nan_most_frequent(v: &[f64]) -> f64 {
    let mut vals: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if vals.is_empty() {
        return f64::NAN;
    }
    vals.sort_by(f64::total_cmp);
    let (mut best, mut best_n) = (vals[0], 0usize);
    let mut i = 0;
    while i < vals.len() {
        let mut j = i;
        while j < vals.len() && vals[j] == vals[i] {
            j += 1;
        }
        if j - i > best_n {
            best = vals[i];
            best_n = j - i;
        }
        i = j;
    }
    best
}

/// sklearn's `SimpleImputer` for numeric matrices (missing = NaN).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimpleImputer {
    /// Strategy.
    pub strategy: ImputeStrategy,
    /// Keep all-missing columns (filled with 0) instead of dropping them.
    pub keep_empty_features: bool,
    /// Fitted statistics (NaN for an all-missing column).
    pub statistics: Vec<f64>,
}

impl SimpleImputer {
    /// Fits the statistics on `x`.
    pub fn fit(x: &Matrix, strategy: ImputeStrategy, keep_empty_features: bool) -> Self {
        let statistics = (0..x.cols())
            .map(|j| impute_stat(&x.column(j), &strategy))
            .collect();
        SimpleImputer {
            strategy,
            keep_empty_features,
            statistics,
        }
    }

    /// Fills NaN cells. All-missing training columns are dropped unless
    /// `keep_empty_features` (then filled with 0), except for `Constant`.
    pub fn transform(&self, x: &Matrix) -> Result<Matrix> {
        if x.cols() != self.statistics.len() {
            return Err(shape(format!(
                "imputer fitted on {} columns, got {}",
                self.statistics.len(),
                x.cols()
            )));
        }
        let keep: Vec<usize> = (0..x.cols())
            .filter(|&j| self.keep_empty_features || !self.statistics[j].is_nan())
            .collect();
        let mut out = Matrix::zeros(x.rows(), keep.len());
        for i in 0..x.rows() {
            let src = x.row(i);
            let dst = out.row_mut(i);
            for (k, &j) in keep.iter().enumerate() {
                let fill = if self.statistics[j].is_nan() {
                    0.0
                } else {
                    self.statistics[j]
                };
                dst[k] = if src[j].is_nan() { fill } else { src[j] };
            }
        }
        Ok(out)
    }
}

fn impute_stat(col: &[f64], strategy: &ImputeStrategy) -> f64 {
    match strategy {
        ImputeStrategy::Mean => nan_mean(col),
        ImputeStrategy::Median => nan_median(col),
        ImputeStrategy::MostFrequent => nan_most_frequent(col),
        ImputeStrategy::Constant(c) => *c,
    }
}

/// Imputes a dataset column in place: numeric columns with `strategy`,
/// bool / text / categorical columns with their most frequent value
/// (`Constant` fills text with `"missing_value"`, like sklearn).
pub fn impute_column(ds: &mut Dataset, name: &str, strategy: &ImputeStrategy) -> Result<()> {
    let col = ds.column(name)?.clone();
    let data = match &col.data {
        ColumnData::Numeric(v) => {
            let s = impute_stat(v, strategy);
            ColumnData::Numeric(v.iter().map(|x| if x.is_nan() { s } else { *x }).collect())
        }
        other => {
            let fill = match strategy {
                ImputeStrategy::Constant(_) => Some("missing_value".to_string()),
                _ => most_frequent_text(other),
            };
            let n = other.len();
            let texts: Vec<Option<String>> = (0..n)
                .map(|i| other.text(i).or_else(|| fill.clone()))
                .collect();
            match other {
                ColumnData::Bool(_) => ColumnData::Bool(
                    texts
                        .iter()
                        .map(|t| t.as_deref().and_then(parse_bool))
                        .collect(),
                ),
                _ => ColumnData::Text(texts),
            }
        }
    };
    ds.set_column(Column {
        name: name.to_string(),
        data,
    })
}

fn most_frequent_text(data: &ColumnData) -> Option<String> {
    let mut freq: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..data.len() {
        if let Some(t) = data.text(i) {
            *freq.entry(t).or_insert(0) += 1;
        }
    }
    let mut best: Option<(String, usize)> = None;
    for (k, n) in freq {
        if best.as_ref().is_none_or(|(_, b)| n > *b) {
            best = Some((k, n));
        }
    }
    best.map(|(k, _)| k)
}

// ---------------------------------------------------------------------------
// Scalers
// ---------------------------------------------------------------------------

/// sklearn's `StandardScaler` (population std, NaN-aware).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StandardScaler {
    /// Per-column mean.
    pub mean: Vec<f64>,
    /// Per-column variance (ddof = 0).
    pub var: Vec<f64>,
    /// Per-column scale (1 for constant columns).
    pub scale: Vec<f64>,
}

impl StandardScaler {
    /// Fits on `x`, ignoring NaN.
    pub fn fit(x: &Matrix) -> Self {
        let mut mean = Vec::with_capacity(x.cols());
        let mut var = Vec::with_capacity(x.cols());
        let mut scale = Vec::with_capacity(x.cols());
        for j in 0..x.cols() {
            let (m, v, n) = mean_var(&x.column(j));
            // sklearn's _is_constant_feature
            let eps = f64::EPSILON;
            let upper = n * eps * v + (n * m * eps).powi(2);
            let constant = v <= upper;
            mean.push(m);
            var.push(v);
            let s = v.sqrt();
            scale.push(if constant || s < 10.0 * eps || s.is_nan() {
                1.0
            } else {
                s
            });
        }
        StandardScaler { mean, var, scale }
    }

    /// `(x - mean) / scale`.
    pub fn transform(&self, x: &Matrix) -> Result<Matrix> {
        check_cols(x, self.mean.len(), "StandardScaler")?;
        let mut out = x.clone();
        for i in 0..out.rows() {
            for (j, v) in out.row_mut(i).iter_mut().enumerate() {
                *v = (*v - self.mean[j]) / self.scale[j];
            }
        }
        Ok(out)
    }

    /// Scales one value of column `j`.
    pub fn scale_value(&self, j: usize, v: f64) -> f64 {
        (v - self.mean[j]) / self.scale[j]
    }
}

/// Mean and population variance as sklearn's `_incremental_mean_and_var`
/// computes them on a first fit (corrected two-pass), ignoring NaN; returns
/// `(mean, var, count)`.
fn mean_var(col: &[f64]) -> (f64, f64, f64) {
    let vals: Vec<f64> = col.iter().copied().filter(|x| !x.is_nan()).collect();
    let n = vals.len() as f64;
    if vals.is_empty() {
        return (f64::NAN, f64::NAN, 0.0);
    }
    let sum: f64 = vals.iter().sum();
    let t = sum / n;
    let correction: f64 = vals.iter().map(|x| x - t).sum();
    let sq: f64 = vals.iter().map(|x| (x - t) * (x - t)).sum();
    let unnorm = sq - correction * correction / n;
    (sum / n, unnorm / n, n)
}

fn check_cols(x: &Matrix, n: usize, what: &str) -> Result<()> {
    if x.cols() != n {
        return Err(shape(format!(
            "{what} fitted on {n} columns, got {}",
            x.cols()
        )));
    }
    Ok(())
}

/// sklearn's `MinMaxScaler`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MinMaxScaler {
    /// Per-column minimum seen in fit.
    pub data_min: Vec<f64>,
    /// Per-column maximum seen in fit.
    pub data_max: Vec<f64>,
    /// Multiplier.
    pub scale: Vec<f64>,
    /// Offset.
    pub min: Vec<f64>,
}

impl MinMaxScaler {
    /// Fits to map `[data_min, data_max]` onto `feature_range`.
    pub fn fit(x: &Matrix, feature_range: (f64, f64)) -> Result<Self> {
        if feature_range.0 >= feature_range.1 {
            return Err(invalid(format!(
                "minimum of desired feature range must be smaller than maximum, got {feature_range:?}"
            )));
        }
        let mut s = MinMaxScaler {
            data_min: vec![],
            data_max: vec![],
            scale: vec![],
            min: vec![],
        };
        for j in 0..x.cols() {
            let col = x.column(j);
            let lo = col
                .iter()
                .copied()
                .filter(|v| !v.is_nan())
                .fold(f64::INFINITY, f64::min);
            let hi = col
                .iter()
                .copied()
                .filter(|v| !v.is_nan())
                .fold(f64::NEG_INFINITY, f64::max);
            let (lo, hi) = if lo > hi {
                (f64::NAN, f64::NAN)
            } else {
                (lo, hi)
            };
            let range = hi - lo;
            let range = if range < 10.0 * f64::EPSILON || range.is_nan() {
                1.0
            } else {
                range
            };
            let scale = (feature_range.1 - feature_range.0) / range;
            s.data_min.push(lo);
            s.data_max.push(hi);
            s.scale.push(scale);
            s.min.push(feature_range.0 - lo * scale);
        }
        Ok(s)
    }

    /// `x * scale + min`.
    pub fn transform(&self, x: &Matrix) -> Result<Matrix> {
        check_cols(x, self.scale.len(), "MinMaxScaler")?;
        let mut out = x.clone();
        for i in 0..out.rows() {
            for (j, v) in out.row_mut(i).iter_mut().enumerate() {
                *v = *v * self.scale[j] + self.min[j];
            }
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------
// Encoders
// ---------------------------------------------------------------------------

/// What an encoder does with a category it has not seen in `fit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum HandleUnknown {
    /// All-zero one-hot row.
    #[default]
    Ignore,
    /// [`MlError::UnknownCategory`].
    Error,
}

/// Which one-hot column to drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OneHotDrop {
    /// Keep every category.
    #[default]
    None,
    /// Drop each feature's first category.
    First,
    /// Drop the first category of two-category features.
    IfBinary,
}

/// One-hot encoding of one categorical column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OneHotColumn {
    /// Column name.
    pub name: String,
    /// Sorted categories; `None` (missing) is last when seen in fit.
    pub categories: Vec<Option<String>>,
    /// Index of the dropped category, if any.
    pub dropped: Option<usize>,
}

impl OneHotColumn {
    /// Number of output columns.
    pub fn width(&self) -> usize {
        self.categories
            .len()
            .saturating_sub(usize::from(self.dropped.is_some()))
    }

    /// Output feature names (`name_category`, `name_nan` for missing).
    pub fn feature_names(&self) -> Vec<String> {
        self.categories
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != self.dropped)
            .map(|(_, c)| format!("{}_{}", self.name, c.as_deref().unwrap_or("nan")))
            .collect()
    }

    fn encode_into(
        &self,
        value: Option<&str>,
        row: usize,
        unknown: HandleUnknown,
        out: &mut [f64],
    ) -> Result<()> {
        out.iter_mut().for_each(|v| *v = 0.0);
        let pos = self.categories.iter().position(|c| c.as_deref() == value);
        match pos {
            Some(p) => {
                if Some(p) != self.dropped {
                    let k = match self.dropped {
                        Some(d) if p > d => p - 1,
                        _ => p,
                    };
                    out[k] = 1.0;
                }
                Ok(())
            }
            None if unknown == HandleUnknown::Ignore => Ok(()),
            None => Err(MlError::UnknownCategory {
                row,
                column: self.name.clone(),
                value: value.unwrap_or("<missing>").to_string(),
            }),
        }
    }
}

/// sklearn's `OneHotEncoder` over text columns (dense output).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OneHotEncoder {
    /// Per-column encodings.
    pub columns: Vec<OneHotColumn>,
    /// Unknown-category policy.
    pub handle_unknown: HandleUnknown,
}

fn sorted_categories<'a>(values: impl Iterator<Item = Option<&'a str>>) -> Vec<Option<String>> {
    let mut set: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    let mut has_missing = false;
    for v in values {
        match v {
            Some(s) => {
                set.insert(s);
            }
            None => has_missing = true,
        }
    }
    let mut cats: Vec<Option<String>> = set.into_iter().map(|s| Some(s.to_string())).collect();
    if has_missing {
        cats.push(None);
    }
    cats
}

impl OneHotEncoder {
    /// Fits on `rows × names.len()` text values (`None` = missing).
    pub fn fit(
        names: &[&str],
        rows: &[Vec<Option<String>>],
        handle_unknown: HandleUnknown,
        drop: OneHotDrop,
    ) -> Result<Self> {
        let mut columns = Vec::with_capacity(names.len());
        for (j, name) in names.iter().enumerate() {
            if let Some(r) = rows.iter().find(|r| r.len() != names.len()) {
                return Err(shape(format!(
                    "row has {} values for {} columns",
                    r.len(),
                    names.len()
                )));
            }
            let categories = sorted_categories(rows.iter().map(|r| r[j].as_deref()));
            let dropped = match drop {
                OneHotDrop::None => None,
                OneHotDrop::First => (!categories.is_empty()).then_some(0),
                OneHotDrop::IfBinary => (categories.len() == 2).then_some(0),
            };
            columns.push(OneHotColumn {
                name: name.to_string(),
                categories,
                dropped,
            });
        }
        Ok(OneHotEncoder {
            columns,
            handle_unknown,
        })
    }

    /// Output feature names.
    pub fn feature_names(&self) -> Vec<String> {
        self.columns
            .iter()
            .flat_map(|c| c.feature_names())
            .collect()
    }

    /// Encodes rows of text values.
    pub fn transform(&self, rows: &[Vec<Option<String>>]) -> Result<Matrix> {
        let width: usize = self.columns.iter().map(|c| c.width()).sum();
        let mut out = Matrix::zeros(rows.len(), width);
        for (i, r) in rows.iter().enumerate() {
            if r.len() != self.columns.len() {
                return Err(shape(format!(
                    "row {i} has {} values for {} columns",
                    r.len(),
                    self.columns.len()
                )));
            }
            let dst = out.row_mut(i);
            let mut off = 0;
            for (c, v) in self.columns.iter().zip(r) {
                let w = c.width();
                c.encode_into(v.as_deref(), i, self.handle_unknown, &mut dst[off..off + w])?;
                off += w;
            }
        }
        Ok(out)
    }
}

/// sklearn's `LabelEncoder`: sorted classes ↔ codes `0..n`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelEncoder {
    /// Sorted classes (numerically for numeric columns), as text.
    pub classes: Vec<String>,
}

impl LabelEncoder {
    /// Fits on a column; missing values are ignored.
    pub fn fit(data: &ColumnData) -> Self {
        LabelEncoder {
            classes: sorted_unique_text(data),
        }
    }

    /// Fits on text labels.
    pub fn fit_labels<S: AsRef<str>>(labels: &[S]) -> Self {
        let set: std::collections::BTreeSet<&str> = labels.iter().map(|s| s.as_ref()).collect();
        LabelEncoder {
            classes: set.into_iter().map(String::from).collect(),
        }
    }

    /// Code of one label.
    pub fn code(&self, label: &str) -> Option<usize> {
        self.classes.iter().position(|c| c == label)
    }

    /// Encodes a column; missing or unseen labels are errors naming the row.
    pub fn transform(&self, column: &str, data: &ColumnData) -> Result<Vec<usize>> {
        let index: HashMap<&str, usize> = self
            .classes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_str(), i))
            .collect();
        (0..data.len())
            .map(|i| match data.text(i) {
                None => Err(MlError::MissingValue {
                    row: i,
                    column: column.to_string(),
                }),
                Some(t) => index
                    .get(t.as_str())
                    .copied()
                    .ok_or_else(|| MlError::UnknownCategory {
                        row: i,
                        column: column.to_string(),
                        value: t,
                    }),
            })
            .collect()
    }

    /// Label of a code.
    pub fn inverse(&self, code: usize) -> Result<&str> {
        self.classes.get(code).map(|s| s.as_str()).ok_or_else(|| {
            invalid(format!(
                "class code {code} out of range ({} classes)",
                self.classes.len()
            ))
        })
    }
}

/// sklearn's `OrdinalEncoder` (missing → NaN; unknown → error or a value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrdinalEncoder {
    /// Column names.
    pub names: Vec<String>,
    /// Sorted categories per column.
    pub categories: Vec<Vec<String>>,
    /// `None` → error on unknown; `Some(v)` → encode unknown as `v`.
    pub unknown_value: Option<f64>,
}

impl OrdinalEncoder {
    /// Fits on rows of text values.
    pub fn fit(
        names: &[&str],
        rows: &[Vec<Option<String>>],
        unknown_value: Option<f64>,
    ) -> Result<Self> {
        let mut categories = Vec::with_capacity(names.len());
        for j in 0..names.len() {
            if rows.iter().any(|r| r.len() != names.len()) {
                return Err(shape("ragged rows"));
            }
            let cats = sorted_categories(rows.iter().map(|r| r[j].as_deref()));
            categories.push(cats.into_iter().flatten().collect());
        }
        Ok(OrdinalEncoder {
            names: names.iter().map(|s| s.to_string()).collect(),
            categories,
            unknown_value,
        })
    }

    /// Encodes rows.
    pub fn transform(&self, rows: &[Vec<Option<String>>]) -> Result<Matrix> {
        let mut out = Matrix::zeros(rows.len(), self.names.len());
        for (i, r) in rows.iter().enumerate() {
            if r.len() != self.names.len() {
                return Err(shape(format!("row {i} has {} values", r.len())));
            }
            for (j, v) in r.iter().enumerate() {
                out.row_mut(i)[j] = match v {
                    None => f64::NAN,
                    Some(s) => match self.categories[j].binary_search(s) {
                        Ok(k) => k as f64,
                        Err(_) => self.unknown_value.ok_or_else(|| MlError::UnknownCategory {
                            row: i,
                            column: self.names[j].clone(),
                            value: s.clone(),
                        })?,
                    },
                };
            }
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------
// Pipeline
// ---------------------------------------------------------------------------

/// Learning task, deciding how the target is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Class labels, encoded by a [`LabelEncoder`].
    #[default]
    Classification,
    /// Numeric target.
    Regression,
}

/// Scaling applied to numeric features.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ScalerKind {
    /// No scaling.
    None,
    /// [`StandardScaler`].
    #[default]
    Standard,
    /// [`MinMaxScaler`] onto `[0, 1]`.
    MinMax,
}

/// What a [`Pipeline`] should do; fitted with [`Pipeline::fit`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineSpec {
    /// Target column (`None` for a pipeline without a target).
    pub target: Option<String>,
    /// Feature columns (`None`: every column except the target).
    pub features: Option<Vec<String>>,
    /// Task.
    pub task: Task,
    /// Imputation for numeric / bool features (`None`: missing is an error).
    pub numeric_imputer: Option<ImputeStrategy>,
    /// Fill missing categorical features with the most frequent category
    /// (`false`: missing is its own category).
    pub impute_categorical: bool,
    /// Scaling of numeric features.
    pub scaler: ScalerKind,
    /// Unknown categories at transform time.
    pub handle_unknown: HandleUnknown,
    /// One-hot `drop` policy.
    pub drop: OneHotDrop,
}

impl Default for PipelineSpec {
    fn default() -> Self {
        PipelineSpec {
            target: None,
            features: None,
            task: Task::Classification,
            numeric_imputer: Some(ImputeStrategy::Mean),
            impute_categorical: true,
            scaler: ScalerKind::Standard,
            handle_unknown: HandleUnknown::Ignore,
            drop: OneHotDrop::None,
        }
    }
}

/// One fitted input column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FittedFeature {
    /// Numeric (or bool as 0/1): impute, then `(x - offset) / divisor`
    /// (standard) or `x * divisor + offset` (min-max, `multiply = true`).
    Numeric {
        /// Column name.
        name: String,
        /// Fill value for missing (`None`: missing is an error).
        fill: Option<f64>,
        /// Offset.
        offset: f64,
        /// Divisor / multiplier.
        factor: f64,
        /// Min-max form.
        multiply: bool,
    },
    /// Categorical (text): impute, then one-hot.
    Categorical {
        /// Fill value for missing (`None`: missing is its own category).
        fill: Option<String>,
        /// Encoding.
        encoding: OneHotColumn,
    },
}

/// Encoded target of a dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Class codes (`0..n_classes`).
    Classes(Vec<usize>),
    /// Numeric values.
    Values(Vec<f64>),
}

/// A fitted, serializable preprocessing pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pipeline {
    /// The spec it was fitted from.
    pub spec: PipelineSpec,
    /// Fitted feature steps, in output order.
    pub features: Vec<FittedFeature>,
    /// Target encoder (classification).
    pub label_encoder: Option<LabelEncoder>,
    /// Names of the output features.
    pub feature_names: Vec<String>,
    unknown: HandleUnknown,
}

fn cell_number(cell: &Cell) -> Option<f64> {
    match cell {
        Cell::Number(x) if !x.is_nan() => Some(*x),
        Cell::Bool(b) => Some(f64::from(u8::from(*b))),
        Cell::Text(s) => parse_number(s).or_else(|| parse_bool(s).map(|b| f64::from(u8::from(b)))),
        _ => None,
    }
}

impl Pipeline {
    /// Fits every step on `train` (the training split only).
    pub fn fit(spec: &PipelineSpec, train: &Dataset) -> Result<Pipeline> {
        if train.n_rows() == 0 {
            return Err(MlError::InvalidData(
                "cannot fit a pipeline on zero rows".into(),
            ));
        }
        let feature_names: Vec<String> = match &spec.features {
            Some(f) => f.clone(),
            None => train
                .names()
                .into_iter()
                .filter(|n| Some(*n) != spec.target.as_deref())
                .map(String::from)
                .collect(),
        };
        if let Some(t) = &spec.target {
            if feature_names.contains(t) {
                return Err(invalid(format!("target {t:?} is also a feature")));
            }
        }
        let mut features = Vec::with_capacity(feature_names.len());
        let mut out_names = Vec::new();
        for name in &feature_names {
            let col = train.column(name)?;
            match col.data.kind() {
                ColumnKind::Numeric | ColumnKind::Bool => {
                    let v = numeric_values(col)?;
                    let fill = match &spec.numeric_imputer {
                        Some(s) => {
                            let f = impute_stat(&v, s);
                            Some(if f.is_nan() { 0.0 } else { f })
                        }
                        None => None,
                    };
                    let filled: Vec<f64> = v
                        .iter()
                        .map(|x| if x.is_nan() { fill.unwrap_or(*x) } else { *x })
                        .collect();
                    let m = Matrix::from_vec(filled.len(), 1, filled)?;
                    let (offset, factor, multiply) = match spec.scaler {
                        ScalerKind::None => (0.0, 1.0, false),
                        ScalerKind::Standard => {
                            let s = StandardScaler::fit(&m);
                            (s.mean[0], s.scale[0], false)
                        }
                        ScalerKind::MinMax => {
                            let s = MinMaxScaler::fit(&m, (0.0, 1.0))?;
                            (s.min[0], s.scale[0], true)
                        }
                    };
                    let (offset, factor) = if offset.is_nan() || factor.is_nan() {
                        (0.0, 1.0)
                    } else {
                        (offset, factor)
                    };
                    out_names.push(name.clone());
                    features.push(FittedFeature::Numeric {
                        name: name.clone(),
                        fill,
                        offset,
                        factor,
                        multiply,
                    });
                }
                ColumnKind::Text | ColumnKind::Categorical => {
                    let fill = if spec.impute_categorical {
                        most_frequent_text(&col.data)
                    } else {
                        None
                    };
                    let texts: Vec<Option<String>> = (0..col.data.len())
                        .map(|i| col.data.text(i).or_else(|| fill.clone()))
                        .collect();
                    let enc = OneHotEncoder::fit(
                        &[name.as_str()],
                        &texts.into_iter().map(|t| vec![t]).collect::<Vec<_>>(),
                        spec.handle_unknown,
                        spec.drop,
                    )?;
                    let encoding = enc
                        .columns
                        .into_iter()
                        .next()
                        .ok_or_else(|| invalid("empty encoder"))?;
                    out_names.extend(encoding.feature_names());
                    features.push(FittedFeature::Categorical { fill, encoding });
                }
            }
        }
        let label_encoder = match (&spec.target, spec.task) {
            (Some(t), Task::Classification) => {
                let enc = LabelEncoder::fit(&train.column(t)?.data);
                if enc.classes.len() < 2 {
                    return Err(MlError::InvalidData(format!(
                        "target {t:?} has {} class(es) in the training data; need at least 2",
                        enc.classes.len()
                    )));
                }
                Some(enc)
            }
            _ => None,
        };
        Ok(Pipeline {
            spec: spec.clone(),
            features,
            label_encoder,
            feature_names: out_names,
            unknown: spec.handle_unknown,
        })
    }

    /// Number of output features.
    pub fn n_features(&self) -> usize {
        self.feature_names.len()
    }

    /// Number of classes (classification) or 0.
    pub fn n_classes(&self) -> usize {
        self.label_encoder.as_ref().map_or(0, |e| e.classes.len())
    }

    /// Class labels (classification).
    pub fn classes(&self) -> &[String] {
        self.label_encoder.as_ref().map_or(&[], |e| &e.classes)
    }

    fn encode_row(
        &self,
        get: &dyn Fn(&str) -> Result<Cell>,
        row: usize,
        out: &mut [f64],
    ) -> Result<()> {
        let mut off = 0;
        for f in &self.features {
            match f {
                FittedFeature::Numeric {
                    name,
                    fill,
                    offset,
                    factor,
                    multiply,
                } => {
                    let cell = get(name)?;
                    let v = match (&cell, cell_number(&cell)) {
                        (_, Some(x)) => x,
                        (Cell::Missing, None) | (Cell::Number(_), None) => {
                            fill.ok_or_else(|| MlError::MissingValue {
                                row,
                                column: name.clone(),
                            })?
                        }
                        (c, None) => {
                            return Err(MlError::Conversion {
                                row,
                                column: name.clone(),
                                value: c.to_string(),
                                target: "numeric".into(),
                            })
                        }
                    };
                    out[off] = if *multiply {
                        v * factor + offset
                    } else {
                        (v - offset) / factor
                    };
                    off += 1;
                }
                FittedFeature::Categorical { fill, encoding } => {
                    let cell = get(&encoding.name)?;
                    let text = match cell {
                        Cell::Missing => fill.clone(),
                        Cell::Number(x) if x.is_nan() => fill.clone(),
                        c => Some(c.to_string()),
                    };
                    let w = encoding.width();
                    encoding.encode_into(
                        text.as_deref(),
                        row,
                        self.unknown,
                        &mut out[off..off + w],
                    )?;
                    off += w;
                }
            }
        }
        Ok(())
    }

    /// Transforms a dataset's feature columns into the feature matrix.
    pub fn transform(&self, ds: &Dataset) -> Result<Matrix> {
        let mut cols: HashMap<&str, &ColumnData> = HashMap::new();
        for f in &self.features {
            let name = match f {
                FittedFeature::Numeric { name, .. } => name,
                FittedFeature::Categorical { encoding, .. } => &encoding.name,
            };
            cols.insert(name.as_str(), &ds.column(name)?.data);
        }
        let mut out = Matrix::zeros(ds.n_rows(), self.n_features());
        for i in 0..ds.n_rows() {
            let get =
                |n: &str| -> Result<Cell> { Ok(cols.get(n).map_or(Cell::Missing, |c| c.cell(i))) };
            self.encode_row(&get, i, out.row_mut(i))?;
        }
        Ok(out)
    }

    /// Transforms raw records (prediction time). Absent keys are missing.
    pub fn transform_records(&self, records: &[Record]) -> Result<Matrix> {
        let mut out = Matrix::zeros(records.len(), self.n_features());
        for (i, r) in records.iter().enumerate() {
            let get = |n: &str| -> Result<Cell> { Ok(r.get(n).cloned().unwrap_or(Cell::Missing)) };
            self.encode_row(&get, i, out.row_mut(i))?;
        }
        Ok(out)
    }

    /// Encodes the target column of `ds`.
    pub fn transform_target(&self, ds: &Dataset) -> Result<Target> {
        let name = self
            .spec
            .target
            .as_deref()
            .ok_or_else(|| invalid("pipeline has no target column"))?;
        let col = ds.column(name)?;
        match &self.label_encoder {
            Some(enc) => Ok(Target::Classes(enc.transform(name, &col.data)?)),
            None => {
                let v = numeric_values(col).or_else(|_| {
                    (0..col.data.len())
                        .map(|i| match col.data.cell(i) {
                            Cell::Missing => Ok(f64::NAN),
                            c => cell_number(&c).ok_or_else(|| MlError::Conversion {
                                row: i,
                                column: name.to_string(),
                                value: c.to_string(),
                                target: "numeric".into(),
                            }),
                        })
                        .collect()
                })?;
                if let Some(i) = v.iter().position(|x| x.is_nan()) {
                    return Err(MlError::MissingValue {
                        row: i,
                        column: name.to_string(),
                    });
                }
                Ok(Target::Values(v))
            }
        }
    }

    /// Class label of a predicted code.
    pub fn decode_class(&self, code: usize) -> Result<&str> {
        self.label_encoder
            .as_ref()
            .ok_or_else(|| invalid("pipeline has no class labels"))?
            .inverse(code)
    }
}
