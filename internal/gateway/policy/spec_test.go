package policy

import (
	"errors"
	"testing"
)

// TestMaxBodyBytes: a body limit alone is a policy (stored, enforced, shown), and one outside
// [0, MaxBodyLimit] is refused naming the field.
func TestMaxBodyBytes(t *testing.T) {
	s, err := Parse([]byte(`{"max_body_bytes": 1000}`))
	if err != nil {
		t.Fatal(err)
	}
	if s.IsZero() {
		t.Error("a policy with only max_body_bytes reads as no policy: it would not be stored")
	}
	if got := s.Show().MaxBodyBytes; got != 1000 {
		t.Errorf("shown max_body_bytes %d, want 1000", got)
	}
	for _, doc := range []string{`{"max_body_bytes": -1}`, `{"max_body_bytes": 1099511627777}`} {
		_, err := Parse([]byte(doc))
		var fe *FieldError
		if !errors.Is(err, ErrInvalid) || !errors.As(err, &fe) || fe.Field != "max_body_bytes" {
			t.Errorf("%s: %v, want an invalid max_body_bytes", doc, err)
		}
	}
}
