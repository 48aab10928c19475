package cli_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// readKey reads a key file as hopgate-client --api-key-file does: the key and a newline.
func readKey(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(string(b), "\n") || strings.Count(string(b), "\n") != 1 {
		t.Fatalf("%s holds %q, want one line", path, b)
	}
	return strings.TrimSuffix(string(b), "\n")
}

func checkMode(t *testing.T, path string) {
	t.Helper()
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, want 0600", path, info.Mode().Perm())
	}
}

// noTempFiles checks that the atomic write left nothing behind in dir but want.
func noTempFiles(t *testing.T, dir string, want ...string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if strings.Join(names, ",") != strings.Join(want, ",") {
		t.Errorf("%s holds %q, want %q", dir, names, want)
	}
}

func TestDomainsKeyFile(t *testing.T) {
	t.Parallel()
	g := newGateway(t)
	env := map[string]string{"HOP_ADMIN_URL": g.url, "HOP_ADMIN_API_KEY": adminKey, "HOP_ADMIN_CA_FILE": g.caFile}
	ctx := t.Context()
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "app.key")
	noKey := func(t *testing.T, stdout, stderr string) {
		t.Helper()
		if keyRe.MatchString(stdout + stderr) {
			t.Errorf("output shows a key:\n%s%s", stdout, stderr)
		}
	}

	// add writes the key, mode 0600, and says where it went instead of showing it.
	code, stdout, stderr := run(t, env, "add", "app.example.com", "--key-file", keyFile, "--memo", "box")
	if code != 0 {
		t.Fatalf("add: exit %d\n%s%s", code, stdout, stderr)
	}
	noKey(t, stdout, stderr)
	for _, want := range []string{`Registered app.example.com (memo "box")`, "Its client API key is in " + keyFile + " (mode 0600)",
		"hopgate-client --server-addr 127.0.0.1:", "--api-key-file " + keyFile} {
		if !strings.Contains(stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, stdout)
		}
	}
	checkMode(t, keyFile)
	first := readKey(t, keyFile)
	if _, err := g.store.Authenticate(ctx, "app.example.com", first); err != nil {
		t.Fatalf("the key in the file does not authenticate: %v", err)
	}
	noTempFiles(t, dir, "app.key")

	// Again with the same file: nothing changes, and that is no error.
	code, stdout, stderr = run(t, env, "add", "app.example.com", "--key-file", keyFile)
	if code != 0 || !strings.Contains(stdout, "app.example.com is already registered and "+keyFile+" already holds a key: nothing changed.") {
		t.Fatalf("add again: exit %d\n%s%s", code, stdout, stderr)
	}
	noKey(t, stdout, stderr)
	if readKey(t, keyFile) != first {
		t.Fatal("add again changed the key file")
	}
	if _, err := g.store.Authenticate(ctx, "app.example.com", first); err != nil {
		t.Fatalf("add again changed the key: %v", err)
	}
	noTempFiles(t, dir, "app.key")

	// Registered, but this file has no key: fails as without --key-file, and says what to do.
	empty := filepath.Join(dir, "empty.key")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, file := range []string{filepath.Join(dir, "missing.key"), empty} {
		code, stdout, stderr = run(t, env, "add", "app.example.com", "--key-file", file)
		if code != 1 || !strings.Contains(stderr, "409 Conflict: domain already registered") ||
			!strings.Contains(stderr, "hopgate-server domains rotate-key app.example.com --key-file "+file) {
			t.Errorf("add, registered, %s: exit %d\n%s%s", filepath.Base(file), code, stdout, stderr)
		}
		noKey(t, stdout, stderr)
	}
	noTempFiles(t, dir, "app.key", "empty.key")

	// rotate-key replaces the file, whatever its mode was, with the new key.
	if err := os.Chmod(keyFile, 0o644); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr = run(t, env, "rotate-key", "app.example.com", "--key-file", keyFile)
	if code != 0 || !strings.Contains(stdout, "New client API key for app.example.com written to "+keyFile+" (mode 0600).") {
		t.Fatalf("rotate-key: exit %d\n%s%s", code, stdout, stderr)
	}
	noKey(t, stdout, stderr)
	checkMode(t, keyFile)
	second := readKey(t, keyFile)
	if _, err := g.store.Authenticate(ctx, "app.example.com", second); err != nil {
		t.Fatalf("the rotated key in the file does not authenticate: %v", err)
	}
	if _, err := g.store.Authenticate(ctx, "app.example.com", first); err == nil {
		t.Fatal("the old key still authenticates")
	}
	noTempFiles(t, dir, "app.key", "empty.key")
}

func TestDomainsKeyFileUsage(t *testing.T) {
	t.Parallel()
	g := newGateway(t)
	env := map[string]string{"HOP_ADMIN_URL": g.url, "HOP_ADMIN_API_KEY": adminKey, "HOP_ADMIN_CA_FILE": g.caFile}
	dir := t.TempDir()
	tests := []struct {
		name   string
		args   []string
		env    map[string]string
		stderr string
	}{
		{name: "with --json", args: []string{"add", "a.example.com", "--key-file", filepath.Join(dir, "k"), "--json"},
			stderr: "--key-file and --json: choose one"},
		{name: "not on list", args: []string{"list", "--key-file", filepath.Join(dir, "k")},
			stderr: "flag provided but not defined: -key-file"},
		{name: "directory missing", args: []string{"add", "b.example.com", "--key-file", filepath.Join(dir, "no", "such", "k")},
			stderr: "--key-file: cannot write beside " + filepath.Join(dir, "no", "such", "k") + ": no such file or directory"},
		{name: "a directory", args: []string{"rotate-key", "b.example.com", "--key-file", dir},
			stderr: "--key-file: " + dir + " is a directory"},
		{name: "bad wait", args: []string{"list", "--wait", "-1s"}, stderr: `HOP_ADMIN_WAIT (--wait): "-1s" is not a duration like 15s`},
		{name: "bad wait variable", args: []string{"list"}, stderr: `HOP_ADMIN_WAIT (--wait): "soon" is not a duration`,
			env: map[string]string{"HOP_ADMIN_URL": g.url, "HOP_ADMIN_API_KEY": adminKey, "HOP_ADMIN_WAIT": "soon"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := env
			if tc.env != nil {
				e = tc.env
			}
			code, stdout, stderr := run(t, e, tc.args...)
			if code != 2 || !strings.Contains(stderr, tc.stderr) {
				t.Errorf("exit %d, want 2 with %q\nstdout:\n%s\nstderr:\n%s", code, tc.stderr, stdout, stderr)
			}
		})
	}
	// A key file that cannot be written is found out before the API issues a key that would be lost.
	if d, err := g.store.List(t.Context()); err != nil || len(d) != 0 {
		t.Errorf("domains registered by refused commands: %v, %v", d, err)
	}
	noTempFiles(t, dir)
}
