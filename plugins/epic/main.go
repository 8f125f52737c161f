// Command medrelay-plugin-epic serves Epic (MyChart patients, Backend Services) over the SDK's SMART defaults.
package main

import "github.com/medrelay/medrelay/plugins/sdk"

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

func main() { sdk.Serve(newSource()) }
