package httpwire

import (
	"net/http"
	"reflect"
	"slices"
	"strings"
	"testing"

	tunnelv1 "github.com/hopgate/hopgate/proto/hopgate/tunnel/v1"
)

// FuzzHeaderMapping checks the HTTP <-> frame header mapping. The input is header lines
// "name=value1,value2" separated by newlines; names may be anything (lowercase as HTTP/2 sends them,
// mixed case, empty, with spaces or control bytes). Checked:
//   - a header map with canonical names survives ToWire then FromWire unchanged, every value in
//     order, and the copy shares no storage with the original;
//   - FromWire canonicalises every name and keeps all values of all fields with the same
//     canonical name, in wire order; a map with non-canonical names loses no value either;
//   - Fill writes the same values into an existing map and leaves other entries alone;
//   - Announced(TrailerNames(t)) names exactly the canonical names of t, with no values.
func FuzzHeaderMapping(f *testing.F) {
	for _, s := range []string{
		"",
		"Content-Type=text/plain",
		"set-cookie=a=1\nset-cookie=b=2\nSet-Cookie=c=3",
		"x-multi=1,2,3\nX-Multi=4",
		"=empty name\n \t=\nfoo bar=spaced\nx_under=1",
		"content-length=5\ntransfer-encoding=chunked\nhost=a.example.com\nte=trailers",
		"grpc-status=0\ngrpc-message=ok\ntrailer=grpc-status",
		"\xff\xfe=bad utf8\nx-nul=a\x00b\nx-crlf=a\r\nb",
		"accept-encoding=\nx-empty=,,",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		type field struct {
			name   string
			values []string
		}
		var fields []field
		for line := range strings.SplitSeq(in, "\n") {
			if line == "" {
				continue
			}
			name, value, _ := strings.Cut(line, "=")
			fields = append(fields, field{name, strings.Split(value, ",")})
		}

		// Canonical names: the round trip is the identity.
		canon := http.Header{}
		for _, fl := range fields {
			for _, v := range fl.values {
				canon.Add(fl.name, v)
			}
		}
		orig := canon.Clone()
		back := FromWire(ToWire(canon))
		if !reflect.DeepEqual(back, orig) {
			t.Errorf("round trip of canonical header changed it:\n got %q\nwant %q", back, orig)
		}
		for k, vs := range back {
			for i := range vs {
				vs[i] = "mutated"
			}
			back[k] = append(vs, "more")
		}
		if !reflect.DeepEqual(canon, orig) {
			t.Errorf("changing FromWire's result changed the map given to ToWire:\n got %q\nwant %q", canon, orig)
		}

		// Any wire list: FromWire canonicalises and concatenates in wire order.
		var wire []*tunnelv1.Header
		want := http.Header{}
		for _, fl := range fields {
			wire = append(wire, &tunnelv1.Header{Name: fl.name, Values: fl.values})
			c := http.CanonicalHeaderKey(fl.name)
			want[c] = append(want[c], fl.values...)
		}
		got := FromWire(wire)
		for k := range got {
			if http.CanonicalHeaderKey(k) != k {
				t.Errorf("FromWire kept the non-canonical name %q", k)
			}
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("FromWire(%q):\n got %q\nwant %q", in, got, want)
		}

		// Non-canonical map keys (set directly, as a handler may): no value is lost, each key's values
		// stay together and in order. The order between keys that merge follows map iteration.
		raw := http.Header{}
		for _, fl := range fields {
			raw[fl.name] = append(raw[fl.name], fl.values...)
		}
		merged := FromWire(ToWire(raw))
		for k, vs := range raw {
			c := http.CanonicalHeaderKey(k)
			if len(vs) > 0 && !containsRun(merged[c], vs) {
				t.Errorf("values %q of %q are not kept in order under %q: %q", vs, k, c, merged[c])
			}
		}
		for c, vs := range merged {
			var all []string
			for k, rvs := range raw {
				if http.CanonicalHeaderKey(k) == c {
					all = append(all, rvs...)
				}
			}
			if !sameMultiset(vs, all) {
				t.Errorf("%q after the round trip holds %q; the map held %q", c, vs, all)
			}
		}

		// Fill: the same values as FromWire for names that appear once, into the map given.
		distinct := true
		seen := map[string]bool{}
		for _, h := range wire {
			c := http.CanonicalHeaderKey(h.Name)
			distinct = distinct && !seen[c]
			seen[c] = true
		}
		if distinct {
			names := make([]string, 0, len(wire))
			for _, h := range wire {
				names = append(names, h.Name)
			}
			dst := Announced(names)
			if dst == nil {
				dst = http.Header{}
			}
			dst["X-Fuzz-Kept"] = []string{"kept"}
			Fill(dst, wire)
			kept := dst["X-Fuzz-Kept"]
			if !seen["X-Fuzz-Kept"] && !slices.Equal(kept, []string{"kept"}) {
				t.Errorf("Fill changed an entry it was not given: %q", kept)
			}
			delete(dst, "X-Fuzz-Kept")
			if !seen["X-Fuzz-Kept"] && !equalHeaders(dst, want) {
				t.Errorf("Fill(%q):\n got %q\nwant %q", in, dst, want)
			}
		}

		// Trailer names: Announced(TrailerNames(t)) is t's canonical names, without values.
		ann := Announced(TrailerNames(raw))
		if len(raw) == 0 && ann != nil {
			t.Errorf("Announced(TrailerNames(empty)) = %q, want nil", ann)
		}
		for k := range raw {
			c := http.CanonicalHeaderKey(k)
			if v, ok := ann[c]; !ok || v != nil {
				t.Errorf("trailer %q: announced as %q=%q (present %v), want present with no values", k, c, v, ok)
			}
		}
		for c := range ann {
			if _, ok := merged[c]; !ok {
				t.Errorf("announced %q, which the trailer map did not name", c)
			}
		}
	})
}

// containsRun reports whether run occurs in s as consecutive elements.
func containsRun(s, run []string) bool {
	for i := 0; i+len(run) <= len(s); i++ {
		if slices.Equal(s[i:i+len(run)], run) {
			return true
		}
	}
	return false
}

func sameMultiset(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// equalHeaders compares two header maps, treating a nil and an empty value list as the same.
func equalHeaders(a, b http.Header) bool {
	if len(a) != len(b) {
		return false
	}
	for k, av := range a {
		bv, ok := b[k]
		if !ok || !slices.Equal(av, bv) {
			return false
		}
	}
	return true
}
