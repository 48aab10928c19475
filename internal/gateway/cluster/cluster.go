// Package cluster keeps gateways that share one Postgres in step: a feed of domain changes over
// LISTEN/NOTIFY with a periodic full resync as the safety net, and per-gateway presence rows with
// heartbeats for cluster-wide agent counts.
//
// A gateway applies a change from another gateway to its own caches and tunnels; the changes it makes
// itself it has applied already. Nothing here is needed for serving: with the database down, tunnels
// keep carrying traffic, events wait for the listener to reconnect, and the resync that follows every
// reconnect catches up on what was missed.
package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/lib/pq"

	"github.com/hopgate/hopgate/internal/gateway/registry"
	"github.com/hopgate/hopgate/internal/pause"
)

// Kinds of change, the "event" of a notification.
const (
	Register   = "register"
	Unregister = "unregister"
	RotateKey  = "rotate-key"
	Policy     = "policy"
	Mode       = "mode"
	SessionKey = "session-key"
)

// Event is one change, as published: what happened, to which domain ("" for the session key), and
// which gateway did it.
type Event struct {
	Event  string `json:"event"`
	Domain string `json:"domain,omitempty"`
	Origin string `json:"origin"`
}

// Defaults of Options.
const (
	DefaultResync    = 30 * time.Second
	DefaultHeartbeat = 2 * time.Second
	// staleHeartbeats is how many heartbeats a gateway may miss before its rows stop counting.
	staleHeartbeats = 3
	minReconnect    = 200 * time.Millisecond
	maxReconnect    = 10 * time.Second
	// storeTimeout bounds one store call of the feed or the heartbeat.
	storeTimeout = 5 * time.Second
)

// Store is the shared registry (*registry.Store).
type Store interface {
	ChangesChannel(ctx context.Context) (string, error)
	Publish(ctx context.Context, payload string) error
	KeyIDs(ctx context.Context) (map[string]string, error)
	Heartbeat(ctx context.Context, gateway string, counts map[string]int) error
	PresenceSince(ctx context.Context, maxAge time.Duration) ([]registry.Presence, error)
	LeavePresence(ctx context.Context, gateway string) error
}

// Tunnels is this gateway's table of live tunnels.
type Tunnels interface {
	// Counts is the number of live agents per domain.
	Counts() map[string]int
	// CloseDomain closes every tunnel of domain.
	CloseDomain(domain string)
}

// Options configure a Cluster.
type Options struct {
	// ID is this gateway's HOP_SERVER_ID: the origin of its events and the key of its presence rows.
	ID string
	// DSN is the database the listener connects to (the store's).
	DSN     string
	Store   Store
	Tunnels Tunnels
	// Changed applies another gateway's change to this gateway's caches (the tunnels of a rotated
	// key or an unregistered domain are closed before it is called).
	Changed func(Event)
	// Resynced reloads every cache after a full resync (periodic, and after each reconnect of the
	// listener, when changes may have been missed); domains are the registered ones.
	Resynced func(ctx context.Context, domains []string)
	// Resync and Heartbeat are the periods; zero means DefaultResync and DefaultHeartbeat.
	Resync    time.Duration
	Heartbeat time.Duration
	Logger    *slog.Logger
}

// Cluster is this gateway's membership: the feed and its presence.
type Cluster struct {
	o   Options
	log *slog.Logger

	keysMu sync.Mutex
	// keys is the key id each domain's tunnels here were opened with, as far as this gateway knows:
	// the store's at the last resync, or, for a domain registered or re-keyed since (by an event),
	// the one its first tunnel logged in with. A resync closes the tunnels of a domain whose stored
	// key differs, so a rotation missed while the feed was down still ends the old key's tunnels.
	keys map[string]string

	mu sync.Mutex
	// remote is the live agents per domain on the other gateways, as of the last heartbeat.
	remote map[string]int
	// peers is the number of other live gateways.
	peers int
}

