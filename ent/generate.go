// Package ent holds the ent client generated from the schemas in ./schema.
// Everything here except generate.go and schema/ is generated: run `go generate ./ent`.
package ent

//go:generate go tool ent generate --feature sql/upsert ./schema
