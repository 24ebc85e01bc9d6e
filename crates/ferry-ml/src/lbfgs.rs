//! Limited-memory BFGS for [`Model::fit`](crate::model::Model::fit) with
//! [`Optimizer::Lbfgs`](crate::model::Optimizer::Lbfgs): full-batch
//! quasi-Newton steps (the two-loop recursion over the last `memory`
//! updates, scaled by `sᵀy / yᵀy`) with a line search that satisfies the
//! strong Wolfe conditions (`c1 = 1e-4`, `c2 = 0.9`, at most 50 evaluations
//! per iteration, as scikit-learn passes to scipy's L-BFGS-B).
//!
//! Convergence, as scikit-learn's `lbfgs` solver: the largest absolute
//! gradient component is at most `tol`, or the objective's relative decrease
//! falls to `64 ε` (scipy's `ftol` from scikit-learn), or the line search
//! finds no decrease. Everything is sequential and in a fixed order, so the
//! same data and seed give the same model bit for bit.

use std::collections::VecDeque;

use crate::error::{MlError, Result};
use crate::matrix::Matrix;
use crate::model::{Model, TrainObserver, Y};

/// Rows per forward/backward chunk (bounds the activations' memory).
const CHUNK: usize = 8192;
const C1: f64 = 1e-4;
const C2: f64 = 0.9;
const MAX_EVALS: usize = 50;

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The state carried between iterations.
pub(crate) struct Lbfgs {
    memory: usize,
    tol: f64,
    l2: f64,
    /// First trial step length (the training config's learning rate).
    first_step: f64,
    s: VecDeque<Vec<f64>>,
    y: VecDeque<Vec<f64>>,
    rho: VecDeque<f64>,
    /// Accepted parameters, their objective and gradient (`None` before the
    /// first evaluation).
    point: Option<(Vec<f64>, f64, Vec<f64>)>,
}

/// The outcome of one iteration.
pub(crate) struct Step {
    /// Objective (mean data loss + L2 term) at the accepted point.
    pub loss: f64,
    /// A convergence criterion was met; no further iteration is needed.
    pub converged: bool,
}

impl Lbfgs {
    pub(crate) fn new(memory: usize, tol: f64, l2: f64, first_step: f64) -> Self {
        Lbfgs {
            memory,
            tol,
            l2,
            first_step,
            s: VecDeque::new(),
            y: VecDeque::new(),
            rho: VecDeque::new(),
            point: None,
        }
    }

    /// Mean data loss + `0.5 · l2 · ‖W‖²` and its gradient at `theta`.
    fn objective(
        &self,
        model: &mut Model,
        theta: &[f64],
        x: &Matrix,
        y: &Y,
        observer: &dyn TrainObserver,
    ) -> Result<(f64, Vec<f64>)> {
        if observer.is_cancelled() {
            return Err(MlError::Cancelled);
        }
        model.set_params(theta);
        let n = x.rows();
        let rows: Vec<usize> = (0..n).collect();
        let mut f = 0.0;
        let mut g = vec![0.0; theta.len()];
        for chunk in rows.chunks(CHUNK) {
            let acts = model.forward(x, chunk);
            let (loss, delta) =
                model.loss_and_delta(acts.last().map_or(&[][..], |v| v), y, chunk, true);
            let grads = model.backward(&acts, delta, chunk.len(), 0.0);
            let w = chunk.len() as f64 / n as f64;
            f += loss * w;
            for (gi, v) in g.iter_mut().zip(grads.flatten()) {
                *gi += v * w;
            }
        }
        f += model.l2_term(self.l2);
        if self.l2 != 0.0 {
            model.add_l2_grad(theta, &mut g, self.l2);
        }
        Ok((f, g))
    }

