//go:build !amd64

// Off amd64 there is only one kernel set: the switch does nothing.

package main

func setSIMD(on bool) {}

func setAVX512(on bool) {}
