package migrations_test

import (
	"context"
	"testing"

	"github.com/hopgate/hopgate/migrations"
)

// TestACMEStorageTables: migration 000005 creates the shared certificate tables on Postgres (and
// again without error after the version is moved back), drops them going down, and creates nothing
// in the embedded store.
func TestACMEStorageTables(t *testing.T) {
	t.Parallel()
	for _, dc := range dialects {
		t.Run(string(dc.dialect), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			db := dc.open(t)
			if _, err := migrations.Up(ctx, db, dc.dialect); err != nil {
				t.Fatal(err)
			}
			if dc.dialect == migrations.SQLite {
				if _, err := db.ExecContext(ctx, "SELECT 1 FROM acme_storage"); err == nil {
					t.Fatal("the embedded store has acme_storage; it keeps certificates in files")
				}
				return
			}
			if _, err := db.ExecContext(ctx, "INSERT INTO acme_storage (key, value) VALUES ('certificates/a.crt', '\\x00ff')"); err != nil {
				t.Fatal(err)
			}
			if _, err := db.ExecContext(ctx, "INSERT INTO acme_storage (key, value) VALUES ('certificates/a.crt', '')"); err == nil {
				t.Fatal("duplicate key accepted")
			}
			if _, err := db.ExecContext(ctx, "INSERT INTO acme_locks (name, holder, expires_at) VALUES ('certificates/a', 'gw1', now())"); err != nil {
				t.Fatal(err)
			}
			var n int
			if err := db.QueryRowContext(ctx, "SELECT count(*) FROM acme_storage WHERE updated_at IS NOT NULL AND length(value) = 2").Scan(&n); err != nil || n != 1 {
				t.Fatalf("acme_storage rows = %d, %v", n, err)
			}
			// Moved back a version, the migration runs again over the existing tables, keeping rows.
			if _, err := db.ExecContext(ctx, "UPDATE schema_migrations SET version = 4"); err != nil {
				t.Fatal(err)
			}
			if _, err := migrations.Up(ctx, db, dc.dialect); err != nil {
				t.Fatalf("000005 again: %v", err)
			}
			if err := db.QueryRowContext(ctx, "SELECT count(*) FROM acme_storage").Scan(&n); err != nil || n != 1 {
				t.Fatalf("after re-running 000005: %d rows, %v", n, err)
			}
			fsys, _ := migrations.FS(dc.dialect)
			exec(t, db, fsys, "000005_acme_storage.down.sql")
			for _, table := range []string{"acme_storage", "acme_locks"} {
				if _, err := db.ExecContext(ctx, "SELECT 1 FROM "+table); err == nil {
					t.Fatalf("%s still exists after the down migration", table)
				}
			}
		})
	}
}
