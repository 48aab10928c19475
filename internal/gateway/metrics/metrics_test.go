package metrics_test

import (
	"bufio"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/hopgate/hopgate/internal/gateway/metrics"
)

// sample is one line of the text exposition format.
type sample struct {
	name   string
	labels map[string]string
	value  float64
}

// exposition is what one scrape of Handler returned.
type exposition struct {
	types   map[string]string // metric family -> its # TYPE
	samples []sample
}

// scrape reads Handler as Prometheus would, in the text format, and parses it. Label values here
// never hold commas, quotes or escapes, so a simple split is enough.
func scrape(t *testing.T, m *metrics.Metrics) exposition {
	t.Helper()
	rr := httptest.NewRecorder()
	m.Handler().ServeHTTP(rr, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rr.Code != http.StatusOK {
		t.Fatalf("scrape: status %d: %s", rr.Code, rr.Body.String())
	}
	e := exposition{types: map[string]string{}}
	sc := bufio.NewScanner(rr.Body)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
			name, typ, _ := strings.Cut(rest, " ")
			e.types[name] = typ
			continue
		}
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		head, val, ok := strings.Cut(line, " ")
		if i := strings.LastIndexByte(line, '}'); i >= 0 {
			head, val, ok = line[:i+1], strings.TrimSpace(line[i+1:]), true
		}
		if !ok {
			t.Fatalf("scrape: unparsable line %q", line)
		}
		s := sample{name: head, labels: map[string]string{}}
		if name, labels, found := strings.Cut(head, "{"); found {
			s.name = name
			for _, kv := range strings.Split(strings.TrimSuffix(labels, "}"), ",") {
				k, v, _ := strings.Cut(kv, "=")
				s.labels[k] = strings.Trim(v, `"`)
			}
		}
		var err error
		if s.value, err = strconv.ParseFloat(val, 64); err != nil {
			t.Fatalf("scrape: value of %q: %v", line, err)
		}
		e.samples = append(e.samples, s)
	}
	return e
}

// find returns the samples of one series name.
func (e exposition) find(name string) []sample {
	var out []sample
	for _, s := range e.samples {
		if s.name == name {
			out = append(out, s)
		}
	}
	return out
}

// labelNames returns the sorted label names of s.
func labelNames(s sample) []string {
	var names []string
	for k := range s.labels {
		names = append(names, k)
	}
	slices.Sort(names)
	return names
}

// TestProductSeries checks the series PRODUCT.md lists (the names dashboards rely on), and the others
// deploy/ uses: each is exposed with its type and exactly its labels. The vectors show no series before their first value,
// so each is given one here, as the gateway would on its first request, tunnel or certificate.
func TestProductSeries(t *testing.T) {
	m := metrics.New()
	fresh := scrape(t, m)

	m.ObserveRequest(200, http.MethodGet, 10*time.Millisecond, 0, 0)
	m.TunnelsActive.Set(2)
	m.TunnelConnects.WithLabelValues("ok").Inc()
	m.TunnelBytes.WithLabelValues("in").Add(512)
	m.ProxyErrors.WithLabelValues("no_agent").Inc()
	m.CertExpiry.WithLabelValues("app.example.com").Set(1.9e9)
	m.CertOrders.WithLabelValues("ok").Inc()
	m.ConnectionsDropped.WithLabelValues("over_limit").Inc()
	e := scrape(t, m)

	tests := []struct {
		name   string
		typ    string
		labels []string // sorted
		// unlabelled series must be there from the first scrape, before anything happened
		fromStart bool
		// samples is how many series the family has by now (1 unless set): both directions of
		// the byte counter exist from the start.
		samples int
	}{
		{name: "hopgate_http_requests_total", typ: "counter", labels: []string{"code", "method"}},
		{name: "hopgate_http_request_duration_seconds", typ: "histogram", fromStart: true},
		{name: "hopgate_tunnels_active", typ: "gauge", fromStart: true},
		{name: "hopgate_tunnel_connects_total", typ: "counter", labels: []string{"result"}},
		{name: "hopgate_tunnel_bytes_total", typ: "counter", labels: []string{"direction"}, fromStart: true, samples: 2},
		{name: "hopgate_proxy_errors_total", typ: "counter", labels: []string{"reason"}},
		{name: "hopgate_certificate_expiry_timestamp_seconds", typ: "gauge", labels: []string{"name"}},
		// Not in PRODUCT.md's list, but the dashboards and alert rules in deploy/ use them.
		{name: "hopgate_certificate_orders_total", typ: "counter", labels: []string{"result"}},
		{name: "hopgate_connections_open", typ: "gauge", fromStart: true},
		{name: "hopgate_connections_dropped_total", typ: "counter", labels: []string{"reason"}},
		{name: "hopgate_overloaded", typ: "gauge", fromStart: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := e.types[tc.name]; got != tc.typ {
				t.Fatalf("TYPE = %q, want %q", got, tc.typ)
			}
			if tc.fromStart && fresh.types[tc.name] != tc.typ {
				t.Errorf("not exposed before the first event")
			}
			series := tc.name
			if tc.typ == "histogram" {
				series += "_count" // the family's own name has no sample of that name
			}
			samples := e.find(series)
			if want := max(1, tc.samples); len(samples) != want {
				t.Fatalf("%d samples of %s, want %d: %+v", len(samples), series, want, samples)
			}
			if got := labelNames(samples[0]); !slices.Equal(got, tc.labels) {
				t.Errorf("labels = %q, want %q", got, tc.labels)
			}
		})
	}
}

