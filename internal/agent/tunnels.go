package agent

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/hopgate/hopgate/internal/agent/supervisor"
	"github.com/hopgate/hopgate/internal/config"
	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

// reloadDebounce gathers the burst of events an editor's save makes (write, rename, chmod) into
// one reload.
const reloadDebounce = 200 * time.Millisecond

// hostTunnel is the supervised tunnel call of one hostname.
type hostTunnel struct {
	key    string
	cancel context.CancelFunc
}

// tunnelEnded is a supervisor's result; t tells which one, since a hostname may have a draining
// tunnel and its replacement at the same time.
type tunnelEnded struct {
	host string
	t    *hostTunnel
	err  error
}

// runTunnels keeps one supervisor per hostname of the configuration, all on opts.Conn, and applies
// reloads until ctx ends or the gateway has refused every hostname.
//
// A refusal of one hostname (unknown domain, wrong or rotated key) is logged and that hostname
// stays down until a reload; the others keep serving. Only when every configured hostname is
// refused does Run return ErrRefused (exit 3), as a single-domain agent always did.
func (a *Agent) runTunnels(ctx context.Context, opts supervisor.Options) error {
	// Unbuffered: the loop below reads it until every supervisor it started has ended.
	ended := make(chan tunnelEnded)
	running := map[string]*hostTunnel{}
	refused := map[string]bool{}
	live := 0
	start := func(host, key string) {
		tctx, cancel := context.WithCancel(ctx)
		t := &hostTunnel{key: key, cancel: cancel}
		running[host] = t
		o := opts
		o.Domain, o.APIKey = host, key
		o.Target = targetsOf(a.cfg.Services, host)
		o.Logger = a.log.With("domain", host)
		o.Health = func() ([]*tunnelv1.PathHealth, <-chan struct{}) { return a.health.Paths(host) }
		live++
		go func() {
			err := supervisor.Run(tctx, o)
			cancel()
			ended <- tunnelEnded{host: host, t: t, err: err}
		}()
	}
	// stop drains every tunnel (each within the shutdown timeout) and waits for them.
	stop := func() {
		for _, t := range running {
			t.cancel()
		}
		for ; live > 0; live-- {
			<-ended
		}
	}
	for _, host := range config.Hostnames(a.cfg.Services) {
		start(host, keyOf(a.cfg.Services, host))
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
			stop()
			return nil
		case e := <-ended:
			live--
			if running[e.host] != e.t {
				continue // a replaced or removed hostname finished draining
			}
			delete(running, e.host)
			if errors.Is(e.err, ErrRefused) {
				refused[e.host] = true
				if len(running) == 0 {
					stop()
					return fmt.Errorf("every hostname of this agent was refused: %w", e.err)
				}
				a.log.Error("the gateway refused this hostname; serving the others (fix its key, then reload)", "domain", e.host, "err", e.err)
			}
		case <-a.reload:
			a.applyReload(running, refused, start)
		case ev := <-events:
			if a.isConfigEvent(ev) {
				debounce.Reset(reloadDebounce)
			}
		case err := <-watchErrs:
			a.log.Warn("config file watch", "err", err)
		case <-debounce.C:
			a.applyReload(running, refused, start)
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
// in flight finish on their old rule), starts a tunnel for each new hostname, drains the tunnels of
// removed ones and reconnects a hostname whose key changed. A bad configuration changes nothing.
func (a *Agent) applyReload(running map[string]*hostTunnel, refused map[string]bool, start func(host, key string)) {
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

	hosts := config.Hostnames(next.Services)
	want := make(map[string]string, len(hosts))
	for _, h := range hosts {
		want[h] = keyOf(next.Services, h)
	}
	var added, removed, rekeyed []string
	for host, t := range running {
		key, ok := want[host]
		switch {
		case !ok:
			// GoAway: the gateway sends no new stream; those in flight finish within the
			// shutdown timeout. Streams that cross the GoAway get the agent's 404.
			t.cancel()
			delete(running, host)
			removed = append(removed, host)
		case key != t.key:
			t.cancel()
			delete(running, host)
			start(host, key)
			rekeyed = append(rekeyed, host)
		}
	}
	for host := range refused {
		delete(refused, host)
	}
	for _, host := range hosts {
		if running[host] == nil {
			start(host, want[host])
			added = append(added, host)
		}
	}
	sort.Strings(removed)
	sort.Strings(rekeyed)
	a.log.Info("configuration reloaded", "file", a.cfg.ConfigFile, "services", len(next.Services),
		"hostnames_started", added, "hostnames_removed", removed, "hostnames_rekeyed", rekeyed)
}

func keyOf(services []config.Service, host string) string {
	for _, s := range services {
		if s.Hostname == host {
			return s.APIKey
		}
	}
	return ""
}

// targetsOf lists the targets of host's services, for the tunnel's log lines.
func targetsOf(services []config.Service, host string) string {
	var out []string
	for _, s := range services {
		if s.Hostname == host {
			out = append(out, displayRule(s))
		}
	}
	return strings.Join(out, ", ")
}

func displayRule(s config.Service) string {
	if s.Path == "" {
		return s.Target.Redacted()
	}
	return s.Path + " -> " + s.Target.Redacted()
}
