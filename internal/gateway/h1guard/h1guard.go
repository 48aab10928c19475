// Package h1guard follows the message framing of a server-side HTTP/1.x connection as net/http reads
// it, and remembers each request's head as it arrived on the wire.
//
// net/http already refuses most ambiguous framing (differing Content-Length values, bad chunk sizes,
// unknown transfer codings), but when a request carries both Content-Length and Transfer-Encoding it
// follows RFC 9112 §6.3: Transfer-Encoding wins and Content-Length is deleted before any handler runs.
// That is safe for the gateway itself, yet such a request is a smuggling attempt or a broken client
// and the product answers it 400 (RFC 9112 lets a server reject it). Only the raw head can tell, so
// the connection is wrapped and its bytes are read a second time, here, as they pass.
//
// The guard never changes a byte and never decides the framing net/http uses: if the two ever
// disagree, the guard stops looking at that connection (Head reports nothing) rather than guess.
package h1guard

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
)

// Head is what the guard saw of one request head.
type Head struct {
	Method, Target string
	// Ambiguous: both Content-Length and Transfer-Encoding were present.
	Ambiguous bool
}

// maxPending bounds the heads remembered ahead of their handlers: net/http reads ahead at most its
// buffer of pipelined requests, and a head whose handler never runs (OPTIONS *) must not pile up.
const maxPending = 256

// maxLine bounds one line of a head or a chunk-size line; a longer one is net/http's to refuse (431,
// 400) and the guard gives up on the connection.
const maxLine = 1<<20 + 4096

// Conn wraps a server-side connection. Reads pass through unchanged.
type Conn struct {
	net.Conn
	mu      sync.Mutex
	p       parser
	pending []Head
}

// Wrap returns c with a guard on its read side.
func Wrap(c net.Conn) *Conn {
	g := &Conn{Conn: c}
	g.p.emit = func(h Head) {
		if len(g.pending) == maxPending {
			g.pending = g.pending[1:]
		}
		g.pending = append(g.pending, h)
	}
	return g
}

func (c *Conn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.mu.Lock()
		c.p.feed(b[:n])
		c.mu.Unlock()
	}
	return n, err
}

// Take returns the head of the request with this method and request target, and forgets it and every
// head before it. ok is false when the guard has none (it gave up, or the bytes were not HTTP/1).
func (c *Conn) Take(method, target string) (h Head, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, p := range c.pending {
		if p.Method == method && p.Target == target {
			c.pending = c.pending[i+1:]
			return p, true
		}
	}
	return Head{}, false
}

type ctxKey struct{}

// ConnContext is for http.Server.ConnContext: it makes the guard of a wrapped connection reachable
// from its requests.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	if g, ok := c.(*Conn); ok {
		return context.WithValue(ctx, ctxKey{}, g)
	}
	return ctx
}

// FromContext returns the guard of the request's connection, if it has one.
func FromContext(ctx context.Context) (*Conn, bool) {
	g, ok := ctx.Value(ctxKey{}).(*Conn)
	return g, ok
}

// Ambiguous reports whether r arrived with both Content-Length and Transfer-Encoding. HTTP/2 requests
// and requests on unguarded connections report false.
func Ambiguous(r *http.Request) bool {
	if r.ProtoMajor != 1 {
		return false
	}
	g, ok := FromContext(r.Context())
	if !ok {
		return false
	}
	h, ok := g.Take(r.Method, r.RequestURI)
	return ok && h.Ambiguous
}

type state uint8

const (
	stHead      state = iota // request line and header fields
	stBody                   // Content-Length bytes left in n
	stChunkSize              // a chunk-size line
	stChunkData              // chunk bytes left in n
	stChunkCRLF              // the CRLF after a chunk's data, n bytes of it left
	stTrailer                // trailer fields after the last chunk
	stPass                   // gave up: an upgrade, a tunnel, or framing net/http refuses
)

// parser is a push parser: feed may cut the stream anywhere.
type parser struct {
	st   state
	n    int64
	line []byte // the current line, without its LF
	head headState
	emit func(Head)
}

// headState collects one head line by line.
type headState struct {
	started        bool // the request line has been seen
	method, target string
	http10         bool
	cl, te         int // how many Content-Length / Transfer-Encoding fields
	clValue        string
	teValue        string
	upgrade        bool
}

