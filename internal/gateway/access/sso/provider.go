package sso

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"
	"golang.org/x/sync/singleflight"
)

const (
	// discoveryTimeout bounds one discovery (and a code exchange) even if the caller's client has
	// no timeout of its own.
	discoveryTimeout = 10 * time.Second
	// discoveryRetry spaces the attempts while the provider cannot be reached, so an outage does
	// not turn every visitor's request into a 10-second wait.
	discoveryRetry = 5 * time.Second
	// maxProviderBody bounds what is read from the provider: discovery documents, key sets and
	// token responses are a few KiB.
	maxProviderBody = 1 << 20
)

// remote is what discovery yields for one policy: how to send a visitor to the provider, how to
// exchange the code, and how to check the ID token.
type remote struct {
	oauth    oauth2.Config // RedirectURL is set per request
	verifier *oidc.IDTokenVerifier
}

// discovery fetches the provider's configuration once and keeps it; a failure is remembered for
// discoveryRetry.
type discovery struct {
	issuer, clientID, clientSecret string
	scopes                         []string
	client                         *http.Client
	now                            func() time.Time
	group                          singleflight.Group

	mu      sync.Mutex
	remote  *remote
	err     error
	retryAt time.Time
}

func (d *discovery) get(ctx context.Context) (*remote, error) {
	d.mu.Lock()
	r, err, wait := d.remote, d.err, d.now().Before(d.retryAt)
	d.mu.Unlock()
	if r != nil {
		return r, nil
	}
	if wait {
		return nil, err
	}
	// The fetch is shared by every request that waits for it and is not cut short by the one
	// that started it going away.
	ch := d.group.DoChan("discover", func() (any, error) { return d.discover(context.WithoutCancel(ctx)) })
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.(*remote), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (d *discovery) discover(ctx context.Context) (*remote, error) {
	ctx, cancel := context.WithTimeout(ctx, discoveryTimeout)
	defer cancel()
	// go-oidc keeps the client from this context for fetching the key set later.
	p, err := oidc.NewProvider(oidc.ClientContext(ctx, d.client), d.issuer)
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil {
		d.err = fmt.Errorf("discover %s: %w", d.issuer, err)
		d.retryAt = d.now().Add(discoveryRetry)
		return nil, d.err
	}
	d.remote = &remote{
		oauth: oauth2.Config{
			ClientID:     d.clientID,
			ClientSecret: d.clientSecret,
			Endpoint:     p.Endpoint(),
			Scopes:       d.scopes,
		},
		// The verifier checks the signature, the issuer, the audience (the client id) and the
		// expiry; the nonce is checked by the caller. The expiry is the provider's timestamp, so it
		// is compared with the real time, not Options.Now.
		verifier: p.Verifier(&oidc.Config{ClientID: d.clientID}),
	}
	d.err = nil
	return d.remote, nil
}

// boundedClient returns a copy of c whose response bodies are cut off after maxProviderBody bytes:
// go-oidc reads discovery documents and key sets whole.
func boundedClient(c *http.Client) *http.Client {
	if c == nil {
		c = &http.Client{Timeout: discoveryTimeout}
	}
	cp := *c
	base := cp.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	cp.Transport = bodyLimit{base: base, max: maxProviderBody}
	return &cp
}

type bodyLimit struct {
	base http.RoundTripper
	max  int64
}

func (t bodyLimit) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	resp.Body = &limitedBody{ReadCloser: resp.Body, left: t.max}
	return resp, nil
}

var errBodyTooLarge = errors.New("response from the sign-in provider is too large")

// limitedBody fails, rather than silently truncating, once more than its limit is read.
type limitedBody struct {
	io.ReadCloser
	left int64
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		// One byte more tells a body of exactly the limit from a longer one.
		var one [1]byte
		n, err := b.ReadCloser.Read(one[:])
		if n > 0 {
			return 0, errBodyTooLarge
		}
		return 0, err
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.ReadCloser.Read(p)
	b.left -= int64(n)
	return n, err
}
