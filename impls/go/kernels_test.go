// The inner loops: the assembler kernels against the portable Go loops and plain scalar
// definitions (random sizes, remainders, the Q8_0 corner cases), the fp16 conversions
// exhaustively, the activation quantizer's rounding, a Q8_0 stories260K greedy run, and the
// matmul split over the pool against a naive loop.

package main

import (
	"math"
	"math/rand"
	"testing"
)

// withKernels runs f once with each kernel set this machine has, naming it.
func withKernels(t *testing.T, f func(t *testing.T, name string)) {
	saved := simdKernels
	defer func() { setSIMD(saved) }()
	setSIMD(false)
	f(t, "go")
	if saved {
		setSIMD(true)
		f(t, simdName)
	}
}

func requireSIMD(t *testing.T) {
	if !simdKernels {
		t.Skipf("no assembler kernels on this machine (or POLYLLAMA_GO_ASM=0)")
	}
}

func TestMatmulSIMDMatchesGo(t *testing.T) {
	requireSIMD(t)
	rng := rand.New(rand.NewSource(1))
	for trial := 0; trial < 300; trial++ {
		n := 1 + rng.Intn(80)
		if trial%10 == 0 {
			n = []int{288, 768, 172, 1, 7, 8, 9, 15, 16, 17}[trial/10%10]
		}
		rows := 1 + rng.Intn(13)
		w := make([]float32, rows*n)
		x := make([]float32, n)
		for i := range w {
			w[i] = rng.Float32()*2 - 1
		}
		for i := range x {
			x[i] = rng.Float32()*2 - 1
		}
		lo := rng.Intn(rows)
		got, want := make([]float32, rows), make([]float32, rows)
		matmulRowsSIMD(got, x, w, lo, rows)
		matmulRowsGo(want, x, w, lo, rows)
		for r := 0; r < rows; r++ {
			var exact, scale float64
			for j := 0; j < n; j++ {
				exact += float64(w[r*n+j]) * float64(x[j])
				scale += math.Abs(float64(w[r*n+j]) * float64(x[j]))
			}
			if r < lo {
				exact = 0
			}
			// both sum n float32 products, in different orders: each is within n ulps of the scale
			tol := float64(n+1) * 6e-8 * scale
			if math.Abs(float64(got[r])-exact) > tol || math.Abs(float64(want[r])-exact) > tol {
				t.Fatalf("n %d rows %d lo %d: row %d: asm %v, go %v, exact %v", n, rows, lo, r, got[r], want[r], exact)
			}
		}
	}
}

// randomQ8 makes rows of nb Q8_0 blocks with the corner cases mixed in: zero, subnormal and
// large fp16 scales, and the quant -128 that the converter never writes but a file may hold.
func randomQ8(rng *rand.Rand, rows, nb int) []byte {
	w := make([]byte, rows*nb*q8BlockBytes)
	for b := 0; b < rows*nb; b++ {
		blk := w[b*q8BlockBytes : (b+1)*q8BlockBytes]
		var d uint16
		switch rng.Intn(8) {
		case 0:
			d = 0
		case 1:
			d = uint16(1 + rng.Intn(0x3ff)) // subnormal
		case 2:
			d = 0x7bff // 65504
		default:
			d = f32ToF16(rng.Float32() * 0.01)
		}
		if rng.Intn(2) == 0 {
			d |= 0x8000
		}
		blk[0], blk[1] = byte(d), byte(d>>8)
		for i := 2; i < q8BlockBytes; i++ {
			switch rng.Intn(10) {
			case 0:
				blk[i] = 0x80 // -128
			case 1:
				blk[i] = 127
			default:
				blk[i] = byte(rng.Intn(256))
			}
		}
	}
	return w
}

// randomActivation quantizes a random x of nb blocks, some of them all zero (amax = 0).
func randomActivation(rng *rand.Rand, nb int) *q8Vec {
	x := make([]float32, nb*q8Block)
	for i := range x {
		if (i/q8Block)%5 != 3 {
			x[i] = float32(rng.NormFloat64()) * float32(math.Pow(10, float64(rng.Intn(7)-3)))
		}
	}
	buf := &q8Vec{make([]int8, len(x)), make([]float32, nb)}
	a := &q8Vec{}
	a.quantize(buf, x)
	return a
}

// plainQ8Row is the contract's definition, one row, blocks in order.
func plainQ8Row(w []byte, a *q8Vec, r int) (sum float32, scale float64) {
	nb := len(a.d)
	for b := 0; b < nb; b++ {
		blk := w[(r*nb+b)*q8BlockBytes:]
		var isum int32
		for i := 0; i < q8Block; i++ {
			isum += int32(int8(blk[2+i])) * int32(a.qs[b*q8Block+i])
		}
		term := float32(isum) * (f16ToF32(uint16(blk[0])|uint16(blk[1])<<8) * a.d[b])
		sum += term
		scale += math.Abs(float64(term))
	}
	return sum, scale
}

