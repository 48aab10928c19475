package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// addRowF adds a table line whose cell for each target is f of its metrics ("" leaves it empty).
func (s *scenarioResult) addRowF(metric string, f func(target string, m metrics) string) *row {
	r := row{Metric: metric, Cells: map[string]string{}}
	for t, m := range s.Targets {
		r.Cells[t] = f(t, m)
	}
	s.rows = append(s.rows, r)
	return &s.rows[len(s.rows)-1]
}

// recordSample stores a load loop's figures for target and notes its errors.
func (s *scenarioResult) recordSample(target string, smp sample) {
	s.set(target, "requests", float64(smp.Requests))
	s.set(target, "rps", smp.rps())
	s.set(target, "p50_ms", ms(smp.quantile(0.50)))
	s.set(target, "p90_ms", ms(smp.quantile(0.90)))
	s.set(target, "p99_ms", ms(smp.quantile(0.99)))
	s.set(target, "max_ms", ms(smp.quantile(1)))
	s.set(target, "errors", float64(smp.Errors+smp.Dropped))
	if smp.Errors+smp.Dropped > 0 {
		s.Notes = append(s.Notes, fmt.Sprintf("%s: %d errors, %d dropped (first: %s)", target, smp.Errors, smp.Dropped, smp.FirstErr))
	}
}

// ratioRow adds the "ratio to direct" line for metric and checks hop-http against want.
func (s *scenarioResult) ratioRow(metric string, want float64) {
	direct, _ := s.get(tDirect, metric)
	r := s.addRowF("ratio to direct", func(t string, m metrics) string {
		if t == tDirect {
			return ""
		}
		return pct(ratio(m[metric], direct))
	})
	httpR := ratio(s.Targets[tHopHTTP][metric], direct)
	tlsR := ratio(s.Targets[tHopTLS][metric], direct)
	r.Result = fmt.Sprintf("http %s · tls %s", pct(httpR), pct(tlsR))
	s.addCheck("hop-http "+metric+" / direct "+metric, "≥ "+pct(want), httpR, httpR >= want)
}

func (s *scenarioResult) errorRow() {
	any := false
	for _, m := range s.Targets {
		any = any || m["errors"] > 0
	}
	if any {
		s.addRow("errors", "errors", func(v float64) string { return strconv.FormatFloat(v, 'f', 0, 64) })
	}
}

// s1: small GETs, closed loop.
func (r *runner) s1(ctx context.Context) scenarioResult {
	p := r.p
	s := scenarioResult{ID: "S1", Name: fmt.Sprintf("small GET 100 B, %d conns, closed loop, %s", p.S1Conns, p.S1Duration)}
	for _, name := range targetOrder {
		t := r.targets[name]
		c := t.client(p.S1Conns, 10*time.Second)
		ps := r.cpuOf(name)
		before := ps.cpu()
		smp := closedLoop(ctx, p.S1Conns, p.Warmup, p.S1Duration, func(ctx context.Context) error { return getSmall(ctx, c, t) })
		after := ps.cpu()
		closeClient(c)
		s.recordSample(name, smp)
		for proc := range ps {
			if smp.Completed > 0 {
				s.set(name, "cpu_us_per_req_"+proc, float64((after[proc]-before[proc]).Microseconds())/float64(smp.Completed))
			}
		}
	}
	s.addRow("rps", "rps", num)
	s.addRowF("p50 / p99", func(_ string, m metrics) string { return num(m["p50_ms"]) + " / " + msStr(m["p99_ms"]) })
	s.ratioRow("rps", 0.30)
	// The cost line (issue 20): CPU per request of what stands between client and origin, which does
	// not swing with the machine's load the way rps does.
	rw := s.addRowF("CPU µs/req (rproxy; server+client)", func(t string, m metrics) string {
		switch t {
		case tRProxy:
			return num(m["cpu_us_per_req_rproxy"])
		case tHopHTTP, tHopTLS:
			return num(m["cpu_us_per_req_server"] + m["cpu_us_per_req_client"])
		}
		return ""
	})
	h := s.Targets[tHopHTTP]
	both := h["cpu_us_per_req_server"] + h["cpu_us_per_req_client"]
	rw.Result = fmt.Sprintf("hop-http: server %s · client %s", num(h["cpu_us_per_req_server"]), num(h["cpu_us_per_req_client"]))
	s.addCheck("hop-http server + client CPU per request (µs)", "≤ 80 µs", both, both > 0 && both <= 80)
	s.addRow("CPU µs/req (origin)", "cpu_us_per_req_origin", num)
	s.errorRow()
	return s
}

