package config

import (
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

type parseCase[T any] struct {
	in      string
	want    T
	wantErr string // substring of the error; "" = no error
}

func runParse[T any](t *testing.T, parse func(string) (T, error), cases []parseCase[T]) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			t.Parallel()
			got, err := parse(tc.in)
			if tc.wantErr != "" {
				if err == nil {
					t.Fatalf("parse(%q) = %v, want error containing %q", tc.in, got, tc.wantErr)
				}
				if !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("parse(%q) error = %q, want it to contain %q", tc.in, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parse(%q): %v", tc.in, err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("parse(%q) = %#v, want %#v", tc.in, got, tc.want)
			}
		})
	}
}

func TestParseBool(t *testing.T) {
	const bad = "is not a boolean (1/0, true/false, yes/no, on/off)"
	runParse(t, parseBool, []parseCase[bool]{
		{in: "1", want: true}, {in: "0", want: false},
		{in: "true", want: true}, {in: "false", want: false},
		{in: "TRUE", want: true}, {in: "False", want: false},
		{in: "yes", want: true}, {in: "no", want: false},
		{in: "YES", want: true}, {in: "No", want: false},
		{in: "on", want: true}, {in: "off", want: false},
		{in: "On", want: true}, {in: "OFF", want: false},
		{in: "2", wantErr: bad},
		{in: "-1", wantErr: bad},
		{in: "t", wantErr: bad},
		{in: "y", wantErr: bad},
		{in: "enabled", wantErr: bad},
		{in: "tru e", wantErr: bad},
	})
}

func TestParseByteSize(t *testing.T) {
	const bad = "is not a size in bytes"
	runParse(t, parseByteSize, []parseCase[int64]{
		{in: "0", want: 0},
		{in: "1048576", want: 1 << 20},
		{in: "10MiB", want: 10 << 20},
		{in: "10 MiB", want: 10 << 20},
		{in: "512KiB", want: 512 << 10},
		{in: "2GiB", want: 2 << 30},
		{in: "1TiB", want: 1 << 40},
		{in: "100B", want: 100},
		{in: "-1", wantErr: bad},
		{in: "10MB", wantErr: bad},
		{in: "1.5MiB", wantErr: bad},
		{in: "MiB", wantErr: bad},
		{in: "9000000TiB", wantErr: bad},
		{in: "99999999999999999999", wantErr: bad},
	})
}

func TestParseNonNegativeInt(t *testing.T) {
	const bad = "is not a whole number ≥ 0"
	runParse(t, parseNonNegativeInt, []parseCase[int]{
		{in: "0", want: 0},
		{in: "10", want: 10},
		{in: "007", want: 7},
		{in: "-1", wantErr: bad},
		{in: "1.5", wantErr: bad},
		{in: "ten", wantErr: bad},
		{in: "1e3", wantErr: bad},
		{in: "99999999999999999999", wantErr: bad},
	})
}

func TestParseDurations(t *testing.T) {
	const bad = "is not a duration like 30s"
	t.Run("any", func(t *testing.T) {
		runParse(t, parseDuration, []parseCase[time.Duration]{
			{in: "30s", want: 30 * time.Second},
			{in: "5m", want: 5 * time.Minute},
			{in: "1h30m", want: 90 * time.Minute},
			{in: "250ms", want: 250 * time.Millisecond},
			{in: "0", want: 0},
			{in: "-5s", want: -5 * time.Second},
			{in: "abc", wantErr: `"abc" ` + bad},
			{in: "30", wantErr: bad},
			{in: "5 m", wantErr: bad},
			{in: "1d", wantErr: bad},
		})
	})
	t.Run("non-negative", func(t *testing.T) {
		runParse(t, parseNonNegativeDuration, []parseCase[time.Duration]{
			{in: "0", want: 0},
			{in: "30m", want: 30 * time.Minute},
			{in: "-1s", wantErr: "negative"},
			{in: "x", wantErr: bad},
		})
	})
	t.Run("positive", func(t *testing.T) {
		runParse(t, parsePositiveDuration, []parseCase[time.Duration]{
			{in: "15s", want: 15 * time.Second},
			{in: "1ns", want: time.Nanosecond},
			{in: "0", wantErr: "greater than zero"},
			{in: "0s", wantErr: "greater than zero"},
			{in: "-1m", wantErr: "greater than zero"},
			{in: "15", wantErr: bad},
		})
	})
}

