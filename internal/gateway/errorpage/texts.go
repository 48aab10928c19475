package errorpage

import "net/http"

// text is the wording of one status in both languages: what happened and what the visitor can do.
type text struct {
	Title, Message, Hint       string
	TitleKo, MessageKo, HintKo string
}

// texts holds the wording for every status the gateway itself answers with. One table and one
// template keep the pages consistent; an operator who wants a different page for one status drops
// <code>.html into HOP_ERROR_PAGES_DIR.
var texts = map[int]text{
	http.StatusBadRequest: {
		"Bad request", "The request was malformed, so the gateway could not read it.", "Check the address and try again.",
		"잘못된 요청", "요청 형식이 올바르지 않아 게이트웨이가 읽을 수 없습니다.", "주소를 확인한 뒤 다시 시도해 주세요.",
	},
	http.StatusUnauthorized: {
		"Authentication required", "This page needs valid credentials, and none were accepted.", "Sign in or supply the correct key, then try again.",
		"인증 필요", "이 페이지에 접근하려면 올바른 인증 정보가 필요합니다.", "로그인하거나 올바른 키를 입력한 뒤 다시 시도해 주세요.",
	},
	http.StatusForbidden: {
		"Access denied", "You do not have permission to open this page.", "If you think you should have access, contact the site's owner.",
		"접근 거부", "이 페이지를 열 권한이 없습니다.", "접근 권한이 필요하다면 사이트 운영자에게 문의해 주세요.",
	},
	http.StatusNotFound: {
		"Not found", "This gateway does not serve the requested domain or path.", "Check the address for typos, or go back to the previous page.",
		"찾을 수 없음", "이 게이트웨이는 요청한 도메인이나 경로를 제공하지 않습니다.", "주소에 오타가 없는지 확인하거나 이전 페이지로 돌아가 주세요.",
	},
	http.StatusMethodNotAllowed: {
		"Method not allowed", "This address does not accept the HTTP method that was used.", "Open the page normally in your browser, or check the API's documentation.",
		"허용되지 않는 메서드", "이 주소는 사용된 HTTP 메서드를 허용하지 않습니다.", "브라우저에서 페이지를 다시 열거나 API 문서를 확인해 주세요.",
	},
	http.StatusRequestEntityTooLarge: {
		"Request too large", "The request body is larger than this gateway accepts.", "Send a smaller file, or split the upload into parts.",
		"요청이 너무 큼", "요청 본문이 게이트웨이가 허용하는 크기보다 큽니다.", "더 작은 파일을 보내거나 나누어 업로드해 주세요.",
	},
	http.StatusMisdirectedRequest: {
		"Misdirected request", "This connection was opened for a different domain than the one requested.", "Reload the page so that your browser opens a new connection.",
		"잘못 전달된 요청", "이 연결은 요청한 도메인이 아닌 다른 도메인을 위해 열린 연결입니다.", "페이지를 새로 고쳐 브라우저가 새 연결을 열도록 해 주세요.",
	},
	http.StatusTooManyRequests: {
		"Too many requests", "Too many requests arrived from you in a short time.", "Wait a moment, then try again.",
		"요청이 너무 많음", "짧은 시간 동안 너무 많은 요청이 들어왔습니다.", "잠시 기다린 뒤 다시 시도해 주세요.",
	},
	http.StatusRequestHeaderFieldsTooLarge: {
		"Request headers too large", "The request headers, often its cookies, are larger than this gateway accepts.", "Clear this site's cookies, then try again.",
		"요청 헤더가 너무 큼", "쿠키 등 요청 헤더가 게이트웨이가 허용하는 크기보다 큽니다.", "이 사이트의 쿠키를 삭제한 뒤 다시 시도해 주세요.",
	},
	http.StatusInternalServerError: {
		"Internal error", "Something went wrong inside the gateway while handling your request.", "Try again in a moment; if it keeps happening, contact the site's owner.",
		"내부 오류", "요청을 처리하는 중 게이트웨이 내부에서 문제가 발생했습니다.", "잠시 후 다시 시도해 주시고, 문제가 계속되면 사이트 운영자에게 문의해 주세요.",
	},
	http.StatusBadGateway: {
		"Bad gateway", "The service behind this domain could not be reached or sent an invalid response.", "Try again in a moment; the site's owner may be restarting it.",
		"게이트웨이 오류", "이 도메인 뒤의 서비스에 연결할 수 없거나 서비스가 잘못된 응답을 보냈습니다.", "잠시 후 다시 시도해 주세요. 사이트 운영자가 서비스를 다시 시작하는 중일 수 있습니다.",
	},
	http.StatusServiceUnavailable: {
		"Service unavailable", "The service for this domain is not connected to the gateway right now.", "Try again in a few minutes.",
		"서비스를 사용할 수 없음", "이 도메인의 서비스가 지금 게이트웨이에 연결되어 있지 않습니다.", "몇 분 뒤 다시 시도해 주세요.",
	},
	http.StatusGatewayTimeout: {
		"Gateway timeout", "The service behind this domain took too long to answer.", "Reload the page in a moment.",
		"게이트웨이 시간 초과", "이 도메인 뒤의 서비스가 제시간에 응답하지 않았습니다.", "잠시 후 페이지를 새로 고쳐 주세요.",
	},
}

