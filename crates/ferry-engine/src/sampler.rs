//! Token selection: logit bias, penalties, temperature, top-k, top-p, min-p, seeded sampling,
//! and log-probabilities. Allocation-free after construction except for the candidate list,
//! which is reused.

use std::collections::HashMap;

/// Parameters of one sequence's sampler.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
    /// 0 means off.
    pub top_k: usize,
    pub min_p: f32,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    /// Multiplicative, over prompt and output tokens (1 = off).
    pub repetition_penalty: f32,
    pub logit_bias: Vec<(u32, f32)>,
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            repetition_penalty: 1.0,
            logit_bias: vec![],
            seed: None,
        }
    }
}

/// A token's log-probability and its most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// xoshiro256** seeded through splitmix64: small, fast and reproducible everywhere.
#[derive(Debug, Clone)]
pub struct Rng([u64; 4]);

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9e3779b97f4a7c15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
            x ^ (x >> 31)
        };
        Self([next(), next(), next(), next()])
    }
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let r = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        r
    }
    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Per-sequence sampler state.
pub struct Sampler {
    pub params: SamplingParams,
    rng: Rng,
    /// Output-token counts for frequency/presence penalties.
    counts: HashMap<u32, u32>,
    /// Tokens seen (prompt and output) for the repetition penalty.
    seen: Vec<bool>,
    cand: Vec<(u32, f32)>,
}

/// The lowest-id maximum (ties go to the smaller id, as in a stable argmax).
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

/// `log_softmax(logits)[id]` and the top `k` alternatives, from raw logits.
pub fn logprobs_of(logits: &[f32], id: u32, k: usize) -> TokenLogprob {
    let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let lse = m + logits
        .iter()
        .map(|&v| ((v - m) as f64).exp())
        .sum::<f64>()
        .ln() as f32;
    let mut top = Vec::new();
    if k > 0 {
        top = top_k_indices(logits, k)
            .into_iter()
            .map(|i| (i, logits[i as usize] - lse))
            .collect();
    }
    TokenLogprob {
        id,
        logprob: logits[id as usize] - lse,
        top,
    }
}

