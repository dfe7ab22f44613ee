// Errors: every failure ends as one "error:" line on stderr and the contract's exit code; a
// fault or a bug that panics ends the same way, through crashHandler.

package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
)

const (
	exitRuntime = 1 // cannot allocate, cannot write -o
	exitUsage   = 2 // bad command line
	exitBadFile = 3 // missing, malformed or unsupported model or tokenizer file
)

type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

func usageError(format string, args ...any) error {
	return &exitError{exitUsage, fmt.Sprintf(format, args...)}
}

func fileError(path, format string, args ...any) error {
	return &exitError{exitBadFile, oneLine(path) + ": " + fmt.Sprintf(format, args...)}
}

// oneLine keeps a user-supplied string from splitting the error line.
func oneLine(s string) string {
	if strings.ContainsAny(s, "\n\r") {
		q := strconv.Quote(s)
		return q[1 : len(q)-1]
	}
	return s
}

func writeError(path string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	return &exitError{exitRuntime, fmt.Sprintf("%s: cannot write: %v", oneLine(path), err)}
}

// crashHandler turns a fault (a mapped file truncated under us) or a bug into one error line.
func crashHandler() {
	if r := recover(); r != nil {
		fmt.Fprintf(os.Stderr, "error: internal failure: %v\n", r)
		os.Exit(exitRuntime)
	}
}
