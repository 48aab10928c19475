package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"google.golang.org/grpc"

	"github.com/hopgate/hopgate/internal/agent/metrics"
	"github.com/hopgate/hopgate/internal/agent/supervisor"
	"github.com/hopgate/hopgate/internal/config"
	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

// The agent holds a tunnel set (one tunnel call per hostname) to every gateway address: each entry
// of --server-addr, and each A/AAAA address a name among them resolves to, up to --ha-connections.
// Every gateway has its own connection and its own supervisors, so one gateway down, draining or
// slow costs only its own tunnels.

const (
	// defaultResolveEvery is how often the names of --server-addr are resolved again: gateways
	// added to DNS get tunnels, removed ones are drained.
	defaultResolveEvery = time.Minute
	// resolveTimeout bounds one round of lookups.
	resolveTimeout = 10 * time.Second
	// defaultHAConnections is the cap when the configuration has none (a Client not made by
	// LoadClient).
	defaultHAConnections = 4
)

// resolveFunc looks a host name up, as net.Resolver.LookupHost does.
type resolveFunc func(ctx context.Context, host string) ([]string, error)

// entryAddrs is what one --server-addr entry stands for now.
type entryAddrs struct {
	entry string // host:port, as configured
	// addrs are the host:port addresses to dial, the entry itself when it is not resolved here.
	addrs []string
	// err is why the lookup failed; addrs is empty then.
	err error
}

// resolveEntries resolves each entry. A literal IP, or an entry the environment sends through an
// HTTPS proxy (which resolves it), stands for itself.
func resolveEntries(ctx context.Context, entries []string, resolve resolveFunc) []entryAddrs {
	out := make([]entryAddrs, 0, len(entries))
	for _, e := range entries {
		host, port, err := net.SplitHostPort(e)
		if err != nil || !needsLookup(e, host) {
			out = append(out, entryAddrs{entry: e, addrs: []string{e}})
			continue
		}
		ips, err := resolve(ctx, host)
		if err == nil && len(ips) == 0 {
			err = fmt.Errorf("%s has no address", host)
		}
		r := entryAddrs{entry: e, err: err}
		for _, ip := range ips {
			if a := net.JoinHostPort(ip, port); !slices.Contains(r.addrs, a) {
				r.addrs = append(r.addrs, a)
			}
		}
		out = append(out, r)
	}
	return out
}

func needsLookup(entry, host string) bool {
	if _, err := netip.ParseAddr(host); err == nil {
		return false
	}
	return !supervisor.ViaProxy(entry)
}

// hasNames reports whether some entry is resolved here, so that resolving again can change the set.
func hasNames(entries []string) bool {
	for _, e := range entries {
		if host, _, err := net.SplitHostPort(e); err == nil && needsLookup(e, host) {
			return true
		}
	}
	return false
}

// gatewayAddr is one gateway address and the entry it came from.
type gatewayAddr struct{ addr, entry string }

// pickGateways chooses at most max addresses to hold tunnels to. Addresses held now (current:
// address → entry) are kept while their entry still stands for them, so that a re-resolution in
// another order moves nothing; the rest are taken in turn from each entry, so that every entry
// gets a gateway before any gets a second. An entry whose lookup failed keeps the addresses it had;
// if it had none, the entry itself is dialled and gRPC resolves it (and retries) on its own.
// dropped counts the addresses left out by the cap.
func pickGateways(resolved []entryAddrs, current map[string]string, max int) (picked []gatewayAddr, dropped int) {
	cands := make([][]string, len(resolved))
	for i, r := range resolved {
		cands[i] = r.addrs
		if r.err == nil {
			continue
		}
		var kept []string
		for addr, entry := range current {
			if entry == r.entry {
				kept = append(kept, addr)
			}
		}
		slices.Sort(kept)
		if len(kept) == 0 {
			kept = []string{r.entry}
		}
		cands[i] = kept
	}
	seen := map[string]bool{}
	add := func(addr, entry string) {
		if seen[addr] || len(picked) >= max {
			return
		}
		seen[addr] = true
		picked = append(picked, gatewayAddr{addr: addr, entry: entry})
	}
	for i, addrs := range cands {
		for _, a := range addrs {
			if _, ok := current[a]; ok {
				add(a, resolved[i].entry)
			}
		}
	}
	for n := 0; ; n++ {
		more := false
		for i, addrs := range cands {
			if n < len(addrs) {
				more = true
				add(addrs[n], resolved[i].entry)
			}
		}
		if !more {
			break
		}
	}
	all := map[string]bool{}
	for _, addrs := range cands {
		for _, a := range addrs {
			all[a] = true
		}
	}
	return picked, len(all) - len(picked)
}

