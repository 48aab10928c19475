package access

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"net/http"
	"runtime"
	"sync"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/sync/singleflight"
)

const (
	// maxVerified bounds the cache of successful verifications (32 bytes each).
	maxVerified = 4096
	// Longer credentials cannot match (policy refuses such users and bcrypt reads 72 bytes), so they
	// are refused before spending a hash on them.
	maxUserBytes     = 1024
	maxPasswordBytes = 72
)

// dummyHash is compared against for users that do not exist, so that a wrong user name costs what a
// wrong password costs and timing does not tell which users exist. Same cost as HashPasswords uses
// (bcrypt.DefaultCost); its password was random and thrown away.
var dummyHash = []byte("$2a$10$T.NtQ0IB6rZyvwGyMVELAuYRK3/OgdeCuRXjBQbZYot1/tao07/ny")

// verifier checks basic-auth credentials. bcrypt costs tens of milliseconds by design, and a browser
// sends the credentials with every request, so successful checks are remembered.
type verifier struct {
	// key makes the cache's keys useless outside this process: they are HMACs of the credentials.
	key [32]byte
	// slots bounds the bcrypt comparisons running at once to half the CPUs, so that a flood of
	// wrong passwords slows basic auth down and not the gateway's other traffic.
	slots  chan struct{}
	flight singleflight.Group

	mu sync.Mutex
	ok map[[32]byte]struct{}
}

func newVerifier() *verifier {
	v := &verifier{slots: make(chan struct{}, max(1, runtime.GOMAXPROCS(0)/2)), ok: make(map[[32]byte]struct{})}
	_, _ = rand.Read(v.key[:]) // never fails (crypto/rand's documented contract)
	return v
}

// check returns the user r's Authorization header proves to be one of users (user name to bcrypt hash).
func (v *verifier) check(r *http.Request, users map[string][]byte) (string, bool) {
	user, pass, ok := r.BasicAuth()
	if !ok || len(user) > maxUserBytes || len(pass) > maxPasswordBytes {
		return "", false
	}
	hash, known := users[user]
	if !known {
		hash = dummyHash
	}
	// The stored hash is part of the key, so a changed password or a re-created user does not
	// match what was remembered before.
	key := v.sum(user, pass, hash)
	if known && v.remembered(key) {
		return user, true
	}
	// Identical attempts in flight (a browser loading a page's assets in parallel) share one hash.
	res, err, _ := v.flight.Do(string(key[:]), func() (any, error) {
		select {
		case v.slots <- struct{}{}:
		case <-r.Context().Done():
			return false, r.Context().Err()
		}
		defer func() { <-v.slots }()
		match := bcrypt.CompareHashAndPassword(hash, []byte(pass)) == nil && known
		if match {
			v.remember(key)
		}
		return match, nil
	})
	// An error is the first request of the flight going away; the others are refused with it and
	// their clients ask again, which is rare enough not to justify a goroutine per flight.
	return user, err == nil && res.(bool)
}

// sum is HMAC-SHA256(user NUL password NUL hash) under the process's key.
func (v *verifier) sum(user, pass string, hash []byte) [32]byte {
	mac := hmac.New(sha256.New, v.key[:])
	mac.Write([]byte(user))
	mac.Write([]byte{0})
	mac.Write([]byte(pass))
	mac.Write([]byte{0})
	mac.Write(hash)
	var k [32]byte
	mac.Sum(k[:0])
	return k
}

func (v *verifier) remembered(key [32]byte) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	_, ok := v.ok[key]
	return ok
}

func (v *verifier) remember(key [32]byte) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.ok) >= maxVerified {
		// Drop an arbitrary one (map order is random): forgetting only costs its owner one more hash.
		for k := range v.ok {
			delete(v.ok, k)
			break
		}
	}
	v.ok[key] = struct{}{}
}
