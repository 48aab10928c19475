package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hopgate/hopgate/internal/testutil/hoptest"
)

// startRole runs this program again as a helper (-role origin|rproxy) and reads the addresses it
// prints first ("ADDR http=… tls=…") from its log.
func startRole(ctx context.Context, dir, role string, args ...string) (*hoptest.Process, map[string]string, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	// Stdin stays open: a role exits when it reaches EOF, so it never outlives the harness.
	p, err := hoptest.Start(hoptest.Command{Name: role, Path: self, Args: append([]string{"-role", role}, args...),
		Log: filepath.Join(dir, role+".log"), HoldStdin: true})
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if line, ok := addrLine(p.Log.String()); ok {
			addrs := map[string]string{}
			for _, f := range strings.Fields(line) {
				if k, v, ok := strings.Cut(f, "="); ok {
					addrs[k] = v
				}
			}
			if addrs["http"] == "" {
				p.Stop(time.Second)
				return nil, nil, fmt.Errorf("%s printed %q, not its address", role, line)
			}
			return p, addrs, nil
		}
		if p.Exited() {
			return nil, nil, fmt.Errorf("%s exited early: %s", role, p.Log.Tail(2000))
		}
		select {
		case <-ctx.Done():
			p.Stop(time.Second)
			return nil, nil, fmt.Errorf("%s printed no address: %w", role, context.Cause(ctx))
		case <-tick.C:
		}
	}
}

// addrLine is what follows "ADDR " on the first whole line of log that starts with it.
func addrLine(log string) (string, bool) {
	for line := range strings.Lines(log) {
		if rest, ok := strings.CutPrefix(line, "ADDR "); ok && strings.HasSuffix(rest, "\n") {
			return strings.TrimSpace(rest), true
		}
	}
	return "", false
}

const adminKey = "bench-admin-key-0123456789abcdef"

// startGateway runs bin/hopgate-server in debug mode with its own data dir and random loopback ports,
// serving tenants on plain HTTP too, without a per-domain agent limit. proxyDomains get a name in the
// development certificate, so TLS visitors can verify it against the CA.
func startGateway(ctx context.Context, binDir, dir, name string, proxyDomains []string, extraEnv ...string) (*hoptest.Gateway, error) {
	g, err := hoptest.StartGateway(ctx, hoptest.GatewayOptions{
		BinDir:          binDir,
		Log:             filepath.Join(dir, name+".log"),
		DataDir:         filepath.Join(dir, name+"-data"),
		AdminKey:        adminKey,
		HTTPProxy:       true,
		ProxyDomains:    proxyDomains,
		ShutdownTimeout: 3 * time.Second,
		Env:             append([]string{"HOP_SERVER_MAX_AGENTS_PER_DOMAIN=0"}, extraEnv...),
	})
	if err != nil {
		return nil, err
	}
	if g.HTTPAddr == "" || g.CAPool == nil {
		g.Stop(time.Second)
		return nil, fmt.Errorf("hopgate-server has no plain-HTTP listener or no development CA:\n%s", g.Log.Tail(3000))
	}
	return g, nil
}

// clockTick is USER_HZ, the unit of utime and stime in /proc/<pid>/stat: 100 on every Linux
// architecture Go supports (the kernel's HZ may differ; this does not).
const clockTick = 100

// cpuTime is the user+system CPU time a process has used so far.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; the fields after its closing parenthesis do not.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return time.Duration(utime+stime) * time.Second / clockTick, nil
}

// gitCommit is the checked-out commit, with "-dirty" when the tree has changes; "" outside git.
func gitCommit() string {
	out, err := exec.Command("git", "describe", "--always", "--dirty").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// procSet samples CPU time of several processes together.
type procSet map[string]int

func (ps procSet) cpu() map[string]time.Duration {
	out := make(map[string]time.Duration, len(ps))
	for name, pid := range ps {
		if d, err := cpuTime(pid); err == nil {
			out[name] = d
		}
	}
	return out
}
