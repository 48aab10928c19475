// Package admin serves the admin REST API under /api/v1/admin/: registering, listing, inspecting and
// unregistering domains, rotating their client API keys, setting their access policies and rotating
// the single-sign-on session key.
package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/hopgate/hopgate/internal/gateway/hostname"
	"github.com/hopgate/hopgate/internal/gateway/inspect"
	"github.com/hopgate/hopgate/internal/gateway/jsonapi"
	"github.com/hopgate/hopgate/internal/gateway/policy"
	"github.com/hopgate/hopgate/internal/gateway/registry"
)

// Prefix is the path every admin call starts with.
const Prefix = "/api/v1/admin/"

// MaxBodyBytes bounds request bodies; larger ones get 413.
const MaxBodyBytes = 1 << 20

// Registry is the part of the domain store the admin API uses (*registry.Store implements it).
type Registry interface {
	Register(ctx context.Context, name, memo string) (registry.Domain, string, error)
	// RegisterMode and SetMode register a domain of, or switch it to, a mode (http, tls-passthrough,
	// tcp with its port).
	RegisterMode(ctx context.Context, name, memo string, m registry.Mode) (registry.Domain, string, error)
	SetMode(ctx context.Context, name string, m registry.Mode) (registry.Domain, error)
	Unregister(ctx context.Context, name, key string) error
	List(ctx context.Context) ([]registry.Domain, error)
	Get(ctx context.Context, name string) (registry.Domain, error)
	RotateKey(ctx context.Context, name string) (string, error)
	// Policy and SetPolicy read and replace a domain's access policy (see registry.Store.SetPolicy
	// for how secrets left out are kept).
	Policy(ctx context.Context, name string) (policy.Spec, error)
	SetPolicy(ctx context.Context, name string, s policy.Spec) (policy.Spec, error)
	// RotateSessionKey replaces the key of single-sign-on session cookies.
	RotateSessionKey(ctx context.Context) error
	// SetMemo replaces a domain's memo.
	SetMemo(ctx context.Context, name, memo string) (registry.Domain, error)
}

// Agents is the view of live tunnel sessions the admin API needs.
type Agents interface {
	// AgentCount returns how many agents are connected for a domain.
	AgentCount(domain string) int
	// CloseDomain closes every live tunnel of a domain.
	CloseDomain(domain string)
}

// clusterView is what Agents also offer when gateways share the store: status shows how many are live.
type clusterView interface{ Gateways() int }

type handler struct {
	reg     Registry
	agents  Agents
	keyHash [sha256.Size]byte
	enabled bool
	log     *slog.Logger
	routes  map[string]route
	// reserved names can never be tenants: the gateway's own name is never proxied.
	reserved map[string]bool
	// noWildcards, when set, is why wildcard domains cannot be registered (no way to get their
	// certificate); empty when they can.
	noWildcards string
	certs       Certificates
	// oidc fetches providers' discovery documents.
	oidc             *http.Client
	policyChanged    func(domain string)
	sessionKeyRotate func()
	agentHealth      func(domain string) []AgentHealth
	// ports binds TCP-mode ports and serves raw modes; nil: TCP tunnels are off.
	ports Ports
	// audit records every change made through the API; nil: none is.
	audit Auditor
	// inspector and tenants serve the request inspector's calls; nil: they answer 404.
	inspector *inspect.Inspector
	tenants   http.Handler
	// directory lists and closes this gateway's tunnels; certList lists its certificates.
	directory AgentDirectory
	certList  func() (bool, []CertificateInfo)
}

// Certificates is the view of the certificate manager the admin API needs: registered names get a
// certificate, unregistered ones are dropped from renewal, and status shows where a name stands.
type Certificates interface {
	Manage(ctx context.Context, names ...string)
	Unmanage(name string)
	Status(name string) any
}

// Option adjusts the admin API.
type Option func(*handler)

// Reserved names cannot be registered (the gateway's own name is never proxied).
func Reserved(names ...string) Option {
	return func(h *handler) {
		for _, n := range names {
			h.reserved[n] = true
		}
	}
}

// RefuseWildcards makes registering a wildcard domain ("*.apps.example.com") a 400 with reason:
// the gateway has no way to get such a name's certificate, and a registration that can never be
// served securely is better refused at once than found out by the first visitor.
func RefuseWildcards(reason string) Option {
	return func(h *handler) { h.noWildcards = reason }
}

