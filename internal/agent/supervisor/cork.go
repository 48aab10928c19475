package supervisor

import (
	"context"
	"net"

	"google.golang.org/grpc/credentials"

	"github.com/hopgate/hopgate/internal/tlscork"
)

// corkedTLS is grpc's TLS credentials with corked writes (tlscork): each flush of grpc's transport
// leaves in one system call instead of one per 16 KiB record.
type corkedTLS struct {
	credentials.TransportCredentials
}

func (c corkedTLS) ClientHandshake(ctx context.Context, authority string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	raw := tlscork.NewRaw(conn)
	tc, info, err := c.TransportCredentials.ClientHandshake(ctx, authority, raw)
	if err != nil {
		return nil, nil, err
	}
	return tlscork.Wrap(tc, raw), info, nil
}

func (c corkedTLS) Clone() credentials.TransportCredentials {
	return corkedTLS{c.TransportCredentials.Clone()}
}
