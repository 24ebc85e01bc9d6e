// Shared helpers for the parity tests (included with `mod common;`).
#![allow(dead_code)]

use serde_json::Value;

pub fn load(name: &str) -> Value {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

pub fn read_text(name: &str) -> String {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

pub fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

pub fn u64s(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

pub fn i64s(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

/// Floats; JSON null means NaN.
pub fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap_or(f64::NAN))
        .collect()
}

pub fn matrix(v: &Value) -> Vec<Vec<f64>> {
    v.as_array().unwrap().iter().map(f64s).collect()
}

pub fn close(a: f64, b: f64, tol: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= tol * (1.0 + b.abs())
}

pub fn assert_close(a: f64, b: f64, tol: f64, what: &str) {
    assert!(close(a, b, tol), "{what}: ferry {a} vs sklearn {b}");
}

pub fn assert_all_close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: length");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_close(*x, *y, tol, &format!("{what}[{i}]"));
    }
}

/// sklearn's integer code of a class name (the order of `target_names`).
pub fn class_code(dataset: &str, name: &str) -> i64 {
    let order: &[&str] = match dataset {
        "iris" => &["setosa", "versicolor", "virginica"],
        "wine" => &["class_0", "class_1", "class_2"],
        "breast_cancer" => &["malignant", "benign"],
        _ => panic!("no classes for {dataset}"),
    };
    order.iter().position(|n| *n == name).unwrap() as i64
}

/// Loads a dataset CSV from tests/data.
pub fn dataset(name: &str) -> ferry_ml::Dataset {
    ferry_ml::Dataset::from_csv(&read_text(&format!("{name}.csv")), &Default::default()).unwrap()
}

/// sklearn's integer targets for a classification dataset.
pub fn int_targets(name: &str) -> Vec<i64> {
    let ds = dataset(name);
    let col = ds.column("target").unwrap();
    (0..ds.n_rows())
        .map(|i| class_code(name, &col.data.text(i).unwrap()))
        .collect()
}
