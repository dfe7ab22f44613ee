// The model: configuration and its limits, the weights (views of the loaded file), the run
// state of one sequence (activations and KV cache), and the Transformer that holds them.

package main

import "fmt"

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
	// contract 3: from a GGUF file's keys, llama2.c's values for a .bin (withDefaults)
	RopeTheta float32 // RoPE base
	NormEps   float32 // rmsnorm's epsilon
	BOS, EOS  int     // the tokenizer's BOS and EOS ids
}

// Defaults of the keys a .bin file has no room for, and of a GGUF file that omits them.
const (
	defaultRopeTheta = 10000
	defaultNormEps   = 1e-5
)

// withDefaults sets llama2.c's RoPE base, epsilon and BOS/EOS ids.
func (c Config) withDefaults() Config {
	c.RopeTheta, c.NormEps, c.BOS, c.EOS = defaultRopeTheta, defaultNormEps, tokBOS, tokEOS
	return c
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
	return nil
}

// checkKVCache applies the contract's limit to the cache of a run that reaches rows positions
// (steps after clamping, or the logits mode's ids), before anything is allocated for it.
func (c *Config) checkKVCache(path string, rows int) error {
	if kv := c.kvCacheBytes(rows); kv > maxKVBytes {
		return fileError(path, "KV cache of %d bytes for %d positions exceeds the 4 GiB limit", kv, rows)
	}
	return nil
}

func (c *Config) kvCacheBytes(rows int) int64 {
	return int64(c.NLayers) * int64(rows) * int64(c.kvDim()) * 2 * 4
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
	keyCache   []float32   // (layer, kvRows, kv_dim)
	valueCache []float32   // (layer, kvRows, kv_dim)
	kvRows     int         // positions the cache holds: what the run can reach, not seq_len
	ropeCos    []float32   // (head_size / 2) rotation of the current position
	ropeSin    []float32   // (head_size / 2)
	qbuf       q8Vec       // (max(dim, hidden_dim)) room for a quantized activation
	qx         q8Vec       // the activation of the current Q8_0 products, in qbuf
	act        activation  // the current group's input in every form (prepare)
}

type Transformer struct {
	config  Config
	weights Weights
	state   RunState
	batch   BatchState
	pool    *Pool
	vocab   *Vocab // the tokenizer embedded in a GGUF file, else nil
	unmap   func()
}

// buildRunState allocates the activations and a KV cache of kvRows positions per layer
// (checked by checkKVCache).
func buildRunState(c *Config, workers, kvRows int) RunState {
	kvDim, seq := c.kvDim(), kvRows
	s := RunState{kvRows: kvRows,
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
	if t.pool != nil {
		t.pool.close()
	}
	if t.batch.free != nil {
		t.batch.free()
	}
	if t.unmap != nil {
		t.unmap()
	}
}
