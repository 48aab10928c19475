package migrations_test

import (
	"context"
	"database/sql"
	"errors"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	_ "github.com/lib/pq"
	_ "modernc.org/sqlite"

	entmigrate "github.com/hopgate/hopgate/ent/migrate"
	"github.com/hopgate/hopgate/internal/testutil/pgtest"
	"github.com/hopgate/hopgate/migrations"
)

type dialectCase struct {
	dialect migrations.Dialect
	open    func(t *testing.T) *sql.DB
}

var dialects = []dialectCase{
	{migrations.SQLite, func(t *testing.T) *sql.DB {
		db, err := sql.Open("sqlite", filepath.Join(t.TempDir(), "m.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		return db
	}},
	{migrations.Postgres, func(t *testing.T) *sql.DB {
		db, err := sql.Open("postgres", pgtest.DSN(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		return db
	}},
}

// Every dialect has the same versions, each with an up and a down file.
func TestFilesPaired(t *testing.T) {
	t.Parallel()
	var want []string
	for _, d := range []migrations.Dialect{migrations.Postgres, migrations.SQLite} {
		fsys, err := migrations.FS(d)
		if err != nil {
			t.Fatal(err)
		}
		ups, _ := fs.Glob(fsys, "*.up.sql")
		downs, _ := fs.Glob(fsys, "*.down.sql")
		if len(ups) == 0 || len(ups) != len(downs) {
			t.Fatalf("%s: %d up and %d down files", d, len(ups), len(downs))
		}
		for i := range ups {
			if strings.TrimSuffix(ups[i], ".up.sql") != strings.TrimSuffix(downs[i], ".down.sql") {
				t.Fatalf("%s: %s has no matching down file", d, ups[i])
			}
		}
		if want == nil {
			want = ups
		} else if !slices.Equal(want, ups) {
			t.Fatalf("dialects differ: %v vs %v", want, ups)
		}
	}
	if _, err := migrations.FS("mysql"); err == nil {
		t.Fatal("FS(mysql) succeeded")
	}
}

func TestUp(t *testing.T) {
	t.Parallel()
	for _, dc := range dialects {
		t.Run(string(dc.dialect), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			db := dc.open(t)
			latest, err := migrations.Latest(dc.dialect)
			if err != nil {
				t.Fatal(err)
			}
			v, err := migrations.Up(ctx, db, dc.dialect)
			if err != nil || v != latest {
				t.Fatalf("Up from empty = %d, %v; want %d", v, err, latest)
			}
			if v, err := migrations.Up(ctx, db, dc.dialect); err != nil || v != latest {
				t.Fatalf("Up again = %d, %v; want a no-op at %d", v, err, latest)
			}

			// The table has exactly the columns the generated ent code reads and writes.
			rows, err := db.QueryContext(ctx, "SELECT * FROM domains")
			if err != nil {
				t.Fatal(err)
			}
			cols, err := rows.Columns()
			rows.Close()
			if err != nil {
				t.Fatal(err)
			}
			var entCols []string
			for _, c := range entmigrate.DomainsColumns {
				entCols = append(entCols, c.Name)
			}
			if !slices.Equal(cols, entCols) {
				t.Fatalf("domains columns %v, ent expects %v", cols, entCols)
			}

			// name is unique, memo defaults to "".
			insert := "INSERT INTO domains (name, key_hash, created_at, updated_at) VALUES ('a.example.com', 'h', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
			if _, err := db.ExecContext(ctx, insert); err != nil {
				t.Fatal(err)
			}
			if _, err := db.ExecContext(ctx, insert); err == nil {
				t.Fatal("duplicate name accepted")
			}
			var memo string
			if err := db.QueryRowContext(ctx, "SELECT memo FROM domains").Scan(&memo); err != nil || memo != "" {
				t.Fatalf("memo default = %q, %v", memo, err)
			}

			// A version from the future is refused, naming both versions.
			if _, err := db.ExecContext(ctx, "UPDATE schema_migrations SET version = 42"); err != nil {
				t.Fatal(err)
			}
			_, err = migrations.Up(ctx, db, dc.dialect)
			if !errors.Is(err, migrations.ErrSchemaTooNew) || !strings.Contains(err.Error(), "42") {
				t.Fatalf("Up at version 42 = %v, want ErrSchemaTooNew naming 42", err)
			}

			// A half-applied migration is refused.
			if _, err := db.ExecContext(ctx, "UPDATE schema_migrations SET version = 1, dirty = true"); err != nil {
				t.Fatal(err)
			}
			if _, err := migrations.Up(ctx, db, dc.dialect); !errors.Is(err, migrations.ErrDirty) {
				t.Fatalf("Up on a dirty schema = %v, want ErrDirty", err)
			}

			// The down migration removes what up created.
			fsys, _ := migrations.FS(dc.dialect)
			down, err := fs.ReadFile(fsys, "000001_create_domains.down.sql")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := db.ExecContext(ctx, string(down)); err != nil {
				t.Fatal(err)
			}
			if _, err := db.ExecContext(ctx, "SELECT 1 FROM domains"); err == nil {
				t.Fatal("domains still exists after the down migration")
			}
		})
	}
}
