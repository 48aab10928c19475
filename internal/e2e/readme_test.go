package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestReadmeByHand runs the README's "Running it by hand" block as a new user would paste it into a
// shell, against the binaries this test suite built: if the README drifts from the programs (a flag
// renamed, a step missing, a port that does not match), this fails. Only the block's `make build` is
// left out, since the binaries are already here.
func TestReadmeByHand(t *testing.T) {
	t.Parallel()
	block := readmeBlock(t, "## Running it by hand")
	var script []string
	for _, line := range strings.Split(block, "\n") {
		if strings.HasPrefix(line, "make ") {
			continue
		}
		script = append(script, line)
	}

	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"hopgate-server", "hopgate-client", "hopgate-demo-target"} {
		if err := os.Symlink(filepath.Join(binDir, b), filepath.Join(dir, "bin", b)); err != nil {
			t.Fatal(err)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-euo", "pipefail", "-c", strings.Join(script, "\n"))
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "HOP_LOG_FORMAT=text")
	// Its own process group, so that whatever the block left running goes with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	if err != nil {
		t.Fatalf("the README block failed: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), `"message":"hello from the private host, through HopGate"`) ||
		!strings.Contains(out.String(), `"host":"app.example.test:8443"`) {
		t.Fatalf("the visitor's curl did not reach the demo service through the tunnel:\n%s", out.String())
	}
	if key, err := os.ReadFile(filepath.Join(dir, "app.key")); err != nil || !strings.HasPrefix(string(key), "hopgate_") ||
		strings.Contains(out.String(), strings.TrimSpace(string(key))) {
		t.Fatalf("app.key: %v; the key must be in the file and nowhere in the output", err)
	}
}

// readmeBlock returns the first ```sh block after heading in the repository's README.md.
func readmeBlock(t *testing.T, heading string) string {
	t.Helper()
	raw, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(raw), "\n"+heading+"\n")
	if !ok {
		t.Fatalf("README.md has no %q section", heading)
	}
	_, rest, ok = strings.Cut(rest, "```sh\n")
	if !ok {
		t.Fatalf("README.md %q has no sh block", heading)
	}
	block, _, ok := strings.Cut(rest, "\n```")
	if !ok {
		t.Fatalf("README.md %q: unterminated block", heading)
	}
	return block
}
