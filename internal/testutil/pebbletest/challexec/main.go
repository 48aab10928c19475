// Command challexec is the program of lego's "exec" DNS provider in tests: it publishes and removes
// DNS-01 records on pebble-challtestsrv through its management API.
//
// lego calls it as "challexec present|cleanup <fqdn> <value>". The httpreq provider cannot talk to
// challtestsrv directly: it posts {"fqdn","value"} to <endpoint>/present and /cleanup, challtestsrv
// takes {"host","value"} at /set-txt and /clear-txt.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "challexec:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) != 3 {
		return fmt.Errorf("usage: challexec present|cleanup FQDN VALUE (got %q)", args)
	}
	base := os.Getenv("CHALLTESTSRV_URL")
	if base == "" {
		return fmt.Errorf("CHALLTESTSRV_URL is not set")
	}
	var path string
	switch args[0] {
	case "present":
		path = "/set-txt"
	case "cleanup":
		path = "/clear-txt"
	default:
		return fmt.Errorf("unknown command %q", args[0])
	}
	body, _ := json.Marshal(map[string]string{"host": args[1], "value": args[2]})
	c := &http.Client{Timeout: 10 * time.Second}
	res, err := c.Post(base+path, "application/json", bytes.NewReader(body))
	if err != nil {
		return err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(res.Body, 1<<10))
		return fmt.Errorf("%s: %s %s", path, res.Status, msg)
	}
	return nil
}
