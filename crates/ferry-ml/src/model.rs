//! Trainable models: linear, logistic (binary), softmax (multinomial)
//! regression and a multi-layer perceptron, all as one dense feed-forward
//! network trained by seeded, single-threaded gradient methods.
//!
//! * Architecture ([`ModelKind`]): linear / logistic / softmax regression are
//!   networks without hidden layers; [`ModelKind::Mlp`] adds hidden layers
//!   with ReLU, tanh, sigmoid or identity activations. The output is identity
//!   (regression, MSE loss), sigmoid (two classes, binary cross-entropy) or
//!   softmax (more classes, cross-entropy); both cross-entropies are computed
//!   from logits with the log-sum-exp trick.
//! * Initialisation ([`Init`]): zeros, constant, uniform, normal,
//!   Xavier/Glorot and He (uniform and normal) for weights; biases start at 0.
//!   All randomness comes from numpy's legacy `RandomState` seeded with
//!   [`TrainConfig::seed`], so the same seed and data give a bit-identical
//!   model.
//! * Optimisation ([`Optimizer`]): plain gradient steps (full batch when
//!   `batch_size` is `None`, SGD with `Some(1)`, mini-batch otherwise),
//!   momentum, Nesterov, Adam, AdamW, and full-batch L-BFGS with a strong
//!   Wolfe line search (`lbfgs.rs`); L2 penalty on weights; per-epoch seeded
//!   shuffling; early stopping on a validation set (or on the training loss
//!   when none is given) with `patience` and `tol`, restoring the best
//!   weights.
//! * Progress: a [`TrainObserver`] receives each epoch's train / validation
//!   loss, can stop training early, and is polled for cancellation before
//!   every batch.
//!
//! [`LinearRegression::least_squares`] also fits ordinary / ridge least
//! squares in closed form.

use serde::{Deserialize, Serialize};

use crate::error::{invalid, shape, MlError, Result};
use crate::lbfgs::Lbfgs;
use crate::linalg;
use crate::matrix::Matrix;
use crate::preprocess::Target;
use crate::split::RandomState;

/// Hidden-layer activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `max(0, x)`.
    #[default]
    Relu,
    /// `tanh(x)`.
    Tanh,
    /// `1 / (1 + e^-x)`.
    Sigmoid,
    /// `x`.
    Identity,
}

impl Activation {
    fn apply(self, x: f64) -> f64 {
        match self {
            Activation::Relu => x.max(0.0),
            Activation::Tanh => x.tanh(),
            Activation::Sigmoid => sigmoid(x),
            Activation::Identity => x,
        }
    }

    /// Derivative expressed through the activation's output `a`.
    fn derivative(self, a: f64) -> f64 {
        match self {
            Activation::Relu => {
                if a > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Activation::Tanh => 1.0 - a * a,
            Activation::Sigmoid => a * (1.0 - a),
            Activation::Identity => 1.0,
        }
    }
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// What is trained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ModelKind {
    /// Linear regression (MSE).
    LinearRegression,
    /// Binary logistic regression (exactly two classes).
    LogisticRegression,
    /// Multinomial (softmax) regression.
    SoftmaxRegression,
    /// Multi-layer perceptron: a classifier for class targets, a regressor
    /// for numeric targets.
    Mlp {
        /// Hidden layer sizes.
        hidden: Vec<usize>,
        /// Hidden activation.
        activation: Activation,
    },
}

/// The output layer and its loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Output {
    /// Identity output, mean squared error.
    Identity,
    /// One sigmoid unit, binary cross-entropy.
    Sigmoid,
    /// Softmax over classes, cross-entropy.
    Softmax,
}

/// Weight initialisation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Init {
    /// All zeros.
    Zeros,
    /// A constant.
    Constant {
        /// The value.
        value: f64,
    },
    /// `U(low, high)`.
    Uniform {
        /// Lower bound.
        low: f64,
        /// Upper bound.
        high: f64,
    },
    /// `N(mean, std²)`.
    Normal {
        /// Mean.
        mean: f64,
        /// Standard deviation.
        std: f64,
    },
    /// Glorot uniform: `U(±sqrt(6 / (fan_in + fan_out)))`.
    #[default]
    XavierUniform,
    /// Glorot normal: `N(0, 2 / (fan_in + fan_out))`.
    XavierNormal,
    /// He uniform: `U(±sqrt(6 / fan_in))`.
    HeUniform,
    /// He normal: `N(0, 2 / fan_in)`.
    HeNormal,
}