func TestQ8RowsMatchPlainLoop(t *testing.T) {
	rng := rand.New(rand.NewSource(2))
	withKernels(t, func(t *testing.T, kernels string) {
		for trial := 0; trial < 400; trial++ {
			nb := 1 + rng.Intn(27) // groups of eight blocks and the blocks after them
			rows := 1 + rng.Intn(9)
			w := randomQ8(rng, rows, nb)
			a := randomActivation(rng, nb)
			lo := rng.Intn(rows)
			out := make([]float32, rows)
			q8Rows(out, w, a, lo, rows)
			for r := 0; r < rows; r++ {
				want, scale := plainQ8Row(w, a, r)
				if r < lo {
					want, scale = 0, 0
				}
				// go sums the blocks in the same order (bit for bit); the vector kernel in lanes
				tol := float64(nb) * 6e-8 * scale
				if kernels == "go" {
					tol = 0
				}
				if d := math.Abs(float64(out[r] - want)); !(d <= tol) {
					t.Fatalf("%s: nb %d rows %d lo %d: row %d = %v, want %v (tolerance %g)", kernels, nb, rows, lo, r, out[r], want, tol)
				}
			}
		}
	})
}

// TestQ8BlockExtremes: the largest products a block can hold, where VPMADDUBSW's int16 pair
// sums would saturate were the signs not moved onto the activation.
func TestQ8BlockExtremes(t *testing.T) {
	withKernels(t, func(t *testing.T, kernels string) {
		for _, c := range []struct{ qw, qx int8 }{{-128, 127}, {-128, -127}, {127, 127}, {127, -127}, {-128, 0}} {
			nb := 9
			w := make([]byte, nb*q8BlockBytes)
			a := &q8Vec{make([]int8, nb*q8Block), make([]float32, nb)}
			for b := 0; b < nb; b++ {
				w[b*q8BlockBytes+1] = 0x3c // fp16 1.0
				for i := 0; i < q8Block; i++ {
					w[b*q8BlockBytes+2+i] = byte(c.qw)
					a.qs[b*q8Block+i] = c.qx
				}
				a.d[b] = 1
			}
			out := make([]float32, 1)
			q8Rows(out, w, a, 0, 1)
			if want := float32(nb * q8Block * int(c.qw) * int(c.qx)); out[0] != want {
				t.Errorf("%s: %d x %d: %v, want %v", kernels, c.qw, c.qx, out[0], want)
			}
		}
	})
}

func TestQuantizeActivationRounding(t *testing.T) {
	x := make([]float32, 2*q8Block) // the second block stays zero
	// amax = 127 makes 127/amax exactly 1: the quants are x rounded, ties to even
	ties := []float32{127, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -3.5, 0.49999997, 3.4999998, 2.5000002}
	want := []int8{127, 0, 2, 2, 0, -2, -2, 126, -4, 0, 3, 3}
	copy(x, ties)
	a := &q8Vec{}
	a.quantize(&q8Vec{make([]int8, 64), make([]float32, 2)}, x)
	for i, w := range want {
		if a.qs[i] != w {
			t.Errorf("x = %v quantized to %d, want %d", ties[i], a.qs[i], w)
		}
	}
	if a.d[0] != 1 || a.d[1] != 0 {
		t.Errorf("scales %v, want [1 0]", a.d)
	}
	for i := q8Block; i < 2*q8Block; i++ {
		if a.qs[i] != 0 {
			t.Fatalf("a zero block quantized to %v", a.qs[q8Block:])
		}
	}
	// the scale is amax / 127 rounded through fp16: 1/127 is not a half
	one := make([]float32, q8Block)
	one[5] = -1
	a.quantize(&q8Vec{make([]int8, 64), make([]float32, 2)}, one)
	if want := f16ToF32(f32ToF16(float32(1) / 127)); a.d[0] != want || want == float32(1)/127 || a.qs[5] != -127 {
		t.Errorf("scale %v, want %v; quant %d, want -127", a.d[0], want, a.qs[5])
	}
}

func TestF16Conversions(t *testing.T) {
	for h := 0; h < 1<<16; h++ {
		f := f16ToF32(uint16(h))
		if exp := h >> 10 & 0x1f; exp == 0x1f && h&0x3ff != 0 {
			if !math.IsNaN(float64(f)) {
				t.Fatalf("%#04x: NaN widened to %v", h, f)
			}
			continue
		}
		if back := f32ToF16(f); back != uint16(h) {
			t.Fatalf("%#04x -> %v -> %#04x", h, f, back)
		}
		// halfway to the next half up (in magnitude) rounds to the even one of the two
		if h&0x7fff >= 0x7c00-1 {
			continue
		}
		next := f16ToF32(uint16(h + 1))
		mid := float32((float64(f) + float64(next)) / 2) // exact: halves have 11 bits
		even := uint16(h)
		if h&1 == 1 {
			even = uint16(h + 1)
		}
		if got := f32ToF16(mid); got != even {
			t.Fatalf("midpoint of %#04x and %#04x (%v) -> %#04x, want %#04x", h, h+1, mid, got, even)
		}
		up, down := math.Nextafter32(mid, float32(math.Copysign(math.Inf(1), float64(mid)))), math.Nextafter32(mid, 0)
		if f32ToF16(up) != uint16(h+1) || f32ToF16(down) != uint16(h) {
			t.Fatalf("around the midpoint of %#04x and %#04x: %#04x, %#04x", h, h+1, f32ToF16(down), f32ToF16(up))
		}
	}
	for _, c := range []struct {
		f    float32
		want uint16
	}{{65520, 0x7c00}, {65519.996, 0x7bff}, {-1e9, 0xfc00}, {float32(math.Inf(1)), 0x7c00},
		{1.0 / (1 << 25), 0}, {math.Nextafter32(1.0/(1<<25), 1), 1}, {1e-30, 0}, {-1e-30, 0x8000}} {
		if got := f32ToF16(c.f); got != c.want {
			t.Errorf("f32ToF16(%v) = %#04x, want %#04x", c.f, got, c.want)
		}
	}
}

