package tunnel

import (
	"math/bits"
	"sync"

	"google.golang.org/grpc/mem"
)

// buffers is the pool behind tunnel connections: grpc's frame reads and message assembly, the
// chunks body bytes are read into before they are sent, and the buffers received payloads are copied
// into. Tiers are powers of two, so a buffer is never more than twice the bytes it holds: a stream's
// credit bounds the payload bytes it may have queued, and that bound must hold for memory too (a
// visitor reading a stream of small events slowly must not pin a whole chunk per event).
//
// Unlike grpc's default pool it does not clear buffers: every user here overwrites the bytes it
// exposes before anyone reads them, and the clearing cost as much as the copy.
var buffers mem.BufferPool = &tieredPool{}

const (
	minTier = 8  // 256 B
	maxTier = 20 // 1 MiB
)

// tieredPool keeps buffers of capacity 1<<e for every e from minTier to maxTier; larger ones are
// allocated and left to the collector.
type tieredPool struct {
	tiers [maxTier - minTier + 1]sync.Pool
}

func (p *tieredPool) Get(n int) *[]byte {
	e := max(bits.Len(uint(max(n, 1)-1)), minTier)
	if e > maxTier {
		b := make([]byte, n)
		return &b
	}
	if b, ok := p.tiers[e-minTier].Get().(*[]byte); ok {
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, 1<<e)
	return &b
}

func (p *tieredPool) Put(b *[]byte) {
	c := cap(*b)
	e := bits.Len(uint(c)) - 1
	if c != 1<<e || e < minTier || e > maxTier {
		return // not one of ours
	}
	*b = (*b)[:c]
	p.tiers[e-minTier].Put(b)
}

// putChunk gives back a buffer from buffers, whatever its length now; nil (a payload that is not
// pooled) is nothing to give back.
func putChunk(b *[]byte) {
	if b != nil {
		buffers.Put(b)
	}
}
