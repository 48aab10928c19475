package authlimit

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestLimiterBudget(t *testing.T) {
	l := New(3)
	a, b := "192.0.2.1:1000", "192.0.2.2:2000"
	for i := range 3 {
		if l.Blocked(a) {
			t.Fatalf("blocked after %d failures, budget 3", i)
		}
		l.Fail(a)
	}
	if !l.Blocked("192.0.2.1:9999") {
		t.Fatal("not blocked after spending the budget (other port, same address)")
	}
	if l.Blocked(b) {
		t.Fatal("another address is blocked")
	}
}

func TestNilLimiterLimitsNothing(t *testing.T) {
	var l *Limiter = New(0)
	l.Fail("x")
	if l.Blocked("x") {
		t.Fatal("nil limiter blocked")
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})
	if got := l.Middleware(h); fmt.Sprintf("%p", got) != fmt.Sprintf("%p", h) {
		t.Fatal("nil limiter wrapped the handler")
	}
}

func TestMiddleware(t *testing.T) {
	l := New(2)
	h := l.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer good" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	do := func(auth string) int {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.RemoteAddr = "198.51.100.7:4242"
		r.Header.Set("Authorization", auth)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w.Code
	}
	steps := []struct {
		auth string
		want int
	}{
		{"Bearer good", 200}, // successes cost nothing
		{"Bearer bad", 401},
		{"Bearer bad", 401},
		{"Bearer bad", 429},
		{"Bearer good", 429}, // blocked even with the right key until the budget refills
	}
	for i, s := range steps {
		if got := do(s.auth); got != s.want {
			t.Fatalf("step %d (%s): %d, want %d", i, s.auth, got, s.want)
		}
	}
	// The refusal is one of the gateway's JSON answers: not cached, not sniffed, with a retry time.
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.RemoteAddr = "198.51.100.7:4242"
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	var body struct {
		Success bool   `json:"success"`
		Error   string `json:"error"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || body.Success || body.Error == "" {
		t.Errorf("429 body %q (%v), want {success:false, error:…}", w.Body.String(), err)
	}
	for k, want := range map[string]string{"Retry-After": "60", "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Content-Type": "application/json"} {
		if got := w.Header().Get(k); got != want {
			t.Errorf("429 %s = %q, want %q", k, got, want)
		}
	}
}

func TestSweepBoundsTheTable(t *testing.T) {
	l := New(1)
	for i := range maxTracked + 10 {
		l.Fail(fmt.Sprintf("10.%d.%d.%d:1", i>>16&255, i>>8&255, i&255))
	}
	if n := len(l.byAddr); n > maxTracked {
		t.Fatalf("table holds %d addresses, bound %d", n, maxTracked)
	}
}