// TestMethod checks that the method label is bounded: a visitor choosing methods must not be able to
// make new series.
func TestMethod(t *testing.T) {
	tests := []struct{ in, want string }{
		{http.MethodGet, "GET"},
		{http.MethodHead, "HEAD"},
		{http.MethodPost, "POST"},
		{http.MethodPut, "PUT"},
		{http.MethodPatch, "PATCH"},
		{http.MethodDelete, "DELETE"},
		{http.MethodConnect, "CONNECT"},
		{http.MethodOptions, "OPTIONS"},
		{http.MethodTrace, "TRACE"},
		{"get", "OTHER"}, // methods are case-sensitive (RFC 9110 §9.1); "get" is not GET
		{"PROPFIND", "OTHER"},
		{"PURGE", "OTHER"},
		{"", "OTHER"},
		{"GET ", "OTHER"},
		{strings.Repeat("X", 1000), "OTHER"},
	}
	for _, tc := range tests {
		name := tc.in
		if len(name) > 20 {
			name = name[:20] + "…"
		}
		t.Run(name, func(t *testing.T) {
			if got := metrics.Method(tc.in); got != tc.want {
				t.Errorf("Method(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

// TestObserveRequest checks that one call counts the request by code and bounded method and puts its
// duration in the histogram.
func TestObserveRequest(t *testing.T) {
	m := metrics.New()
	observed := []struct {
		code    int
		method  string
		elapsed time.Duration
	}{
		{200, http.MethodGet, 2 * time.Millisecond},
		{200, http.MethodGet, 30 * time.Millisecond},
		{502, "PURGE", 5 * time.Second},
		{404, "BREW", time.Millisecond / 2},
	}
	for _, o := range observed {
		m.ObserveRequest(o.code, o.method, o.elapsed, 100, 1000)
	}
	for dir, want := range map[string]float64{"in": 400, "out": 4000} {
		if got := testutil.ToFloat64(m.TunnelBytes.WithLabelValues(dir)); got != want {
			t.Errorf("hopgate_tunnel_bytes_total{direction=%q} = %v, want %v", dir, got, want)
		}
	}

	counts := []struct {
		code, method string
		want         float64
	}{
		{"200", "GET", 2},
		{"502", "OTHER", 1},
		{"404", "OTHER", 1},
	}
	for _, c := range counts {
		if got := testutil.ToFloat64(m.Requests.WithLabelValues(c.code, c.method)); got != c.want {
			t.Errorf("hopgate_http_requests_total{code=%q,method=%q} = %v, want %v", c.code, c.method, got, c.want)
		}
	}
	// Only those three: the odd methods made no series of their own.
	if n := testutil.CollectAndCount(m.Requests); n != len(counts) {
		t.Errorf("%d request series, want %d", n, len(counts))
	}

	e := scrape(t, m)
	one := func(name string) float64 {
		t.Helper()
		s := e.find(name)
		if len(s) != 1 {
			t.Fatalf("%d samples of %s, want 1", len(s), name)
		}
		return s[0].value
	}
	if got := one("hopgate_http_request_duration_seconds_count"); got != 4 {
		t.Errorf("duration count = %v, want 4", got)
	}
	if got, want := one("hopgate_http_request_duration_seconds_sum"), 5.0325; math.Abs(got-want) > 1e-9 {
		t.Errorf("duration sum = %v s, want %v s", got, want)
	}
	// Cumulative buckets: each observation lands in the first bucket at or above it.
	buckets := map[float64]float64{}
	for _, s := range e.find("hopgate_http_request_duration_seconds_bucket") {
		le, err := strconv.ParseFloat(s.labels["le"], 64)
		if err != nil {
			t.Fatalf("bucket le=%q: %v", s.labels["le"], err)
		}
		buckets[le] = s.value
	}
	wantBuckets := []struct{ le, count float64 }{
		{0.001, 1},     // 0.5 ms
		{0.0025, 2},    // + 2 ms
		{0.0390625, 3}, // + 30 ms
		{3.814697265625, 3},
		{9.5367431640625, 4}, // + 5 s
		{math.Inf(1), 4},
	}
	for _, b := range wantBuckets {
		// The bounds are computed (0.001 × 2.5ⁿ), so they are matched up to rounding.
		got, ok := 0.0, false
		for le, v := range buckets {
			if le == b.le || !math.IsInf(b.le, 0) && math.Abs(le-b.le) <= 1e-9*b.le {
				got, ok = v, true
			}
		}
		if !ok {
			t.Errorf("no bucket le=%v (buckets %v)", b.le, buckets)
			continue
		}
		if got != b.count {
			t.Errorf("bucket le=%v = %v, want %v", b.le, got, b.count)
		}
	}
}

// TestAccessDenied checks hopgate_access_denied_total: its four reasons are there, at 0, from the first
// scrape, and a denial counts under its own reason only.
func TestAccessDenied(t *testing.T) {
	m := metrics.New()
	fresh := scrape(t, m)
	if got := fresh.types["hopgate_access_denied_total"]; got != "counter" {
		t.Fatalf("TYPE = %q, want counter", got)
	}
	var reasons []string
	for _, s := range fresh.find("hopgate_access_denied_total") {
		if got := labelNames(s); !slices.Equal(got, []string{"reason"}) {
			t.Errorf("labels = %q, want [reason]", got)
		}
		if s.value != 0 {
			t.Errorf("reason %q = %v before any denial", s.labels["reason"], s.value)
		}
		reasons = append(reasons, s.labels["reason"])
	}
	slices.Sort(reasons)
	if want := []string{"auth", "ip", "rate", "sso"}; !slices.Equal(reasons, want) {
		t.Fatalf("reasons = %q, want %q", reasons, want)
	}
	if !slices.Equal(metrics.AccessDeniedReasons, []string{"ip", "auth", "rate", "sso"}) {
		t.Errorf("AccessDeniedReasons = %q", metrics.AccessDeniedReasons)
	}

	m.AccessDenied.WithLabelValues("rate").Inc()
	m.AccessDenied.WithLabelValues("rate").Inc()
	m.AccessDenied.WithLabelValues("ip").Inc()
	for reason, want := range map[string]float64{"ip": 1, "auth": 0, "rate": 2, "sso": 0} {
		if got := testutil.ToFloat64(m.AccessDenied.WithLabelValues(reason)); got != want {
			t.Errorf("hopgate_access_denied_total{reason=%q} = %v, want %v", reason, got, want)
		}
	}
	if n := testutil.CollectAndCount(m.AccessDenied); n != 4 {
		t.Errorf("%d series, want 4", n)
	}
}

// TestTCPSeries checks the raw-connection series: their types and labels, every mode and result
// there at 0 from the first scrape, and nothing that could carry a domain or an address.
func TestTCPSeries(t *testing.T) {
	m := metrics.New()
	e := scrape(t, m)
	tests := []struct {
		name   string
		typ    string
		series string
		labels []string // sorted
		count  int
	}{
		{name: "hopgate_tcp_connections_open", typ: "gauge", series: "hopgate_tcp_connections_open", labels: []string{"mode"}, count: 2},
		{name: "hopgate_tcp_connections_total", typ: "counter", series: "hopgate_tcp_connections_total", labels: []string{"mode", "result"}, count: 2 * 9},
		{name: "hopgate_tcp_bytes_total", typ: "counter", series: "hopgate_tcp_bytes_total", labels: []string{"direction", "mode"}, count: 4},
		{name: "hopgate_tcp_connection_duration_seconds", typ: "histogram", series: "hopgate_tcp_connection_duration_seconds_count", labels: []string{"mode"}, count: 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := e.types[tc.name]; got != tc.typ {
				t.Fatalf("TYPE = %q, want %q", got, tc.typ)
			}
			samples := e.find(tc.series)
			if len(samples) != tc.count {
				t.Fatalf("%d samples, want %d", len(samples), tc.count)
			}
			for _, s := range samples {
				if got := labelNames(s); !slices.Equal(got, tc.labels) {
					t.Errorf("labels = %q, want %q", got, tc.labels)
				}
				if !slices.Contains(metrics.TCPModes, s.labels["mode"]) {
					t.Errorf("mode %q", s.labels["mode"])
				}
				if r, ok := s.labels["result"]; ok && !slices.Contains(metrics.TCPResults, r) {
					t.Errorf("result %q", r)
				}
				if s.value != 0 {
					t.Errorf("%v = %v before any connection", s.labels, s.value)
				}
			}
		})
	}
	// Connections of hours still fall in a bucket of their own.
	m.TCPDuration.WithLabelValues("tcp").Observe((3 * time.Hour).Seconds())
	var le []float64
	for _, s := range scrape(t, m).find("hopgate_tcp_connection_duration_seconds_bucket") {
		if s.labels["mode"] == "tcp" && s.value == 1 && s.labels["le"] != "+Inf" {
			v, _ := strconv.ParseFloat(s.labels["le"], 64)
			le = append(le, v)
		}
	}
	if len(le) == 0 {
		t.Error("a 3-hour connection is only in the +Inf bucket")
	}
}

// TestForGateway: every series, the runtime's included, carries the constant gateway_id label, and
// the vectors keep their own labels beside it.
func TestForGateway(t *testing.T) {
	m := metrics.ForGateway("gw-1")
	m.ObserveRequest(200, http.MethodGet, time.Millisecond, 0, 0)
	m.TunnelsActive.Set(2)
	e := scrape(t, m)
	if len(e.samples) == 0 {
		t.Fatal("no samples")
	}
	for _, s := range e.samples {
		if s.labels["gateway_id"] != "gw-1" {
			t.Fatalf("%s%v has no gateway_id=gw-1", s.name, s.labels)
		}
	}
	req := e.find("hopgate_http_requests_total")
	if len(req) != 1 || !slices.Equal(labelNames(req[0]), []string{"code", "gateway_id", "method"}) {
		t.Fatalf("hopgate_http_requests_total = %+v, want labels code, gateway_id, method", req)
	}
	if got := testutil.ToFloat64(m.TunnelsActive); got != 2 {
		t.Fatalf("tunnels active %v, want 2", got)
	}
}

// BenchmarkObserveRequest: a request's counters through the cache, against the label lookups it
// replaced (three WithLabelValues per request).
func BenchmarkObserveRequest(b *testing.B) {
	m := metrics.New()
	b.Run("cached", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			m.ObserveRequest(200, http.MethodGet, time.Millisecond, 100, 1000)
		}
	})
	b.Run("label lookups", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			m.Requests.WithLabelValues(strconv.Itoa(200), metrics.Method(http.MethodGet)).Inc()
			m.Duration.Observe(time.Millisecond.Seconds())
			m.TunnelBytes.WithLabelValues("in").Add(100)
			m.TunnelBytes.WithLabelValues("out").Add(1000)
		}
	})
}
