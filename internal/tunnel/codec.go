package tunnel

import (
	"encoding/binary"
	"fmt"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

// codec is the protobuf wire format with body bytes kept out of the way. grpc's own proto codec
// copies a Data payload three times (into the marshal buffer; into one contiguous buffer on receipt;
// into a fresh allocation inside proto.Unmarshal), and the last copy is garbage for every chunk. Here
// a payload is handed to grpc in the pooled chunk it was read into, and on receipt copied once, from
// grpc's frame buffers into a pooled chunk. The bytes on the wire are the same, so either end may
// run grpc's codec instead.
type codec struct{}

// ALPN is the TLS protocol agents offer ahead of "h2". The gateway hands a connection that negotiates
// it whole to grpc-go's own HTTP/2 transport instead of net/http's HTTP/2 server: same port, same
// certificate, fewer TLS records and writes. Either end that does not know it falls back to "h2".
const ALPN = "hopgate-tunnel/1"

// writeBuffer is how much grpc gathers before it writes to a tunnel's connection (one system call
// through tlscork) instead of its 32 KiB default, which cost a write per two TLS records in bulk.
// grpc pools the buffer and gives it back after each flush, so an idle tunnel holds none.
const writeBuffer = 256 << 10

// ServerOptions install the tunnel's codec, buffer pool and write buffer on the gateway's grpc server.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.ForceServerCodecV2(codec{}), experimental.BufferPool(buffers), grpc.WriteBufferSize(writeBuffer)}
}

// DialOptions install the tunnel's codec, buffer pool and write buffer on the agent's grpc connection.
func DialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(codec{})),
		experimental.WithBufferPool(buffers),
		grpc.WithWriteBufferSize(writeBuffer),
	}
}

func (codec) Name() string { return "proto" }

// outData is a Data frame whose payload is a pooled chunk. Marshal hands the chunk to grpc, which
// puts it back into the pool once the frame is written.
type outData struct {
	id  uint64
	buf *[]byte
	n   int
}

// inFrame receives a frame; chunk is the pooled buffer holding a Data payload, if any, which the
// receiver puts back once it has read the payload.
type inFrame struct {
	f     *Frame
	chunk *[]byte
}

const (
	tagStreamID = uint64(1)<<3 | uint64(protowire.VarintType)
	tagData     = uint64(7)<<3 | uint64(protowire.BytesType)
	tagPayload  = uint64(1)<<3 | uint64(protowire.BytesType)
)

func (codec) Marshal(v any) (mem.BufferSlice, error) {
	switch m := v.(type) {
	case *outData:
		*m.buf = (*m.buf)[:m.n]
		payload := *m.buf
		var hdr []byte
		if m.id != 0 {
			hdr = protowire.AppendVarint(hdr, tagStreamID)
			hdr = protowire.AppendVarint(hdr, m.id)
		}
		inner := protowire.SizeTag(1) + protowire.SizeBytes(len(payload))
		hdr = protowire.AppendVarint(hdr, tagData)
		hdr = protowire.AppendVarint(hdr, uint64(inner))
		hdr = protowire.AppendVarint(hdr, tagPayload)
		hdr = protowire.AppendVarint(hdr, uint64(len(payload)))
		if mem.IsBelowBufferPoolingThreshold(len(payload)) {
			// Not worth a reference of its own: the chunk goes back at once.
			hdr = append(hdr, payload...)
			putChunk(m.buf)
			return mem.BufferSlice{mem.SliceBuffer(hdr)}, nil
		}
		return mem.BufferSlice{mem.SliceBuffer(hdr), mem.NewBuffer(m.buf, buffers)}, nil
	case proto.Message:
		size := proto.Size(m)
		if mem.IsBelowBufferPoolingThreshold(size) {
			b, err := proto.MarshalOptions{UseCachedSize: true}.Marshal(m)
			if err != nil {
				return nil, err
			}
			return mem.BufferSlice{mem.SliceBuffer(b)}, nil
		}
		buf := buffers.Get(size)
		b, err := proto.MarshalOptions{UseCachedSize: true}.MarshalAppend((*buf)[:0], m)
		if err != nil {
			buffers.Put(buf)
			return nil, err
		}
		*buf = b
		return mem.BufferSlice{mem.NewBuffer(buf, buffers)}, nil
	}
	return nil, fmt.Errorf("tunnel codec: cannot marshal %T", v)
}

func (codec) Unmarshal(data mem.BufferSlice, v any) error {
	switch m := v.(type) {
	case *inFrame:
		if f, chunk, ok := readData(data); ok {
			m.f, m.chunk = f, chunk
			return nil
		}
		m.f = new(Frame)
		return unmarshalProto(data, m.f)
	case proto.Message:
		return unmarshalProto(data, m)
	}
	return fmt.Errorf("tunnel codec: cannot unmarshal into %T", v)
}

