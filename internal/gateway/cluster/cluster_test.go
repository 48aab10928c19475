package cluster_test

import (
	"context"
	"database/sql"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/hopgate/hopgate/internal/gateway/cluster"
	"github.com/hopgate/hopgate/internal/gateway/registry"
	"github.com/hopgate/hopgate/internal/testutil/pgtest"
	"github.com/hopgate/hopgate/internal/testutil/poll"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// tunnels is a gateway's table of tunnels: counts per domain, and when each domain was closed.
type tunnels struct {
	mu     sync.Mutex
	counts map[string]int
	closed map[string][]time.Time
}

func newTunnels(counts map[string]int) *tunnels {
	return &tunnels{counts: counts, closed: map[string][]time.Time{}}
}

func (t *tunnels) Counts() map[string]int {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := map[string]int{}
	for d, n := range t.counts {
		out[d] = n
	}
	return out
}

func (t *tunnels) CloseDomain(d string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed[d] = append(t.closed[d], time.Now())
}

func (t *tunnels) set(d string, n int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.counts[d] = n
}

func (t *tunnels) closes(d string) []time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]time.Time(nil), t.closed[d]...)
}

// member is one gateway of a test cluster.
type member struct {
	*cluster.Cluster
	store    *registry.Store
	tunnels  *tunnels
	events   chan cluster.Event
	resynced chan struct{}
	stop     func()
}

