package tunnel

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"testing"
	"time"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

// split cuts b into pieces of at most n bytes, as grpc hands a message over in its frame buffers.
func split(b []byte, n int) mem.BufferSlice {
	var s mem.BufferSlice
	for len(b) > 0 {
		k := min(n, len(b))
		s = append(s, mem.SliceBuffer(bytes.Clone(b[:k])))
		b = b[k:]
	}
	return s
}

func TestCodecData(t *testing.T) {
	for _, size := range []int{1, 100, 1023, 1024, 1025, 16 << 10, 100_000, ChunkSize} {
		for _, id := range []uint64{1, 300, 1 << 40} {
			want := payload(uint64(size), size)
			buf := buffers.Get(ChunkSize)
			copy(*buf, want)
			out, err := codec{}.Marshal(&outData{id: id, buf: buf, n: size})
			if err != nil {
				t.Fatalf("Marshal: %v", err)
			}
			wire := out.Materialize()
			out.Free()

			// grpc's own codec (proto.Unmarshal) reads the same frame.
			var plain tunnelv1.TunnelFrame
			if err := proto.Unmarshal(wire, &plain); err != nil {
				t.Fatalf("size %d: proto.Unmarshal: %v", size, err)
			}
			if plain.StreamId != id || !bytes.Equal(plain.GetData().GetPayload(), want) {
				t.Fatalf("size %d id %d: proto read stream %d, %d bytes", size, id, plain.StreamId, len(plain.GetData().GetPayload()))
			}
			// And the tunnel codec reads it into a chunk, however grpc cut it up.
			for _, piece := range []int{1, 3, 7, 16 << 10, len(wire)} {
				var in inFrame
				if err := (codec{}).Unmarshal(split(wire, piece), &in); err != nil {
					t.Fatalf("Unmarshal: %v", err)
				}
				if in.chunk == nil {
					t.Fatalf("size %d, pieces of %d: payload not read into a chunk", size, piece)
				}
				if in.f.StreamId != id || !bytes.Equal(in.f.GetData().GetPayload(), want) {
					t.Fatalf("size %d, pieces of %d: got stream %d, %d bytes", size, piece, in.f.StreamId, len(in.f.GetData().GetPayload()))
				}
				putChunk(in.chunk)
			}
		}
	}
}

// TestCodecOtherEncodings feeds frames the fast path does not take; each must read exactly as
// proto.Unmarshal reads it.
func TestCodecOtherEncodings(t *testing.T) {
	data := func(id uint64, p []byte) *Frame {
		return &Frame{StreamId: id, Kind: &tunnelv1.TunnelFrame_Data{Data: &tunnelv1.Data{Payload: p}}}
	}
	marshal := func(f *Frame) []byte {
		b, err := proto.Marshal(f)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	// The Data message before the stream id: valid protobuf, unusual order.
	reordered := protowire.AppendTag(nil, 7, protowire.BytesType)
	inner := protowire.AppendTag(nil, 1, protowire.BytesType)
	inner = protowire.AppendBytes(inner, []byte("body"))
	reordered = protowire.AppendBytes(reordered, inner)
	reordered = protowire.AppendTag(reordered, 1, protowire.VarintType)
	reordered = protowire.AppendVarint(reordered, 9)
	// An unknown field after the payload.
	extra := marshal(data(5, []byte("abc")))
	extra = protowire.AppendTag(extra, 99, protowire.VarintType)
	extra = protowire.AppendVarint(extra, 1)
	// A payload longer than a chunk.
	big := payload(1, ChunkSize+1)

	tests := []struct {
		name string
		wire []byte
		want *Frame
	}{
		{"hello", marshal(&Frame{Kind: &tunnelv1.TunnelFrame_Hello{Hello: &tunnelv1.Hello{Domain: "a.example.test"}}}), nil},
		{"empty data", marshal(data(3, nil)), nil},
		{"data without stream id", marshal(data(0, []byte("x"))), nil},
		{"reordered", reordered, data(9, []byte("body"))},
		{"unknown field", extra, nil},
		{"larger than a chunk", marshal(data(4, big)), nil},
		{"truncated", marshal(data(4, []byte("abcdef")))[:8], nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			want := new(Frame)
			wantErr := proto.Unmarshal(tc.wire, want)
			if tc.want != nil && !proto.Equal(want, tc.want) {
				t.Fatalf("test case: proto reads %v", want)
			}
			var in inFrame
			err := codec{}.Unmarshal(split(tc.wire, 5), &in)
			if (err != nil) != (wantErr != nil) {
				t.Fatalf("Unmarshal error %v, proto.Unmarshal error %v", err, wantErr)
			}
			if err != nil {
				return
			}
			if in.chunk != nil && tc.name != "data without stream id" {
				t.Errorf("took the fast path")
			}
			if !proto.Equal(in.f, want) {
				t.Errorf("got %v, want %v", in.f, want)
			}
		})
	}
}

