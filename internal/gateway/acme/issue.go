package acme

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	legoacme "github.com/go-acme/lego/v4/acme"
	"github.com/go-acme/lego/v4/acme/api"
	"github.com/go-acme/lego/v4/certificate"
	"github.com/go-acme/lego/v4/challenge"

	"github.com/hopgate/hopgate/internal/gateway/hostname"
)

func certKey(name string) string { return "certificates/" + name + ".crt" }
func keyKey(name string) string  { return "certificates/" + name + ".key" }

// maintain is one look at a managed name by a Run worker: name gate, renewal decision, order.
func (m *Manager) maintain(ctx context.Context, name string) {
	now := m.now()
	if len(m.opts.ExpectIPs) > 0 {
		if err := m.checkGate(ctx, name); err != nil {
			if ctx.Err() != nil {
				m.finish(name, func(e *entry) {}) // unchanged; looked at again by the next Run
				return
			}
			m.finish(name, func(e *entry) {
				first := e.gate != gateFailed
				e.gate = gateFailed
				e.lastErr = err.Error()
				e.next = now.Add(gateSteps[min(e.failures, len(gateSteps)-1)])
				e.failures++
				if first {
					m.log.Warn("acme: name does not resolve to this gateway; certificate pending", "domain", name, "err", err)
				}
			})
			return
		}
	}

	m.mu.Lock()
	e := m.entries[name]
	if e == nil { // unmanaged meanwhile
		m.mu.Unlock()
		return
	}
	if e.gate == gateFailed { // the name resolves now: start afresh
		e.failures, e.lastErr = 0, ""
	}
	e.gate = gateOK
	cert, ariAt, ariNext := e.cert, e.ariAt, e.ariNext
	m.mu.Unlock()

	renew, replaces := m.needsRenewal(ctx, name, cert, now, &ariAt, &ariNext)
	if !renew {
		m.finish(name, func(e *entry) {
			e.ariAt, e.ariNext = ariAt, ariNext
			e.next = m.nextLook(e.cert, now, ariAt)
		})
		return
	}

	newCert, ordered, err := m.renew(ctx, name, cert, replaces)
	if ctx.Err() != nil {
		m.finish(name, func(e *entry) {})
		return
	}
	if m.opts.OnOrder != nil && (ordered || err != nil) {
		m.opts.OnOrder(name, err)
	}
	if err != nil {
		m.finish(name, func(e *entry) {
			wait := backoffSteps[min(e.failures, len(backoffSteps)-1)]
			if ra := retryAfter(err); ra > wait {
				wait = ra
			}
			e.failures++
			e.failed = true
			e.lastErr = err.Error()
			e.next = now.Add(wait)
			m.log.Error("acme: certificate order failed", "domain", name, "attempt", e.failures,
				"retry_in", wait.String(), "err", err)
		})
		return
	}
	m.finish(name, func(e *entry) {
		e.failures, e.failed, e.lastErr = 0, false, ""
		e.ariAt, e.ariNext = time.Time{}, time.Time{}
		if e.cert != newCert {
			e.cert = newCert // one pointer swap: handshakes in progress keep the old one
			m.notifyExpiry(name, newCert.Leaf.NotAfter)
		}
		e.next = m.nextLook(e.cert, now, time.Time{})
	})
}

// finish applies update to name's entry, if still managed, and hands the name back to the run loop.
func (m *Manager) finish(name string, update func(*entry)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e := m.entries[name]; e != nil {
		update(e)
		e.busy = false
	}
}

// nextLook is when a name with a valid certificate is looked at again.
func (m *Manager) nextLook(cert *tls.Certificate, now, ariAt time.Time) time.Time {
	next := now.Add(m.opts.RenewCheckInterval)
	if cert != nil {
		if r := renewAt(cert.Leaf); r.Before(next) {
			next = r
		}
	}
	if !ariAt.IsZero() && ariAt.Before(next) {
		next = ariAt
	}
	if next.Before(now) {
		next = now
	}
	return next
}

// renewAt is the point where a third of the certificate's lifetime is left.
func renewAt(leaf *x509.Certificate) time.Time {
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	return leaf.NotAfter.Add(-life / 3)
}

