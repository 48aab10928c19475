package schema

import (
	"time"

	"entgo.io/ent"
	"entgo.io/ent/dialect/entsql"
	"entgo.io/ent/schema"
	"entgo.io/ent/schema/field"
	"entgo.io/ent/schema/index"
)

// GatewayAgent is one gateway's presence: how many agents of a domain are connected to it, as of its
// last heartbeat. Every gateway of a cluster (several gateways on one Postgres) rewrites its own rows
// every few seconds; readers ignore rows whose heartbeat is older than a few periods, so a gateway
// that died stops counting on its own. The row with the empty domain is the gateway itself (agents:
// its total), so that a gateway without tunnels still counts as live.
type GatewayAgent struct {
	ent.Schema
}

// Annotations of the GatewayAgent.
func (GatewayAgent) Annotations() []schema.Annotation {
	return []schema.Annotation{entsql.Annotation{Table: "gateway_agents"}}
}

// Fields of the GatewayAgent.
func (GatewayAgent) Fields() []ent.Field {
	return []ent.Field{
		// HOP_SERVER_ID of the gateway.
		field.String("gateway_id").
			NotEmpty().
			MaxLen(64),
		// Canonical domain name; "" for the gateway's own row.
		field.String("domain").
			MaxLen(253).
			Default(""),
		field.Int("agents").
			NonNegative().
			Default(0),
		// Set by the database's clock (now()), so that gateways whose clocks differ agree on age.
		field.Time("heartbeat_at").
			Default(time.Now),
	}
}

// Indexes of the GatewayAgent.
func (GatewayAgent) Indexes() []ent.Index {
	return []ent.Index{
		index.Fields("gateway_id", "domain").Unique(),
		index.Fields("heartbeat_at"),
	}
}
