package api

import (
	"context"
	"fmt"
	"os"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/metadata"

	"github.com/medrelay/medrelay/internal/apps"
	"github.com/medrelay/medrelay/internal/errdefs"
	"github.com/medrelay/medrelay/internal/ipc"
)

// Kind of caller.
type Kind int

// Caller kinds.
const (
	KindNone Kind = iota
	KindAdmin
	KindApp
)

func (k Kind) String() string {
	switch k {
	case KindAdmin:
		return "admin"
	case KindApp:
		return "app"
	}
	return "none"
}

// Caller is who is calling, decided once per call from the socket's peer
// credentials and the app token. It is the only place where peer
// credentials become permissions.
type Caller struct {
	Kind Kind
	App  apps.App // set for KindApp
	Peer ipc.Peer
}

type callerKey struct{}

// CallerFrom returns the caller of the call in ctx.
func CallerFrom(ctx context.Context) Caller {
	c, _ := ctx.Value(callerKey{}).(Caller)
	return c
}

func withCaller(ctx context.Context, c Caller) context.Context {
	return context.WithValue(ctx, callerKey{}, c)
}

// Errors of authentication.
var (
	ErrNotAdmin   = errdefs.Define(errdefs.PermissionDenied, "NOT_ADMINISTRATOR", "this call is for administrators")
	ErrNoIdentity = errdefs.Define(errdefs.PermissionDenied, "NO_IDENTITY", "caller is neither an administrator nor an app")
	ErrAppsOnly   = errdefs.Define(errdefs.PermissionDenied, "APPS_ONLY", "this call is for apps; administrators act as an app with --app-token")
)

// identifier decides who a caller is.
type identifier struct {
	apps       *apps.Registry
	agentUID   int
	adminGroup string // name; resolved lazily so a group created after start works
	groups     *groupCache
}

func newIdentifier(reg *apps.Registry, adminGroup string) *identifier {
	return &identifier{apps: reg, agentUID: os.Geteuid(), adminGroup: adminGroup, groups: &groupCache{m: map[int]groupEntry{}}}
}

// identify returns the caller. An app token, when present, always wins: an
// administrator who presents one acts as that app (and only sees its data).
func (id *identifier) identify(ctx context.Context) (Caller, error) {
	p, _ := ipc.PeerFromContext(ctx)
	c := Caller{Peer: p}
	if tok, ok := bearer(ctx); ok {
		app, err := id.apps.Authenticate(ctx, tok)
		if err != nil {
			return c, err
		}
		c.Kind, c.App = KindApp, app
		return c, nil
	}
	if id.isAdmin(p) {
		c.Kind = KindAdmin
		return c, nil
	}
	return c, fmt.Errorf("%w: uid %d is not root, not the agent's user (uid %d) and not in the admin group%s, and no app token was sent",
		ErrNoIdentity, p.UID, id.agentUID, groupNote(id.adminGroup))
}

func groupNote(g string) string {
	if g == "" {
		return " (none configured)"
	}
	return " " + strconv.Quote(g)
}

func (id *identifier) isAdmin(p ipc.Peer) bool {
	if !p.Known {
		// Windows: the pipe's ACL admits only SYSTEM, Administrators and the
		// configured group; without peer credentials we cannot tell them
		// apart, so tokenless callers there are administrators by ACL.
		return isWindows
	}
	if p.UID == 0 || p.UID == id.agentUID {
		return true
	}
	if id.adminGroup == "" {
		return false
	}
	return id.groups.member(p.UID, id.adminGroup)
}

func bearer(ctx context.Context) (string, bool) {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok {
		return "", false
	}
	for _, v := range md.Get("authorization") {
		if t, ok := strings.CutPrefix(v, "Bearer "); ok && t != "" {
			return strings.TrimSpace(t), true
		}
	}
	return "", false
}

// groupCache remembers a uid's group names for a short while: looking them
// up reads /etc/group (or asks NSS) and must not happen on every call, but a
// user removed from the admin group must lose the right soon.
type groupCache struct {
	mu sync.Mutex
	m  map[int]groupEntry
}

type groupEntry struct {
	names []string
	at    time.Time
}

const groupTTL = 30 * time.Second

func (g *groupCache) member(uid int, group string) bool {
	g.mu.Lock()
	e, ok := g.m[uid]
	g.mu.Unlock()
	if !ok || time.Since(e.at) > groupTTL {
		e = groupEntry{names: lookupGroups(uid), at: time.Now()}
		g.mu.Lock()
		g.m[uid] = e
		g.mu.Unlock()
	}
	return slices.Contains(e.names, group)
}

func lookupGroups(uid int) []string {
	u, err := user.LookupId(strconv.Itoa(uid))
	if err != nil {
		return nil
	}
	gids, err := u.GroupIds()
	if err != nil {
		return nil
	}
	var names []string
	for _, gid := range gids {
		if g, err := user.LookupGroupId(gid); err == nil {
			names = append(names, g.Name)
		}
	}
	return names
}
