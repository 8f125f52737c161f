package sdk

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"
)

// Source is what every plugin implements. Optional features are separate
// interfaces (EverythingSource, BulkSource, BulkCanceler) that the SDK
// detects; embed *SMART to get all of them with SMART-on-FHIR defaults and
// override only where the vendor differs.
type Source interface {
	// Describe says who the plugin is and how its vendor behaves. It is
	// called once at start; an error or panic there is reported to the agent
	// as the plugin's start failure.
	Describe(ctx context.Context) (Description, error)
	// Search runs a FHIR search, calling emit once per page, in order.
	Search(ctx context.Context, call *Call, req SearchRequest, emit func(Page) error) error
	// Read reads one resource.
	Read(ctx context.Context, call *Call, req ReadRequest) (Resource, error)
}

// EverythingSource fetches everything about a patient.
type EverythingSource interface {
	Everything(ctx context.Context, call *Call, req EverythingRequest, emit func([]Resource) error) error
}

// BulkSource runs FHIR Bulk Data exports.
type BulkSource interface {
	BulkKickoff(ctx context.Context, call *Call, req BulkKickoffRequest) (statusURL string, err error)
	BulkStatus(ctx context.Context, call *Call, statusURL string) (BulkStatus, error)
	// BulkDownload opens one output file at req.Offset. The returned offset
	// is where the body starts (req.Offset when the server honoured Range).
	BulkDownload(ctx context.Context, call *Call, req BulkDownloadRequest) (body io.ReadCloser, offset int64, err error)
}

// BulkCanceler cancels exports.
type BulkCanceler interface {
	BulkCancel(ctx context.Context, call *Call, statusURL string) error
}

// Token is a short-lived access token handed out by the agent.
type Token struct {
	AccessToken string
	TokenType   string
	Expiry      time.Time
}

// TokenSource hands out access tokens for one connection. rejected reports
// that the source refused the previous token (HTTP 401).
type TokenSource interface {
	AccessToken(ctx context.Context, connectionID string, rejected bool) (Token, error)
}

// Call is one data call from the agent: the connection it is for, the HTTP
// client (rate-limited per source, retrying) and the logger.
type Call struct {
	Conn   Connection
	Logger *slog.Logger

	tokens TokenSource
	client *Client
}

// NewCall builds a Call; the SDK does this for every call from the agent.
// Tests and tools outside the agent use it to drive a Source directly.
func NewCall(conn Connection, tokens TokenSource, client *Client, logger *slog.Logger) *Call {
	if client == nil {
		client = NewClient()
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Call{Conn: conn, Logger: logger, tokens: tokens, client: client}
}

// Client is the call's HTTP client.
func (c *Call) Client() *Client { return c.client }

// AccessToken asks the agent for the connection's access token.
func (c *Call) AccessToken(ctx context.Context, rejected bool) (Token, error) {
	if c.tokens == nil {
		return Token{}, ErrNoToken
	}
	return c.tokens.AccessToken(ctx, c.Conn.ID, rejected)
}

// Do sends an authorized request to the source: the access token as a
// bearer token, one retry with a fresh token after a 401, rate limits and
// retries as Client.Do.
func (c *Call) Do(ctx context.Context, req *http.Request) (*http.Response, error) {
	return c.do(ctx, req, true)
}

func (c *Call) do(ctx context.Context, req *http.Request, auth bool) (*http.Response, error) {
	if !auth {
		return c.client.Do(ctx, req)
	}
	tok, err := c.AccessToken(ctx, false)
	if err != nil {
		return nil, err
	}
	setAuth(req, tok)
	resp, err := c.client.Do(ctx, req)
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		return resp, err
	}
	if req.Body != nil && req.GetBody == nil {
		return resp, nil
	}
	drain(resp)
	if tok, err = c.AccessToken(ctx, true); err != nil {
		return nil, err
	}
	retry := req.Clone(ctx)
	if req.GetBody != nil {
		if retry.Body, err = req.GetBody(); err != nil {
			return nil, err
		}
	}
	setAuth(retry, tok)
	return c.client.Do(ctx, retry)
}

func setAuth(req *http.Request, tok Token) {
	typ := tok.TokenType
	if typ == "" || strings.EqualFold(typ, "bearer") {
		typ = "Bearer"
	}
	req.Header.Set("Authorization", typ+" "+tok.AccessToken)
}

func drain(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
}
