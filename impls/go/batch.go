// The batched forward pass (contract section 6): the prompt's positions, or the logits mode's
// ids, go through every layer as a (T, dim) matrix of rows, so that each weight matrix is read
// once per batch instead of once per position. Row t is, up to float32 summation order, the
// one-position forward pass of tokens[t] at position p0 + t.

package main

import (
	"fmt"
	"math"
	"unsafe"
)

// Which rows of a batch need logits.
const (
	logitsNone = iota
	logitsLast // generate mode: the prompt's last position, into the run state's logits
	logitsAll  // logits mode: every row, into the batch's logits
)

// BatchState is the scratch of a batch of up to rows positions, allocated once at load in one
// anonymous mapping.
type BatchState struct {
	rows             int         // min(-b, seq_len)
	x, xb, xb2, q    []float32   // (rows, dim)
	hb, hb2          []float32   // (rows, hidden_dim)
	ropeCos, ropeSin []float32   // (rows, head_size / 2): each row's rotation
	logits           []float32   // (rows, vocab), logits mode only
	qa               q8Batch     // room for the rows quantized, for Q8_0 products
	wpack            [][]byte    // per worker: weight rows interleaved for the VNNI tile
	wide             [][]float32 // per worker: a block of 16-bit weight rows widened to float32
	vt               []float32   // (kv_dim, kvRows): the layer's values transposed, for attention
	attS             [][]float32 // per worker: a tile's scores (rows, kvRows) and outputs (rows, head_size)
	free             func()
}

// q8Batch is a (rows, n) activation quantized row by row (section 4's blocks of 32 along each
// row), in the layout the batched Q8_0 kernel reads (q8gemm.go).
type q8Batch struct {
	qs     []int8    // (rows, n) quants
	d      []float32 // (rows, n / 32) scales, fp16-rounded
	packed []byte    // the rows interleaved for the VNNI tile (q8gemm.go), when it runs
	n      int       // columns of the current activation
}

// buildBatchState sizes every buffer for rows positions from header values already checked;
// the sizes are computed in 64-bit and a mapping the system refuses is a runtime error (exit 1).
// kvRows is the KV cache's positions (RunState.kvRows), the longest a row can attend over.
func buildBatchState(c *Config, rows, workers, kvRows int, allLogits bool) (BatchState, error) {
	r, dim, hid := int64(rows), int64(c.Dim), int64(c.HiddenDim)
	maxD := dim
	if hid > maxD {
		maxD = hid
	}
	// float32 counts of each buffer, each rounded up to 64 bytes so every row block is aligned
	packedRow := int64(q8Groups(int(maxD/q8Block))) * q8GroupX
	sizes := []int64{r * dim, r * dim, r * dim, r * dim, r * hid, r * hid, r * int64(c.headSize()/2), r * int64(c.headSize()/2), 0,
		(r*maxD + 3) / 4, r * maxD / q8Block, r * packedRow / 4, int64(c.kvDim()) * int64(kvRows)}
	if allLogits {
		sizes[8] = r * int64(c.VocabSize)
	}
	var total int64
	for _, s := range sizes {
		total += (s + 15) &^ 15
	}
	mem, free, err := allocScratch(4 * total)
	if err != nil {
		return BatchState{}, &exitError{exitRuntime, fmt.Sprintf("cannot allocate %d bytes for a batch of %d positions: %v", 4*total, r, err)}
	}
	all := unsafe.Slice((*float32)(unsafe.Pointer(&mem[0])), total)
	var off int64
	take := func(i int) []float32 {
		s := all[off : off+sizes[i] : off+sizes[i]]
		off += (sizes[i] + 15) &^ 15
		return s
	}
	b := BatchState{rows: rows, free: free}
	b.x, b.xb, b.xb2, b.q = take(0), take(1), take(2), take(3)
	b.hb, b.hb2 = take(4), take(5)
	b.ropeCos, b.ropeSin = take(6), take(7)
	if allLogits {
		b.logits = take(8)
	} else {
		take(8)
	}
	// the int8 and byte buffers are float32 runs seen as bytes (the int8 run rounded up)
	qs := take(9)
	b.qa.qs = unsafe.Slice((*int8)(unsafe.Pointer(&qs[0])), r*maxD)
	b.qa.d = take(10)
	packed := take(11)
	if len(packed) > 0 {
		b.qa.packed = unsafe.Slice((*byte)(unsafe.Pointer(&packed[0])), r*packedRow)
	}
	b.vt = take(12)
	b.wpack = make([][]byte, workers)
	b.wide = make([][]float32, workers)
	b.attS = make([][]float32, workers)
	return b, nil
}

