// Inference for Llama 2 in Go, after karpathy/llama2.c's run.c (its inner loops also in amd64
// assembler, simd_amd64.s).
//
// The weights of a llama2.c v0/v1 checkpoint or a GGUF file (F32 or Q8_0 matrices) are loaded
// once (on Linux into transparent huge pages, else memory-mapped) and read in place; one
// sequence is decoded token by token with a KV cache. The command line, the output and every
// validation rule follow polyllama's docs/port-contract.md.
package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"math/big"
	"os"
	"regexp"
	"runtime"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"
)

const portName = "go"

// ----------------------------------------------------------------------------
// Errors: every failure ends as one "error:" line on stderr and the contract's exit code

const (
	exitRuntime = 1 // cannot allocate, cannot write -o
	exitUsage   = 2 // bad command line
	exitBadFile = 3 // missing, malformed or unsupported model or tokenizer file
)

type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

func usageError(format string, args ...any) error {
	return &exitError{exitUsage, fmt.Sprintf(format, args...)}
}

func fileError(path, format string, args ...any) error {
	return &exitError{exitBadFile, oneLine(path) + ": " + fmt.Sprintf(format, args...)}
}

// oneLine keeps a user-supplied string from splitting the error line.
func oneLine(s string) string {
	if strings.ContainsAny(s, "\n\r") {
		q := strconv.Quote(s)
		return q[1 : len(q)-1]
	}
	return s
}

// ----------------------------------------------------------------------------
// Model: configuration, weights and the run state of one sequence

// Limits on header values (contract section 4): they bound every allocation made before the
// file size has been checked against the header.
const (
	maxDim      = 65536
	maxHidden   = 262144
	maxLayers   = 1024
	maxVocab    = 1 << 20
	maxSeq      = 65536
	maxKVBytes  = 4 << 30
	maxEntries  = 65536 // GGUF key and tensor counts
	maxTokenLen = 1024
)

type Config struct {
	Dim       int // transformer dimension
	HiddenDim int // FFN hidden dimension
	NLayers   int
	NHeads    int // query heads
	NKVHeads  int // key/value heads (fewer than NHeads with grouped-query attention)
	VocabSize int // always positive here; sharing is its own flag
	SeqLen    int // maximum sequence length
	Shared    bool
}

func (c *Config) headSize() int { return c.Dim / c.NHeads }
func (c *Config) kvDim() int    { return c.NKVHeads * c.headSize() }

func (c *Config) describe() string {
	return fmt.Sprintf("dim=%d hidden_dim=%d n_layers=%d n_heads=%d n_kv_heads=%d vocab_size=%d seq_len=%d shared_classifier=%v",
		c.Dim, c.HiddenDim, c.NLayers, c.NHeads, c.NKVHeads, c.VocabSize, c.SeqLen, c.Shared)
}

// validate applies the contract's header checks in the contract's order. Every product is
// computed in int64 from values already bounded, so nothing overflows.
func (c *Config) validate(path string) error {
	fields := []struct {
		name  string
		value int
		limit int
	}{
		{"dim", c.Dim, maxDim}, {"hidden_dim", c.HiddenDim, maxHidden}, {"n_layers", c.NLayers, maxLayers},
		{"n_heads", c.NHeads, c.Dim}, {"n_kv_heads", c.NKVHeads, 0}, {"vocab_size", c.VocabSize, maxVocab},
		{"seq_len", c.SeqLen, maxSeq},
	}
	for _, f := range fields {
		if f.value <= 0 {
			return fileError(path, "header value %s=%d must be positive", f.name, f.value)
		}
	}
	for _, f := range fields {
		if f.limit > 0 && f.value > f.limit {
			return fileError(path, "header value %s=%d exceeds the limit %d", f.name, f.value, f.limit)
		}
	}
	if c.Dim%c.NHeads != 0 {
		return fileError(path, "dim=%d is not a multiple of n_heads=%d", c.Dim, c.NHeads)
	}
	if c.headSize()%2 != 0 {
		return fileError(path, "head_size=%d must be even for RoPE", c.headSize())
	}
	if c.NKVHeads > c.NHeads || c.NHeads%c.NKVHeads != 0 {
		return fileError(path, "n_heads=%d is not a multiple of n_kv_heads=%d", c.NHeads, c.NKVHeads)
	}
	if kv := int64(c.NLayers) * int64(c.SeqLen) * int64(c.kvDim()) * 2 * 4; kv > maxKVBytes {
		return fileError(path, "KV cache of %d bytes exceeds the 4 GiB limit", kv)
	}
	return nil
}

// weightFloats counts the float32s of every tensor a forward pass reads (no RoPE tables).
func (c *Config) weightFloats() int64 {
	d, h, l, kv, v := int64(c.Dim), int64(c.HiddenDim), int64(c.NLayers), int64(c.kvDim()), int64(c.VocabSize)
	n := v*d + l*(2*d+2*d*d+2*kv*d+3*h*d) + d
	if !c.Shared {
		n += v * d
	}
	return n
}

// Weights holds slices of the loaded file (mapChecked); per-layer tensors are one slice per
// layer because GGUF files place each layer's tensors anywhere. A matrix is F32 or, from a
// GGUF file, Q8_0 (q8.go), each on its own; norms are always F32.
type Weights struct {
	tokenEmbedding Matrix      // (vocab, dim)
	rmsAtt         [][]float32 // (layer, dim)
	wq             []Matrix    // (layer, dim, n_heads * head_size)
	wk             []Matrix    // (layer, kv_dim, dim)
	wv             []Matrix    // (layer, kv_dim, dim)
	wo             []Matrix    // (layer, dim, n_heads * head_size)
	rmsFFN         [][]float32 // (layer, dim)
	w1             []Matrix    // (layer, hidden_dim, dim)
	w2             []Matrix    // (layer, dim, hidden_dim)
	w3             []Matrix    // (layer, hidden_dim, dim)
	rmsFinal       []float32   // (dim)
	wcls           Matrix      // (vocab, dim): token_embedding when shared
}

