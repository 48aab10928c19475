package healthcheck

// DialAddrs is dialAddrs for the tests, without its error.
func DialAddrs(listen string) []string {
	addrs, _ := dialAddrs(listen)
	return addrs
}
