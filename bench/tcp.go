package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hopgate/hopgate/internal/testutil/hoptest"
)

// tcpDomain is the tenant of S11 and S12: a TCP-mode domain whose agent's target is the origin's raw
// TCP port.
const tcpDomain = "tcp.bench.hopgate.test"

// tHopTCP names the way through a TCP tunnel in the JSON; the table shows it in the result column.
const tHopTCP = "hop-tcp"

// tcpStack is a gateway with TCP tunnels on and one hopgate-client serving tcpDomain, apart from the
// HTTP scenarios' gateway so that their figures do not change.
type tcpStack struct {
	gw    *hoptest.Gateway
	agent *hoptest.Process
	// addr is the domain's public TCP port on the gateway.
	addr string
}

func (s *tcpStack) stop() {
	if s.agent != nil {
		s.agent.Stop(5 * time.Second)
	}
	s.gw.Stop(5 * time.Second)
}

// tcpTunnel starts the TCP stack on first use; S11 and S12 share it.
func (r *runner) tcpTunnel(ctx context.Context) (*tcpStack, error) {
	if r.tcp != nil {
		return r.tcp, nil
	}
	if r.originTCPAddr == "" {
		return nil, errors.New("the origin has no raw TCP port")
	}
	low, high, err := hoptest.FreePortRange(4)
	if err != nil {
		return nil, err
	}
	g, err := startGateway(ctx, r.bin, r.dir, "hopgate-server-tcp", nil,
		fmt.Sprintf("HOP_SERVER_TCP_PORTS=%d-%d", low, high), "HOP_SERVER_TCP_LISTEN_HOST=127.0.0.1")
	if err != nil {
		return nil, err
	}
	s := &tcpStack{gw: g}
	reg, err := g.RegisterMode(ctx, tcpDomain, hoptest.ModeTCP, 0, "")
	if err != nil {
		s.stop()
		return nil, err
	}
	s.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(reg.TCPPort))
	s.agent, err = g.StartAgent(hoptest.AgentOptions{BinDir: r.bin, Log: filepath.Join(r.dir, "hopgate-client-tcp.log"),
		Domain: tcpDomain, Key: reg.Key, Target: "tcp://" + r.originTCPAddr, AgentID: "bench-tcp"})
	if err != nil {
		s.stop()
		return nil, err
	}
	err = g.WaitAgents(ctx, tcpDomain, 1, 20*time.Second, func() error {
		if s.agent.Exited() {
			return fmt.Errorf("hopgate-client exited: %s", s.agent.Log.Tail(2000))
		}
		return nil
	})
	if err == nil {
		err = waitRawServes(ctx, s.addr, 10*time.Second)
	}
	if err != nil {
		s.stop()
		return nil, err
	}
	r.log.Info("tcp stack up", "gateway_https", g.HTTPSAddr, "tcp_port", s.addr, "server_pid", g.Pid(), "client_pid", s.agent.Pid())
	r.tcp = s
	return s, nil
}