/// Gradient method.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Optimizer {
    /// Plain gradient step (GD / SGD / mini-batch depending on batch size).
    Sgd,
    /// Heavy-ball momentum.
    Momentum {
        /// Momentum coefficient.
        momentum: f64,
    },
    /// Nesterov momentum.
    Nesterov {
        /// Momentum coefficient.
        momentum: f64,
    },
    /// Adam.
    Adam {
        /// First-moment decay.
        beta1: f64,
        /// Second-moment decay.
        beta2: f64,
        /// Denominator epsilon.
        eps: f64,
    },
    /// AdamW (decoupled weight decay).
    AdamW {
        /// First-moment decay.
        beta1: f64,
        /// Second-moment decay.
        beta2: f64,
        /// Denominator epsilon.
        eps: f64,
        /// Decoupled weight decay.
        weight_decay: f64,
    },
    /// Limited-memory BFGS, scikit-learn's default solver for logistic
    /// regression (and `MLPClassifier(solver="lbfgs")`): full batch only
    /// (`batch_size` must be `None`), one quasi-Newton step with a strong
    /// Wolfe line search per epoch. Training stops before `epochs` once the
    /// largest gradient component is at most `tol`, or the loss stops
    /// decreasing (relative change at most 64 ε), as scikit-learn's `lbfgs`
    /// does. `learning_rate` is the length of the very first trial step (1.0
    /// is scipy's choice); later steps start at the quasi-Newton step (1).
    /// Every evaluation uses all rows in order, so `shuffle` does not apply.
    Lbfgs {
        /// Number of past updates kept (scipy's `maxcor`; 10).
        memory: usize,
        /// Gradient tolerance (scikit-learn's `tol`; 1e-4).
        tol: f64,
    },
}

impl Optimizer {
    /// Adam with the usual defaults (0.9, 0.999, 1e-8).
    pub fn adam() -> Self {
        Optimizer::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }

    /// L-BFGS with scikit-learn's defaults (memory 10, tol 1e-4).
    pub fn lbfgs() -> Self {
        Optimizer::Lbfgs {
            memory: 10,
            tol: 1e-4,
        }
    }
}

/// Early stopping.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopping {
    /// Epochs without an improvement larger than `tol` before stopping.
    pub patience: usize,
    /// Minimum improvement of the monitored loss.
    pub tol: f64,
    /// Restore the weights of the best epoch at the end.
    pub restore_best: bool,
}

/// Training hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Optimizer.
    pub optimizer: Optimizer,
    /// Learning rate.
    pub learning_rate: f64,
    /// Maximum number of epochs.
    pub epochs: usize,
    /// Batch size (`None`: full batch).
    pub batch_size: Option<usize>,
    /// L2 penalty `0.5 * l2 * ||W||²` on weights (not biases).
    pub l2: f64,
    /// Shuffle the training rows every epoch.
    pub shuffle: bool,
    /// Seed for initialisation and shuffling.
    pub seed: u64,
    /// Weight initialisation.
    pub init: Init,
    /// Early stopping (`None`: run all epochs).
    pub early_stopping: Option<EarlyStopping>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            optimizer: Optimizer::adam(),
            learning_rate: 1e-3,
            epochs: 200,
            batch_size: Some(32),
            l2: 0.0,
            shuffle: true,
            seed: 0,
            init: Init::XavierUniform,
            early_stopping: None,
        }
    }
}

/// One epoch's progress.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EpochReport {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches (L2 term included).
    pub train_loss: f64,
    /// Validation loss after the epoch (data loss only), if a validation set was given.
    pub val_loss: Option<f64>,
}

/// What the observer wants after an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Flow {
    /// Keep training.
    #[default]
    Continue,
    /// Stop now, keeping the model (best weights if early stopping restores them).
    Stop,
}

/// Receives progress and is polled for cancellation.
pub trait TrainObserver {
    /// Called after every epoch.
    fn on_epoch(&mut self, _report: &EpochReport) -> Flow {
        Flow::Continue
    }
    /// Polled before every batch; `true` aborts with [`MlError::Cancelled`].
    fn is_cancelled(&self) -> bool {
        false
    }
}

/// An observer that does nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoObserver;

impl TrainObserver for NoObserver {}

/// Loss history and why training ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct TrainHistory {
    /// Every epoch's report.
    pub epochs: Vec<EpochReport>,
    /// 1-based epoch whose weights the model holds.
    pub best_epoch: usize,
    /// Early stopping triggered.
    pub stopped_early: bool,
    /// The observer asked to stop.
    pub stopped_by_observer: bool,
    /// The solver met its convergence criterion (L-BFGS only).
    #[serde(default)]
    pub converged: bool,
}

/// One dense layer: `out = act(in · W + b)`, `W` is `n_in × n_out` row-major.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Layer {
    /// Inputs.
    pub n_in: usize,
    /// Outputs.
    pub n_out: usize,
    /// Weights, row-major `n_in × n_out`.
    pub weights: Vec<f64>,
    /// Biases.
    pub biases: Vec<f64>,
}

