// Command medrelay-plugin-eclinicalworks serves eClinicalWorks practices (healow).
package main

import "github.com/medrelay/medrelay/plugins/sdk"

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

func main() { sdk.Serve(newSource()) }
