package registry

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hopgate/hopgate/internal/gateway/apikey"
	"github.com/hopgate/hopgate/internal/gateway/hostname"
	"github.com/hopgate/hopgate/internal/gateway/policy"
	"github.com/hopgate/hopgate/internal/testutil/pgtest"
	"github.com/hopgate/hopgate/migrations"
)

// backend opens fresh, empty options for one kind of database.
type backend struct {
	name    string
	options func(t *testing.T) Options
}

var backends = []backend{
	{"sqlite", func(t *testing.T) Options { return Options{DataDir: filepath.Join(t.TempDir(), "data")} }},
	{"postgres", func(t *testing.T) Options { return Options{DSN: pgtest.DSN(t), MaxOpenConns: 10} }},
}

// forEach runs f as a parallel subtest on every backend.
func forEach(t *testing.T, f func(t *testing.T, o Options)) {
	t.Helper()
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			f(t, b.options(t))
		})
	}
}

func open(t *testing.T, o Options) *Store {
	t.Helper()
	s, err := Open(context.Background(), o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func schemaVersion(t *testing.T, s *Store) (int64, bool) {
	t.Helper()
	var v int64
	var dirty bool
	if err := s.db.QueryRow("SELECT version, dirty FROM schema_migrations").Scan(&v, &dirty); err != nil {
		t.Fatalf("read schema_migrations: %v", err)
	}
	return v, dirty
}

func TestMigrations(t *testing.T) {
	t.Parallel()
	forEach(t, func(t *testing.T, o Options) {
		ctx := context.Background()
		latest, err := migrations.Latest(migrations.SQLite)
		if err != nil {
			t.Fatal(err)
		}

		s := open(t, o)
		if v, dirty := schemaVersion(t, s); v != int64(latest) || dirty {
			t.Fatalf("after first Open: version %d dirty %v, want %d clean", v, dirty, latest)
		}
		if _, _, err := s.Register(ctx, "kept.example.com", "survives reopen"); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}

		// Reopening an up-to-date database is a no-op that keeps the data.
		s = open(t, o)
		if v, dirty := schemaVersion(t, s); v != int64(latest) || dirty {
			t.Fatalf("after reopen: version %d dirty %v", v, dirty)
		}
		if d, err := s.Get(ctx, "kept.example.com"); err != nil || d.Memo != "survives reopen" {
			t.Fatalf("after reopen Get = %+v, %v", d, err)
		}

		// A database migrated by a newer binary is refused.
		if _, err := s.db.Exec("UPDATE schema_migrations SET version = 999"); err != nil {
			t.Fatal(err)
		}
		s.Close()
		_, err = Open(ctx, o)
		if !errors.Is(err, ErrSchemaTooNew) {
			t.Fatalf("Open on version 999: %v, want ErrSchemaTooNew", err)
		}
		if msg := err.Error(); !strings.Contains(msg, "999") || !strings.Contains(msg, fmt.Sprintf("up to %d", latest)) {
			t.Fatalf("error %q should name both versions", msg)
		}

		// So is one a migration left half-done.
		s2, err := openRaw(o)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s2.Exec("UPDATE schema_migrations SET version = 1, dirty = true"); err != nil {
			t.Fatal(err)
		}
		s2.Close()
		_, err = Open(ctx, o)
		if !errors.Is(err, ErrSchemaDirty) {
			t.Fatalf("Open on dirty schema: %v, want ErrSchemaDirty", err)
		}
	})
}

func TestOpenOptions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("data dir created private", func(t *testing.T) {
		t.Parallel()
		dir := filepath.Join(t.TempDir(), "a", "b")
		open(t, Options{DataDir: dir})
		fi, err := os.Stat(dir)
		if err != nil {
			t.Fatal(err)
		}
		if perm := fi.Mode().Perm(); perm != 0o700 {
			t.Fatalf("data dir mode %o, want 700", perm)
		}
		s := open(t, Options{DataDir: dir})
		if _, _, err := s.Register(ctx, "perm.example.com", ""); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{DBFile, DBFile + "-wal", DBFile + "-shm"} {
			fi, err := os.Stat(filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			if perm := fi.Mode().Perm(); perm != 0o600 {
				t.Errorf("%s mode %o, want 600", name, perm)
			}
		}
	})
	t.Run("database file made private", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, DBFile), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		open(t, Options{DataDir: dir})
		fi, err := os.Stat(filepath.Join(dir, DBFile))
		if err != nil {
			t.Fatal(err)
		}
		if perm := fi.Mode().Perm(); perm != 0o600 {
			t.Fatalf("an existing 644 database file left at %o, want 600", perm)
		}
	})
	t.Run("unsupported scheme", func(t *testing.T) {
		t.Parallel()
		_, err := Open(ctx, Options{DSN: "mysql://root:secret@localhost/db"})
		if err == nil || strings.Contains(err.Error(), "secret") {
			t.Fatalf("Open(mysql) = %v, want an error that does not echo the password", err)
		}
	})
	t.Run("no data dir", func(t *testing.T) {
		t.Parallel()
		if _, err := Open(ctx, Options{}); err == nil {
			t.Fatal("Open without DSN and DataDir succeeded")
		}
	})
	t.Run("postgres down", func(t *testing.T) {
		t.Parallel()
		dsn, stop := pgtest.Outage(t, pgtest.BaseDSN())
		stop()
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_, err := Open(ctx, Options{DSN: dsn})
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("Open on a stopped server: %v, want ErrUnavailable", err)
		}
	})
}

