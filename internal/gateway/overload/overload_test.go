package overload

import (
	"runtime"
	"runtime/debug"
	"testing"
)

// TestWatcherFlips: holding memory past the high-water mark of the limit raises overload, giving it
// back clears it. The limit is set relative to what the test process uses now.
func TestWatcherFlips(t *testing.T) {
	if New() != nil {
		t.Skip("GOMEMLIMIT is set in the environment; this test sets its own limit")
	}
	runtime.GC()
	base := &Watcher{samples: newSamples()}
	base.limit = 1 << 62
	base.sample()
	used := base.lastUsed
	limit := used + 64<<20
	old := debug.SetMemoryLimit(limit)
	defer debug.SetMemoryLimit(old)

	w := New()
	if w == nil || w.Limit() != limit {
		t.Fatalf("New with a limit of %d: %+v", limit, w)
	}
	var flips []bool
	w.OnChange = func(over bool, _, _ int64) { flips = append(flips, over) }
	w.sample()
	if w.Overloaded() {
		t.Fatalf("overloaded at %d of %d bytes", w.lastUsed, limit)
	}
	// Hold 62 MiB: above 90 % of the limit.
	hold := make([][]byte, 62)
	for i := range hold {
		hold[i] = make([]byte, 1<<20)
		for j := 0; j < len(hold[i]); j += 4096 {
			hold[i][j] = 1
		}
	}
	w.sample()
	if !w.Overloaded() {
		t.Fatalf("not overloaded at %d of %d bytes", w.lastUsed, limit)
	}
	runtime.KeepAlive(hold)
	hold = nil
	runtime.GC()
	w.sample()
	if w.Overloaded() {
		t.Fatalf("still overloaded at %d of %d bytes after the memory was freed", w.lastUsed, limit)
	}
	if len(flips) != 2 || !flips[0] || flips[1] {
		t.Fatalf("OnChange saw %v, want [true false]", flips)
	}
}

func TestNilWatcher(t *testing.T) {
	var w *Watcher
	if w.Overloaded() || w.Limit() != 0 {
		t.Fatal("a nil watcher reports overload")
	}
	w.Run(t.Context()) // returns at once
}
