package agent

import (
	"context"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/hopgate/hopgate/internal/agent/metrics"
	"github.com/hopgate/hopgate/internal/agent/supervisor"
	"github.com/hopgate/hopgate/internal/config"
)

// reloadDebounce gathers the burst of events an editor's save makes (write, rename, chmod) into
// one reload.
const reloadDebounce = 200 * time.Millisecond

// hostTunnel is the supervised tunnel call of one hostname: a hostname of the configuration, or a
// wildcard that also carries the exact names under it that have no key of their own.
type hostTunnel struct {
	key    string
	cancel context.CancelFunc
}

// tunnelSet is the tunnels of one gateway, as a reload changes them.
type tunnelSet struct {
	running map[string]*hostTunnel
	refused map[string]bool
	start   func(host, key string)
}

// runTunnels keeps one supervisor per hostname of the configuration on each gateway address (see
// fleet), re-resolves the gateways' names and applies reloads until ctx ends or the gateways have
// refused every hostname.
//
// A refusal of one hostname (unknown domain, wrong or rotated key) is logged and that hostname
// stays down on that gateway until a reload; the others keep serving. Only when no tunnel is left
// because every one was refused does Run return ErrRefused (exit 3), as a single-domain agent
// always did.
func (a *Agent) runTunnels(ctx context.Context, opts supervisor.Options, m *metrics.Metrics) error {
	f := &fleet{a: a, ctx: ctx, base: opts, metrics: m, ended: make(chan tunnelEnded), gateways: map[string]*gateway{}}
	entries := a.cfg.ServerAddrs()
	rctx, cancel := context.WithTimeout(ctx, resolveTimeout)
	f.reconcile(resolveEntries(rctx, entries, a.resolve))
	cancel()

	var resolved <-chan []entryAddrs
	if hasNames(entries) {
		ch := make(chan []entryAddrs)
		resolved = ch
		wctx, stopWatch := context.WithCancel(ctx)
		watchDone := make(chan struct{})
		go func() {
			defer close(watchDone)
			a.watchGateways(wctx, ch)
		}()
		defer func() {
			stopWatch()
			<-watchDone
		}()
	}

	var events <-chan fsnotify.Event
	var watchErrs <-chan error
	if a.cfg.ConfigFile != "" {
		w, err := fsnotify.NewWatcher()
		if err == nil {
			err = w.Add(filepath.Dir(a.cfg.ConfigFile))
		}
		if err != nil {
			a.log.Warn("cannot watch the config file; SIGHUP still reloads it", "file", a.cfg.ConfigFile, "err", err)
		} else {
			defer w.Close()
			events, watchErrs = w.Events, w.Errors
		}
	}
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	defer debounce.Stop()

	for {
		select {
		case <-ctx.Done():
			f.stop()
			return nil
		case e := <-f.ended:
			if err := f.tunnelEnded(e); err != nil {
				f.stop()
				return err
			}
		case res := <-resolved:
			f.reconcile(res)
		case <-a.reload:
			a.applyReload(f.tunnelSets())
		case ev := <-events:
			if a.isConfigEvent(ev) {
				debounce.Reset(reloadDebounce)
			}
		case err := <-watchErrs:
			a.log.Warn("config file watch", "err", err)
		case <-debounce.C:
			a.applyReload(f.tunnelSets())
		}
	}
}

// isConfigEvent tells whether ev may have changed the config file: the file itself, or the
// "..data" link swap of a Kubernetes ConfigMap volume.
func (a *Agent) isConfigEvent(ev fsnotify.Event) bool {
	if ev.Op == fsnotify.Chmod {
		return false
	}
	return filepath.Clean(ev.Name) == filepath.Clean(a.cfg.ConfigFile) || strings.HasPrefix(filepath.Base(ev.Name), "..")
}

// applyReload reads the configuration again and, if it is valid, swaps the routing table (streams
// in flight finish on their old rule) and, on every gateway's set, starts a tunnel for each new
// tunnel hostname, drains the tunnels of removed ones and reconnects a hostname whose key changed.
// An exact name added under a wildcard's tunnel, or removed from it, changes only the routing
// table. A bad configuration changes nothing.
func (a *Agent) applyReload(sets []tunnelSet) {
	next, err := a.cfg.Reload()
	if err != nil {
		a.log.Error("config reload refused; the running configuration stays", "err", err)
		return
	}
	table, err := a.buildRoutes(next.Services)
	if err != nil {
		a.log.Error("config reload refused; the running configuration stays", "err", err)
		return
	}
	if !a.cfg.SameSettings(next) {
		a.log.Warn("config reload: settings other than services changed; they apply after a restart")
	}
	cfg := *a.cfg
	cfg.Services = next.Services
	a.cfg = &cfg
	a.routes.Store(table)
	a.dropUnused(next.Services)
	a.health.Update(next.Services)

	hosts := config.TunnelHosts(next.Services)
	want := make(map[string]string, len(hosts))
	for _, h := range hosts {
		want[h] = keyOf(next.Services, h)
	}
	// Each list names a hostname once, however many gateways it changed on.
	changed := map[string]map[string]bool{"added": {}, "removed": {}, "rekeyed": {}}
	for _, set := range sets {
		running := set.running
		for host, t := range running {
			key, ok := want[host]
			switch {
			case !ok:
				// GoAway: the gateway sends no new stream; those in flight finish within the
				// shutdown timeout. Streams that cross the GoAway get the agent's 404.
				t.cancel()
				delete(running, host)
				changed["removed"][host] = true
			case key != t.key:
				t.cancel()
				delete(running, host)
				set.start(host, key)
				changed["rekeyed"][host] = true
			}
		}
		for host := range set.refused {
			delete(set.refused, host)
		}
		for _, host := range hosts {
			if running[host] == nil {
				set.start(host, want[host])
				changed["added"][host] = true
			}
		}
	}
	list := func(kind string) []string {
		out := []string{}
		for host := range changed[kind] {
			out = append(out, host)
		}
		sort.Strings(out)
		return out
	}
	added, removed, rekeyed := list("added"), list("removed"), list("rekeyed")
	a.log.Info("configuration reloaded", "file", a.cfg.ConfigFile, "services", len(next.Services),
		"hostnames_started", added, "hostnames_removed", removed, "hostnames_rekeyed", rekeyed)
}

// keyOf is the key of the tunnel of host (a tunnel hostname).
func keyOf(services []config.Service, host string) string {
	for _, s := range services {
		if s.TunnelHost() == host {
			return s.APIKey
		}
	}
	return ""
}

// targetsOf lists the targets of the services host's tunnel carries, for the tunnel's log lines;
// those of the exact names riding on it are named with their hostname.
func targetsOf(services []config.Service, host string) string {
	var out []string
	for _, s := range services {
		if s.TunnelHost() == host {
			out = append(out, displayRule(s))
		}
	}
	return strings.Join(out, ", ")
}

func displayRule(s config.Service) string {
	rule := s.Path
	if s.Hostname != s.TunnelHost() {
		rule = s.Hostname + s.Path
	}
	if rule == "" {
		return s.Target.Redacted()
	}
	return rule + " -> " + s.Target.Redacted()
}