// s2: small GETs, open loop at a fixed rate: the latency HopGate adds when it is not saturated.
func (r *runner) s2(ctx context.Context) scenarioResult {
	p := r.p
	s := scenarioResult{ID: "S2", Name: fmt.Sprintf("small GET, open loop %d rps, %s", p.S2Rate, p.S2Duration)}
	for _, name := range targetOrder {
		t := r.targets[name]
		c := t.client(256, 10*time.Second)
		do := func(ctx context.Context, _ int) error { return getSmall(ctx, c, t) }
		openLoop(ctx, p.S2Rate, p.Warmup, 512, do) // warm the connection pool, not measured
		smp := openLoop(ctx, p.S2Rate, p.S2Duration, 512, do)
		closeClient(c)
		s.recordSample(name, smp)
	}
	s.addRowF("p50 / p99", func(_ string, m metrics) string { return num(m["p50_ms"]) + " / " + msStr(m["p99_ms"]) })
	d50, d99 := s.Targets[tDirect]["p50_ms"], s.Targets[tDirect]["p99_ms"]
	rw := s.addRowF("Δp50 / Δp99 vs direct", func(t string, m metrics) string {
		if t == tDirect {
			return ""
		}
		return fmt.Sprintf("%+.2f / %+.2f ms", m["p50_ms"]-d50, m["p99_ms"]-d99)
	})
	httpD := s.Targets[tHopHTTP]["p99_ms"] - d99
	tlsD := s.Targets[tHopTLS]["p99_ms"] - d99
	rw.Result = fmt.Sprintf("Δp99 http %+.2f ms · tls %+.2f ms", httpD, tlsD)
	s.addCheck("hop-http p99 − direct p99 (ms)", "≤ 1 ms", httpD, httpD <= 1)
	s.errorRow()
	return s
}

// transferTimeout bounds one bulk transfer generously (5 MB/s), so a stalled tunnel ends the scenario.
func transferTimeout(bytes int64) time.Duration {
	return max(time.Minute, time.Duration(float64(bytes)/5e6*float64(time.Second)))
}

// s3: many 1 MiB responses over a few connections.
func (r *runner) s3(ctx context.Context) scenarioResult {
	p := r.p
	s := scenarioResult{ID: "S3", Name: fmt.Sprintf("%d × %d MiB downloads, %d conns", p.S3Count, p.S3Size/mib, p.S3Conns)}
	for _, name := range targetOrder {
		t := r.targets[name]
		c := t.client(p.S3Conns, 0)
		tctx, cancel := context.WithTimeout(ctx, transferTimeout(p.S3Size*int64(p.S3Count)))
		var (
			next, got atomic.Int64
			errs      errCounter
			wg        sync.WaitGroup
		)
		start := time.Now()
		for range p.S3Conns {
			wg.Go(func() {
				buf := make([]byte, 256*kib)
				for next.Add(1) <= int64(p.S3Count) && tctx.Err() == nil {
					n, err := download(tctx, c, t, p.S3Size, buf)
					got.Add(n)
					if err != nil {
						errs.add(err)
					}
				}
			})
		}
		wg.Wait()
		elapsed := time.Since(start)
		cancel()
		closeClient(c)
		s.set(name, "mbps", float64(got.Load())/elapsed.Seconds()/1e6)
		s.set(name, "seconds", elapsed.Seconds())
		s.set(name, "errors", float64(errs.n.Load()))
		if errs.n.Load() > 0 {
			s.Notes = append(s.Notes, fmt.Sprintf("%s: %d errors (first: %s)", name, errs.n.Load(), errs.first))
		}
	}
	s.addRow("MB/s", "mbps", num)
	s.ratioRow("mbps", 0.70)
	s.errorRow()
	return s
}

