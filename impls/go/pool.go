// The thread pool: workers started once, which share every matmul and the attention heads of
// a token by claiming chunks of a job from a shared counter.

package main

import (
	"runtime"
	"runtime/debug"
	"sync/atomic"
	"time"
)

// Pool runs a job over [0, n) in chunks that the workers claim from a shared counter, so a
// worker that the OS delays (the CPUs are shared) leaves its rows to the others instead of
// holding everyone up. Worker 0 is the calling goroutine: -j 1 starts nothing and runs
// everything inline.
//
// A dispatch bumps a generation counter. Each side that waits (a helper for the next job, the
// caller for the helpers to finish) polls for up to spinFor and only then parks on a channel:
// the gaps between the matmuls of a token are far shorter than a park and wake-up through the
// Go scheduler and the OS, and the bound means a helper whose partner has been descheduled on a
// busy machine gives its CPU back within a fraction of a time slice.
//
// Parking: the waiter stores the generation it waits for in its parked word, checks its
// condition once more, then sleeps on its channel; whoever fulfils the condition swaps that
// generation for 0 and, only if the swap succeeded, sends the one wake-up. So a wake-up is never
// lost, never left over, and never taken by a later wait (a late waker's generation is stale).
type Pool struct {
	workers int
	job     job           // the current job, written by the caller before it bumps gen
	gen     atomic.Uint64 // one bump per dispatch (and one by close)
	pending atomic.Int64  // helpers still inside the current job
	quit    bool          // set by close before its bump: the helpers return

	parked       []atomic.Uint64 // helper w sleeps on wake[w] until gen reaches this; 0: awake
	wake         []chan struct{}
	callerParked atomic.Uint64 // the caller sleeps on done until this job is finished; 0: awake
	done         chan struct{}
}

type job struct {
	fn       func(worker, lo, hi int)
	n, grain int64
	next     atomic.Int64 // the first unclaimed index
}

// spinFor is how long a waiting side polls before it parks: longer than the serial work
// between two dispatches of a token (a norm, RoPE, a residual add), much shorter than the OS's
// time slice.
const spinFor = 50 * time.Microsecond

// spinUntil polls cond for up to spinFor and reports whether it became true. Every 64 polls it
// yields its P (more goroutines than GOMAXPROCS, as in the tests, or the GC's workers, then get
// to run instead of waiting for a preemption) and reads the clock.
func spinUntil(cond func() bool) bool {
	deadline := time.Now().Add(spinFor)
	for {
		for i := 0; i < 64; i++ {
			if cond() {
				return true
			}
		}
		runtime.Gosched()
		if time.Now().After(deadline) {
			return cond()
		}
	}
}

func newPool(workers int) *Pool {
	p := &Pool{workers: workers, parked: make([]atomic.Uint64, workers),
		wake: make([]chan struct{}, workers), done: make(chan struct{}, 1)}
	for w := 1; w < workers; w++ {
		p.wake[w] = make(chan struct{}, 1)
		go p.loop(w)
	}
	return p
}

func (p *Pool) loop(worker int) {
	defer crashHandler()
	debug.SetPanicOnFault(true)
	var g uint64 // not gen.Load(): the first job may be out before this goroutine runs
	for {
		// the caller cannot bump gen again before this helper leaves job g: g+1 is exact
		g++
		p.waitFor(worker, g)
		if p.quit {
			return
		}
		p.job.work(worker)
		if p.pending.Add(-1) == 0 && p.callerParked.CompareAndSwap(g, 0) {
			p.done <- struct{}{}
		}
	}
}

// waitFor returns once generation g is out.
func (p *Pool) waitFor(worker int, g uint64) {
	out := func() bool { return p.gen.Load() >= g }
	if spinUntil(out) {
		return
	}
	p.parked[worker].Store(g)
	if out() && p.parked[worker].CompareAndSwap(g, 0) {
		return
	}
	<-p.wake[worker]
}

// publish makes the job (or quit) visible to the helpers, wakes those that sleep, and returns
// the job's generation.
func (p *Pool) publish() uint64 {
	g := p.gen.Add(1)
	for w := 1; w < p.workers; w++ {
		if p.parked[w].CompareAndSwap(g, 0) {
			p.wake[w] <- struct{}{}
		}
	}
	return g
}

func (j *job) work(worker int) {
	for {
		lo := j.next.Add(j.grain) - j.grain
		if lo >= j.n {
			return
		}
		hi := lo + j.grain
		if hi > j.n {
			hi = j.n
		}
		j.fn(worker, int(lo), int(hi))
	}
}

// run calls fn(worker, lo, hi) over [0, n), in about four chunks per worker, each a multiple
// of align long.
func (p *Pool) run(n, align int, fn func(worker, lo, hi int)) {
	if p.workers == 1 {
		fn(0, 0, n)
		return
	}
	grain := (n + 4*p.workers - 1) / (4 * p.workers)
	grain = (grain + align - 1) / align * align
	p.job.fn, p.job.n, p.job.grain = fn, int64(n), int64(grain)
	p.job.next.Store(0)
	p.pending.Store(int64(p.workers - 1))
	g := p.publish()
	p.job.work(0)

	finished := func() bool { return p.pending.Load() == 0 }
	if spinUntil(finished) {
		return
	}
	p.callerParked.Store(g)
	if finished() && p.callerParked.CompareAndSwap(g, 0) {
		return
	}
	<-p.done
}

func (p *Pool) close() {
	if p.workers > 1 {
		p.quit = true
		p.publish()
	}
}
