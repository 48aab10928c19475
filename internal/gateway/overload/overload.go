// Package overload tells the gateway when to shed new requests because memory runs out.
//
// With GOMEMLIMIT set, the Go runtime collects harder as the heap nears the limit but does not refuse
// work: a sustained overload (many slow visitors each holding stream buffers) would end in a GC death
// spiral or the OOM killer, taking every tenant down. The watcher samples runtime/metrics a few times
// a second and reports overload when the memory the runtime holds passes a high-water mark of the
// limit, and clears it only below a lower mark, so the gateway does not flap. Requests already
// running are left alone: shedding new ones lets them finish and give their memory back.
package overload

import (
	"context"
	"math"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync/atomic"
	"time"
)

// Marks as fractions of the memory limit.
const (
	HighWater = 0.90
	LowWater  = 0.80
)

const (
	sampleEvery = 50 * time.Millisecond
	// collectEvery: while overloaded, a collection is forced this often. A shedding gateway allocates
	// little, so the runtime would not collect on its own and dead buffers would keep it shedding
	// until the 2-minute forced GC.
	collectEvery = time.Second
	// What GOMEMLIMIT counts is all memory Go maps minus what it returned to the OS. Free heap
	// spans are left out too: after a burst they stay mapped until the scavenger returns them,
	// and counting them would keep shedding long after the memory is reusable.
	metricTotal    = "/memory/classes/total:bytes"
	metricReleased = "/memory/classes/heap/released:bytes"
	metricFree     = "/memory/classes/heap/free:bytes"
)

// Watcher reports whether the process is over its high-water mark.
type Watcher struct {
	limit   int64
	over    atomic.Bool
	samples []metrics.Sample
	// lastUsed is the last sample's figure (tests read it).
	lastUsed int64
	// OnChange, if set, is called from the sampling goroutine when the state flips.
	OnChange func(over bool, used, limit int64)
}

// New returns a watcher for the runtime's memory limit (GOMEMLIMIT, or debug.SetMemoryLimit). With no
// limit set it returns nil: a nil *Watcher is never overloaded.
func New() *Watcher {
	limit := debug.SetMemoryLimit(-1)
	if limit <= 0 || limit == math.MaxInt64 {
		return nil
	}
	return &Watcher{limit: limit, samples: newSamples()}
}

func newSamples() []metrics.Sample {
	return []metrics.Sample{{Name: metricTotal}, {Name: metricReleased}, {Name: metricFree}}
}

// Limit is the memory limit in bytes.
func (w *Watcher) Limit() int64 {
	if w == nil {
		return 0
	}
	return w.limit
}

// Overloaded reports the last sample's verdict. Safe on a nil *Watcher.
func (w *Watcher) Overloaded() bool { return w != nil && w.over.Load() }

// Run samples until ctx ends.
func (w *Watcher) Run(ctx context.Context) {
	if w == nil {
		return
	}
	t := time.NewTicker(sampleEvery)
	defer t.Stop()
	var lastGC time.Time
	for {
		if w.Overloaded() && time.Since(lastGC) >= collectEvery {
			runtime.GC()
			lastGC = time.Now()
		}
		w.sample()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (w *Watcher) sample() {
	metrics.Read(w.samples)
	used := int64(w.samples[0].Value.Uint64() - w.samples[1].Value.Uint64() - w.samples[2].Value.Uint64())
	w.lastUsed = used
	was := w.over.Load()
	now := was
	switch {
	case !was && float64(used) >= HighWater*float64(w.limit):
		now = true
	case was && float64(used) < LowWater*float64(w.limit):
		now = false
	}
	if now != was {
		w.over.Store(now)
		if w.OnChange != nil {
			w.OnChange(now, used, w.limit)
		}
	}
}
