# The sampler: argmax, multinomial and top-p over llama2.c's xorshift RNG.

from std.ffi import external_call
from std.memory import bitcast
from model import FPtr, KPtr, alloc_keys
from kernels import softmax


struct Rng(Movable):
    var state: UInt64

    def __init__(out self, seed: UInt64):
        self.state = seed

    def next_u32(mut self) -> UInt32:
        var s = self.state
        s ^= s >> 12
        s ^= s << 25
        s ^= s >> 27
        self.state = s
        return UInt32((s * UInt64(0x2545F4914F6CDD1D)) >> 32)

    def next_f32(mut self) -> Float32:
        return Float32(self.next_u32() >> 8) / Float32(16777216.0)


def argmax(p: FPtr, n: Int) -> Int:
    var best = 0
    var best_val = p.unsafe_load(0)
    for i in range(1, n):
        if p.unsafe_load(i) > best_val:
            best_val = p.unsafe_load(i)
            best = i
    return best


def sample_mult(probs: FPtr, n: Int, coin: Float32) -> Int:
    var cdf = Float32(0)
    for i in range(n):
        cdf += probs.unsafe_load(i)
        if coin < cdf:
            return i
    return n - 1


def sort_desc(keys: KPtr, tmp: KPtr, counts: KPtr, n: Int):
    """Stable LSD radix sort of packed candidates on their upper 32 bits, so that
    equal probabilities keep their (ascending) id order."""
    var src = keys
    var dst = tmp
    for shift in range(32, 64, 8):
        for b in range(257):
            counts.unsafe_store(b, 0)
        for i in range(n):
            var b = Int((src.unsafe_load(i) >> UInt64(shift)) & 255)
            counts.unsafe_store(b + 1, counts.unsafe_load(b + 1) + 1)
        for b in range(256):
            counts.unsafe_store(b + 1, counts.unsafe_load(b + 1) + counts.unsafe_load(b))
        for i in range(n):
            var k = src.unsafe_load(i)
            var b = Int((k >> UInt64(shift)) & 255)
            var at = Int(counts.unsafe_load(b))
            dst.unsafe_store(at, k)
            counts.unsafe_store(b, UInt64(at + 1))
        var t = src
        src = dst
        dst = t
    # four passes: the sorted keys are back in `keys`


def sample_topp(probs: FPtr, n: Int, topp: Float32, coin: Float32, keys: KPtr, tmp: KPtr, counts: KPtr) -> Int:
    """Nucleus sampling: the smallest set of most likely ids whose mass exceeds topp.
    keys, tmp: (n) scratch; counts: (257) scratch."""
    # ids below the cutoff cannot be in the nucleus: skip sorting them
    var cutoff = (Float32(1.0) - topp) / Float32(n - 1)
    var m = 0
    for i in range(n):
        var p = probs.unsafe_load(i)
        if p >= cutoff:
            # probabilities are >= 0, so their bits order like them: invert for
            # descending order, the id in the low half breaks ties
            var bits = UInt64(~bitcast[DType.uint32, 1](p))
            keys.unsafe_store(m, (bits << 32) | UInt64(i))
            m += 1
    sort_desc(keys, tmp, counts, m)
    var cum = Float32(0)
    var last = m - 1
    for i in range(m):
        cum += probs.unsafe_load(Int(keys.unsafe_load(i) & 0xFFFFFFFF))
        if cum > topp:
            last = i
            break
    # cum is now the mass of the first last + 1 candidates
    var r = coin * cum
    var cdf = Float32(0)
    for i in range(last + 1):
        var id = Int(keys.unsafe_load(i) & 0xFFFFFFFF)
        cdf += probs.unsafe_load(id)
        if r < cdf:
            return id
    return Int(keys.unsafe_load(last) & 0xFFFFFFFF)


struct Sampler(Movable):
    var vocab_size: Int
    var temperature: Float32
    var topp: Float64
    var rng: Rng
    var keys: KPtr  # (vocab) top-p candidates, packed (probability, id)
    var tmp: KPtr  # (vocab) radix sort buffer
    var counts: KPtr  # (257) radix sort histogram

    def __init__(out self, vocab_size: Int, temperature: Float64, topp: Float64, seed: UInt64) raises:
        self.vocab_size = vocab_size
        self.temperature = Float32(temperature)
        self.topp = topp
        self.rng = Rng(seed)
        self.keys = alloc_keys(vocab_size)
        self.tmp = alloc_keys(vocab_size)
        self.counts = alloc_keys(257)

    def free(mut self):
        for p in [self.keys, self.tmp, self.counts]:
            external_call["free", NoneType](p)

    def sample(mut self, logits: FPtr) -> Int:
        var n = self.vocab_size
        if self.temperature == 0:
            return argmax(logits, n)
        for i in range(n):
            logits.unsafe_store(i, logits.unsafe_load(i) / self.temperature)
        softmax(logits, n)
        var coin = self.rng.next_f32()
        if self.topp <= 0 or self.topp >= 1:
            return sample_mult(logits, n, coin)
        return sample_topp(logits, n, Float32(self.topp), coin, self.keys, self.tmp, self.counts)
