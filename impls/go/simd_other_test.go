//go:build !amd64

package main

func setSIMD(on bool) {}