// reasonText is the wording of one failure whose status alone would say the wrong thing.
type reasonText struct {
	code int
	text
}

// reasonTexts holds wording for some reason words of hopgate_proxy_errors_total, used in place of
// their status's when the status matches: a 503 for a target that is down must not say the agent
// is not connected, and a 404 from an agent must not say the gateway does not serve the domain.
var reasonTexts = map[string]reasonText{
	ReasonNoRoute: {http.StatusNotFound, text{
		"No matching service", "This domain's agent has no service for this hostname and path.", "Check the address for typos; the site's owner may not publish this path.",
		"일치하는 서비스 없음", "이 도메인의 에이전트에 이 호스트 이름과 경로에 맞는 서비스가 없습니다.", "주소에 오타가 없는지 확인해 주세요. 사이트 운영자가 이 경로를 공개하지 않았을 수 있습니다.",
	}},
	ReasonTargetDown: {http.StatusServiceUnavailable, text{
		"Service not answering", "The service behind this domain's agent is not answering: the agent is connected to the gateway, but its local service is down.", "Try again in a few minutes; the site's owner may be restarting the service.",
		"서비스 응답 없음", "이 도메인의 에이전트 뒤에 있는 서비스가 응답하지 않습니다. 에이전트는 게이트웨이에 연결되어 있지만 로컬 서비스가 중단되어 있습니다.", "몇 분 뒤 다시 시도해 주세요. 사이트 운영자가 서비스를 다시 시작하는 중일 수 있습니다.",
	}},
}

// Reason words with wording of their own (WriteReason).
const (
	// ReasonNoRoute: the agent has no service for the request's hostname and path (404).
	ReasonNoRoute = "no_route"
	// ReasonTargetDown: every agent of the domain is connected but reports its target down (503).
	ReasonTargetDown = "target_down"
)

// wordingFor returns the wording of reason when it has its own for code, else textFor(code).
func wordingFor(code int, reason string) text {
	if rt, ok := reasonTexts[reason]; ok && rt.code == code {
		return rt.text
	}
	return textFor(code)
}

// textFor returns the wording for code, or a generic one built from the standard status text.
func textFor(code int) text {
	if t, ok := texts[code]; ok {
		return t
	}
	title := http.StatusText(code)
	if title == "" {
		title = "Error"
	}
	return text{
		Title: title, Message: "The gateway could not complete this request.", Hint: "Try again in a moment.",
		TitleKo: "오류", MessageKo: "게이트웨이가 이 요청을 완료할 수 없습니다.", HintKo: "잠시 후 다시 시도해 주세요.",
	}
}
