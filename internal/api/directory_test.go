package api_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/medrelay/medrelay/agent/client"
	"github.com/medrelay/medrelay/internal/api"
	"github.com/medrelay/medrelay/internal/apps"
	"github.com/medrelay/medrelay/internal/audit"
	"github.com/medrelay/medrelay/internal/directory"
	"github.com/medrelay/medrelay/internal/ipc"
	"github.com/medrelay/medrelay/internal/store"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
)

func startDirectoryAgent(t *testing.T) (socket string, reg *apps.Registry) {
	t.Helper()
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	db, err := store.Open(ctx, store.Options{Dir: t.TempDir(), Key: bytes.Repeat([]byte{5}, 32), GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	cat := directory.New(db, directory.WithLogger(log))
	if err := cat.Load(ctx); err != nil {
		t.Fatal(err)
	}
	al := audit.New(db, log)
	reg = apps.NewRegistry(db)
	srv := api.New(api.Deps{Logger: log, Apps: reg, Audit: al, Directory: cat, Status: func(context.Context) (*agentv1.GetStatusResponse, error) {
		return &agentv1.GetStatusResponse{}, nil
	}})
	socket = filepath.Join(t.TempDir(), "d.sock")
	l, err := ipc.Listen(socket, ipc.ListenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() {
		srv.Stop(time.Second)
		al.Close()
		db.Close()
	})
	return socket, reg
}

func dialDir(t *testing.T, socket, token string) *client.Client {
	t.Helper()
	c, err := client.Dial(context.Background(), client.WithSocket(socket), client.WithAppToken(token))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// importFile sends a list the way the CLI does: a start message, then the
// bytes in chunks, reading progress until the summary.
func importFile(ctx context.Context, c *client.Client, name string, data []byte, chunk int) (*agentv1.ImportSummary, []string, error) {
	stream, err := c.Directory.Import(ctx)
	if err != nil {
		return nil, nil, err
	}
	// io.EOF from Send: the agent ended the call; Recv has its status.
	if err := stream.Send(&agentv1.DirectoryServiceImportRequest{Part: &agentv1.DirectoryServiceImportRequest_Start{
		Start: &agentv1.ImportStart{FileName: name, Size: int64(len(data))}}}); err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, err
	} else if err != nil {
		data = nil
	}
	for len(data) > 0 {
		n := min(chunk, len(data))
		if err := stream.Send(&agentv1.DirectoryServiceImportRequest{Part: &agentv1.DirectoryServiceImportRequest_Chunk{Chunk: data[:n]}}); err != nil {
			break
		}
		data = data[n:]
	}
	_ = stream.CloseSend()
	var phases []string
	var sum *agentv1.ImportSummary
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return sum, phases, nil
		}
		if err != nil {
			return nil, phases, err
		}
		if p := resp.GetProgress(); p != nil && (len(phases) == 0 || phases[len(phases)-1] != p.GetPhase()) {
			phases = append(phases, p.GetPhase())
		}
		if s := resp.GetSummary(); s != nil {
			sum = s
		}
	}
}

func TestDirectoryServiceOverTheSocket(t *testing.T) {
	ctx := context.Background()
	socket, reg := startDirectoryAgent(t)
	admin := dialDir(t, socket, "")

	var rows []string
	for i := range 300 {
		rows = append(rows, fmt.Sprintf(`{"URL":"https://fhir.example.org/r4/t%d","OrganizationName":"Riverside Family Clinic %d","NPIID":"","OrganizationZipCode":"6410%d"}`, i, i, i%10))
	}
	rows = append(rows, `{"URL":"https://api/broken","OrganizationName":"Broken Row","NPIID":"","OrganizationZipCode":""}`)
	data := []byte(`{"Endpoints":[` + strings.Join(rows, ",") + `]}`)
	sum, phases, err := importFile(ctx, admin, "Riverside_Health_EndpointSources.json", data, 4096)
	if err != nil {
		t.Fatal(err)
	}
	if sum.GetCreated() != 300 || sum.GetRejectedCount() != 1 || sum.GetRejected()[0].GetRow() != 301 || sum.GetByVendor()["riverside-health"] != 300 {
		t.Fatalf("summary: %v", sum)
	}
	if strings.Join(phases, ",") != "receive,parse,merge,write,index" {
		t.Errorf("progress phases: %v", phases)
	}

	// An app may search and read, not import.
	_, tok, err := reg.Create(ctx, "picker")
	if err != nil {
		t.Fatal(err)
	}
	app := dialDir(t, socket, tok)
	res, err := app.Directory.Search(ctx, &agentv1.DirectoryServiceSearchRequest{Query: "riverside famly clinic 42", PageSize: 3})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.GetResults()) == 0 || res.GetResults()[0].GetSource().GetName() != "Riverside Family Clinic 42" {
		t.Fatalf("search: %v", res)
	}
	src := res.GetResults()[0].GetSource()
	if src.GetFhirBaseUrl() != "https://fhir.example.org/r4/t42" || src.GetFhirVersion() != "4.0.1" || src.GetLocations()[0].GetState() != "MO" {
		t.Errorf("source: %v", src)
	}
	got, err := app.Directory.Get(ctx, &agentv1.DirectoryServiceGetRequest{Id: src.GetId()})
	if err != nil || got.GetSource().GetName() != src.GetName() {
		t.Fatalf("get: %v %v", got, err)
	}
	if _, _, err := importFile(ctx, app, "x.json", data[:100], 50); !errors.Is(err, client.ErrPermissionDenied) {
		t.Fatalf("an app imported: %v", err)
	}

	// Paging with the token, filters through the API.
	seen := map[string]bool{}
	page := ""
	for {
		r, err := admin.Directory.Search(ctx, &agentv1.DirectoryServiceSearchRequest{Vendor: "riverside-health", PostalCodePrefix: "64101", PageSize: 7, PageToken: page})
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range r.GetResults() {
			if seen[x.GetSource().GetId()] {
				t.Fatalf("page repeats %s", x.GetSource().GetId())
			}
			seen[x.GetSource().GetId()] = true
		}
		if page = r.GetNextPageToken(); page == "" {
			break
		}
	}
	if len(seen) != 30 {
		t.Errorf("zip 64101: %d sources, want 30", len(seen))
	}

	// Errors carry their reasons.
	_, err = app.Directory.Get(ctx, &agentv1.DirectoryServiceGetRequest{Id: "nope"})
	if e, ok := client.AsError(err); !ok || e.Reason != "SOURCE_NOT_FOUND" {
		t.Errorf("missing source: %v", err)
	}
	_, err = app.Directory.Search(ctx, &agentv1.DirectoryServiceSearchRequest{PageToken: "garbage"})
	if e, ok := client.AsError(err); !ok || e.Reason != "PAGE_TOKEN_INVALID" {
		t.Errorf("bad page token: %v", err)
	}
	_, err = app.Directory.Search(ctx, &agentv1.DirectoryServiceSearchRequest{Kind: "spaceship"})
	if e, ok := client.AsError(err); !ok || e.Reason != "SOURCE_QUERY_INVALID" {
		t.Errorf("bad kind: %v", err)
	}
	_, _, err = importFile(ctx, admin, "notes.txt", []byte("just some words"), 100)
	if e, ok := client.AsError(err); !ok || e.Reason != "IMPORT_FORMAT_UNKNOWN" {
		t.Errorf("unknown format: %v", err)
	}
}
