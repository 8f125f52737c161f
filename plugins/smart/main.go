// Command medrelay-plugin-smart talks to any conformant SMART on FHIR R4
// server: discovery through .well-known/smart-configuration, SMART 2.x
// scopes with v1 fallback, Patient/$everything where the server has it
// (per-type search where it does not), Bulk Data export.
package main

import "github.com/medrelay/medrelay/plugins/sdk"

var version = "dev"

func main() { sdk.Serve(newSource()) }