func TestParseSeconds(t *testing.T) {
	const bad = "is not a whole number of seconds greater than 0"
	runParse(t, parseSeconds, []parseCase[time.Duration]{
		{in: "15", want: 15 * time.Second},
		{in: "1", want: time.Second},
		{in: "3600", want: time.Hour},
		{in: "0", wantErr: bad},
		{in: "-3", wantErr: bad},
		{in: "15s", wantErr: bad},
		{in: "1.5", wantErr: bad},
		{in: "fifteen", wantErr: bad},
		{in: "9223372036854775807", wantErr: bad}, // overflows a Duration
	})
}

func TestParseCSV(t *testing.T) {
	runParse(t, parseCSV, []parseCase[[]string]{
		{in: "a", want: []string{"a"}},
		{in: "a,b", want: []string{"a", "b"}},
		{in: " a , b ,, c ", want: []string{"a", "b", "c"}},
		{in: ",", want: nil},
	})
}

func TestParseIPs(t *testing.T) {
	runParse(t, parseIPs, []parseCase[[]net.IP]{
		{in: "203.0.113.7", want: []net.IP{net.ParseIP("203.0.113.7")}},
		{in: "203.0.113.7, 2001:db8::1", want: []net.IP{net.ParseIP("203.0.113.7"), net.ParseIP("2001:db8::1")}},
		{in: "203.0.113.256", wantErr: `"203.0.113.256" is not an IP address`},
		{in: "1.2.3.4,example.com", wantErr: `"example.com" is not an IP address`},
		{in: "1.2.3.4/24", wantErr: "is not an IP address"},
		{in: "[::1]", wantErr: "is not an IP address"},
	})
}

func TestParseListen(t *testing.T) {
	const bad = "is not a listen address host:port"
	runParse(t, parseListen, []parseCase[string]{
		{in: ":80", want: ":80"},
		{in: "127.0.0.1:9180", want: "127.0.0.1:9180"},
		{in: "[::1]:443", want: "[::1]:443"},
		{in: "localhost:0", want: "localhost:0"},
		{in: "0.0.0.0:65535", want: "0.0.0.0:65535"},
		{in: "80", wantErr: bad},
		{in: "localhost", wantErr: bad},
		{in: ":http", wantErr: bad},
		{in: ":65536", wantErr: bad},
		{in: ":-1", wantErr: bad},
		{in: "::1:80", wantErr: bad},
		{in: "http://x:80", wantErr: bad},
		{in: "a b:80", wantErr: bad},
	})
}

func TestParseDialAddr(t *testing.T) {
	const bad = "is not an address host:port"
	runParse(t, parseDialAddr, []parseCase[string]{
		{in: "gateway.example.com:443", want: "gateway.example.com:443"},
		{in: "127.0.0.1:8443", want: "127.0.0.1:8443"},
		{in: "[2001:db8::1]:443", want: "[2001:db8::1]:443"},
		{in: ":443", wantErr: bad},
		{in: "gateway.example.com", wantErr: bad},
		{in: "gateway.example.com:0", wantErr: bad},
		{in: "gateway.example.com:https", wantErr: bad},
		{in: "https://gateway.example.com:443", wantErr: bad},
	})
}

