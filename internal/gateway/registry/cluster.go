package registry

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/lib/pq"

	"github.com/hopgate/hopgate/ent/domain"
	"github.com/hopgate/hopgate/migrations"
)

// What several gateways on one Postgres share beyond the tables of domains: a NOTIFY channel that
// tells the others what changed, and presence rows (gateway_agents) that say how many agents each
// gateway holds. The embedded SQLite store serves one gateway only; there these are no-ops.

// channelExpr is the NOTIFY channel of the store's schema, computed by the database: tests (and
// operators) that give each gateway group its own schema on one server must not hear each other.
// A channel name is at most 63 bytes; a longer schema name is replaced by its MD5.
const channelExpr = `CASE WHEN current_schema() = 'public' THEN 'hopgate_changes'
	WHEN octet_length(current_schema()) <= 47 THEN 'hopgate_changes_' || current_schema()
	ELSE 'hopgate_changes_' || md5(current_schema()) END`

// Shared reports whether several gateways can share the store (Postgres). The embedded store is
// one gateway's.
func (s *Store) Shared() bool { return s.dialect == migrations.Postgres }

// ChangesChannel is the channel Publish notifies on, for a listener to LISTEN to.
func (s *Store) ChangesChannel(ctx context.Context) (string, error) {
	if !s.Shared() {
		return "", fmt.Errorf("registry: changes channel: %w: the embedded store is not shared", ErrInvalidInput)
	}
	var ch string
	if err := s.db.QueryRowContext(ctx, "SELECT "+channelExpr).Scan(&ch); err != nil {
		return "", classify("registry: changes channel", err)
	}
	return ch, nil
}

// Publish sends payload to every listener of ChangesChannel (pg_notify: delivered when the statement
// commits, to the listeners connected then). On the embedded store it does nothing.
func (s *Store) Publish(ctx context.Context, payload string) error {
	if !s.Shared() {
		return nil
	}
	if _, err := s.db.ExecContext(ctx, "SELECT pg_notify("+channelExpr+", $1)", payload); err != nil {
		return classify("registry: publish a change", err)
	}
	return nil
}

// KeyIDs returns every registered domain with an id of its current client API key: a digest of the
// stored hash, which changes when the key is rotated and says nothing about the key.
func (s *Store) KeyIDs(ctx context.Context) (map[string]string, error) {
	var rows []struct {
		Name    string `json:"name"`
		KeyHash string `json:"key_hash"`
	}
	err := s.client.Domain.Query().Select(domain.FieldName, domain.FieldKeyHash).Scan(ctx, &rows)
	if err != nil {
		return nil, classify("registry: key ids", err)
	}
	out := make(map[string]string, len(rows))
	for _, r := range rows {
		out[r.Name] = KeyID(r.KeyHash)
	}
	return out, nil
}

// KeyID is the id of a key of the given stored hash, as KeyIDs reports it.
func KeyID(keyHash string) string {
	sum := sha256.Sum256([]byte(keyHash))
	return hex.EncodeToString(sum[:8])
}

// Presence is one gateway's live agents of one domain as of its last heartbeat. Domain "" is the
// gateway's own row, Agents its total.
type Presence struct {
	Gateway string
	Domain  string
	Agents  int
}

// presenceRetention is how long rows of a gateway that stopped heartbeating stay in the table (they
// stop counting much earlier, see PresenceSince); each heartbeat removes older ones.
const presenceRetention = 10 * time.Minute

// Heartbeat replaces gateway's presence rows with counts (domains with no agent may be left out)
// plus its own row, all stamped with the database's clock, and removes rows of any gateway older
// than presenceRetention. On the embedded store it does nothing.
func (s *Store) Heartbeat(ctx context.Context, gateway string, counts map[string]int) error {
	if !s.Shared() {
		return nil
	}
	domains := []string{""}
	agents := []int64{0}
	for d, n := range counts {
		if n > 0 && d != "" {
			domains = append(domains, d)
			agents = append(agents, int64(n))
			agents[0] += int64(n)
		}
	}
	op := "registry: heartbeat of " + gateway
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return classify(op, err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	// now() is the transaction's start time, the same for every statement: the rows just written
	// carry it, and what is older is what this heartbeat no longer reports.
	if _, err := tx.ExecContext(ctx, `INSERT INTO gateway_agents (gateway_id, domain, agents, heartbeat_at)
		SELECT $1, d, n, now() FROM unnest($2::text[], $3::bigint[]) AS t(d, n)
		ON CONFLICT (gateway_id, domain) DO UPDATE SET agents = EXCLUDED.agents, heartbeat_at = EXCLUDED.heartbeat_at`,
		gateway, pq.Array(domains), pq.Array(agents)); err != nil {
		return classify(op, err)
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM gateway_agents
		WHERE (gateway_id = $1 AND heartbeat_at < now()) OR heartbeat_at < now() - make_interval(secs => $2)`,
		gateway, presenceRetention.Seconds()); err != nil {
		return classify(op, err)
	}
	return classify(op, tx.Commit())
}

// PresenceSince returns the presence rows whose heartbeat is at most maxAge old by the database's
// clock: the live gateways and their agents. On the embedded store there are none.
func (s *Store) PresenceSince(ctx context.Context, maxAge time.Duration) ([]Presence, error) {
	if !s.Shared() {
		return nil, nil
	}
	rows, err := s.db.QueryContext(ctx, `SELECT gateway_id, domain, agents FROM gateway_agents
		WHERE heartbeat_at >= now() - make_interval(secs => $1) ORDER BY gateway_id, domain`, maxAge.Seconds())
	if err != nil {
		return nil, classify("registry: presence", err)
	}
	defer rows.Close()
	var out []Presence
	for rows.Next() {
		var p Presence
		if err := rows.Scan(&p.Gateway, &p.Domain, &p.Agents); err != nil {
			return nil, classify("registry: presence", err)
		}
		out = append(out, p)
	}
	return out, classify("registry: presence", rows.Err())
}

// LeavePresence removes gateway's presence rows (a clean shutdown: its agents stop counting at once
// rather than when the rows age out).
func (s *Store) LeavePresence(ctx context.Context, gateway string) error {
	if !s.Shared() {
		return nil
	}
	if _, err := s.db.ExecContext(ctx, "DELETE FROM gateway_agents WHERE gateway_id = $1", gateway); err != nil {
		return classify("registry: leave presence of "+gateway, err)
	}
	return nil
}
