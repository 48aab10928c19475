package registry

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

func appendN(t *testing.T, s *Store, n int, actor string) {
	t.Helper()
	for i := range n {
		if _, err := s.AppendAudit(context.Background(), AuditEntry{Actor: actor, Remote: "127.0.0.1", Action: "domains/register", Target: fmt.Sprintf("d%d.example.com", i), Result: "201"}); err != nil {
			t.Fatalf("AppendAudit: %v", err)
		}
	}
}

func verifyProblems(t *testing.T, s *Store) (int, []AuditProblem) {
	t.Helper()
	n, problems, err := s.VerifyAudit(context.Background())
	if err != nil {
		t.Fatalf("VerifyAudit: %v", err)
	}
	return n, problems
}

// TestAuditChain: appends from two stores on one database (two gateways) at once make one whole
// chain; an edited row, an edited time and a deleted row are each found and named.
func TestAuditChain(t *testing.T) {
	forEach(t, func(t *testing.T, o Options) {
		s := open(t, o)
		var wg sync.WaitGroup
		for _, st := range []*Store{s, open(t, o)} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				appendN(t, st, 10, "admin-key")
			}()
		}
		wg.Wait()
		if n, p := verifyProblems(t, s); n != 20 || len(p) != 0 {
			t.Fatalf("untouched chain: %d rows, problems %v; want 20 rows, none", n, p)
		}
		page, err := s.Audit(context.Background(), 5, 0)
		if err != nil || len(page) != 5 || page[0].ID != 20 || page[4].ID != 16 {
			t.Fatalf("Audit(5, 0) = %d entries from %v (%v), want ids 20..16", len(page), page, err)
		}
		if older, _ := s.Audit(context.Background(), 5, 16); len(older) != 5 || older[0].ID != 15 {
			t.Fatalf("Audit(5, 16) starts at %v, want id 15", older)
		}
		if page[0].At.IsZero() || time.Since(page[0].At) > time.Minute || page[0].Hash == "" || page[0].PrevHash != page[1].Hash {
			t.Fatalf("newest entry %+v: want its time, hash and the previous row's hash", page[0])
		}

		if _, err := s.db.Exec("UPDATE audit_log SET result = '403' WHERE id = 7"); err != nil {
			t.Fatal(err)
		}
		if _, p := verifyProblems(t, s); len(p) != 1 || p[0].ID != 7 || !strings.Contains(p[0].Reason, "edited") {
			t.Fatalf("row 7 edited: problems %v, want row 7 named", p)
		}
		// Rewriting the hash to match the edit breaks the next row's link instead.
		var row AuditEntry
		if err := s.db.QueryRow("SELECT id, at, actor, remote, action, target, result, prev_hash FROM audit_log WHERE id = 7").
			Scan(&row.ID, &row.at, &row.Actor, &row.Remote, &row.Action, &row.Target, &row.Result, &row.PrevHash); err != nil {
			t.Fatal(err)
		}
		if _, err := s.db.Exec(s.rebind("UPDATE audit_log SET hash = ? WHERE id = 7"), auditHash(row)); err != nil {
			t.Fatal(err)
		}
		if _, p := verifyProblems(t, s); len(p) != 1 || p[0].ID != 8 || !strings.Contains(p[0].Reason, "row 7") {
			t.Fatalf("row 7 edited and rehashed: problems %v, want row 8 naming row 7", p)
		}

		if _, err := s.db.Exec("UPDATE audit_log SET at = '2020-01-01T00:00:00Z' WHERE id = 12"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.db.Exec("DELETE FROM audit_log WHERE id = 15"); err != nil {
			t.Fatal(err)
		}
		n, p := verifyProblems(t, s)
		found := map[int64]string{}
		for _, x := range p {
			found[x.ID] += x.Reason
		}
		if n != 19 || !strings.Contains(found[12], "edited") || !strings.Contains(found[16], "row 15") || !strings.Contains(found[16], "deleted") {
			t.Fatalf("time of row 12 edited, row 15 deleted: %d rows, problems %v", n, p)
		}

		// The chain goes on from the last row as it is.
		appendN(t, s, 1, "console")
		if latest, _ := s.Audit(context.Background(), 1, 0); len(latest) != 1 || latest[0].ID != 21 {
			t.Fatalf("after the damage the next append is %v, want id 21", latest)
		}
	})
}

// TestAuditClip: fields are bounded, so a caller cannot grow the table by what it sends.
func TestAuditClip(t *testing.T) {
	s := open(t, backends[0].options(t))
	long := strings.Repeat("é", 400)
	e, err := s.AppendAudit(context.Background(), AuditEntry{Actor: "a", Action: "x", Target: long, Result: "400"})
	if err != nil {
		t.Fatal(err)
	}
	if len(e.Target) > auditField || !strings.HasPrefix(long, e.Target) {
		t.Fatalf("target of %d bytes kept as %d bytes", len(long), len(e.Target))
	}
	if _, p := verifyProblems(t, s); len(p) != 0 {
		t.Fatalf("problems %v", p)
	}
}
