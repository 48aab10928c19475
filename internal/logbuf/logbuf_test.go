package logbuf

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// countingWriter records each write.
type countingWriter struct {
	mu     sync.Mutex
	writes int
	out    bytes.Buffer
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writes++
	return c.out.Write(p)
}

func (c *countingWriter) snapshot() (int, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writes, c.out.String()
}

func TestQuietLinesAreWrittenAtOnce(t *testing.T) {
	cw := &countingWriter{}
	w := New(cw)
	for i := range 3 {
		fmt.Fprintf(w, "line %d\n", i)
		if n, out := cw.snapshot(); n != i+1 || !strings.HasSuffix(out, fmt.Sprintf("line %d\n", i)) {
			t.Fatalf("after line %d: %d writes, %q", i, n, out)
		}
		time.Sleep(2 * Linger)
	}
}

func TestFastLinesAreBatchedInOrder(t *testing.T) {
	cw := &countingWriter{}
	w := New(cw)
	const lines = 10000
	var want strings.Builder
	start := time.Now()
	for i := range lines {
		fmt.Fprintf(w, "line %d\n", i)
		fmt.Fprintf(&want, "line %d\n", i)
	}
	elapsed := time.Since(start)
	// Everything arrives within Linger of the last line, without a Flush.
	deadline := time.Now().Add(time.Second)
	for {
		if _, out := cw.snapshot(); out == want.String() {
			break
		}
		if time.Now().After(deadline) {
			_, out := cw.snapshot()
			t.Fatalf("after 1 s, %d of %d bytes written", len(out), want.Len())
		}
		time.Sleep(time.Millisecond)
	}
	n, _ := cw.snapshot()
	if limit := 2 + int(elapsed/Linger)*2 + lines*len("line 0000\n")/maxBuffered; n > limit {
		t.Fatalf("%d lines in %v took %d writes, want at most %d", lines, elapsed, n, limit)
	}
	t.Logf("%d lines in %v: %d writes", lines, elapsed, n)
}

func TestFlushAndConcurrency(t *testing.T) {
	cw := &countingWriter{}
	w := New(cw)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 500 {
				fmt.Fprintf(w, "g%d %d\n", g, i)
			}
		})
	}
	wg.Wait()
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	_, out := cw.snapshot()
	if got := strings.Count(out, "\n"); got != 8*500 {
		t.Fatalf("%d lines after Flush, want %d", got, 8*500)
	}
	for _, l := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		if len(strings.Fields(l)) != 2 {
			t.Fatalf("a line was torn: %q", l)
		}
	}
}
