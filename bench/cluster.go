package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/lib/pq"

	"github.com/hopgate/hopgate/internal/testutil/hoptest"
)

// clusterDomain is the tenant of S13, served by one agent that holds a tunnel to each of three gateways.
const clusterDomain = "cluster.bench.hopgate.test"

// clusterGateways is how many gateways S13 runs on one PostgreSQL.
const clusterGateways = 3

// s13: S1's small GETs through one gateway of three on one PostgreSQL (its agent holding a tunnel
// to each) beside the lone gateway of the other scenarios, alternating twice: what clustering costs
// per request. It should cost nothing: the request path reads no shared state per request.
func (r *runner) s13(ctx context.Context) scenarioResult {
	p := r.p
	s := scenarioResult{ID: "S13", Name: fmt.Sprintf("small GET, %d conns, %s each: lone gateway vs one of %d on one PostgreSQL", p.S1Conns, p.S1Duration, clusterGateways)}
	dsn, drop, err := benchSchema(ctx)
	if err != nil {
		return s.fail(err)
	}
	defer drop()
	// One data folder: the gateways after the first find the development CA it made, so that the
	// agent trusts all three with one --ca-file, as it would trust one public CA.
	dataDir := filepath.Join(r.dir, "cluster-data")
	var gws []*hoptest.Gateway
	defer func() {
		for _, g := range gws {
			g.Stop(5 * time.Second)
		}
	}()
	for i := range clusterGateways {
		name := fmt.Sprintf("hopgate-server-cluster-%d", i+1)
		g, err := hoptest.StartGateway(ctx, hoptest.GatewayOptions{
			BinDir: r.bin, Log: filepath.Join(r.dir, name+".log"), DataDir: dataDir, AdminKey: adminKey,
			DSN: dsn, HTTPProxy: true, ProxyDomains: []string{clusterDomain}, ShutdownTimeout: 3 * time.Second,
			Env: []string{"HOP_SERVER_MAX_AGENTS_PER_DOMAIN=0", fmt.Sprintf("HOP_SERVER_ID=bench-%d", i+1)},
		})
		if err != nil {
			return s.fail(err)
		}
		gws = append(gws, g)
	}
	key, err := gws[0].Register(ctx, clusterDomain)
	if err != nil {
		return s.fail(err)
	}
	addrs := make([]string, len(gws))
	for i, g := range gws {
		addrs[i] = g.HTTPSAddr
	}
	agent, err := gws[0].StartAgent(hoptest.AgentOptions{BinDir: r.bin, Log: filepath.Join(r.dir, "hopgate-client-cluster.log"),
		Domain: clusterDomain, Key: key, Target: "http://" + r.originAddr, AgentID: "bench-cluster",
		Args: []string{"--server-addr", strings.Join(addrs, ","), "--server-name", "localhost"}})
	if err != nil {
		return s.fail(err)
	}
	defer agent.Stop(5 * time.Second)
	// The admin API counts the whole cluster's agents: three tunnels, one per gateway.
	if err := gws[0].WaitAgents(ctx, clusterDomain, clusterGateways, 30*time.Second, func() error {
		if agent.Exited() {
			return fmt.Errorf("hopgate-client exited: %s", agent.Log.Tail(2000))
		}
		return nil
	}); err != nil {
		return s.fail(err)
	}

	lone := r.targets[tHopHTTP]
	member := target{Name: "hop-cluster", base: "http://" + gws[0].HTTPAddr, host: clusterDomain, dial: gws[0].HTTPAddr, proto: "h1"}
	runs := map[string][]sample{}
	for range 2 {
		for _, t := range []target{lone, member} {
			c := t.client(p.S1Conns, 10*time.Second)
			runs[t.Name] = append(runs[t.Name], closedLoop(ctx, p.S1Conns, p.Warmup, p.S1Duration, func(ctx context.Context) error { return getSmall(ctx, c, t) }))
			closeClient(c)
		}
	}
	for name, smps := range runs {
		s.recordSample(name, mergeSamples(smps))
	}
	alone, in := s.Targets[tHopHTTP], s.Targets["hop-cluster"]
	rw := s.addRow("rps (hop-http: lone gateway)", "rps", num)
	delete(rw.Cells, "hop-cluster")
	rel := ratio(in["rps"], alone["rps"])
	rw.Result = fmt.Sprintf("one of %d: %s rps, p99 %s vs %s: %s of the lone gateway's rps",
		clusterGateways, num(in["rps"]), msStr(in["p99_ms"]), msStr(alone["p99_ms"]), pct(rel))
	s.addCheck("cluster member rps / lone gateway rps", "≥ 0.9", rel, rel >= 0.9)
	s.errorRow()
	return s
}

// benchSchema makes an empty schema on the test PostgreSQL (HOP_TEST_DB_DSN, or the local default)
// for S13 and returns a DSN confined to it, and a function that drops it.
func benchSchema(ctx context.Context) (string, func(), error) {
	base := os.Getenv("HOP_TEST_DB_DSN")
	if base == "" {
		base = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	}
	u, err := url.Parse(base)
	if err != nil {
		return "", nil, fmt.Errorf("HOP_TEST_DB_DSN: %w", err)
	}
	db, err := sql.Open("postgres", base)
	if err != nil {
		return "", nil, err
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema := "bench_" + hex.EncodeToString(b[:])
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := db.ExecContext(cctx, "CREATE SCHEMA "+pq.QuoteIdentifier(schema)); err != nil {
		db.Close()
		return "", nil, fmt.Errorf("S13 needs PostgreSQL (HOP_TEST_DB_DSN, default %s): %w", base, err)
	}
	drop := func() {
		dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _ = db.ExecContext(dctx, "DROP SCHEMA "+pq.QuoteIdentifier(schema)+" CASCADE")
		db.Close()
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String(), drop, nil
}
