//! Evaluation metrics with scikit-learn's semantics, cross-validation and
//! bootstrap confidence intervals.
//!
//! Classification metrics take label slices of any ordered type. Labels are
//! sorted as `numpy.unique` sorts them. Precision, recall and F-beta follow
//! `precision_recall_fscore_support`: F is computed from the confusion counts
//! (`(1+β²)·tp / ((1+β²)·tp + β²·fn + fp)`), a zero denominator yields the
//! [`ZeroDivision`] value (`Warn` behaves as 0, like sklearn's default
//! `"warn"`), `macro` ignores NaN classes, `weighted` weights by support.
//! [`roc_auc_score`] is the binary ROC AUC from the ROC curve over distinct
//! thresholds (ties handled as sklearn does); [`classification_report`]
//! produces sklearn's text layout byte for byte.
//!
//! [`cross_validate`] runs a caller-supplied fit-and-score closure on every
//! fold (k-fold, stratified k-fold or leave-one-out, see [`CvStrategy`]), so
//! that preprocessing is fit on each training fold only; [`bootstrap_evaluate`]
//! does the same on seeded bootstrap resamples (training on the resample,
//! scoring on its out-of-bag rows) and reports percentile confidence
//! intervals.

use std::collections::BTreeMap;
use std::fmt::Display;

use serde::{Deserialize, Serialize};

use crate::error::{invalid, shape, MlError, Result};
use crate::split::{self, BootstrapSample, Fold};

/// sklearn's `zero_division` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ZeroDivision {
    /// sklearn's default `"warn"`: the value is 0 (the warning is the caller's to raise).
    #[default]
    Warn,
    /// 0.
    Zero,
    /// 1.
    One,
    /// NaN (ignored by the macro / weighted averages).
    Nan,
}

impl ZeroDivision {
    fn value(self) -> f64 {
        match self {
            ZeroDivision::Warn | ZeroDivision::Zero => 0.0,
            ZeroDivision::One => 1.0,
            ZeroDivision::Nan => f64::NAN,
        }
    }
}

/// sklearn's `average` parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Average<T> {
    /// Only the positive class (binary targets only).
    Binary(T),
    /// Global counts.
    Micro,
    /// Unweighted mean over classes (NaN ignored).
    Macro,
    /// Mean weighted by support (NaN ignored).
    Weighted,
}

fn check_len(a: usize, b: usize) -> Result<()> {
    if a != b {
        return Err(shape(format!("y_true has {a} labels, y_pred has {b}")));
    }
    if a == 0 {
        return Err(invalid("empty label arrays"));
    }
    Ok(())
}

/// Sorted union of labels in `y_true` and `y_pred` (sklearn's `unique_labels`).
pub fn unique_labels<T: Ord + Clone>(y_true: &[T], y_pred: &[T]) -> Vec<T> {
    let mut v: Vec<T> = y_true.iter().chain(y_pred).cloned().collect();
    v.sort();
    v.dedup();
    v
}

/// Fraction of exact matches.
pub fn accuracy<T: PartialEq>(y_true: &[T], y_pred: &[T]) -> Result<f64> {
    check_len(y_true.len(), y_pred.len())?;
    let hits = y_true.iter().zip(y_pred).filter(|(a, b)| a == b).count();
    Ok(hits as f64 / y_true.len() as f64)
}

/// Confusion matrix `C[i][j]` = samples of true `labels[i]` predicted as
/// `labels[j]` (labels sorted when not given). Returns the labels used.
pub fn confusion_matrix<T: Ord + Clone>(
    y_true: &[T],
    y_pred: &[T],
    labels: Option<&[T]>,
) -> Result<(Vec<T>, Vec<Vec<usize>>)> {
    check_len(y_true.len(), y_pred.len())?;
    let labels = labels.map_or_else(|| unique_labels(y_true, y_pred), |l| l.to_vec());
    if labels.is_empty() {
        return Err(invalid("'labels' should contain at least one label"));
    }
    let index: BTreeMap<&T, usize> = labels.iter().enumerate().map(|(i, l)| (l, i)).collect();
    let mut m = vec![vec![0usize; labels.len()]; labels.len()];
    for (t, p) in y_true.iter().zip(y_pred) {
        if let (Some(&i), Some(&j)) = (index.get(t), index.get(p)) {
            m[i][j] += 1;
        }
    }
    Ok((labels, m))
}

