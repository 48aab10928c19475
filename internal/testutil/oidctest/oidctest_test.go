package oidctest

import (
	"crypto/tls"
	"encoding/json"
	"net/http"
	"testing"
	"time"
)

func TestDiscovery(t *testing.T) {
	p := Start(t, User{Username: "alice", Password: "pw"})
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: p.Pool}}
	t.Cleanup(tr.CloseIdleConnections)
	c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	resp, err := c.Get(p.Issuer + "/.well-known/openid-configuration")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var doc struct {
		Issuer      string   `json:"issuer"`
		PKCEMethods []string `json:"code_challenge_methods_supported"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		t.Fatal(err)
	}
	if doc.Issuer != p.Issuer || len(doc.PKCEMethods) == 0 || doc.PKCEMethods[0] != "S256" {
		t.Fatalf("discovery document %+v, want issuer %s with S256", doc, p.Issuer)
	}
}
