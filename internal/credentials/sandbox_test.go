package credentials_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/medrelay/medrelay/internal/credentials"
	"github.com/medrelay/medrelay/internal/oauth"
	"github.com/medrelay/medrelay/internal/sandbox"
	"github.com/medrelay/medrelay/internal/sandbox/sandboxtest"
)

const redirectURI = "http://127.0.0.1:1/oauth/callback"

// agentJWKS serves the store's JWKS as the agent's public listener does.
func agentJWKS(t *testing.T, f *fixture) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle("GET /.well-known/jwks.json", f.creds.JWKSHandler())
	ts := httptest.NewServer(mux)
	t.Cleanup(ts.Close)
	return ts.URL + "/.well-known/jwks.json"
}

func oauthClient(t *testing.T, sb *sandbox.Sandbox, tenant string, cred credentials.Credential, auth oauth.ClientAuth) *oauth.Client {
	t.Helper()
	ep, err := oauth.Discover(context.Background(), nil, sb.FHIRBase(tenant))
	if err != nil {
		t.Fatal(err)
	}
	c, err := oauth.New(oauth.ClientConfig{Endpoints: ep, FHIRBase: sb.FHIRBase(tenant), ClientID: cred.ClientID, Auth: auth,
		RedirectURI: redirectURI, Profile: oauth.Profile{ScopesV2: true, JWTAlgorithms: []string{"RS384", "ES384"}}})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestSandbox_BackendServices: SMART Backend Services with keys generated
// in the agent, registered by JWKS URL (the sandbox fetches the agent's
// JWKS as a real server does), through a key rotation.
// smart-2.2-client #225, #229, #233-#238, #290, #291, #293, #299, #301,
// #302, #317, #319-#334.
func TestSandbox_BackendServices(t *testing.T) {
	sb := sandboxtest.Start(t)
	f := newFixture(t)
	jwksURL := agentJWKS(t, f)
	ctx := context.Background()
	for _, alg := range []string{"ES384", "RS384"} {
		t.Run(alg, func(t *testing.T) {
			clientID := "medrelay-backend-" + alg
			cred := f.set(t, credentials.Input{Vendor: "generic-" + alg, ClientID: clientID, GenerateKey: alg})
			if err := sb.RegisterClient(sandbox.ProfileGeneric, sandbox.ClientConfig{ClientID: clientID, JWKSURL: jwksURL, Scope: "system/*.rs"}); err != nil {
				t.Fatal(err)
			}
			_, auth, err := f.creds.Resolve(ctx, "some-source", "generic-"+alg)
			if err != nil {
				t.Fatal(err)
			}
			c := oauthClient(t, sb, sandbox.ProfileGeneric, cred, auth)
			tok, err := c.ClientCredentials(ctx, nil)
			if err != nil {
				t.Fatalf("client_credentials: %v", err)
			}
			if !tok.HasScope("system/*.rs") || tok.RefreshToken != "" {
				t.Fatalf("token %+v", tok)
			}
			// Rotate: the next assertion is signed with the new key, which
			// the sandbox finds in the JWKS; the old one is still there for
			// assertions in flight.
			if _, err := f.creds.Rotate(ctx, cred.ID); err != nil {
				t.Fatal(err)
			}
			if _, err := c.ClientCredentials(ctx, nil); err != nil {
				t.Fatalf("after rotation: %v", err)
			}
		})
	}
	// A server that never got our key refuses us, and the error says it
	// is the credential (not a dead grant, not an outage).
	cred := f.set(t, credentials.Input{SourceID: "unregistered", ClientID: "stranger", GenerateKey: "ES384"})
	if err := sb.RegisterClient(sandbox.ProfileGeneric, sandbox.ClientConfig{ClientID: "stranger", JWKS: []byte(`{"keys":[]}`)}); err != nil {
		t.Fatal(err)
	}
	_, auth, _ := f.creds.ByID(ctx, cred.ID)
	c := oauthClient(t, sb, sandbox.ProfileGeneric, cred, auth)
	if _, err := c.ClientCredentials(ctx, nil); !errors.Is(err, oauth.ErrInvalidClient) {
		t.Fatalf("unregistered key: %v", err)
	}
}

// TestSandbox_EpicWithGeneratedKey: a patient authorization at the Epic
// tenant (which refuses client secrets) with a key generated in the agent
// and the JWKS pasted at registration. smart-2.2-client #300, #304.
func TestSandbox_EpicWithGeneratedKey(t *testing.T) {
	sb := sandboxtest.Start(t)
	f := newFixture(t)
	ctx := context.Background()
	cred := f.set(t, credentials.Input{Vendor: "epic", ClientID: "epic-prod", GenerateKey: "RS384"})
	set, err := f.creds.JWKS(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := sb.RegisterClient(sandbox.ProfileEpic, sandbox.ClientConfig{ClientID: "epic-prod", JWKS: set, RedirectURIs: []string{redirectURI}}); err != nil {
		t.Fatal(err)
	}
	_, auth, _ := f.creds.Resolve(ctx, "mychart-mercy", "epic")
	c := oauthClient(t, sb, sandbox.ProfileEpic, cred, auth)
	ar, err := c.AuthorizeURL(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	cb, err := oauth.ParseCallback(sandboxtest.Approve(t, ar.URL))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := c.Exchange(ctx, cb.Code.Reveal(), ar.Verifier)
	if err != nil {
		t.Fatalf("exchange with private_key_jwt: %v", err)
	}
	if tok.Patient == "" || tok.RefreshToken == "" {
		t.Fatalf("token %+v", tok)
	}
	if _, err := c.Refresh(ctx, tok.RefreshToken, nil); err != nil {
		t.Fatalf("refresh with private_key_jwt: %v", err)
	}
}
