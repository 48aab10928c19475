package tlscork

import (
	"context"
	"net"

	"google.golang.org/grpc/credentials"
)

// Credentials is grpc's TLS credentials with corked writes: each flush of grpc's transport leaves in
// one system call instead of one per 16 KiB record.
func Credentials(tlsCreds credentials.TransportCredentials) credentials.TransportCredentials {
	return corked{tlsCreds}
}

type corked struct {
	credentials.TransportCredentials
}

func (c corked) ClientHandshake(ctx context.Context, authority string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	raw := NewRaw(conn)
	tc, info, err := c.TransportCredentials.ClientHandshake(ctx, authority, raw)
	if err != nil {
		return nil, nil, err
	}
	return Wrap(tc, raw), info, nil
}

func (c corked) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	raw := NewRaw(conn)
	tc, info, err := c.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		return nil, nil, err
	}
	return Wrap(tc, raw), info, nil
}

func (c corked) Clone() credentials.TransportCredentials {
	return corked{c.TransportCredentials.Clone()}
}