// checkGate returns nil when name resolves to one of ExpectIPs.
func (m *Manager) checkGate(ctx context.Context, name string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	lookup := name
	if hostname.IsWildcard(name) {
		// "*" is no name to resolve; any name under the wildcard DNS record stands for all of them.
		lookup = "hopgate-check." + hostname.WildcardBase(name)
	}
	ips, err := m.opts.Resolver(ctx, lookup)
	if err != nil {
		return fmt.Errorf("resolve %s: %w", name, err)
	}
	for _, ip := range ips {
		for _, want := range m.opts.ExpectIPs {
			if ip.Equal(want) {
				return nil
			}
		}
	}
	return fmt.Errorf("%s resolves to %v, none of the expected addresses %v", name, ips, m.opts.ExpectIPs)
}

// needsRenewal decides whether cert must be replaced now, asking the CA's renewal information
// (ARI) at most every RenewCheckInterval. replaces is the ARI certificate ID of cert, if any.
func (m *Manager) needsRenewal(ctx context.Context, name string, cert *tls.Certificate, now time.Time, ariAt, ariNext *time.Time) (bool, string) {
	if cert == nil {
		return true, ""
	}
	replaces, _ := certificate.MakeARICertID(cert.Leaf)
	if !now.Before(renewAt(cert.Leaf)) {
		return true, replaces
	}
	if !ariAt.IsZero() && !now.Before(*ariAt) {
		return true, replaces
	}
	if now.Before(*ariNext) {
		return false, ""
	}
	*ariNext = now.Add(m.opts.RenewCheckInterval)
	cl, err := m.legoClients(ctx)
	if err != nil {
		m.log.Warn("acme: renewal information unavailable", "domain", name, "err", err)
		return false, ""
	}
	if cl.noARI.Load() {
		return false, ""
	}
	info, err := cl.both.Certificate.GetRenewalInfo(certificate.RenewalInfoRequest{Cert: cert.Leaf})
	if err != nil {
		if errors.Is(err, api.ErrNoARI) {
			cl.noARI.Store(true)
		} else {
			m.log.Warn("acme: renewal information unavailable", "domain", name, "err", err)
		}
		return false, ""
	}
	at := info.ShouldRenewAt(now, m.opts.RenewCheckInterval)
	if at == nil {
		return false, ""
	}
	*ariAt = *at
	if info.ExplanationURL != "" {
		m.log.Info("acme: CA suggests renewal", "domain", name, "at", *at, "explanation", info.ExplanationURL)
	}
	return !now.Before(*at), replaces
}

// renew orders a certificate for name under the storage lock, unless another gateway sharing the
// storage has just done so, and stores it.
func (m *Manager) renew(ctx context.Context, name string, old *tls.Certificate, replaces string) (_ *tls.Certificate, ordered bool, _ error) {
	lock := "certificates/" + name
	if err := m.storage.Lock(ctx, lock); err != nil {
		return nil, false, err
	}
	defer func() {
		if err := m.storage.Unlock(context.WithoutCancel(ctx), lock); err != nil {
			m.log.Warn("acme: unlock", "domain", name, "err", err)
		}
	}()
	if stored, err := m.loadCert(ctx, name); err == nil && (old == nil || !stored.Leaf.Equal(old.Leaf)) &&
		m.now().Before(renewAt(stored.Leaf)) {
		return stored, false, nil
	}

	res, err := m.obtain(ctx, name, replaces)
	var refused *orderRefusedError
	if errors.As(err, &refused) && replaces != "" && ctx.Err() == nil {
		// The CA did not take the ARI "replaces" field (already replaced, or an order it cannot
		// match): it is only a hint, so order again without it.
		m.log.Warn("acme: order naming the old certificate refused; ordering without it", "domain", name, "err", err)
		res, err = m.obtain(ctx, name, "")
	}
	if err != nil {
		return nil, true, err
	}
	cert, err := tls.X509KeyPair(res.Certificate, res.PrivateKey)
	if err != nil {
		return nil, true, fmt.Errorf("certificate from CA for %s: %w", name, err)
	}
	// Key first: a crash between the writes leaves a pair that does not match, which loadCert
	// rejects (and a new certificate is ordered), never a certificate served with the wrong key.
	if err := m.storage.Store(ctx, keyKey(name), res.PrivateKey); err != nil {
		return nil, true, err
	}
	if err := m.storage.Store(ctx, certKey(name), res.Certificate); err != nil {
		return nil, true, err
	}
	m.log.Info("acme: certificate obtained", "domain", name, "not_after", cert.Leaf.NotAfter)
	return &cert, true, nil
}