// gateway is one gateway address: its connection and the tunnel of each hostname on it. Only the
// loop of runTunnels touches it.
type gateway struct {
	gatewayAddr
	conn *grpc.ClientConn
	// opts are the supervisors' options for this gateway: address, connection, agent id, metrics.
	opts supervisor.Options
	// tunnels are the running tunnels by hostname; refused the hostnames this gateway refused,
	// down until a reload.
	tunnels map[string]*hostTunnel
	refused map[string]bool
	// live counts its supervisors that have not ended, draining ones included.
	live int
	// leaving is set once the gateway is let go: its connection closes when live reaches 0.
	leaving bool
}

// tunnelEnded is a supervisor's result; t tells which one, since a hostname may have a draining
// tunnel and its replacement at the same time.
type tunnelEnded struct {
	gw   *gateway
	host string
	t    *hostTunnel
	err  error
}

// fleet is the state of runTunnels: the gateways held and every supervisor started on them.
type fleet struct {
	a       *Agent
	ctx     context.Context
	base    supervisor.Options
	metrics *metrics.Metrics // nil without --metrics-listen
	// ended is unbuffered: the loop reads it until every supervisor it started has ended.
	ended    chan tunnelEnded
	gateways map[string]*gateway
	live     int
	dropped  int
}

// reconcile holds tunnels to the gateways res stands for: new addresses get their tunnels, vanished
// ones are drained.
func (f *fleet) reconcile(res []entryAddrs) {
	for _, r := range res {
		if r.err != nil {
			f.a.log.Warn("cannot resolve the gateway's name; keeping its addresses", "server", r.entry, "err", r.err)
		}
	}
	current := make(map[string]string, len(f.gateways))
	for addr, g := range f.gateways {
		current[addr] = g.entry
	}
	picked, dropped := pickGateways(res, current, f.a.haConnections())
	if dropped > 0 && dropped != f.dropped {
		f.a.log.Warn("more gateway addresses than --ha-connections; some get no tunnel", "ha_connections", f.a.haConnections(), "left_out", dropped)
	}
	f.dropped = dropped
	keep := make(map[string]bool, len(picked))
	for _, p := range picked {
		keep[p.addr] = true
	}
	for addr, g := range f.gateways {
		if !keep[addr] {
			f.a.log.Info("gateway address gone; draining its tunnels", "server", addr, "entry", g.entry)
			delete(f.gateways, addr)
			f.leave(g)
		}
	}
	for _, p := range picked {
		if f.gateways[p.addr] == nil {
			f.join(p, len(picked) > 1)
		}
	}
}

// join starts the tunnels of every hostname on a new gateway address. With several addresses the
// agent id names the address: two addresses may reach the same gateway (a load balancer's), which
// would otherwise take each tunnel for the other's reconnection and close it.
func (f *fleet) join(p gatewayAddr, several bool) {
	o := f.base
	o.ServerAddr = p.addr
	if several {
		o.AgentID = f.base.AgentID + "@" + p.addr
	}
	if f.metrics != nil {
		o = f.metrics.InstrumentGateway(o, p.addr)
	}
	conn, err := supervisor.Dial(o)
	if err != nil {
		// Only a target grpc cannot parse fails here; the configuration checked every entry.
		f.a.log.Error("cannot dial the gateway", "server", p.addr, "err", err)
		return
	}
	o.Conn = conn
	g := &gateway{gatewayAddr: p, conn: conn, opts: o, tunnels: map[string]*hostTunnel{}, refused: map[string]bool{}}
	f.gateways[p.addr] = g
	if p.addr != p.entry {
		f.a.log.Info("gateway address joined", "server", p.addr, "entry", p.entry)
	}
	for _, host := range config.TunnelHosts(f.a.cfg.Services) {
		f.start(g, host, keyOf(f.a.cfg.Services, host))
	}
}

