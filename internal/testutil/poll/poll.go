// Package poll waits, in tests, for a condition another goroutine or process makes true.
package poll

import (
	"testing"
	"time"
)

// interval is short: the conditions are cheap, and a test should not wait longer than it must.
const interval = 2 * time.Millisecond

// Until polls cond until it holds, or fails the test (naming what it waited for) after d.
func Until(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(interval)
	}
}
