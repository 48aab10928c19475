package access

import (
	"net/netip"
	"slices"

	"github.com/hopgate/hopgate/internal/gateway/policy"
)

// prefixSet is a list of IP prefixes made into one map lookup per distinct prefix length, so that a
// list of a thousand CIDRs costs a request a handful of lookups rather than a thousand comparisons.
type prefixSet struct {
	bits4, bits6 []int // the prefix lengths present, per family
	set          map[netip.Prefix]struct{}
}

func newPrefixSet(list []string) (prefixSet, error) {
	var s prefixSet
	if len(list) == 0 {
		return s, nil
	}
	s.set = make(map[netip.Prefix]struct{}, len(list))
	for _, v := range list {
		// Masked and unmapped by ParsePrefix, as the visitor's address is before the lookup.
		p, err := policy.ParsePrefix(v)
		if err != nil {
			return prefixSet{}, err
		}
		s.set[p] = struct{}{}
		bits := &s.bits6
		if p.Addr().Is4() {
			bits = &s.bits4
		}
		if !slices.Contains(*bits, p.Bits()) {
			*bits = append(*bits, p.Bits())
		}
	}
	return s, nil
}

// contains reports whether a (unmapped, without zone) is in one of the prefixes. An invalid address
// is in none.
func (s prefixSet) contains(a netip.Addr) bool {
	if len(s.set) == 0 || !a.IsValid() {
		return false
	}
	bits := s.bits6
	if a.Is4() {
		bits = s.bits4
	}
	for _, b := range bits {
		if p, err := a.Prefix(b); err == nil {
			if _, ok := s.set[p]; ok {
				return true
			}
		}
	}
	return false
}
