// A broken plugin: its Describe panics (the SDK reports it to the agent).
package main

import (
	"context"

	"github.com/medrelay/medrelay/plugins/sdk"
)

type source struct{ *sdk.SMART }

func (source) Describe(context.Context) (sdk.Description, error) {
	panic("vendor config missing: FOO_URL")
}

func main() {
	sdk.Serve(source{&sdk.SMART{Name: "panicplugin"}})
}
