package deploy_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The container tests build nothing themselves: `make container-test` runs `make images` with podman
// first and sets HOP_CONTAINER_TESTS=1. They check the images' config and filesystem, then bring up
// compose.local.yaml with podman-compose exactly as deploy/README.md says and send a visitor's request
// through the tunnel, the way a new user would.

func containerTests(t *testing.T) {
	t.Helper()
	if os.Getenv("HOP_CONTAINER_TESTS") != "1" {
		t.Skip("container tests run with `make container-test` (HOP_CONTAINER_TESTS=1)")
	}
	for _, tool := range []string{"podman", "podman-compose"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: `make container-test` installs it with apt-get", tool)
		}
	}
}

// engine runs podman and podman-compose on this machine. Two things stop a stock Debian podman from
// running containers on this kind of VM, and both are the machine's, not the stack's: crun refuses
// hybrid cgroups (a cgroup2 "unified" mount beside the v1 controllers), and the process lacks
// CAP_SYS_RESOURCE, so podman's default rlimits (above the current hard limits) cannot be set. The
// commands therefore run in a private mount namespace without the unified mount, with the cgroupfs
// manager and rlimits within the current limits (CONTAINERS_CONF). Every command enters the same
// namespace, held open by one process, because the network namespaces podman bind-mounts under
// /run/netns exist only there. A machine with a plain cgroup v2 or v1 hierarchy gets the same
// containers.conf and no namespace.
type engine struct {
	conf   string // containers.conf for every command
	holder int    // pid of the process that holds the mount namespace; 0: none needed
}

func newEngine(t *testing.T) *engine {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	nofile := min(lim.Max, 65536)
	conf := filepath.Join(t.TempDir(), "containers.conf")
	body := fmt.Sprintf(`[containers]
default_ulimits = ["nofile=%d:%d", "nproc=4096:4096"]

log_driver = "k8s-file"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
`, nofile, nofile)
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	e := &engine{conf: conf}
	if bytes.Contains(mounts, []byte(" /sys/fs/cgroup/unified ")) {
		// The holder prints once the mount is gone, then waits for its stdin to close (the test's end).
		holder := exec.Command("unshare", "-m", "sh", "-c", "umount /sys/fs/cgroup/unified && echo ready && exec cat >/dev/null")
		in, err := holder.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		out, err := holder.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := holder.Start(); err != nil {
			t.Fatalf("unshare: %v", err)
		}
		t.Cleanup(func() { in.Close(); holder.Wait() })
		line := make([]byte, 6)
		if _, err := io.ReadFull(out, line); err != nil || string(line) != "ready\n" {
			t.Fatalf("mount namespace without the unified cgroup: %v", err)
		}
		e.holder = holder.Process.Pid
	}
	return e
}

// cmd builds one podman or podman-compose command, run in dir.
func (e *engine) cmd(ctx context.Context, dir string, env []string, name string, args ...string) *exec.Cmd {
	var c *exec.Cmd
	if e.holder != 0 {
		// nsenter would start in the namespace's root directory otherwise.
		wd, _ := filepath.Abs(dir)
		c = exec.CommandContext(ctx, "nsenter", append([]string{"-t", strconv.Itoa(e.holder), "-m", "--wd=" + wd, "--", name}, args...)...)
	} else {
		c = exec.CommandContext(ctx, name, args...)
	}
	c.Dir = dir
	c.Env = append(append(os.Environ(), "CONTAINERS_CONF="+e.conf), env...)
	c.WaitDelay = 5 * time.Second
	return c
}

