package inspect

import (
	"net/http"
	"sync"
)

// entryOverhead approximates the fixed cost of an Entry (struct, strings' headers, maps), so that
// a flood of tiny requests is bounded by MaxBytes too and not only by Capacity.
const entryOverhead = 512

// ring holds one domain's newest entries within a count and a byte budget.
type ring struct {
	mu       sync.Mutex
	capacity int
	maxBytes int64
	entries  []Entry
	sizes    []int64
	bytes    int64
}

func newRing(capacity int, maxBytes int64) *ring {
	return &ring{capacity: capacity, maxBytes: maxBytes}
}

func headerSize(h http.Header) int64 {
	var n int64
	for k, vs := range h {
		n += int64(len(k)) + 16
		for _, v := range vs {
			n += int64(len(v)) + 16
		}
	}
	return n
}

func (e *Entry) size() int64 {
	return entryOverhead +
		int64(len(e.ID)+len(e.Domain)+len(e.Host)+len(e.Method)+len(e.Path)+len(e.Query)+len(e.Proto)+len(e.RemoteAddr)+len(e.ReplayOf)) +
		headerSize(e.RequestHeader) + headerSize(e.ResponseHeader) +
		int64(cap(e.RequestBody)+cap(e.ResponseBody))
}

// push stores e, evicting the oldest entries past the budget. An entry larger than the whole budget
// is not kept at all: keeping it would break the cap the operator configured.
func (r *ring) push(e *Entry) {
	sz := e.size()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.entries = append(r.entries, *e)
	r.sizes = append(r.sizes, sz)
	r.bytes += sz
	for len(r.entries) > 0 && (len(r.entries) > r.capacity || r.bytes > r.maxBytes) {
		r.bytes -= r.sizes[0]
		// Zeroed so the backing array does not keep evicted bodies alive until it is reallocated.
		r.entries[0] = Entry{}
		r.entries = r.entries[1:]
		r.sizes = r.sizes[1:]
	}
}

func (r *ring) list() []Entry {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Entry, len(r.entries))
	for k := range r.entries {
		out[k] = r.entries[k].clone()
	}
	return out
}

func (r *ring) get(id string) (Entry, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k := range r.entries {
		if r.entries[k].ID == id {
			return r.entries[k].clone(), true
		}
	}
	return Entry{}, false
}

// usage reports the ring's accounted bytes, for tests and metrics.
func (r *ring) usage() (n int, bytes int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.entries), r.bytes
}

// clone deep-copies e: stored entries are shared between the ring and readers, and a reader that
// edits its copy (Replay's caller, an SSE encoder) must not change the record.
func (e *Entry) clone() Entry {
	c := *e
	c.RequestHeader = e.RequestHeader.Clone()
	c.ResponseHeader = e.ResponseHeader.Clone()
	if e.RequestBody != nil {
		c.RequestBody = append([]byte(nil), e.RequestBody...)
	}
	if e.ResponseBody != nil {
		c.ResponseBody = append([]byte(nil), e.ResponseBody...)
	}
	return c
}
