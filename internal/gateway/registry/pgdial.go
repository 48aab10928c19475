package registry

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"time"

	"github.com/lib/pq"
)

// pgReadTimeout bounds one read from Postgres. lib/pq cancels a query whose context ends by sending a
// cancel request over a new connection, and goes on reading the old one; if the database (or the path
// to it) is stuck, neither ever answers and the read, its pooled connection and its goroutine are held
// for good. No query of the registry takes seconds, so a read this long means the connection is dead.
const pgReadTimeout = 10 * time.Second

// openPostgres opens a pool whose connections fail a read that waits longer than pgReadTimeout.
func openPostgres(dsn string) (*sql.DB, error) {
	c, err := pq.NewConnector(dsn)
	if err != nil {
		// lib/pq's message may quote the DSN, password included.
		return nil, fmt.Errorf("invalid postgres DSN (check its syntax; the value is not shown because it may hold a password)")
	}
	c.Dialer(deadlineDialer{read: pgReadTimeout})
	return sql.OpenDB(c), nil
}

type deadlineDialer struct{ read time.Duration }

func (d deadlineDialer) Dial(network, address string) (net.Conn, error) {
	return d.DialContext(context.Background(), network, address)
}

func (d deadlineDialer) DialTimeout(network, address string, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return d.DialContext(ctx, network, address)
}

func (d deadlineDialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	c, err := (&net.Dialer{KeepAlive: 30 * time.Second}).DialContext(ctx, network, address)
	if err != nil {
		return nil, err
	}
	return &deadlineConn{Conn: c, read: d.read}, nil
}

// deadlineConn arms a read deadline before each read. lib/pq reads only while it waits for an answer,
// so an idle pooled connection is never cut.
type deadlineConn struct {
	net.Conn
	read time.Duration
}

func (c *deadlineConn) Read(b []byte) (int, error) {
	if err := c.Conn.SetReadDeadline(time.Now().Add(c.read)); err != nil {
		return 0, err
	}
	return c.Conn.Read(b)
}