func open(t *testing.T, dsn string) *registry.Store {
	t.Helper()
	s, err := registry.Open(context.Background(), registry.Options{DSN: dsn})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// join starts a gateway id on dsn and waits for its first resync (it listens by then).
func join(t *testing.T, dsn, id string, counts map[string]int, heartbeat time.Duration) *member {
	t.Helper()
	m := &member{store: open(t, dsn), tunnels: newTunnels(counts), events: make(chan cluster.Event, 16), resynced: make(chan struct{}, 16)}
	c, err := cluster.New(cluster.Options{
		ID: id, DSN: dsn, Store: m.store, Tunnels: m.tunnels, Heartbeat: heartbeat,
		Changed: func(ev cluster.Event) { m.events <- ev },
		Resynced: func(context.Context, []string) {
			select {
			case m.resynced <- struct{}{}:
			default:
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	m.Cluster = c
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	var once sync.Once
	m.stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(m.stop)
	select {
	case <-m.resynced:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: no first resync", id)
	}
	return m
}

func TestClusterEventReachesOtherGateways(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DSN(t)
	a := join(t, dsn, "gw-a", map[string]int{}, 0)
	if _, _, err := a.store.Register(context.Background(), "app.example.com", ""); err != nil {
		t.Fatal(err)
	}
	b := join(t, dsn, "gw-b", map[string]int{"app.example.com": 1}, 0)
	c := join(t, dsn, "gw-c", map[string]int{"app.example.com": 2}, 0)

	for _, kind := range []string{cluster.RotateKey, cluster.Unregister, cluster.Policy} {
		start := time.Now()
		if err := a.Publish(context.Background(), kind, "app.example.com"); err != nil {
			t.Fatal(err)
		}
		for _, m := range []*member{b, c} {
			select {
			case ev := <-m.events:
				if ev.Event != kind || ev.Domain != "app.example.com" || ev.Origin != "gw-a" {
					t.Fatalf("event %+v, want %s of app.example.com from gw-a", ev, kind)
				}
				t.Logf("%s reached a gateway in %s", kind, time.Since(start))
			case <-time.After(time.Second):
				t.Fatalf("%s not applied within 1 s", kind)
			}
		}
	}
	// rotate-key and unregister closed the tunnels of b and c; the policy change did not.
	for _, m := range []*member{b, c} {
		if n := len(m.tunnels.closes("app.example.com")); n != 2 {
			t.Fatalf("tunnels closed %d times, want 2 (rotate-key, unregister)", n)
		}
	}
	// The gateway that made a change has applied it already.
	select {
	case ev := <-a.events:
		t.Fatalf("origin applied its own event %+v", ev)
	case <-time.After(100 * time.Millisecond):
	}
}

// TestClusterResyncAfterListenerKilled ends the listener's database session as a Postgres restart
// would; a key rotated while it was away (its notification lost) still closes the tunnels, by the
// resync that follows the reconnect, and the feed works again.
func TestClusterResyncAfterListenerKilled(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DSN(t)
	admin := open(t, dsn)
	if _, _, err := admin.Register(context.Background(), "app.example.com", ""); err != nil {
		t.Fatal(err)
	}
	b := join(t, dsn, "gw-b", map[string]int{"app.example.com": 1}, 0)
	killListener(t, admin)
	// Rotated behind the feed's back: nobody publishes it.
	if _, err := admin.RotateKey(context.Background(), "app.example.com"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	waitClosed(t, b, "app.example.com", 10*time.Second)
	t.Logf("resync after the reconnect closed the tunnels %s after the kill", time.Since(start))

	// The feed is back: a published event arrives within 1 s.
	a := join(t, dsn, "gw-a", map[string]int{}, 0)
	if err := a.Publish(context.Background(), cluster.Policy, "app.example.com"); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-b.events:
		if ev.Event != cluster.Policy {
			t.Fatalf("event %+v, want policy", ev)
		}
	case <-time.After(time.Second):
		t.Fatal("event not delivered after the reconnect")
	}
	// The resync adopted the new key: later resyncs do not close the tunnels again.
	if n := len(b.tunnels.closes("app.example.com")); n != 1 {
		t.Fatalf("tunnels closed %d times, want 1", n)
	}
}

// killListener ends the change feed's database session (one listener on the schema), as a
// Postgres restart would.
func killListener(t *testing.T, admin *registry.Store) {
	t.Helper()
	channel, err := admin.ChangesChannel(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("postgres", pgtest.BaseDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var killed int
	if err := db.QueryRow(`SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE query LIKE 'LISTEN %' AND position($1 in query) > 0`, channel).Scan(&killed); err != nil || killed != 1 {
		t.Fatalf("terminated %d listener sessions (%v), want 1", killed, err)
	}
}

func waitClosed(t *testing.T, m *member, domain string, within time.Duration) {
	t.Helper()
	deadline := time.After(within)
	for len(m.tunnels.closes(domain)) == 0 {
		select {
		case <-deadline:
			t.Fatalf("tunnels of %s not closed within %s", domain, within)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// TestClusterResyncKeyOfNewDomain: a domain registered after the gateway's last resync has no key
// there but the one its tunnel logged in with; a rotation missed while the feed was down is still
// found by the resync after the reconnect (it was not, before the login recorded its key).
func TestClusterResyncKeyOfNewDomain(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DSN(t)
	admin := open(t, dsn)
	b := join(t, dsn, "gw-b", map[string]int{}, 0)
	// Both registered after b's resync, each with a tunnel on b; only the first is rotated.
	const rotated, kept = "rotated.example.com", "kept.example.com"
	for _, name := range []string{rotated, kept} {
		_, key, err := admin.Register(context.Background(), name, "")
		if err != nil {
			t.Fatal(err)
		}
		d, err := admin.Authenticate(context.Background(), name, key)
		if err != nil || d.KeyID == "" {
			t.Fatalf("Authenticate: %+v, %v", d, err)
		}
		b.LoggedIn(name, d.KeyID)
		b.tunnels.set(name, 1)
	}
	killListener(t, admin)
	if _, err := admin.RotateKey(context.Background(), rotated); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, b, rotated, 10*time.Second)
	if n := len(b.tunnels.closes(kept)); n != 0 {
		t.Fatalf("tunnels of an unchanged key closed %d times", n)
	}
}

// TestClusterResyncUnregistered: a gateway's tunnels of a domain that is not in the store (deleted
// without a notification) are closed by the resync.
func TestClusterResyncUnregistered(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DSN(t)
	b := join(t, dsn, "gw-b", map[string]int{"gone.example.com": 1}, 0)
	if got := b.tunnels.closes("gone.example.com"); len(got) != 1 {
		t.Fatalf("tunnels of an unregistered domain closed %d times by the first resync, want 1", len(got))
	}
}

func TestClusterPresence(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DSN(t)
	const beat = 100 * time.Millisecond
	a := join(t, dsn, "gw-a", map[string]int{"app.example.com": 1}, beat)
	b := join(t, dsn, "gw-b", map[string]int{"app.example.com": 2, "other.example.com": 1}, beat)
	c := join(t, dsn, "gw-c", map[string]int{"app.example.com": 3}, beat)

	poll.Until(t, 5*time.Second, "a sees b and c", func() bool {
		return a.RemoteAgents("app.example.com") == 5 && a.RemoteAgents("other.example.com") == 1 && a.Gateways() == 3
	})
	b.tunnels.set("app.example.com", 0)
	poll.Until(t, 5*time.Second, "a sees b's agent gone", func() bool { return a.RemoteAgents("app.example.com") == 3 })

	// A clean stop removes the gateway's rows at once.
	c.stop()
	rows, err := a.store.PresenceSince(context.Background(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		if r.Gateway == "gw-c" {
			t.Fatalf("gw-c still has presence rows after its stop: %+v", rows)
		}
	}
	poll.Until(t, 5*time.Second, "a sees c gone", func() bool { return a.RemoteAgents("app.example.com") == 0 && a.Gateways() == 2 })

	// A gateway that dies leaves its rows behind; they stop counting after three heartbeats.
	// The ghost beats until a has seen it: a single beat lives three beats, which a loaded machine
	// can let pass before a's next read.
	ghost := open(t, dsn)
	var died time.Time
	poll.Until(t, 5*time.Second, "a sees the ghost", func() bool {
		if time.Since(died) >= beat {
			died = time.Now() // before the write: the row's time is no earlier
			if err := ghost.Heartbeat(context.Background(), "gw-ghost", map[string]int{"app.example.com": 7}); err != nil {
				t.Fatal(err)
			}
		}
		return a.RemoteAgents("app.example.com") == 7 && a.Gateways() == 3
	})
	poll.Until(t, 5*time.Second, "the ghost's rows expire", func() bool { return a.RemoteAgents("app.example.com") == 0 && a.Gateways() == 2 })
	if d := time.Since(died); d < 2*beat {
		t.Fatalf("the ghost expired after %s, before three heartbeats", d)
	}
}
