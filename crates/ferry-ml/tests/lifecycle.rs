//! Cleaning, the pipeline, training behaviour, cross-validation and bootstrap.
mod common;

use std::collections::BTreeMap;

use common::*;
use ferry_ml::data::{Cell, Column, ColumnData, Dataset, Record};
use ferry_ml::metrics::{self, CvStrategy, Scores};
use ferry_ml::model::{
    Activation, EarlyStopping, EpochReport, Flow, Init, LinearRegression, Model, ModelKind,
    NoObserver, Optimizer, Prediction, TrainConfig, TrainData, TrainObserver,
};
use ferry_ml::preprocess::{
    self, ConvertTo, HandleUnknown, ImputeStrategy, OnError, Pipeline, PipelineSpec, ScalerKind,
    Target, Task,
};
use ferry_ml::{Matrix, MlError};

fn toy() -> Dataset {
    Dataset::new(vec![
        Column::numeric("x", vec![1.0, f64::NAN, 3.0, 1.0, 5.0]),
        Column::text(
            "color",
            vec![Some("red"), Some("blue"), None, Some("red"), Some("green")],
        ),
        Column::text(
            "num",
            vec![Some("1.5"), Some("oops"), Some("2"), Some("1.5"), None],
        ),
        Column::text(
            "label",
            vec![
                Some("yes"),
                Some("no"),
                Some("yes"),
                Some("yes"),
                Some("no"),
            ],
        ),
    ])
    .unwrap()
}

#[test]
fn cleaning_operations() {
    let ds = toy();
    assert_eq!(
        preprocess::drop_missing_rows(&ds, None).unwrap().n_rows(),
        2
    );
    assert_eq!(
        preprocess::drop_missing_rows(&ds, Some(&["x"]))
            .unwrap()
            .n_rows(),
        4
    );
    assert_eq!(preprocess::drop_duplicate_rows(&ds).unwrap().n_rows(), 4);

    let mut d = ds.clone();
    match preprocess::convert_column(&mut d, "num", ConvertTo::Numeric, OnError::Fail) {
        Err(MlError::Conversion {
            row, column, value, ..
        }) => {
            assert_eq!((row, column.as_str(), value.as_str()), (1, "num", "oops"))
        }
        other => panic!("{other:?}"),
    }
    preprocess::convert_column(&mut d, "num", ConvertTo::Numeric, OnError::Coerce).unwrap();
    match &d.column("num").unwrap().data {
        ColumnData::Numeric(v) => {
            assert_eq!(v[0], 1.5);
            assert!(v[1].is_nan() && v[4].is_nan());
        }
        other => panic!("{other:?}"),
    }
    preprocess::convert_column(&mut d, "label", ConvertTo::Bool, OnError::Fail).unwrap();
    assert_eq!(d.column("label").unwrap().data.cell(0), Cell::Bool(true));
    preprocess::convert_column(&mut d, "color", ConvertTo::Categorical, OnError::Fail).unwrap();
    match &d.column("color").unwrap().data {
        ColumnData::Categorical { categories, codes } => {
            assert_eq!(categories, &["blue", "green", "red"]);
            assert_eq!(codes[0], Some(2));
            assert_eq!(codes[2], None);
        }
        other => panic!("{other:?}"),
    }
    preprocess::impute_column(&mut d, "x", &ImputeStrategy::Median).unwrap();
    assert_eq!(d.column("x").unwrap().data.cell(1), Cell::Number(2.0));
    preprocess::impute_column(&mut d, "color", &ImputeStrategy::MostFrequent).unwrap();
    assert_eq!(
        d.column("color").unwrap().data.text(2).as_deref(),
        Some("red")
    );
}

