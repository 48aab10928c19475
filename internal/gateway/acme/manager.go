package acme

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-acme/lego/v4/challenge"
	"golang.org/x/time/rate"

	"github.com/hopgate/hopgate/internal/gateway/hostname"
)

// States of a name's certificate, as reported by Status.
const (
	StateNone    = "none"    // not managed, or managed and not looked at yet
	StatePending = "pending" // waiting for the name to resolve to one of Options.ExpectIPs
	StateValid   = "valid"   // a certificate is served (LastError may tell of a failed renewal)
	StateFailed  = "failed"  // no certificate: the last order failed; retried with backoff
)

// CertStatus is what the admin API shows about a name's certificate.
type CertStatus struct {
	State     string    `json:"state"`
	NotAfter  time.Time `json:"not_after,omitzero"`
	LastError string    `json:"last_error,omitempty"`
}

// Options configure a Manager. CADir and CacheDir (or Storage) are required.
type Options struct {
	CADir    string // ACME directory URL
	Email    string // account contact; may be empty
	CARoots  string // optional PEM file of extra roots to trust for the ACME server (e.g. Pebble's)
	CacheDir string // file storage directory, used when Storage is nil
	Storage  Storage

	// HTTPClient talks to the CA. When nil a client with sane timeouts is built. CARoots are added
	// to its transport when that transport is nil or an *http.Transport.
	HTTPClient *http.Client

	// ExpectIPs, when set, gates names: one is ordered and served only if it resolves to one of
	// them. Resolver (default net.DefaultResolver) does the lookups.
	ExpectIPs []net.IP
	Resolver  func(ctx context.Context, host string) ([]net.IP, error)

	// DNSProvider solves DNS-01 challenges (one of lego's DNS providers), the only challenge a CA
	// accepts for a wildcard name ("*.apps.example.com"); other names keep HTTP-01 and TLS-ALPN-01.
	// Nil: orders for wildcard names fail with ErrNoDNSProvider.
	DNSProvider challenge.Provider
	// DNSResolvers, if set, are the DNS servers (host:port) asked whether a DNS-01 record is visible
	// before the CA is told to look, instead of the system's resolvers and the zone's authoritative
	// servers (tests, split-horizon DNS). lego keeps them in a package variable: one setting per
	// process.
	DNSResolvers []string

	RenewCheckInterval time.Duration // how often every name is looked at; default 6h
	// RefreshInterval is how often certificates are reloaded from a Storage shared with other
	// gateways (PGStorage), so that one renewed elsewhere is served here; default 30s. Unused
	// with a Storage of this gateway alone.
	RefreshInterval time.Duration
	Logger          *slog.Logger // default slog.Default()

	// OnExpiry is called whenever the served certificate of a name changes, with its NotAfter, and
	// with the zero time when the name stops being served (Unmanage). It feeds
	// hopgate_certificate_expiry_timestamp_seconds{name}.
	OnExpiry func(name string, notAfter time.Time)
	// OnOrder is called after every order attempt with its result (nil on success), for a metric.
	OnOrder func(name string, err error)

	Now func() time.Time // clock for renewal decisions; default time.Now
}

// DefaultRenewCheckInterval is the default Options.RenewCheckInterval.
const DefaultRenewCheckInterval = 6 * time.Hour

// backoffSteps are the waits after the 1st, 2nd, 3rd and later consecutive failures of a name.
var backoffSteps = []time.Duration{time.Minute, 10 * time.Minute, 100 * time.Minute, 24 * time.Hour}

// gateSteps are the waits before looking again at a name that does not resolve to ExpectIPs:
// DNS changes are usually made just before or after registration, so look soon, then less often.
var gateSteps = []time.Duration{time.Minute, 5 * time.Minute, 15 * time.Minute}

// maxParallel bounds the concurrent orders (and checks) of one Manager.
const maxParallel = 4

type gateState int

const (
	gateUnknown gateState = iota
	gateOK
	gateFailed
)

// entry is one managed name. Guarded by Manager.mu.
type entry struct {
	name     string
	cert     *tls.Certificate // served; replaced whole, never mutated
	gate     gateState
	lastErr  string
	failures int // consecutive failed attempts (orders or name gate)
	failed   bool
	next     time.Time // when the run loop looks at the name again; zero = now
	busy     bool      // a worker owns the name
	ariAt    time.Time // renewal time suggested by ARI; zero = none
	ariNext  time.Time // when to ask ARI again
	missAt   time.Time // last storage look caused by a handshake without a certificate
}

