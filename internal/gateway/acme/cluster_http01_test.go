package acme

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-acme/lego/v4/challenge/http01"
)

// statusRecorder keeps the status a handler wrote.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// TestClusterHTTP01AnsweredByOther: gateway A orders with HTTP-01 only, and the CA's HTTP-01
// request reaches only gateway B, which never ordered: B answers the token from the shared
// storage, the certificate is issued in one order, and B then serves it without ordering.
//
// lego prefers TLS-ALPN-01 when both are offered (TestClusterOneOrderPerName covers that one), so
// A's "both challenges" client is replaced by its HTTP-01-only one, and the TLS-ALPN-01 port
// refuses every handshake: a fall back to TLS-ALPN-01 fails the test.
func TestClusterHTTP01AnsweredByOther(t *testing.T) {
	t.Parallel()
	dsn := migratedDSN(t)

	var (
		mu       sync.Mutex
		answered []string // token of each HTTP-01 request B answered 200
		other    []string // every other request to the HTTP port
		b        *member
	)
	tlsConns := atomic.Int64{}
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	httpSrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-ready
		rec := &statusRecorder{ResponseWriter: w}
		b.m.HTTPHandler(nil).ServeHTTP(rec, r)
		token, isChallenge := strings.CutPrefix(r.URL.Path, http01.ChallengePath(""))
		mu.Lock()
		defer mu.Unlock()
		if isChallenge && rec.status == http.StatusOK {
			answered = append(answered, token)
		} else {
			other = append(other, r.Method+" "+r.URL.Path+" "+http.StatusText(rec.status))
		}
	})}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = httpSrv.Serve(hl) }()
	go func() {
		defer wg.Done()
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			tlsConns.Add(1)
			_ = c.Close()
		}
	}()
	t.Cleanup(func() {
		_ = httpSrv.Close()
		_ = tl.Close()
		wg.Wait()
	})

	pp, p := startClusterPebble(t, &cluster{httpAddr: hl.Addr().String(), tlsAddr: tl.Addr().String()}, 0)
	a := newMember(t, p, dsn, "gwA", nil)
	b = newMember(t, p, dsn, "gwB", nil)
	close(ready)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := a.m.legoClients(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cl.both = cl.http01 // before Run: nothing reads it yet

	b.run(t)
	const name = "http01.cluster.test"
	a.m.Manage(context.Background(), name)
	a.run(t)
	waitState(t, a.m, name, StateValid, 45*time.Second)

	mu.Lock()
	gotAnswered, gotOther := append([]string(nil), answered...), append([]string(nil), other...)
	mu.Unlock()
	if len(gotAnswered) == 0 {
		t.Fatalf("gateway B answered no HTTP-01 request; other requests: %v", gotOther)
	}
	if len(gotOther) != 0 {
		t.Errorf("requests B did not answer: %v", gotOther)
	}
	if n := tlsConns.Load(); n != 0 {
		t.Errorf("%d connections to the TLS-ALPN-01 port, want none (HTTP-01 only)", n)
	}
	if n := pp.Orders(); n != 1 {
		t.Errorf("Pebble got %d orders, want 1", n)
	}
	if na, nb := a.ct.orders.Load(), b.ct.orders.Load(); na != 1 || nb != 0 {
		t.Errorf("newOrder POSTed %d times by A and %d by B, want 1 and 0", na, nb)
	}
	b.m.chMu.Lock()
	inMemory := len(b.m.httpTokens)
	b.m.chMu.Unlock()
	if inMemory != 0 {
		t.Errorf("B holds %d HTTP-01 tokens of its own; it should have answered from the storage", inMemory)
	}
	// A's clean-up removes the published token, so that the table keeps no stale answer.
	if _, err := b.st.Load(ctx, httpTokenKey(gotAnswered[0])); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("published token after the order: %v, want not found", err)
	}

	b.m.Manage(context.Background(), name)
	waitState(t, b.m, name, StateValid, 15*time.Second)
	sameSerial(t, []*member{a, b}, name, p.root)
	if n := pp.Orders(); n != 1 {
		t.Errorf("Pebble got %d orders after B took the name, want still 1", n)
	}
}
