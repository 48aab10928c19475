package sso

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
)

const (
	// keyTTL is how long a session key is used without asking the registry again: short, so a
	// rotation ends sessions everywhere within a minute, long enough that the registry is not asked
	// on every request.
	keyTTL = time.Minute
	// keyRetry spaces the attempts while the registry fails, so an outage does not become one
	// slow store call per request.
	keyRetry        = 5 * time.Second
	keyFetchTimeout = 5 * time.Second
)

// keyring keeps the gateway-wide session key, shared by every domain of one builder.
type keyring struct {
	fetch func(context.Context) ([]byte, error)
	// generation, if set, changes when the key was rotated on this gateway: a cached key of another
	// generation is not used, so a rotation ends sessions here at once rather than within keyTTL.
	generation func() uint64
	now        func() time.Time
	log        *slog.Logger
	group      singleflight.Group

	mu      sync.Mutex
	key     []byte
	gen     uint64    // the generation key was read in
	until   time.Time // key (or err) stands without asking again until then
	lastErr error     // the last fetch's failure while there is no key
}

// get returns the current session key. Callers that wait for a fetch may give up with ctx; the fetch
// itself runs on for the others, bounded by keyFetchTimeout.
func (k *keyring) get(ctx context.Context) ([]byte, error) {
	k.mu.Lock()
	key, err, fresh := k.key, k.lastErr, k.now().Before(k.until) && k.gen == k.currentGeneration()
	k.mu.Unlock()
	if fresh {
		if key == nil {
			return nil, err
		}
		return key, nil
	}
	ch := k.group.DoChan("key", func() (any, error) { return k.refresh(context.WithoutCancel(ctx)) })
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.([]byte), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (k *keyring) currentGeneration() uint64 {
	if k.generation == nil {
		return 0
	}
	return k.generation()
}

func (k *keyring) refresh(ctx context.Context) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, keyFetchTimeout)
	defer cancel()
	gen := k.currentGeneration()
	key, err := k.fetch(ctx)
	if err == nil && len(key) < minSessionKey {
		err = fmt.Errorf("session key is %d bytes, want at least %d", len(key), minSessionKey)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	now := k.now()
	if err != nil {
		err = fmt.Errorf("read the session key: %w", err)
		k.until = now.Add(keyRetry)
		if k.key != nil {
			// A store outage must not sign everyone out: the last key stays in use. A rotation
			// is a successful read, so it is still seen as soon as the store answers.
			k.log.Warn("sso: session key unavailable, keeping the last one", "error", err)
			return k.key, nil
		}
		k.lastErr = err
		return nil, err
	}
	k.key, k.lastErr, k.until, k.gen = bytes.Clone(key), nil, now.Add(keyTTL), gen
	return k.key, nil
}
