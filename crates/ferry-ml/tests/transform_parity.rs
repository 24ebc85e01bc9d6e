//! Imputer / scaler / encoder parity with scikit-learn 1.9.1 (1e-12).
mod common;

use common::*;
use ferry_ml::preprocess::{
    self, HandleUnknown, ImputeStrategy, LabelEncoder, MinMaxScaler, OneHotDrop, OneHotEncoder,
    OrdinalEncoder, SimpleImputer, StandardScaler,
};
use ferry_ml::Matrix;
use serde_json::Value;

const TOL: f64 = 1e-12;

fn features(name: &str) -> Matrix {
    let ds = dataset(name);
    let names: Vec<&str> = ds.names().into_iter().filter(|n| *n != "target").collect();
    preprocess::to_matrix(&ds, &names).unwrap()
}

fn check_out(m: &Matrix, golden: &Value, what: &str) {
    let head = matrix(&golden["head"]);
    for (i, row) in head.iter().enumerate() {
        assert_all_close(m.row(i), row, TOL, &format!("{what} row {i}"));
    }
    let colsum = f64s(&golden["colsum"]);
    for (j, s) in colsum.iter().enumerate() {
        let ours: f64 = m.column(j).iter().filter(|v| !v.is_nan()).sum();
        // sums of ~500 values: allow for summation order
        assert_close(ours, *s, 1e-10, &format!("{what} colsum {j}"));
    }
    assert_eq!(m.rows(), golden["shape"][0].as_u64().unwrap() as usize);
    assert_eq!(m.cols(), golden["shape"][1].as_u64().unwrap() as usize);
}

#[test]
fn imputers_and_scalers_match_sklearn() {
    let g = load("transforms.json");
    for rec in g["datasets"].as_array().unwrap() {
        let name = rec["dataset"].as_str().unwrap();
        let xb = features(name);
        assert_eq!(xb.cols(), rec["n_features"].as_u64().unwrap() as usize);
        for (key, strat) in [
            ("impute_mean", ImputeStrategy::Mean),
            ("impute_median", ImputeStrategy::Median),
            ("impute_most_frequent", ImputeStrategy::MostFrequent),
        ] {
            let imp = SimpleImputer::fit(&xb, strat, false);
            assert_all_close(
                &imp.statistics,
                &f64s(&rec[key]["statistics"]),
                TOL,
                &format!("{name} {key}"),
            );
            check_out(
                &imp.transform(&xb).unwrap(),
                &rec[key]["out"],
                &format!("{name} {key}"),
            );
        }
        let imp = SimpleImputer::fit(&xb, ImputeStrategy::Constant(-1.0), false);
        check_out(
            &imp.transform(&xb).unwrap(),
            &rec["impute_constant"]["out"],
            &format!("{name} constant"),
        );

        let xi = SimpleImputer::fit(&xb, ImputeStrategy::Mean, false)
            .transform(&xb)
            .unwrap();
        let ss = StandardScaler::fit(&xi);
        assert_all_close(&ss.mean, &f64s(&rec["standard"]["mean"]), TOL, "mean");
        assert_all_close(&ss.var, &f64s(&rec["standard"]["var"]), TOL, "var");
        assert_all_close(&ss.scale, &f64s(&rec["standard"]["scale"]), TOL, "scale");
        check_out(
            &ss.transform(&xi).unwrap(),
            &rec["standard"]["out"],
            &format!("{name} standard"),
        );

        let ss = StandardScaler::fit(&xb);
        assert_all_close(
            &ss.mean,
            &f64s(&rec["standard_nan"]["mean"]),
            TOL,
            "nan mean",
        );
        assert_all_close(&ss.var, &f64s(&rec["standard_nan"]["var"]), TOL, "nan var");
        check_out(
            &ss.transform(&xb).unwrap(),
            &rec["standard_nan"]["out"],
            &format!("{name} standard nan"),
        );

        let mm = MinMaxScaler::fit(&xi, (0.0, 1.0)).unwrap();
        assert_all_close(
            &mm.data_min,
            &f64s(&rec["minmax"]["data_min"]),
            TOL,
            "data_min",
        );
        assert_all_close(&mm.scale, &f64s(&rec["minmax"]["scale"]), TOL, "mm scale");
        assert_all_close(&mm.min, &f64s(&rec["minmax"]["min"]), TOL, "mm min");
        check_out(
            &mm.transform(&xi).unwrap(),
            &rec["minmax"]["out"],
            &format!("{name} minmax"),
        );

        let half: Vec<usize> = (0..xi.rows() / 2).collect();
        let mm = MinMaxScaler::fit(&xi.select_rows(&half).unwrap(), (-1.0, 1.0)).unwrap();
        check_out(
            &mm.transform(&xi).unwrap(),
            &rec["minmax_pm1_half"]["out"],
            &format!("{name} minmax half"),
        );
    }
}

