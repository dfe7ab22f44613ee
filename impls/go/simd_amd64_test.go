// The kernel switch the tests flip on amd64, to run both kernel sets.

package main

func setSIMD(on bool) { simdKernels = on }

func setAVX512(on bool) { hasAVX512 = on }
