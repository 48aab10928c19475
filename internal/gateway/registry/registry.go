// Package registry stores the domains HopGate serves and the hashes of their client API keys,
// in Postgres or in an embedded SQLite file, through ent.
package registry

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	entsql "entgo.io/ent/dialect/sql"

	"entgo.io/ent/dialect"
	_ "github.com/lib/pq"  // database/sql driver "postgres"
	_ "modernc.org/sqlite" // database/sql driver "sqlite", pure Go

	"github.com/hopgate/hopgate/ent"
	"github.com/hopgate/hopgate/ent/domain"
	"github.com/hopgate/hopgate/internal/gateway/apikey"
	"github.com/hopgate/hopgate/internal/gateway/hostname"
	"github.com/hopgate/hopgate/internal/pause"
	"github.com/hopgate/hopgate/migrations"
)

// Conditions callers branch on. Errors returned by Store wrap one of them; the admin API maps them
// to status codes.
var (
	ErrNotFound    = errors.New("domain not found")
	ErrExists      = errors.New("domain already registered")
	ErrKeyMismatch = errors.New("client API key does not match")
	// ErrUnavailable means the database could not be reached or could not serve the request
	// (connection refused or lost, store closed, disk I/O error); a retry later may succeed.
	ErrUnavailable = errors.New("store unavailable")
	// ErrInvalidInput is wrapped by every validation error, ErrInvalidDomain included.
	ErrInvalidInput = errors.New("invalid input")
	// ErrInvalidDomain: the name is not a valid DNS name. Such errors also wrap ErrInvalidInput
	// and hostname.ErrInvalid.
	ErrInvalidDomain = errors.New("invalid domain")
	// ErrSchemaTooNew: the database was migrated by a newer HopGate.
	ErrSchemaTooNew = migrations.ErrSchemaTooNew
	// ErrSchemaDirty: a migration failed partway; an operator has to repair the schema.
	ErrSchemaDirty = migrations.ErrDirty
)

// MaxMemo is the longest memo accepted, in characters.
const MaxMemo = 256

// DBFile is the name of the embedded database inside Options.DataDir.
const DBFile = "hopgate.db"

// Domain is a registered name. The hash of its key never leaves the package.
type Domain struct {
	Name      string
	Memo      string
	CreatedAt time.Time
	UpdatedAt time.Time
	// Mode is what the domain carries (ModeHTTP, ModePassthrough or ModeTCP), its TCP port and its
	// PROXY protocol version towards the target.
	Mode
	// KeyID is the id (see KeyID) of the key an Authenticate accepted; empty from other reads.
	KeyID string
}

// Options select and tune the database.
type Options struct {
	// DSN "postgres://…" or "postgresql://…" selects Postgres; empty selects SQLite in DataDir.
	DSN string
	// DataDir holds the SQLite file; created with mode 0700 if missing.
	DataDir string
	// Pool settings; zero keeps database/sql's default.
	MaxOpenConns    int
	MaxIdleConns    int
	ConnMaxLifetime time.Duration
}

// Store is the domain registry. It is safe for concurrent use.
type Store struct {
	db      *sql.DB
	client  *ent.Client
	dialect migrations.Dialect
	// policyMu makes this process's policy writers take turns, so that they never starve one another
	// on SetPolicy's compare-and-swap; that swap is still what guards against other gateways.
	policyMu sync.Mutex
}

// Open connects to the database chosen by o, applies pending migrations and returns the store.
// It fails with ErrUnavailable if the database cannot be reached, ErrSchemaTooNew if the database was
// migrated by a newer HopGate, and ErrSchemaDirty if an earlier migration failed partway.
func Open(ctx context.Context, o Options) (*Store, error) {
	driverName, dsn, mdialect, entDialect, err := source(o)
	if err != nil {
		return nil, err
	}
	var db *sql.DB
	if driverName == "postgres" {
		db, err = openPostgres(dsn)
	} else {
		db, err = sql.Open(driverName, dsn)
	}
	if err != nil {
		return nil, fmt.Errorf("registry: open %s: %w", mdialect, err)
	}
	if o.MaxOpenConns > 0 {
		db.SetMaxOpenConns(o.MaxOpenConns)
	}
	if o.MaxIdleConns > 0 {
		db.SetMaxIdleConns(o.MaxIdleConns)
	}
	if o.ConnMaxLifetime > 0 {
		db.SetConnMaxLifetime(o.ConnMaxLifetime)
	}
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, classify(fmt.Sprintf("registry: connect to %s", mdialect), err)
	}
	if _, err := migrations.Up(ctx, db, mdialect); err != nil {
		db.Close()
		if errors.Is(err, migrations.ErrSchemaTooNew) || errors.Is(err, migrations.ErrDirty) {
			return nil, fmt.Errorf("registry: %w", err)
		}
		return nil, classify("registry: migrate", err)
	}
	client := ent.NewClient(ent.Driver(entsql.OpenDB(entDialect, db)))
	return &Store{db: db, client: client, dialect: mdialect}, nil
}

