package admin

import (
	"net/http"
	"time"

	"github.com/hopgate/hopgate/internal/gateway/jsonapi"
)

// AgentInfo is one live tunnel on this gateway as GET agents lists it. BytesIn counts body bytes
// that came from the agent (responses), BytesOut those sent to it (requests).
type AgentInfo struct {
	Domain      string    `json:"domain"`
	ID          string    `json:"id"`
	Session     string    `json:"session"`
	Version     string    `json:"version"`
	RemoteAddr  string    `json:"remote_addr"`
	ConnectedAt time.Time `json:"connected_at"`
	Streams     int       `json:"streams"`
	BytesIn     int64     `json:"bytes_in"`
	BytesOut    int64     `json:"bytes_out"`
	LastPing    time.Time `json:"last_ping"`
	Healthy     bool      `json:"healthy"`
	Down        []string  `json:"down"`
}

// AgentDirectory lists this gateway's live tunnels and closes one of them.
type AgentDirectory interface {
	List() []AgentInfo
	// CloseSession ends domain's tunnel with that session id; false when there is none here.
	CloseSession(domain, session string) bool
}

// WithAgentDirectory serves GET agents and POST agents/disconnect.
func WithAgentDirectory(d AgentDirectory) Option {
	return func(h *handler) { h.directory = d }
}

// CertificateInfo is one certificate as GET certificates lists it.
type CertificateInfo struct {
	Name        string    `json:"name"`
	State       string    `json:"state"`
	Issuer      string    `json:"issuer"`
	NotAfter    time.Time `json:"not_after,omitzero"`
	NextRenewal time.Time `json:"next_renewal,omitzero"`
	LastError   string    `json:"last_error,omitempty"`
}

// WithCertificateList serves GET certificates: acme says whether the gateway orders its
// certificates (false: a static or self-signed set, which is never renewed).
func WithCertificateList(f func() (acme bool, certs []CertificateInfo)) Option {
	return func(h *handler) { h.certList = f }
}

func (h *handler) agentRoutes() {
	h.routes[Prefix+"domains/memo"] = route{http.MethodPost: h.setMemo}
	h.routes[Prefix+"agents"] = route{http.MethodGet: h.listAgents}
	h.routes[Prefix+"agents/disconnect"] = route{http.MethodPost: h.disconnect}
	h.routes[Prefix+"certificates"] = route{http.MethodGet: h.listCertificates}
}

type memoRequest struct {
	Domain string `json:"domain"`
	Memo   string `json:"memo"`
}

// setMemo answers POST domains/memo {"domain", "memo"}.
func (h *handler) setMemo(w http.ResponseWriter, r *http.Request) {
	var req memoRequest
	if !decode(w, r, &req) {
		return
	}
	name, ok := canonical(w, r, req.Domain)
	if !ok {
		return
	}
	d, err := h.reg.SetMemo(r.Context(), name, req.Memo)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	jsonapi.Write(w, http.StatusOK, struct {
		Success bool `json:"success"`
		domainJSON
	}{true, h.domainJSON(d)})
}

// listAgents answers GET agents: this gateway's tunnels (each gateway of a cluster lists its own;
// the domains' "agents" counts add up the cluster).
func (h *handler) listAgents(w http.ResponseWriter, r *http.Request) {
	out := []AgentInfo{}
	if h.directory != nil {
		out = append(out, h.directory.List()...)
	}
	for i := range out {
		if out[i].Down == nil {
			out[i].Down = []string{}
		}
	}
	jsonapi.Write(w, http.StatusOK, struct {
		Success bool        `json:"success"`
		Agents  []AgentInfo `json:"agents"`
	}{true, out})
}

type disconnectRequest struct {
	Domain  string `json:"domain"`
	Session string `json:"session"`
}

// disconnect answers POST agents/disconnect {"domain", "session"}. The agent reconnects with its
// backoff, as after any lost connection; rotating the key is what keeps it out.
func (h *handler) disconnect(w http.ResponseWriter, r *http.Request) {
	var req disconnectRequest
	if !decode(w, r, &req) {
		return
	}
	name, ok := canonical(w, r, req.Domain)
	if !ok {
		return
	}
	if req.Session == "" {
		writeError(w, http.StatusBadRequest, "session is required")
		return
	}
	if h.directory == nil || !h.directory.CloseSession(name, req.Session) {
		writeError(w, http.StatusNotFound, "no such tunnel on this gateway")
		return
	}
	h.log.InfoContext(r.Context(), "tunnel disconnected by an operator", "domain", name, "session", req.Session)
	jsonapi.Write(w, http.StatusOK, struct {
		Success bool   `json:"success"`
		Domain  string `json:"domain"`
		Session string `json:"session"`
	}{true, name, req.Session})
}

// listCertificates answers GET certificates.
func (h *handler) listCertificates(w http.ResponseWriter, r *http.Request) {
	acme, out := false, []CertificateInfo{}
	if h.certList != nil {
		var list []CertificateInfo
		acme, list = h.certList()
		out = append(out, list...)
	}
	jsonapi.Write(w, http.StatusOK, struct {
		Success      bool              `json:"success"`
		ACME         bool              `json:"acme"`
		Certificates []CertificateInfo `json:"certificates"`
	}{true, acme, out})
}
