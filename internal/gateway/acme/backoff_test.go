package acme

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeCA is an ACME directory whose newAccount always fails with status (and Retry-After if set).
type fakeCA struct {
	srv      *httptest.Server
	attempts atomic.Int64 // newAccount POSTs
}

func startFakeCA(t *testing.T, status int, problemType, retryAfter string) *fakeCA {
	t.Helper()
	ca := &fakeCA{}
	mux := http.NewServeMux()
	mux.HandleFunc("/dir", func(w http.ResponseWriter, r *http.Request) {
		base := "https://" + r.Host
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"newNonce":%q,"newAccount":%q,"newOrder":%q,"revokeCert":%q,"keyChange":%q}`,
			base+"/nonce", base+"/account", base+"/order", base+"/revoke", base+"/key-change")
	})
	mux.HandleFunc("/nonce", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Replay-Nonce", fmt.Sprintf("nonce-%d", time.Now().UnixNano()))
		w.WriteHeader(http.StatusOK)
	})
	mux.HandleFunc("/account", func(w http.ResponseWriter, r *http.Request) {
		ca.attempts.Add(1)
		w.Header().Set("Replay-Nonce", fmt.Sprintf("nonce-%d", time.Now().UnixNano()))
		if retryAfter != "" {
			w.Header().Set("Retry-After", retryAfter)
		}
		w.Header().Set("Content-Type", "application/problem+json")
		w.WriteHeader(status)
		fmt.Fprintf(w, `{"type":%q,"detail":"fake CA says no","status":%d}`, problemType, status)
	})
	ca.srv = httptest.NewTLSServer(mux)
	t.Cleanup(ca.srv.Close)
	return ca
}

// TestBackoffInRunLoop: a CA answering 429 with Retry-After is tried once, not in a loop, and the
// name waits at least Retry-After.
func TestBackoffInRunLoop(t *testing.T) {
	t.Parallel()
	ca := startFakeCA(t, http.StatusTooManyRequests, "urn:ietf:params:acme:error:rateLimited", "1200")
	var orderResults sync.Map
	m, err := New(Options{
		CADir: ca.srv.URL + "/dir", CacheDir: t.TempDir(), Logger: testLogger(t), HTTPClient: ca.srv.Client(),
		OnOrder: func(name string, err error) { orderResults.Store(name, err) },
	})
	if err != nil {
		t.Fatal(err)
	}
	m.Manage(context.Background(), "limited.example.test")
	run(t, m)
	st := waitState(t, m, "limited.example.test", StateFailed, 10*time.Second)
	if !strings.Contains(st.LastError, "rateLimited") || !strings.Contains(st.LastError, "fake CA says no") {
		t.Errorf("last error %q does not carry the CA's error", st.LastError)
	}
	if v, ok := orderResults.Load("limited.example.test"); !ok || v == nil {
		t.Error("OnOrder not called with the failure")
	}
	time.Sleep(1500 * time.Millisecond)
	if n := ca.attempts.Load(); n != 1 {
		t.Errorf("%d attempts in 1.5s, want 1", n)
	}
	m.mu.RLock()
	wait := time.Until(m.entries["limited.example.test"].next)
	m.mu.RUnlock()
	if wait < 19*time.Minute || wait > 21*time.Minute {
		t.Errorf("next attempt in %v, want Retry-After's 20m", wait)
	}
}

// TestBackoffSchedule walks consecutive failures with a fake clock: 1m, 10m, 100m, then daily,
// for a CA that errs and for one that cannot be reached.
func TestBackoffSchedule(t *testing.T) {
	t.Parallel()
	ca := startFakeCA(t, http.StatusServiceUnavailable, "urn:ietf:params:acme:error:serverInternal", "")
	unreachable := fmt.Sprintf("https://127.0.0.1:%d/dir", freePort(t))
	for _, tc := range []struct{ name, dir string }{
		{"CA error", ca.srv.URL + "/dir"},
		{"CA unreachable", unreachable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			clock := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
			now := func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
			m, err := New(Options{CADir: tc.dir, CacheDir: t.TempDir(), Logger: testLogger(t), Now: now, HTTPClient: ca.srv.Client()})
			if err != nil {
				t.Fatal(err)
			}
			defer m.stop()
			const name = "down.example.test"
			m.Manage(context.Background(), name)
			want := []time.Duration{time.Minute, 10 * time.Minute, 100 * time.Minute, 24 * time.Hour, 24 * time.Hour}
			for i, w := range want {
				if due := m.due(now()); len(due) != 1 {
					t.Fatalf("attempt %d: due %v", i+1, due)
				}
				m.maintain(context.Background(), name)
				m.mu.RLock()
				got := m.entries[name].next.Sub(now())
				m.mu.RUnlock()
				if got != w {
					t.Errorf("after failure %d: next in %v, want %v", i+1, got, w)
				}
				// Nothing is due until the wait has passed.
				mu.Lock()
				clock = clock.Add(got - time.Second)
				mu.Unlock()
				if due := m.due(now()); len(due) != 0 {
					t.Fatalf("due %v before the backoff ended", due)
				}
				mu.Lock()
				clock = clock.Add(time.Second)
				mu.Unlock()
			}
			if st := m.Status(name); st.State != StateFailed || st.LastError == "" {
				t.Errorf("status %+v", st)
			}
			if tc.dir == ca.srv.URL+"/dir" && ca.attempts.Load() != int64(len(want)) {
				t.Errorf("%d requests to the CA for %d attempts", ca.attempts.Load(), len(want))
			}
		})
	}
}
