package metrics

import "strings"

// Totals are the process's running sums that the console's overview charts: proxied requests,
// those answered 5xx, and body bytes through tunnels (HTTP) and raw connections.
type Totals struct {
	Requests, Errors  float64
	BytesIn, BytesOut float64
}

// Totals reads the counters as a scrape would. It gathers the whole registry (a few hundred
// series at most), which is cheap at the console's pace of one read every few seconds.
func (m *Metrics) Totals() Totals {
	var t Totals
	families, err := m.reg.Gather()
	if err != nil {
		return t
	}
	for _, f := range families {
		for _, s := range f.GetMetric() {
			v := s.GetCounter().GetValue()
			label := func(name string) string {
				for _, l := range s.GetLabel() {
					if l.GetName() == name {
						return l.GetValue()
					}
				}
				return ""
			}
			switch f.GetName() {
			case "hopgate_http_requests_total":
				t.Requests += v
				if strings.HasPrefix(label("code"), "5") {
					t.Errors += v
				}
			case "hopgate_tunnel_bytes_total", "hopgate_tcp_bytes_total":
				if label("direction") == "in" {
					t.BytesIn += v
				} else {
					t.BytesOut += v
				}
			}
		}
	}
	return t
}
