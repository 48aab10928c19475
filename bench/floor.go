package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/mem"

	"github.com/hopgate/hopgate/internal/pause"
	"github.com/hopgate/hopgate/internal/testutil/hoptest"
	"github.com/hopgate/hopgate/internal/tlscork"
	"github.com/hopgate/hopgate/internal/tunnel"
)

// S15 measures what the tunnel's transport costs with nothing of HopGate on it: one bidirectional
// gRPC stream per TLS connection between two processes, carrying raw bytes (no protobuf, no copy
// out of grpc's buffers), with the tunnel's write buffer and corked TLS writes on both ends. It is
// the floor under issue 20's targets: a tunnel request cannot cost less than one message each way
// on such a stream plus the HTTP work at both ends (S1's rproxy), a gigabyte through the tunnel no
// less than this stream's gigabyte, an idle tunnel no less than an idle connection with one stream.

const (
	floorService = "hopgate.bench.Floor"
	floorMethod  = "/" + floorService + "/Pipe"
	floorChunk   = tunnel.ChunkSize
	floorWindow  = 16 << 20 // the HTTP/2 windows both ends of a tunnel set
)

// floorCodec passes messages as they are: a *[]byte is sent as it is and received as a copy; an
// *int receives only the message's length, so bulk bytes are never copied out of grpc's buffers.
type floorCodec struct{}

func (floorCodec) Name() string { return "floor" }

func (floorCodec) Marshal(v any) (mem.BufferSlice, error) {
	b, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("floor codec: cannot send %T", v)
	}
	return mem.BufferSlice{mem.SliceBuffer(*b)}, nil
}

func (floorCodec) Unmarshal(data mem.BufferSlice, v any) error {
	switch m := v.(type) {
	case *int:
		*m = data.Len()
	case *[]byte:
		*m = data.Materialize()
	default:
		return fmt.Errorf("floor codec: cannot receive %T", v)
	}
	return nil
}

// floorPipe serves one stream. The first message says what the stream does: "echo" sends every
// message back, "sink" counts what arrives and answers the total when the client closes its side,
// "source N" sends N bytes in ChunkSize messages, "idle" waits for the client to go away, "memstats"
// answers the bytes of heap and stacks in use.
func floorPipe(_ any, st grpc.ServerStream) error {
	var cmd []byte
	if err := st.RecvMsg(&cmd); err != nil {
		return err
	}
	verb, arg, _ := strings.Cut(string(cmd), " ")
	switch verb {
	case "echo":
		for {
			var m []byte
			if err := st.RecvMsg(&m); err != nil {
				return ignoreEOF(err)
			}
			if err := st.SendMsg(&m); err != nil {
				return err
			}
		}
	case "sink":
		total := 0
		for {
			var n int
			if err := st.RecvMsg(&n); err != nil {
				if errors.Is(err, io.EOF) {
					b := []byte(strconv.Itoa(total))
					return st.SendMsg(&b)
				}
				return err
			}
			total += n
		}
	case "source":
		n, err := strconv.ParseInt(arg, 10, 64)
		if err != nil {
			return err
		}
		chunk := make([]byte, floorChunk)
		for n > 0 {
			b := chunk[:min(int64(len(chunk)), n)]
			if err := st.SendMsg(&b); err != nil {
				return err
			}
			n -= int64(len(b))
		}
		return nil
	case "idle":
		var m []byte
		return ignoreEOF(st.RecvMsg(&m))
	case "memstats":
		// Heap and stacks in use after collections: steadier than RSS, which moves with the GC's pace.
		// Two, because sync.Pool keeps what it held through one.
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		b := []byte(strconv.FormatUint(ms.HeapInuse+ms.StackInuse, 10))
		return st.SendMsg(&b)
	}
	return fmt.Errorf("floor: unknown command %q", cmd)
}

func ignoreEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

// serveFloor is the -role floor process: the gRPC server end of S15.
func serveFloor(ctx context.Context, certFile, keyFile string) error {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return fmt.Errorf("load -cert/-key: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Printf("ADDR http=%s\n", ln.Addr())
	return serveFloorOn(ctx, ln, newFloorServer(cert))
}

// newFloorServer is the gateway's tunnel options (write buffer, buffer pool, no read buffer, 16 MiB
// windows, corked TLS) with the raw codec in place of the tunnel's.
func newFloorServer(cert tls.Certificate) *grpc.Server {
	creds := tlscork.Credentials(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}))
	srv := grpc.NewServer(append(tunnel.ServerOptions(), grpc.Creds(creds), grpc.ForceServerCodecV2(floorCodec{}),
		grpc.ReadBufferSize(0), grpc.InitialWindowSize(floorWindow), grpc.InitialConnWindowSize(floorWindow))...)
	srv.RegisterService(&grpc.ServiceDesc{
		ServiceName: floorService,
		HandlerType: (*any)(nil),
		Streams:     []grpc.StreamDesc{{StreamName: "Pipe", Handler: floorPipe, ServerStreams: true, ClientStreams: true}},
	}, struct{}{})
	return srv
}