// run runs a command and returns its stdout; it fails the test with stderr on a non-zero exit.
func (e *engine) run(t *testing.T, dir string, env []string, name string, args ...string) string {
	t.Helper()
	out, err := e.try(dir, env, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return out
}

func (e *engine) try(dir string, env []string, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	c := e.cmd(ctx, dir, env, name, args...)
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%w\n%s%s", err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

type imageConfig struct {
	User         string
	Entrypoint   []string
	Env          []string
	ExposedPorts map[string]struct{}
	Labels       map[string]string
	StopSignal   string
	Volumes      map[string]struct{}
	Healthcheck  *struct{ Test []string } // podman reports it beside Config, docker inside
}

func inspectImage(t *testing.T, e *engine, image string) imageConfig {
	t.Helper()
	var got []struct {
		Config      imageConfig
		Healthcheck *struct{ Test []string }
	}
	out := e.run(t, ".", nil, "podman", "image", "inspect", image)
	if err := json.Unmarshal([]byte(out), &got); err != nil || len(got) != 1 {
		t.Fatalf("podman image inspect %s: %v: %s", image, err, out)
	}
	c := got[0].Config
	if c.Healthcheck == nil {
		c.Healthcheck = got[0].Healthcheck
	}
	return c
}

// imageFiles exports a container of image and returns its filesystem's headers by path; the
// binaries go to dir.
func imageFiles(t *testing.T, e *engine, image, dir string) map[string]*tar.Header {
	t.Helper()
	id := strings.TrimSpace(e.run(t, ".", nil, "podman", "create", image))
	defer e.try(".", nil, "podman", "rm", "-f", "-v", id) // -v: the anonymous volume of /data too
	out := e.run(t, ".", nil, "podman", "export", id)
	files := map[string]*tar.Header{}
	tr := tar.NewReader(strings.NewReader(out))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("export %s: %v", image, err)
		}
		name := strings.TrimSuffix(strings.TrimPrefix(h.Name, "./"), "/")
		files[name] = h
		if h.Typeflag == tar.TypeReg && strings.HasPrefix(name, "usr/local/bin/") {
			f, err := os.OpenFile(filepath.Join(dir, filepath.Base(name)), os.O_CREATE|os.O_WRONLY, 0o755)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(f, tr); err != nil {
				t.Fatal(err)
			}
			f.Close()
		}
	}
	return files
}

func TestContainerImages(t *testing.T) {
	containerTests(t)
	e := newEngine(t)
	bin := t.TempDir()

	srv := inspectImage(t, e, "hopgate-server:latest")
	if srv.User != "65532:65532" || !slices.Equal(srv.Entrypoint, []string{"/usr/local/bin/hopgate-server"}) {
		t.Errorf("server image: user %q, entrypoint %q", srv.User, srv.Entrypoint)
	}
	if srv.Healthcheck == nil || !slices.Equal(srv.Healthcheck.Test, []string{"CMD", "/usr/local/bin/hopgate-server", "health"}) {
		t.Errorf("server image: health check %+v, want CMD hopgate-server health", srv.Healthcheck)
	}
	for _, p := range []string{"80/tcp", "443/tcp", "9180/tcp"} {
		if _, ok := srv.ExposedPorts[p]; !ok {
			t.Errorf("server image: port %s not exposed", p)
		}
	}
	if _, ok := srv.Volumes["/data"]; !ok {
		t.Errorf("server image: /data is not a volume")
	}
	if !slices.Contains(srv.Env, "HOP_DATA_DIR=/data") || srv.StopSignal != "SIGTERM" {
		t.Errorf("server image: env %q, stop signal %q", srv.Env, srv.StopSignal)
	}
	cli := inspectImage(t, e, "hopgate-client:latest")
	if cli.User != "65532:65532" || !slices.Equal(cli.Entrypoint, []string{"/usr/local/bin/hopgate-client"}) {
		t.Errorf("client image: user %q, entrypoint %q", cli.User, cli.Entrypoint)
	}
	for name, c := range map[string]imageConfig{"server": srv, "client": cli} {
		if v := c.Labels["org.opencontainers.image.version"]; v == "" || v == "dev" {
			t.Errorf("%s image: version label %q, want the build's version", name, v)
		}
	}

	// FROM scratch: the binary and the two directories, nothing else.
	files := imageFiles(t, e, "hopgate-server:latest", bin)
	var names []string
	for n, h := range files {
		if h.Typeflag != tar.TypeDir {
			names = append(names, n)
		}
	}
	if !slices.Equal(names, []string{"usr/local/bin/hopgate-server"}) {
		t.Errorf("server image files: %q, want only the binary", names)
	}
	if h := files["data"]; h == nil || h.Uid != 65532 || h.FileInfo().Mode().Perm() != 0o700 {
		t.Errorf("server image /data: %+v, want a directory of 65532 with mode 0700", h)
	}
	if h := files["tmp"]; h == nil || h.FileInfo().Mode()&os.ModeSticky == 0 || h.FileInfo().Mode().Perm() != 0o777 {
		t.Errorf("server image /tmp: %+v, want mode 1777", h)
	}
	if h := imageFiles(t, e, "hopgate-client:latest", bin)["tmp"]; h == nil || h.FileInfo().Mode().Perm() != 0o777 {
		t.Errorf("client image /tmp: %+v, want mode 1777", h)
	}

	// The binaries taken out of the images are static and are the ones built from this tree.
	for _, b := range []string{"hopgate-server", "hopgate-client"} {
		out, err := exec.Command(filepath.Join(bin, b), "--version").CombinedOutput()
		if err != nil || !strings.Contains(string(out), cli.Labels["org.opencontainers.image.version"]) {
			t.Errorf("%s --version from the image: %v: %s", b, err, out)
		}
	}
}

