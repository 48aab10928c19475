package metrics

import (
	"testing"
	"time"
)

func TestTotals(t *testing.T) {
	m := ForGateway("gw1")
	m.ObserveRequest(200, "GET", time.Millisecond, 0, 0)
	m.ObserveRequest(502, "GET", time.Millisecond, 0, 0)
	m.ObserveRequest(503, "POST", time.Millisecond, 0, 0)
	m.ObserveRequest(404, "GET", time.Millisecond, 0, 0)
	m.TunnelBytes.WithLabelValues("in").Add(10)
	m.TunnelBytes.WithLabelValues("out").Add(100)
	m.TCPBytes.WithLabelValues("tcp", "in").Add(1)
	m.TCPBytes.WithLabelValues("tcp", "out").Add(2)
	got := m.Totals()
	if want := (Totals{Requests: 4, Errors: 2, BytesIn: 11, BytesOut: 102}); got != want {
		t.Fatalf("Totals = %+v, want %+v", got, want)
	}
}