// WithCertificates ties registrations to the certificate manager.
func WithCertificates(c Certificates) Option {
	return func(h *handler) { h.certs = c }
}

// WithOIDCClient sets the HTTP client that fetches OpenID providers' discovery documents when a
// policy with single sign-on is set (config.Server.OIDCHTTPClient: the system's roots plus
// HOP_SERVER_OIDC_CA_ROOTS). Without it, a client trusting the system's roots is used.
func WithOIDCClient(c *http.Client) Option {
	return func(h *handler) {
		if c != nil {
			h.oidc = c
		}
	}
}

// OnPolicyChange registers f to be called with the canonical name after a domain's policy changed:
// a policy set or removed, or the domain unregistered. The gateway drops its cached copy there, so
// the change applies to the next request instead of when the cache expires.
func OnPolicyChange(f func(domain string)) Option {
	return func(h *handler) {
		if f != nil {
			h.policyChanged = f
		}
	}
}

// OnSessionKeyRotated registers f to be called after the single-sign-on session key was replaced,
// for the gateway to drop the copy it holds in memory.
func OnSessionKeyRotated(f func()) Option {
	return func(h *handler) {
		if f != nil {
			h.sessionKeyRotate = f
		}
	}
}

// AgentHealth is one connected agent of a domain and the path prefixes whose local target it
// reports down ("/" for its service without a path). An agent that never reported is healthy.
type AgentHealth struct {
	ID      string   `json:"id"`
	Healthy bool     `json:"healthy"`
	Down    []string `json:"down"`
}

// WithAgentHealth makes a domain's status list its agents with their target health
// ("agents_detail"), as f reports them.
func WithAgentHealth(f func(domain string) []AgentHealth) Option {
	return func(h *handler) { h.agentHealth = f }
}

// route maps the methods of one path to their handlers.
type route map[string]func(w http.ResponseWriter, r *http.Request)

func (rt route) allowed() []string {
	methods := make([]string, 0, len(rt))
	for m := range rt {
		methods = append(methods, m)
	}
	slices.Sort(methods)
	return methods
}