// waitRawServes waits until one SMALL round trip through addr succeeds.
func waitRawServes(ctx context.Context, addr string, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var last error
	for ctx.Err() == nil {
		c, err := dialRaw(ctx, addr)
		if err == nil {
			err = c.small()
			c.Close()
		}
		if last = err; err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s does not serve the origin's raw TCP protocol after %s: %v", addr, d, last)
}

// rawConn is a client connection of the origin's raw TCP protocol (see serveRawTCP).
type rawConn struct {
	net.Conn
	br  *bufio.Reader
	buf []byte
}

func dialRaw(ctx context.Context, addr string) (*rawConn, error) {
	c, err := (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return &rawConn{Conn: c, br: bufio.NewReaderSize(c, 4*kib)}, nil
}

// small is one request/response round trip of 6 bytes up and 100 down.
func (c *rawConn) small() error {
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "SMALL\n"); err != nil {
		return err
	}
	var got [100]byte
	if _, err := io.ReadFull(c.br, got[:]); err != nil {
		return fmt.Errorf("SMALL: %w", err)
	}
	if string(got[:]) != string(smallBody) {
		return errors.New("SMALL: wrong answer")
	}
	return nil
}

// download asks for n bytes and reads them.
func (c *rawConn) download(n int64) (int64, error) {
	_ = c.SetDeadline(time.Now().Add(transferTimeout(n)))
	if _, err := fmt.Fprintf(c, "BYTES %d\n", n); err != nil {
		return 0, err
	}
	if c.buf == nil {
		c.buf = make([]byte, 256*kib)
	}
	got, err := io.CopyBuffer(&discard{}, io.LimitReader(c.br, n), c.buf)
	if err == nil && got != n {
		err = fmt.Errorf("BYTES %d: %d bytes before EOF", n, got)
	}
	return got, err
}

// upload sends n bytes and waits for the origin's OK.
func (c *rawConn) upload(n int64) (int64, error) {
	_ = c.SetDeadline(time.Now().Add(transferTimeout(n)))
	if _, err := fmt.Fprintf(c, "UPLOAD %d\n", n); err != nil {
		return 0, err
	}
	if c.buf == nil {
		c.buf = make([]byte, 256*kib)
	}
	// The struct hides the connection's ReadFrom, so that both ways write in chunks of c.buf.
	sent, err := io.CopyBuffer(struct{ io.Writer }{c.Conn}, &patternReader{left: n}, c.buf)
	if err != nil {
		return sent, err
	}
	line, err := c.br.ReadString('\n')
	if err == nil && line != "OK\n" {
		err = fmt.Errorf("UPLOAD %d: answered %q", n, line)
	}
	return sent, err
}

// tcpTargets are the two ways of the TCP scenarios, and the processes whose CPU time each costs.
func (r *runner) tcpTargets(s *tcpStack) []struct {
	name, addr string
	ps         procSet
} {
	return []struct {
		name, addr string
		ps         procSet
	}{
		{tDirect, r.originTCPAddr, procSet{"origin": r.origin.Pid()}},
		{tHopTCP, s.addr, procSet{"origin": r.origin.Pid(), "server": s.gw.Pid(), "client": s.agent.Pid()}},
	}
}

// s11: bulk through a TCP tunnel against the origin's raw port direct: S11Count transfers of S11Size
// each way, each on a new connection; MB/s and CPU seconds per GB of hopgate-server + hopgate-client.
func (r *runner) s11(ctx context.Context) scenarioResult {
	p := r.p
	s := scenarioResult{ID: "S11", Name: fmt.Sprintf("TCP tunnel: %d × %s down, then up, 1 conn each", p.S11Count, sizeName(p.S11Size))}
	stack, err := r.tcpTunnel(ctx)
	if err != nil {
		return s.fail(err)
	}
	for _, dir := range []string{"down", "up"} {
		for _, t := range r.tcpTargets(stack) {
			before := t.ps.cpu()
			start := time.Now()
			var total int64
			var ferr error
			for range p.S11Count {
				c, err := dialRaw(ctx, t.addr)
				if err != nil {
					ferr = err
					break
				}
				var n int64
				if dir == "down" {
					n, err = c.download(p.S11Size)
				} else {
					n, err = c.upload(p.S11Size)
				}
				c.Close()
				total += n
				if err != nil {
					ferr = err
					break
				}
			}
			elapsed := time.Since(start)
			after := t.ps.cpu()
			s.set(t.name, dir+"_mbps", float64(total)/elapsed.Seconds()/1e6)
			if gb := float64(total) / 1e9; gb > 0 {
				for proc := range t.ps {
					s.set(t.name, dir+"_cpu_s_per_gb_"+proc, (after[proc]-before[proc]).Seconds()/gb)
				}
			}
			if ferr != nil {
				s.set(t.name, "errors", s.Targets[t.name]["errors"]+1)
				s.Notes = append(s.Notes, fmt.Sprintf("%s %s: %v", t.name, dir, ferr))
			}
		}
		d, h := s.Targets[tDirect], s.Targets[tHopTCP]
		rw := s.addRow("MB/s "+dir+" (direct; TCP tunnel in the result)", dir+"_mbps", num)
		delete(rw.Cells, tHopTCP)
		rw.Result = fmt.Sprintf("tcp tunnel %s MB/s = %s of direct", num(h[dir+"_mbps"]), pct(ratio(h[dir+"_mbps"], d[dir+"_mbps"])))
		rw = s.addRow("CPU s/GB "+dir+" (origin; server+client in the result)", dir+"_cpu_s_per_gb_origin", num)
		delete(rw.Cells, tHopTCP)
		rw.Result = fmt.Sprintf("tcp tunnel: server %s + client %s = %s", num(h[dir+"_cpu_s_per_gb_server"]), num(h[dir+"_cpu_s_per_gb_client"]),
			num(h[dir+"_cpu_s_per_gb_server"]+h[dir+"_cpu_s_per_gb_client"]))
	}
	s.errorRow()
	return s
}

// s12: many TCP connections through one tunnel against direct: S12Conns opened at once (dial and
// the first round trip), small round trips on them in a closed loop, then S12Churn short
// connections (dial, one round trip, close) by S12Conns workers.
func (r *runner) s12(ctx context.Context) scenarioResult {
	p := r.p
	s := scenarioResult{ID: "S12", Name: fmt.Sprintf("TCP tunnel: %d conns at once, round trips on them for %s, %d short conns", p.S12Conns, p.S12Duration, p.S12Churn)}
	stack, err := r.tcpTunnel(ctx)
	if err != nil {
		return s.fail(err)
	}
	for _, t := range r.tcpTargets(stack) {
		// Open all at once; each figure is dial + the first round trip.
		conns := make([]*rawConn, p.S12Conns)
		lat := make([]time.Duration, p.S12Conns)
		var errs errCounter
		var wg sync.WaitGroup
		start := time.Now()
		for i := range conns {
			wg.Go(func() {
				t0 := time.Now()
				c, err := dialRaw(ctx, t.addr)
				if err == nil {
					if err = c.small(); err != nil {
						c.Close()
					}
				}
				if err != nil {
					errs.add(err)
					return
				}
				lat[i] = time.Since(t0)
				conns[i] = c
			})
		}
		wg.Wait()
		openSecs := time.Since(start).Seconds()
		opened := sample{lat: slices.DeleteFunc(lat, func(d time.Duration) bool { return d == 0 })}
		slices.Sort(opened.lat)
		s.set(t.name, "open_p50_ms", ms(opened.quantile(0.5)))
		s.set(t.name, "open_p99_ms", ms(opened.quantile(0.99)))
		s.set(t.name, "open_conns_per_s", float64(len(opened.lat))/openSecs)

		// Round trips on the open connections, each worker on a connection of its own.
		pool := make(chan *rawConn, len(conns))
		for _, c := range conns {
			if c != nil {
				pool <- c
			}
		}
		smp := closedLoop(ctx, len(pool), p.Warmup, p.S12Duration, func(ctx context.Context) error {
			select {
			case c := <-pool:
				defer func() { pool <- c }()
				return c.small()
			case <-ctx.Done():
				return ctx.Err()
			}
		})
		close(pool)
		for c := range pool {
			c.Close()
		}
		s.set(t.name, "rps", smp.rps())
		s.set(t.name, "p50_ms", ms(smp.quantile(0.5)))
		s.set(t.name, "p99_ms", ms(smp.quantile(0.99)))

		// Short connections: a bounded count (not a duration), so that direct cannot run the machine
		// out of ephemeral ports in TIME_WAIT.
		var next, done atomic.Int64
		churnLat := make([]time.Duration, p.S12Churn)
		before := t.ps.cpu()
		start = time.Now()
		for range p.S12Conns {
			wg.Go(func() {
				for i := next.Add(1) - 1; i < int64(p.S12Churn) && ctx.Err() == nil; i = next.Add(1) - 1 {
					t0 := time.Now()
					c, err := dialRaw(ctx, t.addr)
					if err == nil {
						err = c.small()
						c.Close()
					}
					if err != nil {
						errs.add(err)
						continue
					}
					churnLat[i] = time.Since(t0)
					done.Add(1)
				}
			})
		}
		wg.Wait()
		churnSecs := time.Since(start).Seconds()
		after := t.ps.cpu()
		churn := sample{lat: slices.DeleteFunc(churnLat, func(d time.Duration) bool { return d == 0 })}
		slices.Sort(churn.lat)
		s.set(t.name, "churn_conns_per_s", float64(done.Load())/churnSecs)
		s.set(t.name, "churn_p50_ms", ms(churn.quantile(0.5)))
		s.set(t.name, "churn_p99_ms", ms(churn.quantile(0.99)))
		if n := done.Load(); n > 0 {
			var cpu time.Duration
			for proc := range t.ps {
				if proc != "origin" {
					cpu += after[proc] - before[proc]
				}
			}
			s.set(t.name, "churn_cpu_ms_per_conn", float64(cpu)/float64(time.Millisecond)/float64(n))
		}
		s.set(t.name, "errors", float64(errs.n.Load()+smp.Errors))
		if errs.n.Load()+smp.Errors > 0 {
			s.Notes = append(s.Notes, fmt.Sprintf("%s: %d errors (first: %s%s)", t.name, errs.n.Load()+smp.Errors, errs.first, smp.FirstErr))
		}
	}
	d, h := s.Targets[tDirect], s.Targets[tHopTCP]
	rw := s.addRowF(fmt.Sprintf("open %d at once: dial + 1st round trip p50 / p99", p.S12Conns), func(t string, m metrics) string {
		if t != tDirect {
			return ""
		}
		return num(m["open_p50_ms"]) + " / " + msStr(m["open_p99_ms"])
	})
	rw.Result = fmt.Sprintf("tcp tunnel %s / %s", num(h["open_p50_ms"]), msStr(h["open_p99_ms"]))
	rw = s.addRowF(fmt.Sprintf("round trips/s on %d conns (p50 / p99)", p.S12Conns), func(t string, m metrics) string {
		if t != tDirect {
			return ""
		}
		return num(m["rps"]) + " (" + num(m["p50_ms"]) + " / " + msStr(m["p99_ms"]) + ")"
	})
	rw.Result = fmt.Sprintf("tcp tunnel %s (%s / %s) = %s of direct", num(h["rps"]), num(h["p50_ms"]), msStr(h["p99_ms"]), pct(ratio(h["rps"], d["rps"])))
	rw = s.addRowF(fmt.Sprintf("short conns/s, %d workers (p50 / p99)", p.S12Conns), func(t string, m metrics) string {
		if t != tDirect {
			return ""
		}
		return num(m["churn_conns_per_s"]) + " (" + num(m["churn_p50_ms"]) + " / " + msStr(m["churn_p99_ms"]) + ")"
	})
	rw.Result = fmt.Sprintf("tcp tunnel %s (%s / %s) = %s of direct; server+client %s ms CPU per conn",
		num(h["churn_conns_per_s"]), num(h["churn_p50_ms"]), msStr(h["churn_p99_ms"]), pct(ratio(h["churn_conns_per_s"], d["churn_conns_per_s"])),
		num(h["churn_cpu_ms_per_conn"]))
	s.errorRow()
	return s
}
