// The forward pass: one token at one position through every layer (attention, then the
// feed-forward network, each a residual branch) to the logits.

package main

import "math"

// forward returns the logits of token at pos; they live in the run state and are overwritten
// by the next call.
func (t *Transformer) forward(token, pos int) []float32 {
	c, w, s := &t.config, &t.weights, &t.state
	x := s.x
	w.tokenEmbedding.row(x, token)
	t.ropeTables(pos)
	for l := 0; l < c.NLayers; l++ {
		t.attention(l, pos)
		t.feedForward(l)
	}
	rmsnorm(x, x, w.rmsFinal, c.NormEps)
	t.matmul(s.logits, x, &w.wcls)
	return s.logits
}

// ropeTables fills the rotation of position pos: the rotation of pair (i, i+1) depends only
// on i % head_size, so one table serves every head and every layer of the token.
func (t *Transformer) ropeTables(pos int) {
	s, hs := &t.state, t.config.headSize()
	for i := 0; i < hs/2; i++ {
		freq := ropeFreq(t.config.RopeTheta, i, hs)
		val := float32(pos) * freq
		s.ropeCos[i] = float32(math.Cos(float64(val)))
		s.ropeSin[i] = float32(math.Sin(float64(val)))
	}
}

// ropeFreq is the frequency of pair i of a head of hs values: 1 / theta^(2i / hs).
func ropeFreq(theta float32, i, hs int) float32 {
	return float32(1 / math.Pow(float64(theta), float64(float32(2*i)/float32(hs))))
}

// attention is layer l's attention branch, added to the residual stream x.
func (t *Transformer) attention(l, pos int) {
	c, w, s := &t.config, &t.weights, &t.state
	kvDim := c.kvDim()
	x := s.x
	rmsnorm(s.xb, x, w.rmsAtt[l], c.NormEps)

	// k and v are written straight into the cache row of this position
	loff := l * s.kvRows * kvDim
	k := s.keyCache[loff+pos*kvDim : loff+(pos+1)*kvDim]
	v := s.valueCache[loff+pos*kvDim : loff+(pos+1)*kvDim]
	t.matmulShared(s.xb, [][]float32{s.q, k, v}, []*Matrix{&w.wq[l], &w.wk[l], &w.wv[l]})
	t.rope(k)
	t.attentionHeads(loff, pos)

	// output projection and residual
	t.matmul(s.xb2, s.xb, &w.wo[l])
	for i := range x {
		x[i] += s.xb2[i]
	}
}

// rope rotates adjacent pairs of every head of q, and of k (which has fewer heads under
// grouped-query attention), by the tables of the current position.
func (t *Transformer) rope(k []float32) {
	c, s := &t.config, &t.state
	dim, hs, kvDim := c.Dim, c.headSize(), c.kvDim()
	for i := 0; i < dim; i += 2 {
		fcr, fci := s.ropeCos[(i%hs)/2], s.ropeSin[(i%hs)/2]
		q0, q1 := s.q[i], s.q[i+1]
		s.q[i], s.q[i+1] = q0*fcr-q1*fci, q0*fci+q1*fcr
		if i < kvDim {
			k0, k1 := k[i], k[i+1]
			k[i], k[i+1] = k0*fcr-k1*fci, k0*fci+k1*fcr
		}
	}
}

// attentionHeads writes into xb every head's attention over positions 0..pos of the layer
// whose cache starts at loff. Heads are split across workers; each worker owns one score row,
// allocated the first time it needs one.
func (t *Transformer) attentionHeads(loff, pos int) {
	c, s := &t.config, &t.state
	hs, kvDim := c.headSize(), c.kvDim()
	kvMul := c.NHeads / c.NKVHeads // query heads per KV head
	scale := float32(1 / math.Sqrt(float64(hs)))
	keys := s.keyCache[loff : loff+(pos+1)*kvDim]     // (pos + 1, kv_dim)
	values := s.valueCache[loff : loff+(pos+1)*kvDim] // (pos + 1, kv_dim)
	t.pool.run(c.NHeads, 1, func(worker, lo, hi int) {
		if s.att[worker] == nil {
			s.att[worker] = make([]float32, s.kvRows)
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
}

// feedForward is layer l's SwiGLU branch, w2(silu(w1(x)) * w3(x)), added to x.
func (t *Transformer) feedForward(l int) {
	c, w, s := &t.config, &t.weights, &t.state
	x := s.x
	rmsnorm(s.xb, x, w.rmsFFN[l], c.NormEps)
	t.matmulShared(s.xb, [][]float32{s.hb, s.hb2}, []*Matrix{&w.w1[l], &w.w3[l]})
	for i, g := range s.hb {
		s.hb[i] = g / (1 + float32(math.Exp(float64(-g)))) * s.hb2[i]
	}
	t.matmul(s.xb, s.hb, &w.w2[l])
	for i := range x {
		x[i] += s.xb[i]
	}
}