// RunState is the activation scratch space and the KV cache, allocated once.
type RunState struct {
	x          []float32   // (dim) activation at the current position
	xb         []float32   // (dim) same, inside a residual branch
	xb2        []float32   // (dim) an extra buffer for convenience
	hb         []float32   // (hidden_dim) FFN buffer
	hb2        []float32   // (hidden_dim) FFN buffer
	q          []float32   // (dim) query
	att        [][]float32 // (workers, seq_len) attention scores, one row per worker
	logits     []float32   // (vocab) output
	keyCache   []float32   // (layer, seq_len, kv_dim)
	valueCache []float32   // (layer, seq_len, kv_dim)
	ropeCos    []float32   // (head_size / 2) rotation of the current position
	ropeSin    []float32   // (head_size / 2)
	qbuf       q8Vec       // (max(dim, hidden_dim)) room for a quantized activation
	qx         q8Vec       // the activation of the current Q8_0 products, in qbuf
}

type Transformer struct {
	config  Config
	weights Weights
	state   RunState
	pool    *Pool
	vocab   *Vocab // the tokenizer embedded in a GGUF file, else nil
	unmap   func()
}

func buildRunState(c *Config, workers int) RunState {
	kvDim, seq := c.kvDim(), c.SeqLen
	s := RunState{
		x: make([]float32, c.Dim), xb: make([]float32, c.Dim), xb2: make([]float32, c.Dim),
		hb: make([]float32, c.HiddenDim), hb2: make([]float32, c.HiddenDim), q: make([]float32, c.Dim),
		logits:     make([]float32, c.VocabSize),
		keyCache:   make([]float32, c.NLayers*seq*kvDim),
		valueCache: make([]float32, c.NLayers*seq*kvDim),
		ropeCos:    make([]float32, c.headSize()/2),
		ropeSin:    make([]float32, c.headSize()/2),
	}
	s.att = make([][]float32, workers) // each row allocated by the worker that first needs it
	n := c.Dim
	if c.HiddenDim > n {
		n = c.HiddenDim
	}
	s.qbuf = q8Vec{make([]int8, n), make([]float32, n/q8Block)}
	return s
}

func (t *Transformer) free() {
	t.pool.close()
	if t.unmap != nil {
		t.unmap()
	}
}

// ----------------------------------------------------------------------------
// Thread pool: workers started once; every matmul and the attention heads are split over them

// Pool runs a job over [0, n) in chunks that the workers claim from a shared counter, so a
// worker that the OS delays (the CPUs are shared) leaves its rows to the others instead of
// holding everyone up. Worker 0 is the calling goroutine: -j 1 starts nothing and runs
// everything inline.
//
// A dispatch bumps a generation counter. Each side that waits (a helper for the next job, the
// caller for the helpers to finish) polls for up to spinFor and only then parks on a channel:
// the gaps between the matmuls of a token are far shorter than a park and wake-up through the
// Go scheduler and the OS, and the bound means a helper whose partner has been descheduled on a
// busy machine gives its CPU back within a fraction of a time slice.
//
// Parking: the waiter stores the generation it waits for in its parked word, checks its
// condition once more, then sleeps on its channel; whoever fulfils the condition swaps that
// generation for 0 and, only if the swap succeeded, sends the one wake-up. So a wake-up is never
// lost, never left over, and never taken by a later wait (a late waker's generation is stale).
type Pool struct {
	workers int
	job     job           // the current job, written by the caller before it bumps gen
	gen     atomic.Uint64 // one bump per dispatch (and one by close)
	pending atomic.Int64  // helpers still inside the current job
	quit    bool          // set by close before its bump: the helpers return

	parked       []atomic.Uint64 // helper w sleeps on wake[w] until gen reaches this; 0: awake
	wake         []chan struct{}
	callerParked atomic.Uint64 // the caller sleeps on done until this job is finished; 0: awake
	done         chan struct{}
}

type job struct {
	fn       func(worker, lo, hi int)
	n, grain int64
	next     atomic.Int64 // the first unclaimed index
}

// spinFor is how long a waiting side polls before it parks: longer than the serial work
// between two dispatches of a token (a norm, RoPE, a residual add), much shorter than the OS's
// time slice.
const spinFor = 50 * time.Microsecond

// spinUntil polls cond for up to spinFor and reports whether it became true. Every 64 polls it
// yields its P (more goroutines than GOMAXPROCS, as in the tests, or the GC's workers, then get
// to run instead of waiting for a preemption) and reads the clock.
func spinUntil(cond func() bool) bool {
	deadline := time.Now().Add(spinFor)
	for {
		for i := 0; i < 64; i++ {
			if cond() {
				return true
			}
		}
		runtime.Gosched()
		if time.Now().After(deadline) {
			return cond()
		}
	}
}

func newPool(workers int) *Pool {
	p := &Pool{workers: workers, parked: make([]atomic.Uint64, workers),
		wake: make([]chan struct{}, workers), done: make(chan struct{}, 1)}
	for w := 1; w < workers; w++ {
		p.wake[w] = make(chan struct{}, 1)
		go p.loop(w)
	}
	return p
}

