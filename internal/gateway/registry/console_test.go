package registry

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestConsoleSessions: a session is found by its hash until it expires or is deleted, on both
// stores, and a second store on the same database (another gateway) sees it.
func TestConsoleSessions(t *testing.T) {
	forEach(t, func(t *testing.T, o Options) {
		ctx := context.Background()
		s, other := open(t, o), open(t, o)
		now := time.Now()
		if err := s.CreateConsoleSession(ctx, "live", ConsoleSession{CSRF: "c1", Actor: "console", Created: now, Expires: now.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		if err := s.CreateConsoleSession(ctx, "old", ConsoleSession{CSRF: "c2", Actor: "console", Created: now.Add(-2 * time.Hour), Expires: now.Add(-time.Hour)}); err != nil {
			t.Fatal(err)
		}
		cs, err := other.ConsoleSession(ctx, "live")
		if err != nil || cs.CSRF != "c1" || cs.Actor != "console" || cs.Expires.Unix() != now.Add(time.Hour).Unix() {
			t.Fatalf("ConsoleSession(live) = %+v, %v", cs, err)
		}
		if _, err := s.ConsoleSession(ctx, "old"); !errors.Is(err, ErrNoSession) {
			t.Fatalf("expired session: %v, want ErrNoSession", err)
		}
		if _, err := s.ConsoleSession(ctx, "never"); !errors.Is(err, ErrNoSession) {
			t.Fatalf("unknown session: %v, want ErrNoSession", err)
		}
		if err := s.DeleteConsoleSession(ctx, "live"); err != nil {
			t.Fatal(err)
		}
		if _, err := other.ConsoleSession(ctx, "live"); !errors.Is(err, ErrNoSession) {
			t.Fatalf("deleted session: %v, want ErrNoSession", err)
		}
		// The next sign-in sweeps expired rows.
		if err := s.CreateConsoleSession(ctx, "next", ConsoleSession{CSRF: "c3", Created: now, Expires: now.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		var n int
		if err := s.db.QueryRow("SELECT count(*) FROM console_sessions").Scan(&n); err != nil || n != 1 {
			t.Fatalf("%d rows after the sweep (%v), want 1", n, err)
		}
	})
}
