package registry

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// ConsoleSession is a signed-in operator of the web console.
type ConsoleSession struct {
	// CSRF is the token every change the session makes must carry.
	CSRF    string
	Actor   string
	Created time.Time
	Expires time.Time
}

// ErrNoSession: no session has that id, or it has expired.
var ErrNoSession = errors.New("no such console session")

// CreateConsoleSession stores a session under the hash of its cookie's value, and drops the
// sessions that have expired: sign-ins are rare, so that is often enough to keep the table small.
func (s *Store) CreateConsoleSession(ctx context.Context, idHash string, cs ConsoleSession) error {
	if _, err := s.db.ExecContext(ctx, s.rebind("DELETE FROM console_sessions WHERE expires_at < ?"), time.Now().Unix()); err != nil {
		return classify("registry: console session", err)
	}
	_, err := s.db.ExecContext(ctx, s.rebind("INSERT INTO console_sessions (id_hash, csrf, actor, created_at, expires_at) VALUES (?, ?, ?, ?, ?)"),
		idHash, cs.CSRF, clip(cs.Actor), cs.Created.Unix(), cs.Expires.Unix())
	return classify("registry: console session", err)
}

// ConsoleSession returns the live session stored under idHash, or ErrNoSession.
func (s *Store) ConsoleSession(ctx context.Context, idHash string) (ConsoleSession, error) {
	var cs ConsoleSession
	var created, expires int64
	err := s.db.QueryRowContext(ctx, s.rebind("SELECT csrf, actor, created_at, expires_at FROM console_sessions WHERE id_hash = ?"), idHash).
		Scan(&cs.CSRF, &cs.Actor, &created, &expires)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return ConsoleSession{}, fmt.Errorf("registry: %w", ErrNoSession)
	case err != nil:
		return ConsoleSession{}, classify("registry: console session", err)
	}
	cs.Created, cs.Expires = time.Unix(created, 0), time.Unix(expires, 0)
	if !time.Now().Before(cs.Expires) {
		return ConsoleSession{}, fmt.Errorf("registry: %w", ErrNoSession)
	}
	return cs, nil
}

// DeleteConsoleSession ends a session (sign-out); ending one that is gone is no error.
func (s *Store) DeleteConsoleSession(ctx context.Context, idHash string) error {
	_, err := s.db.ExecContext(ctx, s.rebind("DELETE FROM console_sessions WHERE id_hash = ?"), idHash)
	return classify("registry: console session", err)
}
