package registry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/hopgate/hopgate/internal/gateway/policy"
	"github.com/hopgate/hopgate/migrations"
)

// rawPolicy reads the policy column as stored.
func rawPolicy(t *testing.T, s *Store, name string) string {
	t.Helper()
	var raw string
	if err := s.db.QueryRow("SELECT policy FROM domains WHERE name = '" + name + "'").Scan(&raw); err != nil {
		t.Fatalf("read policy column: %v", err)
	}
	return raw
}

func fieldOf(t *testing.T, err error) string {
	t.Helper()
	var fe *policy.FieldError
	if !errors.As(err, &fe) {
		t.Fatalf("error %v carries no *policy.FieldError", err)
	}
	return fe.Field
}

func TestPolicy(t *testing.T) {
	t.Parallel()
	forEach(t, func(t *testing.T, o Options) {
		ctx := context.Background()
		s := open(t, o)
		d, _, err := s.Register(ctx, "shop.example.com", "")
		if err != nil {
			t.Fatal(err)
		}

		if p, err := s.Policy(ctx, "SHOP.example.com."); err != nil || !p.IsZero() {
			t.Fatalf("Policy before any = %+v, %v; want the zero Spec", p, err)
		}
		if raw := rawPolicy(t, s, "shop.example.com"); raw != "" {
			t.Fatalf("column before any policy = %q", raw)
		}

		in := policy.Spec{
			IPAllow:   []string{"203.0.113.0/24", "2001:db8::/32"},
			IPDeny:    []string{"203.0.113.7"},
			BasicAuth: []policy.BasicUser{{User: "ops", Password: "first-password"}},
			RateLimit: &policy.RateLimit{RPS: 20, Burst: 40},
			OIDC: &policy.OIDC{Issuer: "https://id.example.com", ClientID: "hopgate", ClientSecret: "client-secret-1",
				AllowedDomains: []string{"example.com"}},
		}
		time.Sleep(2 * time.Millisecond)
		got, err := s.SetPolicy(ctx, "Shop.Example.com", in)
		if err != nil {
			t.Fatal(err)
		}
		if in.BasicAuth[0].Password != "first-password" || in.BasicAuth[0].PasswordHash != "" {
			t.Fatalf("SetPolicy changed the caller's spec: %+v", in.BasicAuth)
		}
		opsHash := got.BasicAuth[0].PasswordHash
		if got.BasicAuth[0].Password != "" || bcrypt.CompareHashAndPassword([]byte(opsHash), []byte("first-password")) != nil {
			t.Fatalf("stored user %+v: want no password and a bcrypt hash of it", got.BasicAuth[0])
		}
		if got.OIDC.ClientSecret != "client-secret-1" || !reflect.DeepEqual(got.IPAllow, in.IPAllow) || *got.RateLimit != *in.RateLimit {
			t.Fatalf("SetPolicy returned %+v", got)
		}
		if read, err := s.Policy(ctx, "shop.example.com"); err != nil || !reflect.DeepEqual(read, got) {
			t.Fatalf("Policy = %+v, %v; want what SetPolicy returned, %+v", read, err, got)
		}
		if raw := rawPolicy(t, s, "shop.example.com"); strings.Contains(raw, "first-password") || !strings.Contains(raw, opsHash) {
			t.Fatalf("stored column %q: want the hash and never the password", raw)
		}
		if after, _ := s.Get(ctx, "shop.example.com"); !after.UpdatedAt.After(d.UpdatedAt) {
			t.Fatalf("updated_at %v not after %v", after.UpdatedAt, d.UpdatedAt)
		}

		// Read back from the API, the document has no secrets: sent again with a user added, the
		// known user and the OIDC client keep theirs.
		again := policy.Spec{
			IPAllow:   in.IPAllow,
			BasicAuth: []policy.BasicUser{{User: "dev", Password: "second-password"}, {User: "ops"}},
			OIDC:      &policy.OIDC{Issuer: "https://id.example.com", ClientID: "hopgate"},
		}
		got, err = s.SetPolicy(ctx, "shop.example.com", again)
		if err != nil {
			t.Fatal(err)
		}
		if len(got.BasicAuth) != 2 || got.BasicAuth[1].PasswordHash != opsHash ||
			bcrypt.CompareHashAndPassword([]byte(got.BasicAuth[0].PasswordHash), []byte("second-password")) != nil {
			t.Fatalf("after the merge users %+v; ops should keep %s", got.BasicAuth, opsHash)
		}
		if got.OIDC.ClientSecret != "client-secret-1" || got.RateLimit != nil || got.IPDeny != nil {
			t.Fatalf("after the merge %+v: the secret kept, the parts left out gone", got)
		}

		// A secret never moves to another client, and a user the store does not know needs a password.
		got, err = s.SetPolicy(ctx, "shop.example.com", policy.Spec{OIDC: &policy.OIDC{Issuer: "https://id.example.com", ClientID: "other"}})
		if err != nil || got.OIDC.ClientSecret != "" {
			t.Fatalf("new client id: %+v, %v; want no secret carried over", got.OIDC, err)
		}
		if _, err := s.SetPolicy(ctx, "shop.example.com", policy.Spec{OIDC: &policy.OIDC{Issuer: "https://other.example.com", ClientID: "other"}}); err != nil {
			t.Fatal(err)
		}
		_, err = s.SetPolicy(ctx, "shop.example.com", policy.Spec{BasicAuth: []policy.BasicUser{{User: "ops"}, {User: "nobody"}}})
		if !errors.Is(err, ErrInvalidInput) || !errors.Is(err, ErrInvalidPolicy) || fieldOf(t, err) != "basic_auth[0].password" {
			t.Fatalf("users without passwords the store no longer has: %v; want basic_auth[0].password", err)
		}

		// The zero Spec removes the policy.
		if got, err := s.SetPolicy(ctx, "shop.example.com", policy.Spec{}); err != nil || !got.IsZero() {
			t.Fatalf("SetPolicy(zero) = %+v, %v", got, err)
		}
		if raw := rawPolicy(t, s, "shop.example.com"); raw != "" {
			t.Fatalf("column after removal = %q", raw)
		}

		// The policy goes with the domain: a new registration of the name starts without one.
		if _, err := s.SetPolicy(ctx, "shop.example.com", in); err != nil {
			t.Fatal(err)
		}
		if err := s.Unregister(ctx, "shop.example.com", ""); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Policy(ctx, "shop.example.com"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Policy after Unregister: %v, want ErrNotFound", err)
		}
		if _, _, err := s.Register(ctx, "shop.example.com", ""); err != nil {
			t.Fatal(err)
		}
		if p, err := s.Policy(ctx, "shop.example.com"); err != nil || !p.IsZero() {
			t.Fatalf("Policy of the registered-again name = %+v, %v; want none", p, err)
		}
		if _, err := s.SetPolicy(ctx, "shop.example.com", policy.Spec{BasicAuth: []policy.BasicUser{{User: "ops"}}}); fieldOf(t, err) != "basic_auth[0].password" {
			t.Fatalf("the old hash survived the unregistration: %v", err)
		}

		for _, name := range []string{"unknown.example.com"} {
			if _, err := s.Policy(ctx, name); !errors.Is(err, ErrNotFound) {
				t.Errorf("Policy(%s): %v, want ErrNotFound", name, err)
			}
			if _, err := s.SetPolicy(ctx, name, in); !errors.Is(err, ErrNotFound) {
				t.Errorf("SetPolicy(%s): %v, want ErrNotFound", name, err)
			}
		}
	})
}