/// Per-class precision / recall / F-beta / support.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerClass<T> {
    /// The labels, in output order.
    pub labels: Vec<T>,
    /// Precision per label.
    pub precision: Vec<f64>,
    /// Recall per label.
    pub recall: Vec<f64>,
    /// F-beta per label.
    pub f_score: Vec<f64>,
    /// True count per label.
    pub support: Vec<usize>,
}

/// Averaged precision / recall / F-beta.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Averaged {
    /// Precision.
    pub precision: f64,
    /// Recall.
    pub recall: f64,
    /// F-beta.
    pub f_score: f64,
}

struct Counts {
    tp: Vec<f64>,
    pred: Vec<f64>,
    truth: Vec<f64>,
}

fn counts<T: Ord + Clone>(y_true: &[T], y_pred: &[T], labels: &[T]) -> Counts {
    let index: BTreeMap<&T, usize> = labels.iter().enumerate().map(|(i, l)| (l, i)).collect();
    let k = labels.len();
    let (mut tp, mut pred, mut truth) = (vec![0.0; k], vec![0.0; k], vec![0.0; k]);
    for (t, p) in y_true.iter().zip(y_pred) {
        if let Some(&i) = index.get(t) {
            truth[i] += 1.0;
            if t == p {
                tp[i] += 1.0;
            }
        }
        if let Some(&j) = index.get(p) {
            pred[j] += 1.0;
        }
    }
    Counts { tp, pred, truth }
}

fn prf_divide(num: &[f64], den: &[f64], zd: ZeroDivision) -> Vec<f64> {
    num.iter()
        .zip(den)
        .map(|(n, d)| if *d == 0.0 { zd.value() } else { n / d })
        .collect()
}

fn prf_from_counts(c: &Counts, beta: f64, zd: ZeroDivision) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let precision = prf_divide(&c.tp, &c.pred, zd);
    let recall = prf_divide(&c.tp, &c.truth, zd);
    let f = if beta.is_infinite() {
        recall.clone()
    } else if beta == 0.0 {
        precision.clone()
    } else {
        let b2 = beta * beta;
        let num: Vec<f64> = c.tp.iter().map(|t| (1.0 + b2) * t).collect();
        let den: Vec<f64> = c
            .truth
            .iter()
            .zip(&c.pred)
            .map(|(t, p)| b2 * t + p)
            .collect();
        prf_divide(&num, &den, zd)
    };
    (precision, recall, f)
}

/// `precision_recall_fscore_support(average=None)`.
pub fn precision_recall_fscore_support<T: Ord + Clone>(
    y_true: &[T],
    y_pred: &[T],
    labels: Option<&[T]>,
    beta: f64,
    zero_division: ZeroDivision,
) -> Result<PerClass<T>> {
    check_len(y_true.len(), y_pred.len())?;
    if beta.is_nan() || beta < 0.0 {
        return Err(invalid("beta should be >= 0"));
    }
    let labels = labels.map_or_else(|| unique_labels(y_true, y_pred), |l| l.to_vec());
    let c = counts(y_true, y_pred, &labels);
    let (precision, recall, f_score) = prf_from_counts(&c, beta, zero_division);
    Ok(PerClass {
        labels,
        precision,
        recall,
        f_score,
        support: c.truth.iter().map(|&t| t as usize).collect(),
    })
}

fn nan_average(a: &[f64], weights: Option<&[f64]>) -> f64 {
    let keep: Vec<usize> = (0..a.len()).filter(|&i| !a[i].is_nan()).collect();
    if keep.is_empty() {
        return f64::NAN;
    }
    if let Some(w) = weights {
        let ws: f64 = keep.iter().map(|&i| w[i]).sum();
        if ws != 0.0 {
            return keep.iter().map(|&i| a[i] * w[i]).sum::<f64>() / ws;
        }
    }
    keep.iter().map(|&i| a[i]).sum::<f64>() / keep.len() as f64
}

