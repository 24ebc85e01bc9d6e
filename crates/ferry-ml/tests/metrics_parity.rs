//! Metric parity with scikit-learn 1.9.1 (1e-12) and report formatting.
mod common;

use common::*;
use ferry_ml::metrics::{self, Average, ZeroDivision};
use serde_json::Value;

const TOL: f64 = 1e-12;

fn zd(key: &str) -> ZeroDivision {
    match key {
        "warn" => ZeroDivision::Warn,
        "0" => ZeroDivision::Zero,
        "1" => ZeroDivision::One,
        _ => ZeroDivision::Nan,
    }
}

fn opt_labels(v: &Value) -> Option<Vec<i64>> {
    v.as_array().map(|_| i64s(v))
}

#[test]
fn classification_metrics_match_sklearn() {
    let g = load("metrics.json");
    let cases = g["classification"].as_array().unwrap();
    assert!(cases.len() >= 8);
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let yt = i64s(&c["y_true"]);
        let yp = i64s(&c["y_pred"]);
        let labels = opt_labels(&c["labels"]);
        let lab = labels.as_deref();
        assert_close(
            metrics::accuracy(&yt, &yp).unwrap(),
            c["accuracy"].as_f64().unwrap(),
            TOL,
            name,
        );
        let (_, cm) = metrics::confusion_matrix(&yt, &yp, lab).unwrap();
        let expect: Vec<Vec<usize>> = c["confusion"]
            .as_array()
            .unwrap()
            .iter()
            .map(usizes)
            .collect();
        assert_eq!(cm, expect, "{name} confusion");
        for (zkey, per) in c["prf"].as_object().unwrap() {
            let z = zd(zkey);
            let p = metrics::precision_recall_fscore_support(&yt, &yp, lab, 1.0, z).unwrap();
            let none = &per["None"];
            assert_all_close(
                &p.precision,
                &f64s(&none["precision"]),
                TOL,
                &format!("{name} {zkey} precision"),
            );
            assert_all_close(
                &p.recall,
                &f64s(&none["recall"]),
                TOL,
                &format!("{name} {zkey} recall"),
            );
            assert_all_close(
                &p.f_score,
                &f64s(&none["f1"]),
                TOL,
                &format!("{name} {zkey} f1"),
            );
            // (sklearn returns float supports for list inputs)
            let sup: Vec<f64> = p.support.iter().map(|&s| s as f64).collect();
            assert_eq!(sup, f64s(&none["support"]));
            let mut avgs = vec![
                ("micro", Average::Micro, 1.0),
                ("macro", Average::Macro, 1.0),
                ("weighted", Average::Weighted, 1.0),
                ("macro_beta_0.5", Average::Macro, 0.5),
            ];
            if per.get("binary").is_some() {
                avgs.push(("binary", Average::Binary(1), 1.0));
            }
            for (key, avg, beta) in avgs {
                let a =
                    metrics::precision_recall_fscore_average(&yt, &yp, lab, &avg, beta, z).unwrap();
                let e = &per[key];
                let what = format!("{name} zd={zkey} {key}");
                assert_close(
                    a.precision,
                    e["precision"].as_f64().unwrap_or(f64::NAN),
                    TOL,
                    &format!("{what} p"),
                );
                assert_close(
                    a.recall,
                    e["recall"].as_f64().unwrap_or(f64::NAN),
                    TOL,
                    &format!("{what} r"),
                );
                assert_close(
                    a.f_score,
                    e["f1"].as_f64().unwrap_or(f64::NAN),
                    TOL,
                    &format!("{what} f"),
                );
            }
        }
        let names: Option<Vec<&str>> = c["target_names"]
            .as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap()).collect());
        let report =
            metrics::classification_report(&yt, &yp, lab, names.as_deref(), 2, ZeroDivision::Warn)
                .unwrap();
        assert_eq!(
            report,
            c["report2"].as_str().unwrap(),
            "{name} report\n{report}"
        );
        let report =
            metrics::classification_report(&yt, &yp, lab, names.as_deref(), 4, ZeroDivision::One)
                .unwrap();
        assert_eq!(
            report,
            c["report4_zd1"].as_str().unwrap(),
            "{name} report digits=4\n{report}"
        );
        if let Some(auc) = c.get("roc_auc") {
            let got = metrics::roc_auc_score(&yt, &f64s(&c["score"])).unwrap();
            assert_close(got, auc.as_f64().unwrap(), TOL, &format!("{name} roc_auc"));
        }
    }
}

#[test]
fn regression_metrics_match_sklearn() {
    let g = load("metrics.json");
    for c in g["regression"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let yt = f64s(&c["y_true"]);
        let yp = f64s(&c["y_pred"]);
        assert_close(
            metrics::mean_squared_error(&yt, &yp).unwrap(),
            c["mse"].as_f64().unwrap(),
            TOL,
            name,
        );
        assert_close(
            metrics::root_mean_squared_error(&yt, &yp).unwrap(),
            c["rmse"].as_f64().unwrap(),
            TOL,
            name,
        );
        assert_close(
            metrics::mean_absolute_error(&yt, &yp).unwrap(),
            c["mae"].as_f64().unwrap(),
            TOL,
            name,
        );
        assert_close(
            metrics::r2_score(&yt, &yp).unwrap(),
            c["r2"].as_f64().unwrap(),
            TOL,
            name,
        );
    }
}

#[test]
fn metric_errors_and_edge_cases() {
    assert!(metrics::accuracy::<u8>(&[], &[]).is_err());
    assert!(metrics::accuracy(&[1, 2], &[1]).is_err());
    assert!(metrics::roc_auc_score(&[1, 1, 1], &[0.1, 0.2, 0.3])
        .unwrap()
        .is_nan());
    assert!(metrics::roc_auc_score(&[0, 1, 2], &[0.1, 0.2, 0.3]).is_err());
    assert!(metrics::roc_auc_score(&[0, 1], &[f64::NAN, 0.2]).is_err());
    assert!(metrics::precision_score(
        &[0, 1, 2],
        &[0, 1, 2],
        &Average::Binary(1),
        ZeroDivision::Warn
    )
    .is_err());
    assert!(metrics::mean_squared_error(&[1.0], &[f64::NAN]).is_err());
    assert_eq!(metrics::percentile(&[1.0, 2.0, 3.0, 4.0], 50.0), 2.5);
}