// New checks o; nothing runs until Run.
func New(o Options) (*Cluster, error) {
	switch {
	case o.ID == "":
		return nil, errors.New("cluster: a gateway id is required")
	case o.DSN == "" || o.Store == nil || o.Tunnels == nil:
		return nil, errors.New("cluster: DSN, Store and Tunnels are required")
	}
	if o.Resync <= 0 {
		o.Resync = DefaultResync
	}
	if o.Heartbeat <= 0 {
		o.Heartbeat = DefaultHeartbeat
	}
	if o.Changed == nil {
		o.Changed = func(Event) {}
	}
	if o.Resynced == nil {
		o.Resynced = func(context.Context, []string) {}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Cluster{o: o, log: o.Logger.With("component", "cluster"), remote: map[string]int{}, keys: map[string]string{}}, nil
}

// Run follows the feed and writes heartbeats until ctx ends, then removes this gateway's presence
// rows. It returns nil after ctx ends; store failures are logged and retried, never fatal.
func (c *Cluster) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); c.follow(ctx) }()
	go func() { defer wg.Done(); c.beat(ctx) }()
	wg.Wait()
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), storeTimeout)
	defer cancel()
	if err := c.o.Store.LeavePresence(lctx, c.o.ID); err != nil {
		c.log.Warn("presence rows not removed; they expire on their own", "err", err)
	}
	return nil
}

// Publish tells the other gateways about a change this gateway made (and has applied).
func (c *Cluster) Publish(ctx context.Context, kind, domain string) error {
	b, err := json.Marshal(Event{Event: kind, Domain: domain, Origin: c.o.ID})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), storeTimeout)
	defer cancel()
	if err := c.o.Store.Publish(ctx, string(b)); err != nil {
		return fmt.Errorf("publish %s of %q: %w", kind, domain, err)
	}
	return nil
}

// follow listens to the feed and resyncs, in one goroutine, so that an event and a resync never
// interleave.
func (c *Cluster) follow(ctx context.Context) {
	chctx, cancel := context.WithTimeout(ctx, storeTimeout)
	channel, err := c.o.Store.ChangesChannel(chctx)
	cancel()
	for err != nil {
		// The store answered at start; wait for it to answer again.
		c.log.Warn("changes channel unknown; retrying", "err", err)
		if pause.For(ctx, c.o.Heartbeat) != nil {
			return
		}
		chctx, cancel := context.WithTimeout(ctx, storeTimeout)
		channel, err = c.o.Store.ChangesChannel(chctx)
		cancel()
	}
	l := pq.NewListener(c.o.DSN, minReconnect, maxReconnect, func(ev pq.ListenerEventType, err error) {
		switch ev {
		case pq.ListenerEventDisconnected:
			c.log.Warn("change feed disconnected; reconnecting", "err", err)
		case pq.ListenerEventReconnected:
			c.log.Info("change feed reconnected; resyncing")
		case pq.ListenerEventConnectionAttemptFailed:
			c.log.Debug("change feed reconnect failed", "err", err)
		}
	})
	defer l.Close()
	// Listen blocks while the database is down; Close (at ctx's end) releases it.
	stop := context.AfterFunc(ctx, func() { _ = l.Close() })
	defer stop()
	if err := l.Listen(channel); err != nil {
		if ctx.Err() == nil {
			c.log.Error("change feed: LISTEN failed; only the periodic resync keeps this gateway in step", "channel", channel, "err", err)
		}
	} else {
		c.log.Info("following the change feed", "channel", channel)
	}
	// Changes made before LISTEN took effect are only in the store.
	c.resync(ctx)
	tick := time.NewTicker(c.o.Resync)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case n, ok := <-l.Notify:
			switch {
			case !ok:
				return
			case n == nil:
				// The listener reconnected: whatever was published meanwhile is lost.
				c.resync(ctx)
			default:
				c.apply(n.Extra)
			}
		case <-tick.C:
			if err := l.Ping(); err != nil {
				c.log.Warn("change feed ping failed", "err", err)
			}
			c.resync(ctx)
		}
	}
}

