// Package acme obtains, stores, renews and serves the gateway's TLS certificates through ACME (lego).
//
// A Manager holds one certificate per name. Manage adds names (the gateway's own, the proxy domains,
// every registered domain), Unmanage drops them; Run orders what is missing and renews, and
// GetCertificate / HTTPHandler plug into the gateway's own listeners:
//
//	m, _ := acme.New(acme.Options{CADir: dir, Email: email, CacheDir: cache})
//	m.SetDefault(serverDomain)
//	m.Manage(ctx, serverDomain)
//	go m.Run(ctx)
//	tlsCfg := &tls.Config{GetCertificate: m.GetCertificate, NextProtos: []string{"h2", "http/1.1", acme.ALPNProto}}
//	httpsSrv.TLSNextProto[acme.ALPNProto] = func(*http.Server, *tls.Conn, http.Handler) {} // validation handshakes end here
//	httpSrv.Handler = m.HTTPHandler(redirectToHTTPS)
//
// Challenges are answered on those listeners, never on a listener of lego's: HTTP-01 tokens are kept
// in memory and served by HTTPHandler; TLS-ALPN-01 certificates (lego's tlsalpn01.ChallengeCert) are
// returned by GetCertificate to a client offering only ALPN "acme-tls/1". Both are offered to the CA;
// lego prefers TLS-ALPN-01. If the challenge tried fails, a second order offers only the other one.
//
// With Options.ExpectIPs set, a name is ordered and served only while it resolves to one of them;
// until then its state is "pending" and it is looked at again after 1m, 5m, then every 15m.
//
// Renewal: every name is looked at when Run starts and every Options.RenewCheckInterval (6h). A
// certificate is renewed once less than a third of its lifetime is left, or earlier when the CA's
// ACME Renewal Information (RFC 9773) suggests it; the new order names the old certificate
// (ARI "replaces"). Consecutive failures of a name wait 1m, 10m, 100m, then 24h (longer if the CA
// sent Retry-After); the CA's error is logged and kept in Status.LastError. A renewed certificate
// replaces the old one in memory by one pointer swap: connections already open are not touched.
//
// Storage (Options.CacheDir, or any Storage such as a database shared by several gateways):
//
//	accounts/<ca-host>/<email or "default">/key.pem        account key (ECDSA P-256, PEM), reused across restarts
//	accounts/<ca-host>/<email or "default">/account.json   {"email", "registration": {"body", "uri"}} from the CA
//	certificates/<name>.crt                                certificate chain (PEM, leaf first)
//	certificates/<name>.key                                its private key (PEM)
//	locks/<lock name>.lock                                 FileStorage only: advisory locks
//
// <ca-host> is the directory URL's host[:port] with characters other than [a-z0-9.-@+] replaced by
// "_" (so "127.0.0.1_14000"); the e-mail is mapped the same way. FileStorage writes every file with
// mode 0600 (directories 0700) through a temporary file in the same directory and a rename. Orders of
// a name and account registration run under the Storage's Locker, and a certificate stored by
// another gateway meanwhile is taken instead of ordering again.
package acme
