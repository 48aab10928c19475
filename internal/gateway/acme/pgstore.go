package acme

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/hopgate/hopgate/internal/pause"
)

// Defaults of PGOptions.
const (
	DefaultLockTTL      = 45 * time.Second
	DefaultLockPoll     = time.Second
	pgStorageOpTimeout  = 10 * time.Second
	pgStorageKeyMaxSize = 1024
)

// PGOptions tune a PGStorage.
type PGOptions struct {
	// Holder names this gateway in acme_locks (for an operator looking at the table); a random
	// suffix is added so that two processes never share a lease. Default: the hostname.
	Holder string
	// LockTTL is how long a lease lasts unless its holder renews it (every LockTTL/3): the time a
	// gateway that died holding a lock keeps the others waiting. Default DefaultLockTTL.
	LockTTL time.Duration
	// LockPoll is how often a waiting Lock tries again. Default DefaultLockPoll.
	LockPoll time.Duration
	Logger   *slog.Logger
}

// PGStorage is a Storage in the registry's Postgres database, shared by every gateway on it: the
// ACME account, the certificates and the pending challenges are rows of acme_storage, and Lock is a
// lease in acme_locks that its holder renews while it works and that expires if the holder dies.
// Expiry is computed by the database's clock, so gateways' clocks need not agree.
type PGStorage struct {
	db     *sql.DB
	holder string
	ttl    time.Duration
	poll   time.Duration
	log    *slog.Logger

	mu   sync.Mutex
	held map[string]*lease
}

// lease is a lock this PGStorage holds, kept alive by a goroutine until Unlock.
type lease struct {
	stop context.CancelFunc
	done chan struct{}
}

// NewPGStorage returns a PGStorage on db, whose schema has the tables of migration 000005.
func NewPGStorage(db *sql.DB, o PGOptions) *PGStorage {
	if o.LockTTL <= 0 {
		o.LockTTL = DefaultLockTTL
	}
	if o.LockPoll <= 0 {
		o.LockPoll = DefaultLockPoll
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Holder == "" {
		o.Holder, _ = os.Hostname()
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	return &PGStorage{
		db:     db,
		holder: fmt.Sprintf("%s/%d/%s", o.Holder, os.Getpid(), hex.EncodeToString(b[:])),
		ttl:    o.LockTTL,
		poll:   o.LockPoll,
		log:    o.Logger,
		held:   make(map[string]*lease),
	}
}

// Shared tells the Manager that other gateways use this storage too: challenges are published in
// it, and certificates are reloaded from it periodically.
func (s *PGStorage) Shared() bool { return true }

func checkKey(key string) error {
	if key == "" || len(key) > pgStorageKeyMaxSize || strings.HasPrefix(key, "/") || strings.Contains(key, "//") {
		return fmt.Errorf("acme storage: invalid key %q", key)
	}
	return nil
}

// Load reads the value stored under key; a missing key wraps fs.ErrNotExist.
func (s *PGStorage) Load(ctx context.Context, key string) ([]byte, error) {
	if err := checkKey(key); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, pgStorageOpTimeout)
	defer cancel()
	var v []byte
	err := s.db.QueryRowContext(ctx, `SELECT value FROM acme_storage WHERE key = $1`, key).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("acme storage: load %s: %w", key, fs.ErrNotExist)
	}
	if err != nil {
		return nil, fmt.Errorf("acme storage: load %s: %w", key, err)
	}
	return v, nil
}

