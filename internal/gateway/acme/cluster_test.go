package acme

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"database/sql"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hopgate/hopgate/internal/testutil/pebbletest"
)

// member is one gateway of an in-process cluster: a Manager on its own PGStorage and pool.
type member struct {
	name string
	m    *Manager
	st   *PGStorage
	db   *sql.DB
	ct   *countingTransport
	stop func()

	dead     atomic.Bool
	killOnce sync.Once
}

// kill is the gateway dying mid-work: its connections go first, so neither the lease's renewal
// nor its release reaches the database, then its manager stops.
func (g *member) kill() {
	g.killOnce.Do(func() {
		g.dead.Store(true)
		_ = g.db.Close()
		g.stop()
	})
}

func (g *member) holds(lock string) bool {
	g.st.mu.Lock()
	defer g.st.mu.Unlock()
	return g.st.held[lock] != nil
}

// cluster is the gateways on one database, and the one address Pebble validates at: like a load
// balancer, it hands each challenge request to a gateway, preferring one that does not run the
// order, which can answer only from the shared storage.
type cluster struct {
	members []*member
	// gate, if set, is called with the name of every challenge request before it is answered.
	gate func(name string)

	byHolder, byOther atomic.Int64
	httpAddr, tlsAddr string
}

func (c *cluster) pick(name string) *member {
	var fallback *member
	for _, g := range c.members {
		if g == nil || g.dead.Load() {
			continue
		}
		if !g.holds("certificates/" + name) {
			c.byOther.Add(1)
			return g
		}
		fallback = g
	}
	if fallback != nil {
		c.byHolder.Add(1)
	}
	return fallback
}

func startClusterFront(t *testing.T, c *cluster) {
	t.Helper()
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c.httpAddr, c.tlsAddr = hl.Addr().String(), tl.Addr().String()
	httpSrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name := requestHost(r)
		if c.gate != nil {
			c.gate(name)
		}
		g := c.pick(name)
		if g == nil {
			http.Error(w, "no gateway alive", http.StatusServiceUnavailable)
			return
		}
		g.m.HTTPHandler(nil).ServeHTTP(w, r)
	})}
	tlsCfg := &tls.Config{
		NextProtos: []string{ALPNProto},
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			if c.gate != nil {
				c.gate(hello.ServerName)
			}
			g := c.pick(hello.ServerName)
			if g == nil {
				return nil, fmt.Errorf("no gateway alive")
			}
			return g.m.GetCertificate(hello)
		},
	}
	httpsSrv := &http.Server{
		Handler:      http.NotFoundHandler(),
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){ALPNProto: func(*http.Server, *tls.Conn, http.Handler) {}},
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = httpSrv.Serve(hl) }()
	go func() { defer wg.Done(); _ = httpsSrv.Serve(tls.NewListener(tl, tlsCfg)) }()
	t.Cleanup(func() {
		_ = httpSrv.Close()
		_ = httpsSrv.Close()
		wg.Wait()
	})
}

// startClusterPebble runs Pebble against the front. The counting of orders is Pebble's own (its
// log), so it covers every gateway and every account.
func startClusterPebble(t *testing.T, c *cluster, validity int) (*pebbletest.Pebble, *pebble) {
	t.Helper()
	pp := pebbleBin.Start(t, pebbletest.Config{HTTPPort: port(c.httpAddr), TLSPort: port(c.tlsAddr), Validity: validity})
	return pp, &pebble{dirURL: pp.DirURL, mgmtURL: pp.MgmtURL, root: pp.Root}
}

const (
	clusterLockTTL  = 2 * time.Second
	clusterLockPoll = 100 * time.Millisecond
)

// newMember builds a gateway on dsn. Its cleanups (stop, then storage and pool) run in that order.
func newMember(t *testing.T, p *pebble, dsn, name string, mod func(*Options)) *member {
	t.Helper()
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	st := NewPGStorage(db, PGOptions{Holder: name, LockTTL: clusterLockTTL, LockPoll: clusterLockPoll,
		Logger: testLogger(t).With("gateway", name)})
	t.Cleanup(st.Close)
	m, ct := newManager(t, p, "", func(o *Options) {
		o.Storage = st
		o.Logger = testLogger(t).With("gateway", name)
		if mod != nil {
			mod(o)
		}
	})
	return &member{name: name, m: m, st: st, db: db, ct: ct}
}

func (g *member) run(t *testing.T) { g.stop = run(t, g.m) }

