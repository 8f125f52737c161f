// A broken plugin: it panics before it ever reaches sdk.Serve, unless it is
// asked for its manifest (so that it can be installed).
package main

import (
	"os"

	"github.com/medrelay/medrelay/plugins/sdk"
)

func main() {
	if len(os.Args) < 2 {
		panic("cannot parse embedded vendor table")
	}
	sdk.Serve(&sdk.SMART{Name: "initpanic", Vendor: "Broken", Version: "1"})
}