// source picks the driver and data source name for o.
func source(o Options) (driverName, dsn string, md migrations.Dialect, entDialect string, err error) {
	d := strings.TrimSpace(o.DSN)
	switch {
	case strings.HasPrefix(d, "postgres://"), strings.HasPrefix(d, "postgresql://"):
		return "postgres", d, migrations.Postgres, dialect.Postgres, nil
	case d != "":
		// Only the scheme is quoted: the rest of a DSN may hold a password.
		scheme, _, _ := strings.Cut(d, ":")
		return "", "", "", "", fmt.Errorf("registry: unsupported database DSN scheme %q: want postgres:// or postgresql://, or empty for the embedded store", scheme)
	}
	if o.DataDir == "" {
		return "", "", "", "", errors.New("registry: a data directory is required for the embedded store")
	}
	if strings.ContainsAny(o.DataDir, "?#") {
		return "", "", "", "", fmt.Errorf("registry: data directory %q must not contain '?' or '#'", o.DataDir)
	}
	dir, err := filepath.Abs(o.DataDir)
	if err != nil {
		return "", "", "", "", fmt.Errorf("registry: data directory: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", "", "", fmt.Errorf("registry: create data directory: %w", err)
	}
	// SQLite creates the file 0644 (less the umask) and gives its -wal and -shm files the main file's
	// mode: created 0600 here first, or narrowed if an older version made it, the key hashes are
	// readable by the gateway's user only, like the directory.
	if err := privateFile(filepath.Join(dir, DBFile)); err != nil {
		return "", "", "", "", fmt.Errorf("registry: database file: %w", err)
	}
	// Every pooled connection gets these. WAL lets readers run beside the one writer; busy_timeout
	// makes a writer wait for the lock instead of failing; immediate transactions take the write lock
	// up front, so two transactions never deadlock upgrading read locks. The time format is one that
	// SQLite's own date functions understand.
	dsn = filepath.Join(dir, DBFile) +
		"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=foreign_keys(1)" +
		"&_pragma=synchronous(NORMAL)&_txlock=immediate&_time_format=sqlite"
	return "sqlite", dsn, migrations.SQLite, dialect.SQLite, nil
}

// Register adds a domain and returns it with its new client API key, which is not stored and
// cannot be shown again. Registering a name twice fails with ErrExists, also when both calls race.
func (s *Store) Register(ctx context.Context, name, memo string) (Domain, string, error) {
	return s.RegisterMode(ctx, name, memo, Mode{Mode: ModeHTTP})
}

// register writes a new domain of a checked name and mode.
func (s *Store) register(ctx context.Context, name, memo string, m Mode) (Domain, string, error) {
	if err := checkMemo(memo); err != nil {
		return Domain{}, "", err
	}
	plain, hash, err := apikey.Generate()
	if err != nil {
		return Domain{}, "", fmt.Errorf("registry: register %s: %w", name, err)
	}
	now := now()
	c := s.client.Domain.Create().
		SetName(name).
		SetKeyHash(hash).
		SetMemo(memo).
		SetCreatedAt(now).
		SetUpdatedAt(now).
		SetMode(m.Mode).
		SetProxyProtocol(m.ProxyProtocol)
	if m.Mode == ModeTCP {
		c.SetTCPPort(m.TCPPort)
	}
	d, err := c.Save(ctx)
	if err != nil {
		op := "registry: register " + name
		if m.Mode == ModeTCP && ent.IsConstraintError(err) {
			// The name or the port: the name is cheap to ask about.
			if taken, qerr := s.client.Domain.Query().Where(domain.Name(name)).Exist(ctx); qerr == nil && !taken {
				return Domain{}, "", classifyPort(op, m, err)
			}
		}
		return Domain{}, "", classify(op, err)
	}
	return toDomain(d), plain, nil
}

// Unregister removes a domain. If key is not empty it must be the domain's client API key
// (ErrKeyMismatch otherwise).
func (s *Store) Unregister(ctx context.Context, name, key string) error {
	name, err := canonical(name)
	if err != nil {
		return err
	}
	op := "registry: unregister " + name
	if key == "" {
		n, err := s.client.Domain.Delete().Where(domain.Name(name)).Exec(ctx)
		if err != nil {
			return classify(op, err)
		}
		if n == 0 {
			return fmt.Errorf("%s: %w", op, ErrNotFound)
		}
		return nil
	}
	d, err := s.client.Domain.Query().Where(domain.Name(name)).Only(ctx)
	if err != nil {
		return classify(op, err)
	}
	if !apikey.Verify(key, d.KeyHash) {
		return fmt.Errorf("%s: %w", op, ErrKeyMismatch)
	}
	// Delete only the row whose key was checked: a rotation in between must not be overridden.
	n, err := s.client.Domain.Delete().Where(domain.ID(d.ID), domain.KeyHash(d.KeyHash)).Exec(ctx)
	if err != nil {
		return classify(op, err)
	}
	if n == 0 {
		exists, err := s.client.Domain.Query().Where(domain.Name(name)).Exist(ctx)
		if err != nil {
			return classify(op, err)
		}
		if exists {
			return fmt.Errorf("%s: key was rotated meanwhile: %w", op, ErrKeyMismatch)
		}
		return fmt.Errorf("%s: %w", op, ErrNotFound)
	}
	return nil
}

// List returns every domain, ordered by name.
func (s *Store) List(ctx context.Context) ([]Domain, error) {
	rows, err := s.client.Domain.Query().Order(ent.Asc(domain.FieldName)).All(ctx)
	if err != nil {
		return nil, classify("registry: list", err)
	}
	out := make([]Domain, len(rows))
	for i, d := range rows {
		out[i] = toDomain(d)
	}
	return out, nil
}

// Get returns one domain.
func (s *Store) Get(ctx context.Context, name string) (Domain, error) {
	name, err := canonical(name)
	if err != nil {
		return Domain{}, err
	}
	op := "registry: get " + name
	d, err := untilDone(ctx, func() (*ent.Domain, error) {
		return s.client.Domain.Query().Where(domain.Name(name)).Only(ctx)
	})
	if err != nil {
		return Domain{}, classify(op, err)
	}
	return toDomain(d), nil
}

// privateFile creates path with mode 0600 if it is missing, and takes group and other permissions off
// it if not.
func privateFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return f.Chmod(fi.Mode().Perm() &^ 0o077)
	}
	return nil
}