// New returns the admin API. Requests must carry "Authorization: Bearer <apiKey>". With an empty
// apiKey the API is disabled and every path answers 404, as if it did not exist. agents may be nil
// (no tunnels: counts are 0, nothing to close); logger nil means slog.Default().
func New(reg Registry, agents Agents, apiKey string, logger *slog.Logger, opts ...Option) http.Handler {
	if logger == nil {
		logger = slog.Default()
	}
	if agents == nil {
		agents = noAgents{}
	}
	h := &handler{
		reg:      reg,
		agents:   agents,
		keyHash:  sha256.Sum256([]byte(apiKey)),
		enabled:  apiKey != "",
		log:      logger.With("component", "admin"),
		reserved: make(map[string]bool),
		oidc:     &http.Client{Timeout: DiscoveryTimeout},
		// Not nil, so that every call site can call them.
		policyChanged:    func(string) {},
		sessionKeyRotate: func() {},
	}
	for _, o := range opts {
		o(h)
	}
	h.routes = map[string]route{
		Prefix + "domains/register":    {http.MethodPost: h.register},
		Prefix + "domains/unregister":  {http.MethodPost: h.unregister},
		Prefix + "domains":             {http.MethodGet: h.list},
		Prefix + "domains/status":      {http.MethodGet: h.status},
		Prefix + "domains/exists":      {http.MethodGet: h.exists},
		Prefix + "domains/rotate-key":  {http.MethodPost: h.rotateKey},
		Prefix + "domains/mode":        {http.MethodPost: h.setMode},
		Prefix + "domains/policy":      {http.MethodGet: h.getPolicy, http.MethodPut: h.putPolicy},
		Prefix + "sessions/rotate-key": {http.MethodPost: h.rotateSessionKey},
		Prefix + "audit":               {http.MethodGet: h.listAudit},
		Prefix + "audit/verify":        {http.MethodGet: h.verifyAudit},
	}
	h.inspectRoutes()
	h.agentRoutes()
	return h
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !h.enabled || !strings.HasPrefix(r.URL.Path, Prefix) {
		writeError(w, http.StatusNotFound, "not found")
		return
	}
	// Authentication comes before routing so that an unauthenticated caller learns nothing about
	// which paths or methods exist.
	if !h.authorized(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="hopgate-admin"`)
		writeError(w, http.StatusUnauthorized, "unauthorized")
		return
	}
	rt, ok := h.routes[r.URL.Path]
	if !ok {
		writeError(w, http.StatusNotFound, "not found")
		return
	}
	serve, ok := rt[r.Method]
	if !ok {
		methods := rt.allowed()
		w.Header().Set("Allow", strings.Join(methods, ", "))
		writeError(w, http.StatusMethodNotAllowed, "method not allowed; use "+strings.Join(methods, " or "))
		return
	}
	if h.audit == nil || r.Method == http.MethodGet || r.Method == http.MethodHead {
		serve(w, r)
		return
	}
	h.audited(w, r, serve)
}

// authorized compares SHA-256 digests in constant time: hashing first makes the comparison
// independent of both the content and the length of the presented key.
func (h *handler) authorized(r *http.Request) bool {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	got := sha256.Sum256([]byte(strings.TrimSpace(token)))
	return subtle.ConstantTimeCompare(got[:], h.keyHash[:]) == 1
}

type registerRequest struct {
	Domain string `json:"domain"`
	Memo   string `json:"memo"`
	modeRequest
}

type registerResponse struct {
	Success      bool   `json:"success"`
	Domain       string `json:"domain"`
	ClientAPIKey string `json:"client_api_key"`
	Memo         string `json:"memo"`
	CreatedAt    string `json:"created_at"`
	modeJSON
}

func (h *handler) register(w http.ResponseWriter, r *http.Request) {
	var req registerRequest
	if !decode(w, r, &req) {
		return
	}
	name, ok := canonical(w, r, req.Domain)
	if !ok {
		return
	}
	if h.reserved[name] {
		writeError(w, http.StatusBadRequest, "domain "+name+" is the gateway's own name and cannot be registered")
		return
	}
	if hostname.IsWildcard(name) {
		// *.gw.example.com would put tenants beside the gateway's own name, under its authority.
		if base := hostname.WildcardBase(name); h.reserved[base] {
			writeError(w, http.StatusBadRequest, "domain "+name+" is a wildcard under the gateway's own name "+base+" and cannot be registered")
			return
		}
		if h.noWildcards != "" {
			writeError(w, http.StatusBadRequest, "wildcard domain "+name+" cannot be registered: "+h.noWildcards)
			return
		}
	}
	m, err := req.parse()
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	var (
		d   registry.Domain
		key string
	)
	_, err = h.withPort(r.Context(), name, m, func(m registry.Mode) (err error) {
		d, key, err = h.reg.RegisterMode(r.Context(), name, req.Memo, m)
		return err
	})
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.log.InfoContext(r.Context(), "domain registered", "domain", d.Name, "mode", d.Mode.Mode, "tcp_port", d.TCPPort)
	if h.certs != nil && d.Mode.Mode == registry.ModeHTTP {
		// Ordering happens in the background: the request does not wait for the CA.
		h.certs.Manage(context.WithoutCancel(r.Context()), d.Name)
	}
	if d.Mode.Mode != registry.ModeHTTP {
		h.reloadRaw(r.Context(), d.Name)
	}
	jsonapi.Write(w, http.StatusCreated, registerResponse{
		Success:      true,
		Domain:       d.Name,
		ClientAPIKey: key,
		Memo:         d.Memo,
		CreatedAt:    timestamp(d.CreatedAt),
		modeJSON:     showMode(d.Mode),
	})
}

type unregisterRequest struct {
	Domain       string `json:"domain"`
	ClientAPIKey string `json:"client_api_key"`
}

func (h *handler) unregister(w http.ResponseWriter, r *http.Request) {
	var req unregisterRequest
	if !decode(w, r, &req) {
		return
	}
	name, ok := canonical(w, r, req.Domain)
	if !ok {
		return
	}
	if err := h.reg.Unregister(r.Context(), name, req.ClientAPIKey); err != nil {
		h.fail(w, r, err)
		return
	}
	h.agents.CloseDomain(name)
	if h.certs != nil {
		h.certs.Unmanage(name)
	}
	if h.ports != nil {
		// The port is free in the registry with the row; the listener goes now, not at a refresh.
		h.ports.Release(name)
		h.reloadRaw(r.Context(), name)
	}
	// The policy went with the row.
	h.policyChanged(name)
	h.log.InfoContext(r.Context(), "domain unregistered", "domain", name)
	jsonapi.Write(w, http.StatusOK, struct {
		Success bool   `json:"success"`
		Domain  string `json:"domain"`
	}{true, name})
}

type domainJSON struct {
	Domain    string `json:"domain"`
	Memo      string `json:"memo"`
	CreatedAt string `json:"created_at"`
	UpdatedAt string `json:"updated_at"`
	Agents    int    `json:"agents"`
	modeJSON
}

func (h *handler) domainJSON(d registry.Domain) domainJSON {
	return domainJSON{
		Domain:    d.Name,
		Memo:      d.Memo,
		CreatedAt: timestamp(d.CreatedAt),
		UpdatedAt: timestamp(d.UpdatedAt),
		Agents:    h.agents.AgentCount(d.Name),
		modeJSON:  showMode(d.Mode),
	}
}

func (h *handler) list(w http.ResponseWriter, r *http.Request) {
	ds, err := h.reg.List(r.Context())
	if err != nil {
		h.fail(w, r, err)
		return
	}
	out := make([]domainJSON, len(ds))
	for i, d := range ds {
		out[i] = h.domainJSON(d)
	}
	jsonapi.Write(w, http.StatusOK, struct {
		Success bool         `json:"success"`
		Domains []domainJSON `json:"domains"`
	}{true, out})
}

// status of an unregistered domain is 200 with "exists": false, not 404: "not registered" is an
// answer to the question asked, as with the original HopGate.
func (h *handler) status(w http.ResponseWriter, r *http.Request) {
	name, d, found, ok := h.lookup(w, r)
	if !ok {
		return
	}
	if !found {
		jsonapi.Write(w, http.StatusOK, struct {
			Success bool   `json:"success"`
			Exists  bool   `json:"exists"`
			Domain  string `json:"domain"`
		}{true, false, name})
		return
	}
	var cert any
	if h.certs != nil {
		cert = h.certs.Status(d.Name)
	}
	var detail []AgentHealth
	if h.agentHealth != nil {
		detail = h.agentHealth(d.Name)
	}
	var gateways int
	if c, ok := h.agents.(clusterView); ok {
		gateways = c.Gateways()
	}
	jsonapi.Write(w, http.StatusOK, struct {
		Success bool `json:"success"`
		Exists  bool `json:"exists"`
		domainJSON
		AgentsDetail []AgentHealth `json:"agents_detail,omitempty"`
		Certificate  any           `json:"certificate,omitempty"`
		// Gateways is the live gateways sharing the store (whose agents "agents" adds up); absent
		// for a gateway alone on SQLite.
		Gateways int `json:"gateways,omitempty"`
	}{true, true, h.domainJSON(d), detail, cert, gateways})
}

func (h *handler) exists(w http.ResponseWriter, r *http.Request) {
	_, _, found, ok := h.lookup(w, r)
	if !ok {
		return
	}
	jsonapi.Write(w, http.StatusOK, struct {
		Success bool `json:"success"`
		Exists  bool `json:"exists"`
	}{true, found})
}

// lookup reads ?domain= and fetches it. ok is false if a response has been written.
func (h *handler) lookup(w http.ResponseWriter, r *http.Request) (name string, d registry.Domain, found, ok bool) {
	name, ok = canonical(w, r, r.URL.Query().Get("domain"))
	if !ok {
		return "", registry.Domain{}, false, false
	}
	d, err := h.reg.Get(r.Context(), name)
	switch {
	case errors.Is(err, registry.ErrNotFound):
		return name, registry.Domain{}, false, true
	case err != nil:
		h.fail(w, r, err)
		return "", registry.Domain{}, false, false
	}
	return name, d, true, true
}

type rotateRequest struct {
	Domain string `json:"domain"`
}

func (h *handler) rotateKey(w http.ResponseWriter, r *http.Request) {
	var req rotateRequest
	if !decode(w, r, &req) {
		return
	}
	name, ok := canonical(w, r, req.Domain)
	if !ok {
		return
	}
	key, err := h.reg.RotateKey(r.Context(), name)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	// Tunnels authenticated with the old key must not outlive it.
	h.agents.CloseDomain(name)
	h.log.InfoContext(r.Context(), "client API key rotated", "domain", name)
	jsonapi.Write(w, http.StatusOK, struct {
		Success      bool   `json:"success"`
		Domain       string `json:"domain"`
		ClientAPIKey string `json:"client_api_key"`
	}{true, name, key})
}

// fail maps a registry error to its status code; this is the one place that does.
func (h *handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	if h.failMode(w, r, err) {
		return
	}
	switch {
	case errors.Is(err, registry.ErrInvalidInput):
		writeInvalid(w, err)
	case errors.Is(err, registry.ErrNotFound):
		writeError(w, http.StatusNotFound, "domain not found")
	case errors.Is(err, registry.ErrExists):
		writeError(w, http.StatusConflict, "domain already registered")
	case errors.Is(err, registry.ErrKeyMismatch):
		// Not in the contract's list. 403 rather than 401: the caller did authenticate (admin key);
		// it is the client_api_key in the body that does not match, and a 401 would make clients
		// believe their admin key is wrong.
		writeError(w, http.StatusForbidden, "client_api_key does not match the domain's key")
	case errors.Is(err, registry.ErrUnavailable):
		h.log.ErrorContext(r.Context(), "admin request failed: store unavailable", "path", r.URL.Path, "error", err)
		writeError(w, http.StatusServiceUnavailable, "store unavailable")
	case errors.Is(err, context.Canceled) && r.Context().Err() != nil:
		// The caller went away; nobody reads this answer.
		writeError(w, http.StatusServiceUnavailable, "request canceled")
	default:
		h.log.ErrorContext(r.Context(), "admin request failed", "path", r.URL.Path, "error", err)
		writeError(w, http.StatusInternalServerError, "internal error")
	}
}

// decode reads one JSON object into v, refusing unknown fields, trailing data and bodies over
// MaxBodyBytes. It reports false after writing the error response.
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	if r.ContentLength > MaxBodyBytes {
		writeError(w, http.StatusRequestEntityTooLarge, "request body too large")
		return false
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		// Anything after the object, even a second object, makes the request ambiguous.
		if dec.Decode(&struct{}{}) != io.EOF {
			err = errors.New("unexpected data after the JSON object")
		}
	}
	if err == nil {
		return true
	}
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		writeError(w, http.StatusRequestEntityTooLarge, "request body too large")
	case errors.Is(err, io.EOF):
		writeError(w, http.StatusBadRequest, "request body must be a JSON object")
	default:
		writeError(w, http.StatusBadRequest, "malformed request body: "+err.Error())
	}
	return false
}

// canonical validates a domain from a request. It reports false after writing a 400. The name, as
// given or canonical, is the target of the request's audit entry.
func canonical(w http.ResponseWriter, r *http.Request, name string) (string, bool) {
	noteTarget(r, name)
	if strings.TrimSpace(name) == "" {
		writeError(w, http.StatusBadRequest, "domain is required")
		return "", false
	}
	c, err := hostname.CanonicalDomain(name)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return "", false
	}
	noteTarget(r, c)
	return c, true
}

func timestamp(t time.Time) string {
	return t.UTC().Format(time.RFC3339)
}

// writeInvalid answers 400 for a refused input. A refused policy also names its field in "field",
// for scripts; the message names it too.
func writeInvalid(w http.ResponseWriter, err error) {
	var fe *policy.FieldError
	if !errors.As(err, &fe) {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	jsonapi.Write(w, http.StatusBadRequest, struct {
		Success bool   `json:"success"`
		Error   string `json:"error"`
		Field   string `json:"field"`
	}{false, err.Error(), fe.Field})
}

func writeError(w http.ResponseWriter, code int, msg string) {
	jsonapi.Write(w, code, struct {
		Success bool   `json:"success"`
		Error   string `json:"error"`
	}{false, msg})
}

type noAgents struct{}

func (noAgents) AgentCount(string) int { return 0 }
func (noAgents) CloseDomain(string)    {}
