package acme

import (
	"context"
	"database/sql"
	"errors"
	"io/fs"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hopgate/hopgate/internal/testutil/pgtest"
	"github.com/hopgate/hopgate/migrations"
)

// migratedDSN is a fresh schema with the registry's migrations applied, 000005's acme tables
// among them, as registry.Open leaves it for the gateways.
func migratedDSN(t *testing.T) string {
	t.Helper()
	dsn := pgtest.DSN(t)
	db := openDB(t, dsn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := migrations.Up(ctx, db, migrations.Postgres); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	return dsn
}

// openDB is one gateway's connection pool: each gateway of a cluster has its own.
func openDB(t *testing.T, dsn string) *sql.DB {
	t.Helper()
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// newPGStorage is a PGStorage with leases short enough for a test; Close runs at cleanup so that
// no keep-alive outlives the test.
func newPGStorage(t *testing.T, db *sql.DB, holder string, ttl time.Duration) *PGStorage {
	t.Helper()
	s := NewPGStorage(db, PGOptions{Holder: holder, LockTTL: ttl, LockPoll: 50 * time.Millisecond, Logger: testLogger(t)})
	t.Cleanup(s.Close)
	return s
}

func TestPGStorageKeys(t *testing.T) {
	t.Parallel()
	dsn := migratedDSN(t)
	s := newPGStorage(t, openDB(t, dsn), "a", 0)
	other := newPGStorage(t, openDB(t, dsn), "b", 0) // another gateway on the same database
	ctx := context.Background()

	if _, err := s.Load(ctx, "certificates/none.crt"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load of a missing key: %v, want fs.ErrNotExist", err)
	}
	if err := s.Store(ctx, "certificates/a.crt", []byte("one")); err != nil {
		t.Fatal(err)
	}
	if err := s.Store(ctx, "certificates/a.crt", []byte("two")); err != nil {
		t.Fatal(err)
	}
	if b, err := other.Load(ctx, "certificates/a.crt"); err != nil || string(b) != "two" {
		t.Fatalf("Load from the other gateway = %q, %v; want the last value", b, err)
	}
	if err := s.Store(ctx, "empty", nil); err != nil {
		t.Fatal(err)
	}
	if b, err := s.Load(ctx, "empty"); err != nil || len(b) != 0 {
		t.Fatalf("Load of an empty value = %q, %v", b, err)
	}

	for _, k := range []string{"certificates/b.key", "certificates/sub/c.crt", "certificatesX/d", "cert_/e", "accounts/ca/x/key.pem", "top"} {
		if err := s.Store(ctx, k, []byte(k)); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		prefix    string
		recursive bool
		want      []string
	}{
		{"certificates", false, []string{"certificates/a.crt", "certificates/b.key"}},
		{"certificates/", false, []string{"certificates/a.crt", "certificates/b.key"}},
		{"certificates", true, []string{"certificates/a.crt", "certificates/b.key", "certificates/sub/c.crt"}},
		// A LIKE pattern would take "_" for any character and match "certificates/…".
		{"cert_", true, []string{"cert_/e"}},
		{"accounts", false, nil},
		{"accounts", true, []string{"accounts/ca/x/key.pem"}},
		{"", false, []string{"empty", "top"}},
		{"missing", true, nil},
	} {
		got, err := other.List(ctx, tc.prefix, tc.recursive)
		if err != nil {
			t.Fatalf("List(%q, %v): %v", tc.prefix, tc.recursive, err)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("List(%q, %v) = %q, want %q", tc.prefix, tc.recursive, got, tc.want)
		}
	}
	all, err := s.List(ctx, "", true)
	if err != nil || len(all) != 8 || !slices.IsSorted(all) {
		t.Errorf("List(\"\", true) = %q, %v; want the 8 keys, sorted", all, err)
	}

	if err := other.Delete(ctx, "certificates/a.crt"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(ctx, "certificates/a.crt"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load after Delete: %v, want fs.ErrNotExist", err)
	}
	if err := s.Delete(ctx, "certificates/a.crt"); err != nil {
		t.Fatalf("Delete of a missing key: %v", err)
	}

	for _, bad := range []string{"", "/certificates/a.crt", "certificates//a.crt", strings.Repeat("k", pgStorageKeyMaxSize+1)} {
		if _, err := s.Load(ctx, bad); err == nil || errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Load(%.20q): %v, want an invalid-key error", bad, err)
		}
		if err := s.Store(ctx, bad, []byte("x")); err == nil {
			t.Errorf("Store(%.20q) accepted", bad)
		}
		if err := s.Delete(ctx, bad); err == nil {
			t.Errorf("Delete(%.20q) accepted", bad)
		}
		if bad != "" { // "" lists everything
			if _, err := s.List(ctx, bad, true); err == nil {
				t.Errorf("List(%.20q) accepted", bad)
			}
		}
	}
	if n := len(mustList(t, s, "", true)); n != 7 {
		t.Errorf("%d keys after the refused writes, want 7", n)
	}
}

func mustList(t *testing.T, s *PGStorage, prefix string, recursive bool) []string {
	t.Helper()
	keys, err := s.List(context.Background(), prefix, recursive)
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// lockAsync runs s.Lock(ctx, name) and reports its result on the returned channel.
func lockAsync(ctx context.Context, s *PGStorage, name string) <-chan error {
	done := make(chan error, 1)
	go func() { done <- s.Lock(ctx, name) }()
	return done
}

func expectBlocked(t *testing.T, done <-chan error, d time.Duration, what string) {
	t.Helper()
	select {
	case err := <-done:
		t.Fatalf("%s: Lock returned (%v) while another holder's lease is live", what, err)
	case <-time.After(d):
	}
}

func expectLocked(t *testing.T, done <-chan error, d time.Duration, what string) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("%s: Lock: %v", what, err)
		}
	case <-time.After(d):
		t.Fatalf("%s: Lock still waiting after %v", what, d)
	}
}

