package acme

import (
	"context"
	"crypto/tls"
	"errors"
	"io/fs"
	"sync"
	"time"
)

// A Storage shared by several gateways (PGStorage) changes what the Manager does in three ways:
//   - challenges are published in it, so that the gateway the CA reaches answers for the one
//     running the order (challenges/http-01/<token>, challenges/tls-alpn-01/<name>);
//   - certificates are reloaded from it every Options.RefreshInterval, so that a certificate one
//     gateway ordered or renewed is served by all;
//   - a handshake for a managed name without a certificate looks in it at once (at most once a
//     second per name), rather than waiting for the next reload.
//
// Orders take the Storage's per-name lock in every case (see renew), so one gateway orders and the
// others, once they get the lock, find its certificate stored and take it.

// DefaultRefreshInterval is the default Options.RefreshInterval.
const DefaultRefreshInterval = 30 * time.Second

// missReloadEvery bounds the storage reads that handshakes for one name without a certificate cause.
const missReloadEvery = time.Second

// challengeLookups bounds the storage reads that challenge requests cause, per gateway: any client
// can ask for a token. A CA makes a few requests per challenge.
const (
	challengeLookupsPerSecond = 20
	challengeLookupsBurst     = 50
)

// sharedStorage is implemented by a Storage that other gateways use at the same time.
type sharedStorage interface{ Shared() bool }

func isShared(s Storage) bool {
	ss, ok := s.(sharedStorage)
	return ok && ss.Shared()
}

func httpTokenKey(token string) string { return "challenges/http-01/" + token }
func alpnCertKey(name string) string   { return "challenges/tls-alpn-01/" + name }

// validToken reports whether token can be an ACME token (base64url, RFC 8555 8.1), so that junk
// paths never reach the storage.
func validToken(token string) bool {
	if token == "" || len(token) > 256 {
		return false
	}
	for i := 0; i < len(token); i++ {
		c := token[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// storageCtx bounds a storage call made where lego gives no context (challenge providers).
func (m *Manager) storageCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(m.life, 10*time.Second)
}

// publish writes a challenge answer to the shared storage; without one it does nothing.
func (m *Manager) publish(key string, value []byte) error {
	if !m.shared {
		return nil
	}
	ctx, cancel := m.storageCtx()
	defer cancel()
	return m.storage.Store(ctx, key, value)
}

// unpublish removes a challenge answer. A failure leaves a stale answer that no CA asks for again.
func (m *Manager) unpublish(key string) {
	if !m.shared {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(m.life), 10*time.Second)
	defer cancel()
	if err := m.storage.Delete(ctx, key); err != nil {
		m.log.Warn("acme: remove published challenge", "key", key, "err", err)
	}
}

// sharedKeyAuth looks up an HTTP-01 answer published by another gateway. The host need not be
// managed here: the gateway running the order may have learnt of the name first.
func (m *Manager) sharedKeyAuth(ctx context.Context, host, token string) (string, bool) {
	if !m.shared || host == "" || !validToken(token) || !m.challengeLookups.Allow() {
		return "", false
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	b, err := m.storage.Load(ctx, httpTokenKey(token))
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			m.log.Warn("acme: look up published http-01 challenge", "domain", host, "err", err)
		}
		return "", false
	}
	return string(b), true
}

// sharedChallengeCert looks up a TLS-ALPN-01 certificate published by another gateway (for a name
// that need not be managed here yet, as for HTTP-01).
func (m *Manager) sharedChallengeCert(name string) (*tls.Certificate, bool) {
	if !m.shared || name == "" || !m.challengeLookups.Allow() {
		return nil, false
	}
	ctx, cancel := context.WithTimeout(m.life, 5*time.Second)
	defer cancel()
	b, err := m.storage.Load(ctx, alpnCertKey(name))
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			m.log.Warn("acme: look up published tls-alpn-01 challenge", "domain", name, "err", err)
		}
		return nil, false
	}
	cert, err := tls.X509KeyPair(b, b) // certificate and key PEM blocks, one after the other
	if err != nil {
		m.log.Warn("acme: published tls-alpn-01 challenge unusable", "domain", name, "err", err)
		return nil, false
	}
	return &cert, true
}

// reloadOnMiss is GetCertificate's look into the shared storage for a managed name that has no
// certificate here: another gateway may have stored one since the last refresh.
func (m *Manager) reloadOnMiss(name string) *tls.Certificate {
	if !m.shared {
		return nil
	}
	now := time.Now()
	m.mu.Lock()
	e := m.entries[name]
	if e == nil || e.cert != nil || now.Sub(e.missAt) < missReloadEvery {
		m.mu.Unlock()
		return nil
	}
	e.missAt = now
	m.mu.Unlock()
	ctx, cancel := context.WithTimeout(m.life, 3*time.Second)
	defer cancel()
	cert, err := m.loadCert(ctx, name)
	if err != nil {
		return nil
	}
	return m.adopt(name, cert)
}

// refresh reloads every managed name's certificate from the shared storage and serves those newer
// than the ones in memory.
func (m *Manager) refresh(ctx context.Context) {
	m.mu.RLock()
	names := make([]string, 0, len(m.entries))
	for name := range m.entries {
		names = append(names, name)
	}
	m.mu.RUnlock()
	for _, name := range names {
		if ctx.Err() != nil {
			return
		}
		cert, err := m.loadCert(ctx, name)
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) && ctx.Err() == nil {
				m.log.Debug("acme: reload stored certificate", "domain", name, "err", err)
			}
			continue
		}
		m.adopt(name, cert)
	}
}

// adopt serves cert, loaded from storage, for name if it is newer than the one served, and returns
// the certificate now served (nil if none).
func (m *Manager) adopt(name string, cert *tls.Certificate) *tls.Certificate {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.entries[name]
	if e == nil {
		return nil
	}
	if e.cert != nil && (e.cert.Leaf.Equal(cert.Leaf) || cert.Leaf.NotAfter.Before(e.cert.Leaf.NotAfter)) {
		return e.cert
	}
	e.cert = cert // one pointer swap, as for a renewal here
	m.notifyExpiry(name, cert.Leaf.NotAfter)
	m.log.Info("acme: serving certificate stored by another gateway", "domain", name, "not_after", cert.Leaf.NotAfter)
	if !e.busy {
		now := m.now()
		e.failures, e.failed, e.lastErr = 0, false, ""
		e.ariAt, e.ariNext = time.Time{}, time.Time{}
		e.next = m.nextLook(cert, now, time.Time{})
	}
	return cert
}

// refresher runs refresh every interval until ctx ends.
func (m *Manager) refresher(ctx context.Context, wg *sync.WaitGroup) {
	if !m.shared {
		return
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(m.opts.RefreshInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				m.refresh(ctx)
			}
		}
	}()
}
