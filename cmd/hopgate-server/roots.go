package main

// The container images are FROM scratch, with no /etc/ssl/certs. This bundles Mozilla's roots into the
// binary as a fallback that Go uses only where the system has no roots of its own, so a host install
// still follows the host's trust store (and its updates).
import _ "golang.org/x/crypto/x509roots/fallback"
