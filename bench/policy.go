package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"time"

	"github.com/hopgate/hopgate/internal/testutil/hoptest"
)

// policyDomain is a second tenant of the same gateway, with an access policy, for S10.
const policyDomain = "policy.bench.hopgate.test"

// s10: S1's small GETs through a domain whose policy has an IP rule and basic auth, beside the
// domain without one, in the same run: what a policy costs per request. The two alternate twice
// (none, policy, none, policy) so that a drift of the machine's load weighs on both.
func (r *runner) s10(ctx context.Context) scenarioResult {
	p := r.p
	s := scenarioResult{ID: "S10", Name: fmt.Sprintf("small GET, %d conns, %s each: no policy vs IP allow + basic auth", p.S1Conns, p.S1Duration)}
	key, err := r.gw.Register(ctx, policyDomain)
	if err != nil {
		return s.fail(err)
	}
	agent, err := r.gw.StartAgent(hoptest.AgentOptions{BinDir: r.bin, Log: filepath.Join(r.dir, "hopgate-client-policy.log"),
		Domain: policyDomain, Key: key, Target: "http://" + r.originAddr, AgentID: "bench-policy"})
	if err != nil {
		return s.fail(err)
	}
	defer agent.Stop(5 * time.Second)
	if err := r.gw.WaitAgents(ctx, policyDomain, 1, 20*time.Second, nil); err != nil {
		return s.fail(err)
	}
	doc := json.RawMessage(`{"ip_allow": ["127.0.0.0/8", "::1"], "basic_auth": [{"user": "bench", "password": "bench-password"}]}`)
	if code, body, err := r.gw.Admin(ctx, http.MethodPut, "/api/v1/admin/domains/policy?domain="+policyDomain, doc); err != nil || code != http.StatusOK {
		return s.fail(fmt.Errorf("set the policy: %d %v: %s", code, err, body))
	}

	plain := r.targets[tHopHTTP]
	guarded := plain
	guarded.Name, guarded.host = "hop-policy", policyDomain
	auth, _ := http.NewRequest(http.MethodGet, "/", nil)
	auth.SetBasicAuth("bench", "bench-password")
	guarded.header = http.Header{"Authorization": auth.Header["Authorization"]}

	runs := map[string][]sample{}
	for range 2 {
		for _, t := range []target{plain, guarded} {
			c := t.client(p.S1Conns, 10*time.Second)
			runs[t.Name] = append(runs[t.Name], closedLoop(ctx, p.S1Conns, p.Warmup, p.S1Duration, func(ctx context.Context) error { return getSmall(ctx, c, t) }))
			closeClient(c)
		}
	}
	for name, smps := range runs {
		s.recordSample(name, mergeSamples(smps))
	}
	// The table has one column per way to the origin; this scenario's second one is in the result.
	none, with := s.Targets[tHopHTTP], s.Targets["hop-policy"]
	rw := s.addRow("rps (hop-http: no policy)", "rps", num)
	delete(rw.Cells, "hop-policy")
	rw.Result = fmt.Sprintf("with the policy %s rps, p99 %s vs %s: %s of the rps without",
		num(with["rps"]), msStr(with["p99_ms"]), msStr(none["p99_ms"]), pct(ratio(with["rps"], none["rps"])))
	s.errorRow()
	return s
}

// mergeSamples adds up the runs of one target.
func mergeSamples(smps []sample) sample {
	var m sample
	for _, s := range smps {
		m.Requests += s.Requests
		m.Errors += s.Errors
		m.Dropped += s.Dropped
		m.Window += s.Window
		m.lat = append(m.lat, s.lat...)
		if m.FirstErr == "" {
			m.FirstErr = s.FirstErr
		}
	}
	slices.Sort(m.lat)
	return m
}