func (p *Pool) loop(worker int) {
	defer crashHandler()
	debug.SetPanicOnFault(true)
	var g uint64 // not gen.Load(): the first job may be out before this goroutine runs
	for {
		// the caller cannot bump gen again before this helper leaves job g: g+1 is exact
		g++
		p.waitFor(worker, g)
		if p.quit {
			return
		}
		p.job.work(worker)
		if p.pending.Add(-1) == 0 && p.callerParked.CompareAndSwap(g, 0) {
			p.done <- struct{}{}
		}
	}
}

// waitFor returns once generation g is out.
func (p *Pool) waitFor(worker int, g uint64) {
	out := func() bool { return p.gen.Load() >= g }
	if spinUntil(out) {
		return
	}
	p.parked[worker].Store(g)
	if out() && p.parked[worker].CompareAndSwap(g, 0) {
		return
	}
	<-p.wake[worker]
}

// publish makes the job (or quit) visible to the helpers, wakes those that sleep, and returns
// the job's generation.
func (p *Pool) publish() uint64 {
	g := p.gen.Add(1)
	for w := 1; w < p.workers; w++ {
		if p.parked[w].CompareAndSwap(g, 0) {
			p.wake[w] <- struct{}{}
		}
	}
	return g
}

func (j *job) work(worker int) {
	for {
		lo := j.next.Add(j.grain) - j.grain
		if lo >= j.n {
			return
		}
		hi := lo + j.grain
		if hi > j.n {
			hi = j.n
		}
		j.fn(worker, int(lo), int(hi))
	}
}

// run calls fn(worker, lo, hi) over [0, n), in about four chunks per worker, each a multiple
// of align long.
func (p *Pool) run(n, align int, fn func(worker, lo, hi int)) {
	if p.workers == 1 {
		fn(0, 0, n)
		return
	}
	grain := (n + 4*p.workers - 1) / (4 * p.workers)
	grain = (grain + align - 1) / align * align
	p.job.fn, p.job.n, p.job.grain = fn, int64(n), int64(grain)
	p.job.next.Store(0)
	p.pending.Store(int64(p.workers - 1))
	g := p.publish()
	p.job.work(0)

	finished := func() bool { return p.pending.Load() == 0 }
	if spinUntil(finished) {
		return
	}
	p.callerParked.Store(g)
	if finished() && p.callerParked.CompareAndSwap(g, 0) {
		return
	}
	<-p.done
}

func (p *Pool) close() {
	if p.workers > 1 {
		p.quit = true
		p.publish()
	}
}

// ----------------------------------------------------------------------------
// Neural net blocks; the dynamics of the Transformer

func rmsnorm(o, x, weight []float32) {
	var ss float32
	for _, v := range x {
		ss += v * v
	}
	ss /= float32(len(x))
	ss += 1e-5
	ss = 1 / float32(math.Sqrt(float64(ss)))
	weight = weight[:len(x)]
	o = o[:len(x)]
	for j, v := range x {
		o[j] = weight[j] * (ss * v)
	}
}

func softmax(x []float32) {
	maxVal := x[0]
	for _, v := range x[1:] {
		if v > maxVal {
			maxVal = v
		}
	}
	var sum float32
	for i, v := range x {
		e := float32(math.Exp(float64(v - maxVal)))
		x[i] = e
		sum += e
	}
	for i := range x {
		x[i] /= sum
	}
}

// dot is the inner product of two equally long vectors, over 8 independent accumulators so
// that the adds overlap (Go has no SIMD intrinsics; this is what keeps the FPU busy).
func dot(a, b []float32) float32 {
	n := len(a)
	b = b[:n]
	var s0, s1, s2, s3, s4, s5, s6, s7 float32
	i := 0
	for ; i <= n-8; i += 8 {
		aa, bb := a[i:i+8:i+8], b[i:i+8:i+8]
		s0 += aa[0] * bb[0]
		s1 += aa[1] * bb[1]
		s2 += aa[2] * bb[2]
		s3 += aa[3] * bb[3]
		s4 += aa[4] * bb[4]
		s5 += aa[5] * bb[5]
		s6 += aa[6] * bb[6]
		s7 += aa[7] * bb[7]
	}
	for ; i < n; i++ {
		s0 += a[i] * b[i]
	}
	return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
}

// matmulRows computes out[i] = W[i, :] . x for rows lo..hi of W (rows, n): in the amd64
// assembler kernel where the CPU has AVX2 and FMA (simd_amd64.go), else in portable Go.
func matmulRows(out, x, w []float32, lo, hi int) {
	if simdKernels {
		matmulRowsSIMD(out, x, w, lo, hi)
		return
	}
	matmulRowsGo(out, x, w, lo, hi)
}

// matmulRowsGo is the portable loop, four rows per pass: each x element loaded serves four
// rows, and the four sums are independent chains that keep the adder busy. Reslicing every row
// to len(x) lets the compiler drop the bounds checks from the inner loop.
func matmulRowsGo(out, x, w []float32, lo, hi int) {
	n := len(x)
	i := lo
	for ; i+4 <= hi; i += 4 {
		r0 := w[i*n:][:len(x)]
		r1 := w[(i+1)*n:][:len(x)]
		r2 := w[(i+2)*n:][:len(x)]
		r3 := w[(i+3)*n:][:len(x)]
		var a0, a1, a2, a3 float32
		for j, xv := range x {
			a0 += r0[j] * xv
			a1 += r1[j] * xv
			a2 += r2[j] * xv
			a3 += r3[j] * xv
		}
		o := out[i : i+4 : i+4]
		o[0], o[1], o[2], o[3] = a0, a1, a2, a3
	}
	for ; i < hi; i++ {
		out[i] = dot(w[i*n:][:len(x)], x)
	}
}

