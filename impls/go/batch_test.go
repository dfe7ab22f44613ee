// The batched forward pass against the one-position one on stories260K (F32 and Q8_0), at
// several batch sizes and worker counts.

package main

import (
	"math"
	"testing"
)

// onePositionLogits runs ids one position at a time, as run.c does, and keeps every row.
func onePositionLogits(t *testing.T, tr *Transformer, ids []int) [][]float32 {
	prepareRun(t, tr, 1, 1, false)
	defer func() { tr.pool.close(); tr.batch.free() }()
	var rows [][]float32
	for pos, id := range ids {
		rows = append(rows, append([]float32(nil), tr.forward(id, pos)...))
	}
	return rows
}

func checkBatchedLogits(t *testing.T, tr *Transformer, name string) {
	c := &tr.config
	ids := []int{1}
	for i := 1; i < 40; i++ {
		ids = append(ids, (7*i+300)%c.VocabSize)
	}
	want := onePositionLogits(t, tr, ids)
	for _, batch := range []int{1, 7, 33, len(ids)} {
		for _, workers := range []int{1, 3} {
			prepareRun(t, tr, workers, batch, true)
			for b0 := 0; b0 < len(ids); b0 += tr.batch.rows {
				b1 := minInt(b0+tr.batch.rows, len(ids))
				got := tr.forwardBatch(ids[b0:b1], b0, logitsAll)
				for r := b0; r < b1; r++ {
					row := got[(r-b0)*c.VocabSize : (r-b0+1)*c.VocabSize]
					var amax, diff float64
					for i, v := range want[r] {
						amax = math.Max(amax, math.Abs(float64(v)))
						diff = math.Max(diff, math.Abs(float64(v-row[i])))
					}
					// the contract's F32 tolerance; Q8_0 runs the same quantization either way, so
					// only a rounding near a tie could part them, and stories260K's ids here have none
					if diff > 1e-4*(1+amax) {
						t.Fatalf("%s -b %d -j %d: position %d differs by %g (max %g)", name, batch, workers, r, diff, amax)
					}
				}
			}
			// generate mode's last row only
			got := tr.forwardBatch(ids[:minInt(len(ids), tr.batch.rows)], 0, logitsLast)
			if last := minInt(len(ids), tr.batch.rows) - 1; math.Abs(float64(got[0]-want[last][0])) > 1e-4*(1+math.Abs(float64(want[last][0]))) {
				t.Fatalf("%s -b %d -j %d: the last row's logits differ", name, batch, workers)
			}
			tr.pool.close()
			tr.batch.free()
		}
	}
}

func TestBatchedLogitsStories260K(t *testing.T) {
	tr, err := readCheckpoint(modelFile(t, "stories260K.bin"))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.unmap()
	withKernels(t, func(t *testing.T, kernels string) {
		checkBatchedLogits(t, tr, kernels+" f32")
	})
	quantizeModel(t, tr)
	withKernels(t, func(t *testing.T, kernels string) {
		checkBatchedLogits(t, tr, kernels+" q8_0")
	})
}
