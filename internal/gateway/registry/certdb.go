package registry

import (
	"database/sql"

	"github.com/hopgate/hopgate/migrations"
)

// SQL returns the store's Postgres handle, for the certificate storage that every gateway on the
// database shares (internal/gateway/acme.PGStorage, tables of migration 000005); ok is false for the
// embedded store, whose gateway keeps its certificates in files. The handle stays the Store's:
// Close closes it.
func (s *Store) SQL() (db *sql.DB, ok bool) {
	if s.dialect != migrations.Postgres {
		return nil, false
	}
	return s.db, true
}
