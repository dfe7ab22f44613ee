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