// TestMixedCodecs runs bodies both ways between an end on the tunnel codec and one on grpc's own, as
// with an agent or a gateway from before the codec.
func TestMixedCodecs(t *testing.T) {
	leakCheck(t)
	for _, tc := range []struct {
		name string
		opts harnessOptions
	}{
		{"old agent", harnessOptions{grpcCodec: true}},
		{"old gateway", harnessOptions{serverGRPCCodec: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, tc.opts)
			p := h.dial(Config{Accept: echoAgent(t)}, nil)
			ctx := testCtx(t, 10*time.Second)
			body := payload(7, 3<<20+5)
			st, err := p.server.OpenStream(ctx, &tunnelv1.RequestHead{Method: "POST", Path: "/", ContentLength: int64(len(body))})
			if err != nil {
				t.Fatalf("OpenStream: %v", err)
			}
			defer st.Close()
			go func() {
				_, _ = st.Write(body)
				_ = st.CloseWrite(nil)
			}()
			if _, err := st.AwaitResponse(ctx); err != nil {
				t.Fatalf("AwaitResponse: %v", err)
			}
			s := sha256.New()
			n, err := io.Copy(s, st)
			if err != nil || n != int64(len(body)) || hex.EncodeToString(s.Sum(nil)) != sum(body) {
				t.Fatalf("echo: %d bytes, %v; want %d bytes back unchanged", n, err, len(body))
			}
		})
	}
}

func BenchmarkCodecUnmarshalData(b *testing.B) {
	buf := buffers.Get(ChunkSize)
	out, _ := codec{}.Marshal(&outData{id: 7, buf: buf, n: ChunkSize})
	wire := split(out.Materialize(), 16<<10)
	b.SetBytes(ChunkSize)
	b.ReportAllocs()
	for b.Loop() {
		var in inFrame
		if err := (codec{}).Unmarshal(wire, &in); err != nil {
			b.Fatal(err)
		}
		putChunk(in.chunk)
	}
}

// TestReceiveBufferSize: a received payload never pins more than twice its size (or 256 bytes), so a
// stream's credit bounds its memory even when its reader is slow and its frames small.
func TestReceiveBufferSize(t *testing.T) {
	for _, n := range []int{1, 255, 256, 257, 300, 5000, 70_000, ChunkSize} {
		buf := buffers.Get(ChunkSize)
		out, err := codec{}.Marshal(&outData{id: 1, buf: buf, n: n})
		if err != nil {
			t.Fatal(err)
		}
		wire := out.Materialize()
		out.Free()
		var in inFrame
		if err := (codec{}).Unmarshal(split(wire, 16<<10), &in); err != nil || in.chunk == nil {
			t.Fatalf("n=%d: Unmarshal %v, chunk %v", n, err, in.chunk != nil)
		}
		if c := cap(*in.chunk); c > max(2*n, 256) {
			t.Errorf("n=%d: payload held in a %d-byte buffer", n, c)
		}
		putChunk(in.chunk)
	}
}

func TestBufferPool(t *testing.T) {
	p := &tieredPool{}
	for _, n := range []int{0, 1, 256, 257, 4096, 100_000, 1 << 20} {
		b := p.Get(n)
		if len(*b) != n || cap(*b) < n || cap(*b) > max(2*n, 256) {
			t.Errorf("Get(%d): len %d cap %d", n, len(*b), cap(*b))
		}
		p.Put(b)
	}
	if b := p.Get(1<<20 + 1); len(*b) != 1<<20+1 {
		t.Errorf("Get above the largest tier: len %d", len(*b))
	}
	odd := make([]byte, 1000)
	p.Put(&odd) // not a power of two: dropped, never handed out for a bigger size
	if b := p.Get(1000); cap(*b) != 1024 {
		t.Errorf("Get(1000) after putting a 1000-byte buffer: cap %d, want 1024", cap(*b))
	}
}

