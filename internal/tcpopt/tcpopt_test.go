//go:build linux

package tcpopt

import (
	"net"
	"syscall"
	"testing"
)

func TestSetNotSentLowat(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d := net.Dialer{Control: Control(64 << 10)}
	c, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := notSentLowat(t, c); got != 64<<10 {
		t.Fatalf("dialer Control: TCP_NOTSENT_LOWAT = %d, want %d", got, 64<<10)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := SetNotSentLowat(s, TunnelNotSentLowat); err != nil {
		t.Fatal(err)
	}
	if got := notSentLowat(t, s); got != TunnelNotSentLowat {
		t.Fatalf("SetNotSentLowat: TCP_NOTSENT_LOWAT = %d, want %d", got, TunnelNotSentLowat)
	}
	if err := SetNotSentLowat(nil, 1); err != nil {
		t.Fatalf("a non-TCP connection: %v", err)
	}
}

func notSentLowat(t *testing.T, c net.Conn) int {
	t.Helper()
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var gerr error
	if err := raw.Control(func(fd uintptr) { v, gerr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpNotSentLowat) }); err != nil {
		t.Fatal(err)
	}
	if gerr != nil {
		t.Fatal(gerr)
	}
	return v
}