/// `precision_recall_fscore_support` with an average.
pub fn precision_recall_fscore_average<T: Ord + Clone + Display>(
    y_true: &[T],
    y_pred: &[T],
    labels: Option<&[T]>,
    average: &Average<T>,
    beta: f64,
    zero_division: ZeroDivision,
) -> Result<Averaged> {
    check_len(y_true.len(), y_pred.len())?;
    if beta.is_nan() || beta < 0.0 {
        return Err(invalid("beta should be >= 0"));
    }
    let present = unique_labels(y_true, y_pred);
    let labels: Vec<T> = match average {
        Average::Binary(pos) => {
            if present.len() > 2 {
                return Err(invalid(
                    "target is multiclass but average='binary'; choose micro, macro or weighted",
                ));
            }
            if !present.contains(pos) && present.len() >= 2 {
                return Err(invalid(format!("pos_label={pos} is not a valid label")));
            }
            vec![pos.clone()]
        }
        _ => labels.map_or(present, |l| l.to_vec()),
    };
    let mut c = counts(y_true, y_pred, &labels);
    if matches!(average, Average::Micro) {
        c = Counts {
            tp: vec![c.tp.iter().sum()],
            pred: vec![c.pred.iter().sum()],
            truth: vec![c.truth.iter().sum()],
        };
    }
    let (p, r, f) = prf_from_counts(&c, beta, zero_division);
    let w = matches!(average, Average::Weighted).then_some(c.truth.as_slice());
    Ok(Averaged {
        precision: nan_average(&p, w),
        recall: nan_average(&r, w),
        f_score: nan_average(&f, w),
    })
}

/// `precision_score` (β irrelevant).
pub fn precision_score<T: Ord + Clone + Display>(
    y_true: &[T],
    y_pred: &[T],
    average: &Average<T>,
    zd: ZeroDivision,
) -> Result<f64> {
    Ok(precision_recall_fscore_average(y_true, y_pred, None, average, 1.0, zd)?.precision)
}

/// `recall_score`.
pub fn recall_score<T: Ord + Clone + Display>(
    y_true: &[T],
    y_pred: &[T],
    average: &Average<T>,
    zd: ZeroDivision,
) -> Result<f64> {
    Ok(precision_recall_fscore_average(y_true, y_pred, None, average, 1.0, zd)?.recall)
}

/// `f1_score`.
pub fn f1_score<T: Ord + Clone + Display>(
    y_true: &[T],
    y_pred: &[T],
    average: &Average<T>,
    zd: ZeroDivision,
) -> Result<f64> {
    Ok(precision_recall_fscore_average(y_true, y_pred, None, average, 1.0, zd)?.f_score)
}

/// Binary ROC AUC. The larger of the two labels in `y_true` is the positive
/// class. Returns NaN when `y_true` holds a single class (sklearn warns and
/// returns NaN); errors on more than two classes or non-finite scores.
pub fn roc_auc_score<T: Ord + Clone>(y_true: &[T], y_score: &[f64]) -> Result<f64> {
    check_len(y_true.len(), y_score.len())?;
    if y_score.iter().any(|s| !s.is_finite()) {
        return Err(invalid("y_score contains NaN or infinity"));
    }
    let classes = unique_labels(y_true, &[]);
    if classes.len() > 2 {
        return Err(invalid("roc_auc_score here supports binary targets only"));
    }
    if classes.len() < 2 {
        return Ok(f64::NAN);
    }
    let pos = &classes[1];
    let y: Vec<f64> = y_true
        .iter()
        .map(|t| f64::from(u8::from(t == pos)))
        .collect();
    let (fpr, tpr) = roc_curve_points(&y, y_score);
    let mut area = 0.0;
    for i in 1..fpr.len() {
        area += (fpr[i] - fpr[i - 1]) * (tpr[i] + tpr[i - 1]) / 2.0;
    }
    Ok(area)
}

