//! Ferry's logistic regression and MLP against scikit-learn's on the same
//! split and preprocessing: test accuracy within 2 points; and Ferry's L-BFGS
//! reaches the penalised objective scikit-learn's lbfgs solver reaches.
mod common;

use common::*;
use ferry_ml::model::{
    Activation, Model, ModelKind, NoObserver, Optimizer, Prediction, TrainConfig, TrainData,
};
use ferry_ml::preprocess::{Pipeline, PipelineSpec, ScalerKind, Target, Task};
use ferry_ml::split::{self, SplitOptions};
use ferry_ml::{metrics, Matrix};

struct Prepared {
    xtr: Matrix,
    ytr: Target,
    xte: Matrix,
    yte: Vec<usize>,
    n_classes: usize,
}

fn prepare(name: &str, golden: &serde_json::Value) -> Prepared {
    let ds = dataset(name);
    let y = int_targets(name);
    let tt = split::train_test_split(
        ds.n_rows(),
        &SplitOptions::test_fraction(0.25, 42),
        Some(&y[..]),
    )
    .unwrap();
    assert_eq!(
        tt.train,
        usizes(&golden["train"]),
        "{name}: same split as sklearn"
    );
    assert_eq!(tt.test, usizes(&golden["test"]));
    let train = ds.take_rows(&tt.train).unwrap();
    let test = ds.take_rows(&tt.test).unwrap();
    let spec = PipelineSpec {
        target: Some("target".into()),
        task: Task::Classification,
        scaler: ScalerKind::Standard,
        ..Default::default()
    };
    let pipe = Pipeline::fit(&spec, &train).unwrap();
    let yte = match pipe.transform_target(&test).unwrap() {
        Target::Classes(c) => c,
        _ => unreachable!(),
    };
    Prepared {
        xtr: pipe.transform(&train).unwrap(),
        ytr: pipe.transform_target(&train).unwrap(),
        xte: pipe.transform(&test).unwrap(),
        yte,
        n_classes: pipe.n_classes(),
    }
}

fn accuracy(model: &Model, p: &Prepared) -> f64 {
    match model.predict(&p.xte).unwrap() {
        Prediction::Classes(c) => metrics::accuracy(&p.yte, &c).unwrap(),
        _ => unreachable!(),
    }
}

#[test]
fn logistic_and_mlp_match_sklearn_accuracy() {
    let g = load("models.json");
    let mut lines = Vec::new();
    for r in g["results"].as_array().unwrap() {
        let name = r["dataset"].as_str().unwrap();
        let p = prepare(name, r);
        let n_train = p.xtr.rows() as f64;
        let data = TrainData {
            x: &p.xtr,
            y: &p.ytr,
            n_classes: p.n_classes,
            validation: None,
        };
        // sklearn LogisticRegression(C=1): mean log-loss + ||w||² / (2 C n).
        let kind = if p.n_classes == 2 {
            ModelKind::LogisticRegression
        } else {
            ModelKind::SoftmaxRegression
        };
        let cfg = TrainConfig {
            optimizer: Optimizer::adam(),
            learning_rate: 0.05,
            epochs: 1500,
            batch_size: None,
            l2: 1.0 / n_train,
            shuffle: false,
            seed: 0,
            ..Default::default()
        };
        let (lr, _) = Model::fit(&kind, data, &cfg, &mut NoObserver).unwrap();
        let lr_acc = accuracy(&lr, &p);
        let sk_lr = r["logreg_acc"].as_f64().unwrap();

        // The same objective by L-BFGS, sklearn's own solver family: it must
        // reach sklearn's minimum (both stop at max |gradient| <= 1e-4) in a
        // comparable number of iterations, and the same accuracy.
        let cfg_lbfgs = TrainConfig {
            optimizer: Optimizer::lbfgs(),
            learning_rate: 1.0,
            epochs: 1000,
            batch_size: None,
            l2: 1.0 / n_train,
            seed: 0,
            ..Default::default()
        };
        let (lb, hist) = Model::fit(&kind, data, &cfg_lbfgs, &mut NoObserver).unwrap();
        let lb_acc = accuracy(&lb, &p);
        let objective = hist.epochs.last().unwrap().train_loss;
        let sk_objective = r["logreg_objective"].as_f64().unwrap();
        let sk_iter = r["logreg_n_iter"].as_u64().unwrap() as usize;
        assert!(hist.converged, "{name}: L-BFGS did not converge");
        // Both stop at a gradient of 1e-4, which leaves ~1e-5 of objective.
        assert!(
            (objective - sk_objective).abs() <= 1e-5,
            "{name}: L-BFGS objective {objective} vs sklearn's {sk_objective}"
        );
        // Run to a tight tolerance, Ferry reaches the true minimum: no higher
        // than sklearn's point, and not lower by more than sklearn's slack.
        let tight = TrainConfig {
            optimizer: ferry_ml::model::Optimizer::Lbfgs {
                memory: 10,
                tol: 1e-9,
            },
            ..cfg_lbfgs.clone()
        };
        let (_, th) = Model::fit(&kind, data, &tight, &mut NoObserver).unwrap();
        let min = th.epochs.last().unwrap().train_loss;
        assert!(
            min <= sk_objective + 1e-12 && min >= sk_objective - 1e-5,
            "{name}: minimum {min} vs sklearn's {sk_objective}"
        );
        assert!(
            hist.epochs.len() <= 3 * sk_iter + 10,
            "{name}: {} L-BFGS iterations, sklearn needed {sk_iter}",
            hist.epochs.len()
        );
        assert!(
            (lb_acc - sk_lr).abs() <= 0.02 + 1e-9,
            "{name} logistic (L-BFGS): ferry {lb_acc} vs sklearn {sk_lr}"
        );
        lines.push(format!(
            "{name}: L-BFGS objective ferry {objective:.10} sklearn {sk_objective:.10}, iterations ferry {} sklearn {sk_iter}, accuracy {lb_acc:.4}",
            hist.epochs.len()
        ));

        // sklearn MLPClassifier(hidden=(32,), relu, adam 1e-3, alpha=1e-4, batch 32, 300 epochs).
        let mut accs = Vec::new();
        for seed in 0..3u64 {
            let cfg = TrainConfig {
                optimizer: Optimizer::adam(),
                learning_rate: 1e-3,
                epochs: 300,
                batch_size: Some(32),
                l2: 1e-4 / 32.0,
                shuffle: true,
                seed,
                ..Default::default()
            };
            let kind = ModelKind::Mlp {
                hidden: vec![32],
                activation: Activation::Relu,
            };
            let (mlp, _) = Model::fit(&kind, data, &cfg, &mut NoObserver).unwrap();
            accs.push(accuracy(&mlp, &p));
        }
        let mlp_acc = accs.iter().sum::<f64>() / accs.len() as f64;
        let sk_mlp = r["mlp_acc"].as_f64().unwrap();
        lines.push(format!(
            "{name}: logreg ferry {lr_acc:.4} sklearn {sk_lr:.4} | mlp ferry {mlp_acc:.4} sklearn {sk_mlp:.4} (n_test {})",
            p.yte.len()
        ));
        assert!(
            (lr_acc - sk_lr).abs() <= 0.02 + 1e-9,
            "{name} logistic: ferry {lr_acc} vs sklearn {sk_lr}"
        );
        assert!(
            (mlp_acc - sk_mlp).abs() <= 0.02 + 1e-9,
            "{name} mlp: ferry {mlp_acc} vs sklearn {sk_mlp}"
        );
    }
    println!("{}", lines.join("\n"));
}
