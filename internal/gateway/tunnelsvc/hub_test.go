package tunnelsvc

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hopgate/hopgate/internal/tunnel/tunneltest"
)

func TestHubPick(t *testing.T) {
	leakCheck(t)
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
				p := tunneltest.NewPair(t, holdAgent)
				if st.draining {
					p.Server.GoAway("test")
				}
				if st.closed {
					p.Server.Close(nil)
					<-p.Server.Done()
				}
				a := &Agent{Domain: "app.example.test", AgentID: fmt.Sprint("agent-", i), Session: p.Server}
				// The load is the requests picked for the agent and not released yet.
				a.inflight.Store(int64(st.load))
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
	var mu sync.Mutex
	var totals []int
	hub := NewHub(func(total int) {
		mu.Lock()
		totals = append(totals, total)
		mu.Unlock()
	})
	type member struct {
		a *Agent
		p *tunneltest.Pair
	}
	var members []member
	for _, d := range []string{"a.example.test", "a.example.test", "b.example.test"} {
		p := tunneltest.NewPair(t, holdAgent)
		a := &Agent{Domain: d, AgentID: fmt.Sprint(len(members)), Session: p.Server}
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
	err, ok := waitResult(members[1].p.ServerDone, 2*time.Second)
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
	var changes []int
	hub := NewHub(func(n int) { changes = append(changes, n) })
	mk := func(id string) *Agent {
		p := tunneltest.NewPair(t, holdAgent)
		return &Agent{Domain: "r.example.test", AgentID: id, Session: p.Server}
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

// TestHubPickRelease: a pick counts against its agent until released, so a burst of requests spreads
// over the agents before any stream exists; Repick moves a request off the agent that refused it.
func TestHubPickRelease(t *testing.T) {
	leakCheck(t)
	hub := NewHub(nil)
	var agents []*Agent
	for i := range 3 {
		a := &Agent{Domain: "b.example.test", AgentID: fmt.Sprint(i), Session: tunneltest.NewPair(t, holdAgent).Server}
		if _, err := hub.Add(a, 0); err != nil {
			t.Fatal(err)
		}
		agents = append(agents, a)
	}
	picks := map[*Agent]int{}
	var held []*Agent
	for range 9 {
		a := hub.Pick("b.example.test")
		picks[a]++
		held = append(held, a)
	}
	for _, a := range agents {
		if picks[a] != 3 {
			t.Errorf("agent %s got %d of 9 picks, want 3 each", a.AgentID, picks[a])
		}
	}
	for _, a := range held {
		hub.Release(a)
	}
	for _, a := range agents {
		if n := a.inflight.Load(); n != 0 {
			t.Errorf("agent %s has %d requests in flight after every release", a.AgentID, n)
		}
	}

	first := hub.Pick("b.example.test")
	other := hub.Repick("b.example.test", first)
	if other == nil || other == first {
		t.Fatalf("Repick = %v, want another agent than %s", describeAgent(other), first.AgentID)
	}
	if first.inflight.Load() != 0 || other.inflight.Load() != 1 {
		t.Errorf("after Repick: %d on the refusing agent, %d on the new one; want 0 and 1", first.inflight.Load(), other.inflight.Load())
	}
	hub.Release(other)

	// The only agent refused: there is no other.
	solo := &Agent{Domain: "solo.example.test", AgentID: "s", Session: tunneltest.NewPair(t, holdAgent).Server}
	if _, err := hub.Add(solo, 0); err != nil {
		t.Fatal(err)
	}
	if got := hub.Repick("solo.example.test", hub.Pick("solo.example.test")); got != nil {
		t.Errorf("Repick with no other agent = %v", describeAgent(got))
	}
	if n := solo.inflight.Load(); n != 0 {
		t.Errorf("the refusing agent keeps %d requests in flight", n)
	}
}