// served is the certificate g serves for name, verified against Pebble's root.
func served(t *testing.T, g *member, name string, root *x509.CertPool) *x509.Certificate {
	t.Helper()
	c, err := g.m.GetCertificate(&tls.ClientHelloInfo{ServerName: name})
	if err != nil {
		t.Fatalf("%s: %v", g.name, err)
	}
	inter := x509.NewCertPool()
	for _, der := range c.Certificate[1:] {
		ic, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		inter.AddCert(ic)
	}
	if _, err := c.Leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: root, Intermediates: inter}); err != nil {
		t.Fatalf("%s serves a certificate for %s that does not verify: %v", g.name, name, err)
	}
	return c.Leaf
}

func sameSerial(t *testing.T, members []*member, name string, root *x509.CertPool) *x509.Certificate {
	t.Helper()
	first := served(t, members[0], name, root)
	for _, g := range members[1:] {
		if c := served(t, g, name, root); c.SerialNumber.Cmp(first.SerialNumber) != 0 {
			t.Fatalf("%s serves serial %v, %s serves %v", g.name, c.SerialNumber, members[0].name, first.SerialNumber)
		}
	}
	return first
}

// sameKeyPair checks that every member hands out the same leaf for name with the same private key,
// and that the key is the leaf's.
func sameKeyPair(t *testing.T, members []*member, name string, root *x509.CertPool) {
	t.Helper()
	var firstLeaf, firstPub []byte
	for _, g := range members {
		served(t, g, name, root)
		c, err := g.m.GetCertificate(&tls.ClientHelloInfo{ServerName: name})
		if err != nil {
			t.Fatal(err)
		}
		pub, err := x509.MarshalPKIXPublicKey(c.PrivateKey.(crypto.Signer).Public())
		if err != nil {
			t.Fatal(err)
		}
		leafPub, err := x509.MarshalPKIXPublicKey(c.Leaf.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(pub, leafPub) {
			t.Errorf("%s: the private key handed out does not match the leaf", g.name)
		}
		if firstLeaf == nil {
			firstLeaf, firstPub = c.Certificate[0], pub
			continue
		}
		if !bytes.Equal(c.Certificate[0], firstLeaf) {
			t.Errorf("%s serves a different leaf certificate from %s", g.name, members[0].name)
		}
		if !bytes.Equal(pub, firstPub) {
			t.Errorf("%s holds a different private key for the name from %s", g.name, members[0].name)
		}
	}
}

func accounts(members []*member) (n int64) {
	for _, g := range members {
		n += g.ct.accounts.Load()
	}
	return n
}

// TestClusterOneOrderPerName: three gateways on one Postgres store, released at the same instant
// for one name, make one order between them (counted by Pebble and by their ACME transports, which
// see every POST to the newOrder URL), with one shared account; the challenge is answered by a
// gateway that did not order, from the storage; all three serve the one certificate and hold the
// one key pair. This is issue 21's "two managers racing for one name on one storage": with the
// storage's lock a no-op it sees two or three orders.
func TestClusterOneOrderPerName(t *testing.T) {
	t.Parallel()
	dsn := migratedDSN(t)
	c := &cluster{}
	startClusterFront(t, c)
	pp, p := startClusterPebble(t, c, 0)
	for i := range 3 {
		c.members = append(c.members, newMember(t, p, dsn, fmt.Sprintf("gw%d", i), nil))
	}
	const name = "one.cluster.test"
	start := make(chan struct{})
	var wg sync.WaitGroup
	for _, g := range c.members {
		wg.Add(1)
		go func() { defer wg.Done(); <-start; g.m.Manage(context.Background(), name); g.run(t) }()
	}
	close(start)
	wg.Wait()
	for _, g := range c.members {
		waitState(t, g.m, name, StateValid, 45*time.Second)
	}
	sameSerial(t, c.members, name, p.root)
	sameKeyPair(t, c.members, name, p.root)
	if n := pp.Orders(); n != 1 {
		t.Errorf("Pebble got %d orders, want 1 for the cluster", n)
	}
	var posted int64
	for _, g := range c.members {
		posted += g.ct.orders.Load()
	}
	if posted != 1 {
		t.Errorf("newOrder POSTed %d times by the cluster, want 1", posted)
	}
	if n := accounts(c.members); n != 1 {
		t.Errorf("%d accounts registered, want 1 shared by the cluster", n)
	}
	if c.byOther.Load() == 0 || c.byHolder.Load() != 0 {
		t.Errorf("challenge requests answered by the order's holder %d, by another gateway %d; want only others",
			c.byHolder.Load(), c.byOther.Load())
	}
}

// TestClusterRenewsOnce: a short-lived certificate comes due on the three gateways at the same time;
// one renews it and the others take the renewed one from the storage.
func TestClusterRenewsOnce(t *testing.T) {
	t.Parallel()
	dsn := migratedDSN(t)
	c := &cluster{}
	startClusterFront(t, c)
	pp, p := startClusterPebble(t, c, 15)
	for i := range 3 {
		c.members = append(c.members, newMember(t, p, dsn, fmt.Sprintf("gw%d", i), func(o *Options) {
			o.RenewCheckInterval = time.Second
			o.RefreshInterval = time.Second
		}))
	}
	const name = "renew.cluster.test"
	for _, g := range c.members {
		g.m.Manage(context.Background(), name)
		g.run(t)
	}
	for _, g := range c.members {
		waitState(t, g.m, name, StateValid, 45*time.Second)
	}
	first := sameSerial(t, c.members, name, p.root)
	// Status, not GetCertificate, while renewals run: it reads the certificate under the lock.
	deadline := time.Now().Add(30 * time.Second)
	for _, g := range c.members {
		for g.m.Status(name).NotAfter.Equal(first.NotAfter) {
			if time.Now().After(deadline) {
				t.Fatalf("%s not renewed: %+v", g.name, g.m.Status(name))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	for _, g := range c.members {
		g.stop()
	}
	orders := pp.Orders()
	logs := pp.Logs()
	// Pebble's renewal information for a certificate this short opens its window at issuance, so
	// renewals follow one another; what must hold is one order per renewal: each is an ARI
	// replacement of the certificate before it, no certificate is replaced twice, and there is no
	// order besides the first and those replacements (a second gateway renewing the same certificate
	// would name it again, or, refused, order without naming it).
	replaced := map[string]int{}
	for _, m := range regexp.MustCompile(`ARI: order "[^"]+" is a replacement of "([^"]+)"`).FindAllStringSubmatch(logs, -1) {
		replaced[m[1]]++
	}
	var replacements int
	for id, n := range replaced {
		replacements += n
		if n != 1 {
			t.Errorf("order %s replaced %d times, want once", id, n)
		}
	}
	if replacements == 0 || orders != 1+replacements {
		t.Errorf("Pebble got %d orders and %d replacement orders; want the first order plus replacements only", orders, replacements)
	}
	renewed := sameSerial(t, c.members, name, p.root)
	if renewed.SerialNumber.Cmp(first.SerialNumber) == 0 || renewed.NotAfter.Before(first.NotAfter) {
		t.Errorf("renewed certificate %v (until %v), first %v (until %v)", renewed.SerialNumber, renewed.NotAfter, first.SerialNumber, first.NotAfter)
	}
	t.Logf("%d orders, %d of them replacements", orders, replacements)
}

// TestClusterHolderDiesMidOrder: the gateway running the order dies while Pebble validates; its
// lease keeps the others off until it expires, then one of them orders again (one extra order)
// and both survivors serve the certificate.
func TestClusterHolderDiesMidOrder(t *testing.T) {
	t.Parallel()
	dsn := migratedDSN(t)
	const name = "die.cluster.test"
	validating := make(chan struct{})
	release := make(chan struct{})
	var gated atomic.Bool
	c := &cluster{gate: func(n string) {
		// Only the first challenge request waits, until the holder has been killed.
		if n != name || !gated.CompareAndSwap(false, true) {
			return
		}
		close(validating)
		select {
		case <-release:
		case <-time.After(20 * time.Second):
		}
	}}
	startClusterFront(t, c)
	pp, p := startClusterPebble(t, c, 0)
	for i := range 3 {
		c.members = append(c.members, newMember(t, p, dsn, fmt.Sprintf("gw%d", i), nil))
	}
	holder, survivors := c.members[0], c.members[1:]
	// The holder starts alone, so that it is the one whose order is cut short.
	holder.m.Manage(context.Background(), name)
	holder.run(t)
	deadline := time.Now().Add(20 * time.Second)
	for !holder.holds("certificates/" + name) {
		if time.Now().After(deadline) {
			t.Fatal("the first gateway never took the order's lease")
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, g := range survivors {
		g.m.Manage(context.Background(), name)
		g.run(t)
	}
	select {
	case <-validating:
	case <-time.After(30 * time.Second):
		t.Fatal("Pebble never validated the first order")
	}
	killed := time.Now()
	holder.kill()
	close(release)

	for _, g := range survivors {
		waitState(t, g.m, name, StateValid, 45*time.Second)
	}
	took := time.Since(killed)
	sameSerial(t, survivors, name, p.root)
	if n := pp.Orders(); n != 2 {
		t.Errorf("Pebble got %d orders, want 2: the dead gateway's and one more", n)
	}
	// The lease was renewed at most TTL/3 before the kill, so the takeover waited at least 2/3 TTL.
	if took < clusterLockTTL*2/3-100*time.Millisecond {
		t.Errorf("certificate issued %v after the holder died, before its lease (TTL %v) expired", took, clusterLockTTL)
	}
	t.Logf("issued %v after the holder died", took)
}
