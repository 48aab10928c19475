package policy

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"
)

// FuzzParse feeds Parse arbitrary documents: it never panics, every refusal wraps ErrInvalid, and a
// document it accepts, written back as JSON (as the registry stores it), reads back as the same Spec.
func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		`{}`,
		`null`,
		`{"ip_allow":["203.0.113.0/24","2001:db8::/32"],"ip_deny":["203.0.113.7","::ffff:192.0.2.1"]}`,
		`{"basic_auth":[{"user":"ops","password":"s3cret"}]}`,
		`{"basic_auth":[{"user":"ops","password_hash":"$2a$10$T.NtQ0IB6rZyvwGyMVELAuYRK3/OgdeCuRXjBQbZYot1/tao07/ny"}]}`,
		`{"rate_limit":{"rps":20,"burst":40}}`,
		`{"max_body_bytes":1048576}`,
		`{"rate_limit":{"rps":1e-9,"burst":1}}`,
		`{"oidc":{"issuer":"https://id.example.com","client_id":"hopgate","client_secret":"x",` +
			`"allowed_emails":["a@example.com"],"allowed_domains":["example.com"],"allowed_groups":["ops"],"groups_claim":"roles"}}`,
		`{"ip_allow":[]}`,
		`{"IP_ALLOW":["10.0.0.0/8"]}`,
		`{"ip_allow":["10.0.0.0/8"]} {}`,
		`{"unknown":1}`,
		`{"basic_auth":[{"user":"a:b","password":"x"}]}`,
		`{"rate_limit":{"rps":0,"burst":1}}`,
		`{"ip_deny":["<\u00e9>"]}`,
		"{\"basic_auth\":[{\"user\":\"\xff\",\"password\":\"x\"}]}",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse(data)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Parse(%q) = %v, not wrapping ErrInvalid", data, err)
			}
			return
		}
		again, err := json.Marshal(s)
		if err != nil {
			t.Fatalf("Marshal of an accepted policy: %v", err)
		}
		s2, err := Parse(again)
		if err != nil {
			t.Fatalf("Parse(%q) accepted, its re-marshalled %q refused: %v", data, again, err)
		}
		if !reflect.DeepEqual(normalize(s), normalize(s2)) {
			t.Fatalf("round trip changed the policy:\n%q\n%+v\n%q\n%+v", data, s, again, s2)
		}
		if s.IsZero() != s2.IsZero() {
			t.Fatalf("IsZero changed in the round trip of %q", data)
		}
	})
}

// normalize makes empty lists nil: omitempty writes neither, so both read back as nil, and they mean
// the same.
func normalize(s Spec) Spec {
	nilIfEmpty := func(l []string) []string {
		if len(l) == 0 {
			return nil
		}
		return l
	}
	s.IPAllow, s.IPDeny = nilIfEmpty(s.IPAllow), nilIfEmpty(s.IPDeny)
	if len(s.BasicAuth) == 0 {
		s.BasicAuth = nil
	}
	if s.OIDC != nil {
		o := *s.OIDC
		o.AllowedEmails, o.AllowedDomains, o.AllowedGroups = nilIfEmpty(o.AllowedEmails), nilIfEmpty(o.AllowedDomains), nilIfEmpty(o.AllowedGroups)
		s.OIDC = &o
	}
	return s
}
