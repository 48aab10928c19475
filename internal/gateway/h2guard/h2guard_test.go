package h2guard

import (
	"bytes"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// frames builds a client's byte stream: the preface, SETTINGS, then n HEADERS+RST_STREAM pairs.
func frames(t *testing.T, n int) []byte {
	t.Helper()
	var buf bytes.Buffer
	buf.WriteString(http2.ClientPreface)
	fr := http2.NewFramer(&buf, nil)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		id := uint32(2*i + 1)
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: []byte{0x82, 0x84, 0x86}, EndStream: true, EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
		if err := fr.WriteRSTStream(id, http2.ErrCodeCancel); err != nil {
			t.Fatal(err)
		}
		if err := fr.WriteData(id, false, bytes.Repeat([]byte{3}, i%50)); err != nil { // payload bytes that look like RST types
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

// fakeClock advances by step on every reading.
type fakeClock struct {
	t    time.Time
	step time.Duration
}

func (c *fakeClock) now() time.Time { c.t = c.t.Add(c.step); return c.t }

func feedInPieces(p *parser, b []byte, step int) (fedAll bool, at int) {
	for i := 0; i < len(b); i += step {
		if !p.feed(b[i:min(i+step, len(b))]) {
			return false, i
		}
	}
	return true, len(b)
}

func TestResetBudget(t *testing.T) {
	for _, tc := range []struct {
		name  string
		pairs int
		every time.Duration // time between two resets
		ok    bool
	}{
		{"a burst under the bucket", 900, time.Microsecond, true},
		{"a flood", 5000, time.Microsecond, false},
		{"steady below the rate", 5000, 10 * time.Millisecond, true},
		{"steady above the rate", 5000, time.Millisecond, false},
	} {
		for _, step := range []int{1, 5, 9, 4096} {
			clock := &fakeClock{t: time.Unix(0, 0), step: tc.every}
			p := parser{tokens: DefaultBurst, burst: DefaultBurst, rate: DefaultRate, now: clock.now}
			if ok, _ := feedInPieces(&p, frames(t, tc.pairs), step); ok != tc.ok {
				t.Errorf("%s, pieces of %d: passed=%v, want %v", tc.name, step, ok, tc.ok)
			}
		}
	}
}

// TestCountsOnlyResets: the frames counted are the RST_STREAM ones, wherever the reads cut them.
func TestCountsOnlyResets(t *testing.T) {
	clock := &fakeClock{t: time.Unix(0, 0), step: time.Microsecond}
	p := parser{tokens: 10, burst: 10, rate: 0, now: clock.now}
	b := frames(t, 10)
	if ok, _ := feedInPieces(&p, b, 7); !ok {
		t.Fatal("10 resets spent a bucket of 10 too early")
	}
	p2 := parser{tokens: 10, burst: 10, rate: 0, now: clock.now}
	if ok, _ := feedInPieces(&p2, frames(t, 11), 7); ok {
		t.Fatal("11 resets passed a bucket of 10")
	}
}

// FuzzParser: any byte stream, cut anywhere, spends the budget at the same frame and never panics.
func FuzzParser(f *testing.F) {
	var buf bytes.Buffer
	buf.WriteString(http2.ClientPreface)
	fr := http2.NewFramer(&buf, nil)
	_ = fr.WriteSettings()
	for i := range 5 {
		_ = fr.WriteRSTStream(uint32(2*i+1), http2.ErrCodeCancel)
	}
	f.Add(buf.Bytes(), uint8(1))
	f.Add([]byte(http2.ClientPreface+"\x00\x00\x04\x03\x00\x00\x00\x00\x01\x00\x00\x00\x08"), uint8(3))
	f.Fuzz(func(t *testing.T, in []byte, step uint8) {
		run := func(n int) (bool, int) {
			clock := &fakeClock{t: time.Unix(0, 0)} // no refill: the verdict depends on the bytes only
			p := parser{tokens: 3, burst: 3, rate: 0, now: clock.now}
			return feedInPieces(&p, in, n)
		}
		okWhole, _ := run(len(in) + 1)
		okCut, _ := run(int(step) + 1)
		if okWhole != okCut {
			t.Fatalf("whole: passed=%v; cut every %d bytes: passed=%v", okWhole, int(step)+1, okCut)
		}
	})
}
