package pgtest

import (
	"io"
	"net"
	"net/url"
	"sync"
	"testing"
)

// Outage returns dsn rewritten to reach the server through a TCP relay on 127.0.0.1, and a function
// that takes the relay down: open connections are cut and new ones refused, as when the database
// host dies. The relay is stopped at the end of the test in any case.
func Outage(t testing.TB, dsn string) (string, func()) {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatalf("pgtest: parse dsn: %v", err)
	}
	target := u.Host
	if u.Port() == "" {
		target = net.JoinHostPort(u.Hostname(), "5432")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("pgtest: listen: %v", err)
	}
	r := &relay{ln: ln, target: target, conns: make(map[net.Conn]struct{})}
	r.wg.Add(1)
	go r.serve()
	t.Cleanup(r.stop)
	u.Host = ln.Addr().String()
	return u.String(), r.stop
}

type relay struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
	once   sync.Once
}

func (r *relay) serve() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", r.target)
		if err != nil {
			c.Close()
			continue
		}
		if !r.track(c, up) {
			return
		}
		r.wg.Add(2)
		go r.pipe(c, up)
		go r.pipe(up, c)
	}
}

func (r *relay) track(cs ...net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		for _, c := range cs {
			c.Close()
		}
		return false
	}
	for _, c := range cs {
		r.conns[c] = struct{}{}
	}
	return true
}

func (r *relay) pipe(dst, src net.Conn) {
	defer r.wg.Done()
	// Copy ends when either side fails or closes; closing both ends the other direction too.
	_, _ = io.Copy(dst, src)
	dst.Close()
	src.Close()
}

func (r *relay) stop() {
	r.once.Do(func() {
		r.mu.Lock()
		r.closed = true
		r.ln.Close()
		for c := range r.conns {
			c.Close()
		}
		r.mu.Unlock()
		r.wg.Wait()
	})
}
