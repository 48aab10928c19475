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
// domain without one, in the same run: what a policy costs per request.
func (r *runner) s10(ctx context.Context) scenarioResult {
	s := scenarioResult{ID: "S10", Name: fmt.Sprintf("small GET, %d conns, %s each: no policy vs IP allow + basic auth", r.p.S1Conns, r.p.S1Duration)}
	auth, _ := http.NewRequest(http.MethodGet, "/", nil)
	auth.SetBasicAuth("bench", "bench-password")
	doc := json.RawMessage(`{"ip_allow": ["127.0.0.0/8", "::1"], "basic_auth": [{"user": "bench", "password": "bench-password"}]}`)
	return r.beside(ctx, s, "hop-policy", policyDomain, http.Header{"Authorization": auth.Header["Authorization"]},
		http.MethodPut, "/api/v1/admin/domains/policy?domain="+policyDomain, doc, "the policy")
}

// s14: S1's small GETs through hop-http's own domain with its request inspector off and on with
// body capture (its costliest setting: every request and response recorded, redacted and kept),
// alternating off, on, off, on on the same agent and connections' setup, so that nothing but the
// inspector differs. The bound is a 10 % loss of rps; with the inspector off (every other
// domain) the request takes S1's path.
func (r *runner) s14(ctx context.Context) scenarioResult {
	p := r.p
	s := scenarioResult{ID: "S14", Name: fmt.Sprintf("small GET, %d conns, %s each: inspector off vs on with bodies", p.S1Conns, p.S1Duration)}
	set := func(on bool) error {
		doc := json.RawMessage(fmt.Sprintf(`{"domain": %q, "on": %t, "bodies": %t}`, benchDomain, on, on))
		if code, body, err := r.gw.Admin(ctx, http.MethodPost, "/api/v1/admin/inspect", doc); err != nil || code != http.StatusOK {
			return fmt.Errorf("inspector on=%t: %d %v: %s", on, code, err, body)
		}
		return nil
	}
	// Off again afterwards, whatever happened: the later scenarios measure the plain path.
	defer func() { _ = set(false) }()
	plain := r.targets[tHopHTTP]
	inspected := plain
	inspected.Name = "hop-inspected"
	runs := map[string][]sample{}
	for range 2 {
		for _, t := range []target{plain, inspected} {
			if err := set(t.Name == inspected.Name); err != nil {
				return s.fail(err)
			}
			c := t.client(p.S1Conns, 10*time.Second)
			runs[t.Name] = append(runs[t.Name], closedLoop(ctx, p.S1Conns, p.Warmup, p.S1Duration, func(ctx context.Context) error { return getSmall(ctx, c, t) }))
			closeClient(c)
		}
	}
	for n, smps := range runs {
		s.recordSample(n, mergeSamples(smps))
	}
	off, on := s.Targets[tHopHTTP], s.Targets[inspected.Name]
	rw := s.addRow("rps (hop-http: inspector off)", "rps", num)
	delete(rw.Cells, inspected.Name)
	share := ratio(on["rps"], off["rps"])
	rw.Result = fmt.Sprintf("inspector on %s rps, p99 %s vs %s: %s of the rps off",
		num(on["rps"]), msStr(on["p99_ms"]), msStr(off["p99_ms"]), pct(share))
	s.addCheck("rps with the inspector on / off", "≥ 90 %", share, share >= 0.90)
	s.errorRow()
	return s
}

// beside measures S1's small GETs through hop-http's domain and through a second domain of the same
// gateway that an admin call configures, in one run. The two alternate twice (plain, configured,
// plain, configured) so that a drift of the machine's load weighs on both.
func (r *runner) beside(ctx context.Context, s scenarioResult, name, domain string, header http.Header,
	method, path string, doc json.RawMessage, what string) scenarioResult {
	p := r.p
	key, err := r.gw.Register(ctx, domain)
	if err != nil {
		return s.fail(err)
	}
	agent, err := r.gw.StartAgent(hoptest.AgentOptions{BinDir: r.bin, Log: filepath.Join(r.dir, "hopgate-client-"+name+".log"),
		Domain: domain, Key: key, Target: "http://" + r.originAddr, AgentID: "bench-" + name})
	if err != nil {
		return s.fail(err)
	}
	defer agent.Stop(5 * time.Second)
	if err := r.gw.WaitAgents(ctx, domain, 1, 20*time.Second, nil); err != nil {
		return s.fail(err)
	}
	if code, body, err := r.gw.Admin(ctx, method, path, doc); err != nil || code != http.StatusOK {
		return s.fail(fmt.Errorf("set %s: %d %v: %s", what, code, err, body))
	}

	plain := r.targets[tHopHTTP]
	configured := plain
	configured.Name, configured.host, configured.header = name, domain, header

	runs := map[string][]sample{}
	for range 2 {
		for _, t := range []target{plain, configured} {
			c := t.client(p.S1Conns, 10*time.Second)
			runs[t.Name] = append(runs[t.Name], closedLoop(ctx, p.S1Conns, p.Warmup, p.S1Duration, func(ctx context.Context) error { return getSmall(ctx, c, t) }))
			closeClient(c)
		}
	}
	for n, smps := range runs {
		s.recordSample(n, mergeSamples(smps))
	}
	// The table has one column per way to the origin; this scenario's second one is in the result.
	none, with := s.Targets[tHopHTTP], s.Targets[name]
	rw := s.addRow("rps (hop-http: without "+what+")", "rps", num)
	delete(rw.Cells, name)
	rw.Result = fmt.Sprintf("with %s %s rps, p99 %s vs %s: %s of the rps without",
		what, num(with["rps"]), msStr(with["p99_ms"]), msStr(none["p99_ms"]), pct(ratio(with["rps"], none["rps"])))
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
