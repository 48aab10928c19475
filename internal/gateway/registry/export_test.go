package registry

import (
	"database/sql"
	"path/filepath"
	"strings"
)

// openRaw opens the database of o without migrating, to tamper with it in tests.
func openRaw(o Options) (*sql.DB, error) {
	if strings.TrimSpace(o.DSN) != "" {
		return sql.Open("postgres", o.DSN)
	}
	return sql.Open("sqlite", filepath.Join(o.DataDir, DBFile))
}
