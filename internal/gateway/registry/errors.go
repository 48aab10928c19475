package registry

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/hopgate/hopgate/ent"
)

// classify wraps a database error with op and the sentinel a caller branches on.
func classify(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case ent.IsNotFound(err):
		return fmt.Errorf("%s: %w", op, ErrNotFound)
	case ent.IsConstraintError(err):
		// The only constraint a valid write can break is the unique name.
		return fmt.Errorf("%s: %w", op, ErrExists)
	case unavailable(err):
		return fmt.Errorf("%s: %w: %w", op, ErrUnavailable, err)
	default:
		return fmt.Errorf("%s: %w", op, err)
	}
}

// unavailable reports whether err means the database cannot serve requests right now, as opposed to
// a request it rejected.
func unavailable(err error) bool {
	if errors.Is(err, driver.ErrBadConn) ||
		errors.Is(err, sql.ErrConnDone) ||
		errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) {
		return true
	}
	var netErr net.Error
	if errors.As(err, &netErr) {
		return true
	}
	// Postgres (lib/pq): connection exceptions (08), insufficient resources (53), operator
	// intervention such as shutdown (57), system errors (58).
	var pgErr interface{ SQLState() string }
	if errors.As(err, &pgErr) {
		switch code := pgErr.SQLState(); {
		case len(code) < 2:
		case code[:2] == "08", code[:2] == "53", code[:2] == "57", code[:2] == "58":
			return true
		}
	}
	// SQLite (modernc): primary result codes for a store that cannot work, not a rejected statement.
	var liteErr interface{ Code() int }
	if errors.As(err, &liteErr) {
		switch liteErr.Code() & 0xff {
		case 5, // SQLITE_BUSY
			6,  // SQLITE_LOCKED
			7,  // SQLITE_NOMEM
			8,  // SQLITE_READONLY
			10, // SQLITE_IOERR
			11, // SQLITE_CORRUPT
			13, // SQLITE_FULL
			14, // SQLITE_CANTOPEN
			26: // SQLITE_NOTADB
			return true
		}
	}
	// database/sql reports a closed *sql.DB with an unexported error.
	return strings.Contains(err.Error(), "sql: database is closed")
}
