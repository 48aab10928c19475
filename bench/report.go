package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// metrics are one target's figures in one scenario, by name (units in the name: _rps, _ms, _mbps …).
type metrics map[string]float64

// check compares one figure with the target. It never fails the run.
type check struct {
	What   string  `json:"what"`   // e.g. "hop-http rps / direct rps"
	Target string  `json:"target"` // e.g. "≥ 30 %"
	Value  float64 `json:"value"`
	Pass   bool    `json:"pass"`
}

// row is one line of the markdown table.
type row struct {
	Metric string
	Cells  map[string]string // by target name
	Result string
	Check  *check
}

type scenarioResult struct {
	ID      string             `json:"id"`
	Name    string             `json:"name"`
	Targets map[string]metrics `json:"targets,omitempty"`
	Checks  []check            `json:"checks,omitempty"`
	Notes   []string           `json:"notes,omitempty"`
	Error   string             `json:"error,omitempty"`
	Seconds float64            `json:"seconds"`
	rows    []row
}

type runResult struct {
	Profile     profile          `json:"profile"`
	Machine     machine          `json:"machine"`
	Started     time.Time        `json:"started"`
	WallSeconds float64          `json:"wall_seconds"`
	Scenarios   []scenarioResult `json:"scenarios"`
}

func (s *scenarioResult) set(target, name string, v float64) {
	if s.Targets == nil {
		s.Targets = map[string]metrics{}
	}
	if s.Targets[target] == nil {
		s.Targets[target] = metrics{}
	}
	s.Targets[target][name] = v
}

func (s *scenarioResult) get(target, name string) (float64, bool) {
	v, ok := s.Targets[target][name]
	return v, ok
}

// addRow adds a table line whose cells are the named metric of each target, formatted by f.
func (s *scenarioResult) addRow(metric, name string, f func(float64) string) *row {
	r := row{Metric: metric, Cells: map[string]string{}}
	for t, m := range s.Targets {
		if v, ok := m[name]; ok {
			r.Cells[t] = f(v)
		}
	}
	s.rows = append(s.rows, r)
	return &s.rows[len(s.rows)-1]
}

// addCheck records a comparison with the target and attaches it to the last row.
func (s *scenarioResult) addCheck(what, targetText string, value float64, pass bool) {
	c := check{What: what, Target: targetText, Value: value, Pass: pass}
	s.Checks = append(s.Checks, c)
	if len(s.rows) > 0 {
		s.rows[len(s.rows)-1].Check = &s.Checks[len(s.Checks)-1]
	}
}

func (s *scenarioResult) fail(err error) scenarioResult {
	s.Error = err.Error()
	return *s
}

// ratio is a/b, or 0 when b is 0 (a target that failed entirely).
func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

func pct(v float64) string { return fmt.Sprintf("%.0f %%", 100*v) }

func num(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

func msStr(v float64) string { return num(v) + " ms" }

// printTable writes the run as one markdown table: one line per figure, the four ways side by side.
func printTable(w io.Writer, res *runResult) {
	fmt.Fprintf(w, "\n## HopGate bench · profile %s · %d CPUs · %s · %s · wall %.0f s · load avg %s → %s\n\n",
		res.Profile.Name, res.Machine.CPUs, res.Machine.GoVersion, res.Machine.Commit, res.WallSeconds,
		res.Machine.LoadAvgStart, res.Machine.LoadAvgEnd)
	fmt.Fprintln(w, "| id | scenario | metric | direct | rproxy | hop-http | hop-tls | result | target | ok |")
	fmt.Fprintln(w, "|---|---|---|---:|---:|---:|---:|---|---|:-:|")
	for _, s := range res.Scenarios {
		if s.Error != "" {
			fmt.Fprintf(w, "| %s | %s | harness error | | | | | %s | | ✗ |\n", s.ID, s.Name, cellText(s.Error))
		}
		for i, r := range s.rows {
			id, name := s.ID, s.Name
			if i > 0 {
				id, name = "", ""
			}
			target, ok := "", ""
			if r.Check != nil {
				target = r.Check.Target
				ok = "✗"
				if r.Check.Pass {
					ok = "✓"
				}
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", id, name, r.Metric,
				r.Cells[tDirect], r.Cells[tRProxy], r.Cells[tHopHTTP], r.Cells[tHopTLS], r.Result, target, ok)
		}
	}
	var notes []string
	for _, s := range res.Scenarios {
		for _, n := range s.Notes {
			notes = append(notes, fmt.Sprintf("- %s: %s", s.ID, n))
		}
	}
	if len(notes) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, strings.Join(notes, "\n"))
	}
}

func cellText(s string) string {
	s = strings.ReplaceAll(s, "|", "/")
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

// writeJSON stores the run under dir as <timestamp>-<profile>.json.
func writeJSON(dir string, res *runResult) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	path := filepath.Join(dir, res.Started.Format("20060102-150405")+"-"+res.Profile.Name+".json")
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return "", err
	}
	return path, os.WriteFile(path, append(b, '\n'), 0o644)
}
