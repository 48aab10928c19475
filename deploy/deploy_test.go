// Package deploy_test checks the deployment files in this folder against the code: the Grafana
// dashboard and the Prometheus rules may only use series that hopgate-server exports, the compose
// file must name its services, and the images must stamp the version variable that exists.
package deploy_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"

	"github.com/hopgate/hopgate/internal/gateway/metrics"
	"github.com/hopgate/hopgate/internal/version"
)

// metricName finds the series an expression selects: the families the server exports (hopgate_*,
// and go_*/process_* from the standard collectors) and `up`, which Prometheus adds to every target.
var metricName = regexp.MustCompile(`\b(?:(?:hopgate|go|process)_[A-Za-z0-9_]+|up)\b`)

// quoted matches PromQL string literals (label values, regexes), which name no series.
var quoted = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'`)

// synthetic series come from Prometheus itself, not from the scraped process.
var synthetic = map[string]bool{"up": true}

// metricNames returns the series names used in a PromQL expression or a Grafana label_values() query.
func metricNames(expr string) []string {
	names := metricName.FindAllString(quoted.ReplaceAllString(expr, `""`), -1)
	slices.Sort(names)
	return slices.Compact(names)
}

// unknownMetrics lists, per expression, the names that are neither exported nor synthetic.
func unknownMetrics(exprs []string, exported map[string]bool) []string {
	var bad []string
	for _, e := range exprs {
		for _, n := range metricNames(e) {
			if !exported[n] && !synthetic[n] {
				bad = append(bad, n+" in "+e)
			}
		}
	}
	return bad
}

// exportedSeries scrapes a fresh metrics.Metrics over HTTP, as Prometheus does, after giving every
// labelled vector one child so that it appears; the result holds sample names, so a histogram shows
// as its _bucket, _sum and _count series.
func exportedSeries(t *testing.T) map[string]bool {
	t.Helper()
	m := metrics.New()
	touchVectors(t, m)

	srv := httptest.NewServer(m.Handler())
	t.Cleanup(srv.Close)
	req, err := http.NewRequest(http.MethodGet, srv.URL+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "text/plain; version=0.0.4")
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %s: %s", resp.Status, body)
	}

	names := map[string]bool{}
	for line := range strings.Lines(string(body)) {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if i := strings.IndexAny(line, "{ "); i > 0 {
			names[line[:i]] = true
		}
	}
	if len(names) == 0 {
		t.Fatalf("scrape returned no samples:\n%s", body)
	}
	return names
}

// touchVectors creates one child in every labelled vector of m, whatever its labels are: it tries
// label value lists of growing length until the vector accepts one. Reflection keeps this right when
// a vector is added to metrics.Metrics or its labels change.
func touchVectors(t *testing.T, m *metrics.Metrics) {
	t.Helper()
	v := reflect.ValueOf(m).Elem()
	for i := range v.NumField() {
		f := v.Field(i)
		if !v.Type().Field(i).IsExported() || f.Kind() != reflect.Pointer || f.IsNil() {
			continue
		}
		var try func(...string) error
		switch vec := f.Interface().(type) {
		case *prometheus.CounterVec:
			try = func(lv ...string) error { _, err := vec.GetMetricWithLabelValues(lv...); return err }
		case *prometheus.GaugeVec:
			try = func(lv ...string) error { _, err := vec.GetMetricWithLabelValues(lv...); return err }
		case *prometheus.HistogramVec:
			try = func(lv ...string) error { _, err := vec.GetMetricWithLabelValues(lv...); return err }
		case *prometheus.SummaryVec:
			try = func(lv ...string) error { _, err := vec.GetMetricWithLabelValues(lv...); return err }
		default:
			continue
		}
		ok := false
		for n := 0; n <= 10 && !ok; n++ {
			ok = try(slices.Repeat([]string{"x"}, n)...) == nil
		}
		if !ok {
			t.Fatalf("metrics.Metrics.%s: no label value list of up to 10 values fits", v.Type().Field(i).Name)
		}
	}
}