func TestSetPolicyInvalid(t *testing.T) {
	t.Parallel()
	s := open(t, backends[0].options(t))
	ctx := context.Background()
	if _, _, err := s.Register(ctx, "v.example.com", ""); err != nil {
		t.Fatal(err)
	}
	cheap, err := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	// Only the cost field is read before a comparison; making such a hash for real would take seconds.
	costly := strings.Replace(string(cheap), fmt.Sprintf("$%02d$", bcrypt.MinCost), fmt.Sprintf("$%02d$", maxHashCost+1), 1)
	tests := []struct {
		name, field string
		spec        policy.Spec
	}{
		{"bad cidr", "ip_deny[1]", policy.Spec{IPDeny: []string{"192.0.2.0/24", "300.1.1.1"}}},
		{"empty user", "basic_auth[0].user", policy.Spec{BasicAuth: []policy.BasicUser{{Password: "x"}}}},
		{"zero rate", "rate_limit.rps", policy.Spec{RateLimit: &policy.RateLimit{Burst: 1}}},
		{"no issuer", "oidc.issuer", policy.Spec{OIDC: &policy.OIDC{ClientID: "c"}}},
		{"not a hash", "basic_auth[0].password_hash", policy.Spec{BasicAuth: []policy.BasicUser{{User: "u", PasswordHash: "plain"}}}},
		{"costly hash", "basic_auth[0].password_hash", policy.Spec{BasicAuth: []policy.BasicUser{{User: "u", PasswordHash: costly}}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.SetPolicy(ctx, "v.example.com", tc.spec)
			if !errors.Is(err, ErrInvalidInput) || !errors.Is(err, ErrInvalidPolicy) || fieldOf(t, err) != tc.field {
				t.Fatalf("SetPolicy: %v; want an invalid-input error naming %s", err, tc.field)
			}
			if !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("message %q does not name %s", err, tc.field)
			}
		})
	}
	if raw := rawPolicy(t, s, "v.example.com"); raw != "" {
		t.Fatalf("a refused policy was stored: %q", raw)
	}
	// A hash of bounded cost given instead of a password is stored as it is.
	got, err := s.SetPolicy(ctx, "v.example.com", policy.Spec{BasicAuth: []policy.BasicUser{{User: "u", PasswordHash: string(cheap)}}})
	if err != nil || got.BasicAuth[0].PasswordHash != string(cheap) {
		t.Fatalf("SetPolicy with a cheap hash = %+v, %v", got, err)
	}
}

// TestSetPolicyConcurrent: concurrent writers of one policy each succeed, the last one's document
// wins whole, and a kept password hash is never lost on the way.
func TestSetPolicyConcurrent(t *testing.T) {
	t.Parallel()
	forEach(t, func(t *testing.T, o Options) {
		ctx := context.Background()
		s := open(t, o)
		if _, _, err := s.Register(ctx, "busy.example.com", ""); err != nil {
			t.Fatal(err)
		}
		first, err := s.SetPolicy(ctx, "busy.example.com", policy.Spec{BasicAuth: []policy.BasicUser{{User: "ops", Password: "pw"}}})
		if err != nil {
			t.Fatal(err)
		}
		const n = 8
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				_, err := s.SetPolicy(ctx, "busy.example.com", policy.Spec{
					IPAllow:   []string{fmt.Sprintf("192.0.2.%d", i)},
					BasicAuth: []policy.BasicUser{{User: "ops"}},
				})
				if err != nil {
					t.Errorf("writer %d: %v", i, err)
				}
			})
		}
		wg.Wait()
		p, err := s.Policy(ctx, "busy.example.com")
		if err != nil || len(p.IPAllow) != 1 || len(p.BasicAuth) != 1 || p.BasicAuth[0].PasswordHash != first.BasicAuth[0].PasswordHash {
			t.Fatalf("after %d concurrent writers: %+v, %v", n, p, err)
		}
	})
}

func TestSessionKey(t *testing.T) {
	t.Parallel()
	forEach(t, func(t *testing.T, o Options) {
		ctx := context.Background()
		// Two stores on one database stand for two gateways starting together.
		stores := []*Store{open(t, o), open(t, o)}
		const n = 16
		keys := make([][]byte, n)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range n {
			wg.Go(func() {
				<-start
				k, err := stores[i%2].SessionKey(ctx)
				if err != nil {
					t.Errorf("SessionKey: %v", err)
				}
				keys[i] = k
			})
		}
		close(start)
		wg.Wait()
		if t.Failed() {
			return
		}
		first := keys[0]
		if len(first) != SessionKeySize || bytes.Equal(first, make([]byte, SessionKeySize)) {
			t.Fatalf("key %x: want %d random bytes", first, SessionKeySize)
		}
		for i, k := range keys {
			if !bytes.Equal(k, first) {
				t.Fatalf("caller %d got another key than caller 0", i)
			}
		}
		var rows int
		if err := stores[0].db.QueryRow("SELECT count(*) FROM gateway_secrets").Scan(&rows); err != nil || rows != 1 {
			t.Fatalf("%d secret rows (%v), want 1", rows, err)
		}

		// It survives a restart.
		stores[1].Close()
		if k, err := open(t, o).SessionKey(ctx); err != nil || !bytes.Equal(k, first) {
			t.Fatalf("after reopening: %x, %v; want the same key", k, err)
		}

		if err := stores[0].RotateSessionKey(ctx); err != nil {
			t.Fatal(err)
		}
		rotated, err := stores[0].SessionKey(ctx)
		if err != nil || len(rotated) != SessionKeySize || bytes.Equal(rotated, first) {
			t.Fatalf("after rotation %x, %v; want a new key", rotated, err)
		}
		if k, err := open(t, o).SessionKey(ctx); err != nil || !bytes.Equal(k, rotated) {
			t.Fatalf("another store after rotation: %x, %v", k, err)
		}

		// A key of the wrong size is refused, not used.
		update := "UPDATE gateway_secrets SET value = ?"
		if stores[0].dialect == migrations.Postgres {
			update = "UPDATE gateway_secrets SET value = $1"
		}
		if _, err := stores[0].db.Exec(update, []byte("short")); err != nil {
			t.Fatal(err)
		}
		if _, err := stores[0].SessionKey(ctx); err == nil || !strings.Contains(err.Error(), "rotate-key") {
			t.Fatalf("SessionKey with a 5-byte key: %v, want an error saying how to repair it", err)
		}
	})
}

// TestRotateSessionKeyFirst: rotating before any key exists creates one.
func TestRotateSessionKeyFirst(t *testing.T) {
	t.Parallel()
	forEach(t, func(t *testing.T, o Options) {
		s := open(t, o)
		if err := s.RotateSessionKey(context.Background()); err != nil {
			t.Fatal(err)
		}
		if k, err := s.SessionKey(context.Background()); err != nil || len(k) != SessionKeySize {
			t.Fatalf("SessionKey = %x, %v", k, err)
		}
	})
}
