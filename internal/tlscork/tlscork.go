// Package tlscork makes one write on a TLS connection one write system call.
//
// crypto/tls writes every record (at most 16 KiB of plaintext) with its own Write on the connection
// underneath, so a 256 KiB flush from grpc or net/http costs 16 system calls. On the virtual machines
// a gateway usually runs on, a system call is a trip through the hypervisor and costs more than
// encrypting the record. Wrap puts a buffer between the two: while a Write on the TLS connection is
// in progress, the records it produces are gathered and handed to the kernel at once.
package tlscork

import (
	"context"
	"crypto/tls"
	"net"
	"sync"
	"sync/atomic"
)

// maxCorked bounds how much one Write gathers before it is sent anyway, which bounds the buffer a
// large Write borrows. It is a whole number of full records (16 KiB of plaintext plus at most 256
// bytes of framing each), so full records are never split between two system calls.
const maxCorked = 16 * (16<<10 + 256)

// Gathering buffers come in two sizes: most Writes (responses, flushes of small frames) fit the small
// one, and only bulk transfers borrow the large one.
const smallCorked = 32 << 10

var (
	smallPool = sync.Pool{New: func() any { b := make([]byte, 0, smallCorked); return &b }}
	largePool = sync.Pool{New: func() any { b := make([]byte, 0, maxCorked); return &b }}
)

func getBuf(hint int) *[]byte {
	if hint <= smallCorked {
		return smallPool.Get().(*[]byte)
	}
	return largePool.Get().(*[]byte)
}

func putBuf(b *[]byte) {
	*b = (*b)[:0]
	switch cap(*b) {
	case smallCorked:
		smallPool.Put(b)
	case maxCorked:
		largePool.Put(b)
	}
}

// Raw is the connection under a tls.Conn. Writes pass straight through unless a Conn above it is
// inside a Write.
type Raw struct {
	net.Conn
	// ready is set once the handshake is done. A Write that has to run the handshake first must not
	// be corked: the handshake's own messages would wait in the buffer for a reply that cannot come.
	ready atomic.Bool
	// mu serialises writes on the connection, so that gathered bytes and direct writes (an alert sent
	// from a read, say) keep their order.
	mu    sync.Mutex
	depth int
	hint  int     // the bytes the Writes in progress will produce, about
	buf   *[]byte // borrowed while a Write is in progress
	err   error   // the first failed write: everything after it would be out of order
}

// NewRaw wraps the connection a tls.Conn is about to be built on.
func NewRaw(c net.Conn) *Raw { return &Raw{Conn: c} }

// Write sends p, or gathers it while a Write above is in progress.
func (r *Raw) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return 0, r.err
	}
	if r.depth == 0 {
		return r.write(p)
	}
	if r.buf == nil {
		r.buf = getBuf(r.hint)
	}
	if len(*r.buf)+len(p) > cap(*r.buf) {
		if err := r.flushLocked(); err != nil {
			return 0, err
		}
		if len(p) >= smallCorked {
			return r.write(p)
		}
		r.buf = getBuf(r.hint)
	}
	*r.buf = append(*r.buf, p...)
	return len(p), nil
}

func (r *Raw) write(p []byte) (int, error) {
	n, err := r.Conn.Write(p)
	if err != nil {
		r.err = err
	}
	return n, err
}

func (r *Raw) cork(n int) {
	r.mu.Lock()
	r.depth++
	r.hint += n + n/64 + 256 // plus record framing
	r.mu.Unlock()
}

// uncork ends one Write above; the last one out sends what was gathered.
func (r *Raw) uncork() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.depth--
	if r.depth > 0 {
		return nil
	}
	r.hint = 0
	return r.flushLocked()
}

// flushLocked sends the gathered bytes and gives the buffer back, so an idle connection holds none.
func (r *Raw) flushLocked() error {
	if r.buf == nil {
		return nil
	}
	b := r.buf
	r.buf = nil
	if len(*b) > 0 && r.err == nil {
		_, _ = r.write(*b) // a failure is kept in r.err
	}
	putBuf(b)
	return r.err
}

// Conn is a tls.Conn whose every Write reaches the kernel in as few system calls as its size allows.
type Conn struct {
	*tls.Conn
	raw *Raw
}

// Server is tls.Server with corked writes.
func Server(c net.Conn, conf *tls.Config) *Conn {
	raw := NewRaw(c)
	return &Conn{Conn: tls.Server(raw, conf), raw: raw}
}

// HandshakeContext runs the handshake; writes are corked only after it succeeded.
func (c *Conn) HandshakeContext(ctx context.Context) error {
	if err := c.Conn.HandshakeContext(ctx); err != nil {
		return err
	}
	c.raw.ready.Store(true)
	return nil
}

// Handshake is HandshakeContext without a deadline of its own.
func (c *Conn) Handshake() error { return c.HandshakeContext(context.Background()) }

// Wrap corks tc, which must have been built on raw and have completed its handshake. It is for TLS
// connections made elsewhere (grpc's transport credentials hand back their own).
func Wrap(tc net.Conn, raw *Raw) net.Conn {
	raw.ready.Store(true)
	return &wrapped{Conn: tc, raw: raw}
}

func (c *Conn) Write(p []byte) (int, error) { return corkedWrite(c.Conn, c.raw, p) }

type wrapped struct {
	net.Conn
	raw *Raw
}

func (c *wrapped) Write(p []byte) (int, error) { return corkedWrite(c.Conn, c.raw, p) }

// smallRecord is the least plaintext crypto/tls puts in a record (about one TCP segment while a
// connection is new; 16 KiB later): a Write no larger is one record and one system call anyway.
const smallRecord = 1200

func corkedWrite(w net.Conn, raw *Raw, p []byte) (int, error) {
	if len(p) <= smallRecord || !raw.ready.Load() {
		return w.Write(p)
	}
	raw.cork(len(p))
	n, err := w.Write(p)
	if ferr := raw.uncork(); err == nil && ferr != nil {
		// The records left tls as written but never reached the peer.
		return 0, ferr
	}
	return n, err
}
