import numpy as np

from orchestrator.reference.sampler import Rng, Sampler, sample_mult, sample_topp


def _xorshift_numpy(seed, n):
    """llama2.c's generator in numpy uint64 arithmetic, a second implementation to check Rng."""
    s = np.uint64(seed)
    out = []
    with np.errstate(over="ignore"):
        for _ in range(n):
            s ^= s >> np.uint64(12)
            s ^= s << np.uint64(25)
            s ^= s >> np.uint64(27)
            out.append(int((s * np.uint64(0x2545F4914F6CDD1D)) >> np.uint64(32)))
    return out


def test_rng_matches_a_second_implementation():
    for seed in (1, 42, 2**63 + 5):
        r = Rng(seed)
        assert [r.next_u32() for _ in range(50)] == _xorshift_numpy(seed, 50)


def test_rng_f32_in_unit_interval_and_seeded():
    a, b = Rng(42), Rng(42)
    xs = [a.next_f32() for _ in range(1000)]
    assert xs == [b.next_f32() for _ in range(1000)]
    assert all(0 <= x < 1 for x in xs)
    assert xs != [Rng(43).next_f32() for _ in range(1000)]


def test_argmax_takes_the_first_maximum():
    logits = np.array([1, 5, 5, 2], dtype=np.float32)
    assert Sampler(0.0, 0.9, 1).sample(logits) == 1


def test_sample_mult_follows_the_cdf():
    probs = np.array([0.1, 0.2, 0.7], dtype=np.float32)
    assert sample_mult(probs, np.float32(0.05)) == 0
    assert sample_mult(probs, np.float32(0.25)) == 1
    assert sample_mult(probs, np.float32(0.95)) == 2


def test_topp_keeps_only_the_nucleus():
    probs = np.array([0.05, 0.5, 0.3, 0.15], dtype=np.float32)
    # sorted: 1 (0.5), 2 (0.3), 3 (0.15); 0.5+0.3 = 0.8 > 0.7 so the nucleus is {1, 2}
    picks = {sample_topp(probs, 0.7, np.float32(c)) for c in np.linspace(0, 0.999, 200)}
    assert picks == {1, 2}
    assert sample_topp(probs, 0.7, np.float32(0.0)) == 1
    # r = coin * 0.8; r < 0.5 picks 1, else 2
    assert sample_topp(probs, 0.7, np.float32(0.6)) == 1
    assert sample_topp(probs, 0.7, np.float32(0.7)) == 2


def test_topp_ties_break_by_lower_id():
    probs = np.array([0.25, 0.25, 0.25, 0.25], dtype=np.float32)
    assert sample_topp(probs, 0.3, np.float32(0.0)) == 0


def test_sampling_frequencies_match_softmax():
    logits = np.array([0.0, 1.0, 2.0], dtype=np.float32)
    s = Sampler(1.0, 1.0, 123)
    counts = np.bincount([s.sample(logits) for _ in range(6000)], minlength=3) / 6000
    expected = np.exp(logits) / np.exp(logits).sum()
    assert np.abs(counts - expected).max() < 0.03
