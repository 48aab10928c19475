package console

import (
	"context"
	"fmt"
	"html/template"
	"strings"
	"sync"
	"time"

	"github.com/hopgate/hopgate/internal/gateway/metrics"
	"github.com/hopgate/hopgate/internal/pause"
)

// SampleEvery and samples give the overview its last hour at half-minute steps.
const (
	SampleEvery = 30 * time.Second
	samples     = 120
)

// Sampler keeps the last hour of the process's counters, one reading every SampleEvery, for the
// overview's charts. Its memory is fixed: samples readings of four numbers.
type Sampler struct {
	read  func() metrics.Totals
	every time.Duration
	mu    sync.Mutex
	ring  []reading // oldest first, at most samples
}

type reading struct {
	at time.Time
	metrics.Totals
}

// NewSampler reads with read every SampleEvery once Run runs.
func NewSampler(read func() metrics.Totals) *Sampler {
	return &Sampler{read: read, every: SampleEvery}
}

// Run samples until ctx ends.
func (s *Sampler) Run(ctx context.Context) {
	for {
		s.sample(time.Now())
		if pause.For(ctx, s.every) != nil {
			return
		}
	}
}

func (s *Sampler) sample(now time.Time) {
	t := s.read()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ring = append(s.ring, reading{now, t})
	if len(s.ring) > samples {
		s.ring = append(s.ring[:0], s.ring[len(s.ring)-samples:]...)
	}
}

// series are the overview's charts: per-second rates between readings, the newest being the
// counters now against the last reading.
type series struct {
	RPS, ErrorPct, BytesPerSec []float64
	Span                       time.Duration
	Now                        metrics.Totals
}

func (s *Sampler) series(now time.Time) series {
	s.mu.Lock()
	rs := append([]reading(nil), s.ring...)
	s.mu.Unlock()
	rs = append(rs, reading{now, s.read()})
	var out series
	out.Now = rs[len(rs)-1].Totals
	for i := 1; i < len(rs); i++ {
		a, b := rs[i-1], rs[i]
		dt := b.at.Sub(a.at).Seconds()
		if dt <= 0 {
			continue
		}
		req := b.Requests - a.Requests
		out.RPS = append(out.RPS, req/dt)
		pct := 0.0
		if req > 0 {
			pct = 100 * (b.Errors - a.Errors) / req
		}
		out.ErrorPct = append(out.ErrorPct, pct)
		out.BytesPerSec = append(out.BytesPerSec, (b.BytesIn+b.BytesOut-a.BytesIn-a.BytesOut)/dt)
	}
	out.Span = rs[len(rs)-1].at.Sub(rs[0].at)
	return out
}

// Chart is one small line chart, drawn as inline SVG.
type Chart struct {
	Title  string
	Last   string
	Max    string
	Points string // the polyline's points, in a 300×60 box
	Empty  bool
}

func chart(title string, values []float64, format func(float64) string) Chart {
	c := Chart{Title: title, Empty: len(values) == 0}
	if c.Empty {
		return c
	}
	top := 0.0
	for _, v := range values {
		top = max(top, v)
	}
	c.Last, c.Max = format(values[len(values)-1]), format(top)
	if top == 0 {
		top = 1
	}
	var b strings.Builder
	// One point per step, the newest at the right edge, so that a young gateway's short history
	// sits at the right as on any time axis.
	step := 300.0 / float64(samples)
	x0 := 300 - step*float64(len(values)-1)
	for i, v := range values {
		fmt.Fprintf(&b, "%.1f,%.1f ", x0+step*float64(i), 58-56*v/top)
	}
	c.Points = strings.TrimSpace(b.String())
	return c
}

func formatRate(v float64) string { return fmt.Sprintf("%.2f/s", v) }
func formatPct(v float64) string  { return fmt.Sprintf("%.1f %%", v) }

// formatBytes writes a byte count in binary units.
func formatBytes(v float64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	i := 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%.0f %s", v, units[i])
	}
	return fmt.Sprintf("%.1f %s", v, units[i])
}

// svgPoints is only ever numbers and commas, built above; html/template would otherwise refuse it
// in an attribute it cannot reason about.
func svgPoints(s string) template.HTMLAttr {
	return template.HTMLAttr(`points="` + template.HTMLEscapeString(s) + `"`)
}
