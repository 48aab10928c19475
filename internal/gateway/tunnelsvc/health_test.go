package tunnelsvc

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/hopgate/hopgate/internal/testutil/poll"
	"github.com/hopgate/hopgate/internal/tunnel"
	"github.com/hopgate/hopgate/internal/tunnel/tunneltest"
	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

func report(paths ...any) *tunnelv1.Health {
	h := &tunnelv1.Health{}
	for i := 0; i < len(paths); i += 2 {
		h.Paths = append(h.Paths, &tunnelv1.PathHealth{Path: paths[i].(string), Up: paths[i+1].(bool)})
	}
	return h
}

func TestHubPickForHealth(t *testing.T) {
	leakCheck(t)
	tests := []struct {
		name     string
		reports  []*tunnelv1.Health // one per agent; nil: the agent never reported (an old agent)
		path     string
		want     int // index of the agent picked; -1 for none
		wantDown bool
	}{
		{"no agent", nil, "/", -1, false},
		{"never reported is healthy", []*tunnelv1.Health{nil}, "/x", 0, false},
		{"down agent skipped", []*tunnelv1.Health{report("/", false), report("/", true)}, "/x", 1, false},
		{"all down", []*tunnelv1.Health{report("/", false), report("/", false)}, "/x", -1, true},
		{"old agent takes it when the new one is down", []*tunnelv1.Health{report("/", false), nil}, "/", 1, false},
		{"longest prefix decides", []*tunnelv1.Health{report("/", true, "/api", false), report("/", false, "/api", true)}, "/api/v1", 1, false},
		{"longest prefix, other path", []*tunnelv1.Health{report("/", true, "/api", false), report("/", false, "/api", true)}, "/apix", 0, false},
		{"whole segments only", []*tunnelv1.Health{report("/", true, "/api/", false)}, "/api", -1, true},
		{"no matching prefix is healthy", []*tunnelv1.Health{report("/api", false)}, "/web", 0, false},
		{"a later report replaces", []*tunnelv1.Health{report("/", true)}, "/", 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hub := NewHub(nil)
			var agents []*Agent
			for i, r := range tc.reports {
				p := tunneltest.NewPair(t, holdAgent)
				a := &Agent{Domain: "app.test", AgentID: fmt.Sprint("agent-", i), Session: p.Server}
				// Equal loads would pick the first: load the expected one more, so that only health
				// explains the choice.
				a.inflight.Store(int64(10 - i))
				if _, err := hub.Add(a, 0); err != nil {
					t.Fatal(err)
				}
				if tc.name == "a later report replaces" {
					hub.ReportHealth(a, report("/", false))
				}
				if r != nil {
					hub.ReportHealth(a, r)
				}
				agents = append(agents, a)
			}
			got, down := hub.PickFor("app.test", tc.path)
			var want *Agent
			if tc.want >= 0 {
				want = agents[tc.want]
			}
			if got != want || down != tc.wantDown {
				t.Fatalf("PickFor = %v, down %v; want %v, %v", got, down, want, tc.wantDown)
			}
		})
	}
}

// TestHubDownCount follows hopgate_agent_targets_down through reports, recoveries, removals,
// a report that crosses a removal, and a replacement.
func TestHubDownCount(t *testing.T) {
	leakCheck(t)
	var last int
	hub := NewHub(nil)
	hub.OnHealth(func(down int) { last = down })
	p1, p2 := tunneltest.NewPair(t, holdAgent), tunneltest.NewPair(t, holdAgent)
	a1 := &Agent{Domain: "app.test", AgentID: "a1", Session: p1.Server}
	a2 := &Agent{Domain: "app.test", AgentID: "a2", Session: p2.Server}
	for _, a := range []*Agent{a1, a2} {
		if _, err := hub.Add(a, 0); err != nil {
			t.Fatal(err)
		}
	}
	hub.ReportHealth(a1, report("/", false, "/api", false))
	hub.ReportHealth(a2, report("/", false))
	if last != 3 {
		t.Fatalf("down = %d, want 3", last)
	}
	if d := a1.Down(); !slices.Equal(d, []string{"/api/", "/"}) {
		t.Errorf("Down = %q", d)
	}
	hub.ReportHealth(a1, report("/", true, "/api", true))
	if last != 1 {
		t.Fatalf("down = %d after a1 recovered, want 1", last)
	}
	hub.Remove(a2)
	if last != 0 {
		t.Fatalf("down = %d after a2 left, want 0", last)
	}
	// A report that crosses the agent's removal is not counted.
	hub.ReportHealth(a2, report("/", false))
	if last != 0 || hub.downPaths != 0 {
		t.Fatalf("down = %d after a late report", hub.downPaths)
	}
	// A replaced agent's paths leave the count with it.
	hub.ReportHealth(a1, report("/", false))
	a1b := &Agent{Domain: "app.test", AgentID: "a1", Session: p2.Server}
	if _, err := hub.Add(a1b, 0); err != nil {
		t.Fatal(err)
	}
	if last != 0 {
		t.Fatalf("down = %d after a1 was replaced", last)
	}
}