// start runs the supervisor of host's tunnel on g. host is a tunnel's hostname (see
// config.Service.Tunnel): the exact names that ride on a wildcard's tunnel have none of their own.
func (f *fleet) start(g *gateway, host, key string) {
	tctx, cancel := context.WithCancel(f.ctx)
	t := &hostTunnel{key: key, cancel: cancel}
	g.tunnels[host] = t
	o := g.opts
	o.Domain, o.APIKey = host, key
	o.Target = targetsOf(f.a.cfg.Services, host)
	o.Logger = f.a.log.With("domain", host)
	health := f.a.health
	// Only host's own services are reported: a path's health has no hostname, so the paths of the
	// names riding on a wildcard's tunnel would stand for the wildcard's paths at the gateway.
	o.Health = func() ([]*tunnelv1.PathHealth, <-chan struct{}) { return health.Paths(host) }
	g.live++
	f.live++
	go func() {
		err := supervisor.Run(tctx, o)
		cancel()
		f.ended <- tunnelEnded{gw: g, host: host, t: t, err: err}
	}()
}

// leave drains g's tunnels; its connection closes once they have ended.
func (f *fleet) leave(g *gateway) {
	g.leaving = true
	for host, t := range g.tunnels {
		t.cancel()
		delete(g.tunnels, host)
	}
	f.closeIfDone(g)
}

func (f *fleet) closeIfDone(g *gateway) {
	if !g.leaving || g.live > 0 || g.conn == nil {
		return
	}
	_ = g.conn.Close()
	g.conn = nil
	if f.metrics != nil {
		f.metrics.ForgetGateway(g.addr)
	}
}

// tunnelEnded books a supervisor's end. It returns an error wrapping ErrRefused when no tunnel is
// left because the gateways refused every hostname.
func (f *fleet) tunnelEnded(e tunnelEnded) error {
	g := e.gw
	g.live--
	f.live--
	defer f.closeIfDone(g)
	if g.tunnels[e.host] != e.t {
		return nil // a replaced or removed tunnel finished draining
	}
	delete(g.tunnels, e.host)
	if !errors.Is(e.err, ErrRefused) {
		return nil
	}
	g.refused[e.host] = true
	if f.running() == 0 {
		return fmt.Errorf("every hostname of this agent was refused: %w", e.err)
	}
	f.a.log.Error("the gateway refused this hostname; serving the others (fix its key, then reload)", "domain", e.host, "server", g.addr, "err", e.err)
	return nil
}

// running counts the tunnels kept up, on every gateway.
func (f *fleet) running() int {
	n := 0
	for _, g := range f.gateways {
		n += len(g.tunnels)
	}
	return n
}

// stop drains every gateway's tunnels (each within the shutdown timeout), waits for them and
// closes the connections.
func (f *fleet) stop() {
	for addr, g := range f.gateways {
		delete(f.gateways, addr)
		f.leave(g)
	}
	for f.live > 0 {
		_ = f.tunnelEnded(<-f.ended)
	}
}

// tunnelSets lists the tunnel sets of the gateways held, for a reload.
func (f *fleet) tunnelSets() []tunnelSet {
	sets := make([]tunnelSet, 0, len(f.gateways))
	for _, g := range f.gateways {
		sets = append(sets, tunnelSet{running: g.tunnels, refused: g.refused, start: func(host, key string) { f.start(g, host, key) }})
	}
	return sets
}

// watchGateways resolves the entries every a.resolveEvery and hands each result to out, until
// ctx ends.
func (a *Agent) watchGateways(ctx context.Context, out chan<- []entryAddrs) {
	t := time.NewTicker(a.resolveEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, resolveTimeout)
		res := resolveEntries(rctx, a.cfg.ServerAddrs(), a.resolve)
		cancel()
		select {
		case <-ctx.Done():
			return
		case out <- res:
		}
	}
}

func (a *Agent) haConnections() int {
	if a.cfg.HAConnections <= 0 {
		return defaultHAConnections
	}
	return a.cfg.HAConnections
}