// quantizeRef is the converter's quantizer, llama.cpp's quantize_row_q8_0_ref: d = amax / 127,
// q = x * (1/d) rounded half away from zero, d stored as fp16.
func quantizeRef(x []float32) []byte {
	out := make([]byte, 0, len(x)/q8Block*q8BlockBytes)
	for b := 0; b < len(x)/q8Block; b++ {
		blk := x[b*q8Block : (b+1)*q8Block]
		var amax float32
		for _, v := range blk {
			amax = float32(math.Max(float64(amax), math.Abs(float64(v))))
		}
		d := amax / 127
		var id float32
		if d != 0 {
			id = 1 / d
		}
		h := f32ToF16(d)
		out = append(out, byte(h), byte(h>>8))
		for _, v := range blk {
			out = append(out, byte(int8(math.Round(float64(float32(v*id))))))
		}
	}
	return out
}

// TestQ8GreedyStories260K quantizes stories260K as the converter does (every matrix whose
// rows are whole blocks; ffn_down, rows of 172, stays F32) and decodes greedily with both
// kernel sets and several workers: the text is the golden one, the reference's on the converted
// GGUF.
func TestQ8GreedyStories260K(t *testing.T) {
	want := golden(t, "stories260K.q8_0.greedy.txt")
	model, tokenizer := modelFile(t, "stories260K.bin"), modelFile(t, "tok512.bin")
	tr, err := readCheckpoint(model)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.unmap()
	c := &tr.config
	quantizeModel(t, tr)
	v, err := readVocab(tokenizer, c.VocabSize)
	if err != nil {
		t.Fatal(err)
	}
	withKernels(t, func(t *testing.T, kernels string) {
		for _, workers := range []int{1, 3} {
			prepareRun(t, tr, workers, 512, false)
			var out bytesWriter
			_, err := generate(tr, buildTokenizer("tok512.bin", v), buildSampler(c.VocabSize, 0, 0.9, 1), nil, 128, false, &out)
			tr.pool.close()
			tr.batch.free()
			if err != nil {
				t.Fatal(err)
			}
			if string(out) != want {
				t.Errorf("%s, %d workers: greedy text = %q", kernels, workers, out)
			}
		}
	})
}

// quantizeModel turns a loaded F32 model into the converter's Q8_0 one: every matrix whose rows
// are whole blocks (stories260K's ffn_down, rows of 172, stays F32).
func quantizeModel(t *testing.T, tr *Transformer) {
	c, w := &tr.config, &tr.weights
	q8 := func(m *Matrix, cols int) {
		if cols%q8Block == 0 {
			*m = Matrix{q8: quantizeRef(m.f32)}
		}
	}
	q8(&w.tokenEmbedding, c.Dim)
	w.wcls = w.tokenEmbedding
	for l := 0; l < c.NLayers; l++ {
		for _, m := range []*Matrix{&w.wq[l], &w.wk[l], &w.wv[l], &w.wo[l], &w.w1[l], &w.w3[l]} {
			q8(m, c.Dim)
		}
		q8(&w.w2[l], c.HiddenDim)
	}
	if !w.wq[0].isQ8() || w.w2[0].isQ8() {
		t.Fatal("expected Q8_0 attention weights beside an F32 ffn_down")
	}
}

func TestMatmulMatchesNaive(t *testing.T) {
	for _, rows := range []int{1, 3, 4, 7, 13} {
		for _, workers := range []int{1, 2, 3} {
			n := 9
			w := make([]float32, rows*n)
			x := make([]float32, n)
			for i := range w {
				w[i] = float32(i%5) - 2
			}
			for i := range x {
				x[i] = float32(i) * 0.5
			}
			tr := &Transformer{pool: newPool(workers)}
			out := make([]float32, rows)
			tr.matmul(out, x, &Matrix{f32: w})
			tr.pool.close()
			for r := 0; r < rows; r++ {
				var want float32
				for j := 0; j < n; j++ {
					want += w[r*n+j] * x[j]
				}
				if math.Abs(float64(out[r]-want)) > 1e-4 {
					t.Fatalf("rows %d workers %d: out[%d] = %v, want %v", rows, workers, r, out[r], want)
				}
			}
		}
	}
}