// Manager obtains, stores, renews and serves one certificate per name.
type Manager struct {
	opts    Options
	log     *slog.Logger
	storage Storage
	shared  bool // storage is used by other gateways too (see shared.go)
	// challengeLookups limits the storage reads of challenge requests (shared storage only).
	challengeLookups *rate.Limiter
	httpClient       *http.Client
	now              func() time.Time

	mu          sync.RWMutex
	entries     map[string]*entry
	defaultName string

	chMu       sync.Mutex
	httpTokens map[string]string           // HTTP-01 token -> key authorization
	alpnCerts  map[string]*tls.Certificate // name -> TLS-ALPN-01 certificate
	presented  map[string]challenge.Type   // name -> challenge last presented

	clientMu sync.Mutex
	clients  *clients

	kick    chan struct{}
	running atomic.Bool
	life    context.Context // cancelled when Run ends: aborts HTTP requests of orders in flight
	stop    context.CancelFunc
}

// New checks the options and builds a Manager. Nothing is contacted until Run.
func New(o Options) (*Manager, error) {
	if o.CADir == "" {
		return nil, errors.New("acme: CA directory URL is required")
	}
	if o.RenewCheckInterval <= 0 {
		o.RenewCheckInterval = DefaultRenewCheckInterval
	}
	if o.RefreshInterval <= 0 {
		o.RefreshInterval = DefaultRefreshInterval
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Resolver == nil {
		o.Resolver = func(ctx context.Context, host string) ([]net.IP, error) {
			return net.DefaultResolver.LookupIP(ctx, "ip", host)
		}
	}
	st := o.Storage
	if st == nil {
		fs, err := NewFileStorage(o.CacheDir)
		if err != nil {
			return nil, err
		}
		st = fs
	}
	life, stop := context.WithCancel(context.Background())
	hc, err := buildHTTPClient(o.HTTPClient, o.CARoots, life)
	if err != nil {
		stop()
		return nil, err
	}
	setLegoLogger()
	return &Manager{
		opts:             o,
		log:              o.Logger,
		storage:          st,
		shared:           isShared(st),
		challengeLookups: rate.NewLimiter(challengeLookupsPerSecond, challengeLookupsBurst),
		httpClient:       hc,
		now:              o.Now,
		entries:          make(map[string]*entry),
		httpTokens:       make(map[string]string),
		alpnCerts:        make(map[string]*tls.Certificate),
		presented:        make(map[string]challenge.Type),
		kick:             make(chan struct{}, 1),
		life:             life,
		stop:             stop,
	}, nil
}

// buildHTTPClient returns the client for the CA: base (or a default one) with CARoots trusted and
// every request bound to life, so that stopping Run aborts orders in flight (lego's calls take no
// context of their own).
func buildHTTPClient(base *http.Client, caRoots string, life context.Context) (*http.Client, error) {
	var hc http.Client
	if base != nil {
		hc = *base
	}
	rt := hc.Transport
	if caRoots != "" {
		pemBytes, err := os.ReadFile(caRoots)
		if err != nil {
			return nil, fmt.Errorf("acme: CA roots: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pemBytes) {
			return nil, fmt.Errorf("acme: CA roots: no PEM certificate in %s", caRoots)
		}
		var t *http.Transport
		switch tt := rt.(type) {
		case nil:
			t = http.DefaultTransport.(*http.Transport).Clone()
		case *http.Transport:
			t = tt.Clone()
		default:
			return nil, errors.New("acme: CA roots need Options.HTTPClient.Transport to be an *http.Transport")
		}
		if t.TLSClientConfig == nil {
			t.TLSClientConfig = &tls.Config{}
		}
		t.TLSClientConfig.RootCAs = pool
		rt = t
	}
	if rt == nil {
		rt = http.DefaultTransport
	}
	// The timeout moves into the transport: http.Client's own keeps a goroutine per request until
	// the body is closed, and lego leaves some bodies open; a context deadline costs no goroutine.
	timeout := hc.Timeout
	if timeout <= 0 {
		timeout = 2 * time.Minute
	}
	hc.Timeout = 0
	hc.Transport = &lifeTransport{base: rt, life: life, timeout: timeout}
	return &hc, nil
}

type lifeTransport struct {
	base    http.RoundTripper
	life    context.Context
	timeout time.Duration
}

func (t *lifeTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if t.life.Err() != nil {
		return nil, fmt.Errorf("acme: manager stopped: %w", t.life.Err())
	}
	ctx, cancel := context.WithTimeout(r.Context(), t.timeout)
	stop := context.AfterFunc(t.life, cancel)
	resp, err := t.base.RoundTrip(r.WithContext(ctx))
	if err != nil {
		stop()
		cancel()
		return nil, err
	}
	resp.Body = &cancelBody{ReadCloser: resp.Body, done: func() { stop(); cancel() }}
	return resp, nil
}

// cancelBody releases the request's context when the body is closed.
type cancelBody struct {
	io.ReadCloser
	once sync.Once
	done func()
}

func (b *cancelBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(b.done)
	return err
}

// Manage adds names to the managed set and loads their stored certificates, which are served from
// then on. Run orders a certificate for a name without a valid one (in the background, with backoff
// on failure) and renews it. Managing a name again does nothing. Invalid names are logged and skipped.
func (m *Manager) Manage(ctx context.Context, names ...string) {
	added := false
	for _, raw := range names {
		name, err := hostname.CanonicalDomain(raw)
		if err != nil {
			m.log.Warn("acme: not managing invalid name", "domain", raw, "err", err)
			continue
		}
		m.mu.RLock()
		_, exists := m.entries[name]
		m.mu.RUnlock()
		if exists {
			continue
		}
		cert, err := m.loadCert(ctx, name)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			m.log.Warn("acme: stored certificate unusable; a new one will be ordered", "domain", name, "err", err)
		}
		m.mu.Lock()
		if _, exists := m.entries[name]; !exists {
			m.entries[name] = &entry{name: name, cert: cert}
			added = true
			if cert != nil {
				m.notifyExpiry(name, cert.Leaf.NotAfter)
			}
		}
		m.mu.Unlock()
	}
	if added {
		m.wake()
	}
}

// Unmanage stops renewing name and serving its certificate (an unregistered domain). The stored
// files stay, so registering the name again reuses a still valid certificate.
func (m *Manager) Unmanage(name string) {
	name, err := hostname.CanonicalDomain(name)
	if err != nil {
		return
	}
	m.mu.Lock()
	_, ok := m.entries[name]
	delete(m.entries, name)
	m.mu.Unlock()
	if ok {
		m.notifyExpiry(name, time.Time{})
	}
}

// Names lists the managed names, sorted.
func (m *Manager) Names() []string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return slices.Sorted(maps.Keys(m.entries))
}