// TestContainerLocalStack brings up compose.local.yaml as deploy/README.md tells a new user to, and
// checks that a visitor's request reaches the demo service through the agent.
func TestContainerLocalStack(t *testing.T) {
	containerTests(t)
	e := newEngine(t)
	project := fmt.Sprintf("hopgate-local-test-%d", os.Getpid())
	httpsPort, httpPort := freePort(t), freePort(t)
	env := []string{
		"HOPGATE_LOCAL_HTTPS_PORT=" + strconv.Itoa(httpsPort),
		"HOPGATE_LOCAL_HTTP_PORT=" + strconv.Itoa(httpPort),
	}
	compose := func(args ...string) (string, error) {
		return e.try(".", env, "podman-compose", append([]string{"-p", project, "-f", "compose.local.yaml"}, args...)...)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, svc := range []string{"hopgate-server", "register", "demo-target", "hopgate-client"} {
				out, _ := e.try(".", nil, "podman", "logs", project+"_"+svc+"_1")
				t.Logf("--- %s:\n%s", svc, out)
			}
		}
		if out, err := compose("down", "-v"); err != nil {
			t.Logf("down: %v\n%s", err, out)
		}
		// podman-compose 1.0 leaves the project's networks behind.
		e.try(".", nil, "podman", "network", "rm", "-f", project+"_edge", project+"_private")
	})

	if out, err := compose("up", "-d"); err != nil {
		t.Fatalf("up: %v\n%s", err, out)
	}

	// The visitor, as the README's curl: https://app.localhost:PORT/, verified against the
	// development CA that the gateway wrote into its volume.
	mount := strings.TrimSpace(e.run(t, ".", nil, "podman", "volume", "inspect", "--format", "{{.Mountpoint}}", project+"_hopgate-data"))
	var body string
	deadline := time.Now().Add(90 * time.Second)
	for {
		status, b, err := visit(filepath.Join(mount, "selfsigned", "cert.pem"), httpsPort)
		if err == nil && status == http.StatusOK {
			body = b
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no answer through the tunnel within 90 s: status %d, %v: %s", status, err, b)
		}
		time.Sleep(time.Second)
	}
	if !strings.Contains(body, "hello from the private host") || !strings.Contains(body, `"host":"app.localhost`) {
		t.Errorf("visitor got %s, want the demo service's echo of app.localhost", body)
	}

	// The image's own health check answers, as the engine would run it.
	if out, err := e.try(".", nil, "podman", "healthcheck", "run", project+"_hopgate-server_1"); err != nil {
		t.Errorf("podman healthcheck run: %v: %s", err, out)
	}

	// `up` again is harmless: register finds the domain and its key file and changes nothing, and the
	// agent keeps serving.
	if out, err := compose("up", "-d"); err != nil {
		t.Fatalf("second up: %v\n%s", err, out)
	}
	exit := func() string {
		out, _ := e.try(".", nil, "podman", "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", project+"_register_1")
		return strings.TrimSpace(out)
	}
	deadline = time.Now().Add(60 * time.Second)
	for exit() != "exited 0" {
		if time.Now().After(deadline) {
			t.Fatalf("register after the second up: %q, want exited 0", exit())
		}
		time.Sleep(500 * time.Millisecond)
	}
	deadline = time.Now().Add(30 * time.Second)
	for {
		status, b, err := visit(filepath.Join(mount, "selfsigned", "cert.pem"), httpsPort)
		if err == nil && status == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the second up: status %d, %v: %s", status, err, b)
		}
		time.Sleep(time.Second)
	}
}

// visit sends GET https://app.localhost:port/ to 127.0.0.1, trusting only the CA in caFile.
func visit(caFile string, port int) (int, string, error) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return 0, "", err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return 0, "", fmt.Errorf("%s: no certificate", caFile)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	client := &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: roots},
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, network, addr)
			},
		},
	}
	defer client.CloseIdleConnections()
	resp, err := client.Get(fmt.Sprintf("https://app.localhost:%d/", port))
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b), err
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
