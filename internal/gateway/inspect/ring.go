package inspect

import (
	"net/http"
	"sync"
)

// entryOverhead approximates the fixed cost of an Entry (struct, strings' headers, maps), so that
// a flood of tiny requests is bounded by MaxBytes too and not only by Capacity.
const entryOverhead = 512

// ring holds one domain's newest entries within a count and a byte budget: a circular buffer of
// capacity slots, so that a push moves no other entry and allocates nothing.
type ring struct {
	mu       sync.Mutex
	capacity int
	maxBytes int64
	slots    []Entry // len(slots) == capacity once the first entry is pushed
	sizes    []int64
	head     int // index of the oldest entry
	n        int // entries held
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

// at is the k-th oldest entry's slot.
func (r *ring) at(k int) int { return (r.head + k) % r.capacity }

// dropOldest forgets the oldest entry, zeroing its slot so that its bodies can be collected.
func (r *ring) dropOldest() {
	r.bytes -= r.sizes[r.head]
	r.slots[r.head], r.sizes[r.head] = Entry{}, 0
	r.head = (r.head + 1) % r.capacity
	r.n--
}

// push stores e, evicting the oldest entries past the budget. An entry larger than the whole budget
// is not kept at all: keeping it would break the cap the operator configured.
func (r *ring) push(e *Entry) {
	sz := e.size()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.capacity <= 0 || sz > r.maxBytes {
		// Checked first: evicting the others to make room this entry cannot use would lose them too.
		return
	}
	if r.slots == nil {
		r.slots, r.sizes = make([]Entry, r.capacity), make([]int64, r.capacity)
	}
	if r.n == r.capacity {
		r.dropOldest()
	}
	k := r.at(r.n)
	r.slots[k], r.sizes[k] = *e, sz
	r.n++
	r.bytes += sz
	for r.n > 0 && r.bytes > r.maxBytes {
		r.dropOldest()
	}
}

func (r *ring) list() []Entry {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Entry, r.n)
	for k := range r.n {
		out[k] = r.slots[r.at(k)].clone()
	}
	return out
}

func (r *ring) get(id string) (Entry, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k := range r.n {
		if e := &r.slots[r.at(k)]; e.ID == id {
			return e.clone(), true
		}
	}
	return Entry{}, false
}

// usage reports the ring's accounted bytes, for tests and metrics.
func (r *ring) usage() (n int, bytes int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n, r.bytes
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