// rows computes rows lo..hi of out = m @ x; a is x quantized when m is Q8_0.
func (m *Matrix) rows(out, x []float32, a *q8Vec, lo, hi int) {
	if m.isQ8() {
		q8Rows(out, m.q8, a, lo, hi)
	} else {
		matmulRows(out, x, m.f32, lo, hi)
	}
}

// quantizeFor quantizes x once for all the Q8_0 matrices among ws (nil when there are none),
// before the workers start: every product of the group reads the same blocks.
func (t *Transformer) quantizeFor(x []float32, ws ...*Matrix) *q8Vec {
	for _, w := range ws {
		if w.isQ8() {
			t.state.qx.quantize(&t.state.qbuf, x)
			return &t.state.qx
		}
	}
	return nil
}

// matmul is out = W @ x with W (len(out), len(x)), split across the pool.
func (t *Transformer) matmul(out, x []float32, w *Matrix) {
	a := t.quantizeFor(x, w)
	t.pool.run(len(out), 4, func(_, lo, hi int) { w.rows(out, x, a, lo, hi) })
}

// matmulShared computes several matmuls that share their input in one pass over the pool (q, k,
// v; then w1, w3), so the workers synchronise once instead of per matrix.
func (t *Transformer) matmulShared(x []float32, outs [][]float32, ws []*Matrix) {
	q := t.quantizeFor(x, ws...)
	total := 0
	for _, o := range outs {
		total += len(o)
	}
	t.pool.run(total, 4, func(_, lo, hi int) {
		base := 0
		for m, o := range outs {
			a, b := lo-base, hi-base
			if a < 0 {
				a = 0
			}
			if b > len(o) {
				b = len(o)
			}
			if a < b {
				ws[m].rows(o, x, q, a, b)
			}
			base += len(o)
		}
	})
}