/// A trained model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    /// Architecture.
    pub kind: ModelKind,
    /// Output layer type.
    pub output: Output,
    /// Hidden activation.
    pub activation: Activation,
    /// Layers, input to output.
    pub layers: Vec<Layer>,
    /// Number of input features.
    pub n_features: usize,
    /// Number of classes (0 for regression).
    pub n_classes: usize,
}

/// Predictions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    /// Class codes.
    Classes(Vec<usize>),
    /// Regression values.
    Values(Vec<f64>),
}

/// Training data for [`Model::fit`].
#[derive(Debug, Clone, Copy)]
pub struct TrainData<'a> {
    /// Features (already transformed).
    pub x: &'a Matrix,
    /// Target.
    pub y: &'a Target,
    /// Number of classes for class targets (at least max code + 1).
    pub n_classes: usize,
    /// Validation set for early stopping / reporting.
    pub validation: Option<(&'a Matrix, &'a Target)>,
}

fn check_finite(x: &Matrix, what: &str) -> Result<()> {
    for i in 0..x.rows() {
        if let Some(j) = x.row(i).iter().position(|v| !v.is_finite()) {
            return Err(MlError::InvalidData(format!(
                "{what}: feature {j} of row {i} is not finite (impute missing values first)"
            )));
        }
    }
    Ok(())
}

/// Dense per-row targets used by the loss.
pub(crate) enum Y<'a> {
    Classes(&'a [usize]),
    Values(&'a [f64]),
}

fn y_of(t: &Target) -> Y<'_> {
    match t {
        Target::Classes(c) => Y::Classes(c),
        Target::Values(v) => Y::Values(v),
    }
}

pub(crate) struct Grads {
    w: Vec<Vec<f64>>,
    b: Vec<Vec<f64>>,
}

impl Grads {
    /// In [`Model::params`]' order.
    pub(crate) fn flatten(&self) -> impl Iterator<Item = f64> + '_ {
        self.w
            .iter()
            .zip(&self.b)
            .flat_map(|(w, b)| w.iter().chain(b.iter()).copied())
    }
}

impl Model {
    fn new(
        kind: &ModelKind,
        n_features: usize,
        n_classes: usize,
        regression: bool,
    ) -> Result<Model> {
        let (hidden, activation, output) = match kind {
            ModelKind::LinearRegression => {
                if !regression {
                    return Err(invalid("linear regression needs a numeric target"));
                }
                (vec![], Activation::Identity, Output::Identity)
            }
            ModelKind::LogisticRegression => {
                if regression || n_classes != 2 {
                    return Err(invalid(format!(
                        "logistic regression needs exactly 2 classes, got {}",
                        if regression { 0 } else { n_classes }
                    )));
                }
                (vec![], Activation::Identity, Output::Sigmoid)
            }
            ModelKind::SoftmaxRegression => {
                if regression || n_classes < 2 {
                    return Err(invalid(
                        "softmax regression needs a class target with at least 2 classes",
                    ));
                }
                (vec![], Activation::Identity, Output::Softmax)
            }
            ModelKind::Mlp { hidden, activation } => {
                if hidden.contains(&0) {
                    return Err(invalid("hidden layer sizes must be positive"));
                }
                let out = if regression {
                    Output::Identity
                } else if n_classes == 2 {
                    Output::Sigmoid
                } else if n_classes > 2 {
                    Output::Softmax
                } else {
                    return Err(invalid("classification needs at least 2 classes"));
                };
                (hidden.clone(), *activation, out)
            }
        };
        if n_features == 0 {
            return Err(invalid("no input features"));
        }
        let n_out = match output {
            Output::Softmax => n_classes,
            _ => 1,
        };
        let mut sizes = vec![n_features];
        sizes.extend(hidden);
        sizes.push(n_out);
        let layers = sizes
            .windows(2)
            .map(|w| Layer {
                n_in: w[0],
                n_out: w[1],
                weights: vec![0.0; w[0] * w[1]],
                biases: vec![0.0; w[1]],
            })
            .collect();
        Ok(Model {
            kind: kind.clone(),
            output,
            activation,
            layers,
            n_features,
            n_classes: if regression { 0 } else { n_classes },
        })
    }