/// ROC curve `(fpr, tpr)` with sklearn's `drop_intermediate=True`; `y` is 0/1.
pub fn roc_curve_points(y: &[f64], score: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let n = y.len();
    let mut order: Vec<usize> = (0..n).collect();
    // stable ascending, then reversed (numpy: argsort(kind="mergesort")[::-1])
    order.sort_by(|&a, &b| score[a].total_cmp(&score[b]));
    order.reverse();
    let s: Vec<f64> = order.iter().map(|&i| score[i]).collect();
    let yt: Vec<f64> = order.iter().map(|&i| y[i]).collect();
    let mut thr_idx: Vec<usize> = (0..n.saturating_sub(1))
        .filter(|&i| s[i + 1] != s[i])
        .collect();
    thr_idx.push(n - 1);
    let mut cum = Vec::with_capacity(n);
    let mut acc = 0.0;
    for v in &yt {
        acc += v;
        cum.push(acc);
    }
    let mut tps: Vec<f64> = thr_idx.iter().map(|&i| cum[i]).collect();
    let mut fps: Vec<f64> = thr_idx
        .iter()
        .zip(&tps)
        .map(|(&i, t)| 1.0 + i as f64 - t)
        .collect();
    if fps.len() > 2 {
        let mut keep = vec![true; fps.len()];
        for i in 1..fps.len() - 1 {
            let d2f = fps[i + 1] - 2.0 * fps[i] + fps[i - 1];
            let d2t = tps[i + 1] - 2.0 * tps[i] + tps[i - 1];
            keep[i] = d2f != 0.0 || d2t != 0.0;
        }
        let mut k = keep.iter();
        fps.retain(|_| *k.next().unwrap_or(&true));
        let mut k = keep.iter();
        tps.retain(|_| *k.next().unwrap_or(&true));
    }
    tps.insert(0, 0.0);
    fps.insert(0, 0.0);
    let (fl, tl) = (*fps.last().unwrap_or(&1.0), *tps.last().unwrap_or(&1.0));
    (
        fps.iter().map(|f| f / fl).collect(),
        tps.iter().map(|t| t / tl).collect(),
    )
}

fn check_reg(y_true: &[f64], y_pred: &[f64]) -> Result<()> {
    check_len(y_true.len(), y_pred.len())?;
    if y_true.iter().chain(y_pred).any(|v| !v.is_finite()) {
        return Err(invalid("regression targets and predictions must be finite"));
    }
    Ok(())
}

/// Mean squared error.
pub fn mean_squared_error(y_true: &[f64], y_pred: &[f64]) -> Result<f64> {
    check_reg(y_true, y_pred)?;
    Ok(y_true
        .iter()
        .zip(y_pred)
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f64>()
        / y_true.len() as f64)
}

/// Root mean squared error.
pub fn root_mean_squared_error(y_true: &[f64], y_pred: &[f64]) -> Result<f64> {
    Ok(mean_squared_error(y_true, y_pred)?.sqrt())
}

/// Mean absolute error.
pub fn mean_absolute_error(y_true: &[f64], y_pred: &[f64]) -> Result<f64> {
    check_reg(y_true, y_pred)?;
    Ok(y_true
        .iter()
        .zip(y_pred)
        .map(|(a, b)| (a - b).abs())
        .sum::<f64>()
        / y_true.len() as f64)
}

/// Coefficient of determination (sklearn's `force_finite=True`: a constant
/// truth scores 1 when predicted exactly, else 0).
pub fn r2_score(y_true: &[f64], y_pred: &[f64]) -> Result<f64> {
    check_reg(y_true, y_pred)?;
    let mean = y_true.iter().sum::<f64>() / y_true.len() as f64;
    let num: f64 = y_true
        .iter()
        .zip(y_pred)
        .map(|(a, b)| (a - b) * (a - b))
        .sum();
    let den: f64 = y_true.iter().map(|a| (a - mean) * (a - mean)).sum();
    Ok(if den == 0.0 {
        if num == 0.0 {
            1.0
        } else {
            0.0
        }
    } else {
        1.0 - num / den
    })
}

fn fmt_f(v: f64, digits: usize) -> String {
    if v.is_nan() {
        "nan".into()
    } else {
        format!("{v:.digits$}")
    }
}

