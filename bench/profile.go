package main

import "time"

// allScenarios in the order they run. S8 and S9 start their own fresh server, so their memory
// figures are not inflated by the heap the throughput scenarios left behind.
var allScenarios = []string{"S1", "S2", "S3", "S4", "S5", "S6", "S7", "S10", "S14", "S11", "S12", "S13", "S15", "S8", "S9"}

// profile holds every size and duration of a run.
type profile struct {
	Name      string   `json:"name"`
	Scenarios []string `json:"scenarios"`
	// Deadline bounds the whole run.
	Deadline time.Duration `json:"deadline"`
	// Warmup is discarded before each closed-loop measurement (connections, pools, GC pacing).
	Warmup time.Duration `json:"warmup"`

	S1Conns    int           `json:"s1_conns"`
	S1Duration time.Duration `json:"s1_duration"`

	S2Rate     int           `json:"s2_rate"`
	S2Duration time.Duration `json:"s2_duration"`

	S3Size  int64 `json:"s3_size"`
	S3Count int   `json:"s3_count"`
	S3Conns int   `json:"s3_conns"`

	S4Size int64 `json:"s4_size"`
	S5Size int64 `json:"s5_size"`

	S6Streams  int           `json:"s6_streams"`
	S6Duration time.Duration `json:"s6_duration"`

	S7Rate      int           `json:"s7_rate"`
	S7Duration  time.Duration `json:"s7_duration"`
	S7Downloads int           `json:"s7_downloads"`
	// S7DownloadSize is large enough that the downloads outlast the loaded window; they are cancelled then.
	S7DownloadSize int64 `json:"s7_download_size"`
	S7SlowRate     int   `json:"s7_slow_reader_bytes_per_second"`

	S8Steps []int `json:"s8_steps"`

	S9Tunnels  int           `json:"s9_tunnels"`
	S9Domains  int           `json:"s9_domains"`
	S9Rate     int           `json:"s9_rate"`
	S9Duration time.Duration `json:"s9_duration"`

	// S11: S11Count transfers of S11Size each way through a TCP tunnel, one connection each.
	S11Size  int64 `json:"s11_size"`
	S11Count int   `json:"s11_count"`

	// S12: S12Conns TCP connections at once, S12Duration of round trips on them, then S12Churn
	// short connections.
	S12Conns    int           `json:"s12_conns"`
	S12Duration time.Duration `json:"s12_duration"`
	S12Churn    int           `json:"s12_churn"`
}

const (
	kib = 1 << 10
	mib = 1 << 20
	gib = 1 << 30
)

var profiles = map[string]profile{
	"quick": {
		Name:      "quick",
		Scenarios: []string{"S1", "S2", "S3", "S4", "S5", "S6", "S7", "S10", "S14", "S11", "S12", "S13", "S15", "S8"},
		Deadline:  10 * time.Minute,
		Warmup:    500 * time.Millisecond,

		S1Conns: 64, S1Duration: 4 * time.Second,
		S2Rate: 1000, S2Duration: 5 * time.Second,
		S3Size: mib, S3Count: 300, S3Conns: 8,
		S4Size:    256 * mib,
		S5Size:    256 * mib,
		S6Streams: 100, S6Duration: 3 * time.Second,
		S7Rate: 200, S7Duration: 5 * time.Second, S7Downloads: 4, S7DownloadSize: 16 * gib, S7SlowRate: kib,
		S8Steps:   []int{1, 50, 200},
		S9Tunnels: 500, S9Domains: 50, S9Rate: 200, S9Duration: 5 * time.Second,
		S11Size: 64 * mib, S11Count: 4,
		S12Conns: 200, S12Duration: 3 * time.Second, S12Churn: 4000,
	},
	"full": {
		Name:      "full",
		Scenarios: allScenarios,
		Deadline:  60 * time.Minute,
		Warmup:    time.Second,

		S1Conns: 64, S1Duration: 10 * time.Second,
		S2Rate: 1000, S2Duration: 10 * time.Second,
		S3Size: mib, S3Count: 2000, S3Conns: 8,
		S4Size:    gib,
		S5Size:    gib,
		S6Streams: 100, S6Duration: 10 * time.Second,
		S7Rate: 200, S7Duration: 10 * time.Second, S7Downloads: 4, S7DownloadSize: 64 * gib, S7SlowRate: kib,
		S8Steps:   []int{1, 100, 1000},
		S9Tunnels: 10000, S9Domains: 10000, S9Rate: 1000, S9Duration: 30 * time.Second,
		S11Size: 64 * mib, S11Count: 16,
		S12Conns: 200, S12Duration: 10 * time.Second, S12Churn: 10000,
	},
}