// untilDone runs a lookup and returns when it does or when ctx ends, whichever is first. A driver
// blocked in a read does not see ctx (see pgReadTimeout), and the lookups on the request path must
// answer within their caller's deadline. The lookup left behind holds a pooled connection, so at most
// the pool's size of them exist at once.
func untilDone[T any](ctx context.Context, f func() (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	go func() {
		v, err := f()
		ch <- result{v, err}
	}()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-ctx.Done():
		var zero T
		return zero, context.Cause(ctx) // classify makes a deadline ErrUnavailable
	}
}

// RotateKey gives a domain a new client API key and returns it; the old key stops working at once.
// Tunnels already open on the old key are the caller's to close.
func (s *Store) RotateKey(ctx context.Context, name string) (string, error) {
	name, err := canonical(name)
	if err != nil {
		return "", err
	}
	plain, hash, err := apikey.Generate()
	if err != nil {
		return "", fmt.Errorf("registry: rotate key of %s: %w", name, err)
	}
	n, err := s.client.Domain.Update().
		Where(domain.Name(name)).
		SetKeyHash(hash).
		SetUpdatedAt(now()).
		Save(ctx)
	if err != nil {
		return "", classify("registry: rotate key of "+name, err)
	}
	if n == 0 {
		return "", fmt.Errorf("registry: rotate key of %s: %w", name, ErrNotFound)
	}
	return plain, nil
}

// SetMemo replaces a domain's memo, with the same rules as at registration.
func (s *Store) SetMemo(ctx context.Context, name, memo string) (Domain, error) {
	name, err := canonical(name)
	if err != nil {
		return Domain{}, err
	}
	if err := checkMemo(memo); err != nil {
		return Domain{}, err
	}
	n, err := s.client.Domain.Update().
		Where(domain.Name(name)).
		SetMemo(memo).
		SetUpdatedAt(now()).
		Save(ctx)
	if err != nil {
		return Domain{}, classify("registry: set memo of "+name, err)
	}
	if n == 0 {
		return Domain{}, fmt.Errorf("registry: set memo of %s: %w", name, ErrNotFound)
	}
	return s.Get(ctx, name)
}

