package sso

import (
	"bytes"
	"context"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"
)

// A rotation through this gateway (a new generation) is seen at once; one made elsewhere within keyTTL.
func TestKeyringGeneration(t *testing.T) {
	var stored atomic.Value
	stored.Store(bytes.Repeat([]byte{1}, 32))
	var gen atomic.Uint64
	now := time.Unix(1_000_000, 0)
	k := &keyring{
		fetch:      func(context.Context) ([]byte, error) { return stored.Load().([]byte), nil },
		generation: gen.Load,
		now:        func() time.Time { return now },
		log:        slog.New(slog.DiscardHandler),
	}
	get := func() byte {
		t.Helper()
		key, err := k.get(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return key[0]
	}
	if get() != 1 {
		t.Fatal("first key")
	}
	stored.Store(bytes.Repeat([]byte{2}, 32))
	if get() != 1 {
		t.Fatal("a rotation elsewhere was seen before keyTTL: the cache does not cache")
	}
	gen.Add(1)
	if get() != 2 {
		t.Fatal("a rotation through this gateway was not seen at once")
	}
	stored.Store(bytes.Repeat([]byte{3}, 32))
	now = now.Add(keyTTL)
	if get() != 3 {
		t.Fatal("a rotation elsewhere was not seen after keyTTL")
	}
}
