package tunnel

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

// loadAgent is an agent that holds every stream open until the server ends it, so the number of
// streams the server opens is the agent's load.
func loadAgent(st *Stream) { <-st.Context().Done() }

// openLoad opens n streams on p that stay open until the test ends.
func openLoad(t *testing.T, p *tunnelPair, n int) {
	t.Helper()
	for range n {
		st, err := p.server.OpenStream(testCtx(t, 5*time.Second), &tunnelv1.RequestHead{Method: "GET", Path: "/", EndStream: true})
		if err != nil {
			t.Fatalf("OpenStream: %v", err)
		}
		t.Cleanup(func() { _ = st.Close() })
	}
}

func TestHubPick(t *testing.T) {
	leakCheck(t)
	h := newHarness(t, harnessOptions{})
	type agentState struct {
		load     int
		draining bool
		closed   bool
	}
	tests := []struct {
		name   string
		agents []agentState
		want   int // index of the agent Pick returns; -1 for none
	}{
		{"no agent", nil, -1},
		{"one agent", []agentState{{load: 3}}, 0},
		{"least loaded", []agentState{{load: 2}, {load: 1}, {load: 0}}, 2},
		{"least loaded first of equals", []agentState{{load: 2}, {load: 1}, {load: 1}}, 1},
		{"draining skipped", []agentState{{load: 2}, {load: 1}, {load: 0, draining: true}}, 1},
		{"closed skipped", []agentState{{load: 2}, {load: 0, closed: true}, {load: 1, draining: true}}, 0},
		{"all unavailable", []agentState{{draining: true}, {closed: true}}, -1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hub := NewHub(nil)
			var agents []*Agent
			for i, st := range tc.agents {
				p := h.dial(Config{Accept: loadAgent}, nil)
				openLoad(t, p, st.load)
				if st.draining {
					p.server.GoAway("test")
				}
				if st.closed {
					p.server.Close(nil)
					<-p.server.Done()
				}
				a := &Agent{Domain: "app.example.test", AgentID: fmt.Sprint("agent-", i), Session: p.server}
				if _, err := hub.Add(a, 0); err != nil {
					t.Fatal(err)
				}
				agents = append(agents, a)
			}
			got := hub.Pick("app.example.test")
			var want *Agent
			if tc.want >= 0 {
				want = agents[tc.want]
			}
			if got != want {
				t.Errorf("Pick = %v, want %v", describeAgent(got), describeAgent(want))
			}
			if other := hub.Pick("other.example.test"); other != nil {
				t.Errorf("Pick of a domain with no agents = %v", describeAgent(other))
			}
		})
	}
}

func describeAgent(a *Agent) string {
	if a == nil {
		return "<nil>"
	}
	return a.AgentID
}

func TestHubMembership(t *testing.T) {
	leakCheck(t)
	h := newHarness(t, harnessOptions{})
	var mu sync.Mutex
	var totals []int
	hub := NewHub(func(total int) {
		mu.Lock()
		totals = append(totals, total)
		mu.Unlock()
	})
	type member struct {
		a *Agent
		p *tunnelPair
	}
	var members []member
	for _, d := range []string{"a.example.test", "a.example.test", "b.example.test"} {
		p := h.dial(Config{Accept: loadAgent}, nil)
		a := &Agent{Domain: d, AgentID: fmt.Sprint(len(members)), Session: p.server}
		if _, err := hub.Add(a, 0); err != nil {
			t.Fatal(err)
		}
		members = append(members, member{a, p})
	}
	counts := func() []int {
		return []int{hub.AgentCount("a.example.test"), hub.AgentCount("b.example.test"), hub.AgentCount("c.example.test"), hub.Total(), len(hub.All())}
	}
	if got, want := counts(), []int{2, 1, 0, 3, 3}; !slices.Equal(got, want) {
		t.Fatalf("counts (a, b, c, total, all) = %v, want %v", got, want)
	}

	all := hub.All()
	hub.Remove(members[0].a)
	hub.Remove(members[0].a) // a no-op: no second change
	if got, want := counts(), []int{1, 1, 0, 2, 2}; !slices.Equal(got, want) {
		t.Errorf("after Remove: counts = %v, want %v", got, want)
	}
	if len(all) != 3 {
		t.Errorf("a snapshot taken before Remove changed: %d agents", len(all))
	}
	if got := hub.Pick("a.example.test"); got != members[1].a {
		t.Errorf("Pick after Remove = %v, want the remaining agent", describeAgent(got))
	}

	// CloseDomain ends the domain's sessions with ErrDomainClosed and leaves other domains alone.
	hub.CloseDomain("a.example.test")
	err, ok := waitResult(members[1].p.serverDone, 2*time.Second)
	if !ok || !errors.Is(err, ErrDomainClosed) {
		t.Errorf("session of the closed domain: Run = %v (ended %v), want ErrDomainClosed", err, ok)
	}
	if got := hub.Pick("a.example.test"); got != nil {
		t.Errorf("Pick of a closed domain = %v", describeAgent(got))
	}
	if err := members[2].a.Session.Err(); err != nil {
		t.Errorf("session of another domain ended: %v", err)
	}
	if got := hub.Pick("b.example.test"); got != members[2].a {
		t.Errorf("Pick of the other domain = %v", describeAgent(got))
	}
	// The hub forgets agents only when told (the Service does on the way out).
	hub.Remove(members[1].a)
	hub.Remove(members[2].a)
	if got, want := counts(), []int{0, 0, 0, 0, 0}; !slices.Equal(got, want) {
		t.Errorf("after removing all: counts = %v, want %v", got, want)
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []int{1, 2, 3, 2, 1, 0}; !slices.Equal(totals, want) {
		t.Errorf("onChange saw %v, want %v", totals, want)
	}
}

// TestHubReplaceAndLimit: an agent id seen again replaces its old entry in one step (never counted
// twice), and a full domain refuses newcomers but still lets a known agent replace itself.
func TestHubReplaceAndLimit(t *testing.T) {
	leakCheck(t)
	h := newHarness(t, harnessOptions{})
	var changes []int
	hub := NewHub(func(n int) { changes = append(changes, n) })
	mk := func(id string) *Agent {
		p := h.dial(Config{Accept: loadAgent}, nil)
		return &Agent{Domain: "r.example.test", AgentID: id, Session: p.server}
	}
	first := mk("a")
	if old, err := hub.Add(first, 2); err != nil || old != nil {
		t.Fatalf("first add: %v %v", old, err)
	}
	again := mk("a")
	old, err := hub.Add(again, 2)
	if err != nil || old != first {
		t.Fatalf("same id: replaced %v, err %v; want the first agent", old, err)
	}
	if n := hub.AgentCount("r.example.test"); n != 1 {
		t.Fatalf("count after replacement %d, want 1", n)
	}
	if _, err := hub.Add(mk("b"), 2); err != nil {
		t.Fatal(err)
	}
	if _, err := hub.Add(mk("c"), 2); !errors.Is(err, ErrTooManyAgents) {
		t.Fatalf("third agent over limit 2: %v", err)
	}
	if old, err := hub.Add(mk("b"), 2); err != nil || old == nil {
		t.Fatalf("known agent at the limit: replaced %v, err %v", old, err)
	}
	if n := hub.Total(); n != 2 {
		t.Fatalf("total %d, want 2", n)
	}
	if got := changes[len(changes)-1]; got != 2 {
		t.Fatalf("last reported total %d", got)
	}
}
