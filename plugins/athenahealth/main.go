// Command medrelay-plugin-athenahealth serves athenahealth (athenaOne), where every practice shares one FHIR base URL.
package main

import "github.com/medrelay/medrelay/plugins/sdk"

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

func main() { sdk.Serve(newSource()) }
