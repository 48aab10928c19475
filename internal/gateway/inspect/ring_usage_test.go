package inspect

import (
	"strings"
	"testing"
)

// TestRingAccounting: the ring's byte count follows what it holds, evictions included, so that
// MaxBytes really bounds a domain's memory.
func TestRingAccounting(t *testing.T) {
	r := newRing(3, 1<<20)
	big := &Entry{ID: "a", ResponseBody: []byte(strings.Repeat("x", 4096))}
	r.push(big)
	n, b := r.usage()
	if n != 1 || b != big.size() || b < 4096+entryOverhead {
		t.Fatalf("after one entry: %d entries, %d bytes, want 1 and %d", n, b, big.size())
	}
	for _, id := range []string{"b", "c", "d"} {
		r.push(&Entry{ID: id})
	}
	n, b = r.usage()
	if want := 3 * (&Entry{ID: "b"}).size(); n != 3 || b != want {
		t.Fatalf("after eviction: %d entries, %d bytes, want 3 and %d", n, b, want)
	}
	if _, ok := r.get("a"); ok {
		t.Error("the evicted entry is still found")
	}
}
