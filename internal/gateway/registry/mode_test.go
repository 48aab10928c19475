package registry

import (
	"context"
	"errors"
	"testing"
)

// TestModes: a domain's mode, port and PROXY version are stored, listed and changed; a port is held
// by one domain at a time, released when its domain leaves tcp mode or is unregistered.
func TestModes(t *testing.T) {
	t.Parallel()
	forEach(t, func(t *testing.T, o Options) {
		ctx := context.Background()
		s := open(t, o)
		d, _, err := s.RegisterMode(ctx, "ssh.example.com", "", Mode{Mode: ModeTCP, TCPPort: 20001, ProxyProtocol: 2})
		if err != nil || d.Mode != (Mode{ModeTCP, 20001, 2}) {
			t.Fatalf("RegisterMode tcp = %+v, %v", d, err)
		}
		if d, _, err := s.Register(ctx, "web.example.com", ""); err != nil || d.Mode != (Mode{Mode: ModeHTTP}) {
			t.Fatalf("Register = %+v, %v", d, err)
		}
		// The port is the whole database's: another domain cannot have it, by register or by SetMode.
		if _, _, err := s.RegisterMode(ctx, "db.example.com", "", Mode{Mode: ModeTCP, TCPPort: 20001}); !errors.Is(err, ErrPortTaken) {
			t.Fatalf("register on a taken port: %v; want ErrPortTaken", err)
		}
		if _, err := s.SetMode(ctx, "web.example.com", Mode{Mode: ModeTCP, TCPPort: 20001}); !errors.Is(err, ErrPortTaken) {
			t.Fatalf("SetMode to a taken port: %v; want ErrPortTaken", err)
		}
		// A taken name is still ErrExists, whatever the port.
		if _, _, err := s.RegisterMode(ctx, "ssh.example.com", "", Mode{Mode: ModeTCP, TCPPort: 20002}); !errors.Is(err, ErrExists) {
			t.Fatalf("register a taken name: %v; want ErrExists", err)
		}
		if got, err := s.SetMode(ctx, "web.example.com", Mode{Mode: ModePassthrough, ProxyProtocol: 1}); err != nil || got.Mode != (Mode{ModePassthrough, 0, 1}) {
			t.Fatalf("SetMode passthrough = %+v, %v", got, err)
		}
		raw, err := s.RawDomains(ctx)
		if err != nil || len(raw) != 2 || raw[0].Name != "ssh.example.com" || raw[1].Name != "web.example.com" {
			t.Fatalf("RawDomains = %+v, %v", raw, err)
		}
		// Leaving tcp mode releases the port; unregistering does too.
		if got, err := s.SetMode(ctx, "ssh.example.com", Mode{Mode: ModeHTTP}); err != nil || got.Mode != (Mode{Mode: ModeHTTP}) {
			t.Fatalf("SetMode http = %+v, %v", got, err)
		}
		if _, _, err := s.RegisterMode(ctx, "db.example.com", "", Mode{Mode: ModeTCP, TCPPort: 20001}); err != nil {
			t.Fatalf("register on a released port: %v", err)
		}
		if err := s.Unregister(ctx, "db.example.com", ""); err != nil {
			t.Fatal(err)
		}
		if _, err := s.SetMode(ctx, "web.example.com", Mode{Mode: ModeTCP, TCPPort: 20001}); err != nil {
			t.Fatalf("SetMode onto a port freed by unregister: %v", err)
		}
		if _, err := s.SetMode(ctx, "nobody.example.com", Mode{Mode: ModeHTTP}); !errors.Is(err, ErrNotFound) {
			t.Fatalf("SetMode of an unknown domain: %v; want ErrNotFound", err)
		}
	})
}

func TestModeInvalid(t *testing.T) {
	t.Parallel()
	forEach(t, func(t *testing.T, o Options) {
		ctx := context.Background()
		s := open(t, o)
		if _, _, err := s.Register(ctx, "v.example.com", ""); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name, domain string
			m            Mode
		}{
			{"unknown mode", "v.example.com", Mode{Mode: "udp"}},
			{"tcp without port", "v.example.com", Mode{Mode: ModeTCP}},
			{"port out of range", "v.example.com", Mode{Mode: ModeTCP, TCPPort: 70000}},
			{"port on http", "v.example.com", Mode{Mode: ModeHTTP, TCPPort: 20000}},
			{"proxy protocol on http", "v.example.com", Mode{Mode: ModeHTTP, ProxyProtocol: 1}},
			{"proxy protocol 3", "v.example.com", Mode{Mode: ModePassthrough, ProxyProtocol: 3}},
			{"wildcard tcp", "*.apps.example.com", Mode{Mode: ModeTCP, TCPPort: 20000}},
		} {
			if _, err := s.SetMode(ctx, tc.domain, tc.m); !errors.Is(err, ErrInvalidInput) {
				t.Errorf("%s: SetMode = %v; want ErrInvalidInput", tc.name, err)
			}
		}
		if _, _, err := s.RegisterMode(ctx, "*.apps.example.com", "", Mode{Mode: ModePassthrough}); err != nil {
			t.Fatalf("a wildcard passthrough domain: %v", err)
		}
	})
}
