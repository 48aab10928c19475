package handoff

import (
	"errors"
	"net"
	"testing"
	"time"
)

func TestPutAccept(t *testing.T) {
	addr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 443}
	l := New(addr)
	if l.Addr() != addr {
		t.Fatalf("Addr = %v", l.Addr())
	}
	a, b := net.Pipe()
	defer b.Close()
	go l.Put(a)
	got, err := l.Accept()
	if err != nil || got != a {
		t.Fatalf("Accept = %v, %v; want the connection given to Put", got, err)
	}
	a.Close()
}

// After Close, Accept fails with net.ErrClosed (what net/http and grpc treat as the end of Serve) and
// a late Put closes its connection instead of blocking forever.
func TestClose(t *testing.T) {
	l := New(nil)
	if l.Addr() == nil || l.Addr().String() == "" {
		t.Fatalf("Addr of New(nil) = %v, want a placeholder", l.Addr())
	}
	_ = l.Close()
	_ = l.Close() // twice is fine
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close = %v", err)
	}
	a, b := net.Pipe()
	done := make(chan struct{})
	go func() { l.Put(a); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Put blocked on a closed listener")
	}
	_ = b.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := b.Read(make([]byte, 1)); err == nil {
		t.Fatal("the handed connection was not closed")
	}
}