    fn init(&mut self, init: Init, rng: &mut RandomState) -> Result<()> {
        for l in &mut self.layers {
            let (fi, fo) = (l.n_in as f64, l.n_out as f64);
            for w in &mut l.weights {
                *w = match init {
                    Init::Zeros => 0.0,
                    Init::Constant { value } => value,
                    Init::Uniform { low, high } => {
                        if low.partial_cmp(&high) != Some(std::cmp::Ordering::Less) {
                            return Err(invalid("uniform init needs low < high"));
                        }
                        rng.uniform(low, high)
                    }
                    Init::Normal { mean, std } => {
                        if std.is_nan() || std < 0.0 {
                            return Err(invalid("normal init needs std >= 0"));
                        }
                        rng.normal(mean, std)
                    }
                    Init::XavierUniform => {
                        let a = (6.0 / (fi + fo)).sqrt();
                        rng.uniform(-a, a)
                    }
                    Init::XavierNormal => rng.normal(0.0, (2.0 / (fi + fo)).sqrt()),
                    Init::HeUniform => {
                        let a = (6.0 / fi).sqrt();
                        rng.uniform(-a, a)
                    }
                    Init::HeNormal => rng.normal(0.0, (2.0 / fi).sqrt()),
                };
            }
        }
        Ok(())
    }

    /// Forward pass on `rows` of `x`; returns every layer's activations
    /// (index 0 = input, last = output logits).
    pub(crate) fn forward(&self, x: &Matrix, rows: &[usize]) -> Vec<Vec<f64>> {
        let b = rows.len();
        let mut acts: Vec<Vec<f64>> = Vec::with_capacity(self.layers.len() + 1);
        let mut input = Vec::with_capacity(b * self.n_features);
        for &r in rows {
            input.extend_from_slice(x.row(r));
        }
        acts.push(input);
        let last = self.layers.len() - 1;
        for (li, l) in self.layers.iter().enumerate() {
            let mut out = Vec::with_capacity(b * l.n_out);
            for _ in 0..b {
                out.extend_from_slice(&l.biases);
            }
            linalg::matmul_acc(&acts[li], &l.weights, &mut out, b, l.n_in, l.n_out);
            if li != last {
                let act = self.activation;
                match act {
                    Activation::Identity => {}
                    Activation::Relu => out.iter_mut().for_each(|v| *v = v.max(0.0)),
                    _ => out.iter_mut().for_each(|v| *v = act.apply(*v)),
                }
            }
            acts.push(out);
        }
        acts
    }

    /// Data loss of logits and output-layer delta (∂loss/∂logits, per row).
    pub(crate) fn loss_and_delta(
        &self,
        logits: &[f64],
        y: &Y,
        rows: &[usize],
        want_delta: bool,
    ) -> (f64, Vec<f64>) {
        let k = self.layers[self.layers.len() - 1].n_out;
        let b = rows.len();
        let mut loss = 0.0;
        let mut delta = if want_delta {
            vec![0.0; logits.len()]
        } else {
            Vec::new()
        };
        for (i, &r) in rows.iter().enumerate() {
            let z = &logits[i * k..(i + 1) * k];
            match (self.output, y) {
                (Output::Identity, Y::Values(v)) => {
                    let d = z[0] - v[r];
                    loss += d * d;
                    if want_delta {
                        delta[i] = 2.0 * d;
                    }
                }
                (Output::Sigmoid, Y::Classes(c)) => {
                    let t = if c[r] == 1 { 1.0 } else { 0.0 };
                    let zz = z[0];
                    loss += zz.max(0.0) - zz * t + (-zz.abs()).exp().ln_1p();
                    if want_delta {
                        delta[i] = sigmoid(zz) - t;
                    }
                }
                (Output::Softmax, Y::Classes(c)) => {
                    let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let s: f64 = z.iter().map(|v| (v - m).exp()).sum();
                    let lse = m + s.ln();
                    let t = c[r].min(k - 1);
                    loss += lse - z[t];
                    if want_delta {
                        for j in 0..k {
                            delta[i * k + j] = (z[j] - lse).exp() - if j == t { 1.0 } else { 0.0 };
                        }
                    }
                }
                _ => {}
            }
        }
        (loss / b as f64, delta)
    }