func TestParseServerAddr(t *testing.T) {
	const bad = "is not an address host[:port]"
	runParse(t, parseServerAddr, []parseCase[string]{
		{in: "gateway.example.com", want: "gateway.example.com:443"},
		{in: "gateway.example.com:443", want: "gateway.example.com:443"},
		{in: "gateway.example.com:8443", want: "gateway.example.com:8443"},
		{in: "127.0.0.1", want: "127.0.0.1:443"},
		{in: "127.0.0.1:8443", want: "127.0.0.1:8443"},
		{in: "[::1]", want: "[::1]:443"},
		{in: "::1", want: "[::1]:443"},
		{in: "2001:db8::1", want: "[2001:db8::1]:443"},
		{in: "[2001:db8::1]:8443", want: "[2001:db8::1]:8443"},
		{in: "::ffff:192.0.2.1", want: "[::ffff:192.0.2.1]:443"},
		{in: ":443", wantErr: bad},
		{in: "[]", wantErr: bad},
		{in: "[]:443", wantErr: bad},
		{in: "gateway.example.com:", wantErr: bad},
		{in: "gateway.example.com:0", wantErr: bad},
		{in: "gateway.example.com:99999", wantErr: bad},
		{in: "gateway.example.com:abc", wantErr: bad},
		{in: "gateway.example.com:https", wantErr: bad},
		{in: "https://gateway.example.com", wantErr: bad},
		{in: "gateway.example.com/", wantErr: bad},
		{in: "gate way.example.com", wantErr: bad},
		{in: "[::1", wantErr: bad},
		{in: "1:2:3", wantErr: bad},
	})
}

func TestReadKeyFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	cases := []parseCase[string]{
		{in: write("plain", "hopgate_k3y"), want: "hopgate_k3y"},
		{in: write("newline", "hopgate_k3y\n"), want: "hopgate_k3y"},
		{in: write("crlf and blanks", "hopgate_k3y \t\r\n\n"), want: "hopgate_k3y"},
		{in: write("empty", ""), wantErr: "is empty: want the client API key"},
		{in: write("blank", " \n\n"), wantErr: "is empty"},
		{in: write("two lines", "hopgate_k3y\nhopgate_other\n"), wantErr: "holds more than one line"},
		{in: write("huge", strings.Repeat("k", maxKeyFile+1)), wantErr: "is larger than 64 KiB"},
		{in: filepath.Join(dir, "missing"), wantErr: "is not a readable file: no such file or directory"},
		{in: dir, wantErr: "is not a readable file: is a directory"},
	}
	if os.Geteuid() != 0 { // root reads anything
		cases = append(cases, parseCase[string]{in: write("unreadable", "hopgate_k3y"), wantErr: "permission denied"})
		if err := os.Chmod(filepath.Join(dir, "unreadable"), 0); err != nil {
			t.Fatal(err)
		}
	}
	runParse(t, readKeyFile, cases)
	for _, tc := range cases {
		if _, err := readKeyFile(tc.in); err != nil && strings.Contains(err.Error(), "hopgate_") {
			t.Errorf("readKeyFile(%q) error shows the file's content: %v", tc.in, err)
		}
	}
}

func TestParseHTTPURL(t *testing.T) {
	const bad = "is not an http:// or https:// URL"
	runParse(t, parseHTTPURL, []parseCase[string]{
		{in: LetsEncryptProduction, want: LetsEncryptProduction},
		{in: "https://localhost:14000/dir", want: "https://localhost:14000/dir"},
		{in: "http://pebble:14000/dir", want: "http://pebble:14000/dir"},
		{in: "ftp://example.com/dir", wantErr: bad},
		{in: "localhost:14000/dir", wantErr: bad},
		{in: "/directory", wantErr: bad},
		{in: "https://", wantErr: bad},
		{in: "https://user:pw@example.com/dir", wantErr: bad},
		{in: "https://exa mple.com/", wantErr: bad},
	})
}

