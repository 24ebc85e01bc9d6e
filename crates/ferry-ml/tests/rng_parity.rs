//! numpy legacy `RandomState` parity.
mod common;

use common::*;
use ferry_ml::RandomState;

#[test]
fn permutations_match_numpy() {
    let g = load("rng.json");
    let perms = g["permutations"].as_array().unwrap();
    assert!(perms.len() > 50);
    for p in perms {
        let seed = p["seed"].as_u64().unwrap() as u32;
        let n = p["n"].as_u64().unwrap() as usize;
        assert_eq!(
            RandomState::new(seed).permutation(n),
            usizes(&p["perm"]),
            "seed {seed} n {n}"
        );
    }
}

#[test]
fn samples_match_numpy() {
    let g = load("rng.json");
    for s in g["samples"].as_array().unwrap() {
        let seed = s["seed"].as_u64().unwrap() as u32;
        let mut rs = RandomState::new(seed);
        let rsmp: Vec<u64> = (0..20).map(|_| rs.random_sample().to_bits()).collect();
        assert_eq!(
            rsmp,
            u64s(&s["random_sample_bits"]),
            "random_sample seed {seed}"
        );
        assert_eq!(
            rs.randint_n(0, 10, 20).unwrap(),
            i64s(&s["randint_10"]),
            "randint seed {seed}"
        );
        assert_eq!(
            rs.randint_n(0, 1 << 40, 10).unwrap(),
            i64s(&s["randint_big"]),
            "randint big seed {seed}"
        );
        assert_eq!(
            rs.randint_n(-5, 7, 20).unwrap(),
            i64s(&s["randint_neg"]),
            "randint neg seed {seed}"
        );
        let normal: Vec<f64> = (0..21).map(|_| rs.standard_normal()).collect();
        let expect: Vec<f64> = u64s(&s["standard_normal_bits"])
            .into_iter()
            .map(f64::from_bits)
            .collect();
        // libm's log may differ from numpy's by an ulp on other platforms.
        assert_all_close(&normal, &expect, 1e-15, "standard_normal");
        let after: Vec<u64> = (0..3).map(|_| rs.random_sample().to_bits()).collect();
        assert_eq!(after, u64s(&s["after_bits"]), "after seed {seed}");
    }
}

#[test]
fn array_seeds_shuffle_and_array_permutation() {
    let g = load("rng.json");
    for a in g["arrays"].as_array().unwrap() {
        let key: Vec<u32> = usizes(&a["key"]).iter().map(|&k| k as u32).collect();
        let mut rs = RandomState::from_key(&key).unwrap();
        let v: Vec<u64> = (0..5).map(|_| rs.random_sample().to_bits()).collect();
        assert_eq!(v, u64s(&a["random_sample_bits"]), "key {key:?}");
        assert_eq!(rs.permutation(20), usizes(&a["perm"]));
    }
    for s in g["shuffles"].as_array().unwrap() {
        let mut rs = RandomState::new(s["seed"].as_u64().unwrap() as u32);
        let mut a: Vec<usize> = (0..10).map(|i| i * 3).collect();
        rs.shuffle(&mut a);
        assert_eq!(a, usizes(&s["a"]));
        let mut b: Vec<usize> = (0..25).collect();
        rs.shuffle(&mut b);
        assert_eq!(b, usizes(&s["b"]));
    }
    for s in g["arr_perm"].as_array().unwrap() {
        let mut rs = RandomState::new(s["seed"].as_u64().unwrap() as u32);
        assert_eq!(rs.permuted(&usizes(&s["arr"])), usizes(&s["perm"]));
    }
    assert!(RandomState::from_key(&[]).is_err());
}