// forwardBatch runs tokens at positions p0 .. p0+len(tokens)-1 (at most batch.rows of them) and
// returns the logits that want asks for: the last row's (logitsLast), every row's, row after
// row (logitsAll), or none.
func (t *Transformer) forwardBatch(tokens []int, p0 int, want int) []float32 {
	c, w, b, s := &t.config, &t.weights, &t.batch, &t.state
	T, dim, hid, kvDim := len(tokens), c.Dim, c.HiddenDim, c.kvDim()
	x, xb, xb2, q := b.x[:T*dim], b.xb[:T*dim], b.xb2[:T*dim], b.q[:T*dim]
	hb, hb2 := b.hb[:T*hid], b.hb2[:T*hid]
	for i, tok := range tokens {
		w.tokenEmbedding.row(x[i*dim:(i+1)*dim], tok)
	}
	t.ropeBatchTables(p0, T)
	for l := 0; l < c.NLayers; l++ {
		// attention: every row's k and v go into the cache before any row attends
		t.rmsnormRows(xb, x, w.rmsAtt[l], dim)
		loff := l * s.kvRows * kvDim
		kc := s.keyCache[loff+p0*kvDim : loff+(p0+T)*kvDim]
		vc := s.valueCache[loff+p0*kvDim : loff+(p0+T)*kvDim]
		t.gemmShared(xb, T, [][]float32{q, kc, vc}, []*Matrix{&w.wq[l], &w.wk[l], &w.wv[l]})
		t.ropeBatch(q, kc, T)
		t.attentionBatch(loff, p0, T)
		t.gemmShared(xb, T, [][]float32{xb2}, []*Matrix{&w.wo[l]})
		t.addRows(x, xb2, dim)

		// feed-forward
		t.rmsnormRows(xb, x, w.rmsFFN[l], dim)
		t.gemmShared(xb, T, [][]float32{hb, hb2}, []*Matrix{&w.w1[l], &w.w3[l]})
		t.rows(T, func(lo, hi int) {
			swiglu(hb[lo*hid:hi*hid], hb2[lo*hid:hi*hid])
		})
		t.gemmShared(hb, T, [][]float32{xb2}, []*Matrix{&w.w2[l]})
		t.addRows(x, xb2, dim)
	}
	switch want {
	case logitsLast:
		last := x[(T-1)*dim : T*dim]
		rmsnorm(s.x, last, w.rmsFinal, c.NormEps)
		t.matmul(s.logits, s.x, &w.wcls)
		return s.logits
	case logitsAll:
		t.rmsnormRows(xb, x, w.rmsFinal, dim)
		logits := b.logits[:T*c.VocabSize]
		t.gemmShared(xb, T, [][]float32{logits}, []*Matrix{&w.wcls})
		return logits
	}
	return nil
}

// rows runs fn over the T rows of the batch, split across the workers: the work between the
// products (norms, residual adds, SwiGLU, the quantization) would otherwise run on one thread.
func (t *Transformer) rows(T int, fn func(lo, hi int)) {
	t.pool.run(T, 1, func(_, lo, hi int) { fn(lo, hi) })
}

func (t *Transformer) rmsnormRows(o, x, weight []float32, dim int) {
	t.rows(len(x)/dim, func(lo, hi int) {
		for r := lo; r < hi; r++ {
			rmsnorm(o[r*dim:(r+1)*dim], x[r*dim:(r+1)*dim], weight, t.config.NormEps)
		}
	})
}

// addRows adds y to x, both (T, dim).
func (t *Transformer) addRows(x, y []float32, dim int) {
	t.rows(len(x)/dim, func(lo, hi int) {
		xs, ys := x[lo*dim:hi*dim], y[lo*dim:hi*dim]
		for i := range xs {
			xs[i] += ys[i]
		}
	})
}

// ropeBatchTables fills row r's rotation with position p0 + r's, as ropeTables does for one.
func (t *Transformer) ropeBatchTables(p0, T int) {
	b, hs := &t.batch, t.config.headSize()
	half := hs / 2
	for i := 0; i < half; i++ {
		freq := ropeFreq(t.config.RopeTheta, i, hs)
		for r := 0; r < T; r++ {
			val := float32(p0+r) * freq
			b.ropeCos[r*half+i] = float32(math.Cos(float64(val)))
			b.ropeSin[r*half+i] = float32(math.Sin(float64(val)))
		}
	}
}

