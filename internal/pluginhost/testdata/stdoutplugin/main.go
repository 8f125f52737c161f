// A broken plugin: it prints to stdout before the handshake.
package main

import (
	"fmt"

	"github.com/medrelay/medrelay/plugins/sdk"
)

func main() {
	fmt.Println("hello from a plugin that should have logged to stderr")
	sdk.Serve(&sdk.SMART{Name: "stdoutplugin", Vendor: "Broken", Version: "1"})
}
