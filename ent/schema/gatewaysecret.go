package schema

import (
	"time"

	"entgo.io/ent"
	"entgo.io/ent/dialect/entsql"
	"entgo.io/ent/schema"
	"entgo.io/ent/schema/field"
)

// GatewaySecret is a secret of the gateway as a whole (not of one domain), such as the key that
// signs and encrypts single-sign-on session cookies. Every gateway on the same database shares it.
type GatewaySecret struct {
	ent.Schema
}

// Annotations of the GatewaySecret.
func (GatewaySecret) Annotations() []schema.Annotation {
	return []schema.Annotation{entsql.Annotation{Table: "gateway_secrets"}}
}

// Fields of the GatewaySecret.
func (GatewaySecret) Fields() []ent.Field {
	return []ent.Field{
		// The name is the key: a secret is created once under its name, whoever comes first
		// (INSERT … ON CONFLICT), so gateways starting together agree on one value.
		field.String("id").
			StorageKey("name").
			NotEmpty().
			MaxLen(64).
			Immutable(),
		field.Bytes("value").
			NotEmpty().
			Sensitive(),
		field.Time("created_at").
			Default(time.Now),
	}
}