// TestPGStorageLockExclusive: a lease is held by one gateway at a time, stays held past its TTL
// while its holder renews it, and passes on at Unlock.
func TestPGStorageLockExclusive(t *testing.T) {
	t.Parallel()
	dsn := migratedDSN(t)
	const ttl = time.Second
	a := newPGStorage(t, openDB(t, dsn), "a", ttl)
	b := newPGStorage(t, openDB(t, dsn), "b", ttl)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	if err := a.Lock(ctx, "certificates/x"); err != nil {
		t.Fatal(err)
	}
	// Another name is another lease.
	if err := b.Lock(ctx, "certificates/y"); err != nil {
		t.Fatal(err)
	}
	waiting := lockAsync(ctx, b, "certificates/x")
	// Three TTLs: only the holder's renewals keep the lease from expiring meanwhile.
	expectBlocked(t, waiting, 3*ttl, "b while a renews")
	// The holder itself waits too: two workers of one gateway never order the same name at once.
	again := lockAsync(ctx, a, "certificates/y")
	expectBlocked(t, again, 300*time.Millisecond, "a on b's name")

	if err := a.Unlock(ctx, "certificates/x"); err != nil {
		t.Fatal(err)
	}
	expectLocked(t, waiting, 2*time.Second, "b after a's Unlock")
	if err := b.Unlock(ctx, "certificates/y"); err != nil {
		t.Fatal(err)
	}
	expectLocked(t, again, 2*time.Second, "a after b's Unlock")
	if err := a.Unlock(ctx, "certificates/y"); err != nil {
		t.Fatal(err)
	}
	if err := b.Unlock(ctx, "certificates/x"); err != nil {
		t.Fatal(err)
	}
	if err := b.Unlock(ctx, "certificates/x"); err == nil {
		t.Error("Unlock of a lease not held succeeded")
	}
	var n int
	if err := openDB(t, dsn).QueryRowContext(ctx, `SELECT count(*) FROM acme_locks`).Scan(&n); err != nil || n != 0 {
		t.Errorf("%d rows left in acme_locks (%v), want none after every Unlock", n, err)
	}
}

