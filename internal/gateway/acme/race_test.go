package acme

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"sync"
	"testing"
	"time"
)

// TestACMETwoManagersOneOrder: two managers on one Postgres store, released at the same instant
// for one name, make exactly one order between them (counted by their ACME transports, which see
// every POST to Pebble's newOrder URL) and then hand out the same leaf and the same key.
func TestACMETwoManagersOneOrder(t *testing.T) {
	t.Parallel()
	dsn := migratedDSN(t)
	c := &cluster{}
	startClusterFront(t, c)
	pp, p := startClusterPebble(t, c, 0)
	a, b := newMember(t, p, dsn, "gwA", nil), newMember(t, p, dsn, "gwB", nil)
	c.members = []*member{a, b}
	const name = "race.cluster.test"

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

	if n := a.ct.orders.Load() + b.ct.orders.Load(); n != 1 {
		t.Errorf("newOrder POSTed %d times (gwA %d, gwB %d), want 1", n, a.ct.orders.Load(), b.ct.orders.Load())
	}
	if n := pp.Orders(); n != 1 {
		t.Errorf("Pebble created %d orders, want 1", n)
	}
	ca := servedPair(t, a, name, p.root)
	cb := servedPair(t, b, name, p.root)
	if !bytes.Equal(ca.Certificate[0], cb.Certificate[0]) {
		t.Error("the two managers serve different leaf certificates")
	}
	pubA, err := x509.MarshalPKIXPublicKey(ca.PrivateKey.(crypto.Signer).Public())
	if err != nil {
		t.Fatal(err)
	}
	pubB, err := x509.MarshalPKIXPublicKey(cb.PrivateKey.(crypto.Signer).Public())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(pubA, pubB) {
		t.Error("the two managers hold different private keys for the name")
	}
	leafPub, err := x509.MarshalPKIXPublicKey(ca.Leaf.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(pubA, leafPub) {
		t.Error("the private key handed out does not match the leaf")
	}
}

// servedPair is the verified key pair g hands out for name.
func servedPair(t *testing.T, g *member, name string, root *x509.CertPool) *tls.Certificate {
	t.Helper()
	served(t, g, name, root)
	c, err := g.m.GetCertificate(&tls.ClientHelloInfo{ServerName: name})
	if err != nil {
		t.Fatal(err)
	}
	return c
}