    /// One L-BFGS iteration; leaves `model` at the accepted point.
    pub(crate) fn iterate(
        &mut self,
        model: &mut Model,
        x: &Matrix,
        y: &Y,
        observer: &dyn TrainObserver,
    ) -> Result<Step> {
        let (theta, f0, g0) = match self.point.take() {
            Some(p) => p,
            None => {
                let theta = model.params();
                let (f, g) = self.objective(model, &theta, x, y, observer)?;
                (theta, f, g)
            }
        };
        if !f0.is_finite() || g0.iter().any(|v| !v.is_finite()) {
            return Err(MlError::Diverged { epoch: 0, loss: f0 });
        }
        if g0.iter().fold(0.0f64, |m, v| m.max(v.abs())) <= self.tol {
            model.set_params(&theta);
            self.point = Some((theta, f0, g0));
            return Ok(Step {
                loss: f0,
                converged: true,
            });
        }
        let mut d = self.direction(&g0);
        let mut gd = dot(&g0, &d);
        // (`gd` NaN also lands here.)
        if gd >= 0.0 || !gd.is_finite() {
            // Not a descent direction (curvature information went stale): restart.
            self.s.clear();
            self.y.clear();
            self.rho.clear();
            d = g0.iter().map(|v| -v).collect();
            gd = -dot(&g0, &g0);
        }
        let alpha0 = if self.s.is_empty() {
            self.first_step / dot(&d, &d).sqrt()
        } else {
            1.0
        };
        let found = self.line_search(model, x, y, observer, (&theta, f0), &d, gd, alpha0)?;
        let Some((alpha, f1, g1)) = found else {
            // No decrease along the direction: the iterate is as good as it gets.
            model.set_params(&theta);
            self.point = Some((theta, f0, g0));
            return Ok(Step {
                loss: f0,
                converged: true,
            });
        };
        let s: Vec<f64> = d.iter().map(|v| alpha * v).collect();
        let theta1: Vec<f64> = theta.iter().zip(&s).map(|(t, si)| t + si).collect();
        let yv: Vec<f64> = g1.iter().zip(&g0).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &yv);
        if sy > f64::EPSILON * dot(&yv, &yv) {
            if self.s.len() == self.memory {
                self.s.pop_front();
                self.y.pop_front();
                self.rho.pop_front();
            }
            self.s.push_back(s);
            self.y.push_back(yv);
            self.rho.push_back(1.0 / sy);
        }
        let flat = (f0 - f1) <= 64.0 * f64::EPSILON * f0.abs().max(f1.abs()).max(1.0);
        let small = g1.iter().fold(0.0f64, |m, v| m.max(v.abs())) <= self.tol;
        model.set_params(&theta1);
        self.point = Some((theta1, f1, g1));
        Ok(Step {
            loss: f1,
            converged: flat || small,
        })
    }

    /// `-H·g` by the two-loop recursion.
    fn direction(&self, g: &[f64]) -> Vec<f64> {
        let k = self.s.len();
        let mut q = g.to_vec();
        let mut a = vec![0.0; k];
        for i in (0..k).rev() {
            a[i] = self.rho[i] * dot(&self.s[i], &q);
            for (qj, yj) in q.iter_mut().zip(&self.y[i]) {
                *qj -= a[i] * yj;
            }
        }
        if let (Some(s), Some(y)) = (self.s.back(), self.y.back()) {
            let gamma = dot(s, y) / dot(y, y);
            q.iter_mut().for_each(|v| *v *= gamma);
        }
        for (i, ai) in a.iter().enumerate() {
            let b = self.rho[i] * dot(&self.y[i], &q);
            for (qj, sj) in q.iter_mut().zip(&self.s[i]) {
                *qj += (ai - b) * sj;
            }
        }
        q.iter_mut().for_each(|v| *v = -*v);
        q
    }

    /// A step length along `d` meeting the strong Wolfe conditions
    /// (Nocedal & Wright, algorithms 3.5 and 3.6, bisection in the zoom);
    /// failing that, the best point meeting the sufficient-decrease
    /// condition; `None` when no trial decreased the objective.
    #[allow(clippy::too_many_arguments)]
    fn line_search(
        &self,
        model: &mut Model,
        x: &Matrix,
        y: &Y,
        observer: &dyn TrainObserver,
        (theta, f0): (&[f64], f64),
        d: &[f64],
        gd0: f64,
        alpha0: f64,
    ) -> Result<Option<(f64, f64, Vec<f64>)>> {
        let mut evals = 0;
        let mut best: Option<(f64, f64, Vec<f64>)> = None;
        let eval = |alpha: f64,
                    best: &mut Option<(f64, f64, Vec<f64>)>,
                    model: &mut Model|
         -> Result<(f64, f64, Vec<f64>)> {
            let trial: Vec<f64> = theta.iter().zip(d).map(|(t, di)| t + alpha * di).collect();
            let (f, g) = self.objective(model, &trial, x, y, observer)?;
            let dphi = dot(&g, d);
            let armijo = f.is_finite() && f <= f0 + C1 * alpha * gd0;
            if armijo && best.as_ref().is_none_or(|b| f < b.1) {
                *best = Some((alpha, f, g.clone()));
            }
            Ok((f, dphi, g))
        };
        let sufficient = |alpha: f64, f: f64| f.is_finite() && f <= f0 + C1 * alpha * gd0;

        // Bracketing: grow the step until it overshoots or meets the conditions.
        let (mut a_prev, mut f_prev) = (0.0, f0);
        let mut alpha = alpha0;
        let (mut lo, mut f_lo, mut hi);
        loop {
            if evals == MAX_EVALS || !alpha.is_finite() {
                return Ok(best);
            }
            let (f, dphi, g) = eval(alpha, &mut best, model)?;
            evals += 1;
            if !sufficient(alpha, f) || (evals > 1 && f >= f_prev) {
                (lo, f_lo, hi) = (a_prev, f_prev, alpha);
                break;
            }
            if dphi.abs() <= -C2 * gd0 {
                return Ok(Some((alpha, f, g)));
            }
            if dphi >= 0.0 {
                (lo, f_lo, hi) = (alpha, f, a_prev);
                break;
            }
            (a_prev, f_prev) = (alpha, f);
            alpha *= 2.0;
        }
        // Zoom between `lo` (sufficient decrease, lowest so far) and `hi`.
        while evals < MAX_EVALS {
            let alpha = 0.5 * (lo + hi);
            if alpha == lo || alpha == hi {
                break;
            }
            let (f, dphi, g) = eval(alpha, &mut best, model)?;
            evals += 1;
            if !sufficient(alpha, f) || f >= f_lo {
                hi = alpha;
            } else {
                if dphi.abs() <= -C2 * gd0 {
                    return Ok(Some((alpha, f, g)));
                }
                if dphi * (hi - lo) >= 0.0 {
                    hi = lo;
                }
                (lo, f_lo) = (alpha, f);
            }
        }
        Ok(best)
    }
}