// TestPGStorageLockHolderDies: a gateway that dies holding a lease (its database connections gone,
// so nothing renews it) keeps the others waiting for the lease's TTL, and no longer.
func TestPGStorageLockHolderDies(t *testing.T) {
	t.Parallel()
	dsn := migratedDSN(t)
	const ttl = 2 * time.Second
	deadDB := openDB(t, dsn)
	dead := newPGStorage(t, deadDB, "dead", ttl)
	alive := newPGStorage(t, openDB(t, dsn), "alive", ttl)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	if err := dead.Lock(ctx, "certificates/x"); err != nil {
		t.Fatal(err)
	}
	locked := time.Now()
	if err := deadDB.Close(); err != nil {
		t.Fatal(err)
	}
	waiting := lockAsync(ctx, alive, "certificates/x")
	expectBlocked(t, waiting, ttl/2, "before the lease expires")
	expectLocked(t, waiting, ttl+3*time.Second, "after the lease expires")
	// The database's clock decides; on one machine it agrees with ours to well under the margin.
	if took := time.Since(locked); took < ttl-200*time.Millisecond {
		t.Errorf("lease taken over %v after it was taken, before its TTL of %v", took, ttl)
	}
	if err := dead.Unlock(ctx, "certificates/x"); err == nil {
		t.Error("Unlock on a closed database reported success")
	}
	if err := alive.Unlock(ctx, "certificates/x"); err != nil {
		t.Fatal(err)
	}
}

// TestPGStorageLockLostLease: a holder that stalled past its lease (simulated by expiring its row)
// loses it to another gateway, stops renewing it, and its late Unlock leaves the new holder's
// lease alone.
func TestPGStorageLockLostLease(t *testing.T) {
	t.Parallel()
	dsn := migratedDSN(t)
	const ttl = 900 * time.Millisecond
	db := openDB(t, dsn)
	stalled := newPGStorage(t, openDB(t, dsn), "stalled", ttl)
	next := newPGStorage(t, openDB(t, dsn), "next", ttl)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	if err := stalled.Lock(ctx, "certificates/x"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, `UPDATE acme_locks SET expires_at = now() - interval '1 second'`); err != nil {
		t.Fatal(err)
	}
	expectLocked(t, lockAsync(ctx, next, "certificates/x"), 2*time.Second, "expired lease")
	// Several renewal periods of the stalled holder: none may take the lease back.
	time.Sleep(ttl)
	holder := func() string {
		var h string
		if err := db.QueryRowContext(ctx, `SELECT holder FROM acme_locks WHERE name = 'certificates/x'`).Scan(&h); err != nil {
			t.Fatal(err)
		}
		return h
	}
	if h := holder(); h != next.holder {
		t.Fatalf("lease held by %q, want %q", h, next.holder)
	}
	if err := stalled.Unlock(ctx, "certificates/x"); err != nil {
		t.Fatal(err)
	}
	if h := holder(); h != next.holder {
		t.Fatalf("after the stalled holder's Unlock the lease is %q's, want %q's", h, next.holder)
	}
	if err := next.Unlock(ctx, "certificates/x"); err != nil {
		t.Fatal(err)
	}
}

// TestPGStorageLockContext: a waiting Lock gives up when its context ends, and takes nothing.
func TestPGStorageLockContext(t *testing.T) {
	t.Parallel()
	dsn := migratedDSN(t)
	a := newPGStorage(t, openDB(t, dsn), "a", 5*time.Second)
	b := newPGStorage(t, openDB(t, dsn), "b", 5*time.Second)
	if err := a.Lock(context.Background(), "certificates/x"); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = a.Unlock(context.Background(), "certificates/x") }()

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := b.Lock(ctx, "certificates/x")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lock with an expiring context: %v, want context.DeadlineExceeded", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Lock returned %v after its context ended", took)
	}

	var wg sync.WaitGroup
	cctx, ccancel := context.WithCancel(context.Background())
	wg.Add(1)
	var cerr error
	go func() { defer wg.Done(); cerr = b.Lock(cctx, "certificates/x") }()
	time.Sleep(150 * time.Millisecond)
	ccancel()
	wg.Wait()
	if !errors.Is(cerr, context.Canceled) {
		t.Fatalf("Lock cancelled while waiting: %v, want context.Canceled", cerr)
	}
	if err := b.Unlock(context.Background(), "certificates/x"); err == nil {
		t.Error("a Lock that gave up left a lease to Unlock")
	}
}
