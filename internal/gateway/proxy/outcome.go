package proxy

import (
	"errors"
	"net/http"

	"github.com/hopgate/hopgate/internal/gateway/errorpage"
)

// Why a tenant request failed. Each maps to one outcome (outcomeOf); wrap them to add a cause.
var (
	// ErrUnknownDomain: no such domain is registered (404).
	ErrUnknownDomain = errors.New("unknown domain")
	// ErrNoAgent: the domain is registered but no agent can take the request (503).
	ErrNoAgent = errors.New("no agent connected for this domain")
	// ErrTargetDown: the domain's agents are connected but each reports the local target for the
	// request's path down (503).
	ErrTargetDown = errors.New("the service behind this domain's agent is not answering; try again shortly")
	// ErrNoRoute: the agent answered that none of its services matches the request's hostname and
	// path (its 404 marked with httpwire.NoRouteHeader).
	ErrNoRoute = errors.New("the agent has no service for this hostname and path")
	// ErrStoreUnavailable: the registry could not say whether the domain exists (503).
	ErrStoreUnavailable = errors.New("domain store unavailable")
	// ErrOverloaded: memory is near GOMEMLIMIT and new requests are shed (503, Retry-After).
	ErrOverloaded = errors.New("the gateway is overloaded; try again shortly")
	// ErrHeaderTimeout: the agent sent no response headers in time (504).
	ErrHeaderTimeout = errors.New("no response headers from the agent in time")
	// ErrBadRequestBody: the visitor's request body could not be read as framed (a broken chunked
	// encoding) before the agent answered (400).
	ErrBadRequestBody = errors.New("the request body is malformed")
	// ErrBodyTooLarge: the request body is over the domain's or the gateway's limit (413), said by
	// Content-Length before anything is sent, or found while streaming (the stream is then aborted).
	ErrBodyTooLarge = errors.New("the request body is larger than this site accepts")
	// ErrUpstream: the agent or its local target failed before sending headers (502).
	ErrUpstream = errors.New("the agent or its local target failed")
)

// outcome is what a failed request becomes: its status, the reason word of hopgate_proxy_errors_total
// and the access log, the detail for API clients (empty: the page's own wording for the status, or
// for the reason when errorpage has wording for it), and a Retry-After value if any.
type outcome struct {
	status     int
	reason     string
	message    string
	retryAfter string
}

// outcomes is checked in order; anything else is the agent's or the target's failure (502).
var outcomes = []struct {
	err error
	outcome
}{
	{ErrUnknownDomain, outcome{http.StatusNotFound, "unknown_domain", "", ""}},
	{ErrOverloaded, outcome{http.StatusServiceUnavailable, "overload", ErrOverloaded.Error(), "5"}},
	{ErrStoreUnavailable, outcome{http.StatusServiceUnavailable, "store_unavailable", "", ""}},
	{ErrNoAgent, outcome{http.StatusServiceUnavailable, "no_agent", ErrNoAgent.Error(), ""}},
	// The page's wording for these two says more than the error does, and every form says the same.
	{ErrTargetDown, outcome{http.StatusServiceUnavailable, errorpage.ReasonTargetDown, "", ""}},
	{ErrNoRoute, outcome{http.StatusNotFound, errorpage.ReasonNoRoute, "", ""}},
	{ErrBodyTooLarge, outcome{http.StatusRequestEntityTooLarge, "body_too_large", ErrBodyTooLarge.Error(), ""}},
	{ErrBadRequestBody, outcome{http.StatusBadRequest, "bad_request", ErrBadRequestBody.Error(), ""}},
	{ErrHeaderTimeout, outcome{http.StatusGatewayTimeout, "timeout", http.StatusText(http.StatusGatewayTimeout), ""}},
}

var upstreamOutcome = outcome{http.StatusBadGateway, "upstream", http.StatusText(http.StatusBadGateway), ""}

func outcomeOf(err error) outcome {
	for _, o := range outcomes {
		if errors.Is(err, o.err) {
			return o.outcome
		}
	}
	return upstreamOutcome
}