#[test]
fn pipeline_fits_on_train_and_transforms_records() {
    let ds = toy();
    let spec = PipelineSpec {
        target: Some("label".into()),
        features: Some(vec!["x".into(), "color".into()]),
        ..Default::default()
    };
    let train = ds.take_rows(&[0, 1, 2, 3]).unwrap();
    let pipe = Pipeline::fit(&spec, &train).unwrap();
    assert_eq!(pipe.feature_names, vec!["x", "color_blue", "color_red"]);
    assert_eq!(pipe.classes(), &["no", "yes"]);
    let x = pipe.transform(&train).unwrap();
    // x: train values 1, NaN->mean(1,3,1)=5/3, 3, 1 ; standardised with the train stats
    let xs = [1.0, 5.0 / 3.0, 3.0, 1.0];
    let m = 5.0 / 3.0;
    let sd = (xs.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / 4.0).sqrt();
    assert_close(x.get(0, 0), (1.0 - m) / sd, 1e-12, "scaled x");
    assert_eq!(
        x.row(2)[1..],
        [0.0, 1.0],
        "missing color imputed with most frequent (red)"
    );
    // unseen category in test row -> all zeros (handle_unknown = ignore)
    let test = pipe.transform(&ds.take_rows(&[4]).unwrap()).unwrap();
    assert_eq!(test.row(0)[1..], [0.0, 0.0]);
    // records at prediction time, numbers may arrive as strings
    let mut rec: Record = BTreeMap::new();
    rec.insert("x".into(), Cell::Text("3".into()));
    rec.insert("color".into(), Cell::Text("blue".into()));
    let xr = pipe.transform_records(&[rec.clone()]).unwrap();
    assert_close(xr.get(0, 0), (3.0 - m) / sd, 1e-12, "record x");
    assert_eq!(xr.row(0)[1..], [1.0, 0.0]);
    rec.insert("x".into(), Cell::Text("abc".into()));
    assert!(matches!(
        pipe.transform_records(&[rec]),
        Err(MlError::Conversion { row: 0, .. })
    ));
    // JSON records deserialize straight into cells
    let recs: Vec<Record> = serde_json::from_str(r#"[{"x": 2, "color": null}]"#).unwrap();
    assert_eq!(pipe.transform_records(&recs).unwrap().cols(), 3);
    // target
    assert_eq!(
        pipe.transform_target(&train).unwrap(),
        Target::Classes(vec![1, 0, 1, 1])
    );
    assert_eq!(pipe.decode_class(0).unwrap(), "no");
    // serde round trip
    let json = serde_json::to_string(&pipe).unwrap();
    let back: Pipeline = serde_json::from_str(&json).unwrap();
    assert_eq!(back.transform(&train).unwrap(), x);
    // strict unknown handling
    let strict = Pipeline::fit(
        &PipelineSpec {
            handle_unknown: HandleUnknown::Error,
            ..spec.clone()
        },
        &train,
    )
    .unwrap();
    assert!(matches!(
        strict.transform(&ds.take_rows(&[4]).unwrap()),
        Err(MlError::UnknownCategory { row: 0, .. })
    ));
    // missing column
    assert!(matches!(
        pipe.transform(&ds.select(&["x"]).unwrap()),
        Err(MlError::MissingColumn(_))
    ));
}

fn blobs(n: usize, seed: u32) -> (Matrix, Vec<usize>) {
    let mut rs = ferry_ml::RandomState::new(seed);
    let mut rows = Vec::new();
    let mut y = Vec::new();
    for i in 0..n {
        let c = i % 3;
        let (cx, cy) = [(0.0, 0.0), (3.0, 3.0), (-3.0, 3.0)][c];
        rows.push(vec![cx + rs.standard_normal(), cy + rs.standard_normal()]);
        y.push(c);
    }
    (Matrix::from_rows(&rows).unwrap(), y)
}

#[test]
fn training_is_deterministic_and_serializable() {
    let (x, y) = blobs(150, 1);
    let t = Target::Classes(y);
    let data = TrainData {
        x: &x,
        y: &t,
        n_classes: 3,
        validation: None,
    };
    let kind = ModelKind::Mlp {
        hidden: vec![8, 4],
        activation: Activation::Tanh,
    };
    let cfg = TrainConfig {
        epochs: 30,
        learning_rate: 0.01,
        seed: 7,
        ..Default::default()
    };
    let (a, ha) = Model::fit(&kind, data, &cfg, &mut NoObserver).unwrap();
    let (b, hb) = Model::fit(&kind, data, &cfg, &mut NoObserver).unwrap();
    assert_eq!(a, b, "same seed and data give a bit-identical model");
    assert_eq!(ha, hb);
    let (c, _) = Model::fit(
        &kind,
        data,
        &TrainConfig {
            seed: 8,
            ..cfg.clone()
        },
        &mut NoObserver,
    )
    .unwrap();
    assert_ne!(a, c);
    let json = serde_json::to_string(&a).unwrap();
    let back: Model = serde_json::from_str(&json).unwrap();
    assert_eq!(back.predict(&x).unwrap(), a.predict(&x).unwrap());
    let p = a.predict_proba(&x).unwrap();
    assert_eq!((p.rows(), p.cols()), (150, 3));
    assert!((p.row(0).iter().sum::<f64>() - 1.0).abs() < 1e-12);
    // wrong width and non-finite inputs are errors, not panics
    assert!(a.predict(&Matrix::zeros(1, 3)).is_err());
    assert!(a
        .predict(&Matrix::from_rows(&[[f64::NAN, 0.0]]).unwrap())
        .is_err());
}

#[test]
fn every_optimizer_and_init_learns_blobs() {
    let (x, y) = blobs(150, 2);
    let t = Target::Classes(y.clone());
    let data = TrainData {
        x: &x,
        y: &t,
        n_classes: 3,
        validation: None,
    };
    let opts = [
        (Optimizer::Sgd, 0.1, None),
        (Optimizer::Sgd, 0.05, Some(1)),
        (Optimizer::Momentum { momentum: 0.9 }, 0.02, Some(16)),
        (Optimizer::Nesterov { momentum: 0.9 }, 0.02, Some(16)),
        (Optimizer::adam(), 0.01, Some(32)),
        (
            Optimizer::AdamW {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 1e-3,
            },
            0.01,
            Some(32),
        ),
    ];
    let inits = [
        Init::XavierUniform,
        Init::XavierNormal,
        Init::HeUniform,
        Init::HeNormal,
        Init::Uniform {
            low: -0.1,
            high: 0.1,
        },
        Init::Normal {
            mean: 0.0,
            std: 0.1,
        },
    ];
    for ((opt, lr, bs), init) in opts.into_iter().zip(inits) {
        let cfg = TrainConfig {
            optimizer: opt,
            learning_rate: lr,
            batch_size: bs,
            epochs: 40,
            init,
            ..Default::default()
        };
        let kind = ModelKind::Mlp {
            hidden: vec![8],
            activation: Activation::Relu,
        };
        let (m, h) = Model::fit(&kind, data, &cfg, &mut NoObserver).unwrap();
        let Prediction::Classes(p) = m.predict(&x).unwrap() else {
            panic!()
        };
        let acc = metrics::accuracy(&y, &p).unwrap();
        assert!(acc > 0.9, "{opt:?}: accuracy {acc}");
        assert!(
            h.epochs.last().unwrap().train_loss < h.epochs[0].train_loss,
            "{opt:?}"
        );
    }
    // softmax regression from zeros, sigmoid MLP
    for (kind, init) in [
        (ModelKind::SoftmaxRegression, Init::Zeros),
        (
            ModelKind::Mlp {
                hidden: vec![6],
                activation: Activation::Sigmoid,
            },
            Init::XavierUniform,
        ),
    ] {
        let cfg = TrainConfig {
            learning_rate: 0.05,
            epochs: 60,
            init,
            ..Default::default()
        };
        let (m, _) = Model::fit(&kind, data, &cfg, &mut NoObserver).unwrap();
        let Prediction::Classes(p) = m.predict(&x).unwrap() else {
            panic!()
        };
        assert!(metrics::accuracy(&y, &p).unwrap() > 0.9, "{kind:?}");
    }
    assert!(Model::fit(
        &ModelKind::LogisticRegression,
        data,
        &TrainConfig::default(),
        &mut NoObserver
    )
    .is_err());
}

#[test]
fn regression_models_fit_diabetes() {
    let ds = dataset("diabetes");
    let spec = PipelineSpec {
        target: Some("target".into()),
        task: Task::Regression,
        ..Default::default()
    };
    let pipe = Pipeline::fit(&spec, &ds).unwrap();
    let x = pipe.transform(&ds).unwrap();
    let Target::Values(y) = pipe.transform_target(&ds).unwrap() else {
        panic!()
    };
    let ols = LinearRegression::least_squares(&x, &y, 0.0).unwrap();
    let Prediction::Values(p) = ols.predict(&x).unwrap() else {
        panic!()
    };
    let r2_ols = metrics::r2_score(&y, &p).unwrap();
    assert!(r2_ols > 0.45, "OLS r2 {r2_ols}");
    let t = Target::Values(y.clone());
    let data = TrainData {
        x: &x,
        y: &t,
        n_classes: 0,
        validation: None,
    };
    let cfg = TrainConfig {
        optimizer: Optimizer::Sgd,
        learning_rate: 0.1,
        batch_size: None,
        epochs: 3000,
        shuffle: false,
        ..Default::default()
    };
    let (gd, _) = Model::fit(&ModelKind::LinearRegression, data, &cfg, &mut NoObserver).unwrap();
    let Prediction::Values(p) = gd.predict(&x).unwrap() else {
        panic!()
    };
    let r2_gd = metrics::r2_score(&y, &p).unwrap();
    assert!(
        (r2_gd - r2_ols).abs() < 5e-3,
        "gradient {r2_gd} vs closed form {r2_ols}"
    );
    assert!(gd.predict_proba(&x).is_err());
    let mlp = ModelKind::Mlp {
        hidden: vec![16],
        activation: Activation::Relu,
    };
    let cfg = TrainConfig {
        learning_rate: 0.01,
        epochs: 100,
        ..Default::default()
    };
    let (m, _) = Model::fit(&mlp, data, &cfg, &mut NoObserver).unwrap();
    let Prediction::Values(p) = m.predict(&x).unwrap() else {
        panic!()
    };
    assert!(metrics::r2_score(&y, &p).unwrap() > 0.3);
}

struct Recorder {
    reports: Vec<EpochReport>,
    stop_at: Option<usize>,
    cancel: bool,
}

impl TrainObserver for Recorder {
    fn on_epoch(&mut self, r: &EpochReport) -> Flow {
        self.reports.push(*r);
        if Some(r.epoch) == self.stop_at {
            Flow::Stop
        } else {
            Flow::Continue
        }
    }
    fn is_cancelled(&self) -> bool {
        self.cancel
    }
}

#[test]
fn callbacks_early_stopping_and_cancellation() {
    let (x, y) = blobs(120, 3);
    let tr: Vec<usize> = (0..90).collect();
    let va: Vec<usize> = (90..120).collect();
    let (xtr, xva) = (x.select_rows(&tr).unwrap(), x.select_rows(&va).unwrap());
    let ytr = Target::Classes(tr.iter().map(|&i| y[i]).collect());
    let yva = Target::Classes(va.iter().map(|&i| y[i]).collect());
    let data = TrainData {
        x: &xtr,
        y: &ytr,
        n_classes: 3,
        validation: Some((&xva, &yva)),
    };
    let kind = ModelKind::Mlp {
        hidden: vec![32],
        activation: Activation::Relu,
    };
    let cfg = TrainConfig {
        learning_rate: 0.05,
        epochs: 500,
        early_stopping: Some(EarlyStopping {
            patience: 5,
            tol: 1e-4,
            restore_best: true,
        }),
        ..Default::default()
    };
    let mut rec = Recorder {
        reports: vec![],
        stop_at: None,
        cancel: false,
    };
    let (m, h) = Model::fit(&kind, data, &cfg, &mut rec).unwrap();
    assert!(
        h.stopped_early && h.epochs.len() < 500,
        "stopped after {}",
        h.epochs.len()
    );
    assert_eq!(rec.reports.len(), h.epochs.len());
    assert!(rec
        .reports
        .iter()
        .all(|r| r.val_loss.is_some() && r.train_loss.is_finite()));
    let best = h.epochs[h.best_epoch - 1].val_loss.unwrap();
    assert!(
        (m.loss(&xva, &yva).unwrap() - best).abs() < 1e-12,
        "best weights restored"
    );
    let min = h
        .epochs
        .iter()
        .map(|e| e.val_loss.unwrap())
        .fold(f64::INFINITY, f64::min);
    assert_eq!(best, min);

    let mut rec = Recorder {
        reports: vec![],
        stop_at: Some(3),
        cancel: false,
    };
    let (_, h) = Model::fit(
        &kind,
        data,
        &TrainConfig {
            early_stopping: None,
            ..cfg.clone()
        },
        &mut rec,
    )
    .unwrap();
    assert!(h.stopped_by_observer);
    assert_eq!(h.epochs.len(), 3);

    let mut rec = Recorder {
        reports: vec![],
        stop_at: None,
        cancel: true,
    };
    assert_eq!(
        Model::fit(&kind, data, &cfg, &mut rec).unwrap_err(),
        MlError::Cancelled
    );

    let bad = TrainConfig {
        learning_rate: 1e6,
        optimizer: Optimizer::Sgd,
        epochs: 50,
        ..Default::default()
    };
    let yv = Target::Values(xtr.column(0).iter().map(|v| v * 1e3).collect());
    let d = TrainData {
        x: &xtr,
        y: &yv,
        n_classes: 0,
        validation: None,
    };
    assert!(matches!(
        Model::fit(&ModelKind::LinearRegression, d, &bad, &mut NoObserver),
        Err(MlError::Diverged { .. })
    ));
}

#[test]
fn cross_validation_and_bootstrap() {
    let ds = dataset("iris");
    let y = int_targets("iris");
    let y_codes: Vec<usize> = y.iter().map(|&v| v as usize).collect();
    let spec = PipelineSpec {
        target: Some("target".into()),
        scaler: ScalerKind::Standard,
        ..Default::default()
    };
    let fit_score = |train: &[usize], test: &[usize]| -> ferry_ml::Result<Scores> {
        let tr = ds.take_rows(train)?;
        let te = ds.take_rows(test)?;
        let pipe = Pipeline::fit(&spec, &tr)?;
        let (x, t) = (pipe.transform(&tr)?, pipe.transform_target(&tr)?);
        let data = TrainData {
            x: &x,
            y: &t,
            n_classes: pipe.n_classes(),
            validation: None,
        };
        let cfg = TrainConfig {
            learning_rate: 0.1,
            batch_size: None,
            epochs: 200,
            shuffle: false,
            ..Default::default()
        };
        let (m, _) = Model::fit(&ModelKind::SoftmaxRegression, data, &cfg, &mut NoObserver)?;
        let Target::Classes(yt) = pipe.transform_target(&te)? else {
            unreachable!()
        };
        let Prediction::Classes(yp) = m.predict(&pipe.transform(&te)?)? else {
            unreachable!()
        };
        let mut s = Scores::new();
        s.insert("accuracy".into(), metrics::accuracy(&yt, &yp)?);
        s.insert(
            "f1_macro".into(),
            metrics::f1_score(
                &yt,
                &yp,
                &metrics::Average::Macro,
                metrics::ZeroDivision::Warn,
            )?,
        );
        Ok(s)
    };
    for strategy in [
        CvStrategy::KFold {
            n_splits: 5,
            shuffle: true,
            random_state: 0,
        },
        CvStrategy::StratifiedKFold {
            n_splits: 5,
            shuffle: false,
            random_state: 0,
        },
    ] {
        let folds = metrics::make_folds(&strategy, ds.n_rows(), Some(&y_codes)).unwrap();
        let rep = metrics::cross_validate(&folds, |_, f| fit_score(&f.train, &f.test)).unwrap();
        assert_eq!(rep.folds.len(), 5);
        let acc = rep.summary["accuracy"];
        assert!(acc.mean > 0.85 && acc.std >= 0.0, "{strategy:?}: {acc:?}");
    }
    let small: Vec<usize> = (0..150).step_by(10).collect();
    let loo = metrics::make_folds(&CvStrategy::LeaveOneOut, small.len(), None).unwrap();
    let rep = metrics::cross_validate(&loo, |_, f| {
        let map = |v: &[usize]| v.iter().map(|&i| small[i]).collect::<Vec<_>>();
        // LOO on 15 rows: only 4 or 5 training rows per class
        fit_score(&map(&f.train), &map(&f.test))
    })
    .unwrap();
    assert_eq!(rep.folds.len(), 15);

    let boot = metrics::bootstrap_evaluate(ds.n_rows(), 8, 3, 0.9, |_, s| {
        fit_score(&s.sample, &s.out_of_bag)
    })
    .unwrap();
    let acc = boot.summary["accuracy"];
    assert!(acc.lower <= acc.mean && acc.mean <= acc.upper, "{acc:?}");
    assert!(acc.lower > 0.8);
    let again = metrics::bootstrap_evaluate(ds.n_rows(), 8, 3, 0.9, |_, s| {
        fit_score(&s.sample, &s.out_of_bag)
    })
    .unwrap();
    assert_eq!(boot, again);
    assert!(metrics::bootstrap_evaluate(10, 5, 0, 1.5, |_, _| Ok(Scores::new())).is_err());
    assert!(metrics::make_folds(
        &CvStrategy::StratifiedKFold {
            n_splits: 3,
            shuffle: false,
            random_state: 0
        },
        10,
        None
    )
    .is_err());
}