/// Indices of the `k` largest values, largest first (ties: smaller id first).
pub fn top_k_indices(x: &[f32], k: usize) -> Vec<u32> {
    let k = k.min(x.len());
    let mut idx: Vec<u32> = (0..x.len() as u32).collect();
    let cmp = |a: &u32, b: &u32| x[*b as usize].total_cmp(&x[*a as usize]).then(a.cmp(b));
    if k < idx.len() {
        idx.select_nth_unstable_by(k, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    idx
}

impl Sampler {
    /// `entropy_seed` is used when the request gives no seed.
    pub fn new(
        params: SamplingParams,
        vocab_size: usize,
        prompt: &[u32],
        entropy_seed: u64,
    ) -> Self {
        let rng = Rng::new(params.seed.unwrap_or(entropy_seed));
        let mut seen = Vec::new();
        if params.repetition_penalty != 1.0 {
            seen = vec![false; vocab_size];
            for &t in prompt {
                if let Some(s) = seen.get_mut(t as usize) {
                    *s = true;
                }
            }
        }
        Self {
            params,
            rng,
            counts: HashMap::new(),
            seen,
            cand: Vec::new(),
        }
    }

    /// Record an output token (for penalties).
    pub fn accept(&mut self, id: u32) {
        *self.counts.entry(id).or_insert(0) += 1;
        if let Some(s) = self.seen.get_mut(id as usize) {
            *s = true;
        }
    }

    /// Choose the next token. `logits` is modified in place (bias and penalties).
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        let p = &self.params;
        for &(id, b) in &p.logit_bias {
            if let Some(l) = logits.get_mut(id as usize) {
                *l += b;
            }
        }
        if p.repetition_penalty != 1.0 {
            for (i, s) in self.seen.iter().enumerate() {
                if *s {
                    let l = &mut logits[i];
                    *l = if *l > 0.0 {
                        *l / p.repetition_penalty
                    } else {
                        *l * p.repetition_penalty
                    };
                }
            }
        }
        if p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
            for (&id, &c) in &self.counts {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l -= c as f32 * p.frequency_penalty + p.presence_penalty;
                }
            }
        }
        if p.temperature == 0.0 {
            return argmax(logits);
        }
        // Candidates: top_k if set, otherwise a growing prefix of the sorted logits large
        // enough to hold the top_p mass (exact: falls back to all tokens when needed).
        let mut k = if p.top_k > 0 {
            p.top_k.min(logits.len())
        } else {
            256.min(logits.len())
        };
        loop {
            self.cand.clear();
            let idx = top_k_indices(logits, k);
            self.cand
                .extend(idx.iter().map(|&i| (i, logits[i as usize])));
            let t = p.temperature;
            let m = self.cand[0].1;
            // Softmax over the whole vocabulary's mass: needed to know whether the prefix holds
            // top_p of it.
            let total: f64 = if p.top_k > 0 {
                self.cand
                    .iter()
                    .map(|c| (((c.1 - m) / t) as f64).exp())
                    .sum()
            } else {
                logits.iter().map(|&l| (((l - m) / t) as f64).exp()).sum()
            };
            let mut cum = 0.0f64;
            let mut cut = self.cand.len();
            let mut covered = false;
            let min_keep = (p.min_p as f64) * 1.0; // relative to the top probability (which is exp(0)=1)
            for (j, c) in self.cand.iter().enumerate() {
                let w = (((c.1 - m) / t) as f64).exp();
                if p.min_p > 0.0 && w < min_keep && j > 0 {
                    cut = j;
                    covered = true;
                    break;
                }
                cum += w;
                if cum / total >= p.top_p as f64 {
                    cut = j + 1;
                    covered = true;
                    break;
                }
            }
            if covered || k >= logits.len() || p.top_k > 0 {
                self.cand.truncate(cut.max(1));
                let weights: f64 = self
                    .cand
                    .iter()
                    .map(|c| (((c.1 - m) / t) as f64).exp())
                    .sum();
                let mut u = self.rng.next_f64() * weights;
                for c in &self.cand {
                    let w = (((c.1 - m) / t) as f64).exp();
                    if u < w {
                        return c.0;
                    }
                    u -= w;
                }
                return self.cand[self.cand.len() - 1].0;
            }
            k = (k * 8).min(logits.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        (0..1000)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0)
            .collect()
    }

    #[test]
    fn greedy_picks_argmax_with_low_id_ties() {
        let mut s = Sampler::new(
            SamplingParams {
                temperature: 0.0,
                ..Default::default()
            },
            4,
            &[],
            1,
        );
        assert_eq!(s.sample(&mut [1.0, 3.0, 3.0, 0.0]), 1);
    }

    #[test]
    fn same_seed_same_tokens_different_seed_differs() {
        let run = |seed| {
            let mut s = Sampler::new(
                SamplingParams {
                    seed: Some(seed),
                    ..Default::default()
                },
                1000,
                &[],
                0,
            );
            (0..50).map(|_| s.sample(&mut logits())).collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }

    #[test]
    fn top_k_one_is_greedy_and_bias_can_force_a_token() {
        let mut s = Sampler::new(
            SamplingParams {
                top_k: 1,
                ..Default::default()
            },
            1000,
            &[],
            3,
        );
        let l = logits();
        let best = argmax(&l);
        for _ in 0..20 {
            assert_eq!(s.sample(&mut l.clone()), best);
        }
        let mut s = Sampler::new(
            SamplingParams {
                logit_bias: vec![(3, 100.0)],
                ..Default::default()
            },
            1000,
            &[],
            3,
        );
        assert_eq!(s.sample(&mut logits()), 3);
    }

    #[test]
    fn top_p_restricts_to_the_nucleus() {
        // Token 0 has ~all the mass: top_p 0.5 must always pick it.
        let mut l = vec![0.0f32; 1000];
        l[0] = 20.0;
        let mut s = Sampler::new(
            SamplingParams {
                top_p: 0.5,
                seed: Some(1),
                ..Default::default()
            },
            1000,
            &[],
            0,
        );
        for _ in 0..50 {
            assert_eq!(s.sample(&mut l.clone()), 0);
        }
        // Flat distribution with top_p = 1 reaches past the first 256 candidates.
        let mut s = Sampler::new(
            SamplingParams {
                seed: Some(2),
                ..Default::default()
            },
            1000,
            &[],
            0,
        );
        let mut max = 0;
        for _ in 0..2000 {
            max = max.max(s.sample(&mut vec![0.0f32; 1000]));
        }
        assert!(max > 900);
    }

    #[test]
    fn penalties_discourage_repeats() {
        let mut s = Sampler::new(
            SamplingParams {
                temperature: 0.0,
                frequency_penalty: 2.0,
                ..Default::default()
            },
            3,
            &[],
            0,
        );
        s.accept(0);
        assert_eq!(s.sample(&mut [1.0, 0.5, 0.0]), 1);
        let mut s = Sampler::new(
            SamplingParams {
                temperature: 0.0,
                repetition_penalty: 4.0,
                ..Default::default()
            },
            3,
            &[0],
            0,
        );
        assert_eq!(s.sample(&mut [1.0, 0.5, 0.0]), 1);
    }

    #[test]
    fn logprobs_are_normalised() {
        let l = vec![1.0f32, 2.0, 3.0];
        let lp = logprobs_of(&l, 2, 3);
        let total: f32 = lp.top.iter().map(|t| t.1.exp()).sum();
        assert!((total - 1.0).abs() < 1e-5);
        assert_eq!(lp.top[0].0, 2);
        assert!((lp.logprob - lp.top[0].1).abs() < 1e-7);
    }
}
