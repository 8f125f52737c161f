// Command medrelay-plugin-oraclehealth serves Oracle Health (Cerner Millennium).
package main

import "github.com/medrelay/medrelay/plugins/sdk"

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

func main() { sdk.Serve(newSource()) }
