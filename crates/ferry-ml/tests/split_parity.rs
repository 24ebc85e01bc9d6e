//! scikit-learn 1.9.1 split parity: identical selected rows.
mod common;

use common::*;
use ferry_ml::split::{self, SplitOptions, SplitSize};
use serde_json::Value;

fn labels_for(dataset: &str, rec: &Value) -> Option<Vec<i64>> {
    if let Some(y) = rec.get("y") {
        return Some(i64s(y));
    }
    Some(int_targets(dataset))
}

#[test]
fn train_test_split_matches_sklearn() {
    let g = load("splits.json");
    let cases = g["train_test_split"].as_array().unwrap();
    let mut cache = std::collections::HashMap::new();
    let mut n_strat = 0;
    for c in cases {
        let dataset = c["dataset"].as_str().unwrap().to_string();
        let n = c["n"].as_u64().unwrap() as usize;
        let opts = SplitOptions {
            test_size: c["test_size"].as_f64().map(SplitSize::Fraction),
            train_size: c["train_size"].as_f64().map(SplitSize::Fraction),
            random_state: c["seed"].as_u64().unwrap_or(0) as u32,
            shuffle: c["shuffle"].as_bool().unwrap(),
        };
        let labels = if c["stratify"].as_bool().unwrap() {
            n_strat += 1;
            let key = format!(
                "{dataset}{}",
                c.get("y").map(|y| y.to_string()).unwrap_or_default()
            );
            Some(
                cache
                    .entry(key)
                    .or_insert_with(|| labels_for(&dataset, c).unwrap())
                    .clone(),
            )
        } else {
            None
        };
        // Stratification depends on the sorted order of the classes, so use
        // sklearn's integer codes (malignant=0 < benign=1 is not alphabetical).
        let tt = split::train_test_split(n, &opts, labels.as_deref()).unwrap();
        assert_eq!(tt.test, usizes(&c["test"]), "{dataset} {c:?}");
        assert_eq!(
            tt.train,
            usizes(&c["train"]),
            "{dataset} seed {:?}",
            c["seed"]
        );
    }
    assert!(n_strat > 20);
}

#[test]
fn kfold_and_stratified_kfold_match_sklearn() {
    let g = load("splits.json");
    let mut cache = std::collections::HashMap::new();
    for c in g["folds"].as_array().unwrap() {
        let dataset = c["dataset"].as_str().unwrap().to_string();
        let n = c["n"].as_u64().unwrap() as usize;
        let k = c["k"].as_u64().unwrap() as usize;
        let shuffle = c["shuffle"].as_bool().unwrap();
        let seed = c["seed"].as_u64().unwrap_or(0) as u32;
        let folds = if c["kind"] == "kfold" {
            split::kfold(n, k, shuffle, seed).unwrap()
        } else {
            let key = dataset.clone();
            let y = cache
                .entry(key)
                .or_insert_with(|| labels_for(&dataset, c).unwrap())
                .clone();
            split::stratified_kfold(&y, k, shuffle, seed).unwrap()
        };
        let expect = c["folds"].as_array().unwrap();
        assert_eq!(folds.len(), expect.len());
        for (f, e) in folds.iter().zip(expect) {
            assert_eq!(
                f.test,
                usizes(&e["test"]),
                "{} {dataset} k={k} shuffle={shuffle}",
                c["kind"]
            );
            assert_eq!(f.train, usizes(&e["train"]));
        }
    }
}

#[test]
fn leave_one_out_and_bootstrap() {
    let folds = split::leave_one_out(4).unwrap();
    assert_eq!(folds.len(), 4);
    assert_eq!(folds[2].test, vec![2]);
    assert_eq!(folds[2].train, vec![0, 1, 3]);
    assert!(split::leave_one_out(1).is_err());

    let b1 = split::bootstrap(50, 3, 9).unwrap();
    let b2 = split::bootstrap(50, 3, 9).unwrap();
    assert_eq!(b1, b2);
    for b in &b1 {
        assert_eq!(b.sample.len(), 50);
        for &o in &b.out_of_bag {
            assert!(!b.sample.contains(&o));
        }
        let mut all: Vec<usize> = b.sample.clone();
        all.extend(&b.out_of_bag);
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 50);
    }
    // sklearn.utils.resample draws randint(0, n, n) from RandomState(seed)
    let mut rs = ferry_ml::RandomState::new(9);
    let first: Vec<usize> = rs
        .randint_n(0, 50, 50)
        .unwrap()
        .into_iter()
        .map(|v| v as usize)
        .collect();
    assert_eq!(b1[0].sample, first);
}

#[test]
fn train_val_test_is_a_partition() {
    let y: Vec<u8> = (0..100).map(|i| (i % 3) as u8).collect();
    let s = split::train_val_test_split(100, 0.15, 0.2, 7, Some(&y)).unwrap();
    assert_eq!(s.test.len(), 20);
    assert_eq!(s.validation.len(), 15);
    assert_eq!(s.train.len(), 65);
    let mut all: Vec<usize> = s
        .train
        .iter()
        .chain(&s.validation)
        .chain(&s.test)
        .copied()
        .collect();
    all.sort();
    assert_eq!(all, (0..100).collect::<Vec<_>>());
    // First stage equals a plain train_test_split with the same seed.
    let first =
        split::train_test_split(100, &SplitOptions::test_fraction(0.2, 7), Some(&y)).unwrap();
    assert_eq!(first.test, s.test);
    assert!(split::train_val_test_split::<u8>(10, 0.5, 0.5, 0, None).is_err());
}

#[test]
fn split_errors_are_reported() {
    let bad = SplitOptions::test_fraction(1.5, 0);
    assert!(split::train_test_split::<u8>(10, &bad, None).is_err());
    let y = [0u8, 0, 0, 1];
    assert!(
        split::train_test_split(4, &SplitOptions::test_fraction(0.5, 0), Some(&y[..])).is_err()
    );
    assert!(split::kfold(3, 5, false, 0).is_err());
    assert!(split::kfold(3, 1, false, 0).is_err());
}