// dashboardExprs returns every query of the dashboard: panel targets (rows included) and template
// variables.
func dashboardExprs(t *testing.T, path string) []string {
	t.Helper()
	type target struct {
		Expr string `json:"expr"`
	}
	type panel struct {
		Title   string   `json:"title"`
		Type    string   `json:"type"`
		Targets []target `json:"targets"`
		Panels  []panel  `json:"panels"`
	}
	var d struct {
		UID        string  `json:"uid"`
		Title      string  `json:"title"`
		Panels     []panel `json:"panels"`
		Templating struct {
			List []struct {
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if d.UID == "" || d.Title == "" {
		t.Errorf("%s: uid and title are required for provisioning", path)
	}
	var exprs []string
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			if p.Type != "row" && len(p.Targets) == 0 {
				t.Errorf("%s: panel %q has no query", path, p.Title)
			}
			for _, tg := range p.Targets {
				if strings.TrimSpace(tg.Expr) == "" {
					t.Errorf("%s: panel %q has an empty expression", path, p.Title)
				}
				exprs = append(exprs, tg.Expr)
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		// Grafana stores a variable's query as a string or as {"query": "..."}.
		var s string
		var obj struct {
			Query string `json:"query"`
		}
		switch {
		case json.Unmarshal(v.Query, &s) == nil:
		case json.Unmarshal(v.Query, &obj) == nil:
			s = obj.Query
		default:
			t.Fatalf("%s: template query %s", path, v.Query)
		}
		exprs = append(exprs, s)
	}
	return exprs
}

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Record      string            `yaml:"record"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(strings.NewReader(string(raw)))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func TestExtractorFindsUnknownMetrics(t *testing.T) {
	exported := map[string]bool{"hopgate_tunnels_active": true, "go_goroutines": true}
	tests := []struct {
		name string
		expr string
		want []string // unknown names, in order
	}{
		{"all known", `sum(hopgate_tunnels_active) + go_goroutines`, nil},
		{"unknown family", `rate(hopgate_nonexistent_total{job="x"}[5m])`, []string{"hopgate_nonexistent_total"}},
		{"renamed process metric", `process_resident_memory`, []string{"process_resident_memory"}},
		{"up is synthetic", `up{job="hopgate-server"} == 0`, nil},
		{"names in strings are not series", `hopgate_tunnels_active{job="hopgate_fake_x",instance=~"go_.*|up"}`, nil},
		{"label names are not series", `sum by (le, code) (rate(hopgate_http_requests_total[5m]))`, []string{"hopgate_http_requests_total"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, b := range unknownMetrics([]string{tc.expr}, exported) {
				got = append(got, strings.SplitN(b, " in ", 2)[0])
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("unknownMetrics(%q) = %q, want %q", tc.expr, got, tc.want)
			}
		})
	}
}

func TestExportedSeriesIncludeTheContract(t *testing.T) {
	exported := exportedSeries(t)
	// PRODUCT.md "Metrics": the names the dashboards rely on.
	for _, n := range []string{
		"hopgate_http_requests_total",
		"hopgate_http_request_duration_seconds_bucket",
		"hopgate_http_request_duration_seconds_sum",
		"hopgate_http_request_duration_seconds_count",
		"hopgate_tunnels_active",
		"hopgate_tunnel_connects_total",
		"hopgate_tunnel_bytes_total",
		"hopgate_proxy_errors_total",
		"hopgate_certificate_expiry_timestamp_seconds",
		"go_goroutines",
		"process_resident_memory_bytes",
	} {
		if !exported[n] {
			t.Errorf("the server does not export %s", n)
		}
	}
}

func TestDashboardUsesOnlyExportedMetrics(t *testing.T) {
	exported := exportedSeries(t)
	exprs := dashboardExprs(t, "grafana/hopgate-dashboard.json")
	if len(exprs) == 0 {
		t.Fatal("the dashboard has no queries")
	}
	for _, bad := range unknownMetrics(exprs, exported) {
		t.Errorf("dashboard uses a series the server does not export: %s", bad)
	}
	// Every family the server exports under its own prefix has a panel.
	used := map[string]bool{}
	for _, e := range exprs {
		for _, n := range metricNames(e) {
			used[n] = true
		}
	}
	for n := range exported {
		if strings.HasPrefix(n, "hopgate_") && !strings.HasSuffix(n, "_sum") && !strings.HasSuffix(n, "_count") && !used[n] {
			t.Errorf("the dashboard shows nothing of %s", n)
		}
	}
}

func TestAlertRulesUseOnlyExportedMetrics(t *testing.T) {
	exported := exportedSeries(t)
	var rf ruleFile
	readYAML(t, "prometheus/hopgate-alerts.yaml", &rf)

	alerts := map[string]string{}
	var exprs []string
	for _, g := range rf.Groups {
		if g.Name == "" {
			t.Error("a rule group has no name")
		}
		for _, r := range g.Rules {
			if r.Alert == "" && r.Record == "" {
				t.Errorf("group %s: a rule has neither alert nor record", g.Name)
			}
			if strings.TrimSpace(r.Expr) == "" {
				t.Errorf("rule %s%s: empty expr", r.Alert, r.Record)
			}
			if r.Alert != "" && (r.Labels["severity"] == "" || r.Annotations["summary"] == "") {
				t.Errorf("alert %s: needs labels.severity and annotations.summary", r.Alert)
			}
			alerts[r.Alert] = r.Expr
			exprs = append(exprs, r.Expr)
		}
	}
	for _, bad := range unknownMetrics(exprs, exported) {
		t.Errorf("alert rules use a series the server does not export: %s", bad)
	}
	// The alerts issue 7 asks for, by the series each must watch.
	for alert, series := range map[string]string{
		"HopGateDown":                    "up",
		"HopGateNoTunnelUp":              "hopgate_tunnels_active",
		"HopGateHigh5xxRatio":            "hopgate_http_requests_total",
		"HopGateCertificateExpiringSoon": "hopgate_certificate_expiry_timestamp_seconds",
		"HopGateTunnelReconnectStorm":    "hopgate_tunnel_connects_total",
	} {
		expr, ok := alerts[alert]
		if !ok {
			t.Errorf("alert %s is missing", alert)
			continue
		}
		if !slices.Contains(metricNames(expr), series) {
			t.Errorf("alert %s does not use %s: %s", alert, series, expr)
		}
	}
	if e := alerts["HopGateCertificateExpiringSoon"]; !strings.Contains(e, "14 * 86400") {
		t.Errorf("HopGateCertificateExpiringSoon must fire 14 days ahead: %s", e)
	}
}

func TestComposeFile(t *testing.T) {
	type service struct {
		Image       string         `yaml:"image"`
		Restart     string         `yaml:"restart"`
		Healthcheck map[string]any `yaml:"healthcheck"`
		DependsOn   map[string]struct {
			Condition string `yaml:"condition"`
		} `yaml:"depends_on"`
		Environment map[string]string `yaml:"environment"`
	}
	var c struct {
		Services map[string]service `yaml:"services"`
		Volumes  map[string]any     `yaml:"volumes"`
	}
	raw, err := os.ReadFile("compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, &c); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	for _, name := range []string{"postgres", "hopgate-server", "whoami", "hopgate-client"} {
		s, ok := c.Services[name]
		if !ok {
			t.Errorf("compose.yaml: no service %s", name)
			continue
		}
		if s.Restart == "" {
			t.Errorf("compose.yaml: service %s has no restart policy", name)
		}
	}
	for _, name := range []string{"postgres", "hopgate-server"} {
		if c.Services[name].Healthcheck == nil {
			t.Errorf("compose.yaml: service %s has no healthcheck", name)
		}
	}
	if got := c.Services["hopgate-client"].DependsOn["hopgate-server"].Condition; got != "service_healthy" {
		t.Errorf("compose.yaml: hopgate-client waits for hopgate-server with %q, want service_healthy", got)
	}
	srv := c.Services["hopgate-server"].Environment
	if !strings.HasPrefix(srv["HOP_DB_DSN"], "postgres://") || !strings.Contains(srv["HOP_DB_DSN"], "@postgres:5432/") {
		t.Errorf("compose.yaml: hopgate-server HOP_DB_DSN = %q, want the postgres service", srv["HOP_DB_DSN"])
	}
	if srv["HOP_SERVER_DEBUG"] != "false" {
		t.Errorf("compose.yaml: hopgate-server must run with HOP_SERVER_DEBUG=false, has %q", srv["HOP_SERVER_DEBUG"])
	}
	for _, v := range []string{"postgres-data", "hopgate-data"} {
		if _, ok := c.Volumes[v]; !ok {
			t.Errorf("compose.yaml: named volume %s is not declared", v)
		}
	}
}

func TestDockerfilesStampTheVersion(t *testing.T) {
	// -X silently does nothing when the variable does not exist: name it here so that renaming
	// version.Version breaks this test instead of the images' --version. The images take the
	// binaries `make images` builds with the Makefile's LDFLAGS.
	_ = version.Version
	for file, want := range map[string][]string{
		"../Makefile": {"-X github.com/hopgate/hopgate/internal/version.Version=$(VERSION)", "export CGO_ENABLED ?= 0",
			"-trimpath -ldflags '$(LDFLAGS)' -o $(IMAGE_CONTEXT)/linux-$(GOARCH)/", "--build-arg VERSION=$(VERSION)"},
		"../Dockerfile.server": {"FROM scratch", "ARG VERSION", `org.opencontainers.image.version="${VERSION}"`, `VOLUME ["/data"]`,
			"EXPOSE 80 443 9180", `CMD ["/usr/local/bin/hopgate-server", "health"]`, "USER 65532:65532", "linux-${TARGETARCH}/hopgate-server"},
		"../Dockerfile.client": {"FROM scratch", "ARG VERSION", `org.opencontainers.image.version="${VERSION}"`, "HEALTHCHECK NONE",
			"USER 65532:65532", "linux-${TARGETARCH}/hopgate-client"},
		"../Dockerfile.demo-target": {"FROM scratch", "USER 65532:65532", "linux-${TARGETARCH}/hopgate-demo-target"},
	} {
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range want {
			if !strings.Contains(string(raw), w) {
				t.Errorf("%s: missing %q", file, w)
			}
		}
	}
}

func TestSystemdUnits(t *testing.T) {
	for file, want := range map[string][]string{
		"systemd/hopgate-server.service": {
			"EnvironmentFile=/etc/hopgate/server.env", "ProtectSystem=strict", "ReadWritePaths=/var/lib/hopgate",
			"AmbientCapabilities=CAP_NET_BIND_SERVICE", "NoNewPrivileges=yes", "KillSignal=SIGTERM",
			"TimeoutStopSec=45", "Restart=on-failure",
		},
		"systemd/hopgate-client.service": {
			"EnvironmentFile=/etc/hopgate/client.env", "ProtectSystem=strict", "NoNewPrivileges=yes",
			"KillSignal=SIGTERM", "TimeoutStopSec=45", "Restart=on-failure", "RestartPreventExitStatus=2 3",
		},
	} {
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(string(raw), "\n")
		for _, w := range want {
			if !slices.Contains(lines, w) {
				t.Errorf("%s: no line %q", file, w)
			}
		}
	}
}

// TestComposeLocalFile checks what compose.local.yaml promises without an engine (make container-test
// runs it): development mode, ports on loopback only, a key handed over in a file, and no health
// check that needs a shell, which the scratch images do not have.
func TestComposeLocalFile(t *testing.T) {
	type service struct {
		Image       string            `yaml:"image"`
		Command     []string          `yaml:"command"`
		Ports       []string          `yaml:"ports"`
		Environment map[string]string `yaml:"environment"`
		Healthcheck map[string]any    `yaml:"healthcheck"`
		DependsOn   map[string]struct {
			Condition string `yaml:"condition"`
		} `yaml:"depends_on"`
	}
	var c struct {
		Services map[string]service `yaml:"services"`
	}
	raw, err := os.ReadFile("compose.local.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, &c); err != nil {
		t.Fatalf("compose.local.yaml: %v", err)
	}
	srv := c.Services["hopgate-server"]
	if srv.Environment["HOP_SERVER_DEBUG"] != "true" {
		t.Errorf("hopgate-server: HOP_SERVER_DEBUG = %q, want true (no DNS, no public CA)", srv.Environment["HOP_SERVER_DEBUG"])
	}
	if len(srv.Ports) == 0 {
		t.Error("hopgate-server publishes no port")
	}
	for _, p := range srv.Ports {
		if !strings.HasPrefix(p, "127.0.0.1:") {
			t.Errorf("hopgate-server publishes %q: want it on 127.0.0.1 only", p)
		}
	}
	reg := strings.Join(c.Services["register"].Command, " ")
	for _, w := range []string{"domains add app.localhost", "--key-file /data/app.localhost.key", "--wait"} {
		if !strings.Contains(reg, w) {
			t.Errorf("register: command %q lacks %q", reg, w)
		}
	}
	cli := c.Services["hopgate-client"]
	if cli.Environment["HOP_CLIENT_API_KEY_FILE"] != "/gateway/app.localhost.key" || cli.Environment["HOP_CLIENT_DOMAIN"] != "app.localhost" {
		t.Errorf("hopgate-client: env %v, want the key file register writes", cli.Environment)
	}
	if got := cli.DependsOn["register"].Condition; got != "service_completed_successfully" {
		t.Errorf("hopgate-client waits for register with %q", got)
	}
	for _, file := range []string{"compose.yaml", "compose.local.yaml"} {
		var f struct {
			Services map[string]struct {
				Healthcheck struct {
					Test any `yaml:"test"`
				} `yaml:"healthcheck"`
			} `yaml:"services"`
		}
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal(raw, &f); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		// No test of its own: the image's `hopgate-server health` (podman-compose 1.0 would turn a
		// CMD list into CMD-SHELL, and the image has no shell).
		if test := f.Services["hopgate-server"].Healthcheck.Test; test != nil {
			t.Errorf("%s: hopgate-server health check test %v; leave it to the image", file, test)
		}
	}
}

// TestComposeClusterFile checks what compose.cluster.yaml promises: two gateways on one PostgreSQL
// with their own ids and one name, and one agent that lists both gateways.
func TestComposeClusterFile(t *testing.T) {
	type service struct {
		Ports       []string          `yaml:"ports"`
		Environment map[string]string `yaml:"environment"`
		Healthcheck struct {
			Test any `yaml:"test"`
		} `yaml:"healthcheck"`
	}
	var c struct {
		Services map[string]service `yaml:"services"`
	}
	raw, err := os.ReadFile("compose.cluster.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, &c); err != nil {
		t.Fatalf("compose.cluster.yaml: %v", err)
	}
	gw1, gw2 := c.Services["gateway-1"], c.Services["gateway-2"]
	for name, gw := range map[string]service{"gateway-1": gw1, "gateway-2": gw2} {
		if !strings.HasPrefix(gw.Environment["HOP_DB_DSN"], "postgres://") || !strings.Contains(gw.Environment["HOP_DB_DSN"], "@postgres:5432/") {
			t.Errorf("%s: HOP_DB_DSN = %q, want the postgres service (clustering needs PostgreSQL)", name, gw.Environment["HOP_DB_DSN"])
		}
		if gw.Environment["HOP_SERVER_ID"] != name {
			t.Errorf("%s: HOP_SERVER_ID = %q, want %q", name, gw.Environment["HOP_SERVER_ID"], name)
		}
		if gw.Healthcheck.Test != nil {
			t.Errorf("%s: health check test %v; leave it to the image", name, gw.Healthcheck.Test)
		}
		for _, p := range gw.Ports {
			if !strings.HasPrefix(p, "127.0.0.1:") {
				t.Errorf("%s publishes %q: want it on 127.0.0.1 only", name, p)
			}
		}
	}
	if gw1.Environment["HOP_DB_DSN"] != gw2.Environment["HOP_DB_DSN"] || gw1.Environment["HOP_SERVER_DOMAIN"] != gw2.Environment["HOP_SERVER_DOMAIN"] {
		t.Error("the two gateways differ in HOP_DB_DSN or HOP_SERVER_DOMAIN; a cluster shares both")
	}
	cli := c.Services["hopgate-client"].Environment
	if cli["HOP_CLIENT_SERVER_ADDR"] != "gateway-1:8443,gateway-2:8443" {
		t.Errorf("hopgate-client: HOP_CLIENT_SERVER_ADDR = %q, want both gateways", cli["HOP_CLIENT_SERVER_ADDR"])
	}
	if cli["HOP_CLIENT_SERVER_NAME"] != gw1.Environment["HOP_SERVER_DOMAIN"] {
		t.Errorf("hopgate-client: HOP_CLIENT_SERVER_NAME = %q, want the gateways' name %q", cli["HOP_CLIENT_SERVER_NAME"], gw1.Environment["HOP_SERVER_DOMAIN"])
	}
}