    pub(crate) fn backward(
        &self,
        acts: &[Vec<f64>],
        mut delta: Vec<f64>,
        b: usize,
        l2: f64,
    ) -> Grads {
        let n = self.layers.len();
        let mut gw: Vec<Vec<f64>> = self
            .layers
            .iter()
            .map(|l| vec![0.0; l.weights.len()])
            .collect();
        let mut gb: Vec<Vec<f64>> = self.layers.iter().map(|l| vec![0.0; l.n_out]).collect();
        let inv_b = 1.0 / b as f64;
        for li in (0..n).rev() {
            let l = &self.layers[li];
            let prev = &acts[li];
            for i in 0..b {
                let d = &delta[i * l.n_out..(i + 1) * l.n_out];
                for (g, dj) in gb[li].iter_mut().zip(d) {
                    *g += dj * inv_b;
                }
            }
            linalg::matmul_at_b_acc(prev, &delta, &mut gw[li], (b, l.n_in, l.n_out), inv_b);
            if l2 != 0.0 {
                for (g, w) in gw[li].iter_mut().zip(&l.weights) {
                    *g += l2 * w;
                }
            }
            if li > 0 {
                // δ_prev = (δ · Wᵀ) ⊙ act'(a_prev)
                let wt = linalg::transpose(&l.weights, l.n_in, l.n_out);
                let mut nd = vec![0.0; b * l.n_in];
                linalg::matmul_acc(&delta, &wt, &mut nd, b, l.n_out, l.n_in);
                for (v, a) in nd.iter_mut().zip(prev.iter()) {
                    *v *= self.activation.derivative(*a);
                }
                delta = nd;
            }
        }
        Grads { w: gw, b: gb }
    }

    /// All parameters, layer by layer: weights (row-major), then biases.
    pub(crate) fn params(&self) -> Vec<f64> {
        let mut p = Vec::new();
        for l in &self.layers {
            p.extend_from_slice(&l.weights);
            p.extend_from_slice(&l.biases);
        }
        p
    }

    /// Sets the parameters from [`Model::params`]' layout.
    pub(crate) fn set_params(&mut self, p: &[f64]) {
        let mut at = 0;
        for l in &mut self.layers {
            let (nw, nb) = (l.weights.len(), l.biases.len());
            l.weights.copy_from_slice(&p[at..at + nw]);
            l.biases.copy_from_slice(&p[at + nw..at + nw + nb]);
            at += nw + nb;
        }
    }

    /// Adds `l2 · W` to the weight entries of a flat gradient (biases are not penalised).
    pub(crate) fn add_l2_grad(&self, p: &[f64], g: &mut [f64], l2: f64) {
        let mut at = 0;
        for l in &self.layers {
            let nw = l.weights.len();
            for (gi, w) in g[at..at + nw].iter_mut().zip(&p[at..at + nw]) {
                *gi += l2 * w;
            }
            at += nw + l.biases.len();
        }
    }

    pub(crate) fn l2_term(&self, l2: f64) -> f64 {
        if l2 == 0.0 {
            return 0.0;
        }
        0.5 * l2
            * self
                .layers
                .iter()
                .flat_map(|l| &l.weights)
                .map(|w| w * w)
                .sum::<f64>()
    }

    /// Mean data loss on a dataset (no penalty).
    pub fn loss(&self, x: &Matrix, y: &Target) -> Result<f64> {
        self.check_input(x)?;
        let yy = y_of(y);
        check_target(&yy, x.rows(), self.n_classes)?;
        let rows: Vec<usize> = (0..x.rows()).collect();
        let mut total = 0.0;
        for chunk in rows.chunks(1024) {
            let acts = self.forward(x, chunk);
            let (l, _) = self.loss_and_delta(acts.last().map_or(&[][..], |v| v), &yy, chunk, false);
            total += l * chunk.len() as f64;
        }
        Ok(total / x.rows().max(1) as f64)
    }