/// sklearn's text `classification_report`.
pub fn classification_report<T: Ord + Clone + Display>(
    y_true: &[T],
    y_pred: &[T],
    labels: Option<&[T]>,
    target_names: Option<&[&str]>,
    digits: usize,
    zero_division: ZeroDivision,
) -> Result<String> {
    check_len(y_true.len(), y_pred.len())?;
    let present = unique_labels(y_true, y_pred);
    let labels_vec: Vec<T> = labels.map_or_else(|| present.clone(), |l| l.to_vec());
    let micro_is_accuracy = labels.is_none() || present.iter().all(|p| labels_vec.contains(p));
    let names: Vec<String> = match target_names {
        Some(t) => {
            if t.len() != labels_vec.len() {
                return Err(invalid(format!(
                    "number of classes, {}, does not match size of target_names, {}",
                    labels_vec.len(),
                    t.len()
                )));
            }
            t.iter().map(|s| s.to_string()).collect()
        }
        None => labels_vec.iter().map(|l| l.to_string()).collect(),
    };
    let per =
        precision_recall_fscore_support(y_true, y_pred, Some(&labels_vec), 1.0, zero_division)?;
    // sklearn quirk: with no correct prediction at all its supports are floats ("2.0").
    let float_support = y_true.iter().zip(y_pred).all(|(a, b)| a != b);
    let sup = |n: usize| {
        if float_support {
            format!("{n}.0")
        } else {
            n.to_string()
        }
    };
    let heading = "weighted avg";
    let width = names
        .iter()
        .map(|n| n.chars().count())
        .max()
        .unwrap_or(0)
        .max(heading.len())
        .max(digits);
    let mut out = format!("{:>width$} ", "");
    for h in ["precision", "recall", "f1-score", "support"] {
        out.push_str(&format!(" {h:>9}"));
    }
    out.push_str("\n\n");
    for (i, name) in names.iter().enumerate() {
        out.push_str(&format!(
            "{name:>width$}  {:>9} {:>9} {:>9} {:>9}\n",
            fmt_f(per.precision[i], digits),
            fmt_f(per.recall[i], digits),
            fmt_f(per.f_score[i], digits),
            sup(per.support[i])
        ));
    }
    out.push('\n');
    let total: usize = per.support.iter().sum();
    for (avg, title) in [
        (Average::Micro, "micro avg"),
        (Average::Macro, "macro avg"),
        (Average::Weighted, "weighted avg"),
    ] {
        let a = precision_recall_fscore_average(
            y_true,
            y_pred,
            Some(&labels_vec),
            &avg,
            1.0,
            zero_division,
        )?;
        if matches!(avg, Average::Micro) && micro_is_accuracy {
            out.push_str(&format!(
                "{:>width$}  {:>9} {:>9} {:>9} {:>9}\n",
                "accuracy",
                "",
                "",
                fmt_f(a.f_score, digits),
                sup(total)
            ));
        } else {
            out.push_str(&format!(
                "{title:>width$}  {:>9} {:>9} {:>9} {:>9}\n",
                fmt_f(a.precision, digits),
                fmt_f(a.recall, digits),
                fmt_f(a.f_score, digits),
                sup(total)
            ));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Cross-validation and bootstrap
// ---------------------------------------------------------------------------

/// Which folds [`cross_validate`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CvStrategy {
    /// `KFold`.
    KFold {
        /// Number of folds.
        n_splits: usize,
        /// Shuffle rows first.
        shuffle: bool,
        /// Seed (used when shuffling).
        random_state: u32,
    },
    /// `StratifiedKFold` (needs class labels).
    StratifiedKFold {
        /// Number of folds.
        n_splits: usize,
        /// Shuffle within classes.
        shuffle: bool,
        /// Seed.
        random_state: u32,
    },
    /// `LeaveOneOut`.
    LeaveOneOut,
}

/// The folds of a strategy over `n` rows (`y` for stratification).
pub fn make_folds(strategy: &CvStrategy, n: usize, y: Option<&[usize]>) -> Result<Vec<Fold>> {
    match *strategy {
        CvStrategy::KFold {
            n_splits,
            shuffle,
            random_state,
        } => split::kfold(n, n_splits, shuffle, random_state),
        CvStrategy::StratifiedKFold {
            n_splits,
            shuffle,
            random_state,
        } => {
            let y = y.ok_or_else(|| invalid("stratified k-fold needs class labels"))?;
            if y.len() != n {
                return Err(shape(format!("{} labels for {n} rows", y.len())));
            }
            split::stratified_kfold(y, n_splits, shuffle, random_state)
        }
        CvStrategy::LeaveOneOut => split::leave_one_out(n),
    }
}

/// Named scores of one evaluation.
pub type Scores = BTreeMap<String, f64>;

/// Mean and spread of one score across folds / resamples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScoreSummary {
    /// Mean (NaN values ignored).
    pub mean: f64,
    /// Population standard deviation (ddof = 0, as `numpy.std`).
    pub std: f64,
    /// Lower percentile bound (bootstrap only; NaN for cross-validation).
    pub lower: f64,
    /// Upper percentile bound (bootstrap only; NaN for cross-validation).
    pub upper: f64,
}

/// Per-fold scores and their summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CvReport {
    /// Scores of each fold / resample, in order.
    pub folds: Vec<Scores>,
    /// Summary per score name.
    pub summary: BTreeMap<String, ScoreSummary>,
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let vals: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if vals.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = vals.iter().sum::<f64>() / vals.len() as f64;
    let var = vals.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / vals.len() as f64;
    (m, var.sqrt())
}

