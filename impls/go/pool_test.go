// The thread pool: every index of every job run once, no lost wake-up.

package main

import (
	"testing"
	"time"
)

// TestPoolManyJobs hands out many tiny jobs back to back, the pattern of a forward pass, and
// checks that every index is covered exactly once and that no wake-up is lost (a hang).
func TestPoolManyJobs(t *testing.T) {
	for _, workers := range []int{2, 3, 5} {
		p := newPool(workers)
		counts := make([]int32, 64)
		for iter := 0; iter < 20000; iter++ {
			n := 1 + iter%64
			p.run(n, 1+iter%4, func(_, lo, hi int) {
				for i := lo; i < hi; i++ {
					counts[i]++
				}
			})
			if iter%1000 == 999 {
				time.Sleep(time.Millisecond) // let the helpers park
			}
		}
		p.close()
		var total int32
		for _, c := range counts {
			total += c
		}
		want := int32(0)
		for iter := 0; iter < 20000; iter++ {
			want += int32(1 + iter%64)
		}
		if total != want {
			t.Fatalf("workers %d: %d indices run, want %d", workers, total, want)
		}
	}
}