// cpuOf names the processes whose CPU time a bulk transfer through target costs (beyond the harness).
func (r *runner) cpuOf(target string) procSet {
	ps := procSet{"origin": r.origin.Pid()}
	switch target {
	case tRProxy:
		ps["rproxy"] = r.rproxy.Pid()
	case tHopHTTP, tHopTLS:
		ps["server"] = r.gw.Pid()
		ps["client"] = r.client.Pid()
	}
	return ps
}

// bulk runs one transfer per target (s4 downloads, s5 uploads) and reports throughput and CPU per GB.
func (r *runner) bulk(ctx context.Context, s *scenarioResult, size int64, one func(context.Context, *http.Client, target) (int64, error)) {
	for _, name := range targetOrder {
		t := r.targets[name]
		c := t.client(1, 0)
		ps := r.cpuOf(name)
		tctx, cancel := context.WithTimeout(ctx, transferTimeout(size))
		before := ps.cpu()
		start := time.Now()
		n, err := one(tctx, c, t)
		elapsed := time.Since(start)
		after := ps.cpu()
		cancel()
		closeClient(c)
		gb := float64(n) / 1e9
		s.set(name, "mbps", float64(n)/elapsed.Seconds()/1e6)
		s.set(name, "seconds", elapsed.Seconds())
		for proc := range ps {
			if gb > 0 {
				s.set(name, "cpu_s_per_gb_"+proc, (after[proc]-before[proc]).Seconds()/gb)
			}
		}
		if err != nil {
			s.set(name, "errors", 1)
			s.Notes = append(s.Notes, fmt.Sprintf("%s: %v", name, err))
		}
	}
	s.addRow("MB/s", "mbps", num)
	s.ratioRow("mbps", 0.70)
	rw := s.addRowF("CPU s/GB (rproxy; server+client)", func(t string, m metrics) string {
		switch t {
		case tRProxy:
			return num(m["cpu_s_per_gb_rproxy"])
		case tHopHTTP, tHopTLS:
			return num(m["cpu_s_per_gb_server"] + m["cpu_s_per_gb_client"])
		}
		return ""
	})
	h := s.Targets[tHopHTTP]
	rw.Result = fmt.Sprintf("hop-http: server %s · client %s", num(h["cpu_s_per_gb_server"]), num(h["cpu_s_per_gb_client"]))
	s.addRow("CPU s/GB (origin)", "cpu_s_per_gb_origin", num)
	s.errorRow()
}

// s4: one large download over one connection.
func (r *runner) s4(ctx context.Context) scenarioResult {
	size := r.p.S4Size
	s := scenarioResult{ID: "S4", Name: fmt.Sprintf("%s download, 1 conn", sizeName(size))}
	buf := make([]byte, 256*kib)
	r.bulk(ctx, &s, size, func(ctx context.Context, c *http.Client, t target) (int64, error) {
		return download(ctx, c, t, size, buf)
	})
	return s
}

// s5: one large upload over one connection.
func (r *runner) s5(ctx context.Context) scenarioResult {
	size := r.p.S5Size
	s := scenarioResult{ID: "S5", Name: fmt.Sprintf("%s upload, 1 conn", sizeName(size))}
	r.bulk(ctx, &s, size, func(ctx context.Context, c *http.Client, t target) (int64, error) {
		return upload(ctx, c, t, size)
	})
	return s
}

func sizeName(n int64) string {
	if n >= gib && n%gib == 0 {
		return fmt.Sprintf("%d GiB", n/gib)
	}
	return fmt.Sprintf("%d MiB", n/mib)
}

