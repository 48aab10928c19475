package gateway

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/hopgate/hopgate/internal/testutil/pgtest"
	"github.com/hopgate/hopgate/internal/testutil/poll"
)

// logLines decodes the JSON lines of logs whose message contains msg.
func logLines(t *testing.T, logs string, msg string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for line := range strings.Lines(logs) {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line not JSON: %q", line)
		}
		if m, _ := rec["msg"].(string); strings.Contains(m, msg) {
			out = append(out, rec)
		}
	}
	return out
}

const (
	aloneMsg     = "embedded SQLite store: this gateway runs alone"
	clusteredMsg = "following the change feed"
)

// TestSQLiteSaysItRunsAlone: a gateway on the embedded SQLite store says at start, once and by its
// id, that it runs alone and that several gateways need HOP_DB_DSN on one PostgreSQL; it starts
// no change feed.
func TestSQLiteSaysItRunsAlone(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	logs := &syncBuffer{}
	g, err := New(context.Background(), loadServer(t, map[string]string{"HOP_SERVER_ID": "gw-lite"}), slog.New(slog.NewJSONHandler(logs, nil)))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer g.Close()
	lines := logLines(t, logs.String(), aloneMsg)
	if len(lines) != 1 {
		t.Fatalf("%d lines saying the gateway runs alone, want 1:\n%s", len(lines), logs)
	}
	msg, _ := lines[0]["msg"].(string)
	if lines[0]["level"] != "INFO" || lines[0]["gateway_id"] != "gw-lite" || !strings.Contains(msg, "HOP_DB_DSN") || !strings.Contains(msg, "PostgreSQL") {
		t.Errorf("the line should be INFO, name the gateway and say clustering needs HOP_DB_DSN on PostgreSQL: %v", lines[0])
	}
	if g.cluster != nil {
		t.Error("a cluster on the SQLite store")
	}
}

// TestPostgresSaysItClusters: on PostgreSQL the gateway does not say it runs alone; once serving,
// it says, by its id, that it follows the cluster's change feed.
func TestPostgresSaysItClusters(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	logs := &syncBuffer{}
	cfg := loadServer(t, map[string]string{"HOP_SERVER_ID": "gw-pg", "HOP_DB_DSN": pgtest.DSN(t)})
	g, err := New(context.Background(), cfg, slog.New(slog.NewJSONHandler(logs, nil)))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer g.Close()
	if g.cluster == nil {
		t.Fatal("no cluster on PostgreSQL")
	}
	served := make(chan error, 1)
	go func() { served <- g.Serve() }()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := g.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	poll.Until(t, 10*time.Second, "the line saying the gateway follows the change feed", func() bool {
		return len(logLines(t, logs.String(), clusteredMsg)) > 0
	})
	lines := logLines(t, logs.String(), clusteredMsg)
	if len(lines) != 1 || lines[0]["level"] != "INFO" || lines[0]["gateway_id"] != "gw-pg" {
		t.Errorf("want one INFO line naming gw-pg: %v", lines)
	}
	if ch, _ := lines[0]["channel"].(string); ch == "" {
		t.Errorf("the line names no channel: %v", lines[0])
	}
	if n := len(logLines(t, logs.String(), aloneMsg)); n != 0 {
		t.Errorf("a gateway on PostgreSQL says %d times that it runs alone", n)
	}
}