func TestLifecycle(t *testing.T) {
	t.Parallel()
	forEach(t, func(t *testing.T, o Options) {
		ctx := context.Background()
		s := open(t, o)

		before := time.Now().Add(-time.Second)
		d, key, err := s.Register(ctx, " App.Example.COM. ", "staging")
		if err != nil {
			t.Fatal(err)
		}
		if d.Name != "app.example.com" || d.Memo != "staging" || d.CreatedAt.Before(before) || !d.CreatedAt.Equal(d.UpdatedAt) {
			t.Fatalf("Register = %+v", d)
		}
		if !apikey.WellFormed(key) {
			t.Fatalf("key %q is not well formed", key)
		}

		got, err := s.Get(ctx, "app.example.com")
		if err != nil || got != d {
			t.Fatalf("Get = %+v, %v; want %+v", got, err, d)
		}

		if _, _, err := s.Register(ctx, "app.example.com:443", "again"); !errors.Is(err, ErrExists) {
			t.Fatalf("second Register: %v, want ErrExists", err)
		}

		if _, err := s.Authenticate(ctx, "APP.example.com", key); err != nil {
			t.Fatalf("Authenticate with the right key: %v", err)
		}
		if _, err := s.Authenticate(ctx, "app.example.com", key+"x"); !errors.Is(err, ErrKeyMismatch) {
			t.Fatalf("Authenticate with a wrong key: %v", err)
		}
		if _, err := s.Authenticate(ctx, "other.example.com", key); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Authenticate unknown: %v", err)
		}

		time.Sleep(2 * time.Millisecond)
		newKey, err := s.RotateKey(ctx, "app.example.com")
		if err != nil || newKey == key || !apikey.WellFormed(newKey) {
			t.Fatalf("RotateKey = %q, %v", newKey, err)
		}
		if _, err := s.Authenticate(ctx, "app.example.com", key); !errors.Is(err, ErrKeyMismatch) {
			t.Fatalf("old key after rotation: %v", err)
		}
		if _, err := s.Authenticate(ctx, "app.example.com", newKey); err != nil {
			t.Fatalf("new key after rotation: %v", err)
		}
		if got, _ := s.Get(ctx, "app.example.com"); !got.UpdatedAt.After(got.CreatedAt) || !got.CreatedAt.Equal(d.CreatedAt) {
			t.Fatalf("after rotation created %v updated %v", got.CreatedAt, got.UpdatedAt)
		}
		if _, err := s.RotateKey(ctx, "nope.example.com"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("RotateKey unknown: %v", err)
		}

		if _, _, err := s.Register(ctx, "b.example.com", ""); err != nil {
			t.Fatal(err)
		}
		list, err := s.List(ctx)
		if err != nil || len(list) != 2 || list[0].Name != "app.example.com" || list[1].Name != "b.example.com" {
			t.Fatalf("List = %+v, %v", list, err)
		}

		if err := s.Unregister(ctx, "app.example.com", key); !errors.Is(err, ErrKeyMismatch) {
			t.Fatalf("Unregister with the old key: %v", err)
		}
		if err := s.Unregister(ctx, "app.example.com", newKey); err != nil {
			t.Fatalf("Unregister with the key: %v", err)
		}
		if err := s.Unregister(ctx, "b.example.com", ""); err != nil {
			t.Fatalf("Unregister without key: %v", err)
		}
		for _, n := range []string{"app.example.com", "b.example.com"} {
			if _, err := s.Get(ctx, n); !errors.Is(err, ErrNotFound) {
				t.Fatalf("Get %s after Unregister: %v", n, err)
			}
			if err := s.Unregister(ctx, n, ""); !errors.Is(err, ErrNotFound) {
				t.Fatalf("second Unregister %s: %v", n, err)
			}
		}
		if list, err := s.List(ctx); err != nil || len(list) != 0 {
			t.Fatalf("List after Unregister = %+v, %v", list, err)
		}
		if err := s.Ping(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

func TestInvalidInput(t *testing.T) {
	t.Parallel()
	s := open(t, backends[0].options(t))
	ctx := context.Background()
	tests := []struct {
		name, domain, memo string
		kind               error
	}{
		{"single label", "localhost", "", ErrInvalidDomain},
		{"ip", "127.0.0.1", "", ErrInvalidDomain},
		{"empty", "", "", ErrInvalidDomain},
		{"bad char", "a_b.example.com", "", ErrInvalidDomain},
		{"long memo", "ok.example.com", strings.Repeat("m", MaxMemo+1), ErrInvalidInput},
		{"control in memo", "ok.example.com", "a\nb", ErrInvalidInput},
		{"bad utf-8 memo", "ok.example.com", "\xff", ErrInvalidInput},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := s.Register(ctx, tc.domain, tc.memo)
			if !errors.Is(err, tc.kind) || !errors.Is(err, ErrInvalidInput) {
				t.Fatalf("Register(%q, %q) = %v, want %v", tc.domain, tc.memo, err, tc.kind)
			}
			if tc.kind == ErrInvalidDomain && !errors.Is(err, hostname.ErrInvalid) {
				t.Fatalf("error %v does not wrap hostname.ErrInvalid", err)
			}
		})
	}
	if _, _, err := s.Register(ctx, "ok.example.com", strings.Repeat("é", MaxMemo)); err != nil {
		t.Fatalf("memo of %d two-byte characters: %v", MaxMemo, err)
	}
	for name, call := range map[string]func() error{
		"Get":          func() error { _, err := s.Get(ctx, "bad_name"); return err },
		"Unregister":   func() error { return s.Unregister(ctx, "bad_name", "") },
		"RotateKey":    func() error { _, err := s.RotateKey(ctx, "bad_name"); return err },
		"Authenticate": func() error { _, err := s.Authenticate(ctx, "bad_name", "k"); return err },
		"Policy":       func() error { _, err := s.Policy(ctx, "bad_name"); return err },
		"SetPolicy":    func() error { _, err := s.SetPolicy(ctx, "bad_name", policy.Spec{}); return err },
	} {
		if err := call(); !errors.Is(err, ErrInvalidDomain) {
			t.Errorf("%s(bad_name) = %v, want ErrInvalidDomain", name, err)
		}
	}
}

func TestNoPlaintextKey(t *testing.T) {
	t.Parallel()
	forEach(t, func(t *testing.T, o Options) {
		ctx := context.Background()
		s := open(t, o)
		_, key, err := s.Register(ctx, "secret.example.com", "memo")
		if err != nil {
			t.Fatal(err)
		}
		rotated, err := s.RotateKey(ctx, "secret.example.com")
		if err != nil {
			t.Fatal(err)
		}
		var name, hash, memo string
		if err := s.db.QueryRow("SELECT name, key_hash, memo FROM domains").Scan(&name, &hash, &memo); err != nil {
			t.Fatal(err)
		}
		if hash != apikey.Hash(rotated) {
			t.Fatalf("stored key_hash %q is not the hash of the current key", hash)
		}
		for _, k := range []string{key, rotated, strings.TrimPrefix(key, apikey.Prefix), strings.TrimPrefix(rotated, apikey.Prefix)} {
			for _, col := range []string{name, hash, memo} {
				if strings.Contains(col, k) {
					t.Fatalf("stored row holds a plaintext key")
				}
			}
		}
	})
}

func TestConcurrentRegister(t *testing.T) {
	t.Parallel()
	forEach(t, func(t *testing.T, o Options) {
		s := open(t, o)
		const n = 20
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for range n {
			wg.Go(func() {
				_, _, err := s.Register(context.Background(), "race.example.com", "")
				errs <- err
			})
		}
		wg.Wait()
		close(errs)
		var ok, exists int
		for err := range errs {
			switch {
			case err == nil:
				ok++
			case errors.Is(err, ErrExists):
				exists++
			default:
				t.Errorf("Register: %v", err)
			}
		}
		if ok != 1 || exists != n-1 {
			t.Fatalf("%d succeeded, %d ErrExists; want 1 and %d", ok, exists, n-1)
		}
	})
}

func TestUnavailable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	calls := func(s *Store) map[string]func() error {
		return map[string]func() error{
			"Register":     func() error { _, _, err := s.Register(ctx, "x.example.com", ""); return err },
			"Unregister":   func() error { return s.Unregister(ctx, "a.example.com", "") },
			"List":         func() error { _, err := s.List(ctx); return err },
			"Get":          func() error { _, err := s.Get(ctx, "a.example.com"); return err },
			"RotateKey":    func() error { _, err := s.RotateKey(ctx, "a.example.com"); return err },
			"Authenticate": func() error { _, err := s.Authenticate(ctx, "a.example.com", "k"); return err },
			"Ping":         func() error { return s.Ping(ctx) },
			"Policy":       func() error { _, err := s.Policy(ctx, "a.example.com"); return err },
			"SetPolicy": func() error {
				_, err := s.SetPolicy(ctx, "a.example.com", policy.Spec{IPDeny: []string{"192.0.2.1"}})
				return err
			},
			"SessionKey":       func() error { _, err := s.SessionKey(ctx); return err },
			"RotateSessionKey": func() error { return s.RotateSessionKey(ctx) },
		}
	}

	forEach(t, func(t *testing.T, o Options) {
		s := open(t, o)
		s.Close()
		for name, call := range calls(s) {
			if err := call(); !errors.Is(err, ErrUnavailable) {
				t.Errorf("%s on a closed store: %v, want ErrUnavailable", name, err)
			}
		}
	})

	t.Run("postgres goes down", func(t *testing.T) {
		t.Parallel()
		dsn, stop := pgtest.Outage(t, pgtest.DSN(t))
		s := open(t, Options{DSN: dsn})
		if _, _, err := s.Register(ctx, "a.example.com", ""); err != nil {
			t.Fatal(err)
		}
		stop()
		for name, call := range calls(s) {
			if err := call(); !errors.Is(err, ErrUnavailable) {
				t.Errorf("%s with the server down: %v, want ErrUnavailable", name, err)
			}
		}
	})
}