// s6: an HTTP/2 visitor with many concurrent streams on one connection. HopGate only speaks h2 over TLS;
// it is compared with the origin over h2c (the "ratio to direct") and with the reverse proxy
// over TLS h2 (same TLS cost, no tunnel).
func (r *runner) s6(ctx context.Context) scenarioResult {
	p := r.p
	s := scenarioResult{ID: "S6", Name: fmt.Sprintf("HTTP/2 visitor, %d streams on 1 conn, %s", p.S6Streams, p.S6Duration)}
	hop := r.targets[tHopTLS]
	hop.proto = "h2"
	h2targets := map[string]target{
		tDirect: {Name: "direct-h2c", base: r.targets[tDirect].base, dial: r.originAddr, proto: "h2c"},
		tRProxy: {Name: "rproxy-tls-h2", base: "https://" + r.rproxyTLSAddr, dial: r.rproxyTLSAddr, proto: "h2",
			tls: &tls.Config{RootCAs: r.rproxyPool, ServerName: "127.0.0.1"}},
		tHopTLS: hop,
	}
	for _, name := range []string{tDirect, tRProxy, tHopTLS} {
		t := h2targets[name]
		c := t.client(1, 10*time.Second)
		var proto atomic.Value
		smp := closedLoop(ctx, p.S6Streams, p.Warmup, p.S6Duration, func(ctx context.Context) error {
			req, err := t.request(ctx, http.MethodGet, "/small", nil)
			if err != nil {
				return err
			}
			res, err := c.Do(req)
			if err != nil {
				return err
			}
			n, err := io.Copy(io.Discard, res.Body)
			res.Body.Close()
			proto.Store(res.Proto)
			if err != nil || res.StatusCode != http.StatusOK || n != int64(len(smallBody)) {
				return fmt.Errorf("GET /small: status %d, %d bytes, %v", res.StatusCode, n, err)
			}
			return nil
		})
		closeClient(c)
		s.recordSample(name, smp)
		if got, _ := proto.Load().(string); got != "HTTP/2.0" {
			s.Notes = append(s.Notes, fmt.Sprintf("%s answered over %q, not HTTP/2", t.Name, got))
		}
	}
	s.addRow("rps (direct = h2c, rproxy = TLS h2)", "rps", num)
	s.addRowF("p50 / p99", func(_ string, m metrics) string { return num(m["p50_ms"]) + " / " + msStr(m["p99_ms"]) })
	direct, rp := s.Targets[tDirect]["rps"], s.Targets[tRProxy]["rps"]
	hopRPS := s.Targets[tHopTLS]["rps"]
	rw := s.addRowF("ratio to direct h2c", func(t string, m metrics) string {
		if t == tDirect {
			return ""
		}
		return pct(ratio(m["rps"], direct))
	})
	rw.Result = fmt.Sprintf("tls vs direct h2c %s · vs TLS rproxy %s", pct(ratio(hopRPS, direct)), pct(ratio(hopRPS, rp)))
	s.addCheck("hop-tls h2 rps / direct h2c rps", "≥ 30 %", ratio(hopRPS, direct), ratio(hopRPS, direct) >= 0.30)
	s.errorRow()
	return s
}