func serveFloorOn(ctx context.Context, ln net.Listener, srv *grpc.Server) error {
	go func() {
		<-ctx.Done()
		srv.Stop()
	}()
	return srv.Serve(ln)
}

// floorClient dials the floor server, one connection per call.
type floorClient struct {
	addr string
	pool *x509.CertPool
}

func (fc floorClient) dial() (*grpc.ClientConn, error) {
	creds := tlscork.Credentials(credentials.NewTLS(&tls.Config{RootCAs: fc.pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13}))
	return grpc.NewClient(fc.addr, append(tunnel.DialOptions(), grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(floorCodec{})),
		grpc.WithInitialWindowSize(floorWindow), grpc.WithInitialConnWindowSize(floorWindow))...)
}

var floorStreamDesc = &grpc.StreamDesc{StreamName: "Pipe", ServerStreams: true, ClientStreams: true}

func openPipe(ctx context.Context, cc *grpc.ClientConn, cmd string) (grpc.ClientStream, error) {
	st, err := cc.NewStream(ctx, floorStreamDesc, floorMethod)
	if err != nil {
		return nil, err
	}
	b := []byte(cmd)
	if err := st.SendMsg(&b); err != nil {
		return nil, err
	}
	return st, nil
}

// s15 runs the floor: round trips of 100 bytes on as many streams as S1 has connections, a bulk
// transfer each way as large as S4's and S5's, and idle connections as many as S8's last step.
func (r *runner) s15(ctx context.Context) scenarioResult {
	p := r.p
	s := scenarioResult{ID: "S15", Name: "transport floor: bare gRPC stream over TLS, raw bytes, no HTTP (two processes)"}
	cert, err := hoptest.SelfSigned(r.dir, "floor")
	if err != nil {
		return s.fail(err)
	}
	proc, addrs, err := startRole(ctx, r.dir, "floor", "-cert", cert.CertFile, "-key", cert.KeyFile)
	if err != nil {
		return s.fail(err)
	}
	defer proc.Stop(5 * time.Second)
	fc := floorClient{addr: addrs["http"], pool: cert.Pool}
	ps := procSet{"server": proc.Pid(), "client": os.Getpid()}

	// Round trips: one connection carries every stream, as one tunnel carries every request.
	cc, err := fc.dial()
	if err != nil {
		return s.fail(err)
	}
	defer cc.Close()
	pipes := make([]grpc.ClientStream, p.S1Conns)
	for i := range pipes {
		if pipes[i], err = openPipe(ctx, cc, "echo"); err != nil {
			return s.fail(err)
		}
	}
	free := make(chan grpc.ClientStream, len(pipes))
	for _, st := range pipes {
		free <- st
	}
	msg := make([]byte, len(smallBody))
	before := ps.cpu()
	smp := closedLoop(ctx, p.S1Conns, p.Warmup, p.S1Duration, func(context.Context) error {
		st := <-free
		defer func() { free <- st }()
		if err := st.SendMsg(&msg); err != nil {
			return err
		}
		var got []byte
		if err := st.RecvMsg(&got); err != nil {
			return err
		}
		if len(got) != len(msg) {
			return fmt.Errorf("echo: %d bytes back for %d", len(got), len(msg))
		}
		return nil
	})
	after := ps.cpu()
	for _, st := range pipes {
		_ = st.CloseSend()
	}
	s.recordSample("floor", smp)
	if smp.Completed > 0 {
		for proc := range ps {
			s.set("floor", "cpu_us_per_rt_"+proc, float64((after[proc]-before[proc]).Microseconds())/float64(smp.Completed))
		}
	}
	m := s.Targets["floor"]
	s.rows = append(s.rows, row{Metric: "round trips/s (100 B each way)", Result: num(m["rps"])})
	s.rows = append(s.rows, row{Metric: "CPU µs per round trip (server + client)", Result: fmt.Sprintf("%.1f (%.1f + %.1f)",
		m["cpu_us_per_rt_server"]+m["cpu_us_per_rt_client"], m["cpu_us_per_rt_server"], m["cpu_us_per_rt_client"])})

	// Bulk, one connection each way.
	for _, dir := range []struct {
		name string
		size int64
		run  func(context.Context, *grpc.ClientConn, int64) error
	}{{"down", p.S4Size, floorDownload}, {"up", p.S5Size, floorUpload}} {
		cc, err := fc.dial()
		if err != nil {
			return s.fail(err)
		}
		before := ps.cpu()
		start := time.Now()
		err = dir.run(ctx, cc, dir.size)
		elapsed := time.Since(start)
		after := ps.cpu()
		cc.Close()
		if err != nil {
			return s.fail(fmt.Errorf("bulk %s: %w", dir.name, err))
		}
		gb := float64(dir.size) / 1e9
		srv, cli := (after["server"]-before["server"]).Seconds()/gb, (after["client"]-before["client"]).Seconds()/gb
		s.set("floor", "mb_per_s_"+dir.name, float64(dir.size)/1e6/elapsed.Seconds())
		s.set("floor", "cpu_s_per_gb_"+dir.name, srv+cli)
		s.rows = append(s.rows, row{Metric: fmt.Sprintf("%s %s: MB/s · CPU-s/GB (server + client)", sizeName(dir.size), dir.name),
			Result: fmt.Sprintf("%.0f · %.2f (%.2f + %.2f)", float64(dir.size)/1e6/elapsed.Seconds(), srv+cli, srv, cli)})
	}

	// Idle: one connection and one waiting stream each, like a tunnel of its own.
	n := p.S8Steps[len(p.S8Steps)-1]
	// Heap and stacks, not RSS: the bulk transfers above left freed memory the process has not given
	// back, which would hide what the idle connections take.
	base, err := floorInuse(ctx, cc)
	if err != nil {
		return s.fail(err)
	}
	var conns []*grpc.ClientConn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		c, err := fc.dial()
		if err != nil {
			return s.fail(err)
		}
		conns = append(conns, c)
		// NewStream waits for the connection; the command is sent before openPipe returns.
		if _, err := openPipe(ctx, c, "idle"); err != nil {
			return s.fail(err)
		}
	}
	if err := pause.For(ctx, time.Second); err != nil {
		return s.fail(err)
	}
	inuse, err := floorInuse(ctx, cc)
	if err != nil {
		return s.fail(err)
	}
	per := float64(inuse-base) / 1024 / float64(n)
	s.set("floor", "kib_inuse_per_idle_conn", per)
	s.rows = append(s.rows, row{Metric: fmt.Sprintf("server KiB per idle connection + stream (0→%d), heap + stacks after GC", n),
		Result: fmt.Sprintf("%.1f KiB", per)})
	s.Notes = append(s.Notes, "S15 is the transport alone (grpc-go over TLS 1.3 on loopback with the tunnel's grpc options and corked writes, 128 KiB messages): compare its CPU per round trip with S1's hop-http minus rproxy, its CPU-s/GB with S4/S5's, its KiB with S8's heap + stacks line")
	return s
}