func TestParseLocalTarget(t *testing.T) {
	const bad = "is not a local target"
	runParse(t, parseLocalTarget, []parseCase[*url.URL]{
		{in: "127.0.0.1:8080", want: &url.URL{Scheme: "http", Host: "127.0.0.1:8080"}},
		{in: "localhost:3000", want: &url.URL{Scheme: "http", Host: "localhost:3000"}},
		{in: "[::1]:8080", want: &url.URL{Scheme: "http", Host: "[::1]:8080"}},
		{in: "http://localhost:8080", want: &url.URL{Scheme: "http", Host: "localhost:8080"}},
		{in: "HTTPS://app.internal", want: &url.URL{Scheme: "https", Host: "app.internal"}},
		{in: "https://app.internal:8443/base", want: &url.URL{Scheme: "https", Host: "app.internal:8443", Path: "/base"}},
		{in: "localhost", wantErr: bad},
		{in: ":8080", wantErr: bad},
		{in: "localhost:99999", wantErr: bad},
		{in: "ftp://localhost:21", wantErr: bad},
		{in: "http://", wantErr: bad},
		{in: "http://localhost:99999", wantErr: bad},
		{in: "http://user:pw@localhost:8080", wantErr: bad},
		{in: "http://localhost:8080/?a=b", wantErr: bad},
		{in: "http://localhost:8080/#top", wantErr: bad},
		{in: "unix:///run/app.sock", want: &url.URL{Scheme: "unix", Path: "/run/app.sock"}},
		{in: "UNIX:///tmp/app.sock", want: &url.URL{Scheme: "unix", Path: "/tmp/app.sock"}},
		{in: "unix://host/run/app.sock", wantErr: "is not a unix socket target"},
		{in: "unix://", wantErr: "is not a unix socket target"},
		{in: "unix:///run/app.sock?x=1", wantErr: "is not a unix socket target"},
		{in: "tcp://127.0.0.1:5432", want: &url.URL{Scheme: "tcp", Host: "127.0.0.1:5432"}},
		{in: "TCP://db.internal:5432", want: &url.URL{Scheme: "tcp", Host: "db.internal:5432"}},
		{in: "tcp://[::1]:22", want: &url.URL{Scheme: "tcp", Host: "[::1]:22"}},
		{in: "tcp://127.0.0.1", wantErr: "is not a TCP target"},
		{in: "tcp://127.0.0.1:", wantErr: "is not a TCP target"},
		{in: "tcp://127.0.0.1:0", wantErr: "is not a TCP target"},
		{in: "tcp://127.0.0.1:99999", wantErr: "is not a TCP target"},
		{in: "tcp://:5432", wantErr: "is not a TCP target"},
		{in: "tcp://", wantErr: "is not a TCP target"},
		{in: "tcp:127.0.0.1:5432", wantErr: bad},
		{in: "tcp://127.0.0.1:5432/", wantErr: "no path"},
		{in: "tcp://127.0.0.1:5432/db", wantErr: "no path"},
		{in: "tcp://127.0.0.1:5432?x=1", wantErr: "no path, query"},
		{in: "tcp://127.0.0.1:5432?", wantErr: "no path, query"},
		{in: "tcp://127.0.0.1:5432#x", wantErr: "no path, query"},
		{in: "tcp://u:p@127.0.0.1:5432", wantErr: "or user"},
	})
}

func TestParseDataDir(t *testing.T) {
	runParse(t, parseDataDir, []parseCase[string]{
		{in: "./data", want: "./data"},
		{in: "/var/lib/hop gate", want: "/var/lib/hop gate"},
		{in: "/tmp/a#b", wantErr: "may not contain"},
		{in: "/tmp/a?b", wantErr: "may not contain"},
	})
}

func TestParseCIDRs(t *testing.T) {
	const bad = "is not a CIDR"
	runParse(t, parseCIDRs, []parseCase[[]netip.Prefix]{
		{in: "10.0.0.0/8", want: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}},
		{in: "10.1.2.3/8, ::1", want: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::1/128")}},
		{in: "192.0.2.7", want: []netip.Prefix{netip.MustParsePrefix("192.0.2.7/32")}},
		{in: ",", want: nil},
		{in: "10.0.0.0/33", wantErr: bad},
		{in: "example.com", wantErr: bad},
		{in: "10.0.0.1/8/8", wantErr: bad},
	})
}

