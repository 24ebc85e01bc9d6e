//! The L-BFGS solver: convergence, monotone descent, determinism, its
//! argument checks, cancellation and early stopping.

use ferry_ml::model::{
    Activation, EarlyStopping, Model, ModelKind, NoObserver, Optimizer, Prediction, TrainConfig,
    TrainData, TrainObserver,
};
use ferry_ml::preprocess::Target;
use ferry_ml::split::RandomState;
use ferry_ml::{metrics, Matrix, MlError};

/// Three overlapping Gaussian blobs in 4 dimensions.
fn blobs(n: usize, seed: u32) -> (Matrix, Vec<usize>) {
    let mut rng = RandomState::new(seed);
    let mut rows = Vec::new();
    let mut y = Vec::new();
    for i in 0..n {
        let c = i % 3;
        let row: Vec<f64> = (0..4)
            .map(|j| rng.normal(if j == c { 1.5 } else { 0.0 }, 1.0))
            .collect();
        rows.push(row);
        y.push(c);
    }
    (Matrix::from_rows(&rows).unwrap(), y)
}

fn lbfgs(epochs: usize) -> TrainConfig {
    TrainConfig {
        optimizer: Optimizer::lbfgs(),
        learning_rate: 1.0,
        epochs,
        batch_size: None,
        l2: 1e-2,
        ..Default::default()
    }
}

#[test]
fn converges_monotonically_and_deterministically() {
    let (x, y) = blobs(300, 3);
    let t = Target::Classes(y.clone());
    let data = TrainData {
        x: &x,
        y: &t,
        n_classes: 3,
        validation: None,
    };
    for kind in [
        ModelKind::SoftmaxRegression,
        ModelKind::Mlp {
            hidden: vec![16],
            activation: Activation::Tanh,
        },
    ] {
        let (m, h) = Model::fit(&kind, data, &lbfgs(500), &mut NoObserver).unwrap();
        // Every accepted step satisfies the sufficient-decrease condition.
        for w in h.epochs.windows(2) {
            assert!(w[1].train_loss <= w[0].train_loss, "{kind:?}: {w:?}");
        }
        assert!(h.converged, "{kind:?} did not converge in 500 iterations");
        assert!(h.epochs.len() < 500);
        let Prediction::Classes(p) = m.predict(&x).unwrap() else {
            panic!()
        };
        assert!(metrics::accuracy(&y, &p).unwrap() > 0.7);
        let (m2, h2) = Model::fit(&kind, data, &lbfgs(500), &mut NoObserver).unwrap();
        assert_eq!(m, m2, "{kind:?}: same data and seed, same bits");
        assert_eq!(h, h2);
    }
    // The softmax problem is convex: Adam run long lands on the same minimum.
    let (_, h) = Model::fit(
        &ModelKind::SoftmaxRegression,
        data,
        &lbfgs(500),
        &mut NoObserver,
    )
    .unwrap();
    let adam = TrainConfig {
        optimizer: Optimizer::adam(),
        learning_rate: 0.05,
        epochs: 3000,
        shuffle: false,
        ..lbfgs(0)
    };
    let (_, ha) = Model::fit(&ModelKind::SoftmaxRegression, data, &adam, &mut NoObserver).unwrap();
    let (a, b) = (
        h.epochs.last().unwrap().train_loss,
        ha.epochs.last().unwrap().train_loss,
    );
    assert!(a <= b + 1e-7, "lbfgs {a} vs adam {b}");
    assert!((a - b).abs() < 1e-5, "lbfgs {a} vs adam {b}");
}

#[test]
fn bad_settings_are_errors() {
    let (x, y) = blobs(30, 1);
    let t = Target::Classes(y);
    let data = TrainData {
        x: &x,
        y: &t,
        n_classes: 3,
        validation: None,
    };
    let kind = ModelKind::SoftmaxRegression;
    let with = |opt, bs| TrainConfig {
        optimizer: opt,
        batch_size: bs,
        ..lbfgs(10)
    };
    for (cfg, want) in [
        (with(Optimizer::lbfgs(), Some(8)), "full-batch"),
        (
            with(
                Optimizer::Lbfgs {
                    memory: 0,
                    tol: 1e-4,
                },
                None,
            ),
            "memory",
        ),
        (
            with(
                Optimizer::Lbfgs {
                    memory: 5,
                    tol: f64::NAN,
                },
                None,
            ),
            "tol",
        ),
    ] {
        match Model::fit(&kind, data, &cfg, &mut NoObserver) {
            Err(MlError::InvalidParameter(m)) => assert!(m.contains(want), "{m}"),
            other => panic!("{want}: {other:?}"),
        }
    }
}

struct CancelAfter(usize, std::cell::Cell<usize>);

impl TrainObserver for CancelAfter {
    fn is_cancelled(&self) -> bool {
        self.1.set(self.1.get() + 1);
        self.1.get() > self.0
    }
}

#[test]
fn cancellation_and_early_stopping() {
    let (x, y) = blobs(120, 5);
    let t = Target::Classes(y);
    let (vx, vy) = blobs(60, 6);
    let vt = Target::Classes(vy);
    let data = TrainData {
        x: &x,
        y: &t,
        n_classes: 3,
        validation: Some((&vx, &vt)),
    };
    let kind = ModelKind::Mlp {
        hidden: vec![32],
        activation: Activation::Relu,
    };
    let mut obs = CancelAfter(3, Default::default());
    assert!(matches!(
        Model::fit(&kind, data, &lbfgs(100), &mut obs),
        Err(MlError::Cancelled)
    ));
    // Without a penalty the MLP overfits; early stopping on the validation
    // loss stops and restores the best epoch.
    let cfg = TrainConfig {
        l2: 0.0,
        early_stopping: Some(EarlyStopping {
            patience: 5,
            tol: 0.0,
            restore_best: true,
        }),
        ..lbfgs(400)
    };
    let (_, h) = Model::fit(&kind, data, &cfg, &mut NoObserver).unwrap();
    let best = h
        .epochs
        .iter()
        .map(|e| e.val_loss.unwrap())
        .fold(f64::INFINITY, f64::min);
    assert_eq!(
        h.epochs[h.best_epoch - 1].val_loss.unwrap(),
        best,
        "best epoch {} of {}",
        h.best_epoch,
        h.epochs.len()
    );
    assert!(h.stopped_early || h.converged);
}