    /// Trains a new model.
    pub fn fit(
        kind: &ModelKind,
        data: TrainData<'_>,
        cfg: &TrainConfig,
        observer: &mut dyn TrainObserver,
    ) -> Result<(Model, TrainHistory)> {
        let x = data.x;
        let regression = matches!(data.y, Target::Values(_));
        let y = y_of(data.y);
        if x.rows() == 0 {
            return Err(MlError::InvalidData("no training rows".into()));
        }
        check_finite(x, "training features")?;
        check_target(&y, x.rows(), if regression { 0 } else { data.n_classes })?;
        if !(cfg.learning_rate > 0.0 && cfg.learning_rate.is_finite()) {
            return Err(invalid("learning_rate must be positive"));
        }
        if cfg.l2 < 0.0 || cfg.l2.is_nan() {
            return Err(invalid("l2 must be >= 0"));
        }
        if cfg.batch_size == Some(0) {
            return Err(invalid("batch_size must be positive"));
        }
        let mut model = Model::new(kind, x.cols(), data.n_classes, regression)?;
        let val = match data.validation {
            Some((vx, vy)) => {
                if vx.cols() != x.cols() {
                    return Err(shape(format!(
                        "validation has {} features, training {}",
                        vx.cols(),
                        x.cols()
                    )));
                }
                check_finite(vx, "validation features")?;
                check_target(&y_of(vy), vx.rows(), model.n_classes)?;
                if matches!(vy, Target::Values(_)) != regression {
                    return Err(invalid(
                        "validation target type differs from training target",
                    ));
                }
                (vx.rows() > 0).then_some((vx, vy))
            }
            None => None,
        };
        let mut lbfgs = match cfg.optimizer {
            Optimizer::Lbfgs { memory, tol } => {
                if cfg.batch_size.is_some() {
                    return Err(invalid(
                        "lbfgs is a full-batch method: leave batch_size unset",
                    ));
                }
                if memory == 0 {
                    return Err(invalid("lbfgs memory must be at least 1"));
                }
                if !(tol >= 0.0 && tol.is_finite()) {
                    return Err(invalid("lbfgs tol must be finite and >= 0"));
                }
                Some(Lbfgs::new(memory, tol, cfg.l2, cfg.learning_rate))
            }
            _ => None,
        };
        let mut rng = RandomState::from_u64(cfg.seed);
        model.init(cfg.init, &mut rng)?;
        let mut state = OptState::new(&model);
        let n = x.rows();
        let bs = cfg.batch_size.unwrap_or(n).min(n);
        let mut order: Vec<usize> = (0..n).collect();
        let mut history = TrainHistory::default();
        let mut best = (f64::INFINITY, model.layers.clone(), 0usize);
        let mut wait = 0usize;
        for epoch in 1..=cfg.epochs {
            let mut converged = false;
            let train_loss = if let Some(lb) = lbfgs.as_mut() {
                let step = lb
                    .iterate(&mut model, x, &y, observer)
                    .map_err(|e| match e {
                        MlError::Diverged { loss, .. } => MlError::Diverged { epoch, loss },
                        e => e,
                    })?;
                converged = step.converged;
                step.loss
            } else {
                if cfg.shuffle {
                    rng.shuffle(&mut order);
                }
                let mut epoch_loss = 0.0;
                for batch in order.chunks(bs) {
                    if observer.is_cancelled() {
                        return Err(MlError::Cancelled);
                    }
                    let acts = model.forward(x, batch);
                    let (loss, delta) =
                        model.loss_and_delta(acts.last().map_or(&[][..], |v| v), &y, batch, true);
                    epoch_loss += (loss + model.l2_term(cfg.l2)) * batch.len() as f64;
                    let grads = model.backward(&acts, delta, batch.len(), cfg.l2);
                    state.step(&mut model, &grads, cfg);
                }
                epoch_loss / n as f64
            };
            if !train_loss.is_finite() {
                return Err(MlError::Diverged {
                    epoch,
                    loss: train_loss,
                });
            }
            let val_loss = match val {
                Some((vx, vy)) => Some(model.loss(vx, vy)?),
                None => None,
            };
            let report = EpochReport {
                epoch,
                train_loss,
                val_loss,
            };
            history.epochs.push(report);
            let monitored = val_loss.unwrap_or(train_loss);
            let mut stop = false;
            if let Some(es) = cfg.early_stopping {
                if monitored < best.0 - es.tol {
                    wait = 0;
                } else {
                    wait += 1;
                }
                if monitored < best.0 {
                    best = (monitored, model.layers.clone(), epoch);
                }
                if wait >= es.patience {
                    history.stopped_early = true;
                    stop = true;
                }
            } else {
                best.2 = epoch;
            }
            if observer.on_epoch(&report) == Flow::Stop {
                history.stopped_by_observer = true;
                stop = true;
            }
            if converged {
                history.converged = true;
                stop = true;
            }
            if stop {
                break;
            }
        }
        history.best_epoch = best.2;
        if let Some(es) = cfg.early_stopping {
            if es.restore_best && best.2 > 0 {
                model.layers = best.1;
            } else {
                history.best_epoch = history.epochs.len();
            }
        }
        Ok((model, history))
    }

    fn check_input(&self, x: &Matrix) -> Result<()> {
        if x.cols() != self.n_features {
            return Err(shape(format!(
                "model expects {} features, got {}",
                self.n_features,
                x.cols()
            )));
        }
        check_finite(x, "features")
    }

    /// Raw outputs: logits (classification) or values (regression), `rows × n_out`.
    pub fn decision_function(&self, x: &Matrix) -> Result<Matrix> {
        self.check_input(x)?;
        let k = self.layers[self.layers.len() - 1].n_out;
        let rows: Vec<usize> = (0..x.rows()).collect();
        let mut data = Vec::with_capacity(x.rows() * k);
        for chunk in rows.chunks(1024) {
            let mut acts = self.forward(x, chunk);
            data.append(
                acts.last_mut()
                    .ok_or_else(|| invalid("model has no layers"))?,
            );
        }
        Matrix::from_vec(x.rows(), k, data)
    }