// TestAuthenticateTiming: an unknown domain and a wrong key take the same time to refuse (the floor),
// on both stores; the right key is not held back.
func TestAuthenticateTiming(t *testing.T) {
	t.Parallel()
	forEach(t, func(t *testing.T, o Options) {
		s := open(t, o)
		ctx := context.Background()
		_, key, err := s.Register(ctx, "timing.example.com", "")
		if err != nil {
			t.Fatal(err)
		}
		median := func(domain, key string, want error) time.Duration {
			var ds []time.Duration
			for range 5 {
				start := time.Now()
				_, err := s.Authenticate(ctx, domain, key)
				ds = append(ds, time.Since(start))
				if !errors.Is(err, want) && !(want == nil && err == nil) {
					t.Fatalf("Authenticate(%s): %v, want %v", domain, err, want)
				}
			}
			slices.Sort(ds)
			return ds[len(ds)/2]
		}
		unknown := median("nope.example.com", key, ErrNotFound)
		wrong := median("timing.example.com", key+"x", ErrKeyMismatch)
		right := median("timing.example.com", key, nil)
		t.Logf("median: unknown domain %v, wrong key %v, right key %v", unknown, wrong, right)
		for name, d := range map[string]time.Duration{"unknown domain": unknown, "wrong key": wrong} {
			if d < AuthFailureFloor || d > AuthFailureFloor+30*time.Millisecond {
				t.Errorf("%s refused in %v, want the floor %v (+30 ms)", name, d, AuthFailureFloor)
			}
		}
		if right >= AuthFailureFloor {
			t.Errorf("the right key took %v: only refusals wait for the floor", right)
		}
	})
}
