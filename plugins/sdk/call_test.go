package sdk

import (
	"net/http"
	"testing"
)

// smart-2.2-client #93 #264: the access token is presented as a "Bearer"
// token whatever the case of the token response's token_type ("bearer" is
// common); other types (DPoP) pass as the source named them.
func TestSetAuthTokenType(t *testing.T) {
	for typ, want := range map[string]string{"": "Bearer t", "bearer": "Bearer t", "BEARER": "Bearer t", "Bearer": "Bearer t", "DPoP": "DPoP t"} {
		req, _ := http.NewRequest(http.MethodGet, "http://fhir.example/Patient", nil)
		setAuth(req, Token{AccessToken: "t", TokenType: typ})
		if got := req.Header.Get("Authorization"); got != want {
			t.Errorf("token type %q: Authorization %q, want %q", typ, got, want)
		}
	}
}
