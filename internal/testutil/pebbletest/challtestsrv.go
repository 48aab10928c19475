package pebbletest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// ChallTestSrv is a running pebble-challtestsrv (a pinned Go tool dependency), serving only DNS: A
// 127.0.0.1 for every name (no AAAA) and the TXT records set through its management API. Pebble
// started with Config.DNSServer = DNSAddr resolves through it, so DNS-01 validations see the records.
type ChallTestSrv struct {
	DNSAddr string // host:port, UDP and TCP
	MgmtURL string // management API: /set-txt, /clear-txt, ...
}

var (
	challOnce sync.Once
	challBin  string
	challErr  error
	execBin   string
)

// buildChall compiles pebble-challtestsrv and the exec provider's program into the directory of the
// built Pebble, once per test binary.
func (b *Binary) buildChall() error {
	challOnce.Do(func() {
		dir := filepath.Dir(b.Path)
		challBin = filepath.Join(dir, "pebble-challtestsrv")
		out, err := exec.Command("go", "build", "-o", challBin, "github.com/letsencrypt/pebble/v2/cmd/pebble-challtestsrv").CombinedOutput()
		if err != nil {
			challErr = fmt.Errorf("build pebble-challtestsrv: %v\n%s", err, out)
			return
		}
		execBin = filepath.Join(dir, "challexec")
		out, err = exec.Command("go", "build", "-o", execBin, "github.com/hopgate/hopgate/internal/testutil/pebbletest/challexec").CombinedOutput()
		if err != nil {
			challErr = fmt.Errorf("build challexec: %v\n%s", err, out)
		}
	})
	return challErr
}

// ExecProviderEnv is the environment of lego's "exec" DNS provider (HOP_ACME_DNS_PROVIDER=exec)
// that publishes DNS-01 records on c, polling for them every second for at most 20 s.
func (b *Binary) ExecProviderEnv(t testing.TB, c *ChallTestSrv) []string {
	t.Helper()
	if err := b.buildChall(); err != nil {
		t.Fatal(err)
	}
	return []string{"EXEC_PATH=" + execBin, "CHALLTESTSRV_URL=" + c.MgmtURL,
		"EXEC_PROPAGATION_TIMEOUT=20", "EXEC_POLLING_INTERVAL=1"}
}

// StartChallTestSrv runs pebble-challtestsrv on loopback with only its DNS server and management
// API. Its ports come from FreePort and may be taken by the time it binds them; then it is started
// again.
func (b *Binary) StartChallTestSrv(t testing.TB) *ChallTestSrv {
	t.Helper()
	if err := b.buildChall(); err != nil {
		t.Fatal(err)
	}
	var lastErr error
	for range 3 {
		c, err := tryStartChall(t)
		if err == nil {
			return c
		}
		lastErr = err
	}
	t.Fatal(lastErr)
	return nil
}

func tryStartChall(t testing.TB) (*ChallTestSrv, error) {
	dnsAddr := fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	mgmt := fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	cmd := exec.Command(challBin, "-dnsserver", dnsAddr, "-management", mgmt,
		"-http01", "", "-https01", "", "-tlsalpn01", "", "-doh", "",
		"-defaultIPv4", "127.0.0.1", "-defaultIPv6", "")
	logs := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	stop := func() {
		_ = cmd.Process.Kill()
		<-exited
	}
	c := &ChallTestSrv{DNSAddr: dnsAddr, MgmtURL: "http://" + mgmt}
	deadline := time.Now().Add(10 * time.Second)
	for {
		// The management API answers once both servers are up; a TXT record for nobody checks it.
		if err := c.post("/clear-txt", map[string]string{"host": "_probe.invalid."}); err == nil {
			if conn, err := net.DialTimeout("tcp", dnsAddr, time.Second); err == nil {
				conn.Close()
				break
			}
		}
		select {
		case <-exited:
			return nil, fmt.Errorf("pebble-challtestsrv exited at start:\n%s", logs.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("pebble-challtestsrv did not start:\n%s", logs.String())
		}
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("pebble-challtestsrv output:\n%s", logs.String())
		}
	})
	return c, nil
}

// SetTXT publishes a TXT record (fqdn with its trailing dot).
func (c *ChallTestSrv) SetTXT(fqdn, value string) error {
	return c.post("/set-txt", map[string]string{"host": fqdn, "value": value})
}

// ClearTXT removes the TXT records of fqdn.
func (c *ChallTestSrv) ClearTXT(fqdn string) error {
	return c.post("/clear-txt", map[string]string{"host": fqdn})
}

func (c *ChallTestSrv) post(path string, body any) error {
	b, _ := json.Marshal(body)
	hc := &http.Client{Timeout: 5 * time.Second}
	res, err := hc.Post(c.MgmtURL+path, "application/json", bytes.NewReader(b))
	if err != nil {
		return err
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("challtestsrv %s: %s", path, res.Status)
	}
	return nil
}
