package tunnelsvc

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/status"

	"github.com/hopgate/hopgate/internal/gateway/hostname"
	"github.com/hopgate/hopgate/internal/gateway/registry"
	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

// storeAuth adapts a registry store the way the gateway's own adapter (internal/gateway, not
// importable from here) does: unknown or invalid names are ErrUnknownDomain, wrong keys ErrBadKey.
type storeAuth struct{ store *registry.Store }

func (a storeAuth) Authenticate(ctx context.Context, domain, key string) (string, error) {
	d, err := a.store.Authenticate(ctx, domain, key)
	switch {
	case errors.Is(err, registry.ErrNotFound), errors.Is(err, registry.ErrInvalidInput):
		return "", fmt.Errorf("%w: %w", ErrUnknownDomain, err)
	case errors.Is(err, registry.ErrKeyMismatch):
		return "", fmt.Errorf("%w: %w", ErrBadKey, err)
	case err != nil:
		return "", err
	}
	return d.Name, nil
}

// FuzzHelloAuthenticate sends fuzzed Hellos to a real Service backed by a real registry store and
// checks that a tunnel is accepted only for a registered domain with that domain's own key.
//
// keyRef picks a registered key (1..3) that key is appended to, so that the fuzzer can reach the
// real keys, which are random; 0 uses key alone.
func FuzzHelloAuthenticate(f *testing.F) {
	store, err := registry.Open(context.Background(), registry.Options{DataDir: filepath.Join(f.TempDir(), "data")})
	if err != nil {
		f.Fatalf("registry.Open: %v", err)
	}
	f.Cleanup(func() { store.Close() })
	names := []string{"alpha.example.test", "beta.example.test", "*.apps.example.test"}
	keys := map[string]string{}
	var keyList []string
	for _, n := range names {
		_, k, err := store.Register(context.Background(), n, "")
		if err != nil {
			f.Fatalf("Register %s: %v", n, err)
		}
		keys[n] = k
		keyList = append(keyList, k)
	}

	const rightRight = "alpha.example.test"
	seeds := []struct {
		domain, agentID, key, caps string
		keyRef                     uint8
	}{
		{rightRight, "agent-1", "", "raw-streams", 1},                 // right key, right domain
		{"beta.example.test", "agent-1", "", "", 1},                   // right key, wrong domain
		{"*.apps.example.test", "a", "", "", 3},                       // wildcard with its key
		{"*.apps.example.test", "a", "", "", 2},                       // wildcard with another's key
		{"x.apps.example.test", "a", "", "", 3},                       // a name under the wildcard is not the wildcard
		{"ALPHA.Example.TEST", "agent-1", "", "", 1},                  // case variant
		{"alpha.example.test.", "agent-1", "", "", 1},                 // trailing dot
		{"alpha.example.test..", "agent-1", "", "", 1},                // two trailing dots
		{" alpha.example.test ", "agent-1", "", "", 1},                // spaces
		{"alpha.example.test", "agent-1", " ", "", 1},                 // key with a trailing space
		{"alpha.example.test", "agent-1", "\x00", "", 1},              // key with a trailing NUL
		{"alpha.example.test\x00", "agent-1", "", "", 1},              // domain with a NUL
		{"alpha.example.test\x00beta.example.test", "", "", "", 2},    // NUL-joined names
		{"álpha.example.test", "agent-1", "", "", 1},                  // unicode look-alike
		{"xn--lpha-2qa.example.test", "agent-1", "", "", 1},           // its punycode form
		{"аlpha.example.test", "agent-1", "", "", 1},                  // Cyrillic a
		{"", "", "", "", 0},                                           // empty
		{"alpha.example.test", "", "", "", 0},                         // empty key
		{strings.Repeat("a", 10000) + ".example.test", "", "", "", 1}, // very long name
		{"alpha.example.test", strings.Repeat("x", 10000), strings.Repeat("k", 10000), strings.Repeat("c,", 1000), 0},
	}
	for _, s := range seeds {
		f.Add(s.domain, s.agentID, s.key, s.caps, s.keyRef)
	}

	f.Fuzz(func(t *testing.T, domain, agentID, key, caps string, keyRef uint8) {
		if int(keyRef) >= 1 && int(keyRef) <= len(keyList) {
			key = keyList[keyRef-1] + key
		}
		// protobuf strings are UTF-8; a Hello that is not never leaves the agent.
		domain, agentID, key, caps = valid(domain), valid(agentID), valid(key), valid(caps)
		var capList []string
		if caps != "" {
			capList = strings.Split(caps, ",")
		}

		_, hub, cc, _ := startService(t, storeAuth{store})
		stream, endCall := openTunnel(t, cc)
		defer endCall()
		h := &tunnelv1.Hello{Domain: domain, AgentId: agentID, ApiKey: key, Version: "fuzz", InitialWindow: 512 << 10, Capabilities: capList}
		if err := stream.Send(&tunnelv1.TunnelFrame{Kind: &tunnelv1.TunnelFrame_Hello{Hello: h}}); err != nil {
			t.Fatalf("Send: %v", err)
		}
		first, err := stream.Recv()
		acc := first.GetAccepted()
		if err != nil || acc == nil {
			if _, ok := status.FromError(err); !ok || err == nil {
				t.Fatalf("hello %q/%q: answer %v, %v; want Accepted or a status", domain, key, first, err)
			}
			if domain == rightRight && key == keys[rightRight] {
				t.Fatalf("the right key for %s was refused: %v", rightRight, err)
			}
			return
		}

		canon, cerr := hostname.CanonicalDomain(domain)
		want, registered := keys[canon]
		switch {
		case cerr != nil:
			t.Fatalf("accepted %q, which is not a valid domain (%v)", domain, cerr)
		case !registered:
			t.Fatalf("accepted %q (canonical %q), which is not registered", domain, canon)
		case key != want:
			t.Fatalf("accepted %q with a key that is not its own", domain)
		case acc.PublicUrl != "https://"+canon+":8443":
			t.Fatalf("accepted %q as %q", domain, acc.PublicUrl)
		}
		deadline := time.Now().Add(5 * time.Second)
		for a := hub.Pick(canon); a == nil || a.Domain != canon; a = hub.Pick(canon) {
			if time.Now().After(deadline) {
				t.Fatalf("accepted %q, but the hub has %+v for %s", domain, a, canon)
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
}

func valid(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }
