package registry

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/hopgate/hopgate/ent"
	"github.com/hopgate/hopgate/ent/domain"
	"github.com/hopgate/hopgate/ent/gatewaysecret"
	"github.com/hopgate/hopgate/internal/gateway/policy"
	"github.com/hopgate/hopgate/internal/pause"
)

// ErrInvalidPolicy: a policy that policy.Validate refuses. Such errors also wrap ErrInvalidInput and
// a *policy.FieldError that names the field.
var ErrInvalidPolicy = policy.ErrInvalid

// SessionKeySize is the length of the key SessionKey returns.
const SessionKeySize = 32

// sessionKeyName is the row of gateway_secrets that holds the SSO session key.
const sessionKeyName = "sso_session_key"

// maxHashCost bounds the bcrypt cost of a password hash given instead of a password. Every visitor's
// basic-auth check pays it: cost 12 is about four times the default's work, and a cost of 20 or more
// would let one policy tie up the gateway's CPUs for seconds per request.
const maxHashCost = 12

// setPolicyTries bounds how often SetPolicy merges again after a concurrent change of the same policy.
const setPolicyTries = 8

// Policy returns a domain's access policy, with password hashes and the OIDC client secret (for the
// gateway's own use: show it with Spec.Show); the zero Spec when the domain has none.
func (s *Store) Policy(ctx context.Context, name string) (policy.Spec, error) {
	name, err := canonical(name)
	if err != nil {
		return policy.Spec{}, err
	}
	op := "registry: policy of " + name
	// On the request path whenever the gateway's cache misses, so bounded by the caller's deadline.
	raw, err := untilDone(ctx, func() (string, error) { return s.storedPolicy(ctx, name) })
	if err != nil {
		return policy.Spec{}, classify(op, err)
	}
	spec, err := decodePolicy(raw)
	if err != nil {
		return policy.Spec{}, fmt.Errorf("%s: %w", op, err)
	}
	return spec, nil
}

func (s *Store) storedPolicy(ctx context.Context, name string) (string, error) {
	d, err := s.client.Domain.Query().Where(domain.Name(name)).Select(domain.FieldPolicy).Only(ctx)
	if err != nil {
		return "", err
	}
	return d.Policy, nil
}

// SetPolicy replaces a domain's access policy and returns it as stored (passwords replaced by their
// bcrypt hashes). Secrets are write-only, so a document read back from the API lacks them; they are
// kept from the stored policy where the new one leaves them out:
//   - a basic-auth user without a password keeps the hash stored for that user name; an unknown user
//     without one is refused (basic_auth[i].password: empty);
//   - an OIDC part without a client secret keeps the stored one if its issuer and client id are the
//     same (a secret is never carried over to another client).
//
// The zero Spec removes the policy. A refused policy fails with an error wrapping ErrInvalidPolicy,
// ErrInvalidInput and a *policy.FieldError; an unknown domain with ErrNotFound.
func (s *Store) SetPolicy(ctx context.Context, name string, spec policy.Spec) (policy.Spec, error) {
	name, err := canonical(name)
	if err != nil {
		return policy.Spec{}, err
	}
	op := "registry: set policy of " + name
	// The caller's slices and pointers are not ours to change.
	in := clonePolicy(spec)
	hashed := false
	s.policyMu.Lock()
	defer s.policyMu.Unlock()
	for try := range setPolicyTries {
		if try > 0 {
			// Another gateway wrote in between; a random pause keeps two of them from meeting again.
			if err := pause.For(ctx, time.Duration(mrand.Int64N(int64(20*time.Millisecond)))); err != nil {
				return policy.Spec{}, fmt.Errorf("%s: %w", op, err)
			}
		}
		oldRaw, err := s.storedPolicy(ctx, name)
		if err != nil {
			return policy.Spec{}, classify(op, err)
		}
		old, err := decodePolicy(oldRaw)
		if err != nil {
			return policy.Spec{}, fmt.Errorf("%s: %w", op, err)
		}
		merged := keepSecrets(in, old)
		if err := checkPolicy(merged); err != nil {
			return policy.Spec{}, err
		}
		if !hashed {
			// Once only, however often the merge is redone: bcrypt is slow by design. Hashed in
			// `in` too, so that the users it names keep their new hash on a retry.
			if err := in.HashPasswords(); err != nil {
				return policy.Spec{}, fmt.Errorf("%s: %w", op, err)
			}
			hashed = true
			merged = keepSecrets(in, old)
		}
		newRaw := ""
		if !merged.IsZero() {
			b, err := json.Marshal(merged)
			if err != nil {
				return policy.Spec{}, fmt.Errorf("%s: %w", op, err)
			}
			newRaw = string(b)
		}
		// Written only over the policy the merge read: a change made in between (by another admin
		// call or another gateway) would otherwise lose its secrets or bring back removed ones.
		n, err := s.client.Domain.Update().
			Where(domain.Name(name), domain.PolicyEQ(oldRaw)).
			SetPolicy(newRaw).
			SetUpdatedAt(now()).
			Save(ctx)
		if err != nil {
			return policy.Spec{}, classify(op, err)
		}
		if n == 1 {
			return merged, nil
		}
		// Nothing written: the policy changed meanwhile, or the domain is gone; the next read says.
	}
	return policy.Spec{}, fmt.Errorf("%s: changed concurrently %d times in a row; try again", op, setPolicyTries)
}