// SetDefault names the certificate served for an unknown or missing SNI: the gateway's own name.
func (m *Manager) SetDefault(name string) {
	if n, err := hostname.CanonicalDomain(name); err == nil {
		name = n
	}
	m.mu.Lock()
	m.defaultName = name
	m.mu.Unlock()
}

// Status reports the certificate state of name.
func (m *Manager) Status(name string) CertStatus {
	if n, err := hostname.CanonicalDomain(name); err == nil {
		name = n
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	e := m.entries[name]
	if e == nil {
		return CertStatus{State: StateNone}
	}
	st := CertStatus{LastError: e.lastErr}
	switch {
	case e.gate == gateFailed:
		st.State = StatePending
	case e.cert != nil:
		st.State = StateValid
	case e.failed:
		st.State = StateFailed
	default:
		st.State = StateNone
	}
	if e.cert != nil {
		st.NotAfter = e.cert.Leaf.NotAfter
	}
	return st
}

// NameStatus is one managed name's certificate as the console lists it.
type NameStatus struct {
	Name string `json:"name"`
	CertStatus
	Issuer string `json:"issuer,omitempty"`
	// NextRenewal is when the certificate is due for renewal (the CA's suggestion when it gave
	// one, else when a third of its lifetime is left); after a failure, when the next try is.
	NextRenewal time.Time `json:"next_renewal,omitzero"`
}

// List returns every managed name's status, sorted by name.
func (m *Manager) List() []NameStatus {
	m.mu.RLock()
	names := make([]string, 0, len(m.entries))
	for n := range m.entries {
		names = append(names, n)
	}
	m.mu.RUnlock()
	slices.Sort(names)
	out := make([]NameStatus, 0, len(names))
	for _, n := range names {
		ns := NameStatus{Name: n, CertStatus: m.Status(n)}
		m.mu.RLock()
		if e := m.entries[n]; e != nil {
			switch {
			case e.cert != nil && e.cert.Leaf != nil:
				ns.Issuer = e.cert.Leaf.Issuer.CommonName
				ns.NextRenewal = renewAt(e.cert.Leaf)
				if !e.ariAt.IsZero() && e.ariAt.Before(ns.NextRenewal) {
					ns.NextRenewal = e.ariAt
				}
				if e.failures > 0 && e.next.After(ns.NextRenewal) {
					ns.NextRenewal = e.next
				}
			case e.failures > 0:
				ns.NextRenewal = e.next
			}
		}
		m.mu.RUnlock()
		out = append(out, ns)
	}
	return out
}

// GetCertificate is for tls.Config.GetCertificate. A TLS-ALPN-01 validation (ALPN acme-tls/1)
// gets the challenge certificate; otherwise the certificate of the SNI name is served, and an
// unknown or missing SNI gets the default name's certificate. It never starts an order. With a
// shared Storage, a managed name without a certificate here is looked up there first.
func (m *Manager) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	name, err := hostname.Canonical(hello.ServerName)
	if err != nil {
		name = ""
	}
	if slices.Contains(hello.SupportedProtos, ALPNProto) {
		return m.challengeCert(name)
	}
	m.mu.RLock()
	e := m.entries[name]
	if e != nil && e.cert != nil && e.gate != gateFailed {
		c := e.cert // e.cert is replaced under m.mu on renewal
		m.mu.RUnlock()
		return c, nil
	}
	missed := e != nil && e.cert == nil && e.gate != gateFailed
	m.mu.RUnlock()
	if missed {
		if c := m.reloadOnMiss(name); c != nil {
			return c, nil
		}
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	// A name one label under a managed wildcard gets the wildcard's certificate. Only on a miss of
	// the exact name, which is also where the (small) allocation of the candidate happens.
	if w := hostname.WildcardOf(name); w != "" {
		if e := m.entries[w]; e != nil && e.cert != nil && e.gate != gateFailed {
			return e.cert, nil
		}
	}
	if e := m.entries[m.defaultName]; e != nil && e.cert != nil {
		return e.cert, nil
	}
	return nil, fmt.Errorf("acme: no certificate for %q", hello.ServerName)
}

func (m *Manager) notifyExpiry(name string, notAfter time.Time) {
	if m.opts.OnExpiry != nil {
		m.opts.OnExpiry(name, notAfter)
	}
}

func (m *Manager) wake() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// Run looks at every managed name at start and every RenewCheckInterval, orders missing
// certificates, renews those with less than a third of their lifetime left (or when the CA's
// renewal information says so), and retries failures with backoff (about 1m, 10m, 100m, then daily).
// It returns when ctx ends, after the orders in flight have been aborted. Run may be called once.
func (m *Manager) Run(ctx context.Context) error {
	if !m.running.CompareAndSwap(false, true) {
		return errors.New("acme: Run called twice")
	}
	var wg sync.WaitGroup
	defer func() {
		m.stop()
		wg.Wait()
	}()
	m.refresher(ctx, &wg)
	sem := make(chan struct{}, maxParallel)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		case <-m.kick:
		}
		now := m.now()
		for _, name := range m.due(now) {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				m.release(name)
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				m.maintain(ctx, name)
				m.wake()
			}()
		}
		timer.Reset(m.untilNext(m.now()))
	}
}

// due marks and returns the names whose time has come.
func (m *Manager) due(now time.Time) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var names []string
	for name, e := range m.entries {
		if !e.busy && !now.Before(e.next) {
			e.busy = true
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

func (m *Manager) release(name string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e := m.entries[name]; e != nil {
		e.busy = false
	}
}

// untilNext is the wait until the earliest scheduled look, at most RenewCheckInterval.
func (m *Manager) untilNext(now time.Time) time.Duration {
	wait := m.opts.RenewCheckInterval
	m.mu.RLock()
	defer m.mu.RUnlock()
	for _, e := range m.entries {
		if e.busy {
			continue
		}
		if d := e.next.Sub(now); d < wait {
			wait = d
		}
	}
	return max(wait, 0)
}
