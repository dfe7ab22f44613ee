package main

func setSIMD(on bool) { simdKernels = on }