func (p *parser) feed(b []byte) {
	for len(b) > 0 && p.st != stPass {
		switch p.st {
		case stBody, stChunkData, stChunkCRLF:
			k := int64(len(b))
			if k > p.n {
				k = p.n
			}
			p.n -= k
			b = b[k:]
			if p.n == 0 {
				switch p.st {
				case stBody:
					p.st = stHead
				case stChunkData:
					p.st, p.n = stChunkCRLF, 2
				default:
					p.st = stChunkSize
				}
			}
		default:
			i := bytes.IndexByte(b, '\n')
			if i < 0 {
				p.appendLine(b)
				return
			}
			p.appendLine(b[:i])
			b = b[i+1:]
			if p.st == stPass {
				return
			}
			line := bytes.TrimSuffix(p.line, []byte{'\r'})
			p.onLine(line)
			p.line = p.line[:0]
			if cap(p.line) > 64<<10 {
				p.line = nil // a rare huge header must not stay with the connection
			}
		}
	}
}

func (p *parser) appendLine(b []byte) {
	if len(p.line)+len(b) > maxLine {
		p.st, p.line = stPass, nil
		return
	}
	p.line = append(p.line, b...)
}

func (p *parser) onLine(line []byte) {
	switch p.st {
	case stHead:
		p.onHeadLine(line)
	case stChunkSize:
		size, ok := chunkSize(line)
		switch {
		case !ok:
			p.st = stPass
		case size == 0:
			p.st = stTrailer
		default:
			p.st, p.n = stChunkData, size
		}
	case stTrailer:
		if len(line) == 0 {
			p.st = stHead
		}
	}
}

func (p *parser) onHeadLine(line []byte) {
	h := &p.head
	if !h.started {
		if len(line) == 0 {
			return // RFC 9112 §2.2: empty lines before a request line are ignored
		}
		fields := bytes.Fields(line)
		if len(fields) != 3 {
			p.st = stPass
			return
		}
		*h = headState{started: true, method: string(fields[0]), target: string(fields[1]),
			http10: string(fields[2]) == "HTTP/1.0"}
		return
	}
	if len(line) > 0 {
		name, value, found := bytes.Cut(line, []byte{':'})
		if !found {
			return // obs-fold or garbage: net/http decides what it means
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			h.cl++
			h.clValue = string(value)
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			h.te++
			h.teValue = string(value)
		case bytes.EqualFold(name, []byte("Upgrade")):
			h.upgrade = true
		}
		return
	}
	p.endHead()
}

// endHead reports the head and follows the body the way net/http frames it.
func (p *parser) endHead() {
	h := p.head
	p.head = headState{}
	ambiguous := h.cl > 0 && h.te > 0
	p.emit(Head{Method: h.method, Target: h.target, Ambiguous: ambiguous})
	switch {
	case ambiguous, h.upgrade, h.method == http.MethodConnect:
		// Answered 400 and closed, or the connection stops being HTTP/1 after a 101.
		p.st = stPass
	case h.te > 0 && !h.http10:
		if h.te == 1 && strings.EqualFold(h.teValue, "chunked") {
			p.st = stChunkSize
		} else {
			p.st = stPass // net/http answers 501 and closes
		}
	case h.cl > 0:
		n, err := strconv.ParseInt(h.clValue, 10, 64)
		if err != nil || n < 0 || h.clValue[0] == '+' {
			p.st = stPass // net/http answers 400 and closes (or folds equal duplicates: do not guess)
			return
		}
		if h.cl > 1 {
			p.st = stPass
			return
		}
		if n > 0 {
			p.st, p.n = stBody, n
		}
	}
}

// chunkSize parses a chunk-size line: hex digits, then optional extensions after ';'.
func chunkSize(line []byte) (int64, bool) {
	if i := bytes.IndexByte(line, ';'); i >= 0 {
		line = line[:i]
	}
	line = bytes.TrimRight(line, " \t")
	if len(line) == 0 || len(line) > 16 {
		return 0, false
	}
	n, err := strconv.ParseInt(string(line), 16, 64)
	return n, err == nil && n >= 0
}