func TestParseLogLevel(t *testing.T) {
	const bad = "is not a log level (debug, info, warn, error)"
	runParse(t, parseLogLevel, []parseCase[slog.Level]{
		{in: "debug", want: slog.LevelDebug},
		{in: "info", want: slog.LevelInfo},
		{in: "WARN", want: slog.LevelWarn},
		{in: "Error", want: slog.LevelError},
		{in: "warning", wantErr: bad},
		{in: "trace", wantErr: bad},
		{in: "INFO+2", wantErr: bad},
		{in: "0", wantErr: bad},
	})
}

func TestParseLogFormat(t *testing.T) {
	const bad = "is not a log format (json, text)"
	runParse(t, parseLogFormat, []parseCase[string]{
		{in: "json", want: "json"},
		{in: "text", want: "text"},
		{in: "JSON", want: "json"},
		{in: "logfmt", wantErr: bad},
		{in: "console", wantErr: bad},
	})
}

func TestParseDomain(t *testing.T) {
	const bad = "is not a domain name"
	long := strings.Repeat("a", 63)
	name253 := strings.Join([]string{long, long, long, strings.Repeat("b", 61)}, ".")
	runParse(t, parseDomain, []parseCase[string]{
		{in: "example.com", want: "example.com"},
		{in: "Gate.Example.COM.", want: "gate.example.com"},
		{in: "localhost", want: "localhost"},
		{in: "a-b.x1.example", want: "a-b.x1.example"},
		{in: "123.example.com", want: "123.example.com"},
		{in: long + ".com", want: long + ".com"},
		{in: name253, want: name253},
		{in: name253 + "b", wantErr: bad},
		{in: long + "a.com", wantErr: bad},
		{in: "exa_mple.com", wantErr: bad},
		{in: "-example.com", wantErr: bad},
		{in: "example-.com", wantErr: bad},
		{in: "example..com", wantErr: bad},
		{in: ".example.com", wantErr: bad},
		{in: "*.example.com", wantErr: bad},
		{in: "exämple.com", wantErr: bad},
		{in: "example.com:443", wantErr: bad},
		{in: "https://example.com", wantErr: bad},
		{in: "192.0.2.1", wantErr: bad},
		{in: ".", wantErr: bad},
	})
}

func TestParseDomains(t *testing.T) {
	runParse(t, parseDomains, []parseCase[[]string]{
		{in: "a.example.com, B.example.com.", want: []string{"a.example.com", "b.example.com"}},
		{in: "a.example.com,A.EXAMPLE.COM", want: []string{"a.example.com"}},
		{in: "a.example.com,bad_name", wantErr: `"bad_name" is not a domain name`},
	})
}

func TestParseDSN(t *testing.T) {
	const scheme = "not a postgres:// or postgresql:// URL"
	runParse(t, parseDSN, []parseCase[string]{
		{in: "postgres://hop:pw@db:5432/hopgate?sslmode=disable", want: "postgres://hop:pw@db:5432/hopgate?sslmode=disable"},
		{in: "postgresql://db/hopgate", want: "postgresql://db/hopgate"},
		{in: "POSTGRES://db/hopgate", want: "POSTGRES://db/hopgate"},
		{in: "postgres:///hopgate?host=/var/run/postgresql", want: "postgres:///hopgate?host=/var/run/postgresql"},
		{in: "mysql://hop:pw@db/hopgate", wantErr: scheme},
		{in: "host=db user=hop password=pw", wantErr: scheme},
		{in: "sqlite://data/hopgate.db", wantErr: scheme},
		{in: "postgres://", wantErr: "not a valid postgres:// URL"},
		{in: "postgres://hop:p%zz@db/hopgate", wantErr: "not a valid postgres:// URL"},
	})
	// The value may hold a password: no error repeats it.
	for _, in := range []string{"mysql://hop:s3cr3t@db/x", "postgres://hop:s3cr3t%zz@db/x", "password=s3cr3t"} {
		if _, err := parseDSN(in); err == nil || strings.Contains(err.Error(), "s3cr3t") {
			t.Errorf("parseDSN(%q) error = %v, want an error without the password", in, err)
		}
	}
}

