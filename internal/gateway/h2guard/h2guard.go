// Package h2guard limits how fast an HTTP/2 client may cancel streams on one connection.
//
// Rapid reset (CVE-2023-44487) opens a stream and cancels it at once, thousands of times a second:
// each stream costs the server a handler and the upstream a request, while the client stays under
// every concurrency limit. net/http bounds the handlers in flight but keeps the connection open, so
// an attacker can go on for as long as it likes. The guard reads the client's frames as they pass
// (it never changes a byte) and ends the connection once RST_STREAM frames come faster than a
// token bucket allows. Browsers and gRPC clients cancel streams too, but in tens, not thousands.
package h2guard

import (
	"errors"
	"net"
	"sync"
	"time"
)

// Defaults: a burst of 1000 cancellations, then 200 a second sustained.
const (
	DefaultBurst = 1000
	DefaultRate  = 200
)

// ErrResetFlood is what Read returns once the client cancelled streams faster than allowed.
var ErrResetFlood = errors.New("h2guard: too many RST_STREAM frames from the client")

const (
	prefaceLen  = 24 // "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
	headerLen   = 9
	typeRSTStrm = 0x3
)

// Conn wraps the server side of an HTTP/2 connection (after TLS).
type Conn struct {
	net.Conn
	mu      sync.Mutex
	p       parser
	flooded bool
	// OnFlood, if set, is called once when the connection is cut.
	OnFlood func()
}

// Wrap returns c guarded with a bucket of burst resets refilled at rate per second.
func Wrap(c net.Conn, burst, rate int) *Conn {
	return &Conn{Conn: c, p: parser{tokens: float64(burst), burst: float64(burst), rate: float64(rate), now: time.Now}}
}

func (c *Conn) Read(b []byte) (int, error) {
	c.mu.Lock()
	flooded := c.flooded
	c.mu.Unlock()
	if flooded {
		return 0, ErrResetFlood
	}
	n, err := c.Conn.Read(b)
	if n == 0 {
		return n, err
	}
	c.mu.Lock()
	ok := c.p.feed(b[:n])
	first := !ok && !c.flooded
	if !ok {
		c.flooded = true
	}
	c.mu.Unlock()
	if !ok {
		if first && c.OnFlood != nil {
			c.OnFlood()
		}
		// The bytes that carried the flood are not passed on; the server sees the error and
		// closes the connection with every stream on it.
		return 0, ErrResetFlood
	}
	return n, err
}

// parser walks the frame layout: the preface, then 9-byte headers each followed by its payload.
type parser struct {
	preface int // preface bytes still to skip
	started bool
	hdr     [headerLen]byte
	hdrN    int
	skip    int // payload bytes still to skip

	tokens, burst, rate float64
	last                time.Time
	now                 func() time.Time
}

// feed reports false once the reset budget is spent.
func (p *parser) feed(b []byte) bool {
	if !p.started {
		p.started, p.preface = true, prefaceLen
	}
	for len(b) > 0 {
		switch {
		case p.preface > 0:
			k := min(p.preface, len(b))
			p.preface -= k
			b = b[k:]
		case p.skip > 0:
			k := min(p.skip, len(b))
			p.skip -= k
			b = b[k:]
		default:
			k := copy(p.hdr[p.hdrN:], b)
			p.hdrN += k
			b = b[k:]
			if p.hdrN < headerLen {
				return true
			}
			p.hdrN = 0
			p.skip = int(p.hdr[0])<<16 | int(p.hdr[1])<<8 | int(p.hdr[2])
			if p.hdr[3] == typeRSTStrm && !p.spend() {
				return false
			}
		}
	}
	return true
}

// spend takes one token, refilling the bucket for the time since the last reset.
func (p *parser) spend() bool {
	now := p.now()
	if !p.last.IsZero() {
		p.tokens = min(p.burst, p.tokens+now.Sub(p.last).Seconds()*p.rate)
	}
	p.last = now
	if p.tokens < 1 {
		return false
	}
	p.tokens--
	return true
}
