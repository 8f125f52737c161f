package api

import (
	"context"
	"fmt"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/medrelay/medrelay/internal/credentials"
	"github.com/medrelay/medrelay/internal/errdefs"
	"github.com/medrelay/medrelay/internal/oauth"
	"github.com/medrelay/medrelay/internal/secrets"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

// credentialService is CredentialService: a thin translation to package
// credentials. No response carries a secret or a private key: Credential
// (the domain type) has neither.
type credentialService struct {
	agentv1.UnimplementedCredentialServiceServer
	creds *credentials.Store
	// publicURL is the agent's public base URL, without a trailing slash.
	publicURL string
}

var _ agentv1.CredentialServiceServer = (*credentialService)(nil)

// ErrCredentialTarget: a request named no credential, or several ways.
var ErrCredentialTarget = errdefs.Define(errdefs.InvalidArgument, "CREDENTIAL_TARGET_INVALID", "name exactly one of a credential id, a source id or a vendor")

func (s *credentialService) registration() *agentv1.Registration {
	return &agentv1.Registration{
		RedirectUri: s.publicURL + "/oauth/callback",
		JwksUrl:     s.publicURL + "/.well-known/jwks.json",
	}
}

var methodToProto = map[string]agentv1.ClientAuthMethod{
	oauth.AuthNone:              agentv1.ClientAuthMethod_CLIENT_AUTH_METHOD_NONE,
	oauth.AuthClientSecretBasic: agentv1.ClientAuthMethod_CLIENT_AUTH_METHOD_CLIENT_SECRET_BASIC,
	oauth.AuthClientSecretPost:  agentv1.ClientAuthMethod_CLIENT_AUTH_METHOD_CLIENT_SECRET_POST,
	oauth.AuthPrivateKeyJWT:     agentv1.ClientAuthMethod_CLIENT_AUTH_METHOD_PRIVATE_KEY_JWT,
}

var algToProto = map[string]agentv1.KeyAlgorithm{
	credentials.ES384: agentv1.KeyAlgorithm_KEY_ALGORITHM_ES384,
	credentials.RS384: agentv1.KeyAlgorithm_KEY_ALGORITHM_RS384,
}

func credentialProto(c credentials.Credential) *agentv1.Credential {
	return &agentv1.Credential{
		Id: c.ID, SourceId: c.SourceID, Vendor: c.Vendor, ClientId: c.ClientID,
		AuthMethod: methodToProto[c.Method], Scopes: c.Scopes, KeyIds: c.KeyIDs,
		KeyAlgorithm: algToProto[c.KeyAlgorithm], HasSecret: c.HasSecret,
		CreatedAt: timestamppb.New(c.CreatedAt), UpdatedAt: timestamppb.New(c.UpdatedAt),
	}
}

func (s *credentialService) SetCredential(ctx context.Context, req *agentv1.SetCredentialRequest) (*agentv1.SetCredentialResponse, error) {
	in := credentials.Input{
		SourceID: req.GetSourceId(), Vendor: req.GetVendor(), ClientID: req.GetClientId(),
		ClientSecret: secrets.Value(req.GetClientSecret()),
	}
	switch req.GetGenerateKey() {
	case agentv1.KeyAlgorithm_KEY_ALGORITHM_UNSPECIFIED:
	case agentv1.KeyAlgorithm_KEY_ALGORITHM_ES384:
		in.GenerateKey = credentials.ES384
	case agentv1.KeyAlgorithm_KEY_ALGORITHM_RS384:
		in.GenerateKey = credentials.RS384
	default:
		return nil, fmt.Errorf("%w: unknown key algorithm %d", credentials.ErrInvalid, req.GetGenerateKey())
	}
	if m := req.GetAuthMethod(); m != agentv1.ClientAuthMethod_CLIENT_AUTH_METHOD_UNSPECIFIED {
		for name, p := range methodToProto {
			if p == m {
				in.Method = name
			}
		}
		if in.Method == "" {
			return nil, fmt.Errorf("%w: unknown auth method %d", credentials.ErrInvalid, m)
		}
	}
	if len(req.GetScopes()) > 0 || req.GetReplaceScopes() {
		in.Scopes = append([]string{}, req.GetScopes()...)
	}
	c, err := s.creds.Set(ctx, in)
	if err != nil {
		return nil, err
	}
	return &agentv1.SetCredentialResponse{Credential: credentialProto(c), Registration: s.registration()}, nil
}

func (s *credentialService) ListCredentials(ctx context.Context, _ *agentv1.ListCredentialsRequest) (*agentv1.ListCredentialsResponse, error) {
	list, err := s.creds.List(ctx)
	if err != nil {
		return nil, err
	}
	resp := &agentv1.ListCredentialsResponse{Registration: s.registration()}
	for _, c := range list {
		resp.Credentials = append(resp.Credentials, credentialProto(c))
	}
	return resp, nil
}

// find resolves a request's id, source_id or vendor (exactly one).
func (s *credentialService) find(ctx context.Context, id, sourceID, vendor string) (credentials.Credential, error) {
	n := 0
	for _, v := range []string{id, sourceID, vendor} {
		if v != "" {
			n++
		}
	}
	if n != 1 {
		return credentials.Credential{}, ErrCredentialTarget
	}
	if id != "" {
		return s.creds.Get(ctx, id)
	}
	return s.creds.Find(ctx, sourceID, vendor)
}

func (s *credentialService) DeleteCredential(ctx context.Context, req *agentv1.DeleteCredentialRequest) (*agentv1.DeleteCredentialResponse, error) {
	c, err := s.find(ctx, req.GetId(), req.GetSourceId(), req.GetVendor())
	if err != nil {
		return nil, err
	}
	c, err = s.creds.Delete(ctx, c.ID)
	if err != nil {
		return nil, err
	}
	return &agentv1.DeleteCredentialResponse{Credential: credentialProto(c)}, nil
}

func (s *credentialService) RotateCredentialKey(ctx context.Context, req *agentv1.RotateCredentialKeyRequest) (*agentv1.RotateCredentialKeyResponse, error) {
	c, err := s.find(ctx, req.GetId(), req.GetSourceId(), req.GetVendor())
	if err != nil {
		return nil, err
	}
	c, err = s.creds.Rotate(ctx, c.ID)
	if err != nil {
		return nil, err
	}
	return &agentv1.RotateCredentialKeyResponse{Credential: credentialProto(c), Registration: s.registration()}, nil
}

func (s *credentialService) GetJWKS(ctx context.Context, _ *agentv1.GetJWKSRequest) (*agentv1.GetJWKSResponse, error) {
	b, err := s.creds.JWKS(ctx)
	if err != nil {
		return nil, err
	}
	return &agentv1.GetJWKSResponse{Jwks: string(b), JwksUrl: s.registration().GetJwksUrl()}, nil
}
