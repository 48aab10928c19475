package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// proc is a child process: a role of this program or a HopGate binary.
type proc struct {
	name    string
	cmd     *exec.Cmd
	stdin   io.WriteCloser // held open: a role exits when it reaches EOF
	logPath string
	done    chan struct{}
	waitErr error
}

func startProc(name, path string, args, env []string, logPath string, stdout io.Writer) (*proc, error) {
	cmd := exec.Command(path, args...)
	cmd.Env = env
	// Dies with the harness even if the harness is killed hard.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd.Stderr = logFile
	if stdout != nil {
		cmd.Stdout = stdout
	} else {
		cmd.Stdout = logFile
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		logFile.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, stdin: stdin, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop asks politely (SIGTERM), then kills after timeout.
func (p *proc) stop(timeout time.Duration) {
	if p.exited() {
		return
	}
	_ = p.stdin.Close()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// tail returns the last n bytes of the process's log, for error reports.
func (p *proc) tail(n int) string {
	b, _ := os.ReadFile(p.logPath)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// startRole runs this program again as a helper (-role origin|rproxy) and reads the addresses it prints.
func startRole(ctx context.Context, dir, role string, args ...string) (*proc, map[string]string, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	pr, pw := io.Pipe()
	p, err := startProc(role, self, append([]string{"-role", role}, args...), os.Environ(), filepath.Join(dir, role+".log"), pw)
	if err != nil {
		return nil, nil, err
	}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		first := true
		for sc.Scan() {
			if first {
				lines <- sc.Text()
				first = false
			}
		}
	}()
	go func() {
		<-p.done
		pw.Close()
	}()
	var line string
	select {
	case line = <-lines:
	case <-p.done:
		return nil, nil, fmt.Errorf("%s exited early: %s", role, p.tail(2000))
	case <-time.After(15 * time.Second):
		p.stop(time.Second)
		return nil, nil, fmt.Errorf("%s printed no address in 15 s", role)
	case <-ctx.Done():
		p.stop(time.Second)
		return nil, nil, ctx.Err()
	}
	addrs := map[string]string{}
	for _, f := range strings.Fields(strings.TrimPrefix(line, "ADDR ")) {
		if k, v, ok := strings.Cut(f, "="); ok {
			addrs[k] = v
		}
	}
	if addrs["http"] == "" {
		p.stop(time.Second)
		return nil, nil, fmt.Errorf("%s printed %q, not its address", role, line)
	}
	return p, addrs, nil
}

// cleanEnv drops the machine's HOP_* settings so that the binaries see only the harness's.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "HOP_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
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

// memKiB reads VmRSS (resident now) or VmHWM (peak resident) of a process, in KiB.
func memKiB(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			v = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB"))
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// gateway is a running hopgate-server in debug mode.
type gateway struct {
	proc      *proc
	dataDir   string
	httpsAddr string
	httpAddr  string
	adminKey  string
	caFile    string
	caPool    *x509.CertPool
	admin     *http.Client
}

const adminKey = "bench-admin-key-0123456789abcdef"

// startGateway runs bin/hopgate-server with its own data dir and random loopback ports and waits until
// it logs its listeners. proxyDomains get a name in the development certificate, so TLS visitors can
// verify it against the CA.
func startGateway(ctx context.Context, binDir, dir, name string, proxyDomains []string, extraEnv ...string) (*gateway, error) {
	dataDir := filepath.Join(dir, name+"-data")
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, err
	}
	env := cleanEnv(
		"HOP_SERVER_DEBUG=true",
		"HOP_SERVER_DOMAIN=localhost",
		"HOP_SERVER_HTTP_PROXY=true",
		"HOP_SERVER_HTTPS_LISTEN=127.0.0.1:0",
		"HOP_SERVER_HTTP_LISTEN=127.0.0.1:0",
		"HOP_SERVER_METRICS_LISTEN=",
		"HOP_SERVER_MAX_AGENTS_PER_DOMAIN=0",
		"HOP_SERVER_PROXY_DOMAINS="+strings.Join(proxyDomains, ","),
		"HOP_SERVER_SHUTDOWN_TIMEOUT=3s",
		"HOP_DATA_DIR="+dataDir,
		"HOP_ADMIN_API_KEY="+adminKey,
		"HOP_LOG_FORMAT=json",
	)
	env = append(env, extraEnv...)
	p, err := startProc(name, filepath.Join(binDir, "hopgate-server"), nil, env, filepath.Join(dir, name+".log"), nil)
	if err != nil {
		return nil, err
	}
	g := &gateway{proc: p, dataDir: dataDir, adminKey: adminKey, caFile: filepath.Join(dataDir, "selfsigned", "cert.pem")}
	deadline := time.Now().Add(20 * time.Second)
	for g.httpsAddr == "" {
		if p.exited() {
			return nil, fmt.Errorf("hopgate-server exited early:\n%s", p.tail(3000))
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			p.stop(time.Second)
			return nil, fmt.Errorf("hopgate-server did not log its listeners in 20 s:\n%s", p.tail(3000))
		}
		const listening = "hopgate-server listening"
		g.httpsAddr, g.httpAddr = logField(p.logPath, "https", listening), logField(p.logPath, "http", listening)
		if g.httpsAddr == "" {
			time.Sleep(50 * time.Millisecond)
		}
	}
	if g.httpAddr == "" || g.httpAddr == "<nil>" {
		p.stop(time.Second)
		return nil, fmt.Errorf("hopgate-server has no plain-HTTP listener")
	}
	pemBytes, err := os.ReadFile(g.caFile)
	if err != nil {
		p.stop(time.Second)
		return nil, fmt.Errorf("read the development CA: %w", err)
	}
	g.caPool = x509.NewCertPool()
	if !g.caPool.AppendCertsFromPEM(pemBytes) {
		p.stop(time.Second)
		return nil, fmt.Errorf("no certificate in %s", g.caFile)
	}
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	g.admin = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: g.caPool, ServerName: "localhost"},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, network, g.httpsAddr)
		},
		MaxIdleConnsPerHost: 16,
	}}
	return g, nil
}