func TestRedactDSN(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"postgres://db/hopgate", "postgres://db/hopgate"},
		{"postgres://hop@db/hopgate", "postgres://hop@db/hopgate"},
		{"postgres://hop:s3cr3t@db:5432/hopgate?sslmode=require", "postgres://hop:xxxxx@db:5432/hopgate?sslmode=require"},
		{"postgres://hop@db/hopgate?password=s3cr3t&sslmode=require", "postgres://hop@db/hopgate?password=xxxxx&sslmode=require"},
	} {
		if got := redactDSN(tc.in); got != tc.want {
			t.Errorf("redactDSN(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestParseEmail(t *testing.T) {
	const bad = "is not an email address"
	runParse(t, parseEmail, []parseCase[string]{
		{in: "admin@example.com", want: "admin@example.com"},
		{in: "ops+acme@sub.example.org", want: "ops+acme@sub.example.org"},
		{in: "admin", wantErr: bad},
		{in: "admin@", wantErr: bad},
		{in: "Admin <admin@example.com>", wantErr: bad},
		{in: "a@b@c", wantErr: bad},
	})
}

func TestParseReadableFile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "roots.pem")
	if err := os.WriteFile(file, []byte("pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	unreadable := filepath.Join(dir, "secret.pem")
	if err := os.WriteFile(unreadable, []byte("pem"), 0o000); err != nil {
		t.Fatal(err)
	}
	cases := []parseCase[string]{
		{in: file, want: file},
		{in: filepath.Join(dir, "missing.pem"), wantErr: "is not a readable file: no such file or directory"},
		{in: dir, wantErr: "is a directory, not a readable file"},
	}
	if os.Geteuid() != 0 { // root reads anything
		cases = append(cases, parseCase[string]{in: unreadable, wantErr: "is not a readable file: permission denied"})
	}
	runParse(t, parseReadableFile, cases)
}

func TestParseDir(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "page.html")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	runParse(t, parseDir, []parseCase[string]{
		{in: dir, want: dir},
		{in: file, wantErr: "is not a directory"},
		{in: filepath.Join(dir, "missing"), wantErr: "is not a directory: no such file or directory"},
	})
}

func TestParseTenantDomain(t *testing.T) {
	for in, want := range map[string]string{
		"App.Example.com.":   "app.example.com",
		"*.Apps.Example.com": "*.apps.example.com",
		"*.example.com":      "*.example.com",
		"*.com":              "",
		"*":                  "",
		"a.*.example.com":    "",
		"*.*.example.com":    "",
		"**.example.com":     "",
		"*example.com":       "",
		"x.example.com:443":  "",
		"*.example.com.":     "*.example.com",
		"*.-bad.example.com": "",
		"*.example.123":      "",
		"localhost":          "localhost",
	} {
		got, err := parseTenantDomain(in)
		if want == "" {
			if err == nil {
				t.Errorf("%q: accepted as %q, want an error", in, got)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("%q: %q, %v; want %q", in, got, err, want)
		}
	}
}

func TestParsePortRange(t *testing.T) {
	for in, want := range map[string]PortRange{"20000-20999": {20000, 20999}, " 22 ": {22, 22}, "1-65535": {1, 65535}, "5 - 6": {5, 6}} {
		got, err := parsePortRange(in)
		if err != nil || got != want {
			t.Errorf("parsePortRange(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"0-10", "10-5", "1-65536", "a-b", "20000-", "-1", "020000-20001", "1-2-3"} {
		if got, err := parsePortRange(in); err == nil {
			t.Errorf("parsePortRange(%q) = %v; want an error", in, got)
		}
	}
	r := PortRange{20000, 20002}
	if !r.Contains(20002) || r.Contains(20003) || (PortRange{}).Contains(0) || r.String() != "20000-20002" {
		t.Errorf("PortRange methods wrong for %v", r)
	}
}
