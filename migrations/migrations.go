// Package migrations holds HopGate's versioned SQL migrations, one folder per dialect, and applies them.
//
// The SQL here is the only thing that changes the database schema: ent's auto-migration is never used,
// so every release knows exactly which statements it runs and a database can be upgraded by an
// operator with the stock migrate CLI if need be.
package migrations

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/golang-migrate/migrate/v4"
	"github.com/golang-migrate/migrate/v4/database"
	"github.com/golang-migrate/migrate/v4/database/postgres"
	"github.com/golang-migrate/migrate/v4/database/sqlite"
	"github.com/golang-migrate/migrate/v4/source"
	"github.com/golang-migrate/migrate/v4/source/iofs"
)

//go:embed postgres/*.sql sqlite/*.sql
var files embed.FS

// Dialect names a folder of migrations and the database it is written for.
type Dialect string

// The supported dialects.
const (
	Postgres Dialect = "postgres"
	SQLite   Dialect = "sqlite"
)

var (
	// ErrSchemaTooNew means the database was migrated by a newer HopGate than this one. Running on it
	// could corrupt data the newer version relies on, so the store refuses to open.
	ErrSchemaTooNew = errors.New("database schema is newer than this binary")
	// ErrDirty means a migration failed partway and left the schema in an unknown state.
	ErrDirty = errors.New("database schema is dirty")
)

// FS returns the migrations of one dialect, files named like 000001_name.up.sql at its root.
func FS(d Dialect) (fs.FS, error) {
	switch d {
	case Postgres, SQLite:
		return fs.Sub(files, string(d))
	default:
		return nil, fmt.Errorf("migrations: unknown dialect %q", d)
	}
}

// Latest returns the highest migration version known for a dialect.
func Latest(d Dialect) (uint, error) {
	src, err := openSource(d)
	if err != nil {
		return 0, err
	}
	defer src.Close()
	return latest(src)
}

// Up applies every pending migration of dialect d to db and returns the resulting schema version.
// It is a no-op on an up-to-date database. It fails with ErrSchemaTooNew if the database is at a
// version this binary does not know, and with ErrDirty if an earlier migration failed partway.
//
// db stays open: on Postgres the migration runs on one connection taken from db (which also holds
// migrate's advisory lock, so concurrent servers migrate one at a time), on SQLite on db itself.
func Up(ctx context.Context, db *sql.DB, d Dialect) (uint, error) {
	src, err := openSource(d)
	if err != nil {
		return 0, err
	}
	defer src.Close()
	want, err := latest(src)
	if err != nil {
		return 0, err
	}

	var drv database.Driver
	switch d {
	case Postgres:
		conn, err := db.Conn(ctx)
		if err != nil {
			return 0, fmt.Errorf("migrations: connect: %w", err)
		}
		// Closing conn returns it to db's pool; the driver's own Close would close db too.
		defer conn.Close()
		// The migrations table lives in current_schema(), i.e. the first schema of search_path.
		drv, err = postgres.WithConnection(ctx, conn, &postgres.Config{})
		if err != nil {
			return 0, fmt.Errorf("migrations: prepare postgres: %w", err)
		}
	case SQLite:
		// Not closed: sqlite's driver holds nothing but db, and its Close would close db.
		drv, err = sqlite.WithInstance(db, &sqlite.Config{})
		if err != nil {
			return 0, fmt.Errorf("migrations: prepare sqlite: %w", err)
		}
	}

	have, dirty, err := drv.Version()
	if err != nil {
		return 0, fmt.Errorf("migrations: read schema version: %w", err)
	}
	if dirty {
		return 0, fmt.Errorf("%w at version %d: a migration failed partway; repair the schema by hand, then set the version with `migrate force`", ErrDirty, have)
	}
	if have != database.NilVersion && uint(have) > want {
		return 0, fmt.Errorf("%w: database is at version %d, this binary knows versions up to %d; run a newer HopGate or restore a backup", ErrSchemaTooNew, have, want)
	}

	m, err := migrate.NewWithInstance("iofs", src, string(d), drv)
	if err != nil {
		return 0, fmt.Errorf("migrations: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- m.Up() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		// migrate stops after the migration in progress; wait for it so nothing runs on behind us.
		m.GracefulStop <- true
		err = <-done
		if err == nil || errors.Is(err, migrate.ErrNoChange) {
			err = ctx.Err()
		}
	}
	if err != nil && !errors.Is(err, migrate.ErrNoChange) {
		var dirtyErr migrate.ErrDirty
		if errors.As(err, &dirtyErr) {
			return 0, fmt.Errorf("%w at version %d: %w", ErrDirty, dirtyErr.Version, err)
		}
		return 0, fmt.Errorf("migrations: apply %s: %w", d, err)
	}
	v, dirty, err := m.Version()
	if err != nil {
		return 0, fmt.Errorf("migrations: read schema version: %w", err)
	}
	if dirty {
		return 0, fmt.Errorf("%w at version %d", ErrDirty, v)
	}
	return v, nil
}

func openSource(d Dialect) (source.Driver, error) {
	sub, err := FS(d)
	if err != nil {
		return nil, err
	}
	src, err := iofs.New(sub, ".")
	if err != nil {
		return nil, fmt.Errorf("migrations: read %s: %w", d, err)
	}
	return src, nil
}

func latest(src source.Driver) (uint, error) {
	v, err := src.First()
	if err != nil {
		return 0, fmt.Errorf("migrations: no migrations: %w", err)
	}
	for {
		next, err := src.Next(v)
		if errors.Is(err, os.ErrNotExist) {
			return v, nil
		}
		if err != nil {
			return 0, fmt.Errorf("migrations: list: %w", err)
		}
		v = next
	}
}
