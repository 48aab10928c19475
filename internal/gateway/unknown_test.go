package gateway

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

type fakeLookup struct {
	known map[string]bool
	err   error
	calls int
}

func (f *fakeLookup) Registered(_ context.Context, name string) (bool, error) {
	f.calls++
	return f.known[name], f.err
}

func TestUnknownCache(t *testing.T) {
	store := &fakeLookup{known: map[string]bool{"there.test": true}}
	now := time.Unix(1_000_000, 0)
	c := newUnknownCache(store)
	c.now = func() time.Time { return now }
	ask := func(name string) (bool, error) { return c.Registered(context.Background(), name) }

	for range 3 {
		if known, err := ask("x.apps.test"); known || err != nil {
			t.Fatalf("unknown name: %v %v", known, err)
		}
	}
	if store.calls != 1 {
		t.Fatalf("%d store lookups for one unknown name within the TTL, want 1", store.calls)
	}
	for range 2 {
		if known, _ := ask("there.test"); !known {
			t.Fatal("registered name")
		}
	}
	if store.calls != 3 {
		t.Fatalf("registered names must be asked each time (a registration never waits): %d lookups", store.calls)
	}

	// The store goes down: a name it said was unknown stays unknown, even past the TTL; a name never
	// asked gets the error.
	store.err = errors.New("connection refused")
	now = now.Add(time.Hour)
	if known, err := ask("x.apps.test"); known || err != nil {
		t.Fatalf("remembered name during an outage: %v %v", known, err)
	}
	if _, err := ask("new.apps.test"); err == nil {
		t.Fatal("a name never asked must get the store's error")
	}

	// Registered after it was remembered: seen once the TTL has passed.
	store.err = nil
	store.known["x.apps.test"] = true
	if known, _ := ask("x.apps.test"); !known {
		t.Fatal("a registration was not seen after the TTL")
	}

	// Bounded, however many names come.
	for i := range unknownMax + 100 {
		_, _ = ask(fmt.Sprintf("n%d.flood.test", i))
	}
	if len(c.until) > unknownMax || len(c.order) > unknownMax {
		t.Fatalf("%d names, %d in order; want at most %d", len(c.until), len(c.order), unknownMax)
	}
}