// sizeRecorder yields chunks[i] on its i-th Read (fewer bytes if p is smaller) and records len(p).
type sizeRecorder struct {
	chunks []int
	sizes  []int
}

func (r *sizeRecorder) Read(p []byte) (int, error) {
	r.sizes = append(r.sizes, len(p))
	if len(r.chunks) == 0 {
		return 0, io.EOF
	}
	n := min(r.chunks[0], len(p))
	r.chunks[0] -= n
	if r.chunks[0] == 0 {
		r.chunks = r.chunks[1:]
	}
	return n, nil
}

// TestReadFromSizes: a body that arrives in small pieces (an event stream) is read with small buffers,
// which a waiting read holds; a bulk body reaches whole chunks within a few reads.
func TestReadFromSizes(t *testing.T) {
	leakCheck(t)
	h := newHarness(t, harnessOptions{})
	p := h.dial(Config{Accept: echoAgent(t)}, nil)
	ctx := testCtx(t, 10*time.Second)
	events := make([]int, 20)
	for i := range events {
		events[i] = 100
	}
	bulk := make([]int, 40)
	for i := range bulk {
		bulk[i] = 1 << 20 // more than any read asks: every read comes back full
	}
	tests := []struct {
		name   string
		chunks []int
		check  func(sizes []int) bool
	}{
		{"events", events, func(sizes []int) bool { return slicesMax(sizes) <= minReadSize }},
		{"bulk", bulk, func(sizes []int) bool { return slicesMax(sizes[:min(len(sizes), 6)]) == ChunkSize }},
	}
	for _, tc := range tests {
		total := 0
		for _, c := range tc.chunks {
			total += c
		}
		if tc.name == "bulk" {
			total = 8 << 20
		}
		st, err := p.server.OpenStream(ctx, &tunnelv1.RequestHead{Method: "POST", Path: "/", ContentLength: int64(total)})
		if err != nil {
			t.Fatal(err)
		}
		rec := &sizeRecorder{chunks: tc.chunks}
		go func() {
			_, _ = st.ReadFrom(io.LimitReader(rec, int64(total)))
			_ = st.CloseWrite(nil)
		}()
		if _, err := st.AwaitResponse(ctx); err != nil {
			t.Fatal(err)
		}
		if n, err := io.Copy(io.Discard, st); err != nil || n != int64(total) {
			t.Fatalf("%s: echo %d bytes, %v", tc.name, n, err)
		}
		st.Close()
		if !tc.check(rec.sizes) {
			t.Errorf("%s: read sizes %v", tc.name, rec.sizes[:min(len(rec.sizes), 12)])
		}
	}
}

func slicesMax(s []int) int {
	m := 0
	for _, v := range s {
		m = max(m, v)
	}
	return m
}

// FuzzCodecUnmarshal: whatever bytes arrive, however grpc split them, the tunnel codec reads exactly
// what proto.Unmarshal reads, or fails where it fails.
func FuzzCodecUnmarshal(f *testing.F) {
	for _, n := range []int{1, 1500, 5000} {
		buf := buffers.Get(ChunkSize)
		out, _ := codec{}.Marshal(&outData{id: uint64(n), buf: buf, n: n})
		f.Add(out.Materialize(), uint16(16<<10))
		out.Free()
	}
	hello, _ := proto.Marshal(&Frame{Kind: &tunnelv1.TunnelFrame_Hello{Hello: &tunnelv1.Hello{Domain: "a.test"}}})
	f.Add(hello, uint16(3))
	f.Fuzz(func(t *testing.T, wire []byte, piece uint16) {
		want := new(Frame)
		wantErr := proto.Unmarshal(wire, want)
		var in inFrame
		err := codec{}.Unmarshal(split(wire, max(int(piece), 1)), &in)
		if (err != nil) != (wantErr != nil) {
			t.Fatalf("codec error %v, proto error %v", err, wantErr)
		}
		if err == nil && !proto.Equal(in.f, want) {
			t.Fatalf("codec read %v, proto read %v", in.f, want)
		}
		if in.chunk != nil {
			if len(*in.chunk) != len(in.f.GetData().GetPayload()) {
				t.Fatalf("chunk of %d bytes for a %d-byte payload", len(*in.chunk), len(in.f.GetData().GetPayload()))
			}
			putChunk(in.chunk)
		}
	})
}