#[test]
fn constant_columns_scale_by_one() {
    let g = load("transforms.json");
    let c = &g["constant"];
    let x = Matrix::from_rows(&matrix(&c["X"])).unwrap();
    let ss = StandardScaler::fit(&x);
    assert_all_close(&ss.scale, &f64s(&c["standard_scale"]), TOL, "scale");
    let out = ss.transform(&x).unwrap();
    for (i, row) in matrix(&c["standard_out"]).iter().enumerate() {
        assert_all_close(out.row(i), row, TOL, "standard constant");
    }
    let mm = MinMaxScaler::fit(&x, (0.0, 1.0))
        .unwrap()
        .transform(&x)
        .unwrap();
    for (i, row) in matrix(&c["minmax_out"]).iter().enumerate() {
        assert_all_close(mm.row(i), row, TOL, "minmax constant");
    }
}

fn text_rows(v: &Value) -> Vec<Vec<Option<String>>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().map(String::from))
                .collect()
        })
        .collect()
}

#[test]
fn one_hot_matches_sklearn() {
    let g = load("transforms.json");
    let o = &g["onehot"];
    let train = text_rows(&o["train"]);
    let enc = OneHotEncoder::fit(
        &["species", "length"],
        &train,
        HandleUnknown::Ignore,
        OneHotDrop::None,
    )
    .unwrap();
    let cats: Vec<Vec<String>> = enc
        .columns
        .iter()
        .map(|c| c.categories.iter().map(|s| s.clone().unwrap()).collect())
        .collect();
    let expect: Vec<Vec<String>> = o["categories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            c.as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect()
        })
        .collect();
    assert_eq!(cats, expect);
    let names: Vec<String> = o["feature_names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().into())
        .collect();
    assert_eq!(enc.feature_names(), names);
    let out = enc.transform(&train).unwrap();
    for (i, row) in matrix(&o["out_train"]).iter().enumerate() {
        assert_eq!(out.row(i), &row[..]);
    }
    let test = text_rows(&o["test"]);
    let out = enc.transform(&test).unwrap();
    for (i, row) in matrix(&o["out_test"]).iter().enumerate() {
        assert_eq!(out.row(i), &row[..], "unknown handling row {i}");
    }
    let strict = OneHotEncoder {
        handle_unknown: HandleUnknown::Error,
        ..enc.clone()
    };
    match strict.transform(&test) {
        Err(ferry_ml::MlError::UnknownCategory { row, column, value }) => {
            // the first 100 iris rows have no virginica
            assert_eq!(
                (row, column.as_str(), value.as_str()),
                (0, "species", "virginica")
            );
        }
        other => panic!("expected unknown category error, got {other:?}"),
    }
    // drop="first" fitted on all rows
    let all = text_rows(&g["encoders"]["cat"]);
    let enc = OneHotEncoder::fit(
        &["species", "length"],
        &all,
        HandleUnknown::Error,
        OneHotDrop::First,
    )
    .unwrap();
    let names: Vec<String> = o["drop_first_names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().into())
        .collect();
    assert_eq!(enc.feature_names(), names);
    let out = enc.transform(&all[..10]).unwrap();
    for (i, row) in matrix(&o["drop_first_out"]).iter().enumerate() {
        assert_eq!(out.row(i), &row[..]);
    }
}

#[test]
fn label_and_ordinal_encoders_match_sklearn() {
    let g = load("transforms.json");
    let e = &g["encoders"];
    let ds = dataset("iris");
    let le = LabelEncoder::fit(&ds.column("target").unwrap().data);
    let classes: Vec<String> = e["label_classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().into())
        .collect();
    assert_eq!(le.classes, classes);
    assert_eq!(
        le.transform("target", &ds.column("target").unwrap().data)
            .unwrap(),
        usizes(&e["label_codes"])
    );
    let cat = text_rows(&e["cat"]);
    let oe = OrdinalEncoder::fit(&["species", "length"], &cat, None).unwrap();
    let out = oe.transform(&cat).unwrap();
    for (i, row) in matrix(&e["ordinal_out"]).iter().enumerate() {
        assert_eq!(out.row(i), &row[..]);
    }
}
