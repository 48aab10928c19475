// Package authlimit slows down key guessing: each client address has a budget of failed key checks
// that refills over time; once it is spent, the address is refused until it refills.
package authlimit

import (
	"net"
	"net/http"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/hopgate/hopgate/internal/gateway/jsonapi"
)

// maxTracked bounds the table; addresses whose budget is full again are dropped first.
const maxTracked = 10000

// Limiter tracks failures per client address. A nil *Limiter limits nothing.
type Limiter struct {
	perMinute int
	mu        sync.Mutex
	byAddr    map[string]*rate.Limiter
}

// New allows perMinute failures per address per minute (as a burst, refilled evenly); 0 returns nil.
func New(perMinute int) *Limiter {
	if perMinute <= 0 {
		return nil
	}
	return &Limiter{perMinute: perMinute, byAddr: make(map[string]*rate.Limiter)}
}

// Blocked reports whether addr has no failures left to spend.
func (l *Limiter) Blocked(addr string) bool {
	if l == nil {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	lim, ok := l.byAddr[host(addr)]
	return ok && lim.Tokens() < 1
}

// Fail spends one failure of addr's budget.
func (l *Limiter) Fail(addr string) {
	if l == nil {
		return
	}
	key := host(addr)
	l.mu.Lock()
	defer l.mu.Unlock()
	lim, ok := l.byAddr[key]
	if !ok {
		if len(l.byAddr) >= maxTracked {
			l.sweep()
		}
		lim = rate.NewLimiter(rate.Every(time.Minute/time.Duration(l.perMinute)), l.perMinute)
		l.byAddr[key] = lim
	}
	lim.Allow()
}

// sweep forgets addresses whose budget has refilled; if none has, it forgets everyone, which only
// gives attackers a fresh budget, never blocks an honest client. Called with mu held.
func (l *Limiter) sweep() {
	for k, lim := range l.byAddr {
		if lim.Tokens() >= float64(l.perMinute) {
			delete(l.byAddr, k)
		}
	}
	if len(l.byAddr) >= maxTracked {
		clear(l.byAddr)
	}
}

// Middleware answers 429 to addresses that spent their budget, and counts every 401 the wrapped
// handler gives as a failure of the request's address.
func (l *Limiter) Middleware(next http.Handler) http.Handler {
	if l == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if l.Blocked(r.RemoteAddr) {
			w.Header().Set("Retry-After", "60")
			jsonapi.Write(w, http.StatusTooManyRequests, map[string]any{"success": false, "error": "too many failed attempts; retry later"})
			return
		}
		sw := &statusRecorder{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		if sw.code == http.StatusUnauthorized {
			l.Fail(r.RemoteAddr)
		}
	})
}

type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.code == 0 {
		s.code = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// host strips the port: the budget is per address, not per connection.
func host(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}
