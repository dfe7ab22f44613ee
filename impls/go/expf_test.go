// expf against math.Exp over the float32 range it returns normal numbers for.

package main

import (
	"math"
	"math/rand"
	"testing"
)

func TestExpf(t *testing.T) {
	rng := rand.New(rand.NewSource(6))
	check := func(x float32) {
		want := math.Exp(float64(x))
		got := float64(expf(x))
		if want < 1.2e-38 { // the subnormal range: 0 or a subnormal will do
			if got > 1.2e-38 {
				t.Fatalf("expf(%v) = %v, want %v", x, got, want)
			}
			return
		}
		if want > math.MaxFloat32 {
			if !math.IsInf(got, 1) {
				t.Fatalf("expf(%v) = %v, want +Inf", x, got)
			}
			return
		}
		ulp := float64(math.Nextafter32(float32(want), float32(math.Inf(1))) - float32(want))
		if math.Abs(got-want) > 2*ulp {
			t.Fatalf("expf(%v) = %v, want %v (%g ulp)", x, got, want, math.Abs(got-want)/ulp)
		}
	}
	for i := 0; i < 2000000; i++ {
		check(float32(rng.Float64()*180 - 90))
		check(float32(rng.NormFloat64()))
	}
	for _, x := range []float32{0, -0.0, 1, -1, 88.72283, 88.7229, -87.33654, -87.3366, -100, 100, 1e-8, -1e-8, 0.34657359, -0.34657359} {
		check(x)
	}
	if v := expf(float32(math.NaN())); v == v {
		t.Errorf("expf(NaN) = %v", v)
	}
}

// TestSwigluAndSoftmax: the batched pass's SwiGLU and softmax, with each kernel set, against
// float64 definitions, at lengths around the 16-lane steps.
func TestSwigluAndSoftmax(t *testing.T) {
	rng := rand.New(rand.NewSource(7))
	withGemmKernels(t, func(t *testing.T, kernels string) {
		for _, n := range []int{1, 5, 15, 16, 17, 33, 100} {
			h, u := make([]float32, n), make([]float32, n)
			for i := range h {
				h[i] = float32(rng.NormFloat64() * 8)
				u[i] = float32(rng.NormFloat64())
			}
			h[0] = -200 // exp(200) overflows: silu is -0
			if n > 1 {
				h[1] = 200
			}
			want := make([]float64, n)
			for i, g := range h {
				want[i] = float64(g) / (1 + math.Exp(-float64(g))) * float64(u[i])
			}
			got := append([]float32(nil), h...)
			swiglu(got, u)
			for i := range got {
				if d := math.Abs(float64(got[i]) - want[i]); d > 4e-7*math.Abs(want[i])+1e-30 {
					t.Fatalf("%s n %d: swiglu[%d] = %v, want %v", kernels, n, i, got[i], want[i])
				}
			}
			x := append([]float32(nil), h...)
			x[0] = -1e30 // far below the others: exp underflows to 0
			var m float64 = -math.MaxFloat64
			for _, v := range x {
				m = math.Max(m, float64(v))
			}
			var sum float64
			for _, v := range x {
				sum += math.Exp(float64(v) - m)
			}
			got = append([]float32(nil), x...)
			softmaxExpf(got)
			for i, v := range x {
				w := math.Exp(float64(v)-m) / sum
				if d := math.Abs(float64(got[i]) - w); d > 1e-6*w+1e-12 {
					t.Fatalf("%s n %d: softmax[%d] = %v, want %v", kernels, n, i, got[i], w)
				}
			}
		}
		if y := []float32{float32(math.NaN()), 1}; true {
			swiglu(y, []float32{1, 1})
			if y[0] == y[0] {
				t.Errorf("%s: swiglu(NaN) = %v", kernels, y[0])
			}
		}
	})
}