// TestServiceHealthCapability: the gateway announces "health", and Health frames from the agent
// reach the hub (an agent that never sends one stays healthy: TestHubPickForHealth).
func TestServiceHealthCapability(t *testing.T) {
	leakCheck(t)
	_, hub, cc, _ := startService(t, &fakeAuth{})
	stream, endCall := openTunnel(t, cc)
	if err := stream.Send(hello("example.test", "k")); err != nil {
		t.Fatal(err)
	}
	f, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	acc := f.GetAccepted()
	if acc == nil || !slices.Contains(acc.Capabilities, tunnel.CapHealth) {
		t.Fatalf("Accepted = %v, want capability %q", acc, tunnel.CapHealth)
	}
	agent := tunnel.NewSession(stream, tunnel.Config{Accept: holdAgent, LocalWindow: 512 << 10, PeerWindow: acc.InitialWindow, PeerCapabilities: acc.Capabilities})
	agentDone := make(chan error, 1)
	go func() { agentDone <- agent.Run(context.Background()) }()
	t.Cleanup(func() {
		endCall()
		if _, ok := waitResult(agentDone, 5*time.Second); !ok {
			t.Errorf("agent session did not end")
		}
	})
	poll.Until(t, time.Second, "the agent in the hub", func() bool { return hub.AgentCount("example.test") == 1 })
	if err := agent.SendHealth(testCtx(t, 5*time.Second), report("/", false)); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 2*time.Second, "the report in the hub", func() bool {
		_, down := hub.PickFor("example.test", "/")
		return down
	})
}

// TestHubRepickForHealth: a refused request moves only to an agent healthy for its path; with none
// left it is a target-down answer, and with no other agent at all there is none.
func TestHubRepickForHealth(t *testing.T) {
	leakCheck(t)
	hub := NewHub(nil)
	var agents []*Agent
	for i := range 3 {
		p := tunneltest.NewPair(t, holdAgent)
		a := &Agent{Domain: "app.test", AgentID: fmt.Sprint("agent-", i), Session: p.Server}
		if _, err := hub.Add(a, 0); err != nil {
			t.Fatal(err)
		}
		agents = append(agents, a)
	}
	hub.ReportHealth(agents[1], report("/", false))
	failed := hub.Pick("app.test")
	if failed != agents[0] {
		t.Fatalf("Pick = %v", failed)
	}
	if a, down := hub.RepickFor("app.test", "/", failed); a != agents[2] || down {
		t.Fatalf("RepickFor = %v, %v; want the healthy agent-2", a, down)
	}
	hub.ReportHealth(agents[2], report("/", false))
	if a, down := hub.RepickFor("app.test", "/", agents[2]); a != agents[0] || down {
		t.Fatalf("RepickFor = %v, %v; want agent-0 (still healthy)", a, down)
	}
	hub.ReportHealth(agents[0], report("/", false))
	if a, down := hub.RepickFor("app.test", "/", agents[0]); a != nil || !down {
		t.Fatalf("RepickFor = %v, %v; want none, target down", a, down)
	}
	for _, a := range agents {
		if n := a.InFlight(); n != 0 {
			t.Errorf("%s: %d requests still counted", a.AgentID, n)
		}
	}
}