// ropeBatch rotates every row of q (T, dim) and k (T, kv_dim) by its own position's tables.
func (t *Transformer) ropeBatch(q, k []float32, T int) {
	c, b := &t.config, &t.batch
	dim, hs, kvDim := c.Dim, c.headSize(), c.kvDim()
	half := hs / 2
	for r := 0; r < T; r++ {
		cs, sn := b.ropeCos[r*half:(r+1)*half], b.ropeSin[r*half:(r+1)*half]
		qr, kr := q[r*dim:(r+1)*dim], k[r*kvDim:(r+1)*kvDim]
		for i := 0; i < dim; i += 2 {
			fcr, fci := cs[(i%hs)/2], sn[(i%hs)/2]
			q0, q1 := qr[i], qr[i+1]
			qr[i], qr[i+1] = q0*fcr-q1*fci, q0*fci+q1*fcr
			if i < kvDim {
				k0, k1 := kr[i], kr[i+1]
				kr[i], kr[i+1] = k0*fcr-k1*fci, k0*fci+k1*fcr
			}
		}
	}
}

// attentionBatch writes into the batch's xb every (row, head) pair's causal attention: row r at
// position p0 + r over cache positions 0 .. p0 + r of the layer whose cache starts at loff.
//
// The rows go in tiles of the product kernel's activation rows, so that a head's scores and its
// weighted sum of values are tile products: scores S = Q_tile K^T over the keys up to the tile's
// last row (a row's entries past its own position are set to 0 after its softmax), then
// S V, with V transposed once per layer so that its columns are rows. The (head, tile) pairs
// are split across the workers. Fewer rows than a tile go one (row, head) pair at a time.
func (t *Transformer) attentionBatch(loff, p0, T int) {
	c, s, b := &t.config, &t.state, &t.batch
	dim, hs, kvDim, nh, seq := c.Dim, c.headSize(), c.kvDim(), c.NHeads, s.kvRows
	kvMul := c.NHeads / c.NKVHeads
	scale := float32(1 / math.Sqrt(float64(hs)))
	tileC := f32TileRows(hs)
	if T < tileC {
		t.attentionPairs(loff, p0, T)
		return
	}
	L := p0 + T
	values := s.valueCache[loff : loff+L*kvDim]
	vt := b.vt
	// in blocks of 16 positions, so that each row of vt gets a whole cache line at a time; the
	// workers split the columns
	t.pool.run(kvDim, 16, func(_, lo, hi int) {
		for j0 := 0; j0 < L; j0 += 16 {
			j1 := minInt(j0+16, L)
			for i := lo; i < hi; i++ {
				dst := vt[i*seq+j0 : i*seq+j1]
				for j := range dst {
					dst[j] = values[(j0+j)*kvDim+i]
				}
			}
		}
	})
	tiles := (T + tileC - 1) / tileC
	t.pool.run(nh*tiles, 1, func(worker, lo, hi int) {
		if b.attS[worker] == nil {
			b.attS[worker] = make([]float32, tileC*(seq+hs))
		}
		S, O := b.attS[worker][:tileC*seq], b.attS[worker][tileC*seq:]
		for p := lo; p < hi; p++ {
			h, ti := p/tiles, p%tiles
			own := ti * tileC          // the first row this pair writes
			t0 := minInt(own, T-tileC) // the first row of its tile (the last tile ends at T)
			kvOff := (h / kvMul) * hs
			jn := p0 + t0 + tileC // the keys of the tile's last row: 0 .. jn-1
			keys := s.keyCache[loff : loff+jn*kvDim]
			qt := b.q[t0*dim+h*hs:]
			j := 0
			for ; j+4 <= jn; j += 4 {
				f32Tile(S[j:], seq, qt, dim, tileC, hs, keys[j*kvDim+kvOff:], kvDim)
			}
			for ; j < jn; j++ {
				for r := 0; r < tileC; r++ {
					S[r*seq+j] = dot(qt[r*dim:r*dim+hs], keys[j*kvDim+kvOff:j*kvDim+kvOff+hs])
				}
			}
			for r := 0; r < tileC; r++ {
				n := p0 + t0 + r + 1 // row r attends to positions 0 .. n-1
				att := S[r*seq : r*seq+jn]
				for i := range att[:n] {
					att[i] *= scale
				}
				softmaxExpf(att[:n])
				for i := n; i < jn; i++ {
					att[i] = 0
				}
			}
			vth := vt[kvOff*seq:]
			i := 0
			for ; i+4 <= hs; i += 4 {
				f32Tile(O[i:], hs, S, seq, tileC, jn, vth[i*seq:], seq)
			}
			for ; i < hs; i++ {
				for r := 0; r < tileC; r++ {
					O[r*hs+i] = dot(S[r*seq:r*seq+jn], vth[i*seq:i*seq+jn])
				}
			}
			for r := own - t0; r < tileC; r++ {
				copy(b.xb[(t0+r)*dim+h*hs:(t0+r)*dim+(h+1)*hs], O[r*hs:(r+1)*hs])
			}
		}
	})
}