// obtain runs one order with both challenges offered; if a challenge was tried and failed, it runs
// a second order with only the other challenge.
func (m *Manager) obtain(ctx context.Context, name, replaces string) (*certificate.Resource, error) {
	cl, err := m.legoClients(ctx)
	if err != nil {
		return nil, err
	}
	req := certificate.ObtainRequest{Domains: []string{name}, Bundle: true, ReplacesCertID: replaces}
	if hostname.IsWildcard(name) {
		return m.obtainWildcard(ctx, cl, req)
	}
	m.setPresented(name, "")
	res, err := cl.both.Certificate.Obtain(req)
	if err == nil {
		return res, nil
	}
	if isAccountGone(err) {
		m.forgetAccount(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("order for %s: %w", name, err)
	}
	tried := m.setPresented(name, "")
	var other *certificateClient
	switch tried {
	case challenge.TLSALPN01:
		other = &certificateClient{challenge.HTTP01, cl.http01.Certificate}
	case challenge.HTTP01:
		other = &certificateClient{challenge.TLSALPN01, cl.tlsALPN.Certificate}
	default: // failed before any challenge: a CA or network error, nothing to gain from a retry now
		return nil, fmt.Errorf("order for %s: %w", name, &orderRefusedError{err})
	}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("order for %s with %s: %w", name, tried, err)
	}
	m.log.Warn("acme: challenge failed; trying the other one", "domain", name,
		"failed", string(tried), "next", string(other.typ), "err", err)
	res, err2 := other.c.Obtain(req)
	if err2 != nil {
		return nil, fmt.Errorf("order for %s: %s: %w; %s: %w", name, tried, err, other.typ, err2)
	}
	return res, nil
}

// ErrNoDNSProvider fails the order of a wildcard name on a manager without Options.DNSProvider.
var ErrNoDNSProvider = errors.New("a wildcard certificate needs DNS-01, and no DNS provider is set (HOP_ACME_DNS_PROVIDER)")

// obtainWildcard orders a wildcard name's certificate with DNS-01, the only challenge a CA accepts
// for it; there is no other challenge to fall back to.
func (m *Manager) obtainWildcard(ctx context.Context, cl *clients, req certificate.ObtainRequest) (*certificate.Resource, error) {
	name := req.Domains[0]
	if cl.dns01 == nil {
		return nil, fmt.Errorf("order for %s: %w", name, ErrNoDNSProvider)
	}
	m.setPresented(name, "")
	res, err := cl.dns01.Certificate.Obtain(req)
	if err == nil {
		return res, nil
	}
	if isAccountGone(err) {
		m.forgetAccount(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("order for %s: %w", name, err)
	}
	if m.setPresented(name, "") == "" {
		// Refused before the record was even published: renew may try again without "replaces".
		err = &orderRefusedError{err}
	}
	return nil, fmt.Errorf("order for %s with %s: %w", name, challenge.DNS01, err)
}

// orderRefusedError is an order that failed before any challenge was presented.
type orderRefusedError struct{ err error }

func (e *orderRefusedError) Error() string { return e.err.Error() }
func (e *orderRefusedError) Unwrap() error { return e.err }

type certificateClient struct {
	typ challenge.Type
	c   *certificate.Certifier
}

// setPresented sets the challenge recorded for name and returns the previous one.
func (m *Manager) setPresented(name string, t challenge.Type) challenge.Type {
	m.chMu.Lock()
	defer m.chMu.Unlock()
	prev := m.presented[name]
	if t == "" {
		delete(m.presented, name)
	} else {
		m.presented[name] = t
	}
	return prev
}

func isAccountGone(err error) bool {
	var pd *legoacme.ProblemDetails
	return errors.As(err, &pd) && pd.Type == "urn:ietf:params:acme:error:accountDoesNotExist"
}

// retryAfter is the wait a rate-limited CA asked for, or 0.
func retryAfter(err error) time.Duration {
	var rl *legoacme.RateLimitedError
	if !errors.As(err, &rl) || rl.RetryAfter == "" {
		return 0
	}
	d, perr := api.ParseRetryAfter(rl.RetryAfter)
	if perr != nil {
		return 0
	}
	return d
}

// loadCert reads name's stored certificate and key. The error wraps fs.ErrNotExist when none is stored.
func (m *Manager) loadCert(ctx context.Context, name string) (*tls.Certificate, error) {
	certPEM, err := m.storage.Load(ctx, certKey(name))
	if err != nil {
		return nil, err
	}
	keyPEM, err := m.storage.Load(ctx, keyKey(name))
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("stored certificate for %s: %w", name, err)
	}
	if err := cert.Leaf.VerifyHostname(name); err != nil {
		return nil, fmt.Errorf("stored certificate for %s: %w", name, err)
	}
	return &cert, nil
}