// Authenticate checks a client API key for a domain. It fails with ErrNotFound for an unknown domain
// and ErrKeyMismatch for a wrong key, spends the same hashing work on both and answers neither before
// AuthFailureFloor, so the answer time does not say which one it was. An invalid name fails with
// ErrInvalidDomain.
func (s *Store) Authenticate(ctx context.Context, name, key string) (Domain, error) {
	start := time.Now()
	d, err := s.authenticate(ctx, name, key)
	if errors.Is(err, ErrNotFound) || errors.Is(err, ErrKeyMismatch) || errors.Is(err, ErrInvalidInput) {
		// The hash check already costs the same either way, but the lookup does not: a row found
		// takes longer to read than none. Every refusal ends at the same floor, so its timing cannot
		// tell a registered name from an unknown one.
		_ = pause.For(ctx, time.Until(start.Add(AuthFailureFloor)))
	}
	return d, err
}

// AuthFailureFloor is the least time a refused Authenticate takes. Refusals are rate-limited per
// client address, so the wait costs the gateway a few parked goroutines at most.
const AuthFailureFloor = 100 * time.Millisecond

func (s *Store) authenticate(ctx context.Context, name, key string) (Domain, error) {
	name, err := canonical(name)
	if err != nil {
		return Domain{}, err
	}
	op := "registry: authenticate " + name
	d, err := untilDone(ctx, func() (*ent.Domain, error) {
		return s.client.Domain.Query().Where(domain.Name(name)).Only(ctx)
	})
	if ent.IsNotFound(err) {
		apikey.Verify(key, apikey.DummyHash)
		return Domain{}, fmt.Errorf("%s: %w", op, ErrNotFound)
	}
	if err != nil {
		return Domain{}, classify(op, err)
	}
	if !apikey.Verify(key, d.KeyHash) {
		return Domain{}, fmt.Errorf("%s: %w", op, ErrKeyMismatch)
	}
	out := toDomain(d)
	out.KeyID = KeyID(d.KeyHash)
	return out, nil
}

// Ping reports whether the database answers; it fails with ErrUnavailable if not.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.db.PingContext(ctx); err != nil {
		return classify("registry: ping", err)
	}
	return nil
}

// Close closes the database. Calls made after it fail with ErrUnavailable.
func (s *Store) Close() error {
	return s.client.Close()
}

func toDomain(d *ent.Domain) Domain {
	return Domain{
		Name:      d.Name,
		Memo:      d.Memo,
		CreatedAt: d.CreatedAt.UTC(),
		UpdatedAt: d.UpdatedAt.UTC(),
		Mode:      Mode{Mode: d.Mode, TCPPort: derefInt(d.TCPPort), ProxyProtocol: d.ProxyProtocol},
	}
}

func derefInt(p *int) int {
	if p == nil {
		return 0
	}
	return *p
}

// now is truncated to what Postgres keeps (microseconds), so a value returned by Register equals
// the one read back later on either database.
func now() time.Time {
	return time.Now().UTC().Truncate(time.Microsecond)
}

// inputError is a validation failure: its message is the detail, and it matches ErrInvalidInput,
// its kind (e.g. ErrInvalidDomain) and the cause.
type inputError struct {
	kind, cause error
}

func (e *inputError) Error() string   { return e.cause.Error() }
func (e *inputError) Unwrap() []error { return []error{ErrInvalidInput, e.kind, e.cause} }

func canonical(name string) (string, error) {
	c, err := hostname.CanonicalDomain(name)
	if err != nil {
		return "", &inputError{kind: ErrInvalidDomain, cause: err}
	}
	return c, nil
}

func checkMemo(memo string) error {
	var problem string
	switch {
	case !utf8.ValidString(memo):
		problem = "memo is not valid UTF-8"
	case utf8.RuneCountInString(memo) > MaxMemo:
		problem = fmt.Sprintf("memo is longer than %d characters", MaxMemo)
	case strings.ContainsFunc(memo, unicode.IsControl):
		problem = "memo contains control characters"
	default:
		return nil
	}
	return &inputError{kind: ErrInvalidInput, cause: errors.New(problem)}
}
