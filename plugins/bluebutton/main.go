// Command medrelay-plugin-bluebutton serves CMS Blue Button 2.0 (Medicare claims).
package main

import "github.com/medrelay/medrelay/plugins/sdk"

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

func main() { sdk.Serve(newSource()) }