    /// Class probabilities `rows × n_classes` (classifiers only).
    pub fn predict_proba(&self, x: &Matrix) -> Result<Matrix> {
        let z = self.decision_function(x)?;
        match self.output {
            Output::Identity => Err(invalid("predict_proba needs a classifier")),
            Output::Sigmoid => {
                let mut out = Matrix::zeros(z.rows(), 2);
                for i in 0..z.rows() {
                    let p = sigmoid(z.get(i, 0));
                    out.row_mut(i).copy_from_slice(&[1.0 - p, p]);
                }
                Ok(out)
            }
            Output::Softmax => {
                let mut out = z;
                for i in 0..out.rows() {
                    let r = out.row_mut(i);
                    let m = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let mut s = 0.0;
                    for v in r.iter_mut() {
                        *v = (*v - m).exp();
                        s += *v;
                    }
                    r.iter_mut().for_each(|v| *v /= s);
                }
                Ok(out)
            }
        }
    }

    /// Predicted class codes or values.
    pub fn predict(&self, x: &Matrix) -> Result<Prediction> {
        let z = self.decision_function(x)?;
        Ok(match self.output {
            Output::Identity => Prediction::Values(z.column(0)),
            Output::Sigmoid => Prediction::Classes(
                (0..z.rows())
                    .map(|i| usize::from(z.get(i, 0) > 0.0))
                    .collect(),
            ),
            Output::Softmax => Prediction::Classes(
                (0..z.rows())
                    .map(|i| {
                        let r = z.row(i);
                        let mut best = 0;
                        for j in 1..r.len() {
                            if r[j] > r[best] {
                                best = j;
                            }
                        }
                        best
                    })
                    .collect(),
            ),
        })
    }
}

fn check_target(y: &Y, n: usize, n_classes: usize) -> Result<()> {
    match y {
        Y::Classes(c) => {
            if c.len() != n {
                return Err(shape(format!("{} targets for {n} rows", c.len())));
            }
            if let Some(i) = c.iter().position(|&v| v >= n_classes) {
                return Err(MlError::InvalidData(format!(
                    "row {i}: class code {} out of range for {n_classes} classes",
                    c[i]
                )));
            }
        }
        Y::Values(v) => {
            if v.len() != n {
                return Err(shape(format!("{} targets for {n} rows", v.len())));
            }
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(MlError::InvalidData(format!(
                    "row {i}: target is not finite"
                )));
            }
        }
    }
    Ok(())
}

struct OptState {
    t: u64,
    m_w: Vec<Vec<f64>>,
    m_b: Vec<Vec<f64>>,
    v_w: Vec<Vec<f64>>,
    v_b: Vec<Vec<f64>>,
}

impl OptState {
    fn new(model: &Model) -> Self {
        let zw = || {
            model
                .layers
                .iter()
                .map(|l| vec![0.0; l.weights.len()])
                .collect::<Vec<_>>()
        };
        let zb = || {
            model
                .layers
                .iter()
                .map(|l| vec![0.0; l.n_out])
                .collect::<Vec<_>>()
        };
        OptState {
            t: 0,
            m_w: zw(),
            m_b: zb(),
            v_w: zw(),
            v_b: zb(),
        }
    }

    fn step(&mut self, model: &mut Model, g: &Grads, cfg: &TrainConfig) {
        self.t += 1;
        let lr = cfg.learning_rate;
        for (li, layer) in model.layers.iter_mut().enumerate() {
            let params: [(&mut Vec<f64>, &Vec<f64>, usize, bool); 2] = [
                (&mut layer.weights, &g.w[li], 0, true),
                (&mut layer.biases, &g.b[li], 1, false),
            ];
            for (p, grad, which, is_weight) in params {
                let (m, v) = if which == 0 {
                    (&mut self.m_w[li], &mut self.v_w[li])
                } else {
                    (&mut self.m_b[li], &mut self.v_b[li])
                };
                match cfg.optimizer {
                    // Full batch, stepped by `lbfgs::Lbfgs` instead.
                    Optimizer::Lbfgs { .. } => {}
                    Optimizer::Sgd => {
                        for (pi, gi) in p.iter_mut().zip(grad) {
                            *pi -= lr * gi;
                        }
                    }
                    Optimizer::Momentum { momentum } => {
                        for ((pi, gi), vi) in p.iter_mut().zip(grad).zip(m.iter_mut()) {
                            *vi = momentum * *vi - lr * gi;
                            *pi += *vi;
                        }
                    }
                    Optimizer::Nesterov { momentum } => {
                        for ((pi, gi), vi) in p.iter_mut().zip(grad).zip(m.iter_mut()) {
                            *vi = momentum * *vi - lr * gi;
                            *pi += momentum * *vi - lr * gi;
                        }
                    }
                    Optimizer::Adam { beta1, beta2, eps }
                    | Optimizer::AdamW {
                        beta1, beta2, eps, ..
                    } => {
                        let wd = match cfg.optimizer {
                            Optimizer::AdamW { weight_decay, .. } if is_weight => weight_decay,
                            _ => 0.0,
                        };
                        let c1 = 1.0 - beta1.powi(self.t.min(i32::MAX as u64) as i32);
                        let c2 = 1.0 - beta2.powi(self.t.min(i32::MAX as u64) as i32);
                        // Zipped (no bounds checks) so it vectorises; same
                        // operations, same order, same bits.
                        for (((pi, &gi), mi), vi) in
                            p.iter_mut().zip(grad).zip(m.iter_mut()).zip(v.iter_mut())
                        {
                            *mi = beta1 * *mi + (1.0 - beta1) * gi;
                            *vi = beta2 * *vi + (1.0 - beta2) * gi * gi;
                            let mh = *mi / c1;
                            let vh = *vi / c2;
                            *pi -= lr * (mh / (vh.sqrt() + eps) + wd * *pi);
                        }
                    }
                }
            }
        }
    }
}