// s7: small-GET latency while bulk downloads run and one visitor reads a response at 1 KiB/s: one
// stream must not hold up the others (head-of-line blocking in the tunnel).
func (r *runner) s7(ctx context.Context) scenarioResult {
	p := r.p
	s := scenarioResult{ID: "S7", Name: fmt.Sprintf("small GET p99 at %d rps, alone vs with %d downloads + 1 reader at %d B/s",
		p.S7Rate, p.S7Downloads, p.S7SlowRate)}
	for _, name := range targetOrder {
		t := r.targets[name]
		c := t.client(64, 10*time.Second)
		do := func(ctx context.Context, _ int) error { return getSmall(ctx, c, t) }
		openLoop(ctx, p.S7Rate, p.Warmup, 256, do)
		unloaded := openLoop(ctx, p.S7Rate, p.S7Duration, 256, do)

		bctx, stopBulk := context.WithCancel(ctx)
		var (
			bulkBytes, slowBytes atomic.Int64
			wg                   sync.WaitGroup
			bulkErr              errCounter
		)
		bulkClient := t.client(p.S7Downloads, 0)
		for range p.S7Downloads {
			wg.Go(func() {
				if err := streamBody(bctx, bulkClient, t, p.S7DownloadSize, 0, &bulkBytes); err != nil && bctx.Err() == nil {
					bulkErr.add(err)
				}
			})
		}
		slowClient := t.client(1, 0)
		wg.Go(func() {
			if err := streamBody(bctx, slowClient, t, p.S7DownloadSize, p.S7SlowRate, &slowBytes); err != nil && bctx.Err() == nil {
				bulkErr.add(err)
			}
		})
		select { // let the downloads reach full speed and the slow reader's window fill up
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
		b0, t0 := bulkBytes.Load(), time.Now()
		loaded := openLoop(ctx, p.S7Rate, p.S7Duration, 256, do)
		bulkMBps := float64(bulkBytes.Load()-b0) / time.Since(t0).Seconds() / 1e6
		stopBulk()
		wg.Wait()
		closeClient(bulkClient)
		closeClient(slowClient)
		closeClient(c)

		u, l := ms(unloaded.quantile(0.99)), ms(loaded.quantile(0.99))
		s.set(name, "p99_unloaded_ms", u)
		s.set(name, "p99_loaded_ms", l)
		s.set(name, "p50_unloaded_ms", ms(unloaded.quantile(0.5)))
		s.set(name, "p50_loaded_ms", ms(loaded.quantile(0.5)))
		s.set(name, "loaded_over_unloaded", ratio(l, u))
		s.set(name, "bulk_mbps", bulkMBps)
		s.set(name, "slow_reader_bytes", float64(slowBytes.Load()))
		errs := unloaded.Errors + loaded.Errors
		dropped := unloaded.Dropped + loaded.Dropped
		s.set(name, "errors", float64(errs+dropped+bulkErr.n.Load()))
		if errs+dropped > 0 {
			s.Notes = append(s.Notes, fmt.Sprintf("%s: small GETs: %d errors, %d not sent because 256 were already in flight (> %s behind)%s",
				name, errs, dropped, time.Duration(256*int(time.Second)/p.S7Rate), firstErr(unloaded, loaded)))
		}
		if bulkErr.n.Load() > 0 {
			s.Notes = append(s.Notes, fmt.Sprintf("%s: %d download errors (first: %s)", name, bulkErr.n.Load(), bulkErr.first))
		}
	}
	s.addRowF("p99 alone → loaded", func(_ string, m metrics) string {
		return num(m["p99_unloaded_ms"]) + " → " + msStr(m["p99_loaded_ms"])
	})
	rw := s.addRowF("p99 loaded / alone", func(_ string, m metrics) string { return num(m["loaded_over_unloaded"]) + "×" })
	h, tl := s.Targets[tHopHTTP]["loaded_over_unloaded"], s.Targets[tHopTLS]["loaded_over_unloaded"]
	rw.Result = fmt.Sprintf("http %s× · tls %s× (direct %s×)", num(h), num(tl), num(s.Targets[tDirect]["loaded_over_unloaded"]))
	s.addCheck("hop-http p99 loaded / p99 alone", "≤ 2×", h, h > 0 && h <= 2)
	s.addRow("bulk MB/s meanwhile", "bulk_mbps", num)
	s.addRow("slow reader got (bytes)", "slow_reader_bytes", func(v float64) string { return strconv.FormatFloat(v, 'f', 0, 64) })
	s.errorRow()
	s.Notes = append(s.Notes, "S7 downloads run unthrottled, so on a small machine they also load the CPU; the direct column is the reference for that part of the slowdown")
	return s
}

// streamBody downloads /bytes/size until ctx ends, adding what arrives to got. rate > 0 reads that
// many bytes per second (a slow visitor); 0 reads as fast as possible.
func streamBody(ctx context.Context, c *http.Client, t target, size int64, rate int, got *atomic.Int64) error {
	req, err := t.request(ctx, http.MethodGet, "/bytes/"+strconv.FormatInt(size, 10), nil)
	if err != nil {
		return err
	}
	res, err := c.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /bytes: status %d", res.StatusCode)
	}
	if rate <= 0 {
		buf := make([]byte, 256*kib)
		for {
			n, err := res.Body.Read(buf)
			got.Add(int64(n))
			if err != nil {
				return ignoreEnd(ctx, err)
			}
		}
	}
	buf := make([]byte, rate)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		n, err := io.ReadFull(res.Body, buf)
		got.Add(int64(n))
		if err != nil {
			return ignoreEnd(ctx, err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

func ignoreEnd(ctx context.Context, err error) error {
	if err == io.EOF || ctx.Err() != nil {
		return nil
	}
	if strings.Contains(err.Error(), "context canceled") {
		return nil
	}
	return err
}

func firstErr(samples ...sample) string {
	for _, smp := range samples {
		if smp.FirstErr != "" {
			return " (first error: " + smp.FirstErr + ")"
		}
	}
	return ""
}
