package tcpopt

import "syscall"

// tcpNotSentLowat is TCP_NOTSENT_LOWAT from linux/tcp.h (the syscall package does not name it).
const tcpNotSentLowat = 25

func setNotSentLowat(fd uintptr, n int) error {
	return syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpNotSentLowat, n)
}
