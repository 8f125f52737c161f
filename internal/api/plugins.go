package api

import (
	"context"
	"strings"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/medrelay/medrelay/internal/pluginhost"
	agentv1 "github.com/medrelay/medrelay/proto/gen/medrelay/agent/v1"
	pluginv1 "github.com/medrelay/medrelay/proto/gen/medrelay/plugin/v1"
)

// PluginRegistry is what PluginService needs of the plugin host.
type PluginRegistry interface {
	List() []pluginhost.Info
	Verify(ctx context.Context, names ...string) []pluginhost.Verification
}

type pluginService struct {
	agentv1.UnimplementedPluginServiceServer
	plugins PluginRegistry
}

var _ agentv1.PluginServiceServer = (*pluginService)(nil)

func (s *pluginService) ListPlugins(context.Context, *agentv1.ListPluginsRequest) (*agentv1.ListPluginsResponse, error) {
	resp := &agentv1.ListPluginsResponse{}
	for _, i := range s.plugins.List() {
		resp.Plugins = append(resp.Plugins, pluginProto(i))
	}
	return resp, nil
}

func (s *pluginService) VerifyPlugins(ctx context.Context, req *agentv1.VerifyPluginsRequest) (*agentv1.VerifyPluginsResponse, error) {
	resp := &agentv1.VerifyPluginsResponse{}
	for _, v := range s.plugins.Verify(ctx, req.GetNames()...) {
		r := &agentv1.PluginVerification{Name: v.Name, Ok: v.OK, Checks: v.Checks}
		if v.Err != nil {
			r.Error = v.Err.Error()
		}
		if v.Info.Name != "" {
			r.Plugin = pluginProto(v.Info)
		}
		resp.Results = append(resp.Results, r)
	}
	return resp, nil
}

var pluginStates = map[pluginhost.State]agentv1.Plugin_State{
	pluginhost.StateStarting:   agentv1.Plugin_STATE_STARTING,
	pluginhost.StateRunning:    agentv1.Plugin_STATE_RUNNING,
	pluginhost.StateRestarting: agentv1.Plugin_STATE_RESTARTING,
	pluginhost.StateFailed:     agentv1.Plugin_STATE_FAILED,
	pluginhost.StateStopped:    agentv1.Plugin_STATE_STOPPED,
}

func pluginProto(i pluginhost.Info) *agentv1.Plugin {
	p := &agentv1.Plugin{
		Name: i.Name, Version: i.Manifest.Version, Path: i.Path, Sha256: i.Manifest.SHA256,
		State: pluginStates[i.State], Pid: int64(i.PID), Restarts: int32(i.Restarts),
		LastError: i.LastError, LastStderr: i.LastStderr,
	}
	if !i.StartedAt.IsZero() {
		p.StartedAt = timestamppb.New(i.StartedAt)
	}
	if d := i.Describe; d != nil {
		p.Vendor = d.GetVendor()
		if d.GetVersion() != "" {
			p.Version = d.GetVersion()
		}
		p.ProtocolVersions = d.GetProtocolVersions()
		p.ResourceTypes = d.GetResourceTypes()
		p.SdkVersion = d.GetSdkVersion()
		for _, c := range d.GetCapabilities() {
			p.Capabilities = append(p.Capabilities, capabilityName(c))
		}
	}
	return p
}

// capabilityName is "bulk_export" for CAPABILITY_BULK_EXPORT.
func capabilityName(c pluginv1.Capability) string {
	return strings.ToLower(strings.TrimPrefix(c.String(), "CAPABILITY_"))
}