// logField returns field of the first JSON log line in logPath whose msg is one of msgs.
func logField(logPath, field string, msgs ...string) string {
	f, err := os.Open(logPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*kib), mib)
	for sc.Scan() {
		var line map[string]any
		if json.Unmarshal(sc.Bytes(), &line) != nil || !slices.Contains(msgs, fmt.Sprint(line["msg"])) {
			continue
		}
		if v, ok := line[field].(string); ok {
			return v
		}
	}
	return ""
}

func (g *gateway) stop() {
	g.admin.CloseIdleConnections()
	g.proc.stop(5 * time.Second)
}

func (g *gateway) adminCall(ctx context.Context, method, path string, body any, out any) (int, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "https://localhost/api/v1/admin/"+path, rd)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+g.adminKey)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := g.admin.Do(req)
	if err != nil {
		return 0, fmt.Errorf("admin %s %s: %w", method, path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, mib))
	if err != nil {
		return res.StatusCode, err
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return res.StatusCode, fmt.Errorf("admin %s %s: %d %s", method, path, res.StatusCode, b)
		}
	}
	return res.StatusCode, nil
}

// register registers domain and returns its client API key.
func (g *gateway) register(ctx context.Context, domain string) (string, error) {
	var out struct {
		Key   string `json:"client_api_key"`
		Error string `json:"error"`
	}
	code, err := g.adminCall(ctx, http.MethodPost, "domains/register", map[string]string{"domain": domain, "memo": "bench"}, &out)
	if err != nil {
		return "", err
	}
	if code != http.StatusCreated || out.Key == "" {
		return "", fmt.Errorf("register %s: status %d %s", domain, code, out.Error)
	}
	return out.Key, nil
}

// agents is the live tunnel count the admin API reports for domain.
func (g *gateway) agents(ctx context.Context, domain string) (int, error) {
	var out struct {
		Agents int `json:"agents"`
	}
	code, err := g.adminCall(ctx, http.MethodGet, "domains/status?domain="+domain, nil, &out)
	if err != nil {
		return 0, err
	}
	if code != http.StatusOK {
		return 0, fmt.Errorf("status %s: %d", domain, code)
	}
	return out.Agents, nil
}

// waitAgents polls the admin API until domain has at least n agents.
func (g *gateway) waitAgents(ctx context.Context, domain string, n int, timeout time.Duration, check func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		got, err := g.agents(ctx, domain)
		if err == nil && got >= n {
			return nil
		}
		if check != nil {
			if err := check(); err != nil {
				return err
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s has %d agents after %s, want %d (last error: %v)", domain, got, timeout, n, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// startClient runs bin/hopgate-client for domain towards target, trusting the gateway's CA.
func startClient(binDir, dir string, g *gateway, domain, key, target string, extraArgs ...string) (*proc, error) {
	args := append([]string{
		"--server-addr", g.httpsAddr,
		"--domain", domain,
		"--local-target", target,
		"--ca-file", g.caFile,
		"--log-format", "json",
		"--agent-id", "bench",
	}, extraArgs...)
	return startProc("hopgate-client", filepath.Join(binDir, "hopgate-client"), args,
		cleanEnv("HOP_CLIENT_API_KEY="+key), filepath.Join(dir, "hopgate-client.log"), nil)
}

// writeSelfSigned makes the reverse proxy's TLS certificate: ECDSA P-256 like HopGate's development
// certificate, so that both pay the same handshake and record costs.
func writeSelfSigned(dir string) (certFile, keyFile string, pool *x509.CertPool, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "bench reverse proxy"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return "", "", nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return "", "", nil, err
	}
	certFile, keyFile = filepath.Join(dir, "rproxy-cert.pem"), filepath.Join(dir, "rproxy-key.pem")
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		return "", "", nil, err
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return "", "", nil, err
	}
	pool = x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	return certFile, keyFile, pool, nil
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