/// `numpy.percentile` with linear interpolation (NaN ignored).
pub fn percentile(v: &[f64], q: f64) -> f64 {
    let mut vals: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if vals.is_empty() || !(0.0..=100.0).contains(&q) {
        return f64::NAN;
    }
    vals.sort_by(f64::total_cmp);
    let pos = q / 100.0 * (vals.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    vals[lo] + (vals[hi] - vals[lo]) * frac
}

fn summarize(folds: &[Scores], confidence: Option<f64>) -> BTreeMap<String, ScoreSummary> {
    let mut names: Vec<&String> = folds.iter().flat_map(|f| f.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let v: Vec<f64> = folds
                .iter()
                .map(|f| f.get(name).copied().unwrap_or(f64::NAN))
                .collect();
            let (mean, std) = mean_std(&v);
            let (lower, upper) = match confidence {
                Some(c) => {
                    let alpha = (1.0 - c) / 2.0 * 100.0;
                    (percentile(&v, alpha), percentile(&v, 100.0 - alpha))
                }
                None => (f64::NAN, f64::NAN),
            };
            (
                name.clone(),
                ScoreSummary {
                    mean,
                    std,
                    lower,
                    upper,
                },
            )
        })
        .collect()
}

/// Runs `fit_score(fold_index, fold)` on every fold and summarises the scores.
/// The closure fits on `fold.train` (preprocessing included) and scores on
/// `fold.test`.
pub fn cross_validate<F>(folds: &[Fold], mut fit_score: F) -> Result<CvReport>
where
    F: FnMut(usize, &Fold) -> Result<Scores>,
{
    if folds.is_empty() {
        return Err(invalid("no folds"));
    }
    let mut out = Vec::with_capacity(folds.len());
    for (i, f) in folds.iter().enumerate() {
        out.push(fit_score(i, f)?);
    }
    let summary = summarize(&out, None);
    Ok(CvReport {
        folds: out,
        summary,
    })
}

/// Bootstrap evaluation: `n_resamples` seeded resamples of `n` rows; the
/// closure trains on `sample.sample` and scores on `sample.out_of_bag`
/// (resamples with an empty out-of-bag set are skipped). Summaries carry
/// percentile intervals at `confidence` (e.g. 0.95).
pub fn bootstrap_evaluate<F>(
    n: usize,
    n_resamples: usize,
    random_state: u32,
    confidence: f64,
    mut fit_score: F,
) -> Result<CvReport>
where
    F: FnMut(usize, &BootstrapSample) -> Result<Scores>,
{
    if !(confidence > 0.0 && confidence < 1.0) {
        return Err(invalid(format!(
            "confidence must be in (0, 1), got {confidence}"
        )));
    }
    if n_resamples == 0 {
        return Err(invalid("n_resamples must be positive"));
    }
    let samples = split::bootstrap(n, n_resamples, random_state)?;
    let mut out = Vec::with_capacity(n_resamples);
    for (i, s) in samples.iter().enumerate() {
        if s.out_of_bag.is_empty() {
            continue;
        }
        out.push(fit_score(i, s)?);
    }
    if out.is_empty() {
        return Err(MlError::InvalidData(
            "every bootstrap resample had an empty out-of-bag set".into(),
        ));
    }
    let summary = summarize(&out, Some(confidence));
    Ok(CvReport {
        folds: out,
        summary,
    })
}