func unmarshalProto(data mem.BufferSlice, m proto.Message) error {
	buf := data.MaterializeToBuffer(buffers)
	defer buf.Free()
	return proto.Unmarshal(buf.ReadOnlyData(), m)
}

// readData reads a Data frame laid out as every protobuf encoder writes it (stream id, then the Data
// message holding only its payload) into a pooled chunk. Anything else reports false and goes to
// proto.Unmarshal, which handles every valid encoding.
func readData(data mem.BufferSlice) (*Frame, *[]byte, bool) {
	r := bufsReader{bufs: data}
	var id uint64
	tag, ok := r.varint()
	if ok && tag == tagStreamID {
		id, ok = r.varint()
		if ok {
			tag, ok = r.varint()
		}
	}
	if !ok || tag != tagData {
		return nil, nil, false
	}
	inner, ok := r.varint()
	if !ok || inner != uint64(r.remaining()) {
		return nil, nil, false
	}
	if tag, ok = r.varint(); !ok || tag != tagPayload {
		return nil, nil, false
	}
	n, ok := r.varint()
	if !ok || n != uint64(r.remaining()) || n == 0 || n > ChunkSize {
		return nil, nil, false
	}
	// Sized to the payload, not a whole chunk: see buffers.
	chunk := buffers.Get(int(n))
	p := *chunk
	if _, err := io.ReadFull(&r, p); err != nil {
		putChunk(chunk)
		return nil, nil, false
	}
	return &Frame{StreamId: id, Kind: &tunnelv1.TunnelFrame_Data{Data: &tunnelv1.Data{Payload: p}}}, chunk, true
}

// bufsReader reads a BufferSlice in place. (mem.Reader would free the buffers it passes, which
// grpc frees again once Unmarshal returns.)
type bufsReader struct {
	bufs mem.BufferSlice
	i    int // buffer
	off  int // offset in bufs[i]
}

func (r *bufsReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) && r.i < len(r.bufs) {
		b := r.bufs[r.i].ReadOnlyData()[r.off:]
		c := copy(p[n:], b)
		n += c
		r.off += c
		if r.off == len(r.bufs[r.i].ReadOnlyData()) {
			r.i, r.off = r.i+1, 0
		}
	}
	if n == 0 && len(p) > 0 {
		return 0, io.EOF
	}
	return n, nil
}

func (r *bufsReader) ReadByte() (byte, error) {
	for r.i < len(r.bufs) {
		b := r.bufs[r.i].ReadOnlyData()
		if r.off < len(b) {
			c := b[r.off]
			r.off++
			return c, nil
		}
		r.i, r.off = r.i+1, 0
	}
	return 0, io.EOF
}

// varint reads a protobuf varint, which is encoding/binary's unsigned varint.
func (r *bufsReader) varint() (uint64, bool) {
	v, err := binary.ReadUvarint(r)
	return v, err == nil
}

func (r *bufsReader) remaining() int {
	n := 0
	for i := r.i; i < len(r.bufs); i++ {
		n += r.bufs[i].Len()
	}
	return n - r.off
}

// grpcConn is a FrameConn over a grpc stream that runs the tunnel codec (ServerOptions,
// DialOptions): Data payloads travel in pooled chunks.
type grpcConn struct{ s GRPCStream }

// GRPCStream is what grpc's client and server streams both offer.
type GRPCStream interface {
	SendMsg(any) error
	RecvMsg(any) error
}

// WrapGRPC returns the FrameConn for a grpc stream whose server or connection was set up with
// ServerOptions or DialOptions; the session then moves body bytes without copying them needlessly.
func WrapGRPC(s GRPCStream) FrameConn { return grpcConn{s} }

func (c grpcConn) Send(f *Frame) error { return c.s.SendMsg(f) }

// Recv is for callers that keep what they receive: a Data payload's chunk leaves the pool.
func (c grpcConn) Recv() (*Frame, error) {
	f, _, err := c.recvPooled()
	return f, err
}

func (c grpcConn) sendPooled(id uint64, buf *[]byte, n int) error {
	return c.s.SendMsg(&outData{id: id, buf: buf, n: n})
}

func (c grpcConn) recvPooled() (*Frame, *[]byte, error) {
	var in inFrame
	if err := c.s.RecvMsg(&in); err != nil {
		return nil, nil, err
	}
	return in.f, in.chunk, nil
}

// CloseSend half-closes a client stream; on the server's side of a call there is nothing to do.
func (c grpcConn) CloseSend() error {
	if cs, ok := c.s.(interface{ CloseSend() error }); ok {
		return cs.CloseSend()
	}
	return nil
}

// pooledConn is a FrameConn whose Data payloads travel in pooled chunks.
type pooledConn interface {
	// sendPooled sends (*buf)[:n] as a Data frame and takes buf: it goes back to the pool once written.
	sendPooled(id uint64, buf *[]byte, n int) error
	// recvPooled receives a frame; a Data payload comes in chunk, which the caller puts back.
	recvPooled() (*Frame, *[]byte, error)
}
