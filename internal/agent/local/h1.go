package local

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"sync"
	"time"
)

// h1Client sends a request without a body to a plain HTTP/1.1 target over kept-alive connections,
// writing it and reading the answer's head from the caller's goroutine. http.Transport runs a read
// and a write goroutine per connection and hands every request and response between them and the
// caller: on a small request those hand-offs (each a wake-up of a parked goroutine) cost more than
// the work. Everything else (bodies, upgrades, TLS, h2c) stays with http.Transport, which owns
// the hard cases: writing a body while the answer is read, 100-continue, protocol negotiation.
type h1Client struct {
	dial        func(ctx context.Context, network, addr string) (net.Conn, error)
	addr        string
	maxIdle     int
	idleTimeout time.Duration
	now         func() time.Time

	mu     sync.Mutex
	idle   []*h1Conn // most recently used last
	closed bool
}

type h1Conn struct {
	c         net.Conn
	br        *bufio.Reader
	bw        *bufio.Writer
	idleSince time.Time
}

// errClientClosed answers a request after Close (the agent is stopping).
var errClientClosed = errors.New("local: client closed")

// h1BufferSize is the connection's read and write buffer, as the Transport's.
const h1BufferSize = 64 << 10

func (h *h1Client) get(ctx context.Context) (*h1Conn, bool, error) {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil, false, errClientClosed
	}
	var stale []*h1Conn
	var pc *h1Conn
	for len(h.idle) > 0 {
		last := h.idle[len(h.idle)-1]
		h.idle = h.idle[:len(h.idle)-1]
		if h.now().Sub(last.idleSince) > h.idleTimeout {
			stale = append(stale, last)
			continue
		}
		pc = last
		break
	}
	h.mu.Unlock()
	for _, s := range stale {
		_ = s.c.Close()
	}
	if pc != nil {
		return pc, true, nil
	}
	c, err := h.dial(ctx, "tcp", h.addr)
	if err != nil {
		return nil, false, err
	}
	return &h1Conn{c: c, br: bufio.NewReaderSize(c, h1BufferSize), bw: bufio.NewWriterSize(c, h1BufferSize)}, false, nil
}

// put keeps pc for the next request, unless the pool is full or closed.
func (h *h1Client) put(pc *h1Conn) {
	pc.idleSince = h.now()
	h.mu.Lock()
	if !h.closed && len(h.idle) < h.maxIdle {
		h.idle = append(h.idle, pc)
		pc = nil
	}
	h.mu.Unlock()
	if pc != nil {
		_ = pc.c.Close()
	}
}

// Close drops the idle connections; connections in use close when their response ends.
func (h *h1Client) Close() {
	h.mu.Lock()
	idle := h.idle
	h.idle, h.closed = nil, true
	h.mu.Unlock()
	for _, pc := range idle {
		_ = pc.c.Close()
	}
}

// RoundTrip sends req, which has no body, asks for no upgrade and is replayable. A kept-alive
// connection the target closed while idle fails before any byte of an answer; the request is then
// sent again on another connection (a fresh one at the latest), as http.Transport does.
func (h *h1Client) RoundTrip(req *http.Request) (*http.Response, error) {
	for {
		pc, reused, err := h.get(req.Context())
		if err != nil {
			return nil, err
		}
		res, err := h.roundTrip(pc, req)
		if err == nil {
			return res, nil
		}
		if !reused || !retryable(err) || req.Context().Err() != nil {
			return nil, err
		}
	}
}

// retryable reports an error of a kept-alive connection that died while idle: the write failed, or
// the answer ended before its first byte. Only replayable requests come to this client, so sending
// one again is what http.Transport does too.
func retryable(err error) bool {
	var nothing errNothingRead
	return errors.As(err, &nothing)
}

// replayable methods may be sent again when a kept-alive connection turns out dead. A request with
// another method, even without a body, goes to http.Transport, whose read goroutine notices a
// connection the target closed before it is reused; this client cannot without a goroutine of its own.
func replayable(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return false
}

type errNothingRead struct{ err error }

func (e errNothingRead) Error() string { return e.err.Error() }
func (e errNothingRead) Unwrap() error { return e.err }

func (h *h1Client) roundTrip(pc *h1Conn, req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	// A cancelled request (the visitor left, the gateway reset the stream) must unblock a read or a
	// write in progress: an expired deadline does that, and the connection is not kept.
	stop := context.AfterFunc(ctx, func() { _ = pc.c.SetDeadline(time.Unix(1, 0)) })
	fail := func(err error) (*http.Response, error) {
		stop()
		_ = pc.c.Close()
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, ctxErr
		}
		return nil, err
	}
	if err := req.Write(pc.bw); err != nil {
		return fail(errNothingRead{err: err})
	}
	if err := pc.bw.Flush(); err != nil {
		return fail(errNothingRead{err: err})
	}
	trace := httptrace.ContextClientTrace(ctx)
	for {
		if _, err := pc.br.Peek(1); err != nil {
			return fail(errNothingRead{err: err})
		}
		res, err := http.ReadResponse(pc.br, req)
		if err != nil {
			return fail(err)
		}
		code := res.StatusCode
		if code >= 100 && code < 200 {
			if code == http.StatusSwitchingProtocols {
				// Only requests that ask for no upgrade come here.
				return fail(errors.New("local target switched protocols without being asked to"))
			}
			if trace != nil && trace.Got1xxResponse != nil {
				if err := trace.Got1xxResponse(code, textproto.MIMEHeader(res.Header)); err != nil {
					return fail(err)
				}
			}
			continue
		}
		reusable := !res.Close && !req.Close
		if res.Body == http.NoBody {
			h.release(pc, stop, reusable)
			return res, nil
		}
		res.Body = &h1Body{rc: res.Body, h: h, pc: pc, stop: stop, reusable: reusable, length: res.ContentLength}
		return res, nil
	}
}

// release ends the connection's part in a request: kept if the answer was read whole, it may be
// reused and the cancel hook had not fired (else its deadline is set).
func (h *h1Client) release(pc *h1Conn, stop func() bool, reusable bool) {
	if stop() && reusable {
		h.put(pc)
		return
	}
	_ = pc.c.Close()
}

// h1Body is an answer's body. The connection goes back to the pool the moment the body has been
// read whole (to EOF, or to its announced length, where io.ReadFull stops before the EOF), not at
// Close: the caller ends the tunnel stream first, which cancels the request's context, and a
// connection whose cancel hook has fired is not reused.
type h1Body struct {
	rc       io.ReadCloser
	h        *h1Client
	pc       *h1Conn
	stop     func() bool
	reusable bool
	length   int64 // -1 when unknown (chunked, or until close)

	mu   sync.Mutex
	read int64
	done bool
}

func (b *h1Body) Read(p []byte) (int, error) {
	b.mu.Lock()
	done := b.done
	b.mu.Unlock()
	if done {
		return 0, io.EOF
	}
	n, err := b.rc.Read(p)
	b.mu.Lock()
	defer b.mu.Unlock()
	b.read += int64(n)
	if b.done {
		// Closed while the read ran.
		return n, err
	}
	if err == io.EOF || (err == nil && b.length >= 0 && b.read == b.length) {
		b.done = true
		_ = b.rc.Close()
		b.h.release(b.pc, b.stop, b.reusable)
		return n, io.EOF
	}
	return n, err
}

// Close before the end closes the connection first, so that closing the body, which reads what is
// left, does not wait on the target.
func (b *h1Body) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done {
		return nil
	}
	b.done = true
	b.stop()
	_ = b.pc.c.Close()
	_ = b.rc.Close()
	return nil
}