// checkPolicy validates a merged policy and bounds the cost of the hashes given instead of passwords.
func checkPolicy(p policy.Spec) error {
	if err := p.Validate(); err != nil {
		return &inputError{kind: ErrInvalidPolicy, cause: err}
	}
	for i, u := range p.BasicAuth {
		if u.Password != "" {
			continue
		}
		if cost, err := bcrypt.Cost([]byte(u.PasswordHash)); err == nil && cost > maxHashCost {
			return &inputError{kind: ErrInvalidPolicy, cause: fmt.Errorf("%w: %w", policy.ErrInvalid, &policy.FieldError{
				Field:  fmt.Sprintf("basic_auth[%d].password_hash", i),
				Reason: fmt.Sprintf("bcrypt cost %d is above %d (every request would pay it)", cost, maxHashCost),
			})}
		}
	}
	return nil
}

// keepSecrets returns in with the secrets it leaves out taken from old, as SetPolicy describes.
func keepSecrets(in, old policy.Spec) policy.Spec {
	out := clonePolicy(in)
	for i := range out.BasicAuth {
		u := &out.BasicAuth[i]
		if u.Password != "" || u.PasswordHash != "" {
			continue
		}
		for _, o := range old.BasicAuth {
			if o.User == u.User {
				u.PasswordHash = o.PasswordHash
				break
			}
		}
	}
	if o, prev := out.OIDC, old.OIDC; o != nil && o.ClientSecret == "" && prev != nil &&
		o.Issuer == prev.Issuer && o.ClientID == prev.ClientID {
		o.ClientSecret = prev.ClientSecret
	}
	return out
}

// clonePolicy copies the parts of p that keepSecrets and HashPasswords change.
func clonePolicy(p policy.Spec) policy.Spec {
	p.BasicAuth = slices.Clone(p.BasicAuth)
	if p.OIDC != nil {
		o := *p.OIDC
		p.OIDC = &o
	}
	return p
}

func decodePolicy(raw string) (policy.Spec, error) {
	var spec policy.Spec
	if raw == "" {
		return spec, nil
	}
	if err := json.Unmarshal([]byte(raw), &spec); err != nil {
		// Not the JSON decoder's message: it may quote the document, secrets included.
		return policy.Spec{}, errors.New("the stored policy is not valid JSON")
	}
	return spec, nil
}

// SessionKey returns the gateway-wide key of single-sign-on session cookies (SessionKeySize random
// bytes), creating it on first use. Concurrent first calls, in this process or on other gateways
// sharing the database, all get the same key: it is inserted only if absent and then read back.
func (s *Store) SessionKey(ctx context.Context) ([]byte, error) {
	const op = "registry: session key"
	key, err := untilDone(ctx, func() ([]byte, error) {
		sec, err := s.client.GatewaySecret.Get(ctx, sessionKeyName)
		if err == nil {
			return sec.Value, nil
		}
		if !ent.IsNotFound(err) {
			return nil, err
		}
		// Ignore, not DoNothing: with DO NOTHING, Postgres returns no row for ent to read the id
		// from on a conflict, and ent reports that as an error. Setting each column to itself
		// leaves a key that another caller inserted first as it is.
		err = s.client.GatewaySecret.Create().
			SetID(sessionKeyName).
			SetValue(newSessionKey()).
			SetCreatedAt(now()).
			OnConflictColumns(gatewaysecret.FieldID).
			Ignore().
			Exec(ctx)
		if err != nil {
			return nil, err
		}
		sec, err = s.client.GatewaySecret.Get(ctx, sessionKeyName)
		if err != nil {
			return nil, err
		}
		return sec.Value, nil
	})
	if err != nil {
		return nil, classify(op, err)
	}
	if len(key) != SessionKeySize {
		return nil, fmt.Errorf("%s: the stored key has %d bytes, want %d; run `hopgate-server sessions rotate-key` to replace it", op, len(key), SessionKeySize)
	}
	return key, nil
}

// RotateSessionKey replaces the session key with a new random one. Every single-sign-on session
// then ends: cookies made with the old key no longer verify, so every visitor of an OIDC-protected
// domain signs in again. Gateways that keep the key in memory must drop their copy (the admin API's
// OnSessionKeyRotated hook), and other gateways on the same database see the new key only when
// they read it again.
func (s *Store) RotateSessionKey(ctx context.Context) error {
	err := s.client.GatewaySecret.Create().
		SetID(sessionKeyName).
		SetValue(newSessionKey()).
		SetCreatedAt(now()).
		OnConflictColumns(gatewaysecret.FieldID).
		UpdateNewValues().
		Exec(ctx)
	return classify("registry: rotate session key", err)
}

func newSessionKey() []byte {
	k := make([]byte, SessionKeySize)
	// crypto/rand.Read never fails (it crashes the program if the system's source does).
	_, _ = rand.Read(k)
	return k
}
