//! The sampler (contract section 7): run.c's xorshift RNG, argmax, multinomial and top-p.

use crate::kernels::softmax;

struct Rng {
    state: u64,
}

impl Rng {
    fn next_u32(&mut self) -> u32 {
        let mut s = self.state;
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        self.state = s;
        (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
    }

    fn next_f32(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 / 16777216.0
    }
}

pub struct Sampler {
    temperature: f32,
    topp: f64,
    rng: Rng,
    candidates: Vec<(f32, u32)>, // top-p scratch: (probability, id)
}

/// The first index of the largest value.
fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

/// The first index whose running probability exceeds coin, else the last.
fn sample_mult(probs: &[f32], coin: f32) -> usize {
    let mut cdf = 0.0f32;
    for (i, &p) in probs.iter().enumerate() {
        cdf += p;
        if coin < cdf {
            return i;
        }
    }
    probs.len().saturating_sub(1)
}

/// Nucleus sampling: the smallest set of most likely ids whose probability exceeds topp.
fn sample_topp(probs: &[f32], topp: f32, coin: f32, candidates: &mut Vec<(f32, u32)>) -> usize {
    // ids below the cutoff cannot be in the nucleus: skipping them makes the sort cheap
    let cutoff = (1.0f32 - topp) / (probs.len() as f32 - 1.0);
    candidates.clear();
    candidates.extend(probs.iter().enumerate().filter(|(_, &p)| p >= cutoff).map(|(i, &p)| (p, i as u32)));
    if candidates.is_empty() {
        // only when topp < 1/vocab and the distribution is flat: run.c indexes out of bounds here
        return argmax(probs);
    }
    candidates.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut cdf = 0.0f32;
    let mut last = candidates.len() - 1;
    for (i, &(p, _)) in candidates.iter().enumerate() {
        cdf += p;
        if cdf > topp {
            last = i;
            break;
        }
    }
    let r = coin * cdf;
    let mut run = 0.0f32;
    for &(p, id) in &candidates[..=last] {
        run += p;
        if r < run {
            return id as usize;
        }
    }
    candidates[last].1 as usize
}

impl Sampler {
    pub fn build(temperature: f64, topp: f64, seed: u64) -> Sampler {
        Sampler { temperature: temperature as f32, topp, rng: Rng { state: seed }, candidates: Vec::new() }
    }

    pub fn sample(&mut self, logits: &mut [f32]) -> usize {
        if self.temperature == 0.0 {
            return argmax(logits);
        }
        for v in logits.iter_mut() {
            *v /= self.temperature;
        }
        softmax(logits);
        let coin = self.rng.next_f32();
        if self.topp <= 0.0 || self.topp >= 1.0 {
            sample_mult(logits, coin)
        } else {
            sample_topp(logits, self.topp as f32, coin, &mut self.candidates)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xorshift_draws_match_the_reference() {
        // from orchestrator/reference/sampler.py Rng(42)
        let mut r = Rng { state: 42 };
        let draws: Vec<u32> = (0..4).map(|_| r.next_u32()).collect();
        assert_eq!(draws, vec![EXPECT_U32[0], EXPECT_U32[1], EXPECT_U32[2], EXPECT_U32[3]]);
        let mut r = Rng { state: 42 };
        assert_eq!(r.next_f32().to_bits(), 1051565204);
        assert_eq!(EXPECT_F32_FIRST.to_bits(), 1051565204);
    }

    const EXPECT_U32: [u32; 4] = [1456360119, 3359763283, 3393612768, 4054632243];
    const EXPECT_F32_FIRST: f32 = 0.339_085_22; // f32 bits 1051565204

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.1, 3.0, -1.0, 3.0]), 1);
        assert_eq!(argmax(&[5.0]), 0);
        let mut s = Sampler::build(0.0, 0.9, 7);
        assert_eq!(s.sample(&mut [1.0, 2.0, 2.0, 0.5]), 1);
        assert_eq!(s.rng.state, 7, "greedy sampling draws nothing");
    }

    #[test]
    fn multinomial_and_top_p() {
        let probs = [0.1f32, 0.4, 0.2, 0.3];
        assert_eq!(sample_mult(&probs, 0.05), 0);
        assert_eq!(sample_mult(&probs, 0.45), 1);
        assert_eq!(sample_mult(&probs, 0.99999), 3);
        let mut scratch = Vec::new();
        // sorted: 1 (0.4), 3 (0.3), 2 (0.2), 0 (0.1); topp 0.6 keeps {1, 3} (sum 0.7)
        assert_eq!(sample_topp(&probs, 0.6, 0.0, &mut scratch), 1);
        assert_eq!(sample_topp(&probs, 0.6, 0.5, &mut scratch), 1);
        assert_eq!(sample_topp(&probs, 0.6, 0.6, &mut scratch), 3);
        assert_eq!(sample_topp(&probs, 0.6, 0.99, &mut scratch), 3);
        // ties: the lower id first
        let tied = [0.25f32, 0.25, 0.25, 0.25];
        assert_eq!(sample_topp(&tied, 0.3, 0.1, &mut scratch), 0);
        assert_eq!(sample_topp(&tied, 0.3, 0.9, &mut scratch), 1);
    }

    #[test]
    fn sampler_sequence_for_a_seed() {
        // softmax(logits / 0.8), top-p 0.9, seed 42: the reference's choices
        let logits = [1.0f32, 2.0, 0.5, 3.0, -1.0, 2.5, 0.0, 1.5];
        let mut s = Sampler::build(0.8, 0.9, 42);
        let picks: Vec<usize> = (0..8).map(|_| s.sample(&mut logits.clone())).collect();
        assert_eq!(picks, EXPECT_PICKS.to_vec());
        let mut s = Sampler::build(1.0, 1.0, 42);
        let picks: Vec<usize> = (0..8).map(|_| s.sample(&mut logits.clone())).collect();
        assert_eq!(picks, EXPECT_PICKS_FULL.to_vec());
    }

    const EXPECT_PICKS: [usize; 8] = [3, 1, 1, 7, 5, 1, 3, 3];
    const EXPECT_PICKS_FULL: [usize; 8] = [3, 5, 5, 7, 5, 5, 2, 3];
}