// Store writes value under key in one statement: readers see the old or the new value.
func (s *PGStorage) Store(ctx context.Context, key string, value []byte) error {
	if err := checkKey(key); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, pgStorageOpTimeout)
	defer cancel()
	if value == nil {
		value = []byte{}
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO acme_storage (key, value, updated_at) VALUES ($1, $2, now())
		ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at`, key, value)
	if err != nil {
		return fmt.Errorf("acme storage: store %s: %w", key, err)
	}
	return nil
}

// Delete removes key; a missing key is not an error.
func (s *PGStorage) Delete(ctx context.Context, key string) error {
	if err := checkKey(key); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, pgStorageOpTimeout)
	defer cancel()
	if _, err := s.db.ExecContext(ctx, `DELETE FROM acme_storage WHERE key = $1`, key); err != nil {
		return fmt.Errorf("acme storage: delete %s: %w", key, err)
	}
	return nil
}

// List returns the keys under prefix (a "directory": "certificates" lists "certificates/a.crt"),
// only those directly under it unless recursive, sorted.
func (s *PGStorage) List(ctx context.Context, prefix string, recursive bool) ([]string, error) {
	dir := ""
	if prefix != "" {
		if err := checkKey(prefix); err != nil {
			return nil, err
		}
		dir = strings.TrimSuffix(prefix, "/") + "/"
	}
	ctx, cancel := context.WithTimeout(ctx, pgStorageOpTimeout)
	defer cancel()
	rows, err := s.db.QueryContext(ctx, `SELECT key FROM acme_storage WHERE starts_with(key, $1) ORDER BY key`, dir)
	if err != nil {
		return nil, fmt.Errorf("acme storage: list %s: %w", prefix, err)
	}
	defer rows.Close()
	var keys []string
	for rows.Next() {
		var k string
		if err := rows.Scan(&k); err != nil {
			return nil, fmt.Errorf("acme storage: list %s: %w", prefix, err)
		}
		if !recursive && strings.Contains(k[len(dir):], "/") {
			continue
		}
		keys = append(keys, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("acme storage: list %s: %w", prefix, err)
	}
	return keys, nil
}

// Lock takes the lease on name, waiting (polling every LockPoll) while another holder's lease is
// live, or until ctx ends. The lease is renewed every LockTTL/3 until Unlock; if this process
// dies, it expires LockTTL after the last renewal and another gateway takes it.
func (s *PGStorage) Lock(ctx context.Context, name string) error {
	for {
		ok, err := s.tryLock(ctx, name)
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if err := pause.For(ctx, s.poll); err != nil {
			return fmt.Errorf("acme storage: lock %s: %w", name, err)
		}
	}
}

func (s *PGStorage) tryLock(ctx context.Context, name string) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.held[name] != nil { // this process holds it already: wait like any other gateway
		return false, nil
	}
	qctx, cancel := context.WithTimeout(ctx, pgStorageOpTimeout)
	defer cancel()
	// Taken if free, expired, or left behind by this very storage (an Unlock whose DELETE failed).
	res, err := s.db.ExecContext(qctx, `INSERT INTO acme_locks (name, holder, expires_at)
		VALUES ($1, $2, now() + $3 * interval '1 millisecond')
		ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
		WHERE acme_locks.expires_at < now() OR acme_locks.holder = EXCLUDED.holder`,
		name, s.holder, s.ttl.Milliseconds())
	if err != nil {
		return false, fmt.Errorf("acme storage: lock %s: %w", name, err)
	}
	if n, err := res.RowsAffected(); err != nil || n != 1 {
		return false, err
	}
	lctx, stop := context.WithCancel(context.Background())
	l := &lease{stop: stop, done: make(chan struct{})}
	s.held[name] = l
	go s.keepAlive(lctx, name, l.done)
	return true, nil
}

// keepAlive renews the lease on name every TTL/3 until ctx ends. A lease found taken by another
// holder (this process stalled past the TTL) is logged and no longer renewed.
func (s *PGStorage) keepAlive(ctx context.Context, name string, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(s.ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		qctx, cancel := context.WithTimeout(ctx, min(pgStorageOpTimeout, s.ttl/3))
		res, err := s.db.ExecContext(qctx, `UPDATE acme_locks SET expires_at = now() + $3 * interval '1 millisecond'
			WHERE name = $1 AND holder = $2`, name, s.holder, s.ttl.Milliseconds())
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			s.log.Warn("acme: renew lock lease", "lock", name, "err", err)
			continue
		}
		if n, _ := res.RowsAffected(); n == 0 {
			s.log.Error("acme: lock lease lost to another gateway (this one stalled past the lease)", "lock", name)
			return
		}
	}
}

// Unlock stops renewing the lease on name and releases it.
func (s *PGStorage) Unlock(ctx context.Context, name string) error {
	s.mu.Lock()
	l := s.held[name]
	delete(s.held, name)
	s.mu.Unlock()
	if l == nil {
		return fmt.Errorf("acme storage: unlock %s: not locked", name)
	}
	l.stop()
	<-l.done
	ctx, cancel := context.WithTimeout(ctx, pgStorageOpTimeout)
	defer cancel()
	if _, err := s.db.ExecContext(ctx, `DELETE FROM acme_locks WHERE name = $1 AND holder = $2`, name, s.holder); err != nil {
		return fmt.Errorf("acme storage: unlock %s (the lease expires by itself): %w", name, err)
	}
	return nil
}

// Close stops renewing the leases still held (normally none: every Lock is paired with an Unlock);
// they expire after LockTTL. The database handle is the caller's and stays open.
func (s *PGStorage) Close() {
	s.mu.Lock()
	held := s.held
	s.held = make(map[string]*lease)
	s.mu.Unlock()
	for _, l := range held {
		l.stop()
		<-l.done
	}
}