// attentionPairs is attentionBatch one (row, head) pair at a time, as the one-position pass
// does it.
func (t *Transformer) attentionPairs(loff, p0, T int) {
	c, s, b := &t.config, &t.state, &t.batch
	dim, hs, kvDim, nh := c.Dim, c.headSize(), c.kvDim(), c.NHeads
	kvMul := c.NHeads / c.NKVHeads
	scale := float32(1 / math.Sqrt(float64(hs)))
	t.pool.run(T*nh, 1, func(worker, lo, hi int) {
		if s.att[worker] == nil {
			s.att[worker] = make([]float32, s.kvRows)
		}
		for p := lo; p < hi; p++ {
			r, h := p/nh, p%nh
			pos := p0 + r
			att := s.att[worker][:pos+1]
			keys := s.keyCache[loff : loff+(pos+1)*kvDim]
			values := s.valueCache[loff : loff+(pos+1)*kvDim]
			q := b.q[r*dim+h*hs : r*dim+(h+1)*hs]
			kvOff := (h / kvMul) * hs
			for ti := range att {
				att[ti] = dot(q, keys[ti*kvDim+kvOff:ti*kvDim+kvOff+hs]) * scale
			}
			softmaxExpf(att)
			xb := b.xb[r*dim+h*hs : r*dim+(h+1)*hs]
			for i := range xb {
				xb[i] = 0
			}
			for ti, a := range att {
				vt := values[ti*kvDim+kvOff : ti*kvDim+kvOff+hs]
				for i := range xb {
					xb[i] += a * vt[i]
				}
			}
		}
	})
}

// gemmShared computes outs[m] (T, rows of ws[m]) = x (T, d) @ ws[m]^T for matrices that share
// their input (q, k, v; w1, w3), in one hand-off to the pool: the activation is quantized once
// for the Q8_0 ones, and the workers split the weight rows of all of them, each streaming its
// own rows once for the whole batch.
func (t *Transformer) gemmShared(x []float32, T int, outs [][]float32, ws []*Matrix) {
	d := len(x) / T
	var qa *q8Batch
	for _, w := range ws {
		if w.isQ8() {
			qa = &t.batch.qa
			qa.quantize(t, x, T, d)
			break
		}
	}
	total := 0
	for _, o := range outs {
		total += len(o) / T
	}
	t.pool.run(total, 16, func(worker, lo, hi int) {
		base := 0
		for m, o := range outs {
			n := len(o) / T
			a, bnd := lo-base, hi-base
			if a < 0 {
				a = 0
			}
			if bnd > n {
				bnd = n
			}
			if a < bnd {
				switch w := ws[m]; {
				case w.isQ8():
					q8Gemm(o, n, qa, T, w.q8, a, bnd, &t.batch.wpack[worker])
				case w.is16():
					h16Gemm(o, n, x, T, d, w.h16, w.bf16, a, bnd, &t.batch.wide[worker])
				default:
					f32Gemm(o, n, x, T, d, w.f32, a, bnd)
				}
			}
			base += n
		}
	})
}

// quantize fills the batch with the T rows of x (T, d), each as section 4 quantizes one
// activation vector, the rows split across t's workers (t nil: on this goroutine).
func (a *q8Batch) quantize(t *Transformer, x []float32, T, d int) {
	nb := d / q8Block
	a.n = d
	xs := q8Groups(nb) * q8GroupX
	pack := useVNNI()
	fn := func(lo, hi int) {
		for r := lo; r < hi; r++ {
			quantizeBlocks(a.qs[r*d:(r+1)*d], a.d[r*nb:(r+1)*nb], x[r*d:(r+1)*d])
			if pack {
				packQ8X(a.packed[r*xs:(r+1)*xs], a.qs[r*d:(r+1)*d], a.d[r*nb:(r+1)*nb])
			}
		}
	}
	if t == nil {
		fn(0, T)
		return
	}
	t.rows(T, fn)
}

// row is row r of the batch as a one-vector activation.
func (a *q8Batch) row(r int) *q8Vec {
	nb := a.n / q8Block
	return &q8Vec{qs: a.qs[r*a.n : (r+1)*a.n], d: a.d[r*nb : (r+1)*nb]}
}
