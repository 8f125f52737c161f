package api

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/medrelay/medrelay/internal/audit"
	"github.com/medrelay/medrelay/internal/errdefs"
)

const isWindows = runtime.GOOS == "windows"

// Who may call a method.
type Who int

// Access levels.
const (
	// Anyone who can open the socket (health, reflection).
	Anyone Who = iota
	// Admins and apps.
	Authenticated
	Admins
	Apps
)

// Rule is the access and audit policy of one method.
type Rule struct {
	Who Who
	// Audit records each call in the audit log.
	Audit bool
}

// ErrUnknownMethod is returned for a method with no rule: the default is to
// refuse, so a new RPC cannot ship without someone deciding who may call it.
var ErrUnknownMethod = errdefs.Define(errdefs.PermissionDenied, "NO_POLICY", "method has no access policy")

// Policy maps full method names to rules. Services register theirs when the
// server is built.
type Policy map[string]Rule

func (p Policy) rule(method string) (Rule, bool) {
	if r, ok := p[method]; ok {
		return r, true
	}
	switch {
	case strings.HasPrefix(method, "/grpc.health.v1.Health/"),
		strings.HasPrefix(method, "/grpc.reflection.v1.ServerReflection/"),
		strings.HasPrefix(method, "/grpc.reflection.v1alpha.ServerReflection/"):
		return Rule{Who: Anyone}, true
	}
	return Rule{}, false
}

// guard authenticates, authorises and audits every call.
type guard struct {
	policy Policy
	ident  *identifier
	audit  *audit.Log
	log    *slog.Logger
	// observe, when set, receives every call's method, code and duration.
	observe func(method, code string, d time.Duration)
}

func (g *guard) admit(ctx context.Context, method string) (context.Context, Rule, Caller, error) {
	r, ok := g.policy.rule(method)
	if !ok {
		return ctx, r, Caller{}, fmt.Errorf("%w: %s", ErrUnknownMethod, method)
	}
	if r.Who == Anyone {
		return ctx, r, Caller{}, nil
	}
	c, err := g.ident.identify(ctx)
	if err != nil {
		return ctx, r, c, err
	}
	switch {
	case r.Who == Admins && c.Kind != KindAdmin:
		return ctx, r, c, fmt.Errorf("%w: %s (caller is app %q)", ErrNotAdmin, method, c.App.Name)
	case r.Who == Apps && c.Kind != KindApp:
		return ctx, r, c, fmt.Errorf("%w: %s", ErrAppsOnly, method)
	}
	return withCaller(ctx, c), r, c, nil
}

// Subjects lets a request say which connection or patient it concerns, for
// the audit log. Generated messages satisfy these through their getters.
type connectionSubject interface{ GetConnectionId() string }
type patientSubject interface{ GetPatientRef() string }

// auditNote holds what a handler learns about its call's subject that the
// request does not say: a records read names only the connection, and the
// patient comes from the connection. The guard records it.
type auditNote struct{ patientRef string }

type auditNoteKey struct{}

func withAuditNote(ctx context.Context) (context.Context, *auditNote) {
	n := &auditNote{}
	return context.WithValue(ctx, auditNoteKey{}, n), n
}

// NoteAuditPatient names the patient of the current call for its audit
// entry, when the request itself carries no patient_ref. Call it from the
// handler's goroutine.
func NoteAuditPatient(ctx context.Context, patientRef string) {
	if n, ok := ctx.Value(auditNoteKey{}).(*auditNote); ok {
		n.patientRef = patientRef
	}
}

func (g *guard) record(method string, c Caller, req any, note *auditNote, start time.Time, err error) {
	e := audit.Entry{
		Time:     start,
		Kind:     c.Kind.String(),
		AppID:    c.App.ID,
		AppName:  c.App.Name,
		UID:      c.Peer.UID,
		GID:      c.Peer.GID,
		PID:      c.Peer.PID,
		Method:   method,
		Outcome:  status.Code(err).String(),
		Duration: time.Since(start),
	}
	if s, ok := req.(connectionSubject); ok {
		e.ConnectionID = s.GetConnectionId()
	}
	if s, ok := req.(patientSubject); ok {
		e.PatientRef = s.GetPatientRef()
	}
	if e.PatientRef == "" && note != nil {
		e.PatientRef = note.patientRef
	}
	if err != nil {
		e.Detail = status.Convert(err).Message()
	}
	g.audit.Record(e)
}

func (g *guard) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	start := time.Now()
	ctx, note := withAuditNote(ctx)
	ctx, rule, caller, err := g.admit(ctx, info.FullMethod)
	var resp any
	if err == nil {
		resp, err = h(ctx, req)
	}
	err = g.toStatus(info.FullMethod, err)
	g.finish(info.FullMethod, rule, caller, req, note, start, err)
	return resp, err
}

func (g *guard) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	start := time.Now()
	ctx, note := withAuditNote(ss.Context())
	ctx, rule, caller, err := g.admit(ctx, info.FullMethod)
	rs := &recordingStream{ServerStream: ss, ctx: ctx}
	if err == nil {
		err = h(srv, rs)
	}
	err = g.toStatus(info.FullMethod, err)
	g.finish(info.FullMethod, rule, caller, rs.first, note, start, err)
	return err
}

func (g *guard) finish(method string, rule Rule, c Caller, req any, note *auditNote, start time.Time, err error) {
	if rule.Audit || isDenied(err) {
		g.record(method, c, req, note, start, err)
	}
	if g.observe != nil {
		g.observe(method, status.Code(err).String(), time.Since(start))
	}
}

// isDenied: refused calls are always audited, whatever the method's rule,
// because a stream of refusals is what an administrator wants to see.
func isDenied(err error) bool {
	code := status.Code(err)
	return code == codes.PermissionDenied || code == codes.Unauthenticated
}

// recordingStream carries the caller's context into the handler and keeps
// the first request for the audit entry.
type recordingStream struct {
	grpc.ServerStream
	ctx   context.Context
	first any
}

func (r *recordingStream) Context() context.Context { return r.ctx }

func (r *recordingStream) RecvMsg(m any) error {
	err := r.ServerStream.RecvMsg(m)
	if err == nil && r.first == nil {
		r.first = m
	}
	return err
}
