// Package schema holds the ent schemas of HopGate's store. The SQL that creates the tables lives in
// migrations/; ent never migrates the database itself, so a change here needs a new migration there.
package schema

import (
	"time"

	"entgo.io/ent"
	"entgo.io/ent/schema/field"
)

// Domain is a name served through a tunnel, with the hash of the client API key that may open it.
type Domain struct {
	ent.Schema
}

// Fields of the Domain.
func (Domain) Fields() []ent.Field {
	return []ent.Field{
		// Canonical form (lowercase, punycode, no trailing dot), so the unique constraint holds
		// across spellings of the same name.
		field.String("name").
			NotEmpty().
			MaxLen(253).
			Unique(),
		// Hex SHA-256 of the client API key; the key itself is never stored.
		field.String("key_hash").
			Sensitive(),
		field.String("memo").
			Default(""),
		field.Time("created_at").
			Default(time.Now).
			Immutable(),
		field.Time("updated_at").
			Default(time.Now).
			UpdateDefault(time.Now),
		// The access policy as JSON (policy.Spec, passwords as bcrypt hashes); "" is none. Sensitive:
		// it holds the hashes and the OIDC client secret, which ent's String() must not print.
		field.Text("policy").
			Default("").
			Sensitive(),
		// What the domain carries: "http" (the reverse proxy), "tls-passthrough" (TLS connections on
		// the HTTPS port, by SNI, untouched) or "tcp" (the connections of tcp_port).
		field.String("mode").
			Default("http"),
		// The public port of a "tcp" domain; nil otherwise. Unique across the database, so that
		// gateways sharing it never hand one port to two domains.
		field.Int("tcp_port").
			Optional().
			Nillable().
			Unique(),
		// PROXY protocol version (1 or 2) the agent writes to the target first; 0 none.
		field.Int("proxy_protocol").
			Default(0),
	}
}