/// Closed-form least squares.
pub struct LinearRegression;

impl LinearRegression {
    /// Ordinary (`l2 = 0`) or ridge least squares with an unpenalised
    /// intercept, solved by Cholesky on the centred normal equations
    /// (`(XcᵀXc + l2·I) w = Xcᵀ yc`). A rank-deficient problem gets a tiny
    /// ridge (1e-10 of the trace) so it still solves.
    pub fn least_squares(x: &Matrix, y: &[f64], l2: f64) -> Result<Model> {
        let (n, d) = (x.rows(), x.cols());
        if n == 0 || d == 0 {
            return Err(MlError::InvalidData(
                "least squares needs rows and features".into(),
            ));
        }
        if y.len() != n {
            return Err(shape(format!("{} targets for {n} rows", y.len())));
        }
        check_finite(x, "features")?;
        if y.iter().any(|v| !v.is_finite()) || l2 < 0.0 || l2.is_nan() {
            return Err(invalid("targets must be finite and l2 >= 0"));
        }
        let xm: Vec<f64> = (0..d)
            .map(|j| x.column(j).iter().sum::<f64>() / n as f64)
            .collect();
        let ym = y.iter().sum::<f64>() / n as f64;
        let mut a = vec![0.0; d * d];
        let mut rhs = vec![0.0; d];
        let mut xc = vec![0.0; d];
        for (i, &yi) in y.iter().enumerate() {
            for j in 0..d {
                xc[j] = x.get(i, j) - xm[j];
            }
            let yc = yi - ym;
            for j in 0..d {
                rhs[j] += xc[j] * yc;
                for k in 0..=j {
                    a[j * d + k] += xc[j] * xc[k];
                }
            }
        }
        for j in 0..d {
            for k in 0..j {
                a[k * d + j] = a[j * d + k];
            }
            a[j * d + j] += l2;
        }
        let w = match cholesky_solve(&a, &rhs, d) {
            Some(w) => w,
            None => {
                let trace: f64 = (0..d).map(|j| a[j * d + j]).sum();
                let mut a2 = a.clone();
                for j in 0..d {
                    a2[j * d + j] += 1e-10 * trace.max(1e-300);
                }
                cholesky_solve(&a2, &rhs, d).ok_or_else(|| {
                    MlError::InvalidData("least squares system is singular".into())
                })?
            }
        };
        let b = ym - w.iter().zip(&xm).map(|(w, m)| w * m).sum::<f64>();
        let mut model = Model::new(&ModelKind::LinearRegression, d, 0, true)?;
        model.layers[0].weights = w;
        model.layers[0].biases = vec![b];
        Ok(model)
    }
}

fn cholesky_solve(a: &[f64], b: &[f64], d: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i * d + k] * l[j * d + k]).sum();
            if i == j {
                let v = a[i * d + i] - s;
                if v <= 0.0 || !v.is_finite() {
                    return None;
                }
                l[i * d + i] = v.sqrt();
            } else {
                l[i * d + j] = (a[i * d + j] - s) / l[j * d + j];
            }
        }
    }
    let mut z = vec![0.0; d];
    for i in 0..d {
        let s: f64 = (0..i).map(|k| l[i * d + k] * z[k]).sum();
        z[i] = (b[i] - s) / l[i * d + i];
    }
    let mut x = vec![0.0; d];
    for i in (0..d).rev() {
        let s: f64 = (i + 1..d).map(|k| l[k * d + i] * x[k]).sum();
        x[i] = (z[i] - s) / l[i * d + i];
    }
    Some(x)
}
