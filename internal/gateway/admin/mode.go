package admin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/hopgate/hopgate/internal/gateway/jsonapi"
	"github.com/hopgate/hopgate/internal/gateway/rawedge"
	"github.com/hopgate/hopgate/internal/gateway/registry"
)

// Ports is the gateway's manager of TCP-mode ports and passthrough names (rawedge.Edge).
type Ports interface {
	// Assign binds a port for domain (want, or any free one of the range when 0) and calls commit
	// with it; the port is served for domain once commit succeeded.
	Assign(ctx context.Context, domain string, want int, commit func(port int) error) (int, error)
	// Reload makes the gateway serve the stored modes now.
	Reload(ctx context.Context) error
	// Release stops serving domain's port and closes its connections.
	Release(domain string)
}

// WithPorts lets domains be registered in, or switched to, modes tcp and tls-passthrough. Without
// it, mode tcp is refused (TCP tunnels are off) and passthrough names take effect within the raw
// edge's refresh.
func WithPorts(p Ports) Option {
	return func(h *handler) { h.ports = p }
}

// modeRequest is what register and domains/mode take about a domain's mode.
type modeRequest struct {
	Mode          string `json:"mode"`
	TCPPort       int    `json:"tcp_port"`
	ProxyProtocol string `json:"proxy_protocol"`
}

// modeJSON is how a domain's mode is shown.
type modeJSON struct {
	Mode          string `json:"mode"`
	TCPPort       int    `json:"tcp_port,omitempty"`
	ProxyProtocol string `json:"proxy_protocol,omitempty"`
}

func showMode(m registry.Mode) modeJSON {
	j := modeJSON{Mode: m.Mode, TCPPort: m.TCPPort}
	if j.Mode == "" {
		j.Mode = registry.ModeHTTP
	}
	if m.ProxyProtocol > 0 {
		j.ProxyProtocol = fmt.Sprintf("v%d", m.ProxyProtocol)
	}
	return j
}

// parse turns the request into a registry.Mode. TCPPort stays what was asked (0: any free port).
func (mr modeRequest) parse() (registry.Mode, error) {
	m := registry.Mode{Mode: mr.Mode, TCPPort: mr.TCPPort}
	if m.Mode == "" {
		m.Mode = registry.ModeHTTP
	}
	switch mr.ProxyProtocol {
	case "", "none":
	case "v1", "1":
		m.ProxyProtocol = 1
	case "v2", "2":
		m.ProxyProtocol = 2
	default:
		return m, fmt.Errorf("proxy_protocol %q is not one of \"\", \"v1\" or \"v2\"", mr.ProxyProtocol)
	}
	if m.TCPPort < 0 || m.TCPPort > 65535 {
		return m, fmt.Errorf("tcp_port %d is not a port (1 to 65535, or 0 for any free one)", m.TCPPort)
	}
	return m, nil
}

// errTCPOff answers a tcp-mode request on a gateway without a port range.
var errTCPOff = errors.New("TCP tunnels are off on this gateway: set HOP_SERVER_TCP_PORTS to a port range (e.g. 20000-20999)")

// withPort runs write (a registry write of mode m) for a tcp domain through the port manager, which
// binds the port first; for the other modes it runs write as it is.
func (h *handler) withPort(ctx context.Context, name string, m registry.Mode, write func(registry.Mode) error) (registry.Mode, error) {
	if m.Mode != registry.ModeTCP {
		return m, write(m)
	}
	if h.ports == nil {
		return m, errTCPOff
	}
	port, err := h.ports.Assign(ctx, name, m.TCPPort, func(port int) error {
		m.TCPPort = port
		err := write(m)
		if errors.Is(err, registry.ErrPortTaken) {
			return fmt.Errorf("%w: %w", rawedge.ErrPortTaken, err)
		}
		return err
	})
	m.TCPPort = port
	return m, err
}

