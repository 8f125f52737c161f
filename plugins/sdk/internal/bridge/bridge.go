// Package bridge lets plugins/sdk/sdktest serve a Source in-process through
// the SDK's real gRPC adapter without the SDK exporting wire types: package
// sdk sets NewSourceServer in its init.
package bridge

import (
	"log/slog"

	pluginv1 "github.com/medrelay/medrelay/proto/gen/medrelay/plugin/v1"
)

// NewSourceServer adapts src (an sdk.Source) to the wire, taking access
// tokens from tokens (an sdk.TokenSource) instead of the agent.
var NewSourceServer func(src, tokens any, log *slog.Logger) (pluginv1.SourceServiceServer, error)