// apply carries out one notification.
func (c *Cluster) apply(payload string) {
	var ev Event
	if err := json.Unmarshal([]byte(payload), &ev); err != nil || ev.Event == "" {
		c.log.Warn("change feed: notification ignored", "payload_bytes", len(payload), "err", err)
		return
	}
	if ev.Origin == c.o.ID {
		return // applied when it was made
	}
	c.log.Debug("change from another gateway", "event", ev.Event, "domain", ev.Domain, "origin", ev.Origin)
	switch ev.Event {
	case RotateKey, Unregister:
		// Tunnels on the old key, or of a name no longer registered, must not outlive the change.
		c.forgetKey(ev.Domain)
		c.o.Tunnels.CloseDomain(ev.Domain)
		c.log.Info("closed the tunnels of a domain changed on another gateway", "domain", ev.Domain, "event", ev.Event, "origin", ev.Origin)
	case Register:
		c.forgetKey(ev.Domain)
	}
	c.o.Changed(ev)
}

// LoggedIn records the key id a tunnel of domain authenticated with, for a domain this gateway
// knows no key of yet (registered or re-keyed since the last resync).
func (c *Cluster) LoggedIn(domain, keyID string) {
	if keyID == "" {
		return
	}
	c.keysMu.Lock()
	if _, ok := c.keys[domain]; !ok {
		c.keys[domain] = keyID
	}
	c.keysMu.Unlock()
}

func (c *Cluster) forgetKey(domain string) {
	c.keysMu.Lock()
	delete(c.keys, domain)
	c.keysMu.Unlock()
}

// resync compares the store with what this gateway holds: tunnels of a domain that is gone, or whose
// key changed since the last resync without an event saying so, are closed; then every cache is
// reloaded. A store failure leaves everything as it is until the next one.
func (c *Cluster) resync(ctx context.Context) {
	kctx, cancel := context.WithTimeout(ctx, storeTimeout)
	keys, err := c.o.Store.KeyIDs(kctx)
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			c.log.Warn("resync failed; retrying at the next one", "err", err)
		}
		return
	}
	c.keysMu.Lock()
	var rekeyed []string
	for d, id := range c.keys {
		if now, ok := keys[d]; ok && now != id {
			rekeyed = append(rekeyed, d)
		}
	}
	c.keys = maps.Clone(keys)
	c.keysMu.Unlock()
	for _, d := range rekeyed {
		c.log.Info("resync: key of a domain changed; closing its tunnels", "domain", d)
		c.o.Tunnels.CloseDomain(d)
	}
	for d := range c.o.Tunnels.Counts() {
		if _, ok := keys[d]; !ok {
			c.log.Info("resync: domain no longer registered; closing its tunnels", "domain", d)
			c.o.Tunnels.CloseDomain(d)
		}
	}
	c.o.Resynced(ctx, slices.Sorted(maps.Keys(keys)))
}

// beat writes this gateway's presence every heartbeat and reads the others'.
func (c *Cluster) beat(ctx context.Context) {
	tick := time.NewTicker(c.o.Heartbeat)
	defer tick.Stop()
	failing := false
	for {
		err := c.heartbeat(ctx)
		switch {
		case err != nil && !failing && ctx.Err() == nil:
			c.log.Warn("heartbeat failed; retrying", "err", err)
			failing = true
		case err == nil && failing:
			c.log.Info("heartbeat written again")
			failing = false
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (c *Cluster) heartbeat(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	if err := c.o.Store.Heartbeat(ctx, c.o.ID, c.o.Tunnels.Counts()); err != nil {
		return err
	}
	rows, err := c.o.Store.PresenceSince(ctx, staleHeartbeats*c.o.Heartbeat)
	if err != nil {
		return err
	}
	remote := map[string]int{}
	peers := map[string]bool{}
	for _, r := range rows {
		if r.Gateway == c.o.ID {
			continue
		}
		peers[r.Gateway] = true
		if r.Domain != "" {
			remote[r.Domain] += r.Agents
		}
	}
	c.mu.Lock()
	c.remote, c.peers = remote, len(peers)
	c.mu.Unlock()
	return nil
}

// RemoteAgents is the number of agents of domain connected to the other live gateways, as of the
// last heartbeat.
func (c *Cluster) RemoteAgents(domain string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.remote[domain]
}

// Gateways is the number of live gateways, this one included.
func (c *Cluster) Gateways() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return 1 + c.peers
}