// setMode is POST domains/mode: {"domain","mode","tcp_port","proxy_protocol"}.
func (h *handler) setMode(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Domain string `json:"domain"`
		modeRequest
	}
	if !decode(w, r, &req) {
		return
	}
	name, ok := canonical(w, r, req.Domain)
	if !ok {
		return
	}
	m, err := req.parse()
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	ctx := r.Context()
	old, err := h.reg.Get(ctx, name)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	var d registry.Domain
	write := func(m registry.Mode) (err error) {
		d, err = h.reg.SetMode(ctx, name, m)
		return err
	}
	if m.Mode == registry.ModeTCP && old.Mode.Mode == registry.ModeTCP && (m.TCPPort == 0 || m.TCPPort == old.TCPPort) {
		// Same port (only the PROXY version may change): nothing to bind.
		m.TCPPort = old.TCPPort
		err = write(m)
	} else {
		_, err = h.withPort(ctx, name, m, write)
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if old.Mode.Mode == registry.ModeTCP && d.Mode.Mode != registry.ModeTCP && h.ports != nil {
		// Its port is free in the registry; its listener and connections go now. (A move to another
		// port is the reload's: the new listener is already this domain's.)
		h.ports.Release(name)
	}
	h.modeChanged(ctx, old.Mode, d)
	h.log.InfoContext(ctx, "domain mode set", "domain", name, "mode", d.Mode.Mode, "tcp_port", d.TCPPort, "proxy_protocol", d.ProxyProtocol)
	jsonapi.Write(w, http.StatusOK, struct {
		Success bool   `json:"success"`
		Domain  string `json:"domain"`
		modeJSON
	}{true, name, showMode(d.Mode)})
}

// modeChanged makes the gateway serve d's new mode: the raw edge reloads, and only HTTP-mode names
// hold certificates (a passthrough name's certificate is its target's; a TCP port has none).
func (h *handler) modeChanged(ctx context.Context, old registry.Mode, d registry.Domain) {
	if old.Mode != registry.ModeHTTP || d.Mode.Mode != registry.ModeHTTP {
		h.reloadRaw(ctx, d.Name)
	}
	if h.certs == nil || old.Mode == d.Mode.Mode {
		return
	}
	switch {
	case d.Mode.Mode == registry.ModeHTTP:
		h.certs.Manage(context.WithoutCancel(ctx), d.Name)
	case old.Mode == registry.ModeHTTP || old.Mode == "":
		h.certs.Unmanage(d.Name)
	}
}

// reloadRaw makes the raw edge serve the stored modes now, after a change to domain's. A failed
// reload loses nothing: the edge's periodic refresh applies the change.
func (h *handler) reloadRaw(ctx context.Context, domain string) {
	if h.ports == nil {
		return
	}
	if err := h.ports.Reload(context.WithoutCancel(ctx)); err != nil {
		h.log.WarnContext(ctx, "raw edge reload failed; the change applies at the next refresh", "domain", domain, "err", err)
	}
}

// forCaller drops the package names Go errors start with: the caller wants the reason, not where
// in the gateway it came from.
func forCaller(err error) string {
	msg := err.Error()
	for _, p := range []string{"rawedge: ", "registry: "} {
		msg = strings.ReplaceAll(msg, p, "")
	}
	return msg
}

// failMode maps the port manager's refusals; anything else goes to fail.
func (h *handler) failMode(w http.ResponseWriter, r *http.Request, err error) bool {
	switch {
	case errors.Is(err, errTCPOff), errors.Is(err, rawedge.ErrTCPOff):
		writeError(w, http.StatusBadRequest, errTCPOff.Error())
	case errors.Is(err, rawedge.ErrPortOutOfRange):
		writeError(w, http.StatusBadRequest, forCaller(err))
	case errors.Is(err, rawedge.ErrNoFreePort), errors.Is(err, rawedge.ErrPortInUse), errors.Is(err, registry.ErrPortTaken),
		errors.Is(err, rawedge.ErrPortTaken):
		writeError(w, http.StatusConflict, forCaller(err))
	default:
		return false
	}
	return true
}