// floorInuse asks the server for its heap and stacks in use.
func floorInuse(ctx context.Context, cc *grpc.ClientConn) (int64, error) {
	st, err := openPipe(ctx, cc, "memstats")
	if err != nil {
		return 0, err
	}
	var b []byte
	if err := st.RecvMsg(&b); err != nil {
		return 0, err
	}
	return strconv.ParseInt(string(b), 10, 64)
}

func floorDownload(ctx context.Context, cc *grpc.ClientConn, size int64) error {
	st, err := openPipe(ctx, cc, "source "+strconv.FormatInt(size, 10))
	if err != nil {
		return err
	}
	if err := st.CloseSend(); err != nil {
		return err
	}
	var got int64
	for {
		var n int
		if err := st.RecvMsg(&n); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return err
		}
		got += int64(n)
	}
	if got != size {
		return fmt.Errorf("received %d bytes of %d", got, size)
	}
	return nil
}

func floorUpload(ctx context.Context, cc *grpc.ClientConn, size int64) error {
	st, err := openPipe(ctx, cc, "sink")
	if err != nil {
		return err
	}
	chunk := make([]byte, floorChunk)
	for n := size; n > 0; {
		b := chunk[:min(int64(len(chunk)), n)]
		if err := st.SendMsg(&b); err != nil {
			return err
		}
		n -= int64(len(b))
	}
	if err := st.CloseSend(); err != nil {
		return err
	}
	var total []byte
	if err := st.RecvMsg(&total); err != nil {
		return err
	}
	if string(total) != strconv.FormatInt(size, 10) {
		return fmt.Errorf("server counted %s bytes of %d", total, size)
	}
	return nil
}
