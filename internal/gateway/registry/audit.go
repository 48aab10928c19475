package registry

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/hopgate/hopgate/migrations"
)

// AuditEntry is one admin action: who did what to which target, from where, when, and how it ended.
type AuditEntry struct {
	ID     int64
	At     time.Time
	Actor  string // "admin-key", "admin-key (cli)", "console", ...
	Remote string // the caller's address
	Action string // "domains/register", "console/sign-in", ...
	Target string // the domain, or empty
	Result string // "200", "409 domain already registered", ...
	// PrevHash and Hash chain the rows: Hash covers every field above and PrevHash, which is the
	// previous row's Hash ("" for the first row).
	PrevHash string
	Hash     string
	// at is At as stored, which the hash covers: a row whose time was edited into another form
	// must fail the check, not be normalised into passing it.
	at string
}

// auditField bounds what an entry's text fields may hold: an entry is written for requests that
// failed validation too, and a caller must not be able to grow the table by megabytes a row.
const auditField = 256

// auditLock is the key of the Postgres advisory lock that makes appends take turns across gateways:
// each one reads the last row and writes the next, which must not interleave.
const auditLock = 0x686f7067617564 // "hopgaud"

// auditHash is the hash a row must carry. The fields are JSON-encoded as one array so that no two
// different rows can hash alike by moving text from one field into the next.
func auditHash(e AuditEntry) string {
	at := e.at
	if at == "" {
		at = auditTime(e.At)
	}
	b, _ := json.Marshal([]string{strconv.FormatInt(e.ID, 10), at, e.Actor, e.Remote, e.Action, e.Target, e.Result, e.PrevHash})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func auditTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// clip keeps at most auditField bytes of s, on a rune boundary.
func clip(s string) string {
	if len(s) <= auditField {
		return s
	}
	// A rune cut in two at the end is dropped.
	return strings.ToValidUTF8(s[:auditField], "")
}

// rebind turns ? placeholders into Postgres's $n.
func (s *Store) rebind(q string) string {
	if s.dialect != migrations.Postgres {
		return q
	}
	var b strings.Builder
	n := 0
	for _, r := range q {
		if r == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// AppendAudit adds an entry at the end of the chain and returns it with its id and hashes. Appends
// take turns: on Postgres under an advisory lock held for the transaction (every gateway on the
// database), on SQLite because its transactions are immediate (one writer at a time).
func (s *Store) AppendAudit(ctx context.Context, e AuditEntry) (AuditEntry, error) {
	e.Actor, e.Remote, e.Action, e.Target, e.Result = clip(e.Actor), clip(e.Remote), clip(e.Action), clip(e.Target), clip(e.Result)
	if e.At.IsZero() {
		e.At = time.Now()
	}
	e.At = e.At.UTC()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return AuditEntry{}, classify("registry: audit", err)
	}
	defer func() { _ = tx.Rollback() }()
	if s.dialect == migrations.Postgres {
		if _, err := tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock($1)", auditLock); err != nil {
			return AuditEntry{}, classify("registry: audit lock", err)
		}
	}
	var last int64
	var prev string
	err = tx.QueryRowContext(ctx, "SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1").Scan(&last, &prev)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return AuditEntry{}, classify("registry: audit", err)
	}
	e.ID, e.PrevHash = last+1, prev
	e.Hash = auditHash(e)
	_, err = tx.ExecContext(ctx, s.rebind("INSERT INTO audit_log (id, at, actor, remote, action, target, result, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"),
		e.ID, auditTime(e.At), e.Actor, e.Remote, e.Action, e.Target, e.Result, e.PrevHash, e.Hash)
	if err != nil {
		return AuditEntry{}, classify("registry: audit", err)
	}
	if err := tx.Commit(); err != nil {
		return AuditEntry{}, classify("registry: audit", err)
	}
	return e, nil
}

// MaxAuditPage bounds one page of Audit.
const MaxAuditPage = 1000

// Audit returns up to limit entries, newest first, with ids below before (0: from the newest).
func (s *Store) Audit(ctx context.Context, limit int, before int64) ([]AuditEntry, error) {
	if limit <= 0 || limit > MaxAuditPage {
		limit = MaxAuditPage
	}
	if before <= 0 {
		before = 1<<63 - 1
	}
	rows, err := s.db.QueryContext(ctx, s.rebind(`SELECT id, at, actor, remote, action, target, result, prev_hash, hash
		FROM audit_log WHERE id < ? ORDER BY id DESC LIMIT ?`), before, limit)
	if err != nil {
		return nil, classify("registry: audit", err)
	}
	defer rows.Close()
	var out []AuditEntry
	for rows.Next() {
		e, err := scanAudit(rows)
		if err != nil {
			return nil, classify("registry: audit", err)
		}
		out = append(out, e)
	}
	return out, classify("registry: audit", rows.Err())
}

// scanAudit reads one row. A time that does not parse reads as the zero time; the hash check, which
// covers the stored text, names the row.
func scanAudit(rows *sql.Rows) (AuditEntry, error) {
	var e AuditEntry
	if err := rows.Scan(&e.ID, &e.at, &e.Actor, &e.Remote, &e.Action, &e.Target, &e.Result, &e.PrevHash, &e.Hash); err != nil {
		return AuditEntry{}, err
	}
	e.At, _ = time.Parse(time.RFC3339Nano, e.at)
	return e, nil
}

// AuditProblem is one place where the chain is broken.
type AuditProblem struct {
	ID     int64  `json:"id"`
	Reason string `json:"reason"`
}

func (p AuditProblem) String() string { return fmt.Sprintf("row %d: %s", p.ID, p.Reason) }

// VerifyAudit walks the whole chain in id order and reports every row that was edited (its hash is
// not the hash of its fields), that follows a deleted row (a gap in the ids), or whose link to the
// previous row is broken. rows is how many rows were read. The last rows deleted together leave a
// shorter chain that is whole: that is the one change a chain without an outside anchor cannot see.
func (s *Store) VerifyAudit(ctx context.Context) (rows int, problems []AuditProblem, err error) {
	r, err := s.db.QueryContext(ctx, `SELECT id, at, actor, remote, action, target, result, prev_hash, hash FROM audit_log ORDER BY id`)
	if err != nil {
		return 0, nil, classify("registry: audit verify", err)
	}
	defer r.Close()
	var prevID int64
	prevHash := ""
	for r.Next() {
		e, err := scanAudit(r)
		if err != nil {
			return rows, problems, classify("registry: audit verify", err)
		}
		rows++
		switch {
		case e.ID != prevID+1:
			problems = append(problems, AuditProblem{e.ID, deleted(prevID+1, e.ID-1)})
		case e.PrevHash != prevHash:
			problems = append(problems, AuditProblem{e.ID, fmt.Sprintf("prev_hash does not match row %d: row %d was edited, or this link was", prevID, prevID)})
		}
		if auditHash(e) != e.Hash {
			problems = append(problems, AuditProblem{e.ID, "edited: its hash is not the hash of its fields"})
		}
		prevID, prevHash = e.ID, e.Hash
	}
	if err := r.Err(); err != nil {
		return rows, problems, classify("registry: audit verify", err)
	}
	return rows, problems, nil
}

func deleted(from, to int64) string {
	if from == to {
		return fmt.Sprintf("row %d before it was deleted", from)
	}
	if from > to {
		return fmt.Sprintf("ids out of order after row %d", from-1)
	}
	return fmt.Sprintf("rows %d to %d before it were deleted", from, to)
}