func (t *Transformer) forward(token, pos int) []float32 {
	c, w, s := &t.config, &t.weights, &t.state
	dim, hs, kvDim := c.Dim, c.headSize(), c.kvDim()
	kvMul := c.NHeads / c.NKVHeads // query heads per KV head
	x := s.x
	w.tokenEmbedding.row(x, token)

	// RoPE: the rotation of pair (i, i+1) depends only on i % head_size, so one table per position
	for i := 0; i < hs/2; i++ {
		freq := float32(1 / math.Pow(10000, float64(float32(2*i)/float32(hs))))
		val := float32(pos) * freq
		s.ropeCos[i] = float32(math.Cos(float64(val)))
		s.ropeSin[i] = float32(math.Sin(float64(val)))
	}
	scale := float32(1 / math.Sqrt(float64(hs)))

	for l := 0; l < c.NLayers; l++ {
		rmsnorm(s.xb, x, w.rmsAtt[l])

		// k and v are written straight into the cache row of this position
		loff := l * c.SeqLen * kvDim
		k := s.keyCache[loff+pos*kvDim : loff+(pos+1)*kvDim]
		v := s.valueCache[loff+pos*kvDim : loff+(pos+1)*kvDim]
		t.matmulShared(s.xb, [][]float32{s.q, k, v}, []*Matrix{&w.wq[l], &w.wk[l], &w.wv[l]})

		// RoPE on adjacent pairs of every head of q, and of k
		for i := 0; i < dim; i += 2 {
			fcr, fci := s.ropeCos[(i%hs)/2], s.ropeSin[(i%hs)/2]
			q0, q1 := s.q[i], s.q[i+1]
			s.q[i], s.q[i+1] = q0*fcr-q1*fci, q0*fci+q1*fcr
			if i < kvDim {
				k0, k1 := k[i], k[i+1]
				k[i], k[i+1] = k0*fcr-k1*fci, k0*fci+k1*fcr
			}
		}

		// multihead attention, heads split across workers; each worker owns one score row
		keys := s.keyCache[loff : loff+(pos+1)*kvDim]     // (pos + 1, kv_dim)
		values := s.valueCache[loff : loff+(pos+1)*kvDim] // (pos + 1, kv_dim)
		t.pool.run(c.NHeads, 1, func(worker, lo, hi int) {
			if s.att[worker] == nil {
				s.att[worker] = make([]float32, c.SeqLen)
			}
			att := s.att[worker][:pos+1]
			for h := lo; h < hi; h++ {
				q := s.q[h*hs : (h+1)*hs]
				kvOff := (h / kvMul) * hs
				for ti := range att {
					att[ti] = dot(q, keys[ti*kvDim+kvOff:ti*kvDim+kvOff+hs]) * scale
				}
				softmax(att)
				xb := s.xb[h*hs : (h+1)*hs]
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

		// output projection and residual
		t.matmul(s.xb2, s.xb, &w.wo[l])
		for i := range x {
			x[i] += s.xb2[i]
		}

		// FFN: w2(silu(w1(x)) * w3(x))
		rmsnorm(s.xb, x, w.rmsFFN[l])
		t.matmulShared(s.xb, [][]float32{s.hb, s.hb2}, []*Matrix{&w.w1[l], &w.w3[l]})
		for i, g := range s.hb {
			s.hb[i] = g / (1 + float32(math.Exp(float64(-g)))) * s.hb2[i]
		}
		t.matmul(s.xb, s.hb, &w.w2[l])
		for i := range x {
			x[i] += s.xb[i]
		}
	}

	rmsnorm(x, x, w.rmsFinal)
	t.matmul(s.logits, x, &w.wcls)
	return s.logits
}

// ----------------------------------------------------------------------------
// The Byte Pair Encoding (BPE) tokenizer that translates strings <-> tokens

const (
	tokBOS   = 1
	tokEOS   = 2
	minVocab = 259 // <unk>, BOS, EOS and the 256 byte tokens
)

// Vocab is a tokenizer's pieces and merge scores, from tokenizer.bin or a GGUF file.
type Vocab struct {
	pieces [][]byte
	scores []float64
}

type Tokenizer struct {
	path   string // the file it came from, for error messages
	vocab  *Vocab
	lookup map[string]int // piece -> lowest id spelling it
}

// readVocab reads tokenizer.bin, which must hold exactly the model's vocabulary.
func readVocab(path string, vocabSize int) (*Vocab, error) {
	f, size, err := openRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// more bytes than the longest legal vocabulary of this size: refuse before reading
	if size > 4+int64(vocabSize)*(8+maxTokenLen) {
		return nil, fileError(path, "is %d bytes, too large for a vocabulary of %d", size, vocabSize)
	}
	data := make([]byte, size)
	if _, err := io.ReadFull(f, data); err != nil {
		return nil, fileError(path, "cannot read: %v", err)
	}
	if len(data) < 4 {
		return nil, fileError(path, "truncated: no max_token_length header")
	}
	maxLen := int64(int32(binary.LittleEndian.Uint32(data)))
	if maxLen < 1 || maxLen > maxTokenLen {
		return nil, fileError(path, "max_token_length=%d outside 1..%d", maxLen, maxTokenLen)
	}
	v := &Vocab{pieces: make([][]byte, vocabSize), scores: make([]float64, vocabSize)}
	off := int64(4)
	for i := 0; i < vocabSize; i++ {
		if off+8 > size {
			return nil, fileError(path, "has only %d tokens, the model's vocabulary is %d", i, vocabSize)
		}
		score := math.Float32frombits(binary.LittleEndian.Uint32(data[off:]))
		length := int64(int32(binary.LittleEndian.Uint32(data[off+4:])))
		off += 8
		if length < 0 || length > maxLen {
			return nil, fileError(path, "token %d has length %d, outside 0..%d", i, length, maxLen)
		}
		if off+length > size {
			return nil, fileError(path, "truncated inside token %d", i)
		}
		v.pieces[i] = data[off : off+length : off+length]
		v.scores[i] = float64(score)
		off += length
	}
	if off != size {
		return nil, fileError(path, "has %d bytes after token %d: its vocabulary is larger than the model's %d",
			size-off, vocabSize-1, vocabSize)
	}
	return v, v.check(path)
}

// check applies the rules every vocabulary follows, from tokenizer.bin or GGUF alike: <unk>,
// BOS, EOS and the 256 byte tokens that byte fallback emits; the " " piece that starts every
// prompt; finite scores, which the merge rule compares.
func (v *Vocab) check(path string) error {
	if len(v.pieces) < minVocab {
		return fileError(path, "has %d tokens; a tokenizer needs at least %d (<unk>, BOS, EOS and 256 byte tokens)",
			len(v.pieces), minVocab)
	}
	space := false
	for i, score := range v.scores {
		if math.IsNaN(score) {
			return fileError(path, "token %d has a NaN score", i)
		}
		if math.IsInf(score, 0) {
			return fileError(path, "token %d has an infinite score", i)
		}
		space = space || string(v.pieces[i]) == " "
	}
	if !space {
		return fileError(path, "has no piece \" \" (the dummy prefix that starts every prompt)")
	}
	return nil
}

func buildTokenizer(path string, v *Vocab) *Tokenizer {
	t := &Tokenizer{path: oneLine(path), vocab: v, lookup: make(map[string]int, len(v.pieces))}
	for i, p := range v.pieces {
		if _, dup := t.lookup[string(p)]; !dup { // a duplicated piece keeps its lower id
			t.lookup[string(p)] = i
		}
	}
	return t
}

// encode turns text into token ids: dummy prefix, UTF-8 code points or byte fallback, then
// the highest-scoring merges until none applies. It fails only for a vocabulary too small to
// hold the byte tokens that the fallback needs.
func (t *Tokenizer) encode(text []byte, bos, eos bool) ([]int, error) {
	tokens := make([]int, 0, len(text)+3)
	if bos {
		tokens = append(tokens, tokBOS)
	}
	if len(text) > 0 {
		tokens = append(tokens, t.lookup[" "]) // the dummy prefix: Vocab.check made sure it is there
	}
	for i := 0; i < len(text); {
		// a code point: a lead byte and up to three continuation bytes
		j := i + 1
		for j < len(text) && text[j]&0xC0 == 0x80 && j-i < 4 {
			j++
		}
		if id, ok := t.lookup[string(text[i:j])]; ok {
			tokens = append(tokens, id)
		} else {
			for _, b := range text[i:j] {
				tokens = append(tokens, int(b)+3) // byte fallback: <0x00> is id 3
			}
		}
		i = j
	}
	for _, id := range tokens {
		if id >= len(t.vocab.pieces) {
			return nil, fmt.Errorf("the vocabulary of %d tokens has no token %d, needed to encode the prompt", len(t.vocab.pieces), id)
		}
	}
	var buf []byte
	for {
		bestScore, bestID, bestIdx := math.Inf(-1), -1, -1
		for i := 0; i+1 < len(tokens); i++ {
			buf = append(append(buf[:0], t.piece(tokens[i])...), t.piece(tokens[i+1])...)
			if id, ok := t.lookup[string(buf)]; ok && t.vocab.scores[id] > bestScore {
				bestScore, bestID, bestIdx = t.vocab.scores[id], id, i
			}
		}
		if bestIdx < 0 {
			break
		}
		tokens[bestIdx] = bestID
		tokens = append(tokens[:bestIdx+1], tokens[bestIdx+2:]...)
	}
	if eos {
		tokens = append(tokens, tokEOS)
	}
	return tokens, nil
}

// piece is the text of an id; ids past the vocabulary (byte fallback in a tiny vocabulary)
// have none, and the caller refuses to run them.
func (t *Tokenizer) piece(id int) []byte {
	if id < 0 || id >= len(t.vocab.pieces) {
		return nil
	}
	return t.vocab.pieces[id]
}

func (t *Tokenizer) decode(prev, token int) []byte {
	piece := t.piece(token)
	if prev == tokBOS && len(piece) > 0 && piece[0] == ' ' {
		piece = piece[1:] // the dummy prefix after BOS is not printed
	}
	if b, ok := rawByte(piece); ok {
		return []byte{b}
	}
	return piece
}

// rawByte parses a byte token <0xHH>.
func rawByte(piece []byte) (byte, bool) {
	if len(piece) != 6 || string(piece[:3]) != "<0x" || piece[5] != '>' {
		return 0, false
	}
	hi, ok1 := hexDigit(piece[3])
	lo, ok2 := hexDigit(piece[4])
	return hi<<4 | lo, ok1 && ok2
}

func hexDigit(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// safePiece is what run.c's safe_printf prints: nothing for a lone unprintable byte.
func safePiece(piece []byte) []byte {
	if len(piece) == 1 {
		b := piece[0]
		if !(0x20 <= b && b <= 0x7E) && !(b == '\t' || b == '\n' || b == '\v' || b == '\f' || b == '\r') {
			return nil
		}
	}
	return piece
}

// ----------------------------------------------------------------------------
// The Sampler: greedy argmax, multinomial sampling and top-p sampling

// Rng is llama2.c's xorshift*, so that one seed gives the same draws in every port.
type Rng struct{ state uint64 }

func (r *Rng) nextU32() uint32 {
	r.state ^= r.state >> 12
	r.state ^= r.state << 25
	r.state ^= r.state >> 27
	return uint32((r.state * 0x2545F4914F6CDD1D) >> 32)
}

func (r *Rng) nextF32() float32 { return float32(r.nextU32()>>8) / 16777216.0 }

type Sampler struct {
	temperature float32
	topp        float32
	rng         Rng
	probIndex   []probIndex // top-p candidates, allocated once
}

type probIndex struct {
	prob  float32
	index int
}

func buildSampler(vocabSize int, temperature, topp float64, seed uint64) *Sampler {
	return &Sampler{float32(temperature), float32(topp), Rng{seed}, make([]probIndex, vocabSize)}
}

// argmax returns the lowest index among equal maxima.
func argmax(p []float32) int {
	best := 0
	for i, v := range p {
		if v > p[best] {
			best = i
		}
	}
	return best
}

// sampleMult returns the first index whose running probability exceeds coin.
func sampleMult(probs []float32, coin float32) int {
	var cdf float32
	for i, p := range probs {
		cdf += p
		if coin < cdf {
			return i
		}
	}
	return len(probs) - 1
}

// sampleTopp samples from the smallest set of most likely tokens whose probability exceeds
// topp; tokens below (1 - topp) / (n - 1) cannot be in it and are dropped before sorting.
func sampleTopp(probs []float32, topp, coin float32, buf []probIndex) int {
	cutoff := (1 - topp) / float32(len(probs)-1)
	cand := buf[:0]
	for i, p := range probs {
		if p >= cutoff {
			cand = append(cand, probIndex{p, i})
		}
	}
	sort.Slice(cand, func(a, b int) bool {
		if cand[a].prob != cand[b].prob {
			return cand[a].prob > cand[b].prob
		}
		return cand[a].index < cand[b].index
	})
	if len(cand) == 0 { // a flat distribution and a tiny top-p: the most likely id
		return argmax(probs)
	}
	last := len(cand) - 1
	var cum float32
	for i := range cand {
		cum += cand[i].prob
		if cum > topp {
			last = i
			break
		}
	}
	// cum is now the prefix's total (the whole list when no prefix exceeded topp)
	r := coin * cum
	var cdf float32
	for i := 0; i <= last; i++ {
		cdf += cand[i].prob
		if r < cdf {
			return cand[i].index
		}
	}
	return cand[last].index
}

func (s *Sampler) sample(logits []float32) int {
	if s.temperature == 0 {
		return argmax(logits)
	}
	for i := range logits {
		logits[i] /= s.temperature
	}
	softmax(logits)
	coin := s.rng.nextF32()
	if s.topp <= 0 || s.topp >= 1 {
		return sampleMult(logits, coin)
	}
	return sampleTopp(logits, s.topp, coin, s.probIndex)
}

// ----------------------------------------------------------------------------
// Generation and logits loops, with the timings of the statistics line

type runStats struct {
	promptTokens, generatedTokens, positions int
	ttft, decode                             float64
}

func clampSteps(steps int64, seqLen int) int {
	if steps == 0 || steps > int64(seqLen) {
		return seqLen
	}
	return int(steps)
}

func generate(t *Transformer, tok *Tokenizer, smp *Sampler, prompt []byte, steps int, ignoreBOS bool, out io.Writer) (runStats, error) {
	promptTokens, err := tok.encode(prompt, true, false)
	if err == nil && promptTokens[0] >= t.config.VocabSize {
		err = fmt.Errorf("the vocabulary of %d tokens has no BOS token", t.config.VocabSize)
	}
	if err != nil {
		return runStats{}, &exitError{exitBadFile, tok.path + ": " + err.Error()}
	}
	st := runStats{promptTokens: len(promptTokens)}
	token := promptTokens[0]
	start := time.Now()
	var first time.Time
	for pos := 0; pos < steps; pos++ {
		logits := t.forward(token, pos)
		st.positions++
		var next int
		if pos < len(promptTokens)-1 {
			next = promptTokens[pos+1] // still forcing the prompt
		} else {
			next = smp.sample(logits)
			st.generatedTokens++
			if first.IsZero() {
				first = time.Now()
			}
		}
		if next == tokBOS && !ignoreBOS {
			break // BOS delimits sequences
		}
		if piece := safePiece(tok.decode(token, next)); len(piece) > 0 {
			if _, err := out.Write(piece); err != nil {
				return st, &exitError{exitRuntime, fmt.Sprintf("cannot write to stdout: %v", err)}
			}
		}
		token = next
	}
	end := time.Now()
	if first.IsZero() {
		st.ttft = end.Sub(start).Seconds()
	} else {
		st.ttft = first.Sub(start).Seconds()
		st.decode = end.Sub(first).Seconds()
	}
	return st, nil
}

// logitsRun writes the (len(ids), vocab) logits as little-endian float32, row i after position i.
func logitsRun(t *Transformer, ids []int, path string) (runStats, error) {
	st := runStats{promptTokens: len(ids)}
	f, err := os.Create(path)
	if err != nil {
		return st, writeError(path, err)
	}
	defer f.Close()
	out := bufio.NewWriter(f)
	row := make([]byte, 0, 4*t.config.VocabSize)
	start := time.Now()
	for pos, id := range ids {
		row = row[:0]
		for _, v := range t.forward(id, pos) {
			row = binary.LittleEndian.AppendUint32(row, math.Float32bits(v))
		}
		st.positions++
		if _, err := out.Write(row); err != nil {
			return st, writeError(path, err)
		}
	}
	st.ttft = time.Since(start).Seconds()
	if err := out.Flush(); err != nil {
		return st, writeError(path, err)
	}
	if err := f.Close(); err != nil {
		return st, writeError(path, err)
	}
	return st, nil
}

func writeError(path string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	return &exitError{exitRuntime, fmt.Sprintf("%s: cannot write: %v", oneLine(path), err)}
}

func statsLine(threads int, loadS float64, st runStats) string {
	tokS := 0.0
	if st.generatedTokens > 1 && st.decode > 0 {
		tokS = float64(st.generatedTokens-1) / st.decode
	}
	f := func(v float64, prec int) string { return strconv.FormatFloat(v, 'f', prec, 64) }
	return fmt.Sprintf(`polyllama-stats: {"port":%q,"prompt_tokens":%d,"generated_tokens":%d,"positions":%d,"threads":%d,"load_s":%s,"ttft_s":%s,"decode_s":%s,"decode_tok_s":%s}`,
		portName, st.promptTokens, st.generatedTokens, st.positions, threads,
		f(loadS, 6), f(st.ttft, 6), f(st.decode, 6), f(tokS, 4))
}

// ----------------------------------------------------------------------------
// Command line

const usageText = "usage: run <checkpoint> [-z tokenizer] [-t temperature] [-p topp] [-s seed] [-n steps] " +
	"[-i prompt] [-j threads] [-m generate|logits] [-o file] [-k ids] [-e 0|1]"

type Args struct {
	checkpoint  string
	tokenizer   string
	temperature float64
	topp        float64
	seed        uint64
	steps       int64
	prompt      []byte
	threads     int
	mode        string
	output      string
	ids         []int // -1 marks an id too large to represent, refused with the others
	hasIDs      bool
	ignoreBOS   bool
}

// Numbers on the command line are plain decimal (contract section 2): no inf, nan,
// underscores, hex or surrounding spaces.
var (
	plainInt   = regexp.MustCompile(`^[+-]?[0-9]+$`)
	plainFloat = regexp.MustCompile(`^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$`)
)

func parseInt(flag, text string, lo, hi *big.Int) (*big.Int, error) {
	v, ok := new(big.Int), plainInt.MatchString(text)
	if ok {
		_, ok = v.SetString(text, 10)
	}
	if !ok {
		return nil, usageError("%s expects an integer, got %q", flag, text)
	}
	if (lo != nil && v.Cmp(lo) < 0) || (hi != nil && v.Cmp(hi) > 0) {
		return nil, usageError("%s %s is out of range", flag, text)
	}
	return v, nil
}

func parseFloat(flag, text string, lo, hi float64) (float64, error) {
	if !plainFloat.MatchString(text) {
		return 0, usageError("%s expects a number, got %q", flag, text)
	}
	v, err := strconv.ParseFloat(text, 64)
	if err != nil && !errors.Is(err, strconv.ErrRange) {
		return 0, usageError("%s expects a number, got %q", flag, text)
	}
	if math.IsInf(v, 0) || v < lo || v > hi { // 1e999 overflows to infinity: out of range

		return 0, usageError("%s %s is out of range", flag, text)
	}
	return v, nil
}

func parseArgs(argv []string) (*Args, error) {
	if len(argv) == 0 || strings.HasPrefix(argv[0], "-") {
		return nil, usageError("missing checkpoint")
	}
	a := &Args{checkpoint: argv[0], temperature: 1.0, topp: 0.9, steps: 256, threads: 1, mode: "generate"}
	rest := argv[1:]
	if len(rest)%2 != 0 {
		return nil, usageError("flag %s has no value", oneLine(rest[len(rest)-1]))
	}
	for i := 0; i < len(rest); i += 2 {
		if err := a.set(rest[i], rest[i+1]); err != nil {
			return nil, err
		}
	}
	if a.mode == "logits" && (a.output == "" || !a.hasIDs) {
		return nil, usageError("logits mode needs -o FILE and -k IDS")
	}
	return a, nil
}

// set applies one flag and its value.
func (a *Args) set(flag, value string) error {
	zero, one := big.NewInt(0), big.NewInt(1)
	var err error
	var v *big.Int
	switch flag {
	case "-z":
		a.tokenizer = value
	case "-t":
		a.temperature, err = parseFloat(flag, value, 0, math.Inf(1))
	case "-p":
		a.topp, err = parseFloat(flag, value, 0, 1)
	case "-s":
		if v, err = parseInt(flag, value, zero, new(big.Int).SetUint64(math.MaxUint64)); err == nil {
			a.seed = v.Uint64()
		}
	case "-n":
		// any number of digits: everything above seq_len means seq_len
		if v, err = parseInt(flag, value, zero, nil); err == nil {
			a.steps = math.MaxInt64
			if v.IsInt64() {
				a.steps = v.Int64()
			}
		}
	case "-i":
		a.prompt = []byte(value)
	case "-j":
		if v, err = parseInt(flag, value, one, big.NewInt(4096)); err == nil {
			a.threads = int(v.Int64())
		}
	case "-m":
		if value != "generate" && value != "logits" {
			err = usageError("-m expects generate or logits, got %q", value)
		}
		a.mode = value
	case "-o":
		a.output = value
	case "-k":
		a.ids, err = parseIDs(value)
		a.hasIDs = true
	case "-e":
		if v, err = parseInt(flag, value, zero, one); err == nil {
			a.ignoreBOS = v.Int64() == 1
		}
	default:
		err = usageError("unknown flag %s", oneLine(flag))
	}
	return err
}

// parseIDs reads -k's comma-separated ids; an id too large to represent becomes -1, which the
// range check refuses with the others once the vocabulary is known.
func parseIDs(value string) ([]int, error) {
	var ids []int
	for _, part := range strings.Split(value, ",") {
		id, ok := new(big.Int), plainInt.MatchString(part)
		if ok {
			_, ok = id.SetString(part, 10)
		}
		if !ok {
			return nil, usageError("-k expects comma-separated token ids, got %q", value)
		}
		if !id.IsInt64() || id.Int64() > math.MaxInt32 {
			id.SetInt64(-1)
		}
		ids = append(ids, int(id.Int64()))
	}
	return ids, nil
}

func run(argv []string) error {
	start := time.Now()
	args, err := parseArgs(argv)
	if err != nil {
		return err
	}
	// the process uses as many CPUs as it has workers, and -j 1 exactly one
	runtime.GOMAXPROCS(args.threads)

	t, err := readCheckpoint(args.checkpoint)
	if err != nil {
		return err
	}
	tok, err := loadTokenizer(args, t)
	if err != nil {
		return err
	}
	t.state = buildRunState(&t.config, args.threads)
	t.pool = newPool(args.threads)
	defer t.free()
	loadS := time.Since(start).Seconds()

	var st runStats
	if args.mode == "logits" {
		n := len(args.ids)
		ok := n >= 1 && n <= t.config.SeqLen
		for _, id := range args.ids {
			ok = ok && id >= 0 && id < t.config.VocabSize
		}
		if !ok {
			return usageError("-k needs 1..%d ids in [0, %d)", t.config.SeqLen, t.config.VocabSize)
		}
		if st, err = logitsRun(t, args.ids, args.output); err != nil {
			return err
		}
	} else {
		seed := args.seed
		if seed == 0 {
			seed = uint64(time.Now().Unix())
		}
		smp := buildSampler(t.config.VocabSize, args.temperature, args.topp, seed)
		out := os.Stdout // unbuffered: each piece is written at once, as run.c's fflush
		if st, err = generate(t, tok, smp, args.prompt, clampSteps(args.steps, t.config.SeqLen), args.ignoreBOS, out); err != nil {
			return err
		}
		if _, err := out.Write([]byte("\n")); err != nil {
			return &exitError{exitRuntime, fmt.Sprintf("cannot write to stdout: %v", err)}
		}
	}
	fmt.Fprintln(os.Stderr, statsLine(args.threads, loadS, st))
	return nil
}

// loadTokenizer reads -z, or takes the tokenizer a GGUF file embeds; either is checked as it
// is read, before any prompt.
func loadTokenizer(args *Args, t *Transformer) (*Tokenizer, error) {
	if t.vocab != nil {
		return buildTokenizer(args.checkpoint, t.vocab), nil
	}
	if args.tokenizer == "" {
		return nil, usageError("-z tokenizer is required for a .bin checkpoint")
	}
	vocab, err := readVocab(args.tokenizer, t.config.VocabSize)
	if err != nil {
		return nil, err
	}
	return buildTokenizer(args.tokenizer, vocab), nil
}

// crashHandler turns a fault (a mapped file truncated under us) or a bug into one error line.
func crashHandler() {
	if r := recover(); r != nil {
		fmt.Fprintf(os.Stderr, "error: internal failure: %v\n", r)
		os.Exit(exitRuntime)
	}
}

func main() {
	defer crashHandler()
	debug.SetPanicOnFault(true)
	if one := uint16(1); *(*byte)(unsafe.Pointer(&one)) != 1 {
		fmt.Fprintln(os.Stderr, "error: this port reads little-endian floats in place and needs a little-endian CPU")
		os.Exit(exitRuntime)
	}
	if err := run(os.Args[1:]); err != nil {
		code := exitRuntime
		var ee *exitError
		if errors.As(err, &ee) {
			code = ee.code
		}
		fmt.Fprintf(os.Stderr, "error: %s\n", err)
		if code == exitUsage {
			fmt.Fprintln(os.Stderr, usageText)
		}
		os.Exit(code)
	}
}
